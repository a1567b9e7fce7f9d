//! Federation over libp2p: TCP + noise + yamux, ping, gossipsub and the
//! `/ratio1/dauth/1` request-response protocol.
//!
//! Shape after rust-libp2p's file-sharing example: an event loop
//! ([`event_loop`]) owns the `Swarm` and `select!`s between swarm events,
//! commands from a bounded channel and its timers; everything else talks to
//! it through a [`NetworkHandle`] and reads the shared [`View`]. The process
//! runs it under a [`supervisor`], which starts, restarts and stops it from
//! the desired configuration.
//!
//! The network is the trust boundary, so only admitted peers get anything:
//! on every new connection both sides send a signed Hello with their
//! license ([`admission`]); until it verifies, the peer holds one of a few
//! gated slots ([`gate`]), its gossipsub score sits below every threshold
//! (it is sent nothing and what it sends is ignored), and its requests other
//! than Hello are refused. A peer silent past the deadline, or whose
//! license fails, expires or is revoked, is disconnected, blocked and
//! counted. Gossip is accepted only in signed envelopes from licensed
//! authors, fresh, not replayed, of a known kind, within a rate
//! ([`gossip`]). Peers are discovered from licensed heartbeats, which carry
//! their authors' addresses: no routing table answers strangers.

pub mod admission;
pub mod envelope;
mod event_loop;
pub mod gate;
pub mod gossip;
pub mod protocol;
pub mod supervisor;

use crate::crd::NodeRole;
use crate::dauth::license::{Class, TrustStore};
use crate::metrics::Metrics;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    allow_block_list, connection_limits, gossipsub, noise, ping, request_response, tcp, yamux, Multiaddr, PeerId,
    StreamProtocol, Swarm,
};
use libp2p_identity::Keypair;
use protocol::{Request, Response};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Gossip topic of heartbeats.
pub const HEARTBEAT_TOPIC: &str = "ratio1/heartbeat/1";
/// Request-response protocol of admission and dAuth.
pub const DAUTH_PROTOCOL: &str = "/ratio1/dauth/1";
/// Gossip topic of CSTORE record batches.
pub const CSTORE_TOPIC: &str = "ratio1/cstore/1";
/// Request-response protocol of CSTORE anti-entropy.
pub const CSTORE_PROTOCOL: &str = "/ratio1/cstore/1";
/// Request-response protocol of R1FS block exchange (Bitswap 1.2 messages).
pub const R1FS_PROTOCOL: &str = crate::r1fs::bitswap::PROTOCOL;

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

/// The network's tunables, defined once: flags, the R1Node controller,
/// tests and benchmarks all start from [`Tuning::default`].
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    pub heartbeat_interval: Duration,
    /// A peer not heard from for this long is stale, and forgotten once
    /// disconnected.
    pub heartbeat_timeout: Duration,
    /// Time a new peer has to prove its license.
    pub admission_timeout: Duration,
    /// How long a refused peer stays blocked.
    pub block_duration: Duration,
    /// Envelopes whose timestamp is further than this from our clock are stale.
    pub freshness_window: Duration,
    /// Gossip messages per second an author may publish, sustained, and in a burst.
    pub gossip_rate_per_sec: f64,
    pub gossip_burst: f64,
    /// Inbound connections of unadmitted peers, in all and per remote IP.
    pub max_unadmitted: usize,
    pub max_unadmitted_per_ip: usize,
    /// Established connections, inbound and outbound apart (an inbound
    /// flood cannot take the slots of our own dials).
    pub max_inbound: u32,
    pub max_outbound: u32,
    /// Peers this node dials by itself once it learns them from heartbeats.
    pub dial_target: usize,
    /// How long a dAuth answer from an oracle stays valid.
    pub dauth_ttl: Duration,
    /// Publish own messages to every connected peer (lowest latency in
    /// small networks) rather than to the gossip mesh only.
    pub flood_publish: bool,
    /// The network's epochs (genesis and length), for availability.
    pub epochs: crate::oracle::epoch::Epochs,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            admission_timeout: Duration::from_secs(3),
            block_duration: Duration::from_secs(300),
            freshness_window: Duration::from_secs(60),
            gossip_rate_per_sec: 2.0,
            gossip_burst: 20.0,
            max_unadmitted: 32,
            max_unadmitted_per_ip: 8,
            max_inbound: 256,
            max_outbound: 64,
            dial_target: 24,
            dauth_ttl: Duration::from_secs(600),
            flood_publish: true,
            epochs: crate::oracle::epoch::Epochs {
                genesis_ms: crate::oracle::epoch::DEFAULT_GENESIS_MS,
                length_ms: crate::oracle::epoch::Epochs::DAY_MS,
            },
        }
    }
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
    pub tuning: Tuning,
    pub transport: TransportKind,
    /// Where CSTORE's gossip and anti-entropy requests go (none: this node
    /// neither subscribes to the topic nor answers the protocol).
    pub cstore: Option<ServiceLink>,
    /// Where R1FS's block requests go (none: this node serves no blocks,
    /// but may still ask for them).
    pub r1fs: Option<BlockLink>,
}

