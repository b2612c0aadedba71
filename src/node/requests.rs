//! Requests on the node port: one per connection, after the 40-byte auth prefix. The prefix is
//! checked before anything is parsed; without it only PING is looked at.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use nix::sys::stat::Mode;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::chunk_writer::ChunkWriter;
use super::{now, worker, Computation, Node, RunningJob};
use crate::limits::{MAX_REQUEST, MAX_UNAUTH_REQUEST, WORKER_START};
use crate::net::{self, NetError};
use crate::protocol::auth::same_auth;
use crate::protocol::frame::{split_tag, AUTH_LEN, FILE_CHUNK};
use crate::protocol::message::{Cleanup, Compute};
use crate::protocol::message::{ComputeKind, ComputeRequest, Job, XferFile};
use crate::protocol::pickle::{self, Value};
use crate::store::{self, Dir};

type Conn = crate::tls::Stream;

/// The reference's answer to a COMPUTE it cannot use.
const INVALID_COMPUTE: &str = "Invalid computation request ignored";

impl Node {
    /// Serves one connection; `unauth` is its place among the connections not yet
    /// authenticated, given up once its prefix is right. While it waits for that prefix, a
    /// newer connection may evict it (see `unauth_limit`): it is closed then.
    pub(crate) async fn serve_connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        mut unauth: super::unauth_limit::Ticket,
    ) {
        // Dual-stack sockets (systemd's) show IPv4 clients as ::ffff:a.b.c.d.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let t = self.msg_timeout();
        let handshake = async {
            let mut s: Conn = match crate::tls::accept(self.tls.as_ref(), tcp, t).await {
                Ok(s) => s,
                Err(e) => {
                    const KIND: &str = "refused connection: TLS handshake failed";
                    if self.may_log(KIND) {
                        tracing::info!(client = %peer, error = %e, "{KIND}");
                    }
                    return None;
                }
            };
            let mut prefix = [0u8; AUTH_LEN];
            if let Err(e) = net::read_exact(&mut s, &mut prefix, t).await {
                tracing::debug!(client = %peer, error = %e, "connection dropped before the auth prefix");
                return None;
            }
            Some((s, prefix))
        };
        let evicted = |peer: SocketAddr| {
            tracing::debug!(client = %peer, "connection closed before its auth prefix: a newer one took its place");
        };
        let (mut s, prefix) = tokio::select! {
            r = handshake => match r {
                Some(x) => x,
                None => return,
            },
            _ = &mut unauth.evicted => return evicted(peer),
        };
        let authed = same_auth(&prefix, &self.auth);
        // Without the right prefix it may still send one PING, and stays evictable meanwhile.
        let mut unauth = (!authed).then_some(unauth);
        let limit = if authed {
            MAX_REQUEST
        } else {
            MAX_UNAUTH_REQUEST
        };
        // Held until this request is handled: a large body counts against the node's budget.
        let mut _budget = None;
        let frame = match &mut unauth {
            Some(ticket) => tokio::select! {
                r = net::read_frame(&mut s, limit, t) => r,
                _ = &mut ticket.evicted => return evicted(peer),
            },
            None => net::read_frame_within(&mut s, limit, t, &self.request_budget)
                .await
                .map(|(frame, permit)| {
                    _budget = permit;
                    frame
                }),
        };
        let msg = match frame {
            Ok(m) => m,
            Err(e) => {
                const KIND: &str = "refused request: unreadable frame";
                if self.may_log(KIND) {
                    tracing::info!(client = %peer, authenticated = authed, error = %e, "{KIND}");
                }
                return;
            }
        };
        let (tag, body) = split_tag(&msg);
        if !authed {
            if tag == b"PING" {
                self.on_ping(body, peer.ip().to_canonical());
            } else {
                const KIND: &str = "refused request: wrong auth (secret mismatch?)";
                if self.may_log(KIND) {
                    tracing::warn!(client = %peer, request = %String::from_utf8_lossy(&tag[..tag.len().min(20)]), "{KIND}");
                }
            }
            return;
        }
        // The zombie clock is reset by what only the scheduler can do: a request that a
        // registered computation accepts (each handler touches), a delivered reply, a PULSE
        // answered; not by any request with the node's secret, which would let anyone keep a
        // dead client's computation, and so the node, taken for good.
        let r = match tag {
            b"PING" => {
                self.on_ping(body, peer.ip().to_canonical());
                Ok(())
            }
            b"COMPUTE" => self.on_compute(&mut s, body, peer).await,
            b"FILEXFER" => self.on_filexfer(&mut s, body, peer).await,
            b"SETUP" => self.on_setup(&mut s, body, peer).await,
            b"JOB" => self.on_job(&mut s, body, peer).await,
            b"TERMINATE_JOB" => {
                self.on_terminate(body, peer).await;
                Ok(())
            }
            b"CLOSE" => self.on_close(&mut s, body, peer).await,
            b"JOBS" => self.on_jobs(&mut s, body).await,
            b"PENDING_JOBS" => {
                let v = self.pending_jobs_value(body).await;
                self.reply_pickle(&mut s, &v).await
            }
            b"RETRIEVE_JOB" => self.on_retrieve_job(&mut s, body, peer).await,
            b"RESEND_JOB_RESULTS" => self.on_resend_results(&mut s, body, peer).await,
            b"NODE_STATUS" | b"NODE_INFO" | b"SET_CPUS" | b"SERVICE_TIME" | b"SERVE_CLIENTS" => {
                // Admin requests need an admin secret, which this node does not offer.
                self.reply_pickle(&mut s, &Value::Int(-1)).await
            }
            _ => {
                let head = &msg[..msg.len().min(10)];
                tracing::info!(client = %peer, "refused request: unknown command");
                let text = format!("NAK (invalid command: {})", py_bytes_repr(head));
                net::write_frame(&mut s, text.as_bytes(), t).await
            }
        };
        if let Err(e) = r {
            tracing::info!(client = %peer, error = %e, "request failed");
        }
        let _ = s.shutdown().await;
    }

    async fn reply_raw(&self, s: &mut Conn, text: &str) -> Result<(), NetError> {
        net::write_frame(s, text.as_bytes(), self.msg_timeout()).await
    }

    async fn reply_pickle(&self, s: &mut Conn, v: &Value) -> Result<(), NetError> {
        net::write_frame(s, &pickle::encode(v), self.msg_timeout()).await
    }

    async fn on_compute(
        self: &Arc<Self>,
        s: &mut Conn,
        body: &[u8],
        peer: SocketAddr,
    ) -> Result<(), NetError> {
        let compute = match decode_as(body, Compute::from_value) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(client = %peer, error = %e, "refused COMPUTE: malformed");
                return self.reply_raw(s, INVALID_COMPUTE).await;
            }
        };
        let Some(addr) = self.addr_for(&compute.node_ip_addr).cloned() else {
            tracing::warn!(client = %peer, node_ip_addr = %compute.node_ip_addr, "refused COMPUTE: not our address");
            return self
                .reply_raw(
                    s,
                    &format!("Invalid node address: {}", compute.node_ip_addr),
                )
                .await;
        };
        let Some(sched_ip) = net::parse_ip(&compute.scheduler_ip_addr) else {
            tracing::warn!(client = %peer, scheduler = %compute.scheduler_ip_addr, "refused COMPUTE: scheduler address is not an IP");
            return self.reply_raw(s, INVALID_COMPUTE).await;
        };
        let busy: Option<Value> = {
            let st = self.lock();
            match &st.scheduler {
                Some((ip, port))
                    if *ip != compute.scheduler_ip_addr || *port != compute.scheduler_port =>
                {
                    tracing::info!(client = %peer, "refused COMPUTE: node busy with another scheduler");
                    Some(Value::Str("Node busy".into()))
                }
                Some(_) if st.computations.contains_key(&compute.id) => {
                    tracing::info!(client = %peer, computation = compute.id, "refused COMPUTE: already registered");
                    Some(Value::Int(0))
                }
                _ if st.serve == 0 => {
                    tracing::info!(client = %peer, "refused COMPUTE: serve limit reached");
                    Some(Value::Int(-1))
                }
                _ if self.service() != super::timers::Service::Open => {
                    tracing::info!(client = %peer, "refused COMPUTE: outside the service window");
                    Some(Value::Int(-1))
                }
                _ => None,
            }
        };
        if let Some(v) = busy {
            return self.reply_pickle(s, &v).await;
        }
        let max = self.live().max_file_size;
        if let Some(xf) = compute
            .xfer_files
            .iter()
            .find(|xf| max > 0 && xf.size > max)
        {
            tracing::info!(client = %peer, file = %xf.name, "refused COMPUTE: file too big");
            return self
                .reply_raw(
                    s,
                    &format!("File \"{}\" is too big; limit is {}", xf.name, max),
                )
                .await;
        }
        let dir = match self.make_compute_dir(&compute) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(client = %peer, computation = compute.id, error = %e, "refused COMPUTE: destination path");
                return self.reply_raw(s, "Could not create destination path").await;
            }
        };
        let mut compute = compute;
        if compute.kind == ComputeKind::Program {
            let base = compute
                .name
                .rsplit(['/', '\\'])
                .next()
                .unwrap_or("")
                .to_owned();
            if store::check_component(&base).is_err() {
                let _ = store::remove_tree(&dir);
                return self.reply_raw(s, INVALID_COMPUTE).await;
            }
            compute.name = dir.join(base).display().to_string();
        }
        let cgroup = self.computation_cgroup(&format!(
            "c{}_{}",
            compute.id,
            random_suffix().replace('_', "x")
        ));
        let worker = if compute.kind == ComputeKind::Function {
            match self
                .start_worker(&compute, &dir, &addr.announce, cgroup.as_ref())
                .await
            {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(client = %peer, computation = compute.id, error = %e, "refused COMPUTE: code");
                    let _ = store::remove_tree(&dir);
                    return self.reply_raw(s, "Invalid computation code").await;
                }
            }
        } else {
            None
        };
        let reply_addr = SocketAddr::new(sched_ip, compute.job_result_port);
        let id = compute.id;
        tracing::info!(
            client = %peer, computation = id, name = %compute.name,
            kind = ?compute.kind, dir = %dir.display(), "computation registered"
        );
        {
            let mut st = self.lock();
            st.scheduler = Some((compute.scheduler_ip_addr.clone(), compute.scheduler_port));
            st.last_activity = std::time::Instant::now();
            st.announce_port = compute.scheduler_port;
            st.last_scheduler_ip = Some(compute.scheduler_ip_addr.clone());
            st.computations.insert(
                id,
                Computation {
                    compute,
                    dir,
                    reply_ip: addr.announce.clone(),
                    reply_addr,
                    worker,
                    setup_done: false,
                    file_uses: Default::default(),
                    closing: false,
                    cgroup,
                    tally: Default::default(),
                },
            );
        }
        self.reply_pickle(s, &Value::Int(self.cfg.cpus as i64))
            .await
    }

    /// `<prefix>/<scheduler_ip>/<dest_path or id_random>`, never outside the prefix.
    fn make_compute_dir(&self, c: &Compute) -> Result<PathBuf, String> {
        let prefix = Dir::open(&self.cfg.dest_path_prefix).map_err(|e| e.to_string())?;
        let sched = prefix
            .subdir(
                std::slice::from_ref(&c.scheduler_ip_addr),
                Some(Mode::from_bits_truncate(0o711)),
            )
            .map_err(|e| e.to_string())?;
        let dir = match &c.dest_path {
            Some(p) => {
                let comps = store::relative_components(p, "/").map_err(|e| e.to_string())?;
                if comps.is_empty() {
                    return Err("empty dest_path".into());
                }
                sched
                    .subdir(&comps, Some(Mode::from_bits_truncate(0o770)))
                    .map_err(|e| e.to_string())?
            }
            None => {
                let mut last = String::new();
                let mut made = None;
                for _ in 0..16 {
                    let name = format!("{}_{}", c.id, random_suffix());
                    match sched.mkdir_new(&name, Mode::from_bits_truncate(0o770)) {
                        Ok(d) => {
                            made = Some(d);
                            break;
                        }
                        Err(e) => last = e.to_string(),
                    }
                }
                made.ok_or(last)?
            }
        };
        Ok(dir.path().to_owned())
    }

    pub(crate) async fn start_worker(
        self: &Arc<Self>,
        c: &Compute,
        dir: &std::path::Path,
        reply_ip: &str,
        cgroup: Option<&crate::sandbox::cgroup::ComputationCgroup>,
    ) -> Result<Arc<worker::Worker>, String> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let leaf = self
            .leaf_cgroup(cgroup, "worker")
            .map(|l| l.path().to_owned());
        let cmd = self.jailed(
            dir,
            leaf,
            worker::worker_env(),
            None,
            &self.python.exe,
            &worker::worker_args(),
        );
        let w = worker::Worker::spawn(cmd, tx).map_err(|e| e.to_string())?;
        let pid = w.pid.and_then(|p| i32::try_from(p).ok());
        if let Some(pid) = pid {
            self.procs.add(pid);
        }
        tokio::spawn(self.clone().worker_events(c.id, pid, rx));
        let client_addr = c
            .client_reply_addr
            .clone()
            .unwrap_or_else(|| (c.scheduler_ip_addr.clone(), c.job_result_port));
        let cleanup = match &c.cleanup {
            Cleanup::Flag(b) => json!(b),
            Cleanup::Function(f) => json!(f),
        };
        let header = json!({
            "op": "init",
            "code": c.code,
            "name": c.name,
            "setup": c.setup,
            "cleanup": cleanup,
            "dest_path": dir.display().to_string(),
            "node_name": self.cfg.name,
            "node_ip_addr": c.node_ip_addr,
            "reply_ip_addr": reply_ip,
            "client_addr": [client_addr.0, client_addr.1],
            "scheduler_addr": [c.scheduler_ip_addr, c.job_result_port],
            "max_file_size": self.live().max_file_size,
            // A result past what the daemon reads from the worker is refused by the job
            // itself (a frame that large would break the worker's stream).
            "max_result": crate::limits::MAX_RESULT,
            "msg_timeout": self.live().msg_timeout.as_secs_f64(),
            // Jobs verify the client with the certificate itself: they may not read the files.
            "cadata": self.tls.as_ref().map(|t| t.certificate_pem()),
            // With cgroups, spares are moved into job cgroups before their jobs come.
            "place_spares": cgroup.is_some(),
        });
        match w.control(header, &[], Some(WORKER_START)).await {
            Ok(r) if r.ok => Ok(w),
            Ok(r) => {
                w.kill();
                Err(r.error.unwrap_or_else(|| "worker refused the code".into()))
            }
            Err(e) => {
                w.kill();
                Err(e.to_string())
            }
        }
    }

    async fn on_filexfer(
        self: &Arc<Self>,
        s: &mut Conn,
        body: &[u8],
        peer: SocketAddr,
    ) -> Result<(), NetError> {
        let t = self.msg_timeout();
        let xf = match decode_as(body, XferFile::from_value) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(client = %peer, error = %e, "refused FILEXFER: malformed");
                return self.reply_pickle(s, &Value::Int(-1)).await;
            }
        };
        let dir = {
            let st = self.lock();
            xf.compute_id
                .and_then(|id| st.computations.get(&id))
                .filter(|c| !c.closing)
                .map(|c| c.dir.clone())
        };
        let Some(comp_dir) = dir else {
            tracing::warn!(client = %peer, file = %xf.name, "refused FILEXFER: unknown computation");
            return self.reply_pickle(s, &Value::Int(-1)).await;
        };
        self.touch();
        let max = self.live().max_file_size;
        if max > 0 && xf.size > max {
            tracing::warn!(client = %peer, file = %xf.name, size = xf.size, limit = max, "refused FILEXFER: over max_file_size");
            return self.reply_pickle(s, &Value::Int(-1)).await;
        }
        let target = store::relative_components(&xf.dest_path, &xf.sep)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                store::check_component(xf.base_name())
                    .map(|_| c)
                    .map_err(|e| e.to_string())
            });
        let comps = match target {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(client = %peer, file = %xf.name, dest_path = %xf.dest_path, error = %e, "refused FILEXFER: path escapes the computation directory");
                return self.reply_pickle(s, &Value::Int(-1)).await;
            }
        };
        let name = xf.base_name().to_owned();
        let rel: PathBuf = comps.iter().collect::<PathBuf>().join(&name);
        let dir = match Dir::open(&comp_dir)
            .and_then(|d| d.subdir(&comps, Some(Mode::from_bits_truncate(0o770))))
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(client = %peer, file = %xf.name, error = %e, "refused FILEXFER: cannot open target directory");
                return self.reply_pickle(s, &Value::Int(-1)).await;
            }
        };
        // Same file already here (e.g. a re-sent depends): just count the use (§2.2.3).
        if let Some((size, mtime)) = dir.file_stat(&name) {
            if size == xf.size && (mtime - xf.mtime).abs() <= 1.0 {
                self.count_use(xf.compute_id, &rel, true);
                tracing::debug!(client = %peer, file = %rel.display(), "file already present");
                return self.reply_pickle(s, &Value::Int(size as i64)).await;
            }
        }
        let (file, tmp) = match dir.create_temp(&name) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(client = %peer, file = %rel.display(), error = %e, "refused FILEXFER: cannot create file");
                return self.reply_pickle(s, &Value::Int(-1)).await;
            }
        };
        let std_file = file.try_clone().map_err(NetError::Io)?;
        let mut out = ChunkWriter::new(file, FILE_CHUNK.min(xf.size as usize)).await;
        let mut recvd: u64 = 0;
        let received: Result<(), NetError> = async {
            if xf.size > 0 {
                net::write_frame(s, &pickle::encode_int(0), t).await?;
            }
            while recvd < xf.size {
                let n = (xf.size - recvd).min(FILE_CHUNK as u64) as usize;
                let Some(mut buf) = out.buffer().await else {
                    break; // the writer failed: finish() says why
                };
                net::read_exact(s, &mut buf[..n], t).await?;
                recvd += n as u64;
                // Acked before it is written: the client sends the next chunk meanwhile. The
                // last chunk's answer is the final reply, once the file is complete.
                if recvd < xf.size {
                    net::write_frame(s, &pickle::encode_int(recvd as i64), t).await?;
                }
                if !out.write(buf, n).await {
                    break;
                }
            }
            Ok(())
        }
        .await;
        // Every queued chunk is on disk (or failed) before the file is kept or removed.
        let written = out.finish().await.map_err(NetError::Io);
        let result = received.and(written);
        if let Err(e) = result {
            let _ = dir.unlink(&tmp);
            tracing::warn!(client = %peer, file = %rel.display(), error = %e, "file transfer failed");
            return Err(e);
        }
        if let Err(e) = dir.finish_temp(&std_file, &tmp, &name, xf.mode, xf.atime, xf.mtime) {
            let _ = dir.unlink(&tmp);
            tracing::warn!(client = %peer, file = %rel.display(), error = %e, "file transfer failed");
            return self.reply_pickle(s, &Value::Int(-1)).await;
        }
        self.count_use(xf.compute_id, &rel, false);
        tracing::info!(client = %peer, computation = ?xf.compute_id, file = %rel.display(), size = xf.size, "file received");
        self.reply_pickle(s, &Value::Int(xf.size as i64)).await
    }

    fn count_use(&self, compute_id: Option<i64>, rel: &std::path::Path, existing: bool) {
        let mut st = self.lock();
        if let Some(c) = compute_id.and_then(|id| st.computations.get_mut(&id)) {
            let e = c
                .file_uses
                .entry(rel.to_owned())
                .or_insert(if existing { 1 } else { 0 });
            *e += 1;
        }
    }

    async fn on_setup(
        self: &Arc<Self>,
        s: &mut Conn,
        body: &[u8],
        peer: SocketAddr,
    ) -> Result<(), NetError> {
        let req = match pickle::decode(body) {
            Ok(v) if ComputeRequest::setup_args_ok(&v) => ComputeRequest::from_value(&v).ok(),
            _ => None,
        };
        let Some(req) = req else {
            tracing::warn!(client = %peer, "refused SETUP: malformed");
            return self.reply_raw(s, "invalid computation").await;
        };
        let found = {
            let st = self.lock();
            st.computations
                .get(&req.compute_id)
                .filter(|c| !c.closing)
                .map(|c| (c.worker.clone(), c.setup_done))
        };
        let Some((worker, already)) = found else {
            tracing::warn!(client = %peer, computation = req.compute_id, "refused SETUP: unknown computation");
            return self.reply_raw(s, "invalid computation").await;
        };
        self.touch();
        if already {
            return self.reply_raw(s, "invalid computation").await;
        }
        if let Some(w) = worker {
            // The raw payload goes to the worker: only it may unpickle setup_args (G10).
            match w.control(json!({"op": "setup"}), body, None).await {
                Ok(r) if r.ok => {}
                other => {
                    let text = match other {
                        Ok(r) => r.error.unwrap_or_else(|| "setup process failed".into()),
                        Err(_) => "setup process failed".into(),
                    };
                    tracing::warn!(client = %peer, computation = req.compute_id, error = %text, "setup failed; computation closed");
                    let r = self.reply_raw(s, &text).await;
                    self.close_computation(req.compute_id).await;
                    return r;
                }
            }
        }
        if let Some(c) = self.lock().computations.get_mut(&req.compute_id) {
            c.setup_done = true;
        }
        tracing::info!(client = %peer, computation = req.compute_id, "computation set up");
        self.reply_raw(s, "ACK").await
    }

    async fn on_job(
        self: &Arc<Self>,
        s: &mut Conn,
        body: &[u8],
        peer: SocketAddr,
    ) -> Result<(), NetError> {
        let job = match decode_as(body, Job::from_value) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(client = %peer, error = %e, "refused JOB: malformed");
                return self.reply_raw(s, &format!("Invalid job ({e})")).await;
            }
        };
        let max = self.live().max_file_size;
        let id = self.next_job_id();
        let checked: Result<(ComputeKind, PathBuf), String> = {
            let mut st = self.lock();
            let sched = st.scheduler.as_ref().map(|s| s.0.clone());
            let avail = st.avail_cpus;
            if st.computations.contains_key(&job.compute_id) {
                st.last_activity = std::time::Instant::now();
            }
            match st.computations.get(&job.compute_id) {
                None => Err("Invalid job (unknown computation)".into()),
                Some(c) if c.closing => Err("Invalid job (computation is closing)".into()),
                Some(c) if Some(&c.compute.scheduler_ip_addr) != sched.as_ref() => {
                    Err("Invalid scheduler for computation!".into())
                }
                Some(_) if avail == 0 => Err("All CPUs busy!".into()),
                Some(_) if self.service() != super::timers::Service::Open => {
                    Err("Node is outside its service window".into())
                }
                Some(c) if c.compute.kind == ComputeKind::Function && !c.setup_done => {
                    Err("Invalid job (computation is not set up)".into())
                }
                Some(_) if job.xfer_files.iter().any(|x| max > 0 && x.size > max) => {
                    let x = job
                        .xfer_files
                        .iter()
                        .find(|x| x.size > max)
                        .map(|x| x.name.clone())
                        .unwrap_or_default();
                    Err(format!("File {x} must be less than {max} in size"))
                }
                Some(c) => {
                    let kind = c.compute.kind;
                    let dir = c.dir.clone();
                    let xfer_files = job
                        .xfer_files
                        .iter()
                        .filter_map(|x| {
                            let comps = store::relative_components(&x.dest_path, &x.sep).ok()?;
                            Some(comps.iter().collect::<PathBuf>().join(x.base_name()))
                        })
                        .collect();
                    st.avail_cpus -= 1;
                    st.jobs.insert(
                        id,
                        RunningJob {
                            compute_id: job.compute_id,
                            uid: job.uid,
                            hash: job.hash.clone(),
                            start_time: now(),
                            terminated: false,
                            pid: None,
                            xfer_files,
                            finishing: false,
                            done_seen: false,
                            cgroup: None,
                        },
                    );
                    Ok((kind, dir))
                }
            }
        };
        let (kind, dir) = match checked {
            Ok(x) => x,
            Err(text) => {
                tracing::info!(client = %peer, computation = job.compute_id, reason = %text, "refused JOB");
                return self.reply_raw(s, &text).await;
            }
        };
        tracing::debug!(client = %peer, computation = job.compute_id, job = job.uid, "job started");
        // ACK before starting, and report a start failure as a Terminated reply (G28).
        let r = self.reply_raw(s, "ACK").await;
        match kind {
            ComputeKind::Function => self.start_function_job(id, &job).await,
            ComputeKind::Program => self.start_program_job(id, &job, &dir),
        }
        r
    }

    async fn on_terminate(self: &Arc<Self>, body: &[u8], peer: SocketAddr) {
        let Ok((uid, compute_id)) = decode_as(body, Job::ident_from_value) else {
            tracing::warn!(client = %peer, "refused TERMINATE_JOB: malformed");
            return;
        };
        let found = {
            let st = self.lock();
            st.jobs
                .iter()
                .find(|(_, j)| j.uid == uid && j.compute_id == compute_id)
                .map(|(id, _)| *id)
        };
        match found {
            Some(id) => {
                self.touch();
                tracing::info!(client = %peer, computation = compute_id, job = uid, "terminating job");
                self.terminate_job(id).await;
            }
            None => {
                tracing::debug!(client = %peer, job = uid, "TERMINATE_JOB for a job not running")
            }
        }
    }

    async fn on_close(
        self: &Arc<Self>,
        s: &mut Conn,
        body: &[u8],
        peer: SocketAddr,
    ) -> Result<(), NetError> {
        let Ok(req) = decode_as(body, ComputeRequest::from_value) else {
            tracing::warn!(client = %peer, "refused CLOSE: malformed");
            return self.reply_raw(s, "ACK").await;
        };
        let valid = {
            let mut st = self.lock();
            match st.computations.get_mut(&req.compute_id) {
                Some(c)
                    if req.auth.as_deref() == Some(c.compute.auth.as_str())
                        && req.node_ip_addr.as_deref() != Some(c.compute.node_ip_addr.as_str()) =>
                {
                    // As the reference: a CLOSE is for the address the computation came to.
                    tracing::warn!(client = %peer, computation = req.compute_id, node_ip_addr = ?req.node_ip_addr, "refused CLOSE: not for this computation's node address");
                    false
                }
                Some(c) if req.auth.as_deref() == Some(c.compute.auth.as_str()) => {
                    c.closing = true;
                    true
                }
                Some(_) => {
                    tracing::warn!(client = %peer, computation = req.compute_id, "refused CLOSE: wrong computation auth");
                    false
                }
                // Closing an unknown computation is normal after a failed setup (G27).
                None => false,
            }
        };
        if valid {
            self.touch();
            if req.terminate_pending {
                let ids: Vec<u64> = self
                    .lock()
                    .jobs
                    .iter()
                    .filter(|(_, j)| j.compute_id == req.compute_id)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.terminate_job(id).await;
                }
            }
            self.wait_jobs_done(req.compute_id).await;
            if req.close {
                self.close_computation(req.compute_id).await;
            } else {
                self.resetup_computation(req.compute_id).await;
            }
        }
        self.reply_raw(s, "ACK").await
    }

    async fn on_jobs(&self, s: &mut Conn, body: &[u8]) -> Result<(), NetError> {
        let Ok(req) = decode_as(body, ComputeRequest::from_value) else {
            return Ok(());
        };
        // Only to the computation's own auth (the reference answers others `[]` too): the
        // uids of another client's jobs are not theirs to see.
        let uids: Vec<Value> = {
            let mut st = self.lock();
            let owner = st
                .computations
                .get(&req.compute_id)
                .is_some_and(|c| req.auth.as_deref() == Some(c.compute.auth.as_str()));
            if owner {
                st.last_activity = std::time::Instant::now();
            }
            st.jobs
                .values()
                .filter(|j| owner && j.compute_id == req.compute_id)
                .map(|j| Value::Int(j.uid))
                .collect()
        };
        self.reply_pickle(s, &Value::List(uids)).await
    }

    /// Checks a saved-results request: its `auth` must be that of the registered computation
    /// or of saved results of that id. The answer holds only the results saved with that auth
    /// and whether the registered computation is the asker's (then its running jobs count).
    async fn saved_request(&self, body: &[u8]) -> Option<SavedRequest> {
        let req = decode_as(body, ComputeRequest::from_value).ok()?;
        let auth = req.auth.clone()?;
        let registered = self
            .lock()
            .computations
            .get(&req.compute_id)
            .is_some_and(|c| c.compute.auth == auth);
        if registered {
            self.touch();
        }
        let saved = self.saved_for(req.compute_id, &auth).await;
        if !registered && saved.is_empty() {
            return None;
        }
        Some(SavedRequest {
            req,
            auth,
            saved,
            registered,
        })
    }

    /// Running jobs of the asker's computation: none unless it is the registered one.
    fn running_for(&self, asked: &SavedRequest) -> usize {
        if asked.registered {
            self.unfinished_jobs(asked.req.compute_id)
        } else {
            0
        }
    }

    /// Jobs of a computation that are still running (not yet delivering their result).
    fn unfinished_jobs(&self, compute_id: i64) -> usize {
        self.lock()
            .jobs
            .values()
            .filter(|j| j.compute_id == compute_id && !j.finishing)
            .count()
    }

    async fn pending_jobs_value(&self, body: &[u8]) -> Value {
        let Some(asked) = self.saved_request(body).await else {
            return Value::str_dict([
                ("done", Value::List(Vec::new())),
                ("pending", Value::Int(0)),
            ]);
        };
        let running = self.running_for(&asked);
        // The reference caps the list at about 51 uids per answer.
        let done = asked
            .saved
            .iter()
            .take(51)
            .map(|r| Value::Int(r.uid))
            .collect();
        Value::str_dict([
            ("done", Value::List(done)),
            ("pending", Value::Int(running as i64)),
        ])
    }

    async fn on_retrieve_job(
        &self,
        s: &mut Conn,
        body: &[u8],
        peer: SocketAddr,
    ) -> Result<(), NetError> {
        let Some(SavedRequest { req, saved, .. }) = self.saved_request(body).await else {
            tracing::info!(client = %peer, "refused RETRIEVE_JOB: unknown computation or wrong auth");
            return self.reply_pickle(s, &Value::None).await;
        };
        let found = saved
            .into_iter()
            .find(|r| Some(r.uid) == req.uid && Some(&r.hash) == req.hash.as_ref());
        let Some(r) = found else {
            return self.reply_pickle(s, &Value::None).await;
        };
        // The payload is the pickled _JobReply itself; it is removed only once ACKed.
        net::write_frame(s, &r.payload, self.msg_timeout()).await?;
        let ack = net::read_frame(s, crate::limits::MAX_REPLY, self.msg_timeout()).await?;
        if ack == b"ACK" {
            self.forget_result(&r).await;
            tracing::info!(client = %peer, computation = r.compute_id, job = r.uid, "saved result retrieved");
        }
        Ok(())
    }

    async fn on_resend_results(
        self: &Arc<Self>,
        s: &mut Conn,
        body: &[u8],
        peer: SocketAddr,
    ) -> Result<(), NetError> {
        let Some(asked) = self.saved_request(body).await else {
            tracing::info!(client = %peer, "refused RESEND_JOB_RESULTS: unknown computation or wrong auth");
            return self.reply_pickle(s, &Value::Int(0)).await;
        };
        let running = self.running_for(&asked);
        let r = self
            .reply_pickle(s, &Value::Int((asked.saved.len() + running) as i64))
            .await;
        let n = self.clone();
        let computation = (asked.req.compute_id, asked.auth);
        tokio::spawn(async move { n.resend_results(Some(computation)).await });
        r
    }
}

