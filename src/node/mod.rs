//! The node: computations, jobs and CPU slots, driven by requests from the network and by
//! events from job processes. `requests` handles what clients send, `jobs` runs and finishes
//! jobs, `discovery` answers PINGs and announces the node.

mod chunk_writer;
mod discovery;
mod jobs;
pub mod leftovers;
mod log_limit;
mod requests;
mod spawning;
mod timers;
mod unauth_limit;
pub mod worker;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::protocol::auth;
use crate::protocol::frame::AUTH_LEN;
use crate::protocol::message::Compute;

use self::worker::Worker;

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot prepare {path}: {source}")]
    Prefix {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find the Python interpreter {python:?}: {reason}")]
    Python { python: String, reason: String },
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Leftover(#[from] leftovers::LeftoverError),
    #[error("cannot use the state directory: {0}")]
    State(#[from] crate::results::StoreError),
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Systemd(#[from] crate::systemd::SystemdError),
    #[error("dropping privileges: {0}")]
    Privilege(#[from] crate::sandbox::PrivilegeError),
    #[error("started as root, but {missing} does not exist (the account to drop to is --user {user} / --group {group})")]
    Account {
        user: String,
        group: String,
        missing: String,
    },
    #[error(
        "--{option} {path} already exists, belongs to uid {uid} and {why}: the node, started as \
         root, would give it to the account it drops to (uid {account}); name a directory of its \
         own (the node creates it), or give this one to that account first"
    )]
    NotOurs {
        option: &'static str,
        path: PathBuf,
        uid: u32,
        why: &'static str,
        account: u32,
    },
    #[error("--{option} {path} is not a directory")]
    NotADirectory { option: &'static str, path: PathBuf },
}

impl NodeError {
    /// The exit status for a start that failed: 2, as for a bad option value, when the
    /// configuration or the host must change first (the unit's `RestartPreventExitStatus=2`
    /// then keeps systemd from retrying every few seconds); 1 when a retry may work (a port
    /// still taken, an address not yet assigned, an I/O error).
    pub fn exit_status(&self) -> u8 {
        match self {
            NodeError::Systemd(crate::systemd::SystemdError::Setup { .. }) => 1,
            NodeError::Python { .. }
            | NodeError::Tls(_)
            | NodeError::Systemd(_)
            | NodeError::Account { .. }
            | NodeError::NotOurs { .. }
            | NodeError::NotADirectory { .. } => 2,
            _ => 1,
        }
    }
}

/// One address the node serves on, and the address it announces for it (NAT: ext_ip_addr).
#[derive(Debug, Clone)]
pub struct NodeAddr {
    pub bind: IpAddr,
    pub announce: String,
}

impl NodeAddr {
    /// Whether a client's `node_ip_addr` names this address.
    fn matches(&self, s: &str) -> bool {
        s == self.announce || s == self.bind.to_string() || self.bind.is_unspecified()
    }
}

/// A registered computation.
pub(crate) struct Computation {
    pub compute: Compute,
    /// The computation's directory under the prefix.
    pub dir: PathBuf,
    /// The announced address the client reached us on: `_JobReply.ip_addr` must equal it (G7).
    pub reply_ip: String,
    /// Where JOB_REPLY goes: the scheduler's job_result_port.
    pub reply_addr: SocketAddr,
    pub worker: Option<Arc<Worker>>,
    pub setup_done: bool,
    /// Use counts of transferred files (relative to `dir`), as the reference keeps them.
    pub file_uses: HashMap<PathBuf, u32>,
    pub closing: bool,
    /// The computation's cgroup (worker and program jobs below it), with cgroup v2.
    pub cgroup: Option<crate::sandbox::cgroup::ComputationCgroup>,
    /// Replies sent or saved so far, for the "computation closed" line.
    pub tally: JobTally,
}

/// How a computation's jobs ended. Jobs are logged one by one at debug level only: at hundreds
/// of jobs a second, two info lines per job would exceed journald's default per-service rate
/// limit (10 000 messages in 30 s), and journald then drops every message of the node,
/// warnings included, for the rest of the interval.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct JobTally {
    /// Status Finished (a program's exit code does not matter, as in dispy).
    pub finished: u64,
    /// Status Terminated: the function raised, the client terminated it, or the node killed it.
    pub terminated: u64,
    /// Of those, ended by a cgroup limit (job_memory_max, job_pids_max).
    pub killed: u64,
}

/// A job from JOB until its reply is handed to the network.
#[derive(Clone)]
pub(crate) struct RunningJob {
    pub compute_id: i64,
    pub uid: i64,
    pub hash: String,
    pub start_time: f64,
    pub terminated: bool,
    /// Process (group) id once known.
    pub pid: Option<i32>,
    /// Per-job depends, relative to the computation directory.
    pub xfer_files: Vec<PathBuf>,
    /// The job has ended and its reply is being delivered (or saved).
    pub finishing: bool,
    /// Its worker's first `done` has arrived: a later one (a job killed, with its cgroup,
    /// right after sending its own done, is reported again by the worker) is ignored.
    pub done_seen: bool,
    /// The job's own cgroup (program jobs, with cgroup v2).
    pub cgroup: Option<crate::sandbox::JobCgroup>,
}

pub(crate) struct State {
    pub avail_cpus: usize,
    /// Job replies sent or saved since the node started (for `STATUS=`).
    pub jobs_done: u64,
    /// The one scheduler (ip, port) served at a time (§4.6).
    pub scheduler: Option<(String, u16)>,
    /// Where unsolicited announcements go: the configured scheduler port, then the last client's.
    pub announce_port: u16,
    pub last_scheduler_ip: Option<String>,
    pub computations: HashMap<i64, Computation>,
    pub jobs: HashMap<u64, RunningJob>,
    /// Clients left to serve (-1: no limit).
    pub serve: i64,
    /// Last sign of life from the current scheduler (requests, ACKs, PULSE answers).
    pub last_activity: std::time::Instant,
    /// Undelivered results in the store (so the resend timer need not scan an empty store).
    pub saved_results: usize,
}

pub struct Node {
    pub(crate) cfg: Config,
    /// The settings SIGHUP may change while serving (see `reload`).
    live: std::sync::RwLock<Arc<Config>>,
    /// One reload at a time: a second SIGHUP waits, so the last file read is the one applied
    /// and READY follows the last RELOADING.
    reloading: tokio::sync::Mutex<()>,
    pub(crate) sign: String,
    pub(crate) auth: [u8; AUTH_LEN],
    pub(crate) addrs: Vec<NodeAddr>,
    pub(crate) platform: String,
    pub(crate) python: Python,
    pub(crate) sandbox: Sandbox,
    pub(crate) notifier: crate::systemd::Notifier,
    pub(crate) state: Mutex<State>,
    /// Woken whenever a job ends, for CLOSE waiting on its computation's jobs.
    pub(crate) jobs_changed: Notify,
    /// Undelivered results, kept in the state directory until the client acknowledges them.
    pub(crate) results: Arc<crate::results::ResultStore>,
    /// Bounds the PONGs in flight (see `limits::MAX_PONGS_IN_FLIGHT`).
    pub(crate) pong_slots: Arc<tokio::sync::Semaphore>,
    /// Bytes of large request bodies held at once (see `limits::request_budget`).
    pub(crate) request_budget: Arc<tokio::sync::Semaphore>,
    /// TLS for every TCP connection, both ways, when a certfile is configured.
    pub(crate) tls: Option<crate::tls::Tls>,
    /// Processes we started, for `--clean` after a crash.
    pub(crate) procs: leftovers::ProcRecords,
    /// Caps the log lines of refused connections (see `log_limit`).
    log_limit: Mutex<log_limit::LogLimiter>,
    _lock: leftovers::StateLock,
    /// One resend pass at a time, so a result is never pushed twice at once.
    pub(crate) resending: tokio::sync::Mutex<()>,
    /// Starts program jobs (sandbox/spawner.rs); made with the first one, again if it dies.
    pub(crate) spawner: tokio::sync::Mutex<Option<Arc<crate::sandbox::Spawner>>>,
    next_job: AtomicU64,
    shutdown_tx: watch::Sender<bool>,
}

pub(crate) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Node {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; keep serving with the state as it is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn next_job_id(&self) -> u64 {
        self.next_job.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn msg_timeout(&self) -> Duration {
        self.live().msg_timeout
    }

    /// The announced address for a client's `node_ip_addr`, if it is one of ours.
    pub(crate) fn addr_for(&self, node_ip_addr: &str) -> Option<&NodeAddr> {
        self.addrs
            .iter()
            .find(|a| a.announce == node_ip_addr || a.bind.to_string() == node_ip_addr)
            .or_else(|| self.addrs.iter().find(|a| a.matches(node_ip_addr)))
    }

    /// The current reloadable settings.
    pub(crate) fn live(&self) -> Arc<Config> {
        self.live
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// SIGHUP: re-reads the configuration (command line and file, as at start) and applies
    /// the settings that are safe to change while serving; the others are reported as
    /// needing a restart. Read on a blocking thread: resolving a host name given as `-i` can
    /// take seconds, which the runtime's only thread must not wait for.
    pub(crate) async fn reload(self: Arc<Self>) {
        let _one_at_a_time = self.reloading.lock().await;
        self.notifier.reloading();
        let parsed =
            tokio::task::spawn_blocking(|| crate::config::parse_args(std::env::args_os())).await;
        let Ok(parsed) = parsed else {
            tracing::error!(
                "reload failed: the configuration reader panicked; kept the current one"
            );
            self.notifier.ready();
            return;
        };
        match parsed {
            Ok(crate::config::Command::Run(new)) => {
                let old = &self.cfg;
                let mut restart = Vec::new();
                macro_rules! fixed {
                    ($($f:ident),*) => {$( if old.$f != new.$f { restart.push(stringify!($f)); } )*};
                }
                fixed!(
                    cpus,
                    ip_addr,
                    ext_ip_addr,
                    node_port,
                    name,
                    secret,
                    dest_path_prefix,
                    state_dir,
                    scheduler_node,
                    scheduler_port,
                    keyfile,
                    certfile,
                    serve,
                    python,
                    user,
                    group,
                    debug,
                    clean
                );
                let mut live = (*self.live()).clone();
                live.max_file_size = new.max_file_size;
                live.msg_timeout = new.msg_timeout;
                live.zombie_interval = new.zombie_interval;
                live.service_start = new.service_start;
                live.service_stop = new.service_stop;
                live.service_end = new.service_end;
                live.job_memory_max = new.job_memory_max;
                live.job_pids_max = new.job_pids_max;
                live.job_cpu_max = new.job_cpu_max;
                if let Ok(mut l) = self.live.write() {
                    *l = Arc::new(live);
                }
                if restart.is_empty() {
                    tracing::info!("configuration reloaded");
                } else {
                    tracing::warn!(needs_restart = ?restart, "configuration reloaded; these settings changed but need a restart to take effect");
                }
            }
            Ok(_) => tracing::warn!(
                "reload: --save_config is not a serving configuration; kept the current one"
            ),
            Err(e) => {
                // A node started as root reads its files again as the account it dropped to.
                let hint = e
                    .to_string()
                    .contains("Permission denied")
                    .then(|| format!("the configuration and the files it names are read again as uid {}, which must be able to read them", nix::unistd::getuid()));
                tracing::error!(error = %e, hint, "reload failed; kept the current configuration")
            }
        }
        self.notifier.ready();
    }

    /// Feeds the systemd watchdog and updates `systemctl status`; taking the state lock
    /// proves the node is not wedged.
    pub(crate) fn heartbeat(&self) {
        let status = {
            let st = self.lock();
            crate::systemd::NodeStatus {
                client: st.scheduler.as_ref().map(|s| s.0.as_str()),
                computations: st.computations.len(),
                jobs_running: st.jobs.len(),
                cpus_free: st.avail_cpus,
                cpus: self.cfg.cpus,
                jobs_done: st.jobs_done,
            }
            .to_string()
        };
        self.notifier.status(&status);
        self.notifier.watchdog();
        self.log_suppressed();
    }

    /// Whether a line of a kind that peers without the secret can cause may be logged now
    /// (`log_limit`); `kind` is the line's message.
    pub(crate) fn may_log(&self, kind: &'static str) -> bool {
        self.log_limit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(kind, std::time::Instant::now())
    }

    /// One line per kind for the lines `may_log` held back since the last call.
    pub(crate) fn log_suppressed(&self) {
        let counts = self
            .log_limit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_suppressed();
        for (kind, n) in counts {
            tracing::warn!(
                suppressed = n,
                kind,
                "{n} more lines like \"{kind}\" not logged (at most {} a minute each)",
                log_limit::BURST
            );
        }
    }

    /// Asks the node to stop (after the current request).
    pub fn request_shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
    }
}

/// The Python interpreter of function computations, resolved once at start (as the user the
/// jobs run as), so a broken setup fails loudly and early rather than at the first computation.
#[derive(Debug, Clone)]
pub struct Python {
    /// `sys.executable`: the real interpreter, not a shim.
    pub exe: String,
    /// `sys.prefix` and `sys.base_prefix`: what jobs must be able to read.
    pub prefixes: Vec<PathBuf>,
}

fn resolve_python(python: &str) -> Result<Python, NodeError> {
    let err = |reason: String| NodeError::Python {
        python: python.to_owned(),
        reason,
    };
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import sys; print(sys.executable); print(sys.prefix); print(sys.base_prefix)",
        ])
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(err(if stderr.is_empty() {
            format!(
                "it exited with {} (is it a Python interpreter?)",
                out.status
            )
        } else {
            stderr
        }));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let exe = lines
        .next()
        .map(str::to_owned)
        .ok_or_else(|| err("no sys.executable".into()))?;
    let mut prefixes: Vec<PathBuf> = lines.map(PathBuf::from).collect();
    prefixes.dedup();
    Ok(Python { exe, prefixes })
}

/// The first non-loopback IPv4 address of the host, for announcing when no `-i` was given.
fn primary_address() -> IpAddr {
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
                let ip = sin.ip();
                if !ip.is_loopback() && !ip.is_unspecified() {
                    return IpAddr::V4(ip);
                }
            }
        }
    }
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

