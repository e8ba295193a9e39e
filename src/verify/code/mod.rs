//! The code verifier: do a response's program's tests pass?
//!
//! In: a record with `task: code`, its tests in `tests` ([`CodeTests`]: `assert`, `stdio` or
//! `call`) and the response in `content` (with `reasoning`, or a raw `response` holding
//! `<think>…</think>`). Out: a [`Verdict`] with `pass`, `extracted` (the program), `reason`
//! (`passed`, `compile_error`, `runtime_error`, `wrong_answer`, `timeout`, `memory`,
//! `no_code`, `wrong_language`, `sandbox_error`; `missing_tests` and `unsupported_language`
//! when the record cannot be judged) and, in the verdict's extra fields, `passed_tests`,
//! `total_tests`, `isolation` and a short `detail`.
//!
//! Languages: `python` (all kinds) and `cpp` (`stdio`; compiled once per program with
//! `g++ -O2 -std=c++17` inside the sandbox, with its own time, memory and output limits; a
//! program that does not compile is `compile_error`). `tests.language` decides; only when the
//! record's tests have no `language` field does the tag of the response's last fenced block
//! (`python`, `cpp`, …; untagged means Python) choose. A response whose only code is in another
//! language than the tests ask for is `wrong_language`.
//!
//! Programs run in the [`sandbox`] (one process group, fresh tmpfs work dir, cleared
//! environment, rlimits, unprivileged uid, private namespaces when root), a bounded number at a
//! time ([`CodeConfig::workers`], default = cores): each worker slot has its own uids.
//! Extraction is in [`extract`], the per-language and per-kind logic in [`runners`].

pub mod extract;
pub mod runners;
pub mod sandbox;

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::record::{CodeTests, TestKind, Verdict};
use runners::{Cpp, Language, Python};
use sandbox::{Exit, Isolation, Limits, Sandbox};

/// Why a program passed or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Passed,
    CompileError,
    RuntimeError,
    WrongAnswer,
    Timeout,
    Memory,
    NoCode,
    /// The response's code is in another language than the record's tests ask for.
    WrongLanguage,
    SandboxError,
    /// The record has no usable `tests`.
    MissingTests,
    /// No runner for `tests.language`.
    UnsupportedLanguage,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Passed => "passed",
            Reason::CompileError => "compile_error",
            Reason::RuntimeError => "runtime_error",
            Reason::WrongAnswer => "wrong_answer",
            Reason::Timeout => "timeout",
            Reason::Memory => "memory",
            Reason::NoCode => "no_code",
            Reason::WrongLanguage => "wrong_language",
            Reason::SandboxError => "sandbox_error",
            Reason::MissingTests => "missing_tests",
            Reason::UnsupportedLanguage => "unsupported_language",
        }
    }

    fn parse(s: &str) -> Option<Reason> {
        Some(match s {
            "pass" | "passed" => Reason::Passed,
            "compile_error" => Reason::CompileError,
            "runtime_error" => Reason::RuntimeError,
            "wrong_answer" => Reason::WrongAnswer,
            "timeout" => Reason::Timeout,
            "memory" => Reason::Memory,
            "sandbox_error" => Reason::SandboxError,
            _ => return None,
        })
    }
}

/// Which isolation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IsolationChoice {
    /// The strongest available (namespaces, else uid, else rlimits), with a warning when weak.
    #[default]
    Auto,
    Namespaces,
    Uid,
    Rlimits,
}

/// Settings of the code verifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CodeConfig {
    /// Programs run at once; 0 = number of cores.
    pub workers: usize,
    /// Stop a problem's tests at the first failing one.
    pub early_exit: bool,
    /// Wall-clock seconds per run when the record's tests give no `timeout_s` (a stdio case is
    /// one run; call and assert tests are one run each).
    pub timeout_s: f64,
    /// Added to every run's wall clock for interpreter start-up.
    pub startup_s: f64,
    /// Address space per process, MiB, when the record gives no `memory_mb`.
    pub memory_mb: u64,
    /// Largest file, and size of each private tmpfs, MiB.
    pub file_mb: u64,
    /// Processes per sandbox uid.
    pub nproc: u64,
    /// stdout kept per run, MiB (more kills the run).
    pub max_output_mb: u64,
    /// Relative tolerance for numbers in stdio/call outputs when the record's tests give no
    /// `float_tol`; unset = exact.
    pub float_tol: Option<f64>,
    pub isolation: IsolationChoice,
    /// Python interpreter; default: found on PATH (see `runners::find_python`).
    pub python: Option<PathBuf>,
    /// C++ compiler (g++); default: `g++` on PATH (see `runners::find_cxx`).
    pub cxx: Option<PathBuf>,
    /// Wall-clock seconds for compiling one program (also its CPU limit).
    pub compile_timeout_s: f64,
    /// Address space of the compiler's processes, MiB.
    pub compile_memory_mb: u64,
    /// First sandbox uid; default: derived from the process id.
    pub uid_base: Option<u32>,
}

