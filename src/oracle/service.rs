//! The OracleSync task: mirrors the `oracle/` records of CSTORE into a
//! [`Collector`], runs [`plan`] at each epoch's end, after every batch of
//! changes and every 200 ms, and writes what it returns. It runs on the leader of every node with
//! CSTORE: oracles take part, every node keeps the final records and its
//! own availability (R1Node status).

use super::agree::{Rules, Table};
use super::sync::{
    is_registration, plan, Collector, Decided, EpochState, Inputs, Report, Write, ORACLE_PREFIX, REGISTRATION_SKEW_MS,
};
use crate::cstore::{Change, Cstore, NetworkSource};
use crate::dauth::license::TrustStore;
use crate::metrics::{Metrics, ReasonLabels};
use futures::StreamExt;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Settings of `ratio1 operator` for OracleSync.
#[derive(Clone, Debug)]
pub struct OracleConfig {
    /// Each step's bound after an epoch ends: tables by 1×, medians by
    /// 2×, signatures by 3× (a step goes on earlier once every expected
    /// oracle is in).
    pub phase: Duration,
    pub rules: Rules,
}

impl Default for OracleConfig {
    fn default() -> Self {
        Self { phase: Duration::from_secs(30), rules: Rules::default() }
    }
}

/// What `ratio1 oracle status` shows (`GET /v1/oracle`).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OracleStatus {
    /// This node takes part (role `oracle` with an MND/GND license).
    pub oracle: bool,
    pub registered: Vec<String>,
    /// The last two closed epochs, oldest first.
    pub epochs: Vec<EpochState>,
    pub last_final: Option<u64>,
    /// This node's agreed availability in the last decided epoch: its
    /// value in a final record (0 when absent from it), or 255 when the
    /// epoch was faulty (every licensed node counts as fully available).
    pub availability: Option<u8>,
    pub availability_epoch: Option<u64>,
    /// Recent misbehaviour seen (newest last).
    pub reports: Vec<Report>,
}

struct Inner {
    status: RwLock<OracleStatus>,
    /// The final epochs' tables, for the ledger.
    history: RwLock<BTreeMap<u64, Decided>>,
    /// Registered oracles and since when (Unix ms).
    registered: RwLock<BTreeMap<String, u64>>,
}

/// OracleSync, once this replica leads with CSTORE on.
pub type Slot = Arc<std::sync::OnceLock<Oracle>>;

/// `GET /v1/oracle`: [`OracleStatus`] (503 while OracleSync does not run).
pub fn routes(slot: Slot) -> axum::Router {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    axum::Router::new()
        .route(
            "/v1/oracle",
            axum::routing::get(|axum::extract::State(slot): axum::extract::State<Slot>| async move {
                match slot.get() {
                    Some(o) => axum::Json(o.status()).into_response(),
                    None => crate::http::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "OracleSync is not running here: this replica does not lead, or CSTORE is off",
                    )
                    .into_response(),
                }
            }),
        )
        .with_state(slot)
}

/// A handle on OracleSync. Clones share it.
#[derive(Clone)]
pub struct Oracle {
    inner: Arc<Inner>,
}

/// What OracleSync runs on.
pub struct Parts {
    pub cstore: Cstore,
    pub view: crate::p2p::SharedView,
    pub network: NetworkSource,
    pub trust: TrustStore,
    pub metrics: Arc<Metrics>,
}

impl Oracle {
    pub fn start(cfg: OracleConfig, parts: Parts) -> Self {
        let inner = Arc::new(Inner {
            status: RwLock::new(OracleStatus::default()),
            history: Default::default(),
            registered: Default::default(),
        });
        tokio::spawn(run(cfg, parts, Arc::downgrade(&inner)));
        Self { inner }
    }

    pub fn status(&self) -> OracleStatus {
        self.inner.status.read().expect("status lock").clone()
    }

    /// Reads the final epochs' tables (every one known, oldest first).
    pub fn with_history<R>(&self, f: impl FnOnce(&BTreeMap<u64, Decided>) -> R) -> R {
        f(&self.inner.history.read().expect("history lock"))
    }

    /// The oracles registered before `t_ms` (Unix ms).
    pub fn registered_at(&self, t_ms: u64) -> BTreeSet<String> {
        let r = self.inner.registered.read().expect("registered lock");
        r.iter().filter(|(_, since)| **since < t_ms).map(|(p, _)| p.clone()).collect()
    }

