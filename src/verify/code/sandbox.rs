//! The sandbox: runs one untrusted program (and, for `assert` tests, one trusted test runner
//! beside it) with limits, and reports how it ended and what it printed.
//!
//! # Process layout
//!
//! ```text
//! verifier ──spawn──▶ I (root, own process group, PDEATHSIG) ──fork──▶ G (sandbox init)
//!                                                                    ├─fork─▶ helper: candidate uid, work dir
//!                                                                    └─fork─▶ main:   trusted or candidate uid
//! ```
//!
//! * `I` is the verifier's direct child. With [`Isolation::Namespaces`] it first unshares the
//!   mount, network, PID, IPC and UTS namespaces; `G` is then PID 1 of the new PID namespace,
//!   so when `G` exits (it does as soon as `main` ends) the kernel kills every process left in
//!   the sandbox, however it tried to escape (new session, double fork, ignored SIGTERM).
//! * `G` makes every mount private, mounts a fresh `/proc`, and size-limited tmpfs on `/tmp`,
//!   `/var/tmp` and `/dev/shm`: the program's working directory is `/tmp/work` on that tmpfs,
//!   nothing it writes reaches the host, and the new network namespace has no usable interface
//!   (connecting to 127.0.0.1 fails).
//! * `main` and `helper` set their rlimits (CPU, address space, file size, process count, open
//!   files, no core), drop every supplementary group and switch to an unprivileged uid/gid
//!   (one pair per worker slot, so a fork bomb in one slot cannot starve another; the kernel
//!   does not enforce `RLIMIT_NPROC` for root), set `no_new_privs` and exec.
//! * `main` and `helper` live in a process group X of their own (numbered by `I`'s pid; `I` and
//!   `G` leave it). The verifier enforces the wall clock: at the deadline it SIGKILLs group X;
//!   `G` sees `main` die and exits, the kernel tears the namespace down, `I` reports. A verdict
//!   is only returned once the whole sandbox is gone, so a slot's next run starts clean. `G`
//!   and `I` die with the verifier (PDEATHSIG). stdout and stderr are read concurrently with a
//!   cap each; past the cap the sandbox is killed (no unbounded buffering).
//! * Without namespaces (not root, or the kernel refuses) the same layout runs in a fresh host
//!   temporary directory; `G` is then a subreaper that, once `main` ends, kills group X and —
//!   as root — every process of the slot's uids (`kill(-1)` run as that uid), and reaps them.
//!   The isolation actually in force is reported by [`Sandbox::isolation`] and written into
//!   every verdict.
//! * Compiled languages (C++) take two kinds of run, each a full sandbox as above. The
//!   compiler runs as `main` itself (candidate uid, rlimits, namespaces), because it reads
//!   untrusted source (`#include "/dev/zero"` or a host file, template or constexpr bombs):
//!   its own wall/CPU, address-space and output caps bound it, and what it may read is what
//!   any sandboxed program may read. It prints the executable on stdout (capped at the tmpfs
//!   size, so the verifier never buffers more than that). Each test case then runs that
//!   executable as a job file created mode 0700 in a fresh work dir (`./solution`, exec'd
//!   after the `chdir`), with the same limits and teardown as an interpreted program: the
//!   binary is never run, nor even stored, outside a sandbox.
//!
//! All the code between `fork` and `exec` makes raw system calls only, on data prepared before
//! the fork (no allocation, no locks).

use std::ffi::{CString, c_char, c_int};
use std::io::{self, Read as _};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The isolation in force, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Private mount/network/PID/IPC/UTS namespaces, tmpfs work dir, unprivileged uid, rlimits.
    Namespaces,
    /// Unprivileged uid and rlimits in a host temporary directory (root without namespaces).
    Uid,
    /// Rlimits only, as the invoking user (no root, no namespaces): weak.
    Rlimits,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Namespaces => "namespaces",
            Isolation::Uid => "uid",
            Isolation::Rlimits => "rlimits",
        }
    }
}

