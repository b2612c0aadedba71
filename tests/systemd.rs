//! systemd integration, checked without systemd as PID 1 (CI runs in a container):
//!
//! * the shipped units (`systemd/`) pass `systemd-analyze verify`, and the service's exposure
//!   (`systemd-analyze security --offline=true`) is at most [`MAX_EXPOSURE`];
//! * the sysusers.d file creates the account, and the sample configuration parses and mentions
//!   every option;
//! * the daemon serves a real dispy client job on sockets passed by `systemd-socket-activate`,
//!   and refuses a datagram-only activation with a clear message;
//! * the daemon speaks `sd_notify` to a socket the test binds: READY=1 only once its TCP port
//!   accepts, WATCHDOG=1 at half of WATCHDOG_USEC, STATUS= lines, RELOADING=1/READY=1 on
//!   SIGHUP (one reload at a time), STOPPING=1 on SIGTERM;
//! * with stderr connected to "the journal" (`$JOURNAL_STREAM`), log records go to journald's
//!   socket with plain upper-case fields (COMPUTATION=, JOB=, ...); the test stands in for
//!   journald in a private mount namespace.
//!
//! Needs `systemd` (systemd-analyze, systemd-socket-activate, systemd-sysusers) and util-linux
//! (`unshare`); the tests fail with a hint when a tool is missing rather than pass silently.

mod support;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// CI gate on `systemd-analyze security`: ~1.5 is the floor for a network daemon that manages
/// cgroups (docs/hardening.md §1.6); above 2.0 means a directive was lost.
const MAX_EXPOSURE: f64 = 2.0;

const BIN: &str = env!("CARGO_BIN_EXE_dispynode");

fn units_dir() -> PathBuf {
    support::repo_root().join("systemd")
}

/// Panics with the package to install when `tool` is not on PATH.
fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed; install it with `apt-get install -y {package}`"
    );
}

fn output(cmd: &mut Command) -> (ExitStatus, String, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The units, copied into a temp dir with `ExecStart=` pointing at the built binary (verify
/// fails when the ExecStart binary does not exist).
fn units_for_analysis() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("dispynode-units-")
        .tempdir()
        .expect("temp dir");
    let service = fs::read_to_string(units_dir().join("dispynode.service")).expect("read unit");
    assert!(
        service.contains("ExecStart=/usr/bin/dispynode --config /etc/dispynode/dispynode.toml\n"),
        "dispynode.service must start /usr/bin/dispynode with the packaged configuration"
    );
    let service = service.replace("ExecStart=/usr/bin/dispynode", &format!("ExecStart={BIN}"));
    fs::write(dir.path().join("dispynode.service"), service).expect("write unit");
    fs::copy(
        units_dir().join("dispynode.socket"),
        dir.path().join("dispynode.socket"),
    )
    .expect("copy socket unit");
    dir
}

// ---------------------------------------------------------------------------------------------
// The unit files

#[test]
fn units_pass_systemd_analyze_verify() {
    require("systemd-analyze", "systemd");
    let dir = units_for_analysis();
    let (status, out, err) = output(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(dir.path().join("dispynode.socket"))
            .arg(dir.path().join("dispynode.service"))
            .current_dir(dir.path()),
    );
    // verify exits 0 even for unknown keys or invalid values ("..., ignoring"); every line it
    // prints about our files is a mistake in them.
    let ours: Vec<&str> = out
        .lines()
        .chain(err.lines())
        .filter(|l| l.contains("dispynode"))
        .collect();
    assert!(
        status.success() && ours.is_empty(),
        "systemd-analyze verify ({status}):\n{}\n--- stdout\n{out}\n--- stderr\n{err}",
        ours.join("\n")
    );
    if !out.trim().is_empty() || !err.trim().is_empty() {
        eprintln!("systemd-analyze verify, about other units:\n{out}{err}");
    }
}

#[test]
fn service_exposure_is_at_most_the_gate() {
    require("systemd-analyze", "systemd");
    let dir = units_for_analysis();
    let (status, out, err) = output(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(dir.path().join("dispynode.service"))
            .current_dir(dir.path()),
    );
    assert!(
        status.success(),
        "systemd-analyze security failed ({status}):\n{out}\n{err}"
    );
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("dispynode")).collect();
    assert!(
        warnings.is_empty(),
        "systemd-analyze security warns about the unit:\n{}",
        warnings.join("\n")
    );
    let marker = "Overall exposure level for dispynode.service:";
    let line = out
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no exposure line in:\n{out}"));
    let value: f64 = line
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure from {line:?}"));
    // Written to the real stderr, past libtest's capture of print!/eprint!, so that CI logs
    // show the score of every run, not only of failing ones.
    let _ = writeln!(
        std::io::stderr(),
        "dispynode.service exposure: {value} (gate {MAX_EXPOSURE})"
    );
    assert!(
        value <= MAX_EXPOSURE,
        "exposure {value} > {MAX_EXPOSURE}; the analysis:\n{out}"
    );
}

