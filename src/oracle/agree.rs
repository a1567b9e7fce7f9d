//! OracleSync's agreement, pure: medians, the agreed table, participation
//! and finality, and the epoch record anyone can verify
//! (docs/oracle.md).
//!
//! 1. Each oracle's *local table*: node → availability 0..255 as it saw
//!    the node's heartbeats in the epoch.
//! 2. Each oracle's *median table*: per node, the median of the local
//!    tables it holds, for nodes that more than half of those tables
//!    report (fewer reports: the node is dropped).
//! 3. The *agreed table*: per node, the most frequent median, kept only if
//!    more than half of the participating oracles hold it.
//! 4. Each oracle signs `(epoch, bounds, agreed table, registered
//!    oracles)`; the record is final with signatures of more than half of
//!    the registered oracles, so two different records for one epoch can
//!    never both be final (any two majorities share an oracle, and an
//!    oracle signing twice is seen: [`super::sync`]).
//!
//! Participation (Ratio1): only oracles at or above 230/255 in the previous
//! final record take part, and an oracle signs only if the participants are
//! more than 30% of the registered and more than 40% of the online oracles.

use crate::dauth::license::TrustStore;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use libp2p_identity::{Keypair, PeerId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Node (PeerId) → availability 0..255.
pub type Table = BTreeMap<String, u8>;

/// Most registered oracles a record may name (bounds a verifier's work).
pub const MAX_ORACLES: usize = 1_024;

/// Ratio1's participation rules, each configurable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Least availability in the previous final record to take part
    /// (Ratio1: 230, i.e. 90%).
    pub min_availability: u8,
    /// An oracle whose own value for a node is further than this from
    /// the median is an outlier (Ratio1: 50).
    pub outlier_limit: u8,
    /// Participants must be more than this many per mille of the
    /// registered oracles (Ratio1: 300).
    pub registered_permille: u32,
    /// … and more than this many per mille of the online ones (Ratio1: 400).
    pub online_permille: u32,
}

impl Default for Rules {
    fn default() -> Self {
        Self { min_availability: 230, outlier_limit: 50, registered_permille: 300, online_permille: 400 }
    }
}

/// The median of `values`: the middle one, or for an even count the mean
/// of the two middle ones rounded half to even (Python's
/// `round(statistics.median(v))`). `None` when empty.
pub fn median(values: &mut [u8]) -> Option<u8> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let n = values.len();
    if n % 2 == 1 {
        return Some(values[n / 2]);
    }
    let sum = values[n / 2 - 1] as u16 + values[n / 2] as u16;
    let half = sum / 2;
    // x.5 goes to the even neighbour.
    Some(if sum % 2 == 1 && half % 2 == 1 { half + 1 } else { half } as u8)
}

/// Step 2: per node, the median over `locals` (oracle → local table),
/// for nodes more than half of the tables report.
pub fn medians<'a>(locals: impl IntoIterator<Item = &'a Table>) -> Table {
    let mut values: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    let mut tables = 0usize;
    for t in locals {
        tables += 1;
        for (node, v) in t {
            values.entry(node).or_default().push(*v);
        }
    }
    values
        .into_iter()
        .filter(|(_, v)| 2 * v.len() > tables)
        .filter_map(|(node, mut v)| Some((node.to_string(), median(&mut v)?)))
        .collect()
}

