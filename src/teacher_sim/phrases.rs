//! A phrase bank of R1-style reasoning moves (restating, working steps with LaTeX,
//! verification, backtracking, case splits, alternatives, meta-comments) and the generator that
//! strings them into paragraphs of deliberation up to a word budget.
//!
//! Self-contained (only `fastrand`), so the filter's measurement crate can include it by path.
//! Moves are templates: `{a}`, `{b}`, `{c}` are small integers drawn per move, `{s}` = a + b,
//! `{p}` = a·b, `{d}` = a − b, `{v}` a variable letter, `{q}` a quantity noun.

/// Restating and planning.
pub const PLAN: &[&str] = &[
    "Let me restate what is being asked so I don't lose track of it.",
    "First, I need to understand exactly what the question wants.",
    "So the goal is to find a single value, and everything else is setup.",
    "Let me list what I know before doing any algebra.",
    "I think the cleanest plan is to set up an equation and solve it.",
    "Let me break this into smaller pieces and handle them one at a time.",
    "The problem gives me a few numbers; let me write them down clearly.",
    "Before computing anything, let me think about which approach is fastest.",
    "I'll start with the most direct method and see where it leads.",
    "It might help to name the unknown: call it ${v}$.",
    "Let me denote the {q} by ${v}$ and express everything in terms of it.",
    "The key constraint seems to be the relation between ${v}$ and {a}.",
    "Okay, so there are really two parts here: setting up and then simplifying.",
    "My plan: compute the pieces, combine them, then sanity-check the result.",
    "I should figure out what form the answer is expected in.",
    "The answer should probably be an integer, but I shouldn't assume that.",
    "Let me reread the statement once more to make sure I have all the conditions.",
    "So the question boils down to evaluating one expression carefully.",
    "This looks like a standard exercise, but the details matter.",
    "I want to be systematic here rather than guessing.",
];

