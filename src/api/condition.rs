//! `metav1.Condition` helpers shared by every kind: condition types, reasons, a setter that keeps
//! `lastTransitionTime` when the status did not change (so a grace period measured from it survives)
//! and bounds the message, and the schema of a conditions list with `metav1.Condition`'s bounds.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use super::bounds;

/// The status of a condition, as the API spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// The controller cannot tell.
    Unknown,
}

impl ConditionStatus {
    /// The API string: `True`, `False` or `Unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// Condition types.
pub mod types {
    /// The desired state is reached and healthy (kstatus, Flux, Argo CD and `kubectl wait` read it).
    pub const READY: &str = "Ready";
    /// A transition is in progress (kstatus: InProgress).
    pub const RECONCILING: &str = "Reconciling";
    /// Progress needs a person; the message names the blocker (kstatus: Failed).
    pub const STALLED: &str = "Stalled";
    /// A deactivated domain is still reported by some host.
    pub const MOVING_TO_MAINTENANCE: &str = "MovingToMaintenance";
    /// Some Up host reports the domain with a problem; the grace period runs from its
    /// `lastTransitionTime`.
    pub const PROBLEM: &str = "Problem";
    /// The host's Lease is current.
    pub const RESPONSIVE: &str = "Responsive";
    /// The host holds the pool's current map.
    pub const IN_SYNC: &str = "InSync";
    /// The host can reach every active domain of its pool.
    pub const OPERATIONAL: &str = "Operational";
    /// The pool has a running pool manager (VDSM's SPM); the message names the host.
    pub const POOL_MANAGER: &str = "PoolManager";
}

/// Sets (or replaces) the condition of `type_` in `conditions`.
///
/// `lastTransitionTime` moves to `now` only when the status changes, as the API conventions require;
/// reason, message and `observedGeneration` are always refreshed. The message is cut to
/// [`bounds::CONDITION_MESSAGE_MAX`] characters, so no message makes the status invalid.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Timestamp,
) {
    let mut message = message.into();
    if let std::borrow::Cow::Owned(cut) = bounds::cut(&message, bounds::CONDITION_MESSAGE_MAX) {
        message = cut;
    }
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if existing.status != status.as_str() {
            existing.last_transition_time = Time(now);
            existing.status = status.as_str().to_owned();
        }
        existing.reason = reason.to_owned();
        existing.message = message;
        existing.observed_generation = observed_generation;
        return;
    }
    conditions.push(Condition {
        type_: type_.to_owned(),
        status: status.as_str().to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation,
        last_transition_time: Time(now),
    });
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// The schema of a `conditions` list: `metav1.Condition` with the bounds the built-in types
/// declare (`type` 316 characters, `reason` 1024 with its pattern, `message` 32768), which
/// k8s-openapi's schema leaves out; at most [`bounds::CONDITIONS_MAX`] entries, a map list keyed by
/// `type` so two field managers can own different conditions.
pub fn list_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut item = Condition::json_schema(generator);
    let limits = [
        (
            "type",
            serde_json::json!({"maxLength": bounds::CONDITION_TYPE_MAX, "pattern": bounds::CONDITION_TYPE_PATTERN}),
        ),
        (
            "reason",
            serde_json::json!({
                "minLength": 1,
                "maxLength": bounds::CONDITION_REASON_MAX,
                "pattern": bounds::CONDITION_REASON_PATTERN,
            }),
        ),
        (
            "message",
            serde_json::json!({"maxLength": bounds::CONDITION_MESSAGE_MAX}),
        ),
        (
            "status",
            serde_json::json!({"enum": ["True", "False", "Unknown"]}),
        ),
        ("observedGeneration", serde_json::json!({"minimum": 0})),
    ];
    if let Some(properties) = item
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        for (field, limit) in limits {
            if let (Some(serde_json::Value::Object(schema)), serde_json::Value::Object(limit)) =
                (properties.get_mut(field), limit)
            {
                schema.extend(limit);
            }
        }
    }
    json_schema!({
        "type": "array",
        "maxItems": bounds::CONDITIONS_MAX,
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid timestamp")
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            "Ready",
            ConditionStatus::False,
            "A",
            "a",
            Some(1),
            at(10),
        );
        set_condition(
            &mut c,
            "Ready",
            ConditionStatus::False,
            "B",
            "b",
            Some(2),
            at(20),
        );
        assert_eq!(c[0].last_transition_time, Time(at(10)));
        assert_eq!(c[0].reason, "B");
        assert_eq!(c[0].observed_generation, Some(2));
        set_condition(
            &mut c,
            "Ready",
            ConditionStatus::True,
            "C",
            "c",
            Some(2),
            at(30),
        );
        assert_eq!(c[0].last_transition_time, Time(at(30)));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_huge_message_is_cut_to_the_schema_bound() {
        let mut c = Vec::new();
        let huge = "é".repeat(bounds::CONDITION_MESSAGE_MAX * 2);
        set_condition(
            &mut c,
            "Ready",
            ConditionStatus::False,
            "A",
            huge,
            None,
            at(1),
        );
        assert_eq!(c[0].message.chars().count(), bounds::CONDITION_MESSAGE_MAX);
        assert!(c[0].message.ends_with(bounds::CUT_MARKER));
    }
}

