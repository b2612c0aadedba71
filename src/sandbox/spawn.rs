//! The spawn path: `dispynode __jail <spec> -- <program> <args…>`.
//!
//! The daemon is multi-threaded (tokio), and credentials, capabilities and Landlock domains are
//! per thread; a `pre_exec` hook after `fork` in a multi-threaded process may only call
//! async-signal-safe functions. So the daemon never isolates a job itself: it re-executes its
//! own binary ([`jail_command`]) with the job's [`JailSpec`] as one JSON argument. That
//! process is single-threaded; [`jail_main`] applies, in this order, each step a function with
//! its own error variant and exit status:
//!
//! 1. close every fd but 0, 1, 2 and the spec's `keep_fds`; reset signal mask and `SIGPIPE`
//! 2. build the job's environment from the spec only (nothing of ours is passed on)
//! 3. join the job's cgroup (`<cgroup>/cgroup.procs`), when the spec names one
//! 4. `setsid` (own session and process group: the daemon can `killpg` the whole job, and the
//!    job has no controlling terminal to push input into, CVE-2017-5226)
//! 5. `PR_SET_PDEATHSIG(SIGKILL)`, then check that the parent is still the daemon
//! 6. rlimits: `RLIMIT_CORE` 0, and the spec's limits
//! 7. as root: `setgroups([])`, `setresgid`, `setresuid` to the spec's ids (then the death
//!    signal again: the kernel clears it when the euid changes); never stays root
//! 8. drop every capability (bounding, ambient, effective, inheritable, permitted)
//! 9. `PR_SET_NO_NEW_PRIVS`
//! 10. Landlock (see [`super::landlock`]), when the spec has a policy
//! 11. `chdir` to the spec's `cwd` and `execve` the program (searched in the job's `PATH`)
//!
//! On success the helper prints nothing: what remains is the job. On failure it writes one line
//! `dispynode-jail: <step>: <error>` on stderr and exits with the step's status
//! ([`describe_exit_code`]); it never execs the job with a step missing.

use std::convert::Infallible;
use std::ffi::{CString, OsStr, OsString};
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::prctl;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{signal, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{self, Gid, Uid};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::landlock::{self as ll, LandlockError, LandlockPolicy};
use super::privilege::{self, PrivilegeError};

/// `argv[1]` that selects the jail helper.
pub const JAIL_ARG: &str = "__jail";

/// Default `PATH` of a job when the spec's environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Everything the helper needs to know about one job. Serialised as one JSON argument.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailSpec {
    /// Working directory of the job (the computation's directory).
    pub cwd: PathBuf,
    /// The job's whole environment (see [`JailSpec::standard_env`]).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Descriptors besides 0, 1 and 2 that stay open (e.g. a socket at fd 3).
    #[serde(default)]
    pub keep_fds: Vec<i32>,
    /// The job's cgroup directory; the helper writes its pid to `cgroup.procs`.
    pub cgroup: Option<PathBuf>,
    /// The daemon's pid: after `PR_SET_PDEATHSIG` the helper checks its parent is still this
    /// process (else the daemon died before the signal was armed). `None`: the parent found at
    /// start.
    pub parent_pid: Option<i32>,
    #[serde(default)]
    pub rlimits: Rlimits,
    /// The uid/gid to become when the helper runs as root.
    pub identity: Option<Identity>,
    /// Let the job run as uid 0 (tests only; the daemon never sets it).
    #[serde(default)]
    pub allow_root: bool,
    /// The Landlock ruleset; `None` skips Landlock (tests; the daemon always sets one).
    pub landlock: Option<LandlockPolicy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// Resource limits (soft = hard = the value, capped at the current hard limit). `RLIMIT_CORE`
/// is always 0: a job's core dump could hold other data and fill the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimits {
    pub nofile: Option<u64>,
    /// Largest file the job may write, in bytes.
    pub fsize: Option<u64>,
    /// Processes of the job's uid (all jobs of that uid together: prefer the cgroup's pids.max).
    pub nproc: Option<u64>,
    /// Address space in bytes (without cgroups, the only memory cap).
    pub address_space: Option<u64>,
    /// CPU time in seconds.
    pub cpu_seconds: Option<u64>,
}

