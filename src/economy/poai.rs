//! Proof-of-AI (pure): jobs paid from escrow, the oracles' agreement on
//! which nodes ran a job in an epoch, and what each epoch pays
//! (docs/economy.md, "PoAI").
//!
//! - A job (an R1Pipeline with a `budget`) escrows `price × nodes ×
//!   epochs` when its origin records it; it is paid for `epochs` epochs
//!   from the one after.
//! - After each epoch, every oracle proposes, per job, the nodes it saw
//!   run it. A set is agreed when at least `⌊n/2⌋ + 1` of the `n`
//!   registered oracles proposed for the job and at least `⌊n/3⌋ + 1` of
//!   them proposed exactly that set (Ratio1's rule).
//! - Each node of the agreed set (at most the job's `nodes`, in PeerId
//!   order) is paid `price` for the epoch from the escrow: 85% credited to
//!   the license linked to it (not an MND: MNDs take no PoAI), 15%
//!   burned. A node without a license, or with an MND, is not paid: its
//!   share stays in escrow. An epoch without agreement pays nothing.
//! - After the job's last epoch, what is left in escrow is refunded.

use super::registry::Registry;
use super::{job_cost, poai_split, Constants, EconomyError};
use crate::cstore::rules::LEDGER_PREFIX;
use crate::dauth::license::Class;
use crate::oracle::epoch::Epochs;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A paid job, as its origin records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub namespace: String,
    pub name: String,
    /// The R1Pipeline's uid: a job per pipeline object.
    pub uid: String,
    /// PeerId of the origin (the cluster where it was applied).
    pub origin: String,
    /// Per node and epoch (10⁻¹⁸ R1).
    #[serde(with = "super::units")]
    pub price: u128,
    pub nodes: u64,
    pub epochs: u64,
    /// `price × nodes × epochs`, escrowed.
    #[serde(with = "super::units")]
    pub cost: u128,
    /// The first epoch paid.
    pub start: u64,
}

impl Job {
    /// A job escrowed at epoch `now_epoch` (paid from the next one).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c: &Constants,
        namespace: &str,
        name: &str,
        uid: &str,
        origin: &str,
        price: u128,
        nodes: u64,
        epochs: u64,
        now_epoch: u64,
    ) -> Result<Self, EconomyError> {
        let cost = job_cost(c, price, nodes, epochs)?;
        Ok(Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            origin: origin.into(),
            price,
            nodes,
            epochs,
            cost,
            start: now_epoch.saturating_add(1),
        })
    }

    /// The job's id in the network: its origin and uid (a uid alone is
    /// only unique in its origin's cluster, and anyone can write one).
    pub fn id(&self) -> String {
        format!("{}/{}", self.origin, self.uid)
    }

    /// Whether `epoch` is one the job pays.
    pub fn pays(&self, epoch: u64) -> bool {
        epoch >= self.start && epoch - self.start < self.epochs
    }

    /// Whether the job is over at `epoch`: its last epoch is decided.
    pub fn over_at(&self, epoch: u64) -> bool {
        decided(self.start.saturating_add(self.epochs).saturating_sub(1), epoch)
    }
}

/// An epoch's payments are decided this many epochs after it began: the
/// oracles propose when it is over, and their proposals have the next
/// epoch to spread. Until then the epoch pays nothing yet, and a job is
/// not over (what an epoch pays never moves once shown).
pub const DECIDED_AFTER_EPOCHS: u64 = 2;

/// Whether `epoch`'s payments are decided at `now_epoch`.
pub fn decided(epoch: u64, now_epoch: u64) -> bool {
    epoch.saturating_add(DECIDED_AFTER_EPOCHS) <= now_epoch
}

/// One oracle's proposal for an epoch: job id ([`Job::id`]) → the nodes
/// it saw run it.
pub type Proposal = BTreeMap<String, BTreeSet<String>>;

