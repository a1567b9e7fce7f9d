//! Deeploy's Prometheus metrics (labels from fixed sets only).

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;

pub use crate::metrics::ReasonLabels;

pub struct DeeployMetrics {
    /// Intents written (or withdrawn) by this node as an origin.
    pub intents_written: Counter,
    pub intents_withdrawn: Counter,
    /// Placement moves: a target replaced by another.
    pub moves: Counter,
    /// Copies applied / deleted on this node as a target.
    pub copies_applied: Counter,
    pub copies_deleted: Counter,
    /// Intents this node refused, per reason.
    pub refused: Family<ReasonLabels, Counter>,
    pub reports_written: Counter,
    /// Deeploy records dropped as malformed or out of bounds.
    pub rejected: Family<ReasonLabels, Counter>,
    /// Pipelines this node runs for other origins.
    pub copies: Gauge,
}

impl DeeployMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            intents_written: Default::default(),
            intents_withdrawn: Default::default(),
            moves: Default::default(),
            copies_applied: Default::default(),
            copies_deleted: Default::default(),
            refused: Default::default(),
            reports_written: Default::default(),
            rejected: Default::default(),
            copies: Default::default(),
        };
        let r = registry.sub_registry_with_prefix("deeploy");
        r.register("intents_written", "Intents written by this node as an origin", m.intents_written.clone());
        r.register("intents_withdrawn", "Intents withdrawn (pipeline deleted)", m.intents_withdrawn.clone());
        r.register("moves", "Targets replaced by another cluster (failover, refusal)", m.moves.clone());
        r.register("copies_applied", "Pipelines applied here for another origin", m.copies_applied.clone());
        r.register("copies_deleted", "Pipelines removed here when their intent left", m.copies_deleted.clone());
        r.register("refused", "Intents this node refused, per reason", m.refused.clone());
        r.register("reports_written", "Status reports written as a target", m.reports_written.clone());
        r.register("rejected", "Deeploy records dropped (malformed, out of bounds), per reason", m.rejected.clone());
        r.register("copies", "Pipelines this node runs for other origins", m.copies.clone());
        m
    }
}
