//! The license registry (pure): what the issuers' signed statements in
//! CSTORE (`license/<iss>/<id>/<at>`) make of each license, by Ratio1's
//! rules (docs/economy.md, "License registry"):
//!
//! - a license is linked to one node at a time, and a node holds one
//!   license;
//! - it is not linked again within `relink` of its last link;
//! - it is unlinked only once its rewards are claimed up to the last epoch
//!   closed before the unlink;
//! - a banned license is not linked and its rewards are not paid, until
//!   unbanned;
//! - MND and GND links carry what the license may earn, within the caps.
//!
//! Statements only accumulate (CSTORE never deletes them), and every node
//! folds the same set in the same order (time, then key), so every node
//! reaches the same registry. A statement the rules refuse stays refused
//! and is listed with its reason.

use super::{check_mnd_assignment, Constants};
use crate::dauth::license::{Action, Class, Statement};
use crate::oracle::epoch::Epochs;
use serde::Serialize;
use std::collections::BTreeMap;

/// A license's registry name: `<issuer key id>/<license id>`.
pub fn name(iss: &str, id: &str) -> String {
    format!("{iss}/{id}")
}

/// One link of a license to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    pub peer: String,
    pub from_ms: u64,
    /// When it was unlinked; `None` while it holds.
    pub to_ms: Option<u64>,
}

/// A statement the rules refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refused {
    pub at_ms: u64,
    pub action: Action,
    pub reason: String,
}

/// One license as the registry holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct License {
    pub name: String,
    pub class: Class,
    /// MND, GND: what it may earn over its window (10⁻¹⁸ R1).
    #[serde(with = "super::units")]
    pub assigned: u128,
    /// Every link, oldest first; the last is current when open.
    pub links: Vec<Link>,
    pub banned: bool,
    pub refused: Vec<Refused>,
}

impl License {
    /// The node it is linked to now.
    pub fn peer(&self) -> Option<&str> {
        self.links.last().filter(|l| l.to_ms.is_none()).map(|l| l.peer.as_str())
    }

    /// The epoch its first link fell in: ND and GND release from it, MND
    /// mining starts at it (or the cliff).
    pub fn first_epoch(&self, epochs: &Epochs) -> Option<u64> {
        self.links.first().map(|l| epochs.at(l.from_ms).unwrap_or(0))
    }

    /// The epochs the current link earns: those ending after it was made.
    pub fn linked_since_epoch(&self, epochs: &Epochs) -> Option<u64> {
        let l = self.links.last().filter(|l| l.to_ms.is_none())?;
        Some(epochs.at(l.from_ms).unwrap_or(0))
    }
}

/// Settings of the registry's rules.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Least time between two links of one license (Ratio1: 24 h).
    pub relink_ms: u64,
}

impl Default for Rules {
    fn default() -> Self {
        Self { relink_ms: 24 * 3_600_000 }
    }
}

/// Every license, by name, and which node holds which.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Registry {
    pub licenses: BTreeMap<String, License>,
    /// PeerId → the name of the license linked to it.
    pub by_peer: BTreeMap<String, String>,
}

/// What the fold needs besides the statements.
pub struct Context<'a> {
    pub rules: Rules,
    pub constants: &'a Constants,
    pub epochs: Epochs,
    /// The last epoch a license's rewards are claimed through by settled
    /// claims made before a time (Unix ms): an unlink counts only the
    /// claims before it, so a later claim cannot turn a refused unlink
    /// into an applied one.
    pub claimed_through: &'a dyn Fn(&str, u64) -> Option<u64>,
}

/// Folds verified statements (any order; sorted here by time, then
/// license name) into the registry.
pub fn fold<'a>(statements: impl IntoIterator<Item = &'a Statement>, cx: &Context<'_>) -> Registry {
    let mut sorted: Vec<&Statement> = statements.into_iter().collect();
    sorted.sort_by(|a, b| (a.at, &a.iss, &a.id, a.action).cmp(&(b.at, &b.iss, &b.id, b.action)));
    let mut reg = Registry::default();
    for s in sorted {
        // Any statement makes the license known (its refusals show on
        // it); its class and assignment are the first link's.
        let key = name(&s.iss, &s.id);
        reg.licenses.entry(key.clone()).or_insert_with(|| License {
            name: key.clone(),
            class: s.class.unwrap_or(Class::Nd),
            assigned: 0,
            links: vec![],
            banned: false,
            refused: vec![],
        });
        if let Err(reason) = apply(&mut reg, s, cx) {
            if let Some(l) = reg.licenses.get_mut(&key) {
                l.refused.push(Refused { at_ms: s.at, action: s.action, reason });
            }
        }
    }
    reg
}

