//! The EDIL task: federated rounds over CSTORE (docs/edil.md, "Rounds").
//! It runs on the leader of every node with CSTORE, and takes each role
//! the records give it:
//!
//! - **owner** of every R1Model of this cluster with `spec.training`: keeps
//!   the secret key in memory (it never leaves this process), publishes a
//!   public key per participant and each round, opens the released sum,
//!   averages it and starts the next round;
//! - **participant** of every round that lists it: trains the built-in
//!   model on its own shard (`--edil-dataset`), encrypts the weights under
//!   the key the round names, signs them and seals them to the aggregator
//!   ([`super::seal`]: CSTORE copies records to every node, the owner
//!   too, and the owner must not open one update alone);
//! - **aggregator** of every round that names it: adds the updates with no
//!   key ([`super::round::Collector`]) and releases the sum, or withholds
//!   it when fewer than the least participants sent one.
//!
//! Records, each written by the peer it names:
//! `edil/<peer>/datasets` (every node running EDIL, refreshed: a TTL),
//! `edil/<owner>/round/<model uid>/<round>`,
//! `edil/<owner>/key/<model uid>/<participant>` (new each round),
//! `edil/<participant>/update/<owner>/<model uid>/<round>` (sealed),
//! `edil/<aggregator>/sum/<owner>/<model uid>/<round>`.
//!
//! A model of more than [`INLINE_VALUES`] values travels through R1FS: the
//! round names the owner's model document, each update and the sum are
//! R1FS content their writer pins for the round (`edil-round/...`), and
//! the records carry their CIDs. Whoever reads one fetches it within a
//! bound the round's size sets.

use super::crypto::{OwnerKey, ParticipantKey, SignedUpdate};
use super::round::{choose_aggregator, fingerprint, open, Collector, Refusal, Released, Round, Stored, INLINE_VALUES};
use super::trainer::{self, Dataset, Metrics as TrainMetrics};
use crate::crd::{R1Model, RoundModel, TrainingStatus};
use crate::cstore::rules::EDIL_PREFIX;
use crate::cstore::{Change, Cstore};
use crate::metrics::{Metrics, ReasonLabels};
use base64::Engine;
use futures::StreamExt;
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Rounds, keys, updates and sums go after a day: a model's status keeps
/// what matters.
const TTL: Duration = Duration::from_secs(86_400);
/// After a round's deadline, how long the owner waits for the sum (the
/// aggregator closes at the deadline; the record must travel).
const GRACE_MS: u64 = 15_000;
/// A peer counts as fresh (may take part) when heard from this recently.
const FRESH_MS: i64 = 15_000;
/// The datasets record lives this long, written again at half of it: a
/// node that stops (or drops a dataset) leaves the list by itself.
const ADVERT_TTL: Duration = Duration::from_secs(60);
/// After a failed round, the owner waits this long before the next.
const BACKOFF_MS: u64 = 5_000;
/// A round whose deadline is further than this is not served.
const MAX_ROUND_MS: u64 = 86_400_000;
/// Trained models listed (and pinned) per training: the latest.
const MODELS_KEPT: usize = 16;
/// Owners of the pins of trained models: this prefix and the model's uid.
const PIN_PREFIX: &str = crate::r1fs::pins::EDIL_PREFIX;
/// How often pins of trained models no training lists are looked for.
const RELEASE_EVERY: Duration = Duration::from_secs(30);
/// Owners of the pins of a round's updates and sum in R1FS: this prefix
/// and `<owner>/<model uid>/<round>`.
const ROUND_PIN_PREFIX: &str = "edil-round/";
/// A round's pins are kept this long past its deadline (the owner's
/// grace to fetch the sum, and then some).
const ROUND_PIN_KEEP_MS: u64 = 3 * GRACE_MS + 60_000;
/// The longest one read of a round's content from R1FS may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// An inline update record is at most this long (sealed, before base64).
const MAX_INLINE_SEALED: usize = 48 * 1024;

/// Settings of `ratio1 operator` for EDIL.
#[derive(Clone, Debug, Default)]
pub struct EdilConfig {
    /// Dataset name → CSV file this node holds (its shard).
    pub datasets: BTreeMap<String, PathBuf>,
    /// Prefixes of the trainer images this node runs for others' models
    /// (none: no container trainer runs here).
    pub trainer_images: Vec<String>,
    /// Whether a trainer's `command` and `args` (the owner's choice) are
    /// run; else only trainers that set neither (the image's entrypoint).
    pub trainer_owner_args: bool,
}

/// Trainer Jobs, and built-in trainings, a participant runs at once; a
/// round past that waits for one to end.
const MAX_JOBS: usize = 2;
const MAX_TRAININGS: usize = 2;
/// Reads of updates from R1FS an aggregator runs at once.
const MAX_FETCHES: usize = 4;

/// What the EDIL task runs on.
pub struct Parts {
    pub cstore: Cstore,
    pub view: crate::p2p::SharedView,
    /// This cluster's profile (its R1Node name, for status).
    pub profile: tokio::sync::watch::Receiver<Option<crate::deeploy::plan::Profile>>,
    pub models: Store<R1Model>,
    /// Set once the models' cache is filled (before, a model missing from
    /// it may exist: its trained models' pins are kept).
    pub models_ready: crate::objects::Filled,
    /// Where each round's model is stored (while R1FS runs here).
    pub r1fs: crate::r1fs::api::Slot,
    pub metrics: Arc<Metrics>,
    /// Trainer Jobs run in this namespace of this cluster.
    pub client: kube::Client,
    pub namespace: String,
}

/// What a participant seals to the aggregator.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateRecord {
    update: SignedUpdate,
    /// Loss and accuracy on its own shard after training (a trainer
    /// container may not report them), and its size.
    #[serde(default)]
    metrics: Option<TrainMetrics>,
    samples: u64,
}

/// A participant's record: its [`UpdateRecord`] ([`frame`]d), sealed:
/// base64 in the record, or R1FS content the record names.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SealedRecord {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    sealed: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cid: Option<String>,
}

/// A sealed update as a record gives it.
#[derive(Clone, Debug, PartialEq)]
enum Sealed {
    Inline(Vec<u8>),
    /// A CID (checked), the bytes in R1FS.
    Stored(String),
}

/// What an [`UpdateRecord`] in R1FS is sealed as: `R1U1`, the length
/// (u32, little endian) of the record's JSON without the ciphertext, that
/// JSON, then the ciphertext's bytes (no base64 for the bulk of it). An
/// update in a record is sealed as its JSON.
const FRAME: &[u8; 4] = b"R1U1";
/// Most bytes of a framed record's JSON.
const MAX_FRAME_HEAD: usize = 64 * 1024;

fn frame(mut rec: UpdateRecord) -> Vec<u8> {
    let bulk = std::mem::take(&mut rec.update.update);
    let head = serde_json::to_vec(&rec).expect("an update record serializes");
    let mut out = Vec::with_capacity(8 + head.len() + bulk.len());
    out.extend_from_slice(FRAME);
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&bulk);
    out
}

/// The record a frame holds (or the plain JSON an older node seals).
fn unframe(b: &[u8]) -> Option<UpdateRecord> {
    let Some(rest) = b.strip_prefix(FRAME) else { return serde_json::from_slice(b).ok() };
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let head = rest.get(4..4 + len).filter(|_| len <= MAX_FRAME_HEAD)?;
    let mut rec: UpdateRecord = serde_json::from_slice(head).ok()?;
    rec.update.update = rest[4 + len..].to_vec();
    Some(rec)
}

/// Most bytes of a sealed update of `values` values.
fn update_bound(values: usize) -> u64 {
    super::crypto::wire_bound(values) + MAX_FRAME_HEAD as u64 + 1024
}

/// Most bytes of the owner's model document of `values` weights (JSON
/// numbers of an f32 each, pretty-printed).
fn model_bound(values: usize) -> u64 {
    values as u64 * 40 + 64 * 1024
}

/// The pin owner of a round's content on the nodes that made it.
fn round_pin(round: &Round) -> String {
    format!("{ROUND_PIN_PREFIX}{}/{}/{}", round.owner, round.model, round.round)
}

/// Adds `bytes` (an update or a sum of `round`) to R1FS, pinned for the
/// round on this node; their CID.
async fn store_for_round(p: &Parts, round: &Round, bytes: Vec<u8>) -> Result<String, String> {
    let r1fs = p.r1fs.get().ok_or("the model travels through R1FS, which does not run here")?;
    let (cid, _) =
        r1fs.add_bytes(bytes, &round_pin(round)).await.map_err(|e| format!("cannot store it in R1FS: {e}"))?;
    Ok(crate::r1fs::cid::canonical(&cid))
}

