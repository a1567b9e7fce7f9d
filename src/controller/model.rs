//! R1Model: validate the source and record status. A `cid` source is kept
//! on `spec.replication` R1FS nodes by R1FS (which reads the models from
//! the same cache); this reconciler reports who holds it and is `Ready`
//! when enough do. Without R1FS (no data directory) a `cid` source is only
//! addressed. A `volume` source is imported by a Job in the model's
//! namespace (the operator's image runs `ratio1 fs add` on the claim,
//! through the gateway's import routes with a token for this model's
//! generation); its CID is the root the Job pinned, then it is replicated
//! like a `cid` source. Without R1FS delivery set up it waits with
//! `Ready=False, reason=AwaitingR1FS`.

use super::{apply, finish, Context, Error, Result};
use crate::conditions::{self, Invalid, Want};
use crate::crd::{ModelSource, R1Model, R1ModelStatus, TrainingStatus, VolumeSource};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    EnvVar, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Volume, VolumeMount,
};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::Resource;
use kube::ResourceExt;
use std::sync::Arc;

pub use crate::r1fs::service::Holders;

/// Conditions for a CID held by `h` of `replication` wanted.
fn replicated(cid: &str, replication: usize, h: &Holders) -> Vec<Want> {
    let k = h.nodes.len();
    let held = format!("held by {k} of {replication} wanted R1FS nodes");
    if k >= replication {
        let mut w = conditions::ready("Replicated", &format!("{cid} {held}: {}", h.nodes.join(", ")));
        w.push(Want::new("Available", true, "Replicated", format!("{cid} {held}")));
        return w;
    }
    let short = if h.members < replication {
        format!(" (only {} R1FS nodes are in the network)", h.members)
    } else {
        String::new()
    };
    let mut w = conditions::progressing("Replicating", &format!("{cid} {held}{short}"));
    w.push(if k > 0 {
        Want::new("Available", true, "Replicating", format!("{cid} {held}"))
    } else {
        Want::new("Available", false, "NoHolder", format!("no R1FS node holds {cid} yet: add it with `ratio1 fs add`"))
    });
    w
}

/// Where the import of a `volume` source stands (R1FS with delivery on).
#[derive(Clone, Debug, PartialEq)]
pub enum Import {
    Running {
        job: String,
    },
    /// `reason` is `ImportFailed` or `ClaimNotFound`.
    Failed {
        reason: &'static str,
        message: String,
    },
    Done {
        cid: String,
    },
}

/// Conditions and CID for a model's spec (pure); `holders` is R1FS's view
/// of the CID when R1FS runs, `import` the state of a `volume` source's
/// import when R1FS can import.
pub fn evaluate(
    m: &R1Model,
    holders: Option<&dyn Fn(&str) -> Holders>,
    import: Option<&Import>,
) -> Result<(Vec<Want>, Option<String>), Invalid> {
    if let Some(why) = m.spec.training.as_ref().and_then(crate::edil::round::untrainable) {
        return Err(Invalid::new("InvalidTraining", why));
    }
    let wanted = match &m.spec.source {
        ModelSource { cid: Some(_), volume: Some(_) } | ModelSource { cid: None, volume: None } => {
            // The schema's oneOf rejects these; kept for API servers that
            // were given an older CRD.
            return Err(Invalid::new("InvalidSource", "source must set exactly one of cid or volume"));
        }
        ModelSource { cid: Some(cid), volume: None } => {
            // Decoded for real: the schema's pattern checks only the alphabet.
            let parsed =
                crate::r1fs::cid::parse(cid).map_err(|e| Invalid::new("InvalidCid", format!("source.cid: {e}")))?;
            let cid = crate::r1fs::cid::canonical(&parsed);
            let w = match holders {
                Some(h) => replicated(&cid, m.spec.replication.clamp(1, 64) as usize, &h(&cid)),
                None => {
                    let mut w = conditions::ready("ContentAddressed", &format!("artifact is {cid} (R1FS is off here)"));
                    w.push(Want::new("Available", true, "ContentAddressed", "content is addressed by its CID"));
                    w
                }
            };
            (w, Some(cid))
        }
        ModelSource { cid: None, volume: Some(v) } => {
            if escapes(v) {
                return Err(Invalid::new("InvalidSource", "source.volume.path must stay inside the claim (no `..`)"));
            }
            let from = format!("{}:{}", v.claim_name, v.path);
            match import {
                None => {
                    let msg = format!(
                        "import of {from} waits for R1FS with delivery (--data-dir, --r1fs-pod-endpoint, --r1fs-fetch-image)"
                    );
                    let mut w = conditions::progressing("AwaitingR1FS", &msg);
                    w.push(Want::new("Available", false, "AwaitingR1FS", msg));
                    (w, None)
                }
                Some(Import::Running { job }) => {
                    let msg = format!("Job {job} imports {from} into R1FS");
                    let mut w = conditions::progressing("Importing", &msg);
                    w.push(Want::new("Available", false, "Importing", msg));
                    (w, None)
                }
                Some(Import::Failed { reason, message }) => return Err(Invalid::new(reason, message.clone())),
                Some(Import::Done { cid }) => {
                    let w = match holders {
                        Some(h) => replicated(cid, m.spec.replication.clamp(1, 64) as usize, &h(cid)),
                        None => conditions::ready("Imported", &format!("{from} is {cid}")),
                    };
                    (w, Some(cid.clone()))
                }
            }
        }
    };
    Ok(wanted)
}

