//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Only the holder runs the controllers. A replica that cannot renew before
//! the lease expires must stop reconciling at once, since another replica may
//! already have taken over; the caller exits the process (the Deployment
//! restarts it as a candidate), as controller-runtime does. Updates use the
//! Lease's resourceVersion, so two candidates can never both win a round.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::Client;
use std::time::Duration;
use tokio::sync::watch;

/// Lease timing.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews, and candidates retry.
    pub retry_period: Duration,
}

/// What a candidate saw in one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    /// We hold the lease until at least the given instant.
    Leading,
    /// Someone else holds a valid lease.
    Following,
}

/// Decides from a Lease's spec whether `me` may take or keep it at `now`.
pub fn may_acquire(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(h) if h == me => true,
        Some(_) => {
            let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
            let dur = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15) as i64);
            match renewed {
                Some(r) => now > r + dur,
                None => true,
            }
        }
    }
}

pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

impl Elector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self { api: Api::namespaced(client, &cfg.namespace), cfg }
    }

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
    pub async fn round(&self) -> Result<Round, kube::Error> {
        let now = Timestamp::now();
        match self.api.get_opt(&self.cfg.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.cfg.name.clone()), ..Default::default() },
                    spec: Some(self.spec(now, None, 0)),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(Round::Leading),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Round::Following),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let current = lease.spec.as_ref();
                if !may_acquire(current, &self.cfg.identity, now) {
                    return Ok(Round::Following);
                }
                let ours = current.and_then(|s| s.holder_identity.as_deref()) == Some(self.cfg.identity.as_str());
                let transitions = current.and_then(|s| s.lease_transitions).unwrap_or(0);
                let (acquire, transitions) = if ours {
                    (current.and_then(|s| s.acquire_time.clone()), transitions)
                } else {
                    (None, transitions + 1)
                };
                lease.spec = Some(self.spec(now, acquire, transitions));
                // replace() carries metadata.resourceVersion: a concurrent
                // writer makes this a 409 conflict and we lose the round.
                match self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await {
                    Ok(_) => Ok(Round::Leading),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Round::Following),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Campaigns until this replica leads, then keeps renewing in the
    /// background. The returned receiver turns `false` (and the task ends)
    /// when leadership is lost; it is never regained by the same task.
    pub async fn acquire(self) -> watch::Receiver<bool> {
        loop {
            match self.round().await {
                Ok(Round::Leading) => break,
                Ok(Round::Following) => {}
                Err(e) => tracing::warn!(error = %e, "leader election round failed"),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
        tracing::info!(identity = %self.cfg.identity, lease = %self.cfg.name, "acquired leadership");
        let (tx, rx) = watch::channel(true);
        tokio::spawn(async move {
            let mut last_renew = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(self.cfg.retry_period).await;
                match self.round().await {
                    Ok(Round::Leading) => last_renew = tokio::time::Instant::now(),
                    Ok(Round::Following) => {
                        tracing::error!("leader lease was taken by another replica");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing leader lease failed");
                        // Renewal is retried until the lease would expire;
                        // past that another replica may lead.
                        if last_renew.elapsed() >= self.cfg.lease_duration {
                            tracing::error!("leader lease expired without renewal");
                            break;
                        }
                    }
                }
            }
            let _ = tx.send(false);
        });
        rx
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64, dur: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            lease_duration_seconds: Some(dur),
            ..Default::default()
        }
    }

    #[test]
    fn free_or_own_lease_is_acquirable() {
        let now = Timestamp::from_second(1000).unwrap();
        assert!(may_acquire(None, "a", now));
        assert!(may_acquire(Some(&LeaseSpec::default()), "a", now));
        assert!(may_acquire(Some(&spec("a", 999, 15)), "a", now));
    }

    #[test]
    fn valid_foreign_lease_blocks_until_expiry() {
        let s = spec("b", 1000, 15);
        assert!(!may_acquire(Some(&s), "a", Timestamp::from_second(1010).unwrap()));
        assert!(!may_acquire(Some(&s), "a", Timestamp::from_second(1015).unwrap()));
        assert!(may_acquire(Some(&s), "a", Timestamp::from_second(1016).unwrap()));
    }
}
