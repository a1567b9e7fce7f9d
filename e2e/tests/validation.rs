//! Bad input: the API server rejects what the CRD schema can express, with
//! a message naming the field; the CLI fails with one line.

use crate::harness::*;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::CustomResourceExt;
use ratio1::crd::{R1Model, R1Pipeline};
use serde_json::json;

async fn rejected(api: &Api<DynamicObject>, body: serde_json::Value) -> String {
    let obj: DynamicObject = serde_json::from_value(body).unwrap();
    match api.create(&PostParams::default(), &obj).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            e.message
        }
        other => panic!("expected a 422 rejection, got {other:?}"),
    }
}

fn container() -> serde_json::Value {
    json!({"spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

#[tokio::test]
async fn schema_rejects_invalid_manifests() {
    let c = client(1).await;
    install_crds(&c).await;
    let ns = TestNs::new(&c, "invalid").await;
    let ar = ApiResource::erase::<R1Pipeline>(&());
    let pipes: Api<DynamicObject> = Api::namespaced_with(c.clone(), &ns.name, &ar);
    let p = |spec: serde_json::Value| json!({"apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Pipeline", "metadata": {"name": "bad"}, "spec": spec});
    let msg = rejected(&pipes, p(json!({"replicas": 5000, "template": container()}))).await;
    assert!(msg.contains("spec.replicas"), "{msg}");
    let msg = rejected(&pipes, p(json!({"mode": "Daemon", "template": container()}))).await;
    assert!(msg.contains("spec.mode") && msg.contains("Service"), "{msg}");
    let msg = rejected(&pipes, p(json!({"replicas": 1}))).await;
    assert!(msg.contains("spec.template"), "{msg}");
    let msg = rejected(&pipes, p(json!({"template": {"spec": {"containers": [{"image": "x"}]}}}))).await;
    assert!(msg.contains("name"), "{msg}");
    let msg = rejected(&pipes, p(json!({"template": container(), "placement": {"clusters": 0}}))).await;
    assert!(msg.contains("spec.placement.clusters"), "{msg}");
    let msg =
        rejected(&pipes, p(json!({"template": container(), "inputs": [{"cid": "not-a-cid", "mountPath": "/in"}]})))
            .await;
    assert!(msg.contains("spec.inputs") && msg.contains("cid"), "{msg}");

    let ar = ApiResource::erase::<R1Model>(&());
    let models: Api<DynamicObject> = Api::namespaced_with(c.clone(), &ns.name, &ar);
    let m = |spec: serde_json::Value| json!({"apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Model", "metadata": {"name": "bad"}, "spec": spec});
    let cid = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";
    let msg = rejected(&models, m(json!({"source": {"cid": cid, "volume": {"claimName": "x"}}}))).await;
    assert!(msg.contains("spec.source"), "{msg}");
    let msg = rejected(&models, m(json!({"source": {}}))).await;
    assert!(msg.contains("spec.source"), "{msg}");
    let msg = rejected(&models, m(json!({"source": {"cid": cid}, "replication": 65}))).await;
    assert!(msg.contains("spec.replication"), "{msg}");
    // The names line up with the generated CRD (a guard against renames).
    assert_eq!(R1Model::crd().spec.names.plural, "r1models");
    ns.cleanup().await;
}

#[test]
fn crdgen_check_fails_with_one_line_on_stale_files() {
    let dir = std::env::temp_dir().join(format!("ratio1-crdgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("r1nodes.ratio1.ai.yaml"), "stale").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ratio1"))
        .args(["crdgen", "--check", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: stale CRDs"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
