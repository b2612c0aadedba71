//! The program-job spawner (src/sandbox/spawner.rs) for real: our binary as `__spawner`, real
//! forks, the jail's steps in the children, real pipes and wait statuses.

use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use dispynode::sandbox::{describe_exit_code, JailSpec, LandlockPolicy, Spawner, SpawnerError};
use nix::fcntl::OFlag;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getsid, pipe2, Pid};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

const BIN: &str = env!("CARGO_BIN_EXE_dispynode");
const LIMIT: Duration = Duration::from_secs(20);

fn spec(dir: &Path) -> JailSpec {
    let mut spec = JailSpec::new(dir);
    spec.env = JailSpec::standard_env(dir, "/usr/bin:/bin");
    spec.allow_root = true; // the tests run as root; the daemon never sets it
    spec
}

struct Ran {
    pid: i32,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

async fn read_all(fd: OwnedFd) -> String {
    let mut r = pipe::Receiver::from_owned_fd(fd).unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Spawns `program args` and waits for its exit and output.
async fn run(sp: &Spawner, spec: JailSpec, program: &str, args: &[&str]) -> Ran {
    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).unwrap();
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).unwrap();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let spawned = sp
        .spawn(spec, program, &args, out_w, err_w)
        .await
        .expect("spawned");
    let (stdout, stderr, status) = tokio::time::timeout(LIMIT, async {
        tokio::join!(read_all(out_r), read_all(err_r), spawned.exit)
    })
    .await
    .expect("the program ends");
    Ran {
        pid: spawned.pid,
        status: ExitStatus::from_raw(status.expect("an exit status")),
        stdout,
        stderr,
    }
}

fn start() -> Arc<Spawner> {
    Spawner::start(Path::new(BIN)).expect("the spawner starts")
}

#[tokio::test]
async fn a_program_runs_jailed_with_its_output_and_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let sp = start();
    let script = "echo out $1; echo err >&2; echo \"$PWD $HOME\"; exit 3";
    let ran = run(&sp, spec(dir.path()), "/bin/sh", &["-c", script, "sh", "x"]).await;
    assert_eq!(ran.status.code(), Some(3), "{}", ran.stderr);
    let d = dir.path().display();
    assert_eq!(ran.stdout, format!("out x\n{d} {d}\n"));
    assert_eq!(ran.stderr, "err\n");
    assert!(ran.pid > 0);
}

#[tokio::test]
async fn the_program_is_in_its_own_session_and_a_kill_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let sp = start();
    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).unwrap();
    let (_err_r, err_w) = pipe2(OFlag::O_CLOEXEC).unwrap();
    let spawned = sp
        .spawn(
            spec(dir.path()),
            "/bin/sh",
            &["-c".into(), "echo up; exec sleep 30".into()],
            out_w,
            err_w,
        )
        .await
        .unwrap();
    let mut r = pipe::Receiver::from_owned_fd(out_r).unwrap();
    let mut up = [0u8; 3];
    tokio::time::timeout(LIMIT, r.read_exact(&mut up))
        .await
        .unwrap()
        .unwrap();
    let pid = Pid::from_raw(spawned.pid);
    assert_eq!(getsid(Some(pid)).unwrap(), pid);
    killpg(pid, Signal::SIGKILL).unwrap();
    let status = tokio::time::timeout(LIMIT, spawned.exit)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ExitStatus::from_raw(status).signal(), Some(libc::SIGKILL));
}

#[tokio::test]
async fn a_failed_step_is_reported_like_the_helpers() {
    let dir = tempfile::tempdir().unwrap();
    let sp = start();
    let ran = run(&sp, spec(dir.path()), "no-such-program-here", &[]).await;
    let code = ran.status.code().unwrap();
    assert!(describe_exit_code(code).is_some(), "exit {code}");
    assert!(
        ran.stderr.starts_with("dispynode-jail: ") && ran.stderr.contains("no-such-program-here"),
        "{}",
        ran.stderr
    );
    // Without allow_root, root is refused before anything runs.
    let mut strict = spec(dir.path());
    strict.allow_root = false;
    if nix::unistd::geteuid().is_root() {
        let ran = run(&sp, strict, "/bin/true", &[]).await;
        assert_ne!(ran.status.code(), Some(0));
        assert!(ran.stderr.contains("root"), "{}", ran.stderr);
    }
}

#[tokio::test]
async fn landlock_confines_what_the_spawner_starts() {
    if !matches!(
        dispynode::sandbox::probe().kernel,
        dispynode::sandbox::landlock::KernelLandlock::Available(_)
    ) {
        eprintln!("SKIP: no landlock on this kernel");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path());
    s.landlock = Some(LandlockPolicy::for_computation(
        dir.path(),
        Vec::<std::path::PathBuf>::new(),
        Vec::<std::path::PathBuf>::new(),
        false,
    ));
    let script = format!(
        "echo in > inside && echo ok; echo out > {}/escaped || echo denied",
        outside.path().display()
    );
    let sp = start();
    // The first job builds the policy's ruleset in the spawner, the second reuses it; a
    // required policy is built and checked by the child itself, as the jail helper does.
    let mut required = s.clone();
    if let Some(p) = required.landlock.as_mut() {
        p.required = true;
    }
    let mut specs = vec![s.clone(), s];
    if dispynode::sandbox::probe().satisfies_required() {
        specs.push(required);
    }
    for s in specs {
        let ran = run(&sp, s, "/bin/sh", &["-c", &script]).await;
        assert_eq!(ran.stdout, "ok\ndenied\n", "{}", ran.stderr);
        assert!(dir.path().join("inside").exists());
        assert!(!outside.path().join("escaped").exists());
        std::fs::remove_file(dir.path().join("inside")).unwrap();
    }
}