/// What the network hands R1FS: wantlists from admitted peers, to answer
/// with [`NetworkHandle::answer_blocks`]. Bounded like [`ServiceLink`]: a
/// request R1FS has no room for is refused (answered with nothing).
#[derive(Clone, Debug)]
pub struct BlockLink {
    pub inbound: mpsc::Sender<BlockRequest>,
}

/// A wantlist from an admitted peer.
#[derive(Debug)]
pub struct BlockRequest {
    pub peer: PeerId,
    pub id: u64,
    pub message: crate::r1fs::bitswap::Message,
}

impl BlockLink {
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<BlockRequest>) {
        let (inbound, rx) = mpsc::channel(capacity);
        (Self { inbound }, rx)
    }
}

/// What the network hands a service (CSTORE): gossip that passed the
/// envelope, license and rate checks, and requests from admitted peers.
/// The service decides on each and answers through the [`NetworkHandle`]
/// (`validate`, `respond`). Bounded: when the service is behind, gossip is
/// ignored (anti-entropy heals it) and requests are refused.
#[derive(Clone, Debug)]
pub struct ServiceLink {
    pub inbound: mpsc::Sender<ServiceEvent>,
}

/// A message for a service.
#[derive(Debug)]
pub enum ServiceEvent {
    /// A gossip message whose envelope verified, from a licensed author
    /// within its rate; relayed only once the service accepts it.
    Gossip { author: PeerId, envelope: Box<envelope::Envelope>, message: gossipsub::MessageId, source: PeerId },
    /// A request from an admitted peer; answer with [`NetworkHandle::respond`].
    Request { peer: PeerId, id: u64, body: Box<serde_json::value::RawValue> },
}

impl ServiceLink {
    /// A link and the receiver the service reads.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<ServiceEvent>) {
        let (inbound, rx) = mpsc::channel(capacity);
        (Self { inbound }, rx)
    }
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
            tuning: Tuning::default(),
            transport: TransportKind::Tcp,
            cstore: None,
            r1fs: None,
        }
    }

    /// What requires a restart of the swarm when it changes: everything but
    /// the license (rotated in place) and the trust store (shared).
    pub fn fingerprint(&self) -> String {
        format!(
            "{}|{}|{:?}|{:?}|{:?}|{:?}|{}|{}|{:?}|{:?}",
            self.keypair.public().to_peer_id(),
            self.node_name,
            self.listen,
            self.external,
            self.bootstrap,
            self.roles,
            self.offer,
            self.version,
            self.tuning,
            self.transport
        )
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

/// The network configuration an oracle hands out through dAuth. Advice,
/// not authority: no author is ever accepted without its own valid license,
/// whatever an oracle lists; and the answer expires.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    pub oracle: String,
    pub oracles: Vec<String>,
    pub whitelist: Vec<String>,
    pub issuers: Vec<String>,
    pub is_oracle: bool,
    pub received_at: i64,
    /// Unix ms after which the answer is dropped (and asked again).
    pub expires_at: i64,
}

