//! R1FS `add` on disk against the same work done plainly: the content of a
//! file is chunked, hashed into a UnixFS DAG and every block written to
//! the block store (temp file and rename each, one syncfs at the end), against a
//! sequential read + sha256 + write of the same file to the same disk with
//! one fsync at the end (what any copy-and-checksum costs). Goal: ≥ 70% of
//! the baseline's throughput. Also `cat` (every block re-verified) against
//! reading the file plainly.
//!
//! Then the network: two nodes in this process, admitted to each other
//! over loopback TCP (libp2p, noise, yamux), each with its R1FS store; the
//! second fetches the file from the first (Bitswap 1.2 messages, every
//! block verified, written to its store, one syncfs) against a raw TCP copy
//! of the same bytes into a file on the same disk (goal: ≥ 50%; IPFS is
//! reported at about 1/9 of scp); and the gateway (`GET /ipfs/<cid>` over
//! HTTP, every block verified) against reading the file from disk.
//!
//! Run: `cargo bench --bench r1fs` (R1_BENCH_MIB, 256; R1_BENCH_ROUNDS, 3;
//! R1_BENCH_DIR, the system's temp dir). Prints a table.

use libp2p_identity::{ed25519, Keypair};
use ratio1::dauth::license::{self, Claims, Class, TrustStore};
use ratio1::r1fs::{add, cid::Cid, service, store::BlockStore};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One row of the table: the median rounds of R1FS and of its baseline,
/// as MiB/s and their ratio.
fn row(what: &str, bytes: u64, ours: Vec<Duration>, base: Vec<Duration>) {
    let rate = |d: Duration| bytes as f64 / d.as_secs_f64() / (1 << 20) as f64;
    let (o, b) = (rate(median(ours)), rate(median(base)));
    println!("| {what} | {o:.0} | {b:.0} | {:.2} |", o / b);
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mib = env("R1_BENCH_MIB", 256);
    let rounds = env("R1_BENCH_ROUNDS", 3).max(1);
    let root = std::env::var("R1_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
    let dir = root.join(format!("r1fs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("input.bin");
    {
        // Incompressible-looking, deterministic content.
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            for b in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
            }
            f.write_all(&buf).unwrap();
        }
        f.into_inner().unwrap().sync_all().unwrap();
    }
    let bytes = mib << 20;
    let (mut base, mut ours, mut plain_read, mut cat) = (vec![], vec![], vec![], vec![]);
    for r in 0..rounds {
        // Baseline: read, sha256, write a copy, fsync once.
        let copy = dir.join(format!("copy-{r}"));
        let t = Instant::now();
        let mut input = std::fs::File::open(&src).unwrap();
        let mut out = std::fs::File::create(&copy).unwrap();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).unwrap();
        }
        out.sync_all().unwrap();
        std::hint::black_box(h.finalize());
        base.push(t.elapsed());

        // R1FS add into a fresh store.
        let store = BlockStore::open(&dir.join(format!("store-{r}"))).unwrap();
        let t = Instant::now();
        let (added, _, _) = store.put_own_all(|sink| add::add_path(&src, false, sink, &mut |_| {})).unwrap();
        store.sync().unwrap();
        ours.push(t.elapsed());
        assert_eq!(added.size, bytes, "the whole file was added");

        // Reading back: plain read of the copy against cat (verified).
        let t = Instant::now();
        let mut n = 0u64;
        let mut f = std::fs::File::open(&copy).unwrap();
        loop {
            let k = f.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        plain_read.push(t.elapsed());
        assert_eq!(n, bytes);
        let t = Instant::now();
        let got = store.cat(&added.cid, &mut std::io::sink()).unwrap();
        cat.push(t.elapsed());
        assert_eq!(got, bytes, "cat gives back every byte");
        std::fs::remove_file(&copy).unwrap();
        std::fs::remove_dir_all(dir.join(format!("store-{r}"))).unwrap();
    }
    println!("\n## bench r1fs: {mib} MiB, median of {rounds} rounds, on {}", root.display());
    println!("| measure | R1FS MiB/s | baseline MiB/s | ratio (R1FS / baseline) |");
    println!("|---|---|---|---|");
    row("add into the block store vs read + sha256 + write + fsync", bytes, ours, base);
    row("cat (every block verified) vs plain read", bytes, cat, plain_read);
    network(&src, &dir, bytes, rounds);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn license_for(issuer: &ed25519::Keypair, key: &Keypair, i: usize) -> String {
    let now = ratio1::p2p::now_ms() / 1000;
    license::issue(
        issuer,
        &Claims {
            id: format!("bench-{i}"),
            class: Class::Nd,
            peer: key.public().to_peer_id().to_string(),
            iat: now - 60,
            exp: now + 3600,
            iss: license::key_id(&issuer.public()),
        },
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One node: its network (listening on loopback, dialling `bootstrap`) and
/// its R1FS service on `root` (no CSTORE: providers are the connected peers).
fn node(
    i: usize,
    issuer: &ed25519::Keypair,
    root: &std::path::Path,
    bootstrap: Option<String>,
) -> (service::R1fs, ratio1::p2p::NetworkHandle, String) {
    let key = Keypair::generate_ed25519();
    let token = license_for(issuer, &key, i);
    let mut cfg = ratio1::p2p::NetConfig::new(key, token, TrustStore::new([issuer.public()], []));
    let port = free_port();
    cfg.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()];
    cfg.bootstrap = bootstrap.into_iter().map(|a| a.parse().unwrap()).collect();
    let (link, requests) = ratio1::p2p::BlockLink::channel(64);
    cfg.r1fs = Some(link);
    let view = ratio1::p2p::SharedView::default();
    let metrics = Arc::new(ratio1::metrics::Metrics::default());
    let (net, _task) =
        ratio1::p2p::start(cfg, view.clone(), metrics.clone(), tokio::sync::watch::channel(0).0).unwrap();
    let handle = net.clone();
    let (models, _writer) = kube::runtime::reflector::store();
    let parts = service::Parts {
        cstore: None,
        view,
        network: Arc::new(move || Some(handle.clone())),
        metrics,
        models,
        models_ready: Default::default(),
        profile: tokio::sync::watch::channel(None).1,
    };
    let r = service::R1fs::start(service::R1fsConfig::new(root.to_path_buf()), parts, requests).unwrap();
    let addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", net.peer_id);
    (r, net, addr)
}

fn network(src: &std::path::Path, dir: &std::path::Path, bytes: u64, rounds: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let issuer = ed25519::Keypair::generate();
        let (a, _na, addr_a) = node(0, &issuer, &dir.join("node-a"), None);
        let (b, nb, _) = node(1, &issuer, &dir.join("node-b"), Some(addr_a));
        let deadline = Instant::now() + Duration::from_secs(30);
        while nb.connected_peers().is_empty() {
            assert!(Instant::now() < deadline, "the two nodes did not admit each other within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let store_a = a.store().clone();
        let src_owned = src.to_path_buf();
        let root: Cid = tokio::task::spawn_blocking(move || {
            let added =
                add::add_path(&src_owned, false, &mut |c, blk| store_a.put_own(&c, &blk).map(|_| ()), &mut |_| {})
                    .unwrap();
            store_a.sync().unwrap();
            added.cid
        })
        .await
        .unwrap();
        // The gateway of node B on loopback.
        let slot: ratio1::r1fs::api::Slot = Default::default();
        let _ = slot.set(b.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, ratio1::r1fs::api::gateway(slot)).await });
        let (mut get, mut tcp, mut gateway, mut disk) = (vec![], vec![], vec![], vec![]);
        for r in 0..rounds {
            // Baseline: the bytes over one loopback TCP connection into a file, fsync once.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let to = listener.local_addr().unwrap();
            let from = src.to_path_buf();
            let sender = std::thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                let mut f = std::fs::File::open(from).unwrap();
                std::io::copy(&mut f, &mut s).unwrap();
            });
            let out = dir.join(format!("tcp-copy-{r}"));
            let out2 = out.clone();
            let (n, took) = tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                let mut s = std::net::TcpStream::connect(to).unwrap();
                let mut f = std::fs::File::create(&out2).unwrap();
                let n = std::io::copy(&mut s, &mut f).unwrap();
                f.sync_all().unwrap();
                (n, t.elapsed())
            })
            .await
            .unwrap();
            tcp.push(took);
            sender.join().unwrap();
            assert_eq!(n, bytes);
            std::fs::remove_file(&out).unwrap();

            // R1FS: node B fetches the DAG from node A.
            let t = Instant::now();
            let w = b.fetch(root, &|_| {}).await.unwrap();
            get.push(t.elapsed());
            assert!(w.missing.is_empty() && w.dag_size >= bytes, "the whole DAG arrived");

            // Gateway (B holds it now) against reading the file.
            let t = Instant::now();
            let n = ratio1::r1fs::api::download(&format!("http://{gw}/ipfs/{root}"), &mut std::io::sink(), &|_| {})
                .await
                .unwrap();
            gateway.push(t.elapsed());
            assert_eq!(n, bytes);
            let t = Instant::now();
            let n = std::fs::read(src).unwrap().len() as u64;
            disk.push(t.elapsed());
            assert_eq!(n, bytes);
            // Empty B's store for the next round.
            let g = b.store().gc(&[], Duration::ZERO).unwrap();
            assert!(g.removed > 0);
        }
        let g = median(get.clone());
        row("get from a peer (loopback libp2p, verified, stored) vs raw TCP copy to a file", bytes, get, tcp);
        row("gateway GET /ipfs/<cid> (every block verified) vs reading the file", bytes, gateway, disk);
        println!("\nget of {} MiB from a peer: {:.2} s", bytes >> 20, g.as_secs_f64());
    });
}
