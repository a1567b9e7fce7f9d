//! The license registry (pure): what the issuers' signed statements in
//! CSTORE (`license/<iss>/<id>/<at>`) make of each license, by Ratio1's
//! rules (docs/economy.md, "License registry"):
//!
//! - a license is linked to one node at a time, and a node holds one
//!   license;
//! - it is not linked again within `relink` of its last link;
//! - its rewards are claimed before it is unlinked: here an unlink always
//!   applies and the unlinked node keeps the right to claim the epochs of
//!   its link (no reward is lost or paid twice, and a dead node's license
//!   can still move; docs/economy.md);
//! - a banned license is not linked and claims nothing while banned, and
//!   the epochs that end during a ban pay nothing;
//! - MND and GND links carry what the license may earn, within the caps.
//!
//! Statements only accumulate (CSTORE never deletes them), and every node
//! folds the same set in the same order (time, then key), so every node
//! reaches the same registry: it depends on nothing but the statements,
//! so a statement refused stays refused, and is listed with its reason.

use super::{check_mnd_assignment, Constants};
use crate::dauth::license::{Action, Class, Statement};
use crate::oracle::epoch::Epochs;
use serde::Serialize;
use std::collections::BTreeMap;

/// Epochs after its end before an epoch can be claimed: OracleSync's
/// steps (at most 3 × L/4) are over by then. A link earns up to the last
/// epoch claimable at its unlink.
pub const CLAIM_DELAY_EPOCHS: u64 = 2;

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
    /// Ban periods `[from, to)` in Unix ms, oldest first.
    pub bans: Vec<(u64, Option<u64>)>,
    pub refused: Vec<Refused>,
}

impl License {
    /// Whether `t_ms` falls in a ban.
    pub fn banned_at(&self, t_ms: u64) -> bool {
        self.bans.iter().any(|(from, to)| *from <= t_ms && to.is_none_or(|to| t_ms < to))
    }

    /// The epochs a link earns: from the one it was made in to, once it is
    /// closed, the last one claimable at its unlink (`None` in second
    /// place: no end yet). `None`: it earns none (unlinked within two
    /// epochs, or before genesis).
    pub fn earns(link: &Link, epochs: &Epochs) -> Option<(u64, Option<u64>)> {
        let first = epochs.at(link.from_ms).unwrap_or(0);
        let last = match link.to_ms {
            None => None,
            Some(t) => Some(epochs.at(t)?.checked_sub(CLAIM_DELAY_EPOCHS)?),
        };
        last.is_none_or(|l| l >= first).then_some((first, last))
    }

    /// The link of `peer` that earns `epoch`.
    pub fn link_for(&self, peer: &str, epoch: u64, epochs: &Epochs) -> Option<&Link> {
        self.links.iter().find(|l| {
            l.peer == peer
                && Self::earns(l, epochs)
                    .is_some_and(|(first, last)| first <= epoch && last.is_none_or(|last| epoch <= last))
        })
    }

    /// The node it is linked to now.
    pub fn peer(&self) -> Option<&str> {
        self.links.last().filter(|l| l.to_ms.is_none()).map(|l| l.peer.as_str())
    }

