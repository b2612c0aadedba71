//! Command line and configuration file of `dispynode`.
//!
//! The options keep the names of the reference `dispynode.py` manual (`--node_port`,
//! `--dest_path_prefix`, ...) so existing scripts and habits carry over; each also has a
//! hyphenated alias (`--node-port`) because that is what users of other Unix tools type.
//!
//! Values come from three levels, strongest first: the command line, the TOML file given with
//! `--config`, and the built-in defaults. Every command-line field is therefore an `Option` (or
//! an empty `Vec`, or an unset flag) so that "not given" can be told apart from "given with the
//! default value". Syntax is checked while parsing (clap for the command line, serde for the
//! file); everything that depends on other options or on the machine (CPU count, key/cert pairing,
//! paths that must be readable) is checked once, after the levels are merged, so the command line
//! and the file share one set of rules and one set of messages.
//!
//! `--save_config` writes the effective configuration back as TOML; reading that file with
//! `--config` yields the same [`Config`] (apart from [`Config::config_file`]), which is what lets
//! an administrator tune one node and copy the file to the others.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use serde::{Deserialize, Serialize};

/// Default TCP/UDP port of the node: the manual's layout (dispy ≤ 4.10), kept so that clients
/// started with `dispy_port=51347` find the node without further configuration.
pub const DEFAULT_NODE_PORT: u16 = 51348;
/// Default port of the scheduler (client) that the node announces itself to.
pub const DEFAULT_SCHEDULER_PORT: u16 = 51347;
/// Default socket timeout, as documented in the manual.
pub const DEFAULT_MSG_TIMEOUT: Duration = Duration::from_secs(5);
/// Default zombie interval in minutes, as in the reference.
pub const DEFAULT_ZOMBIE_INTERVAL: u64 = 60;

/// Upper bound of `--zombie_interval` in minutes (a year): longer is surely a mistake, and
/// keeps every value a [`Duration`].
const MAX_ZOMBIE_MINUTES: f64 = 525_600.0;
/// Default `--serve`: serve clients forever.
pub const DEFAULT_SERVE: i64 = -1;
/// Default interpreter for function computations.
pub const DEFAULT_PYTHON: &str = "python3";
/// Default account (user and group) to drop to when started as root; the packages create it.
pub const DEFAULT_ACCOUNT: &str = "dispynode";
/// Name of the systemd credential (`LoadCredential=dispynode-secret:...`) holding the secret.
pub const CREDENTIAL_NAME: &str = "dispynode-secret";

/// Upper bound of `--msg_timeout`. A socket timeout beyond a day is certainly a mistake, and the
/// bound keeps the seconds ↔ [`Duration`] conversion exact, so `--save_config` round-trips.
const MAX_MSG_TIMEOUT_SECS: f64 = 86_400.0;
/// The kernel's `PID_MAX_LIMIT` on 64-bit systems: `pids.max` refuses anything larger.
const PID_MAX_LIMIT: u64 = 4 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Time of day
// ---------------------------------------------------------------------------------------------

/// A time of day in 24-hour format, as used by `--service_start/stop/end`.
///
/// Parsed from `H:MM` or `HH:MM` and displayed as `HH:MM`, which is also how it is saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay {
    /// Hour, 0..=23.
    pub hour: u8,
    /// Minute, 0..=59.
    pub minute: u8,
}

impl TimeOfDay {
    /// Minutes since midnight, handy for comparing against the wall clock.
    pub fn minutes_since_midnight(self) -> u32 {
        u32::from(self.hour) * 60 + u32::from(self.minute)
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

impl FromStr for TimeOfDay {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a time of day in 24-hour HH:MM format");
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(h) || h.len() > 2 || !digits(m) || m.len() != 2 {
            return Err(bad());
        }
        let hour: u8 = h.parse().map_err(|_| bad())?;
        let minute: u8 = m.parse().map_err(|_| bad())?;
        if hour > 23 {
            return Err(format!("hour {hour} in `{s}` is out of range 0-23"));
        }
        if minute > 59 {
            return Err(format!("minute {minute} in `{s}` is out of range 0-59"));
        }
        Ok(TimeOfDay { hour, minute })
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = TimeOfDay;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a time of day as a string \"HH:MM\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TimeOfDay, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes and CPU counts
// ---------------------------------------------------------------------------------------------

/// Parses a size: an integer ≥ 0 with an optional, case-insensitive suffix `k`, `m`, `g` or `t`
/// (powers of 1024), as `--max_file_size` accepts in the reference.
///
/// Anything else (a sign, a fraction, `kb`, an unknown suffix, a value that does not fit in 64
/// bits) is refused rather than guessed at, because a wrong limit fails silently at run time.
///
/// # Errors
/// A message saying what is wrong with `s`, for clap or the file's error to show.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.as_bytes().last().map(u8::to_ascii_lowercase) {
        Some(b'k') => (&t[..t.len() - 1], 10),
        Some(b'm') => (&t[..t.len() - 1], 20),
        Some(b'g') => (&t[..t.len() - 1], 30),
        Some(b't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{s}` is not a size: expected a number >= 0 with an optional suffix k, m, g or t"
        ));
    }
    let too_big = || format!("`{s}` is too large (at most {} bytes)", u64::MAX);
    let n: u64 = digits.parse().map_err(|_| too_big())?;
    n.checked_mul(1u64 << shift).ok_or_else(too_big)
}

/// A whole number of type `T` from the command line, with a message that says what was
/// expected (Rust's own is "invalid digit found in string", which names neither).
fn whole<T: TryFrom<i128>>(s: &str, expected: &str) -> Result<T, String> {
    s.trim()
        .parse::<i128>()
        .ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("`{s}` is not {expected}"))
}

fn count(s: &str) -> Result<u64, String> {
    whole(s, "a whole number >= 0")
}

fn signed_count(s: &str) -> Result<i64, String> {
    whole(s, "a whole number")
}

fn port_number(s: &str) -> Result<u16, String> {
    whole(s, "a port number (0-65535)")
}

fn percent(s: &str) -> Result<u32, String> {
    whole(s, "a whole number of percent")
}

fn seconds(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .map_err(|_| format!("`{s}` is not a number of seconds"))
}

fn minutes(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|m| m.is_finite() && *m >= 0.0)
        .ok_or_else(|| format!("`{s}` is not a number of minutes >= 0"))
}

/// Formats a size with the largest exact suffix (`10485760` → `"10m"`), the inverse of
/// [`parse_size`]; used by `--save_config` so saved files stay readable.
pub fn format_size(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_string();
    }
    for (shift, suffix) in [(40, 't'), (30, 'g'), (20, 'm'), (10, 'k')] {
        if bytes % (1u64 << shift) == 0 {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Resolves `--cpus` against the machine's CPU count, with the manual's rules: absent means all,
/// `N > 0` means at most `N` (and no more than the machine has), `N < 0` leaves `-N` unused.
///
/// 0 is refused rather than read as "all" (as the reference does), because a 0 in a config file is
/// more likely a mistake than a request for every CPU.
///
/// # Errors
/// A message saying why `opt` cannot be used on a `machine`-CPU machine.
pub fn resolve_cpus(opt: Option<i64>, machine: usize) -> Result<usize, String> {
    let machine = machine.max(1);
    let Some(n) = opt else { return Ok(machine) };
    let m = i128::try_from(machine).unwrap_or(i128::MAX);
    let n128 = i128::from(n);
    if n == 0 {
        Err("0 CPUs cannot run jobs; give a positive count, or a negative number of CPUs to leave unused".to_string())
    } else if n128 > m {
        Err(format!(
            "{n} is more than the {machine} CPUs of this machine"
        ))
    } else if n > 0 {
        usize::try_from(n).map_err(|_| format!("{n} is out of range"))
    } else if m + n128 >= 1 {
        usize::try_from(m + n128).map_err(|_| format!("{n} is out of range"))
    } else {
        Err(format!(
            "{n} would leave no CPU to run jobs on this {machine}-CPU machine (at least 1 must stay)"
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why the configuration could not be built. `main` prints `dispynode: <error>` and exits with
/// [`ConfigError::exit_status`], except for [`ConfigError::Clap`], on which it calls `exit()`
/// (help and version exit 0, syntax errors 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Help, version, or a command-line syntax error, already formatted by clap.
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// A value that is well-formed but not acceptable; `option` is the option's name without
    /// dashes (also its key in the file), `file` the configuration file it came from, if any.
    #[error("invalid value for --{option}{}: {message}", in_file(.file))]
    Invalid {
        option: &'static str,
        file: Option<PathBuf>,
        message: String,
    },
    /// A file named by an option (`--config`, `--secret_file`, `--certfile`, ...) could not be read.
    #[error("cannot read --{option} {}{}: {source}", .path.display(), set_in(.file))]
    Read {
        option: &'static str,
        path: PathBuf,
        file: Option<PathBuf>,
        #[source]
        source: io::Error,
    },
    /// `$CREDENTIALS_DIRECTORY/dispynode-secret` exists but could not be read.
    #[error("cannot read the systemd credential {}: {source}", .path.display())]
    Credential {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The `--config` file is not valid TOML, has an unknown key or a value of the wrong type;
    /// toml's message names the key and shows the line.
    #[error("invalid configuration file {}: {source}", .path.display())]
    File {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A host name given as an address did not resolve. Possibly only for now (a node
    /// started before the network or DNS is up), so `main` exits with [`EX_TEMPFAIL`], which
    /// the packaged unit restarts, instead of 2, which it does not.
    #[error("cannot resolve --{option} `{name}`{}: {source}", in_file(.file))]
    Resolve {
        option: &'static str,
        name: String,
        file: Option<PathBuf>,
        #[source]
        source: io::Error,
    },
    /// A relative path could not be made absolute.
    #[error("cannot make --{option} path {} absolute: {source}", .path.display())]
    CurrentDir {
        option: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// sysexits.h's "temporary failure": the exit status of a start that may work when retried.
pub const EX_TEMPFAIL: u8 = 75;

impl ConfigError {
    /// The exit status for this error: 2 for a configuration that cannot work as written
    /// (the unit's `RestartPreventExitStatus=2` keeps systemd from retrying it every few
    /// seconds), [`EX_TEMPFAIL`] for a host name that may resolve later.
    pub fn exit_status(&self) -> u8 {
        match self {
            ConfigError::Resolve { .. } => EX_TEMPFAIL,
            _ => 2,
        }
    }
}

fn in_file(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

fn set_in(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map(|p| format!(" (set in {})", p.display()))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

/// The command line. Every option is optional so the merge can tell "not given" from "given".
#[derive(Debug, Parser)]
#[command(
    name = "dispynode",
    version,
    about = "Node server for the dispy distributed-computing framework: runs the jobs that dispy clients submit.",
    long_about = None,
    // As the reference's argparse: an option given again overrides (`-d -d`, or a wrapper's
    // `--cpus 4` after the defaults); repeatable ones (-i, --ext_ip_addr) still add up.
    args_override_self = true
)]
struct Cli {
    /// Read options from this TOML file; options given on the command line take precedence.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Write the effective configuration as TOML to FILE (standard output without FILE) and exit.
    #[arg(long = "save_config", visible_alias = "save-config", value_name = "FILE", num_args = 0..=1)]
    save_config: Option<Option<PathBuf>>,

    /// Log debug messages that trace the execution of computations and jobs.
    #[arg(short = 'd', long)]
    debug: bool,

    /// Number of CPUs to run jobs on: N > 0 uses at most N, N < 0 leaves -N unused (default: all).
    #[arg(
        short = 'c',
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = signed_count
    )]
    cpus: Option<i64>,

    /// Local address or host name to serve on; repeat for several (default: every IPv4 address, announcing one).
    #[arg(
        short = 'i',
        long = "ip_addr",
        visible_aliases = ["ip-addr", "host"],
        value_name = "ADDR"
    )]
    ip_addr: Vec<String>,

    /// Address or host name to announce instead of the matching --ip_addr (paired by position), for nodes behind NAT.
    #[arg(
        long = "ext_ip_addr",
        visible_aliases = ["ext-ip-addr", "ext_host"],
        value_name = "ADDR"
    )]
    ext_ip_addr: Vec<String>,

    /// TCP and UDP port to serve on (default 51348).
    #[arg(
        short = 'p',
        long = "node_port",
        visible_alias = "node-port",
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = port_number
    )]
    node_port: Option<u16>,

    /// Name of the node reported to clients (default: the host name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// Shared secret that clients must use to work with this node (visible in the process list; prefer --secret_file).
    #[arg(short = 's', long, value_name = "S", conflicts_with = "secret_file")]
    secret: Option<String>,

    /// Read the shared secret from this file, without its trailing newline.
    #[arg(
        long = "secret_file",
        visible_alias = "secret-file",
        value_name = "PATH"
    )]
    secret_file: Option<PathBuf>,

    /// Directory under which files sent by clients are stored (default: <temp dir>/dispy/node).
    #[arg(
        long = "dest_path_prefix",
        visible_alias = "dest-path-prefix",
        value_name = "PATH"
    )]
    dest_path_prefix: Option<PathBuf>,

    /// Directory where undelivered results and other node state are kept (default: <dest_path_prefix>/.dispynode).
    #[arg(long = "state_dir", visible_alias = "state-dir", value_name = "PATH")]
    state_dir: Option<PathBuf>,

    /// Host name or address of a scheduler to announce this node to at start, for schedulers on other networks.
    #[arg(
        long = "scheduler_node",
        visible_aliases = ["scheduler-node", "scheduler_host"],
        value_name = "ADDR"
    )]
    scheduler_node: Option<String>,

    /// Port of the scheduler that the node announces itself to (default 51347).
    #[arg(
        long = "scheduler_port",
        visible_alias = "scheduler-port",
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = port_number
    )]
    scheduler_port: Option<u16>,

    /// PEM file with the TLS private key, when it is not stored in the --certfile.
    #[arg(long, value_name = "PATH")]
    keyfile: Option<PathBuf>,

    /// PEM file with the TLS certificate (and possibly the key), which turns on TLS for all connections.
    #[arg(long, value_name = "PATH")]
    certfile: Option<PathBuf>,

    /// Largest file accepted from or sent to clients, in bytes with an optional k, m, g or t suffix (0 = unlimited).
    #[arg(
        long = "max_file_size",
        visible_alias = "max-file-size",
        value_name = "SIZE",
        allow_negative_numbers = true,
        value_parser = parse_size
    )]
    max_file_size: Option<u64>,

    /// Minutes without contact after which a scheduler is considered gone and its computations cleaned up (0 disables).
    #[arg(
        long = "zombie_interval",
        visible_alias = "zombie-interval",
        value_name = "MIN",
        allow_negative_numbers = true,
        value_parser = minutes
    )]
    zombie_interval: Option<f64>,

    /// Remove files and kill jobs left over from a previous run of the node before starting.
    #[arg(long)]
    clean: bool,

    /// Timeout in seconds of socket operations with clients and schedulers (default 5).
    #[arg(
        long = "msg_timeout",
        visible_alias = "msg-timeout",
        value_name = "SECS",
        allow_negative_numbers = true,
        value_parser = seconds
    )]
    msg_timeout: Option<f64>,

    /// Time of day (HH:MM, 24-hour) from which the node accepts jobs each day.
    #[arg(
        long = "service_start",
        visible_alias = "service-start",
        value_name = "HH:MM"
    )]
    service_start: Option<TimeOfDay>,

    /// Time of day (HH:MM) at which the node stops accepting new jobs, letting running jobs finish.
    #[arg(
        long = "service_stop",
        visible_alias = "service-stop",
        value_name = "HH:MM"
    )]
    service_stop: Option<TimeOfDay>,

    /// Time of day (HH:MM) at which the node terminates running jobs and stops serving until the next start.
    #[arg(
        long = "service_end",
        visible_alias = "service-end",
        value_name = "HH:MM"
    )]
    service_end: Option<TimeOfDay>,

    /// Number of clients to serve before exiting; -1 serves forever.
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = signed_count
    )]
    serve: Option<i64>,

    /// Python interpreter that runs function computations (default python3).
    #[arg(long, value_name = "PATH")]
    python: Option<String>,

    /// Account that the node, started as root, drops to and runs jobs under (default dispynode; nobody/nogroup, with a warning, while no dispynode account exists).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,

    /// Group that the node, started as root, drops to and runs jobs under (default: dispynode, or --user's own group when only --user is given).
    #[arg(long, value_name = "NAME")]
    group: Option<String>,

    /// Memory limit of each job, in bytes with an optional k, m, g or t suffix.
    #[arg(
        long = "job_memory_max",
        visible_alias = "job-memory-max",
        value_name = "SIZE",
        allow_negative_numbers = true,
        value_parser = parse_size
    )]
    job_memory_max: Option<u64>,

    /// Maximum number of processes and threads of each job.
    #[arg(
        long = "job_pids_max",
        visible_alias = "job-pids-max",
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = count
    )]
    job_pids_max: Option<u64>,

    /// CPU limit of each job in percent of one CPU (100 = one full CPU, up to 100 times --cpus).
    #[arg(
        long = "job_cpu_max",
        visible_alias = "job-cpu-max",
        value_name = "PERCENT",
        allow_negative_numbers = true,
        value_parser = percent
    )]
    job_cpu_max: Option<u32>,
}

