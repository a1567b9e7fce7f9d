//! Signed envelopes for every application message on the network.
//!
//! An envelope carries the sender's PeerId, a sequence number, a timestamp,
//! the message kind and its JSON body, signed with the sender's node key
//! (the libp2p identity, so the PeerId names the key that must verify).
//! Receivers drop forged (bad signature), stale (timestamp outside the
//! freshness window) and replayed (the same `(boot, seq)` seen within the
//! window) messages, and count each. The window bounds what must be
//! remembered; nothing requires sequences to increase, so a sender whose
//! counter jumps, or who restarts (a new `boot`), is never locked out.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{BTreeSet, HashMap};

/// An application message as it travels. The body stays raw JSON: the
/// signature covers its bytes as they travel, so checking it needs no
/// re-serialisation, and it is decoded once, into its typed form.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Envelope {
    pub from: String,
    /// The sender's public key (protobuf encoding, base64url); must hash to `from`.
    pub key: String,
    /// Random per process start of the sender: `(boot, seq)` names one message.
    #[serde(default)]
    pub boot: u64,
    pub seq: u64,
    /// Unix microseconds at the sender.
    pub ts: i64,
    pub kind: String,
    pub body: Box<RawValue>,
    pub sig: String,
}

/// Why an envelope was dropped (a metric label each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    Malformed,
    BadSignature,
    Replay,
    Stale,
    /// The receiver's bounded memory for this author is full.
    Overload,
}

impl Drop {
    pub fn label(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::BadSignature => "bad_signature",
            Drop::Replay => "replay",
            Drop::Stale => "stale",
            Drop::Overload => "overload",
        }
    }
}

fn signed_bytes(from: &str, boot: u64, seq: u64, ts: i64, kind: &str, body: &RawValue) -> Vec<u8> {
    serde_json::to_vec(&(from, boot, seq, ts, kind, body)).expect("serializable")
}

impl Envelope {
    /// Builds and signs an envelope.
    pub fn seal(key: &Keypair, boot: u64, seq: u64, ts: i64, kind: &str, body: serde_json::Value) -> Self {
        let body = RawValue::from_string(body.to_string()).expect("a JSON value is valid JSON");
        Self::seal_raw(key, boot, seq, ts, kind, body)
    }

    /// Builds and signs an envelope around JSON text as it is (a body that
    /// carries signed records must travel byte for byte).
    pub fn seal_raw(key: &Keypair, boot: u64, seq: u64, ts: i64, kind: &str, body: Box<RawValue>) -> Self {
        let from = key.public().to_peer_id().to_string();
        let sig = key.sign(&signed_bytes(&from, boot, seq, ts, kind, &body)).expect("ed25519 signs");
        Self {
            key: B64.encode(key.public().encode_protobuf()),
            from,
            boot,
            seq,
            ts,
            kind: kind.to_string(),
            body,
            sig: B64.encode(sig),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serializable")
    }

    /// Replaces the body without signing it again (tests forge with it).
    pub fn replace_body(&mut self, body: &serde_json::Value) {
        self.body = RawValue::from_string(body.to_string()).expect("a JSON value is valid JSON");
    }

    /// The body as a JSON value.
    pub fn body_value(&self) -> serde_json::Value {
        serde_json::from_str(self.body.get()).expect("a raw value is valid JSON")
    }

    /// Decodes and checks the signature (not freshness: see [`ReplayGuard`]).
    pub fn open(bytes: &[u8]) -> Result<(Self, PeerId), Drop> {
        let env: Envelope = serde_json::from_slice(bytes).map_err(|_| Drop::Malformed)?;
        let peer = env.verify()?;
        Ok((env, peer))
    }

    /// Checks the signature of an envelope already decoded (one that came
    /// inside a request-response message); returns the signer.
    pub fn verify(&self) -> Result<PeerId, Drop> {
        let key_bytes = B64.decode(&self.key).map_err(|_| Drop::Malformed)?;
        let key = PublicKey::try_decode_protobuf(&key_bytes).map_err(|_| Drop::Malformed)?;
        let peer = key.to_peer_id();
        if peer.to_string() != self.from {
            return Err(Drop::BadSignature);
        }
        let sig = B64.decode(&self.sig).map_err(|_| Drop::Malformed)?;
        if !key.verify(&signed_bytes(&self.from, self.boot, self.seq, self.ts, &self.kind, &self.body), &sig) {
            return Err(Drop::BadSignature);
        }
        Ok(peer)
    }
}

/// Whether timestamp `ts` is within `window_us` of `now_us` (all in
/// microseconds; no overflow for any input).
pub fn fresh(ts: i64, now_us: i64, window_us: i64) -> bool {
    now_us.abs_diff(ts) <= window_us.unsigned_abs()
}

/// Freshness and replay protection per author: a message is fresh when its
/// timestamp is within `window_us` of the receiver's clock, and new when its
/// `(boot, seq)` was not seen from that author within the window. Memory is
/// bounded by the window (entries older than it are pruned) and by caps on
/// authors and entries per author (a full author's new messages are refused
/// rather than forgetting old ones, which would reopen replays).
#[derive(Debug)]
pub struct ReplayGuard {
    seen: HashMap<PeerId, BTreeSet<(i64, u64, u64)>>,
    window_us: i64,
    max_authors: usize,
    max_per_author: usize,
}

impl ReplayGuard {
    pub fn new(window_us: i64) -> Self {
        Self { seen: HashMap::new(), window_us, max_authors: 65_536, max_per_author: 4_096 }
    }

