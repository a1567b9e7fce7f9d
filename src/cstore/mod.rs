//! CSTORE: the network's replicated state, each cluster's replica in its
//! own etcd.
//!
//! Pure core: [`record`] (records, hybrid logical clock, the merge rule),
//! [`rules`] (who may write what), [`index`] (the replica's index and the
//! anti-entropy digests), [`wire`] (messages). I/O: the [`Cstore`] handle
//! (reads and writes against etcd; cloneable, used by the local API and by
//! other modules), the tasks it starts (etcd watch feeding the index and
//! the watchers, TTL and tombstone sweeper) and [`sync`] (gossip of own
//! writes, checks of received ones, anti-entropy with one peer per round).
//!
//! A write is one etcd transaction that compares the key's `mod_revision`
//! with the one the index holds, so an older record never overwrites a
//! newer one even with concurrent writers; a lost race re-reads and
//! decides again by last-writer-wins on (HLC, writer PeerId).

pub mod api;
mod commit;
pub mod index;
pub mod metrics;
pub mod record;
pub mod rules;
pub mod sync;
pub mod wire;

use crate::dauth::license::{RevocationSource, TrustStore};
use crate::metrics::Metrics;
use crate::p2p::NetworkHandle;
use commit::apply;
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};
use index::{Entry, Index};
use libp2p_identity::{Keypair, PeerId};
use record::{Clock, Invalid, Record, Slot};
use serde::Serialize;
use sha2::Digest as _;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Settings of a replica.
#[derive(Clone, Debug)]
pub struct CstoreConfig {
    /// etcd client URLs of this cluster's own CSTORE etcd.
    pub endpoints: Vec<String>,
    pub tls: TlsFiles,
    /// Root of CSTORE's keys in etcd.
    pub prefix: String,
    /// Time between anti-entropy rounds (one random peer each).
    pub anti_entropy_interval: Duration,
    /// Tombstones older than this are deleted (a replica that was away
    /// longer than this may bring a deleted key back: see docs/protocols.md).
    pub tombstone_horizon: Duration,
    /// Records whose clock is further ahead of ours than this are refused.
    pub max_clock_skew: Duration,
    /// Least time between two gossiped batches of own writes: a write
    /// waits at most this long, and batches stay under the receivers'
    /// per-author rate (p2p's `records_rate_per_sec`).
    pub gossip_flush: Duration,
}

impl Default for CstoreConfig {
    fn default() -> Self {
        Self {
            endpoints: vec![],
            tls: TlsFiles::default(),
            prefix: "/ratio1/cstore/".into(),
            anti_entropy_interval: Duration::from_secs(10),
            tombstone_horizon: Duration::from_secs(24 * 3600),
            max_clock_skew: Duration::from_secs(60),
            gossip_flush: Duration::from_millis(7),
        }
    }
}

/// TLS client authentication to etcd (PEM files).
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Why a CSTORE call failed.
#[derive(Debug, thiserror::Error)]
pub enum CstoreError {
    /// Input the caller must fix.
    #[error("{0}")]
    Invalid(String),
    #[error("this node has no identity yet to sign with: its R1Node has not joined the network")]
    NoIdentity,
    #[error("CSTORE's etcd is unavailable: {0}")]
    Unavailable(String),
}

impl From<etcd_client::Error> for CstoreError {
    fn from(e: etcd_client::Error) -> Self {
        CstoreError::Unavailable(e.to_string())
    }
}

/// A change seen in the replica (from any writer).
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    #[serde(flatten)]
    pub slot: Slot,
    /// The record now held; `None`: the key is gone (TTL, or tombstone
    /// collected). A tombstone record means deleted.
    pub record: Option<Record>,
}

/// `first` (a watch's next change) and every change already queued behind
/// it, to fold once; `None` when the watch ended (the watcher fell behind:
/// read everything again).
pub fn drain_ready(
    first: Option<Change>,
    changes: &mut (impl futures::Stream<Item = Change> + Unpin),
) -> Option<Vec<Change>> {
    let mut batch = vec![first?];
    loop {
        match futures::FutureExt::now_or_never(futures::StreamExt::next(changes)) {
            Some(Some(c)) => batch.push(c),
            Some(None) => return None,
            None => return Some(batch),
        }
    }
}

/// The running network as CSTORE needs it (absent while it is down).
pub type NetworkSource = Arc<dyn Fn() -> Option<NetworkHandle> + Send + Sync>;

