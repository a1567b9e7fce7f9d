//! EDIL end to end.
//!
//! - `ratio1 edil` as a user runs it (processes, files; no cluster): the
//!   owner's keys, three participants each training the built-in model on
//!   its own CSV shard and encrypting its weights under its own public
//!   key, the aggregator summing the files with no key, the owner
//!   decrypting the average, which does about as well as central training;
//!   what must be refused is, with a one-line cause and a non-zero exit.
//! - Federated training across three operators (clusters 4, 5, 6, each
//!   with its own CSTORE etcd, real libp2p): an R1Model with
//!   `spec.training` on cluster 4 (the owner) trains over rounds in which
//!   clusters 5 and 6 each train on their own shard and seal their
//!   encrypted update to the aggregator (never the owner), which sums the
//!   ciphertexts; the owner averages. The result is within a few points of
//!   central training, and no update record is readable on the owner's
//!   node. A round in which fewer than the least participants send an
//!   update releases nothing. A model too large for CSTORE records (601
//!   weights) trains alongside, its round's model, updates and sum
//!   travelling through R1FS; and the same model as the first trained by
//!   a trainer container: a Job on the worker nodes of clusters 5 and 6.

use crate::harness::cstore;
use crate::harness::federation::*;
use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn ratio1(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ratio1")).arg("edil").args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn ok(args: &[&str]) -> String {
    let (ok, out, err) = ratio1(args);
    assert!(ok, "ratio1 edil {args:?}: {err}");
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Accuracy `edil train` reports (0 steps: just the evaluation).
fn accuracy(data: &Path, model: &Path) -> f64 {
    let out = ok(&["train", "--data", s(data), "--model", s(model), "--steps", "0"]);
    out.rsplit("accuracy ").next().unwrap().trim().parse().unwrap()
}

/// Deterministic samples of a noisy linear rule in 3 features; shard `k`
/// of 3 holds those whose first feature falls in its third of the range.
fn csv(seed: u64, n: usize, shard: Option<usize>) -> String {
    csv_of(seed, n, shard, 3)
}

/// As [`csv`], with `features` columns (the rule uses the first three).
fn csv_of(seed: u64, n: usize, shard: Option<usize>, features: usize) -> String {
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 10_000) as f64 / 2_500.0 - 2.0
    };
    let header: Vec<String> = (1..=features).map(|i| format!("f{i}")).collect();
    let mut rows = vec![format!("{},label", header.join(","))];
    while rows.len() <= n {
        let f: Vec<f64> = (0..features.max(3)).map(|_| next()).collect();
        let z = 1.2 * f[0] - 1.8 * f[1] + 0.6 * f[2] + 0.2 + next() * 0.8;
        if shard.is_some_and(|k| ((f[0] + 2.0) / 4.0 * 3.0).floor() as usize != k) {
            continue;
        }
        let cells: Vec<String> = f[..features].iter().map(|v| format!("{v:.4}")).collect();
        rows.push(format!("{},{}", cells.join(","), (z > 0.0) as u8));
    }
    rows.join("\n")
}

/// The status of R1Model `name` once `Training` says `Trained`.
async fn trained(models: &kube::Api<ratio1::crd::R1Model>, name: &str, secs: u64) -> ratio1::crd::R1ModelStatus {
    wait_for(secs, &format!("{name} trained"), || async {
        let st = models.get(name).await.ok()?.status?;
        let done = st.conditions.iter().any(|c| c.type_ == "Training" && c.reason == "Trained");
        done.then_some(st)
    })
    .await
}

/// The operator's image (`ratio1` in it): the trainer container's too.
const OPERATOR_IMAGE: &str = "ratio1.local/ratio1-operator:dev";