fn platform_string() -> String {
    match nix::sys::utsname::uname() {
        Ok(u) => format!(
            "{}-{}-{}",
            u.sysname().to_string_lossy(),
            u.release().to_string_lossy(),
            u.machine().to_string_lossy()
        ),
        Err(_) => "Linux".to_owned(),
    }
}

/// Builds the node's addresses from `-i` / `--ext_ip_addr` (paired by position).
fn node_addrs(cfg: &Config) -> Vec<NodeAddr> {
    if cfg.ip_addr.is_empty() {
        let announce = cfg
            .ext_ip_addr
            .first()
            .copied()
            .unwrap_or_else(primary_address);
        return vec![NodeAddr {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            announce: announce.to_string(),
        }];
    }
    cfg.ip_addr
        .iter()
        .enumerate()
        .map(|(i, ip)| NodeAddr {
            bind: *ip,
            // `-i 0.0.0.0` is the default's wildcard: announced as the host's address, as
            // clients cannot reach 0.0.0.0.
            announce: match cfg.ext_ip_addr.get(i) {
                Some(ext) => ext.to_string(),
                None if *ip == IpAddr::V4(Ipv4Addr::UNSPECIFIED) => primary_address().to_string(),
                None => ip.to_string(),
            },
        })
        .collect()
}

