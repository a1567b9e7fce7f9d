use super::*;
use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

#[test]
fn quantities_parse_exactly_in_thousandths() {
    for (q, want) in [
        ("500m", Some(500)),
        ("2", Some(2000)),
        ("1.5", Some(1500)),
        ("0.1m", Some(1)),
        ("1Ki", Some(1_024_000)),
        ("1.5Gi", Some(1_610_612_736_000)),
        ("1G", Some(1_000_000_000_000)),
        ("1e3", Some(1_000_000)),
        ("1E-3", Some(1)),
        ("100n", Some(1)),
        ("+3", Some(3000)),
        ("-1", None),
        ("1.2.3", None),
        ("abc", None),
        ("1Qi", None),
        ("", None),
        ("99999999999999999999999999999E", None),
    ] {
        assert_eq!(parse_quantity(q), want, "{q}");
    }
}

fn container(name: &str, image: &str, cpu: Option<&str>, mem: Option<&str>, limits_only: bool) -> Container {
    let mut m = std::collections::BTreeMap::new();
    if let Some(c) = cpu {
        m.insert("cpu".to_string(), Quantity(c.into()));
    }
    if let Some(x) = mem {
        m.insert("memory".to_string(), Quantity(x.into()));
    }
    let resources = if limits_only {
        ResourceRequirements { limits: Some(m), ..Default::default() }
    } else {
        ResourceRequirements { requests: Some(m), ..Default::default() }
    };
    Container { name: name.into(), image: Some(image.into()), resources: Some(resources), ..Default::default() }
}

fn template(containers: Vec<Container>, init: Vec<Container>) -> PodTemplateSpec {
    PodTemplateSpec {
        spec: Some(PodSpec { containers, init_containers: (!init.is_empty()).then_some(init), ..Default::default() }),
        ..Default::default()
    }
}

#[test]
fn a_pod_needs_the_sum_of_its_containers_and_its_largest_init_container() {
    let t = template(
        vec![
            container("a", "nginx", Some("250m"), Some("64Mi"), false),
            container("b", "ghcr.io/x/y:1", Some("1"), None, true),
        ],
        vec![container("init", "busybox", Some("2"), Some("1Mi"), false)],
    );
    let n = Need::of(&t).unwrap();
    assert_eq!(n, Need { cpu_milli: 2000, memory: 64 << 20, gpus: 0 });
    assert_eq!(images(&t), vec!["busybox", "ghcr.io/x/y:1", "nginx"]);
    let bad = template(vec![container("a", "nginx", Some("lots"), None, false)], vec![]);
    assert!(Need::of(&bad).unwrap_err().contains("\"lots\" is not a valid quantity"));
}

#[test]
fn registries_of_image_references() {
    assert_eq!(registry("nginx"), "docker.io");
    assert_eq!(registry("library/nginx:1"), "docker.io");
    assert_eq!(registry("ghcr.io/a/b@sha256:00"), "ghcr.io");
    assert_eq!(registry("localhost/x"), "localhost");
    assert_eq!(registry("reg:5000/x"), "reg:5000");
    assert_eq!(registry("ratio1.local/sample:1"), "ratio1.local");
}

fn ask<'a>(ns: &'a str, replicas: i32, images: &'a [String]) -> Ask<'a> {
    Ask { namespace: ns, replicas, need: Need { cpu_milli: 500, memory: 1 << 30, gpus: 0 }, images }
}

#[test]
fn a_policy_refuses_with_the_rule_it_applied() {
    let imgs = vec!["ghcr.io/a/b:1".to_string(), "nginx".to_string()];
    let open = Policy::default();
    assert!(admits(&open, &ask("team", 3, &imgs)).is_ok());
    let closed = Policy { accept_remote: false, ..Default::default() };
    assert!(admits(&closed, &ask("team", 1, &imgs)).unwrap_err().contains("accepts no pipelines"));
    let ns = Policy { namespaces: vec!["prod".into()], ..Default::default() };
    assert!(admits(&ns, &ask("team", 1, &imgs)).unwrap_err().contains("\"team\""));
    assert!(admits(&ns, &ask("prod", 1, &imgs)).is_ok());
    let reg = Policy { registries: vec!["ghcr.io".into()], ..Default::default() };
    assert!(admits(&reg, &ask("team", 1, &imgs)).unwrap_err().contains("\"nginx\""));
    let reg2 = Policy { registries: vec!["ghcr.io".into(), "docker.io".into()], ..Default::default() };
    assert!(admits(&reg2, &ask("team", 1, &imgs)).is_ok());
    let reps = Policy { max_replicas: Some(2), ..Default::default() };
    assert!(admits(&reps, &ask("team", 3, &imgs)).unwrap_err().contains("maxReplicas 2"));
    let cpu = Policy { max: Capacity { cpu_milli: Some(1000), ..Default::default() }, ..Default::default() };
    assert!(admits(&cpu, &ask("team", 2, &imgs)).is_ok(), "2 × 500m = 1000m fits");
    assert!(admits(&cpu, &ask("team", 3, &imgs)).unwrap_err().contains("1500m CPU"));
    let mem = Policy { max: Capacity { memory: Some(2 << 30), ..Default::default() }, ..Default::default() };
    assert!(admits(&mem, &ask("team", 3, &imgs)).unwrap_err().contains("maxMemory"));
}