/// Working steps, many with inline LaTeX.
pub const STEP: &[&str] = &[
    "Adding the two numbers gives ${a} + {b} = {s}$.",
    "Multiplying, ${a} \\times {b} = {p}$.",
    "Subtracting, ${a} - {b} = {d}$.",
    "So the sum is {s}, which I'll carry forward.",
    "That means ${v} = {a}$ satisfies the first condition.",
    "Substituting ${v} = {a}$ into the expression gives ${a} \\cdot {b} = {p}$.",
    "The product of {a} and {b} is {p}, and adding {c} gives a bit more than that.",
    "Let me write it as a fraction: $\\frac{{a}}{{b}}$.",
    "Putting the fractions over a common denominator: $\\frac{{a}}{{b}} + \\frac{{c}}{{b}} = \\frac{{a} + {c}}{{b}}$.",
    "Squaring both sides, $({v} + {a})^2 = {v}^2 + 2 \\cdot {a} {v} + {a}^2$.",
    "Expanding $({v} + {a})({v} - {b})$ gives ${v}^2 + ({a} - {b}){v} - {p}$.",
    "The discriminant is $b^2 - 4ac$, so I need the coefficients first.",
    "Using the quadratic formula, ${v} = \\frac{-b \\pm \\sqrt{b^2 - 4ac}}{2a}$.",
    "Factoring out the common term, ${a}{v} + {a}{b} = {a}({v} + {b})$.",
    "So $\\sqrt{{a}^2} = {a}$, since {a} is positive.",
    "Dividing both sides by {a} leaves ${v} = \\frac{{p}}{{a}} = {b}$.",
    "Then the total is ${a} + {b} + {c}$.",
    "By the distributive law, ${a}({b} + {c}) = {a} \\cdot {b} + {a} \\cdot {c}$.",
    "Combining like terms: ${a}{v} + {b}{v} = {s}{v}$.",
    "Now I set the derivative to zero: $f'({v}) = 0$.",
    "The area is $\\frac{1}{2} \\cdot {a} \\cdot {b}$.",
    "By the Pythagorean theorem, $c^2 = a^2 + b^2$.",
    "The number of ways is $\\binom{{s}}{{a}}$, choosing {a} out of {s}.",
    "So the probability is $\\frac{{a}}{{s}}$, the favourable cases over all cases.",
    "The sequence is arithmetic with common difference {a}.",
    "The $n$-th term is $a_n = a_1 + (n - 1)d$.",
    "Summing the series, $\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}$.",
    "Taking the logarithm, $\\log({a} \\cdot {b}) = \\log {a} + \\log {b}$.",
    "Reducing modulo {b}, the remainder is what matters here.",
    "The greatest common divisor of {a} and {b} divides their difference {d}.",
    "So the inequality becomes ${v} > {a}$, i.e. ${v} \\in ({a}, \\infty)$.",
    "Isolating ${v}$: ${v} = {s} - {b} = {a}$.",
    "Converting to a common unit first avoids mistakes later.",
    "Then I multiply through by the denominator to clear fractions.",
    "Let me carry the computation one line at a time.",
    "Plugging in the numbers: {a} times {b} is {p}.",
    "So {p} plus {c} is the next partial result.",
    "The two expressions agree at ${v} = {a}$, which is reassuring.",
    "Rewriting, ${v}^2 - {s}{v} + {p} = ({v} - {a})({v} - {b})$.",
    "So the roots are ${v} = {a}$ and ${v} = {b}$.",
    "Therefore the expression simplifies to {s}.",
    "Since the factor {a} appears in both terms, it cancels.",
    "The remaining piece is just {c}, which is small.",
    "In interval notation that is $[{a}, {s}]$.",
    "As a set, the solutions are $\\{{a}, {b}\\}$.",
    "Using $\\frac{d}{d{v}} {v}^n = n {v}^{n-1}$, the derivative is straightforward.",
    "The integral $\\int_0^{a} {v} \\, d{v} = \\frac{{a}^2}{2}$.",
    "So the slope is $\\frac{{b} - {a}}{{c}}$.",
    "We have ${v} \\equiv {a} \\pmod{{b}}$.",
    "The perimeter is $2({a} + {b}) = 2 \\cdot {s}$.",
    "Each of the {a} groups has {b} items, so there are {p} in total.",
    "Half of {p} is what I need next.",
    "Okay, so after simplification I get {s}.",
    "Then $\\sqrt{{p}}$ lies between two consecutive integers.",
    "The expression under the root must be non-negative, so ${v} \\ge {a}$.",
    "Writing the equation as ${a}{v} = {p}$ makes the next step clear.",
    "Hence ${v} = {b}$.",
    "Let me compute it step by step: first {a}, then add {b}, so {s}.",
    "After distributing, the constant term is {p}.",
    "The leading coefficient is {a}, so the parabola opens upward.",
];

/// Verification and double-checking.
pub const VERIFY: &[&str] = &[
    "Let me double-check that.",
    "Let me verify this by plugging the value back in.",
    "Checking: ${a} + {b}$ is indeed {s}.",
    "Let me recompute to be safe: {a} times {b} is {p}. Yes.",
    "Does this make sense? The value {s} is in a reasonable range.",
    "Let me verify with a small case to make sure the formula works.",
    "Sanity check: if ${v} = {a}$, the left side equals the right side.",
    "Let me confirm the arithmetic once more.",
    "That checks out.",
    "Good, both methods give the same result.",
    "Let me make sure I didn't drop a sign somewhere.",
    "Checking the units: everything is consistent.",
    "Plugging ${v} = {b}$ back into the original equation works.",
    "Let me recount: {a}, then {b} more, gives {s}. Correct.",
    "I should verify the edge case too.",
    "Let me test the boundary value ${v} = {a}$ as well.",
    "Double-checking the expansion term by term, it's right.",
    "Let me re-derive that line more carefully.",
    "Yes, {p} divided by {a} is {b}, so that's consistent.",
    "To be thorough, let me check the other root as well.",
    "Let me verify that the answer satisfies every condition in the problem.",
    "Hmm, let me check whether I read the question correctly.",
    "Verifying the second condition as well: it holds.",
    "Let me just double-check the last multiplication.",
    "The check passes, so I'm fairly confident now.",
    "Let me quickly confirm with estimation: roughly {s}, which matches.",
    "One more check: the answer should not be negative here, and it isn't.",
    "Comparing with the rough estimate from before, it lines up.",
    "Let me see if this is consistent with the constraint on ${v}$.",
    "Substituting back: $({a})({b}) = {p}$. Correct.",
    "I'll verify the simplification by expanding it again.",
    "Let me double-check the denominator, since that's where mistakes happen.",
    "Okay, the verification confirms it.",
    "Let me cross-check using a different decomposition.",
    "This matches what I found earlier, which is a good sign.",
    "Let me re-verify the first step, since everything depends on it.",
    "If I reverse the operation, I get back to {a}, as expected.",
    "That seems right.",
    "Alright, the numbers agree.",
    "Let me check the problem statement once more against my setup.",
];

