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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::r1fs::add;

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
