#[derive(Debug, Clone)]
pub struct GoRegex {
    src: String,
    re: regex::Regex,
}
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct GoRegexError {
    message: String,
}
impl GoRegexError {
    pub fn message(&self) -> &str {
        &self.message
    }
}
impl GoRegex {
    pub fn new(p: &str) -> Result<GoRegex, GoRegexError> {
        regex::Regex::new(&format!(r"\A(?:{p})\z"))
            .map(|re| GoRegex { src: p.into(), re })
            .map_err(|e| GoRegexError {
                message: e.to_string(),
            })
    }
    pub fn as_str(&self) -> &str {
        &self.src
    }
    pub fn is_full_match(&self, t: &str) -> bool {
        self.re.is_match(t)
    }
}
