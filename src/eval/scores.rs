//! The numbers of `distill eval`: per problem and overall pass@1 (mean over samples, with its
//! standard error), unbiased pass@k with the number of samples actually generated, format,
//! truncation and EOS rates, response lengths and speed.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// Unbiased pass@k of one problem with `n` samples of which `c` passed (Chen et al. 2021):
/// `1 - C(n-c, k) / C(n, k)`, computed as a product to stay exact for large `n`. `None` when
/// fewer than `k` samples exist (the estimator is undefined there, never silently pass@n).
pub fn pass_at_k(n: u64, c: u64, k: u64) -> Option<f64> {
    if k == 0 || n < k || c > n {
        return None;
    }
    if n - c < k {
        return Some(1.0);
    }
    // C(n-c, k) / C(n, k) = Π_{i = n-c+1}^{n} (1 - k / i)
    let ratio: f64 = ((n - c + 1)..=n).map(|i| 1.0 - k as f64 / i as f64).product();
    Some(1.0 - ratio)
}

/// The `k`s pass@k is reported for: powers of two up to `n`, and `n`.
pub fn ks_for(n: u64) -> Vec<u64> {
    let mut ks: Vec<u64> = std::iter::successors(Some(1u64), |k| k.checked_mul(2)).take_while(|&k| k <= n).collect();
    if n > 0 && ks.last() != Some(&n) {
        ks.push(n);
    }
    ks
}

/// One generation as the scores see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The verifier passed it (`false` for undecided and unscored ones).
    pub pass: bool,
    /// The verifier could not decide.
    pub undecided: bool,
    /// Closed thinking and, where the task has one, an answer the verifier could extract after it.
    pub format: bool,
    /// Stopped at `max_new_tokens`.
    pub truncated: bool,
    /// Ended with an end-of-sequence (or end-of-turn) token.
    pub eos: bool,
    /// Generated tokens.
    pub tokens: u64,
}

/// What one problem's samples scored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProblemScore {
    pub id: String,
    pub task: String,
    /// Has a gold answer or tests, and a verifier for its task.
    pub scored: bool,
    pub samples: Vec<Scored>,
    /// Samples asked for that never came (endpoint failures).
    pub failed: u64,
}

impl ProblemScore {
    pub fn n(&self) -> u64 {
        self.samples.len() as u64
    }

    pub fn correct(&self) -> u64 {
        self.samples.iter().filter(|s| s.pass).count() as u64
    }

    /// Mean pass over the samples, `None` without samples.
    pub fn pass_at_1(&self) -> Option<f64> {
        (self.n() > 0).then(|| self.correct() as f64 / self.n() as f64)
    }

    fn to_json(&self) -> Value {
        let n = self.n();
        let rate = |f: fn(&Scored) -> bool| {
            if n == 0 { Value::Null } else { json!(self.samples.iter().filter(|s| f(s)).count() as f64 / n as f64) }
        };
        let p1 = if self.scored { self.pass_at_1() } else { None };
        let stderr = p1.map(|p| if n > 1 { (p * (1.0 - p) / (n - 1) as f64).sqrt() } else { 0.0 });
        let tokens: Vec<u64> = self.samples.iter().map(|s| s.tokens).collect();
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("task".into(), json!(self.task));
        m.insert("scored".into(), json!(self.scored));
        m.insert("n".into(), json!(n));
        m.insert("correct".into(), if self.scored { json!(self.correct()) } else { Value::Null });
        m.insert("pass_at_1".into(), json!(p1));
        m.insert("pass_at_1_stderr".into(), json!(stderr));
        m.insert("format_rate".into(), rate(|s| s.format));
        m.insert("truncated_rate".into(), rate(|s| s.truncated));
        m.insert("eos_rate".into(), rate(|s| s.eos));
        m.insert("mean_tokens".into(), json!(mean(&tokens)));
        if self.failed > 0 {
            m.insert("failed".into(), json!(self.failed));
        }
        Value::Object(m)
    }
}

fn mean(v: &[u64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<u64>() as f64 / v.len() as f64)
}

