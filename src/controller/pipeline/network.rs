//! The pipeline reconciler's part in Deeploy: at the origin, plan and
//! write the intent and fill status from the targets' reports; at a
//! target, report the copy's state (or refuse it when it cannot run).

use super::{placement_conditions_with, Schedule, SCHEDULED};
use crate::conditions::{self, Invalid, Want};
use crate::controller::{Context, Error, Result};
use crate::crd::{PlacementPhase, PlacementStatus, R1Pipeline};
use crate::deeploy::intent::Intent;
use crate::deeploy::{self, Deeploy};
use kube::ResourceExt;
use std::collections::BTreeMap;

/// How this cluster takes part in a pipeline.
pub enum Mode<'a> {
    /// No network placement (no R1Node, or CSTORE off): only here.
    Local,
    /// A copy applied here for another origin: runs here, reports.
    Copy(&'a Deeploy),
    /// The origin, with Deeploy ready; `me` is this node's PeerId.
    Origin(&'a Deeploy, String),
    /// The origin, Deeploy configured but not ready: why.
    Waiting(String),
}

pub fn mode<'a>(p: &R1Pipeline, ctx: &'a Context, has_node: bool) -> Mode<'a> {
    let Some(d) = ctx.deeploy.get() else { return Mode::Local };
    let me = d.me();
    if deeploy::copy_origin(p).is_some_and(|o| Some(o) != me.as_deref() && deeploy::is_copy_of(p, o)) {
        return Mode::Copy(d);
    }
    if !has_node {
        return Mode::Local;
    }
    match d.ready() {
        Ok(me) => Mode::Origin(d, me),
        Err(why) => Mode::Waiting(why),
    }
}

/// The origin's decision for one pipeline.
pub struct Placed {
    /// Targets and replicas: the plan's, or the current intent's when
    /// nothing fits now (a placement is never withdrawn for lack of room).
    pub targets: BTreeMap<String, i32>,
    pub intent: Intent,
}

/// Plans the pipeline (pure but for the mirror read) into a schedule.
pub fn schedule(d: &Deeploy, me: &str, p: &R1Pipeline) -> Result<(Schedule, Placed), Invalid> {
    let ns = p.namespace().unwrap_or_default();
    let name = p.name_any();
    let (plan, need) = d.plan(me, &ns, &name, &p.spec).map_err(|e| Invalid::new("InvalidPlacement", e))?;
    let current = d.intent(me, &ns, &name);
    let targets: BTreeMap<String, i32> = if plan.targets.is_empty() {
        // Nothing fits now: keep the current targets that are only silent
        // or full for now (never one the spec itself now excludes).
        let transient = |t: &String| plan.verdicts.iter().any(|v| &v.peer == t && v.transient);
        current
            .map(|i| i.targets.into_keys().filter(transient).map(|t| (t, p.spec.replicas)).collect())
            .unwrap_or_default()
    } else {
        plan.targets.iter().map(|t| (t.clone(), p.spec.replicas)).collect()
    };
    let unmet = plan.unmet.map(|(reason, msg)| {
        let reason: &'static str = if reason == "NodesUnavailable" { "NodesUnavailable" } else { "NoFittingNode" };
        (reason, msg)
    });
    let intent = Intent {
        namespace: ns,
        name,
        origin: me.to_string(),
        origin_node: d.node_name(me).unwrap_or_default(),
        uid: p.uid().unwrap_or_default(),
        generation: p.metadata.generation.unwrap_or_default(),
        spec_hash: deeploy::spec_hash(&p.spec),
        spec: serde_json::to_value(&p.spec).expect("spec serializes"),
        targets: targets.clone(),
        need,
    };
    let size = serde_json::to_string(&intent).expect("intent serializes").len();
    let max = crate::cstore::record::MAX_VALUE_BYTES;
    if size > max {
        return Err(Invalid::new(
            "SpecTooLarge",
            format!("the spec and its targets take {size} bytes in CSTORE, over its {max}-byte limit: network placement cannot carry it"),
        ));
    }
    Ok((Schedule { run_here: targets.contains_key(me), unmet }, Placed { targets, intent }))
}

