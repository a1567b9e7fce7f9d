//! The ledger (pure): reward claims, the oracles' verdicts on them, and
//! what is settled (docs/economy.md, "Ledger").
//!
//! - A license's node claims the rewards of the epochs it earned, from the
//!   first unclaimed one: `ledger/<node>/claim/<iss>/<id>/<from>` holds the
//!   [`Claim`], each epoch's availability and the final record it comes
//!   from (or `faulty`: no record, every licensed node counts as fully
//!   available).
//! - Each oracle recomputes it from its own registry, ledger and final
//!   records, and writes its verdict in its own namespace:
//!   `ledger/<oracle>/accept/<iss>/<id>/<from>` (a copy of the claim) or
//!   `ledger/<oracle>/refuse/<iss>/<id>/<from>` (the reason). An oracle
//!   accepts at most one claim per license and first epoch, and only the
//!   next one: two claims of one epoch never both pass.
//! - A claim is settled once more than half of the oracles registered when
//!   it was made accepted it. Settled claims are the ledger: an
//!   append-only chain per license, and the tokens minted.

use super::registry::{License, Link, Registry};
use super::{gnd_reward, mnd_epoch, nd_reward, Constants, MndCurve, MndLicense};
use crate::cstore::rules::LEDGER_PREFIX;
use crate::dauth::license::Class;
use crate::oracle::epoch::Epochs;
use crate::oracle::sync::Decided;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Most epochs one claim covers (bounds a record; claim again for more).
pub const MAX_CLAIM_EPOCHS: u64 = 100;
pub use super::registry::CLAIM_DELAY_EPOCHS;

/// One epoch of a claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    pub epoch: u64,
    pub availability: u8,
    /// Id of the final record the availability comes from, or `faulty`.
    pub record: String,
    #[serde(with = "super::units")]
    pub amount: u128,
}

/// A claim of a license's rewards for epochs `from..=to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    pub license: String,
    /// The node linked to the license, which makes the claim.
    pub peer: String,
    pub class: Class,
    pub from: u64,
    pub to: u64,
    /// Paid: the sum of the parts (MND: with what its buffer released).
    #[serde(with = "super::units")]
    pub amount: u128,
    /// MND: the buffer of withheld rewards after this claim.
    #[serde(with = "super::units")]
    pub buffer: u128,
    /// When it was made (Unix ms): the oracles registered then settle it.
    pub made_ms: u64,
    pub parts: Vec<Part>,
}

impl Claim {
    /// Identity of the claim (what oracles accept is exactly this).
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("claim serializes");
        Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// `ledger/<peer>/claim/<license>/<from>`.
pub fn claim_key(peer: &str, license: &str, from: u64) -> String {
    format!("{LEDGER_PREFIX}{peer}/claim/{license}/{from}")
}

/// `ledger/<oracle>/<accept|refuse>/<license>/<from>`.
pub fn verdict_key(oracle: &str, accept: bool, license: &str, from: u64) -> String {
    let v = if accept { "accept" } else { "refuse" };
    format!("{LEDGER_PREFIX}{oracle}/{v}/{license}/{from}")
}

/// A ledger key, parsed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Claim {
        peer: String,
        license: String,
        from: u64,
    },
    Accept {
        oracle: String,
        license: String,
        from: u64,
    },
    Refuse {
        oracle: String,
        license: String,
        from: u64,
    },
    /// A PoAI job its origin escrowed (`super::poai::job_key`).
    Job {
        origin: String,
        uid: String,
    },
    /// An oracle's PoAI proposal for an epoch (`super::poai::proposal_key`).
    Proposal {
        oracle: String,
        epoch: u64,
    },
}

pub fn parse_key(key: &str) -> Option<Key> {
    let rest = key.strip_prefix(LEDGER_PREFIX)?;
    let mut p = rest.split('/');
    if let [who, kind, last] = p.clone().collect::<Vec<_>>()[..] {
        return match kind {
            "job" if !last.is_empty() => Some(Key::Job { origin: who.into(), uid: last.into() }),
            "poai" => Some(Key::Proposal { oracle: who.into(), epoch: last.parse().ok()? }),
            _ => None,
        };
    }
    let (who, kind, iss, id, from) = (p.next()?, p.next()?, p.next()?, p.next()?, p.next()?.parse().ok()?);
    if p.next().is_some() {
        return None;
    }
    let (who, license) = (who.to_string(), super::registry::name(iss, id));
    Some(match kind {
        "claim" => Key::Claim { peer: who, license, from },
        "accept" => Key::Accept { oracle: who, license, from },
        "refuse" => Key::Refuse { oracle: who, license, from },
        _ => return None,
    })
}

