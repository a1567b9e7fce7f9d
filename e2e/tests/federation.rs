//! Federation over real libp2p (TCP on 127.0.0.1) between operator
//! processes on clusters 4, 5, 6, with licenses, dAuth and heartbeats.

use crate::harness::federation::*;
use crate::harness::*;
use libp2p_identity::ed25519;
use ratio1::conditions::find;
use ratio1::dauth::license::{self, Class, TrustStore};
use ratio1::metrics::Metrics;
use ratio1::p2p::{self, envelope::Envelope, NetConfig, HEARTBEAT_TOPIC};
use std::sync::Arc;

/// A libp2p node run inside the test, dialing every operator.
async fn outsider(fed: &Federation, keypair: libp2p_identity::Keypair, token: String) -> p2p::NetworkHandle {
    let trust = TrustStore::new([fed.issuer.public()], []);
    let mut cfg = NetConfig::new(keypair, token, trust);
    cfg.node_name = "outsider".into();
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.bootstrap = fed.nodes.iter().map(|n| n.addr().parse().unwrap()).collect();
    cfg.tuning.heartbeat_interval = std::time::Duration::from_secs(1);
    p2p::start(cfg, Default::default(), Arc::new(Metrics::default()), tokio::sync::watch::channel(0).0).unwrap().0
}

/// Publishes `bytes` from `spy` until node `i` counts more drops for
/// `reason` than `was` (the mesh may need a moment after admission).
async fn publish_until_dropped(
    fed: &Federation,
    spy: &p2p::NetworkHandle,
    i: usize,
    bytes: Vec<u8>,
    reason: &str,
    was: f64,
    what: &str,
) {
    let filter = format!("reason=\"{reason}\"");
    wait_for(30, &format!("node {i} drops {what}"), || {
        let (bytes, filter) = (bytes.clone(), &filter);
        async move {
            let _ = spy.publish_raw(HEARTBEAT_TOPIC, bytes).await;
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            (metric(&metrics_of(fed, i).await, "ratio1_p2p_dropped_total", filter) > was).then_some(())
        }
    })
    .await;
}

async fn metrics_of(fed: &Federation, i: usize) -> String {
    fed.nodes[i].op().metrics().await
}

