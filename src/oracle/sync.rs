//! OracleSync's state machine, pure: what the oracles published (read from
//! CSTORE records) and what this node should write next.
//!
//! Every message is a CSTORE record in its oracle's own namespace, signed
//! by the oracle's key and replicated (gossip, then anti-entropy: a late
//! or restarted oracle catches up from any replica):
//!
//! - `oracle/<peer>/registration`: `{license}`, an MND/GND license bound to
//!   `<peer>`; the registered oracles of an epoch are those registered
//!   before it ended.
//! - `oracle/<peer>/epoch/<E>/local`: `{epoch, table}` (step 1).
//! - `oracle/<peer>/epoch/<E>/median`: `{epoch, from, table}` (step 2; `from`
//!   names the local tables used, so anyone can recompute it).
//! - `oracle/<peer>/epoch/<E>/sign`: the agreed table and the oracle's
//!   signature (step 3 → 4).
//! - `epoch/<E>`: the final [`EpochRecord`]; CSTORE's rules accept it only
//!   when it verifies (any node may carry it).
//!
//! A step record is written once. A second, different value for the same
//! step is *equivocation*: that oracle is left out of the epoch. A median
//! table that does not follow from the local tables it names is a *wrong
//! median*, and left out too. Both are reported (status, metric, log).

use super::agree::{self, Agreed, EpochRecord, OracleSignature, Rules, Table};
use super::epoch::Epochs;
use crate::cstore::record::Record;
use crate::dauth::license::TrustStore;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use crate::cstore::rules::{EPOCH_PREFIX, ORACLE_PREFIX};

/// Epochs kept in memory behind the current one.
pub const KEEP_EPOCHS: u64 = 4;
/// Misbehaviour reports kept for status.
pub const MAX_REPORTS: usize = 64;

/// One step of an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Local,
    Median,
    Sign,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Local => "local",
            Step::Median => "median",
            Step::Sign => "sign",
        }
    }
}

pub fn registration_key(peer: &str) -> String {
    format!("{ORACLE_PREFIX}{peer}/registration")
}

pub fn step_key(peer: &str, epoch: u64, step: Step) -> String {
    format!("{ORACLE_PREFIX}{peer}/epoch/{epoch}/{}", step.name())
}

