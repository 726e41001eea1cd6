//! Condition builders: a condition is built in one line from a typed reason constant
//! ([`crate::api::condition::reasons`]) and set with the object's generation and `now`; the
//! `Ready`/`Reconciling`/`Stalled` triple every kind carries is set together by [`Progress`], so
//! each kind reads the same way to kstatus, Flux, Argo CD and `kubectl wait`. Pure; nothing here
//! reads a condition back or decides anything from a message.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::condition::{ConditionStatus, reasons, set_condition, types};

/// Why a condition says what it says: a reason constant and a message for people.
#[derive(Clone, Debug)]
pub(super) struct Why {
    pub reason: &'static str,
    pub message: String,
}

impl Why {
    /// Why, from a reason constant and a message.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// One condition's status and why, ready to be set under a type.
#[derive(Clone, Debug)]
pub(super) struct Cond {
    pub status: ConditionStatus,
    pub why: Why,
}

impl Cond {
    /// The condition says `status` for `why`.
    pub fn of(status: ConditionStatus, why: Why) -> Self {
        Self { status, why }
    }

    /// The condition says `status` for `reason`, with `message` for people.
    pub fn new(status: ConditionStatus, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            why: Why::new(reason, message),
        }
    }

    /// Sets it as the condition of `type_` (keeping `lastTransitionTime` when the status holds).
    pub fn set(self, conditions: &mut Vec<Condition>, type_: &str, g: Option<i64>, now: Timestamp) {
        set_condition(
            conditions,
            type_,
            self.status,
            self.why.reason,
            self.why.message,
            g,
            now,
        );
    }
}

/// What an object's `Ready`, `Reconciling` and `Stalled` conditions say. `Reconciling` and
/// `Stalled` are either true for a reason, or false with a reason that says the state the object
/// is in, with no message: `Reconciling=False` is `Idle`; `Stalled=False` is `Progressing` while a
/// transition runs and `Idle` when none does (never `Progressing` on an object where nothing
/// moves). Both may be true at once (a transition that waits for a person).
pub(super) struct Progress {
    /// `Ready`.
    pub ready: Cond,
    /// Why a transition is in progress (`Reconciling=True`), if one is.
    pub reconciling: Option<Why>,
    /// Why progress needs a person (`Stalled=True`), if it does.
    pub stalled: Option<Why>,
}

impl Progress {
    /// Waiting for a person: `Ready=False` and `Stalled=True` for the same reason, nothing in
    /// progress.
    pub fn stalled(why: Why) -> Self {
        Self {
            ready: Cond::of(ConditionStatus::False, why.clone()),
            reconciling: None,
            stalled: Some(why),
        }
    }

    /// Sets `Ready`, `Reconciling` and `Stalled`, in that order.
    pub fn set(self, conditions: &mut Vec<Condition>, g: Option<i64>, now: Timestamp) {
        use ConditionStatus::{False, True};
        self.ready.set(conditions, types::READY, g, now);
        let in_progress = self.reconciling.is_some();
        let reconciling = match self.reconciling {
            Some(why) => Cond::of(True, why),
            None => Cond::new(False, reasons::IDLE, ""),
        };
        reconciling.set(conditions, types::RECONCILING, g, now);
        let stalled = match self.stalled {
            Some(why) => Cond::of(True, why),
            None if in_progress => Cond::new(False, reasons::PROGRESSING, ""),
            None => Cond::new(False, reasons::IDLE, ""),
        };
        stalled.set(conditions, types::STALLED, g, now);
    }
}
