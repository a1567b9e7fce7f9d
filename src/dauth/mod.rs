//! dAuth: licenses (issue, verify) and the trust a network places in issuers.
//! The handshakes themselves run in [`crate::p2p`].
pub mod license;
