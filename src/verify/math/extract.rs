//! Finding the final answer in a response, and the answer in a gold string.
//!
//! A response's answer is, in order: the last `\boxed{…}` / `\fbox{…}` (nested braces,
//! `\boxed 5`; consecutive boxes joined by only "and", commas or spacing form one list),
//! else what follows the last "final answer is", else what follows the last "answer:" /
//! "answer is". Only the part after `</think>` is searched when the response has one.
//!
//! A gold answer (or any answer string) may be bare (`3/4`, `x=2`, `(B)`, `\$5`): boxed
//! contents and "final answer is" still win; then the last math segment (`$…$`, `\[…\]`,
//! `\(…\)`), then the whole string when it is short, then the last number in the text.

/// One `\boxed{}` occurrence: its byte span in the text and its contents.
struct Boxed<'a> {
    start: usize,
    end: usize,
    content: &'a str,
}

fn find_boxes(text: &str) -> Vec<Boxed<'_>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let Some(off) = rest
            .match_indices('\\')
            .map(|(o, _)| o)
            .find(|&o| rest[o..].starts_with("\\boxed") || rest[o..].starts_with("\\fbox"))
        else {
            break;
        };
        let start = i + off;
        let name_len = if text[start..].starts_with("\\boxed") { 6 } else { 5 };
        let mut j = start + name_len;
        while j < bytes.len() && (bytes[j] == b' ') {
            j += 1;
        }
        if j < bytes.len() && bytes[j] == b'{' {
            let mut depth = 0usize;
            let mut k = j;
            let mut end = None;
            while k < bytes.len() {
                match bytes[k] {
                    b'\\' => k += 1,
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(k);
                            break;
                        }
                    }
                    _ => {}
                }
                k += 1;
            }
            match end {
                Some(e) => {
                    out.push(Boxed { start, end: e + 1, content: &text[j + 1..e] });
                    i = e + 1;
                }
                None => {
                    // Unclosed: take the rest of the text.
                    out.push(Boxed { start, end: bytes.len(), content: &text[j + 1..] });
                    break;
                }
            }
        } else if j > start + name_len || (j < bytes.len() && !bytes[j].is_ascii_alphabetic()) {
            // \boxed 5 : the next token.
            let k = text[j..]
                .find(|c: char| c.is_whitespace() || c == '$' || c == '.' || c == ',' || c == '\\')
                .map_or(bytes.len(), |o| j + o);
            if k > j {
                out.push(Boxed { start, end: k, content: &text[j..k] });
            }
            i = k.max(j + 1);
        } else {
            i = j.max(start + 1);
        }
    }
    out
}

/// Whether the text between two answers only joins them ("and", commas, spacing).
fn joins(gap: &str) -> bool {
    if gap.len() > 80 {
        return false;
    }
    let cleaned: String = strip_markup(gap);
    let words: Vec<String> =
        cleaned.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| w.to_lowercase()).collect();
    if words.is_empty() {
        return !gap.contains('.') || gap.trim_matches(|c: char| !c.is_alphanumeric() && c != '.').is_empty();
    }
    words.iter().any(|w| w == "and" || w == "or") && !gap.contains(". ")
}

fn strip_markup(s: &str) -> String {
    let mut t = s.to_string();
    for pat in ["\\text", "\\quad", "\\qquad", "\\mathrm", "\\(", "\\)", "\\[", "\\]", "$", "\\,", "\\;", "\\ "] {
        t = t.replace(pat, " ");
    }
    t
}

/// The last boxed answer (joined with boxes just before it) and where the last box starts.
fn last_boxed_at(text: &str) -> Option<(String, usize)> {
    let boxes = find_boxes(text);
    let last = boxes.last()?;
    let last_start = last.start;
    let mut parts = vec![last.content];
    let mut k = boxes.len() - 1;
    while k > 0 {
        let gap = &text[boxes[k - 1].end..boxes[k].start];
        if !joins(gap) {
            break;
        }
        parts.push(boxes[k - 1].content);
        k -= 1;
    }
    parts.reverse();
    let parts: Vec<&str> = parts.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return None;
    }
    Some((parts.join(", "), last_start))
}

/// Where the last "final answer is" phrase starts, and its answer.
fn final_answer_phrase(region: &str) -> Option<(String, usize)> {
    let rest = after_last(region, &["final answer is", "final answer:"])?;
    let at = region.len() - rest.len();
    clean_phrase(rest).map(|a| (a, at))
}

/// A boxed answer, unless a "final answer is" sentence comes after the last box.
fn boxed_or_final(region: &str) -> Option<String> {
    let boxed = last_boxed_at(region);
    let fin = final_answer_phrase(region);
    match (boxed, fin) {
        (Some((b, bpos)), Some((f, fpos))) => Some(if fpos > bpos { f } else { b }),
        (Some((b, _)), None) => Some(b),
        (None, Some((f, _))) => Some(f),
        (None, None) => None,
    }
}