/// Resource limits of one sandbox run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock time before the whole sandbox is killed.
    pub wall: Duration,
    /// CPU seconds per process (RLIMIT_CPU).
    pub cpu_s: u64,
    /// Address space per process in MiB (RLIMIT_AS).
    pub memory_mb: u64,
    /// Largest file a process may write, MiB (RLIMIT_FSIZE); also the size of each tmpfs.
    pub file_mb: u64,
    /// Processes (threads included) per sandbox uid (RLIMIT_NPROC).
    pub nproc: u64,
    /// Open files per process (RLIMIT_NOFILE).
    pub nofile: u64,
    /// Bytes of stdout kept; more kills the run.
    pub stdout_cap: usize,
    /// Bytes of stderr kept; more kills the run.
    pub stderr_cap: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wall: Duration::from_secs(10),
            cpu_s: 10,
            memory_mb: 1024,
            file_mb: 64,
            nproc: 16,
            nofile: 256,
            stdout_cap: 16 << 20,
            stderr_cap: 1 << 20,
        }
    }
}

/// Which directory of the sandbox a file goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// The candidate's working directory (owned by the candidate uid).
    Work,
    /// The trusted runner's directory (owned by the trusted uid, unreadable by the candidate).
    Trusted,
}

/// A file placed in the sandbox before the programs start.
#[derive(Debug, Clone)]
pub struct JobFile {
    pub dir: Dir,
    pub name: String,
    pub data: Vec<u8>,
    /// Created with mode 0700 instead of 0600: a compiled program the job runs as `./name`.
    pub executable: bool,
}

/// What to run: `main` (whose exit ends the run) and optionally a `helper` running the
/// candidate, connected to `main` by two pipes (main: fd 3 writes to the helper, fd 4 reads
/// from it; helper: fd 3 reads, fd 4 writes). The helper's stdin and stdout are `/dev/null`
/// (its stderr is the run's stderr), so only `main` can write the run's stdout.
#[derive(Debug, Clone)]
pub struct Job {
    pub files: Vec<JobFile>,
    /// argv of the main process; argv[0] is an absolute path, or `./name` for an executable
    /// file of the job in main's own directory (resolved after the `chdir` into it). Runs in
    /// the trusted directory as the trusted uid when `main_trusted`, else in the work
    /// directory as the candidate uid.
    pub main: Vec<String>,
    pub main_trusted: bool,
    /// argv of the helper (always the candidate uid, work directory).
    pub helper: Option<Vec<String>>,
    /// Fed to main's stdin, which is then closed.
    pub stdin: Vec<u8>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// Killed at the wall-clock deadline.
    Timeout,
    /// Killed for writing more than the stdout or stderr cap.
    OutputLimit,
    /// The sandbox itself failed (spawn, namespaces, mounts, uid switch).
    SandboxError(String),
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub exit: Exit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub wall: Duration,
}

/// Errors setting the sandbox up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox temporary directory: {0} (set TMPDIR to a writable directory)")]
    TempDir(io::Error),
    #[error("sandbox argument contains a NUL byte: {0:?}")]
    Nul(String),
}

/// The exit code `G` uses when setting the sandbox up failed (with a message on stderr).
const SETUP_FAILED: i32 = 125;
const SETUP_MARK: &[u8] = b"distill-sandbox: ";

/// Runs jobs with a fixed isolation level.
#[derive(Debug, Clone)]
pub struct Sandbox {
    isolation: Isolation,
    uid_base: u32,
    /// Existing world-writable directories covered by a tmpfs in namespace mode.
    extra_tmpfs: Vec<PathBuf>,
    path_env: String,
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The default first sandbox uid: high, and different between verifier processes so that two
/// concurrent runs do not share a process-count budget.
pub fn default_uid_base() -> u32 {
    1_000_000 + (std::process::id() % 4096) * 256
}

impl Sandbox {
    /// A sandbox with the given isolation (not checked: see [`Sandbox::probe`]).
    pub fn new(isolation: Isolation, uid_base: u32) -> Sandbox {
        let extra_tmpfs = ["/var/tmp", "/dev/shm"].iter().map(PathBuf::from).filter(|p| p.is_dir()).collect();
        Sandbox { isolation, uid_base, extra_tmpfs, path_env: "/usr/local/bin:/usr/bin:/bin".to_string() }
    }