#[tokio::test]
async fn licensed_clusters_federate_and_refuse_the_rest() {
    let _turn = CLUSTERS_4_TO_6.lock().await;
    // Short epochs (the shortest allowed with 1 s heartbeats), set on the
    // oracle only: the workers take its clock through dAuth.
    let epochs = ["--epoch-length-secs=10".to_string(), "--epoch-genesis-ms=0".to_string()];
    let mut fed = Federation::start_each(&[4, 5, 6], |k, o| {
        if k == 0 {
            o.extra_args.extend(epochs.iter().cloned())
        }
    })
    .await;

    // 1. Three licensed clusters form a network.
    for i in 0..3 {
        let node = fed.wait_peers(i, 2, 60).await;
        let st = node.status.unwrap();
        assert_eq!(
            st.peer_id.as_deref(),
            Some(fed.nodes[i].peer_id.as_str()),
            "the PeerId on the wire is the Secret's"
        );
        let conds = &st.conditions;
        assert_eq!(find(conds, "Connected").map(|c| c.status.as_str()), Some("True"), "{conds:?}");
        assert_eq!(
            find(conds, "Licensed").map(|c| (c.status.as_str(), c.reason.as_str())),
            Some(("True", "LicenseValid"))
        );
        assert!(st.last_heartbeat.is_some());
    }
    // dAuth: the workers asked the oracle and hold its signed configuration.
    for i in 1..3 {
        let fed_ref = &fed;
        let view = wait_for(30, "dAuth answer from the oracle", || async move {
            let v = fed_ref.network_view(i).await;
            v["network"].is_object().then_some(v)
        })
        .await;
        assert_eq!(view["network"]["oracle"], fed.nodes[0].peer_id.as_str());
        assert!(view["network"]["oracles"].as_array().unwrap().iter().any(|o| o == fed.nodes[0].peer_id.as_str()));
    }
    let oracle_view = fed.network_view(0).await;
    assert!(
        http_get(fed.nodes[0].op().metrics_port, "/v1/network").await.is_none(),
        "peers and licenses are served on the local API only, not on the metrics port"
    );
    assert!(oracle_view["dauthLog"].as_array().unwrap().iter().any(|r| r["result"] == "accepted"));
    assert!(metric(&metrics_of(&fed, 0).await, "ratio1_dauth_requests_total", "accepted") >= 2.0);

    // `ratio1 network peers` prints the other two.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ratio1"))
        .args(["network", "peers", "--endpoint"])
        .arg(format!("http://127.0.0.1:{}", fed.nodes[0].op().api_port))
        .output()
        .await
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    for n in &fed.nodes[1..] {
        assert!(table.contains(&n.peer_id), "{table}");
    }

    // 1b. Epochs: after a whole epoch together, the oracle saw both peers'
    // heartbeats nearly all the time (a perfect run scores 255·9/10 → 230).
    let fed_ref = &fed;
    let view = wait_for(45, "a closed epoch in which node 0 saw both peers nearly always", || async move {
        let v = fed_ref.network_view(0).await;
        let seen = v["epoch"]["observed"].as_object()?;
        let all =
            fed_ref.nodes[1..].iter().all(|n| seen.get(&n.peer_id).and_then(|a| a.as_u64()).is_some_and(|a| a >= 200));
        all.then_some(v)
    })
    .await;
    let e = &view["epoch"];
    let now = ratio1::p2p::now_ms() as u64;
    // (The view's epoch is refreshed every 250 ms: it may be one behind.)
    let current = e["current"].as_u64().unwrap();
    assert!(current == now / 10_000 || current + 1 == now / 10_000, "epoch = ⌊(t − genesis) / length⌋ ({e})");
    assert_eq!(e["last"].as_u64().unwrap() + 1, e["current"].as_u64().unwrap());
    assert_eq!(e["source"], "flags");
    // A worker runs on the oracle's clock, given in its dAuth answer.
    let fed_ref = &fed;
    let oracle = fed.nodes[0].peer_id.clone();
    let worker = wait_for(20, "worker 1 on the oracle's epoch clock", || async move {
        let v = fed_ref.network_view(1).await;
        (v["epoch"]["lengthMs"] == 10_000).then_some(v)
    })
    .await;
    assert_eq!(worker["epoch"]["source"], format!("dauth:{oracle}"));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ratio1"))
        .args(["network", "epoch", "--endpoint"])
        .arg(format!("http://127.0.0.1:{}", fed.nodes[0].op().api_port))
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success() && printed.contains("ends in") && printed.contains(&fed.nodes[2].peer_id),
        "{printed}"
    );
    // The R1Node shows the clock's epoch (refreshed at least every 30 s).
    let st = fed.wait_peers(0, 2, 10).await.status.unwrap();
    let shown = st.epoch.expect("status.epoch while the network runs");
    assert!((now / 10_000).saturating_sub(4) <= shown && shown <= now / 10_000 + 1, "status.epoch {shown}");
    assert!(st.availability.is_none(), "availability is the oracles' to agree: not claimed");

    // 2. A 4th node with a bad license is refused by all three.
    let stranger = ed25519::Keypair::generate();
    type TokenFor<'a> = Box<dyn Fn(&str) -> String + 'a>;
    let cases: Vec<(&str, TokenFor)> = vec![
        ("LicenseMissing", Box::new(|_| String::new())),
        ("LicenseExpired", Box::new(|p| license_for(&fed.issuer, p, Class::Nd, "nd-old", -10))),
        ("WrongPeer", Box::new(|_| license_for(&fed.issuer, &fed.nodes[1].peer_id, Class::Nd, "nd-x", 3600))),
        ("UnknownIssuer", Box::new(move |p| license_for(&stranger, p, Class::Nd, "nd-y", 3600))),
    ];
    for (reason, token) in cases {
        let key = libp2p_identity::Keypair::generate_ed25519();
        let peer = key.public().to_peer_id().to_string();
        let filter = format!("reason=\"{reason}\"");
        let before: Vec<f64> = {
            let mut v = vec![];
            for i in 0..3 {
                v.push(metric(&metrics_of(&fed, i).await, "ratio1_p2p_refused_total", &filter));
            }
            v
        };
        let rogue = outsider(&fed, key, token(&peer)).await;
        for (i, &b) in before.iter().enumerate() {
            let (fed_ref, f) = (&fed, &filter);
            wait_for(30, &format!("node {i} refuses a {reason} peer"), || async move {
                (metric(&metrics_of(fed_ref, i).await, "ratio1_p2p_refused_total", f) > b).then_some(())
            })
            .await;
            let view = fed.network_view(i).await;
            assert!(view["peers"].get(&peer).is_none(), "a refused peer is never listed");
        }
        drop(rogue);
    }
    for i in 0..3 {
        assert_eq!(fed.wait_peers(i, 2, 10).await.status.unwrap().peers, 2);
    }

    // 3. Forged and replayed heartbeats from an admitted peer are dropped;
    //    a replay is the very same bytes published again, and the honest
    //    sender's later heartbeats still pass.
    let key = libp2p_identity::Keypair::generate_ed25519();
    let spy_peer = key.public().to_peer_id().to_string();
    let spy_license = license_for(&fed.issuer, &spy_peer, Class::Nd, "nd-spy", 3600);
    let spy = outsider(&fed, key.clone(), spy_license.clone()).await;
    for i in 0..3 {
        let (fed_ref, sp) = (&fed, &spy_peer);
        wait_for(30, "the licensed outsider admitted", || async move {
            fed_ref.network_view(i).await["peers"].get(sp).is_some().then_some(())
        })
        .await;
    }
    let body = serde_json::json!({"license": spy_license, "licenseId": "nd-spy", "class": "ND", "roles": ["worker"], "node": "spy",
        "offer": {}, "version": env!("CARGO_PKG_VERSION"), "addrs": []});
    let boot = rand::random::<u64>();
    let mut forged = Envelope::seal(&key, boot, 1, p2p::now_us(), "heartbeat", body.clone());
    let mut changed = forged.body_value();
    changed["node"] = "someone-else".into();
    forged.replace_body(&changed);
    let original = Envelope::seal(&key, boot, 2, p2p::now_us(), "heartbeat", body).to_bytes();
    let dropped = |text: &str, reason: &str| metric(text, "ratio1_p2p_dropped_total", &format!("reason=\"{reason}\""));
    let received = |text: &str| metric(text, "ratio1_p2p_heartbeats_received_total", "");
    let mut before = vec![];
    for i in 0..3 {
        let m = metrics_of(&fed, i).await;
        before.push((dropped(&m, "bad_signature"), dropped(&m, "replay")));
    }
    for (i, &(was, _)) in before.iter().enumerate() {
        publish_until_dropped(&fed, &spy, i, forged.to_bytes(), "bad_signature", was, "a forged heartbeat").await;
    }
    // The original once (accepted), then the same bytes again (replays).
    spy.publish_raw(HEARTBEAT_TOPIC, original.clone()).await.unwrap();
    for (i, &(_, was)) in before.iter().enumerate() {
        publish_until_dropped(&fed, &spy, i, original.clone(), "replay", was, "the same heartbeat bytes replayed")
            .await;
    }
    // The spy's own heartbeats (its event loop seals fresh ones) still pass.
    for i in 0..3 {
        let at = received(&metrics_of(&fed, i).await);
        let (fed_ref, sp) = (&fed, &spy_peer);
        wait_for(30, "the honest sender's later heartbeats accepted", || async move {
            let m = metrics_of(fed_ref, i).await;
            let view = fed_ref.network_view(i).await;
            let hb = view["peers"][sp.as_str()]["lastHeartbeat"].as_i64().unwrap_or(0);
            (received(&m) > at && p2p::now_ms() - hb < 2_000).then_some(())
        })
        .await;
    }
    drop(spy);

    // 4. A killed operator goes stale for the others; restarted, it rejoins
    //    with the same PeerId.
    let mut gone = fed.nodes[2].op.take().unwrap();
    gone.kill().await;
    for i in 0..2 {
        let node = fed.wait_peers(i, 1, 40).await;
        assert_eq!(node.status.unwrap().peers, 1);
    }
    fed.nodes[2].op = Some(Operator::start(fed.nodes[2].opts.clone()).await);
    for i in 0..3 {
        fed.wait_peers(i, 2, 60).await;
    }
    let view = fed.network_view(0).await;
    assert!(view["peers"].get(&fed.nodes[2].peer_id).is_some(), "same PeerId after restart");
    let _ = license::encode_public(&fed.issuer.public());

    // 5. Deleting the R1Node stops federation (the others see it go and its
    //    network stops); recreating it rejoins with the same PeerId.
    let api: kube::Api<ratio1::crd::R1Node> = kube::Api::all(client(fed.nodes[2].cluster).await);
    let spec = api.get(&fed.nodes[2].name).await.unwrap().spec;
    api.delete(&fed.nodes[2].name, &Default::default()).await.unwrap();
    wait_for(20, "the deleted node's network stopped", || async {
        let v = fed.network_view(2).await;
        (v["running"] == false && v["peers"].as_object().is_some_and(|p| p.is_empty())).then_some(())
    })
    .await;
    for i in 0..2 {
        fed.wait_peers(i, 1, 30).await;
        let fed_ref = &fed;
        wait_for(20, "the deleted node forgotten", || async move {
            fed_ref.network_view(i).await["peers"].get(&fed_ref.nodes[2].peer_id).is_none().then_some(())
        })
        .await;
    }
    let node = ratio1::crd::R1Node::new(&fed.nodes[2].name, spec);
    api.create(&Default::default(), &node).await.unwrap();
    for i in 0..3 {
        fed.wait_peers(i, 2, 60).await;
    }
    let view = fed.network_view(0).await;
    assert!(view["peers"].get(&fed.nodes[2].peer_id).is_some(), "same PeerId after the R1Node came back");
}
