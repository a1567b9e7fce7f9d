use super::*;
use crate::crd::{InputMount, ModelMount, R1PipelineSpec};
use k8s_openapi::api::apps::v1::DeploymentStatus;
use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec};

fn container(name: &str, ports: &[i32]) -> Container {
    Container {
        name: name.into(),
        image: Some("busybox".into()),
        ports: (!ports.is_empty())
            .then(|| ports.iter().map(|p| ContainerPort { container_port: *p, ..Default::default() }).collect()),
        ..Default::default()
    }
}

fn pipeline(mode: PipelineMode, containers: Vec<Container>) -> R1Pipeline {
    let mut p = R1Pipeline::new(
        "web",
        R1PipelineSpec {
            mode,
            replicas: 2,
            template: PodTemplateSpec { metadata: None, spec: Some(PodSpec { containers, ..Default::default() }) },
            placement: Default::default(),
            models: vec![],
            inputs: vec![],
            budget: None,
        },
    );
    p.metadata.namespace = Some("ns".into());
    p.metadata.uid = Some("uid-1".into());
    p.metadata.generation = Some(1);
    p
}

fn reason(r: Result<Option<String>, Invalid>) -> &'static str {
    r.unwrap_err().reason
}

#[test]
fn rejects_templates_the_schema_cannot() {
    let inputs = Inputs::default();
    assert_eq!(reason(validate(&pipeline(PipelineMode::Service, vec![]), &inputs)), "InvalidTemplate");
    let dup = pipeline(PipelineMode::Service, vec![container("a", &[]), container("a", &[])]);
    assert_eq!(reason(validate(&dup, &inputs)), "InvalidTemplate");
    let mut never = pipeline(PipelineMode::Service, vec![container("a", &[])]);
    never.spec.template.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    assert_eq!(reason(validate(&never, &inputs)), "InvalidTemplate");
    let mut always = pipeline(PipelineMode::Job, vec![container("a", &[])]);
    always.spec.template.spec.as_mut().unwrap().restart_policy = Some("Always".into());
    assert_eq!(reason(validate(&always, &inputs)), "InvalidTemplate");
}

#[test]
fn ports_need_a_service_name() {
    let mut p = pipeline(PipelineMode::Service, vec![container("a", &[80])]);
    p.metadata.name = Some("1.bad".into());
    assert_eq!(reason(validate(&p, &Inputs::default())), "InvalidName");
    p.metadata.name = Some("good-name".into());
    assert_eq!(validate(&p, &Inputs::default()), Ok(None));
}

#[test]
fn models_must_exist_and_be_ready() {
    let mut p = pipeline(PipelineMode::Service, vec![container("a", &[])]);
    p.spec.models = vec![ModelMount { name: "m".into(), mount_path: "/m".into() }];
    assert_eq!(reason(validate(&p, &Inputs::default())), "ModelNotFound");
    let mut inputs = Inputs::default();
    inputs.models.insert("m".into(), ModelState::NotReady);
    assert!(validate(&p, &inputs).unwrap().unwrap().contains("waiting for R1Model(s) m"));
    inputs.models.insert("m".into(), ModelState::Ready { cid: "bafy".into(), key: None });
    assert_eq!(validate(&p, &inputs), Ok(None));
    let cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    p.spec.inputs = vec![InputMount { cid: cid.into(), mount_path: "/m".into() }];
    assert_eq!(reason(validate(&p, &inputs)), "InvalidMounts");
    p.spec.inputs = vec![InputMount { cid: "bafy".into(), mount_path: "/in".into() }];
    assert_eq!(reason(validate(&p, &inputs)), "InvalidCid", "a CID is decoded, not only matched");
}

#[test]
fn service_mode_builds_deployment_and_service() {
    let p = pipeline(PipelineMode::Service, vec![container("a", &[8080]), container("b", &[8080, 9090])]);
    let d = build(&p, &Inputs::default()).unwrap();
    let dep = d.deployment.unwrap();
    assert_eq!(dep.spec.as_ref().unwrap().replicas, Some(2));
    let labels = dep.metadata.labels.clone().unwrap();
    assert_eq!(labels[PIPELINE_LABEL], "web");
    assert_eq!(labels[MANAGED_BY.0], MANAGED_BY.1);
    let owner = &dep.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("R1Pipeline", "uid-1", Some(true)));
    let tpl_labels = dep.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
    assert_eq!(tpl_labels[PIPELINE_LABEL], "web");
    let svc = d.service.unwrap();
    let ports: Vec<i32> = svc.spec.unwrap().ports.unwrap().iter().map(|p| p.port).collect();
    assert_eq!(ports, [8080, 9090], "one Service port per distinct container port");
    assert!(d.job.is_none());
}

#[test]
fn no_ports_no_service() {
    let d = build(&pipeline(PipelineMode::Service, vec![container("a", &[])]), &Inputs::default()).unwrap();
    assert!(d.service.is_none());
}

#[test]
fn job_mode_builds_a_job_with_a_stable_hash() {
    let p = pipeline(PipelineMode::Job, vec![container("a", &[])]);
    let job = build(&p, &Inputs::default()).unwrap().job.unwrap();
    let spec = job.spec.as_ref().unwrap();
    assert_eq!((spec.completions, spec.parallelism), (Some(2), Some(2)));
    assert_eq!(spec.template.spec.as_ref().unwrap().restart_policy.as_deref(), Some("Never"));
    let h1 = job.metadata.annotations.as_ref().unwrap()[SPEC_HASH].clone();
    let again = build(&p, &Inputs::default()).unwrap().job.unwrap();
    assert_eq!(again.metadata.annotations.unwrap()[SPEC_HASH], h1);
    let mut changed = p.clone();
    changed.spec.template.spec.as_mut().unwrap().containers[0].image = Some("alpine".into());
    let h2 = build(&changed, &Inputs::default()).unwrap().job.unwrap().metadata.annotations.unwrap()[SPEC_HASH].clone();
    assert_ne!(h1, h2);
}

