use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A containerised AI pipeline or app, placed by the network on one or more
/// clusters and materialised there as a Deployment (+ Service) or a Job.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ratio1.ai",
    version = "v1alpha1",
    kind = "R1Pipeline",
    plural = "r1pipelines",
    shortname = "r1p",
    category = "ratio1",
    namespaced,
    status = "R1PipelineStatus",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Clusters","type":"integer","jsonPath":".status.clusters"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct R1PipelineSpec {
    /// `Service` runs replicas continuously (a Deployment, plus a Service
    /// when the template declares container ports); `Job` runs them to
    /// completion (a Job with `replicas` completions).
    #[serde(default)]
    pub mode: PipelineMode,
    /// Number of pods (Service) or completions (Job) per cluster.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000), extend("default" = 1))]
    pub replicas: i32,
    /// The pod to run: a Kubernetes PodTemplateSpec with at least one container.
    pub template: PodTemplateSpec,
    /// Where in the network to run. The cluster where the pipeline is
    /// applied (its origin) chooses the clusters (Deeploy); without a
    /// network (no R1Node, or CSTORE not configured) only this cluster can
    /// run it, and a placement it cannot honour is `Scheduled=False`.
    #[serde(default)]
    pub placement: Placement,
    /// R1Models (same namespace) the pipeline uses. Where the operator
    /// delivers R1FS content, each is fetched into the pods by an init
    /// container and mounted read-only at `mountPath` in every container;
    /// the CIDs are also written to the pods' `ratio1.ai/models`
    /// annotation (a new CID rolls the pods).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub models: Vec<ModelMount>,
    /// R1FS content the pipeline uses: delivered and mounted like `models`,
    /// and written to the pods' `ratio1.ai/inputs` annotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub inputs: Vec<InputMount>,
    /// Proof-of-AI: what the pipeline pays the nodes that run it, from the
    /// origin's license. Escrowed once (`price × nodes × epochs`, where
    /// `nodes` is `placement.nodes`' count, else `placement.clusters`) when
    /// the origin first places it; while the license cannot hold the cost
    /// the pipeline is `Stalled` (`InsufficientFunds`). Without a budget
    /// it runs unpaid. Fixed once escrowed: a changed budget is not
    /// applied, `status.budget` shows the escrowed one (docs/economy.md,
    /// "PoAI").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

/// What a pipeline pays per node and epoch, and for how many epochs.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// R1 per node and epoch, up to 18 decimals (e.g. `"0.5"`).
    #[schemars(length(min = 1, max = 40), regex(pattern = r"^[0-9]+(\.[0-9]{1,18})?$"))]
    pub price_per_epoch: String,
    /// Epochs paid (the network's least, 30 by default, is checked by the
    /// operator: it is a network constant).
    #[schemars(range(min = 1, max = 100000))]
    pub epochs: u64,
}

fn default_replicas() -> i32 {
    1
}

/// How a pipeline runs.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PipelineMode {
    /// Long-running replicas behind an optional Service.
    #[default]
    Service,
    /// Run to completion.
    Job,
}

impl std::fmt::Display for PipelineMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PipelineMode::Service => "Service",
            PipelineMode::Job => "Job",
        })
    }
}

/// Placement across the network's clusters.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// How many clusters should run the pipeline (each runs `replicas`).
    /// The origin picks them among the network's fresh, licensed worker
    /// clusters whose labels, free offer and policy fit: first those
    /// already running it, then itself, then the least loaded.
    #[serde(default = "default_clusters")]
    #[schemars(range(min = 1, max = 100), extend("default" = 1))]
    pub clusters: i32,
    /// Only clusters whose R1Node labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<LabelSelector>,
    /// Explicit R1Node names (or PeerIds) to run on: each named cluster
    /// runs the pipeline (`clusters` is then ignored); a named cluster
    /// that is unavailable or refuses is reported in `Scheduled=False`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub nodes: Vec<String>,
}

impl Placement {
    /// How many clusters it asks for: each named one, else `clusters`.
    pub fn wanted(&self) -> usize {
        match self.nodes.len() {
            0 => self.clusters.max(1) as usize,
            n => n,
        }
    }
}

impl Default for Placement {
    fn default() -> Self {
        Self { clusters: default_clusters(), cluster_selector: None, nodes: vec![] }
    }
}

fn default_clusters() -> i32 {
    1
}

/// A model mounted into the pipeline's containers.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelMount {
    /// Name of an R1Model in the pipeline's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
    /// Absolute path inside the containers.
    #[schemars(length(min = 1, max = 4096), regex(pattern = "^/"))]
    pub mount_path: String,
}

/// R1FS content mounted into the pipeline's containers.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InputMount {
    /// Content identifier (CIDv0 `Qm…` or CIDv1 base32 `b…`).
    #[schemars(regex(pattern = crate::crd::CID_PATTERN))]
    pub cid: String,
    /// Absolute path inside the containers.
    #[schemars(length(min = 1, max = 4096), regex(pattern = "^/"))]
    pub mount_path: String,
}

/// Observed state of a pipeline.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct R1PipelineStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods (Service) or completions (Job) wanted, over all clusters.
    #[serde(default)]
    pub replicas: i32,
    /// Ready pods (Service) or succeeded completions (Job), over all clusters.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Number of clusters the pipeline is placed on.
    #[serde(default)]
    pub clusters: i32,
    /// Per-cluster placement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placements: Vec<PlacementStatus>,
    /// R1FS content delivered into this cluster's pods: each model and
    /// input with its CID and how many pods hold it (where the operator
    /// delivers content).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<ContentStatus>,
    /// The PoAI escrow of `spec.budget`, as the ledger holds it (on the
    /// origin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetStatus>,
    /// `Ready`, `Scheduled`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::crd::schema::conditions")]
    pub conditions: Vec<Condition>,
}

/// A pipeline's escrow. Amounts are R1 as decimal strings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetStatus {
    /// The license that paid the escrow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// `price × nodes × epochs`, escrowed.
    pub escrowed: String,
    /// The epochs paid: from `firstEpoch`, `epochs` of them.
    pub first_epoch: u64,
    pub epochs: u64,
    pub nodes: u64,
    /// Epochs the oracles agreed who ran it, and so far paid.
    pub paid_epochs: u64,
    /// Paid to the nodes' licenses (85%) and burned (15%) so far.
    pub paid: String,
    pub burned: String,
    /// Still in escrow, or refunded once the last epoch is over.
    pub left: String,
    pub over: bool,
}

/// One model or input of the pipeline, as delivered here.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContentStatus {
    pub mount_path: String,
    pub cid: String,
    /// Pods of this cluster whose fetch of it completed.
    pub delivered_pods: i32,
}

/// The pipeline on one cluster.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementStatus {
    /// R1Node name of the cluster (absent when the cluster has no R1Node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// PeerId of the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    /// Pods (Service) or completions (Job) wanted there.
    pub replicas: i32,
    /// Ready pods (Service) or succeeded completions (Job) there.
    pub ready_replicas: i32,
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    pub phase: PlacementPhase,
    /// What the cluster reports when it is not running (yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Phase of a pipeline on one cluster.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PlacementPhase {
    /// Children created, replicas not yet ready.
    #[default]
    Pending,
    /// All replicas ready (Service).
    Running,
    /// All completions done (Job).
    Succeeded,
    /// The Job failed.
    Failed,
}
