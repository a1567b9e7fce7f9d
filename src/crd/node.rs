use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Condition};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// This cluster's membership in the Ratio1 network. Cluster-scoped: one per
/// cluster. The operator keeps the node's ed25519 identity in a Secret in its
/// own namespace and reports the libp2p PeerId derived from it.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ratio1.ai",
    version = "v1alpha1",
    kind = "R1Node",
    plural = "r1nodes",
    shortname = "r1n",
    category = "ratio1",
    status = "R1NodeStatus",
    printcolumn = r#"{"name":"PeerID","type":"string","jsonPath":".status.peerId"}"#,
    printcolumn = r#"{"name":"Roles","type":"string","jsonPath":".spec.roles"}"#,
    printcolumn = r#"{"name":"Class","type":"string","jsonPath":".status.licenseClass"}"#,
    printcolumn = r#"{"name":"Peers","type":"integer","jsonPath":".status.peers"}"#,
    printcolumn = r#"{"name":"Epoch","type":"integer","jsonPath":".status.epoch"}"#,
    printcolumn = r#"{"name":"Availability","type":"integer","jsonPath":".status.availability"}"#,
    printcolumn = r#"{"name":"Unclaimed","type":"string","jsonPath":".status.unclaimedRewards"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct R1NodeSpec {
    /// Where the node's ed25519 identity key lives.
    #[serde(default)]
    pub identity: IdentitySpec,
    /// The license that admits this node to the network.
    pub license: LicenseRef,
    /// What this node does in the network.
    #[serde(default = "default_roles")]
    #[schemars(length(min = 1, max = 2), extend("default" = ["worker"]))]
    pub roles: Vec<NodeRole>,
    /// libp2p addresses.
    #[serde(default)]
    pub p2p: P2pSpec,
    /// Capacity this cluster offers to the network.
    #[serde(default)]
    pub offer: Offer,
    /// Which pipelines from other clusters this cluster accepts (Deeploy).
    #[serde(default)]
    pub policy: DeeployPolicy,
}

/// What a cluster admin lets the network run here. Every intent addressed
/// to this cluster is checked against it; one that breaks it is refused
/// (the origin places the pipeline elsewhere and says why). Pipelines
/// applied in this cluster itself are not subject to it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeeployPolicy {
    /// Run pipelines placed here by other clusters at all.
    #[serde(default = "default_true")]
    #[schemars(extend("default" = true))]
    pub accept_remote: bool,
    /// Namespaces remote pipelines may run in (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    pub allowed_namespaces: Vec<String>,
    /// Registries (`ghcr.io`, `docker.io`, `ratio1.local`, ...) whose
    /// images remote pipelines may use (empty: any). An image without a
    /// registry host is `docker.io`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub allowed_registries: Vec<String>,
    /// Most replicas one remote pipeline may run here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_replicas: Option<i32>,
    /// Most CPU one remote pipeline may request here (all its replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu: Option<Quantity>,
    /// Most memory one remote pipeline may request here (all its replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<Quantity>,
}

impl Default for DeeployPolicy {
    fn default() -> Self {
        Self {
            accept_remote: true,
            allowed_namespaces: vec![],
            allowed_registries: vec![],
            max_replicas: None,
            max_cpu: None,
            max_memory: None,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_roles() -> Vec<NodeRole> {
    vec![NodeRole::Worker]
}

/// A role a node plays.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Runs pipelines placed on it.
    Worker,
    /// Attests availability of other nodes (OracleSync) and answers dAuth.
    Oracle,
}

/// Where the node identity is kept.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySpec {
    /// Name of the Secret in the operator's namespace holding the node key
    /// (key `private-key`: a libp2p protobuf-encoded ed25519 keypair). The
    /// operator creates it when missing and never overwrites it.
    #[serde(default = "default_identity_secret")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub secret_name: String,
}

impl Default for IdentitySpec {
    fn default() -> Self {
        Self { secret_name: default_identity_secret() }
    }
}

fn default_identity_secret() -> String {
    "r1node-identity".into()
}

/// Where the node license token is kept.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LicenseRef {
    /// Name of the Secret in the operator's namespace holding the license
    /// token under key `license`.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub secret_name: String,
}

/// libp2p addressing of the node.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct P2pSpec {
    /// Multiaddrs to listen on, e.g. `/ip4/0.0.0.0/tcp/4001`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = "^/")))]
    pub listen: Vec<String>,
    /// Multiaddrs of peers to join through, each ending in `/p2p/<PeerId>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = "^/.+/p2p/[1-9A-HJ-NP-Za-km-z]+$")))]
    pub bootstrap: Vec<String>,
    /// Multiaddrs other nodes should dial to reach this one (behind NAT or a
    /// LoadBalancer Service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = "^/")))]
    pub external: Vec<String>,
}

/// Capacity offered to the network.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Offer {
    /// CPU offered, as a Kubernetes quantity (e.g. `8`, `7500m`): Deeploy
    /// places no more CPU requests here (over all pipelines) than this.
    /// Absent: not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory offered, as a Kubernetes quantity (e.g. `32Gi`): the bound
    /// of memory requests Deeploy places here. Absent: not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Number of GPUs offered (`nvidia.com/gpu` limits Deeploy places
    /// here). Absent: not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1024))]
    pub gpus: Option<u32>,
    /// Kubernetes node labels that every pod of a pipeline running on this
    /// cluster must match: added to the pods' `nodeSelector`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

/// Observed state of the node.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct R1NodeStatus {
    /// libp2p PeerId derived from the identity key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    /// Class of this node's license (`ND`, `MND`, `GND`) while it is valid
    /// and the network runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license_class: Option<String>,
    /// Number of licensed peers currently connected.
    #[serde(default)]
    pub peers: u32,
    /// Time of the last heartbeat this node published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Current epoch number, from the network's epoch clock
    /// (`--epoch-genesis-ms`, `--epoch-length-secs`), while this node's
    /// network runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// This node's availability, 0..255, in the last epoch the oracles
    /// decided (`availabilityEpoch`): its value in the final record signed
    /// by a majority of the registered oracles (0 if the record leaves it
    /// out), or 255 when that epoch was faulty (no quorum: every licensed
    /// node counts as fully available). Absent until an epoch is decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 255))]
    pub availability: Option<u8>,
    /// The epoch `availability` is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_epoch: Option<u64>,
    /// The license the registry links to this node (`<issuer>/<id>`;
    /// `ratio1 license link`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_license: Option<String>,
    /// Rewards this node may claim now, in R1 (`ratio1 rewards claim`):
    /// its license's unclaimed epochs, paid by their final records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unclaimed_rewards: Option<String>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Licensed`, `Connected`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::crd::schema::conditions")]
    pub conditions: Vec<Condition>,
}
