//! In-process oracles for tests and benchmarks: each has its own
//! [`Collector`] and they exchange real signed CSTORE records (each checked
//! by CSTORE's rules), with time stepped by hand. Not used by the operator.

use super::agree::{Rules, Table};
use super::epoch::Epochs;
use super::sync::*;
use crate::cstore::record::{to_raw, Hlc, Record, Slot};
use crate::dauth::license::{issue, key_id, Claims, Class, TrustStore};
use libp2p_identity::{ed25519, Keypair};
use std::collections::BTreeSet;

pub const L: u64 = 60_000;
pub const PHASE: u64 = 2_000;

/// How a simulated oracle behaves.
#[derive(Clone, Copy, PartialEq)]
pub enum Conduct {
    Honest,
    /// Writes nothing from this step on (killed mid-protocol).
    SilentFrom(Step),
    /// Reports 0 for every node in its local table.
    Lies,
    /// Publishes a second, different local table.
    Equivocates,
    /// Publishes a median table of its own making.
    WrongMedian,
}

pub struct Sim {
    pub keys: Vec<Keypair>,
    pub ids: Vec<String>,
    pub licenses: Vec<String>,
    pub conduct: Vec<Conduct>,
    pub collectors: Vec<Collector>,
    pub trust: TrustStore,
    pub issuer: ed25519::Keypair,
    pub epochs: Epochs,
    pub truth: Table,
    pub now: u64,
    /// Every record written, in order.
    pub log: Vec<Record>,
}

impl Sim {
    pub fn new(conduct: &[Conduct], nodes: usize) -> Self {
        let issuer = ed25519::Keypair::generate();
        let trust = TrustStore::new([issuer.public()], []);
        let keys: Vec<Keypair> = conduct.iter().map(|_| Keypair::generate_ed25519()).collect();
        let ids: Vec<String> = keys.iter().map(|k| k.public().to_peer_id().to_string()).collect();
        let licenses = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let c = Claims {
                    id: format!("mnd-{i}"),
                    class: Class::Mnd,
                    peer: id.clone(),
                    iat: 0,
                    exp: 4_000_000_000,
                    iss: key_id(&issuer.public()),
                };
                issue(&issuer, &c)
            })
            .collect();
        // Nodes, the oracles among them, with spread availabilities.
        let mut truth: Table = (0..nodes)
            .map(|n| (Keypair::generate_ed25519().public().to_peer_id().to_string(), (n * 37 % 256) as u8))
            .collect();
        for id in &ids {
            truth.insert(id.clone(), 250);
        }
        Self {
            collectors: vec![Collector { loaded: true, registration_skew_ms: L / 4, ..Default::default() }; keys.len()],
            keys,
            ids,
            licenses,
            conduct: conduct.to_vec(),
            trust,
            issuer,
            epochs: Epochs { genesis_ms: 0, length_ms: L },
            truth,
            now: 1_000,
            log: vec![],
        }
    }

    /// A key outside the simulated oracles, with an MND license of the
    /// same issuer (a rogue oracle, or a late one).
    pub fn outsider(&self) -> (Keypair, String, String) {
        let key = Keypair::generate_ed25519();
        let id = key.public().to_peer_id().to_string();
        let c = Claims {
            id: "mnd-rogue".into(),
            class: Class::Mnd,
            peer: id.clone(),
            iat: 0,
            exp: 4_000_000_000,
            iss: key_id(&self.issuer.public()),
        };
        (key, id, issue(&self.issuer, &c))
    }

    /// Writes a record signed by any key, as CSTORE would carry it.
    pub fn write_as(&mut self, key: &Keypair, at: &str, value: serde_json::Value) {
        let rec = Record::sign(key, Slot::flat(at), Some(to_raw(&value).unwrap()), Hlc::new(self.now, 0), None);
        // What CSTORE would check before carrying it.
        let writer = rec.verify().expect("signed");
        crate::cstore::rules::check(&rec, &writer, &self.trust).expect("allowed by CSTORE's rules");
        self.deliver(rec);
    }

    pub fn deliver(&mut self, rec: Record) {
        let current = self.epochs.at(self.now).unwrap();
        for c in &mut self.collectors {
            c.observe(&rec, &self.trust, current, self.now);
        }
        self.log.push(rec);
    }

    /// Writes a record as oracle `i`.
    pub fn write(&mut self, i: usize, key: &str, value: serde_json::Value) {
        let k = self.keys[i].clone();
        self.write_as(&k, key, value);
    }

    /// One turn of every oracle at the current time.
    pub fn turn(&mut self) -> Vec<Vec<EpochState>> {
        let online: BTreeSet<String> = self
            .ids
            .iter()
            .zip(&self.conduct)
            .filter(|(_, c)| !matches!(c, Conduct::SilentFrom(Step::Local)))
            .map(|(i, _)| i.clone())
            .collect();
        let mut states = vec![];
        for i in 0..self.keys.len() {
            let e = self.epochs.at(self.now).unwrap();
            let observed = match self.conduct[i] {
                Conduct::Lies => self.truth.keys().map(|k| (k.clone(), 0)).collect(),
                _ => self.truth.clone(),
            };
            let inputs = Inputs {
                now_ms: self.now,
                me: &self.ids[i].clone(),
                key: &self.keys[i].clone(),
                license: Some(&self.licenses[i].clone()),
                epochs: self.epochs,
                observed: e.checked_sub(1).map(|l| (l, &observed)),
                online: &online,
                phase_ms: PHASE,
                started_ms: 0,
                rules: Rules::default(),
            };
            let (writes, s) = plan(&mut self.collectors[i], &inputs);
            states.push(s);
            for w in writes {
                let step = match &w {
                    Write::Local(_) => Some(Step::Local),
                    Write::Median(_) => Some(Step::Median),
                    Write::Signed(_) => Some(Step::Sign),
                    _ => None,
                };
                if let (Conduct::SilentFrom(from), Some(step)) = (self.conduct[i], step) {
                    if step >= from {
                        continue;
                    }
                }
                let key = w.key(&self.ids[i]);
                let mut value = w.value();
                if let (Conduct::WrongMedian, Write::Median(m)) = (self.conduct[i], &w) {
                    let bent: Table = m.table.keys().map(|k| (k.clone(), 1)).collect();
                    value = serde_json::to_value(Median { table: bent, ..m.clone() }).unwrap();
                }
                self.write(i, &key, value.clone());
                if let (Conduct::Equivocates, Write::Local(l)) = (self.conduct[i], &w) {
                    let other: Table = l.table.keys().map(|k| (k.clone(), 3)).collect();
                    self.write(i, &key, serde_json::to_value(Local { table: other, ..l.clone() }).unwrap());
                }
            }
        }
        states
    }

    /// Runs from registration through epoch 1's protocol, in 100 ms
    /// steps, until `until_ms` after epoch 1 ended.
    pub fn run_epoch(&mut self, until_ms: u64) -> Vec<Vec<EpochState>> {
        self.turn(); // registrations, in epoch 0
        self.now = 2 * L + 50; // epoch 1 closed (the observed one)
        let mut last = vec![];
        while self.now <= 2 * L + until_ms {
            last = self.turn();
            self.now += 100;
        }
        last
    }

    pub fn state_of(states: &[Vec<EpochState>], i: usize) -> &EpochState {
        states[i].iter().find(|s| s.epoch == 1).expect("epoch 1 is reported")
    }
}
