use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A model artifact in R1FS: given by content identifier, or imported from a
/// PersistentVolumeClaim; replicated across the network and optionally
/// trained by encrypted federated learning (EDIL).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ratio1.ai",
    version = "v1alpha1",
    kind = "R1Model",
    plural = "r1models",
    shortname = "r1m",
    category = "ratio1",
    namespaced,
    status = "R1ModelStatus",
    printcolumn = r#"{"name":"CID","type":"string","jsonPath":".status.cid"}"#,
    printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".status.size"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct R1ModelSpec {
    /// Where the artifact comes from: exactly one of `cid` or `volume`.
    pub source: ModelSource,
    /// Free-form format tag, e.g. `onnx`, `safetensors`, `gguf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-zA-Z0-9][-a-zA-Z0-9_.+]*$"))]
    pub format: Option<String>,
    /// Number of R1FS nodes of the network that should hold the artifact
    /// pinned (a `cid` source; kept on that many nodes, restored when one
    /// leaves).
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1, max = 64), extend("default" = 3))]
    pub replication: i32,
    /// Encrypted federated training (EDIL) with the built-in trainer;
    /// absent means no training. Progress is in `status.training` and the
    /// `Training` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingSpec>,
    /// The artifact is sealed R1FS content (AES-256-GCM, as `ratio1 fs add
    /// --encrypt` makes it): every node stores and serves ciphertext only,
    /// and the pods of the pipelines that use the model get it opened with
    /// the key in this Secret, which the owner controls. A `volume` source
    /// is sealed under that key when imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<ModelEncryption>,
}

/// The key of a sealed model.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelEncryption {
    pub key_secret_ref: KeySecretRef,
}

/// A key in a Secret of the model's namespace: base64 of 32 bytes, as
/// `ratio1 fs add --encrypt --key-file F` writes F (`kubectl create secret
/// generic NAME --from-file=key=F`). The operator never reads it: only the
/// pods that seal or open the content get it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeySecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
    /// Key of the Secret's data that holds the key.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"), extend("default" = "key"))]
    pub key: String,
}

fn default_secret_key() -> String {
    "key".into()
}

fn default_replication() -> i32 {
    3
}

/// Source of a model artifact.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("oneOf" = [{"required": ["cid"]}, {"required": ["volume"]}]))]
pub struct ModelSource {
    /// Content identifier of the artifact already in R1FS (CIDv0 `Qm…` or
    /// CIDv1 base32 `b…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::crd::CID_PATTERN))]
    pub cid: Option<String>,
    /// A file or directory on a PersistentVolumeClaim to import into R1FS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeSource>,
}

/// A path on a PersistentVolumeClaim in the model's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSource {
    /// Name of the PersistentVolumeClaim.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub claim_name: String,
    /// Relative path of the file or directory inside the volume.
    #[serde(default = "default_path")]
    #[schemars(length(min = 1, max = 4096), regex(pattern = r"^[^/]"), extend("default" = "."))]
    pub path: String,
}

fn default_path() -> String {
    ".".into()
}

