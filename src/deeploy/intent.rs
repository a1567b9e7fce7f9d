//! The records Deeploy keeps in CSTORE, and their keys. Every key sits in
//! its writer's own namespace `deeploy/<peerId>/…` (CSTORE's rules let only
//! that peer write there), so a record's key says who signed it:
//!
//! - `deeploy/<peer>/profile`: what the node offers and lets in;
//! - `deeploy/<origin>/intent/<id>`: where the origin places a pipeline;
//! - `deeploy/<target>/report/<id>`: how the pipeline runs on a target.
//!
//! `<id>` names (origin, namespace, name) in 32 hex digits, so that keys
//! stay short whatever the names' lengths.

use super::plan::Need;
use crate::crd::PlacementPhase;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Prefix of every Deeploy record.
pub const PREFIX: &str = "deeploy/";

/// Id of a pipeline in the network.
pub fn pipeline_id(origin: &str, namespace: &str, name: &str) -> String {
    let d = Sha256::digest(format!("{origin}/{namespace}/{name}").as_bytes());
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

pub fn profile_key(peer: &str) -> String {
    format!("{PREFIX}{peer}/profile")
}

pub fn intent_key(origin: &str, namespace: &str, name: &str) -> String {
    format!("{PREFIX}{origin}/intent/{}", pipeline_id(origin, namespace, name))
}

pub fn report_key(target: &str, origin: &str, namespace: &str, name: &str) -> String {
    format!("{PREFIX}{target}/report/{}", pipeline_id(origin, namespace, name))
}

/// What a Deeploy key holds, and who wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Profile,
    Intent,
    Report,
}

/// Splits a key into (writer, kind); `None` for anything else.
pub fn parse_key(key: &str) -> Option<(&str, Kind)> {
    let rest = key.strip_prefix(PREFIX)?;
    let (writer, tail) = rest.split_once('/')?;
    let kind = match tail.split_once('/') {
        None if tail == "profile" => Kind::Profile,
        Some(("intent", id)) if is_id(id) => Kind::Intent,
        Some(("report", id)) if is_id(id) => Kind::Report,
        _ => return None,
    };
    Some((writer, kind))
}

fn is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Where the origin places a pipeline (signed by the origin).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Intent {
    pub namespace: String,
    pub name: String,
    /// PeerId and R1Node name of the origin.
    pub origin: String,
    pub origin_node: String,
    /// The origin object's UID and generation this intent was made from.
    pub uid: String,
    pub generation: i64,
    /// Hash of `spec`: what a report must echo to count as up to date.
    pub spec_hash: String,
    /// The pipeline's spec (the origin's, placement included).
    pub spec: serde_json::Value,
    /// Replicas per target PeerId.
    pub targets: BTreeMap<String, i32>,
    /// Per replica (the targets' free capacity is counted from it).
    pub need: Need,
}

/// How a pipeline runs on one target (signed by the target).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub namespace: String,
    pub name: String,
    pub origin: String,
    /// The target's R1Node name.
    pub node: String,
    /// The intent's `specHash` this report is about.
    pub spec_hash: String,
    pub replicas: i32,
    pub ready_replicas: i32,
    pub phase: PlacementPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The target will not run it: why (its policy, a name conflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The kind of refusal (a short label: `policy`, `conflict`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// Unix ms of the refusal (the target's clock; only it reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
}

/// Bounds of records from the wire (CSTORE bounds the whole value at
/// 32 KiB; these bound what is kept per record).
const MAX_TARGETS: usize = 100;
const MAX_NAME: usize = 253;
const MAX_MESSAGE: usize = 1024;

impl Intent {
    pub fn bounded(&self, writer: &str) -> bool {
        self.origin == writer
            && self.namespace.len() <= 63
            && self.name.len() <= MAX_NAME
            && self.origin_node.len() <= MAX_NAME
            && self.targets.len() <= MAX_TARGETS
            && self.targets.values().all(|r| (0..=1000).contains(r))
            && self.spec.is_object()
    }

    /// Replicas asked of `peer` (absent: not a target).
    pub fn replicas_on(&self, peer: &str) -> Option<i32> {
        self.targets.get(peer).copied()
    }
}

impl Report {
    pub fn bounded(&self) -> bool {
        (0..=1000).contains(&self.replicas)
            && (0..=self.replicas).contains(&self.ready_replicas)
            && self.namespace.len() <= 63
            && self.name.len() <= MAX_NAME
            && self.node.len() <= MAX_NAME
            && self.message.as_ref().is_none_or(|m| m.len() <= MAX_MESSAGE)
            && self.refused.as_ref().is_none_or(|m| m.len() <= MAX_MESSAGE)
            && self.refusal.as_ref().is_none_or(|m| m.len() <= 32)
    }
}

/// Cuts a message to what a report may carry (on a char boundary).
pub fn short(msg: &str) -> String {
    if msg.len() <= MAX_MESSAGE {
        return msg.to_string();
    }
    let mut end = MAX_MESSAGE - 3;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &msg[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_writer_and_kind() {
        let (o, t) = ("12D3KooWorigin", "12D3KooWtarget");
        let ik = intent_key(o, "team", "web");
        assert_eq!(parse_key(&ik), Some((o, Kind::Intent)));
        assert_eq!(parse_key(&report_key(t, o, "team", "web")), Some((t, Kind::Report)));
        assert_eq!(parse_key(&profile_key(t)), Some((t, Kind::Profile)));
        assert!(ik.len() < 120, "short keys whatever the names");
        assert_ne!(pipeline_id(o, "team", "web"), pipeline_id(t, "team", "web"), "the origin is part of the id");
        assert_ne!(pipeline_id(o, "te", "amweb"), pipeline_id(o, "team", "web"));
        for bad in ["deeploy/x/intent/zz", "deeploy/x/other", "deeploy/x", "node/x/profile", "deeploy/x/report/"] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(1000);
        let s = short(&long);
        assert!(s.len() <= MAX_MESSAGE && s.ends_with("..."));
        assert_eq!(short("ok"), "ok");
    }
}
