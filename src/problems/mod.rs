//! `distill problems`: generated problem sets with exact answers, for the offline demo and the
//! tests.
//!
//! In: nothing (a kind, a count, a seed). Out: Prompt records (`task: math` with a gold
//! `answer`, or `task: code` with `tests` in the [`CodeTests`] format), deterministic by seed.
//!
//! Math families cover integer, fraction, radical, expression, interval and set answers; code
//! families cover `assert` (HumanEval-style `check(candidate)` and bare asserts), `stdio` and
//! `call` tests. Every family also knows its reference solution and a subtly wrong variant:
//! [`solve`] recognises a generated problem from its text, which is how `distill teacher-sim`
//! answers correctly (or, on purpose, wrongly).

mod code;
mod math;
pub mod template;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::record::{CodeTests, Extra, Prompt, Task};
use crate::store::{self, StoreError};

/// Which problem set to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProblemKind {
    Math,
    Code,
}

/// Settings of `distill problems`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProblemsConfig {
    /// `math` or `code`; required.
    pub kind: Option<ProblemKind>,
    /// How many problems; required.
    pub count: u64,
    pub seed: u64,
    /// Output file (.jsonl, .jsonl.zst or .parquet).
    pub out: PathBuf,
    /// Only this family (a name from the kind's rotation, or `add2` / `add3`); unset: all
    /// families of the kind in turn.
    pub family: Option<String>,
}

impl Default for ProblemsConfig {
    fn default() -> Self {
        ProblemsConfig { kind: None, count: 0, seed: 0, out: PathBuf::new(), family: None }
    }
}

impl crate::config::Settings for ProblemsConfig {
    const TABLE: &'static str = "problems";

    fn validate(&self) -> Result<(), String> {
        if self.kind.is_none() {
            return Err("problems needs `kind` (math or code)".into());
        }
        if self.count == 0 {
            return Err("problems needs `count` (at least 1)".into());
        }
        if self.out.as_os_str().is_empty() {
            return Err("problems needs `out` (a .jsonl, .jsonl.zst or .parquet file)".into());
        }
        if let Some(name) = &self.family
            && family_by_name(name).is_none()
        {
            return Err(format!("problems `family` {name:?} is unknown; known: {}", family_names().join(", ")));
        }
        Ok(())
    }
}

/// Errors of `problems`.
#[derive(Debug, thiserror::Error)]
pub enum ProblemsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot serialise problem {id}: {msg}")]
    Serialise { id: String, msg: String },
}

/// A generated problem's solution, as the simulated teacher needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Solved {
    pub task: Task,
    /// Math: the gold answer (LaTeX). Code: the reference program.
    pub answer: String,
    /// A plausible wrong answer or a subtly wrong program.
    pub wrong: String,
    /// The solution's reasoning steps, one sentence each.
    pub steps: Vec<String>,
}

impl Solved {
    fn math(answer: String, wrong: String, steps: Vec<String>) -> Self {
        Solved { task: Task::Math, answer, wrong, steps }
    }
    fn code(answer: String, wrong: String, steps: Vec<String>) -> Self {
        Solved { task: Task::Code, answer, wrong, steps }
    }
}

/// One problem family: a text template with integer holes and what to do with its parameters.
pub(crate) struct Family {
    pub name: &'static str,
    /// Answer kind (math) or test kind (code), recorded in `meta`.
    pub kind: &'static str,
    pub task: Task,
    pub template: &'static str,
    pub params: fn(&mut fastrand::Rng) -> Vec<i64>,
    pub solve: fn(&[i64]) -> Option<Solved>,
    pub tests: Option<fn(&[i64], &mut fastrand::Rng) -> CodeTests>,
}

fn families(kind: ProblemKind) -> &'static [Family] {
    match kind {
        ProblemKind::Math => math::FAMILIES,
        ProblemKind::Code => code::FAMILIES,
    }
}

fn all_families() -> impl Iterator<Item = &'static Family> {
    math::FAMILIES.iter().chain(code::FAMILIES).chain(math::EXTRA)
}

fn family_by_name(name: &str) -> Option<&'static Family> {
    all_families().find(|f| f.name == name)
}

/// The names `family` accepts.
pub fn family_names() -> Vec<&'static str> {
    all_families().map(|f| f.name).collect()
}

/// Problem `index` of the set of `kind` with `seed`: families in turn, parameters drawn from a
/// generator seeded by (seed, index), so any problem can be made without the ones before it.
pub fn problem(kind: ProblemKind, seed: u64, index: u64) -> Prompt {
    let fams = families(kind);
    make(&fams[(index % fams.len() as u64) as usize], kind, seed, index)
}

