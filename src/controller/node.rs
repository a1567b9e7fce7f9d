//! R1Node: this cluster's membership. Creates the node identity (ed25519)
//! when missing, reports the PeerId derived from it, and checks that the
//! license Secret is usable. Admission into the network (dAuth) and peer
//! state (p2p) are reported by those modules through the same status.

use super::{next_conditions, patch_status, report_transition, Context, LocalNode, Result, MANAGED_BY};
use crate::conditions::{self, Want};
use crate::crd::{R1Node, R1NodeStatus};
use crate::identity;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Secret key holding the license token.
pub const LICENSE_KEY: &str = "license";

fn plain(data: Option<&BTreeMap<String, ByteString>>) -> BTreeMap<String, Vec<u8>> {
    data.map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect()).unwrap_or_default()
}

/// Problems with the license Secret that the user must fix (pure).
pub fn check_license(secret: Option<&Secret>, name: &str, ns: &str) -> Result<(), (&'static str, String)> {
    let Some(secret) = secret else {
        return Err((
            "LicenseSecretNotFound",
            format!("Secret {ns}/{name} named by spec.license.secretName does not exist"),
        ));
    };
    let data = plain(secret.data.as_ref());
    match data.get(LICENSE_KEY) {
        None => Err(("InvalidLicenseSecret", format!("Secret {ns}/{name} has no key {LICENSE_KEY:?}"))),
        Some(v) if v.is_empty() || std::str::from_utf8(v).is_err() => {
            Err(("InvalidLicenseSecret", format!("key {LICENSE_KEY:?} of Secret {ns}/{name} is not a license token")))
        }
        Some(_) => Ok(()),
    }
}

/// The R1Node that represents this cluster: one already serving (it has a
/// PeerId and is not itself refused as a duplicate) wins over a newcomer,
/// then the oldest (creation timestamps have one-second resolution), then
/// the first by name. Any other is a mistake the user must remove.
pub fn primary(nodes: &[R1Node]) -> Option<&R1Node> {
    let serving = |n: &R1Node| {
        n.status.as_ref().is_some_and(|s| {
            s.peer_id.is_some()
                && !conditions::find(&s.conditions, conditions::STALLED)
                    .is_some_and(|c| c.status == "True" && c.reason == "DuplicateNode")
        })
    };
    nodes.iter().min_by_key(|n| (!serving(n), n.metadata.creation_timestamp.as_ref().map(|t| t.0), n.name_any()))
}