#[test]
fn model_cids_are_in_the_pod_template() {
    let mut p = pipeline(PipelineMode::Service, vec![container("a", &[])]);
    p.spec.models = vec![ModelMount { name: "m".into(), mount_path: "/m".into() }];
    let mut inputs = Inputs::default();
    inputs.models.insert("m".into(), ModelState::Ready { cid: "bafyone".into(), key: None });
    let ann = |i: &Inputs| {
        build(&p, i).unwrap().deployment.unwrap().spec.unwrap().template.metadata.unwrap().annotations.unwrap()
            [MODELS_ANNOTATION]
            .clone()
    };
    let a = ann(&inputs);
    assert!(a.contains("bafyone") && a.contains("/m"));
    inputs.models.insert("m".into(), ModelState::Ready { cid: "bafytwo".into(), key: None });
    assert_ne!(a, ann(&inputs), "a new model CID must roll the pods");
}

#[test]
fn placement_follows_children() {
    let p = pipeline(PipelineMode::Service, vec![container("a", &[])]);
    let node = LocalNode { name: "n1".into(), peer_id: Some("12D3".into()), ..Default::default() };
    let node = Some(&node);
    let mut dep = build(&p, &Inputs::default()).unwrap().deployment.unwrap();
    dep.metadata.generation = Some(3);
    dep.status = Some(DeploymentStatus {
        observed_generation: Some(2),
        ready_replicas: Some(2),
        updated_replicas: Some(2),
        ..Default::default()
    });
    assert_eq!(placement_status(&p, node, Some(&dep), None).phase, PlacementPhase::Pending, "old generation");
    dep.status.as_mut().unwrap().observed_generation = Some(3);
    let st = placement_status(&p, node, Some(&dep), None);
    assert_eq!((st.phase, st.ready_replicas, st.node.as_deref()), (PlacementPhase::Running, 2, Some("n1")));
    let conds = placement_conditions(&p, &st, None);
    assert!(conds.iter().any(|w| w.type_ == "Ready" && w.status == Some(true)));
    // A rollout whose new pods do not start: the old pods are still ready,
    // but 3 pods exist for 2 replicas, so it is not done.
    dep.status.as_mut().unwrap().replicas = Some(3);
    assert_eq!(placement_status(&p, node, Some(&dep), None).phase, PlacementPhase::Pending, "rollout in progress");
    dep.status.as_mut().unwrap().replicas = Some(2);

    let jp = pipeline(PipelineMode::Job, vec![container("a", &[])]);
    let mut job = build(&jp, &Inputs::default()).unwrap().job.unwrap();
    let cond = |t: &str| JobCondition { type_: t.into(), status: "True".into(), ..Default::default() };
    job.status = Some(JobStatus { succeeded: Some(2), conditions: Some(vec![cond("Complete")]), ..Default::default() });
    assert_eq!(placement_status(&jp, node, None, Some(&job)).phase, PlacementPhase::Succeeded);
    job.status = Some(JobStatus { failed: Some(7), conditions: Some(vec![cond("Failed")]), ..Default::default() });
    let st = placement_status(&jp, node, None, Some(&job));
    assert_eq!(st.phase, PlacementPhase::Failed);
    assert!(placement_conditions(&jp, &st, None).iter().any(|w| w.type_ == "Stalled" && w.status == Some(true)));
}

fn local(name: &str, labels: &[(&str, &str)]) -> LocalNode {
    LocalNode {
        name: name.into(),
        peer_id: Some(format!("12D3{name}")),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        node_selector: Default::default(),
    }
}

#[test]
fn a_placement_the_cluster_cannot_honour_is_not_scheduled() {
    let here = local("n1", &[("region", "eu")]);
    let mut p = pipeline(PipelineMode::Service, vec![container("a", &[])]);
    assert_eq!(schedule(&p, Some(&here)), Ok(Schedule { run_here: true, unmet: None }));
    assert_eq!(schedule(&p, None), Ok(Schedule { run_here: true, unmet: None }), "no R1Node: a plain cluster");

    p.spec.placement.clusters = 3;
    let s = schedule(&p, Some(&here)).unwrap();
    assert!(s.run_here);
    assert_eq!(s.unmet.as_ref().unwrap().0, "NotEnoughClusters");
    assert!(s.unmet.unwrap().1.contains("1 of 3"));
    p.spec.placement.clusters = 1;

    let sel = |k: &str, v: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([(k.to_string(), v.to_string())])),
        ..Default::default()
    };
    p.spec.placement.cluster_selector = Some(sel("region", "us"));
    let s = schedule(&p, Some(&here)).unwrap();
    assert_eq!((s.run_here, s.unmet.unwrap().0), (false, "ClusterNotSelected"), "nothing runs where excluded");
    assert!(!schedule(&p, None).unwrap().run_here, "no R1Node has no labels");
    p.spec.placement.cluster_selector = Some(sel("region", "eu"));
    assert_eq!(schedule(&p, Some(&here)), Ok(Schedule { run_here: true, unmet: None }));
    p.spec.placement.cluster_selector = Some(LabelSelector {
        match_expressions: Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
            key: "region".into(),
            operator: "Sideways".into(),
            values: None,
        }]),
        ..Default::default()
    });
    assert_eq!(schedule(&p, Some(&here)).unwrap_err().reason, "InvalidPlacement");
    p.spec.placement.cluster_selector = None;

    p.spec.placement.nodes = vec!["n2".into()];
    let s = schedule(&p, Some(&here)).unwrap();
    assert_eq!((s.run_here, s.unmet.unwrap().0), (false, "NodesUnavailable"));
    p.spec.placement.nodes = vec!["n1".into(), "n2".into()];
    let s = schedule(&p, Some(&here)).unwrap();
    assert_eq!((s.run_here, s.unmet.as_ref().unwrap().0), (true, "NodesUnavailable"));
    assert!(s.unmet.unwrap().1.contains("n2"));
    p.spec.placement.nodes = vec!["12D3n1".into()];
    assert_eq!(schedule(&p, Some(&here)), Ok(Schedule { run_here: true, unmet: None }), "named by PeerId");
}

