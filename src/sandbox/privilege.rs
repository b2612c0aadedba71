//! Identity and capabilities: the daemon's own privilege drop ([`drop_daemon_privileges`]) and
//! the pieces the jail helper shares with it ([`switch_identity`], [`drop_capabilities`]).
//!
//! Linux keeps credentials per thread. glibc's `setresuid`/`setresgid`/`setgroups` (which nix
//! calls) broadcast the change to every thread, but capabilities (`capset`, `PR_CAPBSET_DROP`,
//! ambient) change only the calling thread. So the daemon must drop privileges while it is still
//! single-threaded: in `main`, after binding its sockets and before building the tokio runtime.
//! [`drop_daemon_privileges`] refuses to run in a multi-threaded process.
//!
//! Order: `setgroups([])` → bounding set cleared (needs `CAP_SETPCAP`, so before the uid
//! change) → `setresgid` → `setresuid` (the kernel then clears the permitted, effective and
//! ambient sets) → every set cleared explicitly → `PR_SET_NO_NEW_PRIVS` → verified by reading
//! `/proc/self/status`.
//!
//! **no_new_privs in the daemon: yes.** The daemon never gains privileges through `exec` (the jail
//! helper is our own binary and only ever drops), the flag is inherited by the helper and the
//! jobs (which set it again anyway), and it closes setuid/file-capability binaries to everything
//! below the daemon even on kernels without Landlock. The systemd unit sets
//! `NoNewPrivileges=yes` too.

use std::fmt;
use std::io;

use caps::{CapSet, Capability};
use nix::unistd::{self, Gid, Group, Uid, User};
use thiserror::Error;

/// The fields of `/proc/<pid>/status` that tell who a process is and what it may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcStatus {
    /// Real, effective, saved and file-system uid.
    pub uid: [u32; 4],
    /// Real, effective, saved and file-system gid.
    pub gid: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    pub threads: u32,
}

impl ProcStatus {
    /// Parses the text of a `/proc/<pid>/status` file.
    pub fn parse(text: &str) -> Option<ProcStatus> {
        fn ids(v: &str) -> Option<[u32; 4]> {
            let mut it = v.split_whitespace().map(|x| x.parse::<u32>());
            let mut out = [0; 4];
            for slot in &mut out {
                *slot = it.next()?.ok()?;
            }
            Some(out)
        }
        fn hex(v: &str) -> Option<u64> {
            u64::from_str_radix(v.trim(), 16).ok()
        }
        let mut st = ProcStatus::default();
        let mut seen = 0u32;
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key {
                "Uid" => st.uid = ids(value)?,
                "Gid" => st.gid = ids(value)?,
                "Groups" => {
                    st.groups = value
                        .split_whitespace()
                        .map(|g| g.parse().ok())
                        .collect::<Option<_>>()?
                }
                "CapInh" => st.cap_inh = hex(value)?,
                "CapPrm" => st.cap_prm = hex(value)?,
                "CapEff" => st.cap_eff = hex(value)?,
                "CapBnd" => st.cap_bnd = hex(value)?,
                "CapAmb" => st.cap_amb = hex(value)?,
                "NoNewPrivs" => st.no_new_privs = value == "1",
                "Threads" => st.threads = value.parse().ok()?,
                _ => continue,
            }
            seen += 1;
        }
        // Uid, Gid, Groups, five capability sets, NoNewPrivs, Threads.
        (seen >= 10).then_some(st)
    }

    /// Reads `/proc/self/status` (the process; its main thread's credentials).
    pub fn read_self() -> io::Result<ProcStatus> {
        ProcStatus::read("/proc/self/status")
    }

    /// Reads `/proc/thread-self/status`: the calling thread's credentials and capabilities,
    /// which are per thread (they differ from the main thread's after a drop in another thread).
    pub fn read_thread() -> io::Result<ProcStatus> {
        ProcStatus::read("/proc/thread-self/status")
    }

    fn read(path: &str) -> io::Result<ProcStatus> {
        let text = std::fs::read_to_string(path)?;
        ProcStatus::parse(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected format of /proc/self/status",
            )
        })
    }

    /// True when no capability set holds anything (the bounding set only when `bounding`).
    pub fn no_capabilities(&self, bounding: bool) -> bool {
        self.cap_inh == 0
            && self.cap_prm == 0
            && self.cap_eff == 0
            && self.cap_amb == 0
            && (!bounding || self.cap_bnd == 0)
    }
}

