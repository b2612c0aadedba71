//! Lifecycle tests (issue 3): results that outlive an unreachable client and
//! a restarted (even `kill -9`ed) node, RETRIEVE_JOB / PENDING_JOBS / JOBS,
//! zombie detection, `--serve`, the service window, TLS, SharedJobCluster
//! through the stock dispyscheduler, SIGTERM, `--secret_file`, the
//! configuration file and bad option values, `--msg_timeout`.
//!
//! As in `tests/interop.rs`, the client is the real dispy 4.15.2 client
//! (scripts `tests/clients/life_*.py`, which print `CHECK` lines) and each
//! test starts its own node.  The nodes here are `LifeNode`s (below): like
//! `support::Node`, but they can be stopped with a given signal and started
//! again on the same ports, prefix and state dir, and `--cpus` can be left
//! to a configuration file.
//!
//! How the real client is made unreachable without changing it: its
//! job-result port is put behind a proxy inside the client process
//! (`life_common.ResultProxy`): the node's JOB_REPLY pushes are rejected or
//! refused while everything else (discovery, the client's requests) works;
//! then the proxy forwards again.  dispy 4.15.2's own way back after a client
//! crash, `recover_jobs()`, is broken (protocol G26), so the client stays up.
//!
//! `DISPYNODE_IMPL=reference cargo test --test lifecycle` runs them against
//! the original Python dispynode; tests of behaviour it gets wrong
//! (documented bugs) or lacks (options only ours has) are skipped there with
//! a message.
//!
//! Run: `cargo test --test lifecycle` (about 3 minutes on 2 cores; the
//! zombie and service-window tests wait for the clock).

mod support;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use support::{
    check_problems, exit_problems, free_port_pair, node_command, node_impl, port_is_free, python,
    read_in_background, read_lossy, run_on_port, skip_under_reference, spawn_script, tail, token,
    venv_dir, wait_until, ClientRun, Impl, CLIENT_TIMEOUT,
};

// ===========================================================================
// Harness: nodes that can be restarted, clients read while they run, the
// process table.

/// Options of a `LifeNode`.
#[derive(Clone, Debug)]
struct LifeOpts {
    /// `--cpus`; None leaves it out (a configuration file or the default).
    cpus: Option<u32>,
    /// Passed verbatim after the common arguments.
    extra: Vec<String>,
}

impl Default for LifeOpts {
    fn default() -> Self {
        LifeOpts {
            cpus: Some(2),
            extra: Vec::new(),
        }
    }
}

impl LifeOpts {
    fn with(extra: &[&str]) -> LifeOpts {
        LifeOpts {
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ..LifeOpts::default()
        }
    }
}

/// A node with its own temp dir (prefix `base/prefix`, log `base/node.log`)
/// and ports P (node) / P-1 (client, the node's scheduler port).  Dropping
/// it stops the node (SIGTERM, then SIGKILL of its process group).
struct LifeNode {
    child: Child,
    port: u16,
    imp: Impl,
    base: TempDir,
    prefix: PathBuf,
    log_path: PathBuf,
    command: String,
}

/// A port free for TCP and UDP right now, for a second client or a
/// scheduler's clients: P of a `free_port_pair` (so no other test of this
/// process gets P or P-1).
fn free_port() -> u16 {
    free_port_pair()
}

impl LifeNode {
    fn start(opts: &LifeOpts) -> LifeNode {
        LifeNode::start_on(free_port_pair(), opts)
    }

    fn start_on(port: u16, opts: &LifeOpts) -> LifeNode {
        let base = tempfile::Builder::new()
            .prefix("dispynode-life-")
            .tempdir()
            .expect("create temp dir");
        let prefix = base.path().join("prefix");
        fs::create_dir_all(&prefix).expect("create node prefix");
        let log_path = base.path().join("node.log");
        File::create(&log_path).expect("create node log");
        let imp = node_impl();
        let (child, command) = spawn_node(imp, port, &prefix, base.path(), &log_path, opts);
        let mut node = LifeNode {
            child,
            port,
            imp,
            base,
            prefix,
            log_path,
            command,
        };
        node.wait_accepting();
        node
    }

    /// Starts the node again on the same ports, prefix and log (appended)
    /// once it has exited.
    fn restart(&mut self, opts: &LifeOpts) {
        if matches!(self.child.try_wait(), Ok(None)) {
            panic!("restart: the node (pid {}) still runs", self.child.id());
        }
        if let Ok(mut f) = OpenOptions::new().append(true).open(&self.log_path) {
            let _ = writeln!(f, "\n===== test harness: node restarted =====\n");
        }
        let (child, command) = spawn_node(
            self.imp,
            self.port,
            &self.prefix,
            self.base.path(),
            &self.log_path,
            opts,
        );
        self.child = child;
        self.command = command;
        self.wait_accepting();
    }

