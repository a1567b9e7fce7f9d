//! A hostile peer built from rust-libp2p directly: it speaks every protocol
//! a node speaks (gossipsub on the heartbeat topic, the dAuth
//! request-response protocol, R1FS's block exchange, and it tries kademlia
//! and identify too), but
//! holds no license. It counts what it receives, so tests can prove that an
//! unadmitted peer gets nothing.

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{gossipsub, identify, kad, noise, request_response, tcp, yamux, Multiaddr, PeerId, StreamProtocol};
use libp2p_identity::Keypair;
use std::time::{Duration, Instant};

#[derive(NetworkBehaviour)]
pub struct Hostile {
    gossipsub: gossipsub::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
    dauth: request_response::json::Behaviour<serde_json::Value, serde_json::Value>,
    bitswap: request_response::Behaviour<ratio1::r1fs::bitswap::Codec>,
}

/// How the outsider behaves.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Hang up and redial this often (never when `None`).
    pub redial_every: Option<Duration>,
    /// Answer the node's Hello with a refusal carrying this many random bytes.
    pub refuse_with: Option<usize>,
    /// Send a dAuth ask with a field of this many bytes once connected.
    pub ask_with: Option<usize>,
    /// Ask for these R1FS blocks (want-block and want-have) every 500 ms
    /// while connected.
    pub want: Vec<ratio1::r1fs::cid::Cid>,
}

/// What the outsider saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub dials: u32,
    pub connections: u32,
    /// Gossip messages received on any topic.
    pub gossip: u32,
    /// Peers other than the target learnt through kademlia.
    pub kad_peers: u32,
    /// Listen addresses of the target learnt through identify.
    pub identify_addrs: u32,
    pub hellos_received: u32,
    /// R1FS wantlists sent, blocks and presences (`Have`) received.
    pub wants_sent: u32,
    pub blocks_received: u32,
    pub haves_received: u32,
}

