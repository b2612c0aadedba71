//! Connections that have not yet shown the auth prefix, counted per source and in all.
//!
//! The node serves at most `MAX_CONNECTIONS` at once, and a peer without the secret may hold
//! each of its connections for up to two `msg_timeout`s (TLS handshake, then the 40-byte
//! prefix). One such peer reopening idle connections kept every slot taken, and real clients
//! waited in the backlog for tens of seconds. Now a new connection over a source's share (or
//! over the share of all sources) evicts the *oldest* connection still waiting for its
//! prefix, rather than being refused: a real client authenticates right after connecting, so
//! it is never the oldest waiting, even when it shares its address with the idle peer (NAT,
//! loopback). Pure: no I/O, no clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// What one source is: an IPv4 address, or an IPv6 /64 (one host may own a whole /64).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Source {
    V4(u32),
    V6Prefix(u64),
}

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => Source::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

#[derive(Default)]
struct Waiting {
    next_id: u64,
    /// Every waiting connection, oldest first (ids only grow): its source and the sender
    /// whose drop evicts it.
    all: BTreeMap<u64, (Source, oneshot::Sender<()>)>,
    /// Each source's waiting connections, oldest first.
    by_source: HashMap<Source, VecDeque<u64>>,
}

impl Waiting {
    fn remove(&mut self, id: u64) -> bool {
        let Some((source, _evict)) = self.all.remove(&id) else {
            return false;
        };
        if let Some(ids) = self.by_source.get_mut(&source) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_source.remove(&source);
            }
        }
        true
    }
}

/// Tracks the connections waiting for their auth prefix.
#[derive(Clone)]
pub(crate) struct UnauthLimit {
    waiting: Arc<Mutex<Waiting>>,
    per_source: usize,
    total: usize,
}

/// Held while a connection has not authenticated; dropping it frees its place. `evicted`
/// completes when a newer connection took that place: the connection is to be closed.
pub(crate) struct Ticket {
    waiting: Arc<Mutex<Waiting>>,
    id: u64,
    pub(crate) evicted: oneshot::Receiver<()>,
}

impl UnauthLimit {
    pub(crate) fn new(per_source: usize, total: usize) -> UnauthLimit {
        UnauthLimit {
            waiting: Arc::default(),
            per_source: per_source.max(1),
            total: total.max(1),
        }
    }

    /// A ticket for a new connection from `ip`, and how many older waiting connections it
    /// evicted to stay within the shares (0 or 1, 2 when both were full).
    pub(crate) fn admit(&self, ip: IpAddr) -> (Ticket, usize) {
        let source = Source::of(ip);
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted = 0;
        let oldest_of_source =
            |w: &Waiting| w.by_source.get(&source).and_then(|q| q.front().copied());
        if w.by_source.get(&source).map_or(0, VecDeque::len) >= self.per_source {
            if let Some(id) = oldest_of_source(&w) {
                evicted += usize::from(w.remove(id));
            }
        }
        if w.all.len() >= self.total {
            if let Some(id) = w.all.keys().next().copied() {
                evicted += usize::from(w.remove(id));
            }
        }
        let id = w.next_id;
        w.next_id += 1;
        let (tx, rx) = oneshot::channel();
        w.all.insert(id, (source, tx));
        w.by_source.entry(source).or_default().push_back(id);
        (
            Ticket {
                waiting: self.waiting.clone(),
                id,
                evicted: rx,
            },
            evicted,
        )
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        (w.all.len(), w.by_source.len())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        w.remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn is_evicted(t: &mut Ticket) -> bool {
        // The sender is dropped on eviction: the receiver reports it closed.
        matches!(
            t.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        )
    }

    #[test]
    fn a_source_over_its_share_loses_its_oldest_waiting_connection() {
        let l = UnauthLimit::new(3, 10);
        let mut held: Vec<Ticket> = (0..3).map(|_| l.admit(ip("10.0.0.1")).0).collect();
        assert!(!held.iter_mut().any(is_evicted));
        // the IPv4-mapped form is the same source
        let (mut newest, n) = l.admit(ip("::ffff:10.0.0.1"));
        assert_eq!(n, 1);
        assert!(is_evicted(&mut held[0]), "the oldest goes");
        assert!(!is_evicted(&mut held[1]) && !is_evicted(&mut held[2]));
        assert!(!is_evicted(&mut newest));
        // another source is not affected
        let (mut other, n) = l.admit(ip("10.0.0.2"));
        assert_eq!(n, 0);
        assert!(!is_evicted(&mut other));
        drop(held);
        drop(newest);
        drop(other);
        assert_eq!(l.held(), (0, 0), "every ticket dropped: nothing counted");
    }

    #[test]
    fn a_connection_that_authenticated_is_out_of_the_count() {
        let l = UnauthLimit::new(2, 10);
        let (a, _) = l.admit(ip("10.0.0.1"));
        let (mut b, _) = l.admit(ip("10.0.0.1"));
        drop(a); // it showed its prefix
        let (_c, n) = l.admit(ip("10.0.0.1"));
        assert_eq!(n, 0);
        assert!(!is_evicted(&mut b));
    }

    #[test]
    fn an_ipv6_source_is_its_slash_64() {
        let l = UnauthLimit::new(2, 10);
        let (mut a, _) = l.admit(ip("2001:db8:1:2::1"));
        let (_b, _) = l.admit(ip("2001:db8:1:2:ffff::9"));
        let (_c, n) = l.admit(ip("2001:db8:1:2:dead:beef::1"));
        assert_eq!(n, 1);
        assert!(is_evicted(&mut a));
        let (_d, n) = l.admit(ip("2001:db8:1:3::1"));
        assert_eq!(n, 0, "another /64");
    }

    #[test]
    fn the_total_is_capped_across_sources_oldest_first() {
        let l = UnauthLimit::new(5, 4);
        let mut held: Vec<Ticket> = (1..=4)
            .map(|i| l.admit(ip(&format!("10.0.0.{i}"))).0)
            .collect();
        let (_t, n) = l.admit(ip("10.0.0.9"));
        assert_eq!(n, 1);
        assert!(is_evicted(&mut held[0]));
        assert!(!held[1..].iter_mut().any(is_evicted));
        assert_eq!(l.held().0, 4);
    }
}
