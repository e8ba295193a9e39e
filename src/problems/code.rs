//! Small Python coding tasks with tests of all three kinds (`assert`, `stdio`, `call`), a
//! correct reference program and a subtly wrong variant (off-by-one, `>=` for `>`) that the
//! tests catch. Expected outputs are computed here, in Rust, from the same definitions.

use serde_json::{Value, json};

use super::{Family, Solved};
use crate::record::{CodeTests, Extra, Task, TestCase, TestKind};

pub(super) const FAMILIES: &[Family] = &[
    Family {
        name: "sum-multiples",
        kind: "assert",
        task: Task::Code,
        template: "Write a Python function `sum_multiples(n)` that returns the sum of all non-negative integers below `n` that are divisible by # or by #.",
        params: gen_sum_multiples,
        solve: solve_sum_multiples,
        tests: Some(tests_sum_multiples),
    },
    Family {
        name: "digit-sum",
        kind: "assert",
        task: Task::Code,
        template: "Write a Python function `digit_sum(n)` that returns the sum of the digits of the non-negative integer `n` written in base #.",
        params: gen_digit_sum,
        solve: solve_digit_sum,
        tests: Some(tests_digit_sum),
    },
    Family {
        name: "squares-above",
        kind: "stdio",
        task: Task::Code,
        template: "Write a Python program that reads an integer `n` on the first line and `n` integers on the second line from standard input, and prints the sum of the squares of those integers that are strictly greater than #.",
        params: gen_squares,
        solve: solve_squares,
        tests: Some(tests_squares),
    },
    Family {
        name: "word-filter",
        kind: "stdio",
        task: Task::Code,
        template: "Write a Python program that reads one line of words separated by spaces from standard input and prints, on one line separated by single spaces, the words of length at least #, in reverse order of appearance.",
        params: gen_words,
        solve: solve_words,
        tests: Some(tests_words),
    },
    Family {
        name: "count-pairs",
        kind: "call",
        task: Task::Code,
        template: "Write a Python function `count_pairs(nums)` that returns the number of index pairs `(i, j)` with `i < j` such that `nums[i] + nums[j]` is divisible by #.",
        params: gen_pairs,
        solve: solve_pairs,
        tests: Some(tests_pairs),
    },
];

fn tests(kind: TestKind) -> CodeTests {
    CodeTests {
        kind,
        language: "python".into(),
        test: None,
        entry_point: None,
        cases: None,
        fn_name: None,
        timeout_s: Some(5.0),
        memory_mb: None,
        extra: Extra::new(),
    }
}

fn case(input: Value, output: Value) -> TestCase {
    TestCase { input, output, extra: Extra::new() }
}

// ---- sum_multiples (assert, HumanEval style: `check(candidate)`) ----

fn gen_sum_multiples(r: &mut fastrand::Rng) -> Vec<i64> {
    let a = r.i64(2..8);
    vec![a, r.i64(a + 1..12)]
}

pub(super) fn sum_multiples(n: i64, a: i64, b: i64, inclusive: bool) -> i64 {
    let end = if inclusive { n + 1 } else { n };
    (0..end.max(0)).filter(|i| i % a == 0 || i % b == 0).sum()
}

fn code_sum_multiples(a: i64, b: i64, wrong: bool) -> String {
    let end = if wrong { "n + 1" } else { "n" };
    format!("def sum_multiples(n):\n    return sum(i for i in range({end}) if i % {a} == 0 or i % {b} == 0)\n")
}

fn solve_sum_multiples(p: &[i64]) -> Option<Solved> {
    let [a, b] = p[..] else { return None };
    if a < 1 || b < 1 {
        return None;
    }
    Some(Solved::code(
        code_sum_multiples(a, b, false),
        code_sum_multiples(a, b, true),
        vec![
            format!("I need every i in range(n), strictly below n, with i % {a} == 0 or i % {b} == 0."),
            "A generator expression inside sum() does it in one pass; range(n) already excludes n itself.".into(),
        ],
    ))
}

fn tests_sum_multiples(p: &[i64], r: &mut fastrand::Rng) -> CodeTests {
    let (a, b) = (p[0], p[1]);
    let mut ns = vec![0, 1, a * b, r.i64(10..200), r.i64(200..1000)];
    ns.dedup();
    let mut test = String::from("def check(candidate):\n");
    for n in ns {
        test.push_str(&format!("    assert candidate({n}) == {}\n", sum_multiples(n, a, b, false)));
    }
    CodeTests { test: Some(test), entry_point: Some("sum_multiples".into()), ..tests(TestKind::Assert) }
}

// ---- digit_sum (assert, bare asserts) ----

