//! Text normalisation shared by exact hashing, MinHash and decontamination.
//!
//! [`normalize`]: Unicode NFKC, case-folded (Unicode lower case, plus `ß`→`ss` and final sigma
//! → sigma), every run of whitespace collapsed to one space, trimmed. Numbers and punctuation are
//! kept. [`words`] splits a normalised text into its alphanumeric runs (punctuation dropped), the
//! unit of the word n-grams. Pure functions, no crate imports: they compile in a scratch crate too.

use unicode_normalization::UnicodeNormalization;

/// Writes the normalised form of `text` into `out` (cleared first).
pub fn normalize(text: &str, out: &mut String) {
    out.clear();
    out.reserve(text.len());
    let mut space = false;
    if text.is_ascii() {
        // ASCII is NFKC-stable: a byte loop.
        let mut v = std::mem::take(out).into_bytes();
        for &b in text.as_bytes() {
            if b.is_ascii_whitespace() {
                space = true;
                continue;
            }
            if space && !v.is_empty() {
                v.push(b' ');
            }
            space = false;
            v.push(b.to_ascii_lowercase());
        }
        *out = String::from_utf8(v).unwrap_or_default();
        return;
    }
    for c in text.nfkc() {
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        match c {
            'ß' | 'ẞ' => out.push_str("ss"),
            'ς' => out.push('σ'),
            c if c.is_ascii() => out.push(c.to_ascii_lowercase()),
            c => out.extend(c.to_lowercase()),
        }
    }
}

/// The normalised form as a new string.
pub fn normalized(text: &str) -> String {
    let mut s = String::new();
    normalize(text, &mut s);
    s
}

/// Is `c` part of a word (letters, digits, marks such as accents, `_`)?
#[inline]
fn is_word_char(c: char) -> bool {
    if c.is_ascii() { c.is_ascii_alphanumeric() || c == '_' } else { c.is_alphanumeric() || is_mark(c) }
}

/// Combining marks (devanagari vowel signs etc.) stay inside words.
fn is_mark(c: char) -> bool {
    matches!(c as u32, 0x0300..=0x036F | 0x0900..=0x0DFF | 0x0E31..=0x0E4E | 0x1AB0..=0x1AFF | 0x20D0..=0x20FF)
}

/// The words (alphanumeric runs) of a normalised text, in order.
pub fn words(norm: &str) -> impl Iterator<Item = &str> {
    norm.split(|c: char| !is_word_char(c)).filter(|w| !w.is_empty())
}

/// A 64-bit hash of the sequence of digit runs in a text (0 when it has none): two prompts
/// that differ only in their numbers get different values.
pub fn numbers_hash(norm: &str) -> u64 {
    let mut h: u64 = 0;
    let mut in_num = false;
    let mut any = false;
    for c in norm.chars() {
        if c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric()) {
            if !in_num {
                h = mix64(h ^ 0x5bd1_e995);
            }
            in_num = true;
            any = true;
            h = mix64(h ^ (c as u64));
        } else {
            in_num = false;
        }
    }
    if any { h | 1 } else { 0 }
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over bytes: the word hash (mixed again before use).
#[inline]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(FNV_PRIME);
    }
    h
}

/// The SplitMix64 / Murmur3 finaliser: a bijective avalanche of 64 bits.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Letters only (digits, punctuation and spaces removed), for the number-stripped exact match.
pub fn letters_only(norm: &str) -> String {
    norm.chars().filter(|c| c.is_alphabetic()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_cases() {
        let cases = [
            ("  Hello,\t\nWORLD!  ", "hello, world!"),
            ("What is 457+187?", "what is 457+187?"),
            ("Ｆｕｌｌｗｉｄｔｈ １２", "fullwidth 12"),
            ("Straße ΟΔΟΣ", "strasse οδοσ"),
            ("ﬁle x²", "file x2"),
            ("", ""),
            ("   ", ""),
        ];
        for (input, want) in cases {
            assert_eq!(normalized(input), want, "{input:?}");
        }
    }

    #[test]
    fn words_and_numbers() {
        let n = normalized("Find x: 3.5x + 12 = 19, then café_au lait.");
        assert_eq!(words(&n).collect::<Vec<_>>(), ["find", "x", "3", "5x", "12", "19", "then", "café_au", "lait"]);
        let a = numbers_hash(&normalized("What is 457+187?"));
        let b = numbers_hash(&normalized("What is 12+19?"));
        let c = numbers_hash(&normalized("what   IS 457 + 187 ?"));
        assert_ne!(a, b);
        assert_eq!(a, c);
        assert_eq!(numbers_hash("no numbers here"), 0);
        // Digit runs, not digits: 1 2 differs from 12.
        assert_ne!(numbers_hash("1 2"), numbers_hash("12"));
        assert_eq!(letters_only("what is 3+4? (a) 7"), "whatisa");
    }
}