/// Step 3: per node, the most frequent median among `medians`, kept only
/// if more than half of `participants` hold it.
pub fn agree<'a>(medians: impl IntoIterator<Item = &'a Table>, participants: usize) -> Table {
    let mut counts: BTreeMap<&str, BTreeMap<u8, usize>> = BTreeMap::new();
    for t in medians {
        for (node, v) in t {
            *counts.entry(node).or_default().entry(*v).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .filter_map(|(node, c)| {
            // Two values cannot both exceed half: the first that does wins.
            let (v, _) = c.into_iter().find(|(_, n)| 2 * n > participants)?;
            Some((node.to_string(), v))
        })
        .collect()
}

/// Nodes for which `local` is further than `limit` from `medians`:
/// (node, local value, median).
pub fn outliers(local: &Table, medians: &Table, limit: u8) -> Vec<(String, u8, u8)> {
    local
        .iter()
        .filter_map(|(node, &v)| {
            let m = *medians.get(node)?;
            (v.abs_diff(m) > limit).then(|| (node.clone(), v, m))
        })
        .collect()
}

/// Whether `participants` oracles may agree for the network: more than
/// the rules' shares of the `registered` and `online` oracles.
pub fn participation(participants: usize, registered: usize, online: usize, rules: &Rules) -> Result<(), String> {
    let enough = |of: usize, permille: u32| participants as u128 * 1000 > of as u128 * permille as u128;
    if participants == 0 {
        return Err("no oracle took part".into());
    }
    if !enough(registered, rules.registered_permille) {
        return Err(format!(
            "{participants} participating of {registered} registered oracles is not more than {}‰",
            rules.registered_permille
        ));
    }
    if !enough(online, rules.online_permille) {
        return Err(format!(
            "{participants} participating of {online} online oracles is not more than {}‰",
            rules.online_permille
        ));
    }
    Ok(())
}

/// Whether `signers` of `registered` oracles make a record final.
pub fn is_final(signers: usize, registered: usize) -> bool {
    registered > 0 && 2 * signers > registered
}

/// What every oracle signs in step 4.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Agreed {
    pub epoch: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub table: Table,
    /// The registered oracles the signer counted (finality is a majority
    /// of these).
    pub registered: BTreeSet<String>,
}

impl Agreed {
    /// The bytes signed: a domain tag, then every field with its length
    /// or count first (no two different values hash the same bytes).
    pub fn digest(&self) -> [u8; 32] {
        fn put(h: &mut Sha256, s: &str) {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        }
        let mut h = Sha256::new();
        put(&mut h, "ratio1/oracle/agreed/2");
        for n in [self.epoch, self.start_ms, self.end_ms, self.table.len() as u64] {
            h.update(n.to_be_bytes());
        }
        for (node, v) in &self.table {
            put(&mut h, node);
            h.update([*v]);
        }
        h.update((self.registered.len() as u64).to_be_bytes());
        for o in &self.registered {
            put(&mut h, o);
        }
        h.finalize().into()
    }

    /// Short hex of the digest (logs, status).
    pub fn id(&self) -> String {
        self.digest()[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// This oracle's signature, with its license (the proof it is one).
    pub fn sign(&self, key: &Keypair, license: &str) -> OracleSignature {
        let sig = key.sign(&self.digest()).expect("ed25519 signs");
        OracleSignature { sig: B64.encode(sig), license: license.to_string() }
    }
}

/// One oracle's signature of an [`Agreed`] table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OracleSignature {
    pub sig: String,
    /// The oracle's license token (issuer-signed, bound to its PeerId).
    pub license: String,
}

/// A final epoch: the agreed table and the signatures that make it so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochRecord {
    #[serde(flatten)]
    pub agreed: Agreed,
    /// Oracle PeerId → its signature of `agreed`.
    pub signatures: BTreeMap<String, OracleSignature>,
}

/// What [`EpochRecord::verify`] found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// Valid signatures of registered oracles.
    pub signers: usize,
    pub registered: usize,
    /// Signatures not counted, and why (e.g. a license revoked since).
    pub ignored: Vec<(String, String)>,
}

/// Most nodes a record's table may hold (bounds a verifier's work).
pub const MAX_TABLE: usize = 65_536;

/// Checks one oracle's signature of `agreed` and that its license, from
/// a trusted issuer and valid at the epoch's end, may run an oracle.
pub fn check_signature(agreed: &Agreed, oracle: &str, s: &OracleSignature, trust: &TrustStore) -> Result<(), String> {
    let peer: PeerId = oracle.parse().map_err(|_| format!("{oracle} is not a PeerId"))?;
    let key = crate::cstore::record::public_key_of(&peer).ok_or_else(|| format!("{oracle} has no inline key"))?;
    let sig = B64.decode(&s.sig).map_err(|_| format!("signature of {oracle} is not base64"))?;
    if !key.verify(&agreed.digest(), &sig) {
        return Err(format!("signature of {oracle} does not match the table"));
    }
    let claims = trust
        .verify(&s.license, oracle, (agreed.end_ms / 1000) as i64)
        .map_err(|e| format!("license of {oracle}: {e}"))?;
    if !claims.class.may_be_oracle() {
        return Err(format!("{oracle} holds an {} license, which cannot run an oracle", claims.class));
    }
    Ok(())
}

