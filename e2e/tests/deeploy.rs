//! Deeploy across clusters 4 (A, the origin), 5 (B) and 6 (C): operator
//! processes over real libp2p, each with its own real etcd for CSTORE and
//! its own kube-apiserver. A pipeline applied once on A runs where its
//! placement sends it; edits, deletion, a dead target, a frozen API server
//! at the origin, a refusal and an origin restart are each checked on the
//! clusters' API servers.

use crate::harness::cstore;
use crate::harness::federation::*;
use crate::harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::ResourceExt;
use ratio1::crd::{R1Node, R1Pipeline};
use serde_json::json;
use std::time::{Duration, Instant};

const ORIGIN_LABEL: &str = "ratio1.ai/deeploy-origin";

fn pipeline(name: &str, ns: &str, replicas: i32, placement: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Pipeline",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "placement": placement,
            "template": {"spec": {"containers": [{
                "name": "main", "image": "ratio1.local/sample:1",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}
            }]}}
        }
    })
}

async fn apply(cluster: usize, ns: &str, obj: &serde_json::Value) {
    let api: Api<R1Pipeline> = Api::namespaced(client(cluster).await, ns);
    let name = obj["metadata"]["name"].as_str().unwrap();
    api.patch(name, &PatchParams::apply("e2e-deeploy").force(), &Patch::Apply(obj)).await.unwrap();
}

/// The copy of `ns/name` on `cluster` and its Deployment's replicas, if
/// both exist.
async fn copy_on(cluster: usize, ns: &str, name: &str) -> Option<(R1Pipeline, i32)> {
    let c = client(cluster).await;
    let p = Api::<R1Pipeline>::namespaced(c.clone(), ns).get_opt(name).await.ok()??;
    let d = Api::<Deployment>::namespaced(c, ns).get_opt(name).await.ok()??;
    Some((p, d.spec?.replicas?))
}

async fn gone_on(cluster: usize, ns: &str, name: &str) -> bool {
    let c = client(cluster).await;
    Api::<R1Pipeline>::namespaced(c, ns).get_opt(name).await.is_ok_and(|p| p.is_none())
}

/// Waits until the copy on `cluster` runs `replicas` for origin `origin`.
async fn wait_copy(cluster: usize, ns: &str, name: &str, origin: &str, replicas: i32, secs: u64) {
    wait_for(secs, &format!("{ns}/{name} on c{cluster} with {replicas} replicas"), || async {
        let (p, r) = copy_on(cluster, ns, name).await?;
        (p.labels().get(ORIGIN_LABEL).map(String::as_str) == Some(origin) && r == replicas).then_some(())
    })
    .await;
}

async fn wait_gone(cluster: usize, ns: &str, name: &str, secs: u64) {
    wait_for(secs, &format!("{ns}/{name} gone from c{cluster}"), || async {
        gone_on(cluster, ns, name).await.then_some(())
    })
    .await;
}

/// The origin's status once it says `Scheduled` = `want` with `reason`.
async fn wait_scheduled(cluster: usize, ns: &str, name: &str, want: &str, reason: &str, secs: u64) -> R1Pipeline {
    let api: Api<R1Pipeline> = Api::namespaced(client(cluster).await, ns);
    wait_for(secs, &format!("{ns}/{name} Scheduled={want} ({reason})"), || async {
        let p = api.get(name).await.ok()?;
        let c = p.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Scheduled")?.clone();
        (c.status == want && c.reason == reason && p.status.as_ref()?.observed_generation == p.metadata.generation)
            .then_some(p)
    })
    .await
}

fn placed_nodes(p: &R1Pipeline) -> Vec<String> {
    let mut v: Vec<String> = p.status.iter().flat_map(|s| s.placements.iter()).filter_map(|x| x.node.clone()).collect();
    v.sort();
    v
}

