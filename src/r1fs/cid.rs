//! CIDs as users write them: decoded for real (the CRD's pattern only
//! checks the alphabet), and limited to what R1FS can fetch and verify.

pub use ::cid::Cid;

/// Multicodec of raw blocks (file leaves).
pub const RAW: u64 = 0x55;
/// Multicodec of dag-pb blocks (UnixFS files and directories).
pub const DAG_PB: u64 = 0x70;
/// Multihash code of sha2-256.
pub const SHA2_256: u64 = 0x12;

/// Parses a CID string (CIDv0 `Qm…` or CIDv1 in any multibase) into a CID
/// R1FS can resolve: a raw or dag-pb block named by its sha2-256 digest.
/// The error is one sentence that says what is wrong with it.
pub fn parse(s: &str) -> Result<Cid, String> {
    let s = s.trim();
    let cid = Cid::try_from(s).map_err(|e| format!("{s:?} is not a CID: {e}"))?;
    check(cid, s)
}

/// The checks of [`parse`] for a CID already decoded (from bytes), named
/// `s` in the error.
pub fn check(cid: Cid, s: &str) -> Result<Cid, String> {
    let mh = cid.hash();
    if mh.code() != SHA2_256 {
        return Err(format!(
            "{s:?} is hashed with multihash code {:#x}; R1FS verifies sha2-256 (0x12) only",
            mh.code()
        ));
    }
    if mh.size() != 32 {
        return Err(format!("{s:?} carries a {}-byte sha2-256 digest; it must be 32 bytes", mh.size()));
    }
    match cid.codec() {
        RAW | DAG_PB => Ok(cid),
        c => Err(format!("{s:?} names a block of codec {c:#x}; R1FS holds raw (0x55) and dag-pb (0x70) blocks only")),
    }
}

/// The canonical string of a CID: CIDv1 in base32 (`b…`), as R1FS
/// reports CIDs (a CIDv0 is shown as its CIDv1 equivalent).
pub fn canonical(cid: &Cid) -> String {
    match cid.version() {
        ::cid::Version::V0 => Cid::new_v1(DAG_PB, *cid.hash()).to_string(),
        ::cid::Version::V1 => cid.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_cids_parse_and_others_say_why() {
        let v1 = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
        assert_eq!(parse(v1).unwrap().codec(), RAW);
        let v0 = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH";
        let c0 = parse(v0).unwrap();
        assert_eq!(c0.codec(), DAG_PB);
        assert!(canonical(&c0).starts_with("bafybei"), "{}", canonical(&c0));
        assert_eq!(canonical(&parse(v1).unwrap()), v1);
        let digest = [7u8; 32];
        let mh = |code: u64, d: &[u8]| ::cid::multihash::Multihash::<64>::wrap(code, d).unwrap();
        let cbor = Cid::new_v1(0x71, mh(SHA2_256, &digest)).to_string();
        let blake = Cid::new_v1(RAW, mh(0xb220, &digest)).to_string();
        let short = Cid::new_v1(RAW, mh(SHA2_256, &digest[..20])).to_string();
        let ident = Cid::new_v1(RAW, mh(0, b"x")).to_string();
        for (bad, says) in [
            ("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyk1", "not a CID"),
            (&format!("b{}", "a".repeat(58)), "not a CID"),
            ("Qm", "not a CID"),
            (&cbor, "codec 0x71"),
            (&blake, "multihash code 0xb220"),
            (&short, "20-byte"),
            (&ident, "multihash code 0x0"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
