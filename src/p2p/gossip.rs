//! Which gossip messages are accepted, as a pure decision (time is passed in).
//!
//! Order of the checks: cheap ones first (decode, freshness, replay lookup),
//! then the one signature check, then kind, body bounds, the author's
//! license (verified once per token, then only expiry and revocation),
//! and the author's rate. Nothing about the author is remembered until the
//! message is accepted, so a forged message cannot spend an honest author's
//! rate or replay slots.

use super::envelope::{Envelope, ReplayGuard};
use super::protocol::{self, Heartbeat, HEARTBEAT_KIND, RECORDS_KIND};
use crate::dauth::license::{Claims, TrustStore};
use libp2p::PeerId;
use std::collections::HashMap;

/// How a rejected message is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Invalid: dropped, not relayed, and the sender's gossipsub score pays.
    Reject,
    /// Dropped and not relayed, without penalty (e.g. a clock a little off).
    Ignore,
}

/// Why a message was dropped: a metric label each.
pub type Dropped = (&'static str, Severity);

/// An accepted message.
#[derive(Debug)]
pub struct Accepted {
    pub author: PeerId,
    pub envelope: Envelope,
    pub payload: Payload,
    /// The author's license claims (verified).
    pub claims: Claims,
}

/// What an accepted message carries.
#[derive(Debug)]
pub enum Payload {
    Heartbeat(Heartbeat),
    /// A CSTORE batch: its records are the service's to check (the body
    /// stays raw in the envelope).
    Records,
}

/// Which topic a message came on: each takes one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    Heartbeat,
    Cstore,
}

/// Limits of the gate.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    pub freshness_window_us: i64,
    /// Heartbeats per second an author may publish, sustained.
    pub rate_per_sec: f64,
    /// Heartbeats an author may publish in a burst.
    pub burst: f64,
    /// CSTORE batches per second an author may publish, sustained and in a burst.
    pub records_rate_per_sec: f64,
    pub records_burst: f64,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            freshness_window_us: 60_000_000,
            rate_per_sec: 2.0,
            burst: 20.0,
            // A writer's batches close every 10 ms at most (CSTORE's
            // gossip_flush): 100 per second, with room for bursts.
            records_rate_per_sec: 200.0,
            records_burst: 1000.0,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at_us: i64,
}

/// The gate's memory: replay window, verified licenses, rate buckets.
#[derive(Debug)]
pub struct GossipGate {
    guard: ReplayGuard,
    licenses: HashMap<PeerId, (String, Claims)>,
    heartbeats: RateLimit,
    records: RateLimit,
}

const MAX_AUTHORS: usize = 65_536;

impl GossipGate {
    pub fn new(cfg: GossipConfig) -> Self {
        Self {
            guard: ReplayGuard::new(cfg.freshness_window_us),
            licenses: HashMap::new(),
            heartbeats: RateLimit::new(cfg.rate_per_sec, cfg.burst, MAX_AUTHORS),
            records: RateLimit::new(cfg.records_rate_per_sec, cfg.records_burst, MAX_AUTHORS),
        }
    }

    /// Decides on one message. `source` is the gossipsub author; `admitted`
    /// the claims of that author if it is an admitted direct peer.
    pub fn check(
        &mut self,
        topic: Topic,
        source: Option<PeerId>,
        data: &[u8],
        admitted: Option<&Claims>,
        trust: &TrustStore,
        now_us: i64,
    ) -> Result<Accepted, Dropped> {
        use Severity::*;
        let author = source.ok_or(("anonymous", Reject))?;
        let max = match topic {
            Topic::Heartbeat => protocol::MAX_GOSSIP_BYTES,
            Topic::Cstore => protocol::MAX_SERVICE_GOSSIP_BYTES,
        };
        if data.len() > max {
            return Err(("oversized", Reject));
        }
        let env: Envelope = serde_json::from_slice(data).map_err(|_| ("malformed", Reject))?;
        self.guard.check(&author, env.boot, env.seq, env.ts, now_us).map_err(|d| (d.label(), Ignore))?;
        // The signer (whose key hashes to `env.from`) must be the author.
        if env.verify().map_err(|d| (d.label(), Reject))? != author {
            return Err(("bad_signature", Reject));
        }
        let unix = now_us.div_euclid(1_000_000);
        let (payload, claims) = match (topic, env.kind.as_str()) {
            (Topic::Heartbeat, HEARTBEAT_KIND) => {
                let hb: Heartbeat = protocol::decode_body(&env.body).map_err(|r| (r, Reject))?;
                let claims = match admitted {
                    Some(c) => {
                        trust.still_valid(c, unix).map_err(|_| ("not_licensed", Reject))?;
                        c.clone()
                    }
                    None => self.remote_license(author, &hb.license, trust, unix)?,
                };
                if !self.heartbeats.allow(author, now_us) {
                    return Err(("rate_limited", Reject));
                }
                (Payload::Heartbeat(hb), claims)
            }
            (Topic::Cstore, RECORDS_KIND) => {
                // A batch carries no license: its author must be admitted
                // here or known from a verified heartbeat (which may arrive
                // later: ignored, not punished).
                let claims = match admitted {
                    Some(c) => c.clone(),
                    None => self.licenses.get(&author).map(|(_, c)| c.clone()).ok_or(("unknown_author", Ignore))?,
                };
                trust.still_valid(&claims, unix).map_err(|_| ("not_licensed", Reject))?;
                if !self.records.allow(author, now_us) {
                    return Err(("rate_limited", Reject));
                }
                (Payload::Records, claims)
            }
            _ => return Err(("unknown_kind", Reject)),
        };
        self.guard.accept(author, env.boot, env.seq, env.ts, now_us).map_err(|d| (d.label(), Ignore))?;
        Ok(Accepted { author, envelope: env, payload, claims })
    }