/// `edil-ctr`, edil-lr's spec for 2 rounds with a trainer container: each
/// participant runs it as a Job on its worker node (it fetches the round's
/// model from R1FS through the gateway, trains on the shard the node
/// mounts, hands the weights back through the import route), and the
/// result is edil-lr's after 2 rounds, to the bit: the same code trained
/// from the same weights on the same shards. The Jobs are gone after, and
/// so are the pins of their plaintext weights.
async fn container_trainer_matches_the_built_in_one(
    fed: &Federation,
    models: &kube::Api<ratio1::crd::R1Model>,
    lr: &ratio1::crd::TrainingStatus,
) {
    let st = trained(models, "edil-ctr", 240).await;
    let t = st.training.clone().unwrap();
    assert_eq!((t.completed_rounds, &t.participants[..]), (2, &["node-c5", "node-c6"].map(String::from)[..]), "{t:?}");
    // edil-lr's model of round 2, from R1FS.
    let second = &lr.models.iter().find(|m| m.round == 2).unwrap().cid;
    let doc = wait_for(60, "edil-lr's round-2 model", || async {
        let body = http_get(fed.nodes[0].op().api_port, &format!("/ipfs/{second}")).await?;
        serde_json::from_str::<serde_json::Value>(&body).ok()
    })
    .await;
    let built_in: Vec<f64> = serde_json::from_value(doc["weights"].clone()).unwrap();
    assert_eq!(t.weights, built_in, "the container's rounds are the built-in trainer's");
    for i in 1..3 {
        let c = client([4, 5, 6][i]).await;
        let started = counter(fed, i, "ratio1_edil_trainer_jobs_total", "started").await;
        let ok = counter(fed, i, "ratio1_edil_trainer_jobs_total", "succeeded").await;
        assert!(started >= 2.0 && ok >= 2.0, "cluster {}: {started} started, {ok} succeeded", i + 4);
        let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> = kube::Api::namespaced(c, OPERATOR_NS);
        wait_for(60, "the trainer Jobs deleted", || async {
            let l = jobs.list(&Default::default()).await.ok()?;
            (!l.items.iter().any(|j| j.metadata.name.as_deref().is_some_and(|n| n.starts_with("edil-train-"))))
                .then_some(())
        })
        .await;
        let pins = http_get(fed.nodes[i].op().api_port, "/v1/r1fs/pins").await.unwrap();
        assert!(!pins.contains("import/edil/"), "cluster {}: {pins}", i + 4);
    }

    // An image no participant allows: no round starts, and the status
    // says why.
    let ssa = kube::api::PatchParams::apply("e2e").force();
    let spec = |image: &str, timeout: i32| {
        serde_json::json!({"rounds": 1, "dataset": "train", "features": 3, "minParticipants": 2,
            "roundTimeoutSeconds": timeout, "trainer": {"image": image}})
    };
    let foreign = spec("elsewhere.example/trainer:1", 60);
    models.patch("edil-foreign", &ssa, &kube::api::Patch::Apply(model("edil-foreign", foreign))).await.unwrap();
    let t = wait_for(60, "edil-foreign waits for participants that run its image", || async {
        let t = models.get("edil-foreign").await.ok()?.status?.training?;
        t.last_failure
            .as_deref()
            .is_some_and(|f| f.contains("run trainer image elsewhere.example/trainer:1"))
            .then_some(t)
    })
    .await;
    assert_eq!((t.completed_rounds, t.round), (0, None), "{t:?}");
    // An allowed image that is not on the nodes (nor pullable): each Job
    // is given up as soon as its pod cannot pull it, long before the
    // round's deadline (120 s).
    let failed_before = counter(fed, 1, "ratio1_edil_trainer_jobs_total", "failed").await;
    let missing = spec("ratio1.local/not-built:0", 120);
    models.patch("edil-missing", &ssa, &kube::api::Patch::Apply(model("edil-missing", missing))).await.unwrap();
    let published = std::time::Instant::now();
    wait_for(90, "cluster 5 gives up a Job whose image cannot be pulled", || async {
        (counter(fed, 1, "ratio1_edil_trainer_jobs_total", "failed").await > failed_before).then_some(())
    })
    .await;
    assert!(published.elapsed().as_secs() < 100, "given up before the deadline");
    for name in ["edil-foreign", "edil-missing"] {
        let _ = models.delete(name, &Default::default()).await;
    }
}

