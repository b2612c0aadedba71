//! Files under `dest_path_prefix`. Every path a client names is resolved component by component
//! with `openat(O_NOFOLLOW)` from a directory we opened ourselves, so neither `..`, absolute
//! paths nor a symlink planted by an earlier job can lead outside the prefix.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, utimensat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PathError {
    #[error("path component {0:?} is not allowed")]
    BadComponent(String),
    #[error("paths may have at most {0} components")]
    TooDeep(usize),
    #[error("absolute paths are not allowed: {0:?}")]
    Absolute(String),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Validates one client-supplied path component.
pub fn check_component(c: &str) -> Result<(), PathError> {
    if c.is_empty()
        || c == "."
        || c == ".."
        || c.contains('/')
        || c.contains('\0')
        || c.contains('\\')
    {
        return Err(PathError::BadComponent(c.to_owned()));
    }
    Ok(())
}

/// Splits a client's relative path on '/' (and the sender's separator), refusing absolute
/// paths and `..`; `.` and empty components are dropped as the client means them.
pub fn relative_components(path: &str, sep: &str) -> Result<Vec<String>, PathError> {
    if path.starts_with('/') || (!sep.is_empty() && path.starts_with(sep)) || looks_like_drive(path)
    {
        return Err(PathError::Absolute(path.to_owned()));
    }
    let mut out = Vec::new();
    for c in path.split(|ch: char| ch == '/' || sep.contains(ch)) {
        if c.is_empty() || c == "." {
            continue;
        }
        check_component(c)?;
        out.push(c.to_owned());
        if out.len() > crate::limits::MAX_PATH_COMPONENTS {
            return Err(PathError::TooDeep(crate::limits::MAX_PATH_COMPONENTS));
        }
    }
    Ok(out)
}

/// `C:` style prefixes from Windows clients are absolute too.
fn looks_like_drive(p: &str) -> bool {
    let b = p.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

fn io_err(path: &str) -> impl FnOnce(nix::Error) -> PathError + '_ {
    move |e| PathError::Io {
        path: path.to_owned(),
        source: io::Error::from(e),
    }
}

fn cstr(s: &str) -> Result<CString, PathError> {
    CString::new(s).map_err(|_| PathError::BadComponent(s.to_owned()))
}

