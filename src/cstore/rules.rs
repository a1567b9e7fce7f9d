//! Who may write what (docs/protocols.md, "CSTORE"). Every receiver checks
//! these rules, and the signature, before applying a record; a record that
//! breaks them is dropped, counted and never relayed.
//!
//! - `node/<peerId>/…`: only `<peerId>` writes (its own namespace: its
//!   state, its dAuth log).
//! - `deeploy/<peerId>/…`: only `<peerId>` writes (its Deeploy profile,
//!   the intents it places as an origin, its reports as a target).
//! - `r1fs/<peerId>/…`: only `<peerId>` writes (that it runs R1FS, the
//!   roots it holds, the replication its R1Models ask for).
//! - `oracle/<peerId>/…`: only `<peerId>` writes (its OracleSync
//!   registration and per-epoch tables; src/oracle/sync.rs).
//! - `ledger/<peerId>/…`: only `<peerId>` writes (the reward claims it
//!   makes as a license's node, its verdicts on claims as an oracle;
//!   src/economy/ledger.rs).
//! - `edil/<peerId>/…`: only `<peerId>` writes (the datasets it holds, the
//!   rounds and keys it publishes as a model's owner, its encrypted
//!   updates as a participant, its sums as an aggregator; src/edil).
//! - `revocation/<issuer key id>/<license id>`: anyone may carry it, but
//!   the value must hold `proof`, a revocation of exactly that license
//!   signed by that issuer, one the receiver trusts; never deleted.
//! - `license/<issuer key id>/<license id>/<at ms>`: likewise, `proof`
//!   being that issuer's registry statement about that license made at
//!   that time (src/economy/registry.rs); never deleted.
//! - nothing else is writable.

use super::record::{Invalid, Record};
use crate::dauth::license::TrustStore;
use libp2p_identity::PeerId;

/// Prefix of every node's own namespace.
pub const NODE_PREFIX: &str = "node/";
/// Prefix of each node's Deeploy records (owned like `node/`).
pub const DEEPLOY_PREFIX: &str = "deeploy/";
/// Prefix of each node's R1FS records (owned like `node/`).
pub const R1FS_PREFIX: &str = "r1fs/";
/// Prefix of each oracle's OracleSync records (owned like `node/`).
pub const ORACLE_PREFIX: &str = "oracle/";
/// Prefix of each node's ledger records (owned like `node/`).
pub const LEDGER_PREFIX: &str = "ledger/";
/// Prefix of each node's EDIL records (owned like `node/`).
pub const EDIL_PREFIX: &str = "edil/";
/// Prefix of issuer-signed license revocations.
pub const REVOCATION_PREFIX: &str = "revocation/";
/// Prefix of issuer-signed license registry statements.
pub const LICENSE_PREFIX: &str = "license/";

/// The namespace a node owns.
pub fn own_prefix(peer: &PeerId) -> String {
    format!("{NODE_PREFIX}{peer}/")
}

/// Key of the revocation of license `id` by issuer `iss`.
pub fn revocation_key(iss: &str, id: &str) -> String {
    format!("{REVOCATION_PREFIX}{iss}/{id}")
}

/// Key of issuer `iss`'s statement about license `id` made at `at_ms`.
pub fn statement_key(iss: &str, id: &str, at_ms: u64) -> String {
    format!("{LICENSE_PREFIX}{iss}/{id}/{at_ms}")
}

/// The `proof` of a record anyone may carry: flat, lasting, not deleted,
/// by an issuer this node trusts.
fn carried_proof<'a>(
    rec: &Record,
    value: &'a serde_json::Value,
    iss: &str,
    trust: &TrustStore,
) -> Result<&'a str, Invalid> {
    if rec.slot.field.is_some() || rec.expires.is_some() {
        return Err(Invalid::NotOwner);
    }
    let proof = value.get("proof").and_then(|p| p.as_str()).ok_or(Invalid::BadProof)?;
    if !trust.trusts(iss) {
        return Err(Invalid::UnknownIssuer);
    }
    Ok(proof)
}