/// The `Training` condition of a model with `spec.training`, from EDIL's
/// status of it here (`running`: EDIL runs on this node).
pub fn training_condition(running: bool, t: Option<&TrainingStatus>) -> Want {
    let Some(t) = t else {
        return match running {
            true => Want::new("Training", true, "Starting", "the first round is being prepared"),
            false => Want::new(
                "Training",
                false,
                "AwaitingNetwork",
                "federated training runs where CSTORE and the network run (an R1Node, --cstore-endpoints)",
            ),
        };
    };
    let acc = t.accuracy.map_or(String::new(), |a| format!("; accuracy {a:.3} on the participants' shards"));
    if t.completed_rounds >= t.rounds {
        return Want::new("Training", false, "Trained", format!("{} rounds done{acc}", t.completed_rounds));
    }
    match (t.round, &t.aggregator) {
        (Some(r), Some(a)) => Want::new(
            "Training",
            true,
            "RoundInProgress",
            format!(
                "round {r}: {} of {} rounds done; {} participants, aggregator {a}{acc}",
                t.completed_rounds,
                t.rounds,
                t.participants.len()
            ),
        ),
        _ => Want::new(
            "Training",
            false,
            "WaitingForParticipants",
            t.last_failure.clone().unwrap_or_else(|| "waiting for participants".into()),
        ),
    }
}

#[tracing::instrument(skip_all, fields(kind = "R1Model", namespace = %m.namespace().unwrap_or_default(), name = %m.name_any(), generation = ?m.metadata.generation))]
pub async fn reconcile(m: Arc<R1Model>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start("R1Model");
    let ns = m.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<R1Model> = Api::namespaced(ctx.client.clone(), &ns);
    let r1fs = ctx.r1fs.get();
    // Until R1FS's first pass, holders are unknown: say nothing rather
    // than `NoHolder` (R1FS wakes every model after that pass).
    if r1fs.is_some_and(|r| !r.loaded()) {
        return Ok(Action::requeue(std::time::Duration::from_secs(2)));
    }
    let import = match (&m.spec.source, r1fs) {
        (ModelSource { volume: Some(v), cid: None }, Some(r)) if !escapes(v) => match r.delivery() {
            Some(d) => Some(import(&m, v, r, &d, &ctx, &ns).await?),
            None => None,
        },
        _ => None,
    };
    let lookup = |cid: &str| r1fs.expect("only called when R1FS runs").holders(cid);
    let holders = r1fs.map(|_| &lookup as &dyn Fn(&str) -> Holders);
    let edil = ctx.edil.get();
    // Until EDIL has taken the training up (just after a start), the status
    // keeps what it said: the rounds, weights and models EDIL resumes from.
    let training = m.spec.training.as_ref().and_then(|_| {
        m.uid()
            .and_then(|uid| edil.and_then(|e| e.status(&uid)))
            .or_else(|| m.status.as_ref().and_then(|s| s.training.clone()))
    });
    let (mut wanted, cid, mut action) = match evaluate(&m, holders, import.as_ref()) {
        // An import in progress is looked at again soon; otherwise R1FS
        // wakes models when holders change, and the resync is a backstop.
        Ok((wanted, cid)) if matches!(import, Some(Import::Running { .. })) => {
            (wanted, cid, Action::requeue(std::time::Duration::from_secs(3)))
        }
        Ok((wanted, cid)) => (wanted, cid, Action::requeue(ctx.resync)),
        // A failed import is retried once its Job is deleted: checked at resync.
        Err(bad) if bad.reason == "ImportFailed" => {
            (conditions::stalled(bad.reason, &bad.message), None, Action::requeue(ctx.resync))
        }
        // Nothing watches claims or Secrets: looked for again soon.
        Err(bad) if bad.reason == "ClaimNotFound" || bad.reason == "KeySecretNotFound" => {
            (conditions::stalled(bad.reason, &bad.message), None, Action::requeue(std::time::Duration::from_secs(10)))
        }
        Err(bad) => (conditions::stalled(bad.reason, &bad.message), None, Action::await_change()),
    };
    let (replicas, size, holders) = match (r1fs, &cid) {
        (Some(r), Some(c)) => {
            let h = r.holders(c);
            (Some(h.nodes.len() as i32), h.size.map(|s| s as i64), h.nodes)
        }
        _ => (None, None, vec![]),
    };
    if m.spec.training.is_some() {
        let t = training_condition(edil.is_some(), training.as_ref());
        // Rounds move without a change of the object: followed.
        if t.status == Some(true) || (edil.is_some() && t.reason != "Trained") {
            action = Action::requeue(std::time::Duration::from_secs(3));
        }
        wanted.push(t);
    }
    let status = R1ModelStatus {
        observed_generation: m.metadata.generation,
        cid,
        size,
        replicas,
        holders,
        round: training.as_ref().map(|t| t.completed_rounds),
        training,
        ..Default::default()
    };
    finish(&ctx, &api, m.as_ref(), m.status.as_ref(), status, &wanted).await?;
    Ok(action)
}

