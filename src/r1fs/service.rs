//! R1FS as the operator runs it: the block store on its data directory,
//! block exchange with admitted peers, pins, and replication across the
//! network. docs/protocols.md, "R1FS", has the rules.
//!
//! - **Serving**: wantlists from admitted peers (the network refuses the
//!   others) are answered from the store, at most [`SERVING`] at once.
//! - **Fetching** ([`R1fs::fetch`]): the DAG is walked locally; what is
//!   missing is asked of the providers (nodes whose `have` record names
//!   the root, else every connected peer) in parallel, in batches, each
//!   block verified against the CID that was asked for; a `DontHave` or a
//!   failed peer moves the want to another provider. Walk again, until the
//!   DAG is whole.
//! - **Records** in CSTORE, each node under its own `r1fs/<PeerId>/`:
//!   `node` (it runs R1FS), `have/<cid>` (a pinned root it holds whole),
//!   `want/<cid>` (the replication an origin's R1Models ask for).
//! - **Replication**: the holders of a wanted CID are the `r` members
//!   ranked first by `sha256(cid ‖ "/" ‖ PeerId)` (rendezvous hashing) among the
//!   R1FS nodes heard from; each node computes the same list and fetches
//!   and pins what it is chosen for. When a holder goes silent the ranking
//!   moves on to the next member, which fetches (repair). A node that is no
//!   longer chosen drops its replica only once every chosen node has it.

use super::bitswap::{self, MAX_WANTS};
use super::cid::{canonical, Cid};
use super::pins::{Pin, Pins, REPLICA};
use super::store::{BlockStore, Gc, StoreError, Walk};
use crate::crd::{ModelSource, R1Model};
use crate::cstore::{Cstore, NetworkSource};
use crate::metrics::Metrics;
use crate::objects::Filled;
use crate::p2p::{BlockRequest, SharedView};
use futures::StreamExt;
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify, Semaphore};

/// Pinned roots and their owners, as [`Pins::all`] reads them.
type Pinned = BTreeMap<Cid, BTreeMap<String, Pin>>;

/// Prefix of R1FS's CSTORE records.
pub const PREFIX: &str = "r1fs/";
/// Wantlists answered at once (disk reads in flight).
const SERVING: usize = 8;
/// Requests a fetch keeps in flight per provider, and in all.
const PER_PROVIDER: usize = 2;
const IN_FLIGHT: usize = 8;
/// CIDs per request.
const BATCH: usize = 16;
/// Passes between two walks of every pinned DAG (a scrub: about a minute).
const SCRUB_EVERY: u64 = 12;
/// CIDs one origin's `want` records may ask the network to replicate.
pub const MAX_WANTS_PER_ORIGIN: usize = 1024;
/// Levels of a DAG a fetch walks down at most.
const MAX_ROUNDS: usize = 64;

/// R1FS's CSTORE records, read.
#[derive(Debug, Default)]
struct Records {
    /// PeerId → node name.
    nodes: BTreeMap<String, String>,
    /// CID → PeerId → what it holds.
    haves: BTreeMap<String, BTreeMap<String, Have>>,
    /// CID → origin PeerId → its replication wish.
    wants: BTreeMap<String, BTreeMap<String, Want>>,
    /// Want records past their origin's [`MAX_WANTS_PER_ORIGIN`].
    over_quota: u64,
}

/// Reads `(key, value)` records in key order (pure). At most
/// [`MAX_WANTS_PER_ORIGIN`] CIDs per origin are wanted: a licensed peer
/// cannot make the network pin without bound, and since records come in
/// key order, the same ones are kept on every node.
fn read_records<'a>(records: impl IntoIterator<Item = (&'a str, serde_json::Value)>) -> Records {
    let mut out = Records::default();
    let mut per_origin: HashMap<String, usize> = HashMap::new();
    for (key, value) in records {
        match parse_key(key) {
            Some(Key::Node(p)) => {
                let n: NodeRecord = serde_json::from_value(value).unwrap_or_default();
                out.nodes.insert(p, n.node);
            }
            Some(Key::Have(p, c)) => {
                if let Ok(h) = serde_json::from_value(value) {
                    out.haves.entry(c).or_default().insert(p, h);
                }
            }
            Some(Key::Want(p, c)) => {
                if let Ok(w) = serde_json::from_value::<Want>(value) {
                    let n = per_origin.entry(p.clone()).or_default();
                    *n += 1;
                    if *n > MAX_WANTS_PER_ORIGIN {
                        out.over_quota += 1;
                    } else if w.replication > 0 && w.replication <= 64 {
                        out.wants.entry(c).or_default().insert(p, w);
                    }
                }
            }
            None => {}
        }
    }
    out
}

/// Settings of `ratio1 operator` for R1FS.
#[derive(Clone, Debug)]
pub struct R1fsConfig {
    /// The store's directory (`<--data-dir>/r1fs`).
    pub root: PathBuf,
    /// Unpinned blocks are collected when the store holds more than this.
    pub quota_bytes: Option<u64>,
    /// Blocks younger than this survive a GC (an add or fetch in progress).
    pub gc_grace: Duration,
    /// Replication is checked at least this often (and on every change).
    pub resync: Duration,
    /// Where the read-only gateway listens for pods (besides the local API).
    pub gateway_addr: Option<std::net::SocketAddr>,
    /// How pods deliver R1FS content: the gateway URL they use and the
    /// image with `ratio1` on its PATH (both needed; else no delivery).
    pub delivery: Option<Delivery>,
}

/// How an R1Pipeline's pods get their models and inputs: an init
/// container per mount running `ratio1 fs get` against `endpoint` (which
/// may name `$(HOST_IP)`, the node's IP, set in the container's env).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub endpoint: String,
    pub image: String,
}

impl R1fsConfig {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            quota_bytes: None,
            gc_grace: Duration::from_secs(600),
            resync: Duration::from_secs(5),
            gateway_addr: None,
            delivery: None,
        }
    }
}

/// Why an R1FS operation failed: one line for the API and the CLI.
#[derive(Debug, thiserror::Error)]
pub enum R1fsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
}

impl From<std::io::Error> for R1fsError {
    fn from(e: std::io::Error) -> Self {
        Self::Store(e.into())
    }
}