/// The `q` quantile (nearest rank) of sorted values.
fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// The whole evaluation's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub problems: Vec<ProblemScore>,
    /// Samples asked per problem.
    pub n: u64,
    pub seconds: f64,
}

impl Summary {
    fn all(&self) -> impl Iterator<Item = &Scored> {
        self.problems.iter().flat_map(|p| p.samples.iter())
    }

    fn scored(&self) -> impl Iterator<Item = &ProblemScore> {
        self.problems.iter().filter(|p| p.scored && p.n() > 0)
    }

    pub fn generations(&self) -> u64 {
        self.all().count() as u64
    }

    /// Mean over scored problems of their mean pass over samples, and its standard error
    /// across problems.
    pub fn pass_at_1(&self) -> Option<(f64, f64)> {
        let v: Vec<f64> = self.scored().filter_map(ProblemScore::pass_at_1).collect();
        if v.is_empty() {
            return None;
        }
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let se = if v.len() > 1 {
            let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
            (var / v.len() as f64).sqrt()
        } else {
            0.0
        };
        Some((m, se))
    }

    /// pass@k for each reported k: the mean over the scored problems with at least k samples
    /// (each with its own sample count), and how many problems that was.
    pub fn pass_at_k(&self) -> BTreeMap<u64, (f64, u64)> {
        let mut out = BTreeMap::new();
        for k in ks_for(self.n) {
            let v: Vec<f64> = self.scored().filter_map(|p| pass_at_k(p.n(), p.correct(), k)).collect();
            if !v.is_empty() {
                out.insert(k, (v.iter().sum::<f64>() / v.len() as f64, v.len() as u64));
            }
        }
        out
    }

    fn rate(&self, f: fn(&Scored) -> bool) -> Option<f64> {
        let n = self.generations();
        (n > 0).then(|| self.all().filter(|s| f(s)).count() as f64 / n as f64)
    }

    pub fn format_rate(&self) -> Option<f64> {
        self.rate(|s| s.format)
    }

    pub fn truncated_rate(&self) -> Option<f64> {
        self.rate(|s| s.truncated)
    }

    pub fn eos_rate(&self) -> Option<f64> {
        self.rate(|s| s.eos)
    }

    fn sorted_tokens(&self) -> Vec<u64> {
        let mut t: Vec<u64> = self.all().map(|s| s.tokens).collect();
        t.sort_unstable();
        t
    }

    pub fn tokens_per_s(&self) -> Option<f64> {
        let total: u64 = self.all().map(|s| s.tokens).sum();
        (self.seconds > 0.0).then(|| total as f64 / self.seconds)
    }

    /// The JSON summary (`--out`): the contract keys first, then the rest and `per_problem`.
    pub fn to_json(&self, extra: Map<String, Value>) -> Value {
        let tokens = self.sorted_tokens();
        let p1 = self.pass_at_1();
        let mut m = Map::new();
        m.insert("pass_at_1".into(), json!(p1.map(|p| p.0)));
        let pk: Map<String, Value> = self.pass_at_k().iter().map(|(k, (v, _))| (k.to_string(), json!(v))).collect();
        m.insert("pass_at_k".into(), Value::Object(pk));
        m.insert("format_rate".into(), json!(self.format_rate()));
        m.insert("truncated_rate".into(), json!(self.truncated_rate()));
        m.insert("eos_rate".into(), json!(self.eos_rate()));
        m.insert("mean_tokens".into(), json!(mean(&tokens)));
        m.insert("n".into(), json!(self.n));
        m.insert("problems".into(), json!(self.problems.len()));
        m.insert("pass_at_1_stderr".into(), json!(p1.map(|p| p.1)));
        let pk_problems: Map<String, Value> =
            self.pass_at_k().iter().map(|(k, (_, c))| (k.to_string(), json!(c))).collect();
        m.insert("pass_at_k_problems".into(), Value::Object(pk_problems));
        m.insert("scored_problems".into(), json!(self.scored().count()));
        m.insert("generations".into(), json!(self.generations()));
        m.insert("undecided".into(), json!(self.all().filter(|s| s.undecided).count()));
        m.insert("failed_generations".into(), json!(self.problems.iter().map(|p| p.failed).sum::<u64>()));
        m.insert("p50_tokens".into(), json!(quantile(&tokens, 0.5)));
        m.insert("p90_tokens".into(), json!(quantile(&tokens, 0.9)));
        m.insert("total_tokens".into(), json!(tokens.iter().sum::<u64>()));
        m.insert("tokens_per_s".into(), json!(self.tokens_per_s()));
        m.insert("seconds".into(), json!(self.seconds));
        for (k, v) in extra {
            m.insert(k, v);
        }
        m.insert("per_problem".into(), Value::Array(self.problems.iter().map(ProblemScore::to_json).collect()));
        Value::Object(m)
    }