pub fn epoch_key(epoch: u64) -> String {
    format!("{EPOCH_PREFIX}{epoch}")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub license: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Local {
    pub epoch: u64,
    pub table: Table,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Median {
    pub epoch: u64,
    pub from: BTreeSet<String>,
    pub table: Table,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signed {
    pub agreed: Agreed,
    pub signature: OracleSignature,
}

/// What one oracle published for one epoch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Published {
    pub local: Option<Table>,
    pub median: Option<Median>,
    pub signed: Option<Signed>,
    /// Published two different values for one step: ignored this epoch.
    pub equivocated: bool,
    /// Its median table does not follow from the local tables it names.
    pub wrong_median: bool,
}

/// Kinds of misbehaviour (metric labels).
pub const MISBEHAVIOUR: [&str; 6] =
    ["equivocation", "wrong_median", "bad_signature", "malformed", "not_an_oracle", "conflicting_final"];

/// A misbehaving oracle, as reported.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub oracle: String,
    pub epoch: Option<u64>,
    pub kind: &'static str,
    pub detail: String,
    pub at_ms: u64,
}

/// A registered oracle: since when (the registration record's clock).
#[derive(Clone, Debug, PartialEq)]
pub struct Registered {
    pub license: String,
    pub since_ms: u64,
}

/// Everything OracleSync knows, built from CSTORE records.
#[derive(Clone, Debug, Default)]
pub struct Collector {
    pub epochs: BTreeMap<u64, BTreeMap<String, Published>>,
    pub registered: BTreeMap<String, Registered>,
    pub finals: BTreeMap<u64, EpochRecord>,
    /// When each final record was first seen here (Unix ms).
    pub final_seen_ms: BTreeMap<u64, u64>,
    pub reports: VecDeque<Report>,
}

/// A record's key, parsed.
enum Key<'a> {
    Registration(&'a str),
    Step(&'a str, u64, Step),
    Final(u64),
}

fn parse_key(key: &str) -> Option<Key<'_>> {
    if let Some(e) = key.strip_prefix(EPOCH_PREFIX) {
        return Some(Key::Final(e.parse().ok()?));
    }
    let rest = key.strip_prefix(ORACLE_PREFIX)?;
    let (peer, tail) = rest.split_once('/')?;
    if tail == "registration" {
        return Some(Key::Registration(peer));
    }
    let (e, step) = tail.strip_prefix("epoch/")?.split_once('/')?;
    let step = match step {
        "local" => Step::Local,
        "median" => Step::Median,
        "sign" => Step::Sign,
        _ => return None,
    };
    Some(Key::Step(peer, e.parse().ok()?, step))
}

impl Collector {
    fn report(&mut self, oracle: &str, epoch: Option<u64>, kind: &'static str, detail: String, now_ms: u64) -> Report {
        let r = Report { oracle: oracle.to_string(), epoch, kind, detail, at_ms: now_ms };
        self.reports.push_back(r.clone());
        while self.reports.len() > MAX_REPORTS {
            self.reports.pop_front();
        }
        r
    }

    /// Oldest epoch still kept at `current`.
    fn horizon(current: u64) -> u64 {
        current.saturating_sub(KEEP_EPOCHS)
    }

    /// Forgets epochs older than the horizon (final records stay in
    /// CSTORE; only memory is freed).
    pub fn prune(&mut self, current: u64) {
        let h = Self::horizon(current);
        self.epochs.retain(|e, _| *e >= h);
        self.finals.retain(|e, _| *e + 1 >= h);
        self.final_seen_ms.retain(|e, _| *e + 1 >= h);
    }

    /// Takes in one record (already signature- and rule-checked by
    /// CSTORE); returns the misbehaviour it shows, if any.
    pub fn observe(&mut self, rec: &Record, trust: &TrustStore, current: u64, now_ms: u64) -> Option<Report> {
        let key = parse_key(&rec.slot.key)?;
        if rec.slot.field.is_some() {
            return None;
        }
        let value = rec.value.as_ref();
        match key {
            Key::Final(e) => {
                let r: EpochRecord = serde_json::from_str(value?.get()).ok()?;
                if e < Self::horizon(current) || r.agreed.epoch != e {
                    return None;
                }
                match self.finals.get(&e) {
                    Some(held) if held.agreed != r.agreed => {
                        let who: Vec<_> = held.signatures.keys().filter(|o| r.signatures.contains_key(*o)).collect();
                        let detail = format!("two final records for epoch {e}; signed both: {who:?}");
                        let oracle = who.first().map(|s| s.to_string()).unwrap_or_default();
                        return Some(self.report(&oracle, Some(e), "conflicting_final", detail, now_ms));
                    }
                    // The same table with more signatures: keep them all.
                    Some(_) => {
                        let held = self.finals.get_mut(&e).expect("matched");
                        for (o, s) in r.signatures {
                            held.signatures.entry(o).or_insert(s);
                        }
                    }
                    None => {
                        self.finals.insert(e, r);
                        self.final_seen_ms.insert(e, now_ms);
                    }
                }
                None
            }
            Key::Registration(peer) => {
                let Some(v) = value else {
                    self.registered.remove(peer);
                    return None;
                };
                let reg: Registration = match serde_json::from_str(v.get()) {
                    Ok(r) => r,
                    Err(e) => return Some(self.report(peer, None, "malformed", format!("registration: {e}"), now_ms)),
                };
                match trust.verify(&reg.license, peer, (now_ms / 1000) as i64) {
                    Ok(c) if c.class.may_be_oracle() => {
                        if self.registered.get(peer).is_none_or(|r| r.license != reg.license) {
                            self.registered.insert(
                                peer.to_string(),
                                Registered { license: reg.license, since_ms: rec.hlc.wall_ms() },
                            );
                        }
                        None
                    }
                    Ok(c) => {
                        self.registered.remove(peer);
                        let detail = format!("registered with an {} license", c.class);
                        Some(self.report(peer, None, "not_an_oracle", detail, now_ms))
                    }
                    Err(e) => {
                        self.registered.remove(peer);
                        Some(self.report(peer, None, "not_an_oracle", format!("license: {e}"), now_ms))
                    }
                }
            }
            Key::Step(peer, e, step) => {
                // Deleted (expired) step records change nothing: they are old.
                let v = value?;
                if e < Self::horizon(current) || e > current {
                    return None;
                }
                let parsed = match step {
                    Step::Local => serde_json::from_str::<Local>(v.get()).map(|l| (l.epoch, Parsed::Local(l.table))),
                    Step::Median => serde_json::from_str::<Median>(v.get()).map(|m| (m.epoch, Parsed::Median(m))),
                    Step::Sign => serde_json::from_str::<Signed>(v.get()).map(|s| (s.agreed.epoch, Parsed::Signed(s))),
                };
                let parsed = match parsed {
                    Ok((epoch, p)) if epoch == e => p,
                    Ok(_) => {
                        let detail = format!("{} record names another epoch", step.name());
                        return Some(self.report(peer, Some(e), "malformed", detail, now_ms));
                    }
                    Err(err) => {
                        return Some(self.report(peer, Some(e), "malformed", format!("{}: {err}", step.name()), now_ms))
                    }
                };
                if let Parsed::Signed(s) = &parsed {
                    if let Err(why) = agree::check_signature(&s.agreed, peer, &s.signature, trust) {
                        return Some(self.report(peer, Some(e), "bad_signature", why, now_ms));
                    }
                }
                let p = self.epochs.entry(e).or_default().entry(peer.to_string()).or_default();
                let differs = match (&parsed, &*p) {
                    (Parsed::Local(t), Published { local: Some(held), .. }) => held != t,
                    (Parsed::Median(m), Published { median: Some(held), .. }) => held != m,
                    (Parsed::Signed(s), Published { signed: Some(held), .. }) => held != s,
                    _ => false,
                };
                if differs {
                    let first = !p.equivocated;
                    p.equivocated = true;
                    let detail = format!("published two different {} tables", step.name());
                    return first.then(|| self.report(peer, Some(e), "equivocation", detail, now_ms));
                }
                match parsed {
                    Parsed::Local(t) => p.local = Some(t),
                    Parsed::Median(m) => p.median = Some(m),
                    Parsed::Signed(s) => p.signed = Some(s),
                }
                None
            }
        }
    }

    /// Oracles registered before `end_ms`.
    pub fn registered_at(&self, end_ms: u64) -> BTreeSet<String> {
        self.registered.iter().filter(|(_, r)| r.since_ms < end_ms).map(|(p, _)| p.clone()).collect()
    }

    /// Whether `oracle` may take part in `epoch`: at or above the rules'
    /// availability in the previous final record; anyone registered when
    /// there is none (the network's first epoch, or a faulty one).
    pub fn eligible(&self, oracle: &str, epoch: u64, rules: &Rules) -> bool {
        match epoch.checked_sub(1).and_then(|p| self.finals.get(&p)) {
            Some(prev) => prev.agreed.table.get(oracle).is_some_and(|v| *v >= rules.min_availability),
            None => true,
        }
    }

    /// The oracles that take part in `epoch` as seen here: registered,
    /// eligible, honest so far, and with a local table in.
    fn participants(&self, epoch: u64, registered: &BTreeSet<String>, rules: &Rules) -> BTreeSet<String> {
        let Some(pubs) = self.epochs.get(&epoch) else { return BTreeSet::new() };
        pubs.iter()
            .filter(|(o, p)| {
                p.local.is_some() && !p.equivocated && registered.contains(*o) && self.eligible(o, epoch, rules)
            })
            .map(|(o, _)| o.clone())
            .collect()
    }

    /// Checks each median table that names only local tables held here
    /// against them; marks and reports those that do not follow.
    fn check_medians(&mut self, epoch: u64, now_ms: u64) -> Vec<Report> {
        let Some(pubs) = self.epochs.get(&epoch) else { return vec![] };
        let wrong: Vec<(String, String)> = pubs
            .iter()
            .filter(|(_, p)| !p.wrong_median && !p.equivocated)
            .filter_map(|(o, p)| {
                let m = p.median.as_ref()?;
                let locals: Option<Vec<&Table>> =
                    m.from.iter().map(|f| pubs.get(f).filter(|q| !q.equivocated)?.local.as_ref()).collect();
                let expected = agree::medians(locals?);
                (expected != m.table).then(|| {
                    let bad = m.table.iter().filter(|(n, v)| expected.get(*n) != Some(v)).count()
                        + expected.keys().filter(|n| !m.table.contains_key(*n)).count();
                    (o.clone(), format!("{bad} values differ from the medians of the {} tables it names", m.from.len()))
                })
            })
            .collect();
        wrong
            .into_iter()
            .map(|(o, detail)| {
                if let Some(p) = self.epochs.get_mut(&epoch).and_then(|p| p.get_mut(&o)) {
                    p.wrong_median = true;
                }
                self.report(&o, Some(epoch), "wrong_median", detail, now_ms)
            })
            .collect()
    }
}

enum Parsed {
    Local(Table),
    Median(Median),
    Signed(Signed),
}

/// What this node knows at one moment, besides the collector.
pub struct Inputs<'a> {
    pub now_ms: u64,
    pub me: &'a str,
    /// This node's key (`me` is its PeerId): oracles sign with it.
    pub key: &'a libp2p_identity::Keypair,
    /// This node's license, when it runs as an oracle.
    pub license: Option<&'a str>,
    pub epochs: Epochs,
    /// The last closed epoch and this node's local table for it, when its
    /// network ran through all of it.
    pub observed: Option<(u64, &'a Table)>,
    /// Oracles heard from lately (this one included).
    pub online: &'a BTreeSet<String>,
    /// Each step's time bound after the epoch's end.
    pub phase_ms: u64,
    /// When this node's OracleSync started: an epoch that ended before is
    /// not judged faulty here (its record may still be on its way).
    pub started_ms: u64,
    pub rules: Rules,
}

/// A record to write.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Registration(Registration),
    Local(Local),
    Median(Median),
    Signed(Signed),
    Final(EpochRecord),
}

