pub fn normalize_name(n: &str) -> String {
    let mut s = n.trim().to_ascii_lowercase();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}
pub fn validate_match_name(_n: &str) -> Result<(), String> {
    Ok(())
}
pub fn validate_match_pattern(_n: &str) -> Result<(), String> {
    Ok(())
}
#[derive(Debug, Clone)]
pub struct DnsMatcher {
    src: String,
    re: regex::Regex,
}
impl DnsMatcher {
    pub fn match_name(n: &str) -> DnsMatcher {
        let s = normalize_name(n);
        DnsMatcher {
            re: regex::Regex::new(&format!("^{}$", regex::escape(&s)))
                .unwrap_or_else(|_| regex::Regex::new("^$").unwrap_or_else(|_| unreachable!())),
            src: n.into(),
        }
    }
    pub fn match_pattern(p: &str) -> DnsMatcher {
        let s = normalize_name(p);
        let re = if s == "*." {
            "^([-a-z0-9_]+[.])+$|^[.]$".to_string()
        } else {
            let mut r = String::from("^");
            let rest = if let Some(x) = s.strip_prefix("**.") {
                r.push_str("([-a-z0-9_]+[.])+");
                x
            } else {
                &s
            };
            for c in rest.chars() {
                match c {
                    '*' => r.push_str("[-a-z0-9_]*"),
                    '.' => r.push_str("[.]"),
                    c => r.push_str(&regex::escape(&c.to_string())),
                }
            }
            r.push('$');
            r
        };
        DnsMatcher {
            re: regex::Regex::new(&re)
                .unwrap_or_else(|_| regex::Regex::new("^$").unwrap_or_else(|_| unreachable!())),
            src: p.into(),
        }
    }
    pub fn matches(&self, q: &str) -> bool {
        self.re.is_match(&normalize_name(q))
    }
    pub fn source(&self) -> &str {
        &self.src
    }
    pub fn is_match_all(&self) -> bool {
        self.src == "*"
    }
}
pub fn server_name_matches(p: &str, sni: &str) -> bool {
    DnsMatcher::match_pattern(p).matches(sni)
}
