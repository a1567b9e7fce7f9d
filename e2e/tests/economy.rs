//! The license registry and the ledger between three operators (clusters
//! 4, 5, 6; two MND oracles and one ND node), each with its own CSTORE etcd,
//! over real libp2p, on 20 s epochs: the issuer links the ND license by the
//! CLI (a second link of either side is refused), the node is down half an
//! epoch and its claim pays that epoch about half, by the oracles' final
//! records; the claim settles with both oracles; a second claim of the same
//! epochs and a lying claim are refused by every oracle; an unlink applies,
//! a relink within the window is refused; a banned license claims nothing.

use crate::harness::cstore::{self, value};
use crate::harness::federation::*;
use crate::harness::*;
use kube::Api;
use ratio1::crd::R1Node;
use ratio1::economy::ledger::Claim;

const EPOCH_MS: u64 = 20_000;

fn now() -> u64 {
    ratio1::p2p::now_ms() as u64
}

/// `ratio1 ARGS --endpoint <node's API>`: (exit ok, stdout, stderr).
async fn ratio1(port: u16, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ratio1"))
        .args(args)
        .args(["--endpoint", &format!("http://127.0.0.1:{port}")])
        .output()
        .await
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

async fn license(port: u16, name: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(port, &format!("/v1/economy/license?name={name}")).await?).ok()
}

/// Clusters 4 and 5 (MND oracles) and 6, on 20 s epochs with `flag`,
/// each connected to the others, with the issuer's key in `key_file`
/// (for the CLI), once the oracles made a first final record.
struct Economy {
    fed: Federation,
    _etcds: Vec<crate::harness::cstore::Etcd>,
    ids: Vec<String>,
    ports: Vec<u16>,
    /// The issuer's key file and key id.
    key: String,
    iss: String,
}

async fn economy_network(flag: &str, key_file: &str) -> Economy {
    let (fed, _etcds) = cstore::federation_oracles(&[4, 5, 6], 2, |_, o| {
        o.extra_args.extend(
            ["--epoch-genesis-ms=0", "--epoch-length-secs=20", "--oracle-phase-secs=2", flag].map(String::from),
        );
    })
    .await;
    for i in 0..3 {
        fed.wait_peers(i, 2, 60).await;
    }
    let ids: Vec<String> = fed.nodes.iter().map(|n| n.peer_id.clone()).collect();
    let ports: Vec<u16> = fed.nodes.iter().map(|n| n.op().api_port).collect();
    let key = log_dir().join(key_file);
    std::fs::write(&key, ratio1::dauth::license::encode_secret(&fed.issuer)).unwrap();
    let key = key.to_str().unwrap().to_string();
    let iss = ratio1::dauth::license::key_id(&fed.issuer.public());
    // Links in an epoch the oracles see whole: after their first final one.
    wait_for(90, "a first final epoch", || async {
        let s: serde_json::Value = serde_json::from_str(&http_get(ports[0], "/v1/oracle").await?).ok()?;
        s["lastFinal"].as_u64()
    })
    .await;
    Economy { fed, _etcds, ids, ports, key, iss }
}

