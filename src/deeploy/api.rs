//! Deeploy on the operator's local API: `POST /v1/deeploy/plan` (where a
//! pipeline would go, nothing applied) and `GET /v1/deeploy/status` (an
//! intent and its reports), read by `ratio1 deeploy plan|status`.

use super::Deeploy;
use crate::crd::R1Pipeline;
use crate::http::{error, ApiError};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kube::ResourceExt;
use serde::Deserialize;
use std::sync::{Arc, OnceLock};

/// Deeploy, once this replica leads with CSTORE on.
pub type Slot = Arc<OnceLock<Deeploy>>;

pub fn routes(slot: Slot) -> Router {
    Router::new().route("/v1/deeploy/plan", post(plan)).route("/v1/deeploy/status", get(status)).with_state(slot)
}

/// Deeploy and this node's PeerId, or why the API cannot answer (503).
fn ready(slot: &Slot) -> Result<(&Deeploy, String), ApiError> {
    let unavailable = |msg: String| error(StatusCode::SERVICE_UNAVAILABLE, msg);
    let d = slot.get().ok_or_else(|| {
        unavailable("Deeploy is not running here: this replica does not lead, or CSTORE is off".into())
    })?;
    let me = d.ready().map_err(|why| unavailable(format!("Deeploy is not ready: {why}")))?;
    Ok((d, me))
}

async fn plan(State(slot): State<Slot>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let (d, me) = ready(&slot)?;
    let p: R1Pipeline =
        serde_json::from_slice(&body).map_err(|e| error(StatusCode::BAD_REQUEST, format!("not an R1Pipeline: {e}")))?;
    let ns = p.namespace().unwrap_or_else(|| "default".into());
    let (plan, need) = d.plan(&me, &ns, &p.name_any(), &p.spec).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    Ok(Json(serde_json::json!({"origin": me, "namespace": ns, "need": need, "plan": plan})).into_response())
}

#[derive(Deserialize)]
struct Name {
    namespace: String,
    name: String,
}

async fn status(State(slot): State<Slot>, Query(q): Query<Name>) -> Result<Response, ApiError> {
    let (d, me) = ready(&slot)?;
    let mut origins = d.origins_of(&q.namespace, &q.name);
    if !origins.contains(&me) {
        origins.insert(0, me.clone());
    }
    let all: Vec<serde_json::Value> = origins
        .iter()
        .map(|o| {
            let mut v = d.status_of(o, &q.namespace, &q.name);
            v["origin"] = serde_json::json!(o);
            v
        })
        .filter(|v| !v["intent"].is_null() || v["reports"].as_array().is_some_and(|r| !r.is_empty()))
        .collect();
    Ok(Json(serde_json::json!({"node": me, "pipelines": all})).into_response())
}
