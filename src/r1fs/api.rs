//! R1FS over HTTP. On the operator's local API (loopback by default):
//! `POST /v1/r1fs/blocks` (a block stream: the sections of a CARv1 file,
//! `varint(len) ‖ CID ‖ bytes`, each block verified before it is stored),
//! `POST|DELETE /v1/r1fs/pin?cid=&owner=`, `GET /v1/r1fs/pins`,
//! `GET /v1/r1fs/stat?cid=`, `POST /v1/r1fs/gc`. The read-only gateway,
//! `GET /ipfs/<cid>[/path]` (`?format=raw` for the block itself,
//! `?format=car` for a verifiable CARv1, as IPFS's trustless gateway
//! answers), is served there and, with `--r1fs-gateway-addr`, on an address
//! pods can reach.
//! Content not held here is fetched from peers first.
//!
//! The client side (`ratio1 fs …`) is at the end of the file.

use super::cid::{canonical, Cid, RAW};
use super::service::{R1fs, R1fsError};
use super::store::StoreError;
use crate::http::{error, ApiError};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::io::{self, Write};
use std::sync::{Arc, OnceLock};

/// R1FS, once this replica leads with a data directory and CSTORE.
pub type Slot = Arc<OnceLock<R1fs>>;

/// Largest block-stream body the API takes in one request.
pub const MAX_UPLOAD: usize = 64 * 1024 * 1024;
/// Files streamed at once by this process's gateway: each holds a blocking
/// thread while its client reads, so slow clients must not take them all.
pub const MAX_STREAMS: usize = 16;
static STREAMS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_STREAMS);

/// Owner of pins made through the API without `owner`.
pub const DEFAULT_OWNER: &str = "user";

/// The local API's routes (management and gateway).
pub fn routes(slot: Slot) -> Router {
    Router::new()
        .route("/v1/r1fs/blocks", post(put_blocks).layer(DefaultBodyLimit::max(MAX_UPLOAD)))
        .route("/v1/r1fs/pin", post(pin).delete(unpin))
        .route("/v1/r1fs/pins", get(pins))
        .route("/v1/r1fs/stat", get(stat))
        .route("/v1/r1fs/gc", post(gc))
        .with_state(slot.clone())
        .merge(gateway(slot))
}

/// The read-only gateway alone (for the address pods reach).
pub fn gateway(slot: Slot) -> Router {
    Router::new()
        .route("/ipfs/{cid}", get(gateway_root))
        .route("/ipfs/{cid}/{*path}", get(gateway_path))
        .route("/v1/r1fs/ls", get(ls))
        .route("/v1/r1fs/import/blocks", post(import_blocks).layer(DefaultBodyLimit::max(MAX_UPLOAD)))
        .route("/v1/r1fs/import/pin", post(import_pin))
        .with_state(slot)
}

fn ready(slot: &Slot) -> Result<&R1fs, ApiError> {
    slot.get().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "R1FS is not running here: this replica does not lead, or it has no --data-dir",
        )
    })
}

fn failed(e: R1fsError) -> ApiError {
    let status = match &e {
        R1fsError::NotFound(_) | R1fsError::Store(StoreError::NotFound(_)) => StatusCode::NOT_FOUND,
        R1fsError::Store(StoreError::NotAFile(..)) => StatusCode::BAD_REQUEST,
        R1fsError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        R1fsError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        R1fsError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e)
}

fn parse_cid(s: &str) -> Result<Cid, ApiError> {
    super::cid::parse(s).map_err(|e| error(StatusCode::BAD_REQUEST, e))
}

