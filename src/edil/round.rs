//! EDIL rounds (pure): what a model's owner publishes for a round, and the
//! rules the aggregator and the owner apply to what they receive
//! (docs/edil.md, "Rounds").
//!
//! - The owner publishes the round: the participants (each encrypts under
//!   its own public key of the owner's), the aggregator, the global
//!   weights to train from, the deadline and the least participants.
//! - Each participant trains, encrypts, signs its update for exactly this
//!   model and round, and sends it to the aggregator.
//! - The aggregator ([`Collector`]) adds, with no key, every update that is
//!   its writer's own, signed for this round, of the round's shape, first
//!   of its participant and in time; it releases the sum only when it
//!   holds at least the least participants.
//! - The owner ([`open`]) decrypts only a released sum of at least that
//!   many listed participants, and averages it.
//!
//! The owner holds the secret key, so it never aggregates, never takes
//! part (it would know its own update, and so the other one of two), and
//! a round has at least two participants. Each update travels sealed to
//! the aggregator ([`super::seal`]): the owner, which receives every
//! record, cannot open one alone.

use super::crypto::{Aggregate, EdilError, Encoding, OwnerKey, SignedUpdate};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Most participants of a round over the network.
pub const MAX_ROUND_PARTICIPANTS: usize = 100;
/// Most values of a model whose rounds travel in CSTORE records: the
/// global weights in the round, each update and the sum in their own (an
/// update of one 2,048-value chunk, base64, fits a 32 KiB record up to
/// about 700). A larger model travels through R1FS ([`Stored`]).
pub const INLINE_VALUES: usize = 512;
/// Most values of a model trained over the network.
pub const MAX_ROUND_VALUES: usize = super::crypto::MAX_VALUES;

/// The global weights of a model larger than [`INLINE_VALUES`]: R1FS
/// content, the owner's model document of the round's `trained` rounds
/// (`weights`, `uid`, `round`), and how many values it holds. Updates and
/// the sum of such a round are R1FS content too; their records name them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stored {
    pub cid: String,
    pub values: u32,
}

/// A round, as its owner publishes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Round {
    /// The model: the R1Model's uid (namespace and name for people).
    pub model: String,
    pub namespace: String,
    pub name: String,
    pub round: u64,
    /// PeerIds of the owner, of the aggregator, of the participants
    /// (sorted, no repeats).
    pub owner: String,
    pub aggregator: String,
    pub participants: Vec<String>,
    /// Fewest updates whose sum may be released.
    pub min_participants: u32,
    /// Unix ms after which no update is added.
    pub deadline_ms: u64,
    /// The weights every participant trains from (inline up to
    /// [`INLINE_VALUES`], else in R1FS: `stored`), and how many rounds'
    /// sums made them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub global: Vec<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<Stored>,
    pub trained: u64,
    /// Per participant, the fingerprint of the public key this round's
    /// update is encrypted under ([`fingerprint`]): keys are new each
    /// round, and a participant uses only the one the round names.
    pub keys: BTreeMap<String, String>,
    /// The built-in trainer's settings and the dataset each participant
    /// holds under this name.
    pub dataset: String,
    pub steps: u32,
    pub lr: f32,
    /// The trainer container each participant runs instead of the
    /// built-in trainer (its weights are then always in R1FS: the Job
    /// reads them there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainer: Option<crate::crd::TrainerSpec>,
}

/// Most local steps a round may ask of a participant.
pub const MAX_STEPS: u32 = 10_000;

