//! systemd integration: socket activation, `sd_notify` (readiness, status, watchdog) and
//! logging to the journal.
//!
//! Everything here degrades to a no-op outside systemd, so the same binary serves
//! `systemctl start dispynode.socket` and a hand-started `dispynode -d` alike:
//!
//! * [`take_activated_sockets`] returns `None` when no sockets were passed, and the node binds
//!   its own;
//! * a [`Notifier`] built without `$NOTIFY_SOCKET` sends nothing;
//! * [`init_logging`] writes readable lines to stderr unless stderr *is* the journal.
//!
//! [`take_activated_sockets`] and [`Notifier::from_env`] read and then remove environment
//! variables (`LISTEN_*`, `NOTIFY_SOCKET`, `WATCHDOG_*`) so that jobs do not inherit them; both
//! must therefore run before any other thread exists (before the tokio runtime is built).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, IsTerminal};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;
use thiserror::Error;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The `SYSLOG_IDENTIFIER=` of every journal entry we write (what `journalctl -t` filters on).
pub const SYSLOG_IDENTIFIER: &str = "dispynode";

/// Environment variable that overrides the log filter (`target=level` directives separated by
/// commas, e.g. `DISPYNODE_LOG=debug` or `DISPYNODE_LOG=info,dispynode::node=trace`).
pub const LOG_ENV: &str = "DISPYNODE_LOG";

/// What systemd passed that the node cannot serve with.
#[derive(Debug, Error)]
pub enum SystemdError {
    /// A passed descriptor is neither a listening TCP socket nor a UDP socket (a UNIX socket,
    /// a FIFO, a SOCK_SEQPACKET socket, ...).
    #[error(
        "socket activation: descriptor {fd} (number {index} of LISTEN_FDS) is neither a TCP \
         nor a UDP socket ({tcp}; {udp}); dispynode.socket may only contain \
         ListenStream= and ListenDatagram= lines with a port or an IP address and port"
    )]
    Unsupported {
        index: usize,
        fd: i32,
        tcp: io::Error,
        udp: io::Error,
    },
    /// A stream socket that is not listening: `Accept=yes` passes one connection per instance,
    /// which this daemon cannot serve (it keeps state across connections).
    #[error(
        "socket activation: TCP socket {addr} (number {index} of LISTEN_FDS) is not listening; \
         dispynode.socket must not set Accept=yes"
    )]
    NotListening { index: usize, addr: String },
    /// Only datagram sockets: the node could answer discovery but never serve a request.
    #[error(
        "socket activation passed {udp} UDP socket(s) but no TCP listener: dispynode needs both; \
         add ListenStream= for the node port (e.g. ListenStream=51348) to dispynode.socket, \
         next to its ListenDatagram= line"
    )]
    MissingTcp { udp: usize },
    /// Only stream sockets: clients could connect but never discover the node.
    #[error(
        "socket activation passed {tcp} TCP listener(s) but no UDP socket: dispynode needs both; \
         add ListenDatagram= for the node port (e.g. ListenDatagram=51348) to dispynode.socket, \
         next to its ListenStream= line"
    )]
    MissingUdp { tcp: usize },
    /// The dispy protocol has one node port for TCP and UDP (the node announces one port).
    #[error(
        "socket activation passed sockets on different ports ({addrs}); the dispy protocol \
         uses one port for TCP and UDP, so every Listen*= line of dispynode.socket must use \
         the same port"
    )]
    PortMismatch { addrs: String },
    /// A passed socket could not be prepared (`getsockname`, `fcntl`).
    #[error("socket activation: cannot use descriptor number {index} of LISTEN_FDS: {source}")]
    Setup {
        index: usize,
        #[source]
        source: io::Error,
    },
}

// ---------------------------------------------------------------------------------------------
// Socket activation
// ---------------------------------------------------------------------------------------------

/// The sockets systemd passed (`dispynode.socket`): at least one TCP listener and at least one
/// UDP socket, all on the same port, all non-blocking (ready for `tokio::net::*::from_std`).
#[derive(Debug)]
pub struct Activated {
    /// Listening TCP sockets, in the order of the socket unit's `ListenStream=` lines.
    pub tcp: Vec<TcpListener>,
    /// UDP sockets, in the order of the socket unit's `ListenDatagram=` lines.
    pub udp: Vec<UdpSocket>,
    /// The port all of them are bound to: the node port to announce.
    pub port: u16,
}

impl Activated {
    /// The local addresses of all sockets, TCP first, for the start-up log line.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let tcp = self.tcp.iter().filter_map(|s| s.local_addr().ok());
        let udp = self.udp.iter().filter_map(|s| s.local_addr().ok());
        tcp.chain(udp).collect()
    }
}

