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

    /// Every answer type of the table tests, as (type, value, an equivalent rewriting, a
    /// different value): each is judged through the whole pipeline (extraction, parsing,
    /// comparison) against itself, against the rewriting (both ways), and against the other
    /// value — as bare answer strings and as boxed responses.
    const EVERY_TYPE: &[(&str, &str, &str, &str)] = &[
        ("integer", "42", "42.0", "43"),
        ("negative integer", "-7", "-\\frac{14}{2}", "7"),
        ("thousands", "7425000", "7,425,000", "742500"),
        ("fraction", "\\frac{3}{4}", "0.75", "\\frac{4}{3}"),
        ("improper fraction", "\\frac{10}{4}", "\\dfrac{5}{2}", "\\frac{5}{4}"),
        ("decimal", "2.5", "\\frac{5}{2}", "2.05"),
        ("percent", "28\\%", "0.28", "29\\%"),
        ("degrees", "90^\\circ", "90", "45^\\circ"),
        ("units", "15\\text{ cm}", "15", "16\\text{ cm}"),
        ("money", "\\$5", "\\$5.00", "\\$6"),
        ("radical", "2\\sqrt{2}", "\\sqrt{8}", "\\sqrt{2}"),
        ("radical fraction", "\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", "\\sqrt{3}"),
        ("cube root", "\\sqrt[3]{16}", "2\\sqrt[3]{2}", "\\sqrt[3]{2}"),
        ("pi", "\\frac{9\\pi}{4}", "\\frac94\\pi", "\\frac{9}{4}"),
        ("exponential", "e^2", "\\exp(2)", "2e"),
        ("complex", "3+4i", "4i+3", "3-4i"),
        ("trigonometric", "\\cos\\frac{\\pi}{3}", "\\frac12", "\\frac{\\sqrt3}{2}"),
        ("logarithm", "\\log_2 8", "3", "\\log_3 8"),
        ("binomial", "\\binom{5}{2}", "10", "\\binom{5}{3} + 1"),
        ("power", "2^{10}", "1024", "2^{11}"),
        ("expression", "(a+5)(b+2)", "ab + 2a + 5b + 10", "ab + 10"),
        ("polynomial", "x^2-1", "(x-1)(x+1)", "(x-1)^2"),
        ("plus-minus", "1 \\pm \\sqrt{19}", "\\{1-\\sqrt{19}, 1+\\sqrt{19}\\}", "1 + \\sqrt{19}"),
        ("equation", "y=2x+1", "2x - y + 1 = 0", "y = 2x - 1"),
        ("assignment", "x=5", "5", "x=6"),
        ("inequality", "x \\geq 5", "5 \\le x", "x > 5"),
        ("chained inequality", "-2 \\le x \\le 7", "x \\in [-2,7]", "-2 < x \\le 7"),
        ("interval", "[0,1)", "[0, \\frac{2}{2})", "[0,1]"),
        ("infinite interval", "(1, \\infty)", "(1, +\\infty)", "(-\\infty, 1)"),
        ("union", "(0,1) \\cup (2,3)", "(2,3) \\cup (0,1)", "(0,1) \\cup (2,4)"),
        ("set", "\\{1,2,3\\}", "\\{3,2,1\\}", "\\{1,2\\}"),
        ("list", "1, 2, 3", "3, 2, 1", "1, 2, 4"),
        ("tuple", "(1,\\frac{9}{2})", "(1, 4.5)", "(\\frac{9}{2}, 1)"),
        (
            "matrix",
            "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
            "\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}",
            "\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}",
        ),
        (
            "array matrix",
            "\\left(\\begin{array}{cc}1&2\\\\3&4\\end{array}\\right)",
            "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
            "\\left(\\begin{array}{cc}1&3\\\\2&4\\end{array}\\right)",
        ),
        (
            "matrix of fractions and radicals",
            "\\begin{pmatrix} \\frac{1}{2} & -\\frac{\\sqrt{3}}{2} \\\\ \\frac{\\sqrt{3}}{2} & \\frac{1}{2} \\end{pmatrix}",
            "\\begin{bmatrix} 0.5 & -\\frac{1}{2}\\sqrt{3} \\\\ \\frac{3}{2\\sqrt{3}} & \\tfrac12 \\end{bmatrix}",
            "\\begin{pmatrix} \\frac{1}{2} & \\frac{\\sqrt{3}}{2} \\\\ -\\frac{\\sqrt{3}}{2} & \\frac{1}{2} \\end{pmatrix}",
        ),
        (
            "matrix of expressions",
            "\\begin{pmatrix} 2x+1 & x^2-1 \\\\ 0 & \\sqrt{8} \\end{pmatrix}",
            "\\begin{pmatrix} 1+2x & (x-1)(x+1) \\\\ 0 & 2\\sqrt{2} \\end{pmatrix}",
            "\\begin{pmatrix} 2x+1 & x^2+1 \\\\ 0 & \\sqrt{8} \\end{pmatrix}",
        ),
        (
            "column vector",
            "\\begin{pmatrix} -\\frac{1}{3} \\\\ \\frac{2}{3} \\\\ \\sqrt{2} \\end{pmatrix}",
            "(-1/3, 2/3, \\frac{2}{\\sqrt{2}})",
            "\\begin{pmatrix} \\frac{1}{3} \\\\ \\frac{2}{3} \\\\ \\sqrt{2} \\end{pmatrix}",
        ),
        (
            "row vector",
            "\\begin{pmatrix} 1 & -2 & 3 \\end{pmatrix}",
            "\\begin{bmatrix}1&-2&3\\end{bmatrix}",
            "\\begin{pmatrix} 1 \\\\ -2 \\\\ 3 \\end{pmatrix}",
        ),
        ("text", "\\text{Evelyn}", "Evelyn", "\\text{Emily}"),
        ("choice", "(B)", "B", "(C)"),
    ];

    #[test]
    fn every_answer_type_against_itself_a_rewriting_and_another_value() {
        for (kind, value, rewriting, other) in EVERY_TYPE {
            for (gold, pred, want) in
                [(value, value, true), (value, rewriting, true), (rewriting, value, true), (value, other, false)]
            {
                let j = compare_answer_strings(gold, pred);
                assert_eq!(j.pass, want, "{kind}: answer strings {gold} / {pred}: {j:?}");
                let j = verify_response(gold, &format!("So the answer is $\\boxed{{{pred}}}$."));
                assert_eq!(j.pass, want, "{kind}: response \\boxed{{{pred}}} against {gold}: {j:?}");
                if !want {
                    assert_eq!(j.reason, "not_equal", "{kind}: {gold} / {pred}: {j:?}");
                }
            }
        }
    }

    #[test]
    fn the_matrix_of_the_issue_verifies_against_itself() {
        let m = "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}";
        let rec: Map<String, Value> = serde_json::from_value(
            serde_json::json!({"task": "math", "answer": m, "content": format!("\\boxed{{{m}}}")}),
        )
        .unwrap();
        let v = super::super::Verifier::verify(&MathVerifier, &rec);
        assert_eq!((v.verdict.pass, v.verdict.reason.as_deref()), (Some(true), Some("equal")), "{v:?}");
        for spaced in ["\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "$\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}$"]
        {
            assert!(verify_response(spaced, &format!("\\boxed{{{m}}}")).pass, "{spaced}");
            assert!(verify_response(m, &format!("The final answer is {spaced}")).pass, "{spaced}");
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
