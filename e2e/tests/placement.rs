//! Placement is honest (cluster 10, an operator of its own): a pipeline runs
//! here only where its placement allows, says `Scheduled=False` with what is
//! missing otherwise, follows the R1Node's labels and offer as they change,
//! and a settled cluster sends the API server no writes.

use crate::harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use ratio1::conditions::{find, is_true};
use ratio1::crd::{R1Node, R1Pipeline};
use serde_json::json;

const CLUSTER: usize = 10;

fn pipeline(name: &str, placement: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Pipeline", "metadata": {"name": name},
        "spec": {"replicas": 1, "placement": placement,
            "template": {"spec": {"containers": [{"name": "main", "image": "busybox"}]}}}})
}

/// Waits until pipeline `name` has caught up and condition `Scheduled`
/// has `status` and `reason`.
async fn scheduled(api: &Api<R1Pipeline>, name: &str, status: &str, reason: &str) -> R1Pipeline {
    wait_for(30, &format!("{name}: Scheduled={status} ({reason})"), || async {
        let p = api.get(name).await.ok()?;
        let st = p.status.as_ref()?;
        let c = find(&st.conditions, "Scheduled")?;
        (st.observed_generation == p.metadata.generation && c.status == status && c.reason == reason).then_some(p)
    })
    .await
}