#[test]
fn the_cluster_offer_selects_nodes_for_every_pod() {
    let mut p = pipeline(PipelineMode::Service, vec![container("a", &[])]);
    let inputs =
        Inputs { node_selector: BTreeMap::from([("pool".to_string(), "gpu".to_string())]), ..Default::default() };
    let d = build(&p, &inputs).unwrap().deployment.unwrap();
    let sel = d.spec.unwrap().template.spec.unwrap().node_selector.unwrap();
    assert_eq!(sel.get("pool").map(String::as_str), Some("gpu"));
    p.spec.template.spec.as_mut().unwrap().node_selector = Some(BTreeMap::from([("pool".into(), "cpu".into())]));
    assert_eq!(validate(&p, &inputs).unwrap_err().reason, "NodeSelectorConflict");
    p.spec.template.spec.as_mut().unwrap().node_selector = Some(BTreeMap::from([("disk".into(), "ssd".into())]));
    assert_eq!(validate(&p, &inputs), Ok(None), "other keys combine");
}

#[test]
fn model_watch_maps_to_mounting_pipelines() {
    let mut a = pipeline(PipelineMode::Service, vec![container("a", &[])]);
    a.spec.models = vec![ModelMount { name: "m".into(), mount_path: "/m".into() }];
    let mut b = a.clone();
    b.metadata.name = Some("other".into());
    b.metadata.namespace = Some("elsewhere".into());
    let c = pipeline(PipelineMode::Service, vec![container("a", &[])]);
    let all: Vec<_> = [a, b, c].into_iter().map(Arc::new).collect();
    let refs = mounting(&all, Some("ns"), "m");
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].name, "web");
}

fn pod_with(name: &str, status: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "status": status})).unwrap()
}

