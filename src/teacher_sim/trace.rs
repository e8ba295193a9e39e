//! R1-style traces: a `<think>` monologue (restating, working the steps, second-guessing,
//! double-checking) and a short summary ending in `\boxed{}` or a fenced program, with the
//! content faults (wrong answer, language mixing, runaway repetition, truncation, missing
//! `</think>`) applied, then cut into "tokens" and rendered in either response shape.

use crate::problems::{self, Solved};
use crate::record::Task;

/// Probabilities of the content faults; drawn deterministically from the request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ContentFaults {
    pub wrong: f64,
    pub langmix: f64,
    pub repeat: f64,
    pub truncate: f64,
    pub no_close: f64,
}

/// A generated completion before rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub reasoning: String,
    pub answer: String,
    /// False for the missing-`</think>` fault: the whole text is one unclosed thought.
    pub closed: bool,
    /// Tokens to keep when the truncation fault fired.
    pub cut_at: Option<usize>,
    /// The content faults injected (`wrong`, `langmix`, `repeat`, `truncate`, `no_close`).
    pub faults: Vec<&'static str>,
}

const OPENERS: [&str; 4] = [
    "Okay, let's see.",
    "Alright, so I need to figure this out.",
    "Hmm, let me think about this problem.",
    "Okay, so I need to solve this.",
];

const FILLERS: [&str; 10] = [
    "Let me make sure I read that correctly.",
    "That seems right so far.",
    "Hmm, wait, let me check this step again.",
    "Okay, moving on.",
    "I should be careful with the details here.",
    "Let me write this out more explicitly.",
    "Is there another way to see this? Maybe, but the direct approach is fine.",
    "I think that's consistent with what the problem asks.",
    "No, wait, that is what I had before, so it's fine.",
    "Let me not rush this part.",
];

const MIXED: [&str; 5] = [
    "让我再检查一下这个步骤。",
    "首先，我们需要仔细计算。",
    "这个结果看起来是正确的。",
    "等一下，我再想一想。",
    "所以我们可以继续下一步。",
];

fn pick<'a>(rng: &mut fastrand::Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.usize(..xs.len())]
}

/// The first sentence of a problem, for the restatement.
fn first_sentence(text: &str) -> &str {
    let text = text.trim();
    let end = text.find(". ").map(|i| i + 1).or_else(|| text.find('\n')).unwrap_or(text.len());
    let mut end = end.min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn last_integer(text: &str) -> Option<&str> {
    text.split(|c: char| !c.is_ascii_digit()).rfind(|s| !s.is_empty())
}

/// Foreign sentences the `langmix` fault plants in long traces (`--words`): a pair of Chinese
/// phrases, or one of these (written for the simulator, apart from the filter's labelled set).
const FOREIGN: [&str; 6] = [
    "Bueno, ahora tengo que revisar otra vez todos los cálculos de este paso.",
    "Also, jetzt muss ich noch einmal alle Rechnungen in diesem Schritt prüfen.",
    "Bon, maintenant je dois vérifier encore une fois tous les calculs de cette étape.",
    "Хорошо, теперь нужно ещё раз проверить все вычисления на этом шаге.",
    "حسناً، الآن يجب أن أراجع جميع الحسابات في هذه الخطوة مرة أخرى.",
    "よし、このステップの計算をもう一度すべて確認しなければならない。",
];

/// Generates the completion for `question` (the last user message). `rng` must be seeded from
/// the request so that the same request gets the same completion.
pub fn generate(question: &str, rng: &mut fastrand::Rng, faults: &ContentFaults) -> Generation {
    generate_words(question, rng, faults, None)
}

/// Like [`generate`]; with `words`, the reasoning is about that many words (±10%) of R1-style
/// deliberation from the phrase bank ([`super::phrases`]), and the faults are placed where a
/// truncation cannot hide them (language mixing in the first 40% of the trace, loops in
/// 20–40%; truncation keeps at least half).
pub fn generate_words(
    question: &str,
    rng: &mut fastrand::Rng,
    faults: &ContentFaults,
    words: Option<usize>,
) -> Generation {
    match words {
        None => generate_short(question, rng, faults),
        Some(n) => generate_long(question, rng, faults, n),
    }
}

fn fired(wrong: bool, langmix: bool, repeat: bool, truncate: bool, no_close: bool) -> Vec<&'static str> {
    [(wrong, "wrong"), (langmix, "langmix"), (repeat, "repeat"), (truncate, "truncate"), (no_close, "no_close")]
        .into_iter()
        .filter(|x| x.0)
        .map(|x| x.1)
        .collect()
}

