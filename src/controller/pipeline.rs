//! R1Pipeline: materialise a pipeline on this cluster as a Deployment (+ a
//! Service when the template declares ports) or a Job, and report their
//! state back in the pipeline's status.

use super::{apply, cached, cached_or_get, finish, Context, Error, LocalNode, Result, MANAGED_BY};
use crate::conditions::{self, Invalid, Want};
use crate::crd::{ModelSource, PipelineMode, PlacementPhase, PlacementStatus, R1Model, R1Pipeline, R1PipelineStatus};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PropagationPolicy};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// Label naming the pipeline on every child and pod.
pub const PIPELINE_LABEL: &str = "ratio1.ai/pipeline";
/// Annotation with the hash of the immutable part of a Job.
pub const SPEC_HASH: &str = "ratio1.ai/spec-hash";
/// Pod annotation listing resolved model mounts (name, CID, path).
pub const MODELS_ANNOTATION: &str = "ratio1.ai/models";
/// Pod annotation listing R1FS input mounts (CID, path).
pub const INPUTS_ANNOTATION: &str = "ratio1.ai/inputs";

/// A model the pipeline mounts, as found in the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelState {
    Missing,
    /// Exists but has no content yet (e.g. waiting for an R1FS import).
    NotReady,
    Ready {
        cid: String,
        /// The key's Secret, for a sealed model.
        key: Option<crate::crd::KeySecretRef>,
    },
}

/// One piece of R1FS content delivered into the pipeline's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub cid: String,
    pub path: String,
    /// Opened with this Secret's key in the pod (a sealed model).
    pub key: Option<crate::crd::KeySecretRef>,
}

/// What the pipeline needs from other objects, read before validation.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub models: BTreeMap<String, ModelState>,
    /// This cluster's `offer.nodeSelector`, added to every pod.
    pub node_selector: BTreeMap<String, String>,
    /// How pods get R1FS content (R1FS runs here with delivery set up).
    pub delivery: Option<crate::r1fs::service::Delivery>,
}

/// Pod annotation of delivered content: the CIDs of the mounts, in the
/// order of the `r1fs-fetch-<i>` init containers (kept in the pod cache).
pub const DELIVERED_ANNOTATION: &str = "ratio1.ai/r1fs-mounts";

/// Prefix of the volumes and init containers that deliver R1FS content.
pub const DELIVERY_PREFIX: &str = "r1fs-";
/// Name of the delivered content inside its volume (mounted by subPath, so
/// a file CID appears as a file at `mountPath`, a directory as a directory).
const DELIVERED: &str = "content";

/// Every mount of the pipeline whose CID is known: models first, then
/// inputs, in spec order.
pub fn mounts(p: &R1Pipeline, inputs: &Inputs) -> Vec<Mount> {
    let models = p.spec.models.iter().filter_map(|m| match inputs.models.get(&m.name) {
        Some(ModelState::Ready { cid, key }) => {
            Some(Mount { cid: cid.clone(), path: m.mount_path.clone(), key: key.clone() })
        }
        _ => None,
    });
    let ins = p.spec.inputs.iter().filter_map(|i| {
        let cid = crate::r1fs::cid::parse(&i.cid).ok()?;
        Some(Mount { cid: crate::r1fs::cid::canonical(&cid), path: i.mount_path.clone(), key: None })
    });
    models.chain(ins).collect()
}

