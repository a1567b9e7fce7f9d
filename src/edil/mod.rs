//! EDIL: federated learning with homomorphically encrypted aggregation
//! (docs/edil.md): the cryptography ([`crypto`]), the built-in trainer
//! ([`trainer`]), trainer containers as Jobs ([`jobs`]), the rules of a
//! round ([`round`]) and the task that runs rounds over CSTORE
//! ([`service`]); `ratio1 edil` runs the first two by
//! hand.

pub mod crypto;
pub mod jobs;
pub mod metrics;
pub mod round;
pub mod seal;
pub mod service;
pub mod trainer;
