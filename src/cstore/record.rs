//! CSTORE records as they are stored and travel: value, hybrid logical
//! clock, writer and the writer's signature, so that anyone can re-verify
//! and re-send a record it did not write. Pure: time is passed in.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::cmp::Ordering;

/// Longest key, hash name or field, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value (its JSON text), in bytes.
pub const MAX_VALUE_BYTES: usize = 32 * 1024;
/// Longest time to live.
pub const MAX_TTL_MS: i64 = 30 * 24 * 3600 * 1000;
/// Separates a hash name from its field in the stored key.
const FIELD_SEP: char = '\u{1f}';

/// A hybrid logical clock timestamp: unix milliseconds in the high 48 bits,
/// a counter in the low 16. Ordered as an integer, so it travels and
/// compares as one `u64`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hlc(pub u64);

impl Hlc {
    pub fn new(wall_ms: u64, counter: u16) -> Self {
        Self((wall_ms << 16) | counter as u64)
    }
    pub fn wall_ms(self) -> u64 {
        self.0 >> 16
    }
    pub fn counter(self) -> u16 {
        (self.0 & 0xffff) as u16
    }
}

/// The node's clock: never goes back, stays close to wall time, and is
/// ahead of every timestamp it has observed (Kulkarni et al., HLC).
#[derive(Debug, Default)]
pub struct Clock {
    last: Hlc,
}

impl Clock {
    /// A timestamp for a local event at wall time `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        let next = if now_ms > self.last.wall_ms() {
            Hlc::new(now_ms, 0)
        } else if self.last.counter() == u16::MAX {
            // Counter exhausted within one millisecond: borrow the next one.
            Hlc::new(self.last.wall_ms() + 1, 0)
        } else {
            Hlc(self.last.0 + 1)
        };
        self.last = next;
        next
    }

    /// Moves the clock past a received timestamp (the caller has checked
    /// that it is not too far in the future).
    pub fn observe(&mut self, seen: Hlc) {
        if seen > self.last {
            self.last = seen;
        }
    }
}

/// What a record is the value of: a flat key, or a field of a hash.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Slot {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Slot {
    pub fn flat(key: &str) -> Self {
        Self { key: key.into(), field: None }
    }
    pub fn field(hash: &str, field: &str) -> Self {
        Self { key: hash.into(), field: Some(field.into()) }
    }

    /// The key under the store's root: `k/<key>` or `h/<hash>␟<field>`.
    pub fn stored(&self) -> String {
        match &self.field {
            None => format!("k/{}", self.key),
            Some(f) => format!("h/{}{FIELD_SEP}{f}", self.key),
        }
    }

    /// Inverse of [`Slot::stored`].
    pub fn from_stored(s: &str) -> Option<Self> {
        if let Some(k) = s.strip_prefix("k/") {
            return Some(Self::flat(k));
        }
        let (h, f) = s.strip_prefix("h/")?.split_once(FIELD_SEP)?;
        Some(Self::field(h, f))
    }

    /// Stored prefix of every field of a hash.
    pub fn hash_prefix(hash: &str) -> String {
        format!("h/{hash}{FIELD_SEP}")
    }

    /// Whether this slot's key (or hash name) starts with `prefix`.
    pub fn matches(&self, prefix: &str) -> bool {
        self.key.starts_with(prefix)
    }

    /// Checks the key (and field) against the bounds and character set.
    pub fn validate(&self) -> Result<(), String> {
        check_name("key", &self.key)?;
        if let Some(f) = &self.field {
            check_name("field", f)?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            None => f.write_str(&self.key),
            Some(field) => write!(f, "{}[{field}]", self.key),
        }
    }
}

/// Keys, hash names and fields: 1 to [`MAX_KEY_BYTES`] bytes of printable
/// ASCII without spaces (they appear in URLs, logs and metric-free tables).
pub fn check_name(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.len() > MAX_KEY_BYTES {
        return Err(format!("{what} is {} bytes long, at most {MAX_KEY_BYTES} are allowed", s.len()));
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("{what} {s:?} contains {c:?}: only printable ASCII without spaces is allowed"));
    }
    Ok(())
}

/// Parses a value given as JSON text and checks its size.
pub fn parse_value(text: &str) -> Result<Box<RawValue>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("value is not JSON: {e}"))?;
    to_raw(&v)
}

