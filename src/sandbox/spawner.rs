//! The spawner: a single-threaded process that starts program jobs without a second `exec`.
//!
//! The jail helper ([`super::spawn`]) costs every program job one more `execve` (our binary)
//! before the program's own: about 0.4 ms of CPU and as much latency on a 2-core machine. The
//! spawner is that helper made once per node: our own binary, exec'd as `dispynode __spawner`
//! with a `SOCK_SEQPACKET` socket as its stdin. For each request it starts a child (with a job
//! cgroup, `clone3(CLONE_INTO_CGROUP)`: the child is born there, no migration); the child
//! applies exactly the jail's steps ([`super::spawn::run`], in the same order, in a process
//! that is single-threaded and holds nothing of the daemon's) and `exec`s the program. Most
//! children are started vfork-style ([`super::vfork`]: the same steps as plain system calls,
//! no copy of the spawner's memory); the rest are forked and run [`super::spawn::run`]. The spawner
//! reaps its children and reports their wait statuses. It dies with the daemon
//! (`PR_SET_PDEATHSIG`), and its children with it (their own death signal, armed by the jail
//! steps against the spawner).
//!
//! Wire format (one JSON object per datagram, pure and tested here):
//! * daemon -> spawner: [`SpawnRequest`], with the job's stdout and stderr (`SCM_RIGHTS`);
//! * spawner -> daemon: [`SpawnerEvent`]: `Spawned` (or `Failed`) for each request in order,
//!   `Exited` once a child is reaped (always after its `Spawned`).

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use super::spawn::{run, JailInvocation, JailSpec, Prebuilt};

/// `argv[1]` that selects the spawner.
pub const SPAWNER_ARG: &str = "__spawner";

/// Largest datagram either side sends (a request is a spec: paths and a few variables).
const MAX_MESSAGE: usize = 256 * 1024;

/// One program to start: the jail spec and the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    pub id: u64,
    pub spec: JailSpec,
    pub program: String,
    pub args: Vec<String>,
}

/// What the spawner tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SpawnerEvent {
    /// Request `id` runs as `pid` (its own session and process group).
    Spawned { id: u64, pid: i32 },
    /// Request `id` could not be started (the fork failed, or the request was malformed).
    Failed { id: u64, error: String },
    /// `pid` was reaped; `status` is the raw wait status.
    Exited { pid: i32, status: i32 },
}

impl SpawnerEvent {
    pub fn encode(&self) -> Vec<u8> {
        // Plain data: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(data: &[u8]) -> Result<SpawnerEvent, SpawnerError> {
        serde_json::from_slice(data).map_err(|e| SpawnerError::Protocol(e.to_string()))
    }
}

impl SpawnRequest {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(data: &[u8]) -> Result<SpawnRequest, SpawnerError> {
        serde_json::from_slice(data).map_err(|e| SpawnerError::Protocol(e.to_string()))
    }
}