/// An open directory under the prefix, from which client paths are resolved.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Opens a trusted directory (the prefix itself, or one we created), refusing symlinks.
    pub fn open(path: &Path) -> Result<Dir, PathError> {
        let shown = path.display().to_string();
        let fd = openat(
            None,
            path,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err(&shown))?;
        // SAFETY: openat returned a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Dir {
            fd,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (and with `create`, makes with `mode`) the subdirectory at `components`, never
    /// following a symlink.
    pub fn subdir(&self, components: &[String], create: Option<Mode>) -> Result<Dir, PathError> {
        let mut cur = Dir {
            fd: self.fd.try_clone().map_err(|e| PathError::Io {
                path: self.path.display().to_string(),
                source: e,
            })?,
            path: self.path.clone(),
        };
        for c in components {
            check_component(c)?;
            let name = cstr(c)?;
            if let Some(mode) = create {
                match mkdirat(Some(cur.fd.as_raw_fd()), name.as_c_str(), mode) {
                    Ok(()) | Err(nix::Error::EEXIST) => {}
                    Err(e) => return Err(io_err(c)(e)),
                }
            }
            let fd = openat(
                Some(cur.fd.as_raw_fd()),
                name.as_c_str(),
                OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(io_err(c))?;
            // SAFETY: a fresh descriptor from openat, owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            cur = Dir {
                fd,
                path: cur.path.join(c),
            };
        }
        Ok(cur)
    }

    /// Makes exactly one new directory `name` here (fails if it exists).
    pub fn mkdir_new(&self, name: &str, mode: Mode) -> Result<Dir, PathError> {
        check_component(name)?;
        mkdirat(Some(self.fd.as_raw_fd()), cstr(name)?.as_c_str(), mode).map_err(io_err(name))?;
        self.subdir(&[name.to_owned()], None)
    }

    /// Size and mtime of a regular file `name` here, if there is one (symlinks are not followed).
    pub fn file_stat(&self, name: &str) -> Option<(u64, f64)> {
        let c = cstr(name).ok()?;
        let fd = openat(
            Some(self.fd.as_raw_fd()),
            c.as_c_str(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .ok()?;
        // SAFETY: fresh descriptor from openat.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = fstat(fd.as_raw_fd()).ok()?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return None;
        }
        Some((
            st.st_size as u64,
            st.st_mtime as f64 + st.st_mtime_nsec as f64 / 1e9,
        ))
    }

    /// Creates a fresh temporary file here for an incoming transfer. It is renamed into place
    /// only once complete, so a reader never sees a partial file.
    pub fn create_temp(&self, name: &str) -> Result<(File, String), PathError> {
        check_component(name)?;
        let tmp = format!(".{name}.part-{:016x}", rand::random::<u64>());
        let c = cstr(&tmp)?;
        let fd = openat(
            Some(self.fd.as_raw_fd()),
            c.as_c_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(io_err(name))?;
        // SAFETY: fresh descriptor from openat.
        Ok((unsafe { File::from_raw_fd(fd) }, tmp))
    }

    /// Sets mode and times on a finished transfer and moves it to `name`.
    pub fn finish_temp(
        &self,
        file: &File,
        tmp: &str,
        name: &str,
        mode: u32,
        atime: f64,
        mtime: f64,
    ) -> Result<(), PathError> {
        check_component(name)?;
        let ts = |t: f64| TimeSpec::new(t.trunc() as i64, ((t.fract().abs()) * 1e9) as i64);
        fchmod(file.as_raw_fd(), Mode::from_bits_truncate(mode & 0o7777)).map_err(io_err(name))?;
        let tmp_c = cstr(tmp)?;
        utimensat(
            Some(self.fd.as_raw_fd()),
            tmp_c.as_c_str(),
            &ts(atime),
            &ts(mtime),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io_err(name))?;
        nix::fcntl::renameat(
            Some(self.fd.as_raw_fd()),
            tmp_c.as_c_str(),
            Some(self.fd.as_raw_fd()),
            cstr(name)?.as_c_str(),
        )
        .map_err(io_err(name))
    }

    /// Removes a file entry here (not following symlinks; a missing file is fine).
    pub fn unlink(&self, name: &str) -> Result<(), PathError> {
        let c = cstr(name)?;
        match nix::unistd::unlinkat(
            Some(self.fd.as_raw_fd()),
            c.as_c_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
            Err(e) => Err(io_err(name)(e)),
        }
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Removes a directory tree that we created, never following symlinks. Iterative and with
/// short paths whatever the depth: a job may leave a tree thousands of levels deep, which
/// would overflow the stack of a recursive removal (std's `remove_dir_all`) or exceed
/// PATH_MAX. Subdirectories are first moved up to the top of the tree, then emptied there.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => {}
        Ok(_) => return std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let root = Dir::open(path).map_err(to_io)?;
    let mut queue: Vec<String> = Vec::new();
    let mut seq: u64 = 0;
    // The root itself first, then every directory moved up into it.
    let mut current: Option<String> = None;
    loop {
        let dir = match &current {
            None => root.subdir(&[], None).map_err(to_io)?,
            Some(name) => match root.subdir(std::slice::from_ref(name), None) {
                Ok(d) => d,
                Err(_) => {
                    let _ = nix::unistd::unlinkat(
                        Some(root.fd.as_raw_fd()),
                        name.as_str(),
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    );
                    match queue.pop() {
                        Some(n) => {
                            current = Some(n);
                            continue;
                        }
                        None => break,
                    }
                }
            },
        };
        let mut entries = nix::dir::Dir::openat(
            Some(dir.fd.as_raw_fd()),
            ".",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)?;
        let names: Vec<(CString, bool)> = entries
            .iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_bytes() != b"." && e.file_name().to_bytes() != b"..")
            .map(|e| {
                (
                    e.file_name().to_owned(),
                    e.file_type() == Some(nix::dir::Type::Directory),
                )
            })
            .collect();
        drop(entries);
        for (name, is_dir) in names {
            let is_dir = is_dir || {
                let st = nix::sys::stat::fstatat(
                    Some(dir.fd.as_raw_fd()),
                    name.as_c_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                );
                st.is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            };
            if is_dir {
                // Move it up next to the others: paths never grow with the depth.
                seq += 1;
                let flat = format!(".rm-{}-{seq}", std::process::id());
                nix::fcntl::renameat(
                    Some(dir.fd.as_raw_fd()),
                    name.as_c_str(),
                    Some(root.fd.as_raw_fd()),
                    flat.as_str(),
                )
                .map_err(io::Error::from)?;
                queue.push(flat);
            } else {
                match nix::unistd::unlinkat(
                    Some(dir.fd.as_raw_fd()),
                    name.as_c_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                ) {
                    Ok(()) | Err(nix::Error::ENOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if let Some(name) = &current {
            match nix::unistd::unlinkat(
                Some(root.fd.as_raw_fd()),
                name.as_str(),
                nix::unistd::UnlinkatFlags::RemoveDir,
            ) {
                // Not empty: something new appeared (a job still running?); go over it again.
                Err(nix::Error::ENOTEMPTY) => queue.push(name.clone()),
                Ok(()) | Err(nix::Error::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match queue.pop() {
            Some(n) => current = Some(n),
            None => break,
        }
    }
    drop(root);
    std::fs::remove_dir(path)
}

fn to_io(e: PathError) -> io::Error {
    match e {
        PathError::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

/// Removes `dir` if it is empty; any error (not empty, gone) is not ours to report.
pub fn remove_if_empty(dir: &Path) {
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn components() {
        assert_eq!(relative_components("a/b", "/").unwrap(), vec!["a", "b"]);
        assert_eq!(relative_components("a\\b", "\\").unwrap(), vec!["a", "b"]);
        assert_eq!(
            relative_components("./a//b/.", "/").unwrap(),
            vec!["a", "b"]
        );
        assert!(relative_components("", "/").unwrap().is_empty());
        assert!(matches!(
            relative_components(&"a/".repeat(40), "/"),
            Err(PathError::TooDeep(_))
        ));
        assert!(matches!(
            relative_components("../x", "/"),
            Err(PathError::BadComponent(_))
        ));
        assert!(matches!(
            relative_components("a/../../x", "/"),
            Err(PathError::BadComponent(_))
        ));
        assert!(matches!(
            relative_components("/etc", "/"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            relative_components("C:\\x", "\\"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            relative_components("a\\..\\..", "\\"),
            Err(PathError::BadComponent(_))
        ));
    }

    #[test]
    fn symlinks_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("evil")).unwrap();
        let dir = Dir::open(root.path()).unwrap();
        assert!(dir.subdir(&["evil".into()], None).is_err());
        assert!(dir
            .subdir(
                &["evil".into(), "x".into()],
                Some(Mode::from_bits_truncate(0o700))
            )
            .is_err());
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        // A symlinked file is neither stat'ed nor reported as present.
        std::fs::write(outside.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), root.path().join("f")).unwrap();
        assert!(dir.file_stat("f").is_none());
        assert!(Dir::open(&root.path().join("evil")).is_err());
    }

    #[test]
    fn remove_tree_handles_deep_trees_and_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        let top = root.path().join("t");
        std::fs::create_dir(&top).unwrap();
        // 3000 levels: deeper than PATH_MAX allows to name, deep enough to overflow recursion.
        let dir = Dir::open(&top).unwrap();
        let comps: Vec<String> = (0..3000).map(|_| "d".to_owned()).collect();
        let deep = dir
            .subdir(&comps, Some(Mode::from_bits_truncate(0o755)))
            .unwrap();
        let (mut f, tmp) = deep.create_temp("f").unwrap();
        f.write_all(b"x").unwrap();
        drop(deep);
        let _ = tmp;
        std::os::unix::fs::symlink(outside.path(), top.join("link")).unwrap();
        remove_tree(&top).unwrap();
        assert!(!top.exists());
        assert!(
            outside.path().join("keep").exists(),
            "a symlink must not be followed"
        );
        remove_tree(&top).unwrap();
    }

    #[test]
    fn transfer_into_place() {
        let root = tempfile::tempdir().unwrap();
        let dir = Dir::open(root.path()).unwrap();
        let sub = dir
            .subdir(
                &["a".into(), "b".into()],
                Some(Mode::from_bits_truncate(0o755)),
            )
            .unwrap();
        let (mut f, tmp) = sub.create_temp("data.txt").unwrap();
        f.write_all(b"hello").unwrap();
        sub.finish_temp(&f, &tmp, "data.txt", 0o100750, 1000.5, 2000.25)
            .unwrap();
        let p = root.path().join("a/b/data.txt");
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o750);
        assert_eq!(m.mtime(), 2000);
        assert_eq!(sub.file_stat("data.txt").unwrap().0, 5);
        assert_eq!(
            std::fs::read_dir(root.path().join("a/b")).unwrap().count(),
            1
        );
        sub.unlink("data.txt").unwrap();
        sub.unlink("data.txt").unwrap();
        assert!(sub
            .mkdir_new("new", Mode::from_bits_truncate(0o700))
            .is_ok());
        assert!(sub
            .mkdir_new("new", Mode::from_bits_truncate(0o700))
            .is_err());
    }
}