pub fn build(key: Keypair) -> libp2p::Swarm<Hostile> {
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|k| {
            let peer = k.public().to_peer_id();
            let cfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(200))
                .validation_mode(gossipsub::ValidationMode::None)
                .build()
                .unwrap();
            let mut gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Author(peer), cfg).unwrap();
            gossipsub.subscribe(&gossipsub::IdentTopic::new(ratio1::p2p::HEARTBEAT_TOPIC)).unwrap();
            let mut kad = kad::Behaviour::with_config(
                peer,
                kad::store::MemoryStore::new(peer),
                kad::Config::new(StreamProtocol::new("/ratio1/kad/1.0.0")),
            );
            kad.set_mode(Some(kad::Mode::Client));
            Hostile {
                gossipsub,
                kad,
                identify: identify::Behaviour::new(identify::Config::new("/ratio1/id/1.0.0".into(), k.public())),
                dauth: request_response::json::Behaviour::new(
                    [(StreamProtocol::new(ratio1::p2p::DAUTH_PROTOCOL), request_response::ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
                ),
                bitswap: request_response::Behaviour::with_codec(
                    ratio1::r1fs::bitswap::Codec,
                    [(StreamProtocol::new(ratio1::p2p::R1FS_PROTOCOL), request_response::ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
                ),
            }
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

fn random_text(n: usize) -> String {
    (0..n).map(|_| (b'a' + rand::random::<u8>() % 26) as char).collect()
}

/// Runs an outsider against `target` for `duration`.
pub async fn run(target: Multiaddr, target_peer: PeerId, plan: Plan, duration: Duration) -> Seen {
    let mut swarm = build(Keypair::generate_ed25519());
    let mut seen = Seen::default();
    let end = tokio::time::Instant::now() + duration;
    let mut redial = tokio::time::interval(plan.redial_every.unwrap_or(Duration::from_secs(3600)));
    redial.tick().await;
    let mut query = tokio::time::interval(Duration::from_millis(500));
    let _ = swarm.dial(target.clone());
    seen.dials += 1;
    swarm.behaviour_mut().kad.add_address(&target_peer, target.clone());
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            _ = redial.tick() => {
                let _ = swarm.disconnect_peer_id(target_peer);
                let _ = swarm.dial(target.clone());
                seen.dials += 1;
            }
            _ = query.tick() => {
                if swarm.is_connected(&target_peer) {
                    swarm.behaviour_mut().kad.get_closest_peers(PeerId::random());
                    if !plan.want.is_empty() {
                        let mut m = ratio1::r1fs::bitswap::want_blocks(&plan.want);
                        let mut haves = ratio1::r1fs::bitswap::want_blocks(&plan.want).wantlist.unwrap().entries;
                        haves.iter_mut().for_each(|e| e.want_type = ratio1::r1fs::bitswap::WantType::Have as i32);
                        m.wantlist.as_mut().unwrap().entries.extend(haves);
                        swarm.behaviour_mut().bitswap.send_request(&target_peer, m);
                        seen.wants_sent += 1;
                    }
                }
            }
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == target_peer => {
                    seen.connections += 1;
                    if let Some(n) = plan.ask_with {
                        let ask = serde_json::json!({"Auth": {"from": peer_id.to_string(), "key": "", "seq": 1, "ts": 0,
                            "kind": "dauth-request", "body": {"nonce": "n", "license": "", "version": random_text(n), "addrs": []}, "sig": ""}});
                        swarm.behaviour_mut().dauth.send_request(&peer_id, ask);
                    }
                }
                SwarmEvent::Behaviour(HostileEvent::Gossipsub(gossipsub::Event::Message { .. })) => seen.gossip += 1,
                SwarmEvent::Behaviour(HostileEvent::Bitswap(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. }, ..
                })) => {
                    seen.blocks_received += response.payload.len() as u32;
                    seen.haves_received += response.block_presences.iter()
                        .filter(|p| p.r#type == ratio1::r1fs::bitswap::PresenceType::Have as i32).count() as u32;
                }
                SwarmEvent::Behaviour(HostileEvent::Kad(kad::Event::OutboundQueryProgressed {
                    result: kad::QueryResult::GetClosestPeers(Ok(ok)), ..
                })) => {
                    seen.kad_peers += ok.peers.iter().filter(|p| p.peer_id != target_peer).count() as u32;
                }
                SwarmEvent::Behaviour(HostileEvent::Kad(kad::Event::RoutingUpdated { peer, .. })) if peer != target_peer => {
                    seen.kad_peers += 1;
                }
                SwarmEvent::Behaviour(HostileEvent::Identify(identify::Event::Received { info, .. })) => {
                    seen.identify_addrs += info.listen_addrs.len() as u32;
                }
                SwarmEvent::Behaviour(HostileEvent::Dauth(request_response::Event::Message {
                    message: request_response::Message::Request { channel, .. }, ..
                })) => {
                    seen.hellos_received += 1;
                    if let Some(n) = plan.refuse_with {
                        let _ = swarm.behaviour_mut().dauth.send_response(channel, serde_json::json!({"Refused": {"reason": random_text(n)}}));
                    }
                    // Otherwise silent: the channel is dropped unanswered.
                }
                _ => {}
            }
        }
    }
    seen
}

/// Opens `count` connections to `target`, each from a fresh key, `batch`
/// at a time, and holds those that got through until the end; returns how
/// many completed a handshake.
pub async fn flood(target: Multiaddr, count: usize, batch: usize) -> usize {
    let started = Instant::now();
    let mut ok = 0;
    let mut held = vec![];
    for chunk in (0..count).collect::<Vec<_>>().chunks(batch) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|_| {
                let target = target.clone();
                tokio::spawn(async move {
                    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
                        .with_tokio()
                        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
                        .unwrap()
                        .with_behaviour(|_| libp2p::swarm::dummy::Behaviour)
                        .unwrap()
                        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(2)))
                        .build();
                    let _ = swarm.dial(target);
                    let deadline = tokio::time::sleep(Duration::from_secs(5));
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            _ = &mut deadline => return None,
                            ev = swarm.select_next_some() => match ev {
                                SwarmEvent::ConnectionEstablished { .. } => return Some(swarm),
                                SwarmEvent::OutgoingConnectionError { .. } => return None,
                                _ => {}
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            if let Ok(Some(swarm)) = t.await {
                ok += 1;
                held.push(swarm);
            }
        }
    }
    drop(held);
    eprintln!("flood: {count} dials, {ok} handshakes, {:.1}s", started.elapsed().as_secs_f64());
    ok
}

#[derive(NetworkBehaviour)]
pub struct Rogue {
    gossipsub: gossipsub::Behaviour,
    dauth: request_response::json::Behaviour<ratio1::p2p::protocol::Request, ratio1::p2p::protocol::Response>,
}

/// What the rogue oracle achieved.
#[derive(Debug, Default)]
pub struct RogueReport {
    pub admitted: bool,
    pub asked: u32,
    pub published: u32,
}

