//! CSTORE between operator processes on clusters 4, 5, 6, each with its own
//! real etcd, replicating over real libp2p: the API through the CLI,
//! replication, concurrent writers, a lying peer, etcd killed under load,
//! a node down or frozen for a while, and a revocation.

use crate::harness::cstore::{self, cli, ok, value};
use crate::harness::federation::*;
use crate::harness::*;
use ratio1::cstore::record::{parse_value, Hlc, Record, Slot};
use ratio1::dauth::license::{self, Class, TrustStore};
use ratio1::metrics::Metrics;
use ratio1::p2p::{self, NetConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Waits until every node's replica is loaded.
async fn all_up(fed: &Federation) {
    for n in &fed.nodes {
        let port = n.op().api_port;
        wait_for(60, &format!("CSTORE up on {}", n.name), || async move {
            let body = http_get(port, "/v1/cstore/status").await?;
            body.contains("\"up\":true").then_some(())
        })
        .await;
    }
}

/// Waits until `key` holds `want` on every running node (`None`: absent).
async fn everywhere(fed: &Federation, key: &str, want: Option<serde_json::Value>, secs: u64) {
    for n in fed.nodes.iter().filter(|n| n.op.is_some()) {
        let port = n.op().api_port;
        let (key, want) = (key.to_string(), want.clone());
        wait_for(secs, &format!("{key} = {want:?} on {}", n.name), || {
            let (key, want) = (key.clone(), want.clone());
            async move { (value(port, &key).await == want).then_some(()) }
        })
        .await;
    }
}

#[tokio::test]
async fn cstore_api_replication_and_hostile_writers() {
    let _turn = CLUSTERS_4_TO_6.lock().await;
    let (fed, mut etcds) = cstore::federation(&[4, 5, 6]).await;
    for i in 0..3 {
        fed.wait_peers(i, 2, 60).await;
    }
    all_up(&fed).await;
    let (a, b) = (fed.nodes[0].op().api_port, fed.nodes[1].op().api_port);
    let (pa, pb) = (fed.nodes[0].peer_id.clone(), fed.nodes[1].peer_id.clone());

    // 1. Every API call, through the CLI, on one node.
    ok(a, &["set", "~/api/greeting", r#"{"text": "hello"}"#]).await;
    assert_eq!(ok(a, &["get", "~/api/greeting"]).await, r#"{"text":"hello"}"#);
    assert_eq!(ok(a, &["get", &format!("node/{pa}/api/greeting")]).await, r#"{"text":"hello"}"#, "~/ is node/<me>/");
    ok(a, &["hset", "~/api/apps", "web", "1"]).await;
    ok(a, &["hset", "~/api/apps", "db", "2"]).await;
    assert_eq!(ok(a, &["hget", "~/api/apps", "web"]).await, "1");
    assert_eq!(ok(a, &["hgetall", "~/api/apps"]).await, "db\t2\nweb\t1");
    assert_eq!(
        ok(a, &["keys", "~/api/"]).await,
        format!("node/{pa}/api/apps\nnode/{pa}/api/greeting"),
        "keys lists flat keys and hash names"
    );
    assert_eq!(ok(a, &["hdel", "~/api/apps", "db"]).await, "deleted");
    assert_eq!(ok(a, &["hgetall", "~/api/apps"]).await, "web\t1");
    assert_eq!(ok(a, &["del", "~/api/greeting"]).await, "deleted");
    let (found, _, err) = cli(a, &["get", "~/api/greeting"]).await;
    assert!(!found && err.contains("not found"), "a deleted key reads as absent: {err}");
    assert_eq!(ok(a, &["keys", "~/api/"]).await, format!("node/{pa}/api/apps"));

    // 2. Bad input: a non-zero exit and one line that says why; nothing written.
    let long_key = format!("~/{}", "k".repeat(300));
    let big = format!("\"{}\"", "x".repeat(40_000));
    let theirs = format!("node/{pb}/x");
    let forged_revocation = format!("revocation/{}/nd-1", license::key_id(&fed.issuer.public()));
    for (args, says) in [
        (vec!["set", "~/api/k", "not json"], "not JSON"),
        (vec!["set", &long_key, "1"], "at most 256"),
        (vec!["set", "~/api/big", &big], "at most 32768"),
        (vec!["set", &theirs, "1"], "not writable by this node"),
        (vec!["set", "~/api/k", "1", "--ttl=0"], "ttl"),
        (vec!["set", "~/api/k k", "1"], "only printable ASCII"),
        (vec!["set", &forged_revocation, r#"{"proof": "x"}"#], "signed by that issuer"),
        (vec!["set", "revocation/0123456789abcdef/nd-1", r#"{"proof": "x"}"#], "not trusted by this node"),
    ] {
        let (good, _, err) = cli(a, &args).await;
        assert!(!good, "{args:?} must fail");
        assert!(err.contains(says) && err.lines().count() == 1, "{args:?}: {err:?} should say {says:?} in one line");
    }
    assert_eq!(ok(a, &["keys", "~/api/"]).await, format!("node/{pa}/api/apps"), "refused writes left nothing");

    // 3. Watch: every change under a prefix, as it happens.
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_ratio1"))
        .args(["cstore", "--endpoint", &format!("http://127.0.0.1:{a}"), "watch", "~/w/"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = {
        use tokio::io::AsyncBufReadExt;
        tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines()
    };
    let lines = tokio::sync::Mutex::new(lines);
    // The watch is live once it reports a write made after it started.
    let first = wait_for(30, "the watch to report a write", || async {
        ok(a, &["set", "~/w/ping", "0"]).await;
        let mut lines = lines.lock().await;
        tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await.ok()?.ok()?
    })
    .await;
    let mut lines = lines.into_inner();
    assert!(first.contains("/w/ping"), "{first}");
    ok(a, &["hset", "~/w/h", "f", "[1,2]"]).await;
    ok(a, &["del", "~/w/ping"]).await;
    let mut seen = vec![];
    while seen.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
        if !line.contains("\"value\":0") {
            seen.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
        }
    }
    assert_eq!((seen[0]["field"].as_str(), &seen[0]["value"]), (Some("f"), &serde_json::json!([1, 2])));
    assert_eq!((seen[1]["key"].as_str(), &seen[1]["deleted"]), (Some(&*format!("node/{pa}/w/ping")), &true.into()));
    drop(watch);

    // 4. Replication: writes on one node are read on all, TTL included.
    for i in 0..50 {
        ok(a, &["set", &format!("~/r/{i}"), &i.to_string()]).await;
    }
    everywhere(&fed, &format!("node/{pa}/r/49"), Some(49.into()), 30).await;
    cstore::converged(&fed, 30, "replicas converge after 50 writes").await;
    // The oracle (node 0) records the dAuth requests it answered in CSTORE,
    // replicated like any record: both other nodes asked it.
    let c = fed.nodes[2].op().api_port;
    let dauth = wait_for(30, "node 0's dAuth records on node 2", || async {
        let log = ok(c, &["hgetall", &format!("node/{pa}/dauth")]).await;
        fed.nodes[1..].iter().all(|n| log.contains(&format!("{}\t", n.peer_id))).then_some(log)
    })
    .await;
    assert!(dauth.contains("\"result\":\"accepted\""), "{dauth}");
    ok(a, &["set", "~/ephemeral", "\"soon gone\"", "--ttl", "3"]).await;
    let eph = format!("node/{pa}/ephemeral");
    everywhere(&fed, &eph, Some("soon gone".into()), 10).await;
    everywhere(&fed, &eph, None, 15).await;

    // 5. Concurrent writes to one shared key (a revocation two nodes carry,
    //    with different proofs) converge to one value everywhere.
    let key = license::key_id(&fed.issuer.public());
    let rkey = format!("revocation/{key}/nd-unused");
    let proofs: Vec<String> = (1..=2)
        .map(|at| serde_json::json!({ "proof": license::issue_revocation(&fed.issuer, "nd-unused", at) }).to_string())
        .collect();
    for _ in 0..3 {
        let path = format!("/v1/cstore/set?key={rkey}");
        let (ra, rb) = tokio::join!(http_send(a, "PUT", &path, &proofs[0]), http_send(b, "PUT", &path, &proofs[1]));
        assert_eq!((ra.unwrap().0, rb.unwrap().0), (200, 200));
    }
    cstore::converged(&fed, 30, "replicas converge after concurrent writes").await;
    let winner = value(a, &rkey).await.unwrap();
    everywhere(&fed, &rkey, Some(winner), 5).await;

    // 6. A licensed peer that lies: a record for another node's key, and one
    //    whose value was changed after signing. Both are dropped, counted and
    //    never relayed; its honest record, sent after them, arrives
    //    everywhere (so the forged ones would have, had they been relayed).
    //    It never answers anti-entropy either (its service channel is never
    //    read): the replicas that pick it for a round must still heal.
    let forger_key = libp2p_identity::Keypair::generate_ed25519();
    let me = forger_key.public().to_peer_id();
    let token = license_for(&fed.issuer, &me.to_string(), Class::Nd, "nd-forger", 3600);
    let mut cfg = NetConfig::new(forger_key.clone(), token, TrustStore::new([fed.issuer.public()], []));
    cfg.node_name = "forger".into();
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.bootstrap = vec![fed.nodes[0].addr().parse().unwrap()];
    cfg.tuning.heartbeat_interval = Duration::from_secs(1);
    let (link, _rx) = p2p::ServiceLink::channel(16);
    cfg.cstore = Some(link);
    let (forger, _task) =
        p2p::start(cfg, Default::default(), Arc::new(Metrics::default()), tokio::sync::watch::channel(0).0).unwrap();
    let a_peer: libp2p_identity::PeerId = pa.parse().unwrap();
    wait_for(30, "the forger to be admitted by node 0", || async {
        forger.connected_peers().contains(&a_peer).then_some(())
    })
    .await;
    let now = ratio1::p2p::now_ms() as u64;
    let rec =
        |key: String, v: &str| Record::sign(&forger_key, Slot::flat(&key), parse_value(v).ok(), Hlc::new(now, 0), None);
    let stolen = rec(format!("node/{pa}/stolen"), "1");
    let mut tampered = rec(format!("node/{me}/tampered"), "1");
    tampered.value = parse_value("2").ok();
    let good = rec(format!("node/{me}/good"), "\"honest\"");
    let batch = |r: &Record| {
        serde_json::value::RawValue::from_string(serde_json::json!({ "records": [r] }).to_string()).unwrap()
    };
    let not_owner = counter(&fed, 0, "ratio1_cstore_rejected_total", "reason=\"not_owner\"").await;
    let bad_sig = counter(&fed, 0, "ratio1_cstore_rejected_total", "reason=\"bad_signature\"").await;
    wait_for(30, "node 0 to reject both forged batches", || async {
        let _ = forger.publish_service(p2p::protocol::RECORDS_KIND, batch(&stolen)).await;
        let _ = forger.publish_service(p2p::protocol::RECORDS_KIND, batch(&tampered)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = counter(&fed, 0, "ratio1_cstore_rejected_total", "reason=\"not_owner\"").await;
        let s = counter(&fed, 0, "ratio1_cstore_rejected_total", "reason=\"bad_signature\"").await;
        (n > not_owner && s > bad_sig).then_some(())
    })
    .await;
    let _ = forger.publish_service(p2p::protocol::RECORDS_KIND, batch(&good)).await;
    everywhere(&fed, &format!("node/{me}/good"), Some("honest".into()), 30).await;
    cstore::converged(&fed, 30, "replicas converge with the forger's honest record").await;
    for n in &fed.nodes {
        let port = n.op().api_port;
        assert_eq!(value(port, &format!("node/{pa}/stolen")).await, None, "{}: a stolen key", n.name);
        assert_eq!(value(port, &format!("node/{me}/tampered")).await, None, "{}: a tampered record", n.name);
    }
    drop(forger);

    // 7. etcd killed and restarted under load: no acknowledged write is lost.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(vec![]));
    let failed = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let writer = {
        let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
        tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                match http_send(a, "PUT", &format!("/v1/cstore/set?key=~/load/{i}"), &i.to_string()).await {
                    Some((200, _)) => acked.lock().unwrap().push(i),
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                i += 1;
            }
        })
    };
    let acked_count = || acked.lock().unwrap().len();
    wait_for(30, "100 acknowledged writes", || async { (acked_count() >= 100).then_some(()) }).await;
    etcds[0].kill().await;
    wait_for(30, "writes to fail while etcd is down", || async { (failed.load(Ordering::Relaxed) > 0).then_some(()) })
        .await;
    let before_restart = acked_count();
    etcds[0].restart().await;
    wait_for(60, "100 more acknowledged writes after etcd's restart", || async {
        (acked_count() >= before_restart + 100).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    let keys = ok(a, &["keys", "~/load/"]).await;
    let stored: std::collections::BTreeSet<&str> = keys.lines().collect();
    let lost: Vec<u32> =
        acked.iter().copied().filter(|i| !stored.contains(format!("node/{pa}/load/{i}").as_str())).collect();
    assert!(lost.is_empty(), "acknowledged writes lost across etcd's crash: {lost:?}");
    cstore::converged(&fed, 60, "replicas converge after etcd's crash").await;
    let last = acked.last().unwrap();
    everywhere(&fed, &format!("node/{pa}/load/{last}"), Some((*last).into()), 5).await;
    eprintln!(
        "etcd crash: {} writes acknowledged, {} refused while it was down",
        acked.len(),
        failed.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn cstore_heals_a_node_that_was_away_and_replicates_revocations() {
    let _turn = CLUSTERS_4_TO_6.lock().await;
    let (mut fed, _etcds) = cstore::federation(&[4, 5, 6]).await;
    for i in 0..3 {
        fed.wait_peers(i, 2, 60).await;
    }
    all_up(&fed).await;
    let a = fed.nodes[0].op().api_port;
    let pa = fed.nodes[0].peer_id.clone();
    ok(a, &["set", "~/doomed", "1"]).await;
    everywhere(&fed, &format!("node/{pa}/doomed"), Some(1.into()), 30).await;

    // 1. A node down while 300 writes and a delete happen catches up
    //    through anti-entropy once back (it missed the gossip).
    let opts = fed.nodes[2].op().opts.clone();
    fed.nodes[2].op = None;
    for i in 0..300 {
        ok(a, &["set", &format!("~/missed/{i}"), &i.to_string()]).await;
    }
    ok(a, &["del", "~/doomed"]).await;
    fed.nodes[2].op = Some(Operator::start(opts).await);
    cstore::converged(&fed, 90, "the restarted node catches up").await;
    everywhere(&fed, &format!("node/{pa}/missed/299"), Some(299.into()), 5).await;
    everywhere(&fed, &format!("node/{pa}/doomed"), None, 5).await;
    let healed = counter(&fed, 2, "ratio1_cstore_anti_entropy_records_total", "").await;
    assert!(healed >= 300.0, "the restarted node fetched {healed} records by anti-entropy, expected the 300 it missed");
    let status = ok(fed.nodes[2].op().api_port, &["status"]).await;
    let named = fed.nodes[..2].iter().any(|n| status.contains(&format!("with {}", n.peer_id)));
    assert!(status.contains("last anti-entropy round") && named, "{status}");

    // 2. A node frozen (SIGSTOP: its connections stay open, it answers
    //    nothing) while writes happen converges once it resumes.
    let pid = fed.nodes[1].op().pid();
    let signal = |sig: &str| std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
    assert!(signal("-STOP").success());
    for i in 0..100 {
        ok(a, &["set", &format!("~/frozen/{i}"), &i.to_string()]).await;
    }
    // Frozen long enough for the others to notice (heartbeat timeout 4 s).
    fed.wait_peers(0, 1, 30).await;
    assert!(signal("-CONT").success());
    cstore::converged(&fed, 90, "the frozen node catches up").await;
    everywhere(&fed, &format!("node/{pa}/frozen/99"), Some(99.into()), 5).await;

    // 3. A revocation written on one node reaches every node, which
    //    disconnects the revoked license's holder: a peer that runs no
    //    CSTORE, so it never learns of its own revocation and keeps trying.
    let holder_key = libp2p_identity::Keypair::generate_ed25519();
    let holder_peer = holder_key.public().to_peer_id().to_string();
    let token = license_for(&fed.issuer, &holder_peer, Class::Nd, "nd-holder", 3600);
    let mut cfg = NetConfig::new(holder_key, token, TrustStore::new([fed.issuer.public()], []));
    cfg.node_name = "holder".into();
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.bootstrap = fed.nodes.iter().map(|n| n.addr().parse().unwrap()).collect();
    cfg.tuning.heartbeat_interval = Duration::from_secs(1);
    let (_holder, _task) =
        p2p::start(cfg, Default::default(), Arc::new(Metrics::default()), tokio::sync::watch::channel(0).0).unwrap();
    let connected = |v: &serde_json::Value| v["peers"][&holder_peer]["connected"] == true;
    for i in 0..3 {
        wait_for(30, &format!("node {i} to admit the holder"), || async {
            connected(&fed.network_view(i).await).then_some(())
        })
        .await;
    }
    let before: Vec<f64> = {
        let mut v = vec![];
        for i in 0..3 {
            v.push(counter(&fed, i, "ratio1_p2p_refused_total", "reason=\"LicenseRevoked\"").await);
        }
        v
    };
    let dir = log_dir().join(format!("issuer-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("issuer.key");
    std::fs::write(&key_file, license::encode_secret(&fed.issuer)).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ratio1"))
        .args(["license", "revoke", "--issuer-key"])
        .arg(&key_file)
        .args(["--id", "nd-holder", "--endpoint", &format!("http://127.0.0.1:{a}")])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "license revoke: {}", String::from_utf8_lossy(&out.stderr));
    for (i, &was) in before.iter().enumerate() {
        wait_for(30, &format!("node {i} to disconnect the revoked holder"), || async {
            let refused = counter(&fed, i, "ratio1_p2p_refused_total", "reason=\"LicenseRevoked\"").await;
            (refused > was && !connected(&fed.network_view(i).await)).then_some(())
        })
        .await;
    }
    let revoked = format!("revocation/{}/nd-holder", license::key_id(&fed.issuer.public()));
    everywhere(&fed, &revoked, value(a, &revoked).await, 30).await;
    for i in 0..3 {
        assert_eq!(fed.wait_peers(i, 2, 30).await.status.unwrap().peers, 2, "the three nodes stay together");
    }
    let _ = std::fs::remove_dir_all(dir);
}
