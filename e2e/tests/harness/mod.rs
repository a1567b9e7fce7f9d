//! Test harness for the real control planes started by `e2e/kube/up.sh`.
//!
//! Cluster `i` (1-based) is reached through `$R1_E2E_KUBECONFIG_<i>`, else
//! `${R1KUBE_RUN:-/tmp/ratio1-kube}/c<i>/kubeconfig`. Operators run as real
//! processes of the `ratio1` binary. Later federation tests start one per
//! cluster with [`Operator::start`].
#![allow(dead_code)]

pub mod cstore;
pub mod federation;
pub mod logs;
pub mod outsider;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{conditions, wait::await_condition};
use kube::{Client, Config, ResourceExt};
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Namespace the operators under test use for Secrets and the Lease.
pub const OPERATOR_NS: &str = "ratio1-system";

pub fn kubeconfig_path(cluster: usize) -> PathBuf {
    if let Ok(p) = std::env::var(format!("R1_E2E_KUBECONFIG_{cluster}")) {
        return p.into();
    }
    let run = std::env::var("R1KUBE_RUN").unwrap_or_else(|_| "/tmp/ratio1-kube".into());
    PathBuf::from(run).join(format!("c{cluster}")).join("kubeconfig")
}

/// A client for cluster `cluster`.
pub async fn client(cluster: usize) -> Client {
    let path = kubeconfig_path(cluster);
    let kc = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "no test control plane at {} ({e}): run `bash e2e/test.sh`, or `bash e2e/kube/up.sh 3` first",
            path.display()
        )
    });
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("kubeconfig loads");
    Client::try_from(cfg).expect("client builds")
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `secs`
/// naming what was awaited.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for a Warning Event with `reason` about the object named `name`
/// in namespace `ns`.
pub async fn wait_warning_event(client: &Client, ns: &str, reason: &str, name: &str) {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    wait_for(30, &format!("Warning event {reason} about {name}"), || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
            .then_some(())
    })
    .await
}

/// Applies the CRDs (server-side) and waits until they are established.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in ratio1::crd::all() {
        let name = crd.name_any();
        api.patch(&name, &PatchParams::apply("ratio1-e2e").force(), &Patch::Apply(&crd)).await.expect("CRD applies");
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .expect("CRD established in time")
        .expect("CRD watch");
    }
}

/// Creates namespace `name` if missing.
pub async fn ensure_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

/// A namespace of its own for one test, so tests do not see each other.
pub struct TestNs {
    pub name: String,
    client: Client,
}

impl TestNs {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        ensure_namespace(client, &name).await;
        Self { name, client: client.clone() }
    }

    /// Deletes the namespace (the test's objects go with it).
    pub async fn cleanup(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let _ = api.delete(&self.name, &DeleteParams::default()).await;
    }
}

