//! `metav1.Condition` helpers shared by every kind: condition types, reasons, and a setter that keeps
//! `lastTransitionTime` when the status did not change (so a grace period measured from it survives).

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

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

    /// `True` when `b`, else `False`.
    pub fn from_bool(b: bool) -> Self {
        if b { Self::True } else { Self::False }
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
}

/// Sets (or replaces) the condition of `type_` in `conditions`.
///
/// `lastTransitionTime` moves to `now` only when the status changes, as the API conventions require;
/// reason, message and `observedGeneration` are always refreshed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Timestamp,
) {
    let message = message.into();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid timestamp")
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut c = Vec::new();
        set_condition(&mut c, "Ready", ConditionStatus::False, "A", "a", Some(1), at(10));
        set_condition(&mut c, "Ready", ConditionStatus::False, "B", "b", Some(2), at(20));
        assert_eq!(c[0].last_transition_time, Time(at(10)));
        assert_eq!(c[0].reason, "B");
        assert_eq!(c[0].observed_generation, Some(2));
        set_condition(&mut c, "Ready", ConditionStatus::True, "C", "c", Some(2), at(30));
        assert_eq!(c[0].last_transition_time, Time(at(30)));
        assert_eq!(c.len(), 1);
    }
}