fn cand(peer: &str, labels: &[(&str, &str)], apps: usize) -> Candidate {
    Candidate {
        peer: peer.into(),
        profile: Profile {
            node: format!("node-{peer}"),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            roles: vec![NodeRole::Worker],
            ..Default::default()
        },
        fresh: Ok(()),
        used: Need::default(),
        apps,
    }
}

struct Case {
    placement: Placement,
    candidates: Vec<Candidate>,
    current: Vec<String>,
    refused: BTreeMap<String, String>,
    remote_ok: Result<(), String>,
    images: Vec<String>,
}

impl Case {
    fn new(clusters: i32, candidates: Vec<Candidate>) -> Self {
        Self {
            placement: Placement { clusters, ..Default::default() },
            candidates,
            current: vec![],
            refused: BTreeMap::new(),
            remote_ok: Ok(()),
            images: vec!["nginx".into()],
        }
    }

    fn run(&self) -> Plan {
        plan(&Inputs {
            origin: "A",
            placement: &self.placement,
            ask: ask("team", 2, &self.images),
            remote_ok: self.remote_ok.clone(),
            candidates: &self.candidates,
            current: &self.current,
            refused: &self.refused,
        })
        .unwrap()
    }
}

#[test]
fn the_origin_first_then_the_least_loaded_then_peer_id() {
    let c = Case::new(2, vec![cand("C", &[], 3), cand("A", &[], 9), cand("B", &[], 3), cand("D", &[], 1)]);
    let p = c.run();
    assert_eq!(p.targets, vec!["A", "D"]);
    assert!(p.unmet.is_none());
    let c = Case::new(3, c.candidates.clone());
    assert_eq!(c.run().targets, vec!["A", "D", "B"], "a tie on load goes to the lower PeerId");
}

#[test]
fn the_same_inputs_in_any_order_give_the_same_plan() {
    let base = vec![cand("A", &[], 2), cand("B", &[], 1), cand("C", &[], 1), cand("D", &[], 0), cand("E", &[], 5)];
    let want = Case::new(3, base.clone()).run();
    let mut rotated = base.clone();
    for _ in 0..base.len() {
        rotated.rotate_left(1);
        let mut reversed = rotated.clone();
        reversed.reverse();
        assert_eq!(Case::new(3, rotated.clone()).run(), want);
        assert_eq!(Case::new(3, reversed).run(), want);
    }
}

#[test]
fn a_placement_stays_where_it_runs_while_it_fits() {
    let mut c = Case::new(2, vec![cand("A", &[], 0), cand("B", &[], 0), cand("C", &[], 7), cand("D", &[], 9)]);
    c.current = vec!["C".into(), "D".into()];
    assert_eq!(c.run().targets, vec!["C", "D"], "a less loaded newcomer does not move it");
    c.candidates[3].fresh = Err("no heartbeat for 12 s".into());
    let p = c.run();
    assert_eq!(p.targets, vec!["C", "A"], "a stale target is replaced, the other stays");
    let d = p.verdicts.iter().find(|v| v.peer == "D").unwrap();
    assert_eq!(d.reason.as_deref(), Some("no heartbeat for 12 s"));
}

