//! R1Model: validate the source and record status. Content in R1FS (import
//! from a volume, replication, pinning) is the R1FS module's work; until it
//! runs, a `volume` source waits with `Ready=False, reason=AwaitingR1FS`.

use super::{next_conditions, patch_status, report_transition, Context, Error, Result};
use crate::conditions::{self, Want};
use crate::crd::{ModelSource, R1Model, R1ModelStatus};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use std::sync::Arc;

/// Conditions and CID for a model's spec (pure).
pub fn evaluate(m: &R1Model) -> (Vec<Want>, Option<String>) {
    let mut wanted = match &m.spec.source {
        ModelSource { cid: Some(_), volume: Some(_) } => {
            // The schema's oneOf rejects this; kept for API servers that
            // were given an older CRD.
            return (conditions::stalled("InvalidSource", "source must set exactly one of cid or volume"), None);
        }
        ModelSource { cid: Some(cid), volume: None } => {
            let mut w = conditions::ready("ContentAddressed", &format!("artifact is {cid}"));
            w.push(Want::new("Available", true, "ContentAddressed", "content is addressed by its CID"));
            (w, Some(cid.clone()))
        }
        ModelSource { cid: None, volume: Some(v) } => {
            let msg = format!("import of {}:{} waits for R1FS", v.claim_name, v.path);
            let mut w = conditions::progressing("AwaitingR1FS", &msg);
            w.push(Want::new("Available", false, "AwaitingR1FS", msg));
            (w, None)
        }
        ModelSource { cid: None, volume: None } => {
            return (conditions::stalled("InvalidSource", "source must set exactly one of cid or volume"), None);
        }
    };
    if m.spec.training.is_some() {
        wanted.0.push(Want::new("Training", false, "AwaitingEDIL", "federated training waits for EDIL"));
    }
    wanted
}

#[tracing::instrument(skip_all, fields(kind = "R1Model", namespace = %m.namespace().unwrap_or_default(), name = %m.name_any(), generation = ?m.metadata.generation))]
pub async fn reconcile(m: Arc<R1Model>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start("R1Model");
    let ns = m.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<R1Model> = Api::namespaced(ctx.client.clone(), &ns);
    let old = m.status.clone().unwrap_or_default();
    let (wanted, cid) = evaluate(&m);
    if wanted.iter().any(|w| w.type_ == conditions::STALLED && w.status == Some(true)) {
        ctx.metrics.stalled.get_or_create(&crate::metrics::KindLabels { kind: "R1Model" }).inc();
    }
    let status = R1ModelStatus {
        observed_generation: m.metadata.generation,
        cid,
        size: old.size,
        replicas: old.replicas,
        round: old.round,
        conditions: next_conditions(&old.conditions, &wanted, m.metadata.generation),
    };
    let same = old.observed_generation == status.observed_generation
        && old.cid == status.cid
        && conditions::same_ignoring_time(&old.conditions, &status.conditions);
    if !same {
        patch_status(&api, m.as_ref(), &status).await?;
        report_transition(&ctx, m.as_ref(), &old.conditions, &status.conditions).await;
    }
    ctx.succeeded(m.as_ref());
    Ok(Action::requeue(ctx.resync))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{R1ModelSpec, VolumeSource};

    fn model(source: ModelSource) -> R1Model {
        R1Model::new("m", R1ModelSpec { source, format: None, replication: 3, training: None })
    }

    #[test]
    fn cid_source_is_ready() {
        let cid = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi".to_string();
        let (w, got) = evaluate(&model(ModelSource { cid: Some(cid.clone()), volume: None }));
        assert_eq!(got, Some(cid));
        assert!(w.iter().any(|w| w.type_ == "Ready" && w.status == Some(true)));
    }

    #[test]
    fn volume_source_awaits_r1fs() {
        let (w, got) = evaluate(&model(ModelSource {
            cid: None,
            volume: Some(VolumeSource { claim_name: "data".into(), path: "m.onnx".into() }),
        }));
        assert_eq!(got, None);
        let ready = w.iter().find(|w| w.type_ == "Ready").unwrap();
        assert_eq!((ready.status, ready.reason.as_str()), (Some(false), "AwaitingR1FS"));
    }

    #[test]
    fn empty_source_stalls() {
        let (w, _) = evaluate(&model(ModelSource::default()));
        assert!(w.iter().any(|w| w.type_ == "Stalled" && w.status == Some(true) && w.reason == "InvalidSource"));
    }
}
