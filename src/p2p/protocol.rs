//! Messages of `/ratio1/dauth/1` and of the heartbeat topic. Everything
//! travels inside a signed [`Envelope`](super::envelope::Envelope).

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
    Refused { reason: String },
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