#[test]
fn a_crash_loop_names_pod_container_exit_code_and_what_to_read() {
    let running = pod_with(
        "web-a",
        serde_json::json!({"containerStatuses": [
        {"name": "main", "ready": true, "restartCount": 0, "image": "x", "imageID": "", "state": {"running": {}}}]}),
    );
    let crashing = pod_with(
        "web-b",
        serde_json::json!({"containerStatuses": [
        {"name": "main", "ready": false, "restartCount": 3, "image": "x", "imageID": "",
         "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
         "lastState": {"terminated": {"exitCode": 3, "reason": "Error"}}}]}),
    );
    assert_eq!(container_problem(std::slice::from_ref(&running)), None);
    let (reason, msg) = container_problem(&[running, crashing]).unwrap();
    assert_eq!(reason, "CrashLoopBackOff");
    assert!(msg.contains("pod web-b container main") && msg.contains("last exit code 3: Error"), "{msg}");
    assert!(msg.contains("kubectl logs web-b -c main --previous"), "{msg}");
    // A container that is only starting is no problem.
    let creating = pod_with(
        "web-c",
        serde_json::json!({"containerStatuses": [
        {"name": "main", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
         "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
    );
    assert_eq!(container_problem(&[creating]), None);
    let pull = pod_with(
        "web-d",
        serde_json::json!({"containerStatuses": [
        {"name": "main", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
         "state": {"waiting": {"reason": "ErrImageNeverPull", "message": "image not present"}}}]}),
    );
    assert_eq!(container_problem(&[pull]).unwrap().0, "ErrImageNeverPull");
}

#[test]
fn a_problem_replaces_the_count_while_not_ready() {
    let p = pipeline(PipelineMode::Service, vec![container("a", &[])]);
    let placement = placement_status(&p, None, None, None);
    let problem = ("CrashLoopBackOff".to_string(), "pod web-b container main: CrashLoopBackOff".to_string());
    let w = placement_conditions_with(&p, &placement, None, Some(&problem));
    let ready = w.iter().find(|w| w.type_ == "Ready").unwrap();
    assert_eq!((ready.status, ready.reason.as_str()), (Some(false), "CrashLoopBackOff"));
    assert!(ready.message.starts_with("0/2 ready; pod web-b"), "{}", ready.message);
    let rec = w.iter().find(|w| w.type_ == "Reconciling").unwrap();
    assert_eq!(rec.status, Some(true));
    // Pods are read only when some exist and are not ready.
    let dep = |replicas, ready| Deployment {
        status: Some(DeploymentStatus { replicas: Some(replicas), ready_replicas: Some(ready), ..Default::default() }),
        ..Default::default()
    };
    assert!(pods_pending(Some(&dep(2, 1)), None));
    assert!(!pods_pending(Some(&dep(2, 2)), None));
    assert!(!pods_pending(Some(&Deployment::default()), None));
    let job = Job { status: Some(JobStatus { active: Some(1), ..Default::default() }), ..Default::default() };
    assert!(pods_pending(None, Some(&job)));
    assert!(!pods_pending(None, Some(&Job::default())));
}

/// The reconcile's conversation with a mocked API server (tower-test): the
/// reads, the server-side apply with the operator's field manager and
/// `force`, then status, then an Event. The same flow runs against a real
/// API server in the e2e suite.
mod mocked_api {
    use super::*;
    use crate::controller::Context;
    use crate::metrics::Metrics;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use kube::runtime::events::{Recorder, Reporter};
    use kube::Client;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    /// A context whose client talks to the returned mock API server.
    fn mocked_context() -> (Arc<Context>, Handle) {
        let (ctx, handle) = mocked_context_with(Default::default());
        (Arc::new(ctx), handle)
    }

    fn mocked_context_with(caches: crate::controller::Caches) -> (Context, Handle) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "default");
        let recorder = Recorder::new(client.clone(), Reporter { controller: "ratio1-operator".into(), instance: None });
        let mut ctx = Context::new(client, recorder, Arc::new(Metrics::default()), "ratio1-system".into());
        ctx.caches = caches;
        (ctx, handle)
    }

    /// What the API server returns for an applied object: it as sent, with
    /// a UID and a generation.
    fn stored(mut body: serde_json::Value, uid: &str) -> serde_json::Value {
        body["metadata"]["uid"] = uid.into();
        body["metadata"]["generation"] = 1.into();
        body["metadata"]["resourceVersion"] = "7".into();
        body
    }

    fn json_response(code: StatusCode, body: serde_json::Value) -> Response<Body> {
        Response::builder().status(code).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap()
    }

    fn not_found() -> Response<Body> {
        json_response(
            StatusCode::NOT_FOUND,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        )
    }

    async fn next(
        handle: &mut Handle,
        method: Method,
        path_end: &str,
    ) -> (Request<Body>, serde_json::Value, tower_test::mock::SendResponse<Response<Body>>) {
        let (req, send) = handle.next_request().await.expect("the reconcile sends another request");
        assert_eq!(req.method(), method, "{}", req.uri());
        assert!(req.uri().path().ends_with(path_end), "{} does not end with {path_end}", req.uri());
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let json = if bytes.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        (Request::from_parts(parts, Body::empty()), json, send)
    }

    /// A new service pipeline's first reconcile with empty caches: GET
    /// (miss) and apply each child, write status. Returns the handle, the
    /// children as the server stored them, and the status body sent.
    async fn first_reconcile(
        p: &R1Pipeline,
        ctx: &Arc<Context>,
        mut handle: Handle,
    ) -> (Handle, Vec<serde_json::Value>, serde_json::Value) {
        let server = tokio::spawn(async move {
            for kind in ["deployments", "services"] {
                let (_, _, send) = next(&mut handle, Method::GET, &format!("/{kind}/web")).await;
                send.send_response(not_found());
            }
            let mut stored_children = vec![];
            for (kind, uid) in [("deployments", "d-uid"), ("services", "s-uid")] {
                let (_, body, send) = next(&mut handle, Method::PATCH, &format!("/{kind}/web")).await;
                let body = stored(body, uid);
                stored_children.push(body.clone());
                send.send_response(json_response(StatusCode::OK, body));
            }
            let (_, status, send) = next(&mut handle, Method::PATCH, "/r1pipelines/web/status").await;
            send.send_response(json_response(
                StatusCode::OK,
                serde_json::to_value(pipeline(PipelineMode::Service, vec![])).unwrap(),
            ));
            (handle, stored_children, status)
        });
        reconcile(Arc::new(p.clone()), ctx.clone()).await.unwrap();
        server.await.unwrap()
    }

    #[tokio::test]
    async fn service_pipeline_applies_children_then_status() {
        let (ctx, mut handle) = mocked_context();
        let p = pipeline(PipelineMode::Service, vec![container("a", &[8080])]);

        let server = tokio::spawn(async move {
            // The caches are empty: only children about to be written are
            // looked up (a user's object of that name must not be taken
            // over); no Job is wanted, so none is looked for.
            for kind in ["deployments", "services"] {
                let (_, _, send) = next(&mut handle, Method::GET, &format!("/namespaces/ns/{kind}/web")).await;
                send.send_response(not_found());
            }
            for kind in ["deployments", "services"] {
                let (req, body, send) = next(&mut handle, Method::PATCH, &format!("/namespaces/ns/{kind}/web")).await;
                let query = req.uri().query().unwrap_or_default();
                assert!(query.contains("fieldManager=ratio1-operator") && query.contains("force=true"), "{query}");
                assert_eq!(req.headers()["content-type"], "application/apply-patch+yaml");
                assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
                assert_eq!(body["metadata"]["labels"]["ratio1.ai/pipeline"], "web");
                send.send_response(json_response(StatusCode::OK, body));
            }
            let (req, body, send) = next(&mut handle, Method::PATCH, "/namespaces/ns/r1pipelines/web/status").await;
            assert!(req.uri().query().unwrap_or_default().contains("fieldManager=ratio1-operator"));
            assert_eq!(body["status"]["observedGeneration"], 1);
            assert_eq!(body["status"]["replicas"], 2);
            let ready = body["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Ready")
                .cloned()
                .unwrap();
            assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("ReplicasNotReady")));
            send.send_response(json_response(
                StatusCode::OK,
                serde_json::to_value(pipeline(PipelineMode::Service, vec![])).unwrap(),
            ));
            // A first status that is merely in progress raises no Event.
            handle
        });
        let action = reconcile(Arc::new(p), ctx.clone()).await.expect("reconcile succeeds");
        assert_eq!(action, Action::requeue(Duration::from_secs(300)));
        let mut handle = server.await.expect("the API server saw exactly the expected requests");
        assert!(tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await.is_err(), "no Event");
    }

    #[tokio::test]
    async fn invalid_input_writes_only_status_and_an_event() {
        let (ctx, mut handle) = mocked_context();
        let p = pipeline(PipelineMode::Service, vec![]);
        let server = tokio::spawn(async move {
            // Nothing will be written but status: nothing is read.
            let (_, body, send) = next(&mut handle, Method::PATCH, "/r1pipelines/web/status").await;
            let stalled = body["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Stalled")
                .cloned()
                .unwrap();
            assert_eq!(
                (stalled["status"].as_str(), stalled["reason"].as_str()),
                (Some("True"), Some("InvalidTemplate"))
            );
            send.send_response(json_response(
                StatusCode::OK,
                serde_json::to_value(pipeline(PipelineMode::Service, vec![])).unwrap(),
            ));
            let (_, event, send) = next(&mut handle, Method::POST, "/events").await;
            assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("InvalidTemplate")));
            send.send_response(json_response(StatusCode::CREATED, event));
        });
        assert_eq!(reconcile(Arc::new(p), ctx).await.unwrap(), Action::await_change());
        server.await.unwrap();
    }

    /// The steady state costs nothing: with the children in the caches as
    /// the last apply left them and the status up to date, a reconcile (a
    /// resync, or a watch event that changed nothing relevant) sends no
    /// request at all. A child someone else changed is applied again.
    #[tokio::test]
    async fn a_reconcile_with_nothing_to_do_sends_no_request() {
        use kube::runtime::reflector;
        use kube::runtime::watcher::Event;
        let (deps, mut deps_w) = reflector::store::<Deployment>();
        let (svcs, mut svcs_w) = reflector::store::<Service>();
        let caches =
            crate::controller::Caches { deployments: deps.clone(), services: svcs.clone(), ..Default::default() };
        let (ctx, handle) = mocked_context_with(caches);
        let ctx = Arc::new(ctx);
        let p = pipeline(PipelineMode::Service, vec![container("a", &[8080])]);

        // First reconcile: GET (miss), apply, status; remember what the
        // server returned.
        let (mut handle, children, status) = first_reconcile(&p, &ctx, handle).await;

        // The watches deliver the children; the pipeline carries its status.
        deps_w.apply_watcher_event(&Event::Apply(serde_json::from_value(children[0].clone()).unwrap()));
        svcs_w.apply_watcher_event(&Event::Apply(serde_json::from_value(children[1].clone()).unwrap()));
        let mut again = p.clone();
        again.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
        reconcile(Arc::new(again.clone()), ctx.clone()).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await.is_err(),
            "a reconcile with nothing to do sent a request"
        );

        // Someone scales the Deployment by hand: its generation moves, so
        // the operator applies its own spec again (and only that).
        let mut drifted = children[0].clone();
        drifted["metadata"]["generation"] = 2.into();
        drifted["spec"]["replicas"] = 5.into();
        deps_w.apply_watcher_event(&Event::Apply(serde_json::from_value(drifted).unwrap()));
        let server = tokio::spawn(async move {
            let (_, body, send) = next(&mut handle, Method::PATCH, "/deployments/web").await;
            assert_eq!(body["spec"]["replicas"], 2, "the pipeline's replicas, not the drifted 5");
            send.send_response(json_response(StatusCode::OK, stored(body, "d-uid")));
            handle
        });
        reconcile(Arc::new(again), ctx.clone()).await.unwrap();
        let mut handle = server.await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await.is_err());
    }

    /// A reconcile woken before the watch brought back its own status write
    /// (by the children's echo, say) sees the old status in the cache: it
    /// does not write the same status again. Once the cache holds a newer
    /// object whose status differs (someone else's write), it does.
    #[tokio::test]
    async fn a_status_is_not_written_twice_while_the_cache_has_not_seen_the_first_write() {
        use kube::runtime::reflector;
        use kube::runtime::watcher::Event;
        let (deps, mut deps_w) = reflector::store::<Deployment>();
        let (svcs, mut svcs_w) = reflector::store::<Service>();
        let caches =
            crate::controller::Caches { deployments: deps.clone(), services: svcs.clone(), ..Default::default() };
        let (ctx, handle) = mocked_context_with(caches);
        let ctx = Arc::new(ctx);
        let mut p = pipeline(PipelineMode::Service, vec![container("a", &[8080])]);
        p.metadata.resource_version = Some("5".into());

        let (mut handle, children, _) = first_reconcile(&p, &ctx, handle).await;
        deps_w.apply_watcher_event(&Event::Apply(serde_json::from_value(children[0].clone()).unwrap()));
        svcs_w.apply_watcher_event(&Event::Apply(serde_json::from_value(children[1].clone()).unwrap()));

        // The same cached pipeline (resourceVersion 5, no status yet).
        reconcile(Arc::new(p.clone()), ctx.clone()).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await.is_err(),
            "the same status was written a second time"
        );

        // A newer object without that status: written again.
        p.metadata.resource_version = Some("9".into());
        let server = tokio::spawn(async move {
            let (_, body, send) = next(&mut handle, Method::PATCH, "/r1pipelines/web/status").await;
            assert_eq!(body["status"]["observedGeneration"], 1);
            send.send_response(json_response(
                StatusCode::OK,
                serde_json::to_value(pipeline(PipelineMode::Service, vec![])).unwrap(),
            ));
            handle
        });
        reconcile(Arc::new(p), ctx.clone()).await.unwrap();
        let mut handle = server.await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await.is_err());
    }

    /// With the names caches filled and no object of the pipeline's name in
    /// them, the children are created without a GET first; an object of
    /// that name that the names cache knows is looked up (a user's object
    /// must never be taken over).
    #[tokio::test]
    async fn a_name_nobody_uses_needs_no_get() {
        use kube::core::PartialObjectMeta;
        use kube::runtime::reflector;
        use kube::runtime::watcher::Event;
        let ready = crate::controller::Filled::set;
        let (dep_names, _) = reflector::store::<PartialObjectMeta<Deployment>>();
        let (svc_names, mut svc_names_w) = reflector::store::<PartialObjectMeta<Service>>();
        let caches = crate::controller::Caches {
            deployment_names: crate::controller::Names { store: dep_names, ready: ready() },
            service_names: crate::controller::Names { store: svc_names, ready: ready() },
            ..Default::default()
        };
        // A Service "web" exists (someone else's).
        let mut meta: PartialObjectMeta<Service> = Default::default();
        meta.metadata.name = Some("web".into());
        meta.metadata.namespace = Some("ns".into());
        svc_names_w.apply_watcher_event(&Event::InitDone);
        svc_names_w.apply_watcher_event(&Event::Apply(meta));
        let (ctx, mut handle) = mocked_context_with(caches);
        let p = pipeline(PipelineMode::Service, vec![container("a", &[8080])]);
        let server = tokio::spawn(async move {
            // No GET of the Deployment: no object has its name.
            let (_, _, send) = next(&mut handle, Method::GET, "/services/web").await;
            let user = serde_json::json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "ns", "uid": "user-svc"}});
            send.send_response(json_response(StatusCode::OK, user));
            let (_, body, send) = next(&mut handle, Method::PATCH, "/r1pipelines/web/status").await;
            let stalled =
                body["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Stalled").cloned();
            assert_eq!(stalled.unwrap()["reason"], "NameConflict");
            send.send_response(json_response(
                StatusCode::OK,
                serde_json::to_value(pipeline(PipelineMode::Service, vec![])).unwrap(),
            ));
            let (_, event, send) = next(&mut handle, Method::POST, "/events").await;
            send.send_response(json_response(StatusCode::CREATED, event));
            handle
        });
        reconcile(Arc::new(p), Arc::new(ctx)).await.unwrap();
        let mut handle = server.await.unwrap();
        let more = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
        assert!(!matches!(more, Ok(Some(_))), "no other request");
    }
}

