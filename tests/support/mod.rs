//! Harness for the interop tests: drives a dispynode with the real, stock
//! dispy 4.15.2 client (Python scripts in `tests/clients/`).
//!
//! * The node under test is ours (`CARGO_BIN_EXE_dispynode`) unless
//!   `DISPYNODE_IMPL=reference`, which runs the original Python dispynode
//!   from the same venv (to prove the client scripts right).
//! * The client venv is `target/dispy-venv` (override: `DISPY_VENV`); it is
//!   created on first use, guarded by a lock so parallel tests and test
//!   processes create it once.
//! * Each client script prints `CHECK <name> ok|FAIL <detail>` lines and a
//!   final `RESULT ok`; a test lists the CHECK names it expects, so a script
//!   that silently skips a check fails.
//!
//! Every wait is bounded: node start-up, client scripts (hard timeout, then
//! the client's process group is killed) and node shutdown.

#![allow(dead_code)]

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, Flock, FlockArg};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use rand::Rng;
use tempfile::TempDir;

/// The dispy client version the tests are written against.
pub const DISPY_VERSION: &str = "4.15.2";

/// Default hard timeout for one client script.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a node may take to accept TCP connections after its start.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Time between SIGTERM and SIGKILL when stopping a node.
const NODE_STOP_GRACE: Duration = Duration::from_secs(3);

/// Depth of the node's prefix below the test's temp dir: `base/n1/n2/n3/n4/prefix`.
/// Path escapes of up to this many `..` land inside `base`, where the test
/// can see them (and clean them up).
const PREFIX_DEPTH_DIRS: [&str; 5] = ["n1", "n2", "n3", "n4", "prefix"];

// ---------------------------------------------------------------------------
// Which node implementation runs

/// The node implementation under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    /// This crate's `dispynode` binary.
    Ours,
    /// The original Python `dispynode.py` (dispy 4.15.2).
    Reference,
}

/// `DISPYNODE_IMPL=reference` selects the Python node; unset, empty or
/// `ours` selects ours.
pub fn node_impl() -> Impl {
    match std::env::var("DISPYNODE_IMPL").unwrap_or_default().as_str() {
        "" | "ours" => Impl::Ours,
        "reference" | "ref" | "python" => Impl::Reference,
        other => panic!("DISPYNODE_IMPL={other:?}: expected 'ours' or 'reference'"),
    }
}

/// For tests that only our node can pass (documented reference bugs): returns
/// true (and says so) when running against the reference.
pub fn skip_under_reference(reason: &str) -> bool {
    if node_impl() == Impl::Reference {
        eprintln!("SKIPPED under DISPYNODE_IMPL=reference: {reason}");
        true
    } else {
        false
    }
}

// ---------------------------------------------------------------------------
// Paths, the Python venv

/// The repository root (the crate's manifest directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The client scripts' directory.
pub fn clients_dir() -> PathBuf {
    repo_root().join("tests").join("clients")
}

/// The venv holding dispy (and the reference node).
pub fn venv_dir() -> PathBuf {
    match std::env::var_os("DISPY_VENV") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => repo_root().join("target").join("dispy-venv"),
    }
}

