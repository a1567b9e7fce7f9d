//! `ratio1 edil` as a user runs it (processes, files; no cluster): the
//! owner's keys, three participants each training the built-in model on
//! its own CSV shard and encrypting its weights under its own public key,
//! the aggregator summing the files with no key, the owner decrypting the
//! average, which does about as well as central training; what must be
//! refused is, with a one-line cause and a non-zero exit.

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
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 10_000) as f64 / 2_500.0 - 2.0
    };
    let mut rows = vec!["f1,f2,f3,label".to_string()];
    while rows.len() <= n {
        let f: Vec<f64> = (0..3).map(|_| next()).collect();
        let z = 1.2 * f[0] - 1.8 * f[1] + 0.6 * f[2] + 0.2 + next() * 0.8;
        if shard.is_some_and(|k| ((f[0] + 2.0) / 4.0 * 3.0).floor() as usize != k) {
            continue;
        }
        rows.push(format!("{:.4},{:.4},{:.4},{}", f[0], f[1], f[2], (z > 0.0) as u8));
    }
    rows.join("\n")
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
