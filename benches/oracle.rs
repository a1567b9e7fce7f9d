//! OracleSync benchmark.
//!
//! 1. Real nodes: 3, 5 and 7 oracles in this process, each with its own
//!    real etcd (CSTORE) and libp2p over loopback TCP, 10 s epochs, 500 ms
//!    heartbeats, 1 s phases. For each of several epochs, the time from the
//!    epoch's end to the final signed record on *every* node. Baseline,
//!    same run and nodes: one CSTORE record written on one node until it
//!    is on all others (OracleSync needs three such rounds, plus the
//!    epoch's close on every node).
//! 2. One process, simulated: 3, 5 and 7 oracles over 100 nodes exchanging
//!    real signed records with time stepped by hand (no network): CPU time
//!    of one epoch's agreement, against the floor of signing and verifying
//!    the same number of records.
//!
//! Run: `cargo bench --bench oracle` (needs the etcd binary of
//! e2e/kube/install.sh, or `R1_ETCD=/path/to/etcd`). Prints a table; fails
//! (exit 1, one line) when something it measures did not happen.

use libp2p_identity::{ed25519, Keypair};
use ratio1::cstore::Cstore;
use ratio1::dauth::license::{self, Claims, Class, TrustStore};
use ratio1::oracle::epoch::Epochs;
use ratio1::oracle::service::{Oracle, OracleConfig};
use ratio1::p2p::{self, NetConfig, NetworkHandle, SharedView};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{fail, free_port, pct, wait, Etcd};

const EPOCH_MS: u64 = 10_000;

struct Node {
    store: Cstore,
    key: Keypair,
    port: u16,
    oracle: Oracle,
    _net: Arc<Mutex<Option<NetworkHandle>>>,
    _etcd: Etcd,
}

fn addr(port: u16, key: &Keypair) -> libp2p::Multiaddr {
    format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", key.public().to_peer_id()).parse().unwrap()
}

/// An oracle node: replica, network (bootstrapping from `first`), OracleSync.
async fn node(i: usize, issuer: &ed25519::Keypair, trust: &TrustStore, first: Option<(u16, &Keypair)>) -> Node {
    let common::Replica { store, link, key, net, source, metrics, etcd } =
        common::replica(&format!("o{i}"), trust).await;
    let now = p2p::now_ms() / 1000;
    let claims = Claims {
        id: format!("mnd-{i}"),
        class: Class::Mnd,
        peer: key.public().to_peer_id().to_string(),
        iat: now - 60,
        exp: now + 3600,
        iss: license::key_id(&issuer.public()),
    };
    let port = free_port();
    let mut nc = NetConfig::new(key.clone(), license::issue(issuer, &claims), trust.clone());
    nc.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()];
    nc.bootstrap = first.map(|(p, k)| addr(p, k)).into_iter().collect();
    nc.roles = vec![ratio1::crd::NodeRole::Worker, ratio1::crd::NodeRole::Oracle];
    nc.tuning.heartbeat_interval = Duration::from_millis(500);
    nc.tuning.heartbeat_timeout = Duration::from_secs(2);
    nc.tuning.epochs = Epochs { genesis_ms: 0, length_ms: EPOCH_MS };
    nc.cstore = Some(link);
    let view = SharedView::default();
    let (handle, _task) =
        p2p::start(nc, view.clone(), metrics.clone(), tokio::sync::watch::channel(0).0).unwrap_or_else(|e| fail(&e));
    *net.lock().unwrap() = Some(handle);
    let parts =
        ratio1::oracle::service::Parts { cstore: store.clone(), view, network: source, trust: trust.clone(), metrics };
    let oracle = Oracle::start(OracleConfig { phase: Duration::from_secs(1), ..Default::default() }, parts);
    Node { store, key, port, oracle, _net: net, _etcd: etcd }
}