#[test]
fn selectors_named_nodes_roles_and_refusals_exclude_with_a_reason() {
    let mut c = Case::new(
        2,
        vec![cand("A", &[("region", "eu")], 0), cand("B", &[("region", "us")], 0), cand("C", &[("region", "eu")], 0)],
    );
    c.placement.cluster_selector = Some(LabelSelector {
        match_labels: Some([("region".to_string(), "us".to_string())].into()),
        ..Default::default()
    });
    let p = c.run();
    assert_eq!(p.targets, vec!["B"]);
    let (reason, msg) = p.unmet.clone().unwrap();
    assert_eq!(reason, "NoFittingNode");
    assert!(msg.starts_with("placed on 1 of 2 clusters"), "{msg}");
    assert!(msg.contains("node-A: its labels do not match placement.clusterSelector"), "{msg}");

    let mut c = Case::new(1, vec![cand("A", &[], 0), cand("B", &[], 0), cand("C", &[], 0)]);
    c.placement.nodes = vec!["node-B".into(), "C".into(), "node-Z".into()];
    let p = c.run();
    assert_eq!(p.targets, vec!["B", "C"], "named nodes, by name or PeerId; `clusters` is ignored");
    let (reason, msg) = p.unmet.unwrap();
    assert_eq!(reason, "NodesUnavailable");
    assert!(msg.contains("node-Z: not known in the network"), "{msg}");
    assert!(msg.contains("node-A: not named in placement.nodes"), "{msg}");

    let mut c = Case::new(2, vec![cand("A", &[], 0), cand("B", &[], 0), cand("C", &[], 0)]);
    c.candidates[1].profile.roles = vec![NodeRole::Oracle];
    c.refused.insert("C".into(), "image \"nginx\" is not from an allowed registry".into());
    c.refused.insert("A".into(), "ignored: the origin's own policy does not apply".into());
    let p = c.run();
    assert_eq!(p.targets, vec!["A"]);
    let msg = p.unmet.unwrap().1;
    assert!(msg.contains("node-B: not a worker") && msg.contains("node-C: refused: image"), "{msg}");
}

#[test]
fn policy_and_remote_exclusions_spare_the_origin() {
    let mut c = Case::new(3, vec![cand("A", &[], 0), cand("B", &[], 0), cand("C", &[], 0)]);
    for x in c.candidates.iter_mut() {
        x.profile.policy.namespaces = vec!["prod".into()];
    }
    c.candidates[2].profile.policy.namespaces.push("team".into());
    assert_eq!(c.run().targets, vec!["A", "C"]);
    c.remote_ok = Err("mounts R1Models: runs on its origin only".into());
    let p = c.run();
    assert_eq!(p.targets, vec!["A"]);
    assert!(p.unmet.unwrap().1.contains("node-C: mounts R1Models"));
}

#[test]
fn capacity_counts_what_others_placed() {
    let mut c = Case::new(2, vec![cand("A", &[], 0), cand("B", &[], 0), cand("C", &[], 0)]);
    // Asks 2 × 500m CPU, 2 × 1 GiB.
    c.candidates[0].profile.offer.cpu_milli = Some(1500);
    c.candidates[0].used.cpu_milli = 600;
    c.candidates[1].profile.offer.memory = Some(2 << 30);
    c.candidates[2].profile.offer.gpus = Some(0);
    let p = c.run();
    assert_eq!(p.targets, vec!["B", "C"], "A lacks CPU; B's memory fits exactly; C's GPUs are not asked for");
    let a = p.verdicts.iter().find(|v| v.peer == "A").unwrap();
    assert_eq!(a.reason.as_deref(), Some("not enough CPU: 1000m asked, 900m of 1500m free"));
    c.candidates[1].used.memory = 1;
    assert_eq!(c.run().targets, vec!["C"]);
}

#[test]
fn a_bad_selector_is_an_error() {
    let mut c = Case::new(1, vec![cand("A", &[], 0)]);
    c.placement.cluster_selector = Some(LabelSelector {
        match_expressions: Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
            key: "x".into(),
            operator: "Bogus".into(),
            values: None,
        }]),
        ..Default::default()
    });
    let err = plan(&Inputs {
        origin: "A",
        placement: &c.placement,
        ask: ask("team", 1, &c.images),
        remote_ok: Ok(()),
        candidates: &c.candidates,
        current: &[],
        refused: &BTreeMap::new(),
    })
    .unwrap_err();
    assert!(err.starts_with("placement.clusterSelector"), "{err}");
}

#[test]
fn profiles_come_from_the_r1node_and_are_bounded() {
    let offer = Offer {
        cpu: Some(Quantity("8".into())),
        memory: Some(Quantity("16Gi".into())),
        gpus: Some(2),
        ..Default::default()
    };
    let policy = DeeployPolicy { max_cpu: Some(Quantity("2".into())), ..Default::default() };
    let p = Profile::from_node("n", &BTreeMap::new(), &[NodeRole::Worker], &offer, &policy).unwrap();
    assert_eq!(p.offer, Capacity { cpu_milli: Some(8000), memory: Some(16 << 30), gpus: Some(2) });
    assert_eq!(p.policy.max.cpu_milli, Some(2000));
    assert!(p.policy.accept_remote && p.bounded());
    let bad = Offer { cpu: Some(Quantity("eight".into())), ..Default::default() };
    assert!(Profile::from_node("n", &BTreeMap::new(), &[], &bad, &policy).unwrap_err().contains("offer.cpu"));
    let mut big = p.clone();
    big.labels = (0..65).map(|i| (format!("k{i}"), "v".to_string())).collect();
    assert!(!big.bounded());
}

