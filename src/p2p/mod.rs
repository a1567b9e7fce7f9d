//! Federation over libp2p: TCP + noise + yamux, identify, ping, kademlia,
//! gossipsub and the `/ratio1/dauth/1` request-response protocol.
//!
//! Shape after rust-libp2p's file-sharing example: an [`EventLoop`] owns the
//! `Swarm` and `select!`s between swarm events, commands from a bounded
//! channel and its timers; everything else talks to it through a
//! [`NetworkHandle`] and reads the shared [`View`].
//!
//! Admission: on every new connection both sides send a signed Hello with
//! their license; a peer whose license fails verification (or that sends
//! none within the admission timeout) is refused: disconnected, blocked for
//! a while, counted. Gossip is accepted and relayed only from admitted (or
//! oracle-whitelisted) authors, in signed envelopes that are checked for
//! forgery, replay and staleness.

pub mod envelope;
pub mod protocol;

use crate::crd::NodeRole;
use crate::dauth::license::{Claims, Class, LicenseError, TrustStore};
use crate::metrics::Metrics;
use envelope::{Envelope, ReplayGuard, Sequencer};
use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    allow_block_list, connection_limits, gossipsub, identify, kad, noise, ping, request_response, tcp, yamux,
    Multiaddr, PeerId, StreamProtocol, Swarm,
};
use libp2p_identity::Keypair;
use protocol::{AuthAnswer, AuthAsk, Hello, Request, Response};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Gossip topic of heartbeats.
pub const HEARTBEAT_TOPIC: &str = "ratio1/heartbeat/1";
/// Request-response protocol of admission and dAuth.
pub const DAUTH_PROTOCOL: &str = "/ratio1/dauth/1";

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    now_us() / 1000
}

/// Unix microseconds now (envelope timestamps).
pub fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Which transport the swarm runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    Tcp,
    /// In-process memory transport, for many-node simulations.
    Memory,
}

/// Everything a node needs to join.
#[derive(Clone)]
pub struct NetConfig {
    pub keypair: Keypair,
    pub node_name: String,
    pub listen: Vec<Multiaddr>,
    pub external: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub license: String,
    pub roles: Vec<NodeRole>,
    pub offer: serde_json::Value,
    pub trust: TrustStore,
    pub version: String,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub admission_timeout: Duration,
    pub block_duration: Duration,
    /// Envelopes whose timestamp is further than this from our clock are stale.
    pub freshness_window: Duration,
    pub transport: TransportKind,
}

impl NetConfig {
    /// Defaults for everything but identity, license and trust.
    pub fn new(keypair: Keypair, license: String, trust: TrustStore) -> Self {
        Self {
            keypair,
            node_name: String::new(),
            listen: vec![],
            external: vec![],
            bootstrap: vec![],
            license,
            roles: vec![NodeRole::Worker],
            offer: serde_json::json!({}),
            trust,
            version: env!("CARGO_PKG_VERSION").to_string(),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            admission_timeout: Duration::from_secs(10),
            block_duration: Duration::from_secs(300),
            freshness_window: Duration::from_secs(60),
            transport: TransportKind::Tcp,
        }
    }
}

/// A peer as this node sees it.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PeerInfo {
    pub peer_id: String,
    pub node: String,
    pub license_id: String,
    pub class: Class,
    pub roles: Vec<NodeRole>,
    pub version: String,
    /// Unix ms (receiver's clock) of the last heartbeat, if any.
    pub last_heartbeat: Option<i64>,
    pub connected: bool,
    pub offer: serde_json::Value,
}

impl PeerInfo {
    pub fn is_oracle(&self) -> bool {
        self.roles.contains(&NodeRole::Oracle) && self.class.may_be_oracle()
    }
}

/// The network configuration an oracle hands out through dAuth.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    pub oracle: String,
    pub oracles: Vec<String>,
    pub whitelist: Vec<String>,
    pub issuers: Vec<String>,
    pub is_oracle: bool,
    pub received_at: i64,
}

/// What this node knows of the network; shared with the controllers and
/// the HTTP endpoint.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct View {
    pub peer_id: Option<String>,
    pub running: bool,
    pub listen: Vec<String>,
    pub listen_error: Option<String>,
    pub licensed: Option<Result<String, String>>,
    pub last_heartbeat_sent: Option<i64>,
    pub peers: BTreeMap<String, PeerInfo>,
    pub network: Option<NetworkConfig>,
    /// Recent dAuth requests this node answered as an oracle (newest last).
    pub dauth_log: VecDeque<DauthRecord>,
    /// Recent heartbeats received: sender, sequence, publish-to-receipt
    /// delay in microseconds (the benchmarks read it).
    pub heartbeat_delays: VecDeque<(String, u64, i64)>,
    #[serde(skip)]
    pub heartbeat_timeout_ms: i64,
}