/// Condition and event reasons (CamelCase, as the API conventions require). Stable: tools match on them.
pub mod reasons {
    // Pool.
    /// Every member host holds the current map.
    pub const IN_SYNC: &str = "InSync";
    /// The map or master changed, or hosts are catching up; the rollout is in progress.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// Domains are changing phase (activating, moving to maintenance, detaching).
    pub const DOMAINS_TRANSITIONING: &str = "DomainsTransitioning";
    /// Some host failed to take the current map.
    pub const SYNC_FAILING: &str = "SyncFailing";
    /// The pool has no hosts.
    pub const NO_HOSTS: &str = "NoHosts";
    /// The pool has no active data domain: no master, hosts disconnected.
    pub const NO_ACTIVE_DATA_DOMAIN: &str = "NoActiveDataDomain";
    /// `spec.compatibilityVersion` is not `major.minor`.
    pub const INVALID_COMPATIBILITY_VERSION: &str = "InvalidCompatibilityVersion";
    /// More hosts name the pool than `spec.sync.maxHosts` allows.
    pub const TOO_MANY_HOSTS: &str = "TooManyHosts";
    /// `spec.sync.maxHosts` is below the id of a host that holds it.
    pub const MAX_HOSTS_TOO_LOW: &str = "MaxHostsTooLow";
    /// `spec.uuid` differs from the uuid the pool's hosts were given.
    pub const UUID_CHANGED: &str = "UuidChanged";
    /// More than 100 domains name the pool (VDSM's limit).
    pub const TOO_MANY_DOMAINS: &str = "TooManyDomains";
    /// Two StorageDomains have the same uuid.
    pub const DUPLICATE_DOMAIN_UUID: &str = "DuplicateDomainUuid";
    /// The pool is being deleted but domains are still attached.
    pub const DOMAINS_ATTACHED: &str = "DomainsAttached";
    /// The pool is being deleted: hosts are being disconnected.
    pub const DELETING: &str = "Deleting";
    /// A transition is in progress and nothing blocks it (`Stalled=False` while `Reconciling=True`).
    pub const PROGRESSING: &str = "Progressing";
    /// Nothing is changing and nothing waits for a person (`Reconciling=False`, and `Stalled=False`
    /// when no transition is in progress).
    pub const IDLE: &str = "Idle";
    /// The master domain changed (event).
    pub const MASTER_CHANGED: &str = "MasterChanged";
    /// The pool manager runs on the recorded host (it reports the role).
    pub const MANAGER_RUNNING: &str = "ManagerRunning";
    /// The pool manager is being started on the recorded host (`spmStart`).
    pub const MANAGER_STARTING: &str = "ManagerStarting";
    /// The pool manager is being stopped on a host that must give the role up (`spmStop`).
    pub const MANAGER_STOPPING: &str = "ManagerStopping";
    /// No host can read the master domain: the pool's metadata is being rebuilt on a new master
    /// (`reconstructMaster`) before a pool manager starts again.
    pub const RECONSTRUCTING_MASTER: &str = "ReconstructingMaster";
    /// No responsive, in-sync Up host can take the pool manager's role.
    pub const NO_MANAGER_CANDIDATE: &str = "NoManagerCandidate";
    /// A new pool manager was chosen (event).
    pub const MANAGER_CHOSEN: &str = "PoolManagerChosen";
    /// The pool was created on storage (`StoragePool.create` accepted).
    pub const POOL_CREATED: &str = "PoolCreatedOnStorage";
    /// A domain was attached to the pool on storage (`StorageDomain.attach` accepted).
    pub const DOMAIN_ATTACHED: &str = "DomainAttached";
    /// A domain was detached from the pool on storage (`StorageDomain.detach` accepted).
    pub const DOMAIN_DETACHED: &str = "DomainDetached";
    /// The chosen host took the pool manager's role (event).
    pub const MANAGER_STARTED: &str = "PoolManagerStarted";

