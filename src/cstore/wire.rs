//! CSTORE's messages on the network: record batches on the gossip topic
//! (`cstore.records` envelopes) and the anti-entropy exchange over
//! `/ratio1/cstore/1`. Packed numbers travel as base64url of big-endian
//! bytes, so a digest of 4,096 buckets is 43 KiB of text, not 80.

use super::index::Line;
use super::record::{Hlc, Record};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Records in one gossip batch, at most.
pub const MAX_BATCH_RECORDS: usize = 512;
/// Bytes of records in one gossip batch, about (a batch closes past it).
pub const MAX_BATCH_BYTES: usize = 768 * 1024;
/// Lines of a bucket listing per page.
pub const SUMMARY_PAGE: usize = 16_384;
/// Key hashes per fetch.
pub const MAX_FETCH_KEYS: usize = 4_096;
/// Bytes of records per fetch answer, about.
pub const MAX_FETCH_BYTES: usize = 4 * 1024 * 1024;

/// Body of a `cstore.records` envelope: the author's own new writes.
#[derive(Serialize, Deserialize, Debug)]
pub struct Batch {
    pub records: Vec<Record>,
}

#[derive(Serialize, Deserialize, Debug)]
pub enum SyncRequest {
    /// My bucket digests: list your keys in the buckets that differ, from
    /// line `page × SUMMARY_PAGE` on.
    Digest { buckets: String, page: u32 },
    /// Send me the records of these key hashes.
    Fetch { keys: String },
}

#[derive(Serialize, Deserialize, Debug)]
pub enum SyncResponse {
    /// Lines of the differing buckets, and whether another page follows.
    Summary {
        lines: String,
        more: bool,
    },
    Records {
        records: Vec<Record>,
    },
    Refused {
        reason: String,
    },
}

pub fn pack_u64s(v: &[u64]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_be_bytes()).collect();
    B64.encode(bytes)
}

pub fn unpack_u64s(s: &str, max: usize) -> Result<Vec<u64>, &'static str> {
    let bytes = B64.decode(s).map_err(|_| "malformed")?;
    if bytes.len() % 8 != 0 || bytes.len() / 8 > max {
        return Err("malformed");
    }
    Ok(bytes.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))).collect())
}

pub fn pack_lines(lines: &[Line]) -> String {
    let flat: Vec<u64> = lines.iter().flat_map(|(h, t, v)| [*h, t.0, *v]).collect();
    pack_u64s(&flat)
}

pub fn unpack_lines(s: &str) -> Result<Vec<Line>, &'static str> {
    let flat = unpack_u64s(s, SUMMARY_PAGE * 3)?;
    if flat.len() % 3 != 0 {
        return Err("malformed");
    }
    Ok(flat.chunks_exact(3).map(|c| (c[0], Hlc(c[1]), c[2])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_numbers_round_trip_and_are_bounded() {
        let v = vec![0, 1, u64::MAX, 42];
        assert_eq!(unpack_u64s(&pack_u64s(&v), 4).unwrap(), v);
        assert!(unpack_u64s(&pack_u64s(&v), 3).is_err());
        assert!(unpack_u64s("not base64!", 10).is_err());
        assert!(unpack_u64s(&B64.encode([1u8, 2, 3]), 10).is_err());
        let lines = vec![(1, Hlc(2), 3), (u64::MAX, Hlc(0), 7)];
        assert_eq!(unpack_lines(&pack_lines(&lines)).unwrap(), lines);
        assert!(unpack_lines(&pack_u64s(&[1, 2])).is_err());
    }
}