/// Backtracking and second-guessing ("Wait," habits).
pub const BACKTRACK: &[&str] = &[
    "Wait, let me double-check that step.",
    "Wait, is that right?",
    "Wait, no. Let me redo that.",
    "Wait, I think I made a mistake with the sign.",
    "Wait, that doesn't look right. Let me go back.",
    "Hmm, wait. I should reconsider the setup.",
    "Wait a second, did I use the right formula?",
    "Wait, maybe I misread the problem.",
    "Hold on, let me reconsider this part.",
    "Wait, actually, that's not what the question asks.",
    "Hmm, that contradicts what I found before.",
    "Wait, let me recount.",
    "No wait, {a} times {b} is {p}, not {s}.",
    "Wait, I added instead of multiplying. Let me fix that.",
    "Hmm, but I assumed ${v}$ is positive. Is that justified?",
    "Wait, I need to be careful about the domain here.",
    "Actually, let me reconsider. The first approach was fine.",
    "Hmm, no, that can't be right, because the total would exceed {p}.",
    "Wait, let me check whether the case ${v} = 0$ matters.",
    "Wait, hold on. I forgot a term.",
    "Oh wait, I see the error: I dropped the factor of {a}.",
    "Wait, maybe there's an easier way to see this.",
    "Hmm, let me go back to the original equation.",
    "Wait, so is the answer {s} or {p}? Let me settle this.",
    "Wait, I should double-check whether the problem wants the sum or the product.",
    "Hmm, I'm not sure about that step. Let me redo it slowly.",
    "Wait, that was too fast. Let me write it out.",
    "Actually, no. Let me think again about the constraint.",
    "Wait, maybe I'm overcomplicating this.",
    "Wait, let me make sure about the order of operations here.",
    "Hmm, wait, the fraction should be inverted.",
    "Wait, but what if ${v}$ is negative?",
    "Wait, did the problem say inclusive or exclusive?",
    "Oops, I miscounted. Let me start this part over.",
    "Wait, the denominator is {b}, not {a}.",
    "Wait, I think I conflated two different quantities.",
    "Hmm, that's odd. Let me look at it again.",
    "Wait, let me re-express that in terms of ${v}$.",
    "Hmm, wait. Maybe I should double-check the first equation.",
    "Wait, actually that's correct. I confused myself for a moment.",
    "Wait, no, that's fine: the sign flips twice.",
    "Wait, is {a} really a factor of {p}? Yes, {p} is {a} times {b}.",
    "Hmm, let me not jump to conclusions.",
    "Wait, let me reconsider whether the order matters.",
    "Wait, I should check whether these cases overlap.",
    "Hmm, so where did I go wrong? Let me trace back.",
    "Wait, maybe the question expects a simplified fraction.",
    "Wait, let me redo the arithmetic: {a} plus {b} is {s}.",
    "Hmm, hold on, that's the same expression as before.",
    "Wait, I need to double-check that assumption.",
];

