//! The Landlock ruleset of a job, and the start-up probe the daemon logs.
//!
//! A job may read and execute the system (a fixed list of directories, plus the paths the
//! daemon adds such as the Python installation), and read, write and execute only beneath its
//! computation's directory (its private tmp lives there too). It cannot reach other
//! computations' directories, the state directory, the configuration or the key files: the
//! daemon lists those as `deny`, and a granted directory that contains a denied path is granted
//! entry by entry instead, leaving the denied one out (Landlock is an allow-list: a rule covers
//! everything beneath its directory).
//!
//! Where the kernel has them (ABI 6, Linux 6.12), signal and abstract-unix-socket scoping keep
//! a job from signalling or connecting to anything outside its Landlock domain: the daemon,
//! other computations. Landlock restricts the calling thread only (before ABI 8), which is why
//! it is applied in the single-threaded jail helper, as the last step before `exec`.
//!
//! We pin [`TARGET_ABI`] (tested on a kernel with ABI 7) and use best-effort compatibility:
//! on older kernels the rights they lack are dropped and the result is "partially enforced";
//! [`LandlockPolicy::required`] turns anything short of full enforcement into an error.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, BitFlags, Erratum, PathBeneath, PathFd, RestrictionStatus, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetError, RulesetStatus, Scope, ABI,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The Landlock ABI whose rights we request: fs rights up to `IoctlDev` (ABI 5) and scoping
/// (ABI 6). ABI 7 only adds audit-logging flags; network rights (ABI 4) are deliberately not
/// handled (jobs talk to their client).
pub const TARGET_ABI: ABI = ABI::V6;
const TARGET_ABI_NUM: i32 = 6;

/// Read-and-execute by default: the system, not `/` (that would include `/var/lib`, `/home`,
/// `/tmp`, the computations' directories). Missing entries are skipped.
pub const SYSTEM_READ_PATHS: &[&str] = &[
    "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc", "/opt", "/proc",
    "/sys", "/dev",
];

/// Device files every job may also write (shell redirections, `open('/dev/null', 'w')`).
pub const DEVICE_RW_FILES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full"];

/// Files in the system directories that are often symlinks to elsewhere (systemd-resolved's
/// `/run/systemd/resolve/stub-resolv.conf`): their targets are granted read-only too, so name
/// resolution keeps working. Landlock checks the resolved file, not the link.
pub const SYSTEM_READ_LINKS: &[&str] = &["/etc/resolv.conf", "/etc/hosts", "/etc/localtime"];

/// What one job may touch. Serialised inside [`super::JailSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LandlockPolicy {
    /// Read and execute beneath these (directories) or these files. Missing paths are skipped.
    pub read_exec: Vec<PathBuf>,
    /// Every right beneath these (the computation's directory; device files). Must exist.
    pub read_write: Vec<PathBuf>,
    /// Never reachable through `read_exec`, even when beneath a granted directory.
    pub deny: Vec<PathBuf>,
    /// Refuse to run the job unless the ruleset is fully enforced (scoping included).
    pub required: bool,
}

impl LandlockPolicy {
    /// The standard policy of a job of the computation in `compdir`: read/execute
    /// [`SYSTEM_READ_PATHS`], the targets of [`SYSTEM_READ_LINKS`] and `extra_read` (the Python
    /// installation: `sys.prefix`, `sys.base_prefix`); read/write `compdir` and
    /// [`DEVICE_RW_FILES`]; `deny` (give `dest_path_prefix`, the state directory, the
    /// configuration directory and the key files) never reachable through the read rules.
    pub fn for_computation(
        compdir: &Path,
        extra_read: impl IntoIterator<Item = PathBuf>,
        deny: impl IntoIterator<Item = PathBuf>,
        required: bool,
    ) -> LandlockPolicy {
        let mut read_exec: Vec<PathBuf> = SYSTEM_READ_PATHS.iter().map(PathBuf::from).collect();
        read_exec.extend(SYSTEM_READ_LINKS.iter().map(PathBuf::from));
        read_exec.extend(extra_read);
        let mut read_write = vec![compdir.to_path_buf()];
        read_write.extend(DEVICE_RW_FILES.iter().map(PathBuf::from));
        LandlockPolicy {
            read_exec,
            read_write,
            deny: deny.into_iter().collect(),
            required,
        }
    }
}