/// The clap definition of the command line, for the man page and shell completions.
pub fn command() -> clap::Command {
    Cli::command()
}

// ---------------------------------------------------------------------------------------------
// Configuration file
// ---------------------------------------------------------------------------------------------

/// The TOML file: the command line's options under the same (underscored) names. Unknown keys are
/// refused, since a misspelt key silently ignored would leave a node misconfigured.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    debug: Option<bool>,
    cpus: Option<i64>,
    ip_addr: Option<Vec<String>>,
    ext_ip_addr: Option<Vec<String>>,
    node_port: Option<u16>,
    name: Option<String>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    dest_path_prefix: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    scheduler_node: Option<String>,
    scheduler_port: Option<u16>,
    keyfile: Option<PathBuf>,
    certfile: Option<PathBuf>,
    max_file_size: Option<Size>,
    zombie_interval: Option<f64>,
    clean: Option<bool>,
    msg_timeout: Option<f64>,
    service_start: Option<TimeOfDay>,
    service_stop: Option<TimeOfDay>,
    service_end: Option<TimeOfDay>,
    serve: Option<i64>,
    python: Option<String>,
    user: Option<String>,
    group: Option<String>,
    job_memory_max: Option<Size>,
    job_pids_max: Option<u64>,
    job_cpu_max: Option<u32>,
}

/// A size in the file: an integer number of bytes, or a string in [`parse_size`] syntax.
#[derive(Debug, Clone, Copy)]
struct Size(u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: an integer >= 0 or a string such as \"10m\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// What `--save_config` writes: only plain TOML types, so serialization cannot fail.
#[derive(Serialize)]
struct SavedConfig<'a> {
    debug: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpus: Option<i64>,
    ip_addr: Vec<String>,
    ext_ip_addr: Vec<String>,
    node_port: u16,
    /// Left out when it is this host's name (the default), so that a file saved on one node
    /// and copied to others does not give them all the first one's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_file: Option<String>,
    dest_path_prefix: String,
    /// Left out when it is the default beneath the prefix, so that a saved file loaded with
    /// another `--dest_path_prefix` keeps its state beside that prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    state_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduler_node: Option<&'a str>,
    scheduler_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    keyfile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    certfile: Option<String>,
    max_file_size: SavedSize,
    zombie_interval: SavedMinutes,
    clean: bool,
    msg_timeout: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_stop: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_end: Option<String>,
    serve: i64,
    python: &'a str,
    user: &'a str,
    group: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_memory_max: Option<SavedSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_pids_max: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_cpu_max: Option<u32>,
}

/// A size as saved: an integer when it has no exact suffix and fits TOML's i64, else a string.
#[derive(Serialize)]
#[serde(untagged)]
enum SavedSize {
    Int(i64),
    Str(String),
}

impl SavedSize {
    fn new(bytes: u64) -> Self {
        let text = format_size(bytes);
        match text.parse::<i64>() {
            Ok(n) => SavedSize::Int(n),
            Err(_) => SavedSize::Str(text),
        }
    }
}

/// Minutes as saved: an integer when whole (as people write them), else a float.
#[derive(Serialize)]
#[serde(untagged)]
enum SavedMinutes {
    Whole(u64),
    Fraction(f64),
}

impl SavedMinutes {
    fn new(d: Duration) -> Self {
        if d.as_secs() % 60 == 0 && d.subsec_nanos() == 0 {
            SavedMinutes::Whole(d.as_secs() / 60)
        } else {
            SavedMinutes::Fraction(d.as_secs_f64() / 60.0)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The resolved configuration
// ---------------------------------------------------------------------------------------------

/// The validated, resolved configuration of a node.
///
/// Paths are absolute: the node changes directory into `dest_path_prefix`, so relative paths
/// would silently change meaning after start-up.
#[derive(Clone, PartialEq)]
pub struct Config {
    /// Log at debug level.
    pub debug: bool,
    /// Number of CPUs jobs may use, resolved against the machine.
    pub cpus: usize,
    /// `--cpus` as given (`-1` stays `-1`), so a saved configuration stays portable.
    pub cpus_option: Option<i64>,
    /// Addresses to serve on; empty means the node picks one.
    pub ip_addr: Vec<IpAddr>,
    /// Addresses announced instead of `ip_addr`, paired by position.
    pub ext_ip_addr: Vec<IpAddr>,
    /// `ip_addr` and `ext_ip_addr` as given (an address or a host name, resolved at start as
    /// the reference does), so that `--save_config` keeps the names.
    pub ip_addr_given: Vec<String>,
    pub ext_ip_addr_given: Vec<String>,
    /// TCP and UDP port of the node.
    pub node_port: u16,
    /// Node name reported to clients.
    pub name: String,
    /// Shared secret for authentication (empty: none).
    pub secret: String,
    /// File the secret was read from (`--secret_file` or the systemd credential).
    pub secret_file: Option<PathBuf>,
    /// Where the secret came from.
    pub secret_source: SecretSource,
    /// Root directory for files sent by clients.
    pub dest_path_prefix: PathBuf,
    /// Directory for persistent node state (undelivered results, ...).
    pub state_dir: PathBuf,
    /// Scheduler to announce the node to at start.
    pub scheduler_node: Option<String>,
    /// Port of the scheduler.
    pub scheduler_port: u16,
    /// TLS private key file.
    pub keyfile: Option<PathBuf>,
    /// TLS certificate file; TLS is on when this is set.
    pub certfile: Option<PathBuf>,
    /// Maximum size of a transferred file in bytes; 0 means unlimited.
    pub max_file_size: u64,
    /// How long a scheduler may be silent before it is presumed gone; zero disables zombie
    /// detection.
    pub zombie_interval: Duration,
    /// Clean up leftovers of a previous run at start.
    pub clean: bool,
    /// Socket timeout.
    pub msg_timeout: Duration,
    /// Daily time from which jobs are accepted.
    pub service_start: Option<TimeOfDay>,
    /// Daily time at which new jobs stop being accepted.
    pub service_stop: Option<TimeOfDay>,
    /// Daily time at which running jobs are terminated.
    pub service_end: Option<TimeOfDay>,
    /// Clients to serve before exiting; -1 = forever.
    pub serve: i64,
    /// Python interpreter for function computations.
    pub python: String,
    /// Account to drop to when started as root.
    pub user: String,
    /// Group to drop to when started as root.
    pub group: String,
    /// Per-job memory limit in bytes.
    pub job_memory_max: Option<u64>,
    /// Per-job limit of processes and threads.
    pub job_pids_max: Option<u64>,
    /// Per-job CPU limit in percent of one CPU.
    pub job_cpu_max: Option<u32>,
    /// The `--config` file (absolute), so the node can reload it.
    pub config_file: Option<PathBuf>,
}

/// Written by hand so that the secret never reaches a log through `{:?}`.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = if self.secret.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        f.debug_struct("Config")
            .field("debug", &self.debug)
            .field("cpus", &self.cpus)
            .field("cpus_option", &self.cpus_option)
            .field("ip_addr", &self.ip_addr)
            .field("ext_ip_addr", &self.ext_ip_addr)
            .field("node_port", &self.node_port)
            .field("name", &self.name)
            .field("secret", &secret)
            .field("secret_file", &self.secret_file)
            .field("secret_source", &self.secret_source)
            .field("dest_path_prefix", &self.dest_path_prefix)
            .field("state_dir", &self.state_dir)
            .field("scheduler_node", &self.scheduler_node)
            .field("scheduler_port", &self.scheduler_port)
            .field("keyfile", &self.keyfile)
            .field("certfile", &self.certfile)
            .field("max_file_size", &self.max_file_size)
            .field("zombie_interval", &self.zombie_interval)
            .field("clean", &self.clean)
            .field("msg_timeout", &self.msg_timeout)
            .field("service_start", &self.service_start)
            .field("service_stop", &self.service_stop)
            .field("service_end", &self.service_end)
            .field("serve", &self.serve)
            .field("python", &self.python)
            .field("user", &self.user)
            .field("group", &self.group)
            .field("job_memory_max", &self.job_memory_max)
            .field("job_pids_max", &self.job_pids_max)
            .field("job_cpu_max", &self.job_cpu_max)
            .field("config_file", &self.config_file)
            .finish()
    }
}

/// Where the shared secret came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    /// No secret.
    None,
    /// `--secret` on the command line.
    CommandLine,
    /// `secret = ...` in the `--config` file.
    ConfigFile,
    /// `--secret_file` / `secret_file`, or the systemd credential.
    File,
}