/// What this node knows of the network; shared with the controllers and
/// the HTTP endpoint.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct View {
    pub peer_id: Option<String>,
    pub running: bool,
    /// Why the network is not running although wanted, if so.
    pub failure: Option<String>,
    pub listen: Vec<String>,
    pub listen_error: Option<String>,
    pub licensed: Option<Result<String, String>>,
    pub last_heartbeat_sent: Option<i64>,
    /// Connected peers, peers in the heartbeat topic's gossip mesh, and
    /// connected peers whose gossipsub score is negative (unadmitted, or
    /// misbehaving).
    pub connections: usize,
    pub mesh_peers: usize,
    pub negative_scores: usize,
    pub peers: BTreeMap<String, PeerInfo>,
    pub network: Option<NetworkConfig>,
    /// Recent dAuth requests this node answered as an oracle (newest last,
    /// at most [`DAUTH_LOG_MAX`], fixed-size entries).
    pub dauth_log: VecDeque<DauthRecord>,
    /// Recent heartbeats received: sender, sequence, publish-to-receipt
    /// delay in microseconds (the benchmarks read it).
    pub heartbeat_delays: VecDeque<(String, u64, i64)>,
    #[serde(skip)]
    pub heartbeat_timeout_ms: i64,
    /// The epoch now, and each author's availability in the last closed
    /// one as this node saw its heartbeats.
    pub epoch: Option<EpochView>,
    /// Each licensed author's heartbeat runs in its latest epoch (folded
    /// as they come: three numbers per author), kept apart from `peers`
    /// (a peer that went away and came back keeps the first part of its
    /// epoch); at most [`MAX_EPOCH_AUTHORS`].
    #[serde(skip)]
    pub runs: BTreeMap<String, AuthorRuns>,
    /// When this node's network started (Unix ms): an epoch that began
    /// before is not scored (its first part was not seen).
    #[serde(skip)]
    pub observing_since_ms: u64,
    /// The oracle whose dAuth answer gave the epoch clock, if one did
    /// (else the node's own flags).
    #[serde(skip)]
    pub epochs_from: Option<String>,
    /// The epoch clock in use (the flags', or the oracle's).
    #[serde(skip)]
    pub clock: Option<crate::oracle::epoch::Epochs>,
    /// This node's license while it runs as an oracle (role `oracle` and an
    /// MND/GND license): OracleSync registers and signs with it.
    #[serde(skip)]
    pub oracle_license: Option<String>,
    /// This node's license class while its license is valid.
    #[serde(skip)]
    pub own_class: Option<crate::dauth::license::Class>,
}

/// One author's heartbeat runs: in its latest epoch, and in the one
/// before (a heartbeat of the new epoch may come before the old one is
/// scored).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuthorRuns {
    pub latest: (u64, crate::oracle::epoch::Runs),
    pub before: Option<(u64, crate::oracle::epoch::Runs)>,
}

impl AuthorRuns {
    fn of(&self, epoch: u64) -> Option<&crate::oracle::epoch::Runs> {
        [Some(&self.latest), self.before.as_ref()].into_iter().flatten().find(|(e, _)| *e == epoch).map(|(_, r)| r)
    }
}

/// Authors whose heartbeat runs a node keeps (as many as the gossip gate
/// rate-limits).
pub const MAX_EPOCH_AUTHORS: usize = 65_536;

/// The epoch clock and what this node observed of the last closed epoch.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EpochView {
    pub current: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub length_ms: u64,
    pub genesis_ms: u64,
    /// The last closed epoch (`current − 1`), if any.
    pub last: Option<u64>,
    /// Where the clock comes from: `flags`, or `dauth:<oracle PeerId>`.
    pub source: String,
    /// Whether this node's network ran through all of `last`; if not,
    /// `observed` is empty (peers would be blamed for its own absence).
    pub complete: bool,
    /// Availability 0..255 in `last` of each author heard from in it,
    /// from the heartbeats this node received (its own view, not the
    /// oracles' agreed value).
    pub observed: BTreeMap<String, u8>,
}