#[test]
fn a_remote_pod_may_not_reach_the_targets_secrets_identity_or_hosts() {
    use k8s_openapi::api::core::v1::{
        Capabilities, EnvVar, EnvVarSource, HostPathVolumeSource, SecretKeySelector, SecurityContext, Volume,
    };
    let ok = template(vec![container("a", "nginx", None, None, false)], vec![]);
    assert!(remote_safe(&ok, "team", "ratio1-system").is_ok());
    for ns in ["kube-system", "ratio1-system"] {
        assert!(remote_safe(&ok, ns, "ratio1-system").unwrap_err().contains("not open"), "{ns}");
    }
    let with = |f: &dyn Fn(&mut PodSpec)| {
        let mut t = ok.clone();
        f(t.spec.as_mut().unwrap());
        remote_safe(&t, "team", "ratio1-system").unwrap_err()
    };
    assert!(with(&|s| s.service_account_name = Some("operator".into())).contains("serviceAccountName"));
    assert!(with(&|s| s.host_network = Some(true)).contains("hostNetwork"));
    assert!(with(&|s| s.image_pull_secrets = Some(vec![Default::default()])).contains("imagePullSecrets"));
    assert!(with(&|s| s.containers[0].ports = Some(vec![k8s_openapi::api::core::v1::ContainerPort {
        container_port: 80,
        host_port: Some(80),
        ..Default::default()
    }]))
    .contains("hostPort"));
    assert!(with(&|s| s.volumes =
        Some(vec![Volume { name: "e".into(), ephemeral: Some(Default::default()), ..Default::default() }]))
    .contains("claims"));
    assert!(with(&|s| s.volumes = Some(vec![Volume {
        name: "root".into(),
        host_path: Some(HostPathVolumeSource { path: "/".into(), ..Default::default() }),
        ..Default::default()
    }]))
    .contains("hostPath"));
    assert!(with(&|s| s.volumes =
        Some(vec![Volume { name: "s".into(), secret: Some(Default::default()), ..Default::default() }]))
    .contains("Secrets"));
    assert!(with(
        &|s| s.containers[0].security_context = Some(SecurityContext { privileged: Some(true), ..Default::default() })
    )
    .contains("privileged"));
    assert!(with(&|s| s.containers[0].security_context = Some(SecurityContext {
        capabilities: Some(Capabilities { add: Some(vec!["NET_ADMIN".into()]), drop: None }),
        ..Default::default()
    }))
    .contains("capabilities"));
    assert!(with(&|s| s.containers[0].env = Some(vec![EnvVar {
        name: "T".into(),
        value_from: Some(EnvVarSource { secret_key_ref: Some(SecretKeySelector::default()), ..Default::default() }),
        ..Default::default()
    }]))
    .contains("Secrets"));
}

#[test]
fn only_silence_and_full_offers_are_transient() {
    let mut c = Case::new(1, vec![cand("A", &[("r", "x")], 0), cand("B", &[], 0), cand("C", &[], 0)]);
    c.placement.cluster_selector =
        Some(LabelSelector { match_labels: Some([("r".to_string(), "y".to_string())].into()), ..Default::default() });
    c.candidates[1].fresh = Err("no heartbeat for 20 s".into());
    c.candidates[2].profile.offer.cpu_milli = Some(1);
    c.placement.cluster_selector = None;
    c.placement.nodes = vec!["B".into()];
    let p = c.run();
    assert!(p.targets.is_empty());
    let t = |peer: &str| p.verdicts.iter().find(|v| v.peer == peer).unwrap().transient;
    assert!(t("B"), "silence is transient");
    assert!(!t("A") && !t("C"), "not named is not");
    c.placement.nodes = vec![];
    c.candidates[0].profile.labels.clear();
    c.candidates[0].profile.roles = vec![];
    let p = c.run();
    let t = |peer: &str| p.verdicts.iter().find(|v| v.peer == peer).unwrap().transient;
    assert!(t("C"), "a full offer is transient");
    assert!(!t("A"), "not a worker is not");
}