/// The agreed set of nodes that ran `job` in an epoch, from the proposals
/// of the oracles (oracle PeerId → its proposal); only the `registered`
/// count.
pub fn agree_set(
    proposals: &BTreeMap<String, Proposal>,
    registered: &BTreeSet<String>,
    job: &str,
) -> Option<BTreeSet<String>> {
    let n = registered.len();
    let sets: Vec<&BTreeSet<String>> =
        proposals.iter().filter(|(o, _)| registered.contains(*o)).filter_map(|(_, p)| p.get(job)).collect();
    if n == 0 || sets.len() < n / 2 + 1 {
        return None;
    }
    let mut counts: BTreeMap<&BTreeSet<String>, usize> = BTreeMap::new();
    for s in sets {
        *counts.entry(s).or_default() += 1;
    }
    // The most proposed set; a tie for the most agrees on nothing (else a
    // liar's set would win by how it sorts).
    let top = counts.values().copied().max().unwrap_or(0);
    let mut best = counts.into_iter().filter(|(_, c)| *c == top);
    match (best.next(), best.next()) {
        (Some((set, count)), None) if count > n / 3 => Some(set.clone()),
        _ => None,
    }
}

/// What one epoch of a job paid.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochPay {
    pub epoch: u64,
    /// Node → the license credited (its 85%).
    pub credited: BTreeMap<String, String>,
    /// Nodes of the agreed set that were not paid (no license, an MND,
    /// or beyond the job's `nodes`).
    pub unpaid: Vec<String>,
    #[serde(with = "super::units")]
    pub to_licenses: u128,
    #[serde(with = "super::units")]
    pub burned: u128,
}

/// `ledger/<origin>/job/<uid>`: a job, escrowed by its origin.
pub fn job_key(origin: &str, uid: &str) -> String {
    format!("{LEDGER_PREFIX}{origin}/job/{uid}")
}

/// `ledger/<oracle>/poai/<epoch>`: an oracle's proposal for an epoch.
pub fn proposal_key(oracle: &str, epoch: u64) -> String {
    format!("{LEDGER_PREFIX}{oracle}/poai/{epoch}")
}

/// Most epochs a job pays (the CRD's bound).
pub const MAX_JOB_EPOCHS: u64 = 100_000;

/// Bounds of a proposal read from the wire (CSTORE bounds the record at
/// 32 KiB; this bounds what a fold walks).
pub const MAX_PROPOSAL_JOBS: usize = 256;
pub const MAX_PROPOSAL_NODES: usize = 100;

/// Whether a proposal is within bounds.
pub fn proposal_bounded(p: &Proposal) -> bool {
    p.len() <= MAX_PROPOSAL_JOBS && p.values().all(|s| s.len() <= MAX_PROPOSAL_NODES)
}

