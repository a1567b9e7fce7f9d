//! Licenses: signed statements that bind a license to one node (PeerId).
//!
//! Token format, version 1: `r1l1.<payload>.<signature>`, both parts
//! base64url without padding. The payload is the JSON of [`Claims`] (fields in
//! declaration order, so the bytes are canonical for a given license); the
//! signature is ed25519 by the issuer over the payload bytes exactly as they
//! appear in the token. Issuers are named by a key id: the first 16 hex
//! digits of SHA-256 over the 32-byte public key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use libp2p_identity::ed25519;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

const PREFIX: &str = "r1l1";

/// License classes of the Ratio1 network.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Class {
    /// Node deed: a worker node.
    #[serde(rename = "ND")]
    #[value(name = "ND")]
    Nd,
    /// Master node deed: may run an oracle.
    #[serde(rename = "MND")]
    #[value(name = "MND")]
    Mnd,
    /// Genesis node deed: may run an oracle.
    #[serde(rename = "GND")]
    #[value(name = "GND")]
    Gnd,
}

impl Class {
    /// Whether a node holding this class may serve as an oracle.
    pub fn may_be_oracle(self) -> bool {
        matches!(self, Class::Mnd | Class::Gnd)
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Class::Nd => "ND",
            Class::Mnd => "MND",
            Class::Gnd => "GND",
        })
    }
}

/// What a license states.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// License id, unique per issuer.
    pub id: String,
    pub class: Class,
    /// The PeerId the license is bound to.
    pub peer: String,
    /// Issue time, unix seconds.
    pub iat: i64,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Key id of the issuer.
    pub iss: String,
}

/// Why a license is not valid. Each maps to a metric label and a condition reason.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LicenseError {
    #[error("no license presented")]
    Missing,
    #[error("license token is malformed: {0}")]
    Malformed(&'static str),
    #[error("license issuer {0} is not trusted")]
    UnknownIssuer(String),
    #[error("license signature does not verify")]
    BadSignature,
    #[error("license is bound to {bound}, not to {actual}")]
    WrongPeer { bound: String, actual: String },
    #[error("license expired at {0} (unix seconds)")]
    Expired(i64),
    #[error("license is not valid before {0} (unix seconds)")]
    NotYetValid(i64),
    #[error("license {0} is revoked")]
    Revoked(String),
}

impl LicenseError {
    /// Bounded label for metrics and condition reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            LicenseError::Missing => "LicenseMissing",
            LicenseError::Malformed(_) => "LicenseMalformed",
            LicenseError::UnknownIssuer(_) => "UnknownIssuer",
            LicenseError::BadSignature => "BadSignature",
            LicenseError::WrongPeer { .. } => "WrongPeer",
            LicenseError::Expired(_) => "LicenseExpired",
            LicenseError::NotYetValid(_) => "LicenseNotYetValid",
            LicenseError::Revoked(_) => "LicenseRevoked",
        }
    }
}

/// Unix seconds as RFC 3339, for messages.
pub fn show_time(unix: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(unix).map(|t| t.to_string()).unwrap_or_else(|_| unix.to_string())
}