    pub fn fresh(&self, ts: i64, now_us: i64) -> bool {
        fresh(ts, now_us, self.window_us)
    }

    /// Checks without remembering (cheap, before the signature is checked).
    pub fn check(&self, peer: &PeerId, boot: u64, seq: u64, ts: i64, now_us: i64) -> Result<(), Drop> {
        if !self.fresh(ts, now_us) {
            return Err(Drop::Stale);
        }
        if self.seen.get(peer).is_some_and(|s| s.contains(&(ts, boot, seq))) {
            return Err(Drop::Replay);
        }
        Ok(())
    }

    /// Checks and remembers; call once the message is otherwise accepted.
    pub fn accept(&mut self, peer: PeerId, boot: u64, seq: u64, ts: i64, now_us: i64) -> Result<(), Drop> {
        self.check(&peer, boot, seq, ts, now_us)?;
        let horizon = now_us.saturating_sub(self.window_us);
        if !self.seen.contains_key(&peer) && self.seen.len() >= self.max_authors {
            self.seen.retain(|_, s| s.last().is_some_and(|e| e.0 >= horizon));
            if self.seen.len() >= self.max_authors {
                return Err(Drop::Overload);
            }
        }
        let set = self.seen.entry(peer).or_default();
        // Prune what left the window: a replay of it is stale anyway.
        while set.first().is_some_and(|e| e.0 < horizon) {
            set.pop_first();
        }
        if set.len() >= self.max_per_author {
            return Err(Drop::Overload);
        }
        set.insert((ts, boot, seq));
        Ok(())
    }
}

/// Sequence numbers of this process, with its random boot id.
#[derive(Debug)]
pub struct Sequencer {
    pub boot: u64,
    seq: u64,
}

impl Sequencer {
    pub fn new(boot: u64) -> Self {
        Self { boot, seq: 0 }
    }

    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_envelope_opens() {
        let k = Keypair::generate_ed25519();
        let e = Envelope::seal(&k, 3, 7, 1000, "heartbeat", serde_json::json!({"a": 1}));
        let (back, peer) = Envelope::open(&e.to_bytes()).unwrap();
        assert_eq!(back.to_bytes(), e.to_bytes());
        assert_eq!(back.body_value(), serde_json::json!({"a": 1}));
        assert_eq!(peer, k.public().to_peer_id());
    }