    fn wait_accepting(&mut self) {
        // Fields, not methods, in the closures: the first borrows the child mutably.
        support::wait_accepting(
            self.port,
            || self.child.try_wait().ok().flatten().map(|s| s.to_string()),
            || {
                format!(
                    "command: {}\n--- node log\n{}",
                    self.command,
                    tail(&read_lossy(&self.log_path), 300)
                )
            },
        );
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn base(&self) -> &Path {
        self.base.path()
    }

    fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// Where the per-scheduler directories live (the reference appends
    /// `dispy/node` to its prefix).
    fn computations_dir(&self) -> PathBuf {
        match self.imp {
            Impl::Ours => self.prefix.join("127.0.0.1"),
            Impl::Reference => self.prefix.join("dispy").join("node").join("127.0.0.1"),
        }
    }

    fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    fn log_tail(&self) -> String {
        tail(&self.log(), 300)
    }

    fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), sig);
    }

    /// `kill -9` of the node process alone (what it started is left alone,
    /// as after a crash); reaps it.
    fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Its exit status once it exited by itself within `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn ensure(&self, cond: bool, what: &str) {
        if !cond {
            self.fail(what);
        }
    }

    /// Fails the test with `what`, the node's command line and its log.
    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\ncommand: {}\n--- node log ({})\n{}",
            self.command,
            self.log_path.display(),
            self.log_tail()
        );
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.ensure(false, &format!("the node died ({status})"));
        }
        if self.imp == Impl::Ours {
            if let Some(line) = self.log().lines().find(|l| l.contains("panicked at")) {
                self.ensure(false, &format!("the node panicked: {line}"));
            }
        }
    }

    /// Asserts the run's CHECKs (see `support::ClientRun::problems`).
    fn assert_run(&self, run: &ClientRun, expected: &[&str]) {
        let problems = run.problems(expected);
        if !problems.is_empty() {
            self.ensure(
                false,
                &format!(
                    "{} problem(s) with client script '{}' against the {:?} node:\n  - {}\n{}",
                    problems.len(),
                    run.report().lines().next().unwrap_or(""),
                    self.imp,
                    problems.join("\n  - "),
                    run.report()
                ),
            );
        }
    }

    /// Runs a client script with the node's port as argv[1].
    fn run(&self, script: &str, args: &[&str]) -> ClientRun {
        run_on_port(self.port, script, args)
    }
}

impl Drop for LifeNode {
    fn drop(&mut self) {
        stop_child(&mut self.child, Signal::SIGTERM);
    }
}

/// `sig` to a child that still runs and up to 3 s for it to exit, then SIGKILL to its process
/// group (whatever it left) and to it, and reap it.
fn stop_child(child: &mut Child, sig: Signal) {
    let pid = Pid::from_raw(child.id() as i32);
    if matches!(child.try_wait(), Ok(None)) {
        let _ = kill(pid, sig);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

fn spawn_node(
    imp: Impl,
    port: u16,
    prefix: &Path,
    base: &Path,
    log_path: &Path,
    opts: &LifeOpts,
) -> (Child, String) {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("open node log");
    let mut cmd = node_command(imp, port, prefix);
    if opts.extra.iter().any(|a| a == "-i") {
        cmd = without_default_address(cmd);
    }
    cmd.arg("-d");
    if let Some(n) = opts.cpus {
        cmd.args(["--cpus", &n.to_string()]);
    }
    cmd.args(&opts.extra);
    support::spawn_node(cmd, base, log)
}

/// `cmd` without the `-i 127.0.0.1` that `node_command` gives, for a test that names the
/// address itself (`-i` adds up).
fn without_default_address(cmd: Command) -> Command {
    let mut args: Vec<&std::ffi::OsStr> = cmd.get_args().collect();
    let at = args
        .windows(2)
        .position(|w| w[0] == "-i" && w[1] == "127.0.0.1")
        .expect("node_command gives -i 127.0.0.1");
    args.drain(at..at + 2);
    let mut out = Command::new(cmd.get_program());
    out.args(args);
    out
}

/// A client script running in the background: its stdout lines can be
/// waited for while it runs, lines can be written to its stdin, and it can
/// be killed (a client crash).
struct ClientProc {
    child: Child,
    script: String,
    started: Instant,
    timeout: Duration,
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
    out_reader: Option<thread::JoinHandle<()>>,
    err_reader: Option<thread::JoinHandle<Vec<u8>>>,
    stdin: Option<std::process::ChildStdin>,
    _cwd: TempDir,
}

/// The outcome of a `ClientProc`.
struct ProcRun {
    script: String,
    status: Option<ExitStatus>,
    timed_out: bool,
    killed_by_test: bool,
    elapsed: Duration,
    stdout: String,
    stderr: String,
}

fn spawn_client(script: &str, args: &[&str], timeout: Duration) -> ClientProc {
    let (mut child, cwd) = spawn_script(script, args, timeout, |cmd| {
        cmd.stdin(Stdio::piped());
    });
    let stdout = child.stdout.take().expect("stdout pipe");
    let stdin = child.stdin.take();
    let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
    let lines2 = lines.clone();
    let out_reader = thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let (lock, cond) = &*lines2;
            lock.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&line).into_owned());
            cond.notify_all();
        }
    });
    let err_reader = read_in_background(child.stderr.take().expect("stderr pipe"));
    ClientProc {
        child,
        script: script.to_string(),
        started: Instant::now(),
        timeout,
        lines,
        out_reader: Some(out_reader),
        err_reader: Some(err_reader),
        stdin,
        _cwd: cwd,
    }
}

impl ClientProc {
    /// Waits (bounded) for a stdout line starting with `prefix`.
    fn wait_line(&self, prefix: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.lines;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| l.starts_with(prefix)) {
                return Some(l.clone());
            }
            let ended = self.out_reader.as_ref().is_none_or(|h| h.is_finished());
            let now = Instant::now();
            if ended || now >= deadline {
                return None;
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            lines = cond.wait_timeout(lines, wait).unwrap().0;
        }
    }

    /// The client once it has said `INFO phase=<phase>` (within 60 s); otherwise the test
    /// fails with the client's output.
    fn reached(self, node: &LifeNode, phase: &str) -> ClientProc {
        if self
            .wait_line(&format!("INFO phase={phase}"), Duration::from_secs(60))
            .is_none()
        {
            let run = self.finish();
            node.fail(&format!(
                "the client never reached phase={phase}\n{}",
                run.report()
            ));
        }
        self
    }

    /// The value of the first `INFO key=value` line so far.
    fn info(&self, key: &str) -> Option<String> {
        let pfx = format!("INFO {key}=");
        let (lock, _) = &*self.lines;
        let lines = lock.lock().unwrap();
        lines
            .iter()
            .find_map(|l| l.strip_prefix(pfx.as_str()).map(str::to_string))
    }

    fn send_line(&mut self, line: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(format!("{line}\n").as_bytes());
            let _ = stdin.flush();
        }
    }

    /// SIGKILL of the client's whole process group (a crash), then collect.
    fn kill9(self) -> ProcRun {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        self.collect(true)
    }

    /// Waits for the client to exit (hard timeout counted from its start).
    fn finish(self) -> ProcRun {
        self.collect(false)
    }

    fn collect(mut self, killed_by_test: bool) -> ProcRun {
        drop(self.stdin.take());
        let deadline = self.started + self.timeout;
        let mut timed_out = false;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) => {}
                Err(_) => break None,
            }
            if Instant::now() > deadline {
                timed_out = true;
                let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(50));
        };
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        if let Some(h) = self.out_reader.take() {
            let _ = h.join();
        }
        let stderr = self
            .err_reader
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let stdout = {
            let (lock, _) = &*self.lines;
            let mut s = lock.lock().unwrap().join("\n");
            s.push('\n');
            s
        };
        ProcRun {
            script: self.script.clone(),
            status,
            timed_out,
            killed_by_test,
            elapsed: self.started.elapsed(),
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ProcRun {
    /// Same rules as `support::ClientRun::problems`; a client killed by the
    /// test needs no `RESULT ok`.
    fn problems(&self, expected: &[&str]) -> Vec<String> {
        let mut problems = if self.killed_by_test && !self.timed_out {
            Vec::new()
        } else {
            exit_problems(self.timed_out, self.elapsed, self.status, &self.stdout)
        };
        problems.extend(check_problems(&self.stdout, expected));
        problems
    }

    fn report(&self) -> String {
        format!(
            "client {} (status {:?}, {:.1}s)\n--- client stdout\n{}\n--- client stderr\n{}",
            self.script,
            self.status,
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }

    fn assert_checks(&self, node: &LifeNode, expected: &[&str]) {
        let problems = self.problems(expected);
        node.ensure(
            problems.is_empty(),
            &format!(
                "{} problem(s) with client script '{}':\n  - {}\n{}",
                problems.len(),
                self.script,
                problems.join("\n  - "),
                self.report()
            ),
        );
    }
}

/// A live (non-zombie) process.
#[derive(Clone, Debug)]
#[allow(dead_code)]
struct Proc {
    pid: i32,
    ppid: i32,
    cmdline: String,
    cwd: Option<PathBuf>,
}

fn process_table() -> Vec<Proc> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let dir = e.path();
        let Ok(stat) = fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("?");
        if state == "Z" || state == "X" {
            continue;
        }
        let ppid = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let cmdline = fs::read(dir.join("cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        let cwd = fs::read_link(dir.join("cwd")).ok();
        out.push(Proc {
            pid,
            ppid,
            cmdline,
            cwd,
        });
    }
    out
}

/// Live processes whose cmdline contains `needle` or whose cwd is under `dir`.
fn processes_matching(needle: &str, dir: &Path) -> Vec<Proc> {
    let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    process_table()
        .into_iter()
        .filter(|p| {
            p.cmdline.contains(needle)
                || p.cwd
                    .as_ref()
                    .is_some_and(|c| c.starts_with(&canon) || c.starts_with(dir))
        })
        .collect()
}

fn kill_all(procs: &[Proc]) {
    for p in procs {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
}

/// Every regular file below `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A temp dir of a test's own (configuration files, certificates, a state dir).
fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
}