/// Splits a block stream into its blocks (each `varint(len) ‖ CID ‖ bytes`).
pub fn split_blocks(mut body: &[u8]) -> Result<Vec<(Cid, &[u8])>, String> {
    let mut out = vec![];
    while !body.is_empty() {
        let (len, rest) = unsigned_varint::decode::usize(body).map_err(|e| format!("bad section length: {e}"))?;
        if len > rest.len() {
            return Err(format!("a section claims {len} bytes; {} remain", rest.len()));
        }
        let (section, tail) = rest.split_at(len);
        let mut cursor = io::Cursor::new(section);
        let cid = Cid::read_bytes(&mut cursor).map_err(|e| format!("bad CID in a section: {e}"))?;
        let data = &section[cursor.position() as usize..];
        if data.len() > super::bitswap::MAX_BLOCK_BYTES {
            return Err(format!(
                "block {cid} has {} bytes; the limit is {}",
                data.len(),
                super::bitswap::MAX_BLOCK_BYTES
            ));
        }
        out.push((cid, data));
        body = tail;
    }
    Ok(out)
}

/// Appends one block to a block stream.
pub fn push_block(out: &mut Vec<u8>, cid: &Cid, data: &[u8]) {
    let c = cid.to_bytes();
    let mut buf = unsigned_varint::encode::usize_buffer();
    out.extend_from_slice(unsigned_varint::encode::usize(c.len() + data.len(), &mut buf));
    out.extend_from_slice(&c);
    out.extend_from_slice(data);
}

async fn put_blocks(State(slot): State<Slot>, body: Bytes) -> Result<Response, ApiError> {
    store_blocks(ready(&slot)?.clone(), body).await
}

/// Import Jobs' writes, on the gateway: only with the token of an
/// `import/…` owner (the operator gives each Job its own).
#[derive(Deserialize)]
struct ImportParams {
    owner: String,
    token: String,
    cid: Option<String>,
}

fn import_allowed(r: &R1fs, p: &ImportParams) -> Result<(), ApiError> {
    if !p.owner.starts_with(super::service::IMPORT_PREFIX) || !r.import_token_ok(&p.owner, &p.token) {
        return Err(error(StatusCode::FORBIDDEN, "writes on the gateway are for the operator's import Jobs only"));
    }
    Ok(())
}

async fn import_blocks(
    State(slot): State<Slot>,
    Query(p): Query<ImportParams>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r = ready(&slot)?.clone();
    import_allowed(&r, &p)?;
    store_blocks(r, body).await
}

async fn import_pin(State(slot): State<Slot>, Query(p): Query<ImportParams>) -> Result<Response, ApiError> {
    let r = ready(&slot)?;
    import_allowed(r, &p)?;
    let cid = parse_cid(p.cid.as_deref().unwrap_or(""))?;
    let pin = r.pin(cid, &p.owner).await.map_err(failed)?;
    Ok(Json(
        serde_json::json!({"cid": canonical(&cid), "owner": p.owner, "dagSize": pin.dag_size, "blocks": pin.blocks}),
    )
    .into_response())
}

async fn store_blocks(r: R1fs, body: Bytes) -> Result<Response, ApiError> {
    let stored = tokio::task::spawn_blocking(move || -> Result<(u64, u64), ApiError> {
        let blocks = split_blocks(&body).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        let mut bad = None;
        // Verified here (a client is no more trusted than a peer) while the
        // blocks verified before are written.
        let (_, n, bytes) = r
            .store()
            .put_own_all(|sink| {
                for (cid, data) in blocks {
                    let ok = super::cid::check(cid, &cid.to_string()).and_then(|_| {
                        match super::store::verifies(&cid, data) {
                            true => Ok(()),
                            false => Err(StoreError::Mismatch(cid.to_string()).to_string()),
                        }
                    });
                    if let Err(e) = ok {
                        bad = Some(e);
                        break;
                    }
                    sink(cid, data)?;
                }
                Ok(())
            })
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        if let Some(e) = bad {
            return Err(error(StatusCode::BAD_REQUEST, e));
        }
        // Durable before the answer: one sync for the whole request.
        r.store().sync().map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        Ok((n, bytes))
    })
    .await
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))??;
    Ok(Json(serde_json::json!({"stored": stored.0, "bytes": stored.1})).into_response())
}

