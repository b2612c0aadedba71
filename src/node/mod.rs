//! The node: computations, jobs and CPU slots, driven by requests from the network and by
//! events from job processes. `requests` handles what clients send, `jobs` runs and finishes
//! jobs, `discovery` answers PINGs and announces the node.

mod discovery;
mod jobs;
pub mod leftovers;
mod requests;
mod timers;
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
}

pub(crate) struct State {
    pub avail_cpus: usize,
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
    pub(crate) sign: String,
    pub(crate) auth: [u8; AUTH_LEN],
    pub(crate) addrs: Vec<NodeAddr>,
    pub(crate) platform: String,
    pub(crate) python: String,
    pub(crate) state: Mutex<State>,
    /// Woken whenever a job ends, for CLOSE waiting on its computation's jobs.
    pub(crate) jobs_changed: Notify,
    /// Undelivered results, kept in the state directory until the client acknowledges them.
    pub(crate) results: Arc<crate::results::ResultStore>,
    /// TLS for every TCP connection, both ways, when a certfile is configured.
    pub(crate) tls: Option<crate::tls::Tls>,
    /// Processes we started, for `--clean` after a crash.
    pub(crate) procs: leftovers::ProcRecords,
    _lock: leftovers::StateLock,
    /// One resend pass at a time, so a result is never pushed twice at once.
    pub(crate) resending: tokio::sync::Mutex<()>,
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
        self.cfg.msg_timeout
    }

    /// The announced address for a client's `node_ip_addr`, if it is one of ours.
    pub(crate) fn addr_for(&self, node_ip_addr: &str) -> Option<&NodeAddr> {
        self.addrs
            .iter()
            .find(|a| a.announce == node_ip_addr || a.bind.to_string() == node_ip_addr)
            .or_else(|| self.addrs.iter().find(|a| a.matches(node_ip_addr)))
    }

    /// Asks the node to stop (after the current request).
    pub fn request_shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
    }
}

/// Resolves the interpreter once at start, so a broken setup fails loudly and early rather
/// than at the first computation.
fn resolve_python(python: &str) -> Result<String, NodeError> {
    let out = std::process::Command::new(python)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .map_err(|e| NodeError::Python {
            python: python.to_owned(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NodeError::Python {
            python: python.to_owned(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let exe = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(if exe.is_empty() {
        python.to_owned()
    } else {
        exe
    })
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
            announce: cfg.ext_ip_addr.get(i).unwrap_or(ip).to_string(),
        })
        .collect()
}

/// Prepares the prefix, binds the sockets and serves until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> Result<(), NodeError> {
    let prefix = cfg.dest_path_prefix.clone();
    std::fs::create_dir_all(&prefix).map_err(|source| NodeError::Prefix {
        path: prefix.clone(),
        source,
    })?;
    let python = resolve_python(&cfg.python)?;
    let tls = match &cfg.certfile {
        Some(c) => Some(crate::tls::Tls::load(c, cfg.keyfile.as_deref())?),
        None => None,
    };
    let lock = leftovers::lock_state_dir(&cfg.state_dir)?;
    let procs = leftovers::ProcRecords::open(&cfg.state_dir)?;
    if cfg.clean {
        let killed = procs.kill_leftovers();
        let removed = leftovers::clean_prefix(&prefix, &cfg.state_dir)
            .map_err(|source| NodeError::Prefix { path: prefix.clone(), source })?;
        let results_dir = cfg.state_dir.join("results");
        crate::store::remove_tree(&results_dir).map_err(|source| NodeError::Prefix { path: results_dir, source })?;
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
        tracing::info!(count = saved_results, "undelivered results from an earlier run will be resent");
    }
    let addrs = node_addrs(&cfg);
    let mut random = [0u8; 20];
    rand::Rng::fill(&mut rand::thread_rng(), &mut random);
    let sign = auth::make_sign(
        &random,
        &addrs.iter().map(|a| a.announce.clone()).collect::<Vec<_>>(),
    );
    let node_auth = auth::auth_code(&cfg.secret, &sign);

    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for a in &addrs {
        let sa = SocketAddr::new(a.bind, cfg.node_port);
        let l = crate::net::bind_tcp(sa).map_err(|source| NodeError::Bind { addr: sa, source })?;
        tcp.push(TcpListener::from_std(l).map_err(|source| NodeError::Bind { addr: sa, source })?);
        let u = crate::net::bind_udp(sa).map_err(|source| NodeError::Bind { addr: sa, source })?;
        udp.push(UdpSocket::from_std(u).map_err(|source| NodeError::Bind { addr: sa, source })?);
    }

    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let node = Arc::new(Node {
        state: Mutex::new(State {
            avail_cpus: cfg.cpus,
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
        tls,
        _lock: lock,
        resending: tokio::sync::Mutex::new(()),
        sign,
        auth: node_auth,
        platform: platform_string(),
        python,
        addrs,
        cfg,
        jobs_changed: Notify::new(),
        next_job: AtomicU64::new(1),
        shutdown_tx,
    });
    tracing::info!(
        addrs = ?node.addrs.iter().map(|a| format!("{}:{}", a.bind, node.cfg.node_port)).collect::<Vec<_>>(),
        cpus = node.cfg.cpus,
        prefix = %node.cfg.dest_path_prefix.display(),
        python = %node.python,
        "dispynode {} serving (dispy {} protocol)",
        env!("CARGO_PKG_VERSION"),
        crate::protocol::message::VERSION
    );

    let slots = Arc::new(tokio::sync::Semaphore::new(crate::limits::MAX_CONNECTIONS));
    for l in tcp {
        let n = node.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            loop {
                // Bound the connections served at once; the rest wait in the backlog.
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                match l.accept().await {
                    Ok((s, peer)) => {
                        let _ = s.set_nodelay(true);
                        let n = n.clone();
                        tokio::spawn(async move {
                            n.serve_connection(s, peer).await;
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

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(NodeError::Signal)?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(NodeError::Signal)?;
    let mut interrupted = false;
    loop {
        tokio::select! {
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
    node.shutdown().await;
    Ok(())
}