impl JailSpec {
    /// A spec with the job's working directory and this process as the expected parent;
    /// everything else empty.
    pub fn new(cwd: impl Into<PathBuf>) -> JailSpec {
        JailSpec {
            cwd: cwd.into(),
            parent_pid: i32::try_from(std::process::id()).ok(),
            ..JailSpec::default()
        }
    }

    /// The usual environment of a job of the computation in `compdir`: `PATH`, `HOME` and
    /// `TMPDIR` (`<compdir>/.tmp`: the daemon creates it) inside its directory, `LANG`.
    pub fn standard_env(compdir: &Path, path: &str) -> Vec<(String, String)> {
        let dir = compdir.to_string_lossy().into_owned();
        vec![
            ("PATH".into(), path.into()),
            ("HOME".into(), dir.clone()),
            ("TMPDIR".into(), format!("{dir}/.tmp")),
            ("LANG".into(), "C.UTF-8".into()),
        ]
    }

    /// The spec as helper arguments (one JSON argument).
    pub fn to_args(&self) -> Vec<OsString> {
        // Serialising plain data (strings, numbers, UTF-8 paths) cannot fail; a non-UTF-8 path
        // is the one way, and it is reported by the helper as a bad spec.
        vec![OsString::from(
            serde_json::to_string(self).unwrap_or_else(|e| format!("unserialisable spec: {e}")),
        )]
    }

    pub fn from_arg(arg: &OsStr) -> Result<JailSpec, JailError> {
        serde_json::from_slice(arg.as_bytes())
            .map_err(|e| JailError::Usage(format!("bad spec: {e}")))
    }
}

/// A parsed helper command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailInvocation {
    pub spec: JailSpec,
    pub program: OsString,
    pub args: Vec<OsString>,
}

/// Parses `… __jail <spec> -- <program> <args…>` (the whole `argv`, or from `__jail` on).
pub fn parse_jail_args(argv: &[OsString]) -> Result<JailInvocation, JailError> {
    let usage = |m: &str| {
        JailError::Usage(format!(
            "{m} (usage: {JAIL_ARG} <spec> -- <program> <args…>)"
        ))
    };
    let start = argv
        .iter()
        .position(|a| a == JAIL_ARG)
        .ok_or_else(|| usage("no __jail argument"))?;
    let rest = &argv[start + 1..];
    let (spec, rest) = rest.split_first().ok_or_else(|| usage("no spec"))?;
    let spec = JailSpec::from_arg(spec)?;
    match rest.split_first() {
        Some((dashes, rest)) if dashes == "--" => {
            let (program, args) = rest.split_first().ok_or_else(|| usage("no program"))?;
            Ok(JailInvocation {
                spec,
                program: program.clone(),
                args: args.to_vec(),
            })
        }
        _ => Err(usage("no -- before the program")),
    }
}

/// The command that runs `program args` jailed by `spec`: our own binary
/// (`/proc/self/exe`, still right after a package upgrade replaced the file) as
/// `__jail <spec> -- program args`, with an empty environment and `/` as working directory.
/// Set stdio, then spawn it (`tokio::process::Command::from(cmd)` in async code). Do not set
/// `process_group`: the helper's `setsid` needs it not to be a group leader.
pub fn jail_command<S: AsRef<OsStr>>(
    spec: &JailSpec,
    program: impl AsRef<OsStr>,
    args: impl IntoIterator<Item = S>,
) -> Command {
    jail_command_with(Path::new("/proc/self/exe"), spec, program, args)
}