    /// The strongest isolation that runs `probe` (a job that must exit 0 and print `ok`),
    /// trying `wanted` and everything weaker. Returns the sandbox and the reasons stronger
    /// levels failed.
    pub fn probe(wanted: Isolation, uid_base: u32, probe: &Job) -> (Option<Sandbox>, Vec<String>) {
        let mut why = Vec::new();
        let levels = [Isolation::Namespaces, Isolation::Uid, Isolation::Rlimits];
        for level in levels.into_iter().filter(|l| *l as u8 >= wanted as u8) {
            if level != Isolation::Rlimits && !is_root() {
                why.push(format!("{}: needs root (running as uid {})", level.as_str(), unsafe { libc::geteuid() }));
                continue;
            }
            let sb = Sandbox::new(level, uid_base);
            let limits = Limits { wall: Duration::from_secs(20), ..Limits::default() };
            let o = sb.run(0, probe, &limits);
            if o.exit == Exit::Code(0) && o.stdout.starts_with(b"ok") {
                return (Some(sb), why);
            }
            why.push(format!(
                "{}: probe failed ({:?}): {}",
                level.as_str(),
                o.exit,
                String::from_utf8_lossy(&o.stderr).trim().chars().take(400).collect::<String>()
            ));
        }
        (None, why)
    }

    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// The (trusted, candidate) uid of a worker slot.
    pub fn uids(&self, slot: u32) -> (u32, u32) {
        (self.uid_base + 2 * slot, self.uid_base + 2 * slot + 1)
    }

    fn drops_uid(&self) -> bool {
        self.isolation != Isolation::Rlimits
    }

    /// Runs `job` in worker slot `slot` (slots must not be used by two runs at once).
    pub fn run(&self, slot: u32, job: &Job, limits: &Limits) -> Outcome {
        let start = Instant::now();
        match self.run_inner(slot, job, limits, start) {
            Ok(o) => o,
            Err(e) => Outcome {
                exit: Exit::SandboxError(e.to_string()),
                stdout: Vec::new(),
                stderr: Vec::new(),
                wall: start.elapsed(),
            },
        }
    }