/// A writer that refuses more than `max` bytes.
struct Capped {
    bytes: Vec<u8>,
    max: u64,
}

impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if (self.bytes.len() + b.len()) as u64 > self.max {
            return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, format!("more than {} bytes", self.max)));
        }
        self.bytes.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `have` record: a root this node holds whole and pinned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Have {
    pub dag_size: u64,
    pub blocks: u64,
}

/// A `want` record: replication asked by an origin's R1Models.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Want {
    pub replication: u32,
    /// `namespace/name` of the models that ask.
    pub models: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeRecord {
    node: String,
}

fn node_key(peer: &str) -> String {
    format!("{PREFIX}{peer}/node")
}
fn have_key(peer: &str, cid: &str) -> String {
    format!("{PREFIX}{peer}/have/{cid}")
}
fn want_key(peer: &str, cid: &str) -> String {
    format!("{PREFIX}{peer}/want/{cid}")
}

/// A parsed `r1fs/` key: writer and what it holds.
enum Key {
    Node(String),
    Have(String, String),
    Want(String, String),
}

fn parse_key(key: &str) -> Option<Key> {
    let rest = key.strip_prefix(PREFIX)?;
    let (peer, tail) = rest.split_once('/')?;
    match tail.split_once('/') {
        None if tail == "node" => Some(Key::Node(peer.into())),
        Some(("have", cid)) => Some(Key::Have(peer.into(), canonical(&super::cid::parse(cid).ok()?))),
        Some(("want", cid)) => Some(Key::Want(peer.into(), canonical(&super::cid::parse(cid).ok()?))),
        _ => None,
    }
}

/// Reads the import key, making it (32 random bytes, mode 0600) once.
fn import_key(path: &std::path::Path) -> std::io::Result<[u8; 32]> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read(path) {
        Ok(b) if b.len() == 32 => Ok(b.try_into().expect("32 bytes")),
        Ok(_) => {
            Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} is not 32 bytes", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            f.write_all(&key)?;
            f.sync_all()?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// Pin owner of the import of R1Model `uid` at `generation`.
pub fn import_owner(uid: &str, generation: i64) -> String {
    format!("{IMPORT_PREFIX}{uid}/{generation}")
}

/// Prefix of import pins' owners.
pub const IMPORT_PREFIX: &str = "import/";
/// Prefix of the import pins of EDIL's trainer Jobs: a participant's own
/// plaintext weights, never announced (no `have` record names them), and
/// released by EDIL, not by the models' imports.
pub const PRIVATE_IMPORT_PREFIX: &str = "import/edil/";

/// Whether a pin of `owner` is a private import (never announced).
fn private(owner: &str) -> bool {
    owner.starts_with(PRIVATE_IMPORT_PREFIX)
}

/// The `r` holders of `cid` among `members`: the first by
/// `sha256(cid ‖ "/" ‖ PeerId)` (every node computes the same list).
pub fn holders_of(cid: &str, members: &BTreeSet<String>, r: usize) -> Vec<String> {
    let mut ranked: Vec<([u8; 32], &String)> = members
        .iter()
        .map(|p| {
            let mut h = Sha256::new();
            h.update(cid.as_bytes());
            h.update(b"/");
            h.update(p.as_bytes());
            (h.finalize().into(), p)
        })
        .collect();
    ranked.sort();
    ranked.into_iter().take(r).map(|(_, p)| p.clone()).collect()
}

/// Who holds a CID, as R1FS last saw it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Holders {
    /// R1Node names of the fresh holders.
    pub nodes: Vec<String>,
    pub size: Option<u64>,
    /// R1FS nodes heard from (the most replicas there can be).
    pub members: usize,
}

/// What the last pass saw: read by the R1Model reconciler and the API.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// CID → holder PeerId → its record (fresh holders only).
    pub holders: BTreeMap<String, BTreeMap<String, Have>>,
    /// PeerId → R1Node name, of the R1FS nodes heard from.
    pub members: BTreeMap<String, String>,
    /// CID → replication asked (the largest of all origins').
    pub wants: BTreeMap<String, u32>,
}

/// What the service needs from the rest of the operator.
pub struct Parts {
    /// None: R1FS holds and serves content here and fetches it from
    /// connected peers, but publishes and reads no records (no providers,
    /// no replication across the network).
    pub cstore: Option<Cstore>,
    pub view: SharedView,
    pub network: NetworkSource,
    pub metrics: Arc<Metrics>,
    pub models: Store<R1Model>,
    pub models_ready: Filled,
    /// This cluster's R1Node name (its Deeploy profile carries it).
    pub profile: watch::Receiver<Option<crate::deeploy::plan::Profile>>,
}

struct Inner {
    /// Key of the import Jobs' tokens (`<root>/import.key`, made once).
    import_key: [u8; 32],
    cfg: R1fsConfig,
    store: BlockStore,
    pins: Pins,
    parts: Parts,
    snapshot: RwLock<Snapshot>,
    /// Replicas being fetched now.
    fetching: Mutex<HashSet<String>>,
    /// Bumped when the snapshot changes (models' status follows it).
    changed: watch::Sender<u64>,
    wake: Notify,
    /// Set once a pass has filled the snapshot (before, holders are unknown,
    /// not absent).
    loaded: std::sync::atomic::AtomicBool,
    /// Passes so far (pinned DAGs are scrubbed every [`SCRUB_EVERY`]th).
    passes: std::sync::atomic::AtomicU64,
}

/// The R1FS service. Clones share it.
#[derive(Clone)]
pub struct R1fs {
    inner: Arc<Inner>,
}

impl R1fs {
    /// Opens the store and starts serving `requests` and the replication
    /// loop (tasks end when every handle is dropped... and the process ends).
    pub fn start(cfg: R1fsConfig, parts: Parts, requests: mpsc::Receiver<BlockRequest>) -> std::io::Result<Self> {
        let store = BlockStore::open(&cfg.root)?;
        let pins = Pins::open(&cfg.root)?;
        let import_key = import_key(&cfg.root.join("import.key"))?;
        let r = Self {
            inner: Arc::new(Inner {
                import_key,
                cfg,
                store,
                pins,
                parts,
                snapshot: Default::default(),
                fetching: Default::default(),
                changed: watch::channel(0).0,
                wake: Notify::new(),
                loaded: Default::default(),
                passes: Default::default(),
            }),
        };
        tokio::spawn(r.clone().serve(requests));
        tokio::spawn(r.clone().replicate_loop());
        tokio::spawn(r.clone().watch_records());
        Ok(r)
    }