/// Writes the intent. An intent whose targets all went (the spec now
/// excludes them) is written too, empty: its targets remove their copies.
/// (No finalizer: Deeploy withdraws the intent of a pipeline that is gone
/// from the filled cache, whether it saw the deletion or not.)
pub async fn commit(d: &Deeploy, placed: &Placed) -> Result<()> {
    if placed.targets.is_empty()
        && d.intent(&placed.intent.origin, &placed.intent.namespace, &placed.intent.name).is_none()
    {
        return Ok(());
    }
    if d.write_intent(&placed.intent).await? {
        tracing::info!(targets = ?placed.targets.keys().collect::<Vec<_>>(), "intent written");
    }
    Ok(())
}

/// Status of every target, this cluster's from its own children.
pub fn placements(d: &Deeploy, me: &str, placed: &Placed, local: PlacementStatus) -> Vec<PlacementStatus> {
    let mut out: Vec<PlacementStatus> = placed
        .targets
        .keys()
        .map(|t| if t == me { local.clone() } else { d.placement_on(&placed.intent, t) })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node).then(a.peer_id.cmp(&b.peer_id)));
    out
}

/// Conditions of an origin pipeline from all its placements.
pub fn conditions(
    p: &R1Pipeline,
    placements: &[PlacementStatus],
    unmet: Option<&(&'static str, String)>,
    waiting: Option<&str>,
    problem: Option<&(String, String)>,
) -> Vec<Want> {
    let phase = if placements.is_empty() {
        PlacementPhase::Pending
    } else if placements.iter().any(|x| x.phase == PlacementPhase::Failed) {
        PlacementPhase::Failed
    } else if placements.iter().all(|x| x.phase == PlacementPhase::Succeeded) {
        PlacementPhase::Succeeded
    } else if placements.iter().all(|x| matches!(x.phase, PlacementPhase::Running | PlacementPhase::Succeeded)) {
        PlacementPhase::Running
    } else {
        PlacementPhase::Pending
    };
    let total = PlacementStatus {
        replicas: placements.iter().map(|x| x.replicas).sum(),
        ready_replicas: placements.iter().map(|x| x.ready_replicas).sum(),
        phase,
        ..Default::default()
    };
    let mut wanted = placement_conditions_with(p, &total, waiting, problem);
    wanted.retain(|w| w.type_ != SCHEDULED);
    // A remote cluster that is behind says why, in the Ready message.
    if phase == PlacementPhase::Pending && waiting.is_none() && problem.is_none() {
        let behind: Vec<String> = placements
            .iter()
            .filter(|x| x.phase == PlacementPhase::Pending)
            .filter_map(|x| Some(format!("{}: {}", x.node.as_deref().unwrap_or("?"), x.message.as_deref()?)))
            .take(3)
            .collect();
        if !behind.is_empty() {
            for w in wanted.iter_mut().filter(|w| w.type_ == conditions::READY || w.type_ == conditions::RECONCILING) {
                w.message = format!("{}; {}", w.message, behind.join("; "));
            }
        }
    }
    let names: Vec<String> = placements.iter().map(|x| x.node.clone().unwrap_or_else(|| "?".into())).collect();
    match unmet {
        Some((reason, msg)) => {
            if phase != PlacementPhase::Failed {
                // Not what was asked: not ready, whatever runs.
                wanted = conditions::progressing(reason, msg);
            }
            wanted.push(Want::new(SCHEDULED, false, *reason, msg.clone()));
        }
        None => wanted.push(Want::new(SCHEDULED, true, "Placed", format!("placed on {}", names.join(", ")))),
    }
    wanted
}

/// A copy's placement, with why it is not running (for its report).
pub async fn report(d: &Deeploy, p: &R1Pipeline, mut placement: PlacementStatus, wanted: &[Want]) -> Result<()> {
    if placement.phase == PlacementPhase::Pending {
        placement.message = wanted.iter().find(|w| w.type_ == conditions::READY).map(|w| w.message.clone());
    }
    d.report(p, &placement).await.map_err(Error::from)
}