fn apply(reg: &mut Registry, s: &Statement, cx: &Context<'_>) -> Result<(), String> {
    let key = name(&s.iss, &s.id);
    match s.action {
        Action::Link => {
            let peer = s.peer.clone().ok_or("a link names no node")?;
            let class = s.class.ok_or("a link names no class")?;
            let assigned = match (class, s.assigned.as_deref()) {
                (Class::Nd, _) => 0,
                (_, Some(a)) => a.parse::<u128>().map_err(|_| format!("assigned {a:?} is not an amount"))?,
                (_, None) => return Err(format!("an {class} link must say what the license is assigned")),
            };
            if let Some(other) = reg.by_peer.get(&peer).filter(|o| **o != key) {
                return Err(format!("node {peer} already holds license {other}"));
            }
            let others = |c: Class| -> u128 {
                reg.licenses.values().filter(|l| l.class == c && l.name != key).map(|l| l.assigned).sum()
            };
            match class {
                Class::Mnd => {
                    check_mnd_assignment(cx.constants, assigned, others(Class::Mnd)).map_err(|e| e.to_string())?
                }
                Class::Gnd if assigned + others(Class::Gnd) > cx.constants.gnd_total() => {
                    return Err(format!("GND licenses together may be assigned at most {}", cx.constants.gnd_total()))
                }
                _ => {}
            }
            let l = reg.licenses.get_mut(&key).ok_or("not known")?;
            if l.banned {
                return Err("the license is banned".into());
            }
            if l.links.is_empty() {
                (l.class, l.assigned) = (class, assigned);
            }
            if l.class != class || l.assigned != assigned {
                return Err(format!(
                    "the license is an {} assigned {}; a link cannot change that",
                    l.class, l.assigned
                ));
            }
            if let Some(p) = l.peer() {
                return Err(format!("the license is linked to {p}: unlink it first"));
            }
            if let Some(last) = l.links.last().filter(|last| s.at < last.from_ms + cx.rules.relink_ms) {
                return Err(format!(
                    "linked last at {} ms: no new link before {} ms",
                    last.from_ms,
                    last.from_ms + cx.rules.relink_ms
                ));
            }
            l.links.push(Link { peer: peer.clone(), from_ms: s.at, to_ms: None });
            reg.by_peer.insert(peer, key);
            Ok(())
        }
        Action::Unlink => {
            let l = reg.licenses.get_mut(&key).ok_or("not known")?;
            let peer = l.peer().ok_or("the license is not linked")?.to_string();
            // Its rewards up to the last epoch claimable at the unlink
            // must be claimed (they are paid to the linked node); the
            // epochs after it are forfeited.
            let since = l.linked_since_epoch(&cx.epochs).unwrap_or(0);
            let claimable = cx.epochs.at(s.at).and_then(|e| e.checked_sub(super::ledger::CLAIM_DELAY_EPOCHS));
            if let Some(last_closed) = claimable.filter(|c| *c >= since) {
                let through = (cx.claimed_through)(&key, s.at);
                if through.is_none_or(|t| t < last_closed) {
                    let from = through.map_or(since, |t| (t + 1).max(since));
                    return Err(format!("rewards of epochs {from}..={last_closed} are not claimed"));
                }
            }
            if let Some(link) = l.links.last_mut() {
                link.to_ms = Some(s.at);
            }
            reg.by_peer.remove(&peer);
            Ok(())
        }
        Action::Ban | Action::Unban => {
            let l = reg.licenses.get_mut(&key).ok_or("not known")?;
            l.banned = s.action == Action::Ban;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "issuer";
    const L: u64 = 1_000;

    fn st(id: &str, action: Action, peer: Option<&str>, class: Option<Class>, at: u64) -> Statement {
        Statement {
            iss: ISS.into(),
            id: id.into(),
            action,
            peer: peer.map(String::from),
            class,
            assigned: class.filter(|c| *c != Class::Nd).map(|_| "1000".into()),
            at,
        }
    }

    fn link(id: &str, peer: &str, at: u64) -> Statement {
        st(id, Action::Link, Some(peer), Some(Class::Nd), at)
    }

    fn fold_with(statements: &[Statement], claimed: Option<u64>) -> Registry {
        let c = Constants::default();
        let claimed_through = move |_: &str, _: u64| claimed;
        let cx = Context {
            rules: Rules { relink_ms: 5_000 },
            constants: &c,
            epochs: Epochs { genesis_ms: 0, length_ms: L },
            claimed_through: &claimed_through,
        };
        fold(statements, &cx)
    }

    #[test]
    fn one_node_per_license_and_one_license_per_node() {
        let reg =
            fold_with(&[link("a", "p1", 10), link("a", "p2", 20), link("b", "p1", 30), link("b", "p3", 40)], None);
        let a = &reg.licenses["issuer/a"];
        assert_eq!(a.peer(), Some("p1"));
        assert!(a.refused[0].reason.contains("unlink it first"), "{:?}", a.refused);
        // b's first link is refused (p1 holds a), and says so on b.
        assert_eq!(reg.licenses["issuer/b"].peer(), Some("p3"));
        assert!(reg.licenses["issuer/b"].refused[0].reason.contains("already holds license issuer/a"));
        assert_eq!(reg.by_peer["p1"], "issuer/a");
        assert_eq!(reg.by_peer["p3"], "issuer/b");
    }

    #[test]
    fn relink_waits_and_unlink_needs_the_rewards_claimed() {
        // Linked at 10 (epoch 0); unlink at 3,500 (epoch 3): epochs 0 and 1
        // are claimable then (claims reach two epochs back).
        let s = [link("a", "p1", 10), st("a", Action::Unlink, None, None, 3_500), link("a", "p2", 3_600)];
        let reg = fold_with(&s, Some(0));
        let a = &reg.licenses["issuer/a"];
        assert_eq!(a.peer(), Some("p1"), "unlink refused: epoch 1 unclaimed");
        assert!(a.refused[0].reason.contains("epochs 1..=1 are not claimed"), "{:?}", a.refused);
        let reg = fold_with(&s, Some(1));
        let a = &reg.licenses["issuer/a"];
        assert_eq!(a.peer(), None);
        assert!(a.refused[0].reason.contains("no new link before 5010"), "{:?}", a.refused);
        let mut later = s.to_vec();
        later.push(link("a", "p2", 5_010));
        let reg = fold_with(&later, Some(1));
        assert_eq!(reg.licenses["issuer/a"].peer(), Some("p2"));
        assert_eq!(reg.licenses["issuer/a"].links.len(), 2);
        assert_eq!(reg.licenses["issuer/a"].first_epoch(&Epochs { genesis_ms: 0, length_ms: L }), Some(0));
        // An unlink in the epoch of the link owes nothing.
        let reg = fold_with(&[link("b", "p3", 1_010), st("b", Action::Unlink, None, None, 2_500)], None);
        assert_eq!(reg.licenses["issuer/b"].peer(), None);
    }

    #[test]
    fn ban_blocks_links_until_unban_and_order_does_not_matter() {
        let s = [
            link("a", "p1", 10),
            st("a", Action::Unlink, None, None, 100),
            st("a", Action::Ban, None, None, 200),
            link("a", "p1", 6_000),
            st("a", Action::Unban, None, None, 7_000),
            link("a", "p1", 8_000),
        ];
        let reg = fold_with(&s, None);
        let a = &reg.licenses["issuer/a"];
        assert!(!a.banned);
        assert_eq!(a.peer(), Some("p1"));
        assert_eq!(a.refused.len(), 1);
        assert_eq!(a.refused[0].reason, "the license is banned");
        let mut rev = s.to_vec();
        rev.reverse();
        assert_eq!(fold_with(&rev, None), reg);
    }

    #[test]
    fn mnd_links_respect_the_caps_and_keep_their_assignment() {
        let c = Constants::default();
        let (one, _) = c.mnd_caps();
        let mut big = st("m", Action::Link, Some("p1"), Some(Class::Mnd), 10);
        big.assigned = Some((one + 1).to_string());
        let mut ok = big.clone();
        ok.assigned = Some(one.to_string());
        ok.at = 20;
        let mut none = st("n", Action::Link, Some("p2"), Some(Class::Gnd), 30);
        none.assigned = None;
        let reg = fold_with(&[big, ok, none], None);
        assert_eq!(reg.licenses["issuer/m"].assigned, one);
        assert_eq!(reg.licenses["issuer/m"].refused.len(), 1, "{:?}", reg.licenses["issuer/m"]);
        assert!(reg.licenses["issuer/n"].peer().is_none());
        assert!(reg.licenses["issuer/n"].refused[0].reason.contains("must say what the license is assigned"));
    }
}
