//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's
//! `leaderelection` does it.
//!
//! Only the holder runs the controllers. Expiry is judged on the local
//! monotonic clock, never by comparing the Lease's `renewTime` with the local
//! wall clock: a candidate remembers the last record it read and when it saw
//! that record change, and takes a foreign lease only after a full lease
//! duration without change. Clock skew between nodes therefore cannot make a
//! live lease look expired (or a dead one look alive).
//!
//! The leader steps down when no renewal succeeded within the renew deadline,
//! which is shorter than the lease duration: it stops before any candidate
//! can see the lease as expired. The caller exits the process (the
//! Deployment restarts it as a candidate), as controller-runtime does.
//! Updates use the Lease's resourceVersion, so two candidates can never both
//! win a round.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Lease timing. Invariant (checked by [`validate_timing`]):
/// `0 < retry_period < renew_deadline < lease_duration`.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long candidates wait, from when they last saw the lease change,
    /// before taking it. Whole seconds: the Lease stores seconds.
    pub lease_duration: Duration,
    /// How long the leader may go without a successful renewal before it
    /// steps down.
    pub renew_deadline: Duration,
    /// How often the holder renews, and candidates retry.
    pub retry_period: Duration,
}

/// Checks `0 < retry < renew deadline < lease duration`, the lease duration
/// in whole seconds; the error is one line for the user. The margin between
/// renew deadline and lease duration is what keeps a stepping-down leader
/// from overlapping its successor.
pub fn validate_timing(lease_duration: Duration, renew_deadline: Duration, retry: Duration) -> Result<(), String> {
    if retry.is_zero() || retry >= renew_deadline || renew_deadline >= lease_duration {
        return Err(format!(
            "invalid leader election timing: need 0 < retry period ({retry:?}) < renew deadline ({renew_deadline:?}) < lease duration ({lease_duration:?})"
        ));
    }
    if lease_duration.subsec_nanos() != 0 {
        return Err(format!("invalid leader election timing: lease duration {lease_duration:?} is not whole seconds"));
    }
    Ok(())
}

/// What a candidate saw in one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    /// We hold the lease: created, renewed or taken over in this round.
    Leading,
    /// Someone else holds a lease that has not expired in our eyes.
    Following,
}

/// The last Lease record a candidate read, and when (local monotonic clock)
/// it last saw that record change.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    record: Option<LeaseSpec>,
    since: Option<Instant>,
}

impl Observed {
    /// Notes the record read at `now`. The clock restarts only when the
    /// record differs from the last one: any write by the holder (a renewal)
    /// changes it.
    pub fn observe(&mut self, record: Option<&LeaseSpec>, now: Instant) {
        if self.since.is_none() || self.record.as_ref() != record {
            self.record = record.cloned();
            self.since = Some(now);
        }
    }
}

/// Decides whether `me` may take or keep the lease whose current record is
/// `lease`, at local instant `now`. A foreign holder's lease has expired only
/// when `observed` has held this very record, unchanged, for longer than its
/// `leaseDurationSeconds` (`fallback` when the record has none). The record's
/// timestamps are not looked at: they come from another node's clock.
pub fn may_acquire(observed: &Observed, lease: Option<&LeaseSpec>, me: &str, fallback: Duration, now: Instant) -> bool {
    let Some(spec) = lease else { return true };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(h) if h == me => true,
        Some(_) => {
            // A record other than the observed one is new to us: its clock
            // has not started yet.
            let Some(since) = observed.since.filter(|_| observed.record.as_ref() == Some(spec)) else {
                return false;
            };
            let dur = match spec.lease_duration_seconds {
                Some(s) if s > 0 => Duration::from_secs(s as u64),
                _ => fallback,
            };
            since + dur < now
        }
    }
}

/// One election round against the API server; a trait so that the renewal
/// loop can be tested without one.
trait Campaign {
    fn round(&mut self) -> impl Future<Output = Result<Round, kube::Error>> + Send;
}

/// This replica's leadership: `lost` turns `false` when it ends.
pub struct Leadership {
    pub lost: watch::Receiver<bool>,
    renewing: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Stops renewing (before a release: a renewal after it would take the
    /// lease back).
    pub async fn stop_renewing(self) {
        self.renewing.abort();
        let _ = self.renewing.await;
    }
}

pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    observed: Observed,
}