/// Why a read of a round's content failed: for now (not there yet, its
/// holder not connected yet, too slow: read again), or for good (more
/// than the round allows, not a file, not what the round names).
#[derive(Debug, Clone, PartialEq)]
enum ReadError {
    Later(String),
    Bad(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Later(e) | ReadError::Bad(e) => f.write_str(e),
        }
    }
}

/// Reads R1FS content of at most `max` bytes (another node's, fetched
/// if need be), within [`FETCH_TIMEOUT`].
async fn read(r1fs: &crate::r1fs::service::R1fs, cid: &str, max: u64) -> Result<Vec<u8>, ReadError> {
    use crate::r1fs::service::R1fsError as E;
    use crate::r1fs::store::StoreError as S;
    let c = crate::r1fs::cid::parse(cid).map_err(ReadError::Bad)?;
    let read = tokio::time::timeout(FETCH_TIMEOUT, r1fs.read_within(c, max)).await.map_err(|_| {
        ReadError::Later(format!("reading {cid} from R1FS took more than {}s", FETCH_TIMEOUT.as_secs()))
    })?;
    read.map_err(|e| match e {
        E::NotFound(_) | E::Unavailable(_) | E::Store(S::NotFound(_) | S::Io(_)) => ReadError::Later(e.to_string()),
        e => ReadError::Bad(e.to_string()),
    })
}

/// An aggregator's record: the sum (inline or in R1FS), or why there is
/// none.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum SumRecord {
    Released(Released),
    Withheld(String),
}

/// (writer, model uid, round).
type Place = (String, String, u64);
/// (writer, owner, model uid, round).
type Reply = (String, String, String, u64);

/// A round to sum, with each update not seen yet: (writer, sealed
/// update, written at).
type ToSum = (Place, Round, Vec<(String, Sealed, u64)>);

/// A round this node sums: each update is added as it arrives (an update
/// in R1FS once fetched), and the sum is released at the end.
struct Summing {
    round: Round,
    /// Made with the first update (a round naming this node costs its
    /// memory only once a participant sends something).
    c: Option<Collector>,
    /// Writers whose update was added or refused (each once).
    seen: BTreeSet<String>,
    /// Writers whose update is being read from R1FS.
    fetching: BTreeSet<String>,
}

impl Summing {
    fn new(round: Round) -> Self {
        Self { round, c: None, seen: Default::default(), fetching: Default::default() }
    }

    /// Whether it holds (or is about to hold) its round's sum.
    fn active(&self) -> bool {
        self.c.is_some() || !self.fetching.is_empty()
    }

    fn done(&self, now_ms: u64) -> bool {
        self.c.as_ref().map_or(now_ms > self.round.deadline_ms, |c| c.done(now_ms))
    }

    fn close(&self) -> Result<(Released, Vec<u8>), String> {
        match &self.c {
            Some(c) => c.close(),
            None => Err(super::round::too_few(0, self.round.min_participants as usize)),
        }
    }
}

/// The values of the sums an aggregator holds, in all and per owner: at
/// most [`MAX_SUMMING_VALUES`] in all, and half of it for one owner (an
/// owner naming this node in many rounds leaves room for the others).
#[derive(Default)]
struct Held {
    all: usize,
    by_owner: BTreeMap<String, usize>,
}

impl Held {
    fn add(&mut self, owner: &str, values: usize) {
        self.all += values;
        *self.by_owner.entry(owner.to_string()).or_default() += values;
    }

    fn room(&self, owner: &str, values: usize) -> bool {
        let mine = self.by_owner.get(owner).copied().unwrap_or(0);
        self.all + values <= MAX_SUMMING_VALUES && mine + values <= MAX_SUMMING_VALUES / 2
    }
}

/// A read of an update from R1FS: its round, writer, when it was written,
/// and the sealed bytes.
type Fetched = (Place, String, u64, Result<Vec<u8>, ReadError>);

/// Most values of the sums one aggregator holds at once (16 bytes each:
/// 64 MiB); a round past it waits for room.
const MAX_SUMMING_VALUES: usize = 1 << 22;

#[derive(Default)]
struct Mirror {
    datasets: BTreeMap<String, BTreeSet<String>>,
    /// Peers running EDIL with R1FS (they can take part in, or sum, the
    /// rounds of a model too large for records).
    r1fs: BTreeSet<String>,
    /// Per peer, the prefixes of the trainer images it runs, and the
    /// peers that run a trainer's own command and args.
    trainers: BTreeMap<String, Vec<String>>,
    trainer_args: BTreeSet<String>,
    rounds: BTreeMap<Place, Round>,
    /// (owner, model uid, participant) → key (wire bytes).
    keys: BTreeMap<(String, String, String), Vec<u8>>,
    /// Sealed updates and when each was written (the writer's clock,
    /// never later than when this node saw it). The first stands.
    updates: BTreeMap<Reply, (Sealed, u64)>,
    sums: BTreeMap<Reply, SumRecord>,
}

impl Mirror {
    fn observe(&mut self, key: &str, rec: Option<&crate::cstore::record::Record>, now: u64) {
        let Some(rest) = key.strip_prefix(EDIL_PREFIX) else { return };
        let value = rec.filter(|r| !r.is_tombstone() && !r.expired(now as i64)).map(|r| r.value_json());
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [peer, "datasets"] => {
                let names =
                    value.as_ref().and_then(|v| serde_json::from_value::<Vec<String>>(v.get("datasets")?.clone()).ok());
                let images = value
                    .as_ref()
                    .and_then(|v| serde_json::from_value::<Vec<String>>(v.get("trainerImages")?.clone()).ok());
                match images.filter(|i| !i.is_empty()) {
                    Some(i) => self
                        .trainers
                        .insert(peer.to_string(), i.into_iter().take(16).filter(|p| p.len() <= 256).collect()),
                    None => self.trainers.remove(*peer),
                };
                match value.as_ref().and_then(|v| v.get("trainerArgs")?.as_bool()) {
                    Some(true) => self.trainer_args.insert(peer.to_string()),
                    _ => self.trainer_args.remove(*peer),
                };
                match value.and_then(|v| v.get("r1fs")?.as_bool()) {
                    Some(true) => self.r1fs.insert(peer.to_string()),
                    _ => self.r1fs.remove(*peer),
                };
                match names {
                    Some(n) => self.datasets.insert(peer.to_string(), n.into_iter().take(64).collect()),
                    None => self.datasets.remove(*peer),
                };
            }
            [owner, "round", uid, r] => {
                let Ok(r) = r.parse::<u64>() else { return };
                let place = (owner.to_string(), uid.to_string(), r);
                let round = value
                    .and_then(|v| serde_json::from_value::<Round>(v).ok())
                    .filter(|x| x.check(owner).is_ok() && x.model == *uid && x.round == r);
                match round {
                    Some(x) => self.rounds.insert(place, x),
                    None => self.rounds.remove(&place),
                };
            }
            [owner, "key", uid, p] => {
                let place = (owner.to_string(), uid.to_string(), p.to_string());
                let key = value.and_then(|v| B64.decode(v.get("key")?.as_str()?).ok());
                match key {
                    Some(k) => self.keys.insert(place, k),
                    None => self.keys.remove(&place),
                };
            }
            [p, "update", owner, uid, r] => {
                let Ok(r) = r.parse::<u64>() else { return };
                let place = (p.to_string(), owner.to_string(), uid.to_string(), r);
                let sealed =
                    value.and_then(|v| serde_json::from_value::<SealedRecord>(v).ok()).and_then(|v| match v.cid {
                        Some(c) => crate::r1fs::cid::parse(&c).ok().map(|_| Sealed::Stored(c)),
                        None => B64
                            .decode(v.sealed)
                            .ok()
                            .filter(|b| !b.is_empty() && b.len() <= MAX_INLINE_SEALED)
                            .map(Sealed::Inline),
                    });
                let at = rec.map_or(now, |r| r.hlc.wall_ms().min(now));
                match sealed {
                    // The first version stands (a rewrite is not a second
                    // chance past the deadline).
                    Some(b) => {
                        self.updates.entry(place).or_insert((b, at));
                    }
                    None => {
                        self.updates.remove(&place);
                    }
                }
            }
            [a, "sum", owner, uid, r] => {
                let Ok(r) = r.parse::<u64>() else { return };
                let place = (a.to_string(), owner.to_string(), uid.to_string(), r);
                match value.and_then(|v| serde_json::from_value::<SumRecord>(v).ok()) {
                    Some(s) => self.sums.insert(place, s),
                    None => self.sums.remove(&place),
                };
            }
            _ => {}
        }
    }
}

