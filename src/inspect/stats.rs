//! Streaming statistics over records: exact length percentiles from value counts (memory
//! bounded by the number of distinct lengths, not by the number of records) and counts by key.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::record::split_thinking;

/// Exact distribution of a non-negative integer quantity.
#[derive(Debug, Default, Clone)]
pub struct Dist {
    counts: BTreeMap<u64, u64>,
    n: u64,
    sum: u128,
}

/// The summary printed for a [`Dist`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DistSummary {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: f64,
}

impl Dist {
    pub fn add(&mut self, v: u64) {
        *self.counts.entry(v).or_insert(0) += 1;
        self.n += 1;
        self.sum += v as u128;
    }

    /// Nearest-rank percentile: the smallest value with at least `p` of the values at or below it.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((p * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (&v, &c) in &self.counts {
            seen += c;
            if seen >= rank {
                return v;
            }
        }
        self.counts.keys().next_back().copied().unwrap_or(0)
    }

    pub fn summary(&self) -> Option<DistSummary> {
        if self.n == 0 {
            return None;
        }
        Some(DistSummary {
            count: self.n,
            min: self.counts.keys().next().copied().unwrap_or(0),
            p50: self.percentile(0.5),
            p90: self.percentile(0.9),
            p99: self.percentile(0.99),
            max: self.counts.keys().next_back().copied().unwrap_or(0),
            mean: self.sum as f64 / self.n as f64,
        })
    }
}

/// The three texts of a record whose lengths are reported.
#[derive(Debug, Default, PartialEq)]
pub struct Texts<'a> {
    pub prompt: Option<&'a str>,
    pub reasoning: Option<&'a str>,
    pub answer: Option<&'a str>,
}

fn str_field<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

/// Finds prompt, reasoning and answer in any record kind: a sample (`prompt`, `reasoning`,
/// `content`), an SFT example (`messages`, thinking inside the assistant turn) or a prompt
/// (`prompt` and the gold `answer`).
pub fn texts(m: &Map<String, Value>) -> Texts<'_> {
    let mut t = Texts { prompt: str_field(m, "prompt"), ..Texts::default() };
    let messages = m.get("messages").and_then(Value::as_array);
    if t.prompt.is_none() {
        t.prompt = messages.and_then(|ms| {
            ms.iter()
                .find(|x| x.get("role").and_then(Value::as_str) == Some("user"))
                .and_then(|x| x.get("content")?.as_str())
        });
    }
    if let Some(content) = str_field(m, "content") {
        t.answer = Some(content);
        t.reasoning = str_field(m, "reasoning");
    } else if let Some(turn) = messages.and_then(|ms| {
        ms.iter()
            .rev()
            .find(|x| x.get("role").and_then(Value::as_str) == Some("assistant"))
            .and_then(|x| x.get("content")?.as_str())
    }) {
        let (r, a) = split_thinking(turn);
        t.reasoning = Some(r);
        t.answer = Some(a);
    } else {
        t.answer = str_field(m, "answer");
    }
    t
}

/// Counts of values of one field.
#[derive(Debug, Default, Clone)]
pub struct Counter(HashMap<String, u64>);

impl Counter {
    pub fn add(&mut self, key: &str) {
        if let Some(c) = self.0.get_mut(key) {
            *c += 1;
        } else {
            self.0.insert(key.to_string(), 1);
        }
    }

    pub fn add_n(&mut self, key: &str, n: u64) {
        *self.0.entry(key.to_string()).or_insert(0) += n;
    }

    /// Most frequent first, ties by name.
    pub fn sorted(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self.0.iter().map(|(k, c)| (k.clone(), *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// How a record's verdict is tallied: its reason, else pass/fail.
pub fn verdict_key(m: &Map<String, Value>) -> Option<String> {
    let v = m.get("verdict")?.as_object()?;
    if let Some(r) = v.get("reason").and_then(Value::as_str) {
        return Some(r.to_string());
    }
    match v.get("pass").or_else(|| v.get("kept")).and_then(Value::as_bool) {
        Some(true) => Some("pass".into()),
        Some(false) => Some("fail".into()),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut d = Dist::default();
        for v in 1..=100 {
            d.add(v);
        }
        let s = d.summary().expect("non-empty");
        assert_eq!((s.min, s.p50, s.p90, s.p99, s.max), (1, 50, 90, 99, 100));
        assert!((s.mean - 50.5).abs() < 1e-9);
        let mut one = Dist::default();
        one.add(7);
        assert_eq!(one.percentile(0.99), 7);
        assert!(Dist::default().summary().is_none());
    }

    #[test]
    fn texts_of_each_record_kind() {
        let sample = json!({"prompt": "q", "reasoning": "r", "content": "a"});
        let sft = json!({"messages": [{"role": "user", "content": "q"},
                                      {"role": "assistant", "content": "<think>\nr\n</think>\n\na"}]});
        let prompt = json!({"prompt": "q", "answer": "a"});
        for v in [sample, sft] {
            let m = v.as_object().expect("object");
            assert_eq!(texts(m), Texts { prompt: Some("q"), reasoning: Some("r"), answer: Some("a") });
        }
        let m = prompt.as_object().expect("object");
        assert_eq!(texts(m), Texts { prompt: Some("q"), reasoning: None, answer: Some("a") });
    }

    #[test]
    fn verdict_keys() {
        let cases = [
            (json!({"verdict": {"pass": false, "reason": "wrong_answer"}}), Some("wrong_answer")),
            (json!({"verdict": {"pass": true}}), Some("pass")),
            (json!({"verdict": {"kept": false}}), Some("fail")),
            (json!({}), None),
        ];
        for (v, want) in cases {
            assert_eq!(verdict_key(v.as_object().expect("object")).as_deref(), want, "{v}");
        }
    }
}