/// Reads the identity Secret, creating it when missing. `Err` carries the
/// reason it is unusable.
async fn ensure_identity(ctx: &Context, name: &str) -> Result<Result<String, (&'static str, String)>> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let secret = match api.get_opt(name).await? {
        Some(s) => s,
        None => {
            let (peer, data) = identity::generate();
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    labels: Some(BTreeMap::from([(MANAGED_BY.0.into(), MANAGED_BY.1.into())])),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
                ..Default::default()
            };
            // create, never apply: a key that already exists (made by a
            // user, or by a racing replica) must not be replaced.
            match api
                .create(&PostParams { field_manager: Some(super::FIELD_MANAGER.into()), ..Default::default() }, &secret)
                .await
            {
                Ok(s) => {
                    tracing::info!(secret = name, peer_id = %peer, "created node identity");
                    s
                }
                Err(kube::Error::Api(e)) if e.code == 409 => api.get(name).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok(match identity::from_secret_data(&plain(secret.data.as_ref())) {
        Ok(kp) => Ok(kp.public().to_peer_id().to_string()),
        Err(e) => Err(("InvalidIdentitySecret", format!("Secret {}/{name}: {e}", ctx.namespace))),
    })
}

#[tracing::instrument(skip_all, fields(kind = "R1Node", name = %n.name_any(), generation = ?n.metadata.generation))]
pub async fn reconcile(n: Arc<R1Node>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start("R1Node");
    let api: Api<R1Node> = Api::all(ctx.client.clone());
    let old = n.status.clone().unwrap_or_default();
    let name = n.name_any();

    let all = api.list(&ListParams::default()).await?.items;
    let is_primary = primary(&all).is_none_or(|p| p.name_any() == name);

    let mut peer_id = old.peer_id.clone();
    let outcome: Result<(), (&'static str, String)> = if !is_primary {
        Err((
            "DuplicateNode",
            format!(
                "R1Node {:?} already represents this cluster; a cluster is one node: delete this one",
                primary(&all).map(|p| p.name_any()).unwrap_or_default()
            ),
        ))
    } else {
        match ensure_identity(&ctx, &n.spec.identity.secret_name).await? {
            Err(bad) => Err(bad),
            Ok(pid) => {
                peer_id = Some(pid);
                let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
                let lic = secrets.get_opt(&n.spec.license.secret_name).await?;
                check_license(lic.as_ref(), &n.spec.license.secret_name, &ctx.namespace)
            }
        }
    };

    let mut wanted = match &outcome {
        Err((reason, msg)) => {
            ctx.metrics.stalled.get_or_create(&crate::metrics::KindLabels { kind: "R1Node" }).inc();
            conditions::stalled(reason, msg)
        }
        Ok(()) => conditions::ready("IdentityReady", "node identity and license Secret are in place"),
    };
    if outcome.is_ok() {
        // Verification of the token itself (issuer, binding, expiry) is
        // dAuth's; until it has run the license is not known to be valid.
        wanted.push(Want::unknown("Licensed", "AwaitingDAuth", "license token present; not yet verified by dAuth"));
        *ctx.local_node.write().expect("local node lock") =
            Some(LocalNode { name: name.clone(), peer_id: peer_id.clone() });
    }
    let status = R1NodeStatus {
        peer_id,
        observed_generation: n.metadata.generation,
        conditions: next_conditions(&old.conditions, &wanted, n.metadata.generation),
        ..old.clone()
    };
    let same = old.peer_id == status.peer_id
        && old.observed_generation == status.observed_generation
        && conditions::same_ignoring_time(&old.conditions, &status.conditions);
    if !same {
        patch_status(&api, n.as_ref(), &status).await?;
        report_transition(&ctx, n.as_ref(), &old.conditions, &status.conditions).await;
    }
    ctx.succeeded(n.as_ref());
    Ok(if outcome.is_ok() { Action::requeue(ctx.resync) } else { Action::await_change() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(data: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn license_secret_shapes() {
        assert_eq!(check_license(None, "l", "ns").unwrap_err().0, "LicenseSecretNotFound");
        assert_eq!(check_license(Some(&secret(&[("x", b"1")])), "l", "ns").unwrap_err().0, "InvalidLicenseSecret");
        assert_eq!(
            check_license(Some(&secret(&[(LICENSE_KEY, b"")])), "l", "ns").unwrap_err().0,
            "InvalidLicenseSecret"
        );
        assert_eq!(
            check_license(Some(&secret(&[(LICENSE_KEY, &[0xff, 0xfe])])), "l", "ns").unwrap_err().0,
            "InvalidLicenseSecret"
        );
        assert!(check_license(Some(&secret(&[(LICENSE_KEY, b"tok")])), "l", "ns").is_ok());
    }

    #[test]
    fn oldest_node_is_primary() {
        use crate::crd::{LicenseRef, R1NodeSpec};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let mk = |name: &str, t: i64| {
            let mut n = R1Node::new(
                name,
                R1NodeSpec {
                    identity: Default::default(),
                    license: LicenseRef { secret_name: "l".into() },
                    roles: vec![],
                    p2p: Default::default(),
                    offer: Default::default(),
                },
            );
            n.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::from_second(t).unwrap()));
            n
        };
        let mut nodes = vec![mk("b", 5), mk("a", 9), mk("c", 5)];
        assert_eq!(primary(&nodes).unwrap().name_any(), "b");
        // A node already serving keeps its place against an older newcomer.
        nodes[2].status = Some(R1NodeStatus { peer_id: Some("12D3".into()), ..Default::default() });
        assert_eq!(primary(&nodes).unwrap().name_any(), "c");
    }
}
