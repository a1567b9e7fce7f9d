//! The event loop that owns the swarm: admission, dAuth, heartbeats,
//! discovery. Decisions are made by the pure cores ([`Admission`],
//! [`GossipGate`]); this file only feeds them and carries out what they say.

use super::admission::{Admission, AdmissionConfig, OnConnect};
use super::envelope::{Envelope, Sequencer};
use super::gossip::{GossipConfig, GossipGate, Payload, Severity, Topic};
use super::protocol::{self, AuthAnswer, AuthAsk, Hello, Request, Response};
use super::{
    now_ms, now_us, BehaviourEvent, Command, DauthRecord, NetConfig, NetworkConfig, PeerInfo, ServiceEvent, SharedView,
    View, CSTORE_TOPIC, DAUTH_LOG_MAX, HEARTBEAT_TOPIC, UNADMITTED_SCORE,
};
use crate::crd::NodeRole;
use crate::dauth::license::{Claims, LicenseError};
use crate::metrics::{Metrics, ReasonLabels};
use crate::r1fs::bitswap;
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, request_response, Multiaddr, PeerId, Swarm};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

pub(super) struct EventLoop {
    cfg: NetConfig,
    own_license: Result<Claims, LicenseError>,
    swarm: Swarm<super::Behaviour>,
    cmd: mpsc::Receiver<Command>,
    view: SharedView,
    changes: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    admission: Admission,
    gossip: GossipGate,
    seq: Sequencer,
    /// Our last Hello request per pending peer.
    hello_sent: HashMap<PeerId, request_response::OutboundRequestId>,
    auth_nonce: Option<(PeerId, String)>,
    last_auth: Option<Instant>,
    /// The epoch clock in use: the flags', or an oracle's (dAuth).
    epochs: crate::oracle::epoch::Epochs,
    /// Last dial per peer learnt from heartbeats (bounded: see `discover`).
    dialed: HashMap<PeerId, Instant>,
    last_bootstrap: Option<Instant>,
    last_discovery: Option<Instant>,
    last_stats: Option<Instant>,
    cstore_topic: gossipsub::TopicHash,
    /// CSTORE requests handed to the service, awaiting its answer (bounded).
    inbound_requests: HashMap<u64, request_response::ResponseChannel<Box<RawValue>>>,
    next_request: u64,
    /// Our CSTORE requests in flight.
    outbound_requests:
        HashMap<request_response::OutboundRequestId, tokio::sync::oneshot::Sender<Result<Box<RawValue>, String>>>,
    /// R1FS block requests handed to the service, and ours in flight.
    block_requests: HashMap<u64, (PeerId, request_response::ResponseChannel<bitswap::Message>)>,
    block_wants:
        HashMap<request_response::OutboundRequestId, tokio::sync::oneshot::Sender<Result<bitswap::Message, String>>>,
}

/// R1FS block requests one peer may have waiting here at once (a fetch
/// keeps at most 2 in flight per provider).
const MAX_BLOCK_REQUESTS_PER_PEER: usize = 16;

/// CSTORE requests a node holds for its service at once; more are refused.
const MAX_INBOUND_REQUESTS: usize = 256;

/// The answer of a refused CSTORE request (the service's `Refused` shape).
fn refused(reason: &'static str) -> Box<RawValue> {
    RawValue::from_string(serde_json::json!({ "Refused": { "reason": reason } }).to_string()).expect("valid JSON")
}

fn label(reason: &'static str) -> ReasonLabels {
    ReasonLabels { reason }
}

