//! TLS for `--certfile` / `--keyfile`, both ways, compatible with the stock pycos/dispy peers.
//!
//! What the Python side does (protocol §1.6, G24), and therefore what this module does:
//!
//! * **Server** (pycos accept: `ssl.create_default_context(Purpose.CLIENT_AUTH)` +
//!   `load_cert_chain(certfile, keyfile)`): present the configured certificate chain, request
//!   no client certificate, TLS 1.2 or 1.3. The key may sit in the certfile (keyfile absent).
//! * **Client** (pycos connect: `ssl.wrap_socket(ca_certs=certfile, cert_reqs=CERT_REQUIRED)`):
//!   trust the peer only if it proves it holds the node's own configured certificate, and do
//!   **no hostname check**. Both ends normally use one self-signed certificate made with
//!   `openssl req -x509`, which carries `CA:TRUE`; webpki refuses a CA certificate as an
//!   end-entity, so rustls' stock verifier cannot be used. [`PinnedCertVerifier`] instead
//!   accepts exactly the certificates found in the certfile (compared as DER bytes), checks
//!   their validity dates like OpenSSL does, and leaves the handshake signatures to the ring
//!   provider, so a peer that merely replays the certificate without the key fails.
//!
//!   This is deliberately narrower than OpenSSL: a *different* certificate issued by a CA
//!   listed in the certfile would pass Python's check but not ours. dispy deployments share
//!   one certificate, and pinning avoids trusting anything the operator did not hand us.
//!
//! Every connection, in both directions, is wrapped in a [`Stream`], which is either plain TCP
//! (no `--certfile`) or TLS, so the node's code is the same in both cases.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{self, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, InconsistentKeys, ProtocolVersion,
    ServerConfig, SignatureScheme,
};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: malformed PEM: {source}")]
    Pem { path: PathBuf, source: pem::Error },
    #[error("{path}: no certificate (expected a PEM \"BEGIN CERTIFICATE\" block)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no private key (expected a PEM private key block; without --keyfile it is read from the certfile)")]
    NoPrivateKey { path: PathBuf },
    #[error("{path}: the private key is encrypted; dispynode needs an unencrypted key (e.g. `openssl pkey -in KEY -out PLAIN`)")]
    EncryptedKey { path: PathBuf },
    #[error("{path}: unusable private key: {source}")]
    BadKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{path}: unusable certificate: {source}")]
    BadCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the private key in {keyfile} does not belong to the certificate in {certfile}")]
    KeyMismatch { certfile: PathBuf, keyfile: PathBuf },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The node's TLS configuration: one acceptor for its listener and one connector for the
/// connections it opens (PONG, JOB_REPLY, PULSE, TERMINATED, …). Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
    /// The certificate blocks of the certfile (never the key), for jobs that must verify the
    /// client without being able to read the node's files.
    certificate_pem: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

