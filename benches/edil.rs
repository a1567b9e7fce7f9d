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
//! Then a whole round on loopback, in the same run: each participant's
//! update, encrypted and sealed to the aggregator (`edil::seal`), goes
//! over its own loopback TCP connection; the aggregator opens and adds
//! each as it arrives and sends the sum to the owner, which decrypts it.
//! Timed: one participant's encryption and sealing (each participant is
//! its own machine), then everything from the first byte sent to the
//! decrypted sum. Baseline, same run: the same round in plaintext (each
//! quantised update as raw i32 over its own connection, summed into i64
//! as it arrives, the sum sent to the owner).
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
    loopback_round(smoke);
    paillier(smoke);
}

/// Reads a length-prefixed message (u64 length, little endian).
async fn read_msg(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let n = s.read_u64_le().await.unwrap_or_else(|e| fail(&format!("loopback read: {e}")));
    let mut b = vec![0u8; n as usize];
    s.read_exact(&mut b).await.unwrap_or_else(|e| fail(&format!("loopback read: {e}")));
    b
}

async fn write_msg(s: &mut tokio::net::TcpStream, b: &[u8]) {
    use tokio::io::AsyncWriteExt;
    s.write_u64_le(b.len() as u64).await.unwrap_or_else(|e| fail(&format!("loopback write: {e}")));
    s.write_all(b).await.unwrap_or_else(|e| fail(&format!("loopback write: {e}")));
}

/// One round on loopback TCP: `messages` (one per participant) to an
/// aggregator that folds each into its state as it arrives (`add`), then
/// the state's bytes (`done`) to the owner. Returns the owner's bytes and
/// the seconds from the first byte sent to the owner's last received.
fn round_on_loopback<S: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    messages: Vec<Vec<u8>>,
    state: S,
    add: fn(&mut S, &[u8]),
    done: fn(S) -> Vec<u8>,
) -> (Vec<u8>, f64) {
    rt.block_on(async move {
        let agg = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| fail(&e.to_string()));
        let owner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| fail(&e.to_string()));
        let (agg_at, owner_at) = (agg.local_addr().unwrap(), owner.local_addr().unwrap());
        let n = messages.len();
        let t = Instant::now();
        let aggregator = tokio::spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(n);
            for _ in 0..n {
                let (mut s, _) = agg.accept().await.unwrap_or_else(|e| fail(&e.to_string()));
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(read_msg(&mut s).await).await;
                });
            }
            drop(tx);
            let mut state = state;
            while let Some(m) = rx.recv().await {
                add(&mut state, &m);
            }
            let mut s = tokio::net::TcpStream::connect(owner_at).await.unwrap_or_else(|e| fail(&e.to_string()));
            write_msg(&mut s, &done(state)).await;
        });
        for m in messages {
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(agg_at).await.unwrap_or_else(|e| fail(&e.to_string()));
                write_msg(&mut s, &m).await;
            });
        }
        let (mut s, _) = owner.accept().await.unwrap_or_else(|e| fail(&e.to_string()));
        let sum = read_msg(&mut s).await;
        let secs = t.elapsed().as_secs_f64();
        aggregator.await.unwrap_or_else(|e| fail(&e.to_string()));
        (sum, secs)
    })
}

/// The whole round on loopback against the same round in plaintext.
fn loopback_round(smoke: bool) {
    use libp2p_identity::Keypair;
    use ratio1::edil::seal;
    let (n, v) = if smoke { (3u32, DIM) } else { (10, ratio1::edil::crypto::MAX_VALUES) };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap_or_else(|e| fail(&e.to_string()));
    let owner = OwnerKey::generate();
    let enc = Encoding::new(n).unwrap_or_else(|e| fail(&e.to_string()));
    let range = enc.range() as f32;
    let mut rng = rand::thread_rng();
    let aggregator = Keypair::generate_ed25519();
    let ids: Vec<Keypair> = (0..n).map(|_| Keypair::generate_ed25519()).collect();
    let updates: Vec<Vec<i32>> =
        (0..n).map(|_| enc.quantise(&(0..v).map(|_| rng.gen_range(-range..=range)).collect::<Vec<f32>>())).collect();
    const CONTEXT: &[u8] = b"owner/model/1";
    // Each participant: encrypt under its own key, seal to the aggregator
    // (its PeerId first, so the aggregator knows whose seal it opens).
    let mut t_one = f64::MAX;
    let sealed: Vec<Vec<u8>> = ids
        .iter()
        .zip(&updates)
        .map(|(id, q)| {
            let t = Instant::now();
            let wire = owner.public_key().encrypt(q).unwrap_or_else(|e| fail(&e.to_string())).to_bytes();
            let s = seal::seal(id, &aggregator.public().to_peer_id(), CONTEXT, &wire)
                .unwrap_or_else(|e| fail(&e.to_string()));
            t_one = t_one.min(t.elapsed().as_secs_f64());
            let mut m = id.public().to_peer_id().to_bytes();
            m.insert(0, m.len() as u8);
            m.extend_from_slice(&s);
            m
        })
        .collect();
    let wire_bytes = sealed.iter().map(|m| m.len()).sum::<usize>() as f64 / (n as usize * v) as f64;
    struct Agg {
        me: Keypair,
        sum: Aggregate,
    }
    let state = Agg { me: aggregator, sum: Aggregate::new(v, enc).unwrap_or_else(|e| fail(&e.to_string())) };
    let (sum, t_net) = round_on_loopback(
        &rt,
        sealed,
        state,
        |a, m| {
            let k = m[0] as usize;
            let from = libp2p_identity::PeerId::from_bytes(&m[1..1 + k]).unwrap_or_else(|e| fail(&e.to_string()));
            let opened = seal::open(&a.me, &from, CONTEXT, &m[1 + k..]).unwrap_or_else(|e| fail(&e.to_string()));
            a.sum.add_wire(&opened).unwrap_or_else(|e| fail(&e.to_string()));
        },
        |a| a.sum.to_bytes(),
    );
    let t = Instant::now();
    let agg = Aggregate::from_bytes(&sum, v, enc).unwrap_or_else(|e| fail(&e.to_string()));
    let sums = owner.decrypt(&agg);
    let t_round = t_one + t_net + t.elapsed().as_secs_f64();
    // The plaintext round: raw i32 updates, an i64 sum.
    let plain_msgs: Vec<Vec<u8>> = updates.iter().map(|q| q.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let (plain, t_plain) = round_on_loopback(
        &rt,
        plain_msgs,
        vec![0i64; v],
        |s, m| {
            for (a, x) in s.iter_mut().zip(m.chunks_exact(4)) {
                *a += i32::from_le_bytes(x.try_into().expect("4 bytes")) as i64;
            }
        },
        |s| s.iter().flat_map(|x| x.to_le_bytes()).collect(),
    );
    let plain: Vec<i64> = plain.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
    if sums != plain {
        fail("the round on loopback decrypted a sum other than the plaintext round's");
    }
    println!();
    println!("A whole round on loopback TCP, same run: N participants' sealed updates to the aggregator, the sum to the owner");
    println!(
        "{:>6} {:>8} {:>16} {:>14} {:>14} {:>16} {:>8} {:>6}",
        "N", "V", "encrypt+seal (s)", "network (s)", "round (s)", "plain round (s)", "ratio", "B/value"
    );
    println!(
        "{n:>6} {v:>8} {t_one:>16.2} {t_net:>14.2} {t_round:>14.2} {t_plain:>16.3} {:>8.1} {wire_bytes:>6.1}",
        t_round / t_plain.max(1e-9)
    );
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
