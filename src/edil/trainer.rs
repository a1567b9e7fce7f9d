//! EDIL's built-in trainer (pure): binary logistic regression on a CSV
//! dataset, trained by full-batch gradient descent. Small and
//! deterministic, so that a federated training can be checked against the
//! same model trained centrally (docs/edil.md, "Built-in trainer").
//!
//! - CSV: one row per sample, numbers only, the label (0 or 1) last; a
//!   first row that does not parse is a header and is skipped.
//! - Model: `features + 1` weights, the bias last.
//! - Each step moves the weights against the gradient of the mean log
//!   loss: `w ← w − lr · (1/n) Σ (σ(w·x) − y) x`.

use serde::{Deserialize, Serialize};

/// Bounds of a dataset read from a file.
pub const MAX_ROWS: usize = 1_000_000;
pub const MAX_FEATURES: usize = 1_024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrainError {
    #[error("line {0}: {1}")]
    Line(usize, String),
    #[error("the dataset has no rows")]
    Empty,
    #[error("the dataset has more than {MAX_ROWS} rows")]
    TooLarge,
    #[error("the model has {got} weights, the dataset's {features} features need {}", features + 1)]
    Shape { got: usize, features: usize },
}

/// Samples and their 0/1 labels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dataset {
    pub features: usize,
    pub x: Vec<Vec<f32>>,
    pub y: Vec<f32>,
}

impl Dataset {
    pub fn parse_csv(text: &str) -> Result<Self, TrainError> {
        let mut d = Dataset::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let cells: Result<Vec<f32>, _> = line.split(',').map(|c| c.trim().parse::<f32>()).collect();
            let cells = match cells {
                Ok(c) => c,
                Err(_) if i == 0 => continue,
                Err(e) => return Err(TrainError::Line(i + 1, format!("not a number: {e}"))),
            };
            if cells.len() < 2 || cells.len() > MAX_FEATURES + 1 {
                return Err(TrainError::Line(
                    i + 1,
                    format!("{} columns: 2..={} expected", cells.len(), MAX_FEATURES + 1),
                ));
            }
            if d.x.is_empty() {
                d.features = cells.len() - 1;
            } else if cells.len() != d.features + 1 {
                return Err(TrainError::Line(
                    i + 1,
                    format!("{} columns, the first row has {}", cells.len(), d.features + 1),
                ));
            }
            if cells.iter().any(|c| !c.is_finite()) {
                return Err(TrainError::Line(i + 1, "values must be finite".into()));
            }
            let label = cells[d.features];
            if label != 0.0 && label != 1.0 {
                return Err(TrainError::Line(i + 1, format!("the label (last column) is {label}, not 0 or 1")));
            }
            if d.x.len() == MAX_ROWS {
                return Err(TrainError::TooLarge);
            }
            d.x.push(cells[..d.features].to_vec());
            d.y.push(label);
        }
        if d.x.is_empty() {
            return Err(TrainError::Empty);
        }
        Ok(d)
    }

    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// The number of weights a model of this dataset has.
    pub fn params(&self) -> usize {
        self.features + 1
    }

    fn check(&self, w: &[f32]) -> Result<(), TrainError> {
        if w.len() != self.params() {
            return Err(TrainError::Shape { got: w.len(), features: self.features });
        }
        if self.is_empty() {
            return Err(TrainError::Empty);
        }
        Ok(())
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn score(w: &[f32], x: &[f32]) -> f64 {
    let bias = w[x.len()] as f64;
    x.iter().zip(w).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() + bias
}

/// `steps` gradient steps from `w` over the whole of `d`.
pub fn train(w: &[f32], d: &Dataset, steps: u32, lr: f32) -> Result<Vec<f32>, TrainError> {
    d.check(w)?;
    let mut w: Vec<f64> = w.iter().map(|v| *v as f64).collect();
    let n = d.len() as f64;
    let mut grad = vec![0f64; w.len()];
    for _ in 0..steps {
        grad.iter_mut().for_each(|g| *g = 0.0);
        let wf: Vec<f32> = w.iter().map(|v| *v as f32).collect();
        for (x, y) in d.x.iter().zip(&d.y) {
            let err = sigmoid(score(&wf, x)) - *y as f64;
            for (g, xi) in grad.iter_mut().zip(x) {
                *g += err * *xi as f64;
            }
            grad[d.features] += err;
        }
        for (wi, g) in w.iter_mut().zip(&grad) {
            *wi -= lr as f64 * g / n;
        }
    }
    Ok(w.into_iter().map(|v| v as f32).collect())
}

/// How a model does on a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean log loss.
    pub loss: f32,
    /// Share of samples classified right (threshold ½).
    pub accuracy: f32,
}