impl Default for CodeConfig {
    fn default() -> Self {
        CodeConfig {
            workers: 0,
            early_exit: true,
            timeout_s: 5.0,
            startup_s: 1.0,
            memory_mb: 1024,
            file_mb: 64,
            nproc: 16,
            max_output_mb: 16,
            float_tol: None,
            isolation: IsolationChoice::Auto,
            python: None,
            cxx: None,
            compile_timeout_s: 30.0,
            compile_memory_mb: 2048,
            uid_base: None,
        }
    }
}

/// The judgement of one program.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CodeResult {
    pub pass: bool,
    pub reason: Reason,
    pub passed_tests: u64,
    pub total_tests: u64,
    pub isolation: Option<Isolation>,
    pub detail: String,
    pub extracted: Option<String>,
}

impl CodeResult {
    fn fail(reason: Reason, total: u64, detail: impl Into<String>) -> CodeResult {
        CodeResult {
            pass: false,
            reason,
            passed_tests: 0,
            total_tests: total,
            isolation: None,
            detail: detail.into(),
            extracted: None,
        }
    }

    /// As a record verdict: `pass`, `extracted`, `reason`, plus `passed_tests`, `total_tests`,
    /// `isolation` and `detail` in the extra fields.
    pub fn to_verdict(&self) -> Verdict {
        let mut v = Verdict {
            pass: Some(self.pass),
            extracted: self.extracted.clone(),
            reason: Some(self.reason.as_str().to_string()),
            ..Verdict::default()
        };
        v.extra.insert("passed_tests".into(), self.passed_tests.into());
        v.extra.insert("total_tests".into(), self.total_tests.into());
        v.extra.insert("isolation".into(), self.isolation.map_or(Value::Null, |i| i.as_str().into()));
        if !self.detail.is_empty() {
            v.extra.insert("detail".into(), self.detail.clone().into());
        }
        v
    }
}

struct Ready {
    sandbox: Sandbox,
    python: Python,
    cpp: Option<Cpp>,
}

/// Worker slots: each run holds one, which bounds concurrency and gives it its own uids.
struct Slots {
    free: Mutex<Vec<u32>>,
    cv: Condvar,
}

struct SlotGuard<'a> {
    slots: &'a Slots,
    slot: u32,
}

impl Slots {
    fn new(n: usize) -> Slots {
        Slots { free: Mutex::new((0..n as u32).rev().collect()), cv: Condvar::new() }
    }

    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(slot) = free.pop() {
                return SlotGuard { slots: self, slot };
            }
            free = self.cv.wait(free).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.slots.free.lock().unwrap_or_else(|e| e.into_inner()).push(self.slot);
        self.slots.cv.notify_one();
    }
}

/// The code verifier. The sandbox is probed on first use (a failed probe makes every verdict a
/// `sandbox_error` naming the cause).
pub struct CodeVerifier {
    cfg: CodeConfig,
    ready: OnceLock<Result<Ready, String>>,
    slots: Slots,
}

impl CodeVerifier {
    pub fn new(cfg: CodeConfig) -> CodeVerifier {
        let workers =
            if cfg.workers == 0 { std::thread::available_parallelism().map_or(2, |n| n.get()) } else { cfg.workers }
                .min(120);
        CodeVerifier { cfg, ready: OnceLock::new(), slots: Slots::new(workers) }
    }

    pub fn config(&self) -> &CodeConfig {
        &self.cfg
    }

    /// The isolation in force (probing the sandbox if not done yet), or why there is none.
    pub fn isolation(&self) -> Result<Isolation, String> {
        self.ready().map(|r| r.sandbox.isolation())
    }

    fn ready(&self) -> Result<&Ready, String> {
        self.ready.get_or_init(|| self.init()).as_ref().map_err(Clone::clone)
    }

