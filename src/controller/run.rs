//! Wiring of the operator process: client, CRD check, probes and metrics,
//! leader election, the three controllers, graceful shutdown.

use super::{error_policy, model, node, pipeline, Caches, Context};
use crate::crd::{R1Model, R1Node, R1Pipeline};
use crate::leader::{Elector, LeaseConfig};
use crate::metrics::Metrics;
use crate::telemetry::{self, Health, WatchHealth};
use anyhow::Context as _;
use futures::channel::oneshot;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Client, CustomResourceExt, ResourceExt};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long a graceful shutdown waits for reconciles in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Settings of `ratio1 operator`.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    pub namespace: String,
    pub metrics_addr: SocketAddr,
    pub leader_election: bool,
    pub lease_name: String,
    pub lease_duration: Duration,
    pub lease_renew_deadline: Duration,
    pub lease_retry: Duration,
    pub identity: String,
    pub resync: Duration,
    pub concurrency: u16,
    pub net: super::NetOptions,
    /// Address of the local API (`/v1/network`): loopback by default, since
    /// it lists peers and licenses.
    pub api_addr: SocketAddr,
    /// Revocation list, re-read while running.
    pub revoked_licenses: Option<std::path::PathBuf>,
    /// This replica's Pod (in a cluster): labelled while it leads.
    pub pod: Option<String>,
    /// This cluster's CSTORE replica (none: CSTORE off).
    pub cstore: Option<crate::cstore::CstoreConfig>,
    /// Network placement (runs when CSTORE is on).
    pub deeploy: crate::deeploy::DeeployConfig,
    /// OracleSync (runs when CSTORE is on).
    pub oracle: crate::oracle::service::OracleConfig,
    /// License registry and ledger (run with OracleSync).
    pub economy: crate::economy::service::EconomyConfig,
    /// EDIL's rounds (run when CSTORE is on).
    pub edil: crate::edil::service::EdilConfig,
    /// R1FS (runs when set and CSTORE is on).
    pub r1fs: Option<crate::r1fs::service::R1fsConfig>,
}

/// Label on the leading replica's own Pod. The chart's p2p Service selects
/// it, so that no dial reaches the standby (which runs no network).
pub const LEADER_LABEL: &str = "ratio1.ai/leader";

/// Sets (or removes) [`LEADER_LABEL`] on this replica's Pod. A Pod keeps its
/// labels across container restarts, so a replica clears it at start.
async fn label_own_pod(client: &Client, namespace: &str, pod: &str, leading: bool) {
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    let value = if leading { serde_json::json!("true") } else { serde_json::Value::Null };
    let patch = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: value}}});
    if let Err(e) = api.patch(pod, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await {
        tracing::warn!(%pod, error = %e, "cannot label this replica's Pod: the p2p Service may route to a standby");
    }
}

