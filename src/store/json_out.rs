//! Compact JSON of a [`serde_json::Value`], byte for byte what `serde_json::to_writer` writes,
//! with the strings escaped 16 bytes a step. serde_json looks each byte of a string up in an
//! escape table; the record stages write long texts (chains-of-thought of 20 KB) whose bytes
//! almost never need escaping (a newline every line, a `\` per LaTeX command), so finding the
//! next byte that does, a block at a time, and copying the run before it is what makes writing
//! cheap. SSE2 on x86_64 (every such CPU has it), a plain loop elsewhere.
//!
//! Self-contained: std and serde_json.

use serde_json::Value;

/// Appends `v` as compact JSON (what `serde_json::to_writer(out, v)` appends).
pub fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // serde_json's own formatting of numbers (itoa, ryu; writing to a Vec cannot fail).
        Value::Number(n) => {
            let _ = serde_json::to_writer(&mut *out, n);
        }
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, x);
            }
            out.push(b']');
        }
        Value::Object(m) => write_map(out, m),
    }
}

/// Appends a JSON object (what `serde_json::to_writer(out, m)` appends).
pub fn write_map(out: &mut Vec<u8>, m: &serde_json::Map<String, Value>) {
    out.push(b'{');
    for (i, (k, x)) in m.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        write_value(out, x);
    }
    out.push(b'}');
}

/// `v` as a compact JSON line's bytes (no newline).
pub fn to_vec(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_value(&mut out, v);
    out
}

/// Whether serde_json escapes byte `b` of a string: `"`, `\` and the control bytes below 0x20.
#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// The position of the first byte at or after `from` that needs escaping.
#[inline]
fn next_escape(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    // SAFETY: SSE2 is enabled (cfg above). Each load reads the 16 bytes at `i`, with
    // `i + 16 <= b.len()`, inside `b`; unaligned loads have no alignment requirement.
    unsafe {
        use std::arch::x86_64::*;
        let (quote, slash, ctl) = (_mm_set1_epi8(b'"' as i8), _mm_set1_epi8(b'\\' as i8), _mm_set1_epi8(0x1f));
        while i + 16 <= b.len() {
            let v = _mm_loadu_si128(b.as_ptr().add(i).cast::<__m128i>());
            // max(v, 0x1f) == 0x1f exactly where v <= 0x1f (unsigned).
            let hit = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, slash)),
                _mm_cmpeq_epi8(_mm_max_epu8(v, ctl), ctl),
            );
            let mask = _mm_movemask_epi8(hit) as u32;
            if mask != 0 {
                return Some(i + mask.trailing_zeros() as usize);
            }
            i += 16;
        }
    }
    b[i..].iter().position(|&c| needs_escape(c)).map(|p| i + p)
}

/// Appends `s` as a JSON string, escaped as serde_json escapes it: `\"`, `\\`, the short forms
/// `\b \f \n \r \t`, other control bytes as `\u00xx` (lower-case hex); everything else as is.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut start = 0;
    while let Some(j) = next_escape(b, start) {
        out.extend_from_slice(&b[start..j]);
        let c = b[j];
        let short = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            _ => 0,
        };
        if short != 0 {
            out.extend_from_slice(&[b'\\', short]);
        } else {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(c >> 4)], HEX[usize::from(c & 15)]]);
        }
        start = j + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn same(v: &Value) {
        assert_eq!(to_vec(v), serde_json::to_vec(v).expect("serialises"), "{v}");
    }

    #[test]
    fn every_byte_escapes_as_serde_json_does() {
        // Each ASCII byte alone, and at every offset of a 40-byte string (both sides of the
        // 16-byte blocks and the tail).
        for c in 0u8..0x80 {
            let one = (c as char).to_string();
            same(&Value::String(one.clone()));
            for at in 0..40 {
                let mut s = "a".repeat(40);
                s.replace_range(at..at + 1, &one);
                same(&Value::String(s));
            }
        }
        for s in ["", "é", "日本語\n", "\u{7f}\u{80}\u{2028}", "\\frac{1}{2}\n\n\"q\"\t\r\u{1}\u{1f}", "😀\\"] {
            same(&Value::String(s.repeat(7)));
        }
    }

    #[test]
    fn values_serialise_as_serde_json_does() {
        for v in [
            json!(null),
            json!(true),
            json!([false, 0, -1, 1.5, 1e300, -0.0, 18446744073709551615u64, -9223372036854775808i64]),
            json!({}),
            json!([]),
            json!({"id": "a\"b", "messages": [{"role": "user", "content": "x\ny"}], "meta": {"n": 3, "r": 0.25}}),
            json!({"nested": [[[{"k\u{0}": [null]}]]], "": ""}),
        ] {
            same(&v);
        }
    }
}
