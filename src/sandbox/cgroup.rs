//! cgroup v2 in the subtree delegated to us (systemd `Delegate=`), with plain file I/O.
//!
//! Layout below the delegated directory `D` (our own cgroup, or its parent when systemd already
//! started us in `D/supervisor` through `DelegateSubgroup=supervisor`):
//! ```text
//! D/                        controllers enabled for children; no processes ("no internal
//!   supervisor/             processes" rule): the daemon itself
//!   jobs/                   controllers enabled for children
//!     <job>/                one leaf per job: memory.max, memory.swap.max=0, memory.oom.group=1,
//!                           pids.max, cpu.max
//!     <computation>/        optionally an inner node per computation, with leaves below it
//!       worker/  <job>/
//! ```
//! The cgroupfs root is a parameter, so everything here is unit-tested on a temp dir that
//! imitates the kernel ([`fake`]); the kernel's `mkdir`/`rmdir` behaviour (interface files
//! appear and vanish with the directory) is the one thing the fake must emulate, hence
//! [`FsOps`].
//!
//! Control files are opened for writing with `O_APPEND` and without `O_CREAT`: the kernel's
//! files always exist and ignore the offset; a missing file means the controller is not
//! enabled, and such limits are skipped (see [`CgroupTree::controllers`]).

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::kernel_files;

/// The controllers we enable when they are available.
pub const WANTED_CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];
/// `cpu.max` period in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Why the daemon runs without cgroups; its `Display` is the one line to log:
/// "cgroup v2 not delegated: …; falling back to process groups".
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("cgroup v2 not delegated: {0}; falling back to process groups")]
pub struct Unavailable(pub String);

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("invalid cgroup name {0:?} (1-64 of [A-Za-z0-9_-])")]
    InvalidName(String),
    #[error("cannot move every process out of {path} into supervisor/: {remaining} left")]
    Migrate { path: PathBuf, remaining: usize },
    #[error("{path} still has processes after killing them")]
    Busy { path: PathBuf },
    /// The blocking task that did the cgroupfs I/O did not finish (it panicked).
    #[error("cgroup task failed: {0}")]
    Task(String),
}

impl CgroupError {
    /// A move of a process that no longer exists (ESRCH): it exited first.
    pub fn is_no_such_process(&self) -> bool {
        matches!(self, CgroupError::Io { source, .. } if source.raw_os_error() == Some(libc::ESRCH))
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// How a cgroup directory is made and removed: the kernel's `mkdir`/`rmdir`, or an imitation
/// for tests ([`fake::OPS`]).
#[derive(Clone, Copy)]
pub struct FsOps {
    pub mkdir: fn(&Path) -> io::Result<()>,
    pub rmdir: fn(&Path) -> io::Result<()>,
}

impl FsOps {
    pub const KERNEL: FsOps = FsOps {
        mkdir: |p| fs::create_dir(p),
        rmdir: |p| fs::remove_dir(p),
    };
}

impl std::fmt::Debug for FsOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FsOps")
    }
}

/// Per-job limits (from `job_memory_max`, `job_pids_max`, `job_cpu_max`). `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes (`memory.max`); swap is disabled for the job when the kernel has `memory.swap.max`.
    pub memory_max: Option<u64>,
    /// Tasks (`pids.max`): processes and threads.
    pub pids_max: Option<u64>,
    /// Percent of one CPU (`cpu.max` quota over a 100 ms period): 100 = one CPU, 250 = 2.5.
    pub cpu_max_percent: Option<u32>,
}

/// The delegated subtree, once found by [`CgroupTree::detect`].
#[derive(Debug, Clone)]
pub struct CgroupTree {
    /// The delegated directory `D`.
    root: PathBuf,
    /// Controllers available in `D` (its `cgroup.controllers`).
    available: BTreeSet<String>,
    /// Controllers enabled for jobs by [`prepare`](Self::prepare).
    enabled: BTreeSet<String>,
    ops: FsOps,
}

/// Our cgroup from the text of `/proc/self/cgroup`: the path of the `0::` line.
pub fn own_cgroup(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
}