#[derive(Deserialize)]
struct PinParams {
    cid: String,
    owner: Option<String>,
}

fn owner_of(p: &PinParams) -> Result<String, ApiError> {
    let o = p.owner.clone().unwrap_or_else(|| DEFAULT_OWNER.into());
    // ≤ 150 bytes: its base64url file name stays within 255.
    if o.is_empty()
        || o.len() > 150
        || o == super::pins::REPLICA
        || o.starts_with(super::service::IMPORT_PREFIX)
        || o.starts_with(super::pins::EDIL_PREFIX)
    {
        return Err(error(StatusCode::BAD_REQUEST, format!("owner {o:?} is not a valid pin owner")));
    }
    Ok(o)
}

async fn pin(State(slot): State<Slot>, Query(p): Query<PinParams>) -> Result<Response, ApiError> {
    let r = ready(&slot)?;
    let (cid, owner) = (parse_cid(&p.cid)?, owner_of(&p)?);
    let pin = r.pin(cid, &owner).await.map_err(failed)?;
    Ok(Json(serde_json::json!({"cid": canonical(&cid), "owner": owner, "dagSize": pin.dag_size, "blocks": pin.blocks}))
        .into_response())
}

async fn unpin(State(slot): State<Slot>, Query(p): Query<PinParams>) -> Result<Response, ApiError> {
    let r = ready(&slot)?;
    let (cid, owner) = (parse_cid(&p.cid)?, owner_of(&p)?);
    let left = r.unpin(cid, &owner).await.map_err(failed)?;
    Ok(Json(serde_json::json!({"cid": canonical(&cid), "owners": left})).into_response())
}

async fn pins(State(slot): State<Slot>) -> Result<Response, ApiError> {
    let r = ready(&slot)?;
    let all = r.pins().map_err(failed)?;
    let list: Vec<serde_json::Value> =
        all.iter().map(|(c, owners)| serde_json::json!({"cid": canonical(c), "owners": owners})).collect();
    Ok(Json(serde_json::json!({"pins": list})).into_response())
}

#[derive(Deserialize)]
struct CidParam {
    cid: String,
}

async fn stat(State(slot): State<Slot>, Query(p): Query<CidParam>) -> Result<Response, ApiError> {
    let r = ready(&slot)?;
    let cid = parse_cid(&p.cid)?;
    let store = r.store().clone();
    let walk = tokio::task::spawn_blocking(move || store.walk(&cid))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?
        .map_err(|e| failed(e.into()))?;
    let c = canonical(&cid);
    let snap = r.snapshot();
    let owners = r.pins().map_err(failed)?.remove(&cid).unwrap_or_default();
    let holders: Vec<serde_json::Value> = snap
        .holders
        .get(&c)
        .map(|h| {
            h.iter()
                .map(
                    |(p, have)| serde_json::json!({"peerId": p, "node": snap.members.get(p), "dagSize": have.dag_size}),
                )
                .collect()
        })
        .unwrap_or_default();
    Ok(Json(serde_json::json!({
        "cid": c,
        "local": {"blocks": walk.blocks, "dagSize": walk.dag_size, "missing": walk.missing.len(), "whole": walk.missing.is_empty()},
        "pinnedBy": owners.keys().collect::<Vec<_>>(),
        "holders": holders,
        "replication": snap.wants.get(&c),
    }))
    .into_response())
}

async fn gc(State(slot): State<Slot>) -> Result<Response, ApiError> {
    let g = ready(&slot)?.gc().await.map_err(failed)?;
    Ok(Json(g).into_response())
}

