//! OracleSync between three oracle operators (clusters 4, 5, 6), each with
//! its own CSTORE etcd, over real libp2p, on 20 s epochs: one final record
//! signed by all on every node, verified by the CLI trusting only the
//! issuer; an oracle killed mid-epoch scores about half and the others
//! still finalise; with two of three gone the epoch is faulty.

use crate::harness::cstore::{self, value};
use crate::harness::federation::*;
use crate::harness::*;
use kube::Api;
use ratio1::crd::R1Node;
use ratio1::oracle::agree::EpochRecord;

const EPOCH_MS: u64 = 20_000;

async fn oracle_status(port: u16) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(port, "/v1/oracle").await?).ok()
}

/// Waits until node `i` reports epoch `epoch` in `state`; returns its entry.
async fn epoch_state(fed: &Federation, i: usize, epoch: u64, state: &str, secs: u64) -> serde_json::Value {
    let port = fed.nodes[i].op().api_port;
    wait_for(secs, &format!("epoch {epoch} {state} on {}", fed.nodes[i].name), || async move {
        let s = oracle_status(port).await?;
        let e = s["epochs"].as_array()?.iter().find(|e| e["epoch"] == epoch)?.clone();
        (e["state"] == state).then_some(e)
    })
    .await
}

/// The copies of `epoch`'s final record node `i` holds (each signer
/// writes its own), the most signed first.
async fn records(fed: &Federation, i: usize, epoch: u64) -> Vec<EpochRecord> {
    let port = fed.nodes[i].op().api_port;
    let keys: Vec<String> =
        serde_json::from_str(&http_get(port, "/v1/cstore/keys?prefix=oracle/").await.unwrap_or_default())
            .unwrap_or_default();
    let mut out = vec![];
    for k in keys.iter().filter(|k| k.ends_with(&format!("/epoch/{epoch}/final"))) {
        out.extend(value(port, k).await.and_then(|v| serde_json::from_value::<EpochRecord>(v).ok()));
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.signatures.len()));
    out
}

async fn record(fed: &Federation, i: usize, epoch: u64) -> Option<EpochRecord> {
    records(fed, i, epoch).await.into_iter().next()
}

