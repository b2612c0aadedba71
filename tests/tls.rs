//! TLS interop: our acceptor and connector against each other and against Python's `ssl`
//! used the way pycos 4.12.2 uses it (protocol §1.6, G24).
//!
//! Certificates are made at test time with `openssl req -x509` (self-signed, `CA:TRUE`,
//! exactly what dispy users make), so the tests need the `openssl` command (Debian package
//! `openssl`) and `python3` (stdlib only; `DISPY_TEST_PYTHON` overrides the interpreter).
//! A missing tool fails the test with a message saying which package to install.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use dispynode::tls::{self, Stream, Tls, TlsError};
use rustls::ProtocolVersion;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);
/// Bounds every Python child so a broken handshake fails the test instead of hanging it.
const PY_LIMIT: Duration = Duration::from_secs(30);

/// How pycos talks TLS, reduced to one request/response. Modes:
/// * `client-wrap PORT CERTFILE`: `ssl.wrap_socket(ca_certs=certfile, cert_reqs=CERT_REQUIRED)`,
///   pycos's own connect (Python <= 3.11; reports SKIP where it was removed);
/// * `client-ctx PORT CERTFILE [tls12]`: the `SSLContext(PROTOCOL_TLS_CLIENT)` equivalent,
///   `check_hostname=False`, `load_verify_locations(certfile)`, `CERT_REQUIRED`;
/// * `server CERTFILE KEYFILE|- [tls12]`: pycos's accept, `create_default_context(CLIENT_AUTH)`
///   plus `load_cert_chain`; prints `PORT n`, serves one connection.
///
/// Both sides send one line and the server answers `ECHO <line>`, then the connection is
/// closed the pycos way (plain `close()`, no TLS unwrap).
const PY_SCRIPT: &str = r#"
import socket, ssl, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)
mode = sys.argv[1]

def recv_all(s):
    data = b""
    while True:
        try:
            chunk = s.recv(4096)
        except ssl.SSLEOFError:
            break
        if not chunk:
            break
        data += chunk
    return data

if mode.startswith("client"):
    port, certfile = int(sys.argv[2]), sys.argv[3]
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    if mode == "client-wrap":
        if not hasattr(ssl, "wrap_socket"):
            print("SKIP no ssl.wrap_socket in this Python")
            sys.exit(0)
        s = ssl.wrap_socket(raw, ca_certs=certfile, cert_reqs=ssl.CERT_REQUIRED, server_side=False)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(certfile)
        ctx.verify_mode = ssl.CERT_REQUIRED
        if len(sys.argv) > 4 and sys.argv[4] == "tls12":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        s = ctx.wrap_socket(raw, server_side=False)
    s.sendall(b"hello from python\n")
    reply = recv_all(s)
    print("VERSION", s.version())
    print("REPLY", reply.decode())
    s.close()
elif mode == "server":
    certfile, keyfile = sys.argv[2], sys.argv[3]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile=certfile, keyfile=None if keyfile == "-" else keyfile)
    if len(sys.argv) > 4 and sys.argv[4] == "tls12":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(20)
    print("PORT", ls.getsockname()[1], flush=True)
    conn, _ = ls.accept()
    conn.settimeout(20)
    try:
        s = ctx.wrap_socket(conn, server_side=True)
    except (ssl.SSLError, OSError) as e:
        print("HANDSHAKE_FAILED", e, flush=True)
        sys.exit(0)
    line = b""
    while not line.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        line += chunk
    print("VERSION", s.version(), flush=True)
    print("GOT", line.decode().strip(), flush=True)
    s.sendall(b"ECHO " + line)
    s.close()
"#;

struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Certs {
        Certs {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a one-block PEM file `name`: `body` between the `label`'s BEGIN and END lines.
    fn pem(&self, name: &str, label: &str, body: &str) -> PathBuf {
        let path = self.path(name);
        let text = format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n");
        std::fs::write(&path, text).expect("write");
        path
    }

    /// `openssl req -x509 … -subj /CN=dispy`: self-signed with `CA:TRUE`, as dispy users do.
    /// `kind` is `rsa:2048` or `ec`.
    async fn make(&self, name: &str, kind: &str) -> (PathBuf, PathBuf) {
        let cert = self.path(&format!("{name}.crt"));
        let key = self.path(&format!("{name}.key"));
        let mut cmd = Command::new("openssl");
        cmd.args(["req", "-x509", "-newkey", kind]);
        if kind == "ec" {
            cmd.args(["-pkeyopt", "ec_paramgen_curve:prime256v1"]);
        }
        cmd.args(["-nodes", "-days", "2", "-subj", "/CN=dispy", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert);
        run_ok(cmd, "openssl").await;
        (cert, key)
    }

    /// The certificate and its key in one file (`--certfile` without `--keyfile`).
    fn combine(&self, name: &str, cert: &Path, key: &Path) -> PathBuf {
        let p = self.path(name);
        let mut data = std::fs::read(cert).expect("read cert");
        data.extend(std::fs::read(key).expect("read key"));
        std::fs::write(&p, data).expect("write combined");
        p
    }

    fn script(&self) -> PathBuf {
        let p = self.path("pyssl.py");
        if !p.exists() {
            std::fs::write(&p, PY_SCRIPT).expect("write script");
        }
        p
    }
}

async fn run_ok(mut cmd: Command, what: &str) -> String {
    let out = match cmd.output().await {
        Ok(o) => o,
        Err(e) => panic!(
            "cannot run {what}: {e} (the TLS tests need the Debian packages `openssl` and `python3`)"
        ),
    };
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn python() -> String {
    std::env::var("DISPY_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

type Outcomes = tokio::sync::mpsc::UnboundedReceiver<std::io::Result<Option<ProtocolVersion>>>;

/// The echo server's next connection, which must have succeeded: its TLS version.
async fn server_side(outcomes: &mut Outcomes) -> Option<ProtocolVersion> {
    outcomes
        .recv()
        .await
        .expect("outcome")
        .expect("server side")
}

/// Our TLS server: answers each connection's first line with `ECHO <line>`, then closes
/// with close_notify. Returns the port and a channel of per-connection outcomes.
async fn echo_server(tls: Tls) -> (u16, Outcomes) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let tls = Arc::new(tls);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let tls = tls.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let r = async {
                    let s = tls::accept(Some(&tls), tcp, LIMIT).await?;
                    assert!(s.is_tls());
                    let version = s.tls_version();
                    let mut s = BufReader::new(s);
                    let mut line = Vec::new();
                    timeout(LIMIT, s.read_until(b'\n', &mut line)).await??;
                    let mut s = s.into_inner();
                    s.write_all(b"ECHO ").await?;
                    s.write_all(&line).await?;
                    s.shutdown().await?;
                    Ok(version)
                }
                .await;
                let _ = tx.send(r);
            });
        }
    });
    (port, rx)
}

/// Our TLS client: sends one line, returns everything the server sent back.
async fn rust_client(tls: &Tls, port: u16) -> std::io::Result<(Vec<u8>, Option<ProtocolVersion>)> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut s: Stream = tls::connect(Some(tls), tcp, LIMIT).await?;
    assert!(s.is_tls());
    let version = s.tls_version();
    s.write_all(b"hello from rust\n").await?;
    s.flush().await?;
    let mut reply = Vec::new();
    match timeout(LIMIT, s.read_to_end(&mut reply)).await? {
        Ok(_) => {}
        // Python closes without close_notify, as pycos does; the data has arrived by then.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !reply.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok((reply, version))
}