/// Key id of an issuer public key.
pub fn key_id(pk: &ed25519::PublicKey) -> String {
    Sha256::digest(pk.to_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// An issuer public key as text: base64url of the 32 bytes.
pub fn encode_public(pk: &ed25519::PublicKey) -> String {
    B64.encode(pk.to_bytes())
}

pub fn decode_public(s: &str) -> Result<ed25519::PublicKey, String> {
    let bytes = B64.decode(s.trim()).map_err(|_| format!("issuer key {s:?} is not base64url"))?;
    ed25519::PublicKey::try_from_bytes(&bytes).map_err(|_| format!("issuer key {s:?} is not an ed25519 public key"))
}

/// An issuer secret key as text: base64url of the 32-byte secret.
pub fn encode_secret(kp: &ed25519::Keypair) -> String {
    B64.encode(kp.secret().as_ref())
}

pub fn decode_secret(s: &str) -> Result<ed25519::Keypair, String> {
    let mut bytes = B64.decode(s.trim()).map_err(|_| "issuer secret key is not base64url".to_string())?;
    let sk =
        ed25519::SecretKey::try_from_bytes(&mut bytes).map_err(|_| "issuer secret key is not 32 bytes".to_string())?;
    Ok(ed25519::Keypair::from(sk))
}

/// Signs claims into a token.
pub fn issue(issuer: &ed25519::Keypair, claims: &Claims) -> String {
    sign_token(PREFIX, issuer, claims)
}

/// Splits a `<prefix>.<payload>.<signature>` token: the payload as it
/// appears (what was signed), decoded, and the signature.
fn split_token(token: &str, prefix: &str, what: &'static str) -> Result<(String, Vec<u8>, Vec<u8>), LicenseError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(LicenseError::Missing);
    }
    let mut parts = token.split('.');
    let (Some(p), Some(payload), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(LicenseError::Malformed(what));
    };
    if p != prefix {
        return Err(LicenseError::Malformed("unknown token version"));
    }
    let raw = B64.decode(payload).map_err(|_| LicenseError::Malformed("payload is not base64url"))?;
    let sig = B64.decode(sig).map_err(|_| LicenseError::Malformed("signature is not base64url"))?;
    Ok((payload.to_string(), raw, sig))
}

/// Splits and decodes a token without checking its signature.
pub fn decode(token: &str) -> Result<(Claims, String, Vec<u8>), LicenseError> {
    let (payload, raw, sig) = split_token(token, PREFIX, "expected r1l1.<payload>.<signature>")?;
    let claims: Claims =
        serde_json::from_slice(&raw).map_err(|_| LicenseError::Malformed("payload is not license JSON"))?;
    Ok((claims, payload, sig))
}

/// A revoked license: (issuer key id, license id). Ids are unique per
/// issuer only, so a revocation names both.
pub type Revocation = (String, String);

/// Parses a revocation list: one `<issuer key id> <license id>` per line
/// (`/` also separates them); blank lines and `#` comments are skipped.
pub fn parse_revocations(text: &str) -> Result<BTreeSet<Revocation>, String> {
    let mut out = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split(|c: char| c.is_whitespace() || c == '/').filter(|p| !p.is_empty());
        match (parts.next(), parts.next(), parts.next()) {
            (Some(iss), Some(id), None) if iss.len() == 16 && iss.bytes().all(|b| b.is_ascii_hexdigit()) => {
                out.insert((iss.to_ascii_lowercase(), id.to_string()));
            }
            _ => {
                return Err(format!(
                    "line {}: expected `<issuer key id (16 hex digits)> <license id>`, got {line:?}",
                    n + 1
                ))
            }
        }
    }
    Ok(out)
}

/// Token of a revocation proof, version 1: `r1rv1.<payload>.<signature>`
/// like a license, the payload being the JSON of [`RevocationClaims`].
const REVOCATION_PREFIX: &str = "r1rv1";

/// What an issuer states when it revokes one of its licenses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RevocationClaims {
    /// Key id of the issuer (who alone may revoke its licenses).
    pub iss: String,
    /// The revoked license id.
    pub id: String,
    /// Unix seconds of the revocation.
    pub at: i64,
}

/// Signs a revocation of license `id` by `issuer`: anyone may carry the
/// token (CSTORE replicates it); every node verifies it against its own
/// trusted issuers.
pub fn issue_revocation(issuer: &ed25519::Keypair, id: &str, at: i64) -> String {
    let claims = RevocationClaims { iss: key_id(&issuer.public()), id: id.to_string(), at };
    sign_token(REVOCATION_PREFIX, issuer, &claims)
}

/// `<prefix>.<payload>.<signature>`: the JSON of `claims`, signed.
fn sign_token(prefix: &str, issuer: &ed25519::Keypair, claims: &impl Serialize) -> String {
    let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let sig = issuer.sign(payload.as_bytes());
    format!("{prefix}.{payload}.{}", B64.encode(sig))
}