    /// An author we are not connected to proves its license in its
    /// heartbeat: verified once per token, then only expiry and revocation.
    fn remote_license(
        &mut self,
        author: PeerId,
        token: &str,
        trust: &TrustStore,
        unix: i64,
    ) -> Result<Claims, Dropped> {
        if let Some((t, c)) = self.licenses.get(&author) {
            if t == token {
                trust.still_valid(c, unix).map_err(|_| ("not_licensed", Severity::Reject))?;
                return Ok(c.clone());
            }
        }
        let c = trust.verify(token, &author.to_string(), unix).map_err(|_| ("not_licensed", Severity::Reject))?;
        if self.licenses.len() >= MAX_AUTHORS {
            self.licenses.retain(|_, (_, c)| c.exp > unix);
            if self.licenses.len() >= MAX_AUTHORS {
                self.licenses.clear();
            }
        }
        self.licenses.insert(author, (token.to_string(), c.clone()));
        Ok(c)
    }

    /// Forgets an author's license (revoked or refused).
    pub fn forget(&mut self, author: &PeerId) {
        self.licenses.remove(author);
    }
}

/// A token bucket per peer: `rate` tokens a second, at most `burst`
/// saved. Memory is bounded: past `max_peers`, full buckets (which say
/// nothing) are forgotten.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    max_peers: usize,
    buckets: HashMap<PeerId, Bucket>,
}

impl RateLimit {
    pub fn new(rate: f64, burst: f64, max_peers: usize) -> Self {
        Self { rate, burst, max_peers, buckets: HashMap::new() }
    }

    /// Takes one of `peer`'s tokens at `now_us`; false when it has none.
    pub fn allow(&mut self, peer: PeerId, now_us: i64) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        if !self.buckets.contains_key(&peer) && self.buckets.len() >= self.max_peers {
            self.buckets.retain(|_, b| b.tokens + now_us.saturating_sub(b.at_us) as f64 / 1e6 * rate < burst);
        }
        let b = self.buckets.entry(peer).or_insert(Bucket { tokens: burst, at_us: now_us });
        let elapsed = now_us.saturating_sub(b.at_us).max(0) as f64 / 1e6;
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at_us = now_us.max(b.at_us);
        if b.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dauth::license::{issue, key_id, Class};
    use libp2p_identity::{ed25519, Keypair};
    use std::collections::BTreeSet;

    struct Fixture {
        issuer: ed25519::Keypair,
        trust: TrustStore,
        key: Keypair,
        now: i64,
    }

    impl Fixture {
        fn new() -> Self {
            let issuer = ed25519::Keypair::generate();
            let trust = TrustStore::new([issuer.public()], []);
            Self { issuer, trust, key: Keypair::generate_ed25519(), now: 1_700_000_000_000_000 }
        }
        fn license(&self, key: &Keypair, exp_in: i64) -> String {
            let s = self.now / 1_000_000;
            issue(
                &self.issuer,
                &Claims {
                    id: "nd-1".into(),
                    class: Class::Nd,
                    peer: key.public().to_peer_id().to_string(),
                    iat: s - 10,
                    exp: s + exp_in,
                    iss: key_id(&self.issuer.public()),
                },
            )
        }
        fn heartbeat(&self, key: &Keypair, seq: u64, ts: i64, license: &str) -> Vec<u8> {
            let body = serde_json::json!({"license": license, "licenseId": "nd-1", "class": "ND", "roles": ["worker"],
                "node": "n", "offer": {}, "version": "0.1.0", "addrs": []});
            Envelope::seal(key, 1, seq, ts, HEARTBEAT_KIND, body).to_bytes()
        }
        fn src(&self) -> Option<PeerId> {
            Some(self.key.public().to_peer_id())
        }
    }

