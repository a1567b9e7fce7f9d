//! R1Pipeline and R1Model against the real API server, with the shared
//! operator on cluster 1.

use crate::harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use ratio1::crd::{R1Model, R1Pipeline};
use serde_json::json;

const CID: &str = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";
/// CIDs of manifests/samples/r1fs/sentiment-lexicon.tsv and corpus/.
const SAMPLE_MODEL_CID: &str = "bafkreiehpogvqdmmhe66o3h3mty6knmznicafxuarxiqbl4zdbm636zwrm";
const SAMPLE_CORPUS_CID: &str = "bafybeiapnaxf6ntfvwmirvu5a5b7bndck2ywvwji6je6gqgeu4d7a5grcm";

async fn apply<K>(api: &Api<K>, name: &str, body: serde_json::Value) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply("e2e-user").force(), &Patch::Apply(&body)).await.expect("apply")
}

/// A pipeline whose pods are pinned to a node that does not exist: these
/// tests check the objects and the status of pods that cannot run (cluster
/// 1 has a worker node; running.rs checks pods that run).
fn pipeline(name: &str, mode: &str, replicas: i32, image: &str, ports: &[i32]) -> serde_json::Value {
    let ports: Vec<_> = ports.iter().map(|p| json!({"containerPort": p})).collect();
    json!({
        "apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Pipeline",
        "metadata": {"name": name},
        "spec": {"mode": mode, "replicas": replicas,
            "template": {"spec": {"nodeSelector": {"ratio1.ai/e2e": "no-such-node"},
                "containers": [{"name": "main", "image": image, "ports": ports}]}}}
    })
}

/// Waits until the pipeline's status describes its current generation and
/// returns it.
pub async fn caught_up(api: &Api<R1Pipeline>, name: &str) -> R1Pipeline {
    wait_for(30, &format!("status of {name} to catch up"), || async {
        let p = api.get(name).await.ok()?;
        (p.status.as_ref()?.observed_generation == p.metadata.generation).then_some(p)
    })
    .await
}

fn reason(conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition], t: &str) -> (String, String) {
    let c = conds.iter().find(|c| c.type_ == t).unwrap_or_else(|| panic!("no {t} condition in {conds:?}"));
    (c.status.clone(), c.reason.clone())
}

async fn setup(prefix: &str) -> (Client, TestNs) {
    shared_operator();
    let c = client(1).await;
    let ns = TestNs::new(&c, prefix).await;
    (c, ns)
}

#[tokio::test]
async fn service_pipeline_lifecycle() {
    let (c, ns) = setup("svc").await;
    let pipes: Api<R1Pipeline> = Api::namespaced(c.clone(), &ns.name);
    let deps: Api<Deployment> = Api::namespaced(c.clone(), &ns.name);
    let svcs: Api<Service> = Api::namespaced(c.clone(), &ns.name);
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns.name);

    let p = apply(&pipes, "web", pipeline("web", "Service", 2, "nginx:1.27", &[8080])).await;
    let uid = p.uid().unwrap();
    let dep = wait_for(30, "Deployment web", || async { deps.get_opt("web").await.ok().flatten() }).await;
    let spec = dep.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(dep.labels()["app.kubernetes.io/managed-by"], "ratio1-operator");
    assert_eq!(dep.labels()["ratio1.ai/pipeline"], "web");
    let owner = &dep.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("R1Pipeline", uid.as_str(), Some(true)));
    assert_eq!(spec.template.spec.as_ref().unwrap().containers[0].image.as_deref(), Some("nginx:1.27"));
    let svc = wait_for(30, "Service web", || async { svcs.get_opt("web").await.ok().flatten() }).await;
    assert_eq!(svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port, 8080);
    assert_eq!(svc.owner_references()[0].uid, uid);

    // Pods that cannot be scheduled never become ready, so the pipeline
    // reports progress (kstatus InProgress), not readiness.
    let p = caught_up(&pipes, "web").await;
    let st = p.status.unwrap();
    assert_eq!((st.replicas, st.ready_replicas, st.clusters), (2, 0, 1));
    assert_eq!(reason(&st.conditions, "Ready"), ("False".into(), "ReplicasNotReady".into()));
    assert_eq!(reason(&st.conditions, "Reconciling").0, "True");
    assert_eq!(reason(&st.conditions, "Stalled").0, "False");

    // Scale and edit: the children follow.
    apply(&pipes, "web", pipeline("web", "Service", 4, "nginx:1.28", &[8080])).await;
    wait_for(30, "Deployment scaled to 4 with the new image", || async {
        let d = deps.get("web").await.ok()?;
        let s = d.spec?;
        (s.replicas == Some(4) && s.template.spec?.containers[0].image.as_deref() == Some("nginx:1.28")).then_some(())
    })
    .await;
    let st = caught_up(&pipes, "web").await.status.unwrap();
    assert_eq!(st.replicas, 4);

    // Ports removed: the Service goes.
    apply(&pipes, "web", pipeline("web", "Service", 4, "nginx:1.28", &[])).await;
    wait_for(30, "Service removed", || async { svcs.get_opt("web").await.ok()?.is_none().then_some(()) }).await;

    // Mode switch: a Job replaces the Deployment.
    apply(&pipes, "web", pipeline("web", "Job", 3, "busybox", &[])).await;
    let job = wait_for(30, "Job web", || async { jobs.get_opt("web").await.ok().flatten() }).await;
    assert_eq!(job.spec.as_ref().unwrap().completions, Some(3));
    wait_for(30, "Deployment removed", || async { deps.get_opt("web").await.ok()?.is_none().then_some(()) }).await;

    // Delete: the garbage collector removes what the pipeline owned. Its
    // discovery of a new CRD lags up to ~30 s on 1.20, hence the deadline.
    pipes.delete("web", &DeleteParams::default()).await.unwrap();
    wait_for(90, "Job garbage-collected", || async { jobs.get_opt("web").await.ok()?.is_none().then_some(()) }).await;
    ns.cleanup().await;
}

