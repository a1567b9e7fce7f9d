//! The network under hostile peers, with real operator processes on
//! clusters 8 and 9 over loopback TCP: an unlicensed peer gets nothing
//! however it reconnects, floods of fresh keys do not cut licensed peers
//! off, licenses are enforced for their whole life, and what a peer sends
//! cannot grow the operator's memory, metrics or logs.

use crate::harness::federation::*;
use crate::harness::outsider::{self, Plan};
use crate::harness::*;
use ratio1::dauth::license::{self, Class, TrustStore};
use ratio1::metrics::Metrics;
use ratio1::p2p::{self, envelope::Envelope, NetConfig, HEARTBEAT_TOPIC};
use std::sync::Arc;
use std::time::Duration;

struct Licensed {
    handle: p2p::NetworkHandle,
    peer: String,
    token: String,
    key: libp2p_identity::Keypair,
}

fn licensed_peer(fed: &Federation, id: &str, exp_in: i64) -> Licensed {
    let key = libp2p_identity::Keypair::generate_ed25519();
    let peer = key.public().to_peer_id().to_string();
    let token = license_for(&fed.issuer, &peer, Class::Nd, id, exp_in);
    let mut cfg = NetConfig::new(key.clone(), token.clone(), TrustStore::new([fed.issuer.public()], []));
    cfg.node_name = id.into();
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.bootstrap = fed.nodes.iter().map(|n| n.addr().parse().unwrap()).collect();
    cfg.tuning.heartbeat_interval = Duration::from_secs(1);
    let (handle, _task) =
        p2p::start(cfg, Default::default(), Arc::new(Metrics::default()), tokio::sync::watch::channel(0).0).unwrap();
    Licensed { handle, peer, token, key }
}

async fn listed(fed: &Federation, i: usize, peer: &str) -> bool {
    fed.network_view(i).await["peers"].get(peer).is_some()
}

