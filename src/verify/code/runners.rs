//! Runners: turn a program and its tests into sandbox jobs, and sandbox outcomes into results.
//!
//! A [`Language`] knows how to run a program of its language for each test kind: Python 3
//! ([`Python`], all three kinds) and C++ ([`Cpp`], `stdio` only). A compiled language gives a
//! [`Language::compile_job`]: the compiler runs as a sandbox job of its own (it reads untrusted
//! source: `#include "/dev/zero"`, template bombs) and prints the executable on stdout; each
//! case then runs that executable in a fresh sandbox. The stdio comparison lives here and is
//! language-independent.
//!
//! * `stdio`: one sandbox run per case, the program reads the case's input on stdin; stdout is
//!   compared with the expected output token by token ([`stdio_matches`]).
//! * `call`: one run; `call_runner.py` calls `fn_name` once per case and prints the results as
//!   JSON; the verifier compares them ([`json_matches`]). Expected outputs never enter the
//!   sandbox.
//! * `assert`: one run of two processes: the trusted test runner (`assert_runner.py`, trusted
//!   uid, holds the test program and the run token) and the candidate (`candidate_server.py`,
//!   candidate uid), which answers calls with plain data only. The runner's report counts only
//!   when it carries the run's token (see `assert_runner.py` for why it cannot be forged).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Reason;
use super::sandbox::{Dir, Exit, Job, JobFile, Outcome};

const ASSERT_RUNNER: &str = include_str!("harness/assert_runner.py");
const CANDIDATE_SERVER: &str = include_str!("harness/candidate_server.py");
const CALL_RUNNER: &str = include_str!("harness/call_runner.py");

/// A language the verifier can run.
pub trait Language: Send + Sync {
    /// The `tests.language` values it serves.
    fn names(&self) -> &'static [&'static str];
    /// For a compiled language, the job that compiles `program` and prints the executable on
    /// stdout (diagnostics on stderr, non-zero exit on a compile error); `None` when the
    /// source runs as it is.
    fn compile_job(&self, _program: &str) -> Option<Job> {
        None
    }
    /// Runs a whole program (stdin → stdout): `program` is the source, or the executable that
    /// [`Language::compile_job`] printed.
    fn stdio_job(&self, program: &[u8], input: &[u8]) -> Job;
    /// Runs the `call` harness; `None` when the language has no such harness.
    fn call_job(&self, program: &str, fn_name: &str, inputs: &[Value]) -> Option<Job>;
    /// Runs the `assert` harness; `None` when the language has no such harness.
    fn assert_job(&self, program: &str, test: &str, entry_point: &str, early_exit: bool, token: &str) -> Option<Job>;
    /// Why a program that exited non-zero failed, from its stderr.
    fn failure(&self, stderr: &[u8]) -> Reason;
}

/// Python 3 through a fixed interpreter path.
#[derive(Debug, Clone)]
pub struct Python {
    pub interpreter: PathBuf,
}

impl Python {
    fn argv(&self, rest: &[&str]) -> Vec<String> {
        let mut v = vec![self.interpreter.display().to_string(), "-I".into(), "-B".into()];
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    }
}

fn file(dir: Dir, name: &str, data: impl Into<Vec<u8>>) -> JobFile {
    JobFile { dir, name: name.to_string(), data: data.into(), executable: false }
}