/// A JSON value in its compact form, within [`MAX_VALUE_BYTES`].
pub fn to_raw(v: &serde_json::Value) -> Result<Box<RawValue>, String> {
    let s = v.to_string();
    if s.len() > MAX_VALUE_BYTES {
        return Err(format!("value is {} bytes of JSON, at most {MAX_VALUE_BYTES} are allowed", s.len()));
    }
    Ok(RawValue::from_string(s).expect("a JSON value is valid JSON"))
}

/// One stored value (or tombstone) with its provenance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    #[serde(flatten)]
    pub slot: Slot,
    /// `None`: deleted (a tombstone, kept until the GC horizon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Box<RawValue>>,
    pub hlc: Hlc,
    /// PeerId of the writer; its key signs the record.
    pub writer: String,
    /// Unix ms after which the record is gone (TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    pub sig: String,
}

impl PartialEq for Record {
    fn eq(&self, o: &Self) -> bool {
        self.slot == o.slot
            && self.value.as_ref().map(|v| v.get()) == o.value.as_ref().map(|v| v.get())
            && self.hlc == o.hlc
            && self.writer == o.writer
            && self.expires == o.expires
            && self.sig == o.sig
    }
}

fn signed_bytes(slot: &Slot, value: Option<&RawValue>, hlc: Hlc, writer: &str, expires: Option<i64>) -> Vec<u8> {
    serde_json::to_vec(&("r1cs1", &slot.key, &slot.field, value.map(|v| v.get()), hlc.0, writer, expires))
        .expect("serializable")
}

/// Why a record is refused (a metric label each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    Malformed,
    BadSignature,
    /// The key is outside what the writer may write (see `rules`).
    NotOwner,
    /// A revocation whose issuer proof does not verify.
    BadProof,
    /// A revocation by an issuer this node does not trust (networks may
    /// trust different issuers: not held against the carrier).
    UnknownIssuer,
    /// Timestamp too far ahead of our clock.
    Future,
}

impl Invalid {
    pub fn label(self) -> &'static str {
        match self {
            Invalid::Malformed => "malformed",
            Invalid::BadSignature => "bad_signature",
            Invalid::NotOwner => "not_owner",
            Invalid::BadProof => "bad_proof",
            Invalid::UnknownIssuer => "unknown_issuer",
            Invalid::Future => "future",
        }
    }
}

/// The public key inside an ed25519 PeerId (identity multihash).
pub fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(mh.digest()).ok()
}

impl Record {
    /// A record written and signed by `key`.
    pub fn sign(key: &Keypair, slot: Slot, value: Option<Box<RawValue>>, hlc: Hlc, expires: Option<i64>) -> Self {
        let writer = key.public().to_peer_id().to_string();
        let sig = key.sign(&signed_bytes(&slot, value.as_deref(), hlc, &writer, expires)).expect("ed25519 signs");
        Self { slot, value, hlc, writer, expires, sig: B64.encode(sig) }
    }

    /// Checks bounds and the writer's signature; returns the writer.
    pub fn verify(&self) -> Result<PeerId, Invalid> {
        self.slot.validate().map_err(|_| Invalid::Malformed)?;
        if self.value.as_ref().is_some_and(|v| v.get().len() > MAX_VALUE_BYTES) || self.sig.len() > 128 {
            return Err(Invalid::Malformed);
        }
        let writer: PeerId = self.writer.parse().map_err(|_| Invalid::Malformed)?;
        let key = public_key_of(&writer).ok_or(Invalid::Malformed)?;
        let sig = B64.decode(&self.sig).map_err(|_| Invalid::Malformed)?;
        let bytes = signed_bytes(&self.slot, self.value.as_deref(), self.hlc, &self.writer, self.expires);
        if !key.verify(&bytes, &sig) {
            return Err(Invalid::BadSignature);
        }
        Ok(writer)
    }

    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires.is_some_and(|e| e <= now_ms)
    }

    /// The value as a JSON value (tombstones: `null`).
    pub fn value_json(&self) -> serde_json::Value {
        self.value.as_ref().and_then(|v| serde_json::from_str(v.get()).ok()).unwrap_or(serde_json::Value::Null)
    }

    /// Identity of this version, for anti-entropy digests: 8 bytes of
    /// SHA-256 over slot, clock, writer and signature.
    pub fn version_hash(&self) -> u64 {
        let mut h = Sha256::new();
        h.update(self.slot.stored().as_bytes());
        h.update(self.hlc.0.to_be_bytes());
        h.update(self.writer.as_bytes());
        h.update(self.sig.as_bytes());
        u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serializable")
    }
}