/// An owner's training of one model (in memory: the secret key too).
struct Training {
    key: OwnerKey,
    /// What the training was set up from (a changed spec starts over).
    spec: crate::crd::TrainingSpec,
    global: Vec<f32>,
    /// The R1FS model document holding `global` (stored before a round of
    /// a model too large for records names it).
    global_cid: Option<String>,
    /// The read of the current round's sum from R1FS, under way.
    sum_read: Option<SumRead>,
    trained: u64,
    /// The round under way, and when it was published (Unix ms).
    current: Option<(Round, u64)>,
    next_round: u64,
    /// No new round before this (Unix ms): after a failure.
    retry_at: u64,
    /// The aggregator of the last failed round (not chosen next).
    failed_aggregator: Option<String>,
    status: TrainingStatus,
}

struct Inner {
    cfg: EdilConfig,
    view: crate::p2p::SharedView,
    profile: tokio::sync::watch::Receiver<Option<crate::deeploy::plan::Profile>>,
    mirror: RwLock<Mirror>,
    /// Model uid → (`namespace/name`, its training).
    trainings: Mutex<BTreeMap<String, (String, TrainingStatus)>>,
}

/// EDIL, once this replica leads with CSTORE on. Clones share it.
#[derive(Clone)]
pub struct Edil {
    inner: Arc<Inner>,
}

pub type Slot = Arc<std::sync::OnceLock<Edil>>;

fn now() -> u64 {
    crate::p2p::now_ms() as u64
}

impl Edil {
    pub fn start(cfg: EdilConfig, p: Parts) -> Self {
        let inner = Arc::new(Inner {
            cfg,
            view: p.view.clone(),
            profile: p.profile.clone(),
            mirror: Default::default(),
            trainings: Default::default(),
        });
        tokio::spawn(run(p, Arc::downgrade(&inner)));
        Self { inner }
    }

    /// The training of the model `uid` owned here, as it stands.
    pub fn status(&self, uid: &str) -> Option<TrainingStatus> {
        self.inner.trainings.lock().expect("trainings lock").get(uid).map(|(_, t)| t.clone())
    }

    /// Every training owned here (`GET /v1/edil`): `namespace/name` →
    /// its training.
    pub fn all(&self) -> BTreeMap<String, TrainingStatus> {
        self.inner.trainings.lock().expect("trainings lock").values().cloned().collect()
    }

    /// The R1Node name of a peer, else the PeerId.
    fn name_of(&self, peer: &str) -> String {
        let v = self.inner.view.read().expect("view lock");
        if v.peer_id.as_deref() == Some(peer) {
            if let Some(p) = self.inner.profile.borrow().as_ref() {
                return p.node.clone();
            }
        }
        v.peers.get(peer).map(|p| p.node.clone()).filter(|n| !n.is_empty()).unwrap_or_else(|| peer.to_string())
    }

    /// Names of peers, sorted (for status).
    fn names_of(&self, peers: &[String]) -> Vec<String> {
        let mut names: Vec<String> = peers.iter().map(|p| self.name_of(p)).collect();
        names.sort();
        names
    }

    /// Peers heard from recently (they may take part).
    fn fresh(&self) -> BTreeSet<String> {
        let now = crate::p2p::now_ms();
        let v = self.inner.view.read().expect("view lock");
        v.peers
            .values()
            .filter(|p| p.connected && p.last_heartbeat.is_some_and(|t| now - t <= FRESH_MS))
            .map(|p| p.peer_id.clone())
            .collect()
    }
}

