//! R1FS content addressing against an independent implementation: the CIDs
//! `ratio1 fs add --only-hash` prints are the ones the npm package
//! `ipfs-unixfs-importer` computes with `ipfs add --cid-version 1`'s
//! settings (e2e/tools/ipfs-importer.sh installs it; no cluster needed).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes `len` bytes of a fixed pattern (`i % 251`, so chunks differ).
fn pattern(path: &Path, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(path, data).unwrap();
}

fn ours(path: &Path, hidden: bool) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ratio1"));
    cmd.args(["fs", "add", "--only-hash"]);
    if hidden {
        cmd.arg("--hidden");
    }
    let out = cmd.arg(path).output().unwrap();
    assert!(out.status.success(), "ratio1 fs add {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn theirs(tool: &str, paths: &[PathBuf], hidden: bool) -> Vec<String> {
    let mut cmd = Command::new("node");
    cmd.arg(tool);
    if hidden {
        cmd.arg("--hidden");
    }
    let out = cmd.args(paths).output().expect("node runs");
    assert!(out.status.success(), "ipfs-cids.mjs: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| l.split('\t').nth(1).unwrap().to_string()).collect()
}

#[test]
fn fs_add_only_hash_gives_the_cids_of_the_ipfs_importer() {
    let setup = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/tools/ipfs-importer.sh"))
        .output()
        .expect("bash runs");
    assert!(setup.status.success(), "ipfs-importer.sh: {}", String::from_utf8_lossy(&setup.stderr));
    let tool = String::from_utf8(setup.stdout).unwrap().lines().last().expect("the tool's path").trim().to_string();

    let dir = std::env::temp_dir().join(format!("r1fs-cids-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    const CHUNK: usize = 256 * 1024;
    let mut paths = vec![];
    for (name, len) in [
        ("0B", 0),
        ("1B", 1),
        ("chunk-1", CHUNK - 1),
        ("chunk", CHUNK),
        ("chunk+1", CHUNK + 1),
        ("10MiB", 10 << 20),
        // One more chunk than a full node of 174 links: a second level.
        ("174chunks+1", 174 * CHUNK + 1),
    ] {
        let p = dir.join(name);
        pattern(&p, len);
        paths.push(p);
    }
    // A directory: files, a nested directory, an empty one, a hidden file.
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(tree.join("emptysub")).unwrap();
    std::fs::write(tree.join("hello.txt"), "hello world\n").unwrap();
    pattern(&tree.join("big.bin"), CHUNK + 1);
    std::fs::write(tree.join("sub/a.txt"), "a").unwrap();
    pattern(&tree.join("sub/deeper/zero.bin"), 0);
    std::fs::write(tree.join(".hidden"), "secret").unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    paths.push(tree.clone());
    paths.push(dir.join("empty"));

    let want = theirs(&tool, &paths, false);
    assert_eq!(want.len(), paths.len());
    for (p, w) in paths.iter().zip(&want) {
        assert_eq!(&ours(p, false), w, "{}", p.display());
    }
    let with_hidden = theirs(&tool, std::slice::from_ref(&tree), true);
    let ours_hidden = ours(&tree, true);
    assert_eq!(ours_hidden, with_hidden[0], "--hidden includes dotfiles as ipfs add -r --hidden does");
    assert_ne!(ours_hidden, ours(&tree, false), "the dotfile changes the directory's CID");
    // Known values from outside both implementations.
    assert_eq!(want[0], "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", "the empty file");
    assert_eq!(
        want[paths.len() - 1],
        "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354",
        "an empty directory"
    );

    // Bad input: a non-zero exit and one line that says why.
    let out = Command::new(env!("CARGO_BIN_EXE_ratio1"))
        .args(["fs", "add", "--only-hash"])
        .arg(dir.join("nope"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("No such file") && err.trim().lines().count() == 1, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