impl Job {
    /// Whether a job record read from `writer` at `uid` is one the fold
    /// takes: written by its origin, under its own uid, priced as the
    /// constants price it (a cost that is not `price × nodes × epochs`
    /// would escrow one amount and pay another).
    pub fn check(&self, c: &Constants, writer: &str, uid: &str) -> Result<(), String> {
        if self.origin != writer || self.uid != uid {
            return Err("a job record must be its origin's, under the job's uid".into());
        }
        if self.nodes == 0 || self.nodes > MAX_PROPOSAL_NODES as u64 {
            return Err(format!("a job pays 1..={MAX_PROPOSAL_NODES} nodes"));
        }
        if self.epochs > MAX_JOB_EPOCHS {
            return Err(format!("a job pays at most {MAX_JOB_EPOCHS} epochs"));
        }
        if [&self.namespace, &self.name, &self.uid].iter().any(|s| s.len() > 253) {
            return Err("names are at most 253 bytes".into());
        }
        match job_cost(c, self.price, self.nodes, self.epochs) {
            // No job costs more than the whole supply: the fold's signed
            // sums stay far from overflowing.
            Ok(cost) if cost > c.supply_units() => {
                Err(format!("a job of {} R1 costs more than the whole supply", super::show_r1(cost)))
            }
            Ok(cost) if cost == self.cost => Ok(()),
            Ok(cost) => Err(format!("cost {} is not price × nodes × epochs = {cost}", self.cost)),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The license that earns `epoch` for `peer`, if any and not banned then.
fn license_of<'r>(
    registry: &'r Registry,
    peer: &str,
    epoch: u64,
    epochs: &Epochs,
) -> Option<&'r super::registry::License> {
    let end = epochs.bounds(epoch).1.saturating_sub(1);
    registry.licenses.values().find(|l| l.link_for(peer, epoch, epochs).is_some() && !l.banned_at(end))
}

/// What `job` pays for `epoch` to the agreed `set`.
pub fn pay(
    c: &Constants,
    job: &Job,
    epoch: u64,
    set: &BTreeSet<String>,
    registry: &Registry,
    epochs: &Epochs,
) -> EpochPay {
    let mut out = EpochPay { epoch, ..Default::default() };
    let mut paid = 0u64;
    for peer in set {
        // The origin running its own job is not paid: it would pay itself.
        let license =
            license_of(registry, peer, epoch, epochs).filter(|l| l.class != Class::Mnd && *peer != job.origin);
        match license {
            Some(l) if paid < job.nodes => {
                let (node, burned) = poai_split(c, job.price);
                out.to_licenses += node;
                out.burned += burned;
                out.credited.insert(peer.clone(), l.name.clone());
                paid += 1;
            }
            _ => out.unpaid.push(peer.clone()),
        }
    }
    out
}

/// One job as the ledger holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub job: Job,
    /// The license that paid the escrow (the one linked to the origin
    /// when it escrowed).
    pub payer: Option<String>,
    /// Why the escrow is not funded (nothing is escrowed or paid then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfunded: Option<String>,
    /// The epochs paid so far.
    pub paid: Vec<EpochPay>,
    /// Paid to licenses and burned so far.
    #[serde(with = "super::units")]
    pub spent: u128,
    /// Left in escrow, or refunded once over.
    #[serde(with = "super::units")]
    pub left: u128,
    pub over: bool,
}

/// PoAI as the ledger holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Poai {
    /// License → R1 credited by PoAI (10⁻¹⁸).
    pub credits: BTreeMap<String, String>,
    /// License → what it holds: minted by its settled claims, plus PoAI
    /// credits and refunds, less the escrows it paid (10⁻¹⁸).
    pub balances: BTreeMap<String, String>,
    #[serde(with = "super::units")]
    pub escrowed: u128,
    /// Still in escrow (jobs not over).
    #[serde(with = "super::units")]
    pub in_escrow: u128,
    #[serde(with = "super::units")]
    pub to_licenses: u128,
    #[serde(with = "super::units")]
    pub burned: u128,
    /// Left in escrow when their jobs ended, given back.
    #[serde(with = "super::units")]
    pub refunded: u128,
    /// Per job id ([`Job::id`]).
    pub jobs: BTreeMap<String, JobView>,
    /// Every R1 is somewhere: the balances, what was burned and what is
    /// held in escrow add up to what was minted, and no balance is
    /// negative.
    pub conserved: bool,
}

impl Poai {
    /// Escrow is conserved: paid + burned + refunded + still held =
    /// escrowed.
    pub fn balanced(&self) -> bool {
        self.conserved && self.to_licenses + self.burned + self.refunded + self.in_escrow == self.escrowed
    }
}

/// What the PoAI fold reads.
pub struct Books<'a> {
    pub constants: &'a Constants,
    pub registry: &'a Registry,
    pub epochs: &'a Epochs,
    /// License → minted by its settled PoA claims.
    pub minted: &'a BTreeMap<String, u128>,
    /// Epoch → oracle → its proposal.
    pub proposals: &'a BTreeMap<u64, BTreeMap<String, Proposal>>,
    /// The oracles registered when epoch `e` began.
    pub registered_at: &'a dyn Fn(u64) -> BTreeSet<String>,
}