async fn run(p: Parts, weak: std::sync::Weak<Inner>) {
    let p = Arc::new(p);
    let mut loads = u64::MAX;
    let mut changes = futures::stream::pending::<Change>().boxed();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut owned: BTreeMap<String, Training> = BTreeMap::new();
    // Rounds (owner, model uid, round) this node trained for or summed
    // already; forgotten with the round's record.
    let mut trained: BTreeSet<Place> = BTreeSet::new();
    let mut summed: BTreeSet<Place> = BTreeSet::new();
    let mut summing: BTreeMap<Place, Summing> = BTreeMap::new();
    let mut fetches: tokio::task::JoinSet<Fetched> = tokio::task::JoinSet::new();
    // When, and whether with R1FS (delivering to pods), this node last
    // advertised.
    let mut advertised: Option<(tokio::time::Instant, (bool, bool))> = None;
    // Trainer Jobs under way, and built-in trainings (each: its round, and
    // whether to try it again).
    let mut running: BTreeMap<Place, Running> = BTreeMap::new();
    let mut training: tokio::task::JoinSet<(Place, bool)> = tokio::task::JoinSet::new();
    let mut released: Option<tokio::time::Instant> = None;
    loop {
        if loads != p.cstore.loads() {
            loads = p.cstore.loads();
            changes = match p.cstore.watch(EDIL_PREFIX) {
                Ok(w) => w.boxed(),
                Err(_) => futures::stream::pending().boxed(),
            };
            match p.cstore.list(EDIL_PREFIX).await {
                Ok(records) => {
                    let Some(inner) = weak.upgrade() else { return };
                    let mut m = Mirror::default();
                    for r in records {
                        m.observe(&r.slot.key, Some(&r), now());
                    }
                    *inner.mirror.write().expect("mirror lock") = m;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "EDIL cannot read CSTORE; reading again");
                    loads = u64::MAX;
                    tick.tick().await;
                    continue;
                }
            }
        }
        tokio::select! {
            ch = changes.next() => match crate::cstore::drain_ready(ch, &mut changes) {
                Some(batch) => {
                    let Some(inner) = weak.upgrade() else { return };
                    let mut m = inner.mirror.write().expect("mirror lock");
                    for c in batch {
                        m.observe(&c.slot.key, c.record.as_ref(), now());
                    }
                    continue;
                }
                None => loads = u64::MAX,
            },
            Some(Ok((place, again))) = training.join_next(), if !training.is_empty() => {
                if again {
                    trained.remove(&place);
                }
                continue;
            }
            Some(done) = fetches.join_next(), if !fetches.is_empty() => {
                if let (Ok((place, writer, at, got)), Some(keypair)) = (done, p.cstore.keypair()) {
                    if let Some(s) = summing.get_mut(&place) {
                        fetched(&p, &keypair, s, &writer, at, got);
                    }
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        let e = Edil { inner };
        let Some(me) = p.cstore.peer_id().map(|m| m.to_string()) else { continue };
        // Every node running EDIL says so (with the datasets it holds, and
        // whether it runs R1FS): aggregators are chosen among them.
        // Container trainers need R1FS to deliver content to pods.
        let with_r1fs = p.r1fs.get().is_some();
        let delivers = p.r1fs.get().and_then(|r| r.delivery()).is_some();
        if advertised.is_none_or(|(t, r)| t.elapsed() >= ADVERT_TTL / 2 || r != (with_r1fs, delivers)) {
            let names: Vec<&String> = e.inner.cfg.datasets.keys().collect();
            let key = format!("{EDIL_PREFIX}{me}/datasets");
            let images: &[String] = if delivers { &e.inner.cfg.trainer_images } else { &[] };
            let args = delivers && e.inner.cfg.trainer_owner_args;
            let value = serde_json::json!({ "datasets": names, "r1fs": with_r1fs, "trainerImages": images, "trainerArgs": args });
            match p.cstore.set(&key, &value, Some(ADVERT_TTL)).await {
                Ok(rec) => {
                    e.inner.mirror.write().expect("mirror lock").observe(&key, Some(&rec), now());
                    advertised = Some((tokio::time::Instant::now(), (with_r1fs, delivers)));
                }
                Err(err) => tracing::warn!(error = %err, "cannot advertise EDIL datasets"),
            }
        }
        {
            // Records expire: so do the rounds this node remembers.
            let m = e.inner.mirror.read().expect("mirror lock");
            trained.retain(|k| m.rounds.contains_key(k));
            summed.retain(|k| m.rounds.contains_key(k));
            summing.retain(|k, _| m.rounds.contains_key(k) && !summed.contains(k));
        }
        participate(&e, &p, &me, &mut trained, &mut running, &mut training).await;
        aggregate(&e, &p, &me, &mut summed, &mut summing, &mut fetches).await;
        // (Read before `own` looks at the cache: a cache filled in between
        // would look like models gone.)
        let models_ready = p.models_ready.is_set();
        own(&e, &p, &me, &mut owned).await;
        if released.is_none_or(|t| t.elapsed() >= RELEASE_EVERY) {
            release_pins(&e, &p, &owned, models_ready, &running).await;
            released = Some(tokio::time::Instant::now());
        }
    }
}

/// A trainer Job under way for a round, with the round and the key its
/// update is for.
struct Running {
    round: Round,
    key: Vec<u8>,
    /// The Job's weights, once read (kept until sent: a failed write is
    /// tried again without training again).
    trained: Option<Trained>,
}

/// Weights trained for a round: the weights, the trainer's measures on
/// its shard (if it gave them), and the shard's size.
type Trained = (Vec<f32>, Option<TrainMetrics>, u64);

/// As a participant: an update for every round that lists this node and
/// that it has not answered, trained by the built-in trainer or by the
/// round's trainer container (a Job, over several ticks: see
/// [`super::jobs`]), encrypted under the key the round names and sealed
/// to the round's aggregator.
async fn participate(
    e: &Edil,
    p: &Arc<Parts>,
    me: &str,
    done: &mut BTreeSet<Place>,
    running: &mut BTreeMap<Place, Running>,
    tasks: &mut tokio::task::JoinSet<(Place, bool)>,
) {
    let now = now();
    finish_jobs(p, me, running, now).await;
    let todo: Vec<(Round, Vec<u8>)> = {
        let m = e.inner.mirror.read().expect("mirror lock");
        m.rounds
            .iter()
            .filter(|(k, r)| {
                r.participants.iter().any(|x| x == me)
                    && now <= r.deadline_ms
                    && r.deadline_ms <= now + MAX_ROUND_MS
                    && !done.contains(*k)
                    && !m.updates.contains_key(&(me.to_string(), r.owner.clone(), r.model.clone(), r.round))
            })
            .filter_map(|(_, r)| {
                // Only the key the round names: a key of another round (or
                // of the owner before a restart) would not decrypt.
                let key = m.keys.get(&(r.owner.clone(), r.model.clone(), me.to_string()))?;
                (r.keys.get(me) == Some(&fingerprint(key))).then(|| (r.clone(), key.clone()))
            })
            .collect()
    };
    for (round, key) in todo {
        let place = (round.owner.clone(), round.model.clone(), round.round);
        done.insert(place.clone());
        let Some(path) = e.inner.cfg.datasets.get(&round.dataset).cloned() else {
            tracing::warn!(dataset = %round.dataset, "a round lists this node for a dataset it does not hold");
            continue;
        };
        if round.trainer.is_some() {
            if running.len() >= MAX_JOBS {
                done.remove(&place);
                continue;
            }
            match start_job(e, p, &round, &path, now).await {
                Ok(()) => {
                    running.insert(place, Running { round, key, trained: None });
                }
                Err(why) => tracing::warn!(model = %round.model, round = round.round, %why, "cannot run a trainer Job"),
            }
            continue;
        }
        if tasks.len() >= MAX_TRAININGS {
            done.remove(&place);
            continue;
        }
        // No model the built-in trainer cannot train is read.
        if round.values() > trainer::MAX_FEATURES + 1 {
            tracing::warn!(model = %round.model, values = round.values(), "a round of more weights than the built-in trainer has");
            continue;
        }
        // Reading the model (from R1FS, maybe slowly) and training run
        // beside the loop; the result says whether to try again.
        let (p, me) = (p.clone(), me.to_string());
        tasks.spawn(async move {
            let global = match global_of(&p, &round).await {
                Ok(g) => g,
                Err(why) => {
                    tracing::warn!(model = %round.model, round = round.round, %why, "cannot read a round's model");
                    return (place, matches!(why, ReadError::Later(_)));
                }
            };
            // Training is CPU work: off the async threads.
            let r = round.clone();
            let trained = tokio::task::spawn_blocking(move || -> Result<Trained, String> {
                let text =
                    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let data = Dataset::parse_csv(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                let w = trainer::train(&global, &data, r.steps, r.lr).map_err(|e| e.to_string())?;
                let metrics = trainer::evaluate(&w, &data).map_err(|e| e.to_string())?;
                Ok((w, Some(metrics), data.len() as u64))
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            match trained {
                Ok(t) => {
                    let sent = send_update(&p, &me, &round, key, t).await;
                    (place, !sent)
                }
                Err(why) => {
                    tracing::warn!(model = %round.model, round = round.round, %why, "cannot train for a round");
                    (place, false)
                }
            }
        });
    }
}

/// Starts the trainer Job of `round` (its image, and its command and
/// args if any, must be ones this node runs), or adopts the one a restart
/// left.
async fn start_job(e: &Edil, p: &Parts, round: &Round, dataset: &std::path::Path, now: u64) -> Result<(), String> {
    let trainer = round.trainer.as_ref().ok_or("the round has no trainer")?;
    let m = &p.metrics.edil.trainer_jobs;
    let cfg = &e.inner.cfg;
    let refuse = if !super::jobs::allowed(&trainer.image, &cfg.trainer_images) {
        Some(format!("image {} is not one this node runs (--edil-trainer-image)", trainer.image))
    } else if !cfg.trainer_owner_args && (!trainer.command.is_empty() || !trainer.args.is_empty()) {
        Some("the trainer sets command or args, which this node does not run (--edil-trainer-owner-args)".into())
    } else {
        None
    };
    if let Some(why) = refuse {
        m.get_or_create(&ReasonLabels { reason: "refused" }).inc();
        return Err(why);
    }
    let r1fs = p.r1fs.get().ok_or("a trainer Job reads its model from R1FS, which does not run here")?;
    let delivery = r1fs.delivery().ok_or("R1FS does not deliver content to pods here (--r1fs-pod-endpoint)")?;
    let token = r1fs.import_token(&super::jobs::pin_owner(round));
    let job = super::jobs::job(round, trainer, dataset, &p.namespace, &delivery, token, now)?;
    let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> = kube::Api::namespaced(p.client.clone(), &p.namespace);
    let name = super::jobs::name(round);
    // A Job of this round left by a restart is adopted as it is (a Job's
    // pod template cannot change, and its deadline counts from its start).
    let adopted = match jobs.create(&kube::api::PostParams::default(), &job).await {
        Ok(_) => false,
        Err(kube::Error::Api(e)) if e.code == 409 => true,
        Err(e) => return Err(format!("cannot create Job {}/{name}: {e}", p.namespace)),
    };
    m.get_or_create(&ReasonLabels { reason: if adopted { "adopted" } else { "started" } }).inc();
    tracing::info!(model = %round.model, round = round.round, job = %name, image = %trainer.image, adopted, "EDIL trainer Job under way");
    Ok(())
}

/// Trainer Jobs whose weights are in (sent on), that failed, or whose
/// round's deadline passed; each leaves with its Job and pin.
async fn finish_jobs(p: &Parts, me: &str, running: &mut BTreeMap<Place, Running>, now: u64) {
    if running.is_empty() {
        return;
    }
    let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> = kube::Api::namespaced(p.client.clone(), &p.namespace);
    let places: Vec<Place> = running.keys().cloned().collect();
    for place in places {
        let r = running.get_mut(&place).expect("listed");
        // Weights read on an earlier tick whose write failed: sent again.
        if let Some(t) = r.trained.clone() {
            if send_update(p, me, &r.round, r.key.clone(), t).await || now > r.round.deadline_ms {
                running.remove(&place);
            }
            continue;
        }
        let (name, owner) = (super::jobs::name(&r.round), super::jobs::pin_owner(&r.round));
        let pinned = p.r1fs.get().and_then(|x| x.pinned_by(&owner).map(|c| (x.clone(), c)));
        let outcome: Option<Result<Trained, String>> = match pinned {
            Some((r1fs, cid)) => {
                let read = r1fs.read_within(cid, model_bound(r.round.values())).await.map_err(|e| e.to_string());
                let _ = r1fs.unpin(cid, &owner).await;
                Some(read.and_then(|b| super::jobs::output(&b, r.round.values())))
            }
            None if now > r.round.deadline_ms => Some(Err("the round's deadline passed".into())),
            None => match jobs.get_opt(&name).await {
                Ok(Some(j)) => match super::jobs::failed(&j) {
                    Some(why) => Some(Err(format!("Job {name} failed ({why})"))),
                    // A pod that cannot start is given up at once.
                    None => {
                        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
                            kube::Api::namespaced(p.client.clone(), &p.namespace);
                        let lp = kube::api::ListParams::default().labels(&format!("job-name={name}"));
                        let listed = pods.list(&lp).await.ok().map(|l| l.items).unwrap_or_default();
                        listed
                            .iter()
                            .find_map(super::jobs::stuck)
                            .map(|why| Err(format!("Job {name}'s pod cannot start ({why})")))
                    }
                },
                Ok(None) => Some(Err(format!("Job {name} is gone"))),
                Err(_) => None,
            },
        };
        let Some(outcome) = outcome else { continue };
        let dp = kube::api::DeleteParams::background();
        if let Err(err) = jobs.delete(&name, &dp).await {
            tracing::debug!(job = %name, error = %err, "cannot delete a trainer Job (its TTL will)");
        }
        let label = match outcome {
            Ok(t) => {
                if send_update(p, me, &r.round, r.key.clone(), t.clone()).await {
                    running.remove(&place);
                } else {
                    r.trained = Some(t);
                }
                "succeeded"
            }
            Err(why) => {
                tracing::warn!(model = %r.round.model, round = r.round.round, %why, "EDIL trainer Job gave no update");
                running.remove(&place);
                "failed"
            }
        };
        p.metrics.edil.trainer_jobs.get_or_create(&ReasonLabels { reason: label }).inc();
    }
}

/// Encrypts trained weights under the round's key, signs them, seals them
/// to the aggregator, and writes the update (in its record, or in R1FS
/// for a model too large for records). False when it could not be
/// written (to try again).
async fn send_update(p: &Parts, me: &str, round: &Round, key: Vec<u8>, (w, metrics, samples): Trained) -> bool {
    let Some(keypair) = p.cstore.keypair() else { return false };
    let Ok(aggregator) = round.aggregator.parse::<libp2p_identity::PeerId>() else { return true };
    // Encryption is CPU work: off the async threads.
    let r = round.clone();
    let made = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let key = ParticipantKey::from_bytes(&key).map_err(|e| e.to_string())?;
        let enc = r.encoding().map_err(|e| e.to_string())?;
        let update = key.encrypt(&enc.quantise(&w)).map_err(|e| e.to_string())?;
        let update = SignedUpdate::sign(&keypair, &r.id(), r.round, &update);
        let rec = UpdateRecord { update, metrics, samples };
        // The frame for R1FS content; JSON in records, as every node reads.
        let plain = match r.stored {
            Some(_) => frame(rec),
            None => serde_json::to_vec(&rec).expect("an update record serializes"),
        };
        super::seal::seal(&keypair, &aggregator, &r.seal_context(), &plain).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    // In the record, or in R1FS for a model too large for records.
    let record = match (made, round.stored.is_some()) {
        (Ok(sealed), false) => Ok(SealedRecord { sealed: B64.encode(&sealed), cid: None }),
        (Ok(sealed), true) => {
            store_for_round(p, round, sealed).await.map(|cid| SealedRecord { cid: Some(cid), ..Default::default() })
        }
        (Err(why), _) => Err(why),
    };
    let value = match record {
        Ok(r) => serde_json::to_value(&r).expect("a record serializes"),
        Err(why) => {
            tracing::warn!(model = %round.model, round = round.round, %why, "cannot send an update for a round");
            return true;
        }
    };
    let k = format!("{EDIL_PREFIX}{me}/update/{}/{}/{}", round.owner, round.model, round.round);
    match p.cstore.set(&k, &value, Some(TTL)).await {
        Ok(_) => {
            p.metrics.edil.updates_sent.inc();
            tracing::info!(model = %round.model, round = round.round, "EDIL update sent");
            true
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot write an EDIL update; trying again");
            false
        }
    }
}

/// The weights a round trains from: its own, or the owner's model
/// document in R1FS that it names (checked to be that model's, after
/// the round's `trained` rounds, of the round's size).
async fn global_of(p: &Parts, round: &Round) -> Result<Vec<f32>, ReadError> {
    let Some(Stored { cid, values }) = &round.stored else { return Ok(round.global.clone()) };
    let r1fs = p.r1fs.get().ok_or(ReadError::Bad("the model travels through R1FS, which does not run here".into()))?;
    let bytes = read(r1fs, cid, model_bound(*values as usize)).await?;
    #[derive(Deserialize)]
    struct Doc {
        uid: String,
        round: u64,
        weights: Vec<f64>,
    }
    let doc: Doc =
        serde_json::from_slice(&bytes).map_err(|e| ReadError::Bad(format!("{cid} is not a model document: {e}")))?;
    if doc.uid != round.model || doc.round != round.trained || doc.weights.len() != *values as usize {
        return Err(ReadError::Bad(format!(
            "{cid} holds {} weights of model {} after {} rounds, not the round's",
            doc.weights.len(),
            doc.uid,
            doc.round
        )));
    }
    Ok(doc.weights.iter().map(|v| *v as f32).collect())
}

/// Opens a sealed update and offers it to the round's sum; a refusal is
/// counted and logged once.
fn offer(p: &Parts, keypair: &libp2p_identity::Keypair, s: &mut Summing, writer: &str, sealed: &[u8], at: u64) {
    let round = s.round.clone();
    s.seen.insert(writer.to_string());
    if s.c.is_none() {
        match Collector::new(round.clone()) {
            Ok(c) => s.c = Some(c),
            Err(e) => return refused(p, &round, writer, &Refusal::Shape(e)),
        }
    }
    let c = s.c.as_mut().expect("made above");
    let opened = writer
        .parse::<libp2p_identity::PeerId>()
        .ok()
        .and_then(|from| super::seal::open(keypair, &from, &round.seal_context(), sealed).ok())
        .and_then(|b| unframe(&b));
    let outcome = match opened {
        None => Err(Refusal::Sealed),
        Some(u) => {
            let reported = u.metrics.map(|m| (m.loss as f64, m.accuracy as f64, u.samples));
            c.offer(writer, &u.update, at, reported)
        }
    };
    if let Err(why) = outcome {
        refused(p, &round, writer, &why);
    }
}

fn refused(p: &Parts, round: &Round, writer: &str, why: &Refusal) {
    p.metrics.edil.updates_refused.get_or_create(&ReasonLabels { reason: why.label() }).inc();
    tracing::warn!(model = %round.model, round = round.round, %writer, reason = %why, "EDIL update refused");
}

/// A read of an update from R1FS ended: offered, or read again on a later
/// tick (not there yet), or refused (not what the round allows).
fn fetched(
    p: &Parts,
    keypair: &libp2p_identity::Keypair,
    s: &mut Summing,
    writer: &str,
    at: u64,
    got: Result<Vec<u8>, ReadError>,
) {
    s.fetching.remove(writer);
    match got {
        Ok(sealed) => offer(p, keypair, s, writer, &sealed, at),
        // Not there yet (its holder not connected, its `have` record not
        // here yet): read again on a later tick, until the round closes.
        Err(ReadError::Later(why)) => {
            tracing::info!(%writer, %why, "cannot read an EDIL update from R1FS yet; reading again");
        }
        Err(ReadError::Bad(why)) => {
            s.seen.insert(writer.to_string());
            refused(p, &s.round.clone(), writer, &Refusal::Unfetched(why));
        }
    }
}

/// As an aggregator: adds the updates of every round that names this node
/// as they arrive (those in R1FS once read, in `fetches`), and writes the
/// sum once every participant's is in or the deadline passed (and the
/// reads under way ended, or half the owner's grace). The sums held at
/// once are bounded ([`MAX_SUMMING_VALUES`]): a round past it waits.
async fn aggregate(
    e: &Edil,
    p: &Parts,
    me: &str,
    done: &mut BTreeSet<Place>,
    summing: &mut BTreeMap<Place, Summing>,
    fetches: &mut tokio::task::JoinSet<Fetched>,
) {
    let now = now();
    let Some(keypair) = p.cstore.keypair() else { return };
    let rounds: Vec<ToSum> = {
        let m = e.inner.mirror.read().expect("mirror lock");
        m.rounds
            .iter()
            .filter(|(k, r)| r.aggregator == me && r.deadline_ms <= now + MAX_ROUND_MS && !done.contains(*k))
            .filter(|(_, r)| !m.sums.contains_key(&(me.to_string(), r.owner.clone(), r.model.clone(), r.round)))
            .map(|(k, r)| {
                let s = summing.get(k);
                let new = |w: &String| s.is_none_or(|s| !s.seen.contains(w) && !s.fetching.contains(w));
                let ups = m
                    .updates
                    .iter()
                    .filter(|((w, o, uid, n), _)| *o == r.owner && *uid == r.model && *n == r.round && new(w))
                    .map(|((w, ..), (sealed, at))| (w.clone(), sealed.clone(), *at))
                    .collect();
                (k.clone(), r.clone(), ups)
            })
            .collect()
    };
    let mut held = Held::default();
    for s in summing.values().filter(|s| s.active()) {
        held.add(&s.round.owner, s.round.values());
    }
    for (place, round, mut updates) in rounds {
        let s = summing.entry(place.clone()).or_insert_with(|| Summing::new(round.clone()));
        if !s.active() && !updates.is_empty() {
            // No room: nothing of this round is read now (it closes at
            // its deadline with what it holds).
            if held.room(&round.owner, round.values()) {
                held.add(&round.owner, round.values());
            } else {
                updates.clear();
            }
        }
        for (writer, sealed, at) in updates {
            // Only a listed participant's update is read (or added).
            if !round.participants.contains(&writer) {
                s.seen.insert(writer.clone());
                refused(p, &round, &writer, &Refusal::NotListed(writer.clone()));
                continue;
            }
            match sealed {
                Sealed::Inline(b) => offer(p, &keypair, s, &writer, &b, at),
                // (Read on a later tick while as many reads run.)
                Sealed::Stored(_) if fetches.len() >= MAX_FETCHES => {}
                Sealed::Stored(cid) => {
                    let Some(r1fs) = p.r1fs.get().cloned() else {
                        s.seen.insert(writer.clone());
                        refused(p, &round, &writer, &Refusal::Unfetched("R1FS does not run here".into()));
                        continue;
                    };
                    s.fetching.insert(writer.clone());
                    let (place, max) = (place.clone(), update_bound(round.values()));
                    fetches.spawn(async move {
                        let got = read(&r1fs, &cid, max).await;
                        (place, writer, at, got)
                    });
                }
            }
        }
        let waited = now > round.deadline_ms + GRACE_MS / 2;
        if !s.done(now) || !(s.fetching.is_empty() || waited) {
            continue;
        }
        let (rec, label) = match s.close() {
            Ok((mut r, sum)) => {
                if round.stored.is_none() {
                    r.aggregate = B64.encode(&sum);
                    (SumRecord::Released(r), "released")
                } else {
                    match store_for_round(p, &round, sum).await {
                        Ok(cid) => {
                            r.aggregate_cid = Some(cid);
                            (SumRecord::Released(r), "released")
                        }
                        // Tried again until the owner's grace ends; then
                        // the owner hears why.
                        Err(err) if now <= round.deadline_ms + GRACE_MS => {
                            tracing::warn!(error = %err, "cannot store an EDIL sum in R1FS; trying again");
                            continue;
                        }
                        Err(err) => (SumRecord::Withheld(format!("the sum: {err}")), "withheld"),
                    }
                }
            }
            Err(why) => (SumRecord::Withheld(why), "withheld"),
        };
        let k = format!("{EDIL_PREFIX}{me}/sum/{}/{}/{}", round.owner, round.model, round.round);
        match p.cstore.set(&k, &serde_json::to_value(&rec).expect("sum serializes"), Some(TTL)).await {
            Ok(_) => {
                let updates = s.c.as_ref().map_or(0, |c| c.from().len());
                // Reads still under way are dropped with the round.
                for w in std::mem::take(&mut s.fetching) {
                    refused(p, &round, &w, &Refusal::Unfetched("still being read when the round closed".into()));
                }
                done.insert(place.clone());
                summing.remove(&place);
                p.metrics.edil.sums.get_or_create(&ReasonLabels { reason: label }).inc();
                tracing::info!(model = %round.model, round = round.round, updates, label, "EDIL sum written");
            }
            Err(err) => tracing::warn!(error = %err, "cannot write an EDIL sum; trying again"),
        }
    }
}

/// A read of a sum from R1FS under way: its round, and the read.
type SumRead = (u64, tokio::task::JoinHandle<Result<Vec<u8>, ReadError>>);

/// The aggregate's bytes of a released sum: in its record, or read from
/// R1FS (within the round's size) beside the loop: `Pending` until read.
fn sum_bytes(
    p: &Parts,
    round: &Round,
    r: &Released,
    reading: &mut Option<SumRead>,
) -> std::task::Poll<Result<Vec<u8>, ReadError>> {
    use futures::FutureExt;
    use std::task::Poll;
    let Some(cid) = &r.aggregate_cid else {
        return Poll::Ready(
            B64.decode(&r.aggregate).map_err(|e| ReadError::Bad(format!("the sum is not base64: {e}"))),
        );
    };
    let Some(r1fs) = p.r1fs.get().cloned() else {
        return Poll::Ready(Err(ReadError::Bad("the sum is in R1FS, which does not run here".into())));
    };
    match reading.take() {
        Some((n, h)) if n == round.round && h.is_finished() => match h.now_or_never() {
            Some(Ok(got)) => Poll::Ready(got),
            _ => Poll::Ready(Err(ReadError::Later("the read of the sum ended".into()))),
        },
        Some((n, h)) if n == round.round => {
            *reading = Some((n, h));
            Poll::Pending
        }
        other => {
            if let Some((_, h)) = other {
                h.abort();
            }
            let (cid, max) = (cid.clone(), super::crypto::wire_bound(round.values()));
            *reading = Some((round.round, tokio::spawn(async move { read(&r1fs, &cid, max).await })));
            Poll::Pending
        }
    }
}

/// As the owner of this cluster's R1Models with `spec.training`.
async fn own(e: &Edil, p: &Parts, me: &str, owned: &mut BTreeMap<String, Training>) {
    // (A training that cannot run stalls its R1Model instead: see
    // `round::untrainable`.)
    let models: Vec<Arc<R1Model>> = p
        .models
        .state()
        .into_iter()
        .filter(|m| m.spec.training.as_ref().is_some_and(|t| super::round::untrainable(t).is_none()))
        .collect();
    let live: BTreeSet<String> = models.iter().filter_map(|m| m.uid()).collect();
    owned.retain(|uid, _| live.contains(uid));
    e.inner.trainings.lock().expect("trainings lock").retain(|uid, _| live.contains(uid));
    for m in models {
        let (Some(uid), Some(spec)) = (m.uid(), m.spec.training.clone()) else { continue };
        // A changed spec starts a new training: new keys and rounds, from
        // the weights in the model's status while their size still fits.
        // The models stored so far stay listed (and pinned): the ones in
        // memory, newer than the status written last.
        let mut carried = None;
        if owned.get(&uid).is_some_and(|t| t.spec != spec) {
            carried = owned.remove(&uid).map(|t| t.status.models);
        }
        let t = owned.entry(uid.clone()).or_insert_with(|| {
            let mut t = resume(e, me, &m, &uid, &spec);
            // The stored model the status names, if this node still holds it.
            let held = |c: &String| {
                let cid = crate::r1fs::cid::parse(c).ok();
                p.r1fs.get().zip(cid).is_some_and(|(r, cid)| r.is_pinned(&cid))
            };
            t.global_cid = t.global_cid.filter(held);
            t
        });
        if let Some(models) = carried {
            t.status.models = models;
        }
        if let Err(err) = step(e, p, me, &m, &uid, &spec, t).await {
            tracing::warn!(model = %m.name_any(), error = %err, "EDIL owner step failed; trying again");
            // (The status says why: e.g. no R1FS for a model that needs it.)
            t.status.last_failure = Some(err);
        }
        let name = format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any());
        e.inner.trainings.lock().expect("trainings lock").insert(uid, (name, t.status.clone()));
    }
}

/// The model a round produced (`attempt`; none: the model a training
/// starts from), as R1FS content pinned for the model (`edil-<uid>`),
/// listed in its status; the document a round of a model too large for
/// records names. A failure costs a round of a small model nothing: its
/// weights are in the status; only the CID is missing.
async fn store_model(
    r1fs: &crate::r1fs::service::R1fs,
    p: &Parts,
    m: &R1Model,
    uid: &str,
    attempt: Option<u64>,
    t: &mut Training,
) {
    let s = &t.status;
    let doc = serde_json::json!({
        "kind": "ratio1.ai/edil-model",
        "version": 1,
        "model": format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any()),
        "uid": uid,
        "round": s.completed_rounds,
        "attempt": attempt,
        "features": t.spec.features,
        "weights": t.global.iter().map(|v| *v as f64).collect::<Vec<f64>>(),
        "biasLast": true,
        "loss": s.loss,
        "accuracy": s.accuracy,
        "participants": s.participants,
    });
    let bytes = serde_json::to_vec_pretty(&doc).expect("a model document serializes");
    match r1fs.add_bytes(bytes, &format!("{PIN_PREFIX}{uid}")).await {
        Ok((cid, _)) => {
            t.global_cid = Some(crate::r1fs::cid::canonical(&cid));
            let models = &mut t.status.models;
            models.push(RoundModel { round: t.status.completed_rounds, cid: crate::r1fs::cid::canonical(&cid) });
            let over = models.len().saturating_sub(MODELS_KEPT);
            models.drain(..over);
            p.metrics.edil.models.get_or_create(&ReasonLabels { reason: "stored" }).inc();
        }
        Err(e) => {
            p.metrics.edil.models.get_or_create(&ReasonLabels { reason: "failed" }).inc();
            tracing::warn!(model = %m.name_any(), error = %e, "cannot store the round's model in R1FS");
        }
    }
}

/// Releases the pins EDIL no longer needs; the R1FS GC then collects
/// them. Trained models no training lists any more (fallen off the list,
/// or their R1Model or its training is gone), only once the models' cache
/// was filled before `own` read it (`models_ready`); a round's updates and
/// sum once its record is gone or [`ROUND_PIN_KEEP_MS`] after its deadline;
/// a trainer Job's weights left by a Job no longer under way.
async fn release_pins(
    e: &Edil,
    p: &Parts,
    owned: &BTreeMap<String, Training>,
    models_ready: bool,
    running: &BTreeMap<Place, Running>,
) {
    let Some(r1fs) = p.r1fs.get() else { return };
    let Ok(pins) = r1fs.pins() else { return };
    let now = now();
    for (cid, owners) in pins {
        let c = crate::r1fs::cid::canonical(&cid);
        for owner in owners.keys() {
            let keep = if let Some(place) = owner.strip_prefix(ROUND_PIN_PREFIX) {
                let parts: Vec<&str> = place.splitn(3, '/').collect();
                let m = e.inner.mirror.read().expect("mirror lock");
                match (parts.as_slice(), parts.last().and_then(|r| r.parse::<u64>().ok())) {
                    ([o, uid, _], Some(r)) => m
                        .rounds
                        .get(&(o.to_string(), uid.to_string(), r))
                        .is_some_and(|x| now <= x.deadline_ms + ROUND_PIN_KEEP_MS),
                    _ => false,
                }
            } else if owner.starts_with(super::jobs::PIN_PREFIX) {
                // A trainer Job's weights: read (and released) by its end.
                running.values().any(|r| super::jobs::pin_owner(&r.round) == *owner)
            } else if let Some(uid) = owner.strip_prefix(PIN_PREFIX) {
                !models_ready || owned.get(uid).is_some_and(|t| t.status.models.iter().any(|m| m.cid == c))
            } else {
                true
            };
            if !keep {
                match r1fs.unpin(cid, owner).await {
                    Ok(_) => tracing::info!(cid = %c, %owner, "released an EDIL pin"),
                    Err(e) => tracing::warn!(error = %e, %owner, "cannot release an EDIL pin"),
                }
            }
        }
    }
}

/// A training as it stands after a start: from the model's status (the
/// rounds completed and their weights), numbered after the last round
/// this node published. The key is new: a round published before the
/// restart cannot be opened.
fn resume(e: &Edil, me: &str, m: &R1Model, uid: &str, spec: &crate::crd::TrainingSpec) -> Training {
    let params = spec.features.max(1) as usize + 1;
    let mx = e.inner.mirror.read().expect("mirror lock");
    let last =
        mx.rounds.range((me.to_string(), uid.to_string(), 0)..=(me.to_string(), uid.to_string(), u64::MAX)).last();
    let next_round = last.map_or(1, |(_, r)| r.round + 1);
    let before = m.status.as_ref().and_then(|s| s.training.clone()).filter(|t| t.weights.len() == params);
    // The stored model of those weights, if the status lists it (else
    // stored again before a round names it).
    let global_cid =
        before.as_ref().and_then(|t| t.models.last().filter(|x| x.round == t.completed_rounds).map(|x| x.cid.clone()));
    let (global, trained, status) = match before {
        Some(t) => (
            t.weights.iter().map(|v| *v as f32).collect(),
            t.completed_rounds.max(0) as u64,
            TrainingStatus { round: None, aggregator: None, ..t },
        ),
        // A training of another size starts from zero, but the models
        // stored before stay listed.
        None => {
            let models = m.status.as_ref().and_then(|s| s.training.as_ref()).map(|t| t.models.clone());
            (
                vec![0.0; params],
                0,
                TrainingStatus { rounds: spec.rounds, models: models.unwrap_or_default(), ..Default::default() },
            )
        }
    };
    Training {
        key: OwnerKey::generate(),
        spec: spec.clone(),
        global,
        global_cid,
        sum_read: None,
        trained,
        current: None,
        next_round,
        retry_at: 0,
        failed_aggregator: None,
        status,
    }
}

async fn step(
    e: &Edil,
    p: &Parts,
    me: &str,
    m: &R1Model,
    uid: &str,
    spec: &crate::crd::TrainingSpec,
    t: &mut Training,
) -> Result<(), String> {
    let now = now();
    t.status.rounds = spec.rounds;
    if let Some((round, published)) = t.current.clone() {
        let sum = {
            let mx = e.inner.mirror.read().expect("mirror lock");
            mx.sums.get(&(round.aggregator.clone(), me.to_string(), uid.to_string(), round.round)).cloned()
        };
        let outcome = match sum {
            Some(SumRecord::Released(r)) => match sum_bytes(p, &round, &r, &mut t.sum_read) {
                std::task::Poll::Pending => return Ok(()),
                std::task::Poll::Ready(Ok(bytes)) => open(&t.key, &round, &r, &bytes).map(|w| (w, r)),
                // (Read again on the next tick, for a while.)
                std::task::Poll::Ready(Err(ReadError::Later(why))) if now <= round.deadline_ms + 3 * GRACE_MS => {
                    tracing::info!(model = %m.name_any(), round = round.round, %why, "cannot read the sum yet");
                    return Ok(());
                }
                std::task::Poll::Ready(Err(why)) => Err(format!("round {}: {why}", round.round)),
            },
            Some(SumRecord::Withheld(why)) => Err(format!("round {}: {why}", round.round)),
            None if now > round.deadline_ms + GRACE_MS => Err(format!(
                "round {}: no sum from aggregator {} by the deadline",
                round.round,
                e.name_of(&round.aggregator)
            )),
            None => return Ok(()),
        };
        t.current = None;
        t.status.round = None;
        match outcome {
            Ok((w, r)) => {
                t.global = w;
                t.global_cid = None;
                t.trained += 1;
                t.failed_aggregator = None;
                p.metrics.edil.rounds.get_or_create(&ReasonLabels { reason: "completed" }).inc();
                let s = &mut t.status;
                s.completed_rounds = t.trained as i32;
                s.participants = e.names_of(&r.participants);
                s.last_round_seconds = Some((now.saturating_sub(published)) as f64 / 1000.0);
                (s.loss, s.accuracy) = (r.loss, r.accuracy);
                s.weights = t.global.iter().map(|v| *v as f64).collect();
                s.last_failure = None;
                tracing::info!(model = %m.name_any(), round = round.round, trained = t.trained, "EDIL round completed");
                if let Some(r1fs) = p.r1fs.get() {
                    store_model(r1fs, p, m, uid, Some(round.round), t).await;
                }
            }
            Err(why) => {
                p.metrics.edil.rounds.get_or_create(&ReasonLabels { reason: "failed" }).inc();
                tracing::warn!(model = %m.name_any(), %why, "EDIL round failed; a new one starts");
                t.status.last_failure = Some(why);
                t.retry_at = now + BACKOFF_MS;
                // Stored again before the next round names it (a store
                // lost since, e.g. with the data dir, is made again).
                t.global_cid = None;
                t.failed_aggregator = Some(round.aggregator.clone());
            }
        }
    }
    if t.trained >= spec.rounds.max(0) as u64 || now < t.retry_at {
        return Ok(());
    }
    // A new round: every fresh peer holding the dataset but this node (it
    // would know its own update), and an aggregator among the fresh peers
    // running EDIL that is not this node.
    // A model too large for records, or trained by a container (its Job
    // reads the weights from R1FS), travels through R1FS: only peers
    // running it take part or sum, and the owner stores the weights.
    let values = t.global.len();
    let image = spec.trainer.as_ref().map(|t| t.image.as_str());
    let large = values > INLINE_VALUES || image.is_some();
    let fresh = e.fresh();
    let (participants, edil_peers): (Vec<String>, BTreeSet<String>) = {
        let mx = e.inner.mirror.read().expect("mirror lock");
        let able = |peer: &String| fresh.contains(peer) && (!large || mx.r1fs.contains(peer));
        // A container trainer runs only where its image is allowed.
        let owner_args = spec.trainer.as_ref().is_some_and(|t| !(t.command.is_empty() && t.args.is_empty()));
        let runs = |peer: &String| {
            image.is_none_or(|i| mx.trainers.get(peer).is_some_and(|prefixes| super::jobs::allowed(i, prefixes)))
                && (!owner_args || mx.trainer_args.contains(peer))
        };
        let participants = mx
            .datasets
            .iter()
            .filter(|(peer, names)| able(peer) && runs(peer) && *peer != me && names.contains(&spec.dataset))
            .map(|(peer, _)| peer.clone())
            .take(super::round::MAX_ROUND_PARTICIPANTS)
            .collect();
        (participants, mx.datasets.keys().filter(|p| able(p)).cloned().collect())
    };
    let min = spec.min_participants.max(2) as usize;
    t.status.aggregator = None;
    if participants.len() < min {
        t.status.last_failure = Some(format!(
            "waiting for participants: {} fresh peers hold dataset {:?}{}{}, {min} needed",
            participants.len(),
            spec.dataset,
            if large { " and run R1FS" } else { "" },
            match image {
                Some(i) => format!(" and run trainer image {i} (--edil-trainer-image)"),
                None => String::new(),
            }
        ));
        return Ok(());
    }
    let stored = match (large, p.r1fs.get()) {
        (false, _) => None,
        (true, None) => {
            return Err(format!(
                "a model of {values} values, or trained by a container, travels through R1FS, which does not run here (no --data-dir)"
            ))
        }
        (true, Some(r1fs)) => {
            if t.global_cid.is_none() {
                store_model(r1fs, p, m, uid, None, t).await;
            }
            let cid = t.global_cid.clone().ok_or("cannot store the model a round starts from in R1FS")?;
            Some(Stored { cid, values: values as u32 })
        }
    };
    let mut candidates = edil_peers;
    if let Some(f) = &t.failed_aggregator {
        if candidates.len() > 1 {
            candidates.remove(f);
        }
    }
    let Some(aggregator) = choose_aggregator(uid, t.next_round, me, &participants, &candidates) else {
        t.status.last_failure = Some("waiting for an aggregator: no fresh peer runs EDIL but this node".into());
        return Ok(());
    };
    // New keys each round, one per participant: the round names each.
    let mut prints = BTreeMap::new();
    for peer in &participants {
        let pk = t.key.public_key().to_bytes();
        prints.insert(peer.clone(), fingerprint(&pk));
        let k = format!("{EDIL_PREFIX}{me}/key/{uid}/{peer}");
        let rec = p
            .cstore
            .set(&k, &serde_json::json!({ "key": B64.encode(&pk) }), Some(TTL))
            .await
            .map_err(|e| format!("cannot write a participant key: {e}"))?;
        e.inner.mirror.write().expect("mirror lock").observe(&k, Some(&rec), now);
    }
    let round = Round {
        model: uid.to_string(),
        namespace: m.namespace().unwrap_or_default(),
        name: m.name_any(),
        round: t.next_round,
        owner: me.to_string(),
        aggregator: aggregator.clone(),
        participants: participants.clone(),
        min_participants: min as u32,
        deadline_ms: now + spec.round_timeout_seconds.max(1) as u64 * 1000,
        global: if large { vec![] } else { t.global.clone() },
        stored,
        trained: t.trained,
        keys: prints,
        dataset: spec.dataset.clone(),
        steps: spec.local_steps.max(1) as u32,
        lr: spec.learning_rate as f32,
        trainer: spec.trainer.clone(),
    };
    round.check(me)?;
    let k = format!("{EDIL_PREFIX}{me}/round/{uid}/{}", round.round);
    let rec = p
        .cstore
        .set(&k, &serde_json::to_value(&round).expect("round serializes"), Some(TTL))
        .await
        .map_err(|e| format!("cannot publish the round: {e}"))?;
    e.inner.mirror.write().expect("mirror lock").observe(&k, Some(&rec), now);
    tracing::info!(model = %m.name_any(), round = round.round, participants = participants.len(), aggregator = %e.name_of(&aggregator), "EDIL round published");
    t.status.round = Some(round.round as i64);
    t.status.aggregator = Some(e.name_of(&aggregator));
    t.status.participants = e.names_of(&participants);
    t.next_round += 1;
    t.current = Some((round, now));
    Ok(())
}

/// `GET /v1/edil`: the trainings this node owns (503 while EDIL does not
/// run here).
pub fn routes(slot: Slot) -> axum::Router {
    use crate::http::error;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::Json;
    axum::Router::new()
        .route(
            "/v1/edil",
            axum::routing::get(|State(slot): State<Slot>| async move {
                let e = slot.get().ok_or_else(|| {
                    error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "EDIL is not running here: this replica does not lead, or CSTORE is off",
                    )
                })?;
                Ok::<_, crate::http::ApiError>(Json(serde_json::json!({ "trainings": e.all() })))
            }),
        )
        .with_state(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edil::crypto::{Encoding, OwnerKey};

    fn record(peer: &libp2p_identity::Keypair, values: usize) -> UpdateRecord {
        let enc = Encoding::new(3).unwrap();
        let u = OwnerKey::generate().public_key().encrypt(&enc.quantise(&vec![0.5; values])).unwrap();
        let update = SignedUpdate::sign(peer, "owner/uid", 4, &u);
        UpdateRecord { update, metrics: Some(TrainMetrics { loss: 0.5, accuracy: 0.75 }), samples: 10 }
    }

    #[test]
    fn an_update_is_framed_with_its_ciphertext_raw_and_reads_back_whole() {
        let peer = libp2p_identity::Keypair::generate_ed25519();
        let rec = record(&peer, 600);
        let json = serde_json::to_vec(&rec).unwrap();
        let framed = frame(rec.clone());
        // The bulk is not base64: about 3/4 of the JSON form.
        assert!(framed.len() * 4 < json.len() * 3 + 4096, "{} vs {}", framed.len(), json.len());
        assert!(framed.len() as u64 <= update_bound(600), "{}", framed.len());
        let back = unframe(&framed).unwrap();
        assert!(back.update.verify().is_ok(), "the signature still holds");
        assert_eq!((back.update.update, back.samples), (rec.update.update.clone(), 10));
        // An older node's JSON still reads; a truncated frame or one whose
        // head claims more than the bound does not.
        assert!(unframe(&json).is_some());
        assert!(unframe(&framed[..6]).is_none());
        let mut long = framed.clone();
        long[4..8].copy_from_slice(&(MAX_FRAME_HEAD as u32 + 1).to_le_bytes());
        assert!(unframe(&long).is_none());
    }

    #[test]
    fn one_owner_holds_at_most_half_of_the_aggregators_room() {
        let big = crate::edil::crypto::MAX_VALUES;
        let mut h = Held::default();
        assert!(h.room("greedy", big));
        h.add("greedy", big);
        assert!(h.room("greedy", big), "half of 2^22 is two rounds of 2^20");
        h.add("greedy", big);
        assert!(!h.room("greedy", 1), "a third is past its half");
        assert!(h.room("other", big));
        h.add("other", big);
        h.add("other", big);
        assert!(!h.room("third", 1), "the whole is taken");
    }

    #[test]
    fn update_records_are_inline_or_name_r1fs_content_and_the_first_stands() {
        use crate::cstore::record::{parse_value, Hlc, Record, Slot};
        let mut m = Mirror::default();
        let w = libp2p_identity::Keypair::generate_ed25519();
        let rec = |key: &str, v: serde_json::Value| {
            Record::sign(&w, Slot::flat(key), parse_value(&v.to_string()).ok(), Hlc::new(1_000, 0), None)
        };
        let cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
        let k1 = format!("{EDIL_PREFIX}p1/update/o/uid/1");
        let k2 = format!("{EDIL_PREFIX}p2/update/o/uid/1");
        let k3 = format!("{EDIL_PREFIX}p3/update/o/uid/1");
        let k4 = format!("{EDIL_PREFIX}p4/update/o/uid/1");
        m.observe(&k1, Some(&rec(&k1, serde_json::json!({ "sealed": B64.encode(b"abc") }))), 2_000);
        m.observe(&k2, Some(&rec(&k2, serde_json::json!({ "cid": cid }))), 2_000);
        m.observe(&k3, Some(&rec(&k3, serde_json::json!({ "cid": "not-a-cid" }))), 2_000);
        let big = B64.encode(vec![0u8; MAX_INLINE_SEALED + 1]);
        m.observe(&k4, Some(&rec(&k4, serde_json::json!({ "sealed": big }))), 2_000);
        let got = |m: &Mirror, p: &str| m.updates.get(&(p.into(), "o".into(), "uid".into(), 1)).map(|(s, _)| s.clone());
        assert_eq!(got(&m, "p1"), Some(Sealed::Inline(b"abc".to_vec())));
        assert_eq!(got(&m, "p2"), Some(Sealed::Stored(cid.into())));
        assert_eq!((got(&m, "p3"), got(&m, "p4")), (None, None), "a bad CID, an oversized inline update");
        m.observe(&k2, Some(&rec(&k2, serde_json::json!({ "sealed": B64.encode(b"x") }))), 2_000);
        assert_eq!(got(&m, "p2"), Some(Sealed::Stored(cid.into())), "the first version stands");
        // A node running R1FS says so.
        let d = format!("{EDIL_PREFIX}p1/datasets");
        m.observe(&d, Some(&rec(&d, serde_json::json!({ "datasets": ["a"], "r1fs": true }))), 2_000);
        assert!(m.r1fs.contains("p1"));
        m.observe(&d, Some(&rec(&d, serde_json::json!({ "datasets": ["a"] }))), 2_000);
        assert!(!m.r1fs.contains("p1") && m.datasets["p1"].contains("a"));
    }
}