/// The merge rule: last writer wins on (HLC, writer PeerId), so every
/// replica picks the same record whatever order they arrive in. A writer
/// never signs two records with one clock value; if a faulty one does, the
/// version hash decides, so replicas still agree.
pub fn newer(a: &Record, b: &Record) -> bool {
    (a.hlc, &a.writer, a.version_hash()).cmp(&(b.hlc, &b.writer, b.version_hash())) == Ordering::Greater
}

/// 8 bytes of SHA-256 over a stored key: names a slot in anti-entropy.
pub fn key_hash(stored: &str) -> u64 {
    u64::from_be_bytes(Sha256::digest(stored.as_bytes())[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Option<Box<RawValue>> {
        Some(parse_value(s).unwrap())
    }

    #[test]
    fn the_clock_never_goes_back_and_passes_what_it_saw() {
        let mut c = Clock::default();
        let a = c.tick(1_000);
        let b = c.tick(1_000);
        let d = c.tick(999);
        assert!(a < b && b < d);
        assert_eq!(d.wall_ms(), 1_000);
        c.observe(Hlc::new(5_000, 7));
        let e = c.tick(2_000);
        assert_eq!((e.wall_ms(), e.counter()), (5_000, 8));
        assert_eq!(c.tick(6_000), Hlc::new(6_000, 0));
        let mut full = Clock { last: Hlc::new(10, u16::MAX) };
        assert_eq!(full.tick(10), Hlc::new(11, 0));
    }

    #[test]
    fn a_signed_record_verifies_and_any_change_breaks_it() {
        let key = Keypair::generate_ed25519();
        let r = Record::sign(&key, Slot::field("node/x/apps", "a"), raw(r#"{"n":1}"#), Hlc::new(5, 0), Some(9));
        assert_eq!(r.verify().unwrap(), key.public().to_peer_id());
        let back: Record = serde_json::from_slice(&r.to_bytes()).unwrap();
        assert_eq!(back, r);
        assert!(back.verify().is_ok());
        let mut t = r.clone();
        t.value = raw(r#"{"n":2}"#);
        assert_eq!(t.verify(), Err(Invalid::BadSignature));
        let mut t = r.clone();
        t.hlc = Hlc::new(6, 0);
        assert_eq!(t.verify(), Err(Invalid::BadSignature));
        let mut t = r.clone();
        t.expires = None;
        assert_eq!(t.verify(), Err(Invalid::BadSignature));
        let mut t = r.clone();
        t.slot.field = Some("b".into());
        assert_eq!(t.verify(), Err(Invalid::BadSignature));
        let mut t = r.clone();
        t.writer = Keypair::generate_ed25519().public().to_peer_id().to_string();
        assert_eq!(t.verify(), Err(Invalid::BadSignature));
        let mut t = r;
        t.writer = "not-a-peer".into();
        assert_eq!(t.verify(), Err(Invalid::Malformed));
    }

    #[test]
    fn names_and_values_are_bounded() {
        assert!(check_name("key", "node/12D3/apps:v1").is_ok());
        assert!(check_name("key", "").is_err());
        assert!(check_name("key", "a b").is_err());
        assert!(check_name("key", "a\u{1f}b").is_err());
        assert!(check_name("key", &"k".repeat(MAX_KEY_BYTES + 1)).unwrap_err().contains("at most 256"));
        assert!(parse_value("{").unwrap_err().starts_with("value is not JSON"));
        assert!(parse_value(&format!("\"{}\"", "x".repeat(MAX_VALUE_BYTES))).is_err());
        assert_eq!(parse_value(r#"{ "a" : [1, 2] }"#).unwrap().get(), r#"{"a":[1,2]}"#);
    }

    #[test]
    fn stored_keys_round_trip() {
        for s in [Slot::flat("node/p/x"), Slot::field("node/p/h", "f/g")] {
            assert_eq!(Slot::from_stored(&s.stored()), Some(s));
        }
        assert!(Slot::field("a", "b").stored().starts_with(&Slot::hash_prefix("a")));
        assert!(!Slot::field("ab", "b").stored().starts_with(&Slot::hash_prefix("a")));
    }
}