/// One dAuth request as an oracle recorded it.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DauthRecord {
    pub peer_id: String,
    pub at: i64,
    pub result: String,
}

impl View {
    /// Admitted peers heard from within the heartbeat timeout (or connected
    /// and admitted so recently that no heartbeat was due yet).
    pub fn fresh_peers(&self, now: i64) -> Vec<&PeerInfo> {
        self.peers
            .values()
            .filter(|p| match p.last_heartbeat {
                Some(t) => now - t <= self.heartbeat_timeout_ms,
                None => p.connected,
            })
            .collect()
    }
}

pub type SharedView = Arc<RwLock<View>>;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    dauth: request_response::json::Behaviour<Request, Response>,
}

fn behaviour(key: &Keypair) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer = key.public().to_peer_id();
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(1024))
        .with_max_established_per_peer(Some(2))
        .with_max_pending_incoming(Some(128))
        .with_max_pending_outgoing(Some(128));
    let gossip_cfg = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(500))
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(256 * 1024)
        .build()?;
    let mut gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_cfg)?;
    gossipsub.with_peer_score(gossipsub::PeerScoreParams::default(), gossipsub::PeerScoreThresholds::default())?;
    gossipsub.subscribe(&gossipsub::IdentTopic::new(HEARTBEAT_TOPIC))?;
    let mut kad = kad::Behaviour::with_config(
        peer,
        kad::store::MemoryStore::new(peer),
        kad::Config::new(StreamProtocol::new("/ratio1/kad/1.0.0")),
    );
    kad.set_mode(Some(kad::Mode::Server));
    Ok(Behaviour {
        blocked: Default::default(),
        limits: connection_limits::Behaviour::new(limits),
        identify: identify::Behaviour::new(identify::Config::new("/ratio1/id/1.0.0".into(), key.public())),
        ping: ping::Behaviour::default(),
        kad,
        gossipsub,
        dauth: request_response::json::Behaviour::new(
            [(StreamProtocol::new(DAUTH_PROTOCOL), request_response::ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
        ),
    })
}

fn build_swarm(cfg: &NetConfig) -> Result<Swarm<Behaviour>, Box<dyn std::error::Error + Send + Sync>> {
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(3600));
    Ok(match cfg.transport {
        TransportKind::Tcp => libp2p::SwarmBuilder::with_existing_identity(cfg.keypair.clone())
            .with_tokio()
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
            .with_behaviour(behaviour)?
            .with_swarm_config(idle)
            .build(),
        TransportKind::Memory => {
            use libp2p::core::{transport::MemoryTransport, upgrade::Version, Transport};
            libp2p::SwarmBuilder::with_existing_identity(cfg.keypair.clone())
                .with_tokio()
                .with_other_transport(|k| {
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                        MemoryTransport::default()
                            .upgrade(Version::V1)
                            .authenticate(noise::Config::new(k)?)
                            .multiplex(yamux::Config::default()),
                    )
                })?
                .with_behaviour(behaviour)?
                .with_swarm_config(idle)
                .build()
        }
    })
}

enum Command {
    SetLicense(String),
    Publish { topic: String, data: Vec<u8>, done: oneshot::Sender<Result<(), String>> },
    Dial(Multiaddr),
}

/// Talks to a running network. Dropping every handle stops the event loop.
#[derive(Clone)]
pub struct NetworkHandle {
    cmd: mpsc::Sender<Command>,
    pub view: SharedView,
    /// Bumped whenever the peer set or the own license state changes.
    pub changes: watch::Receiver<u64>,
    pub peer_id: PeerId,
}

impl NetworkHandle {
    /// Replaces the license this node presents (rotation).
    pub async fn set_license(&self, token: String) {
        let _ = self.cmd.send(Command::SetLicense(token)).await;
    }

