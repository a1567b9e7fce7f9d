//! OracleSync's state machine, pure: what the oracles published (read from
//! CSTORE records) and what this node should write next.
//!
//! Every message is a CSTORE record in its oracle's own namespace, which
//! only that oracle can write, signed by its key and replicated (gossip,
//! then anti-entropy: a late or restarted oracle catches up from any
//! replica):
//!
//! - `oracle/<peer>/registration`: `{license}`, an MND/GND license bound to
//!   `<peer>`. The registered oracles of an epoch are those registered
//!   before it started.
//! - `oracle/<peer>/epoch/<E>/local`: `{epoch, table}` (step 1).
//! - `oracle/<peer>/epoch/<E>/median`: `{epoch, from, table}` (step 2);
//!   `from` maps each local table used to its hash, so anyone holding the
//!   same tables recomputes it.
//! - `oracle/<peer>/epoch/<E>/sign`: the agreed table and the oracle's
//!   signature (step 3).
//! - `oracle/<peer>/epoch/<E>/final`: the [`EpochRecord`] as that oracle
//!   holds it once a majority signed (step 4), rewritten as more
//!   signatures arrive.
//!
//! A node accepts a final record only for its own epoch clock and its own
//! registered set. A step record is written once: a second, different
//! value for the same step is *equivocation*, and that oracle is left out
//! of the epoch. A median table that does not follow from the local tables
//! it names is a *wrong median*, and left out too. Both are reported
//! (status, metric, log).

use super::agree::{self, Agreed, EpochRecord, OracleSignature, Rules, Table};
use super::epoch::Epochs;
use crate::cstore::record::{Hlc, Record};
use crate::dauth::license::TrustStore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use crate::cstore::rules::ORACLE_PREFIX;

/// Epochs kept in memory behind the current one.
pub const KEEP_EPOCHS: u64 = 4;
/// Misbehaviour reports kept for status.
pub const MAX_REPORTS: usize = 64;
/// A registration seen live whose clock is older than this counts from
/// this long before it arrived (no backdating into past epochs); above
/// anti-entropy's delay, so a registration that missed gossip still counts
/// from its clock. The service lowers it to a quarter of a short epoch.
pub const REGISTRATION_SKEW_MS: u64 = 30_000;

/// One step of an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Local,
    Median,
    Sign,
    Final,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Local => "local",
            Step::Median => "median",
            Step::Sign => "sign",
            Step::Final => "final",
        }
    }
}

pub fn registration_key(peer: &str) -> String {
    format!("{ORACLE_PREFIX}{peer}/registration")
}

pub fn step_key(peer: &str, epoch: u64, step: Step) -> String {
    format!("{ORACLE_PREFIX}{peer}/epoch/{epoch}/{}", step.name())
}

/// Short hash of a local table, as a median names it.
pub fn table_hash(t: &Table) -> String {
    let d = Sha256::digest(serde_json::to_vec(t).expect("tables serialize"));
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
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
    /// Oracle → hash of the local table of its used here.
    pub from: BTreeMap<String, String>,
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
    /// `Some(true)`: its median follows from the local tables it names
    /// (checked here); `Some(false)`: it does not; `None`: not checkable
    /// yet (this node lacks one of them, or holds another version).
    pub median_ok: Option<bool>,
    pub signed: Option<Signed>,
    pub last: Option<EpochRecord>,
    /// The table this oracle signed, wherever its signature was seen (its
    /// sign record, or any final copy): a second one is equivocation.
    pub signed_digest: Option<[u8; 32]>,
    /// Published two different values for one step: ignored this epoch.
    pub equivocated: bool,
    /// The newest version of each step record taken in. A version older
    /// than it is stale, not a second publication: CSTORE's watch can
    /// bring this node's first final copy after its second one, which
    /// `set` already returned.
    pub newest: BTreeMap<Step, Hlc>,
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

/// A final epoch as the ledger needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    /// [`Agreed::id`] of the record.
    pub id: String,
    pub table: Table,
}

impl Decided {
    fn of(a: &Agreed) -> Self {
        Self { id: a.id(), table: a.table.clone() }
    }
}