impl EventLoop {
    pub(super) fn new(
        cfg: NetConfig,
        mut swarm: Swarm<super::Behaviour>,
        cmd: mpsc::Receiver<Command>,
        view: SharedView,
        changes: watch::Sender<u64>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let peer_id = *swarm.local_peer_id();
        let epochs = cfg.tuning.epochs;
        let mut listen_error = None;
        for addr in &cfg.listen {
            if let Err(e) = swarm.listen_on(addr.clone()) {
                tracing::error!(%addr, error = %e, "cannot listen");
                listen_error = Some(format!("cannot listen on {addr}: {e}"));
            }
        }
        for addr in &cfg.external {
            swarm.add_external_address(addr.clone());
        }
        *view.write().expect("view lock") = View {
            peer_id: Some(peer_id.to_string()),
            running: true,
            listen_error,
            heartbeat_timeout_ms: cfg.tuning.heartbeat_timeout.as_millis() as i64,
            observing_since_ms: now_ms() as u64,
            clock: Some(epochs),
            ..Default::default()
        };
        let t = &cfg.tuning;
        let admission = Admission::new(AdmissionConfig {
            timeout: t.admission_timeout,
            block: t.block_duration,
            ..Default::default()
        });
        let gossip = GossipGate::new(GossipConfig {
            freshness_window_us: t.freshness_window.as_micros() as i64,
            rate_per_sec: t.gossip_rate_per_sec,
            burst: t.gossip_burst,
            ..Default::default()
        });
        let own_license = cfg.trust.verify(&cfg.license, &peer_id.to_string(), now_ms() / 1000);
        let mut ev = Self {
            cfg,
            own_license,
            swarm,
            cmd,
            view,
            changes,
            metrics,
            admission,
            gossip,
            seq: Sequencer::new(rand::random()),
            hello_sent: HashMap::new(),
            auth_nonce: None,
            last_auth: None,
            epochs,
            dialed: HashMap::new(),
            last_bootstrap: None,
            last_discovery: None,
            last_stats: None,
            cstore_topic: gossipsub::IdentTopic::new(CSTORE_TOPIC).hash(),
            inbound_requests: HashMap::new(),
            next_request: 0,
            outbound_requests: HashMap::new(),
            block_requests: HashMap::new(),
            block_wants: HashMap::new(),
        };
        ev.publish_license_state();
        for addr in ev.cfg.bootstrap.clone() {
            ev.dial_addr(addr);
        }
        ev
    }