    /// An OracleSync fed by hand, with no task (tests of what reads it).
    #[doc(hidden)]
    pub fn fixed(history: BTreeMap<u64, Decided>, registered: BTreeMap<String, u64>) -> Self {
        Self {
            inner: Arc::new(Inner {
                status: RwLock::new(OracleStatus::default()),
                history: RwLock::new(history),
                registered: RwLock::new(registered),
            }),
        }
    }
}

/// Step records live this long: enough to audit recent epochs.
fn step_ttl(length_ms: u64) -> Duration {
    Duration::from_millis(length_ms.saturating_mul(8))
        .clamp(Duration::from_secs(3600), Duration::from_secs(30 * 86_400))
}

/// Reads every OracleSync record; false when CSTORE could not be read
/// (try again: planning on a partial view could finalise alone).
async fn load(c: &mut Collector, store: &Cstore, trust: &TrustStore, current: u64, m: &Metrics) -> bool {
    match store.list(ORACLE_PREFIX).await {
        Ok(mut records) => {
            // Registrations first: step records of unregistered writers are
            // not looked at.
            records.sort_by_key(|r| !is_registration(&r.slot.key));
            for r in records {
                c.observe(&r, trust, current, now());
            }
            count(c, m);
            c.loaded = true;
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "OracleSync cannot read CSTORE; reading again");
            false
        }
    }
}

fn now() -> u64 {
    crate::p2p::now_ms() as u64
}

/// Logs and counts the reports the collector made since the last call.
fn count(c: &mut Collector, m: &Metrics) {
    for r in std::mem::take(&mut c.unseen) {
        tracing::warn!(oracle = %r.oracle, epoch = ?r.epoch, kind = r.kind, detail = %r.detail, "oracle misbehaviour");
        m.oracle.misbehaviour.get_or_create(&ReasonLabels { reason: r.kind }).inc();
    }
}

/// What the running network gives OracleSync at one moment.
struct Snapshot {
    me: String,
    key: libp2p_identity::Keypair,
    license: Option<String>,
    observed: Option<(u64, Table)>,
    online: BTreeSet<String>,
}

fn snapshot(p: &Parts, epochs: &super::epoch::Epochs) -> Option<Snapshot> {
    let handle = (p.network)()?;
    let mut v = p.view.write().expect("view lock");
    // Closes the epoch now rather than at the network's next tick.
    v.close_epochs(now(), epochs);
    let observed = v.epoch.as_ref().and_then(|e| e.complete.then_some((e.last?, e.observed.clone())));
    let mut online: BTreeSet<String> =
        v.fresh_peers(crate::p2p::now_ms()).iter().filter(|p| p.is_oracle()).map(|p| p.peer_id.clone()).collect();
    let me = handle.peer_id.to_string();
    if v.oracle_license.is_some() {
        online.insert(me.clone());
    }
    Some(Snapshot { me, key: handle.keypair.clone(), license: v.oracle_license.clone(), observed, online })
}