#[test]
fn service_keeps_what_jobs_and_the_sandbox_need() {
    let unit = fs::read_to_string(units_dir().join("dispynode.service")).expect("read unit");
    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    let has = |s: &str| settings.contains(&s);
    for needed in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "ExecReload=kill -HUP $MAINPID",
        "User=dispynode",
        "Group=dispynode",
        "StateDirectory=dispynode",
        "ConfigurationDirectory=dispynode",
        "Delegate=yes",
        "KillMode=control-group",
        "LoadCredential=dispynode-secret:/etc/dispynode/secret",
    ] {
        assert!(has(needed), "dispynode.service lacks {needed}");
    }
    // The job sandbox applies Landlock: its three system calls must stay allowed.
    let filter = settings
        .iter()
        .find(|l| l.starts_with("SystemCallFilter=@system-service"))
        .expect("an allow-list SystemCallFilter=");
    for call in [
        "landlock_create_ruleset",
        "landlock_add_rule",
        "landlock_restrict_self",
    ] {
        assert!(filter.contains(call), "SystemCallFilter lacks {call}");
    }
    // The daemon writes its delegated cgroup subtree: /sys/fs/cgroup must stay writable.
    assert!(
        !settings
            .iter()
            .any(|l| l.starts_with("ProtectControlGroups=")
                && !l.ends_with("=no")
                && !l.ends_with("=private")),
        "ProtectControlGroups= would make the delegated cgroups read-only"
    );
    // The packaged configuration keeps job files under the state directory.
    let toml = fs::read_to_string(units_dir().join("dispynode.toml")).expect("read config");
    assert!(toml.contains("\ndest_path_prefix = \"/var/lib/dispynode/"));
}

#[test]
fn socket_unit_listens_on_tcp_and_udp_on_one_port() {
    let unit = fs::read_to_string(units_dir().join("dispynode.socket")).expect("read unit");
    let value = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.trim().strip_prefix(key))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(value("ListenStream="), ["51348"]);
    assert_eq!(value("ListenDatagram="), ["51348"]);
    assert_eq!(value("BindIPv6Only="), ["both"]);
    assert_eq!(value("ReusePort="), ["yes"]);
}

#[test]
fn sysusers_file_creates_the_account() {
    require("systemd-sysusers", "systemd");
    let root = tempfile::tempdir().expect("temp dir");
    fs::create_dir(root.path().join("etc")).expect("mkdir etc");
    let (status, out, err) = output(
        Command::new("systemd-sysusers")
            .arg(format!("--root={}", root.path().display()))
            .arg(units_dir().join("dispynode.sysusers")),
    );
    assert!(status.success(), "systemd-sysusers: {status}\n{out}\n{err}");
    let passwd = fs::read_to_string(root.path().join("etc/passwd")).expect("passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("dispynode:"))
        .unwrap_or_else(|| panic!("no dispynode user in:\n{passwd}"));
    let fields: Vec<&str> = line.split(':').collect();
    assert_eq!(fields[5], "/var/lib/dispynode", "{line}");
    assert!(fields[6].ends_with("nologin"), "{line}");
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid < 1000, "not a system uid: {line}");
    let group = fs::read_to_string(root.path().join("etc/group")).expect("group");
    assert!(
        group.lines().any(|l| l.starts_with("dispynode:")),
        "{group}"
    );
}