    fn run_inner(&self, slot: u32, job: &Job, limits: &Limits, start: Instant) -> Result<Outcome, SandboxError> {
        let (tuid, cuid) = if self.drops_uid() { self.uids(slot) } else { (0, 0) };
        let ns = self.isolation == Isolation::Namespaces;
        // Host temporary directory when there is no private tmpfs.
        let host_dir = if ns {
            None
        } else {
            let d = tempfile::Builder::new().prefix("distill-sbx-").tempdir().map_err(SandboxError::TempDir)?;
            Some(d)
        };
        let (work, trusted): (PathBuf, PathBuf) = match &host_dir {
            None => (PathBuf::from("/tmp/work"), PathBuf::from("/tmp/trusted")),
            Some(d) => (d.path().join("work"), d.path().join("trusted")),
        };
        let mut plan = Plan {
            ns,
            drop: self.drops_uid(),
            main_uid: if job.main_trusted { tuid } else { cuid },
            helper_uid: cuid,
            main_dir: cstr(if job.main_trusted {
                trusted.as_os_str().as_bytes()
            } else {
                work.as_os_str().as_bytes()
            })?,
            work_dir: cstr(work.as_os_str().as_bytes())?,
            mounts: Vec::new(),
            dirs: Vec::new(),
            files: Vec::new(),
            rlimits: rlimits(limits),
            helper: None,
            devnull: cstr(b"/dev/null")?,
        };
        let dirs = [(&work, cuid), (&trusted, tuid)];
        if let Some(d) = &host_dir {
            // Prepared here, by the verifier.
            set_mode(d.path(), 0o711).map_err(SandboxError::TempDir)?;
            for (p, uid) in dirs {
                std::fs::create_dir(p).map_err(SandboxError::TempDir)?;
                set_mode(p, 0o700).map_err(SandboxError::TempDir)?;
                if self.drops_uid() {
                    chown(p, uid).map_err(SandboxError::TempDir)?;
                }
            }
            for f in &job.files {
                let (dir, uid) = if f.dir == Dir::Work { (&work, cuid) } else { (&trusted, tuid) };
                let p = dir.join(&f.name);
                std::fs::write(&p, &f.data).map_err(SandboxError::TempDir)?;
                set_mode(&p, if f.executable { 0o700 } else { 0o600 }).map_err(SandboxError::TempDir)?;
                if self.drops_uid() {
                    chown(&p, uid).map_err(SandboxError::TempDir)?;
                }
            }
        } else {
            // Written by G inside the private tmpfs.
            let size = format!("size={}m,mode=1777", limits.file_mb.max(1));
            plan.mounts.push((cstr(b"/tmp")?, cstr(size.as_bytes())?));
            for p in &self.extra_tmpfs {
                plan.mounts.push((cstr(p.as_os_str().as_bytes())?, cstr(size.as_bytes())?));
            }
            for (p, uid) in dirs {
                plan.dirs.push((cstr(p.as_os_str().as_bytes())?, uid));
            }
            for f in &job.files {
                let (dir, uid) = if f.dir == Dir::Work { (&work, cuid) } else { (&trusted, tuid) };
                let mode = if f.executable { 0o700 } else { 0o600 };
                plan.files.push((cstr(dir.join(&f.name).as_os_str().as_bytes())?, f.data.clone(), uid, mode));
            }
        }
        let env_for = |home: &Path| -> Vec<(String, String)> {
            vec![
                ("PATH".into(), self.path_env.clone()),
                ("HOME".into(), home.display().to_string()),
                ("TMPDIR".into(), if ns { "/tmp".into() } else { work.display().to_string() }),
                ("LANG".into(), "C.UTF-8".into()),
            ]
        };
        if let Some(argv) = &job.helper {
            let argv_c: Vec<CString> = argv.iter().map(|a| cstr(a.as_bytes())).collect::<Result<_, _>>()?;
            let env_c: Vec<CString> =
                env_for(&work).iter().map(|(k, v)| cstr(format!("{k}={v}").as_bytes())).collect::<Result<_, _>>()?;
            plan.helper = Some(Exec::new(argv_c, env_c));
        }
        let main_home = if job.main_trusted { &trusted } else { &work };
        let mut cmd = Command::new(&job.main[0]);
        cmd.args(&job.main[1..])
            .env_clear()
            .envs(env_for(main_home))
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let plan = Arc::new(plan);
        let p2 = Arc::clone(&plan);
        // SAFETY: the closure runs between fork and exec; it only makes async-signal-safe
        // system calls on data prepared above (see `child_setup`).
        unsafe {
            cmd.pre_exec(move || child_setup(&p2));
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Ok(Outcome {
                    exit: Exit::SandboxError(format!("spawning {}: {e}", job.main[0])),
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                    wall: start.elapsed(),
                });
            }
        };
        let pid = child.id() as libc::pid_t;
        let deadline = start + limits.wall;
        let io = pump(&mut child, pid, &job.stdin, limits, deadline);
        // Whatever happened, nothing of the sandbox survives this point: kill the group, let
        // G clean up and I report, and kill I itself only if that takes too long.
        kill_group(pid);
        if !wait_exit(pid, Instant::now() + Duration::from_secs(5)) {
            // SAFETY: our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let status = child.wait();
        drop(host_dir);
        drop(plan);
        let exit = match (io.ended, status) {
            (Ended::Timeout, _) => Exit::Timeout,
            (Ended::OutputLimit, _) => Exit::OutputLimit,
            (_, Err(e)) => Exit::SandboxError(format!("waiting for the sandbox: {e}")),
            (Ended::Exited, Ok(st)) => match (st.code(), st.signal()) {
                (Some(SETUP_FAILED), _) if io.stderr.starts_with(SETUP_MARK) => {
                    Exit::SandboxError(String::from_utf8_lossy(&io.stderr).trim().to_string())
                }
                (Some(c), _) if (129..=192).contains(&c) => Exit::Signal(c - 128),
                (Some(c), _) => Exit::Code(c),
                (None, Some(s)) => Exit::Signal(s),
                (None, None) => Exit::SandboxError("sandbox ended without status".into()),
            },
        };
        Ok(Outcome { exit, stdout: io.stdout, stderr: io.stderr, wall: start.elapsed() })
    }
}

fn cstr(b: &[u8]) -> Result<CString, SandboxError> {
    CString::new(b).map_err(|_| SandboxError::Nul(String::from_utf8_lossy(b).into_owned()))
}

fn set_mode(p: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

fn chown(p: &Path, uid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(p, Some(uid), Some(uid))
}

fn rlimits(l: &Limits) -> Vec<(i32, u64, u64)> {
    let mb = |m: u64| m.saturating_mul(1 << 20);
    vec![
        (libc::RLIMIT_CPU as i32, l.cpu_s.max(1), l.cpu_s.max(1) + 1),
        (libc::RLIMIT_AS as i32, mb(l.memory_mb), mb(l.memory_mb)),
        (libc::RLIMIT_FSIZE as i32, mb(l.file_mb), mb(l.file_mb)),
        (libc::RLIMIT_NPROC as i32, l.nproc, l.nproc),
        (libc::RLIMIT_NOFILE as i32, l.nofile, l.nofile),
        (libc::RLIMIT_CORE as i32, 0, 0),
        (libc::RLIMIT_MEMLOCK as i32, 0, 0),
        (libc::RLIMIT_MSGQUEUE as i32, 0, 0),
    ]
}

/// An `execve` prepared before the fork.
struct Exec {
    _argv: Vec<CString>,
    _env: Vec<CString>,
    argv_p: Vec<*const c_char>,
    env_p: Vec<*const c_char>,
}

impl Exec {
    fn new(argv: Vec<CString>, env: Vec<CString>) -> Exec {
        let mut argv_p: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_p.push(std::ptr::null());
        let mut env_p: Vec<*const c_char> = env.iter().map(|a| a.as_ptr()).collect();
        env_p.push(std::ptr::null());
        Exec { _argv: argv, _env: env, argv_p, env_p }
    }
}

/// Everything the forked processes need, prepared before the fork.
struct Plan {
    ns: bool,
    drop: bool,
    main_uid: u32,
    helper_uid: u32,
    main_dir: CString,
    work_dir: CString,
    /// tmpfs mounts: (target, options).
    mounts: Vec<(CString, CString)>,
    /// Directories to create in the tmpfs: (path, owner).
    dirs: Vec<(CString, u32)>,
    /// Files to write in the tmpfs: (path, contents, owner, mode).
    files: Vec<(CString, Vec<u8>, u32, libc::mode_t)>,
    rlimits: Vec<(i32, u64, u64)>,
    helper: Option<Exec>,
    devnull: CString,
}

// SAFETY: the raw pointers in `Exec` point into CStrings owned by the same `Exec`; the plan is
// read-only once built.
unsafe impl Send for Plan {}
unsafe impl Sync for Plan {}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Writes `distill-sandbox: {what} failed: errno N` to stderr and exits with SETUP_FAILED.
/// Async-signal-safe (no allocation).
unsafe fn die(what: &[u8]) -> ! {
    let e = errno();
    let mut buf = [0u8; 160];
    let mut n = 0;
    for part in [SETUP_MARK, what, b" failed: errno "] {
        for &b in part {
            if n < buf.len() - 12 {
                buf[n] = b;
                n += 1;
            }
        }
    }
    let mut digits = [0u8; 10];
    let mut d = 0;
    let mut v = e.unsigned_abs();
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        buf[n] = digits[d];
        n += 1;
    }
    buf[n] = b'\n';
    n += 1;
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        libc::_exit(SETUP_FAILED)
    }
}