/// Whether `cid` is a file or a directory, and a directory's entries
/// (fetched from peers first if need be).
async fn ls(State(slot): State<Slot>, Query(p): Query<CidParam>) -> Result<Response, ApiError> {
    let r = ready(&slot)?;
    let root = parse_cid(&p.cid)?;
    r.fetch(root, &|_| {}).await.map_err(failed)?;
    Ok(Json(match resolved(r, root, String::new()).await? {
        Target::File(_) => serde_json::json!({"kind": "file"}),
        Target::Directory(_, links) => serde_json::json!({"kind": "directory", "entries": entries(&links)}),
    })
    .into_response())
}

/// `path` under `root`, resolved off the async threads (`root` is here).
async fn resolved(r: &R1fs, root: Cid, path: String) -> Result<Target, ApiError> {
    Ok(resolved_with_trail(r, root, path).await?.0)
}

/// As [`resolved`], with the blocks the path runs through, in order.
async fn resolved_with_trail(r: &R1fs, root: Cid, path: String) -> Result<(Target, Vec<Cid>), ApiError> {
    let store = r.store().clone();
    tokio::task::spawn_blocking(move || {
        let mut trail = vec![];
        resolve(&store, root, &path, &mut trail).map(|t| (t, trail))
    })
    .await
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?
    .map_err(failed)
}

/// A directory's entries as the gateway and `/v1/r1fs/ls` list them.
fn entries(links: &[super::dagpb::Link]) -> Vec<serde_json::Value> {
    links.iter().map(|l| serde_json::json!({"name": l.name, "cid": canonical(&l.cid), "size": l.tsize})).collect()
}

#[derive(Deserialize, Default)]
struct Format {
    format: Option<String>,
    /// CAR only: `all` (the default: the whole DAG at the path) or
    /// `block` (the path's blocks and the terminal block).
    #[serde(rename = "dag-scope")]
    dag_scope: Option<String>,
}

/// What a gateway request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// A file's bytes, or a directory's listing.
    Content,
    /// The terminal block (`application/vnd.ipld.raw`).
    Raw,
    /// A CARv1 (`application/vnd.ipld.car`); `true` for the whole DAG.
    Car(bool),
}

const RAW_TYPE: &str = "application/vnd.ipld.raw";
const CAR_TYPE: &str = "application/vnd.ipld.car";

/// The answer from `?format=` or, without it, the Accept header, as the
/// trustless gateway spec reads them.
fn answer(f: &Format, headers: &axum::http::HeaderMap) -> Result<Answer, ApiError> {
    let from_accept = || {
        let accept = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
        let types: Vec<&str> = accept.split(',').map(|t| t.split(';').next().unwrap_or("").trim()).collect();
        if types.contains(&CAR_TYPE) {
            "car"
        } else if types.contains(&RAW_TYPE) {
            "raw"
        } else {
            ""
        }
    };
    let kind = match f.format.as_deref() {
        Some(k) => k,
        None => from_accept(),
    };
    let all = match f.dag_scope.as_deref() {
        None | Some("all") => true,
        Some("block") => false,
        Some(other) => {
            return Err(error(StatusCode::BAD_REQUEST, format!("dag-scope {other:?} is not served (all or block)")))
        }
    };
    match kind {
        "" => Ok(Answer::Content),
        "raw" => Ok(Answer::Raw),
        "car" => Ok(Answer::Car(all)),
        other => Err(error(StatusCode::BAD_REQUEST, format!("format {other:?} is not served (raw or car)"))),
    }
}

