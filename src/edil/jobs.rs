//! Container trainers (docs/edil.md, "Container trainers"): a participant
//! runs the round's trainer image as a Kubernetes Job in its own cluster
//! instead of the built-in trainer. The Job's pod
//!
//! 1. fetches the round's model document from R1FS (an init container of
//!    the operator's image, through the R1FS gateway for pods);
//! 2. trains (an init container of the trainer image, the participant's
//!    shard mounted read-only), writing its weights to a scratch volume;
//! 3. adds them to R1FS through the gateway's import routes, with a token
//!    for this Job's pin only (the operator's image).
//!
//! The operator then reads the weights from its own R1FS, encrypts, signs
//! and seals them as it does the built-in trainer's, and releases the pin
//! and the Job. The plaintext weights never leave the participant's
//! cluster: they are in no record, and the pin is never announced.

use super::round::Round;
use super::trainer::Metrics;
use crate::crd::TrainerSpec;
use crate::r1fs::service::Delivery;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, HostPathVolumeSource, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;
use std::path::Path;

/// Owners of the pins of trainer Jobs' weights: import pins (the gateway
/// takes them with a token), never announced, that the R1FS pass leaves
/// to EDIL.
pub const PIN_PREFIX: &str = crate::r1fs::service::PRIVATE_IMPORT_PREFIX;
/// Where the trainer finds the model, its shard and where it writes.
pub const MODEL: &str = "/edil/in/model.json";
pub const DATA_DIR: &str = "/edil/data";
pub const OUT: &str = "/edil/out/update.json";
/// The label naming the model a Job trains (the R1Model's uid).
pub const MODEL_LABEL: &str = "ratio1.ai/edil-model";

/// The Job of this node for `round` (one per round: its owner, model and
/// number).
pub fn name(round: &Round) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{}/{}", round.id(), round.round).as_bytes());
    format!("edil-train-{}", h[..8].iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The pin owner its weights come back under.
pub fn pin_owner(round: &Round) -> String {
    format!("{PIN_PREFIX}{}", name(round))
}

/// Whether this node runs `image`: it is one of `prefixes`
/// (`--edil-trainer-image`), or starts with one that ends a name part
/// (`/`, `:` or `@`: `registry.example/trainers/` allows neither
/// `registry.example/trainers-evil/x` nor, through `…/lr`, `…/lr-evil`).
pub fn allowed(image: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| image == p || (prefix_ok(p) && image.starts_with(p.as_str())))
}

/// Whether `p` ends a name part, so that it allows what starts with it.
pub fn prefix_ok(p: &str) -> bool {
    p.len() > 1 && p.ends_with(['/', ':', '@'])
}

/// The most a trainer container may take (its spec's `resources` are
/// clamped to these; only CPU and memory are honoured).
const MAX_CPU_MILLIS: u64 = 2_000;
const MAX_MEMORY_MI: u64 = 4_096;
/// Scratch space of each of the pod's volumes (the model in, the weights
/// out, the trainer's /tmp).
const SCRATCH: &str = "1Gi";

/// CPU (millicores) or memory (MiB) of a quantity, if it parses.
fn amount(q: &Quantity, cpu: bool) -> Option<u64> {
    let s = q.0.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len()));
    let n: f64 = num.parse().ok()?;
    let v = match (cpu, unit) {
        (true, "m") => n,
        (true, "") => n * 1000.0,
        (false, "Ki") => n / 1024.0,
        (false, "Mi") => n,
        (false, "Gi") => n * 1024.0,
        (false, "Ti") => n * 1024.0 * 1024.0,
        (false, "") => n / (1024.0 * 1024.0),
        (false, "k") => n * 1000.0 / (1024.0 * 1024.0),
        (false, "M") => n * 1e6 / (1024.0 * 1024.0),
        (false, "G") => n * 1e9 / (1024.0 * 1024.0),
        _ => return None,
    };
    (v.is_finite() && v >= 0.0).then_some(v.ceil() as u64)
}

