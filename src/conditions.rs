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

/// Builds the new condition list from the full set a reconcile asserts:
/// each wanted condition keeps the `lastTransitionTime` of the existing one
/// of its type when the status did not change; a type it no longer asserts
/// is dropped (a stalled node must not keep a stale `Licensed=True`).
pub fn replace(existing: &[Condition], wanted: &[Want], generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    let mut out: Vec<Condition> = Vec::with_capacity(wanted.len());
    for w in wanted {
        if out.iter().any(|c| c.type_ == w.type_) {
            // Asserted twice: the first statement wins.
            continue;
        }
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

/// The conditions with every `lastTransitionTime` zeroed, for comparing two
/// statuses while ignoring when their conditions last moved.
pub fn without_times(conds: &mut [Condition]) {
    for c in conds {
        c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
    }
}

/// Input only the user can fix (what the schema cannot reject): reported as
/// `Stalled=True` with this reason and message, and a Warning Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// CamelCase condition reason, from a fixed set.
    pub reason: &'static str,
    pub message: String,
    /// The cause may go away without a change of the object (funds
    /// arrive, a service starts): look again after this long.
    pub retry: Option<std::time::Duration>,
}

impl Invalid {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self { reason, message: message.into(), retry: None }
    }

    pub fn retry(self, after: std::time::Duration) -> Self {
        Self { retry: Some(after), ..self }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
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
        let first = replace(&[], &progressing("Waiting", "a"), Some(1), t(100));
        let second = replace(&first, &progressing("StillWaiting", "b"), Some(2), t(200));
        let ready = find(&second, READY).unwrap();
        assert_eq!(ready.last_transition_time, Time(t(100)));
        assert_eq!(ready.reason, "StillWaiting");
        assert_eq!(ready.observed_generation, Some(2));
    }

    #[test]
    fn moves_transition_time_when_status_flips() {
        let first = replace(&[], &progressing("Waiting", "a"), Some(1), t(100));
        let second = replace(&first, &ready("Available", "ok"), Some(1), t(200));
        assert_eq!(find(&second, READY).unwrap().last_transition_time, Time(t(200)));
        assert!(is_true(&second, READY));
        assert!(!is_true(&second, RECONCILING));
    }

    #[test]
    fn drops_what_is_no_longer_asserted_and_sorts() {
        let mut wanted = ready("Ok", "x");
        wanted.push(Want::new("Licensed", true, "Valid", ""));
        let before = replace(&[], &wanted, Some(1), t(1));
        assert!(is_true(&before, "Licensed"));
        let out = replace(&before, &stalled("Bad", "x"), Some(3), t(2));
        let types: Vec<_> = out.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "Reconciling", "Stalled"], "a stale Licensed=True must go");
    }

    #[test]
    fn first_statement_of_a_type_wins() {
        let mut wanted = stalled("First", "a");
        wanted.extend(ready("Second", "b"));
        let out = replace(&[], &wanted, None, t(1));
        assert_eq!(out.len(), 3);
        assert_eq!(find(&out, READY).unwrap().reason, "First");
    }

    #[test]
    fn time_insensitive_compare() {
        let mut a = replace(&[], &ready("A", "m"), Some(1), t(1));
        let mut b = replace(&[], &ready("A", "m"), Some(1), t(9));
        assert_ne!(a, b);
        without_times(&mut a);
        without_times(&mut b);
        assert_eq!(a, b);
        let mut c = replace(&[], &ready("B", "m"), Some(1), t(1));
        without_times(&mut c);
        assert_ne!(a, c);
    }
}