impl Config {
    /// Where this configuration leaves the secret or the TLS key readable by every user of the
    /// host, each as a sentence for the log (checked once at start: the daemon warns, it does
    /// not refuse, as the reference runs with whatever it is given). Group-readable is fine:
    /// `root:dispynode 0640` is how a service user is let read a key.
    pub fn exposed_secrets(&self) -> Vec<String> {
        let world_readable = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(p)
                .ok()
                .map(|m| m.permissions().mode() & 0o7777)
                .filter(|mode| mode & 0o004 != 0)
        };
        let mut found = Vec::new();
        let mut file = |what: &str, path: &Path, fix: &str| {
            if let Some(mode) = world_readable(path) {
                found.push(format!(
                    "{what} {} is readable by every user of this host (mode {mode:04o}){fix}",
                    path.display()
                ));
            }
        };
        let secret_fix = ": chmod o-r it, or use the dispynode-secret credential";
        // An empty secret (an empty credential included) is no secret: nothing to expose.
        let source = if self.secret.is_empty() {
            SecretSource::None
        } else {
            self.secret_source
        };
        match (source, &self.secret_file, &self.config_file) {
            (SecretSource::File, Some(p), _) => file("the secret file", p, secret_fix),
            (SecretSource::ConfigFile, _, Some(p)) => {
                file("the configuration file holding the secret,", p, secret_fix)
            }
            _ => {}
        }
        // Without --keyfile the key is read from the certfile.
        if let Some(p) = self.keyfile.as_ref().or(self.certfile.as_ref()) {
            file("the TLS key file", p, ": chmod o-r it");
        }
        if source == SecretSource::CommandLine {
            found.push(
                "the secret was given with --secret: every user of this host can read it in the \
                 process list; use --secret_file or the dispynode-secret credential"
                    .to_owned(),
            );
        }
        found
    }

    /// The configuration as TOML, as `--save_config` writes it: every option with its effective
    /// value, except options that are unset (TOML has no null) and `secret` when the secret came
    /// from a file (the file is named instead, so the secret is not copied around).
    pub fn to_toml(&self) -> String {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let saved = SavedConfig {
            debug: self.debug,
            cpus: self.cpus_option,
            ip_addr: self.ip_addr_given.clone(),
            ext_ip_addr: self.ext_ip_addr_given.clone(),
            node_port: self.node_port,
            name: (self.name != hostname()).then_some(self.name.as_str()),
            secret: self.secret_file.is_none().then_some(self.secret.as_str()),
            secret_file: self.secret_file.as_deref().map(path),
            dest_path_prefix: path(&self.dest_path_prefix),
            state_dir: (self.state_dir != self.dest_path_prefix.join(".dispynode"))
                .then(|| path(&self.state_dir)),
            scheduler_node: self.scheduler_node.as_deref(),
            scheduler_port: self.scheduler_port,
            keyfile: self.keyfile.as_deref().map(path),
            certfile: self.certfile.as_deref().map(path),
            max_file_size: SavedSize::new(self.max_file_size),
            zombie_interval: SavedMinutes::new(self.zombie_interval),
            clean: self.clean,
            msg_timeout: self.msg_timeout.as_secs_f64(),
            service_start: self.service_start.map(|t| t.to_string()),
            service_stop: self.service_stop.map(|t| t.to_string()),
            service_end: self.service_end.map(|t| t.to_string()),
            serve: self.serve,
            python: &self.python,
            user: &self.user,
            group: &self.group,
            job_memory_max: self.job_memory_max.map(SavedSize::new),
            job_pids_max: self
                .job_pids_max
                .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
            job_cpu_max: self.job_cpu_max,
        };
        let body = toml::to_string(&saved)
            .expect("a struct of strings, integers, floats and booleans always serializes to TOML");
        format!(
            "# dispynode configuration written by `dispynode --save_config`.\n\
             # Use it with `dispynode --config FILE`; options on the command line override it.\n\
             # Every option is listed with the value the node used (defaults included), except\n\
             # those that had none (no certificate, no scheduler, ...) and those that follow the\n\
             # machine or another option when left at their default: the name (the host's\n\
             # own), cpus (all) and state_dir (beneath dest_path_prefix), so that the file can\n\
             # be copied to other nodes.\n\n{body}"
        )
    }
}

/// What the command line asks for.
pub enum Command {
    /// Run the node with this configuration.
    Run(Box<Config>),
    /// Write `toml` to `path` (standard output when `None`) and exit; see [`write_config`].
    /// `private`: the TOML holds the secret itself (not the name of a file with it).
    SaveConfig {
        toml: String,
        path: Option<PathBuf>,
        private: bool,
    },
}

/// Written by hand so that the saved TOML, which may hold the secret, is not printed.
impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Run(config) => f.debug_tuple("Run").field(config).finish(),
            Command::SaveConfig {
                toml,
                path,
                private,
            } => f
                .debug_struct("SaveConfig")
                .field("toml", &format_args!("<{} bytes>", toml.len()))
                .field("path", path)
                .field("private", private)
                .finish(),
        }
    }
}

/// Writes a saved configuration to `path`, or to standard output when `path` is `None`.
///
/// With `private` (the TOML holds the secret) the file is made readable by its owner only
/// (0600), an existing one too, before the secret is written into it. Otherwise a new file gets
/// the umask's mode and an existing one keeps its own: the packaged service reads its 0644
/// root-owned configuration as the unprivileged `dispynode` user.
///
/// # Errors
/// Any I/O error from creating, writing or syncing the file, or from writing standard output.
pub fn write_config(toml: &str, path: Option<&Path>, private: bool) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match path {
        None => {
            let mut out = io::stdout().lock();
            out.write_all(toml.as_bytes())?;
            out.flush()
        }
        Some(path) => {
            let mut options = fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            if private {
                options.mode(0o600);
            }
            let mut file = options.open(path)?;
            if private {
                // `mode` only applies to a new file; tighten an existing one too (it is empty
                // now: truncated before anything secret is in it).
                file.set_permissions(fs::Permissions::from_mode(0o600))?;
            }
            file.write_all(toml.as_bytes())?;
            file.sync_all()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing and merging
// ---------------------------------------------------------------------------------------------

/// Parses the process's command line (`args[0]` is the program name), reading the CPU count and
/// the environment of this process.
///
/// # Errors
/// See [`parse_args_with`].
pub fn parse_args<I, T>(args: I) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let machine = std::thread::available_parallelism().map_or(1, |n| n.get());
    parse_args_with(
        args,
        machine,
        &|key| std::env::var(key).ok(),
        &system_resolver,
    )
}

/// [`parse_args`] with the machine's CPU count, the environment and the host-name resolver
/// passed in, so that tests do not depend on the machine they run on. `env` is consulted for
/// `CREDENTIALS_DIRECTORY` and `TMPDIR`; `resolve_host` for host names given as `-i` or
/// `--ext_ip_addr`.
///
/// # Errors
/// [`ConfigError::Clap`] for help, version and syntax errors; the other variants when the
/// `--config` file or a file named by an option cannot be read, or a value is not acceptable.
pub fn parse_args_with<I, T>(
    args: I,
    machine_cpus: usize,
    env: &dyn Fn(&str) -> Option<String>,
    resolve_host: Resolver<'_>,
) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    let save = cli.save_config.take();
    let file = match &cli.config {
        Some(path) => {
            let path = absolutize(path, "config", Origin::Cli)?;
            let text = fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                option: "config",
                path: path.clone(),
                file: None,
                source,
            })?;
            let parsed: FileConfig = toml::from_str(&text).map_err(|source| ConfigError::File {
                path: path.clone(),
                source: Box::new(source),
            })?;
            Some((path, parsed))
        }
        None => None,
    };
    let config = resolve(cli, file, machine_cpus, env, resolve_host)?;
    Ok(match save {
        Some(path) => Command::SaveConfig {
            toml: config.to_toml(),
            path,
            // An empty inline secret is SecretSource::None: nothing private then.
            private: matches!(
                config.secret_source,
                SecretSource::CommandLine | SecretSource::ConfigFile
            ),
        },
        None => Command::Run(Box::new(config)),
    })
}

/// Where a value came from, so that errors can say which file to fix.
#[derive(Clone, Copy)]
enum Origin<'a> {
    Cli,
    File(&'a Path),
    Default,
}

impl Origin<'_> {
    fn file(self) -> Option<PathBuf> {
        match self {
            Origin::File(p) => Some(p.to_path_buf()),
            Origin::Cli | Origin::Default => None,
        }
    }
}

fn invalid(option: &'static str, origin: Origin<'_>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        file: origin.file(),
        message: message.into(),
    }
}

/// Merges the command line over the file and validates the result.
fn resolve(
    cli: Cli,
    file: Option<(PathBuf, FileConfig)>,
    machine_cpus: usize,
    env: &dyn Fn(&str) -> Option<String>,
    resolve_host: Resolver<'_>,
) -> Result<Config, ConfigError> {
    let (file_path, f) = match file {
        Some((p, f)) => (Some(p), f),
        None => (None, FileConfig::default()),
    };
    let fp = file_path.as_deref();
    let file_origin = fp.map_or(Origin::Default, Origin::File);

    let debug = cli.debug || f.debug.unwrap_or(false);
    let clean = cli.clean || f.clean.unwrap_or(false);

    let (cpus_option, cpus_origin) = match pick(cli.cpus, f.cpus, fp) {
        Some((n, o)) => (Some(n), o),
        None => (None, Origin::Default),
    };
    let cpus =
        resolve_cpus(cpus_option, machine_cpus).map_err(|m| invalid("cpus", cpus_origin, m))?;

    let (ip_addr, ip_addr_given, _) =
        addresses("ip_addr", cli.ip_addr, f.ip_addr, file_origin, resolve_host)?;
    let (ext_ip_addr, ext_ip_addr_given, ext_origin) = addresses(
        "ext_ip_addr",
        cli.ext_ip_addr,
        f.ext_ip_addr,
        file_origin,
        resolve_host,
    )?;
    // Without --ip_addr the node serves one address of its choice, which one --ext_ip_addr
    // may still be paired with (the usual NAT set-up of the manual).
    if ext_ip_addr.len() > ip_addr.len().max(1) {
        return Err(invalid(
            "ext_ip_addr",
            ext_origin,
            format!(
                "{} addresses given but only {} --ip_addr to pair them with",
                ext_ip_addr.len(),
                ip_addr.len()
            ),
        ));
    }

    let node_port = port(
        "node_port",
        pick(cli.node_port, f.node_port, fp),
        DEFAULT_NODE_PORT,
    )?;
    let scheduler_port = port(
        "scheduler_port",
        pick(cli.scheduler_port, f.scheduler_port, fp),
        DEFAULT_SCHEDULER_PORT,
    )?;

    let (secret, secret_file, secret_source) = secret(
        cli.secret,
        cli.secret_file,
        f.secret,
        f.secret_file,
        fp,
        env,
    )?;
    // An empty secret given inline is no secret, wherever it was written.
    let secret_source = match secret_source {
        SecretSource::CommandLine | SecretSource::ConfigFile if secret.is_empty() => {
            SecretSource::None
        }
        source => source,
    };

    let name = match pick(cli.name, f.name, fp) {
        Some((n, o)) => word("name", n, o)?,
        None => hostname(),
    };

    let dest_path_prefix = directory(
        "dest_path_prefix",
        pick(cli.dest_path_prefix, f.dest_path_prefix, fp),
        || {
            // As std::env::temp_dir(), but through `env` so tests control it.
            let tmp = env("TMPDIR")
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "/tmp".to_string());
            Path::new(&tmp).join("dispy").join("node")
        },
    )?;
    let state_dir = directory("state_dir", pick(cli.state_dir, f.state_dir, fp), || {
        dest_path_prefix.join(".dispynode")
    })?;

    let scheduler_node = match pick(cli.scheduler_node, f.scheduler_node, fp) {
        Some((s, o)) => {
            // Resolved when the node announces itself (the scheduler's name may not resolve
            // yet at boot); its spelling is checked now.
            if s.parse::<IpAddr>().is_err() {
                host_name_syntax(&s, "scheduler_port")
                    .map_err(|m| invalid("scheduler_node", o, m))?;
            }
            Some(s)
        }
        None => None,
    };

    let certfile = match pick(cli.certfile, f.certfile, fp) {
        Some((p, o)) => Some(readable_file("certfile", &p, o)?),
        None => None,
    };
    let keyfile = match pick(cli.keyfile, f.keyfile, fp) {
        Some((p, o)) => {
            if certfile.is_none() {
                return Err(invalid(
                    "keyfile",
                    o,
                    "requires --certfile (the certificate to go with the key)",
                ));
            }
            Some(readable_file("keyfile", &p, o)?)
        }
        None => None,
    };

    let max_file_size =
        pick(cli.max_file_size, f.max_file_size.map(|s| s.0), fp).map_or(0, |p| p.0);

    let zombie_interval = match pick(cli.zombie_interval, f.zombie_interval, fp) {
        Some((m, o)) => zombie_interval(m).map_err(|e| invalid("zombie_interval", o, e))?,
        None => Duration::from_secs(DEFAULT_ZOMBIE_INTERVAL * 60),
    };

    let msg_timeout = match pick(cli.msg_timeout, f.msg_timeout, fp) {
        Some((secs, o)) => msg_timeout(secs).map_err(|m| invalid("msg_timeout", o, m))?,
        None => DEFAULT_MSG_TIMEOUT,
    };

    let service_start_given = pick(cli.service_start, f.service_start, fp);
    let service_start = service_start_given.map(|p| p.0);
    let service_stop = pick(cli.service_stop, f.service_stop, fp);
    let service_end = pick(cli.service_end, f.service_end, fp);
    if service_start.is_none() {
        for (option, given) in [("service_stop", service_stop), ("service_end", service_end)] {
            if let Some((_, o)) = given {
                return Err(invalid(option, o, "requires --service_start"));
            }
        }
    }
    if let Some((start, start_origin)) = service_start_given {
        // The window runs from start to stop/end, across midnight when they are earlier: a
        // time equal to the start is a window of no time, and a start alone is no window.
        if service_stop.is_none() && service_end.is_none() {
            return Err(invalid(
                "service_start",
                start_origin,
                "needs --service_stop or --service_end (the time the window closes)",
            ));
        }
        for (option, given) in [("service_stop", service_stop), ("service_end", service_end)] {
            if let Some((t, o)) = given.filter(|(t, _)| *t == start) {
                return Err(invalid(
                    option,
                    o,
                    format!("{t} is the same as --service_start: the node would never serve"),
                ));
            }
        }
    }
    let service_stop = service_stop.map(|p| p.0);
    let service_end = service_end.map(|p| p.0);

    let serve = match pick(cli.serve, f.serve, fp) {
        Some((n, o)) if n == 0 || n < -1 => {
            return Err(invalid(
                "serve",
                o,
                format!("{n} is not -1 (serve forever) or a number of clients >= 1"),
            ))
        }
        Some((n, _)) => n,
        None => DEFAULT_SERVE,
    };

    let text = |option, value: Option<(String, Origin<'_>)>, default: &str| match value {
        Some((v, o)) => word(option, v, o),
        None => Ok(default.to_string()),
    };
    let python = text("python", pick(cli.python, f.python, fp), DEFAULT_PYTHON)?;
    let user_given = cli.user.is_some() || f.user.is_some();
    let user = text("user", pick(cli.user, f.user, fp), DEFAULT_ACCOUNT)?;
    let group = match pick(cli.group, f.group, fp) {
        Some((g, o)) => word("group", g, o)?,
        // `--user X` alone means X's own group, as for `su`/`runuser`; an unknown user keeps
        // the default, and the start names the missing account.
        None if user_given => primary_group(&user).unwrap_or_else(|| DEFAULT_ACCOUNT.into()),
        None => DEFAULT_ACCOUNT.into(),
    };

    let job_memory_max = match pick(cli.job_memory_max, f.job_memory_max.map(|s| s.0), fp) {
        Some((0, o)) => {
            return Err(invalid(
                "job_memory_max",
                o,
                "0 bytes would kill every job; leave the option out for no limit",
            ))
        }
        Some((n, _)) => Some(n),
        None => None,
    };
    let job_pids_max = match pick(cli.job_pids_max, f.job_pids_max, fp) {
        Some((n, o)) if n == 0 || n > PID_MAX_LIMIT => {
            return Err(invalid(
                "job_pids_max",
                o,
                format!("{n} is out of range 1-{PID_MAX_LIMIT}"),
            ))
        }
        Some((n, _)) => Some(n),
        None => None,
    };
    let job_cpu_max = match pick(cli.job_cpu_max, f.job_cpu_max, fp) {
        Some((n, o)) => {
            let max = 100u64.saturating_mul(cpus as u64);
            if n == 0 || u64::from(n) > max {
                return Err(invalid(
                    "job_cpu_max",
                    o,
                    format!("{n}% is out of range 1-{max} (100 per CPU, {cpus} CPUs)"),
                ));
            }
            Some(n)
        }
        None => None,
    };

    Ok(Config {
        debug,
        cpus,
        cpus_option,
        ip_addr,
        ext_ip_addr,
        ip_addr_given,
        ext_ip_addr_given,
        node_port,
        name,
        secret,
        secret_file,
        secret_source,
        dest_path_prefix,
        state_dir,
        scheduler_node,
        scheduler_port,
        keyfile,
        certfile,
        max_file_size,
        zombie_interval,
        clean,
        msg_timeout,
        service_start,
        service_stop,
        service_end,
        serve,
        python,
        user,
        group,
        job_memory_max,
        job_pids_max,
        job_cpu_max,
        config_file: file_path,
    })
}

