//! R1FS blocks on disk, in the operator's data directory (`--data-dir`;
//! in a cluster, a volume mounted there). Layout under the root:
//!
//! - `blocks/<last two characters of the CID>/<CID>`: one file per block,
//!   named by its CIDv1 in base32;
//! - `tmp/`: writes in progress, emptied when the store opens;
//! - `quarantine/<CID>.<unix ms>`: blocks whose bytes no longer match
//!   their CID, kept for inspection.
//!
//! A block from elsewhere ([`BlockStore::put`]) is verified, written to
//! `tmp/`, fsynced, renamed into `blocks/` and the directory fsynced: a
//! crash leaves the whole block or nothing visible. Blocks this node makes
//! itself (an add) skip the second hash and the per-block fsyncs
//! ([`BlockStore::put_own`]); the add syncs the filesystem once at its end
//! ([`BlockStore::sync`]) before it reports a CID. A block a crash tore
//! meanwhile is caught by the check every read makes: a block that fails
//! it (a torn write, bit rot, a hand edit) is moved to quarantine and reads
//! as corrupt, so that it is fetched or added again (never served).

use super::cid::{canonical, Cid, RAW};
use sha2::{Digest, Sha256};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Why a block could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("block {0} is not in the store")]
    NotFound(String),
    #[error("the bytes given for block {0} do not hash to it")]
    Mismatch(String),
    #[error("block {cid} on disk no longer matches its CID: moved to {quarantined}")]
    Corrupt { cid: String, quarantined: String },
    #[error("{0} is not a UnixFS file: {1}")]
    NotAFile(String, String),
    #[error("R1FS store: {0}")]
    Io(#[from] io::Error),
}

/// True when `bytes` are the block `cid` names (its sha2-256 digest).
pub fn verifies(cid: &Cid, bytes: &[u8]) -> bool {
    cid.hash().code() == super::cid::SHA2_256 && cid.hash().digest() == Sha256::digest(bytes).as_slice()
}

/// What [`BlockStore::walk`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    pub blocks: u64,
    pub dag_size: u64,
    pub missing: Vec<Cid>,
}

/// What a GC did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Gc {
    pub removed: u64,
    pub freed: u64,
    pub kept: u64,
}

/// The blocks of one operator. Clones share the directory.
#[derive(Clone, Debug)]
pub struct BlockStore {
    root: PathBuf,
}