async fn verify(fed: &Federation, i: usize, epoch: u64, issuer: &str) -> (bool, String, String) {
    let api = format!("http://127.0.0.1:{}", fed.nodes[i].op().api_port);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ratio1"))
        .args(["oracle", "verify", &epoch.to_string(), &format!("--trusted-issuer={issuer}"), "--endpoint", &api])
        .output()
        .await
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn now() -> u64 {
    ratio1::p2p::now_ms() as u64
}

/// Sleeps until `offset_ms` into the next epoch.
async fn into_next_epoch(offset_ms: u64) -> u64 {
    let e = now() / EPOCH_MS + 1;
    tokio::time::sleep(std::time::Duration::from_millis(e * EPOCH_MS + offset_ms - now())).await;
    e
}

#[tokio::test]
async fn oracles_agree_on_one_signed_record_and_survive_a_minority_only() {
    let _turn = CLUSTERS_4_TO_6.lock().await;
    let (mut fed, _etcds) = cstore::federation_oracles(&[4, 5, 6], 3, |_, o| {
        o.extra_args
            .extend(["--epoch-genesis-ms=0", "--epoch-length-secs=20", "--oracle-phase-secs=2"].map(String::from));
    })
    .await;
    for i in 0..3 {
        fed.wait_peers(i, 2, 60).await;
    }
    let ids: Vec<String> = fed.nodes.iter().map(|n| n.peer_id.clone()).collect();

    // 1. The first epoch all three saw whole becomes final with all three
    // signatures, and every node holds the same agreed table.
    let first = now() / EPOCH_MS + 1;
    let e = epoch_state(&fed, 0, first, "final", 3 * EPOCH_MS / 1000 + 15).await;
    assert_eq!((e["participants"].as_u64(), e["registered"].as_u64()), (Some(3), Some(3)), "{e}");
    let mut held = vec![];
    for i in 0..3 {
        let fed_ref = &fed;
        held.push(wait_for(15, "the record on every node", || async move { record(fed_ref, i, first).await }).await);
    }
    assert!(held.iter().all(|r| r.agreed == held[0].agreed), "one agreed table everywhere");
    let table = &held[0].agreed.table;
    for id in &ids {
        // 1 s heartbeats over 20 s: a whole epoch scores 255 × 19/20 ≈ 242.
        assert!(table.get(id).is_some_and(|a| *a >= 230), "{id} fully available: {table:?}");
    }
    assert_eq!(held[0].agreed.registered.len(), 3);
    let fed_ref = &fed;
    wait_for(15, "a copy with all three signatures", || async move {
        records(fed_ref, 0, first).await.iter().any(|r| r.signatures.len() == 3).then_some(())
    })
    .await;

    // 2. Anyone can check it, trusting only the issuer; another issuer's
    // trust gets a non-zero exit with the reason.
    let (ok, out, err) = verify(&fed, 1, first, &fed.issuer_pub).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("epoch {first} is final")) && out.contains(&ids[2]), "{out}");
    let stranger = ratio1::dauth::license::encode_public(&libp2p_identity::ed25519::Keypair::generate().public());
    let (ok, _, err) = verify(&fed, 1, first, &stranger).await;
    assert!(!ok && err.contains("does not verify") && err.contains("license"), "{err}");
    let (ok, _, err) = verify(&fed, 1, first + 1000, &fed.issuer_pub).await;
    assert!(!ok && err.contains("no final record"), "{err}");

    // R1Node status: this node's agreed availability and its epoch.
    let api: Api<R1Node> = Api::all(client(fed.nodes[1].cluster).await);
    let name = fed.nodes[1].name.clone();
    let st = wait_for(40, "R1Node availability from a final record", || {
        let (api, name) = (api.clone(), name.clone());
        async move {
            let st = api.get(&name).await.ok()?.status?;
            st.availability_epoch.is_some_and(|e| e >= first).then_some(st)
        }
    })
    .await;
    assert!(st.availability.is_some_and(|a| a >= 230), "{st:?}");
    assert_eq!(st.license_class.as_deref(), Some("MND"));

    // 3. Oracle 2 killed halfway through an epoch: the other two finalise
    // it, and oracle 2 scores about half.
    let half = into_next_epoch(EPOCH_MS / 2).await;
    fed.nodes[2].op.as_mut().unwrap().kill().await;
    let e = epoch_state(&fed, 0, half, "final", EPOCH_MS / 1000 + 20).await;
    assert_eq!(e["signers"].as_u64(), Some(2), "{e}");
    // (node 0 saw it final; node 1 gets it through CSTORE, a moment later)
    let fed_ref = &fed;
    let r = wait_for(15, "the record reached node 1", || async move { record(fed_ref, 1, half).await }).await;
    assert_eq!(r.signatures.len(), 2);
    assert!(r
        .verify(&ratio1::dauth::license::TrustStore::new(
            [ratio1::dauth::license::decode_public(&fed.issuer_pub).unwrap()],
            []
        ))
        .is_ok());
    let a = r.agreed.table[&ids[2]];
    assert!((100..=145).contains(&a), "down half the epoch scores about 128: {a}");
    assert!(r.agreed.table[&ids[0]] >= 230 && r.agreed.table[&ids[1]] >= 230, "{:?}", r.agreed.table);

    // 4. Oracle 1 killed too: one of three registered cannot finalise; the
    // next whole epoch is faulty on the survivor, which says why, and every
    // licensed node counts as fully available for it.
    fed.nodes[1].op.as_mut().unwrap().kill().await;
    let lone = into_next_epoch(0).await;
    let e = epoch_state(&fed, 0, lone, "faulty", EPOCH_MS / 1000 + 20).await;
    assert!(e["signers"].as_u64() <= Some(1), "{e}");
    assert!(e["reason"].as_str().is_some_and(|r| r.contains("of 3 registered")), "{e}");
    assert!(record(&fed, 0, lone).await.is_none(), "no final record without a majority");
    let s = oracle_status(fed.nodes[0].op().api_port).await.unwrap();
    assert_eq!((s["availability"].as_u64(), s["availabilityEpoch"].as_u64()), (Some(255), Some(lone)), "{s}");
    let faulty = crate::harness::federation::counter(&fed, 0, "ratio1_oracle_epochs_total", "faulty").await;
    assert!(faulty >= 1.0);
    let misbehaviour = crate::harness::federation::counter(&fed, 0, "ratio1_oracle_misbehaviour_total", "").await;
    let s = oracle_status(fed.nodes[0].op().api_port).await.unwrap();
    assert_eq!(misbehaviour, 0.0, "honest oracles reported: {}", s["reports"]);
}