#[derive(Debug, Error)]
pub enum SpawnerError {
    #[error("could not start the spawner: {0}")]
    Start(#[source] io::Error),
    #[error("the spawner is gone")]
    Gone,
    #[error("the spawner could not start the program: {0}")]
    Failed(String),
    #[error("malformed spawner message: {0}")]
    Protocol(String),
    #[error("spawner socket: {0}")]
    Io(#[from] io::Error),
}

// ------------------------------------------------------------------------ the spawner process

/// Body of `dispynode __spawner <daemon pid>`: serves requests on fd 0 until it closes.
pub fn spawner_main(args: &[std::ffi::OsString]) -> ! {
    let code = match serve(args) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(io::stderr(), "dispynode-spawner: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn serve(args: &[std::ffi::OsString]) -> io::Result<()> {
    let parent: i32 = args
        .iter()
        .skip_while(|a| *a != SPAWNER_ARG)
        .nth(1)
        .and_then(|a| a.to_str()?.parse().ok())
        .ok_or_else(|| io::Error::other("usage: __spawner <daemon pid>"))?;
    // Die with the daemon; if it is already gone, there is nobody to serve.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
    if nix::unistd::getppid().as_raw() != parent {
        return Err(io::Error::other("the daemon is gone"));
    }
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    // SIGABRT: a child started by clone3 that aborts signals us (see fork_into_cgroup);
    // abort() unblocks it for itself, so our own abort still works.
    let mut blocked = chld;
    blocked.add(Signal::SIGABRT);
    blocked.thread_block().map_err(io::Error::from)?;
    let sfd = SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(io::Error::from)?;
    // SAFETY: fd 0 is the socket the daemon gave us as stdin; nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(0) };
    let me = std::process::id() as i32;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut rulesets = Rulesets::default();
    let mut forker = Forker::new();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll reads and writes only the two pollfd structs we pass.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            while let Ok(Some(_)) = sfd.read_signal() {}
            reap(&sock)?;
        }
        if fds[0].revents != 0 {
            let Some((len, passed)) = receive(&sock, &mut buf)? else {
                return Ok(()); // the daemon closed its end
            };
            let event = match SpawnRequest::decode(&buf[..len]) {
                Ok(req) => start(req, passed, me, &mut rulesets, &mut forker),
                Err(e) => SpawnerEvent::Failed {
                    // The daemon's waiter still learns of it, if the id can be read.
                    id: serde_json::from_slice::<serde_json::Value>(&buf[..len])
                        .ok()
                        .and_then(|v| v.get("id")?.as_u64())
                        .unwrap_or(0),
                    error: e.to_string(),
                },
            };
            send(&sock, &event.encode())?;
        }
    }
}

/// One datagram and the descriptors that came with it; None at EOF.
fn receive(sock: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::Error::EINTR) => continue,
            r => break r.map_err(io::Error::from)?,
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors in this process for us.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let len = msg.bytes;
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((len, fds)))
}

