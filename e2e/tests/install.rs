//! The install path on cluster 3, in order: the operator refuses to start
//! without CRDs; manifests/ and the chart match the code; install.yaml
//! passes a server-side dry run, then installs for real; and the operator,
//! running with nothing but the ServiceAccount token and RBAC from
//! install.yaml, reconciles (least-privilege RBAC is enough).

use crate::harness::logs::api_refusals;
use crate::harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams};
use ratio1::crd::{R1Node, R1Pipeline};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helm() -> String {
    if let Ok(h) = std::env::var("R1_HELM") {
        return h;
    }
    let out = Command::new("bash").arg(root().join("e2e/tools/helm.sh")).output().expect("bash runs");
    assert!(out.status.success(), "no helm: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn kubectl(cluster: usize, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig_path(cluster))
        .args(args)
        .output()
        .expect("kubectl runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn manifests_and_chart_match_the_code() {
    let out = Command::new(helm())
        .args(["template", "ratio1-operator"])
        .arg(root().join("charts/ratio1-operator"))
        .args(["--namespace", "ratio1-system", "--include-crds"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let install = std::fs::read_to_string(root().join("manifests/install.yaml")).unwrap();
    assert!(
        install.ends_with(String::from_utf8(out.stdout).unwrap().as_str()),
        "manifests/install.yaml is stale: run `bash e2e/gen-manifests.sh`"
    );
    for (file, crd) in ratio1::crd::all() {
        let chart = std::fs::read_to_string(root().join("charts/ratio1-operator/crds").join(file)).unwrap_or_default();
        assert!(
            chart == ratio1::crd::to_yaml(&crd),
            "charts/ratio1-operator/crds/{file} is stale: run `bash e2e/gen-manifests.sh`"
        );
    }
    let lint = Command::new(helm()).arg("lint").arg(root().join("charts/ratio1-operator")).output().unwrap();
    assert!(lint.status.success(), "helm lint: {}", String::from_utf8_lossy(&lint.stdout));
    // The values schema rejects a typo instead of ignoring it.
    let bad = Command::new(helm())
        .args(["template", "x"])
        .arg(root().join("charts/ratio1-operator"))
        .args(["--set", "replicaCont=3"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    // Lease timing that could let two replicas lead fails to render (the
    // operator would refuse it at start, in a crash loop).
    let bad = Command::new(helm())
        .args(["template", "x"])
        .arg(root().join("charts/ratio1-operator"))
        .args(["--set", "leaderElection.renewDeadlineSeconds=15"])
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("renewDeadlineSeconds"));
    chart_cstore_etcd();
}

/// The chart rendered with `--set` values: its objects, or helm's error.
fn render(sets: &[&str]) -> Result<Vec<serde_json::Value>, String> {
    let mut cmd = Command::new(helm());
    cmd.args(["template", "r"]).arg(root().join("charts/ratio1-operator")).args(["--namespace", "ns"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    use serde::Deserialize;
    let text = String::from_utf8(out.stdout).unwrap();
    Ok(serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect())
}

fn object<'a>(objs: &'a [serde_json::Value], kind: &str) -> Option<&'a serde_json::Value> {
    objs.iter().find(|o| o["kind"] == kind)
}

fn operator_args(objs: &[serde_json::Value]) -> Vec<String> {
    let dep = object(objs, "Deployment").expect("the operator's Deployment");
    serde_json::from_value(dep["spec"]["template"]["spec"]["containers"][0]["args"].clone()).unwrap()
}

/// CSTORE's etcd in the chart: embedded by default (the operator pointed at
/// the chart's own etcd Service), or external with TLS client files from a
/// Secret; contradictory values fail to render.
fn chart_cstore_etcd() {
    // Embedded: a StatefulSet and its client Service, the one the operator names.
    let objs = render(&[]).unwrap();
    let sts = object(&objs, "StatefulSet").expect("etcd's StatefulSet");
    let svc = objs
        .iter()
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == sts["metadata"]["name"])
        .expect("etcd's client Service, named as the StatefulSet");
    assert_eq!(svc["spec"]["selector"], sts["spec"]["selector"]["matchLabels"]);
    let want = format!("--cstore-endpoints=http://{}.ns.svc:2379", svc["metadata"]["name"].as_str().unwrap());
    let args = operator_args(&objs);
    assert_eq!(args.iter().filter(|a| a.starts_with("--cstore-endpoints")).collect::<Vec<_>>(), [&want]);
    assert!(!args.iter().any(|a| a.starts_with("--cstore-ca-file")), "{args:?}");
    // etcd's pods are not the operator's: the operator's selector does not
    // match them (its Deployment, metrics Service and p2p Service).
    let dep = object(&objs, "Deployment").unwrap();
    let etcd_labels = &sts["spec"]["template"]["metadata"]["labels"];
    let selects_etcd =
        dep["spec"]["selector"]["matchLabels"].as_object().unwrap().iter().all(|(k, v)| &etcd_labels[k] == v);
    assert!(!selects_etcd, "the operator's selector matches etcd's pods: {etcd_labels}");
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(sts["spec"]["volumeClaimTemplates"].is_array());
    // No new RBAC for it: the same roles as with etcd off.
    let rbac = |objs: &[serde_json::Value]| -> Vec<serde_json::Value> {
        objs.iter().filter(|o| o["kind"].as_str().is_some_and(|k| k.ends_with("Role"))).cloned().collect()
    };
    assert_eq!(rbac(&objs), rbac(&render(&["etcd.enabled=false"]).unwrap()));
    // emptyDir instead of a claim.
    let objs = render(&["etcd.persistence.enabled=false"]).unwrap();
    let sts = object(&objs, "StatefulSet").unwrap();
    assert!(sts["spec"]["volumeClaimTemplates"].is_null());
    assert!(sts["spec"]["template"]["spec"]["volumes"][0]["emptyDir"].is_object());

    // External etcd with TLS: no StatefulSet, the endpoints and the three
    // files of the mounted Secret.
    let external = [
        "etcd.enabled=false",
        "etcd.endpoints={https://etcd-a:2379,https://etcd-b:2379}",
        "etcd.tls.secretName=cstore-client",
    ];
    let objs = render(&external).unwrap();
    assert!(object(&objs, "StatefulSet").is_none());
    let args = operator_args(&objs);
    assert!(args.contains(&"--cstore-endpoints=https://etcd-a:2379,https://etcd-b:2379".to_string()), "{args:?}");
    let dep = object(&objs, "Deployment").unwrap();
    let spec = &dep["spec"]["template"]["spec"];
    let vol = spec["volumes"].as_array().unwrap().iter().find(|v| v["secret"]["secretName"] == "cstore-client");
    let vol = vol.expect("the TLS Secret mounted");
    let mount = spec["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == vol["name"])
        .expect("the TLS volume mounted in the operator");
    let dir = mount["mountPath"].as_str().unwrap();
    for (flag, file) in [("ca", "ca.crt"), ("cert", "tls.crt"), ("key", "tls.key")] {
        assert!(args.contains(&format!("--cstore-{flag}-file={dir}/{file}")), "--cstore-{flag}-file: {args:?}");
        assert!(vol["secret"]["items"].as_array().unwrap().iter().any(|i| i["key"] == file), "{vol}");
    }
    let mut lint = Command::new(helm());
    lint.arg("lint").arg(root().join("charts/ratio1-operator"));
    for s in external {
        lint.args(["--set", s]);
    }
    let lint = lint.output().unwrap();
    assert!(lint.status.success(), "helm lint (external etcd): {}", String::from_utf8_lossy(&lint.stdout));
    // Off: no etcd, no flag.
    let objs = render(&["etcd.enabled=false"]).unwrap();
    assert!(object(&objs, "StatefulSet").is_none());
    assert!(!operator_args(&objs).iter().any(|a| a.starts_with("--cstore")));

    // Contradictions fail with a sentence naming the value.
    for (sets, says) in [
        (&["etcd.endpoints={https://etcd-a:2379}"][..], "etcd.enabled=false"),
        (&["etcd.tls.secretName=s"][..], "etcd.tls.secretName"),
        (&["etcd.enabled=false", "etcd.tls.secretName=s"][..], "etcd.endpoints is empty"),
        (&["etcd.enabled=false", "etcd.endpoints={etcd-a:2379}"][..], "etcd.endpoints"),
    ] {
        let err = render(sets).expect_err(&format!("{sets:?} renders"));
        assert!(err.contains(says), "{sets:?}: {err}");
    }
}

/// A kubeconfig for cluster `cluster` that authenticates with `token`.
fn kubeconfig_with_token(cluster: usize, token: &str) -> PathBuf {
    let text = std::fs::read_to_string(kubeconfig_path(cluster)).unwrap();
    let mut kc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    kc["users"][0]["user"] = serde_yaml::to_value(json!({ "token": token })).unwrap();
    let path = std::env::temp_dir().join(format!("ratio1-sa-kubeconfig-{}", std::process::id()));
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn install_path_with_least_privilege_rbac() {
    let cluster = 3;
    // Cluster 3 belongs to this test: start from no CRDs (an earlier run
    // may have installed them).
    let c = client(cluster).await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(c.clone());
    for (_, crd) in ratio1::crd::all() {
        let name = kube::ResourceExt::name_any(&crd);
        let _ = crds.delete(&name, &Default::default()).await;
        wait_for(60, &format!("CRD {name} deleted"), || async {
            crds.get_opt(&name).await.ok()?.is_none().then_some(())
        })
        .await;
    }
    // 1. No CRDs yet: the operator exits with a sentence that says what to do.
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_ratio1"))
        .args(["operator", "--metrics-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0", "--leader-election", "false"])
        .env("KUBECONFIG", kubeconfig_path(cluster))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), run).await.expect("the operator exits").unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: CRD r1nodes.ratio1.ai is not installed: run `kubectl apply --server-side -f crds/`"),
        "{err}"
    );

    // 2. Server-side dry run of the whole install, then the real thing.
    let install = root().join("manifests/install.yaml");
    let install = install.to_str().unwrap();
    ensure_namespace(&c, OPERATOR_NS).await;
    let (ok, out) = kubectl(cluster, &["apply", "--server-side", "--dry-run=server", "-f", install]);
    assert!(ok, "dry run: {out}");
    let (ok, out) = kubectl(cluster, &["apply", "--server-side", "-f", install]);
    assert!(ok, "install: {out}");
    // Applying again is a no-op: nothing drifts.
    let (ok, out) = kubectl(cluster, &["apply", "--server-side", "-f", install]);
    assert!(ok && !out.contains("configured"), "second apply: {out}");

    // 3. The operator with only the ServiceAccount's rights.
    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), OPERATOR_NS);
    let secrets: Api<Secret> = Api::namespaced(c.clone(), OPERATOR_NS);
    let token = wait_for(30, "ServiceAccount token Secret", || async {
        let sa = sas.get("ratio1-operator").await.ok()?;
        let name = sa.secrets?.first()?.name.clone()?;
        let s = secrets.get(&name).await.ok()?;
        String::from_utf8(s.data?.get("token")?.0.clone()).ok()
    })
    .await;
    let kc = kubeconfig_with_token(cluster, &token);
    let port = free_port();
    let log = std::fs::File::create(log_dir().join("c3-serviceaccount.log")).unwrap();
    let mut op = tokio::process::Command::new(env!("CARGO_BIN_EXE_ratio1"))
        .args(["operator", "--namespace", OPERATOR_NS, "--identity", "sa-operator"])
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{port}"))
        .args(["--api-addr", "127.0.0.1:0", "--log-format", "json"])
        // Exercises the Pod-label permission (the Pod does not exist: a 404
        // is fine, a 403 fails the test below).
        .env("POD_NAME", "sa-operator-pod")
        .env("KUBECONFIG", &kc)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let ssa = PatchParams::apply("e2e-user");
    secrets
        .patch(
            "r1node-license",
            &ssa,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "r1node-license"},
                "stringData": {"license": "token"}})),
        )
        .await
        .unwrap();
    let nodes: Api<R1Node> = Api::all(c.clone());
    let mut node = yaml_docs("manifests/samples/r1node.yaml").remove(0);
    node["metadata"]["name"] = json!("sa-node");
    nodes.patch("sa-node", &ssa, &Patch::Apply(node)).await.unwrap();
    wait_for(40, "R1Node ready under the ServiceAccount", || async {
        let n = nodes.get("sa-node").await.ok()?;
        ratio1::conditions::is_true(&n.status?.conditions, "Ready").then_some(())
    })
    .await;

    let ns = TestNs::new(&c, "rbac").await;
    let pipes: Api<R1Pipeline> = Api::namespaced(c.clone(), &ns.name);
    let mut p = yaml_docs("manifests/samples/r1pipeline-service.yaml").remove(0);
    p["metadata"]["namespace"] = json!(ns.name);
    p["spec"]["models"] = json!([]);
    pipes.patch("sentiment-api", &ssa, &Patch::Apply(p)).await.unwrap();
    let deps: Api<Deployment> = Api::namespaced(c.clone(), &ns.name);
    wait_for(40, "Deployment made under the ServiceAccount", || async {
        deps.get_opt("sentiment-api").await.ok().flatten()
    })
    .await;
    let p = wait_for(30, "pipeline status under the ServiceAccount", || async {
        let p = pipes.get("sentiment-api").await.ok()?;
        (p.status.as_ref()?.observed_generation == p.metadata.generation).then_some(p)
    })
    .await;
    assert!(!ratio1::conditions::is_true(&p.status.unwrap().conditions, "Stalled"));
    let logs = std::fs::read_to_string(log_dir().join("c3-serviceaccount.log")).unwrap();
    // Read as structured logs: any line reporting an HTTP 403 from the API
    // server (a permission the ServiceAccount lacks) fails, and a
    // timestamp or a name that merely contains "403" does not.
    let refused = api_refusals(&logs);
    assert!(refused.json_lines > 0, "no JSON log line from the operator:\n{logs}");
    assert!(refused.lines.is_empty(), "the operator hit a permission it lacks:\n{}", refused.lines.join("\n"));
    op.kill().await.unwrap();
    ns.cleanup().await;
    let _ = std::fs::remove_file(Path::new(&kc));
}
