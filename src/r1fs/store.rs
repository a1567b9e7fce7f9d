//! R1FS blocks on disk, in the operator's data directory (`--data-dir`;
//! in a cluster, a volume mounted there). Layout under the root:
//!
//! - `packs/<n>.pack`: blocks appended one after another, a new pack
//!   past [`PACK_BYTES`];
//! - `index.redb`: CID → (pack, offset, length, last touched), a `redb`
//!   database, the only record of which bytes are a block;
//! - `quarantine/<CID>.<unix ms>`: blocks whose bytes no longer match
//!   their CID, kept for inspection.
//!
//! Why packs and not a file per block (IPFS's flatfs): making a file costs
//! an inode, and on the disks measured here that is 0.6–0.9 ms, more than
//! hashing and writing the 256 KiB it holds; appending costs nothing but
//! the bytes.
//!
//! Writes: the bytes are appended to the current pack, then the index
//! entry is committed. A block from elsewhere ([`BlockStore::put`]) is
//! verified and made durable at once (the pack fsynced, then the index
//! committed durably); blocks this node makes itself (an add) or has just
//! verified (a fetch) use [`BlockStore::put_own`] and one
//! [`BlockStore::sync`] at the end. The index is never made durable
//! before the bytes it points to (both under one lock, pack first), so a
//! crash leaves either the whole block or no entry; bytes a crash left in
//! a pack without an entry are dead space, reclaimed by compaction. Every
//! read checks the block against its CID anyway: a block that fails (bit
//! rot, a hand edit) is copied to quarantine, its entry removed, and it
//! reads as corrupt, so that it is fetched or added again (never served).
//!
//! Removing a block drops its entry; a GC then compacts every pack (but
//! the current one) that is less than half live: its live blocks are
//! appended anew and the pack file deleted.

use super::cid::{canonical, Cid, RAW};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A pack takes new blocks until it holds this many bytes.
pub const PACK_BYTES: u64 = 256 * 1024 * 1024;

/// CID bytes → (pack, offset, length, last touched in unix ms).
const INDEX: TableDefinition<&[u8], (u32, u64, u32, u64)> = TableDefinition::new("blocks");

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

/// Where a block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    pack: u32,
    offset: u64,
    len: u32,
    touched: u64,
}

impl Loc {
    fn from_tuple((pack, offset, len, touched): (u32, u64, u32, u64)) -> Self {
        Self { pack, offset, len, touched }
    }
    fn tuple(self) -> (u32, u64, u32, u64) {
        (self.pack, self.offset, self.len, self.touched)
    }
    /// The same bytes on disk (whenever touched).
    fn same_place(&self, other: &Loc) -> bool {
        (self.pack, self.offset) == (other.pack, other.offset)
    }
}

/// An entry whose bytes are not there: past its pack's end, or in a pack
/// that is gone.
fn unreadable(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::NotFound)
}

/// Every index entry, in key order.
fn scan(db: &redb::Database, mut f: impl FnMut(&[u8], Loc)) -> io::Result<()> {
    let tx = db.begin_read().map_err(db_err)?;
    let t = tx.open_table(INDEX).map_err(db_err)?;
    for e in t.iter().map_err(db_err)? {
        let (k, v) = e.map_err(db_err)?;
        f(k.value(), Loc::from_tuple(v.value()));
    }
    Ok(())
}

/// The numbers of the packs on disk.
fn pack_ids(root: &Path) -> io::Result<Vec<u32>> {
    let mut ids = vec![];
    for e in std::fs::read_dir(root.join("packs"))? {
        let name = e?.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_suffix(".pack").and_then(|n| n.parse().ok()) {
            ids.push(n);
        }
    }
    Ok(ids)
}

fn db_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("R1FS index: {e}"))
}

fn now_ms() -> u64 {
    crate::p2p::now_ms() as u64
}

/// The writing side: one at a time.
#[derive(Debug)]
struct Writer {
    pack: u32,
    file: std::fs::File,
    len: u64,
    /// Packs written since the last sync.
    dirty: std::collections::BTreeSet<u32>,
    /// Live bytes per pack.
    live: BTreeMap<u32, u64>,
}

