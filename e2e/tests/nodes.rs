//! R1Node identity and license Secret handling on cluster 1.

use crate::harness::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use ratio1::conditions::find;
use ratio1::crd::R1Node;
use serde_json::json;

fn node(name: &str) -> serde_json::Value {
    json!({"apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Node", "metadata": {"name": name},
           "spec": {"identity": {"secretName": "e2e-identity"}, "license": {"secretName": "e2e-license"}}})
}

async fn cond(api: &Api<R1Node>, name: &str, t: &str, status: &str, reason: &str) -> R1Node {
    wait_for(30, &format!("{name}: {t}={status} ({reason})"), || async {
        let n = api.get(name).await.ok()?;
        let st = n.status.clone()?;
        let c = find(&st.conditions, t)?;
        (st.observed_generation == n.metadata.generation && c.status == status && c.reason == reason).then_some(n)
    })
    .await
}

fn secret(name: &str, data: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data})
}

#[tokio::test]
async fn node_identity_license_and_duplicates() {
    shared_operator();
    let c = client(1).await;
    let nodes: Api<R1Node> = Api::all(c.clone());
    let secrets: Api<Secret> = Api::namespaced(c.clone(), OPERATOR_NS);
    let ssa = PatchParams::apply("e2e-user").force();
    // Leftovers of an interrupted run would change what is primary.
    for n in nodes.list(&Default::default()).await.unwrap() {
        let _ = nodes.delete(&kube::ResourceExt::name_any(&n), &DeleteParams::default()).await;
    }
    for s in ["e2e-identity", "e2e-license"] {
        let _ = secrets.delete(s, &DeleteParams::default()).await;
    }

    // No license Secret yet: stalled, waiting for the user.
    nodes.patch("e2e-node", &ssa, &Patch::Apply(node("e2e-node"))).await.unwrap();
    cond(&nodes, "e2e-node", "Stalled", "True", "LicenseSecretNotFound").await;

    // The Secret appears: the Secret watch wakes the node up.
    secrets
        .patch("e2e-license", &ssa, &Patch::Apply(secret("e2e-license", json!({"license": "token"}))))
        .await
        .unwrap();
    let n = cond(&nodes, "e2e-node", "Ready", "True", "IdentityReady").await;
    let st = n.status.unwrap();
    assert_eq!(find(&st.conditions, "Licensed").map(|c| c.reason.as_str()), Some("NoTrustedIssuers"));
    let id = secrets.get("e2e-identity").await.expect("identity Secret created");
    let data = id.data.clone().unwrap().into_iter().map(|(k, v)| (k, v.0)).collect();
    let kp = ratio1::identity::from_secret_data(&data).expect("a usable ed25519 key");
    assert_eq!(Some(kp.public().to_peer_id().to_string()), st.peer_id, "status.peerId is derived from the Secret");

    // Wrong shape: stalled with a reason, and a Warning Event.
    let wrong = json!({"data": {"license": null, "token": "eA=="}});
    secrets.patch("e2e-license", &PatchParams::default(), &Patch::Merge(wrong)).await.unwrap();
    cond(&nodes, "e2e-node", "Stalled", "True", "InvalidLicenseSecret").await;
    // (Events about cluster-scoped objects live in "default".)
    wait_warning_event(&c, "default", "InvalidLicenseSecret", "e2e-node").await;
    secrets
        .patch("e2e-license", &ssa, &Patch::Apply(secret("e2e-license", json!({"license": "token"}))))
        .await
        .unwrap();
    cond(&nodes, "e2e-node", "Ready", "True", "IdentityReady").await;

    // A second R1Node in the same cluster is refused; the first keeps working.
    nodes.patch("e2e-dup", &ssa, &Patch::Apply(node("e2e-dup"))).await.unwrap();
    cond(&nodes, "e2e-dup", "Stalled", "True", "DuplicateNode").await;
    cond(&nodes, "e2e-node", "Ready", "True", "IdentityReady").await;

    // A corrupted identity is reported, never silently replaced.
    let mut bad = id.clone();
    bad.metadata.managed_fields = None;
    bad.data.as_mut().unwrap().insert("private-key".into(), k8s_openapi::ByteString(b"garbage".to_vec()));
    secrets.replace("e2e-identity", &Default::default(), &bad).await.unwrap();
    let n = cond(&nodes, "e2e-node", "Stalled", "True", "InvalidIdentitySecret").await;
    let still = secrets.get("e2e-identity").await.unwrap();
    assert_eq!(still.data.unwrap()["private-key"].0, b"garbage");
    // A stalled node says only why: no stale Licensed or Connected from
    // when it was well, and no peers.
    let st = n.status.unwrap();
    let types: Vec<&str> = st.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Ready", "Reconciling", "Stalled"], "{:?}", st.conditions);
    assert_eq!(st.peers, 0);

    // The garbage key goes (a new one is made), then the primary node is
    // deleted: the duplicate becomes the cluster's node by itself, with no
    // change to it.
    secrets.delete("e2e-identity", &DeleteParams::default()).await.unwrap();
    cond(&nodes, "e2e-node", "Ready", "True", "IdentityReady").await;
    nodes.delete("e2e-node", &DeleteParams::default()).await.unwrap();
    let dup = cond(&nodes, "e2e-dup", "Ready", "True", "IdentityReady").await;
    assert!(find(&dup.status.unwrap().conditions, "Licensed").is_some(), "a serving node reports its license");

    nodes.delete("e2e-dup", &DeleteParams::default()).await.unwrap();
    let _ = secrets.delete("e2e-identity", &DeleteParams::default()).await;
    let _ = secrets.delete("e2e-license", &DeleteParams::default()).await;
}