/// A container running `ratio1 fs --endpoint <gateway> ARGS` in the
/// operator's image, as R1FS's delivery and import use it: `HOST_IP` set
/// (the endpoint may name it), non-root, read-only root filesystem, no
/// capabilities, small requests.
pub fn r1fs_container(
    name: String,
    d: &crate::r1fs::service::Delivery,
    args: &[&str],
    mut env: Vec<k8s_openapi::api::core::v1::EnvVar>,
    mounts: Vec<k8s_openapi::api::core::v1::VolumeMount>,
) -> k8s_openapi::api::core::v1::Container {
    use k8s_openapi::api::core::v1::{
        Capabilities, Container, EnvVar, EnvVarSource, ObjectFieldSelector, ResourceRequirements, SecurityContext,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let q = |s: &str| Quantity(s.to_string());
    env.insert(
        0,
        EnvVar {
            name: "HOST_IP".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: "status.hostIP".into(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let mut command: Vec<String> = ["ratio1", "fs", "--endpoint", &d.endpoint].map(String::from).to_vec();
    command.extend(args.iter().map(|a| a.to_string()));
    Container {
        name,
        image: Some(d.image.clone()),
        command: Some(command),
        env: Some(env),
        volume_mounts: Some(mounts),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".into(), q("10m")), ("memory".into(), q("32Mi"))])),
            limits: Some(BTreeMap::from([("memory".into(), q("256Mi"))])),
            ..Default::default()
        }),
        // Its error (e.g. a key that does not open the content) in the
        // pod's status, where the controller reads it.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            // Admitted by Pod Security `restricted` namespaces too.
            seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The CIDs a pod was made to receive, by mount index (its
/// [`DELIVERED_ANNOTATION`]).
fn delivered_cids(pod: &Pod) -> Vec<String> {
    pod.annotations().get(DELIVERED_ANNOTATION).and_then(|a| serde_json::from_str(a).ok()).unwrap_or_default()
}

/// The fetcher's key: the Secret's value in `RATIO1_R1FS_KEY` (an env var
/// rather than a volume: a missing Secret then shows in the pod's status,
/// where [`key_problem`] finds it, instead of only in events).
pub fn key_env(k: &crate::crd::KeySecretRef) -> k8s_openapi::api::core::v1::EnvVar {
    use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector};
    EnvVar {
        name: "RATIO1_R1FS_KEY".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: k.name.clone(), key: k.key.clone(), optional: Some(false) }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A sealed mount the pods cannot open, which only its owner can fix: the
/// key's Secret (or its data key) is missing (`KeySecretNotFound`), or the
/// key does not open the content (`WrongKey`).
pub fn key_problem<'a>(mounts: &[Mount], pods: impl IntoIterator<Item = &'a Pod>) -> Option<(String, String)> {
    // Pods that are gone or done say nothing of the key now.
    let live = |p: &&Pod| {
        p.metadata.deletion_timestamp.is_none()
            && !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Failed" | "Succeeded"))
    };
    for pod in pods.into_iter().filter(live) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        // The CIDs this pod was made for, by mount index: an older pod's
        // fetchers are not the current mounts'.
        let made_for = delivered_cids(pod);
        let statuses = pod.status.as_ref().and_then(|s| s.init_container_statuses.as_ref());
        for cs in statuses.into_iter().flatten() {
            let Some(i) =
                cs.name.strip_prefix(&format!("{DELIVERY_PREFIX}fetch-")).and_then(|i| i.parse::<usize>().ok())
            else {
                continue;
            };
            let Some(Mount { cid, path, key: Some(k) }) = mounts.get(i) else { continue };
            if made_for.get(i) != Some(cid) {
                continue;
            }
            let sealed = format!(
                "{cid} (mounted at {path}) is sealed with the key in Secret {ns}/{} (data key {:?})",
                k.name, k.key
            );
            let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
            if waiting.and_then(|w| w.reason.as_deref()) == Some("CreateContainerConfigError") {
                let why = waiting.and_then(|w| w.message.as_deref()).unwrap_or("the Secret cannot be read");
                return Some((
                    "KeySecretNotFound".into(),
                    format!(
                        "{sealed}, which pod {pod_name} cannot read ({why}); create it: kubectl create secret generic {} -n {ns} --from-file={}=KEY_FILE",
                        k.name, k.key
                    ),
                ));
            }
            // Only a fetcher that has not succeeded since: an old failure
            // stays in `lastState` for the pod's life.
            let done = cs.state.as_ref().and_then(|s| s.terminated.as_ref()).is_some_and(|t| t.exit_code == 0);
            let failed = [cs.state.as_ref(), cs.last_state.as_ref()]
                .into_iter()
                .flatten()
                .filter_map(|s| s.terminated.as_ref())
                .filter(|t| !done && t.exit_code != 0)
                .find_map(|t| t.message.as_deref());
            let why = match failed {
                Some(m) if m.contains(crate::r1fs::seal::WRONG_KEY) => "that key does not open it",
                Some(m) if m.contains(crate::r1fs::seal::NOT_A_KEY) || m.contains(crate::r1fs::seal::NOT_32_BYTES) => {
                    "the Secret's value is not a key (base64 of 32 bytes)"
                }
                _ => continue,
            };
            return Some((
                "WrongKey".into(),
                format!("{sealed}, and {why} in pod {pod_name}: put the key the content was added with in the Secret"),
            ));
        }
    }
    None
}

/// Adds to `spec` an `emptyDir` and an init container per mount that
/// fetches the content into it (`ratio1 fs get`), and mounts it read-only
/// at its `mountPath` in every container.
fn deliver(spec: &mut k8s_openapi::api::core::v1::PodSpec, mounts: &[Mount], d: &crate::r1fs::service::Delivery) {
    use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, Volume, VolumeMount};
    let mut fetchers = vec![];
    for (i, Mount { cid, path, key }) in mounts.iter().enumerate() {
        let vol = format!("{DELIVERY_PREFIX}{i}");
        spec.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: vol.clone(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        let into = format!("/r1fs/{DELIVERED}");
        fetchers.push(r1fs_container(
            format!("{DELIVERY_PREFIX}fetch-{i}"),
            d,
            &["get", cid, &into],
            key.iter().map(key_env).collect(),
            vec![VolumeMount { name: vol.clone(), mount_path: "/r1fs".into(), ..Default::default() }],
        ));
        for c in spec.containers.iter_mut() {
            c.volume_mounts.get_or_insert_with(Vec::new).push(VolumeMount {
                name: vol.clone(),
                mount_path: path.clone(),
                sub_path: Some(DELIVERED.into()),
                read_only: Some(true),
                ..Default::default()
            });
        }
    }
    // Before the user's own init containers.
    let user = spec.init_containers.take().unwrap_or_default();
    fetchers.extend(user);
    spec.init_containers = Some(fetchers);
}

/// Everything to write for one pipeline on this cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub deployment: Option<Deployment>,
    pub service: Option<Service>,
    pub job: Option<Job>,
}

/// Checks what the schema cannot. `Ok(Some(msg))` means valid but waiting.
pub fn validate(p: &R1Pipeline, inputs: &Inputs) -> Result<Option<String>, Invalid> {
    let name = p.name_any();
    let spec = &p.spec;
    let pod =
        spec.template.spec.as_ref().ok_or_else(|| Invalid::new("InvalidTemplate", "spec.template.spec is required"))?;
    if pod.containers.is_empty() {
        return Err(Invalid::new("InvalidTemplate", "spec.template.spec.containers must list at least one container"));
    }
    let mut names = BTreeSet::new();
    for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
        if !names.insert(c.name.as_str()) {
            return Err(Invalid::new("InvalidTemplate", format!("container name {:?} is used twice", c.name)));
        }
    }
    match (spec.mode, pod.restart_policy.as_deref()) {
        (PipelineMode::Service, None | Some("Always")) => {}
        (PipelineMode::Service, Some(rp)) => {
            return Err(Invalid::new(
                "InvalidTemplate",
                format!("restartPolicy {rp:?} cannot run in mode Service: use Always, or mode Job"),
            ))
        }
        (PipelineMode::Job, None | Some("Never" | "OnFailure")) => {}
        (PipelineMode::Job, Some(rp)) => {
            return Err(Invalid::new(
                "InvalidTemplate",
                format!("restartPolicy {rp:?} cannot run in mode Job: use Never or OnFailure"),
            ))
        }
    }
    if let Some(v) = spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref()).and_then(|l| l.get(PIPELINE_LABEL))
    {
        if v != &name {
            return Err(Invalid::new(
                "InvalidTemplate",
                format!("template label {PIPELINE_LABEL}={v:?} conflicts with the pipeline's name"),
            ));
        }
    }
    if !service_ports(&spec.template).is_empty() && !is_dns1035_label(&name) {
        return Err(Invalid::new(
            "InvalidName",
            format!("{name:?} declares ports but is not a valid Service name (a DNS-1035 label: lowercase letters, digits, '-', at most 63 characters, starting with a letter)"),
        ));
    }
    for i in &spec.inputs {
        crate::r1fs::cid::parse(&i.cid).map_err(|e| Invalid::new("InvalidCid", format!("inputs: {e}")))?;
    }
    let mut paths = BTreeSet::new();
    for path in spec.models.iter().map(|m| &m.mount_path).chain(spec.inputs.iter().map(|i| &i.mount_path)) {
        if !paths.insert(path.as_str()) {
            return Err(Invalid::new("InvalidMounts", format!("mountPath {path:?} is used twice in models/inputs")));
        }
    }
    if !spec.models.is_empty() || !spec.inputs.is_empty() {
        let volumes = pod.volumes.iter().flatten().map(|v| &v.name);
        let inits = pod.init_containers.iter().flatten().chain(pod.containers.iter()).map(|c| &c.name);
        if let Some(n) = volumes.chain(inits).find(|n| n.starts_with(DELIVERY_PREFIX)) {
            return Err(Invalid::new(
                "InvalidMounts",
                format!("{n:?}: names starting with {DELIVERY_PREFIX:?} are R1FS delivery's (rename the volume or container)"),
            ));
        }
    }
    for (k, v) in &inputs.node_selector {
        if let Some(mine) = pod.node_selector.as_ref().and_then(|s| s.get(k)).filter(|mine| *mine != v) {
            return Err(Invalid::new(
                "NodeSelectorConflict",
                format!("template nodeSelector {k}={mine} conflicts with this cluster's R1Node offer.nodeSelector {k}={v}: no pod could be scheduled"),
            ));
        }
    }
    let mut waiting = vec![];
    for m in &spec.models {
        match inputs.models.get(&m.name) {
            None | Some(ModelState::Missing) => {
                return Err(Invalid::new(
                    "ModelNotFound",
                    format!("R1Model {:?} does not exist in namespace {:?}", m.name, p.namespace().unwrap_or_default()),
                ))
            }
            Some(ModelState::NotReady) => waiting.push(m.name.clone()),
            Some(ModelState::Ready { .. }) => {}
        }
    }
    Ok((!waiting.is_empty()).then(|| format!("waiting for R1Model(s) {} to become ready", waiting.join(", "))))
}