/// Checks a record (already signature-verified, written by `writer`)
/// against the rules.
pub fn check(rec: &Record, writer: &PeerId, trust: &TrustStore) -> Result<(), Invalid> {
    let key = rec.slot.key.as_str();
    let owned = [NODE_PREFIX, DEEPLOY_PREFIX, R1FS_PREFIX, ORACLE_PREFIX, LEDGER_PREFIX, EDIL_PREFIX]
        .iter()
        .find_map(|p| key.strip_prefix(p));
    if let Some(rest) = owned {
        let (owner, tail) = rest.split_once('/').ok_or(Invalid::NotOwner)?;
        if tail.is_empty() || owner != writer.to_string() {
            return Err(Invalid::NotOwner);
        }
        // An oracle's accept of a claim and its PoAI proposal are votes,
        // and a job is an escrow: they last, and are not taken back by
        // deleting them.
        if key.starts_with(LEDGER_PREFIX)
            && ["accept/", "poai/", "job/"].iter().any(|k| tail.starts_with(k))
            && (rec.expires.is_some() || rec.value.is_none())
        {
            return Err(Invalid::NotOwner);
        }
        return Ok(());
    }
    if let Some(rest) = key.strip_prefix(REVOCATION_PREFIX) {
        let (iss, id) = rest.split_once('/').ok_or(Invalid::NotOwner)?;
        let value = rec.value_json();
        let claims = trust.verify_revocation(carried_proof(rec, &value, iss, trust)?).map_err(|_| Invalid::BadProof)?;
        if claims.iss != iss || claims.id != id {
            return Err(Invalid::BadProof);
        }
        return Ok(());
    }
    if let Some(rest) = key.strip_prefix(LICENSE_PREFIX) {
        let mut parts = rest.splitn(3, '/');
        let (Some(iss), Some(id), Some(at)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Invalid::NotOwner);
        };
        let value = rec.value_json();
        let s = trust.verify_statement(carried_proof(rec, &value, iss, trust)?).map_err(|_| Invalid::BadProof)?;
        if s.iss != iss || s.id != id || at != s.at.to_string() {
            return Err(Invalid::BadProof);
        }
        return Ok(());
    }
    Err(Invalid::NotOwner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cstore::record::{parse_value, Hlc, Slot};
    use crate::dauth::license::{issue_revocation, key_id};
    use libp2p_identity::{ed25519, Keypair};

    #[test]
    fn a_node_writes_only_its_own_namespace() {
        let trust = TrustStore::default();
        let me = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519().public().to_peer_id();
        let peer = me.public().to_peer_id();
        let rec = |key: String, field: Option<&str>| {
            let slot = Slot { key, field: field.map(String::from) };
            Record::sign(&me, slot, Some(parse_value("1").unwrap()), Hlc::new(1, 0), None)
        };
        assert!(check(&rec(format!("node/{peer}/state"), None), &peer, &trust).is_ok());
        assert!(check(&rec(format!("node/{peer}/apps"), Some("x")), &peer, &trust).is_ok());
        assert!(check(&rec(format!("deeploy/{peer}/intent/x"), None), &peer, &trust).is_ok());
        assert!(check(&rec(format!("edil/{peer}/update/m/1"), None), &peer, &trust).is_ok());
        assert_eq!(check(&rec(format!("edil/{other}/update/m/1"), None), &peer, &trust), Err(Invalid::NotOwner));
        // Accepts are votes: no TTL, no deletion.
        let accept = format!("ledger/{peer}/accept/i/a/3");
        assert!(check(&rec(accept.clone(), None), &peer, &trust).is_ok());
        let mut gone = rec(accept.clone(), None);
        gone.value = None;
        assert_eq!(check(&gone, &peer, &trust), Err(Invalid::NotOwner));
        let mut ttl = rec(accept, None);
        ttl.expires = Some(1);
        assert_eq!(check(&ttl, &peer, &trust), Err(Invalid::NotOwner));
        // So are PoAI proposals and escrowed jobs.
        for key in [format!("ledger/{peer}/poai/3"), format!("ledger/{peer}/job/uid-1")] {
            assert!(check(&rec(key.clone(), None), &peer, &trust).is_ok());
            let mut gone = rec(key, None);
            gone.value = None;
            assert_eq!(check(&gone, &peer, &trust), Err(Invalid::NotOwner));
        }
        for key in [
            format!("node/{other}/state"),
            format!("node/{peer}/"),
            format!("node/{peer}"),
            "intent/x".into(),
            format!("deeploy/{other}/intent/x"),
            format!("deeploy/{peer}"),
        ] {
            assert_eq!(check(&rec(key.clone(), None), &peer, &trust), Err(Invalid::NotOwner), "{key}");
        }
    }

    #[test]
    fn revocations_need_the_issuers_proof_of_exactly_that_license() {
        let issuer = ed25519::Keypair::generate();
        let trust = TrustStore::new([issuer.public()], []);
        let iss = key_id(&issuer.public());
        let carrier = Keypair::generate_ed25519();
        let peer = carrier.public().to_peer_id();
        let rec = |key: String, proof: &str| {
            let v = serde_json::json!({ "proof": proof });
            Record::sign(&carrier, Slot::flat(&key), Some(parse_value(&v.to_string()).unwrap()), Hlc::new(1, 0), None)
        };
        let proof = issue_revocation(&issuer, "nd-7", 100);
        assert!(check(&rec(revocation_key(&iss, "nd-7"), &proof), &peer, &trust).is_ok());
        assert_eq!(check(&rec(revocation_key(&iss, "nd-8"), &proof), &peer, &trust), Err(Invalid::BadProof));
        let rogue = issue_revocation(&ed25519::Keypair::generate(), "nd-7", 100);
        assert_eq!(check(&rec(revocation_key(&iss, "nd-7"), &rogue), &peer, &trust), Err(Invalid::BadProof));
        let foreign = ed25519::Keypair::generate();
        let theirs = issue_revocation(&foreign, "nd-7", 100);
        assert_eq!(
            check(&rec(revocation_key(&key_id(&foreign.public()), "nd-7"), &theirs), &peer, &trust),
            Err(Invalid::UnknownIssuer)
        );
        // Registry statements: the key names the issuer, license and time
        // the statement signs.
        use crate::dauth::license::{issue_statement, Action, Statement};
        let s = Statement {
            iss: iss.clone(),
            id: "nd-7".into(),
            action: Action::Ban,
            peer: None,
            class: None,
            assigned: None,
            at: 5,
        };
        let st = issue_statement(&issuer, &s);
        assert!(check(&rec(statement_key(&iss, "nd-7", 5), &st), &peer, &trust).is_ok());
        for key in [statement_key(&iss, "nd-7", 6), statement_key(&iss, "nd-8", 5), format!("license/{iss}/nd-7")] {
            assert!(check(&rec(key.clone(), &st), &peer, &trust).is_err(), "{key}");
        }
        assert_eq!(check(&rec(statement_key(&iss, "nd-7", 5), &proof), &peer, &trust), Err(Invalid::BadProof));
        let forged = issue_statement(&ed25519::Keypair::generate(), &s);
        assert_eq!(check(&rec(statement_key(&iss, "nd-7", 5), &forged), &peer, &trust), Err(Invalid::BadProof));
        let mut tomb = rec(revocation_key(&iss, "nd-7"), &proof);
        tomb.value = None;
        assert_eq!(check(&tomb, &peer, &trust), Err(Invalid::BadProof));
    }
}