/// Everything set up before the async runtime starts: sockets (bound or passed by systemd),
/// directories, lock, TLS, sandbox facilities, and the privilege drop. Done single-threaded,
/// because taking systemd's sockets and dropping privileges must happen before threads exist.
pub struct Prepared {
    cfg: Config,
    tcp: Vec<std::net::TcpListener>,
    udp: Vec<std::net::UdpSocket>,
    addrs: Vec<NodeAddr>,
    python: Python,
    tls: Option<crate::tls::Tls>,
    lock: leftovers::StateLock,
    procs: leftovers::ProcRecords,
    results: crate::results::ResultStore,
    saved_results: usize,
    sandbox: Sandbox,
    notifier: crate::systemd::Notifier,
}

/// What isolates jobs on this host, found once at start.
pub struct Sandbox {
    pub landlock: crate::sandbox::LandlockReport,
    pub cgroups: Option<crate::sandbox::CgroupTree>,
    /// Paths jobs must never read even when under a granted directory.
    pub deny: Vec<PathBuf>,
}

fn prefix_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Prefix {
        path: path.to_owned(),
        source,
    }
}

/// Makes `dir` (and missing parents) and, when we are root about to become `owner`, gives it
/// to that account so the node can still write there after the drop. An existing directory of
/// another owner is taken over only when it is empty and not shared: `--dest_path_prefix /tmp`
/// (sticky, world-writable) or `/etc` (full) would otherwise be chowned and chmodded, breaking
/// the host.
fn make_owned_dir(
    option: &'static str,
    dir: &std::path::Path,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), NodeError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    match std::fs::metadata(dir) {
        Ok(md) if !md.is_dir() => {
            return Err(NodeError::NotADirectory {
                option,
                path: dir.to_owned(),
            })
        }
        Ok(md) => {
            if let Some((uid, _)) = owner.filter(|(uid, _)| md.uid() != *uid) {
                let shared = md.mode() & 0o1002 != 0;
                let full = std::fs::read_dir(dir)
                    .map_err(prefix_err(dir))?
                    .next()
                    .is_some();
                if shared || full {
                    return Err(NodeError::NotOurs {
                        option,
                        path: dir.to_owned(),
                        uid: md.uid(),
                        why: if shared {
                            "is shared (world-writable or sticky)"
                        } else {
                            "is not empty"
                        },
                        account: uid,
                    });
                }
            }
        }
        Err(_) => std::fs::create_dir_all(dir).map_err(prefix_err(dir))?,
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(prefix_err(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(prefix_err(dir))?;
    }
    Ok(())
}

/// The account a root-started node drops to. The default account falls back to `nobody` when
/// it does not exist (a hand start on a host without the package's sysusers entry).
fn target_account(cfg: &Config) -> Result<Option<(String, String, u32, u32)>, NodeError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let lookup = |user: &str, group: &str| -> Option<(u32, u32)> {
        let u = nix::unistd::User::from_name(user).ok()??;
        let g = nix::unistd::Group::from_name(group).ok()??;
        Some((u.uid.as_raw(), g.gid.as_raw()))
    };
    if let Some((uid, gid)) = lookup(&cfg.user, &cfg.group) {
        return Ok(Some((cfg.user.clone(), cfg.group.clone(), uid, gid)));
    }
    if cfg.user == crate::config::DEFAULT_ACCOUNT && cfg.group == crate::config::DEFAULT_ACCOUNT {
        if let Some((uid, gid)) = lookup("nobody", "nogroup") {
            tracing::warn!(
                "user {} does not exist: jobs will run as nobody/nogroup",
                cfg.user
            );
            return Ok(Some(("nobody".into(), "nogroup".into(), uid, gid)));
        }
    }
    let user_exists = matches!(nix::unistd::User::from_name(&cfg.user), Ok(Some(_)));
    Err(NodeError::Account {
        user: cfg.user.clone(),
        group: cfg.group.clone(),
        missing: if user_exists {
            format!("group {}", cfg.group)
        } else {
            format!("user {}", cfg.user)
        },
    })
}