    fn init(&self) -> Result<Ready, String> {
        let interpreter = runners::find_python(self.cfg.python.as_deref())
            .ok_or_else(|| "no python3 found on PATH (set the code verifier's `python`)".to_string())?;
        let python = Python { interpreter };
        let probe = python.stdio_job(b"print('ok')\n", b"");
        let wanted = match self.cfg.isolation {
            IsolationChoice::Auto | IsolationChoice::Namespaces => Isolation::Namespaces,
            IsolationChoice::Uid => Isolation::Uid,
            IsolationChoice::Rlimits => Isolation::Rlimits,
        };
        let uid_base = self.cfg.uid_base.unwrap_or_else(sandbox::default_uid_base);
        let (sb, why) = Sandbox::probe(wanted, uid_base, &probe);
        let Some(sb) = sb else {
            return Err(format!("the code sandbox cannot run {}: {}", python.interpreter.display(), why.join("; ")));
        };
        if self.cfg.isolation == IsolationChoice::Namespaces && sb.isolation() != Isolation::Namespaces {
            return Err(format!("namespace isolation was required but is unavailable: {}", why.join("; ")));
        }
        if sb.isolation() != Isolation::Namespaces {
            eprintln!(
                "WARNING: code sandbox isolation is only `{}` (no private network/mount/PID namespaces{}): {}",
                sb.isolation().as_str(),
                if sb.isolation() == Isolation::Rlimits { ", no uid drop: programs run as you" } else { "" },
                if why.is_empty() { "as configured".to_string() } else { why.join("; ") }
            );
        }
        let cpp = runners::find_cxx(self.cfg.cxx.as_deref()).map(|compiler| Cpp { compiler });
        Ok(Ready { sandbox: sb, python, cpp })
    }

    /// The runner for `tests.language`, or why there is none.
    fn language(&self, ready: &Ready, name: &str) -> Result<Box<dyn Language>, String> {
        let name = name.to_ascii_lowercase();
        if ready.python.names().contains(&name.as_str()) {
            return Ok(Box::new(ready.python.clone()));
        }
        let cpp = Cpp { compiler: PathBuf::new() };
        if cpp.names().contains(&name.as_str()) {
            return match &ready.cpp {
                Some(c) => Ok(Box::new(c.clone())),
                None => Err("no g++ found on PATH (set the code verifier's `cxx`)".into()),
            };
        }
        Err(format!("no runner for language {name:?} (supported: python, cpp)"))
    }

    /// Whether C++ programs can be judged here (a `g++` was found), probing the sandbox if not
    /// done yet.
    pub fn has_cpp(&self) -> bool {
        self.ready().is_ok_and(|r| r.cpp.is_some())
    }

    /// Judges a record (see the module documentation for the fields read).
    pub fn verify_record(&self, record: &Map<String, Value>) -> CodeResult {
        let tests: CodeTests = match record.get("tests") {
            None | Some(Value::Null) => return CodeResult::fail(Reason::MissingTests, 0, "the record has no `tests`"),
            Some(t) => match serde_json::from_value(t.clone()) {
                Ok(t) => t,
                Err(e) => return CodeResult::fail(Reason::MissingTests, 0, format!("invalid `tests`: {e}")),
            },
        };
        let text = |k: &str| record.get(k).and_then(Value::as_str).unwrap_or("");
        let response = match (text("content"), text("reasoning"), text("response")) {
            ("", "", r) => r.to_string(),
            (c, "", _) => c.to_string(),
            (c, r, _) => format!("<think>{r}</think>{c}"),
        };
        // `tests.language` decides; the code's own tag only when the tests do not say.
        let explicit = record.get("tests").and_then(|t| t.get("language")).is_some_and(|l| !l.is_null());
        let mut tests = tests;
        if !explicit && let Some((lang, _)) = extract::last_tagged(&response) {
            tests.language = lang.to_string();
        }
        let Some(program) = extract::extract(&response, &tests.language) else {
            if let Some((other, _)) = extract::last_tagged(&response)
                && extract::canonical(&tests.language) != Some(other)
            {
                return CodeResult::fail(
                    Reason::WrongLanguage,
                    0,
                    format!("the tests ask for {}; the response's code is {other}", tests.language),
                );
            }
            return CodeResult::fail(
                Reason::NoCode,
                0,
                format!("no complete ```{} block in the response", tests.language),
            );
        };
        let mut r = self.verify_program(&tests, program);
        r.extracted = Some(program.to_string());
        r
    }