/// A free TCP port on 127.0.0.1.
/// A free port below the kernel's ephemeral range (32768+), so that the
/// outgoing connections of other tests (a 1,000-connection flood runs in
/// parallel) cannot take it between this pick and the operator's bind.
/// Picks are unique within the test binary (a counter from a random start
/// in 28000..32000, clear of the control plane's and nodes' ports).
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let _ = NEXT.compare_exchange(0, rand::random::<u32>() % 2000, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..4000 {
        let port = 28_000 + (NEXT.fetch_add(1, Ordering::Relaxed) % 4000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 28000..32000 on 127.0.0.1")
}

pub fn log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("e2e-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Settings of one operator process under test.
#[derive(Clone, Debug)]
pub struct OperatorOpts {
    pub cluster: usize,
    pub identity: String,
    pub lease_duration_secs: u64,
    pub lease_renew_deadline_secs: u64,
    pub lease_retry_secs: u64,
    pub extra_args: Vec<String>,
}

impl OperatorOpts {
    pub fn new(cluster: usize, identity: &str) -> Self {
        Self {
            cluster,
            identity: identity.into(),
            lease_duration_secs: 4,
            lease_renew_deadline_secs: 3,
            lease_retry_secs: 1,
            extra_args: vec![],
        }
    }

    fn command(&self, metrics_port: u16, api_port: u16) -> std::process::Command {
        let log = std::fs::File::create(log_dir().join(format!("c{}-{}.log", self.cluster, self.identity))).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ratio1"));
        cmd.arg("operator")
            .arg("--namespace")
            .arg(OPERATOR_NS)
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .arg("--api-addr")
            .arg(format!("127.0.0.1:{api_port}"))
            .arg("--identity")
            .arg(&self.identity)
            .arg("--lease-duration-secs")
            .arg(self.lease_duration_secs.to_string())
            .arg("--lease-renew-deadline-secs")
            .arg(self.lease_renew_deadline_secs.to_string())
            .arg("--lease-retry-secs")
            .arg(self.lease_retry_secs.to_string())
            .args(&self.extra_args)
            .env("KUBECONFIG", kubeconfig_path(self.cluster))
            .env("RUST_LOG", std::env::var("R1_E2E_LOG").unwrap_or_else(|_| "info,ratio1=debug".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        cmd
    }
}

/// An operator process, killed when dropped.
pub struct Operator {
    pub child: tokio::process::Child,
    pub metrics_port: u16,
    /// The local API (`/v1/network`).
    pub api_port: u16,
    pub opts: OperatorOpts,
}

impl Operator {
    /// Starts `ratio1 operator` and waits until its /readyz answers.
    pub async fn start(opts: OperatorOpts) -> Self {
        let (metrics_port, api_port) = (free_port(), free_port());
        let mut cmd = tokio::process::Command::from(opts.command(metrics_port, api_port));
        cmd.kill_on_drop(true);
        let child = cmd.spawn().expect("ratio1 binary starts");
        let op = Self { child, metrics_port, api_port, opts };
        wait_for(30, "operator /readyz", || async {
            (http_get(op.metrics_port, "/readyz").await.as_deref() == Some("ok")).then_some(())
        })
        .await;
        op
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Kills the process hard (no lease release), as a crash would.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill");
    }

    pub async fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").await.unwrap_or_default()
    }
}

/// The operator shared by the single-cluster tests on cluster 1: one process
/// for the whole test binary (the tests run in parallel threads, each with
/// its own runtime). It dies with the test binary (PR_SET_PDEATHSIG on a
/// thread that lives as long as the binary).
pub struct Shared {
    pub metrics_port: u16,
    /// Its local API (R1FS's CLI talks to it).
    pub api_port: u16,
}

pub fn shared_operator() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        // Its own thread: the callers are inside tokio runtimes, and the
        // child's PDEATHSIG fires when the thread that forked it ends.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (port, api_port, gateway_port) = (free_port(), free_port(), free_port());
            rt.block_on(async {
                let c = client(1).await;
                install_crds(&c).await;
                ensure_namespace(&c, OPERATOR_NS).await;
            });
            // R1FS on (without CSTORE: this cluster has no federation), its
            // gateway on every address so that pods reach it at their
            // node's IP, and delivery by the operator's own image.
            let data = log_dir().join(format!("r1fs-c1-shared-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&data);
            let mut opts = OperatorOpts::new(1, "shared");
            opts.extra_args = vec![
                format!("--data-dir={}", data.display()),
                format!("--r1fs-gateway-addr=0.0.0.0:{gateway_port}"),
                format!("--r1fs-pod-endpoint=http://$(HOST_IP):{gateway_port}"),
                "--r1fs-fetch-image=ratio1.local/ratio1-operator:dev".into(),
            ];
            let mut cmd = opts.command(port, api_port);
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().expect("ratio1 binary starts");
            rt.block_on(wait_for(30, "shared operator /readyz", || async {
                (http_get(port, "/readyz").await.as_deref() == Some("ok")).then_some(())
            }));
            tx.send((port, api_port)).unwrap();
            let _ = child.wait();
        });
        let (metrics_port, api_port) = rx.recv().expect("shared operator started (see target/e2e-logs/c1-shared.log)");
        Shared { metrics_port, api_port }
    })
}

/// GET of a path on 127.0.0.1:port; the body on HTTP 200.
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    match http_send(port, "GET", path, "").await? {
        (200, body) => Some(body),
        _ => None,
    }
}

/// A request with a JSON body on 127.0.0.1:port (HTTP/1.0, so the server
/// closes when done); the status and the body.
pub async fn http_send(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let (status, body) = http_send_bytes(port, method, path, body).await?;
    Some((status, String::from_utf8(body).ok()?))
}

/// GET on 127.0.0.1:port: the body's bytes if the status is 200.
pub async fn http_get_bytes(port: u16, path: &str) -> Option<Vec<u8>> {
    match http_send_bytes(port, "GET", path, "").await? {
        (200, body) => Some(body),
        _ => None,
    }
}

/// As [`http_send`], the body as bytes.
async fn http_send_bytes(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = vec![];
    s.read_to_end(&mut buf).await.ok()?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, buf[end + 4..].to_vec()))
}

/// Reads a YAML file of the repository as JSON documents.
pub fn yaml_docs(rel: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}
