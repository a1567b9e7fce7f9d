//! R1FS across clusters 4 (A), 5 (B) and 6 (C): operator processes over
//! real libp2p, each with its block store on its own data directory and
//! its own etcd for CSTORE. Content added on one cluster is read on
//! another (fetched block by block, each verified); a block corrupted on
//! disk is detected and fetched again; an unlicensed peer gets nothing; an
//! R1Model by CID is replicated to `spec.replication` nodes and repaired
//! when a holder leaves.

use crate::harness::cstore;
use crate::harness::federation::*;
use crate::harness::outsider::{self, Plan};
use crate::harness::*;
use kube::api::{Api, Patch, PatchParams};
use ratio1::crd::R1Model;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + seed as usize) % 251) as u8).collect()
}

/// `ratio1 fs ARGS --endpoint <node's API>`: success, raw stdout, stderr.
async fn fs(api_port: u16, args: &[&str]) -> (bool, Vec<u8>, String) {
    cstore::command_bytes("fs", api_port, args).await
}

async fn fs_ok(api_port: u16, args: &[&str]) -> String {
    let (ok, out, err) = fs(api_port, args).await;
    assert!(ok, "ratio1 fs {args:?} failed: {err}");
    String::from_utf8(out).unwrap().trim().to_string()
}

fn only_hash(path: &Path) -> String {
    ratio1::r1fs::add::only_hash(path, false, &mut |_| {}).unwrap().cid.to_string()
}

fn same_tree(a: &Path, b: &Path) {
    if a.is_file() {
        assert!(std::fs::read(a).unwrap() == std::fs::read(b).unwrap(), "{} differs from {}", b.display(), a.display());
        return;
    }
    let names = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        v.sort();
        v
    };
    assert_eq!(names(a), names(b), "{} and {} list the same entries", a.display(), b.display());
    for n in names(a) {
        same_tree(&a.join(&n), &b.join(&n));
    }
}

/// The model's status once `f` accepts it.
async fn wait_model<T>(api: &Api<R1Model>, name: &str, secs: u64, what: &str, f: impl Fn(&R1Model) -> Option<T>) -> T {
    wait_for(secs, what, || async {
        let m = api.get(name).await.ok()?;
        f(&m)
    })
    .await
}

