//! Pins: the roots R1FS keeps, each with the owners that want it (a
//! reference count by name, so that two models naming one CID, or a user
//! pin and a network replica, release it independently). On disk beside
//! the blocks: `pins/<CID>/<owner>` (owner base64url-encoded), holding the
//! pin's JSON ([`Pin`]); a pin is a file created whole by rename, so a crash
//! leaves it or nothing. GC keeps every block reachable from a pinned root.

use super::cid::{canonical, Cid};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Owner of the pins this node keeps as a network replica.
pub const REPLICA: &str = "replica";

/// Owners of EDIL's trained models: this prefix and the model's uid
/// (reserved: the API refuses it for users' pins).
pub const EDIL_PREFIX: &str = "edil-";

/// What a pin records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pin {
    /// Bytes of every block of the DAG.
    pub dag_size: u64,
    pub blocks: u64,
    /// Unix ms when pinned.
    pub at: i64,
}

#[derive(Clone, Debug)]
pub struct Pins {
    dir: PathBuf,
}

fn encode(owner: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(owner)
}

fn decode(name: &str) -> Option<String> {
    String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(name).ok()?).ok()
}

impl Pins {
    pub fn open(root: &Path) -> io::Result<Self> {
        let dir = root.join("pins");
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Pins `cid` for `owner` (again: the record is replaced).
    pub fn pin(&self, cid: &Cid, owner: &str, pin: &Pin) -> io::Result<()> {
        let dir = self.dir.join(canonical(cid));
        std::fs::create_dir_all(&dir)?;
        // One temporary name per owner: two owners pin one CID at once.
        let tmp = dir.join(format!(".{}.{}.tmp", encode(owner), std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec(pin).map_err(io::Error::other)?)?;
        std::fs::rename(&tmp, dir.join(encode(owner)))?;
        // The pin survives a crash once this returns.
        std::fs::File::open(&dir)?.sync_all()
    }

    /// Releases `owner`'s pin; returns the owners left.
    pub fn unpin(&self, cid: &Cid, owner: &str) -> io::Result<usize> {
        let dir = self.dir.join(canonical(cid));
        match std::fs::remove_file(dir.join(encode(owner))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let left = self.owners(cid)?.len();
        if left == 0 {
            let _ = std::fs::remove_dir(&dir);
        }
        Ok(left)
    }

    /// Owners of `cid`'s pin and what each recorded.
    pub fn owners(&self, cid: &Cid) -> io::Result<BTreeMap<String, Pin>> {
        let dir = self.dir.join(canonical(cid));
        let mut out = BTreeMap::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            // Temporary files start with '.', which base64url never does.
            let Some(owner) = decode(&name).filter(|_| !name.starts_with('.')) else { continue };
            let pin = std::fs::read(e.path()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
            out.insert(owner, pin);
        }
        Ok(out)
    }

    pub fn is_pinned_by(&self, cid: &Cid, owner: &str) -> bool {
        self.dir.join(canonical(cid)).join(encode(owner)).is_file()
    }

    /// Every pinned root with its owners.
    pub fn all(&self) -> io::Result<BTreeMap<Cid, BTreeMap<String, Pin>>> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(&self.dir)? {
            let name = e?.file_name().to_string_lossy().to_string();
            let Ok(cid) = super::cid::parse(&name) else { continue };
            let owners = self.owners(&cid)?;
            if !owners.is_empty() {
                out.insert(cid, owners);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_count_and_release_independently() {
        let root = std::env::temp_dir().join(format!("r1fs-pins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let pins = Pins::open(&root).unwrap();
        let cid = super::super::cid::parse("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku").unwrap();
        let p = Pin { dag_size: 0, blocks: 1, at: 1 };
        pins.pin(&cid, "model/ns/a", &p).unwrap();
        pins.pin(&cid, REPLICA, &p).unwrap();
        pins.pin(&cid, REPLICA, &p).unwrap();
        assert_eq!(pins.owners(&cid).unwrap().len(), 2);
        assert_eq!(pins.all().unwrap().len(), 1);
        assert_eq!(pins.unpin(&cid, "model/ns/a").unwrap(), 1);
        assert!(pins.is_pinned_by(&cid, REPLICA));
        assert_eq!(pins.unpin(&cid, "nobody").unwrap(), 1);
        assert_eq!(pins.unpin(&cid, REPLICA).unwrap(), 0);
        assert!(pins.all().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }
}
