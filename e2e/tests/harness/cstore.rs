//! CSTORE under test: one real etcd process per cluster (own data dir and
//! ports, never the etcd behind the Kubernetes API servers), a federation
//! whose operators each use their own, and the `ratio1 cstore` CLI.

use super::federation::Federation;
use super::*;

/// The Kubernetes API servers' etcd port in this run (e2e/test.sh).
fn kube_etcd_port() -> u16 {
    std::env::var("R1KUBE_ETCD_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(23790)
}

fn etcd_bin() -> PathBuf {
    let cache = std::env::var("R1KUBE_CACHE").unwrap_or_else(|_| "/var/cache/ratio1-kube".into());
    PathBuf::from(cache).join("bin/etcd")
}

/// An etcd process of its own, killed when dropped.
pub struct Etcd {
    child: Option<tokio::process::Child>,
    pub port: u16,
    peer_port: u16,
    dir: PathBuf,
    name: String,
}

impl Etcd {
    /// Starts a fresh etcd (new data dir) and waits until it is healthy.
    pub async fn start(name: &str) -> Self {
        let dir = log_dir().join(format!("etcd-{name}-{}", rand::random::<u32>()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (port, peer_port) = (free_port(), free_port());
        assert_ne!(port, kube_etcd_port(), "CSTORE's etcd must not be the Kubernetes API servers' etcd");
        let mut e = Self { child: None, port, peer_port, dir, name: name.into() };
        e.spawn().await;
        e
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(log_dir().join(format!("etcd-{}.log", self.name))).unwrap();
        let client = format!("http://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = tokio::process::Command::new(etcd_bin());
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .arg("--initial-cluster")
            .arg(format!("{}={peer}", self.name))
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        self.child = Some(cmd.spawn().expect("etcd starts (installed by e2e/kube/install.sh)"));
        let port = self.port;
        wait_for(30, &format!("etcd {} healthy", self.name), || async move {
            http_get(port, "/health").await.filter(|b| b.contains("true")).map(|_| ())
        })
        .await;
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills it hard, as a crash would.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    /// Starts it again on the same data dir and ports.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A federation whose every node runs CSTORE on its own etcd, with fast
/// anti-entropy (1 s), and leases that outlast a 10 s freeze of a process.
pub async fn federation(clusters: &[usize]) -> (Federation, Vec<Etcd>) {
    federation_each(clusters, |_, _| {}).await
}

/// As [`federation`], each node's settings then adjusted by `configure`.
pub async fn federation_each(
    clusters: &[usize],
    configure: impl Fn(usize, &mut OperatorOpts),
) -> (Federation, Vec<Etcd>) {
    federation_oracles(clusters, 1, configure).await
}

/// As [`federation_each`], the first `oracles` nodes oracles.
pub async fn federation_oracles(
    clusters: &[usize],
    oracles: usize,
    configure: impl Fn(usize, &mut OperatorOpts),
) -> (Federation, Vec<Etcd>) {
    let mut etcds = vec![];
    for c in clusters {
        etcds.push(Etcd::start(&format!("cstore-c{c}")).await);
    }
    let ports: std::collections::BTreeSet<u16> = etcds.iter().map(|e| e.port).collect();
    assert_eq!(ports.len(), etcds.len(), "each cluster has its own CSTORE etcd");
    let endpoints: Vec<String> = etcds.iter().map(|e| e.endpoint()).collect();
    let fed = Federation::start_oracles(clusters, oracles, |k, opts| {
        opts.extra_args.extend([format!("--cstore-endpoints={}", endpoints[k]), "--cstore-anti-entropy-secs=1".into()]);
        (opts.lease_duration_secs, opts.lease_renew_deadline_secs) = (40, 30);
        configure(k, opts);
    })
    .await;
    (fed, etcds)
}

/// Sets the value that follows `flag` in an operator's arguments.
pub fn set_flag(opts: &mut OperatorOpts, flag: &str, value: &str) {
    let i = opts.extra_args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} is not set"));
    opts.extra_args[i + 1] = value.to_string();
}

/// Runs `ratio1 cstore ARGS` against the operator's local API; returns the
/// exit status, stdout and stderr.
pub async fn cli(api_port: u16, args: &[&str]) -> (bool, String, String) {
    command("cstore", api_port, args).await
}

/// Runs `ratio1 SUBCOMMAND --endpoint <the operator's local API> ARGS`;
/// returns the exit status, stdout and stderr.
pub async fn command(subcommand: &str, api_port: u16, args: &[&str]) -> (bool, String, String) {
    let (ok, out, err) = command_bytes(subcommand, api_port, args).await;
    (ok, String::from_utf8_lossy(&out).trim().to_string(), err)
}

/// As [`command`], stdout as the bytes written (R1FS content).
pub async fn command_bytes(subcommand: &str, api_port: u16, args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ratio1"))
        .arg(subcommand)
        .arg("--endpoint")
        .arg(format!("http://127.0.0.1:{api_port}"))
        .args(args)
        .output()
        .await
        .expect("ratio1 runs");
    (out.status.success(), out.stdout, String::from_utf8_lossy(&out.stderr).trim().to_string())
}

/// `ratio1 cstore ARGS`, which must succeed; its stdout.
pub async fn ok(api_port: u16, args: &[&str]) -> String {
    let (ok, out, err) = cli(api_port, args).await;
    assert!(ok, "ratio1 cstore {args:?} failed: {err}");
    out
}

/// A key's value through the local API (`None`: not found).
pub async fn value(api_port: u16, key: &str) -> Option<serde_json::Value> {
    let body = http_get(api_port, &format!("/v1/cstore/get?key={key}")).await?;
    Some(serde_json::from_str::<serde_json::Value>(&body).ok()?["value"].clone())
}

/// Waits until every running node's replica has the same digest.
pub async fn converged(fed: &Federation, secs: u64, what: &str) {
    wait_for(secs, what, || async {
        let mut digests = vec![];
        for n in fed.nodes.iter().filter(|n| n.op.is_some()) {
            let body = http_get(n.op().api_port, "/v1/cstore/status").await?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            digests.push(v["digest"].as_str()?.to_string());
        }
        digests.windows(2).all(|w| w[0] == w[1]).then_some(())
    })
    .await;
}
