//! OracleSync's Prometheus metrics (labels from fixed sets only).

pub use crate::metrics::ReasonLabels;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;

/// OracleSync's Prometheus metrics.
pub struct OracleMetrics {
    /// Misbehaviour seen, per kind ([`super::sync::MISBEHAVIOUR`]).
    pub misbehaviour: Family<ReasonLabels, Counter>,
    /// Epochs decided here, per result (`final`, `faulty`).
    pub epochs: Family<ReasonLabels, Counter>,
    pub last_final_epoch: Gauge,
}

impl OracleMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m =
            Self { misbehaviour: Default::default(), epochs: Default::default(), last_final_epoch: Default::default() };
        let r = registry.sub_registry_with_prefix("oracle");
        r.register(
            "misbehaviour",
            "Oracle misbehaviour seen (equivocation, wrong medians, …), per kind",
            m.misbehaviour.clone(),
        );
        r.register("epochs", "Epochs decided on this node, per result (final, faulty)", m.epochs.clone());
        r.register("last_final_epoch", "The newest epoch with a final record on this node", m.last_final_epoch.clone());
        m
    }
}
