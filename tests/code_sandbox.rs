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
    // C++ in a host temporary directory: compiled, run as `./solution`, cleaned up.
    if v.0.has_cpp() {
        expect(&v, &sum_stdio_cpp(), &cpp_prog("", ""), true, &[Reason::Passed], CPP);
        let bomb = cpp_prog("#include <unistd.h>", "while (true) fork();");
        expect(&v, &sum_stdio_cpp(), &bomb, false, &[Reason::Timeout], CPP);
    } else {
        eprintln!("skipping C++ in uid mode: no g++ on PATH");
    }
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

// ---- C++ ----

/// A verifier that can compile C++, or `None` (printed) when python3 or g++ is missing.
fn cpp_with(f: impl FnOnce(&mut CodeConfig)) -> Option<(CodeVerifier, u32)> {
    if distill::verify::code::runners::find_cxx(None).is_none() {
        eprintln!("skipping the C++ tests: no g++ on PATH");
        return None;
    }
    let v = verifier_with(|c| {
        c.compile_memory_mb = 1024;
        c.compile_timeout_s = 60.0;
        f(c)
    })?;
    assert!(v.0.has_cpp(), "g++ is on PATH but the verifier did not take it");
    Some(v)
}

fn cpp() -> Option<(CodeVerifier, u32)> {
    cpp_with(|_| {})
}

fn cpp_short() -> Option<(CodeVerifier, u32)> {
    cpp_with(|c| {
        c.timeout_s = 1.0;
        c.startup_s = 1.0;
    })
}