fn gen_digit_sum(r: &mut fastrand::Rng) -> Vec<i64> {
    vec![r.i64(2..10)]
}

pub(super) fn digit_sum(mut n: i64, base: i64, wrong: bool) -> i64 {
    let mut total = 0;
    while if wrong { n >= base } else { n > 0 } {
        total += n % base;
        n /= base;
    }
    total
}

fn code_digit_sum(base: i64, wrong: bool) -> String {
    let cond = if wrong { format!("n >= {base}") } else { "n > 0".into() };
    format!(
        "def digit_sum(n):\n    total = 0\n    while {cond}:\n        total += n % {base}\n        n //= {base}\n    return total\n"
    )
}

fn solve_digit_sum(p: &[i64]) -> Option<Solved> {
    let [base] = p[..] else { return None };
    if base < 2 {
        return None;
    }
    Some(Solved::code(
        code_digit_sum(base, false),
        code_digit_sum(base, true),
        vec![
            format!("Repeatedly take n % {base} for the lowest digit and divide n by {base} until n is 0."),
            "For n = 0 the sum is 0, which the loop gives without a special case.".into(),
        ],
    ))
}

fn tests_digit_sum(p: &[i64], r: &mut fastrand::Rng) -> CodeTests {
    let base = p[0];
    let mut test = String::new();
    for n in [0, base - 1, base * base + 1, r.i64(10..5000), r.i64(5000..100_000)] {
        test.push_str(&format!("assert digit_sum({n}) == {}\n", digit_sum(n, base, false)));
    }
    CodeTests { test: Some(test), entry_point: Some("digit_sum".into()), ..tests(TestKind::Assert) }
}

// ---- squares above a threshold (stdio) ----

fn gen_squares(r: &mut fastrand::Rng) -> Vec<i64> {
    // Not 0: 0 squared is 0, and the `>=` variant must be caught by a case containing t.
    let t = r.i64(-5..20);
    vec![if t == 0 { 20 } else { t }]
}

pub(super) fn squares_above(xs: &[i64], t: i64, wrong: bool) -> i64 {
    xs.iter().filter(|&&x| if wrong { x >= t } else { x > t }).map(|x| x * x).sum()
}

fn code_squares(t: i64, wrong: bool) -> String {
    let op = if wrong { ">=" } else { ">" };
    format!(
        "import sys\n\n\ndef main():\n    data = sys.stdin.read().split()\n    n = int(data[0])\n    xs = [int(v) for v in data[1:1 + n]]\n    print(sum(x * x for x in xs if x {op} {t}))\n\n\nmain()\n"
    )
}

fn solve_squares(p: &[i64]) -> Option<Solved> {
    let [t] = p[..] else { return None };
    Some(Solved::code(
        code_squares(t, false),
        code_squares(t, true),
        vec![
            "Read all tokens at once; the first is n and the next n are the numbers.".into(),
            format!("Keep the numbers strictly greater than {t} (not equal), square them and print the sum."),
        ],
    ))
}

fn tests_squares(p: &[i64], r: &mut fastrand::Rng) -> CodeTests {
    let t = p[0];
    let mut cases = Vec::new();
    for len in [1usize, 4, 8] {
        let mut xs: Vec<i64> = (0..len).map(|_| r.i64(-30..40)).collect();
        xs[0] = t;
        let line = xs.iter().map(i64::to_string).collect::<Vec<_>>().join(" ");
        cases.push(case(
            Value::String(format!("{len}\n{line}\n")),
            Value::String(format!("{}\n", squares_above(&xs, t, false))),
        ));
    }
    CodeTests { cases: Some(cases), ..tests(TestKind::Stdio) }
}

// ---- word filter (stdio, text output) ----

const WORDS: [&str; 16] = [
    "a", "to", "sky", "tree", "river", "garden", "mountain", "is", "blue", "stone", "of", "cloud", "north", "wind",
    "sea", "forest",
];

fn gen_words(r: &mut fastrand::Rng) -> Vec<i64> {
    vec![r.i64(2..7)]
}

pub(super) fn filter_words(line: &str, m: usize, wrong: bool) -> String {
    let kept: Vec<&str> = line.split_whitespace().filter(|w| if wrong { w.len() > m } else { w.len() >= m }).collect();
    kept.into_iter().rev().collect::<Vec<_>>().join(" ")
}

fn code_words(m: i64, wrong: bool) -> String {
    let op = if wrong { ">" } else { ">=" };
    format!(
        "def main():\n    words = input().split()\n    kept = [w for w in words if len(w) {op} {m}]\n    print(\" \".join(reversed(kept)))\n\n\nmain()\n"
    )
}

