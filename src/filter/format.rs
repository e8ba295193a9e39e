//! The `format` check: one closed chain-of-thought, a non-empty answer after it, a final answer
//! the math verifier could extract (math), and no two different `\boxed{}` values in the answer.
//!
//! In: the sample's reasoning and answer (already split at `</think>`, `reasoning_content` or
//! the `<|end_of_thought|>` marker) and what the verifier extracted. Self-contained (std only).

/// The thinking markers that must not appear inside the reasoning or the answer once split.
pub const MARKERS: [&str; 4] = ["<think>", "</think>", "<|begin_of_thought|>", "<|end_of_thought|>"];

/// The contents of every `\boxed{…}` (or `\fbox{…}`) of `text`, braces matched; an unclosed one
/// is returned as `Err(offset)`.
pub fn boxed_values(text: &str) -> Result<Vec<&str>, usize> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(off) = text[from..].find("\\boxed").or_else(|| text[from..].find("\\fbox")) {
        let start = from + off;
        let mut i = start + if text[start..].starts_with("\\boxed") { 6 } else { 5 };
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i >= b.len() || b[i] != b'{' {
            from = i.max(start + 1);
            continue;
        }
        let open = i + 1;
        let mut depth = 1;
        i = open;
        while i < b.len() && depth > 0 {
            match b[i] {
                b'\\' => i += 1,
                b'{' => depth += 1,
                b'}' => depth -= 1,
                _ => {}
            }
            i += 1;
        }
        if depth > 0 {
            return Err(start);
        }
        out.push(&text[open..i - 1]);
        from = i;
    }
    Ok(out)
}

fn norm(v: &str) -> String {
    v.chars().filter(|c| !c.is_whitespace() && *c != '$').collect()
}

/// Result of the format check: `Ok(())` or the first reason it fails.
pub fn check(reasoning: &str, answer: &str, math: bool, extracted: Option<&str>) -> Result<(), String> {
    if reasoning.trim().is_empty() {
        return Err("no chain-of-thought: no <think>…</think>, reasoning_content or <|begin_of_thought|> block".into());
    }
    for m in MARKERS {
        if reasoning.contains(m) {
            return Err(format!("{m} inside the chain-of-thought (nested or repeated thinking block)"));
        }
    }
    if answer.trim().is_empty() {
        return Err("empty answer after the chain-of-thought (is </think> missing?)".into());
    }
    for m in MARKERS {
        if answer.contains(m) {
            return Err(format!("{m} inside the answer (two </think>, or thinking after the answer)"));
        }
    }
    let boxes = boxed_values(answer).map_err(|at| format!("unclosed \\boxed{{ at byte {at} of the answer"))?;
    let mut distinct: Vec<String> = boxes.iter().map(|b| norm(b)).collect();
    distinct.sort();
    distinct.dedup();
    if distinct.len() > 1 {
        return Err(format!("{} different \\boxed{{}} values in the answer: {}", distinct.len(), distinct.join(", ")));
    }
    if math && extracted.is_none_or(|e| e.trim().is_empty()) {
        let inside = boxed_values(reasoning).map(|b| !b.is_empty()).unwrap_or(false);
        return Err(if inside {
            "no final answer in the answer: the \\boxed{} is only inside the chain-of-thought".into()
        } else {
            "no final answer the math verifier can extract (no \\boxed{}, no \"the answer is\")".into()
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (reasoning, answer, math, extracted, expected error fragment).
    type Case<'a> = (&'a str, &'a str, bool, Option<&'a str>, Option<&'a str>);

    #[test]
    fn table() {
        let cases: &[Case] = &[
            ("think", "So $\\boxed{4}$.", true, Some("4"), None),
            ("", "So $\\boxed{4}$.", true, Some("4"), Some("no chain-of-thought")),
            ("think </think> more", "\\boxed{4}", true, Some("4"), Some("</think> inside the chain")),
            ("think", "4 </think> \\boxed{4}", true, Some("4"), Some("</think> inside the answer")),
            ("think", "  ", true, None, Some("empty answer")),
            ("think", "\\boxed{4} or \\boxed{5}", true, Some("5"), Some("2 different")),
            ("think", "\\boxed{4} so \\boxed{ 4 }", true, Some("4"), None),
            ("think", "\\boxed{4", true, None, Some("unclosed")),
            ("so \\boxed{4}", "I think it works out.", true, None, Some("only inside the chain-of-thought")),
            ("think", "Here is the code.", false, None, None),
            ("think", "no answer here", true, None, Some("no final answer the math verifier")),
        ];
        for (r, a, math, ex, want) in cases {
            let got = check(r, a, *math, *ex);
            match want {
                None => assert!(got.is_ok(), "{r:?} {a:?}: {got:?}"),
                Some(w) => assert!(got.as_ref().is_err_and(|e| e.contains(w)), "{r:?} {a:?}: {got:?}"),
            }
        }
        assert_eq!(boxed_values("\\boxed{\\frac{1}{2}} and \\fbox{x}"), Ok(vec!["\\frac{1}{2}", "x"]));
    }
}