/// One record written on node 0 until it is on every other node (ms).
async fn propagation(nodes: &[Node], samples: usize) -> Vec<f64> {
    let mut out = vec![];
    for s in 0..samples {
        let key = format!("~/bench/prop-{s}");
        let start = Instant::now();
        let rec =
            nodes[0].store.set(&key, &serde_json::json!({"s": s}), None).await.unwrap_or_else(|e| fail(&e.to_string()));
        let stored = rec.slot.key.clone();
        loop {
            let mut all = true;
            for n in &nodes[1..] {
                all &= n.store.keys(&stored).map(|k| k.contains(&stored)).unwrap_or(false);
            }
            if all {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                fail("a record did not reach every node within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        out.push(start.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    out
}

/// Epoch end → final record on every node (ms), for `epochs` epochs.
async fn real(n: usize, epochs: usize, issuer: &ed25519::Keypair, trust: &TrustStore) -> (Vec<f64>, Vec<f64>) {
    let mut nodes: Vec<Node> = vec![];
    for i in 0..n {
        let first = nodes.first().map(|f| (f.port, &f.key));
        let nd = node(i, issuer, trust, first).await;
        nodes.push(nd);
    }
    wait(30, "every oracle registered everywhere", || nodes.iter().all(|nd| nd.oracle.status().registered.len() == n))
        .await;
    let prop = propagation(&nodes, 20).await;
    // The first epoch every node saw whole, then the next ones.
    let first = p2p::now_ms() as u64 / EPOCH_MS + 1;
    let mut lat = vec![];
    for e in first..first + epochs as u64 {
        let deadline = (e + 2) * EPOCH_MS / 1000 - p2p::now_ms() as u64 / 1000 + 10;
        wait(deadline, &format!("epoch {e} final on all {n} nodes"), || {
            nodes.iter().all(|nd| nd.oracle.status().epochs.iter().any(|s| s.epoch == e && s.state == "final"))
        })
        .await;
        let worst = nodes
            .iter()
            .filter_map(|nd| nd.oracle.status().epochs.iter().find(|s| s.epoch == e)?.final_after_ms)
            .max()
            .unwrap_or_else(|| fail("no latency"));
        lat.push(worst as f64);
    }
    (lat, prop)
}

/// CPU ms of one epoch's agreement among `n` simulated oracles over 100
/// nodes, and of signing + verifying as many records as they exchanged.
fn simulated(n: usize) -> (f64, f64) {
    use ratio1::oracle::sim::{Conduct, Sim, L};
    let mut sim = Sim::new(&vec![Conduct::Honest; n], 100);
    sim.turn();
    sim.now = 2 * L + 50;
    let start = Instant::now();
    let mut turns = 0;
    while !sim.collectors.iter().all(|c| c.finals.get(&1).is_some_and(|r| r.signatures.len() == n)) {
        sim.turn();
        sim.now += 100;
        turns += 1;
        if turns > 200 {
            fail("the simulated epoch did not finish");
        }
    }
    let agreement = start.elapsed().as_secs_f64() * 1000.0;
    // The floor: the records exchanged, signed once and verified once.
    let records: Vec<_> = sim
        .log
        .iter()
        .filter(|r| r.slot.key.contains("/epoch/") || r.slot.key.starts_with("epoch/"))
        .cloned()
        .collect();
    let start = Instant::now();
    for r in &records {
        let again = ratio1::cstore::record::Record::sign(&sim.keys[0], r.slot.clone(), r.value.clone(), r.hlc, None);
        let _ = again.verify();
    }
    (agreement, start.elapsed().as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let issuer = ed25519::Keypair::generate();
    let trust = TrustStore::new([issuer.public()], []);
    // `cargo test --all-targets` runs this binary too (without --bench): a
    // short smoke run there, 3 oracles and 2 epochs.
    let full = std::env::args().any(|a| a == "--bench");
    let (sizes, epochs) = if full { (vec![3, 5, 7], 4) } else { (vec![3], 2) };
    println!("[bench] OracleSync: epoch end → final signed record on every node ({epochs} epochs each)");
    println!(
        "{:<32} {:>10} {:>10} {:>14} {:>12}",
        "oracles (real nodes)", "p50 ms", "max ms", "1-record ms", "ratio p50"
    );
    for n in sizes {
        let (mut lat, mut prop) = real(n, epochs, &issuer, &trust).await;
        let (p50, max, base) = (pct(&mut lat, 0.5), pct(&mut lat, 1.0), pct(&mut prop, 0.5));
        println!(
            "{:<32} {:>10.0} {:>10.0} {:>14.1} {:>12.1}",
            format!("{n} oracles, 10 s epochs"),
            p50,
            max,
            base,
            p50 / base
        );
    }
    println!("\n{:<32} {:>10} {:>14} {:>12}", "simulated (100 nodes)", "agree ms", "sign+verify ms", "ratio");
    for n in [3, 5, 7] {
        let (a, floor) = simulated(n);
        println!("{:<32} {:>10.2} {:>14.2} {:>12.2}", format!("{n} oracles, one epoch"), a, floor, a / floor);
    }
}
