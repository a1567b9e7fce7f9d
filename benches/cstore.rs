//! CSTORE benchmark: three replicas, each on its own real etcd process,
//! replicating over real libp2p (loopback TCP, in this process).
//!
//! 1. `hset` throughput on one node against raw `etcd-client` puts of the
//!    same sizes to the same etcd, one at a time and 32 in flight.
//! 2. Replication lag (a record's clock to its arrival in another replica)
//!    p50/p99 on two nodes while a third writes 1,000 records/s; baseline:
//!    a raw etcd put seen by a watch on the same etcd, measured at the same
//!    rate.
//! 3. Anti-entropy: a node leaves the network, misses 10,000 writes and
//!    comes back; time until its replica equals the others, and the bytes
//!    it exchanged against the size of the records it missed (goal: 2x).
//!
//! Run: `cargo bench --bench cstore` (needs the etcd binary of
//! e2e/kube/install.sh, or `R1_ETCD=/path/to/etcd`). Prints a table; fails
//! (exit 1, one line) when something it measures did not happen.

use libp2p_identity::{ed25519, Keypair};
use ratio1::cstore::Cstore;
use ratio1::dauth::license::{self, Claims, Class, TrustStore};
use ratio1::metrics::Metrics;
use ratio1::p2p::{self, NetConfig, NetworkHandle};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{fail, free_port, pct, wait, wait_explained, Etcd};

/// A node: its replica (own etcd) and, once started, its network.
struct Node {
    store: Cstore,
    key: Keypair,
    link: p2p::ServiceLink,
    port: Mutex<u16>,
    net: Arc<Mutex<Option<NetworkHandle>>>,
    metrics: Arc<Metrics>,
    _etcd: Etcd,
}

async fn node(i: usize, trust: &TrustStore) -> Node {
    let r = common::replica(&format!("n{i}"), trust).await;
    Node {
        store: r.store,
        key: r.key,
        port: Mutex::new(free_port()),
        link: r.link,
        net: r.net,
        metrics: r.metrics,
        _etcd: r.etcd,
    }
}

fn addr(n: &Node) -> libp2p::Multiaddr {
    format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", n.port.lock().unwrap(), n.key.public().to_peer_id()).parse().unwrap()
}

fn handle(n: &Node) -> NetworkHandle {
    n.net.lock().unwrap().clone().expect("joined")
}

/// Stops node `n`'s network (its last handle goes).
fn leave(n: &Node) {
    n.net.lock().unwrap().take();
    *n.port.lock().unwrap() = free_port();
}

/// Starts node `n`'s network, bootstrapping from `peers`.
fn join(n: &Node, issuer: &ed25519::Keypair, trust: &TrustStore, peers: &[&Node], i: usize) {
    let now = p2p::now_ms() / 1000;
    let claims = Claims {
        id: format!("bench-{i}"),
        class: if i == 0 { Class::Mnd } else { Class::Nd },
        peer: n.key.public().to_peer_id().to_string(),
        iat: now - 60,
        exp: now + 3600,
        iss: license::key_id(&issuer.public()),
    };
    let mut cfg = NetConfig::new(n.key.clone(), license::issue(issuer, &claims), trust.clone());
    cfg.listen = vec![format!("/ip4/127.0.0.1/tcp/{}", n.port.lock().unwrap()).parse().unwrap()];
    cfg.bootstrap = peers.iter().map(|p| addr(p)).collect();
    cfg.tuning.heartbeat_interval = Duration::from_millis(500);
    cfg.cstore = Some(n.link.clone());
    let (handle, _task) = p2p::start(cfg, Default::default(), n.metrics.clone(), tokio::sync::watch::channel(0).0)
        .unwrap_or_else(|e| fail(&e));
    *n.net.lock().unwrap() = Some(handle);
}

fn value(i: usize) -> serde_json::Value {
    serde_json::json!({ "app": format!("app-{i}"), "replicas": i % 7, "image": "ratio1.local/model-server:0.1" })
}