/// A public key's fingerprint: SHA-256 of its wire bytes, hex.
pub fn fingerprint(key_bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key_bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl Round {
    /// The round's model in the network: the owner and the model's uid
    /// (a uid alone can be claimed by another owner). Updates are signed
    /// for it, sums name it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.owner, self.model)
    }

    /// What an update's seal is bound to.
    pub fn seal_context(&self) -> Vec<u8> {
        format!("{}/{}", self.id(), self.round).into_bytes()
    }

    /// How many values the model has.
    pub fn values(&self) -> usize {
        self.stored.as_ref().map_or(self.global.len(), |s| s.values as usize)
    }

    /// The encoding of the round: headroom for every participant.
    pub fn encoding(&self) -> Result<Encoding, EdilError> {
        Encoding::new(self.participants.len() as u32)
    }

    /// Whether a round record read from `writer` is one to act on.
    pub fn check(&self, writer: &str) -> Result<(), String> {
        if self.owner != writer {
            return Err("a round must be its owner's".into());
        }
        let n = self.participants.len();
        if n == 0 || n > MAX_ROUND_PARTICIPANTS {
            return Err(format!("a round has 1..={MAX_ROUND_PARTICIPANTS} participants"));
        }
        if !self.participants.windows(2).all(|w| w[0] < w[1]) {
            return Err("participants must be sorted and distinct".into());
        }
        if self.min_participants < 2 || self.min_participants as usize > n {
            return Err(format!(
                "least participants {} is not in 2..={n}: one update alone is never summed",
                self.min_participants
            ));
        }
        if self.aggregator == self.owner {
            return Err("the owner cannot aggregate: it would see each update alone".into());
        }
        if self.participants.contains(&self.owner) {
            return Err("the owner cannot take part: knowing its own update, it would learn the others'".into());
        }
        if self.keys.len() != n || !self.participants.iter().all(|p| self.keys.contains_key(p)) {
            return Err("every participant needs its key's fingerprint".into());
        }
        if self.steps == 0 || self.steps > MAX_STEPS {
            return Err(format!("local steps are 1..={MAX_STEPS}"));
        }
        match &self.stored {
            None if self.global.is_empty() || self.global.len() > INLINE_VALUES => {
                return Err(format!("weights in the round are 1..={INLINE_VALUES} values (more travel through R1FS)"));
            }
            Some(s) if !self.global.is_empty() => {
                return Err(format!("weights are in the round or in R1FS ({}), not both", s.cid));
            }
            Some(s) if s.values == 0 || s.values as usize > MAX_ROUND_VALUES => {
                return Err(format!("weights in R1FS are 1..={MAX_ROUND_VALUES} values"));
            }
            Some(s) if (s.values as usize) <= INLINE_VALUES && self.trainer.is_none() => {
                return Err(format!("{} weights travel in the round, not through R1FS", s.values));
            }
            Some(s) => {
                crate::r1fs::cid::parse(&s.cid).map_err(|e| format!("the weights' CID: {e}"))?;
            }
            None if self.trainer.is_some() => {
                return Err("a trainer container reads the weights from R1FS: the round must name them".into());
            }
            None => {}
        }
        if let Some(t) = &self.trainer {
            let long = |v: &[String], n: usize| v.len() > n || v.iter().any(|a| a.len() > 4096);
            if t.image.is_empty() || t.image.len() > 512 || long(&t.command, 32) || long(&t.args, 64) {
                return Err("a trainer is an image of 1..=512 bytes, at most 32 command and 64 args of 4 KiB".into());
            }
        }
        if !self.global.iter().all(|v| v.is_finite()) || !self.lr.is_finite() || self.lr <= 0.0 {
            return Err("weights and learning rate must be finite".into());
        }
        if [&self.model, &self.namespace, &self.name, &self.dataset].iter().any(|s| s.is_empty() || s.len() > 253) {
            return Err("names are 1..=253 bytes".into());
        }
        Ok(())
    }
}

/// Why a training cannot run as specified (what the schema cannot say):
/// a model larger than the built-in trainer's with no trainer container.
pub fn untrainable(spec: &crate::crd::TrainingSpec) -> Option<String> {
    let most = super::trainer::MAX_FEATURES;
    (spec.trainer.is_none() && spec.features.max(0) as usize > most).then(|| {
        format!(
            "spec.training.features {} is more than the built-in trainer's {most}: name a trainer container (spec.training.trainer) for a larger model",
            spec.features
        )
    })
}

/// Picks a round's aggregator among `candidates` (fresh licensed peers):
/// never the owner; a peer that is not a participant when there is one;
/// among equals, by a hash of the model and round (so that it rotates).
pub fn choose_aggregator(
    model: &str,
    round: u64,
    owner: &str,
    participants: &[String],
    candidates: &BTreeSet<String>,
) -> Option<String> {
    use sha2::{Digest, Sha256};
    let rank = |peer: &str| -> [u8; 32] {
        Sha256::digest(format!("ratio1/edil/aggregator/{model}/{round}/{peer}").as_bytes()).into()
    };
    let pick = |only_outsiders: bool| {
        candidates
            .iter()
            .filter(|c| c.as_str() != owner && (!only_outsiders || !participants.contains(c)))
            .min_by_key(|c| rank(c))
            .cloned()
    };
    pick(true).or_else(|| pick(false))
}

