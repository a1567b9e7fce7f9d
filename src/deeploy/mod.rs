//! Deeploy: the network is the scheduler, with no hub. The cluster where a
//! pipeline is applied (its origin) plans where it runs ([`plan`]) and
//! writes a signed intent to CSTORE; each target applies a copy of the
//! pipeline in its own cluster (reconciled by the same pipeline controller)
//! and reports its state back to CSTORE, from which the origin fills the
//! pipeline's status. docs/protocols.md, "Deeploy", has the rules.
//!
//! This module is the I/O part: a mirror of every `deeploy/` record (read
//! by reconcilers like a reflector store), the loop that publishes this
//! node's profile, the loop that applies and removes copies as a target,
//! and the wake-ups of origin pipelines (reports, peers that come and go).

pub mod api;
pub mod intent;
pub mod metrics;
pub mod plan;

use crate::crd::{PlacementPhase, PlacementStatus, R1Pipeline, R1PipelineSpec};
use crate::cstore::{Cstore, CstoreError};
use crate::metrics::{Metrics, ReasonLabels};
use crate::objects::{Filled, FIELD_MANAGER, MANAGED_BY};
use futures::StreamExt;
use intent::{Intent, Kind, Report};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use plan::{Candidate, Need, Plan, Profile};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// Label on a pipeline applied here for another origin: the origin's PeerId.
pub const ORIGIN_LABEL: &str = "ratio1.ai/deeploy-origin";
/// Annotations of such a copy: the intent key, the spec hash it carries,
/// the origin's R1Node name.
pub const INTENT_ANNOTATION: &str = "ratio1.ai/deeploy-intent";
pub const SPEC_HASH_ANNOTATION: &str = "ratio1.ai/deeploy-spec-hash";
pub const ORIGIN_NODE_ANNOTATION: &str = "ratio1.ai/deeploy-origin-node";

/// Settings of `ratio1 operator` for Deeploy.
#[derive(Clone, Debug)]
pub struct DeeployConfig {
    /// A target not heard from for this long loses its placements.
    pub failover_after: Duration,
    /// Copies are checked against the intents at least this often.
    pub resync: Duration,
}

impl Default for DeeployConfig {
    fn default() -> Self {
        Self { failover_after: Duration::from_secs(15), resync: Duration::from_secs(10) }
    }
}

#[derive(Default)]
struct Mirror {
    profiles: BTreeMap<String, Profile>,
    intents: BTreeMap<String, Intent>,
    /// Key → (target PeerId, report).
    reports: BTreeMap<String, (String, Report)>,
    /// Intent keys seen deleted since this process started.
    withdrawn: BTreeSet<String>,
}

struct Inner {
    cstore: Cstore,
    view: crate::p2p::SharedView,
    client: kube::Client,
    cfg: DeeployConfig,
    metrics: Arc<Metrics>,
    mirror: RwLock<Mirror>,
    loaded: Filled,
    started_at: i64,
    /// The profile this node should publish (the R1Node reconciler sets it).
    profile: watch::Sender<Option<Profile>>,
    /// Origin pipelines to reconcile (a report about them changed).
    wake: mpsc::UnboundedSender<ObjectRef<R1Pipeline>>,
    /// Bumped when every origin pipeline should be planned again (a
    /// cluster appeared, left, or changed its profile).
    replan: watch::Sender<u64>,
    target_wake: Notify,
    pipelines: Store<R1Pipeline>,
    pipelines_ready: Filled,
    namespace: String,
    /// Namespaces this process made sure exist (no GET per copy).
    namespaces: std::sync::Mutex<BTreeSet<String>>,
    /// Copies whose intent this node no longer holds: since when (ms).
    absent_since: std::sync::Mutex<BTreeMap<String, i64>>,
}

/// What Deeploy runs on: CSTORE, the network's view, the cluster's API
/// and the pipeline cache (copies are found there), and the profile the
/// R1Node reconciler sets.
pub struct Parts {
    pub cstore: Cstore,
    pub view: crate::p2p::SharedView,
    pub client: kube::Client,
    pub metrics: Arc<Metrics>,
    pub pipelines: Store<R1Pipeline>,
    pub pipelines_ready: Filled,
    pub profile: watch::Sender<Option<Profile>>,
    /// The operator's own namespace (never open to other clusters).
    pub namespace: String,
}

/// A handle on this node's Deeploy. Clones share it.
#[derive(Clone)]
pub struct Deeploy {
    inner: Arc<Inner>,
}

/// What the pipeline controller listens to.
pub struct Wakeups {
    /// Origin pipelines whose reports changed.
    pub pipelines: mpsc::UnboundedReceiver<ObjectRef<R1Pipeline>>,
    /// Every pipeline should be planned again.
    pub replan: watch::Receiver<u64>,
}

fn now_ms() -> i64 {
    crate::p2p::now_ms()
}

fn reason(r: &'static str) -> ReasonLabels {
    ReasonLabels { reason: r }
}