#[tokio::test]
async fn many_programs_at_once_each_get_their_own_status() {
    let dir = tempfile::tempdir().unwrap();
    let sp = start();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..40 {
        let sp = sp.clone();
        let s = spec(dir.path());
        set.spawn(async move {
            let code = (i % 7).to_string();
            (
                i,
                run(&sp, s, "/bin/sh", &["-c", "echo $1; exit $1", "sh", &code]).await,
            )
        });
    }
    let mut seen = 0;
    while let Some(r) = set.join_next().await {
        let (i, ran) = r.unwrap();
        assert_eq!(ran.status.code(), Some(i % 7));
        assert_eq!(ran.stdout, format!("{}\n", i % 7));
        seen += 1;
    }
    assert_eq!(seen, 40);
}

#[tokio::test]
async fn when_the_spawner_dies_its_programs_die_and_waiters_learn_it() {
    let dir = tempfile::tempdir().unwrap();
    let sp = start();
    let (_out_r, out_w) = pipe2(OFlag::O_CLOEXEC).unwrap();
    let (_err_r, err_w) = pipe2(OFlag::O_CLOEXEC).unwrap();
    let spawned = sp
        .spawn(spec(dir.path()), "/bin/sleep", &["30".into()], out_w, err_w)
        .await
        .unwrap();
    let spawner_pid = std::fs::read_to_string(format!("/proc/{}/stat", spawned.pid))
        .unwrap()
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<i32>()
        .unwrap();
    assert_ne!(
        spawner_pid,
        std::process::id() as i32,
        "the spawner is its parent"
    );
    nix::sys::signal::kill(Pid::from_raw(spawner_pid), Signal::SIGKILL).unwrap();
    let waited = tokio::time::timeout(LIMIT, spawned.exit).await.unwrap();
    assert!(waited.is_err(), "no status comes from a dead spawner");
    // The program died with it (its parent-death signal).
    let deadline = std::time::Instant::now() + LIMIT;
    while Path::new(&format!("/proc/{}", spawned.pid)).exists() {
        let state =
            std::fs::read_to_string(format!("/proc/{}/stat", spawned.pid)).unwrap_or_default();
        if state.contains(") Z ") {
            break; // dead, not reaped yet (reparented)
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the program outlived its spawner"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = std::time::Instant::now() + LIMIT;
    while !sp.is_gone() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_o, w1) = pipe2(OFlag::O_CLOEXEC).unwrap();
    let (_e, w2) = pipe2(OFlag::O_CLOEXEC).unwrap();
    assert!(matches!(
        sp.spawn(spec(dir.path()), "/bin/true", &[], w1, w2).await,
        Err(SpawnerError::Gone)
    ));
}

/// Most jobs start vfork-style (src/sandbox/vfork.rs); one that switches identity as root
/// is forked and switched by the jail's own steps. Both ways, side by side in one spawner:
/// the same jail, the same reporting.
#[tokio::test]
async fn both_ways_of_starting_a_job_give_the_same_jail() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: switching identity needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let sp = start();
    let script =
        "id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; ls /proc/self/fd | wc -l";
    let plain = run(&sp, spec(dir.path()), "/bin/sh", &["-c", script]).await;
    let mut switched = spec(dir.path());
    switched.allow_root = false;
    switched.identity = Some(dispynode::sandbox::spawn::Identity {
        uid: 65534,
        gid: 65534,
    });
    let forked = run(&sp, switched.clone(), "/bin/sh", &["-c", script]).await;
    assert_eq!(plain.status.code(), Some(0), "{}", plain.stderr);
    assert_eq!(forked.status.code(), Some(0), "{}", forked.stderr);
    let rest = |out: &str| out.lines().skip(1).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(plain.stdout.lines().next(), Some("0"));
    assert_eq!(forked.stdout.lines().next(), Some("65534"));
    assert_eq!(rest(&plain.stdout), rest(&forked.stdout));
    assert_eq!(
        rest(&plain.stdout)[..2],
        ["CapEff:\t0000000000000000", "NoNewPrivs:\t1"]
    );
    // A failed step the same way: the line and the status.
    let missing = dir.path().join("gone");
    let mut a = spec(&missing);
    a.env = JailSpec::standard_env(dir.path(), "/usr/bin:/bin");
    let mut b = switched;
    b.cwd = missing;
    let (a, b) = (
        run(&sp, a, "/bin/true", &[]).await,
        run(&sp, b, "/bin/true", &[]).await,
    );
    assert_eq!(a.status.code(), b.status.code());
    assert!(describe_exit_code(a.status.code().unwrap()).is_some());
    assert!(
        a.stderr.starts_with("dispynode-jail: chdir "),
        "{}",
        a.stderr
    );
    assert!(
        b.stderr.starts_with("dispynode-jail: chdir "),
        "{}",
        b.stderr
    );
}
