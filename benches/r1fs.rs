//! R1FS `add` on disk against the same work done plainly: the content of a
//! file is chunked, hashed into a UnixFS DAG and every block written to
//! the block store (temp file and rename each, one syncfs at the end), against a
//! sequential read + sha256 + write of the same file to the same disk with
//! one fsync at the end (what any copy-and-checksum costs). Goal: ≥ 70% of
//! the baseline's throughput. Also `cat` (every block re-verified) against
//! reading the file plainly.
//!
//! Run: `cargo bench --bench r1fs` (R1_BENCH_MIB, 256; R1_BENCH_ROUNDS, 3;
//! R1_BENCH_DIR, the system's temp dir). Prints a table.

use ratio1::r1fs::{add, store::BlockStore};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mib = env("R1_BENCH_MIB", 256);
    let rounds = env("R1_BENCH_ROUNDS", 3).max(1);
    let root = std::env::var("R1_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
    let dir = root.join(format!("r1fs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("input.bin");
    {
        // Incompressible-looking, deterministic content.
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            for b in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
            }
            f.write_all(&buf).unwrap();
        }
        f.into_inner().unwrap().sync_all().unwrap();
    }
    let bytes = mib << 20;
    let (mut base, mut ours, mut plain_read, mut cat) = (vec![], vec![], vec![], vec![]);
    for r in 0..rounds {
        // Baseline: read, sha256, write a copy, fsync once.
        let copy = dir.join(format!("copy-{r}"));
        let t = Instant::now();
        let mut input = std::fs::File::open(&src).unwrap();
        let mut out = std::fs::File::create(&copy).unwrap();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).unwrap();
        }
        out.sync_all().unwrap();
        std::hint::black_box(h.finalize());
        base.push(t.elapsed());

        // R1FS add into a fresh store.
        let store = BlockStore::open(&dir.join(format!("store-{r}"))).unwrap();
        let t = Instant::now();
        let added =
            add::add_path(&src, false, &mut |cid, block| store.put_own(&cid, &block).map(|_| ()), &mut |_| {}).unwrap();
        store.sync().unwrap();
        ours.push(t.elapsed());
        assert_eq!(added.size, bytes, "the whole file was added");

        // Reading back: plain read of the copy against cat (verified).
        let t = Instant::now();
        let mut n = 0u64;
        let mut f = std::fs::File::open(&copy).unwrap();
        loop {
            let k = f.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        plain_read.push(t.elapsed());
        assert_eq!(n, bytes);
        let t = Instant::now();
        let got = store.cat(&added.cid, &mut std::io::sink()).unwrap();
        cat.push(t.elapsed());
        assert_eq!(got, bytes, "cat gives back every byte");
        std::fs::remove_file(&copy).unwrap();
        std::fs::remove_dir_all(dir.join(format!("store-{r}"))).unwrap();
    }
    let rate = |d: Duration| bytes as f64 / d.as_secs_f64() / (1 << 20) as f64;
    let (b, o, pr, c) = (median(base), median(ours), median(plain_read), median(cat));
    println!("\n## bench r1fs: {mib} MiB, median of {rounds} rounds, on {}", root.display());
    println!("| measure | R1FS MiB/s | baseline MiB/s | ratio (R1FS / baseline) |");
    println!("|---|---|---|---|");
    println!(
        "| add into the block store vs read + sha256 + write + fsync | {:.0} | {:.0} | {:.2} |",
        rate(o),
        rate(b),
        rate(o) / rate(b)
    );
    println!(
        "| cat (every block verified) vs plain read | {:.0} | {:.0} | {:.2} |",
        rate(c),
        rate(pr),
        rate(c) / rate(pr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
