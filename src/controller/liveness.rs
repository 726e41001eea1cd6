//! When the controller observed each host Lease's renewal, by its own clock: the input of liveness,
//! as Kubernetes' node-lifecycle controller keeps a probe timestamp per node. Comparing an agent's
//! `renewTime` with the controller's clock would turn every host NonResponsive after an API server
//! outage longer than a Lease (no renewal could be written), and back as soon as it ends.
//!
//! Fed by the Lease watch only; a cache, never a source of truth: on start every Lease counts as
//! found then ([`Observation::Found`]), and so it does again when the watch recovers from a failure
//! (the controller regained the API server). While the watch is failing, every Lease counts as
//! found now: the controller cannot see renewals, so it holds no host's silence against it.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::runtime::watcher;

use crate::plan::Observation;

/// Each Lease's last renew time and when the controller saw it change.
#[derive(Debug)]
pub struct LeaseClock {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    by_name: HashMap<String, Seen>,
    /// When the controller started or last regained the API server.
    since: Timestamp,
    /// The watch failed and has not delivered anything since.
    failing: bool,
    /// The first list has ended: a Lease that appears after it is a new renewal.
    listed: bool,
    /// The Leases a list in progress found (those it did not are gone).
    listing: HashSet<String>,
}

#[derive(Debug)]
struct Seen {
    renew_time: Option<Timestamp>,
    /// When the controller saw `renew_time` change; `None` when it was only found in a list.
    changed_at: Option<Timestamp>,
}

impl LeaseClock {
    /// A clock started at `now`.
    pub fn new(now: Timestamp) -> Self {
        Self {
            inner: Mutex::new(Inner {
                by_name: HashMap::new(),
                since: now,
                failing: false,
                listed: false,
                listing: HashSet::new(),
            }),
        }
    }

    /// Records one event of the Lease watch, seen at `now`.
    pub fn event(&self, event: Result<&watcher::Event<Lease>, &watcher::Error>, now: Timestamp) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Ok(event) = event else {
            inner.failing = true;
            return;
        };
        if std::mem::take(&mut inner.failing) {
            inner.since = now;
        }
        match event {
            watcher::Event::Init => inner.listing.clear(),
            watcher::Event::InitDone => {
                let Inner {
                    by_name, listing, ..
                } = &mut *inner;
                by_name.retain(|name, _| listing.contains(name));
                listing.clear();
                inner.listed = true;
            }
            watcher::Event::InitApply(lease) => {
                inner.listing.insert(lease.name_any());
                inner.saw(lease, now, false);
            }
            watcher::Event::Apply(lease) => {
                let listed = inner.listed;
                inner.saw(lease, now, listed);
            }
            watcher::Event::Delete(lease) => {
                inner.by_name.remove(&lease.name_any());
            }
        }
    }

    /// When the renewal at `renew_time` of the Lease `name` was observed, asked at `now`.
    pub fn observation(
        &self,
        name: &str,
        renew_time: Option<Timestamp>,
        now: Timestamp,
    ) -> Observation {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let since = if inner.failing { now } else { inner.since };
        match inner.by_name.get(name) {
            // The cache holds a newer Lease than the clock has seen (its event is on its way).
            None => Observation::Renewed(now),
            Some(seen) if seen.renew_time != renew_time => Observation::Renewed(now),
            Some(seen) => match seen.changed_at {
                Some(at) if at >= since => Observation::Renewed(at),
                _ => Observation::Found(since),
            },
        }
    }
}

impl Inner {
    /// Records `lease` as seen at `now`; `new_is_renewal`: a Lease not seen before was just
    /// created (not merely found by a list).
    fn saw(&mut self, lease: &Lease, now: Timestamp, new_is_renewal: bool) {
        let renew_time = renew_time(lease);
        match self.by_name.get_mut(&lease.name_any()) {
            Some(seen) if seen.renew_time == renew_time => {}
            Some(seen) => {
                seen.renew_time = renew_time;
                seen.changed_at = Some(now);
            }
            None => {
                self.by_name.insert(
                    lease.name_any(),
                    Seen {
                        renew_time,
                        changed_at: new_is_renewal.then_some(now),
                    },
                );
            }
        }
    }
}

/// The Lease's renew time (its acquire time when it was never renewed).
pub fn renew_time(lease: &Lease) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    spec.renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn at(s: i64) -> Timestamp {
        Timestamp::UNIX_EPOCH + SignedDuration::from_secs(1_700_000_000 + s)
    }

    fn lease(name: &str, renewed: i64) -> Lease {
        let mut l = Lease {
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(at(renewed))),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        l.metadata.name = Some(name.to_owned());
        l
    }

    fn apply(clock: &LeaseClock, event: watcher::Event<Lease>, now: i64) {
        clock.event(Ok(&event), at(now));
    }

    #[test]
    fn leases_are_found_at_start_then_renewals_are_seen() {
        let clock = LeaseClock::new(at(0));
        apply(&clock, watcher::Event::Init, 0);
        apply(&clock, watcher::Event::InitApply(lease("h", -500)), 0);
        apply(&clock, watcher::Event::InitDone, 0);
        assert_eq!(
            clock.observation("h", Some(at(-500)), at(5)),
            Observation::Found(at(0))
        );
        apply(&clock, watcher::Event::Apply(lease("h", 9)), 12);
        assert_eq!(
            clock.observation("h", Some(at(9)), at(20)),
            Observation::Renewed(at(12))
        );
        // A Lease created after the first list is a renewal seen.
        apply(&clock, watcher::Event::Apply(lease("new", 30)), 31);
        assert_eq!(
            clock.observation("new", Some(at(30)), at(32)),
            Observation::Renewed(at(31))
        );
    }

    #[test]
    fn regaining_the_api_server_counts_as_finding_every_lease_again() {
        let clock = LeaseClock::new(at(0));
        apply(&clock, watcher::Event::InitDone, 0);
        apply(&clock, watcher::Event::Apply(lease("h", 9)), 10);
        clock.event(Err(&watcher::Error::NoResourceVersion), at(20));
        // While failing: found now, whatever the age of the last renewal seen.
        assert_eq!(
            clock.observation("h", Some(at(9)), at(300)),
            Observation::Found(at(300))
        );
        // The relist finds the Lease unchanged (agents have not renewed yet): found at the regain.
        apply(&clock, watcher::Event::Init, 400);
        apply(&clock, watcher::Event::InitApply(lease("h", 9)), 400);
        assert_eq!(
            clock.observation("h", Some(at(9)), at(410)),
            Observation::Found(at(400))
        );
        apply(&clock, watcher::Event::Apply(lease("h", 405)), 406);
        assert_eq!(
            clock.observation("h", Some(at(405)), at(410)),
            Observation::Renewed(at(406))
        );
    }
}