impl View {
    /// Folds a heartbeat of `author` received at `now_ms` into its runs.
    pub fn record_beat(&mut self, author: &str, now_ms: u64, epochs: &crate::oracle::epoch::Epochs, hb_ms: u64) {
        let Some(e) = epochs.at(now_ms) else { return };
        if !self.runs.contains_key(author) && self.runs.len() >= MAX_EPOCH_AUTHORS {
            return;
        }
        let entry = self
            .runs
            .entry(author.to_string())
            .or_insert_with(|| AuthorRuns { latest: (e, Default::default()), before: None });
        if entry.latest.0 < e {
            entry.before = Some(std::mem::replace(&mut entry.latest, (e, Default::default())));
        }
        if entry.latest.0 == e {
            entry.latest.1.add(now_ms, hb_ms);
        }
    }

    /// Recomputes [`View::epoch`] at `now_ms`: once per closed epoch,
    /// each author's availability in it; authors not heard from since the
    /// last epoch are forgotten.
    pub fn close_epochs(&mut self, now_ms: u64, epochs: &crate::oracle::epoch::Epochs) {
        let Some(current) = epochs.at(now_ms) else {
            self.epoch = None;
            return;
        };
        // Nothing changes within an epoch: this runs every tick.
        if self.epoch.as_ref().is_some_and(|e| e.current == current) {
            return;
        }
        let (start_ms, end_ms) = epochs.bounds(current);
        let last = current.checked_sub(1);
        self.runs.retain(|_, r| r.latest.0 + 1 >= current);
        let complete = last.is_some_and(|l| self.observing_since_ms <= epochs.bounds(l).0);
        let observed = match last {
            Some(l) if complete => self
                .runs
                .iter()
                .filter_map(|(p, r)| {
                    Some((p.clone(), crate::oracle::epoch::score(r.of(l)?.available_ms(), epochs.length_ms)))
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        let source = match &self.epochs_from {
            Some(o) => format!("dauth:{o}"),
            None => "flags".into(),
        };
        self.epoch = Some(EpochView {
            current,
            start_ms,
            end_ms,
            length_ms: epochs.length_ms,
            genesis_ms: epochs.genesis_ms,
            last,
            source,
            complete,
            observed,
        });
    }
}

/// One dAuth request as an oracle recorded it.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DauthRecord {
    pub peer_id: String,
    pub at: i64,
    /// `accepted`, or a reason from [`protocol::REFUSALS`].
    pub result: &'static str,
}

/// Entries kept in the dAuth log.
pub const DAUTH_LOG_MAX: usize = 256;

impl View {
    /// Licensed peers heard from within the heartbeat timeout: admitted
    /// peers and authors of relayed heartbeats whose license verified,
    /// connected or not (or connected and admitted so recently that no
    /// heartbeat was due yet).
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
    gate: gate::Gate,
    ping: ping::Behaviour,
    gossipsub: gossipsub::Behaviour,
    dauth: request_response::json::Behaviour<Request, Response>,
    cstore: request_response::json::Behaviour<Box<RawValue>, Box<RawValue>>,
    bitswap: request_response::Behaviour<crate::r1fs::bitswap::Codec>,
}

/// Application score of a peer until it is admitted: far below gossipsub's
/// graylist threshold, so it is sent nothing (no mesh, no fanout, no flood
/// publish, no IHAVE, no IWANT answers) and all it sends is ignored.
pub const UNADMITTED_SCORE: f64 = -10_000.0;

fn score_params() -> gossipsub::PeerScoreParams {
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        // Heartbeats are sparse: no penalty for meshes that deliver little.
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_cap: 50.0,
        // Each invalid message (forged, unlicensed, replayed, unknown kind,
        // over the rate) costs its sender: 20 × count², so a few put it below
        // the graylist threshold; it decays by half every decay interval.
        invalid_message_deliveries_weight: -20.0,
        invalid_message_deliveries_decay: 0.5,
        ..Default::default()
    };
    gossipsub::PeerScoreParams {
        topics: [HEARTBEAT_TOPIC, CSTORE_TOPIC]
            .into_iter()
            .map(|t| (gossipsub::IdentTopic::new(t).hash(), topic.clone()))
            .collect(),
        app_specific_weight: 1.0,
        // Admission is by license, not by address: clusters behind one NAT
        // (or all on loopback) are normal.
        ip_colocation_factor_weight: 0.0,
        retain_score: Duration::from_secs(300),
        ..Default::default()
    }
}

/// How long a pruned mesh link waits before it may be grafted again.
const PRUNE_BACKOFF: Duration = Duration::from_secs(5);

/// Gossip mesh degree: each node forwards a message to this many mesh peers
/// (gossipsub's default is 6, kept between 5 and 12). Every heartbeat
/// reaches every node, so a node handles about `N × D / interval` copies a
/// second: at 200 nodes and 5 s, 160 instead of 240. The redundancy a
/// larger mesh buys against relays that drop messages matters less here,
/// where only admitted, licensed peers relay and IHAVE gossip repairs gaps.
/// Measured (`cargo bench --bench federation`, 100 simulated nodes on two
/// cores, 5 s heartbeats): p99 of 87 to 391 ms against 701 to 950 ms with
/// 6; 200 nodes formed in 2 of 3 runs, where they never did. See
/// docs/protocols.md.
const MESH_N: usize = 4;
const MESH_N_LOW: usize = 3;
const MESH_N_HIGH: usize = 8;

/// Gossip message ids, in gossipsub's default form (the author's PeerId in
/// base58, then the sequence number in decimal) so that nodes of earlier
/// versions name messages alike in IHAVE/IWANT, with each author's base58
/// string kept: the default renders it for every copy received,
/// duplicates included (a few percent of a 100-node network's CPU).
#[derive(Clone, Default)]
struct MessageIds {
    names: Arc<std::sync::Mutex<std::collections::HashMap<PeerId, String>>>,
}

impl MessageIds {
    /// Authors kept (the licensed network's size, with room).
    const MAX: usize = 4_096;

