//! The three controllers, their shared context and the process that runs
//! them under a leader Lease.
//!
//! Each reconcile is a pipeline (after Stackable's operators): read what it
//! needs, validate (pure), build the desired children (pure), apply them by
//! server-side apply, then write status only when it changed.

pub mod model;
pub mod node;
pub mod pipeline;

use crate::conditions::{self, Want};
use crate::crd::{R1Model, R1Node};
use crate::metrics::Metrics;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use crate::objects::{Filled, FIELD_MANAGER, MANAGED_BY};

/// Why a reconcile failed (transient: retried with backoff). Invalid input
/// is not an error: it is a [`conditions::Invalid`], reported as `Stalled`,
/// and waits for a change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes api request failed")]
    Kube(#[from] kube::Error),
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("CSTORE: {0}")]
    Cstore(#[from] crate::cstore::CstoreError),
}

impl Error {
    /// Short, bounded label for metrics.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(e)) => format!("api_{}", e.code),
            Error::Kube(_) => "kube".into(),
            Error::MissingField(_) => "missing_field".into(),
            Error::Cstore(_) => "cstore".into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The local R1Node as the pipeline controller needs it for placement.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocalNode {
    pub name: String,
    pub peer_id: Option<String>,
    /// The R1Node's labels (what `placement.clusterSelector` matches).
    pub labels: std::collections::BTreeMap<String, String>,
    /// `spec.offer.nodeSelector`: every pod placed here must match it.
    pub node_selector: std::collections::BTreeMap<String, String>,
}

/// Reflector stores the reconcilers read instead of the API server. A
/// store that is not filled yet (or a miss) falls back to a GET where
/// freshness matters.
#[derive(Clone)]
pub struct Caches {
    pub nodes: Store<R1Node>,
    /// Set once the R1Node store is filled.
    pub nodes_ready: Filled,
    /// Secrets of the operator's namespace (identity, license).
    pub secrets: Store<k8s_openapi::api::core::v1::Secret>,
    pub models: Store<R1Model>,
    /// Children, pods: only objects labelled as managed by the operator.
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    /// Names and owners of every Deployment, Service and Job (metadata
    /// only): a name absent here needs no GET before a child is created.
    pub deployment_names: Names<Deployment>,
    pub service_names: Names<Service>,
    pub job_names: Names<Job>,
}

/// A metadata-only cache of every object of a kind, and whether its first
/// list is done.
#[derive(Clone)]
pub struct Names<K: Resource<DynamicType = ()> + Clone + 'static> {
    pub store: Store<kube::core::PartialObjectMeta<K>>,
    pub ready: Filled,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Default for Names<K> {
    /// Never filled: every lookup falls back to a GET.
    fn default() -> Self {
        Self { store: reflector::store().0, ready: Filled::default() }
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Names<K> {
    /// `Some(true)` when an object `namespace/name` exists, `Some(false)`
    /// when none does, `None` when the cache cannot tell yet.
    pub fn exists(&self, namespace: &str, name: &str) -> Option<bool> {
        if !self.ready.is_set() {
            return None;
        }
        Some(self.store.get(&ObjectRef::new(name).within(namespace)).is_some())
    }
}

impl Default for Caches {
    /// Empty stores (every read misses; the R1Node store counts as filled):
    /// for tests and before the watches are wired.
    fn default() -> Self {
        Self {
            nodes: reflector::store().0,
            nodes_ready: Filled::set(),
            secrets: reflector::store().0,
            models: reflector::store().0,
            deployments: reflector::store().0,
            services: reflector::store().0,
            jobs: reflector::store().0,
            pods: reflector::store().0,
            deployment_names: Names::default(),
            service_names: Names::default(),
            job_names: Names::default(),
        }
    }
}

/// The object `namespace/name` from the cache, else by GET: for a miss
/// where freshness matters (an absence that would stall the object).
pub async fn cached_or_get<K>(
    store: &Store<K>,
    api: &Api<K>,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<Arc<K>>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + 'static,
{
    match cached(store, namespace, name) {
        Some(o) => Ok(Some(o)),
        None => Ok(api.get_opt(name).await?.map(Arc::new)),
    }
}

/// The cached object `namespace/name`, if the store has it.
pub fn cached<K>(store: &Store<K>, namespace: Option<&str>, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut r = ObjectRef::<K>::new(name);
    if let Some(ns) = namespace {
        r = r.within(ns);
    }
    store.get(&r)
}

/// How this node joins the network (flags; the R1Node spec fills the rest).
#[derive(Clone, Debug, Default)]
pub struct NetOptions {
    pub trust: crate::dauth::license::TrustStore,
    /// Multiaddrs that override the R1Node's `spec.p2p` when not empty.
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub external: Vec<String>,
    pub tuning: crate::p2p::Tuning,
    /// CSTORE's end of the network, when CSTORE runs.
    pub cstore: Option<crate::p2p::ServiceLink>,
    /// R1FS's end of the network, when R1FS runs.
    pub r1fs: Option<crate::p2p::BlockLink>,
}

/// State shared by all controllers.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The operator's own namespace (identity and license Secrets, Lease).
    pub namespace: String,
    /// The cluster's node as last seen (only to notice that it changed).
    local_node: RwLock<Option<LocalNode>>,
    /// Bumped when the local node (name, labels, offer) changes: pipelines
    /// are placed by it.
    pub local_node_changes: tokio::sync::watch::Sender<u64>,
    pub caches: Caches,
    /// What the last apply of each child returned (child UID → desired hash
    /// and the child's generation or resourceVersion): a child whose cache
    /// entry still matches needs no new apply.
    applied: Mutex<HashMap<String, (String, String)>>,
    /// The last status written per object (UID → the resourceVersion of
    /// the object it was computed from, and a digest of the status without
    /// condition times), until the cache shows a newer object: a reconcile
    /// that runs before the watch has brought back its own write sees the
    /// old status, and would write the same status again.
    written: Mutex<HashMap<String, (String, u64)>>,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// How long a healthy object waits before it is checked for drift.
    pub resync: Duration,
    pub net: NetOptions,
    /// What this node knows of the network (shared with `/v1/network`).
    pub view: crate::p2p::SharedView,
    /// Bumped by the network when peers or the license state change.
    pub net_changes: tokio::sync::watch::Sender<u64>,
    /// The network runs under this supervisor; reconciles only say what
    /// they want of it.
    pub network: crate::p2p::supervisor::Supervisor,
    /// Network placement (set once this replica leads, when CSTORE is on).
    pub deeploy: crate::deeploy::api::Slot,
    /// R1FS (set once this replica leads, when it has a data directory and
    /// CSTORE).
    pub r1fs: crate::r1fs::api::Slot,
    /// OracleSync (set once this replica leads, when CSTORE is on).
    pub oracle: crate::oracle::service::Slot,
    /// License registry and ledger (with OracleSync).
    pub economy: crate::economy::service::Slot,
    /// EDIL's rounds (set once this replica leads, when CSTORE is on).
    pub edil: crate::edil::service::Slot,
    /// The Deeploy profile of this cluster's R1Node (the node reconciler
    /// sets it; Deeploy publishes it).
    pub deeploy_profile: tokio::sync::watch::Sender<Option<crate::deeploy::plan::Profile>>,
}

impl Context {
    /// Spawns the network supervisor: call within a tokio runtime.
    pub fn new(client: Client, recorder: Recorder, metrics: Arc<Metrics>, namespace: String) -> Self {
        let view = crate::p2p::SharedView::default();
        let net_changes = tokio::sync::watch::channel(0).0;
        let network = crate::p2p::supervisor::Supervisor::spawn(view.clone(), metrics.clone(), net_changes.clone());
        Self {
            client,
            recorder,
            metrics,
            namespace,
            local_node: RwLock::new(None),
            local_node_changes: tokio::sync::watch::channel(0).0,
            caches: Caches::default(),
            applied: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            resync: Duration::from_secs(300),
            net: NetOptions::default(),
            view,
            net_changes,
            network,
            deeploy: Default::default(),
            r1fs: Default::default(),
            oracle: Default::default(),
            economy: Default::default(),
            edil: Default::default(),
            deeploy_profile: tokio::sync::watch::channel(None).0,
        }
    }

    fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
        format!("{}/{}/{}", K::kind(&()), obj.namespace().unwrap_or_default(), obj.name_any())
    }

    /// Backoff after a failure: 1 s, 2 s, 4 s … up to 5 minutes.
    pub fn backoff<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Duration {
        let mut f = self.failures.lock().expect("failures lock");
        let n = f.entry(Self::key(obj)).or_insert(0);
        *n = (*n + 1).min(16);
        Duration::from_secs((1u64 << (*n - 1)).min(300))
    }

    pub fn succeeded<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        self.failures.lock().expect("failures lock").remove(&Self::key(obj));
    }

    /// Records the local node; wakes every pipeline when it changed.
    pub fn set_local_node(&self, node: Option<LocalNode>) {
        let changed = {
            let mut cur = self.local_node.write().expect("local node lock");
            let changed = *cur != node;
            *cur = node;
            changed
        };
        if changed {
            self.local_node_changes.send_modify(|n| *n += 1);
        }
    }

    /// True when the child in the cache is what the last apply of `hash`
    /// produced, so applying it again would change nothing.
    pub fn applied_unchanged<K: Resource>(&self, cached: &K, hash: &str) -> bool {
        let Some(uid) = cached.meta().uid.as_deref() else { return false };
        self.applied.lock().expect("applied lock").get(uid).is_some_and(|(h, v)| h == hash && *v == version(cached))
    }

    pub fn remember_applied<K: Resource>(&self, applied: &K, hash: &str) {
        if let Some(uid) = applied.meta().uid.clone() {
            self.applied.lock().expect("applied lock").insert(uid, (hash.to_string(), version(applied)));
        }
    }

    /// Forgets a deleted child (or a deleted object's last status).
    pub fn forget_applied(&self, uid: &str) {
        self.applied.lock().expect("applied lock").remove(uid);
        self.written.lock().expect("written lock").remove(uid);
    }

    /// Whether `digest` is the status this process last wrote for `obj` as
    /// the cache still has it (the write has not come back yet). Forgets
    /// the entry once the cache holds a newer object.
    fn wrote_already<K: Resource>(&self, obj: &K, digest: u64) -> bool {
        let (Some(uid), Some(rv)) = (obj.meta().uid.as_deref(), obj.meta().resource_version.as_deref()) else {
            return false;
        };
        let mut w = self.written.lock().expect("written lock");
        match w.get(uid) {
            Some((from, d)) if from == rv => *d == digest,
            Some(_) => {
                w.remove(uid);
                false
            }
            None => false,
        }
    }

    fn remember_written<K: Resource>(&self, obj: &K, digest: u64) {
        if let (Some(uid), Some(rv)) = (obj.meta().uid.clone(), obj.meta().resource_version.clone()) {
            self.written.lock().expect("written lock").insert(uid, (rv, digest));
        }
    }
}

/// What changes when someone else changes a child: its generation (spec
/// changes) where the kind has one, else its resourceVersion.
fn version<K: Resource>(o: &K) -> String {
    match o.meta().generation {
        Some(g) if g > 0 => format!("g{g}"),
        _ => format!("rv{}", o.meta().resource_version.as_deref().unwrap_or_default()),
    }
}

/// Shared error policy: count, log, back off per object.
pub fn error_policy<K>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let kind = kind_label::<K>();
    ctx.metrics.failed(kind, &err.metric_label());
    let delay = ctx.backoff(obj.as_ref());
    // `code`: the API server's HTTP status (0 when there is none), so that
    // structured logs show a refused request without parsing messages.
    let code = match err {
        Error::Kube(kube::Error::Api(s)) => s.code,
        _ => 0,
    };
    tracing::warn!(kind, name = %obj.name_any(), namespace = ?obj.namespace(), code, error = %err,
        cause = ?std::error::Error::source(err).map(|s| s.to_string()), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Static metric label of a kind.
pub fn kind_label<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "R1Node" => "R1Node",
        "R1Pipeline" => "R1Pipeline",
        "R1Model" => "R1Model",
        _ => "other",
    }
}