/// The command line's value if given, else the file's (with where it came from); `None` means
/// the default applies.
fn pick<'a, T>(cli: Option<T>, file: Option<T>, fp: Option<&'a Path>) -> Option<(T, Origin<'a>)> {
    match (cli, file, fp) {
        (Some(c), _, _) => Some((c, Origin::Cli)),
        (None, Some(v), Some(p)) => Some((v, Origin::File(p))),
        _ => None,
    }
}

/// Picks the command line's addresses if any were given, else the file's, resolving host
/// names and de-duplicating them (the same address twice would make the second listener
/// fail). Returns the addresses, their spellings as given, and where they came from.
fn addresses<'a>(
    option: &'static str,
    cli: Vec<String>,
    file: Option<Vec<String>>,
    file_origin: Origin<'a>,
    resolve_host: Resolver<'_>,
) -> Result<(Vec<IpAddr>, Vec<String>, Origin<'a>), ConfigError> {
    let (given, origin) = if !cli.is_empty() {
        (cli, Origin::Cli)
    } else if let Some(list) = file {
        (list, file_origin)
    } else {
        (Vec::new(), Origin::Default)
    };
    let addrs = given
        .iter()
        .map(|s| address(s, option, origin, resolve_host))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, a) in addrs.iter().enumerate() {
        if let Some(j) = addrs[..i].iter().position(|b| b == a) {
            let message = if given[i] == given[j] {
                format!("{a} is listed twice")
            } else {
                format!("`{}` and `{}` are both {a}", given[j], given[i])
            };
            return Err(invalid(option, origin, message));
        }
        if option == "ext_ip_addr" && (a.is_unspecified() || a.is_multicast()) {
            return Err(invalid(
                option,
                origin,
                format!("{a} is not an address clients can reach the node at"),
            ));
        }
        // The wildcard already covers every address of its family: binding another one of
        // that family too fails (the port is taken), with a misleading "address in use".
        if a.is_unspecified() && addrs.iter().any(|b| b != a && b.is_ipv4() == a.is_ipv4()) {
            return Err(invalid(
                option,
                origin,
                format!("{a} serves every address already; give it alone"),
            ));
        }
    }
    Ok((addrs, given, origin))
}

/// Resolves a host name to its addresses (the system's resolver, for [`parse_args_with`]).
pub type Resolver<'a> = &'a dyn Fn(&str) -> io::Result<Vec<IpAddr>>;

/// The system's resolver (`getaddrinfo`, so /etc/hosts and DNS as configured).
pub fn system_resolver(name: &str) -> io::Result<Vec<IpAddr>> {
    use std::net::ToSocketAddrs;
    Ok((name, 0).to_socket_addrs()?.map(|a| a.ip()).collect())
}

/// An address as `-i`/`--ext_ip_addr` take it: an IP address, or a host name resolved to one,
/// preferring IPv4 as the reference's `host_addrinfo` does.
fn address(
    s: &str,
    option: &'static str,
    origin: Origin<'_>,
    resolve_host: Resolver<'_>,
) -> Result<IpAddr, ConfigError> {
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok(a);
    }
    host_name_syntax(s, "node_port").map_err(|m| invalid(option, origin, m))?;
    let found = resolve_host(s).map_err(|source| ConfigError::Resolve {
        option,
        name: s.to_owned(),
        file: origin.file(),
        source,
    })?;
    preferred_address(&found)
        .ok_or_else(|| invalid(option, origin, format!("`{s}` resolves to no address")))
}

/// The address a resolved host name stands for: its first IPv4 address, else its first, as the
/// reference's `host_addrinfo` and `_node_ipaddr` prefer IPv4 (for -i, --ext_ip_addr and
/// --scheduler_node alike).
pub fn preferred_address(found: &[IpAddr]) -> Option<IpAddr> {
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
}

/// Whether `s` can be a host name (RFC 1123 labels; `_` allowed as resolvers do), with a
/// hint for what people write instead: `[::1]`, or `host:port` (the port is `port_option`).
fn host_name_syntax(s: &str, port_option: &str) -> Result<(), String> {
    let unbracketed = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
    if let Some(inner) = unbracketed.filter(|r| r.parse::<IpAddr>().is_ok()) {
        return Err(format!(
            "`{s}`: give the address without brackets, `{inner}`"
        ));
    }
    if let Some((addr, _)) = s
        .split_once('%')
        .filter(|(a, _)| a.parse::<IpAddr>().is_ok())
    {
        return Err(format!(
            "`{s}`: an address with a zone is not supported; give `{addr}` or a global address"
        ));
    }
    if s.contains(':') {
        return Err(format!(
            "`{s}` is not an IP address or host name (give a port with --{port_option})"
        ));
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    // The resolver would read `10.1` or `1.2.3` as legacy IPv4 forms (10.0.0.1, 1.2.0.3); no
    // top-level domain is all digits, so such a "name" is a mistyped address.
    if name
        .rsplit('.')
        .next()
        .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "`{s}` is not an IP address (IPv4 has four numbers)"
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("`{s}` is not an IP address or host name"));
    }
    Ok(())
}

fn port(
    option: &'static str,
    value: Option<(u16, Origin<'_>)>,
    default: u16,
) -> Result<u16, ConfigError> {
    match value {
        Some((0, o)) => Err(invalid(option, o, "port 0 cannot be used, give 1-65535")),
        Some((p, _)) => Ok(p),
        None => Ok(default),
    }
}

/// Checks a name-like value that later goes into messages, argv or account look-ups: it must
/// not be blank and must not contain NUL, which no C string can carry.
fn word(option: &'static str, value: String, origin: Origin<'_>) -> Result<String, ConfigError> {
    if value.trim().is_empty() {
        Err(invalid(option, origin, "must not be empty"))
    } else if value.contains('\0') {
        Err(invalid(option, origin, "must not contain a NUL character"))
    } else {
        Ok(value)
    }
}

/// The host name, as the reference's `gethostname()`; read from procfs to avoid a syscall
/// wrapper for a value that is only informational.
fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `minutes` as a [`Duration`] (zero: off), with the reference's rule: 0, or at least 1.
fn zombie_interval(minutes: f64) -> Result<Duration, String> {
    if !minutes.is_finite() || minutes < 0.0 {
        return Err(format!("{minutes} is not a number of minutes >= 0"));
    }
    if minutes > 0.0 && minutes < 1.0 {
        return Err(format!(
            "{minutes} minutes: give 0 (no zombie detection) or at least 1"
        ));
    }
    if minutes > MAX_ZOMBIE_MINUTES {
        return Err(format!(
            "{minutes} minutes is more than a year ({MAX_ZOMBIE_MINUTES} minutes)"
        ));
    }
    // Whole milliseconds, so that the value --save_config writes reads back the same.
    Ok(Duration::from_millis((minutes * 60_000.0).round() as u64))
}

/// `secs` as a [`Duration`], if it is a usable socket timeout.
fn msg_timeout(secs: f64) -> Result<Duration, String> {
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("{secs} is not a number of seconds > 0"));
    }
    if secs > MAX_MSG_TIMEOUT_SECS {
        return Err(format!(
            "{secs} seconds is more than a day ({MAX_MSG_TIMEOUT_SECS} seconds)"
        ));
    }
    let d = Duration::try_from_secs_f64(secs).map_err(|e| format!("{secs}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{secs} seconds rounds to 0"));
    }
    Ok(d)
}

/// Finds the secret: `--secret`/`--secret_file` on the command line, else in the file, else the
/// systemd credential, else none. The command line's choice replaces the file's as a whole, so
/// `--secret_file` overrides a `secret` in the file and vice versa.
fn secret(
    cli_secret: Option<String>,
    cli_secret_file: Option<PathBuf>,
    file_secret: Option<String>,
    file_secret_file: Option<PathBuf>,
    fp: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Option<PathBuf>, SecretSource), ConfigError> {
    let from_file = |(s, p)| (s, Some(p), SecretSource::File);
    // clap already refuses both on the command line.
    if let Some(s) = cli_secret {
        return Ok((s, None, SecretSource::CommandLine));
    }
    if let Some(p) = cli_secret_file {
        return read_secret(&p, Origin::Cli).map(from_file);
    }
    if let Some(path) = fp {
        match (file_secret, file_secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "secret_file",
                    Origin::File(path),
                    "conflicts with `secret` in the same file; give only one",
                ))
            }
            (Some(s), None) => return Ok((s, None, SecretSource::ConfigFile)),
            (None, Some(p)) => return read_secret(&p, Origin::File(path)).map(from_file),
            (None, None) => {}
        }
    }
    // systemd's LoadCredential= puts the secret where only this service can read it, which is
    // the safest place for it; use it when nothing else was asked for.
    if let Some(dir) = env("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
        let path = Path::new(&dir).join(CREDENTIAL_NAME);
        if path.exists() {
            let path = absolutize(&path, "secret_file", Origin::Default)?;
            let text = fs::read_to_string(&path).map_err(|source| ConfigError::Credential {
                path: path.clone(),
                source,
            })?;
            return Ok((strip_newline(text), Some(path), SecretSource::File));
        }
    }
    Ok((String::new(), None, SecretSource::None))
}

fn read_secret(path: &Path, origin: Origin<'_>) -> Result<(String, PathBuf), ConfigError> {
    let path = absolutize(path, "secret_file", origin)?;
    let text = fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        option: "secret_file",
        path: path.clone(),
        file: origin.file(),
        source,
    })?;
    let secret = strip_newline(text);
    // An empty file (a failed `echo $S > file`) would silently serve without any secret.
    if secret.is_empty() {
        return Err(invalid(
            "secret_file",
            origin,
            format!(
                "{} is empty: a node given a secret file must have a secret (for none, give no \
                 secret file)",
                path.display()
            ),
        ));
    }
    Ok((secret, path))
}

/// The name of `user`'s primary group, if the user and that group exist.
fn primary_group(user: &str) -> Option<String> {
    let u = nix::unistd::User::from_name(user).ok()??;
    Some(nix::unistd::Group::from_gid(u.gid).ok()??.name)
}

/// Strips one line terminator, as `echo secret > file` adds; anything else is part of the secret.
fn strip_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

/// Makes `path` absolute against the current directory, because the node later changes into
/// `dest_path_prefix`; also drops `.` components and trailing slashes so that equal paths
/// compare equal, and refuses paths that could not be written back by `--save_config`.
fn absolutize(
    path: &Path,
    option: &'static str,
    origin: Origin<'_>,
) -> Result<PathBuf, ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(invalid(option, origin, "the path must not be empty"));
    }
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        let cwd = std::env::current_dir().map_err(|source| ConfigError::CurrentDir {
            option,
            path: path.to_path_buf(),
            source,
        })?;
        cwd.join(path)
    };
    let abs: PathBuf = abs.components().collect();
    if abs.to_str().is_none() {
        return Err(invalid(
            option,
            origin,
            format!("{} is not valid UTF-8", abs.display()),
        ));
    }
    Ok(abs)
}

