//! Program jobs started vfork-style: the spawner's child shares the spawner's memory until its
//! `execve`, so nothing is copied for it and nothing is torn down again at the exec.
//!
//! A forked child cost every program job about 0.3 ms of CPU (`bench/README.md`): the
//! spawner's page tables copied, the child's page faults on the spawner's code and data, that
//! copy torn down by the exec, and the spawner's own copy-on-write faults afterwards. CPython's
//! `subprocess` (the reference node's way) avoids that with `vfork`. Here the child is made
//! with `clone3(CLONE_VM | CLONE_VFORK [| CLONE_INTO_CGROUP])` on a stack of its own, and the
//! spawner sleeps until the child has exec'd or exited. The child applies the jail's steps
//! ([`super::spawn::run`]: same order, same exit statuses, one `dispynode-jail: <step>:
//! <error>` line on failure) as plain system calls on a [`Plan`] that the spawner prepared: it
//! allocates nothing, takes no lock, cannot unwind, and writes nothing but its own stack.
//! Whatever needs more goes the fork way ([`Plan::new`] says None): an identity switch as
//! root, a Landlock ruleset built in the child (a required policy, or none prebuilt), a
//! cgroup to join by hand, a spec the fork path rejects with its own error.

use std::ffi::{c_char, CString};
use std::fmt::Write as _;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::errno::Errno;

use super::spawn::{
    close_spans, exec_candidates, job_environment, rlimit_list, searched_on_path, JailError,
    JailInvocation, Prebuilt,
};