/// Server-side apply of a child object with the operator's field manager.
pub async fn apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    Ok(api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj)).await?)
}

/// Writes `status` by server-side apply.
async fn patch_status<K, S>(api: &Api<K>, obj: &K, status: &S) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(&obj.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
    Ok(())
}

/// A kind's status as the common reconcile tail handles it.
pub trait Status: Serialize + Clone + PartialEq + Default {
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

macro_rules! impl_status {
    ($($t:ty),*) => {$(
        impl Status for $t {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<Condition> {
                &mut self.conditions
            }
        }
    )*};
}
impl_status!(crate::crd::R1NodeStatus, crate::crd::R1PipelineStatus, crate::crd::R1ModelStatus);

/// True when `new` differs from `old` in more than condition times.
pub fn status_changed<S: Status>(old: &S, new: &S) -> bool {
    let (mut a, mut b) = (old.clone(), new.clone());
    conditions::without_times(a.conditions_mut());
    conditions::without_times(b.conditions_mut());
    a != b
}

/// A digest of `status` without condition times.
fn status_digest<S: Status>(status: &S) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut s = status.clone();
    conditions::without_times(s.conditions_mut());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&s).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// The end of every reconcile: states the full set of conditions `wanted`
/// (replacing the old set), writes status only when it changed (ignoring
/// condition times, since a write wakes the controller again), publishes an
/// Event on a transition, counts a stall, clears the failure backoff.
pub async fn finish<K, S>(
    ctx: &Context,
    api: &Api<K>,
    obj: &K,
    old: Option<&S>,
    mut status: S,
    wanted: &[Want],
) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Status,
{
    let old = old.cloned().unwrap_or_default();
    *status.conditions_mut() =
        conditions::replace(old.conditions(), wanted, obj.meta().generation, k8s_openapi::jiff::Timestamp::now());
    if conditions::is_true(status.conditions(), conditions::STALLED) {
        ctx.metrics.stalled.get_or_create(&crate::metrics::KindLabels { kind: kind_label::<K>() }).inc();
    }
    let digest = status_digest(&status);
    if status_changed(&old, &status) && !ctx.wrote_already(obj, digest) {
        patch_status(api, obj, &status).await?;
        ctx.remember_written(obj, digest);
        report_transition(ctx, obj, old.conditions(), status.conditions()).await;
    }
    ctx.succeeded(obj);
    Ok(())
}