fn is_dns1035_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

/// Labels the operator puts on every child and pod of `name`.
pub fn child_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (PIPELINE_LABEL.to_string(), name.to_string()),
    ])
}

fn child_meta(p: &R1Pipeline, owner: &OwnerReference, annotations: Option<BTreeMap<String, String>>) -> ObjectMeta {
    ObjectMeta {
        name: Some(p.name_any()),
        namespace: p.namespace(),
        labels: Some(child_labels(&p.name_any())),
        annotations,
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    }
}

/// The user's pod template with the operator's labels and mount annotations.
fn pod_template(p: &R1Pipeline, inputs: &Inputs) -> PodTemplateSpec {
    let mut t = p.spec.template.clone();
    let meta = t.metadata.get_or_insert_with(Default::default);
    meta.labels.get_or_insert_with(Default::default).extend(child_labels(&p.name_any()));
    let models: Vec<_> = p
        .spec
        .models
        .iter()
        .map(|m| {
            let cid = match inputs.models.get(&m.name) {
                Some(ModelState::Ready { cid, .. }) => cid.as_str(),
                _ => "",
            };
            serde_json::json!({"name": m.name, "cid": cid, "mountPath": m.mount_path})
        })
        .collect();
    // The resolved CIDs are part of the pod template, so a model whose
    // content changes rolls the pods that mount it.
    if !models.is_empty() {
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(MODELS_ANNOTATION.into(), serde_json::Value::from(models).to_string());
    }
    if !p.spec.inputs.is_empty() {
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(INPUTS_ANNOTATION.into(), serde_json::to_string(&p.spec.inputs).expect("inputs serialize"));
    }
    let spec = t.spec.get_or_insert_with(Default::default);
    if let Some(d) = &inputs.delivery {
        let m = mounts(p, inputs);
        if !m.is_empty() {
            deliver(spec, &m, d);
            let cids: Vec<&str> = m.iter().map(|m| m.cid.as_str()).collect();
            let ann = serde_json::to_string(&cids).expect("strings serialize");
            t.metadata
                .get_or_insert_with(Default::default)
                .annotations
                .get_or_insert_with(Default::default)
                .insert(DELIVERED_ANNOTATION.into(), ann);
        }
    }
    if p.spec.mode == PipelineMode::Job {
        spec.restart_policy.get_or_insert_with(|| "Never".into());
    }
    // The cluster's offer limits which of its nodes the network's pods use.
    if !inputs.node_selector.is_empty() {
        let sel = spec.node_selector.get_or_insert_with(Default::default);
        for (k, v) in &inputs.node_selector {
            sel.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    t
}

/// Container ports of the template, as Service ports (deduplicated).
fn service_ports(t: &PodTemplateSpec) -> Vec<ServicePort> {
    let mut seen = BTreeSet::new();
    let mut out = vec![];
    for c in t.spec.iter().flat_map(|s| s.containers.iter()) {
        for port in c.ports.iter().flatten() {
            let proto = port.protocol.clone().unwrap_or_else(|| "TCP".into());
            if !seen.insert((port.container_port, proto.clone())) {
                continue;
            }
            let name = port.name.clone().unwrap_or_else(|| format!("{}-{}", proto.to_lowercase(), port.container_port));
            out.push(ServicePort {
                name: Some(name),
                port: port.container_port,
                target_port: Some(IntOrString::Int(port.container_port)),
                protocol: Some(proto),
                ..Default::default()
            });
        }
    }
    out
}

fn hash_of<T: serde::Serialize>(v: &T) -> String {
    let bytes = serde_json::to_vec(v).expect("serializable");
    let digest = Sha256::digest(&bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Builds the children for a validated pipeline.
pub fn build(p: &R1Pipeline, inputs: &Inputs) -> Result<Desired> {
    let owner = p.controller_owner_ref(&()).ok_or(Error::MissingField("metadata.uid"))?;
    let template = pod_template(p, inputs);
    let selector = LabelSelector {
        match_labels: Some(BTreeMap::from([(PIPELINE_LABEL.to_string(), p.name_any())])),
        ..Default::default()
    };
    Ok(match p.spec.mode {
        PipelineMode::Service => {
            let ports = service_ports(&template);
            let deployment = Deployment {
                metadata: child_meta(p, &owner, None),
                spec: Some(DeploymentSpec {
                    replicas: Some(p.spec.replicas),
                    selector: selector.clone(),
                    template,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let service = (!ports.is_empty()).then(|| Service {
                metadata: child_meta(p, &owner, None),
                spec: Some(ServiceSpec {
                    selector: selector.match_labels.clone(),
                    ports: Some(ports),
                    ..Default::default()
                }),
                ..Default::default()
            });
            Desired { deployment: Some(deployment), service, job: None }
        }
        PipelineMode::Job => {
            // A Job's template and completions are immutable: their hash
            // tells when the Job must be replaced rather than patched.
            let hash = hash_of(&(&template, p.spec.replicas));
            let annotations = BTreeMap::from([(SPEC_HASH.to_string(), hash)]);
            let job = Job {
                metadata: child_meta(p, &owner, Some(annotations)),
                spec: Some(JobSpec {
                    completions: Some(p.spec.replicas),
                    parallelism: Some(p.spec.replicas),
                    template,
                    ..Default::default()
                }),
                ..Default::default()
            };
            Desired { deployment: None, service: None, job: Some(job) }
        }
    })
}

/// Status of the local placement from the applied children.
pub fn placement_status(
    p: &R1Pipeline,
    node: Option<&LocalNode>,
    dep: Option<&Deployment>,
    job: Option<&Job>,
) -> PlacementStatus {
    let replicas = p.spec.replicas;
    let (ready, phase) = match (dep, job) {
        (Some(d), _) => {
            let st = d.status.clone().unwrap_or_default();
            let observed = st.observed_generation >= d.metadata.generation && st.observed_generation.is_some();
            let ready = st.ready_replicas.unwrap_or(0);
            let updated = st.updated_replicas.unwrap_or(0);
            // Pods of an older template still count in status.replicas: a
            // rollout is done only when they are gone (a new template whose
            // pods cannot start must not look ready behind the old pods).
            let total = st.replicas.unwrap_or(0);
            let done = observed && ready >= replicas && (replicas == 0 || updated >= replicas) && total <= replicas;
            (ready.min(replicas), if done { PlacementPhase::Running } else { PlacementPhase::Pending })
        }
        (None, Some(j)) => {
            let st = j.status.clone().unwrap_or_default();
            let has = |t: &str| st.conditions.iter().flatten().any(|c| c.type_ == t && c.status == "True");
            let succeeded = st.succeeded.unwrap_or(0);
            let phase = if has("Failed") {
                PlacementPhase::Failed
            } else if has("Complete") || (replicas == 0) {
                PlacementPhase::Succeeded
            } else {
                PlacementPhase::Pending
            };
            (succeeded.min(replicas), phase)
        }
        (None, None) => (0, PlacementPhase::Pending),
    };
    PlacementStatus {
        node: node.map(|n| n.name.clone()),
        peer_id: node.and_then(|n| n.peer_id.clone()),
        replicas,
        ready_replicas: ready,
        phase,
        message: None,
    }
}

/// Waiting reasons of a container that will not resolve without the user
/// (a fixed set: they become condition reasons).
pub const CONTAINER_PROBLEMS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// True when the child has pods that exist but are not all ready (or done):
/// only then are the pods worth reading for a container problem.
pub fn pods_pending(dep: Option<&Deployment>, job: Option<&Job>) -> bool {
    if let Some(d) = dep {
        let st = d.status.as_ref();
        let pods = st.and_then(|s| s.replicas).unwrap_or(0);
        let ready = st.and_then(|s| s.ready_replicas).unwrap_or(0);
        return pods > ready;
    }
    job.and_then(|j| j.status.as_ref()).is_some_and(|s| s.active.unwrap_or(0) > 0 || s.failed.unwrap_or(0) > 0)
}

/// The first container of the pipeline's pods that is stuck in a state only
/// the user can fix (crash loop, image that cannot be pulled, bad config),
/// as a condition reason and a message that says which pod, which
/// container, why, and what to look at.
pub fn container_problem<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Option<(String, String)> {
    let mut pods: Vec<&Pod> = pods.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let st = pod.status.as_ref();
        let statuses = st
            .into_iter()
            .flat_map(|s| s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten()));
        for cs in statuses {
            let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) else { continue };
            let Some(reason) = waiting.reason.as_deref().filter(|r| CONTAINER_PROBLEMS.contains(r)) else { continue };
            let mut msg = format!("pod {name} container {}: {reason}", cs.name);
            if let Some(t) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
                msg.push_str(&format!(
                    " (restarted {} times, last exit code {}{})",
                    cs.restart_count,
                    t.exit_code,
                    t.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
                ));
            }
            if let Some(m) = waiting.message.as_deref().filter(|m| !m.is_empty()) {
                let m: String = m.chars().take(300).collect();
                msg.push_str(&format!("; {m}"));
            }
            msg.push_str(&if reason == "CrashLoopBackOff" {
                format!("; see `kubectl logs {name} -c {} --previous`", cs.name)
            } else {
                format!("; see `kubectl describe pod {name}`")
            });
            return Some((reason.to_string(), msg));
        }
    }
    None
}

/// Reasons of [`key_problem`].
const KEY_PROBLEMS: &[&str] = &["KeySecretNotFound", "WrongKey"];

/// Conditions for the pipeline from its local placement.
pub fn placement_conditions(p: &R1Pipeline, placement: &PlacementStatus, waiting: Option<&str>) -> Vec<Want> {
    placement_conditions_with(p, placement, waiting, None)
}

/// As [`placement_conditions`], with a container problem found in the
/// pipeline's pods: while not ready it names the problem instead of a count.
pub fn placement_conditions_with(
    p: &R1Pipeline,
    placement: &PlacementStatus,
    waiting: Option<&str>,
    problem: Option<&(String, String)>,
) -> Vec<Want> {
    let mut wanted = match placement.phase {
        PlacementPhase::Failed => conditions::stalled("JobFailed", "the Job failed; change the pipeline to retry"),
        PlacementPhase::Succeeded => conditions::ready("Succeeded", "all completions succeeded"),
        PlacementPhase::Running => conditions::ready("Available", "all replicas are ready"),
        PlacementPhase::Pending => match waiting {
            Some(msg) => conditions::progressing("ModelNotReady", msg),
            // Only the key's owner can fix these: waiting would not.
            None if problem.is_some_and(|(r, _)| KEY_PROBLEMS.contains(&r.as_str())) => {
                let (reason, msg) = problem.expect("checked");
                conditions::stalled(reason, msg)
            }
            None if problem.is_some() => {
                let (reason, msg) = problem.expect("checked");
                conditions::progressing(
                    reason,
                    &format!("{}/{} ready; {msg}", placement.ready_replicas, placement.replicas),
                )
            }
            None if p.spec.mode == PipelineMode::Job => conditions::progressing(
                "CompletionsPending",
                &format!("{}/{} completions succeeded", placement.ready_replicas, placement.replicas),
            ),
            None => conditions::progressing(
                "ReplicasNotReady",
                &format!("{}/{} replicas ready", placement.ready_replicas, placement.replicas),
            ),
        },
    };
    let on = match &placement.node {
        Some(n) => format!("placed on R1Node {n}"),
        None => "placed on this cluster (it has no R1Node)".into(),
    };
    wanted.push(Want::new(SCHEDULED, true, "LocalCluster", on));
    wanted
}

/// Condition type saying whether the placement asked for is honoured.
pub const SCHEDULED: &str = "Scheduled";

/// Where the pipeline may run, from its placement and this cluster's R1Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// This cluster runs (its part of) the pipeline.
    pub run_here: bool,
    /// Reason and message when the placement is not fully honoured.
    pub unmet: Option<(&'static str, String)>,
}

/// Decides where the pipeline runs without a network (pure): only this
/// cluster can run anything, so a placement that asks for more, or
/// excludes this cluster, is reported as not scheduled, and nothing runs
/// where the placement excludes it. With Deeploy, `network::schedule`.
pub fn schedule(p: &R1Pipeline, local: Option<&LocalNode>) -> Result<Schedule, Invalid> {
    const LATER: &str =
        "placement across the network needs Deeploy, which runs when this cluster has an R1Node and CSTORE (--cstore-endpoints)";
    let pl = &p.spec.placement;
    let this = match local {
        Some(n) => format!("this cluster (R1Node {:?})", n.name),
        None => "this cluster (it has no R1Node)".to_string(),
    };
    let unmet = |run_here, reason, msg: String| Ok(Schedule { run_here, unmet: Some((reason, msg)) });
    if let Some(sel) = &pl.cluster_selector {
        let selector: Selector = sel
            .clone()
            .try_into()
            .map_err(|e| Invalid::new("InvalidPlacement", format!("placement.clusterSelector: {e}")))?;
        let labels = local.map(|n| n.labels.clone()).unwrap_or_default();
        if !selector.matches(&labels) {
            return unmet(
                false,
                "ClusterNotSelected",
                format!("placement.clusterSelector does not match {this}; {LATER}"),
            );
        }
    }
    if !pl.nodes.is_empty() {
        let is_here = |s: &String| local.is_some_and(|n| &n.name == s || n.peer_id.as_ref() == Some(s));
        let others: Vec<&str> = pl.nodes.iter().filter(|s| !is_here(s)).map(String::as_str).collect();
        if others.len() == pl.nodes.len() {
            return unmet(false, "NodesUnavailable", format!("placement.nodes does not name {this}; {LATER}"));
        }
        if !others.is_empty() {
            return unmet(
                true,
                "NodesUnavailable",
                format!("runs on {this} only; nodes {} wait: {LATER}", others.join(", ")),
            );
        }
    }
    if pl.clusters > 1 {
        return unmet(true, "NotEnoughClusters", format!("runs on 1 of {} clusters ({this}); {LATER}", pl.clusters));
    }
    Ok(Schedule { run_here: true, unmet: None })
}

/// The models the pipeline names, from the cache (a GET only for one the
/// cache does not have: a missing model stalls the pipeline, so a stale
/// miss must not), and the cluster's offer nodeSelector.
async fn read_inputs(p: &R1Pipeline, ctx: &Context, node: Option<&LocalNode>) -> Result<Inputs> {
    let ns = p.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<R1Model> = Api::namespaced(ctx.client.clone(), &ns);
    let mut models = BTreeMap::new();
    for m in &p.spec.models {
        let state = match cached_or_get(&ctx.caches.models, &api, Some(&ns), &m.name).await? {
            None => ModelState::Missing,
            Some(model) => match model_cid(&model) {
                Some(cid) => {
                    ModelState::Ready { cid, key: model.spec.encryption.as_ref().map(|e| e.key_secret_ref.clone()) }
                }
                None => ModelState::NotReady,
            },
        };
        models.insert(m.name.clone(), state);
    }
    Ok(Inputs {
        models,
        node_selector: node.map(|n| n.node_selector.clone()).unwrap_or_default(),
        delivery: ctx.r1fs.get().and_then(|r| r.delivery()),
    })
}

/// The CID a model currently resolves to, when it is ready.
/// Known from the spec for a `cid` source, from the status (of the current
/// generation) for an imported one. Availability is not asked: delivery
/// waits in the pod until the content can be fetched, so holders that
/// come and go (a restart, a lost heartbeat) do not change the pods.
fn model_cid(m: &R1Model) -> Option<String> {
    match &m.spec.source {
        ModelSource { cid: Some(c), .. } => crate::r1fs::cid::parse(c).ok().map(|c| crate::r1fs::cid::canonical(&c)),
        _ => {
            let status = m.status.as_ref()?;
            (status.observed_generation == m.metadata.generation).then(|| status.cid.clone())?
        }
    }
}

/// True when `obj` exists and is not controlled by `p`: the operator must not
/// take over an object a user made. A child of an earlier R1Pipeline of the
/// same name (deleted and made again, e.g. a Deeploy copy moved away and
/// back) is not foreign: it is adopted, as the garbage collector would
/// otherwise delete it only later.
fn foreign<K: Resource>(obj: Option<&K>, p: &R1Pipeline) -> bool {
    let uid = p.uid();
    obj.is_some_and(|o| {
        !o.owner_references().iter().any(|r| {
            r.controller == Some(true)
                && (Some(&r.uid) == uid.as_ref()
                    || (r.kind == "R1Pipeline" && r.api_version.starts_with("ratio1.ai/") && r.name == p.name_any()))
        })
    })
}

/// Deletes a child that the current spec no longer wants, if it is ours.
async fn remove_if_owned<K>(api: &Api<K>, existing: Option<&Arc<K>>, p: &R1Pipeline) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if let Some(o) = existing {
        if !foreign(Some(o.as_ref()), p) {
            let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
            match api.delete(&o.name_any(), &dp).await {
                Ok(_) => tracing::info!(kind = %K::kind(&()), "deleted child the spec no longer needs"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// A child as the cache has it. A child the pipeline is about to write and
/// the owned cache does not hold is looked up by GET only when the names
/// cache says an object of that name exists (or cannot tell yet): a user's
/// object of the same name must be found before a forced apply would take
/// it over, and a name nobody uses needs no request.
async fn current<K>(
    store: &Store<K>,
    names: &super::Names<K>,
    api: &Api<K>,
    ns: &str,
    name: &str,
    wanted: bool,
) -> Result<Option<Arc<K>>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + 'static,
{
    if !wanted || names.exists(ns, name) == Some(false) {
        return Ok(cached(store, Some(ns), name));
    }
    cached_or_get(store, api, Some(ns), name).await
}

/// Applies a child unless the cached one is what the last apply of the same
/// desired object produced (nothing changed it since).
async fn apply_child<K>(ctx: &Context, api: &Api<K>, name: &str, desired: &K, cur: Option<&Arc<K>>) -> Result<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
{
    let hash = hash_of(desired);
    if let Some(c) = cur.filter(|c| ctx.applied_unchanged(c.as_ref(), &hash)) {
        return Ok(c.clone());
    }
    let out = apply(api, name, desired).await?;
    ctx.remember_applied(&out, &hash);
    Ok(Arc::new(out))
}

/// A container problem of this cluster's pods, looked for only while the
/// placement here is pending for no other known reason and pods exist
/// that are not ready (the pod watch wakes the pipeline when they change).
#[allow(clippy::too_many_arguments)]
fn local_problem(
    ctx: &Context,
    ns: &str,
    name: &str,
    mounts: &[Mount],
    placement: &PlacementStatus,
    waiting: Option<&str>,
    dep: &Option<Arc<Deployment>>,
    job: &Option<Arc<Job>>,
) -> Option<(String, String)> {
    if placement.phase != PlacementPhase::Pending || waiting.is_some() || !pods_pending(dep.as_deref(), job.as_deref())
    {
        return None;
    }
    let pods = pods_of(ctx, ns, name);
    key_problem(mounts, pods.iter().map(|p| p.as_ref())).or_else(|| container_problem(pods.iter().map(|p| p.as_ref())))
}

/// Each mount with the number of `pods` whose fetch of its current CID
/// completed (their annotation names that CID at that index, and the init
/// container of that index exited 0).
pub fn delivered(mounts: &[Mount], pods: &[Arc<Pod>]) -> Vec<crate::crd::ContentStatus> {
    mounts
        .iter()
        .enumerate()
        .map(|(i, Mount { cid, path, .. })| {
            let fetcher = format!("{DELIVERY_PREFIX}fetch-{i}");
            let n = pods
                .iter()
                .filter(|pod| {
                    let ann = delivered_cids(pod);
                    let done = pod.status.as_ref().and_then(|s| s.init_container_statuses.as_ref()).is_some_and(|st| {
                        st.iter().any(|c| {
                            c.name == fetcher
                                && c.state
                                    .as_ref()
                                    .and_then(|s| s.terminated.as_ref())
                                    .is_some_and(|t| t.exit_code == 0)
                        })
                    });
                    ann.get(i) == Some(cid) && done
                })
                .count();
            crate::crd::ContentStatus { mount_path: path.clone(), cid: cid.clone(), delivered_pods: n as i32 }
        })
        .collect()
}

/// The pipeline's pods, from the pod cache.
fn pods_of(ctx: &Context, ns: &str, name: &str) -> Vec<Arc<Pod>> {
    ctx.caches
        .pods
        .state()
        .into_iter()
        .filter(|pod| {
            pod.metadata.namespace.as_deref() == Some(ns)
                && pod.labels().get(PIPELINE_LABEL).map(String::as_str) == Some(name)
        })
        .collect()
}

#[tracing::instrument(skip_all, fields(kind = "R1Pipeline", namespace = %p.namespace().unwrap_or_default(), name = %p.name_any(), generation = ?p.metadata.generation))]
pub async fn reconcile(p: Arc<R1Pipeline>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start("R1Pipeline");
    let ns = p.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = p.name_any();
    let pipelines: Api<R1Pipeline> = Api::namespaced(ctx.client.clone(), &ns);
    let old = p.status.clone().unwrap_or_default();
    // Placed by the cluster's R1Node as cached: never by a cache that is not
    // filled yet (a restart would remove what a selector placed here).
    if !ctx.caches.nodes_ready.is_set() {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let node = super::node::local_node(&ctx.caches.nodes.state());
    let mode = network::mode(&p, &ctx, node.is_some());
    if p.metadata.deletion_timestamp.is_some() {
        // Children go with their owner (garbage collection); Deeploy
        // withdraws the intent once the pipeline is gone from the cache.
        return Ok(Action::await_change());
    }
    if let network::Mode::Waiting(why) = &mode {
        // Nothing is placed or removed until Deeploy can see the network:
        // what runs keeps running.
        tracing::debug!(%why, "network placement waits");
        let msg = format!("network placement waits: {why}");
        let status = R1PipelineStatus { conditions: vec![], ..old.clone() };
        finish(
            &ctx,
            &pipelines,
            p.as_ref(),
            p.status.as_ref(),
            status,
            &conditions::progressing("WaitingForNetwork", &msg),
        )
        .await?;
        return Ok(Action::requeue(Duration::from_secs(2)));
    }

    let inputs = read_inputs(&p, &ctx, node.as_ref()).await?;
    let delivery = mounts(&p, &inputs);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);

    // Pure decisions first: where it may run, whether the input is usable,
    // and what to write.
    let scheduled = match &mode {
        network::Mode::Origin(d, me) => network::schedule(d, me, &p).map(|(s, placed)| (s, Some(placed))),
        network::Mode::Copy(_) => Ok((Schedule { run_here: true, unmet: None }, None)),
        _ => schedule(&p, node.as_ref()).map(|s| (s, None)),
    };
    let checked = scheduled.and_then(|(sched, placed)| {
        let waiting = validate(&p, &inputs)?;
        let desired = match sched.run_here {
            true => build(&p, &inputs).map_err(|e| Invalid::new("Internal", e.to_string()))?,
            false => Desired { deployment: None, service: None, job: None },
        };
        Ok((sched, placed, waiting, desired))
    });
    let wants = |k: fn(&Desired) -> bool| checked.as_ref().is_ok_and(|(_, _, _, d)| k(d));
    let c = &ctx.caches;
    let (cur_dep, cur_svc, cur_job) = tokio::try_join!(
        current(&c.deployments, &c.deployment_names, &deployments, &ns, &name, wants(|d| d.deployment.is_some())),
        current(&c.services, &c.service_names, &services, &ns, &name, wants(|d| d.service.is_some())),
        current(&c.jobs, &c.job_names, &jobs, &ns, &name, wants(|d| d.job.is_some())),
    )?;
    let checked = checked.and_then(|(sched, placed, waiting, desired)| {
        for (kind, clash) in [
            ("Deployment", desired.deployment.is_some() && foreign(cur_dep.as_deref(), &p)),
            ("Service", desired.service.is_some() && foreign(cur_svc.as_deref(), &p)),
            ("Job", desired.job.is_some() && foreign(cur_job.as_deref(), &p)),
        ] {
            if clash {
                return Err(Invalid::new(
                    "NameConflict",
                    format!("a {kind} named {name:?} exists and is not managed by this pipeline; rename one of them"),
                ));
            }
        }
        Ok((sched, placed, waiting, desired))
    });
    // A paid pipeline is escrowed before it is placed (and only once it
    // is valid: nothing is escrowed for a pipeline that cannot run).
    let (checked, budget) = match checked {
        Ok(c) => match budget::escrow(&p, &ctx, &mode).await {
            Ok(b) => (Ok(c), b),
            Err(bad) => (Err(bad), old.budget.clone()),
        },
        Err(bad) => (Err(bad), old.budget.clone()),
    };

    let (wanted, placements, action) = match checked {
        Err(bad) => {
            tracing::info!(reason = bad.reason, message = %bad.message, "pipeline is stalled");
            if let network::Mode::Copy(d) = &mode {
                // Placed here but cannot run here: the origin must know,
                // to place it elsewhere.
                d.refuse_copy(&p, &format!("{}: {}", bad.reason, bad.message)).await?;
            }
            // Invalid input waits for a change (of the pipeline, of a model
            // it names, of the R1Node; for a name conflict, the deletion of
            // the object in the way, seen by the names watch) instead of
            // retrying in a loop.
            let action = bad.retry.map_or_else(Action::await_change, Action::requeue);
            (conditions::stalled(bad.reason, &bad.message), old.placements.clone(), action)
        }
        Ok((sched, placed, waiting, desired)) => {
            if let (network::Mode::Origin(d, _), Some(placed)) = (&mode, &placed) {
                network::commit(d, placed).await?;
            }
            let mut applied_job = None;
            // The Deployment and the Service at once: neither waits on the
            // other, and a new pipeline's first reconcile is one round trip
            // shorter.
            let dep = async {
                match &desired.deployment {
                    Some(d) => apply_child(&ctx, &deployments, &name, d, cur_dep.as_ref()).await.map(Some),
                    None => remove_if_owned(&deployments, cur_dep.as_ref(), &p).await.map(|_| None),
                }
            };
            let svc = async {
                match &desired.service {
                    Some(s) => apply_child(&ctx, &services, &name, s, cur_svc.as_ref()).await.map(|_| ()),
                    None => remove_if_owned(&services, cur_svc.as_ref(), &p).await,
                }
            };
            let (applied_dep, ()) = tokio::try_join!(dep, svc)?;
            match &desired.job {
                Some(j) => {
                    let stale = cur_job
                        .as_ref()
                        .filter(|c| !foreign(Some(c.as_ref()), &p))
                        .is_some_and(|c| c.annotations().get(SPEC_HASH) != j.annotations().get(SPEC_HASH));
                    if stale {
                        // Template and completions of a Job are immutable:
                        // replace it; its deletion wakes the pipeline again.
                        remove_if_owned(&jobs, cur_job.as_ref(), &p).await?;
                        return Ok(Action::requeue(Duration::from_secs(1)));
                    }
                    applied_job = Some(apply_child(&ctx, &jobs, &name, j, cur_job.as_ref()).await?);
                }
                None => remove_if_owned(&jobs, cur_job.as_ref(), &p).await?,
            }
            if let (network::Mode::Origin(d, me), Some(placed)) = (&mode, &placed) {
                let local = placement_status(&p, node.as_ref(), applied_dep.as_deref(), applied_job.as_deref());
                let problem =
                    local_problem(&ctx, &ns, &name, &delivery, &local, waiting.as_deref(), &applied_dep, &applied_job);
                let placements = network::placements(d, me, placed, local);
                let wanted =
                    network::conditions(&p, &placements, sched.unmet.as_ref(), waiting.as_deref(), problem.as_ref());
                // A running escrow moves with the epochs, not the object:
                // its status follows them.
                let next = match &budget {
                    Some(b) if !b.over => ctx.resync.min(budget::FOLLOW),
                    _ => ctx.resync,
                };
                (wanted, placements, Action::requeue(next))
            } else {
                match sched.unmet {
                    Some((reason, msg)) => {
                        // Not what was asked for: say so, whatever runs here.
                        let mut wanted = conditions::stalled(reason, &msg);
                        wanted.push(Want::new(SCHEDULED, false, reason, msg));
                        let placements = match sched.run_here {
                            true => {
                                vec![placement_status(
                                    &p,
                                    node.as_ref(),
                                    applied_dep.as_deref(),
                                    applied_job.as_deref(),
                                )]
                            }
                            false => vec![],
                        };
                        (wanted, placements, Action::requeue(ctx.resync))
                    }
                    None => {
                        let placement =
                            placement_status(&p, node.as_ref(), applied_dep.as_deref(), applied_job.as_deref());
                        // Pods that exist but are not ready: look for a container
                        // the user must fix (the pod watch wakes the pipeline
                        // when their state changes).
                        let problem = local_problem(
                            &ctx,
                            &ns,
                            &name,
                            &delivery,
                            &placement,
                            waiting.as_deref(),
                            &applied_dep,
                            &applied_job,
                        );
                        let wanted = placement_conditions_with(&p, &placement, waiting.as_deref(), problem.as_ref());
                        if let network::Mode::Copy(d) = &mode {
                            network::report(d, &p, placement.clone(), &wanted).await?;
                        }
                        (wanted, vec![placement], Action::requeue(ctx.resync))
                    }
                }
            }
        }
    };

    // What R1FS delivered into this cluster's pods (where it delivers).
    let content = match &inputs.delivery {
        Some(_) if !delivery.is_empty() => delivered(&delivery, &pods_of(&ctx, &ns, &name)),
        _ => vec![],
    };
    let status = R1PipelineStatus {
        observed_generation: p.metadata.generation,
        replicas: placements.iter().map(|x| x.replicas).sum(),
        ready_replicas: placements.iter().map(|x| x.ready_replicas).sum(),
        clusters: placements.len() as i32,
        placements,
        content,
        budget,
        conditions: vec![],
    };
    finish(&ctx, &pipelines, p.as_ref(), p.status.as_ref(), status, &wanted).await?;
    Ok(action)
}

/// Pipelines in `namespace` that mount model `model` (for the model watch).
pub fn mounting(
    pipelines: &[Arc<R1Pipeline>],
    namespace: Option<&str>,
    model: &str,
) -> Vec<kube::runtime::reflector::ObjectRef<R1Pipeline>> {
    pipelines
        .iter()
        .filter(|p| p.namespace().as_deref() == namespace && p.spec.models.iter().any(|m| m.name == model))
        .map(|p| kube::runtime::reflector::ObjectRef::from_obj(p.as_ref()))
        .collect()
}

mod budget;
mod network;

#[cfg(test)]
mod tests;
