//! Helpers shared by the benchmarks (`mod common;`): failing with one
//! line, free ports, an etcd process per replica, waiting on a condition,
//! percentiles.

#![allow(dead_code)]

use std::time::{Duration, Instant};

pub fn fail(what: &str) -> ! {
    eprintln!("[bench] FAILED: {what}");
    std::process::exit(1)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An etcd process with its own data dir, killed on drop.
pub struct Etcd {
    child: std::process::Child,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl Etcd {
    pub async fn start(name: &str) -> Self {
        let bin = std::env::var("R1_ETCD").unwrap_or_else(|_| {
            let cache = std::env::var("R1KUBE_CACHE").unwrap_or_else(|_| "/var/cache/ratio1-kube".into());
            format!("{cache}/bin/etcd")
        });
        let dir = std::env::temp_dir().join(format!("r1-bench-etcd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (port, peer) = (free_port(), free_port());
        let (c, p) = (format!("http://127.0.0.1:{port}"), format!("http://127.0.0.1:{peer}"));
        let child = std::process::Command::new(&bin)
            .args(["--name", name, "--data-dir"])
            .arg(&dir)
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
            .args(["--initial-cluster", &format!("{name}={p}"), "--log-level", "error"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| fail(&format!("cannot start {bin}: {e} (run e2e/kube/install.sh, or set R1_ETCD)")));
        let e = Self { child, port, dir };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = etcd_client::Client::connect([e.endpoint()], None).await {
                if c.status().await.is_ok() {
                    break;
                }
            }
            if Instant::now() > end {
                fail(&format!("etcd {name} not healthy within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        e
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn wait(secs: u64, what: &str, f: impl FnMut() -> bool) {
    wait_explained(secs, what, f, String::new).await
}

/// [`wait`], whose failure line ends with what `explain` says then (the
/// state that kept the condition false).
pub async fn wait_explained(secs: u64, what: &str, mut f: impl FnMut() -> bool, explain: impl FnOnce() -> String) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if Instant::now() > end {
            let why = explain();
            fail(&format!("{what} within {secs} s{}{why}", if why.is_empty() { "" } else { ": " }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

use libp2p_identity::Keypair;
use ratio1::cstore::{Cstore, CstoreConfig, NetworkSource};
use ratio1::dauth::license::TrustStore;
use ratio1::metrics::Metrics;
use ratio1::p2p::{NetworkHandle, ServiceLink};
use std::sync::{Arc, Mutex};

/// A CSTORE replica on its own etcd (fast anti-entropy), signing with a
/// fresh key, and the slot its network handle goes into once started.
pub struct Replica {
    pub store: Cstore,
    pub link: ServiceLink,
    pub key: Keypair,
    pub net: Arc<Mutex<Option<NetworkHandle>>>,
    pub source: NetworkSource,
    pub metrics: Arc<Metrics>,
    pub etcd: Etcd,
}

pub async fn replica(name: &str, trust: &TrustStore) -> Replica {
    let etcd = Etcd::start(name).await;
    let net: Arc<Mutex<Option<NetworkHandle>>> = Default::default();
    let source: NetworkSource = {
        let net = net.clone();
        Arc::new(move || net.lock().unwrap().clone())
    };
    let metrics = Arc::new(Metrics::default());
    let cfg = CstoreConfig {
        endpoints: vec![etcd.endpoint()],
        anti_entropy_interval: Duration::from_millis(500),
        ..Default::default()
    };
    let (store, link) =
        Cstore::start(cfg, trust.clone(), metrics.clone(), source.clone()).await.unwrap_or_else(|e| fail(&e));
    if !store.wait_up(Duration::from_secs(30)).await {
        fail(&format!("replica {name} not up"));
    }
    let key = Keypair::generate_ed25519();
    store.set_identity(key.clone());
    Replica { store, link, key, net, source, metrics, etcd }
}
