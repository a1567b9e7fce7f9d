//! kstatus-compatible conditions.
//!
//! Argo CD, Flux and `kstatus` read `observedGeneration`, `Ready`,
//! `Reconciling` and `Stalled`. The helpers keep `lastTransitionTime` unless
//! a condition's status changes, and compare statuses ignoring time, so that
//! the controllers skip writes that would only move a timestamp (each write
//! would otherwise wake the controller again, forever).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// A condition as a controller wants it, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub type_: &'static str,
    pub status: Option<bool>,
    pub reason: String,
    pub message: String,
}

impl Want {
    pub fn new(type_: &'static str, status: bool, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { type_, status: Some(status), reason: reason.into(), message: message.into() }
    }

    /// Status `Unknown`.
    pub fn unknown(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { type_, status: None, reason: reason.into(), message: message.into() }
    }
}

fn status_str(s: Option<bool>) -> &'static str {
    match s {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    }
}

/// The kstatus triple for an object that is making progress but not ready.
pub fn progressing(reason: &str, message: &str) -> Vec<Want> {
    vec![
        Want::new(READY, false, reason, message),
        Want::new(RECONCILING, true, reason, message),
        Want::new(STALLED, false, reason, message),
    ]
}

/// The kstatus triple for a ready object.
pub fn ready(reason: &str, message: &str) -> Vec<Want> {
    vec![
        Want::new(READY, true, reason, message),
        Want::new(RECONCILING, false, reason, message),
        Want::new(STALLED, false, reason, message),
    ]
}

/// The kstatus triple for an object that cannot progress until its input changes.
pub fn stalled(reason: &str, message: &str) -> Vec<Want> {
    vec![
        Want::new(READY, false, reason, message),
        Want::new(RECONCILING, false, reason, message),
        Want::new(STALLED, true, reason, message),
    ]
}

/// Builds the new condition list: wanted conditions replace the ones of the
/// same type (keeping `lastTransitionTime` where the status did not change);
/// conditions of other types are kept as they are.
pub fn merge(existing: &[Condition], wanted: &[Want], generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    let mut out: Vec<Condition> =
        existing.iter().filter(|c| !wanted.iter().any(|w| w.type_ == c.type_)).cloned().collect();
    for w in wanted {
        let status = status_str(w.status).to_string();
        let last_transition_time = existing
            .iter()
            .find(|c| c.type_ == w.type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        out.push(Condition {
            type_: w.type_.to_string(),
            status,
            reason: w.reason.clone(),
            message: w.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Equal but for `lastTransitionTime`.
pub fn same_ignoring_time(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
                && x.observed_generation == y.observed_generation
        })
}

/// Finds a condition by type.
pub fn find<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// True when condition `type_` has status `True`.
pub fn is_true(conds: &[Condition], type_: &str) -> bool {
    find(conds, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn keeps_transition_time_while_status_holds() {
        let first = merge(&[], &progressing("Waiting", "a"), Some(1), t(100));
        let second = merge(&first, &progressing("StillWaiting", "b"), Some(2), t(200));
        let ready = find(&second, READY).unwrap();
        assert_eq!(ready.last_transition_time, Time(t(100)));
        assert_eq!(ready.reason, "StillWaiting");
        assert_eq!(ready.observed_generation, Some(2));
    }

    #[test]
    fn moves_transition_time_when_status_flips() {
        let first = merge(&[], &progressing("Waiting", "a"), Some(1), t(100));
        let second = merge(&first, &ready("Available", "ok"), Some(1), t(200));
        assert_eq!(find(&second, READY).unwrap().last_transition_time, Time(t(200)));
        assert!(is_true(&second, READY));
        assert!(!is_true(&second, RECONCILING));
    }

    #[test]
    fn keeps_foreign_conditions_and_sorts() {
        let other = merge(&[], &[Want::new("Licensed", true, "Valid", "")], None, t(1));
        let out = merge(&other, &stalled("Bad", "x"), Some(3), t(2));
        let types: Vec<_> = out.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Licensed", "Ready", "Reconciling", "Stalled"]);
    }

    #[test]
    fn time_insensitive_compare() {
        let a = merge(&[], &ready("A", "m"), Some(1), t(1));
        let b = merge(&[], &ready("A", "m"), Some(1), t(9));
        assert!(same_ignoring_time(&a, &b));
        let c = merge(&[], &ready("B", "m"), Some(1), t(1));
        assert!(!same_ignoring_time(&a, &c));
    }
}