/// Waits for `pid`; its exit code, or 128 + the signal that killed it.
unsafe fn wait_code(pid: libc::pid_t) -> i32 {
    let mut st = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r == pid {
            return encode(st);
        }
        if r < 0 && errno() != libc::EINTR {
            return SETUP_FAILED;
        }
    }
}

fn encode(st: c_int) -> i32 {
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else if libc::WIFSIGNALED(st) {
        128 + libc::WTERMSIG(st)
    } else {
        SETUP_FAILED
    }
}

unsafe fn close_from(fd: u32, cloexec_only: bool) {
    let flags: libc::c_uint = if cloexec_only {
        4 /* CLOSE_RANGE_CLOEXEC */
    } else {
        0
    };
    unsafe {
        if libc::syscall(libc::SYS_close_range, fd, u32::MAX, flags) != 0 && !cloexec_only {
            // Old kernel: close what a small sandbox can have open.
            for f in fd..1024 {
                libc::close(f as c_int);
            }
        }
    }
}

/// Moves `fd` to `target` without the close-on-exec flag.
unsafe fn move_fd(fd: c_int, target: c_int) {
    unsafe {
        if libc::dup2(fd, target) < 0 {
            die(b"dup2");
        }
    }
}

/// Limits, groups, uid, no_new_privs, working directory: the last steps before exec.
unsafe fn confine(p: &Plan, uid: u32, dir: &CString) {
    unsafe {
        for &(res, soft, hard) in &p.rlimits {
            let rl = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
            if libc::setrlimit(res as _, &rl) != 0 {
                die(b"setrlimit");
            }
        }
        if libc::chdir(dir.as_ptr()) != 0 {
            die(b"chdir");
        }
        if p.drop {
            if libc::setgroups(0, std::ptr::null()) != 0 {
                die(b"setgroups");
            }
            if libc::setresgid(uid, uid, uid) != 0 {
                die(b"setresgid");
            }
            if libc::setresuid(uid, uid, uid) != 0 {
                die(b"setresuid");
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            die(b"no_new_privs");
        }
    }
}

/// G's namespace setup: private mounts, /proc, tmpfs, directories and files.
unsafe fn setup_namespace(p: &Plan) {
    unsafe {
        let root = c"/";
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            die(b"making mounts private");
        }
        // A /proc that shows only the sandbox's processes (best effort).
        libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        );
        for (target, opts) in &p.mounts {
            if libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                opts.as_ptr().cast(),
            ) != 0
            {
                die(b"mounting tmpfs");
            }
        }
        for (dir, uid) in &p.dirs {
            if libc::mkdir(dir.as_ptr(), 0o700) != 0 || (p.drop && libc::chown(dir.as_ptr(), *uid, *uid) != 0) {
                die(b"creating sandbox directory");
            }
        }
        for (path, data, uid, mode) in &p.files {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                *mode as c_int,
            );
            if fd < 0 {
                die(b"creating sandbox file");
            }
            let mut off = 0;
            while off < data.len() {
                let n = libc::write(fd, data[off..].as_ptr().cast(), data.len() - off);
                if n < 0 {
                    if errno() == libc::EINTR {
                        continue;
                    }
                    die(b"writing sandbox file");
                }
                off += n as usize;
            }
            if p.drop && libc::fchown(fd, *uid, *uid) != 0 {
                die(b"chown sandbox file");
            }
            libc::close(fd);
        }
    }
}