/// The trainer's resources: CPU and memory from the spec, each at most
/// this node's maximum (a quantity that does not parse is dropped), a
/// memory limit always; nothing else (no GPUs, no other resources).
fn resources(spec: Option<&ResourceRequirements>) -> ResourceRequirements {
    let q = |s: String| Quantity(s);
    let clamp = |m: Option<&BTreeMap<String, Quantity>>| -> BTreeMap<String, Quantity> {
        let mut out = BTreeMap::new();
        for (name, cpu, max) in [("cpu", true, MAX_CPU_MILLIS), ("memory", false, MAX_MEMORY_MI)] {
            if let Some(v) = m.and_then(|m| m.get(name)).and_then(|v| amount(v, cpu)) {
                let v = v.clamp(1, max);
                out.insert(name.to_string(), q(if cpu { format!("{v}m") } else { format!("{v}Mi") }));
            }
        }
        out
    };
    let mut requests = clamp(spec.and_then(|r| r.requests.as_ref()));
    let mut limits = clamp(spec.and_then(|r| r.limits.as_ref()));
    requests.entry("cpu".into()).or_insert_with(|| q("100m".into()));
    requests.entry("memory".into()).or_insert_with(|| q("128Mi".into()));
    limits.entry("memory".into()).or_insert_with(|| q("1Gi".into()));
    ResourceRequirements { requests: Some(requests), limits: Some(limits), ..Default::default() }
}