fn at(node: &str, replicas: i32, ready: i32, phase: PlacementPhase, message: Option<&str>) -> PlacementStatus {
    PlacementStatus {
        node: Some(node.into()),
        peer_id: Some(format!("peer-{node}")),
        replicas,
        ready_replicas: ready,
        phase,
        message: message.map(String::from),
    }
}

fn cond<'a>(w: &'a [Want], t: &str) -> &'a Want {
    w.iter().find(|w| w.type_ == t).unwrap_or_else(|| panic!("no {t} in {w:?}"))
}

#[test]
fn network_status_is_ready_only_when_every_cluster_is() {
    let p = pipeline(PipelineMode::Service, vec![container("a", &[])]);
    let all = [at("b", 2, 2, PlacementPhase::Running, None), at("c", 2, 2, PlacementPhase::Running, None)];
    let w = network::conditions(&p, &all, None, None, None);
    assert_eq!(cond(&w, conditions::READY).status, Some(true));
    let s = cond(&w, SCHEDULED);
    assert_eq!((s.status, s.reason.as_str(), s.message.as_str()), (Some(true), "Placed", "placed on b, c"));

    let behind = [
        at("b", 2, 2, PlacementPhase::Running, None),
        at("c", 2, 0, PlacementPhase::Pending, Some("waiting for the cluster's first report")),
    ];
    let w = network::conditions(&p, &behind, None, None, None);
    let r = cond(&w, conditions::READY);
    assert_eq!(r.status, Some(false));
    assert!(r.message.starts_with("2/4 replicas ready") && r.message.contains("c: waiting for"), "{}", r.message);

    let failed = [at("b", 1, 0, PlacementPhase::Failed, None), at("c", 1, 1, PlacementPhase::Succeeded, None)];
    let mut job = p.clone();
    job.spec.mode = PipelineMode::Job;
    let w = network::conditions(&job, &failed, None, None, None);
    assert_eq!(cond(&w, conditions::STALLED).reason, "JobFailed");

    let unmet = ("NoFittingNode", "placed on 1 of 2 clusters; c: no heartbeat for 9 s".to_string());
    let w = network::conditions(&p, &all[..1], Some(&unmet), None, None);
    assert_eq!(cond(&w, conditions::READY).status, Some(false), "fewer clusters than asked is not ready");
    let s = cond(&w, SCHEDULED);
    assert_eq!((s.status, s.reason.as_str()), (Some(false), "NoFittingNode"));
    assert!(s.message.contains("no heartbeat"));
}

