//! Federation benchmark: heartbeat propagation.
//!
//! 1. Three real processes (this binary re-executed as nodes) on loopback
//!    TCP: time from a heartbeat's publication until it has reached every
//!    peer, p50/p99.
//! 2. One process, libp2p's memory transport: the same for 20, 50, 100 and
//!    200 nodes, spread over one single-threaded runtime per core.
//!
//! Baseline, measured in the same run: one-way latency of a raw TCP message
//! between two processes' worth of sockets on loopback (half a ping-pong).
//! Run: `cargo bench --bench federation`. Prints a table.
//!
//! It fails (exit status 1, one line on stderr) rather than print a row it
//! cannot back: a node process that fails or outlives its deadline, a
//! network that did not form (every node hearing every other's heartbeats)
//! within 60 s, or a run in which no heartbeat reached every node.

use libp2p_identity::{ed25519, Keypair};
use ratio1::dauth::license::{self, Claims, Class, TrustStore};
use ratio1::metrics::Metrics;
use ratio1::p2p::{self, NetConfig, TransportKind};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HB: Duration = Duration::from_millis(200);
/// Simulated nodes share 2 cores: one heartbeat per node every 2 s by
/// default (a stress: the operator's default is 5 s); R1_BENCH_SIM_HB_MS
/// sets another.
fn sim_hb() -> Duration {
    let ms = std::env::var("R1_BENCH_SIM_HB_MS").ok().map(|v| v.parse().expect("R1_BENCH_SIM_HB_MS: milliseconds"));
    Duration::from_millis(ms.unwrap_or(2_000))
}

fn license_for(issuer: &ed25519::Keypair, key: &Keypair, i: usize) -> String {
    let now = p2p::now_ms() / 1000;
    license::issue(
        issuer,
        &Claims {
            id: format!("bench-{i}"),
            class: if i == 0 { Class::Mnd } else { Class::Nd },
            peer: key.public().to_peer_id().to_string(),
            iat: now - 60,
            exp: now + 3600,
            iss: license::key_id(&issuer.public()),
        },
    )
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()
}