    #[test]
    fn forgeries_are_refused() {
        let k = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let mut e = Envelope::seal(&k, 3, 7, 1000, "heartbeat", serde_json::json!({"a": 1}));
        e.replace_body(&serde_json::json!({"a": 2}));
        assert_eq!(Envelope::open(&e.to_bytes()).unwrap_err(), Drop::BadSignature);
        // Claiming to be someone else with one's own key.
        let mut e = Envelope::seal(&other, 3, 7, 1000, "heartbeat", serde_json::json!({}));
        e.from = k.public().to_peer_id().to_string();
        assert_eq!(Envelope::open(&e.to_bytes()).unwrap_err(), Drop::BadSignature);
        assert_eq!(Envelope::open(b"{not json").unwrap_err(), Drop::Malformed);
    }

    #[test]
    fn boot_is_signed() {
        let k = Keypair::generate_ed25519();
        let mut e = Envelope::seal(&k, 3, 7, 1000, "heartbeat", serde_json::json!({}));
        e.boot = 4;
        assert_eq!(Envelope::open(&e.to_bytes()).unwrap_err(), Drop::BadSignature);
    }

    #[test]
    fn replays_and_stale_messages_are_refused() {
        let p = Keypair::generate_ed25519().public().to_peer_id();
        let mut g = ReplayGuard::new(60_000);
        assert_eq!(g.accept(p, 1, 5, 1_000_000, 1_000_000), Ok(()));
        assert_eq!(g.accept(p, 1, 5, 1_000_000, 1_000_000), Err(Drop::Replay));
        assert_eq!(g.check(&p, 1, 5, 1_000_000, 1_000_001), Err(Drop::Replay));
        assert_eq!(g.accept(p, 1, 6, 1_000_000 - 60_001, 1_000_000), Err(Drop::Stale));
        assert_eq!(g.accept(p, 1, 6, 1_000_000 + 60_001, 1_000_000), Err(Drop::Stale));
        // Out of order within the window is fine; so is a jump.
        assert_eq!(g.accept(p, 1, 4, 1_000_000, 1_000_000), Ok(()));
        assert_eq!(g.accept(p, 1, u64::MAX, 1_000_000, 1_000_000), Ok(()));
        assert_eq!(g.accept(p, 1, 7, 1_000_001, 1_000_001), Ok(()), "a jump does not lock the sender out");
        // A restart: new boot, counter from 1 again.
        assert_eq!(g.accept(p, 2, 1, 1_000_002, 1_000_002), Ok(()));
    }

    #[test]
    fn extreme_timestamps_are_stale_not_a_panic() {
        let p = Keypair::generate_ed25519().public().to_peer_id();
        let mut g = ReplayGuard::new(60_000_000);
        for ts in [i64::MIN, i64::MAX, i64::MIN + 1] {
            for now in [0, i64::MAX, i64::MIN, 1_700_000_000_000_000] {
                if now.abs_diff(ts) > 60_000_000 {
                    assert_eq!(g.accept(p, 0, 1, ts, now), Err(Drop::Stale), "ts {ts} now {now}");
                }
            }
        }
    }

    #[test]
    fn memory_is_bounded_by_the_window() {
        let p = Keypair::generate_ed25519().public().to_peer_id();
        let mut g = ReplayGuard::new(1_000);
        for i in 0..10_000u64 {
            let t = i as i64 * 100;
            assert_eq!(g.accept(p, 0, i, t, t), Ok(()));
        }
        assert!(g.seen[&p].len() <= 11, "{}", g.seen[&p].len());
        let mut small = ReplayGuard { max_per_author: 3, ..ReplayGuard::new(1_000_000) };
        for i in 0..3 {
            small.accept(p, 0, i, 10, 10).unwrap();
        }
        assert_eq!(small.accept(p, 0, 9, 10, 10), Err(Drop::Overload));
    }
}
