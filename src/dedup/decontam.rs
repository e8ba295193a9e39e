//! Benchmark decontamination: which training prompts overlap a benchmark item.
//!
//! As open-r1 does: word n-grams (default 8) of the lower-cased, whitespace-normalised text
//! (here the words of [`super::norm`]: punctuation is not part of a word). A prompt sharing any
//! n-gram with an item is contaminated. Prompts or items shorter than n words match when their
//! word sequences are equal. Optionally (`strip_numbers`), as Light-R1 did for MATH-500, a
//! prompt also matches an item when both are equal after removing everything but letters, so a
//! problem with only its numbers changed is caught too (off by default: it also removes every
//! templated problem sharing a held-out template).
//!
//! Pure code: the benchmark files are read by the caller.

use std::collections::HashMap;

use super::norm::{fnv1a, letters_only, mix64, words};

/// How a prompt matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Ngram,
    Exact,
    Stripped,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Ngram => "ngram",
            Method::Exact => "exact",
            Method::Stripped => "stripped",
        }
    }

    pub fn from_u8(v: u8) -> Method {
        match v {
            0 => Method::Ngram,
            1 => Method::Exact,
            _ => Method::Stripped,
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Method::Ngram => 0,
            Method::Exact => 1,
            Method::Stripped => 2,
        }
    }
}

/// A match: benchmark, item, method and the shared text (the n-gram, or the whole item).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub bench: u32,
    pub item: u32,
    pub method: Method,
    pub evidence: String,
}

/// One benchmark's items.
#[derive(Debug, Clone, PartialEq)]
pub struct Benchmark {
    pub name: String,
    /// Each item's label (its id, or its row number).
    pub labels: Vec<String>,
}

/// All benchmarks' n-grams and exact keys.
#[derive(Debug, Clone, Default)]
pub struct DecontamIndex {
    pub n: usize,
    pub strip_numbers: bool,
    pub benchmarks: Vec<Benchmark>,
    ngrams: HashMap<u64, (u32, u32)>,
    exact: HashMap<u64, (u32, u32)>,
    stripped: HashMap<u64, (u32, u32)>,
}

fn word_hashes(norm: &str) -> Vec<u64> {
    words(norm).map(|w| mix64(fnv1a(w.as_bytes()))).collect()
}

fn seq_hash(hs: &[u64]) -> u64 {
    let mut h = 0x51_7cc1_b727_220a_u64;
    for &w in hs {
        h = mix64(h.wrapping_mul(0x100_0000_01B3).wrapping_add(w));
    }
    h
}