impl BlockStore {
    /// Opens (creating) a store under `root`, clearing writes a crash left.
    pub fn open(root: &Path) -> io::Result<Self> {
        for d in ["blocks", "tmp", "quarantine"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        for e in std::fs::read_dir(root.join("tmp"))? {
            let _ = std::fs::remove_file(e?.path());
        }
        Ok(Self { root: root.to_path_buf() })
    }

    fn path(&self, cid: &Cid) -> PathBuf {
        let name = canonical(cid);
        let shard = &name[name.len() - 2..];
        self.root.join("blocks").join(shard).join(name)
    }

    pub fn has(&self, cid: &Cid) -> bool {
        self.path(cid).is_file()
    }

    /// Stores a block from elsewhere after checking that its bytes hash to
    /// `cid`, durably; returns whether it was new.
    pub fn put(&self, cid: &Cid, bytes: &[u8]) -> Result<bool, StoreError> {
        if !verifies(cid, bytes) {
            return Err(StoreError::Mismatch(cid.to_string()));
        }
        Ok(self.write(cid, bytes, true)?)
    }

    /// Stores a block this node computed itself (its CID is the hash it
    /// just took), without a sync: call [`BlockStore::sync`] before the
    /// blocks are relied upon.
    pub fn put_own(&self, cid: &Cid, bytes: &[u8]) -> io::Result<bool> {
        self.write(cid, bytes, false)
    }

    /// Runs `make`, which hands blocks this node made to its sink, while a
    /// thread of its own writes them ([`BlockStore::put_own`]): hashing the
    /// next blocks and writing the last ones overlap. Returns what `make`
    /// returned and the blocks and bytes newly written; the first write
    /// error stops `make` (its sink fails) and is returned.
    pub fn put_own_all<B, T>(
        &self,
        make: impl FnOnce(&mut dyn FnMut(Cid, B) -> io::Result<()>) -> io::Result<T>,
    ) -> io::Result<(T, u64, u64)>
    where
        B: AsRef<[u8]> + Send,
    {
        std::thread::scope(|s| {
            // A few blocks in flight: enough to overlap, little memory.
            let (tx, rx) = std::sync::mpsc::sync_channel::<(Cid, B)>(8);
            let writer = s.spawn(move || -> io::Result<(u64, u64)> {
                let (mut n, mut bytes) = (0, 0);
                for (cid, b) in rx {
                    if self.write(&cid, b.as_ref(), false)? {
                        n += 1;
                        bytes += b.as_ref().len() as u64;
                    }
                }
                Ok((n, bytes))
            });
            let made = make(&mut |cid, b| tx.send((cid, b)).map_err(|_| io::Error::other("the block writer stopped")));
            drop(tx);
            let (n, bytes) = writer.join().map_err(|_| io::Error::other("the block writer panicked"))??;
            Ok((made?, n, bytes))
        })
    }

    /// Makes every write so far durable (one `syncfs` of the store's
    /// filesystem).
    pub fn sync(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let dir = std::fs::File::open(&self.root)?;
        // SAFETY: syncfs only reads the descriptor, which `dir` keeps open.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn write(&self, cid: &Cid, bytes: &[u8], durable: bool) -> io::Result<bool> {
        let path = self.path(cid);
        if path.is_file() {
            // Young again: a GC spares it until the add or fetch that
            // found it here has pinned it.
            let _ = std::fs::File::options()
                .append(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            return Ok(false);
        }
        let dir = path.parent().expect("a block path has a parent");
        std::fs::create_dir_all(dir)?;
        let tmp = self.root.join("tmp").join(format!(
            "{}.{}.{:?}",
            canonical(cid),
            std::process::id(),
            std::thread::current().id()
        ));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            if durable {
                f.sync_all()?;
            }
        }
        std::fs::rename(&tmp, &path)?;
        if durable {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(true)
    }

    /// Reads a block, verified; a block that fails verification goes to
    /// quarantine and the error says where.
    pub fn get(&self, cid: &Cid) -> Result<Vec<u8>, StoreError> {
        let path = self.path(cid);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound(cid.to_string())),
            Err(e) => return Err(e.into()),
        };
        if verifies(cid, &bytes) {
            return Ok(bytes);
        }
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let to = self.root.join("quarantine").join(format!("{}.{at}", canonical(cid)));
        std::fs::rename(&path, &to)?;
        tracing::warn!(%cid, quarantined = %to.display(), "R1FS block corrupt on disk: quarantined");
        Err(StoreError::Corrupt { cid: cid.to_string(), quarantined: to.display().to_string() })
    }

