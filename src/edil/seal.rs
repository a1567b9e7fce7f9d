//! Sealing an update for its aggregator only. CSTORE copies every record
//! to every node, the model's owner included, and the owner holds the
//! secret key that opens each ciphertext: an update readable by all would
//! be readable alone by the owner. So a participant seals its update to
//! the round's aggregator: X25519 between the two nodes' ed25519 identity
//! keys (each side's secret with the other's public key, from its PeerId),
//! then AES-256-GCM under `SHA-256(label ‖ shared ‖ context)` with a
//! random nonce. Only the aggregator opens it, and it holds no EDIL key.
//!
//! Using a signing key for Diffie-Hellman is what ed25519-dalek's
//! `to_scalar_bytes` is for; the paper it cites ("On using the same key
//! pair for Ed25519 and an X25519 based KEM", 2021) finds the combination
//! secure. The key is bound to the round (`context`), so a sealed update
//! does not open as another round's.

use super::crypto::EdilError;
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::Aes256Gcm;
use libp2p_identity::{Keypair, PeerId};
use sha2::{Digest, Sha256};

const LABEL: &[u8] = b"ratio1/edil/seal/1";
const NONCE: usize = 12;

fn shared_key(me: &Keypair, peer: &PeerId, context: &[u8]) -> Result<Aes256Gcm, EdilError> {
    let bad = |what: &str| EdilError::Seal(what.to_string());
    let mine = me.clone().try_into_ed25519().map_err(|_| bad("this node's key is not ed25519"))?;
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&mine.secret().as_ref()[..32]);
    let scalar = ed25519_dalek::SigningKey::from_bytes(&seed).to_scalar_bytes();
    let theirs = crate::cstore::record::public_key_of(peer)
        .and_then(|k| k.try_into_ed25519().ok())
        .ok_or_else(|| bad("the peer's PeerId carries no ed25519 key"))?;
    let theirs = ed25519_dalek::VerifyingKey::from_bytes(&theirs.to_bytes()).map_err(|_| bad("not a curve point"))?;
    let shared = theirs.to_montgomery().mul_clamped(scalar).to_bytes();
    if shared == [0u8; 32] {
        return Err(bad("a low-order key"));
    }
    let mut h = Sha256::new();
    h.update(LABEL);
    h.update(shared);
    h.update((context.len() as u64).to_be_bytes());
    h.update(context);
    Ok(Aes256Gcm::new(&h.finalize()))
}

/// Seals `plain` from `me` to `to`, for `context`.
pub fn seal(me: &Keypair, to: &PeerId, context: &[u8], plain: &[u8]) -> Result<Vec<u8>, EdilError> {
    let cipher = shared_key(me, to, context)?;
    let nonce: [u8; NONCE] = rand::random();
    let body = cipher.encrypt((&nonce).into(), plain).map_err(|_| EdilError::Seal("cannot seal".into()))?;
    Ok([nonce.as_slice(), &body].concat())
}

/// Opens what `from` sealed to `me` for `context`.
pub fn open(me: &Keypair, from: &PeerId, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, EdilError> {
    if sealed.len() < NONCE + 16 {
        return Err(EdilError::Seal("too short".into()));
    }
    let cipher = shared_key(me, from, context)?;
    let (nonce, body) = sealed.split_at(NONCE);
    cipher.decrypt(nonce.into(), body).map_err(|_| EdilError::Seal("does not open: not for this node or round".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_addressee_opens_and_only_for_that_context() {
        let (p, a, owner) = (Keypair::generate_ed25519(), Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (pid, aid) = (p.public().to_peer_id(), a.public().to_peer_id());
        let sealed = seal(&p, &aid, b"m/1", b"update bytes").unwrap();
        assert_eq!(open(&a, &pid, b"m/1", &sealed).unwrap(), b"update bytes");
        assert!(open(&owner, &pid, b"m/1", &sealed).is_err(), "the owner cannot open it");
        assert!(open(&a, &pid, b"m/2", &sealed).is_err(), "nor another round");
        assert!(open(&a, &owner.public().to_peer_id(), b"m/1", &sealed).is_err(), "nor as from another peer");
        let mut bent = sealed.clone();
        bent[20] ^= 1;
        assert!(open(&a, &pid, b"m/1", &bent).is_err(), "tampering is detected");
        assert!(open(&a, &pid, b"m/1", &sealed[..10]).is_err());
    }
}