/// The long options of `dispynode --help`, without the ones that are not configuration.
fn long_options() -> Vec<String> {
    let (status, out, err) = output(Command::new(BIN).arg("--help"));
    assert!(status.success(), "{BIN} --help: {status}\n{err}");
    // Option lines look like "  -c, --cpus <N>  ..." or "      --name <NAME>  ...".
    let mut opts: Vec<String> = out
        .lines()
        .map(str::trim_start)
        .map(|l| match l.split_once(", ") {
            Some((short, rest)) if short.len() == 2 && short.starts_with('-') => rest,
            _ => l,
        })
        .filter_map(|l| l.strip_prefix("--"))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .filter(|w| !["config", "save_config", "help", "version"].contains(&w.as_str()))
        .collect();
    opts.sort();
    opts.dedup();
    opts
}

#[test]
fn sample_config_parses_and_documents_every_option() {
    let sample = units_dir().join("dispynode.toml");
    let text = fs::read_to_string(&sample).expect("read sample");
    let (status, out, err) = output(
        Command::new(BIN)
            .arg("--config")
            .arg(&sample)
            .arg("--save_config"),
    );
    assert!(status.success(), "the sample does not parse: {err}");
    assert!(
        out.contains("dest_path_prefix = \"/var/lib/dispynode/files\""),
        "{out}"
    );
    let keys: Vec<&str> = text
        .lines()
        .map(|l| l.trim_start_matches('#'))
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
        .collect();
    let missing: Vec<String> = long_options()
        .into_iter()
        .filter(|o| !keys.contains(&o.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the sample does not mention {missing:?}"
    );
    // The commented examples are valid too (except files that must exist).
    let all: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
            _ => l,
        })
        .filter(|l| {
            !["certfile", "keyfile", "secret_file"]
                .iter()
                .any(|k| l.starts_with(&format!("{k} =")))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let uncommented = dir.path().join("all.toml");
    fs::write(&uncommented, all).expect("write");
    let (status, _, err) = output(
        Command::new(BIN)
            .arg("--config")
            .arg(&uncommented)
            .arg("--save_config"),
    );
    assert!(
        status.success(),
        "the sample's commented values do not parse: {err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Running the daemon

/// A process started in its own process group, with stdout and stderr in a log file; dropping
/// it kills the group.
struct Daemon {
    child: Child,
    log: PathBuf,
    command: String,
}

impl Daemon {
    /// Starts `cmd` with stdout and stderr in `log`. The systemd variables of the test's own
    /// environment are removed unless `cmd` sets them.
    fn spawn(mut cmd: Command, log: PathBuf) -> Daemon {
        let file = File::create(&log).expect("create log");
        let file2 = file.try_clone().expect("clone log");
        let set: Vec<std::ffi::OsString> = cmd.get_envs().map(|(k, _)| k.to_owned()).collect();
        for var in [
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "JOURNAL_STREAM",
            "DISPYNODE_LOG",
        ] {
            if !set.iter().any(|k| k == var) {
                cmd.env_remove(var);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(file2))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .process_group(0);
        let command = format!("{cmd:?}");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
        Daemon {
            child,
            log,
            command,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn context(&self) -> String {
        format!("command: {}\n--- daemon log\n{}", self.command, self.log())
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process has exec'd the daemon (under systemd-socket-activate, it first is the
    /// activator, which execs the daemon in the same process on the first contact).
    fn is_daemon(&self) -> bool {
        fs::read_link(format!("/proc/{}/exe", self.child.id()))
            .map(|p| {
                Path::new(BIN)
                    .canonicalize()
                    .map(|b| b == p)
                    .unwrap_or(false)
            })
            .unwrap_or(false)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = kill(self.pid(), Signal::SIGTERM);
        if self.wait_exit(Duration::from_secs(5)).is_none() {
            let _ = killpg(self.pid(), Signal::SIGKILL);
        }
        let _ = killpg(self.pid(), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The node's usual arguments for a test on 127.0.0.1 port `port` (client on `port - 1`).
fn node_args(cmd: &mut Command, port: u16, prefix: &Path) {
    cmd.args(["-i", "127.0.0.1"])
        .args(["--node_port", &port.to_string()])
        .args(["--scheduler_port", &(port - 1).to_string()])
        .arg("--dest_path_prefix")
        .arg(prefix)
        .args(["--cpus", "2"])
        .arg("-d");
}

fn base_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("dispynode-systemd-{tag}-"))
        .tempdir()
        .expect("temp dir")
}

/// Runs the stock client's `many_jobs` script (n jobs) against 127.0.0.1:`port` and asserts
/// every check passed.
fn run_real_job(port: u16, daemon: &Daemon, njobs: usize) {
    let run = support::run_client(
        "many_jobs",
        &[&port.to_string(), &njobs.to_string()],
        support::CLIENT_TIMEOUT,
    );
    let problems = run.problems(&support::MANY_JOBS_CHECKS);
    assert!(
        problems.is_empty(),
        "the client job failed:\n  - {}\n{}\n{}",
        problems.join("\n  - "),
        run.report(),
        daemon.context()
    );
}

#[test]
fn socket_activated_node_runs_a_real_client_job() {
    let port = support::free_port_pair();
    activated_node_runs_a_real_client_job(port, &format!("127.0.0.1:{port}"));
}

/// As dispynode.socket listens: a bare port, i.e. one dual-stack `[::]` socket per protocol, so
/// the IPv4 client reaches the node through v4-mapped addresses.
#[test]
fn socket_activated_dual_stack_node_runs_a_real_client_job() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: no IPv6 on this host (systemd would then bind IPv4 only)");
        return;
    }
    let port = support::free_port_pair();
    activated_node_runs_a_real_client_job(port, &port.to_string());
}

/// Runs the daemon under systemd-socket-activate with a TCP and a UDP socket on `addr` and a
/// real client job against 127.0.0.1:`port`.
fn activated_node_runs_a_real_client_job(port: u16, addr: &str) {
    require("systemd-socket-activate", "systemd");
    support::python(); // build the venv before the clocks start
    let base = base_dir("activate");
    let prefix = base.path().join("prefix");
    fs::create_dir(&prefix).expect("mkdir prefix");
    // systemd-socket-activate's --datagram applies to all its sockets, so chain two: the outer
    // one passes the TCP listener to the inner one ("file descriptors from sd_listen_fds() will
    // be passed through"), which adds the UDP socket: LISTEN_FDS=2, fd 3 TCP, fd 4 UDP, as
    // dispynode.socket passes them.
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args([
        "-l",
        addr,
        "--",
        "systemd-socket-activate",
        "--datagram",
        "-l",
        addr,
        "--",
    ])
    .arg(BIN);
    node_args(&mut cmd, port, &prefix);
    let mut daemon = Daemon::spawn(cmd, base.path().join("node.log"));

    // Wait until the activator listens, then make first contact: the activators exec the daemon
    // (in the same process), which must take over the sockets rather than bind its own (that
    // would fail: the port is taken by the passed sockets).
    let tcp = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(daemon.alive(), "the activator exited\n{}", daemon.context());
        if let Ok(mut s) = TcpStream::connect_timeout(&tcp, Duration::from_millis(500)) {
            // 40 bytes that are not a valid auth, then EOF: the daemon drops it.
            let _ = s.write_all(&[b'x'; 40]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {tcp}\n{}",
            daemon.context()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.is_daemon() {
        assert!(
            daemon.alive(),
            "exited before exec'ing the daemon\n{}",
            daemon.context()
        );
        assert!(
            Instant::now() < deadline,
            "the daemon was not started\n{}",
            daemon.context()
        );
        thread::sleep(Duration::from_millis(50));
    }
    // The daemon is starting; give it a moment to fail if it does not take the sockets.
    thread::sleep(Duration::from_millis(500));
    assert!(
        daemon.alive(),
        "the socket-activated daemon exited (does it take LISTEN_FDS?)\n{}",
        daemon.context()
    );

    run_real_job(port, &daemon, 6);
    assert!(
        daemon.alive(),
        "the daemon died after the job\n{}",
        daemon.context()
    );

    kill(daemon.pid(), Signal::SIGTERM).expect("SIGTERM");
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "the daemon did not exit cleanly after SIGTERM ({status:?})\n{}",
        daemon.context()
    );
}

#[test]
fn datagram_only_activation_is_refused_with_a_clear_message() {
    require("systemd-socket-activate", "systemd");
    let port = support::free_port_pair();
    let base = base_dir("dgram-only");
    let prefix = base.path().join("prefix");
    fs::create_dir(&prefix).expect("mkdir prefix");
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["--datagram", "-l", &addr, "--"]).arg(BIN);
    node_args(&mut cmd, port, &prefix);
    let mut daemon = Daemon::spawn(cmd, base.path().join("node.log"));

    // First contact: a datagram (the activator polls, so resend until it has exec'd).
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let _ = udp.send_to(b"x", (Ipv4Addr::LOCALHOST, port));
        if let Some(s) = daemon.wait_exit(Duration::from_millis(200)) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "a datagram-only activated daemon kept running\n{}",
            daemon.context()
        );
    };
    let log = daemon.log();
    // 2: the socket unit must change first; the service unit does not retry that.
    assert_eq!(
        status.code(),
        Some(2),
        "exited with {status}\n{}",
        daemon.context()
    );
    assert!(
        log.contains("ListenStream=") && log.contains("TCP"),
        "the message should say that a TCP listener (ListenStream=) is missing\n{}",
        daemon.context()
    );
}

// ---------------------------------------------------------------------------------------------
// sd_notify

/// Lets everyone reach `socket` in `dir` (search permission on the directory, write on the
/// socket).
fn world_writable(dir: &Path, socket: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod dir");
    fs::set_permissions(socket, fs::Permissions::from_mode(0o777)).expect("chmod socket");
}

/// A stand-in for systemd's notification socket: records every datagram with its arrival time.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    got: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = base_dir("notify");
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        // Started as root, the daemon drops to an unprivileged user before it notifies; like
        // systemd's /run/systemd/notify, the socket must be writable for everyone.
        world_writable(dir.path(), &path);
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            // Ends when the test (and so the socket's directory) is gone: recv then blocks
            // forever in a detached thread, which is fine for a test process.
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push((Instant::now(), text));
            }
        });
        NotifySocket {
            _dir: dir,
            path,
            got,
        }
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.got.lock().unwrap().clone()
    }

    /// Waits for a datagram with the line `line` received at index ≥ `from`; returns its index.
    fn wait_for(&self, line: &str, from: usize, limit: Duration) -> Option<usize> {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .all()
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, (_, m))| m.lines().any(|l| l == line))
                .map(|(i, _)| i);
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn dump(&self) -> String {
        self.all()
            .iter()
            .map(|(_, m)| format!("  {:?}\n", m))
            .collect()
    }
}