/// Writes a CARv1 for `root`'s path: the header (roots: `root`), the
/// blocks the path runs through, then the terminal's DAG depth-first
/// (only its first block unless `all`), each block once: the trustless
/// gateway's `order=dfs; dups=n`, which a client checks block by block
/// against the CIDs it asked for.
fn write_car(
    root: Cid,
    trail: &[Cid],
    terminal: Cid,
    all: bool,
    get: &mut dyn FnMut(&Cid) -> Result<Vec<u8>, StoreError>,
    out: &mut dyn Write,
) -> Result<(), StoreError> {
    let header = iroh_car::CarHeader::new_v1(vec![root])
        .encode()
        .map_err(|e| StoreError::Io(io::Error::other(format!("CAR header: {e}"))))?;
    let mut buf = unsigned_varint::encode::usize_buffer();
    out.write_all(unsigned_varint::encode::usize(header.len(), &mut buf))?;
    out.write_all(&header)?;
    let mut seen = std::collections::HashSet::new();
    let mut section = Vec::new();
    let mut put = |cid: &Cid, block: &[u8], out: &mut dyn Write| -> io::Result<()> {
        section.clear();
        push_block(&mut section, cid, block);
        out.write_all(&section)
    };
    for c in trail.iter().filter(|c| **c != terminal) {
        if seen.insert(*c) {
            put(c, &get(c)?, out)?;
        }
    }
    let mut stack = vec![terminal];
    while let Some(c) = stack.pop() {
        if !seen.insert(c) {
            continue;
        }
        let block = get(&c)?;
        put(&c, &block, out)?;
        if all {
            let links = super::dagpb::links(&c, &block).map_err(|e| StoreError::NotAFile(canonical(&c), e))?;
            // Reversed, so that the first link is written next (DFS order).
            stack.extend(links.iter().rev().map(|l| l.cid));
        }
    }
    Ok(())
}

async fn gateway_root(
    State(slot): State<Slot>,
    Path(cid): Path<String>,
    Query(f): Query<Format>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    serve_path(slot, cid, String::new(), answer(&f, &headers)?).await
}

async fn gateway_path(
    State(slot): State<Slot>,
    Path((cid, path)): Path<(String, String)>,
    Query(f): Query<Format>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    serve_path(slot, cid, path, answer(&f, &headers)?).await
}

/// What a path resolved to.
enum Target {
    File(Cid),
    Directory(Cid, Vec<super::dagpb::Link>),
}

/// Walks `path` from `root` through UnixFS directories (HAMT shards too);
/// `trail` gets every block read on the way.
fn resolve(store: &super::store::BlockStore, root: Cid, path: &str, trail: &mut Vec<Cid>) -> Result<Target, R1fsError> {
    use rust_unixfs::{resolve, MaybeResolved};
    let mut cur = root;
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        let block = store.get(&cur)?;
        trail.push(cur);
        let mut step = resolve(&block, seg, &mut None).map_err(|e| e.to_string());
        cur = loop {
            match step {
                Ok(MaybeResolved::Found(c)) => break c,
                Ok(MaybeResolved::NotFound) => {
                    return Err(R1fsError::NotFound(format!("{} has no entry {seg:?}", canonical(&cur))))
                }
                Ok(MaybeResolved::NeedToLoadMore(lookup)) => {
                    let next = *lookup.pending_links().0;
                    let b = store.get(&next)?;
                    trail.push(next);
                    step = lookup.continue_walk(&b, &mut None).map_err(|e| e.to_string());
                }
                Err(e) => return Err(R1fsError::Store(StoreError::NotAFile(canonical(&cur), e))),
            }
        };
    }
    if cur.codec() == RAW {
        return Ok(Target::File(cur));
    }
    let block = store.get(&cur)?;
    match rust_unixfs::file::visit::IdleFileVisit::default().start(&block) {
        Ok(_) => Ok(Target::File(cur)),
        Err(_) => Ok(Target::Directory(
            cur,
            super::dagpb::entries(&cur, &block, &mut |c| store.get(c))
                .map_err(|e| R1fsError::Store(StoreError::NotAFile(canonical(&cur), e)))?,
        )),
    }
}