/// Token of a license registry statement, version 1:
/// `r1ls1.<payload>.<signature>`, the payload being the JSON of
/// [`Statement`].
const STATEMENT_PREFIX: &str = "r1ls1";

/// What an issuer changes in the license registry (docs/economy.md,
/// "License registry").
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Link,
    Unlink,
    Ban,
    Unban,
}

/// One signed change of a license's registry entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// Key id of the issuer (who alone may change its licenses).
    pub iss: String,
    /// License id.
    pub id: String,
    pub action: Action,
    /// `link`: the node's PeerId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// `link`: the license class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Class>,
    /// `link` of an MND or GND: what it may earn over its window, in
    /// 10⁻¹⁸ R1 (a decimal string: JSON numbers lose digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned: Option<String>,
    /// Unix milliseconds of the change.
    pub at: u64,
}

/// Signs a registry statement.
pub fn issue_statement(issuer: &ed25519::Keypair, s: &Statement) -> String {
    sign_token(STATEMENT_PREFIX, issuer, s)
}

/// Where a set of revocations came from: each source replaces only its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RevocationSource {
    /// The `--revoked-licenses` file.
    File,
    /// Issuer-signed proofs replicated by CSTORE.
    Cstore,
}

/// The issuers a network trusts and the licenses it has revoked. Clones
/// share the revocation lists, so a reload reaches every holder at once.
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    issuers: BTreeMap<String, ed25519::PublicKey>,
    revoked: Arc<RwLock<BTreeMap<RevocationSource, BTreeSet<Revocation>>>>,
}

impl TrustStore {
    pub fn new(
        issuers: impl IntoIterator<Item = ed25519::PublicKey>,
        revoked: impl IntoIterator<Item = Revocation>,
    ) -> Self {
        Self {
            issuers: issuers.into_iter().map(|k| (key_id(&k), k)).collect(),
            revoked: Arc::new(RwLock::new(BTreeMap::from([(RevocationSource::File, revoked.into_iter().collect())]))),
        }
    }

    pub fn issuers(&self) -> impl Iterator<Item = &ed25519::PublicKey> {
        self.issuers.values()
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Whether the issuer with this key id is trusted.
    pub fn trusts(&self, key_id: &str) -> bool {
        self.issuers.contains_key(key_id)
    }

    /// Replaces the revocation list of the file (shared by every clone);
    /// returns whether it changed.
    pub fn set_revoked(&self, revoked: BTreeSet<Revocation>) -> bool {
        self.set_revoked_from(RevocationSource::File, revoked)
    }

    /// Replaces the revocations of one source; returns whether they changed.
    pub fn set_revoked_from(&self, source: RevocationSource, revoked: BTreeSet<Revocation>) -> bool {
        let mut cur = self.revoked.write().expect("revocation lock");
        let slot = cur.entry(source).or_default();
        let changed = *slot != revoked;
        *slot = revoked;
        changed
    }

    /// Revoked licenses, all sources together.
    pub fn revoked_count(&self) -> usize {
        let cur = self.revoked.read().expect("revocation lock");
        cur.values().flatten().collect::<BTreeSet<_>>().len()
    }

    /// Verifies a revocation proof against the trusted issuers.
    pub fn verify_revocation(&self, token: &str) -> Result<RevocationClaims, LicenseError> {
        let claims: RevocationClaims = self.verify_signed(
            token,
            REVOCATION_PREFIX,
            "expected r1rv1.<payload>.<signature>",
            |c: &RevocationClaims| &c.iss,
        )?;
        Ok(claims)
    }

    /// Splits, decodes and checks a token signed by the issuer it names.
    fn verify_signed<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        prefix: &str,
        what: &'static str,
        iss: impl Fn(&T) -> &String,
    ) -> Result<T, LicenseError> {
        let (payload, raw, sig) = split_token(token, prefix, what)?;
        let claims: T =
            serde_json::from_slice(&raw).map_err(|_| LicenseError::Malformed("payload is not the expected JSON"))?;
        let iss = iss(&claims);
        let key = self.issuers.get(iss).ok_or_else(|| LicenseError::UnknownIssuer(iss.clone()))?;
        if !key.verify(payload.as_bytes(), &sig) {
            return Err(LicenseError::BadSignature);
        }
        Ok(claims)
    }