#[tokio::test]
async fn licenses_link_by_the_rules_and_claims_pay_by_the_final_records_once() {
    let _turn = CLUSTERS_4_TO_6.lock().await;
    let Economy { mut fed, _etcds, ids, ports, key, iss } =
        economy_network("--relink-secs=600", "economy-issuer.key").await;
    let name = format!("{iss}/nd-c6");

    // 1. The issuer links the ND license to node 2, through node 0's API;
    // a second link of the license, or of the node, is refused with why.
    let link = |id: &str, peer: &str| {
        ["license", "link", "--issuer-key", &key, "--id", id, "--peer-id", peer, "--class", "ND"]
            .map(String::from)
            .to_vec()
    };
    let run = |port: u16, args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ratio1(port, &args).await
    };
    let (ok, out, err) = run(ports[0], link("nd-c6", &ids[2])).await;
    assert!(ok && out.contains("Link applied"), "{out}{err}");
    let linked_at = now();
    let (ok, _, err) = run(ports[0], link("nd-c6", &ids[1])).await;
    assert!(!ok && err.contains("unlink it first"), "{err}");
    let (ok, _, err) = run(ports[1], link("nd-other", &ids[2])).await;
    assert!(!ok && err.contains(&format!("already holds license {name}")), "{err}");
    // The registry reached node 2 (its own view decides its claims).
    wait_for(20, "the link on node 2", || async {
        license(ports[2], &name).await?["license"]["links"].as_array()?.first().map(|_| ())
    })
    .await;

    // 2. Node 2 is down for the second half of the next epoch, then
    // comes back.
    let first = linked_at / EPOCH_MS;
    let half = first + 1;
    tokio::time::sleep(std::time::Duration::from_millis((half * EPOCH_MS + EPOCH_MS / 2).saturating_sub(now()))).await;
    fed.nodes[2].op.as_mut().unwrap().kill().await;
    tokio::time::sleep(std::time::Duration::from_millis(((half + 1) * EPOCH_MS).saturating_sub(now()))).await;
    fed.nodes[2].op = Some(Operator::start(fed.nodes[2].opts.clone()).await);
    let port2 = fed.nodes[2].op().api_port;

    // 3. Once the half-down epoch can be claimed (two epochs on):
    let deadline = (half + 2) * EPOCH_MS + 1_000;
    tokio::time::sleep(std::time::Duration::from_millis(deadline.saturating_sub(now()))).await;

    // 4. The node claims through its own API: the claim covers the epochs
    // since the link, settles with both oracles, and pays the half-down
    // epoch about half of a whole one.
    let claimed = wait_for(120, "a settled claim", || async {
        let (ok, out, err) = ratio1(port2, &["rewards", "claim", "nd-c6", "--wait-secs", "40"]).await;
        if !ok {
            eprintln!("claim: {err}");
        }
        (ok && out.contains("settled")).then_some(out)
    })
    .await;
    assert!(claimed.contains("accepted by 2 of 2 oracles"), "{claimed}");
    // Settled on node 0 too, once the accepts reach it.
    let lic = wait_for(20, "the claim settled on node 0", || async {
        let l = license(ports[0], &name).await?;
        l["claims"].as_array()?.iter().any(|c| c["settled"] == true).then_some(l)
    })
    .await;
    let settled: Vec<Claim> = lic["claims"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["settled"] == true)
        .map(|c| serde_json::from_value(c["claim"].clone()).unwrap())
        .collect();
    assert_eq!(settled.len(), 1, "{lic}");
    let claim = &settled[0];
    assert_eq!(claim.from, first, "{claim:?}");
    assert!(claim.to >= half, "{claim:?}");
    let c = ratio1::economy::Constants::default();
    let per = c.nd_license_cap() / c.nd_epochs as u128;
    for p in &claim.parts {
        // The linear release rounds each epoch's part by at most a unit.
        assert!(p.amount.abs_diff(per * p.availability as u128 / 255) <= 1, "{p:?}");
        assert_ne!(p.record, "faulty", "the oracles finalised every epoch: {p:?}");
    }
    let part = |e: u64| claim.parts.iter().find(|p| p.epoch == e).unwrap();
    let (whole, down) = (part(first), part(half));
    assert!(whole.availability >= 200, "{whole:?}");
    assert!((90..=150).contains(&down.availability), "down half the epoch scores about 128: {down:?}");
    let ratio = down.amount as f64 / whole.amount as f64;
    assert!((0.35..=0.65).contains(&ratio), "about half the reward: {ratio} ({down:?} vs {whole:?})");
    // Every part comes from a final record the oracles signed.
    let rec = value(ports[0], &format!("oracle/{}/epoch/{half}/final", ids[0])).await.unwrap();
    let rec: ratio1::oracle::agree::EpochRecord = serde_json::from_value(rec).unwrap();
    assert_eq!(rec.agreed.id(), down.record);
    assert_eq!(rec.agreed.table.get(&ids[2]).copied().unwrap_or(0), down.availability);

    // 5. A second claim of the same epochs and a lying one, written
    // straight into CSTORE (the node's API makes only the next claim):
    // refused by every oracle.
    let mut again = claim.clone();
    again.made_ms = now();
    let mut lie = claim.clone();
    lie.from = claim.to + 1;
    lie.to = claim.to + 1;
    lie.made_ms = now();
    lie.parts = vec![ratio1::economy::ledger::Part {
        epoch: lie.from,
        availability: 255,
        record: "faulty".into(),
        amount: per,
    }];
    lie.amount = per;
    for bad in [&again, &lie] {
        let key = ratio1::economy::ledger::claim_key(&ids[2], &name, bad.from);
        let body = serde_json::to_string(bad).unwrap();
        let (status, resp) = http_send(port2, "PUT", &format!("/v1/cstore/set?key={key}"), &body).await.unwrap();
        assert_eq!(status, 200, "{resp}");
    }
    let refusals = wait_for(60, "both oracles refuse both", || async {
        let l = license(ports[0], &name).await?;
        let claims = l["claims"].as_array()?.clone();
        let refused = |from: u64| {
            claims
                .iter()
                .find(|c| c["claim"]["from"] == from && c["refused"].as_object().is_some_and(|r| r.len() == 2))
                .map(|c| c["refused"].clone())
        };
        Some((refused(again.from)?, refused(lie.from)?))
    })
    .await;
    assert!(refusals.0.to_string().contains("double claim"), "{}", refusals.0);
    let lie_why = refusals.1.to_string();
    assert!(lie_why.contains("cannot be claimed") || lie_why.contains("availability"), "{lie_why}");
    let lic = license(ports[0], &name).await.unwrap();
    let settled = lic["claims"].as_array().unwrap().iter().filter(|c| c["settled"] == true).count();
    assert_eq!(settled, 1, "nothing but the first claim settled: {lic}");
    let refused = counter(&fed, 0, "ratio1_ledger_verdicts_total", "refused").await;
    assert!(refused >= 2.0, "{refused}");

    // 6. The economy: minted is the settled claim; the node's R1Node shows
    // its license and what it may claim next.
    let minted = ratio1::economy::show_r1(claim.amount);
    let out = wait_for(20, "the claim minted on node 1", || async {
        let (ok, out, _) = ratio1(ports[1], &["economy", "status"]).await;
        (ok && out.contains(&minted)).then_some(out)
    })
    .await;
    assert!(out.contains("1 ND"), "{out}");
    let api: Api<R1Node> = Api::all(client(fed.nodes[2].cluster).await);
    let node = fed.nodes[2].name.clone();
    let st = wait_for(60, "R1Node unclaimed rewards", || {
        let (api, node) = (api.clone(), node.clone());
        async move {
            let st = api.get(&node).await.ok()?.status?;
            st.unclaimed_rewards.is_some().then_some(st)
        }
    })
    .await;
    assert_eq!(st.registry_license.as_deref(), Some(name.as_str()));

    // 7. The unlink applies; the unlinked node keeps its right to the
    // link's epochs (up to the last claimable at the unlink), the next
    // node's start at its own link; a relink within the window is
    // refused; a banned license claims nothing.
    let unlink = ["license", "unlink", "--issuer-key", &key, "--id", "nd-c6"];
    let (ok, out, err) = ratio1(ports[0], &unlink).await;
    assert!(ok && out.contains("Unlink applied"), "{out}{err}");
    // Replicated to the node itself (the CLI waited on node 0's view).
    wait_for(20, "the unlink on node 2", || async {
        license(port2, &name).await?["license"]["links"][0]["toMs"].as_u64()
    })
    .await;
    let (ok, _, err) = run(ports[0], link("nd-c6", &ids[2])).await;
    assert!(!ok && err.contains("no new link before"), "{err}");
    let (ok, _, err) = ratio1(ports[0], &["license", "ban", "--issuer-key", &key, "--id", "nd-c6"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = ratio1(port2, &["rewards", "claim", "nd-c6", "--wait-secs", "5"]).await;
    assert!(!ok && err.contains("banned"), "{err}");
}

/// The whole economy status of a node (`GET /v1/economy`).
async fn economy(port: u16) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(port, "/v1/economy").await?).ok()
}