impl Campaign for Elector {
    fn round(&mut self) -> impl Future<Output = Result<Round, kube::Error>> + Send {
        Elector::round(self)
    }
}

impl Elector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self { api: Api::namespaced(client, &cfg.namespace), cfg, observed: Observed::default() }
    }

    /// The record this replica writes. The times are wall-clock for people
    /// reading the Lease; no replica compares them with its own clock.
    fn spec(&self, now: Timestamp, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(acquire.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One election round: create, renew or take over the lease if allowed.
    /// A lost race (HTTP 409: someone wrote the lease since we read it) is
    /// an error, retried by the caller.
    pub async fn round(&mut self) -> Result<Round, kube::Error> {
        let current = self.api.get_opt(&self.cfg.name).await?;
        self.observed.observe(current.as_ref().and_then(|l| l.spec.as_ref()), Instant::now());
        let wall = Timestamp::now();
        let written = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.cfg.name.clone()), ..Default::default() },
                    spec: Some(self.spec(wall, None, 0)),
                };
                self.api.create(&PostParams::default(), &lease).await?
            }
            Some(mut lease) => {
                let current = lease.spec.as_ref();
                let (me, fallback) = (self.cfg.identity.as_str(), self.cfg.lease_duration);
                if !may_acquire(&self.observed, current, me, fallback, Instant::now()) {
                    return Ok(Round::Following);
                }
                let ours = current.and_then(|s| s.holder_identity.as_deref()) == Some(me);
                let transitions = current.and_then(|s| s.lease_transitions).unwrap_or(0);
                let (acquire, transitions) = if ours {
                    (current.and_then(|s| s.acquire_time.clone()), transitions)
                } else {
                    (None, transitions + 1)
                };
                lease.spec = Some(self.spec(wall, acquire, transitions));
                // replace() carries metadata.resourceVersion: a concurrent
                // writer makes this a 409 conflict and we lose the round.
                self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await?
            }
        };
        self.observed.observe(written.spec.as_ref(), Instant::now());
        Ok(Round::Leading)
    }

    /// Campaigns until this replica leads, then keeps renewing in the
    /// background. The returned receiver turns `false` (and the task ends)
    /// when leadership is lost; it is never regained by the same task.
    pub async fn acquire(mut self) -> Leadership {
        let won_at = loop {
            let started = Instant::now();
            // Bounded like a renewal: a hung call must not stall the campaign.
            match tokio::time::timeout(self.cfg.renew_deadline, self.round()).await {
                Ok(Ok(Round::Leading)) => break started,
                Ok(Ok(Round::Following)) => {}
                Ok(Err(kube::Error::Api(e))) if e.code == 409 => tracing::debug!("lost a race for the leader lease"),
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election round failed"),
                Err(_) => tracing::warn!(timeout = ?self.cfg.renew_deadline, "leader election round timed out"),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        };
        tracing::info!(identity = %self.cfg.identity, lease = %self.cfg.name, "acquired leadership");
        let (tx, rx) = watch::channel(true);
        let renewing = tokio::spawn(async move {
            let (retry, deadline) = (self.cfg.retry_period, self.cfg.renew_deadline);
            keep_renewing(&mut self, won_at, retry, deadline).await;
            let _ = tx.send(false);
        });
        Leadership { lost: rx, renewing }
    }

    /// Gives the lease up (on graceful shutdown) so a standby takes over at
    /// once instead of after the lease duration.
    pub async fn release(client: Client, cfg: &LeaseConfig) {
        let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
        if let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await {
            if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(cfg.identity.as_str()) {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = None;
                    spec.renew_time = None;
                    spec.acquire_time = None;
                }
                match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                    Ok(_) => tracing::info!("released leader lease"),
                    Err(e) => tracing::warn!(error = %e, "releasing leader lease failed"),
                }
            }
        }
    }
}