// ===========================================================================
// 1. A result produced while the client is unreachable arrives after it
//    comes back.

const UNREACHABLE_CHECKS: [&str; 6] = [
    "delivery_attempted",
    "not_delivered_while_unreachable",
    "delivered_after_return",
    "status",
    "result",
    "closed",
];

fn unreachable_run(mode: &str, extra_checks: &[&str]) {
    let mut opts = LifeOpts::default();
    if node_impl() == Impl::Reference {
        // its resend timer ticks every zombie_interval/5 (12 min by default)
        opts.extra = vec!["--zombie_interval".into(), "1".into()];
    }
    let mut node = LifeNode::start(&opts);
    let run = node.run("life_unreachable", &[mode]);
    let mut expected: Vec<&str> = UNREACHABLE_CHECKS.to_vec();
    expected.extend_from_slice(extra_checks);
    node.assert_run(&run, &expected);
    node.assert_alive();
}

/// A job finishes while its client cannot be reached (the push of its
/// JOB_REPLY is rejected, then refused); once the client is reachable again
/// the node's resend timer delivers the saved result within 45 s, with no
/// help from the client.
#[test]
fn undelivered_result_resent_by_timer() {
    unreachable_run("timer", &[]);
}

/// Same, but the client submits another job once it is back: after that
/// job's successful reply the node resends the saved one at once (≤ 5 s).
#[test]
fn undelivered_result_resent_after_next_reply() {
    unreachable_run("next_reply", &["second_job"]);
}

/// Same, but the client asks with RESEND_JOB_RESULTS (what a recovering
/// client does): the reply counts it and the node pushes it (≤ 10 s).
#[test]
fn undelivered_result_resent_on_request() {
    unreachable_run("resend", &["resend_reply"]);
}

/// The node can never reach the client (NAT): the real client's
/// `poll_interval` path (PENDING_JOBS, then RETRIEVE_JOB for each uid in
/// `done`) gets the result.
#[test]
fn undelivered_result_polled_by_client() {
    if skip_under_reference("the reference's PENDING_JOBS always answers done=[] (protocol G13)") {
        return;
    }
    let mut node = LifeNode::start(&LifeOpts::default());
    let run = node.run("life_unreachable", &["poll"]);
    node.assert_run(&run, &["polled_result", "status", "result", "closed"]);
    node.assert_alive();
}

// ===========================================================================
// 2. Restarts: SIGKILL (or SIGTERM) after a job finished but before its
//    result was delivered; the restarted node delivers it.

const RESTART_CHECKS: [&str; 7] = [
    "delivery_attempted",
    "result_saved",
    "harness_restarted_node",
    "delivered_after_restart",
    "status",
    "result",
    "closed",
];

/// The client (life_restart.py) makes the result undeliverable and says
/// `phase=saved`; the node is stopped with `sig` and started again on the
/// same port and prefix (and `--state_dir`, when given), then the client
/// becomes reachable and must get the result from the restarted node.
fn restart_delivers(sig: Signal, state_dir: bool) {
    if skip_under_reference(
        "the reference loses saved results across restarts: it wipes its prefix at start, and \
         after kill -9 refuses to start while its config.pkl exists (protocol §4.2, §4.3)",
    ) {
        return;
    }
    let base_tmp = temp_dir("dispynode-life-state-");
    let state = base_tmp.path().join("state");
    let opts = if state_dir {
        LifeOpts::with(&["--state_dir", state.to_str().unwrap()])
    } else {
        LifeOpts::default()
    };
    let mut node = LifeNode::start(&opts);
    let port = node.port().to_string();
    let mut client = spawn_client(
        "life_restart",
        &[&port, "deliver"],
        CLIENT_TIMEOUT + Duration::from_secs(60),
    )
    .reached(&node, "saved");
    if state_dir {
        let files = files_under(&state);
        node.ensure(
            !files.is_empty(),
            &format!(
                "with a result saved, the --state_dir {} holds no file",
                state.display()
            ),
        );
    }
    match sig {
        Signal::SIGKILL => node.kill9(),
        other => {
            node.signal(other);
            let st = node.wait_exit(Duration::from_secs(15));
            node.ensure(
                st.is_some(),
                &format!("the node did not exit within 15 s of {other}"),
            );
        }
    }
    node.restart(&opts);
    client.send_line("restarted");
    let run = client.finish();
    for l in run.stdout.lines().filter(|l| l.starts_with("INFO ")) {
        eprintln!("client: {l}");
    }
    run.assert_checks(&node, &RESTART_CHECKS);
    node.assert_alive();
}

/// `kill -9` after the job finished but before delivery; the node is
/// restarted with the same `--dest_path_prefix` and `--state_dir` and
/// delivers the saved result.
#[test]
fn restart_after_kill9_delivers_saved_result() {
    restart_delivers(Signal::SIGKILL, true);
}

/// The same with a SIGTERM shutdown and the default state dir.
#[test]
fn restart_after_sigterm_delivers_saved_result() {
    restart_delivers(Signal::SIGTERM, false);
}

/// `kill -9` while one job runs (with a `sleep` child) and another's result
/// is saved; the node is restarted with `--clean`: the leftover job
/// processes are killed, the old computation directories removed, and the
/// saved result is not delivered.
#[test]
fn clean_restart_removes_leftovers() {
    if skip_under_reference(
        "after kill -9 the reference without psutil kills recorded pids blindly; not its behaviour under test",
    ) {
        return;
    }
    // the sleep's argument is 100.<digits>; only the digits are on the
    // client's own command line
    let digits = rand_digits();
    let tok = format!("100.{digits}");
    let mut node = LifeNode::start(&LifeOpts::default());
    let port = node.port().to_string();
    let mut client = spawn_client(
        "life_restart",
        &[&port, "clean", &digits],
        CLIENT_TIMEOUT + Duration::from_secs(60),
    )
    .reached(&node, "saved");
    let old_dirs = dir_entries(&node.computations_dir());
    node.ensure(
        !old_dirs.is_empty(),
        &format!(
            "no computation directory in {}",
            node.computations_dir().display()
        ),
    );
    node.kill9();
    let mut opts = LifeOpts::default();
    opts.extra.push("--clean".into());
    node.restart(&opts);
    client.send_line("restarted");
    let run = client.finish();
    let leftovers = processes_matching(&tok, node.prefix());
    kill_all(&leftovers);
    run.assert_checks(
        &node,
        &[
            "long_job_running",
            "delivery_attempted",
            "result_saved",
            "harness_restarted_node",
            "leftovers_killed",
            "saved_result_removed",
            "closed",
        ],
    );
    let still: Vec<&PathBuf> = old_dirs.iter().filter(|d| d.exists()).collect();
    node.ensure(
        still.is_empty(),
        &format!("--clean left the earlier run's computation directories: {still:?}"),
    );
    node.ensure(
        leftovers.is_empty(),
        &format!("processes of the killed node survived the --clean restart: {leftovers:?}"),
    );
    node.assert_alive();
}