async fn label_node(cluster: usize, name: &str, labels: serde_json::Value, policy: Option<serde_json::Value>) {
    let api: Api<R1Node> = Api::all(client(cluster).await);
    let mut body =
        json!({"apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Node", "metadata": {"name": name, "labels": labels}});
    if let Some(p) = policy {
        body["spec"] = json!({"policy": p});
    }
    api.patch(name, &PatchParams::apply("e2e-deeploy-labels").force(), &Patch::Apply(&body)).await.unwrap();
}

/// `ratio1 deeploy ARGS` against an operator: exit status, stdout, stderr.
async fn deeploy_cli(api_port: u16, args: &[&str]) -> (bool, String, String) {
    cstore::command("deeploy", api_port, args).await
}

/// Freezes a cluster's kube-apiserver (SIGSTOP) until dropped.
struct Frozen(u32);

impl Frozen {
    fn apiserver(cluster: usize) -> Self {
        let run = std::env::var("R1KUBE_RUN").unwrap_or_else(|_| "/tmp/ratio1-kube-test".into());
        let pid: u32 =
            std::fs::read_to_string(format!("{run}/c{cluster}/apiserver.pid")).unwrap().trim().parse().unwrap();
        assert!(std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status().unwrap().success());
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

#[tokio::test]
async fn deeploy_places_propagates_refuses_fails_over_and_cleans_up() {
    let _turn = CLUSTERS_4_TO_6.lock().await;
    let (mut fed, _etcds) = cstore::federation(&[4, 5, 6]).await;
    let (a, b, c) = (4, 5, 6);
    let (pa, pb, pc) = (fed.nodes[0].peer_id.clone(), fed.nodes[1].peer_id.clone(), fed.nodes[2].peer_id.clone());
    label_node(a, "node-c4", json!({"region": "us"}), None).await;
    label_node(b, "node-c5", json!({"region": "eu"}), None).await;
    label_node(c, "node-c6", json!({"region": "eu"}), None).await;
    for i in 0..3 {
        fed.wait_peers(i, 2, 60).await;
    }
    let ca = client(a).await;
    let ns = TestNs::new(&ca, "deeploy").await;
    let ns = ns.name.clone();
    let eu = json!({"clusters": 2, "clusterSelector": {"matchLabels": {"region": "eu"}}});

    // 1. Where it would go, from the CLI, before anything is applied (the
    // profiles of B and C reach A through CSTORE).
    let file = log_dir().join(format!("deeploy-plan-{}.yaml", std::process::id()));
    std::fs::write(&file, serde_yaml::to_string(&pipeline("web", &ns, 2, eu.clone())).unwrap()).unwrap();
    let api_a = fed.nodes[0].op().api_port;
    let plan = wait_for(60, "a plan that places on node-c5 and node-c6", || async {
        let (ok, out, _) = deeploy_cli(api_a, &["plan", file.to_str().unwrap()]).await;
        (ok && out.contains("placed on 2 of 2 clusters")).then_some(out)
    })
    .await;
    assert!(plan.contains("node-c4") && plan.contains("its labels do not match placement.clusterSelector"), "{plan}");
    assert!(gone_on(b, &ns, "web").await, "a plan applies nothing");
    let (ok, _, err) = deeploy_cli(api_a, &["plan", "/nonexistent.yaml"]).await;
    assert!(!ok && err.contains("cannot read /nonexistent.yaml") && err.lines().count() == 1, "{err}");

    // 2. Apply once on A: it runs on B and C (namespace created there), not on A.
    let t0 = Instant::now();
    apply(a, &ns, &pipeline("web", &ns, 2, eu.clone())).await;
    wait_copy(b, &ns, "web", &pa, 2, 30).await;
    wait_copy(c, &ns, "web", &pa, 2, 30).await;
    eprintln!("apply on A to workload on B and C: {:?}", t0.elapsed());
    let p = wait_scheduled(a, &ns, "web", "True", "Placed", 30).await;
    assert_eq!(placed_nodes(&p), vec!["node-c5", "node-c6"]);
    assert_eq!(p.status.as_ref().unwrap().replicas, 4, "2 replicas on each of 2 clusters");
    assert!(p.finalizers().is_empty(), "no finalizer on the user's pipeline");
    assert!(Api::<Deployment>::namespaced(ca.clone(), &ns).get_opt("web").await.unwrap().is_none(), "not on A");
    let (ok, status, _) = deeploy_cli(api_a, &["status", "web", "-n", &ns]).await;
    assert!(ok && status.contains(&pb) && status.contains(&pc), "{status}");

    // Lying intents from a licensed peer (B), each in B's own namespace:
    // one that claims A as origin, one out of bounds, one malformed. C
    // drops and counts each, and runs none.
    let api_b = fed.nodes[1].op().api_port;
    let spec = &pipeline("x", &ns, 1, json!({}))["spec"];
    let forged = |name: &str, origin: &str, replicas: i32| {
        json!({"namespace": ns, "name": name, "origin": origin, "originNode": "node-c4", "uid": "u", "generation": 1,
            "specHash": "0", "spec": spec, "targets": {pc.clone(): replicas}, "need": {"cpuMilli": 0, "memory": 0, "gpus": 0}})
    };
    for (name, value) in
        [("forged", forged("forged", &pa, 1)), ("huge", forged("huge", &pb, 100_000)), ("bogus", json!({"bogus": 1}))]
    {
        let key = ratio1::deeploy::intent::intent_key(&pb, &ns, name);
        cstore::ok(api_b, &["set", &key, &value.to_string()]).await;
    }
    wait_for(30, "C drops the three lying intents", || async {
        let n = counter(&fed, 2, "ratio1_deeploy_rejected_total", "malformed_intent").await;
        (n >= 3.0).then_some(())
    })
    .await;
    for name in ["forged", "huge", "bogus"] {
        assert!(gone_on(c, &ns, name).await, "C runs nothing from a lying intent ({name})");
    }
    // A well-formed intent from B whose pod would mount C's root
    // filesystem: C refuses it (whatever its policy), says why, runs nothing.
    let mut escape = pipeline("escape", &ns, 1, json!({}));
    escape["spec"]["template"]["spec"]["volumes"] = json!([{"name": "root", "hostPath": {"path": "/"}}]);
    let spec: ratio1::crd::R1PipelineSpec = serde_json::from_value(escape["spec"].clone()).unwrap();
    let i = ratio1::deeploy::intent::Intent {
        namespace: ns.clone(),
        name: "escape".into(),
        origin: pb.clone(),
        origin_node: "node-c5".into(),
        uid: "u".into(),
        generation: 1,
        spec_hash: ratio1::deeploy::spec_hash(&spec),
        spec: escape["spec"].clone(),
        targets: [(pc.clone(), 1)].into(),
        need: Default::default(),
    };
    let key = ratio1::deeploy::intent::intent_key(&pb, &ns, "escape");
    cstore::ok(api_b, &["set", &key, &serde_json::to_string(&i).unwrap()]).await;
    let report = ratio1::deeploy::intent::report_key(&pc, &pb, &ns, "escape");
    let api_c = fed.nodes[2].op().api_port;
    let refused = wait_for(30, "C refuses the hostPath intent", || async {
        let v = cstore::value(api_c, &report).await?;
        v["refused"].as_str().map(String::from)
    })
    .await;
    assert!(refused.contains("hostPath"), "{refused}");
    assert!(gone_on(c, &ns, "escape").await, "C runs nothing that reaches its hosts");
    cstore::ok(api_b, &["del", &key]).await;

    // 3. An edit at the origin propagates.
    apply(a, &ns, &pipeline("web", &ns, 3, eu.clone())).await;
    wait_copy(b, &ns, "web", &pa, 3, 30).await;
    wait_copy(c, &ns, "web", &pa, 3, 30).await;

    // Named nodes: exactly those, by name; one nobody knows is reported.
    apply(a, &ns, &pipeline("pin", &ns, 1, json!({"nodes": ["node-c6", "node-zz"]}))).await;
    let p = wait_scheduled(a, &ns, "pin", "False", "NodesUnavailable", 30).await;
    let msg = p.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Scheduled").unwrap().message.clone();
    assert!(msg.contains("node-zz: not known in the network"), "{msg}");
    wait_copy(c, &ns, "pin", &pa, 1, 30).await;
    assert_eq!(placed_nodes(&p), vec!["node-c6"]);
    assert!(gone_on(b, &ns, "pin").await, "B is not named");
    Api::<R1Pipeline>::namespaced(ca.clone(), &ns).delete("pin", &DeleteParams::default()).await.unwrap();
    wait_gone(c, &ns, "pin", 30).await;

    // 4. Refusal: a pipeline B's admin made under the same name is never
    // taken over; B refuses, and A says why nothing else fits.
    let cb = client(b).await;
    ensure_namespace(&cb, &ns).await;
    let mut theirs = pipeline("api", &ns, 1, json!({}));
    theirs["spec"]["template"]["spec"]["containers"][0]["image"] = json!("ratio1.local/theirs:1");
    apply(b, &ns, &theirs).await;
    apply(a, &ns, &pipeline("api", &ns, 1, eu.clone())).await;
    let p = wait_scheduled(a, &ns, "api", "False", "NoFittingNode", 30).await;
    let msg = p.status.unwrap().conditions.iter().find(|c| c.type_ == "Scheduled").unwrap().message.clone();
    assert!(msg.contains("node-c5: refused:") && msg.contains("did not get from the network"), "{msg}");
    wait_copy(c, &ns, "api", &pa, 1, 30).await;
    let mine = Api::<R1Pipeline>::namespaced(cb.clone(), &ns).get("api").await.unwrap();
    assert!(mine.labels().get(ORIGIN_LABEL).is_none(), "B's own pipeline is untouched");
    let img = mine.spec.template.spec.unwrap().containers[0].image.clone();
    assert_eq!(img.as_deref(), Some("ratio1.local/theirs:1"));

    // 5. Policy: C admits only another namespace; its profile says so, and
    // A places nothing more there (web moves off C, nowhere else fits).
    label_node(c, "node-c6", json!({"region": "eu"}), Some(json!({"allowedNamespaces": ["elsewhere"]}))).await;
    let p = wait_scheduled(a, &ns, "web", "False", "NoFittingNode", 30).await;
    let msg = p.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Scheduled").unwrap().message.clone();
    assert!(msg.contains("node-c6") && msg.contains("allowedNamespaces"), "{msg}");
    wait_gone(c, &ns, "web", 30).await;
    assert!(copy_on(b, &ns, "web").await.is_some(), "B keeps its part");
    label_node(c, "node-c6", json!({"region": "eu"}), None).await;
    wait_copy(c, &ns, "web", &pa, 3, 30).await;
    wait_scheduled(a, &ns, "web", "True", "Placed", 30).await;

    // 6. Failover: a one-cluster pipeline on B moves to C when B's operator
    // dies; B removes its stale copy when it returns.
    let one = json!({"clusters": 1, "clusterSelector": {"matchLabels": {"region": "eu"}}});
    apply(a, &ns, &pipeline("job1", &ns, 1, one.clone())).await;
    let first = wait_for(30, "job1 placed", || async {
        let p: R1Pipeline = Api::namespaced(ca.clone(), &ns).get("job1").await.ok()?;
        let nodes = placed_nodes(&p);
        (nodes.len() == 1).then(|| nodes[0].clone())
    })
    .await;
    let (dead, alive) = if first == "node-c5" { (1, c) } else { (2, b) };
    let dead_cluster = fed.nodes[dead].cluster;
    wait_copy(dead_cluster, &ns, "job1", &pa, 1, 30).await;
    let killed = Instant::now();
    fed.nodes[dead].op.as_mut().unwrap().kill().await;
    wait_copy(alive, &ns, "job1", &pa, 1, 40).await;
    let failover = killed.elapsed();
    eprintln!("failover after the target's operator died: {failover:?}");
    assert!(copy_on(dead_cluster, &ns, "job1").await.is_some(), "a dead operator's cluster is left as it was");
    fed.nodes[dead].op = Some(Operator::start(fed.nodes[dead].opts.clone()).await);
    wait_gone(dead_cluster, &ns, "job1", 60).await;
    wait_copy(alive, &ns, "job1", &pa, 1, 5).await;
    wait_scheduled(a, &ns, "web", "True", "Placed", 60).await;

    // 7. The origin's API server frozen for a minute deletes nothing anywhere.
    // B, back, runs its part of web again.
    wait_copy(b, &ns, "web", &pa, 3, 60).await;
    wait_copy(c, &ns, "web", &pa, 3, 5).await;
    {
        let _frozen = Frozen::apiserver(a);
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            for k in [b, c] {
                assert!(copy_on(k, &ns, "web").await.is_some(), "web vanished from c{k} while A's API server was down");
            }
            assert!(copy_on(alive, &ns, "job1").await.is_some(), "job1 vanished while A's API server was down");
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
    wait_for(60, "A's API server answers again", || async {
        Api::<R1Pipeline>::namespaced(client(a).await, &ns).get_opt("web").await.ok().flatten().map(|_| ())
    })
    .await;

    // 8. The origin's operator restarted mid-rollout: no duplicates.
    apply(a, &ns, &pipeline("web", &ns, 4, eu.clone())).await;
    fed.nodes[0].op.as_mut().unwrap().kill().await;
    fed.nodes[0].op = Some(Operator::start(fed.nodes[0].opts.clone()).await);
    wait_copy(b, &ns, "web", &pa, 4, 60).await;
    wait_copy(c, &ns, "web", &pa, 4, 60).await;
    let p = wait_scheduled(a, &ns, "web", "True", "Placed", 60).await;
    assert_eq!(placed_nodes(&p), vec!["node-c5", "node-c6"], "still on exactly two clusters");
    assert!(Api::<Deployment>::namespaced(client(a).await, &ns).get_opt("web").await.unwrap().is_none());

    // 9. Deletion at the origin cleans everywhere; B's own pipeline stays.
    let api_a: Api<R1Pipeline> = Api::namespaced(client(a).await, &ns);
    for name in ["web", "api", "job1"] {
        api_a.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in ["web", "api", "job1"] {
        wait_for(30, &format!("{name} deleted on A"), || async {
            api_a.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
        for k in [b, c] {
            if !(k == b && name == "api") {
                wait_gone(k, &ns, name, 30).await;
            }
        }
    }
    assert!(!gone_on(b, &ns, "api").await, "B's own pipeline of the same name is still there");
    wait_for(60, "web's Deployments collected on B and C", || async {
        for k in [b, c] {
            if Api::<Deployment>::namespaced(client(k).await, &ns).get_opt("web").await.ok()?.is_some() {
                return None;
            }
        }
        Some(())
    })
    .await;
    // The target that was never restarted counts every copy it applied.
    let steady = if alive == c { 2 } else { 1 };
    let applied = counter(&fed, steady, "ratio1_deeploy_copies_applied_total", "").await;
    assert!(applied >= 3.0, "{} counts the copies it applied: {applied}", fed.nodes[steady].name);
    for k in [a, b, c] {
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client(k).await)
            .delete(&ns, &DeleteParams::default())
            .await;
    }
}

/// First time each (cluster, Deployment name) was seen on each cluster.
type Seen = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(usize, String), Instant>>>;

/// Watches every Deployment of `cluster`, recording when each first shows.
fn watch_deployments(cluster: usize, seen: Seen) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    use kube::runtime::watcher;
    tokio::spawn(async move {
        let api: Api<Deployment> = Api::all(client(cluster).await);
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
        while let Some(ev) = events.next().await {
            if let Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) = ev {
                seen.lock().unwrap().entry((cluster, d.name_any())).or_insert_with(Instant::now);
            }
        }
    })
}

async fn seen_on(seen: &Seen, clusters: &[usize], name: &str, secs: u64) -> (usize, Instant) {
    wait_for(secs, &format!("Deployment {name} on one of {clusters:?}"), || async {
        let s = seen.lock().unwrap();
        clusters.iter().find_map(|c| s.get(&(*c, name.to_string())).map(|t| (*c, *t)))
    })
    .await
}

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// `e2e/bench-deeploy.sh` runs this on a control plane of its own: the
/// time from applying an R1Pipeline on the origin A to its Deployment on a
/// target (B or C), one at a time and 100 at once, against a plain
/// Deployment created directly on B in the same run; and failover with
/// the production heartbeat (5 s; failover after 3 intervals).
#[tokio::test]
#[ignore = "benchmark: run by e2e/bench-deeploy.sh"]
async fn bench_deeploy() {
    let clusters: Vec<usize> = std::env::var("R1_BENCH_CLUSTERS")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .map(|c| c.parse().unwrap())
        .collect();
    let singles: usize = std::env::var("R1_BENCH_SINGLES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let burst: usize = std::env::var("R1_BENCH_BURST").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let failovers: usize = std::env::var("R1_BENCH_FAILOVERS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let (mut fed, _etcds) = cstore::federation_each(&clusters, |_, opts| {
        cstore::set_flag(opts, "--heartbeat-interval-secs", "5");
        cstore::set_flag(opts, "--heartbeat-timeout-secs", "15");
        opts.extra_args.push("--log-format=json".into());
    })
    .await;
    let (a, b, c) = (clusters[0], clusters[1], clusters[2]);
    label_node(a, &fed.nodes[0].name, json!({"region": "us"}), None).await;
    label_node(b, &fed.nodes[1].name, json!({"region": "eu"}), None).await;
    label_node(c, &fed.nodes[2].name, json!({"region": "eu"}), None).await;
    for i in 0..3 {
        fed.wait_peers(i, 2, 90).await;
    }
    let ns = format!("bench-deeploy-{}", std::process::id());
    for k in [a, b, c] {
        ensure_namespace(&client(k).await, &ns).await;
    }
    let seen: Seen = Default::default();
    let watches: Vec<_> = [b, c].iter().map(|k| watch_deployments(*k, seen.clone())).collect();
    let one = json!({"clusters": 1, "clusterSelector": {"matchLabels": {"region": "eu"}}});
    let (ca, cb) = (client(a).await, client(b).await);
    let deployments_b: Api<Deployment> = Api::namespaced(cb.clone(), &ns);
    let plain = |name: &str| -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "main", "image": "ratio1.local/sample:1"}]}}}
        }))
        .unwrap()
    };
    // Warm-up: the first placement (profiles read, caches filled).
    apply(a, &ns, &pipeline("warm", &ns, 1, one.clone())).await;
    seen_on(&seen, &[b, c], "warm", 60).await;

    // 1. One at a time, taking turns with the plain baseline.
    let (mut dp, mut base) = (vec![], vec![]);
    for i in 0..singles {
        let t = Instant::now();
        deployments_b.create(&Default::default(), &plain(&format!("plain-{i}"))).await.unwrap();
        base.push(seen_on(&seen, &[b], &format!("plain-{i}"), 30).await.1 - t);
        let name = format!("one-{i}");
        let t = Instant::now();
        apply(a, &ns, &pipeline(&name, &ns, 1, one.clone())).await;
        dp.push(seen_on(&seen, &[b, c], &name, 30).await.1 - t);
    }
    let mut rows = vec![];
    let mut row = |what: String, dp: &mut Vec<Duration>, base: &mut Vec<Duration>| {
        let (d50, d99, b50, b99) = (quantile(dp, 0.5), quantile(dp, 0.99), quantile(base, 0.5), quantile(base, 0.99));
        rows.push(format!(
            "| {what} | {} | {} | {} | {} | {:.1} | {:.1} |",
            ms(d50),
            ms(d99),
            ms(b50),
            ms(b99),
            d50.as_secs_f64() / b50.as_secs_f64(),
            d99.as_secs_f64() / b99.as_secs_f64()
        ));
    };
    row(format!("1 pipeline ({singles} runs, one at a time)"), &mut dp, &mut base);

    // 2. A burst: every object applied at once (plain on B first, then the
    // pipelines on A), each timed from its own request.
    let t_plain: Vec<(String, Instant)> = futures::future::join_all((0..burst).map(|i| {
        let api = deployments_b.clone();
        let d = plain(&format!("bplain-{i}"));
        async move {
            let t = Instant::now();
            api.create(&Default::default(), &d).await.unwrap();
            (d.name_any(), t)
        }
    }))
    .await;
    let mut base = vec![];
    for (name, t) in &t_plain {
        base.push(seen_on(&seen, &[b], name, 60).await.1 - *t);
    }
    let pipes: Api<R1Pipeline> = Api::namespaced(ca.clone(), &ns);
    let t_dp: Vec<(String, Instant)> = futures::future::join_all((0..burst).map(|i| {
        let api = pipes.clone();
        let name = format!("burst-{i}");
        let obj = pipeline(&name, &ns, 1, one.clone());
        async move {
            let t = Instant::now();
            api.patch(&name, &PatchParams::apply("e2e-deeploy").force(), &Patch::Apply(&obj)).await.unwrap();
            (name, t)
        }
    }))
    .await;
    let mut dp = vec![];
    let mut spread = std::collections::BTreeMap::new();
    for (name, t) in &t_dp {
        let (k, at) = seen_on(&seen, &[b, c], name, 120).await;
        *spread.entry(k).or_insert(0) += 1;
        dp.push(at - *t);
    }
    row(format!("{burst} pipelines applied at once"), &mut dp, &mut base);

    // 3. Failover: kill the target's operator; time until the Deployment
    // exists on the other cluster. Baseline: the configured detection
    // window (3 heartbeats of 5 s).
    let window = Duration::from_secs(15);
    let mut fo = vec![];
    for r in 0..failovers {
        let name = format!("fo-{r}");
        apply(a, &ns, &pipeline(&name, &ns, 1, one.clone())).await;
        let (target, _) = seen_on(&seen, &[b, c], &name, 60).await;
        let (dead, other) = if target == b { (1, c) } else { (2, b) };
        let t = Instant::now();
        fed.nodes[dead].op.as_mut().unwrap().kill().await;
        let at = seen_on(&seen, &[other], &name, 60).await.1;
        fo.push(at - t);
        fed.nodes[dead].op = Some(Operator::start(fed.nodes[dead].opts.clone()).await);
        fed.wait_peers(0, 2, 60).await;
        wait_for(60, "the returned cluster fresh at the origin", || async {
            let v = fed.network_view(0).await;
            let peer = &fed.nodes[dead].peer_id;
            v["peers"][peer]["lastHeartbeat"].as_i64().filter(|t| unix_now() * 1000 - t < 5_000).map(|_| ())
        })
        .await;
    }
    let mut fo_base = vec![window; fo.len()];
    row(format!("failover ({failovers} runs; baseline: detection window 15 s)"), &mut fo, &mut fo_base);
    for w in watches {
        w.abort();
    }
    println!("\n## bench-deeploy: 3 clusters on loopback, each its own kube-apiserver and CSTORE etcd");
    println!("Deeploy: R1Pipeline applied on A until its Deployment exists on B or C (a watch there sees it).");
    println!("Baseline: the same Deployment created directly on B until B's watch sees it.\n");
    println!(
        "| measure | Deeploy p50 ms | Deeploy p99 ms | baseline p50 ms | baseline p99 ms | ratio p50 | ratio p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!("\nburst spread over targets: {spread:?}");
    for k in [a, b, c] {
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client(k).await)
            .delete(&ns, &DeleteParams::default())
            .await;
    }
}