#[test]
fn models_and_inputs_are_delivered_by_init_containers_into_read_only_mounts() {
    let mut p = pipeline(PipelineMode::Job, vec![container("a", &[]), container("b", &[])]);
    p.spec.models = vec![ModelMount { name: "m".into(), mount_path: "/models/m".into() }];
    let v0 = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH";
    p.spec.inputs = vec![InputMount { cid: v0.into(), mount_path: "/data".into() }];
    p.spec.template.spec.as_mut().unwrap().init_containers = Some(vec![container("user-init", &[])]);
    let model_cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku".to_string();
    let mut inputs = Inputs {
        models: BTreeMap::from([("m".to_string(), ModelState::Ready { cid: model_cid.clone(), key: None })]),
        ..Default::default()
    };
    // Without delivery (R1FS off here): annotations only.
    let plain = build(&p, &inputs).unwrap().job.unwrap().spec.unwrap().template.spec.unwrap();
    assert_eq!(plain.init_containers.unwrap().len(), 1);
    assert!(plain.volumes.is_none());
    inputs.delivery = Some(crate::r1fs::service::Delivery {
        endpoint: "http://$(HOST_IP):8090".into(),
        image: "ratio1.local/ratio1-operator:dev".into(),
    });
    let spec = build(&p, &inputs).unwrap().job.unwrap().spec.unwrap().template.spec.unwrap();
    let init = spec.init_containers.unwrap();
    let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["r1fs-fetch-0", "r1fs-fetch-1", "user-init"], "fetchers first, the user's after");
    let cmd = init[1].command.clone().unwrap();
    let v1 = crate::r1fs::cid::canonical(&crate::r1fs::cid::parse(v0).unwrap());
    assert_eq!(cmd, ["ratio1", "fs", "--endpoint", "http://$(HOST_IP):8090", "get", &v1, "/r1fs/content"]);
    assert_eq!(init[0].command.as_ref().unwrap()[5], model_cid);
    assert_eq!(init[0].env.as_ref().unwrap()[0].name, "HOST_IP");
    let sc = init[0].security_context.clone().unwrap();
    assert_eq!((sc.run_as_non_root, sc.read_only_root_filesystem), (Some(true), Some(true)));
    let vols: Vec<String> = spec.volumes.unwrap().iter().map(|v| v.name.clone()).collect();
    assert_eq!(vols, ["r1fs-0", "r1fs-1"]);
    for c in &spec.containers {
        let m = c.volume_mounts.clone().unwrap();
        let got: Vec<(&str, &str, Option<&str>, Option<bool>)> =
            m.iter().map(|m| (m.name.as_str(), m.mount_path.as_str(), m.sub_path.as_deref(), m.read_only)).collect();
        assert_eq!(
            got,
            [("r1fs-0", "/models/m", Some("content"), Some(true)), ("r1fs-1", "/data", Some("content"), Some(true))],
            "container {}",
            c.name
        );
    }
    // A user volume with the reserved prefix is refused.
    p.spec.template.spec.as_mut().unwrap().volumes =
        Some(vec![k8s_openapi::api::core::v1::Volume { name: "r1fs-0".into(), ..Default::default() }]);
    assert_eq!(reason(validate(&p, &inputs)), "InvalidMounts");
}