fn rand_digits() -> String {
    let t = token();
    let n = u32::from_str_radix(&t, 16).unwrap_or(12345);
    format!("{:08}", n % 100_000_000)
}

// ===========================================================================
// 3. RETRIEVE_JOB / PENDING_JOBS / JOBS.

/// JOBS lists a running job (to its computation's auth only); PENDING_JOBS
/// lists a result the node could not deliver; RETRIEVE_JOB hands it out
/// (status Finished, right result) and keeps it until the client ACKs; after
/// the ACK it is gone for good and not pushed again.
#[test]
fn retrieve_and_pending_jobs() {
    let mut node = LifeNode::start(&LifeOpts::default());
    let mut expected = vec![
        "jobs_lists_running",
        "jobs_raw_uid",
        "jobs_wrong_auth_empty",
        "delivery_attempted",
        "jobs_empty_after_finish",
        "retrieve_wrong_hash_refused",
        "retrieve_reply",
        "retrieve_again_before_ack",
        "retrieve_status",
        "retrieve_result",
        "retrieve_ip_addr",
        "retrieve_again_nothing",
        "closed",
    ];
    let args: &[&str] = if node.imp == Impl::Reference {
        eprintln!(
            "reference node: PENDING_JOBS checks and the job after the ACK left out (it always \
             answers done=[] and forgets the computation after the ACK, protocol G13, G17)"
        );
        &["--reference"]
    } else {
        expected.extend([
            "pending_lists_saved",
            "kept_without_ack",
            "pending_cleared_after_ack",
            "second_job",
            "not_resent_after_ack",
        ]);
        &[]
    };
    let run = node.run("life_retrieve", args);
    node.assert_run(&run, &expected);
    node.assert_alive();
}

/// Two clients, one after the other, whose computations have the same id (dispy takes it
/// from the client's clock) and whose results the node had to save: PENDING_JOBS,
/// RETRIEVE_JOB and RESEND_JOB_RESULTS with one client's auth see only that client's saved
/// result, never the other's (they used to go by the id alone).
#[test]
fn saved_results_of_a_repeated_computation_id_stay_apart() {
    if skip_under_reference("the reference's PENDING_JOBS always answers done=[] (protocol G13)") {
        return;
    }
    let mut node = LifeNode::start(&LifeOpts::default());
    let expected = [
        "both_saved",
        "pending_own_only_a",
        "retrieve_not_other_a",
        "resend_counts_own_a",
        "pending_own_only_b",
        "retrieve_not_other_b",
        "resend_counts_own_b",
        "retrieve_own_a",
        "retrieve_own_b",
    ];
    let run = node.run("life_same_id", &[]);
    node.assert_run(&run, &expected);
    node.assert_alive();
}

// ===========================================================================
// 4. Zombie detection.

/// `--zombie_interval 1`: a client runs a job and is then SIGKILLed without
/// closing.  The node must consider it gone about a minute after the last
/// contact (not much earlier, and within 100 s): its computation directory
/// is removed and a new client, on another port (another scheduler), gets
/// the node and runs jobs.  Meanwhile a peer with the node's secret but not
/// the computation's auth keeps sending requests (life_keeper.py): they must
/// not keep the dead client's computation, and so the node, taken.
#[test]
fn zombie_client_frees_the_node() {
    let mut node = LifeNode::start(&LifeOpts::with(&["--zombie_interval", "1"]));
    let port = node.port().to_string();
    let client = spawn_client("life_zombie", &[&port], Duration::from_secs(200));
    let idle = client.wait_line("INFO phase=idle", Duration::from_secs(60));
    let dest = client.info("dest_dir");
    let t0 = Instant::now();
    let keeper = (|| {
        let (auth, id) = (client.info("node_auth")?, client.info("compute_id")?);
        Some(spawn_client(
            "life_keeper",
            &[&port, &auth, &id],
            Duration::from_secs(200),
        ))
    })();
    let run = client.kill9();
    let keeping = keeper
        .as_ref()
        .and_then(|k| k.wait_line("INFO sent=", Duration::from_secs(20)));
    node.ensure(
        keeping.is_some(),
        "the keeper (life_keeper.py) did not start sending",
    );
    node.ensure(
        idle.is_some(),
        &format!("the first client never became idle\n{}", run.report()),
    );
    run.assert_checks(&node, &["replied"]);
    let dest = PathBuf::from(dest.expect("INFO dest_dir"));
    node.ensure(
        dest.is_dir(),
        &format!(
            "the job's directory {} does not exist while its client lives",
            dest.display()
        ),
    );
    let freed = wait_until(Duration::from_secs(100), || !dest.exists());
    let after = t0.elapsed();
    eprintln!(
        "computation directory removed {:.1} s after the client was killed",
        after.as_secs_f64()
    );
    node.ensure(
        freed,
        &format!(
            "the zombie computation's directory {} still exists {:.0} s after its client was killed",
            dest.display(),
            after.as_secs_f64()
        ),
    );
    node.ensure(
        after >= Duration::from_secs(45),
        &format!(
            "the computation was removed {:.0} s after the client's last contact, before \
             --zombie_interval (1 minute)",
            after.as_secs_f64()
        ),
    );
    if let Some(k) = keeper {
        k.kill9();
    }
    thread::sleep(Duration::from_secs(2));
    let other = free_port().to_string();
    let run = node.run("life_basic", &["--client-port", &other]);
    node.assert_run(&run, &["replied", "results", "closed"]);
    node.assert_alive();
}

// ===========================================================================
// 5. --serve 1

/// `--serve 1`: after its first client closes, the node exits by itself with
/// status 0 within 10 s.
/// `-i` takes a host name, as the original's: `-i localhost` serves 127.0.0.1 (IPv4 first,
/// though /etc/hosts may list ::1 too), where the real client's jobs run.
#[test]
fn host_name_as_address_serves_a_real_client() {
    let node = LifeNode::start(&LifeOpts::with(&["-i", "localhost"]));
    let run = node.run("life_basic", &[]);
    node.assert_run(&run, &["replied", "results", "closed"]);
}

/// A PING without a sign (what dispynetrelay forwards) gets the node's own PING back on the
/// reply port, as from the reference, so that the scheduler behind the relay PINGs the node
/// itself; one with a sign still gets a PONG.
#[test]
fn relayed_ping_gets_the_nodes_ping() {
    let node = LifeNode::start(&LifeOpts::default());
    let run = node.run("life_ping", &["--expect", "relay"]);
    node.assert_run(&run, &["relayed"]);
    let run = node.run("life_ping", &["--expect", "pong"]);
    node.assert_run(&run, &["pong"]);
}

