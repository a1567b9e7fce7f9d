//! The economy task: mirrors the license registry (`license/`) and the
//! ledger (`ledger/`) of CSTORE, folds them ([`super::registry::fold`],
//! [`super::ledger::settle`]) and, on an oracle, judges every new claim and
//! writes its verdict. It runs on the leader of every node with CSTORE,
//! next to OracleSync, whose final records the claims are paid from.
//!
//! API: `GET /v1/economy` (the economy in one table, every license),
//! `GET /v1/economy/license?name=` (one license, its claims and verdicts),
//! `POST /v1/economy/claim?license=` (this node claims its license's
//! rewards).

use super::ledger::{self, Claim, Key, Ledger, Totals, View};
use super::poai::{self, Job, JobView, Poai, Proposal};
use super::registry::{self, License, Registry};
use super::{Constants, MndCurve};
use crate::cstore::rules::{LEDGER_PREFIX, LICENSE_PREFIX};
use crate::cstore::{Change, Cstore};
use crate::dauth::license::{Statement, TrustStore};
use crate::metrics::{Metrics, ReasonLabels};
use crate::oracle::service::Oracle;
use futures::StreamExt;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Settings of `ratio1 operator` for the economy.
#[derive(Clone, Debug, Default)]
pub struct EconomyConfig {
    pub registry: registry::Rules,
    pub constants: Constants,
}

/// A refusal lives this long (the claimant reads it; claims again).
const REFUSAL_TTL: Duration = Duration::from_secs(3_600);
/// Claims, like refusals, go once settled or stale: the accepts keep them.
const CLAIM_TTL: Duration = Duration::from_secs(7 * 86_400);

/// (writer, license, first epoch): a claim's or a verdict's place.
type Place = (String, String, u64);

/// What the records say, parsed.
#[derive(Default)]
struct Mirror {
    statements: BTreeMap<String, Statement>,
    /// (claimant, license, from) → claim.
    claims: BTreeMap<Place, Claim>,
    /// (oracle, license, from) → the claim it accepted.
    accepts: BTreeMap<Place, Claim>,
    /// (license, from) → oracle → (digest of the claim refused, reason).
    refusals: BTreeMap<(String, u64), BTreeMap<String, (String, String)>>,
    /// (origin, uid) → the PoAI job it escrowed (checked when folded) and
    /// when it was written (the writer's clock).
    jobs: BTreeMap<(String, String), (Job, u64)>,
    /// Epoch → oracle → its PoAI proposal (bounded) and when it was
    /// written.
    proposals: BTreeMap<u64, BTreeMap<String, (Proposal, u64)>>,
}

