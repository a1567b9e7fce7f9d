//! `ratio1 edil`: EDIL's cryptography and built-in trainer by hand, for
//! inspection and scripting (no network): make the owner's keys, encrypt
//! an update, sum encrypted updates, decrypt and average the sum, train
//! the built-in model on a CSV shard.

use crate::economy_cli::{call, Endpoint};
use clap::Subcommand;
use ratio1::edil::crypto::{Aggregate, Encoding, OwnerKey, ParticipantKey, Update};
use ratio1::edil::trainer::{self, Dataset};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum EdilCmd {
    /// The federated trainings a running operator owns (the R1Models of
    /// its cluster with `spec.training`): rounds, participants,
    /// aggregator, accuracy, the last failure.
    Status {
        /// Only this model (`namespace/name`, or a name).
        model: Option<String>,
        #[command(flatten)]
        api: Endpoint,
    },
    /// Make a model owner's keys: the secret key (DIR/owner.key, mode
    /// 0600: it never leaves the owner) and one public key per participant
    /// (DIR/participant-<i>.pk: each participant its own).
    Keygen {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 3)]
        participants: u32,
    },
    /// Encrypt an update (a JSON array of numbers) under a participant's
    /// public key.
    Encrypt {
        #[arg(long)]
        public_key: PathBuf,
        /// The round's most participants (sets the fixed-point headroom).
        #[arg(long)]
        max_participants: u32,
        /// JSON array of numbers (e.g. the weights `edil train` wrote).
        #[arg(long)]
        values: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Sum encrypted updates, as the aggregator does: with no key; each
    /// update is checked (shape, parameters) before it is added.
    Aggregate {
        #[arg(long)]
        max_participants: u32,
        #[arg(long)]
        out: PathBuf,
        /// The updates (`edil encrypt` output), at least one.
        #[arg(required = true)]
        updates: Vec<PathBuf>,
    },
    /// Decrypt an aggregate with the owner's key and print the average
    /// (FedAvg) as a JSON array.
    Decrypt {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        max_participants: u32,
        /// Fewest updates the aggregate must hold: a lone update is never
        /// decrypted on its own.
        #[arg(long, default_value_t = 2)]
        min_participants: u32,
        aggregate: PathBuf,
    },
    /// Train the built-in model (logistic regression) on a CSV shard
    /// (numbers, the 0/1 label last); print its loss and accuracy there.
    Train {
        #[arg(long)]
        data: PathBuf,
        /// Start from these weights (a JSON array, or a model document
        /// with `weights`; default zeros).
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, default_value_t = 50)]
        steps: u32,
        #[arg(long, default_value_t = 0.5)]
        lr: f32,
        /// Write the trained weights here (JSON array).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// A JSON array of numbers, or an object with one under `weights` (an
/// EDIL model document, as a trainer container gets it).
fn read_values(path: &Path) -> anyhow::Result<Vec<f32>> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Values {
        Array(Vec<f32>),
        Doc { weights: Vec<f32> },
    }
    match serde_json::from_slice(&read(path)?) {
        Ok(Values::Array(v) | Values::Doc { weights: v }) => Ok(v),
        Err(e) => anyhow::bail!("{}: neither a JSON array of numbers nor an object with weights: {e}", path.display()),
    }
}

fn encoding(max_participants: u32) -> anyhow::Result<Encoding> {
    Encoding::new(max_participants).map_err(|e| anyhow::anyhow!("--max-participants: {e}"))
}

