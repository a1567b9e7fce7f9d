//! Node identity: the ed25519 keypair that is both the node's signing key and
//! its libp2p identity, kept in a Secret in the operator's namespace.

use libp2p_identity::{Keypair, PeerId};
use std::collections::BTreeMap;

/// Secret key holding the libp2p protobuf encoding of the keypair.
pub const PRIVATE_KEY: &str = "private-key";
/// Secret key holding the PeerId, for humans and tools (derived, not trusted).
pub const PEER_ID: &str = "peer-id";

/// Why a Secret cannot serve as a node identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("secret has no key {PRIVATE_KEY:?}")]
    MissingKey,
    #[error("key {PRIVATE_KEY:?} is not a libp2p protobuf-encoded keypair")]
    Undecodable,
    #[error("key {PRIVATE_KEY:?} holds a {0} key, an ed25519 key is required")]
    NotEd25519(String),
}

/// A freshly generated ed25519 identity, as Secret data.
pub fn generate() -> (PeerId, BTreeMap<String, Vec<u8>>) {
    let kp = Keypair::generate_ed25519();
    let peer = kp.public().to_peer_id();
    let mut data = BTreeMap::new();
    data.insert(PRIVATE_KEY.to_string(), kp.to_protobuf_encoding().expect("ed25519 keys always encode"));
    data.insert(PEER_ID.to_string(), peer.to_string().into_bytes());
    (peer, data)
}

/// Reads the keypair out of Secret data.
pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Keypair, IdentityError> {
    let raw = data.get(PRIVATE_KEY).ok_or(IdentityError::MissingKey)?;
    let kp = Keypair::from_protobuf_encoding(raw).map_err(|_| IdentityError::Undecodable)?;
    if kp.clone().try_into_ed25519().is_err() {
        return Err(IdentityError::NotEd25519(format!("{:?}", kp.key_type())));
    }
    Ok(kp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_keeps_peer_id() {
        let (peer, data) = generate();
        let kp = from_secret_data(&data).unwrap();
        assert_eq!(kp.public().to_peer_id(), peer);
        assert_eq!(String::from_utf8(data[PEER_ID].clone()).unwrap(), peer.to_string());
    }

    #[test]
    fn rejects_wrong_shapes() {
        assert_eq!(from_secret_data(&BTreeMap::new()).unwrap_err(), IdentityError::MissingKey);
        let mut d = BTreeMap::new();
        d.insert(PRIVATE_KEY.to_string(), b"not a key".to_vec());
        assert_eq!(from_secret_data(&d).unwrap_err(), IdentityError::Undecodable);
    }
}
