//! ratio1-operator: each Kubernetes cluster running it is a Ratio1 node.
//!
//! Protocol logic (conditions, leader election rules, identity, pipeline
//! validation and building) is pure and unit-tested; the controllers wire it
//! to the Kubernetes API.
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod cstore;
pub mod dauth;
pub mod deeploy;
pub mod economy;
pub mod edil;
pub mod http;
pub mod identity;
pub mod leader;
pub mod metrics;
pub mod objects;
pub mod oracle;
pub mod p2p;
pub mod r1fs;
pub mod telemetry;
