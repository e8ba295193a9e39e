//! The `length` check: minimum and maximum length of the reasoning and of the answer, in
//! characters or in tokenizer tokens (the caller counts; this file only compares).

/// Bounds; `None` is unbounded.
#[derive(Debug, Clone, PartialEq)]
pub struct LenParams {
    pub min_reasoning: Option<usize>,
    pub max_reasoning: Option<usize>,
    pub min_answer: Option<usize>,
    pub max_answer: Option<usize>,
}

/// `Ok(())` or the bound broken; `unit` names the unit in the message.
pub fn check(reasoning: usize, answer: usize, p: &LenParams, unit: &str) -> Result<(), String> {
    let bounds =
        [("reasoning", reasoning, p.min_reasoning, p.max_reasoning), ("answer", answer, p.min_answer, p.max_answer)];
    for (what, n, min, max) in bounds {
        if let Some(m) = min.filter(|m| n < *m) {
            return Err(format!("{what} has {n} {unit}, under the minimum {m}"));
        }
        if let Some(m) = max.filter(|m| n > *m) {
            return Err(format!("{what} has {n} {unit}, over the maximum {m}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let p = LenParams { min_reasoning: Some(10), max_reasoning: Some(100), min_answer: Some(1), max_answer: None };
        assert!(check(50, 5, &p, "chars").is_ok());
        assert!(check(5, 5, &p, "chars").is_err_and(|e| e.contains("under the minimum 10")));
        assert!(check(500, 5, &p, "chars").is_err_and(|e| e.contains("over the maximum 100")));
        assert!(check(50, 0, &p, "tokens").is_err_and(|e| e.contains("answer has 0 tokens")));
    }
}
