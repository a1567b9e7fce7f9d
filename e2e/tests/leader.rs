//! Leader election on cluster 2: one leader and failover when it is
//! killed, hand-over when it stops gracefully, and expiry judged by the
//! candidate's own clock whatever the holder's clock says.
//!
//! An operator that leads runs every controller, whatever its Lease is
//! called, so these tests take turns on cluster 2: two leaders must never
//! reconcile one cluster at once.

use crate::harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use ratio1::crd::R1Pipeline;
use serde_json::json;
use std::time::{Duration, Instant};

/// Held by each test for its whole run (tests run on parallel threads, each
/// with its own runtime; a tokio Mutex works across them).
static CLUSTER_2: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _turn = CLUSTER_2.lock().await;
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
    let (mut leader, mut follower) = if first == "replica-a" { (a, b) } else { (b, a) };
    pipeline_reconciled(&c, &ns.name, "before").await;
    assert!(leader.metrics().await.contains("ratio1_leader 1"));
    let fm = follower.metrics().await;
    assert!(fm.contains("ratio1_leader 0"), "{fm}");
    assert_eq!(reconciles(&fm), 0, "the standby must not reconcile");

    // A crash does not release the lease: the standby waits until it has
    // seen it unchanged for the lease duration (4 s here), then leads.
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
    follower.kill().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn graceful_stop_hands_over_at_once() {
    let _turn = CLUSTER_2.lock().await;
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

/// The record of a holder "ghost" whose clock is off by an hour or more.
fn ghost(renew: Timestamp, duration_secs: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some("ghost".into()),
        lease_duration_seconds: Some(duration_secs),
        acquire_time: Some(MicroTime(renew)),
        renew_time: Some(MicroTime(renew)),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_skewed_holder_keeps_its_lease_while_it_renews() {
    let _turn = CLUSTER_2.lock().await;
    let c = client(2).await;
    install_crds(&c).await;
    ensure_namespace(&c, OPERATOR_NS).await;
    let leases: Api<Lease> = Api::namespaced(c.clone(), OPERATOR_NS);
    let lease = format!("skew-test-{}", std::process::id());
    let hour = SignedDuration::from_hours(1);
    // The ghost's record says 6 s; the candidate's own setting is 4 s: the
    // record's duration is the one that counts.
    const DURATION: u64 = 6;
    let meta = ObjectMeta { name: Some(lease.clone()), ..Default::default() };
    let first = Lease { metadata: meta, spec: Some(ghost(Timestamp::now() - hour, DURATION as i32)) };
    leases.create(&PostParams::default(), &first).await.unwrap();

    let mut opts = OperatorOpts::new(2, "skew-candidate");
    opts.extra_args = vec!["--lease-name".into(), lease.clone()];
    // Ready means campaigning.
    let mut op = Operator::start(opts).await;

    // The ghost renews every second, for longer than the lease duration,
    // with a renewTime an hour in the past (which a comparison with the
    // candidate's wall clock would call long expired).
    let renewals = 10;
    let mut last_renewal = Instant::now();
    for i in 0..renewals {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut l = leases.get(&lease).await.unwrap();
        let holder = l.spec.as_ref().and_then(|s| s.holder_identity.clone());
        assert_eq!(holder.as_deref(), Some("ghost"), "taken from a holder that renews (renewal {i})");
        // The last renewal is an hour in the future instead: that must not
        // keep the lease alive either.
        let renew = if i + 1 == renewals { Timestamp::now() + hour } else { Timestamp::now() - hour };
        l.spec = Some(ghost(renew, DURATION as i32));
        last_renewal = Instant::now();
        // Conditional on the resourceVersion just read: a conflict means
        // the candidate wrote the lease in between.
        if let Err(e) = leases.replace(&lease, &PostParams::default(), &l).await {
            panic!("the ghost's renewal {i} failed (taken from a holder that renews?): {e}");
        }
    }
    let m = op.metrics().await;
    assert!(m.contains("ratio1_leader 0"), "the candidate must still wait: {m}");

    // The ghost stops: the candidate takes the lease once it has seen it
    // unchanged for the duration, by its own clock.
    let taken = wait_for(DURATION + 15, "the candidate to take the lease the ghost stopped renewing", || async {
        let h = leases.get_opt(&lease).await.ok()??.spec?.holder_identity?;
        (h == "skew-candidate").then(Instant::now)
    })
    .await;
    let waited = taken - last_renewal;
    assert!(waited >= Duration::from_secs(DURATION), "taken {waited:?} after the ghost's last renewal");
    wait_for(10, "the candidate to report leading", || async {
        op.metrics().await.contains("ratio1_leader 1").then_some(())
    })
    .await;
    op.kill().await;
    leases.delete(&lease, &Default::default()).await.unwrap();
}