/// The sum an aggregator releases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Released {
    /// [`Round::id`].
    pub model: String,
    pub round: u64,
    /// The participants whose updates it sums.
    pub participants: Vec<String>,
    /// [`Aggregate::to_bytes`], base64, for a round inline; else empty,
    /// and `aggregateCid` names the bytes in R1FS.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub aggregate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_cid: Option<String>,
    /// The participants' loss and accuracy on their own shards, weighted
    /// by their samples (what they reported, sealed with their updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
}

/// Why an update is not added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0} is not a participant of the round")]
    NotListed(String),
    #[error("the update names {named}, its record was written by {writer}")]
    NotItsOwn { named: String, writer: String },
    #[error("the signature does not verify")]
    BadSignature,
    #[error("signed for model {model} round {round}, not this round")]
    OtherRound { model: String, round: u64 },
    #[error("past the round's deadline")]
    Late,
    #[error("{0} already sent its update")]
    Twice(String),
    #[error("{0}")]
    Shape(EdilError),
    #[error("the sealed update does not open here")]
    Sealed,
    #[error("the update cannot be read from R1FS: {0}")]
    Unfetched(String),
}

impl Refusal {
    /// A fixed label (metrics).
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NotListed(_) => "not_listed",
            Refusal::NotItsOwn { .. } => "not_its_own",
            Refusal::BadSignature => "bad_signature",
            Refusal::OtherRound { .. } => "other_round",
            Refusal::Late => "late",
            Refusal::Twice(_) => "twice",
            Refusal::Shape(_) => "shape",
            Refusal::Sealed => "sealed",
            Refusal::Unfetched(_) => "unfetched",
        }
    }
}

/// The aggregator's state for one round: no key, only ciphertexts.
pub struct Collector {
    round: Round,
    agg: Aggregate,
    from: BTreeSet<String>,
    /// Σ loss·samples, Σ accuracy·samples, Σ samples of the added updates.
    metrics: (f64, f64, f64),
}

impl Collector {
    pub fn new(round: Round) -> Result<Self, EdilError> {
        let agg = Aggregate::new(round.values(), round.encoding()?)?;
        Ok(Self { round, agg, from: BTreeSet::new(), metrics: (0.0, 0.0, 0.0) })
    }

    pub fn round(&self) -> &Round {
        &self.round
    }

    /// The participants added so far.
    pub fn from(&self) -> &BTreeSet<String> {
        &self.from
    }

    /// Adds the update `writer` wrote at `now_ms`, if the round takes it,
    /// with the loss, accuracy and sample count it reported. The first
    /// update of a participant stands.
    pub fn offer(
        &mut self,
        writer: &str,
        u: &SignedUpdate,
        now_ms: u64,
        reported: Option<(f64, f64, u64)>,
    ) -> Result<(), Refusal> {
        let r = &self.round;
        if !r.participants.iter().any(|p| p == writer) {
            return Err(Refusal::NotListed(writer.to_string()));
        }
        if u.participant != writer {
            return Err(Refusal::NotItsOwn { named: u.participant.clone(), writer: writer.to_string() });
        }
        if u.verify().map_err(|_| Refusal::BadSignature)?.to_string() != writer {
            return Err(Refusal::BadSignature);
        }
        if u.model != r.id() || u.round != r.round {
            return Err(Refusal::OtherRound { model: u.model.clone(), round: u.round });
        }
        if now_ms > r.deadline_ms {
            return Err(Refusal::Late);
        }
        if self.from.contains(writer) {
            return Err(Refusal::Twice(writer.to_string()));
        }
        // Checked and added straight from the bytes (`Aggregate::add_wire`).
        self.agg.add_wire(&u.update).map_err(Refusal::Shape)?;
        self.from.insert(writer.to_string());
        if let Some((loss, acc, n)) = reported.filter(|(l, a, _)| l.is_finite() && (0.0..=1.0).contains(a)) {
            let n = n.clamp(1, 1_000_000_000) as f64;
            self.metrics.0 += loss * n;
            self.metrics.1 += acc * n;
            self.metrics.2 += n;
        }
        Ok(())
    }