/// `--scheduler_node NAME` (4.15.2's `dispynode.py` spells it `--scheduler_host`): at start the
/// node resolves the name and announces itself to that scheduler directly, over TCP as well
/// as the UDP broadcast, so a scheduler on another network learns of it.
#[test]
fn scheduler_node_by_name_gets_the_start_announcement() {
    // The scheduler listens on the node's scheduler port, P-1 (the reference derives its node
    // port from that one, so it cannot be set apart).
    let port = free_port_pair();
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", port - 1)).expect("bind the scheduler");
    listener.set_nonblocking(true).expect("nonblocking");
    let name = match node_impl() {
        Impl::Ours => "--scheduler_node",
        Impl::Reference => "--scheduler_host",
    };
    let node = LifeNode::start_on(port, &LifeOpts::with(&[name, "localhost"]));
    let mut conn = None;
    wait_until(Duration::from_secs(10), || {
        conn = listener.accept().ok().map(|(s, _)| s);
        conn.is_some()
    });
    node.ensure(
        conn.is_some(),
        "no TCP announcement reached --scheduler_node localhost within 10 s",
    );
    let mut conn = conn.unwrap();
    conn.set_nonblocking(false).expect("blocking");
    conn.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got);
    node.ensure(
        got.windows(5).any(|w| w == b"PING:"),
        &format!(
            "the scheduler got no PING: {:?}",
            String::from_utf8_lossy(&got)
        ),
    );
}

#[test]
fn serve_one_exits_after_first_client() {
    let mut node = LifeNode::start(&LifeOpts::with(&["--serve", "1"]));
    let run = node.run("life_basic", &[]);
    node.assert_run(&run, &["replied", "results", "closed"]);
    let status = node.wait_exit(Duration::from_secs(10));
    node.ensure(
        status.is_some(),
        "with --serve 1 the node still runs 10 s after its client closed",
    );
    let status = status.unwrap();
    node.ensure(
        status.success(),
        &format!("with --serve 1 the node exited with {status}, want 0"),
    );
}

// ===========================================================================
// 6. Service window.

/// Local time of day (hours, minutes, seconds).
fn local_time() -> (u32, u32, u32) {
    let out = Command::new("date")
        .arg("+%H %M %S")
        .output()
        .expect("run date");
    let s = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u32> = s
        .split_whitespace()
        .map(|x| x.trim_start_matches('0').parse().unwrap_or(0))
        .collect();
    (v[0], v[1], v[2])
}

fn hhmm(minute_of_day: u32) -> String {
    let m = minute_of_day % 1440;
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// `--service_start now+1min --service_end now+3min`: before the start minute a PING gets
/// no PONG (a client that took one would only be refused), a client started right away gets
/// no node within 12 s and nothing runs; a client that starts before the window opens and
/// waits gets the node once it opens (the node announces itself then, here to
/// `--scheduler_node`, the client's port) and runs its jobs.
#[test]
fn service_window_refuses_then_accepts() {
    // the refused client (about 17 s: start-up, --wait 12, close) must be done before the
    // window opens: at least 40 s of the minute are left for it, twice that on a slow machine
    let (_, _, s) = local_time();
    if s > 20 {
        thread::sleep(Duration::from_secs(u64::from(61 - s)));
    }
    let (h, m, s) = local_time();
    let now = h * 60 + m;
    let start = hhmm(now + 1);
    let end = hhmm(now + 3);
    let scheduler = match node_impl() {
        Impl::Ours => "--scheduler_node",
        Impl::Reference => "--scheduler_host",
    };
    let mut node = LifeNode::start(&LifeOpts::with(&[
        "--service_start",
        &start,
        "--service_end",
        &end,
        scheduler,
        "127.0.0.1",
    ]));
    eprintln!("local time {h:02}:{m:02}:{s:02}, service window {start}-{end}");
    let run = node.run("life_ping", &["--expect", "none"]);
    node.assert_run(&run, &["no_pong"]);
    let run = node.run("life_basic", &["--expect", "none", "--wait", "12"]);
    node.assert_run(&run, &["no_reply", "not_run", "no_node"]);
    let port = node.port().to_string();
    let waiting = spawn_client("life_basic", &[&port], Duration::from_secs(150));
    let (h2, m2, _) = local_time();
    node.ensure(
        h2 * 60 + m2 == now,
        "the refused client ran past the start of the window: the check is void (slow machine?)",
    );
    let run = waiting.finish();
    run.assert_checks(&node, &["replied", "results", "closed"]);
    let (h3, m3, _) = local_time();
    node.ensure(
        h3 * 60 + m3 > now,
        "the waiting client ran its jobs before the window opened",
    );
    let run = node.run("life_ping", &["--expect", "pong"]);
    node.assert_run(&run, &["pong"]);
    node.assert_alive();
}

// ===========================================================================
// 7. TLS

fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("c.pem");
    let key = dir.join("k.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=dispy",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (Debian: apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// `--certfile/--keyfile` with a self-signed certificate; the real client
/// (Python 3.11: pycos uses the deprecated `ssl.wrap_socket`) with the same
/// files runs jobs whose provisional results and `dispy_send_file` go over
/// TLS from the node to the client.
#[test]
fn tls_with_self_signed_certificate() {
    let certs = temp_dir("dispynode-life-tls-");
    let (cert, key) = make_cert(certs.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut node = LifeNode::start(&LifeOpts::with(&["--certfile", cert, "--keyfile", key]));
    let run = node.run("life_tls", &[cert, key]);
    node.assert_run(
        &run,
        &["replied", "statuses", "results", "files_received", "closed"],
    );
    // a plain-TCP client gets nothing from a TLS node
    let run = node.run("life_basic", &["--expect", "none", "--wait", "8"]);
    node.assert_run(&run, &["no_reply", "not_run", "no_node"]);
    node.assert_alive();
}

// ===========================================================================
// 8. SharedJobCluster through the stock dispyscheduler.

struct Scheduler {
    child: Child,
    log: PathBuf,
}

impl Scheduler {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        stop_child(&mut self.child, Signal::SIGINT);
    }
}

/// Our node on P (announcing to P-1); dispyscheduler with `-p P-1 -n
/// 127.0.0.1` (it listens for nodes on P-1, pings nodes on P, serves
/// SharedJobCluster clients on P+1) and `--pulse_interval 1` (it drops a
/// busy node after 5 s without PULSE: one job runs longer); a
/// SharedJobCluster client on its own port runs jobs with correct results.
#[test]
fn shared_job_cluster_through_dispyscheduler() {
    let port = loop {
        let p = free_port_pair();
        if port_is_free(p + 1) {
            break p;
        }
    };
    let mut node = LifeNode::start_on(port, &LifeOpts::default());
    let sched_prefix = node.base().join("sched");
    fs::create_dir_all(&sched_prefix).unwrap();
    let log = node.base().join("scheduler.log");
    let logf = File::create(&log).unwrap();
    let child = Command::new(python())
        .arg(venv_dir().join("bin").join("dispyscheduler.py"))
        .args(["-i", "127.0.0.1", "-n", "127.0.0.1"])
        .args(["-p", &(port - 1).to_string()])
        .args(["--pulse_interval", "1", "--daemon", "-d"])
        .arg("--dest_path_prefix")
        .arg(&sched_prefix)
        .current_dir(node.base())
        .stdin(Stdio::null())
        .stdout(Stdio::from(logf.try_clone().unwrap()))
        .stderr(Stdio::from(logf))
        .env("PYTHONUNBUFFERED", "1")
        .process_group(0)
        .spawn()
        .expect("start dispyscheduler");
    let sched = Scheduler { child, log };
    let up = wait_until(Duration::from_secs(30), || {
        TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port + 1)),
            Duration::from_millis(300),
        )
        .is_ok()
    });
    node.ensure(
        up,
        &format!(
            "dispyscheduler not serving on {}\n--- scheduler log\n{}",
            port + 1,
            sched.log()
        ),
    );
    // let the scheduler discover the node before the client comes
    thread::sleep(Duration::from_secs(2));
    let client_port = free_port().to_string();
    let run = node.run("life_shared", &[&client_port]);
    let problems = run.problems(&[
        "replied", "statuses", "results", "stdout", "ip_addr", "closed",
    ]);
    node.ensure(
        problems.is_empty(),
        &format!(
            "{} problem(s) with the SharedJobCluster client:\n  - {}\n{}\n--- scheduler log\n{}",
            problems.len(),
            problems.join("\n  - "),
            run.report(),
            sched.log()
        ),
    );
    node.assert_alive();
}

