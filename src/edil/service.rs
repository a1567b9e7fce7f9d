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
//!   its key, signs and writes them;
//! - **aggregator** of every round that names it: adds the updates with no
//!   key ([`super::round::Collector`]) and releases the sum, or withholds
//!   it when fewer than the least participants sent one.
//!
//! Records, each written by the peer it names:
//! `edil/<peer>/datasets`, `edil/<owner>/round/<model uid>/<round>`,
//! `edil/<owner>/key/<model uid>/<participant>`,
//! `edil/<participant>/update/<model uid>/<round>`,
//! `edil/<aggregator>/sum/<model uid>/<round>`.

use super::crypto::{OwnerKey, ParticipantKey, SignedUpdate};
use super::round::{choose_aggregator, open, Collector, Released, Round};
use super::trainer::{self, Dataset, Metrics as TrainMetrics};
use crate::crd::{R1Model, TrainingStatus};
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

/// Settings of `ratio1 operator` for EDIL.
#[derive(Clone, Debug, Default)]
pub struct EdilConfig {
    /// Dataset name → CSV file this node holds (its shard).
    pub datasets: BTreeMap<String, PathBuf>,
}

/// What the EDIL task runs on.
pub struct Parts {
    pub cstore: Cstore,
    pub view: crate::p2p::SharedView,
    /// This cluster's profile (its R1Node name, for status).
    pub profile: tokio::sync::watch::Receiver<Option<crate::deeploy::plan::Profile>>,
    pub models: Store<R1Model>,
    pub metrics: Arc<Metrics>,
}

/// A participant's update record.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateRecord {
    update: SignedUpdate,
    /// Loss and accuracy on its own shard after training, and its size.
    metrics: TrainMetrics,
    samples: u64,
}

/// An aggregator's record: the sum, or why there is none.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum SumRecord {
    Released(Released),
    Withheld(String),
}

/// (writer, model uid, round).
type Place = (String, String, u64);

/// A round to sum, with each update: (writer, record, first seen).
type ToSum = (Round, Vec<(String, UpdateRecord, u64)>);

#[derive(Default)]
struct Mirror {
    datasets: BTreeMap<String, BTreeSet<String>>,
    rounds: BTreeMap<Place, Round>,
    /// (owner, model uid, participant) → key (wire bytes).
    keys: BTreeMap<(String, String, String), Vec<u8>>,
    /// Updates and when this node first saw each (its own clock: the
    /// aggregator's deadline is judged by it).
    updates: BTreeMap<Place, (UpdateRecord, u64)>,
    sums: BTreeMap<Place, SumRecord>,
}