    /// Whether the round is over for the aggregator: every participant
    /// in, or the deadline passed.
    pub fn done(&self, now_ms: u64) -> bool {
        self.from.len() == self.round.participants.len() || now_ms > self.round.deadline_ms
    }

    /// The sum to release, or why there is none: fewer updates than the
    /// least participants are never released (one update alone would be
    /// decryptable by the owner), with the aggregate's bytes (which the
    /// caller puts inline or in R1FS).
    pub fn close(&self) -> Result<(Released, Vec<u8>), String> {
        let (have, min) = (self.from.len(), self.round.min_participants as usize);
        if have < min {
            return Err(too_few(have, min));
        }
        let (l, a, n) = self.metrics;
        let r = Released {
            model: self.round.id(),
            round: self.round.round,
            participants: self.from.iter().cloned().collect(),
            aggregate: String::new(),
            aggregate_cid: None,
            loss: (n > 0.0).then(|| l / n),
            accuracy: (n > 0.0).then(|| a / n),
        };
        Ok((r, self.agg.to_bytes()))
    }
}

/// Why a sum of `have` updates is withheld, `min` being the least.
pub fn too_few(have: usize, min: usize) -> String {
    format!("{have} of the least {min} participants sent an update: no sum is released")
}

/// The owner's step: the new global weights from a released sum. Refused
/// unless it sums at least the least participants, all of them listed, as
/// many as the aggregate (`bytes`, from the record or R1FS) says it holds.
pub fn open(owner: &OwnerKey, round: &Round, r: &Released, bytes: &[u8]) -> Result<Vec<f32>, String> {
    if r.model != round.id() || r.round != round.round {
        return Err(format!("a sum of model {} round {}, not this round", r.model, r.round));
    }
    let listed: BTreeSet<&String> = round.participants.iter().collect();
    let from: BTreeSet<&String> = r.participants.iter().collect();
    if from.len() != r.participants.len() || !from.is_subset(&listed) {
        return Err("the sum names participants that are not the round's, or one twice".into());
    }
    if from.len() < round.min_participants as usize {
        return Err(format!("the sum holds {} updates, fewer than the least {}", from.len(), round.min_participants));
    }
    let enc = round.encoding().map_err(|e| e.to_string())?;
    let agg = Aggregate::from_bytes(bytes, round.values(), enc).map_err(|e| e.to_string())?;
    if agg.count() as usize != from.len() {
        return Err(format!("the sum holds {} updates but names {}", agg.count(), from.len()));
    }
    Ok(enc.average(&owner.decrypt(&agg), agg.count() as u64))
}