fn send(sock: &OwnedFd, data: &[u8]) -> io::Result<()> {
    loop {
        // SAFETY: send reads `data` only; the socket is ours.
        let r = unsafe {
            libc::send(
                sock.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reports every child that has exited.
fn reap(sock: &OwnedFd) -> io::Result<()> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return Ok(());
        }
        send(sock, &SpawnerEvent::Exited { pid, status }.encode())?;
    }
}

/// Landlock rulesets the spawner built, by policy (its JSON): building one resolves and opens
/// every path of the policy, the same for every job of a computation; a child only enforces
/// it (the ruleset holds no path: only what the kernel made of them).
#[derive(Default)]
struct Rulesets {
    built: HashMap<String, Option<OwnedFd>>,
}

/// More policies than this (computations a node serves at a time, give or take): start over.
const MAX_RULESETS: usize = 32;

impl Rulesets {
    /// The prebuilt ruleset of `spec`'s policy. None when the child builds its own, as the
    /// jail helper does: no policy, a required one (its status is checked there), a spec that
    /// switches identity (the paths would be opened with other credentials here), or a policy
    /// that does not build (the child then reports why).
    fn for_spec(&mut self, spec: &JailSpec) -> Option<Prebuilt> {
        let policy = spec.landlock.as_ref()?;
        if policy.required || spec.identity.is_some() {
            return None;
        }
        let key = serde_json::to_string(policy).ok()?;
        if !self.built.contains_key(&key) {
            if self.built.len() >= MAX_RULESETS {
                self.built.clear();
            }
            let fd = super::landlock::build_descriptor(policy).ok()?;
            self.built.insert(key.clone(), fd);
        }
        let fd = self.built.get(&key)?;
        Some(Prebuilt(fd.as_ref().map(|f| f.as_raw_fd())))
    }
}

/// Forks the child that becomes the job: stdout and stderr are `passed`, stdin /dev/null.
fn start(
    req: SpawnRequest,
    passed: Vec<OwnedFd>,
    me: i32,
    rulesets: &mut Rulesets,
    forker: &mut Forker,
) -> SpawnerEvent {
    let id = req.id;
    let [stdout, stderr] = match <[OwnedFd; 2]>::try_from(passed) {
        Ok(fds) => fds,
        Err(_) => {
            return SpawnerEvent::Failed {
                id,
                error: "a request needs exactly two descriptors (stdout, stderr)".into(),
            }
        }
    };
    let mut spec = req.spec;
    spec.parent_pid = Some(me); // the child's parent is this process, not the daemon
    let ruleset = rulesets.for_spec(&spec);
    let mut inv = JailInvocation {
        spec,
        program: req.program.into(),
        args: req.args.into_iter().map(Into::into).collect(),
    };
    if let Some(pid) = forker.vfork(&inv, ruleset.as_ref(), [&stdout, &stderr], me) {
        return SpawnerEvent::Spawned { id, pid };
    }
    match forker.fork(inv.spec.cgroup.as_deref()) {
        Err(e) => SpawnerEvent::Failed {
            id,
            error: e.to_string(),
        },
        Ok(Forked::Child { in_cgroup }) => {
            if in_cgroup {
                inv.spec.cgroup = None; // born there: nothing to join
            }
            child(&inv, ruleset, &stdout, &stderr)
        }
        Ok(Forked::Parent(pid)) => SpawnerEvent::Spawned { id, pid },
    }
}

/// Which side of a fork this is.
enum Forked {
    /// The child; `in_cgroup` when it was born in the job's cgroup.
    Child {
        in_cgroup: bool,
    },
    Parent(i32),
}

/// Starts children directly in their job's cgroup (`clone3` with `CLONE_INTO_CGROUP`, Linux
/// 5.7) while the kernel takes it. A child that writes its own pid to `cgroup.procs` instead
/// waits for an RCU grace period (cgroup_threadgroup_rwsem taken for writing: ~8 ms when no
/// other move happened just before), on every sporadic program job.
struct Forker {
    into_cgroup: bool,
    /// What the vfork-style start needs (None: every job is forked).
    vfork: Option<VforkKit>,
}

/// The vfork-style child's stack and its stdin, made once per spawner.
struct VforkKit {
    stack: super::vfork::ChildStack,
    null: OwnedFd,
}

impl Forker {
    fn new() -> Forker {
        Forker {
            into_cgroup: true,
            vfork: VforkKit::new(),
        }
    }

    /// Starts the job vfork-style ([`super::vfork`]) when it can be: its pid, or None to
    /// fork it instead (a job that needs more than the vfork child does, a cgroup it cannot
    /// be born in, a kernel or filter without it).
    fn vfork(
        &mut self,
        inv: &JailInvocation,
        prebuilt: Option<&Prebuilt>,
        [stdout, stderr]: [&OwnedFd; 2],
        me: i32,
    ) -> Option<i32> {
        let kit = self.vfork.as_ref()?;
        let cgroup = match &inv.spec.cgroup {
            Some(dir) if self.into_cgroup => Some(open_cgroup_dir(dir).ok()?),
            Some(_) => return None,
            None => None,
        };
        let stdio = [kit.null.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()];
        let plan = super::vfork::Plan::new(inv, prebuilt, stdio, me, cgroup.is_some())?;
        match super::vfork::start(&plan, &kit.stack, cgroup.as_ref().map(|c| c.as_raw_fd())) {
            Ok(pid) => Some(pid),
            // With a cgroup, the fork way finds out whether it was the cgroup or the kernel.
            // EPERM too: a seccomp filter that refuses clone3 with CLONE_VM.
            Err(e)
                if cgroup.is_none()
                    && (unsupported(&e) || e.raw_os_error() == Some(libc::EPERM)) =>
            {
                self.vfork = None;
                let _ = writeln!(
                    io::stderr(),
                    "dispynode-spawner: vfork-style start unavailable ({e}): program jobs are forked"
                );
                None
            }
            Err(_) => None,
        }
    }

    /// `fork`, or `clone3` into `cgroup`. Any failure of the latter falls back to a plain
    /// fork whose child joins the cgroup itself (and so reports the real error, e.g. a cgroup
    /// that is gone, as the jail does); a kernel without it is not asked again.
    fn fork(&mut self, cgroup: Option<&Path>) -> io::Result<Forked> {
        if let (Some(dir), true) = (cgroup, self.into_cgroup) {
            match fork_into_cgroup(dir) {
                Ok(0) => return Ok(Forked::Child { in_cgroup: true }),
                Ok(pid) => return Ok(Forked::Parent(pid)),
                Err(e) if unsupported(&e) => {
                    self.into_cgroup = false;
                    let _ = writeln!(
                        io::stderr(),
                        "dispynode-spawner: clone3(CLONE_INTO_CGROUP) unavailable ({e}): \
                         program jobs join their cgroup after the fork"
                    );
                }
                Err(_) => {}
            }
        }
        // SAFETY: this process is single-threaded (it never starts a thread), so the child may
        // allocate and use the standard library until it execs or exits.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => Ok(Forked::Child { in_cgroup: false }),
            pid => Ok(Forked::Parent(pid)),
        }
    }
}