    // Domain.
    /// The domain is active and every Up host sees it.
    pub const ACTIVE: &str = "Active";
    /// Waiting for every Up host to report the domain valid and actual.
    pub const ACTIVATING: &str = "Activating";
    /// Some connected host still reports the deactivated domain.
    pub const HOSTS_STILL_REPORTING: &str = "HostsStillReporting";
    /// No host reports the deactivated domain (`MovingToMaintenance=False` once it is in
    /// maintenance or detaching).
    pub const NO_HOST_REPORTS: &str = "NoHostReports";
    /// The domain is to be active: maintenance was not asked for (`MovingToMaintenance=False` on an
    /// active, activating, inactive or unknown domain).
    pub const MAINTENANCE_NOT_REQUESTED: &str = "MaintenanceNotRequested";
    /// In maintenance, as requested.
    pub const MAINTENANCE: &str = "Maintenance";
    /// Some connected host still holds the detached domain in its map.
    pub const DETACHING: &str = "Detaching";
    /// Not in any pool.
    pub const UNATTACHED: &str = "Unattached";
    /// Every Up host reported the domain failing for longer than the grace period.
    pub const DOMAIN_INACTIVE: &str = "DomainInactive";
    /// No Up host of the pool can report the domain.
    pub const NO_REPORTING_HOSTS: &str = "NoReportingHosts";
    /// Some Up host reports a problem with the domain; the grace period runs.
    pub const DOMAIN_PROBLEM: &str = "DomainProblem";
    /// No Up host reports a problem.
    pub const NO_PROBLEM: &str = "NoProblem";
    /// The transition waits for hosts that do not respond; only a person can release them.
    pub const HOSTS_NOT_RESPONDING: &str = "HostsNotResponding";
    /// `spec.pool` names a StoragePool that does not exist.
    pub const POOL_NOT_FOUND: &str = "PoolNotFound";
    /// The pool's last active data domain cannot leave while other domains are active.
    pub const LAST_DATA_DOMAIN: &str = "LastDataDomain";
    /// The master waits for a successor to be active on the pool manager's host before it
    /// leaves (a few seconds: one map rollout).
    pub const MASTER_HANDOVER: &str = "MasterHandover";
    /// The domain waits for the pool manager to attach it to the pool on storage.
    pub const ATTACHING: &str = "Attaching";

    // Host.
    /// The Lease is current.
    pub const LEASE_CURRENT: &str = "LeaseCurrent";
    /// The Lease expired.
    pub const LEASE_EXPIRED: &str = "LeaseExpired";
    /// The host has no Lease yet.
    pub const NO_LEASE: &str = "NoLease";
    /// The host is being given the current map.
    pub const CONNECTING: &str = "Connecting";
    /// `StoragePool.connect` failed.
    pub const CONNECT_FAILED: &str = "ConnectFailed";
    /// `StoragePool.disconnect` failed (event).
    pub const DISCONNECT_FAILED: &str = "DisconnectFailed";
    /// The host did not report the map within the rollout deadline.
    pub const NOT_CONFIRMED: &str = "NotConfirmed";
    /// The host's report does not parse.
    pub const REPORT_UNPARSABLE: &str = "ReportUnparsable";
    /// The host cannot be called: neither `spec.endpoint` nor the agent's `status.endpoint` is set.
    pub const NO_ENDPOINT: &str = "NoEndpoint";
    /// The host cannot reach a domain other hosts reach (oVirt's STORAGE_DOMAIN_UNREACHABLE).
    pub const STORAGE_DOMAIN_UNREACHABLE: &str = "StorageDomainUnreachable";
    /// The host reaches every active domain.
    pub const DOMAINS_REACHABLE: &str = "DomainsReachable";
    /// The host is in maintenance, as requested.
    pub const HOST_MAINTENANCE: &str = "HostMaintenance";
    /// The host is in maintenance but still reports domains.
    pub const PREPARING_FOR_MAINTENANCE: &str = "PreparingForMaintenance";
    /// The host's Lease expired (event).
    pub const HOST_NOT_RESPONDING: &str = "HostNotResponding";
    /// The host is Up.
    pub const HOST_UP: &str = "HostUp";
    /// The host's domain reports are clean again (event).
    pub const HOST_RECOVERED: &str = "HostRecovered";
}