fn solved_or_fallback(question: &str) -> Solved {
    problems::solve(question).unwrap_or_else(|| {
        let n = last_integer(question).unwrap_or("0").to_string();
        Solved {
            task: Task::Open,
            answer: n.clone(),
            wrong: format!("{n}1"),
            steps: vec![
                "I'll take the quantity the question is about and reason about it directly.".into(),
                format!("The key number in the question is {n}, and working from it gives {n}."),
            ],
        }
    })
}

fn final_answer_text(s: &Solved, final_answer: &str) -> String {
    match s.task {
        Task::Code => format!("Here is the solution.\n\n```python\n{final_answer}```\n\n{}", s.steps.join(" ")),
        _ => format!(
            "**Solution.** {}\n\nTherefore, the final answer is $\\boxed{{{final_answer}}}$.",
            s.steps.join(" ")
        ),
    }
}

fn generate_long(question: &str, rng: &mut fastrand::Rng, faults: &ContentFaults, words: usize) -> Generation {
    use super::phrases;
    let wrong = rng.f64() < faults.wrong;
    let langmix = rng.f64() < faults.langmix;
    let repeat = rng.f64() < faults.repeat;
    let truncate = rng.f64() < faults.truncate;
    let no_close = rng.f64() < faults.no_close;
    let target = (words.max(20) as f64 * (0.9 + 0.2 * rng.f64())) as usize;
    let style = if rng.bool() { phrases::Style::PLAIN } else { phrases::Style::HEAVY };
    let s = solved_or_fallback(question);
    let final_answer = if wrong { &s.wrong } else { &s.answer };

    let mut paras: Vec<String> =
        vec![format!("{} The problem says: {}", pick(rng, &OPENERS), first_sentence(question))];
    paras.push(s.steps.join(" "));
    let mut body = String::new();
    let used: usize = paras.iter().map(|p| p.split_whitespace().count()).sum();
    phrases::deliberate(rng, style, target.saturating_sub(used + 40), &mut body);
    let mut again = String::from("Wait, let me double-check the whole computation once more.");
    for step in &s.steps {
        again.push(' ');
        again.push_str(step);
    }
    let mut body_paras: Vec<String> = body.split("\n\n").map(str::to_string).collect();
    let mid = body_paras.len() / 2;
    body_paras.insert(mid, again);
    paras.extend(body_paras);
    let n = paras.len();
    if repeat {
        let sentence = pick(rng, &FILLERS);
        let times = 30 + rng.usize(..30);
        let at = (n / 5 + rng.usize(..(n / 5).max(1))).clamp(1, n);
        paras.insert(at, vec![sentence; times].join(" "));
    }
    if langmix {
        let at = (1 + rng.usize(..(n * 2 / 5).max(1))).min(paras.len());
        let k = rng.usize(..FOREIGN.len() + 1);
        let planted = if k == FOREIGN.len() {
            format!("{} {}", pick(rng, &MIXED), pick(rng, &MIXED))
        } else {
            FOREIGN[k].to_string()
        };
        // Mid-paragraph: after the paragraph's first sentence.
        let last = paras.len() - 1;
        let p = &mut paras[at.min(last)];
        match p.find(". ") {
            Some(i) => p.insert_str(i + 2, &format!("{planted} ")),
            None => p.push_str(&format!(" {planted}")),
        }
    }
    match s.task {
        Task::Code => paras.push("So the program is ready; let me write it out.".into()),
        _ => paras.push(format!("So the final answer is {final_answer}.")),
    }
    let reasoning = paras.join("\n\n");
    let answer = final_answer_text(&s, final_answer);
    let cut_at = if truncate {
        let n = pieces(&reasoning).len();
        Some(n / 2 + rng.usize(..n.div_ceil(3).max(1)))
    } else {
        None
    };
    Generation {
        reasoning,
        answer,
        closed: !no_close,
        cut_at,
        faults: fired(wrong, langmix, repeat, truncate, no_close),
    }
}

