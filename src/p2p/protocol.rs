//! Messages of `/ratio1/dauth/1` and of the heartbeat topic. Everything
//! travels inside a signed [`Envelope`](super::envelope::Envelope).
//!
//! Everything from the wire is bounded twice: the codecs cap whole messages
//! ([`MAX_REQUEST_BYTES`], [`MAX_RESPONSE_BYTES`], [`MAX_GOSSIP_BYTES`]) and
//! each body is checked field by field ([`Bounded`]) before any of it is
//! used or stored.

use super::envelope::Envelope;
use crate::crd::NodeRole;
use crate::dauth::license::Class;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum Request {
    /// Admission: my license, on every new connection.
    Hello(Envelope),
    /// dAuth: a node asks an oracle for the network configuration.
    Auth(Envelope),
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum Response {
    Hello(Envelope),
    Auth(Envelope),
    /// `reason` is one of [`REFUSALS`]; anything else a peer sends is
    /// counted as `Other` ([`refusal_label`]).
    Refused {
        reason: String,
    },
}

/// Largest request (a Hello or a dAuth ask: an envelope with a license).
pub const MAX_REQUEST_BYTES: u64 = 8 * 1024;
/// Largest response (a dAuth answer lists oracles and peers).
pub const MAX_RESPONSE_BYTES: u64 = 256 * 1024;
/// Largest heartbeat.
pub const MAX_GOSSIP_BYTES: usize = 16 * 1024;
/// Largest gossip message of a service (a CSTORE batch of records).
pub const MAX_SERVICE_GOSSIP_BYTES: usize = 1024 * 1024;
/// Largest CSTORE request (an anti-entropy digest: 4,096 × 8 bytes, base64).
pub const MAX_SYNC_REQUEST_BYTES: u64 = 64 * 1024;
/// Largest CSTORE response (a page of records or of a bucket listing).
pub const MAX_SYNC_RESPONSE_BYTES: u64 = 8 * 1024 * 1024;

/// Every reason this node gives or counts for a refusal: a fixed set, so
/// metric labels and logs cannot be grown from the wire.
pub const REFUSALS: &[&str] = &[
    "AdmissionTimeout",
    "LicenseMissing",
    "LicenseMalformed",
    "UnknownIssuer",
    "BadSignature",
    "WrongPeer",
    "LicenseExpired",
    "LicenseNotYetValid",
    "LicenseRevoked",
    "BadHello",
    "Stale",
    "VersionMismatch",
    "NotAnOracle",
    "NotAdmitted",
    "TooManyPending",
    "Other",
];

/// The bounded label for a reason received from a peer.
pub fn refusal_label(reason: &str) -> &'static str {
    REFUSALS.iter().find(|r| **r == reason).copied().unwrap_or("Other")
}

/// Field-by-field limits of a decoded body.
pub trait Bounded {
    fn check_bounds(&self) -> Result<(), &'static str>;
}

const MAX_LICENSE: usize = 2048;
const MAX_NAME: usize = 253;
const MAX_VERSION: usize = 64;
const MAX_ADDRS: usize = 16;
const MAX_ADDR: usize = 256;
const MAX_OFFER: usize = 4096;
const MAX_NONCE: usize = 64;
const MAX_ROLES: usize = 4;
/// Peers listed in a dAuth answer.
pub const MAX_LISTED: usize = 1024;

fn within(s: &str, max: usize) -> Result<(), &'static str> {
    if s.len() <= max {
        Ok(())
    } else {
        Err("oversized")
    }
}

fn all_within(v: &[String], count: usize, each: usize) -> Result<(), &'static str> {
    if v.len() > count {
        return Err("oversized");
    }
    v.iter().try_for_each(|s| within(s, each))
}

impl Bounded for Hello {
    fn check_bounds(&self) -> Result<(), &'static str> {
        within(&self.license, MAX_LICENSE)?;
        within(&self.version, MAX_VERSION)?;
        within(&self.node, MAX_NAME)?;
        (self.roles.len() <= MAX_ROLES).then_some(()).ok_or("oversized")
    }
}

impl Bounded for AuthAsk {
    fn check_bounds(&self) -> Result<(), &'static str> {
        within(&self.nonce, MAX_NONCE)?;
        within(&self.license, MAX_LICENSE)?;
        within(&self.version, MAX_VERSION)?;
        all_within(&self.addrs, MAX_ADDRS, MAX_ADDR)
    }
}

