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

    /// Whether `epoch` is one the job pays.
    pub fn pays(&self, epoch: u64) -> bool {
        epoch >= self.start && epoch - self.start < self.epochs
    }

    /// Whether the job is over at `epoch` (its last epoch is before it).
    pub fn over_at(&self, epoch: u64) -> bool {
        epoch >= self.start.saturating_add(self.epochs)
    }
}

/// One oracle's proposal for an epoch: job uid → the nodes it saw run it.
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
    // The most proposed set; of equals, the first in order (deterministic).
    let (set, count) =
        counts.into_iter().fold((None, 0), |(best, bc), (s, c)| if c > bc { (Some(s), c) } else { (best, bc) });
    set.filter(|_| count > n / 3).cloned()
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

/// The license of `peer` that earns `epoch`, if any.
fn license_of<'r>(
    registry: &'r Registry,
    peer: &str,
    epoch: u64,
    epochs: &Epochs,
) -> Option<&'r super::registry::License> {
    registry.licenses.values().find(|l| l.link_for(peer, epoch, epochs).is_some())
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
    for (i, peer) in set.iter().enumerate() {
        let license = license_of(registry, peer, epoch, epochs).filter(|l| l.class != Class::Mnd);
        match license {
            Some(l) if (i as u64) < job.nodes => {
                let (node, burned) = poai_split(c, job.price);
                out.to_licenses += node;
                out.burned += burned;
                out.credited.insert(peer.clone(), l.name.clone());
            }
            _ => out.unpaid.push(peer.clone()),
        }
    }
    out
}

/// PoAI as the ledger holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Poai {
    /// License → R1 credited by PoAI (10⁻¹⁸).
    pub credits: BTreeMap<String, String>,
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
    /// Per job uid: the epochs paid.
    pub paid: BTreeMap<String, Vec<EpochPay>>,
}