fn generate_short(question: &str, rng: &mut fastrand::Rng, faults: &ContentFaults) -> Generation {
    // Draw every decision up front, in a fixed order.
    let wrong = rng.f64() < faults.wrong;
    let langmix = rng.f64() < faults.langmix;
    let repeat = rng.f64() < faults.repeat;
    let truncate = rng.f64() < faults.truncate;
    let no_close = rng.f64() < faults.no_close;
    let target_words = 60 + rng.usize(..540);
    let checks = rng.usize(..3);

    let solved = problems::solve(question);
    let fallback = || {
        let n = last_integer(question).unwrap_or("0").to_string();
        Solved {
            task: Task::Open,
            answer: n.clone(),
            wrong: format!("{n}1"),
            steps: vec![
                "I'll take the quantity the question is about and reason about it directly.".into(),
                format!("The key number in the question is {n}, and working from it gives {n}."),
            ],
        }
    };
    let s = solved.unwrap_or_else(fallback);
    let final_answer = if wrong { &s.wrong } else { &s.answer };

    let mut paras: Vec<String> = Vec::new();
    paras.push(format!("{} The problem says: {}", pick(rng, &OPENERS), first_sentence(question)));
    let mut work = String::new();
    for step in &s.steps {
        work.push_str(step);
        work.push(' ');
        if rng.bool() {
            work.push_str(pick(rng, &FILLERS));
            work.push(' ');
        }
    }
    paras.push(work.trim_end().to_string());
    for _ in 0..checks {
        let mut again = String::from("Wait, let me double-check that.");
        for step in &s.steps {
            again.push(' ');
            again.push_str(step);
        }
        paras.push(again);
    }
    // Pad to the drawn length with more deliberation.
    let mut words: usize = paras.iter().map(|p| p.split_whitespace().count()).sum();
    while words < target_words {
        let mut p = String::new();
        for _ in 0..4 {
            p.push_str(if langmix && rng.f64() < 0.5 { pick(rng, &MIXED) } else { pick(rng, &FILLERS) });
            p.push(' ');
        }
        words += p.split_whitespace().count();
        paras.push(p.trim_end().to_string());
    }
    if langmix {
        paras.insert(1, format!("{} {}", pick(rng, &MIXED), pick(rng, &MIXED)));
    }
    if repeat {
        let sentence = pick(rng, &FILLERS);
        let times = 30 + rng.usize(..30);
        paras.push(vec![sentence; times].join(" "));
    }
    match s.task {
        Task::Code => paras.push("So the program is ready; let me write it out.".into()),
        _ => paras.push(format!("So the final answer is {final_answer}.")),
    }
    let reasoning = paras.join("\n\n");

    let answer = match s.task {
        Task::Code => format!("Here is the solution.\n\n```python\n{final_answer}```\n\n{}", s.steps.join(" ")),
        _ => format!(
            "**Solution.** {}\n\nTherefore, the final answer is $\\boxed{{{final_answer}}}$.",
            s.steps.join(" ")
        ),
    };
    let cut_at = if truncate {
        let n = pieces(&reasoning).len();
        Some(n / 2 + rng.usize(..n.div_ceil(3).max(1)))
    } else {
        None
    };
    Generation {
        reasoning,
        answer,
        closed: !no_close,
        cut_at,
        faults: fired(wrong, langmix, repeat, truncate, no_close),
    }
}

/// Splits text into "tokens": each is a run of non-space characters with the whitespace that
/// follows it (leading whitespace is its own token), so joining them gives the text back.
pub fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut prev_ws = false;
    for (i, c) in text.char_indices() {
        let ws = c.is_whitespace();
        if !ws && prev_ws && i > start {
            out.push(&text[start..i]);
            start = i;
        }
        prev_ws = ws;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// How completions are shaped on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// `<think>…</think>` inline in `content`.
    Inline,
    /// `message.reasoning_content` beside `content` (DeepSeek API, vLLM reasoning parsers).
    ReasoningContent,
}

/// A completion as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// Text of `reasoning_content` (reasoning-content shape only).
    pub reasoning_content: Option<String>,
    pub content: String,
    pub finish_reason: &'static str,
    pub completion_tokens: u64,
}