/// Renews every `retry` until leadership is lost, then returns: the lease
/// was found taken, or no round succeeded within `renew_deadline` of the
/// start of the last successful one (`last_ok`). A successful write happened
/// after the start of its round, so candidates, counting from when they saw
/// it, cannot take the lease before `last_ok + lease_duration`, after this
/// has returned. Each round is cut off at the deadline: a hung API call
/// cannot keep a stale leader alive.
async fn keep_renewing(c: &mut impl Campaign, mut last_ok: Instant, retry: Duration, renew_deadline: Duration) {
    loop {
        let deadline = last_ok + renew_deadline;
        tokio::time::sleep_until((Instant::now() + retry).min(deadline)).await;
        let started = Instant::now();
        if started >= deadline {
            tracing::error!(renew_deadline = ?renew_deadline, "leader lease not renewed within the renew deadline");
            return;
        }
        match tokio::time::timeout_at(deadline, c.round()).await {
            Ok(Ok(Round::Leading)) => last_ok = started,
            Ok(Ok(Round::Following)) => {
                tracing::error!("leader lease was taken by another replica");
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "renewing leader lease failed"),
            Err(_) => tracing::warn!("renewing leader lease timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const D: Duration = Duration::from_secs(15);

    /// A record held by `holder` whose renewTime is `renewed` seconds from
    /// the epoch: on another node's clock, so any value at all.
    fn spec(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    fn wall_now() -> i64 {
        Timestamp::now().as_second()
    }

    #[test]
    fn free_or_own_lease_is_acquirable() {
        let now = Instant::now();
        let mut seen = Observed::default();
        assert!(may_acquire(&seen, None, "a", D, now));
        assert!(may_acquire(&seen, Some(&LeaseSpec::default()), "a", D, now));
        let released = LeaseSpec { holder_identity: Some(String::new()), ..spec("", 0) };
        assert!(may_acquire(&seen, Some(&released), "a", D, now), "an empty holder is free");
        // Ours, even though it changed this very instant.
        let own = spec("a", wall_now());
        seen.observe(Some(&own), now);
        assert!(may_acquire(&seen, Some(&own), "a", D, now));
        assert!(may_acquire(&Observed::default(), Some(&own), "a", D, now), "ours, never observed before");
    }

    #[test]
    fn unchanged_foreign_lease_is_taken_after_exactly_its_duration() {
        let t0 = Instant::now();
        let lease = spec("b", wall_now());
        // A fresh candidate: the first sight starts the clock.
        let mut seen = Observed::default();
        seen.observe(Some(&lease), t0);
        for t in [t0, t0 + D / 2, t0 + D] {
            // Later reads of the same record do not restart it.
            seen.observe(Some(&lease), t);
            assert!(!may_acquire(&seen, Some(&lease), "a", D, t));
        }
        assert!(may_acquire(&seen, Some(&lease), "a", D, t0 + D + Duration::from_millis(1)));
    }

    #[test]
    fn renew_time_skew_does_not_matter() {
        let t0 = Instant::now();
        for renewed in [wall_now() - 3600, wall_now() + 3600, 0] {
            let lease = spec("b", renewed);
            let mut seen = Observed::default();
            seen.observe(Some(&lease), t0);
            // Far in the past: still valid; far in the future: still expires.
            assert!(!may_acquire(&seen, Some(&lease), "a", D, t0 + D), "renewTime {renewed}");
            assert!(may_acquire(&seen, Some(&lease), "a", D, t0 + D + Duration::from_millis(1)), "renewTime {renewed}");
        }
    }

    #[test]
    fn a_record_that_keeps_changing_is_never_taken() {
        let t0 = Instant::now();
        let mut seen = Observed::default();
        // Renewed every 2 s for 10 lease durations, with a renewTime an
        // hour behind (a skewed clock that never catches up).
        for i in 0..75u32 {
            let now = t0 + Duration::from_secs(2 * i as u64);
            let lease = spec("b", wall_now() - 3600 + i as i64);
            seen.observe(Some(&lease), now);
            assert!(!may_acquire(&seen, Some(&lease), "a", D, now), "taken at renewal {i}");
        }
    }

    #[test]
    fn only_the_observed_record_can_expire() {
        let t0 = Instant::now();
        let mut seen = Observed::default();
        seen.observe(Some(&spec("b", 100)), t0);
        // A record the candidate has not observed yet (the caller forgot to
        // observe it) is treated as just changed.
        let later = t0 + 10 * D;
        assert!(!may_acquire(&seen, Some(&spec("b", 101)), "a", D, later));
        assert!(!may_acquire(&Observed::default(), Some(&spec("b", 100)), "a", D, later));
    }

    #[test]
    fn the_records_duration_counts_else_the_fallback() {
        let t0 = Instant::now();
        let short = LeaseSpec { lease_duration_seconds: Some(4), ..spec("b", 0) };
        let none = LeaseSpec { lease_duration_seconds: None, ..spec("b", 0) };
        let mut seen = Observed::default();
        seen.observe(Some(&short), t0);
        assert!(may_acquire(&seen, Some(&short), "a", D, t0 + Duration::from_secs(5)));
        let mut seen = Observed::default();
        seen.observe(Some(&none), t0);
        assert!(!may_acquire(&seen, Some(&none), "a", D, t0 + Duration::from_secs(5)));
        assert!(may_acquire(&seen, Some(&none), "a", D, t0 + Duration::from_secs(16)));
    }

    #[test]
    fn timing_is_validated() {
        let s = Duration::from_secs;
        assert_eq!(validate_timing(s(15), s(10), s(2)), Ok(()));
        assert_eq!(validate_timing(s(15), s(10), s(5)), Ok(()));
        assert_eq!(validate_timing(s(4), s(3), s(1)), Ok(()));
        for (lease, deadline, retry) in
            [(s(15), s(15), s(2)), (s(15), s(20), s(2)), (s(15), s(10), s(10)), (s(15), s(10), s(0))]
        {
            let e = validate_timing(lease, deadline, retry).unwrap_err();
            assert!(e.contains("retry period") && !e.contains('\n'), "{e}");
        }
        assert!(validate_timing(Duration::from_millis(1500), s(1), Duration::from_millis(500)).is_err());
    }

    /// What a scripted round does.
    enum Step {
        Lead,
        Follow,
        Fail,
        Hang,
    }

    /// A campaign that plays `steps` (then keeps leading) and records when
    /// each round started.
    struct Script {
        steps: VecDeque<Step>,
        calls: Vec<Instant>,
    }

    impl Script {
        fn new(steps: impl IntoIterator<Item = Step>) -> Self {
            Self { steps: steps.into_iter().collect(), calls: vec![] }
        }
    }

    impl Campaign for Script {
        fn round(&mut self) -> impl Future<Output = Result<Round, kube::Error>> + Send {
            self.calls.push(Instant::now());
            let step = self.steps.pop_front().unwrap_or(Step::Lead);
            async move {
                match step {
                    Step::Lead => Ok(Round::Leading),
                    Step::Follow => Ok(Round::Following),
                    Step::Fail => Err(kube::Error::Service(std::io::Error::other("API down").into())),
                    Step::Hang => futures::future::pending().await,
                }
            }
        }
    }

    const RETRY: Duration = Duration::from_secs(2);
    const DEADLINE: Duration = Duration::from_secs(10);

    /// Runs the renewal loop (leadership won at the start) and returns how
    /// long it kept leading, or `None` if it still leads after 601 s.
    async fn leads_for(script: &mut Script) -> Option<Duration> {
        let t0 = Instant::now();
        let run = keep_renewing(script, t0, RETRY, DEADLINE);
        tokio::time::timeout(Duration::from_secs(601), run).await.ok().map(|()| t0.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn successful_renewals_keep_leading() {
        let mut s = Script::new([]);
        assert_eq!(leads_for(&mut s).await, None);
        assert_eq!(s.calls.len(), 300, "one renewal per retry period");
    }

    #[tokio::test(start_paused = true)]
    async fn failing_renewals_step_down_at_the_deadline() {
        let mut s = Script::new(std::iter::repeat_with(|| Step::Fail).take(100));
        assert_eq!(leads_for(&mut s).await, Some(DEADLINE));
        assert_eq!(s.calls.len(), 4, "retried every {RETRY:?} before the deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_renewal_is_cut_off_at_the_deadline() {
        // Renewed at 2 s, then the API call hangs: out at 2 + 10 s.
        let mut s = Script::new([Step::Lead, Step::Hang]);
        assert_eq!(leads_for(&mut s).await, Some(RETRY + DEADLINE));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_within_the_deadline_is_retried() {
        let mut s = Script::new([Step::Fail, Step::Fail, Step::Lead, Step::Fail, Step::Hang]);
        // Renewed at 6 s; the hang starts at 10 s and is cut at 6 + 10 s.
        assert_eq!(leads_for(&mut s).await, Some(3 * RETRY + DEADLINE));
    }

    #[tokio::test(start_paused = true)]
    async fn a_taken_lease_steps_down_at_once() {
        let mut s = Script::new([Step::Lead, Step::Follow]);
        assert_eq!(leads_for(&mut s).await, Some(2 * RETRY));
    }
}