/// Writes `n` hset calls with `inflight` at once; returns writes per second.
async fn hsets(store: &Cstore, n: usize, inflight: usize, tag: &str) -> f64 {
    use futures::StreamExt;
    let start = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(|i| async move { store.hset(&format!("~/bench/{tag}"), &i.to_string(), &value(i), None).await })
        .buffer_unordered(inflight)
        .collect()
        .await;
    if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
        fail(&format!("hset: {e}"));
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The same as raw puts: key and value of the same sizes.
async fn raw_puts(endpoint: &str, n: usize, inflight: usize, tag: &str) -> f64 {
    use futures::StreamExt;
    let client = etcd_client::Client::connect([endpoint], None).await.unwrap();
    let text = value(0).to_string();
    // A stored record carries clock, writer and signature too: the
    // baseline writes a value of the record's size.
    let size = text.len() + 200;
    let start = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let mut kv = client.kv_client();
            let body = "x".repeat(size);
            async move { kv.put(format!("/raw/{tag}/{i}"), body, None).await }
        })
        .buffer_unordered(inflight)
        .collect()
        .await;
    if results.iter().any(|r| r.is_err()) {
        fail("raw etcd put failed");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn counter(m: &Metrics, name: &str) -> f64 {
    m.render().lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let issuer = ed25519::Keypair::generate();
    let trust = TrustStore::new([issuer.public()], []);
    let nodes = [node(0, &trust).await, node(1, &trust).await, node(2, &trust).await];
    let mut rows: Vec<(String, String, String, String)> = vec![];

    // 1. Throughput on one node (no network yet: nothing to gossip to).
    for inflight in [1usize, 32] {
        let n = if inflight == 1 { 1_000 } else { 5_000 };
        let raw = raw_puts(&nodes[0]._etcd.endpoint(), n, inflight, &format!("t{inflight}")).await;
        let ours = hsets(&nodes[0].store, n, inflight, &format!("t{inflight}")).await;
        eprintln!("[bench] {n} writes, {inflight} in flight: hset {ours:.0}/s, raw put {raw:.0}/s");
        rows.push((
            format!("hset throughput, {inflight} in flight (writes/s)"),
            format!("{ours:.0}"),
            format!("{raw:.0} raw etcd put"),
            format!("{:.2}", ours / raw),
        ));
    }

    // 2. Replication lag at 1,000 writes/s: the three nodes form a network.
    join(&nodes[0], &issuer, &trust, &[], 0);
    join(&nodes[1], &issuer, &trust, &[&nodes[0]], 1);
    join(&nodes[2], &issuer, &trust, &[&nodes[0], &nodes[1]], 2);
    // 60 s: a Hello slowed past the admission timeout (a debug build on a
    // loaded machine) blocks that peer for 30 s before it may try again.
    let connected = || nodes.iter().all(|n| handle(n).connected_peers().len() == 2);
    let refusals = || {
        let seen: Vec<String> = nodes
            .iter()
            .map(|n| {
                let refused: Vec<String> = n
                    .metrics
                    .render()
                    .lines()
                    .filter(|l| l.starts_with("ratio1_p2p_refused") && !l.ends_with(" 0"))
                    .map(String::from)
                    .collect();
                format!("{} connected, refusals {refused:?}", handle(n).connected_peers().len())
            })
            .collect();
        seen.join("; ")
    };
    wait_explained(60, "three nodes connected", connected, refusals).await;
    // Every replica agrees before the measured run (part 1's writes).
    for i in 1..3 {
        wait(120, &format!("replica {i} caught up with part 1"), || nodes[i].store.digest() == nodes[0].store.digest())
            .await;
    }
    let rate = 1_000.0;
    let secs = 10.0;
    let total = (rate * secs) as usize;
    let lags = Arc::new(std::sync::Mutex::new(Vec::with_capacity(2 * total)));
    let watchers: Vec<_> = nodes[1..]
        .iter()
        .map(|n| {
            use futures::StreamExt;
            let (lags, stream) = (lags.clone(), n.store.watch("node/").unwrap());
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(c) = stream.next().await {
                    if let Some(r) = c.record.filter(|r| r.slot.key.contains("/lag/")) {
                        let lag = p2p::now_ms() - r.hlc.wall_ms() as i64;
                        lags.lock().unwrap().push(lag as f64);
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    let inflight = Arc::new(tokio::sync::Semaphore::new(256));
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let permit = inflight.clone().acquire_owned().await.unwrap();
        let store = nodes[0].store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.set(&format!("~/lag/{}", i % 2_000), &value(i), None).await {
                fail(&format!("set at 1,000/s: {e}"));
            }
            drop(permit);
        });
    }
    let achieved = total as f64 / start.elapsed().as_secs_f64();
    wait(60, "every write of the 1,000/s run seen by nodes 1 and 2", || lags.lock().unwrap().len() >= 2 * total).await;
    watchers.iter().for_each(|w| w.abort());
    let mut l = lags.lock().unwrap().clone();
    let (p50, p99) = (pct(&mut l, 0.5), pct(&mut l, 0.99));
    // Baseline: the same rate of raw puts, seen by a watch on the same etcd.
    let base = {
        let client = etcd_client::Client::connect([nodes[2]._etcd.endpoint()], None).await.unwrap();
        let mut w = client
            .watch_client()
            .watch("/lagbase/", Some(etcd_client::WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        let seen = Arc::new(std::sync::Mutex::new(vec![]));
        let reader = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok(Some(resp)) = w.message().await {
                    for ev in resp.events() {
                        if let Some(kv) = ev.kv() {
                            let sent: i64 = std::str::from_utf8(kv.value()).unwrap().parse().unwrap();
                            seen.lock().unwrap().push((p2p::now_us() - sent) as f64 / 1000.0);
                        }
                    }
                }
            })
        };
        let n = 3_000;
        let start = Instant::now();
        for i in 0..n {
            tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / rate)).into()).await;
            let mut kv = client.kv_client();
            tokio::spawn(async move { kv.put(format!("/lagbase/{}", i % 500), p2p::now_us().to_string(), None).await });
        }
        wait(30, "the baseline watch to see every put", || seen.lock().unwrap().len() >= n).await;
        reader.abort();
        let mut s = seen.lock().unwrap().clone();
        (pct(&mut s, 0.5), pct(&mut s, 0.99))
    };
    eprintln!("[bench] {total} writes at {achieved:.0}/s: lag p50 {p50} ms p99 {p99} ms (etcd watch: {base:?})");
    rows.push((
        format!("replication lag p50 at {achieved:.0} writes/s (ms)"),
        format!("{p50:.1}"),
        format!("{:.2} etcd put→watch", base.0),
        format!("{:.1}", p50 / base.0.max(0.001)),
    ));
    rows.push((
        "replication lag p99 (ms)".into(),
        format!("{p99:.1}"),
        format!("{:.2} etcd put→watch", base.1),
        format!("{:.1}", p99 / base.1.max(0.001)),
    ));

    // 3. Node 2 leaves, misses 10,000 writes, and comes back.
    for i in 1..3 {
        wait(60, &format!("replica {i} caught up with part 2"), || nodes[i].store.digest() == nodes[0].store.digest())
            .await;
    }
    leave(&nodes[2]);
    let p2 = nodes[2].key.public().to_peer_id();
    wait(30, "node 0 to see node 2 gone", || !handle(&nodes[0]).connected_peers().contains(&p2)).await;
    let bytes_before = nodes[0].store.status()["bytes"].as_u64().unwrap();
    hsets(&nodes[0].store, 10_000, 32, "missed").await;
    wait(120, "node 1 caught up with the 10,000 writes", || nodes[1].store.digest() == nodes[0].store.digest()).await;
    let missed_bytes = nodes[0].store.status()["bytes"].as_u64().unwrap() - bytes_before;
    let m = &nodes[2].metrics;
    let (bytes0, fetched0) =
        (counter(m, "ratio1_cstore_anti_entropy_bytes_total"), counter(m, "ratio1_cstore_anti_entropy_records_total"));
    let start = Instant::now();
    join(&nodes[2], &issuer, &trust, &[&nodes[0], &nodes[1]], 2);
    wait(300, "node 2 healed by anti-entropy", || nodes[2].store.digest() == nodes[0].store.digest()).await;
    let heal = start.elapsed().as_secs_f64();
    // Bytes of node 2's rounds and of its answers to the others' rounds.
    let ae_bytes = counter(m, "ratio1_cstore_anti_entropy_bytes_total") - bytes0;
    let fetched = counter(m, "ratio1_cstore_anti_entropy_records_total") - fetched0;
    eprintln!("[bench] node 2 healed in {heal:.1} s: {fetched} records fetched, {ae_bytes} B exchanged for {missed_bytes} B of missed records");
    if fetched < 10_000.0 {
        fail(&format!("node 2 fetched {fetched} records by anti-entropy, fewer than the 10,000 it missed"));
    }
    rows.push(("anti-entropy heal of 10,000 missed writes (s)".into(), format!("{heal:.1}"), "-".into(), "-".into()));
    rows.push((
        "anti-entropy bytes (B)".into(),
        format!("{ae_bytes:.0}"),
        format!("{missed_bytes} B missed"),
        format!("{:.2}", ae_bytes / missed_bytes as f64),
    ));

    println!();
    println!(
        "{:<52} {:>12} {:>26} {:>8}",
        "CSTORE (3 replicas, own etcd each)", "value", "baseline (same run)", "ratio"
    );
    for (name, v, b, r) in rows {
        println!("{name:<52} {v:>12} {b:>26} {r:>8}");
    }
}