fn solve_words(p: &[i64]) -> Option<Solved> {
    let [m] = p[..] else { return None };
    if m < 1 {
        return None;
    }
    Some(Solved::code(
        code_words(m, false),
        code_words(m, true),
        vec![
            format!("Split the line on whitespace and keep words with len(w) >= {m}; 'at least' includes {m} itself."),
            "Reverse the kept list and join with single spaces; an empty result prints an empty line.".into(),
        ],
    ))
}

fn tests_words(p: &[i64], r: &mut fastrand::Rng) -> CodeTests {
    let m = p[0] as usize;
    let exact = WORDS.iter().find(|w| w.len() == m).copied().unwrap_or("river");
    let mut cases = Vec::new();
    for len in [3usize, 6, 10] {
        let mut words: Vec<&str> = (0..len).map(|_| WORDS[r.usize(..WORDS.len())]).collect();
        words[len / 2] = exact;
        let line = words.join(" ");
        cases.push(case(
            Value::String(format!("{line}\n")),
            Value::String(format!("{}\n", filter_words(&line, m, false))),
        ));
    }
    CodeTests { cases: Some(cases), ..tests(TestKind::Stdio) }
}

// ---- count pairs (call, LeetCode style: input is the list of positional arguments) ----

fn gen_pairs(r: &mut fastrand::Rng) -> Vec<i64> {
    vec![r.i64(2..10)]
}

pub(super) fn count_pairs(nums: &[i64], k: i64, wrong: bool) -> i64 {
    let mut count = 0;
    for i in 0..nums.len() {
        let from = if wrong { i } else { i + 1 };
        for j in from..nums.len() {
            if (nums[i] + nums[j]) % k == 0 {
                count += 1;
            }
        }
    }
    count
}

fn code_pairs(k: i64, wrong: bool) -> String {
    let from = if wrong { "i" } else { "i + 1" };
    format!(
        "def count_pairs(nums):\n    count = 0\n    for i in range(len(nums)):\n        for j in range({from}, len(nums)):\n            if (nums[i] + nums[j]) % {k} == 0:\n                count += 1\n    return count\n"
    )
}

fn solve_pairs(p: &[i64]) -> Option<Solved> {
    let [k] = p[..] else { return None };
    if k < 1 {
        return None;
    }
    Some(Solved::code(
        code_pairs(k, false),
        code_pairs(k, true),
        vec![
            "The arrays are small, so checking every pair with two nested loops is fine.".into(),
            format!("The inner loop starts at i + 1 so that i < j, and a pair counts when the sum % {k} == 0."),
        ],
    ))
}

fn tests_pairs(p: &[i64], r: &mut fastrand::Rng) -> CodeTests {
    let k = p[0];
    let mut cases = Vec::new();
    for len in [2usize, 5, 9] {
        let mut nums: Vec<i64> = (0..len).map(|_| r.i64(0..50)).collect();
        nums[0] = 0;
        cases.push(case(json!([nums.clone()]), json!(count_pairs(&nums, k, false))));
    }
    CodeTests { cases: Some(cases), fn_name: Some("count_pairs".into()), ..tests(TestKind::Call) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_variants_fail_some_test() {
        let mut r = fastrand::Rng::with_seed(7);
        for _ in 0..50 {
            let p = gen_sum_multiples(&mut r);
            let n = p[0] * p[1];
            assert_ne!(sum_multiples(n, p[0], p[1], false), sum_multiples(n, p[0], p[1], true));
            let b = gen_digit_sum(&mut r)[0];
            assert_ne!(digit_sum(b - 1, b, false), digit_sum(b - 1, b, true));
            let t = gen_squares(&mut r)[0];
            assert_ne!(squares_above(&[t], t, false), squares_above(&[t], t, true));
            let m = gen_words(&mut r)[0] as usize;
            let w = WORDS.iter().find(|w| w.len() == m).expect("a word of each length 2..7");
            assert_ne!(filter_words(w, m, false), filter_words(w, m, true));
            let k = gen_pairs(&mut r)[0];
            assert_ne!(count_pairs(&[0, 1], k, false), count_pairs(&[0, 1], k, true));
        }
    }

    #[test]
    fn reference_outputs() {
        assert_eq!(sum_multiples(10, 3, 5, false), 23);
        assert_eq!(digit_sum(255, 2, false), 8);
        assert_eq!(digit_sum(0, 7, false), 0);
        assert_eq!(squares_above(&[1, 2, 3], 1, false), 13);
        assert_eq!(filter_words("a tree is blue sky", 3, false), "sky blue tree");
        assert_eq!(count_pairs(&[1, 2, 3, 4], 3, false), 2);
    }
}
