//! Signed envelopes for every application message on the network.
//!
//! An envelope carries the sender's PeerId, a sequence number, a timestamp,
//! the message kind and its JSON body, signed with the sender's node key
//! (the libp2p identity, so the PeerId names the key that must verify).
//! Receivers drop forged (bad signature), replayed (sequence not above the
//! last one seen from that sender) and stale (timestamp outside the window)
//! messages, and count each.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// An application message as it travels.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Envelope {
    pub from: String,
    /// The sender's public key (protobuf encoding, base64url); must hash to `from`.
    pub key: String,
    pub seq: u64,
    /// Unix microseconds at the sender.
    pub ts: i64,
    pub kind: String,
    pub body: serde_json::Value,
    pub sig: String,
}

/// Why an envelope was dropped (a metric label each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    Malformed,
    BadSignature,
    Replay,
    Stale,
}

impl Drop {
    pub fn label(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::BadSignature => "bad_signature",
            Drop::Replay => "replay",
            Drop::Stale => "stale",
        }
    }
}

fn signed_bytes(from: &str, seq: u64, ts: i64, kind: &str, body: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&(from, seq, ts, kind, body)).expect("serializable")
}

impl Envelope {
    /// Builds and signs an envelope.
    pub fn seal(key: &Keypair, seq: u64, ts: i64, kind: &str, body: serde_json::Value) -> Self {
        let from = key.public().to_peer_id().to_string();
        let sig = key.sign(&signed_bytes(&from, seq, ts, kind, &body)).expect("ed25519 signs");
        Self {
            key: B64.encode(key.public().encode_protobuf()),
            from,
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
        if !key.verify(&signed_bytes(&self.from, self.seq, self.ts, &self.kind, &self.body), &sig) {
            return Err(Drop::BadSignature);
        }
        Ok(peer)
    }
}

/// Per-sender freshness: sequence numbers strictly increase, timestamps
/// within `window_us` of the receiver's clock (all in microseconds).
#[derive(Debug)]
pub struct ReplayGuard {
    last: HashMap<PeerId, u64>,
    window_us: i64,
}

impl ReplayGuard {
    pub fn new(window_us: i64) -> Self {
        Self { last: HashMap::new(), window_us }
    }

    /// Accepts `seq`/`ts` from `peer` at `now_us`, remembering it.
    pub fn check(&mut self, peer: PeerId, seq: u64, ts: i64, now_us: i64) -> Result<(), Drop> {
        if (now_us - ts).abs() > self.window_us {
            return Err(Drop::Stale);
        }
        match self.last.get(&peer) {
            Some(&last) if seq <= last => Err(Drop::Replay),
            _ => {
                self.last.insert(peer, seq);
                Ok(())
            }
        }
    }
}

/// Sequence numbers that keep increasing across restarts: they start from
/// the clock (microseconds) and count up from there.
#[derive(Debug)]
pub struct Sequencer(u64);

impl Sequencer {
    pub fn new(now_micros: u64) -> Self {
        Self(now_micros)
    }

    pub fn next_seq(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_envelope_opens() {
        let k = Keypair::generate_ed25519();
        let e = Envelope::seal(&k, 7, 1000, "heartbeat", serde_json::json!({"a": 1}));
        let (back, peer) = Envelope::open(&e.to_bytes()).unwrap();
        assert_eq!(back, e);
        assert_eq!(peer, k.public().to_peer_id());
    }

    #[test]
    fn forgeries_are_refused() {
        let k = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let mut e = Envelope::seal(&k, 7, 1000, "heartbeat", serde_json::json!({"a": 1}));
        e.body = serde_json::json!({"a": 2});
        assert_eq!(Envelope::open(&e.to_bytes()).unwrap_err(), Drop::BadSignature);
        // Claiming to be someone else with one's own key.
        let mut e = Envelope::seal(&other, 7, 1000, "heartbeat", serde_json::json!({}));
        e.from = k.public().to_peer_id().to_string();
        assert_eq!(Envelope::open(&e.to_bytes()).unwrap_err(), Drop::BadSignature);
        assert_eq!(Envelope::open(b"{not json").unwrap_err(), Drop::Malformed);
    }

    #[test]
    fn replays_and_stale_messages_are_refused() {
        let p = Keypair::generate_ed25519().public().to_peer_id();
        let mut g = ReplayGuard::new(60_000);
        assert_eq!(g.check(p, 5, 1_000_000, 1_000_000), Ok(()));
        assert_eq!(g.check(p, 5, 1_000_000, 1_000_000), Err(Drop::Replay));
        assert_eq!(g.check(p, 4, 1_000_000, 1_000_000), Err(Drop::Replay));
        assert_eq!(g.check(p, 6, 1_000_000 - 60_001, 1_000_000), Err(Drop::Stale));
        assert_eq!(g.check(p, 6, 1_000_000, 1_000_000), Ok(()));
    }
}
