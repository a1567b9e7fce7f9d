//! R1Node: this cluster's membership. Creates the node identity (ed25519)
//! when missing, reports the PeerId derived from it, and checks that the
//! license Secret is usable. Admission into the network (dAuth) and peer
//! state (p2p) are reported by those modules through the same status.

use super::{finish, Context, LocalNode, NetOptions, Result, MANAGED_BY};
use crate::conditions::{self, Invalid, Want};
use crate::crd::{R1Node, R1NodeStatus};
use crate::dauth::license::TrustStore;
use crate::identity;
use crate::p2p::{self, NetConfig, View};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use libp2p::Multiaddr;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Secret key holding the license token.
pub const LICENSE_KEY: &str = "license";

fn plain(data: Option<&BTreeMap<String, ByteString>>) -> BTreeMap<String, Vec<u8>> {
    data.map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect()).unwrap_or_default()
}

/// Problems with the license Secret that the user must fix (pure).
pub fn check_license(secret: Option<&Secret>, name: &str, ns: &str) -> Result<(), Invalid> {
    let Some(secret) = secret else {
        return Err(Invalid::new(
            "LicenseSecretNotFound",
            format!("Secret {ns}/{name} named by spec.license.secretName does not exist"),
        ));
    };
    let data = plain(secret.data.as_ref());
    match data.get(LICENSE_KEY) {
        None => Err(Invalid::new("InvalidLicenseSecret", format!("Secret {ns}/{name} has no key {LICENSE_KEY:?}"))),
        Some(v) if v.is_empty() || std::str::from_utf8(v).is_err() => Err(Invalid::new(
            "InvalidLicenseSecret",
            format!("key {LICENSE_KEY:?} of Secret {ns}/{name} is not a license token"),
        )),
        Some(_) => Ok(()),
    }
}

/// The R1Node that represents this cluster: one already serving (it has a
/// PeerId and is not itself refused as a duplicate) wins over a newcomer,
/// then the oldest (creation timestamps have one-second resolution), then
/// the first by name. Any other is a mistake the user must remove.
pub fn primary<N: std::borrow::Borrow<R1Node>>(nodes: &[N]) -> Option<&R1Node> {
    let serving = |n: &R1Node| {
        n.status.as_ref().is_some_and(|s| {
            s.peer_id.is_some()
                && !conditions::find(&s.conditions, conditions::STALLED)
                    .is_some_and(|c| c.status == "True" && c.reason == "DuplicateNode")
        })
    };
    nodes
        .iter()
        .map(|n| n.borrow())
        .min_by_key(|n| (!serving(n), n.metadata.creation_timestamp.as_ref().map(|t| t.0), n.name_any()))
}

/// Reads the identity Secret, creating it when missing. `Err` carries the
/// reason it is unusable.
async fn ensure_identity(ctx: &Context, name: &str) -> Result<Result<libp2p_identity::Keypair, Invalid>> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let secret = match super::cached_or_get(&ctx.caches.secrets, &api, Some(&ctx.namespace), name).await? {
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
                    Arc::new(s)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Arc::new(api.get(name).await?),
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok(match identity::from_secret_data(&plain(secret.data.as_ref())) {
        Ok(kp) => Ok(kp),
        Err(e) => Err(Invalid::new("InvalidIdentitySecret", format!("Secret {}/{name}: {e}", ctx.namespace))),
    })
}

/// Multiaddrs from the flag override, else from the spec.
fn addrs(flag: &[String], spec: &[String], field: &str) -> Result<Vec<Multiaddr>, Invalid> {
    let src = if flag.is_empty() { spec } else { flag };
    src.iter()
        .map(|a| {
            a.parse::<Multiaddr>()
                .map_err(|e| Invalid::new("InvalidAddress", format!("{field}: {a:?} is not a multiaddr: {e}")))
        })
        .collect()
}