async fn run(cfg: OracleConfig, p: Parts, status: std::sync::Weak<Inner>) {
    let mut c = Collector::default();
    let mut loads = u64::MAX;
    let mut changes = futures::stream::pending::<Change>().boxed();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut decided: BTreeSet<u64> = BTreeSet::new();
    // A step record decided but not yet known written: written again as
    // it is (never recomputed, which could publish a second value).
    let mut pending: BTreeMap<String, (serde_json::Value, Option<Duration>)> = BTreeMap::new();
    let started_ms = now();
    let mut refused: BTreeSet<String> = BTreeSet::new();
    loop {
        let clock = p.view.read().expect("view lock").clock;
        let Some(epochs) = clock else {
            // The network sets the clock; nothing to do before.
            tick.tick().await;
            continue;
        };
        let current = epochs.at(now()).unwrap_or(0);
        // First run, a reloaded replica or a watcher that fell behind:
        // read everything again.
        if loads != p.cstore.loads() {
            loads = p.cstore.loads();
            changes = match p.cstore.watch(ORACLE_PREFIX) {
                Ok(w) => w.boxed(),
                Err(_) => futures::stream::pending().boxed(),
            };
            // Registrations only grow: kept, so a re-read cannot move when
            // one counts from.
            let registered = std::mem::take(&mut c.registered);
            let history = std::mem::take(&mut c.history);
            let (reported, reports) = (std::mem::take(&mut c.reported), std::mem::take(&mut c.reports));
            c = Collector {
                registered,
                history,
                reported,
                reports,
                clock: Some(epochs),
                registration_skew_ms: (epochs.length_ms / 4).min(REGISTRATION_SKEW_MS),
                ..Default::default()
            };
            c.exclude_reported();
            if !load(&mut c, &p.cstore, &p.trust, current, &p.metrics).await {
                loads = u64::MAX;
                tick.tick().await;
                continue;
            }
        }
        let (_, end) = epochs.bounds(current);
        tokio::select! {
            ch = changes.next() => {
                // Takes in everything already queued, then plans at once.
                match crate::cstore::drain_ready(ch, &mut changes) {
                    Some(batch) => {
                        for r in batch.into_iter().filter_map(|ch| ch.record) {
                            c.observe(&r, &p.trust, current, now());
                        }
                    }
                    // Fell behind: reload on the next turn.
                    None => loads = u64::MAX,
                }
            }
            _ = tick.tick() => {}
            // The epoch's end: its local table goes out at once.
            _ = tokio::time::sleep(Duration::from_millis(end.saturating_sub(now()) + 5)) => {}
        }
        let Some(inner) = status.upgrade() else { return };
        let current = epochs.at(now()).unwrap_or(0);
        c.prune(current);
        let Some(snap) = snapshot(&p, &epochs) else { continue };
        let inputs = Inputs {
            now_ms: now(),
            me: &snap.me,
            key: &snap.key,
            license: snap.license.as_deref(),
            epochs,
            observed: snap.observed.as_ref().map(|(e, t)| (*e, t)),
            online: &snap.online,
            // A clock taken from an oracle may be shorter than this node's
            // flags allowed for.
            phase_ms: (cfg.phase.as_millis() as u64).min(epochs.length_ms / 4),
            started_ms,
            rules: cfg.rules,
        };
        let (writes, states) = plan(&mut c, &inputs);
        count(&mut c, &p.metrics);
        for w in writes {
            let ttl = match &w {
                Write::Registration(_) | Write::Final(_) => None,
                _ => Some(step_ttl(epochs.length_ms)),
            };
            let key = w.key(&snap.me);
            pending.entry(key).or_insert((w.value(), ttl));
        }
        for (key, (value, ttl)) in std::mem::take(&mut pending) {
            if refused.contains(&key) {
                continue;
            }
            match p.cstore.set(&key, &value, ttl).await {
                // Taken in at once: the next turn must not write it again.
                Ok(rec) => {
                    c.observe(&rec, &p.trust, current, now());
                }
                Err(crate::cstore::CstoreError::Invalid(e)) => {
                    tracing::error!(%key, error = %e, "OracleSync record refused (dropped)");
                    // Not planned again (e.g. a table over CSTORE's size limit).
                    if refused.len() >= 1_024 {
                        refused.clear();
                    }
                    refused.insert(key);
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "OracleSync write failed; retried as it is");
                    pending.insert(key, (value, ttl));
                }
            }
        }
        for s in &states {
            if matches!(s.state, "final" | "faulty") && decided.insert(s.epoch) {
                let labels = ReasonLabels { reason: s.state };
                p.metrics.oracle.epochs.get_or_create(&labels).inc();
                match s.state {
                    "final" => {
                        tracing::info!(epoch = s.epoch, signers = s.signers, registered = s.registered, after_ms = ?s.final_after_ms, "epoch final")
                    }
                    _ => tracing::warn!(epoch = s.epoch, reason = ?s.reason, "epoch faulty"),
                }
            }
        }
        decided.retain(|e| *e + super::sync::KEEP_EPOCHS >= current);
        let decided_last = states.iter().rev().find(|s| matches!(s.state, "final" | "faulty"));
        let availability = decided_last.map(|s| match c.finals.get(&s.epoch) {
            Some(r) => *r.agreed.table.get(&snap.me).unwrap_or(&0),
            None => 255,
        });
        if let Some(e) = c.finals.keys().next_back() {
            p.metrics.oracle.last_final_epoch.set(*e as i64);
        }
        let st = OracleStatus {
            oracle: snap.license.is_some(),
            registered: c.registered.keys().cloned().collect(),
            epochs: states.clone(),
            last_final: c.finals.keys().next_back().copied(),
            availability,
            availability_epoch: decided_last.map(|s| s.epoch),
            reports: c.reports.iter().cloned().collect(),
        };
        *inner.status.write().expect("status lock") = st;
        // Copied when they changed (the history only grows).
        if inner.history.read().expect("history lock").len() != c.history.len() {
            *inner.history.write().expect("history lock") = c.history.clone();
        }
        let registered: BTreeMap<String, u64> = c.registered.iter().map(|(p, r)| (p.clone(), r.since_ms)).collect();
        if *inner.registered.read().expect("registered lock") != registered {
            *inner.registered.write().expect("registered lock") = registered;
        }
    }
}