impl EpochRecord {
    /// Every signature checked, every signer a registered oracle with a
    /// license from an issuer `trust` holds, and more than half of the
    /// registered oracles signing. Needs nothing from the node that served
    /// the record.
    pub fn verify(&self, trust: &TrustStore) -> Result<Verified, String> {
        self.verify_with(trust, &|_, _| false)
    }

    /// As [`EpochRecord::verify`], not checking again the signatures
    /// `known` says were checked already (a node holding many copies of
    /// one record checks each signature once).
    pub fn verify_with(
        &self,
        trust: &TrustStore,
        known: &dyn Fn(&str, &OracleSignature) -> bool,
    ) -> Result<Verified, String> {
        let a = &self.agreed;
        if a.registered.is_empty() || a.registered.len() > MAX_ORACLES {
            return Err(format!("the record names {} registered oracles (1..{MAX_ORACLES})", a.registered.len()));
        }
        if a.table.len() > MAX_TABLE || self.signatures.len() > a.registered.len() {
            return Err(format!("the record holds {} nodes and {} signatures", a.table.len(), self.signatures.len()));
        }
        if a.end_ms <= a.start_ms {
            return Err("the epoch's end is not after its start".into());
        }
        if let Some(bad) = a.table.keys().chain(&a.registered).find(|p| p.parse::<PeerId>().is_err()) {
            return Err(format!("{bad:?} is not a PeerId"));
        }
        let mut v = Verified { signers: 0, registered: a.registered.len(), ignored: vec![] };
        for (oracle, s) in &self.signatures {
            let ok = if a.registered.contains(oracle) {
                if known(oracle, s) {
                    Ok(())
                } else {
                    check_signature(a, oracle, s, trust)
                }
            } else {
                Err(format!("{oracle} signed but is not among the registered oracles"))
            };
            match ok {
                Ok(()) => v.signers += 1,
                Err(why) => v.ignored.push((oracle.clone(), why)),
            }
        }
        if !is_final(v.signers, v.registered) {
            let why: Vec<&str> = v.ignored.iter().map(|(_, w)| w.as_str()).collect();
            return Err(format!(
                "{} of {} registered oracles signed validly: more than half are needed{}",
                v.signers,
                v.registered,
                if why.is_empty() { String::new() } else { format!(" (not counted: {})", why.join("; ")) }
            ));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dauth::license::{issue, key_id, Claims, Class};
    use libp2p_identity::ed25519;

    fn t(pairs: &[(&str, u8)]) -> Table {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn median_is_the_middle_or_the_even_rounded_mean() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [7]), Some(7));
        assert_eq!(median(&mut [9, 1, 5]), Some(5));
        assert_eq!(median(&mut [10, 20]), Some(15));
        // 12.5 → 12, 13.5 → 14, 254.5 → 254 (half to even).
        assert_eq!(median(&mut [12, 13]), Some(12));
        assert_eq!(median(&mut [13, 14]), Some(14));
        assert_eq!(median(&mut [254, 255]), Some(254));
        assert_eq!(median(&mut [255, 255, 0, 0]), Some(128));
    }

    /// `honest` oracles see the true table, `liars` report 0 for every node
    /// (or 255 when `high`): the agreed table is the truth.
    fn run(honest: usize, liars: usize, high: bool) -> Table {
        let truth = t(&[("a", 255), ("b", 128), ("c", 3), ("d", 240)]);
        let lie: Table = truth.keys().map(|k| (k.clone(), if high { 255 } else { 0 })).collect();
        let locals: Vec<Table> =
            std::iter::repeat_n(truth.clone(), honest).chain(std::iter::repeat_n(lie.clone(), liars)).collect();
        let n = honest + liars;
        // Every oracle receives every local table; the liars also lie in
        // their median tables.
        let mut meds: Vec<Table> = (0..honest).map(|_| medians(&locals)).collect();
        meds.extend(std::iter::repeat_n(lie, liars));
        agree(&meds, n)
    }