#[derive(Default)]
struct State {
    clock: Clock,
    index: Index,
    up: bool,
}

struct Inner {
    cfg: CstoreConfig,
    client: etcd_client::Client,
    state: Mutex<State>,
    identity: RwLock<Option<Keypair>>,
    trust: TrustStore,
    metrics: Arc<Metrics>,
    changes: broadcast::Sender<Change>,
    outbound: mpsc::Sender<Record>,
    commits: mpsc::Sender<commit::Pending>,
    /// Writes in progress (a lone one skips the committer).
    writers: std::sync::atomic::AtomicUsize,
    network: NetworkSource,
    sync: Mutex<sync::SyncStatus>,
    /// Times the index was (re)loaded from a full scan: changes between a
    /// lost etcd watch and the rescan reach no watcher, so a watcher that
    /// sees this move reads everything again.
    loads: std::sync::atomic::AtomicU64,
}

/// A handle on this cluster's replica. Clones share it.
#[derive(Clone)]
pub struct Cstore {
    inner: Arc<Inner>,
}

fn now_ms() -> i64 {
    crate::p2p::now_ms()
}

/// The end of the key range of every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

async fn connect(cfg: &CstoreConfig) -> Result<etcd_client::Client, String> {
    if cfg.endpoints.is_empty() {
        return Err("no CSTORE etcd endpoint is configured".into());
    }
    let mut opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(10))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let t = &cfg.tls;
    if t.ca.is_some() || t.cert.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &t.ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        match (&t.cert, &t.key) {
            (Some(c), Some(k)) => tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => return Err("a TLS client certificate needs both --cstore-cert-file and --cstore-key-file".into()),
        }
        opts = opts.with_tls(tls);
    }
    etcd_client::Client::connect(&cfg.endpoints, Some(opts))
        .await
        .map_err(|e| format!("cannot connect to CSTORE's etcd at {}: {e}", cfg.endpoints.join(",")))
}