/// The network configuration this R1Node asks for (pure but for the
/// options): `Ok(None)` when it has no listen address (it stays out of
/// the network), `Err` for addresses that do not parse.
fn desired_network(
    net: &NetOptions,
    n: &R1Node,
    keypair: libp2p_identity::Keypair,
    license: String,
) -> Result<Option<NetConfig>, Invalid> {
    let listen = addrs(&net.listen, &n.spec.p2p.listen, "spec.p2p.listen")?;
    let bootstrap = addrs(&net.bootstrap, &n.spec.p2p.bootstrap, "spec.p2p.bootstrap")?;
    let external = addrs(&net.external, &n.spec.p2p.external, "spec.p2p.external")?;
    if listen.is_empty() {
        return Ok(None);
    }
    let mut cfg = NetConfig::new(keypair, license, net.trust.clone());
    cfg.node_name = n.name_any();
    cfg.listen = listen;
    cfg.bootstrap = bootstrap;
    cfg.external = external;
    cfg.roles = n.spec.roles.clone();
    cfg.offer = serde_json::to_value(&n.spec.offer).unwrap_or_default();
    cfg.tuning = net.tuning.clone();
    cfg.cstore = net.cstore.clone();
    cfg.r1fs = net.r1fs.clone();
    Ok(Some(cfg))
}

/// `Licensed` from the node's own token (pure).
pub fn license_condition(trust: &TrustStore, token: &str, peer: &str, now: i64) -> Want {
    if trust.is_empty() {
        return Want::unknown(
            "Licensed",
            "NoTrustedIssuers",
            "no trusted license issuer is configured (--trusted-issuer): the license cannot be verified",
        );
    }
    match trust.verify(token, peer, now) {
        Ok(c) => Want::new(
            "Licensed",
            true,
            "LicenseValid",
            format!("{} license {} valid until {}", c.class, c.id, crate::dauth::license::show_time(c.exp)),
        ),
        Err(e) => Want::new("Licensed", false, e.reason(), e.to_string()),
    }
}

/// `Connected` from the network's view (pure), and the fresh peer count.
pub fn connected_condition(view: &View, disabled: Option<&str>, now: i64) -> (Want, u32) {
    let fresh = view.fresh_peers(now).len() as u32;
    let connected = match (disabled, &view.listen_error) {
        (Some(msg), _) => Want::new("Connected", false, "P2pDisabled", msg),
        (None, Some(err)) => Want::new("Connected", false, "ListenFailed", err.clone()),
        (None, None) if !view.running => Want::new(
            "Connected",
            false,
            "NetworkNotRunning",
            view.failure.clone().unwrap_or_else(|| "the network is starting".into()),
        ),
        (None, None) if fresh > 0 => {
            Want::new("Connected", true, "PeersConnected", format!("{fresh} licensed peer(s)"))
        }
        (None, None) => Want::new("Connected", false, "NoPeers", "no licensed peer heard from yet"),
    };
    (connected, fresh)
}