/// Reads a revocation list file (see `dauth::license::parse_revocations`).
pub fn read_revocations(path: &std::path::Path) -> anyhow::Result<std::collections::BTreeSet<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    crate::dauth::license::parse_revocations(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Re-reads the revocation list every 2 s (a mounted ConfigMap changes in
/// place); the trust store is shared, so the network sees it at its next
/// check. A list that does not parse is reported and the last good one kept.
async fn reload_revocations(path: std::path::PathBuf, trust: crate::dauth::license::TrustStore) {
    let mut last_error = None;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        match read_revocations(&path) {
            Ok(set) => {
                last_error = None;
                let n = set.len();
                if trust.set_revoked(set) {
                    tracing::info!(path = %path.display(), revoked = n, "revocation list reloaded");
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if last_error.as_ref() != Some(&msg) {
                    tracing::warn!(error = %msg, "revocation list not reloaded; keeping the last good one");
                    last_error = Some(msg);
                }
            }
        }
    }
}

/// Stops the network when the R1Node it runs for is deleted (deleted
/// objects are not reconciled). Tombstones by UID keep a reconcile that
/// raced the deletion from bringing the network back.
async fn leave_when_deleted(api: Api<R1Node>, ctx: Arc<Context>) {
    let network = ctx.network.clone();
    // UIDs seen in the current (re)list: after it, the wish's owner must be
    // among them.
    let mut listed = std::collections::BTreeSet::new();
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    while let Some(ev) = events.next().await {
        let gone: Option<String> = match ev {
            Ok(watcher::Event::Delete(n)) => {
                // The cluster's node may change (pipelines re-place).
                let mut left = ctx.caches.nodes.state();
                left.retain(|o| o.name_any() != n.name_any());
                ctx.set_local_node(node::local_node(&left));
                n.uid()
            }
            Ok(watcher::Event::Init) => {
                listed.clear();
                None
            }
            Ok(watcher::Event::InitApply(n)) => {
                listed.extend(n.uid());
                None
            }
            Ok(watcher::Event::InitDone) => network.owner().filter(|o| !listed.contains(o)),
            Ok(watcher::Event::Apply(_)) => None,
            Err(e) => {
                tracing::debug!(error = %e, "R1Node watch failed; retrying");
                None
            }
        };
        if let Some(uid) = gone {
            if network.deleted(&uid) {
                tracing::info!(%uid, "R1Node deleted: leaving the network");
            }
        }
    }
}

/// A watch whose objects (trimmed) fill `writer`'s store; its failures are
/// reported to `/healthz`.
fn cached<K>(
    name: &'static str,
    api: Api<K>,
    cfg: watcher::Config,
    writer: reflector::store::Writer<K>,
    health: &Arc<WatchHealth>,
    trim: fn(&mut K),
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let health = health.clone();
    watcher(api, cfg).default_backoff().inspect(move |ev| health.observe(name, ev.is_ok())).modify(trim).reflect(writer)
}

/// A metadata-only watch of every `K` filling `writer` (owners kept,
/// labels and annotations not), marking `names` ready after its first
/// list; it yields the objects deleted.
fn names_stream<K>(
    name: &'static str,
    client: Client,
    writer: reflector::store::Writer<kube::core::PartialObjectMeta<K>>,
    names: &super::Names<K>,
    health: &Arc<WatchHealth>,
) -> impl futures::Stream<Item = Result<kube::core::PartialObjectMeta<K>, watcher::Error>> + Send
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let health = health.clone();
    // An Api of PartialObjectMeta makes metadata-only requests.
    watcher(Api::<kube::core::PartialObjectMeta<K>>::all(client), watcher::Config::default())
        .default_backoff()
        .inspect(move |ev| health.observe(name, ev.is_ok()))
        .modify(|m| {
            m.metadata.managed_fields = None;
            m.metadata.annotations = None;
            m.metadata.labels = None;
        })
        .reflect(writer)
        .inspect(names.ready.on_init_done())
        .filter_map(|ev| {
            futures::future::ready(match ev {
                Ok(watcher::Event::Delete(o)) => Some(Ok(o)),
                _ => None,
            })
        })
}

/// The pipeline named like a deleted object (if there is one, the
/// controller reconciles it).
fn same_name<K: kube::Resource>(o: kube::core::PartialObjectMeta<K>) -> Option<ObjectRef<R1Pipeline>> {
    Some(ObjectRef::new(o.metadata.name.as_deref()?).within(o.metadata.namespace.as_deref()?))
}

/// Deleted objects only.
fn deletions<K>(api: Api<K>) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, watcher::Config::default()).default_backoff().filter_map(|ev| {
        futures::future::ready(match ev {
            Ok(watcher::Event::Delete(o)) => Some(Ok(o)),
            _ => None,
        })
    })
}

/// Forgets the last apply of a deleted child.
fn forget_deleted<K: kube::Resource>(ctx: Arc<Context>) -> impl Fn(&Result<watcher::Event<K>, watcher::Error>) {
    move |ev| {
        if let Ok(watcher::Event::Delete(o)) = ev {
            if let Some(uid) = o.meta().uid.as_deref() {
                ctx.forget_applied(uid);
            }
        }
    }
}

/// Managed fields are never read: not kept in memory.
fn trim<K: kube::Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// Of a child Deployment or Job, the reconciler reads metadata (owners,
/// generation) and status; whether it still matches the pipeline is known
/// from the hash of the last apply and the generation, never from its pod
/// template, which is most of its size: not kept in memory.
fn trim_deployment(d: &mut Deployment) {
    trim(d);
    if let Some(s) = d.spec.as_mut() {
        s.template = Default::default();
    }
}