    /// Verifies a registry statement against the trusted issuers.
    pub fn verify_statement(&self, token: &str) -> Result<Statement, LicenseError> {
        self.verify_signed(token, STATEMENT_PREFIX, "expected r1ls1.<payload>.<signature>", |s: &Statement| &s.iss)
    }

    /// Full verification: format, issuer, signature, binding, validity
    /// window, revocation. `now` in unix seconds.
    pub fn verify(&self, token: &str, peer: &str, now: i64) -> Result<Claims, LicenseError> {
        let (claims, payload, sig) = decode(token)?;
        let key = self.issuers.get(&claims.iss).ok_or_else(|| LicenseError::UnknownIssuer(claims.iss.clone()))?;
        if !key.verify(payload.as_bytes(), &sig) {
            return Err(LicenseError::BadSignature);
        }
        if claims.peer != peer {
            return Err(LicenseError::WrongPeer { bound: claims.peer.clone(), actual: peer.to_string() });
        }
        // A small allowance for clock skew between issuer and verifier.
        if claims.iat > now + 300 {
            return Err(LicenseError::NotYetValid(claims.iat));
        }
        self.still_valid(&claims, now)?;
        Ok(claims)
    }

    /// The checks that can change over a verified license's life: expiry
    /// and revocation. Cheap: no signature.
    pub fn still_valid(&self, claims: &Claims, now: i64) -> Result<(), LicenseError> {
        if claims.exp <= now {
            return Err(LicenseError::Expired(claims.exp));
        }
        let key = (claims.iss.clone(), claims.id.clone());
        if self.revoked.read().expect("revocation lock").values().any(|set| set.contains(&key)) {
            return Err(LicenseError::Revoked(claims.id.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (ed25519::Keypair, TrustStore, Claims) {
        let issuer = ed25519::Keypair::generate();
        let trust = TrustStore::new([issuer.public()], []);
        let claims = Claims {
            id: "nd-0001".into(),
            class: Class::Nd,
            peer: "12D3KooWPeer".into(),
            iat: 1_000,
            exp: 2_000,
            iss: key_id(&issuer.public()),
        };
        (issuer, trust, claims)
    }

    #[test]
    fn issued_license_verifies() {
        let (issuer, trust, claims) = setup();
        let token = issue(&issuer, &claims);
        assert_eq!(trust.verify(&token, "12D3KooWPeer", 1_500), Ok(claims));
    }

    #[test]
    fn revocation_proofs_verify_only_from_a_trusted_issuer_and_sources_add_up() {
        let (issuer, trust, claims) = setup();
        let proof = issue_revocation(&issuer, "nd-0001", 1_200);
        let r = trust.verify_revocation(&proof).unwrap();
        assert_eq!((r.iss.as_str(), r.id.as_str(), r.at), (claims.iss.as_str(), "nd-0001", 1_200));
        let stranger = issue_revocation(&ed25519::Keypair::generate(), "nd-0001", 1_200);
        assert!(matches!(trust.verify_revocation(&stranger), Err(LicenseError::UnknownIssuer(_))));
        let mut forged = proof.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert!(trust.verify_revocation(std::str::from_utf8(&forged).unwrap()).is_err());
        assert!(trust.verify_revocation(&issue(&issuer, &claims)).is_err(), "a license is not a revocation");
        // File and CSTORE revocations add up; each source replaces only its own.
        let token = issue(&issuer, &claims);
        trust.set_revoked_from(RevocationSource::Cstore, BTreeSet::from([(r.iss.clone(), r.id.clone())]));
        assert_eq!(trust.verify(&token, "12D3KooWPeer", 1_500).unwrap_err().reason(), "LicenseRevoked");
        trust.set_revoked(BTreeSet::new());
        assert_eq!(trust.verify(&token, "12D3KooWPeer", 1_500).unwrap_err().reason(), "LicenseRevoked");
        trust.set_revoked_from(RevocationSource::Cstore, BTreeSet::new());
        assert!(trust.verify(&token, "12D3KooWPeer", 1_500).is_ok());
    }

    #[test]
    fn tampering_any_byte_fails() {
        let (issuer, trust, claims) = setup();
        let token = issue(&issuer, &claims);
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            // Replace with another character of the token alphabet, so the
            // change survives decoding where it can.
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let Ok(tampered) = String::from_utf8(bytes) else { continue };
            if tampered == token {
                continue;
            }
            assert!(trust.verify(&tampered, "12D3KooWPeer", 1_500).is_err(), "byte {i} changed and it still verified");
        }
    }

    #[test]
    fn each_rule_has_its_reason() {
        let (issuer, trust, claims) = setup();
        let token = issue(&issuer, &claims);
        assert_eq!(trust.verify(&token, "12D3KooWOther", 1_500).unwrap_err().reason(), "WrongPeer");
        assert_eq!(trust.verify(&token, "12D3KooWPeer", 2_000).unwrap_err().reason(), "LicenseExpired");
        assert_eq!(trust.verify(&token, "12D3KooWPeer", 100).unwrap_err().reason(), "LicenseNotYetValid");
        assert_eq!(trust.verify("", "12D3KooWPeer", 1_500).unwrap_err().reason(), "LicenseMissing");
        assert_eq!(trust.verify("r1l1.x", "p", 1).unwrap_err().reason(), "LicenseMalformed");
        let stranger = ed25519::Keypair::generate();
        let forged = issue(&stranger, &Claims { iss: key_id(&stranger.public()), ..claims.clone() });
        assert_eq!(trust.verify(&forged, "12D3KooWPeer", 1_500).unwrap_err().reason(), "UnknownIssuer");
        // A stranger's signature under the trusted issuer's id.
        let impostor = issue(&stranger, &claims);
        assert_eq!(trust.verify(&impostor, "12D3KooWPeer", 1_500).unwrap_err().reason(), "BadSignature");
        // Revocation names the issuer too: the same id from another issuer stands.
        let other = TrustStore::new([issuer.public()], [("0000000000000000".to_string(), "nd-0001".to_string())]);
        assert!(other.verify(&token, "12D3KooWPeer", 1_500).is_ok());
        let clone = other.clone();
        assert!(other.set_revoked(BTreeSet::from([(key_id(&issuer.public()), "nd-0001".to_string())])));
        assert_eq!(
            clone.verify(&token, "12D3KooWPeer", 1_500).unwrap_err().reason(),
            "LicenseRevoked",
            "clones share the list"
        );
    }

    #[test]
    fn revocation_lists_parse_or_say_which_line_is_wrong() {
        let set = parse_revocations("# revoked\n\n0123456789abcdef nd-1\n0123456789ABCDEF/nd-2  # stolen\n").unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.contains(&("0123456789abcdef".to_string(), "nd-2".to_string())));
        assert!(parse_revocations("nd-1\n").unwrap_err().starts_with("line 1:"));
        assert!(parse_revocations("0123456789abcdef a b\n").unwrap_err().starts_with("line 1:"));
    }

    #[test]
    fn keys_roundtrip_as_text() {
        let kp = ed25519::Keypair::generate();
        let back = decode_secret(&encode_secret(&kp)).unwrap();
        assert_eq!(back.public(), kp.public());
        assert_eq!(decode_public(&encode_public(&kp.public())).unwrap(), kp.public());
        assert!(decode_public("not a key").is_err());
    }
}
