//! The `correct` check: the task's verifier (through the `Verifier` seam) said the answer is
//! right. Tasks with no verifier (`open`) pass and are counted apart; an undecided comparison
//! fails with its reason.
//!
//! In: the verdict's `pass` and `reason`, and the task. Self-contained.

/// The verdict reason of tasks that have no verifier (`verify::UNSUPPORTED`).
pub const UNSUPPORTED: &str = "unsupported_task";

/// Outcome of the correct check.
#[derive(Debug, Clone, PartialEq)]
pub enum Correct {
    Pass,
    /// No verifier for this task: passes, counted apart.
    Unverified,
    Fail(String),
}

pub fn check(pass: Option<bool>, reason: Option<&str>, task: &str) -> Correct {
    let reason = reason.unwrap_or("");
    if task == "open" || reason == UNSUPPORTED {
        return Correct::Unverified;
    }
    match pass {
        Some(true) => Correct::Pass,
        _ if reason.is_empty() => Correct::Fail("verifier gave no reason".into()),
        _ => Correct::Fail(format!("verifier: {reason}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        assert_eq!(check(Some(true), Some("equal"), "math"), Correct::Pass);
        assert_eq!(check(Some(false), Some("not_equal"), "math"), Correct::Fail("verifier: not_equal".into()));
        assert!(
            matches!(check(Some(false), Some("undecided: budget"), "math"), Correct::Fail(r) if r.contains("undecided"))
        );
        assert_eq!(check(Some(false), Some(UNSUPPORTED), "open"), Correct::Unverified);
        assert_eq!(check(None, None, "open"), Correct::Unverified);
    }
}