/// Whether a volume source's path leaves its claim (`..`).
fn escapes(v: &VolumeSource) -> bool {
    v.path.split('/').any(|s| s == "..")
}

/// Name of the import Job of `m` at its generation (≤ 63 characters).
pub fn import_job_name(m: &R1Model) -> String {
    let uid = m.uid().unwrap_or_default();
    format!("r1fs-import-{}-{}", &uid[..uid.len().min(8)], m.metadata.generation.unwrap_or(0))
}

/// The import of `v` for `m`: done when its pin exists, else its Job
/// (applied if missing) running or failed.
async fn import(
    m: &R1Model,
    v: &VolumeSource,
    r: &crate::r1fs::service::R1fs,
    d: &crate::r1fs::service::Delivery,
    ctx: &Context,
    ns: &str,
) -> Result<Import> {
    let owner = crate::r1fs::service::import_owner(&m.uid().unwrap_or_default(), m.metadata.generation.unwrap_or(0));
    if let Some(cid) = r.pinned_by(&owner) {
        return Ok(Import::Done { cid: crate::r1fs::cid::canonical(&cid) });
    }
    let name = import_job_name(m);
    // A Job for a claim that does not exist would wait unscheduled: say so.
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    if claims.get_opt(&v.claim_name).await?.is_none() {
        return Ok(Import::Failed {
            reason: "ClaimNotFound",
            message: format!(
                "PersistentVolumeClaim {ns}/{} does not exist: create it to import {}",
                v.claim_name, v.path
            ),
        });
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(job) = jobs.get_opt(&name).await? {
        let st = job.status.unwrap_or_default();
        if let Some(c) = st.conditions.iter().flatten().find(|c| c.type_ == "Failed" && c.status == "True") {
            let why = c.message.clone().unwrap_or_default();
            return Ok(Import::Failed {
                reason: "ImportFailed",
                message: format!(
                    "Job {name} could not import {}:{} ({why}); see kubectl logs -n {ns} job/{name}, fix the claim, then delete the Job to retry",
                    v.claim_name, v.path
                ),
            });
        }
        if st.succeeded.unwrap_or(0) > 0 {
            return Ok(Import::Failed {
                reason: "ImportFailed",
                message: format!("Job {name} finished but pinned nothing for this model"),
            });
        }
        // A sealing import whose key cannot be read waits at its pod's
        // start, not in the Job: its pods (labelled, so cached) tell.
        if let Some(k) = m.spec.encryption.as_ref().map(|e| &e.key_secret_ref) {
            let pods = ctx.caches.pods.state();
            let config_error = pods.iter().filter(|p| p.metadata.namespace.as_deref() == Some(ns)).find_map(|p| {
                (p.labels().get("job-name") == Some(&name))
                    .then(|| {
                        p.status
                            .as_ref()?
                            .container_statuses
                            .as_ref()?
                            .iter()
                            .find_map(|c| c.state.as_ref()?.waiting.clone())
                    })
                    .flatten()
                    .filter(|w| w.reason.as_deref() == Some("CreateContainerConfigError"))
            });
            if let Some(w) = config_error {
                return Ok(Import::Failed {
                    reason: "KeySecretNotFound",
                    message: format!(
                        "Job {name} seals {}:{} with the key in Secret {ns}/{} (data key {:?}), which it cannot read ({}); create it: kubectl create secret generic {} -n {ns} --from-file={}=KEY_FILE",
                        v.claim_name,
                        v.path,
                        k.name,
                        k.key,
                        w.message.unwrap_or_default(),
                        k.name,
                        k.key
                    ),
                });
            }
        }
        return Ok(Import::Running { job: name });
    }
    let mut env = vec![
        EnvVar { name: "RATIO1_IMPORT_OWNER".into(), value: Some(owner.clone()), ..Default::default() },
        EnvVar { name: "RATIO1_IMPORT_TOKEN".into(), value: Some(r.import_token(&owner)), ..Default::default() },
    ];
    let path = format!("/import/{}", v.path.trim_end_matches('/'));
    let mount = VolumeMount {
        name: "source".into(),
        mount_path: "/import".into(),
        read_only: Some(true),
        ..Default::default()
    };
    let mut args = vec!["add", "--hidden"];
    if let Some(e) = &m.spec.encryption {
        env.push(super::pipeline::key_env(&e.key_secret_ref));
        args.push("--encrypt");
    }
    args.push(&path);
    let container = super::pipeline::r1fs_container("import".into(), d, &args, env, vec![mount]);
    let managed: std::collections::BTreeMap<String, String> =
        [(crate::objects::MANAGED_BY.0.to_string(), crate::objects::MANAGED_BY.1.to_string())].into();
    let job = Job {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_string()),
            labels: Some(managed.clone()),
            owner_references: m.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(2),
            ttl_seconds_after_finished: Some(3600),
            template: PodTemplateSpec {
                // Labelled so the operator's pod cache holds its pods.
                metadata: Some(kube::api::ObjectMeta { labels: Some(managed), ..Default::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "source".into(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: v.claim_name.clone(),
                            read_only: Some(true),
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    };
    apply(&jobs, &name, &job).await?;
    tracing::info!(job = %name, claim = %v.claim_name, path = %v.path, "R1FS import Job applied");
    Ok(Import::Running { job: name })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{R1ModelSpec, VolumeSource};

    fn evaluate_off(m: &R1Model) -> Result<(Vec<Want>, Option<String>), Invalid> {
        evaluate(m, None, None)
    }

    #[test]
    fn a_volume_source_is_imported_then_replicated_and_a_failed_import_stalls() {
        let m = model(ModelSource {
            cid: None,
            volume: Some(VolumeSource { claim_name: "data".into(), path: "m.onnx".into() }),
        });
        let cond = |w: &[Want], t: &str| w.iter().find(|w| w.type_ == t).map(|w| (w.status, w.reason.clone())).unwrap();
        let (w, cid) = evaluate(&m, None, Some(&Import::Running { job: "j".into() })).unwrap();
        assert_eq!((cond(&w, "Ready"), cid), ((Some(false), "Importing".into()), None));
        let failed = Import::Failed { reason: "ImportFailed", message: "no such file".into() };
        let err = evaluate(&m, None, Some(&failed)).unwrap_err();
        assert_eq!(err.reason, "ImportFailed");
        let done = Import::Done { cid: "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku".into() };
        let one = |_: &str| Holders { nodes: vec!["n0".into()], size: Some(1), members: 1 };
        let mut m1 = m.clone();
        m1.spec.replication = 1;
        let (w, cid) = evaluate(&m1, Some(&one), Some(&done)).unwrap();
        assert_eq!((cond(&w, "Ready"), cid.is_some()), ((Some(true), "Replicated".into()), true));
        let mut up = m.clone();
        up.spec.source.volume.as_mut().unwrap().path = "a/../../etc".into();
        assert_eq!(evaluate(&up, None, None).unwrap_err().reason, "InvalidSource");
        let mut named = m.clone();
        named.metadata.uid = Some("0123456789abcdef".into());
        named.metadata.generation = Some(12);
        assert_eq!(import_job_name(&named), "r1fs-import-01234567-12");
    }

    #[test]
    fn a_cid_is_ready_when_enough_nodes_hold_it_and_says_why_not_otherwise() {
        let cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku".to_string();
        let m = model(ModelSource { cid: Some(cid.clone()), volume: None });
        let status = |h: Holders| {
            let f = move |_: &str| h.clone();
            let (w, _) = evaluate(&m, Some(&f), None).unwrap();
            let get =
                |t: &str| w.iter().find(|w| w.type_ == t).map(|w| (w.status, w.reason.clone(), w.message.clone()));
            (get("Ready").unwrap(), get("Available").unwrap())
        };
        let names = |n: usize| (0..n).map(|i| format!("n{i}")).collect::<Vec<_>>();
        let (ready, avail) = status(Holders { nodes: names(3), size: Some(1), members: 5 });
        assert_eq!((ready.0, ready.1.as_str(), avail.0), (Some(true), "Replicated", Some(true)));
        assert!(ready.2.contains("n0, n1, n2"), "{}", ready.2);
        let (ready, avail) = status(Holders { nodes: names(1), size: Some(1), members: 2 });
        assert_eq!((ready.0, ready.1.as_str(), avail.0), (Some(false), "Replicating", Some(true)));
        assert!(ready.2.contains("1 of 3") && ready.2.contains("only 2 R1FS nodes"), "{}", ready.2);
        let (ready, avail) = status(Holders { nodes: vec![], size: None, members: 5 });
        assert_eq!((ready.0, avail.0, avail.1.as_str()), (Some(false), Some(false), "NoHolder"));
    }

    fn model(source: ModelSource) -> R1Model {
        R1Model::new("m", R1ModelSpec { source, format: None, replication: 3, training: None, encryption: None })
    }

    #[test]
    fn a_model_too_large_for_the_built_in_trainer_stalls_unless_a_container_trains_it() {
        let cid = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi".to_string();
        let mut m = model(ModelSource { cid: Some(cid), volume: None });
        let mut t: crate::crd::TrainingSpec =
            serde_json::from_value(serde_json::json!({"rounds": 1, "dataset": "d", "features": 1025})).unwrap();
        m.spec.training = Some(t.clone());
        let err = evaluate_off(&m).unwrap_err();
        assert!(err.reason == "InvalidTraining" && err.message.contains("trainer container"), "{err:?}");
        t.trainer =
            Some(crate::crd::TrainerSpec { image: "x/y:1".into(), command: vec![], args: vec![], resources: None });
        m.spec.training = Some(t);
        assert!(evaluate_off(&m).is_ok());
    }

    #[test]
    fn cid_source_is_ready() {
        let cid = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi".to_string();
        let (w, got) = evaluate_off(&model(ModelSource { cid: Some(cid.clone()), volume: None })).unwrap();
        assert_eq!(got, Some(cid));
        assert!(w.iter().any(|w| w.type_ == "Ready" && w.status == Some(true)));
    }

    #[test]
    fn a_cid_is_decoded_and_reported_as_cidv1() {
        let v0 = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH".to_string();
        let (_, got) = evaluate_off(&model(ModelSource { cid: Some(v0), volume: None })).unwrap();
        assert!(got.unwrap().starts_with("bafybei"));
        // The CRD pattern's alphabet, but no CID (a wrong character count).
        let bad = format!("b{}", "a".repeat(58));
        let err = evaluate_off(&model(ModelSource { cid: Some(bad), volume: None })).unwrap_err();
        assert_eq!(err.reason, "InvalidCid");
        assert!(err.message.starts_with("source.cid: "), "{}", err.message);
    }

    #[test]
    fn volume_source_awaits_r1fs() {
        let (w, got) = evaluate_off(&model(ModelSource {
            cid: None,
            volume: Some(VolumeSource { claim_name: "data".into(), path: "m.onnx".into() }),
        }))
        .unwrap();
        assert_eq!(got, None);
        let ready = w.iter().find(|w| w.type_ == "Ready").unwrap();
        assert_eq!((ready.status, ready.reason.as_str()), (Some(false), "AwaitingR1FS"));
    }

    #[test]
    fn empty_source_stalls() {
        assert_eq!(evaluate_off(&model(ModelSource::default())).unwrap_err().reason, "InvalidSource");
    }
}
