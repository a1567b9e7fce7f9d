//! Encrypted content: a file sealed with AES-256-GCM before it is added, so
//! that the CID is of the ciphertext and the nodes that store and serve its
//! blocks cannot read it; only holders of the key can. The key never
//! leaves the machine that seals or opens (the CLI's `--key-file`).
//!
//! Format (streamed, so files of any size need no more memory than a
//! segment): `MAGIC ‖ nonce prefix (7 random bytes) ‖ segments`, each
//! segment [`SEGMENT`] bytes of plaintext sealed by the STREAM construction
//! (Hoang, Reyhanitabar, Rogaway, Vizár; `aead::stream`, big-endian 32-bit
//! counter and a last-segment flag in the nonce): a reordered, dropped,
//! truncated or altered segment fails to open, as does a wrong key.

use aes_gcm::aead::stream::{DecryptorBE32, EncryptorBE32};
use aes_gcm::aead::KeyInit;
use aes_gcm::Aes256Gcm;
use std::io::{self, Read, Write};

/// Marks sealed content (and its version).
pub const MAGIC: &[u8; 8] = b"R1FSAE01";
/// Plaintext bytes per segment.
pub const SEGMENT: usize = 64 * 1024;
const TAG: usize = 16;
const PREFIX: usize = 7;

/// A 256-bit content key.
pub type Key = [u8; 32];

/// Ends of the errors of [`parse_key`] (pods' termination messages are
/// matched against them).
pub const NOT_A_KEY: &str = "is not a base64 key";
pub const NOT_32_BYTES: &str = "does not hold a 32-byte key";

/// A key as key files and Secrets hold it: base64 of 32 bytes (spaces
/// around it ignored); `what` names where it came from in errors.
pub fn parse_key(text: &str, what: &str) -> io::Result<Key> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{what} {NOT_A_KEY}")))?;
    bytes.try_into().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{what} {NOT_32_BYTES}")))
}

/// Reads a key file (base64 of 32 bytes), or makes one (mode 0600) when
/// `create` and it does not exist; returns the key and whether it is new.
pub fn key_file(path: &std::path::Path, create: bool) -> io::Result<(Key, bool)> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((parse_key(&text, &path.display().to_string())?, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            use std::os::unix::fs::OpenOptionsExt;
            let key: Key = rand::random();
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            writeln!(f, "{}", b64.encode(key))?;
            f.sync_all()?;
            Ok((key, true))
        }
        Err(e) => Err(io::Error::new(e.kind(), format!("cannot read key file {}: {e}", path.display()))),
    }
}

/// How a key that does not open content is reported (pods' termination
/// messages are matched against it).
pub const WRONG_KEY: &str = "cannot open sealed content: wrong key, or the content was altered";

fn wrong() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, WRONG_KEY)
}

/// Seals what `inner` reads: a reader of the sealed stream.
pub struct Sealer<R> {
    inner: R,
    enc: Option<EncryptorBE32<Aes256Gcm>>,
    plain: Vec<u8>,
    out: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl<R: Read> Sealer<R> {
    pub fn new(inner: R, key: &Key) -> Self {
        let prefix: [u8; PREFIX] = rand::random();
        let enc = EncryptorBE32::from_aead(Aes256Gcm::new(key.into()), prefix.as_ref().into());
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&prefix);
        Self { inner, enc: Some(enc), plain: Vec::with_capacity(SEGMENT + 1), out, pos: 0, eof: false }
    }

    /// Seals the next segment into `out` (the last one once the input ends).
    fn refill(&mut self) -> io::Result<()> {
        // One byte beyond a segment tells whether this segment is the last.
        while !self.eof && self.plain.len() <= SEGMENT {
            let mut buf = [0u8; 16 * 1024];
            let want = (SEGMENT + 1 - self.plain.len()).min(buf.len());
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.plain.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.pos = 0;
        if self.plain.len() > SEGMENT {
            let rest = self.plain.split_off(SEGMENT);
            let enc = self.enc.as_mut().expect("not finished");
            self.out = enc.encrypt_next(self.plain.as_slice()).map_err(|_| io::Error::other("AES-GCM failed"))?;
            self.plain = rest;
        } else if let Some(enc) = self.enc.take() {
            self.out = enc.encrypt_last(self.plain.as_slice()).map_err(|_| io::Error::other("AES-GCM failed"))?;
            self.plain.clear();
        }
        Ok(())
    }
}

impl<R: Read> Read for Sealer<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.out.len() {
            if self.enc.is_none() {
                return Ok(0);
            }
            self.refill()?;
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Opens a sealed stream written to it, writing the plaintext to `inner`;
/// [`Opener::finish`] checks the last segment (without it, a truncated
/// stream would pass for a shorter file).
pub struct Opener<W: Write> {
    inner: W,
    key: Key,
    dec: Option<DecryptorBE32<Aes256Gcm>>,
    buf: Vec<u8>,
}

impl<W: Write> Opener<W> {
    pub fn new(inner: W, key: &Key) -> Self {
        Self { inner, key: *key, dec: None, buf: Vec::with_capacity(SEGMENT + TAG + 1) }
    }

