//! Admission of peers, as a pure state machine (time is passed in).
//!
//! A peer is *pending* from its first connection until it proves a valid
//! license in a Hello, *admitted* while its license stays valid and it stays
//! connected, and *blocked* for a while once refused. The admission clock
//! belongs to the PeerId, not to a connection: it counts the time the peer
//! has been connected while pending, across connections, so hanging up and
//! redialling does not reset it and a silent peer is refused once it has
//! spent `timeout` connected; a licensed peer whose first connection broke
//! before its Hello is not punished for the time it was away. Every map is
//! bounded.

use crate::dauth::license::{Claims, TrustStore};
use libp2p::PeerId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Block after an admission timeout (see [`Admission::block_for`]).
pub const SHORT_BLOCK: Duration = Duration::from_secs(30);

/// Limits of the admission state.
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    /// Time from a peer's first connection to a valid Hello.
    pub timeout: Duration,
    /// How long a refused peer stays blocked.
    pub block: Duration,
    /// Peers awaiting admission at once; newcomers beyond are refused.
    pub max_pending: usize,
    /// Blocked peers remembered; the soonest to expire are released first.
    pub max_blocked: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(3), block: Duration::from_secs(300), max_pending: 256, max_blocked: 16_384 }
    }
}

/// What to do with a new connection.
#[derive(Debug, PartialEq, Eq)]
pub enum OnConnect {
    /// Admitted and still connected elsewhere: nothing to do.
    Admitted,
    /// Awaiting a Hello; `first` when this peer was not pending before
    /// (send our Hello).
    Pending { first: bool },
    /// Blocked, or too many pending: close it.
    Refuse(&'static str),
}

/// What the periodic tick found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// Peers to refuse now, with the reason.
    pub refuse: Vec<(PeerId, &'static str)>,
    /// Blocks that expired: unblock them in the swarm.
    pub unblock: Vec<PeerId>,
}

/// A pending peer's clock.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// Connected time already spent on earlier connections.
    spent: Duration,
    /// Since when it is connected now, if it is.
    since: Option<Instant>,
    /// When it was last seen (to forget long-gone pending peers).
    seen: Instant,
}

impl Clock {
    fn used(&self, now: Instant) -> Duration {
        self.spent + self.since.map(|s| now.saturating_duration_since(s)).unwrap_or_default()
    }
}

#[derive(Debug)]
pub struct Admission {
    cfg: AdmissionConfig,
    pending: HashMap<PeerId, Clock>,
    admitted: HashMap<PeerId, Claims>,
    blocked: HashMap<PeerId, Instant>,
}

impl Admission {
    pub fn new(cfg: AdmissionConfig) -> Self {
        Self { cfg, pending: HashMap::new(), admitted: HashMap::new(), blocked: HashMap::new() }
    }

    pub fn is_admitted(&self, peer: &PeerId) -> bool {
        self.admitted.contains_key(peer)
    }

    pub fn claims(&self, peer: &PeerId) -> Option<&Claims> {
        self.admitted.get(peer)
    }

