//! Writes to etcd: each record is stored unless the replica holds a newer
//! version of its slot, by a transaction that compares the key's
//! `mod_revision` with the one the index holds. Writes that arrive together
//! (concurrent callers, a gossiped batch, an anti-entropy page) share one
//! transaction — one etcd proposal for up to [`MAX_TXN_RECORDS`] keys — and
//! fall back to one transaction each when any compare fails.

use super::index::Entry;
use super::metrics::OriginLabels;
use super::record::Record;
use super::{CstoreError, Inner};
use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use futures::StreamExt;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::{mpsc, oneshot};

/// Records per shared transaction (etcd allows 128 operations by default).
const MAX_TXN_RECORDS: usize = 64;
/// Bytes per shared transaction, about (etcd takes 1.5 MiB requests by default).
const MAX_TXN_BYTES: usize = 1024 * 1024;
/// Shared transactions in flight at once.
const IN_FLIGHT: usize = 4;

/// A write waiting for the committer.
pub(super) struct Pending {
    rec: Record,
    origin: &'static OriginLabels,
    done: oneshot::Sender<Result<bool, CstoreError>>,
}

/// Stores `rec` unless the replica holds a newer version; returns whether
/// it was written. A write with no other in progress goes straight to etcd
/// (no hop through the committer: the lowest latency); concurrent ones are
/// gathered.
pub(super) async fn apply(inner: &Inner, rec: &Record, origin: &'static OriginLabels) -> Result<bool, CstoreError> {
    struct Leave<'a>(&'a AtomicUsize);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let alone = inner.writers.fetch_add(1, Ordering::AcqRel) == 0;
    let _leave = Leave(&inner.writers);
    if alone {
        return apply_one(inner, rec, origin).await;
    }
    let (done, rx) = oneshot::channel();
    if inner.commits.send(Pending { rec: rec.clone(), origin, done }).await.is_err() {
        return apply_one(inner, rec, origin).await;
    }
    rx.await.unwrap_or_else(|_| Err(CstoreError::Unavailable("the write was dropped".into())))
}

/// Gathers the writes waiting at once into shared transactions.
pub(super) async fn committer(inner: Weak<Inner>, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let mut bytes = first.rec.value.as_ref().map_or(0, |v| v.get().len());
        let mut batch = vec![first];
        while batch.len() < MAX_TXN_RECORDS && bytes < MAX_TXN_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.rec.value.as_ref().map_or(0, |v| v.get().len()) + 300;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let Some(i) = inner.upgrade() else { return };
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        tokio::spawn(async move {
            commit(&i, batch).await;
            drop(permit);
        });
    }
}

async fn commit(inner: &Inner, batch: Vec<Pending>) {
    // Decide against the index; a key twice in one batch goes alone.
    let mut keys = HashSet::new();
    let (mut shared, mut alone) = (vec![], vec![]);
    {
        let mut st = inner.state.lock().expect("state lock");
        for p in batch {
            let stored = p.rec.slot.stored();
            if !keys.insert(stored.clone()) {
                alone.push(p);
                continue;
            }
            match revision_to_replace(inner, &mut st, &p.rec, &stored, p.origin) {
                Some(rev) => shared.push((p, stored, rev)),
                None => {
                    let _ = p.done.send(Ok(false));
                }
            }
        }
    }
    if shared.len() == 1 {
        alone.extend(shared.drain(..).map(|(p, _, _)| p));
    }
    if !shared.is_empty() {
        let bodies: Vec<Vec<u8>> = shared.iter().map(|(p, _, _)| p.rec.to_bytes()).collect();
        let key = |stored: &str| format!("{}{stored}", inner.cfg.prefix);
        let compares: Vec<Compare> =
            shared.iter().map(|(_, s, rev)| Compare::mod_revision(key(s), CompareOp::Equal, *rev)).collect();
        let puts: Vec<TxnOp> =
            shared.iter().zip(&bodies).map(|((_, s, _), b)| TxnOp::put(key(s), b.clone(), None)).collect();
        match inner.client.kv_client().txn(Txn::new().when(compares).and_then(puts)).await {
            Ok(r) if r.succeeded() => {
                let rev = r.header().map(|h| h.revision()).unwrap_or(0);
                let mut st = inner.state.lock().expect("state lock");
                for ((p, stored, _), body) in shared.into_iter().zip(bodies) {
                    st.index.upsert(&stored, Entry::of(&p.rec, &stored, rev, body.len()));
                    inner.metrics.cstore.applied.get_or_create(p.origin).inc();
                    let _ = p.done.send(Ok(true));
                }
            }
            // Some key moved since the index saw it: each on its own.
            Ok(_) => alone.extend(shared.into_iter().map(|(p, _, _)| p)),
            Err(e) => {
                for (p, _, _) in shared {
                    let _ = p.done.send(Err(CstoreError::Unavailable(e.to_string())));
                }
            }
        }
    }
    let mut running: futures::stream::FuturesUnordered<_> = alone
        .into_iter()
        .map(|p| async move {
            let r = apply_one(inner, &p.rec, p.origin).await;
            let _ = p.done.send(r);
        })
        .collect();
    while running.next().await.is_some() {}
}

/// The etcd revision `rec` must replace (0: the key is absent), or `None`
/// when the replica holds a version `rec` does not beat (counted). The
/// clock passes both.
fn revision_to_replace(
    inner: &Inner,
    st: &mut super::State,
    rec: &Record,
    stored: &str,
    origin: &OriginLabels,
) -> Option<i64> {
    st.clock.observe(rec.hlc);
    match st.index.get(stored) {
        Some(e) if !e.loses_to(rec) => {
            let held = e.hlc;
            st.clock.observe(held);
            inner.metrics.cstore.superseded.get_or_create(origin).inc();
            None
        }
        Some(e) => Some(e.mod_rev),
        None => Some(0),
    }
}

/// One record, one transaction per attempt: compare the key's revision
/// with the index's, put, or read the current one back and decide again.
async fn apply_one(inner: &Inner, rec: &Record, origin: &OriginLabels) -> Result<bool, CstoreError> {
    let stored = rec.slot.stored();
    let key = format!("{}{stored}", inner.cfg.prefix);
    let bytes = rec.to_bytes();
    for _ in 0..16 {
        let target = revision_to_replace(inner, &mut inner.state.lock().expect("state lock"), rec, &stored, origin);
        let Some(rev) = target else { return Ok(false) };
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key.clone(), bytes.clone(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = inner.client.kv_client().txn(txn).await?;
        let mut st = inner.state.lock().expect("state lock");
        if resp.succeeded() {
            let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            st.index.upsert(&stored, Entry::of(rec, &stored, rev, bytes.len()));
            inner.metrics.cstore.applied.get_or_create(origin).inc();
            return Ok(true);
        }
        // Someone else wrote (or deleted) it since the index saw it.
        let current = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| (kv.mod_revision(), kv.value().to_vec()))),
            _ => None,
        });
        match current.flatten() {
            Some((rev, value)) => match serde_json::from_slice::<Record>(&value) {
                Ok(cur) => st.index.upsert(&stored, Entry::of(&cur, &stored, rev, value.len())),
                Err(_) => st.index.upsert(&stored, Entry::unreadable(&stored, rev, value.len())),
            },
            None => st.index.forget(&stored),
        }
    }
    Err(CstoreError::Unavailable(format!("{} is written too often to settle", rec.slot)))
}