impl Language for Python {
    fn names(&self) -> &'static [&'static str] {
        &["python", "python3", "py"]
    }

    fn stdio_job(&self, program: &[u8], input: &[u8]) -> Job {
        Job {
            files: vec![file(Dir::Work, "solution.py", program)],
            main: self.argv(&["solution.py"]),
            main_trusted: false,
            helper: None,
            stdin: input.to_vec(),
        }
    }

    fn call_job(&self, program: &str, fn_name: &str, inputs: &[Value]) -> Option<Job> {
        let spec = serde_json::json!({"fn_name": fn_name, "inputs": inputs});
        Some(Job {
            files: vec![file(Dir::Work, "solution.py", program), file(Dir::Work, "call_runner.py", CALL_RUNNER)],
            main: self.argv(&["call_runner.py", "solution.py"]),
            main_trusted: false,
            helper: None,
            stdin: spec.to_string().into_bytes(),
        })
    }

    fn assert_job(&self, program: &str, test: &str, entry_point: &str, early_exit: bool, token: &str) -> Option<Job> {
        Some(Job {
            files: vec![
                file(Dir::Work, "solution.py", program),
                file(Dir::Work, "candidate_server.py", CANDIDATE_SERVER),
                file(Dir::Trusted, "test.py", test),
                file(Dir::Trusted, "assert_runner.py", ASSERT_RUNNER),
            ],
            main: self.argv(&["assert_runner.py", "test.py", entry_point, if early_exit { "1" } else { "0" }]),
            main_trusted: true,
            helper: Some(self.argv(&["candidate_server.py", "solution.py"])),
            stdin: format!("{token}\n").into_bytes(),
        })
    }

    fn failure(&self, stderr: &[u8]) -> Reason {
        let text = String::from_utf8_lossy(stderr);
        let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        if text.contains("MemoryError") {
            Reason::Memory
        } else if !text.contains("Traceback (most recent call last)")
            && ["SyntaxError", "IndentationError", "TabError"].iter().any(|e| last.starts_with(e))
        {
            Reason::CompileError
        } else {
            Reason::RuntimeError
        }
    }
}

/// C++ through `g++ -O2 -std=c++17` (plus `-DONLINE_JUDGE`, as Codeforces defines it, and
/// `-pipe`); `stdio` tests only.
#[derive(Debug, Clone)]
pub struct Cpp {
    pub compiler: PathBuf,
}

/// The flags every C++ program is compiled with (after the compiler's path).
pub const CPP_FLAGS: &[&str] = &["-O2", "-std=c++17", "-DONLINE_JUDGE", "-pipe", "-fmax-errors=20"];

impl Language for Cpp {
    fn names(&self) -> &'static [&'static str] {
        &["cpp", "c++", "cxx"]
    }

    fn compile_job(&self, program: &str) -> Option<Job> {
        // The linker needs a seekable output file, so the executable is written to the work
        // dir and then copied to stdout; the compiler's own stdout joins its diagnostics.
        let script = format!("\"$0\" {} -o solution solution.cpp 1>&2 && exec cat solution", CPP_FLAGS.join(" "));
        Some(Job {
            files: vec![file(Dir::Work, "solution.cpp", program)],
            main: vec!["/bin/sh".into(), "-c".into(), script, self.compiler.display().to_string()],
            main_trusted: false,
            helper: None,
            stdin: Vec::new(),
        })
    }

    fn stdio_job(&self, program: &[u8], input: &[u8]) -> Job {
        Job {
            files: vec![JobFile { dir: Dir::Work, name: "solution".into(), data: program.to_vec(), executable: true }],
            main: vec!["./solution".into()],
            main_trusted: false,
            helper: None,
            stdin: input.to_vec(),
        }
    }

    fn call_job(&self, _program: &str, _fn_name: &str, _inputs: &[Value]) -> Option<Job> {
        None
    }

    fn assert_job(&self, _: &str, _: &str, _: &str, _: bool, _: &str) -> Option<Job> {
        None
    }

    fn failure(&self, stderr: &[u8]) -> Reason {
        // An uncaught `std::bad_alloc` (the address-space limit) aborts with this line.
        if String::from_utf8_lossy(stderr).contains("std::bad_alloc") { Reason::Memory } else { Reason::RuntimeError }
    }
}

/// Finds the C++ compiler: `configured` if given, else the first `g++` on PATH, then
/// `/usr/bin/g++`; `None` when there is none (C++ records are then `unsupported_language`).
pub fn find_cxx(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("g++"))
        .chain([PathBuf::from("/usr/bin/g++")])
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .find(|p| world_executable(p))
}