#[derive(Debug, Error)]
pub enum LandlockError {
    #[error("building the ruleset: {0}")]
    Ruleset(#[from] RulesetError),
    #[error("cannot open {path} for a rule: {source}")]
    Path {
        path: PathBuf,
        source: landlock::PathFdError,
    },
    #[error("inconsistent policy: read-write path {rw} contains denied path {deny}")]
    Policy { rw: PathBuf, deny: PathBuf },
    #[error("landlock is required but the ruleset is {status} ({landlock})")]
    NotFullyEnforced { status: String, landlock: String },
    #[error("enforcing the ruleset: {0}")]
    Restrict(#[source] std::io::Error),
}

/// Builds the ruleset of `policy` and restricts the calling thread (and what it `exec`s).
/// Also sets no_new_privs. Returns the achieved status; with `policy.required`, anything short
/// of full enforcement is an error.
pub fn restrict_self(policy: &LandlockPolicy) -> Result<RestrictionStatus, LandlockError> {
    let ruleset = build(policy)?;
    let status = ruleset.restrict_self()?;
    if policy.required && status.ruleset != RulesetStatus::FullyEnforced {
        return Err(LandlockError::NotFullyEnforced {
            status: format!("{:?}", status.ruleset),
            landlock: format!("{:?}", status.landlock),
        });
    }
    Ok(status)
}

/// The ruleset of `policy` as a descriptor, for the spawner: built once per policy (resolving
/// and opening its paths costs far more than enforcing it), enforced by each child with
/// [`restrict_self_with`]. None when the kernel has no Landlock: like [`restrict_self`]'s
/// best effort, nothing to enforce. Not for a `required` policy (its status is checked where
/// it is enforced, by [`restrict_self`]).
pub fn build_descriptor(
    policy: &LandlockPolicy,
) -> Result<Option<std::os::fd::OwnedFd>, LandlockError> {
    Ok(build(policy)?.into())
}

/// Enforces a ruleset made by [`build_descriptor`] on the calling thread and what it `exec`s.
/// The caller has set no_new_privs (the kernel requires it of an unprivileged thread).
pub fn restrict_self_with(ruleset: std::os::fd::RawFd) -> std::io::Result<()> {
    // SAFETY: landlock_restrict_self reads no memory of ours; `ruleset` is a Landlock ruleset
    // descriptor the caller keeps open for the call.
    let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn build(policy: &LandlockPolicy) -> Result<RulesetCreated, LandlockError> {
    let abi = TARGET_ABI;
    let denies: Vec<PathBuf> = policy.deny.iter().map(|d| resolve(d)).collect();
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .scope(Scope::from_all(abi))?
        .create()?;
    for path in &policy.read_write {
        let canon = resolve(path);
        if let Some(deny) = denies.iter().find(|d| d.starts_with(&canon)) {
            return Err(LandlockError::Policy {
                rw: path.clone(),
                deny: deny.clone(),
            });
        }
        ruleset = ruleset.add_rule(rule(&canon, AccessFs::from_all(abi))?)?;
    }
    let mut grants = Vec::new();
    for path in &policy.read_exec {
        expand_grant(path, &denies, &mut grants, 0);
    }
    grants.sort();
    grants.dedup();
    for path in &grants {
        // A path can vanish between the listing and here: skip it like a missing one.
        match rule(path, AccessFs::from_read(abi)) {
            Ok(r) => ruleset = ruleset.add_rule(r)?,
            Err(_) if !path.exists() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(ruleset)
}

/// A rule for `path`, with the directory-only rights removed when it is not a directory (the
/// kernel rejects those on files).
fn rule(path: &Path, access: BitFlags<AccessFs>) -> Result<PathBeneath<PathFd>, LandlockError> {
    let fd = PathFd::new(path).map_err(|source| LandlockError::Path {
        path: path.to_path_buf(),
        source,
    })?;
    let access = if fs::metadata(path).map(|m| m.is_dir()).unwrap_or(true) {
        access
    } else {
        access & AccessFs::from_file(TARGET_ABI)
    };
    Ok(PathBeneath::new(fd, access))
}

/// The canonical form of `path`; for a path that does not exist (yet), the canonical form of
/// its longest existing ancestor with the rest appended, so a denied directory created later
/// is still recognised.
pub fn resolve(path: &Path) -> PathBuf {
    if let Ok(c) = fs::canonicalize(path) {
        return c;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if parent != path => resolve(parent).join(name),
        _ => path.to_path_buf(),
    }
}

/// Adds to `out` what granting `grant` means once `denies` (canonical) are taken out: nothing
/// if `grant` is (beneath) a denied path; `grant` itself if no denied path is beneath it;
/// otherwise each of its entries, recursively. Missing paths are skipped; symlinks are granted
/// as their targets (after the same check).
pub fn expand_grant(grant: &Path, denies: &[PathBuf], out: &mut Vec<PathBuf>, depth: usize) {
    let Ok(g) = fs::canonicalize(grant) else {
        return;
    };
    if denies.iter().any(|d| g.starts_with(d)) {
        return;
    }
    if !denies.iter().any(|d| d.starts_with(&g)) {
        out.push(g);
        return;
    }
    if depth > 64 || !g.is_dir() {
        return;
    }
    if let Ok(entries) = fs::read_dir(&g) {
        for entry in entries.flatten() {
            expand_grant(&entry.path(), denies, out, depth + 1);
        }
    }
}

/// Landlock on the running kernel, as the daemon logs it once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelLandlock {
    /// The kernel's Landlock ABI version.
    Available(i32),
    /// Built in but not enabled at boot (`lsm=`): EOPNOTSUPP.
    NotEnabled,
    /// Not built into the kernel: ENOSYS.
    NotImplemented,
}

/// What [`probe`] found, and so what every job's ruleset will achieve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LandlockReport {
    pub kernel: KernelLandlock,
    /// Errata the kernel reports as fixed (bits of [`Erratum`]).
    pub errata_fixed: u32,
}

/// How much of our ruleset the kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    Full,
    Partial,
    None,
}

impl LandlockReport {
    /// The ABI our rulesets effectively use: the kernel's, capped at [`TARGET_ABI`].
    pub fn effective_abi(&self) -> i32 {
        match self.kernel {
            KernelLandlock::Available(v) => v.min(TARGET_ABI_NUM),
            _ => 0,
        }
    }

    /// What `restrict_self` will report for a job (best effort, [`TARGET_ABI`]).
    pub fn enforcement(&self) -> Enforcement {
        match self.effective_abi() {
            0 => Enforcement::None,
            TARGET_ABI_NUM => Enforcement::Full,
            _ => Enforcement::Partial,
        }
    }

    /// Whether a job may run under `required` landlock.
    pub fn satisfies_required(&self) -> bool {
        self.enforcement() == Enforcement::Full
    }

    /// Signal and abstract-unix-socket scoping (ABI 6).
    pub fn scoping(&self) -> bool {
        self.effective_abi() >= 6
    }

    fn fs_summary(&self) -> &'static str {
        match self.effective_abi() {
            0 => "none",
            1 => {
                "basic (ABI 1: no cross-directory rename/link, no truncate or device-ioctl control)"
            }
            2 => "partial (no truncate or device-ioctl control)",
            3 | 4 => "partial (no device-ioctl control)",
            _ => "full",
        }
    }
}

impl fmt::Display for LandlockReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kernel {
            KernelLandlock::NotEnabled => {
                return write!(
                f,
                "landlock unavailable: built in but not enabled at boot (add landlock to lsm=); \
                     jobs are not confined to their directory"
            )
            }
            KernelLandlock::NotImplemented => {
                return write!(
                    f,
                    "landlock unavailable: not in this kernel (needs Linux 5.13+); \
                     jobs are not confined to their directory"
                )
            }
            KernelLandlock::Available(v) => {
                write!(f, "landlock ABI {v} (we use {TARGET_ABI_NUM})")?
            }
        }
        let scoping = if self.scoping() {
            "signal+abstract-unix-socket"
        } else {
            "unavailable (kernel < 6.12: a job can signal processes of its own uid)"
        };
        let enforcement = match self.enforcement() {
            Enforcement::Full => "fully enforced",
            Enforcement::Partial => "partially enforced",
            Enforcement::None => "not enforced",
        };
        write!(
            f,
            ": fs={}, scoping={scoping}; jobs' rulesets will be {enforcement}",
            self.fs_summary()
        )
    }
}