#[tracing::instrument(skip_all, fields(kind = "R1Node", name = %n.name_any(), generation = ?n.metadata.generation))]
pub async fn reconcile(n: Arc<R1Node>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start("R1Node");
    let api: Api<R1Node> = Api::all(ctx.client.clone());
    let old = n.status.clone().unwrap_or_default();
    let name = n.name_any();

    // All R1Nodes from the controller's own cache (reconciles start only
    // once it is filled); an empty cache (tests) holds this node alone.
    let mut all = ctx.caches.nodes.state();
    if all.is_empty() {
        all.push(n.clone());
    }
    let primary_name = primary(&all).map(|p| p.name_any());
    let is_primary = primary_name.as_deref().is_none_or(|p| p == name);

    let mut peer_id = old.peer_id.clone();
    let mut disabled: Option<String> = None;
    let mut licensed = None;
    let outcome: Result<(), Invalid> = if !is_primary {
        Err(Invalid::new(
            "DuplicateNode",
            format!(
                "R1Node {:?} already represents this cluster; a cluster is one node: delete this one",
                primary_name.unwrap_or_default()
            ),
        ))
    } else {
        match ensure_identity(&ctx, &n.spec.identity.secret_name).await? {
            Err(bad) => Err(bad),
            Ok(kp) => {
                peer_id = Some(kp.public().to_peer_id().to_string());
                // A miss is looked up: a missing license stalls the node.
                let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
                let lic_name = &n.spec.license.secret_name;
                let lic = super::cached_or_get(&ctx.caches.secrets, &secrets, Some(&ctx.namespace), lic_name).await?;
                match check_license(lic.as_deref(), lic_name, &ctx.namespace) {
                    Err(bad) => Err(bad),
                    Ok(()) => {
                        let token = lic
                            .as_ref()
                            .and_then(|s| s.data.as_ref())
                            .and_then(|d| d.get(LICENSE_KEY).map(|v| String::from_utf8_lossy(&v.0).trim().to_string()))
                            .unwrap_or_default();
                        let pid = kp.public().to_peer_id().to_string();
                        let lic = license_condition(&ctx.net.trust, &token, &pid, p2p::now_ms() / 1000);
                        let valid = lic.status != Some(false);
                        licensed = Some(lic);
                        match desired_network(&ctx.net, &n, kp, token) {
                            Err(bad) => Err(bad),
                            Ok(None) => {
                                disabled = Some(
                                    "no listen address (spec.p2p.listen): this node does not join the network".into(),
                                );
                                ctx.network.want(None);
                                Ok(())
                            }
                            // A node without a valid license has nothing to
                            // do on the network (peers would refuse it).
                            Ok(Some(_)) if !valid => {
                                ctx.network.want(None);
                                Ok(())
                            }
                            Ok(Some(cfg)) => {
                                ctx.network.want_for(&n.uid().unwrap_or_default(), cfg);
                                Ok(())
                            }
                        }
                    }
                }
            }
        }
    };

    // Pipelines are placed by the primary node (whatever its network
    // state): a change of it wakes them.
    ctx.set_local_node(local_node(&all));
    let profile = primary(&all).and_then(|p| {
        let s = &p.spec;
        crate::deeploy::plan::Profile::from_node(&p.name_any(), p.labels(), &s.roles, &s.offer, &s.policy)
            .inspect_err(|e| tracing::warn!(node = %p.name_any(), error = %e, "R1Node offer/policy unusable: not offered to the network"))
            .ok()
    });
    ctx.deeploy_profile.send_if_modified(|cur| {
        let changed = *cur != profile;
        *cur = profile;
        changed
    });
    if is_primary && outcome.is_err() {
        // It cannot be what it says: leave the network rather than go on
        // with an old identity or license.
        ctx.network.want(None);
    }
    // The full set of conditions this reconcile asserts: a stalled node
    // says only why (no stale Licensed/Connected), and claims no peers.
    let mut peers = 0;
    let mut epoch = None;
    let mut availability = None;
    let mut license_class = None;
    let mut rewards = None;
    let mut last_heartbeat = old.last_heartbeat.clone();
    let wanted = match &outcome {
        Err(bad) => conditions::stalled(bad.reason, &bad.message),
        Ok(()) => {
            let mut wanted = conditions::ready("IdentityReady", "node identity and license Secret are in place");
            // Read under the lock, no copy: the view holds bounded logs too.
            let ((connected, fresh), last_sent, current) = {
                let view = ctx.view.read().expect("view lock");
                // From the clock in use (the flags', or an oracle's through
                // dAuth) itself: the view's epoch lags a tick.
                let epoch = view.running.then(|| view.clock.and_then(|c| c.at(p2p::now_ms() as u64))).flatten();
                license_class = view.running.then_some(view.own_class).flatten().map(|c| c.to_string());
                (connected_condition(&view, disabled.as_deref(), p2p::now_ms()), view.last_heartbeat_sent, epoch)
            };
            epoch = current;
            if let Some(o) = ctx.oracle.get().filter(|_| current.is_some()) {
                let s = o.status();
                availability = s.availability.zip(s.availability_epoch);
            }
            if let Some(e) = ctx.economy.get().filter(|_| current.is_some()) {
                rewards = e.mine().map(|(license, claimable)| {
                    // Nothing claimable yet is zero; another cause (banned)
                    // shows as no amount.
                    let amount = match claimable {
                        Ok(c) => Some(crate::economy::show_r1(c.amount)),
                        Err(why) if why.starts_with("nothing to claim") => Some("0".into()),
                        Err(_) => None,
                    };
                    (license, amount)
                });
            }
            if let Some(bad) = licensed.as_ref().filter(|w| w.status == Some(false)) {
                // Peers refuse a node without a valid license: only a new
                // license (a Secret change) helps.
                wanted = conditions::stalled(&bad.reason, &bad.message);
            }
            wanted.extend(licensed);
            wanted.push(connected);
            peers = fresh;
            if let Some(t) = last_sent.and_then(|ms| k8s_openapi::jiff::Timestamp::from_millisecond(ms).ok()) {
                last_heartbeat = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t));
            }
            wanted
        }
    };
    let status = R1NodeStatus {
        peer_id,
        license_class,
        peers,
        last_heartbeat,
        observed_generation: n.metadata.generation,
        // The epoch clock's, while the network runs; availability is the
        // oracles' decision (OracleSync), while it runs here.
        epoch,
        availability: availability.map(|(a, _)| a),
        availability_epoch: availability.map(|(_, e)| e),
        registry_license: rewards.as_ref().map(|(l, _)| l.clone()),
        unclaimed_rewards: rewards.and_then(|(_, a)| a),
        ..Default::default()
    };
    finish(&ctx, &api, n.as_ref(), n.status.as_ref(), status, &wanted).await?;
    // Healthy nodes refresh lastHeartbeat twice a minute; peer changes wake
    // the controller at once (reconcile_all_on); a duplicate wakes when
    // another R1Node is deleted (a watch of deletions), and looks again
    // every 10 s: a deletion while that watch re-lists is never seen as one.
    Ok(match &outcome {
        Ok(()) => Action::requeue(ctx.resync.min(std::time::Duration::from_secs(30))),
        Err(bad) if bad.reason == "DuplicateNode" => Action::requeue(std::time::Duration::from_secs(10)),
        Err(_) => Action::await_change(),
    })
}