/// Finds a Python 3 interpreter the sandbox uid can execute: `configured` if given, else
/// each `python3` on PATH (a pyenv-style shim is asked for its real `sys.executable`), then
/// `/usr/bin/python3`. Candidates readable and executable by everyone come first.
pub fn find_python(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(p.to_path_buf());
    }
    let mut found: Vec<PathBuf> = Vec::new();
    let mut push = |p: PathBuf| {
        if let Ok(c) = std::fs::canonicalize(&p)
            && !found.contains(&c)
        {
            found.push(c);
        }
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join("python3");
        if !p.is_file() {
            continue;
        }
        let is_script = std::fs::read(&p).map(|b| b.starts_with(b"#!")).unwrap_or(false);
        if is_script {
            if let Ok(o) = std::process::Command::new(&p).args(["-c", "import sys; print(sys.executable)"]).output()
                && o.status.success()
            {
                let exe = String::from_utf8_lossy(&o.stdout).trim().to_string();
                if !exe.is_empty() {
                    push(PathBuf::from(exe));
                }
            }
        } else {
            push(p);
        }
    }
    push(PathBuf::from("/usr/bin/python3"));
    push(PathBuf::from("/usr/local/bin/python3"));
    found.sort_by_key(|p| !world_executable(p));
    found.into_iter().next()
}

/// Whether every directory above `p` is searchable and `p` itself executable by anyone.
fn world_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |q: &Path| std::fs::metadata(q).map(|m| m.permissions().mode()).unwrap_or(0);
    if mode(p) & 0o005 != 0o005 {
        return false;
    }
    p.ancestors().skip(1).all(|a| a.as_os_str().is_empty() || mode(a) & 0o001 != 0)
}

/// Token-wise comparison of a program's output with the expected output: whitespace and
/// trailing newlines do not matter; with `float_tol`, tokens that both parse as numbers may
/// differ by `tol * max(1, |expected|)`.
pub fn stdio_matches(got: &[u8], want: &str, float_tol: Option<f64>) -> bool {
    let got = String::from_utf8_lossy(got);
    let mut g = got.split_whitespace();
    let mut w = want.split_whitespace();
    loop {
        match (g.next(), w.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) => {
                if a == b {
                    continue;
                }
                match (float_tol, a.parse::<f64>(), b.parse::<f64>()) {
                    (Some(tol), Ok(x), Ok(y)) if x.is_finite() && y.is_finite() => {
                        if (x - y).abs() > tol * y.abs().max(1.0) {
                            return false;
                        }
                    }
                    _ => return false,
                }
            }
            _ => return false,
        }
    }
}

/// Equality of JSON results: numbers by value (2 == 2.0; within `float_tol` when given),
/// arrays element-wise, objects key-wise.
pub fn json_matches(got: &Value, want: &Value, float_tol: Option<f64>) -> bool {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => {
            if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
                return x == y;
            }
            match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => match float_tol {
                    Some(tol) => (x - y).abs() <= tol * y.abs().max(1.0),
                    None => x == y,
                },
                _ => a == b,
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| json_matches(x, y, float_tol))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, x)| b.get(k).is_some_and(|y| json_matches(x, y, float_tol)))
        }
        _ => got == want,
    }
}

/// A stdio case's text: strings as they are, arrays of strings as lines, anything else as JSON.
pub fn case_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(Value::is_string) => {
            let mut s = a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n");
            s.push('\n');
            s
        }
        other => other.to_string(),
    }
}