/// Starts the daemon directly (binding its own sockets) with `NOTIFY_SOCKET` and
/// `WATCHDOG_USEC=2000000`.
fn start_notified(tag: &str) -> (Daemon, NotifySocket, u16, tempfile::TempDir) {
    let notify = NotifySocket::bind();
    let port = support::free_port_pair();
    let base = base_dir(tag);
    let prefix = base.path().join("prefix");
    fs::create_dir(&prefix).expect("mkdir prefix");
    let mut cmd = Command::new(BIN);
    node_args(&mut cmd, port, &prefix);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "2000000");
    let daemon = Daemon::spawn(cmd, base.path().join("node.log"));
    (daemon, notify, port, base)
}

/// Waits for READY=1 and checks, the moment it arrives, that the TCP port accepts.
fn wait_ready(daemon: &mut Daemon, notify: &NotifySocket, port: u16) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(i) = notify.wait_for("READY=1", 0, Duration::from_millis(20)) {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let accepted = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
            assert!(
                accepted.is_ok(),
                "READY=1 was sent but TCP {addr} does not accept: {accepted:?}\n{}",
                daemon.context()
            );
            let _ = accepted.map(|mut s| s.write_all(&[b'x'; 40]));
            return i;
        }
        assert!(
            daemon.alive(),
            "the daemon exited before READY=1; notifications:\n{}{}",
            notify.dump(),
            daemon.context()
        );
        assert!(
            Instant::now() < deadline,
            "no READY=1 within 30 s; notifications:\n{}{}",
            notify.dump(),
            daemon.context()
        );
    }
}