impl Tls {
    /// Loads `certfile` (PEM: the certificate, optionally followed by its chain and, without
    /// `keyfile`, the private key) and `keyfile` (PEM: PKCS#8, PKCS#1 or SEC1 key), checks that
    /// they belong together, and builds both sides. Errors name the file and what is wrong
    /// with it, since this runs at startup and the operator reads them.
    pub fn load(certfile: &Path, keyfile: Option<&Path>) -> Result<Tls, TlsError> {
        let cert_pem = read(certfile)?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem {
                path: certfile.to_owned(),
                source,
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                path: certfile.to_owned(),
            });
        }

        let (key_path, key_pem) = match keyfile {
            Some(k) => (k, read(k)?),
            None => (certfile, cert_pem.clone()),
        };
        let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(k) => k,
            Err(pem::Error::NoItemsFound) if looks_encrypted(&key_pem) => {
                return Err(TlsError::EncryptedKey {
                    path: key_path.to_owned(),
                })
            }
            Err(pem::Error::NoItemsFound) => {
                return Err(TlsError::NoPrivateKey {
                    path: key_path.to_owned(),
                })
            }
            Err(source) => {
                return Err(TlsError::Pem {
                    path: key_path.to_owned(),
                    source,
                })
            }
        };

        let provider = Arc::new(crypto::ring::default_provider());
        let signing_key = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|source| TlsError::BadKey {
                path: key_path.to_owned(),
                source,
            })?;
        match CertifiedKey::new(certs.clone(), signing_key).keys_match() {
            // `Unknown`: the key type cannot tell its public key; rustls accepts that too.
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(TlsError::KeyMismatch {
                    certfile: certfile.to_owned(),
                    keyfile: key_path.to_owned(),
                })
            }
            Err(source) => {
                return Err(TlsError::BadCertificate {
                    path: certfile.to_owned(),
                    source,
                })
            }
        }
        warn_if_out_of_date(certfile, &certs[0]);

        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key)?;
        let verifier = PinnedCertVerifier {
            pinned: certs,
            algorithms: provider.signature_verification_algorithms,
        };
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            certificate_pem: certificate_blocks(&String::from_utf8_lossy(&cert_pem)),
        })
    }

    /// Runs the server handshake on an accepted connection, giving up after `limit` so a
    /// client that connects and says nothing cannot hold a task forever. Call it in the
    /// connection's own task, never in the accept loop.
    pub async fn accept(&self, tcp: TcpStream, limit: Duration) -> io::Result<Stream> {
        match timeout(limit, self.acceptor.accept(tcp)).await {
            Ok(r) => r.map(|s| Stream::Tls(Box::new(s.into()))),
            Err(_) => Err(handshake_timeout()),
        }
    }

    /// Runs the client handshake on a connection the node opened, within `limit`. The peer
    /// must present the node's own certificate (see [`PinnedCertVerifier`]).
    pub async fn connect(&self, tcp: TcpStream, limit: Duration) -> io::Result<Stream> {
        let ip = tcp.peer_addr()?.ip();
        match timeout(limit, self.connector.connect(server_name_for(ip), tcp)).await {
            Ok(r) => r.map(|s| Stream::Tls(Box::new(s.into()))),
            Err(_) => Err(handshake_timeout()),
        }
    }
}

/// Server side of a connection on the node port: TLS when `tls` is configured, else plain.
pub async fn accept(tls: Option<&Tls>, tcp: TcpStream, limit: Duration) -> io::Result<Stream> {
    match tls {
        Some(t) => t.accept(tcp, limit).await,
        None => Ok(Stream::Plain(tcp)),
    }
}

/// Client side of a connection the node opened: TLS when `tls` is configured, else plain.
pub async fn connect(tls: Option<&Tls>, tcp: TcpStream, limit: Duration) -> io::Result<Stream> {
    match tls {
        Some(t) => t.connect(tcp, limit).await,
        None => Ok(Stream::Plain(tcp)),
    }
}

/// The `CERTIFICATE` PEM blocks of a PEM text, without any key that may share the file.
fn certificate_blocks(pem: &str) -> String {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = String::new();
    let mut rest = pem;
    while let Some(b) = rest.find(BEGIN) {
        let Some(e) = rest[b..].find(END) else { break };
        out.push_str(&rest[b..b + e + END.len()]);
        out.push('\n');
        rest = &rest[b + e + END.len()..];
    }
    out
}

impl Tls {
    /// The certificate(s) of the certfile as PEM text, without the private key.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }
}

/// The name given to rustls for a peer. [`PinnedCertVerifier`] ignores it (Python checks no
/// hostname either), and for an IP address rustls sends no SNI, just as Python does not.
pub fn server_name_for(ip: std::net::IpAddr) -> ServerName<'static> {
    ServerName::IpAddress(ip.into())
}