/// Whether `path` is a cgroup2 mount (`statfs` magic `CGROUP2_SUPER_MAGIC`).
pub fn is_cgroup2(path: &Path) -> Result<bool, String> {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
    let st = statfs(path).map_err(|e| format!("statfs {}: {e}", path.display()))?;
    Ok(st.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

impl CgroupTree {
    /// The system's tree: `/sys/fs/cgroup` must be cgroup2, our cgroup is read from
    /// `/proc/self/cgroup`.
    pub fn detect_system() -> Result<CgroupTree, Unavailable> {
        let root = Path::new("/sys/fs/cgroup");
        match is_cgroup2(root) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Unavailable(format!(
                    "{} is not a cgroup2 mount (legacy or hybrid cgroup v1 hierarchy)",
                    root.display()
                )))
            }
            Err(e) => return Err(Unavailable(e)),
        }
        let text = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| Unavailable(format!("cannot read /proc/self/cgroup: {e}")))?;
        CgroupTree::detect(root, &text)
    }

    /// Finds the delegated directory below `cgroupfs_root` (which the caller has checked to be
    /// cgroup2, see [`is_cgroup2`]) from the text of `/proc/self/cgroup`. If we already are in
    /// a `supervisor` cgroup, the delegated directory is its parent. It must not be the
    /// cgroupfs root and must be writable by us.
    pub fn detect(cgroupfs_root: &Path, proc_self_cgroup: &str) -> Result<CgroupTree, Unavailable> {
        let own = own_cgroup(proc_self_cgroup)
            .ok_or_else(|| Unavailable("no cgroup v2 entry (0::) in /proc/self/cgroup".into()))?;
        let rel = own.trim_start_matches('/');
        let rel = match rel.rsplit_once('/') {
            Some((parent, "supervisor")) => parent,
            None if rel == "supervisor" => "",
            _ => rel,
        };
        if rel.is_empty() {
            return Err(Unavailable(
                "we run in the root cgroup, which nobody delegated to us \
                 (run under systemd with Delegate=yes)"
                    .into(),
            ));
        }
        let root = cgroupfs_root.join(rel);
        for file in ["cgroup.procs", "cgroup.subtree_control"] {
            let p = root.join(file);
            if let Err(e) = nix::unistd::access(&p, nix::unistd::AccessFlags::W_OK) {
                return Err(Unavailable(format!(
                    "{} is not writable ({e}): no Delegate=yes",
                    p.display()
                )));
            }
        }
        let available = read_controllers(&root.join("cgroup.controllers"))
            .map_err(|e| Unavailable(format!("cannot read cgroup.controllers: {e}")))?;
        Ok(CgroupTree {
            root,
            available,
            enabled: BTreeSet::new(),
            ops: FsOps::KERNEL,
        })
    }

    /// Replaces the kernel's mkdir/rmdir (tests on a fake tree).
    pub fn with_ops(mut self, ops: FsOps) -> CgroupTree {
        self.ops = ops;
        self
    }

    /// The delegated directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Controllers enabled for job cgroups (after [`prepare`](Self::prepare)); limits of
    /// controllers not in this set are not applied: log that once.
    pub fn controllers(&self) -> &BTreeSet<String> {
        &self.enabled
    }

    /// Makes the tree usable: moves every process of the delegated directory (the daemon, and
    /// anything else systemd started there) into `supervisor/`, enables the wanted controllers
    /// in the delegated directory and in `jobs/`, and kills and removes stale job cgroups left
    /// by an earlier run. Call once at start, before starting any job.
    pub fn prepare(&mut self) -> Result<(), CgroupError> {
        let supervisor = self.root.join("supervisor");
        self.mkdir_exists_ok(&supervisor)?;
        self.migrate_all(&self.root, &supervisor)?;
        let wanted: Vec<&str> = WANTED_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| self.available.contains(*c))
            .collect();
        enable_controllers(&self.root, &wanted)?;
        let jobs = self.jobs_dir();
        self.mkdir_exists_ok(&jobs)?;
        enable_controllers(&jobs, &wanted)?;
        self.enabled = wanted.iter().map(|s| s.to_string()).collect();
        for entry in fs::read_dir(&jobs).map_err(io_err("read_dir", &jobs))? {
            let entry = entry.map_err(io_err("read_dir", &jobs))?;
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let stale = JobCgroup {
                    path: entry.path(),
                    ops: self.ops,
                };
                stale.kill()?;
                stale.remove()?;
            }
        }
        Ok(())
    }

    fn jobs_dir(&self) -> PathBuf {
        self.root.join("jobs")
    }

    fn mkdir_exists_ok(&self, path: &Path) -> Result<(), CgroupError> {
        match (self.ops.mkdir)(path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_err("mkdir", path)(e)),
            _ => Ok(()),
        }
    }

    /// Writes every pid of `from/cgroup.procs` into `to/cgroup.procs` until `from` is empty
    /// (processes can fork meanwhile: a few rounds).
    fn migrate_all(&self, from: &Path, to: &Path) -> Result<(), CgroupError> {
        let mut remaining = 0;
        for _round in 0..5 {
            let pids = read_pids(&from.join("cgroup.procs"))?;
            if pids.is_empty() {
                return Ok(());
            }
            remaining = pids.len();
            for pid in pids {
                match write_file(&to.join("cgroup.procs"), &pid.to_string()) {
                    // Exited meanwhile.
                    Err(CgroupError::Io { source, .. })
                        if source.raw_os_error() == Some(libc::ESRCH) => {}
                    r => r?,
                }
            }
        }
        Err(CgroupError::Migrate {
            path: from.to_path_buf(),
            remaining,
        })
    }

    /// Creates the leaf `jobs/<name>` with `limits`. The job's process joins it by writing its
    /// pid (or `0`) to [`JobCgroup::procs_path`].
    pub fn create_job(&self, name: &str, limits: &Limits) -> Result<JobCgroup, CgroupError> {
        create_leaf(&self.jobs_dir(), name, limits, self.ops)
    }

    /// Creates the inner node `jobs/<name>` for one computation; its jobs (and its Python
    /// worker, as a leaf such as `worker`) are leaves below it ([`ComputationCgroup::create_job`]),
    /// so the whole computation can be killed at once.
    pub fn create_computation(&self, name: &str) -> Result<ComputationCgroup, CgroupError> {
        check_name(name)?;
        let path = self.jobs_dir().join(name);
        (self.ops.mkdir)(&path).map_err(io_err("mkdir", &path))?;
        let wanted: Vec<&str> = self.enabled.iter().map(String::as_str).collect();
        let group = JobCgroup {
            path,
            ops: self.ops,
        };
        if let Err(e) = enable_controllers(&group.path, &wanted) {
            let _ = group.remove();
            return Err(e);
        }
        Ok(ComputationCgroup { group })
    }
}