/// The result of one sandbox run that did not exit 0 (or produced no usable report).
pub fn run_failure(lang: &dyn Language, o: &Outcome) -> (Reason, String) {
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let s = s.trim();
        let start = s.char_indices().rev().nth(600).map_or(0, |(i, _)| i);
        s[start..].to_string()
    };
    match &o.exit {
        Exit::Timeout => (Reason::Timeout, format!("killed after {:.1} s of wall time", o.wall.as_secs_f64())),
        Exit::OutputLimit => (Reason::RuntimeError, "output limit exceeded".to_string()),
        Exit::SandboxError(e) => (Reason::SandboxError, e.clone()),
        Exit::Signal(s) if *s == libc::SIGXCPU || *s == libc::SIGKILL => {
            (Reason::Timeout, format!("CPU time limit (signal {s})"))
        }
        Exit::Signal(s) => {
            // A C++ program aborted by an uncaught `std::bad_alloc` is out of memory.
            let r = if lang.failure(&o.stderr) == Reason::Memory { Reason::Memory } else { Reason::RuntimeError };
            (r, format!("killed by signal {s}: {}", tail(&o.stderr)))
        }
        Exit::Code(c) => {
            let r = lang.failure(&o.stderr);
            (r, format!("exit code {c}: {}", tail(&o.stderr)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stdio_comparison_table() {
        let cases: &[(&str, &str, Option<f64>, bool)] = &[
            ("1 2\n3\n", "1 2\n3", None, true),
            ("1 2 3", "1\n2\n3\n\n", None, true),
            ("  1\t2  \n", "1 2", None, true),
            ("1 2", "1 2 3", None, false),
            ("1 2 3", "1 2", None, false),
            ("0.3333333", "0.333333333", None, false),
            ("0.3333333", "0.333333333", Some(1e-6), true),
            ("1000000.1", "1000000.0", Some(1e-6), true),
            ("0.5", "0.6", Some(1e-6), false),
            ("abc", "abd", Some(1e-6), false),
            ("YES", "yes", None, false),
            ("", "", None, true),
            ("", "\n", None, true),
        ];
        for (got, want, tol, ok) in cases {
            assert_eq!(stdio_matches(got.as_bytes(), want, *tol), *ok, "{got:?} vs {want:?} tol {tol:?}");
        }
    }

    #[test]
    fn json_comparison_table() {
        let cases = [
            (json!(2), json!(2.0), None, true),
            (json!([1, [2, 3]]), json!([1, [2, 3]]), None, true),
            (json!([1, 2]), json!([2, 1]), None, false),
            (json!(0.1 + 0.2), json!(0.3), None, false),
            (json!(0.1 + 0.2), json!(0.3), Some(1e-9), true),
            (json!({"a": 1}), json!({"a": 1.0}), None, true),
            (json!({"a": 1}), json!({"b": 1}), None, false),
            (json!(null), json!(0), None, false),
            (json!("1"), json!(1), None, false),
            (json!(true), json!(1), None, false),
        ];
        for (got, want, tol, ok) in cases {
            assert_eq!(json_matches(&got, &want, tol), ok, "{got} vs {want}");
        }
    }

    #[test]
    fn python_failure_kinds() {
        let py = Python { interpreter: PathBuf::from("/usr/bin/python3") };
        let cases: &[(&str, Reason)] = &[
            (
                "  File \"solution.py\", line 1\n    def f(\n         ^\nSyntaxError: '(' was never closed\n",
                Reason::CompileError,
            ),
            (
                "Traceback (most recent call last):\n  File \"x\", line 2\nZeroDivisionError: division by zero\n",
                Reason::RuntimeError,
            ),
            ("Traceback (most recent call last):\n  File \"x\", line 2\nMemoryError\n", Reason::Memory),
            ("Traceback (most recent call last):\n  exec('(')\nSyntaxError: bad\n", Reason::RuntimeError),
        ];
        for (err, want) in cases {
            assert_eq!(py.failure(err.as_bytes()), *want, "{err}");
        }
    }

    #[test]
    fn case_text_forms() {
        assert_eq!(case_text(&json!("1 2\n")), "1 2\n");
        assert_eq!(case_text(&json!(["1 2", "3"])), "1 2\n3\n");
        assert_eq!(case_text(&json!(5)), "5");
    }
}
