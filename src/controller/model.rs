//! R1Model: validate the source and record status. Content in R1FS (import
//! from a volume, replication, pinning) is the R1FS module's work; until it
//! runs, a `volume` source waits with `Ready=False, reason=AwaitingR1FS`.

use super::{finish, Context, Error, Result};
use crate::conditions::{self, Invalid, Want};
use crate::crd::{ModelSource, R1Model, R1ModelStatus};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use std::sync::Arc;

/// Conditions and CID for a model's spec (pure).
pub fn evaluate(m: &R1Model) -> Result<(Vec<Want>, Option<String>), Invalid> {
    let mut wanted = match &m.spec.source {
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
            let mut w = conditions::ready("ContentAddressed", &format!("artifact is {cid}"));
            w.push(Want::new("Available", true, "ContentAddressed", "content is addressed by its CID"));
            (w, Some(cid))
        }
        ModelSource { cid: None, volume: Some(v) } => {
            let msg = format!("import of {}:{} waits for R1FS", v.claim_name, v.path);
            let mut w = conditions::progressing("AwaitingR1FS", &msg);
            w.push(Want::new("Available", false, "AwaitingR1FS", msg));
            (w, None)
        }
    };
    if m.spec.training.is_some() {
        wanted.0.push(Want::new("Training", false, "AwaitingEDIL", "federated training waits for EDIL"));
    }
    Ok(wanted)
}

#[tracing::instrument(skip_all, fields(kind = "R1Model", namespace = %m.namespace().unwrap_or_default(), name = %m.name_any(), generation = ?m.metadata.generation))]
pub async fn reconcile(m: Arc<R1Model>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start("R1Model");
    let ns = m.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<R1Model> = Api::namespaced(ctx.client.clone(), &ns);
    let (wanted, cid, action) = match evaluate(&m) {
        Ok((wanted, cid)) => (wanted, cid, Action::requeue(ctx.resync)),
        Err(bad) => (conditions::stalled(bad.reason, &bad.message), None, Action::await_change()),
    };
    // size, replicas and round are R1FS's and EDIL's to fill: not claimed here.
    let status = R1ModelStatus { observed_generation: m.metadata.generation, cid, ..Default::default() };
    finish(&ctx, &api, m.as_ref(), m.status.as_ref(), status, &wanted).await?;
    Ok(action)
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
        let (w, got) = evaluate(&model(ModelSource { cid: Some(cid.clone()), volume: None })).unwrap();
        assert_eq!(got, Some(cid));
        assert!(w.iter().any(|w| w.type_ == "Ready" && w.status == Some(true)));
    }

    #[test]
    fn a_cid_is_decoded_and_reported_as_cidv1() {
        let v0 = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH".to_string();
        let (_, got) = evaluate(&model(ModelSource { cid: Some(v0), volume: None })).unwrap();
        assert!(got.unwrap().starts_with("bafybei"));
        // The CRD pattern's alphabet, but no CID (a wrong character count).
        let bad = format!("b{}", "a".repeat(58));
        let err = evaluate(&model(ModelSource { cid: Some(bad), volume: None })).unwrap_err();
        assert_eq!(err.reason, "InvalidCid");
        assert!(err.message.starts_with("source.cid: "), "{}", err.message);
    }

    #[test]
    fn volume_source_awaits_r1fs() {
        let (w, got) = evaluate(&model(ModelSource {
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
        assert_eq!(evaluate(&model(ModelSource::default())).unwrap_err().reason, "InvalidSource");
    }
}
