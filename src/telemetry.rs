//! Logging (tracing) and the HTTP endpoints `/metrics`, `/healthz`, `/readyz`.

use crate::metrics::Metrics;
use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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

/// Installs the global subscriber; `RUST_LOG` filters (default
/// `info,kube_runtime=warn`).
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

/// How long a watch may fail without a break before `/healthz` fails (a
/// restart renews connections and credentials).
pub const WATCH_STUCK: Duration = Duration::from_secs(300);

/// What the probe endpoints report.
#[derive(Default)]
pub struct Health {
    /// Set once the API server answered and the CRDs are installed.
    pub ready: AtomicBool,
    /// The network supervisor's view of the network task, when there is one.
    pub network: Option<Arc<crate::p2p::supervisor::NetHealth>>,
    /// The controllers' watches.
    pub watches: Arc<WatchHealth>,
    /// This cluster's CSTORE replica, when configured: not ready while its
    /// etcd is unreachable.
    pub cstore: Option<crate::cstore::Cstore>,
}

/// Which of the controllers' watches are failing, and since when.
#[derive(Default)]
pub struct WatchHealth {
    failing: Mutex<HashMap<&'static str, Instant>>,
}

impl WatchHealth {
    /// Records one event (or error) of watch `name`.
    pub fn observe(&self, name: &'static str, ok: bool) {
        let mut failing = self.failing.lock().expect("watch health lock");
        if ok {
            failing.remove(name);
        } else {
            failing.entry(name).or_insert_with(Instant::now);
        }
    }

    /// The watch that has failed without a break for longest, if longer
    /// than `limit`.
    pub fn stuck(&self, limit: Duration) -> Option<(&'static str, Duration)> {
        let failing = self.failing.lock().expect("watch health lock");
        failing.iter().map(|(n, t)| (*n, t.elapsed())).filter(|(_, d)| *d > limit).max_by_key(|(_, d)| *d)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on an already bound listener
/// until the process ends. Nothing here names peers or licenses: this port
/// is open to the cluster for scraping and probes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health });
    axum::serve(listener, app).await
}

/// Serves the local API (`/v1/network`: peers, license ids, the dAuth log;
/// `/v1/cstore/…`: the replicated store) on its own listener, loopback by
/// default.
pub async fn serve_api(
    listener: tokio::net::TcpListener,
    view: crate::p2p::SharedView,
    services: Router,
) -> std::io::Result<()> {
    let app = Router::new().route("/v1/network", get(network)).with_state(view).merge(services);
    axum::serve(listener, app).await
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    if let Some((watch, d)) = s.health.watches.stuck(WATCH_STUCK) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("the {watch} watch has failed for {} s", d.as_secs()));
    }
    match &s.health.network {
        Some(n) if !n.live() => (StatusCode::SERVICE_UNAVAILABLE, "network task keeps failing".to_string()),
        _ => (StatusCode::OK, "ok".to_string()),
    }
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.render())
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if !s.health.ready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    } else if s.health.network.as_ref().is_some_and(|n| !n.ready()) {
        (StatusCode::SERVICE_UNAVAILABLE, "network not running")
    } else if s.health.cstore.as_ref().is_some_and(|c| !c.is_up()) {
        (StatusCode::SERVICE_UNAVAILABLE, "CSTORE's etcd is unreachable")
    } else {
        (StatusCode::OK, "ok")
    }
}

/// This node's view of the network as JSON (`ratio1 network peers` reads it).
async fn network(State(view): State<crate::p2p::SharedView>) -> impl IntoResponse {
    let body = view.read().map(|v| serde_json::to_string(&*v).unwrap_or_default()).unwrap_or_default();
    ([("content-type", "application/json")], body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_is_stuck_only_after_failing_without_a_break() {
        let w = WatchHealth::default();
        w.observe("pods", false);
        assert_eq!(w.stuck(Duration::from_secs(60)), None, "just started failing");
        assert_eq!(w.stuck(Duration::ZERO).map(|(n, _)| n), Some("pods"));
        w.observe("pods", true);
        assert_eq!(w.stuck(Duration::ZERO), None, "an event clears it");
    }
}
