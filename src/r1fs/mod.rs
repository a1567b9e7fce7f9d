//! R1FS: the network's content-addressed store. Content is addressed as
//! IPFS addresses it (UnixFS DAGs, CIDv1, raw leaves, 256 KiB chunks,
//! balanced layout, sha2-256: what `ipfs add --cid-version 1` gives), so a
//! CID computed here names the same bytes anywhere in the IPFS world.
//!
//! Parts: parsing and checking the CIDs users give ([`cid`]), turning files
//! and directories into blocks ([`add`]), verified blocks on disk
//! ([`store`]) and pins ([`pins`]), dag-pb links ([`dagpb`]), Bitswap 1.2
//! messages between admitted peers ([`bitswap`]), the service the operator
//! runs (fetch, replication, repair: [`service`]) and its HTTP side (local
//! API, gateway, CLI client: [`api`]). docs/protocols.md, "R1FS".

pub mod add;
pub mod api;
pub mod bitswap;
pub mod cid;
pub mod dagpb;
pub mod metrics;
pub mod pins;
pub mod seal;
pub mod service;
pub mod store;
