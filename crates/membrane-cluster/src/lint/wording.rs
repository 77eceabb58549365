//! Phrasing shared by the messages: lists that stay short on big clusters, and plurals.

/// `a, b, c and 2 more`.
pub(super) fn names_list(mut names: Vec<String>) -> String {
    names.dedup();
    const SHOWN: usize = 3;
    if names.len() > SHOWN + 1 {
        let more = names.len() - SHOWN;
        names.truncate(SHOWN);
        return format!("{} and {more} more", names.join(", "));
    }
    names.join(", ")
}

/// `one` or `many`, by `n`.
pub(super) fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        one.to_string()
    } else {
        many.to_string()
    }
}
