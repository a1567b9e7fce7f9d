//! EDIL cryptography benchmark, in one process.
//!
//! N participants, each with its own public key, encrypt an update of V
//! values; the aggregator checks and adds them straight from the wire
//! (`Aggregate::add_wire`); the owner decrypts
//! the sum. Checked: the decrypted sum equals the sum of the quantised
//! updates exactly, for every value (the noise analysis of docs/edil.md
//! at N = 1,000). Baseline, same run: the plaintext sum of the same
//! quantised updates (i64 additions). Prints values per second of each
//! step and the ratios, the bytes on the wire per value, and the compute
//! time of a whole round: one participant's encryption (participants
//! encrypt in parallel, each on its own machine), the aggregator's
//! additions and the owner's decryption.
//!
//! Then the contrast the issue asks for, in the same run: the same kind of
//! sum under Paillier-2048 (`libpaillier`, one ciphertext per value, as
//! FATE's default encoding), with the same quantised values (each plus
//! 2^31: Paillier encrypts 1 <= m < n) and the same exact check, on a small
//! vector (each value costs a 2,048-bit exponentiation modulo n²).
//!
//! Run: `cargo bench --bench edil` (`cargo test` runs it small).

use rand::Rng;
use ratio1::edil::crypto::{Aggregate, Encoding, OwnerKey, ParticipantKey, DIM};
use std::time::Instant;

mod common;
use common::fail;

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let cases: &[(u32, usize)] =
        if smoke { &[(3, DIM)] } else { &[(10, ratio1::edil::crypto::MAX_VALUES), (100, 4 * DIM), (1_000, DIM)] };
    println!("EDIL: encrypted sum of N updates of V values (tfhe core_crypto, n = {DIM}), one process");
    println!(
        "{:>6} {:>8} {:>14} {:>14} {:>14} {:>16} {:>10} {:>8} {:>10} {:>6}",
        "N",
        "V",
        "encrypt (v/s)",
        "add (v/s)",
        "decrypt (v/s)",
        "plain add (v/s)",
        "add ratio",
        "B/value",
        "round (s)",
        "exact"
    );
    let mut rng = rand::thread_rng();
    for &(n, v) in cases {
        let owner = OwnerKey::generate();
        let enc = Encoding::new(n).unwrap_or_else(|e| fail(&e.to_string()));
        let range = enc.range() as f32;
        // Every participant's key and quantised update, made up front.
        let keys: Vec<ParticipantKey> = (0..n).map(|_| owner.public_key()).collect();
        let updates: Vec<Vec<i32>> = (0..n)
            .map(|_| enc.quantise(&(0..v).map(|_| rng.gen_range(-range..=range)).collect::<Vec<f32>>()))
            .collect();
        let t = Instant::now();
        let wires: Vec<Vec<u8>> = keys
            .iter()
            .zip(&updates)
            .map(|(k, q)| k.encrypt(q).unwrap_or_else(|e| fail(&e.to_string())).to_bytes())
            .collect();
        let t_enc = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut agg = Aggregate::new(v, enc).unwrap_or_else(|e| fail(&e.to_string()));
        for w in &wires {
            agg.add_wire(w).unwrap_or_else(|e| fail(&e.to_string()));
        }
        let t_add = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let sums = owner.decrypt(&agg);
        let t_dec = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut plain = vec![0i64; v];
        for q in &updates {
            for (s, x) in plain.iter_mut().zip(q) {
                *s += *x as i64;
            }
        }
        let t_plain = t.elapsed().as_secs_f64().max(1e-9);
        std::hint::black_box(&plain);
        let wrong = sums.iter().zip(&plain).filter(|(a, b)| a != b).count();
        if wrong > 0 {
            fail(&format!("{wrong} of {v} sums decrypted wrong with {n} participants"));
        }
        let total = (n as usize * v) as f64;
        let bytes = wires[0].len() as f64 / v as f64;
        println!(
            "{n:>6} {v:>8} {:>14.0} {:>14.0} {:>14.0} {:>16.0} {:>10.1} {:>8.1} {:>10.2} {:>6}",
            total / t_enc,
            total / t_add,
            v as f64 / t_dec,
            total / t_plain,
            t_add / t_plain,
            bytes,
            t_enc / n as f64 + t_add + t_dec,
            "yes"
        );
    }
    paillier(smoke);
}

/// The contrast row: N updates of V values summed under Paillier-2048.
fn paillier(smoke: bool) {
    use libpaillier::unknown_order::BigNumber;
    use libpaillier::{DecryptionKey, EncryptionKey};
    let (n, v) = if smoke { (3usize, 4usize) } else { (10, 64) };
    let t = Instant::now();
    let dk = DecryptionKey::random().unwrap_or_else(|| fail("Paillier key generation failed"));
    let t_key = t.elapsed().as_secs_f64();
    let ek = EncryptionKey::from(&dk);
    let enc = Encoding::new(n as u32).unwrap_or_else(|e| fail(&e.to_string()));
    let range = enc.range() as f32;
    let mut rng = rand::thread_rng();
    let updates: Vec<Vec<i32>> =
        (0..n).map(|_| enc.quantise(&(0..v).map(|_| rng.gen_range(-range..=range)).collect::<Vec<f32>>())).collect();
    // Paillier encrypts 1 <= m < n: every value is offset into 1..2^32,
    // and the sum of N of them is the sum plus N x 2^31 (far below n).
    const OFFSET: i64 = 1 << 31;
    let encode = |x: i32| BigNumber::from((x as i64 + OFFSET) as u64);
    let t = Instant::now();
    let cts: Vec<Vec<BigNumber>> = updates
        .iter()
        .map(|q| {
            q.iter()
                .map(|x| {
                    ek.encrypt(encode(*x).to_bytes(), None).unwrap_or_else(|| fail("Paillier encryption failed")).0
                })
                .collect()
        })
        .collect();
    let t_enc = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut sum = cts[0].clone();
    for c in &cts[1..] {
        for (s, x) in sum.iter_mut().zip(c) {
            *s = ek.add(s, x).unwrap_or_else(|| fail("Paillier addition failed"));
        }
    }
    let t_add = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let sums: Vec<i64> = sum
        .iter()
        .map(|c| {
            let m = dk.decrypt(c).unwrap_or_else(|| fail("Paillier decryption failed"));
            // Big-endian bytes of a number below N x 2^32 (< 2^63).
            let m = m.iter().fold(0i64, |a, d| (a << 8) | *d as i64);
            m - n as i64 * OFFSET
        })
        .collect();
    let t_dec = t.elapsed().as_secs_f64();
    let plain: Vec<i64> = (0..v).map(|i| updates.iter().map(|q| q[i] as i64).sum()).collect();
    if sums != plain {
        fail("Paillier sums decrypted wrong");
    }
    let total = (n * v) as f64;
    let bytes = cts[0].iter().map(|c| c.to_bytes().len()).max().unwrap_or(0);
    println!();
    println!("Contrast, same run: Paillier-2048 (libpaillier, pure Rust, one ciphertext per value; key generation {t_key:.1} s)");
    println!(
        "{:>6} {:>8} {:>14} {:>14} {:>14} {:>8} {:>6}",
        "N", "V", "encrypt (v/s)", "add (v/s)", "decrypt (v/s)", "B/value", "exact"
    );
    println!(
        "{n:>6} {v:>8} {:>14.0} {:>14.0} {:>14.0} {:>8} {:>6}",
        total / t_enc,
        (total - v as f64) / t_add.max(1e-9),
        v as f64 / t_dec,
        bytes,
        "yes"
    );
}