/// Gives the delegated cgroup subtree (and its `supervisor/` and `jobs/`) to the account we
/// are about to become, as systemd does for a `User=` service with `Delegate=yes`.
fn chown_delegation(root: &std::path::Path, uid: u32, gid: u32) {
    let files = [
        "",
        "cgroup.procs",
        "cgroup.threads",
        "cgroup.subtree_control",
    ];
    for dir in [
        root.to_path_buf(),
        root.join("supervisor"),
        root.join("jobs"),
    ] {
        for f in files {
            let p = if f.is_empty() {
                dir.clone()
            } else {
                dir.join(f)
            };
            if p.exists() {
                if let Err(e) = std::os::unix::fs::chown(&p, Some(uid), Some(gid)) {
                    tracing::warn!(path = %p.display(), error = %e, "cannot hand the cgroup over to the node's account");
                }
            }
        }
    }
}

/// `limits::request_budget` of this host's memory.
fn request_budget_bytes() -> usize {
    use nix::unistd::{sysconf, SysconfVar};
    let value = |v| {
        sysconf(v)
            .ok()
            .flatten()
            .and_then(|n| u64::try_from(n).ok())
    };
    let memory = value(SysconfVar::_PHYS_PAGES)
        .zip(value(SysconfVar::PAGE_SIZE))
        .map_or(0, |(pages, size)| pages.saturating_mul(size));
    usize::try_from(crate::limits::request_budget(memory)).unwrap_or(usize::MAX >> 4)
}