/// The settled claims.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// License → first epoch → the settled claim.
    pub settled: BTreeMap<String, BTreeMap<u64, Claim>>,
}

impl Ledger {
    /// The last epoch the license's rewards are claimed through.
    pub fn claimed_through(&self, license: &str) -> Option<u64> {
        self.settled.get(license)?.values().map(|c| c.to).max()
    }

    /// The license's last settled claim.
    pub fn last(&self, license: &str) -> Option<&Claim> {
        self.settled.get(license)?.values().max_by_key(|c| c.to)
    }

    pub fn claims(&self) -> impl Iterator<Item = &Claim> {
        self.settled.values().flat_map(|m| m.values())
    }

    /// A settled claim of the license covering `epoch`.
    pub fn covering(&self, license: &str, epoch: u64) -> Option<&Claim> {
        self.settled.get(license)?.range(..=epoch).next_back().map(|(_, c)| c).filter(|c| c.to >= epoch)
    }
}

/// What a claim is computed from.
pub struct View<'a> {
    pub constants: &'a Constants,
    pub curve: &'a MndCurve,
    pub epochs: Epochs,
    pub registry: &'a Registry,
    pub ledger: &'a Ledger,
    pub history: &'a BTreeMap<u64, Decided>,
}

impl View<'_> {
    fn license(&self, name: &str) -> Result<&License, String> {
        self.registry.licenses.get(name).ok_or_else(|| format!("license {name} is not in the registry"))
    }

    /// The last epoch claimable at `now_ms`.
    fn last_claimable(&self, now_ms: u64) -> Option<u64> {
        self.epochs.at(now_ms).and_then(|c| c.checked_sub(CLAIM_DELAY_EPOCHS))
    }
}

/// The first epoch of `link` not claimed yet (the ledger chains each
/// link's claims from its first epoch); `None` if it earns none.
fn next_from(v: &View<'_>, license: &str, link: &Link) -> Option<u64> {
    let (first, last) = License::earns(link, &v.epochs)?;
    let claimed =
        v.ledger.settled.get(license).and_then(|s| s.range(first..=last.unwrap_or(u64::MAX)).map(|(_, c)| c.to).max());
    Some(claimed.map_or(first, |t| t.saturating_add(1).max(first)))
}

/// The epochs `peer`'s next claim of `license` may cover at `now_ms`: from
/// the first unclaimed one of its links (the newest with any) to the last
/// claimable one.
pub fn claimable(v: &View<'_>, license: &str, peer: &str, now_ms: u64) -> Result<(u64, u64), String> {
    let l = v.license(license)?;
    if l.banned {
        return Err(format!("license {license} is banned"));
    }
    let now = v.last_claimable(now_ms);
    let links: Vec<&Link> = l.links.iter().filter(|k| k.peer == peer).collect();
    if links.is_empty() {
        return Err(format!("license {license} was never linked to {peer}"));
    }
    // Oldest link first: each link's epochs, in order.
    let mut waiting = None;
    for link in links {
        let Some((_, end)) = License::earns(link, &v.epochs) else { continue };
        let Some(from) = next_from(v, license, link) else { continue };
        if end.is_some_and(|e| from > e) {
            continue;
        }
        let last = match (now, end) {
            (Some(n), Some(e)) => n.min(e),
            (Some(n), None) => n,
            (None, _) => u64::MAX,
        };
        if now.is_some() && from <= last {
            return Ok((from, last));
        }
        waiting = Some(from);
    }
    Err(match waiting {
        Some(from) => format!(
            "nothing to claim: epoch {from} cannot be claimed yet (claims reach {CLAIM_DELAY_EPOCHS} epochs back)"
        ),
        None => format!("nothing to claim: the epochs {peer} earned with license {license} are claimed"),
    })
}

