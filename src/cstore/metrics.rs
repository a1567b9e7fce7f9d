//! CSTORE's Prometheus metrics (labels from fixed sets only).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Where an applied (or skipped) record came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginLabels {
    pub origin: &'static str,
}

pub use crate::metrics::ReasonLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

pub const LOCAL: OriginLabels = OriginLabels { origin: "local" };
pub const GOSSIP: OriginLabels = OriginLabels { origin: "gossip" };
pub const ANTI_ENTROPY: OriginLabels = OriginLabels { origin: "anti_entropy" };

pub struct CstoreMetrics {
    /// Records written to the local replica, per origin.
    pub applied: Family<OriginLabels, Counter>,
    /// Records not written because the replica holds a newer version.
    pub superseded: Family<OriginLabels, Counter>,
    /// Records refused, per reason.
    pub rejected: Family<ReasonLabels, Counter>,
    pub gossip_records: Family<DirectionLabels, Counter>,
    pub gossip_bytes: Family<DirectionLabels, Counter>,
    /// Own writes not gossiped (no network, or the queue was full).
    pub gossip_skipped: Counter,
    pub anti_entropy_rounds: Family<ResultLabels, Counter>,
    pub anti_entropy_bytes: Family<DirectionLabels, Counter>,
    pub anti_entropy_records: Counter,
    /// Delay from a record's clock to its arrival in this replica.
    pub lag: Histogram,
    pub records: Gauge,
    /// 1 while the replica's etcd answers and its index is loaded.
    pub up: Gauge,
    pub expired: Counter,
    pub tombstones_collected: Counter,
}

impl CstoreMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            applied: Default::default(),
            superseded: Default::default(),
            rejected: Default::default(),
            gossip_records: Default::default(),
            gossip_bytes: Default::default(),
            gossip_skipped: Default::default(),
            anti_entropy_rounds: Default::default(),
            anti_entropy_bytes: Default::default(),
            anti_entropy_records: Default::default(),
            lag: Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            records: Default::default(),
            up: Default::default(),
            expired: Default::default(),
            tombstones_collected: Default::default(),
        };
        let r = registry.sub_registry_with_prefix("cstore");
        r.register("applied", "Records written to the local replica, per origin", m.applied.clone());
        r.register(
            "superseded",
            "Records skipped: the replica holds a newer version, per origin",
            m.superseded.clone(),
        );
        r.register("rejected", "Records refused (signature, ownership, proof, clock), per reason", m.rejected.clone());
        r.register("gossip_records", "Records gossiped, per direction", m.gossip_records.clone());
        r.register_with_unit("gossip", "Gossip bytes, per direction", Unit::Bytes, m.gossip_bytes.clone());
        r.register("gossip_skipped", "Own writes not gossiped (left to anti-entropy)", m.gossip_skipped.clone());
        r.register("anti_entropy_rounds", "Anti-entropy rounds, per result", m.anti_entropy_rounds.clone());
        r.register_with_unit(
            "anti_entropy",
            "Anti-entropy bytes, per direction",
            Unit::Bytes,
            m.anti_entropy_bytes.clone(),
        );
        r.register("anti_entropy_records", "Records fetched by anti-entropy", m.anti_entropy_records.clone());
        r.register_with_unit(
            "replication_lag",
            "Delay from a replicated record's clock to its write here",
            Unit::Seconds,
            m.lag.clone(),
        );
        r.register("records", "Records in the local replica (tombstones included)", m.records.clone());
        r.register("up", "1 while the replica's etcd answers and its index is loaded", m.up.clone());
        r.register("expired", "Records deleted at the end of their TTL", m.expired.clone());
        r.register("tombstones_collected", "Tombstones deleted past the GC horizon", m.tombstones_collected.clone());
        m
    }
}
