//! Replication: own writes are gossiped in batches (only admitted peers
//! receive gossip: the network's rule); received records are checked
//! (signature, writer, ownership rules, clock) before they are applied or
//! relayed; and every `anti_entropy_interval` this replica compares bucket
//! digests with one random connected peer and fetches exactly the versions
//! it lacks, so a node that was down or cut off converges without copying
//! everything.

use super::index::Line;
use super::metrics::{self as m, DirectionLabels, ReasonLabels, ResultLabels};
use super::record::{Invalid, Record};
use super::wire::{self, Batch, SyncRequest, SyncResponse};
use super::{apply, now_ms, rules, Inner};
use crate::p2p::envelope::Envelope;
use crate::p2p::{protocol::RECORDS_KIND, ServiceEvent};
use futures::{StreamExt, TryStreamExt};
use libp2p::gossipsub::MessageAcceptance;
use libp2p_identity::PeerId;
use rand::seq::SliceRandom;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Instant;
use tokio::sync::mpsc;

/// Anti-entropy as this replica last ran it, overall and per peer.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    pub last_round: Option<Round>,
    pub peers: BTreeMap<String, PeerSync>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Round {
    pub peer: String,
    /// Unix ms at the end of the round.
    pub at: i64,
    pub millis: u64,
    pub differing_lines: usize,
    pub fetched: usize,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerSync {
    /// Unix ms of the end of the last complete round with this peer (every
    /// version it listed that we lacked was fetched).
    pub in_sync_at: Option<i64>,
    pub last_round: Option<i64>,
    /// Delay of the last record gossiped by this peer (its clock to our write).
    pub gossip_lag_ms: Option<i64>,
}

fn dir(direction: &'static str) -> DirectionLabels {
    DirectionLabels { direction }
}

/// Batches own writes and publishes them on the CSTORE topic: a write
/// goes at once when the last batch left `gossip_flush` ago or more, else
/// with the writes that follow it until then.
pub(super) async fn gossip_out(inner: Weak<Inner>, mut rx: mpsc::Receiver<Record>) {
    let mut last = tokio::time::Instant::now();
    while let Some(first) = rx.recv().await {
        let Some(i) = inner.upgrade() else { return };
        let mut batch = vec![first];
        let mut bytes = 0;
        let deadline = last + i.cfg.gossip_flush;
        while batch.len() < wire::MAX_BATCH_RECORDS && bytes < wire::MAX_BATCH_BYTES {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => {
                    bytes += r.value.as_ref().map_or(0, |v| v.get().len()) + 256;
                    batch.push(r);
                }
                _ => break,
            }
        }
        last = tokio::time::Instant::now();
        let n = batch.len() as u64;
        let Some(net) = (i.network)() else {
            i.metrics.cstore.gossip_skipped.inc_by(n);
            continue;
        };
        let body = serde_json::to_string(&Batch { records: batch }).expect("serializable");
        let body = RawValue::from_string(body).expect("valid JSON");
        match net.publish_service(RECORDS_KIND, body).await {
            Ok(sent) => {
                i.metrics.cstore.gossip_records.get_or_create(&dir("out")).inc_by(n);
                i.metrics.cstore.gossip_bytes.get_or_create(&dir("out")).inc_by(sent as u64);
            }
            Err(e) => {
                tracing::debug!(error = %e, "CSTORE batch not gossiped");
                i.metrics.cstore.gossip_skipped.inc_by(n);
            }
        }
    }
}

/// Checks a received record: bounds and signature, the writer (`author`
/// when it must be the gossip's author), the ownership rules and the clock.
/// `Ok(false)`: valid but not worth storing (already expired).
fn check(inner: &Inner, rec: &Record, author: Option<&PeerId>, now: i64) -> Result<bool, Invalid> {
    let writer = rec.verify()?;
    if author.is_some_and(|a| *a != writer) {
        return Err(Invalid::NotOwner);
    }
    rules::check(rec, &writer, &inner.trust)?;
    if rec.hlc.wall_ms() as i64 > now + inner.cfg.max_clock_skew.as_millis() as i64 {
        return Err(Invalid::Future);
    }
    let horizon = now - inner.cfg.tombstone_horizon.as_millis() as i64;
    let old_tombstone = rec.is_tombstone() && (rec.hlc.wall_ms() as i64) < horizon;
    Ok(!rec.expired(now) && !old_tombstone)
}