async fn python_client(
    certs: &Certs,
    mode: &str,
    port: u16,
    certfile: &Path,
    extra: &[&str],
) -> (bool, String) {
    let mut cmd = Command::new(python());
    cmd.arg(certs.script())
        .arg(mode)
        .arg(port.to_string())
        .arg(certfile)
        .args(extra)
        .kill_on_drop(true);
    let out = match timeout(PY_LIMIT, cmd.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => panic!("cannot run {}: {e} (Debian package `python3`)", python()),
        Err(_) => panic!("python client hung"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Starts the Python server and returns it with the port it listens on.
async fn python_server(
    certs: &Certs,
    certfile: &Path,
    keyfile: Option<&Path>,
    extra: &[&str],
) -> (
    tokio::process::Child,
    BufReader<tokio::process::ChildStdout>,
    u16,
) {
    let mut cmd = Command::new(python());
    cmd.arg(certs.script())
        .arg("server")
        .arg(certfile)
        .arg(keyfile.map_or_else(|| PathBuf::from("-"), Path::to_owned))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (Debian package `python3`)", python()));
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    timeout(PY_LIMIT, out.read_line(&mut line))
        .await
        .expect("python server did not start")
        .expect("read port");
    let port = line
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected python server output {line:?}"));
    (child, out, port)
}

async fn rest_of(
    mut child: tokio::process::Child,
    mut out: BufReader<tokio::process::ChildStdout>,
) -> String {
    let mut text = String::new();
    timeout(PY_LIMIT, out.read_to_string(&mut text))
        .await
        .expect("python server hung")
        .expect("read");
    let status = timeout(PY_LIMIT, child.wait())
        .await
        .expect("python server did not exit")
        .expect("wait");
    assert!(status.success(), "python server failed: {text}");
    text
}

#[tokio::test]
async fn ours_to_ours() {
    let certs = Certs::new();
    let (cert, key) = certs.make("node", "rsa:2048").await;
    let tls = Tls::load(&cert, Some(&key)).expect("load");
    let (port, mut outcomes) = echo_server(tls.clone()).await;
    let (reply, version) = rust_client(&tls, port).await.expect("client");
    assert_eq!(reply, b"ECHO hello from rust\n");
    assert_eq!(version, Some(ProtocolVersion::TLSv1_3));
    let server = server_side(&mut outcomes).await;
    assert_eq!(server, Some(ProtocolVersion::TLSv1_3));
}

#[tokio::test]
async fn ecdsa_certificate_works_too() {
    let certs = Certs::new();
    let (cert, key) = certs.make("node", "ec").await;
    let tls = Tls::load(&cert, Some(&key)).expect("load");
    let (port, _outcomes) = echo_server(tls.clone()).await;
    let (reply, _) = rust_client(&tls, port).await.expect("client");
    assert_eq!(reply, b"ECHO hello from rust\n");
    let (ok, out) = python_client(&certs, "client-ctx", port, &cert, &[]).await;
    assert!(ok && out.contains("REPLY ECHO hello from python"), "{out}");
}

#[tokio::test]
async fn our_client_refuses_a_server_with_another_certificate() {
    let certs = Certs::new();
    let (cert_a, key_a) = certs.make("a", "rsa:2048").await;
    let (cert_b, key_b) = certs.make("b", "rsa:2048").await;
    let server_tls = Tls::load(&cert_b, Some(&key_b)).expect("load b");
    let client_tls = Tls::load(&cert_a, Some(&key_a)).expect("load a");
    let (port, mut outcomes) = echo_server(server_tls).await;
    let err = rust_client(&client_tls, port)
        .await
        .expect_err("must refuse");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(outcomes.recv().await.expect("outcome").is_err());

    // Same with a Python server presenting the other certificate.
    let (child, out, port) = python_server(&certs, &cert_b, Some(&key_b), &[]).await;
    assert!(rust_client(&client_tls, port).await.is_err());
    let text = rest_of(child, out).await;
    assert!(text.contains("HANDSHAKE_FAILED"), "{text}");
}

#[tokio::test]
async fn plain_or_silent_clients_do_not_hang_the_acceptor() {
    let certs = Certs::new();
    let (cert, key) = certs.make("node", "rsa:2048").await;
    let tls = Tls::load(&cert, Some(&key)).expect("load");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");

    // A non-TLS peer (e.g. a client without certfile) sending the auth prefix in clear.
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain.write_all(&[b'x'; 80]).await.expect("write");
    let (tcp, _) = listener.accept().await.expect("accept");
    let r = timeout(LIMIT, tls.accept(tcp, LIMIT))
        .await
        .expect("no hang");
    assert!(r.is_err());

    // A peer that connects and says nothing.
    let _silent = TcpStream::connect(addr).await.expect("connect");
    let (tcp, _) = listener.accept().await.expect("accept");
    let err = tls
        .accept(tcp, Duration::from_millis(200))
        .await
        .expect_err("times out");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
}

#[tokio::test]
async fn without_tls_the_stream_is_plain() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut c = tls::connect(None, tcp, LIMIT).await.expect("plain connect");
    let (tcp, _) = listener.accept().await.expect("accept");
    let mut s = tls::accept(None, tcp, LIMIT).await.expect("plain accept");
    assert!(!c.is_tls() && !s.is_tls() && s.tls_version().is_none());
    assert_eq!(c.tcp().peer_addr().expect("peer"), addr);
    c.write_all(b"abc").await.expect("write");
    c.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"abc");
}

#[tokio::test]
async fn python_clients_talk_to_our_acceptor() {
    let certs = Certs::new();
    let (cert, key) = certs.make("node", "rsa:2048").await;
    let tls = Tls::load(&cert, Some(&key)).expect("load");
    let (port, mut outcomes) = echo_server(tls).await;

    // pycos's own call, where this Python still has it.
    let (ok, out) = python_client(&certs, "client-wrap", port, &cert, &[]).await;
    assert!(ok, "{out}");
    if !out.starts_with("SKIP") {
        assert!(out.contains("REPLY ECHO hello from python"), "{out}");
        assert!(out.contains("VERSION TLSv1.3"), "{out}");
        server_side(&mut outcomes).await;
    }

    let (ok, out) = python_client(&certs, "client-ctx", port, &cert, &[]).await;
    assert!(ok && out.contains("REPLY ECHO hello from python"), "{out}");
    assert!(out.contains("VERSION TLSv1.3"), "{out}");
    server_side(&mut outcomes).await;

    let (ok, out) = python_client(&certs, "client-ctx", port, &cert, &["tls12"]).await;
    assert!(ok && out.contains("REPLY ECHO hello from python"), "{out}");
    assert!(out.contains("VERSION TLSv1.2"), "{out}");
    let v = server_side(&mut outcomes).await;
    assert_eq!(v, Some(ProtocolVersion::TLSv1_2));

    // A Python client configured with another certificate refuses us, as it should.
    let (other, _) = certs.make("other", "rsa:2048").await;
    let (ok, out) = python_client(&certs, "client-ctx", port, &other, &[]).await;
    assert!(!ok && out.contains("CERTIFICATE_VERIFY_FAILED"), "{out}");
}

#[tokio::test]
async fn our_connector_talks_to_python_servers() {
    let certs = Certs::new();
    let (cert, key) = certs.make("node", "rsa:2048").await;
    let tls = Tls::load(&cert, Some(&key)).expect("load");
    for extra in [&[][..], &["tls12"][..]] {
        let (child, out, port) = python_server(&certs, &cert, Some(&key), extra).await;
        let (reply, version) = rust_client(&tls, port).await.expect("client");
        assert_eq!(reply, b"ECHO hello from rust\n");
        let text = rest_of(child, out).await;
        assert!(text.contains("GOT hello from rust"), "{text}");
        if extra.is_empty() {
            assert_eq!(version, Some(ProtocolVersion::TLSv1_3));
            assert!(text.contains("VERSION TLSv1.3"), "{text}");
        } else {
            assert_eq!(version, Some(ProtocolVersion::TLSv1_2));
            assert!(text.contains("VERSION TLSv1.2"), "{text}");
        }
    }
}

#[tokio::test]
async fn key_inside_the_certfile() {
    let certs = Certs::new();
    let (cert, key) = certs.make("node", "rsa:2048").await;
    let both = certs.combine("both.pem", &cert, &key);
    let tls = Tls::load(&both, None).expect("load combined");
    let (port, _outcomes) = echo_server(tls.clone()).await;
    let (reply, _) = rust_client(&tls, port).await.expect("ours");
    assert_eq!(reply, b"ECHO hello from rust\n");
    // Python trusts the combined file as its CA file and serves from it without keyfile.
    let (ok, out) = python_client(&certs, "client-ctx", port, &both, &[]).await;
    assert!(ok && out.contains("REPLY ECHO hello from python"), "{out}");
    let (child, out, port) = python_server(&certs, &both, None, &[]).await;
    let (reply, _) = rust_client(&tls, port).await.expect("to python");
    assert_eq!(reply, b"ECHO hello from rust\n");
    rest_of(child, out).await;
    // Key first, certificate second is accepted as well.
    let reversed = certs.combine("reversed.pem", &key, &cert);
    Tls::load(&reversed, None).expect("key before cert");
}

#[tokio::test]
async fn bad_inputs_give_typed_errors() {
    let certs = Certs::new();
    let (cert, key) = certs.make("a", "rsa:2048").await;
    let (_, other_key) = certs.make("b", "rsa:2048").await;

    let missing = certs.path("missing.pem");
    assert!(matches!(
        Tls::load(&missing, None),
        Err(TlsError::Read { path, .. }) if path == missing
    ));
    assert!(matches!(
        Tls::load(&cert, Some(&missing)),
        Err(TlsError::Read { path, .. }) if path == missing
    ));

    let empty = certs.path("empty.pem");
    std::fs::write(&empty, b"").expect("write");
    assert!(matches!(
        Tls::load(&empty, Some(&key)),
        Err(TlsError::NoCertificate { .. })
    ));
    // A key file given as the certfile has no certificate either.
    assert!(matches!(
        Tls::load(&key, None),
        Err(TlsError::NoCertificate { .. })
    ));

    // Certificate alone, no keyfile.
    let err = Tls::load(&cert, None).expect_err("no key");
    assert!(matches!(&err, TlsError::NoPrivateKey { path } if *path == cert));
    assert!(err.to_string().contains("--keyfile"), "{err}");
    // keyfile that holds a certificate only.
    assert!(matches!(
        Tls::load(&cert, Some(&cert)),
        Err(TlsError::NoPrivateKey { .. })
    ));

    assert!(matches!(
        Tls::load(&cert, Some(&other_key)),
        Err(TlsError::KeyMismatch { .. })
    ));

    let mut cmd = Command::new("openssl");
    cmd.args(["pkey", "-aes256", "-passout", "pass:secret", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(certs.path("enc.key"));
    run_ok(cmd, "openssl").await;
    assert!(matches!(
        Tls::load(&cert, Some(&certs.path("enc.key"))),
        Err(TlsError::EncryptedKey { .. })
    ));

    let broken = certs.pem("broken.pem", "CERTIFICATE", "!!!not base64!!!");
    assert!(matches!(
        Tls::load(&broken, Some(&key)),
        Err(TlsError::Pem { .. })
    ));

    // Well-formed PEM around a key that is not one.
    let junk_key = certs.pem("junk.key", "PRIVATE KEY", "AAECAwQFBgcICQ==");
    assert!(matches!(
        Tls::load(&cert, Some(&junk_key)),
        Err(TlsError::BadKey { .. })
    ));

    // A certificate that is not DER inside: refused when matched against the key.
    let junk_cert = certs.pem("junk.crt", "CERTIFICATE", "AAECAwQFBgcICQ==");
    assert!(matches!(
        Tls::load(&junk_cert, Some(&key)),
        Err(TlsError::BadCertificate { .. })
    ));
}
