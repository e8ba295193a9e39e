//! Pretty-printing of single records: the prompt, the thinking and the answer clearly apart.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::stats::texts;

/// Shortens `s` to about `max` characters, keeping its head and tail.
fn elide(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if max == 0 || n <= max {
        return s.to_string();
    }
    let head: String = s.chars().take(max / 2).collect();
    let tail: String = s.chars().skip(n - max / 2).collect();
    format!("{head}\n      [… {} characters elided; --full shows all …]\n{tail}", n - 2 * (max / 2))
}

fn indent(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for line in s.lines() {
        out.push_str("  │ ");
        out.push_str(line);
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("  │ (empty)\n");
    }
    out
}

/// Renders one record for a terminal. `max_chars` = 0 prints every text whole.
pub fn render(m: &Map<String, Value>, max_chars: usize) -> String {
    let mut out = String::new();
    let id = m.get("id").map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).unwrap_or_default();
    let mut tags = Vec::new();
    for key in ["task", "source", "finish_reason"] {
        if let Some(v) = m.get(key).and_then(Value::as_str) {
            tags.push(format!("{key}={v}"));
        }
    }
    let _ = writeln!(out, "━━━ {id} ━━━ {}", tags.join("  "));
    let t = texts(m);
    if let Some(p) = t.prompt {
        let _ = write!(out, "PROMPT ({} chars)\n{}", p.chars().count(), indent(&elide(p, max_chars)));
    }
    if let Some(r) = t.reasoning {
        let _ = write!(out, "THINKING ({} chars)\n{}", r.chars().count(), indent(&elide(r, max_chars)));
    }
    if let Some(a) = t.answer {
        let label = if m.contains_key("content") || m.contains_key("messages") { "ANSWER" } else { "GOLD ANSWER" };
        let _ = write!(out, "{label} ({} chars)\n{}", a.chars().count(), indent(&elide(a, max_chars)));
    }
    if m.contains_key("content")
        && let Some(gold) = m.get("answer").and_then(Value::as_str)
    {
        let _ = writeln!(out, "GOLD ANSWER: {gold}");
    }
    if let Some(v) = m.get("verdict") {
        let _ = writeln!(out, "VERDICT: {v}");
    }
    let shown =
        ["id", "task", "source", "finish_reason", "prompt", "reasoning", "content", "answer", "messages", "verdict"];
    let rest: Map<String, Value> =
        m.iter().filter(|(k, _)| !shown.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    if !rest.is_empty() {
        let _ = writeln!(out, "OTHER FIELDS: {}", Value::Object(rest));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn render_separates_thinking_and_answer() {
        let v = json!({"id": "p1/0", "task": "math", "prompt": "1+1?", "reasoning": "add them",
                       "content": "\\boxed{2}", "answer": "2", "usage": {"completion_tokens": 3}});
        let s = render(v.as_object().expect("object"), 0);
        let think = s.find("THINKING").expect("thinking shown");
        let answer = s.find("ANSWER (").expect("answer shown");
        assert!(think < answer, "{s}");
        assert!(s.contains("add them") && s.contains("\\boxed{2}") && s.contains("GOLD ANSWER: 2"), "{s}");
        assert!(s.contains("completion_tokens"), "{s}");
    }

    #[test]
    fn long_texts_are_elided_unless_full() {
        let long = "x".repeat(5000);
        assert!(elide(&long, 100).contains("4900 characters elided"));
        assert_eq!(elide(&long, 0), long);
    }
}