/// Checks all records; the first invalid one condemns the message.
fn check_all<'a>(inner: &Inner, records: &'a [Record], author: Option<&PeerId>) -> Result<Vec<&'a Record>, Invalid> {
    let now = now_ms();
    let mut keep = vec![];
    for r in records {
        if check(inner, r, author, now)? {
            keep.push(r);
        }
    }
    Ok(keep)
}

/// Applies records, 64 at once at most (the committer shares their
/// transactions); stops at the first failure.
async fn apply_all(
    inner: &Inner,
    records: Vec<&Record>,
    origin: &'static m::OriginLabels,
) -> Result<usize, super::CstoreError> {
    // The futures are made first: a stream holding the mapping closure
    // across awaits trips a known limit of the compiler inside spawned tasks.
    let writes: Vec<_> = records.into_iter().map(|r| apply(inner, r, origin)).collect();
    futures::stream::iter(writes)
        .buffer_unordered(64)
        .try_fold(0, |n, written| async move { Ok(n + written as usize) })
        .await
}

/// Reads stored records, 32 at a time; missing ones are skipped.
async fn read_all(inner: &Inner, stored: Vec<String>) -> Vec<Record> {
    async fn one(inner: &Inner, s: String) -> Option<Record> {
        let key = format!("{}{s}", inner.cfg.prefix);
        let resp = inner.client.kv_client().get(key, None).await.ok()?;
        serde_json::from_slice::<Record>(resp.kvs().first()?.value()).ok()
    }
    let reads: Vec<_> = stored.into_iter().map(|s| one(inner, s)).collect();
    futures::stream::iter(reads).buffer_unordered(32).filter_map(futures::future::ready).collect().await
}

/// Takes the network's CSTORE messages: gossip to check and apply, and
/// anti-entropy requests to answer.
pub(super) async fn serve(inner: Weak<Inner>, mut rx: mpsc::Receiver<ServiceEvent>) {
    // Requests per peer: 50/s, burst 200 (a round over a large divergence
    // lists many pages); requests come from admitted peers only.
    let mut limits = crate::p2p::gossip::RateLimit::new(50.0, 200.0, 4096);
    let gossip_slots = Arc::new(tokio::sync::Semaphore::new(8));
    while let Some(ev) = rx.recv().await {
        let Some(i) = inner.upgrade() else { return };
        match ev {
            ServiceEvent::Gossip { author, envelope, message, source } => {
                let permit = gossip_slots.clone().acquire_owned().await.expect("never closed");
                tokio::spawn(async move {
                    let verdict = on_batch(&i, author, &envelope).await;
                    if let Some(net) = (i.network)() {
                        net.validate(message, source, verdict).await;
                    }
                    drop(permit);
                });
            }
            ServiceEvent::Request { peer, id, body } => {
                let limited = !limits.allow(peer, crate::p2p::now_us());
                tokio::spawn(async move {
                    let resp = if limited {
                        SyncResponse::Refused { reason: "RateLimited".into() }
                    } else {
                        answer(&i, &body).await
                    };
                    let text = serde_json::to_string(&resp).expect("serializable");
                    i.metrics.cstore.anti_entropy_bytes.get_or_create(&dir("out")).inc_by(text.len() as u64);
                    i.metrics.cstore.anti_entropy_bytes.get_or_create(&dir("in")).inc_by(body.get().len() as u64);
                    if let Some(net) = (i.network)() {
                        net.respond(id, RawValue::from_string(text).expect("valid JSON")).await;
                    }
                });
            }
        }
    }
}