/// Ends the benchmark: one line saying what did not happen, exit status 1.
fn fail(what: &str) -> ! {
    eprintln!("[bench] FAILED: {what}");
    std::process::exit(1)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Per heartbeat (sender, seq): the latest receipt among the receivers, if
/// every other node received it.
fn reach_all(records: &[(String, u64, i64)], nodes: usize) -> Vec<f64> {
    let mut by: HashMap<(String, u64), (usize, i64)> = HashMap::new();
    for (from, seq, d) in records {
        let e = by.entry((from.clone(), *seq)).or_insert((0, 0));
        e.0 += 1;
        e.1 = e.1.max(*d);
    }
    by.values().filter(|(n, _)| *n == nodes - 1).map(|(_, d)| *d as f64 / 1000.0).collect()
}

fn config(key: Keypair, token: String, issuer: &ed25519::Keypair, transport: TransportKind) -> NetConfig {
    let mut cfg = NetConfig::new(key, token, TrustStore::new([issuer.public()], []));
    cfg.tuning.heartbeat_interval = HB;
    cfg.tuning.heartbeat_timeout = Duration::from_secs(10);
    if let Ok(s) = std::env::var("R1_BENCH_ADMISSION_SECS") {
        cfg.tuning.admission_timeout = Duration::from_secs(s.parse().unwrap());
    }
    if let Ok(s) = std::env::var("R1_BENCH_DIAL_TARGET") {
        cfg.tuning.dial_target = s.parse().unwrap();
    }
    if let Ok(s) = std::env::var("R1_BENCH_FLOOD") {
        cfg.tuning.flood_publish = s == "1";
    }
    cfg.transport = transport;
    cfg
}

/// Child process: one node; prints its heartbeat delay records as JSON.
fn node_main() {
    let env = |k: &str| std::env::var(k).unwrap();
    let issuer = ed25519::Keypair::try_from_bytes(&mut unb64(&env("R1_BENCH_ISSUER"))).unwrap();
    let key = Keypair::from_protobuf_encoding(&unb64(&env("R1_BENCH_KEY"))).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let mut cfg = config(key, env("R1_BENCH_LICENSE"), &issuer, TransportKind::Tcp);
        cfg.listen = vec![env("R1_BENCH_LISTEN").parse().unwrap()];
        cfg.bootstrap =
            env("R1_BENCH_BOOTSTRAP").split(',').filter(|s| !s.is_empty()).map(|a| a.parse().unwrap()).collect();
        let view = p2p::SharedView::default();
        let _h = p2p::start(cfg, view.clone(), Arc::new(Metrics::default()), tokio::sync::watch::channel(0).0).unwrap();
        let secs: u64 = env("R1_BENCH_SECS").parse().unwrap();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let v = view.read().unwrap();
        println!("{}", serde_json::to_string(&v.heartbeat_delays).unwrap());
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits for every child, at most `limit`, and returns their outputs. A
/// child that exits unsuccessfully (a panic, a signal) or still runs at the
/// deadline is an error; the others are then killed.
fn collect(mut children: Vec<std::process::Child>, limit: Duration) -> Result<Vec<Vec<u8>>, String> {
    // Read every stdout while the children run: a full pipe would block them.
    let readers: Vec<_> = children
        .iter_mut()
        .map(|c| {
            let mut out = c.stdout.take().expect("stdout is piped");
            std::thread::spawn(move || {
                let mut v = vec![];
                let _ = out.read_to_end(&mut v);
                v
            })
        })
        .collect();
    let deadline = Instant::now() + limit;
    let failure = loop {
        let mut running = 0;
        let mut failed = None;
        for (i, c) in children.iter_mut().enumerate() {
            match c.try_wait() {
                Ok(Some(st)) if st.success() => {}
                Ok(Some(st)) => {
                    failed = failed.or(Some(format!("node process {i} failed ({st}; its stderr is above)")))
                }
                Ok(None) => running += 1,
                Err(e) => failed = failed.or(Some(format!("node process {i}: {e}"))),
            }
        }
        if failed.is_some() {
            break failed;
        }
        if running == 0 {
            break None;
        }
        if Instant::now() >= deadline {
            break Some(format!("{running} node process(es) still running after {} s", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if let Some(f) = failure {
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        return Err(f);
    }
    Ok(readers.into_iter().map(|r| r.join().expect("reader thread")).collect())
}

/// 3 processes on loopback TCP.
fn processes(issuer: &ed25519::Keypair) -> Vec<f64> {
    let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let first = format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", ports[0], keys[0].public().to_peer_id());
    let secs = 12;
    let children: Vec<_> = (0..3)
        .map(|i| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .env("R1_BENCH_NODE", "1")
                .env("R1_BENCH_ISSUER", b64(&issuer.to_bytes()))
                .env("R1_BENCH_KEY", b64(&keys[i].to_protobuf_encoding().unwrap()))
                .env("R1_BENCH_LICENSE", license_for(issuer, &keys[i], i))
                .env("R1_BENCH_LISTEN", format!("/ip4/127.0.0.1/tcp/{}", ports[i]))
                .env("R1_BENCH_BOOTSTRAP", if i == 0 { String::new() } else { first.clone() })
                .env("R1_BENCH_SECS", secs.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // (start-up on a busy machine can take a while: a minute of slack)
    let outs = collect(children, Duration::from_secs(secs + 60)).unwrap_or_else(|e| fail(&format!("3 processes: {e}")));
    let mut records = vec![];
    for (i, out) in outs.iter().enumerate() {
        let recs: Vec<(String, u64, i64)> = serde_json::from_slice(out)
            .unwrap_or_else(|e| fail(&format!("3 processes: node process {i} printed no heartbeat records ({e})")));
        records.extend(recs);
    }
    // Skip the first seconds (connection set-up, mesh forming).
    let mut by_sender: HashMap<String, Vec<u64>> = HashMap::new();
    for (f, s, _) in &records {
        by_sender.entry(f.clone()).or_default().push(*s);
    }
    let cut: HashMap<String, u64> = by_sender
        .into_iter()
        .map(|(f, mut s)| {
            s.sort();
            let skip = s.len() / 4;
            (f, s.get(skip).copied().unwrap_or(0))
        })
        .collect();
    let steady: Vec<_> = records.into_iter().filter(|(f, s, _)| *s >= cut[f]).collect();
    let reached = reach_all(&steady, 3);
    if reached.is_empty() {
        fail(&format!("3 processes: no heartbeat reached both other nodes within {secs} s (the network did not form)"));
    }
    reached
}

/// Share of (heartbeat, receiver) pairs that arrived: 1.0 when every
/// heartbeat reached every other node.
fn coverage(records: &[(String, u64, i64)], nodes: usize) -> f64 {
    let unique: std::collections::HashSet<(&String, u64)> = records.iter().map(|(f, s, _)| (f, *s)).collect();
    if unique.is_empty() {
        return 0.0;
    }
    records.len() as f64 / (unique.len() * (nodes - 1)) as f64
}

/// Single-threaded runtimes, one per core, that the simulated nodes are
/// spread over, each node wholly on one. A node's tasks (its event loop and
/// one per connection) then wake each other on one core, as on a machine of
/// its own. On one work-stealing pool shared by every node, the simulation
/// spent a fifth of its CPU moving tasks between cores (50k context
/// switches a second at 100 nodes): a cost of packing the whole network
/// into one process, not of the protocol.
struct Shards {
    handles: Vec<tokio::runtime::Handle>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Shards {
    fn new() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let mut s = Shards { handles: vec![], stops: vec![], threads: vec![] };
        for _ in 0..cores {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            s.handles.push(rt.handle().clone());
            s.stops.push(stop);
            // (dropping the runtime when told to stop drops its nodes' tasks)
            s.threads.push(std::thread::spawn(move || {
                rt.block_on(async move {
                    stopped.await.ok();
                })
            }));
        }
        s
    }

    fn for_node(&self, i: usize) -> &tokio::runtime::Handle {
        &self.handles[i % self.handles.len()]
    }

    fn stop(self) {
        for s in self.stops {
            let _ = s.send(());
        }
        for t in self.threads {
            t.join().expect("simulation runtime thread");
        }
    }
}

/// n nodes in one process on the memory transport: receipt delays, the
/// time the network took to form (None: it did not within 60 s), coverage.
async fn simulation(issuer: &ed25519::Keypair, n: usize) -> (Vec<f64>, Option<f64>, f64) {
    let shards = Shards::new();
    let mut views = vec![];
    let mut handles = vec![];
    let mut metrics: Vec<Arc<Metrics>> = vec![];
    let mut addrs: Vec<libp2p::Multiaddr> = vec![];
    let base = rand::random::<u32>() as u64 * 1000;
    let started = Instant::now();
    for i in 0..n {
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let token = license_for(issuer, &key, i);
        let mut cfg = config(key, token, issuer, TransportKind::Memory);
        cfg.tuning.heartbeat_interval = sim_hb();
        let addr: libp2p::Multiaddr = format!("/memory/{}", base + i as u64).parse().unwrap();
        cfg.listen = vec![addr.clone()];
        // Each node knows a few earlier ones; heartbeats carry the rest.
        cfg.bootstrap = [i.wrapping_sub(1), i / 2, i / 3]
            .into_iter()
            .filter(|&j| j < i)
            .map(|j| addrs[j].clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        addrs.push(addr.with(libp2p::multiaddr::Protocol::P2p(peer)));
        let view = p2p::SharedView::default();
        let m = Arc::new(Metrics::default());
        metrics.push(m.clone());
        let _on = shards.for_node(i).enter();
        handles.push(p2p::start(cfg, view.clone(), m, tokio::sync::watch::channel(0).0).unwrap());
        views.push(view);
    }
    // Formed: every node hears every other's heartbeats (or 60 s: not
    // formed). Heard, not merely connected: fresh_peers also counts a
    // connected peer that has sent nothing yet.
    let deadline = Instant::now() + Duration::from_secs(60);
    let heard = |v: &p2p::View, now: i64| {
        v.peers.values().filter(|p| p.last_heartbeat.is_some_and(|t| now - t <= v.heartbeat_timeout_ms)).count()
    };
    let complete = || views.iter().all(|v| heard(&v.read().unwrap(), p2p::now_ms()) >= n - 1);
    while Instant::now() < deadline && !complete() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let formed = complete().then(|| started.elapsed().as_secs_f64());
    for v in &views {
        v.write().unwrap().heartbeat_delays.clear();
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let records: Vec<_> = views.iter().flat_map(|v| v.read().unwrap().heartbeat_delays.clone()).collect();
    // Refusals and drops between licensed nodes would be a bug: say so.
    let mut odd: std::collections::BTreeMap<String, f64> = Default::default();
    for m in &metrics {
        for line in m.render().lines() {
            if (line.starts_with("ratio1_p2p_refused_total{")
                || line.starts_with("ratio1_p2p_dropped_total{")
                || line.starts_with("ratio1_p2p_connections_closed_total{"))
                && !line.ends_with(" 0")
            {
                let (k, v) = line.rsplit_once(' ').unwrap();
                *odd.entry(k.to_string()).or_default() += v.parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    if !odd.is_empty() {
        eprintln!("[bench] {n} nodes: refusals/drops among licensed nodes: {odd:?}");
    }
    let stat = |f: &dyn Fn(&p2p::View) -> usize| {
        let v: Vec<usize> = views.iter().map(|v| f(&v.read().unwrap())).collect();
        (
            v.iter().min().copied().unwrap_or(0),
            v.iter().sum::<usize>() / v.len().max(1),
            v.iter().max().copied().unwrap_or(0),
        )
    };
    eprintln!(
        "[bench] {n} nodes: connections min/mean/max {:?}, mesh {:?}, negative scores {:?}",
        stat(&|v| v.connections),
        stat(&|v| v.mesh_peers),
        stat(&|v| v.negative_scores)
    );
    drop(handles);
    shards.stop();
    (reach_all(&records, n), formed, coverage(&records, n))
}

/// Half of a raw TCP ping-pong on loopback, in ms.
fn raw_tcp_one_way(samples: usize) -> Vec<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = [0u8; 512];
        while let Ok(()) = s.read_exact(&mut buf) {
            s.write_all(&buf).unwrap();
        }
    });
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    // An echo that stops answering fails the benchmark instead of hanging it.
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let msg = [7u8; 512];
    let mut buf = [0u8; 512];
    let mut out = vec![];
    for _ in 0..samples {
        let t = Instant::now();
        c.write_all(&msg).unwrap();
        c.read_exact(&mut buf).unwrap();
        out.push(t.elapsed().as_secs_f64() * 1000.0 / 2.0);
    }
    drop(c);
    echo.join().unwrap();
    out
}

fn main() {
    if std::env::var("R1_BENCH_NODE").is_ok() {
        return node_main();
    }
    // `cargo test --all-targets` runs this binary too (without --bench):
    // the benchmark runs only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let issuer = ed25519::Keypair::generate();
    let mut base = raw_tcp_one_way(2000);
    let (b50, b99) = (percentile(&mut base, 0.5), percentile(&mut base, 0.99));
    eprintln!("[bench] 3 processes over loopback TCP, heartbeats every {HB:?}; simulations: every {:?}", sim_hb());
    let mut procs = processes(&issuer);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut sims = vec![];
    let sizes: Vec<usize> = std::env::var("R1_BENCH_SIZES")
        .unwrap_or_else(|_| "20,50,100,200".into())
        .split(',')
        .map(|s| s.trim().parse().expect("R1_BENCH_SIZES: comma-separated node counts"))
        .collect();
    for n in sizes {
        eprintln!("[bench] {n} nodes in one process (memory transport)");
        sims.push((n, rt.block_on(simulation(&issuer, n))));
    }
    println!();
    println!(
        "{:<52} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "scenario (heartbeat reaches every peer)", "samples", "p50 ms", "p99 ms", "p50/base", "p99/base"
    );
    println!(
        "{:<52} {:>8} {:>10.3} {:>10.3} {:>10} {:>10}",
        "baseline: raw TCP one-way, loopback",
        base.len(),
        b50,
        b99,
        "1.0",
        "1.0"
    );
    let row = |name: String, v: &mut Vec<f64>| {
        let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
        println!("{:<52} {:>8} {:>10.3} {:>10.3} {:>10.1} {:>10.1}", name, v.len(), p50, p99, p50 / b50, p99 / b99);
    };
    row("3 processes, TCP+noise+yamux, gossipsub".into(), &mut procs);
    let mut failures = vec![];
    for (n, (mut v, formed, cov)) in sims {
        match formed {
            None => failures.push(format!("{n} nodes: the network did not form within 60 s")),
            Some(_) if v.is_empty() => {
                failures.push(format!("{n} nodes: formed, but no heartbeat reached every node in 10 s"))
            }
            Some(_) => {}
        }
        let formed = formed.map(|s| format!("formed in {s:.1}s")).unwrap_or_else(|| "NOT formed in 60s".into());
        row(format!("{n} nodes, memory ({formed}, {:.1}% delivered)", cov * 100.0), &mut v);
    }
    // (the table is printed first: what did form is still worth reading)
    if !failures.is_empty() {
        fail(&failures.join("; "));
    }
}