/// Features of the model whose rounds travel through R1FS (601 weights:
/// more than the 512 that records carry).
const BIG_FEATURES: usize = 600;

/// The 601-weight model trained alongside `edil-lr`: its rounds name the
/// owner's model document in R1FS, each update and sum is R1FS content
/// its record names, sealed as the inline ones are, and a participant's
/// node fetches the trained model with the status's CID: the weights
/// every round started from came through R1FS.
async fn big_model_travels_through_r1fs(fed: &Federation, models: &kube::Api<ratio1::crd::R1Model>) {
    let st = trained(models, "edil-big", 180).await;
    let t = st.training.clone().unwrap();
    assert_eq!(t.completed_rounds, 2, "{:?}", t.last_failure);
    assert_eq!(t.participants, ["node-c5", "node-c6"].map(String::from), "{t:?}");
    assert!(t.accuracy.is_some_and(|a| a > 0.6), "{:?}", t.accuracy);
    // The model each round started from is stored too (round 0: zeros).
    assert_eq!(t.models.iter().map(|m| m.round).collect::<Vec<_>>(), vec![0, 1, 2], "{t:?}");
    let last = t.models.last().unwrap().cid.clone();
    let doc = wait_for(60, "cluster 6 fetches edil-big's model", || async {
        let body = http_get(fed.nodes[2].op().api_port, &format!("/ipfs/{last}")).await?;
        serde_json::from_str::<serde_json::Value>(&body).ok()
    })
    .await;
    let weights: Vec<f64> = serde_json::from_value(doc["weights"].clone()).unwrap();
    assert_eq!((weights.len(), &weights), (BIG_FEATURES + 1, &t.weights), "{:?}", doc["round"]);

    // What the owner's CSTORE holds of it: CIDs, no weights or ciphertext.
    let uid = models.get("edil-big").await.unwrap().metadata.uid.unwrap();
    let owner = fed.nodes[0].op().api_port;
    let keys: Vec<String> =
        serde_json::from_str(&http_get(owner, "/v1/cstore/keys?prefix=edil/").await.unwrap()).unwrap();
    let mine = |kind: &str| -> Vec<String> {
        keys.iter().filter(|k| k.contains(&format!("/{kind}/")) && k.contains(&uid)).cloned().collect()
    };
    let rounds = mine("round");
    assert!(rounds.len() >= 2, "{keys:?}");
    for k in &rounds {
        let v = cstore::value(owner, k).await.unwrap();
        assert!(v.get("global").is_none() && v["stored"]["values"] == (BIG_FEATURES + 1), "{k}: {v}");
    }
    let updates = mine("update");
    assert!(updates.len() >= 4, "{keys:?}");
    for k in &updates {
        let v = cstore::value(owner, k).await.unwrap();
        assert!(v.get("sealed").is_none(), "{k}: {v}");
        // The update itself, fetched by the owner: sealed to the aggregator.
        let cid = v["cid"].as_str().unwrap().to_string();
        let bytes = wait_for(60, "the owner fetches an update", || async {
            http_get_bytes(owner, &format!("/ipfs/{cid}")).await
        })
        .await;
        assert!(bytes.len() > 16 * (BIG_FEATURES + 1), "{k}: {} bytes", bytes.len());
        assert!(ratio1::edil::crypto::Update::values_in(&bytes).is_err(), "{k} is readable as an update");
    }
    for k in mine("sum") {
        let v = cstore::value(owner, &k).await.unwrap();
        let r = &v["released"];
        assert!(r["aggregateCid"].is_string() && r.get("aggregate").is_none(), "{k}: {v}");
    }
}