/// Decides on a gossiped batch: every record must be the author's own,
/// signed, allowed and not from the future; then they are applied.
async fn on_batch(inner: &Inner, author: PeerId, envelope: &Envelope) -> MessageAcceptance {
    let Ok(batch) = serde_json::from_str::<Batch>(envelope.body.get()) else {
        inner.metrics.cstore.rejected.get_or_create(&ReasonLabels { reason: "malformed" }).inc();
        return MessageAcceptance::Reject;
    };
    if batch.records.len() > wire::MAX_BATCH_RECORDS {
        inner.metrics.cstore.rejected.get_or_create(&ReasonLabels { reason: "oversized" }).inc();
        return MessageAcceptance::Reject;
    }
    let keep = match check_all(inner, &batch.records, Some(&author)) {
        Ok(k) => k,
        Err(e) => {
            inner.metrics.cstore.rejected.get_or_create(&ReasonLabels { reason: e.label() }).inc();
            tracing::debug!(%author, reason = e.label(), "CSTORE batch rejected");
            // Not relayed either way; only a lie costs the sender score.
            return match e {
                Invalid::UnknownIssuer => MessageAcceptance::Ignore,
                _ => MessageAcceptance::Reject,
            };
        }
    };
    inner.metrics.cstore.gossip_records.get_or_create(&dir("in")).inc_by(batch.records.len() as u64);
    inner.metrics.cstore.gossip_bytes.get_or_create(&dir("in")).inc_by(envelope.body.get().len() as u64);
    let newest = keep.iter().map(|r| r.hlc.wall_ms() as i64).max();
    match apply_all(inner, keep.clone(), &m::GOSSIP).await {
        Ok(_) => {
            let now = now_ms();
            for r in &keep {
                inner.metrics.cstore.lag.observe((now - r.hlc.wall_ms() as i64).max(0) as f64 / 1e3);
            }
            if let Some(t) = newest {
                let mut s = inner.sync.lock().expect("sync lock");
                if s.peers.len() < 4096 || s.peers.contains_key(&author.to_string()) {
                    s.peers.entry(author.to_string()).or_default().gossip_lag_ms = Some((now - t).max(0));
                }
            }
            MessageAcceptance::Accept
        }
        Err(e) => {
            // Valid, but our etcd is down: relay it anyway (others may
            // store it); anti-entropy brings it here later.
            tracing::debug!(error = %e, "CSTORE batch not stored");
            MessageAcceptance::Accept
        }
    }
}

/// Answers one anti-entropy request from the index and etcd.
async fn answer(inner: &Inner, body: &RawValue) -> SyncResponse {
    let refused = |r: &str| SyncResponse::Refused { reason: r.into() };
    let Ok(req) = serde_json::from_str::<SyncRequest>(body.get()) else { return refused("Malformed") };
    match req {
        SyncRequest::Digest { buckets, page } => {
            let Ok(theirs) = wire::unpack_u64s(&buckets, super::index::BUCKETS) else { return refused("Malformed") };
            let lines = {
                let st = inner.state.lock().expect("state lock");
                let differ = st.index.differing(&theirs);
                st.index.summary(&differ)
            };
            let start = (page as usize).saturating_mul(wire::SUMMARY_PAGE).min(lines.len());
            let end = (start + wire::SUMMARY_PAGE).min(lines.len());
            SyncResponse::Summary { lines: wire::pack_lines(&lines[start..end]), more: end < lines.len() }
        }
        SyncRequest::Fetch { keys } => {
            let Ok(hashes) = wire::unpack_u64s(&keys, wire::MAX_FETCH_KEYS) else { return refused("Malformed") };
            let stored: Vec<String> = {
                let st = inner.state.lock().expect("state lock");
                hashes.iter().filter_map(|h| st.index.stored_of(*h).cloned()).collect()
            };
            let mut records = vec![];
            let mut bytes = 0;
            for r in read_all(inner, stored).await {
                bytes += r.to_bytes().len();
                if bytes > wire::MAX_FETCH_BYTES && !records.is_empty() {
                    break;
                }
                records.push(r);
            }
            SyncResponse::Records { records }
        }
    }
}

/// Longest anti-entropy round (a peer that answers slowly, or not at all).
const ROUND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// How long a peer whose round failed is passed over.
const SHUN: std::time::Duration = std::time::Duration::from_secs(60);