// ===========================================================================
// 10. SIGTERM mid-job.

/// SIGTERM while a function job (with a `sleep` child) and a program job
/// (with a background `sleep`) run: the node exits within 10 s, the client
/// sees both jobs end (Terminated, or Abandoned after TERMINATED) and drops
/// the node, and no process the node started is left (descendants recorded
/// before the signal, the uniquely named sleeps, anything whose cwd is under
/// the node's prefix).
#[test]
fn sigterm_mid_job_leaves_no_process() {
    if skip_under_reference(
        "the reference signals only the job's direct child: a program's background sleep survives (protocol §3.4)",
    ) {
        return;
    }
    let tok = rand_digits();
    let mut node = LifeNode::start(&LifeOpts::default());
    let pid = node.pid().to_string();
    let prefix = node.prefix().to_str().unwrap().to_string();
    let run = node.run("life_sigterm", &[&pid, &tok, &prefix]);
    let status = node.wait_exit(Duration::from_secs(5));
    let survivors = processes_matching(&format!("100.{tok}"), node.base());
    kill_all(&survivors);
    node.assert_run(
        &run,
        &[
            "jobs_running",
            "node_exited",
            "jobs_ended",
            "node_dropped_by_client",
            "no_process_left",
        ],
    );
    node.ensure(status.is_some(), "the node still runs after SIGTERM");
    node.ensure(
        survivors.is_empty(),
        &format!("processes left after the node's SIGTERM exit: {survivors:?}"),
    );
    eprintln!(
        "node exit status after SIGTERM: {status:?} after {:?} s; the client saw the jobs {:?}",
        run.info("node_exit_seconds"),
        run.info("job_statuses")
    );
}

// ===========================================================================
// 11. --secret_file

/// The secret read from a file (with its trailing newline), given as
/// `--secret_file` and as `secret_file` in the configuration file; a secret file
/// that every user can read is named in a warning.
#[test]
fn secret_file_option_and_config_key() {
    if skip_under_reference("the reference has no secret_file option") {
        return;
    }
    let dir = temp_dir("dispynode-life-secret-");
    let secret = dir.path().join("secret");
    fs::write(&secret, "f1le-s3cret\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let mut node = LifeNode::start(&LifeOpts::with(&[
        "--secret_file",
        secret.to_str().unwrap(),
    ]));
    let run = node.run("life_basic", &["--secret", "f1le-s3cret"]);
    node.assert_run(&run, &["replied", "results", "closed"]);
    let run = node.run(
        "life_basic",
        &["--secret", "", "--expect", "none", "--wait", "8"],
    );
    node.assert_run(&run, &["no_reply", "not_run", "no_node"]);
    node.assert_alive();
    let exposed = "is readable by every user of this host";
    node.ensure(
        !node.log().contains(exposed),
        "no warning about a secret file that only its owner can read",
    );
    drop(node);

    // Readable by all: the node still starts, and says so.
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
    let conf = dir.path().join("node.toml");
    fs::write(
        &conf,
        format!("secret_file = \"{}\"\n", secret.to_str().unwrap()),
    )
    .unwrap();
    let mut node = LifeNode::start(&LifeOpts::with(&["--config", conf.to_str().unwrap()]));
    let run = node.run("life_basic", &["--secret", "f1le-s3cret"]);
    node.assert_run(&run, &["replied", "results", "closed"]);
    node.assert_alive();
    let warning = format!("the secret file {} {exposed} (mode 0644)", secret.display());
    node.ensure(
        node.log().contains(&warning),
        &format!("the log warns: {warning}"),
    );
}

// ===========================================================================
// 12. --save_config / --config, bad values.

/// Runs the binary without a client (bounded): (status, stdout, stderr).
fn run_binary(args: &[&str], cwd: &Path) -> (Option<ExitStatus>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dispynode"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run dispynode");
    let ro = read_in_background(child.stdout.take().unwrap());
    let re = read_in_background(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let text = |h: thread::JoinHandle<Vec<u8>>| {
        String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned()
    };
    (status, text(ro), text(re))
}

/// Whether the TOML text sets `key` to exactly `value`.
fn toml_sets(text: &str, key: &str, value: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim();
        l.split_once('=')
            .is_some_and(|(k, v)| k.trim() == key && v.trim() == value)
    })
}

