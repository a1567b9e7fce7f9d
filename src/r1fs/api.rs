//! R1FS over HTTP. On the operator's local API (loopback by default):
//! `POST /v1/r1fs/blocks` (a block stream: the sections of a CARv1 file,
//! `varint(len) ‖ CID ‖ bytes`, each block verified before it is stored),
//! `POST|DELETE /v1/r1fs/pin?cid=&owner=`, `GET /v1/r1fs/pins`,
//! `GET /v1/r1fs/stat?cid=`, `POST /v1/r1fs/gc`. The read-only gateway,
//! `GET /ipfs/<cid>[/path]` (`?format=raw` for the block itself), is served
//! there and, with `--r1fs-gateway-addr`, on an address pods can reach.
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
    let stored = tokio::task::spawn_blocking(move || -> Result<(usize, u64), ApiError> {
        let blocks = split_blocks(&body).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        let (mut n, mut bytes) = (0, 0);
        for (cid, data) in blocks {
            super::cid::check(cid, &cid.to_string()).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
            // Verified here: a client is no more trusted than a peer.
            if !super::store::verifies(&cid, data) {
                return Err(error(StatusCode::BAD_REQUEST, StoreError::Mismatch(cid.to_string())));
            }
            if r.store().put_own(&cid, data).map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))? {
                n += 1;
                bytes += data.len() as u64;
            }
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
    if o.is_empty() || o.len() > 150 || o == super::pins::REPLICA || o.starts_with(super::service::IMPORT_PREFIX) {
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
        Target::Directory(links) => serde_json::json!({"kind": "directory", "entries": entries(&links)}),
    })
    .into_response())
}

/// `path` under `root`, resolved off the async threads (`root` is here).
async fn resolved(r: &R1fs, root: Cid, path: String) -> Result<Target, ApiError> {
    let store = r.store().clone();
    tokio::task::spawn_blocking(move || resolve(&store, root, &path))
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
}

async fn gateway_root(
    State(slot): State<Slot>,
    Path(cid): Path<String>,
    Query(f): Query<Format>,
) -> Result<Response, ApiError> {
    serve_path(slot, cid, String::new(), f).await
}

async fn gateway_path(
    State(slot): State<Slot>,
    Path((cid, path)): Path<(String, String)>,
    Query(f): Query<Format>,
) -> Result<Response, ApiError> {
    serve_path(slot, cid, path, f).await
}

/// What a path resolved to.
enum Target {
    File(Cid),
    Directory(Vec<super::dagpb::Link>),
}

/// Walks `path` from `root` through UnixFS directories (HAMT shards too).
fn resolve(store: &super::store::BlockStore, root: Cid, path: &str) -> Result<Target, R1fsError> {
    use rust_unixfs::{resolve, MaybeResolved};
    let mut cur = root;
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        let block = store.get(&cur)?;
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
            super::dagpb::links(&cur, &block)
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

async fn serve_path(slot: Slot, cid: String, path: String, f: Format) -> Result<Response, ApiError> {
    let r = ready(&slot)?.clone();
    let root = parse_cid(&cid)?;
    // Whole here first (fetched from peers if need be); not pinned, so GC
    // may collect it later.
    r.fetch(root, &|_| {}).await.map_err(failed)?;
    let raw = match f.format.as_deref() {
        None => false,
        Some("raw") => true,
        Some(other) => {
            return Err(error(StatusCode::BAD_REQUEST, format!("format {other:?} is not served (raw only)")))
        }
    };
    let inside = !path.is_empty();
    let target = resolved(&r, root, path).await?;
    let store = r.store().clone();
    if raw {
        let block = match target {
            Target::File(c) => c,
            Target::Directory(_) if inside => {
                return Err(error(StatusCode::BAD_REQUEST, "?format=raw of a path inside a directory is not served"))
            }
            Target::Directory(_) => root,
        };
        let block = store.get(&block).map_err(|e| failed(e.into()))?;
        return Ok(([("content-type", "application/vnd.ipld.raw")], block).into_response());
    }
    match target {
        Target::Directory(links) => Ok(Json(serde_json::json!({"entries": entries(&links)})).into_response()),
        Target::File(c) => {
            let permit = STREAMS.try_acquire().map_err(|_| {
                error(StatusCode::SERVICE_UNAVAILABLE, format!("{MAX_STREAMS} downloads are running here: try again"))
            })?;
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let mut w = io::BufWriter::with_capacity(256 * 1024, ChannelWriter(tx.clone()));
                // A block lost or corrupt here since the fetch is fetched
                // again from a peer, and the read goes on.
                let mut get = |b: &Cid| match store.get(b) {
                    Err(StoreError::NotFound(_) | StoreError::Corrupt { .. }) => {
                        handle
                            .block_on(r.heal(&root, *b))
                            .map_err(|e| StoreError::Io(io::Error::other(e.to_string())))?;
                        store.get(b)
                    }
                    other => other,
                };
                let r =
                    store.cat_with(&c, &mut w, &mut get).map(|_| ()).and_then(|_| w.flush().map_err(StoreError::Io));
                if let Err(e) = r {
                    let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
                }
            });
            let body = Body::from_stream(tokio_stream_from(rx));
            Ok(([("content-type", "application/octet-stream")], body).into_response())
        }
    }
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

/// Streams `GET url` into `out`; returns the bytes written, or the
/// server's one-line error.
pub async fn download(url: &str, out: &mut (dyn Write + Send), progress: &(dyn Fn(u64) + Sync)) -> anyhow::Result<u64> {
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
    while let Some(frame) = body.frame().await {
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