/// `peer`'s claim of `license` for exactly `from..=to`, made at `made_ms`.
/// Epochs that end during a ban pay nothing (`banned`).
pub fn compute(v: &View<'_>, license: &str, peer: &str, from: u64, to: u64, made_ms: u64) -> Result<Claim, String> {
    let l = v.license(license)?;
    if to < from || to - from >= MAX_CLAIM_EPOCHS {
        return Err(format!("epochs {from}..={to}: a claim covers 1 to {MAX_CLAIM_EPOCHS} epochs"));
    }
    // One link earns them all.
    let within = l
        .link_for(peer, from, &v.epochs)
        .and_then(|k| License::earns(k, &v.epochs))
        .is_some_and(|(_, end)| end.is_none_or(|end| to <= end));
    if !within {
        return Err(format!("license {license} was not linked to {peer} through epochs {from}..={to}"));
    }
    let first = l.first_epoch(&v.epochs).unwrap_or(0);
    let mnd = MndLicense { assigned: l.assigned, first_mining_epoch: first };
    // The buffer left by the settled claim just before these epochs.
    let mut buffer =
        v.ledger.settled.get(license).and_then(|s| s.range(..from).next_back()).map_or(0, |(_, c)| c.buffer);
    let (mut parts, mut amount) = (vec![], 0u128);
    for e in from..=to {
        let (availability, record) = if l.banned_at(v.epochs.bounds(e).1.saturating_sub(1)) {
            (0, "banned".to_string())
        } else {
            match v.history.get(&e) {
                Some(d) => (d.table.get(peer).copied().unwrap_or(0), d.id.clone()),
                None => (255, "faulty".to_string()),
            }
        };
        let k = e.saturating_sub(first);
        let paid = match l.class {
            Class::Nd => nd_reward(v.constants, k, availability),
            Class::Gnd => gnd_reward(v.constants, l.assigned, k, availability),
            Class::Mnd => {
                let adoption = super::adoption(v.constants, sold_by(v, e), 0);
                let m = mnd_epoch(v.constants, v.curve, &mnd, e, availability, adoption, buffer);
                buffer = buffer + m.withheld - m.released;
                m.paid
            }
        };
        amount = amount.saturating_add(paid);
        parts.push(Part { epoch: e, availability, record, amount: paid });
    }
    Ok(Claim {
        license: license.to_string(),
        peer: peer.to_string(),
        class: l.class,
        from,
        to,
        amount,
        buffer,
        made_ms,
        parts,
    })
}

/// ND licenses linked before epoch `e` ended (the adoption's "licenses
/// sold").
fn sold_by(v: &View<'_>, e: u64) -> u128 {
    let (_, end) = v.epochs.bounds(e);
    v.registry
        .licenses
        .values()
        .filter(|l| l.class == Class::Nd && l.links.first().is_some_and(|k| k.from_ms < end))
        .count() as u128
}

/// `peer`'s next claim of `license` (at most [`MAX_CLAIM_EPOCHS`]).
pub fn next_claim(v: &View<'_>, license: &str, peer: &str, now_ms: u64) -> Result<Claim, String> {
    let (from, last) = claimable(v, license, peer, now_ms)?;
    compute(v, license, peer, from, last.min(from + MAX_CLAIM_EPOCHS - 1), now_ms)
}

/// An oracle's verdict on a claim written by `claimant` at `now_ms`.
pub fn judge(v: &View<'_>, claim: &Claim, claimant: &str, now_ms: u64) -> Result<(), String> {
    if claim.peer != claimant {
        return Err(format!("the claim names node {}, not its writer {claimant}", claim.peer));
    }
    if claim.made_ms > now_ms.saturating_add(30_000) {
        return Err(format!("the claim was made at {} ms, ahead of this oracle's clock", claim.made_ms));
    }
    if let Some(c) = (claim.from..=claim.to.min(claim.from.saturating_add(MAX_CLAIM_EPOCHS)))
        .find_map(|e| v.ledger.covering(&claim.license, e))
    {
        return Err(format!("double claim: epochs {}..={} are already claimed", c.from, c.to));
    }
    let (from, last) = claimable(v, &claim.license, claimant, now_ms)?;
    if claim.from != from {
        return Err(format!("the next claimable epoch is {from}, not {}", claim.from));
    }
    if claim.to < claim.from || claim.to > last || claim.to - claim.from >= MAX_CLAIM_EPOCHS {
        return Err(format!(
            "epochs {}..={} cannot be claimed: {from}..={last} can, {MAX_CLAIM_EPOCHS} at most",
            claim.from, claim.to
        ));
    }
    check(v, claim)
}

