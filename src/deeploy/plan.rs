//! Deeploy's pure core: what a pipeline needs, what a cluster offers and
//! lets in, and where a pipeline goes. No clock, no client: the service
//! passes every fact in, so the same inputs always give the same plan.

use crate::crd::{DeeployPolicy, NodeRole, Offer, Placement};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::core::{Selector, SelectorExt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Resources one replica requests (CPU in millicores, memory in bytes,
/// GPUs as `nvidia.com/gpu`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Need {
    pub cpu_milli: u64,
    pub memory: u64,
    pub gpus: u64,
}

impl Need {
    /// What one pod of `template` requests: the sum over its containers of
    /// requests (limits where a container sets limits only, as Kubernetes
    /// defaults them), and the largest init container if larger.
    pub fn of(template: &PodTemplateSpec) -> Result<Self, String> {
        let Some(spec) = template.spec.as_ref() else { return Ok(Self::default()) };
        let one = |c: &k8s_openapi::api::core::v1::Container| -> Result<Need, String> {
            let r = c.resources.as_ref();
            let get = |name: &str| {
                r.and_then(|r| r.requests.as_ref().and_then(|m| m.get(name)))
                    .or_else(|| r.and_then(|r| r.limits.as_ref().and_then(|m| m.get(name))))
            };
            let parse = |name: &str| -> Result<u128, String> {
                match get(name) {
                    None => Ok(0),
                    Some(q) => parse_quantity(&q.0)
                        .ok_or_else(|| format!("container {:?}: {name} {:?} is not a valid quantity", c.name, q.0)),
                }
            };
            Ok(Need {
                cpu_milli: clamp(parse("cpu")?),
                memory: clamp(parse("memory")?.div_ceil(1000)),
                gpus: clamp(parse("nvidia.com/gpu")?.div_ceil(1000)),
            })
        };
        let mut sum = Need::default();
        for c in &spec.containers {
            sum = sum.plus(&one(c)?);
        }
        for c in spec.init_containers.iter().flatten() {
            let i = one(c)?;
            sum = Need {
                cpu_milli: sum.cpu_milli.max(i.cpu_milli),
                memory: sum.memory.max(i.memory),
                gpus: sum.gpus.max(i.gpus),
            };
        }
        Ok(sum)
    }

    pub fn plus(&self, o: &Need) -> Need {
        Need {
            cpu_milli: self.cpu_milli.saturating_add(o.cpu_milli),
            memory: self.memory.saturating_add(o.memory),
            gpus: self.gpus.saturating_add(o.gpus),
        }
    }

    pub fn times(&self, n: i32) -> Need {
        let n = n.max(0) as u64;
        Need {
            cpu_milli: self.cpu_milli.saturating_mul(n),
            memory: self.memory.saturating_mul(n),
            gpus: self.gpus.saturating_mul(n),
        }
    }
}

fn clamp(v: u128) -> u64 {
    v.min(u64::MAX as u128) as u64
}

/// A Kubernetes quantity (`500m`, `2`, `1.5Gi`, `1e3`) in thousandths of
/// its unit, rounded up; `None` when it does not parse, is negative or is
/// too large.
pub fn parse_quantity(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let num = num.strip_prefix('+').unwrap_or(num);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.len() > 30 || int.len() > 30 || frac.contains('.') {
        return None;
    }
    let digits = format!("{int}{frac}");
    let mantissa: u128 = digits.parse().ok()?;
    // value = mantissa / 10^frac × num/den; in thousandths: × 1000.
    let (mut num_m, mut den): (u128, u128) = match suffix {
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1_000),
        "" => (1, 1),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().ok()?;
            if !(-18..=18).contains(&exp) {
                return None;
            }
            let p = 10u128.pow(exp.unsigned_abs());
            if exp >= 0 {
                (p, 1)
            } else {
                (1, p)
            }
        }
        _ => return None,
    };
    num_m = num_m.checked_mul(1000)?;
    den = den.checked_mul(10u128.checked_pow(frac.len() as u32)?)?;
    Some(mantissa.checked_mul(num_m)?.div_ceil(den))
}

/// What a cluster offers (absent: not limited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_milli: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u64>,
}

/// A cluster's policy for remote pipelines, quantities parsed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub accept_remote: bool,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub registries: Vec<String>,
    #[serde(default)]
    pub max_replicas: Option<i32>,
    #[serde(default)]
    pub max: Capacity,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            accept_remote: true,
            namespaces: vec![],
            registries: vec![],
            max_replicas: None,
            max: Capacity::default(),
        }
    }
}