    /// Removes a block; returns whether it was there.
    pub fn remove(&self, cid: &Cid) -> io::Result<bool> {
        match std::fs::remove_file(self.path(cid)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Number of blocks and their bytes.
    pub fn usage(&self) -> io::Result<(u64, u64)> {
        let (mut n, mut bytes) = (0, 0);
        for shard in std::fs::read_dir(self.root.join("blocks"))? {
            for b in std::fs::read_dir(shard?.path())? {
                n += 1;
                bytes += b?.metadata()?.len();
            }
        }
        Ok((n, bytes))
    }

    /// Walks the DAG under `root` as far as this store holds it: the blocks
    /// and bytes here, and the CIDs missing (a corrupt block counts as
    /// missing: it was just quarantined). Leaves are checked for presence
    /// only; inner nodes are read, verified, and followed.
    pub fn walk(&self, root: &Cid) -> Result<Walk, StoreError> {
        let mut w = Walk::default();
        let mut seen = std::collections::HashSet::new();
        // A leaf's expected size is its link's: a leaf of another size (a
        // write a crash cut short) counts as missing and is removed.
        let mut stack: Vec<(Cid, Option<u64>)> = vec![(*root, None)];
        while let Some((c, size)) = stack.pop() {
            if !seen.insert(c) {
                continue;
            }
            if c.codec() == RAW {
                match std::fs::metadata(self.path(&c)) {
                    Ok(m) if size.is_none_or(|s| s == m.len()) => {
                        w.blocks += 1;
                        w.dag_size += m.len();
                    }
                    Ok(_) => {
                        tracing::warn!(cid = %c, "R1FS leaf of the wrong size on disk: removed, to be fetched again");
                        self.remove(&c)?;
                        w.missing.push(c);
                    }
                    Err(_) => w.missing.push(c),
                }
                continue;
            }
            match self.get(&c) {
                Ok(bytes) => {
                    w.blocks += 1;
                    w.dag_size += bytes.len() as u64;
                    let links = super::dagpb::links(&c, &bytes).map_err(|e| StoreError::NotAFile(c.to_string(), e))?;
                    stack.extend(links.into_iter().map(|l| (l.cid, Some(l.tsize).filter(|t| *t > 0))));
                }
                Err(StoreError::NotFound(_) | StoreError::Corrupt { .. }) => w.missing.push(c),
                Err(e) => return Err(e),
            }
        }
        Ok(w)
    }

    /// Removes every block not reachable from `roots` and older than
    /// `grace` (a block that young may belong to an add or a fetch whose pin
    /// is not written yet).
    pub fn gc(&self, roots: &[Cid], grace: std::time::Duration) -> Result<Gc, StoreError> {
        let mut keep = std::collections::HashSet::new();
        for root in roots {
            let mut stack = vec![*root];
            while let Some(c) = stack.pop() {
                if !keep.insert(canonical(&c)) || c.codec() == RAW {
                    continue;
                }
                if let Ok(bytes) = self.get(&c) {
                    if let Ok(links) = super::dagpb::links(&c, &bytes) {
                        stack.extend(links.into_iter().map(|l| l.cid));
                    }
                }
            }
        }
        let cutoff = std::time::SystemTime::now() - grace;
        let mut g = Gc::default();
        for shard in std::fs::read_dir(self.root.join("blocks"))? {
            for b in std::fs::read_dir(shard?.path())? {
                let b = b?;
                let meta = b.metadata()?;
                let name = b.file_name().to_string_lossy().to_string();
                if keep.contains(&name) || meta.modified().is_ok_and(|m| m > cutoff) {
                    g.kept += 1;
                    continue;
                }
                std::fs::remove_file(b.path())?;
                g.removed += 1;
                g.freed += meta.len();
            }
        }
        Ok(g)
    }

    /// Writes the content of file `cid` (a raw block or a UnixFS file DAG)
    /// to `out`, every block verified on the way; returns the bytes written.
    pub fn cat(&self, cid: &Cid, out: &mut dyn Write) -> Result<u64, StoreError> {
        self.cat_with(cid, out, &mut |c| self.get(c))
    }

    /// As [`BlockStore::cat`], each block read through `get` (which may
    /// fetch what is missing or corrupt here).
    pub fn cat_with(
        &self,
        cid: &Cid,
        out: &mut dyn Write,
        get: &mut dyn FnMut(&Cid) -> Result<Vec<u8>, StoreError>,
    ) -> Result<u64, StoreError> {
        use rust_unixfs::file::visit::IdleFileVisit;
        let root = get(cid)?;
        if cid.codec() == RAW {
            out.write_all(&root)?;
            return Ok(root.len() as u64);
        }
        let not_file = |e: &dyn std::fmt::Display| StoreError::NotAFile(cid.to_string(), e.to_string());
        let (content, _, _, mut step) = IdleFileVisit::default().start(&root).map_err(|e| not_file(&e))?;
        out.write_all(content)?;
        let mut written = content.len() as u64;
        while let Some(visit) = step {
            let next = *visit.pending_links().0;
            let block = get(&next)?;
            let (content, rest) = visit.continue_walk(&block, &mut None).map_err(|e| not_file(&e))?;
            out.write_all(content)?;
            written += content.len() as u64;
            step = rest;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::r1fs::add;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("r1fs-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn store_file(store: &BlockStore, data: &[u8]) -> Cid {
        let added = add::add_reader(
            data,
            &mut |cid, block| store.put(&cid, &block).map(|_| ()).map_err(io::Error::other),
            &mut |_| {},
        )
        .unwrap();
        added.cid
    }

    #[test]
    fn files_round_trip_through_the_disk() {
        let dir = tmpdir("roundtrip");
        let store = BlockStore::open(&dir).unwrap();
        for len in [0, 1, add::CHUNK - 1, add::CHUNK, add::CHUNK + 1, 5 * add::CHUNK + 3, 175 * add::CHUNK + 1] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
            let cid = store_file(&store, &data);
            let mut out = vec![];
            assert_eq!(store.cat(&cid, &mut out).unwrap(), len as u64);
            assert!(out == data, "{len} bytes come back as they went in");
        }
        let (blocks, _) = store.usage().unwrap();
        assert!(blocks > 180, "{blocks} blocks on disk");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_block_that_does_not_hash_to_its_cid_is_refused_and_a_corrupted_one_quarantined() {
        let dir = tmpdir("corrupt");
        let store = BlockStore::open(&dir).unwrap();
        let data: Vec<u8> = (0..3 * add::CHUNK).map(|i| (i % 256) as u8).collect();
        let cid = store_file(&store, &data);
        let leaf = add::add_reader(&data[..add::CHUNK], &mut |_, _| Ok(()), &mut |_| {}).unwrap().cid;
        assert!(matches!(store.put(&leaf, b"not the chunk"), Err(StoreError::Mismatch(_))));
        // Bit rot: one byte of a leaf flips on disk.
        let path = store.path(&leaf);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = store.cat(&cid, &mut io::sink()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(!store.has(&leaf), "the corrupt block is out of the store");
        assert_eq!(std::fs::read_dir(dir.join("quarantine")).unwrap().count(), 1);
        // Healed by putting the right bytes again (as a fetch from a peer would).
        assert!(store.put(&leaf, &data[..add::CHUNK]).unwrap());
        let mut out = vec![];
        store.cat(&cid, &mut out).unwrap();
        assert!(out == data);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn walks_find_what_is_missing_and_gc_keeps_what_is_pinned() {
        let dir = tmpdir("walk");
        let store = BlockStore::open(&dir).unwrap();
        let kept: Vec<u8> = (0..3 * add::CHUNK).map(|i| (i % 251) as u8).collect();
        let dropped: Vec<u8> = (0..2 * add::CHUNK).map(|i| (i % 241) as u8).collect();
        let (k, d) = (store_file(&store, &kept), store_file(&store, &dropped));
        let whole = store.walk(&k).unwrap();
        assert_eq!((whole.blocks, whole.missing.len()), (4, 0));
        let leaf = add::add_reader(&kept[add::CHUNK..2 * add::CHUNK], &mut |_, _| Ok(()), &mut |_| {}).unwrap().cid;
        store.remove(&leaf).unwrap();
        assert_eq!(store.walk(&k).unwrap().missing, vec![leaf]);
        store.put(&leaf, &kept[add::CHUNK..2 * add::CHUNK]).unwrap();
        // A leaf a crash cut short is missing (and removed), not present.
        std::fs::write(store.path(&leaf), &kept[add::CHUNK..add::CHUNK + 10]).unwrap();
        assert_eq!(store.walk(&k).unwrap().missing, vec![leaf]);
        assert!(!store.has(&leaf));
        store.put(&leaf, &kept[add::CHUNK..2 * add::CHUNK]).unwrap();
        // Young blocks are spared whatever the roots say.
        assert_eq!(store.gc(&[k], std::time::Duration::from_secs(600)).unwrap().removed, 0);
        let g = store.gc(&[k], std::time::Duration::ZERO).unwrap();
        assert_eq!((g.removed, g.kept), (3, 4), "the other file's 2 leaves and root go");
        assert!(store.walk(&d).unwrap().missing.contains(&d));
        let mut out = vec![];
        store.cat(&k, &mut out).unwrap();
        assert!(out == kept);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_write_a_crash_interrupted_is_never_visible() {
        let dir = tmpdir("crash");
        let store = BlockStore::open(&dir).unwrap();
        let cid = store_file(&store, b"whole");
        // What a crash between write and rename leaves behind.
        std::fs::write(dir.join("tmp").join("half-written"), b"wh").unwrap();
        let store = BlockStore::open(&dir).unwrap();
        assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0, "cleared at open");
        assert_eq!(store.usage().unwrap().0, 1);
        assert_eq!(store.get(&cid).unwrap(), b"whole");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