fn create_leaf(
    parent: &Path,
    name: &str,
    limits: &Limits,
    ops: FsOps,
) -> Result<JobCgroup, CgroupError> {
    check_name(name)?;
    let path = parent.join(name);
    (ops.mkdir)(&path).map_err(io_err("mkdir", &path))?;
    let job = JobCgroup { path, ops };
    if let Err(e) = job.set_limits(limits) {
        let _ = job.remove();
        return Err(e);
    }
    Ok(job)
}

/// Job names become directory names next to the kernel's interface files (`memory.max`…): no
/// dots, so they can never collide.
fn check_name(name: &str) -> Result<(), CgroupError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidName(name.to_owned()))
    }
}

fn read_controllers(path: &Path) -> io::Result<BTreeSet<String>> {
    Ok(kernel_files::read(path)?
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

fn enable_controllers(dir: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    // One per write: a failure names the controller, and the others still get enabled.
    for c in controllers {
        write_file(&dir.join("cgroup.subtree_control"), &format!("+{c}"))?;
    }
    Ok(())
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    kernel_files::write(path, format!("{value}\n").as_bytes()).map_err(io_err("write", path))
}

/// Writes `value` to `path` if the file exists (its controller is enabled): one open, no
/// separate lookup first (each walks the whole cgroupfs path).
fn write_if_present(path: &Path, value: &str) -> Result<bool, CgroupError> {
    match kernel_files::write(path, format!("{value}\n").as_bytes()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("write", path)(e)),
    }
}

fn read_pids(path: &Path) -> Result<Vec<i32>, CgroupError> {
    let text = kernel_files::read_to_end(path).map_err(io_err("read", path))?;
    Ok(text
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Value of `key` in a flat-keyed file (`memory.events`, `pids.events`, `cgroup.events`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// One cgroup we created: a job's leaf (or, through [`ComputationCgroup`], a computation's
/// inner node). Dropping it does nothing: call [`kill`](Self::kill) and
/// [`remove`](Self::remove).
#[derive(Debug, Clone)]
pub struct JobCgroup {
    path: PathBuf,
    ops: FsOps,
}

/// Counters that explain why a job died.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupEvents {
    /// `memory.events` `oom_kill`: processes killed by the OOM killer in this cgroup.
    pub oom_kills: u64,
    /// `memory.events` `max`: times usage hit `memory.max`.
    pub memory_max_hits: u64,
    /// `pids.events` `max`: forks refused by `pids.max`.
    pub pids_max_hits: u64,
}

impl CgroupEvents {
    /// The reason to put in the job's exception text, if a limit explains its death.
    pub fn reason(&self) -> Option<&'static str> {
        if self.oom_kills > 0 {
            Some("memory limit (job_memory_max) exceeded: killed by the OOM killer")
        } else if self.pids_max_hits > 0 {
            Some("pids limit (job_pids_max) reached: fork/clone refused")
        } else {
            None
        }
    }
}

impl JobCgroup {
    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether process `pid` is in this cgroup, or has exited (reaped: no `/proc/<pid>`).
    pub fn holds_or_exited(&self, pid: i32) -> bool {
        match kernel_files::read(Path::new(&format!("/proc/{pid}/cgroup"))) {
            Ok(t) => self.holds_in(&t),
            Err(e) => e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH),
        }
    }

    /// Whether the `/proc/<pid>/cgroup` text `proc_cgroup` names this cgroup.
    pub fn holds_in(&self, proc_cgroup: &str) -> bool {
        own_cgroup(proc_cgroup)
            .map(|rel| rel.trim_start_matches('/'))
            .is_some_and(|rel| !rel.is_empty() && self.path.ends_with(rel))
    }

    /// `<cgroup>/cgroup.procs`: a process joins by writing its pid, or `0` for itself.
    pub fn procs_path(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Moves process `pid` (with all its threads) into this cgroup: how the daemon places a
    /// job forked by the Python worker, whose Landlock domain cannot open cgroup files.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        write_file(&self.procs_path(), &pid.to_string())
    }

    /// Opens `cgroup.procs` for writing (`O_CLOEXEC`), for a child to write `0` to: the kernel
    /// checks migration permission with the credentials of the opener, and Landlock checks at
    /// open time, so a sandboxed process can join through an fd the daemon opened.
    pub fn open_procs(&self) -> Result<fs::File, CgroupError> {
        let p = self.procs_path();
        OpenOptions::new()
            .append(true)
            .open(&p)
            .map_err(io_err("open", &p))
    }

    fn set_limits(&self, limits: &Limits) -> Result<(), CgroupError> {
        let p = |f: &str| self.path.join(f);
        if let Some(m) = limits.memory_max {
            write_if_present(&p("memory.max"), &m.to_string())?;
            write_if_present(&p("memory.swap.max"), "0")?;
        }
        // The whole job dies together when the OOM killer picks one of its processes.
        write_if_present(&p("memory.oom.group"), "1")?;
        if let Some(n) = limits.pids_max {
            write_if_present(&p("pids.max"), &n.to_string())?;
        }
        if let Some(pct) = limits.cpu_max_percent {
            let quota = (u64::from(pct) * CPU_PERIOD_US / 100).max(1000);
            write_if_present(&p("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
        }
        Ok(())
    }

    /// Pids in this cgroup (not its descendants).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        read_pids(&self.procs_path())
    }

    /// Whether any process lives in this cgroup or below (`cgroup.events` `populated`).
    pub fn is_populated(&self) -> Result<bool, CgroupError> {
        let p = self.path.join("cgroup.events");
        let text = kernel_files::read(&p).map_err(io_err("read", &p))?;
        Ok(keyed(&text, "populated").unwrap_or(0) != 0)
    }

    /// Kills every process in this cgroup and below: `cgroup.kill` (Linux 5.14); on older
    /// kernels, freeze if possible and SIGKILL every pid until none is left.
    pub fn kill(&self) -> Result<(), CgroupError> {
        if self.kill_at_once()? {
            return Ok(());
        }
        let frozen = write_if_present(&self.path.join("cgroup.freeze"), "1")?;
        let result = self.kill_each();
        if frozen {
            // Killed processes leave even while frozen; thaw so nothing stays stuck.
            let _ = write_if_present(&self.path.join("cgroup.freeze"), "0");
        }
        result
    }

    /// `cgroup.kill` (Linux 5.14): one write, never blocks. False when the kernel has none
    /// ([`kill`](Self::kill) then signals each process, and may sleep between rounds).
    pub fn kill_at_once(&self) -> Result<bool, CgroupError> {
        write_if_present(&self.path.join("cgroup.kill"), "1")
    }

    fn kill_each(&self) -> Result<(), CgroupError> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        for _round in 0..50 {
            let mut any = false;
            for dir in self.tree() {
                for pid in read_pids(&dir.join("cgroup.procs"))? {
                    any = true;
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            if !any {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(CgroupError::Busy {
            path: self.path.clone(),
        })
    }

    /// This cgroup and every cgroup below it, parents first.
    fn tree(&self) -> Vec<PathBuf> {
        let mut out = vec![self.path.clone()];
        let mut i = 0;
        while i < out.len() {
            if let Ok(rd) = fs::read_dir(&out[i]) {
                let mut children: Vec<PathBuf> = rd
                    .flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.path())
                    .collect();
                children.sort();
                out.extend(children);
            }
            i += 1;
        }
        out
    }

    /// The counters of `memory.events` and `pids.events` (zero where the controller is off).
    pub fn events(&self) -> CgroupEvents {
        let read = |f: &str| kernel_files::read(&self.path.join(f)).unwrap_or_default();
        let mem = read("memory.events");
        let pids = read("pids.events");
        CgroupEvents {
            oom_kills: keyed(&mem, "oom_kill").unwrap_or(0),
            memory_max_hits: keyed(&mem, "max").unwrap_or(0),
            pids_max_hits: keyed(&pids, "max").unwrap_or(0),
        }
    }

    /// Removes this cgroup and every cgroup below it (children first). `rmdir` fails with
    /// EBUSY while processes are still leaving, so it is retried briefly (≤ ~1 s): kill first.
    /// Blocking: from async code, call it in `spawn_blocking`.
    pub fn remove(&self) -> Result<(), CgroupError> {
        // Most often an empty leaf whose processes are gone: one rmdir, no listing.
        match (self.ops.rmdir)(&self.path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(_) => {}
        }
        for dir in self.tree().iter().rev() {
            let mut delay = Duration::from_millis(5);
            let mut tries = 0;
            loop {
                match (self.ops.rmdir)(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 8 => {
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_millis(200));
                        tries += 1;
                    }
                    Err(e) => return Err(io_err("rmdir", dir)(e)),
                }
            }
        }
        Ok(())
    }
}

/// A computation's inner node: its jobs and its worker are leaves below it.
#[derive(Debug, Clone)]
pub struct ComputationCgroup {
    group: JobCgroup,
}

impl ComputationCgroup {
    /// Creates the leaf `<computation>/<name>` with `limits`.
    pub fn create_job(&self, name: &str, limits: &Limits) -> Result<JobCgroup, CgroupError> {
        create_leaf(&self.group.path, name, limits, self.group.ops)
    }

    pub fn path(&self) -> &Path {
        self.group.path()
    }

    /// Kills every process of the computation (worker and jobs).
    pub fn kill(&self) -> Result<(), CgroupError> {
        self.group.kill()
    }

    /// Removes the computation's cgroups (kill first).
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.group.remove()
    }

    /// Counters summed over the whole computation (`memory.events` is hierarchical).
    pub fn events(&self) -> CgroupEvents {
        self.group.events()
    }
}

/// An imitation of cgroupfs in a plain directory, for tests: what the kernel creates on
/// `mkdir` and allows on `rmdir`.
pub mod fake {
    use super::*;

    /// `mkdir`/`rmdir` that behave like the kernel's on a fake tree.
    pub const OPS: FsOps = FsOps {
        mkdir: mkdir_cgroup,
        rmdir: rmdir_cgroup,
    };

    /// Controllers enabled in a fake `cgroup.subtree_control` (our writes are `+name` lines;
    /// a kernel-style `name name` line works too).
    pub fn enabled_in(dir: &Path) -> BTreeSet<String> {
        let mut set = BTreeSet::new();
        let text = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        for word in text.split_whitespace() {
            if let Some(c) = word.strip_prefix('-') {
                set.remove(c);
            } else {
                set.insert(word.trim_start_matches('+').to_owned());
            }
        }
        set
    }

    /// Fills `dir` with the interface files of a cgroup whose parent enabled `controllers`.
    pub fn populate(dir: &Path, controllers: &BTreeSet<String>) -> io::Result<()> {
        let names: Vec<&str> = controllers.iter().map(String::as_str).collect();
        let mut files: Vec<(&str, String)> = vec![
            ("cgroup.procs", String::new()),
            ("cgroup.controllers", names.join(" ")),
            ("cgroup.subtree_control", String::new()),
            ("cgroup.events", "populated 0\nfrozen 0\n".into()),
            ("cgroup.kill", String::new()),
            ("cgroup.freeze", "0\n".into()),
        ];
        if controllers.contains("memory") {
            files.push(("memory.max", "max\n".into()));
            files.push(("memory.swap.max", "max\n".into()));
            files.push(("memory.oom.group", "0\n".into()));
            files.push((
                "memory.events",
                "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n".into(),
            ));
        }
        if controllers.contains("pids") {
            files.push(("pids.max", "max\n".into()));
            files.push(("pids.events", "max 0\n".into()));
        }
        if controllers.contains("cpu") {
            files.push(("cpu.max", "max 100000\n".into()));
        }
        for (name, content) in files {
            fs::write(dir.join(name), content)?;
        }
        Ok(())
    }

    fn mkdir_cgroup(path: &Path) -> io::Result<()> {
        fs::create_dir(path)?;
        let parent = path.parent().unwrap_or(path);
        populate(path, &enabled_in(parent))
    }

    fn rmdir_cgroup(path: &Path) -> io::Result<()> {
        let has_child = fs::read_dir(path)?
            .flatten()
            .any(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false));
        let populated = !fs::read_to_string(path.join("cgroup.procs"))
            .unwrap_or_default()
            .trim()
            .is_empty();
        if has_child || populated {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        fs::remove_dir_all(path)
    }

    /// A fake delegated directory `<tmp>/sys/fs/cgroup/<own>` with `controllers` available
    /// and `pids` in its `cgroup.procs`; returns the cgroupfs root.
    pub fn delegated_tree(
        tmp: &Path,
        own: &str,
        controllers: &[&str],
        pids: &[i32],
    ) -> io::Result<PathBuf> {
        let root = tmp.join("sys/fs/cgroup");
        let dir = root.join(own.trim_start_matches('/'));
        fs::create_dir_all(&dir)?;
        populate(&dir, &controllers.iter().map(|s| s.to_string()).collect())?;
        let procs: String = pids.iter().map(|p| format!("{p}\n")).collect();
        fs::write(dir.join("cgroup.procs"), procs)?;
        Ok(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const OWN: &str = "/system.slice/dispynode.service";

    fn proc_cgroup(path: &str) -> String {
        format!("12:memory:/foo\n1:name=systemd:{path}\n0::{path}\n")
    }

    fn tree(tmp: &Path, controllers: &[&str], pids: &[i32]) -> CgroupTree {
        let root = fake::delegated_tree(tmp, OWN, controllers, pids).unwrap();
        CgroupTree::detect(&root, &proc_cgroup(OWN))
            .unwrap()
            .with_ops(fake::OPS)
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    #[test]
    fn parses_own_cgroup() {
        assert_eq!(own_cgroup(&proc_cgroup(OWN)), Some(OWN));
        assert_eq!(own_cgroup("3:cpu:/\n2:memory:/x\n"), None);
    }

    #[test]
    fn a_live_process_elsewhere_is_not_held_an_exited_one_is() {
        let cg = JobCgroup {
            path: PathBuf::from("/sys/fs/cgroup/nowhere/jobs/c1/s3"),
            ops: FsOps::KERNEL,
        };
        assert!(!cg.holds_or_exited(std::process::id() as i32));
        // Above any pid_max (2^22): no such process.
        assert!(cg.holds_or_exited(i32::MAX));
    }

    #[test]
    fn holds_in_reads_the_v2_line() {
        let cg = JobCgroup {
            path: PathBuf::from("/sys/fs/cgroup/system.slice/d.service/jobs/c1/s3"),
            ops: FsOps::KERNEL,
        };
        assert!(cg.holds_in("0::/system.slice/d.service/jobs/c1/s3\n"));
        assert!(cg.holds_in("4:memory:/x\n0::/system.slice/d.service/jobs/c1/s3\n"));
        assert!(!cg.holds_in("0::/system.slice/d.service/jobs/c1/s31\n"));
        assert!(!cg.holds_in("0::/system.slice/d.service/jobs/c1/worker\n"));
        assert!(!cg.holds_in("0::/\n"));
        assert!(!cg.holds_in("1:cpu:/system.slice/d.service/jobs/c1/s3\n"));
    }

    #[test]
    fn detect_finds_the_delegated_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fake::delegated_tree(tmp.path(), OWN, &["cpu", "io", "memory"], &[]).unwrap();
        let t = CgroupTree::detect(&root, &proc_cgroup(OWN)).unwrap();
        assert_eq!(t.root(), root.join("system.slice/dispynode.service"));
        assert_eq!(
            t.available,
            ["cpu", "io", "memory"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        );
        // DelegateSubgroup=supervisor: systemd started us in supervisor/ already.
        let t = CgroupTree::detect(&root, &proc_cgroup(&format!("{OWN}/supervisor"))).unwrap();
        assert_eq!(t.root(), root.join("system.slice/dispynode.service"));
    }

    #[test]
    fn detect_refuses_what_is_not_delegated() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fake::delegated_tree(tmp.path(), OWN, &["memory"], &[]).unwrap();
        let e = CgroupTree::detect(&root, "0::/\n").unwrap_err();
        assert!(e.0.contains("root cgroup"), "{e}");
        let e = CgroupTree::detect(&root, "4:memory:/x\n").unwrap_err();
        assert!(e.0.contains("0::"), "{e}");
        let e = CgroupTree::detect(&root, "0::/elsewhere.service\n").unwrap_err();
        assert!(e.0.contains("not writable"), "{e}");
        assert!(e.to_string().starts_with("cgroup v2 not delegated: /"));
        assert!(e.to_string().ends_with("; falling back to process groups"));
    }

    #[test]
    fn prepare_moves_processes_and_enables_controllers() {
        let tmp = tempfile::tempdir().unwrap();
        // Only what cgroup.controllers lists can be enabled: io is not wanted, pids is absent.
        let mut t = tree(tmp.path(), &["cpu", "io", "memory"], &[]);
        t.prepare().unwrap();
        let d = t.root().to_path_buf();
        assert!(d.join("supervisor/cgroup.procs").exists());
        assert_eq!(read(&d.join("cgroup.subtree_control")), "+cpu\n+memory\n");
        assert_eq!(
            read(&d.join("jobs/cgroup.subtree_control")),
            "+cpu\n+memory\n"
        );
        assert_eq!(
            t.controllers().iter().cloned().collect::<Vec<_>>(),
            ["cpu", "memory"]
        );
        // Idempotent (a restart finds supervisor/ and jobs/ already there).
        t.prepare().unwrap();
    }

    #[test]
    fn prepare_migrates_every_process_into_supervisor() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = tree(tmp.path(), &["memory", "pids"], &[4242, 4343]);
        // A fake file does not empty itself when the kernel would move the processes, so the
        // migration reports them as left over; what matters is what was written where.
        match t.prepare() {
            Err(CgroupError::Migrate { remaining, .. }) => assert_eq!(remaining, 2),
            other => panic!("expected Migrate, got {other:?}"),
        }
        let written = read(&t.root().join("supervisor/cgroup.procs"));
        assert!(written.starts_with("4242\n4343\n4242\n4343\n"), "{written}");
        // Nothing was enabled while processes were still there.
        assert_eq!(read(&t.root().join("cgroup.subtree_control")), "");
    }

    #[test]
    fn prepare_removes_stale_job_cgroups() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = tree(tmp.path(), &["memory", "pids"], &[]);
        t.prepare().unwrap();
        let old = t.create_job("old-run-7", &Limits::default()).unwrap();
        assert!(old.path().is_dir());
        t.prepare().unwrap();
        assert!(!old.path().exists());
    }

    #[test]
    fn create_job_writes_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = tree(tmp.path(), &["cpu", "memory", "pids"], &[]);
        t.prepare().unwrap();
        let job = t
            .create_job(
                "c1-j42",
                &Limits {
                    memory_max: Some(256 << 20),
                    pids_max: Some(64),
                    cpu_max_percent: Some(150),
                },
            )
            .unwrap();
        let p = |f: &str| read(&job.path().join(f));
        assert_eq!(job.path(), t.root().join("jobs/c1-j42"));
        assert_eq!(p("memory.max"), "max\n268435456\n");
        assert_eq!(p("memory.swap.max"), "max\n0\n");
        assert_eq!(p("memory.oom.group"), "0\n1\n");
        assert_eq!(p("pids.max"), "max\n64\n");
        assert_eq!(p("cpu.max"), "max 100000\n150000 100000\n");
        assert_eq!(job.procs_path(), job.path().join("cgroup.procs"));
        // An fd for the child to write 0 into; or the daemon places a pid itself.
        job.open_procs().unwrap().write_all(b"0\n").unwrap();
        job.add_process(4711).unwrap();
        assert_eq!(p("cgroup.procs"), "0\n4711\n");
    }

    #[test]
    fn limits_of_missing_controllers_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = tree(tmp.path(), &["pids"], &[]);
        t.prepare().unwrap();
        let job = t
            .create_job(
                "j1",
                &Limits {
                    memory_max: Some(1 << 30),
                    pids_max: Some(10),
                    cpu_max_percent: Some(100),
                },
            )
            .unwrap();
        assert!(!job.path().join("memory.max").exists());
        assert!(!job.path().join("cpu.max").exists());
        assert_eq!(read(&job.path().join("pids.max")), "max\n10\n");
    }

    #[test]
    fn names_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = tree(tmp.path(), &["memory"], &[]);
        t.prepare().unwrap();
        for bad in ["", "memory.max", "../escape", "a/b", &"x".repeat(65)] {
            assert!(
                matches!(
                    t.create_job(bad, &Limits::default()),
                    Err(CgroupError::InvalidName(_))
                ),
                "{bad:?}"
            );
        }
        // Creating an existing job cgroup fails instead of sharing it.
        t.create_job("j1", &Limits::default()).unwrap();
        assert!(t.create_job("j1", &Limits::default()).is_err());
    }

    #[test]
    fn kill_uses_cgroup_kill() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = tree(tmp.path(), &["memory"], &[]);
        t.prepare().unwrap();
        let job = t.create_job("j1", &Limits::default()).unwrap();
        job.kill().unwrap();
        assert_eq!(read(&job.path().join("cgroup.kill")), "1\n");
    }

    #[test]
    fn kill_falls_back_to_sigkill_without_cgroup_kill() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = tree(tmp.path(), &["memory"], &[]);
        t.prepare().unwrap();
        let job = t.create_job("j1", &Limits::default()).unwrap();
        fs::remove_file(job.path().join("cgroup.kill")).unwrap(); // kernel < 5.14
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        fs::write(job.procs_path(), format!("{}\n", child.id())).unwrap();
        // The fake cannot empty cgroup.procs when the process dies: empty it once the child
        // is reaped, as the kernel would, from a helper thread.
        let procs = job.procs_path();
        let pid = child.id();
        let watcher = std::thread::spawn(move || {
            let status = child.wait().unwrap();
            fs::write(procs, "").unwrap();
            status
        });
        job.kill().unwrap();
        let status = watcher.join().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "pid {pid}");
        // Frozen during the kill, thawed after.
        assert_eq!(read(&job.path().join("cgroup.freeze")), "0\n1\n0\n");
    }

    #[test]
    fn events_explain_the_death() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = tree(tmp.path(), &["memory", "pids"], &[]);
        t.prepare().unwrap();
        let job = t.create_job("j1", &Limits::default()).unwrap();
        assert_eq!(job.events(), CgroupEvents::default());
        assert_eq!(job.events().reason(), None);
        fs::write(job.path().join("pids.events"), "max 3\n").unwrap();
        assert_eq!(job.events().pids_max_hits, 3);
        assert!(job.events().reason().unwrap().starts_with("pids limit"));
        fs::write(
            job.path().join("memory.events"),
            "low 0\nhigh 0\nmax 17\noom 1\noom_kill 1\noom_group_kill 1\n",
        )
        .unwrap();
        let ev = job.events();
        assert_eq!((ev.oom_kills, ev.memory_max_hits), (1, 17));
        assert!(ev.reason().unwrap().starts_with("memory limit"));
    }

    #[test]
    fn remove_retries_while_busy_and_removes_children_first() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = tree(tmp.path(), &["memory", "pids"], &[]);
        t.prepare().unwrap();
        let comp = t.create_computation("c7").unwrap();
        assert_eq!(
            read(&comp.path().join("cgroup.subtree_control")),
            "+memory\n+pids\n"
        );
        let worker = comp.create_job("worker", &Limits::default()).unwrap();
        let job = comp
            .create_job(
                "j1",
                &Limits {
                    pids_max: Some(5),
                    ..Limits::default()
                },
            )
            .unwrap();
        assert_eq!(read(&job.path().join("pids.max")), "max\n5\n");
        assert!(worker.path().starts_with(comp.path()));
        // A process still leaving: rmdir gets EBUSY until the kernel (here: a thread) empties it.
        fs::write(job.procs_path(), "999999\n").unwrap();
        assert!(job.is_populated().is_ok());
        let procs = job.procs_path();
        let emptier = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            fs::write(procs, "").unwrap();
        });
        comp.kill().unwrap();
        comp.remove().unwrap();
        emptier.join().unwrap();
        assert!(!comp.path().exists());
        // Still busy after the retries: an error, and the cgroup is left in place.
        let stuck = t.create_job("stuck", &Limits::default()).unwrap();
        fs::write(stuck.procs_path(), "999999\n").unwrap();
        match stuck.remove() {
            Err(CgroupError::Io {
                op: "rmdir",
                source,
                ..
            }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EBUSY))
            }
            other => panic!("expected EBUSY, got {other:?}"),
        }
        assert!(stuck.path().exists());
    }

    #[test]
    fn populated_from_cgroup_events() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = tree(tmp.path(), &["memory"], &[]);
        t.prepare().unwrap();
        let job = t.create_job("j1", &Limits::default()).unwrap();
        assert!(!job.is_populated().unwrap());
        fs::write(job.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert!(job.is_populated().unwrap());
    }

    #[test]
    fn this_host_without_delegated_cgroup_v2_falls_back() {
        // Build machines: /sys/fs/cgroup is a tmpfs (hybrid v1). Elsewhere this may succeed.
        if is_cgroup2(Path::new("/sys/fs/cgroup")) == Ok(false) {
            let e = CgroupTree::detect_system().unwrap_err();
            assert!(e.0.contains("not a cgroup2 mount"), "{e}");
        }
    }
}
