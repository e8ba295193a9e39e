//! The code verifier against hostile programs and a generated problem set.
//!
//! Every hostile program must be contained (the host and this test process unharmed, nothing
//! left running), and judged correctly. Limits are small so the file runs in seconds. Needs a
//! `python3`; without one the tests print why and return.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use distill::record::CodeTests;
use distill::verify::code::sandbox::{self, Isolation};
use distill::verify::code::{CodeConfig, CodeResult, CodeVerifier, IsolationChoice, Reason};
use serde_json::{Value, json};

static NEXT_BASE: AtomicU32 = AtomicU32::new(0);

/// A verifier with small limits and its own uid range.
fn verifier_with(f: impl FnOnce(&mut CodeConfig)) -> Option<(CodeVerifier, u32)> {
    if distill::verify::code::runners::find_python(None).is_none() {
        eprintln!("skipping: no python3 on PATH");
        return None;
    }
    let base = 3_000_000 + (std::process::id() % 1000) * 1000 + NEXT_BASE.fetch_add(1, Ordering::SeqCst) * 16;
    let mut cfg = CodeConfig {
        workers: 2,
        // Generous for programs that should finish (the machine may be busy); tests about
        // timeouts use `short()`.
        timeout_s: 4.0,
        startup_s: 2.0,
        memory_mb: 256,
        file_mb: 16,
        nproc: 8,
        uid_base: Some(base),
        ..CodeConfig::default()
    };
    f(&mut cfg);
    let v = CodeVerifier::new(cfg);
    match v.isolation() {
        Ok(i) => eprintln!("sandbox isolation: {}", i.as_str()),
        Err(e) => panic!("sandbox unavailable: {e}"),
    }
    Some((v, base))
}

fn verifier() -> Option<(CodeVerifier, u32)> {
    verifier_with(|_| {})
}

/// A verifier with a 1 s program timeout (plus 1 s for start-up).
fn short() -> Option<(CodeVerifier, u32)> {
    verifier_with(|c| {
        c.timeout_s = 1.0;
        c.startup_s = 1.0;
    })
}

fn tests(v: Value) -> CodeTests {
    serde_json::from_value(v).expect("valid tests")
}

fn add_tests() -> CodeTests {
    tests(json!({"kind": "assert", "language": "python", "entry_point": "add",
        "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-5, 5) == 0\n    assert candidate(10, 7) == 17\n"}))
}