/// This cluster's node for placement: the primary R1Node, as cached.
pub fn local_node(nodes: &[Arc<R1Node>]) -> Option<LocalNode> {
    primary(nodes).map(|n| LocalNode {
        name: n.name_any(),
        peer_id: n.status.as_ref().and_then(|s| s.peer_id.clone()),
        labels: n.labels().clone(),
        node_selector: n.spec.offer.node_selector.clone(),
    })
}

/// Every R1Node but `deleted`: a deletion may make a duplicate the primary.
pub fn others(nodes: &[Arc<R1Node>], deleted: &R1Node) -> Vec<kube::runtime::reflector::ObjectRef<R1Node>> {
    nodes
        .iter()
        .filter(|n| n.name_any() != deleted.name_any())
        .map(|n| kube::runtime::reflector::ObjectRef::from_obj(n.as_ref()))
        .collect()
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
        assert_eq!(check_license(None, "l", "ns").unwrap_err().reason, "LicenseSecretNotFound");
        assert_eq!(check_license(Some(&secret(&[("x", b"1")])), "l", "ns").unwrap_err().reason, "InvalidLicenseSecret");
        assert_eq!(
            check_license(Some(&secret(&[(LICENSE_KEY, b"")])), "l", "ns").unwrap_err().reason,
            "InvalidLicenseSecret"
        );
        assert_eq!(
            check_license(Some(&secret(&[(LICENSE_KEY, &[0xff, 0xfe])])), "l", "ns").unwrap_err().reason,
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
                    policy: Default::default(),
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

    #[test]
    fn license_condition_follows_the_trust_store() {
        use crate::dauth::license::{issue, key_id, Claims, Class};
        let issuer = libp2p_identity::ed25519::Keypair::generate();
        let claims = Claims {
            id: "l1".into(),
            class: Class::Nd,
            peer: "p".into(),
            iat: 0,
            exp: 100,
            iss: key_id(&issuer.public()),
        };
        let token = issue(&issuer, &claims);
        let none = license_condition(&TrustStore::default(), &token, "p", 50);
        assert_eq!((none.status, none.reason.as_str()), (None, "NoTrustedIssuers"));
        let trust = TrustStore::new([issuer.public()], []);
        assert_eq!(license_condition(&trust, &token, "p", 50).status, Some(true));
        let late = license_condition(&trust, &token, "p", 100);
        assert_eq!((late.status, late.reason.as_str()), (Some(false), "LicenseExpired"));
    }

    #[test]
    fn connected_counts_only_fresh_peers() {
        use crate::p2p::PeerInfo;
        let mut view = View { heartbeat_timeout_ms: 1000, ..Default::default() };
        let (c, _) = connected_condition(&view, None, 10_000);
        assert_eq!((c.status, c.reason.as_str()), (Some(false), "NetworkNotRunning"));
        view.running = true;
        let (c, n) = connected_condition(&view, None, 10_000);
        assert_eq!((c.status, c.reason.as_str(), n), (Some(false), "NoPeers", 0));
        let peer = |hb: i64| PeerInfo {
            peer_id: "x".into(),
            node: "n".into(),
            license_id: "l".into(),
            class: crate::dauth::license::Class::Nd,
            roles: vec![],
            version: "0".into(),
            last_heartbeat: Some(hb),
            connected: true,
            offer: serde_json::json!({}),
        };
        view.peers.insert("a".into(), peer(9_500));
        view.peers.insert("b".into(), peer(5_000));
        let (c, n) = connected_condition(&view, None, 10_000);
        assert_eq!((c.status, n), (Some(true), 1), "b is stale");
        let (c, _) = connected_condition(&view, Some("off"), 10_000);
        assert_eq!(c.reason, "P2pDisabled");
    }
}