/// Hash of what targets run: the spec without its placement.
pub fn spec_hash(spec: &R1PipelineSpec) -> String {
    let mut v = serde_json::to_value(spec).expect("spec serializes");
    if let Some(o) = v.as_object_mut() {
        o.remove("placement");
        // The budget is the origin's escrow: copies do not carry it.
        o.remove("budget");
    }
    let d = <sha2::Sha256 as sha2::Digest>::digest(v.to_string().as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The origin PeerId of a pipeline applied here for another origin.
pub fn copy_origin(p: &R1Pipeline) -> Option<&str> {
    p.labels().get(ORIGIN_LABEL).map(String::as_str)
}

/// True when `p` is the copy this operator made for `origin`'s intent:
/// the origin label, the managed-by label and the intent annotation all
/// agree (a label alone, e.g. on a re-applied `kubectl get -o yaml`, is
/// not enough for a target to overwrite or delete it).
pub fn is_copy_of(p: &R1Pipeline, origin: &str) -> bool {
    let key = intent::intent_key(origin, &p.namespace().unwrap_or_default(), &p.name_any());
    copy_origin(p) == Some(origin)
        && p.labels().get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1)
        && p.annotations().get(INTENT_ANNOTATION) == Some(&key)
}

impl Deeploy {
    /// Starts the mirror, profile, freshness and target loops (the caller
    /// leads: a standby runs none of them).
    pub fn start(cfg: DeeployConfig, parts: Parts) -> (Self, Wakeups) {
        let Parts { cstore, view, client, metrics, pipelines, pipelines_ready, profile, namespace } = parts;
        let (wake, wake_rx) = mpsc::unbounded_channel();
        let (replan, replan_rx) = watch::channel(0);
        let d = Self {
            inner: Arc::new(Inner {
                cstore,
                view,
                client,
                cfg,
                metrics,
                mirror: Default::default(),
                loaded: Filled::default(),
                started_at: now_ms(),
                profile,
                wake,
                replan,
                target_wake: Notify::new(),
                pipelines,
                pipelines_ready,
                namespace,
                namespaces: Default::default(),
                absent_since: Default::default(),
            }),
        };
        tokio::spawn(d.clone().mirror_loop());
        tokio::spawn(d.clone().profile_loop());
        tokio::spawn(d.clone().freshness_loop());
        tokio::spawn(d.clone().target_loop());
        (d, Wakeups { pipelines: wake_rx, replan: replan_rx })
    }

    /// This node's PeerId, when Deeploy can act: CSTORE up, its records
    /// loaded, the node's identity known. `Err` says what is missing.
    pub fn ready(&self) -> Result<String, String> {
        if !self.inner.cstore.is_up() {
            return Err("CSTORE's etcd is unreachable".into());
        }
        if !self.inner.loaded.is_set() {
            return Err("Deeploy's records are not loaded yet".into());
        }
        self.me().ok_or_else(|| "the network has not started yet".into())
    }

    pub fn me(&self) -> Option<String> {
        self.inner.cstore.peer_id().map(|p| p.to_string())
    }

    /// The intent this node holds for its pipeline `namespace/name`.
    pub fn intent(&self, me: &str, namespace: &str, name: &str) -> Option<Intent> {
        self.inner.mirror.read().expect("mirror lock").intents.get(&intent::intent_key(me, namespace, name)).cloned()
    }

    /// The clusters a pipeline may go to, as seen now: every fresh peer
    /// with a profile, and this node. `used` counts every other intent.
    fn candidates(&self, me: &str, own_key: &str) -> Vec<Candidate> {
        let now = now_ms();
        let fresh = self.fresh_peers(now);
        let m = self.inner.mirror.read().expect("mirror lock");
        let mut used: BTreeMap<&str, (Need, usize)> = BTreeMap::new();
        for (k, i) in &m.intents {
            if k == own_key {
                continue;
            }
            for (peer, r) in &i.targets {
                let e = used.entry(peer.as_str()).or_default();
                e.0 = e.0.plus(&i.need.times(*r));
                e.1 += 1;
            }
        }
        let mut profiles = m.profiles.clone();
        if let Some(p) = self.inner.profile.borrow().clone() {
            profiles.insert(me.to_string(), p);
        }
        profiles
            .into_iter()
            .map(|(peer, profile)| {
                let fresh = if peer == me {
                    Ok(())
                } else {
                    match fresh.get(&peer) {
                        Some(Ok(())) => Ok(()),
                        Some(Err(age)) => Err(format!("no heartbeat for {} s", age / 1000)),
                        None => Err("not heard from".to_string()),
                    }
                };
                let (u, apps) = used.get(peer.as_str()).copied().unwrap_or_default();
                Candidate { peer, profile, fresh, used: u, apps }
            })
            .collect()
    }

    /// Peers heard from: `Ok` within `failover_after`, else their silence
    /// in ms.
    fn fresh_peers(&self, now: i64) -> BTreeMap<String, Result<(), i64>> {
        let limit = self.inner.cfg.failover_after.as_millis() as i64;
        let v = self.inner.view.read().expect("view lock");
        v.peers
            .values()
            .map(|p| {
                let fresh = match p.last_heartbeat {
                    Some(t) if now - t <= limit => Ok(()),
                    Some(t) => Err(now - t),
                    None if p.connected => Ok(()),
                    None => Err(limit + 1),
                };
                (p.peer_id.clone(), fresh)
            })
            .collect()
    }

    /// Where `spec` (applied in `namespace` here) would run now, keeping
    /// the current intent's targets while they fit.
    pub fn plan(&self, me: &str, namespace: &str, name: &str, spec: &R1PipelineSpec) -> Result<(Plan, Need), String> {
        let need = Need::of(&spec.template)?;
        let key = intent::intent_key(me, namespace, name);
        let hash = spec_hash(spec);
        let (current, refused) = {
            let m = self.inner.mirror.read().expect("mirror lock");
            let current: Vec<String> =
                m.intents.get(&key).map(|i| i.targets.keys().cloned().collect()).unwrap_or_default();
            let refused: BTreeMap<String, String> = m
                .reports
                .values()
                .filter(|(_, r)| r.origin == me && r.namespace == namespace && r.name == name && r.spec_hash == hash)
                .filter_map(|(t, r)| Some((t.clone(), r.refused.clone()?)))
                .collect();
            (current, refused)
        };
        let images = plan::images(&spec.template);
        let remote_ok = match spec.models.is_empty() {
            true => plan::remote_safe(&spec.template, namespace, ""),
            false => Err("it mounts R1Models, which only its origin can resolve until R1FS delivers them".into()),
        };
        let candidates = self.candidates(me, &key);
        let p = plan::plan(&plan::Inputs {
            origin: me,
            placement: &spec.placement,
            ask: plan::Ask { namespace, replicas: spec.replicas, need, images: &images },
            remote_ok,
            candidates: &candidates,
            current: &current,
            refused: &refused,
        })?;
        Ok((p, need))
    }

    /// Writes the intent unless the mirror holds the same one.
    pub async fn write_intent(&self, i: &Intent) -> Result<bool, CstoreError> {
        let key = intent::intent_key(&i.origin, &i.namespace, &i.name);
        let old = self.inner.mirror.read().expect("mirror lock").intents.get(&key).cloned();
        if old.as_ref().is_some_and(|o| o.targets == i.targets && o.spec_hash == i.spec_hash && o.need == i.need) {
            return Ok(false);
        }
        let value = serde_json::to_value(i).expect("intent serializes");
        self.inner.cstore.set(&key, &value, None).await?;
        let moved = old.is_some_and(|o| o.targets.keys().any(|t| !i.targets.contains_key(t)));
        if moved {
            self.inner.metrics.deeploy.moves.inc();
        }
        self.inner.metrics.deeploy.intents_written.inc();
        self.remember_intent(key, i.clone());
        Ok(true)
    }

    fn remember_intent(&self, key: String, i: Intent) {
        let mut m = self.inner.mirror.write().expect("mirror lock");
        m.withdrawn.remove(&key);
        m.intents.insert(key, i);
    }

    /// Withdraws the intent of this node's pipeline `namespace/name`: its
    /// targets remove their copies.
    pub async fn withdraw(&self, me: &str, namespace: &str, name: &str) -> Result<(), CstoreError> {
        let key = intent::intent_key(me, namespace, name);
        if self.inner.cstore.del(&key).await? {
            self.inner.metrics.deeploy.intents_withdrawn.inc();
        }
        let mut m = self.inner.mirror.write().expect("mirror lock");
        m.intents.remove(&key);
        m.withdrawn.insert(key);
        Ok(())
    }

    /// How the pipeline runs on `target`, as that target last reported
    /// for the intent's spec (an older report says it is updating).
    pub fn placement_on(&self, i: &Intent, target: &str) -> PlacementStatus {
        let key = intent::report_key(target, &i.origin, &i.namespace, &i.name);
        let m = self.inner.mirror.read().expect("mirror lock");
        let node = m.profiles.get(target).map(|p| p.node.clone());
        let replicas = i.replicas_on(target).unwrap_or(0);
        let pending = |msg: String| PlacementStatus {
            node: node.clone(),
            peer_id: Some(target.to_string()),
            replicas,
            ready_replicas: 0,
            phase: PlacementPhase::Pending,
            message: Some(msg),
        };
        match m.reports.get(&key) {
            None => pending("waiting for the cluster's first report".into()),
            Some((_, r)) if r.spec_hash != i.spec_hash => {
                pending(format!("updating to the current spec ({}/{} ready before)", r.ready_replicas, r.replicas))
            }
            Some((_, r)) if r.refused.is_some() => pending(format!("refused: {}", r.refused.as_deref().unwrap_or(""))),
            // What a target says is bounded by what was asked of it.
            Some((_, r)) => PlacementStatus {
                node: Some(r.node.clone()),
                peer_id: Some(target.to_string()),
                replicas,
                ready_replicas: r.ready_replicas.clamp(0, replicas),
                phase: r.phase,
                message: r.message.clone(),
            },
        }
    }

    /// The R1Node name of a peer (from its profile).
    pub fn node_name(&self, peer: &str) -> Option<String> {
        if let Some(p) = self.inner.profile.borrow().as_ref().filter(|_| self.me().as_deref() == Some(peer)) {
            return Some(p.node.clone());
        }
        self.inner.mirror.read().expect("mirror lock").profiles.get(peer).map(|p| p.node.clone())
    }

    /// Reports the state of a copy this node runs for another origin.
    pub async fn report(&self, copy: &R1Pipeline, placement: &PlacementStatus) -> Result<(), CstoreError> {
        let (Some(origin), Some(me)) = (copy_origin(copy), self.me()) else { return Ok(()) };
        let ns = copy.namespace().unwrap_or_default();
        let r = Report {
            namespace: ns.clone(),
            name: copy.name_any(),
            origin: origin.to_string(),
            node: placement.node.clone().unwrap_or_default(),
            spec_hash: copy.annotations().get(SPEC_HASH_ANNOTATION).cloned().unwrap_or_default(),
            replicas: placement.replicas,
            ready_replicas: placement.ready_replicas,
            phase: placement.phase,
            message: placement.message.as_deref().map(intent::short),
            refused: None,
            refusal: None,
            at: None,
        };
        self.put_report(intent::report_key(&me, origin, &ns, &copy.name_any()), me, r).await
    }

    /// A copy this cluster cannot run (stalled here): refused, so that the
    /// origin places it elsewhere.
    pub async fn refuse_copy(&self, copy: &R1Pipeline, why: &str) -> Result<(), CstoreError> {
        let (Some(origin), Some(me)) = (copy_origin(copy), self.me()) else { return Ok(()) };
        let key = intent::intent_key(origin, &copy.namespace().unwrap_or_default(), &copy.name_any());
        let held = self.inner.mirror.read().expect("mirror lock").intents.get(&key).cloned();
        if let Some(i) = held {
            self.refuse(&me, &i, ("stalled", why.to_string())).await;
        }
        Ok(())
    }

    async fn put_report(&self, key: String, me: String, r: Report) -> Result<(), CstoreError> {
        let same = self.inner.mirror.read().expect("mirror lock").reports.get(&key).is_some_and(|(_, old)| old == &r);
        if same {
            return Ok(());
        }
        self.inner.cstore.set(&key, &serde_json::to_value(&r).expect("report serializes"), None).await?;
        self.inner.metrics.deeploy.reports_written.inc();
        self.inner.mirror.write().expect("mirror lock").reports.insert(key, (me, r));
        Ok(())
    }

    /// What `ratio1 deeploy status` shows: the intent and every report.
    pub fn status_of(&self, origin: &str, namespace: &str, name: &str) -> serde_json::Value {
        let m = self.inner.mirror.read().expect("mirror lock");
        let intent = m.intents.get(&intent::intent_key(origin, namespace, name));
        let reports: Vec<serde_json::Value> = m
            .reports
            .values()
            .filter(|(_, r)| r.origin == origin && r.namespace == namespace && r.name == name)
            .map(|(t, r)| serde_json::json!({"peer": t, "report": r}))
            .collect();
        serde_json::json!({
            "intent": intent.map(|i| serde_json::json!({
                "origin": i.origin, "originNode": i.origin_node, "generation": i.generation,
                "specHash": i.spec_hash, "targets": i.targets,
            })),
            "reports": reports,
        })
    }

    /// The targets running the pipeline `namespace/name` of `origin` (the
    /// object `uid`) now, as PoAI's oracles see it: each target its
    /// current intent names whose report is about the intent's spec, not
    /// refused, running (every replica it was asked for ready), and which
    /// is heard from (a report stays in CSTORE after its writer died).
    /// `None`: no intent for that object.
    pub fn running(&self, origin: &str, namespace: &str, name: &str, uid: &str) -> Option<BTreeSet<String>> {
        let now = now_ms();
        let fresh = self.fresh_peers(now);
        let me = self.me();
        let m = self.inner.mirror.read().expect("mirror lock");
        let i = m.intents.get(&intent::intent_key(origin, namespace, name)).filter(|i| i.uid == uid)?;
        let heard = |t: &str| me.as_deref() == Some(t) || matches!(fresh.get(t), Some(Ok(())));
        Some(
            i.targets
                .iter()
                .filter(|(t, want)| {
                    let r = m.reports.get(&intent::report_key(t, origin, namespace, name));
                    r.is_some_and(|(_, r)| {
                        r.spec_hash == i.spec_hash
                            && r.refused.is_none()
                            && r.phase == PlacementPhase::Running
                            && r.ready_replicas >= **want
                            && **want > 0
                    }) && heard(t)
                })
                .map(|(t, _)| t.clone())
                .collect(),
        )
    }

    /// Origins of the pipelines named `namespace/name` (for status lookups
    /// from a node that is not the origin).
    pub fn origins_of(&self, namespace: &str, name: &str) -> Vec<String> {
        let m = self.inner.mirror.read().expect("mirror lock");
        m.intents.values().filter(|i| i.namespace == namespace && i.name == name).map(|i| i.origin.clone()).collect()
    }

    /// Applies one record (or its absence) to the mirror, and says whom to
    /// wake.
    fn absorb(&self, key: &str, rec: Option<&crate::cstore::record::Record>, me: Option<&str>) {
        let Some((writer, kind)) = intent::parse_key(key) else { return };
        let value = rec.filter(|r| !r.is_tombstone() && !r.expired(now_ms())).map(|r| r.value_json());
        let metrics = &self.inner.metrics.deeploy;
        let mut m = self.inner.mirror.write().expect("mirror lock");
        match kind {
            Kind::Profile => {
                let new = match value.map(serde_json::from_value::<Profile>) {
                    Some(Ok(p)) if p.bounded() => Some(p),
                    Some(_) => {
                        metrics.rejected.get_or_create(&reason("malformed_profile")).inc();
                        None
                    }
                    None => None,
                };
                let old = match new.clone() {
                    Some(p) => m.profiles.insert(writer.to_string(), p),
                    None => m.profiles.remove(writer),
                };
                if old != new {
                    self.inner.replan.send_modify(|n| *n += 1);
                }
            }
            Kind::Intent => {
                // What an intent needs is computed here from its spec, not
                // taken from it: a lying `need` must not fill every cluster.
                let parsed = value.map(|v| {
                    let mut i = serde_json::from_value::<Intent>(v).ok()?;
                    let spec: R1PipelineSpec = serde_json::from_value(i.spec.clone()).ok()?;
                    i.need = Need::of(&spec.template).ok()?;
                    Some(i)
                });
                match parsed {
                    Some(Some(i)) if i.bounded(writer) && intent::intent_key(writer, &i.namespace, &i.name) == key => {
                        m.withdrawn.remove(key);
                        m.intents.insert(key.to_string(), i);
                    }
                    Some(_) => {
                        metrics.rejected.get_or_create(&reason("malformed_intent")).inc();
                    }
                    None => {
                        m.intents.remove(key);
                        // Withdrawn only by the origin's signed tombstone;
                        // a record merely absent proves nothing.
                        if rec.is_some_and(|r| r.is_tombstone()) {
                            m.withdrawn.insert(key.to_string());
                        }
                    }
                }
                if Some(writer) != me {
                    self.inner.target_wake.notify_one();
                }
            }
            Kind::Report => match value.map(serde_json::from_value::<Report>) {
                Some(Ok(r)) if r.bounded() && intent::report_key(writer, &r.origin, &r.namespace, &r.name) == key => {
                    // Kept only from a target of an intent held here, or as a
                    // refusal of its current spec: any peer may write
                    // reports, few are worth memory or a wake-up.
                    let ik = intent::intent_key(&r.origin, &r.namespace, &r.name);
                    let wanted = m.intents.get(&ik).is_some_and(|i| {
                        i.targets.contains_key(writer) || (r.refused.is_some() && r.spec_hash == i.spec_hash)
                    });
                    if !wanted {
                        m.reports.remove(key);
                        return;
                    }
                    if Some(r.origin.as_str()) == me && Some(writer) != me {
                        let _ = self.inner.wake.send(ObjectRef::new(&r.name).within(&r.namespace));
                    }
                    m.reports.insert(key.to_string(), (writer.to_string(), r));
                }
                Some(_) => {
                    metrics.rejected.get_or_create(&reason("malformed_report")).inc();
                }
                None => {
                    if let Some((_, r)) = m.reports.remove(key) {
                        if Some(r.origin.as_str()) == me {
                            let _ = self.inner.wake.send(ObjectRef::new(&r.name).within(&r.namespace));
                        }
                    }
                }
            },
        }
    }

    /// Keeps the mirror equal to CSTORE's `deeploy/` records: a full read,
    /// then its changes (read again if the watch falls behind).
    async fn mirror_loop(self) {
        loop {
            if !self.inner.cstore.wait_up(Duration::from_secs(5)).await {
                continue;
            }
            let Ok(changes) = self.inner.cstore.watch(intent::PREFIX) else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let mut changes = std::pin::pin!(changes);
            let records = match self.inner.cstore.list(intent::PREFIX).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read Deeploy's records; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let me = self.me();
            let keys: BTreeSet<String> = records.iter().map(|r| r.slot.key.clone()).collect();
            {
                // Whatever the mirror held that is gone now is dropped (not
                // taken as withdrawn: only a tombstone says that).
                let gone: Vec<String> = {
                    let m = self.inner.mirror.read().expect("mirror lock");
                    let profiles = m.profiles.keys().map(|p| intent::profile_key(p));
                    m.intents
                        .keys()
                        .chain(m.reports.keys())
                        .cloned()
                        .chain(profiles)
                        .filter(|k| !keys.contains(k))
                        .collect()
                };
                for k in gone {
                    self.absorb(&k, None, me.as_deref());
                }
            }
            // Intents before reports: a report is kept only for a held intent.
            let is_report = |r: &&crate::cstore::record::Record| {
                intent::parse_key(&r.slot.key).is_some_and(|(_, k)| k == Kind::Report)
            };
            for r in records.iter().filter(|r| !is_report(r)).chain(records.iter().filter(is_report)) {
                self.absorb(&r.slot.key, Some(r), me.as_deref());
            }
            self.inner.loaded.mark();
            // This node's own profile may be among what a re-read found gone
            // (CSTORE's etcd lost it): the profile loop checks again.
            self.inner.profile.send_modify(|_| {});
            self.inner.replan.send_modify(|n| *n += 1);
            self.inner.target_wake.notify_one();
            let loads = self.inner.cstore.loads();
            let mut check = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    c = changes.next() => match c {
                        Some(c) if c.slot.field.is_none() => self.absorb(&c.slot.key, c.record.as_ref(), self.me().as_deref()),
                        Some(_) => {}
                        None => break,
                    },
                    _ = check.tick() => if self.inner.cstore.loads() != loads { break },
                }
            }
            tracing::info!("Deeploy's view of CSTORE may have missed changes; reading every record again");
        }
    }

    /// Publishes this node's profile whenever it changes (and until CSTORE
    /// takes it).
    async fn profile_loop(self) {
        let mut rx = self.inner.profile.subscribe();
        loop {
            let wanted = rx.borrow_and_update().clone();
            match (wanted, self.ready()) {
                (Some(p), Ok(me)) => {
                    let key = intent::profile_key(&me);
                    let same = self.inner.mirror.read().expect("mirror lock").profiles.get(&me) == Some(&p);
                    if !same {
                        let value = serde_json::to_value(&p).expect("profile serializes");
                        match self.inner.cstore.set(&key, &value, None).await {
                            Ok(_) => {
                                self.inner.mirror.write().expect("mirror lock").profiles.insert(me, p);
                                // This cluster's own offer or labels changed:
                                // its pipelines are placed again.
                                self.inner.replan.send_modify(|n| *n += 1);
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "cannot publish the Deeploy profile yet");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                continue;
                            }
                        }
                    }
                }
                (None, Ok(me)) => {
                    let has = self.inner.mirror.read().expect("mirror lock").profiles.contains_key(&me);
                    if has && self.inner.cstore.del(&intent::profile_key(&me)).await.is_ok() {
                        self.inner.mirror.write().expect("mirror lock").profiles.remove(&me);
                    }
                }
                (_, Err(_)) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Asks for a new plan of every pipeline when the set of fresh
    /// clusters changes (a target went silent, or came back).
    async fn freshness_loop(self) {
        let mut last: Option<BTreeSet<String>> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let fresh: BTreeSet<String> =
                self.fresh_peers(now_ms()).into_iter().filter(|(_, f)| f.is_ok()).map(|(p, _)| p).collect();
            if last.as_ref() != Some(&fresh) {
                if last.is_some() {
                    self.inner.replan.send_modify(|n| *n += 1);
                }
                last = Some(fresh);
            }
        }
    }

    /// As a target: applies a copy of every pipeline an intent places here
    /// and removes the copies no intent wants any more.
    async fn target_loop(self) {
        let mut wait = self.inner.cfg.resync;
        loop {
            let _ = tokio::time::timeout(wait, self.inner.target_wake.notified()).await;
            wait = self.inner.cfg.resync;
            let Ok(me) = self.ready() else { continue };
            if !self.inner.pipelines_ready.is_set() {
                continue;
            }
            if let Err(e) = self.withdraw_gone(&me).await {
                tracing::warn!(error = %e, "withdrawing the intents of deleted pipelines failed; retrying");
            }
            match self.materialise(&me).await {
                Ok(false) => {}
                Ok(true) => wait = Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(error = %e, "applying Deeploy intents failed; retrying");
                    wait = Duration::from_secs(1);
                }
            }
        }
    }

    /// An R1Pipeline deleted here (the cache says so): Deeploy looks for
    /// intents to withdraw at once.
    pub fn pipeline_gone(&self) {
        self.inner.target_wake.notify_one();
    }

    /// Withdraws this node's intents whose pipeline is gone from the
    /// (filled) cache: deleted while this process ran, or while it was
    /// down. An API server that cannot be reached leaves the cache as it
    /// was, so a blip withdraws nothing.
    async fn withdraw_gone(&self, me: &str) -> Result<(), CstoreError> {
        let gone: Vec<(String, String)> = {
            let m = self.inner.mirror.read().expect("mirror lock");
            m.intents
                .values()
                .filter(|i| i.origin == me)
                .filter(|i| {
                    let live = self.inner.pipelines.get(&ObjectRef::new(&i.name).within(&i.namespace));
                    live.is_none_or(|p| copy_origin(&p).is_some_and(|o| o != me && is_copy_of(&p, o)))
                })
                .map(|i| (i.namespace.clone(), i.name.clone()))
                .collect()
        };
        for (ns, name) in gone {
            self.withdraw(me, &ns, &name).await?;
            tracing::info!(namespace = %ns, %name, "pipeline deleted: intent withdrawn");
        }
        Ok(())
    }

    /// Returns whether to pass again soon (a previous copy is still being
    /// deleted, to be made again once gone).
    async fn materialise(&self, me: &str) -> Result<bool, kube::Error> {
        let mut again_soon = false;
        let mut mine: Vec<Intent> = {
            let m = self.inner.mirror.read().expect("mirror lock");
            m.intents.values().filter(|i| i.origin != me && i.targets.contains_key(me)).cloned().collect()
        };
        // In a fixed order, copies already running first, so that when the
        // offer runs out a newcomer is refused, never a running copy.
        let running = |i: &Intent| {
            self.inner
                .pipelines
                .get(&ObjectRef::new(&i.name).within(&i.namespace))
                .is_some_and(|p| is_copy_of(&p, &i.origin))
        };
        mine.sort_by_cached_key(|i| (!running(i), i.origin.clone(), i.namespace.clone(), i.name.clone()));
        let profile = self.inner.profile.borrow().clone();
        // The offer is counted as origins count it: this cluster's own
        // pipelines placed on itself take their share first.
        let mut used = {
            let m = self.inner.mirror.read().expect("mirror lock");
            m.intents
                .values()
                .filter(|i| i.origin == me)
                .filter_map(|i| Some(i.need.times(i.replicas_on(me)?)))
                .fold(Need::default(), |a, b| a.plus(&b))
        };
        let mut work = vec![];
        for i in &mine {
            let existing = self.inner.pipelines.get(&ObjectRef::new(&i.name).within(&i.namespace));
            match self.admission(me, i, existing.as_deref(), profile.as_ref(), &mut used) {
                Err(refusal) => {
                    self.refuse(me, i, refusal).await;
                    if let Some(p) = existing.filter(|p| is_copy_of(p, &i.origin)) {
                        self.delete_copy(&p).await?;
                    }
                }
                // The previous copy is still going (its children first):
                // made again once it is gone.
                Ok(_) if existing.as_ref().is_some_and(|p| p.metadata.deletion_timestamp.is_some()) => {
                    again_soon = true
                }
                Ok(copy) => {
                    let up_to_date = existing.as_ref().is_some_and(|p| {
                        p.annotations().get(SPEC_HASH_ANNOTATION) == Some(&i.spec_hash) && p.spec == copy.spec
                    });
                    if !up_to_date {
                        work.push((i.clone(), copy, existing));
                    }
                }
            }
        }
        // Copies are written concurrently (a burst of intents must not
        // queue behind one another's round trips).
        let results: Vec<(Intent, Result<(), kube::Error>)> = futures::stream::iter(work)
            .map(|(i, copy, existing)| async move {
                let r = self.apply_copy(&copy, existing.as_deref()).await;
                (i, r)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (i, r) in results {
            match r {
                Ok(()) => {}
                // Created meanwhile (ours, not in the cache yet, or a
                // user's): the next pass tells which.
                Err(kube::Error::Api(s)) if s.code == 409 => self.inner.target_wake.notify_one(),
                // The API server refuses the copy (schema, admission): it
                // never will run here; say so.
                Err(kube::Error::Api(s)) if s.code == 422 || s.code == 403 => {
                    self.refuse(me, &i, ("api", format!("this cluster's API server refused it: {}", s.message))).await;
                }
                Err(e) => return Err(e),
            }
        }
        self.remove_unwanted(me, &mine).await?;
        self.drop_stale_reports(me, profile.as_ref(), used).await;
        Ok(again_soon)
    }

    /// The copy this cluster would run for intent `i` now, or why not;
    /// `used` holds the offer taken by the intents admitted before it.
    fn admission(
        &self,
        me: &str,
        i: &Intent,
        existing: Option<&R1Pipeline>,
        profile: Option<&Profile>,
        used: &mut Need,
    ) -> Result<R1Pipeline, Refusal> {
        match (existing, copy_of(i, me), profile) {
            (Some(p), _, _) if !is_copy_of(p, &i.origin) => Err((
                "conflict",
                format!(
                    "an R1Pipeline {}/{} that this cluster did not get from the network exists here",
                    i.namespace, i.name
                ),
            )),
            (_, Err(e), _) => Err(("malformed", e)),
            // No usable R1Node offer/policy here: nothing is admitted.
            (_, _, None) => Err((
                "no_profile",
                "this cluster offers nothing to the network (no usable R1Node offer and policy)".into(),
            )),
            (_, Ok(c), Some(profile)) => self.admit(profile, i, &c, used).map(|()| c),
        }
    }

    /// Whether this cluster runs intent `i` (its copy `c`): the pod is
    /// safe for a stranger to run, the policy admits it, and the offer
    /// has room next to the intents admitted before it (`used`).
    fn admit(&self, profile: &Profile, i: &Intent, c: &R1Pipeline, used: &mut Need) -> Result<(), Refusal> {
        plan::remote_safe(&c.spec.template, &i.namespace, &self.inner.namespace).map_err(|e| ("unsafe", e))?;
        if !c.spec.models.is_empty() {
            return Err(("models", "it mounts R1Models, which this cluster cannot resolve".into()));
        }
        let images = plan::images(&c.spec.template);
        let need = Need::of(&c.spec.template).map_err(|e| ("malformed", e))?;
        let ask = plan::Ask { namespace: &i.namespace, replicas: c.spec.replicas, need, images: &images };
        plan::admits(&profile.policy, &ask).map_err(|e| ("policy", e))?;
        let total = used.plus(&need.times(c.spec.replicas));
        let o = &profile.offer;
        let over = |offer: Option<u64>, v: u64| offer.is_some_and(|x| v > x);
        if over(o.cpu_milli, total.cpu_milli) || over(o.memory, total.memory) || over(o.gpus, total.gpus) {
            return Err(("offer", "this cluster's offer is used up by other pipelines placed here".into()));
        }
        *used = total;
        Ok(())
    }

    /// Removes the copies no intent wants: when the intent names other
    /// targets, was withdrawn (the origin's tombstone), or has stayed
    /// absent for 5 s after a complete anti-entropy round with its origin
    /// since this process started. Never on a guess: an origin that is
    /// gone for good leaves its copies running.
    async fn remove_unwanted(&self, me: &str, mine: &[Intent]) -> Result<(), kube::Error> {
        let wanted: BTreeSet<String> =
            mine.iter().map(|i| intent::intent_key(&i.origin, &i.namespace, &i.name)).collect();
        let now = now_ms();
        let mut copies = 0;
        let mut seen_absent = BTreeSet::new();
        for p in self.inner.pipelines.state() {
            let Some(origin) = copy_origin(&p).filter(|o| *o != me && is_copy_of(&p, o)) else { continue };
            copies += 1;
            let key = intent::intent_key(origin, &p.namespace().unwrap_or_default(), &p.name_any());
            if wanted.contains(&key) {
                continue;
            }
            let (held, withdrawn) = {
                let m = self.inner.mirror.read().expect("mirror lock");
                (m.intents.contains_key(&key), m.withdrawn.contains(&key))
            };
            let remove = if held || withdrawn {
                true
            } else {
                seen_absent.insert(key.clone());
                let since = *self.inner.absent_since.lock().expect("absent lock").entry(key.clone()).or_insert(now);
                let synced =
                    self.inner.cstore.in_sync_with(origin).is_some_and(|t| t > self.inner.started_at.max(since));
                synced && now - since >= 5_000
            };
            if remove {
                self.delete_copy(&p).await?;
                copies -= 1;
            }
        }
        self.inner.absent_since.lock().expect("absent lock").retain(|k, _| seen_absent.contains(k));
        self.inner.metrics.deeploy.copies.set(copies);
        Ok(())
    }

    /// Deletes this node's reports about intents that no longer place
    /// anything here, except a refusal it would still make (it is what
    /// keeps the origin from placing the pipeline here again): a refusal
    /// whose cause went (policy relaxed, conflicting object deleted) is
    /// withdrawn, and the origin may place here again. A refusal of a copy
    /// that stalled here stays a minute (then the origin may try again).
    async fn drop_stale_reports(&self, me: &str, profile: Option<&Profile>, used: Need) {
        let candidates: Vec<(String, Report, Option<Intent>)> = {
            let m = self.inner.mirror.read().expect("mirror lock");
            m.reports
                .iter()
                .filter(|(_, (t, _))| t == me)
                .map(|(k, (_, r))| {
                    (
                        k.clone(),
                        r.clone(),
                        m.intents.get(&intent::intent_key(&r.origin, &r.namespace, &r.name)).cloned(),
                    )
                })
                .collect()
        };
        let mut stale = vec![];
        for (k, r, i) in candidates {
            let keep = match &i {
                None => false,
                Some(i) if i.targets.contains_key(me) => true,
                Some(i) if r.refused.is_none() || r.spec_hash != i.spec_hash => false,
                // A copy that stalled here is refused for a minute, then
                // the origin may try again (the cause may have gone).
                Some(_) if r.refusal.as_deref() == Some("stalled") => r.at.is_some_and(|t| now_ms() - t < 60_000),
                Some(i) => {
                    let existing = self.inner.pipelines.get(&ObjectRef::new(&i.name).within(&i.namespace));
                    self.admission(me, i, existing.as_deref(), profile, &mut used.clone()).is_err()
                }
            };
            if !keep {
                stale.push(k);
            }
        }
        for k in stale {
            if self.inner.cstore.del(&k).await.is_ok() {
                self.inner.mirror.write().expect("mirror lock").reports.remove(&k);
            }
        }
    }

    async fn refuse(&self, me: &str, i: &Intent, (label, why): Refusal) {
        let key = intent::report_key(me, &i.origin, &i.namespace, &i.name);
        let r = Report {
            namespace: i.namespace.clone(),
            name: i.name.clone(),
            origin: i.origin.clone(),
            node: self.node_name(me).unwrap_or_default(),
            spec_hash: i.spec_hash.clone(),
            replicas: 0,
            ready_replicas: 0,
            phase: PlacementPhase::Pending,
            message: None,
            refused: Some(intent::short(&why)),
            refusal: Some(label.to_string()),
            at: None,
        };
        let known = self.inner.mirror.read().expect("mirror lock").reports.get(&key).is_some_and(|(_, o)| {
            let mut o = o.clone();
            o.at = None;
            o == r
        });
        if known {
            return;
        }
        let r = Report { at: Some(now_ms()), ..r };
        tracing::info!(namespace = %i.namespace, name = %i.name, origin = %i.origin, reason = %why, "refusing a Deeploy intent");
        self.inner.metrics.deeploy.refused.get_or_create(&reason(label)).inc();
        if let Err(e) = self.put_report(key, me.to_string(), r).await {
            tracing::warn!(error = %e, "cannot write a refusal report");
        }
    }

    /// Makes sure the copy's namespace exists: created when missing,
    /// labelled for Pod Security `baseline` (no host access, no privileged
    /// pods), never deleted (it may come to hold other things).
    async fn ensure_namespace(&self, ns: &str) -> Result<(), kube::Error> {
        if self.inner.namespaces.lock().expect("namespaces lock").contains(ns) {
            return Ok(());
        }
        let namespaces: Api<Namespace> = Api::all(self.inner.client.clone());
        if namespaces.get_opt(ns).await?.is_none() {
            let labels = [
                (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                ("pod-security.kubernetes.io/enforce".to_string(), "baseline".to_string()),
            ];
            let n = Namespace {
                metadata: kube::api::ObjectMeta {
                    name: Some(ns.to_string()),
                    labels: Some(labels.into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match namespaces.create(&PostParams::default(), &n).await {
                Ok(_) => tracing::info!(namespace = %ns, "created namespace for pipelines placed here"),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        self.inner.namespaces.lock().expect("namespaces lock").insert(ns.to_string());
        Ok(())
    }

    /// Creates the copy, or replaces the one this loop saw (a PUT on its
    /// resourceVersion: the whole spec is the intent's, nothing left over
    /// from an earlier version or a local edit, and a conflict fails).
    async fn apply_copy(&self, copy: &R1Pipeline, existing: Option<&R1Pipeline>) -> Result<(), kube::Error> {
        let ns = copy.namespace().unwrap_or_default();
        let api: Api<R1Pipeline> = Api::namespaced(self.inner.client.clone(), &ns);
        let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        match existing {
            Some(cur) => {
                let mut next = copy.clone();
                next.metadata.resource_version = cur.resource_version();
                next.metadata.uid = cur.uid();
                next.metadata.finalizers = cur.metadata.finalizers.clone();
                api.replace(&copy.name_any(), &pp, &next).await?;
            }
            None => {
                self.ensure_namespace(&ns).await?;
                // A create, not an apply: a pipeline of the same name made
                // here meanwhile is never taken over (409).
                api.create(&pp, copy).await?;
            }
        }
        self.inner.metrics.deeploy.copies_applied.inc();
        tracing::info!(namespace = %ns, name = %copy.name_any(), origin = ?copy_origin(copy), "applied a pipeline placed here");
        Ok(())
    }

    async fn delete_copy(&self, p: &R1Pipeline) -> Result<(), kube::Error> {
        let api: Api<R1Pipeline> = Api::namespaced(self.inner.client.clone(), &p.namespace().unwrap_or_default());
        if p.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        // Preconditioned on the UID: only the object this loop saw.
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions { uid: p.uid(), resource_version: None }),
            ..Default::default()
        };
        match api.delete(&p.name_any(), &dp).await {
            Ok(_) => {
                self.inner.metrics.deeploy.copies_deleted.inc();
                tracing::info!(namespace = ?p.namespace(), name = %p.name_any(), origin = ?copy_origin(p), "removed a pipeline no intent places here");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Why a target will not run an intent: a metric label from a fixed set
/// (`conflict`, `malformed`, `no_profile`, `unsafe`, `models`, `policy`,
/// `offer`, `api`, `stalled`) and the message the origin shows.
type Refusal = (&'static str, String);

/// The pipeline a target applies for intent `i`: the origin's spec, the
/// replicas asked of this target, labelled with its origin.
pub fn copy_of(i: &Intent, me: &str) -> Result<R1Pipeline, String> {
    let mut spec: R1PipelineSpec =
        serde_json::from_value(i.spec.clone()).map_err(|e| format!("its spec does not parse here: {e}"))?;
    if spec_hash(&spec) != i.spec_hash {
        return Err("its spec does not match the intent's specHash".into());
    }
    spec.replicas = i.replicas_on(me).unwrap_or(0);
    // A stranger's pod gets no token of this cluster's API.
    if let Some(pod) = spec.template.spec.as_mut() {
        pod.automount_service_account_token = Some(false);
    }
    spec.placement = crate::crd::Placement { clusters: 1, cluster_selector: None, nodes: vec![me.to_string()] };
    spec.budget = None;
    let mut p = R1Pipeline::new(&i.name, spec);
    p.metadata.namespace = Some(i.namespace.clone());
    p.metadata.labels = Some(
        [(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()), (ORIGIN_LABEL.to_string(), i.origin.clone())].into(),
    );
    p.metadata.annotations = Some(
        [
            (INTENT_ANNOTATION.to_string(), intent::intent_key(&i.origin, &i.namespace, &i.name)),
            (SPEC_HASH_ANNOTATION.to_string(), i.spec_hash.clone()),
            (ORIGIN_NODE_ANNOTATION.to_string(), i.origin_node.clone()),
        ]
        .into(),
    );
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(spec: &R1PipelineSpec) -> Intent {
        Intent {
            namespace: "team".into(),
            name: "web".into(),
            origin: "A".into(),
            origin_node: "node-a".into(),
            uid: "u".into(),
            generation: 3,
            spec_hash: spec_hash(spec),
            spec: serde_json::to_value(spec).unwrap(),
            targets: [("B".to_string(), 2), ("C".to_string(), 5)].into(),
            need: Need::default(),
        }
    }

    fn spec() -> R1PipelineSpec {
        serde_json::from_value(serde_json::json!({
            "replicas": 5,
            "placement": {"clusters": 2},
            "template": {"spec": {"containers": [{"name": "m", "image": "nginx"}]}}
        }))
        .unwrap()
    }

    #[test]
    fn a_copy_runs_what_the_intent_asks_of_this_target() {
        let i = intent(&spec());
        let c = copy_of(&i, "B").unwrap();
        assert_eq!(c.spec.replicas, 2);
        assert_eq!(c.spec.placement.nodes, vec!["B"]);
        assert_eq!(copy_origin(&c), Some("A"));
        assert_eq!(c.annotations().get(SPEC_HASH_ANNOTATION), Some(&i.spec_hash));
        assert_eq!((c.namespace().as_deref(), c.name_any().as_str()), (Some("team"), "web"));
        let mut want = spec().template;
        want.spec.as_mut().unwrap().automount_service_account_token = Some(false);
        assert_eq!(c.spec.template, want, "the copy runs the origin's template, with no API token");
        let mut lying = i.clone();
        lying.spec["template"]["spec"]["containers"][0]["image"] = serde_json::json!("evil");
        assert!(copy_of(&lying, "B").unwrap_err().contains("specHash"));
        let mut broken = i.clone();
        broken.spec = serde_json::json!({"replicas": "many"});
        assert!(copy_of(&broken, "B").unwrap_err().contains("does not parse"));
    }

    #[test]
    fn the_spec_hash_ignores_placement_only() {
        let a = spec();
        let mut b = a.clone();
        b.placement.clusters = 7;
        assert_eq!(spec_hash(&a), spec_hash(&b));
        b.replicas = 6;
        assert_ne!(spec_hash(&a), spec_hash(&b));
    }
}