fn handshake_timeout() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// rustls' PEM reader skips blocks it cannot use, so an encrypted key looks like "no key";
/// spotting the markers lets the error say what to do.
fn looks_encrypted(pem: &[u8]) -> bool {
    let has = |needle: &[u8]| pem.windows(needle.len()).any(|w| w == needle);
    has(b"BEGIN ENCRYPTED PRIVATE KEY") || has(b"Proc-Type: 4,ENCRYPTED")
}

/// Python clients refuse an expired certificate, so say so at startup rather than leave the
/// operator wondering why no client connects.
fn warn_if_out_of_date(certfile: &Path, cert: &CertificateDer<'_>) {
    let Some((not_before, not_after)) = validity(cert.as_ref()) else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if now > not_after {
        tracing::warn!(certfile = %certfile.display(), "the TLS certificate has expired; peers will refuse it");
    } else if now < not_before {
        tracing::warn!(certfile = %certfile.display(), "the TLS certificate is not valid yet; peers will refuse it");
    }
}

/// Trusts a server iff its end-entity certificate is, byte for byte, one of the certificates
/// in the node's certfile and is within its validity dates. The handshake signature checks
/// prove the peer holds the matching key. No hostname check (none is done in Python).
#[derive(Debug)]
pub struct PinnedCertVerifier {
    pinned: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self
            .pinned
            .iter()
            .any(|c| c.as_ref() == end_entity.as_ref())
        {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ));
        }
        // The pinned certificate parsed at load time (keys_match), so this only fails on a
        // certificate too odd for our small reader; the pin is then still the decision.
        if let Some((not_before, not_after)) = validity(end_entity.as_ref()) {
            let t = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
            if t < not_before {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidYet,
                ));
            }
            if t > not_after {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A connection in either direction, plain or TLS. Implements `AsyncRead + AsyncWrite`, so the
/// framing helpers in `net` work unchanged.
///
/// Call `shutdown().await` before dropping a TLS stream when the peer may still read: it sends
/// close_notify, which Python's ssl reports as a clean end of stream.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: a rustls connection is over a kilobyte and most nodes run without TLS.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Stream {
    /// The underlying TCP connection (peer address, socket options).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The negotiated TLS version, for logs; `None` for plain TCP.
    pub fn tls_version(&self) -> Option<ProtocolVersion> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => s.get_ref().1.protocol_version(),
        }
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Stream::Plain(s)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// `(notBefore, notAfter)` of a DER certificate in seconds since the Unix epoch, read with a
/// minimal DER walk (rustls exposes no certificate fields). `None` if the layout is not the
/// standard X.509 one; callers then skip the date check.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] EXPLICIT version, absent in v1 certificates.
    if let (0xA0, _, r) = tlv(rest)? {
        rest = r;
    }
    for expected in [0x02, 0x30, 0x30] {
        // serialNumber, signature AlgorithmIdentifier, issuer Name
        let (tag, _, r) = tlv(rest)?;
        if tag != expected {
            return None;
        }
        rest = r;
    }
    let (0x30, validity, _) = tlv(rest)? else {
        return None;
    };
    let (t1, v1, r) = tlv(validity)?;
    let (t2, v2, _) = tlv(r)?;
    Some((asn1_time(t1, v1)?, asn1_time(t2, v2)?))
}

/// One DER tag-length-value: `(tag, contents, rest)`.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, r) = rest.split_at_checked(n)?;
        rest = r;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let (contents, after) = rest.split_at_checked(len)?;
    Some((tag, contents, after))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag 0x18), the