/// Sends what `cat` writes as the chunks of a streamed body.
struct ChannelWriter(tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.blocking_send(Ok(Bytes::copy_from_slice(buf))).map_err(|_| io::Error::other("client went away"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

async fn serve_path(slot: Slot, cid: String, path: String, answer: Answer) -> Result<Response, ApiError> {
    let r = ready(&slot)?.clone();
    let root = parse_cid(&cid)?;
    // Whole here first (fetched from peers if need be); not pinned, so GC
    // may collect it later.
    r.fetch(root, &|_| {}).await.map_err(failed)?;
    let inside = !path.is_empty();
    let (target, trail) = resolved_with_trail(&r, root, path).await?;
    let terminal = match &target {
        Target::File(c) | Target::Directory(c, _) => *c,
    };
    match (answer, target) {
        (Answer::Raw, Target::Directory(..)) if inside => {
            Err(error(StatusCode::BAD_REQUEST, "?format=raw of a path inside a directory is not served"))
        }
        (Answer::Raw, _) => {
            let block = r.store().get(&terminal).map_err(|e| failed(e.into()))?;
            Ok(([("content-type", RAW_TYPE)], block).into_response())
        }
        (Answer::Content, Target::Directory(_, links)) => {
            Ok(Json(serde_json::json!({"entries": entries(&links)})).into_response())
        }
        (Answer::Content, Target::File(c)) => {
            let body = stream(r, root, move |store, out, get| store.cat_with(&c, out, get).map(|_| ()))?;
            Ok(([("content-type", "application/octet-stream")], body).into_response())
        }
        (Answer::Car(all), _) => {
            let body = stream(r, root, move |_, out, get| write_car(root, &trail, terminal, all, get, out))?;
            let ty = format!("{CAR_TYPE}; version=1; order=dfs; dups=n");
            Ok(([("content-type", ty)], body).into_response())
        }
    }
}

/// A streamed body that `write` fills on a blocking thread, reading
/// blocks of `root`'s DAG through a getter that fetches again from a peer
/// a block lost or corrupt here since the fetch (and the read goes on).
/// At most [`MAX_STREAMS`] at once.
fn stream(
    r: R1fs,
    root: Cid,
    write: impl FnOnce(
            &super::store::BlockStore,
            &mut dyn Write,
            &mut dyn FnMut(&Cid) -> Result<Vec<u8>, StoreError>,
        ) -> Result<(), StoreError>
        + Send
        + 'static,
) -> Result<Body, ApiError> {
    let permit = STREAMS.try_acquire().map_err(|_| {
        error(StatusCode::SERVICE_UNAVAILABLE, format!("{MAX_STREAMS} downloads are running here: try again"))
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let handle = tokio::runtime::Handle::current();
    let store = r.store().clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut w = io::BufWriter::with_capacity(256 * 1024, ChannelWriter(tx.clone()));
        let mut get = |b: &Cid| match store.get(b) {
            Err(StoreError::NotFound(_) | StoreError::Corrupt { .. }) => {
                handle.block_on(r.heal(&root, *b)).map_err(|e| StoreError::Io(io::Error::other(e.to_string())))?;
                store.get(b)
            }
            other => other,
        };
        let res = write(&store, &mut w, &mut get).and_then(|_| w.flush().map_err(StoreError::Io));
        if let Err(e) = res {
            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
    });
    Ok(Body::from_stream(tokio_stream_from(rx)))
}

fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) })
}

// ------------------------------------------------------------------ client