pub async fn edil(cmd: EdilCmd) -> anyhow::Result<()> {
    match cmd {
        EdilCmd::Status { model, api } => {
            let v = call(http::Method::GET, &api.url("/v1/edil", &[])).await?;
            let all = v["trainings"].as_object().cloned().unwrap_or_default();
            let hit =
                |k: &str| model.as_deref().is_none_or(|m| k == m || k.rsplit_once('/').is_some_and(|(_, n)| n == m));
            let rows: Vec<_> = all.iter().filter(|(k, _)| hit(k)).collect();
            if let (Some(m), true) = (&model, rows.is_empty()) {
                anyhow::bail!("model {m} is not trained by this operator (the R1Model's own cluster trains it)");
            }
            println!(
                "{:<32} {:>7} {:>6} {:<30} {:<16} {:>9} LAST FAILURE",
                "MODEL", "DONE", "ROUND", "PARTICIPANTS", "AGGREGATOR", "ACCURACY"
            );
            for (k, t) in &rows {
                let names: Vec<&str> =
                    t["participants"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect();
                println!(
                    "{k:<32} {:>7} {:>6} {:<30} {:<16} {:>9} {}",
                    format!("{}/{}", t["completedRounds"], t["rounds"]),
                    t["round"].as_i64().map_or("-".into(), |r| r.to_string()),
                    names.join(","),
                    t["aggregator"].as_str().unwrap_or("-"),
                    t["accuracy"].as_f64().map_or("-".into(), |a| format!("{a:.3}")),
                    t["lastFailure"].as_str().unwrap_or("")
                );
            }
            // One model asked for: its rounds' models in R1FS too.
            if let (Some(_), [(_, t)]) = (&model, rows.as_slice()) {
                let models = t["models"].as_array().cloned().unwrap_or_default();
                if !models.is_empty() {
                    println!("\n{:>7} MODEL IN R1FS (ratio1 fs cat CID)", "ROUND");
                    for m in models {
                        println!("{:>7} {}", m["round"], m["cid"].as_str().unwrap_or("-"));
                    }
                }
            }
            Ok(())
        }
        EdilCmd::Keygen { out, participants } => {
            anyhow::ensure!((1..=1_000).contains(&participants), "--participants must be 1..=1000");
            std::fs::create_dir_all(&out).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
            let owner = OwnerKey::generate();
            let path = out.join("owner.key");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
                f.write_all(&owner.to_bytes())?;
            }
            println!("secret key: {} (keep it: only the owner decrypts)", path.display());
            for i in 0..participants {
                let p = out.join(format!("participant-{i}.pk"));
                write(&p, &owner.public_key().to_bytes())?;
                println!("public key: {}", p.display());
            }
            Ok(())
        }
        EdilCmd::Encrypt { public_key, max_participants, values, out } => {
            let enc = encoding(max_participants)?;
            let key = ParticipantKey::from_bytes(&read(&public_key)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", public_key.display()))?;
            let x = read_values(&values)?;
            let clipped = x.iter().filter(|v| v.abs() as f64 > enc.range()).count();
            if clipped > 0 {
                eprintln!("warning: {clipped} values beyond ±{:.1} are clipped (the headroom of {max_participants} participants)", enc.range());
            }
            let update = key.encrypt(&enc.quantise(&x)).map_err(|e| anyhow::anyhow!("{e}"))?;
            let bytes = update.to_bytes();
            write(&out, &bytes)?;
            println!(
                "{} values encrypted: {} bytes ({:.1} per value)",
                x.len(),
                bytes.len(),
                bytes.len() as f64 / x.len().max(1) as f64
            );
            Ok(())
        }
        EdilCmd::Aggregate { max_participants, out, updates } => {
            let enc = encoding(max_participants)?;
            let mut agg: Option<Aggregate> = None;
            for path in &updates {
                let bytes = read(path)?;
                let values = Update::values_in(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                let a = match &mut agg {
                    Some(a) => a,
                    None => agg.insert(Aggregate::new(values, enc).map_err(|e| anyhow::anyhow!("{e}"))?),
                };
                let u =
                    Update::from_bytes(&bytes, a.values()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                a.add(&u).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            }
            let agg = agg.expect("at least one update (clap requires it)");
            write(&out, &agg.to_bytes())?;
            println!("{} updates of {} values summed into {}", agg.count(), agg.values(), out.display());
            Ok(())
        }
        EdilCmd::Decrypt { key, max_participants, min_participants, aggregate } => {
            let enc = encoding(max_participants)?;
            let owner = OwnerKey::from_bytes(&read(&key)?).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
            let bytes = read(&aggregate)?;
            let values = Aggregate::values_in(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", aggregate.display()))?;
            let agg = Aggregate::from_bytes(&bytes, values, enc)
                .map_err(|e| anyhow::anyhow!("{}: {e}", aggregate.display()))?;
            anyhow::ensure!(
                agg.count() >= min_participants.max(1),
                "{} holds {} updates, fewer than --min-participants {}: not decrypted",
                aggregate.display(),
                agg.count(),
                min_participants
            );
            let avg = enc.average(&owner.decrypt(&agg), agg.count() as u64);
            println!("{}", serde_json::to_string(&avg)?);
            Ok(())
        }
        EdilCmd::Train { data, model, steps, lr, out } => {
            let text = String::from_utf8(read(&data)?).map_err(|_| anyhow::anyhow!("{}: not UTF-8", data.display()))?;
            let d = Dataset::parse_csv(&text).map_err(|e| anyhow::anyhow!("{}: {e}", data.display()))?;
            let w = match &model {
                Some(m) => read_values(m)?,
                None => vec![0.0; d.params()],
            };
            anyhow::ensure!(lr.is_finite() && lr > 0.0, "--lr must be positive");
            let w = trainer::train(&w, &d, steps, lr).map_err(|e| anyhow::anyhow!("{e}"))?;
            let m = trainer::evaluate(&w, &d).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{} samples, {} features: loss {:.4}, accuracy {:.3}", d.len(), d.features, m.loss, m.accuracy);
            if let Some(out) = out {
                write(&out, serde_json::to_string(&w)?.as_bytes())?;
            }
            Ok(())
        }
    }
}
