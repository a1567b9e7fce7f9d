//! A federation of clusters for tests: one operator per cluster, joined over
//! libp2p on 127.0.0.1 with licenses from a test issuer. The first node is
//! an oracle (MND license) and the bootstrap peer of the others.

use super::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use libp2p_identity::ed25519;
use ratio1::crd::R1Node;
use ratio1::dauth::license::{self, Claims, Class};
use serde_json::json;

/// Clusters 4-6 host one federation at a time (the federation and CSTORE
/// tests take turns; each test has its own runtime, a tokio Mutex works
/// across them).
pub static CLUSTERS_4_TO_6: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct FedNode {
    pub cluster: usize,
    pub name: String,
    pub peer_id: String,
    pub p2p_port: u16,
    pub op: Option<Operator>,
    pub opts: OperatorOpts,
}

impl FedNode {
    pub fn addr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", self.p2p_port, self.peer_id)
    }

    pub fn op(&self) -> &Operator {
        self.op.as_ref().expect("operator running")
    }
}

pub struct Federation {
    pub issuer: ed25519::Keypair,
    pub issuer_pub: String,
    pub nodes: Vec<FedNode>,
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A license from `issuer` for `peer`.
pub fn license_for(issuer: &ed25519::Keypair, peer: &str, class: Class, id: &str, exp_in: i64) -> String {
    let now = unix_now();
    license::issue(
        issuer,
        &Claims {
            id: id.into(),
            class,
            peer: peer.into(),
            iat: now - 60,
            exp: now + exp_in,
            iss: license::key_id(&issuer.public()),
        },
    )
}

fn secret(name: &str, data: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data})
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Federation {
    /// Prepares each cluster (CRDs, identity, license, R1Node) and starts
    /// one operator per cluster.
    pub async fn start(clusters: &[usize]) -> Self {
        Self::start_with(clusters, vec![]).await
    }

    /// As [`Federation::start`], with extra operator flags for every node.
    pub async fn start_with(clusters: &[usize], extra: Vec<String>) -> Self {
        Self::start_each(clusters, |_, opts| opts.extra_args.extend(extra.iter().cloned())).await
    }

    /// As [`Federation::start`], each node's operator settings adjusted by
    /// `configure` (called with the node's index).
    pub async fn start_each(clusters: &[usize], configure: impl Fn(usize, &mut OperatorOpts)) -> Self {
        Self::start_oracles(clusters, 1, configure).await
    }

    /// As [`Federation::start_each`], the first `oracles` nodes oracles
    /// (MND licenses, roles worker and oracle).
    pub async fn start_oracles(
        clusters: &[usize],
        oracles: usize,
        configure: impl Fn(usize, &mut OperatorOpts),
    ) -> Self {
        let issuer = ed25519::Keypair::generate();
        let issuer_pub = license::encode_public(&issuer.public());
        let mut nodes: Vec<FedNode> = vec![];
        for (k, &cluster) in clusters.iter().enumerate() {
            let c = client(cluster).await;
            install_crds(&c).await;
            ensure_namespace(&c, OPERATOR_NS).await;
            let r1nodes: Api<R1Node> = Api::all(c.clone());
            for n in r1nodes.list(&Default::default()).await.unwrap() {
                let _ = r1nodes.delete(&kube::ResourceExt::name_any(&n), &DeleteParams::default()).await;
            }
            // A known identity, so that the license can be issued up front.
            let (peer, data) = ratio1::identity::generate();
            let secrets: Api<Secret> = Api::namespaced(c.clone(), OPERATOR_NS);
            let ssa = PatchParams::apply("e2e-fed").force();
            let id_data: serde_json::Map<String, serde_json::Value> =
                data.iter().map(|(k, v)| (k.clone(), json!(b64(v)))).collect();
            let _ = secrets.delete("r1node-identity", &DeleteParams::default()).await;
            wait_for(30, "old identity Secret gone", || async {
                secrets.get_opt("r1node-identity").await.ok()?.is_none().then_some(())
            })
            .await;
            secrets
                .patch("r1node-identity", &ssa, &Patch::Apply(secret("r1node-identity", json!(id_data))))
                .await
                .unwrap();
            let class = if k < oracles { Class::Mnd } else { Class::Nd };
            let token = license_for(&issuer, &peer.to_string(), class, &format!("{class}-c{cluster}"), 86_400);
            secrets
                .patch(
                    "r1node-license",
                    &ssa,
                    &Patch::Apply(secret("r1node-license", json!({"license": b64(token.as_bytes())}))),
                )
                .await
                .unwrap();
            let name = format!("node-c{cluster}");
            let roles = if k < oracles { json!(["worker", "oracle"]) } else { json!(["worker"]) };
            r1nodes
                .patch(
                    &name,
                    &ssa,
                    &Patch::Apply(
                        json!({"apiVersion": "ratio1.ai/v1alpha1", "kind": "R1Node", "metadata": {"name": name},
                        "spec": {"roles": roles, "license": {"secretName": "r1node-license"}}}),
                    ),
                )
                .await
                .unwrap();
            let p2p_port = free_port();
            let mut opts = OperatorOpts::new(cluster, &format!("fed-c{cluster}"));
            opts.extra_args = vec![
                "--p2p-listen".into(),
                format!("/ip4/127.0.0.1/tcp/{p2p_port}"),
                // `=`: a base64url key may start with '-'.
                format!("--trusted-issuer={issuer_pub}"),
                "--heartbeat-interval-secs".into(),
                "1".into(),
                "--heartbeat-timeout-secs".into(),
                "4".into(),
            ];
            if let Some(first) = nodes.first() {
                opts.extra_args.extend(["--p2p-bootstrap".into(), first.addr()]);
            }
            configure(k, &mut opts);
            nodes.push(FedNode { cluster, name, peer_id: peer.to_string(), p2p_port, op: None, opts });
        }
        for n in nodes.iter_mut() {
            n.op = Some(Operator::start(n.opts.clone()).await);
        }
        Self { issuer, issuer_pub, nodes }
    }

    /// Waits until node `i`'s R1Node reports `peers` fresh peers.
    pub async fn wait_peers(&self, i: usize, peers: u32, secs: u64) -> R1Node {
        let n = &self.nodes[i];
        let api: Api<R1Node> = Api::all(client(n.cluster).await);
        wait_for(secs, &format!("{} to report {peers} peers", n.name), || async {
            let node = api.get(&n.name).await.ok()?;
            (node.status.as_ref()?.peers == peers).then_some(node)
        })
        .await
    }

    pub async fn network_view(&self, i: usize) -> serde_json::Value {
        let body = http_get(self.nodes[i].op().api_port, "/v1/network").await.expect("/v1/network answers");
        serde_json::from_str(&body).unwrap()
    }
}

/// Node `i`'s metric `name`, summed over the samples whose line contains `filter`.
pub async fn counter(fed: &Federation, i: usize, name: &str, filter: &str) -> f64 {
    metric(&fed.nodes[i].op().metrics().await, name, filter)
}

/// Sum of a metric's samples whose line contains `filter`.
pub fn metric(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