/// Alternatives.
pub const ALTERNATIVE: &[&str] = &[
    "Alternatively, I could approach this from the other direction.",
    "Alternatively, maybe there's a symmetry argument.",
    "Alternatively, let me try substituting ${v} = {a}$ directly.",
    "Alternatively, I can factor first and then solve.",
    "Alternatively, think of it as {a} groups of {b}.",
    "Alternatively, use the complement: count what we don't want and subtract.",
    "Alternatively, a quick estimate: about {s}.",
    "Alternatively, I could draw a picture to see the structure.",
    "Another way to see it is to look at the difference {d}.",
    "Another approach: work backwards from the answer format.",
    "Alternatively, maybe induction works here.",
    "Alternatively, consider small values of ${v}$ and look for a pattern.",
    "Alternatively, I could write the expression in vertex form.",
    "Alternatively, use the formula $a^2 - b^2 = (a - b)(a + b)$.",
    "Alternatively, let me just compute it numerically.",
    "Alternatively, treat it as a system of two equations.",
    "Alternatively, maybe modular arithmetic makes this easier.",
    "Alternatively, I can split the sum into two parts.",
    "Alternatively, use the fact that {a} and {b} are small.",
    "Alternatively, rewrite everything over the denominator {b}.",
    "Or, more simply, note that {p} is {a} times {b}.",
    "Alternatively, I could use a table of values.",
    "Alternatively, there might be a combinatorial interpretation.",
    "Alternatively, complete the square.",
    "Alternatively, let me check it by the reverse operation.",
    "Alternatively, consider the extreme cases first.",
    "Alternatively, maybe the answer is simpler than I think.",
    "Hmm, alternatively, I could set up a proportion.",
    "Alternatively, I can avoid fractions by scaling everything by {b}.",
    "Alternatively, think about the parity of ${v}$.",
    "Another idea: use the triangle inequality.",
    "Alternatively, maybe a substitution like ${v} = {a} + t$ helps.",
    "Alternatively, let me test the answer choices mentally.",
    "Alternatively, the problem might be easier in terms of rates.",
    "Alternatively, just expand everything and collect terms.",
];

/// Case splits.
pub const CASES: &[&str] = &[
    "Case 1: ${v} \\ge {a}$. Then the absolute value is just ${v} - {a}$.",
    "Case 2: ${v} < {a}$. Then the absolute value is ${a} - {v}$.",
    "Let me split into cases depending on the sign of ${v}$.",
    "If ${v}$ is even, the expression is divisible by 2.",
    "If ${v}$ is odd, then ${v}^2$ is odd too.",
    "First case: both numbers are positive.",
    "Second case: one of them is zero, which gives a trivial solution.",
    "There are {a} cases to consider, so let me go through them in order.",
    "In the case ${v} = {a}$, everything works out.",
    "In the case ${v} = {b}$, the condition fails.",
    "Consider the case where the two values coincide.",
    "Now the remaining case, where ${v}$ exceeds {s}.",
    "So only the first case gives a valid solution.",
    "Both cases lead to the same value, which is reassuring.",
    "Let me handle the boundary case separately.",
    "If the remainder is 0, we're done; otherwise we continue.",
    "When ${v} = 1$, the formula gives {a}.",
    "When ${v} = 2$, it gives {b}.",
    "For ${v} > {s}$ the expression is always positive.",
    "For ${v} < 0$ there are no solutions, since the square is non-negative.",
    "Subcase: the smaller number is {a}.",
    "Subcase: the smaller number is {b}.",
    "So combining the cases, the solution set is ${v} \\in \\{{a}, {b}\\}$.",
    "Case analysis done; only one case survives.",
    "Let me double-check the case split covers everything: yes, it does.",
];

/// Short meta-comments and transitions.
pub const META: &[&str] = &[
    "Hmm.",
    "Okay.",
    "So far so good.",
    "Let me think.",
    "Alright.",
    "Let me see.",
    "Right.",
    "Okay, that makes sense.",
    "Hmm, interesting.",
    "Let me slow down here.",
    "Okay, moving on.",
    "That's a useful observation.",
    "I think this is the key step.",
    "This part is straightforward.",
    "Let me keep going.",
    "Hmm, this is getting a bit messy.",
    "Let me organize what I have.",
    "Now for the next part.",
    "Okay, so now I have everything I need.",
    "Good.",
    "Let me not rush this.",
    "I need to be careful here.",
    "That simplifies things a lot.",
    "Interesting, so the structure is simpler than it looked.",
    "So the pattern is clear now.",
    "Let me write down the intermediate result.",
    "Now let me put the pieces together.",
    "Let me summarize what I have so far.",
    "This is consistent with the problem statement.",
    "I'm fairly sure about this part.",
    "Hmm, let me think about this differently.",
    "Okay, so the tricky part is done.",
    "So the remaining work is just arithmetic.",
    "Let me be careful with the bookkeeping.",
    "All right, let me continue from here.",
];

/// Nouns for `{q}`.
const QUANTITIES: &[&str] =
    &["number", "unknown value", "length", "total", "count", "amount", "price", "speed", "area", "sum"];
