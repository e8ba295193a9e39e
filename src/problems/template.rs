//! Problem texts with integer holes: `#` in a template is one (signed) integer parameter.
//! [`fill`] renders a template; [`parse`] recovers the parameters from a text that starts
//! with a rendered template, which is how the simulated teacher recognises a problem.

/// Renders `template`, replacing each `#` by the next parameter.
pub fn fill(template: &str, params: &[i64]) -> String {
    let mut out = String::with_capacity(template.len() + 8 * params.len());
    let mut it = params.iter();
    for ch in template.chars() {
        if ch == '#' {
            match it.next() {
                Some(p) => out.push_str(&p.to_string()),
                None => out.push('#'),
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// The parameters of `text` if it starts with `template` rendered by [`fill`].
pub fn parse(template: &str, text: &str) -> Option<Vec<i64>> {
    let mut params = Vec::new();
    let mut rest = text;
    let mut pieces = template.split('#').peekable();
    while let Some(lit) = pieces.next() {
        rest = rest.strip_prefix(lit)?;
        if pieces.peek().is_none() {
            break;
        }
        let neg = rest.starts_with('-');
        let digits_from = usize::from(neg);
        let len = rest[digits_from..].bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 || len > 17 {
            return None;
        }
        let v: i64 = rest[digits_from..digits_from + len].parse().ok()?;
        params.push(if neg { -v } else { v });
        rest = &rest[digits_from + len..];
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_and_parse_round_trip() {
        let cases: [(&str, &[i64]); 4] = [
            ("Compute $# \\times # - #$.", &[12, 34, 5]),
            ("Solve $#x + # > #$ now", &[3, 7, -20]),
            ("no holes", &[]),
            ("#", &[-5]),
        ];
        for (t, p) in cases {
            let text = fill(t, p);
            assert_eq!(parse(t, &text).as_deref(), Some(p), "{t}");
            // A suffix (the collect instruction) does not matter.
            assert_eq!(parse(t, &format!("{text}\n\nPlease reason.")).as_deref(), Some(p), "{t}");
        }
    }

    #[test]
    fn parse_rejects_other_texts() {
        let cases = [
            ("Compute $# + #$.", "Compute $a + 2$."),
            ("Compute $# + #$.", "Compute $1 * 2$."),
            ("Compute $# + #$.", "Compute"),
            ("Simplify #", "Compute 3"),
        ];
        for (t, text) in cases {
            assert_eq!(parse(t, text), None, "{t} vs {text}");
        }
    }
}