/// Everything the child needs, made before the clone. The child only reads it.
pub(super) struct Plan {
    /// What becomes the child's fds 0, 1 and 2.
    stdio: [RawFd; 3],
    /// `close_range` spans that close every fd but 0, 1, 2 and the kept ones.
    close_spans: Vec<(u32, u32)>,
    parent: i32,
    /// (resource, value, name), `RLIMIT_CORE` 0 first, as [`super::spawn`] applies them.
    rlimits: Vec<(i32, u64, &'static str)>,
    /// Not root: the uid/gid the child must already have.
    identity: Option<(u32, u32)>,
    allow_root: bool,
    ruleset: Option<RawFd>,
    cwd: CString,
    cwd_shown: PathBuf,
    program_shown: String,
    /// Where to look for the program, in order (itself alone when its name has a `/`).
    candidates: Vec<CString>,
    searched: bool,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const c_char>,
}

impl Plan {
    /// The plan for `inv` with stdio `[stdin, stdout, stderr]`; None when the job must go
    /// the fork way. The child checks that its parent is the spec's `parent_pid`, else
    /// `parent` (the spawner). `in_cgroup`: the clone puts the child in the spec's cgroup.
    pub(super) fn new(
        inv: &JailInvocation,
        prebuilt: Option<&Prebuilt>,
        stdio: [RawFd; 3],
        parent: i32,
        in_cgroup: bool,
    ) -> Option<Plan> {
        let spec = &inv.spec;
        if spec.cgroup.is_some() && !in_cgroup {
            return None;
        }
        if spec.identity.is_some() && nix::unistd::geteuid().is_root() {
            return None;
        }
        let ruleset = match (&spec.landlock, prebuilt) {
            (None, _) => None,
            (Some(policy), Some(Prebuilt(fd))) if !policy.required => *fd,
            (Some(_), _) => return None,
        };
        let keep: Vec<i32> = spec.keep_fds.iter().copied().chain(ruleset).collect();
        let (_, close_spans) = close_spans(&keep);
        // A variable or argument the fork path refuses is refused there, with its message.
        let envp = job_environment(&spec.env).ok()?;
        let mut argv = vec![CString::new(inv.program.as_bytes()).ok()?];
        for a in &inv.args {
            argv.push(CString::new(a.as_bytes()).ok()?);
        }
        let candidates = exec_candidates(&inv.program, &spec.env)?;
        let searched = searched_on_path(&inv.program);
        let argv_ptrs = null_terminated(&argv);
        let envp_ptrs = null_terminated(&envp);
        Some(Plan {
            stdio,
            close_spans,
            parent: spec.parent_pid.unwrap_or(parent),
            rlimits: rlimit_list(&spec.rlimits)
                .into_iter()
                .map(|(resource, name, value)| (resource as i32, value, name))
                .collect(),
            identity: spec.identity.map(|id| (id.uid, id.gid)),
            allow_root: spec.allow_root,
            ruleset,
            cwd: CString::new(spec.cwd.as_os_str().as_bytes()).ok()?,
            cwd_shown: spec.cwd.clone(),
            program_shown: inv.program.to_string_lossy().into_owned(),
            candidates,
            searched,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
        })
    }
}

fn null_terminated(items: &[CString]) -> Vec<*const c_char> {
    items
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// A mapping used as the child's stack, with an inaccessible page below it: a child that
/// overran it faults instead of writing into the spawner's memory.
pub(super) struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

const STACK_LEN: usize = 256 * 1024;
const GUARD_LEN: usize = 4096;

impl ChildStack {
    pub(super) fn new() -> std::io::Result<ChildStack> {
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STACK_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let stack = ChildStack {
            base,
            len: STACK_LEN,
        };
        // SAFETY: the lowest page of the mapping made above, which nothing uses.
        if unsafe { libc::mprotect(base, GUARD_LEN, libc::PROT_NONE) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stack)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no child runs on it (a vfork child is done when the clone
        // returns).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Starts `plan`'s child and returns its pid once it has exec'd the program or exited (a
/// failed step: its status says which, as the fork path's child). `cgroup`: an fd of the
/// directory of the cgroup the child is born in.
#[cfg(target_arch = "x86_64")]
pub(super) fn start(
    plan: &Plan,
    stack: &ChildStack,
    cgroup: Option<RawFd>,
) -> std::io::Result<i32> {
    use super::spawner::{CloneArgs, CLONE_INTO_CGROUP};
    let mut flags = (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
    if cgroup.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.base as u64,
        stack_size: stack.len as u64,
        cgroup: cgroup.map_or(0, |fd| fd as u64),
        ..CloneArgs::default()
    };
    let ret: i64;
    // SAFETY: clone3 with CLONE_VM | CLONE_VFORK and a stack: the child runs on `stack` (the
    // kernel points its stack pointer at the top, 16-byte aligned as the mapping is) with
    // every other register as ours; it calls `child_main(plan)` and exits with its result
    // (SYS_exit), never returning here. r12 and r13 survive the syscall in both processes.
    // We are suspended until the child has exec'd or exited, so `plan` and `args` outlive
    // its use of them, and nothing else runs on `stack`. The child writes only its own stack
    // (see `child_main`). rcx and r11 are clobbered by `syscall`.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") std::ptr::addr_of!(args),
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") child_main as extern "C" fn(*const Plan) -> i32,
            in("r13") plan as *const Plan,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        return Err(std::io::Error::from_raw_os_error((-ret) as i32));
    }
    Ok(ret as i32)
}

/// Other architectures: always the fork way.
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn start(
    _plan: &Plan,
    _stack: &ChildStack,
    _cgroup: Option<RawFd>,
) -> std::io::Result<i32> {
    Err(std::io::Error::from_raw_os_error(libc::ENOSYS))
}

/// The child, on its own stack in the spawner's memory: the jail's steps, then the program.
/// Returns only a failed step's exit status. Rules: no allocation (the spawner's allocator is
/// not ours to touch), no panic (nothing may unwind out of here), no writes outside this
/// stack. `JailError`s are made only for their exit status, from fields that own no memory.
extern "C" fn child_main(plan: *const Plan) -> i32 {
    // SAFETY: `start` passes a plan that lives until this child has exec'd or exited.
    let plan = unsafe { &*plan };
    match steps(plan) {
        Ok(never) => match never {},
        Err(code) => code,
    }
}

/// A failed step's exit status (its line was written by [`fail`]).
type Failed = i32;

/// Writes `dispynode-jail: <what>` on stderr; returns `code`.
fn fail(code: i32, what: std::fmt::Arguments) -> Failed {
    let mut line = Line {
        buf: [0; 1024],
        len: 0,
    };
    let _ = write!(line, "dispynode-jail: {what}");
    line.end();
    let _ = write_all(2, line.as_bytes());
    code
}

fn steps(plan: &Plan) -> Result<std::convert::Infallible, Failed> {
    // Standard descriptors first (the fork path's child does it before the jail's steps).
    for (to, &from) in plan.stdio.iter().enumerate() {
        // SAFETY: dup2 onto our standard descriptors; they are ours to replace.
        if unsafe { libc::dup2(from, to as i32) } < 0 {
            return Err(fail(127, format_args!("stdio: {}", Errno::last())));
        }
    }
    let io_err = |e: Errno| std::io::Error::from_raw_os_error(e as i32);
    for &(first, last) in &plan.close_spans {
        // SAFETY: closes descriptors of this child's own table (no CLONE_FILES).
        if unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) } != 0 {
            let e = Errno::last();
            let code = JailError::CloseFds(io_err(e)).exit_code();
            return Err(fail(code, format_args!("close stray fds: {e}")));
        }
    }
    if let Err(e) = reset_signals() {
        let code = JailError::Signals(e).exit_code();
        return Err(fail(code, format_args!("reset signals: {e}")));
    }
    // SAFETY: setsid takes no argument.
    if unsafe { libc::setsid() } < 0 {
        let e = Errno::last();
        let code = JailError::Setsid(e).exit_code();
        return Err(fail(code, format_args!("setsid: {e}")));
    }
    parent_death_signal(plan.parent)?;
    for &(resource, value, name) in &plan.rlimits {
        if let Err(e) = set_rlimit(resource, value) {
            let code = JailError::Rlimit {
                resource: name,
                source: e,
            }
            .exit_code();
            return Err(fail(code, format_args!("setrlimit {name}: {e}")));
        }
    }
    let identity_code = JailError::Identity(String::new()).exit_code();
    let (uids, gids) = match res_ids() {
        Ok(ids) => ids,
        Err(e) => return Err(fail(identity_code, format_args!("identity: {e}"))),
    };
    if let Some((uid, gid)) = plan.identity {
        if uids.iter().any(|&u| u != uid) || gids.iter().any(|&g| g != gid) {
            return Err(fail(
                identity_code,
                format_args!("identity: not root: cannot become uid {uid} gid {gid}"),
            ));
        }
    }
    if !plan.allow_root && uids.contains(&0) {
        return Err(fail(
            JailError::RunsAsRoot.exit_code(),
            format_args!("refusing to run a job as root (no uid/gid in the spec)"),
        ));
    }
    if let Err(what) = drop_capabilities() {
        let code = JailError::Capabilities(super::PrivilegeError::Verify(String::new()));
        return Err(fail(code.exit_code(), format_args!("capabilities: {what}")));
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        let e = Errno::last();
        let code = JailError::NoNewPrivs(e).exit_code();
        return Err(fail(code, format_args!("PR_SET_NO_NEW_PRIVS: {e}")));
    }
    if let Some(fd) = plan.ruleset {
        // SAFETY: landlock_restrict_self reads no memory; `fd` is the spawner's ruleset,
        // kept open across the fd step.
        if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) } != 0 {
            let e = Errno::last();
            let code = JailError::Landlock(super::landlock::LandlockError::Restrict(io_err(e)));
            return Err(fail(code.exit_code(), format_args!("landlock: {e}")));
        }
    }
    // SAFETY: chdir reads the plan's NUL-terminated path.
    if unsafe { libc::chdir(plan.cwd.as_ptr()) } != 0 {
        let e = Errno::last();
        let code = JailError::Chdir {
            path: PathBuf::new(),
            source: e,
        };
        let shown = plan.cwd_shown.display();
        return Err(fail(code.exit_code(), format_args!("chdir {shown}: {e}")));
    }
    Err(exec(plan))
}