/// Publishes an Event when the outcome of a reconcile changed: `Stalled`
/// turned true (Warning, with the reason a user can act on), or `Ready`
/// changed (Warning when a container needs the user's fix; a first status
/// that is merely in progress is not an event). Reasons equal condition reasons. Steady state emits nothing.
pub async fn report_transition<K>(ctx: &Context, obj: &K, old: &[Condition], new: &[Condition])
where
    K: Resource<DynamicType = ()>,
{
    let warning = |reason: &str| pipeline::CONTAINER_PROBLEMS.contains(&reason);
    let stalled = conditions::find(new, conditions::STALLED).filter(|c| c.status == "True");
    let was = |t: &str| conditions::find(old, t).map(|c| (c.status.clone(), c.reason.clone()));
    let now = |t: &str| conditions::find(new, t).map(|c| (c.status.clone(), c.reason.clone()));
    let event = if let Some(c) = stalled {
        (was(conditions::STALLED) != now(conditions::STALLED))
            .then(|| (EventType::Warning, c.reason.clone(), c.message.clone()))
    } else if was(conditions::READY) != now(conditions::READY) {
        conditions::find(new, conditions::READY)
            // A first status that only says "in progress" is no news (and
            // would cost every new object a request).
            .filter(|c| was(conditions::READY).is_some() || c.status == "True" || warning(&c.reason))
            .map(|c| {
                // A container only the user can fix (crash loop, bad image) is
                // a warning even while the object is still progressing.
                let type_ = match warning(&c.reason) {
                    true => EventType::Warning,
                    false => EventType::Normal,
                };
                (type_, c.reason.clone(), c.message.clone())
            })
    } else {
        None
    };
    if let Some((type_, reason, note)) = event {
        let ev = Event { type_, reason, note: Some(note), action: "Reconcile".into(), secondary: None };
        let reference = obj.object_ref(&());
        let mut result = ctx.recorder.publish(&ev, &reference).await;
        if matches!(&result, Err(kube::Error::Api(e)) if e.code == 422) && reference.namespace.is_none() {
            // API servers before 1.22 refuse an events.k8s.io/v1 Event about
            // a cluster-scoped object unless its reference names the
            // Event's namespace ("default", where the Recorder writes it).
            let reference =
                k8s_openapi::api::core::v1::ObjectReference { namespace: Some("default".into()), ..reference };
            result = ctx.recorder.publish(&ev, &reference).await;
        }
        if let Err(e) = result {
            tracing::warn!(error = %e, "publishing event failed");
        }
    }
}

pub mod run;