/// Finds the last case-insensitive occurrence of any of `needles` and returns the text after it.
fn after_last<'a>(text: &'a str, needles: &[&str]) -> Option<&'a str> {
    let lower = text.to_ascii_lowercase();
    let mut best: Option<usize> = None;
    for n in needles {
        if let Some(p) = lower.rfind(n) {
            let end = p + n.len();
            if best.is_none_or(|b| end > b) {
                best = Some(end);
            }
        }
    }
    best.map(|b| &text[b..])
}

/// Cuts a phrase at its sentence end and unwraps math delimiters.
fn clean_phrase(s: &str) -> Option<String> {
    // Markdown emphasis around the answer ("**Answer:** 5", "is **5**").
    let owned;
    let s = if s.contains("**") || s.contains("__") {
        owned = s.replace("**", "").replace("__", "");
        owned.as_str()
    } else {
        s
    };
    let s = s.trim_start_matches([':', ' ', '\n', '\t', '#', '*']);
    let s = s.trim_start();
    // Up to the end of the line.
    let line = s.split('\n').next().unwrap_or("");
    let mut end = line.len();
    // Sentence end: ". " or "." at end outside math.
    let b = line.as_bytes();
    let mut in_math = false;
    for (i, &c) in b.iter().enumerate() {
        if c == b'$' && (i == 0 || b[i - 1] != b'\\') {
            in_math = !in_math;
        }
        if !in_math && c == b'.' && (i + 1 == b.len() || b[i + 1] == b' ') {
            let digit_before = i > 0 && b[i - 1].is_ascii_digit();
            let digit_after = i + 1 < b.len() && b[i + 1].is_ascii_digit();
            if !(digit_before && digit_after) {
                end = i;
                break;
            }
        }
    }
    let phrase = line[..end].trim();
    let lower = phrase.to_ascii_lowercase();
    let phrase = match lower.find("i hope") {
        Some(p) => phrase[..p].trim(),
        None => phrase,
    };
    let phrase = phrase.trim_end_matches(['.', ',', ';']).trim();
    if phrase.is_empty() {
        return None;
    }
    Some(answer_in_text(phrase))
}

/// The final answer of a model response, or `None` when it states none.
pub fn extract_response(response: &str) -> Option<String> {
    let region = match response.rfind("</think>") {
        Some(p) => &response[p + "</think>".len()..],
        None => response,
    };
    if let Some(b) = boxed_or_final(region) {
        return Some(b);
    }
    if let Some(rest) = after_last(region, &["answer:", "answer is"])
        && let Some(a) = clean_phrase(rest)
    {
        return Some(a);
    }
    None
}

/// Math segments `$…$`, `$$…$$`, `\[…\]`, `\(…\)`: (start, end, contents).
fn math_segments(text: &str) -> Vec<(usize, usize, &str)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() && (b[i + 1] == b'[' || b[i + 1] == b'(') {
            let close = if b[i + 1] == b'[' { "\\]" } else { "\\)" };
            if let Some(off) = text[i + 2..].find(close) {
                let e = i + 2 + off;
                out.push((i, e + 2, &text[i + 2..e]));
                i = e + 2;
                continue;
            }
            i += 2;
            continue;
        }
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == b'$' {
            let double = i + 1 < b.len() && b[i + 1] == b'$';
            let open = if double { 2 } else { 1 };
            let mut j = i + open;
            let mut found = None;
            while j < b.len() {
                if b[j] == b'\\' {
                    j += 2;
                    continue;
                }
                if b[j] == b'$' {
                    found = Some(j);
                    break;
                }
                j += 1;
            }
            match found {
                Some(e) => {
                    let close = if double && e + 1 < b.len() && b[e + 1] == b'$' { 2 } else { 1 };
                    out.push((i, e + close, &text[i + open..e]));
                    i = e + close;
                }
                None => break,
            }
            continue;
        }
        i += 1;
    }
    out.retain(|s| !s.2.trim().is_empty());
    out
}

fn join_segments(text: &str, segs: &[(usize, usize, &str)]) -> Option<String> {
    let mut k = segs.len().checked_sub(1)?;
    let mut parts = vec![segs[k].2.trim()];
    while k > 0 && joins(&text[segs[k - 1].1..segs[k].0]) {
        parts.push(segs[k - 1].2.trim());
        k -= 1;
    }
    parts.reverse();
    Some(parts.join(", "))
}

/// The last number written in a text (`1,000.99`, `2,74`, `-3`, `2/3`) and where it starts.
fn last_number(text: &str) -> Option<(String, usize)> {
    let b = text.as_bytes();
    let mut i = b.len();
    while i > 0 {
        i -= 1;
        if b[i].is_ascii_digit() {
            let end = i + 1;
            let mut s = i;
            while s > 0
                && (b[s - 1].is_ascii_digit()
                    || (matches!(b[s - 1], b',' | b'.' | b'/') && s >= 2 && b[s - 2].is_ascii_digit()))
            {
                s -= 1;
            }
            if s > 0 && b[s - 1].is_ascii_alphabetic() {
                // Part of a word ("AZYUK2A", "x2"): not a number of its own.
                i = s;
                continue;
            }
            if s > 0 && b[s - 1] == b'-' {
                s -= 1;
            }
            return Some((text[s..end].to_string(), s));
        }
    }
    None
}