#[tokio::test]
async fn job_template_change_replaces_the_job() {
    let (c, ns) = setup("job").await;
    let pipes: Api<R1Pipeline> = Api::namespaced(c.clone(), &ns.name);
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns.name);
    apply(&pipes, "batch", pipeline("batch", "Job", 2, "busybox:1", &[])).await;
    let first = wait_for(30, "Job batch", || async { jobs.get_opt("batch").await.ok().flatten() }).await;
    let tpl = first.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(tpl.restart_policy.as_deref(), Some("Never"));
    let st = caught_up(&pipes, "batch").await.status.unwrap();
    assert_eq!(reason(&st.conditions, "Ready"), ("False".into(), "CompletionsPending".into()));

    // A Job's template is immutable: a change must replace the Job.
    apply(&pipes, "batch", pipeline("batch", "Job", 2, "busybox:2", &[])).await;
    let second = wait_for(60, "Job batch replaced", || async {
        let j = jobs.get_opt("batch").await.ok()??;
        (j.uid() != first.uid()).then_some(j)
    })
    .await;
    let image = second.spec.unwrap().template.spec.unwrap().containers[0].image.clone();
    assert_eq!(image.as_deref(), Some("busybox:2"));
    ns.cleanup().await;
}

#[tokio::test]
async fn samples_reconcile() {
    let (c, ns) = setup("samples").await;
    let client = c.clone();
    // The samples' content is in the repository: their CIDs are those of
    // its files, and it goes into R1FS before they are applied.
    let api = format!("http://127.0.0.1:{}", shared_operator().api_port);
    for (file, cid) in [("sentiment-lexicon.tsv", SAMPLE_MODEL_CID), ("corpus", SAMPLE_CORPUS_CID)] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ratio1"))
            .args(["fs", "--endpoint", &api, "add"])
            .arg(format!("{}/manifests/samples/r1fs/{file}", env!("CARGO_MANIFEST_DIR")))
            .output()
            .unwrap();
        assert!(out.status.success(), "ratio1 fs add {file}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), cid, "the samples name the CID of {file}");
    }
    for file in ["r1model-cid.yaml", "r1model-volume.yaml", "r1pipeline-service.yaml", "r1pipeline-job.yaml"] {
        for mut doc in yaml_docs(&format!("manifests/samples/{file}")) {
            doc["metadata"]["namespace"] = json!(ns.name);
            let name = doc["metadata"]["name"].as_str().unwrap().to_string();
            match doc["kind"].as_str().unwrap() {
                "R1Model" => {
                    apply(&Api::<R1Model>::namespaced(client.clone(), &ns.name), &name, doc).await;
                }
                "R1Pipeline" => {
                    apply(&Api::<R1Pipeline>::namespaced(client.clone(), &ns.name), &name, doc).await;
                }
                k => panic!("unexpected kind {k} in {file}"),
            }
        }
    }
    let models: Api<R1Model> = Api::namespaced(c.clone(), &ns.name);
    // Held here, the only R1FS node of this cluster: available, and not
    // Ready, since the sample asks for 3 replicas.
    let m = wait_for(30, "sentiment-lexicon available", || async {
        let m = models.get("sentiment-lexicon").await.ok()?;
        ratio1::conditions::is_true(&m.status.clone()?.conditions, "Available").then_some(m)
    })
    .await;
    let st = m.status.unwrap();
    assert_eq!(st.cid.as_deref(), Some(SAMPLE_MODEL_CID));
    let (ready, why) = reason(&st.conditions, "Ready");
    assert_eq!((ready.as_str(), st.replicas), ("False", Some(1)), "{why}");
    // Its claim is not there: it says so (R1FS would import it by a Job).
    let v = wait_for(30, "llm-weights ClaimNotFound", || async {
        let m = models.get("llm-weights").await.ok()?;
        let st = m.status?;
        (reason(&st.conditions, "Stalled") == ("True".into(), "ClaimNotFound".into())).then_some(st)
    })
    .await;
    assert_eq!(reason(&v.conditions, "Ready").0, "False");

    let pipes: Api<R1Pipeline> = Api::namespaced(c.clone(), &ns.name);
    let deps: Api<Deployment> = Api::namespaced(c.clone(), &ns.name);
    // The Deployment may exist before the model is Ready; the model's
    // change then reaches the pod template.
    wait_for(30, "the model CID in sentiment-api's pod template", || async {
        let dep = deps.get_opt("sentiment-api").await.ok().flatten()?;
        let ann = dep.spec?.template.metadata?.annotations?;
        ann.get("ratio1.ai/models")?.contains(SAMPLE_MODEL_CID).then_some(())
    })
    .await;
    let st = caught_up(&pipes, "sentiment-api").await.status.unwrap();
    assert_eq!(reason(&st.conditions, "Stalled").0, "False");
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns.name);
    let job = wait_for(30, "embed-corpus Job", || async { jobs.get_opt("embed-corpus").await.ok().flatten() }).await;
    assert_eq!(job.spec.unwrap().completions, Some(3));

    // The samples run on the node: the service gets ready, the Job completes.
    for name in ["sentiment-api", "embed-corpus"] {
        wait_for(120, &format!("sample {name} Ready"), || async {
            let p = pipes.get(name).await.ok()?;
            let st = p.status?;
            (st.observed_generation == p.metadata.generation
                && ratio1::conditions::is_true(&st.conditions, "Ready")
                && st.ready_replicas == st.replicas)
                .then_some(())
        })
        .await;
    }

    // The Job read the corpus R1FS delivered (6 lines; its built-in one has 3).
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.clone(), &ns.name);
    let lp = kube::api::ListParams::default().labels("ratio1.ai/pipeline=embed-corpus");
    let msgs: Vec<String> = pods
        .list(&lp)
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| {
            let s = p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.terminated.as_ref()?;
            s.message.clone()
        })
        .collect();
    assert!(!msgs.is_empty() && msgs.iter().all(|m| m.starts_with("embedded=6 ")), "{msgs:?}");

    // GitOps: applying the same manifests again changes nothing.
    let before = pipes.get("sentiment-api").await.unwrap();
    let mut doc = yaml_docs("manifests/samples/r1pipeline-service.yaml").remove(0);
    doc["metadata"]["namespace"] = json!(ns.name);
    let after = apply(&pipes, "sentiment-api", doc).await;
    assert_eq!(before.metadata.generation, after.metadata.generation);
    assert_eq!(before.resource_version(), after.resource_version());
    ns.cleanup().await;
}