    #[test]
    fn the_truth_wins_with_a_minority_of_lying_oracles() {
        let truth = t(&[("a", 255), ("b", 128), ("c", 3), ("d", 240)]);
        for (honest, liars) in [(3, 0), (2, 1), (5, 0), (4, 1), (3, 2), (7, 0), (6, 1), (5, 2)] {
            for high in [false, true] {
                assert_eq!(run(honest, liars, high), truth, "{honest} honest, {liars} lying (high: {high})");
            }
        }
    }

    #[test]
    fn a_lying_majority_is_not_outvoted_but_no_split_is_accepted() {
        // 2 honest of 5: the liars' medians hold for every node.
        assert_eq!(run(2, 3, false).values().copied().collect::<Vec<_>>(), vec![0, 0, 0, 0]);
        // Three oracles each with a different median: none above half.
        let meds = [t(&[("a", 1)]), t(&[("a", 2)]), t(&[("a", 3)])];
        assert!(agree(&meds, 3).is_empty());
        // Two of three agree: accepted; two of five: not.
        let meds = [t(&[("a", 9)]), t(&[("a", 9)]), t(&[("a", 3)])];
        assert_eq!(agree(&meds, 3), t(&[("a", 9)]));
        assert!(agree(&meds, 5).is_empty());
    }

    #[test]
    fn a_node_too_few_oracles_report_is_dropped() {
        let locals = [t(&[("a", 200), ("b", 100)]), t(&[("a", 210)]), t(&[("a", 220)])];
        assert_eq!(medians(&locals), t(&[("a", 210)]));
        let locals = [t(&[("a", 200), ("b", 100)]), t(&[("a", 210), ("b", 110)]), t(&[("a", 220)])];
        assert_eq!(medians(&locals), t(&[("a", 210), ("b", 105)]));
    }

    #[test]
    fn outliers_are_further_than_the_limit() {
        let med = t(&[("a", 200), ("b", 100)]);
        assert_eq!(outliers(&t(&[("a", 150), ("b", 151)]), &med, 50), vec![("b".into(), 151, 100)]);
        assert!(outliers(&t(&[("a", 250), ("z", 0)]), &med, 50).is_empty());
    }

    #[test]
    fn participation_follows_ratio1s_shares() {
        let r = Rules::default();
        // 10 registered, 10 online: 4 participants are > 30% but not > 40%.
        assert!(participation(4, 10, 10, &r).unwrap_err().contains("online"));
        assert!(participation(5, 10, 10, &r).is_ok());
        assert!(participation(3, 10, 5, &r).unwrap_err().contains("registered"));
        assert!(participation(4, 10, 5, &r).is_ok());
        assert!(participation(0, 0, 0, &r).is_err());
        assert!(is_final(2, 3) && !is_final(1, 3) && !is_final(2, 4) && is_final(3, 4) && !is_final(0, 0));
    }

    struct Oracle {
        key: Keypair,
        id: String,
        license: String,
    }

    fn oracles(issuer: &ed25519::Keypair, class: Class, n: usize) -> Vec<Oracle> {
        (0..n)
            .map(|i| {
                let key = Keypair::generate_ed25519();
                let id = key.public().to_peer_id().to_string();
                let claims = Claims {
                    id: format!("o{i}"),
                    class,
                    peer: id.clone(),
                    iat: 0,
                    exp: 4_000_000_000,
                    iss: key_id(&issuer.public()),
                };
                Oracle { license: issue(issuer, &claims), key, id }
            })
            .collect()
    }