    pub(super) async fn run(mut self) {
        // One beat at once (status shows the node live), then beats from a
        // random point of the interval: nodes started together (a
        // simulation, a fleet rolled out at once) would otherwise publish
        // in the same instant every interval, and each burst queues behind
        // itself on every relay.
        self.publish_heartbeat();
        let every = self.cfg.tuning.heartbeat_interval;
        let phase = every.mul_f64(rand::random::<f64>());
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + phase, every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut maintenance = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                cmd = self.cmd.recv() => match cmd {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                _ = heartbeat.tick() => self.publish_heartbeat(),
                _ = maintenance.tick() => self.maintain(),
            }
        }
        {
            let mut v = self.view.write().expect("view lock");
            v.running = false;
            v.epoch = None;
        }
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
        let oracle = self.is_oracle().then(|| self.cfg.license.clone());
        let mut v = self.view.write().expect("view lock");
        v.licensed = Some(state);
        v.oracle_license = oracle;
        v.own_class = self.own_license.as_ref().ok().map(|c| c.class);
        drop(v);
        self.bump();
    }

    fn dial_addr(&mut self, addr: Multiaddr) {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            if self.admission.is_blocked(&peer) {
                return;
            }
        }
        if let Err(e) = self.swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "dialing peer failed");
        }
    }

    fn seal(&mut self, kind: &str, body: serde_json::Value) -> Envelope {
        let seq = self.seq.next_seq();
        Envelope::seal(&self.cfg.keypair, self.seq.boot, seq, now_us(), kind, body)
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

    fn count_close(&self, cause: Option<&libp2p::swarm::ConnectionError>) {
        let cause = match cause {
            None => "local",
            Some(libp2p::swarm::ConnectionError::KeepAliveTimeout) => "idle",
            Some(libp2p::swarm::ConnectionError::IO(_)) => "io",
        };
        self.metrics.p2p_connections_closed.get_or_create(&label(cause)).inc();
    }

    fn send_hello(&mut self, peer: PeerId) {
        let hello = self.hello();
        let id = self.swarm.behaviour_mut().dauth.send_request(&peer, Request::Hello(hello));
        self.hello_sent.insert(peer, id);
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
            Command::Dial(addr) => self.dial_addr(addr),
            Command::PublishService { kind, body, done } => {
                if self.own_license.is_err() {
                    let _ = done.send(Err("this node is not licensed".into()));
                    return;
                }
                let seq = self.seq.next_seq();
                let env = Envelope::seal_raw(&self.cfg.keypair, self.seq.boot, seq, now_us(), kind, body);
                let bytes = env.to_bytes();
                let n = bytes.len();
                let r = match self.swarm.behaviour_mut().gossipsub.publish(self.cstore_topic.clone(), bytes) {
                    Ok(_) => Ok(n),
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Ok(0),
                    Err(e) => Err(e.to_string()),
                };
                let _ = done.send(r);
            }
            Command::Validate { message, source, acceptance } => {
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&message, &source, acceptance);
            }
            Command::ServiceRequest { peer, body, done } => {
                if !self.admission.is_admitted(&peer) {
                    let _ = done.send(Err(format!("peer {peer} is not admitted")));
                    return;
                }
                let id = self.swarm.behaviour_mut().cstore.send_request(&peer, body);
                self.outbound_requests.insert(id, done);
            }
            Command::Respond { id, body } => {
                if let Some(channel) = self.inbound_requests.remove(&id) {
                    let _ = self.swarm.behaviour_mut().cstore.send_response(channel, body);
                }
            }
            Command::WantBlocks { peer, message, done } => {
                if !self.admission.is_admitted(&peer) {
                    let _ = done.send(Err(format!("peer {peer} is not admitted")));
                    return;
                }
                let id = self.swarm.behaviour_mut().bitswap.send_request(&peer, message);
                self.block_wants.insert(id, done);
            }
            Command::AnswerBlocks { id, message } => {
                if let Some((_, channel)) = self.block_requests.remove(&id) {
                    let _ = self.swarm.behaviour_mut().bitswap.send_response(channel, message);
                }
            }
            #[cfg(test)]
            Command::Panic => panic!("asked to panic (test)"),
        }
    }

    /// Verifies a Hello received from `peer` over an authenticated channel.
    /// The license is checked before anything else of the body is used.
    fn check_hello(&self, peer: PeerId, env: &Envelope) -> Result<(Claims, Hello), &'static str> {
        let from = env.verify().map_err(|_| "BadHello")?;
        if from != peer {
            return Err("BadSignature");
        }
        if !super::envelope::fresh(env.ts, now_us(), self.cfg.tuning.freshness_window.as_micros() as i64) {
            return Err("Stale");
        }
        let hello: Hello = protocol::decode_body(&env.body).map_err(|_| "BadHello")?;
        let claims =
            self.cfg.trust.verify(&hello.license, &peer.to_string(), now_ms() / 1000).map_err(|e| e.reason())?;
        Ok((claims, hello))
    }

    fn admit(&mut self, peer: PeerId, claims: Claims, hello: Hello) {
        let new = self.admission.admit(peer, claims.clone());
        if !self.admission.is_admitted(&peer) {
            return; // blocked meanwhile
        }
        self.hello_sent.remove(&peer);
        let b = self.swarm.behaviour_mut();
        b.gate.admit(peer);
        b.gossipsub.set_application_score(&peer, 0.0);
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
        {
            let mut v = self.view.write().expect("view lock");
            let prev = v.peers.insert(peer.to_string(), info);
            if let (Some(prev), Some(p)) = (prev, v.peers.get_mut(&peer.to_string())) {
                p.last_heartbeat = prev.last_heartbeat;
                p.offer = prev.offer;
            }
        }
        if new {
            tracing::info!(%peer, "peer admitted");
            self.metrics.p2p_admitted.inc();
        }
        self.bump();
        if oracle && self.last_auth.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
            self.ask_oracle(peer);
        }
    }

    /// Refuses `peer`: disconnected, blocked, forgotten, counted under a
    /// reason from the fixed set.
    fn refuse(&mut self, peer: PeerId, reason: &'static str) {
        tracing::warn!(%peer, reason, "peer refused");
        self.metrics.p2p_refused.get_or_create(&label(reason)).inc();
        self.hello_sent.remove(&peer);
        self.gossip.forget(&peer);
        let released = self.admission.refuse(peer, reason, Instant::now());
        let b = self.swarm.behaviour_mut();
        b.gate.forget(&peer);
        b.blocked.block_peer(peer);
        // A failed license: nothing it authors is wanted, even relayed. A
        // timeout alone is not proof of that (its relayed heartbeats still
        // face the license check).
        if reason != "AdmissionTimeout" {
            b.gossipsub.blacklist_peer(&peer);
        }
        for p in released {
            b.blocked.unblock_peer(p);
            b.gossipsub.remove_blacklisted_peer(&p);
        }
        if self.view.write().expect("view lock").peers.remove(&peer.to_string()).is_some() {
            self.bump();
        }
    }

    fn ask_oracle(&mut self, oracle: PeerId) {
        let nonce = format!("{:016x}", rand::random::<u64>());
        self.auth_nonce = Some((oracle, nonce.clone()));
        self.last_auth = Some(Instant::now());
        let ask = AuthAsk {
            nonce,
            license: self.cfg.license.clone(),
            version: self.cfg.version.clone(),
            addrs: self.swarm.listeners().take(16).map(|a| a.to_string()).collect(),
        };
        let env = self.seal("dauth-request", serde_json::to_value(ask).expect("serializes"));
        self.swarm.behaviour_mut().dauth.send_request(&oracle, Request::Auth(env));
    }

    /// dAuth as an oracle: only admitted peers are answered; the signature
    /// and license are checked before any other field is looked at, and the
    /// log keeps fixed-size records.
    fn answer_auth(&mut self, peer: PeerId, env: Envelope) -> Response {
        let result = (|| {
            if !self.admission.is_admitted(&peer) {
                return Err("NotAdmitted");
            }
            if !self.is_oracle() {
                return Err("NotAnOracle");
            }
            let from = env.verify().map_err(|_| "BadSignature")?;
            if from != peer {
                return Err("BadSignature");
            }
            let ask: AuthAsk = protocol::decode_body(&env.body).map_err(|_| "BadHello")?;
            self.cfg.trust.verify(&ask.license, &peer.to_string(), now_ms() / 1000).map_err(|e| e.reason())?;
            if major(&ask.version) != major(&self.cfg.version) {
                return Err("VersionMismatch");
            }
            Ok(ask.nonce)
        })();
        let record = |v: &mut View, result: &'static str| {
            v.dauth_log.push_back(DauthRecord { peer_id: peer.to_string(), at: now_ms(), result });
            while v.dauth_log.len() > DAUTH_LOG_MAX {
                v.dauth_log.pop_front();
            }
        };
        match result {
            Err(reason) => {
                self.metrics.dauth.get_or_create(&label("refused")).inc();
                record(&mut self.view.write().expect("view lock"), reason);
                Response::Refused { reason: reason.into() }
            }
            Ok(nonce) => {
                self.metrics.dauth.get_or_create(&label("accepted")).inc();
                let (oracles, whitelist, asker_is_oracle) = {
                    let mut v = self.view.write().expect("view lock");
                    record(&mut v, "accepted");
                    let me = self.swarm.local_peer_id().to_string();
                    let mut oracles: Vec<String> =
                        v.peers.values().filter(|p| p.is_oracle()).map(|p| p.peer_id.clone()).collect();
                    oracles.push(me.clone());
                    oracles.truncate(protocol::MAX_LISTED);
                    let mut whitelist: Vec<String> = v.peers.keys().cloned().collect();
                    whitelist.push(me);
                    whitelist.truncate(protocol::MAX_LISTED);
                    let asker = v.peers.get(&peer.to_string()).is_some_and(|p| p.is_oracle());
                    (oracles, whitelist, asker)
                };
                let answer = AuthAnswer {
                    nonce,
                    oracles,
                    whitelist,
                    issuers: self.cfg.trust.issuers().map(crate::dauth::license::encode_public).collect(),
                    is_oracle: asker_is_oracle,
                    epochs: Some(protocol::EpochClock {
                        genesis_ms: self.epochs.genesis_ms,
                        length_ms: self.epochs.length_ms,
                    }),
                };
                Response::Auth(self.seal("dauth-answer", serde_json::to_value(answer).expect("serializes")))
            }
        }
    }

    /// Takes the network's epoch clock from an oracle's dAuth answer: the
    /// network runs on one clock, set on its oracles. One too short for
    /// this node's heartbeats is refused (kept: this node's own).
    fn adopt_epochs(&mut self, e: crate::oracle::epoch::Epochs, oracle: &PeerId) {
        if e == self.epochs {
            return;
        }
        let hb = self.cfg.tuning.heartbeat_interval.as_millis() as u64;
        if e.length_ms < 10 * hb {
            tracing::warn!(%oracle, length_ms = e.length_ms, "oracle's epochs shorter than ten heartbeats: this node keeps its own");
            self.metrics.p2p_dropped.get_or_create(&label("epochs_too_short")).inc();
            return;
        }
        tracing::info!(%oracle, genesis_ms = e.genesis_ms, length_ms = e.length_ms, "epoch clock taken from the oracle (dAuth)");
        self.epochs = e;
        let mut v = self.view.write().expect("view lock");
        // Runs under the old clock do not fit the new one: start over.
        v.runs.clear();
        v.epoch = None;
        v.observing_since_ms = now_ms() as u64;
        v.epochs_from = Some(oracle.to_string());
        v.clock = Some(e);
    }

    fn take_auth_answer(&mut self, peer: PeerId, env: Envelope) {
        let Some((oracle, nonce)) = self.auth_nonce.clone() else { return };
        if env.verify().ok() != Some(peer) {
            self.metrics.p2p_dropped.get_or_create(&label("bad_signature")).inc();
            return;
        }
        let Ok(answer) = protocol::decode_body::<AuthAnswer>(&env.body) else {
            self.metrics.p2p_dropped.get_or_create(&label("malformed")).inc();
            return;
        };
        // Only the oracle we asked, with our nonce, and still admitted with
        // an oracle-class license.
        let trusted = self.admission.claims(&peer).is_some_and(|c| c.class.may_be_oracle());
        if peer != oracle || answer.nonce != nonce || !trusted {
            self.metrics.p2p_dropped.get_or_create(&label("replay")).inc();
            return;
        }
        self.auth_nonce = None;
        tracing::info!(%oracle, oracles = answer.oracles.len(), whitelist = answer.whitelist.len(), "dAuth answer received");
        let now = now_ms();
        if let Some(c) = answer.epochs {
            self.adopt_epochs(
                crate::oracle::epoch::Epochs { genesis_ms: c.genesis_ms, length_ms: c.length_ms },
                &oracle,
            );
        }
        self.view.write().expect("view lock").network = Some(NetworkConfig {
            oracle: oracle.to_string(),
            oracles: answer.oracles,
            whitelist: answer.whitelist,
            issuers: answer.issuers,
            is_oracle: answer.is_oracle,
            received_at: now,
            expires_at: now + self.cfg.tuning.dauth_ttl.as_millis() as i64,
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
                tracing::error!(error = %error, "listener failed");
                self.view.write().expect("view lock").listen_error = Some(error.to_string());
            }
            SwarmEvent::ConnectionEstablished { peer_id, num_established, .. } => {
                let others = num_established.get() as usize - 1;
                match self.admission.on_connected(peer_id, others, Instant::now()) {
                    OnConnect::Admitted => {}
                    OnConnect::Pending { first } => {
                        // Invisible to gossipsub until admitted: gossipsub
                        // registered the peer before this event reached us,
                        // and sends nothing to it before its next poll.
                        self.swarm.behaviour_mut().gossipsub.set_application_score(&peer_id, UNADMITTED_SCORE);
                        if first {
                            self.send_hello(peer_id);
                        }
                    }
                    OnConnect::Refuse(reason) => {
                        if reason == "TooManyPending" {
                            self.metrics.p2p_refused.get_or_create(&label(reason)).inc();
                        }
                        let _ = self.swarm.disconnect_peer_id(peer_id);
                    }
                }
            }
            SwarmEvent::ConnectionClosed { cause, num_established, .. } if num_established > 0 => {
                self.count_close(cause.as_ref());
            }
            SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                self.count_close(cause.as_ref());
                self.hello_sent.remove(&peer_id);
                self.swarm.behaviour_mut().gate.forget(&peer_id);
                self.admission.on_disconnected(&peer_id, Instant::now());
                if let Some(p) = self.view.write().expect("view lock").peers.get_mut(&peer_id.to_string()) {
                    p.connected = false;
                }
                self.bump();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dauth(request_response::Event::Message {
                peer, message, ..
            })) => self.on_dauth(peer, message),
            SwarmEvent::Behaviour(BehaviourEvent::Dauth(request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            })) => {
                let reason = match error {
                    request_response::OutboundFailure::DialFailure => "request_dial_failure",
                    request_response::OutboundFailure::Timeout => "request_timeout",
                    request_response::OutboundFailure::ConnectionClosed => "request_connection_closed",
                    request_response::OutboundFailure::UnsupportedProtocols => "request_unsupported",
                    request_response::OutboundFailure::Io(_) => "request_io",
                };
                self.metrics.p2p_dropped.get_or_create(&label(reason)).inc();
                // A Hello lost with the connection that carried it: say it
                // again on another connection of the still pending peer
                // (not after a refusal to answer: a silent peer gets one).
                let closed = reason == "request_connection_closed";
                if closed
                    && self.hello_sent.get(&peer) == Some(&request_id)
                    && self.swarm.is_connected(&peer)
                    && !self.admission.is_admitted(&peer)
                {
                    self.send_hello(peer);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                // `None`: handed to the service, which reports the verdict.
                if let Some(acceptance) = self.on_gossip(&message_id, propagation_source, message) {
                    self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        acceptance,
                    );
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Cstore(ev)) => self.on_cstore(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Bitswap(ev)) => self.on_bitswap(ev),
            _ => {}
        }
    }

    fn on_dauth(&mut self, peer: PeerId, message: request_response::Message<Request, Response>) {
        match message {
            request_response::Message::Request { request, channel, .. } => {
                let response = match request {
                    Request::Hello(env) => match self.check_hello(peer, &env) {
                        Ok((claims, hello)) => {
                            self.admit(peer, claims, hello);
                            Response::Hello(self.hello())
                        }
                        Err(reason) => {
                            let refused = Response::Refused { reason: reason.into() };
                            let _ = self.swarm.behaviour_mut().dauth.send_response(channel, refused);
                            self.refuse(peer, reason);
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
                    Err(reason) => self.refuse(peer, reason),
                },
                Response::Auth(env) => self.take_auth_answer(peer, env),
                Response::Refused { reason } => {
                    let reason = protocol::refusal_label(&reason);
                    tracing::warn!(%peer, reason, "peer refused us");
                    self.metrics.p2p_refused_by_peer.get_or_create(&label(reason)).inc();
                }
            },
        }
    }

    /// CSTORE requests and answers: only admitted peers ask or are asked;
    /// the service answers (through `Command::Respond`).
    fn on_cstore(&mut self, ev: request_response::Event<Box<RawValue>, Box<RawValue>>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let reason = if !self.admission.is_admitted(&peer) {
                        Some("NotAdmitted")
                    } else if self.inbound_requests.len() >= MAX_INBOUND_REQUESTS {
                        Some("Busy")
                    } else {
                        None
                    };
                    let link = self.cfg.cstore.clone();
                    let (Some(link), None) = (link, reason) else {
                        let reason = reason.unwrap_or("Unsupported");
                        self.metrics.p2p_dropped.get_or_create(&label("cstore_request_refused")).inc();
                        let _ = self.swarm.behaviour_mut().cstore.send_response(channel, refused(reason));
                        return;
                    };
                    self.next_request += 1;
                    let id = self.next_request;
                    match link.inbound.try_send(ServiceEvent::Request { peer, id, body: request }) {
                        Ok(()) => {
                            self.inbound_requests.insert(id, channel);
                        }
                        Err(_) => {
                            self.metrics.p2p_dropped.get_or_create(&label("cstore_request_refused")).inc();
                            let _ = self.swarm.behaviour_mut().cstore.send_response(channel, refused("Busy"));
                        }
                    }
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(done) = self.outbound_requests.remove(&request_id) {
                        let _ = done.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                if let Some(done) = self.outbound_requests.remove(&request_id) {
                    let _ = done.send(Err(error.to_string()));
                }
            }
            request_response::Event::InboundFailure { .. } => {
                // The channel is gone (its peer closed, or we timed out).
                self.inbound_requests.retain(|_, c| c.is_open());
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// R1FS block requests: only from admitted peers, only as many at once
    /// as R1FS takes ([`MAX_INBOUND_REQUESTS`] here, its channel there); a
    /// refused request is answered with nothing (the asker tries elsewhere).
    fn on_bitswap(&mut self, ev: request_response::Event<bitswap::Message, bitswap::Message>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let link = self.cfg.r1fs.clone();
                    let admitted = self.admission.is_admitted(&peer);
                    // Room in all, and for this peer: one peer cannot take
                    // every slot from the others.
                    let room = self.block_requests.len() < MAX_INBOUND_REQUESTS
                        && self.block_requests.values().filter(|(p, _)| *p == peer).count()
                            < MAX_BLOCK_REQUESTS_PER_PEER;
                    let (Some(link), true, true) = (link, admitted, room) else {
                        let reason = if admitted { "r1fs_request_refused" } else { "r1fs_request_unadmitted" };
                        self.metrics.p2p_dropped.get_or_create(&label(reason)).inc();
                        let _ = self.swarm.behaviour_mut().bitswap.send_response(channel, bitswap::Message::default());
                        return;
                    };
                    self.next_request += 1;
                    let id = self.next_request;
                    match link.inbound.try_send(super::BlockRequest { peer, id, message: request }) {
                        Ok(()) => {
                            self.block_requests.insert(id, (peer, channel));
                        }
                        Err(_) => {
                            self.metrics.p2p_dropped.get_or_create(&label("r1fs_request_refused")).inc();
                            let _ =
                                self.swarm.behaviour_mut().bitswap.send_response(channel, bitswap::Message::default());
                        }
                    }
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(done) = self.block_wants.remove(&request_id) {
                        let _ = done.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                if let Some(done) = self.block_wants.remove(&request_id) {
                    let _ = done.send(Err(error.to_string()));
                }
            }
            request_response::Event::InboundFailure { .. } => {
                self.block_requests.retain(|_, (_, c)| c.is_open());
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Gossip: the pure gate decides; accepted heartbeats update the view
    /// and may teach us a peer to dial; accepted CSTORE batches go to the
    /// service, which gives the verdict (`None` here).
    fn on_gossip(
        &mut self,
        message_id: &gossipsub::MessageId,
        source: PeerId,
        message: gossipsub::Message,
    ) -> Option<gossipsub::MessageAcceptance> {
        let now = now_us();
        let admitted = message.source.as_ref().and_then(|a| self.admission.claims(a));
        let topic = if message.topic == self.cstore_topic { Topic::Cstore } else { Topic::Heartbeat };
        let verdict = self.gossip.check(topic, message.source, &message.data, admitted, &self.cfg.trust, now);
        let ok = match verdict {
            Ok(ok) => ok,
            Err((reason, severity)) => {
                self.metrics.p2p_dropped.get_or_create(&label(reason)).inc();
                tracing::debug!(reason, "gossip dropped");
                return Some(match severity {
                    Severity::Reject => gossipsub::MessageAcceptance::Reject,
                    Severity::Ignore => gossipsub::MessageAcceptance::Ignore,
                });
            }
        };
        let hb = match ok.payload {
            Payload::Heartbeat(hb) => hb,
            Payload::Records => {
                let Some(link) = &self.cfg.cstore else { return Some(gossipsub::MessageAcceptance::Ignore) };
                let event = ServiceEvent::Gossip {
                    author: ok.author,
                    envelope: Box::new(ok.envelope),
                    message: message_id.clone(),
                    source,
                };
                return match link.inbound.try_send(event) {
                    Ok(()) => None,
                    Err(_) => {
                        // The service is behind: not relayed, not punished;
                        // anti-entropy brings the records later.
                        self.metrics.p2p_dropped.get_or_create(&label("service_busy")).inc();
                        Some(gossipsub::MessageAcceptance::Ignore)
                    }
                };
            }
        };
        let delay_us = now.saturating_sub(ok.envelope.ts).max(0);
        self.metrics.p2p_heartbeats.inc();
        self.metrics.p2p_heartbeat_delay.observe(delay_us as f64 / 1e6);
        let author = ok.author;
        let connected = self.swarm.is_connected(&author);
        {
            let mut v = self.view.write().expect("view lock");
            // `from` is the author's PeerId as text (checked by the signature).
            let p = v.peers.entry(ok.envelope.from.clone()).or_insert_with(|| PeerInfo {
                peer_id: ok.envelope.from.clone(),
                node: hb.node.clone(),
                license_id: ok.claims.id.clone(),
                class: ok.claims.class,
                roles: hb.roles.clone(),
                version: hb.version.clone(),
                last_heartbeat: None,
                connected: false,
                offer: serde_json::json!({}),
            });
            p.last_heartbeat = Some(now / 1000);
            p.roles = hb.roles;
            p.offer = hb.offer;
            p.version = hb.version;
            if !hb.node.is_empty() {
                p.node = hb.node;
            }
            let hb = self.cfg.tuning.heartbeat_interval.as_millis() as u64;
            v.record_beat(&ok.envelope.from, (now / 1000) as u64, &self.epochs, hb);
            v.heartbeat_delays.push_back((ok.envelope.from, ok.envelope.seq, delay_us));
            while v.heartbeat_delays.len() > 4096 {
                v.heartbeat_delays.pop_front();
            }
        }
        if !connected {
            self.discover(author, &hb.addrs);
        }
        Some(gossipsub::MessageAcceptance::Accept)
    }

    /// Dials a licensed author learnt from its heartbeat, while this node
    /// has fewer than `dial_target` peers; each at most every 30 s.
    fn discover(&mut self, author: PeerId, addrs: &[String]) {
        // At most one discovery dial per 100 ms: a node that hears a whole
        // network at once must not open every connection (and admission
        // handshake) in the same instant.
        if author == *self.swarm.local_peer_id()
            || self.admission.is_blocked(&author)
            || self.last_discovery.is_some_and(|t| t.elapsed() < Duration::from_millis(100))
            || self.swarm.connected_peers().count() >= self.cfg.tuning.dial_target
            || self.dialed.get(&author).is_some_and(|t| t.elapsed() < Duration::from_secs(30))
        {
            return;
        }
        self.last_discovery = Some(Instant::now());
        let addrs: Vec<Multiaddr> = addrs
            .iter()
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .filter(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_) | Protocol::Memory(_))))
            .map(|a| if matches!(a.iter().last(), Some(Protocol::P2p(_))) { a } else { a.with(Protocol::P2p(author)) })
            .take(8)
            .collect();
        if addrs.is_empty() {
            return;
        }
        if self.dialed.len() >= 4096 {
            self.dialed.retain(|_, t| t.elapsed() < Duration::from_secs(30));
        }
        self.dialed.insert(author, Instant::now());
        let opts =
            DialOpts::peer_id(author).addresses(addrs).condition(PeerCondition::DisconnectedAndNotDialing).build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%author, error = %e, "dialing a discovered peer failed");
        }
    }

    fn publish_heartbeat(&mut self) {
        let Ok(claims) = &self.own_license else { return };
        let addrs: Vec<String> = if self.cfg.external.is_empty() {
            self.swarm.listeners().take(16).map(|a| a.to_string()).collect()
        } else {
            self.cfg.external.iter().take(16).map(|a| a.to_string()).collect()
        };
        let body = protocol::Heartbeat {
            license: self.cfg.license.clone(),
            license_id: claims.id.clone(),
            class: claims.class,
            roles: self.cfg.roles.clone(),
            node: self.cfg.node_name.clone(),
            offer: self.cfg.offer.clone(),
            version: self.cfg.version.clone(),
            addrs,
        };
        let env = self.seal(protocol::HEARTBEAT_KIND, serde_json::to_value(body).expect("serializes"));
        match self.swarm.behaviour_mut().gossipsub.publish(gossipsub::IdentTopic::new(HEARTBEAT_TOPIC), env.to_bytes())
        {
            Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                let now = now_ms();
                let hb = self.cfg.tuning.heartbeat_interval.as_millis() as u64;
                let mut v = self.view.write().expect("view lock");
                v.last_heartbeat_sent = Some(now);
                // A node sees its own heartbeats too (an oracle's table
                // includes itself; the median keeps it honest).
                v.record_beat(&env.from, now as u64, &self.epochs, hb);
                drop(v);
                self.metrics.p2p_heartbeats_sent.inc();
            }
            Err(e) => tracing::debug!(error = %e, "heartbeat not published"),
        }
    }

    /// Admission deadlines, license expiry and revocation, expired blocks,
    /// stale peers and dAuth answers, bootstrap redials.
    fn maintain(&mut self) {
        let now_unix = now_ms() / 1000;
        let tick = self.admission.tick(Instant::now(), now_unix, &self.cfg.trust);
        for (peer, reason) in tick.refuse {
            self.refuse(peer, reason);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        for p in tick.unblock {
            let b = self.swarm.behaviour_mut();
            b.blocked.unblock_peer(p);
            b.gossipsub.remove_blacklisted_peer(&p);
        }
        // Our own license can expire or be revoked too.
        if let Ok(c) = &self.own_license {
            if let Err(e) = self.cfg.trust.still_valid(c, now_unix) {
                self.own_license = Err(e);
                self.publish_license_state();
            }
        }
        let now = now_ms();
        // Gossip statistics every 2 s: a score is computed per peer.
        let stats = self.last_stats.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)).then(|| {
            self.last_stats = Some(Instant::now());
            let topic = gossipsub::IdentTopic::new(HEARTBEAT_TOPIC).hash();
            let gs = &self.swarm.behaviour().gossipsub;
            let mesh_peers = gs.mesh_peers(&topic).count();
            let negative = self.swarm.connected_peers().filter(|p| gs.peer_score(p).is_some_and(|s| s < 0.0)).count();
            self.metrics.p2p_mesh_peers.set(mesh_peers as i64);
            (self.swarm.connected_peers().count(), mesh_peers, negative)
        });
        let (forgot, fresh) = {
            let mut v = self.view.write().expect("view lock");
            if let Some((connections, mesh_peers, negative)) = stats {
                v.connections = connections;
                v.mesh_peers = mesh_peers;
                v.negative_scores = negative;
            }
            let timeout = v.heartbeat_timeout_ms;
            v.close_epochs(now as u64, &self.epochs);
            let before = v.peers.len();
            // Disconnected peers are forgotten once their heartbeats stop.
            v.peers.retain(|_, p| p.connected || p.last_heartbeat.is_some_and(|t| now - t <= timeout));
            if v.network.as_ref().is_some_and(|n| n.expires_at <= now) {
                v.network = None;
                self.last_auth = None;
            }
            (before != v.peers.len(), v.fresh_peers(now).len() as i64)
        };
        if forgot || fresh != self.metrics.p2p_peers.get() {
            self.bump();
        }
        // Keep trying bootstrap peers (every 2 s) while connected to none.
        let connected_to_bootstrap = self.cfg.bootstrap.iter().any(|a| match a.iter().last() {
            Some(Protocol::P2p(p)) => self.swarm.is_connected(&p),
            _ => false,
        });
        if !connected_to_bootstrap && self.last_bootstrap.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
            self.last_bootstrap = Some(Instant::now());
            for addr in self.cfg.bootstrap.clone() {
                self.dial_addr(addr);
            }
        }
        // Ask an admitted oracle again before the dAuth answer expires.
        let renew = self
            .view
            .read()
            .expect("view lock")
            .network
            .as_ref()
            .is_none_or(|n| n.expires_at - now < self.cfg.tuning.dauth_ttl.as_millis() as i64 / 2);
        if renew && self.last_auth.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
            let oracle = self
                .admission
                .admitted_peers()
                .find(|p| {
                    self.admission.claims(p).is_some_and(|c| c.class.may_be_oracle())
                        && self.view.read().expect("view lock").peers.get(&p.to_string()).is_some_and(|i| i.is_oracle())
                })
                .copied();
            if let Some(o) = oracle {
                self.ask_oracle(o);
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