/// A saved-results request (PENDING_JOBS, RETRIEVE_JOB, RESEND_JOB_RESULTS) whose auth
/// checked out.
struct SavedRequest {
    req: ComputeRequest,
    auth: String,
    /// The results saved for this computation id with this auth.
    saved: Vec<crate::results::SavedResult>,
    /// Whether the registered computation of this id is the asker's.
    registered: bool,
}

/// A request body unpickled and read as a typed message; the error is the text refusals log.
fn decode_as<T, E: std::fmt::Display>(
    body: &[u8],
    from_value: impl FnOnce(&Value) -> Result<T, E>,
) -> Result<T, String> {
    pickle::decode(body)
        .map_err(|e| e.to_string())
        .and_then(|v| from_value(&v).map_err(|e| e.to_string()))
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_";
    (0..8)
        .map(|_| ALPHABET[rand::random::<usize>() % ALPHABET.len()] as char)
        .collect()
}

/// Python's `repr()` of a bytes value, as the reference's NAK text shows it.
fn py_bytes_repr(b: &[u8]) -> String {
    let mut s = String::from("b'");
    for &c in b {
        match c {
            b'\\' => s.push_str("\\\\"),
            b'\'' => s.push_str("\\'"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push('\'');
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_repr() {
        assert_eq!(super::py_bytes_repr(b"AB'\\\x00\n"), "b'AB\\'\\\\\\x00\\n'");
    }
}