fn sum_stdio_cpp() -> CodeTests {
    tests(json!({"kind": "stdio", "language": "cpp",
        "cases": [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6"}]}))
}

/// Compiling is part of a C++ verification: a looser bound than [`FAST`].
const CPP: Duration = Duration::from_secs(40);

const GOOD_SUM_CPP: &str = "#include <bits/stdc++.h>\nusing namespace std;\nint main() {\n    long long a, b;\n    cin >> a >> b;\n    cout << a + b << endl;\n}\n";

/// A C++ program whose `main` first runs `hostile` (a statement list) and then solves the sum.
fn cpp_prog(includes: &str, hostile: &str) -> String {
    format!(
        "#include <cstdio>\n#include <cstdlib>\n{includes}\nint main() {{\n{hostile}\n    long long a, b;\n    if (scanf(\"%lld %lld\", &a, &b) != 2) return 1;\n    printf(\"%lld\\n\", a + b);\n    return 0;\n}}\n"
    )
}

#[test]
fn cpp_correct_wrong_and_broken_programs() {
    let Some(v) = cpp() else { return };
    let r = expect(&v, &sum_stdio_cpp(), GOOD_SUM_CPP, true, &[Reason::Passed], CPP);
    assert_eq!((r.passed_tests, r.total_tests), (2, 2));
    expect(&v, &sum_stdio_cpp(), &GOOD_SUM_CPP.replace("a + b", "a - b"), false, &[Reason::WrongAnswer], CPP);
    // A compile error is its own verdict, with the compiler's message.
    let r = expect(&v, &sum_stdio_cpp(), "int main() { return x; }\n", false, &[Reason::CompileError], CPP);
    assert!(r.detail.contains("x"), "{r:?}");
    expect(&v, &sum_stdio_cpp(), "this is not C++\n", false, &[Reason::CompileError], CPP);
    // A program without main does not link.
    expect(&v, &sum_stdio_cpp(), "int f() { return 1; }\n", false, &[Reason::CompileError], CPP);
    // Runtime errors: exit code, abort, segfault, uncaught exception.
    for bad in ["return 3;", "abort();", "int *p = nullptr; *(volatile int *)p = 1;", "throw 1;"] {
        expect(&v, &sum_stdio_cpp(), &cpp_prog("", bad), false, &[Reason::RuntimeError], CPP);
    }
    // The same float-tolerant, token-wise checker as Python.
    let mean = tests(json!({"kind": "stdio", "language": "cpp", "float_tol": 1e-6,
        "cases": [{"input": "3\n1 2 4\n", "output": "2.333333333\n"}, {"input": "2\n1 2\n", "output": "1.5"}]}));
    let prog = "#include <cstdio>\nint main() { int n; scanf(\"%d\", &n); double s = 0; for (int i = 0; i < n; i++) { double x; scanf(\"%lf\", &x); s += x; } printf(\"%.7f\\n\", s / n); }\n";
    expect(&v, &mean, prog, true, &[Reason::Passed], CPP);
    expect(&v, &mean, &prog.replace("%.7f", "%.1f"), false, &[Reason::WrongAnswer], CPP);
}

#[test]
fn cpp_hostile_programs_are_contained() {
    let Some(v) = cpp_short() else { return };
    let t = sum_stdio_cpp();
    // Infinite loop (volatile: not optimised away).
    expect(&v, &t, &cpp_prog("", "volatile int x = 0; while (true) x++;"), false, &[Reason::Timeout], CPP);
    // Fork bomb.
    let bomb = cpp_prog("#include <unistd.h>", "while (true) fork();");
    expect(&v, &t, &bomb, false, &[Reason::Timeout], CPP);
    // The slot works normally right after.
    expect(&v, &t, GOOD_SUM_CPP, true, &[Reason::Passed], CPP);
    // Huge allocation at once, and growing slowly.
    let hog = cpp_prog("#include <vector>", "std::vector<char> big(50LL << 30, 1); printf(\"%d\\n\", big[7]);");
    expect(&v, &t, &hog, false, &[Reason::Memory], CPP);
    let grow =
        cpp_prog("#include <vector>", "std::vector<std::vector<char>> xs; while (true) xs.emplace_back(10 << 20, 1);");
    expect(&v, &t, &grow, false, &[Reason::Memory], CPP);
    // malloc returning NULL, then used: never a pass (g++ may also elide the allocation, and
    // the extra line printed is then a wrong answer).
    let null = cpp_prog("", "char *p = (char *)malloc(50LL << 30); p[0] = 1; printf(\"%d\\n\", p[0]);");
    expect(&v, &t, &null, false, &[Reason::RuntimeError, Reason::Memory, Reason::WrongAnswer], CPP);
    // A gigabyte of output.
    let flood = cpp_prog(
        "#include <string>",
        "std::string s(1 << 20, 'x'); for (int i = 0; i < 1024; i++) fputs(s.c_str(), stdout);",
    );
    expect(&v, &t, &flood, false, &[Reason::WrongAnswer], CPP);
    // Killing the parent, PID 1 and everything it may.
    let kill = cpp_prog(
        "#include <signal.h>\n#include <unistd.h>",
        "kill(getppid(), SIGKILL); kill(1, SIGKILL); kill(-1, SIGKILL);",
    );
    let (r, _) = judge(&v, &t, &kill);
    assert!(r.pass || matches!(r.reason, Reason::Timeout | Reason::RuntimeError), "{r:?}");
    // A child that ignores SIGTERM and leaves the session dies with the sandbox (judge checks).
    let child = cpp_prog(
        "#include <signal.h>\n#include <unistd.h>",
        "if (fork() == 0) { signal(SIGTERM, SIG_IGN); setsid(); sleep(100); _exit(0); }",
    );
    expect(&v, &t, &child, true, &[Reason::Passed], CPP);
}

#[test]
fn cpp_writes_outside_the_work_dir_do_not_reach_the_host() {
    let Some(v) = cpp() else { return };
    let host = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(host.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let targets = [
        host.path().join("escaped-cpp.txt"),
        std::path::PathBuf::from("/tmp/distill-sandbox-escape-cpp.txt"),
        std::path::PathBuf::from("/root/distill-sandbox-escape-cpp.txt"),
        std::path::PathBuf::from("/etc/distill-sandbox-escape-cpp.txt"),
        std::path::PathBuf::from("/var/tmp/distill-sandbox-escape-cpp.txt"),
        std::path::PathBuf::from("/dev/shm/distill-sandbox-escape-cpp.txt"),
    ];
    let list = targets.iter().map(|p| format!("{:?}", p.display().to_string())).collect::<Vec<_>>().join(", ");
    let hostile = format!(
        "const char *ps[] = {{{list}, \"../escaped-cpp.txt\", \"/escaped-cpp.txt\"}};\n    for (const char *p : ps) {{ FILE *f = fopen(p, \"w\"); if (f) {{ fputs(\"x\", f); fclose(f); }} }}"
    );
    let (r, _) = judge(&v, &sum_stdio_cpp(), &cpp_prog("", &hostile));
    if v.0.isolation() == Ok(Isolation::Namespaces) {
        assert!(r.pass, "{r:?}");
    }
    let isolated = v.0.isolation() != Ok(Isolation::Rlimits);
    for p in &targets {
        if isolated || !p.starts_with("/tmp") {
            assert!(!p.exists(), "{} was written", p.display());
        }
        let _ = std::fs::remove_file(p);
    }
    assert!(!std::path::Path::new("/escaped-cpp.txt").exists());
    // A huge file is cut at the file limit.
    let big = cpp_prog(
        "#include <vector>",
        "FILE *f = fopen(\"big.bin\", \"wb\"); std::vector<char> mb(1 << 20); for (int i = 0; i < 1024; i++) if (fwrite(mb.data(), 1, mb.size(), f) != mb.size()) return 5;",
    );
    expect(&v, &sum_stdio_cpp(), &big, false, &[Reason::RuntimeError], CPP);
}

#[test]
fn cpp_hostile_compilations_are_compile_errors() {
    let Some(v) = cpp_with(|c| c.compile_timeout_s = 15.0) else { return };
    let t = sum_stdio_cpp();
    // Reading an endless file at compile time: bounded by the compiler's memory and time.
    let (r, took) = judge(&v, &t, "#include \"/dev/zero\"\nint main() {}\n");
    assert_eq!(r.reason, Reason::CompileError, "{r:?}");
    assert!(took < CPP, "{took:?}");
    let (r, _) = judge(&v, &t, "#include \"/dev/stdin\"\nint main() {}\n");
    assert!(!r.pass, "{r:?}");
    // Host secrets are not readable by the compiler either.
    let (r, _) = judge(&v, &t, "#include \"/etc/shadow\"\nint main() {}\n");
    assert_eq!(r.reason, Reason::CompileError, "{r:?}");
    // An exponential template instantiation: bounded by the compile limits.
    let bomb = "template <int N> struct F { static const long long v = F<N - 1>::v + F<N - 2>::v; };\ntemplate <> struct F<1> { static const long long v = 1; };\ntemplate <> struct F<0> { static const long long v = 0; };\nint main() { return F<100000>::v != 0; }\n";
    let (r, took) = judge(&v, &t, bomb);
    assert_eq!(r.reason, Reason::CompileError, "{r:?}");
    assert!(took < CPP, "{took:?}");
    // The slot compiles normally right after.
    expect(&v, &t, &cpp_prog("", ""), true, &[Reason::Passed], CPP);
}

/// The generator's stdio problems with C++ solutions: references pass, wrong variants fail.
#[test]
fn cpp_generated_stdio_problems() {
    use distill::problems::{self, ProblemKind};
    let Some(v) = cpp() else { return };
    let param = |prompt: &str, after: &str| -> i64 {
        let rest = &prompt[prompt.find(after).expect(after) + after.len()..];
        let num: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '-').collect();
        num.parse().expect("parameter")
    };
    let mut seen = 0;
    for i in 0..20 {
        if seen == 6 {
            break;
        }
        let p = problems::problem(ProblemKind::Code, 11, i);
        let Some(mut t) = p.tests.clone() else { continue };
        if t.kind != distill::record::TestKind::Stdio {
            continue;
        }
        t.language = "cpp".into();
        let (good, wrong) = if p.prompt.contains("sum of the squares") {
            let k = param(&p.prompt, "strictly greater than ");
            let prog = |op: &str| {
                format!(
                    "#include <iostream>\nusing namespace std;\nint main() {{\n    int n; cin >> n;\n    long long s = 0;\n    for (int i = 0; i < n; i++) {{ long long x; cin >> x; if (x {op} {k}) s += x * x; }}\n    cout << s << \"\\n\";\n}}\n"
                )
            };
            (prog(">"), prog(">="))
        } else if p.prompt.contains("words of length") {
            let m = param(&p.prompt, "at least ");
            let prog = |op: &str| {
                format!(
                    "#include <algorithm>\n#include <iostream>\n#include <sstream>\n#include <string>\n#include <vector>\nusing namespace std;\nint main() {{\n    string line; getline(cin, line);\n    istringstream in(line);\n    vector<string> kept; string w;\n    while (in >> w) if ((long long)w.size() {op} {m}) kept.push_back(w);\n    reverse(kept.begin(), kept.end());\n    for (size_t i = 0; i < kept.size(); i++) cout << (i ? \" \" : \"\") << kept[i];\n    cout << \"\\n\";\n}}\n"
                )
            };
            (prog(">="), prog(">"))
        } else {
            panic!("unknown stdio family: {}", p.prompt);
        };
        let (r, _) = judge(&v, &t, &good);
        assert!(r.pass, "{} C++ reference:\n{good}\n{r:?}", p.id);
        assert_eq!(r.passed_tests, r.total_tests);
        let (r, _) = judge(&v, &t, &wrong);
        assert!(!r.pass && r.reason == Reason::WrongAnswer, "{} C++ wrong variant:\n{wrong}\n{r:?}", p.id);
        seen += 1;
    }
    assert_eq!(seen, 6, "stdio problems among the first 20");
}

#[test]
fn the_tests_language_decides_and_the_tag_only_without_it() {
    let Some(v) = cpp() else { return };
    let py_block = format!("```python\n{GOOD_SUM}```\n");
    let cpp_block = format!("```cpp\n{GOOD_SUM_CPP}```\n");
    let rec = |tests: Value, content: &str| {
        let r = json!({"id": "l/0", "task": "code", "tests": tests, "content": content});
        v.0.verify_record(r.as_object().unwrap())
    };
    let cases = |lang: Option<&str>| {
        let mut t = json!({"kind": "stdio", "cases": [{"input": "1 2\n", "output": "3\n"}]});
        if let Some(l) = lang {
            t["language"] = json!(l);
        }
        t
    };
    let r = rec(cases(Some("cpp")), &cpp_block);
    assert!(r.pass && r.reason == Reason::Passed, "{r:?}");
    let r = rec(cases(Some("cpp")), &py_block);
    assert_eq!(r.reason, Reason::WrongLanguage, "{r:?}");
    assert!(r.detail.contains("cpp") && r.detail.contains("python"), "{r:?}");
    let r = rec(cases(Some("python")), &cpp_block);
    assert_eq!(r.reason, Reason::WrongLanguage, "{r:?}");
    // Both blocks: the one the tests ask for is taken.
    let r = rec(cases(Some("python")), &format!("{py_block}\nor in C++:\n{cpp_block}"));
    assert!(r.pass, "{r:?}");
    let r = rec(cases(Some("cpp")), &format!("{cpp_block}\nor in Python:\n{py_block}"));
    assert!(r.pass, "{r:?}");
    // No `language` in the tests: the block's tag decides (untagged is Python).
    let r = rec(cases(None), &cpp_block);
    assert!(r.pass, "{r:?}");
    let r = rec(cases(None), &py_block);
    assert!(r.pass, "{r:?}");
    let r = rec(cases(None), &format!("```\n{GOOD_SUM}```\n"));
    assert!(r.pass, "{r:?}");
    // C++ code that is Python in disguise does not compile; Python given C++ does not run.
    let r = rec(cases(Some("cpp")), &format!("```cpp\n{GOOD_SUM}```\n"));
    assert_eq!(r.reason, Reason::CompileError, "{r:?}");
    // Call and assert tests have no C++ harness.
    let call = json!({"kind": "call", "language": "cpp", "fn_name": "f", "cases": [{"input": [1], "output": 1}]});
    assert_eq!(rec(call, &cpp_block).reason, Reason::UnsupportedLanguage);
}