/// Sum of the operator's API requests of the given verbs.
fn requests(metrics: &str, verbs: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("ratio1_kube_requests_total{"))
        .filter(|l| verbs.iter().any(|v| l.contains(&format!("verb=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn placement_follows_the_clusters_node() {
    let c = client(CLUSTER).await;
    install_crds(&c).await;
    ensure_namespace(&c, OPERATOR_NS).await;
    let nodes: Api<R1Node> = Api::all(c.clone());
    for n in nodes.list(&Default::default()).await.unwrap() {
        let _ = nodes.delete(&kube::ResourceExt::name_any(&n), &DeleteParams::default()).await;
    }
    let ssa = PatchParams::apply("e2e-user").force();
    let secrets: Api<Secret> = Api::namespaced(c.clone(), OPERATOR_NS);
    let lic = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "place-license"},
        "stringData": {"license": "token"}});
    secrets.patch("place-license", &ssa, &Patch::Apply(lic)).await.unwrap();
    let op = Operator::start(OperatorOpts::new(CLUSTER, "placement")).await;
    let ns = TestNs::new(&c, "placement").await;
    let pipes: Api<R1Pipeline> = Api::namespaced(c.clone(), &ns.name);
    let deps: Api<Deployment> = Api::namespaced(c.clone(), &ns.name);

    // No R1Node: a plain cluster runs default placements, names no node,
    // and a cluster selector matches nothing here.
    pipes.patch("plain", &ssa, &Patch::Apply(pipeline("plain", json!({})))).await.unwrap();
    let p = scheduled(&pipes, "plain", "True", "LocalCluster").await;
    assert_eq!(p.status.unwrap().placements[0].node, None, "no invented node name");
    let eu = json!({"clusterSelector": {"matchLabels": {"region": "eu"}}});
    pipes.patch("sel", &ssa, &Patch::Apply(pipeline("sel", eu.clone()))).await.unwrap();
    let p = scheduled(&pipes, "sel", "False", "ClusterNotSelected").await;
    assert!(is_true(&p.status.as_ref().unwrap().conditions, "Stalled"));
    assert!(p.status.unwrap().placements.is_empty());
    assert!(deps.get_opt("sel").await.unwrap().is_none(), "nothing runs where the selector excludes it");

    // The cluster's R1Node appears with region=eu and an offer that pins
    // pods to GPU nodes: the selector now matches (no change to the
    // pipeline), and every pod carries the offer's nodeSelector.
    let node = |region: &str| {
        json!({"apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Node",
            "metadata": {"name": "place-node", "labels": {"region": region}},
            "spec": {"license": {"secretName": "place-license"}, "offer": {"nodeSelector": {"pool": "gpu"}}}})
    };
    nodes.patch("place-node", &ssa, &Patch::Apply(node("eu"))).await.unwrap();
    let p = scheduled(&pipes, "sel", "True", "LocalCluster").await;
    assert_eq!(p.status.unwrap().placements[0].node.as_deref(), Some("place-node"));
    let d = wait_for(30, "Deployment sel with the offer's nodeSelector", || async {
        let d = deps.get_opt("sel").await.ok()??;
        let sel = d.spec.clone()?.template.spec?.node_selector?;
        (sel.get("pool").map(String::as_str) == Some("gpu")).then_some(d)
    })
    .await;
    assert!(d.metadata.owner_references.is_some());
    scheduled(&pipes, "plain", "True", "LocalCluster").await;

    // A restart places by the R1Node cache once it is filled, never by an
    // empty one: what the selector placed here is not removed meanwhile.
    let mut op = op;
    op.kill().await;
    let op = Operator::start(OperatorOpts::new(CLUSTER, "placement-2")).await;
    wait_for(30, "the new operator to reconcile the pipelines", || async {
        let m = op.metrics().await;
        let n: u64 = m
            .lines()
            .filter(|l| l.starts_with("ratio1_reconciles_total{kind=\"R1Pipeline\"}"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        (n >= 2).then_some(())
    })
    .await;
    let after = deps.get("sel").await.expect("Deployment sel survives the restart");
    assert_eq!(after.metadata.uid, d.metadata.uid, "Deployment sel was deleted and made again");

    // The node is relabelled: the pipeline leaves this cluster.
    nodes.patch("place-node", &ssa, &Patch::Apply(node("us"))).await.unwrap();
    scheduled(&pipes, "sel", "False", "ClusterNotSelected").await;
    wait_for(30, "Deployment sel removed", || async { deps.get_opt("sel").await.ok()?.is_none().then_some(()) }).await;

    // More clusters than the network can give yet: it runs here, and says
    // it is short; nodes that are not this cluster are not invented.
    let three = json!({"clusters": 3});
    pipes.patch("three", &ssa, &Patch::Apply(pipeline("three", three))).await.unwrap();
    let p = scheduled(&pipes, "three", "False", "NotEnoughClusters").await;
    let st = p.status.unwrap();
    assert!(find(&st.conditions, "Scheduled").unwrap().message.contains("1 of 3"));
    assert_eq!(st.clusters, 1);
    assert!(deps.get_opt("three").await.unwrap().is_some());
    let named = json!({"nodes": ["elsewhere"]});
    pipes.patch("named", &ssa, &Patch::Apply(pipeline("named", named))).await.unwrap();
    scheduled(&pipes, "named", "False", "NodesUnavailable").await;
    assert!(deps.get_opt("named").await.unwrap().is_none());
    let here = json!({"nodes": ["place-node"]});
    pipes.patch("named", &ssa, &Patch::Apply(pipeline("named", here))).await.unwrap();
    scheduled(&pipes, "named", "True", "LocalCluster").await;

    // Settled: no pods can run on cluster 10 (no worker node), so nothing
    // changes, and the operator sends no writes and no lists. (Leader
    // renewals are gets and updates, so those verbs are not counted.)
    wait_for(30, "Deployment named", || async { deps.get_opt("named").await.ok()?.map(|_| ()) }).await;
    let quiet = ["create", "patch", "delete", "list"];
    let mut last = requests(&op.metrics().await, &quiet);
    let mut steady = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while steady < 8 {
        assert!(std::time::Instant::now() < deadline, "the operator kept writing for 60 s with nothing to do");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = requests(&op.metrics().await, &quiet);
        steady = if now == last { steady + 1 } else { 0 };
        last = now;
    }

    // The node goes: pipelines placed by its labels leave, the rest stays.
    nodes.delete("place-node", &DeleteParams::default()).await.unwrap();
    scheduled(&pipes, "named", "False", "NodesUnavailable").await;
    let p = scheduled(&pipes, "plain", "True", "LocalCluster").await;
    assert_eq!(p.status.unwrap().placements[0].node, None);
    ns.cleanup().await;
    let _ = secrets.delete("place-license", &DeleteParams::default()).await;
    let _ = secrets.delete("r1node-identity", &DeleteParams::default()).await;
}