#[test]
fn edil_by_hand_trains_three_shards_under_encryption_and_refuses_bad_input() {
    let dir: PathBuf = std::env::temp_dir().join(format!("ratio1-edil-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = ok(&["keygen", "--out", s(&dir.join("keys")), "--participants", "3"]);
    assert!(out.contains("owner.key") && out.contains("participant-2.pk"), "{out}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.join("keys/owner.key")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let (all, test) = (dir.join("all.csv"), dir.join("test.csv"));
    std::fs::write(&all, csv(1, 900, None)).unwrap();
    std::fs::write(&test, csv(2, 600, None)).unwrap();
    let shards: Vec<PathBuf> = (0..3)
        .map(|k| {
            let p = dir.join(format!("shard-{k}.csv"));
            std::fs::write(&p, csv(10 + k as u64, 300, Some(k))).unwrap();
            p
        })
        .collect();

    // Rounds: each participant trains from the global model on its shard
    // and encrypts; the aggregator sums; the owner decrypts the average.
    let global = dir.join("global.json");
    std::fs::write(&global, "[0,0,0,0]").unwrap();
    let rounds = 6;
    for _ in 0..rounds {
        let mut updates = vec![];
        for (k, shard) in shards.iter().enumerate() {
            let w = dir.join(format!("w-{k}.json"));
            ok(&["train", "--data", s(shard), "--model", s(&global), "--steps", "10", "--out", s(&w)]);
            let u = dir.join(format!("u-{k}.r1e"));
            let pk = dir.join(format!("keys/participant-{k}.pk"));
            let out =
                ok(&["encrypt", "--public-key", s(&pk), "--max-participants", "3", "--values", s(&w), "--out", s(&u)]);
            assert!(out.contains("4 values encrypted"), "{out}");
            updates.push(u);
        }
        let agg = dir.join("agg.r1e");
        let mut args = vec!["aggregate", "--max-participants", "3", "--out", s(&agg)];
        args.extend(updates.iter().map(|u| s(u)));
        assert!(ok(&args).contains("3 updates of 4 values"));
        let avg = ok(&["decrypt", "--key", s(&dir.join("keys/owner.key")), "--max-participants", "3", s(&agg)]);
        std::fs::write(&global, avg.trim()).unwrap();
    }
    let central = dir.join("central.json");
    ok(&["train", "--data", s(&all), "--steps", &(rounds * 10).to_string(), "--out", s(&central)]);
    let (fed, cen) = (accuracy(&test, &global), accuracy(&test, &central));
    assert!(cen > 0.75 && (fed - cen).abs() <= 0.04, "federated {fed} vs central {cen}");

    // Refused, each with one line: a lone update is not decrypted, an
    // update of another shape is not added, a truncated or foreign file
    // is not read, a dataset that is not one is not trained on.
    let key = dir.join("keys/owner.key");
    let u0 = dir.join("u-0.r1e");
    let lone = dir.join("lone.r1e");
    ok(&["aggregate", "--max-participants", "3", "--out", s(&lone), s(&u0)]);
    let refused = |args: &[&str], want: &str| {
        let (ok, _, err) = ratio1(args);
        assert!(!ok && err.trim().lines().count() == 1 && err.contains(want), "{args:?}: {err}");
    };
    refused(&["decrypt", "--key", s(&key), "--max-participants", "3", s(&lone)], "fewer than --min-participants 2");
    std::fs::write(dir.join("w-5.json"), "[1,2,3,4,5]").unwrap();
    let u5 = dir.join("u-5.r1e");
    let pk = dir.join("keys/participant-0.pk");
    ok(&[
        "encrypt",
        "--public-key",
        s(&pk),
        "--max-participants",
        "3",
        "--values",
        s(&dir.join("w-5.json")),
        "--out",
        s(&u5),
    ]);
    refused(
        &["aggregate", "--max-participants", "3", "--out", s(&lone), s(&u0), s(&u5)],
        "holds 5 values, the round expects 4",
    );
    let bytes = std::fs::read(&u0).unwrap();
    std::fs::write(dir.join("cut.r1e"), &bytes[..bytes.len() / 2]).unwrap();
    refused(
        &["aggregate", "--max-participants", "3", "--out", s(&lone), s(&u0), s(&dir.join("cut.r1e"))],
        "malformed update",
    );
    refused(
        &["decrypt", "--key", s(&pk), "--max-participants", "3", s(&dir.join("agg.r1e"))],
        "not an EDIL secret key",
    );
    refused(
        &["aggregate", "--max-participants", "3", "--out", s(&lone), s(&u0), s(&u0), s(&u0), s(&u0)],
        "already holds 3 updates",
    );
    std::fs::write(dir.join("bad.csv"), "1,2,1\n1,2,7\n").unwrap();
    refused(&["train", "--data", s(&dir.join("bad.csv"))], "line 2: the label (last column) is 7");
    let _ = std::fs::remove_dir_all(&dir);
}

fn model(name: &str, training: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Model",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "source": {"cid": "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"},
            "training": training
        }
    })
}

