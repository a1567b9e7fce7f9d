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
use super::registry::{self, License, Registry};
use super::{Constants, MndCurve};
use crate::cstore::rules::{LEDGER_PREFIX, LICENSE_PREFIX};
use crate::cstore::{Change, Cstore};
use crate::dauth::license::{Statement, TrustStore};
use crate::metrics::{Metrics, ReasonLabels};
use crate::oracle::service::Oracle;
use futures::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;
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
        }
    }
}

/// What the folds made of the records at one moment.
#[derive(Default)]
struct Folded {
    registry: Registry,
    ledger: Ledger,
}

struct Inner {
    mirror: RwLock<Mirror>,
    folded: RwLock<Folded>,
    cfg: EconomyConfig,
    curve: MndCurve,
    oracle: Oracle,
    cstore: Cstore,
    view: crate::p2p::SharedView,
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
}

/// `GET /v1/economy`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EconomyStatus {
    pub totals: Totals,
    pub licenses: Vec<LicenseView>,
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
        self.with_view(|v| EconomyStatus {
            totals: ledger::totals(v.constants, v.registry, v.ledger),
            licenses: v.registry.licenses.values().map(|l| Self::license_view(v, l, now)).collect(),
        })
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
    *inner.folded.write().expect("folded lock") = Folded { registry, ledger };
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
        }
        if inner.oracle.status().oracle {
            judge_all(&economy, &p, &mut judged).await;
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