    fn header(&mut self) -> io::Result<bool> {
        if self.dec.is_some() {
            return Ok(true);
        }
        if self.buf.len() < MAGIC.len() + PREFIX {
            return Ok(false);
        }
        if &self.buf[..MAGIC.len()] != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "this content is not sealed by `ratio1 fs add --encrypt`",
            ));
        }
        let prefix = &self.buf[MAGIC.len()..MAGIC.len() + PREFIX];
        self.dec = Some(DecryptorBE32::from_aead(Aes256Gcm::new((&self.key).into()), prefix.into()));
        self.buf.drain(..MAGIC.len() + PREFIX);
        Ok(true)
    }

    /// Opens the last segment and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.header()? {
            return Err(wrong());
        }
        let dec = self.dec.take().expect("header read");
        let plain = dec.decrypt_last(self.buf.as_slice()).map_err(|_| wrong())?;
        self.inner.write_all(&plain)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Opener<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if !self.header()? {
            return Ok(data.len());
        }
        // A full segment is opened only once more follows: the last one is
        // opened by `finish`, with the last-segment flag.
        while self.buf.len() > SEGMENT + TAG {
            let rest = self.buf.split_off(SEGMENT + TAG);
            let dec = self.dec.as_mut().expect("header read");
            let plain = dec.decrypt_next(self.buf.as_slice()).map_err(|_| wrong())?;
            self.inner.write_all(&plain)?;
            self.buf = rest;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(data: &[u8], key: &Key) -> Vec<u8> {
        let mut out = vec![];
        Sealer::new(data, key).read_to_end(&mut out).unwrap();
        out
    }

    fn open(sealed: &[u8], key: &Key, step: usize) -> io::Result<Vec<u8>> {
        let mut o = Opener::new(vec![], key);
        for chunk in sealed.chunks(step) {
            o.write_all(chunk)?;
        }
        o.finish()
    }

    #[test]
    fn sealed_content_opens_with_its_key_only_and_whole() {
        let key: Key = [7; 32];
        for len in [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 5] {
            let data: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
            let sealed = seal(&data, &key);
            let segments = len.div_ceil(SEGMENT).max(1);
            assert_eq!(sealed.len(), MAGIC.len() + PREFIX + len + segments * TAG, "{len} bytes");
            for step in [1000, 7, sealed.len().max(1)] {
                assert!(open(&sealed, &key, step).unwrap() == data, "{len} bytes in writes of {step}");
            }
            assert!(open(&sealed, &[8; 32], 4096).is_err(), "a wrong key opens nothing");
            // (Runs of 16 bytes or more: a shorter one may occur by chance.)
            if len >= 16 {
                assert!(!sealed.windows(len.min(64)).any(|w| w == &data[..len.min(64)]), "no plaintext shows");
            }
        }
        // Two seals of the same bytes differ (random nonce prefix).
        assert_ne!(seal(b"same", &key), seal(b"same", &key));
    }

    #[test]
    fn altered_truncated_or_reordered_content_fails() {
        let key: Key = [1; 32];
        let data: Vec<u8> = (0..3 * SEGMENT).map(|i| (i % 256) as u8).collect();
        let sealed = seal(&data, &key);
        let mut flipped = sealed.clone();
        flipped[MAGIC.len() + PREFIX + 10] ^= 1;
        assert!(open(&flipped, &key, 4096).is_err());
        // Dropping the last segment: what remains must not pass for a shorter file.
        let seg = SEGMENT + TAG;
        let head = MAGIC.len() + PREFIX;
        assert_eq!(sealed.len(), head + 3 * seg);
        assert!(open(&sealed[..head + 2 * seg], &key, 4096).is_err());
        assert!(open(&sealed[..head + seg], &key, 4096).is_err());
        let mut swapped = sealed[..head].to_vec();
        swapped.extend_from_slice(&sealed[head + seg..head + 2 * seg]);
        swapped.extend_from_slice(&sealed[head..head + seg]);
        swapped.extend_from_slice(&sealed[head + 2 * seg..]);
        assert!(open(&swapped, &key, 4096).is_err());
        assert!(open(b"not sealed at all", &key, 4).unwrap_err().to_string().contains("not sealed"));
    }

    #[test]
    fn key_files_are_made_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("r1fs-key-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        assert!(key_file(&path, false).is_err(), "not made unless asked");
        let (k, new) = key_file(&path, true).unwrap();
        assert!(new);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(key_file(&path, true).unwrap(), (k, false));
        std::fs::write(&path, "c2hvcnQ=\n").unwrap();
        assert!(key_file(&path, false).unwrap_err().to_string().contains("32-byte"));
        let _ = std::fs::remove_file(&path);
    }
}