    fn id(&self, m: &gossipsub::Message) -> gossipsub::MessageId {
        let source = m.source.unwrap_or_else(|| PeerId::from_bytes(&[0, 1, 0]).expect("valid PeerId"));
        let mut names = self.names.lock().expect("message id lock");
        if names.len() >= Self::MAX && !names.contains_key(&source) {
            names.clear();
        }
        let mut id = names.entry(source).or_insert_with(|| source.to_base58()).clone();
        drop(names);
        id.push_str(&m.sequence_number.unwrap_or_default().to_string());
        gossipsub::MessageId::from(id)
    }
}

fn behaviour(
    key: &Keypair,
    t: &Tuning,
    cstore: bool,
    r1fs: bool,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer = key.public().to_peer_id();
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established_incoming(Some(t.max_inbound))
        .with_max_established_outgoing(Some(t.max_outbound))
        .with_max_established_per_peer(Some(2))
        .with_max_pending_incoming(Some(64))
        .with_max_pending_outgoing(Some(64));
    let gossip_cfg = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(500))
        .mesh_n(MESH_N)
        .mesh_n_low(MESH_N_LOW)
        .mesh_n_high(MESH_N_HIGH)
        .gossip_lazy(MESH_N)
        // Authors sign their envelopes (verified once, by us): gossipsub's
        // own signature would be a second check of the same fact.
        .validation_mode(gossipsub::ValidationMode::Permissive)
        .validate_messages()
        .max_transmit_size(if cstore { protocol::MAX_SERVICE_GOSSIP_BYTES } else { protocol::MAX_GOSSIP_BYTES })
        .flood_publish(t.flood_publish)
        .message_id_fn({
            let ids = MessageIds::default();
            move |m| ids.id(m)
        })
        // A GRAFT from a peer not yet admitted here is answered with a PRUNE
        // (its score is negative until admission), and both sides then wait
        // out the backoff before grafting again. The Hello's answerer admits
        // first and may graft before its answer reaches the asker: with
        // gossipsub's 60 s, a busy network formed meshes a minute late, or
        // none (200 simulated nodes: mesh sizes 0, every message by lazy
        // gossip). Peers are licensed: a short backoff costs little.
        .prune_backoff(PRUNE_BACKOFF)
        // (a GRAFT this soon after a PRUNE costs extra: gossipsub's 10 s of
        // 60, scaled)
        .graft_flood_threshold(PRUNE_BACKOFF / 6)
        .build()?;
    let mut gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Author(peer), gossip_cfg)?;
    gossipsub.with_peer_score(score_params(), gossipsub::PeerScoreThresholds::default())?;
    gossipsub.subscribe(&gossipsub::IdentTopic::new(HEARTBEAT_TOPIC))?;
    if cstore {
        gossipsub.subscribe(&gossipsub::IdentTopic::new(CSTORE_TOPIC))?;
    }
    let codec = request_response::json::codec::Codec::default()
        .set_request_size_maximum(protocol::MAX_REQUEST_BYTES)
        .set_response_size_maximum(protocol::MAX_RESPONSE_BYTES);
    let sync_codec = request_response::json::codec::Codec::default()
        .set_request_size_maximum(protocol::MAX_SYNC_REQUEST_BYTES)
        .set_response_size_maximum(protocol::MAX_SYNC_RESPONSE_BYTES);
    // Without a CSTORE this node neither asks nor answers the protocol.
    let support = |serve: bool| {
        if serve {
            request_response::ProtocolSupport::Full
        } else {
            request_response::ProtocolSupport::Outbound
        }
    };
    Ok(Behaviour {
        blocked: Default::default(),
        limits: connection_limits::Behaviour::new(limits),
        gate: gate::Gate::new(gate::GateConfig {
            max_unadmitted: t.max_unadmitted,
            max_unadmitted_per_ip: t.max_unadmitted_per_ip,
        }),
        ping: ping::Behaviour::default(),
        gossipsub,
        dauth: request_response::Behaviour::with_codec(
            codec,
            [(StreamProtocol::new(DAUTH_PROTOCOL), request_response::ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
        ),
        cstore: request_response::Behaviour::with_codec(
            sync_codec,
            [(StreamProtocol::new(CSTORE_PROTOCOL), support(cstore))],
            request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
        ),
        // An answer carries up to 4 MiB of blocks: 30 s is 140 KiB/s.
        bitswap: request_response::Behaviour::with_codec(
            crate::r1fs::bitswap::Codec,
            [(StreamProtocol::new(R1FS_PROTOCOL), support(r1fs))],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(30))
                .with_max_concurrent_streams(64),
        ),
    })
}

