//! Regular expressions in Route matches, compiled by the same engine that enforces them.
//!
//! The reconciler validates every `regex` a Route carries with this module, so a pattern the
//! intent accepts is one the data plane can run: Python's `re` dialect differs from Rust's
//! (look-around, backreferences), and a pattern that compiled only in Python would be accepted
//! in git and then fail in every sidecar.

use regex::{Regex, RegexBuilder};

use crate::tunables::REGEX_SIZE_LIMIT;

/// Why a pattern was refused, in words meant for the person who wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegexError {
    pub pattern: String,
    pub reason: String,
}

impl std::fmt::Display for RegexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid regex {:?}: {}", self.pattern, self.reason)
    }
}

impl std::error::Error for RegexError {}

/// Compiles `pattern` anchored to the whole input, as Route matches are full matches
/// (like Envoy's `safe_regex`), so `/api/.*` never matches `/x/api/y` by accident.
pub fn compile(pattern: &str) -> Result<Regex, RegexError> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| RegexError {
            pattern: pattern.to_owned(),
            reason: first_line(&e.to_string()),
        })
}

/// The regex crate renders errors as several lines with a caret diagram; validation output is
/// one line per problem, so keep the line that says what is wrong.
fn first_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .rfind(|l| l.starts_with("error:"))
        .map(|l| l.trim_start_matches("error:").trim().to_owned())
        .unwrap_or_else(|| message.lines().next().unwrap_or("").trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_whole_input_only() {
        let re = compile("/api/v[0-9]+").unwrap();
        assert!(re.is_match("/api/v2"));
        assert!(!re.is_match("/x/api/v2"));
        assert!(!re.is_match("/api/v2/users"));
    }

    #[test]
    fn refuses_python_only_syntax_with_one_line_reason() {
        let err = compile("(?=lookahead)").unwrap_err();
        assert_eq!(err.pattern, "(?=lookahead)");
        assert!(err.reason.contains("look-around"), "{}", err.reason);
        assert!(!err.reason.contains('\n'));
    }

    #[test]
    fn refuses_patterns_over_the_size_budget() {
        let err = compile("(a{1000}){1000}").unwrap_err();
        assert!(err.reason.contains("size limit"), "{}", err.reason);
    }

    #[test]
    fn alternation_is_anchored_as_a_group() {
        let re = compile("/a|/b").unwrap();
        assert!(re.is_match("/b"));
        assert!(!re.is_match("/bx"));
    }
}