/// Folds jobs and the oracles' proposals (epoch → oracle → proposal) into
/// payments, for the epochs decided by `now_epoch` (each epoch is paid
/// once agreed; one with too few proposals by then pays nothing).
/// `registered_at(e)` gives the oracles registered when epoch `e` began.
pub fn fold(
    c: &Constants,
    jobs: &[Job],
    proposals: &BTreeMap<u64, BTreeMap<String, Proposal>>,
    registered_at: &dyn Fn(u64) -> BTreeSet<String>,
    registry: &Registry,
    epochs: &Epochs,
    now_epoch: u64,
) -> Poai {
    let mut out = Poai::default();
    let mut credits: BTreeMap<String, u128> = BTreeMap::new();
    let empty = BTreeMap::new();
    for job in jobs {
        out.escrowed += job.cost;
        let mut spent = 0u128;
        let last = job.start.saturating_add(job.epochs);
        for e in job.start..last.min(now_epoch) {
            let Some(set) = agree_set(proposals.get(&e).unwrap_or(&empty), &registered_at(e), &job.uid) else {
                continue;
            };
            let p = pay(c, job, e, &set, registry, epochs);
            spent += p.to_licenses + p.burned;
            out.to_licenses += p.to_licenses;
            out.burned += p.burned;
            for license in p.credited.values() {
                *credits.entry(license.clone()).or_default() += poai_split(c, job.price).0;
            }
            out.paid.entry(job.uid.clone()).or_default().push(p);
        }
        let left = job.cost - spent;
        if job.over_at(now_epoch) {
            out.refunded += left;
        } else {
            out.in_escrow += left;
        }
    }
    out.credits = credits.into_iter().map(|(l, v)| (l, v.to_string())).collect();
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
        entries.iter().map(|(o, s)| (o.to_string(), BTreeMap::from([("job".to_string(), set(s))]))).collect()
    }

    #[test]
    fn a_set_wins_with_a_third_of_half_the_oracles() {
        let reg = set(&["o1", "o2", "o3", "o4", "o5", "o6"]);
        // 6 oracles: 4 proposals needed, 3 of one set.
        let p = proposals(&[("o1", &["a", "b"]), ("o2", &["a", "b"]), ("o3", &["a"])]);
        assert_eq!(agree_set(&p, &reg, "job"), None, "3 proposals of 6: too few");
        let p = proposals(&[("o1", &["a", "b"]), ("o2", &["a", "b"]), ("o3", &["a"]), ("o4", &["a", "b"])]);
        assert_eq!(agree_set(&p, &reg, "job"), Some(set(&["a", "b"])));
        let p = proposals(&[("o1", &["a", "b"]), ("o2", &["a", "b"]), ("o3", &["a"]), ("o4", &["a", "c"])]);
        assert_eq!(agree_set(&p, &reg, "job"), None, "2 of one set: not a third");
        // Proposals of unregistered oracles do not count.
        let p = proposals(&[("o1", &["a"]), ("x", &["a"]), ("y", &["a"]), ("z", &["a"])]);
        assert_eq!(agree_set(&p, &reg, "job"), None);
        // 3 oracles: 2 proposals, 2 of one set (⌊3/3⌋ + 1).
        let reg3 = set(&["o1", "o2", "o3"]);
        let p = proposals(&[("o1", &["a"]), ("o2", &["a"])]);
        assert_eq!(agree_set(&p, &reg3, "job"), Some(set(&["a"])));
        let p = proposals(&[("o1", &["a"]), ("o2", &["b"])]);
        assert_eq!(agree_set(&p, &reg3, "job"), None);
    }

    #[test]
    fn each_epoch_pays_85_to_licenses_and_burns_15_and_the_rest_is_refunded() {
        let c = Constants::default();
        let epochs = Epochs { genesis_ms: 0, length_ms: 1_000 };
        let link = |id: &str, peer: &str, class: Class| Statement {
            iss: "i".into(),
            id: id.into(),
            action: Action::Link,
            peer: Some(peer.into()),
            class: Some(class),
            assigned: (class != Class::Nd).then(|| UNIT.to_string()),
            at: 10,
        };
        let cx = Context { rules: Rules::default(), constants: &c };
        let registry =
            registry::fold(&[link("n1", "a", Class::Nd), link("n2", "b", Class::Nd), link("m", "m", Class::Mnd)], &cx);
        // 3 R1 per node per epoch, 2 nodes, 30 epochs, escrowed in epoch 0.
        let job = Job::new(&c, "ns", "p", "job", "origin", 3 * UNIT + 1, 2, 30, 0).unwrap();
        assert_eq!(job.cost, 180 * UNIT + 60);
        assert!(Job::new(&c, "ns", "p", "job", "origin", UNIT, 2, 29, 0).is_err(), "30 epochs at least");
        let reg = set(&["o1", "o2", "o3"]);
        let mut props: BTreeMap<u64, BTreeMap<String, Proposal>> = BTreeMap::new();
        // Epoch 1: a, b, m ran (m is an MND: unpaid); epoch 2: no
        // agreement; epoch 3: a only.
        props.insert(1, proposals(&[("o1", &["a", "b", "m"]), ("o2", &["a", "b", "m"])]));
        props.insert(2, proposals(&[("o1", &["a"])]));
        props.insert(3, proposals(&[("o1", &["a"]), ("o3", &["a"])]));
        let p = fold(&c, std::slice::from_ref(&job), &props, &|_| reg.clone(), &registry, &epochs, 10);
        let (node, burn) = poai_split(&c, job.price);
        assert_eq!(node + burn, job.price, "85/15 exact");
        assert_eq!(p.to_licenses, 3 * node);
        assert_eq!(p.burned, 3 * burn);
        assert_eq!(p.credits["i/n1"], (2 * node).to_string());
        assert_eq!(p.credits["i/n2"], node.to_string());
        assert_eq!(p.paid["job"][0].unpaid, ["m"]);
        assert_eq!(p.escrowed, job.cost);
        assert_eq!(p.in_escrow, job.cost - 3 * job.price);
        assert_eq!(p.refunded, 0);
        // Once the job is over, the rest is refunded: the totals add up.
        let p = fold(&c, std::slice::from_ref(&job), &props, &|_| reg.clone(), &registry, &epochs, 40);
        assert_eq!(p.in_escrow, 0);
        assert_eq!(p.to_licenses + p.burned + p.refunded, p.escrowed);
    }
}
