//! The node's clock-driven duties, checked once a second: the service window, PULSE to the
//! scheduler, and zombie detection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::TimeOfDay;
use crate::net;
use crate::protocol::pickle::{self, Value};

use super::Node;

/// How often undelivered results are offered again to their clients.
const RESEND_INTERVAL: Duration = Duration::from_secs(10);

/// Where the node stands in its daily service window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Jobs and new computations are welcome.
    Open,
    /// Past service_stop: no new computations or jobs; running jobs go on.
    Stopped,
    /// Outside the window (past service_end): running jobs are terminated.
    Ended,
}

/// Whether minute-of-day `t` lies in `[a, b)`, windows wrapping past midnight.
fn within(t: u32, a: u32, b: u32) -> bool {
    if a <= b {
        a <= t && t < b
    } else {
        t >= a || t < b
    }
}

/// The service state at minute-of-day `t` (pure, for tests).
pub fn service_at(
    t: u32,
    start: Option<TimeOfDay>,
    stop: Option<TimeOfDay>,
    end: Option<TimeOfDay>,
) -> Service {
    let m = |x: TimeOfDay| u32::from(x.hour) * 60 + u32::from(x.minute);
    let Some(start) = start.map(m) else {
        return Service::Open;
    };
    let (stop, end) = (stop.map(m), end.map(m));
    match (stop, end) {
        (None, None) => Service::Open,
        (Some(s), None) => {
            if within(t, start, s) {
                Service::Open
            } else {
                Service::Stopped
            }
        }
        (s, Some(e)) => {
            if !within(t, start, e) {
                Service::Ended
            } else if s.is_some_and(|s| !within(t, start, s)) {
                Service::Stopped
            } else {
                Service::Open
            }
        }
    }
}

/// Local minute of the day (service times are wall-clock times of the node).
// The libc crate marks `time_t` deprecated on musl targets (the packages' build) only to
// announce that its width will follow musl 1.2's 64-bit time_t; we hand it straight to
// localtime_r, so either width is right.
#[allow(deprecated)]
fn local_minute() -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    let mut tm: libc::tm = unsafe_zeroed_tm();
    let t: libc::time_t = now;
    // SAFETY: localtime_r only writes into the tm we pass and reads `t`.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        (tm.tm_hour as u32) * 60 + tm.tm_min as u32
    } else {
        ((now / 60) % 1440) as u32
    }
}

fn unsafe_zeroed_tm() -> libc::tm {
    // SAFETY: libc::tm is a plain C struct of integers (and a nullable pointer); all-zero is a
    // valid value.
    unsafe { std::mem::zeroed() }
}

impl Node {
    /// The current service state.
    pub(crate) fn service(&self) -> Service {
        service_at(
            local_minute(),
            self.live().service_start,
            self.live().service_stop,
            self.live().service_end,
        )
    }

    /// Runs until the process exits.
    pub(crate) async fn housekeeping(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_pulse = Instant::now();
        let mut last_resend = Instant::now();
        let mut last_service = self.service();
        loop {
            tick.tick().await;
            let service = self.service();
            if service != last_service {
                self.service_changed(service).await;
                last_service = service;
            }
            if last_pulse.elapsed() >= self.pulse_interval() {
                last_pulse = Instant::now();
                self.pulse().await;
            }
            self.check_zombie().await;
            if last_resend.elapsed() >= RESEND_INTERVAL && self.lock().saved_results > 0 {
                last_resend = Instant::now();
                tokio::spawn(self.clone().resend_results(None));
            }
        }
    }

    async fn service_changed(self: &Arc<Self>, service: Service) {
        tracing::info!(service = ?service, "service window changed");
        if service == Service::Open {
            // PINGs went unanswered while closed: tell schedulers now, if we are free.
            if self.lock().computations.is_empty() {
                self.announce_available().await;
            }
            return;
        }
        // Tell the scheduler we have no CPUs for it any more (NODE_CPUS, §2.3.6).
        let sched = self.lock().scheduler.clone();
        if let Some((ip, port)) = sched {
            let v = Value::str_dict([
                ("ip_addr", Value::Str(self.addrs[0].announce.clone())),
                ("sign", Value::Str(self.sign.clone())),
                ("cpus", Value::Int(0)),
            ]);
            let mut msg = b"NODE_CPUS:".to_vec();
            pickle::encode_into(&v, &mut msg);
            self.tell_scheduler(&ip, port, &msg).await;
        }
        if service == Service::Ended {
            let ids: Vec<u64> = self.lock().jobs.keys().copied().collect();
            for id in ids {
                tracing::info!("service window ended: terminating job");
                self.terminate_job(id).await;
            }
        }
    }

