//! Extraction of the candidate program from a response.
//!
//! The program is the last fenced block (```` ``` ```` or `~~~`) tagged with the task's
//! language in the text after `</think>`; when that part has none, the last such block anywhere
//! (a model that answered inside its thinking). Blocks tagged with another language are never
//! taken; an untagged block is taken only when no tagged block of the language exists.

/// Language tags accepted for a task language (lower case).
pub fn tags(language: &str) -> &'static [&'static str] {
    match language.to_ascii_lowercase().as_str() {
        "python" | "python3" | "py" => &["python", "python3", "py", "py3"],
        "cpp" | "c++" => &["cpp", "c++", "cxx", "cc"],
        "c" => &["c"],
        "rust" | "rs" => &["rust", "rs"],
        "java" => &["java"],
        "javascript" | "js" => &["javascript", "js", "node"],
        _ => &[],
    }
}

/// The language names [`tags`] knows, in their canonical spelling.
const LANGUAGES: &[&str] = &["python", "cpp", "c", "rust", "java", "javascript"];

/// The canonical name of a language name or block tag (`py3` → `python`, `c++` → `cpp`).
pub fn canonical(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    LANGUAGES.iter().copied().find(|l| tags(l).contains(&lower.as_str()))
}

/// The last fenced block tagged with a known language (after `</think>` when that part has
/// one, else anywhere), as (canonical language, body).
pub fn last_tagged(response: &str) -> Option<(&'static str, &str)> {
    fn last(text: &str) -> Option<(&'static str, &str)> {
        blocks(text).into_iter().rev().find_map(|b| canonical(&b.tag).map(|l| (l, b.body)))
    }
    let after = response.rfind("</think>").map(|i| &response[i + "</think>".len()..]);
    after.and_then(last).or_else(|| last(response))
}

/// A fenced block: its info-string's first word (lower case) and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block<'a> {
    pub tag: String,
    pub body: &'a str,
}

/// All complete fenced blocks of `text`, in order. An unclosed block at the end (a truncated
/// response) is not a block.
pub fn blocks(text: &str) -> Vec<Block<'_>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < text.len() {
        let line_end = text[pos..].find('\n').map_or(text.len(), |i| pos + i);
        let line = &text[pos..line_end];
        let trimmed = line.trim_start_matches([' ', '\t']);
        let indent = line.len() - trimmed.len();
        let fence_char = trimmed.chars().next();
        if indent <= 3 && matches!(fence_char, Some('`') | Some('~')) {
            let c = fence_char.unwrap_or('`');
            let n = trimmed.chars().take_while(|&x| x == c).count();
            let info = &trimmed[n..];
            if n >= 3 && !(c == '`' && info.contains('`')) {
                let tag =
                    info.split_whitespace().next().unwrap_or("").trim_matches(['{', '}', '.']).to_ascii_lowercase();
                // Find the closing fence: same char, at least n long, nothing else on the line.
                let body_start = (line_end + 1).min(text.len());
                let mut p = body_start;
                let mut closed = None;
                while p < text.len() {
                    let le = text[p..].find('\n').map_or(text.len(), |i| p + i);
                    let l = text[p..le].trim();
                    if l.len() >= n && l.chars().all(|x| x == c) {
                        closed = Some((p, le));
                        break;
                    }
                    p = le + 1;
                }
                match closed {
                    Some((close_start, close_end)) => {
                        let body = &text[body_start..close_start.max(body_start)];
                        out.push(Block { tag, body });
                        pos = close_end + 1;
                        continue;
                    }
                    None => break,
                }
            }
        }
        pos = line_end + 1;
    }
    out
}

fn pick<'a>(text: &'a str, language: &str) -> Option<&'a str> {
    let bs = blocks(text);
    let ok = tags(language);
    if let Some(b) = bs.iter().rev().find(|b| ok.contains(&b.tag.as_str())) {
        return Some(b.body);
    }
    bs.iter().rev().find(|b| b.tag.is_empty()).map(|b| b.body)
}

/// The candidate program of `response` for `language`, or `None` (no_code).
pub fn extract<'a>(response: &'a str, language: &str) -> Option<&'a str> {
    let after = response.rfind("</think>").map(|i| &response[i + "</think>".len()..]);
    let found = match after {
        Some(a) => pick(a, language).or_else(|| pick(response, language)),
        None => pick(response, language),
    };
    found.filter(|s| !s.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("```python\nx = 1\n```", Some("x = 1\n")),
            ("text\n```py\na\n```\nmore\n```python\nb\n```\n", Some("b\n")),
            // The block after </think> wins over later-looking blocks inside the thinking.
            ("<think>```python\nbad\n```\n</think>\n```python\ngood\n```", Some("good\n")),
            // Nothing after </think>: fall back to the last block anywhere.
            ("<think>\n```python\ninside\n```\n</think>\nThe answer is above.", Some("inside\n")),
            // A block of another language is not taken.
            ("```cpp\nint main(){}\n```", None),
            ("```cpp\nint main(){}\n```\n```\nuntagged\n```", Some("untagged\n")),
            ("```python\ntagged\n```\n```\nuntagged\n```", Some("tagged\n")),
            // Unclosed (truncated) block.
            ("```python\nx = 1\n", None),
            ("no code at all", None),
            ("```python\n\n```", None),
            // Longer fences may contain shorter ones.
            ("````python\ns = '```'\n````", Some("s = '```'\n")),
            ("~~~python\nt = 2\n~~~", Some("t = 2\n")),
            ("```Python3 title=x\nu = 3\n```", Some("u = 3\n")),
            ("```python\nfirst\n```\n</think>\n```python\nsecond\n```\n```python\nthird\n```", Some("third\n")),
        ];
        for (text, want) in cases {
            assert_eq!(extract(text, "python"), *want, "{text:?}");
        }
        assert_eq!(extract("```c++\nint x;\n```", "cpp"), Some("int x;\n"));
    }

    #[test]
    fn languages_of_blocks() {
        assert_eq!(canonical("C++"), Some("cpp"));
        assert_eq!(canonical("py3"), Some("python"));
        assert_eq!(canonical("cobol"), None);
        let cases: &[(&str, Option<&str>)] = &[
            ("```cpp\nint main(){}\n```", Some("cpp")),
            ("```python\nx\n```\n```c++\ny\n```", Some("cpp")),
            ("```cpp\nx\n```\n```\nuntagged\n```", Some("cpp")),
            ("<think>```cpp\nx\n```</think>\n```python\ny\n```", Some("python")),
            ("<think>\n```cpp\nx\n```\n</think>\nsee above", Some("cpp")),
            ("```\nuntagged\n```", None),
            ("```text\nout\n```", None),
        ];
        for (text, want) in cases {
            assert_eq!(last_tagged(text).map(|(l, _)| l), *want, "{text:?}");
        }
    }
}
