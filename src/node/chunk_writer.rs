//! Writes a received file's chunks to disk on a blocking thread while the connection receives
//! the next one. dispy sends a file in 1 024 000-byte chunks and waits for an ack after each:
//! acking a chunk as soon as it is in memory and writing it meanwhile keeps both ends busy
//! (bench/README.md, "Files": 1830 -> 2291 and 1794 -> 2254 MB/s for a 100 MiB `depends` in two
//! A/Bs). The file write never runs on the runtime thread, so a slow disk delays only this
//! transfer. Each transfer's writer is a blocking thread fed through a channel, which measured
//! better than a blocking task per chunk (the hand-over per chunk is what costs); so that
//! transfers cannot take all of tokio's blocking threads (512), at most `MAX_WRITERS` run at
//! once and the others wait for a slot before their first ack.

use std::fs::File;
use std::io::{self, Write};

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

/// Chunk buffers per transfer: one being received while the other is written.
const BUFFERS: usize = 2;

/// Transfers whose writer thread may exist at once.
pub(crate) const MAX_WRITERS: usize = 64;
static WRITERS: Semaphore = Semaphore::const_new(MAX_WRITERS);

pub(crate) struct ChunkWriter {
    to_disk: Option<mpsc::Sender<(Vec<u8>, usize)>>,
    free: mpsc::Receiver<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    task: JoinHandle<io::Result<()>>,
}

impl ChunkWriter {
    /// `file` is written from its current offset; `chunk` is the largest chunk that comes.
    /// Waits while `MAX_WRITERS` other transfers are being written.
    pub(crate) async fn new(mut file: File, chunk: usize) -> Self {
        let slot = WRITERS.acquire().await.ok(); // never closed: always Some
        let (to_disk, mut queued) = mpsc::channel::<(Vec<u8>, usize)>(BUFFERS);
        let (done, free) = mpsc::channel::<Vec<u8>>(BUFFERS);
        let task = tokio::task::spawn_blocking(move || {
            let _slot = slot; // given back when this thread's work ends
            while let Some((buf, len)) = queued.blocking_recv() {
                file.write_all(&buf[..len])?;
                // The receiver side may be gone (it failed): the buffer is then just dropped.
                let _ = done.blocking_send(buf);
            }
            Ok(())
        });
        Self {
            to_disk: Some(to_disk),
            free,
            spare: (0..BUFFERS).map(|_| vec![0u8; chunk]).collect(),
            task,
        }
    }

    /// A buffer to receive the next chunk into: a fresh one, or one whose chunk is written.
    /// None if the writer stopped (a write failed): `finish` says why.
    pub(crate) async fn buffer(&mut self) -> Option<Vec<u8>> {
        match self.spare.pop() {
            Some(b) => Some(b),
            None => self.free.recv().await,
        }
    }

    /// Queues the first `len` bytes of `buf` for writing. False if the writer stopped.
    pub(crate) async fn write(&mut self, buf: Vec<u8>, len: usize) -> bool {
        match &self.to_disk {
            Some(tx) => tx.send((buf, len)).await.is_ok(),
            None => false,
        }
    }

    /// Waits until every queued chunk is written (or the first write error).
    pub(crate) async fn finish(mut self) -> io::Result<()> {
        self.to_disk = None;
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[tokio::test]
    async fn writes_chunks_in_order_reusing_two_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut w = ChunkWriter::new(File::create(&path).unwrap(), 8).await;
        let mut expect = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for i in 0..20u8 {
            let mut b = w.buffer().await.unwrap();
            seen.insert(b.as_ptr() as usize);
            let len = 1 + (i as usize % 8);
            b[..len].fill(i);
            expect.extend(std::iter::repeat_n(i, len));
            assert!(w.write(b, len).await);
        }
        w.finish().await.unwrap();
        let mut got = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got, expect);
        assert_eq!(seen.len(), BUFFERS);
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_by_finish() {
        // A read-only file: the first write fails and the writer stops.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        File::create(&path).unwrap();
        let mut w = ChunkWriter::new(File::open(&path).unwrap(), 4).await;
        let mut refused = false;
        for _ in 0..10 {
            let Some(b) = w.buffer().await else {
                refused = true;
                break;
            };
            if !w.write(b, 4).await {
                refused = true;
                break;
            }
        }
        assert!(
            refused,
            "the writer kept taking chunks after a failed write"
        );
        assert!(w.finish().await.is_err());
    }

    #[tokio::test]
    async fn writers_beyond_the_cap_wait_for_a_slot() {
        let dir = tempfile::tempdir().unwrap();
        let file = |i: usize| File::create(dir.path().join(i.to_string())).unwrap();
        let mut held = Vec::new();
        for i in 0..MAX_WRITERS {
            held.push(ChunkWriter::new(file(i), 4).await);
        }
        let wait = std::time::Duration::from_millis(300);
        let extra = tokio::time::timeout(wait, ChunkWriter::new(file(MAX_WRITERS), 4)).await;
        assert!(extra.is_err(), "a writer beyond the cap got a thread");
        held.remove(0).finish().await.unwrap();
        let extra = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            ChunkWriter::new(file(MAX_WRITERS), 4),
        )
        .await
        .expect("a writer's slot was not given back when it finished");
        extra.finish().await.unwrap();
        for w in held {
            w.finish().await.unwrap();
        }
    }
}