pub fn evaluate(w: &[f32], d: &Dataset) -> Result<Metrics, TrainError> {
    d.check(w)?;
    let (mut loss, mut right) = (0f64, 0usize);
    for (x, y) in d.x.iter().zip(&d.y) {
        let p = sigmoid(score(w, x)).clamp(1e-12, 1.0 - 1e-12);
        loss -= if *y == 1.0 { p.ln() } else { (1.0 - p).ln() };
        right += ((p >= 0.5) == (*y == 1.0)) as usize;
    }
    let n = d.len() as f64;
    Ok(Metrics { loss: (loss / n) as f32, accuracy: (right as f64 / n) as f32 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edil::crypto::{Aggregate, Encoding, OwnerKey, Update};
    use rand::{Rng, SeedableRng};

    /// Two overlapping classes in 4 features (a linear rule plus noise):
    /// no model is perfect on it.
    fn dataset(rng: &mut impl Rng, n: usize) -> Dataset {
        let truth = [1.5f32, -2.0, 0.7, 0.0];
        let mut d = Dataset { features: 4, ..Default::default() };
        for _ in 0..n {
            let x: Vec<f32> = (0..4).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let z: f32 = x.iter().zip(truth).map(|(a, b)| a * b).sum::<f32>() + 0.3 + rng.gen_range(-1.5..1.5);
            d.x.push(x);
            d.y.push((z > 0.0) as u8 as f32);
        }
        d
    }

    #[test]
    fn csv_parses_with_a_header_and_refuses_what_is_not_a_dataset() {
        let d = Dataset::parse_csv("a,b,label\n1,2,1\n-1, 0.5 ,0\n\n").unwrap();
        assert_eq!((d.features, d.len(), d.y.clone()), (2, 2, vec![1.0, 0.0]));
        assert_eq!(Dataset::parse_csv("a,b\n"), Err(TrainError::Empty));
        assert!(matches!(Dataset::parse_csv("1,2,1\n1,2\n"), Err(TrainError::Line(2, _))));
        assert!(matches!(Dataset::parse_csv("1,2,3\n"), Err(TrainError::Line(1, m)) if m.contains("not 0 or 1")));
        assert!(matches!(Dataset::parse_csv("1,2,1\nx,2,1\n"), Err(TrainError::Line(2, _))));
        assert!(matches!(Dataset::parse_csv("1,inf,1\n"), Err(TrainError::Line(1, _))));
        assert_eq!(train(&[0.0; 2], &d, 1, 0.1), Err(TrainError::Shape { got: 2, features: 2 }));
    }

    #[test]
    fn training_lowers_the_loss() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let d = dataset(&mut rng, 400);
        let before = evaluate(&[0.0; 5], &d).unwrap();
        let w = train(&[0.0; 5], &d, 100, 0.5).unwrap();
        let after = evaluate(&w, &d).unwrap();
        assert!(after.loss < before.loss && after.accuracy > 0.75, "{before:?} → {after:?}");
    }

    /// Three participants, each with a different shard (split by the first
    /// feature: not the same distribution), train from the global model,
    /// encrypt their weights under their own public key; the sum of the
    /// ciphertexts decrypts to the quantised sum, and its average is the
    /// next global model. After the rounds it scores within 3 points of
    /// the same model trained centrally on all the data, on held-out data.
    #[test]
    fn federated_training_over_encrypted_sums_matches_central_training() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let all = dataset(&mut rng, 1_500);
        let test = dataset(&mut rng, 1_000);
        let mut order: Vec<usize> = (0..all.len()).collect();
        order.sort_by(|a, b| all.x[*a][0].total_cmp(&all.x[*b][0]));
        let shards: Vec<Dataset> = order
            .chunks(all.len() / 3)
            .map(|idx| Dataset {
                features: 4,
                x: idx.iter().map(|i| all.x[*i].clone()).collect(),
                y: idx.iter().map(|i| all.y[*i]).collect(),
            })
            .collect();
        let (rounds, local, lr) = (15, 10, 0.5);
        let central = train(&[0.0; 5], &all, rounds * local, lr).unwrap();

        let owner = OwnerKey::generate();
        let keys: Vec<_> = shards.iter().map(|_| owner.public_key()).collect();
        let enc = Encoding::new(3).unwrap();
        let mut global = vec![0f32; 5];
        for _ in 0..rounds {
            let mut agg = Aggregate::new(5, enc).unwrap();
            let mut plain = vec![0i64; 5];
            for (shard, key) in shards.iter().zip(&keys) {
                let q = enc.quantise(&train(&global, shard, local, lr).unwrap());
                plain.iter_mut().zip(&q).for_each(|(s, v)| *s += *v as i64);
                let wire = key.encrypt(&q).unwrap().to_bytes();
                agg.add(&Update::from_bytes(&wire, 5).unwrap()).unwrap();
            }
            let agg = Aggregate::from_bytes(&agg.to_bytes(), 5, enc).unwrap();
            let sums = owner.decrypt(&agg);
            assert_eq!(sums, plain, "the encrypted sum is the quantised sum, exactly");
            global = enc.average(&sums, agg.count() as u64);
        }
        let fed = evaluate(&global, &test).unwrap();
        let cen = evaluate(&central, &test).unwrap();
        assert!(cen.accuracy > 0.75, "{cen:?}");
        assert!((fed.accuracy - cen.accuracy).abs() <= 0.03, "federated {fed:?} vs central {cen:?}");
        // One shard alone does worse: the aggregate carries the others.
        let alone = evaluate(&train(&[0.0; 5], &shards[0], rounds * local, lr).unwrap(), &test).unwrap();
        assert!(alone.accuracy < fed.accuracy, "one shard {alone:?} vs federated {fed:?}");
    }
}
