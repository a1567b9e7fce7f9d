//! Ledger throughput benchmark, in one process (no network: the ledger's
//! own cost).
//!
//! N ND licenses linked by issuer-signed statements, each claiming 30
//! epochs paid by final tables of N nodes, judged by 3 oracles. One claim's
//! path, as the operators run it: the node computes its claim and signs the
//! CSTORE record; each oracle verifies the record, parses it, judges it
//! against its registry, ledger and history, and signs its accept; then
//! the ledger is settled from all accepts (once per batch, as the service
//! folds a batch of changes), every settled claim recomputed. Baseline, same run: the same records signed
//! and verified, with the same bytes, and nothing else (the floor any
//! signed ledger pays). Prints claims per second and the ratio.
//!
//! Run: `cargo bench --bench ledger` (`cargo test` runs it small).

use libp2p_identity::{ed25519, Keypair};
use ratio1::cstore::record::{to_raw, Hlc, Record, Slot};
use ratio1::dauth::license::{issue_statement, key_id, Action, Class, Statement, TrustStore};
use ratio1::economy::ledger::{self, Claim, Ledger, View};
use ratio1::economy::registry::{self, Context, Registry};
use ratio1::economy::{Constants, MndCurve};
use ratio1::oracle::epoch::Epochs;
use ratio1::oracle::sync::Decided;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

mod common;
use common::fail;

const EPOCH_MS: u64 = 1_000;
const EPOCHS: u64 = 30;
const ORACLES: usize = 3;

struct World {
    c: Constants,
    curve: MndCurve,
    epochs: Epochs,
    registry: Registry,
    history: BTreeMap<u64, Decided>,
    nodes: Vec<Keypair>,
    oracles: Vec<Keypair>,
    names: Vec<String>,
}

fn world(n: usize) -> World {
    let issuer = ed25519::Keypair::generate();
    let trust = TrustStore::new([issuer.public()], []);
    let iss = key_id(&issuer.public());
    let nodes: Vec<Keypair> = (0..n).map(|_| Keypair::generate_ed25519()).collect();
    let oracles: Vec<Keypair> = (0..ORACLES).map(|_| Keypair::generate_ed25519()).collect();
    let mut statements = vec![];
    let mut names = vec![];
    for (i, k) in nodes.iter().enumerate() {
        let s = Statement {
            iss: iss.clone(),
            id: format!("nd-{i}"),
            action: Action::Link,
            peer: Some(k.public().to_peer_id().to_string()),
            class: Some(Class::Nd),
            assigned: None,
            at: 10,
        };
        // As every receiver does: the statement's signature checked.
        let token = issue_statement(&issuer, &s);
        statements.push(trust.verify_statement(&token).unwrap_or_else(|e| fail(&format!("statement: {e}"))));
        names.push(registry::name(&iss, &s.id));
    }
    let c = Constants::default();
    let epochs = Epochs { genesis_ms: 0, length_ms: EPOCH_MS };
    let cx = Context { rules: Default::default(), constants: &c };
    let registry = registry::fold(&statements, &cx);
    if registry.licenses.len() != n {
        fail(&format!("{} of {n} licenses linked", registry.licenses.len()));
    }
    let history = (0..EPOCHS)
        .map(|e| {
            let table = nodes
                .iter()
                .enumerate()
                .map(|(i, k)| (k.public().to_peer_id().to_string(), ((i as u64 + e) % 256) as u8))
                .collect();
            (e, Decided { id: format!("rec{e}"), table })
        })
        .collect();
    World { curve: MndCurve::new(&c), c, epochs, registry, history, nodes, oracles, names }
}

fn view<'a>(w: &'a World, ledger: &'a Ledger) -> View<'a> {
    View { constants: &w.c, curve: &w.curve, epochs: w.epochs, registry: &w.registry, ledger, history: &w.history }
}

fn record(key: &Keypair, k: &str, v: &serde_json::Value) -> Record {
    Record::sign(key, Slot::flat(k), Some(to_raw(v).unwrap_or_else(|e| fail(&e))), Hlc::new(1, 0), None)
}

