//! R1FS: the network's content-addressed store. Content is addressed as
//! IPFS addresses it (UnixFS DAGs, CIDv1, raw leaves, 256 KiB chunks,
//! balanced layout, sha2-256: what `ipfs add --cid-version 1` gives), so a
//! CID computed here names the same bytes anywhere in the IPFS world.
//!
//! Built so far: parsing and checking the CIDs users give ([`cid`]),
//! turning files and directories into blocks ([`add`]), and keeping
//! verified blocks on disk and reading files back from them ([`store`]).
//! Exchanging blocks between clusters and delivering them to pods build
//! on these (docs/protocols.md, "R1FS").

pub mod add;
pub mod api;
pub mod bitswap;
pub mod cid;
pub mod dagpb;
pub mod metrics;
pub mod pins;
pub mod service;
pub mod store;
