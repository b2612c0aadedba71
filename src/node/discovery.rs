//! Discovery: PING from clients (UDP or TCP) answered with PONG on new connections, and the
//! node's own announcements (at start, when it becomes free or its service window opens, and
//! TERMINATED at shutdown).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;

use super::Node;
use crate::limits::{ping_limits, MAX_DATAGRAM, MAX_PONG_TARGETS};
use crate::net;
use crate::protocol::auth;
use crate::protocol::frame::split_tag;
use crate::protocol::message::{self, Ping, Pong};
use crate::protocol::pickle;

fn same_family(a: &IpAddr, b: &IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

impl Node {
    pub(crate) async fn serve_udp(self: Arc<Self>, sock: UdpSocket) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, peer) = match sock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (tag, body) = split_tag(&buf[..n]);
            match tag {
                b"PING" => self.on_ping(body, peer.ip().to_canonical()),
                // Our own and other nodes' announcements arrive here too; they need no answer.
                b"TERMINATED" | b"PULSE" | b"NODE_INFO" => {}
                _ => tracing::debug!(client = %peer, "ignored datagram"),
            }
        }
    }

    /// Handles a PING payload from `src`: PONG if we are free and the version matches.
    pub(crate) fn on_ping(self: &Arc<Self>, body: &[u8], src: IpAddr) {
        let ping = match pickle::decode_with(body, &ping_limits())
            .map_err(|e| e.to_string())
            .and_then(|v| Ping::from_value(&v).map_err(|e| e.to_string()))
        {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(client = %src, error = %e, "refused PING: malformed");
                return;
            }
        };
        if !message::version_accepted(&ping.version) {
            tracing::debug!(client = %src, version = %ping.version, "ignored PING from another dispy version");
            return;
        }
        // A PONG carries sha1(secret + the PING's sign): with this node's own sign, that is
        // the auth code of every request to it, which a peer without the secret would learn
        // from one datagram (the reference answers it). Real clients send signs of their own.
        if ping.sign.as_deref() == Some(self.sign.as_str()) {
            const KIND: &str =
                "refused PING carrying this node's own sign (a probe for its auth code)";
            if self.may_log(KIND) {
                tracing::warn!(client = %src, "{KIND}");
            }
            return;
        }
        {
            let st = self.lock();
            // One scheduler at a time: a busy node stays silent (§2.3.1, G12).
            if !st.computations.is_empty()
                || !st.jobs.is_empty()
                || st.avail_cpus == 0
                || st.serve == 0
            {
                tracing::debug!(client = %src, "PING while busy: not answered");
                return;
            }
        }
        // Outside the service window too (as the reference): a client that took the PONG
        // would only have its computation refused. The node announces itself at opening.
        if self.service() != super::timers::Service::Open {
            tracing::debug!(client = %src, "PING outside the service window: not answered");
            return;
        }
        let mut targets: Vec<IpAddr> = Vec::new();
        for a in ping
            .ip_addrs
            .iter()
            .filter_map(|a| net::parse_ip(a))
            .chain((!ping.relay).then_some(src))
        {
            if !targets.contains(&a) && targets.len() < MAX_PONG_TARGETS {
                targets.push(a);
            }
        }
        // A PING without a sign was relayed (dispynetrelay): like the reference, answer it
        // with the node's own PING, which makes each scheduler PING us itself.
        let Some(client_sign) = ping.sign.clone() else {
            for t in targets {
                let na = self
                    .addrs
                    .iter()
                    .find(|na| na.bind.is_unspecified() || same_family(&na.bind, &t));
                let Some(na) = na else { continue };
                let msg = message::announce(
                    &na.announce,
                    self.cfg.node_port,
                    &self.sign,
                    Some(&t.to_string()),
                );
                self.send_discovery(SocketAddr::new(t, ping.port), msg, src);
            }
            return;
        };
        let auth = auth::auth_code(&self.cfg.secret, &client_sign);
        for na in &self.addrs {
            let node_ip = na.bind;
            for t in &targets {
                if !node_ip.is_unspecified() && !same_family(&node_ip, t) {
                    continue;
                }
                let msg = Pong {
                    port: self.cfg.node_port,
                    sign: &self.sign,
                    name: &self.cfg.name,
                    cpus: self.lock().avail_cpus,
                    platform: &self.platform,
                    auth: &auth,
                    ip_addr: &na.announce,
                    scheduler_ip_addr: &t.to_string(),
                }
                .encode();
                if !self.send_discovery(SocketAddr::new(*t, ping.port), msg, src) {
                    return;
                }
            }
        }
    }

    /// Sends a PONG (or a relayed PING's answer) on a connection of its own, within the
    /// node's bound on those in flight; false when that bound dropped it.
    fn send_discovery(self: &Arc<Self>, addr: SocketAddr, msg: Vec<u8>, src: IpAddr) -> bool {
        let limit = self.msg_timeout();
        let node = self.clone();
        let Ok(slot) = self.pong_slots.clone().try_acquire_owned() else {
            tracing::debug!(client = %src, "PONG dropped: too many in flight");
            return false;
        };
        tokio::spawn(async move {
            let _slot = slot;
            match net::request(addr, &msg, false, limit, node.tls.as_ref()).await {
                Ok(_) => tracing::debug!(client = %addr, "discovery reply sent"),
                Err(e) => {
                    tracing::debug!(client = %addr, error = %e, "discovery reply not delivered")
                }
            }
        });
        true
    }

    /// Where the UDP announcement goes: broadcast, or loopback when we serve only loopback
    /// (broadcasts never reach it).
    fn announce_targets(&self, port: u16) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for a in &self.addrs {
            let t = match a.bind {
                IpAddr::V4(ip) if ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::BROADCAST),
                // IPv6 discovery uses the dispy multicast group.
                IpAddr::V6(ip) if ip.is_loopback() => a.bind,
                IpAddr::V6(_) => "ff05::b409:3171:9705:5134:6159".parse().unwrap_or(a.bind),
            };
            let sa = SocketAddr::new(t, port);
            if !out.contains(&sa) {
                out.push(sa);
            }
        }
        out
    }

    /// The start-up announcement to the scheduler port (and to `--scheduler_node`); outside
    /// the service window it waits for the window to open (`announce_available`).
    pub(crate) async fn announce_startup(self: Arc<Self>) {
        // Like the reference, give listeners a moment and clients a chance to be up.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if self.service() == super::timers::Service::Open {
            self.announce_available().await;
        }
    }

    /// Tells schedulers that the node can take a client: the broadcast (or loopback) to the
    /// scheduler port, and a direct PING to `--scheduler_node`.
    pub(crate) async fn announce_available(&self) {
        let port = self.cfg.scheduler_port;
        self.announce(port, None).await;
        if let Some(host) = self.cfg.scheduler_node.clone() {
            match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(addrs) => {
                    let ips: Vec<_> = addrs.map(|sa| sa.ip()).collect();
                    if let Some(ip) = crate::config::preferred_address(&ips) {
                        self.announce_to(SocketAddr::new(ip, port)).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(scheduler = %host, error = %e, "cannot resolve --scheduler_node")
                }
            }
        }
    }

    async fn announce(&self, port: u16, scheduler_ip: Option<&str>) {
        for (i, t) in self.announce_targets(port).into_iter().enumerate() {
            let a = &self.addrs[i.min(self.addrs.len() - 1)];
            let msg = message::announce(&a.announce, self.cfg.node_port, &self.sign, scheduler_ip);
            if let Err(e) = net::send_datagram(a.bind, t, &msg).await {
                tracing::debug!(target_addr = %t, error = %e, "announcement not sent");
            }
        }
    }

    /// Unicast UDP and TCP PING to a known scheduler, so it learns that we are (again) free.
    pub(crate) async fn announce_to(&self, sched: SocketAddr) {
        let a = &self.addrs[0];
        let ip = sched.ip().to_string();
        let msg = message::announce(&a.announce, self.cfg.node_port, &self.sign, Some(&ip));
        let _ = net::send_datagram(a.bind, sched, &msg).await;
        if let Err(e) =
            net::request(sched, &msg, false, self.msg_timeout(), self.tls.as_ref()).await
        {
            tracing::debug!(scheduler = %sched, error = %e, "TCP announcement not delivered");
        }
    }

    /// Tells the scheduler (TCP) and the network (UDP) that this node is going away.
    pub(crate) async fn announce_terminated(&self) {
        let (port, sched) = {
            let st = self.lock();
            (
                st.announce_port,
                st.scheduler.clone().or_else(|| {
                    st.last_scheduler_ip
                        .clone()
                        .map(|ip| (ip, st.announce_port))
                }),
            )
        };
        let a = &self.addrs[0];
        let msg = message::terminated(&a.announce, self.cfg.node_port, &self.sign);
        for t in self.announce_targets(port) {
            let _ = net::send_datagram(a.bind, t, &msg).await;
        }
        if let Some((ip, port)) = sched {
            if let Some(ip) = net::parse_ip(&ip) {
                let limit = self.msg_timeout().min(Duration::from_secs(2));
                let _ = net::request(
                    SocketAddr::new(ip, port),
                    &msg,
                    false,
                    limit,
                    self.tls.as_ref(),
                )
                .await;
            }
        }
    }
}
