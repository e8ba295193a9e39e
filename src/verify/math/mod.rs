//! The math verifier: did a response reach the gold answer?
//!
//! In: a record with `task: math`, the gold in `answer` (string or number) and the response
//! in `content` (or `response`). Out: a [`Verdict`] with `pass`, `extracted` (the answer
//! found in the response) and `reason`: `equal`, `not_equal`, `no_answer`, `no_response`,
//! `missing_gold`, or `undecided: …` when the comparison ran out of its work budget or a side
//! could not be parsed (never a hang, never a panic).
//!
//! Pipeline: [`extract`] finds the final answer, [`latex`] parses both answers into
//! [`expr::Node`] trees, [`equiv`] compares them (exact rationals, numeric sampling,
//! structures).

pub mod equiv;
pub mod expr;
pub mod extract;
pub mod latex;

use serde_json::{Map, Value};

use crate::record::Verdict;
use equiv::Tri;

/// The outcome of one comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub pass: bool,
    /// True when neither equality nor inequality could be established.
    pub undecided: bool,
    /// The predicted answer as extracted.
    pub extracted: Option<String>,
    pub reason: String,
}

impl Judgement {
    fn new(tri: Tri, extracted: Option<String>) -> Judgement {
        match tri {
            Tri::True => Judgement { pass: true, undecided: false, extracted, reason: "equal".into() },
            Tri::False => Judgement { pass: false, undecided: false, extracted, reason: "not_equal".into() },
            Tri::Unknown(r) => Judgement { pass: false, undecided: true, extracted, reason: format!("undecided: {r}") },
        }
    }

    /// As a verdict with its outcome.
    pub fn to_judged(&self) -> super::Judged {
        let outcome = match (self.undecided, self.pass) {
            (true, _) => super::Outcome::Undecided,
            (false, true) => super::Outcome::Pass,
            (false, false) => super::Outcome::Fail,
        };
        super::Judged { verdict: self.to_verdict(), outcome }
    }

    /// As a record verdict.
    pub fn to_verdict(&self) -> Verdict {
        Verdict {
            pass: Some(self.pass),
            extracted: self.extracted.clone(),
            reason: Some(self.reason.clone()),
            ..Verdict::default()
        }
    }
}

fn compact(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace() && *c != '$').collect()
}

/// Compares two extracted answers (already without surrounding prose).
/// The letter of a multiple-choice answer: `B`, `(B)`, `\text{(B)}`, `\textbf{(B)} 12`,
/// `B) 12`; `None` for anything else.
fn choice_letter(s: &str, gold: bool) -> Option<char> {
    let mut t = s.trim().to_string();
    for pat in ["\\textbf", "\\text", "\\mathrm", "\\mathbf", "\\left", "\\right", "{", "}", "$", "\\"] {
        t = t.replace(pat, "");
    }
    let t = t.trim();
    let mut it = t.chars();
    let first = it.next()?;
    let (letter, rest) = if first == '(' {
        let l = it.next()?;
        if it.next()? != ')' {
            return None;
        }
        (l, it.as_str())
    } else {
        (first, it.as_str())
    };
    if !('A'..='E').contains(&letter.to_ascii_uppercase()) || (first != '(' && !letter.is_ascii_uppercase()) {
        return None;
    }
    let rest = rest.trim_start_matches([')', '.', ':']);
    // A gold answer must be the letter alone; a prediction may go on with the option's text.
    if rest.trim().is_empty() || (!gold && rest.starts_with(' ')) { Some(letter.to_ascii_uppercase()) } else { None }
}

pub fn compare_extracted(gold: &str, pred: &str) -> Tri {
    if let (Some(g), Some(p)) = (choice_letter(gold, true), choice_letter(pred, false)) {
        return if g == p { Tri::True } else { Tri::False };
    }
    let same_text = !compact(gold).is_empty() && compact(gold) == compact(pred);
    let (g, p) = (latex::parse(gold), latex::parse(pred));
    let tri = match (&g, &p) {
        (Ok(g), Ok(p)) => equiv::equivalent(g, p),
        (Err(e), _) if e.is_budget() => Tri::Unknown(format!("budget: gold answer: {e}")),
        (_, Err(e)) if e.is_budget() => Tri::Unknown(format!("budget: extracted answer: {e}")),
        (Err(e), _) => Tri::Unknown(format!("cannot parse gold answer: {e}")),
        (_, Err(e)) => {
            let (gt, pt) = (latex::normalize_text(gold), latex::normalize_text(pred));
            if !gt.is_empty() && gt == pt {
                Tri::True
            } else {
                Tri::Unknown(format!("cannot parse extracted answer: {e}"))
            }
        }
    };
    if same_text && !tri.is_true() { Tri::True } else { tri }
}