/// `--save_config FILE` writes what was given; `--config FILE` starts a node
/// with it (a client sees the 1 CPU it says); `--save_config` without FILE
/// prints it.  Paths derived from the prefix are not pinned by the file: a
/// node loading it with another `--dest_path_prefix` keeps its state under
/// that prefix.
#[test]
fn save_config_round_trip() {
    if skip_under_reference("the reference's configuration file is INI, not TOML") {
        return;
    }
    let dir = temp_dir("dispynode-life-conf-");
    let conf = dir.path().join("out.toml");
    let conf_s = conf.to_str().unwrap();
    let (st, _, err) = run_binary(
        &[
            "--cpus",
            "1",
            "--zombie_interval",
            "10",
            "--save_config",
            conf_s,
        ],
        dir.path(),
    );
    assert!(
        st.is_some_and(|s| s.success()),
        "--save_config FILE: status {st:?}, stderr {err}"
    );
    let text = fs::read_to_string(&conf).expect("the saved configuration file");
    assert!(
        toml_sets(&text, "cpus", "1") && toml_sets(&text, "zombie_interval", "10"),
        "the saved configuration lacks cpus = 1 / zombie_interval = 10:\n{text}"
    );
    {
        // Without a secret in it, the file is as the umask makes it (the packaged service
        // reads its root-owned configuration as its own user); with one, only its owner may
        // read it, also when it existed before, readable by all.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(
            mode(&conf) & 0o044,
            0o044,
            "a configuration without the secret was saved private"
        );
        let with_secret = dir.path().join("with-secret.toml");
        fs::write(&with_secret, "old\n").expect("write");
        fs::set_permissions(&with_secret, fs::Permissions::from_mode(0o644)).expect("chmod");
        let (st, _, err) = run_binary(
            &[
                "--secret",
                "s3cret",
                "--save_config",
                with_secret.to_str().unwrap(),
            ],
            dir.path(),
        );
        let text = fs::read_to_string(&with_secret).expect("the saved configuration file");
        assert!(
            st.is_some_and(|s| s.success())
                && toml_sets(&text, "secret", "\"s3cret\"")
                && mode(&with_secret) == 0o600
                && err.contains("0600"),
            "--secret with --save_config FILE: status {st:?}, mode {:o} (want 600), \
             stderr {err}:\n{text}",
            mode(&with_secret)
        );
    }
    let (st, out, err) = run_binary(&["--cpus", "1", "--save_config"], dir.path());
    assert!(
        st.is_some_and(|s| s.success()) && toml_sets(&out, "cpus", "1"),
        "--save_config without FILE: status {st:?}, stdout {out}, stderr {err}"
    );
    // loaded with another prefix, the state dir follows that prefix
    let other = dir.path().join("other-prefix");
    let (st, out, err) = run_binary(
        &[
            "--config",
            conf_s,
            "--dest_path_prefix",
            other.to_str().unwrap(),
            "--save_config",
        ],
        dir.path(),
    );
    let want_state = format!("\"{}\"", other.join(".dispynode").display());
    assert!(
        st.is_some_and(|s| s.success())
            && (toml_sets(&out, "state_dir", &want_state)
                || !out.lines().any(|l| l.trim_start().starts_with("state_dir"))),
        "a configuration saved without --state_dir pins the state dir of the prefix it was saved \
         with: loaded with --dest_path_prefix {}, the effective state_dir is not {want_state} \
         (status {st:?}):\n{out}\n{err}",
        other.display()
    );
    // and a node started from the file alone serves 1 CPU
    let mut node = LifeNode::start(&LifeOpts {
        cpus: None,
        extra: vec!["--config".into(), conf_s.into()],
    });
    let run = node.run("life_basic", &["--cpus", "1"]);
    node.assert_run(&run, &["replied", "results", "node_cpus", "closed"]);
    node.assert_alive();
}

/// Started as root, the node gives its prefix and state directory to the account it drops
/// to. An existing directory of another owner is taken only when it is empty and not shared:
/// `--dest_path_prefix /tmp` (sticky, world-writable) or a directory full of someone else's
/// files is refused, untouched; a regular file is not a directory.
#[test]
fn a_shared_or_full_directory_is_not_taken_over() {
    if skip_under_reference("the reference does not drop privileges") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root (the take-over happens only when started as root)");
        return;
    }
    let dir = temp_dir("dispynode-life-takeover-");
    let base = dir.path();
    let port = free_port_pair().to_string();
    let common = ["-i", "127.0.0.1", "--node_port", port.as_str()];
    let shared = base.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let full = base.join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("someone-elses"), "x").unwrap();
    let file = base.join("a-file");
    fs::write(&file, "x").unwrap();
    let stat = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(p).expect("stat");
        (m.uid(), m.mode() & 0o7777)
    };
    let before = (stat(&shared), stat(&full));
    let cases: [(&str, &Path, &str); 3] = [
        (
            "dest_path_prefix",
            &shared,
            "is shared (world-writable or sticky)",
        ),
        ("state_dir", &full, "is not empty"),
        ("state_dir", &file, "is not a directory"),
    ];
    let own = base.join("own");
    for (option, path, why) in cases {
        let flag = format!("--{option}");
        let mut args = common.to_vec();
        args.extend([flag.as_str(), path.to_str().unwrap()]);
        if option == "state_dir" {
            args.extend(["--dest_path_prefix", own.to_str().unwrap()]);
        }
        let (st, _, err) = run_binary(&args, base);
        // Status 2: the directory must change before a start can work, so the packaged unit
        // does not retry it (RestartPreventExitStatus=2).
        assert!(
            st.and_then(|s| s.code()) == Some(2)
                && err.contains(&format!("--{option} {}", path.display()))
                && err.contains(why),
            "--{option} {} ({why}) was not refused with status 2: status {st:?}, stderr {err}",
            path.display()
        );
    }
    assert_eq!(
        (stat(&shared), stat(&full)),
        before,
        "a refused directory's owner or mode changed"
    );
}

/// Bad values exit with status 2 and a message naming the option, without
/// starting: 0 or too many CPUs, a negative count that leaves none, a bad
/// size suffix, a bad time, a negative zombie interval, an unknown key and a
/// bad value in the configuration file.
#[test]
fn bad_option_values_are_refused() {
    if skip_under_reference("the reference accepts most of these silently") {
        return;
    }
    let dir = temp_dir("dispynode-life-bad-");
    let ncpus = [
        thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
            .ok()
            .flatten()
            .unwrap_or(1) as usize,
    ]
    .into_iter()
    .max()
    .unwrap();
    let too_many = (ncpus + 1).max(999).to_string();
    let none_left = format!("-{ncpus}");
    let unknown = dir.path().join("unknown.toml");
    fs::write(&unknown, "cpus = 1\nno_such_option = 3\n").unwrap();
    let bad_cpus = dir.path().join("badcpus.toml");
    fs::write(&bad_cpus, "cpus = 0\n").unwrap();
    let prefix = dir.path().join("prefix");
    let port = free_port().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--cpus", "0"], "cpus"),
        (vec!["--cpus", &too_many], "cpus"),
        (vec!["-c", &none_left], "cpus"),
        (vec!["-c", "-64"], "cpus"),
        (vec!["--max_file_size", "10x"], "max_file_size"),
        (vec!["--service_start", "25:00"], "service_start"),
        (vec!["--service_end", "12:60"], "service_end"),
        (vec!["--zombie_interval=-1"], "zombie_interval"),
        (
            vec!["--config", unknown.to_str().unwrap()],
            "no_such_option",
        ),
        (vec!["--config", bad_cpus.to_str().unwrap()], "cpus"),
    ];
    let mut failures = Vec::new();
    for (bad, name) in &cases {
        if *bad == ["-c", "-64"] && ncpus > 64 {
            continue;
        }
        let mut args = vec!["-i", "127.0.0.1", "--node_port", &port];
        args.extend(["--dest_path_prefix", prefix.to_str().unwrap()]);
        args.extend(bad.iter().copied());
        let (st, out, err) = run_binary(&args, dir.path());
        let text = format!("{out}{err}");
        let named = text.contains(name) || text.contains(&name.replace('_', "-"));
        if st.and_then(|s| s.code()) != Some(2) || !named {
            failures.push(format!(
                "{bad:?}: status {st:?} (want exit 2), message naming {name:?}: {named}\n    {}",
                text.trim().replace('\n', "\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "bad values not refused properly:\n{}",
        failures.join("\n")
    );
    // A host name that does not resolve (the .invalid domain never does) may resolve later,
    // when DNS is up: not a bad value, and the unit retries status 75.
    let (st, out, err) = run_binary(
        &["-i", "no-such-host.invalid", "--node_port", &port],
        dir.path(),
    );
    let text = format!("{out}{err}");
    assert_eq!(st.and_then(|s| s.code()), Some(75), "{text}");
    assert!(
        text.contains("cannot resolve --ip_addr `no-such-host.invalid`"),
        "{text}"
    );
}

// ===========================================================================
// 13. --msg_timeout

/// Opens a connection to the node, sends `first`, then (if `trickle`) one
/// more byte every 0.5 s; returns how long the node took to close it (None:
/// still open after `limit`).
fn time_until_dropped(port: u16, first: &[u8], trickle: bool, limit: Duration) -> Option<Duration> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    let t0 = Instant::now();
    let _ = s.write_all(first);
    let deadline = t0 + limit;
    s.set_read_timeout(Some(Duration::from_millis(if trickle { 500 } else { 200 })))
        .ok()?;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return Some(t0.elapsed()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                if trickle && s.write_all(b"x").is_err() {
                    return Some(t0.elapsed());
                }
            }
            Err(_) => return Some(t0.elapsed()),
        }
    }
    None
}