impl Mirror {
    fn observe(&mut self, key: &str, rec: Option<&crate::cstore::record::Record>, trust: &TrustStore) {
        let value = rec.filter(|r| r.slot.field.is_none()).and_then(|r| r.value.as_ref()).map(|v| v.get());
        if key.starts_with(LICENSE_PREFIX) {
            // Statements are never deleted; CSTORE checked the proof.
            let proof = value.and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok());
            let s = proof.as_ref().and_then(|p| p.get("proof")?.as_str().map(|t| trust.verify_statement(t)));
            if let Some(Ok(s)) = s {
                self.statements.insert(key.to_string(), s);
            }
            return;
        }
        let Some(k) = ledger::parse_key(key) else { return };
        match k {
            Key::Claim { peer, license, from } => {
                let k = (peer, license, from);
                match value.and_then(|v| serde_json::from_str::<Claim>(v).ok()) {
                    Some(c) => self.claims.insert(k, c),
                    None => self.claims.remove(&k),
                };
            }
            Key::Accept { oracle, license, from } => {
                let k = (oracle, license, from);
                let claim = value
                    .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
                    .and_then(|v| serde_json::from_value::<Claim>(v.get("claim")?.clone()).ok());
                // An accept stands as first seen: a changed or deleted one
                // (an oracle taking its vote back) is ignored.
                match (claim, self.accepts.get(&k)) {
                    (Some(c), None) => {
                        self.accepts.insert(k, c);
                    }
                    (Some(c), Some(held)) if c != *held => {
                        tracing::warn!(oracle = %k.0, license = %k.1, from = k.2, "an oracle changed its accept; the first stands");
                    }
                    _ => {}
                }
            }
            Key::Refuse { oracle, license, from } => {
                let reason = value.and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok()).and_then(|v| {
                    Some((v.get("digest")?.as_str()?.to_string(), v.get("reason")?.as_str()?.to_string()))
                });
                let slot = self.refusals.entry((license, from)).or_default();
                match reason {
                    Some(r) => slot.insert(oracle, r),
                    None => slot.remove(&oracle),
                };
            }
            // Jobs and proposals last (a CSTORE rule), and, like accepts,
            // stand as first seen: an escrow or a vote is not rewritten
            // after the fact.
            Key::Job { origin, uid } => {
                let at = rec.map_or(0, |r| r.hlc.wall_ms());
                if let Some(j) = value.and_then(|v| serde_json::from_str::<Job>(v).ok()) {
                    match self.jobs.get(&(origin.clone(), uid.clone())) {
                        None => {
                            self.jobs.insert((origin, uid), (j, at));
                        }
                        Some((held, _)) if *held != j => {
                            tracing::warn!(%origin, %uid, "an origin rewrote its PoAI job; the first stands");
                        }
                        Some(_) => {}
                    }
                }
            }
            Key::Proposal { oracle, epoch } => {
                let at = rec.map_or(0, |r| r.hlc.wall_ms());
                let p = value.and_then(|v| serde_json::from_str::<Proposal>(v).ok()).filter(poai::proposal_bounded);
                if let Some(p) = p {
                    let slot = self.proposals.entry(epoch).or_default();
                    match slot.get(&oracle) {
                        None => {
                            slot.insert(oracle, (p, at));
                        }
                        Some((held, _)) if *held != p => {
                            tracing::warn!(%oracle, epoch, "an oracle rewrote its PoAI proposal; the first stands");
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
}

/// What the folds made of the records at one moment.
#[derive(Default)]
struct Folded {
    registry: Registry,
    ledger: Ledger,
    poai: Poai,
}

struct Inner {
    mirror: RwLock<Mirror>,
    folded: RwLock<Folded>,
    cfg: EconomyConfig,
    curve: MndCurve,
    oracle: Oracle,
    cstore: Cstore,
    view: crate::p2p::SharedView,
    metrics: Arc<Metrics>,
    /// One escrow at a time: each is checked against the ones before.
    escrowing: tokio::sync::Mutex<()>,
}

/// The economy, once this replica leads with CSTORE on. Clones share it.
#[derive(Clone)]
pub struct Economy {
    inner: Arc<Inner>,
}

pub type Slot = Arc<std::sync::OnceLock<Economy>>;

/// What the economy runs on.
pub struct Parts {
    pub cstore: Cstore,
    pub oracle: Oracle,
    pub view: crate::p2p::SharedView,
    pub trust: TrustStore,
    pub metrics: Arc<Metrics>,
    /// Who runs what: PoAI's oracles sample it.
    pub deeploy: crate::deeploy::Deeploy,
}

/// Why an escrow was not written.
#[derive(Debug)]
pub enum EscrowError {
    /// The payer cannot pay (or the job is not one the ledger takes).
    Unfunded(String),
    /// Not now: CSTORE or the clock is not there.
    Unavailable(String),
}

/// `GET /v1/economy`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EconomyStatus {
    pub totals: Totals,
    pub licenses: Vec<LicenseView>,
    pub poai: Poai,
    /// The books close: minted within the supply cap, and every escrowed
    /// R1 paid, burned, refunded or still held.
    pub balanced: bool,
}

/// A license with its settled claims and what it may claim now.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LicenseView {
    #[serde(flatten)]
    pub license: License,
    pub claimed_through: Option<u64>,
    /// What a claim now would cover and pay, or why there is none.
    pub claimable: Result<Claimable, String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Claimable {
    pub from: u64,
    pub to: u64,
    #[serde(with = "super::units")]
    pub amount: u128,
}

/// One claim as its license's page shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimView {
    pub claim: Claim,
    pub digest: String,
    pub settled: bool,
    /// Oracles that accepted exactly this claim, of those registered
    /// when it was made.
    pub accepted_by: Vec<String>,
    pub registered: usize,
    /// Oracle → why it refused.
    pub refused: BTreeMap<String, String>,
}

impl Economy {
    pub fn start(cfg: EconomyConfig, p: Parts) -> Self {
        let curve = MndCurve::new(&cfg.constants);
        let inner = Arc::new(Inner {
            mirror: Default::default(),
            folded: Default::default(),
            cfg,
            curve,
            oracle: p.oracle.clone(),
            cstore: p.cstore.clone(),
            view: p.view.clone(),
            metrics: p.metrics.clone(),
            escrowing: Default::default(),
        });
        tokio::spawn(run(p, Arc::downgrade(&inner)));
        Self { inner }
    }

    fn epochs(&self) -> Option<crate::oracle::epoch::Epochs> {
        self.inner.view.read().expect("view lock").clock
    }

    /// Runs `f` on a [`View`] of the economy now.
    fn with_view<R>(&self, f: impl FnOnce(&View<'_>) -> R) -> Option<R> {
        let epochs = self.epochs()?;
        let folded = self.inner.folded.read().expect("folded lock");
        Some(self.inner.oracle.with_history(|history| {
            f(&View {
                constants: &self.inner.cfg.constants,
                curve: &self.inner.curve,
                epochs,
                registry: &folded.registry,
                ledger: &folded.ledger,
                history,
            })
        }))
    }

    /// With what the license's last linked node may claim now.
    fn license_view(v: &View<'_>, l: &License, now: u64) -> LicenseView {
        let peer = l.links.last().map(|k| k.peer.as_str());
        let claimable = peer
            .ok_or_else(|| "never linked".to_string())
            .and_then(|p| ledger::next_claim(v, &l.name, p, now))
            .map(|c| Claimable { from: c.from, to: c.to, amount: c.amount });
        LicenseView { license: l.clone(), claimed_through: v.ledger.claimed_through(&l.name), claimable }
    }

    pub fn totals(&self) -> Option<Totals> {
        self.with_view(|v| ledger::totals(v.constants, v.registry, v.ledger))
    }

    pub fn status(&self) -> Option<EconomyStatus> {
        let now = now();
        let poai = self.inner.folded.read().expect("folded lock").poai.clone();
        self.with_view(|v| {
            let totals = ledger::totals(v.constants, v.registry, v.ledger);
            EconomyStatus {
                balanced: poai.balanced() && totals.minted <= totals.supply_cap,
                totals,
                licenses: v.registry.licenses.values().map(|l| Self::license_view(v, l, now)).collect(),
                poai,
            }
        })
    }

    pub fn constants(&self) -> &Constants {
        &self.inner.cfg.constants
    }

    /// The PoAI job `uid` of origin `origin`, as the ledger holds it.
    pub fn job(&self, origin: &str, uid: &str) -> Option<JobView> {
        let folded = self.inner.folded.read().expect("folded lock");
        folded.poai.jobs.get(&format!("{origin}/{uid}")).cloned()
    }

    /// The current epoch.
    pub fn now_epoch(&self) -> Option<u64> {
        self.epochs()?.at(now())
    }

    /// Escrows a job of this node's pipeline: refused (with why) unless
    /// the license linked to this node holds its cost, counting every
    /// escrow before it. Written to CSTORE, where every node checks it
    /// the same way.
    pub async fn escrow(&self, job: Job) -> Result<JobView, EscrowError> {
        use EscrowError::{Unavailable, Unfunded};
        let _one = self.inner.escrowing.lock().await;
        let me = self.inner.cstore.peer_id().ok_or(Unavailable("this node has no identity yet".into()))?.to_string();
        if let Some(j) = self.job(&me, &job.uid) {
            return Ok(j);
        }
        // Written already (not folded yet, or not valid): never twice.
        if self.inner.mirror.read().expect("mirror lock").jobs.contains_key(&(me.clone(), job.uid.clone())) {
            return Err(Unavailable("the escrow is written and not folded yet".into()));
        }
        job.check(self.constants(), &me, &job.uid).map_err(Unfunded)?;
        let epochs = self.epochs().ok_or(Unavailable("the epoch clock is not known yet".into()))?;
        let now_epoch = epochs.at(now()).ok_or(Unavailable("the epoch clock has not started".into()))?;
        let trial = {
            let m = self.inner.mirror.read().expect("mirror lock");
            let mut jobs: Vec<Job> = valid_jobs(&self.inner.cfg.constants, &m, &epochs);
            jobs.push(job.clone());
            fold_poai(&self.inner, &m, &self.inner.folded.read().expect("folded lock"), &jobs, now_epoch)
        };
        let label = |r| ReasonLabels { reason: r };
        let view = trial.jobs.get(&job.id()).cloned().ok_or(Unavailable("the job did not fold".into()))?;
        if let Some(why) = &view.unfunded {
            self.inner.metrics.economy.escrows.get_or_create(&label("unfunded")).inc();
            return Err(Unfunded(why.clone()));
        }
        let key = poai::job_key(&me, &job.uid);
        let value = serde_json::to_value(&job).expect("job serializes");
        // Bounded: the escrow lock waits on this write.
        let rec = tokio::time::timeout(Duration::from_secs(10), self.inner.cstore.set(&key, &value, None))
            .await
            .map_err(|_| Unavailable("CSTORE did not take the escrow within 10 s".into()))?
            .map_err(|e| Unavailable(format!("cannot write the escrow to CSTORE: {e}")))?;
        self.inner.metrics.economy.escrows.get_or_create(&label("escrowed")).inc();
        tracing::info!(uid = %job.uid, cost = %super::show_r1(job.cost), payer = ?view.payer, "PoAI job escrowed");
        // Taken in at once: the next escrow counts it.
        let mut m = self.inner.mirror.write().expect("mirror lock");
        m.observe(&key, Some(&rec), &TrustStore::default());
        refold(&self.inner, &m);
        Ok(view)
    }

    /// The license named `name` (`<issuer>/<id>`, or an `<id>` only one
    /// issuer uses).
    pub fn resolve(&self, name: &str) -> Result<String, String> {
        let folded = self.inner.folded.read().expect("folded lock");
        if folded.registry.licenses.contains_key(name) {
            return Ok(name.to_string());
        }
        let found: Vec<&String> =
            folded.registry.licenses.keys().filter(|k| k.rsplit_once('/').is_some_and(|(_, id)| id == name)).collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(format!("license {name} is not in the registry (never linked, or not yet replicated here)")),
            _ => Err(format!("{} issuers have a license {name}: name it <issuer key id>/{name}", found.len())),
        }
    }

    /// One license, its claims (settled and pending) and verdicts.
    pub fn license(&self, name: &str) -> Result<(LicenseView, Vec<ClaimView>), String> {
        let name = self.resolve(name)?;
        let now = now();
        let mirror = self.inner.mirror.read().expect("mirror lock");
        self.with_view(|v| {
            let l = v.registry.licenses.get(&name).ok_or("gone")?;
            let mut claims: BTreeMap<(u64, String), &Claim> = BTreeMap::new();
            for c in mirror.claims.values().chain(mirror.accepts.values()).filter(|c| c.license == name) {
                claims.insert((c.from, c.digest()), c);
            }
            let views = claims
                .into_iter()
                .map(|((from, digest), c)| {
                    let when = v.epochs.bounds(c.to.saturating_add(ledger::CLAIM_DELAY_EPOCHS)).0;
                    let registered = self.inner.oracle.registered_at(when);
                    let accepted_by: Vec<String> = mirror
                        .accepts
                        .iter()
                        .filter(|((o, l, f), a)| {
                            *l == name && *f == from && registered.contains(o) && a.digest() == digest
                        })
                        .map(|((o, ..), _)| o.clone())
                        .collect();
                    let settled =
                        v.ledger.settled.get(&name).and_then(|s| s.get(&from)).is_some_and(|s| s.digest() == digest);
                    // Refusals of exactly this claim, by the oracles that count.
                    let refused = mirror
                        .refusals
                        .get(&(name.clone(), from))
                        .into_iter()
                        .flatten()
                        .filter(|(o, (d, _))| *d == digest && registered.contains(*o))
                        .map(|(o, (_, why))| (o.clone(), why.clone()))
                        .collect();
                    ClaimView { claim: c.clone(), digest, settled, accepted_by, registered: registered.len(), refused }
                })
                .collect();
            Ok((Self::license_view(v, l, now), views))
        })
        .unwrap_or_else(|| Err("the epoch clock is not known yet".into()))
    }

    /// This node claims the next epochs of its license: computes the claim
    /// and writes it to CSTORE, where the oracles judge it.
    pub async fn claim(&self, name: &str) -> Result<(String, Claim), String> {
        let name = self.resolve(name)?;
        let me = self.inner.cstore.peer_id().ok_or("this node has no identity yet")?.to_string();
        let claim = self
            .with_view(|v| {
                let l = v.registry.licenses.get(&name).ok_or("gone")?;
                if l.banned {
                    return Err(format!("license {name} is banned"));
                }
                if !l.links.iter().any(|k| k.peer == me) {
                    let at = l.peer().map_or("no node".to_string(), |p| format!("node {p}"));
                    return Err(format!("license {name} is linked to {at}; claim through that node's operator"));
                }
                ledger::next_claim(v, &name, &me, now())
            })
            .unwrap_or_else(|| Err("the epoch clock is not known yet".into()))?;
        let key = ledger::claim_key(&me, &name, claim.from);
        // A claim of these epochs already out and not refused is followed,
        // not replaced: a second one would split the oracles' votes.
        let pending = {
            let m = self.inner.mirror.read().expect("mirror lock");
            let refused = |c: &Claim| {
                m.refusals.get(&(name.clone(), c.from)).is_some_and(|r| r.values().any(|(d, _)| *d == c.digest()))
            };
            m.claims.get(&(me.clone(), name.clone(), claim.from)).filter(|c| !refused(c)).cloned()
        };
        if let Some(c) = pending {
            return Ok((key, c));
        }
        let value = serde_json::to_value(&claim).expect("claim serializes");
        self.inner
            .cstore
            .set(&key, &value, Some(CLAIM_TTL))
            .await
            .map_err(|e| format!("cannot write the claim: {e}"))?;
        Ok((key, claim))
    }

    /// This node's license and what it may claim now (R1Node status).
    pub fn mine(&self) -> Option<(String, Result<Claimable, String>)> {
        let me = self.inner.cstore.peer_id()?.to_string();
        let now = now();
        self.with_view(|v| {
            let name = v.registry.by_peer.get(&me)?;
            let l = v.registry.licenses.get(name)?;
            Some((name.clone(), Self::license_view(v, l, now).claimable))
        })
        .flatten()
    }
}

fn now() -> u64 {
    crate::p2p::now_ms() as u64
}

/// Reads both prefixes; false when CSTORE could not be read.
async fn load(m: &mut Mirror, store: &Cstore, trust: &TrustStore) -> bool {
    for prefix in [LICENSE_PREFIX, LEDGER_PREFIX] {
        match store.list(prefix).await {
            Ok(records) => {
                for r in records {
                    m.observe(&r.slot.key, Some(&r), trust);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, prefix, "economy cannot read CSTORE; reading again");
                return false;
            }
        }
    }
    true
}

/// The jobs whose records are consistent (`Job::check`), escrowed when
/// written: the first epoch paid is the one after the epoch the record
/// was written in (one either way for clock skew), so no job is backdated
/// into a license's past.
fn valid_jobs(c: &Constants, m: &Mirror, epochs: &crate::oracle::epoch::Epochs) -> Vec<Job> {
    m.jobs
        .iter()
        .filter(|((origin, uid), (j, at))| {
            let when = epochs.at(*at).map(|e| e + 1);
            let checked = j.check(c, origin, uid).and_then(|()| match when {
                Some(w) if j.start.abs_diff(w) <= 1 => Ok(()),
                _ => Err(format!("first epoch {} is not the one after it was written ({when:?})", j.start)),
            });
            match checked {
                Ok(()) => true,
                Err(why) => {
                    tracing::debug!(%origin, %uid, %why, "a PoAI job record is ignored");
                    false
                }
            }
        })
        .map(|(_, (j, _))| j.clone())
        .collect()
}

/// PoAI over `jobs`, with the registry and ledger of `folded`.
fn fold_poai(inner: &Inner, m: &Mirror, folded: &Folded, jobs: &[Job], now_epoch: u64) -> Poai {
    let Some(epochs) = inner.view.read().expect("view lock").clock else { return Poai::default() };
    let mut minted: BTreeMap<String, u128> = BTreeMap::new();
    for c in folded.ledger.claims() {
        *minted.entry(c.license.clone()).or_default() += c.amount;
    }
    let registered = |e: u64| -> BTreeSet<String> { inner.oracle.registered_at(epochs.bounds(e).0) };
    // Proposals count only if written before the epoch is decided: what
    // an epoch paid never moves once shown.
    let proposals: BTreeMap<u64, BTreeMap<String, Proposal>> = m
        .proposals
        .iter()
        .map(|(e, by)| {
            let until = epochs.bounds(e.saturating_add(poai::DECIDED_AFTER_EPOCHS)).0;
            (*e, by.iter().filter(|(_, (_, at))| *at < until).map(|(o, (p, _))| (o.clone(), p.clone())).collect())
        })
        .collect();
    let books = poai::Books {
        constants: &inner.cfg.constants,
        registry: &folded.registry,
        epochs: &epochs,
        minted: &minted,
        proposals: &proposals,
        registered_at: &registered,
    };
    poai::fold(&books, jobs, now_epoch)
}

fn refold(inner: &Inner, m: &Mirror) {
    let Some(epochs) = inner.view.read().expect("view lock").clock else { return };
    let cx = registry::Context { rules: inner.cfg.registry, constants: &inner.cfg.constants };
    let registry = registry::fold(m.statements.values(), &cx);
    let empty = Ledger::default();
    let ledger = inner.oracle.with_history(|history| {
        let base = View {
            constants: &inner.cfg.constants,
            curve: &inner.curve,
            epochs,
            registry: &registry,
            ledger: &empty,
            history,
        };
        ledger::settle(&base, &m.accepts, &|t| inner.oracle.registered_at(t), now())
    });
    let mut folded = Folded { registry, ledger, poai: Poai::default() };
    let now_epoch = epochs.at(now()).unwrap_or(0);
    folded.poai = fold_poai(inner, m, &folded, &valid_jobs(&inner.cfg.constants, m, &epochs), now_epoch);
    *inner.folded.write().expect("folded lock") = folded;
}

async fn run(p: Parts, weak: std::sync::Weak<Inner>) {
    let mut loads = u64::MAX;
    let mut changes = futures::stream::pending::<Change>().boxed();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Verdicts written here: (license, from, digest) → accepted, or the
    // refusal's reason (written again only when it changes).
    let mut judged: BTreeMap<(String, u64, String), Result<(), String>> = BTreeMap::new();
    let mut stamp = None;
    let mut sampler = Sampler::default();
    loop {
        if p.view.read().expect("view lock").clock.is_none() {
            tick.tick().await;
            continue;
        }
        let mut fresh = None;
        if loads != p.cstore.loads() {
            loads = p.cstore.loads();
            let watch = |prefix| p.cstore.watch(prefix).map(|w| w.boxed());
            changes = match (watch(LICENSE_PREFIX), watch(LEDGER_PREFIX)) {
                (Ok(a), Ok(b)) => futures::stream::select(a, b).boxed(),
                _ => futures::stream::pending().boxed(),
            };
            let mut m = Mirror::default();
            if !load(&mut m, &p.cstore, &p.trust).await {
                loads = u64::MAX;
                tick.tick().await;
                continue;
            }
            fresh = Some(m);
        }
        let mut batch = vec![];
        tokio::select! {
            ch = changes.next() => match crate::cstore::drain_ready(ch, &mut changes) {
                Some(b) => batch = b,
                None => loads = u64::MAX,
            },
            _ = tick.tick() => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        let economy = Economy { inner };
        let inner = &economy.inner;
        // Folded again on a change of the records, of the final epochs or
        // oracles, or of the epoch (what is claimable moves).
        let epoch = p.view.read().expect("view lock").clock.and_then(|c| c.at(now()));
        let now_stamp = (inner.oracle.with_history(|h| h.len()), inner.oracle.registered_at(u64::MAX).len(), epoch);
        if fresh.is_some() || !batch.is_empty() || stamp != Some(now_stamp) {
            stamp = Some(now_stamp);
            {
                let mut m = inner.mirror.write().expect("mirror lock");
                if let Some(f) = fresh {
                    *m = f;
                }
                for c in batch {
                    m.observe(&c.slot.key, c.record.as_ref(), &p.trust);
                }
                refold(inner, &m);
            }
            // The totals move only with a fold.
            if let Some(t) = economy.totals() {
                p.metrics.economy.settled_claims.set(t.settled_claims as i64);
                p.metrics.economy.minted_r1.set(t.minted as f64 / super::UNIT as f64);
            }
            let folded = inner.folded.read().expect("folded lock");
            p.metrics.economy.in_escrow_r1.set(folded.poai.in_escrow as f64 / super::UNIT as f64);
            p.metrics.economy.burned_r1.set(folded.poai.burned as f64 / super::UNIT as f64);
        }
        if inner.oracle.status().oracle {
            judge_all(&economy, &p, &mut judged).await;
            sampler.sample(&economy, &p).await;
        }
    }
}

/// An oracle's view of who runs each PoAI job, sampled about once a
/// second through an epoch; proposed when the epoch is over.
#[derive(Default)]
struct Sampler {
    epoch: Option<u64>,
    last: Option<tokio::time::Instant>,
    samples: u32,
    /// Job id → target → samples it ran in.
    ran: BTreeMap<String, BTreeMap<String, u32>>,
}

impl Sampler {
    async fn sample(&mut self, e: &Economy, p: &Parts) {
        let Some(epochs) = e.epochs() else { return };
        let Some(now_epoch) = epochs.at(now()) else { return };
        if self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(900)) {
            return;
        }
        self.last = Some(tokio::time::Instant::now());
        if self.epoch != Some(now_epoch) {
            if let Some(done) = self.epoch.filter(|d| *d + 1 == now_epoch) {
                self.propose(e, p, done, epochs.length_ms).await;
            }
            *self = Sampler { epoch: Some(now_epoch), last: self.last, ..Default::default() };
        }
        self.samples += 1;
        let jobs: Vec<Job> = {
            let folded = e.inner.folded.read().expect("folded lock");
            folded
                .poai
                .jobs
                .values()
                .filter(|j| j.unfunded.is_none() && j.job.pays(now_epoch))
                .map(|j| j.job.clone())
                .collect()
        };
        for j in jobs {
            let Some(running) = p.deeploy.running(&j.origin, &j.namespace, &j.name, &j.uid) else { continue };
            let slot = self.ran.entry(j.id()).or_default();
            for t in running {
                *slot.entry(t).or_default() += 1;
            }
        }
    }

    /// Proposes, for the epoch `done`, each job's nodes seen running in at
    /// least half of the samples; nothing when this oracle sampled less
    /// than half the epoch (it came up late: it does not know).
    async fn propose(&self, e: &Economy, p: &Parts, done: u64, length_ms: u64) {
        let expected = (length_ms / 1_000).max(1) as u32;
        if self.samples * 2 < expected {
            tracing::debug!(epoch = done, samples = self.samples, "too few PoAI samples to propose");
            return;
        }
        let proposal: Proposal = self
            .ran
            .iter()
            .map(|(uid, seen)| {
                (uid.clone(), seen.iter().filter(|(_, n)| **n * 2 >= self.samples).map(|(t, _)| t.clone()).collect())
            })
            .filter(|(_, set): &(String, BTreeSet<String>)| !set.is_empty())
            .take(poai::MAX_PROPOSAL_JOBS)
            .collect();
        if proposal.is_empty() {
            return;
        }
        let Some(me) = p.cstore.peer_id().map(|m| m.to_string()) else { return };
        let key = poai::proposal_key(&me, done);
        let value = serde_json::to_value(&proposal).expect("proposal serializes");
        match p.cstore.set(&key, &value, None).await {
            Ok(rec) => {
                p.metrics.economy.proposals.inc();
                tracing::info!(epoch = done, jobs = proposal.len(), "PoAI proposal written");
                e.inner.mirror.write().expect("mirror lock").observe(&key, Some(&rec), &p.trust);
            }
            Err(err) => tracing::warn!(%key, error = %err, "cannot write a PoAI proposal"),
        }
    }
}

/// As an oracle: a verdict on every live claim this oracle has not
/// accepted yet.
async fn judge_all(e: &Economy, p: &Parts, judged: &mut BTreeMap<(String, u64, String), Result<(), String>>) {
    let Some(me) = p.cstore.peer_id().map(|m| m.to_string()) else { return };
    let now = now();
    // Writers that were ever linked to the license they claim: others get
    // no verdict (any peer can write claims; refusing each in CSTORE
    // would let it make the oracles write for it).
    let linked = |license: &str, peer: &str| {
        let folded = e.inner.folded.read().expect("folded lock");
        folded.registry.licenses.get(license).is_some_and(|l| l.links.iter().any(|k| k.peer == peer))
    };
    // (claim, the claim this oracle accepted for its license and epoch).
    let todo: Vec<(Place, Claim, Option<Claim>)> = {
        let m = e.inner.mirror.read().expect("mirror lock");
        m.claims
            .iter()
            // Accepted here already: skipped. One accept per license and
            // epoch, ever: another claim of them is judged (refused as a
            // double claim). A claim must name its own key's license and
            // epoch. (Claims compare whole: no digest per claim per pass.)
            .filter_map(|((p, l, f), c)| {
                let mine = m.accepts.get(&(me.clone(), l.clone(), *f));
                let judge = mine.is_none_or(|a| a != c) && c.license == *l && c.from == *f && linked(l, p);
                judge.then(|| ((p.clone(), l.clone(), *f), c.clone(), mine.cloned()))
            })
            .collect()
    };
    for ((claimant, license, from), claim, accepted) in todo {
        let digest = claim.digest();
        let verdict = match accepted {
            // Never a second accept of the same epochs (the first stands).
            Some(a) => {
                Err(format!("double claim: this oracle accepted claim {} of epochs {}..={}", a.digest(), a.from, a.to))
            }
            None => e.with_view(|v| ledger::judge(v, &claim, &claimant, now)).unwrap_or(Err("no clock".into())),
        };
        let id = (license.clone(), from, digest.clone());
        // Written already, unless a refusal has expired since.
        let held = verdict.is_ok() || {
            let m = e.inner.mirror.read().expect("mirror lock");
            m.refusals.get(&(license.clone(), from)).and_then(|r| r.get(&me)).is_some_and(|(d, _)| *d == digest)
        };
        if judged.get(&id) == Some(&verdict) && held {
            continue;
        }
        let (key, value, ttl) = match &verdict {
            Ok(()) => (
                ledger::verdict_key(&me, true, &license, from),
                serde_json::json!({ "claim": claim, "claimant": claimant }),
                None,
            ),
            Err(why) => (
                ledger::verdict_key(&me, false, &license, from),
                serde_json::json!({ "reason": why, "digest": digest, "claimant": claimant }),
                Some(REFUSAL_TTL),
            ),
        };
        match p.cstore.set(&key, &value, ttl).await {
            Ok(rec) => {
                let label = if verdict.is_ok() { "accepted" } else { "refused" };
                p.metrics.economy.verdicts.get_or_create(&ReasonLabels { reason: label }).inc();
                match &verdict {
                    Ok(()) => tracing::info!(%license, from, to = claim.to, amount = %claim.amount, "claim accepted"),
                    Err(why) => tracing::warn!(%license, from, %claimant, reason = %why, "claim refused"),
                }
                // Taken in at once: the next pass must not judge it again.
                e.inner.mirror.write().expect("mirror lock").observe(&key, Some(&rec), &p.trust);
                if judged.len() >= 4_096 {
                    judged.clear();
                }
                judged.insert(id, verdict);
            }
            Err(err) => tracing::warn!(%key, error = %err, "cannot write a verdict; trying again"),
        }
    }
}

#[derive(serde::Deserialize)]
struct Named {
    #[serde(alias = "license")]
    name: String,
}

/// `GET /v1/economy`, `GET /v1/economy/license?name=`, `POST
/// /v1/economy/claim?license=` (503 while the economy does not run here).
pub fn routes(slot: Slot) -> axum::Router {
    use crate::http::error;
    use axum::extract::{Query, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::Json;
    fn running(slot: &Slot) -> Result<&Economy, crate::http::ApiError> {
        slot.get().ok_or_else(|| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the economy is not running here: this replica does not lead, or CSTORE is off",
            )
        })
    }
    axum::Router::new()
        .route(
            "/v1/economy",
            axum::routing::get(|State(slot): State<Slot>| async move {
                let e = running(&slot)?;
                e.status()
                    .map(|s| Json(s).into_response())
                    .ok_or_else(|| error(StatusCode::SERVICE_UNAVAILABLE, "the epoch clock is not known yet"))
            }),
        )
        .route(
            "/v1/economy/license",
            axum::routing::get(|State(slot): State<Slot>, Query(q): Query<Named>| async move {
                let e = running(&slot)?;
                let (license, claims) = e.license(&q.name).map_err(|m| error(StatusCode::NOT_FOUND, m))?;
                Ok::<_, crate::http::ApiError>(Json(serde_json::json!({ "license": license, "claims": claims })))
            }),
        )
        .route(
            "/v1/economy/claim",
            axum::routing::post(|State(slot): State<Slot>, Query(q): Query<Named>| async move {
                let e = running(&slot)?;
                let (key, claim) = e.claim(&q.name).await.map_err(|m| error(StatusCode::CONFLICT, m))?;
                Ok::<_, crate::http::ApiError>(Json(
                    serde_json::json!({ "key": key, "digest": claim.digest(), "claim": claim }),
                ))
            }),
        )
        .with_state(slot)
}