/// A registered oracle: since when.
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
    /// Final records accepted here (this node's clock and registered set).
    pub finals: BTreeMap<u64, EpochRecord>,
    /// When each final record was first accepted here (Unix ms).
    pub final_seen_ms: BTreeMap<u64, u64>,
    pub reports: VecDeque<Report>,
    /// The initial read is done: registrations seen from now on are live.
    pub loaded: bool,
    /// How far back a live registration's clock may go (0: the default).
    pub registration_skew_ms: u64,
    /// Epochs in which two tables reached a majority (reported once).
    pub conflicts: BTreeSet<u64>,
    /// Every report since the service last took them (one record can show
    /// more than one misbehaviour: each is logged and counted).
    pub unseen: Vec<Report>,
    /// Every final epoch's table, kept for the ledger (claims reach back
    /// to a license's first epoch); never pruned.
    pub history: BTreeMap<u64, Decided>,
    /// The epoch clock, once known: old final records are checked
    /// against it before they enter the history.
    pub clock: Option<Epochs>,
    /// Each misbehaviour reported, by oracle, epoch and kind: reported
    /// once, also when a reload reads the same records again.
    pub reported: BTreeSet<(String, Option<u64>, &'static str)>,
}

/// A record's key, parsed.
enum Key<'a> {
    Registration(&'a str),
    Step(&'a str, u64, Step),
}

fn parse_key(key: &str) -> Option<Key<'_>> {
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
        "final" => Step::Final,
        _ => return None,
    };
    Some(Key::Step(peer, e.parse().ok()?, step))
}

/// Whether a record key is a registration (read those first).
pub fn is_registration(key: &str) -> bool {
    matches!(parse_key(key), Some(Key::Registration(_)))
}

enum Parsed {
    Local(Table),
    Median(Median),
    Signed(Signed),
    Final(EpochRecord),
}

impl Collector {
    /// Records a misbehaviour; `None` when it was reported already.
    fn report(
        &mut self,
        oracle: &str,
        epoch: Option<u64>,
        kind: &'static str,
        detail: String,
        now_ms: u64,
    ) -> Option<Report> {
        // Reports without an epoch (registrations) are not pruned with the
        // epochs: bounded here, as any licensed peer can carry
        // registrations signed by throwaway keys.
        if epoch.is_none() && self.reported.iter().filter(|r| r.1.is_none()).count() >= 1_024 {
            self.reported.retain(|r| r.1.is_some());
        }
        if !self.reported.insert((oracle.to_string(), epoch, kind)) {
            return None;
        }
        let r = Report { oracle: oracle.to_string(), epoch, kind, detail, at_ms: now_ms };
        self.reports.push_back(r.clone());
        self.unseen.push(r.clone());
        while self.reports.len() > MAX_REPORTS {
            self.reports.pop_front();
        }
        Some(r)
    }

    /// After a reload: an oracle reported for two values in an epoch stays
    /// out of it, although CSTORE now holds only its last value.
    pub fn exclude_reported(&mut self) {
        let out: Vec<(String, u64)> = self
            .reported
            .iter()
            .filter(|(_, _, kind)| matches!(*kind, "equivocation" | "conflicting_final"))
            .filter_map(|(o, e, _)| Some((o.clone(), (*e)?)))
            .filter(|(o, _)| !o.is_empty())
            .collect();
        for (o, e) in out {
            self.epochs.entry(e).or_default().entry(o).or_default().equivocated = true;
        }
    }

    /// Oldest epoch still kept at `current`.
    fn horizon(current: u64) -> u64 {
        current.saturating_sub(KEEP_EPOCHS)
    }

    /// Forgets epochs older than the horizon (the records stay in
    /// CSTORE; only memory is freed).
    pub fn prune(&mut self, current: u64) {
        let h = Self::horizon(current);
        self.epochs.retain(|e, _| *e >= h);
        self.finals.retain(|e, _| e.saturating_add(1) >= h);
        self.final_seen_ms.retain(|e, _| e.saturating_add(1) >= h);
        self.conflicts.retain(|e| *e >= h);
        self.reported.retain(|(_, e, _)| e.is_none_or(|e| e >= h));
    }