    /// The table printed on stdout.
    pub fn to_text(&self) -> String {
        let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
        let tokens = self.sorted_tokens();
        let mut s = String::new();
        s.push_str(&format!(
            "eval: {} problems ({} scored), n={} asked, {} generations\n",
            self.problems.len(),
            self.scored().count(),
            self.n,
            self.generations()
        ));
        if self.problems.len() <= 20 {
            s.push_str(&format!(
                "  {:<24} {:>3} {:>7} {:>7} {:>7} {:>7} {:>8}\n",
                "problem", "n", "pass@1", "format", "trunc", "eos", "tokens"
            ));
            for p in &self.problems {
                let n = p.n().max(1) as f64;
                let r = |g: fn(&Scored) -> bool| p.samples.iter().filter(|x| g(x)).count() as f64 / n;
                let id: String = p.id.chars().take(24).collect();
                s.push_str(&format!(
                    "  {:<24} {:>3} {:>7} {:>7.3} {:>7.3} {:>7.3} {:>8.1}\n",
                    id,
                    p.n(),
                    if p.scored { f(p.pass_at_1()) } else { "-".into() },
                    r(|x| x.format),
                    r(|x| x.truncated),
                    r(|x| x.eos),
                    mean(&p.samples.iter().map(|x| x.tokens).collect::<Vec<_>>()).unwrap_or(0.0)
                ));
            }
        }
        match self.pass_at_1() {
            Some((p, se)) => s.push_str(&format!("  pass@1       {p:.3} ± {se:.3}\n")),
            None => s.push_str("  pass@1       - (no scored problem)\n"),
        }
        for (k, (v, c)) in self.pass_at_k() {
            if k > 1 {
                s.push_str(&format!("  pass@{k:<7} {v:.3}  ({c} problems)\n"));
            }
        }
        s.push_str(&format!("  format       {}\n", f(self.format_rate())));
        s.push_str(&format!("  truncated    {}\n", f(self.truncated_rate())));
        s.push_str(&format!("  eos          {}\n", f(self.eos_rate())));
        s.push_str(&format!(
            "  tokens       mean {}  p50 {}  p90 {}\n",
            mean(&tokens).map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into()),
            quantile(&tokens, 0.5).map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            quantile(&tokens, 0.9).map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
        ));
        s.push_str(&format!(
            "  speed        {} tokens/s over {:.1} s\n",
            self.tokens_per_s().map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
            self.seconds
        ));
        let failed: u64 = self.problems.iter().map(|p| p.failed).sum();
        if failed > 0 {
            s.push_str(&format!("  failed       {failed} generations never came (pass@k uses the real counts)\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binom(n: u64, k: u64) -> f64 {
        if k > n {
            return 0.0;
        }
        (0..k).map(|i| (n - i) as f64 / (i + 1) as f64).product()
    }

    #[test]
    fn pass_at_k_matches_the_formula_on_hand_made_cases() {
        // (n, c, k, expected by hand)
        let cases = [
            (1, 1, 1, 1.0),
            (1, 0, 1, 0.0),
            (4, 1, 1, 0.25),
            (4, 2, 1, 0.5),
            (4, 1, 2, 0.5),                 // 1 - C(3,2)/C(4,2) = 1 - 3/6
            (4, 2, 2, 5.0 / 6.0),           // 1 - C(2,2)/C(4,2) = 1 - 1/6
            (4, 3, 2, 1.0),                 // fewer failures than k
            (5, 2, 3, 0.9),                 // 1 - C(3,3)/C(5,3) = 1 - 1/10
            (10, 3, 4, 1.0 - 35.0 / 210.0), // 1 - C(7,4)/C(10,4)
            (4, 0, 4, 0.0),
            (4, 4, 4, 1.0),
        ];
        for (n, c, k, want) in cases {
            let got = pass_at_k(n, c, k).expect("defined");
            assert!((got - want).abs() < 1e-12, "pass@{k} n={n} c={c}: {got} vs {want}");
            let formula = 1.0 - binom(n - c, k) / binom(n, k);
            assert!((got - formula).abs() < 1e-12, "pass@{k} n={n} c={c}: {got} vs formula {formula}");
        }
        // Undefined with fewer samples than k: never pass@n in disguise.
        assert_eq!(pass_at_k(3, 1, 4), None);
        assert_eq!(pass_at_k(0, 0, 1), None);
        // Large n stays finite and in [0, 1].
        let big = pass_at_k(1000, 1, 64).expect("defined");
        assert!((big - 0.064).abs() < 1e-9, "{big}");
    }

    #[test]
    fn ks_are_powers_of_two_and_n() {
        assert_eq!(ks_for(1), vec![1]);
        assert_eq!(ks_for(4), vec![1, 2, 4]);
        assert_eq!(ks_for(6), vec![1, 2, 4, 6]);
        assert_eq!(ks_for(0), Vec::<u64>::new());
    }

    fn s(pass: bool, tokens: u64) -> Scored {
        Scored { pass, undecided: false, format: pass, truncated: !pass, eos: pass, tokens }
    }

    #[test]
    fn fewer_samples_than_asked_use_the_real_count() {
        // Asked n=4. Problem a: 4 samples, 1 correct. Problem b: only 2 came, 1 correct.
        let a = ProblemScore {
            id: "a".into(),
            task: "math".into(),
            scored: true,
            samples: vec![s(true, 10), s(false, 20), s(false, 30), s(false, 40)],
            failed: 0,
        };
        let b = ProblemScore {
            id: "b".into(),
            task: "math".into(),
            scored: true,
            samples: vec![s(true, 10), s(false, 20)],
            failed: 2,
        };
        let open =
            ProblemScore { id: "c".into(), task: "open".into(), scored: false, samples: vec![s(false, 5)], failed: 0 };
        let sum = Summary { problems: vec![a, b, open], n: 4, seconds: 2.0 };
        let (p1, se) = sum.pass_at_1().expect("scored");
        assert!((p1 - (0.25 + 0.5) / 2.0).abs() < 1e-12);
        // Standard error across the two problems: sd = sqrt(((0.25-0.375)^2*2)/1), /sqrt(2).
        assert!((se - 0.125).abs() < 1e-12, "{se}");
        let pk = sum.pass_at_k();
        // pass@2: a = 1 - C(3,2)/C(4,2) = 0.5; b (n=2, c=1) = 1 - C(1,2)/C(2,2) = 1.
        assert_eq!(pk[&2].1, 2);
        assert!((pk[&2].0 - 0.75).abs() < 1e-12);
        // pass@4: only a has 4 samples: 1 - C(3,4)/C(4,4) = 1.
        assert_eq!(pk[&4], (1.0, 1));
        let j = sum.to_json(Map::new());
        for key in
            ["pass_at_1", "pass_at_k", "format_rate", "truncated_rate", "eos_rate", "mean_tokens", "n", "problems"]
        {
            assert!(j.get(key).is_some(), "{key} in {j}");
        }
        assert_eq!(j["problems"], 3);
        assert_eq!(j["failed_generations"], 2);
        assert_eq!(j["generations"], 7);
        assert!((j["format_rate"].as_f64().unwrap() - 2.0 / 7.0).abs() < 1e-12);
        assert_eq!(j["p50_tokens"], 20);
        assert_eq!(j["tokens_per_s"], 135.0 / 2.0);
        assert!(sum.to_text().contains("pass@1       0.375"));
    }
}