/// One anti-entropy round with a random connected peer, every interval.
pub(super) async fn anti_entropy(inner: Weak<Inner>) {
    let interval = match inner.upgrade() {
        Some(i) => i.cfg.anti_entropy_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Peers whose last round failed (silent, refusing, lying) are passed
    // over for a while, so one bad peer cannot stall this replica's healing.
    let mut shunned: HashMap<PeerId, Instant> = HashMap::new();
    loop {
        tick.tick().await;
        let Some(i) = inner.upgrade() else { return };
        if !i.state.lock().expect("state lock").up {
            continue;
        }
        let Some(net) = (i.network)() else { continue };
        shunned.retain(|_, t| t.elapsed() < SHUN);
        let peers = net.connected_peers();
        let good: Vec<PeerId> = peers.iter().filter(|p| !shunned.contains_key(p)).copied().collect();
        let pool = if good.is_empty() { &peers } else { &good };
        let Some(peer) = pool.choose(&mut rand::thread_rng()).copied() else { continue };
        let started = Instant::now();
        let mut round = Round {
            peer: peer.to_string(),
            at: 0,
            millis: 0,
            differing_lines: 0,
            fetched: 0,
            bytes_in: 0,
            bytes_out: 0,
            error: None,
        };
        let result = match tokio::time::timeout(ROUND_TIMEOUT, run_round(&i, &net, peer, &mut round)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no end within {} s", ROUND_TIMEOUT.as_secs())),
        };
        let complete = matches!(result, Ok(true));
        let result = result.map(|_| ());
        if result.is_err() {
            shunned.insert(peer, Instant::now());
        }
        round.at = now_ms();
        round.millis = started.elapsed().as_millis() as u64;
        let label = match &result {
            Ok(()) => "ok",
            Err(e) => {
                round.error = Some(e.clone());
                tracing::debug!(%peer, error = %e, "CSTORE anti-entropy round failed");
                "failed"
            }
        };
        i.metrics.cstore.anti_entropy_rounds.get_or_create(&ResultLabels { result: label }).inc();
        i.metrics.cstore.anti_entropy_bytes.get_or_create(&dir("in")).inc_by(round.bytes_in as u64);
        i.metrics.cstore.anti_entropy_bytes.get_or_create(&dir("out")).inc_by(round.bytes_out as u64);
        let mut s = i.sync.lock().expect("sync lock");
        if s.peers.len() < 4096 || s.peers.contains_key(&round.peer) {
            let p = s.peers.entry(round.peer.clone()).or_default();
            p.last_round = Some(round.at);
            if complete {
                p.in_sync_at = Some(round.at);
            }
        }
        s.last_round = Some(round);
    }
}

async fn ask(
    net: &crate::p2p::NetworkHandle,
    peer: PeerId,
    req: &SyncRequest,
    round: &mut Round,
) -> Result<SyncResponse, String> {
    let text = serde_json::to_string(req).expect("serializable");
    round.bytes_out += text.len();
    let resp = net.request(peer, RawValue::from_string(text).expect("valid JSON")).await?;
    round.bytes_in += resp.get().len();
    match serde_json::from_str::<SyncResponse>(resp.get()) {
        Ok(SyncResponse::Refused { reason }) => {
            Err(format!("refused: {}", reason.chars().take(64).collect::<String>()))
        }
        Ok(r) => Ok(r),
        Err(_) => Err("malformed answer".into()),
    }
}

/// Digest → listing of the differing buckets (paged) → fetch of the
/// versions we lack (in chunks) → check and apply each. `Ok(true)` when
/// the whole listing was read (the round is complete).
async fn run_round(
    inner: &Inner,
    net: &crate::p2p::NetworkHandle,
    peer: PeerId,
    round: &mut Round,
) -> Result<bool, String> {
    let digest = wire::pack_u64s(&inner.state.lock().expect("state lock").index.digest());
    let mut wanted = vec![];
    let mut complete = false;
    for page in 0..MAX_PAGES {
        let req = SyncRequest::Digest { buckets: digest.clone(), page };
        let SyncResponse::Summary { lines, more } = ask(net, peer, &req, round).await? else {
            return Err("unexpected answer to a digest".into());
        };
        let lines: Vec<Line> = wire::unpack_lines(&lines).map_err(|e| e.to_string())?;
        round.differing_lines += lines.len();
        wanted.extend(inner.state.lock().expect("state lock").index.wanted(&lines));
        if !more {
            complete = true;
            break;
        }
    }
    for chunk in wanted.chunks(wire::MAX_FETCH_KEYS) {
        let req = SyncRequest::Fetch { keys: wire::pack_u64s(chunk) };
        let SyncResponse::Records { records } = ask(net, peer, &req, round).await? else {
            return Err("unexpected answer to a fetch".into());
        };
        // Records of others, relayed: each must verify on its own; a bad
        // one is dropped and counted, the others still count.
        let now = now_ms();
        let mut keep = vec![];
        for r in &records {
            match check(inner, r, None, now) {
                Ok(true) => keep.push(r),
                Ok(false) => {}
                Err(e) => {
                    inner.metrics.cstore.rejected.get_or_create(&ReasonLabels { reason: e.label() }).inc();
                }
            }
        }
        round.fetched += keep.len();
        inner.metrics.cstore.anti_entropy_records.inc_by(keep.len() as u64);
        apply_all(inner, keep, &m::ANTI_ENTROPY).await.map_err(|e| e.to_string())?;
    }
    Ok(complete)
}

/// Listing pages read per round at most (16,384 lines each); the rest
/// waits for the next round.
const MAX_PAGES: u32 = 64;