    /// Takes in one record (already signature- and rule-checked by
    /// CSTORE); returns the misbehaviour it shows, if any.
    pub fn observe(&mut self, rec: &Record, trust: &TrustStore, current: u64, now_ms: u64) -> Option<Report> {
        let key = parse_key(&rec.slot.key)?;
        if rec.slot.field.is_some() {
            return None;
        }
        match key {
            Key::Registration(peer) => self.observe_registration(peer, rec, trust, now_ms),
            Key::Step(peer, e, step) => {
                // Deleted (expired) step records change nothing: they are
                // old. Unregistered writers are not oracles: not looked at.
                let v = rec.value.as_ref()?;
                // Older than the epochs planned: only the history wants it.
                if step == Step::Final && e.saturating_add(3) < current && self.registered.contains_key(peer) {
                    self.observe_old_final(e, v.get(), trust);
                }
                if e < Self::horizon(current) || e > current || !self.registered.contains_key(peer) {
                    return None;
                }
                // (an equal clock with another value is still a conflict)
                let newest = &mut self.epochs.entry(e).or_default().entry(peer.to_string()).or_default().newest;
                if newest.get(&step).is_some_and(|held| rec.hlc < *held) {
                    return None;
                }
                newest.insert(step, rec.hlc);
                let parsed = match step {
                    Step::Local => serde_json::from_str::<Local>(v.get()).map(|l| (l.epoch, Parsed::Local(l.table))),
                    Step::Median => serde_json::from_str::<Median>(v.get()).map(|m| (m.epoch, Parsed::Median(m))),
                    Step::Sign => serde_json::from_str::<Signed>(v.get()).map(|s| (s.agreed.epoch, Parsed::Signed(s))),
                    Step::Final => {
                        serde_json::from_str::<EpochRecord>(v.get()).map(|r| (r.agreed.epoch, Parsed::Final(r)))
                    }
                };
                let mut parsed = match parsed {
                    Ok((epoch, p)) if epoch == e => p,
                    Ok(_) => {
                        let detail = format!("{} record names another epoch", step.name());
                        return self.report(peer, Some(e), "malformed", detail, now_ms);
                    }
                    Err(err) => {
                        return self.report(peer, Some(e), "malformed", format!("{}: {err}", step.name()), now_ms)
                    }
                };
                match &parsed {
                    Parsed::Signed(s) => {
                        if let Err(why) = agree::check_signature(&s.agreed, peer, &s.signature, trust) {
                            return self.report(peer, Some(e), "bad_signature", why, now_ms);
                        }
                    }
                    Parsed::Final(r) => match r.verify_with(trust, &|o, s| self.checked(e, &r.agreed, o, s, trust)) {
                        Err(why) => return self.report(peer, Some(e), "bad_signature", why, now_ms),
                        Ok(v) if !v.ignored.is_empty() => {
                            // Keep only the signatures that verified.
                            let mut r = r.clone();
                            r.signatures.retain(|o, _| !v.ignored.iter().any(|(bad, _)| bad == o));
                            parsed = Parsed::Final(r);
                        }
                        Ok(_) => {}
                    },
                    _ => {}
                }
                let p = self.epochs.entry(e).or_default().entry(peer.to_string()).or_default();
                let differs = match (&parsed, &*p) {
                    (Parsed::Local(t), Published { local: Some(held), .. }) => held != t,
                    (Parsed::Median(m), Published { median: Some(held), .. }) => held != m,
                    (Parsed::Signed(s), Published { signed: Some(held), .. }) => held != s,
                    // A final record grows (more signatures); another table is
                    // a second one.
                    (Parsed::Final(r), Published { last: Some(held), .. }) => {
                        held.agreed != r.agreed || held.signatures.keys().any(|o| !r.signatures.contains_key(o))
                    }
                    _ => false,
                };
                // Every signature seen, by its signer: one table per oracle.
                let signers: Vec<(String, [u8; 32])> = match &parsed {
                    Parsed::Signed(s) => vec![(peer.to_string(), s.agreed.digest())],
                    Parsed::Final(r) => {
                        let d = r.agreed.digest();
                        r.signatures.keys().map(|o| (o.clone(), d)).collect()
                    }
                    _ => vec![],
                };
                let mut report = None;
                if differs {
                    let first = !p.equivocated;
                    p.equivocated = true;
                    let (kind, detail) = match step {
                        Step::Final => ("conflicting_final", "published two different final records".to_string()),
                        _ => ("equivocation", format!("published two different {} tables", step.name())),
                    };
                    if first {
                        report = self.report(peer, Some(e), kind, detail, now_ms);
                    }
                } else {
                    match parsed {
                        Parsed::Local(t) => p.local = Some(t),
                        Parsed::Median(m) => {
                            p.median = Some(m);
                            p.median_ok = None;
                        }
                        Parsed::Signed(s) => p.signed = Some(s),
                        Parsed::Final(r) => p.last = Some(r),
                    }
                }
                for (o, d) in signers {
                    let q = self.epochs.entry(e).or_default().entry(o.clone()).or_default();
                    match q.signed_digest {
                        None => q.signed_digest = Some(d),
                        Some(held) if held != d && !q.equivocated => {
                            q.equivocated = true;
                            let detail = "signed two different tables".to_string();
                            let r = self.report(&o, Some(e), "equivocation", detail, now_ms);
                            report = report.or(r);
                        }
                        Some(_) => {}
                    }
                }
                report
            }
        }
    }