#[test]
fn notify_ready_watchdog_status_and_stopping() {
    let (mut daemon, notify, port, _base) = start_notified("notify");
    let ready = wait_ready(&mut daemon, &notify, port);
    let ready_at = notify.all()[ready].0;

    // WATCHDOG_USEC=2 s: a WATCHDOG=1 about every second; 2 in the 4 s after READY=1 leaves
    // room for a slow second on a loaded machine (systemd itself would allow 2 s).
    thread::sleep(Duration::from_millis(4200));
    assert!(daemon.alive(), "the daemon died\n{}", daemon.context());
    let after: Vec<(Instant, String)> = notify
        .all()
        .into_iter()
        .filter(|(t, _)| *t >= ready_at)
        .collect();
    let watchdogs = after
        .iter()
        .filter(|(t, m)| {
            *t <= ready_at + Duration::from_secs(4) && m.lines().any(|l| l == "WATCHDOG=1")
        })
        .count();
    assert!(
        watchdogs >= 2,
        "{watchdogs} WATCHDOG=1 in the 4 s after READY=1 (want >= 2 with WATCHDOG_USEC=2000000); notifications:\n{}",
        notify.dump()
    );
    let statuses: Vec<String> = notify
        .all()
        .iter()
        .flat_map(|(_, m)| m.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| l.starts_with("STATUS=") && l.len() > "STATUS=".len())
        .collect();
    assert!(
        !statuses.is_empty(),
        "no STATUS= line; notifications:\n{}",
        notify.dump()
    );
    eprintln!("status lines: {statuses:?}");

    // Jobs are logged one by one only at debug level: STATUS= counts them for operators.
    run_real_job(port, &daemon, 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    let counted = loop {
        let found = notify.all().iter().any(|(_, m)| {
            m.lines()
                .any(|l| l.starts_with("STATUS=") && l.ends_with(", 3 jobs done since start"))
        });
        if found || Instant::now() > deadline {
            break found;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        counted,
        "no STATUS= line ending in \", 3 jobs done since start\" after 3 jobs; notifications:\n{}",
        notify.dump()
    );
    let before_stop = notify.all().len();

    kill(daemon.pid(), Signal::SIGTERM).expect("SIGTERM");
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert!(
        notify
            .wait_for("STOPPING=1", before_stop, Duration::from_secs(2))
            .is_some(),
        "no STOPPING=1 after SIGTERM; notifications:\n{}{}",
        notify.dump(),
        daemon.context()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "the daemon did not exit cleanly after SIGTERM ({status:?})\n{}",
        daemon.context()
    );
}

#[test]
fn sighup_reloads_with_reloading_then_ready() {
    let (mut daemon, notify, port, _base) = start_notified("reload");
    let ready = wait_ready(&mut daemon, &notify, port);
    kill(daemon.pid(), Signal::SIGHUP).expect("SIGHUP");
    let deadline = Duration::from_secs(10);
    let reloading = notify
        .wait_for("RELOADING=1", ready + 1, deadline)
        .unwrap_or_else(|| {
            panic!(
                "no RELOADING=1 after SIGHUP; notifications:\n{}{}",
                notify.dump(),
                daemon.context()
            )
        });
    let msg = notify.all()[reloading].1.clone();
    assert!(
        msg.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "RELOADING=1 without MONOTONIC_USEC= (systemd >= 253 requires it): {msg:?}"
    );
    assert!(
        notify
            .wait_for("READY=1", reloading + 1, deadline)
            .is_some(),
        "no READY=1 after RELOADING=1; notifications:\n{}{}",
        notify.dump(),
        daemon.context()
    );
    assert!(
        daemon.alive(),
        "SIGHUP killed the daemon\n{}",
        daemon.context()
    );
}

/// Two SIGHUPs, the second while the first reload is still reading the file: the reloads
/// run one after the other (RELOADING, READY, RELOADING, READY), so the file read last is the
/// one applied and READY never comes before a reload that is still running. The config file is
/// a FIFO: each read waits until the test writes it, which holds the first reload open.
#[test]
fn a_sighup_during_a_reload_waits_for_it() {
    use std::os::unix::fs::PermissionsExt;
    let notify = NotifySocket::bind();
    let port = support::free_port_pair();
    let base = base_dir("reload-twice");
    // The daemon reads the file again after dropping to nobody when started as root.
    fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755)).expect("chmod base");
    let prefix = base.path().join("prefix");
    fs::create_dir(&prefix).expect("mkdir prefix");
    let fifo = base.path().join("dispynode.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
    // One permit, one read of the file served.
    let (permit, permits) = std::sync::mpsc::channel::<()>();
    let writer_path = fifo.clone();
    thread::spawn(move || {
        for () in permits {
            match fs::OpenOptions::new().write(true).open(&writer_path) {
                Ok(mut f) => {
                    let _ = f.write_all(b"msg_timeout = 12\n");
                }
                Err(_) => return,
            }
        }
    });
    let mut cmd = Command::new(BIN);
    node_args(&mut cmd, port, &prefix);
    cmd.arg("--config")
        .arg(&fifo)
        .env("NOTIFY_SOCKET", &notify.path);
    permit.send(()).expect("permit");
    let mut daemon = Daemon::spawn(cmd, base.path().join("node.log"));
    let ready = wait_ready(&mut daemon, &notify, port);
    let limit = Duration::from_secs(20);
    let fail = |what: &str, daemon: &Daemon| -> ! {
        panic!(
            "{what}; notifications:\n{}{}",
            notify.dump(),
            daemon.context()
        )
    };

    kill(daemon.pid(), Signal::SIGHUP).expect("SIGHUP");
    let first = notify
        .wait_for("RELOADING=1", ready + 1, limit)
        .unwrap_or_else(|| fail("no RELOADING=1 after the first SIGHUP", &daemon));
    // The first reload now waits for the file; a second one must wait for it.
    kill(daemon.pid(), Signal::SIGHUP).expect("SIGHUP");
    if notify
        .wait_for("RELOADING=1", first + 1, Duration::from_secs(2))
        .is_some()
    {
        fail(
            "a second reload began while the first was still reading the file",
            &daemon,
        );
    }
    permit.send(()).expect("permit");
    let done = notify
        .wait_for("READY=1", first + 1, limit)
        .unwrap_or_else(|| fail("no READY=1 after the first reload read its file", &daemon));
    let second = notify
        .wait_for("RELOADING=1", done + 1, limit)
        .unwrap_or_else(|| fail("the second SIGHUP was not acted on", &daemon));
    permit.send(()).expect("permit");
    notify
        .wait_for("READY=1", second + 1, limit)
        .unwrap_or_else(|| fail("no READY=1 after the second reload", &daemon));
    let states: Vec<String> = notify.all()[ready + 1..]
        .iter()
        .flat_map(|(_, m)| m.lines())
        .filter(|l| *l == "RELOADING=1" || *l == "READY=1")
        .map(str::to_owned)
        .collect();
    assert_eq!(
        states,
        ["RELOADING=1", "READY=1", "RELOADING=1", "READY=1"],
        "reloads overlapped\n{}",
        daemon.context()
    );
    assert!(
        daemon.alive(),
        "two SIGHUPs killed the daemon\n{}",
        daemon.context()
    );
    assert_eq!(
        daemon.log().matches("configuration reloaded").count(),
        2,
        "not two completed reloads\n{}",
        daemon.context()
    );
}

// ---------------------------------------------------------------------------------------------
// journald

/// Parses journald's native protocol: `KEY=value\n`, or `KEY\n<u64 LE length><bytes>\n`.
fn parse_journal_entry(mut data: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while !data.is_empty() {
        let Some(nl) = data.iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = &data[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let key = String::from_utf8_lossy(&line[..eq]).into_owned();
            let value = String::from_utf8_lossy(&line[eq + 1..]).into_owned();
            fields.insert(key, value);
            data = &data[nl + 1..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &data[nl + 1..];
            if rest.len() < 8 {
                break;
            }
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = String::from_utf8_lossy(&rest[8..8 + len.min(rest.len() - 8)]).into_owned();
            fields.insert(key, value);
            data = rest.get(8 + len + 1..).unwrap_or(&[]);
        }
    }
    fields
}

#[test]
fn journal_entries_carry_plain_structured_fields() {
    require("unshare", "util-linux");
    // A private mount namespace where /run/systemd/journal is the test's directory: the daemon's
    // journald socket is then the test's socket, and the host's /run is untouched.
    let probe = output(Command::new("unshare").args(["--mount", "true"]));
    if !probe.0.success() {
        eprintln!(
            "SKIPPED: cannot create a mount namespace here ({})",
            probe.2.trim()
        );
        return;
    }
    let _ = support::python();
    let port = support::free_port_pair();
    let base = base_dir("journal");
    let prefix = base.path().join("prefix");
    let jdir = base.path().join("journal");
    fs::create_dir(&prefix).expect("mkdir prefix");
    fs::create_dir(&jdir).expect("mkdir journal");
    let sock = UnixDatagram::bind(jdir.join("socket")).expect("bind journal socket");
    // As journald's socket: writable by the unprivileged user the daemon drops to.
    world_writable(base.path(), &jdir);
    world_writable(&jdir, &jdir.join("socket"));
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let entries = Arc::new(Mutex::new(Vec::<BTreeMap<String, String>>::new()));
    let sink = entries.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match sock.recv(&mut buf) {
                Ok(0) => {} // the layer's "can I reach journald" probe
                Ok(n) => sink.lock().unwrap().push(parse_journal_entry(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
    });

    // stderr is the log file; JOURNAL_STREAM names it, as systemd names the journal stream.
    let log = base.path().join("node.log");
    File::create(&log).expect("create log");
    let meta = fs::metadata(&log).expect("stat log");
    let script = "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
                  mount --bind \"$JDIR\" /run/systemd/journal && exec \"$@\"";
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(BIN)
    .env("JDIR", &jdir);
    node_args(&mut cmd, port, &prefix);
    cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    // Daemon::spawn truncates the log file, which keeps its inode.
    let mut daemon = Daemon::spawn(cmd, log);

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err() {
        assert!(daemon.alive(), "the daemon exited\n{}", daemon.context());
        assert!(
            Instant::now() < deadline,
            "not accepting\n{}",
            daemon.context()
        );
        thread::sleep(Duration::from_millis(100));
    }
    run_real_job(port, &daemon, 3);
    thread::sleep(Duration::from_millis(500));

    let entries = entries.lock().unwrap().clone();
    let dump = || {
        entries
            .iter()
            .map(|e| format!("  {e:?}\n"))
            .collect::<String>()
    };
    assert!(
        !entries.is_empty(),
        "nothing reached the journal socket; did the daemon log to stderr instead?\n{}",
        daemon.context()
    );
    for e in &entries {
        assert_eq!(
            e.get("SYSLOG_IDENTIFIER").map(String::as_str),
            Some("dispynode"),
            "{e:?}"
        );
        assert!(
            e.contains_key("MESSAGE") && e.contains_key("PRIORITY"),
            "{e:?}"
        );
        assert!(
            !e.keys().any(|k| k.starts_with("F_")),
            "field names must not carry tracing-journald's F_ prefix: {e:?}"
        );
    }
    let with = |keys: &[&str]| {
        entries
            .iter()
            .any(|e| keys.iter().all(|k| e.contains_key(*k)))
    };
    for keys in [
        &["CLIENT", "COMPUTATION", "JOB"][..],
        &["COMPUTATION", "JOB", "STATUS", "DURATION"][..],
        &["CLIENT", "COMPUTATION"][..],
    ] {
        assert!(
            with(keys),
            "no journal entry with fields {keys:?}; entries:\n{}",
            dump()
        );
    }
    // Jobs one by one at debug (7; the node runs with -d here), each computation's close at
    // info with its tally: without -d, hundreds of jobs a second must not run into journald's
    // per-service rate limit, which would drop every message of the node, warnings included.
    let by_message = |m: &str| {
        entries
            .iter()
            .filter(|e| e.get("MESSAGE").map(String::as_str) == Some(m))
            .collect::<Vec<_>>()
    };
    for m in ["job started", "job done"] {
        let lines = by_message(m);
        assert!(
            lines.len() == 3
                && lines
                    .iter()
                    .all(|e| e.get("PRIORITY").map(String::as_str) == Some("7")),
            "expected 3 {m:?} entries at debug (PRIORITY=7):\n{}",
            dump()
        );
    }
    let closed = by_message("computation closed");
    fn tally(e: &BTreeMap<String, String>) -> [&str; 5] {
        ["PRIORITY", "JOBS", "FINISHED", "TERMINATED", "KILLED"]
            .map(|k| e.get(k).map(String::as_str).unwrap_or("-"))
    }
    assert!(
        closed.len() == 1 && tally(closed[0]) == ["6", "3", "3", "0", "0"],
        "expected one \"computation closed\" entry at info with JOBS=3 FINISHED=3 \
         TERMINATED=0 KILLED=0:\n{}",
        dump()
    );
    // INFO is "informational" (6); nothing at "notice" unless it needs attention.
    assert!(
        entries
            .iter()
            .any(|e| e.get("PRIORITY").map(String::as_str) == Some("6")),
        "no PRIORITY=6 entries:\n{}",
        dump()
    );
}
