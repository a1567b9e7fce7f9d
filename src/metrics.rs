//! Prometheus metrics (prometheus-client), served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
    pub error: String,
}

/// A reason from a fixed set: `&'static str`, so no label value can come
/// from the wire.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// A Kubernetes API verb (a fixed set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: &'static str,
}

/// The Kubernetes API verb of a request, from its method and path.
pub fn api_verb(method: &http::Method, path: &str, query: Option<&str>) -> &'static str {
    let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    match *method {
        http::Method::GET if watch => "watch",
        http::Method::GET => {
            // /api/v1/<rest> or /apis/<group>/<version>/<rest>; a collection
            // is one segment after an optional namespaces/<ns>.
            let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            let rest = match segs.first() {
                Some(&"api") => segs.get(2..),
                Some(&"apis") => segs.get(3..),
                _ => None,
            };
            match rest {
                Some([_]) => "list",
                Some(["namespaces", _, _]) => "list",
                Some(_) => "get",
                None => "other",
            }
        }
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

/// All metrics of the operator process.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<KindLabels, Counter>,
    pub failures: Family<ErrorLabels, Counter>,
    pub stalled: Family<KindLabels, Counter>,
    pub duration: Family<KindLabels, Histogram>,
    pub leader: Gauge,
    pub p2p_peers: Gauge,
    pub p2p_admitted: Counter,
    pub p2p_refused: Family<ReasonLabels, Counter>,
    pub p2p_refused_by_peer: Family<ReasonLabels, Counter>,
    pub p2p_dropped: Family<ReasonLabels, Counter>,
    pub p2p_heartbeats: Counter,
    pub p2p_heartbeats_sent: Counter,
    pub dauth: Family<ReasonLabels, Counter>,
    pub p2p_heartbeat_delay: Histogram,
    pub p2p_restarts: Counter,
    pub p2p_mesh_peers: Gauge,
    pub p2p_connections_closed: Family<ReasonLabels, Counter>,
    pub kube_requests: Family<VerbLabels, Counter>,
    pub cstore: crate::cstore::metrics::CstoreMetrics,
    pub deeploy: crate::deeploy::metrics::DeeployMetrics,
    pub r1fs: crate::r1fs::metrics::R1fsMetrics,
    pub oracle: crate::oracle::metrics::OracleMetrics,
    pub economy: crate::economy::metrics::EconomyMetrics,
    pub edil: crate::edil::metrics::EdilMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ratio1");
        let reconciles = Family::<KindLabels, Counter>::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let stalled = Family::<KindLabels, Counter>::default();
        let duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciliations run, per kind", reconciles.clone());
        registry.register("reconcile_failures", "Reconciliations that failed, per kind and error", failures.clone());
        registry.register("reconcile_stalled", "Reconciliations that found invalid input, per kind", stalled.clone());
        registry.register_with_unit(
            "reconcile_duration",
            "Duration of reconciliations, per kind",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        registry.register("leader", "1 while this replica holds the leader Lease", leader.clone());
        let p2p_peers = Gauge::default();
        let p2p_admitted = Counter::default();
        let p2p_refused = Family::<ReasonLabels, Counter>::default();
        let p2p_refused_by_peer = Family::<ReasonLabels, Counter>::default();
        let p2p_dropped = Family::<ReasonLabels, Counter>::default();
        let p2p_heartbeats = Counter::default();
        let p2p_heartbeats_sent = Counter::default();
        let dauth = Family::<ReasonLabels, Counter>::default();
        let p2p_heartbeat_delay =
            Histogram::new([0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]);
        registry.register_with_unit(
            "p2p_heartbeat_delay",
            "Delay from a heartbeat's publication to its receipt",
            prometheus_client::registry::Unit::Seconds,
            p2p_heartbeat_delay.clone(),
        );
        registry.register("p2p_peers", "Licensed peers heard from within the heartbeat timeout", p2p_peers.clone());
        registry.register("p2p_admitted", "Peers admitted after license verification", p2p_admitted.clone());
        registry.register("p2p_refused", "Peers refused at admission, per reason", p2p_refused.clone());
        registry.register(
            "p2p_refused_by_peer",
            "Times a peer refused this node, per reason",
            p2p_refused_by_peer.clone(),
        );
        registry.register("p2p_dropped", "Network messages dropped, per reason", p2p_dropped.clone());
        registry.register("p2p_heartbeats_received", "Valid heartbeats received", p2p_heartbeats.clone());
        registry.register("p2p_heartbeats_sent", "Heartbeats published", p2p_heartbeats_sent.clone());
        registry.register("dauth_requests", "dAuth requests answered as an oracle, per result", dauth.clone());
        let p2p_restarts = Counter::default();
        registry.register("p2p_restarts", "Times the network task died and was restarted", p2p_restarts.clone());
        let p2p_mesh_peers = Gauge::default();
        registry.register("p2p_mesh_peers", "Peers in the heartbeat topic's gossip mesh", p2p_mesh_peers.clone());
        let p2p_connections_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "p2p_connections_closed",
            "Connections closed, per cause (local, idle, io)",
            p2p_connections_closed.clone(),
        );
        let kube_requests = Family::<VerbLabels, Counter>::default();
        registry.register(
            "kube_requests",
            "Requests this process sent to the Kubernetes API, per verb",
            kube_requests.clone(),
        );
        let cstore = crate::cstore::metrics::CstoreMetrics::register(&mut registry);
        let deeploy = crate::deeploy::metrics::DeeployMetrics::register(&mut registry);
        let r1fs = crate::r1fs::metrics::R1fsMetrics::register(&mut registry);
        let oracle = crate::oracle::metrics::OracleMetrics::register(&mut registry);
        let economy = crate::economy::metrics::EconomyMetrics::register(&mut registry);
        let edil = crate::edil::metrics::EdilMetrics::register(&mut registry);
        Self {
            registry,
            reconciles,
            failures,
            stalled,
            duration,
            leader,
            p2p_peers,
            p2p_admitted,
            p2p_refused,
            p2p_refused_by_peer,
            p2p_dropped,
            p2p_heartbeats,
            p2p_heartbeats_sent,
            dauth,
            p2p_heartbeat_delay,
            p2p_restarts,
            p2p_mesh_peers,
            p2p_connections_closed,
            kube_requests,
            cstore,
            deeploy,
            r1fs,
            oracle,
            economy,
            edil,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and times it until the returned guard drops.
    pub fn start(self: &Arc<Self>, kind: &'static str) -> ReconcileTimer {
        self.reconciles.get_or_create(&KindLabels { kind }).inc();
        ReconcileTimer { metrics: self.clone(), kind, start: Instant::now() }
    }

    /// Counts a request to the Kubernetes API.
    pub fn kube_request<B>(&self, req: &http::Request<B>) {
        let verb = api_verb(req.method(), req.uri().path(), req.uri().query());
        self.kube_requests.get_or_create(&VerbLabels { verb }).inc();
    }

    pub fn failed(&self, kind: &'static str, error: &str) {
        self.failures.get_or_create(&ErrorLabels { kind, error: error.to_string() }).inc();
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Observes the reconcile duration on drop.
pub struct ReconcileTimer {
    metrics: Arc<Metrics>,
    kind: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        let secs = self.start.elapsed().as_secs_f64();
        self.metrics.duration.get_or_create(&KindLabels { kind: self.kind }).observe(secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Arc::new(Metrics::default());
        drop(m.start("R1Pipeline"));
        m.failed("R1Pipeline", "api_500");
        let text = m.render();
        assert!(text.contains("ratio1_reconciles_total{kind=\"R1Pipeline\"} 1"), "{text}");
        assert!(text.contains("ratio1_reconcile_failures_total{kind=\"R1Pipeline\",error=\"api_500\"} 1"), "{text}");
        assert!(text.contains("ratio1_reconcile_duration_seconds_count{kind=\"R1Pipeline\"} 1"), "{text}");
    }

    #[test]
    fn verbs_from_paths() {
        use http::Method as M;
        let v = |m: M, p: &str, q: Option<&str>| api_verb(&m, p, q);
        assert_eq!(v(M::GET, "/apis/apps/v1/namespaces/a/deployments/x", None), "get");
        assert_eq!(v(M::GET, "/apis/apps/v1/namespaces/a/deployments", None), "list");
        assert_eq!(v(M::GET, "/apis/apps/v1/deployments", Some("labelSelector=x")), "list");
        assert_eq!(v(M::GET, "/apis/apps/v1/deployments", Some("watch=true&resourceVersion=1")), "watch");
        assert_eq!(v(M::GET, "/api/v1/namespaces/a", None), "get");
        assert_eq!(v(M::GET, "/api/v1/namespaces", None), "list");
        assert_eq!(v(M::GET, "/api/v1/namespaces/a/pods", None), "list");
        assert_eq!(v(M::GET, "/api/v1/namespaces/a/pods/p/log", None), "get");
        assert_eq!(v(M::GET, "/apis/ratio1.ai/v1alpha1/r1nodes/n", None), "get");
        assert_eq!(v(M::PATCH, "/apis/ratio1.ai/v1alpha1/namespaces/a/r1pipelines/p/status", None), "patch");
        assert_eq!(v(M::GET, "/version", None), "other");
    }
}