/// only forms RFC 5280 allows in certificates.
fn asn1_time(tag: u8, s: &[u8]) -> Option<i64> {
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (year, rest) = match (tag, s.len()) {
        (0x17, 13) => {
            let yy = digits(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (0x18, 15) => (digits(0..4)?, 4),
        _ => return None,
    };
    if s.last() != Some(&b'Z') {
        return None;
    }
    let month = digits(rest..rest + 2)?;
    let day = digits(rest + 2..rest + 4)?;
    let hour = digits(rest + 4..rest + 6)?;
    let minute = digits(rest + 6..rest + 8)?;
    let second = digits(rest + 8..rest + 10)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_certificate_blocks_reach_jobs() {
        let pem = "-----BEGIN PRIVATE KEY-----\nSECRET\n-----END PRIVATE KEY-----\n\
                   -----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\
                   -----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        let out = super::certificate_blocks(pem);
        assert!(!out.contains("SECRET") && !out.contains("PRIVATE"));
        assert_eq!(out.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(out.contains("AAA") && out.contains("BBB"));
    }

    use super::*;
    use std::process::Command;

    /// A self-signed CA:TRUE certificate as `openssl req -x509` makes it (the dispy way).
    fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=dispy", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl is needed by the TLS tests (Debian package `openssl`)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (cert, key)
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(asn1_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(asn1_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(asn1_time(0x18, b"20380119031408Z"), Some(2_147_483_648));
        assert_eq!(asn1_time(0x17, b"7001010000Z"), None);
        assert_eq!(asn1_time(0x17, b"70010100000xZ"), None);
        assert_eq!(asn1_time(0x17, b"701301000000Z"), None);
    }

    #[test]
    fn tlv_rejects_short_and_overlong_input() {
        assert_eq!(tlv(&[0x30]), None);
        assert_eq!(tlv(&[0x30, 0x05, 1, 2]), None);
        assert_eq!(tlv(&[0x30, 0x85, 0, 0, 0, 0, 1]), None);
        assert_eq!(
            tlv(&[0x30, 0x81, 0x01, 9, 7]),
            Some((0x30, &[9u8][..], &[7u8][..]))
        );
        assert_eq!(validity(b"garbage"), None);
        assert_eq!(validity(&[]), None);
    }

    #[test]
    fn validity_of_an_openssl_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, _) = make_cert(dir.path(), "a");
        let der = CertificateDer::from_pem_file(&cert).expect("pem");
        let (nb, na) = validity(der.as_ref()).expect("validity");
        assert_eq!(na - nb, 2 * 86_400);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        assert!((nb - now).abs() < 120, "notBefore {nb} vs now {now}");
    }

    #[test]
    fn verifier_pins_the_certificate_and_its_dates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, _) = make_cert(dir.path(), "a");
        let (other, _) = make_cert(dir.path(), "b");
        let der = CertificateDer::from_pem_file(&cert).expect("pem");
        let other = CertificateDer::from_pem_file(&other).expect("pem");
        let v = PinnedCertVerifier {
            pinned: vec![der.clone()],
            algorithms: crypto::ring::default_provider().signature_verification_algorithms,
        };
        let name = server_name_for("10.1.2.3".parse().expect("ip"));
        let (nb, na) = validity(der.as_ref()).expect("validity");
        let at = |t: i64| UnixTime::since_unix_epoch(Duration::from_secs(t as u64));
        assert!(v
            .verify_server_cert(&der, &[], &name, &[], at(nb + 60))
            .is_ok());
        // Any name at all: no hostname check.
        let dns = ServerName::try_from("not-the-cn.example").expect("name");
        assert!(v
            .verify_server_cert(&der, &[], &dns, &[], at(nb + 60))
            .is_ok());
        assert!(matches!(
            v.verify_server_cert(&other, &[], &name, &[], at(nb + 60)),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ));
        assert!(matches!(
            v.verify_server_cert(&der, &[], &name, &[], at(na + 1)),
            Err(rustls::Error::InvalidCertificate(CertificateError::Expired))
        ));
        assert!(matches!(
            v.verify_server_cert(&der, &[], &name, &[], at(nb - 1)),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet
            ))
        ));
        assert!(!v.supported_verify_schemes().is_empty());
    }

    #[test]
    fn encrypted_key_markers() {
        assert!(looks_encrypted(
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nabc\n"
        ));
        assert!(looks_encrypted(
            b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n"
        ));
        assert!(!looks_encrypted(b"-----BEGIN PRIVATE KEY-----\n"));
    }
}