fn build_swarm(cfg: &NetConfig) -> Result<Swarm<Behaviour>, Box<dyn std::error::Error + Send + Sync>> {
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(3600));
    let t = cfg.tuning.clone();
    let (cstore, r1fs) = (cfg.cstore.is_some(), cfg.r1fs.is_some());
    Ok(match cfg.transport {
        TransportKind::Tcp => libp2p::SwarmBuilder::with_existing_identity(cfg.keypair.clone())
            .with_tokio()
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
            .with_behaviour(|k| behaviour(k, &t, cstore, r1fs))?
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
                .with_behaviour(|k| behaviour(k, &t, cstore, r1fs))?
                .with_swarm_config(idle)
                .build()
        }
    })
}

enum Command {
    SetLicense(String),
    Publish {
        topic: String,
        data: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
    Dial(Multiaddr),
    /// Seals `body` in an envelope of `kind` and publishes it on the CSTORE topic.
    PublishService {
        kind: &'static str,
        body: Box<RawValue>,
        done: oneshot::Sender<Result<usize, String>>,
    },
    /// The service's verdict on a gossip message it was handed.
    Validate {
        message: gossipsub::MessageId,
        source: PeerId,
        acceptance: gossipsub::MessageAcceptance,
    },
    /// A CSTORE request to an admitted peer.
    ServiceRequest {
        peer: PeerId,
        body: Box<RawValue>,
        done: oneshot::Sender<Result<Box<RawValue>, String>>,
    },
    /// The service's answer to request `id`.
    Respond {
        id: u64,
        body: Box<RawValue>,
    },
    /// An R1FS wantlist to an admitted peer.
    WantBlocks {
        peer: PeerId,
        message: crate::r1fs::bitswap::Message,
        done: oneshot::Sender<Result<crate::r1fs::bitswap::Message, String>>,
    },
    /// R1FS's answer to block request `id`.
    AnswerBlocks {
        id: u64,
        message: crate::r1fs::bitswap::Message,
    },
    #[cfg(test)]
    Panic,
}

/// Talks to a running network. Dropping every handle stops the event loop.
#[derive(Clone)]
pub struct NetworkHandle {
    cmd: mpsc::Sender<Command>,
    pub view: SharedView,
    pub peer_id: PeerId,
    /// The node key (services sign their records with it).
    pub keypair: Keypair,
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