fn venv_has_dispy(python: &Path) -> bool {
    if !python.exists() {
        return false;
    }
    Command::new(python)
        .args([
            "-c",
            &format!("import dispy, pycos; assert dispy.__version__ == '{DISPY_VERSION}'"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn run_setup_step(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The venv's python, creating the venv with `dispy==4.15.2` if needed.
/// Safe to call from many test threads and processes at once.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = venv_dir();
            let python = venv.join("bin").join("python");
            if venv_has_dispy(&python) {
                return python;
            }
            if let Some(parent) = venv.parent() {
                fs::create_dir_all(parent).expect("create the venv's parent directory");
            }
            let lock_path = venv.with_extension("lock");
            let lock_file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
            let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
                .unwrap_or_else(|(_, e)| panic!("flock {}: {e}", lock_path.display()));
            // Another process may have built it while we waited for the lock.
            if !venv_has_dispy(&python) {
                let base_python =
                    std::env::var("DISPY_BASE_PYTHON").unwrap_or_else(|_| "python3".into());
                eprintln!(
                    "creating the dispy venv at {} with {base_python}",
                    venv.display()
                );
                run_setup_step(
                    Command::new(&base_python).args(["-m", "venv"]).arg(&venv),
                    "python3 -m venv",
                );
                run_setup_step(
                    Command::new(&python).args([
                        "-m",
                        "pip",
                        "install",
                        "--disable-pip-version-check",
                        &format!("dispy=={DISPY_VERSION}"),
                    ]),
                    "pip install dispy",
                );
                assert!(
                    venv_has_dispy(&python),
                    "dispy {DISPY_VERSION} still not importable from {}",
                    python.display()
                );
            }
            python
        })
        .clone()
}

// ---------------------------------------------------------------------------
// Ports

pub fn port_is_free(port: u16) -> bool {
    let addrs = [Ipv4Addr::LOCALHOST, Ipv4Addr::UNSPECIFIED];
    addrs.iter().all(|ip| {
        let sa = SocketAddr::from((*ip, port));
        TcpListener::bind(sa).is_ok() && UdpSocket::bind(sa).is_ok()
    })
}

/// The range test ports come from: below the kernel's ephemeral ports, which any outgoing
/// connection (a readiness probe, a client) may take as its source port, so that a port
/// handed out here is not taken by one a moment later (a client once failed to bind P-1 with
/// EADDRINUSE: the harness's own probe of the node had left P-1 in TIME_WAIT). The whole
/// 20000..60000 if the ephemeral range leaves too little below it.
fn test_port_range() -> std::ops::Range<u16> {
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok());
    match low {
        Some(low) if low >= 22001 => 20001..low,
        _ => 20001..60000,
    }
}

/// A random port P (see `test_port_range`) such that TCP and UDP on P-1 (client)
/// and P (node) can be bound right now.  Never returns a port of a pair
/// already handed out in this process.
pub fn free_port_pair() -> u16 {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let used = USED.get_or_init(|| Mutex::new(HashSet::new()));
    let range = test_port_range();
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let p: u16 = rng.gen_range(range.clone());
        {
            let used = used.lock().unwrap();
            if used.contains(&p) || used.contains(&(p - 1)) {
                continue;
            }
        }
        if port_is_free(p - 1) && port_is_free(p) {
            let mut used = used.lock().unwrap();
            if used.contains(&p) || used.contains(&(p - 1)) {
                continue;
            }
            used.insert(p - 1);
            used.insert(p);
            return p;
        }
    }
    panic!("no free port pair found in {range:?}");
}

// ---------------------------------------------------------------------------
// Processes

/// How `child` ended, if it has, *without reaping it* (WNOWAIT): while the
/// zombie exists its pid, and so its process group id, cannot be reused, so
/// signalling the group stays safe until we reap it.  Only for children that
/// were never reaped (never passed to `Child::try_wait`/`wait`).
fn exited_unreaped(child: &Child) -> Option<WaitStatus> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(Pid::from_raw(child.id() as i32)), flags) {
        Ok(WaitStatus::StillAlive) => None,
        Ok(status) => Some(status),
        // ECHILD: already reaped; gone (see `reaped_elsewhere`).
        Err(e) => Some(WaitStatus::Exited(Pid::from_raw(-1), -(e as i32))),
    }
}

/// The marker `exited_unreaped` returns when the child was already reaped:
/// its process group id may then belong to someone else, never signal it.
fn reaped_elsewhere(status: &Option<WaitStatus>) -> bool {
    matches!(status, Some(WaitStatus::Exited(p, _)) if p.as_raw() == -1)
}

fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!(
                "killed by {sig:?}{}",
                if *core { " (core dumped)" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL the whole process group (the
/// child was started as a group leader; leftovers such as job processes the
/// reference forked go with it) and reap the child.  The group is signalled
/// before the leader is reaped, so its id cannot belong to anyone else.
fn stop_process_group(child: &mut Child, grace: Duration) {
    let pid = Pid::from_raw(child.id() as i32);
    let mut state = exited_unreaped(child);
    if state.is_none() {
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && state.is_none() {
            thread::sleep(Duration::from_millis(50));
            state = exited_unreaped(child);
        }
    }
    if !reaped_elsewhere(&state) {
        let _ = killpg(pid, Signal::SIGKILL);
    }
    let _ = child.wait();
}

pub fn read_lossy(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `lines` lines of `text`, saying how many were left out.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = String::new();
    if start > 0 {
        out.push_str(&format!("[... {start} earlier lines ...]\n"));
    }
    for l in &all[start..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------
// The node

/// Options common to both implementations.
#[derive(Clone, Debug)]
pub struct NodeOpts {
    pub cpus: u32,
    pub secret: Option<String>,
    /// e.g. "10k"
    pub max_file_size: Option<String>,
    /// Passed verbatim (the option must exist in the implementation under test).
    pub extra: Vec<String>,
    /// A command the node's command line is appended to (e.g. `unshare ...`): the node runs
    /// through it (it must `exec` the node, so that the pid stays the node's).
    pub wrap: Vec<String>,
    /// Start the node as the leader of a session whose controlling terminal is a pseudo
    /// terminal of the test (its stdin), as when an operator runs it in a shell.
    pub controlling_tty: bool,
}

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts {
            cpus: 2,
            secret: None,
            max_file_size: None,
            extra: Vec::new(),
            wrap: Vec::new(),
            controlling_tty: false,
        }
    }
}

/// A running node with its own temp dir, ports and log.  Dropping it stops
/// the node (SIGTERM, SIGKILL after 3 s) and removes the temp dir.
pub struct Node {
    child: Child,
    port: u16,
    imp: Impl,
    base: TempDir,
    prefix: PathBuf,
    log_path: PathBuf,
    command: String,
    /// Set once the node process has been reaped (after `terminate`).
    reaped: Option<ExitStatus>,
    /// The master side of the node's controlling terminal (`controlling_tty`): closing it
    /// hangs the terminal up, so it is dropped after the node is stopped.
    tty_master: Option<OwnedFd>,
}

impl Node {
    /// Starts the node under test with 2 CPUs.
    pub fn start() -> Node {
        Node::start_with(NodeOpts::default())
    }

    pub fn start_with(opts: NodeOpts) -> Node {
        let imp = node_impl();
        // The venv first: making it can take minutes, which should not pass with the node up.
        python();
        let port = free_port_pair();
        let base = tempfile::Builder::new()
            .prefix("dispynode-interop-")
            .tempdir()
            .expect("create temp dir");
        let mut prefix = base.path().to_path_buf();
        for d in PREFIX_DEPTH_DIRS {
            prefix.push(d);
        }
        fs::create_dir_all(&prefix).expect("create node prefix");
        // World-traversable, like /tmp: a node started as root may run jobs
        // under another account, which must reach the prefix.
        let mut d = prefix.clone();
        while d.starts_with(base.path()) {
            let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o755));
            if !d.pop() {
                break;
            }
        }
        let log_path = base.path().join("node.log");
        let log = File::create(&log_path).expect("create node log");

        let mut cmd = node_command(imp, port, &prefix);
        cmd.args(["--cpus", &opts.cpus.to_string()]).arg("-d");
        if let Some(s) = &opts.secret {
            cmd.args(["--secret", s]);
        }
        if let Some(m) = &opts.max_file_size {
            cmd.args(["--max_file_size", m]);
        }
        cmd.args(&opts.extra);
        if let Some((first, rest)) = opts.wrap.split_first() {
            let mut wrapped = Command::new(first);
            wrapped
                .args(rest)
                .arg(cmd.get_program())
                .args(cmd.get_args());
            cmd = wrapped;
        }
        let pty = opts.controlling_tty.then(|| {
            let pty = nix::pty::openpty(None, None).expect("open a pseudo terminal");
            // Not into what other tests start meanwhile (openpty does not set it).
            for fd in [&pty.master, &pty.slave] {
                nix::fcntl::fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
                    .expect("FD_CLOEXEC on the pseudo terminal");
            }
            pty
        });
        let (child, command) =
            spawn_node_with(cmd, base.path(), log, pty.as_ref().map(|p| &p.slave));
        let mut node = Node {
            child,
            port,
            imp,
            base,
            prefix,
            log_path,
            command,
            reaped: None,
            tty_master: pty.map(|p| p.master),
        };
        node.wait_accepting();
        node
    }

    fn wait_accepting(&mut self) {
        wait_accepting(
            self.port,
            || exited_unreaped(&self.child).map(|s| describe(&s)),
            || {
                format!(
                    "command: {}\n--- node log\n{}",
                    self.command,
                    tail(&self.log(), 200)
                )
            },
        );
    }

    pub fn implementation(&self) -> Impl {
        self.imp
    }

    /// The node's TCP/UDP port P (the client uses P-1).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `--dest_path_prefix` given to the node.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The test's temp dir (holds the prefix, a few levels down, and the log).
    pub fn base(&self) -> &Path {
        self.base.path()
    }

    /// Where the per-scheduler directories live: the reference appends
    /// `dispy/node` to its prefix, ours uses the prefix as given.
    pub fn files_root(&self) -> PathBuf {
        match self.imp {
            Impl::Ours => self.prefix.clone(),
            Impl::Reference => self.prefix.join("dispy").join("node"),
        }
    }

    /// The directory holding the computations of the scheduler at 127.0.0.1.
    pub fn computations_dir(&self) -> PathBuf {
        self.files_root().join("127.0.0.1")
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log(), 300)
    }

    /// Polls the log (bounded) for a line containing `needle`.
    pub fn wait_log_contains(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(needle))
    }

    pub fn is_alive(&mut self) -> bool {
        self.reaped.is_none() && exited_unreaped(&self.child).is_none()
    }

    /// Panics (with the log) if the node has exited, or if our node's log
    /// shows a Rust panic (a panicking task may leave the process running).
    pub fn assert_alive(&mut self) {
        let ended = match self.reaped {
            Some(status) => Some(status.to_string()),
            None => exited_unreaped(&self.child).map(|s| describe(&s)),
        };
        if let Some(status) = ended {
            panic!(
                "the node died ({status})\ncommand: {}\n--- node log\n{}",
                self.command,
                self.log_tail()
            );
        }
        if self.imp == Impl::Ours {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains("panicked at")) {
                panic!(
                    "the node panicked: {line}\ncommand: {}\n--- node log\n{}",
                    self.command,
                    tail(&log, 300)
                );
            }
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the node to exit (no
    /// SIGKILL): Ok(exit status) or Err(description).
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        if let Some(status) = self.reaped {
            return Err(format!("the node had already exited ({status})"));
        }
        if let Some(status) = exited_unreaped(&self.child) {
            return Err(format!(
                "the node had already exited ({})",
                describe(&status)
            ));
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, Signal::SIGTERM).map_err(|e| format!("kill: {e}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let state = exited_unreaped(&self.child);
            if state.is_some() {
                // leftovers of its group first, while the group id is ours
                if !reaped_elsewhere(&state) {
                    let _ = killpg(pid, Signal::SIGKILL);
                }
                let status = self.child.wait().map_err(|e| format!("wait: {e}"))?;
                self.reaped = Some(status);
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the node did not exit within {timeout:?} of SIGTERM"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every path under the test's temp dir that is neither the log, nor the
    /// prefix or one of its ancestors, nor inside the prefix: anything a node
    /// wrote outside its prefix.
    pub fn entries_outside_prefix(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut allowed: HashSet<PathBuf> = HashSet::new();
        let mut p = self.prefix.clone();
        while p.starts_with(self.base.path()) && p != self.base.path() {
            allowed.insert(p.clone());
            p.pop();
        }
        allowed.insert(self.log_path.clone());
        let mut stack = vec![self.base.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                let path = e.path();
                if path.starts_with(&self.prefix) && path != self.prefix {
                    continue;
                }
                if !allowed.contains(&path) {
                    out.push(path.clone());
                }
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) && path != self.prefix {
                    stack.push(path);
                }
            }
        }
        out.sort();
        out
    }

    /// Every file or directory under the test's temp dir whose name starts
    /// with `name_prefix`.
    pub fn find_named(&self, name_prefix: &str) -> Vec<PathBuf> {
        find_named(self.base.path(), name_prefix)
    }

    /// Panics (with the node log) unless `cond`.
    pub fn ensure(&self, cond: bool, what: &str) {
        if !cond {
            panic!("{what}\n--- node log\n{}", self.log_tail());
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            stop_process_group(&mut self.child, NODE_STOP_GRACE);
        }
    }
}

/// The command line of the node under test on port P (scheduler port P-1) with its prefix;
/// the caller adds `--cpus`, `-d` and the rest.
pub fn node_command(imp: Impl, port: u16, prefix: &Path) -> Command {
    let mut cmd = match imp {
        Impl::Ours => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_dispynode"));
            c.args(["-i", "127.0.0.1"])
                .args(["--node_port", &port.to_string()])
                .args(["--scheduler_port", &(port - 1).to_string()]);
            c
        }
        Impl::Reference => {
            let mut c = Command::new(python());
            c.arg(venv_dir().join("bin").join("dispynode.py"))
                .args(["-i", "127.0.0.1"])
                .args(["-p", &(port - 1).to_string()])
                .arg("--daemon");
            c
        }
    };
    cmd.arg("--dest_path_prefix").arg(prefix);
    cmd
}

/// Starts a node command in `cwd` as its own process group, stdout and stderr to `log`:
/// the child and the command line (for failure messages).
pub fn spawn_node(cmd: Command, cwd: &Path, log: File) -> (Child, String) {
    spawn_node_with(cmd, cwd, log, None)
}

/// [`spawn_node`]; with `tty` (the slave side of a pseudo terminal), the node is a session
/// leader with `tty` as its stdin and controlling terminal instead.
pub fn spawn_node_with(
    mut cmd: Command,
    cwd: &Path,
    log: File,
    tty: Option<&OwnedFd>,
) -> (Child, String) {
    let log2 = log.try_clone().expect("clone log handle");
    cmd.current_dir(cwd)
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    match tty {
        None => {
            cmd.stdin(Stdio::null()).process_group(0);
        }
        Some(tty) => {
            cmd.stdin(Stdio::from(tty.try_clone().expect("dup the terminal")));
            // SAFETY: setsid and ioctl are async-signal-safe and act on the child alone; the
            // hook allocates nothing.
            unsafe {
                cmd.pre_exec(|| {
                    nix::unistd::setsid()?;
                    // stdin is the terminal by now (the hook runs after the redirections).
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    }
    let command = format!("{cmd:?}");
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node {command}: {e}"));
    (child, command)
}

/// Waits (bounded) until a node accepts TCP on 127.0.0.1:`port`. Panics with `context()`
/// (command and log) if `exited()` says how the node ended, or after NODE_START_TIMEOUT.
pub fn wait_accepting(
    port: u16,
    mut exited: impl FnMut() -> Option<String>,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + NODE_START_TIMEOUT;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if let Some(status) = exited() {
            panic!("node exited during start-up ({status})\n{}", context());
        }
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            // 40 bytes that are not the auth, then EOF: the node drops it.
            let _ = s.write_all(&[b'x'; 40]);
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "node not accepting on TCP {addr} after {NODE_START_TIMEOUT:?}\n{}",
                context()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `cond` every 100 ms until it holds (true) or `timeout` has passed (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Recursively lists entries below `root` whose file name starts with `name_prefix`.
pub fn find_named(root: &Path, name_prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let path = e.path();
            if e.file_name().to_string_lossy().starts_with(name_prefix) {
                out.push(path.clone());
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// Client scripts

/// One parsed `CHECK` line.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The outcome of one client script.
pub struct ClientRun {
    pub script: String,
    pub args: Vec<String>,
    /// None when the hard timeout killed it.
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
    cwd: TempDir,
}

/// Starts `tests/clients/<script>.py <args...>` with the venv's python in a fresh temp cwd
/// (returned: it lives as long as the run), as its own process group, stdout and stderr
/// piped; `configure` adds the caller's stdin and environment.
pub fn spawn_script(
    script: &str,
    args: &[&str],
    timeout: Duration,
    configure: impl FnOnce(&mut Command),
) -> (Child, TempDir) {
    let python = python();
    let cwd = tempfile::Builder::new()
        .prefix("dispy-client-")
        .tempdir()
        .expect("client temp dir");
    let path = clients_dir().join(format!("{script}.py"));
    assert!(path.is_file(), "no client script {}", path.display());
    // The script's own watchdog fires first and dumps its threads' stacks.
    let watchdog = timeout.as_secs().saturating_sub(8).max(5);
    let mut cmd = Command::new(&python);
    cmd.arg(&path)
        .args(args)
        .current_dir(cwd.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("INTEROP_CLIENT_WATCHDOG", watchdog.to_string())
        .process_group(0);
    configure(&mut cmd);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    (child, cwd)
}

/// Reads a child's pipe to its end on a thread of its own (so the child never blocks on a
/// full pipe); join the thread for the bytes.
pub fn read_in_background(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut b = Vec::new();
        let _ = pipe.read_to_end(&mut b);
        b
    })
}

/// Runs `tests/clients/<script>.py <args...>` with the venv's python in a
/// fresh temp cwd, with a hard timeout (its process group is killed then).
pub fn run_client(script: &str, args: &[&str], timeout: Duration) -> ClientRun {
    let started = Instant::now();
    let (mut child, cwd) = spawn_script(script, args, timeout, |cmd| {
        cmd.stdin(Stdio::null()).env(
            "INTEROP_NODE_IMPL",
            match node_impl() {
                Impl::Ours => "ours",
                Impl::Reference => "reference",
            },
        );
    });
    let out_reader = read_in_background(child.stdout.take().expect("stdout pipe"));
    let err_reader = read_in_background(child.stderr.take().expect("stderr pipe"));
    let deadline = started + timeout;
    let mut timed_out = false;
    let pgid = Pid::from_raw(child.id() as i32);
    let state = loop {
        let state = exited_unreaped(&child);
        if state.is_some() {
            break state;
        }
        if Instant::now() > deadline {
            timed_out = true;
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    // The whole group on timeout; otherwise leftovers of the client's group
    // (they would keep the pipes open).  Done before reaping the leader, so
    // the group id is still ours.
    if !reaped_elsewhere(&state) {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let status = match child.wait() {
        Ok(s) if !timed_out => Some(s),
        _ => None,
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    ClientRun {
        script: script.to_string(),
        args: args.iter().map(|s| s.to_string()).collect(),
        status,
        timed_out,
        elapsed: started.elapsed(),
        stdout,
        stderr,
        cwd,
    }
}

/// The `CHECK <name> ok|FAIL <detail>` lines of a client's stdout.
pub fn parse_checks(stdout: &str) -> Vec<Check> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("CHECK "))
        .map(|rest| {
            let mut it = rest.splitn(3, ' ');
            let name = it.next().unwrap_or("").to_string();
            let verdict = it.next().unwrap_or("");
            let detail = it.next().unwrap_or("").to_string();
            Check {
                name,
                ok: verdict == "ok",
                detail,
            }
        })
        .collect()
}

/// Whether a client's stdout has its final `RESULT ok` line.
pub fn says_result_ok(stdout: &str) -> bool {
    stdout.lines().any(|l| l.trim_end() == "RESULT ok")
}

/// Problems with how a client script ended: killed at the hard timeout or a failed exit,
/// and no final `RESULT ok`.
pub fn exit_problems(
    timed_out: bool,
    elapsed: Duration,
    status: Option<ExitStatus>,
    stdout: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    if timed_out {
        problems.push(format!(
            "client killed after the hard timeout ({elapsed:?})"
        ));
    } else {
        match status {
            Some(s) if s.success() => {}
            Some(s) => problems.push(format!("client exited with {s}")),
            None => problems.push("client status unknown".into()),
        }
    }
    if !says_result_ok(stdout) {
        problems.push("no final 'RESULT ok' line".into());
    }
    problems
}

/// Problems with a client's CHECK lines: failed checks, and checks run but not expected or
/// expected but not run.
pub fn check_problems(stdout: &str, expected: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let checks = parse_checks(stdout);
    let seen: HashSet<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    for c in &checks {
        if !c.ok {
            problems.push(format!("CHECK {} failed: {}", c.name, c.detail));
        }
        if !expected.contains(&c.name.as_str()) {
            problems.push(format!(
                "CHECK {} is not in the test's expected list",
                c.name
            ));
        }
    }
    for name in expected {
        if !seen.contains(name) {
            problems.push(format!("CHECK {name} missing (not run)"));
        }
    }
    problems
}

impl ClientRun {
    /// The client's working directory (files sent by jobs land here).
    pub fn cwd(&self) -> &Path {
        self.cwd.path()
    }

    pub fn checks(&self) -> Vec<Check> {
        parse_checks(&self.stdout)
    }

    /// The value of the last `INFO <key>=<value>` line.
    pub fn info(&self, key: &str) -> Option<String> {
        let pfx = format!("INFO {key}=");
        self.stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(pfx.as_str()))
            .map(|s| s.to_string())
    }

    pub fn finished(&self) -> bool {
        says_result_ok(&self.stdout)
    }

    /// Problems with this run given the expected CHECK names (empty = fine).
    pub fn problems(&self, expected: &[&str]) -> Vec<String> {
        let mut problems = exit_problems(self.timed_out, self.elapsed, self.status, &self.stdout);
        problems.extend(check_problems(&self.stdout, expected));
        problems
    }

    /// A report with the client's whole output.
    pub fn report(&self) -> String {
        format!(
            "client {} {:?} (status {:?}, {:.1}s, cwd {})\n--- client stdout\n{}\n--- client stderr\n{}",
            self.script,
            self.args,
            self.status,
            self.elapsed.as_secs_f64(),
            self.cwd.path().display(),
            self.stdout,
            self.stderr
        )
    }

    /// Asserts the run finished, every CHECK is ok and exactly the expected
    /// CHECK names were reported; otherwise panics with the client's output
    /// and the node's log.
    pub fn assert_checks(&self, node: &Node, expected: &[&str]) {
        let problems = self.problems(expected);
        if !problems.is_empty() {
            panic!(
                "{} problem(s) with client script '{}' against the {:?} node:\n  - {}\n{}\n--- node log ({})\n{}",
                problems.len(),
                self.script,
                node.implementation(),
                problems.join("\n  - "),
                self.report(),
                node.log_path().display(),
                node.log_tail()
            );
        }
    }
}

/// Runs a client script against `node` (its port as argv[1], then `args`)
/// with the default hard timeout.
pub fn run_against(node: &Node, script: &str, args: &[&str]) -> ClientRun {
    run_on_port(node.port(), script, args)
}

/// Runs a client script with `port` as argv[1], then `args`, with the default hard timeout.
pub fn run_on_port(port: u16, script: &str, args: &[&str]) -> ClientRun {
    let port = port.to_string();
    let mut all: Vec<&str> = vec![port.as_str()];
    all.extend_from_slice(args);
    run_client(script, &all, CLIENT_TIMEOUT)
}

/// The CHECK names of many_jobs.py, which the interop and systemd suites both run.
pub const MANY_JOBS_CHECKS: [&str; 8] = [
    "all_replied",
    "all_finished",
    "results_in_order",
    "ip_addr",
    "empty_output",
    "node_cpus",
    "jobs_done",
    "closed",
];

/// The CHECK names of raw_escape.py (path escapes sent by a raw client), which the interop
/// and hostile suites both run.
pub const RAW_ESCAPE_CHECKS: [&str; 17] = [
    "pong",
    "pong_auth",
    "bad_auth_no_reply",
    "compute_rel_refused",
    "compute_abs_refused",
    "compute_mid_refused",
    "compute_dotdot_refused",
    "compute_legit_accepted",
    "xfer_up_refused",
    "xfer_abs_refused",
    "xfer_mid_refused",
    "xfer_name_backslash_refused",
    "xfer_dest_backslash_refused",
    "xfer_name_dotdot_refused",
    "no_escape_files_written",
    "xfer_legit_accepted",
    "close_ack",
];

/// A short random token for unique names.
pub fn token() -> String {
    let mut rng = rand::thread_rng();
    format!("{:08x}", rng.gen::<u32>())
}
