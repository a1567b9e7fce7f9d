//! R1Model: validate the source and record status. A `cid` source is kept
//! on `spec.replication` R1FS nodes by R1FS (which reads the models from
//! the same cache); this reconciler reports who holds it and is `Ready`
//! when enough do. Without R1FS (no data directory) a `cid` source is only
//! addressed. Import from a volume is not built yet: a
//! `volume` source waits with `Ready=False, reason=AwaitingR1FS`.

use super::{finish, Context, Error, Result};
use crate::conditions::{self, Invalid, Want};
use crate::crd::{ModelSource, R1Model, R1ModelStatus};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use std::sync::Arc;

/// Who holds a CID, as R1FS last saw it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Holders {
    /// R1Node names of the fresh holders.
    pub nodes: Vec<String>,
    pub size: Option<u64>,
    /// R1FS nodes heard from (the most replicas there can be).
    pub members: usize,
}

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

/// Conditions and CID for a model's spec (pure); `holders` is R1FS's view
/// of the CID when R1FS runs.
pub fn evaluate(
    m: &R1Model,
    holders: Option<&dyn Fn(&str) -> Holders>,
) -> Result<(Vec<Want>, Option<String>), Invalid> {
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
    let r1fs = ctx.r1fs.get();
    let lookup = |cid: &str| {
        let r = r1fs.expect("only called when R1FS runs");
        let (nodes, size) = r.holders(cid);
        Holders { nodes, size, members: r.snapshot().members.len() }
    };
    let holders = r1fs.map(|_| &lookup as &dyn Fn(&str) -> Holders);
    let (wanted, cid, action) = match evaluate(&m, holders) {
        // R1FS wakes models when holders change; the resync is a backstop.
        Ok((wanted, cid)) => (wanted, cid, Action::requeue(ctx.resync)),
        Err(bad) => (conditions::stalled(bad.reason, &bad.message), None, Action::await_change()),
    };
    let (replicas, size, holders) = match (r1fs, &cid) {
        (Some(r), Some(c)) => {
            let (nodes, size) = r.holders(c);
            (Some(nodes.len() as i32), size.map(|s| s as i64), nodes)
        }
        _ => (None, None, vec![]),
    };
    // round is EDIL's to fill: not claimed here.
    let status = R1ModelStatus {
        observed_generation: m.metadata.generation,
        cid,
        size,
        replicas,
        holders,
        ..Default::default()
    };
    finish(&ctx, &api, m.as_ref(), m.status.as_ref(), status, &wanted).await?;
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{R1ModelSpec, VolumeSource};

    fn evaluate_off(m: &R1Model) -> Result<(Vec<Want>, Option<String>), Invalid> {
        evaluate(m, None)
    }

    #[test]
    fn a_cid_is_ready_when_enough_nodes_hold_it_and_says_why_not_otherwise() {
        let cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku".to_string();
        let m = model(ModelSource { cid: Some(cid.clone()), volume: None });
        let status = |h: Holders| {
            let f = move |_: &str| h.clone();
            let (w, _) = evaluate(&m, Some(&f)).unwrap();
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
        R1Model::new("m", R1ModelSpec { source, format: None, replication: 3, training: None })
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