/// Takes the sockets passed by systemd (`$LISTEN_FDS`, `$LISTEN_PID`), through `listenfd`.
///
/// Returns `Ok(None)` when the process was not socket-activated (or `LISTEN_PID` names another
/// process): the caller then binds its own sockets. Passed sockets are marked close-on-exec, so
/// jobs never inherit them.
///
/// Call it once, before any thread is started: it removes `LISTEN_PID`, `LISTEN_FDS` and
/// `LISTEN_FDNAMES` from the environment (so that jobs do not believe they were activated), and environment writes race
/// with reads in other threads.
///
/// # Errors
/// [`SystemdError`] when what was passed does not fit the node (see its variants): failing
/// loudly beats serving half of the protocol.
pub fn take_activated_sockets() -> Result<Option<Activated>, SystemdError> {
    let mut fds = listenfd::ListenFd::from_env();
    // listenfd removes LISTEN_PID and LISTEN_FDS; the names belong with them.
    std::env::remove_var("LISTEN_FDNAMES");
    if fds.len() == 0 {
        return Ok(None);
    }
    collect_sockets(&mut fds).map(Some)
}

/// What [`collect_sockets`] needs from `listenfd::ListenFd`, so that the checks can be tested
/// with sockets made up by the test instead of descriptors passed through the environment.
trait FdSource {
    fn count(&self) -> usize;
    fn raw_fd(&self, index: usize) -> i32;
    fn take_tcp(&mut self, index: usize) -> io::Result<Option<TcpListener>>;
    fn take_udp(&mut self, index: usize) -> io::Result<Option<UdpSocket>>;
}

impl FdSource for listenfd::ListenFd {
    fn count(&self) -> usize {
        self.len()
    }
    fn raw_fd(&self, index: usize) -> i32 {
        // listenfd numbers the descriptors from 3 (SD_LISTEN_FDS_START) unless told otherwise.
        let first = std::env::var("LISTEN_FDS_FIRST_FD")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        first + i32::try_from(index).unwrap_or(i32::MAX - first)
    }
    fn take_tcp(&mut self, index: usize) -> io::Result<Option<TcpListener>> {
        self.take_tcp_listener(index)
    }
    fn take_udp(&mut self, index: usize) -> io::Result<Option<UdpSocket>> {
        self.take_udp_socket(index)
    }
}

fn collect_sockets(src: &mut impl FdSource) -> Result<Activated, SystemdError> {
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    // (kind, address) in the order systemd passed them, for the port check and its message.
    let mut addrs: Vec<(&str, SocketAddr)> = Vec::new();
    for index in 0..src.count() {
        let setup = |source| SystemdError::Setup { index, source };
        // listenfd checks the family (AF_INET or AF_INET6) and type, and leaves the descriptor
        // in place when they do not match, so the second attempt sees it again.
        let tcp_err = match src.take_tcp(index) {
            Ok(Some(l)) => {
                let addr = l.local_addr().map_err(setup)?;
                if !socket2::SockRef::from(&l).is_listener().map_err(setup)? {
                    return Err(SystemdError::NotListening {
                        index,
                        addr: addr.to_string(),
                    });
                }
                l.set_nonblocking(true).map_err(setup)?;
                addrs.push(("tcp", addr));
                tcp.push(l);
                continue;
            }
            Ok(None) => continue,
            Err(e) => e,
        };
        match src.take_udp(index) {
            Ok(Some(u)) => {
                addrs.push(("udp", u.local_addr().map_err(setup)?));
                u.set_nonblocking(true).map_err(setup)?;
                udp.push(u);
            }
            Ok(None) => {}
            Err(udp_err) => {
                return Err(SystemdError::Unsupported {
                    index,
                    fd: src.raw_fd(index),
                    tcp: tcp_err,
                    udp: udp_err,
                })
            }
        }
    }
    if tcp.is_empty() {
        return Err(SystemdError::MissingTcp { udp: udp.len() });
    }
    if udp.is_empty() {
        return Err(SystemdError::MissingUdp { tcp: tcp.len() });
    }
    let port = addrs[0].1.port();
    if addrs.iter().any(|(_, a)| a.port() != port) {
        let addrs = addrs
            .iter()
            .map(|(kind, a)| format!("{kind} {a}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(SystemdError::PortMismatch { addrs });
    }
    Ok(Activated { tcp, udp, port })
}

// ---------------------------------------------------------------------------------------------
// sd_notify
// ---------------------------------------------------------------------------------------------

/// Sends state changes to the service manager (`sd_notify(3)` protocol).
///
/// Cheap to clone and to call from async code: each call is one non-blocking `sendto(2)` on a
/// socket opened once. When there is no `$NOTIFY_SOCKET` every method does nothing, so callers
/// never need to ask whether they run under systemd. Failures are logged (the first one as a
/// warning, later ones at debug level), never returned: a notification that cannot be delivered
/// must not take the node down.
///
/// With `NotifyAccess=main` only the main process may notify; the socket is close-on-exec so
/// jobs cannot use it, and [`Notifier::from_env`] removes `NOTIFY_SOCKET` from the environment.
#[derive(Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
    /// Full watchdog timeout (`WATCHDOG_USEC`).
    watchdog: Option<Duration>,
}

struct Inner {
    sock: UnixDatagram,
    addr: UnixAddr,
    /// What `NOTIFY_SOCKET` said, for messages.
    name: OsString,
    /// The last STATUS= sent, so that unchanged status lines are not resent.
    last_status: Mutex<String>,
    warned: AtomicBool,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("socket", &self.inner.as_ref().map(|i| &i.name))
            .field("watchdog", &self.watchdog)
            .finish()
    }
}

