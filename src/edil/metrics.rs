//! EDIL's Prometheus metrics (labels from fixed sets only).

pub use crate::metrics::ReasonLabels;
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;

pub struct EdilMetrics {
    /// Updates this node sent as a participant.
    pub updates_sent: Counter,
    /// Updates this aggregator refused, per reason (`Refusal::label`).
    pub updates_refused: Family<ReasonLabels, Counter>,
    /// Sums this aggregator wrote: `released`, or `withheld` (fewer than
    /// the least participants).
    pub sums: Family<ReasonLabels, Counter>,
    /// Rounds this owner completed, or failed (`failed`: no sum by the
    /// deadline, a withheld sum, a sum that did not open).
    pub rounds: Family<ReasonLabels, Counter>,
    /// Rounds' models this owner stored in R1FS (`stored`), or could not
    /// (`failed`).
    pub models: Family<ReasonLabels, Counter>,
    /// Trainer Jobs this participant `started`, that `succeeded` (their
    /// weights sent on) or `failed` (or ran out of time), or that it
    /// `refused` (an image it does not run).
    pub trainer_jobs: Family<ReasonLabels, Counter>,
}

impl EdilMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            updates_sent: Default::default(),
            updates_refused: Default::default(),
            sums: Default::default(),
            rounds: Default::default(),
            models: Default::default(),
            trainer_jobs: Default::default(),
        };
        let r = registry.sub_registry_with_prefix("edil");
        r.register("updates_sent", "Encrypted updates this node sent as a participant", m.updates_sent.clone());
        r.register("updates_refused", "Updates this aggregator refused, per reason", m.updates_refused.clone());
        r.register("sums", "Sums this aggregator wrote, released or withheld", m.sums.clone());
        r.register("rounds", "Rounds this owner completed or failed", m.rounds.clone());
        r.register("models", "Rounds' models this owner stored in R1FS, or failed to", m.models.clone());
        r.register(
            "trainer_jobs",
            "Trainer Jobs this participant started, or that ended, per outcome",
            m.trainer_jobs.clone(),
        );
        m
    }
}