    fn reason(r: Result<Accepted, Dropped>) -> &'static str {
        match r {
            Ok(_) => "accepted",
            Err((r, _)) => r,
        }
    }

    #[test]
    fn a_licensed_heartbeat_is_accepted_once() {
        let f = Fixture::new();
        let mut g = GossipGate::new(GossipConfig::default());
        let bytes = f.heartbeat(&f.key, 1, f.now, &f.license(&f.key, 3600));
        assert_eq!(reason(g.check(Topic::Heartbeat, f.src(), &bytes, None, &f.trust, f.now)), "accepted");
        // The very same bytes again (a replay) are dropped.
        assert_eq!(reason(g.check(Topic::Heartbeat, f.src(), &bytes, None, &f.trust, f.now + 10)), "replay");
        // The sender's next one passes.
        let next = f.heartbeat(&f.key, 2, f.now + 20, &f.license(&f.key, 3600));
        assert_eq!(reason(g.check(Topic::Heartbeat, f.src(), &next, None, &f.trust, f.now + 30)), "accepted");
    }

    #[test]
    fn unlicensed_forged_unknown_and_stale_messages_are_dropped() {
        let f = Fixture::new();
        let mut g = GossipGate::new(GossipConfig::default());
        // No license at all, even from a direct peer that is not admitted.
        assert_eq!(
            reason(g.check(Topic::Heartbeat, f.src(), &f.heartbeat(&f.key, 1, f.now, ""), None, &f.trust, f.now)),
            "not_licensed"
        );
        // Someone else's license.
        let other = Keypair::generate_ed25519();
        let stolen = f.license(&other, 3600);
        assert_eq!(
            reason(g.check(Topic::Heartbeat, f.src(), &f.heartbeat(&f.key, 2, f.now, &stolen), None, &f.trust, f.now)),
            "not_licensed"
        );
        // An expired license.
        let old = f.license(&f.key, -1);
        assert_eq!(
            reason(g.check(Topic::Heartbeat, f.src(), &f.heartbeat(&f.key, 3, f.now, &old), None, &f.trust, f.now)),
            "not_licensed"
        );
        // Signed by someone else than the gossipsub author.
        let lic = f.license(&f.key, 3600);
        let theirs = f.heartbeat(&other, 4, f.now, &lic);
        assert_eq!(reason(g.check(Topic::Heartbeat, f.src(), &theirs, None, &f.trust, f.now)), "bad_signature");
        // A tampered body.
        let mut env: Envelope = serde_json::from_slice(&f.heartbeat(&f.key, 5, f.now, &lic)).unwrap();
        let mut body = env.body_value();
        body["node"] = "x".into();
        env.replace_body(&body);
        assert_eq!(reason(g.check(Topic::Heartbeat, f.src(), &env.to_bytes(), None, &f.trust, f.now)), "bad_signature");
        // An unknown kind.
        let odd = Envelope::seal(&f.key, 1, 6, f.now, "whatever", serde_json::json!({})).to_bytes();
        assert_eq!(reason(g.check(Topic::Heartbeat, f.src(), &odd, None, &f.trust, f.now)), "unknown_kind");
        // ts = i64::MIN: stale, not a panic.
        let min = f.heartbeat(&f.key, 7, i64::MIN, &lic);
        assert_eq!(
            g.check(Topic::Heartbeat, f.src(), &min, None, &f.trust, f.now).unwrap_err(),
            ("stale", Severity::Ignore)
        );
        assert_eq!(reason(g.check(Topic::Heartbeat, f.src(), b"{", None, &f.trust, f.now)), "malformed");
        assert_eq!(
            reason(g.check(Topic::Heartbeat, None, &f.heartbeat(&f.key, 8, f.now, &lic), None, &f.trust, f.now)),
            "anonymous"
        );
        assert_eq!(reason(g.check(Topic::Heartbeat, f.src(), &vec![b' '; 20_000], None, &f.trust, f.now)), "oversized");
    }

    #[test]
    fn a_license_expiring_or_revoked_while_in_use_stops_acceptance() {
        let f = Fixture::new();
        let mut g = GossipGate::new(GossipConfig::default());
        let lic = f.license(&f.key, 5);
        assert_eq!(
            reason(g.check(Topic::Heartbeat, f.src(), &f.heartbeat(&f.key, 1, f.now, &lic), None, &f.trust, f.now)),
            "accepted"
        );
        let later = f.now + 6_000_000;
        assert_eq!(
            reason(g.check(Topic::Heartbeat, f.src(), &f.heartbeat(&f.key, 2, later, &lic), None, &f.trust, later)),
            "not_licensed"
        );
        // Revocation of a cached license, and of an admitted peer's.
        let lic = f.license(&f.key, 3600);
        assert_eq!(
            reason(g.check(Topic::Heartbeat, f.src(), &f.heartbeat(&f.key, 3, f.now, &lic), None, &f.trust, f.now)),
            "accepted"
        );
        f.trust.set_revoked(BTreeSet::from([(key_id(&f.issuer.public()), "nd-1".to_string())]));
        assert_eq!(
            reason(g.check(Topic::Heartbeat, f.src(), &f.heartbeat(&f.key, 4, f.now, &lic), None, &f.trust, f.now)),
            "not_licensed"
        );
        let claims = crate::dauth::license::decode(&lic).unwrap().0;
        let hb = f.heartbeat(&f.key, 5, f.now, "");
        assert_eq!(reason(g.check(Topic::Heartbeat, f.src(), &hb, Some(&claims), &f.trust, f.now)), "not_licensed");
    }

    #[test]
    fn authors_are_rate_limited_and_recover() {
        let f = Fixture::new();
        let mut g = GossipGate::new(GossipConfig { rate_per_sec: 1.0, burst: 3.0, ..Default::default() });
        let lic = f.license(&f.key, 3600);
        let mut seq = 0;
        let mut send = |g: &mut GossipGate, at: i64| {
            seq += 1;
            reason(g.check(Topic::Heartbeat, f.src(), &f.heartbeat(&f.key, seq, at, &lic), None, &f.trust, at))
        };
        for _ in 0..3 {
            assert_eq!(send(&mut g, f.now), "accepted");
        }
        assert_eq!(send(&mut g, f.now), "rate_limited");
        assert_eq!(send(&mut g, f.now + 1_000_000), "accepted", "one token per second");
        assert_eq!(send(&mut g, f.now + 1_000_001), "rate_limited");
        // A forged message claiming the author spends nothing of its budget.
        let other = Keypair::generate_ed25519();
        let mut forged: Envelope = serde_json::from_slice(&f.heartbeat(&other, 99, f.now, &lic)).unwrap();
        forged.from = f.key.public().to_peer_id().to_string();
        for _ in 0..10 {
            assert_eq!(
                reason(g.check(Topic::Heartbeat, f.src(), &forged.to_bytes(), None, &f.trust, f.now + 3_000_000)),
                "bad_signature"
            );
        }
        assert_eq!(send(&mut g, f.now + 3_000_000), "accepted");
    }

    #[test]
    fn record_batches_need_a_known_licensed_author_and_their_own_topic_and_rate() {
        let f = Fixture::new();
        let mut g =
            GossipGate::new(GossipConfig { records_rate_per_sec: 1.0, records_burst: 2.0, ..Default::default() });
        let batch = |seq: u64| Envelope::seal(&f.key, 1, seq, f.now, RECORDS_KIND, serde_json::json!({"records": []}));
        let check = |g: &mut GossipGate, seq: u64| {
            reason(g.check(Topic::Cstore, f.src(), &batch(seq).to_bytes(), None, &f.trust, f.now))
        };
        // An author we know nothing of yet: ignored (its heartbeat may come later).
        assert_eq!(check(&mut g, 1), "unknown_author");
        let lic = f.license(&f.key, 3600);
        assert_eq!(
            reason(g.check(Topic::Heartbeat, f.src(), &f.heartbeat(&f.key, 2, f.now, &lic), None, &f.trust, f.now)),
            "accepted"
        );
        assert_eq!(check(&mut g, 3), "accepted");
        assert_eq!(check(&mut g, 4), "accepted");
        assert_eq!(check(&mut g, 5), "rate_limited");
        // Each topic takes its own kind only.
        let hb = f.heartbeat(&f.key, 6, f.now, &lic);
        assert_eq!(reason(g.check(Topic::Cstore, f.src(), &hb, None, &f.trust, f.now)), "unknown_kind");
        assert_eq!(
            reason(g.check(Topic::Heartbeat, f.src(), &batch(7).to_bytes(), None, &f.trust, f.now)),
            "unknown_kind"
        );
        // A batch larger than a heartbeat may be, within its own bound.
        let big = Envelope::seal(
            &f.key,
            1,
            8,
            f.now,
            RECORDS_KIND,
            serde_json::json!({"records": [], "pad": "x".repeat(100_000)}),
        );
        assert_eq!(reason(g.check(Topic::Heartbeat, f.src(), &big.to_bytes(), None, &f.trust, f.now)), "oversized");
        let huge = vec![b' '; protocol::MAX_SERVICE_GOSSIP_BYTES + 1];
        assert_eq!(reason(g.check(Topic::Cstore, f.src(), &huge, None, &f.trust, f.now)), "oversized");
    }
}