#[tokio::test]
async fn hostile_peers_get_nothing_and_cost_little() {
    let revoked = log_dir().join(format!("revoked-{}.txt", std::process::id()));
    std::fs::write(&revoked, "# none yet\n").unwrap();
    let fed = Federation::start_with(&[8, 9], vec!["--revoked-licenses".into(), revoked.display().to_string()]).await;
    for i in 0..2 {
        fed.wait_peers(i, 1, 60).await;
    }
    let target: libp2p::Multiaddr = fed.nodes[0].addr().parse().unwrap();
    let target_peer: libp2p::PeerId = fed.nodes[0].peer_id.parse().unwrap();

    // 1. An unlicensed peer that speaks every protocol, subscribes to the
    //    heartbeat topic, never answers Hello and redials every 2 s (under
    //    the 3 s admission deadline) gets nothing for 30 s and is refused.
    let timeouts = counter(&fed, 0, "ratio1_p2p_refused_total", "AdmissionTimeout").await;
    let heard_before = counter(&fed, 1, "ratio1_p2p_heartbeats_received_total", "").await;
    let plan = Plan { redial_every: Some(Duration::from_secs(2)), ..Default::default() };
    let seen = outsider::run(target.clone(), target_peer, plan, Duration::from_secs(30)).await;
    eprintln!("unlicensed outsider saw: {seen:?}");
    // Control: there was traffic to leak (the licensed worker heard it).
    assert!(counter(&fed, 1, "ratio1_p2p_heartbeats_received_total", "").await >= heard_before + 20.0);
    assert!(seen.connections >= 1 && seen.hellos_received >= 1, "it did connect: {seen:?}");
    assert!(seen.hellos_received <= 5, "a silent peer is not asked again and again: {seen:?}");
    assert_eq!(seen.gossip, 0, "an unadmitted peer receives no application message");
    assert_eq!(seen.kad_peers, 0, "nor learns any peer through kademlia");
    assert_eq!(seen.identify_addrs, 0, "nor through identify");
    assert!(
        counter(&fed, 0, "ratio1_p2p_refused_total", "AdmissionTimeout").await > timeouts,
        "refused at its deadline although it kept reconnecting"
    );

    // 2. Refusals with 1 MiB reasons and dAuth asks with 1 MiB fields leave
    //    metrics, series and the dAuth log bounded.
    for _ in 0..20 {
        let plan = Plan { refuse_with: Some(1 << 20), ask_with: Some(1 << 20), ..Default::default() };
        outsider::run(target.clone(), target_peer, plan, Duration::from_millis(400)).await;
    }
    let text = fed.nodes[0].op().metrics().await;
    assert!(text.len() < 1 << 20, "/metrics is {} bytes", text.len());
    let series = text.lines().filter(|l| l.starts_with("ratio1_p2p_refused_by_peer_total{")).count();
    assert!(series <= ratio1::p2p::protocol::REFUSALS.len(), "{series} series");
    let log = serde_json::to_string(&fed.network_view(0).await["dauthLog"]).unwrap();
    assert!(log.len() < 64 * 1024, "dAuth log is {} bytes", log.len());

    // 3. 1,000 connections from fresh keys: the licensed peers stay
    //    connected (no re-admission) and keep hearing each other.
    let admitted_before = [
        counter(&fed, 0, "ratio1_p2p_admitted_total", "").await,
        counter(&fed, 1, "ratio1_p2p_admitted_total", "").await,
    ];
    let through = outsider::flood(target.clone(), 1000, 100).await;
    eprintln!("{through} of 1000 fresh-key connections got a handshake");
    for (i, &before) in admitted_before.iter().enumerate() {
        let node = fed.wait_peers(i, 1, 10).await;
        assert_eq!(node.status.unwrap().peers, 1);
        assert_eq!(
            counter(&fed, i, "ratio1_p2p_admitted_total", "").await,
            before,
            "node {i} lost its licensed peer during the flood"
        );
    }
    let at = counter(&fed, 1, "ratio1_p2p_heartbeats_received_total", "").await;
    wait_for(10, "heartbeats still flowing after the flood", || async {
        (counter(&fed, 1, "ratio1_p2p_heartbeats_received_total", "").await > at + 2.0).then_some(())
    })
    .await;

    // 4. A licensed peer: an envelope with ts = i64::MIN is dropped as
    //    stale and the node stays up.
    let spy = licensed_peer(&fed, "nd-short", 8);
    let spy_peer = spy.peer.clone();
    wait_for(20, "the short-licensed peer admitted", || async { listed(&fed, 0, &spy_peer).await.then_some(()) }).await;
    let stale = counter(&fed, 0, "ratio1_p2p_dropped_total", "reason=\"stale\"").await;
    let body = serde_json::json!({"license": spy.token, "licenseId": "nd-short", "class": "ND", "roles": ["worker"],
        "node": "spy", "offer": {}, "version": env!("CARGO_PKG_VERSION"), "addrs": []});
    let mut seq = 0;
    wait_for(20, "the i64::MIN envelope dropped as stale", || {
        seq += 1;
        let bytes = Envelope::seal(&spy.key, 7, seq, i64::MIN, "heartbeat", body.clone()).to_bytes();
        let (spy_ref, fed_ref) = (&spy, &fed);
        async move {
            let _ = spy_ref.handle.publish_raw(HEARTBEAT_TOPIC, bytes).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            (counter(fed_ref, 0, "ratio1_p2p_dropped_total", "reason=\"stale\"").await > stale).then_some(())
        }
    })
    .await;
    assert_eq!(http_get(fed.nodes[0].op().metrics_port, "/healthz").await.as_deref(), Some("ok"));

    // 5. Its 8 s license expires: disconnected, refused, forgotten.
    let expired = counter(&fed, 0, "ratio1_p2p_refused_total", "LicenseExpired").await;
    wait_for(30, "the expired license refused", || async {
        (counter(&fed, 0, "ratio1_p2p_refused_total", "LicenseExpired").await > expired).then_some(())
    })
    .await;
    for i in 0..2 {
        wait_for(15, "the expired peer gone from the view", || async {
            (!listed(&fed, i, &spy_peer).await).then_some(())
        })
        .await;
    }
    // Its later gossip is dropped: blocked, it cannot even deliver it.
    let fresh = Envelope::seal(&spy.key, 8, 1, p2p::now_us(), "heartbeat", body).to_bytes();
    let _ = spy.handle.publish_raw(HEARTBEAT_TOPIC, fresh).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!listed(&fed, 0, &spy_peer).await, "its later gossip brings it back nowhere");
    drop(spy);

    // 6. A license revoked while running (the file is re-read) is
    //    disconnected.
    let victim = licensed_peer(&fed, "nd-victim", 3600);
    let victim_peer = victim.peer.clone();
    for i in 0..2 {
        wait_for(20, "the victim admitted", || async { listed(&fed, i, &victim_peer).await.then_some(()) }).await;
    }
    let line = format!("{} nd-victim\n", license::key_id(&fed.issuer.public()));
    std::fs::write(&revoked, line).unwrap();
    for i in 0..2 {
        wait_for(20, "the revoked license refused", || async {
            (counter(&fed, i, "ratio1_p2p_refused_total", "LicenseRevoked").await >= 1.0).then_some(())
        })
        .await;
        assert!(!listed(&fed, i, &victim_peer).await);
    }
    drop(victim);
    let _ = std::fs::remove_file(&revoked);

    // 7. A rogue MND "oracle" (a licensed peer gone bad) whitelists an
    //    unlicensed key through dAuth and relays that key's heartbeats: the
    //    worker takes the answer as advice only; the stranger's gossip is
    //    dropped and it is never listed.
    let rogue_key = libp2p_identity::Keypair::generate_ed25519();
    let rogue_peer = rogue_key.public().to_peer_id().to_string();
    let rogue_license = license_for(&fed.issuer, &rogue_peer, Class::Mnd, "mnd-rogue", 3600);
    let stranger = libp2p_identity::Keypair::generate_ed25519();
    let stranger_peer = stranger.public().to_peer_id().to_string();
    let worker: libp2p::Multiaddr = fed.nodes[1].addr().parse().unwrap();
    let worker_peer: libp2p::PeerId = fed.nodes[1].peer_id.parse().unwrap();
    let unlicensed = counter(&fed, 1, "ratio1_p2p_dropped_total", "reason=\"not_licensed\"").await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let rogue = tokio::spawn(outsider::rogue_oracle(
        worker,
        worker_peer,
        rogue_key,
        rogue_license,
        stranger,
        move || stop.load(std::sync::atomic::Ordering::Relaxed),
        Duration::from_secs(90),
    ));
    wait_for(60, "the worker takes the rogue oracle's whitelist", || async {
        let v = fed.network_view(1).await;
        let listed =
            v["network"]["whitelist"].as_array().is_some_and(|w| w.iter().any(|p| p == stranger_peer.as_str()));
        (v["network"]["oracle"] == rogue_peer.as_str() && listed).then_some(())
    })
    .await;
    wait_for(30, "the stranger's relayed gossip dropped as unlicensed", || async {
        (counter(&fed, 1, "ratio1_p2p_dropped_total", "reason=\"not_licensed\"").await >= unlicensed + 3.0)
            .then_some(())
    })
    .await;
    assert!(!listed(&fed, 1, &stranger_peer).await, "a whitelist is not a license");
    // Its epoch clock (1 s epochs) is refused: the worker keeps its own.
    assert!(counter(&fed, 1, "ratio1_p2p_dropped_total", "reason=\"epochs_too_short\"").await >= 1.0);
    let v = fed.network_view(1).await;
    assert_ne!(v["epoch"]["lengthMs"], 1_000, "{}", v["epoch"]);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = rogue.await.unwrap();
    eprintln!("rogue oracle: {report:?}");
    assert!(report.admitted && report.asked >= 1 && report.published >= 3, "{report:?}");
}