/// Per participant, its public key of the owner's (what the owner
/// publishes with the round, once per model).
pub type Keys = BTreeMap<String, super::crypto::ParticipantKey>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edil::crypto::ParticipantKey;
    use libp2p_identity::Keypair;

    struct Net {
        owner: OwnerKey,
        ids: Vec<Keypair>,
        keys: Vec<ParticipantKey>,
        round: Round,
    }

    fn net(n: usize, min: u32) -> Net {
        let owner = OwnerKey::generate();
        let mut ids: Vec<Keypair> = (0..n).map(|_| Keypair::generate_ed25519()).collect();
        ids.sort_by_key(|k| k.public().to_peer_id().to_string());
        let keys: Vec<ParticipantKey> = ids.iter().map(|_| owner.public_key()).collect();
        let participants: Vec<String> = ids.iter().map(|k| k.public().to_peer_id().to_string()).collect();
        let prints = participants.iter().zip(&keys).map(|(p, k)| (p.clone(), fingerprint(&k.to_bytes()))).collect();
        let round = Round {
            model: "uid-1".into(),
            namespace: "ns".into(),
            name: "m".into(),
            round: 3,
            owner: "owner".into(),
            aggregator: "agg".into(),
            participants,
            min_participants: min,
            deadline_ms: 10_000,
            global: vec![0.0; 4],
            stored: None,
            trainer: None,
            trained: 0,
            keys: prints,
            dataset: "d".into(),
            steps: 1,
            lr: 0.5,
        };
        Net { owner, ids, keys, round }
    }

    fn update(n: &Net, i: usize, x: &[f32], round: u64) -> SignedUpdate {
        let enc = n.round.encoding().unwrap();
        let u = n.keys[i].encrypt(&enc.quantise(x)).unwrap();
        SignedUpdate::sign(&n.ids[i], &n.round.id(), round, &u)
    }

    fn peer(n: &Net, i: usize) -> String {
        n.round.participants[i].clone()
    }

    #[test]
    fn a_round_sums_its_participants_updates_and_the_owner_averages_them() {
        let n = net(3, 2);
        assert_eq!(n.round.check("owner"), Ok(()));
        let mut c = Collector::new(n.round.clone()).unwrap();
        let xs = [[1.0, -2.0, 0.5, 0.0], [3.0, 2.0, -0.5, 1.0], [2.0, 0.0, 0.0, -1.0]];
        for (i, x) in xs.iter().enumerate() {
            assert!(!c.done(0));
            c.offer(&peer(&n, i), &update(&n, i, x, 3), 5_000, Some((0.5, 0.8, 10))).unwrap();
        }
        assert!(c.done(0), "every participant in");
        let (released, sum) = c.close().unwrap();
        assert_eq!((released.loss, released.accuracy), (Some(0.5), Some(0.8)));
        let avg = open(&n.owner, &n.round, &released, &sum).unwrap();
        assert_eq!(avg, vec![2.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn hostile_updates_are_refused_and_a_sum_below_the_least_is_never_released() {
        let n = net(3, 2);
        let mut c = Collector::new(n.round.clone()).unwrap();
        let x = [1.0, 1.0, 1.0, 1.0];
        let u0 = update(&n, 0, &x, 3);
        // Written by someone else, or by a peer not in the round.
        assert!(matches!(c.offer(&peer(&n, 1), &u0, 0, None), Err(Refusal::NotItsOwn { .. })));
        assert!(matches!(c.offer("stranger", &u0, 0, None), Err(Refusal::NotListed(_))));
        // Signed for another round (a replay), tampered, or late.
        assert!(matches!(c.offer(&peer(&n, 0), &update(&n, 0, &x, 2), 0, None), Err(Refusal::OtherRound { .. })));
        let mut bent = u0.clone();
        bent.update[100] ^= 1;
        assert_eq!(c.offer(&peer(&n, 0), &bent, 0, None), Err(Refusal::BadSignature));
        assert_eq!(c.offer(&peer(&n, 0), &u0, 10_001, None), Err(Refusal::Late));
        // Of another shape (signed by its participant all the same).
        let enc = n.round.encoding().unwrap();
        let wide =
            SignedUpdate::sign(&n.ids[2], &n.round.id(), 3, &n.keys[2].encrypt(&enc.quantise(&[1.0; 5])).unwrap());
        // Signed for the same uid of another owner: another model.
        let other = SignedUpdate::sign(&n.ids[1], "intruder/uid-1", 3, &n.keys[1].encrypt(&enc.quantise(&x)).unwrap());
        assert!(matches!(c.offer(&peer(&n, 1), &other, 0, None), Err(Refusal::OtherRound { .. })));
        assert!(matches!(c.offer(&peer(&n, 2), &wide, 0, None), Err(Refusal::Shape(EdilError::Length { .. }))));
        // The first update of a participant stands.
        c.offer(&peer(&n, 0), &u0, 0, None).unwrap();
        assert_eq!(c.offer(&peer(&n, 0), &update(&n, 0, &[9.0; 4], 3), 0, None), Err(Refusal::Twice(peer(&n, 0))));
        // One update at the deadline: nothing is released.
        assert!(c.done(10_001));
        assert!(c.close().unwrap_err().contains("1 of the least 2"));
        // A lying aggregator's release of one update is not opened either
        // (a collector of a round with a least of 1, which no check lets
        // through, stands in for it).
        let mut lone = Collector::new(Round { min_participants: 1, ..n.round.clone() }).unwrap();
        lone.offer(&peer(&n, 0), &u0, 0, None).unwrap();
        let (r, sum) = lone.close().unwrap();
        assert!(open(&n.owner, &n.round, &r, &sum).unwrap_err().contains("fewer than the least 2"));
        let padded = Released { participants: vec![peer(&n, 0), peer(&n, 1)], ..r };
        assert!(open(&n.owner, &n.round, &padded, &sum).unwrap_err().contains("holds 1 updates but names 2"));
        let foreign = Released { participants: vec![peer(&n, 0), "x".into()], ..padded };
        assert!(open(&n.owner, &n.round, &foreign, &sum).is_err());
    }

    #[test]
    fn rounds_are_checked_and_the_owner_never_aggregates() {
        let n = net(3, 2);
        assert!(n.round.check("other").is_err(), "only the owner publishes its rounds");
        let bad = |f: fn(&mut Round)| {
            let mut r = n.round.clone();
            f(&mut r);
            r.check("owner").unwrap_err()
        };
        assert!(bad(|r| r.aggregator = "owner".into()).contains("cannot aggregate"));
        assert!(bad(|r| r.min_participants = 4).contains("least participants"));
        assert!(bad(|r| r.min_participants = 1).contains("never summed"));
        assert!(bad(|r| {
            r.participants.insert(0, "owner".into());
            r.participants.sort();
            r.keys.insert("owner".into(), "f".into());
        })
        .contains("cannot take part"));
        assert!(bad(|r| {
            r.keys.pop_first();
        })
        .contains("fingerprint"));
        assert!(bad(|r| r.steps = MAX_STEPS + 1).contains("local steps"));
        assert!(bad(|r| r.participants.reverse()).contains("sorted"));
        assert!(bad(|r| r.global = vec![0.0; INLINE_VALUES + 1]).contains("more travel through R1FS"));
        // A larger model's weights are in R1FS: named by a CID, larger
        // than what travels inline, not both.
        let cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku".to_string();
        let stored = |values: u32| Some(Stored { cid: cid.clone(), values });
        let big = Round { global: vec![], stored: stored(600), ..n.round.clone() };
        assert_eq!((big.check("owner"), big.values()), (Ok(()), 600));
        assert!(Round { stored: stored(600), ..n.round.clone() }.check("owner").unwrap_err().contains("not both"));
        let small = Round { stored: stored(INLINE_VALUES as u32), ..big.clone() };
        assert!(small.check("owner").unwrap_err().contains("travel in the round"));
        // A trainer container reads any model from R1FS, small too.
        let image = crate::crd::TrainerSpec {
            image: "trainers.example/lr:1".into(),
            command: vec![],
            args: vec![],
            resources: None,
        };
        let with = Round { trainer: Some(image.clone()), ..small.clone() };
        assert_eq!(with.check("owner"), Ok(()));
        let inline = Round { trainer: Some(image.clone()), ..n.round.clone() };
        assert!(inline.check("owner").unwrap_err().contains("must name them"));
        let flood = crate::crd::TrainerSpec { args: vec!["x".into(); 65], ..image };
        assert!(Round { trainer: Some(flood), ..with }.check("owner").unwrap_err().contains("64 args"));
        let huge = Round { stored: stored(MAX_ROUND_VALUES as u32 + 1), ..big.clone() };
        assert!(huge.check("owner").unwrap_err().contains("values"));
        let bogus = Round { stored: Some(Stored { cid: "not-a-cid".into(), values: 600 }), ..big };
        assert!(bogus.check("owner").unwrap_err().contains("CID"));
        assert!(bad(|r| r.lr = f32::NAN).contains("finite"));
        let cands: BTreeSet<String> = ["owner", "a", "b", "c"].map(String::from).into();
        let parts = vec!["a".to_string(), "b".to_string()];
        for round in 0..20 {
            let agg = choose_aggregator("m", round, "owner", &parts, &cands).unwrap();
            assert_eq!(agg, "c", "the only outsider");
        }
        let picks: BTreeSet<String> = (0..20)
            .map(|round| choose_aggregator("m", round, "owner", &["a".into(), "b".into(), "c".into()], &cands).unwrap())
            .collect();
        assert!(!picks.contains("owner") && picks.len() > 1, "rotates among participants: {picks:?}");
        assert_eq!(choose_aggregator("m", 0, "owner", &parts, &["owner".to_string()].into()), None);
    }
}