/// [`jail_command`] with another helper binary (e.g. the installed `dispynode`).
pub fn jail_command_with<S: AsRef<OsStr>>(
    exe: &Path,
    spec: &JailSpec,
    program: impl AsRef<OsStr>,
    args: impl IntoIterator<Item = S>,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg(JAIL_ARG)
        .args(spec.to_args())
        .arg("--")
        .arg(program)
        .args(args)
        .env_clear()
        .current_dir("/");
    cmd
}

/// One variant per step; each has its own exit status.
#[derive(Debug, Error)]
pub enum JailError {
    #[error("usage: {0}")]
    Usage(String),
    #[error("close stray fds: {0}")]
    CloseFds(#[source] io::Error),
    #[error("reset signals: {0}")]
    Signals(#[source] nix::Error),
    #[error("environment: {0}")]
    Env(String),
    #[error("join cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("setsid: {0}")]
    Setsid(#[source] nix::Error),
    #[error("PR_SET_PDEATHSIG: {0}")]
    ParentDeathSignal(#[source] nix::Error),
    #[error("parent changed from {expected} to {now}: the daemon is gone")]
    ParentGone { expected: i32, now: i32 },
    #[error("setrlimit {resource}: {source}")]
    Rlimit {
        resource: &'static str,
        source: nix::Error,
    },
    #[error("identity: {0}")]
    Identity(String),
    #[error("refusing to run a job as root (no uid/gid in the spec)")]
    RunsAsRoot,
    #[error("capabilities: {0}")]
    Capabilities(#[source] PrivilegeError),
    #[error("PR_SET_NO_NEW_PRIVS: {0}")]
    NoNewPrivs(#[source] nix::Error),
    #[error("landlock: {0}")]
    Landlock(#[source] LandlockError),
    #[error("landlock: {0}")]
    LandlockNotEnforced(#[source] LandlockError),
    #[error("chdir {path}: {source}")]
    Chdir { path: PathBuf, source: nix::Error },
    #[error("exec {program}: {source}")]
    Exec { program: String, source: nix::Error },
}

/// First exit status of the helper's own failures (the job's statuses are its own business).
const EXIT_BASE: i32 = 240;

const EXIT_NAMES: &[&str] = &[
    "bad jail arguments",
    "closing stray fds failed",
    "resetting signals failed",
    "bad job environment",
    "joining the job cgroup failed",
    "setsid failed",
    "PR_SET_PDEATHSIG failed",
    "the daemon died before the job started",
    "setrlimit failed",
    "switching uid/gid failed",
    "refused to run the job as root",
    "dropping capabilities failed",
    "PR_SET_NO_NEW_PRIVS failed",
    "landlock failed",
    "landlock required but not fully enforced",
    "chdir to the job directory failed",
];

impl JailError {
    /// The helper's exit status for this failure: 240 + the step, 126/127 for exec (as shells
    /// do: found but not executable / not found).
    pub fn exit_code(&self) -> i32 {
        let step = match self {
            JailError::Usage(_) => 0,
            JailError::CloseFds(_) => 1,
            JailError::Signals(_) => 2,
            JailError::Env(_) => 3,
            JailError::Cgroup { .. } => 4,
            JailError::Setsid(_) => 5,
            JailError::ParentDeathSignal(_) => 6,
            JailError::ParentGone { .. } => 7,
            JailError::Rlimit { .. } => 8,
            JailError::Identity(_) => 9,
            JailError::RunsAsRoot => 10,
            JailError::Capabilities(_) => 11,
            JailError::NoNewPrivs(_) => 12,
            JailError::Landlock(_) => 13,
            JailError::LandlockNotEnforced(_) => 14,
            JailError::Chdir { .. } => 15,
            JailError::Exec { source, .. } => {
                return if *source == nix::Error::ENOENT || *source == nix::Error::ENOTDIR {
                    127
                } else {
                    126
                }
            }
        };
        EXIT_BASE + step
    }
}

/// What a helper exit status means (240–255: a jail step failed; 126/127: exec failed, or the
/// job's own status). The helper's stderr line has the details.
pub fn describe_exit_code(code: i32) -> Option<&'static str> {
    match code {
        126 => Some("the job's program could not be executed (or exited 126)"),
        127 => Some("the job's program was not found (or exited 127)"),
        c if c >= EXIT_BASE => EXIT_NAMES.get((c - EXIT_BASE) as usize).copied(),
        _ => None,
    }
}

/// The helper's entry point: `main` calls it with `std::env::args_os().collect()` when
/// `argv[1] == "__jail"`, before anything else (no logging, no runtime, no threads). It either
/// becomes the job (`execve`) or exits with the failed step's status.
pub fn jail_main(args: Vec<OsString>) -> ! {
    let err = match parse_jail_args(&args) {
        Ok(inv) => match run(&inv, None) {
            Ok(never) => match never {},
            Err(e) => e,
        },
        Err(e) => e,
    };
    let _ = writeln!(io::stderr(), "dispynode-jail: {err}");
    std::process::exit(err.exit_code())
}

/// A Landlock ruleset the spawner built for the spec's (not required) policy, kept open
/// across the fd step: its descriptor, or None when the kernel has no Landlock.
pub(super) struct Prebuilt(pub Option<RawFd>);

/// The steps, top to bottom, in the order they are applied (also in the spawner's children,
/// which may bring the Landlock ruleset `prebuilt`).
pub(super) fn run(
    inv: &JailInvocation,
    prebuilt: Option<Prebuilt>,
) -> Result<Infallible, JailError> {
    let spec = &inv.spec;
    let parent = spec
        .parent_pid
        .unwrap_or_else(|| unistd::getppid().as_raw());
    let mut keep = spec.keep_fds.clone();
    keep.extend(prebuilt.as_ref().and_then(|p| p.0));
    close_stray_fds(&keep)?;
    reset_signals()?;
    let envp = job_environment(&spec.env)?;
    if let Some(cgroup) = &spec.cgroup {
        join_cgroup(cgroup)?;
    }
    unistd::setsid().map_err(JailError::Setsid)?;
    parent_death_signal(parent)?;
    apply_rlimits(&spec.rlimits)?;
    switch_identity(spec.identity, parent)?;
    refuse_root(spec.allow_root)?;
    privilege::drop_capabilities().map_err(JailError::Capabilities)?;
    prctl::set_no_new_privs().map_err(JailError::NoNewPrivs)?;
    if let Some(policy) = &spec.landlock {
        match prebuilt {
            Some(Prebuilt(Some(fd))) if !policy.required => {
                ll::restrict_self_with(fd)
                    .map_err(|e| JailError::Landlock(LandlockError::Restrict(e)))?;
            }
            Some(Prebuilt(None)) if !policy.required => {} // no Landlock: best effort
            _ => apply_landlock(policy)?,
        }
    }
    unistd::chdir(&spec.cwd).map_err(|source| JailError::Chdir {
        path: spec.cwd.clone(),
        source,
    })?;
    exec(&inv.program, &inv.args, &envp, &spec.env)
}

/// Closes every descriptor except 0, 1, 2 and `keep`: `close_range(2)` over the gaps (Linux
/// 5.9), else each fd listed in `/proc/self/fd`.
fn close_stray_fds(keep: &[i32]) -> Result<(), JailError> {
    let (keep, spans) = close_spans(keep);
    for &(first, last) in &spans {
        // SAFETY: close_range only closes descriptors; no Rust object of this single-threaded
        // helper owns any of them at this point (we have opened nothing yet).
        let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOSYS) {
                return close_listed_fds(&keep);
            }
            return Err(JailError::CloseFds(e));
        }
    }
    Ok(())
}

/// The descriptors to keep (0, 1, 2 and `keep`, sorted) and the `close_range` spans that
/// close all others.
pub(super) fn close_spans(keep: &[i32]) -> (Vec<u32>, Vec<(u32, u32)>) {
    let mut keep: Vec<u32> = [0, 1, 2]
        .into_iter()
        .chain(keep.iter().filter_map(|&fd| u32::try_from(fd).ok()))
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut next = 0u32;
    let mut spans = Vec::new();
    for &k in &keep {
        if k > next {
            spans.push((next, k - 1));
        }
        next = k.saturating_add(1);
    }
    spans.push((next, u32::MAX));
    (keep, spans)
}

/// Fallback for kernels before 5.9.
fn close_listed_fds(keep: &[u32]) -> Result<(), JailError> {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(JailError::CloseFds)?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if u32::try_from(fd).is_ok_and(|f| !keep.contains(&f)) {
            // SAFETY: as above; EBADF (the directory fd of the listing, already closed) is fine.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Unblocks every signal and restores `SIGPIPE`, which the Rust runtime of this helper set to
/// "ignore" (ignored signals stay ignored across exec: a shell pipeline would misbehave).
fn reset_signals() -> Result<(), JailError> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(JailError::Signals)?;
    // SAFETY: installing SIG_DFL runs no handler code; this process is single-threaded.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map_err(JailError::Signals)?;
    Ok(())
}

/// The job's environment: exactly the spec's variables.
pub(super) fn job_environment(env: &[(String, String)]) -> Result<Vec<CString>, JailError> {
    env.iter()
        .map(|(k, v)| {
            if k.is_empty() || k.contains('=') {
                return Err(JailError::Env(format!("invalid variable name {k:?}")));
            }
            CString::new(format!("{k}={v}"))
                .map_err(|_| JailError::Env(format!("NUL byte in variable {k}")))
        })
        .collect()
}

fn join_cgroup(dir: &Path) -> Result<(), JailError> {
    let path = dir.join("cgroup.procs");
    let err = |source| JailError::Cgroup {
        path: path.clone(),
        source,
    };
    let mut f = OpenOptions::new().append(true).open(&path).map_err(err)?;
    f.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(err)
}

/// Arms `SIGKILL` on the parent's death, then checks the parent is still `parent` (it could
/// have died before the signal was armed: we would be an orphan nobody kills).
fn parent_death_signal(parent: i32) -> Result<(), JailError> {
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(JailError::ParentDeathSignal)?;
    let now = unistd::getppid().as_raw();
    if now != parent {
        return Err(JailError::ParentGone {
            expected: parent,
            now,
        });
    }
    Ok(())
}

fn apply_rlimits(limits: &Rlimits) -> Result<(), JailError> {
    let set = |resource: Resource, name: &'static str, value: u64| {
        let err = |source| JailError::Rlimit {
            resource: name,
            source,
        };
        let (_, hard) = getrlimit(resource).map_err(err)?;
        let v = value.min(hard);
        setrlimit(resource, v, v).map_err(err)
    };
    for (resource, name, value) in rlimit_list(limits) {
        set(resource, name, value)?;
    }
    Ok(())
}

/// The limits a job gets, in the order they are set: `RLIMIT_CORE` 0, then the spec's.
pub(super) fn rlimit_list(limits: &Rlimits) -> Vec<(Resource, &'static str, u64)> {
    let mut list = vec![(Resource::RLIMIT_CORE, "RLIMIT_CORE", 0)];
    for (resource, name, value) in [
        (Resource::RLIMIT_NOFILE, "RLIMIT_NOFILE", limits.nofile),
        (Resource::RLIMIT_FSIZE, "RLIMIT_FSIZE", limits.fsize),
        (Resource::RLIMIT_NPROC, "RLIMIT_NPROC", limits.nproc),
        (Resource::RLIMIT_AS, "RLIMIT_AS", limits.address_space),
        (Resource::RLIMIT_CPU, "RLIMIT_CPU", limits.cpu_seconds),
    ] {
        if let Some(v) = value {
            list.push((resource, name, v));
        }
    }
    list
}

/// As root with an identity in the spec: become it for good. Not root: the identity must be
/// ours already (the daemon dropped privileges; jobs run as the daemon's user).
fn switch_identity(identity: Option<Identity>, parent: i32) -> Result<(), JailError> {
    let Some(id) = identity else {
        return Ok(());
    };
    if unistd::geteuid().is_root() {
        privilege::switch_identity(Uid::from_raw(id.uid), Gid::from_raw(id.gid))
            .map_err(|e| JailError::Identity(e.to_string()))?;
        // The kernel clears the parent-death signal when the euid changes: arm it again.
        return parent_death_signal(parent);
    }
    let res_uid = unistd::getresuid().map_err(|e| JailError::Identity(e.to_string()))?;
    let res_gid = unistd::getresgid().map_err(|e| JailError::Identity(e.to_string()))?;
    let uids = [res_uid.real, res_uid.effective, res_uid.saved];
    let gids = [res_gid.real, res_gid.effective, res_gid.saved];
    if uids.iter().all(|u| u.as_raw() == id.uid) && gids.iter().all(|g| g.as_raw() == id.gid) {
        Ok(())
    } else {
        Err(JailError::Identity(format!(
            "not root: cannot become uid {} gid {}",
            id.uid, id.gid
        )))
    }
}

fn refuse_root(allow_root: bool) -> Result<(), JailError> {
    let ids = unistd::getresuid().map_err(|e| JailError::Identity(e.to_string()))?;
    let root = [ids.real, ids.effective, ids.saved]
        .iter()
        .any(|u| u.is_root());
    if root && !allow_root {
        return Err(JailError::RunsAsRoot);
    }
    Ok(())
}

fn apply_landlock(policy: &LandlockPolicy) -> Result<(), JailError> {
    match ll::restrict_self(policy) {
        Ok(_status) => Ok(()),
        Err(e @ LandlockError::NotFullyEnforced { .. }) => Err(JailError::LandlockNotEnforced(e)),
        Err(e) => Err(JailError::Landlock(e)),
    }
}

/// `execve` the program; a name without `/` is searched in the job's `PATH` (like `execvp`,
/// but with the job's environment, not ours).
fn exec(
    program: &OsStr,
    args: &[OsString],
    envp: &[CString],
    env: &[(String, String)],
) -> Result<Infallible, JailError> {
    let exec_err = |source| JailError::Exec {
        program: program.to_string_lossy().into_owned(),
        source,
    };
    let cstr = |s: &OsStr| CString::new(s.as_bytes()).map_err(|_| exec_err(nix::Error::EINVAL));
    let mut argv = vec![cstr(program)?];
    for a in args {
        argv.push(cstr(a)?);
    }
    let candidates = exec_candidates(program, env).ok_or_else(|| exec_err(nix::Error::EINVAL))?;
    if !searched_on_path(program) {
        let e = unistd::execve(&candidates[0], &argv, envp).unwrap_err();
        return Err(exec_err(e));
    }
    let mut last = nix::Error::ENOENT;
    let mut denied = false;
    for candidate in &candidates {
        let e = unistd::execve(candidate, &argv, envp).unwrap_err();
        match e {
            nix::Error::ENOENT | nix::Error::ENOTDIR | nix::Error::ESTALE => {}
            nix::Error::EACCES | nix::Error::EPERM => denied = true,
            other => return Err(exec_err(other)),
        }
        last = e;
    }
    Err(exec_err(if denied { nix::Error::EACCES } else { last }))
}

/// Whether `program` is looked for in the job's `PATH` (a name without `/`, as `execvp`).
pub(super) fn searched_on_path(program: &OsStr) -> bool {
    !program.as_bytes().contains(&b'/')
}

/// The paths to `execve`, in order: `program` itself when it has a `/`, else each directory
/// of the job's `PATH` (an empty entry is the working directory) joined with it. None when a
/// path holds a NUL byte.
pub(super) fn exec_candidates(program: &OsStr, env: &[(String, String)]) -> Option<Vec<CString>> {
    if !searched_on_path(program) {
        return Some(vec![CString::new(program.as_bytes()).ok()?]);
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    path.split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            CString::new(Path::new(dir).join(program).as_os_str().as_bytes()).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(items: &[&str]) -> Vec<OsString> {
        items.iter().map(OsString::from).collect()
    }

    #[test]
    fn spec_round_trips_through_one_argument() {
        let mut spec = JailSpec::new("/var/tmp/dispy/c1");
        spec.env = JailSpec::standard_env(Path::new("/var/tmp/dispy/c1"), DEFAULT_PATH);
        spec.cgroup = Some("/sys/fs/cgroup/x/jobs/j1".into());
        spec.identity = Some(Identity { uid: 998, gid: 998 });
        spec.rlimits.nofile = Some(1024);
        spec.landlock = Some(LandlockPolicy::for_computation(
            Path::new("/var/tmp/dispy/c1"),
            [],
            [PathBuf::from("/var/lib/dispynode")],
            true,
        ));
        let args = spec.to_args();
        assert_eq!(args.len(), 1);
        assert_eq!(JailSpec::from_arg(&args[0]).unwrap(), spec);
        assert!(spec
            .env
            .contains(&("TMPDIR".into(), "/var/tmp/dispy/c1/.tmp".into())));
    }

    #[test]
    fn parses_the_command_line() {
        let spec = JailSpec::new("/");
        let json = spec.to_args().remove(0).into_string().unwrap();
        let inv = parse_jail_args(&argv(&[
            "dispynode",
            "__jail",
            &json,
            "--",
            "sh",
            "-c",
            "x",
        ]))
        .unwrap();
        assert_eq!(inv.spec, spec);
        assert_eq!(inv.program, "sh");
        assert_eq!(inv.args, argv(&["-c", "x"]));
        for bad in [
            argv(&["dispynode"]),
            argv(&["dispynode", "__jail"]),
            argv(&["dispynode", "__jail", &json, "sh"]),
            argv(&["dispynode", "__jail", &json, "--"]),
            argv(&["dispynode", "__jail", "{", "--", "sh"]),
            argv(&[
                "dispynode",
                "__jail",
                r#"{"cwd":"/","bogus":1}"#,
                "--",
                "sh",
            ]),
        ] {
            let e = parse_jail_args(&bad).unwrap_err();
            assert_eq!(e.exit_code(), 240, "{bad:?}: {e}");
        }
    }

    #[test]
    fn jail_command_line() {
        let spec = JailSpec::new("/");
        let cmd = jail_command(&spec, "python3", ["-c", "print(1)"]);
        assert_eq!(cmd.get_program(), "/proc/self/exe");
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args[0], "__jail");
        assert_eq!(args[2], "--");
        assert_eq!(&args[3..], ["python3", "-c", "print(1)"]);
        assert_eq!(cmd.get_current_dir(), Some(Path::new("/")));
    }

    #[test]
    fn exit_codes_are_distinct_and_described() {
        assert_eq!(EXIT_NAMES.len(), 16);
        assert_eq!(EXIT_BASE + EXIT_NAMES.len() as i32 - 1, 255);
        assert_eq!(describe_exit_code(240), Some("bad jail arguments"));
        assert_eq!(describe_exit_code(253), Some("landlock failed"));
        assert_eq!(describe_exit_code(1), None);
        let e = JailError::Exec {
            program: "x".into(),
            source: nix::Error::ENOENT,
        };
        assert_eq!(e.exit_code(), 127);
        assert_eq!(JailError::RunsAsRoot.exit_code(), 250);
    }

    #[test]
    fn environment_is_exactly_the_spec() {
        let env = job_environment(&[("A".into(), "1".into()), ("B".into(), "x=y".into())]).unwrap();
        assert_eq!(env, [c"A=1".to_owned(), c"B=x=y".to_owned()]);
        assert!(job_environment(&[("A=B".into(), "1".into())]).is_err());
        assert!(job_environment(&[("".into(), "1".into())]).is_err());
        assert!(job_environment(&[("A".into(), "1\0".into())]).is_err());
    }
}