/// Asks the kernel for its Landlock ABI (`landlock_create_ruleset(NULL, 0,
/// LANDLOCK_CREATE_RULESET_VERSION)`), without restricting anything.
pub fn probe() -> LandlockReport {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a NULL attribute pointer, size 0 and the VERSION flag, the syscall only
    // returns a number (or -1 with errno); it reads and writes no memory of ours.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    let kernel = if v >= 0 {
        KernelLandlock::Available(i32::try_from(v).unwrap_or(i32::MAX))
    } else {
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EOPNOTSUPP) => KernelLandlock::NotEnabled,
            _ => KernelLandlock::NotImplemented,
        }
    };
    LandlockReport {
        kernel,
        errata_fixed: Erratum::current().bits(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_leaves_denied_paths_out() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        for d in [
            "etc/dispynode",
            "etc/ssl/private",
            "etc/ssl/certs",
            "etc/apt",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("etc/hostname"), "h").unwrap();
        fs::write(root.join("etc/ssl/private/node.key"), "k").unwrap();
        fs::write(root.join("etc/ssl/openssl.cnf"), "c").unwrap();
        let denies = vec![
            resolve(&root.join("etc/dispynode")),
            resolve(&root.join("etc/ssl/private/node.key")),
            resolve(&root.join("etc/not-yet-created")),
        ];
        let mut out = Vec::new();
        expand_grant(&root.join("etc"), &denies, &mut out, 0);
        out.sort();
        let rel: Vec<_> = out
            .iter()
            .map(|p| p.strip_prefix(&root).unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            rel,
            [
                "etc/apt",
                "etc/hostname",
                "etc/ssl/certs",
                "etc/ssl/openssl.cnf"
            ]
        );
        // Denied itself, or beneath a denied path: nothing.
        let mut out = Vec::new();
        expand_grant(&root.join("etc/dispynode"), &denies, &mut out, 0);
        assert!(out.is_empty());
        // No denied path beneath: the directory as a whole; missing: nothing.
        let mut out = Vec::new();
        expand_grant(&root.join("etc/apt"), &denies, &mut out, 0);
        expand_grant(&root.join("missing"), &denies, &mut out, 0);
        assert_eq!(out, [root.join("etc/apt")]);
    }

    #[test]
    fn symlinks_are_granted_as_their_checked_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("state")).unwrap();
        fs::create_dir_all(root.join("run")).unwrap();
        fs::write(root.join("run/resolv.conf"), "nameserver 127.0.0.53").unwrap();
        std::os::unix::fs::symlink(root.join("state"), root.join("etc/sneaky")).unwrap();
        std::os::unix::fs::symlink(root.join("run/resolv.conf"), root.join("etc/resolv.conf"))
            .unwrap();
        fs::create_dir_all(root.join("etc/dispynode")).unwrap();
        let denies = vec![
            resolve(&root.join("state")),
            resolve(&root.join("etc/dispynode")),
        ];
        let mut out = Vec::new();
        expand_grant(&root.join("etc"), &denies, &mut out, 0);
        assert_eq!(out, [root.join("run/resolv.conf")]);
    }

    #[test]
    fn resolve_keeps_missing_tails() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        assert_eq!(resolve(&tmp.path().join("a/b")), root.join("a/b"));
    }

    #[test]
    fn report_wording() {
        let r = |k| LandlockReport {
            kernel: k,
            errata_fixed: 0,
        };
        let full = r(KernelLandlock::Available(7));
        assert_eq!(full.effective_abi(), 6);
        assert_eq!(full.enforcement(), Enforcement::Full);
        assert!(full.satisfies_required());
        assert_eq!(
            full.to_string(),
            "landlock ABI 7 (we use 6): fs=full, scoping=signal+abstract-unix-socket; \
             jobs' rulesets will be fully enforced"
        );
        let old = r(KernelLandlock::Available(3));
        assert_eq!(old.enforcement(), Enforcement::Partial);
        assert!(!old.scoping() && !old.satisfies_required());
        assert!(old.to_string().contains("partially enforced"));
        assert_eq!(
            r(KernelLandlock::NotEnabled).enforcement(),
            Enforcement::None
        );
        assert!(r(KernelLandlock::NotImplemented)
            .to_string()
            .starts_with("landlock unavailable"));
    }

    #[test]
    fn probe_matches_this_kernel() {
        // Not restricting: just the version query. On the build machines this is ABI 7.
        let report = probe();
        if let KernelLandlock::Available(v) = report.kernel {
            assert!(v >= 1);
        }
    }

    #[test]
    fn policy_for_a_computation() {
        let p = LandlockPolicy::for_computation(
            Path::new("/var/tmp/dispy/node/c1"),
            [PathBuf::from("/root/.pyenv/versions/3.11.7")],
            [
                PathBuf::from("/var/tmp/dispy/node"),
                PathBuf::from("/var/lib/dispynode"),
            ],
            false,
        );
        assert!(p.read_exec.contains(&PathBuf::from("/usr")));
        assert!(!p
            .read_exec
            .iter()
            .any(|x| x == Path::new("/tmp") || x == Path::new("/")));
        assert!(p
            .read_exec
            .contains(&PathBuf::from("/root/.pyenv/versions/3.11.7")));
        assert_eq!(p.read_write[0], PathBuf::from("/var/tmp/dispy/node/c1"));
        assert!(p.read_write.contains(&PathBuf::from("/dev/null")));
        assert_eq!(p.deny.len(), 2);
    }
}