fn units(v: &serde_json::Value) -> u128 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not an amount: {v}"))
}

/// A Service pipeline of one replica of the sample server, on `node`.
fn paid_pipeline(ns: &str, name: &str, node: &str, price: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Pipeline",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 1,
            "placement": {"nodes": [node]},
            "budget": {"pricePerEpoch": price, "epochs": 3},
            "template": {"spec": {"containers": [{
                "name": "server", "image": "ratio1.local/model-server:0.1", "imagePullPolicy": "Never",
                "ports": [{"name": "http", "containerPort": 8080}],
                "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}}]}}
        }
    })
}

/// PoAI between three operators (clusters 4 and 5: the oracles; 5 also
/// the origin, paying from its ND license; 6: the target, with a worker
/// node where the pipeline's pod really runs), on 20 s epochs and jobs of
/// 3 epochs at least: a budget the origin's license cannot hold stalls
/// the pipeline and escrows nothing; one it can is escrowed, the oracles
/// agree each epoch that node 6 ran it, 85% of each epoch's price goes to
/// node 6's license and 15% is burned, exactly; once over, the rest is
/// refunded and the books balance on every node.
#[tokio::test]
async fn poai_pays_the_node_that_ran_a_job_from_its_origins_escrow() {
    let _turn = CLUSTERS_4_TO_6.lock().await;
    // Pipelines of an earlier run on the same control plane would be
    // escrowed again by the new origin: gone first.
    let all: Api<ratio1::crd::R1Pipeline> = Api::all(client(5).await);
    for p in all.list(&Default::default()).await.unwrap() {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        if ns.starts_with("poai-") {
            let _ = Api::<ratio1::crd::R1Pipeline>::namespaced(client(5).await, &ns)
                .delete(&p.metadata.name.clone().unwrap_or_default(), &Default::default())
                .await;
        }
    }
    let constants = log_dir().join("poai-constants.json");
    std::fs::write(&constants, r#"{"poai_min_epochs": 3}"#).unwrap();
    let constants = format!("--economy-constants={}", constants.display());
    let Economy { fed, _etcds, ids, ports, key, iss } = economy_network(&constants, "poai-issuer.key").await;
    let (payer, runner) = (format!("{iss}/nd-c5"), format!("{iss}/nd-c6"));
    for (id, peer) in [("nd-c5", &ids[1]), ("nd-c6", &ids[2])] {
        let args = ["license", "link", "--issuer-key", &key, "--id", id, "--peer-id", peer, "--class", "ND"];
        let (ok, out, err) = ratio1(ports[0], &args).await;
        assert!(ok && out.contains("Link applied"), "{out}{err}");
    }
    let linked = now() / EPOCH_MS;

    // 1. The origin's license earns, and claims, its first rewards.
    tokio::time::sleep(std::time::Duration::from_millis(((linked + 2) * EPOCH_MS + 1_000).saturating_sub(now()))).await;
    wait_for(120, "the origin's settled claim", || async {
        let (ok, out, err) = ratio1(ports[1], &["rewards", "claim", "nd-c5", "--wait-secs", "40"]).await;
        if !ok {
            eprintln!("claim: {err}");
        }
        (ok && out.contains("settled")).then_some(())
    })
    .await;
    let minted = wait_for(20, "the claim settled on node 1", || async {
        let e = economy(ports[1]).await?;
        let b = e["poai"]["balances"][&payer].as_str()?.parse::<u128>().ok()?;
        (b > 0).then_some(b)
    })
    .await;

    // 2. A budget the license cannot hold: stalled, nothing escrowed.
    // (A namespace of this run: a pipeline of an earlier run on the same
    // control plane would show an earlier escrow.)
    let ns = format!("poai-{}", now() % 1_000_000_000);
    let c5 = client(5).await;
    ensure_namespace(&c5, &ns).await;
    let pipes: Api<ratio1::crd::R1Pipeline> = Api::namespaced(c5.clone(), &ns);
    let ssa = kube::api::PatchParams::apply("e2e").force();
    let huge = paid_pipeline(&ns, "too-dear", "node-c6", "1000000");
    pipes.patch("too-dear", &ssa, &kube::api::Patch::Apply(&huge)).await.unwrap();
    let stalled = wait_for(60, "too-dear stalled for its budget", || async {
        let p = pipes.get("too-dear").await.ok()?;
        let c = p.status?.conditions.into_iter().find(|c| c.type_ == "Stalled" && c.status == "True")?;
        (c.reason == "InsufficientFunds").then_some(c.message)
    })
    .await;
    assert!(stalled.contains(&payer) && stalled.contains("costs 3000000 R1"), "{stalled}");

    // 3. One it can: escrowed at once, run on node 6's worker.
    let price: u128 = ratio1::economy::UNIT / 100;
    pipes.patch("paid", &ssa, &kube::api::Patch::Apply(paid_pipeline(&ns, "paid", "node-c6", "0.01"))).await.unwrap();
    let st = wait_for(120, "paid escrowed and running on node 6", || async {
        let st = pipes.get("paid").await.ok()?.status?;
        (st.budget.is_some() && st.ready_replicas == 1).then_some(st)
    })
    .await;
    let budget = st.budget.unwrap();
    assert_eq!((budget.payer.as_deref(), budget.escrowed.as_str()), (Some(payer.as_str()), "0.03"), "{budget:?}");
    // A job is known by its origin and uid.
    let job_id = |uid: String| format!("{}/{uid}", ids[1]);
    let uid = job_id(pipes.get("paid").await.unwrap().metadata.uid.unwrap());
    let e = economy(ports[1]).await.unwrap();
    assert!(e["poai"]["jobs"].get(&uid).is_some(), "{e}");
    assert!(e["poai"]["jobs"].get(job_id(pipes.get("too-dear").await.unwrap().metadata.uid.unwrap())).is_none(), "{e}");

    // 4. Each epoch the oracles agree node 6 ran it: 85% to its license,
    // 15% burned, exact; the job over, the rest refunded. Every node
    // folds the same books.
    let (share, burn) = (price * 85 / 100, price - price * 85 / 100);
    for port in [ports[0], ports[2]] {
        let e = wait_for(200, "the job over, paid and balanced", || async {
            let e = economy(port).await?;
            let j = &e["poai"]["jobs"][&uid];
            let done = j["over"] == true && !j["paid"].as_array()?.is_empty() && e["balanced"] == true;
            done.then_some(e)
        })
        .await;
        let p = &e["poai"];
        let j = &p["jobs"][&uid];
        let paid = j["paid"].as_array().unwrap();
        for epoch in paid {
            assert_eq!(epoch["credited"], serde_json::json!({ &ids[2]: &runner }), "{epoch}");
            assert_eq!((units(&epoch["toLicenses"]), units(&epoch["burned"])), (share, burn), "{epoch}");
        }
        let n = paid.len() as u128;
        assert!(n >= 2, "node 6 ran it through the job's epochs: {j}");
        assert_eq!(units(&p["escrowed"]), 3 * price, "{p}");
        assert_eq!((units(&p["toLicenses"]), units(&p["burned"])), (n * share, n * burn), "{p}");
        assert_eq!(units(&p["refunded"]), 3 * price - n * price, "{p}");
        assert_eq!(units(&p["inEscrow"]), 0, "{p}");
        assert_eq!(units(&p["credits"][&runner]), n * share, "{p}");
        assert_eq!(units(&p["balances"][&runner]), n * share, "node 6 claimed no PoA reward: {p}");
        assert_eq!(units(&p["balances"][&payer]), minted - n * price, "{p}");
    }
    let (ok, out, err) = ratio1(ports[2], &["economy", "status"]).await;
    assert!(ok && out.contains("over (left refunded)"), "{out}{err}");
    assert!(out.lines().any(|l| l.starts_with("books balance") && l.ends_with("yes")), "{out}");
    let budget = wait_for(30, "the pipeline's status shows the job over", || async {
        let b = pipes.get("paid").await.ok()?.status?.budget?;
        b.over.then_some(b)
    })
    .await;
    assert!(budget.paid_epochs >= 2 && budget.burned != "0", "{budget:?}");
    let proposals = counter(&fed, 0, "ratio1_poai_proposals_total", "").await;
    assert!(proposals >= 2.0, "{proposals}");
}