impl Writer {
    /// Makes pack `p`'s bytes durable.
    fn sync_pack(&self, root: &Path, p: u32) -> io::Result<()> {
        match p == self.pack {
            true => self.file.sync_data(),
            false => std::fs::File::open(pack_path(root, p))?.sync_data(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    db: redb::Database,
    w: Mutex<Writer>,
    /// Open packs, for reads.
    files: Mutex<HashMap<u32, Arc<std::fs::File>>>,
    pack_bytes: u64,
}

impl Drop for Inner {
    /// Closing redb makes its last commits durable: the bytes they point
    /// to must be first.
    fn drop(&mut self) {
        if let Ok(w) = self.w.get_mut() {
            for p in std::mem::take(&mut w.dirty) {
                if let Err(e) = w.sync_pack(&self.root, p) {
                    tracing::error!(pack = p, error = %e, "R1FS pack not synced at close");
                }
            }
        }
    }
}

/// The blocks of one operator. Clones share the store.
#[derive(Clone, Debug)]
pub struct BlockStore {
    inner: Arc<Inner>,
}

impl BlockStore {
    /// Opens (creating) a store under `root`. A store of the earlier
    /// layout (a file per block under `blocks/`) is moved into packs.
    pub fn open(root: &Path) -> io::Result<Self> {
        Self::open_with(root, PACK_BYTES)
    }

    /// As [`BlockStore::open`], with packs of `pack_bytes`.
    pub fn open_with(root: &Path, pack_bytes: u64) -> io::Result<Self> {
        for d in ["packs", "quarantine"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        let db = redb::Database::create(root.join("index.redb")).map_err(db_err)?;
        {
            let tx = db.begin_write().map_err(db_err)?;
            tx.open_table(INDEX).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
        }
        let mut live = BTreeMap::new();
        scan(&db, |_, l| *live.entry(l.pack).or_default() += l.len as u64)?;
        let packs = pack_ids(root)?;
        // Appends go after whatever the last pack holds (a torn tail is
        // dead space).
        // Never a number the index still names for a pack that is gone:
        // its entries would point into new bytes.
        let pack = match (packs.iter().max().copied(), live.keys().max().copied()) {
            (Some(d), Some(i)) if i > d => i + 1,
            (Some(d), _) => d,
            (None, Some(i)) => i + 1,
            (None, None) => 0,
        };
        let file = std::fs::OpenOptions::new().create(true).append(true).open(pack_path(root, pack))?;
        let len = file.metadata()?.len();
        let w = Writer { pack, file, len, dirty: Default::default(), live };
        let store = Self {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                db,
                w: Mutex::new(w),
                files: Default::default(),
                pack_bytes,
            }),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Moves the blocks of the one-file-per-block layout into packs (each
    /// verified on the way), then removes that layout.
    fn migrate(&self) -> io::Result<()> {
        let old = self.inner.root.join("blocks");
        let Ok(shards) = std::fs::read_dir(&old) else { return Ok(()) };
        let mut moved = 0;
        for shard in shards {
            for b in std::fs::read_dir(shard?.path())? {
                let path = b?.path();
                let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                let (Ok(cid), Ok(bytes)) = (Cid::try_from(name.as_str()), std::fs::read(&path)) else { continue };
                if verifies(&cid, &bytes) {
                    self.put_own(&cid, &bytes)?;
                    moved += 1;
                }
            }
        }
        self.sync()?;
        std::fs::remove_dir_all(&old)?;
        let _ = std::fs::remove_dir_all(self.inner.root.join("tmp"));
        tracing::info!(blocks = moved, "R1FS store moved into packs");
        Ok(())
    }

    fn loc(&self, cid: &Cid) -> io::Result<Option<Loc>> {
        let tx = self.inner.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(INDEX).map_err(db_err)?;
        Ok(t.get(cid.to_bytes().as_slice()).map_err(db_err)?.map(|v| Loc::from_tuple(v.value())))
    }

    pub fn has(&self, cid: &Cid) -> bool {
        self.loc(cid).ok().flatten().is_some()
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

    /// Makes every write so far durable: the packs written, then the index.
    pub fn sync(&self) -> io::Result<()> {
        let mut w = self.inner.w.lock().expect("store writer lock");
        self.sync_locked(&mut w)
    }

    fn sync_locked(&self, w: &mut Writer) -> io::Result<()> {
        // Each pack leaves the list only once synced: a failure keeps the
        // rest for the next sync, and the index is not made durable.
        for p in w.dirty.clone() {
            w.sync_pack(&self.inner.root, p)?;
            w.dirty.remove(&p);
        }
        // An empty durable commit makes the earlier ones durable.
        let mut tx = self.inner.db.begin_write().map_err(db_err)?;
        tx.set_durability(redb::Durability::Immediate).map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// Appends `bytes` to the current pack and indexes them (under the
    /// writer's lock); a block already here is only touched (a GC spares
    /// it until the add or fetch that found it has pinned it).
    fn write(&self, cid: &Cid, bytes: &[u8], durable: bool) -> io::Result<bool> {
        let key = cid.to_bytes();
        let mut w = self.inner.w.lock().expect("store writer lock");
        let mut tx = self.inner.db.begin_write().map_err(db_err)?;
        tx.set_durability(redb::Durability::None).map_err(db_err)?;
        let (new, loc) = {
            let mut t = tx.open_table(INDEX).map_err(db_err)?;
            let old = t.get(key.as_slice()).map_err(db_err)?.map(|v| Loc::from_tuple(v.value()));
            let loc = match old {
                Some(l) => Loc { touched: now_ms(), ..l },
                None => self.append(&mut w, bytes)?,
            };
            t.insert(key.as_slice(), loc.tuple()).map_err(db_err)?;
            (old.is_none(), loc)
        };
        tx.commit().map_err(db_err)?;
        if new {
            *w.live.entry(loc.pack).or_default() += bytes.len() as u64;
        }
        // Also when the block was here already: an earlier `put_own` of it
        // may not be synced yet.
        if durable {
            self.sync_locked(&mut w)?;
        }
        Ok(new)
    }

    fn append(&self, w: &mut Writer, bytes: &[u8]) -> io::Result<Loc> {
        if w.len > 0 && w.len + bytes.len() as u64 > self.inner.pack_bytes {
            // Opened before the writer switches: a failure leaves it whole.
            let next = w.pack + 1;
            let file = std::fs::OpenOptions::new().create(true).append(true).open(pack_path(&self.inner.root, next))?;
            // The new pack's name durable before any entry names it.
            std::fs::File::open(self.inner.root.join("packs"))?.sync_all()?;
            let len = file.metadata()?.len();
            // The full pack is made durable when the next sync comes.
            w.dirty.insert(w.pack);
            (w.pack, w.file, w.len) = (next, file, len);
        }
        w.file.write_all(bytes)?;
        // Where the bytes really went (an append lands at the file's end,
        // wherever a failed write or a hand-cut pack left it).
        use std::io::Seek;
        w.len = w.file.stream_position()?;
        let loc = Loc { pack: w.pack, offset: w.len - bytes.len() as u64, len: bytes.len() as u32, touched: now_ms() };
        w.dirty.insert(w.pack);
        Ok(loc)
    }

    fn pack_file(&self, pack: u32) -> io::Result<Arc<std::fs::File>> {
        let mut files = self.inner.files.lock().expect("store files lock");
        if let Some(f) = files.get(&pack) {
            return Ok(f.clone());
        }
        let f = Arc::new(std::fs::File::open(pack_path(&self.inner.root, pack))?);
        files.insert(pack, f.clone());
        Ok(f)
    }

    fn read(&self, l: Loc) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; l.len as usize];
        self.pack_file(l.pack)?.read_exact_at(&mut buf, l.offset)?;
        Ok(buf)
    }

    /// Reads a block, verified; a block that fails verification goes to
    /// quarantine and the error says where.
    pub fn get(&self, cid: &Cid) -> Result<Vec<u8>, StoreError> {
        // The entry and the read of its bytes.
        let found = |this: &Self| this.loc(cid).map(|o| o.map(|l| (l, this.read(l))));
        // A compaction may move the block between the lookup and the read.
        let mut attempt = found(self);
        if !matches!(attempt, Ok(None | Some((_, Ok(_))))) {
            attempt = found(self);
        }
        let Some((at, read)) = attempt? else { return Err(StoreError::NotFound(cid.to_string())) };
        let bytes = match read {
            Ok(b) => b,
            // Cut short or deleted by hand: the block is not here.
            Err(e) if unreadable(&e) => {
                tracing::warn!(%cid, error = %e, "R1FS block unreadable: dropped, to be fetched again");
                // Only that entry: a write may have put the block back since.
                self.remove_where(cid, |now| now.same_place(&at))?;
                return Err(StoreError::NotFound(cid.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        if verifies(cid, &bytes) {
            return Ok(bytes);
        }
        let to = self.inner.root.join("quarantine").join(format!("{}.{}", canonical(cid), now_ms()));
        std::fs::write(&to, &bytes)?;
        self.remove_where(cid, |now| now.same_place(&at))?;
        tracing::warn!(%cid, quarantined = %to.display(), "R1FS block corrupt on disk: quarantined");
        Err(StoreError::Corrupt { cid: cid.to_string(), quarantined: to.display().to_string() })
    }

    /// Removes a block; returns whether it was there.
    pub fn remove(&self, cid: &Cid) -> io::Result<bool> {
        Ok(self.remove_where(cid, |_| true)?.is_some())
    }

    /// Removes a block if its entry, read in the same transaction, passes
    /// `keep_out` (a GC's "still old", a reader's "still where it failed");
    /// returns the entry removed.
    fn remove_where(&self, cid: &Cid, keep_out: impl Fn(&Loc) -> bool) -> io::Result<Option<Loc>> {
        let mut w = self.inner.w.lock().expect("store writer lock");
        let mut tx = self.inner.db.begin_write().map_err(db_err)?;
        tx.set_durability(redb::Durability::None).map_err(db_err)?;
        let old = {
            let mut t = tx.open_table(INDEX).map_err(db_err)?;
            let key = cid.to_bytes();
            let cur = t.get(key.as_slice()).map_err(db_err)?.map(|v| Loc::from_tuple(v.value()));
            match cur.filter(|l| keep_out(l)) {
                Some(l) => {
                    t.remove(key.as_slice()).map_err(db_err)?;
                    Some(l)
                }
                None => None,
            }
        };
        tx.commit().map_err(db_err)?;
        if let Some(l) = old {
            if let Some(n) = w.live.get_mut(&l.pack) {
                *n = n.saturating_sub(l.len as u64);
            }
        }
        Ok(old)
    }

    /// Number of blocks and their bytes.
    pub fn usage(&self) -> io::Result<(u64, u64)> {
        let (mut n, mut bytes) = (0, 0);
        scan(&self.inner.db, |_, l| {
            n += 1;
            bytes += l.len as u64;
        })?;
        Ok((n, bytes))
    }

    /// Walks the DAG under `root` as far as this store holds it: the blocks
    /// and bytes here, and the CIDs missing (a corrupt block counts as
    /// missing: it was just quarantined). Leaves are checked for presence
    /// only; inner nodes are read, verified, and followed.
    pub fn walk(&self, root: &Cid) -> Result<Walk, StoreError> {
        let mut w = Walk::default();
        let mut seen = std::collections::HashSet::new();
        // A leaf's expected size is its link's: a leaf of another size
        // counts as missing and is removed.
        let mut stack: Vec<(Cid, Option<u64>)> = vec![(*root, None)];
        let mut pack_ends: HashMap<u32, u64> = HashMap::new();
        while let Some((c, size)) = stack.pop() {
            if !seen.insert(c) {
                continue;
            }
            if c.codec() == RAW {
                // Present means within its pack, not only indexed.
                // (A pack's end is looked up again before a leaf is taken
                // for past it: the current pack grows during a walk.)
                let mut within = |l: &Loc| {
                    let inside = |end: u64| l.offset + l.len as u64 <= end;
                    if pack_ends.get(&l.pack).is_some_and(|e| inside(*e)) {
                        return true;
                    }
                    let end = std::fs::metadata(pack_path(&self.inner.root, l.pack)).map(|m| m.len()).unwrap_or(0);
                    pack_ends.insert(l.pack, end);
                    inside(end)
                };
                match self.loc(&c)? {
                    Some(l) if !within(&l) => {
                        tracing::warn!(cid = %c, "R1FS leaf past the end of its pack: dropped, to be fetched again");
                        self.remove_where(&c, |now| now.same_place(&l))?;
                        w.missing.push(c);
                    }
                    Some(l) if size.is_none_or(|s| s == l.len as u64) => {
                        w.blocks += 1;
                        w.dag_size += l.len as u64;
                    }
                    Some(_) => {
                        tracing::warn!(cid = %c, "R1FS leaf of the wrong size: removed, to be fetched again");
                        self.remove(&c)?;
                        w.missing.push(c);
                    }
                    None => w.missing.push(c),
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

    /// Removes every block not reachable from `roots` and untouched for
    /// `grace` (a block that young may belong to an add or a fetch whose
    /// pin is not written yet), then compacts the packs it left mostly
    /// dead.
    pub fn gc(&self, roots: &[Cid], grace: std::time::Duration) -> Result<Gc, StoreError> {
        let mut keep = std::collections::HashSet::new();
        for root in roots {
            let mut stack = vec![*root];
            while let Some(c) = stack.pop() {
                if !keep.insert(c.to_bytes()) || c.codec() == RAW {
                    continue;
                }
                if let Ok(bytes) = self.get(&c) {
                    if let Ok(links) = super::dagpb::links(&c, &bytes) {
                        stack.extend(links.into_iter().map(|l| l.cid));
                    }
                }
            }
        }
        let cutoff = now_ms().saturating_sub(grace.as_millis() as u64);
        let mut g = Gc::default();
        let mut drop = vec![];
        scan(&self.inner.db, |k, l| match keep.contains(k) || l.touched > cutoff {
            true => g.kept += 1,
            false => drop.push(k.to_vec()),
        })?;
        for k in drop {
            if let Ok(cid) = Cid::try_from(k.as_slice()) {
                // Still old when removed: an add may have touched it since.
                if let Some(l) = self.remove_where(&cid, |l| l.touched <= cutoff)? {
                    g.removed += 1;
                    g.freed += l.len as u64;
                }
            }
        }
        self.compact()?;
        Ok(g)
    }

    /// Rewrites every pack but the current one that is less than half
    /// live: its live blocks are appended anew, made durable, and the pack
    /// deleted.
    fn compact(&self) -> io::Result<()> {
        let mut w = self.inner.w.lock().expect("store writer lock");
        let mut sparse = vec![];
        for p in pack_ids(&self.inner.root)? {
            let size = std::fs::metadata(pack_path(&self.inner.root, p))?.len();
            if p != w.pack && w.live.get(&p).copied().unwrap_or(0) * 2 < size {
                sparse.push(p);
            }
        }
        if sparse.is_empty() {
            return Ok(());
        }
        let mut moved = vec![];
        scan(&self.inner.db, |k, l| {
            if sparse.contains(&l.pack) {
                moved.push((k.to_vec(), l));
            }
        })?;
        let mut added = vec![];
        let mut tx = self.inner.db.begin_write().map_err(db_err)?;
        tx.set_durability(redb::Durability::None).map_err(db_err)?;
        {
            let mut t = tx.open_table(INDEX).map_err(db_err)?;
            for (k, l) in moved {
                let bytes = match self.read(l) {
                    Ok(b) => b,
                    // An entry past its pack's end: not a block, dropped.
                    Err(e) if unreadable(&e) => {
                        t.remove(k.as_slice()).map_err(db_err)?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let new = self.append(&mut w, &bytes)?;
                t.insert(k.as_slice(), Loc { touched: l.touched, ..new }.tuple()).map_err(db_err)?;
                added.push((new.pack, l.len as u64));
            }
        }
        tx.commit().map_err(db_err)?;
        for (p, n) in added {
            *w.live.entry(p).or_default() += n;
        }
        // The new places durable before the old pack goes.
        self.sync_locked(&mut w)?;
        let mut files = self.inner.files.lock().expect("store files lock");
        for p in sparse {
            files.remove(&p);
            w.live.remove(&p);
            std::fs::remove_file(pack_path(&self.inner.root, p))?;
        }
        Ok(())
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

fn pack_path(root: &Path, pack: u32) -> PathBuf {
    root.join("packs").join(format!("{pack:08}.pack"))
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
    fn a_256_mib_file_round_trips_through_packs() {
        struct Hashing(Sha256, u64);
        impl Write for Hashing {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.update(b);
                self.1 += b.len() as u64;
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let dir = tmpdir("large");
        let store = BlockStore::open(&dir).unwrap();
        let len = 256 << 20;
        let mut data = vec![0u8; len];
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for b in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let (added, n, _) = store.put_own_all(|sink| add::add_reader(data.as_slice(), sink, &mut |_| {})).unwrap();
        store.sync().unwrap();
        assert_eq!((added.size, n), (len as u64, added.blocks), "every block is new and written");
        let mut out = Hashing(Sha256::new(), 0);
        assert_eq!(store.cat(&added.cid, &mut out).unwrap(), len as u64);
        assert_eq!(out.0.finalize(), Sha256::digest(&data), "the same 256 MiB come back");
        let (m, on_disk) = packs(&dir);
        assert!(m >= 1 && on_disk >= len as u64, "{m} packs, {on_disk} bytes");
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
        rot(&store, &leaf, 100);
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
        // A leaf whose entry says another size than its link is missing
        // (and removed), not present.
        let l = store.loc(&leaf).unwrap().unwrap();
        set_loc(&store, &leaf, Loc { len: 10, ..l });
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

    /// Flips one bit of `cid`'s bytes in its pack, in place.
    fn rot(store: &BlockStore, cid: &Cid, at: u64) {
        let l = store.loc(cid).unwrap().expect("held");
        let f = std::fs::OpenOptions::new().read(true).write(true).open(pack_path(&store.inner.root, l.pack)).unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, l.offset + at).unwrap();
        f.write_all_at(&[b[0] ^ 1], l.offset + at).unwrap();
    }

    fn set_loc(store: &BlockStore, cid: &Cid, l: Loc) {
        let tx = store.inner.db.begin_write().unwrap();
        tx.open_table(INDEX).unwrap().insert(cid.to_bytes().as_slice(), l.tuple()).unwrap();
        tx.commit().unwrap();
    }

    fn packs(dir: &Path) -> (usize, u64) {
        let sizes: Vec<u64> =
            std::fs::read_dir(dir.join("packs")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).collect();
        (sizes.len(), sizes.iter().sum())
    }

    #[test]
    fn a_write_a_crash_interrupted_is_never_visible() {
        let dir = tmpdir("crash");
        let store = BlockStore::open(&dir).unwrap();
        let cid = store_file(&store, b"whole");
        drop(store);
        // What a crash mid-append leaves: bytes with no index entry.
        let pack = std::fs::read_dir(dir.join("packs")).unwrap().next().unwrap().unwrap().path();
        std::fs::OpenOptions::new().append(true).open(&pack).unwrap().write_all(b"half a blo").unwrap();
        let store = BlockStore::open(&dir).unwrap();
        assert_eq!(store.usage().unwrap().0, 1, "only the indexed block is there");
        assert_eq!(store.get(&cid).unwrap(), b"whole");
        // Writes go on after the torn tail.
        let other = store_file(&store, b"after");
        // A pack cut short under an entry: that block is missing, not an
        // error, and the others still read.
        let l = store.loc(&other).unwrap().unwrap();
        let lost = Cid::try_from(canonical(&store_file(&store, b"lost")).as_str()).unwrap();
        let lost_at = store.loc(&lost).unwrap().unwrap();
        std::fs::OpenOptions::new().write(true).open(&pack).unwrap().set_len(lost_at.offset + 2).unwrap();
        assert_eq!(store.walk(&lost).unwrap().missing, vec![lost], "a walk does not take it for present");
        assert!(matches!(store.get(&lost), Err(StoreError::NotFound(_))));
        assert!(!store.has(&lost));
        assert_eq!(l, store.loc(&other).unwrap().unwrap());
        let next = store_file(&store, b"next");
        assert_eq!(store.get(&next).unwrap(), b"next", "appends land where the cut pack ends");
        assert_eq!(store.get(&other).unwrap(), b"after");
        drop(store);
        let store = BlockStore::open(&dir).unwrap();
        assert_eq!((store.get(&cid).unwrap(), store.get(&other).unwrap()), (b"whole".to_vec(), b"after".to_vec()));
        drop(store);
        // The pack is lost while the index still names it: new bytes never
        // go under that number, so the old entries read as missing.
        std::fs::remove_file(&pack).unwrap();
        let store = BlockStore::open(&dir).unwrap();
        let fresh = store_file(&store, b"fresh");
        assert!(matches!(store.get(&cid), Err(StoreError::NotFound(_))));
        assert_eq!(store.get(&fresh).unwrap(), b"fresh");
        assert!(!pack.exists(), "not made again under the lost pack's name");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn packs_roll_over_and_a_gc_compacts_the_ones_it_left_mostly_dead() {
        let dir = tmpdir("compact");
        let store = BlockStore::open_with(&dir, 1024 * 1024).unwrap();
        let kept: Vec<u8> = (0..6 * add::CHUNK).map(|i| (i % 239) as u8).collect();
        let dropped: Vec<u8> = (0..10 * add::CHUNK).map(|i| (i % 233) as u8).collect();
        let d = store_file(&store, &dropped);
        let k = store_file(&store, &kept);
        let (n, before) = packs(&dir);
        assert!(n >= 4, "{n} packs of at most 1 MiB for 4 MiB");
        let g = store.gc(&[k], std::time::Duration::ZERO).unwrap();
        assert_eq!(g.removed, 11, "the dropped file's 10 leaves and root");
        let (m, after) = packs(&dir);
        assert!(m < n && after < before, "packs {n} → {m}, bytes {before} → {after}");
        let (_, live) = store.usage().unwrap();
        assert!(after <= live + 1024 * 1024, "at most one pack of dead or spare space: {after} on disk, {live} live");
        assert!(store.walk(&d).unwrap().missing.contains(&d));
        // What was kept reads back, also after reopening.
        drop(store);
        let store = BlockStore::open_with(&dir, 1024 * 1024).unwrap();
        let mut out = vec![];
        store.cat(&k, &mut out).unwrap();
        assert!(out == kept);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_of_one_file_per_block_is_moved_into_packs() {
        let dir = tmpdir("migrate");
        let data: Vec<u8> = (0..2 * add::CHUNK + 5).map(|i| (i % 227) as u8).collect();
        let mut blocks = vec![];
        let mut keep = |c, b| {
            blocks.push((c, b));
            Ok(())
        };
        let cid = add::add_reader(data.as_slice(), &mut keep, &mut |_| {}).unwrap().cid;
        for (c, b) in &blocks {
            let name = canonical(c);
            let shard = dir.join("blocks").join(&name[name.len() - 2..]);
            std::fs::create_dir_all(&shard).unwrap();
            std::fs::write(shard.join(&name), b).unwrap();
        }
        let store = BlockStore::open(&dir).unwrap();
        assert!(!dir.join("blocks").exists(), "the old layout is gone");
        let mut out = vec![];
        store.cat(&cid, &mut out).unwrap();
        assert!(out == data);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
