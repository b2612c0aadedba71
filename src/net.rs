//! Socket plumbing: framed reads and writes with timeouts, outgoing one-request connections,
//! and listener setup. Protocol decisions live in `node`; byte layouts in `protocol`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;

use crate::protocol::frame::{self, FrameError, HEADER_LEN};

#[derive(Debug, Error)]
pub enum NetError {
    #[error("timed out")]
    Timeout,
    #[error("connection closed by peer")]
    Closed,
    #[error("the node holds as many request bytes as it may; try again later")]
    Busy,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads exactly `buf.len()` bytes, failing if the peer is silent for `limit`.
pub async fn read_exact<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut [u8],
    limit: Duration,
) -> Result<(), NetError> {
    match timeout(limit, s.read_exact(buf)).await {
        Err(_) => Err(NetError::Timeout),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err(NetError::Closed),
        Ok(r) => r.map(|_| ()).map_err(NetError::from),
    }
}

/// Reads one frame whose length must not exceed `max_len`. The length is checked before any
/// buffer is allocated, and a slow sender gets `limit` per read rather than forever.
pub async fn read_frame<S: AsyncRead + Unpin>(
    s: &mut S,
    max_len: u64,
    limit: Duration,
) -> Result<Vec<u8>, NetError> {
    let mut head = [0u8; HEADER_LEN];
    read_exact(s, &mut head, limit).await?;
    let len = frame::parse_header(head, max_len)?;
    read_body(s, len, limit).await
}

/// Like [`read_frame`], but a frame over [`crate::limits::FREE_REQUEST_BYTES`] first takes its
/// length from `budget` (bytes of request bodies the node holds at once), waiting at most
/// `limit` for it; the permit comes back with the frame, to be held while it is in use.
/// Without it, the 1024 connections a node serves could each hold a 256 MiB request.
pub async fn read_frame_within<S: AsyncRead + Unpin>(
    s: &mut S,
    max_len: u64,
    limit: Duration,
    budget: &Arc<Semaphore>,
) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), NetError> {
    let mut head = [0u8; HEADER_LEN];
    read_exact(s, &mut head, limit).await?;
    let len = frame::parse_header(head, max_len)?;
    let permit = if len as u64 > crate::limits::FREE_REQUEST_BYTES {
        let n = u32::try_from(len).map_err(|_| FrameError::TooLarge {
            len: len as u64,
            limit: u64::from(u32::MAX),
        })?;
        match timeout(limit, budget.clone().acquire_many_owned(n)).await {
            Ok(Ok(p)) => Some(p),
            Ok(Err(_)) => return Err(NetError::Closed),
            Err(_) => return Err(NetError::Busy),
        }
    } else {
        None
    };
    Ok((read_body(s, len, limit).await?, permit))
}

async fn read_body<S: AsyncRead + Unpin>(
    s: &mut S,
    len: usize,
    limit: Duration,
) -> Result<Vec<u8>, NetError> {
    let mut buf = Vec::new();
    // Grow as data arrives instead of trusting the header with one huge allocation.
    let mut remaining = len;
    let mut chunk = vec![0u8; len.min(1 << 20)];
    while remaining > 0 {
        let n = remaining.min(chunk.len());
        read_exact(s, &mut chunk[..n], limit).await?;
        buf.extend_from_slice(&chunk[..n]);
        remaining -= n;
    }
    Ok(buf)
}

/// Writes one frame (header and payload in one call where possible). A large payload gets
/// `limit` per [`WRITE_CHUNK`], not for the whole: a 50 MiB result must reach a client behind
/// a slower link as long as it keeps reading (the reference's timeout is per send too).
pub async fn write_frame<S: AsyncWrite + Unpin>(
    s: &mut S,
    payload: &[u8],
    limit: Duration,
) -> Result<(), NetError> {
    let head = frame::header(payload.len())?;
    if payload.len() < 64 * 1024 {
        let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
        buf.extend_from_slice(&head);
        buf.extend_from_slice(payload);
        write_raw(s, &buf, limit).await?;
    } else {
        write_raw(s, &head, limit).await?;
        for chunk in payload.chunks(WRITE_CHUNK) {
            write_raw(s, chunk, limit).await?;
        }
    }
    match timeout(limit, s.flush()).await {
        Err(_) => Err(NetError::Timeout),
        Ok(r) => r.map_err(NetError::from),
    }
}

/// How much of a frame must go out within one `limit` (1 MiB: at the default 5 s, a peer
/// reading at least about 200 kB/s is never cut off).
pub const WRITE_CHUNK: usize = 1 << 20;

/// Writes raw bytes with a timeout.
pub async fn write_raw<S: AsyncWrite + Unpin>(
    s: &mut S,
    data: &[u8],
    limit: Duration,
) -> Result<(), NetError> {
    match timeout(limit, s.write_all(data)).await {
        Err(_) => Err(NetError::Timeout),
        Ok(r) => r.map_err(NetError::from),
    }
}