/// A directory's entries (name, CID) through `base`'s `/v1/r1fs/ls`;
/// `None` for a file.
pub async fn list_dir(base: &str, cid: &str) -> anyhow::Result<Option<Vec<(String, String)>>> {
    let q = serde_urlencoded::to_string([("cid", cid)]).expect("encodes");
    let v = crate::http::request_json(
        http::Method::GET,
        &format!("{base}/v1/r1fs/ls?{q}"),
        None,
        std::time::Duration::from_secs(600),
    )
    .await?;
    if v["kind"] != "directory" {
        return Ok(None);
    }
    Ok(Some(
        v["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| (e["name"].as_str().unwrap_or("").to_string(), e["cid"].as_str().unwrap_or("").to_string()))
            .collect(),
    ))
}

/// How long a download waits for more bytes once its answer has started.
pub const DOWNLOAD_STALL: std::time::Duration = std::time::Duration::from_secs(120);

/// Streams `GET url` into `out`; returns the bytes written, or the
/// server's one-line error.
pub async fn download(url: &str, out: &mut (dyn Write + Send), progress: &(dyn Fn(u64) + Sync)) -> anyhow::Result<u64> {
    download_with(url, out, progress, DOWNLOAD_STALL).await
}

/// As [`download`], giving up when the body stalls for `stall`.
pub async fn download_with(
    url: &str,
    out: &mut (dyn Write + Send),
    progress: &(dyn Fn(u64) + Sync),
    stall: std::time::Duration,
) -> anyhow::Result<u64> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = url.parse().map_err(|_| anyhow::anyhow!("{url:?} is not a URL"))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let resp = client.get(uri).await.map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        anyhow::bail!(
            "{}",
            v["error"].as_str().map(String::from).unwrap_or_else(|| format!("{url} answered {status}"))
        );
    }
    let mut n = 0u64;
    // The answer starts once the operator holds the content (it fetches
    // first); after that a stream that stops is a failure, not a wait.
    loop {
        let Ok(frame) = tokio::time::timeout(stall, body.frame()).await else {
            anyhow::bail!("{url} sent nothing for {:?} after {n} bytes: gave up", stall);
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| anyhow::anyhow!("reading {url}: {e}"))?;
        if let Some(data) = frame.data_ref() {
            out.write_all(data)?;
            n += data.len() as u64;
            progress(n);
        }
    }
    out.flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CAR as a client reads it (iroh-car's reader): roots and blocks,
    /// each checked against its CID.
    async fn read_car(bytes: &[u8]) -> (Vec<Cid>, Vec<(Cid, Vec<u8>)>) {
        let mut r = iroh_car::CarReader::new(bytes).await.unwrap();
        let roots = r.header().roots().to_vec();
        let mut blocks = vec![];
        while let Some((cid, b)) = r.next_block().await.unwrap() {
            assert!(super::super::store::verifies(&cid, &b), "block {cid} does not hash to its CID");
            blocks.push((cid, b));
        }
        (roots, blocks)
    }

    #[tokio::test]
    async fn a_download_whose_stream_stops_fails_instead_of_waiting() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/ipfs/x", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).await;
            // Promises 100 bytes, sends 10, then goes silent.
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789").await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        });
        let mut out = vec![];
        let t = std::time::Instant::now();
        let err = download_with(&url, &mut out, &|_| {}, std::time::Duration::from_millis(300)).await.unwrap_err();
        assert!(err.to_string().contains("sent nothing") && err.to_string().contains("10 bytes"), "{err}");
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(out, b"0123456789");
    }

    #[tokio::test]
    async fn cars_hold_the_path_then_the_dag_depth_first_each_block_once() {
        let dir = std::env::temp_dir().join(format!("r1fs-car-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src/sub")).unwrap();
        let big: Vec<u8> = (0..700 * 1024).map(|i| (i % 249) as u8).collect();
        std::fs::write(dir.join("src/big.bin"), &big).unwrap();
        std::fs::write(dir.join("src/a.txt"), b"alpha").unwrap();
        // The same bytes twice: one block, written once.
        std::fs::write(dir.join("src/sub/c.txt"), b"alpha").unwrap();
        let store = super::super::store::BlockStore::open(&dir.join("store")).unwrap();
        let root = crate::r1fs::add::add_path(
            &dir.join("src"),
            false,
            &mut |c, b| store.put_own(&c, &b).map(|_| ()),
            &mut |_| {},
        )
        .unwrap()
        .cid;
        let car = |path: &str, all: bool| {
            let mut trail = vec![];
            let terminal = match resolve(&store, root, path, &mut trail).unwrap() {
                Target::File(c) | Target::Directory(c, _) => c,
            };
            let mut out = vec![];
            write_car(root, &trail, terminal, all, &mut |c| store.get(c), &mut out).unwrap();
            (terminal, out)
        };

        // The whole DAG: root first, each block after a block linking to it.
        let (_, whole) = car("", true);
        let (roots, blocks) = read_car(&whole).await;
        assert_eq!(roots, [root]);
        assert_eq!(blocks[0].0, root);
        let cids: Vec<Cid> = blocks.iter().map(|(c, _)| *c).collect();
        let unique: std::collections::HashSet<_> = cids.iter().collect();
        assert_eq!(unique.len(), cids.len(), "no block twice");
        assert_eq!(cids.len() as u64, store.walk(&root).unwrap().blocks, "every block of the DAG");
        for (i, c) in cids.iter().enumerate().skip(1) {
            let parent = cids[..i].iter().rev().find(|p| {
                let b = &blocks.iter().find(|(x, _)| x == *p).unwrap().1;
                super::super::dagpb::links(p, b).unwrap().iter().any(|l| l.cid == *c)
            });
            assert!(parent.is_some(), "block {i} ({c}) comes before any block that links to it");
        }
        // Depth-first: big.bin's leaves follow its root, before a.txt's.
        let big_root = car("big.bin", false).0;
        let at = |c: &Cid| cids.iter().position(|x| x == c).unwrap();
        let (_, a) = car("a.txt", true);
        let a_cid = read_car(&a).await.1.last().unwrap().0;
        assert!(at(&a_cid) < at(&big_root), "a.txt comes before big.bin, in link (name) order");
        assert_eq!(at(&big_root) + 4, cids.len() - 1, "big.bin's 3 leaves right after its root, then sub/");

        // A path: its blocks, then the target's DAG. A client can check
        // each step from the root it asked for.
        let (c, sub) = car("sub/c.txt", true);
        let (roots, blocks) = read_car(&sub).await;
        assert_eq!(roots, [root]);
        let got: Vec<Cid> = blocks.iter().map(|(c, _)| *c).collect();
        assert_eq!(got.len(), 3, "root, sub/, c.txt");
        assert_eq!((got[0], got[2]), (root, c));

        // dag-scope=block: the path and the target's first block only.
        let (big_root, one) = car("big.bin", false);
        let got: Vec<Cid> = read_car(&one).await.1.iter().map(|(c, _)| *c).collect();
        assert_eq!(got, [root, big_root]);

        // What a whole CAR holds rebuilds the content on a store that had
        // none of it.
        let other = super::super::store::BlockStore::open(&dir.join("other")).unwrap();
        for (cid, b) in read_car(&whole).await.1 {
            other.put(&cid, &b).unwrap();
        }
        let mut trail = vec![];
        let Target::File(f) = resolve(&other, root, "big.bin", &mut trail).unwrap() else { panic!("a file") };
        let mut bytes = vec![];
        other.cat(&f, &mut bytes).unwrap();
        assert!(bytes == big);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn block_streams_round_trip_and_bad_ones_say_why() {
        let blocks: Vec<Vec<u8>> = vec![vec![], b"a".to_vec(), vec![7; 300_000]];
        let mut stream = vec![];
        let mut cids = vec![];
        for b in &blocks {
            let cid = crate::r1fs::add::add_reader(b.as_slice(), &mut |_, _| Ok(()), &mut |_| {}).unwrap().cid;
            if cid.codec() == RAW {
                push_block(&mut stream, &cid, b);
                cids.push(cid);
            }
        }
        let got = split_blocks(&stream).unwrap();
        assert_eq!(got.iter().map(|(c, _)| *c).collect::<Vec<_>>(), cids);
        assert_eq!(got[1].1, b"a");
        assert!(split_blocks(&stream[..stream.len() - 1]).unwrap_err().contains("remain"));
        assert!(split_blocks(&[0x05, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap_err().contains("CID"));
    }
}