/// Runs in the verifier's forked child `I`, before exec. Only the `main` process returns from
/// here (to exec); `I` and `G` wait and `_exit`, the helper execs itself.
fn child_setup(p: &Plan) -> io::Result<()> {
    // SAFETY: single-threaded forked child; raw system calls only.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        // Group X (numbered by I's pid) will hold main and helper, but neither I nor G: the
        // verifier kills X at the deadline, and G and I stay to clean up and report.
        let verifier_group = libc::getpgrp();
        let x = libc::getpid();
        if libc::setpgid(0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if p.ns {
            let flags =
                libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
            if libc::unshare(flags) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let g = libc::fork();
        if g < 0 {
            return Err(io::Error::last_os_error());
        }
        if g > 0 {
            // I: back to the verifier's group; wait for G, pass its status on.
            libc::setpgid(0, verifier_group);
            close_from(0, false);
            let code = wait_code(g);
            libc::_exit(code);
        }
        // G.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        if p.ns {
            setup_namespace(p);
        } else {
            // Orphans of the sandbox become G's children, so G can reap them all.
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
        let mut helper_pid = 0;
        let mut to_helper = [-1; 2];
        let mut from_helper = [-1; 2];
        if let Some(h) = &p.helper {
            if libc::pipe2(to_helper.as_mut_ptr(), libc::O_CLOEXEC) != 0
                || libc::pipe2(from_helper.as_mut_ptr(), libc::O_CLOEXEC) != 0
            {
                die(b"pipe");
            }
            // Out of the way of 3 and 4 before placing them.
            for fd in to_helper.iter_mut().chain(from_helper.iter_mut()) {
                *fd = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 16);
            }
            helper_pid = libc::fork();
            if helper_pid < 0 {
                die(b"fork");
            }
            if helper_pid == 0 {
                move_fd(to_helper[0], 3);
                move_fd(from_helper[1], 4);
                let null = libc::open(p.devnull.as_ptr(), libc::O_RDONLY);
                if null < 0 {
                    die(b"open /dev/null");
                }
                move_fd(null, 0);
                let null_w = libc::open(p.devnull.as_ptr(), libc::O_WRONLY);
                if null_w < 0 {
                    die(b"open /dev/null");
                }
                move_fd(null_w, 1);
                confine(p, p.helper_uid, &p.work_dir);
                close_from(5, false);
                libc::execve(h.argv_p[0], h.argv_p.as_ptr(), h.env_p.as_ptr());
                die(b"exec of the helper");
            }
        }
        let m = libc::fork();
        if m < 0 {
            die(b"fork");
        }
        if m == 0 {
            if p.helper.is_some() {
                move_fd(to_helper[1], 3);
                move_fd(from_helper[0], 4);
            }
            confine(p, p.main_uid, &p.main_dir);
            close_from(5, true);
            return Ok(());
        }
        // G: out of group X; wait for main. With namespaces, G's exit makes the kernel kill and
        // reap everything left in the sandbox before I sees it. Without, G kills group X, then
        // every process of the sandbox uids (a dedicated uid per slot, so `kill(-1)` run as
        // that uid reaches exactly the sandbox, even processes that left the group), and reaps
        // them as their subreaper.
        libc::setpgid(0, 0);
        close_from(0, false);
        let code = wait_code(m);
        if helper_pid > 0 {
            libc::kill(helper_pid, libc::SIGKILL);
        }
        if !p.ns {
            libc::kill(-x, libc::SIGKILL);
            if p.drop {
                for uid in [p.helper_uid, p.main_uid] {
                    let k = libc::fork();
                    if k == 0 {
                        if libc::setresuid(uid, uid, uid) == 0 {
                            libc::kill(-1, libc::SIGKILL);
                        }
                        libc::_exit(0);
                    }
                    if k > 0 {
                        wait_code(k);
                    }
                }
            }
            let mut st = 0;
            let flags = if p.drop { 0 } else { libc::WNOHANG };
            while libc::waitpid(-1, &mut st, flags) > 0 || (flags == 0 && errno() == libc::EINTR) {}
        }
        libc::_exit(code);
    }
}