/// `execve` each candidate in turn, as [`super::spawn`]'s `exec` does: a missing one is
/// skipped, a denied one remembered.
fn exec(plan: &Plan) -> Failed {
    let mut last = Errno::ENOENT;
    let mut denied = false;
    for candidate in &plan.candidates {
        // SAFETY: NUL-terminated path and NULL-terminated argv/envp arrays of the plan, whose
        // strings the plan owns.
        unsafe {
            libc::execve(
                candidate.as_ptr(),
                plan.argv_ptrs.as_ptr(),
                plan.envp_ptrs.as_ptr(),
            )
        };
        let e = Errno::last();
        if !plan.searched {
            last = e;
            break;
        }
        match e {
            Errno::ENOENT | Errno::ENOTDIR | Errno::ESTALE => {}
            Errno::EACCES | Errno::EPERM => denied = true,
            _ => {
                last = e;
                denied = false;
                break;
            }
        }
        last = e;
    }
    let e = if denied { Errno::EACCES } else { last };
    let code = JailError::Exec {
        program: String::new(),
        source: e,
    };
    let program = &plan.program_shown;
    fail(code.exit_code(), format_args!("exec {program}: {e}"))
}

/// Every signal unblocked, `SIGPIPE` back to its default (the Rust runtime ignores it, and
/// an ignored signal stays ignored across exec).
fn reset_signals() -> Result<(), Errno> {
    // SAFETY: sigset_t and sigaction structs on this stack, filled by the calls below.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
            return Err(Errno::last());
        }
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        if libc::sigaction(libc::SIGPIPE, &dfl, std::ptr::null_mut()) != 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

