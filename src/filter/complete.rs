//! The `complete` check: the generation ended on its own. `finish_reason == "length"` fails,
//! and so does a chain-of-thought that stops mid-sentence with no answer after it.
//!
//! In: the finish reason, the reasoning and the answer. Self-contained (std only).

/// Whether text ends where a sentence, formula or block can end.
pub fn ends_cleanly(text: &str) -> bool {
    let t = text.trim_end();
    match t.chars().last() {
        None => false,
        Some(c) => matches!(
            c,
            '.' | '!' | '?' | ')' | ']' | '}' | '$' | '`' | '"' | '\'' | '*' | '。' | '！' | '？' | '」' | '”' | '>'
        ),
    }
}

/// `Ok(())` or why the sample is incomplete.
pub fn check(finish_reason: Option<&str>, reasoning: &str, answer: &str) -> Result<(), String> {
    if finish_reason == Some("length") {
        return Err("finish_reason is \"length\": cut at max_tokens".into());
    }
    if answer.trim().is_empty() && !ends_cleanly(reasoning) {
        let tail: String = reasoning.trim_end().chars().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(format!("chain-of-thought ends mid-sentence with no answer: …{tail:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(Option<&str>, &str, &str, bool)] = &[
            (Some("stop"), "Done.", "\\boxed{1}", true),
            (Some("length"), "Done.", "\\boxed{1}", false),
            (None, "So we add the two and get", "", false),
            (Some("stop"), "So we add the two and get", "", false),
            (Some("stop"), "So it is $x = 2$", "", true),
            (Some("stop"), "So we add the two and get", "The answer is 4.", true),
        ];
        for (f, r, a, ok) in cases {
            assert_eq!(check(*f, r, a).is_ok(), *ok, "{f:?} {r:?} {a:?}");
        }
    }
}