/// A licensed MND peer turned rogue: it claims the oracle role, answers the
/// node's dAuth ask with a whitelist naming `stranger` (a key without a
/// license), then relays heartbeats signed by `stranger` until `stop`
/// says so. It redials every 10 s until the node asks it.
pub async fn rogue_oracle(
    target: Multiaddr,
    target_peer: PeerId,
    key: Keypair,
    license: String,
    stranger: Keypair,
    stop: impl Fn() -> bool,
    duration: Duration,
) -> RogueReport {
    use ratio1::p2p::envelope::Envelope;
    use ratio1::p2p::protocol::{AuthAnswer, AuthAsk, Hello, Request, Response};
    let me = key.public().to_peer_id();
    let stranger_peer = stranger.public().to_peer_id();
    let boot = rand::random::<u64>();
    let mut seq = 0u64;
    let mut seal = |k: &Keypair, kind: &str, body: serde_json::Value| {
        seq += 1;
        Envelope::seal(k, boot, seq, ratio1::p2p::now_us(), kind, body)
    };
    let hello_body = serde_json::to_value(Hello {
        license: license.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        node: "rogue".into(),
        roles: vec![ratio1::crd::NodeRole::Worker, ratio1::crd::NodeRole::Oracle],
    })
    .unwrap();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| {
            let cfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(200))
                .validation_mode(gossipsub::ValidationMode::Permissive)
                .build()
                .unwrap();
            // Its gossip names the stranger as author.
            let mut gossipsub =
                gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Author(stranger_peer), cfg).unwrap();
            gossipsub.subscribe(&gossipsub::IdentTopic::new(ratio1::p2p::HEARTBEAT_TOPIC)).unwrap();
            Rogue {
                gossipsub,
                dauth: request_response::json::Behaviour::new(
                    [(StreamProtocol::new(ratio1::p2p::DAUTH_PROTOCOL), request_response::ProtocolSupport::Full)],
                    request_response::Config::default(),
                ),
            }
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let mut report = RogueReport::default();
    let end = tokio::time::Instant::now() + duration;
    let mut redial = tokio::time::interval(Duration::from_secs(10));
    let mut publish = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            _ = redial.tick(), if report.asked == 0 => {
                let _ = swarm.disconnect_peer_id(target_peer);
                let _ = swarm.dial(target.clone());
            }
            _ = publish.tick(), if report.asked > 0 => {
                if stop() {
                    break;
                }
                let body = serde_json::json!({"license": "", "licenseId": "none", "class": "ND", "roles": ["worker"],
                    "node": "stranger", "offer": {}, "version": env!("CARGO_PKG_VERSION"), "addrs": []});
                let env = seal(&stranger, "heartbeat", body);
                if swarm.behaviour_mut().gossipsub.publish(gossipsub::IdentTopic::new(ratio1::p2p::HEARTBEAT_TOPIC), env.to_bytes()).is_ok() {
                    report.published += 1;
                }
            }
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == target_peer => {
                    let hello = seal(&key, "hello", hello_body.clone());
                    swarm.behaviour_mut().dauth.send_request(&peer_id, Request::Hello(hello));
                }
                SwarmEvent::Behaviour(RogueEvent::Dauth(request_response::Event::Message { peer, message, .. })) => match message {
                    request_response::Message::Request { request: Request::Hello(_), channel, .. } => {
                        let hello = seal(&key, "hello", hello_body.clone());
                        let _ = swarm.behaviour_mut().dauth.send_response(channel, Response::Hello(hello));
                    }
                    request_response::Message::Request { request: Request::Auth(env), channel, .. } => {
                        report.asked += 1;
                        let nonce = serde_json::from_str::<AuthAsk>(env.body.get()).map(|a| a.nonce).unwrap_or_default();
                        let answer = AuthAnswer {
                            nonce,
                            oracles: vec![me.to_string()],
                            whitelist: vec![stranger_peer.to_string(), me.to_string(), peer.to_string()],
                            issuers: vec![],
                            is_oracle: false,
                            // A clock no node could keep (1 s epochs).
                            epochs: Some(ratio1::p2p::protocol::EpochClock { genesis_ms: 0, length_ms: 1_000 }),
                        };
                        let env = seal(&key, "dauth-answer", serde_json::to_value(answer).unwrap());
                        let _ = swarm.behaviour_mut().dauth.send_response(channel, Response::Auth(env));
                    }
                    request_response::Message::Response { response: Response::Hello(_), .. } => report.admitted = true,
                    _ => {}
                },
                _ => {}
            }
        }
    }
    report
}
