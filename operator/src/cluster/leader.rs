//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas never reconcile
//! at once. Writes carry the Lease's resourceVersion: of two replicas racing for an expired lease,
//! one write wins and the other gets a conflict. A leader that cannot renew in time stops leading
//! (the process exits and restarts as a candidate) rather than risk two leaders.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::Api;

use super::report_api::is_status;

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    observed: std::sync::Mutex<Observed>,
}

/// Whether `me` may take (or keep) a lease held as `spec`, when its record last changed
/// `unchanged_for` ago on this replica's own monotonic clock. Expiry is judged by how long the
/// record has stood still here, not by comparing its renew time with the local wall clock, so a
/// replica whose clock runs ahead cannot take a healthy leader's lease.
pub fn may_take(spec: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> bool {
    let Some(spec) = spec else { return true };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == me {
        return true;
    }
    let duration = u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15);
    unchanged_for >= Duration::from_secs(duration)
}

/// The lease record as last seen (holder and renew time) and when it was first seen so.
type Observed = Option<((Option<String>, Option<String>), std::time::Instant)>;

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, lease_duration: Duration) -> Self {
        LeaderElector {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration,
            observed: std::sync::Mutex::new(None),
        }
    }

    /// One attempt to take or renew the lease; `Ok(true)` when we hold it afterwards.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.name).await?;
        let held_by_us = existing
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.identity.as_str());
        let spec_now = existing.as_ref().and_then(|l| l.spec.as_ref());
        let record = (
            spec_now.and_then(|s| s.holder_identity.clone()),
            spec_now
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0.to_string()),
        );
        let unchanged_for = match self.observed.lock() {
            Ok(mut seen) => match seen.as_ref() {
                Some((r, since)) if *r == record => since.elapsed(),
                _ => {
                    *seen = Some((record, std::time::Instant::now()));
                    Duration::ZERO
                }
            },
            Err(_) => Duration::ZERO,
        };
        if !may_take(spec_now, &self.identity, unchanged_for) {
            return Ok(false);
        }
        let previous = existing
            .as_ref()
            .and_then(|l| l.spec.clone())
            .unwrap_or_default();
        let spec = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs().max(1) as i32),
            acquire_time: if held_by_us {
                previous.acquire_time.clone()
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(
                previous.lease_transitions.unwrap_or(0)
                    + i32::from(!held_by_us && existing.is_some()),
            ),
            ..Default::default()
        };
        let result = match existing {
            Some(mut lease) => {
                lease.spec = Some(spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
        };
        match result {
            Ok(_) => Ok(true),
            // Another replica wrote first.
            Err(e) if is_status(&e, 409) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&self) {
        let retry = self.lease_duration / 3;
        loop {
            match self.try_acquire().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, lease = %self.name, "leader election"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Gives the lease up (on a clean shutdown), so a standby replica takes over at once rather
    /// than after the lease expires. Best effort: a failure leaves the lease to expire.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, lease = %self.name, "lease not released");
        } else {
            tracing::info!(lease = %self.name, "lease released");
        }
    }

    /// Renews until a renewal is impossible within the lease duration; returns when leadership
    /// is lost (the caller stops reconciling).
    pub async fn keep(&self) {
        let period = self.lease_duration / 3;
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(period).await;
            // A renewal hung on a dead connection must not keep us leading: bound it by what is
            // left of the lease.
            let left = self.lease_duration.saturating_sub(last_renewal.elapsed());
            let attempt = tokio::time::timeout(left, self.try_acquire()).await;
            let attempt = match attempt {
                Ok(result) => result,
                Err(_) => {
                    tracing::error!(lease = %self.name, "lease renewal timed out");
                    return;
                }
            };
            match attempt {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.name, "another replica took the lease");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "lease renewal failed");
                    // Stop before the lease can expire in others' eyes.
                    if last_renewal.elapsed() + period >= self.lease_duration {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    #[test]
    fn lease_rules() {
        let s = Duration::from_secs;
        assert!(may_take(None, "a", s(0)), "no lease yet");
        assert!(may_take(Some(&held("a")), "a", s(0)), "our own");
        assert!(
            !may_take(Some(&held("b")), "a", s(10)),
            "b's, renewed 10 s ago as seen here"
        );
        assert!(
            may_take(Some(&held("b")), "a", s(15)),
            "b's, unchanged for a lease duration"
        );
        assert!(may_take(Some(&held("")), "a", s(0)), "released");
    }
}