#[tokio::test]
async fn federated_training_across_three_clusters_matches_central_training() {
    let _turn = CLUSTERS_4_TO_6.lock().await;
    let dir = log_dir().join("edil-net");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Clusters 5 and 6 each their own shard of `train` (split by the first
    // feature: not the same distribution), and of `wide`, which cluster 6
    // holds with a fourth column: it cannot train the 3-feature model on
    // it. The owner, cluster 4, holds none (it never takes part).
    let shard = |k: usize, name: &str, text: String| {
        let p = dir.join(format!("{name}-{k}.csv"));
        std::fs::write(&p, text).unwrap();
        p
    };
    // Every cluster runs R1FS (a data dir): the owner stores each round's
    // model there, and the others can fetch it. The participants deliver
    // R1FS content to pods (their gateway on every address: pods reach it
    // at their node's IP) and run trainer images of this project.
    let args: Vec<Vec<String>> = (0..3)
        .map(|k| {
            let data = format!("--data-dir={}", dir.join(format!("data-{k}")).display());
            if k == 0 {
                return vec![data];
            }
            let gateway = free_port();
            let train = shard(k, "train", csv(20 + k as u64, 300, Some(k)));
            let wide = shard(k, "wide", csv_of(30 + k as u64, 50, None, if k == 2 { 4 } else { 3 }));
            let big = shard(k, "big", csv_of(40 + k as u64, 300, Some(k), BIG_FEATURES));
            vec![
                data,
                format!("--edil-dataset=train={}", train.display()),
                format!("--edil-dataset=wide={}", wide.display()),
                format!("--edil-dataset=big={}", big.display()),
                format!("--r1fs-gateway-addr=0.0.0.0:{gateway}"),
                format!("--r1fs-pod-endpoint=http://$(HOST_IP):{gateway}"),
                format!("--r1fs-fetch-image={OPERATOR_IMAGE}"),
                "--edil-trainer-image=ratio1.local/".into(),
                "--edil-trainer-owner-args".into(),
            ]
        })
        .collect();
    let (fed, _etcds) = cstore::federation_each(&[4, 5, 6], |k, o| o.extra_args.extend(args[k].clone())).await;
    for i in 0..3 {
        fed.wait_peers(i, 2, 60).await;
    }
    let models: kube::Api<ratio1::crd::R1Model> = kube::Api::namespaced(client(4).await, "default");
    let ssa = kube::api::PatchParams::apply("e2e").force();
    for name in ["edil-lr", "edil-short", "edil-big", "edil-ctr", "edil-foreign", "edil-missing"] {
        let _ = models.delete(name, &Default::default()).await;
    }
    let (rounds, steps) = (5, 10);
    let training = serde_json::json!({"rounds": rounds, "dataset": "train", "features": 3, "localSteps": steps,
        "learningRate": 0.5, "minParticipants": 2, "roundTimeoutSeconds": 30});
    models.patch("edil-lr", &ssa, &kube::api::Patch::Apply(model("edil-lr", training))).await.unwrap();
    // Trained alongside: a model of more weights than records carry.
    let big = serde_json::json!({"rounds": 2, "dataset": "big", "features": BIG_FEATURES, "localSteps": steps,
        "learningRate": 0.5, "minParticipants": 2, "roundTimeoutSeconds": 30});
    models.patch("edil-big", &ssa, &kube::api::Patch::Apply(model("edil-big", big))).await.unwrap();
    // And edil-lr's first rounds again, by a trainer container: `ratio1
    // edil train` in the operator's image, as a Job on each participant.
    let ctr = serde_json::json!({"rounds": 2, "dataset": "train", "features": 3, "localSteps": steps,
        "learningRate": 0.5, "minParticipants": 2, "roundTimeoutSeconds": 60,
        "trainer": {"image": OPERATOR_IMAGE, "command": ["ratio1", "edil", "train"],
            "args": ["--data", "$(R1_EDIL_DATA)", "--model", "$(R1_EDIL_MODEL)", "--steps", "$(R1_EDIL_STEPS)",
                "--lr", "$(R1_EDIL_LR)", "--out", "$(R1_EDIL_OUT)"]}});
    models.patch("edil-ctr", &ssa, &kube::api::Patch::Apply(model("edil-ctr", ctr))).await.unwrap();

    let st = trained(&models, "edil-lr", 180).await;
    let t = st.training.clone().unwrap();
    assert_eq!((t.completed_rounds, st.round), (rounds, Some(rounds)), "{t:?}");
    let names = ["node-c5", "node-c6"].map(String::from);
    assert_eq!(t.participants, names, "every cluster holding the dataset took part: {t:?}");
    let agg = t.aggregator.clone().unwrap();
    assert!(agg == "node-c5" || agg == "node-c6", "the owner never aggregates: {agg}");
    assert!(t.last_round_seconds.is_some_and(|s| s > 0.0) && t.accuracy.is_some_and(|a| a > 0.5), "{t:?}");
    let endpoint = format!("http://127.0.0.1:{}", fed.nodes[0].op().api_port);
    let (ok, out, err) = ratio1(&["status", "edil-lr", "--endpoint", &endpoint]);
    assert!(ok && out.contains("default/edil-lr") && out.contains(&format!("{rounds}/{rounds}")), "{out}{err}");
    let (ok, _, err) = ratio1(&["status", "nope", "--endpoint", &endpoint]);
    assert!(!ok && err.contains("not trained by this operator"), "{err}");

    // Each round's model is R1FS content the owner pins, and a
    // participant's node fetches the last one from it by CID: the very
    // weights of the status.
    assert_eq!(t.models.iter().map(|m| m.round).collect::<Vec<_>>(), (1..=rounds).collect::<Vec<_>>(), "{t:?}");
    let last = t.models.last().unwrap().cid.clone();
    assert!(out.contains(&last), "`edil status edil-lr` lists each round's model: {out}");
    let doc = wait_for(60, "cluster 5 fetches the last round's model", || async {
        let body = http_get(fed.nodes[1].op().api_port, &format!("/ipfs/{last}")).await?;
        serde_json::from_str::<serde_json::Value>(&body).ok()
    })
    .await;
    let weights: Vec<f64> = serde_json::from_value(doc["weights"].clone()).unwrap();
    assert_eq!((weights, doc["round"].as_i64()), (t.weights.clone(), Some(rounds as i64)), "{doc}");
    let uid = models.get("edil-lr").await.unwrap().metadata.uid.unwrap();
    let owner_port = fed.nodes[0].op().api_port;
    let pins = http_get(owner_port, "/v1/r1fs/pins").await.unwrap();
    assert!(pins.contains(&last) && pins.contains(&format!("edil-{uid}")), "{pins}");

    // The federated model against the same one trained centrally on all
    // the shards, on held-out data.
    use ratio1::edil::trainer::{evaluate, train, Dataset};
    let mut all = Dataset::default();
    for k in 1..3 {
        let d = Dataset::parse_csv(&std::fs::read_to_string(dir.join(format!("train-{k}.csv"))).unwrap()).unwrap();
        all.features = d.features;
        all.x.extend(d.x);
        all.y.extend(d.y);
    }
    let test = Dataset::parse_csv(&csv(99, 600, None)).unwrap();
    let central = train(&[0.0; 4], &all, (rounds * steps) as u32, 0.5).unwrap();
    let fed_w: Vec<f32> = t.weights.iter().map(|v| *v as f32).collect();
    let (f, c) = (evaluate(&fed_w, &test).unwrap(), evaluate(&central, &test).unwrap());
    assert!(c.accuracy > 0.75 && (f.accuracy - c.accuracy).abs() <= 0.04, "federated {f:?} vs central {c:?}");

    // The owner receives every record (CSTORE replicates them all), and
    // no update among them is an EDIL update it could decrypt alone: each
    // is sealed to the aggregator. (What the aggregator opens is a
    // ciphertext under the owner's key, which no record carries.)
    let owner = fed.nodes[0].op().api_port;
    let keys: Vec<String> =
        serde_json::from_str(&http_get(owner, "/v1/cstore/keys?prefix=edil/").await.unwrap()).unwrap();
    let updates: Vec<&String> = keys.iter().filter(|k| k.contains("/update/") && k.contains(&uid)).collect();
    assert!(updates.len() >= 2 * rounds as usize, "{keys:?}");
    use base64::Engine;
    for k in updates {
        let v = cstore::value(owner, k).await.unwrap();
        let bytes = base64::engine::general_purpose::STANDARD.decode(v["sealed"].as_str().unwrap()).unwrap();
        assert!(ratio1::edil::crypto::Update::values_in(&bytes).is_err(), "{k} is readable as an update");
        assert!(!String::from_utf8_lossy(&bytes).contains("signature"), "{k} is not sealed");
    }

    big_model_travels_through_r1fs(&fed, &models).await;
    container_trainer_matches_the_built_in_one(&fed, &models, &t).await;

    // Cluster 6 cannot train the `wide` model (its shard has a fourth
    // column): each round holds 1 of the least 2 updates, and the
    // aggregator releases nothing (the owner could decrypt it alone).
    let short = serde_json::json!({"rounds": 1, "dataset": "wide", "features": 3, "localSteps": 2,
        "minParticipants": 2, "roundTimeoutSeconds": 10});
    models.patch("edil-short", &ssa, &kube::api::Patch::Apply(model("edil-short", short))).await.unwrap();
    let t = wait_for(90, "edil-short's round withheld", || async {
        let t = models.get("edil-short").await.ok()?.status?.training?;
        t.last_failure.as_deref().is_some_and(|f| f.contains("no sum is released")).then_some(t)
    })
    .await;
    assert!(t.last_failure.as_deref().unwrap().contains("1 of the least 2 participants"), "{t:?}");
    assert_eq!(t.completed_rounds, 0, "{t:?}");
    let withheld: f64 = {
        let mut n = 0.0;
        for i in 0..3 {
            n += counter(&fed, i, "ratio1_edil_sums_total", "withheld").await;
        }
        n
    };
    assert!(withheld >= 1.0, "{withheld}");
    let _ = models.delete("edil-short", &Default::default()).await;
    let _ = models.delete("edil-lr", &Default::default()).await;
    // Its trained models' pins go with the R1Model.
    wait_for(90, "edil-lr's model pins released", || async {
        let pins = http_get(owner_port, "/v1/r1fs/pins").await?;
        (!pins.contains(&format!("edil-{uid}"))).then_some(())
    })
    .await;
}