    /// min(client pulse_interval, zombie_interval/5, 600 s), as the reference computes it.
    fn pulse_interval(&self) -> Duration {
        let mut iv = Duration::from_secs(600);
        let zombie = self.live().zombie_interval;
        if !zombie.is_zero() {
            iv = iv.min((zombie / 5).max(Duration::from_secs(1)));
        }
        let st = self.lock();
        for c in st.computations.values() {
            if let Some(p) = c
                .compute
                .pulse_interval
                .filter(|p| p.is_finite() && *p >= 1.0)
            {
                iv = iv.min(Duration::from_secs_f64(p));
            }
        }
        iv
    }

    /// PULSE to the scheduler while it has computations here; its answer counts as activity.
    async fn pulse(&self) {
        let (sched, busy) = {
            let st = self.lock();
            if st.computations.is_empty() {
                return;
            }
            (
                st.scheduler.clone(),
                self.cfg.cpus.saturating_sub(st.avail_cpus),
            )
        };
        let Some((ip, port)) = sched else { return };
        let Some(ipa) = net::parse_ip(&ip) else {
            return;
        };
        let v = Value::str_dict([
            ("ip_addr", Value::Str(self.addrs[0].announce.clone())),
            ("port", Value::Int(i64::from(self.cfg.node_port))),
            ("cpus", Value::Int(busy as i64)),
            ("scheduler_ip_addr", Value::Str(ip.clone())),
            ("avail_info", Value::None),
        ]);
        let mut msg = b"PULSE:".to_vec();
        pickle::encode_into(&v, &mut msg);
        match net::request(
            SocketAddr::new(ipa, port),
            &msg,
            true,
            self.msg_timeout(),
            self.tls.as_ref(),
        )
        .await
        {
            Ok(Some(r)) if r == b"PULSE" => self.touch(),
            Ok(_) => tracing::debug!(scheduler = %ip, "PULSE not acknowledged"),
            Err(e) => tracing::debug!(scheduler = %ip, error = %e, "PULSE failed"),
        }
    }

    /// Records that the scheduler is alive.
    pub(crate) fn touch(&self) {
        self.lock().last_activity = Instant::now();
    }

    /// A scheduler silent for zombie_interval is presumed dead: its computations are closed
    /// once their jobs are done, and the node is free for others (§4.4).
    async fn check_zombie(self: &Arc<Self>) {
        let limit = self.live().zombie_interval;
        if limit.is_zero() {
            return;
        }
        let (idle, sched) = {
            let st = self.lock();
            if st.computations.is_empty() || st.last_activity.elapsed() < limit {
                return;
            }
            let idle: Vec<i64> = st
                .computations
                .keys()
                .filter(|id| !st.jobs.values().any(|j| j.compute_id == **id))
                .copied()
                .collect();
            (idle, st.scheduler.clone())
        };
        for id in idle {
            tracing::warn!(
                computation = id,
                "scheduler silent for the zombie interval: closing its computation"
            );
            if let Some(c) = self.lock().computations.get_mut(&id) {
                c.closing = true;
            }
            self.close_computation(id).await;
        }
        if self.lock().computations.is_empty() {
            if let Some((ip, port)) = sched {
                let a = &self.addrs[0];
                let msg = crate::protocol::message::terminated(
                    &a.announce,
                    self.cfg.node_port,
                    &self.sign,
                );
                self.tell_scheduler(&ip, port, &msg).await;
            }
        }
    }

    /// One message to the scheduler at `ip:port`, no answer awaited; best effort (an address
    /// that is not an IP, or a failed send, is ignored).
    async fn tell_scheduler(&self, ip: &str, port: u16, msg: &[u8]) {
        if let Some(ip) = net::parse_ip(ip) {
            let _ = net::request(
                SocketAddr::new(ip, port),
                msg,
                false,
                self.msg_timeout(),
                self.tls.as_ref(),
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: u8, m: u8) -> Option<TimeOfDay> {
        Some(TimeOfDay { hour: h, minute: m })
    }

    #[test]
    fn windows() {
        let m = |h: u32, mi: u32| h * 60 + mi;
        assert_eq!(service_at(m(3, 0), None, None, None), Service::Open);
        // 17:00 .. stop 06:00 .. end 08:00, over midnight.
        let w = |x| service_at(x, t(17, 0), t(6, 0), t(8, 0));
        assert_eq!(w(m(18, 0)), Service::Open);
        assert_eq!(w(m(2, 0)), Service::Open);
        assert_eq!(w(m(7, 0)), Service::Stopped);
        assert_eq!(w(m(9, 0)), Service::Ended);
        assert_eq!(w(m(16, 59)), Service::Ended);
        assert_eq!(w(m(17, 0)), Service::Open);
        // Daytime window with only a stop.
        let d = |x| service_at(x, t(9, 0), t(17, 0), None);
        assert_eq!(d(m(12, 0)), Service::Open);
        assert_eq!(d(m(18, 0)), Service::Stopped);
        assert_eq!(d(m(8, 59)), Service::Stopped);
        // Only an end.
        assert_eq!(
            service_at(m(12, 0), t(9, 0), None, t(10, 0)),
            Service::Ended
        );
    }
}