/// What each node publishes about itself (`deeploy/<peer>/profile`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// R1Node name.
    pub node: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub roles: Vec<NodeRole>,
    #[serde(default)]
    pub offer: Capacity,
    #[serde(default)]
    pub policy: Policy,
}

/// Bounds of a profile read from the network.
const MAX_LABELS: usize = 64;
const MAX_LIST: usize = 64;
const MAX_STR: usize = 317;

impl Profile {
    /// The profile of an R1Node; `Err` names a quantity that does not parse.
    pub fn from_node(
        name: &str,
        labels: &BTreeMap<String, String>,
        roles: &[NodeRole],
        offer: &Offer,
        policy: &DeeployPolicy,
    ) -> Result<Self, String> {
        let q = |what: &str, v: &Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>, bytes: bool| {
            v.as_ref()
                .map(|q| {
                    parse_quantity(&q.0)
                        .map(|m| clamp(if bytes { m.div_ceil(1000) } else { m }))
                        .ok_or_else(|| format!("{what} {:?} is not a valid quantity", q.0))
                })
                .transpose()
        };
        Ok(Self {
            node: name.to_string(),
            labels: labels.clone(),
            roles: roles.to_vec(),
            offer: Capacity {
                cpu_milli: q("offer.cpu", &offer.cpu, false)?,
                memory: q("offer.memory", &offer.memory, true)?,
                gpus: offer.gpus.map(u64::from),
            },
            policy: Policy {
                accept_remote: policy.accept_remote,
                namespaces: policy.allowed_namespaces.clone(),
                registries: policy.allowed_registries.clone(),
                max_replicas: policy.max_replicas,
                max: Capacity {
                    cpu_milli: q("policy.maxCpu", &policy.max_cpu, false)?,
                    memory: q("policy.maxMemory", &policy.max_memory, true)?,
                    gpus: None,
                },
            },
        })
    }

    /// Whether a profile from the wire is within bounds.
    pub fn bounded(&self) -> bool {
        let short = |s: &String| s.len() <= MAX_STR;
        short(&self.node)
            && self.labels.len() <= MAX_LABELS
            && self.labels.iter().all(|(k, v)| short(k) && short(v))
            && self.roles.len() <= 2
            && self.policy.namespaces.len() <= MAX_LIST
            && self.policy.registries.len() <= MAX_LIST
            && self.policy.namespaces.iter().chain(&self.policy.registries).all(short)
    }
}

/// The registry host of an image reference (`docker.io` when it names none).
pub fn registry(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// The images of a pod template (containers and init containers).
pub fn images(template: &PodTemplateSpec) -> Vec<String> {
    let Some(spec) = template.spec.as_ref() else { return vec![] };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter_map(|c| c.image.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Namespaces no remote pipeline may use, whatever the policy says.
pub const PROTECTED_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// What a target checks of a remote pipeline's pod whatever its policy: a
/// pipeline from another cluster must not reach this cluster's secrets,
/// identities or hosts. `Err` names the first field that does.
pub fn remote_safe(template: &PodTemplateSpec, namespace: &str, operator_namespace: &str) -> Result<(), String> {
    if PROTECTED_NAMESPACES.contains(&namespace) || namespace == operator_namespace {
        return Err(format!("namespace {namespace:?} is not open to other clusters"));
    }
    let Some(spec) = template.spec.as_ref() else { return Ok(()) };
    let no = |what: &str| Err(format!("a pipeline from another cluster may not set {what}"));
    if spec.service_account_name.as_deref().is_some_and(|s| s != "default")
        || spec.service_account.as_deref().is_some_and(|s| s != "default")
    {
        return no("serviceAccountName");
    }
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true) {
        return no("hostNetwork, hostPID or hostIPC");
    }
    if spec.image_pull_secrets.as_ref().is_some_and(|s| !s.is_empty()) {
        return no("imagePullSecrets (this cluster's Secrets)");
    }
    // Volumes by allowlist: scratch space and the pod's own metadata. Every
    // other kind reaches something of this cluster's (a host path, a Secret,
    // a ConfigMap, a token, a claim, a storage backend's credentials).
    for v in spec.volumes.iter().flatten() {
        if v.host_path.is_some() {
            return no(&format!("a hostPath volume ({})", v.name));
        }
        let kinds = match serde_json::to_value(v) {
            Ok(serde_json::Value::Object(m)) => m.keys().filter(|k| *k != "name").cloned().collect::<Vec<_>>(),
            _ => vec!["unknown".into()],
        };
        if let Some(k) = kinds.iter().find(|k| *k != "emptyDir" && *k != "downwardAPI") {
            return no(&format!("volume {:?} of kind {k} (only emptyDir and downwardAPI: anything else reaches this cluster's hosts, Secrets, ConfigMaps, tokens, claims or storage)", v.name));
        }
    }
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        if let Some(sc) = &c.security_context {
            if sc.privileged == Some(true) || sc.allow_privilege_escalation == Some(true) {
                return no(&format!("a privileged container ({})", c.name));
            }
            if sc.capabilities.as_ref().and_then(|k| k.add.as_ref()).is_some_and(|a| !a.is_empty()) {
                return no(&format!("added capabilities ({})", c.name));
            }
        }
        if c.ports.iter().flatten().any(|p| p.host_port.is_some_and(|h| h != 0)) {
            return no(&format!("a hostPort ({})", c.name));
        }
        let refs = c.env.iter().flatten().any(|e| {
            e.value_from.as_ref().is_some_and(|f| f.secret_key_ref.is_some() || f.config_map_key_ref.is_some())
        }) || c.env_from.iter().flatten().any(|e| e.secret_ref.is_some() || e.config_map_ref.is_some());
        if refs {
            return no(&format!("environment from this cluster's Secrets or ConfigMaps ({})", c.name));
        }
    }
    Ok(())
}

/// What a pipeline asks of a cluster other than its origin.
#[derive(Clone, Debug)]
pub struct Ask<'a> {
    pub namespace: &'a str,
    pub replicas: i32,
    /// Per replica.
    pub need: Need,
    pub images: &'a [String],
}