/// Whether `claim` is exactly what this node computes for it.
fn check(v: &View<'_>, claim: &Claim) -> Result<(), String> {
    let expected = compute(v, &claim.license, &claim.peer, claim.from, claim.to, claim.made_ms)?;
    if expected == *claim {
        return Ok(());
    }
    let bad = expected.parts.iter().zip(&claim.parts).find(|(a, b)| a != b);
    Err(match bad {
        Some((a, b)) => format!(
            "epoch {}: availability {} from record {} pays {}, the claim says {} from {} for {}",
            a.epoch, a.availability, a.record, a.amount, b.availability, b.record, b.amount
        ),
        None => format!("the claim's totals differ: {} expected, {} claimed", expected.amount, claim.amount),
    })
}

/// Settles the claims the oracles accepted: (oracle, license, from) → the
/// claim it accepted. A claim is settled when
/// - more than half of the oracles registered when its last epoch became
///   claimable (`registered_at`, Unix ms) accepted exactly it, and
/// - this node computes exactly it, in the chain of its link (a quorum
///   cannot settle what the records do not pay), for epochs claimable
///   at `now_ms`.
///
/// Each license's claims settle in epoch order (an MND claim carries the
/// buffer of the one before); of two claims of the same epochs, the
/// earlier made stands.
pub fn settle(
    base: &View<'_>,
    accepts: &BTreeMap<(String, String, u64), Claim>,
    registered_at: &dyn Fn(u64) -> BTreeSet<String>,
    now_ms: u64,
) -> Ledger {
    // (license, from) → digest → the claim and who accepted it.
    type Votes<'c> = BTreeMap<(&'c str, u64), BTreeMap<String, (&'c Claim, BTreeSet<&'c str>)>>;
    let mut votes: Votes<'_> = BTreeMap::new();
    // Accepts of writers never registered count for nothing: not hashed.
    let ever = registered_at(u64::MAX);
    for ((oracle, license, from), claim) in accepts {
        if claim.license != *license || claim.from != *from || !ever.contains(oracle) {
            continue;
        }
        let by = votes.entry((license.as_str(), *from)).or_default();
        by.entry(claim.digest()).or_insert((claim, BTreeSet::new())).1.insert(oracle.as_str());
    }
    let mut ledger = Ledger::default();
    let last = base.last_claimable(now_ms);
    for ((license, _), by) in votes {
        let mut candidates: Vec<&(&Claim, BTreeSet<&str>)> = by.values().collect();
        candidates.sort_by_key(|(c, _)| c.made_ms);
        for (claim, yes) in candidates {
            if last.is_none_or(|l| claim.to > l) {
                continue;
            }
            let registered = registered_at(base.epochs.bounds(claim.to.saturating_add(CLAIM_DELAY_EPOCHS)).0);
            if 2 * yes.iter().filter(|o| registered.contains(**o)).count() <= registered.len() {
                continue;
            }
            let v = View { ledger: &ledger, ..*base };
            let Ok(l) = v.license(license) else { continue };
            let chained = l
                .link_for(&claim.peer, claim.from, &v.epochs)
                .is_some_and(|k| next_from(&v, license, k) == Some(claim.from));
            // The span is bounded before any per-epoch work: a hostile
            // accept may name any range (compute refuses it too).
            let bounded = claim.from <= claim.to && claim.to - claim.from < MAX_CLAIM_EPOCHS;
            // No epoch paid twice, whatever the quorum says.
            let fresh = || (claim.from..=claim.to).all(|e| v.ledger.covering(license, e).is_none());
            if chained && bounded && fresh() && check(&v, claim).is_ok() {
                ledger.settled.entry(license.to_string()).or_default().insert(claim.from, (*claim).clone());
                break;
            }
        }
    }
    ledger
}

