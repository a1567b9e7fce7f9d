//! R1FS's Prometheus metrics (labels from fixed sets only).

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;

pub use crate::metrics::ReasonLabels;

pub struct R1fsMetrics {
    pub blocks_served: Counter,
    pub bytes_served: Counter,
    pub blocks_fetched: Counter,
    pub bytes_fetched: Counter,
    /// Blocks and wants dropped: not asked for, not matching their CID,
    /// malformed.
    pub rejected: Family<ReasonLabels, Counter>,
    /// Replicas this node fetched and pinned because it was chosen.
    pub replicas_taken: Counter,
    pub gc_freed: Counter,
    /// Blocks (or pinned DAGs) fetched again after a loss or corruption here.
    pub healed: Counter,
    pub store_blocks: Gauge,
    pub store_bytes: Gauge,
}

impl R1fsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            blocks_served: Default::default(),
            bytes_served: Default::default(),
            blocks_fetched: Default::default(),
            bytes_fetched: Default::default(),
            rejected: Default::default(),
            replicas_taken: Default::default(),
            gc_freed: Default::default(),
            healed: Default::default(),
            store_blocks: Default::default(),
            store_bytes: Default::default(),
        };
        let r = registry.sub_registry_with_prefix("r1fs");
        r.register("blocks_served", "Blocks sent to admitted peers", m.blocks_served.clone());
        r.register("bytes_served", "Bytes of blocks sent to admitted peers", m.bytes_served.clone());
        r.register("blocks_fetched", "Blocks fetched from peers, each verified", m.blocks_fetched.clone());
        r.register("bytes_fetched", "Bytes of blocks fetched from peers", m.bytes_fetched.clone());
        r.register("rejected", "Blocks and wants dropped, per reason", m.rejected.clone());
        r.register(
            "replicas_taken",
            "Replicas fetched and pinned because this node was chosen",
            m.replicas_taken.clone(),
        );
        r.register("gc_freed", "Bytes freed by garbage collection", m.gc_freed.clone());
        r.register("healed", "Blocks or pinned DAGs fetched again after a loss or corruption here", m.healed.clone());
        r.register("store_blocks", "Blocks in the store", m.store_blocks.clone());
        r.register("store_bytes", "Bytes of blocks in the store", m.store_bytes.clone());
        m
    }
}
