//! Pipelines whose pods really run: cluster 1 and the chart cluster
//! (`$R1_E2E_CHART_CLUSTER`, 7 by default) have a worker node (kubelet +
//! containerd + runc + CNI bridge, `e2e/kube/node-up.sh`), and the images
//! built by `e2e/images.sh` are imported into it. Cluster 1 runs the shared
//! operator (a host process); the chart cluster belongs to the test that
//! installs the operator with its Helm chart, as a pod.
//!
//! The pods are reached by their IP from this process (the host routes to
//! every node's bridge), never through a kube-proxy, which only one node on
//! the machine can run.

use crate::harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use ratio1::crd::R1Pipeline;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

const SERVER_IMAGE: &str = "ratio1.local/model-server:0.1";
const JOB_IMAGE: &str = "ratio1.local/batch-embed:0.1";
const BUSYBOX_IMAGE: &str = "ratio1.local/busybox:1.35";

/// Fails (never skips) when the cluster has no Ready worker node: these
/// tests are about running pods.
async fn require_node(c: &Client, cluster: usize) {
    let nodes: Api<Node> = Api::all(c.clone());
    wait_for(30, &format!("a Ready worker node on cluster {cluster} (bash e2e/test.sh starts it)"), || async {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .then_some(())
    })
    .await
}

async fn setup(prefix: &str) -> (Client, TestNs) {
    shared_operator();
    let c = client(1).await;
    require_node(&c, 1).await;
    let ns = TestNs::new(&c, prefix).await;
    (c, ns)
}

async fn apply(api: &Api<R1Pipeline>, name: &str, body: serde_json::Value) -> R1Pipeline {
    api.patch(name, &PatchParams::apply("e2e-user").force(), &Patch::Apply(&body)).await.expect("apply")
}

/// A Service-mode pipeline of the model server: HTTP on 8080, ready when
/// /healthz answers (after `ready_delay` seconds).
fn server(name: &str, replicas: i32, ready_delay: i32) -> serde_json::Value {
    json!({
        "apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Pipeline",
        "metadata": {"name": name},
        "spec": {"mode": "Service", "replicas": replicas,
            "template": {"spec": {"containers": [{
                "name": "server", "image": SERVER_IMAGE, "imagePullPolicy": "Never",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                    "periodSeconds": 1, "initialDelaySeconds": ready_delay}}]}}}
    })
}

fn cond<'a>(conds: &'a [Condition], t: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == t)
}

fn is(conds: &[Condition], t: &str, status: &str) -> bool {
    cond(conds, t).is_some_and(|c| c.status == status)
}

/// Waits until the pipeline's status describes its current generation and
/// `f` holds for it; the last status seen is in the panic message.
async fn status_until(
    api: &Api<R1Pipeline>,
    name: &str,
    secs: u64,
    what: &str,
    f: impl Fn(&ratio1::crd::R1PipelineStatus) -> bool,
) -> ratio1::crd::R1PipelineStatus {
    let last = std::sync::Mutex::new(None);
    let found = tokio::time::timeout(
        Duration::from_secs(secs),
        wait_for(secs + 5, what, || async {
            let p = api.get(name).await.ok()?;
            let st = p.status.clone()?;
            *last.lock().unwrap() = Some(st.clone());
            (st.observed_generation == p.metadata.generation && f(&st)).then_some(st)
        }),
    )
    .await;
    match found {
        Ok(st) => st,
        Err(_) => panic!("timed out after {secs}s waiting for {what}; last status: {:#?}", last.lock().unwrap()),
    }
}

/// How the pod's first container ended (it must have).
fn terminated(pod: &Pod) -> k8s_openapi::api::core::v1::ContainerStateTerminated {
    pod.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("terminated")
}

/// The pipeline's pods that are not being deleted.
async fn live_pods(pods: &Api<Pod>, name: &str) -> Vec<Pod> {
    let lp = ListParams::default().labels(&format!("ratio1.ai/pipeline={name}"));
    pods.list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Exactly `n` live pods, all Running and Ready; returns them.
async fn ready_pods(pods: &Api<Pod>, name: &str, n: usize, secs: u64) -> Vec<Pod> {
    wait_for(secs, &format!("{n} running, ready pods of {name}"), || async {
        let live = live_pods(pods, name).await;
        (live.len() == n
            && live
                .iter()
                .all(|p| pod_ready(p) && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")))
        .then_some(live)
    })
    .await
}

/// GET http://ip:port/path: the body on HTTP 200.
async fn http_get_at(ip: &str, port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connect = tokio::net::TcpStream::connect((ip, port));
    let mut s = tokio::time::timeout(Duration::from_secs(3), connect).await.ok()?.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes()).await.ok()?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf)).await.ok()?.ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")).then(|| body.to_string())
}

fn pod_ip(p: &Pod) -> String {
    p.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("a running pod has an IP")
}