    /// Publishes a signed envelope of `kind` on the CSTORE topic; returns
    /// the bytes sent.
    pub async fn publish_service(&self, kind: &'static str, body: Box<RawValue>) -> Result<usize, String> {
        let (done, rx) = oneshot::channel();
        self.cmd.send(Command::PublishService { kind, body, done }).await.map_err(|_| "network stopped")?;
        rx.await.map_err(|_| "network stopped".to_string())?
    }

    /// Tells gossipsub whether to relay (and score) a message a service was handed.
    pub async fn validate(
        &self,
        message: gossipsub::MessageId,
        source: PeerId,
        acceptance: gossipsub::MessageAcceptance,
    ) {
        let _ = self.cmd.send(Command::Validate { message, source, acceptance }).await;
    }

    /// Sends a CSTORE request to an admitted peer and waits for the answer.
    pub async fn request(&self, peer: PeerId, body: Box<RawValue>) -> Result<Box<RawValue>, String> {
        let (done, rx) = oneshot::channel();
        self.cmd.send(Command::ServiceRequest { peer, body, done }).await.map_err(|_| "network stopped")?;
        rx.await.map_err(|_| "network stopped".to_string())?
    }

    /// Answers request `id` of a [`ServiceEvent::Request`].
    pub async fn respond(&self, id: u64, body: Box<RawValue>) {
        let _ = self.cmd.send(Command::Respond { id, body }).await;
    }

    /// Sends an R1FS wantlist to an admitted peer and waits for its answer.
    pub async fn want_blocks(
        &self,
        peer: PeerId,
        message: crate::r1fs::bitswap::Message,
    ) -> Result<crate::r1fs::bitswap::Message, String> {
        let (done, rx) = oneshot::channel();
        self.cmd.send(Command::WantBlocks { peer, message, done }).await.map_err(|_| "network stopped")?;
        rx.await.map_err(|_| "network stopped".to_string())?
    }

    /// Answers block request `id` of a [`BlockRequest`].
    pub async fn answer_blocks(&self, id: u64, message: crate::r1fs::bitswap::Message) {
        let _ = self.cmd.send(Command::AnswerBlocks { id, message }).await;
    }

    /// Admitted peers connected now.
    pub fn connected_peers(&self) -> Vec<PeerId> {
        let v = self.view.read().expect("view lock");
        v.peers.values().filter(|p| p.connected).filter_map(|p| p.peer_id.parse().ok()).collect()
    }

    /// Count of admitted peers heard from recently.
    pub fn fresh_peer_count(&self) -> usize {
        self.view.read().expect("view lock").fresh_peers(now_ms()).len()
    }

    #[cfg(test)]
    pub(crate) async fn panic_for_test(&self) {
        let _ = self.cmd.send(Command::Panic).await;
    }
}

/// Starts a node's network on the current tokio runtime; the task ends when
/// every handle is dropped. `changes` is bumped whenever the peer set or
/// the own license state changes. The process runs this under a
/// [`supervisor`]; tests and benchmarks may call it directly.
pub fn start(
    cfg: NetConfig,
    view: SharedView,
    metrics: Arc<Metrics>,
    changes: watch::Sender<u64>,
) -> Result<(NetworkHandle, tokio::task::JoinHandle<()>), String> {
    let swarm = build_swarm(&cfg).map_err(|e| format!("cannot build the libp2p swarm: {e}"))?;
    let peer_id = *swarm.local_peer_id();
    let keypair = cfg.keypair.clone();
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let ev = event_loop::EventLoop::new(cfg, swarm, cmd_rx, view.clone(), changes, metrics);
    let task = tokio::spawn(ev.run());
    Ok((NetworkHandle { cmd: cmd_tx, view, peer_id, keypair }, task))
}

#[cfg(test)]
mod epoch_tests {
    use super::*;
    use crate::oracle::epoch::{score, Epochs};