/// Problem `index` of one named family (`None` when no family has that name).
pub fn problem_of(family: &str, seed: u64, index: u64) -> Option<Prompt> {
    let fam = family_by_name(family)?;
    let kind = if fam.task == Task::Code { ProblemKind::Code } else { ProblemKind::Math };
    Some(make(fam, kind, seed, index))
}

fn make(fam: &Family, kind: ProblemKind, seed: u64, index: u64) -> Prompt {
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index);
    let params = (fam.params)(&mut rng);
    let text = template::fill(fam.template, &params);
    let solved = (fam.solve)(&params);
    let tag = match kind {
        ProblemKind::Math => "math",
        ProblemKind::Code => "code",
    };
    let kind_key = if fam.task == Task::Math { "answer_type" } else { "test_kind" };
    Prompt {
        id: format!("gen-{tag}-s{seed}-{index:06}"),
        task: fam.task,
        prompt: text,
        answer: match fam.task {
            Task::Math => solved.map(|s| s.answer),
            _ => None,
        },
        tests: fam.tests.map(|t| t(&params, &mut rng)),
        source: Some(format!("distill-problems/{tag}")),
        meta: Some(json!({"family": fam.name, kind_key: fam.kind, "seed": seed})),
        extra: Extra::new(),
    }
}

/// Recognises a generated problem from the start of `text` (an instruction may follow) and
/// solves it.
pub fn solve(text: &str) -> Option<Solved> {
    let text = text.trim_start();
    for fam in all_families() {
        if let Some(params) = template::parse(fam.template, text)
            && let Some(s) = (fam.solve)(&params)
        {
            return Some(s);
        }
    }
    None
}

/// Writes `count` problems to `out`; returns how many were written.
pub fn generate(cfg: &ProblemsConfig) -> Result<u64, ProblemsError> {
    let kind = cfg.kind.unwrap_or(ProblemKind::Math);
    let mut sink = store::create(&cfg.out)?;
    for i in 0..cfg.count {
        let p = match &cfg.family {
            Some(name) => problem_of(name, cfg.seed, i).ok_or_else(|| ProblemsError::Serialise {
                id: format!("#{i}"),
                msg: format!("unknown family {name:?}; known: {}", family_names().join(", ")),
            })?,
            None => problem(kind, cfg.seed, i),
        };
        let v =
            serde_json::to_value(&p).map_err(|e| ProblemsError::Serialise { id: p.id.clone(), msg: e.to_string() })?;
        sink.write_value(&v)?;
    }
    sink.finish()?;
    Ok(cfg.count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_problem_is_recognised_and_solved() {
        for kind in [ProblemKind::Math, ProblemKind::Code] {
            for i in 0..200 {
                let p = problem(kind, 3, i);
                let s = solve(&format!("{}\n\nPlease reason step by step.", p.prompt))
                    .unwrap_or_else(|| panic!("not recognised: {}", p.prompt));
                assert_ne!(s.answer, s.wrong, "{}", p.prompt);
                match kind {
                    ProblemKind::Math => assert_eq!(p.answer.as_deref(), Some(s.answer.as_str())),
                    ProblemKind::Code => {
                        assert!(p.tests.is_some() && p.answer.is_none());
                        assert!(s.answer.contains("def ") || s.answer.contains("print("));
                    }
                }
            }
        }
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        assert_eq!(problem(ProblemKind::Math, 1, 5), problem(ProblemKind::Math, 1, 5));
        assert_ne!(problem(ProblemKind::Math, 1, 5).prompt, problem(ProblemKind::Math, 2, 5).prompt);
    }

    #[test]
    fn answer_kinds() {
        let cases = [
            ("Compute $12 \\times 3 - 6$.", "30"),
            ("What is the sum of the first 4 positive multiples of 3?", "30"),
            ("Compute $\\frac{1}{2} + \\frac{1}{3}$. Give the answer as a fraction in lowest terms.", "\\frac{5}{6}"),
            ("Simplify $\\sqrt{72}$ to the form $a\\sqrt{b}$ with $b$ square-free.", "6\\sqrt{2}"),
            ("Expand $(x + 5)(x - 2)$.", "x^2 + 3x - 10"),
            ("Expand $(x + 2)(x - 3)$.", "x^2 - x - 6"),
            ("Solve the inequality $3x + 5 > -7$ and give the answer in interval notation.", "(-4, \\infty)"),
            ("Find all real solutions of $x^2 - 5x + 6 = 0$. Give the answer as a set.", "\\{2, 3\\}"),
        ];
        for (text, want) in cases {
            assert_eq!(solve(text).map(|s| s.answer).as_deref(), Some(want), "{text}");
        }
        assert_eq!(solve("What is the capital of France?"), None);
    }
}