#[tokio::test]
async fn missing_model_stalls_until_created() {
    let (c, ns) = setup("stall").await;
    let pipes: Api<R1Pipeline> = Api::namespaced(c.clone(), &ns.name);
    let mut body = pipeline("uses-model", "Service", 1, "busybox", &[]);
    body["spec"]["models"] = json!([{"name": "absent", "mountPath": "/m"}]);
    apply(&pipes, "uses-model", body).await;
    let st = caught_up(&pipes, "uses-model").await.status.unwrap();
    assert_eq!(reason(&st.conditions, "Stalled"), ("True".into(), "ModelNotFound".into()));
    assert_eq!(reason(&st.conditions, "Ready").0, "False");
    let deps: Api<Deployment> = Api::namespaced(c.clone(), &ns.name);
    assert!(deps.get_opt("uses-model").await.unwrap().is_none(), "nothing is created for invalid input");

    wait_warning_event(&c, &ns.name, "ModelNotFound", "uses-model").await;

    // The model appears: the pipeline is re-reconciled by the model watch.
    let models: Api<R1Model> = Api::namespaced(c.clone(), &ns.name);
    apply(
        &models,
        "absent",
        json!({"apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Model", "metadata": {"name": "absent"},
               "spec": {"source": {"cid": CID}}}),
    )
    .await;
    wait_for(30, "Stalled cleared and Deployment created", || async {
        let p = pipes.get("uses-model").await.ok()?;
        let stalled = ratio1::conditions::is_true(&p.status?.conditions, "Stalled");
        (!stalled && deps.get_opt("uses-model").await.ok()?.is_some()).then_some(())
    })
    .await;
    ns.cleanup().await;
}

