//! Reports to Kubernetes: registers each Host (creates it if missing, with an empty spec; never
//! writes a Host's spec, which is the operators') and writes `status.endpoint` (where the host
//! serves RPC) and `status.report` by server-side apply with field manager `poolkeeper-agent`,
//! only when they differ from what was last written. An agent writes nothing but its own Host's
//! status and its own Lease: `deploy/admission.yaml` holds it to that.
//!
//! One reporter serves every host of the process: it is woken with a host's index when that host
//! may have changed, writes with bounded concurrency, and retries failures with backoff while the
//! hosts keep serving calls from memory.
//!
//! Like the kubelet for its Node, it also watches its own Hosts: a Host deleted (and perhaps
//! re-created, or restored from a backup) or whose report differs from the last one written is
//! checked with a read and registered and reported again in full. Without that, a deleted Host
//! would stay without a report while the host still holds the pool and its host id.
//!
//! The same watch makes registration cheap: its first list says which Hosts exist, with which
//! published endpoint and report, so a starting agent creates the missing ones and rewrites only the reports
//! that differ, without a read per host (2,000 simulated hosts: one list instead of 2,000 reads).
//! Writes wait for that list for at most [`FIRST_LIST_WAIT`]; after that a host without news from
//! the watch is read before it is registered.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::host::HostAgent;
use crate::api::{Host, HostReport, HostSpec, HostStatus};

/// The field manager of everything the agent writes.
pub const FIELD_MANAGER: &str = "poolkeeper-agent";

/// Concurrent report writes in flight (one per host at most). Measured with 2,000 simulated hosts
/// registering against the test API server: 16 took 16.9 s, 64 took 9.9–10.8 s, 128 no better
/// (the API server is the limit then).
pub const MAX_IN_FLIGHT: usize = 64;
/// First retry delay after a failed write; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the reporter remembers per host.
#[derive(Default)]
struct Slot {
    last_written: Option<HostReport>,
    registered: bool,
    failures: u32,
    in_flight: bool,
    again: bool,
    backing_off: bool,
    /// The watch saw the Host gone or with another report while a write was in flight.
    stale: bool,
    /// What the watch last said about the Host (`None`: nothing yet).
    known: Option<Known>,
}

/// The Host as the watch on the process's own Hosts last showed it.
#[derive(Clone, Debug)]
enum Known {
    /// Not there.
    Absent,
    /// There, with this published endpoint and report (boxed: a report is large, `Absent` is
    /// empty).
    Present {
        endpoint: Option<String>,
        report: Option<Box<HostReport>>,
    },
}

impl Slot {
    /// Forgets what was written, so the next write reads the Host first and registers and
    /// reports again as needed. Returns whether the host is to be queued now.
    fn forget_written(&mut self) -> bool {
        self.last_written = None;
        self.registered = false;
        if self.in_flight {
            self.stale = true;
        }
        !self.in_flight && !self.backing_off
    }
}

/// What the watch on the process's own Hosts says about one of them.
enum Seen {
    /// The Host is gone (deleted, or missing from a relist).
    Gone,
    /// The Host exists with this published endpoint and carries this report (boxed, as in
    /// [`Known`]).
    Report {
        endpoint: Option<String>,
        report: Option<Box<HostReport>>,
    },
}

/// How long a starting reporter waits for the first list of its Hosts before it writes anyway
/// (reading each Host first).
pub const FIRST_LIST_WAIT: Duration = Duration::from_secs(5);

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Registering the Host failed.
    #[error("cannot register host")]
    Register(#[source] kube::Error),
    /// Applying `status.endpoint` and `status.report` failed.
    #[error("cannot apply status.report")]
    Apply(#[source] kube::Error),
}

impl ReportError {
    /// A fixed string for metric labels and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Register(_) => "HostRegister",
            Self::Apply(_) => "ReportApply",
        }
    }

    fn is_not_found(&self) -> bool {
        matches!(self, Self::Apply(kube::Error::Api(s)) if s.is_not_found())
    }
}

