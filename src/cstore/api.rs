//! CSTORE on the operator's local API (`/v1/cstore/…`, loopback by
//! default), and the client side the `ratio1 cstore` CLI uses. Keys go in
//! the query string (they contain `/`), values as the JSON request body.

use super::record::Record;
use super::{Cstore, CstoreError};
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The replica, when CSTORE is configured (on every replica of the
/// operator; writes need the leader's network to sign).
pub type Slot = Arc<OnceLock<Cstore>>;

#[derive(Deserialize, Default)]
pub struct Params {
    key: Option<String>,
    hash: Option<String>,
    field: Option<String>,
    prefix: Option<String>,
    /// Time to live in seconds (fractions allowed).
    ttl: Option<f64>,
}

/// Routes under `/v1/cstore`.
pub fn routes(slot: Slot) -> Router {
    Router::new()
        .route("/v1/cstore/status", get(status))
        .route("/v1/cstore/get", get(get_key))
        .route("/v1/cstore/set", axum::routing::put(set_key))
        .route("/v1/cstore/del", axum::routing::delete(del_key))
        .route("/v1/cstore/hget", get(hget))
        .route("/v1/cstore/hset", axum::routing::put(hset))
        .route("/v1/cstore/hdel", axum::routing::delete(hdel))
        .route("/v1/cstore/hgetall", get(hgetall))
        .route("/v1/cstore/keys", get(keys))
        .route("/v1/cstore/watch", get(watch))
        .with_state(slot)
}

use crate::http::{error, ApiError};

impl From<CstoreError> for ApiError {
    fn from(e: CstoreError) -> Self {
        let status = match &e {
            CstoreError::Invalid(_) => StatusCode::BAD_REQUEST,
            CstoreError::NoIdentity | CstoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        error(status, e)
    }
}

type Answer = Result<Response, ApiError>;

fn store(slot: &Slot) -> Result<&Cstore, ApiError> {
    slot.get().ok_or_else(|| {
        error(StatusCode::SERVICE_UNAVAILABLE, "CSTORE is not configured on this operator (--cstore-endpoints)")
    })
}

fn need<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, ApiError> {
    v.as_deref().ok_or_else(|| error(StatusCode::BAD_REQUEST, format!("query parameter {name} is missing")))
}

fn ttl(p: &Params) -> Result<Option<Duration>, ApiError> {
    match p.ttl {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= 30.0 * 86_400.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(error(StatusCode::BAD_REQUEST, format!("ttl {s} is not between 0 and 30 days (seconds)"))),
    }
}

fn value(body: &Bytes) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, format!("value is not JSON: {e}")))
}

/// A record as the API shows it.
pub fn show(r: &Record) -> serde_json::Value {
    let mut v = serde_json::json!({
        "key": r.slot.key,
        "value": r.value_json(),
        "hlc": r.hlc.0,
        "writer": r.writer,
    });
    if let Some(f) = &r.slot.field {
        v["field"] = f.clone().into();
    }
    if let Some(e) = r.expires {
        v["expires"] = e.into();
    }
    v
}

fn found(r: Option<Record>, what: String) -> Answer {
    match r {
        Some(r) => Ok(Json(show(&r)).into_response()),
        None => Err(error(StatusCode::NOT_FOUND, format!("{what} not found"))),
    }
}

async fn status(State(slot): State<Slot>) -> Answer {
    Ok(Json(store(&slot)?.status()).into_response())
}

async fn get_key(State(slot): State<Slot>, Query(p): Query<Params>) -> Answer {
    let key = need(&p.key, "key")?;
    found(store(&slot)?.get(key).await?, format!("key {key}"))
}

async fn set_key(State(slot): State<Slot>, Query(p): Query<Params>, body: Bytes) -> Answer {
    let (key, v, ttl) = (need(&p.key, "key")?, value(&body)?, ttl(&p)?);
    Ok(Json(show(&store(&slot)?.set(key, &v, ttl).await?)).into_response())
}

async fn del_key(State(slot): State<Slot>, Query(p): Query<Params>) -> Answer {
    let key = need(&p.key, "key")?;
    Ok(Json(serde_json::json!({ "deleted": store(&slot)?.del(key).await? })).into_response())
}

async fn hget(State(slot): State<Slot>, Query(p): Query<Params>) -> Answer {
    let (hash, field) = (need(&p.hash, "hash")?, need(&p.field, "field")?);
    found(store(&slot)?.hget(hash, field).await?, format!("field {field} of {hash}"))
}

async fn hset(State(slot): State<Slot>, Query(p): Query<Params>, body: Bytes) -> Answer {
    let (hash, field) = (need(&p.hash, "hash")?, need(&p.field, "field")?);
    let (v, ttl) = (value(&body)?, ttl(&p)?);
    Ok(Json(show(&store(&slot)?.hset(hash, field, &v, ttl).await?)).into_response())
}

async fn hdel(State(slot): State<Slot>, Query(p): Query<Params>) -> Answer {
    let (hash, field) = (need(&p.hash, "hash")?, need(&p.field, "field")?);
    Ok(Json(serde_json::json!({ "deleted": store(&slot)?.hdel(hash, field).await? })).into_response())
}

async fn hgetall(State(slot): State<Slot>, Query(p): Query<Params>) -> Answer {
    let hash = need(&p.hash, "hash")?;
    let all = store(&slot)?.hgetall(hash).await?;
    let out: serde_json::Map<String, serde_json::Value> = all.iter().map(|(f, r)| (f.clone(), show(r))).collect();
    Ok(Json(out).into_response())
}

async fn keys(State(slot): State<Slot>, Query(p): Query<Params>) -> Answer {
    let prefix = p.prefix.as_deref().unwrap_or("");
    Ok(Json(store(&slot)?.keys(prefix)?).into_response())
}

/// Changes as newline-delimited JSON, until the client goes away.
async fn watch(State(slot): State<Slot>, Query(p): Query<Params>) -> Answer {
    use futures::StreamExt;
    let changes = store(&slot)?.watch(p.prefix.as_deref().unwrap_or(""))?;
    let lines = changes.map(|c| {
        let v = match &c.record {
            Some(r) if r.is_tombstone() => {
                serde_json::json!({"key": c.slot.key, "field": c.slot.field, "deleted": true})
            }
            Some(r) => show(r),
            None => serde_json::json!({"key": c.slot.key, "field": c.slot.field, "gone": true}),
        };
        Ok::<_, std::convert::Infallible>(Bytes::from(format!("{v}\n")))
    });
    Ok(([("content-type", "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

/// Streams a watch to `out`, one JSON line per change, `count` at most.
pub async fn follow(url: &str, count: Option<usize>, mut out: impl FnMut(&str)) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = url.parse().map_err(|_| anyhow::anyhow!("{url:?} is not a URL"))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let resp = client.get(uri).await.map_err(|e| anyhow::anyhow!("cannot reach the operator at {url}: {e}"))?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = body.collect().await?.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        anyhow::bail!("{}", v["error"].as_str().unwrap_or(status.as_str()));
    }
    let mut buf = Vec::new();
    let mut seen = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        buf.extend_from_slice(&data);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            out(String::from_utf8_lossy(&line[..line.len() - 1]).as_ref());
            seen += 1;
            if count.is_some_and(|c| seen >= c) {
                return Ok(());
            }
        }
    }
    anyhow::bail!("the operator closed the watch (it fell behind, or stopped)")
}