impl Mirror {
    fn observe(&mut self, key: &str, rec: Option<&crate::cstore::record::Record>, now: u64) {
        let Some(rest) = key.strip_prefix(EDIL_PREFIX) else { return };
        let value = rec.filter(|r| !r.is_tombstone() && !r.expired(now as i64)).map(|r| r.value_json());
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [peer, "datasets"] => {
                let names = value.and_then(|v| serde_json::from_value::<Vec<String>>(v.get("datasets")?.clone()).ok());
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
            [p, "update", uid, r] => {
                let Ok(r) = r.parse::<u64>() else { return };
                let place = (p.to_string(), uid.to_string(), r);
                match value.and_then(|v| serde_json::from_value::<UpdateRecord>(v).ok()) {
                    Some(u) => {
                        let seen = self.updates.get(&place).map_or(now, |(_, t)| *t);
                        self.updates.insert(place, (u, seen))
                    }
                    None => self.updates.remove(&place),
                };
            }
            [a, "sum", uid, r] => {
                let Ok(r) = r.parse::<u64>() else { return };
                let place = (a.to_string(), uid.to_string(), r);
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
    /// Participant → its public key, as published.
    keys: BTreeMap<String, ParticipantKey>,
    global: Vec<f32>,
    trained: u64,
    /// The round under way, and when it was published (Unix ms).
    current: Option<(Round, u64)>,
    next_round: u64,
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
    let mut loads = u64::MAX;
    let mut changes = futures::stream::pending::<Change>().boxed();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut owned: BTreeMap<String, Training> = BTreeMap::new();
    // (model uid, round) this node trained for or summed already.
    let mut trained: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut summed: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut advertised = false;
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
                    advertised = false;
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
            _ = tick.tick() => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        let e = Edil { inner };
        let Some(me) = p.cstore.peer_id().map(|m| m.to_string()) else { continue };
        if !advertised && !e.inner.cfg.datasets.is_empty() {
            let names: Vec<&String> = e.inner.cfg.datasets.keys().collect();
            let key = format!("{EDIL_PREFIX}{me}/datasets");
            match p.cstore.set(&key, &serde_json::json!({ "datasets": names }), None).await {
                Ok(rec) => {
                    e.inner.mirror.write().expect("mirror lock").observe(&key, Some(&rec), now());
                    advertised = true;
                }
                Err(err) => tracing::warn!(error = %err, "cannot advertise EDIL datasets"),
            }
        }
        participate(&e, &p, &me, &mut trained).await;
        aggregate(&e, &p, &me, &mut summed).await;
        own(&e, &p, &me, &mut owned).await;
    }
}

/// As a participant: an update for every round that lists this node and
/// that it has not answered.
async fn participate(e: &Edil, p: &Parts, me: &str, done: &mut BTreeSet<(String, u64)>) {
    let now = now();
    let todo: Vec<(Round, Option<Vec<u8>>)> = {
        let m = e.inner.mirror.read().expect("mirror lock");
        m.rounds
            .values()
            .filter(|r| r.participants.iter().any(|x| x == me) && now <= r.deadline_ms)
            .filter(|r| !done.contains(&(r.model.clone(), r.round)))
            .filter(|r| !m.updates.contains_key(&(me.to_string(), r.model.clone(), r.round)))
            .map(|r| (r.clone(), m.keys.get(&(r.owner.clone(), r.model.clone(), me.to_string())).cloned()))
            .collect()
    };
    for (round, key) in todo {
        let Some(key) = key else { continue };
        done.insert((round.model.clone(), round.round));
        let Some(path) = e.inner.cfg.datasets.get(&round.dataset).cloned() else {
            tracing::warn!(dataset = %round.dataset, "a round lists this node for a dataset it does not hold");
            continue;
        };
        let Some(keypair) = p.cstore.keypair() else { continue };
        // Training and encryption are CPU work: off the async threads.
        let r = round.clone();
        let made = tokio::task::spawn_blocking(move || -> Result<UpdateRecord, String> {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let data = Dataset::parse_csv(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            let w = trainer::train(&r.global, &data, r.steps, r.lr).map_err(|e| e.to_string())?;
            let metrics = trainer::evaluate(&w, &data).map_err(|e| e.to_string())?;
            let key = ParticipantKey::from_bytes(&key).map_err(|e| e.to_string())?;
            let enc = r.encoding().map_err(|e| e.to_string())?;
            let update = key.encrypt(&enc.quantise(&w)).map_err(|e| e.to_string())?;
            let update = SignedUpdate::sign(&keypair, &r.model, r.round, &update);
            Ok(UpdateRecord { update, metrics, samples: data.len() as u64 })
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let rec = match made {
            Ok(rec) => rec,
            Err(why) => {
                tracing::warn!(model = %round.model, round = round.round, %why, "cannot train for a round");
                continue;
            }
        };
        let k = format!("{EDIL_PREFIX}{me}/update/{}/{}", round.model, round.round);
        match p.cstore.set(&k, &serde_json::to_value(&rec).expect("update serializes"), Some(TTL)).await {
            Ok(_) => {
                p.metrics.edil.updates_sent.inc();
                tracing::info!(model = %round.model, round = round.round, loss = rec.metrics.loss, "EDIL update sent");
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot write an EDIL update; trying again");
                done.remove(&(round.model.clone(), round.round));
            }
        }
    }
}

/// As an aggregator: the sum of every round that names this node, once
/// every participant sent an update or the deadline passed.
async fn aggregate(e: &Edil, p: &Parts, me: &str, done: &mut BTreeSet<(String, u64)>) {
    let now = now();
    let rounds: Vec<ToSum> = {
        let m = e.inner.mirror.read().expect("mirror lock");
        m.rounds
            .values()
            .filter(|r| r.aggregator == me && !done.contains(&(r.model.clone(), r.round)))
            .filter(|r| !m.sums.contains_key(&(me.to_string(), r.model.clone(), r.round)))
            .map(|r| {
                let ups = m
                    .updates
                    .iter()
                    .filter(|((_, uid, n), _)| *uid == r.model && *n == r.round)
                    .map(|((w, ..), (u, seen))| (w.clone(), u.clone(), *seen))
                    .collect();
                (r.clone(), ups)
            })
            .collect()
    };
    for (round, updates) in rounds {
        let Ok(mut c) = Collector::new(round.clone()) else { continue };
        let mut refused = vec![];
        for (writer, u, seen) in &updates {
            if let Err(why) = c.offer(writer, &u.update, *seen) {
                refused.push((writer.clone(), why));
            }
        }
        if !c.done(now) {
            continue;
        }
        for (writer, why) in &refused {
            p.metrics.edil.updates_refused.get_or_create(&ReasonLabels { reason: why.label() }).inc();
            tracing::warn!(model = %round.model, round = round.round, %writer, reason = %why, "EDIL update refused");
        }
        let (rec, label) = match c.close() {
            Ok(r) => (SumRecord::Released(r), "released"),
            Err(why) => (SumRecord::Withheld(why), "withheld"),
        };
        let k = format!("{EDIL_PREFIX}{me}/sum/{}/{}", round.model, round.round);
        match p.cstore.set(&k, &serde_json::to_value(&rec).expect("sum serializes"), Some(TTL)).await {
            Ok(_) => {
                done.insert((round.model.clone(), round.round));
                p.metrics.edil.sums.get_or_create(&ReasonLabels { reason: label }).inc();
                tracing::info!(model = %round.model, round = round.round, updates = c.from().len(), label, "EDIL sum written");
            }
            Err(err) => tracing::warn!(error = %err, "cannot write an EDIL sum; trying again"),
        }
    }
}

/// As the owner of this cluster's R1Models with `spec.training`.
async fn own(e: &Edil, p: &Parts, me: &str, owned: &mut BTreeMap<String, Training>) {
    let models: Vec<Arc<R1Model>> = p.models.state().into_iter().filter(|m| m.spec.training.is_some()).collect();
    let live: BTreeSet<String> = models.iter().filter_map(|m| m.uid()).collect();
    owned.retain(|uid, _| live.contains(uid));
    e.inner.trainings.lock().expect("trainings lock").retain(|uid, _| live.contains(uid));
    for m in models {
        let (Some(uid), Some(spec)) = (m.uid(), m.spec.training.clone()) else { continue };
        let t = owned.entry(uid.clone()).or_insert_with(|| resume(e, me, &uid, &spec));
        if let Err(err) = step(e, p, me, &m, &uid, &spec, t).await {
            tracing::warn!(model = %m.name_any(), error = %err, "EDIL owner step failed; trying again");
        }
        let name = format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any());
        e.inner.trainings.lock().expect("trainings lock").insert(uid, (name, t.status.clone()));
    }
}

/// A training as the records leave it: after a restart, from the last
/// round this node published (its sum cannot be opened: the key was in
/// memory), numbered on.
fn resume(e: &Edil, me: &str, uid: &str, spec: &crate::crd::TrainingSpec) -> Training {
    let m = e.inner.mirror.read().expect("mirror lock");
    let last =
        m.rounds.range((me.to_string(), uid.to_string(), 0)..=(me.to_string(), uid.to_string(), u64::MAX)).last();
    let params = spec.features.max(1) as usize + 1;
    let (global, trained, next) = match last {
        Some((_, r)) if r.global.len() == params => (r.global.clone(), r.trained, r.round + 1),
        Some((_, r)) => (vec![0.0; params], 0, r.round + 1),
        None => (vec![0.0; params], 0, 1),
    };
    Training {
        key: OwnerKey::generate(),
        keys: BTreeMap::new(),
        global,
        trained,
        current: None,
        next_round: next,
        status: TrainingStatus { completed_rounds: trained as i32, rounds: spec.rounds, ..Default::default() },
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
            mx.sums.get(&(round.aggregator.clone(), uid.to_string(), round.round)).cloned()
        };
        let outcome = match sum {
            Some(SumRecord::Released(r)) => open(&t.key, &round, &r).map(|w| (w, r.participants)),
            Some(SumRecord::Withheld(why)) => Err(format!("round {}: {why}", round.round)),
            None if now > round.deadline_ms + GRACE_MS => Err(format!(
                "round {}: no sum from aggregator {} by the deadline",
                round.round,
                e.name_of(&round.aggregator)
            )),
            None => return Ok(()),
        };
        t.current = None;
        match outcome {
            Ok((w, from)) => {
                let mx = e.inner.mirror.read().expect("mirror lock");
                let (mut loss, mut acc, mut n) = (0f64, 0f64, 0f64);
                for peer in &from {
                    if let Some((u, _)) = mx.updates.get(&(peer.clone(), uid.to_string(), round.round)) {
                        let s = u.samples.max(1) as f64;
                        loss += u.metrics.loss as f64 * s;
                        acc += u.metrics.accuracy as f64 * s;
                        n += s;
                    }
                }
                drop(mx);
                t.global = w;
                t.trained += 1;
                p.metrics.edil.rounds.get_or_create(&ReasonLabels { reason: "completed" }).inc();
                let s = &mut t.status;
                s.completed_rounds = t.trained as i32;
                s.participants = e.names_of(&from);
                s.last_round_seconds = Some((now.saturating_sub(published)) as f64 / 1000.0);
                (s.loss, s.accuracy) = if n > 0.0 { (Some(loss / n), Some(acc / n)) } else { (None, None) };
                s.weights = t.global.iter().map(|v| *v as f64).collect();
                s.last_failure = None;
                tracing::info!(model = %m.name_any(), round = round.round, trained = t.trained, "EDIL round completed");
            }
            Err(why) => {
                p.metrics.edil.rounds.get_or_create(&ReasonLabels { reason: "failed" }).inc();
                tracing::warn!(model = %m.name_any(), %why, "EDIL round failed; a new one starts");
                t.status.last_failure = Some(why);
            }
        }
    }
    if t.trained >= spec.rounds.max(0) as u64 {
        t.status.round = None;
        return Ok(());
    }
    // A new round: every fresh peer holding the dataset (and this node,
    // if it does), and an aggregator that is not this node.
    let fresh = e.fresh();
    let participants: Vec<String> = {
        let mx = e.inner.mirror.read().expect("mirror lock");
        mx.datasets
            .iter()
            .filter(|(peer, names)| (fresh.contains(*peer) || *peer == me) && names.contains(&spec.dataset))
            .map(|(peer, _)| peer.clone())
            .take(super::round::MAX_ROUND_PARTICIPANTS)
            .collect()
    };
    let min = spec.min_participants.max(1) as usize;
    if participants.len() < min {
        t.status.last_failure = Some(format!(
            "waiting for participants: {} fresh peers hold dataset {:?}, {min} needed",
            participants.len(),
            spec.dataset
        ));
        return Ok(());
    }
    let Some(aggregator) = choose_aggregator(uid, t.next_round, me, &participants, &fresh) else {
        t.status.last_failure = Some("waiting for an aggregator: no fresh peer but this node".into());
        return Ok(());
    };
    for peer in &participants {
        if t.keys.contains_key(peer) {
            continue;
        }
        let pk = t.key.public_key();
        let k = format!("{EDIL_PREFIX}{me}/key/{uid}/{peer}");
        let rec = p
            .cstore
            .set(&k, &serde_json::json!({ "key": B64.encode(pk.to_bytes()) }), Some(TTL))
            .await
            .map_err(|e| format!("cannot write a participant key: {e}"))?;
        e.inner.mirror.write().expect("mirror lock").observe(&k, Some(&rec), now);
        t.keys.insert(peer.clone(), pk);
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
        global: t.global.clone(),
        trained: t.trained,
        dataset: spec.dataset.clone(),
        steps: spec.local_steps.max(1) as u32,
        lr: spec.learning_rate as f32,
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