/// Whether `policy` lets the network run `ask` here; the refusal says why.
pub fn admits(policy: &Policy, ask: &Ask) -> Result<(), String> {
    if !policy.accept_remote {
        return Err("its policy accepts no pipelines from other clusters".into());
    }
    if !policy.namespaces.is_empty() && !policy.namespaces.iter().any(|n| n == ask.namespace) {
        return Err(format!("namespace {:?} is not in its policy's allowedNamespaces", ask.namespace));
    }
    if !policy.registries.is_empty() {
        if let Some(img) = ask.images.iter().find(|i| !policy.registries.iter().any(|r| r == registry(i))) {
            return Err(format!("image {img:?} is not from a registry in its policy's allowedRegistries"));
        }
    }
    if let Some(max) = policy.max_replicas.filter(|m| ask.replicas > *m) {
        return Err(format!("{} replicas exceed its policy's maxReplicas {max}", ask.replicas));
    }
    let total = ask.need.times(ask.replicas);
    if let Some(max) = policy.max.cpu_milli.filter(|m| total.cpu_milli > *m) {
        return Err(format!("{}m CPU requested exceed its policy's maxCpu {max}m", total.cpu_milli));
    }
    if let Some(max) = policy.max.memory.filter(|m| total.memory > *m) {
        return Err(format!("{} bytes of memory requested exceed its policy's maxMemory {max}", total.memory));
    }
    Ok(())
}

/// A cluster the origin may place on, as the origin sees it now.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub peer: String,
    pub profile: Profile,
    /// `Err` says why it is not fresh (e.g. no heartbeat for 12 s).
    pub fresh: Result<(), String>,
    /// What other pipelines' intents already place there.
    pub used: Need,
    /// Number of pipelines placed there.
    pub apps: usize,
}

/// Everything one placement decision depends on.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    pub origin: &'a str,
    pub placement: &'a Placement,
    pub ask: Ask<'a>,
    /// `Err`: why only the origin may run it (e.g. it mounts R1Models).
    pub remote_ok: Result<(), String>,
    pub candidates: &'a [Candidate],
    /// Targets of the current intent (kept while they fit).
    pub current: &'a [String],
    /// Clusters that refused this spec, with their reason.
    pub refused: &'a BTreeMap<String, String>,
}

/// One cluster in a plan: chosen, fitting but not needed, or why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub peer: String,
    pub node: String,
    pub chosen: bool,
    /// Why it does not fit (absent: it fits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// It does not fit for a while only (silent, or full): a placement
    /// there is kept when nothing else fits.
    #[serde(skip)]
    pub transient: bool,
}

/// Where a pipeline goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Chosen clusters (PeerIds), best first.
    pub targets: Vec<String>,
    /// How many clusters were asked for.
    pub wanted: usize,
    /// Every known cluster, chosen ones first.
    pub verdicts: Vec<Verdict>,
    /// Condition reason and message when fewer than `wanted` were found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmet: Option<(String, String)>,
}