/// Resolves a directory option (or its default) to an absolute path, refusing one that is `/`
/// once `..` is taken into account: `--clean` and cleanup remove what is under these directories.
fn directory(
    option: &'static str,
    value: Option<(PathBuf, Origin<'_>)>,
    default: impl FnOnce() -> PathBuf,
) -> Result<PathBuf, ConfigError> {
    let (path, origin) = value.unwrap_or_else(|| (default(), Origin::Default));
    let path = absolutize(&path, option, origin)?;
    let mut depth = 0usize;
    for c in path.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if depth == 0 {
        return Err(invalid(
            option,
            origin,
            "the root directory cannot be used: the node removes files under it",
        ));
    }
    Ok(path)
}

/// Makes `path` absolute and checks it is a readable regular file now, rather than failing at the
/// first TLS connection.
fn readable_file(
    option: &'static str,
    path: &Path,
    origin: Origin<'_>,
) -> Result<PathBuf, ConfigError> {
    let path = absolutize(path, option, origin)?;
    let read_err = |source| ConfigError::Read {
        option,
        path: path.clone(),
        file: origin.file(),
        source,
    };
    let file = fs::File::open(&path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(invalid(
            option,
            origin,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// Host names the tests resolve, without a resolver or network: `dual.test` has both
    /// families (IPv6 listed first), `v6.test` only IPv6, `empty.test` nothing.
    fn hosts(name: &str) -> io::Result<Vec<IpAddr>> {
        let v6: IpAddr = "fd00::5".parse().unwrap();
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5));
        match name {
            "dual.test" | "dual.test." => Ok(vec![v6, v4]),
            "v6.test" => Ok(vec![v6]),
            "empty.test" => Ok(Vec::new()),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such host")),
        }
    }

    fn argv(args: &[&str]) -> Vec<String> {
        std::iter::once("dispynode")
            .chain(args.iter().copied())
            .map(String::from)
            .collect()
    }

    fn try_run_with(
        args: &[&str],
        cpus: usize,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        match parse_args_with(argv(args), cpus, env, &hosts)? {
            Command::Run(c) => Ok(*c),
            Command::SaveConfig { .. } => panic!("expected Run for {args:?}"),
        }
    }

    fn try_run(args: &[&str]) -> Result<Config, ConfigError> {
        try_run_with(args, 4, &no_env)
    }

    fn run(args: &[&str]) -> Config {
        match try_run(args) {
            Ok(c) => c,
            Err(e) => panic!("{args:?} refused: {e}"),
        }
    }

    fn err(args: &[&str]) -> ConfigError {
        match try_run(args) {
            Ok(c) => panic!("{args:?} accepted: {c:?}"),
            Err(e) => e,
        }
    }

    /// Asserts that `e` is an `Invalid` error for `option` and that its message names it.
    fn assert_invalid(e: &ConfigError, option: &str) {
        match e {
            ConfigError::Invalid { option: o, .. } => assert_eq!(*o, option, "{e}"),
            other => panic!("expected Invalid for --{option}, got {other:?}"),
        }
        assert!(e.to_string().contains(&format!("--{option}")), "{e}");
    }

    fn clap_kind(e: &ConfigError) -> clap::error::ErrorKind {
        match e {
            ConfigError::Clap(c) => c.kind(),
            other => panic!("expected a clap error, got {other:?}"),
        }
    }

    /// A negative number given to an option that takes none is reported as that option's
    /// bad value, not as an unknown flag `-1` (clap's default, which names no option).
    #[test]
    fn negative_numbers_are_bad_values_of_their_option() {
        for option in [
            "node_port",
            "scheduler_port",
            "max_file_size",
            "zombie_interval",
            "job_memory_max",
            "job_pids_max",
            "job_cpu_max",
        ] {
            let e = err(&[&format!("--{option}"), "-1"]);
            let text = e.to_string();
            assert!(
                text.contains(&format!("--{option}")),
                "--{option} -1: the error does not name the option: {text}"
            );
            assert_ne!(
                clap_kind(&e),
                clap::error::ErrorKind::UnknownArgument,
                "--{option} -1 taken for a flag: {text}"
            );
        }
    }

    /// A number that does not parse says what was expected, not Rust's "invalid digit found
    /// in string".
    #[test]
    fn malformed_numbers_say_what_was_expected() {
        let cases = [
            ("--cpus", "x", "`x` is not a whole number"),
            ("--serve", "1.5", "`1.5` is not a whole number"),
            (
                "--zombie_interval",
                "-1",
                "`-1` is not a number of minutes >= 0",
            ),
            (
                "--zombie_interval",
                "soon",
                "`soon` is not a number of minutes >= 0",
            ),
            ("--job_pids_max", "ten", "`ten` is not a whole number >= 0"),
            (
                "--node_port",
                "70000",
                "`70000` is not a port number (0-65535)",
            ),
            ("--scheduler_port", "http", "`http` is not a port number"),
            (
                "--job_cpu_max",
                "50%",
                "`50%` is not a whole number of percent",
            ),
            ("--msg_timeout", "5s", "`5s` is not a number of seconds"),
        ];
        for (option, value, says) in cases {
            let text = err(&[option, value]).to_string();
            assert!(
                text.contains(option) && text.contains(says),
                "{option} {value}: {text}"
            );
            assert!(!text.contains("invalid digit"), "{text}");
        }
        assert_eq!(run(&["--cpus", "-1", "--serve", " 3 "]).serve, 3);
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).expect("write test file");
        path
    }

    fn s(p: &Path) -> &str {
        p.to_str().expect("utf-8 temp path")
    }

    #[test]
    fn clap_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn defaults() {
        let c = run(&[]);
        assert!(!c.debug);
        assert_eq!(c.cpus, 4);
        assert_eq!(c.cpus_option, None);
        assert!(c.ip_addr.is_empty() && c.ext_ip_addr.is_empty());
        assert_eq!(c.node_port, 51348);
        assert_eq!(c.name, hostname());
        assert!(!c.name.is_empty());
        assert_eq!(c.secret, "");
        assert_eq!(c.secret_file, None);
        assert_eq!(c.dest_path_prefix, PathBuf::from("/tmp/dispy/node"));
        assert_eq!(c.state_dir, PathBuf::from("/tmp/dispy/node/.dispynode"));
        assert_eq!(c.scheduler_node, None);
        assert_eq!(c.scheduler_port, 51347);
        assert_eq!((c.keyfile.as_ref(), c.certfile.as_ref()), (None, None));
        assert_eq!(c.max_file_size, 0);
        assert_eq!(c.zombie_interval, Duration::from_secs(3600));
        assert!(!c.clean);
        assert_eq!(c.msg_timeout, Duration::from_secs(5));
        assert_eq!(
            (c.service_start, c.service_stop, c.service_end),
            (None, None, None)
        );
        assert_eq!(c.serve, -1);
        assert_eq!(c.python, "python3");
        assert_eq!(
            (c.user.as_str(), c.group.as_str()),
            ("dispynode", "dispynode")
        );
        assert_eq!(
            (c.job_memory_max, c.job_pids_max, c.job_cpu_max),
            (None, None, None)
        );
        assert_eq!(c.config_file, None);
    }

    #[test]
    fn tmpdir_sets_the_default_prefix() {
        let env = |k: &str| (k == "TMPDIR").then(|| "/var/tmp".to_string());
        let c = try_run_with(&[], 2, &env).expect("valid");
        assert_eq!(c.dest_path_prefix, PathBuf::from("/var/tmp/dispy/node"));
        assert_eq!(c.state_dir, PathBuf::from("/var/tmp/dispy/node/.dispynode"));
    }

    #[test]
    fn every_option_under_both_spellings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = write(dir.path(), "cert.pem", "CERT");
        let key = write(dir.path(), "key.pem", "KEY");
        let secret = write(dir.path(), "secret", "s3cret\n");
        let (cert, key, secret) = (s(&cert), s(&key), s(&secret));
        type Check = Box<dyn Fn(&Config) -> bool>;
        // (underscored name, value, other options it needs, check)
        let cases: Vec<(&str, Option<&str>, Vec<&str>, Check)> = vec![
            ("debug", None, vec![], Box::new(|c| c.debug)),
            ("clean", None, vec![], Box::new(|c| c.clean)),
            ("cpus", Some("3"), vec![], Box::new(|c| c.cpus == 3)),
            (
                "ip_addr",
                Some("10.0.0.1"),
                vec![],
                Box::new(|c| c.ip_addr == [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))]),
            ),
            (
                "ext_ip_addr",
                Some("::1"),
                vec!["-i", "10.0.0.1"],
                Box::new(|c| c.ext_ip_addr == [IpAddr::V6(Ipv6Addr::LOCALHOST)]),
            ),
            (
                "node_port",
                Some("9701"),
                vec![],
                Box::new(|c| c.node_port == 9701),
            ),
            ("name", Some("n1"), vec![], Box::new(|c| c.name == "n1")),
            ("secret", Some("pw"), vec![], Box::new(|c| c.secret == "pw")),
            (
                "secret_file",
                Some(secret),
                vec![],
                Box::new(|c| c.secret == "s3cret"),
            ),
            (
                "dest_path_prefix",
                Some("/srv/dispy"),
                vec![],
                Box::new(|c| {
                    c.dest_path_prefix == Path::new("/srv/dispy")
                        && c.state_dir == Path::new("/srv/dispy/.dispynode")
                }),
            ),
            (
                "state_dir",
                Some("/var/lib/dispynode"),
                vec![],
                Box::new(|c| c.state_dir == Path::new("/var/lib/dispynode")),
            ),
            (
                "scheduler_node",
                Some("sched.example"),
                vec![],
                Box::new(|c| c.scheduler_node.as_deref() == Some("sched.example")),
            ),
            (
                "scheduler_port",
                Some("9700"),
                vec![],
                Box::new(|c| c.scheduler_port == 9700),
            ),
            (
                "certfile",
                Some(cert),
                vec![],
                Box::new(|c| c.certfile.is_some()),
            ),
            (
                "keyfile",
                Some(key),
                vec!["--certfile", cert],
                Box::new(|c| c.keyfile.is_some()),
            ),
            (
                "max_file_size",
                Some("10m"),
                vec![],
                Box::new(|c| c.max_file_size == 10 << 20),
            ),
            (
                "zombie_interval",
                Some("0"),
                vec![],
                Box::new(|c| c.zombie_interval.is_zero()),
            ),
            (
                "msg_timeout",
                Some("2.5"),
                vec![],
                Box::new(|c| c.msg_timeout == Duration::from_millis(2500)),
            ),
            (
                "service_start",
                Some("17:00"),
                vec!["--service_end", "8:00"],
                Box::new(|c| {
                    c.service_start
                        == Some(TimeOfDay {
                            hour: 17,
                            minute: 0,
                        })
                }),
            ),
            (
                "service_stop",
                Some("6:00"),
                vec!["--service_start", "17:00"],
                Box::new(|c| c.service_stop == Some(TimeOfDay { hour: 6, minute: 0 })),
            ),
            (
                "service_end",
                Some("08:30"),
                vec!["--service_start", "17:00"],
                Box::new(|c| {
                    c.service_end
                        == Some(TimeOfDay {
                            hour: 8,
                            minute: 30,
                        })
                }),
            ),
            ("serve", Some("2"), vec![], Box::new(|c| c.serve == 2)),
            (
                "python",
                Some("/usr/bin/python3.12"),
                vec![],
                Box::new(|c| c.python == "/usr/bin/python3.12"),
            ),
            ("user", Some("jobs"), vec![], Box::new(|c| c.user == "jobs")),
            (
                "group",
                Some("jobs"),
                vec![],
                Box::new(|c| c.group == "jobs"),
            ),
            (
                "job_memory_max",
                Some("1g"),
                vec![],
                Box::new(|c| c.job_memory_max == Some(1 << 30)),
            ),
            (
                "job_pids_max",
                Some("64"),
                vec![],
                Box::new(|c| c.job_pids_max == Some(64)),
            ),
            (
                "job_cpu_max",
                Some("150"),
                vec![],
                Box::new(|c| c.job_cpu_max == Some(150)),
            ),
        ];
        let defaults = run(&[]);
        for (name, value, extra, check) in &cases {
            for spelling in [name.to_string(), name.replace('_', "-")] {
                let flag = format!("--{spelling}");
                let mut args = extra.clone();
                args.push(&flag);
                args.extend(value.iter());
                let c = run(&args);
                assert!(check(&c), "{args:?} gave {c:?}");
                assert!(!check(&defaults), "default already satisfies {name}");
                // The `--name=value` form works too.
                if let Some(v) = value {
                    let joined = format!("{flag}={v}");
                    let mut args = extra.clone();
                    args.push(&joined);
                    assert!(check(&run(&args)), "{args:?}");
                }
            }
        }
        // Every long option of the command line is covered above (except --config/--save_config).
        let covered: Vec<&str> = cases.iter().map(|c| c.0).collect();
        for arg in command().get_arguments() {
            if let Some(long) = arg.get_long() {
                if !["config", "save_config", "help", "version"].contains(&long) {
                    assert!(covered.contains(&long), "--{long} is not tested");
                }
            }
        }
    }

    #[test]
    fn short_options() {
        let c = run(&[
            "-d",
            "-c",
            "2",
            "-i",
            "127.0.0.1",
            "-i",
            "::1",
            "-p",
            "9701",
            "-s",
            "pw",
        ]);
        assert!(c.debug);
        assert_eq!(c.cpus, 2);
        assert_eq!(c.ip_addr.len(), 2);
        assert_eq!(c.node_port, 9701);
        assert_eq!(c.secret, "pw");
    }

    #[test]
    fn help_and_version_are_clap_errors_for_main_to_exit_with() {
        use clap::error::ErrorKind;
        assert_eq!(clap_kind(&err(&["--help"])), ErrorKind::DisplayHelp);
        assert_eq!(clap_kind(&err(&["--version"])), ErrorKind::DisplayVersion);
        assert_eq!(clap_kind(&err(&["--bogus"])), ErrorKind::UnknownArgument);
        assert_eq!(
            clap_kind(&err(&["--node_port", "70000"])),
            ErrorKind::ValueValidation
        );
        let help = command().render_long_help().to_string();
        for option in ["--node_port", "--node-port", "--save_config", "--cpus"] {
            assert!(help.contains(option), "{option} missing from help");
        }
    }

    #[test]
    fn cpus_rules() {
        let on = |args: &[&str], cpus| try_run_with(args, cpus, &no_env);
        assert_eq!(on(&["-c", "2"], 2).expect("ok").cpus, 2);
        assert_eq!(on(&["-c", "1"], 8).expect("ok").cpus, 1);
        assert_eq!(on(&[], 8).expect("ok").cpus, 8);
        assert_eq!(on(&["-c", "-1"], 2).expect("ok").cpus, 1);
        let c = on(&["--cpus", "-3"], 8).expect("ok");
        assert_eq!((c.cpus, c.cpus_option), (5, Some(-3)));
        assert_eq!(on(&["--cpus=-1"], 2).expect("ok").cpus, 1);
        for bad in [&["-c", "0"][..], &["-c", "3"], &["-c", "-2"], &["-c", "-9"]] {
            match on(bad, 2) {
                Err(e) => assert_invalid(&e, "cpus"),
                Ok(c) => panic!("{bad:?} accepted: {c:?}"),
            }
        }
    }

    #[test]
    fn resolve_cpus_edges() {
        assert_eq!(resolve_cpus(None, 3), Ok(3));
        assert_eq!(resolve_cpus(None, 0), Ok(1));
        assert_eq!(resolve_cpus(Some(3), 3), Ok(3));
        assert!(resolve_cpus(Some(4), 3).is_err());
        assert!(resolve_cpus(Some(0), 3).is_err());
        assert_eq!(resolve_cpus(Some(-2), 3), Ok(1));
        assert!(resolve_cpus(Some(-3), 3).is_err());
        assert!(resolve_cpus(Some(i64::MIN), 3).is_err());
        assert!(resolve_cpus(Some(i64::MAX), 3).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("10k"), Ok(10 * 1024));
        assert_eq!(parse_size("10K"), Ok(10 * 1024));
        assert_eq!(parse_size("3M"), Ok(3 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert_eq!(parse_size(" 7m "), Ok(7 << 20));
        for bad in [
            "10x",
            "-1",
            "99999999999t",
            "99999999999999999999",
            "",
            "k",
            "1.5m",
            "10kb",
            "+5",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_size("16777215t"), Ok(16_777_215 << 40));
        assert!(parse_size("16777216t").is_err());
        assert_eq!(format_size(0), "0");
        assert_eq!(format_size(10 << 20), "10m");
        assert_eq!(format_size(1536), "1536");
        assert_eq!(format_size(3 << 40), "3t");
        assert_eq!(format_size(u64::MAX), u64::MAX.to_string());
        // Through the command line and the file.
        assert_eq!(run(&["--max_file_size", "3M"]).max_file_size, 3 << 20);
        assert_eq!(
            clap_kind(&err(&["--max_file_size", "10x"])),
            clap::error::ErrorKind::ValueValidation
        );
    }

    #[test]
    fn times_of_day() {
        let t = |s: &str| s.parse::<TimeOfDay>();
        assert_eq!(
            t("17:00"),
            Ok(TimeOfDay {
                hour: 17,
                minute: 0
            })
        );
        assert_eq!(t("7:05"), Ok(TimeOfDay { hour: 7, minute: 5 }));
        assert_eq!(t("00:00"), Ok(TimeOfDay { hour: 0, minute: 0 }));
        assert_eq!(
            t("23:59"),
            Ok(TimeOfDay {
                hour: 23,
                minute: 59
            })
        );
        for bad in [
            "24:00", "7:60", "ab", "", "7", "7:5", "7:005", "123:00", "-1:00", "+7:00", "07:00:00",
            " 7:00", "7:0a",
        ] {
            assert!(t(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(TimeOfDay { hour: 7, minute: 5 }.to_string(), "07:05");
        assert_eq!(
            TimeOfDay {
                hour: 17,
                minute: 30
            }
            .minutes_since_midnight(),
            1050
        );
        assert_eq!(
            clap_kind(&err(&["--service_start", "24:00"])),
            clap::error::ErrorKind::ValueValidation
        );
    }

    #[test]
    fn service_stop_or_end_need_start() {
        assert_invalid(&err(&["--service_stop", "06:00"]), "service_stop");
        assert_invalid(&err(&["--service_end", "08:00"]), "service_end");
        let c = run(&["--service_start", "17:00", "--service_end", "8:00"]);
        assert_eq!(c.service_end, Some(TimeOfDay { hour: 8, minute: 0 }));
        assert_eq!(c.service_stop, None);
    }

    #[test]
    fn an_option_given_again_overrides_as_in_the_reference() {
        assert!(run(&["-d", "-d"]).debug);
        assert_eq!(run(&["--cpus", "1", "--cpus", "2"]).cpus, 2);
        assert_eq!(run(&["-p", "9000", "--node_port", "9001"]).node_port, 9001);
        // repeatable options still add up
        assert_eq!(
            run(&["-i", "127.0.0.1", "-i", "127.0.0.2"]).ip_addr.len(),
            2
        );
    }

    #[test]
    fn the_host_name_is_not_saved_a_given_name_is() {
        let (toml, _) = save(&["--save_config"], 4);
        assert!(!toml.lines().any(|l| l.starts_with("name")), "{toml}");
        let (toml, _) = save(&["--name", "node-7", "--save_config"], 4);
        assert!(toml.contains("name = \"node-7\""), "{toml}");
    }

    #[test]
    fn wildcard_and_unreachable_addresses() {
        assert_eq!(
            run(&["-i", "0.0.0.0"]).ip_addr,
            vec![IpAddr::from([0, 0, 0, 0])]
        );
        let e = err(&["-i", "127.0.0.2", "-i", "0.0.0.0"]);
        assert_invalid(&e, "ip_addr");
        assert!(e.to_string().contains("give it alone"), "{e}");
        // another family is fine
        run(&["-i", "0.0.0.0", "-i", "::1"]);
        for bad in ["0.0.0.0", "224.0.0.1", "::"] {
            assert_invalid(
                &err(&["-i", "127.0.0.1", "--ext_ip_addr", bad]),
                "ext_ip_addr",
            );
        }
    }

    #[test]
    fn a_window_without_an_end_or_of_no_time_is_refused() {
        let e = err(&["--service_start", "17:00"]);
        assert_invalid(&e, "service_start");
        assert!(
            e.to_string()
                .contains("needs --service_stop or --service_end"),
            "{e}"
        );
        for option in ["--service_stop", "--service_end"] {
            let e = err(&["--service_start", "8:00", option, "08:00"]);
            assert_invalid(&e, &option[2..]);
            assert!(e.to_string().contains("never serve"), "{e}");
        }
        // across midnight is a window
        let c = run(&["--service_start", "17:00", "--service_stop", "6:00"]);
        assert_eq!(c.service_stop, Some(TimeOfDay { hour: 6, minute: 0 }));
    }

    #[test]
    fn ports_serve_and_timeouts() {
        assert_invalid(&err(&["-p", "0"]), "node_port");
        assert_invalid(&err(&["--scheduler_port", "0"]), "scheduler_port");
        assert_eq!(run(&["--serve", "-1"]).serve, -1);
        assert_eq!(run(&["--serve", "1"]).serve, 1);
        assert_invalid(&err(&["--serve", "0"]), "serve");
        assert_invalid(&err(&["--serve", "-2"]), "serve");
        for bad in ["0", "-1", "NaN", "inf", "86401", "1e-12"] {
            assert_invalid(&err(&["--msg_timeout", bad]), "msg_timeout");
        }
        assert_eq!(
            run(&["--msg_timeout", "86400"]).msg_timeout,
            Duration::from_secs(86_400)
        );
        assert_eq!(
            run(&["--msg_timeout", "0.001"]).msg_timeout,
            Duration::from_millis(1)
        );
    }

    #[test]
    fn job_limits() {
        let on = |args: &[&str]| try_run_with(args, 2, &no_env);
        assert_eq!(
            on(&["--job_cpu_max", "200"]).expect("ok").job_cpu_max,
            Some(200)
        );
        for (args, option) in [
            (&["--job_cpu_max", "201"][..], "job_cpu_max"),
            (&["--job_cpu_max", "0"], "job_cpu_max"),
            (&["--job_cpu_max", "150", "-c", "1"], "job_cpu_max"),
            (&["--job_pids_max", "0"], "job_pids_max"),
            (&["--job_pids_max", "4194305"], "job_pids_max"),
            (&["--job_memory_max", "0"], "job_memory_max"),
        ] {
            match on(args) {
                Err(e) => assert_invalid(&e, option),
                Ok(c) => panic!("{args:?} accepted: {c:?}"),
            }
        }
        assert_eq!(
            on(&["--job_pids_max", "4194304"]).expect("ok").job_pids_max,
            Some(4_194_304)
        );
    }

    #[test]
    fn names_and_accounts_must_not_be_empty() {
        for option in ["--name", "--python", "--user", "--group"] {
            let e = err(&[option, ""]);
            assert_invalid(&e, &option[2..]);
            let e = err(&[option, "  "]);
            assert_invalid(&e, &option[2..]);
        }
        assert_invalid(&err(&["--scheduler_node", "a b"]), "scheduler_node");
    }

    #[test]
    fn addresses_pairing() {
        let c = run(&[
            "-i",
            "10.0.0.1",
            "-i",
            "10.0.0.2",
            "--ext_ip_addr",
            "1.2.3.4",
        ]);
        assert_eq!(c.ext_ip_addr.len(), 1);
        // One --ext_ip_addr is paired with the address the node picks itself.
        assert_eq!(run(&["--ext_ip_addr", "1.2.3.4"]).ext_ip_addr.len(), 1);
        let e = err(&[
            "-i",
            "10.0.0.1",
            "--ext_ip_addr",
            "1.2.3.4",
            "--ext_ip_addr",
            "1.2.3.5",
        ]);
        assert_invalid(&e, "ext_ip_addr");
        assert_invalid(&err(&["-i", "10.0.0.1", "-i", "10.0.0.1"]), "ip_addr");
    }

    /// dispy 4.15.2's `dispynode.py` (what `pip install dispy` gives) names three of the manual's
    /// options differently; an operator's command line from it works here too.
    #[test]
    fn the_4_15_2_option_names_are_accepted() {
        let c = run(&[
            "--host",
            "10.0.0.7",
            "--ext_host",
            "dual.test",
            "--scheduler_host",
            "sched.test",
        ]);
        assert_eq!(c.ip_addr, [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))]);
        assert_eq!(c.ext_ip_addr, [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5))]);
        assert_eq!(c.scheduler_node.as_deref(), Some("sched.test"));
    }

    #[test]
    fn preferred_address_is_the_first_ipv4_else_the_first() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let v6_first = [ip("fd00::5"), ip("10.0.0.5"), ip("10.0.0.6")];
        assert_eq!(preferred_address(&v6_first), Some(ip("10.0.0.5")));
        assert_eq!(
            preferred_address(&[ip("fd00::5"), ip("fd00::6")]),
            Some(ip("fd00::5"))
        );
        assert_eq!(preferred_address(&[]), None);
    }

    /// `-i` and `--ext_ip_addr` take host names, as the reference's (resolved at start,
    /// preferring IPv4 as its `host_addrinfo` does); `--save_config` keeps the names.
    #[test]
    fn host_names_are_resolved_preferring_ipv4() {
        let c = run(&["-i", "dual.test", "--ext_ip_addr", "v6.test"]);
        assert_eq!(c.ip_addr, [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5))]);
        assert_eq!(c.ext_ip_addr, ["fd00::5".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.ip_addr_given, ["dual.test"]);
        let toml = c.to_toml();
        assert!(toml.contains("ip_addr = [\"dual.test\"]"), "{toml}");
        assert!(toml.contains("ext_ip_addr = [\"v6.test\"]"), "{toml}");
        assert_eq!(run(&["-i", "dual.test."]).ip_addr, c.ip_addr);

        let cases: [(&[&str], &str, &str); 7] = [
            (
                &["-i", "empty.test"],
                "ip_addr",
                "`empty.test` resolves to no address",
            ),
            (&["-i", "[::1]"], "ip_addr", "without brackets, `::1`"),
            (
                &["-i", "fe80::1%eth0"],
                "ip_addr",
                "give `fe80::1` or a global",
            ),
            (
                &["-i", "node.test:51348"],
                "ip_addr",
                "give a port with --node_port",
            ),
            (
                &["-i", "a b"],
                "ip_addr",
                "`a b` is not an IP address or host name",
            ),
            (
                &["--ext_ip_addr=x-.test"],
                "ext_ip_addr",
                "not an IP address or host name",
            ),
            (
                &["-i", "dual.test", "-i", "10.0.0.5"],
                "ip_addr",
                "`dual.test` and `10.0.0.5` are both 10.0.0.5",
            ),
        ];
        for (args, option, says) in cases {
            let e = err(args);
            assert_invalid(&e, option);
            assert!(e.to_string().contains(says), "{args:?}: {e}");
            assert_eq!(e.exit_status(), 2, "{e}");
        }
        // A name that does not resolve may resolve later (DNS not up yet): another status.
        let e = err(&["--ext_ip_addr", "nowhere.test"]);
        assert!(
            matches!(&e, ConfigError::Resolve { option: "ext_ip_addr", name, .. } if name == "nowhere.test"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "cannot resolve --ext_ip_addr `nowhere.test`: no such host"
        );
        assert_eq!(e.exit_status(), EX_TEMPFAIL);
        for bad in [
            "a..b",
            "-a",
            "a-",
            ".",
            "a/b",
            "1.2.3",
            "127.1",
            "10",
            &"x".repeat(64),
        ] {
            assert!(host_name_syntax(bad, "node_port").is_err(), "{bad}");
        }
        for good in ["a", "node-1.example.org", "my_host", "x.", &"x".repeat(63)] {
            assert_eq!(host_name_syntax(good, "node_port"), Ok(()), "{good}");
        }
    }

    /// The system's resolver, for real: `localhost` is in every /etc/hosts, often with `::1`
    /// too; the node serves its IPv4 address.
    #[test]
    fn localhost_resolves_with_the_system_resolver() {
        let found = system_resolver("localhost").expect("localhost resolves");
        assert!(
            found.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{found:?}"
        );
        let Command::Run(c) =
            parse_args_with(argv(&["-i", "localhost"]), 2, &no_env, &system_resolver)
                .expect("-i localhost")
        else {
            panic!("expected Run");
        };
        assert_eq!(c.ip_addr, [IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    }

    /// The scheduler's name is resolved when the node announces itself; what cannot be a
    /// name or an address is refused at start, with a hint for the usual mistakes.
    #[test]
    fn scheduler_node_spelling() {
        for ok in ["sched.example", "::1", "10.0.0.9", "sched"] {
            assert_eq!(
                run(&["--scheduler_node", ok]).scheduler_node.as_deref(),
                Some(ok)
            );
        }
        let cases = [
            ("[::1]", "without brackets, `::1`"),
            ("sched:51347", "give a port with --scheduler_port"),
            ("a b", "not an IP address or host name"),
            ("", "not an IP address or host name"),
        ];
        for (bad, says) in cases {
            let e = err(&["--scheduler_node", bad]);
            assert_invalid(&e, "scheduler_node");
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn paths_are_made_absolute_and_root_is_refused() {
        let cwd = std::env::current_dir().expect("cwd");
        let c = run(&["--dest_path_prefix", "rel/dir/"]);
        assert_eq!(c.dest_path_prefix, cwd.join("rel/dir"));
        assert_eq!(c.state_dir, cwd.join("rel/dir/.dispynode"));
        assert_eq!(
            run(&["--dest_path_prefix", "/srv/./x/"]).dest_path_prefix,
            Path::new("/srv/x")
        );
        assert_invalid(&err(&["--dest_path_prefix", "/"]), "dest_path_prefix");
        assert_invalid(&err(&["--dest_path_prefix", "/srv/.."]), "dest_path_prefix");
        // clap refuses an empty path on the command line; the file goes through our check.
        assert_eq!(
            clap_kind(&err(&["--dest_path_prefix", ""])),
            clap::error::ErrorKind::InvalidValue
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = write(dir.path(), "c.toml", "dest_path_prefix = \"\"\n");
        assert_invalid(&err(&["--config", s(&conf)]), "dest_path_prefix");
        assert_invalid(&err(&["--state_dir", "/"]), "state_dir");
    }

    #[test]
    fn tls_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = write(dir.path(), "cert.pem", "CERT");
        let key = write(dir.path(), "key.pem", "KEY");
        assert_invalid(&err(&["--keyfile", s(&key)]), "keyfile");
        let c = run(&["--certfile", s(&cert), "--keyfile", s(&key)]);
        assert_eq!(c.certfile.as_deref(), Some(cert.as_path()));
        assert_eq!(c.keyfile.as_deref(), Some(key.as_path()));
        let missing = dir.path().join("missing.pem");
        match err(&["--certfile", s(&missing)]) {
            e @ ConfigError::Read {
                option: "certfile", ..
            } => {
                assert!(e.to_string().contains("--certfile"), "{e}")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_invalid(&err(&["--certfile", s(dir.path())]), "certfile");
    }

    #[test]
    fn secret_file_is_read_without_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = write(dir.path(), "secret", "s3cret\n");
        let c = run(&["--secret_file", s(&f)]);
        assert_eq!(c.secret, "s3cret");
        assert_eq!(c.secret_file.as_deref(), Some(f.as_path()));
        let crlf = write(dir.path(), "crlf", "two\nlines\r\n");
        assert_eq!(run(&["--secret_file", s(&crlf)]).secret, "two\nlines");
        let bare = write(dir.path(), "bare", "bare");
        assert_eq!(run(&["--secret-file", s(&bare)]).secret, "bare");

        let missing = dir.path().join("nope");
        let e = err(&["--secret_file", s(&missing)]);
        assert!(
            matches!(
                e,
                ConfigError::Read {
                    option: "secret_file",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("--secret_file"), "{e}");

        assert_eq!(
            clap_kind(&err(&["--secret", "x", "--secret_file", s(&f)])),
            clap::error::ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn systemd_credential_is_used_when_no_secret_is_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cred = write(dir.path(), CREDENTIAL_NAME, "from-systemd\n");
        let dir_s = s(dir.path()).to_string();
        let env = move |k: &str| (k == "CREDENTIALS_DIRECTORY").then(|| dir_s.clone());
        let c = try_run_with(&[], 2, &env).expect("valid");
        assert_eq!(c.secret, "from-systemd");
        assert_eq!(c.secret_file.as_deref(), Some(cred.as_path()));
        // An explicit secret wins over the credential.
        let c = try_run_with(&["-s", "explicit"], 2, &env).expect("valid");
        assert_eq!((c.secret.as_str(), c.secret_file), ("explicit", None));
        let conf = write(dir.path(), "c.toml", "secret = \"\"\n");
        let c = try_run_with(&["--config", s(&conf)], 2, &env).expect("valid");
        assert_eq!(c.secret, "");
        // A credentials directory without our credential means no secret.
        let empty = tempfile::tempdir().expect("tempdir");
        let empty_s = s(empty.path()).to_string();
        let env = move |k: &str| (k == "CREDENTIALS_DIRECTORY").then(|| empty_s.clone());
        assert_eq!(try_run_with(&[], 2, &env).expect("valid").secret, "");
    }

    #[test]
    fn file_values_and_command_line_precedence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = write(
            dir.path(),
            "node.toml",
            r#"
debug = true
cpus = -1
ip_addr = ["127.0.0.1"]
node_port = 9701
name = "from-file"
max_file_size = "10m"
job_memory_max = 1048576
zombie_interval = 10
msg_timeout = 7
service_start = "17:00"
service_stop = "6:00"
serve = 3
python = "/usr/bin/python3"
"#,
        );
        let c = try_run_with(&["--config", s(&conf)], 4, &no_env).expect("valid");
        assert!(c.debug);
        assert_eq!((c.cpus, c.cpus_option), (3, Some(-1)));
        assert_eq!(c.ip_addr, [IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        assert_eq!(c.node_port, 9701);
        assert_eq!(c.name, "from-file");
        assert_eq!(c.max_file_size, 10 << 20);
        assert_eq!(c.job_memory_max, Some(1 << 20));
        assert_eq!(c.zombie_interval, Duration::from_secs(600));
        assert_eq!(c.msg_timeout, Duration::from_secs(7));
        assert_eq!(c.service_stop, Some(TimeOfDay { hour: 6, minute: 0 }));
        assert_eq!(c.serve, 3);
        assert_eq!(c.python, "/usr/bin/python3");
        assert_eq!(c.config_file.as_deref(), Some(conf.as_path()));
        // Untouched keys keep their defaults.
        assert_eq!(c.scheduler_port, 51347);

        let c = try_run_with(
            &[
                "--config",
                s(&conf),
                "-p",
                "9800",
                "--name",
                "from-cli",
                "-c",
                "2",
                "-i",
                "::1",
                "--max_file_size",
                "0",
            ],
            4,
            &no_env,
        )
        .expect("valid");
        assert_eq!(c.node_port, 9800);
        assert_eq!(c.name, "from-cli");
        assert_eq!((c.cpus, c.cpus_option), (2, Some(2)));
        assert_eq!(c.ip_addr, [IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        assert_eq!(c.max_file_size, 0);
        assert_eq!(
            c.zombie_interval,
            Duration::from_secs(600),
            "file value kept"
        );
    }

    /// As the reference: minutes may be fractional; 0 turns detection off, and between 0 and 1
    /// is refused. A saved file keeps whole minutes whole.
    #[test]
    fn zombie_interval_takes_fractional_minutes() {
        let c = run(&["--zombie_interval", "1.5"]);
        assert_eq!(c.zombie_interval, Duration::from_secs(90));
        assert!(
            c.to_toml().contains("zombie_interval = 1.5"),
            "{}",
            c.to_toml()
        );
        let c = run(&["--zombie_interval", "10"]);
        assert!(
            c.to_toml().contains("zombie_interval = 10\n"),
            "{}",
            c.to_toml()
        );
        assert!(run(&["--zombie_interval", "0"]).zombie_interval.is_zero());
        for bad in ["0.5", "1e9"] {
            let e = err(&["--zombie_interval", bad]);
            assert_invalid(&e, "zombie_interval");
        }
        assert!(err(&["--zombie_interval", "0.5"])
            .to_string()
            .contains("give 0 (no zombie detection) or at least 1"));

        let dir = tempfile::tempdir().expect("tempdir");
        let conf = write(dir.path(), "node.toml", "zombie_interval = 2.5\n");
        let c = try_run_with(&["--config", s(&conf)], 4, &no_env).expect("valid");
        assert_eq!(c.zombie_interval, Duration::from_secs(150));
        let conf = write(dir.path(), "neg.toml", "zombie_interval = -3\n");
        let e = try_run_with(&["--config", s(&conf)], 4, &no_env).unwrap_err();
        assert!(
            e.to_string().contains("not a number of minutes >= 0"),
            "{e}"
        );
    }

    #[test]
    fn file_errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let check_file_err = |text: &str, needle: &str| {
            let conf = write(dir.path(), "bad.toml", text);
            match err(&["--config", s(&conf)]) {
                e @ ConfigError::File { .. } => {
                    let msg = e.to_string();
                    assert!(msg.contains(needle), "{msg}");
                    assert!(msg.contains(s(&conf)), "{msg}");
                }
                other => panic!("{text:?}: unexpected {other:?}"),
            }
        };
        check_file_err("nodeport = 1\n", "nodeport");
        check_file_err("node_port = \"x\"\n", "node_port");
        check_file_err("node_port = 70000\n", "node_port");
        check_file_err("max_file_size = \"10x\"\n", "10x");
        check_file_err("max_file_size = -1\n", "negative");
        check_file_err("service_start = \"24:00\"\n", "24:00");
        check_file_err("config = \"/x\"\n", "config");
        check_file_err("save_config = \"/x\"\n", "save_config");
        check_file_err("debug = \n", "debug");

        let conf = write(dir.path(), "cpus.toml", "cpus = 0\n");
        let e = err(&["--config", s(&conf)]);
        assert_invalid(&e, "cpus");
        assert_eq!(
            e.to_string(),
            format!(
                "invalid value for --cpus in {}: {}",
                conf.display(),
                resolve_cpus(Some(0), 4).expect_err("0 refused")
            )
        );
        // A bad value on the command line does not blame the file.
        let conf = write(dir.path(), "ok.toml", "cpus = 1\n");
        let e = err(&["--config", s(&conf), "-c", "0"]);
        assert!(!e.to_string().contains("ok.toml"), "{e}");

        let conf = write(dir.path(), "ip.toml", "ip_addr = [\"1.2.3\"]\n");
        assert_invalid(&err(&["--config", s(&conf)]), "ip_addr");

        let conf = write(dir.path(), "stop.toml", "service_stop = \"6:00\"\n");
        let e = err(&["--config", s(&conf)]);
        assert_invalid(&e, "service_stop");
        assert!(e.to_string().contains("stop.toml"), "{e}");

        let both = write(
            dir.path(),
            "both.toml",
            "secret = \"a\"\nsecret_file = \"/x\"\n",
        );
        assert_invalid(&err(&["--config", s(&both)]), "secret_file");

        let missing = dir.path().join("missing.toml");
        let e = err(&["--config", s(&missing)]);
        assert!(
            matches!(
                e,
                ConfigError::Read {
                    option: "config",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn command_line_secret_source_replaces_the_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sf = write(dir.path(), "secret", "from-file\n");
        let conf = write(dir.path(), "c.toml", "secret = \"in-config\"\n");
        let c = run(&["--config", s(&conf), "--secret_file", s(&sf)]);
        assert_eq!(c.secret, "from-file");
        let conf = write(
            dir.path(),
            "c2.toml",
            &format!("secret_file = \"{}\"\n", s(&sf)),
        );
        assert_eq!(run(&["--config", s(&conf)]).secret, "from-file");
        let c = run(&["--config", s(&conf), "-s", "cli"]);
        assert_eq!((c.secret.as_str(), c.secret_file), ("cli", None));
        // A missing secret_file named in the file blames the file.
        let conf = write(
            dir.path(),
            "c3.toml",
            "secret_file = \"/nonexistent/secret\"\n",
        );
        let e = err(&["--config", s(&conf)]);
        assert!(e.to_string().contains("--secret_file"), "{e}");
        assert!(e.to_string().contains("c3.toml"), "{e}");
    }

    fn save(args: &[&str], cpus: usize) -> (String, Option<PathBuf>) {
        match parse_args_with(argv(args), cpus, &no_env, &hosts) {
            Ok(Command::SaveConfig { toml, path, .. }) => (toml, path),
            Ok(Command::Run(c)) => panic!("expected SaveConfig, got {c:?}"),
            Err(e) => panic!("{args:?} refused: {e}"),
        }
    }

    #[test]
    fn save_config_to_stdout_or_file() {
        let (toml, path) = save(&["--save_config", "-p", "9701"], 4);
        assert_eq!(path, None);
        assert!(toml.contains("node_port = 9701"), "{toml}");
        let table: HashMap<String, toml::Value> = toml::from_str(&toml).expect("TOML");
        assert!(!table.contains_key("save_config") && !table.contains_key("config"));
        let (_, path) = save(&["--save_config", "/etc/dispynode.toml"], 4);
        assert_eq!(path, Some(PathBuf::from("/etc/dispynode.toml")));
        let (_, path) = save(&["--save-config=out.toml", "-d"], 4);
        assert_eq!(path, Some(PathBuf::from("out.toml")));
        // Options after a bare --save_config are still options.
        let (toml, path) = save(&["--save_config", "-d"], 4);
        assert_eq!(path, None);
        assert!(toml.contains("debug = true"), "{toml}");
        // Invalid options are refused rather than saved.
        assert!(parse_args_with(argv(&["--save_config", "-c", "0"]), 4, &no_env, &hosts).is_err());
    }

    #[test]
    fn secrets_readable_by_every_user_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let chmod = |p: &Path, mode| {
            fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod")
        };
        let secret = write(dir.path(), "secret", "abc\n");
        let conf = write(dir.path(), "c.toml", "secret = \"abc\"\n");
        let key = write(dir.path(), "key.pem", "not parsed here\n");
        let exposed = |args: &[&str]| run(args).exposed_secrets();

        chmod(&secret, 0o644);
        let found = exposed(&["--secret_file", s(&secret)]);
        assert!(
            found.len() == 1 && found[0].contains("secret file") && found[0].contains("0644"),
            "{found:?}"
        );
        // group-readable is how a service user is let read it
        chmod(&secret, 0o640);
        assert!(exposed(&["--secret_file", s(&secret)]).is_empty());

        chmod(&conf, 0o604);
        let found = exposed(&["--config", s(&conf)]);
        assert!(
            found.len() == 1 && found[0].contains("configuration file holding the secret"),
            "{found:?}"
        );
        chmod(&conf, 0o600);
        assert!(exposed(&["--config", s(&conf)]).is_empty());
        // a world-readable configuration without the secret is fine (the packaged one)
        let plain = write(dir.path(), "plain.toml", "cpus = 1\n");
        chmod(&plain, 0o644);
        assert!(exposed(&["--config", s(&plain), "--secret_file", s(&secret)]).is_empty());

        let found = exposed(&["--secret", "abc"]);
        assert!(
            found.len() == 1 && found[0].contains("process list"),
            "{found:?}"
        );
        assert!(exposed(&[]).is_empty());
        assert!(exposed(&["--secret", ""]).is_empty());

        chmod(&key, 0o644);
        // with --keyfile, and without it (the key is in the certfile)
        for args in [
            &["--certfile", s(&key), "--keyfile", s(&key)][..],
            &["--certfile", s(&key)],
        ] {
            let found = exposed(args);
            assert!(
                found.len() == 1 && found[0].contains("TLS key file"),
                "{args:?}: {found:?}"
            );
        }
        chmod(&key, 0o600);
        assert!(exposed(&["--certfile", s(&key)]).is_empty());
    }

    #[test]
    fn user_alone_means_its_own_group() {
        // root exists everywhere, its primary group is gid 0
        let root_group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(0))
            .expect("group lookup")
            .expect("gid 0")
            .name;
        let c = run(&["--user", "root"]);
        assert_eq!((c.user.as_str(), c.group.clone()), ("root", root_group));
        let c = run(&["--user", "root", "--group", "nogroup"]);
        assert_eq!(c.group, "nogroup");
        let c = run(&[]);
        assert_eq!(
            (c.user.as_str(), c.group.as_str()),
            (DEFAULT_ACCOUNT, DEFAULT_ACCOUNT)
        );
        // an unknown user keeps the default group; the start names the missing account
        let c = run(&["--user", "no-such-user-here"]);
        assert_eq!(c.group, DEFAULT_ACCOUNT);
    }

    #[test]
    fn an_empty_secret_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        for text in ["", "\n", "\r\n"] {
            let f = write(dir.path(), "secret", text);
            let e = err(&["--secret_file", s(&f)]).to_string();
            assert!(
                e.contains("secret_file") && e.contains("is empty"),
                "{text:?}: {e}"
            );
            let conf = write(
                dir.path(),
                "c.toml",
                &format!("secret_file = \"{}\"\n", f.display()),
            );
            let e = err(&["--config", s(&conf)]).to_string();
            assert!(e.contains("is empty"), "{text:?} from the file: {e}");
        }
        // A secret of spaces is a secret.
        let f = write(dir.path(), "secret", " \n");
        assert_eq!(run(&["--secret_file", s(&f)]).secret, " ");
    }

    #[test]
    fn write_config_makes_a_file_with_the_secret_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        // an existing file with the secret is tightened
        let path = write(dir.path(), "out.toml", "old contents that are longer\n");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        write_config("a = 1\n", Some(&path), true).expect("write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "a = 1\n");
        assert_eq!(mode(&path), 0o600);
        // a new one is made private
        let new = dir.path().join("new.toml");
        write_config("a = 1\n", Some(&new), true).expect("write");
        assert_eq!(mode(&new), 0o600);
        // without the secret an existing file keeps its mode
        let open = write(dir.path(), "open.toml", "x\n");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o640)).expect("chmod");
        write_config("b = 2\n", Some(&open), false).expect("write");
        assert_eq!(fs::read_to_string(&open).expect("read"), "b = 2\n");
        assert_eq!(mode(&open), 0o640);
    }

    #[test]
    fn only_a_secret_given_inline_makes_the_saved_file_private() {
        let private = |args: &[&str]| match parse_args_with(argv(args), 4, &no_env, &hosts) {
            Ok(Command::SaveConfig { private, .. }) => private,
            other => panic!("unexpected {other:?}"),
        };
        assert!(private(&["--secret", "abc", "--save_config"]));
        assert!(!private(&["--save_config"]));
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(dir.path(), "secret", "abc\n");
        assert!(!private(&["--secret_file", s(&file), "--save_config"]));
    }

    /// Saves with `args`, reads the result back with `--config`, and checks that the same
    /// configuration comes out.
    fn assert_round_trip(args: &[&str], cpus: usize, env: &dyn Fn(&str) -> Option<String>) {
        let original = try_run_with(args, cpus, env).expect("valid original");
        let mut save_args = args.to_vec();
        save_args.push("--save_config");
        let toml = match parse_args_with(argv(&save_args), cpus, env, &hosts) {
            Ok(Command::SaveConfig {
                toml, path: None, ..
            }) => toml,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(toml, original.to_toml());
        let dir = tempfile::tempdir().expect("tempdir");
        let saved = write(dir.path(), "saved.toml", &toml);
        let mut reread = try_run_with(&["--config", s(&saved)], cpus, env)
            .unwrap_or_else(|e| panic!("saved file refused: {e}\n{toml}"));
        assert_eq!(reread.config_file.as_deref(), Some(saved.as_path()));
        reread.config_file = original.config_file.clone();
        // Where the secret came from differs by design (now the file, or its secret_file).
        reread.secret_source = original.secret_source;
        assert_eq!(reread, original, "\n{toml}");
        // Saving again gives the same text.
        assert_eq!(reread.to_toml(), toml);
    }

    #[test]
    fn save_config_round_trips() {
        assert_round_trip(&[], 4, &no_env);
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = write(dir.path(), "cert.pem", "CERT");
        let key = write(dir.path(), "key.pem", "KEY");
        let secret = write(dir.path(), "secret", "pw\n");
        assert_round_trip(
            &[
                "-d",
                "--clean",
                "-c",
                "-1",
                "-i",
                "10.0.0.1",
                "-i",
                "fe80::1",
                "-i",
                "dual.test",
                "--ext_ip_addr",
                "1.2.3.4",
                "-p",
                "9701",
                "--name",
                "node \"one\"",
                "--secret_file",
                s(&secret),
                "--dest_path_prefix",
                "relative/prefix",
                "--state_dir",
                "/var/lib/dispynode",
                "--scheduler_node",
                "sched",
                "--scheduler_port",
                "9700",
                "--certfile",
                s(&cert),
                "--keyfile",
                s(&key),
                "--max_file_size",
                "1536",
                "--zombie_interval",
                "0",
                "--msg_timeout",
                "0.1",
                "--service_start",
                "17:00",
                "--service_stop",
                "6:00",
                "--service_end",
                "8:00",
                "--serve",
                "5",
                "--python",
                "/opt/py/bin/python",
                "--user",
                "u",
                "--group",
                "g",
                "--job_memory_max",
                "16777215t",
                "--job_pids_max",
                "100",
                "--job_cpu_max",
                "250",
            ],
            4,
            &no_env,
        );
        assert_round_trip(&["-s", "with ' and \" and \\ and \n"], 1, &no_env);
        assert_round_trip(&["--max_file_size", "18446744073709551615"], 1, &no_env);
        // The secret from a systemd credential is saved as the credential's path, not copied.
        let cred_dir = s(dir.path()).to_string();
        write(dir.path(), CREDENTIAL_NAME, "cred\n");
        let env = move |k: &str| (k == "CREDENTIALS_DIRECTORY").then(|| cred_dir.clone());
        assert_round_trip(&[], 2, &env);
        let toml = try_run_with(&[], 2, &env).expect("valid").to_toml();
        assert!(!toml.contains("cred\""), "{toml}");
    }

    #[test]
    fn saved_keys_are_exactly_the_file_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = write(dir.path(), "cert.pem", "CERT");
        let c = run(&[
            "-c",
            "1",
            "--name",
            "given",
            "--state_dir",
            "/var/lib/dispynode/state",
            "--scheduler_node",
            "x",
            "--certfile",
            s(&cert),
            "--keyfile",
            s(&cert),
            "--service_start",
            "1:00",
            "--service_stop",
            "2:00",
            "--service_end",
            "3:00",
            "--job_memory_max",
            "1m",
            "--job_pids_max",
            "9",
            "--job_cpu_max",
            "10",
        ]);
        let table: HashMap<String, toml::Value> =
            toml::from_str(&c.to_toml()).expect("saved config is TOML");
        let mut keys: Vec<&str> = table.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let cmd = command();
        let mut options: Vec<&str> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| !["config", "save_config", "help", "version", "secret_file"].contains(l))
            .collect();
        options.sort_unstable();
        assert_eq!(keys, options);
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let c = run(&["-s", "hunter2"]);
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    proptest::proptest! {
        #[test]
        fn size_format_parse_round_trip(n: u64) {
            proptest::prop_assert_eq!(parse_size(&format_size(n)), Ok(n));
        }

        #[test]
        fn size_with_suffix(n in 0u64..(1 << 24), suffix in "[kKmMgGtT]?") {
            let shift = match suffix.to_ascii_lowercase().as_str() {
                "k" => 10, "m" => 20, "g" => 30, "t" => 40, _ => 0,
            };
            proptest::prop_assert_eq!(parse_size(&format!("{n}{suffix}")), Ok(n << shift));
        }

        #[test]
        fn time_of_day_round_trip(hour in 0u8..24, minute in 0u8..60) {
            let t = TimeOfDay { hour, minute };
            proptest::prop_assert_eq!(t.to_string().parse::<TimeOfDay>(), Ok(t));
        }

        #[test]
        fn time_of_day_parse_never_panics(text in "\\PC{0,8}") {
            let _ = text.parse::<TimeOfDay>();
        }

        #[test]
        fn msg_timeout_survives_saving(secs in 1e-9f64..=86_400.0) {
            if let Ok(d) = msg_timeout(secs) {
                proptest::prop_assert_eq!(msg_timeout(d.as_secs_f64()), Ok(d));
            }
        }

        /// What `--save_config` writes for an interval reads back as the same interval.
        #[test]
        fn zombie_interval_survives_saving(minutes in 1.0f64..=MAX_ZOMBIE_MINUTES) {
            let d = zombie_interval(minutes).expect("in range");
            let saved = match SavedMinutes::new(d) {
                SavedMinutes::Whole(m) => m as f64,
                SavedMinutes::Fraction(m) => m,
            };
            proptest::prop_assert_eq!(zombie_interval(saved), Ok(d));
        }
    }
}