    #[test]
    fn each_closed_epoch_is_scored_once_from_the_runs_seen_and_only_if_seen_whole() {
        let e = Epochs { genesis_ms: 0, length_ms: 10_000 };
        let hb = 1_000;
        let mut v = View::default();
        // A beats every second through epochs 0 and 1; B only in the first
        // half of epoch 1.
        for t in (0..20_000).step_by(1_000) {
            v.record_beat("A", t + 3, &e, hb);
            if (10_000..15_000).contains(&t) {
                v.record_beat("B", t + 7, &e, hb);
            }
            v.close_epochs(t + 3, &e);
        }
        // A's first beat of epoch 2 arrives before the tick that closes 1.
        v.record_beat("A", 20_003, &e, hb);
        v.close_epochs(20_100, &e);
        let ep = v.epoch.clone().unwrap();
        assert_eq!((ep.current, ep.last, ep.complete), (2, Some(1), true));
        assert_eq!(ep.observed["A"], score(9_000, 10_000), "ten beats, nine seconds: 230");
        assert_eq!(ep.observed["A"], 230);
        assert_eq!(ep.observed["B"], score(4_000, 10_000));
        // Computed once: a later tick in the same epoch keeps it.
        v.record_beat("B", 21_000, &e, hb);
        v.close_epochs(25_000, &e);
        assert_eq!(v.epoch.as_ref().unwrap().observed, ep.observed);
        // Epoch 3 begins: in epoch 2 each was heard once, which is no run;
        // authors silent since are forgotten an epoch later.
        v.close_epochs(30_001, &e);
        let ep3 = v.epoch.clone().unwrap();
        assert_eq!((ep3.observed["A"], ep3.observed["B"]), (0, 0), "one heartbeat is no run");
        v.close_epochs(50_000, &e);
        assert!(v.runs.is_empty());
    }

    #[test]
    fn an_epoch_this_node_did_not_see_from_its_start_is_not_scored() {
        let e = Epochs { genesis_ms: 0, length_ms: 10_000 };
        let mut v = View { observing_since_ms: 14_000, ..Default::default() };
        for t in (14_000..20_000).step_by(1_000) {
            v.record_beat("A", t, &e, 1_000);
        }
        v.close_epochs(20_001, &e);
        let ep = v.epoch.clone().unwrap();
        assert!(!ep.complete && ep.observed.is_empty(), "{ep:?}");
        for t in (20_000..30_000).step_by(1_000) {
            v.record_beat("A", t, &e, 1_000);
        }
        v.close_epochs(30_001, &e);
        assert_eq!(v.epoch.unwrap().observed["A"], 230);
    }
}

#[cfg(test)]
mod gossip_id_tests {
    use super::*;

    fn msg(source: Option<PeerId>, seq: Option<u64>) -> gossipsub::Message {
        gossipsub::Message {
            source,
            data: b"same body".to_vec(),
            sequence_number: seq,
            topic: gossipsub::IdentTopic::new(HEARTBEAT_TOPIC).hash(),
        }
    }

    #[test]
    fn message_ids_are_gossipsubs_default_ones() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let ids = MessageIds::default();
        for (p, seq) in [(a, 7), (a, 7), (a, 8), (b, 7)] {
            let default = format!("{}{seq}", p.to_base58());
            assert_eq!(ids.id(&msg(Some(p), Some(seq))), gossipsub::MessageId::from(default));
        }
        let anonymous = PeerId::from_bytes(&[0, 1, 0]).unwrap().to_base58() + "0";
        assert_eq!(ids.id(&msg(None, None)), gossipsub::MessageId::from(anonymous));
        assert_ne!(ids.id(&msg(Some(a), Some(7))), ids.id(&msg(Some(b), Some(7))));
    }
}
