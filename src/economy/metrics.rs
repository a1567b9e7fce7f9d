//! The economy's Prometheus metrics (labels from fixed sets only).

pub use crate::metrics::ReasonLabels;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

pub struct EconomyMetrics {
    /// Verdicts this oracle wrote on claims (`accepted`, `refused`).
    pub verdicts: Family<ReasonLabels, Counter>,
    /// Settled claims in the ledger as this node holds it.
    pub settled_claims: Gauge,
    /// R1 minted by settled claims (a float: for dashboards, not books).
    pub minted_r1: Gauge<f64, AtomicU64>,
    /// PoAI: R1 held in escrow, and burned by payments (floats, as above).
    pub in_escrow_r1: Gauge<f64, AtomicU64>,
    pub burned_r1: Gauge<f64, AtomicU64>,
    /// PoAI proposals this oracle wrote.
    pub proposals: Counter,
    /// Escrows this node wrote for its pipelines (`escrowed`), or refused
    /// (`unfunded`).
    pub escrows: Family<ReasonLabels, Counter>,
}

impl EconomyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            verdicts: Default::default(),
            settled_claims: Default::default(),
            minted_r1: Default::default(),
            in_escrow_r1: Default::default(),
            burned_r1: Default::default(),
            proposals: Default::default(),
            escrows: Default::default(),
        };
        let r = registry.sub_registry_with_prefix("ledger");
        r.register("verdicts", "Verdicts this oracle wrote on reward claims, per result", m.verdicts.clone());
        r.register("settled_claims", "Settled reward claims in the ledger", m.settled_claims.clone());
        r.register("minted_r1", "R1 minted by settled reward claims", m.minted_r1.clone());
        let r = registry.sub_registry_with_prefix("poai");
        r.register("in_escrow_r1", "R1 held in escrow by PoAI jobs not over", m.in_escrow_r1.clone());
        r.register("burned_r1", "R1 burned by PoAI payments", m.burned_r1.clone());
        r.register(
            "proposals",
            "PoAI proposals (who ran which job in an epoch) this oracle wrote",
            m.proposals.clone(),
        );
        r.register("escrows", "Escrows of this node's pipelines, per result", m.escrows.clone());
        m
    }
}
