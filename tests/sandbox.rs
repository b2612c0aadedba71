//! The jail helper for real: Landlock (ABI 7 on the build machines), uid switch and capability
//! drop as root, fds, environment, session, parent-death signal, cgroup placement (fake tree).
//!
//! The helper and the probes run in re-executed copies of this test binary (the lead's `main`
//! may not dispatch `__jail` yet): `jail_entry` calls `jail_main` when `JAIL_ENV` is set, and
//! `probe_entry` runs the probes listed in `PROBE_ENV` and prints `PROBE <probe> <result>`
//! lines. Both are no-op tests in a normal run.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dispynode::sandbox::cgroup::{fake, CgroupTree, Limits};
use dispynode::sandbox::landlock::KernelLandlock;
use dispynode::sandbox::spawn::Identity;
use dispynode::sandbox::{
    drop_daemon_privileges, jail_main, probe, JailSpec, LandlockPolicy, ProcStatus,
};

const JAIL_ENV: &str = "DISPYNODE_TEST_JAIL_ARGV";
const PROBE_ENV: &str = "DISPYNODE_TEST_PROBES";
const DROP_ENV: &str = "DISPYNODE_TEST_DROP";

// ---------------------------------------------------------------------------------------------
// Entry points of the re-executed test binary.

#[test]
fn jail_entry() {
    let Ok(argv) = std::env::var(JAIL_ENV) else {
        return;
    };
    let argv: Vec<String> = serde_json::from_str(&argv).unwrap();
    jail_main(argv.into_iter().map(OsString::from).collect());
}

#[test]
fn probe_entry() {
    let Ok(probes) = std::env::var(PROBE_ENV) else {
        return;
    };
    let mut out = String::new();
    for p in probes.split(';').filter(|p| !p.is_empty()) {
        out.push_str(&format!("PROBE {p} {}\n", run_probe(p)));
    }
    let mut stdout = std::io::stdout();
    stdout.write_all(out.as_bytes()).unwrap();
    stdout.flush().unwrap();
    std::process::exit(0);
}

#[test]
fn drop_entry() {
    let Ok(group) = std::env::var(DROP_ENV) else {
        return;
    };
    // This process has the harness's main thread too: fork, so the child is single-threaded
    // as the daemon's main() is before the runtime starts.
    // SAFETY: the child only calls the function under test, prints and _exits; the other
    // thread of this process (the harness's main thread) is idle waiting for this test.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let line = match drop_daemon_privileges("nobody", &group) {
                Ok(d) => format!("DROPPED {d}"),
                Err(e) => format!("ERROR {e}"),
            };
            let st = ProcStatus::read_self().unwrap();
            println!("{line}\nSTATUS {st:?}");
            let _ = std::io::stdout().flush();
            // SAFETY: _exit ends the forked child without running the harness's atexit code.
            unsafe { libc::_exit(0) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            nix::sys::wait::waitpid(child, None).unwrap();
            std::process::exit(0);
        }
    }
}

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
        None => format!("error:{e}"),
    }
}

fn result<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => errno_name(&e),
    }
}