    /// Runs `program` against `tests`.
    pub fn verify_program(&self, tests: &CodeTests, program: &str) -> CodeResult {
        let ready = match self.ready() {
            Ok(r) => r,
            Err(e) => return CodeResult::fail(Reason::SandboxError, 0, e),
        };
        let lang = match self.language(ready, &tests.language) {
            Ok(l) => l,
            Err(why) => {
                return CodeResult {
                    isolation: Some(ready.sandbox.isolation()),
                    ..CodeResult::fail(Reason::UnsupportedLanguage, 0, why)
                };
            }
        };
        let timeout = tests.timeout_s.filter(|t| t.is_finite() && *t > 0.0).unwrap_or(self.cfg.timeout_s).min(3600.0);
        let limits = Limits {
            wall: Duration::from_secs_f64(timeout + self.cfg.startup_s.max(0.0)),
            cpu_s: timeout.ceil() as u64 + 1,
            memory_mb: tests.memory_mb.unwrap_or(self.cfg.memory_mb).max(64),
            file_mb: self.cfg.file_mb,
            nproc: self.cfg.nproc,
            nofile: 256,
            stdout_cap: (self.cfg.max_output_mb.max(1) << 20) as usize,
            stderr_cap: 1 << 20,
        };
        let float_tol = tests.extra.get("float_tol").and_then(Value::as_f64).or(self.cfg.float_tol);
        let slot = self.slots.acquire();
        let mut r = match tests.kind {
            TestKind::Stdio => self.run_stdio(ready, lang.as_ref(), slot.slot, tests, program, &limits, float_tol),
            TestKind::Call => self.run_call(ready, lang.as_ref(), slot.slot, tests, program, &limits, float_tol),
            TestKind::Assert => self.run_assert(ready, lang.as_ref(), slot.slot, tests, program, &limits),
        };
        drop(slot);
        r.isolation = Some(ready.sandbox.isolation());
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn run_stdio(
        &self,
        ready: &Ready,
        lang: &dyn Language,
        slot: u32,
        tests: &CodeTests,
        program: &str,
        limits: &Limits,
        float_tol: Option<f64>,
    ) -> CodeResult {
        let cases = tests.cases.as_deref().unwrap_or(&[]);
        let total = cases.len() as u64;
        if cases.is_empty() {
            return CodeResult::fail(Reason::MissingTests, 0, "stdio tests without `cases`");
        }
        // A compiled language is compiled once, in a sandbox run of its own.
        let executable = match lang.compile_job(program) {
            None => program.as_bytes().to_vec(),
            Some(job) => match self.compile(ready, slot, &job) {
                Ok(bin) => bin,
                Err((r, d)) => return CodeResult::fail(r, total, d),
            },
        };
        let mut passed = 0;
        let mut first: Option<(Reason, String)> = None;
        for (i, case) in cases.iter().enumerate() {
            let input = runners::case_text(&case.input);
            let want = runners::case_text(&case.output);
            let mut lim = limits.clone();
            lim.stdout_cap = lim.stdout_cap.min(want.len() * 2 + (64 << 10));
            let o = ready.sandbox.run(slot, &lang.stdio_job(&executable, input.as_bytes()), &lim);
            let failure = match &o.exit {
                Exit::Code(0) if runners::stdio_matches(&o.stdout, &want, float_tol) => None,
                Exit::Code(0) => Some((Reason::WrongAnswer, format!("case {i}: output differs"))),
                Exit::OutputLimit => Some((Reason::WrongAnswer, format!("case {i}: output longer than expected"))),
                _ => {
                    let (r, d) = runners::run_failure(lang, &o);
                    Some((r, format!("case {i}: {d}")))
                }
            };
            match failure {
                None => passed += 1,
                Some(f) => {
                    let stop = self.cfg.early_exit || matches!(f.0, Reason::CompileError | Reason::SandboxError);
                    first.get_or_insert(f);
                    if stop {
                        break;
                    }
                }
            }
        }
        finish(passed, total, first)
    }

    /// Runs a compile job: the executable it printed, or the verdict (`compile_error`, or
    /// `sandbox_error`) and its detail. The compiler gets `compile_timeout_s` of wall and CPU
    /// time, `compile_memory_mb` of address space, `file_mb` for the executable and 1 MiB of
    /// diagnostics; past any of them the program counts as not compiling.
    fn compile(&self, ready: &Ready, slot: u32, job: &sandbox::Job) -> Result<Vec<u8>, (Reason, String)> {
        let t = self.cfg.compile_timeout_s.clamp(1.0, 3600.0);
        let limits = Limits {
            wall: Duration::from_secs_f64(t),
            cpu_s: t.ceil() as u64,
            memory_mb: self.cfg.compile_memory_mb.max(256),
            file_mb: self.cfg.file_mb.max(1),
            // g++, cc1plus, as, collect2 and ld, with headroom.
            nproc: self.cfg.nproc.max(16),
            nofile: 256,
            stdout_cap: (self.cfg.file_mb.max(1) << 20) as usize,
            stderr_cap: 1 << 20,
        };
        let o = ready.sandbox.run(slot, job, &limits);
        let diag = || {
            let s = String::from_utf8_lossy(&o.stderr);
            let s = s.trim();
            let start = s.char_indices().rev().nth(600).map_or(0, |(i, _)| i);
            s[start..].to_string()
        };
        match &o.exit {
            Exit::Code(0) if !o.stdout.is_empty() => Ok(o.stdout),
            Exit::Code(0) => Err((Reason::CompileError, "the compiler produced no executable".into())),
            Exit::Code(c) => Err((Reason::CompileError, format!("exit code {c}: {}", diag()))),
            Exit::Timeout => Err((Reason::CompileError, format!("compilation took over {t:.0} s"))),
            Exit::OutputLimit => Err((Reason::CompileError, "compiler output or executable over the limit".into())),
            Exit::Signal(s) => Err((Reason::CompileError, format!("compiler killed by signal {s}: {}", diag()))),
            Exit::SandboxError(e) => Err((Reason::SandboxError, e.clone())),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_call(
        &self,
        ready: &Ready,
        lang: &dyn Language,
        slot: u32,
        tests: &CodeTests,
        program: &str,
        limits: &Limits,
        float_tol: Option<f64>,
    ) -> CodeResult {
        let cases = tests.cases.as_deref().unwrap_or(&[]);
        let total = cases.len() as u64;
        let Some(fn_name) = tests.fn_name.as_deref().or(tests.entry_point.as_deref()) else {
            return CodeResult::fail(Reason::MissingTests, total, "call tests without `fn_name`");
        };
        if cases.is_empty() {
            return CodeResult::fail(Reason::MissingTests, 0, "call tests without `cases`");
        }
        let inputs: Vec<Value> = cases.iter().map(|c| c.input.clone()).collect();
        let Some(job) = lang.call_job(program, fn_name, &inputs) else {
            return CodeResult::fail(Reason::UnsupportedLanguage, total, "no call harness for this language");
        };
        let o = ready.sandbox.run(slot, &job, limits);
        // One JSON line per call, in order; the first line for each index counts.
        let mut results: Vec<Option<Value>> = vec![None; cases.len()];
        let mut load: Option<(Reason, String)> = None;
        for line in o.stdout.split(|&b| b == b'\n') {
            let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(line) else { continue };
            if let Some(kind) = m.get("load").and_then(Value::as_str) {
                let detail = m.get("detail").and_then(Value::as_str).unwrap_or("").to_string();
                load.get_or_insert((Reason::parse(kind).unwrap_or(Reason::RuntimeError), detail));
            } else if let Some(i) = m.get("i").and_then(Value::as_u64).map(|i| i as usize)
                && i < results.len()
                && results[i].is_none()
            {
                results[i] = Some(Value::Object(m));
            }
        }
        if let Some((r, d)) = load {
            return CodeResult::fail(r, total, d);
        }
        let mut passed = 0;
        let mut first: Option<(Reason, String)> = None;
        for (i, (case, got)) in cases.iter().zip(&results).enumerate() {
            let failure = match got {
                None => Some(match &o.exit {
                    Exit::Code(0) => (Reason::RuntimeError, format!("case {i}: no result")),
                    _ => {
                        let (r, d) = runners::run_failure(lang, &o);
                        (r, format!("case {i}: {d}"))
                    }
                }),
                Some(m) => match (m.get("ok"), m.get("error")) {
                    (Some(v), _) if runners::json_matches(v, &case.output, float_tol) => None,
                    (Some(_), _) => Some((Reason::WrongAnswer, format!("case {i}: wrong result"))),
                    (None, e) => {
                        let memory = m.get("kind").and_then(Value::as_str) == Some("memory");
                        Some((
                            if memory { Reason::Memory } else { Reason::RuntimeError },
                            format!("case {i}: {}", e.and_then(Value::as_str).unwrap_or("error")),
                        ))
                    }
                },
            };
            match failure {
                None => passed += 1,
                Some(f) => {
                    first.get_or_insert(f);
                }
            }
        }
        finish(passed, total, first)
    }

    fn run_assert(
        &self,
        ready: &Ready,
        lang: &dyn Language,
        slot: u32,
        tests: &CodeTests,
        program: &str,
        limits: &Limits,
    ) -> CodeResult {
        let Some(test) = tests.test.as_deref().filter(|t| !t.trim().is_empty()) else {
            return CodeResult::fail(Reason::MissingTests, 0, "assert tests without `test`");
        };
        let entry = tests.entry_point.as_deref().unwrap_or("");
        let token = token();
        let Some(job) = lang.assert_job(program, test, entry, self.cfg.early_exit, &token) else {
            return CodeResult::fail(Reason::UnsupportedLanguage, 0, "no assert harness for this language");
        };
        let o = ready.sandbox.run(slot, &job, limits);
        if matches!(o.exit, Exit::Timeout | Exit::SandboxError(_)) {
            let (r, d) = runners::run_failure(lang, &o);
            return CodeResult::fail(r, 0, d);
        }
        // The report counts only with this run's token, on the last marked line.
        let report =
            o.stdout.split(|&b| b == b'\n').rev().find_map(|l| l.strip_prefix(b"DISTILL-RESULT ".as_slice())).and_then(
                |rest| {
                    let s = std::str::from_utf8(rest).ok()?;
                    let (tok, json) = s.split_once(' ')?;
                    (tok == token).then(|| serde_json::from_str::<Value>(json).ok()).flatten()
                },
            );
        let Some(rep) = report else {
            let (r, d) = match o.exit {
                Exit::Code(_) => (lang.failure(&o.stderr), "the test runner ended without a valid report".to_string()),
                _ => runners::run_failure(lang, &o),
            };
            return CodeResult::fail(if r == Reason::CompileError { Reason::RuntimeError } else { r }, 0, d);
        };
        let n = |k: &str| rep.get(k).and_then(Value::as_u64).unwrap_or(0);
        let status = rep.get("status").and_then(Value::as_str).unwrap_or("");
        let detail = rep.get("detail").and_then(Value::as_str).unwrap_or("").to_string();
        let reason = Reason::parse(status).unwrap_or(Reason::SandboxError);
        let (passed, total) = (n("passed"), n("total"));
        if reason == Reason::Passed && total > 0 && passed == total {
            CodeResult {
                pass: true,
                reason,
                passed_tests: passed,
                total_tests: total,
                isolation: None,
                detail,
                extracted: None,
            }
        } else {
            let reason = if reason == Reason::Passed { Reason::WrongAnswer } else { reason };
            let detail = if total == 0 && detail.is_empty() { "the test program has no tests".into() } else { detail };
            CodeResult { passed_tests: passed, ..CodeResult::fail(reason, total, detail) }
        }
    }
}

fn finish(passed: u64, total: u64, first: Option<(Reason, String)>) -> CodeResult {
    match first {
        None => CodeResult {
            pass: true,
            reason: Reason::Passed,
            passed_tests: passed,
            total_tests: total,
            isolation: None,
            detail: String::new(),
            extracted: None,
        },
        Some((r, d)) => CodeResult { passed_tests: passed, ..CodeResult::fail(r, total, d) },
    }
}

/// A fresh random token for one run (128 bits from the kernel).
fn token() -> String {
    let mut b = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok();
    if !ok {
        // Never expected on Linux; still unpredictable enough to a program started later.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        b[..16].copy_from_slice(&(t.as_nanos() ^ (std::process::id() as u128) << 64).to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl super::Verifier for CodeVerifier {
    fn task(&self) -> crate::record::Task {
        crate::record::Task::Code
    }

    fn verify(&self, record: &Map<String, Value>) -> super::Judged {
        let r = self.verify_record(record);
        let outcome = match r.reason {
            Reason::Passed => super::Outcome::Pass,
            Reason::SandboxError | Reason::MissingTests | Reason::UnsupportedLanguage => super::Outcome::Undecided,
            _ => super::Outcome::Fail,
        };
        super::Judged { verdict: r.to_verdict(), outcome }
    }
}