    /// Publishes raw bytes on a topic (tests use it to inject forgeries).
    pub async fn publish_raw(&self, topic: &str, data: Vec<u8>) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.cmd.send(Command::Publish { topic: topic.into(), data, done }).await.map_err(|_| "network stopped")?;
        rx.await.map_err(|_| "network stopped".to_string())?
    }

    pub async fn dial(&self, addr: Multiaddr) {
        let _ = self.cmd.send(Command::Dial(addr)).await;
    }

    /// Count of admitted peers heard from recently.
    pub fn fresh_peer_count(&self) -> usize {
        self.view.read().expect("view lock").fresh_peers(now_ms()).len()
    }
}

/// Starts a node's network on the current tokio runtime. `changes` is bumped
/// whenever the peer set or the own license state changes.
pub fn start(
    cfg: NetConfig,
    view: SharedView,
    metrics: Arc<Metrics>,
    changes: watch::Sender<u64>,
) -> Result<NetworkHandle, String> {
    let mut swarm = build_swarm(&cfg).map_err(|e| format!("cannot build the libp2p swarm: {e}"))?;
    let peer_id = *swarm.local_peer_id();
    let mut listen_error = None;
    for addr in &cfg.listen {
        if let Err(e) = swarm.listen_on(addr.clone()) {
            listen_error = Some(format!("cannot listen on {addr}: {e}"));
        }
    }
    for addr in &cfg.external {
        swarm.add_external_address(addr.clone());
    }
    {
        let mut v = view.write().expect("view lock");
        *v = View {
            peer_id: Some(peer_id.to_string()),
            running: true,
            listen_error,
            heartbeat_timeout_ms: cfg.heartbeat_timeout.as_millis() as i64,
            ..Default::default()
        };
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let changes_rx = changes.subscribe();
    let mut ev = EventLoop {
        own_license: Err(LicenseError::Missing),
        swarm,
        cmd: cmd_rx,
        view: view.clone(),
        changes,
        metrics,
        guard: ReplayGuard::new(cfg.freshness_window.as_micros() as i64),
        seq: Sequencer::new((now_ms() as u64) * 1000),
        pending: HashMap::new(),
        hello_sent: HashMap::new(),
        blocked_until: HashMap::new(),
        auth_nonce: None,
        last_auth: None,
        remote_licenses: HashMap::new(),
        last_bootstrap: None,
        cfg,
    };
    ev.own_license = ev.cfg.trust.verify(&ev.cfg.license, &peer_id.to_string(), now_ms() / 1000);
    ev.publish_license_state();
    for addr in ev.cfg.bootstrap.clone() {
        ev.dial_bootstrap(addr);
    }
    tokio::spawn(ev.run());
    Ok(NetworkHandle { cmd: cmd_tx, view, changes: changes_rx, peer_id })
}

struct EventLoop {
    cfg: NetConfig,
    own_license: Result<Claims, LicenseError>,
    swarm: Swarm<Behaviour>,
    cmd: mpsc::Receiver<Command>,
    view: SharedView,
    changes: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    guard: ReplayGuard,
    seq: Sequencer,
    /// Connected peers not yet admitted, since when.
    pending: HashMap<PeerId, Instant>,
    hello_sent: HashMap<PeerId, Instant>,
    blocked_until: HashMap<PeerId, Instant>,
    auth_nonce: Option<(PeerId, String)>,
    last_auth: Option<Instant>,
    /// Licenses of authors not connected to us, verified from heartbeats.
    remote_licenses: HashMap<PeerId, (String, Claims)>,
    last_bootstrap: Option<Instant>,
}

impl EventLoop {
    async fn run(mut self) {
        let mut heartbeat = tokio::time::interval(self.cfg.heartbeat_interval);
        let mut maintenance = tokio::time::interval(Duration::from_millis(500));
        let mut discovery = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                cmd = self.cmd.recv() => match cmd {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                _ = heartbeat.tick() => self.publish_heartbeat(),
                _ = maintenance.tick() => self.maintain(),
                _ = discovery.tick() => { let _ = self.swarm.behaviour_mut().kad.bootstrap(); }
            }
        }
        self.view.write().expect("view lock").running = false;
        tracing::info!("network stopped");
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n += 1);
        let fresh = self.view.read().expect("view lock").fresh_peers(now_ms()).len();
        self.metrics.p2p_peers.set(fresh as i64);
    }

    fn publish_license_state(&self) {
        let state = match &self.own_license {
            Ok(c) => {
                Ok(format!("{} license {} valid until {}", c.class, c.id, crate::dauth::license::show_time(c.exp)))
            }
            Err(e) => Err(format!("{}: {e}", e.reason())),
        };
        self.view.write().expect("view lock").licensed = Some(state);
        self.bump();
    }

    fn dial_bootstrap(&mut self, addr: Multiaddr) {
        if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
            self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = self.swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "dialing bootstrap peer failed");
        }
    }

    fn seal(&mut self, kind: &str, body: serde_json::Value) -> Envelope {
        let seq = self.seq.next_seq();
        Envelope::seal(&self.cfg.keypair, seq, now_us(), kind, body)
    }

    fn hello(&mut self) -> Envelope {
        let body = serde_json::to_value(Hello {
            license: self.cfg.license.clone(),
            version: self.cfg.version.clone(),
            node: self.cfg.node_name.clone(),
            roles: self.cfg.roles.clone(),
        })
        .expect("hello serializes");
        self.seal("hello", body)
    }

    fn is_oracle(&self) -> bool {
        self.cfg.roles.contains(&NodeRole::Oracle) && self.own_license.as_ref().is_ok_and(|c| c.class.may_be_oracle())
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::SetLicense(token) => {
                self.cfg.license = token;
                let me = self.swarm.local_peer_id().to_string();
                self.own_license = self.cfg.trust.verify(&self.cfg.license, &me, now_ms() / 1000);
                self.publish_license_state();
            }
            Command::Publish { topic, data, done } => {
                let r = self.swarm.behaviour_mut().gossipsub.publish(gossipsub::IdentTopic::new(topic), data);
                let _ = done.send(r.map(|_| ()).map_err(|e| e.to_string()));
            }
            Command::Dial(addr) => self.dial_bootstrap(addr),
        }
    }

    /// Verifies a Hello received from `peer` over an authenticated channel.
    fn check_hello(&mut self, peer: PeerId, env: &Envelope) -> Result<(Claims, Hello), String> {
        let from = env.verify().map_err(|d| format!("envelope: {}", d.label()))?;
        if from != peer {
            return Err("BadSignature".into());
        }
        if (now_us() - env.ts).abs() > self.cfg.freshness_window.as_micros() as i64 {
            return Err("Stale".into());
        }
        let hello: Hello = serde_json::from_value(env.body.clone()).map_err(|_| "LicenseMalformed".to_string())?;
        let claims = self
            .cfg
            .trust
            .verify(&hello.license, &peer.to_string(), now_ms() / 1000)
            .map_err(|e| e.reason().to_string())?;
        Ok((claims, hello))
    }

    fn admit(&mut self, peer: PeerId, claims: Claims, hello: Hello) {
        self.pending.remove(&peer);
        let info = PeerInfo {
            peer_id: peer.to_string(),
            node: hello.node,
            license_id: claims.id,
            class: claims.class,
            roles: hello.roles,
            version: hello.version,
            last_heartbeat: None,
            connected: true,
            offer: serde_json::json!({}),
        };
        let oracle = info.is_oracle();
        let new = {
            let mut v = self.view.write().expect("view lock");
            let prev = v.peers.insert(peer.to_string(), info);
            prev.is_none_or(|p| !p.connected)
        };
        if new {
            tracing::info!(%peer, "peer admitted");
            self.metrics.p2p_admitted.inc();
            // Learn the admitted peer's neighbours, at most every 5 s: in a
            // large network every admission would otherwise start a walk.
            if self.last_bootstrap.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                self.last_bootstrap = Some(Instant::now());
                let _ = self.swarm.behaviour_mut().kad.bootstrap();
            }
        }
        self.bump();
        if oracle && self.last_auth.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
            self.ask_oracle(peer);
        }
    }

    fn refuse(&mut self, peer: PeerId, reason: &str) {
        tracing::warn!(%peer, reason, "peer refused");
        self.metrics.p2p_refused.get_or_create(&crate::metrics::ReasonLabels { reason: reason.to_string() }).inc();
        self.pending.remove(&peer);
        self.hello_sent.remove(&peer);
        self.blocked_until.insert(peer, Instant::now() + self.cfg.block_duration);
        let b = self.swarm.behaviour_mut();
        b.blocked.block_peer(peer);
        b.kad.remove_peer(&peer);
        b.gossipsub.blacklist_peer(&peer);
        if self.view.write().expect("view lock").peers.remove(&peer.to_string()).is_some() {
            self.bump();
        }
    }

    fn ask_oracle(&mut self, oracle: PeerId) {
        let nonce = format!("{:016x}", rand_u64());
        self.auth_nonce = Some((oracle, nonce.clone()));
        self.last_auth = Some(Instant::now());
        let ask = AuthAsk {
            nonce,
            license: self.cfg.license.clone(),
            version: self.cfg.version.clone(),
            addrs: self.swarm.listeners().map(|a| a.to_string()).collect(),
        };
        let env = self.seal("dauth-request", serde_json::to_value(ask).expect("serializes"));
        self.swarm.behaviour_mut().dauth.send_request(&oracle, Request::Auth(env));
    }

    fn answer_auth(&mut self, peer: PeerId, env: Envelope) -> Response {
        let result = (|| {
            if !self.is_oracle() {
                return Err("NotAnOracle".to_string());
            }
            let from = env.verify().map_err(|d| d.label().to_string())?;
            if from != peer {
                return Err("BadSignature".into());
            }
            let ask: AuthAsk = serde_json::from_value(env.body).map_err(|_| "Malformed".to_string())?;
            if major(&ask.version) != major(&self.cfg.version) {
                return Err(format!("VersionMismatch: {} vs {}", ask.version, self.cfg.version));
            }
            self.cfg
                .trust
                .verify(&ask.license, &peer.to_string(), now_ms() / 1000)
                .map_err(|e| e.reason().to_string())?;
            Ok(ask.nonce)
        })();
        let record = |v: &mut View, result: String| {
            v.dauth_log.push_back(DauthRecord { peer_id: peer.to_string(), at: now_ms(), result });
            while v.dauth_log.len() > 1000 {
                v.dauth_log.pop_front();
            }
        };
        match result {
            Err(reason) => {
                self.metrics.dauth.get_or_create(&crate::metrics::ReasonLabels { reason: "refused".into() }).inc();
                record(&mut self.view.write().expect("view lock"), reason.clone());
                Response::Refused { reason }
            }
            Ok(nonce) => {
                self.metrics.dauth.get_or_create(&crate::metrics::ReasonLabels { reason: "accepted".into() }).inc();
                let (oracles, whitelist, asker_is_oracle) = {
                    let mut v = self.view.write().expect("view lock");
                    record(&mut v, "accepted".into());
                    let me = self.swarm.local_peer_id().to_string();
                    let mut oracles: Vec<String> =
                        v.peers.values().filter(|p| p.is_oracle()).map(|p| p.peer_id.clone()).collect();
                    oracles.push(me.clone());
                    let mut whitelist: Vec<String> = v.peers.keys().cloned().collect();
                    whitelist.push(me);
                    let asker = v.peers.get(&peer.to_string()).is_some_and(|p| p.is_oracle());
                    (oracles, whitelist, asker)
                };
                let answer = AuthAnswer {
                    nonce,
                    oracles,
                    whitelist,
                    issuers: self.cfg.trust.issuers().map(crate::dauth::license::encode_public).collect(),
                    is_oracle: asker_is_oracle,
                };
                Response::Auth(self.seal("dauth-answer", serde_json::to_value(answer).expect("serializes")))
            }
        }
    }

    fn take_auth_answer(&mut self, peer: PeerId, env: Envelope) {
        let Some((oracle, nonce)) = self.auth_nonce.clone() else { return };
        let Ok(from) = env.verify() else {
            self.metrics
                .p2p_dropped
                .get_or_create(&crate::metrics::ReasonLabels { reason: "bad_signature".into() })
                .inc();
            return;
        };
        let Ok(answer) = serde_json::from_value::<AuthAnswer>(env.body) else { return };
        if from != peer || peer != oracle || answer.nonce != nonce {
            self.metrics.p2p_dropped.get_or_create(&crate::metrics::ReasonLabels { reason: "replay".into() }).inc();
            return;
        }
        self.auth_nonce = None;
        tracing::info!(%oracle, oracles = answer.oracles.len(), whitelist = answer.whitelist.len(), "dAuth answer received");
        self.view.write().expect("view lock").network = Some(NetworkConfig {
            oracle: oracle.to_string(),
            oracles: answer.oracles,
            whitelist: answer.whitelist,
            issuers: answer.issuers,
            is_oracle: answer.is_oracle,
            received_at: now_ms(),
        });
        self.bump();
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.view.write().expect("view lock").listen.push(address.to_string());
            }
            SwarmEvent::ListenerError { error, .. } => {
                self.view.write().expect("view lock").listen_error = Some(error.to_string());
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                // Every new connection of a peer not currently connected is
                // admitted afresh: its license may have changed meanwhile.
                let connected =
                    self.view.read().expect("view lock").peers.get(&peer_id.to_string()).is_some_and(|p| p.connected);
                if !connected {
                    self.pending.entry(peer_id).or_insert_with(Instant::now);
                    if self.hello_sent.get(&peer_id).is_none_or(|t| t.elapsed() > self.cfg.admission_timeout) {
                        self.hello_sent.insert(peer_id, Instant::now());
                        let hello = self.hello();
                        self.swarm.behaviour_mut().dauth.send_request(&peer_id, Request::Hello(hello));
                    }
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.pending.remove(&peer_id);
                self.hello_sent.remove(&peer_id);
                if let Some(p) = self.view.write().expect("view lock").peers.get_mut(&peer_id.to_string()) {
                    p.connected = false;
                }
                self.bump();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }))
                if !self.blocked_until.contains_key(&peer_id) =>
            {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dauth(request_response::Event::Message {
                peer, message, ..
            })) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let response = match request {
                        Request::Hello(env) => match self.check_hello(peer, &env) {
                            Ok((claims, hello)) => {
                                self.admit(peer, claims, hello);
                                Response::Hello(self.hello())
                            }
                            Err(reason) => {
                                let _ = self
                                    .swarm
                                    .behaviour_mut()
                                    .dauth
                                    .send_response(channel, Response::Refused { reason: reason.clone() });
                                self.refuse(peer, &reason);
                                return;
                            }
                        },
                        Request::Auth(env) => self.answer_auth(peer, env),
                    };
                    let _ = self.swarm.behaviour_mut().dauth.send_response(channel, response);
                }
                request_response::Message::Response { response, .. } => match response {
                    Response::Hello(env) => match self.check_hello(peer, &env) {
                        Ok((claims, hello)) => self.admit(peer, claims, hello),
                        Err(reason) => self.refuse(peer, &reason),
                    },
                    Response::Auth(env) => self.take_auth_answer(peer, env),
                    Response::Refused { reason } => {
                        tracing::warn!(%peer, reason, "peer refused us");
                        self.metrics
                            .p2p_refused_by_peer
                            .get_or_create(&crate::metrics::ReasonLabels { reason: reason.clone() })
                            .inc();
                    }
                },
            },
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let verdict = self.check_gossip(&message);
                let acceptance = match verdict {
                    Ok(()) => gossipsub::MessageAcceptance::Accept,
                    Err(reason) => {
                        self.metrics
                            .p2p_dropped
                            .get_or_create(&crate::metrics::ReasonLabels { reason: reason.into() })
                            .inc();
                        tracing::debug!(%propagation_source, reason, "gossip dropped");
                        gossipsub::MessageAcceptance::Reject
                    }
                };
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    acceptance,
                );
            }
            _ => {}
        }
    }

    /// Accepts a gossip message only from an admitted or whitelisted author,
    /// in a valid, fresh, not replayed envelope.
    fn check_gossip(&mut self, message: &gossipsub::Message) -> Result<(), &'static str> {
        let author = message.source.ok_or("anonymous")?;
        let (env, from) = Envelope::open(&message.data).map_err(|d| d.label())?;
        if from != author {
            return Err("bad_signature");
        }
        let heartbeat = match env.kind.as_str() {
            "heartbeat" => {
                Some(serde_json::from_value::<protocol::Heartbeat>(env.body.clone()).map_err(|_| "malformed")?)
            }
            _ => None,
        };
        let known = {
            let v = self.view.read().expect("view lock");
            v.peers.contains_key(&author.to_string())
                || v.network.as_ref().is_some_and(|n| n.whitelist.contains(&author.to_string()))
        };
        // An author we are not connected to proves its license in its
        // heartbeat; until it has, its gossip is neither accepted nor relayed.
        let remote_claims = match (&heartbeat, known) {
            (_, true) => None,
            (Some(hb), false) => Some(match self.remote_licenses.get(&author) {
                // Verified before: only expiry can change the verdict.
                Some((token, c)) if *token == hb.license && c.exp > now_ms() / 1000 => c.clone(),
                _ => {
                    let c = self
                        .cfg
                        .trust
                        .verify(&hb.license, &author.to_string(), now_ms() / 1000)
                        .map_err(|_| "not_admitted")?;
                    if self.remote_licenses.len() >= 65_536 {
                        self.remote_licenses.clear();
                    }
                    self.remote_licenses.insert(author, (hb.license.clone(), c.clone()));
                    c
                }
            }),
            (None, false) => return Err("not_admitted"),
        };
        let now = now_us();
        self.guard.check(author, env.seq, env.ts, now).map_err(|d| d.label())?;
        if let Some(body) = heartbeat {
            self.metrics.p2p_heartbeats.inc();
            let delay_us = (now - env.ts).max(0);
            self.metrics.p2p_heartbeat_delay.observe(delay_us as f64 / 1e6);
            let mut v = self.view.write().expect("view lock");
            if let Some(c) = remote_claims {
                v.peers.entry(author.to_string()).or_insert_with(|| PeerInfo {
                    peer_id: author.to_string(),
                    node: body.node.clone(),
                    license_id: c.id,
                    class: c.class,
                    roles: body.roles.clone(),
                    version: body.version.clone(),
                    last_heartbeat: None,
                    connected: false,
                    offer: serde_json::json!({}),
                });
            }
            v.heartbeat_delays.push_back((env.from.clone(), env.seq, delay_us));
            while v.heartbeat_delays.len() > 4096 {
                v.heartbeat_delays.pop_front();
            }
            if let Some(p) = v.peers.get_mut(&author.to_string()) {
                p.last_heartbeat = Some(now_ms());
                p.roles = body.roles;
                p.offer = body.offer;
                p.version = body.version;
                if !body.node.is_empty() {
                    p.node = body.node;
                }
            }
            // No bump here: a heartbeat changes nothing but a time; the
            // maintenance tick notices when the fresh-peer count changes.
        }
        Ok(())
    }

    fn publish_heartbeat(&mut self) {
        let Ok(claims) = &self.own_license else { return };
        let body = protocol::Heartbeat {
            license: self.cfg.license.clone(),
            license_id: claims.id.clone(),
            class: claims.class,
            roles: self.cfg.roles.clone(),
            node: self.cfg.node_name.clone(),
            offer: self.cfg.offer.clone(),
            version: self.cfg.version.clone(),
            addrs: self.swarm.listeners().map(|a| a.to_string()).collect(),
        };
        let env = self.seal("heartbeat", serde_json::to_value(body).expect("serializes"));
        match self.swarm.behaviour_mut().gossipsub.publish(gossipsub::IdentTopic::new(HEARTBEAT_TOPIC), env.to_bytes())
        {
            Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                self.view.write().expect("view lock").last_heartbeat_sent = Some(now_ms());
                self.metrics.p2p_heartbeats_sent.inc();
            }
            Err(e) => tracing::debug!(error = %e, "heartbeat not published"),
        }
    }

    /// Admission timeouts, expired blocks, stale peers.
    fn maintain(&mut self) {
        let late: Vec<PeerId> =
            self.pending.iter().filter(|(_, t)| t.elapsed() > self.cfg.admission_timeout).map(|(p, _)| *p).collect();
        for p in late {
            self.refuse(p, "AdmissionTimeout");
        }
        let expired: Vec<PeerId> =
            self.blocked_until.iter().filter(|(_, t)| Instant::now() >= **t).map(|(p, _)| *p).collect();
        for p in expired {
            self.blocked_until.remove(&p);
            self.swarm.behaviour_mut().blocked.unblock_peer(p);
            self.swarm.behaviour_mut().gossipsub.remove_blacklisted_peer(&p);
        }
        // Freshness is time-based: refresh the gauge (and wake watchers when
        // a peer just went stale).
        let fresh = self.view.read().expect("view lock").fresh_peers(now_ms()).len() as i64;
        if fresh != self.metrics.p2p_peers.get() {
            self.bump();
        }
        // Keep trying bootstrap peers we are not connected to.
        if self.swarm.connected_peers().next().is_none() && !self.cfg.bootstrap.is_empty() {
            for addr in self.cfg.bootstrap.clone() {
                if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
                    if !self.swarm.is_connected(&peer) && !self.blocked_until.contains_key(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
        }
    }
}

fn major(v: &str) -> &str {
    // 0.x versions are incompatible across minors, as in semver.
    let mut parts = v.split('.');
    match (parts.next(), parts.next()) {
        (Some("0"), Some(minor)) => minor,
        (Some(m), _) => m,
        _ => v,
    }
}

fn rand_u64() -> u64 {
    rand::random()
}
