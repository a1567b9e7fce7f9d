//! Reading the operator's structured logs (`--log-format json`: one JSON
//! object per line, as tracing-subscriber writes it: `timestamp`, `level`,
//! `fields`, `target`, `span`, `spans`).

use serde_json::Value;

/// What a JSON log says about refused API requests.
#[derive(Debug, Default)]
pub struct ApiRefusals {
    /// Lines that parsed as JSON objects.
    pub json_lines: usize,
    /// Lines that report an HTTP 403 from the API server.
    pub lines: Vec<String>,
}

/// Finds the lines of a JSON log that report an HTTP 403 (Forbidden) from
/// the API server. The operator logs an API error as the error's text in a
/// field: `controller::error_policy` puts it in `cause`, other call sites
/// in `error`, kube-runtime's watcher in the message; kube's `Error::Api`
/// prints the API server's Status there, with `code: 403`. So a line counts
/// when a field (of the event or of its spans, never the timestamp) named
/// `code` or `status` is 403, or when a field's text carries `code: 403`
/// (or the Status JSON `"code":403`, or kube-runtime's `error with 403`).
/// Matching within fields, not on the raw line, is what keeps a timestamp
/// such as `15.474039` or an object name from counting. A line that is not
/// JSON (a panic, say) counts when it says "forbidden" at all.
pub fn api_refusals(log: &str) -> ApiRefusals {
    let mut out = ApiRefusals::default();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let refused = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(mut event)) => {
                out.json_lines += 1;
                event.remove("timestamp");
                reports_403(None, &Value::Object(event))
            }
            _ => line.to_lowercase().contains("forbidden"),
        };
        if refused {
            out.lines.push(line.to_string());
        }
    }
    out
}

fn reports_403(key: Option<&str>, v: &Value) -> bool {
    let code_key = matches!(key, Some("code" | "status" | "http_status"));
    match v {
        Value::Number(n) => code_key && n.as_u64() == Some(403),
        Value::String(s) => (code_key && s.trim() == "403") || text_reports_403(s),
        Value::Array(a) => a.iter().any(|v| reports_403(None, v)),
        Value::Object(m) => m.iter().any(|(k, v)| reports_403(Some(k), v)),
        _ => false,
    }
}

fn text_reports_403(s: &str) -> bool {
    ["code: 403", "\"code\":403", "\"code\": 403", "error with 403", "error 403"]
        .iter()
        .any(|pat| s.match_indices(pat).any(|(i, _)| !s[i + pat.len()..].starts_with(|c: char| c.is_ascii_digit())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use kube::runtime::events::{Recorder, Reporter};
    use ratio1::controller::{error_policy, Context, Error};
    use ratio1::crd::R1Pipeline;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn api_error(code: u16, reason: &str, message: &str) -> Error {
        Error::Kube(kube::Error::Api(Box::new(kube::core::Status::failure(message, reason).with_code(code))))
    }

    /// The real `error_policy` logs through the operator's JSON format; a
    /// 403 is found, a 404 and a timestamp holding "403" are not.
    #[tokio::test]
    async fn a_403_in_the_json_log_is_found_and_nothing_else() {
        let buf = Buffer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt().json().with_writer(move || writer.clone()).finish();
        let _default = tracing::subscriber::set_default(subscriber);

        let (svc, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let recorder = Recorder::new(client.clone(), Reporter { controller: "t".into(), instance: None });
        let ctx = Arc::new(Context::new(client, recorder, Default::default(), "ratio1-system".into()));
        let p: R1Pipeline = serde_json::from_value(serde_json::json!({
            "apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Pipeline",
            "metadata": {"name": "p-403", "namespace": "rbac-403"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}
        }))
        .unwrap();
        let p = Arc::new(p);
        let forbidden = api_error(
            403,
            "Forbidden",
            "deployments.apps \"p\" is forbidden: User \"system:serviceaccount:ratio1-system:ratio1-operator\" cannot patch resource \"deployments\"",
        );
        error_policy(p.clone(), &api_error(404, "NotFound", "pods \"x\" not found"), ctx.clone());
        error_policy(p.clone(), &forbidden, ctx.clone());
        tracing::info!(generation = 403, "reconciled");
        let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let log = format!(
            "{log}{}\n",
            r#"{"timestamp":"2025-06-01T10:00:15.403403Z","level":"INFO","fields":{"message":"reconciled"},"target":"ratio1"}"#
        );

        let found = api_refusals(&log);
        assert_eq!(found.json_lines, 4, "{log}");
        assert_eq!(found.lines.len(), 1, "{found:#?}");
        assert!(found.lines[0].contains("reconcile failed") && found.lines[0].contains("is forbidden"), "{found:#?}");
        // A plain search for "403" would also have hit the 404 line (its
        // namespace), the generation and the timestamp.
        assert!(log.matches("403").count() > 3);
    }

    #[test]
    fn other_shapes_of_a_403() {
        let watcher = r#"{"timestamp":"t","level":"WARN","fields":{"message":"watch list error with 403: Api(Status { status: Some(Failure), code: 403, message: \"…\", reason: \"Forbidden\" })"},"target":"kube_runtime::watcher"}"#;
        let structured = r#"{"timestamp":"t","level":"WARN","fields":{"message":"reconcile failed","status":403},"target":"ratio1::controller"}"#;
        let other = r#"{"timestamp":"t","level":"WARN","fields":{"message":"x","error":"ApiError: … (Status { code: 4030 })"},"target":"t"}"#;
        let panic = "thread 'main' panicked: Forbidden";
        let found = api_refusals(&[watcher, structured, other, panic].join("\n"));
        assert_eq!(found.json_lines, 3);
        assert_eq!(found.lines, [watcher, structured, panic]);
    }
}