    /// The token an import Job presents to pin for `owner`
    /// (HMAC-SHA256 under this node's import key, hex).
    pub fn import_token(&self, owner: &str) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.inner.import_key).expect("any key length");
        mac.update(owner.as_bytes());
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `token` is `owner`'s (compared in constant time).
    pub fn import_token_ok(&self, owner: &str, token: &str) -> bool {
        use hmac::Mac;
        let Some(bytes) = (0..token.len())
            .step_by(2)
            .map(|i| token.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>()
        else {
            return false;
        };
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.inner.import_key).expect("any key length");
        mac.update(owner.as_bytes());
        mac.verify_slice(&bytes).is_ok()
    }

    /// Whether `cid` is pinned here, by any owner.
    pub fn is_pinned(&self, cid: &Cid) -> bool {
        self.inner.pins.owners(cid).is_ok_and(|o| !o.is_empty())
    }

    /// The root pinned by `owner`, if any (an import's result).
    pub fn pinned_by(&self, owner: &str) -> Option<Cid> {
        self.inner.pins.all().ok()?.into_iter().find(|(_, o)| o.contains_key(owner)).map(|(c, _)| c)
    }

    pub fn delivery(&self) -> Option<Delivery> {
        self.inner.cfg.delivery.clone()
    }

    pub fn store(&self) -> &BlockStore {
        &self.inner.store
    }

    /// Bumped when holders, members or wants change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Asks for a replication pass soon (a model changed).
    pub fn poke(&self) {
        self.inner.wake.notify_one();
    }

    /// Whether the holders are known (a pass has run since the start).
    pub fn loaded(&self) -> bool {
        self.inner.loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Snapshot {
        self.inner.snapshot.read().expect("snapshot lock").clone()
    }

    /// R1Node names of the fresh holders of `cid`, the DAG size they report,
    /// and how many R1FS nodes there are.
    pub fn holders(&self, cid: &str) -> Holders {
        let s = self.inner.snapshot.read().expect("snapshot lock");
        let members = s.members.len();
        let Some(h) = s.holders.get(cid) else { return Holders { members, ..Default::default() } };
        // A node without an R1Node name is shown by its PeerId.
        let name = |p: &String| s.members.get(p).filter(|n| !n.is_empty()).cloned().unwrap_or_else(|| p.clone());
        let mut nodes: Vec<String> = h.keys().map(name).collect();
        nodes.sort();
        Holders { nodes, size: h.values().map(|h| h.dag_size).max(), members }
    }

    /// This node's PeerId ("local" before it has an identity and no network).
    fn me(&self) -> String {
        let cs = self.inner.parts.cstore.as_ref().and_then(|c| c.peer_id());
        cs.or_else(|| (self.inner.parts.network)().map(|n| n.peer_id))
            .map(|p| p.to_string())
            .unwrap_or_else(|| "local".into())
    }

    async fn put_record(&self, key: &str, value: &serde_json::Value) -> Result<(), R1fsError> {
        if let Some(cs) = &self.inner.parts.cstore {
            cs.set(key, value, None).await.map_err(|e| R1fsError::Unavailable(e.to_string()))?;
        }
        Ok(())
    }

    async fn del_record(&self, key: &str) -> Result<(), R1fsError> {
        if let Some(cs) = &self.inner.parts.cstore {
            cs.del(key).await.map_err(|e| R1fsError::Unavailable(e.to_string()))?;
        }
        Ok(())
    }

    fn network(&self) -> Result<crate::p2p::NetworkHandle, R1fsError> {
        (self.inner.parts.network)().ok_or_else(|| {
            R1fsError::Unavailable("the network is not running here (this replica does not lead)".into())
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&BlockStore) -> T + Send + 'static,
    ) -> Result<T, R1fsError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| R1fsError::Unavailable(format!("R1FS task failed: {e}")))
    }

    /// Answers wantlists from admitted peers.
    async fn serve(self, mut requests: mpsc::Receiver<BlockRequest>) {
        let permits = Arc::new(Semaphore::new(SERVING));
        while let Some(req) = requests.recv().await {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let this = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let m = &this.inner.parts.metrics.r1fs;
                let message = req.message;
                let answered = this.blocking(move |s| bitswap::answer(&message, |c| s.has(c), |c| s.get(c).ok())).await;
                let Ok((answer, bad)) = answered else { return };
                m.rejected.get_or_create(&crate::metrics::ReasonLabels { reason: "malformed_want" }).inc_by(bad as u64);
                m.blocks_served.inc_by(answer.payload.len() as u64);
                m.bytes_served.inc_by(answer.payload.iter().map(|b| b.data.len() as u64).sum());
                if let Ok(net) = this.network() {
                    net.answer_blocks(req.id, answer).await;
                }
            });
        }
    }

    /// Providers of `root`: connected admitted peers whose `have` record
    /// names it, else every connected admitted peer.
    fn providers(&self, net: &crate::p2p::NetworkHandle, root: &str) -> Vec<libp2p::PeerId> {
        let connected = net.connected_peers();
        let s = self.inner.snapshot.read().expect("snapshot lock");
        let named: Vec<libp2p::PeerId> = connected
            .iter()
            .filter(|p| s.holders.get(root).is_some_and(|h| h.contains_key(&p.to_string())))
            .copied()
            .collect();
        if named.is_empty() {
            connected
        } else {
            named
        }
    }

    /// Makes the DAG under `root` whole here, from peers if need be; the
    /// result is its local walk (nothing missing). `progress` gets the
    /// bytes fetched so far.
    pub async fn fetch(&self, root: Cid, progress: &(dyn Fn(u64) + Sync)) -> Result<Walk, R1fsError> {
        self.fetch_within(root, None, progress).await
    }

    /// The file under `root`, whole, as bytes, fetched from peers if need
    /// be, if it is at most `max_bytes`: content another node made for
    /// this one (EDIL's updates, sums and models), which a hostile writer
    /// could make endless.
    pub async fn read_within(&self, root: Cid, max_bytes: u64) -> Result<Vec<u8>, R1fsError> {
        let w = self.fetch_within(root, Some(max_bytes), &|_| {}).await?;
        // A DAG may link one block many times (a file of repeated chunks
        // does): each read of a chunk writes bytes, which the cap bounds,
        // but an empty leaf writes none; so the reads are bounded too.
        let reads = w.blocks + max_bytes / super::add::CHUNK as u64 + 2;
        let out = self
            .blocking(move |s| {
                let mut out = Capped { bytes: vec![], max: max_bytes };
                let mut n = 0u64;
                let mut get = |c: &Cid| {
                    n += 1;
                    if n > reads {
                        let e = std::io::Error::new(std::io::ErrorKind::FileTooLarge, "links repeat past its size");
                        return Err(StoreError::Io(e));
                    }
                    s.get(c)
                };
                s.cat_with(&root, &mut out, &mut get).map(|_| out.bytes)
            })
            .await?;
        out.map_err(|e| match e {
            StoreError::Io(e) if e.kind() == std::io::ErrorKind::FileTooLarge => R1fsError::TooLarge(e.to_string()),
            e => e.into(),
        })
    }

    /// As [`R1fs::fetch`]; with a `limit`, a level of the DAG is fetched
    /// only while what is here fits it and the blocks missing could (one
    /// per chunk of the limit, and two: a lie stores at most a block's
    /// limit, 2 MiB, for each, 8 times the limit and 4 MiB, before the
    /// next level is refused).
    async fn fetch_within(
        &self,
        root: Cid,
        limit: Option<u64>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Walk, R1fsError> {
        let mut fetched = 0u64;
        let mut last: Vec<Cid> = vec![];
        // Each round fetches every block the walk found missing (one level
        // of the DAG, or an error), so a round count bounds the depth.
        for _ in 0..MAX_ROUNDS {
            let w = self.blocking(move |s| s.walk(&root)).await??;
            if let Some(max) = limit {
                // (The slack: the inner nodes' links.)
                let blocks = max / super::add::CHUNK as u64 + 2;
                if w.dag_size > max + max / 64 + 4096 || w.missing.len() as u64 > blocks {
                    return Err(R1fsError::TooLarge(format!("{} is larger than {max} bytes", canonical(&root))));
                }
            }
            if w.missing.is_empty() {
                if fetched > 0 {
                    self.blocking(|s| s.sync()).await??;
                }
                return Ok(w);
            }
            // The same blocks missing after a round that stored them: the
            // store does not keep them (a disk that drops writes).
            if w.missing == last {
                return Err(R1fsError::Unavailable(format!(
                    "{} block(s) of {} were fetched but are not readable here",
                    w.missing.len(),
                    canonical(&root)
                )));
            }
            last = w.missing.clone();
            fetched += self.fetch_blocks(&canonical(&root), w.missing, &mut |n| progress(fetched + n)).await?;
        }
        Err(R1fsError::TooLarge(format!("{} is more than {MAX_ROUNDS} levels deep: not fetched", canonical(&root))))
    }

    /// Fetches `wanted` (blocks, not their children) from the providers of
    /// `root`, in parallel; returns the bytes stored.
    async fn fetch_blocks(
        &self,
        root: &str,
        wanted: Vec<Cid>,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<u64, R1fsError> {
        let net = self.network()?;
        let mut providers = self.providers(&net, root);
        if providers.is_empty() {
            return Err(R1fsError::NotFound(format!("{root} is not here and no peer is connected to fetch it from")));
        }
        use rand::seq::SliceRandom;
        providers.shuffle(&mut rand::thread_rng());
        let m = &self.inner.parts.metrics.r1fs;
        // Per CID: providers already asked.
        let mut tried: HashMap<Cid, HashSet<libp2p::PeerId>> = HashMap::new();
        let mut queue: VecDeque<Cid> = wanted.into_iter().collect();
        let mut busy: HashMap<libp2p::PeerId, usize> = HashMap::new();
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut stored = 0u64;
        let mut next = 0usize;
        let mut last_failure: Option<String> = None;
        loop {
            // Hand out batches while there is room.
            // Each provider in turn with room gets the queued CIDs it was not
            // asked for yet; none left to give to anyone ends the round.
            while in_flight.len() < IN_FLIGHT && !queue.is_empty() && !providers.is_empty() {
                let mut chosen = None;
                for i in 0..providers.len() {
                    let peer = providers[(next + i) % providers.len()];
                    if busy.get(&peer).copied().unwrap_or(0) >= PER_PROVIDER {
                        continue;
                    }
                    let (mut batch, mut skipped) = (vec![], vec![]);
                    while batch.len() < BATCH.min(MAX_WANTS) {
                        let Some(c) = queue.pop_front() else { break };
                        if tried.get(&c).is_some_and(|t| t.contains(&peer)) {
                            skipped.push(c);
                        } else {
                            batch.push(c);
                        }
                    }
                    queue.extend(skipped);
                    if !batch.is_empty() {
                        next += i + 1;
                        chosen = Some((peer, batch));
                        break;
                    }
                }
                let Some((peer, batch)) = chosen else { break };
                for c in &batch {
                    tried.entry(*c).or_default().insert(peer);
                }
                *busy.entry(peer).or_default() += 1;
                let net = net.clone();
                in_flight.push(async move {
                    let r = net.want_blocks(peer, bitswap::want_blocks(&batch)).await;
                    (peer, batch, r)
                });
            }
            let Some((peer, batch, answer)) = in_flight.next().await else {
                if queue.is_empty() {
                    return Ok(stored);
                }
                // Every provider has been asked for what is left, or failed.
                let c = queue[0];
                if let (None, Some(e)) = (tried.get(&c).filter(|t| !t.is_empty()), &last_failure) {
                    // Not "nobody has it": those who might could not answer.
                    return Err(R1fsError::Unavailable(format!(
                        "the providers of {root} failed before block {} came (last: {e})",
                        canonical(&c)
                    )));
                }
                return Err(R1fsError::NotFound(format!(
                    "no peer has block {} of {root} ({} asked)",
                    canonical(&c),
                    tried.get(&c).map(|t| t.len()).unwrap_or(0)
                )));
            };
            *busy.entry(peer).or_default() -= 1;
            let answer = match answer {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "R1FS provider failed; trying others");
                    last_failure = Some(e.to_string());
                    providers.retain(|p| *p != peer);
                    for c in batch {
                        tried.entry(c).or_default().remove(&peer);
                        queue.push_back(c);
                    }
                    if providers.is_empty() && in_flight.is_empty() {
                        return Err(R1fsError::Unavailable(format!("every provider of {root} failed (last: {e})")));
                    }
                    continue;
                }
            };
            let got = bitswap::receive(&batch, answer);
            if got.rejected > 0 {
                m.rejected
                    .get_or_create(&crate::metrics::ReasonLabels { reason: "block_not_asked" })
                    .inc_by(got.rejected as u64);
                tracing::warn!(%peer, rejected = got.rejected, "R1FS peer sent blocks that were not asked for or do not match");
            }
            let received: HashSet<Cid> = got.blocks.iter().map(|(c, _)| *c).collect();
            let dont: HashSet<Cid> = got.dont_have.iter().copied().collect();
            let n = got.blocks.len() as u64;
            let bytes: u64 = got.blocks.iter().map(|(_, b)| b.len() as u64).sum();
            let blocks = got.blocks;
            // Each block's CID was computed from its bytes (`receive`).
            self.blocking(move |s| blocks.iter().try_for_each(|(c, b)| s.put_own(c, b).map(|_| ()))).await??;
            stored += bytes;
            m.blocks_fetched.inc_by(n);
            m.bytes_fetched.inc_by(bytes);
            progress(stored);
            // An answer with nothing in it (no block, no presence) is a peer
            // that lacks them all or refuses (busy, or it does not admit
            // us): taken as a `DontHave` for each, so it is not asked again
            // at once for the same blocks.
            let empty = received.is_empty() && dont.is_empty();
            for c in batch {
                if received.contains(&c) {
                    continue;
                }
                if !dont.contains(&c) && !empty {
                    // Left out for room: the same peer may be asked again.
                    tried.entry(c).or_default().remove(&peer);
                }
                queue.push_back(c);
            }
            // CIDs every provider said it lacks: nobody has them.
            if let Some(c) =
                queue.iter().find(|c| providers.iter().all(|p| tried.get(c).is_some_and(|t| t.contains(p))))
            {
                if in_flight.is_empty() {
                    return Err(R1fsError::NotFound(format!("no connected peer has block {} of {root}", canonical(c))));
                }
            }
        }
    }

    /// Fetches one block of `root` again (missing, or quarantined as corrupt
    /// by the read that called this).
    pub async fn heal(&self, root: &Cid, block: Cid) -> Result<(), R1fsError> {
        tracing::info!(cid = %canonical(&block), root = %canonical(root), "R1FS block missing or corrupt here: fetching it again");
        self.fetch_blocks(&canonical(root), vec![block], &mut |_| {}).await?;
        self.inner.parts.metrics.r1fs.healed.inc();
        Ok(())
    }

    /// Pins `cid` for `owner`, fetching what is missing first, and
    /// announces this node as a holder.
    pub async fn pin(&self, cid: Cid, owner: &str) -> Result<Pin, R1fsError> {
        let w = self.fetch(cid, &|_| {}).await?;
        // Durable before the pin says so, whoever wrote the blocks (a fetch
        // or an upload running beside this one may not have synced yet).
        self.blocking(|s| s.sync()).await??;
        let pin = Pin { dag_size: w.dag_size, blocks: w.blocks, at: crate::p2p::now_ms() };
        let (pins, owner_s) = (self.inner.pins.clone(), owner.to_string());
        let p = pin.clone();
        tokio::task::spawn_blocking(move || pins.pin(&cid, &owner_s, &p))
            .await
            .map_err(|e| R1fsError::Unavailable(e.to_string()))??;
        if !private(owner) {
            self.announce(&cid, &pin).await;
        }
        self.poke();
        Ok(pin)
    }

    /// Adds `bytes` as one file (the CID `ipfs add --cid-version 1` gives)
    /// and pins it for `owner`: content a service of this node makes, such
    /// as EDIL's trained models.
    pub async fn add_bytes(&self, bytes: Vec<u8>, owner: &str) -> Result<(Cid, Pin), R1fsError> {
        let (added, _, _) = self
            .blocking(move |s| s.put_own_all(|sink| super::add::add_reader(bytes.as_slice(), sink, &mut |_| {})))
            .await??;
        let pin = self.pin(added.cid, owner).await?;
        Ok((added.cid, pin))
    }

    /// Releases `owner`'s pin; the `have` record goes with the last owner.
    pub async fn unpin(&self, cid: Cid, owner: &str) -> Result<usize, R1fsError> {
        let left = self.inner.pins.unpin(&cid, owner)?;
        if left == 0 {
            let _ = self.del_record(&have_key(&self.me(), &canonical(&cid))).await;
        }
        self.poke();
        Ok(left)
    }

    pub fn pins(&self) -> Result<BTreeMap<Cid, BTreeMap<String, Pin>>, R1fsError> {
        Ok(self.inner.pins.all()?)
    }

    async fn announce(&self, cid: &Cid, pin: &Pin) {
        let have = Have { dag_size: pin.dag_size, blocks: pin.blocks };
        let v = serde_json::to_value(&have).expect("serializes");
        if let Err(e) = self.put_record(&have_key(&self.me(), &canonical(cid)), &v).await {
            tracing::warn!(cid = %canonical(cid), error = %e, "cannot announce an R1FS pin; the next pass retries");
        }
    }

    /// Collects unpinned blocks (older than the grace period).
    pub async fn gc(&self) -> Result<Gc, R1fsError> {
        // Pinned roots, and those being fetched (not pinned yet).
        let mut roots: Vec<Cid> = self.inner.pins.all()?.into_keys().collect();
        let fetching: Vec<String> = self.inner.fetching.lock().expect("fetching lock").iter().cloned().collect();
        roots.extend(fetching.iter().filter_map(|c| super::cid::parse(c).ok()));
        let grace = self.inner.cfg.gc_grace;
        let g = self.blocking(move |s| s.gc(&roots, grace)).await??;
        self.inner.parts.metrics.r1fs.gc_freed.inc_by(g.freed);
        Ok(g)
    }

    /// Passes on every change of `r1fs/` records (and at least every resync).
    async fn watch_records(self) {
        let Some(cs) = self.inner.parts.cstore.clone() else { return };
        loop {
            if !cs.wait_up(Duration::from_secs(5)).await {
                continue;
            }
            let Ok(changes) = cs.watch(PREFIX) else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let mut changes = std::pin::pin!(changes);
            while changes.next().await.is_some() {
                self.inner.wake.notify_one();
            }
        }
    }

    async fn replicate_loop(self) {
        loop {
            if let Err(e) = self.pass().await {
                tracing::debug!(error = %e, "R1FS pass incomplete; retrying");
            }
            let _ = tokio::time::timeout(self.inner.cfg.resync, self.inner.wake.notified()).await;
            // Let a burst of changes settle into one pass.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The CIDs this cluster's R1Models ask for, with their replication
    /// (none until the models cache is filled: an empty cache must not
    /// withdraw anything).
    /// Also the pin owners of the imports these models have now (a `volume`
    /// source's CID is the root its import pinned).
    fn own_wants(&self, pinned: &Pinned) -> Option<(BTreeMap<String, Want>, BTreeSet<String>)> {
        if !self.inner.parts.models_ready.is_set() {
            return None;
        }
        let mut imported: BTreeMap<String, Cid> = BTreeMap::new();
        for (cid, owners) in pinned {
            for o in owners.keys().filter(|o| o.starts_with(IMPORT_PREFIX)) {
                imported.insert(o.clone(), *cid);
            }
        }
        let mut out: BTreeMap<String, Want> = BTreeMap::new();
        let mut imports = BTreeSet::new();
        for m in self.inner.parts.models.state() {
            let cid = match &m.spec.source {
                ModelSource { cid: Some(c), .. } => match super::cid::parse(c) {
                    Ok(cid) => cid,
                    Err(_) => continue,
                },
                ModelSource { volume: Some(_), .. } => {
                    let owner = import_owner(&m.uid().unwrap_or_default(), m.metadata.generation.unwrap_or(0));
                    imports.insert(owner.clone());
                    match imported.get(&owner) {
                        Some(cid) => *cid,
                        None => continue,
                    }
                }
                _ => continue,
            };
            let w = out.entry(canonical(&cid)).or_default();
            w.replication = w.replication.max(m.spec.replication.clamp(1, 64) as u32);
            w.models.push(format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any()));
        }
        for w in out.values_mut() {
            w.models.sort();
        }
        Some((out, imports))
    }

    /// One pass: read the records, publish this node's, take or drop
    /// replicas, refresh the snapshot.
    async fn pass(&self) -> Result<(), R1fsError> {
        let me = self.me();
        let records = match &self.inner.parts.cstore {
            Some(cs) => cs.list(PREFIX).await.map_err(|e| R1fsError::Unavailable(e.to_string()))?,
            None => vec![],
        };
        let Records { mut nodes, mut haves, mut wants, over_quota } =
            read_records(records.iter().map(|r| (r.slot.key.as_str(), r.value_json())));
        if over_quota > 0 {
            let m = &self.inner.parts.metrics.r1fs;
            m.rejected.get_or_create(&crate::metrics::ReasonLabels { reason: "want_over_quota" }).inc_by(over_quota);
        }
        // This node's own record.
        let name = self.inner.parts.profile.borrow().as_ref().map(|p| p.node.clone()).unwrap_or_default();
        if nodes.get(&me) != Some(&name) {
            let v = serde_json::to_value(NodeRecord { node: name.clone() }).expect("serializes");
            self.put_record(&node_key(&me), &v).await?;
            nodes.insert(me.clone(), name);
        }
        // This origin's wants, from its models; imports of models gone or
        // changed are released.
        let pinned = self.inner.pins.all()?;
        if let Some((own, imports)) = self.own_wants(&pinned) {
            for (cid, owners) in &pinned {
                let models_import = |o: &str| o.starts_with(IMPORT_PREFIX) && !private(o);
                for o in owners.keys().filter(|o| models_import(o) && !imports.contains(*o)) {
                    tracing::info!(cid = %canonical(cid), owner = %o, "R1FS import of a model deleted or changed: unpinned");
                    self.unpin(*cid, o).await?;
                }
            }
            for (cid, w) in &own {
                if wants.get(cid).and_then(|ws| ws.get(&me)) != Some(w) {
                    self.put_record(&want_key(&me, cid), &serde_json::to_value(w).expect("serializes")).await?;
                    wants.entry(cid.clone()).or_default().insert(me.clone(), w.clone());
                }
            }
            let stale: Vec<String> = wants
                .iter()
                .filter(|(c, ws)| ws.contains_key(&me) && !own.contains_key(*c))
                .map(|(c, _)| c.clone())
                .collect();
            for cid in stale {
                self.del_record(&want_key(&me, &cid)).await?;
                if let Some(ws) = wants.get_mut(&cid) {
                    ws.remove(&me);
                }
            }
            wants.retain(|_, ws| !ws.is_empty());
        }
        // Members: R1FS nodes heard from within the heartbeat timeout.
        let fresh: BTreeSet<String> = {
            let v = self.inner.parts.view.read().expect("view lock");
            v.fresh_peers(crate::p2p::now_ms()).into_iter().map(|p| p.peer_id.clone()).collect()
        };
        let members: BTreeSet<String> = nodes.keys().filter(|p| **p == me || fresh.contains(*p)).cloned().collect();
        let replication: BTreeMap<String, u32> =
            wants.iter().map(|(c, ws)| (c.clone(), ws.values().map(|w| w.replication).max().unwrap_or(1))).collect();
        // Replicas: take what this node is chosen for, drop what it is not
        // once the chosen hold it.
        let pinned = self.inner.pins.all()?;
        for (cid_s, r) in &replication {
            let Ok(cid) = super::cid::parse(cid_s) else { continue };
            let chosen = holders_of(cid_s, &members, *r as usize);
            let replica = pinned.get(&cid).is_some_and(|o| o.contains_key(REPLICA));
            if chosen.contains(&me) && !replica {
                self.take_replica(cid);
            } else if !chosen.contains(&me) && replica {
                let all_hold = chosen.iter().all(|p| haves.get(cid_s).is_some_and(|h| h.contains_key(p)));
                if all_hold {
                    tracing::info!(cid = %cid_s, "R1FS replica no longer needed here: the chosen holders have it");
                    self.unpin(cid, REPLICA).await?;
                }
            }
        }
        for (cid, owners) in &pinned {
            if owners.contains_key(REPLICA) && !replication.contains_key(&canonical(cid)) {
                tracing::info!(cid = %canonical(cid), "R1FS replica no longer wanted by any model: unpinned");
                self.unpin(*cid, REPLICA).await?;
            }
        }
        // `have` records follow the pins; a pinned DAG that lost a block
        // (quarantined by a read) is made whole again.
        let pinned = self.inner.pins.all()?;
        let scrub = self.inner.passes.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(SCRUB_EVERY);
        for cid in pinned.keys().filter(|_| scrub) {
            let c = *cid;
            if !self.inner.fetching.lock().expect("fetching lock").contains(&canonical(cid)) {
                let w = self.blocking(move |s| s.walk(&c)).await??;
                if !w.missing.is_empty() {
                    self.repair(c, w.missing.len());
                }
            }
        }
        for (cid, owners) in &pinned {
            let c = canonical(cid);
            if !haves.get(&c).is_some_and(|h| h.contains_key(&me)) {
                // (A pin of a private import alone is never announced.)
                let public = owners.iter().filter(|(o, _)| !private(o)).map(|(_, p)| p);
                if let Some(p) = public.max_by_key(|p| p.at) {
                    self.announce(cid, p).await;
                    haves.entry(c).or_default().insert(me.clone(), Have { dag_size: p.dag_size, blocks: p.blocks });
                }
            }
        }
        let mine: Vec<String> = haves
            .iter()
            .filter(|(c, h)| h.contains_key(&me) && !pinned.keys().any(|p| canonical(p) == **c))
            .map(|(c, _)| c.clone())
            .collect();
        for c in mine {
            self.del_record(&have_key(&me, &c)).await?;
            if let Some(h) = haves.get_mut(&c) {
                h.remove(&me);
            }
        }
        // The snapshot: fresh holders only.
        for h in haves.values_mut() {
            h.retain(|p, _| members.contains(p));
        }
        haves.retain(|_, h| !h.is_empty());
        let snapshot = Snapshot {
            holders: haves,
            members: members.iter().map(|p| (p.clone(), nodes.get(p).cloned().unwrap_or_default())).collect(),
            wants: replication,
        };
        let changed = {
            let mut s = self.inner.snapshot.write().expect("snapshot lock");
            let changed = *s != snapshot;
            *s = snapshot;
            changed
        };
        let first = !self.inner.loaded.swap(true, std::sync::atomic::Ordering::AcqRel);
        if changed || first {
            self.inner.changed.send_modify(|n| *n += 1);
        }
        self.usage_and_quota().await;
        Ok(())
    }

    /// Fetches and pins a replica in the background (once per CID at a time).
    fn take_replica(&self, cid: Cid) {
        self.in_background(cid, |this, c| async move {
            tracing::info!(cid = %c, "R1FS: chosen as a holder; fetching");
            match this.pin(cid, REPLICA).await {
                Ok(p) => {
                    this.inner.parts.metrics.r1fs.replicas_taken.inc();
                    tracing::info!(cid = %c, bytes = p.dag_size, "R1FS replica pinned");
                }
                Err(e) => tracing::warn!(cid = %c, error = %e, "R1FS replica not fetched yet; the next pass retries"),
            }
        });
    }

    /// Fetches what a pinned DAG lost, in the background.
    fn repair(&self, cid: Cid, missing: usize) {
        self.in_background(cid, |this, c| async move {
            tracing::warn!(cid = %c, missing, "R1FS pinned content lost blocks here: fetching them again");
            match this.fetch(cid, &|_| {}).await {
                Ok(_) => {
                    this.inner.parts.metrics.r1fs.healed.inc();
                }
                Err(e) => tracing::warn!(cid = %c, error = %e, "R1FS repair incomplete; the next pass retries"),
            }
        });
    }

    /// Runs `work` (given the service and the CID as text) in a task, at
    /// most one per CID at a time; meanwhile the CID is in `fetching`, so
    /// GC spares its blocks and passes start nothing more for it.
    fn in_background<F>(&self, cid: Cid, work: impl FnOnce(Self, String) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let c = canonical(&cid);
        if !self.inner.fetching.lock().expect("fetching lock").insert(c.clone()) {
            return;
        }
        let this = self.clone();
        let run = work(this.clone(), c.clone());
        tokio::spawn(async move {
            run.await;
            this.inner.fetching.lock().expect("fetching lock").remove(&c);
        });
    }

    async fn usage_and_quota(&self) {
        let Ok(Ok((blocks, bytes))) = self.blocking(|s| s.usage()).await else { return };
        let m = &self.inner.parts.metrics.r1fs;
        m.store_blocks.set(blocks as i64);
        m.store_bytes.set(bytes as i64);
        if self.inner.cfg.quota_bytes.is_some_and(|q| bytes > q) {
            match self.gc().await {
                Ok(g) => tracing::info!(freed = g.freed, removed = g.removed, "R1FS store above its quota: collected"),
                Err(e) => tracing::warn!(error = %e, "R1FS GC failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_the_same_list_everywhere_and_move_little_when_a_member_leaves() {
        let members: BTreeSet<String> = (0..10).map(|i| format!("peer-{i}")).collect();
        let cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
        let three = holders_of(cid, &members, 3);
        assert_eq!(three.len(), 3);
        assert_eq!(holders_of(cid, &members, 3), three, "deterministic");
        assert_eq!(holders_of(cid, &members, 20).len(), 10, "at most every member");
        // The first holder leaves: the other two stay, one more joins.
        let mut fewer = members.clone();
        fewer.remove(&three[0]);
        let next = holders_of(cid, &fewer, 3);
        assert_eq!(&next[..2], &three[1..]);
        assert!(!next.contains(&three[0]));
        // Another CID spreads elsewhere (not always the same three).
        let spread: BTreeSet<String> = (0..20).flat_map(|i| holders_of(&format!("cid-{i}"), &members, 3)).collect();
        assert!(spread.len() >= 8, "{spread:?}");
    }

    #[test]
    fn one_origin_may_want_at_most_its_quota_and_every_node_keeps_the_same_ones() {
        let cid = |i: usize| {
            let c = crate::r1fs::add::add_reader(format!("content {i}").as_bytes(), &mut |_, _| Ok(()), &mut |_| {});
            canonical(&c.unwrap().cid)
        };
        let want = |r: u32| serde_json::json!({"replication": r, "models": ["ns/m"]});
        let mut records: Vec<(String, serde_json::Value)> =
            (0..MAX_WANTS_PER_ORIGIN + 6).map(|i| (want_key("greedy", &cid(i)), want(2))).collect();
        records.push((want_key("modest", &cid(0)), want(3)));
        // Out of bounds: not a want.
        records.push((want_key("modest", &cid(1)), want(65)));
        records.push((node_key("modest"), serde_json::json!({"node": "m"})));
        // CSTORE lists in key order; so does every node.
        records.sort_by(|a, b| a.0.cmp(&b.0));
        let r = read_records(records.iter().map(|(k, v)| (k.as_str(), v.clone())));
        assert_eq!(r.over_quota, 6);
        let greedy: usize = r.wants.values().filter(|w| w.contains_key("greedy")).count();
        assert_eq!(greedy, MAX_WANTS_PER_ORIGIN);
        // Which ones: the first in key order, so every node keeps the same.
        let first: BTreeSet<String> = records
            .iter()
            .filter_map(|(k, _)| match parse_key(k) {
                Some(Key::Want(p, c)) if p == "greedy" => Some(c),
                _ => None,
            })
            .take(MAX_WANTS_PER_ORIGIN)
            .collect();
        let kept: BTreeSet<String> =
            r.wants.iter().filter(|(_, w)| w.contains_key("greedy")).map(|(c, _)| c.clone()).collect();
        assert_eq!(kept, first);
        assert_eq!(r.wants[&cid(0)]["modest"].replication, 3, "another origin is not held to greedy's quota");
        assert!(!r.wants.get(&cid(1)).is_some_and(|w| w.contains_key("modest")), "replication 65 is refused");
        assert_eq!(r.nodes["modest"], "m");
    }

    #[test]
    fn keys_parse_only_in_their_shapes() {
        let c = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
        assert!(matches!(parse_key(&node_key("p")), Some(Key::Node(p)) if p == "p"));
        assert!(matches!(parse_key(&have_key("p", c)), Some(Key::Have(p, x)) if p == "p" && x == c));
        assert!(matches!(parse_key(&want_key("p", c)), Some(Key::Want(_, _))));
        assert!(parse_key("r1fs/p/have/not-a-cid").is_none());
        assert!(parse_key("r1fs/p/other").is_none());
        assert!(parse_key("node/p/have/x").is_none());
    }

    #[tokio::test]
    async fn a_service_adds_bytes_as_the_cid_ipfs_gives_pins_them_and_releases_them() {
        let root = std::env::temp_dir().join(format!("r1fs-add-bytes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (models, _writer) = kube::runtime::reflector::store();
        let parts = Parts {
            cstore: None,
            view: Default::default(),
            network: Arc::new(|| None),
            metrics: Default::default(),
            models,
            models_ready: Default::default(),
            profile: watch::channel(None).1,
        };
        let r = R1fs::start(R1fsConfig::new(root.clone()), parts, mpsc::channel(1).1).unwrap();
        // Two chunks and a bit: a DAG, not a lone leaf.
        let bytes: Vec<u8> = (0..2 * super::super::add::CHUNK + 10).map(|i| (i * 7 % 251) as u8).collect();
        let want = super::super::add::add_reader(bytes.as_slice(), &mut |_, _| Ok(()), &mut |_| {}).unwrap();
        let (cid, pin) = r.add_bytes(bytes.clone(), "edil-m1").await.unwrap();
        assert_eq!((cid, pin.blocks, pin.dag_size), (want.cid, want.blocks, want.dag_size));
        let mut back = vec![];
        r.store().cat(&cid, &mut back).unwrap();
        assert_eq!(back, bytes);
        assert!(r.pins().unwrap()[&cid].contains_key("edil-m1"));
        // Read back within a bound, and refused past it: by the DAG's
        // size, or by the bytes themselves (the DAG's slack let it by).
        assert_eq!(r.read_within(cid, bytes.len() as u64).await.unwrap(), bytes);
        let small = r.read_within(cid, super::super::add::CHUNK as u64).await;
        assert!(matches!(small, Err(R1fsError::TooLarge(ref e)) if e.contains("larger than")), "{small:?}");
        let short = r.read_within(cid, bytes.len() as u64 - 1).await;
        assert!(matches!(short, Err(R1fsError::TooLarge(ref e)) if e.contains("more than")), "{short:?}");
        // Repeated chunks are one block linked many times: read whole.
        let zeros = vec![0u8; 4 * super::super::add::CHUNK];
        let (z, zp) = r.add_bytes(zeros.clone(), "edil-m1").await.unwrap();
        assert_eq!(zp.blocks, 2, "a root and one leaf");
        assert_eq!(r.read_within(z, zeros.len() as u64).await.unwrap(), zeros);
        assert_eq!(r.unpin(z, "edil-m1").await.unwrap(), 0);
        // The same bytes again: the same CID, one pin per owner.
        assert_eq!(r.add_bytes(bytes, "edil-m1").await.unwrap().0, cid);
        assert_eq!(r.unpin(cid, "edil-m1").await.unwrap(), 0);
        assert!(!r.pins().unwrap().contains_key(&cid));
        let _ = std::fs::remove_dir_all(&root);
    }
}