#[test]
fn delivered_content_counts_pods_whose_fetch_of_the_current_cid_completed() {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus};
    let pod = |cids: &[&str], exits: &[(usize, i32)]| {
        let mut p = Pod::default();
        p.metadata.annotations =
            Some(BTreeMap::from([(DELIVERED_ANNOTATION.to_string(), serde_json::to_string(cids).unwrap())]));
        p.status = Some(PodStatus {
            init_container_statuses: Some(
                exits
                    .iter()
                    .map(|(i, code)| ContainerStatus {
                        name: format!("r1fs-fetch-{i}"),
                        state: Some(ContainerState {
                            terminated: Some(ContainerStateTerminated { exit_code: *code, ..Default::default() }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        Arc::new(p)
    };
    let mount = |cid: &str, path: &str| Mount { cid: cid.into(), path: path.into(), key: None };
    let mounts = vec![mount("cid-a", "/a"), mount("cid-b", "/b")];
    let pods = vec![
        pod(&["cid-a", "cid-b"], &[(0, 0), (1, 0)]),
        pod(&["cid-a", "cid-b"], &[(0, 0), (1, 1)]),
        // An older pod, from when the first mount named another CID.
        pod(&["cid-old", "cid-b"], &[(0, 0), (1, 0)]),
    ];
    let got = delivered(&mounts, &pods);
    let counts: Vec<(&str, i32)> = got.iter().map(|c| (c.cid.as_str(), c.delivered_pods)).collect();
    assert_eq!(counts, [("cid-a", 2), ("cid-b", 2)]);
    assert_eq!(got[1].mount_path, "/b");
}

#[test]
fn a_sealed_model_is_opened_with_its_secret_and_a_missing_or_wrong_key_stalls() {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PodStatus,
    };
    let mut p = pipeline(PipelineMode::Service, vec![container("a", &[])]);
    p.spec.models = vec![ModelMount { name: "m".into(), mount_path: "/models/m".into() }];
    p.spec.inputs = vec![InputMount {
        cid: "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku".into(),
        mount_path: "/data".into(),
    }];
    let key = crate::crd::KeySecretRef { name: "m-key".into(), key: "key".into() };
    let inputs = Inputs {
        models: BTreeMap::from([(
            "m".to_string(),
            ModelState::Ready { cid: "bafysealed".into(), key: Some(key.clone()) },
        )]),
        delivery: Some(crate::r1fs::service::Delivery {
            endpoint: "http://$(HOST_IP):8090".into(),
            image: "img".into(),
        }),
        ..Default::default()
    };
    let spec = build(&p, &inputs).unwrap().deployment.unwrap().spec.unwrap().template.spec.unwrap();
    let init = spec.init_containers.unwrap();
    let env = init[0].env.clone().unwrap();
    let k = env.iter().find(|e| e.name == "RATIO1_R1FS_KEY").expect("the sealed model's fetcher gets the key");
    let sel = k.value_from.clone().unwrap().secret_key_ref.unwrap();
    assert_eq!((sel.name.as_str(), sel.key.as_str(), sel.optional), ("m-key", "key", Some(false)));
    assert!(k.value.is_none(), "the key is never written into the pod spec");
    assert!(init[1].env.clone().unwrap().iter().all(|e| e.name != "RATIO1_R1FS_KEY"), "an input is not sealed");

    let mounts = mounts(&p, &inputs);
    let pod = |state: ContainerState, last: Option<ContainerState>| {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p-1".into());
        pod.metadata.namespace = Some("ns".into());
        let cids: Vec<&str> = mounts.iter().map(|m| m.cid.as_str()).collect();
        pod.metadata.annotations =
            Some(BTreeMap::from([(DELIVERED_ANNOTATION.to_string(), serde_json::to_string(&cids).unwrap())]));
        pod.status = Some(PodStatus {
            init_container_statuses: Some(vec![
                ContainerStatus { name: "r1fs-fetch-1".into(), state: Some(state.clone()), ..Default::default() },
                ContainerStatus {
                    name: "r1fs-fetch-0".into(),
                    state: Some(state),
                    last_state: last,
                    ..Default::default()
                },
            ]),
            ..Default::default()
        });
        pod
    };
    let waiting = |reason: &str, msg: &str| ContainerState {
        waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), message: Some(msg.into()) }),
        ..Default::default()
    };
    // The Secret is missing: the kubelet cannot make the fetcher.
    let missing = pod(waiting("CreateContainerConfigError", "secret \"m-key\" not found"), None);
    let (reason, msg) = key_problem(&mounts, [&missing]).expect("a missing key Secret is found");
    assert_eq!(reason, "KeySecretNotFound");
    assert!(
        msg.contains("ns/m-key") && msg.contains("secret \"m-key\" not found") && msg.contains("kubectl create secret"),
        "{msg}"
    );
    let placement = PlacementStatus { phase: PlacementPhase::Pending, replicas: 1, ..Default::default() };
    let w = placement_conditions_with(&p, &placement, None, Some(&(reason, msg)));
    let ready = cond(&w, conditions::READY);
    assert_eq!((ready.status, ready.reason.as_str()), (Some(false), "KeySecretNotFound"));
    assert_eq!(cond(&w, conditions::STALLED).status, Some(true), "only the owner can fix it: Stalled");
    // The key is there but does not open the content.
    let wrong = pod(
        waiting("CrashLoopBackOff", "back-off"),
        Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 1,
                message: Some(format!("Error: {}", crate::r1fs::seal::WRONG_KEY)),
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    assert_eq!(key_problem(&mounts, [&wrong]).unwrap().0, "WrongKey");
    // The same failures of an unsealed input are not key problems.
    let mut other = missing.clone();
    other.status.as_mut().unwrap().init_container_statuses.as_mut().unwrap().remove(1);
    assert_eq!(key_problem(&mounts, [&other]), None);
    // Running fetchers: nothing to say.
    let fine = pod(ContainerState::default(), None);
    assert_eq!(key_problem(&mounts, [&fine]), None);
    // Fixed since: the fetcher succeeded; its old failure in lastState is
    // history, not the pod's problem now.
    let fixed = {
        let mut p = wrong.clone();
        let st = &mut p.status.as_mut().unwrap().init_container_statuses.as_mut().unwrap()[1];
        st.state = Some(ContainerState {
            terminated: Some(ContainerStateTerminated { exit_code: 0, ..Default::default() }),
            ..Default::default()
        });
        p
    };
    assert_eq!(key_problem(&mounts, [&fixed]), None);
    // A pod made for another CID (an older ReplicaSet's), or one that is
    // done, is not the current mounts' problem.
    let mut older = missing.clone();
    older.metadata.annotations =
        Some(BTreeMap::from([(DELIVERED_ANNOTATION.to_string(), r#"["bafyother","x"]"#.to_string())]));
    assert_eq!(key_problem(&mounts, [&older]), None);
    let mut failed = wrong.clone();
    failed.status.as_mut().unwrap().phase = Some("Failed".into());
    assert_eq!(key_problem(&mounts, [&failed]), None);
    // A Secret whose value is not a key at all.
    let not_a_key = pod(
        waiting("CrashLoopBackOff", "back-off"),
        Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 1,
                message: Some(format!("Error: RATIO1_R1FS_KEY {}", crate::r1fs::seal::NOT_A_KEY)),
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    let (reason, msg) = key_problem(&mounts, [&not_a_key]).unwrap();
    assert!(reason == "WrongKey" && msg.contains("not a key"), "{msg}");
}
