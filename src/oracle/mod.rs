//! OracleSync: epochs and availability ([`epoch`]), the oracles'
//! agreement and the verifiable epoch record ([`agree`]), the protocol's
//! state machine over CSTORE records ([`sync`]) and the task that runs it
//! ([`service`]). The economy that reads final records is not built yet
//! (docs/oracle.md).

pub mod agree;
pub mod epoch;
pub mod metrics;
pub mod service;
#[doc(hidden)]
pub mod sim;
pub mod sync;
