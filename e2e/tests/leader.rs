//! Two operator replicas on cluster 2: one leads, the other takes over when
//! the leader is killed.

use crate::harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use ratio1::crd::R1Pipeline;
use serde_json::json;

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases.get_opt("ratio1-operator-leader").await.ok()??.spec?.holder_identity
}

fn reconciles(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("ratio1_reconciles_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn pipeline_reconciled(c: &kube::Client, ns: &str, name: &str) {
    let pipes: Api<R1Pipeline> = Api::namespaced(c.clone(), ns);
    let body = json!({"apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Pipeline", "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    pipes.patch(name, &PatchParams::apply("e2e-user"), &Patch::Apply(body)).await.unwrap();
    let deps: Api<Deployment> = Api::namespaced(c.clone(), ns);
    wait_for(40, &format!("Deployment {name} from the leader"), || async { deps.get_opt(name).await.ok().flatten() })
        .await;
}

#[tokio::test]
async fn one_leader_and_failover() {
    let c = client(2).await;
    install_crds(&c).await;
    ensure_namespace(&c, OPERATOR_NS).await;
    let ns = TestNs::new(&c, "leader").await;
    let leases: Api<Lease> = Api::namespaced(c.clone(), OPERATOR_NS);

    let a = Operator::start(OperatorOpts::new(2, "replica-a")).await;
    let b = Operator::start(OperatorOpts::new(2, "replica-b")).await;
    let first = wait_for(30, "a lease holder", || async {
        holder(&leases).await.filter(|h| h == "replica-a" || h == "replica-b")
    })
    .await;
    let (mut leader, follower) = if first == "replica-a" { (a, b) } else { (b, a) };
    pipeline_reconciled(&c, &ns.name, "before").await;
    assert!(leader.metrics().await.contains("ratio1_leader 1"));
    let fm = follower.metrics().await;
    assert!(fm.contains("ratio1_leader 0"), "{fm}");
    assert_eq!(reconciles(&fm), 0, "the standby must not reconcile");

    // A crash does not release the lease: the standby waits for it to
    // expire (4 s here), then leads.
    leader.kill().await;
    let second = wait_for(30, "the standby to take the lease", || async {
        holder(&leases).await.filter(|h| *h == follower.opts.identity)
    })
    .await;
    assert_ne!(second, first);
    pipeline_reconciled(&c, &ns.name, "after").await;
    assert!(follower.metrics().await.contains("ratio1_leader 1"));
    let lease = leases.get("ratio1-operator-leader").await.unwrap().spec.unwrap();
    assert!(lease.lease_transitions.unwrap_or(0) >= 1);
    ns.cleanup().await;
}

#[tokio::test]
async fn graceful_stop_hands_over_at_once() {
    // Cluster 2 too, but a lease of its own so it does not race the test above.
    let c = client(2).await;
    install_crds(&c).await;
    ensure_namespace(&c, OPERATOR_NS).await;
    let leases: Api<Lease> = Api::namespaced(c.clone(), OPERATOR_NS);
    // Unique per run: a killed earlier run may have left its lease held.
    let lease = format!("graceful-test-{}", std::process::id());
    let opts = |id: &str| {
        let mut o = OperatorOpts::new(2, id);
        // A long lease: only an explicit release lets the standby in quickly.
        o.lease_duration_secs = 120;
        // Reconciling stays with the other test's leader; these only campaign.
        o.extra_args = vec!["--lease-name".into(), lease.clone()];
        o
    };
    let mut a = Operator::start(opts("graceful-a")).await;
    wait_for(30, "graceful-a leads", || async {
        let h = leases.get_opt(&lease).await.ok()??.spec?.holder_identity?;
        (h == "graceful-a").then_some(())
    })
    .await;
    let b = Operator::start(opts("graceful-b")).await;
    // SIGTERM: the leader releases the lease on its way out.
    unsafe { libc::kill(a.pid() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), a.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "graceful stop exits 0: {status:?}");
    wait_for(20, "graceful-b leads long before the 120 s lease would expire", || async {
        let h = leases.get_opt(&lease).await.ok()??.spec?.holder_identity?;
        (h == "graceful-b").then_some(())
    })
    .await;
    let mut b = b;
    unsafe { libc::kill(b.pid() as i32, libc::SIGTERM) };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), b.child.wait()).await;
    leases.delete(&lease, &Default::default()).await.unwrap();
}
