//! The network belongs to the process, not to a reconcile: one supervisor
//! task, started by `controller/run.rs`, owns the running event loop. The
//! R1Node reconcile only publishes the configuration it wants over a
//! `watch` channel (`None`: not part of the network). The supervisor starts
//! the network, rotates the license in place, restarts the swarm when
//! identity, addresses or roles change, stops it when the wish goes away,
//! and restarts it (with backoff) when its task dies.

use super::{start, NetConfig, NetworkHandle, SharedView};
use crate::metrics::Metrics;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The network's health as the probes see it.
#[derive(Debug, Default)]
pub struct NetHealth {
    /// A configuration is wanted.
    pub wanted: AtomicBool,
    /// The event loop is running.
    pub up: AtomicBool,
    /// Consecutive unexpected stops (reset once it runs for a minute).
    pub crashes: AtomicU32,
}

impl NetHealth {
    /// Ready: not wanted, or running.
    pub fn ready(&self) -> bool {
        !self.wanted.load(Ordering::Relaxed) || self.up.load(Ordering::Relaxed)
    }

    /// Live: the event loop does not keep dying.
    pub fn live(&self) -> bool {
        self.crashes.load(Ordering::Relaxed) < 5
    }
}

struct Running {
    handle: NetworkHandle,
    task: JoinHandle<()>,
    fingerprint: String,
    license: String,
    started: tokio::time::Instant,
}

/// Handle of the supervisor: publish the wanted configuration with
/// [`Supervisor::want`].
#[derive(Clone)]
pub struct Supervisor {
    desired: watch::Sender<Option<NetConfig>>,
    current: watch::Receiver<Option<NetworkHandle>>,
    /// UID of the object the wish is for, and UIDs of deleted objects: a
    /// reconcile that raced a deletion cannot bring the network back.
    owners: Arc<std::sync::Mutex<Owners>>,
    pub health: Arc<NetHealth>,
}

#[derive(Default)]
struct Owners {
    current: Option<String>,
    deleted: std::collections::VecDeque<String>,
}

impl Supervisor {
    /// Spawns the supervisor on the current runtime. It stops (and stops the
    /// network) when every [`Supervisor`] clone is dropped.
    pub fn spawn(view: SharedView, metrics: Arc<Metrics>, changes: watch::Sender<u64>) -> Self {
        let (desired, rx) = watch::channel(None);
        let (current_tx, current) = watch::channel(None);
        let health = Arc::new(NetHealth::default());
        tokio::spawn(supervise(rx, current_tx, view, metrics, changes, health.clone()));
        Self { desired, current, owners: Default::default(), health }
    }

    /// Wishes `cfg` on behalf of the object with `uid`, unless that object
    /// was deleted meanwhile.
    pub fn want_for(&self, uid: &str, cfg: NetConfig) -> bool {
        let mut o = self.owners.lock().expect("owners lock");
        if o.deleted.iter().any(|d| d == uid) {
            return false;
        }
        o.current = Some(uid.to_string());
        self.want(Some(cfg))
    }

    /// The object with `uid` is gone: its wish, if current, ends.
    pub fn deleted(&self, uid: &str) -> bool {
        let mut o = self.owners.lock().expect("owners lock");
        o.deleted.push_back(uid.to_string());
        if o.deleted.len() > 64 {
            o.deleted.pop_front();
        }
        if o.current.as_deref() == Some(uid) {
            o.current = None;
            return self.want(None);
        }
        false
    }

    /// UID of the object the current wish is for.
    pub fn owner(&self) -> Option<String> {
        self.owners.lock().expect("owners lock").current.clone()
    }

    /// The running network, if any (services talk to it through this).
    pub fn handle(&self) -> Option<NetworkHandle> {
        self.current.borrow().clone()
    }

    /// Publishes the configuration the network should run with; returns
    /// whether it differs from the previous wish.
    pub fn want(&self, cfg: Option<NetConfig>) -> bool {
        self.desired.send_if_modified(|cur| {
            let same = match (cur.as_ref(), cfg.as_ref()) {
                (None, None) => true,
                (Some(a), Some(b)) => a.fingerprint() == b.fingerprint() && a.license == b.license,
                _ => false,
            };
            if !same {
                *cur = cfg;
            }
            !same
        })
    }
}

async fn stop(running: Option<Running>, view: &SharedView) {
    if let Some(r) = running {
        // Aborting drops the swarm (other holders of a handle cannot keep it
        // alive); awaiting it frees the listener port before a restart.
        r.task.abort();
        let _ = r.task.await;
        let mut v = view.write().expect("view lock");
        v.running = false;
        v.epoch = None;
        v.peers.clear();
        v.network = None;
    }
}