/// Errors of `clone3(CLONE_INTO_CGROUP)` that mean this kernel does not have it: no clone3
/// (before 5.3, or a seccomp filter that hides it), or a `clone_args` larger than it knows /
/// an unknown flag (before 5.7). Our arguments are fixed, so EINVAL means nothing else.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL)
    )
}

impl VforkKit {
    /// None where the vfork-style start cannot work: no stack, no /dev/null, or a kernel
    /// without `close_range` (before 5.9: the child could not close the spawner's fds without
    /// listing them, which allocates).
    fn new() -> Option<VforkKit> {
        if cfg!(not(target_arch = "x86_64")) {
            return None; // the clone's trampoline is written for x86_64 only
        }
        // SAFETY: closes nothing (no fd has that number); only asks whether the call exists.
        if unsafe { libc::syscall(libc::SYS_close_range, u32::MAX, u32::MAX, 0u32) } != 0 {
            return None;
        }
        let null = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/null")
            .ok()?;
        Some(VforkKit {
            stack: super::vfork::ChildStack::new().ok()?,
            null: null.into(),
        })
    }
}

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2, 88 bytes): declared here
/// because the libc crate has it only for some targets.
#[repr(C)]
#[derive(Default)]
pub(super) struct CloneArgs {
    pub(super) flags: u64,
    pub(super) pidfd: u64,
    pub(super) child_tid: u64,
    pub(super) parent_tid: u64,
    pub(super) exit_signal: u64,
    pub(super) stack: u64,
    pub(super) stack_size: u64,
    pub(super) tls: u64,
    pub(super) set_tid: u64,
    pub(super) set_tid_size: u64,
    pub(super) cgroup: u64,
}

pub(super) const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The cgroup directory `dir`, opened for `CLONE_INTO_CGROUP`.
fn open_cgroup_dir(dir: &Path) -> io::Result<std::fs::File> {
    std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
}

/// A fork-like `clone3` whose child starts in the cgroup `dir`: 0 in the child, its pid in
/// the parent.
fn fork_into_cgroup(dir: &Path) -> io::Result<i32> {
    let cg = open_cgroup_dir(dir)?;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cg.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: without CLONE_VM or a stack this is fork(2) (the child gets a copy of this
    // address space and returns here on its own stack), plus the cgroup it starts in. libc
    // does not know of this fork: its cached thread id in the child stays this process's, so
    // raise()/abort() there would signal the spawner (musl), which blocks SIGABRT for that
    // reason; nothing else the child runs before exec reads it (no pthread or stdio locks in
    // this single-threaded process, no atfork handlers registered).
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of!(args),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as i32)
}

/// The forked child: its stdio, then the jail's steps, then the program. Never returns (a
/// panic here must not unwind into the spawner's loop: the child would serve requests).
fn child(inv: &JailInvocation, ruleset: Option<Prebuilt>, stdout: &OwnedFd, stderr: &OwnedFd) -> ! {
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        child_steps(inv, ruleset, stdout, stderr)
    }))
    .unwrap_or(127);
    // SAFETY: _exit ends this forked child without running the spawner's exit handlers.
    unsafe { libc::_exit(code) }
}