    fn observe_registration(&mut self, peer: &str, rec: &Record, trust: &TrustStore, now_ms: u64) -> Option<Report> {
        // A registration stays: deleting it does not unregister (a dead
        // oracle still counts, so the majority cannot be shrunk).
        let v = rec.value.as_ref()?;
        let reg: Registration = match serde_json::from_str(v.get()) {
            Ok(r) => r,
            Err(e) => return self.report(peer, None, "malformed", format!("registration: {e}"), now_ms),
        };
        match trust.verify(&reg.license, peer, (now_ms / 1000) as i64) {
            Ok(c) if c.class.may_be_oracle() => {
                let clock = rec.hlc.wall_ms();
                let skew =
                    if self.registration_skew_ms == 0 { REGISTRATION_SKEW_MS } else { self.registration_skew_ms };
                let since = if self.loaded { clock.max(now_ms.saturating_sub(skew)) } else { clock };
                let since = self.registered.get(peer).map_or(since, |r| r.since_ms.min(since));
                self.registered.insert(peer.to_string(), Registered { license: reg.license, since_ms: since });
                None
            }
            Ok(c) => {
                let detail = format!("registered with an {} license", c.class);
                self.report(peer, None, "not_an_oracle", detail, now_ms)
            }
            Err(e) => self.report(peer, None, "not_an_oracle", format!("license: {e}"), now_ms),
        }
    }

    /// A final record of an epoch older than the ones followed (read at
    /// start): into the history if it verifies for this node's clock and
    /// registered set, as a live one would.
    fn observe_old_final(&mut self, e: u64, v: &str, trust: &TrustStore) {
        let Some(clock) = self.clock else { return };
        if self.history.contains_key(&e) {
            return;
        }
        let Ok(r) = serde_json::from_str::<EpochRecord>(v) else { return };
        let (start, end) = clock.bounds(e);
        let a = &r.agreed;
        if a.epoch != e || (a.start_ms, a.end_ms) != (start, end) || a.registered != self.registered_at(start) {
            return;
        }
        if r.verify(trust).is_ok() {
            self.history.insert(e, Decided::of(a));
        }
    }

    /// Whether `oracle`'s signature `s` of `agreed` was checked here
    /// already: in its sign record, or in a final record taken in.
    fn checked(&self, e: u64, agreed: &Agreed, oracle: &str, s: &OracleSignature, trust: &TrustStore) -> bool {
        // Revocations may have come since: those are looked at again.
        let valid = crate::dauth::license::decode(&s.license)
            .is_ok_and(|(c, ..)| trust.still_valid(&c, (agreed.end_ms / 1000) as i64).is_ok());
        let Some(pubs) = self.epochs.get(&e).filter(|_| valid) else { return false };
        let signed = pubs.get(oracle).and_then(|p| p.signed.as_ref());
        signed.is_some_and(|x| x.signature == *s && x.agreed == *agreed)
            || pubs
                .values()
                .filter_map(|p| p.last.as_ref())
                .any(|l| l.signatures.get(oracle) == Some(s) && l.agreed == *agreed)
    }