/// `--msg_timeout 2`: silent peers (nothing sent; only the 40-byte prefix;
/// the prefix and half a length header) are dropped within 5 s, and a peer
/// that trickles a message (1 byte / 0.5 s of a 100-byte frame) within
/// 10 s; meanwhile a normal client runs its jobs.
#[test]
fn msg_timeout_drops_silent_peers() {
    if skip_under_reference(
        "the reference's msg_timeout only bounds its outgoing connections (protocol §4.5)",
    ) {
        return;
    }
    let mut node = LifeNode::start(&LifeOpts::with(&["--msg_timeout", "2"]));
    let port = node.port();
    let mut header = vec![b'x'; 40];
    header.extend_from_slice(&100u32.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, bool, Duration)> = vec![
        ("nothing sent", Vec::new(), false, Duration::from_secs(5)),
        ("prefix only", vec![b'x'; 40], false, Duration::from_secs(5)),
        (
            "prefix and 2 header bytes",
            [vec![b'x'; 40], vec![0, 0]].concat(),
            false,
            Duration::from_secs(5),
        ),
        ("trickled frame", header, true, Duration::from_secs(10)),
    ];
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(what, first, trickle, limit)| {
            thread::spawn(move || {
                (
                    what,
                    limit,
                    time_until_dropped(port, &first, trickle, limit),
                )
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let run = node.run("life_basic", &["--jobs", "4"]);
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    node.assert_run(&run, &["replied", "results", "closed"]);
    let slow: Vec<String> = results
        .iter()
        .filter(|(_, _, t)| t.is_none())
        .map(|(what, limit, _)| format!("{what}: still open after {limit:?}"))
        .collect();
    for (what, _, t) in &results {
        eprintln!("{what}: dropped after {t:?}");
    }
    node.ensure(
        slow.is_empty(),
        &format!("with --msg_timeout 2 the node kept silent peers: {slow:?}"),
    );
    node.assert_alive();
}

/// `--msg_timeout 2` on the node's own connections: the client's result port
/// accepts and then stalls (reads nothing, answers nothing).  The node gives
/// up on each delivery within 6 s (waiting for the ACK of a small reply;
/// writing a 2 MB reply into a full buffer), keeps both results, and
/// delivers them once the client is reachable again.
#[test]
fn stalled_client_is_dropped_and_results_kept() {
    let mut opts = LifeOpts::with(&["--msg_timeout", "2"]);
    if node_impl() == Impl::Reference {
        // its resend timer ticks every zombie_interval/5 (12 min by default)
        opts.extra.extend(["--zombie_interval".into(), "1".into()]);
    }
    let mut node = LifeNode::start(&opts);
    let run = node.run("life_stall", &[]);
    node.assert_run(
        &run,
        &[
            "deliveries_attempted",
            "stalled_deliveries_dropped",
            "not_delivered_while_stalled",
            "delivered_after_return",
            "small_result",
            "big_result",
            "closed",
        ],
    );
    node.assert_alive();
}

// ===========================================================================
// SIGINT (issue 3, item 5).

/// SIGINT while a computation is active: the node keeps serving it (the
/// running job's result arrives, the node still runs while the computation
/// is open) and exits with status 0 within 10 s once the client closes.
#[test]
fn sigint_waits_for_the_computation_to_close() {
    let mut node = LifeNode::start(&LifeOpts::default());
    let port = node.port().to_string();
    let mut client = spawn_client("life_sigint", &[&port, "wait"], CLIENT_TIMEOUT);
    if client
        .wait_line("INFO phase=running", Duration::from_secs(60))
        .is_some()
    {
        node.signal(Signal::SIGINT);
        thread::sleep(Duration::from_secs(1));
        let early = node.wait_exit(Duration::from_millis(10));
        client.send_line("signalled");
        node.ensure(
            early.is_none(),
            &format!("after SIGINT with a computation active the node exited at once ({early:?})"),
        );
        if client
            .wait_line("INFO phase=jobs_done", Duration::from_secs(40))
            .is_some()
        {
            thread::sleep(Duration::from_secs(2));
            let early = node.wait_exit(Duration::from_millis(10));
            node.ensure(
                early.is_none(),
                &format!("the node exited ({early:?}) before its client closed the computation"),
            );
            client.send_line("close");
        }
    }
    let run = client.finish();
    run.assert_checks(
        &node,
        &[
            "job_running",
            "harness_signalled",
            "job_finished_after_sigint",
            "result",
            "harness_says_close",
            "closed",
        ],
    );
    let status = node.wait_exit(Duration::from_secs(10));
    node.ensure(
        status.is_some(),
        "after SIGINT the node still runs 10 s after its client closed",
    );
    let status = status.unwrap();
    node.ensure(
        status.success(),
        &format!("after SIGINT and the close, the node exited with {status}, want 0"),
    );
}

/// A second SIGINT exits at once: the node is gone within 10 s, the client
/// sees its job end, and no process of the job is left.
#[test]
fn second_sigint_exits() {
    let digits = rand_digits();
    let tok = format!("100.{digits}");
    let mut node = LifeNode::start(&LifeOpts::default());
    let port = node.port().to_string();
    let mut client = spawn_client("life_sigint", &[&port, "twice", &digits], CLIENT_TIMEOUT);
    let mut status = None;
    if client
        .wait_line("INFO phase=running", Duration::from_secs(60))
        .is_some()
    {
        node.signal(Signal::SIGINT);
        thread::sleep(Duration::from_secs(1));
        node.signal(Signal::SIGINT);
        status = node.wait_exit(Duration::from_secs(10));
        client.send_line("signalled");
    }
    let run = client.finish();
    let survivors = wait_until(Duration::from_secs(5), || {
        processes_matching(&tok, node.prefix()).is_empty()
    });
    let left = processes_matching(&tok, node.prefix());
    kill_all(&left);
    run.assert_checks(&node, &["job_running", "harness_signalled", "job_ended"]);
    node.ensure(
        status.is_some(),
        "the node still runs 10 s after a second SIGINT",
    );
    if node.imp == Impl::Reference {
        eprintln!(
            "reference node: not checking the job's own child (the reference signals only the \
             job's direct child, protocol §3.4): {left:?}"
        );
        return;
    }
    node.ensure(
        survivors,
        &format!("processes left after the node's exit: {left:?}"),
    );
}
