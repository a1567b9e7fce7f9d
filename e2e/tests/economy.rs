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

#[tokio::test]
async fn licenses_link_by_the_rules_and_claims_pay_by_the_final_records_once() {
    let _turn = CLUSTERS_4_TO_6.lock().await;
    let (mut fed, _etcds) = cstore::federation_oracles(&[4, 5, 6], 2, |_, o| {
        o.extra_args.extend(
            ["--epoch-genesis-ms=0", "--epoch-length-secs=20", "--oracle-phase-secs=2", "--relink-secs=600"]
                .map(String::from),
        );
    })
    .await;
    for i in 0..3 {
        fed.wait_peers(i, 2, 60).await;
    }
    let ids: Vec<String> = fed.nodes.iter().map(|n| n.peer_id.clone()).collect();
    let ports: Vec<u16> = fed.nodes.iter().map(|n| n.op().api_port).collect();
    let key = log_dir().join("economy-issuer.key");
    std::fs::write(&key, ratio1::dauth::license::encode_secret(&fed.issuer)).unwrap();
    let key = key.to_str().unwrap().to_string();
    let iss = ratio1::dauth::license::key_id(&fed.issuer.public());
    let name = format!("{iss}/nd-c6");
    // Links in an epoch the oracles see whole: after their first final one.
    wait_for(90, "a first final epoch", || async {
        let s: serde_json::Value = serde_json::from_str(&http_get(ports[0], "/v1/oracle").await?).ok()?;
        s["lastFinal"].as_u64()
    })
    .await;

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