fn nix_result<T>(r: nix::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

/// One probe, run inside the jail.
fn run_probe(p: &str) -> String {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
    let (name, arg) = p.split_once(':').unwrap_or((p, ""));
    match name {
        "write" => result(fs::write(arg, "x")),
        "read" => result(fs::read(arg)),
        "list" => result(fs::read_dir(arg)),
        "exec" => result(Command::new(arg).args(["-c", "exit 0"]).status()),
        "kill0" => {
            let pid = nix::unistd::Pid::from_raw(arg.parse().unwrap());
            nix_result(nix::sys::signal::kill(pid, None))
        }
        "kill0-self" => nix_result(nix::sys::signal::kill(nix::unistd::getpid(), None)),
        "abstract" => result(
            SocketAddr::from_abstract_name(arg.as_bytes())
                .and_then(|a| UnixStream::connect_addr(&a)),
        ),
        "abstract-own" => {
            let name = format!("dispynode-test-own-{}", std::process::id());
            let r = SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|a| UnixListener::bind_addr(&a).map(|l| (l, a)))
                .and_then(|(_l, a)| UnixStream::connect_addr(&a));
            result(r)
        }
        "fd" => {
            let fd: i32 = arg.parse().unwrap();
            match nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD) {
                Ok(_) => "open".into(),
                Err(_) => "closed".into(),
            }
        }
        "env" => {
            let mut vars: Vec<String> = std::env::vars()
                .filter(|(k, _)| k != PROBE_ENV)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            vars.sort();
            vars.join(",")
        }
        "status" => {
            let st = ProcStatus::read_self().unwrap();
            format!(
                "uid={:?} gid={:?} groups={:?} eff={:x} prm={:x} inh={:x} amb={:x} bnd={:x} nnp={}",
                st.uid,
                st.gid,
                st.groups,
                st.cap_eff,
                st.cap_prm,
                st.cap_inh,
                st.cap_amb,
                st.cap_bnd,
                st.no_new_privs
            )
        }
        "session" => {
            let me = nix::unistd::getpid();
            let sid = nix::unistd::getsid(None).unwrap();
            let pgid = nix::unistd::getpgrp();
            if sid == me && pgid == me {
                "leader".into()
            } else {
                format!("sid={sid} pgid={pgid} pid={me}")
            }
        }
        "rlimit-core" => {
            let (s, h) =
                nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE).unwrap();
            format!("{s}/{h}")
        }
        "rlimit-nofile" => {
            let (s, h) =
                nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
            format!("{s}/{h}")
        }
        "cwd" => std::env::current_dir().unwrap().display().to_string(),
        other => format!("unknown-probe:{other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The test side.

/// A node's files in a temp dir: the computation `comp1` (ours), `comp2` (another's), the
/// state directory, a configuration directory with a key, and an unrelated directory.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    prefix: PathBuf,
    comp1: PathBuf,
    comp2: PathBuf,
    state: PathBuf,
    conf: PathBuf,
    outside: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let prefix = root.join("prefix");
        let comp1 = prefix.join("comp1");
        let comp2 = prefix.join("comp2");
        let state = root.join("state");
        let conf = root.join("conf");
        let outside = root.join("outside");
        for d in [&comp1, &comp1.join(".tmp"), &comp2, &state, &conf, &outside] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(comp2.join("secret.txt"), "comp2's data").unwrap();
        fs::write(state.join("results.pkl"), "undelivered").unwrap();
        fs::write(conf.join("node.pem"), "certificate").unwrap();
        fs::write(conf.join("node.key"), "private key").unwrap();
        // Reachable by uid 65534 in the identity tests.
        for d in [&root, &prefix, &conf] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        for d in [&comp1, &comp1.join(".tmp")] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o777)).unwrap();
        }
        Fixture {
            _tmp: tmp,
            root,
            prefix,
            comp1,
            comp2,
            state,
            conf,
            outside,
        }
    }

    /// The daemon's spec for a job of comp1, with this test binary readable and executable.
    fn spec(&self, required: bool) -> JailSpec {
        let mut spec = JailSpec::new(&self.comp1);
        spec.env = JailSpec::standard_env(&self.comp1, "/usr/bin:/bin");
        spec.allow_root = true;
        spec.landlock = Some(LandlockPolicy::for_computation(
            &self.comp1,
            [std::env::current_exe().unwrap(), self.conf.clone()],
            [
                self.prefix.clone(),
                self.state.clone(),
                self.conf.join("node.key"),
            ],
            required,
        ));
        spec
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Landlock as it is here: `None` (and a message) when the kernel has none.
fn landlock_abi() -> Option<i32> {
    match probe().kernel {
        KernelLandlock::Available(v) => Some(v),
        other => {
            eprintln!("skipped: landlock unavailable ({other:?})");
            None
        }
    }
}

/// Runs the helper (a re-executed copy of this binary) on `program args`.
fn run_jail(spec: &JailSpec, program: &Path, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    let spec_arg = spec.to_args().remove(0).into_string().unwrap();
    let mut argv: Vec<String> = vec![
        "dispynode".into(),
        "__jail".into(),
        spec_arg,
        "--".into(),
        program.display().to_string(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "jail_entry",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(JAIL_ENV, serde_json::to_string(&argv).unwrap())
        .envs(extra_env.iter().copied())
        .output()
        .unwrap()
}

/// Runs `probes` in the jail described by `spec`; returns probe → result.
fn run_probes(spec: &JailSpec, probes: &[String]) -> HashMap<String, String> {
    let mut spec = spec.clone();
    spec.env.push((PROBE_ENV.into(), probes.join(";")));
    let out = run_jail(
        &spec,
        &std::env::current_exe().unwrap(),
        &[
            "--exact",
            "probe_entry",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ],
        &[("DISPYNODE_SECRET", "must-not-leak")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "jailed probe failed: {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let results: HashMap<String, String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("PROBE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(p, r)| (p.to_owned(), r.to_owned()))
        .collect();
    assert_eq!(
        results.len(),
        probes.len(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    results
}

/// The job's output after the re-executed harness's own "running 1 test" line.
fn last_line(stdout: &[u8]) -> String {
    String::from_utf8_lossy(stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_owned()
}

fn p(kind: &str, path: impl AsRef<Path>) -> String {
    format!("{kind}:{}", path.as_ref().display())
}

#[test]
fn landlock_confines_a_job_to_its_directory() {
    let Some(abi) = landlock_abi() else { return };
    let f = Fixture::new();
    let spec = f.spec(abi >= 6);
    let probes = [
        (p("write", f.comp1.join("out.txt")), "ok"),
        (p("read", f.comp1.join("out.txt")), "ok"),
        (p("write", f.comp1.join(".tmp/scratch")), "ok"),
        (p("list", &f.comp1), "ok"),
        (p("write", f.outside.join("x")), "EACCES"),
        (p("write", f.root.join("x")), "EACCES"),
        (
            p(
                "write",
                format!("/tmp/dispynode-escape-{}", std::process::id()),
            ),
            "EACCES",
        ),
        (p("read", f.comp2.join("secret.txt")), "EACCES"),
        (p("list", &f.comp2), "EACCES"),
        (p("list", &f.prefix), "EACCES"),
        (p("read", f.state.join("results.pkl")), "EACCES"),
        (p("read", f.conf.join("node.key")), "EACCES"),
        (p("read", f.conf.join("node.pem")), "ok"),
        (p("write", f.conf.join("node.pem")), "EACCES"),
        (p("read", "/etc/passwd"), "ok"),
        (p("list", "/usr/lib"), "ok"),
        (p("write", "/dev/null"), "ok"),
        (p("exec", "/bin/sh"), "ok"),
    ];
    let names: Vec<String> = probes.iter().map(|(n, _)| n.clone()).collect();
    let results = run_probes(&spec, &names);
    for (probe, want) in &probes {
        assert_eq!(results[probe], *want, "{probe}");
    }
    assert!(!f.outside.join("x").exists());
    assert_eq!(fs::read_to_string(f.comp1.join("out.txt")).unwrap(), "x");
}

#[test]
fn landlock_scoping_keeps_signals_and_abstract_sockets_inside() {
    let Some(abi) = landlock_abi() else { return };
    if abi < 6 {
        eprintln!("skipped: landlock ABI {abi} has no scoping (needs 6, Linux 6.12)");
        return;
    }
    use std::os::linux::net::SocketAddrExt;
    let name = format!("dispynode-test-daemon-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let f = Fixture::new();
    let probes = [
        format!("kill0:{}", std::process::id()),
        "kill0-self".into(),
        format!("abstract:{name}"),
        "abstract-own".into(),
    ];
    let jailed = run_probes(&f.spec(true), &probes);
    assert_eq!(jailed[&probes[0]], "EPERM", "signal to the daemon");
    assert_eq!(jailed[&probes[1]], "ok");
    assert_eq!(
        jailed[&probes[2]], "EPERM",
        "connect to the daemon's abstract socket"
    );
    assert_eq!(jailed[&probes[3]], "ok");
    // The same job without landlock reaches both: the refusals above are landlock's.
    let mut open = f.spec(false);
    open.landlock = None;
    let unconfined = run_probes(&open, &probes);
    assert_eq!(unconfined[&probes[0]], "ok");
    assert_eq!(unconfined[&probes[2]], "ok");
}

#[test]
fn environment_fds_session_rlimits_and_cwd() {
    let f = Fixture::new();
    let mut spec = f.spec(false);
    spec.landlock = None;
    spec.rlimits.nofile = Some(256);
    // Two descriptors without CLOEXEC, as a careless library in the daemon could leave: the
    // first must be closed, the second is passed on purpose.
    let stray = fs::File::open("/etc/passwd").unwrap().into_raw_fd();
    let kept = fs::File::open("/etc/passwd").unwrap().into_raw_fd();
    for fd in [stray, kept] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .unwrap();
    }
    spec.keep_fds = vec![kept];
    let probes = [
        "env".to_string(),
        format!("fd:{stray}"),
        format!("fd:{kept}"),
        "fd:0".into(),
        "session".into(),
        "rlimit-core".into(),
        "rlimit-nofile".into(),
        "cwd".into(),
    ];
    let r = run_probes(&spec, &probes);
    // SAFETY: both fds are ours (opened above) and used by nothing else.
    unsafe {
        libc::close(stray);
        libc::close(kept);
    }
    let c1 = f.comp1.display();
    assert_eq!(
        r["env"],
        format!("HOME={c1},LANG=C.UTF-8,PATH=/usr/bin:/bin,TMPDIR={c1}/.tmp")
    );
    assert_eq!(r[&probes[1]], "closed");
    assert_eq!(r[&probes[2]], "open");
    assert_eq!(r["fd:0"], "open");
    assert_eq!(r["session"], "leader");
    assert_eq!(r["rlimit-core"], "0/0");
    assert_eq!(r["rlimit-nofile"], "256/256");
    assert_eq!(r["cwd"], f.comp1.display().to_string());
}

#[test]
fn signals_are_reset_for_the_job() {
    // The helper is a Rust program (SIGPIPE ignored by its runtime): the job must get the
    // default disposition and an empty signal mask.
    let f = Fixture::new();
    let mut spec = f.spec(false);
    spec.landlock = None;
    let out = run_jail(&spec, Path::new("/bin/cat"), &["/proc/self/status"], &[]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| {
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} in {text}"));
        u64::from_str_radix(v.trim(), 16).unwrap()
    };
    assert_eq!(field("SigBlk:"), 0);
    assert_eq!(
        field("SigIgn:") & (1 << (libc::SIGPIPE - 1)),
        0,
        "SIGPIPE ignored"
    );
    let st = ProcStatus::parse(&text).unwrap();
    assert!(st.no_new_privs);
    assert!(st.no_capabilities(false), "{st:?}");
}

#[test]
fn program_is_found_in_the_jobs_path_and_exec_failures_are_reported() {
    let f = Fixture::new();
    let mut spec = f.spec(false);
    spec.landlock = None;
    let out = run_jail(&spec, Path::new("sh"), &["-c", "echo $0 in $PWD"], &[]);
    assert_eq!(
        last_line(&out.stdout),
        format!("sh in {}", f.comp1.display())
    );
    let out = run_jail(&spec, Path::new("no-such-program-here"), &[], &[]);
    assert_eq!(out.status.code(), Some(127));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("dispynode-jail: exec no-such-program-here: "),
        "{err}"
    );
}

#[test]
fn a_failed_step_never_runs_the_job() {
    let f = Fixture::new();
    let marker = f.comp1.join("ran");
    let script = format!("touch {}", marker.display());
    // cgroup missing: 244.
    let mut spec = f.spec(false);
    spec.cgroup = Some(f.root.join("no-such-cgroup"));
    let out = run_jail(&spec, Path::new("/bin/sh"), &["-c", &script], &[]);
    assert_eq!(out.status.code(), Some(244), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("dispynode-jail: join cgroup "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // Landlock policy with a missing read-write directory: 253.
    if landlock_abi().is_some() {
        let mut spec = f.spec(false);
        if let Some(ll) = spec.landlock.as_mut() {
            ll.read_write.push(f.root.join("missing"));
        }
        let out = run_jail(&spec, Path::new("/bin/sh"), &["-c", &script], &[]);
        assert_eq!(out.status.code(), Some(253), "{out:?}");
    }
    // A daemon that is already gone: 247.
    let mut spec = f.spec(false);
    spec.parent_pid = Some(1);
    let out = run_jail(&spec, Path::new("/bin/sh"), &["-c", &script], &[]);
    assert_eq!(out.status.code(), Some(247), "{out:?}");
    // Garbage spec: 240.
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "jail_entry",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(
            JAIL_ENV,
            r#"["dispynode","__jail","{\"cwd\":1}","--","/bin/true"]"#,
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(240), "{out:?}");
    assert!(!marker.exists());
}

#[test]
fn root_without_identity_is_refused() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let f = Fixture::new();
    let mut spec = f.spec(false);
    spec.allow_root = false;
    let out = run_jail(&spec, Path::new("/bin/true"), &[], &[]);
    assert_eq!(out.status.code(), Some(250), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to run a job as root"));
}

#[test]
fn as_root_the_job_runs_as_the_spec_identity_without_capabilities() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let f = Fixture::new();
    let mut spec = f.spec(landlock_abi().is_some_and(|v| v >= 6));
    if landlock_abi().is_none() {
        spec.landlock = None;
    }
    spec.allow_root = false;
    spec.identity = Some(Identity {
        uid: 65534,
        gid: 65534,
    });
    let probes = ["status".to_string(), p("write", f.comp1.join("by-nobody"))];
    let r = run_probes(&spec, &probes);
    assert_eq!(
        r["status"],
        "uid=[65534, 65534, 65534, 65534] gid=[65534, 65534, 65534, 65534] groups=[] \
         eff=0 prm=0 inh=0 amb=0 bnd=0 nnp=true"
    );
    assert_eq!(r[&probes[1]], "ok");
    let meta = fs::metadata(f.comp1.join("by-nobody")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
}

/// The parent-death signal kills the job when the process that spawned it dies, also after a
/// uid switch (which clears it in the kernel: the helper arms it again).
#[test]
fn the_job_dies_with_its_parent() {
    let f = Fixture::new();
    let mut variants = vec![None];
    if is_root() {
        variants.push(Some(Identity {
            uid: 65534,
            gid: 65534,
        }));
    }
    for identity in variants {
        let mut spec = f.spec(false);
        spec.landlock = None;
        spec.parent_pid = None; // the parent is the shell below
        spec.identity = identity;
        let spec_arg = spec.to_args().remove(0).into_string().unwrap();
        let argv =
            serde_json::to_string(&["dispynode", "__jail", &spec_arg, "--", "/bin/sleep", "30"])
                .unwrap();
        // The shell starts the helper in the background, prints its pid, lingers until the
        // helper has exec'd the job (its death signal is armed then: before, on a slow machine,
        // the helper could find itself already orphaned), and exits.
        let exe = std::env::current_exe().unwrap();
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "\"{}\" --exact jail_entry --test-threads=1 -q >/dev/null 2>&1 & p=$!; echo $p; \
                 i=0; while [ $i -lt 300 ] && [ \"$(cat /proc/$p/comm 2>/dev/null)\" != sleep ]; \
                 do sleep 0.05; i=$((i+1)); done; sleep 0.1",
                exe.display()
            ))
            .env(JAIL_ENV, argv)
            .output()
            .unwrap();
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let dead = (0..100).any(|_| {
            let alive = fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    let state = s.rsplit_once(") ").map(|(_, r)| r.chars().next());
                    state != Some(Some('Z')) && state != Some(Some('X'))
                })
                .unwrap_or(false);
            if alive {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            !alive
        });
        if !dead {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(
            dead,
            "job {pid} survived its parent (identity {identity:?})"
        );
    }
}

#[test]
fn the_helper_joins_the_job_cgroup() {
    let f = Fixture::new();
    let cg = f.root.join("cgroupfs");
    let root = fake::delegated_tree(&cg, "/dispynode.service", &["memory", "pids"], &[]).unwrap();
    let mut tree = CgroupTree::detect(&root, "0::/dispynode.service\n")
        .unwrap()
        .with_ops(fake::OPS);
    tree.prepare().unwrap();
    let job = tree
        .create_job(
            "c1-j1",
            &Limits {
                pids_max: Some(32),
                ..Limits::default()
            },
        )
        .unwrap();
    let mut spec = f.spec(false);
    spec.landlock = None;
    spec.cgroup = Some(job.path().to_path_buf());
    let out = run_jail(&spec, Path::new("/bin/sh"), &["-c", "echo $$"], &[]);
    assert!(out.status.success(), "{out:?}");
    let pid = last_line(&out.stdout);
    // The helper wrote its own pid, which the job (exec keeps the pid) reports as $$.
    assert_eq!(fs::read_to_string(job.procs_path()).unwrap().trim(), pid);
    fs::write(job.procs_path(), "").unwrap();
    job.kill().unwrap();
    job.remove().unwrap();
    assert!(!job.path().exists());
}

#[test]
fn drop_daemon_privileges_to_nobody() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let group = ["nogroup", "nobody"]
        .into_iter()
        .find(|g| nix::unistd::Group::from_name(g).ok().flatten().is_some())
        .expect("a nogroup or nobody group");
    let gid = nix::unistd::Group::from_name(group)
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    let uid = nix::unistd::User::from_name("nobody")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "drop_entry",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(DROP_ENV, group)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("DROPPED ") || l.starts_with("ERROR "));
    assert_eq!(
        line,
        Some(
            format!(
                "DROPPED dropped privileges to user nobody (uid {uid}), group {group} (gid {gid}): \
                 no supplementary groups, no capabilities (bounding set empty), no_new_privs"
            )
            .as_str()
        ),
        "{text}"
    );
    let status = text.lines().find(|l| l.starts_with("STATUS ")).unwrap();
    let want = format!(
        "uid: [{uid}, {uid}, {uid}, {uid}], gid: [{gid}, {gid}, {gid}, {gid}], groups: [], \
         cap_inh: 0, cap_prm: 0, cap_eff: 0, cap_bnd: 0, cap_amb: 0, no_new_privs: true, threads: 1"
    );
    assert!(status.contains(&want), "{status}");
}

#[test]
fn landlock_report_for_the_log() {
    let report = probe();
    eprintln!("{report}");
    if let KernelLandlock::Available(v) = report.kernel {
        assert!(report
            .to_string()
            .starts_with(&format!("landlock ABI {v} (we use 6)")));
    }
}

#[test]
fn cgroup_detection_on_this_host() {
    match CgroupTree::detect_system() {
        Ok(tree) => eprintln!("cgroup v2 delegated at {}", tree.root().display()),
        Err(e) => {
            let line = e.to_string();
            eprintln!("{line}");
            assert!(line.starts_with("cgroup v2 not delegated: "));
            assert!(line.ends_with("; falling back to process groups"));
        }
    }
}

/// Once `main` dispatches `__jail` to `jail_main`, the real binary is the helper; until then
/// this test only says so.
#[test]
fn the_dispynode_binary_is_the_helper() {
    let f = Fixture::new();
    let mut spec = f.spec(false);
    spec.landlock = None;
    let out = dispynode::sandbox::spawn::jail_command_with(
        Path::new(env!("CARGO_BIN_EXE_dispynode")),
        &spec,
        "/bin/sh",
        ["-c", "echo jailed $PWD"],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.code() == Some(2) && !stdout.contains("jailed") {
        eprintln!(
            "skipped: main.rs does not dispatch __jail yet: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
        );
        return;
    }
    assert_eq!(
        stdout.trim(),
        format!("jailed {}", f.comp1.display()),
        "{out:?}"
    );
}

/// The Python worker's case: the interpreter and its standard library are readable once the
/// daemon adds `sys.prefix` and `sys.base_prefix` (e.g. `/root/.pyenv/versions/…` in CI).
#[test]
fn python_runs_in_the_jail_with_its_prefixes_granted() {
    let Some(_abi) = landlock_abi() else { return };
    let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sys; print(sys.executable); print(sys.prefix); print(sys.base_prefix)",
        ])
        .output()
    else {
        eprintln!("skipped: no python3");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().map(PathBuf::from);
    let (Some(exe), Some(prefix), Some(base)) = (lines.next(), lines.next(), lines.next()) else {
        eprintln!("skipped: python3 did not answer: {out:?}");
        return;
    };
    let f = Fixture::new();
    let mut spec = f.spec(true);
    if let Some(ll) = spec.landlock.as_mut() {
        ll.read_exec.extend([prefix, base]);
    }
    let script = format!(
        "import json, os, tempfile\n\
         open('result.txt', 'w').write('ok')\n\
         with tempfile.NamedTemporaryFile() as t: tmp = t.name\n\
         try:\n    open({secret:?}).read(); other = 'readable'\n\
         except PermissionError: other = 'EACCES'\n\
         print(json.dumps([os.getcwd(), tmp.startswith(os.getcwd() + '/.tmp/'), other]))",
        secret = f.comp2.join("secret.txt").display().to_string()
    );
    let out = run_jail(&spec, &exe, &["-c", &script], &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        last_line(&out.stdout),
        format!("[\"{}\", true, \"EACCES\"]", f.comp1.display())
    );
    assert_eq!(
        fs::read_to_string(f.comp1.join("result.txt")).unwrap(),
        "ok"
    );
}