/// Every claim through its whole path; returns the seconds taken.
fn ledger_run(w: &World, now: u64) -> f64 {
    let empty = Ledger::default();
    let t = Instant::now();
    let mut accepts: BTreeMap<(String, String, u64), Claim> = BTreeMap::new();
    for (k, name) in w.nodes.iter().zip(&w.names) {
        let me = k.public().to_peer_id().to_string();
        let claim = ledger::next_claim(&view(w, &empty), name, &me, now).unwrap_or_else(|e| fail(&e));
        let rec = record(k, &ledger::claim_key(&me, name, claim.from), &serde_json::to_value(&claim).unwrap());
        for o in &w.oracles {
            let writer = rec.verify().unwrap_or_else(|_| fail("claim record does not verify"));
            let seen: Claim = serde_json::from_value(rec.value_json()).unwrap_or_else(|e| fail(&e.to_string()));
            ledger::judge(&view(w, &empty), &seen, &writer.to_string(), now).unwrap_or_else(|e| fail(&e));
            let oracle = o.public().to_peer_id().to_string();
            let key = ledger::verdict_key(&oracle, true, name, seen.from);
            let acc = record(o, &key, &serde_json::json!({ "claim": seen, "claimant": me }));
            // Every node verifies every verdict.
            acc.verify().unwrap_or_else(|_| fail("verdict does not verify"));
            let held: Claim = serde_json::from_value(acc.value_json()["claim"].clone()).unwrap();
            accepts.insert((oracle, name.clone(), held.from), held);
        }
    }
    let registered: BTreeSet<String> = w.oracles.iter().map(|o| o.public().to_peer_id().to_string()).collect();
    // Every node settles: each accepted claim checked against its own
    // records (a quorum cannot settle what they do not pay).
    let settled = ledger::settle(&view(w, &empty), &accepts, &|_| registered.clone(), now);
    let secs = t.elapsed().as_secs_f64();
    let through: usize = w.names.iter().filter(|n| settled.claimed_through(n) == Some(EPOCHS - 1)).count();
    if through != w.names.len() {
        fail(&format!("{through} of {} claims settled", w.names.len()));
    }
    secs
}

/// The same records signed and verified, nothing else.
fn floor_run(w: &World, now: u64) -> f64 {
    let empty = Ledger::default();
    // The same bytes, made before the clock starts.
    let claims: Vec<(String, serde_json::Value)> = w
        .nodes
        .iter()
        .zip(&w.names)
        .map(|(k, name)| {
            let me = k.public().to_peer_id().to_string();
            let c = ledger::next_claim(&view(w, &empty), name, &me, now).unwrap();
            (ledger::claim_key(&me, name, c.from), serde_json::to_value(&c).unwrap())
        })
        .collect();
    let t = Instant::now();
    for (k, (key, v)) in w.nodes.iter().zip(&claims) {
        let rec = record(k, key, v);
        for o in &w.oracles {
            rec.verify().unwrap_or_else(|_| fail("claim record does not verify"));
            let acc = record(o, key, &serde_json::json!({ "claim": v }));
            acc.verify().unwrap_or_else(|_| fail("verdict does not verify"));
        }
    }
    t.elapsed().as_secs_f64()
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if smoke { &[50] } else { &[100, 1_000, 5_000] };
    let rounds = if smoke { 1 } else { 3 };
    let now = (EPOCHS - 1 + ledger::CLAIM_DELAY_EPOCHS) * EPOCH_MS + 10;
    println!("Ledger throughput: {ORACLES} oracles, {EPOCHS} epochs per claim, one process (best of {rounds})");
    println!("{:>9} {:>14} {:>18} {:>8}", "licenses", "ledger (c/s)", "sign+verify (c/s)", "ratio");
    for &n in sizes {
        let w = world(n);
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..rounds {
            best.0 = best.0.min(ledger_run(&w, now));
            best.1 = best.1.min(floor_run(&w, now));
        }
        println!("{n:>9} {:>14.0} {:>18.0} {:>8.2}", n as f64 / best.0, n as f64 / best.1, best.0 / best.1);
    }
}