/// The answer in an answer string (a gold answer, or an answer in Math-Verify's sense).
pub fn extract_answer(text: &str) -> String {
    let region = match text.rfind("</think>") {
        Some(p) => &text[p + "</think>".len()..],
        None => text,
    };
    if let Some(b) = boxed_or_final(region) {
        return b;
    }
    answer_in_text(region)
}

/// The answer in a text without boxes: the text itself when it has no prose, else the later
/// of its last math segment (with segments joined to it by "and", commas) and the last
/// number written in prose after it.
fn answer_in_text(region: &str) -> String {
    let segs = math_segments(region);
    let t = region.trim();
    if segs.is_empty() && !has_prose(t) {
        return t.to_string();
    }
    // The later of the last math segment and the last number written in prose.
    let seg_end = segs.last().map(|s| s.1);
    let number = last_number_outside(region, &segs);
    match (seg_end, number) {
        (Some(e), Some((n, at))) if at >= e => return n,
        (Some(_), _) => {
            if let Some(j) = join_segments(region, &segs) {
                return j;
            }
        }
        (None, Some((n, _))) => return n,
        (None, None) => {}
    }
    t.to_string()
}

/// Whether a text has words (three letters or more, not LaTeX commands) besides math.
/// Environment names (`\begin{pmatrix}`, `\end{array}`) and an array's column spec
/// (`\begin{array}{ccc}`) are markup, not words.
fn has_prose(t: &str) -> bool {
    let b = t.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"\\begin{") || b[i..].starts_with(b"\\end{") {
            let open = i + t[i..].find('{').unwrap_or(0);
            let close = t[open..].find('}').map_or(b.len(), |o| open + o + 1);
            let array = t[open..close].starts_with("{array");
            i = close;
            // The column spec right after `\begin{array}`.
            if array && t[i..].trim_start().starts_with('{') {
                let spec = i + t[i..].find('{').unwrap_or(0);
                i = t[spec..].find('}').map_or(b.len(), |o| spec + o + 1);
            }
            continue;
        }
        if b[i].is_ascii_alphabetic() {
            let s = i;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            let command = s > 0 && b[s - 1] == b'\\';
            if !command && i - s >= 3 && !matches!(&t[s..i], "sin" | "cos" | "tan" | "log" | "exp" | "sqrt" | "and") {
                return true;
            }
        } else {
            i += 1;
        }
    }
    false
}

fn last_number_outside(text: &str, segs: &[(usize, usize, &str)]) -> Option<(String, usize)> {
    let start = segs.last().map_or(0, |s| s.1);
    let (n, at) = last_number(&text[start..])?;
    Some((n, at + start))
}

/// A fallback answer for a text when the first choice does not parse: its last number.
pub fn fallback_number(text: &str) -> Option<String> {
    last_number(text).map(|(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_extraction() {
        let cases: &[(&str, Option<&str>)] = &[
            ("so the answer is \\boxed{42}.", Some("42")),
            ("\\boxed{\\frac{1}{2}} then \\boxed{\\frac{3}{4}}", Some("\\frac{3}{4}")),
            ("\\boxed{x^{2}+\\{1\\}}", Some("x^{2}+\\{1\\}")),
            ("thus \\boxed 5.", Some("5")),
            ("\\fbox{7}", Some("7")),
            ("<think>maybe \\boxed{3}</think> The final answer is $4$.", Some("4")),
            ("<think>maybe \\boxed{3}</think> I don't know", None),
            ("Final Answer: The final answer is $28 \\%$. I hope it is correct.", Some("28 \\%")),
            ("The answer: 12 apples.", Some("12")),
            ("**Answer:** 5", Some("5")),
            ("So the answer is **-3/4**.", Some("-3/4")),
            ("no answer here", None),
            ("\\boxed{1} and \\boxed{2}", Some("1, 2")),
            ("\\boxed{1} no no no no no \\boxed{2}", Some("2")),
            ("\\boxed{143} **Final Answer** \\boxed{143}", Some("143")),
            ("\\boxed{12 $ and $13 }", Some("12 $ and $13")),
        ];
        for (text, want) in cases {
            assert_eq!(extract_response(text).as_deref(), *want, "{text}");
        }
    }

    #[test]
    fn answer_strings() {
        let cases = [
            ("3/4", "3/4"),
            ("$\\frac{1}{2}$", "\\frac{1}{2}"),
            ("Answer \\[ 9 \\]", "9"),
            ("Answer \\( (9+1) \\)", "(9+1)"),
            ("$21,16$ or $11$", "21,16, 11"),
            ("$125$ miles", "125"),
            ("the number is not 10 which is 1,000.99€ and this is a long sentence. Really long.", "1,000.99"),
            ("(B)", "(B)"),
        ];
        for (text, want) in cases {
            assert_eq!(extract_answer(text), want, "{text}");
        }
    }

    #[test]
    fn huge_response_is_linear() {
        let big = "x ".repeat(500_000) + "\\boxed{7}";
        assert_eq!(extract_response(&big).as_deref(), Some("7"));
        let unclosed = "\\boxed{".repeat(100_000);
        let _ = extract_response(&unclosed);
    }
}