#[tokio::test]
async fn foreign_objects_are_never_taken_over() {
    let (c, ns) = setup("conflict").await;
    let deps: Api<Deployment> = Api::namespaced(c.clone(), &ns.name);
    let user: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "taken"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "user:1"}]}}}
    }))
    .unwrap();
    deps.create(&Default::default(), &user).await.unwrap();
    let pipes: Api<R1Pipeline> = Api::namespaced(c.clone(), &ns.name);
    apply(&pipes, "taken", pipeline("taken", "Service", 3, "mine:1", &[])).await;
    let st = caught_up(&pipes, "taken").await.status.unwrap();
    assert_eq!(reason(&st.conditions, "Stalled"), ("True".into(), "NameConflict".into()));
    let d = deps.get("taken").await.unwrap();
    assert_eq!(d.spec.unwrap().template.spec.unwrap().containers[0].image.as_deref(), Some("user:1"));
    assert!(d.metadata.owner_references.unwrap_or_default().is_empty());

    // The user removes their Deployment: the pipeline recovers by itself,
    // with no change to it (the names watch sees the deletion).
    deps.delete("taken", &DeleteParams::default()).await.unwrap();
    wait_for(60, "pipeline taken to recover from the name conflict", || async {
        let p = pipes.get("taken").await.ok()?;
        let d = deps.get_opt("taken").await.ok()??;
        let ours = d.owner_references().iter().any(|r| Some(&r.uid) == p.metadata.uid.as_ref());
        let stalled = ratio1::conditions::is_true(&p.status?.conditions, "Stalled");
        (ours && !stalled).then_some(())
    })
    .await;
    ns.cleanup().await;
}

#[tokio::test]
async fn metrics_and_probes() {
    let shared = shared_operator();
    let (c, ns) = setup("metrics").await;
    let pipes: Api<R1Pipeline> = Api::namespaced(c.clone(), &ns.name);
    apply(&pipes, "m", pipeline("m", "Service", 0, "busybox", &[])).await;
    // Zero replicas are all ready once the Deployment controller has seen
    // the Deployment (its status change wakes the pipeline through owns()).
    let p = wait_for(30, "pipeline m Ready", || async {
        let p = pipes.get("m").await.ok()?;
        ratio1::conditions::is_true(&p.status.clone()?.conditions, "Ready").then_some(p)
    })
    .await;
    assert_eq!(reason(&p.status.unwrap().conditions, "Ready"), ("True".into(), "Available".into()));
    assert_eq!(http_get(shared.metrics_port, "/healthz").await.as_deref(), Some("ok"));
    assert_eq!(http_get(shared.metrics_port, "/readyz").await.as_deref(), Some("ok"));
    let text = http_get(shared.metrics_port, "/metrics").await.unwrap();
    for needle in [
        "ratio1_reconciles_total{kind=\"R1Pipeline\"}",
        "ratio1_reconcile_duration_seconds_count{kind=\"R1Pipeline\"}",
        "ratio1_leader 1",
    ] {
        assert!(text.contains(needle), "{needle} missing from /metrics:\n{text}");
    }
    ns.cleanup().await;
}