impl Write {
    /// Its key, for an oracle `me`.
    pub fn key(&self, me: &str) -> String {
        match self {
            Write::Registration(_) => registration_key(me),
            Write::Local(l) => step_key(me, l.epoch, Step::Local),
            Write::Median(m) => step_key(me, m.epoch, Step::Median),
            Write::Signed(s) => step_key(me, s.agreed.epoch, Step::Sign),
            Write::Final(r) => epoch_key(r.agreed.epoch),
        }
    }

    pub fn value(&self) -> serde_json::Value {
        match self {
            Write::Registration(r) => serde_json::to_value(r),
            Write::Local(l) => serde_json::to_value(l),
            Write::Median(m) => serde_json::to_value(m),
            Write::Signed(s) => serde_json::to_value(s),
            Write::Final(r) => serde_json::to_value(r),
        }
        .expect("oracle records serialize")
    }
}

/// Where one epoch stands, as this node sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochState {
    pub epoch: u64,
    /// `collecting`, `final`, `faulty` (no final record once every
    /// step's bound passed), or `unknown` (ended before this node's
    /// OracleSync started, and no final record is held).
    pub state: &'static str,
    pub participants: usize,
    pub registered: usize,
    /// Signatures of the most signed table.
    pub signers: usize,
    /// This node's step (oracles): `local`, `median`, `signed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// From the epoch's end to the final record reaching this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_after_ms: Option<u64>,
}