    /// Oracles registered before `start_ms` (the epoch's start: the set is
    /// known before the epoch's protocol runs).
    pub fn registered_at(&self, start_ms: u64) -> BTreeSet<String> {
        self.registered.iter().filter(|(_, r)| r.since_ms < start_ms).map(|(p, _)| p.clone()).collect()
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

    /// Checks each unchecked median table whose named local tables are all
    /// held here, in the versions it names; reports those that do not
    /// follow from them.
    fn check_medians(&mut self, epoch: u64, participants: &BTreeSet<String>, now_ms: u64) {
        let Some(pubs) = self.epochs.get(&epoch) else { return };
        let verdicts: Vec<(String, bool, usize)> = pubs
            .iter()
            .filter(|(_, p)| p.median_ok.is_none() && !p.equivocated)
            .filter_map(|(o, p)| {
                let m = p.median.as_ref()?;
                // Only tables of participants, more than half of them.
                if 2 * m.from.len() <= participants.len() || m.from.keys().any(|f| !participants.contains(f)) {
                    return None;
                }
                let locals: Option<Vec<&Table>> =
                    m.from.iter().map(|(f, h)| pubs.get(f)?.local.as_ref().filter(|t| table_hash(t) == *h)).collect();
                let expected = agree::medians(locals?);
                let bad = m.table.iter().filter(|(n, v)| expected.get(*n) != Some(v)).count()
                    + expected.keys().filter(|n| !m.table.contains_key(*n)).count();
                Some((o.clone(), bad == 0, bad))
            })
            .collect();
        for (o, ok, bad) in verdicts {
            if let Some(p) = self.epochs.get_mut(&epoch).and_then(|p| p.get_mut(&o)) {
                p.median_ok = Some(ok);
            }
            if !ok {
                let detail = format!("{bad} values differ from the medians of the tables it names");
                self.report(&o, Some(epoch), "wrong_median", detail, now_ms);
            }
        }
    }
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
            Write::Final(r) => step_key(me, r.agreed.epoch, Step::Final),
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

/// This oracle's next step in `e`, if any: the write and the step it
/// reaches, or why it waits or stays out.
#[allow(clippy::too_many_arguments)]
fn my_step(
    c: &Collector,
    i: &Inputs<'_>,
    license: &str,
    e: u64,
    current: u64,
    registered: &BTreeSet<String>,
    participants: &BTreeSet<String>,
    since_end: u64,
) -> (Option<Write>, Option<&'static str>, Option<String>) {
    let pubs = c.epochs.get(&e);
    let mine = pubs.and_then(|p| p.get(i.me)).cloned().unwrap_or_default();
    match (&mine.local, &mine.median, &mine.signed) {
        (None, _, _) => match i.observed {
            Some((last, table)) if last == e && e + 1 == current => {
                (Some(Write::Local(Local { epoch: e, table: table.clone() })), Some("local"), None)
            }
            _ => (None, None, Some("this oracle did not observe all of the epoch".to_string())),
        },
        (Some(local), None, _) => {
            let expected: BTreeSet<&String> =
                registered.iter().filter(|o| i.online.contains(*o) && c.eligible(o, e, &i.rules)).collect();
            if since_end < i.phase_ms && !expected.iter().all(|o| participants.contains(*o)) {
                return (None, Some("local"), None);
            }
            let from: BTreeMap<String, String> = participants
                .iter()
                .filter_map(|o| Some((o.clone(), table_hash(pubs?.get(o)?.local.as_ref()?))))
                .collect();
            let table = agree::medians(participants.iter().filter_map(|o| pubs?.get(o)?.local.as_ref()));
            for (node, own, med) in agree::outliers(local, &table, i.rules.outlier_limit) {
                tracing::warn!(epoch = e, %node, own, median = med, "this oracle's value is an outlier");
            }
            (Some(Write::Median(Median { epoch: e, from, table })), Some("median"), None)
        }
        (Some(_), Some(_), None) => {
            // Only medians checked against the tables they name count.
            let checked: Vec<&Table> = participants
                .iter()
                .filter_map(|o| pubs?.get(o).filter(|p| p.median_ok == Some(true))?.median.as_ref().map(|m| &m.table))
                .collect();
            if since_end < 2 * i.phase_ms && checked.len() < participants.len() {
                return (None, Some("median"), None);
            }
            let online = i.online.iter().filter(|o| registered.contains(*o)).count();
            if let Err(why) = agree::participation(participants.len(), registered.len(), online, &i.rules) {
                return (None, Some("median"), Some(why));
            }
            let (start_ms, end_ms) = i.epochs.bounds(e);
            let agreed = Agreed {
                epoch: e,
                start_ms,
                end_ms,
                table: agree::agree(checked, participants.len()),
                registered: registered.clone(),
            };
            let signature = agreed.sign(i.key, license);
            (Some(Write::Signed(Signed { agreed, signature })), Some("signed"), None)
        }
        _ => (None, Some("signed"), None),
    }
}

/// The agreed table most eligible registered oracles signed for `e`, with
/// their signatures, from `sign` and `final` records that match this
/// node's clock and registered set.
fn best_signed(
    c: &Collector,
    i: &Inputs<'_>,
    e: u64,
    registered: &BTreeSet<String>,
) -> Option<(Agreed, BTreeMap<String, OracleSignature>)> {
    let pubs = c.epochs.get(&e)?;
    let (start_ms, end_ms) = i.epochs.bounds(e);
    let fits = |a: &Agreed| a.start_ms == start_ms && a.end_ms == end_ms && a.registered == *registered;
    let counts = |o: &String| registered.contains(o) && c.eligible(o, e, &i.rules);
    let mut groups: BTreeMap<[u8; 32], (Agreed, BTreeMap<String, OracleSignature>)> = BTreeMap::new();
    // One digest per record, not per signature.
    let mut add = |a: &Agreed, sigs: &mut dyn Iterator<Item = (&String, &OracleSignature)>| {
        if !fits(a) {
            return;
        }
        let g = groups.entry(a.digest()).or_insert_with(|| (a.clone(), BTreeMap::new()));
        for (o, s) in sigs {
            if counts(o) && pubs.get(o).is_none_or(|p| !p.equivocated) {
                g.1.entry(o.clone()).or_insert_with(|| s.clone());
            }
        }
    };
    for (o, p) in pubs.iter().filter(|(_, p)| !p.equivocated) {
        if let Some(s) = &p.signed {
            add(&s.agreed, &mut std::iter::once((o, &s.signature)));
        }
        // Signatures carried in final records (the valid ones, kept on
        // receipt).
        if let Some(r) = &p.last {
            add(&r.agreed, &mut r.signatures.iter());
        }
    }
    groups.into_values().max_by_key(|(_, sigs)| sigs.len())
}

/// Decides what to write now; returns the writes and each epoch's state
/// (newest last). What it finds wrong on the way goes to the collector's
/// reports.
pub fn plan(c: &mut Collector, i: &Inputs<'_>) -> (Vec<Write>, Vec<EpochState>) {
    let mut writes = vec![];
    let mut states = vec![];
    let Some(current) = i.epochs.at(i.now_ms) else { return (writes, states) };
    if let Some(license) = i.license {
        if c.registered.get(i.me).is_none_or(|r| r.license != license) {
            writes.push(Write::Registration(Registration { license: license.to_string() }));
        }
    }
    // The last closed epochs: the older ones may still finish late, and
    // the oldest gives the next one's eligibility.
    for e in current.saturating_sub(3)..current {
        let (start, end) = i.epochs.bounds(e);
        let since_end = i.now_ms.saturating_sub(end);
        let registered = c.registered_at(start);
        let participants = c.participants(e, &registered, &i.rules);
        c.check_medians(e, &participants, i.now_ms);
        let (mut step, mut reason) = (None, None);
        if let (Some(license), true) = (i.license, registered.contains(i.me)) {
            if !c.eligible(i.me, e, &i.rules) {
                reason = Some(format!(
                    "this oracle was under {} in epoch {}",
                    i.rules.min_availability,
                    e.saturating_sub(1)
                ));
            } else if !c.finals.contains_key(&e) {
                let (w, s, r) = my_step(c, i, license, e, current, &registered, &participants, since_end);
                writes.extend(w);
                (step, reason) = (s, r);
            }
        }
        let best = best_signed(c, i, e, &registered);
        let signers = best.as_ref().map_or(0, |(_, s)| s.len());
        if let Some((agreed, signatures)) = best.filter(|(a, s)| agree::is_final(s.len(), a.registered.len())) {
            let record = EpochRecord { agreed, signatures };
            match c.finals.get(&e) {
                Some(held) if held.agreed != record.agreed => {
                    if c.conflicts.insert(e) {
                        let detail = format!("two tables reached a majority in epoch {e}");
                        c.report("", Some(e), "conflicting_final", detail, i.now_ms);
                    }
                }
                _ => {
                    if !c.finals.contains_key(&e) {
                        c.final_seen_ms.insert(e, i.now_ms);
                    }
                    c.history.entry(e).or_insert_with(|| Decided::of(&record.agreed));
                    c.finals.insert(e, record.clone());
                }
            }
            // A signer publishes its copy at the first majority, then again
            // only with every possible signature, or once the bounds passed
            // (each copy is checked by every node: not one per signature).
            let mine = c.epochs.get(&e).and_then(|p| p.get(i.me));
            let signed = mine.is_some_and(|p| p.signed.is_some());
            let can_sign = registered.iter().filter(|o| c.eligible(o, e, &i.rules)).count();
            let settled = record.signatures.len() == can_sign || since_end >= 3 * i.phase_ms;
            // A copy never loses a signature it published, nor changes
            // table (that would be a second final record).
            let own = mine.and_then(|p| p.last.as_ref());
            let mut copy = record.clone();
            if let Some(r) = own.filter(|r| r.agreed == record.agreed) {
                copy.signatures.extend(r.signatures.iter().map(|(o, s)| (o.clone(), s.clone())));
            }
            let write = match own {
                None => true,
                Some(r) => r.agreed == copy.agreed && settled && copy.signatures.len() > r.signatures.len(),
            };
            if signed && write && i.license.is_some() && c.finals.get(&e).is_some_and(|f| f.agreed == copy.agreed) {
                writes.push(Write::Final(copy));
            }
        }
        if e + 3 == current {
            // Kept only for the next epoch's eligibility.
            continue;
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
        } else if state == "faulty" && registered.is_empty() {
            reason = Some("no oracle was registered when the epoch began".into());
        } else if state == "faulty" && reason.is_none() {
            reason = Some(format!("{signers} of {} registered oracles signed one table", registered.len()));
        }
        states.push(EpochState {
            epoch: e,
            state,
            participants: participants.len(),
            registered: registered.len(),
            signers: c.finals.get(&e).map_or(signers, |r| r.signatures.len()),
            step,
            reason: if state == "final" { None } else { reason },
            final_after_ms: c.final_seen_ms.get(&e).map(|t| t.saturating_sub(end)),
        });
    }
    (writes, states)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cstore::record::{to_raw, Slot};
    use crate::dauth::license::{issue, key_id, Claims, Class};
    use crate::oracle::sim::{Conduct, Sim, L, PHASE};
    use libp2p_identity::{ed25519, Keypair};

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
        // A "final" record with that one signature is refused and reported.
        let sign = sim.collectors[0].epochs[&1][&sim.ids[0]].signed.clone().unwrap();
        let forged =
            EpochRecord { agreed: sign.agreed.clone(), signatures: [(sim.ids[0].clone(), sign.signature)].into() };
        sim.write(0, &step_key(&sim.ids[0], 1, Step::Final), serde_json::to_value(&forged).unwrap());
        let states = sim.turn();
        assert_eq!(Sim::state_of(&states, 1).state, "faulty");
        let r = sim.collectors[1].reports.back().unwrap();
        assert_eq!((r.kind, r.oracle.as_str()), ("bad_signature", sim.ids[0].as_str()), "{r:?}");
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
    fn a_lone_licensed_oracle_cannot_decide_an_epoch_nor_join_one_late() {
        let mut sim = Sim::new(&[Conduct::Honest; 3], 10);
        sim.turn(); // the three register in epoch 0
        let (rogue, id, license) = sim.outsider();
        // Registered in epoch 0 too, but with its clock set far back only
        // well into epoch 1: it counts from a quarter epoch before arrival.
        sim.now = L + 20_000;
        let reg = serde_json::to_value(Registration { license: license.clone() }).unwrap();
        let rec =
            Record::sign(&rogue, Slot::flat(&registration_key(&id)), Some(to_raw(&reg).unwrap()), Hlc::new(1, 0), None);
        sim.deliver(rec);
        assert!(sim.collectors[0].registered.contains_key(&id));
        assert!(!sim.collectors[0].registered_at(L).contains(&id), "not in epoch 1's set");
        // It signs a table of its own with itself as the only registered
        // oracle, and publishes a "final" record of it: both verify alone.
        sim.now = 2 * L + 10;
        let (start_ms, end_ms) = sim.epochs.bounds(1);
        let agreed = Agreed {
            epoch: 1,
            start_ms,
            end_ms,
            table: sim.truth.keys().map(|k| (k.clone(), 0)).collect(),
            registered: [id.clone()].into(),
        };
        let signature = agreed.sign(&rogue, &license);
        let record = EpochRecord { agreed: agreed.clone(), signatures: [(id.clone(), signature.clone())].into() };
        assert!(record.verify(&sim.trust).is_ok());
        sim.write_as(
            &rogue,
            &step_key(&id, 1, Step::Sign),
            serde_json::to_value(Signed { agreed, signature }).unwrap(),
        );
        sim.write_as(&rogue, &step_key(&id, 1, Step::Final), serde_json::to_value(&record).unwrap());
        // Deleting a registration does not unregister.
        let k0 = sim.keys[0].clone();
        let tomb = Record::sign(&k0, Slot::flat(&registration_key(&sim.ids[0])), None, Hlc::new(sim.now, 1), None);
        sim.deliver(tomb);
        // The honest oracles finalise the truth regardless.
        sim.now = 2 * L + 50;
        for _ in 0..20 {
            sim.turn();
            sim.now += 100;
        }
        for c in &sim.collectors {
            assert_eq!(c.finals[&1].agreed.table, sim.truth);
            assert_eq!(c.finals[&1].agreed.registered.len(), 3);
        }
    }

    #[test]
    fn an_oracle_signing_a_second_table_anywhere_is_an_equivocator() {
        let mut sim = Sim::new(&[Conduct::Honest; 3], 5);
        sim.run_epoch(PHASE);
        let t1 = sim.collectors[0].finals[&1].agreed.clone();
        // Oracles 1 and 2 also sign another table and publish it only in a
        // final copy: it verifies (2 of 3), but each already signed t1.
        let mut t2 = t1.clone();
        let node = t2.table.keys().next().unwrap().clone();
        t2.table.insert(node, 1);
        let sigs = [1, 2].map(|k| (sim.ids[k].clone(), t2.sign(&sim.keys[k], &sim.licenses[k])));
        let copy = EpochRecord { agreed: t2, signatures: sigs.into_iter().collect() };
        assert!(copy.verify(&sim.trust).is_ok());
        sim.write(1, &step_key(&sim.ids[1], 1, Step::Final), serde_json::to_value(&copy).unwrap());
        let c = &sim.collectors[0];
        let flagged: BTreeSet<&str> =
            c.reports.iter().filter(|r| r.kind != "bad_signature").map(|r| r.oracle.as_str()).collect();
        assert!(flagged.contains(sim.ids[2].as_str()), "{:?}", c.reports);
        assert_eq!(c.finals[&1].agreed, t1, "the first final table stands");
    }

    #[test]
    fn a_copy_older_than_the_one_held_is_stale_not_a_second_record() {
        let mut sim = Sim::new(&[Conduct::Honest; 3], 5);
        sim.run_epoch(PHASE);
        let held = sim.collectors[0].finals[&1].clone();
        assert_eq!(held.signatures.len(), 3);
        let mut fewer = held.clone();
        fewer.signatures.remove(&sim.ids[2]);
        let key = step_key(&sim.ids[0], 1, Step::Final);
        let at = |value: &EpochRecord, ms: u64| {
            let v = Some(to_raw(&serde_json::to_value(value).unwrap()).unwrap());
            Record::sign(&sim.keys[0], Slot::flat(&key), v, Hlc::new(sim.now + ms, 0), None)
        };
        let (current, now) = (sim.epochs.at(sim.now).unwrap(), sim.now);
        let mut c = sim.collectors[1].clone();
        // The watch brings oracle 0's first copy (2 signatures) after its
        // second (3): stale, nothing to report.
        c.observe(&at(&held, 20), &sim.trust, current, now);
        assert_eq!(c.observe(&at(&fewer, 10), &sim.trust, current, now), None);
        let p = &c.epochs[&1][&sim.ids[0]];
        assert!(!p.equivocated && p.last.as_ref() == Some(&held), "{p:?}");
        assert!(c.unseen.is_empty(), "{:?}", c.unseen);
        // A newer copy that drops a signature is a second record: reported
        // once, also when read again (a reload).
        let dropped = at(&fewer, 30);
        let r = c.observe(&dropped, &sim.trust, current, now).expect("reported");
        assert_eq!((r.oracle.as_str(), r.kind), (sim.ids[0].as_str(), "conflicting_final"));
        let registered = sim.collectors[1].registered.clone();
        let mut again = Collector { registered, reported: c.reported.clone(), loaded: true, ..Default::default() };
        again.exclude_reported();
        again.observe(&at(&held, 20), &sim.trust, current, now);
        again.observe(&dropped, &sim.trust, current, now);
        assert_eq!(c.unseen.len(), 1);
        assert!(again.unseen.is_empty(), "counted once: {:?}", again.unseen);
        // and still out of the epoch, though CSTORE holds only one copy now
        assert!(again.epochs[&1][&sim.ids[0]].equivocated);
    }

    #[test]
    fn a_median_naming_tables_no_one_holds_is_not_counted() {
        let mut sim = Sim::new(&[Conduct::Honest; 3], 10);
        sim.turn();
        sim.now = 2 * L + 50;
        sim.turn(); // local tables out
        let fake = Keypair::generate_ed25519().public().to_peer_id().to_string();
        let m = Median {
            epoch: 1,
            from: sim.ids.iter().chain([&fake]).map(|o| (o.clone(), "00".repeat(8))).collect(),
            table: sim.truth.keys().map(|k| (k.clone(), 1)).collect(),
        };
        sim.write(2, &step_key(&sim.ids[2], 1, Step::Median), serde_json::to_value(&m).unwrap());
        // The others wait for it to the medians' bound, then go on without.
        for _ in 0..(2 * PHASE / 100 + 5) {
            sim.turn();
            sim.now += 100;
        }
        let c = &sim.collectors[0];
        assert_eq!(c.epochs[&1][&sim.ids[2]].median_ok, None, "unchecked, not counted");
        assert_eq!(c.finals[&1].agreed.table, sim.truth);
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