impl Notifier {
    /// A notifier that sends nothing (not started by systemd).
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// A notifier for `socket` (a path, or `@name` for an abstract socket, as in
    /// `$NOTIFY_SOCKET`); `watchdog` is the full watchdog timeout (`WATCHDOG_USEC`), of which
    /// [`Notifier::watchdog_interval`] is half.
    ///
    /// # Errors
    /// When `socket` is neither an absolute path nor `@name` (e.g. systemd ≥ 253's `vsock:`
    /// addresses, which the node does not support), or the datagram socket cannot be created.
    pub fn new(socket: &OsStr, watchdog: Option<Duration>) -> io::Result<Notifier> {
        let bytes = socket.as_bytes();
        let addr = match bytes.first() {
            Some(b'@') => UnixAddr::from_abstract_name(&bytes[1..])?,
            Some(b'/') => UnixAddr::from_pathname(Path::new(socket))?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unsupported NOTIFY_SOCKET address {socket:?}"),
                ))
            }
        };
        let sock = UnixDatagram::unbound()?;
        // A full notification queue must never stall the loop that serves requests.
        sock.set_nonblocking(true)?;
        Ok(Notifier {
            inner: Some(Arc::new(Inner {
                sock,
                addr,
                name: socket.to_owned(),
                last_status: Mutex::new(String::new()),
                warned: AtomicBool::new(false),
            })),
            watchdog,
        })
    }

    /// The notifier systemd asked for: `$NOTIFY_SOCKET`, and the watchdog from `$WATCHDOG_USEC`
    /// if `$WATCHDOG_PID` is absent or names this process (as `sd_watchdog_enabled(3)`).
    ///
    /// Reads the variables once and removes them from the environment (jobs must not see them),
    /// so it must be called before any thread is started. An unusable `$NOTIFY_SOCKET` is
    /// reported on stderr (logging may not be set up yet) and gives a disabled notifier.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let watchdog = watchdog_timeout(
            std::env::var_os("WATCHDOG_USEC").as_deref(),
            std::env::var_os("WATCHDOG_PID").as_deref(),
            std::process::id(),
        );
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(var);
        }
        match socket.filter(|s| !s.is_empty()) {
            None => Notifier::disabled(),
            Some(s) => Notifier::new(&s, watchdog).unwrap_or_else(|e| {
                eprintln!("dispynode: not notifying systemd: {e}");
                Notifier::disabled()
            }),
        }
    }

    /// Whether notifications are sent at all.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// How often [`Notifier::watchdog`] must be called: half of `WATCHDOG_USEC`, as
    /// `sd_watchdog_enabled(3)` recommends; `None` when systemd does not watch us.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.inner.as_ref()?;
        self.watchdog.map(|t| t / 2)
    }

    /// `READY=1`: start-up (or a reload) is complete. Send it only once the listeners, the state
    /// directory and the cgroup setup are ready: systemd considers the unit started from here.
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (which systemd ≥ 253 requires with `RELOADING=1`):
    /// a configuration reload starts; follow it with [`Notifier::ready`] when it is done.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        };
    }

    /// `STOPPING=1`: shutdown has begun (systemd then shows the unit as deactivating).
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// `STATUS=<text>`: the one-line status `systemctl status` shows. Not sent again when the
    /// text did not change, so callers may call it after every event. Newlines are replaced by
    /// spaces (the protocol is line-based).
    pub fn status(&self, text: &str) {
        let Some(inner) = &self.inner else { return };
        let text = text.replace(['\n', '\r'], " ");
        {
            let mut last = inner.last_status.lock().unwrap_or_else(|e| e.into_inner());
            if *last == text {
                return;
            }
            last.clone_from(&text);
        }
        if !self.send(&[NotifyState::Status(&text)]) {
            // Not delivered: let the next call with the same text try again.
            inner
                .last_status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }

    /// `WATCHDOG=1`: "still alive". Call it every [`Notifier::watchdog_interval`] from the loop
    /// that serves requests (not from a side thread), so that a stuck node stops sending it and
    /// systemd restarts it.
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    /// Sends one datagram with `states`, one per line; whether it was sent.
    fn send(&self, states: &[NotifyState<'_>]) -> bool {
        let Some(inner) = &self.inner else {
            return false;
        };
        let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
        let Err(e) = inner.sock.send_to_addr(msg.as_bytes(), &inner.addr) else {
            return true;
        };
        let first = !inner.warned.swap(true, Ordering::Relaxed);
        let what = msg.trim_end().replace('\n', " ");
        if first {
            tracing::warn!(error = %e, socket = ?inner.name, "cannot notify systemd ({what})");
        } else {
            tracing::debug!(error = %e, socket = ?inner.name, "cannot notify systemd ({what})");
        }
        false
    }
}

/// The watchdog timeout from `WATCHDOG_USEC` and `WATCHDOG_PID`, as `sd_watchdog_enabled(3)`:
/// `None` unless `usec` is a positive integer and `pid` is absent, empty or `my_pid`.
pub fn watchdog_timeout(
    usec: Option<&OsStr>,
    pid: Option<&OsStr>,
    my_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.to_str()?.trim().parse().ok().filter(|&u| u > 0)?;
    match pid.and_then(OsStr::to_str).map(str::trim) {
        None | Some("") => {}
        Some(p) if p.parse::<u32>().ok() == Some(my_pid) => {}
        Some(_) => return None,
    }
    Some(Duration::from_micros(usec))
}

/// The `STATUS=` line of the node, for `systemctl status`: who is being served and how busy the
/// node is, e.g. `serving 10.0.0.7: 1 computation, 3 jobs running, 5 of 8 CPUs free, 1234 jobs
/// done since start` or `idle, 8 of 8 CPUs free`. (Jobs are logged one by one only at debug
/// level, so this is where an operator sees the node's work without `-d`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStatus<'a> {
    /// The scheduler (client) currently served, if any.
    pub client: Option<&'a str>,
    pub computations: usize,
    pub jobs_running: usize,
    pub cpus_free: usize,
    pub cpus: usize,
    /// Jobs replied to (or their replies saved) since the node started.
    pub jobs_done: u64,
}