async fn supervise(
    mut rx: watch::Receiver<Option<NetConfig>>,
    current: watch::Sender<Option<NetworkHandle>>,
    view: SharedView,
    metrics: Arc<Metrics>,
    changes: watch::Sender<u64>,
    health: Arc<NetHealth>,
) {
    let mut running: Option<Running> = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        let wanted = rx.borrow_and_update().clone();
        health.wanted.store(wanted.is_some(), Ordering::Relaxed);
        match (&mut running, wanted) {
            (_, None) => {
                if running.is_some() {
                    tracing::info!("leaving the network");
                    stop(running.take(), &view).await;
                    changes.send_modify(|n| *n += 1);
                }
            }
            (Some(r), Some(cfg)) if r.fingerprint == cfg.fingerprint() => {
                if r.license != cfg.license {
                    r.handle.set_license(cfg.license.clone()).await;
                    r.license = cfg.license;
                }
            }
            (_, Some(cfg)) => {
                stop(running.take(), &view).await;
                let (fingerprint, license) = (cfg.fingerprint(), cfg.license.clone());
                match start(cfg, view.clone(), metrics.clone(), changes.clone()) {
                    Ok((handle, task)) => {
                        tracing::info!(peer_id = %handle.peer_id, "network started");
                        running =
                            Some(Running { handle, task, fingerprint, license, started: tokio::time::Instant::now() });
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "network failed to start");
                        let mut v = view.write().expect("view lock");
                        v.running = false;
                        v.epoch = None;
                        v.failure = Some(e);
                    }
                }
            }
        }
        health.up.store(running.is_some(), Ordering::Relaxed);
        current.send_replace(running.as_ref().map(|r| r.handle.clone()));
        changes.send_modify(|n| *n += 1);

        // Wait for a new wish, or for the running loop to die.
        let died = async {
            match running.as_mut() {
                Some(r) => (&mut r.task).await.err(),
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    stop(running.take(), &view).await;
                    return;
                }
            }
            err = died => {
                let r = running.take().expect("running");
                let ran = r.started.elapsed();
                current.send_replace(None);
                drop(r.handle);
                let why = err.map(|e| e.to_string()).unwrap_or_else(|| "the event loop ended".into());
                tracing::error!(error = %why, "network task died; restarting");
                metrics.p2p_restarts.inc();
                health.up.store(false, Ordering::Relaxed);
                if ran > Duration::from_secs(60) {
                    health.crashes.store(0, Ordering::Relaxed);
                    backoff = Duration::from_secs(1);
                }
                health.crashes.fetch_add(1, Ordering::Relaxed);
                {
                    let mut v = view.write().expect("view lock");
                    v.running = false;
        v.epoch = None;
                    v.failure = Some(why);
                }
                changes.send_modify(|n| *n += 1);
                // A new wish cuts the backoff short.
                let _ = tokio::time::timeout(backoff, rx.changed()).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                // Force a fresh start with the current wish.
                rx.mark_changed();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dauth::license::{self, Claims, Class, TrustStore};
    use crate::p2p::TransportKind;
    use libp2p_identity::{ed25519, Keypair};

    fn config(issuer: &ed25519::Keypair, key: Keypair) -> NetConfig {
        let now = crate::p2p::now_ms() / 1000;
        let token = license::issue(
            issuer,
            &Claims {
                id: "nd-sup".into(),
                class: Class::Nd,
                peer: key.public().to_peer_id().to_string(),
                iat: now - 10,
                exp: now + 3600,
                iss: license::key_id(&issuer.public()),
            },
        );
        let mut cfg = NetConfig::new(key, token, TrustStore::new([issuer.public()], []));
        cfg.node_name = "sup".into();
        cfg.transport = TransportKind::Memory;
        cfg.listen = vec![format!("/memory/{}", rand::random::<u32>() as u64 + 1).parse().unwrap()];
        cfg
    }

    async fn wait(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn starts_stops_and_restarts_a_dead_network() {
        let view = SharedView::default();
        let metrics = Arc::new(Metrics::default());
        let sup = Supervisor::spawn(view.clone(), metrics.clone(), watch::channel(0).0);
        let issuer = ed25519::Keypair::generate();
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id().to_string();
        assert!(sup.health.ready(), "nothing wanted: ready");
        assert!(sup.want(Some(config(&issuer, key.clone()))));
        wait("network up", || view.read().unwrap().running && sup.health.ready()).await;
        assert_eq!(view.read().unwrap().peer_id.as_deref(), Some(peer.as_str()));

        // The event loop dies: it is counted and comes back by itself.
        sup.handle().expect("running").panic_for_test().await;
        wait("restart counted", || metrics.p2p_restarts.get() == 1).await;
        wait("network up again", || view.read().unwrap().running && sup.health.ready()).await;

        // Nothing wanted any more: the network stops.
        let held = sup.handle().expect("running");
        assert!(sup.want(None));
        wait("network stopped", || !view.read().unwrap().running && sup.handle().is_none()).await;
        assert!(held.publish_raw("t", vec![]).await.is_err(), "a handle held elsewhere does not keep it alive");
        assert!(sup.health.ready() && sup.health.live());
    }
}
