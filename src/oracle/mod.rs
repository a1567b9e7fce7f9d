//! OracleSync and the economy's inputs: epochs and availability. Only the
//! pure epoch clock and availability rule are here so far (`epoch`); the
//! oracles' agreement and the ledger are not built (docs/protocols.md).

pub mod epoch;