/// The child's steps; returns only the exit code of a failure.
fn child_steps(
    inv: &JailInvocation,
    ruleset: Option<Prebuilt>,
    stdout: &OwnedFd,
    stderr: &OwnedFd,
) -> i32 {
    let null = std::fs::File::open("/dev/null");
    let wired = null.and_then(|null| {
        for (from, to) in [
            (null.as_raw_fd(), 0),
            (stdout.as_raw_fd(), 1),
            (stderr.as_raw_fd(), 2),
        ] {
            // SAFETY: dup2 onto the standard descriptors; the old ones are ours to replace.
            if unsafe { libc::dup2(from, to) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    });
    match wired {
        Err(e) => {
            let _ = writeln!(io::stderr(), "dispynode-jail: stdio: {e}");
            127
        }
        Ok(()) => match run(inv, ruleset) {
            Ok(never) => match never {},
            Err(e) => {
                let _ = writeln!(io::stderr(), "dispynode-jail: {e}");
                e.exit_code()
            }
        },
    }
}

// ------------------------------------------------------------------------ the daemon's side

/// A started program: its pid and, once it is reaped, its raw wait status.
pub struct Spawned {
    pub pid: i32,
    pub exit: oneshot::Receiver<i32>,
}

type Pending = HashMap<u64, oneshot::Sender<Result<Spawned, SpawnerError>>>;

/// The daemon's handle on its spawner.
pub struct Spawner {
    sock: AsyncFd<OwnedFd>,
    pending: Mutex<Pending>,
    exits: Mutex<HashMap<i32, oneshot::Sender<i32>>>,
    next_id: AtomicU64,
    process: Mutex<Option<tokio::process::Child>>,
    gone: std::sync::atomic::AtomicBool,
}

impl Spawner {
    /// Starts `exe __spawner` (our own binary) and the task that reads its events.
    pub fn start(exe: &Path) -> Result<Arc<Spawner>, SpawnerError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(|e| SpawnerError::Start(e.into()))?;
        // The spawner blocks on its end: clear O_NONBLOCK there (one open file per end).
        set_blocking(&theirs).map_err(SpawnerError::Start)?;
        let child = tokio::process::Command::new(exe)
            .arg0("dispynode")
            .arg(SPAWNER_ARG)
            .arg(std::process::id().to_string())
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(SpawnerError::Start)?;
        // SAFETY: `ours` is an open socket owned by the AsyncFd for its whole life; its
        // descriptor never changes.
        let sock = unsafe { AsyncFd::register(ours) }
            .map_err(|e| SpawnerError::Start(io::Error::other(e.to_string())))?;
        let sp = Arc::new(Spawner {
            sock,
            pending: Mutex::default(),
            exits: Mutex::default(),
            next_id: AtomicU64::new(1),
            process: Mutex::new(Some(child)),
            gone: Default::default(),
        });
        tokio::spawn(sp.clone().read_events());
        Ok(sp)
    }

    /// Whether the spawner has stopped answering (start a new one).
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    /// Starts `program args` jailed by `spec`, with the given stdout and stderr.
    pub async fn spawn(
        &self,
        spec: JailSpec,
        program: &str,
        args: &[String],
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<Spawned, SpawnerError> {
        if self.is_gone() {
            return Err(SpawnerError::Gone);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req = SpawnRequest {
            id,
            spec,
            program: program.to_owned(),
            args: args.to_vec(),
        }
        .encode();
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| SpawnerError::Gone)?
            .insert(id, tx);
        let fds = [stdout.as_raw_fd(), stderr.as_raw_fd()];
        loop {
            let mut guard = self.sock.writable().await?;
            let sent = guard.try_io(|s| {
                let iov = [IoSlice::new(&req)];
                let cmsg = [ControlMessage::ScmRights(&fds)];
                sendmsg::<()>(
                    s.get_ref().as_fd().as_raw_fd(),
                    &iov,
                    &cmsg,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            });
            match sent {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    self.pending
                        .lock()
                        .map_err(|_| SpawnerError::Gone)?
                        .remove(&id);
                    return Err(e.into());
                }
                Err(_would_block) => continue,
            }
        }
        // Our copies go now: the program's pipes must see EOF when it (and its children) exit.
        drop((stdout, stderr));
        rx.await.map_err(|_| SpawnerError::Gone)?
    }

    async fn read_events(self: Arc<Self>) {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let Ok(mut guard) = self.sock.readable().await else {
                break;
            };
            let got = guard.try_io(|s| {
                // SAFETY: recv writes at most buf.len() bytes into buf.
                let r = unsafe {
                    libc::recv(
                        s.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                    )
                };
                if r < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(r as usize)
                }
            });
            let n = match got {
                Err(_would_block) => continue,
                Ok(Err(_)) | Ok(Ok(0)) => break,
                Ok(Ok(n)) => n,
            };
            match SpawnerEvent::decode(&buf[..n]) {
                Ok(SpawnerEvent::Spawned { id, pid }) => {
                    let (tx, rx) = oneshot::channel();
                    if let Ok(mut e) = self.exits.lock() {
                        e.insert(pid, tx);
                    }
                    if let Some(w) = self.pending.lock().ok().and_then(|mut p| p.remove(&id)) {
                        let _ = w.send(Ok(Spawned { pid, exit: rx }));
                    }
                }
                Ok(SpawnerEvent::Failed { id, error }) => {
                    if let Some(w) = self.pending.lock().ok().and_then(|mut p| p.remove(&id)) {
                        let _ = w.send(Err(SpawnerError::Failed(error)));
                    }
                }
                Ok(SpawnerEvent::Exited { pid, status }) => {
                    if let Some(w) = self.exits.lock().ok().and_then(|mut e| e.remove(&pid)) {
                        let _ = w.send(status);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed spawner message"),
            }
        }
        // Gone: its children died with it (their parent-death signal); every waiter learns it
        // from its dropped sender.
        self.gone.store(true, Ordering::Relaxed);
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
        if let Ok(mut e) = self.exits.lock() {
            e.clear();
        }
        let child = self.process.lock().ok().and_then(|mut c| c.take());
        if let Some(mut child) = child {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

fn set_blocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, reading and setting its status flags only.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn messages_round_trip() {
        let req = SpawnRequest {
            id: 7,
            spec: JailSpec::new("/tmp/x"),
            program: "prog.sh".into(),
            args: vec!["a b".into(), "ü".into()],
        };
        assert_eq!(SpawnRequest::decode(&req.encode()).unwrap(), req);
        for ev in [
            SpawnerEvent::Spawned { id: 1, pid: 42 },
            SpawnerEvent::Failed {
                id: 2,
                error: "no".into(),
            },
            SpawnerEvent::Exited {
                pid: 42,
                status: 256,
            },
        ] {
            assert_eq!(SpawnerEvent::decode(&ev.encode()).unwrap(), ev);
        }
    }

    /// Forks with `forker` into `cgroup`; the child only waits to be killed. Returns what the
    /// parent saw: whether the child was said to be born in the cgroup, and the child's
    /// cgroup v2 path as /proc shows it.
    fn fork_and_look(forker: &mut Forker, cgroup: Option<&Path>) -> (bool, String) {
        let pid = match forker.fork(cgroup).expect("fork") {
            Forked::Child { in_cgroup } => {
                // SAFETY: a forked child of a multi-threaded test: only async-signal-safe calls.
                unsafe {
                    libc::_exit(if in_cgroup { 3 } else { 4 });
                }
            }
            Forked::Parent(pid) => pid,
        };
        let mut status = 0;
        // SAFETY: waitpid writes only `status`; the child is ours.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status));
        let in_cgroup = libc::WEXITSTATUS(status) == 3;
        // The exited child's cgroup is gone from /proc; ask where a child born the same way
        // lives while it waits (pause) instead.
        let pid = match forker.fork(cgroup).expect("fork") {
            Forked::Child { .. } => loop {
                // SAFETY: pause only waits for the signal that kills this child.
                unsafe { libc::pause() };
            },
            Forked::Parent(pid) => pid,
        };
        let seen = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        // SAFETY: kill and waitpid on our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, 0);
        }
        let v2 = seen
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or_default()
            .to_owned();
        (in_cgroup, v2)
    }

    /// A fresh cgroup `<prefix>-<pid>` on this host's cgroup2 mount: its name and path. None
    /// (saying SKIP) without root or a cgroup2 mount where we may make one.
    fn test_cgroup(prefix: &str) -> Option<(String, PathBuf)> {
        let mount = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains(" - cgroup2 "))
            .and_then(|l| l.split(' ').nth(4).map(PathBuf::from));
        let Some(mount) = mount.filter(|_| nix::unistd::geteuid().is_root()) else {
            eprintln!("SKIP: needs root and a cgroup2 mount");
            return None;
        };
        let name = format!("{prefix}-{}", std::process::id());
        let dir = mount.join(&name);
        if let Err(e) = std::fs::create_dir(&dir) {
            eprintln!("SKIP: cannot make a cgroup in {}: {e}", mount.display());
            return None;
        }
        Some((name, dir))
    }

    /// A child is born in its job's cgroup (as root, with a cgroup2 mount: the delegated
    /// path's test covers the rest, tests/delegation.rs).
    #[test]
    fn children_are_born_in_their_cgroup() {
        let Some((name, dir)) = test_cgroup("dispynode-unit") else {
            return;
        };
        let mut forker = Forker::new();
        let (born_there, seen) = fork_and_look(&mut forker, Some(&dir));
        let _ = std::fs::remove_dir(&dir);
        assert!(
            born_there,
            "the child was not started by clone3(CLONE_INTO_CGROUP)"
        );
        assert!(forker.into_cgroup);
        assert_eq!(seen, format!("/{name}"));
    }

    /// `/bin/sh -c script` started vfork-style into `cgroup`: its pid (None: the fork way)
    /// and its stdout.
    fn vfork_and_read(
        forker: &mut Forker,
        cgroup: Option<&Path>,
        script: &str,
    ) -> (Option<i32>, String) {
        use std::io::Read;
        let me = std::process::id() as i32;
        let mut spec = JailSpec::new("/");
        spec.allow_root = true;
        spec.parent_pid = Some(me);
        spec.cgroup = cgroup.map(Path::to_path_buf);
        let inv = JailInvocation {
            spec,
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
        };
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (_err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let pid = forker.vfork(&inv, None, [&out_w, &err_w], me);
        drop((out_w, err_w));
        let mut out = String::new();
        if let Some(pid) = pid {
            std::fs::File::from(out_r).read_to_string(&mut out).unwrap();
            let mut status = 0;
            // SAFETY: waitpid writes only `status`; the child is ours.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        }
        (pid, out)
    }

    #[test]
    fn vfork_style_children_are_born_in_their_cgroup_too() {
        let mut forker = Forker::new();
        if cfg!(not(target_arch = "x86_64")) {
            assert!(forker.vfork.is_none());
            return;
        }
        assert!(forker.vfork.is_some(), "no vfork-style start on this host");
        let (pid, out) = vfork_and_read(&mut forker, None, "echo started");
        assert!(pid.is_some());
        assert_eq!(out, "started\n");
        let tmp = tempfile::tempdir().unwrap();
        let (pid, _) = vfork_and_read(&mut forker, Some(tmp.path()), "echo started");
        assert!(
            pid.is_none(),
            "a directory that is no cgroup goes the fork way"
        );
        assert!(
            forker.vfork.is_some() && forker.into_cgroup,
            "one failure switches nothing off"
        );
        let Some((name, dir)) = test_cgroup("dispynode-unit-vfork") else {
            return;
        };
        let (pid, out) = vfork_and_read(&mut forker, Some(&dir), "grep ^0:: /proc/self/cgroup");
        let _ = std::fs::remove_dir(&dir);
        assert!(pid.is_some());
        assert_eq!(out, format!("0::/{name}\n"));
    }

    /// A directory that is no cgroup: a plain fork (its child would then fail to join and say
    /// why), and the next job still tries clone3.
    #[test]
    fn not_a_cgroup_falls_back_to_fork() {
        let tmp = tempfile::tempdir().unwrap();
        let mut forker = Forker::new();
        let (born_there, _) = fork_and_look(&mut forker, Some(tmp.path()));
        assert!(!born_there);
        assert!(forker.into_cgroup, "one failure must not switch clone3 off");
        let (born_there, _) = fork_and_look(&mut forker, None);
        assert!(!born_there);
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(SpawnerEvent::decode(b"{\"spawned\":{}}").is_err());
        assert!(SpawnerEvent::decode(b"\xff").is_err());
        assert!(SpawnRequest::decode(b"{\"id\":1}").is_err());
    }
}