/// The trainer Job of `round` in `namespace`, its shard the file
/// `dataset` on the node (a hostPath, read-only), at most until the
/// round's deadline.
pub fn job(
    round: &Round,
    trainer: &TrainerSpec,
    dataset: &Path,
    namespace: &str,
    delivery: &Delivery,
    token: String,
    now_ms: u64,
) -> Result<Job, String> {
    let cid = &round.stored.as_ref().ok_or("the round names no model in R1FS")?.cid;
    let file = dataset.file_name().and_then(|f| f.to_str()).ok_or("the dataset's path names no file")?;
    let data = format!("{DATA_DIR}/{file}");
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    };
    let env = |name: &str, value: String| EnvVar { name: name.into(), value: Some(value), ..Default::default() };
    let fetch = crate::controller::pipeline::r1fs_container(
        "edil-fetch".into(),
        delivery,
        &["get", cid, MODEL],
        vec![],
        vec![mount("in", "/edil/in", false)],
    );
    let upload = crate::controller::pipeline::r1fs_container(
        "edil-upload".into(),
        delivery,
        &["add", OUT],
        vec![env("RATIO1_IMPORT_OWNER", pin_owner(round)), env("RATIO1_IMPORT_TOKEN", token)],
        vec![mount("out", "/edil/out", true)],
    );
    let resources = resources(trainer.resources.as_ref());
    let train = Container {
        name: "edil-trainer".into(),
        image: Some(trainer.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: (!trainer.command.is_empty()).then(|| trainer.command.clone()),
        args: (!trainer.args.is_empty()).then(|| trainer.args.clone()),
        env: Some(vec![
            env("R1_EDIL_MODEL", MODEL.into()),
            env("R1_EDIL_DATA", data.clone()),
            env("R1_EDIL_OUT", OUT.into()),
            env("R1_EDIL_STEPS", round.steps.to_string()),
            env("R1_EDIL_LR", round.lr.to_string()),
            env("R1_EDIL_ROUND", round.round.to_string()),
            env("R1_EDIL_VALUES", round.values().to_string()),
        ]),
        volume_mounts: Some(vec![
            mount("in", "/edil/in", true),
            // The trainer sees its shard alone: a subPath of the directory.
            VolumeMount { sub_path: Some(file.into()), ..mount("data", &data, true) },
            mount("out", "/edil/out", false),
            mount("tmp", "/tmp", false),
        ]),
        resources: Some(resources),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        // Another party's image next to this node's data: no privileges.
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let dir = dataset.parent().and_then(|d| d.to_str()).ok_or("the dataset's path has no directory")?;
    let empty = |name: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(Quantity(SCRATCH.into())), ..Default::default() }),
        ..Default::default()
    };
    let labels: BTreeMap<String, String> = [
        (crate::objects::MANAGED_BY.0.to_string(), crate::objects::MANAGED_BY.1.to_string()),
        (MODEL_LABEL.to_string(), round.model.clone()),
    ]
    .into();
    // Only the shard's own file of its directory is mounted.
    let data_volume = Volume {
        name: "data".into(),
        host_path: Some(HostPathVolumeSource { path: dir.into(), type_: Some("Directory".into()) }),
        ..Default::default()
    };
    let left = (round.deadline_ms.saturating_sub(now_ms) / 1000).max(10) as i64;
    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        init_containers: Some(vec![fetch, train]),
        containers: vec![upload],
        volumes: Some(vec![empty("in"), empty("out"), empty("tmp"), data_volume]),
        ..Default::default()
    };
    Ok(Job {
        metadata: kube::api::ObjectMeta {
            name: Some(name(round)),
            namespace: Some(namespace.into()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(left),
            ttl_seconds_after_finished: Some(600),
            template: PodTemplateSpec {
                metadata: Some(kube::api::ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Why a Job failed (its `Failed` condition), if it did.
pub fn failed(job: &Job) -> Option<String> {
    let c = job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Failed" && c.status == "True")?;
    Some(format!("{}: {}", c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default()))
}

/// Why a Job's pod cannot start and will not by waiting (an image that
/// cannot be pulled or is not there, a configuration it cannot get), if
/// so: the Job is given up at once rather than at the round's deadline.
pub fn stuck(pod: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    const HOPELESS: [&str; 5] =
        ["ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError"];
    let st = pod.status.as_ref()?;
    let all = st.init_container_statuses.iter().flatten().chain(st.container_statuses.iter().flatten());
    all.filter_map(|c| Some((c.name.clone(), c.state.as_ref()?.waiting.clone()?))).find_map(|(name, w)| {
        let reason = w.reason.unwrap_or_default();
        HOPELESS.contains(&reason.as_str()).then(|| format!("{name}: {reason}: {}", w.message.unwrap_or_default()))
    })
}

/// What a trainer wrote: its weights (exactly `values`, finite), and the
/// loss, accuracy and sample count it reported, if any.
pub fn output(bytes: &[u8], values: usize) -> Result<(Vec<f32>, Option<Metrics>, u64), String> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Out {
        Weights(Vec<f64>),
        Doc { weights: Vec<f64>, loss: Option<f64>, accuracy: Option<f64>, samples: Option<u64> },
    }
    let out: Out = serde_json::from_slice(bytes).map_err(|e| {
        format!("the trainer's output is neither a JSON array of numbers nor an object with weights: {e}")
    })?;
    let (w, loss, accuracy, samples) = match out {
        Out::Weights(w) => (w, None, None, None),
        Out::Doc { weights, loss, accuracy, samples } => (weights, loss, accuracy, samples),
    };
    if w.len() != values {
        return Err(format!("the trainer wrote {} weights, the model has {values}", w.len()));
    }
    if !w.iter().all(|v| v.is_finite() && v.abs() < f32::MAX as f64) {
        return Err("the trainer wrote weights that are not finite".into());
    }
    let metrics = match (loss, accuracy) {
        (Some(l), Some(a)) if l.is_finite() && (0.0..=1.0).contains(&a) => {
            Some(Metrics { loss: l as f32, accuracy: a as f32 })
        }
        _ => None,
    };
    Ok((w.iter().map(|v| *v as f32).collect(), metrics, samples.unwrap_or(1).max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round() -> Round {
        serde_json::from_value(serde_json::json!({
            "model": "uid-1", "namespace": "ns", "name": "m", "round": 7, "owner": "o", "aggregator": "a",
            "participants": ["p1", "p2"], "minParticipants": 2, "deadlineMs": 100_000,
            "stored": {"cid": "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", "values": 4},
            "trained": 0, "keys": {"p1": "x", "p2": "y"}, "dataset": "d", "steps": 5, "lr": 0.5,
            "trainer": {"image": "trainers.example/lr:1", "args": ["--steps", "$(R1_EDIL_STEPS)"]}
        }))
        .unwrap()
    }

    #[test]
    fn a_trainer_job_reads_its_shard_alone_runs_unprivileged_and_ends_by_the_deadline() {
        let r = round();
        let t = r.trainer.clone().unwrap();
        let d = Delivery { endpoint: "http://$(HOST_IP):1".into(), image: "op:dev".into() };
        let j = job(&r, &t, Path::new("/data/shards/churn.csv"), "ratio1-system", &d, "tok".into(), 40_000).unwrap();
        assert_eq!(j.metadata.name.as_deref(), Some(name(&r).as_str()));
        let spec = j.spec.unwrap();
        assert_eq!((spec.backoff_limit, spec.active_deadline_seconds), (Some(0), Some(60)));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let inits = pod.init_containers.unwrap();
        let names: Vec<&str> = inits.iter().map(|c| c.name.as_str()).collect();
        assert_eq!((names, pod.containers[0].name.as_str()), (vec!["edil-fetch", "edil-trainer"], "edil-upload"));
        let tr = &inits[1];
        let shard = tr.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == "data").unwrap();
        assert_eq!(
            (shard.mount_path.as_str(), shard.sub_path.as_deref(), shard.read_only),
            ("/edil/data/churn.csv", Some("churn.csv"), Some(true))
        );
        let env: BTreeMap<String, String> =
            tr.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect();
        assert_eq!(env["R1_EDIL_DATA"], "/edil/data/churn.csv");
        assert_eq!((env["R1_EDIL_STEPS"].as_str(), env["R1_EDIL_VALUES"].as_str()), ("5", "4"));
        let sc = tr.security_context.as_ref().unwrap();
        assert_eq!((sc.run_as_non_root, sc.allow_privilege_escalation), (Some(true), Some(false)));
        // Default resources; asked ones clamped, GPUs and the like dropped.
        let res = tr.resources.as_ref().unwrap();
        assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "1Gi");
        let q = |s: &str| Quantity(s.into());
        let greedy = ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".into(), q("64")), ("nvidia.com/gpu".into(), q("8"))])),
            limits: Some(BTreeMap::from([("memory".into(), q("1Ti"))])),
            ..Default::default()
        };
        let got = resources(Some(&greedy));
        let (req, lim) = (got.requests.unwrap(), got.limits.unwrap());
        assert_eq!((req["cpu"].0.as_str(), lim["memory"].0.as_str()), ("2000m", "4096Mi"));
        assert!(!req.contains_key("nvidia.com/gpu"));
        let modest = ResourceRequirements {
            limits: Some(BTreeMap::from([("memory".into(), q("512Mi")), ("cpu".into(), q("500m"))])),
            ..Default::default()
        };
        let lim = resources(Some(&modest)).limits.unwrap();
        assert_eq!((lim["cpu"].0.as_str(), lim["memory"].0.as_str()), ("500m", "512Mi"));
        // The upload carries the token of this Job's pin only.
        let up: Vec<(String, String)> =
            pod.containers[0].env.iter().flatten().filter_map(|e| Some((e.name.clone(), e.value.clone()?))).collect();
        assert!(
            up.contains(&("RATIO1_IMPORT_OWNER".into(), pin_owner(&r)))
                && up.contains(&("RATIO1_IMPORT_TOKEN".into(), "tok".into()))
        );
        assert!(pin_owner(&r).starts_with(crate::r1fs::service::IMPORT_PREFIX));
        // Another round, another Job.
        assert_ne!(name(&r), name(&Round { round: 8, ..r.clone() }));
        assert!(job(&Round { stored: None, ..r }, &t, Path::new("/d/x.csv"), "ns", &d, "t".into(), 0).is_err());
    }

    #[test]
    fn a_pod_that_cannot_pull_its_image_is_stuck_and_a_pulling_one_is_not() {
        let pod = |reason: &str| -> k8s_openapi::api::core::v1::Pod {
            serde_json::from_value(serde_json::json!({"status": {"initContainerStatuses": [
                {"name": "edil-fetch", "ready": true, "restartCount": 0, "image": "i", "imageID": "",
                 "state": {"terminated": {"exitCode": 0}}},
                {"name": "edil-trainer", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                 "state": {"waiting": {"reason": reason, "message": "no such image"}}}]}}))
            .unwrap()
        };
        let why = stuck(&pod("ErrImageNeverPull")).unwrap();
        assert!(why.contains("edil-trainer") && why.contains("no such image"), "{why}");
        assert_eq!(stuck(&pod("PodInitializing")), None);
        assert_eq!(stuck(&k8s_openapi::api::core::v1::Pod::default()), None);
    }

    #[test]
    fn only_allowed_images_run_and_outputs_are_checked() {
        let p = vec!["trainers.example/".to_string(), "reg.example/lr".to_string()];
        assert!(allowed("trainers.example/lr:1", &p) && allowed("reg.example/lr", &p));
        assert!(!allowed("evil.example/trainers.example/lr", &p) && !allowed("x", &[String::new()]));
        // A prefix allows only what it ends a name part of.
        assert!(
            !allowed("reg.example/lr-evil:1", &p) && !allowed("trainers.example.evil/x", &["trainers.example".into()])
        );
        assert!(prefix_ok("r/") && prefix_ok("r/lr:") && !prefix_ok("r/lr") && !prefix_ok("/"));
        assert_eq!(output(b"[1, 2.5, -3]", 3).unwrap().0, vec![1.0, 2.5, -3.0]);
        let (w, m, n) = output(br#"{"weights": [1, 2], "loss": 0.4, "accuracy": 0.9, "samples": 30}"#, 2).unwrap();
        assert_eq!((w, m.map(|m| m.accuracy), n), (vec![1.0, 2.0], Some(0.9), 30));
        assert!(output(b"[1, 2]", 3).unwrap_err().contains("2 weights"));
        assert!(output(b"[1e300, 2]", 2).unwrap_err().contains("finite"));
        assert!(output(b"{\"w\": 1}", 2).is_err());
    }
}