#[tokio::test]
async fn service_pipeline_pods_become_ready_and_answer_http() {
    let (c, ns) = setup("run-svc").await;
    let pipes: Api<R1Pipeline> = Api::namespaced(c.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns.name);

    apply(&pipes, "predict", server("predict", 2, 0)).await;
    let st = status_until(&pipes, "predict", 90, "predict Ready with 2 ready replicas", |st| {
        is(&st.conditions, "Ready", "True") && st.ready_replicas == 2
    })
    .await;
    assert_eq!(cond(&st.conditions, "Ready").unwrap().reason, "Available");
    assert!(is(&st.conditions, "Reconciling", "False") && is(&st.conditions, "Stalled", "False"));
    assert_eq!(st.placements[0].phase, ratio1::crd::PlacementPhase::Running);

    // Every pod serves the model over HTTP, at its own IP.
    for p in ready_pods(&pods, "predict", 2, 30).await {
        let ip = pod_ip(&p);
        let body = wait_for(20, &format!("HTTP answer of {} at {ip}:8080", p.name_any()), || async {
            http_get_at(&ip, 8080, "/cgi-bin/predict?text=great+fast+service").await
        })
        .await;
        let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body:?}"));
        assert_eq!(v["label"], "positive", "{body}");
        assert_eq!(v["served_by"], p.name_any().as_str(), "{body}");
        let neg = http_get_at(&ip, 8080, "/cgi-bin/predict?text=awful+slow").await.expect("second request");
        assert!(neg.contains("\"label\":\"negative\""), "{neg}");
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn scaling_changes_the_number_of_running_pods() {
    let (c, ns) = setup("run-scale").await;
    let pipes: Api<R1Pipeline> = Api::namespaced(c.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns.name);

    apply(&pipes, "scale", server("scale", 1, 0)).await;
    ready_pods(&pods, "scale", 1, 90).await;
    status_until(&pipes, "scale", 30, "1/1 ready", |st| st.ready_replicas == 1 && is(&st.conditions, "Ready", "True"))
        .await;

    apply(&pipes, "scale", server("scale", 3, 0)).await;
    let three = ready_pods(&pods, "scale", 3, 60).await;
    let st = status_until(&pipes, "scale", 30, "3/3 ready", |st| {
        st.replicas == 3 && st.ready_replicas == 3 && is(&st.conditions, "Ready", "True")
    })
    .await;
    assert_eq!(st.placements[0].ready_replicas, 3);
    for p in &three {
        let ip = pod_ip(p);
        wait_for(20, &format!("{} answers", p.name_any()), || async { http_get_at(&ip, 8080, "/healthz").await }).await;
    }

    apply(&pipes, "scale", server("scale", 1, 0)).await;
    ready_pods(&pods, "scale", 1, 60).await;
    status_until(&pipes, "scale", 30, "scaled down to 1/1", |st| {
        st.replicas == 1 && st.ready_replicas == 1 && is(&st.conditions, "Ready", "True")
    })
    .await;
    ns.cleanup().await;
}

#[tokio::test]
async fn job_pipeline_runs_to_completion_and_reports_it() {
    let (c, ns) = setup("run-job").await;
    let pipes: Api<R1Pipeline> = Api::namespaced(c.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns.name);
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns.name);

    apply(
        &pipes,
        "embed",
        json!({
            "apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Pipeline",
            "metadata": {"name": "embed"},
            "spec": {"mode": "Job", "replicas": 2,
                "template": {"spec": {"containers": [{"name": "embed", "image": JOB_IMAGE, "imagePullPolicy": "Never"}]}}}
        }),
    )
    .await;
    let st = status_until(&pipes, "embed", 90, "embed Succeeded", |st| is(&st.conditions, "Ready", "True")).await;
    assert_eq!(cond(&st.conditions, "Ready").unwrap().reason, "Succeeded");
    assert_eq!((st.replicas, st.ready_replicas), (2, 2));
    assert_eq!(st.placements[0].phase, ratio1::crd::PlacementPhase::Succeeded);
    let job = jobs.get("embed").await.unwrap();
    assert_eq!(job.status.unwrap().succeeded, Some(2));

    // Each run wrote its result: the termination message carries a summary.
    let done = live_pods(&pods, "embed").await;
    let succeeded: Vec<_> =
        done.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")).collect();
    assert_eq!(succeeded.len(), 2, "{done:#?}");
    for p in succeeded {
        let term = terminated(p);
        assert_eq!(term.exit_code, 0);
        let msg = term.message.unwrap_or_default();
        assert!(msg.starts_with("embedded=3 digest=") && msg.ends_with("result=/tmp/out/result.json"), "{msg}");
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn a_deleted_pod_is_replaced_and_status_follows() {
    let (c, ns) = setup("run-heal").await;
    let pipes: Api<R1Pipeline> = Api::namespaced(c.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns.name);

    // A replacement takes >= 3 s to become ready (probe delay), so the
    // not-ready state lasts long enough to be seen.
    apply(&pipes, "heal", server("heal", 2, 3)).await;
    let before = ready_pods(&pods, "heal", 2, 90).await;
    status_until(&pipes, "heal", 30, "heal Ready 2/2", |st| {
        st.ready_replicas == 2 && is(&st.conditions, "Ready", "True")
    })
    .await;

    let victim = before[0].name_any();
    pods.delete(&victim, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.unwrap();
    let st = status_until(&pipes, "heal", 30, "Reconciling after a pod was deleted", |st| {
        is(&st.conditions, "Reconciling", "True") && is(&st.conditions, "Ready", "False") && st.ready_replicas < 2
    })
    .await;
    assert_eq!(cond(&st.conditions, "Ready").unwrap().reason, "ReplicasNotReady");

    let after = ready_pods(&pods, "heal", 2, 60).await;
    assert!(after.iter().all(|p| p.name_any() != victim), "the deleted pod {victim} is still listed");
    let st = status_until(&pipes, "heal", 30, "Ready again with 2/2", |st| {
        st.ready_replicas == 2 && is(&st.conditions, "Ready", "True") && is(&st.conditions, "Reconciling", "False")
    })
    .await;
    assert_eq!(cond(&st.conditions, "Ready").unwrap().reason, "Available");

    // Events tell the same story: not ready, then available again.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.clone(), &ns.name);
    wait_for(20, "ReplicasNotReady and Available events about heal", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let about: Vec<_> = list
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("heal"))
            .filter_map(|e| e.reason.clone())
            .collect();
        (about.iter().any(|r| r == "ReplicasNotReady") && about.iter().any(|r| r == "Available")).then_some(())
    })
    .await;
    ns.cleanup().await;
}

#[tokio::test]
async fn a_crashing_container_surfaces_in_status_until_fixed() {
    let (c, ns) = setup("run-crash").await;
    let pipes: Api<R1Pipeline> = Api::namespaced(c.clone(), &ns.name);
    let crashing = |cmd: &str| {
        json!({
            "apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Pipeline",
            "metadata": {"name": "crash"},
            "spec": {"mode": "Service", "replicas": 1,
                "template": {"spec": {"terminationGracePeriodSeconds": 0, "containers": [{
                    "name": "worker", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                    "command": ["sh", "-c", cmd]}]}}}
        })
    };
    apply(&pipes, "crash", crashing("echo loading model; echo model file missing >&2; exit 3")).await;
    let st = status_until(&pipes, "crash", 90, "Ready=False with reason CrashLoopBackOff", |st| {
        cond(&st.conditions, "Ready").is_some_and(|c| c.status == "False" && c.reason == "CrashLoopBackOff")
    })
    .await;
    let ready = cond(&st.conditions, "Ready").unwrap();
    assert!(
        ready.message.contains("container worker") && ready.message.contains("last exit code 3"),
        "{}",
        ready.message
    );
    assert!(ready.message.contains("kubectl logs crash-") && ready.message.contains("--previous"), "{}", ready.message);
    // kstatus: still in progress (the user may fix it), not stalled.
    assert!(is(&st.conditions, "Reconciling", "True") && is(&st.conditions, "Stalled", "False"));
    assert_eq!(cond(&st.conditions, "Reconciling").unwrap().reason, "CrashLoopBackOff");
    // Only the user can fix it: a Warning, not a Normal Event.
    wait_warning_event(&c, &ns.name, "CrashLoopBackOff", "crash").await;

    // The user acts on it: the pipeline becomes ready.
    apply(&pipes, "crash", crashing("echo serving; exec sleep 3600")).await;
    status_until(&pipes, "crash", 90, "Ready after the fix", |st| {
        is(&st.conditions, "Ready", "True") && st.ready_replicas == 1
    })
    .await;

    // An image that is not on the node (and may not be pulled) says so too.
    let mut missing = crashing("true");
    missing["spec"]["template"]["spec"]["containers"][0]["image"] = json!("ratio1.local/not-built:0");
    apply(&pipes, "crash", missing).await;
    let st = status_until(&pipes, "crash", 90, "Ready=False with reason ErrImageNeverPull", |st| {
        cond(&st.conditions, "Ready").is_some_and(|c| c.reason == "ErrImageNeverPull")
    })
    .await;
    assert!(cond(&st.conditions, "Ready").unwrap().message.contains("kubectl describe pod crash-"));
    ns.cleanup().await;
}

fn helm() -> String {
    std::env::var("R1_HELM").unwrap_or_else(|_| {
        let out = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/tools/helm.sh"))
            .output()
            .expect("bash runs");
        assert!(out.status.success(), "no helm: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The offline etcd image (`e2e/images.sh ref etcd`): `$R1_ETCD_IMAGE`,
/// which e2e/test.sh sets, or asked of images.sh.
fn etcd_image() -> String {
    std::env::var("R1_ETCD_IMAGE").unwrap_or_else(|_| {
        run(Command::new("bash").arg(concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/images.sh")).args(["ref", "etcd"]))
            .trim()
            .to_string()
    })
}

/// The operator installed by its Helm chart with the image built here, on
/// the chart cluster (no other operator runs there): its pods run under the chart's ServiceAccount (token mounted
/// by admission, RBAC from the chart), pass their probes with a read-only
/// root filesystem, elect a leader, and reconcile a pipeline whose pods run.
/// The chart's CSTORE etcd (etcd.enabled, the default; on an emptyDir:
/// PVCs never bind here) runs beside it, Ready, non-root, without API
/// access, behind the Service the operator's --cstore-endpoints names, and
/// the operator pods' CSTORE reaches it there.
#[tokio::test]
async fn chart_installed_operator_runs_as_a_pod_and_reconciles() {
    const NS: &str = "ratio1-chart";
    let cluster: usize = std::env::var("R1_E2E_CHART_CLUSTER").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let c = client(cluster).await;
    require_node(&c, cluster).await;
    let image = std::env::var("R1_OPERATOR_IMAGE").unwrap_or_else(|_| "ratio1.local/ratio1-operator:dev".into());
    let (repo, tag) = image.rsplit_once(':').expect("image has a tag");
    let etcd_image = etcd_image();
    let (etcd_repo, etcd_tag) = etcd_image.rsplit_once(':').expect("etcd image has a tag");
    let kc = kubeconfig_path(cluster);
    // A previous run's release, if any, goes first.
    let _ =
        Command::new(helm()).args(["uninstall", "ratio1", "--namespace", NS, "--wait"]).env("KUBECONFIG", &kc).output();
    // First the chart's etcd alone (no operator replica yet): this cluster
    // has no DNS, so once the etcd pod runs, the operator's pods get the
    // etcd Service's name in /etc/hosts (hostAliases: the etcd pod's IP),
    // and connect to CSTORE's etcd as they start.
    let install = |sets: &[String]| {
        run(Command::new(helm())
            .args(["upgrade", "--install", "ratio1"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/charts/ratio1-operator"))
            .args(["--namespace", NS, "--create-namespace"])
            .args(["--set", &format!("image.repository={repo}"), "--set", &format!("image.tag={tag}")])
            .args(["--set", "image.pullPolicy=Never"])
            .args(["--set", "leaderElection.leaseDurationSeconds=4", "--set", "leaderElection.retryPeriodSeconds=1"])
            .args(["--set", "leaderElection.renewDeadlineSeconds=3"])
            .args(["--set", "resyncSeconds=30"])
            .args([
                "--set",
                &format!("etcd.image.repository={etcd_repo}"),
                "--set",
                &format!("etcd.image.tag={etcd_tag}"),
            ])
            .args(["--set", "etcd.image.pullPolicy=Never", "--set", "etcd.persistence.enabled=false"])
            .args(sets.iter().flat_map(|s| ["--set", s.as_str()]))
            .env("KUBECONFIG", &kc))
    };
    install(&["replicaCount=0".into()]);

    // CSTORE's etcd: its one member Ready (its /health probes pass), as a
    // non-root pod with a read-only root and no ServiceAccount token.
    let pods: Api<Pod> = Api::namespaced(c.clone(), NS);
    let etcd_lp = ListParams::default().labels("app.kubernetes.io/name=etcd,app.kubernetes.io/instance=ratio1");
    let etcd = wait_for(120, "the chart's etcd pod Running and Ready", || async {
        let list = pods.list(&etcd_lp).await.ok()?.items;
        let live: Vec<_> = list.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        (live.len() == 1 && pod_ready(&live[0])).then(|| live.into_iter().next().unwrap())
    })
    .await;
    let spec = etcd.spec.as_ref().unwrap();
    assert_eq!(spec.containers[0].image.as_deref(), Some(etcd_image.as_str()));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.security_context.as_ref().unwrap().run_as_user, Some(65532));
    assert_eq!(spec.containers[0].security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
    assert!(
        !spec.containers[0].volume_mounts.iter().flatten().any(|m| m.mount_path.starts_with("/var/run/secrets")),
        "the etcd pod has a ServiceAccount token mounted"
    );
    // The client Service routes to that pod, and it serves there (from the
    // host, by pod IP: this cluster has no DNS and may have no kube-proxy).
    let svcs: Api<Service> = Api::namespaced(c.clone(), NS);
    let svc = svcs
        .list(&ListParams::default().labels("app.kubernetes.io/name=etcd,app.kubernetes.io/instance=ratio1"))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|s| s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) != Some("None"))
        .expect("the chart's etcd client Service");
    let etcd_ip = pod_ip(&etcd);
    let endpoints: Api<Endpoints> = Api::namespaced(c.clone(), NS);
    wait_for(30, "the etcd client Service's endpoints name the etcd pod on 2379", || async {
        let ep = endpoints.get_opt(&svc.name_any()).await.ok()??;
        ep.subsets?
            .iter()
            .any(|s| {
                s.addresses.iter().flatten().any(|a| a.ip == etcd_ip)
                    && s.ports.iter().flatten().any(|p| p.port == 2379)
            })
            .then_some(())
    })
    .await;
    let version =
        wait_for(20, "etcd answers on its client port", || async { http_get_at(&etcd_ip, 2379, "/version").await })
            .await;
    assert!(version.contains("etcdserver"), "{version}");
    // Now the operator, pointed at that Service, and only at it.
    let host = format!("{}.{NS}.svc", svc.name_any());
    install(&[
        "replicaCount=2".into(),
        format!("hostAliases[0].ip={etcd_ip}"),
        format!("hostAliases[0].hostnames[0]={host}"),
    ]);
    let want = format!("--cstore-endpoints=http://{host}:2379");
    let deps: Api<Deployment> = Api::namespaced(c.clone(), NS);
    let dep = deps.list(&ListParams::default()).await.unwrap().items.remove(0);
    let args = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].args.clone().unwrap();
    let cstore: Vec<_> = args.iter().filter(|a| a.starts_with("--cstore-endpoints")).collect();
    assert_eq!(cstore, [&want], "{args:?}");

    // Both replicas Ready (the readiness probe answers) under the chart's SA.
    let lp = ListParams::default().labels("app.kubernetes.io/name=ratio1-operator");
    let ops = wait_for(120, "2 operator pods Running and Ready", || async {
        let list = pods.list(&lp).await.ok()?.items;
        let live: Vec<_> = list.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        (live.len() == 2 && live.iter().all(pod_ready)).then_some(live)
    })
    .await;
    let sa = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap().service_account_name.clone().unwrap();
    for p in &ops {
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some(sa.as_str()));
        let ctr = &spec.containers[0];
        assert_eq!(ctr.image.as_deref(), Some(image.as_str()));
        let sc = ctr.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(spec.security_context.as_ref().unwrap().run_as_user, Some(65532));
        // The ServiceAccount admission plugin mounted the token.
        assert!(
            ctr.volume_mounts.iter().flatten().any(|m| m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount"),
            "no service account token mounted in {}",
            p.name_any()
        );
        assert_eq!(p.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0].restart_count, 0);
    }
    // Each replica's CSTORE reaches the chart's etcd through that name
    // (readiness requires it too; the metric names CSTORE).
    for p in &ops {
        let ip = pod_ip(p);
        wait_for(30, &format!("ratio1_cstore_up 1 on {}", p.name_any()), || async {
            let m = http_get_at(&ip, 8080, "/metrics").await?;
            m.lines().any(|l| l == "ratio1_cstore_up 1").then_some(())
        })
        .await;
    }

    // One of them leads: the Lease names a pod of the release.
    let leases: Api<Lease> = Api::namespaced(c.clone(), NS);
    let names: Vec<String> = ops.iter().map(|p| p.name_any()).collect();
    let leader = wait_for(60, "a leader among the operator pods", || async {
        let l = leases.get("ratio1-operator-leader").await.ok()?;
        l.spec?.holder_identity.filter(|h| names.contains(h))
    })
    .await;

    // It reconciles a pipeline end to end: children made by the pod, pods
    // running on the node, status written back.
    crate::harness::ensure_namespace(&c, "chart-work").await;
    let pipes: Api<R1Pipeline> = Api::namespaced(c.clone(), "chart-work");
    let _ = pipes.delete("served", &DeleteParams::default()).await;
    wait_for(60, "an earlier pipeline gone", || async { pipes.get_opt("served").await.ok()?.is_none().then_some(()) })
        .await;
    apply(&pipes, "served", server("served", 1, 0)).await;
    let st = status_until(&pipes, "served", 120, "the pod-operator's pipeline Ready", |st| {
        is(&st.conditions, "Ready", "True") && st.ready_replicas == 1
    })
    .await;
    assert_eq!(st.clusters, 1);
    let p = pipes.get("served").await.unwrap();
    // (no other operator runs on this cluster: the status is the pod's work)
    let writers: Vec<_> = p.managed_fields().iter().filter_map(|m| m.manager.clone()).collect();
    assert!(writers.iter().any(|m| m == "ratio1-operator"), "{writers:?}");
    let work_pods: Api<Pod> = Api::namespaced(c.clone(), "chart-work");
    let served = ready_pods(&work_pods, "served", 1, 30).await;
    let ip = pod_ip(&served[0]);
    wait_for(20, "the served pipeline answers", || async { http_get_at(&ip, 8080, "/healthz").await }).await;

    // What the leader logged (JSON: the chart's logFormat): it reconciled,
    // with no request refused by the API server (HTTP 403).
    let logs = run(Command::new("kubectl").arg("--kubeconfig").arg(&kc).args(["logs", "-n", NS, &leader]));
    let refused = crate::harness::logs::api_refusals(&logs);
    assert!(refused.json_lines > 0, "no JSON log line from the operator pod:\n{logs}");
    assert!(refused.lines.is_empty(), "the operator pod hit a permission it lacks:\n{}", refused.lines.join("\n"));

    pipes.delete("served", &DeleteParams::default()).await.unwrap();
    run(Command::new(helm()).args(["uninstall", "ratio1", "--namespace", NS, "--wait"]).env("KUBECONFIG", &kc));
}

/// `ratio1 fs add PATH` against the shared operator; the CID.
/// `ratio1 fs ARGS` against the shared operator.
fn fs_cli<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ratio1"))
        .args(["fs", "--endpoint", &format!("http://127.0.0.1:{}", shared_operator().api_port)])
        .args(args)
        .output()
        .unwrap()
}

fn fs_add(path: &std::path::Path) -> String {
    let out = fs_cli(&[std::ffi::OsStr::new("add"), path.as_os_str()]);
    assert!(out.status.success(), "ratio1 fs add: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A Job pipeline whose one container runs `script` with these models and
/// inputs delivered.
fn job_reading(name: &str, models: serde_json::Value, inputs: serde_json::Value, script: &str) -> serde_json::Value {
    json!({
        "apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Pipeline",
        "metadata": {"name": name},
        "spec": {"mode": "Job", "replicas": 1, "models": models, "inputs": inputs,
            "template": {"spec": {"containers": [{"name": "reader", "image": BUSYBOX_IMAGE,
                "imagePullPolicy": "Never", "command": ["sh", "-c", script]}]}}}
    })
}

/// A Secret whose data key `key` holds `value`.
fn secret(name: &str, key: &str, value: &str) -> k8s_openapi::api::core::v1::Secret {
    serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {key: value}})).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn r1fs_delivers_models_and_inputs_into_running_containers() {
    let (c, ns) = setup("run-r1fs").await;
    let pipes: Api<R1Pipeline> = Api::namespaced(c.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns.name);
    let models: Api<ratio1::crd::R1Model> = Api::namespaced(c.clone(), &ns.name);
    let work = log_dir().join(format!("r1fs-run-{}", std::process::id()));
    std::fs::create_dir_all(work.join("corpus/sub")).unwrap();
    // A model of 3 chunks (a file DAG) and an input directory.
    let model: Vec<u8> = (0..700 * 1024).map(|i| (i % 253) as u8).collect();
    std::fs::write(work.join("model.bin"), &model).unwrap();
    std::fs::write(work.join("corpus/a.txt"), b"alpha\n").unwrap();
    std::fs::write(work.join("corpus/sub/b.txt"), b"beta\n").unwrap();
    let model_cid = fs_add(&work.join("model.bin"));
    let corpus_cid = fs_add(&work.join("corpus"));

    models
        .patch(
            "m",
            &PatchParams::apply("e2e-user"),
            &Patch::Apply(json!({"apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Model", "metadata": {"name": "m"},
                "spec": {"source": {"cid": model_cid}, "replication": 1}})),
        )
        .await
        .unwrap();
    wait_for(60, "model m Ready (held here)", || async {
        let m = models.get("m").await.ok()?;
        let ready = m.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?.status == "True";
        ready.then_some(())
    })
    .await;

    // The container reads what was delivered and reports its digests; the
    // mounts are read-only.
    let script = "sha256sum /models/m /data/a.txt /data/sub/b.txt | cut -c1-64 | tr '\\n' ' ' > /dev/termination-log; \
                  if touch /data/new 2>/dev/null; then echo WRITABLE >> /dev/termination-log; fi";
    let models = json!([{"name": "m", "mountPath": "/models/m"}]);
    let inputs = json!([{"cid": corpus_cid, "mountPath": "/data"}]);
    apply(&pipes, "reader", job_reading("reader", models, inputs, script)).await;
    let st = status_until(&pipes, "reader", 120, "reader Succeeded", |st| is(&st.conditions, "Ready", "True")).await;
    assert_eq!(cond(&st.conditions, "Ready").unwrap().reason, "Succeeded");
    let done = live_pods(&pods, "reader").await;
    let pod = done.iter().find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")).unwrap();
    let inits: Vec<String> =
        pod.spec.as_ref().unwrap().init_containers.iter().flatten().map(|c| c.name.clone()).collect();
    assert_eq!(inits, ["r1fs-fetch-0", "r1fs-fetch-1"]);
    let term = terminated(pod);
    let want = format!("{} {} {} ", sha256_hex(&model), sha256_hex(b"alpha\n"), sha256_hex(b"beta\n"));
    assert_eq!(term.message.unwrap_or_default(), want, "the container read the bytes added, through read-only mounts");
    // The status says what was delivered, and where.
    let st = status_until(&pipes, "reader", 30, "reader's content delivered", |st| {
        st.content.len() == 2 && st.content.iter().all(|c| c.delivered_pods == 1)
    })
    .await;
    let got: Vec<(&str, &str)> = st.content.iter().map(|c| (c.mount_path.as_str(), c.cid.as_str())).collect();
    assert_eq!(got, [("/models/m", model_cid.as_str()), ("/data", corpus_cid.as_str())]);
    ns.cleanup().await;
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test]
async fn r1fs_opens_a_sealed_model_in_pods_only_with_the_key_in_its_secret() {
    use k8s_openapi::api::core::v1::Secret;
    let (c, ns) = setup("run-sealed").await;
    let pipes: Api<R1Pipeline> = Api::namespaced(c.clone(), &ns.name);
    let models: Api<ratio1::crd::R1Model> = Api::namespaced(c.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns.name);
    let work = log_dir().join(format!("r1fs-sealed-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let model: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    std::fs::write(work.join("model.bin"), &model).unwrap();
    let key_file = work.join("model.key");
    let model_file = work.join("model.bin");
    let out = fs_cli(&[
        "add".as_ref(),
        "--encrypt".as_ref(),
        "--key-file".as_ref(),
        key_file.as_os_str(),
        model_file.as_os_str(),
    ]);
    assert!(out.status.success(), "ratio1 fs add --encrypt: {}", String::from_utf8_lossy(&out.stderr));
    let sealed = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let key = std::fs::read_to_string(&key_file).unwrap();

    let sealed_model = |name: &str, secret: &str| {
        json!({"apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Model", "metadata": {"name": name},
            "spec": {"source": {"cid": sealed}, "replication": 1, "encryption": {"keySecretRef": {"name": secret}}}})
    };
    for (name, secret) in [("sealed", "sealed-key"), ("sealed-wrong", "wrong-key")] {
        models.patch(name, &PatchParams::apply("e2e-user"), &Patch::Apply(sealed_model(name, secret))).await.unwrap();
    }
    let script = "sha256sum /models/s | cut -c1-64 > /dev/termination-log";
    let models = json!([{"name": "sealed", "mountPath": "/models/s"}]);
    apply(&pipes, "opener", job_reading("opener", models, json!([]), script)).await;
    // No Secret yet: Stalled, saying which Secret to make, and an Event.
    let st = status_until(&pipes, "opener", 120, "opener Stalled with KeySecretNotFound", |st| {
        is(&st.conditions, "Stalled", "True") && cond(&st.conditions, "Stalled").unwrap().reason == "KeySecretNotFound"
    })
    .await;
    let msg = &cond(&st.conditions, "Stalled").unwrap().message;
    assert!(msg.contains(&format!("{}/sealed-key", ns.name)) && msg.contains("kubectl create secret"), "{msg}");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.clone(), &ns.name);
    wait_for(20, "a KeySecretNotFound event about opener", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("opener")
                    && e.reason.as_deref() == Some("KeySecretNotFound")
            })
            .then_some(())
    })
    .await;

    // The owner makes the Secret: the kubelet starts the fetcher, which
    // opens the content; the container reads the plaintext.
    secrets.create(&Default::default(), &secret("sealed-key", "key", &key)).await.unwrap();
    let st = status_until(&pipes, "opener", 120, "opener Succeeded", |st| is(&st.conditions, "Ready", "True")).await;
    assert_eq!(cond(&st.conditions, "Ready").unwrap().reason, "Succeeded");
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns.name);
    let done = live_pods(&pods, "opener").await;
    let pod = done.iter().find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")).unwrap();
    assert_eq!(
        terminated(pod).message.unwrap_or_default().trim(),
        sha256_hex(&model),
        "the plaintext, opened in the pod"
    );
    // What the nodes hold is ciphertext.
    let out = fs_cli(&["cat", sealed.as_str()]);
    assert!(out.status.success() && out.stdout.len() > model.len() && out.stdout != model);

    // A Secret with another key: the fetcher cannot open the content.
    let other = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    };
    secrets.create(&Default::default(), &secret("wrong-key", "key", &other)).await.unwrap();
    apply(
        &pipes,
        "wrong",
        json!({
            "apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Pipeline",
            "metadata": {"name": "wrong"},
            "spec": {"replicas": 1,
                "models": [{"name": "sealed-wrong", "mountPath": "/models/s"}],
                "template": {"spec": {"containers": [{"name": "server", "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]}}}
        }),
    )
    .await;
    let st = status_until(&pipes, "wrong", 120, "wrong Stalled with WrongKey", |st| {
        is(&st.conditions, "Stalled", "True") && cond(&st.conditions, "Stalled").unwrap().reason == "WrongKey"
    })
    .await;
    assert!(cond(&st.conditions, "Stalled").unwrap().message.contains("wrong-key"));
    ns.cleanup().await;
    let _ = std::fs::remove_dir_all(&work);
}

/// A hostPath PersistentVolume and its claim in `ns`, bound by hand (the
/// test control planes run no PV binder): the claim's content is `dir`.
async fn hostpath_claim(c: &Client, ns: &str, claim: &str, dir: &std::path::Path) -> String {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let pv_name = format!("{ns}-{claim}");
    let pvs: Api<PersistentVolume> = Api::all(c.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), ns);
    let ssa = PatchParams::apply("e2e-user").force();
    // The annotation is what the scheduler reads as "bound" (the binder sets it).
    let pvc = pvcs
        .patch(
            claim,
            &ssa,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": pv_name,
                "resources": {"requests": {"storage": "1Gi"}}}})),
        )
        .await
        .unwrap();
    // The kubelet checks that the volume names this very claim (its UID).
    pvs.patch(
        &pv_name,
        &ssa,
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
            "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": dir.to_str().unwrap(), "type": "Directory"},
            "claimRef": {"namespace": ns, "name": claim, "uid": pvc.metadata.uid}}})),
    )
    .await
    .unwrap();
    let bound = json!({"status": {"phase": "Bound"}});
    pvs.patch_status(&pv_name, &PatchParams::default(), &Patch::Merge(&bound)).await.unwrap();
    let claimed =
        json!({"status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}});
    pvcs.patch_status(claim, &PatchParams::default(), &Patch::Merge(&claimed)).await.unwrap();
    pv_name
}

#[tokio::test]
async fn r1fs_imports_a_model_from_a_volume_and_says_why_when_it_cannot() {
    let (c, ns) = setup("run-import").await;
    let models: Api<ratio1::crd::R1Model> = Api::namespaced(c.clone(), &ns.name);
    // The claim's content: a model file, readable by the import Job's user.
    let dir = std::env::temp_dir().join(format!("r1fs-pv-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(dir.join("weights")).unwrap();
    let model: Vec<u8> = (0..600 * 1024).map(|i| (i % 241) as u8).collect();
    std::fs::write(dir.join("weights/model.bin"), &model).unwrap();
    Command::new("chmod").args(["-R", "a+rX"]).arg(&dir).status().unwrap();
    let pv = hostpath_claim(&c, &ns.name, "models", &dir).await;
    let want =
        ratio1::r1fs::add::only_hash(&dir.join("weights/model.bin"), false, &mut |_| {}).unwrap().cid.to_string();

    let apply_model = |name: &str, path: &str| {
        let models = models.clone();
        let body = json!({"apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Model", "metadata": {"name": name},
            "spec": {"source": {"volume": {"claimName": "models", "path": path}}, "replication": 1}});
        let name = name.to_string();
        async move { models.patch(&name, &PatchParams::apply("e2e-user"), &Patch::Apply(body)).await.unwrap() }
    };
    apply_model("imported", "weights/model.bin").await;
    apply_model("missing", "weights/absent.bin").await;
    let st = wait_for(120, "model imported Ready with the file's CID", || async {
        let m = models.get("imported").await.ok()?;
        let st = m.status?;
        let ready = cond(&st.conditions, "Ready")?;
        (ready.status == "True").then_some(st)
    })
    .await;
    assert_eq!(st.cid.as_deref(), Some(want.as_str()), "the CID of the file in the claim");
    assert_eq!(st.replicas, Some(1));
    // What it imported reads back, byte for byte.
    let out = fs_cli(&["cat", want.as_str()]);
    assert!(out.stdout == model, "{}", String::from_utf8_lossy(&out.stderr));
    // A path that is not in the claim: Stalled, with the Job to look at.
    let st = wait_for(150, "model missing Stalled with ImportFailed", || async {
        let m = models.get("missing").await.ok()?;
        let st = m.status?;
        let stalled = cond(&st.conditions, "Stalled")?;
        (stalled.status == "True" && stalled.reason == "ImportFailed").then_some(stalled.message.clone())
    })
    .await;
    assert!(st.contains("kubectl logs") && st.contains("r1fs-import-"), "{st}");

    // Sealed on import, under the key of a Secret that does not exist yet.
    let body = json!({"apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Model", "metadata": {"name": "sealed"},
        "spec": {"source": {"volume": {"claimName": "models", "path": "weights/model.bin"}}, "replication": 1,
            "encryption": {"keySecretRef": {"name": "import-key", "key": "k"}}}});
    models.patch("sealed", &PatchParams::apply("e2e-user"), &Patch::Apply(body)).await.unwrap();
    let msg = wait_for(120, "model sealed Stalled with KeySecretNotFound", || async {
        let st = models.get("sealed").await.ok()?.status?;
        let stalled = cond(&st.conditions, "Stalled")?;
        (stalled.status == "True" && stalled.reason == "KeySecretNotFound").then_some(stalled.message.clone())
    })
    .await;
    assert!(msg.contains(&format!("{}/import-key", ns.name)), "{msg}");
    let key_file = dir.join("import.key");
    let key = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    };
    std::fs::write(&key_file, &key).unwrap();
    Api::namespaced(c.clone(), &ns.name).create(&Default::default(), &secret("import-key", "k", &key)).await.unwrap();
    let st = wait_for(120, "model sealed Ready", || async {
        let st = models.get("sealed").await.ok()?.status?;
        (cond(&st.conditions, "Ready")?.status == "True").then_some(st)
    })
    .await;
    let cid = st.cid.unwrap();
    assert_ne!(cid, want, "sealed content has the CID of its ciphertext");
    let out = fs_cli(&["cat".as_ref(), cid.as_ref(), "--key-file".as_ref(), key_file.as_os_str()]);
    assert!(out.stdout == model, "opened with the Secret's key: {}", String::from_utf8_lossy(&out.stderr));
    ns.cleanup().await;
    let _ =
        Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(c.clone()).delete(&pv, &DeleteParams::default()).await;
    let _ = std::fs::remove_dir_all(&dir);
}
