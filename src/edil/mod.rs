//! EDIL: federated learning with homomorphically encrypted aggregation
//! (docs/edil.md). Built so far: the cryptography ([`crypto`]) and the
//! built-in trainer ([`trainer`]), with `ratio1 edil` to use both by hand.

pub mod crypto;
pub mod trainer;