impl Bounded for AuthAnswer {
    fn check_bounds(&self) -> Result<(), &'static str> {
        within(&self.nonce, MAX_NONCE)?;
        all_within(&self.oracles, MAX_LISTED, 64)?;
        all_within(&self.whitelist, MAX_LISTED, 64)?;
        all_within(&self.issuers, 64, 64)
    }
}

impl Bounded for Heartbeat {
    fn check_bounds(&self) -> Result<(), &'static str> {
        within(&self.license, MAX_LICENSE)?;
        within(&self.license_id, 128)?;
        within(&self.node, MAX_NAME)?;
        within(&self.version, MAX_VERSION)?;
        all_within(&self.addrs, MAX_ADDRS, MAX_ADDR)?;
        if self.roles.len() > MAX_ROLES {
            return Err("oversized");
        }
        // The offer is stored and shown: a small JSON object.
        match serde_json::to_vec(&self.offer) {
            Ok(v) if v.len() <= MAX_OFFER && (self.offer.is_object() || self.offer.is_null()) => Ok(()),
            _ => Err("oversized"),
        }
    }
}

/// Decodes a raw JSON body and checks its bounds.
pub fn decode_body<T: serde::de::DeserializeOwned + Bounded>(
    raw: &serde_json::value::RawValue,
) -> Result<T, &'static str> {
    let t: T = serde_json::from_str(raw.get()).map_err(|_| "malformed")?;
    t.check_bounds()?;
    Ok(t)
}

/// Body of a Hello envelope.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Hello {
    pub license: String,
    pub version: String,
    pub node: String,
    pub roles: Vec<NodeRole>,
}

/// Body of a dAuth request.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct AuthAsk {
    pub nonce: String,
    pub license: String,
    pub version: String,
    pub addrs: Vec<String>,
}

/// Body of a dAuth answer, signed by the oracle.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct AuthAnswer {
    pub nonce: String,
    pub oracles: Vec<String>,
    pub whitelist: Vec<String>,
    pub issuers: Vec<String>,
    pub is_oracle: bool,
    /// The network's epoch clock, as the oracle runs it (absent from older
    /// oracles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<EpochClock>,
}

/// Genesis and length of the network's epochs, in Unix ms.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EpochClock {
    pub genesis_ms: u64,
    pub length_ms: u64,
}

/// Body of a heartbeat.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// The sender's license token, so that nodes not connected to the
    /// sender (gossip relayed over others) can verify it too.
    #[serde(default)]
    pub license: String,
    pub license_id: String,
    pub class: Class,
    pub roles: Vec<NodeRole>,
    pub node: String,
    pub offer: serde_json::Value,
    pub version: String,
    pub addrs: Vec<String>,
}

/// Gossip message kind of the heartbeat topic.
pub const HEARTBEAT_KIND: &str = "heartbeat";
/// Gossip message kind of the CSTORE topic: a batch of signed records.
pub const RECORDS_KIND: &str = "cstore.records";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_reasons_from_the_wire_are_a_fixed_set() {
        assert_eq!(refusal_label("LicenseExpired"), "LicenseExpired");
        assert_eq!(refusal_label(&"x".repeat(1 << 20)), "Other");
        assert_eq!(refusal_label("licenseexpired"), "Other");
    }

    fn raw(v: &serde_json::Value) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(v.to_string()).unwrap()
    }

    #[test]
    fn oversized_fields_are_refused_at_decode() {
        let hb = |node: String, addrs: Vec<String>, offer: serde_json::Value| {
            serde_json::json!({"license": "t", "licenseId": "l", "class": "ND", "roles": ["worker"],
                "node": node, "offer": offer, "version": "0.1.0", "addrs": addrs})
        };
        let dec = |v: serde_json::Value| decode_body::<Heartbeat>(&raw(&v));
        assert!(dec(hb("n".into(), vec![], serde_json::json!({}))).is_ok());
        assert_eq!(dec(hb("n".repeat(254), vec![], serde_json::json!({}))).unwrap_err(), "oversized");
        assert_eq!(
            dec(hb("n".into(), vec!["/ip4/1.2.3.4".into(); 17], serde_json::json!({}))).unwrap_err(),
            "oversized"
        );
        assert_eq!(dec(hb("n".into(), vec![], serde_json::json!({"a": "x".repeat(5000)}))).unwrap_err(), "oversized");
        assert_eq!(dec(serde_json::json!({"node": 1})).unwrap_err(), "malformed");
        let ask = serde_json::json!({"nonce": "n", "license": "l", "version": "v".repeat(65), "addrs": []});
        assert_eq!(decode_body::<AuthAsk>(&raw(&ask)).unwrap_err(), "oversized");
    }
}
