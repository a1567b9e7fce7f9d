//! The replica's in-memory index: for every stored key, the version it
//! holds (clock, writer, version hash, etcd revision), plus what
//! anti-entropy compares: [`BUCKETS`] bucket digests, each the XOR of the
//! version hashes of the keys that hash into it. Two replicas with the same
//! records have the same digests; a differing bucket is then listed key by
//! key ([`Index::summary`]) and only the versions the asker lacks are
//! fetched ([`Index::wanted`]). Pure: fed by the etcd watch and by writes.

use super::record::{key_hash, Hlc, Record};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Buckets of the anti-entropy digest (a power of two).
pub const BUCKETS: usize = 4096;

fn bucket_of(key_hash: u64) -> usize {
    (key_hash >> 52) as usize
}

/// What the index knows of one stored key.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub hlc: Hlc,
    pub writer: String,
    pub ver: u64,
    pub key_hash: u64,
    /// etcd `mod_revision` of the stored record (compare-and-swap on it).
    pub mod_rev: i64,
    pub tombstone: bool,
    pub expires: Option<i64>,
    /// Size of the stored record.
    pub bytes: usize,
}

impl Entry {
    pub fn of(rec: &Record, stored: &str, mod_rev: i64, bytes: usize) -> Self {
        Self {
            hlc: rec.hlc,
            writer: rec.writer.clone(),
            ver: rec.version_hash(),
            key_hash: key_hash(stored),
            mod_rev,
            tombstone: rec.is_tombstone(),
            expires: rec.expires,
            bytes,
        }
    }

    /// A stored value that is not a record (written to etcd by something
    /// else): any record replaces it.
    pub fn unreadable(stored: &str, mod_rev: i64, bytes: usize) -> Self {
        Self {
            hlc: Hlc(0),
            writer: String::new(),
            ver: 0,
            key_hash: key_hash(stored),
            mod_rev,
            tombstone: true,
            expires: None,
            bytes,
        }
    }

    /// Whether `rec` wins over the version this entry describes.
    pub fn loses_to(&self, rec: &Record) -> bool {
        match (rec.hlc, rec.writer.as_str()).cmp(&(self.hlc, self.writer.as_str())) {
            std::cmp::Ordering::Equal => rec.version_hash() > self.ver,
            o => o == std::cmp::Ordering::Greater,
        }
    }
}

/// One line of a bucket listing: key hash, clock, version hash.
pub type Line = (u64, Hlc, u64);

#[derive(Debug)]
pub struct Index {
    entries: BTreeMap<String, Entry>,
    by_hash: HashMap<u64, String>,
    buckets: Vec<u64>,
    members: Vec<BTreeSet<u64>>,
    expiring: BTreeSet<(i64, String)>,
    tombstones: BTreeSet<(Hlc, String)>,
    bytes: usize,
}

impl Default for Index {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            by_hash: HashMap::new(),
            buckets: vec![0; BUCKETS],
            members: vec![BTreeSet::new(); BUCKETS],
            expiring: BTreeSet::new(),
            tombstones: BTreeSet::new(),
            bytes: 0,
        }
    }
}

/// Size of the replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    pub records: usize,
    pub tombstones: usize,
    pub bytes: usize,
}

impl Index {
    pub fn get(&self, stored: &str) -> Option<&Entry> {
        self.entries.get(stored)
    }

    /// Records an entry seen at `entry.mod_rev`; an older revision than the
    /// one held (a watch event behind a write) changes nothing.
    pub fn upsert(&mut self, stored: &str, entry: Entry) {
        if self.entries.get(stored).is_some_and(|e| e.mod_rev >= entry.mod_rev) {
            return;
        }
        self.drop_entry(stored);
        let b = bucket_of(entry.key_hash);
        self.buckets[b] ^= entry.ver;
        self.members[b].insert(entry.key_hash);
        self.by_hash.insert(entry.key_hash, stored.to_string());
        if let Some(e) = entry.expires {
            self.expiring.insert((e, stored.to_string()));
        }
        if entry.tombstone {
            self.tombstones.insert((entry.hlc, stored.to_string()));
        }
        self.bytes += entry.bytes;
        self.entries.insert(stored.to_string(), entry);
    }

    /// The key was deleted from etcd at `mod_rev`.
    pub fn remove(&mut self, stored: &str, mod_rev: i64) {
        if self.entries.get(stored).is_some_and(|e| e.mod_rev < mod_rev) {
            self.drop_entry(stored);
        }
    }