fn ready(m: &R1Model) -> Option<(String, String)> {
    let c = m.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn r1fs_moves_verified_blocks_between_admitted_clusters_and_keeps_replicas() {
    let _turn = CLUSTERS_4_TO_6.lock().await;
    let run = format!("{}-{}", std::process::id(), rand::random::<u32>());
    let data: Vec<PathBuf> = (4..=6).map(|c| log_dir().join(format!("r1fs-data-c{c}-{run}"))).collect();
    let (mut fed, _etcds) = cstore::federation_each(&[4, 5, 6], |k, o| {
        o.extra_args.push(format!("--data-dir={}", data[k].display()));
    })
    .await;
    for i in 0..3 {
        fed.wait_peers(i, 2, 60).await;
    }
    let api: Vec<u16> = fed.nodes.iter().map(|n| n.op().api_port).collect();
    let work = log_dir().join(format!("r1fs-work-{run}"));
    std::fs::create_dir_all(work.join("tree/sub")).unwrap();
    let big = work.join("big.bin");
    std::fs::write(&big, pattern(10 * 1024 * 1024 + 7, 1)).unwrap();
    std::fs::write(work.join("tree/a.txt"), b"a").unwrap();
    std::fs::write(work.join("tree/empty"), b"").unwrap();
    std::fs::write(work.join("tree/sub/b.bin"), pattern(300 * 1024, 2)).unwrap();

    // 1. Added on A: the CID is the one `--only-hash` (and IPFS) gives.
    let cid = fs_ok(api[0], &["add", big.to_str().unwrap()]).await;
    assert_eq!(cid, only_hash(&big));
    let ls = fs_ok(api[0], &["ls"]).await;
    assert!(ls.contains(&cid) && ls.contains("user"), "{ls}");

    // 2. Read on C, which lacks it: fetched from A, verified, identical.
    let before = counter(&fed, 2, "ratio1_r1fs_blocks_fetched_total", "").await;
    let (ok, bytes, err) = fs(api[2], &["cat", &cid]).await;
    assert!(ok, "cat on C: {err}");
    assert!(bytes == std::fs::read(&big).unwrap(), "C serves the bytes A added ({} bytes)", bytes.len());
    let fetched = counter(&fed, 2, "ratio1_r1fs_blocks_fetched_total", "").await - before;
    assert!(fetched >= 41.0, "C fetched the 41 leaves and the root: {fetched}");
    assert!(counter(&fed, 0, "ratio1_r1fs_blocks_served_total", "").await >= 41.0);

    // 3. A directory added on B, written out on C.
    let tree = fs_ok(api[1], &["add", work.join("tree").to_str().unwrap()]).await;
    assert_eq!(tree, only_hash(&work.join("tree")));
    let out = work.join("tree-from-c");
    fs_ok(api[2], &["get", &tree, out.to_str().unwrap()]).await;
    same_tree(&work.join("tree"), &out);

    // 3a. A verifiable CAR of a path, from the gateway of A (which lacks
    // the directory: it fetches it first): the path's blocks, then the
    // file's DAG depth-first, every block hashing to its CID.
    let mut car = vec![];
    let url = format!("http://127.0.0.1:{}/ipfs/{tree}/sub/b.bin?format=car", api[0]);
    ratio1::r1fs::api::download(&url, &mut car, &|_| {}).await.unwrap();
    let mut reader = iroh_car::CarReader::new(car.as_slice()).await.unwrap();
    let roots: Vec<String> = reader.header().roots().iter().map(|c| c.to_string()).collect();
    assert_eq!(roots, std::slice::from_ref(&tree));
    let mut blocks = vec![];
    while let Some((cid, b)) = reader.next_block().await.unwrap() {
        assert!(ratio1::r1fs::store::verifies(&cid, &b), "{cid} in the CAR does not hash to its CID");
        blocks.push(cid.to_string());
    }
    assert_eq!(blocks.len(), 5, "the root, sub/, b.bin's root and its 2 leaves: {blocks:?}");
    assert_eq!(blocks[0], tree);
    assert_eq!(blocks[2], only_hash(&work.join("tree/sub/b.bin")));

    // 3b. Sealed content: added on A with a key, its blocks held and served
    // as ciphertext; C opens it with the key only.
    let secret = work.join("secret.txt");
    let plain: Vec<u8> = b"model weights, confidential\n".repeat(20_000);
    std::fs::write(&secret, &plain).unwrap();
    let key = work.join("content.key");
    let (ok, out, err) =
        fs(api[0], &["add", "--encrypt", "--key-file", key.to_str().unwrap(), secret.to_str().unwrap()]).await;
    assert!(ok && err.contains("new key written"), "{err}");
    let sealed = String::from_utf8(out).unwrap().trim().to_string();
    assert_ne!(sealed, only_hash(&secret), "the CID is of the ciphertext");
    let (ok, raw, _) = fs(api[2], &["cat", &sealed]).await;
    assert!(ok && raw.len() > plain.len(), "C serves the ciphertext");
    assert!(!raw.windows(27).any(|w| w == b"model weights, confidential"), "no plaintext in what nodes hold");
    let (ok, opened, err) = fs(api[2], &["cat", "--key-file", key.to_str().unwrap(), &sealed]).await;
    assert!(ok, "{err}");
    assert!(opened == plain, "the key opens it");
    let wrong = work.join("wrong.key");
    std::fs::write(&wrong, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
    let out_file = work.join("opened.txt");
    let (ok, _, err) =
        fs(api[2], &["get", "--key-file", wrong.to_str().unwrap(), &sealed, out_file.to_str().unwrap()]).await;
    assert!(!ok && err.contains("wrong key") && err.lines().count() == 1, "{err}");
    assert!(!out_file.exists() && !work.join("opened.r1fs-partial").exists(), "nothing left of what did not open");

    // 4. A leaf rots on C's disk: the next read detects it, quarantines it,
    // fetches it again and serves the right bytes.
    let first = pattern(10 * 1024 * 1024 + 7, 1)[..256 * 1024].to_vec();
    let leaf =
        ratio1::r1fs::add::add_reader(first.as_slice(), &mut |_, _| Ok(()), &mut |_| {}).unwrap().cid.to_string();
    // Rot knows nothing of the index: the leaf's bytes are found in C's
    // packs and one bit of them flips in place.
    let mut rotted = false;
    for pack in std::fs::read_dir(data[2].join("r1fs/packs")).unwrap() {
        let path = pack.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(first.len()).position(|w| w == first.as_slice()) {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_at(&[bytes[at + 1000] ^ 0x40], (at + 1000) as u64).unwrap();
            rotted = true;
            break;
        }
    }
    assert!(rotted, "C holds the first leaf in one of its packs");
    let (ok, bytes, err) = fs(api[2], &["cat", &cid]).await;
    assert!(ok, "cat on C after the corruption: {err}");
    assert!(bytes == std::fs::read(&big).unwrap(), "the corrupted block is not served");
    assert_eq!(
        std::fs::read_dir(data[2].join("r1fs/quarantine")).unwrap().count(),
        1,
        "the rotten block is kept aside"
    );
    assert!(counter(&fed, 2, "ratio1_r1fs_healed_total", "").await >= 1.0);

    // 5. Content nobody has: a one-line error, non-zero exit.
    std::fs::write(work.join("nowhere"), b"never added").unwrap();
    let nowhere = only_hash(&work.join("nowhere"));
    let (ok, _, err) = fs(api[1], &["cat", &nowhere]).await;
    assert!(!ok && err.contains("no connected peer has block") && err.lines().count() == 1, "{err}");
    let (ok, _, err) = fs(api[1], &["cat", "bafy-not-a-cid"]).await;
    assert!(!ok && err.contains("not a CID"), "{err}");

    // 6. An unlicensed peer asking A for the blocks it holds gets none, not
    // even a `Have`; A counts its requests as refused.
    let target: libp2p::Multiaddr = fed.nodes[0].addr().parse().unwrap();
    let target_peer: libp2p::PeerId = fed.nodes[0].peer_id.parse().unwrap();
    let want = vec![ratio1::r1fs::cid::parse(&cid).unwrap(), ratio1::r1fs::cid::parse(&leaf).unwrap()];
    let plan = Plan { redial_every: Some(Duration::from_secs(2)), want, ..Default::default() };
    let seen = outsider::run(target, target_peer, plan, Duration::from_secs(8)).await;
    eprintln!("unlicensed outsider asking for blocks saw: {seen:?}");
    assert!(seen.wants_sent >= 2, "the outsider asked: {seen:?}");
    assert_eq!((seen.blocks_received, seen.haves_received), (0, 0), "{seen:?}");
    let refused = counter(&fed, 0, "ratio1_p2p_dropped_total", "r1fs_request_unadmitted").await;
    assert!(refused >= 1.0, "A counts the unadmitted wantlists: {refused}");

    // 7. An R1Model by CID on A with replication 2: held by the two nodes
    // the network's ranking chooses (and A, which pinned it at the add).
    let ca = client(4).await;
    let ns = TestNs::new(&ca, "r1fs").await;
    let models: Api<R1Model> = Api::namespaced(ca.clone(), &ns.name);
    let model = json!({"apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Model", "metadata": {"name": "m"},
        "spec": {"source": {"cid": cid}, "replication": 2}});
    models.patch("m", &PatchParams::apply("e2e-r1fs"), &Patch::Apply(&model)).await.unwrap();
    let peers: std::collections::BTreeSet<String> = fed.nodes.iter().map(|n| n.peer_id.clone()).collect();
    let chosen = ratio1::r1fs::service::holders_of(&cid, &peers, 2);
    let name_of = |p: &str| fed.nodes.iter().find(|n| n.peer_id == p).unwrap().name.clone();
    let mut expect: Vec<String> = chosen.iter().map(|p| name_of(p)).collect();
    expect.push("node-c4".into());
    expect.sort();
    expect.dedup();
    let holders = wait_model(&models, "m", 60, "model m Ready with its chosen holders", |m| {
        let s = m.status.as_ref()?;
        (ready(m)? == ("True".into(), "Replicated".into()) && s.holders == expect).then(|| s.clone())
    })
    .await;
    assert_eq!(holders.replicas, Some(expect.len() as i32));
    let dag = ratio1::r1fs::add::only_hash(&big, false, &mut |_| {}).unwrap().dag_size;
    assert_eq!(holders.size, Some(dag as i64), "the bytes of every block: leaves and root");

    // 8. A chosen holder other than A dies: the ranking moves on to the node
    // left, which fetches and pins; the model is Ready again without it.
    let victim = chosen.iter().find(|p| **p != fed.nodes[0].peer_id).unwrap().clone();
    let vi = fed.nodes.iter().position(|n| n.peer_id == victim).unwrap();
    let other = 3 - vi;
    fed.nodes[vi].op.as_mut().unwrap().kill().await;
    let mut after = vec!["node-c4".to_string(), fed.nodes[other].name.clone()];
    after.sort();
    wait_model(&models, "m", 60, "model m re-replicated without the dead holder", |m| {
        let s = m.status.as_ref()?;
        (ready(m)? == ("True".into(), "Replicated".into()) && s.holders == after).then_some(())
    })
    .await;
    let stat: serde_json::Value = serde_json::from_str(&fs_ok(api[other], &["stat", &cid]).await).unwrap();
    assert_eq!(stat["local"]["whole"], json!(true), "{stat}");
    assert!(stat["pinnedBy"].as_array().unwrap().contains(&json!("replica")), "{stat}");

    // 9. Deleted: the want is withdrawn and replicas are released.
    models.delete("m", &Default::default()).await.unwrap();
    wait_for(60, "replica released on the survivor", || async {
        let s: serde_json::Value = serde_json::from_str(&fs_ok(api[other], &["stat", &cid]).await).ok()?;
        (!s["pinnedBy"].as_array()?.contains(&json!("replica"))).then_some(())
    })
    .await;
    ns.cleanup().await;
    let _ = std::fs::remove_dir_all(&work);
    for d in data {
        let _ = std::fs::remove_dir_all(d);
    }
}