fn trim_job(j: &mut Job) {
    trim(j);
    if let Some(s) = j.spec.as_mut() {
        s.template = Default::default();
    }
}

/// Of a pod, the reconciler reads only its labels and container states.
fn trim_pod(p: &mut k8s_openapi::api::core::v1::Pod) {
    p.metadata.managed_fields = None;
    // Only the CIDs R1FS delivered into it are read.
    if let Some(a) = p.metadata.annotations.as_mut() {
        a.retain(|k, _| k == pipeline::DELIVERED_ANNOTATION);
    }
    p.spec = None;
}

/// Fails with a sentence that says what to do when a CRD is missing.
pub async fn check_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [R1Node::crd(), R1Pipeline::crd(), R1Model::crd()] {
        let name = crd.name_any();
        let found = api
            .get_opt(&name)
            .await
            .with_context(|| format!("cannot reach the Kubernetes API to look up CRD {name}"))?;
        if found.is_none() {
            anyhow::bail!(
                "CRD {name} is not installed: run `kubectl apply --server-side -f crds/` (or `ratio1 crdgen | kubectl apply --server-side -f -`) and start the operator again"
            );
        }
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

/// Runs the operator until a signal (Ok) or loss of leadership (Err).
pub async fn run(cfg: OperatorConfig) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration found (in-cluster, KUBECONFIG or ~/.kube/config)")?;
    let counted = metrics.clone();
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        counted.kube_request(&req);
        req
    });
    let client = kube::client::ClientBuilder::try_from(config)
        .context("invalid Kubernetes client configuration")?
        .with_layer(&count)
        .build();
    let reporter = Reporter { controller: "ratio1-operator".into(), instance: Some(cfg.identity.clone()) };
    // CSTORE starts with the process (its index loads and reads work on a
    // standby too); it signs and replicates through the network, which
    // only the leader runs.
    let network_slot: Arc<std::sync::OnceLock<crate::p2p::supervisor::Supervisor>> = Default::default();
    let cstore_slot: crate::cstore::api::Slot = Default::default();
    let mut net = cfg.net.clone();
    // The running network, for the services that sign with its key.
    let source: crate::cstore::NetworkSource = {
        let slot = network_slot.clone();
        Arc::new(move || slot.get().and_then(|s| s.handle()))
    };
    if let Some(cs) = cfg.cstore.clone() {
        let endpoints = cs.endpoints.join(",");
        let (store, link) = crate::cstore::Cstore::start(cs, cfg.net.trust.clone(), metrics.clone(), source.clone())
            .await
            .map_err(anyhow::Error::msg)?;
        tracing::info!(%endpoints, "CSTORE replica started");
        let _ = cstore_slot.set(store);
        net.cstore = Some(link);
    }
    // R1FS answers peers' wantlists once it runs (with CSTORE only: its
    // providers and replicas are CSTORE records).
    let r1fs_requests = cfg.r1fs.as_ref().map(|r| {
        if cstore_slot.get().is_none() {
            tracing::warn!(root = %r.root.display(), "R1FS without CSTORE: content is held and served here and fetched from connected peers, but not replicated across the network");
        }
        let (link, rx) = crate::p2p::BlockLink::channel(64);
        net.r1fs = Some(link);
        rx
    });
    let mut context =
        Context::new(client.clone(), Recorder::new(client.clone(), reporter), metrics.clone(), cfg.namespace.clone());
    context.resync = cfg.resync;
    context.net = net;
    let _ = network_slot.set(context.network.clone());
    // Reconcilers read these stores; the watches below fill them.
    let (nodes_cache, nodes_writer) = reflector::store();
    let (secrets_cache, secrets_writer) = reflector::store();
    let (models_cache, models_writer) = reflector::store();
    let (deployments_cache, deployments_writer) = reflector::store();
    let (services_cache, services_writer) = reflector::store();
    let (jobs_cache, jobs_writer) = reflector::store();
    let (pods_cache, pods_writer) = reflector::store();
    let (dep_names, dep_names_writer) = reflector::store();
    let (svc_names, svc_names_writer) = reflector::store();
    let (job_names, job_names_writer) = reflector::store();
    let nodes_ready = super::Filled::default();
    let (pipeline_store, pipelines_writer) = reflector::store();
    let pipelines_ready = super::Filled::default();
    context.caches = Caches {
        nodes: nodes_cache.clone(),
        nodes_ready: nodes_ready.clone(),
        secrets: secrets_cache,
        models: models_cache.clone(),
        deployments: deployments_cache,
        services: services_cache,
        jobs: jobs_cache,
        pods: pods_cache,
        deployment_names: super::Names { store: dep_names, ..Default::default() },
        service_names: super::Names { store: svc_names, ..Default::default() },
        job_names: super::Names { store: job_names, ..Default::default() },
    };
    let ctx = Arc::new(context);
    let health = Arc::new(Health {
        network: Some(ctx.network.health.clone()),
        cstore: cstore_slot.get().cloned(),
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind(cfg.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {} for metrics and probes", cfg.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    tokio::spawn(telemetry::serve(listener, metrics.clone(), health.clone()));
    let api_listener = tokio::net::TcpListener::bind(cfg.api_addr)
        .await
        .with_context(|| format!("cannot listen on {} for the local API", cfg.api_addr))?;
    tracing::info!(addr = %api_listener.local_addr()?, "serving the local API (/v1/network, /v1/cstore, /v1/deeploy)");
    // Each service's routes answer 503 until the service runs here.
    let services = axum::Router::new()
        .merge(crate::cstore::api::routes(cstore_slot.clone()))
        .merge(crate::deeploy::api::routes(ctx.deeploy.clone()))
        .merge(crate::r1fs::api::routes(ctx.r1fs.clone()))
        .merge(crate::oracle::service::routes(ctx.oracle.clone()))
        .merge(crate::economy::service::routes(ctx.economy.clone()))
        .merge(crate::edil::service::routes(ctx.edil.clone()));
    tokio::spawn(telemetry::serve_api(api_listener, ctx.view.clone(), services));
    if let Some(addr) = cfg.r1fs.as_ref().and_then(|r| r.gateway_addr) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for the R1FS gateway"))?;
        let app = crate::r1fs::api::gateway(ctx.r1fs.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
    }

    check_crds(&client).await?;
    if let Some(pod) = &cfg.pod {
        label_own_pod(&client, &cfg.namespace, pod, false).await;
    }
    health.ready.store(true, Ordering::Relaxed);

    let shutdown = shutdown_signal().boxed().shared();
    let lease = LeaseConfig {
        namespace: cfg.namespace.clone(),
        name: cfg.lease_name.clone(),
        identity: cfg.identity.clone(),
        lease_duration: cfg.lease_duration,
        renew_deadline: cfg.lease_renew_deadline,
        retry_period: cfg.lease_retry,
    };
    let mut lost = if cfg.leader_election {
        tracing::info!(identity = %cfg.identity, lease = %cfg.lease_name, "waiting for leadership");
        tokio::select! {
            rx = Elector::new(client.clone(), lease.clone()).acquire() => Some(rx),
            _ = shutdown.clone() => {
                tracing::info!("shut down while waiting for leadership");
                return Ok(());
            }
        }
    } else {
        None
    };
    metrics.leader.set(1);
    if let Some(pod) = &cfg.pod {
        label_own_pod(&client, &cfg.namespace, pod, true).await;
    }

    // The R1Node named by the network's wish was deleted: leave the network
    // (deleted objects are not reconciled, so a watch tells the supervisor).
    tokio::spawn(leave_when_deleted(Api::<R1Node>::all(client.clone()), ctx.clone()));
    if let Some(path) = cfg.revoked_licenses.clone() {
        tokio::spawn(reload_revocations(path, cfg.net.trust.clone()));
    }

    // Each controller stops taking new work on the same shutdown signal.
    let mut stops = vec![];
    let mut stop_rx = || {
        let (tx, rx) = oneshot::channel::<()>();
        stops.push(tx);
        rx.map(|_| ())
    };
    let ctl_cfg = kube::runtime::controller::Config::default().concurrency(cfg.concurrency);
    let wc = watcher::Config::default;
    let owned = || watcher::Config::default().labels(&format!("{}={}", super::MANAGED_BY.0, super::MANAGED_BY.1));
    let watches = health.watches.clone();

    // Peer and license changes in the network refresh R1Node status at once.
    let net_changes = futures::stream::unfold(ctx.net_changes.subscribe(), |mut rx| async move {
        rx.changed().await.ok().map(|_| ((), rx))
    });
    let node_events = cached("r1nodes", Api::<R1Node>::all(client.clone()), wc(), nodes_writer, &watches, trim);
    let node_store = nodes_cache.clone();
    let secrets_api = Api::<Secret>::namespaced(client.clone(), &cfg.namespace);
    let secrets = cached("secrets", secrets_api, wc(), secrets_writer, &watches, trim);
    let node_events = node_events.inspect(nodes_ready.on_init_done());
    let nodes = Controller::for_stream(node_events.applied_objects(), nodes_cache.clone())
        .with_config(ctl_cfg.clone())
        .reconcile_all_on(net_changes)
        .watches_stream(secrets.touched_objects(), move |s: Secret| {
            // A Secret change concerns every R1Node that names it.
            let name = s.name_any();
            node_store
                .state()
                .into_iter()
                .filter(|n| n.spec.identity.secret_name == name || n.spec.license.secret_name == name)
                .map(|n| ObjectRef::from_obj(n.as_ref()))
                .collect::<Vec<_>>()
        })
        // A deleted R1Node may leave a duplicate as the cluster's node.
        .watches_stream(deletions(Api::<R1Node>::all(client.clone())), move |gone: R1Node| {
            node::others(&nodes_cache.state(), &gone)
        })
        .graceful_shutdown_on(stop_rx())
        .run(node::reconcile, error_policy::<R1Node>, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    // Children and pods come from label-filtered watches whose stores the
    // reconciler reads; a child's deletion also forgets its last apply.
    let deployments = cached(
        "deployments",
        Api::<Deployment>::all(client.clone()),
        owned(),
        deployments_writer,
        &watches,
        trim_deployment,
    );
    let services = cached("services", Api::<Service>::all(client.clone()), owned(), services_writer, &watches, trim);
    let jobs = cached("jobs", Api::<Job>::all(client.clone()), owned(), jobs_writer, &watches, trim_job);
    let pods = cached("pods", Api::<Pod>::all(client.clone()), owned(), pods_writer, &watches, trim_pod);
    // Names of every child-kind object; a deleted one may unblock a
    // pipeline stalled on a name conflict.
    let c = &ctx.caches;
    let dep_gone = names_stream("deployment names", client.clone(), dep_names_writer, &c.deployment_names, &watches);
    let svc_gone = names_stream("service names", client.clone(), svc_names_writer, &c.service_names, &watches);
    let job_gone = names_stream("job names", client.clone(), job_names_writer, &c.job_names, &watches);
    let local_node_changes = futures::stream::unfold(ctx.local_node_changes.subscribe(), |mut rx| async move {
        rx.changed().await.ok().map(|_| ((), rx))
    });
    // Models: one watch fills the cache the reconcilers read; the pipelines
    // that mount a model hear of its change from that same watch, after the
    // cache has it (a watch of their own could run ahead of the cache, and
    // a reconcile would read the old model).
    let models_ready = super::Filled::default();
    // R1FS (leader only, like Deeploy): reads the models from their cache
    // to know what to replicate, and wakes them when holders change.
    let r1fs_changes = match (cfg.r1fs.clone(), r1fs_requests) {
        (Some(rc), Some(rx)) => {
            let slot = network_slot.clone();
            let parts = crate::r1fs::service::Parts {
                cstore: cstore_slot.get().cloned(),
                view: ctx.view.clone(),
                network: Arc::new(move || slot.get().and_then(|s| s.handle())),
                metrics: metrics.clone(),
                models: models_cache.clone(),
                models_ready: models_ready.clone(),
                profile: ctx.deeploy_profile.subscribe(),
            };
            let root = rc.root.display().to_string();
            let r = crate::r1fs::service::R1fs::start(rc, parts, rx)
                .with_context(|| format!("cannot open the R1FS store at {root}"))?;
            tracing::info!(%root, "R1FS started");
            let changes = r.changes();
            let _ = ctx.r1fs.set(r);
            // At most one pass over the models per second.
            futures::stream::unfold((changes, None), |(mut rx, last)| async move {
                if let Some(last) = last {
                    tokio::time::sleep_until(last + Duration::from_secs(1)).await;
                }
                rx.changed().await.ok().map(|_| ((), (rx, Some(tokio::time::Instant::now()))))
            })
            .boxed()
        }
        _ => futures::stream::pending().boxed(),
    };
    let (models_seen_tx, models_seen_rx) = futures::channel::mpsc::unbounded::<R1Model>();
    let model_events = cached("r1models", Api::<R1Model>::all(client.clone()), wc(), models_writer, &watches, trim)
        .inspect(models_ready.on_init_done())
        .inspect({
            let ctx = ctx.clone();
            move |ev| {
                if let (Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone), Some(r)) =
                    (ev, ctx.r1fs.get())
                {
                    r.poke();
                }
            }
        })
        .inspect(move |ev| {
            if let Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m) | watcher::Event::Delete(m)) = ev {
                let _ = models_seen_tx.unbounded_send(m.clone());
            }
        });
    let models_seen = models_seen_rx.map(Ok::<_, watcher::Error>);
    let pipeline_events =
        cached("r1pipelines", Api::<R1Pipeline>::all(client.clone()), wc(), pipelines_writer, &watches, trim)
            .inspect(pipelines_ready.on_init_done())
            .inspect(forget_deleted(ctx.clone()))
            .inspect({
                let ctx = ctx.clone();
                move |ev| {
                    if let (Ok(watcher::Event::Delete(_)), Some(d)) = (ev, ctx.deeploy.get()) {
                        d.pipeline_gone();
                    }
                }
            });
    // Deeploy runs on the leader only, over CSTORE: it wakes the origin's
    // pipelines when a target reports, and all of them when a cluster
    // comes, goes or changes what it offers.
    let (deeploy_wakes, deeploy_replans) = match cstore_slot.get() {
        Some(store) => {
            let parts = crate::deeploy::Parts {
                cstore: store.clone(),
                view: ctx.view.clone(),
                client: client.clone(),
                metrics: metrics.clone(),
                pipelines: pipeline_store.clone(),
                pipelines_ready: pipelines_ready.clone(),
                profile: ctx.deeploy_profile.clone(),
                namespace: cfg.namespace.clone(),
            };
            let oracle = crate::oracle::service::Parts {
                cstore: store.clone(),
                view: ctx.view.clone(),
                network: source.clone(),
                trust: cfg.net.trust.clone(),
                metrics: metrics.clone(),
            };
            let o = crate::oracle::service::Oracle::start(cfg.oracle.clone(), oracle);
            let _ = ctx.oracle.set(o.clone());
            tracing::info!(phase = ?cfg.oracle.phase, "OracleSync started");
            let (d, wakes) = crate::deeploy::Deeploy::start(cfg.deeploy.clone(), parts);
            let economy = crate::economy::service::Parts {
                cstore: store.clone(),
                oracle: o,
                view: ctx.view.clone(),
                trust: cfg.net.trust.clone(),
                metrics: metrics.clone(),
                deeploy: d.clone(),
            };
            let _ = ctx.economy.set(crate::economy::service::Economy::start(cfg.economy.clone(), economy));
            let edil = crate::edil::service::Parts {
                cstore: store.clone(),
                view: ctx.view.clone(),
                profile: ctx.deeploy_profile.subscribe(),
                models: models_cache.clone(),
                models_ready: models_ready.clone(),
                r1fs: ctx.r1fs.clone(),
                metrics: metrics.clone(),
                client: ctx.client.clone(),
                namespace: cfg.namespace.clone(),
            };
            let _ = ctx.edil.set(crate::edil::service::Edil::start(cfg.edil.clone(), edil));
            let _ = ctx.deeploy.set(d);
            tracing::info!(failover_after = ?cfg.deeploy.failover_after, "Deeploy started");
            let pipelines =
                futures::stream::unfold(wakes.pipelines, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })
                    .boxed();
            // At most one plan of everything per second: a peer flapping its
            // profile cannot keep every pipeline reconciling.
            let replans = futures::stream::unfold((wakes.replan, None), |(mut rx, last)| async move {
                if let Some(last) = last {
                    tokio::time::sleep_until(last + Duration::from_secs(1)).await;
                }
                rx.changed().await.ok().map(|_| ((), (rx, Some(tokio::time::Instant::now()))))
            })
            .boxed();
            (pipelines, replans)
        }
        None => (futures::stream::pending().boxed(), futures::stream::pending().boxed()),
    };
    // Only spec changes (generation) of a pipeline call for a reconcile: its
    // own status patches, which come back through this watch, do not.
    let pipeline_changes =
        pipeline_events.applied_objects().predicate_filter(kube::runtime::predicates::generation, Default::default());
    let pipelines = Controller::for_stream(pipeline_changes, pipeline_store.clone())
        .with_config(ctl_cfg.clone())
        .owns_stream(deployments.inspect(forget_deleted(ctx.clone())).touched_objects())
        .owns_stream(services.inspect(forget_deleted(ctx.clone())).touched_objects())
        .owns_stream(jobs.inspect(forget_deleted(ctx.clone())).touched_objects())
        .watches_stream(dep_gone, same_name::<Deployment>)
        .watches_stream(svc_gone, same_name::<Service>)
        .watches_stream(job_gone, same_name::<Job>)
        .watches_stream(pods.touched_objects(), |pod: Pod| {
            let ns = pod.namespace()?;
            Some(ObjectRef::<R1Pipeline>::new(pod.labels().get(pipeline::PIPELINE_LABEL)?).within(&ns))
        })
        .watches_stream(models_seen, move |m: R1Model| {
            pipeline::mounting(&pipeline_store.state(), m.namespace().as_deref(), &m.name_any())
        })
        // Placement depends on this cluster's R1Node (labels, offer).
        .reconcile_all_on(local_node_changes)
        .reconcile_all_on(deeploy_replans)
        .reconcile_on(deeploy_wakes)
        .graceful_shutdown_on(stop_rx())
        .run(pipeline::reconcile, error_policy::<R1Pipeline>, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    let models = Controller::for_stream(model_events.applied_objects(), models_cache)
        .with_config(ctl_cfg)
        .reconcile_all_on(r1fs_changes)
        .graceful_shutdown_on(stop_rx())
        .run(model::reconcile, error_policy::<R1Model>, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    tracing::info!(namespace = %cfg.namespace, "controllers started");
    let controllers = async { tokio::join!(nodes, pipelines, models) };
    let leadership_lost = async {
        match lost.as_ref() {
            Some(l) => {
                let _ = l.lost.clone().wait_for(|leading| !leading).await;
            }
            None => futures::future::pending::<()>().await,
        }
    };
    tokio::pin!(controllers);
    tokio::select! {
        _ = shutdown.clone() => {
            tracing::info!("shutting down: finishing reconciles in flight");
            for tx in stops { let _ = tx.send(()); }
            // Bounded: a controller whose first list has not finished yet
            // never drains (kube-runtime waits for its store). On timeout the
            // controllers are dropped, which cancels their reconciles, before
            // the lease is released.
            if tokio::time::timeout(SHUTDOWN_GRACE, controllers).await.is_err() {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "reconciles did not finish in time; stopping them");
            }
            if let Some(leadership) = lost.take() {
                leadership.stop_renewing().await;
                Elector::release(client.clone(), &lease).await;
            }
            Ok(())
        }
        _ = leadership_lost => {
            metrics.leader.set(0);
            anyhow::bail!("lost the leader lease {}: exiting so that only one replica reconciles", cfg.lease_name)
        }
        _ = &mut controllers => anyhow::bail!("controllers stopped unexpectedly"),
    }
}
