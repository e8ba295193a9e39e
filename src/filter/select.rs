//! Per-prompt selection across a prompt's samples (rejection sampling): which of the samples
//! that passed every check are kept, by policy, and the pass-rate window that drops whole
//! prompts (too easy: every sample solved it; too hard: almost none did).
//!
//! Pure: works on small [`Candidate`] descriptions; grouping and spilling live in `mod.rs`.

use serde::{Deserialize, Serialize};

/// Which passing samples of a prompt to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Every sample that passed.
    #[default]
    All,
    /// The passing sample with the lowest sample index.
    First,
    /// The shortest passing sample (reasoning + answer length).
    Shortest,
    /// The longest passing sample (s1 prefers longer traces).
    Longest,
    /// The `k` passing samples with the highest score (see `FilterConfig::score`).
    KBest,
}

/// One passing sample of a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Sample index k (`sample`), then input order, break ties.
    pub sample: u32,
    pub seq: u64,
    /// Reasoning + answer length (characters or tokens).
    pub len: usize,
    /// The named score (higher is better) for `k-best`.
    pub score: f64,
}

/// Indices into `cands` of the kept samples, in the candidates' order.
pub fn select(policy: Policy, k: usize, cands: &[Candidate]) -> Vec<usize> {
    if cands.is_empty() {
        return Vec::new();
    }
    let mut idx: Vec<usize> = (0..cands.len()).collect();
    let tie = |a: &Candidate, b: &Candidate| (a.sample, a.seq).cmp(&(b.sample, b.seq));
    let mut keep: Vec<usize> = match policy {
        Policy::All => idx,
        Policy::First => {
            idx.sort_by(|&a, &b| tie(&cands[a], &cands[b]));
            idx.truncate(1);
            idx
        }
        Policy::Shortest | Policy::Longest => {
            idx.sort_by(|&a, &b| {
                let (x, y) = (&cands[a], &cands[b]);
                let by_len = if policy == Policy::Shortest { x.len.cmp(&y.len) } else { y.len.cmp(&x.len) };
                by_len.then_with(|| tie(x, y))
            });
            idx.truncate(1);
            idx
        }
        Policy::KBest => {
            idx.sort_by(|&a, &b| {
                let (x, y) = (&cands[a], &cands[b]);
                y.score.total_cmp(&x.score).then_with(|| tie(x, y))
            });
            idx.truncate(k.max(1));
            idx
        }
    };
    keep.sort_unstable();
    keep
}

/// Why a prompt's pass rate puts it outside `[min, max]`, if it does.
pub fn outside_window(pass_rate: f64, min: Option<f64>, max: Option<f64>) -> Option<String> {
    if let Some(m) = min.filter(|m| pass_rate < *m) {
        return Some(format!("pass rate {pass_rate:.3} under --min-pass-rate {m}"));
    }
    if let Some(m) = max.filter(|m| pass_rate > *m) {
        return Some(format!("pass rate {pass_rate:.3} over --max-pass-rate {m}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(sample: u32, len: usize, score: f64) -> Candidate {
        Candidate { sample, seq: sample as u64, len, score }
    }

    #[test]
    fn policies() {
        let cands = [c(3, 500, 0.2), c(1, 900, 0.9), c(2, 100, 0.5), c(0, 900, 0.9)];
        assert_eq!(select(Policy::All, 0, &cands), vec![0, 1, 2, 3]);
        assert_eq!(select(Policy::First, 0, &cands), vec![3]);
        assert_eq!(select(Policy::Shortest, 0, &cands), vec![2]);
        // Longest: a tie on length goes to the lower sample index.
        assert_eq!(select(Policy::Longest, 0, &cands), vec![3]);
        assert_eq!(select(Policy::KBest, 2, &cands), vec![1, 3]);
        assert_eq!(select(Policy::KBest, 3, &cands), vec![1, 2, 3]);
        assert_eq!(select(Policy::KBest, 10, &cands).len(), 4);
        assert!(select(Policy::First, 0, &[]).is_empty());
    }

    #[test]
    fn window() {
        assert!(outside_window(1.0, None, Some(0.99)).is_some());
        assert!(outside_window(0.0, Some(0.01), None).is_some());
        assert!(outside_window(0.5, Some(0.01), Some(0.99)).is_none());
        assert!(outside_window(0.25, None, None).is_none());
    }
}