#[derive(Debug, Error)]
pub enum PrivilegeError {
    #[error("cannot read /proc/self/status: {0}")]
    Status(#[source] io::Error),
    #[error(
        "the process has {0} threads: privileges must be dropped before any thread starts \
         (capabilities are per thread)"
    )]
    MultiThreaded(u32),
    #[error("cannot look up {what} {name:?}: {source}")]
    Lookup {
        what: &'static str,
        name: String,
        source: nix::Error,
    },
    #[error("no such user: {0:?}")]
    UnknownUser(String),
    #[error("no such group: {0:?}")]
    UnknownGroup(String),
    #[error("refusing to run as root: user {user:?} / group {group:?} resolve to uid/gid 0")]
    TargetIsRoot { user: String, group: String },
    #[error("setgroups([]): {0}")]
    SetGroups(#[source] nix::Error),
    #[error("cannot clear the capability bounding set: {0}")]
    Bounding(String),
    #[error("setresgid({0}): {1}")]
    SetResGid(u32, #[source] nix::Error),
    #[error("setresuid({0}): {1}")]
    SetResUid(u32, #[source] nix::Error),
    #[error("cannot clear the {set} capability set: {reason}")]
    Capabilities { set: &'static str, reason: String },
    #[error("PR_SET_NO_NEW_PRIVS: {0}")]
    NoNewPrivs(#[source] nix::Error),
    #[error("privilege drop not effective: {0}")]
    Verify(String),
}

/// What [`drop_daemon_privileges`] did, for one log line at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// We were root and are now `user`/`group`, with no supplementary groups and no capabilities.
    Switched {
        user: String,
        uid: u32,
        group: String,
        gid: u32,
        bounding_cleared: bool,
    },
    /// We were not root: identity unchanged, capabilities we held are cleared.
    NotRoot {
        uid: u32,
        gid: u32,
        bounding_cleared: bool,
    },
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bounding = |cleared: &bool| {
            if *cleared {
                "bounding set empty"
            } else {
                "bounding set left as inherited (no CAP_SETPCAP)"
            }
        };
        match self {
            Dropped::Switched {
                user,
                uid,
                group,
                gid,
                bounding_cleared,
            } => write!(
                f,
                "dropped privileges to user {user} (uid {uid}), group {group} (gid {gid}): \
                 no supplementary groups, no capabilities ({}), no_new_privs",
                bounding(bounding_cleared)
            ),
            Dropped::NotRoot {
                uid,
                gid,
                bounding_cleared,
            } => write!(
                f,
                "not root: running as uid {uid} (gid {gid}); no capabilities ({}), no_new_privs",
                bounding(bounding_cleared)
            ),
        }
    }
}

/// Drops the daemon's privileges for good. Call it in `main`, after binding the listening
/// sockets (so they can be privileged ports) and before starting any thread (tokio runtime,
/// logging threads).
///
/// As root: looks up `user` and `group`, refuses uid/gid 0, then `setgroups([])`, clears the
/// bounding set, `setresgid`, `setresuid`, clears every capability set (including ambient) and
/// sets no_new_privs; verifies all of it in `/proc/thread-self/status`.
/// Not root: identity unchanged; clears whatever capabilities we hold and sets no_new_privs.
pub fn drop_daemon_privileges(user: &str, group: &str) -> Result<Dropped, PrivilegeError> {
    let status = ProcStatus::read_self().map_err(PrivilegeError::Status)?;
    if status.threads != 1 {
        return Err(PrivilegeError::MultiThreaded(status.threads));
    }
    if !unistd::geteuid().is_root() {
        let bounding_cleared = drop_capabilities()?;
        nix::sys::prctl::set_no_new_privs().map_err(PrivilegeError::NoNewPrivs)?;
        return Ok(Dropped::NotRoot {
            uid: unistd::getuid().as_raw(),
            gid: unistd::getgid().as_raw(),
            bounding_cleared,
        });
    }
    let uid = User::from_name(user)
        .map_err(|source| PrivilegeError::Lookup {
            what: "user",
            name: user.to_owned(),
            source,
        })?
        .ok_or_else(|| PrivilegeError::UnknownUser(user.to_owned()))?
        .uid;
    let gid = Group::from_name(group)
        .map_err(|source| PrivilegeError::Lookup {
            what: "group",
            name: group.to_owned(),
            source,
        })?
        .ok_or_else(|| PrivilegeError::UnknownGroup(group.to_owned()))?
        .gid;
    if uid.is_root() || gid.as_raw() == 0 {
        return Err(PrivilegeError::TargetIsRoot {
            user: user.to_owned(),
            group: group.to_owned(),
        });
    }
    let bounding_cleared = switch_identity(uid, gid)?;
    drop_capabilities()?;
    nix::sys::prctl::set_no_new_privs().map_err(PrivilegeError::NoNewPrivs)?;

    let st = ProcStatus::read_thread().map_err(PrivilegeError::Status)?;
    let (u, g) = (uid.as_raw(), gid.as_raw());
    if st.uid != [u; 4] || st.gid != [g; 4] {
        return Err(PrivilegeError::Verify(format!(
            "uids {:?}, gids {:?}, expected {u}/{g}",
            st.uid, st.gid
        )));
    }
    if !st.groups.is_empty() {
        return Err(PrivilegeError::Verify(format!(
            "supplementary groups left: {:?}",
            st.groups
        )));
    }
    if !st.no_capabilities(bounding_cleared) || !st.no_new_privs {
        return Err(PrivilegeError::Verify(format!(
            "CapEff {:016x} CapPrm {:016x} CapInh {:016x} CapAmb {:016x} CapBnd {:016x} \
             NoNewPrivs {}",
            st.cap_eff, st.cap_prm, st.cap_inh, st.cap_amb, st.cap_bnd, st.no_new_privs
        )));
    }
    Ok(Dropped::Switched {
        user: user.to_owned(),
        uid: u,
        group: group.to_owned(),
        gid: g,
        bounding_cleared,
    })
}

/// Becomes `uid`/`gid` for good: `setgroups([])`, bounding set cleared while we still hold
/// `CAP_SETPCAP`, `setresgid`, `setresuid`. Returns whether the bounding set is now empty.
///
/// Changing the effective uid also clears `PR_SET_PDEATHSIG` (see prctl(2)): a caller that
/// relies on it must set it again afterwards.
pub fn switch_identity(uid: Uid, gid: Gid) -> Result<bool, PrivilegeError> {
    unistd::setgroups(&[]).map_err(PrivilegeError::SetGroups)?;
    let bounding_cleared =
        drop_bounding_set(&ProcStatus::read_thread().map_err(PrivilegeError::Status)?)?;
    unistd::setresgid(gid, gid, gid).map_err(|e| PrivilegeError::SetResGid(gid.as_raw(), e))?;
    unistd::setresuid(uid, uid, uid).map_err(|e| PrivilegeError::SetResUid(uid.as_raw(), e))?;
    Ok(bounding_cleared)
}

/// Clears the bounding set when we can (`CAP_SETPCAP` in the effective set). Without it the
/// set stays as inherited; that is harmless once the other sets are empty and no_new_privs is
/// set (nothing can be regained through exec). Returns whether the set is now empty.
/// Clears the bounding set when this thread may (`CAP_SETPCAP` in `st`'s effective set).
/// Returns whether it is empty now.
fn drop_bounding_set(st: &ProcStatus) -> Result<bool, PrivilegeError> {
    if st.cap_bnd == 0 {
        return Ok(true);
    }
    if st.cap_eff & (1 << Capability::CAP_SETPCAP.index()) == 0 {
        return Ok(false);
    }
    caps::clear(None, CapSet::Bounding).map_err(|e| PrivilegeError::Bounding(e.to_string()))?;
    Ok(true)
}

/// Clears every capability set of the calling thread: bounding (when possible, see
/// [`drop_bounding_set`]), ambient, effective, inheritable, permitted; verifies it in
/// `/proc/thread-self/status`. Returns whether the bounding set is empty.
pub fn drop_capabilities() -> Result<bool, PrivilegeError> {
    // One read of the status tells what there is to clear: a process that holds no capability
    // (the daemon's user, so every job) then makes no other call here (this runs per job).
    let before = ProcStatus::read_thread().map_err(PrivilegeError::Status)?;
    let mut changed = false;
    let bounding_cleared = drop_bounding_set(&before)?;
    changed |= bounding_cleared && before.cap_bnd != 0;
    // Only the sets that hold something are touched: under a seccomp filter such as systemd's
    // `SystemCallFilter=~@privileged`, `capset` itself fails, and a process that holds no
    // capability must still get through.
    // Kernels before 4.3 have no ambient set: nothing to clear there.
    if before.cap_amb != 0 && caps::runtime::ambient_set_supported().is_ok() {
        clear_set(CapSet::Ambient, "ambient")?;
        changed = true;
    }
    if before.cap_eff != 0 || before.cap_prm != 0 || before.cap_inh != 0 {
        // Effective before permitted: capset(2) requires effective ⊆ permitted at every step.
        clear_set(CapSet::Effective, "effective")?;
        clear_set(CapSet::Inheritable, "inheritable")?;
        clear_set(CapSet::Permitted, "permitted")?;
        changed = true;
    }
    let st = if changed {
        ProcStatus::read_thread().map_err(PrivilegeError::Status)?
    } else {
        before
    };
    if !st.no_capabilities(bounding_cleared) {
        return Err(PrivilegeError::Verify(format!(
            "capabilities left: CapEff {:016x} CapPrm {:016x} CapInh {:016x} CapAmb {:016x} \
             CapBnd {:016x}",
            st.cap_eff, st.cap_prm, st.cap_inh, st.cap_amb, st.cap_bnd
        )));
    }
    Ok(bounding_cleared)
}

fn clear_set(set: CapSet, name: &'static str) -> Result<(), PrivilegeError> {
    caps::clear(None, set).map_err(|e| PrivilegeError::Capabilities {
        set: name,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Name:\tcat\nUmask:\t0022\nState:\tR (running)\nTgid:\t42\n\
        Uid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nFDSize:\t64\n\
        Groups:\t\nThreads:\t1\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
        CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n\
        NoNewPrivs:\t1\nSeccomp:\t0\n";

    #[test]
    fn parses_proc_status() {
        let st = ProcStatus::parse(SAMPLE).unwrap();
        assert_eq!(st.uid, [65534; 4]);
        assert_eq!(st.gid, [65534; 4]);
        assert!(st.groups.is_empty());
        assert_eq!(st.cap_bnd, 0x1ff_ffff_ffff);
        assert!(st.no_new_privs);
        assert_eq!(st.threads, 1);
        assert!(st.no_capabilities(false));
        assert!(!st.no_capabilities(true));
    }

    #[test]
    fn parses_groups_and_rejects_truncated_status() {
        let text = SAMPLE.replace("Groups:\t\n", "Groups:\t4 24 27 \n");
        assert_eq!(ProcStatus::parse(&text).unwrap().groups, vec![4, 24, 27]);
        assert!(ProcStatus::parse("Name:\tx\nUid:\t0\t0\t0\t0\n").is_none());
        assert!(ProcStatus::parse(&SAMPLE.replace("CapEff:\t0000", "CapEff:\tzz00")).is_none());
    }

    #[test]
    fn reads_own_status() {
        let st = ProcStatus::read_self().unwrap();
        assert_eq!(st.uid[1], unistd::geteuid().as_raw());
        assert!(st.threads >= 1);
    }

    #[test]
    fn refuses_when_multithreaded() {
        // The test harness runs this on its own thread, next to the main thread: the check
        // must fire before anything is changed.
        let handle = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(2)));
        match drop_daemon_privileges("nobody", "nogroup") {
            Err(PrivilegeError::MultiThreaded(n)) => assert!(n >= 2),
            other => panic!("expected MultiThreaded, got {other:?}"),
        }
        assert_eq!(
            unistd::geteuid(),
            Uid::from_raw(ProcStatus::read_self().unwrap().uid[1])
        );
        handle.join().unwrap();
    }
}