    fn drop_entry(&mut self, stored: &str) {
        let Some(old) = self.entries.remove(stored) else { return };
        let b = bucket_of(old.key_hash);
        self.buckets[b] ^= old.ver;
        self.members[b].remove(&old.key_hash);
        self.by_hash.remove(&old.key_hash);
        if let Some(e) = old.expires {
            self.expiring.remove(&(e, stored.to_string()));
        }
        if old.tombstone {
            self.tombstones.remove(&(old.hlc, stored.to_string()));
        }
        self.bytes -= old.bytes;
    }

    /// Drops what the index holds for a key that etcd no longer has.
    pub fn forget(&mut self, stored: &str) {
        self.drop_entry(stored);
    }

    pub fn stats(&self) -> Stats {
        Stats { records: self.entries.len(), tombstones: self.tombstones.len(), bytes: self.bytes }
    }

    /// Stored keys starting with `prefix`, in order.
    pub fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a Entry)> + 'a {
        self.entries.range(prefix.to_string()..).take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// Keys to delete now, with their revision and whether each is a
    /// tombstone: records past their TTL, and tombstones older than the GC
    /// horizon (`tombstone_before` in unix ms).
    pub fn due(&self, now_ms: i64, tombstone_before: u64) -> Vec<(String, i64, bool)> {
        let expired = self.expiring.iter().take_while(|(e, _)| *e <= now_ms).map(|(_, k)| k);
        let old = self.tombstones.iter().take_while(|(h, _)| h.wall_ms() < tombstone_before).map(|(_, k)| k);
        let mut out: Vec<(String, i64, bool)> = expired
            .chain(old)
            .filter_map(|k| self.entries.get(k).map(|e| (k.clone(), e.mod_rev, e.tombstone)))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn digest(&self) -> Vec<u64> {
        self.buckets.clone()
    }

    /// Buckets whose digest differs from `theirs` (all when the sizes differ).
    pub fn differing(&self, theirs: &[u64]) -> Vec<u16> {
        if theirs.len() != BUCKETS {
            return (0..BUCKETS as u16).collect();
        }
        (0..BUCKETS).filter(|&b| self.buckets[b] != theirs[b]).map(|b| b as u16).collect()
    }

    /// Every key of the given buckets, as (key hash, clock, version hash).
    pub fn summary(&self, buckets: &[u16]) -> Vec<Line> {
        let mut out = vec![];
        for &b in buckets {
            for h in self.members.get(b as usize).into_iter().flatten() {
                if let Some(e) = self.by_hash.get(h).and_then(|k| self.entries.get(k)) {
                    out.push((*h, e.hlc, e.ver));
                }
            }
        }
        out
    }

    /// Key hashes of `theirs` worth fetching: ones we lack, or hold an
    /// older (or, at the same clock, a different) version of.
    pub fn wanted(&self, theirs: &[Line]) -> Vec<u64> {
        theirs
            .iter()
            .filter(|(h, hlc, ver)| match self.by_hash.get(h).and_then(|k| self.entries.get(k)) {
                None => true,
                Some(e) => *hlc > e.hlc || (*hlc == e.hlc && *ver != e.ver),
            })
            .map(|(h, _, _)| *h)
            .collect()
    }

    /// The stored key a key hash names.
    pub fn stored_of(&self, key_hash: u64) -> Option<&String> {
        self.by_hash.get(&key_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cstore::record::{newer, parse_value, Slot};
    use libp2p_identity::Keypair;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;

    /// A replica as the merge rule leaves it: per slot, the winning record.
    fn merge_all(records: &[Record]) -> BTreeMap<Slot, Record> {
        let mut m: BTreeMap<Slot, Record> = BTreeMap::new();
        for r in records {
            match m.get(&r.slot) {
                Some(cur) if !newer(r, cur) => {}
                _ => {
                    m.insert(r.slot.clone(), r.clone());
                }
            }
        }
        m
    }

    fn index_of(m: &BTreeMap<Slot, Record>) -> Index {
        let mut ix = Index::default();
        for (i, r) in m.values().enumerate() {
            ix.upsert(&r.slot.stored(), Entry::of(r, &r.slot.stored(), i as i64 + 1, 10));
        }
        ix
    }

    #[test]
    fn concurrent_writers_converge_whatever_the_order() {
        let writers: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..200 {
            // Writes from three nodes to a few shared slots, with clocks
            // that collide often (same millisecond, same counter).
            let records: Vec<Record> = (0..rng.gen_range(1..30))
                .map(|i| {
                    let w = &writers[rng.gen_range(0..3)];
                    let slot = Slot::field("h", &format!("f{}", rng.gen_range(0..4)));
                    let value = (rng.gen_range(0..5) > 0).then(|| parse_value(&i.to_string()).unwrap());
                    Record::sign(w, slot, value, Hlc::new(rng.gen_range(1..4), rng.gen_range(0..2)), None)
                })
                .collect();
            let reference = merge_all(&records);
            for _ in 0..5 {
                let mut shuffled = records.clone();
                shuffled.shuffle(&mut rng);
                let replica = merge_all(&shuffled);
                assert_eq!(replica, reference, "round {round}: the order of arrival changed the result");
                assert_eq!(index_of(&replica).digest(), index_of(&reference).digest());
            }
        }
    }

    #[test]
    fn digests_find_exactly_what_one_side_lacks() {
        let w = Keypair::generate_ed25519();
        let rec = |i: usize, t: u64| {
            Record::sign(&w, Slot::flat(&format!("k{i}")), parse_value("1").ok(), Hlc::new(t, 0), None)
        };
        let all: Vec<Record> = (0..500).map(|i| rec(i, 10)).collect();
        let full = index_of(&merge_all(&all));
        // A replica that missed 40 writes and holds 10 older versions.
        let mut partial: Vec<Record> = all[40..].to_vec();
        partial.extend((0..10).map(|i| rec(i, 5)));
        let part = index_of(&merge_all(&partial));
        let differ = full.differing(&part.digest());
        assert!(!differ.is_empty() && differ.len() <= 40);
        let wanted = part.wanted(&full.summary(&differ));
        let mut got: Vec<&String> = wanted.iter().map(|h| full.stored_of(*h).unwrap()).collect();
        got.sort();
        let mut expect: Vec<String> = (0..40).map(|i| format!("k/k{i}")).collect();
        expect.sort();
        assert_eq!(got, expect.iter().collect::<Vec<_>>());
        // The newer side wants nothing from the older one.
        assert!(full.wanted(&part.summary(&part.differing(&full.digest()))).is_empty());
        assert_eq!(full.differing(&full.digest()), Vec::<u16>::new());
    }

    #[test]
    fn stale_watch_events_do_not_undo_newer_writes_and_due_lists_expiry_and_old_tombstones() {
        let w = Keypair::generate_ed25519();
        let mut ix = Index::default();
        let live = Record::sign(&w, Slot::flat("a"), parse_value("1").ok(), Hlc::new(100, 0), Some(5_000));
        let newer_live = Record::sign(&w, Slot::flat("a"), parse_value("2").ok(), Hlc::new(200, 0), None);
        ix.upsert("k/a", Entry::of(&newer_live, "k/a", 8, 10));
        ix.upsert("k/a", Entry::of(&live, "k/a", 7, 10));
        assert_eq!(ix.get("k/a").unwrap().hlc, Hlc::new(200, 0));
        ix.remove("k/a", 6);
        assert!(ix.get("k/a").is_some());
        let ttl = Record::sign(&w, Slot::flat("t"), parse_value("1").ok(), Hlc::new(100, 0), Some(5_000));
        let tomb = Record::sign(&w, Slot::flat("d"), None, Hlc::new(1_000, 0), None);
        ix.upsert("k/t", Entry::of(&ttl, "k/t", 9, 10));
        ix.upsert("k/d", Entry::of(&tomb, "k/d", 10, 10));
        assert_eq!(ix.due(4_999, 0), vec![]);
        assert_eq!(ix.due(5_000, 0), vec![("k/t".into(), 9, false)]);
        assert_eq!(ix.due(5_000, 1_001), vec![("k/d".into(), 10, true), ("k/t".into(), 9, false)]);
        assert_eq!(ix.stats(), Stats { records: 3, tombstones: 1, bytes: 30 });
        ix.remove("k/t", 11);
        ix.remove("k/d", 11);
        assert_eq!(ix.stats(), Stats { records: 1, tombstones: 0, bytes: 10 });
        assert_eq!(ix.due(i64::MAX, u64::MAX), vec![]);
    }
}