    /// The epoch its first link fell in: ND and GND release from it, MND
    /// mining starts at it (or the cliff).
    pub fn first_epoch(&self, epochs: &Epochs) -> Option<u64> {
        self.links.first().map(|l| epochs.at(l.from_ms).unwrap_or(0))
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
            bans: vec![],
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
                Class::Gnd if assigned.saturating_add(others(Class::Gnd)) > cx.constants.gnd_total() => {
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
            if let Some(last) = l.links.last().filter(|last| s.at < last.from_ms.saturating_add(cx.rules.relink_ms)) {
                return Err(format!(
                    "linked last at {} ms: no new link before {} ms",
                    last.from_ms,
                    last.from_ms.saturating_add(cx.rules.relink_ms)
                ));
            }
            l.links.push(Link { peer: peer.clone(), from_ms: s.at, to_ms: None });
            reg.by_peer.insert(peer, key);
            Ok(())
        }
        Action::Unlink => {
            let l = reg.licenses.get_mut(&key).ok_or("not known")?;
            let peer = l.peer().ok_or("the license is not linked")?.to_string();
            // The unlinked node may still claim the link's epochs up to
            // the last one claimable now; the rest are forfeited.
            if let Some(link) = l.links.last_mut() {
                link.to_ms = Some(s.at);
            }
            reg.by_peer.remove(&peer);
            Ok(())
        }
        Action::Ban | Action::Unban => {
            let l = reg.licenses.get_mut(&key).ok_or("not known")?;
            match (s.action, l.banned) {
                (Action::Ban, false) => l.bans.push((s.at, None)),
                (Action::Unban, true) => {
                    if let Some(b) = l.bans.last_mut() {
                        b.1 = Some(s.at);
                    }
                }
                _ => {}
            }
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

    fn fold_with(statements: &[Statement]) -> Registry {
        let c = Constants::default();
        let cx = Context { rules: Rules { relink_ms: 5_000 }, constants: &c };
        fold(statements, &cx)
    }

    fn epochs() -> Epochs {
        Epochs { genesis_ms: 0, length_ms: L }
    }

    #[test]
    fn one_node_per_license_and_one_license_per_node() {
        let reg = fold_with(&[link("a", "p1", 10), link("a", "p2", 20), link("b", "p1", 30), link("b", "p3", 40)]);
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
    fn relink_waits_and_an_unlinked_link_earns_up_to_its_last_claimable_epoch() {
        // Linked at 10 (epoch 0); unlinked at 3,500 (epoch 3): the link
        // earns epochs 0..=1 (claims reach two epochs back).
        let s = [link("a", "p1", 10), st("a", Action::Unlink, None, None, 3_500), link("a", "p2", 3_600)];
        let reg = fold_with(&s);
        let a = &reg.licenses["issuer/a"];
        assert_eq!(a.peer(), None);
        assert!(a.refused[0].reason.contains("no new link before 5010"), "{:?}", a.refused);
        assert_eq!(License::earns(&a.links[0], &epochs()), Some((0, Some(1))));
        assert!(a.link_for("p1", 1, &epochs()).is_some());
        assert!(a.link_for("p1", 2, &epochs()).is_none());
        assert!(a.link_for("p2", 0, &epochs()).is_none());
        let mut later = s.to_vec();
        later.push(link("a", "p2", 5_010));
        let reg = fold_with(&later);
        let a = &reg.licenses["issuer/a"];
        assert_eq!(a.peer(), Some("p2"));
        assert_eq!(License::earns(&a.links[1], &epochs()), Some((5, None)));
        assert_eq!(a.first_epoch(&epochs()), Some(0));
        assert!(!reg.by_peer.contains_key("p1"));
        // Unlinked in the epoch after the link: it earns nothing.
        let reg = fold_with(&[link("b", "p3", 1_010), st("b", Action::Unlink, None, None, 2_500)]);
        assert_eq!(License::earns(&reg.licenses["issuer/b"].links[0], &epochs()), None);
        // Unlinked in epoch 1 or before genesis: none either.
        let reg = fold_with(&[link("c", "p4", 10), st("c", Action::Unlink, None, None, 1_500)]);
        assert_eq!(License::earns(&reg.licenses["issuer/c"].links[0], &epochs()), None);
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
        let reg = fold_with(&s);
        let a = &reg.licenses["issuer/a"];
        assert!(!a.banned);
        assert_eq!(a.bans, [(200, Some(7_000))]);
        assert!(a.banned_at(200) && a.banned_at(6_999) && !a.banned_at(7_000) && !a.banned_at(199));
        assert_eq!(a.peer(), Some("p1"));
        assert_eq!(a.refused.len(), 1);
        assert_eq!(a.refused[0].reason, "the license is banned");
        let mut rev = s.to_vec();
        rev.reverse();
        assert_eq!(fold_with(&rev), reg);
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
        let reg = fold_with(&[big, ok, none]);
        assert_eq!(reg.licenses["issuer/m"].assigned, one);
        assert_eq!(reg.licenses["issuer/m"].refused.len(), 1, "{:?}", reg.licenses["issuer/m"]);
        assert!(reg.licenses["issuer/n"].peer().is_none());
        assert!(reg.licenses["issuer/n"].refused[0].reason.contains("must say what the license is assigned"));
    }
}
