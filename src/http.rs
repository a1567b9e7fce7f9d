//! HTTP pieces shared by the local API's routes (its one error answer)
//! and by the CLI (its calls to that API). Below every module that serves
//! or calls the API, so that none of them needs another's.

use axum::http::StatusCode;
use axum::response::IntoResponse;

/// An error answer of the local API: a status and one line, as the JSON
/// `{"error": ...}` that [`request_json`] turns back into the CLI's message.
pub struct ApiError(pub StatusCode, pub String);

pub fn error(status: StatusCode, msg: impl std::fmt::Display) -> ApiError {
    ApiError(status, msg.to_string())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// GET of a JSON document over plain HTTP (the CLI reads an operator's
/// endpoints with it).
pub async fn get_json(url: &str) -> anyhow::Result<serde_json::Value> {
    request_json(http::Method::GET, url, None, std::time::Duration::from_secs(10)).await
}

/// One request of the CLI to an operator's local API: the JSON answer, or
/// the server's one-line error (its `error` field).
pub async fn request_json(
    method: http::Method,
    url: &str,
    body: Option<String>,
    timeout: std::time::Duration,
) -> anyhow::Result<serde_json::Value> {
    request(method, url, body.unwrap_or_default().into_bytes(), "application/json", timeout).await
}

/// One request with a body of any type; the answer is JSON as in
/// [`request_json`].
pub async fn request(
    method: http::Method,
    url: &str,
    body: Vec<u8>,
    content_type: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<serde_json::Value> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = url.parse().map_err(|_| anyhow::anyhow!("{url:?} is not a URL"))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<hyper::body::Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type)
        .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| anyhow::anyhow!("{url} did not answer within {} s", timeout.as_secs()))?
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(|e| anyhow::anyhow!("reading {url}: {e}"))?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| anyhow::anyhow!("{url} answered {status}: {}", String::from_utf8_lossy(&bytes).trim()))?;
    if !status.is_success() {
        anyhow::bail!(
            "{}",
            v["error"].as_str().map(String::from).unwrap_or_else(|| format!("{url} answered {status}"))
        );
    }
    Ok(v)
}