/// Writes reports for `hosts` until `shutdown` turns true. `changes` yields host indexes.
pub async fn run_reporter(
    client: kube::Client,
    hosts: Arc<[Arc<HostAgent>]>,
    mut changes: mpsc::UnboundedReceiver<usize>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Host> = Api::all(client);
    let by_name: HashMap<&str, usize> = hosts.iter().map(|h| (h.name(), h.index())).collect();
    let mut own = own_hosts(&api, &hosts);
    let mut listed: HashSet<usize> = HashSet::new();
    let mut slots: Vec<Slot> = hosts.iter().map(|_| Slot::default()).collect();
    let mut ready: VecDeque<usize> = VecDeque::new();
    let mut retries: BTreeSet<(Instant, usize)> = BTreeSet::new();
    let mut in_flight = FuturesUnordered::new();
    // Until the first list of the Hosts arrives (or this passes), nothing is written.
    let mut first_list = Some(Instant::now() + FIRST_LIST_WAIT);
    loop {
        while first_list.is_none()
            && in_flight.len() < MAX_IN_FLIGHT
            && let Some(i) = ready.pop_front()
        {
            let (Some(host), Some(slot)) = (hosts.get(i), slots.get_mut(i)) else {
                continue;
            };
            if slot.in_flight {
                slot.again = true;
                continue;
            }
            host.take_dirty();
            if host.is_blackholed() || host.is_report_frozen() {
                // Cut off or frozen: nothing reaches the API server; undoing either marks it
                // dirty again.
                continue;
            }
            let report = host.report();
            if slot.last_written.as_ref() == Some(&report) {
                continue;
            }
            slot.in_flight = true;
            let register = (!slot.registered).then(|| slot.known.clone());
            in_flight.push(write(api.clone(), Arc::clone(host), report, register));
        }
        let next_retry = retries.first().map(|(at, _)| *at);
        tokio::select! {
            Some(i) = changes.recv() => {
                if let Some(slot) = slots.get_mut(i) {
                    if slot.in_flight {
                        slot.again = true;
                    } else if !slot.backing_off {
                        ready.push_back(i);
                    }
                }
            }
            Some((i, report, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                let Some(slot) = slots.get_mut(i) else { continue };
                slot.in_flight = false;
                match outcome {
                    Ok(()) => {
                        if slot.failures > 0 {
                            tracing::info!(host = %host_name(&hosts, i), "report written again after failures");
                        }
                        slot.failures = 0;
                        slot.registered = true;
                        slot.last_written = Some(report);
                        if std::mem::take(&mut slot.stale) {
                            slot.forget_written();
                            ready.push_back(i);
                        } else if std::mem::take(&mut slot.again) {
                            ready.push_back(i);
                        }
                    }
                    Err(e) => {
                        if e.is_not_found() || std::mem::take(&mut slot.stale) {
                            slot.registered = false;
                        }
                        slot.failures += 1;
                        slot.again = false;
                        slot.backing_off = true;
                        let delay = backoff(slot.failures);
                        tracing::warn!(host = %host_name(&hosts, i), error = %e, category = e.category(), failures = slot.failures, retry_in = ?delay, "report write failed");
                        retries.insert((Instant::now() + delay, i));
                    }
                }
            }
            Some(event) = own.next() => {
                if matches!(event, Ok(watcher::Event::InitDone)) {
                    first_list = None;
                }
                for (i, seen) in seen(event, &by_name, &mut listed, hosts.len()) {
                    let Some(slot) = slots.get_mut(i) else { continue };
                    let ours = hosts.get(i).map(|h| h.endpoint());
                    let differs = match &seen {
                        Seen::Gone => true,
                        Seen::Report { endpoint, report } => {
                            report.as_deref() != slot.last_written.as_ref()
                                || endpoint.as_deref() != ours
                        }
                    };
                    slot.known = Some(match &seen {
                        Seen::Gone => Known::Absent,
                        Seen::Report { endpoint, report } => Known::Present {
                            endpoint: endpoint.clone(),
                            report: report.clone(),
                        },
                    });
                    // Nothing written yet: a write is queued or backing off anyway.
                    if differs && slot.last_written.is_some() {
                        if matches!(seen, Seen::Gone) {
                            tracing::info!(host = %host_name(&hosts, i), "host object gone; registering and reporting again");
                        }
                        if slot.forget_written() {
                            ready.push_back(i);
                        }
                    }
                }
            }
            _ = sleep_until(first_list), if first_list.is_some() => {
                tracing::debug!("no list of the hosts yet; writing, reading each host first");
                first_list = None;
            }
            _ = sleep_until(next_retry), if next_retry.is_some() => {
                let now = Instant::now();
                while let Some(&(at, i)) = retries.first() {
                    if at > now {
                        break;
                    }
                    retries.pop_first();
                    if let Some(slot) = slots.get_mut(i) {
                        slot.backing_off = false;
                    }
                    ready.push_back(i);
                }
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// A watch on the Hosts of this process: by name for a single host, else every Host (the
/// simulator's hosts share no label an operator could not remove).
fn own_hosts(
    api: &Api<Host>,
    hosts: &[Arc<HostAgent>],
) -> futures::stream::BoxStream<'static, Result<watcher::Event<Host>, watcher::Error>> {
    let config = match hosts {
        [one] => watcher::Config::default().fields(&format!("metadata.name={}", one.name())),
        _ => watcher::Config::default(),
    };
    watcher(api.clone(), config).default_backoff().boxed()
}

/// What one watch event says about the process's own hosts, by index. A relist reports the hosts
/// it did not list as gone.
fn seen(
    event: Result<watcher::Event<Host>, watcher::Error>,
    by_name: &HashMap<&str, usize>,
    listed: &mut HashSet<usize>,
    count: usize,
) -> Vec<(usize, Seen)> {
    let report = |h: Host| {
        let status = h.status.unwrap_or_default();
        Seen::Report {
            endpoint: status.endpoint,
            report: status.report.map(Box::new),
        }
    };
    match event {
        Ok(watcher::Event::Init) => {
            listed.clear();
            Vec::new()
        }
        Ok(watcher::Event::InitApply(h)) => match by_name.get(h.name_any().as_str()) {
            Some(&i) => {
                listed.insert(i);
                vec![(i, report(h))]
            }
            None => Vec::new(),
        },
        Ok(watcher::Event::InitDone) => (0..count)
            .filter(|i| !listed.contains(i))
            .map(|i| (i, Seen::Gone))
            .collect(),
        Ok(watcher::Event::Apply(h)) => by_name
            .get(h.name_any().as_str())
            .map(|&i| (i, report(h)))
            .into_iter()
            .collect(),
        Ok(watcher::Event::Delete(h)) => by_name
            .get(h.name_any().as_str())
            .map(|&i| (i, Seen::Gone))
            .into_iter()
            .collect(),
        Err(e) => {
            // The watcher retries with backoff; writes report their own failures.
            tracing::debug!(error = %e, "watch on own hosts failed; retrying");
            Vec::new()
        }
    }
}

fn host_name(hosts: &[Arc<HostAgent>], i: usize) -> &str {
    hosts.get(i).map_or("", |h| h.name())
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Exponential backoff with ±20 % jitter, so many hosts failing together do not retry together.
fn backoff(failures: u32) -> Duration {
    let exp = FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(10));
    exp.min(MAX_BACKOFF).mul_f64(rand::random_range(0.8..1.2))
}

/// Writes the endpoint and `report`; with `register`, registers the Host first from what the
/// watch last said about it (`Some(None)`: nothing, so the Host is read first), and writes
/// nothing when the Host already carries both.
async fn write(
    api: Api<Host>,
    host: Arc<HostAgent>,
    report: HostReport,
    register: Option<Option<Known>>,
) -> (usize, HostReport, Result<(), ReportError>) {
    let result = async {
        if let Some(known) = register {
            let live = match known {
                Some(Known::Absent) => match create(&api, &host).await {
                    Ok(()) => HostStatus::default(),
                    // Created meanwhile by someone else: read it as if nothing were known.
                    Err(kube::Error::Api(s)) if s.is_already_exists() => {
                        ensure_registered(&api, &host)
                            .await
                            .map_err(ReportError::Register)?
                    }
                    Err(e) => return Err(ReportError::Register(e)),
                },
                Some(Known::Present { endpoint, report }) => HostStatus {
                    endpoint,
                    report: report.map(|r| *r),
                    ..HostStatus::default()
                },
                None => ensure_registered(&api, &host)
                    .await
                    .map_err(ReportError::Register)?,
            };
            if live.endpoint.as_deref() == Some(host.endpoint())
                && live.report.as_ref() == Some(&report)
            {
                return Ok(());
            }
        }
        apply_report(&api, host.name(), host.endpoint(), &report)
            .await
            .map_err(ReportError::Apply)
    }
    .await;
    (host.index(), report, result)
}

/// Creates the Host of `host` with an empty spec (no pool, not in maintenance, no endpoint
/// override): the spec is the operators'; the endpoint goes in the status with the report.
async fn create(api: &Api<Host>, host: &HostAgent) -> Result<(), kube::Error> {
    let object = Host::new(
        host.name(),
        HostSpec {
            pool: None,
            endpoint: None,
            maintenance: false,
        },
    );
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    api.create(&pp, &object).await?;
    tracing::info!(host = %host.name(), "registered host");
    Ok(())
}

/// Creates the Host when missing (never changing an existing one's spec). Returns the status the
/// existing Host carries (the default when it was created or has none).
///
/// # Errors
/// The API server's error.
pub async fn ensure_registered(
    api: &Api<Host>,
    host: &HostAgent,
) -> Result<HostStatus, kube::Error> {
    match api.get_opt(host.name()).await? {
        Some(existing) => Ok(existing.status.unwrap_or_default()),
        None => match create(api, host).await {
            Ok(()) => Ok(HostStatus::default()),
            Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(HostStatus::default()),
            Err(e) => Err(e),
        },
    }
}

/// Applies `status.endpoint` and `status.report` (server-side apply to the status subresource,
/// forced, field manager [`FIELD_MANAGER`]).
///
/// # Errors
/// The API server's error (404 when the Host does not exist).
pub async fn apply_report(
    api: &Api<Host>,
    name: &str,
    endpoint: &str,
    report: &HostReport,
) -> Result<(), kube::Error> {
    let body = json!({
        "apiVersion": format!("{}/{}", crate::api::GROUP, crate::api::VERSION),
        "kind": "Host",
        "status": {"endpoint": endpoint, "report": report},
    });
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(name, &pp, &Patch::Apply(&body)).await?;
    tracing::debug!(host = %name, "applied report");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= Duration::from_millis(600));
        assert!(backoff(3) >= Duration::from_millis(1600));
        assert!(backoff(40) <= MAX_BACKOFF.mul_f64(1.2));
    }
}