/// What becomes of the configured job limits without a cgroup per job: said at start, since
/// the fallbacks are coarser than the options promise.
fn limits_without_cgroups(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(p) = cfg.job_cpu_max {
        out.push(format!(
            "job_cpu_max ({p}%) is not applied: it needs a cgroup per job (cgroup v2 delegated \
             with the cpu controller)"
        ));
    }
    if let Some(n) = cfg.job_pids_max {
        out.push(format!(
            "job_pids_max ({n}) falls back to RLIMIT_NPROC, which counts every process of the \
             account jobs run as, the worker and its spare job processes included: leave room \
             for them"
        ));
    }
    if let Some(b) = cfg.job_memory_max {
        out.push(format!(
            "job_memory_max ({b} bytes) falls back to RLIMIT_AS, a limit on address space (not \
             memory) per process"
        ));
    }
    out
}

/// Binds (or takes from systemd) the sockets, prepares state and sandbox, drops privileges.
pub fn prepare(cfg: Config) -> Result<Prepared, NodeError> {
    let notifier = crate::systemd::Notifier::from_env();
    let activated = crate::systemd::take_activated_sockets()?;
    let prefix = cfg.dest_path_prefix.clone();
    let account = target_account(&cfg)?;
    let owner = account.as_ref().map(|a| (a.2, a.3));
    for exposed in cfg.exposed_secrets() {
        tracing::warn!("{exposed}");
    }
    make_owned_dir("dest_path_prefix", &prefix, 0o711, owner)?;
    make_owned_dir("state_dir", &cfg.state_dir, 0o700, owner)?;
    let tls = match &cfg.certfile {
        Some(c) => Some(crate::tls::Tls::load(c, cfg.keyfile.as_deref())?),
        None => None,
    };
    let addrs = node_addrs(&cfg);
    let (tcp, udp) = match activated {
        Some(a) => {
            tracing::info!(sockets = ?a.local_addrs(), "using the sockets passed by systemd");
            (a.tcp, a.udp)
        }
        None => {
            let mut tcp = Vec::new();
            let mut udp = Vec::new();
            for a in &addrs {
                let sa = SocketAddr::new(a.bind, cfg.node_port);
                tcp.push(
                    crate::net::bind_tcp(sa)
                        .map_err(|source| NodeError::Bind { addr: sa, source })?,
                );
                udp.push(
                    crate::net::bind_udp(sa)
                        .map_err(|source| NodeError::Bind { addr: sa, source })?,
                );
            }
            (tcp, udp)
        }
    };
    let landlock = crate::sandbox::probe();
    tracing::info!("{landlock}");
    let cgroups = match crate::sandbox::CgroupTree::detect_system() {
        Ok(mut t) => match t.prepare() {
            Ok(()) => {
                tracing::info!(root = %t.root().display(), controllers = ?t.controllers(), "cgroup v2 delegated: one cgroup per job");
                Some(t)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cgroup v2 setup failed; falling back to process groups");
                None
            }
        },
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    };
    if cgroups.is_none() {
        for warning in limits_without_cgroups(&cfg) {
            tracing::warn!("{warning}");
        }
    }
    if let (Some(t), Some((_, _, uid, gid))) = (&cgroups, &account) {
        // What systemd hands a `User=` service with Delegate=yes: after the drop we must
        // still create and fill job groups.
        chown_delegation(t.root(), *uid, *gid);
    }
    if let Some((user, group, _, _)) = &account {
        let dropped = crate::sandbox::drop_daemon_privileges(user, group)?;
        tracing::info!("{dropped}");
    }
    // As the account that runs the jobs, so a root-only interpreter is refused here.
    let python = resolve_python(&cfg.python)?;
    let lock = leftovers::lock_state_dir(&cfg.state_dir)?;
    let procs = leftovers::ProcRecords::open(&cfg.state_dir)?;
    if cfg.clean {
        let killed = procs.kill_leftovers();
        let removed =
            leftovers::clean_prefix(&prefix, &cfg.state_dir).map_err(prefix_err(&prefix))?;
        let results_dir = cfg.state_dir.join("results");
        crate::store::remove_tree(&results_dir).map_err(prefix_err(&results_dir))?;
        tracing::info!(killed, removed, "--clean: removed what an earlier run left");
    } else {
        let left = procs.leftovers();
        if !left.is_empty() {
            tracing::warn!(pids = ?left, "processes of an earlier run are still running; start with --clean to kill them");
        }
    }
    let results = crate::results::ResultStore::open(&cfg.state_dir)?;
    let saved_results = results.list()?.len();
    if saved_results > 0 {
        tracing::info!(
            count = saved_results,
            "undelivered results from an earlier run will be resent"
        );
    }
    let mut deny = vec![cfg.dest_path_prefix.clone(), cfg.state_dir.clone()];
    deny.extend(
        cfg.config_file
            .iter()
            .filter_map(|f| f.parent().map(std::path::Path::to_path_buf)),
    );
    deny.extend(cfg.keyfile.iter().cloned());
    deny.extend(cfg.certfile.iter().cloned());
    deny.extend(cfg.secret_file.iter().cloned());
    Ok(Prepared {
        tcp,
        udp,
        addrs,
        python,
        tls,
        lock,
        procs,
        results,
        saved_results,
        sandbox: Sandbox {
            landlock,
            cgroups,
            deny,
        },
        notifier,
        cfg,
    })
}