impl fmt::Display for NodeStatus<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural =
            |n: usize, one: &'static str, many: &'static str| if n == 1 { one } else { many };
        match self.client {
            None if self.computations == 0 && self.jobs_running == 0 => f.write_str("idle, ")?,
            None => write!(
                f,
                "{} {}, ",
                self.computations,
                plural(self.computations, "computation", "computations")
            )?,
            Some(c) => write!(
                f,
                "serving {c}: {} {}, ",
                self.computations,
                plural(self.computations, "computation", "computations")
            )?,
        }
        if self.jobs_running > 0 || self.client.is_some() {
            write!(
                f,
                "{} {} running, ",
                self.jobs_running,
                plural(self.jobs_running, "job", "jobs")
            )?;
        }
        write!(f, "{} of {} CPUs free", self.cpus_free, self.cpus)?;
        if self.jobs_done > 0 {
            let n = self.jobs_done;
            write!(
                f,
                ", {n} {} done since start",
                plural(n as usize, "job", "jobs")
            )?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Logging
// ---------------------------------------------------------------------------------------------

/// Where [`init_logging`] sends log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// Native journal protocol with structured fields.
    Journald,
    /// Human-readable lines on stderr.
    Stderr,
}

/// Sets up the global `tracing` subscriber once, at start.
///
/// * When stderr is the journal (`$JOURNAL_STREAM` names stderr's device and inode, the
///   convention of `systemd.exec(5)`), records go to journald through its native protocol with
///   structured fields. Field names are upper-cased without prefix, so the node's `computation`,
///   `job`, `client`, `file`, `status` and `duration` fields become `COMPUTATION=`, `JOB=`,
///   `CLIENT=`, `FILE=`, `STATUS=` and `DURATION=` (`journalctl -u dispynode COMPUTATION=3`);
///   the text is `MESSAGE=`, the level `PRIORITY=` (ERROR 3, WARN 4, INFO 6, DEBUG and TRACE 7),
///   the module `TARGET=`, plus `CODE_FILE=`, `CODE_LINE=` and `SYSLOG_IDENTIFIER=dispynode`.
///   Fields of enclosing spans are added the same way. Field names must therefore avoid the
///   journal's own (`message`, `priority`, `target`, `code_file`, `code_line`,
///   `syslog_identifier`); a leading `_` is dropped, since journald reserves those names.
/// * Otherwise (started by hand, or journald unreachable), readable lines go to stderr, with
///   colours only when stderr is a terminal.
///
/// The level is `info`, `debug` with `-d`; `$DISPYNODE_LOG` overrides it with `target=level`
/// directives (tracing-subscriber's `Targets`: no regex engine in the daemon, which keeps its
/// code, and so its resident memory, small). Calling it twice keeps the first subscriber.
pub fn init_logging(debug: bool) -> LogTarget {
    let default = if debug { "debug" } else { "info" };
    let (filter, bad_filter) = match std::env::var(LOG_ENV) {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse::<Targets>() {
            Ok(f) => (f, None),
            Err(e) => (
                default_filter(debug),
                Some(format!(
                    "{LOG_ENV}={v:?} is not a valid filter ({e}); using {default}"
                )),
            ),
        },
        _ => (default_filter(debug), None),
    };
    let journal = if stderr_is_journal() {
        Some(tracing_journald::layer())
    } else {
        None
    };
    let mut journal_error = None;
    let target = match journal {
        Some(Ok(layer)) => {
            let layer = layer
                .with_field_prefix(None)
                .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned())
                .with_priority_mappings(priorities());
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init();
            LogTarget::Journald
        }
        other => {
            journal_error = other.and_then(Result::err);
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(io::stderr().is_terminal())
                        .with_writer(io::stderr)
                        .with_target(false),
                )
                .try_init();
            LogTarget::Stderr
        }
    };
    if let Some(e) = journal_error {
        tracing::warn!(error = %e, "journald is unreachable; logging to stderr");
    }
    if let Some(msg) = bad_filter {
        tracing::warn!("{msg}");
    }
    target
}