/// Decides what to write now, and reports what it found on the way;
/// returns the writes and each epoch's state (newest last).
pub fn plan(c: &mut Collector, i: &Inputs<'_>) -> (Vec<Write>, Vec<EpochState>, Vec<Report>) {
    let mut writes = vec![];
    let mut states = vec![];
    let mut reports = vec![];
    let Some(current) = i.epochs.at(i.now_ms) else { return (writes, states, reports) };
    if let Some(license) = i.license {
        if c.registered.get(i.me).is_none_or(|r| r.license != license) {
            writes.push(Write::Registration(Registration { license: license.to_string() }));
        }
    }
    // The last two closed epochs: the older one may still finish late.
    for e in current.saturating_sub(2)..current {
        let (_, end) = i.epochs.bounds(e);
        let since_end = i.now_ms.saturating_sub(end);
        let registered = c.registered_at(end);
        let mut reason = None;
        let mut step = None;
        if let (Some(license), true) = (i.license, registered.contains(i.me)) {
            reports.extend(c.check_medians(e, i.now_ms));
            let mine = c.epochs.get(&e).and_then(|p| p.get(i.me)).cloned().unwrap_or_default();
            let participants = c.participants(e, &registered, &i.rules);
            let pubs = c.epochs.get(&e);
            let honest = |o: &String| pubs.and_then(|p| p.get(o)).is_some_and(|p| !p.equivocated && !p.wrong_median);
            match (&mine.local, &mine.median, &mine.signed) {
                (None, _, _) => match i.observed {
                    Some((last, table)) if last == e && e + 1 == current => {
                        writes.push(Write::Local(Local { epoch: e, table: table.clone() }));
                        step = Some("local");
                    }
                    _ => reason = Some("this oracle did not observe all of the epoch".to_string()),
                },
                (Some(local), None, _) => {
                    step = Some("local");
                    let expected: BTreeSet<&String> =
                        registered.iter().filter(|o| i.online.contains(*o) && c.eligible(o, e, &i.rules)).collect();
                    if since_end >= i.phase_ms || expected.iter().all(|o| participants.contains(*o)) {
                        let locals = participants.iter().filter_map(|o| pubs?.get(o)?.local.as_ref());
                        let table = agree::medians(locals);
                        for (node, own, med) in agree::outliers(local, &table, i.rules.outlier_limit) {
                            tracing::warn!(epoch = e, %node, own, median = med, "this oracle's value is an outlier");
                        }
                        writes.push(Write::Median(Median { epoch: e, from: participants.clone(), table }));
                        step = Some("median");
                    }
                }
                (Some(_), Some(_), None) => {
                    step = Some("median");
                    let medians: Vec<&Table> = participants
                        .iter()
                        .filter(|o| honest(o))
                        .filter_map(|o| pubs?.get(o)?.median.as_ref().map(|m| &m.table))
                        .collect();
                    let all_in =
                        participants.iter().all(|o| pubs.and_then(|p| p.get(o)).is_some_and(|p| p.median.is_some()));
                    if since_end >= 2 * i.phase_ms || all_in {
                        let online = i.online.iter().filter(|o| registered.contains(*o)).count();
                        match agree::participation(participants.len(), registered.len(), online, &i.rules) {
                            Ok(()) => {
                                let (start_ms, end_ms) = i.epochs.bounds(e);
                                let agreed = Agreed {
                                    epoch: e,
                                    start_ms,
                                    end_ms,
                                    table: agree::agree(medians, participants.len()),
                                    registered: registered.clone(),
                                };
                                let signature = agreed.sign(i.key, license);
                                writes.push(Write::Signed(Signed { agreed, signature }));
                                step = Some("signed");
                            }
                            Err(why) => reason = Some(why),
                        }
                    }
                }
                _ => step = Some("signed"),
            }
        }
        // The most signed table among honest registered oracles.
        let mut groups: BTreeMap<[u8; 32], (Agreed, BTreeMap<String, OracleSignature>)> = BTreeMap::new();
        if let Some(pubs) = c.epochs.get(&e) {
            for (o, p) in pubs {
                if let (Some(s), false) = (&p.signed, p.equivocated) {
                    if s.agreed.registered.contains(o) {
                        let g = groups.entry(s.agreed.digest()).or_insert_with(|| (s.agreed.clone(), BTreeMap::new()));
                        g.1.insert(o.clone(), s.signature.clone());
                    }
                }
            }
        }
        let best = groups.into_values().max_by_key(|(_, sigs)| sigs.len());
        let signers = best.as_ref().map_or(0, |(_, s)| s.len());
        // Written once a majority signed, and again by an oracle that holds
        // signatures the record lacks (late signers are kept).
        if let Some((agreed, mut signatures)) = best.filter(|(a, s)| agree::is_final(s.len(), a.registered.len())) {
            let held = c.finals.get(&e);
            let more =
                held.is_none_or(|r| r.agreed == agreed && signatures.keys().any(|o| !r.signatures.contains_key(o)));
            if more && i.license.is_some() {
                if let Some(r) = held {
                    signatures.extend(r.signatures.iter().map(|(o, s)| (o.clone(), s.clone())));
                }
                writes.push(Write::Final(EpochRecord { agreed, signatures }));
            }
        }
        let state = if c.finals.contains_key(&e) {
            "final"
        } else if end < i.started_ms {
            "unknown"
        } else if since_end >= 3 * i.phase_ms {
            "faulty"
        } else {
            "collecting"
        };
        if state == "unknown" {
            reason = Some("the epoch ended before this node's OracleSync started".into());
        } else if state == "faulty" && reason.is_none() {
            reason = Some(format!("{signers} of {} registered oracles signed one table", registered.len()));
        }
        states.push(EpochState {
            epoch: e,
            state,
            participants: c.participants(e, &registered, &i.rules).len(),
            registered: registered.len(),
            signers: c.finals.get(&e).map_or(signers, |r| r.signatures.len()),
            step,
            reason: if state == "final" { None } else { reason },
            final_after_ms: c.final_seen_ms.get(&e).map(|t| t.saturating_sub(end)),
        });
    }
    (writes, states, reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cstore::record::{to_raw, Hlc, Slot};
    use crate::dauth::license::{issue, key_id, Claims, Class};
    use libp2p_identity::{ed25519, Keypair};

    const L: u64 = 60_000;
    const PHASE: u64 = 2_000;

    /// How a simulated oracle behaves.
    #[derive(Clone, Copy, PartialEq)]
    enum Conduct {
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

    struct Sim {
        keys: Vec<Keypair>,
        ids: Vec<String>,
        licenses: Vec<String>,
        conduct: Vec<Conduct>,
        collectors: Vec<Collector>,
        trust: TrustStore,
        epochs: Epochs,
        truth: Table,
        now: u64,
        /// Every record written, in order.
        log: Vec<Record>,
    }

    impl Sim {
        fn new(conduct: &[Conduct], nodes: usize) -> Self {
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
            let mut truth: Table = (0..nodes).map(|n| (format!("node-{n:03}"), (n * 37 % 256) as u8)).collect();
            for id in &ids {
                truth.insert(id.clone(), 250);
            }
            Self {
                collectors: vec![Collector::default(); keys.len()],
                keys,
                ids,
                licenses,
                conduct: conduct.to_vec(),
                trust,
                epochs: Epochs { genesis_ms: 0, length_ms: L },
                truth,
                now: 1_000,
                log: vec![],
            }
        }

        fn deliver(&mut self, rec: Record) {
            let current = self.epochs.at(self.now).unwrap();
            for c in &mut self.collectors {
                c.observe(&rec, &self.trust, current, self.now);
            }
            self.log.push(rec);
        }

        fn write(&mut self, i: usize, key: &str, value: serde_json::Value) {
            let rec = Record::sign(
                &self.keys[i],
                Slot::flat(key),
                Some(to_raw(&value).unwrap()),
                Hlc::new(self.now, 0),
                None,
            );
            // What CSTORE would check before carrying it.
            let writer = rec.verify().expect("signed");
            crate::cstore::rules::check(&rec, &writer, &self.trust).expect("allowed by CSTORE's rules");
            self.deliver(rec);
        }

        /// One turn of every oracle at the current time.
        fn turn(&mut self) -> Vec<Vec<EpochState>> {
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
                let (writes, s, _) = plan(&mut self.collectors[i], &inputs);
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
        fn run_epoch(&mut self, until_ms: u64) -> Vec<Vec<EpochState>> {
            self.turn(); // registrations, in epoch 0
            self.now = 2 * L + 50; // epoch 1 closed (the observed one)
            let mut last = vec![];
            while self.now <= 2 * L + until_ms {
                last = self.turn();
                self.now += 100;
            }
            last
        }

        fn state_of(states: &[Vec<EpochState>], i: usize) -> &EpochState {
            states[i].iter().find(|s| s.epoch == 1).expect("epoch 1 is reported")
        }
    }

    #[test]
    fn honest_oracles_finalise_one_record_that_anyone_verifies() {
        for n in [3, 5, 7] {
            let mut sim = Sim::new(&vec![Conduct::Honest; n], 100);
            let states = sim.run_epoch(PHASE / 2);
            // Everyone was in early: final well before the first bound.
            for i in 0..n {
                let s = Sim::state_of(&states, i);
                assert_eq!((s.state, s.participants, s.registered), ("final", n, n), "{n} oracles: {s:?}");
            }
            let finals: BTreeSet<_> = sim.collectors.iter().map(|c| c.finals[&1].agreed.digest()).collect();
            assert_eq!(finals.len(), 1, "one record on every oracle");
            // Final at the first majority; late signatures are added.
            assert!(sim.collectors.iter().all(|c| c.finals[&1].signatures.len() == n), "{n} oracles");
            let r = &sim.collectors[0].finals[&1];
            // Epoch 0's record was not there: epoch 1 held every registered oracle.
            assert_eq!(r.agreed.table, sim.truth);
            assert!(r.verify(&sim.trust).is_ok());
            assert!(sim.collectors.iter().all(|c| c.reports.is_empty()));
        }
    }

    #[test]
    fn a_silent_oracle_delays_the_others_only_to_the_bounds() {
        for from in [Step::Local, Step::Median, Step::Sign] {
            let mut conduct = vec![Conduct::Honest; 3];
            conduct[2] = Conduct::SilentFrom(from);
            let mut sim = Sim::new(&conduct, 20);
            let states = sim.run_epoch(3 * PHASE + 500);
            for i in 0..2 {
                let s = Sim::state_of(&states, i);
                assert_eq!(s.state, "final", "silent from {from:?}: {s:?}");
            }
            let r = &sim.collectors[0].finals[&1];
            assert_eq!(r.signatures.len(), 2);
            assert!(r.verify(&sim.trust).is_ok());
        }
    }

    #[test]
    fn without_a_majority_of_the_registered_oracles_the_epoch_is_faulty() {
        let conduct = [Conduct::Honest, Conduct::SilentFrom(Step::Sign), Conduct::SilentFrom(Step::Local)];
        let mut sim = Sim::new(&conduct, 20);
        let before = sim.run_epoch(3 * PHASE - 200);
        assert_eq!(Sim::state_of(&before, 0).state, "collecting");
        sim.now = 2 * L + 3 * PHASE;
        let states = sim.turn();
        let s = Sim::state_of(&states, 0);
        assert_eq!((s.state, s.signers, s.registered), ("faulty", 1, 3), "{s:?}");
        assert!(sim.collectors.iter().all(|c| c.finals.is_empty()));
        // A record with that one signature is refused by CSTORE's rules.
        let sign = sim.collectors[0].epochs[&1][&sim.ids[0]].signed.clone().unwrap();
        let forged =
            EpochRecord { agreed: sign.agreed.clone(), signatures: [(sim.ids[0].clone(), sign.signature)].into() };
        let rec = Record::sign(
            &sim.keys[0],
            Slot::flat(&epoch_key(1)),
            Some(to_raw(&serde_json::to_value(&forged).unwrap()).unwrap()),
            Hlc::new(sim.now, 0),
            None,
        );
        assert!(crate::cstore::rules::check(&rec, &rec.verify().unwrap(), &sim.trust).is_err());
    }

    #[test]
    fn a_lying_oracle_is_outvoted() {
        for n in [3, 5, 7] {
            let mut conduct = vec![Conduct::Honest; n];
            conduct[0] = Conduct::Lies;
            if n == 7 {
                conduct[1] = Conduct::Lies;
            }
            let mut sim = Sim::new(&conduct, 50);
            sim.run_epoch(3 * PHASE);
            let r = &sim.collectors[n - 1].finals[&1];
            assert_eq!(r.agreed.table, sim.truth, "{n} oracles");
            // The liar's local values are far from the medians (it would
            // flag itself); the record it co-signs is the truth.
            assert!(
                agree::outliers(&sim.truth.keys().map(|k| (k.clone(), 0)).collect(), &r.agreed.table, 50).len() > 10
            );
        }
    }

    #[test]
    fn equivocation_and_wrong_medians_are_detected_reported_and_ignored() {
        let conduct = [Conduct::Equivocates, Conduct::WrongMedian, Conduct::Honest, Conduct::Honest, Conduct::Honest];
        let mut sim = Sim::new(&conduct, 30);
        sim.run_epoch(3 * PHASE);
        for c in &sim.collectors[2..] {
            let kinds: BTreeSet<(&str, &str)> = c.reports.iter().map(|r| (r.oracle.as_str(), r.kind)).collect();
            assert!(kinds.contains(&(sim.ids[0].as_str(), "equivocation")), "{kinds:?}");
            assert!(kinds.contains(&(sim.ids[1].as_str(), "wrong_median")), "{kinds:?}");
            let r = &c.finals[&1];
            assert_eq!(r.agreed.table, sim.truth);
            assert!(!r.signatures.contains_key(&sim.ids[0]), "the equivocator's signature is not counted");
            assert!(r.verify(&sim.trust).is_ok());
        }
    }

    #[test]
    fn only_oracles_fully_online_in_the_previous_record_take_part() {
        let mut sim = Sim::new(&[Conduct::Honest; 3], 5);
        sim.run_epoch(PHASE);
        let mut c = sim.collectors[0].clone();
        let mut prev = c.finals[&1].clone();
        assert!(sim.ids.iter().all(|o| c.eligible(o, 2, &Rules::default())));
        prev.agreed.table.insert(sim.ids[1].clone(), 229);
        prev.agreed.table.remove(&sim.ids[2]);
        c.finals.insert(1, prev);
        assert!(c.eligible(&sim.ids[0], 2, &Rules::default()));
        assert!(!c.eligible(&sim.ids[1], 2, &Rules::default()));
        assert!(!c.eligible(&sim.ids[2], 2, &Rules::default()));
        // No record for the previous epoch: everyone registered takes part.
        assert!(c.eligible(&sim.ids[2], 9, &Rules::default()));
    }

    #[test]
    fn registrations_need_an_oracle_license_and_count_from_their_time() {
        let mut sim = Sim::new(&[Conduct::Honest; 2], 0);
        sim.turn();
        assert_eq!(sim.collectors[0].registered_at(L).len(), 2);
        assert!(sim.collectors[0].registered_at(500).is_empty(), "registered at 1 s: not in an epoch ending before");
        // A node with an ND license cannot register.
        let issuer = ed25519::Keypair::generate();
        let trust = TrustStore::new([issuer.public()], []);
        let k = Keypair::generate_ed25519();
        let id = k.public().to_peer_id().to_string();
        let lic = issue(
            &issuer,
            &Claims {
                id: "nd".into(),
                class: Class::Nd,
                peer: id.clone(),
                iat: 0,
                exp: 4_000_000_000,
                iss: key_id(&issuer.public()),
            },
        );
        let v = serde_json::to_value(Registration { license: lic }).unwrap();
        let rec = Record::sign(&k, Slot::flat(&registration_key(&id)), Some(to_raw(&v).unwrap()), Hlc::new(1, 0), None);
        let mut c = Collector::default();
        assert_eq!(c.observe(&rec, &trust, 0, 1).map(|r| r.kind), Some("not_an_oracle"));
        assert!(c.registered.is_empty());
    }
}