/// The economy in one table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    #[serde(with = "super::units")]
    pub supply_cap: u128,
    /// Minted by settled claims, all classes.
    #[serde(with = "super::units")]
    pub minted: u128,
    /// Minted, per class.
    pub minted_by_class: BTreeMap<Class, String>,
    /// MND rewards withheld by adoption, not yet released.
    #[serde(with = "super::units")]
    pub mnd_buffer: u128,
    pub settled_claims: usize,
    /// Licenses linked now, per class.
    pub linked: BTreeMap<Class, usize>,
    pub banned: usize,
}

pub fn totals(c: &Constants, registry: &Registry, ledger: &Ledger) -> Totals {
    let mut by_class: BTreeMap<Class, u128> = BTreeMap::new();
    let mut t = Totals { supply_cap: c.supply_units(), ..Default::default() };
    for claim in ledger.claims() {
        t.minted += claim.amount;
        *by_class.entry(claim.class).or_default() += claim.amount;
        t.settled_claims += 1;
    }
    t.mnd_buffer = ledger.settled.keys().filter_map(|l| ledger.last(l)).map(|c| c.buffer).sum();
    t.minted_by_class = by_class.into_iter().map(|(k, v)| (k, v.to_string())).collect();
    for l in registry.licenses.values() {
        if l.peer().is_some() {
            *t.linked.entry(l.class).or_default() += 1;
        }
        t.banned += l.banned as usize;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dauth::license::{Action, Statement};
    use crate::economy::registry::{fold, Context, Rules};
    use crate::economy::UNIT;

    const L: u64 = 1_000;

    fn epochs() -> Epochs {
        Epochs { genesis_ms: 0, length_ms: L }
    }

    fn link(id: &str, peer: &str, class: Class, at: u64) -> Statement {
        let assigned = (class != Class::Nd).then(|| (1_000 * UNIT).to_string());
        Statement {
            iss: "i".into(),
            id: id.into(),
            action: Action::Link,
            peer: Some(peer.into()),
            class: Some(class),
            assigned,
            at,
        }
    }

    fn act(id: &str, action: Action, at: u64) -> Statement {
        Statement { action, peer: None, class: None, assigned: None, at, ..link(id, "", Class::Nd, 0) }
    }

    struct World {
        c: Constants,
        curve: MndCurve,
        statements: Vec<Statement>,
        history: BTreeMap<u64, Decided>,
        accepts: BTreeMap<(String, String, u64), Claim>,
        oracles: BTreeSet<String>,
    }

    impl World {
        fn new() -> Self {
            let c = Constants::default();
            let curve = MndCurve::new(&c);
            let oracles = ["o1", "o2", "o3"].map(String::from).into();
            Self { c, curve, statements: vec![], history: BTreeMap::new(), accepts: BTreeMap::new(), oracles }
        }

        /// Registry and ledger as a node folds them at `now`.
        fn state(&self, now: u64) -> (Registry, Ledger) {
            let cx = Context { rules: Rules { relink_ms: 1_000 }, constants: &self.c };
            let registry = fold(&self.statements, &cx);
            let empty = Ledger::default();
            let base = View {
                constants: &self.c,
                curve: &self.curve,
                epochs: epochs(),
                registry: &registry,
                ledger: &empty,
                history: &self.history,
            };
            let o = self.oracles.clone();
            let ledger = settle(&base, &self.accepts, &move |_| o.clone(), now);
            (registry, ledger)
        }

        fn with<R>(&self, now: u64, f: impl FnOnce(&View<'_>) -> R) -> R {
            let (registry, ledger) = self.state(now);
            let v = View {
                constants: &self.c,
                curve: &self.curve,
                epochs: epochs(),
                registry: &registry,
                ledger: &ledger,
                history: &self.history,
            };
            f(&v)
        }

        fn accept(&mut self, oracle: &str, claim: &Claim) {
            self.accepts.insert((oracle.into(), claim.license.clone(), claim.from), claim.clone());
        }
    }

    fn decided(entries: &[(&str, u8)]) -> Decided {
        Decided { id: "rec".into(), table: entries.iter().map(|(p, v)| (p.to_string(), *v)).collect() }
    }

    #[test]
    fn a_claim_pays_each_epoch_by_its_final_record_and_faulty_epochs_in_full() {
        let mut w = World::new();
        w.statements.push(link("a", "p1", Class::Nd, 10));
        w.history.insert(0, decided(&[("p1", 255)]));
        w.history.insert(1, decided(&[("p1", 128)]));
        w.history.insert(2, decided(&[("p2", 255)]));
        // Epoch 3 has no record: faulty.
        let claim = w.with(5_500, |v| next_claim(v, "i/a", "p1", 5_500)).unwrap();
        assert_eq!((claim.from, claim.to), (0, 3));
        let per = w.c.nd_license_cap() / 1_080;
        let avail: Vec<u8> = claim.parts.iter().map(|p| p.availability).collect();
        assert_eq!(avail, [255, 128, 0, 255]);
        assert_eq!(claim.parts[3].record, "faulty");
        for p in &claim.parts {
            // Within one unit of the hand formula (linear parts round).
            let hand = per * p.availability as u128 / 255;
            assert!(p.amount.abs_diff(hand) <= 1, "{p:?} vs {hand}");
        }
        assert_eq!(claim.amount, claim.parts.iter().map(|p| p.amount).sum::<u128>());
        // Half the availability, half the reward (to a unit).
        assert!((claim.parts[1].amount * 2).abs_diff(claim.parts[0].amount) <= 2 * per / 255 + 2);
    }

    #[test]
    fn settled_by_a_majority_and_a_second_claim_of_the_same_epochs_is_refused() {
        let mut w = World::new();
        w.statements.push(link("a", "p1", Class::Nd, 10));
        let claim = w.with(3_500, |v| next_claim(v, "i/a", "p1", 3_500)).unwrap();
        assert_eq!((claim.from, claim.to), (0, 1));
        w.with(3_600, |v| judge(v, &claim, "p1", 3_600)).unwrap();
        assert_eq!(
            w.with(3_600, |v| judge(v, &claim, "p2", 3_600)).unwrap_err(),
            "the claim names node p1, not its writer p2"
        );
        w.accept("o1", &claim);
        assert_eq!(w.state(3_600).1.claimed_through("i/a"), None, "1 of 3 settles nothing");
        w.accept("o2", &claim);
        assert_eq!(w.state(3_600).1.claimed_through("i/a"), Some(1));
        // The same epochs again, in a new claim: refused.
        let mut again = claim.clone();
        again.made_ms = 3_700;
        let why = w.with(3_700, |v| judge(v, &again, "p1", 3_700)).unwrap_err();
        assert_eq!(why, "double claim: epochs 0..=1 are already claimed");
        // Nothing more to claim yet; later, from epoch 2.
        assert!(w.with(3_900, |v| next_claim(v, "i/a", "p1", 3_900)).unwrap_err().starts_with("nothing to claim"));
        let next = w.with(4_100, |v| next_claim(v, "i/a", "p1", 4_100)).unwrap();
        assert_eq!((next.from, next.to), (2, 2));
        // An accept from an unregistered writer counts for nothing.
        let mut w2 = World::new();
        w2.statements.push(link("a", "p1", Class::Nd, 10));
        w2.accept("o1", &claim);
        w2.accept("rogue", &claim);
        assert_eq!(w2.state(3_600).1.claimed_through("i/a"), None);
    }

    #[test]
    fn a_quorum_cannot_settle_what_the_records_do_not_pay() {
        let mut w = World::new();
        w.statements.push(link("a", "p1", Class::Nd, 10));
        w.history.insert(0, decided(&[("p1", 10)]));
        let honest = w.with(3_500, |v| next_claim(v, "i/a", "p1", 3_500)).unwrap();
        // Two lying oracles accept an inflated claim, one of epochs not
        // claimable yet, and one out of the chain.
        let mut inflated = honest.clone();
        inflated.parts[0].availability = 255;
        inflated.parts[0].amount = w.c.nd_license_cap() / 1_080;
        inflated.amount = inflated.parts.iter().map(|p| p.amount).sum();
        for o in ["o1", "o2"] {
            w.accept(o, &inflated);
        }
        assert_eq!(w.state(3_500).1.claimed_through("i/a"), None);
        let ahead = w.with(9_000, |v| compute(v, "i/a", "p1", 0, 7, 3_500)).unwrap();
        let gap = w.with(9_000, |v| compute(v, "i/a", "p1", 1, 1, 3_500)).unwrap();
        let mut w3 = World::new();
        w3.statements = w.statements.clone();
        w3.history = w.history.clone();
        for o in ["o1", "o2"] {
            w3.accept(o, &ahead);
            w3.accept(o, &gap);
        }
        assert_eq!(w3.state(3_500).1.claimed_through("i/a"), None, "epoch 7 is not claimable at 3.5 s; 1 skips 0");
        // The honest claim, accepted by the honest oracle and one more.
        w.accepts.clear();
        w.accept("o2", &honest);
        w.accept("o3", &honest);
        assert_eq!(w.state(3_500).1.claimed_through("i/a"), Some(1));
    }

    #[test]
    fn an_unlinked_node_still_claims_its_epochs_and_a_ban_pays_nothing() {
        let mut w = World::new();
        // p1 holds a from epoch 0, unlinked in epoch 4 (earns 0..=2); p2
        // from epoch 6; banned in epoch 7 (its end), unbanned in 8.
        w.statements.extend([
            link("a", "p1", Class::Nd, 10),
            act("a", Action::Unlink, 4_100),
            link("a", "p2", Class::Nd, 6_100),
            act("a", Action::Ban, 7_100),
            act("a", Action::Unban, 8_100),
        ]);
        let old = w.with(20_000, |v| next_claim(v, "i/a", "p1", 20_000)).unwrap();
        assert_eq!((old.from, old.to), (0, 2));
        let new = w.with(20_000, |v| next_claim(v, "i/a", "p2", 20_000)).unwrap();
        assert_eq!((new.from, new.to), (6, 18));
        let banned: Vec<u64> = new.parts.iter().filter(|p| p.record == "banned").map(|p| p.epoch).collect();
        assert_eq!(banned, [7], "the epoch that ended during the ban");
        assert_eq!(new.parts[1].amount, 0);
        for o in ["o1", "o2"] {
            w.accept(o, &old);
            w.accept(o, &new);
        }
        let (_, ledger) = w.state(20_000);
        assert_eq!(ledger.claimed_through("i/a"), Some(18));
        assert!(w.with(20_000, |v| next_claim(v, "i/a", "p1", 20_000)).unwrap_err().contains("are claimed"));
        assert!(w.with(20_000, |v| next_claim(v, "i/a", "p3", 20_000)).unwrap_err().contains("never linked to p3"));
        // While banned, nothing can be claimed.
        w.statements.push(act("a", Action::Ban, 19_000));
        assert_eq!(w.with(22_000, |v| next_claim(v, "i/a", "p2", 22_000)).unwrap_err(), "license i/a is banned");
    }

    #[test]
    fn a_claim_cannot_span_two_links_nor_pay_an_epoch_twice() {
        let mut w = World::new();
        // p1: epochs 0..=2 (unlinked at 4.1 s); p2 from 6; p1 again from 8
        // (relink window 1 s). A short link of p3 in between earns none.
        w.statements.extend([
            link("a", "p1", Class::Nd, 10),
            act("a", Action::Unlink, 4_100),
            link("a", "p3", Class::Nd, 5_200),
            act("a", Action::Unlink, 5_300),
            link("a", "p2", Class::Nd, 6_400),
            act("a", Action::Unlink, 8_100),
            link("a", "p1", Class::Nd, 9_500),
        ]);
        let span = w.with(30_000, |v| compute(v, "i/a", "p1", 0, 20, 30_000)).unwrap_err();
        assert!(span.contains("not linked to p1 through epochs 0..=20"), "{span}");
        // p3's empty link: nothing to claim, and no panic once claims exist.
        let old = w.with(30_000, |v| next_claim(v, "i/a", "p1", 30_000)).unwrap();
        assert_eq!((old.from, old.to), (0, 2));
        for o in ["o1", "o2"] {
            w.accept(o, &old);
        }
        let p3 = w.with(30_000, |v| next_claim(v, "i/a", "p3", 30_000)).unwrap_err();
        assert!(p3.contains("are claimed"), "{p3}");
        // p1's second link, once its first is claimed.
        let again = w.with(30_000, |v| next_claim(v, "i/a", "p1", 30_000)).unwrap();
        assert_eq!(again.from, 9);
        // Lying oracles accept a claim of p2's epochs by p1 (computed as
        // if p1 held them): it does not settle over p2's settled claim.
        let p2 = w.with(30_000, |v| next_claim(v, "i/a", "p2", 30_000)).unwrap();
        assert_eq!((p2.from, p2.to), (6, 6));
        for o in ["o1", "o2"] {
            w.accept(o, &p2);
        }
        let (_, ledger) = w.state(30_000);
        assert_eq!(ledger.covering("i/a", 6).map(|c| c.peer.as_str()), Some("p2"));
        assert_eq!(ledger.covering("i/a", 0).map(|c| c.peer.as_str()), Some("p1"));
        assert!(ledger.covering("i/a", 4).is_none(), "no link earned epoch 4");
    }

    #[test]
    fn lies_in_a_claim_are_refused() {
        let mut w = World::new();
        w.statements.push(link("a", "p1", Class::Nd, 10));
        w.history.insert(0, decided(&[("p1", 100)]));
        let claim = w.with(2_500, |v| next_claim(v, "i/a", "p1", 2_500)).unwrap();
        let judge_at = |w: &World, c: &Claim| w.with(2_500, |v| judge(v, c, "p1", 2_500));
        let mut inflated = claim.clone();
        inflated.parts[0].availability = 255;
        assert!(judge_at(&w, &inflated).unwrap_err().starts_with("epoch 0: availability 100"));
        let mut more = claim.clone();
        more.amount += 1;
        assert!(judge_at(&w, &more).unwrap_err().contains("totals differ"));
        let mut ahead = claim.clone();
        ahead.to = 2;
        assert!(judge_at(&w, &ahead).unwrap_err().contains("cannot be claimed"));
        let mut future = claim.clone();
        future.made_ms = 100_000;
        assert!(judge_at(&w, &future).unwrap_err().contains("ahead of this oracle's clock"));
        let mut huge = claim.clone();
        huge.to = u64::MAX;
        assert!(judge_at(&w, &huge).is_err());
    }

    #[test]
    fn mnd_claims_carry_the_buffer_and_totals_add_up() {
        let mut w = World::new();
        w.c = Constants { mnd_cliff: 0, ..Constants::default() };
        w.statements.push(link("m", "p9", Class::Mnd, 10));
        w.statements.push(link("n", "p1", Class::Nd, 10));
        let first = w.with(4_500, |v| next_claim(v, "i/m", "p9", 4_500)).unwrap();
        assert_eq!((first.from, first.to), (0, 2));
        // One ND sold of 7,500: adoption is tiny; most is withheld.
        assert!(first.buffer > 0 && first.amount > 0 && first.buffer > first.amount);
        w.accept("o1", &first);
        w.accept("o3", &first);
        let second = w.with(5_500, |v| next_claim(v, "i/m", "p9", 5_500)).unwrap();
        assert_eq!(second.from, 3);
        let (registry, ledger) = w.state(5_500);
        let manual = w.with(5_500, |v| compute(v, "i/m", "p9", 3, 3, 5_500)).unwrap();
        assert_eq!(manual, second);
        assert!(second.buffer > first.buffer, "the buffer carries over");
        let t = totals(&w.c, &registry, &ledger);
        assert_eq!(t.minted, first.amount);
        assert_eq!(t.mnd_buffer, first.buffer);
        assert_eq!(t.linked[&Class::Mnd], 1);
        assert_eq!(t.settled_claims, 1);
    }

    #[test]
    fn keys_round_trip() {
        let k = claim_key("p1", "i/a", 7);
        assert_eq!(parse_key(&k), Some(Key::Claim { peer: "p1".into(), license: "i/a".into(), from: 7 }));
        let k = verdict_key("o1", false, "i/a", 7);
        assert_eq!(parse_key(&k), Some(Key::Refuse { oracle: "o1".into(), license: "i/a".into(), from: 7 }));
        assert_eq!(parse_key("ledger/p1/claim/i/a/7/x"), None);
        assert_eq!(parse_key("ledger/p1/other/i/a/7"), None);
        let k = super::super::poai::job_key("p1", "u-1");
        assert_eq!(parse_key(&k), Some(Key::Job { origin: "p1".into(), uid: "u-1".into() }));
        let k = super::super::poai::proposal_key("o1", 9);
        assert_eq!(parse_key(&k), Some(Key::Proposal { oracle: "o1".into(), epoch: 9 }));
        assert_eq!(parse_key("ledger/o1/poai/x"), None);
        assert_eq!(parse_key("ledger/p1/job/"), None);
    }
}