/// SIGKILLs the sandbox's process group X (numbered by our unreaped child's pid, so the
/// number cannot have been reused): main, helper and their descendants.
fn kill_group(pid: libc::pid_t) {
    // SAFETY: a plain signal.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

/// Waits (without reaping) until `pid` exits or `until` passes.
fn wait_exit(pid: libc::pid_t, until: Instant) -> bool {
    loop {
        if exited(pid) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

enum Ended {
    Exited,
    Timeout,
    OutputLimit,
}

struct Io {
    ended: Ended,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// Whether `pid` has exited (without reaping it).
fn exited(pid: libc::pid_t) -> bool {
    // SAFETY: waitid with WNOWAIT only observes.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT);
        r == 0 && info.si_pid() != 0
    }
}

/// Feeds stdin and reads stdout/stderr (capped) until the sandbox ends, the deadline passes or
/// a cap is exceeded.
fn pump(child: &mut std::process::Child, pid: libc::pid_t, input: &[u8], limits: &Limits, deadline: Instant) -> Io {
    let file = |fd: Option<std::os::fd::OwnedFd>| fd.map(std::fs::File::from);
    let mut stdin = file(child.stdin.take().map(Into::into));
    let mut stdout = file(child.stdout.take().map(Into::into));
    let mut stderr = file(child.stderr.take().map(Into::into));
    for fd in [
        stdin.as_ref().map(|s| s.as_raw_fd()),
        stdout.as_ref().map(|s| s.as_raw_fd()),
        stderr.as_ref().map(|s| s.as_raw_fd()),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd);
    }
    // SAFETY: pidfd_open on our own unreaped child.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as c_int;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut written = 0usize;
    if input.is_empty() {
        stdin = None;
    }
    let mut buf = vec![0u8; 1 << 16];
    let mut gone_at: Option<Instant> = None;
    let ended = loop {
        let now = Instant::now();
        if now >= deadline {
            break Ended::Timeout;
        }
        if stdout.is_none() && stderr.is_none() && gone_at.is_some() {
            break Ended::Exited;
        }
        if let Some(t) = gone_at {
            // The root process has ended and its group was killed: pipes close at once in
            // practice; do not wait long for stragglers.
            if now.duration_since(t) > Duration::from_secs(2) {
                break Ended::Exited;
            }
        }
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(4);
        let mut tags = Vec::with_capacity(4);
        if let Some(s) = &stdin {
            fds.push(libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLOUT, revents: 0 });
            tags.push(0);
        }
        if let Some(s) = &stdout {
            fds.push(libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            tags.push(1);
        }
        if let Some(s) = &stderr {
            fds.push(libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            tags.push(2);
        }
        if pidfd >= 0 && gone_at.is_none() {
            fds.push(libc::pollfd { fd: pidfd, events: libc::POLLIN, revents: 0 });
            tags.push(3);
        }
        let mut wait_ms = deadline.saturating_duration_since(now).as_millis().min(i32::MAX as u128) as i32 + 1;
        if pidfd < 0 && gone_at.is_none() {
            wait_ms = wait_ms.min(10);
        }
        if let Some(t) = gone_at {
            wait_ms =
                wait_ms.min((Duration::from_secs(2).saturating_sub(now.duration_since(t))).as_millis() as i32 + 1);
        }
        // SAFETY: fds is a valid array of pollfd.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if r < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            break Ended::Exited;
        }
        if pidfd < 0 && gone_at.is_none() && exited(pid) {
            kill_group(pid);
            gone_at = Some(Instant::now());
        }
        let mut over = false;
        for (pfd, tag) in fds.iter().zip(&tags) {
            if pfd.revents == 0 {
                continue;
            }
            match tag {
                0 => {
                    if let Some(s) = stdin.as_mut() {
                        // SAFETY: writing from a valid slice to our pipe.
                        let n = unsafe {
                            libc::write(s.as_raw_fd(), input[written..].as_ptr().cast(), input.len() - written)
                        };
                        if n > 0 {
                            written += n as usize;
                            if written >= input.len() {
                                stdin = None;
                            }
                        } else if (n < 0 && errno() != libc::EAGAIN && errno() != libc::EINTR)
                            || pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0
                        {
                            stdin = None;
                        }
                    }
                }
                1 | 2 => {
                    let (slot, sink, cap) = if *tag == 1 {
                        (&mut stdout, &mut out, limits.stdout_cap)
                    } else {
                        (&mut stderr, &mut err, limits.stderr_cap)
                    };
                    if let Some(s) = slot.as_mut() {
                        match s.read(&mut buf) {
                            Ok(0) => *slot = None,
                            Ok(n) => {
                                if sink.len() + n > cap {
                                    let keep = cap.saturating_sub(sink.len());
                                    sink.extend_from_slice(&buf[..keep]);
                                    over = true;
                                } else {
                                    sink.extend_from_slice(&buf[..n]);
                                }
                            }
                            Err(e)
                                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => *slot = None,
                        }
                    }
                }
                _ => {
                    // The root process ended: kill stragglers so the pipes close.
                    kill_group(pid);
                    gone_at = Some(Instant::now());
                }
            }
        }
        if over {
            break Ended::OutputLimit;
        }
    };
    if pidfd >= 0 {
        // SAFETY: closing the pidfd we opened.
        unsafe {
            libc::close(pidfd);
        }
    }
    Io { ended, stdout: out, stderr: err }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimit_table_is_complete() {
        let l = Limits::default();
        let r = rlimits(&l);
        assert!(r.iter().any(|&(k, s, _)| k == libc::RLIMIT_NPROC as i32 && s == 16));
        assert!(r.iter().any(|&(k, s, h)| k == libc::RLIMIT_CPU as i32 && s == 10 && h == 11));
    }

    #[test]
    fn shell_job_runs() {
        let (sb, why) = Sandbox::probe(
            Isolation::Namespaces,
            default_uid_base(),
            &Job {
                files: vec![],
                main: vec!["/bin/sh".into(), "-c".into(), "echo ok".into()],
                main_trusted: false,
                helper: None,
                stdin: vec![],
            },
        );
        let sb = sb.unwrap_or_else(|| panic!("no sandbox: {why:?}"));
        let o = sb.run(
            1,
            &Job {
                files: vec![JobFile {
                    dir: Dir::Work,
                    name: "x.txt".into(),
                    data: b"hello".to_vec(),
                    executable: false,
                }],
                main: vec!["/bin/sh".into(), "-c".into(), "cat x.txt; cat; echo err >&2; exit 3".into()],
                main_trusted: false,
                helper: None,
                stdin: b" world".to_vec(),
            },
            &Limits { wall: Duration::from_secs(5), ..Limits::default() },
        );
        assert_eq!(o.exit, Exit::Code(3), "{o:?}");
        assert_eq!(o.stdout, b"hello world");
        assert_eq!(o.stderr, b"err\n");
    }
}