/// Decides where a pipeline runs (deterministic: same inputs, same plan).
///
/// A cluster fits when it is fresh, a worker, selected by
/// `clusterSelector` and `nodes`, has room in its offer for `replicas`
/// replicas on top of what others placed there, and (unless it is the
/// origin) its policy admits the pipeline and it has not refused it.
/// Fitting clusters are ranked: current targets first (a placement does
/// not move while it fits), then the origin, then the fewest pipelines,
/// then PeerId.
pub fn plan(inp: &Inputs) -> Result<Plan, String> {
    let pl = inp.placement;
    let selector: Option<Selector> = match &pl.cluster_selector {
        Some(s) => Some(s.clone().try_into().map_err(|e| format!("placement.clusterSelector: {e}"))?),
        None => None,
    };
    let named = |c: &Candidate| pl.nodes.iter().any(|n| n == &c.peer || n == &c.profile.node);
    let total = inp.ask.need.times(inp.ask.replicas);
    // (reason, transient)
    let why_not = |c: &Candidate| -> Option<(String, bool)> {
        if let Err(e) = &c.fresh {
            return Some((e.clone(), true));
        }
        let excluded = |r: String| Some((r, false));
        if !c.profile.roles.contains(&NodeRole::Worker) {
            return excluded("not a worker".into());
        }
        if !pl.nodes.is_empty() && !named(c) {
            return excluded("not named in placement.nodes".into());
        }
        if selector.as_ref().is_some_and(|s| !s.matches(&c.profile.labels)) {
            return excluded("its labels do not match placement.clusterSelector".into());
        }
        if c.peer != inp.origin {
            if let Err(e) = &inp.remote_ok {
                return excluded(e.clone());
            }
            if let Err(e) = admits(&c.profile.policy, &inp.ask) {
                return excluded(e);
            }
            if let Some(r) = inp.refused.get(&c.peer) {
                return excluded(format!("refused: {r}"));
            }
        }
        let room = |what: &str, unit: &str, offer: Option<u64>, used: u64, need: u64| {
            offer.filter(|o| used.saturating_add(need) > *o).map(|o| {
                format!("not enough {what}: {need}{unit} asked, {}{unit} of {o}{unit} free", o.saturating_sub(used))
            })
        };
        let (o, u) = (&c.profile.offer, &c.used);
        room("CPU", "m", o.cpu_milli, u.cpu_milli, total.cpu_milli)
            .or_else(|| room("memory", " B", o.memory, u.memory, total.memory))
            .or_else(|| room("GPUs", "", o.gpus, u.gpus, total.gpus))
            .map(|r| (r, true))
    };
    let wanted = pl.wanted();
    let mut fits = vec![];
    let mut verdicts = vec![];
    for c in inp.candidates {
        match why_not(c) {
            None => fits.push(c),
            Some((reason, transient)) => verdicts.push(Verdict {
                peer: c.peer.clone(),
                node: c.profile.node.clone(),
                chosen: false,
                reason: Some(reason),
                transient,
            }),
        }
    }
    fits.sort_by_key(|c| (!inp.current.contains(&c.peer), c.peer != inp.origin, c.apps, c.peer.clone()));
    let targets: Vec<String> = fits.iter().take(wanted).map(|c| c.peer.clone()).collect();
    let mut chosen: Vec<Verdict> = fits
        .iter()
        .map(|c| Verdict {
            peer: c.peer.clone(),
            node: c.profile.node.clone(),
            chosen: targets.contains(&c.peer),
            reason: None,
            transient: false,
        })
        .collect();
    verdicts.sort_by(|a, b| a.node.cmp(&b.node).then(a.peer.cmp(&b.peer)));
    chosen.extend(verdicts);
    let unmet = (targets.len() < wanted).then(|| {
        let mut why: Vec<String> =
            chosen.iter().filter_map(|v| Some(format!("{}: {}", v.node, v.reason.as_ref()?))).take(8).collect();
        // Named nodes nobody has heard of.
        for n in &pl.nodes {
            if !inp.candidates.iter().any(|c| &c.peer == n || &c.profile.node == n) {
                why.push(format!("{n}: not known in the network"));
            }
        }
        if why.is_empty() {
            why.push("no other cluster is known".into());
        }
        let reason = if pl.nodes.is_empty() { "NoFittingNode" } else { "NodesUnavailable" };
        (reason.to_string(), format!("placed on {} of {wanted} clusters; {}", targets.len(), why.join("; ")))
    });
    Ok(Plan { targets, wanted, verdicts: chosen, unmet })
}

#[cfg(test)]
mod tests;