const VARS: &[&str] = &["x", "y", "n", "k", "t", "a", "m"];

/// How often the habits show up: weights of the move kinds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Style {
    pub step: u32,
    pub verify: u32,
    pub backtrack: u32,
    pub alternative: u32,
    pub cases: u32,
    pub meta: u32,
}

impl Style {
    /// A plain mix.
    pub const PLAIN: Style = Style { step: 8, verify: 4, backtrack: 3, alternative: 2, cases: 2, meta: 3 };
    /// Heavy "Wait," / "Alternatively" habits and LaTeX.
    pub const HEAVY: Style = Style { step: 8, verify: 4, backtrack: 8, alternative: 6, cases: 3, meta: 2 };
}

/// Every move of the bank.
pub fn bank_size() -> usize {
    PLAN.len() + STEP.len() + VERIFY.len() + BACKTRACK.len() + ALTERNATIVE.len() + CASES.len() + META.len()
}

fn pick<'a>(rng: &mut fastrand::Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.usize(..xs.len())]
}

/// Appends one move, its holes filled, to `out`.
pub fn fill(rng: &mut fastrand::Rng, template: &str, out: &mut String) {
    let a = rng.i64(2..30);
    let b = rng.i64(2..20);
    let c = rng.i64(1..12);
    let v = pick(rng, VARS);
    let q = pick(rng, QUANTITIES);
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (val, len): (Option<String>, usize) = match tail.as_bytes().get(1..3) {
            Some([x, b'}']) => match x {
                b'a' => (Some(a.to_string()), 3),
                b'b' => (Some(b.to_string()), 3),
                b'c' => (Some(c.to_string()), 3),
                b's' => (Some((a + b).to_string()), 3),
                b'p' => (Some((a * b).to_string()), 3),
                b'd' => (Some((a - b).to_string()), 3),
                b'v' => (Some(v.to_string()), 3),
                b'q' => (Some(q.to_string()), 3),
                _ => (None, 1),
            },
            _ => (None, 1),
        };
        match val {
            Some(s) => out.push_str(&s),
            None => out.push('{'),
        }
        rest = &tail[len..];
    }
    out.push_str(rest);
}

/// Appends paragraphs of deliberation (3–7 moves each, separated by blank lines) to `out`
/// until about `words` words were added; returns the words added.
pub fn deliberate(rng: &mut fastrand::Rng, style: Style, words: usize, out: &mut String) -> usize {
    let kinds: [(&[&str], u32); 6] = [
        (STEP, style.step),
        (VERIFY, style.verify),
        (BACKTRACK, style.backtrack),
        (ALTERNATIVE, style.alternative),
        (CASES, style.cases),
        (META, style.meta),
    ];
    let total: u32 = kinds.iter().map(|k| k.1).sum::<u32>().max(1);
    let mut added = 0;
    let mut last: &str = "";
    while added < words {
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push_str("\n\n");
        }
        let start = out.len();
        let n = 3 + rng.usize(..5);
        for i in 0..n {
            let mut r = rng.u32(..total);
            let mut list = STEP;
            for (l, w) in kinds {
                if r < w {
                    list = l;
                    break;
                }
                r -= w;
            }
            if i == 0 && rng.u32(..6) == 0 {
                list = PLAN;
            }
            let mut t = pick(rng, list);
            if t == last {
                t = pick(rng, STEP);
            }
            last = t;
            if i > 0 {
                out.push(' ');
            }
            fill(rng, t, out);
        }
        added += out[start..].split_whitespace().count();
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bank_has_several_hundred_moves_and_fills_holes() {
        assert!(bank_size() >= 250, "{}", bank_size());
        let mut s = String::new();
        fill(&mut fastrand::Rng::with_seed(1), "${a} + {b} = {s}$ and \\frac{{a}}{2}", &mut s);
        assert!(!s.contains("{a}") && !s.contains("{s}") && s.contains("\\frac{"), "{s}");
        let mut t = String::new();
        let n = deliberate(&mut fastrand::Rng::with_seed(2), Style::PLAIN, 3000, &mut t);
        assert!(n >= 3000 && t.split_whitespace().count() >= 3000);
        assert!(t.contains("\n\n") && t.contains('$'));
    }
}