impl Cstore {
    /// Connects to etcd and starts the replica's tasks (index and watch,
    /// sweeper, gossip, anti-entropy); returns the handle and the link the
    /// network hands CSTORE's messages to. Tasks end when every handle is
    /// dropped.
    pub async fn start(
        cfg: CstoreConfig,
        trust: TrustStore,
        metrics: Arc<Metrics>,
        network: NetworkSource,
    ) -> Result<(Self, crate::p2p::ServiceLink), String> {
        let client = connect(&cfg).await?;
        let (outbound, outbound_rx) = mpsc::channel(65_536);
        let (commits, commits_rx) = mpsc::channel(4_096);
        let (link, inbound) = crate::p2p::ServiceLink::channel(1024);
        let inner = Arc::new(Inner {
            cfg,
            client,
            state: Mutex::new(State::default()),
            identity: RwLock::new(None),
            trust,
            metrics,
            changes: broadcast::channel(8192).0,
            outbound,
            commits,
            writers: Default::default(),
            network,
            sync: Mutex::new(sync::SyncStatus::default()),
            loads: Default::default(),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(commit::committer(weak.clone(), commits_rx));
        tokio::spawn(keep_index(weak.clone()));
        tokio::spawn(sweep(weak.clone()));
        tokio::spawn(sync::gossip_out(weak.clone(), outbound_rx));
        tokio::spawn(sync::serve(weak.clone(), inbound));
        tokio::spawn(sync::anti_entropy(weak.clone()));
        tokio::spawn(record_dauth(weak));
        Ok((Self { inner }, link))
    }

    /// Whether the index is loaded and etcd answered last.
    pub fn is_up(&self) -> bool {
        self.inner.state.lock().expect("state lock").up
    }

    /// Waits until the replica is up (tests and the CLI's first call).
    pub async fn wait_up(&self, deadline: Duration) -> bool {
        let end = tokio::time::Instant::now() + deadline;
        while !self.is_up() {
            if tokio::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Signs with `key` from now on (the network's identity otherwise).
    pub fn set_identity(&self, key: Keypair) {
        *self.inner.identity.write().expect("identity lock") = Some(key);
    }

    fn identity(&self) -> Result<Keypair, CstoreError> {
        if let Some(h) = (self.inner.network)() {
            // Remembered, to sign while the network restarts; the write
            // lock only when the key changed (every write passes here).
            let known = self.inner.identity.read().expect("identity lock").as_ref().map(|k| k.public());
            if known != Some(h.keypair.public()) {
                *self.inner.identity.write().expect("identity lock") = Some(h.keypair.clone());
            }
            return Ok(h.keypair);
        }
        self.inner.identity.read().expect("identity lock").clone().ok_or(CstoreError::NoIdentity)
    }

    /// The key this node signs with (EDIL signs its updates with it too).
    pub fn keypair(&self) -> Option<Keypair> {
        self.identity().ok()
    }

    /// How many times the replica was loaded from a full scan (see
    /// [`Cstore::watch`]: a watcher re-reads when it changes).
    pub fn loads(&self) -> u64 {
        self.inner.loads.load(std::sync::atomic::Ordering::Acquire)
    }

    /// This node's PeerId (the key it signs with), once the network has
    /// started at least once.
    pub fn peer_id(&self) -> Option<PeerId> {
        self.identity().ok().map(|k| k.public().to_peer_id())
    }

    /// Unix ms of the end of the last complete anti-entropy round with
    /// `peer`: after it, this replica held every version `peer` listed.
    pub fn in_sync_with(&self, peer: &str) -> Option<i64> {
        self.inner.sync.lock().expect("sync lock").peers.get(peer).and_then(|p| p.in_sync_at)
    }

    /// Every live flat key under `prefix` with its record, read from etcd
    /// in pages at one revision.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Record>, CstoreError> {
        let prefix = self.expand(prefix)?;
        let root = format!("{}{}", self.inner.cfg.prefix, Slot::flat(&prefix).stored());
        let mut out = vec![];
        scan(&self.inner, &root, |_, _, rec| {
            if rec.slot.field.is_none() {
                out.extend(live(rec));
            }
        })
        .await?;
        Ok(out)
    }

    /// `~/rest` names `node/<this node's PeerId>/rest`.
    pub fn expand(&self, key: &str) -> Result<String, CstoreError> {
        match key.strip_prefix("~/") {
            Some(rest) => Ok(format!("{}{rest}", rules::own_prefix(&self.identity()?.public().to_peer_id()))),
            None => Ok(key.to_string()),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Record>, CstoreError> {
        self.read_slot(Slot::flat(&self.expand(key)?)).await
    }

    pub async fn hget(&self, hash: &str, field: &str) -> Result<Option<Record>, CstoreError> {
        self.read_slot(Slot::field(&self.expand(hash)?, field)).await
    }

    async fn read_slot(&self, slot: Slot) -> Result<Option<Record>, CstoreError> {
        slot.validate().map_err(CstoreError::Invalid)?;
        let key = format!("{}{}", self.inner.cfg.prefix, slot.stored());
        let resp = self.inner.client.kv_client().get(key, None).await?;
        Ok(resp.kvs().first().and_then(|kv| live(serde_json::from_slice(kv.value()).ok()?)))
    }

    /// Every live field of a hash.
    pub async fn hgetall(&self, hash: &str) -> Result<BTreeMap<String, Record>, CstoreError> {
        let hash = self.expand(hash)?;
        record::check_name("hash", &hash).map_err(CstoreError::Invalid)?;
        let prefix = format!("{}{}", self.inner.cfg.prefix, Slot::hash_prefix(&hash));
        let mut out = BTreeMap::new();
        scan(&self.inner, &prefix, |_, _, rec| {
            if let (Some(f), Some(rec)) = (rec.slot.field.clone(), live(rec)) {
                out.insert(f, rec);
            }
        })
        .await?;
        Ok(out)
    }

    /// Flat keys and hash names starting with `prefix` (live ones).
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>, CstoreError> {
        let prefix = self.expand(prefix)?;
        let now = now_ms();
        let st = self.inner.state.lock().expect("state lock");
        let mut out = BTreeSet::new();
        for space in ["k/", "h/"] {
            for (stored, e) in st.index.keys_with_prefix(&format!("{space}{prefix}")) {
                if e.tombstone || e.expires.is_some_and(|x| x <= now) {
                    continue;
                }
                if let Some(slot) = Slot::from_stored(stored) {
                    out.insert(slot.key);
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    pub async fn set(
        &self,
        key: &str,
        value: &serde_json::Value,
        ttl: Option<Duration>,
    ) -> Result<Record, CstoreError> {
        let slot = Slot::flat(&self.expand(key)?);
        self.write(slot, Some(record::to_raw(value).map_err(CstoreError::Invalid)?), ttl).await
    }

    pub async fn hset(
        &self,
        hash: &str,
        field: &str,
        value: &serde_json::Value,
        ttl: Option<Duration>,
    ) -> Result<Record, CstoreError> {
        let slot = Slot::field(&self.expand(hash)?, field);
        self.write(slot, Some(record::to_raw(value).map_err(CstoreError::Invalid)?), ttl).await
    }

    /// Deletes a key (a tombstone); returns whether it held a live value.
    pub async fn del(&self, key: &str) -> Result<bool, CstoreError> {
        self.delete(Slot::flat(&self.expand(key)?)).await
    }

    pub async fn hdel(&self, hash: &str, field: &str) -> Result<bool, CstoreError> {
        self.delete(Slot::field(&self.expand(hash)?, field)).await
    }

    async fn delete(&self, slot: Slot) -> Result<bool, CstoreError> {
        let existed = self.read_slot(slot.clone()).await?.is_some();
        self.write(slot, None, None).await?;
        Ok(existed)
    }

    /// Signs and stores a local write, then queues it for gossip.
    async fn write(
        &self,
        slot: Slot,
        value: Option<Box<serde_json::value::RawValue>>,
        ttl: Option<Duration>,
    ) -> Result<Record, CstoreError> {
        slot.validate().map_err(CstoreError::Invalid)?;
        let expires = match ttl {
            Some(t) if t.is_zero() || t.as_millis() as i64 > record::MAX_TTL_MS => {
                return Err(CstoreError::Invalid(format!(
                    "ttl must be between 1 ms and {} days",
                    record::MAX_TTL_MS / 86_400_000
                )))
            }
            Some(t) => Some(now_ms() + t.as_millis() as i64),
            None => None,
        };
        let key = self.identity()?;
        let me = key.public().to_peer_id();
        // A stored version ahead of our clock (a peer's clock runs fast)
        // moves the clock past it: the next attempt wins.
        for _ in 0..4 {
            let hlc = self.inner.state.lock().expect("state lock").clock.tick(now_ms() as u64);
            let rec = Record::sign(&key, slot.clone(), value.clone(), hlc, expires);
            rules::check(&rec, &me, &self.inner.trust).map_err(|e| {
                CstoreError::Invalid(match e {
                    Invalid::BadProof => format!(
                        "{} needs a value {{\"proof\": <revocation token>}} signed by that issuer for that license",
                        rec.slot
                    ),
                    Invalid::UnknownIssuer => format!("{}: its issuer is not trusted by this node", rec.slot),
                    _ => format!("{} is not writable by this node: write under node/{me}/ (or ~/)", rec.slot),
                })
            })?;
            if apply(&self.inner, &rec, &metrics::LOCAL).await? {
                if self.inner.outbound.try_send(rec.clone()).is_err() {
                    self.inner.metrics.cstore.gossip_skipped.inc();
                }
                return Ok(rec);
            }
        }
        Err(CstoreError::Unavailable(format!("{slot} keeps being overwritten by newer versions")))
    }

    /// Changes of keys (flat keys and hash names) starting with `prefix`,
    /// as they reach the replica. The stream ends if the watcher falls
    /// more than 8,192 changes behind (read again, then watch again); a
    /// reload from etcd ([`Cstore::loads`] moves) also calls for a re-read.
    pub fn watch(&self, prefix: &str) -> Result<impl futures::Stream<Item = Change> + Send + 'static, CstoreError> {
        let prefix = self.expand(prefix)?;
        let rx = self.inner.changes.subscribe();
        Ok(futures::stream::unfold((rx, prefix), |(mut rx, prefix)| async move {
            loop {
                match rx.recv().await {
                    Ok(c) if c.slot.matches(&prefix) => return Some((c, (rx, prefix))),
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
        }))
    }

    /// What `ratio1 cstore status` prints.
    pub fn status(&self) -> serde_json::Value {
        let (stats, up, digest) = {
            let st = self.inner.state.lock().expect("state lock");
            (st.index.stats(), st.up, st.index.digest())
        };
        // One short fingerprint of the whole replica: equal on two nodes
        // exactly when anti-entropy finds nothing to exchange.
        let bytes: Vec<u8> = digest.iter().flat_map(|d| d.to_be_bytes()).collect();
        let fingerprint: String = sha2::Sha256::digest(&bytes).iter().take(8).map(|b| format!("{b:02x}")).collect();
        let sync = self.inner.sync.lock().expect("sync lock").clone();
        serde_json::json!({
            "up": up,
            "endpoints": self.inner.cfg.endpoints,
            "prefix": self.inner.cfg.prefix,
            "records": stats.records,
            "tombstones": stats.tombstones,
            "bytes": stats.bytes,
            "digest": fingerprint,
            "sync": sync,
        })
    }

    /// Anti-entropy digest of the replica (tests and benchmarks compare them).
    pub fn digest(&self) -> Vec<u64> {
        self.inner.state.lock().expect("state lock").index.digest()
    }
}

/// A record as readers see it: tombstones and expired records are absent.
fn live(rec: Record) -> Option<Record> {
    (!rec.is_tombstone() && !rec.expired(now_ms())).then_some(rec)
}

/// Pages through every record under `prefix` at one revision; `f` gets the
/// stored key (without the root), the record's mod revision and the record.
async fn scan(inner: &Inner, prefix: &str, mut f: impl FnMut(&str, i64, Record)) -> Result<i64, CstoreError> {
    let end = prefix_end(prefix);
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(2_000);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = inner.client.kv_client().get(from.clone(), Some(opts)).await?;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        for kv in resp.kvs() {
            let Some(stored) = kv.key().strip_prefix(inner.cfg.prefix.as_bytes()) else { continue };
            let (Ok(stored), Ok(rec)) = (std::str::from_utf8(stored), serde_json::from_slice::<Record>(kv.value()))
            else {
                continue;
            };
            f(stored, kv.mod_revision(), rec);
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(revision),
        }
    }
}

/// Keeps the index equal to etcd: a full scan, then a watch from the
/// scan's revision; again from scratch whenever the watch breaks (etcd
/// restarted, or the revision was compacted). Also feeds watchers and the
/// revocations of the trust store.
async fn keep_index(inner: std::sync::Weak<Inner>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(i) = inner.upgrade() else { return };
        let started = tokio::time::Instant::now();
        let result = load_and_watch(&i).await;
        if started.elapsed() > Duration::from_secs(30) {
            // It ran a while: a new outage starts from a short backoff.
            backoff = Duration::from_millis(200);
        }
        {
            let mut st = i.state.lock().expect("state lock");
            st.up = false;
        }
        i.metrics.cstore.up.set(0);
        if let Err(e) = result {
            tracing::warn!(error = %e, "CSTORE index: etcd watch lost; reloading");
        }
        drop(i);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn load_and_watch(inner: &Arc<Inner>) -> Result<(), CstoreError> {
    let mut fresh = Index::default();
    let mut revoked = BTreeSet::new();
    let mut newest = record::Hlc(0);
    let rev = scan(inner, &inner.cfg.prefix, |stored, mod_rev, rec| {
        note_revocation(&inner.trust, &rec, &mut revoked);
        newest = newest.max(rec.hlc);
        fresh.upsert(stored, Entry::of(&rec, stored, mod_rev, rec.to_bytes().len()));
    })
    .await?;
    let mut watch = inner
        .client
        .watch_client()
        .watch(inner.cfg.prefix.clone(), Some(WatchOptions::new().with_prefix().with_start_revision(rev + 1)))
        .await?;
    {
        let mut st = inner.state.lock().expect("state lock");
        // Our clock passes every stored record, ours included (a restart
        // must not write below what this replica already holds).
        st.clock.observe(newest);
        st.index = fresh;
        st.up = true;
        inner.loads.fetch_add(1, std::sync::atomic::Ordering::Release);
        inner.metrics.cstore.records.set(st.index.stats().records as i64);
    }
    inner.trust.set_revoked_from(RevocationSource::Cstore, revoked.clone());
    inner.metrics.cstore.up.set(1);
    tracing::info!(revision = rev, "CSTORE index loaded; watching etcd");
    while let Some(resp) = watch.message().await? {
        if resp.canceled() {
            return Err(CstoreError::Unavailable(format!("watch canceled: {}", resp.cancel_reason())));
        }
        let mut revocations_changed = false;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Some(stored) = kv.key().strip_prefix(inner.cfg.prefix.as_bytes()) else { continue };
            let Ok(stored) = std::str::from_utf8(stored) else { continue };
            let Some(slot) = Slot::from_stored(stored) else { continue };
            let change = match ev.event_type() {
                etcd_client::EventType::Put => {
                    // A write of this process, already in the index: nothing
                    // to learn, unless someone watches or it is a revocation
                    // (the trust store learns those here, whoever wrote them).
                    let known = inner.state.lock().expect("state lock").index.get(stored).map(|e| e.mod_rev);
                    let revocation = slot.key.starts_with(rules::REVOCATION_PREFIX);
                    if known == Some(kv.mod_revision()) && inner.changes.receiver_count() == 0 && !revocation {
                        continue;
                    }
                    let Ok(rec) = serde_json::from_slice::<Record>(kv.value()) else { continue };
                    inner
                        .state
                        .lock()
                        .expect("state lock")
                        .index
                        .upsert(stored, Entry::of(&rec, stored, kv.mod_revision(), kv.value().len()));
                    if revocation {
                        revocations_changed |= note_revocation(&inner.trust, &rec, &mut revoked);
                    }
                    Change { slot, record: Some(rec) }
                }
                etcd_client::EventType::Delete => {
                    inner.state.lock().expect("state lock").index.remove(stored, kv.mod_revision());
                    Change { slot, record: None }
                }
            };
            let _ = inner.changes.send(change);
        }
        if revocations_changed {
            inner.trust.set_revoked_from(RevocationSource::Cstore, revoked.clone());
            tracing::info!(revoked = revoked.len(), "revocations from CSTORE applied");
        }
        let n = inner.state.lock().expect("state lock").index.stats().records;
        inner.metrics.cstore.records.set(n as i64);
    }
    Err(CstoreError::Unavailable("watch stream ended".into()))
}

/// Adds a verified revocation record to `set`; returns whether it was new.
fn note_revocation(trust: &TrustStore, rec: &Record, set: &mut BTreeSet<(String, String)>) -> bool {
    if !rec.slot.key.starts_with(rules::REVOCATION_PREFIX) {
        return false;
    }
    let Some(proof) = rec.value_json().get("proof").and_then(|p| p.as_str()).map(String::from) else { return false };
    match trust.verify_revocation(&proof) {
        Ok(c) if rules::revocation_key(&c.iss, &c.id) == rec.slot.key => set.insert((c.iss, c.id)),
        _ => false,
    }
}

/// Hash where an oracle records the dAuth requests it answered: one field
/// per requesting PeerId, its last request (`{"at": unix ms, "result": …}`).
pub const DAUTH_HASH: &str = "~/dauth";

/// Records, in CSTORE, the dAuth requests this node answered as an oracle
/// (the network keeps the recent ones in memory; CSTORE replicates them).
async fn record_dauth(inner: std::sync::Weak<Inner>) {
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(i) = inner.upgrade() else { return };
        let Some(net) = (i.network)() else { continue };
        let fresh: Vec<_> = {
            let v = net.view.read().expect("view lock");
            v.dauth_log.iter().filter(|r| r.at > last).cloned().collect()
        };
        let store = Cstore { inner: i };
        for r in fresh {
            let value = serde_json::json!({ "at": r.at, "result": r.result });
            match store.hset(DAUTH_HASH, &r.peer_id, &value, None).await {
                Ok(_) => last = last.max(r.at),
                Err(e) => {
                    tracing::debug!(error = %e, "dAuth record not written to CSTORE yet");
                    break;
                }
            }
        }
    }
}

/// Deletes records past their TTL and tombstones past the GC horizon,
/// each only if it was not rewritten meanwhile.
async fn sweep(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(i) = inner.upgrade() else { return };
        let now = now_ms();
        let horizon = (now as u64).saturating_sub(i.cfg.tombstone_horizon.as_millis() as u64);
        let due = i.state.lock().expect("state lock").index.due(now, horizon);
        for (stored, rev, tomb) in due {
            let key = format!("{}{stored}", i.cfg.prefix);
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                .and_then([TxnOp::delete(key, None)]);
            match i.client.kv_client().txn(txn).await {
                Ok(r) if r.succeeded() => {
                    if tomb {
                        i.metrics.cstore.tombstones_collected.inc();
                    } else {
                        i.metrics.cstore.expired.inc();
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "CSTORE sweep: etcd unavailable");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_covers_exactly_the_prefix() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