fn parent_death_signal(parent: i32) -> Result<(), Failed> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        let e = Errno::last();
        let code = JailError::ParentDeathSignal(e).exit_code();
        return Err(fail(code, format_args!("PR_SET_PDEATHSIG: {e}")));
    }
    // SAFETY: getppid takes no argument.
    let now = unsafe { libc::getppid() };
    if now != parent {
        let expected = parent;
        let code = JailError::ParentGone { expected, now }.exit_code();
        return Err(fail(
            code,
            format_args!("parent changed from {expected} to {now}: the daemon is gone"),
        ));
    }
    Ok(())
}

/// Soft = hard = `value`, capped at the current hard limit.
fn set_rlimit(resource: i32, value: u64) -> Result<(), Errno> {
    // SAFETY: prlimit64 on ourselves (pid 0) with rlimit structs on this stack.
    unsafe {
        let mut old: libc::rlimit64 = std::mem::zeroed();
        if libc::syscall(
            libc::SYS_prlimit64,
            0,
            resource,
            std::ptr::null::<libc::rlimit64>(),
            &mut old,
        ) != 0
        {
            return Err(Errno::last());
        }
        let v = value.min(old.rlim_max);
        let new = libc::rlimit64 {
            rlim_cur: v,
            rlim_max: v,
        };
        if libc::syscall(
            libc::SYS_prlimit64,
            0,
            resource,
            &new,
            std::ptr::null_mut::<libc::rlimit64>(),
        ) != 0
        {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// Real, effective and saved uids and gids.
fn res_ids() -> Result<([u32; 3], [u32; 3]), Errno> {
    let (mut u, mut g) = ([0u32; 3], [0u32; 3]);
    // SAFETY: getresuid/getresgid write three ids each into arrays on this stack.
    let r = unsafe {
        libc::getresuid(&mut u[0], &mut u[1], &mut u[2])
            | libc::getresgid(&mut g[0], &mut g[1], &mut g[2])
    };
    if r != 0 {
        return Err(Errno::last());
    }
    Ok((u, g))
}

/// `struct __user_cap_header_struct` / `__user_cap_data_struct` (version 3: two of the
/// latter): the libc crate does not have them for every target.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;
const CAP_SETPCAP: u32 = 8;

fn cap_get() -> Result<[CapData; 2], Errno> {
    let mut head = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes the header's version and two data structs on this stack.
    if unsafe { libc::syscall(libc::SYS_capget, &mut head, data.as_mut_ptr()) } != 0 {
        return Err(Errno::last());
    }
    Ok(data)
}

/// [`super::privilege::drop_capabilities`] in system calls: the bounding set when we may (with
/// `CAP_SETPCAP`), then ambient, effective, inheritable and permitted, touching only sets that
/// hold something (a seccomp filter may forbid `capset` itself), then checks that all are empty.
fn drop_capabilities() -> Result<(), CapFailure> {
    let held = cap_get().map_err(CapFailure::Errno)?;
    let any = held
        .iter()
        .any(|d| d.effective | d.permitted | d.inheritable != 0);
    if !any {
        return Ok(()); // ambient is a subset of permitted: empty too
    }
    if held[0].effective & (1 << CAP_SETPCAP) != 0 {
        for cap in 0..64 {
            // SAFETY: prctl with integer arguments only. EINVAL: past this kernel's last one.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0
                && Errno::last() != Errno::EINVAL
            {
                return Err(CapFailure::Errno(Errno::last()));
            }
        }
    }
    // SAFETY: prctl with integer arguments only; EINVAL: a kernel without ambient sets.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } != 0
        && Errno::last() != Errno::EINVAL
    {
        return Err(CapFailure::Errno(Errno::last()));
    }
    let mut head = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let none = [CapData::default(); 2];
    // SAFETY: capset reads the header and two data structs on this stack.
    if unsafe { libc::syscall(libc::SYS_capset, &mut head, none.as_ptr()) } != 0 {
        return Err(CapFailure::Errno(Errno::last()));
    }
    let left = cap_get().map_err(CapFailure::Errno)?;
    if left
        .iter()
        .any(|d| d.effective | d.permitted | d.inheritable != 0)
    {
        return Err(CapFailure::Left);
    }
    Ok(())
}

enum CapFailure {
    Errno(Errno),
    Left,
}

impl std::fmt::Display for CapFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CapFailure::Errno(e) => write!(f, "{e}"),
            CapFailure::Left => f.write_str("capabilities left after capset"),
        }
    }
}