/// Opens a connection for one outgoing message (the protocol never reuses connections).
pub async fn connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, NetError> {
    match timeout(limit, TcpStream::connect(addr)).await {
        Err(_) => Err(NetError::Timeout),
        Ok(r) => {
            let s = r?;
            s.set_nodelay(true)?;
            Ok(s)
        }
    }
}

/// Sends one framed message to `addr` (over TLS when `tls` is set) and, with `want_reply`,
/// returns the peer's one reply.
pub async fn request(
    addr: SocketAddr,
    payload: &[u8],
    want_reply: bool,
    limit: Duration,
    tls: Option<&crate::tls::Tls>,
) -> Result<Option<Vec<u8>>, NetError> {
    let tcp = connect(addr, limit).await?;
    let mut s = crate::tls::connect(tls, tcp, limit).await?;
    write_frame(&mut s, payload, limit).await?;
    if !want_reply {
        // For TLS this sends the close_notify the Python side expects.
        let _ = timeout(limit, s.shutdown()).await;
        return Ok(None);
    }
    // Replies to our messages are short tokens or small pickles.
    let reply = read_frame(&mut s, crate::limits::MAX_REPLY, limit).await?;
    let _ = timeout(limit, s.shutdown()).await;
    Ok(Some(reply))
}

/// Parses an address string from the protocol into an IP (hostnames are not resolved: the
/// protocol carries addresses).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.split('%').next().unwrap_or(s);
    s.parse().ok()
}

/// Binds the discovery UDP socket: SO_REUSEADDR and SO_REUSEPORT so that several nodes on a
/// host can share the port, as the reference does (G22).
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// Binds the TCP listener with SO_REUSEADDR (restarts must not wait for TIME_WAIT).
pub fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

/// Sends one UDP datagram from an ephemeral socket (broadcast allowed), best effort.
pub async fn send_datagram(from: IpAddr, to: SocketAddr, payload: &[u8]) -> io::Result<()> {
    let bind: SocketAddr = match (from, to.is_ipv6()) {
        (IpAddr::V4(_), false) | (IpAddr::V6(_), true) => SocketAddr::new(from, 0),
        (_, true) => "[::]:0".parse().map_err(io::Error::other)?,
        (_, false) => "0.0.0.0:0".parse().map_err(io::Error::other)?,
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.set_broadcast(true)?;
    sock.send_to(payload, to).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_over_a_socket_pair() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let t = Duration::from_secs(2);
        write_frame(&mut a, b"PING:xyz", t).await.unwrap();
        assert_eq!(read_frame(&mut b, 100, t).await.unwrap(), b"PING:xyz");
        write_frame(&mut a, b"0123456789", t).await.unwrap();
        assert!(matches!(
            read_frame(&mut b, 5, t).await,
            Err(NetError::Frame(_))
        ));
    }

    #[tokio::test]
    async fn silent_peer_times_out_and_eof_is_closed() {
        let (_a, mut b) = tokio::io::duplex(64);
        let r = read_frame(&mut b, 100, Duration::from_millis(50)).await;
        assert!(matches!(r, Err(NetError::Timeout)));
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert!(matches!(
            read_frame(&mut b, 100, Duration::from_secs(1)).await,
            Err(NetError::Closed)
        ));
    }

    /// A frame larger than what a slow reader takes within one `limit` still arrives whole,
    /// as long as each WRITE_CHUNK goes out within it; a reader that stops gets a timeout.
    #[tokio::test]
    async fn slow_reader_gets_a_large_frame_and_a_stopped_one_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let payload: Vec<u8> = (0..8 * WRITE_CHUNK).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 128 * 1024];
            // About 2.5 MB/s: a 1 MiB chunk in ~0.4 s, the whole frame in ~3.4 s.
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            got
        });
        let mut s = TcpStream::connect(addr).await.unwrap();
        let limit = Duration::from_secs(1);
        let started = std::time::Instant::now();
        write_frame(&mut s, &payload, limit).await.unwrap();
        drop(s);
        let got = reader.await.unwrap();
        assert!(
            started.elapsed() > limit,
            "the reader was not slower than the limit"
        );
        assert_eq!(got.len(), HEADER_LEN + payload.len());
        assert!(got[HEADER_LEN..] == payload[..]);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut s = TcpStream::connect(addr).await.unwrap();
        let (_peer, _) = listener.accept().await.unwrap(); // never reads
        let r = write_frame(&mut s, &payload, Duration::from_millis(300)).await;
        assert!(matches!(r, Err(NetError::Timeout)), "{r:?}");
    }

    #[test]
    fn ips() {
        assert_eq!(parse_ip("127.0.0.1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(parse_ip("fe80::1%eth0"), Some("fe80::1".parse().unwrap()));
        assert_eq!(parse_ip("host.example"), None);
    }
}