/// Serves until SIGTERM/SIGINT (or the serve count runs out).
pub async fn serve(p: Prepared) -> Result<(), NodeError> {
    let Prepared {
        cfg,
        tcp,
        udp,
        addrs,
        python,
        tls,
        lock,
        procs,
        results,
        saved_results,
        sandbox,
        notifier,
    } = p;
    let tcp: Vec<TcpListener> = tcp
        .into_iter()
        .map(|l| TcpListener::from_std(l).map_err(NodeError::Runtime))
        .collect::<Result<_, _>>()?;
    let udp: Vec<UdpSocket> = udp
        .into_iter()
        .map(|u| UdpSocket::from_std(u).map_err(NodeError::Runtime))
        .collect::<Result<_, _>>()?;
    let mut random = [0u8; 20];
    rand::Rng::fill(&mut rand::thread_rng(), &mut random);
    let sign = auth::make_sign(
        &random,
        &addrs.iter().map(|a| a.announce.clone()).collect::<Vec<_>>(),
    );
    let node_auth = auth::auth_code(&cfg.secret, &sign);

    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let node = Arc::new(Node {
        state: Mutex::new(State {
            avail_cpus: cfg.cpus,
            jobs_done: 0,
            scheduler: None,
            announce_port: cfg.scheduler_port,
            last_scheduler_ip: None,
            computations: HashMap::new(),
            jobs: HashMap::new(),
            serve: cfg.serve,
            last_activity: std::time::Instant::now(),
            saved_results,
        }),
        results: Arc::new(results),
        procs,
        log_limit: Default::default(),
        tls,
        pong_slots: Arc::new(tokio::sync::Semaphore::new(
            crate::limits::MAX_PONGS_IN_FLIGHT,
        )),
        request_budget: Arc::new(tokio::sync::Semaphore::new(request_budget_bytes())),
        sandbox,
        notifier,
        _lock: lock,
        resending: tokio::sync::Mutex::new(()),
        spawner: tokio::sync::Mutex::new(None),
        sign,
        auth: node_auth,
        platform: platform_string(),
        python,
        addrs,
        live: std::sync::RwLock::new(Arc::new(cfg.clone())),
        reloading: tokio::sync::Mutex::new(()),
        cfg,
        jobs_changed: Notify::new(),
        next_job: AtomicU64::new(1),
        shutdown_tx,
    });
    tracing::info!(
        addrs = ?tcp.iter().filter_map(|l| l.local_addr().ok()).collect::<Vec<_>>(),
        cpus = node.cfg.cpus,
        prefix = %node.cfg.dest_path_prefix.display(),
        python = %node.python.exe,
        "dispynode {} serving (dispy {} protocol)",
        env!("CARGO_PKG_VERSION"),
        crate::protocol::message::VERSION
    );

    let slots = Arc::new(tokio::sync::Semaphore::new(crate::limits::MAX_CONNECTIONS));
    let unauth = unauth_limit::UnauthLimit::new(
        crate::limits::MAX_UNAUTH_PER_SOURCE,
        crate::limits::MAX_UNAUTH_CONNECTIONS,
    );
    for (i, l) in tcp.into_iter().enumerate() {
        let n = node.clone();
        let slots = slots.clone();
        let unauth = unauth.clone();
        tokio::spawn(async move {
            // The watchdog is fed from the first accept loop itself: if serving wedges, systemd
            // notices and restarts us, rather than a side thread keeping a dead node "alive".
            let period = n
                .notifier
                .watchdog_interval()
                .filter(|_| i == 0)
                .unwrap_or(Duration::from_secs(3600));
            let mut tick = tokio::time::interval(period.min(Duration::from_secs(5)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // Bound the connections served at once; the rest wait in the backlog.
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let accepted = loop {
                    tokio::select! {
                        r = l.accept() => break r,
                        _ = tick.tick(), if i == 0 => n.heartbeat(),
                    }
                };
                match accepted {
                    Ok((s, peer)) => {
                        let (ticket, evicted) = unauth.admit(peer.ip());
                        if evicted > 0 {
                            const KIND: &str = "closed the oldest connection still waiting for its auth prefix: too many waiting";
                            if n.may_log(KIND) {
                                tracing::warn!(client = %peer.ip().to_canonical(), "{KIND}");
                            }
                        }
                        let _ = s.set_nodelay(true);
                        let n = n.clone();
                        tokio::spawn(async move {
                            n.serve_connection(s, peer, ticket).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    for u in udp {
        tokio::spawn(node.clone().serve_udp(u));
    }
    tokio::spawn(node.clone().announce_startup());
    tokio::spawn(node.clone().housekeeping());
    // Listeners, state directory and cgroups are ready: only now tell systemd.
    node.notifier.ready();
    node.heartbeat();

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(NodeError::Signal)?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(NodeError::Signal)?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(NodeError::Signal)?;
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = sighup.recv() => {
                tokio::spawn(node.clone().reload());
            }
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: shutting down");
                break;
            }
            _ = sigint.recv() => {
                // As the manual says: with a computation active, the first SIGINT waits for it
                // to close (no new clients meanwhile); a second one stops at once.
                let busy = !node.lock().computations.is_empty();
                if busy && !interrupted {
                    interrupted = true;
                    node.lock().serve = 0;
                    tracing::info!("SIGINT: will stop when the current computation closes (SIGINT again to stop now)");
                } else {
                    tracing::info!("SIGINT: shutting down");
                    break;
                }
            }
            _ = shutdown_rx.wait_for(|s| *s) => {
                tracing::info!("shutting down");
                break;
            }
        }
    }
    node.notifier.stopping();
    node.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        let argv = std::iter::once("dispynode").chain(args.iter().copied());
        match crate::config::parse_args_with(argv, 2, &|_| None, &|_| Ok(Vec::new())) {
            Ok(crate::config::Command::Run(c)) => *c,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn limits_that_need_cgroups_are_named() {
        assert!(limits_without_cgroups(&config(&[])).is_empty());
        let w = limits_without_cgroups(&config(&[
            "--job_cpu_max",
            "50",
            "--job_pids_max",
            "16",
            "--job_memory_max",
            "1g",
        ]));
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w[0].starts_with("job_cpu_max (50%) is not applied"),
            "{w:?}"
        );
        assert!(
            w[1].contains("RLIMIT_NPROC") && w[2].contains("RLIMIT_AS"),
            "{w:?}"
        );
    }

    #[test]
    fn the_wildcard_is_announced_as_the_hosts_address() {
        let host = primary_address().to_string();
        for args in [&[][..], &["-i", "0.0.0.0"][..]] {
            let a = node_addrs(&config(args));
            assert_eq!(a.len(), 1, "{args:?}");
            assert_eq!(a[0].bind, IpAddr::V4(Ipv4Addr::UNSPECIFIED), "{args:?}");
            assert_eq!(
                a[0].announce, host,
                "{args:?}: clients cannot reach 0.0.0.0"
            );
        }
        let a = node_addrs(&config(&["-i", "0.0.0.0", "--ext_ip_addr", "203.0.113.9"]));
        assert_eq!(a[0].announce, "203.0.113.9");
        let a = node_addrs(&config(&["-i", "127.0.0.1"]));
        assert_eq!(a[0].announce, "127.0.0.1");
    }
}
