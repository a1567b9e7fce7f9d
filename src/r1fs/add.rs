//! Files and directories into UnixFS blocks, exactly as `ipfs add
//! --cid-version 1` makes them (CIDv1, raw leaves, fixed 256 KiB chunks,
//! balanced layout of 174 links per node, sha2-256; directories as UnixFS
//! directories, HAMT-sharded above 256 KiB of entries). The DAG code is the
//! `rust-unixfs` crate's; this module feeds it and hands each block on.

use super::cid::Cid;
use rust_unixfs::dir::builder::{BufferingTreeBuilder, TreeOptions};
use rust_unixfs::file::adder::{Chunker, FileAdder};
use std::io::{self, Read};
use std::path::Path;

/// Chunk size of file leaves (IPFS's default).
pub const CHUNK: usize = 256 * 1024;

/// What an add produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Added {
    /// Root CID.
    pub cid: Cid,
    /// Bytes of content (file bytes, summed over a directory's files).
    pub size: u64,
    /// Bytes of every block of the DAG (UnixFS's cumulative size).
    pub dag_size: u64,
    pub blocks: u64,
}

fn adder() -> FileAdder {
    FileAdder::builder()
        .with_chunker(Chunker::Size(CHUNK))
        .with_cid_version(::cid::Version::V1)
        .with_raw_leaves(true)
        .build()
}

/// Adds one file's bytes read from `r`. `sink` gets every block, children
/// before their parents (the root last); `progress` the bytes read so far.
pub fn add_reader(
    mut r: impl Read,
    sink: &mut dyn FnMut(Cid, Vec<u8>) -> io::Result<()>,
    progress: &mut dyn FnMut(u64),
) -> io::Result<Added> {
    let mut adder = adder();
    let mut buf = vec![0u8; 4 * CHUNK];
    let (mut size, mut dag_size, mut blocks) = (0u64, 0u64, 0u64);
    let mut root = None;
    let mut emit = |cid: Cid, block: Vec<u8>, dag_size: &mut u64, blocks: &mut u64| -> io::Result<()> {
        *dag_size += block.len() as u64;
        *blocks += 1;
        root = Some(cid);
        sink(cid, block)
    };
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        size += n as u64;
        let mut at = 0;
        while at < n {
            let (out, used) = adder.push(&buf[at..n]);
            for (cid, block) in out {
                emit(cid, block, &mut dag_size, &mut blocks)?;
            }
            at += used;
        }
        progress(size);
    }
    for (cid, block) in adder.finish() {
        emit(cid, block, &mut dag_size, &mut blocks)?;
    }
    let cid = root.ok_or_else(|| io::Error::other("the UnixFS adder produced no block"))?;
    Ok(Added { cid, size, dag_size, blocks })
}

/// Adds a file, or a directory with everything under it (symbolic links
/// are not followed and not added). Entries are taken in name order; as
/// with `ipfs add -r`, entries whose name starts with `.` are left out
/// unless `hidden`.
pub fn add_path(
    path: &Path,
    hidden: bool,
    sink: &mut dyn FnMut(Cid, Vec<u8>) -> io::Result<()>,
    progress: &mut dyn FnMut(u64),
) -> io::Result<Added> {
    let meta = std::fs::metadata(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if meta.is_file() {
        let f = std::fs::File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        return add_reader(io::BufReader::with_capacity(4 * CHUNK, f), sink, progress);
    }
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is neither a file nor a directory", path.display()),
        ));
    }
    // The root's own name does not enter any CID: only its entries' do.
    let mut tree = BufferingTreeBuilder::new(TreeOptions::default());
    let (mut size, mut dag_size, mut blocks) = (0u64, 0u64, 0u64);
    let mut base = 0u64;
    let mut counted = |cid: Cid, block: Vec<u8>| -> io::Result<()> {
        dag_size += block.len() as u64;
        blocks += 1;
        sink(cid, block)
    };
    let mut dirs = vec![(path.to_path_buf(), "root".to_string())];
    while let Some((dir, name)) = dirs.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        entries.sort_by_key(|e| e.file_name());
        if entries.is_empty() {
            tree.set_metadata(&name, Default::default()).map_err(io::Error::other)?;
        }
        for e in entries {
            let file_name = e.file_name().into_string().map_err(|n| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{n:?} in {} is not UTF-8", dir.display()))
            })?;
            if file_name.starts_with('.') && !hidden {
                continue;
            }
            let child = format!("{name}/{file_name}");
            let ft = e.file_type()?;
            if ft.is_dir() {
                dirs.push((e.path(), child));
            } else if ft.is_file() {
                let f = std::fs::File::open(e.path())
                    .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", e.path().display())))?;
                let added =
                    add_reader(io::BufReader::with_capacity(4 * CHUNK, f), &mut counted, &mut |n| progress(base + n))?;
                base += added.size;
                size += added.size;
                tree.put_link(&child, added.cid, added.dag_size).map_err(io::Error::other)?;
            }
        }
    }
    let mut root = None;
    let mut nodes = tree.build();
    while let Some(node) = nodes.next_borrowed() {
        let node = node.map_err(io::Error::other)?;
        root = Some(*node.cid);
        counted(*node.cid, node.block.to_vec())?;
    }
    let cid = root.ok_or_else(|| io::Error::other("the UnixFS tree builder produced no block"))?;
    Ok(Added { cid, size, dag_size, blocks })
}

/// The CID of a file or directory, nothing stored (`ipfs add --only-hash`).
pub fn only_hash(path: &Path, hidden: bool, progress: &mut dyn FnMut(u64)) -> io::Result<Added> {
    add_path(path, hidden, &mut |_, _| Ok(()), progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid_of(bytes: &[u8]) -> String {
        add_reader(bytes, &mut |_, _| Ok(()), &mut |_| {}).unwrap().cid.to_string()
    }

    #[test]
    fn small_files_are_one_raw_leaf() {
        assert_eq!(cid_of(b""), "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku");
        assert_eq!(cid_of(b"a"), "bafkreigks6arfsq3xxfpvqrrwonchxcnu6do76auprhhfomao6c273sixm");
        assert_eq!(cid_of(b"hello world"), "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e");
    }

    #[test]
    fn every_block_verifies_and_the_root_comes_last() {
        let data: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        let mut seen = vec![];
        let added = add_reader(
            &data[..],
            &mut |cid, block| {
                seen.push((cid, block));
                Ok(())
            },
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(added.size, data.len() as u64);
        assert_eq!(added.blocks, 5, "4 leaves and a root");
        assert_eq!(seen.last().unwrap().0, added.cid);
        for (cid, block) in &seen {
            let digest = <sha2::Sha256 as sha2::Digest>::digest(block);
            assert_eq!(cid.hash().digest(), &digest[..], "block {cid} is named by its own hash");
        }
        assert_eq!(added.dag_size, seen.iter().map(|(_, b)| b.len() as u64).sum::<u64>());
    }
}