impl DecontamIndex {
    pub fn new(n: usize, strip_numbers: bool) -> Self {
        DecontamIndex { n: n.max(1), strip_numbers, ..Default::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.benchmarks.is_empty()
    }

    /// Adds a benchmark: `(label, normalised text)` per item. The first item to claim an
    /// n-gram keeps it, so reports are deterministic.
    pub fn add(&mut self, name: &str, items: &[(String, String)]) {
        let b = self.benchmarks.len() as u32;
        for (i, (_, norm)) in items.iter().enumerate() {
            let hs = word_hashes(norm);
            let at = (b, i as u32);
            for win in hs.windows(self.n) {
                self.ngrams.entry(seq_hash(win)).or_insert(at);
            }
            self.exact.entry(seq_hash(&hs)).or_insert(at);
            if self.strip_numbers {
                let l = letters_only(norm);
                if !l.is_empty() {
                    self.stripped.entry(fnv1a(l.as_bytes())).or_insert(at);
                }
            }
        }
        self.benchmarks
            .push(Benchmark { name: name.to_string(), labels: items.iter().map(|(l, _)| l.clone()).collect() });
    }

    /// The first benchmark item a normalised prompt overlaps, if any.
    pub fn check(&self, norm: &str) -> Option<Hit> {
        if self.benchmarks.is_empty() {
            return None;
        }
        let hs = word_hashes(norm);
        if hs.len() >= self.n {
            for (start, win) in hs.windows(self.n).enumerate() {
                if let Some(&(bench, item)) = self.ngrams.get(&seq_hash(win)) {
                    let evidence = words(norm).skip(start).take(self.n).collect::<Vec<_>>().join(" ");
                    return Some(Hit { bench, item, method: Method::Ngram, evidence });
                }
            }
        }
        if let Some(&(bench, item)) = self.exact.get(&seq_hash(&hs)) {
            return Some(Hit {
                bench,
                item,
                method: Method::Exact,
                evidence: words(norm).collect::<Vec<_>>().join(" "),
            });
        }
        if self.strip_numbers {
            let l = letters_only(norm);
            if let Some(&(bench, item)) = self.stripped.get(&fnv1a(l.as_bytes())) {
                return Some(Hit { bench, item, method: Method::Stripped, evidence: norm.chars().take(200).collect() });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::norm::normalized;
    use super::*;

    fn index(strip: bool) -> DecontamIndex {
        let items = [
            "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether?",
            "Add 2 and 3.",
        ];
        let mut ix = DecontamIndex::new(8, strip);
        let items: Vec<(String, String)> =
            items.iter().enumerate().map(|(i, t)| (format!("q{i}"), normalized(t))).collect();
        ix.add("gsm8k", &items);
        ix
    }

    #[test]
    fn table() {
        let ix = index(false);
        let ixs = index(true);
        type Want = Option<(u32, Method)>;
        let cases: &[(&str, Want, Want)] = &[
            // An 8-gram embedded in a longer prompt, re-cased and re-punctuated.
            (
                "Solve this: NATALIA sold clips to 48 of her friends; in april and more text",
                Some((0, Method::Ngram)),
                Some((0, Method::Ngram)),
            ),
            // Seven shared words only.
            ("natalia sold clips to 48 of her enemies in april", None, None),
            // Short item: exact after normalisation.
            ("add 2 and 3", Some((1, Method::Exact)), Some((1, Method::Exact))),
            ("Add 2 and 4.", None, Some((1, Method::Stripped))),
            // Numbers changed throughout: only the stripped match sees it.
            (
                "Natalia sold clips to 12 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether?",
                Some((0, Method::Ngram)),
                Some((0, Method::Ngram)),
            ),
            (
                "Natalia sold clips to 12 of her friends in June, and then she sold half as many clips in May. How many clips did Natalia sell altogether?",
                Some((0, Method::Ngram)),
                Some((0, Method::Ngram)),
            ),
            ("Something else entirely about clips and friends.", None, None),
        ];
        for (prompt, want, want_strip) in cases {
            let got = ix.check(&normalized(prompt)).map(|h| (h.item, h.method));
            assert_eq!(got, *want, "{prompt}");
            let got = ixs.check(&normalized(prompt)).map(|h| (h.item, h.method));
            assert_eq!(got, *want_strip, "strip: {prompt}");
        }
        let hit = ix.check(&normalized("x NATALIA sold clips to 48 of her friends in")).expect("hit");
        assert_eq!(hit.evidence, "natalia sold clips to 48 of her friends");
    }

    #[test]
    fn numbers_only_variant_of_a_short_templated_item() {
        // An item where every 8-gram contains a number: changing them all defeats n-grams.
        let mut ix = DecontamIndex::new(8, true);
        let item = "What is 17 times 23 plus 5 minus 2 divided by 4?";
        ix.add("t", &[("a".into(), normalized(item))]);
        let p = normalized("What is 18 times 24 plus 6 minus 3 divided by 5?");
        assert_eq!(ix.check(&p).map(|h| h.method), Some(Method::Stripped));
        let plain = {
            let mut i = DecontamIndex::new(8, false);
            i.add("t", &[("a".into(), normalized(item))]);
            i
        };
        assert_eq!(plain.check(&p), None);
    }
}