    /// Two nodes' PeerIds, fixed for the whole test binary.
    fn nodes() -> &'static [String; 2] {
        static N: std::sync::OnceLock<[String; 2]> = std::sync::OnceLock::new();
        N.get_or_init(|| [0, 1].map(|_| Keypair::generate_ed25519().public().to_peer_id().to_string()))
    }

    fn record(os: &[Oracle], signers: usize) -> EpochRecord {
        let [a, b] = nodes();
        let agreed = Agreed {
            epoch: 7,
            start_ms: 70_000,
            end_ms: 80_000,
            table: t(&[(a, 255), (b, 12)]),
            registered: os.iter().map(|o| o.id.clone()).collect(),
        };
        let signatures = os[..signers].iter().map(|o| (o.id.clone(), agreed.sign(&o.key, &o.license))).collect();
        EpochRecord { agreed, signatures }
    }

    #[test]
    fn a_record_verifies_only_with_a_licensed_majority_signing_that_table() {
        let issuer = ed25519::Keypair::generate();
        let trust = TrustStore::new([issuer.public()], []);
        let os = oracles(&issuer, Class::Mnd, 5);
        assert_eq!(record(&os, 3).verify(&trust), Ok(Verified { signers: 3, registered: 5, ignored: vec![] }));
        assert!(record(&os, 2).verify(&trust).unwrap_err().contains("more than half"));
        // Round trip through JSON (what CSTORE carries).
        let r: EpochRecord = serde_json::from_str(&serde_json::to_string(&record(&os, 4)).unwrap()).unwrap();
        assert!(r.verify(&trust).is_ok());

        // A changed value breaks every signature.
        let mut forged = record(&os, 3);
        forged.agreed.table.insert(nodes()[1].clone(), 255);
        assert!(forged.verify(&trust).unwrap_err().contains("does not match"));
        // Shrinking the registered set to make two signers a majority, too.
        let mut shrunk = record(&os, 2);
        shrunk.agreed.registered = os[..3].iter().map(|o| o.id.clone()).collect();
        assert!(shrunk.verify(&trust).unwrap_err().contains("does not match"));
        // A signer outside the registered set.
        let outsider = oracles(&issuer, Class::Mnd, 1).remove(0);
        let mut r = record(&os, 3);
        r.signatures.insert(outsider.id.clone(), r.agreed.sign(&outsider.key, &outsider.license));
        let v = r.verify(&trust).unwrap();
        assert_eq!(v.signers, 3, "not counted");
        assert!(v.ignored[0].1.contains("not among"));
        let mut r = record(&os, 2);
        r.signatures.insert(outsider.id.clone(), r.agreed.sign(&outsider.key, &outsider.license));
        assert!(r.verify(&trust).unwrap_err().contains("not among"), "an outsider does not make a majority");
        // One oracle's signature under another's name: not counted.
        let mut r = record(&os, 2);
        let stolen = r.signatures[&os[0].id].clone();
        r.signatures.insert(os[3].id.clone(), stolen);
        assert!(r.verify(&trust).unwrap_err().contains("does not match"));
        // A license revoked since leaves the other signatures standing.
        let revoked = TrustStore::new([issuer.public()], [(key_id(&issuer.public()), "o0".to_string())]);
        let v = record(&os, 4).verify(&revoked).unwrap();
        assert_eq!((v.signers, v.ignored.len()), (3, 1), "{v:?}");
        assert!(record(&os, 3).verify(&revoked).is_err());
        // ND licenses cannot run oracles; an untrusted issuer is no issuer.
        let nds = oracles(&issuer, Class::Nd, 3);
        assert!(record(&nds, 3).verify(&trust).unwrap_err().contains("cannot run an oracle"));
        let other = TrustStore::new([ed25519::Keypair::generate().public()], []);
        assert!(record(&os, 3).verify(&other).unwrap_err().contains("license"));
    }

    #[test]
    fn no_two_different_records_sign_the_same_bytes() {
        let issuer = ed25519::Keypair::generate();
        let trust = TrustStore::new([issuer.public()], []);
        let os = oracles(&issuer, Class::Mnd, 5);
        let r = record(&os, 3);
        // Two nodes merged into one key, or oracles merged into one name,
        // used to hash as the same lines.
        let [a, b] = nodes();
        let mut merged = r.clone();
        merged.agreed.table = t(&[(&format!("{a}=255\n{b}"), 12)]);
        assert_ne!(merged.agreed.digest(), r.agreed.digest());
        assert!(merged.verify(&trust).unwrap_err().contains("not a PeerId"));
        let mut squeezed = record(&os, 2);
        let ids: Vec<&String> = squeezed.agreed.registered.iter().collect();
        let tail = format!("{}\n{}\n{}", ids[2], ids[3], ids[4]);
        squeezed.agreed.registered = [ids[0].clone(), ids[1].clone(), tail].into();
        assert!(squeezed.verify(&trust).is_err());
        // Every field counts.
        let mut moved = r.clone();
        moved.agreed.end_ms += 1;
        assert_ne!(moved.agreed.digest(), r.agreed.digest());
    }
}
