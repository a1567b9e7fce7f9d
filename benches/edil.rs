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
}
