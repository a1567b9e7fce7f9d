//! The links of a dag-pb block (UnixFS files and directories): what a fetch
//! must get next, what GC must keep, and the names a gateway path walks.
//! `PBNode` / `PBLink` of the dag-pb spec, decoded with prost.

use super::cid::{Cid, DAG_PB};

#[derive(Clone, PartialEq, prost::Message)]
struct PbNode {
    #[prost(message, repeated, tag = "2")]
    links: Vec<PbLink>,
    #[prost(bytes = "vec", optional, tag = "1")]
    data: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PbLink {
    #[prost(bytes = "vec", optional, tag = "1")]
    hash: Option<Vec<u8>>,
    #[prost(string, optional, tag = "2")]
    name: Option<String>,
    #[prost(uint64, optional, tag = "3")]
    tsize: Option<u64>,
}

/// One link of a dag-pb node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub cid: Cid,
    pub name: String,
    pub tsize: u64,
}

/// The links of block `cid` (none for a raw block); an error when a dag-pb
/// block does not decode or links to something that is not a CID.
pub fn links(cid: &Cid, block: &[u8]) -> Result<Vec<Link>, String> {
    if cid.codec() != DAG_PB {
        return Ok(vec![]);
    }
    let node = <PbNode as prost::Message>::decode(block).map_err(|e| format!("{cid} is not a dag-pb node: {e}"))?;
    node.links
        .into_iter()
        .map(|l| {
            let hash = l.hash.unwrap_or_default();
            let cid = Cid::try_from(hash.as_slice()).map_err(|e| format!("{cid} links to a non-CID: {e}"))?;
            Ok(Link { cid, name: l.name.unwrap_or_default(), tsize: l.tsize.unwrap_or(0) })
        })
        .collect()
}

/// The UnixFS `Data` of a dag-pb node, as far as a listing needs it.
#[derive(Clone, PartialEq, prost::Message)]
struct UnixFsData {
    #[prost(int32, tag = "1")]
    kind: i32,
    #[prost(uint64, optional, tag = "6")]
    fanout: Option<u64>,
}

/// UnixFS `DataType` of a HAMT shard.
const HAMT_SHARD: i32 = 5;

/// The entries of the directory `cid`, with their own names: a flat
/// directory's links, or, for a HAMT-sharded one, the entries of every
/// shard, their name prefix (the bucket, `log16(fanout)` hex digits)
/// taken off, sub-shards (links named by the prefix alone) read through
/// `get` and followed. In shard order, which is not name order.
pub fn entries<E: std::fmt::Display>(
    cid: &Cid,
    block: &[u8],
    get: &mut dyn FnMut(&Cid) -> Result<Vec<u8>, E>,
) -> Result<Vec<Link>, String> {
    let mut out = vec![];
    let mut shards = vec![(*cid, block.to_vec())];
    while let Some((c, b)) = shards.pop() {
        let node =
            <PbNode as prost::Message>::decode(b.as_slice()).map_err(|e| format!("{c} is not a dag-pb node: {e}"))?;
        let data = node.data.as_deref().map(<UnixFsData as prost::Message>::decode).transpose();
        let data = data.map_err(|e| format!("{c} has no UnixFS data: {e}"))?;
        let links = links(&c, &b)?;
        let Some(fanout) = data.filter(|d| d.kind == HAMT_SHARD).map(|d| d.fanout.unwrap_or(256)) else {
            out.extend(links);
            continue;
        };
        if !fanout.is_power_of_two() || !(16..=4096).contains(&fanout) {
            return Err(format!("{c} is a HAMT shard of fanout {fanout}, which UnixFS does not make"));
        }
        let width = format!("{:X}", fanout - 1).len();
        // Reversed: popped in link order.
        for l in links.into_iter().rev() {
            match l.name.len().cmp(&width) {
                std::cmp::Ordering::Equal => {
                    let sub = get(&l.cid).map_err(|e| format!("shard {} of {cid}: {e}", l.cid))?;
                    shards.push((l.cid, sub));
                }
                std::cmp::Ordering::Greater if l.name.is_char_boundary(width) => {
                    out.push(Link { name: l.name[width..].to_string(), ..l });
                }
                _ => return Err(format!("{c} has a shard link named {:?}", l.name)),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::r1fs::add;

    #[test]
    fn a_sharded_directory_lists_its_entries_by_their_own_names() {
        use rust_unixfs::dir::builder::{BufferingTreeBuilder, TreeOptions};
        let mut opts = TreeOptions::default();
        opts.shard_threshold(Some(0));
        let mut tree = BufferingTreeBuilder::new(opts);
        let mut blocks = std::collections::HashMap::new();
        let names: Vec<String> = (0..600).map(|i| format!("file-{i:04}.txt")).collect();
        for n in &names {
            let mut keep = |c, b| {
                blocks.insert(c, b);
                Ok(())
            };
            let f = add::add_reader(n.as_bytes(), &mut keep, &mut |_| {}).unwrap();
            tree.put_link(&format!("root/{n}"), f.cid, f.dag_size).unwrap();
        }
        let mut root = None;
        let mut nodes = tree.build();
        while let Some(node) = nodes.next_borrowed() {
            let node = node.unwrap();
            root = Some(*node.cid);
            blocks.insert(*node.cid, node.block.to_vec());
        }
        let root = root.unwrap();
        let raw = links(&root, &blocks[&root]).unwrap();
        assert!(raw.iter().any(|l| l.name.len() == 2), "600 entries make sub-shards");
        let mut get = |c: &Cid| blocks.get(c).cloned().ok_or("missing");
        let mut got: Vec<String> =
            entries(&root, &blocks[&root], &mut get).unwrap().into_iter().map(|l| l.name).collect();
        got.sort();
        assert_eq!(got, names);
        // A flat directory lists as its links.
        let mut flat = BufferingTreeBuilder::new(TreeOptions::default());
        let f = add::add_reader(&b"x"[..], &mut |_, _| Ok(()), &mut |_| {}).unwrap();
        flat.put_link("root/x", f.cid, 1).unwrap();
        let mut built = flat.build();
        let node = built.next_borrowed().unwrap().unwrap();
        let (c, b) = (*node.cid, node.block.to_vec());
        let listed = entries(&c, &b, &mut |_: &Cid| Err::<Vec<u8>, _>("none")).unwrap();
        assert_eq!(listed.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["x"]);
    }

    #[test]
    fn file_and_directory_nodes_list_their_children() {
        let dir = std::env::temp_dir().join(format!("r1fs-dagpb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.txt"), b"a").unwrap();
        std::fs::write(dir.join("sub/big"), vec![3u8; 3 * add::CHUNK]).unwrap();
        let mut blocks = std::collections::HashMap::new();
        let added = add::add_path(
            &dir,
            false,
            &mut |c, b| {
                blocks.insert(c, b);
                Ok(())
            },
            &mut |_| {},
        )
        .unwrap();
        let root = links(&added.cid, &blocks[&added.cid]).unwrap();
        let names: Vec<&str> = root.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["a.txt", "sub"]);
        let sub = &root[1];
        let big = &links(&sub.cid, &blocks[&sub.cid]).unwrap()[0];
        assert_eq!(big.name, "big");
        let leaves = links(&big.cid, &blocks[&big.cid]).unwrap();
        assert_eq!(leaves.len(), 3);
        assert!(leaves.iter().all(|l| l.cid.codec() == crate::r1fs::cid::RAW && l.name.is_empty()));
        assert!(links(&big.cid, b"\xff\xff").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