/// Federated training of the model with EDIL.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingSpec {
    /// Number of federated rounds.
    #[schemars(range(min = 1, max = 10000))]
    pub rounds: i32,
    /// The dataset the participants train on: each participant cluster
    /// holds its own shard under this name (`ratio1 operator
    /// --edil-dataset NAME=PATH`, a CSV of numbers with the 0/1 label
    /// last), which never leaves it. Every fresh peer holding it takes
    /// part (at most 100).
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub dataset: String,
    /// Features per sample (the CSV's columns less the label): the
    /// model has `features + 1` weights (the built-in model, logistic
    /// regression, at most 1,024 features; a trainer container up to
    /// 2^20 weights). A model of more than 512 weights travels through
    /// R1FS: the owner, the aggregator and every participant run it
    /// (`--data-dir`).
    #[schemars(range(min = 1, max = 1048575))]
    pub features: i32,
    /// Gradient steps each participant takes per round on its shard.
    #[serde(default = "default_local_steps")]
    #[schemars(range(min = 1, max = 10000), extend("default" = 10))]
    pub local_steps: i32,
    /// Learning rate of those steps.
    #[serde(default = "default_learning_rate")]
    #[schemars(range(min = 0.000001, max = 100.0), extend("default" = 0.5))]
    pub learning_rate: f64,
    /// Participants needed before a round aggregates: at least 2 (one
    /// update alone is never summed), at most 100 (a round's most).
    #[serde(default = "default_min_participants")]
    #[schemars(range(min = 2, max = 100), extend("default" = 2))]
    pub min_participants: i32,
    /// Seconds a round waits for updates.
    #[serde(default = "default_round_timeout")]
    #[schemars(range(min = 10, max = 86400), extend("default" = 600))]
    pub round_timeout_seconds: i32,
    /// A trainer container each participant runs as a Kubernetes Job in
    /// its own cluster, instead of the built-in trainer (docs/edil.md,
    /// "Container trainers"). A participant runs it only when its operator
    /// allows the image (`--edil-trainer-image PREFIX`) and delivers R1FS
    /// content to pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainer: Option<TrainerSpec>,
}

/// A trainer container. It reads the round's model document
/// (`$R1_EDIL_MODEL`: JSON with `weights`, `features + 1` numbers) and
/// the participant's shard (`$R1_EDIL_DATA`), trains (`$R1_EDIL_STEPS`,
/// `$R1_EDIL_LR`), and writes its weights to `$R1_EDIL_OUT`: a JSON array
/// of numbers, or an object with `weights` and optionally `loss`,
/// `accuracy` and `samples`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainerSpec {
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// The entrypoint (the image's when empty); `$(VAR)` expands the
    /// variables above, as in any container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub args: Vec<String>,
    /// CPU and memory of the container (default: requests 100m CPU and
    /// 128Mi memory, limit 1Gi memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

fn default_min_participants() -> i32 {
    2
}

fn default_round_timeout() -> i32 {
    600
}

fn default_local_steps() -> i32 {
    10
}

fn default_learning_rate() -> f64 {
    0.5
}

/// Where a model's federated training stands (on its owner's cluster).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingStatus {
    /// Rounds completed, of `rounds` asked.
    pub completed_rounds: i32,
    pub rounds: i32,
    /// The round under way (attempts are numbered: a failed round is
    /// tried again with the next number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<i64>,
    /// R1Node names (or PeerIds) of the participants and the aggregator
    /// of the last round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregator: Option<String>,
    /// Seconds from publishing the last completed round to its average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_round_seconds: Option<f64>,
    /// Loss and accuracy of the last completed round, as its participants
    /// measured them on their own shards (weighted by samples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// The model's weights after the last completed round (the bias last).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<f64>,
    /// Why the last attempt failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// The model after each completed round as R1FS content (a JSON
    /// document: round, features, weights, loss, accuracy, participants),
    /// pinned on the owner's node; the latest last, at most 16 (an older
    /// one's pin is released when it leaves this list, and every pin when
    /// the R1Model or its training goes). Empty where R1FS does not run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<RoundModel>,
}

/// The model a completed round produced, in R1FS.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoundModel {
    /// Completed rounds when it was made (1 for the first).
    pub round: i32,
    pub cid: String,
}

/// Observed state of a model.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct R1ModelStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Content identifier of the artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    /// Bytes of the artifact's blocks in R1FS, as its holders report them
    /// (absent until a holder reports; and when R1FS is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// How many R1FS nodes heard from hold the artifact pinned (absent when
    /// R1FS is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// R1Node names of those nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<String>,
    /// Rounds of federated training completed (EDIL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<i32>,
    /// Federated training (EDIL), on the model's own cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingStatus>,
    /// `Ready`, `Available`, `Training`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::crd::schema::conditions")]
    pub conditions: Vec<Condition>,
}