/// Folds jobs and the oracles' proposals into escrows and payments, for
/// the epochs decided by `now_epoch` ([`decided`]; one without agreement
/// by then pays nothing).
///
/// Jobs go in order of first epoch (then uid). A job is funded when the
/// license linked to its origin in the epoch it escrowed holds its cost
/// then: what that license minted, plus what it was credited and refunded
/// before the job's first epoch, less the escrows it paid. Earlier jobs
/// are folded first, so each job's funding depends on earlier epochs only.
pub fn fold(b: &Books<'_>, jobs: &[Job], now_epoch: u64) -> Poai {
    let c = b.constants;
    let mut out = Poai::default();
    // License → epoch → change: escrows, credits and refunds.
    let mut events = BTreeMap::new();
    type Events = BTreeMap<String, BTreeMap<u64, i128>>;
    fn event(events: &mut Events, license: &str, epoch: u64, d: i128) {
        *events.entry(license.to_string()).or_default().entry(epoch).or_default() += d;
    }
    let held = |events: &Events, license: &str, before: u64| -> i128 {
        let minted = b.minted.get(license).copied().unwrap_or(0) as i128;
        minted + events.get(license).map_or(0, |m| m.range(..before).map(|(_, d)| d).sum::<i128>())
    };
    let mut order: Vec<&Job> = jobs.iter().collect();
    order.sort_by_key(|j| (j.start, j.id()));
    let empty = BTreeMap::new();
    for job in order {
        let escrow_epoch = job.start.saturating_sub(1);
        let payer = license_of(b.registry, &job.origin, escrow_epoch, b.epochs).map(|l| l.name.clone());
        let mut view = JobView {
            job: job.clone(),
            payer: payer.clone(),
            unfunded: None,
            paid: vec![],
            spent: 0,
            left: 0,
            over: job.over_at(now_epoch),
        };
        let funded = match &payer {
            None => Err("its origin had no license (or a banned one) when it escrowed".to_string()),
            Some(l) => {
                let has = held(&events, l, job.start);
                match has >= job.cost as i128 {
                    true => Ok(l.clone()),
                    false => Err(format!(
                        "license {l} held {} R1 before epoch {}, the job costs {} R1",
                        super::show_r1(has.max(0) as u128),
                        job.start,
                        super::show_r1(job.cost)
                    )),
                }
            }
        };
        let payer = match funded {
            Ok(p) => p,
            Err(why) => {
                view.unfunded = Some(why);
                out.jobs.insert(job.id(), view);
                continue;
            }
        };
        event(&mut events, &payer, escrow_epoch, -(job.cost as i128));
        out.escrowed += job.cost;
        let last = job.start.saturating_add(job.epochs);
        for e in (job.start..last).take_while(|e| decided(*e, now_epoch)) {
            let registered = (b.registered_at)(e);
            let Some(set) = agree_set(b.proposals.get(&e).unwrap_or(&empty), &registered, &job.id()) else {
                continue;
            };
            let p = pay(c, job, e, &set, b.registry, b.epochs);
            view.spent += p.to_licenses + p.burned;
            out.to_licenses += p.to_licenses;
            out.burned += p.burned;
            let share = poai_split(c, job.price).0;
            for license in p.credited.values() {
                event(&mut events, license, e, share as i128);
            }
            view.paid.push(p);
        }
        view.left = job.cost - view.spent;
        if view.over {
            out.refunded += view.left;
            event(&mut events, &payer, last, view.left as i128);
        } else {
            out.in_escrow += view.left;
        }
        out.jobs.insert(job.id(), view);
    }
    let mut credits: BTreeMap<String, u128> = BTreeMap::new();
    let mut balances: BTreeMap<String, i128> = b.minted.iter().map(|(l, m)| (l.clone(), *m as i128)).collect();
    for (license, m) in &events {
        *balances.entry(license.clone()).or_default() += m.values().sum::<i128>();
    }
    for j in out.jobs.values() {
        let share = poai_split(c, j.job.price).0;
        for p in &j.paid {
            for license in p.credited.values() {
                *credits.entry(license.clone()).or_default() += share;
            }
        }
    }
    out.credits = credits.into_iter().map(|(l, v)| (l, v.to_string())).collect();
    let minted: i128 = b.minted.values().map(|m| *m as i128).sum();
    let held: i128 = balances.values().sum();
    out.conserved = balances.values().all(|v| *v >= 0) && held + out.burned as i128 + out.in_escrow as i128 == minted;
    out.balances = balances.into_iter().map(|(l, v)| (l, v.max(0).to_string())).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dauth::license::{Action, Statement};
    use crate::economy::registry::{self, Context, Rules};
    use crate::economy::UNIT;

    fn set(peers: &[&str]) -> BTreeSet<String> {
        peers.iter().map(|p| p.to_string()).collect()
    }

    fn proposals(entries: &[(&str, &[&str])]) -> BTreeMap<String, Proposal> {
        entries.iter().map(|(o, s)| (o.to_string(), BTreeMap::from([("origin/job".to_string(), set(s))]))).collect()
    }

    #[test]
    fn a_set_wins_with_a_third_of_half_the_oracles() {
        let reg = set(&["o1", "o2", "o3", "o4", "o5", "o6"]);
        // 6 oracles: 4 proposals needed, 3 of one set.
        let p = proposals(&[("o1", &["a", "b"]), ("o2", &["a", "b"]), ("o3", &["a"])]);
        assert_eq!(agree_set(&p, &reg, "origin/job"), None, "3 proposals of 6: too few");
        let p = proposals(&[("o1", &["a", "b"]), ("o2", &["a", "b"]), ("o3", &["a"]), ("o4", &["a", "b"])]);
        assert_eq!(agree_set(&p, &reg, "origin/job"), Some(set(&["a", "b"])));
        let p = proposals(&[("o1", &["a", "b"]), ("o2", &["a", "b"]), ("o3", &["a"]), ("o4", &["a", "c"])]);
        assert_eq!(agree_set(&p, &reg, "origin/job"), None, "2 of one set: not a third");
        // Proposals of unregistered oracles do not count.
        let p = proposals(&[("o1", &["a"]), ("x", &["a"]), ("y", &["a"]), ("z", &["a"])]);
        assert_eq!(agree_set(&p, &reg, "origin/job"), None);
        // 3 oracles: 2 proposals, 2 of one set (⌊3/3⌋ + 1).
        let reg3 = set(&["o1", "o2", "o3"]);
        let p = proposals(&[("o1", &["a"]), ("o2", &["a"])]);
        assert_eq!(agree_set(&p, &reg3, "origin/job"), Some(set(&["a"])));
        let p = proposals(&[("o1", &["a"]), ("o2", &["b"])]);
        assert_eq!(agree_set(&p, &reg3, "origin/job"), None);
        // A tie for the most agrees on nothing, however the sets sort.
        let p = proposals(&[("o1", &["a", "b"]), ("o2", &["a", "b"]), ("o3", &["a"]), ("o4", &["a"])]);
        assert_eq!(agree_set(&p, &reg, "origin/job"), None);
    }

    fn link(id: &str, peer: &str, class: Class, at: u64) -> Statement {
        Statement {
            iss: "i".into(),
            id: id.into(),
            action: Action::Link,
            peer: Some(peer.into()),
            class: Some(class),
            assigned: (class != Class::Nd).then(|| UNIT.to_string()),
            at,
        }
    }

    #[test]
    fn each_epoch_pays_85_to_licenses_and_burns_15_and_the_rest_is_refunded() {
        let c = Constants::default();
        let epochs = Epochs { genesis_ms: 0, length_ms: 1_000 };
        let cx = Context { rules: Rules::default(), constants: &c };
        let registry = registry::fold(
            &[
                link("n1", "a", Class::Nd, 10),
                link("n2", "b", Class::Nd, 10),
                link("m", "m", Class::Mnd, 10),
                link("o", "origin", Class::Nd, 10),
            ],
            &cx,
        );
        // 3 R1 per node per epoch, 2 nodes, 30 epochs, escrowed in epoch 0.
        let job = Job::new(&c, "ns", "p", "job", "origin", 3 * UNIT + 1, 2, 30, 0).unwrap();
        assert_eq!(job.cost, 180 * UNIT + 60);
        assert!(Job::new(&c, "ns", "p", "job", "origin", UNIT, 2, 29, 0).is_err(), "30 epochs at least");
        assert_eq!(job.check(&c, "origin", "job"), Ok(()));
        assert!(job.check(&c, "a", "job").is_err(), "only the origin writes its job");
        let cheap = Job { cost: job.cost - 1, ..job.clone() };
        assert!(cheap.check(&c, "origin", "job").unwrap_err().contains("price × nodes × epochs"));
        let reg = set(&["o1", "o2", "o3"]);
        let mut props: BTreeMap<u64, BTreeMap<String, Proposal>> = BTreeMap::new();
        // Epoch 1: a, b, m and the origin ran (m is an MND, the origin
        // pays itself: both unpaid); epoch 2: no agreement; epoch 3: a.
        props.insert(1, proposals(&[("o1", &["a", "b", "m", "origin"]), ("o2", &["a", "b", "m", "origin"])]));
        props.insert(2, proposals(&[("o1", &["a"])]));
        props.insert(3, proposals(&[("o1", &["a"]), ("o3", &["a"])]));
        let minted = BTreeMap::from([("i/o".to_string(), 200 * UNIT)]);
        let registered = |_| reg.clone();
        let books = Books {
            constants: &c,
            registry: &registry,
            epochs: &epochs,
            minted: &minted,
            proposals: &props,
            registered_at: &registered,
        };
        let p = fold(&books, std::slice::from_ref(&job), 10);
        let (node, burn) = poai_split(&c, job.price);
        assert_eq!(node + burn, job.price, "85/15 exact");
        assert_eq!(p.to_licenses, 3 * node);
        assert_eq!(p.burned, 3 * burn);
        assert_eq!(p.credits["i/n1"], (2 * node).to_string());
        assert_eq!(p.credits["i/n2"], node.to_string());
        assert_eq!(p.jobs["origin/job"].paid[0].unpaid, ["m", "origin"]);
        assert_eq!(p.jobs["origin/job"].payer.as_deref(), Some("i/o"));
        assert_eq!(p.escrowed, job.cost);
        assert_eq!(p.in_escrow, job.cost - 3 * job.price);
        assert_eq!(p.refunded, 0);
        assert_eq!(p.balances["i/o"], (200 * UNIT - job.cost).to_string());
        assert!(p.balanced());
        // Once the job is over, the rest is refunded: the totals add up.
        let p = fold(&books, std::slice::from_ref(&job), 40);
        assert_eq!(p.in_escrow, 0);
        assert_eq!(p.to_licenses + p.burned + p.refunded, p.escrowed);
        assert_eq!(p.balances["i/o"], (200 * UNIT - 3 * job.price).to_string());
        assert!(p.balanced());
    }

    #[test]
    fn a_job_is_funded_by_what_its_payer_held_before_it_began() {
        let c = Constants { poai_min_epochs: 2, ..Constants::default() };
        let epochs = Epochs { genesis_ms: 0, length_ms: 1_000 };
        let cx = Context { rules: Rules::default(), constants: &c };
        let registry = registry::fold(
            &[link("x", "x", Class::Nd, 10), link("y", "y", Class::Nd, 10), link("m", "m", Class::Mnd, 10)],
            &cx,
        );
        let reg = set(&["o1"]);
        // x minted 10 R1. Job A (x pays, 4 R1 a node-epoch, 2 epochs from
        // epoch 1) is funded; job B (x pays 4 R1, from epoch 2) is not: x
        // holds 2 R1 then. Job C (y pays 2 R1 from epoch 3) is funded by
        // what A credited y in epoch 1 (3.4 R1); job D (y, from epoch 1) is
        // not: the credit is not before it. The MND cannot be paid
        // but pays; a node without a license cannot pay.
        let a = Job::new(&c, "ns", "a", "A", "x", 4 * UNIT, 1, 2, 0).unwrap();
        let b = Job::new(&c, "ns", "b", "B", "x", 2 * UNIT, 1, 2, 1).unwrap();
        let cj = Job::new(&c, "ns", "c", "C", "y", UNIT, 1, 2, 2).unwrap();
        let d = Job::new(&c, "ns", "d", "D", "y", UNIT, 1, 2, 0).unwrap();
        let nobody = Job::new(&c, "ns", "n", "N", "z", UNIT, 1, 2, 1).unwrap();
        let mut props: BTreeMap<u64, BTreeMap<String, Proposal>> = BTreeMap::new();
        props.insert(1, BTreeMap::from([("o1".to_string(), BTreeMap::from([("x/A".to_string(), set(&["y"]))]))]));
        let minted = BTreeMap::from([("i/x".to_string(), 10 * UNIT)]);
        let registered = |_| reg.clone();
        let books = Books {
            constants: &c,
            registry: &registry,
            epochs: &epochs,
            minted: &minted,
            proposals: &props,
            registered_at: &registered,
        };
        let p = fold(&books, &[nobody, d, cj, b, a.clone()], 10);
        assert_eq!(p.jobs["x/A"].unfunded, None);
        assert_eq!(p.jobs["x/A"].paid.len(), 1, "epoch 1 agreed, epoch 2 not");
        assert!(p.jobs["x/B"].unfunded.as_ref().unwrap().contains("held 2 R1 before epoch 2"), "{:?}", p.jobs["x/B"]);
        assert_eq!(p.jobs["y/C"].unfunded, None, "{:?}", p.jobs["y/C"]);
        assert!(p.jobs["y/D"].unfunded.is_some(), "y's credit of epoch 1 is not before epoch 1");
        assert!(p.jobs["z/N"].unfunded.as_ref().unwrap().contains("no license"));
        assert_eq!(p.escrowed, a.cost + 2 * UNIT);
        assert_eq!(p.credits["i/y"], (4 * UNIT * 85 / 100).to_string());
        // x: 10 − 8 + the 4 R1 of A's unagreed epoch 2, refunded.
        assert_eq!(p.balances["i/x"], (6 * UNIT).to_string());
        assert_eq!(p.balances["i/y"], (4 * UNIT * 85 / 100).to_string(), "C over with nothing paid: refunded");
        assert!(p.balanced());
        // A job of another origin under the same uid is another job.
        let twin = Job::new(&c, "ns", "a", "A", "y", UNIT, 1, 2, 0).unwrap();
        let p = fold(&books, &[a.clone(), twin], 10);
        assert!(p.jobs["x/A"].unfunded.is_none() && p.jobs["y/A"].unfunded.is_some(), "{:?}", p.jobs);
        assert_eq!(p.jobs["x/A"].paid.len(), 1, "its own agreement only");
    }

    #[test]
    fn jobs_that_cost_more_than_the_supply_or_run_for_ever_are_refused() {
        let c = Constants::default();
        let dear = Job::new(&c, "ns", "p", "u", "o", 1_000_000_000_000_000_000 * UNIT, 1, 200, 0);
        // job_cost itself fits u128 here: the check is the supply.
        if let Ok(j) = dear {
            assert!(j.check(&c, "o", "u").unwrap_err().contains("more than the whole supply"));
        }
        let mut long = Job::new(&c, "ns", "p", "u", "o", 1, 1, 30, 0).unwrap();
        long.epochs = MAX_JOB_EPOCHS + 1;
        long.cost = long.price * long.epochs as u128;
        assert!(long.check(&c, "o", "u").unwrap_err().contains("at most"));
    }
}