fn sum_stdio() -> CodeTests {
    tests(json!({"kind": "stdio", "language": "python",
        "cases": [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6"}]}))
}

const GOOD_ADD: &str = "def add(a, b):\n    return a + b\n";
const GOOD_SUM: &str = "a, b = map(int, input().split())\nprint(a + b)\n";

/// Processes still running as one of the verifier's sandbox uids.
fn leftovers(base: u32) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else { continue };
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        if let Some(u) = uid
            && (base..base + 16).contains(&u)
        {
            out.push(format!(
                "pid {} uid {u}: {}",
                e.file_name().to_string_lossy(),
                status.lines().next().unwrap_or("")
            ));
        }
    }
    out
}

/// Runs a program, checks the host is clean afterwards, returns the result and the time taken.
fn judge(v: &(CodeVerifier, u32), t: &CodeTests, program: &str) -> (CodeResult, Duration) {
    let start = Instant::now();
    let r = v.0.verify_program(t, program);
    let took = start.elapsed();
    // Everything of the sandbox is gone once the verdict is in.
    let left = leftovers(v.1);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    (r, took)
}

fn expect(
    v: &(CodeVerifier, u32),
    t: &CodeTests,
    program: &str,
    pass: bool,
    reasons: &[Reason],
    max: Duration,
) -> CodeResult {
    let (r, took) = judge(v, t, program);
    assert_eq!(r.pass, pass, "program:\n{program}\nresult: {r:?}");
    assert!(reasons.contains(&r.reason), "program:\n{program}\nwanted one of {reasons:?}, got {r:?}");
    assert!(took <= max, "took {took:?} (max {max:?}): {r:?}");
    assert!(r.isolation.is_some());
    r
}

/// Bounds on how long one verification may take: well above the limits, well below "hung".
const FAST: Duration = Duration::from_secs(8);
const SLOW: Duration = Duration::from_secs(12);

#[test]
fn correct_programs_pass() {
    let Some(v) = verifier() else { return };
    let r = expect(&v, &add_tests(), GOOD_ADD, true, &[Reason::Passed], FAST);
    assert_eq!((r.passed_tests, r.total_tests), (1, 1));
    let r = expect(&v, &sum_stdio(), GOOD_SUM, true, &[Reason::Passed], FAST);
    assert_eq!((r.passed_tests, r.total_tests), (2, 2));
}

#[test]
fn infinite_loops_time_out() {
    let Some(v) = short() else { return };
    expect(&v, &add_tests(), "def add(a, b):\n    while True:\n        pass\n", false, &[Reason::Timeout], FAST);
    expect(&v, &add_tests(), "while True:\n    pass\n", false, &[Reason::Timeout], FAST);
    expect(&v, &sum_stdio(), "while True:\n    pass\n", false, &[Reason::Timeout], FAST);
}

#[test]
fn fork_bomb_is_bounded() {
    let Some(v) = short() else { return };
    let bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n";
    expect(&v, &add_tests(), bomb, false, &[Reason::Timeout], SLOW);
    expect(&v, &sum_stdio(), bomb, false, &[Reason::Timeout], SLOW);
    // The slot works normally right after.
    expect(&v, &add_tests(), GOOD_ADD, true, &[Reason::Passed], FAST);
}

#[test]
fn huge_allocation_is_a_memory_error() {
    let Some(v) = verifier() else { return };
    let hog = "x = bytearray(50 * 1024 ** 3)\n";
    expect(&v, &add_tests(), &format!("{hog}{GOOD_ADD}"), false, &[Reason::Memory], FAST);
    expect(&v, &add_tests(), &format!("def add(a, b):\n    {}    return a + b\n", hog), false, &[Reason::Memory], FAST);
    expect(&v, &sum_stdio(), hog, false, &[Reason::Memory], FAST);
    // Growing slowly instead of at once.
    let grow = "xs = []\nwhile True:\n    xs.append(bytearray(10 * 1024 * 1024))\n";
    expect(&v, &sum_stdio(), grow, false, &[Reason::Memory], FAST);
}

#[test]
fn huge_file_is_cut_at_the_limit() {
    let Some(v) = verifier() else { return };
    let write =
        "with open('big.bin', 'wb') as f:\n    for _ in range(10 * 1024):\n        f.write(b'\\0' * (1 << 20))\n";
    expect(&v, &add_tests(), &format!("{write}{GOOD_ADD}"), false, &[Reason::RuntimeError], SLOW);
    // Many files in the temp dir: the tmpfs is full at file_mb.
    let many = "import os\nn = 0\ntry:\n    for i in range(10000):\n        with open('f%d' % i, 'wb') as f:\n            f.write(b'x' * (1 << 20))\n        n += 1\nexcept OSError:\n    pass\nprint(n)\n";
    let t = tests(json!({"kind": "stdio", "language": "python", "cases": [{"input": "", "output": "16"}]}));
    let (r, _) = judge(&v, &t, many);
    assert!(!r.pass || v.0.isolation() == Ok(Isolation::Namespaces), "{r:?}");
}

#[test]
fn writes_outside_the_work_dir_do_not_reach_the_host() {
    let Some(v) = verifier() else { return };
    let host = tempfile::tempdir().expect("tempdir");
    // World-writable, so only isolation (not permissions) can keep the program out.
    std::fs::set_permissions(host.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let targets = [
        host.path().join("escaped.txt"),
        std::path::PathBuf::from("/tmp/distill-sandbox-escape.txt"),
        std::path::PathBuf::from("/root/distill-sandbox-escape.txt"),
        std::path::PathBuf::from("/etc/distill-sandbox-escape.txt"),
        std::path::PathBuf::from("/var/tmp/distill-sandbox-escape.txt"),
        std::path::PathBuf::from("/dev/shm/distill-sandbox-escape.txt"),
    ];
    let list = targets.iter().map(|p| format!("{:?}", p.display().to_string())).collect::<Vec<_>>().join(", ");
    let prog = format!(
        "for p in [{list}, '../escaped.txt', '/escaped.txt']:\n    try:\n        with open(p, 'w') as f:\n            f.write('x')\n    except OSError:\n        pass\n{GOOD_ADD}"
    );
    let expect_pass = v.0.isolation() == Ok(Isolation::Namespaces);
    let (r, _) = judge(&v, &add_tests(), &prog);
    if expect_pass {
        assert!(r.pass, "{r:?}");
    }
    let isolated = v.0.isolation() != Ok(Isolation::Rlimits);
    for p in &targets {
        if isolated || !p.starts_with("/tmp") {
            assert!(!p.exists(), "{} was written", p.display());
        }
        let _ = std::fs::remove_file(p);
    }
    assert!(!std::path::Path::new("/escaped.txt").exists());
}

#[test]
fn environment_is_empty_of_secrets() {
    let Some(v) = verifier() else { return };
    // SAFETY: std's environment lock serialises this with every other std env access.
    unsafe { std::env::set_var("OPENAI_API_KEY", "sk-test-secret-do-not-leak") };
    let prog = "import os\nprint(os.environ.get('OPENAI_API_KEY', 'none'))\nprint(sorted(os.environ))\n";
    let t = tests(json!({"kind": "stdio", "language": "python",
        "cases": [{"input": "", "output": "none ['HOME', 'LANG', 'PATH', 'TMPDIR']"}]}));
    expect(&v, &t, prog, true, &[Reason::Passed], FAST);
    // Reading it from the parent's /proc entry fails too.
    let prog = "import os\nk = 'none'\ntry:\n    k = open('/proc/%d/environ' % os.getppid()).read()\nexcept OSError:\n    pass\nprint('sk-test' in k)\n";
    let t = tests(json!({"kind": "stdio", "language": "python", "cases": [{"input": "", "output": "False"}]}));
    expect(&v, &t, prog, true, &[Reason::Passed], FAST);
}

#[test]
fn network_is_unreachable() {
    let Some(v) = verifier() else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let prog = format!(
        "import socket\ntry:\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n    s.sendall(b'leak')\n    print('connected')\nexcept OSError:\n    print('blocked')\n"
    );
    let t = tests(json!({"kind": "stdio", "language": "python", "cases": [{"input": "", "output": "blocked"}]}));
    let isolated = v.0.isolation() == Ok(Isolation::Namespaces);
    let (r, _) = judge(&v, &t, &prog);
    if isolated {
        assert!(r.pass, "{r:?}");
        assert!(listener.accept().is_err(), "the sandbox reached the host's loopback");
    }
}

#[test]
fn killing_the_parent_is_contained() {
    let Some(v) = short() else { return };
    let prog = "import os, signal\nfor pid in (os.getppid(), 1, -1):\n    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\na, b = map(int, input().split())\nprint(a + b)\n";
    let (r, _) = judge(&v, &sum_stdio(), prog);
    // The verifier (this process) is alive to judge; the program may have killed itself with -1.
    assert!(r.pass || r.reason == Reason::Timeout || r.reason == Reason::RuntimeError, "{r:?}");
    expect(&v, &sum_stdio(), GOOD_SUM, true, &[Reason::Passed], FAST);
    // Killing its own group ends only the sandbox.
    let prog = "import os, signal\nos.killpg(0, signal.SIGKILL)\n";
    expect(&v, &add_tests(), prog, false, &[Reason::RuntimeError, Reason::Timeout], FAST);
}

#[test]
fn a_child_ignoring_sigterm_dies_with_the_sandbox() {
    let Some(v) = short() else { return };
    let child = "import os, signal, time\nif os.fork() == 0:\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    os.setsid()\n    time.sleep(100)\n    os._exit(0)\n";
    // The program itself finishes at once: pass, and the sleeper is gone (checked by judge).
    expect(&v, &add_tests(), &format!("{child}{GOOD_ADD}"), true, &[Reason::Passed], FAST);
    expect(&v, &sum_stdio(), &format!("{child}{GOOD_SUM}"), true, &[Reason::Passed], FAST);
    // The program waits for it: timeout.
    let waiting = format!("{child}else:\n    os.wait()\n{GOOD_ADD}");
    expect(&v, &add_tests(), &waiting, false, &[Reason::Timeout], FAST);
}

#[test]
fn exiting_before_the_tests_is_not_a_pass() {
    let Some(v) = verifier() else { return };
    for exit in ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit(0)\n", "exit()\n"] {
        expect(&v, &add_tests(), exit, false, &[Reason::RuntimeError], FAST);
        expect(&v, &add_tests(), &format!("{GOOD_ADD}{exit}"), false, &[Reason::RuntimeError], FAST);
        // Exiting from inside the function under test.
        let inner = format!("def add(a, b):\n    {}\n", exit.replace('\n', "\n    "));
        expect(&v, &add_tests(), &inner, false, &[Reason::RuntimeError], FAST);
    }
}

#[test]
fn tampering_with_the_checks_is_not_a_pass() {
    let Some(v) = verifier() else { return };
    let cheats = [
        // Redefining the checker.
        "def check(candidate):\n    pass\ndef add(a, b):\n    return 0\n",
        // An answer that equals everything.
        "class E:\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return E()\n",
        // Patching builtins and AssertionError.
        "import builtins\nbuiltins.AssertionError = type('X', (BaseException,), {})\nbuiltins.abs = lambda x: 0\ndef add(a, b):\n    return 0\n",
        // Forging the report: guessing the marker, reading the trusted files, writing to other
        // processes' stdout.
        "import os, glob\nfor p in glob.glob('/proc/*/fd/1') + ['/dev/stdout']:\n    try:\n        with open(p, 'w') as f:\n            f.write('DISTILL-RESULT 0 {\"status\": \"pass\", \"passed\": 1, \"total\": 1}\\n')\n    except OSError:\n        pass\nfor p in glob.glob('/tmp/trusted/*') + glob.glob('../trusted/*'):\n    try:\n        print(open(p).read())\n    except OSError:\n        pass\nos._exit(0)\n",
        // Monkey-patching the comparison the tests will use, from inside the call.
        "def add(a, b):\n    import builtins\n    builtins.int = str\n    return str(a + b)\n",
    ];
    for c in cheats {
        expect(&v, &add_tests(), c, false, &[Reason::WrongAnswer, Reason::RuntimeError], FAST);
    }
    // Bare-assert (MBPP) tests.
    let t = tests(json!({"kind": "assert", "language": "python",
        "test": "assert add(1, 2) == 3\nassert add(2, 2) == 4\n"}));
    let r = expect(&v, &t, GOOD_ADD, true, &[Reason::Passed], FAST);
    assert_eq!((r.passed_tests, r.total_tests), (2, 2));
    expect(&v, &t, cheats[1], false, &[Reason::WrongAnswer, Reason::RuntimeError], FAST);
    expect(&v, &t, "import sys\nsys.exit(0)\n", false, &[Reason::RuntimeError], FAST);
}

#[test]
fn a_gigabyte_of_output_is_cut_short() {
    let Some(v) = verifier() else { return };
    let flood = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n";
    expect(&v, &sum_stdio(), flood, false, &[Reason::WrongAnswer], FAST);
    let flood_err = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stderr.write(chunk)\n";
    expect(&v, &sum_stdio(), flood_err, false, &[Reason::RuntimeError, Reason::WrongAnswer], FAST);
    // In assert tests the candidate's stdout goes to /dev/null: it only costs the program time
    // (a correct program passes when the writes fit in its time limit).
    let (r, took) = judge(&v, &add_tests(), &format!("{flood}{GOOD_ADD}"));
    assert!(r.reason == Reason::Passed || r.reason == Reason::Timeout, "{r:?}");
    assert!(took < SLOW);
}

#[test]
fn compile_errors_and_no_tests() {
    let Some(v) = verifier() else { return };
    expect(&v, &add_tests(), "def add(a, b)\n    return a + b\n", false, &[Reason::CompileError], FAST);
    expect(&v, &sum_stdio(), "print(\n", false, &[Reason::CompileError], FAST);
    let call = tests(
        json!({"kind": "call", "language": "python", "fn_name": "add", "cases": [{"input": [1, 2], "output": 3}]}),
    );
    expect(&v, &call, "def add(a, b) return 1\n", false, &[Reason::CompileError], FAST);
    let cpp = tests(json!({"kind": "stdio", "language": "cobol", "cases": [{"input": "", "output": ""}]}));
    expect(&v, &cpp, "x", false, &[Reason::UnsupportedLanguage], FAST);
    let empty = tests(json!({"kind": "stdio", "language": "python"}));
    expect(&v, &empty, GOOD_SUM, false, &[Reason::MissingTests], FAST);
}

#[test]
fn early_exit_is_configurable() {
    let t = tests(json!({"kind": "stdio", "language": "python", "cases": [
        {"input": "1", "output": "1"}, {"input": "2", "output": "3"}, {"input": "3", "output": "3"}]}));
    let prog = "print(int(input()))\n";
    let Some(v) = verifier() else { return };
    let r = expect(&v, &t, prog, false, &[Reason::WrongAnswer], FAST);
    assert_eq!((r.passed_tests, r.total_tests), (1, 3));
    let Some(v) = verifier_with(|c| c.early_exit = false) else { return };
    let r = expect(&v, &t, prog, false, &[Reason::WrongAnswer], FAST);
    assert_eq!((r.passed_tests, r.total_tests), (2, 3));
    let at = tests(
        json!({"kind": "assert", "language": "python", "test": "assert f(1) == 1\nassert f(2) == 3\nassert f(3) == 3\n"}),
    );
    let r = expect(&v, &at, "def f(x):\n    return x\n", false, &[Reason::WrongAnswer], FAST);
    assert_eq!((r.passed_tests, r.total_tests), (2, 3));
}

/// A generated problem: a function over a list of ints, its reference, and broken variants.
struct Problem {
    name: &'static str,
    body: &'static str,
    off_by_one: &'static str,
    reference: fn(&[i64]) -> i64,
}

fn problems() -> Vec<Problem> {
    vec![
        Problem {
            name: "total",
            body: "return sum(xs)",
            off_by_one: "return sum(xs) + 1",
            reference: |xs| xs.iter().sum(),
        },
        Problem {
            name: "biggest",
            body: "return max(xs)",
            off_by_one: "return max(xs) - 1",
            reference: |xs| *xs.iter().max().unwrap(),
        },
        Problem {
            name: "count_even",
            body: "return sum(1 for x in xs if x % 2 == 0)",
            off_by_one: "return sum(1 for x in xs[1:] if x % 2 == 0)",
            reference: |xs| xs.iter().filter(|x| *x % 2 == 0).count() as i64,
        },
        Problem {
            name: "span",
            body: "return max(xs) - min(xs)",
            off_by_one: "return max(xs) - min(xs) + 1",
            reference: |xs| xs.iter().max().unwrap() - xs.iter().min().unwrap(),
        },
        Problem {
            name: "last_index_of_max",
            body: "return len(xs) - 1 - xs[::-1].index(max(xs))",
            off_by_one: "return len(xs) - xs[::-1].index(max(xs))",
            reference: |xs| {
                let m = xs.iter().max().unwrap();
                xs.iter().rposition(|x| x == m).unwrap() as i64
            },
        },
    ]
}

fn inputs(seed: u64) -> Vec<Vec<i64>> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) % 41) as i64 - 20
    };
    (0..5).map(|k| (0..(k + 3)).map(|_| next()).collect()).collect()
}

