//! EDIL: federated learning with homomorphically encrypted aggregation
//! (docs/edil.md). Built so far: the cryptography ([`crypto`]).

pub mod crypto;