    pub fn is_blocked(&self, peer: &PeerId) -> bool {
        self.blocked.contains_key(peer)
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn admitted_peers(&self) -> impl Iterator<Item = &PeerId> {
        self.admitted.keys()
    }

    /// A connection to `peer` was established; `others` is how many other
    /// connections to it are open.
    pub fn on_connected(&mut self, peer: PeerId, others: usize, now: Instant) -> OnConnect {
        if self.blocked.contains_key(&peer) {
            return OnConnect::Refuse("Blocked");
        }
        if others > 0 && self.admitted.contains_key(&peer) {
            return OnConnect::Admitted;
        }
        // A reconnecting admitted peer proves its license again (it may have
        // changed); its old admission ends with its last connection.
        self.admitted.remove(&peer);
        if let Some(c) = self.pending.get_mut(&peer) {
            let first = c.since.is_none();
            c.since.get_or_insert(now);
            c.seen = now;
            // `first`: a new connection after a gap: say Hello again.
            return OnConnect::Pending { first };
        }
        if self.pending.len() >= self.cfg.max_pending {
            // Forget pending peers gone for longer than a block lasts.
            let horizon = self.cfg.block;
            self.pending.retain(|_, c| c.since.is_some() || now.saturating_duration_since(c.seen) < horizon);
            if self.pending.len() >= self.cfg.max_pending {
                return OnConnect::Refuse("TooManyPending");
            }
        }
        self.pending.insert(peer, Clock { spent: Duration::ZERO, since: Some(now), seen: now });
        OnConnect::Pending { first: true }
    }

    /// The last connection to `peer` closed. Returns whether it had been
    /// admitted. A pending peer keeps the connected time it has spent.
    pub fn on_disconnected(&mut self, peer: &PeerId, now: Instant) -> bool {
        if let Some(c) = self.pending.get_mut(peer) {
            c.spent = c.used(now);
            c.since = None;
            c.seen = now;
        }
        self.admitted.remove(peer).is_some()
    }

    /// A valid Hello arrived. Returns whether the peer is newly admitted.
    pub fn admit(&mut self, peer: PeerId, claims: Claims) -> bool {
        if self.blocked.contains_key(&peer) {
            return false;
        }
        self.pending.remove(&peer);
        self.admitted.insert(peer, claims).is_none()
    }

    /// How long a refusal for `reason` blocks: a peer that only ran out of
    /// time (perhaps a licensed one on an overloaded path) is blocked
    /// briefly; one whose license failed, for the full block duration.
    pub fn block_for(&self, reason: &str) -> Duration {
        if reason == "AdmissionTimeout" {
            self.cfg.block.min(SHORT_BLOCK)
        } else {
            self.cfg.block
        }
    }

    /// Refuses `peer` for `reason`: forgotten as pending or admitted,
    /// blocked for [`Admission::block_for`]. Returns the peers whose blocks
    /// were dropped to stay within `max_blocked` (unblock them in the swarm).
    pub fn refuse(&mut self, peer: PeerId, reason: &str, now: Instant) -> Vec<PeerId> {
        self.pending.remove(&peer);
        self.admitted.remove(&peer);
        self.blocked.insert(peer, now + self.block_for(reason));
        let mut released = vec![];
        if self.blocked.len() > self.cfg.max_blocked {
            let mut by_expiry: Vec<(Instant, PeerId)> = self.blocked.iter().map(|(p, t)| (*t, *p)).collect();
            by_expiry.sort();
            for (_, p) in by_expiry.into_iter().take(self.blocked.len() - self.cfg.max_blocked) {
                if p != peer {
                    self.blocked.remove(&p);
                    released.push(p);
                }
            }
        }
        released
    }

    /// Deadlines, license expiry and revocation of admitted peers, expired
    /// blocks. `unix` is the wall clock in seconds (licenses use it).
    pub fn tick(&mut self, now: Instant, unix: i64, trust: &TrustStore) -> Tick {
        let mut out = Tick::default();
        for (p, clock) in &self.pending {
            if clock.used(now) >= self.cfg.timeout {
                out.refuse.push((*p, "AdmissionTimeout"));
            }
        }
        for (p, claims) in &self.admitted {
            if let Err(e) = trust.still_valid(claims, unix) {
                out.refuse.push((*p, e.reason()));
            }
        }
        self.blocked.retain(|p, until| {
            let keep = now < *until;
            if !keep {
                out.unblock.push(*p);
            }
            keep
        });
        out.refuse.sort();
        out.unblock.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dauth::license::Class;
    use std::collections::BTreeSet;

    fn peer() -> PeerId {
        libp2p_identity::Keypair::generate_ed25519().public().to_peer_id()
    }

    fn claims(exp: i64) -> Claims {
        Claims { id: "nd-1".into(), class: Class::Nd, peer: "p".into(), iat: 0, exp, iss: "0123456789abcdef".into() }
    }

    fn cfg() -> AdmissionConfig {
        AdmissionConfig {
            timeout: Duration::from_secs(3),
            block: Duration::from_secs(60),
            max_pending: 4,
            max_blocked: 3,
        }
    }

    #[test]
    fn a_silent_peer_is_refused_at_its_deadline_however_it_reconnects() {
        let t0 = Instant::now();
        let mut a = Admission::new(cfg());
        let p = peer();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(a.on_connected(p, 0, t0), OnConnect::Pending { first: true });
        // Stays 900 ms per connection, redials 100 ms later: the clock
        // keeps counting connected time across connections.
        for k in 0..3u64 {
            a.on_disconnected(&p, at(k * 1000 + 900));
            assert!(a.tick(at(k * 1000 + 950), 0, &TrustStore::default()).refuse.is_empty(), "{k}");
            assert_eq!(a.on_connected(p, 0, at(k * 1000 + 1000)), OnConnect::Pending { first: true });
        }
        // 2.7 s spent, 0.3 s more on this connection: refused.
        assert!(a.tick(at(3299), 0, &TrustStore::default()).refuse.is_empty());
        let tick = a.tick(at(3300), 0, &TrustStore::default());
        assert_eq!(tick.refuse, vec![(p, "AdmissionTimeout")]);
        a.refuse(p, "AdmissionTimeout", t0 + Duration::from_secs(3));
        assert_eq!(a.on_connected(p, 0, t0 + Duration::from_secs(4)), OnConnect::Refuse("Blocked"));
        // The (short) block ends.
        assert!(a.tick(t0 + Duration::from_secs(32), 0, &TrustStore::default()).unblock.is_empty());
        let tick = a.tick(t0 + Duration::from_secs(33), 0, &TrustStore::default());
        assert_eq!(tick.unblock, vec![p]);
        assert_eq!(a.on_connected(p, 0, t0 + Duration::from_secs(33)), OnConnect::Pending { first: true });
        // A license failure blocks for the full duration.
        a.refuse(p, "LicenseExpired", t0 + Duration::from_secs(40));
        assert!(a.tick(t0 + Duration::from_secs(99), 0, &TrustStore::default()).unblock.is_empty());
        assert_eq!(a.tick(t0 + Duration::from_secs(100), 0, &TrustStore::default()).unblock, vec![p]);
    }

    #[test]
    fn time_away_does_not_count_against_a_pending_peer() {
        let t0 = Instant::now();
        let mut a = Admission::new(cfg());
        let p = peer();
        a.on_connected(p, 0, t0);
        a.on_disconnected(&p, t0 + Duration::from_secs(1));
        assert!(a.tick(t0 + Duration::from_secs(60), 0, &TrustStore::default()).refuse.is_empty());
        assert_eq!(a.on_connected(p, 0, t0 + Duration::from_secs(60)), OnConnect::Pending { first: true });
        assert!(a.admit(p, claims(100)));
    }

    #[test]
    fn admitted_peers_are_rechecked_for_life() {
        let t0 = Instant::now();
        let mut a = Admission::new(cfg());
        let trust = TrustStore::default();
        let (p, q) = (peer(), peer());
        a.on_connected(p, 0, t0);
        a.on_connected(q, 0, t0);
        assert!(a.admit(p, claims(100)));
        assert!(a.admit(q, Claims { id: "nd-2".into(), ..claims(1000) }));
        assert!(!a.admit(p, claims(100)), "a second Hello is not a new admission");
        assert!(
            a.tick(t0 + Duration::from_secs(10), 99, &trust).refuse.is_empty(),
            "deadline does not apply once admitted"
        );
        assert_eq!(a.tick(t0, 100, &trust).refuse, vec![(p, "LicenseExpired")]);
        trust.set_revoked(BTreeSet::from([("0123456789abcdef".to_string(), "nd-2".to_string())]));
        let refuse = a.tick(t0, 50, &trust).refuse;
        assert!(refuse.contains(&(q, "LicenseRevoked")), "{refuse:?}");
    }

    #[test]
    fn a_reconnecting_admitted_peer_proves_its_license_again() {
        let t0 = Instant::now();
        let mut a = Admission::new(cfg());
        let p = peer();
        a.on_connected(p, 0, t0);
        a.admit(p, claims(100));
        assert_eq!(a.on_connected(p, 1, t0), OnConnect::Admitted, "a second connection of an admitted peer");
        assert!(a.on_disconnected(&p, t0));
        assert!(!a.is_admitted(&p), "forgotten when its last connection closes");
        assert_eq!(a.on_connected(p, 0, t0 + Duration::from_secs(100)), OnConnect::Pending { first: true });
    }

    #[test]
    fn pending_and_blocked_are_bounded() {
        let t0 = Instant::now();
        let mut a = Admission::new(cfg());
        let gone = peer();
        a.on_connected(gone, 0, t0);
        a.on_disconnected(&gone, t0);
        for _ in 0..3 {
            assert!(matches!(a.on_connected(peer(), 0, t0), OnConnect::Pending { .. }));
        }
        assert_eq!(a.on_connected(peer(), 0, t0), OnConnect::Refuse("TooManyPending"));
        // Pending peers long gone make room.
        assert!(matches!(a.on_connected(peer(), 0, t0 + Duration::from_secs(61)), OnConnect::Pending { .. }));
        let mut released = vec![];
        let first = peer();
        released.extend(a.refuse(first, "BadSignature", t0));
        for i in 1..5 {
            released.extend(a.refuse(peer(), "BadSignature", t0 + Duration::from_secs(i)));
        }
        assert_eq!(a.blocked.len(), 3);
        assert_eq!(released.len(), 2);
        assert!(released.contains(&first), "the soonest to expire goes first");
    }

    #[test]
    fn blocked_peers_are_not_admitted() {
        let t0 = Instant::now();
        let mut a = Admission::new(cfg());
        let p = peer();
        a.refuse(p, "WrongPeer", t0);
        assert!(!a.admit(p, claims(100)));
        assert!(!a.is_admitted(&p));
    }
}