/// One `dispynode-jail: ...` line, formatted on the stack (cut at its size).
struct Line {
    buf: [u8; 1024],
    len: usize,
}

impl Line {
    fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    fn end(&mut self) {
        if let Some(b) = self.buf.get_mut(self.len) {
            *b = b'\n';
            self.len += 1;
        }
    }
}

impl std::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len().saturating_sub(self.len + 1); // a byte stays for '\n'
        let n = s.len().min(room);
        if let (Some(dst), Some(src)) = (
            self.buf.get_mut(self.len..self.len + n),
            s.as_bytes().get(..n),
        ) {
            dst.copy_from_slice(src);
            self.len += n;
        }
        Ok(())
    }
}

fn write_all(fd: RawFd, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        // SAFETY: write reads `data` only.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            return Err(Errno::last());
        }
        data = data.get(n as usize..).unwrap_or_default();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::spawn::{Identity, JailSpec, DEFAULT_PATH};
    use crate::sandbox::LandlockPolicy;
    use std::io::Read;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::path::Path;

    struct Ran {
        code: i32,
        out: String,
        err: String,
    }

    /// Runs `inv` vfork-style from this (multi-threaded) test process: the child writes only
    /// its stack, so the other threads are no concern.
    fn run(inv: &JailInvocation, prebuilt: Option<&Prebuilt>) -> Ran {
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let stdio = [null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        let me = std::process::id() as i32;
        let plan = Plan::new(inv, prebuilt, stdio, me, false).expect("a vfork plan");
        let stack = ChildStack::new().unwrap();
        let pid = start(&plan, &stack, None).expect("clone3");
        drop((out_w, err_w));
        let mut out = String::new();
        std::fs::File::from(out_r).read_to_string(&mut out).unwrap();
        let mut err = String::new();
        std::fs::File::from(err_r).read_to_string(&mut err).unwrap();
        let mut status = 0;
        // SAFETY: waitpid writes only `status`; the child is ours.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        Ran {
            code: libc::WEXITSTATUS(status),
            out,
            err,
        }
    }

    fn invocation(cwd: &Path, program: &str, args: &[&str]) -> JailInvocation {
        let mut spec = JailSpec::new(cwd);
        spec.env = JailSpec::standard_env(cwd, DEFAULT_PATH);
        spec.env.push(("GREETING".into(), "hello there".into()));
        spec.allow_root = true; // the tests run as root here, and as a user elsewhere
        JailInvocation {
            spec,
            program: program.into(),
            args: args.iter().map(Into::into).collect(),
        }
    }

    #[test]
    fn the_program_gets_the_jails_environment_directory_limits_and_nothing_of_ours() {
        let dir = tempfile::tempdir().unwrap();
        let script = "echo \"$GREETING\"; pwd; ulimit -n; ulimit -c; ls /proc/self/fd | sort -n | tr '\\n' ' '; echo; \
                      grep -E '^(CapEff|CapPrm|CapInh|CapAmb|NoNewPrivs)' /proc/self/status; \
                      echo sid=$(cut -d' ' -f6 /proc/self/stat) pid=$$; read x || echo eof";
        let mut inv = invocation(dir.path(), "sh", &["-c", script]);
        inv.spec.rlimits.nofile = Some(77);
        let ran = run(&inv, None);
        assert_eq!(ran.code, 0, "{}", ran.err);
        let lines: Vec<&str> = ran.out.lines().collect();
        assert_eq!(lines[0], "hello there");
        assert_eq!(
            Path::new(lines[1]),
            std::fs::canonicalize(dir.path()).unwrap()
        );
        assert_eq!(lines[2], "77");
        assert_eq!(lines[3], "0");
        // 0, 1, 2 and the listing's own fd: none of this process's many descriptors.
        assert_eq!(lines[4].split_whitespace().count(), 4, "{}", lines[4]);
        for l in &lines[5..9] {
            assert!(l.ends_with("0000000000000000"), "{l}");
        }
        assert_eq!(lines[9], "NoNewPrivs:\t1");
        let (sid, pid) = lines[10].split_once(' ').unwrap();
        assert_eq!(
            sid.trim_start_matches("sid="),
            pid.trim_start_matches("pid=")
        );
        assert_eq!(lines[11], "eof"); // stdin is /dev/null
    }

    #[test]
    fn a_failed_step_reports_like_the_fork_path_and_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ran = run(&invocation(dir.path(), "no-such-program-here", &[]), None);
        assert_eq!(ran.code, 127);
        assert!(
            ran.err
                .starts_with("dispynode-jail: exec no-such-program-here: ENOENT"),
            "{}",
            ran.err
        );
        let ran = run(&invocation(dir.path(), "/etc/passwd", &[]), None);
        assert_eq!(ran.code, 126, "{}", ran.err);

        let gone = dir.path().join("gone");
        let ran = run(&invocation(&gone, "/bin/true", &[]), None);
        let chdir = JailError::Chdir {
            path: gone.clone(),
            source: Errno::ENOENT,
        };
        assert_eq!(ran.code, chdir.exit_code());
        assert_eq!(ran.err, format!("dispynode-jail: {chdir}\n"));

        let mut inv = invocation(dir.path(), "/bin/sh", &["-c", "touch ran"]);
        inv.spec.parent_pid = Some(1);
        let ran = run(&inv, None); // the child's parent is this process, not pid 1
        assert!(ran.err.contains("the daemon is gone"), "{}", ran.err);
        assert!(!dir.path().join("ran").exists());

        if nix::unistd::geteuid().is_root() {
            let mut inv = invocation(dir.path(), "/bin/sh", &["-c", "touch ran"]);
            inv.spec.allow_root = false;
            let ran = run(&inv, None);
            assert_eq!(ran.code, JailError::RunsAsRoot.exit_code());
            assert!(
                ran.err.contains("refusing to run a job as root"),
                "{}",
                ran.err
            );
            assert!(!dir.path().join("ran").exists());
        }
    }

    #[test]
    fn what_needs_more_than_system_calls_goes_the_fork_way() {
        let dir = tempfile::tempdir().unwrap();
        let stdio = [0, 1, 2];
        let ok = invocation(dir.path(), "/bin/true", &[]);
        assert!(Plan::new(&ok, None, stdio, 1, false).is_some());
        let policy = LandlockPolicy::for_computation(dir.path(), [], [], false);
        let mut prebuilt_needed = ok.clone();
        prebuilt_needed.spec.landlock = Some(policy.clone());
        assert!(Plan::new(&prebuilt_needed, None, stdio, 1, false).is_none());
        assert!(Plan::new(&prebuilt_needed, Some(&Prebuilt(None)), stdio, 1, false).is_some());
        let mut required = prebuilt_needed.clone();
        required.spec.landlock = Some(LandlockPolicy {
            required: true,
            ..policy
        });
        assert!(Plan::new(&required, Some(&Prebuilt(None)), stdio, 1, false).is_none());
        let mut cgroup = ok.clone();
        cgroup.spec.cgroup = Some(dir.path().into());
        assert!(Plan::new(&cgroup, None, stdio, 1, false).is_none());
        assert!(Plan::new(&cgroup, None, stdio, 1, true).is_some());
        let mut bad_env = ok.clone();
        bad_env.spec.env.push(("A=B".into(), "1".into()));
        assert!(Plan::new(&bad_env, None, stdio, 1, false).is_none());
        let mut identity = ok.clone();
        identity.spec.identity = Some(Identity { uid: 1, gid: 1 });
        let as_root = nix::unistd::geteuid().is_root();
        assert_eq!(
            Plan::new(&identity, None, stdio, 1, false).is_none(),
            as_root
        );
    }
}