#[test]
fn generated_problem_set_all_kinds() {
    let Some(v) = verifier() else { return };
    let mut seen = BTreeSet::new();
    for (pi, p) in problems().iter().enumerate() {
        let cases = inputs(pi as u64);
        let expected: Vec<i64> = cases.iter().map(|xs| (p.reference)(xs)).collect();
        let f = |body: &str| format!("def {}(xs):\n    {body}\n", p.name);
        // assert (HumanEval style)
        let mut test = "def check(candidate):\n".to_string();
        for (xs, want) in cases.iter().zip(&expected) {
            test.push_str(&format!("    assert candidate({xs:?}) == {want}\n"));
        }
        let at = tests(json!({"kind": "assert", "language": "python", "entry_point": p.name, "test": test}));
        // call (LeetCode style; one variant as a Solution class)
        let call = tests(json!({"kind": "call", "language": "python", "fn_name": p.name,
            "cases": cases.iter().zip(&expected).map(|(xs, w)| json!({"input": [xs], "output": w})).collect::<Vec<_>>()}));
        // stdio: a line of ints in, the answer out
        let stdio = tests(json!({"kind": "stdio", "language": "python",
            "cases": cases.iter().zip(&expected).map(|(xs, w)| json!({
                "input": format!("{}\n", xs.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ")),
                "output": format!("{w}\n")})).collect::<Vec<_>>()}));
        let main = |body: &str| format!("{}xs = list(map(int, input().split()))\nprint({}(xs))\n", f(body), p.name);

        let runs: Vec<(&CodeTests, String, bool, &str)> = vec![
            (&at, f(p.body), true, "assert correct"),
            (&at, f(p.off_by_one), false, "assert off-by-one"),
            (&at, f("xs.sort()"), false, "assert returns None"),
            (&at, f(&format!("return str({})", p.body.trim_start_matches("return "))), false, "assert wrong type"),
            (&call, f(p.body), true, "call correct"),
            (
                &call,
                format!("class Solution:\n    def {}(self, xs):\n        {}\n", p.name, p.body),
                true,
                "call class correct",
            ),
            (&call, f(p.off_by_one), false, "call off-by-one"),
            (&call, f("xs.sort()"), false, "call returns None"),
            (&call, f(&format!("return [{}]", p.body.trim_start_matches("return "))), false, "call wrong format"),
            (&stdio, main(p.body), true, "stdio correct"),
            (&stdio, main(p.off_by_one), false, "stdio off-by-one"),
            (&stdio, main("xs.sort()"), false, "stdio returns None"),
            (
                &stdio,
                format!("{}xs = list(map(int, input().split()))\nprint('Answer:', {}(xs))\n", f(p.body), p.name),
                false,
                "stdio wrong format",
            ),
        ];
        for (t, prog, pass, label) in runs {
            let (r, _) = judge(&v, t, &prog);
            assert_eq!(r.pass, pass, "{} {label}:\n{prog}\n{r:?}", p.name);
            if pass {
                assert_eq!(r.passed_tests, r.total_tests, "{r:?}");
            } else {
                assert!(matches!(r.reason, Reason::WrongAnswer | Reason::RuntimeError), "{} {label}: {r:?}", p.name);
            }
            seen.insert(label);
        }
    }
    assert_eq!(seen.len(), 13);
}

#[test]
fn weaker_isolation_still_judges() {
    if !sandbox::is_root() {
        eprintln!("skipping the uid-only mode: not root");
        return;
    }
    let Some(v) = verifier_with(|c| {
        c.isolation = IsolationChoice::Uid;
        c.timeout_s = 1.0;
    }) else {
        return;
    };
    assert_eq!(v.0.isolation(), Ok(Isolation::Uid));
    let r = expect(&v, &add_tests(), GOOD_ADD, true, &[Reason::Passed], FAST);
    assert_eq!(r.isolation, Some(Isolation::Uid));
    expect(&v, &add_tests(), "import os\nos._exit(0)\n", false, &[Reason::RuntimeError], FAST);
    expect(&v, &sum_stdio(), GOOD_SUM, true, &[Reason::Passed], FAST);
    expect(&v, &sum_stdio(), "while True:\n    pass\n", false, &[Reason::Timeout], FAST);
    let child = "import os, signal, time\nif os.fork() == 0:\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    time.sleep(100)\n    os._exit(0)\n";
    expect(&v, &add_tests(), &format!("{child}{GOOD_ADD}"), true, &[Reason::Passed], FAST);
}

#[test]
fn record_level_extraction_and_verdict() {
    let Some(v) = verifier() else { return };
    let rec = json!({"id": "p/0", "task": "code", "tests": add_tests(),
        "reasoning": "try\n```python\ndef add(a, b):\n    return a - b\n```",
        "content": "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\n"});
    let r = v.0.verify_record(rec.as_object().unwrap());
    assert!(r.pass, "{r:?}");
    assert_eq!(r.extracted.as_deref(), Some(GOOD_ADD));
    let verdict = serde_json::to_value(r.to_verdict()).unwrap();
    assert_eq!(verdict["reason"], "passed");
    assert_eq!(verdict["passed_tests"], 1);
    assert_eq!(verdict["total_tests"], 1);
    assert!(verdict["isolation"].is_string());
    let rec = json!({"id": "p/1", "task": "code", "tests": add_tests(), "content": "I don't know."});
    assert_eq!(v.0.verify_record(rec.as_object().unwrap()).reason, Reason::NoCode);
    let rec = json!({"id": "p/2", "task": "code", "content": "```python\nx\n```"});
    assert_eq!(v.0.verify_record(rec.as_object().unwrap()).reason, Reason::MissingTests);
}

#[test]
fn distill_verify_judges_code_records() {
    if distill::verify::code::runners::find_python(None).is_none() {
        eprintln!("skipping: no python3 on PATH");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let recs = [
        json!({"id": "a/0", "task": "code", "tests": add_tests(), "content": format!("```python\n{GOOD_ADD}```"), "keep": 1}),
        json!({"id": "a/1", "task": "code", "tests": add_tests(), "content": "```python\nimport sys\nsys.exit(0)\n```"}),
        json!({"id": "s/0", "task": "code", "tests": sum_stdio(), "reasoning": "r", "content": format!("```python\n{GOOD_SUM}```")}),
        json!({"id": "s/1", "task": "code", "tests": sum_stdio(), "content": "no code"}),
        json!({"id": "m/0", "task": "math", "answer": "2", "content": "\\boxed{2}"}),
    ];
    std::fs::write(&input, recs.iter().map(|r| format!("{r}\n")).collect::<String>()).expect("write");
    let out = dir.path().join("out.jsonl");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["verify", input.to_str().unwrap(), "--out", out.to_str().unwrap(), "--summary", "--code-timeout", "2"])
        .env("OPENAI_API_KEY", "sk-never-in-a-record")
        .output()
        .expect("run distill");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).expect("out");
    assert!(!text.contains("sk-never"));
    let got: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let v = |i: usize| &got[i]["verdict"];
    assert_eq!((v(0)["pass"].clone(), v(0)["reason"].clone()), (json!(true), json!("passed")));
    assert_eq!(v(0)["passed_tests"], 1);
    assert_eq!(v(0)["extracted"], GOOD_ADD);
    assert!(v(0)["isolation"].is_string());
    assert_eq!(got[0]["keep"], 1, "unknown fields kept");
    assert_eq!((v(1)["pass"].clone(), v(1)["reason"].clone()), (json!(false), json!("runtime_error")));
    assert_eq!((v(2)["pass"].clone(), v(2)["total_tests"].clone()), (json!(true), json!(2)));
    assert_eq!(v(3)["reason"], "no_code");
    assert_eq!(v(4)["reason"], "equal");
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(summary.contains("pass      3") && summary.contains("fail      2"), "{summary}");
}

#[test]
fn problems_generator_references_pass_and_wrong_variants_fail() {
    use distill::problems::{self, ProblemKind};
    let Some(v) = verifier() else { return };
    for i in 0..10 {
        let p = problems::problem(ProblemKind::Code, 7, i);
        let tests = p.tests.clone().expect("code problems have tests");
        let solved = problems::solve(&p.prompt).expect("the generator solves its own problems");
        let (r, _) = judge(&v, &tests, &solved.answer);
        assert!(r.pass, "{} reference:\n{}\n{r:?}", p.id, solved.answer);
        let (r, _) = judge(&v, &tests, &solved.wrong);
        assert!(!r.pass, "{} wrong variant passed:\n{}\n{r:?}", p.id, solved.wrong);
    }
}