fn default_filter(debug: bool) -> Targets {
    let level = if debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    Targets::new().with_default(level)
}

/// Journal priorities as daemons use them: INFO is "informational" (6), not tracing-journald's
/// default "notice" (5), so `journalctl -p notice` shows only what needs attention.
fn priorities() -> tracing_journald::PriorityMappings {
    use tracing_journald::Priority;
    tracing_journald::PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// Whether stderr is connected to the journal: `$JOURNAL_STREAM` is `<device>:<inode>` of the
/// stream systemd connected to stdout/stderr. Comparing with stderr itself (rather than trusting
/// the variable's presence) matters because the variable is inherited: a `dispynode` started
/// from a shell inside a service, with stderr redirected to a file, must log to that file.
pub fn stderr_is_journal() -> bool {
    match std::env::var_os("JOURNAL_STREAM") {
        Some(v) => journal_stream_matches(&v, io::stderr().as_fd()).unwrap_or(false),
        None => false,
    }
}

/// Whether the `$JOURNAL_STREAM` value `value` names the file open as `fd`.
///
/// # Errors
/// When `fd` cannot be examined (`fstat`).
pub fn journal_stream_matches(value: &OsStr, fd: impl AsFd) -> io::Result<bool> {
    let Some((dev, ino)) = parse_journal_stream(value) else {
        return Ok(false);
    };
    // fstat through a duplicate: safe code, and the duplicate is closed right away.
    let meta = File::from(fd.as_fd().try_clone_to_owned()?).metadata()?;
    Ok(meta.dev() == dev && meta.ino() == ino)
}

/// Parses `<device>:<inode>` (both decimal), as systemd writes `$JOURNAL_STREAM`.
pub fn parse_journal_stream(value: &OsStr) -> Option<(u64, u64)> {
    let (dev, ino) = value.to_str()?.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    // --- socket activation -------------------------------------------------------------------

    enum Fake {
        Tcp(TcpListener),
        Udp(UdpSocket),
        Other,
    }

    /// Stands in for listenfd: hands out sockets the test made, with listenfd's semantics
    /// (a descriptor of the wrong kind is an error and stays in place).
    struct FakeFds(Vec<Option<Fake>>);

    impl FakeFds {
        fn new(v: impl IntoIterator<Item = Fake>) -> Self {
            FakeFds(v.into_iter().map(Some).collect())
        }
    }

    impl FdSource for FakeFds {
        fn count(&self) -> usize {
            self.0.len()
        }
        fn raw_fd(&self, index: usize) -> i32 {
            3 + index as i32
        }
        fn take_tcp(&mut self, i: usize) -> io::Result<Option<TcpListener>> {
            match self.0[i].take() {
                Some(Fake::Tcp(l)) => Ok(Some(l)),
                None => Ok(None),
                other => {
                    self.0[i] = other;
                    Err(io::Error::other(format!(
                        "fd {} is not a valid tcp socket",
                        3 + i
                    )))
                }
            }
        }
        fn take_udp(&mut self, i: usize) -> io::Result<Option<UdpSocket>> {
            match self.0[i].take() {
                Some(Fake::Udp(u)) => Ok(Some(u)),
                None => Ok(None),
                other => {
                    self.0[i] = other;
                    Err(io::Error::other(format!(
                        "fd {} is not a valid udp socket",
                        3 + i
                    )))
                }
            }
        }
    }

    fn tcp(addr: &str) -> Fake {
        Fake::Tcp(TcpListener::bind(addr).expect("bind tcp"))
    }
    fn udp(addr: &str) -> Fake {
        Fake::Udp(UdpSocket::bind(addr).expect("bind udp"))
    }
    fn port_of(f: &Fake) -> u16 {
        match f {
            Fake::Tcp(l) => l.local_addr().unwrap().port(),
            Fake::Udp(u) => u.local_addr().unwrap().port(),
            Fake::Other => 0,
        }
    }
    /// A TCP listener and a UDP socket on the same free port.
    fn pair() -> (Fake, Fake) {
        for _ in 0..100 {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
            let port = l.local_addr().expect("addr").port();
            if let Ok(u) = UdpSocket::bind(("127.0.0.1", port)) {
                return (Fake::Tcp(l), Fake::Udp(u));
            }
        }
        panic!("no port free for both TCP and UDP");
    }

    #[test]
    fn tcp_and_udp_on_one_port_are_taken_non_blocking() {
        let (t, u) = pair();
        let a = collect_sockets(&mut FakeFds::new([t, u])).expect("fits");
        assert_eq!((a.tcp.len(), a.udp.len()), (1, 1));
        let port = a.tcp[0].local_addr().unwrap().port();
        assert_eq!(a.port, port);
        assert_eq!(a.local_addrs().len(), 2);
        // Non-blocking: accept and recv return WouldBlock instead of hanging the test.
        assert_eq!(
            a.tcp[0].accept().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let mut buf = [0u8; 8];
        assert_eq!(
            a.udp[0].recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        // Order of the passed descriptors does not matter.
        let (t, u) = pair();
        let a = collect_sockets(&mut FakeFds::new([u, t])).expect("fits");
        assert_eq!((a.tcp.len(), a.udp.len()), (1, 1));
    }

    #[test]
    fn only_udp_or_only_tcp_is_refused_with_the_fix() {
        let e = collect_sockets(&mut FakeFds::new([udp("127.0.0.1:0")])).unwrap_err();
        assert!(matches!(e, SystemdError::MissingTcp { udp: 1 }), "{e:?}");
        assert!(e.to_string().contains("ListenStream="), "{e}");
        let e = collect_sockets(&mut FakeFds::new([tcp("127.0.0.1:0")])).unwrap_err();
        assert!(matches!(e, SystemdError::MissingUdp { tcp: 1 }), "{e:?}");
        assert!(e.to_string().contains("ListenDatagram="), "{e}");
    }

    #[test]
    fn other_kinds_of_descriptors_are_refused() {
        let (t, u) = pair();
        let e = collect_sockets(&mut FakeFds::new([t, Fake::Other, u])).unwrap_err();
        match &e {
            SystemdError::Unsupported {
                index: 1, fd: 4, ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("not a valid tcp socket") && msg.contains("not a valid udp socket"),
            "{msg}"
        );
    }

    #[test]
    fn a_stream_socket_that_does_not_listen_is_refused() {
        // What Accept=yes would pass: a connected socket. std has no way to make an unlistened
        // TcpListener, so use socket2 to bind without listen().
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let not_listening = TcpListener::from(std::os::fd::OwnedFd::from(s));
        let e = collect_sockets(&mut FakeFds::new([
            Fake::Tcp(not_listening),
            udp("127.0.0.1:0"),
        ]))
        .unwrap_err();
        assert!(
            matches!(e, SystemdError::NotListening { index: 0, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn sockets_on_different_ports_are_refused() {
        let (t, _) = pair();
        let (_, u) = pair();
        let (tp, up) = (port_of(&t), port_of(&u));
        let e = collect_sockets(&mut FakeFds::new([u, t])).unwrap_err();
        assert!(matches!(e, SystemdError::PortMismatch { .. }), "{e:?}");
        let want = format!("udp 127.0.0.1:{up}, tcp 127.0.0.1:{tp}");
        assert!(e.to_string().contains(&want), "{e}");
    }

    #[test]
    fn several_addresses_on_one_port_are_fine() {
        let (t1, u1) = pair();
        let port = port_of(&t1);
        let Ok(t2) = TcpListener::bind(("127.0.0.2", port)) else {
            return; // 127.0.0.2 not routable here; nothing to test
        };
        let a = collect_sockets(&mut FakeFds::new([t1, u1, Fake::Tcp(t2)])).expect("fits");
        assert_eq!((a.tcp.len(), a.udp.len(), a.port), (2, 1, port));
    }

    // --- watchdog ----------------------------------------------------------------------------

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn watchdog_usec_parsing() {
        let me = 4242;
        assert_eq!(watchdog_timeout(None, None, me), None);
        assert_eq!(
            watchdog_timeout(Some(os("30000000")), None, me),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_timeout(Some(os("1")), Some(os("")), me),
            Some(Duration::from_micros(1))
        );
        assert_eq!(
            watchdog_timeout(Some(os("2000000")), Some(os("4242")), me),
            Some(Duration::from_secs(2))
        );
        // Meant for another process (e.g. inherited by a child of the main process).
        assert_eq!(
            watchdog_timeout(Some(os("2000000")), Some(os("1")), me),
            None
        );
        assert_eq!(
            watchdog_timeout(Some(os("2000000")), Some(os("x")), me),
            None
        );
        for bad in ["", "0", "-5", "1.5", "30s", "18446744073709551616"] {
            assert_eq!(watchdog_timeout(Some(os(bad)), None, me), None, "{bad:?}");
        }
    }

    // --- notifier ----------------------------------------------------------------------------

    /// A bound notify socket in a temp dir, like systemd's.
    struct Manager {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        sock: UnixDatagram,
    }

    impl Manager {
        fn new() -> Manager {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("notify");
            let sock = UnixDatagram::bind(&path).expect("bind notify socket");
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            Manager {
                _dir: dir,
                path,
                sock,
            }
        }
        fn recv(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self.sock.recv(&mut buf).expect("a notification");
            String::from_utf8(buf[..n].to_vec()).expect("utf-8")
        }
        fn pending(&self) -> VecDeque<String> {
            self.sock.set_nonblocking(true).unwrap();
            let mut out = VecDeque::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = self.sock.recv(&mut buf) {
                out.push_back(String::from_utf8(buf[..n].to_vec()).unwrap());
            }
            self.sock.set_nonblocking(false).unwrap();
            out
        }
    }

    #[test]
    fn notifier_sends_the_protocol_lines() {
        let m = Manager::new();
        let n = Notifier::new(m.path.as_os_str(), Some(Duration::from_secs(2))).expect("notifier");
        assert!(n.is_enabled());
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(1)));
        n.ready();
        assert_eq!(m.recv(), "READY=1\n");
        n.status("idle, 2 of 2 CPUs free");
        assert_eq!(m.recv(), "STATUS=idle, 2 of 2 CPUs free\n");
        n.watchdog();
        assert_eq!(m.recv(), "WATCHDOG=1\n");
        n.reloading();
        let r = m.recv();
        let mut lines = r.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let mono = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .expect("MONOTONIC_USEC");
        assert!(mono.parse::<u64>().expect("a number") > 0);
        n.stopping();
        assert_eq!(m.recv(), "STOPPING=1\n");
        // Clones share the socket and the status memory.
        let c = n.clone();
        c.ready();
        assert_eq!(m.recv(), "READY=1\n");
    }

    #[test]
    fn unchanged_status_is_not_resent_and_newlines_are_flattened() {
        let m = Manager::new();
        let n = Notifier::new(m.path.as_os_str(), None).expect("notifier");
        n.status("a");
        n.status("a");
        n.status("b\nc");
        n.status("a");
        assert_eq!(
            m.pending(),
            ["STATUS=a\n", "STATUS=b c\n", "STATUS=a\n"].map(String::from)
        );
    }

    #[test]
    fn a_status_that_was_not_delivered_is_sent_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let n = Notifier::new(path.as_os_str(), None).expect("notifier");
        n.status("busy"); // nobody listens yet
        let sock = UnixDatagram::bind(&path).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        n.status("busy");
        let mut buf = [0u8; 64];
        let len = sock.recv(&mut buf).expect("STATUS");
        assert_eq!(&buf[..len], b"STATUS=busy\n");
    }

    #[test]
    fn no_watchdog_means_no_watchdog_messages() {
        let m = Manager::new();
        let n = Notifier::new(m.path.as_os_str(), None).expect("notifier");
        assert_eq!(n.watchdog_interval(), None);
        n.watchdog();
        n.ready();
        assert_eq!(m.pending(), ["READY=1\n".to_string()]);
    }

    #[test]
    fn abstract_notify_socket() {
        let name = format!(
            "dispynode-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        );
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::new(OsStr::new(&format!("@{name}")), None).expect("notifier");
        n.ready();
        let mut buf = [0u8; 64];
        let len = sock.recv(&mut buf).expect("READY");
        assert_eq!(&buf[..len], b"READY=1\n");
    }

    #[test]
    fn disabled_and_unreachable_notifiers_do_nothing_and_do_not_block() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.ready();
        n.status("x");
        n.watchdog();
        n.stopping();
        // A socket path nobody listens on: errors are logged, not returned or panicked on.
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::new(
            dir.path().join("gone").as_os_str(),
            Some(Duration::from_secs(1)),
        )
        .expect("creating does not connect");
        n.ready();
        n.watchdog();
        assert!(Notifier::new(OsStr::new("vsock:2:1234"), None).is_err());
        assert!(Notifier::new(OsStr::new("relative/path"), None).is_err());
    }

    #[test]
    fn a_full_notify_queue_does_not_block_the_sender() {
        let m = Manager::new();
        let n = Notifier::new(m.path.as_os_str(), Some(Duration::from_secs(1))).expect("notifier");
        let start = std::time::Instant::now();
        // Far more than a datagram socket's receive queue holds.
        for _ in 0..5000 {
            n.watchdog();
        }
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    // --- status line -------------------------------------------------------------------------

    #[test]
    fn status_lines() {
        let s = |client, computations, jobs_running, cpus_free| {
            NodeStatus {
                client,
                computations,
                jobs_running,
                cpus_free,
                cpus: 8,
                jobs_done: 0,
            }
            .to_string()
        };
        assert_eq!(s(None, 0, 0, 8), "idle, 8 of 8 CPUs free");
        assert_eq!(
            s(Some("10.0.0.7"), 1, 0, 8),
            "serving 10.0.0.7: 1 computation, 0 jobs running, 8 of 8 CPUs free"
        );
        assert_eq!(
            s(Some("10.0.0.7"), 2, 1, 7),
            "serving 10.0.0.7: 2 computations, 1 job running, 7 of 8 CPUs free"
        );
        assert_eq!(
            s(None, 1, 3, 5),
            "1 computation, 3 jobs running, 5 of 8 CPUs free"
        );
        let done = |jobs_done| {
            NodeStatus {
                client: Some("10.0.0.7"),
                computations: 1,
                jobs_running: 2,
                cpus_free: 6,
                cpus: 8,
                jobs_done,
            }
            .to_string()
        };
        assert_eq!(
            done(1),
            "serving 10.0.0.7: 1 computation, 2 jobs running, 6 of 8 CPUs free, 1 job done since start"
        );
        assert_eq!(
            done(1234),
            "serving 10.0.0.7: 1 computation, 2 jobs running, 6 of 8 CPUs free, 1234 jobs done since start"
        );
    }

    // --- JOURNAL_STREAM ----------------------------------------------------------------------

    #[test]
    fn journal_stream_parsing() {
        assert_eq!(parse_journal_stream(os("8:12345")), Some((8, 12345)));
        assert_eq!(parse_journal_stream(os("0:1")), Some((0, 1)));
        for bad in ["", "8", "8:", ":5", "a:b", "8:5:1", "-1:5", " 8:5"] {
            assert_eq!(parse_journal_stream(os(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn journal_stream_is_compared_with_the_descriptor() {
        // A socket pair stands in for journald's stream, a temp file for a redirected stderr.
        let (a, _b) = UnixStream::pair().unwrap();
        let meta = File::from(a.as_fd().try_clone_to_owned().unwrap())
            .metadata()
            .unwrap();
        let value = format!("{}:{}", meta.dev(), meta.ino());
        assert!(journal_stream_matches(os(&value), &a).unwrap());
        let file = tempfile::tempfile().unwrap();
        assert!(!journal_stream_matches(os(&value), &file).unwrap());
        let wrong_ino = format!("{}:{}", meta.dev(), meta.ino() + 1);
        assert!(!journal_stream_matches(os(&wrong_ino), &a).unwrap());
        assert!(!journal_stream_matches(os("garbage"), &a).unwrap());
        // And fd 2 of this very process, as stderr_is_journal() checks it.
        let st = nix::sys::stat::fstat(io::stderr().as_raw_fd()).unwrap();
        let stderr_value = format!("{}:{}", st.st_dev, st.st_ino);
        assert!(journal_stream_matches(os(&stderr_value), io::stderr()).unwrap());
    }
}