/// Cuts the generation at the truncation point or `max_tokens` and renders it in `shape`.
pub fn render(g: &Generation, shape: Shape, max_tokens: Option<u64>) -> Rendered {
    // The token stream: reasoning, then the answer (a missing `</think>` makes it all reasoning).
    let joined;
    let (rp, ap) = if g.closed {
        (pieces(&g.reasoning), pieces(&g.answer))
    } else {
        joined = format!("{}\n\n{}", g.reasoning, g.answer);
        (pieces(&joined), Vec::new())
    };
    let total = rp.len() + ap.len();
    let mut keep = total;
    if let Some(c) = g.cut_at {
        keep = keep.min(c);
    }
    if let Some(m) = max_tokens {
        keep = keep.min(usize::try_from(m).unwrap_or(usize::MAX));
    }
    let finish_reason = if keep < total { "length" } else { "stop" };
    let closed = g.closed && keep > rp.len();
    let reasoning: String = rp[..keep.min(rp.len())].concat();
    let answer: String = if closed { ap[..keep - rp.len()].concat() } else { String::new() };
    let (reasoning_content, content) = match shape {
        Shape::Inline if closed => (None, format!("<think>\n{reasoning}\n</think>\n\n{answer}")),
        Shape::Inline => (None, format!("<think>\n{reasoning}")),
        Shape::ReasoningContent => (Some(reasoning), answer),
    };
    Rendered { reasoning_content, content, finish_reason, completion_tokens: keep as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_round_trip() {
        for t in ["", "a", "  a b\n\nc ", "x  y", "让我 再"] {
            assert_eq!(pieces(t).concat(), t, "{t:?}");
        }
        assert_eq!(pieces("a b  c").len(), 3);
    }

    #[test]
    fn correct_and_wrong_answers() {
        let q = "Compute $12 \\times 3 - 6$.\n\nPlease reason step by step.";
        let ok = generate(q, &mut fastrand::Rng::with_seed(1), &ContentFaults::default());
        assert!(ok.answer.contains("\\boxed{30}") && ok.closed && ok.cut_at.is_none(), "{}", ok.answer);
        let f = ContentFaults { wrong: 1.0, ..Default::default() };
        let bad = generate(q, &mut fastrand::Rng::with_seed(1), &f);
        assert!(bad.answer.contains("\\boxed{42}"), "{}", bad.answer);
    }

    #[test]
    fn faults_show() {
        let q = "Compute $12 \\times 3 - 6$.";
        let all = ContentFaults { langmix: 1.0, repeat: 1.0, no_close: 1.0, ..Default::default() };
        let g = generate(q, &mut fastrand::Rng::with_seed(2), &all);
        assert!(g.reasoning.contains('。') && !g.closed);
        let r = render(&g, Shape::Inline, None);
        assert!(!r.content.contains("</think>") && r.content.starts_with("<think>"));
        let t = ContentFaults { truncate: 1.0, ..Default::default() };
        let g = generate(q, &mut fastrand::Rng::with_seed(3), &t);
        let r = render(&g, Shape::ReasoningContent, None);
        assert_eq!((r.finish_reason, r.content.as_str()), ("length", ""));
    }

    #[test]
    fn long_traces_have_the_words_and_show_their_faults() {
        let q = "Compute $12 \\times 3 - 6$.";
        let g = generate_words(q, &mut fastrand::Rng::with_seed(5), &ContentFaults::default(), Some(3000));
        let n = g.reasoning.split_whitespace().count();
        assert!((2600..=3500).contains(&n), "{n}");
        assert!(g.answer.contains("\\boxed{30}") && g.faults.is_empty());
        let all = ContentFaults { wrong: 1.0, langmix: 1.0, repeat: 1.0, truncate: 1.0, no_close: 1.0 };
        let g = generate_words(q, &mut fastrand::Rng::with_seed(6), &all, Some(3000));
        assert_eq!(g.faults, vec!["wrong", "langmix", "repeat", "truncate", "no_close"]);
        assert!(g.cut_at.is_some() && !g.closed && g.answer.contains("\\boxed{42}"));
    }

    #[test]
    fn shapes_carry_the_same_text() {
        let q = "Expand $(x + 5)(x - 2)$.";
        let g = generate(q, &mut fastrand::Rng::with_seed(4), &ContentFaults::default());
        for max in [None, Some(10), Some(100_000)] {
            let a = render(&g, Shape::Inline, max);
            let b = render(&g, Shape::ReasoningContent, max);
            assert_eq!(a.completion_tokens, b.completion_tokens);
            assert_eq!(a.finish_reason, b.finish_reason);
            let rc = b.reasoning_content.unwrap_or_default();
            assert!(a.content.contains(rc.as_str()) && a.content.ends_with(&b.content));
        }
        assert_eq!(render(&g, Shape::Inline, Some(10)).finish_reason, "length");
    }
}