/// Compares two answer strings in Math-Verify's sense: both may carry prose, `$…$`,
/// `\boxed{}`; the answer of each is extracted first ([`extract::extract_answer`]).
pub fn compare_answer_strings(gold: &str, pred: &str) -> Judgement {
    let g = extract::extract_answer(gold);
    let p = extract::extract_answer(pred);
    let mut tri = compare_extracted(&g, &p);
    if !tri.is_true()
        && latex::parse(&p).is_err()
        && let Some(n) = extract::fallback_number(pred)
    {
        let t2 = compare_extracted(&g, &n);
        if t2.is_true() {
            tri = t2;
        }
    }
    Judgement::new(tri, Some(p))
}

/// Judges a model response against a gold answer.
pub fn verify_response(gold: &str, response: &str) -> Judgement {
    let Some(pred) = extract::extract_response(response) else {
        return Judgement { pass: false, undecided: false, extracted: None, reason: "no_answer".into() };
    };
    let g = extract::extract_answer(gold);
    Judgement::new(compare_extracted(&g, &pred), Some(pred))
}

/// The math [`super::Verifier`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MathVerifier;

fn text_field<'a>(rec: &'a Map<String, Value>, key: &str) -> Option<std::borrow::Cow<'a, str>> {
    match rec.get(key)? {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        _ => None,
    }
}

impl super::Verifier for MathVerifier {
    fn task(&self) -> crate::record::Task {
        crate::record::Task::Math
    }

    fn verify(&self, record: &Map<String, Value>) -> super::Judged {
        let Some(gold) = text_field(record, "answer") else {
            return Judgement { pass: false, undecided: true, extracted: None, reason: "missing_gold".into() }
                .to_judged();
        };
        let Some(response) = text_field(record, "content").or_else(|| text_field(record, "response")) else {
            return Judgement { pass: false, undecided: false, extracted: None, reason: "no_response".into() }
                .to_judged();
        };
        verify_response(&gold, &response).to_judged()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_end_to_end() {
        let cases: &[(&str, &str, bool, &str)] = &[
            ("3/4", "<think>hmm \\boxed{1/2}</think>So it is $\\boxed{\\frac{3}{4}}$.", true, "equal"),
            ("3/4", "so \\boxed{0.8}", false, "not_equal"),
            ("x=2", "The final answer is $2$.", true, "equal"),
            ("(B)", "The answer is \\boxed{B}", true, "equal"),
            ("B", "\\boxed{\\textbf{(B)}\\ 12}", true, "equal"),
            ("(C)", "\\boxed{(C) 12}", true, "equal"),
            ("(C)", "\\boxed{(B) 12}", false, "not_equal"),
            ("C", "**Answer:** C", true, "equal"),
            ("\\$5", "costs \\boxed{\\$5.00}", true, "equal"),
            ("42", "no idea", false, "no_answer"),
            ("13", "\\boxed{\\text{13}}", true, "equal"),
            ("y=2x+1", "\\boxed{y=1+2x}", true, "equal"),
            ("y=2x+1", "\\boxed{2x+1}", false, "not_equal"),
        ];
        for (gold, resp, pass, reason) in cases {
            let j = verify_response(gold, resp);
            assert_eq!((j.pass, j.reason.as_str()), (*pass, *reason), "{gold} / {resp}: {j:?}");
        }
    }

    #[test]
    fn budget_cases_are_undecided() {
        let j = verify_response("5", "\\boxed{10^{10^{10}}}");
        assert!(j.undecided && !j.pass, "{j:?}");
        let deep = format!("\\boxed{{{}1{}}}", "(".repeat(5000), ")".repeat(5000));
        let j = verify_response("1", &deep);
        assert!(j.undecided && !j.pass, "{j:?}");
        let mb = "word ".repeat(200_000) + "\\boxed{7}";
        assert!(verify_response("7", &mb).pass);
    }
}
