//! Reads and writes of small kernel interface files (procfs, cgroupfs) in the fewest system
//! calls: the daemon makes several per job when jobs get cgroups of their own. `std::fs` opens
//! with `open`, which musl (the packages' static build) follows with an `fcntl(F_SETFD)` for
//! kernels that ignored `O_CLOEXEC`, and `read_to_string` asks for the file's size and probes
//! its end with further reads. Here: `openat`, one `read` (or `write`), `close`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::FromRawFd;
use std::path::Path;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;

/// Room for the whole of any file read here on the first read.
const FIRST_READ: usize = 4096;

fn open(path: &Path, flags: OFlag) -> io::Result<File> {
    let fd = openat(None, path, flags | OFlag::O_CLOEXEC, Mode::empty())?;
    // SAFETY: `fd` was just returned by openat, is valid, and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The whole text of a small file made in one piece: a read that returns less than it was
/// offered ends it. That holds for the procfs files made by one `show` (`/proc/<pid>/stat`,
/// `/proc/<pid>/cgroup`: seq_file hands over the whole text on a read with room for it), for
/// cgroupfs's one-value files (`*.events`, `cgroup.controllers`) and for regular files. Not for
/// files of one record per item, such as `cgroup.procs`, which a read may end between two
/// records: [`read_to_end`].
pub fn read(path: &Path) -> io::Result<String> {
    read_until(path, true)
}

/// The whole text of a file, read until a read returns nothing.
pub fn read_to_end(path: &Path) -> io::Result<String> {
    read_until(path, false)
}

fn read_until(path: &Path, short_read_ends: bool) -> io::Result<String> {
    let mut f = open(path, OFlag::O_RDONLY)?;
    let mut buf = vec![0u8; FIRST_READ];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        let offered = buf.len() - len;
        let n = match f.read(&mut buf[len..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        len += n;
        if n == 0 || (short_read_ends && n < offered) {
            break;
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes `data` to the existing file `path` in one `write` (cgroupfs takes each write as one
/// value).
pub fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    open(path, OFlag::O_WRONLY | OFlag::O_APPEND)?.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_procfs_and_regular_files_whole() {
        let stat = read(Path::new("/proc/self/stat")).unwrap();
        assert!(
            stat.starts_with(&format!("{} (", std::process::id())),
            "{stat}"
        );
        assert!(stat.ends_with('\n'));
        let tmp = tempfile::tempdir().unwrap();
        for size in [
            0,
            1,
            FIRST_READ - 1,
            FIRST_READ,
            FIRST_READ + 1,
            3 * FIRST_READ + 7,
        ] {
            let p = tmp.path().join(format!("f{size}"));
            let text: String = (0..size)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            std::fs::write(&p, &text).unwrap();
            assert_eq!(read(&p).unwrap(), text, "size {size}");
            assert_eq!(read_to_end(&p).unwrap(), text, "size {size}");
        }
    }

    #[test]
    fn a_file_handed_over_in_pieces_is_read_to_its_end() {
        // A FIFO whose writer writes in pieces returns short reads before its end, as a
        // file of many records (cgroup.procs) may.
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
                for piece in 0..3u8 {
                    f.write_all(&[b'a' + piece; 3000]).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(30));
                }
            })
        };
        let text = read_to_end(&fifo).unwrap();
        writer.join().unwrap();
        assert_eq!(text.len(), 9000);
        assert!(text.starts_with('a') && text.ends_with('c'));
    }

    #[test]
    fn errors_keep_their_kind() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");
        assert_eq!(read(&missing).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(
            write(&missing, b"1").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let bad = tmp.path().join("bad");
        std::fs::write(&bad, [0xff, 0xfe]).unwrap();
        assert_eq!(read(&bad).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn writes_append() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, "a\n").unwrap();
        write(&p, b"b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a\nb\n");
    }
}
