//! Logging (tracing) and the HTTP endpoints `/metrics`, `/healthz`, `/readyz`.

use crate::metrics::Metrics;
use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

/// Log output format.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber; `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube_runtime=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => {
            registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).try_init()
        }
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).try_init(),
    };
}

/// What the probe endpoints report.
#[derive(Default)]
pub struct Health {
    /// Set once the API server answered and the CRDs are installed.
    pub ready: AtomicBool,
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    view: crate::p2p::SharedView,
}

/// Serves the endpoints on an already bound listener until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    view: crate::p2p::SharedView,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/v1/network", get(network))
        .with_state(AppState { metrics, health, view });
    axum::serve(listener, app).await
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.render())
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// This node's view of the network as JSON (`ratio1 network peers` reads it).
async fn network(State(s): State<AppState>) -> impl IntoResponse {
    let view = s.view.read().map(|v| v.clone()).unwrap_or_default();
    ([("content-type", "application/json")], serde_json::to_string(&view).unwrap_or_default())
}

/// GET of a JSON document over plain HTTP (the CLI reads an operator's
/// endpoints with it).
pub async fn get_json(url: &str) -> anyhow::Result<serde_json::Value> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = url.parse().map_err(|_| anyhow::anyhow!("{url:?} is not a URL"))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), client.get(uri))
        .await
        .map_err(|_| anyhow::anyhow!("{url} did not answer within 10 s"))?
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
    anyhow::ensure!(resp.status().is_success(), "{url} answered {}", resp.status());
    let body = resp.into_body().collect().await.map_err(|e| anyhow::anyhow!("reading {url}: {e}"))?.to_bytes();
    serde_json::from_slice(&body).map_err(|e| anyhow::anyhow!("{url} did not return JSON: {e}"))
}
