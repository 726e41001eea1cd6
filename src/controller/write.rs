//! Every API write the controller makes goes through here: statuses (server-side apply as
//! `poolkeeper-controller`, compare-and-swap on a resourceVersion when one is given), finalizers
//! (a merge patch with a resourceVersion precondition, so finalizers others added are never lost)
//! and events (events.k8s.io, folded into a series only when identical: [`super::events`]). Each write has a timeout and is counted by kind, operation and
//! outcome in `poolkeeper_api_writes_total`. This module decides nothing: what to write comes from
//! the plan.

use std::borrow::Cow;
use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType as KubeEventType},
};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::warn;

use super::{FIELD_MANAGER, events::Recorder};
use crate::{
    metrics::{ApiWriteLabels, Metrics, WriteLabels},
    plan::{EventType, PlannedEvent},
};

/// How long one write may take before it counts as failed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a write did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The API call failed (refused, or the server could not be reached).
    #[error("the API call failed")]
    Api(#[source] kube::Error),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl WriteError {
    /// The object changed since it was read (409): plan again.
    pub fn is_conflict(&self) -> bool {
        self.status_code() == Some(409)
    }

    /// The object is gone (404): nothing left to write.
    pub fn is_not_found(&self) -> bool {
        self.status_code() == Some(404)
    }

    fn status_code(&self) -> Option<u16> {
        match self {
            Self::Api(kube::Error::Api(status)) => Some(status.code),
            _ => None,
        }
    }

    /// A fixed string for metric labels (the `outcome` of `poolkeeper_api_writes_total`).
    pub fn category(&self) -> &'static str {
        match self {
            _ if self.is_conflict() => "conflict",
            _ if self.is_not_found() => "not_found",
            Self::Timeout(_) => "timeout",
            Self::Api(_) => "error",
        }
    }
}

/// The one writer.
#[derive(Clone)]
pub struct Writer {
    client: Client,
    recorder: Recorder,
    metrics: Metrics,
    timeout: Duration,
}

impl Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// A writer over `client`, publishing events as `recorder`, counting into `metrics`.
    pub fn new(client: Client, recorder: Recorder, metrics: Metrics) -> Self {
        Self {
            client,
            recorder,
            metrics,
            timeout: WRITE_TIMEOUT,
        }
    }

    async fn timed<T>(
        &self,
        kind: &'static str,
        op: &'static str,
        write: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, WriteError> {
        let result = match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(WriteError::Api(e)),
            Err(_) => Err(WriteError::Timeout(self.timeout)),
        };
        let outcome = result.as_ref().map_or_else(WriteError::category, |_| "ok");
        self.metrics
            .api_writes
            .get_or_create(&ApiWriteLabels { kind, op, outcome })
            .inc();
        result
    }

    /// Server-side applies `status` (the controller's fields only) to the object `name` of kind
    /// `K`; with `version`, only if the object is still at that resourceVersion (a 409 otherwise).
    /// Returns the object's new resourceVersion.
    ///
    /// # Errors
    /// When the API server refuses the write or does not answer in time.
    pub async fn status<K>(
        &self,
        name: &str,
        status: &impl serde::Serialize,
        version: Option<&str>,
    ) -> Result<Option<String>, WriteError>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let kind = kind_of::<K>();
        let mut body = json!({
            "apiVersion": K::api_version(&()),
            "kind": kind,
            "status": status,
        });
        if let Some(version) = version {
            body["metadata"] = json!({"resourceVersion": version});
        }
        let api: Api<K> = Api::all(self.client.clone());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written = self
            .timed(
                kind,
                "status",
                api.patch_status(name, &params, &Patch::Apply(&body)),
            )
            .await?;
        self.metrics
            .status_writes
            .get_or_create(&WriteLabels { kind })
            .inc();
        super::crash::reached("status-written", kind);
        Ok(written.resource_version())
    }

    /// Sets the finalizers of the object `name` of kind `K` to `wanted`, only if it is still at
    /// resourceVersion `version` (finalizers others added meanwhile are never dropped: a 409
    /// makes the caller read again).
    ///
    /// # Errors
    /// When the API server refuses the write or does not answer in time.
    pub async fn finalizers<K>(
        &self,
        name: &str,
        wanted: &[String],
        version: Option<&str>,
    ) -> Result<(), WriteError>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let patch = json!({"metadata": {"finalizers": wanted, "resourceVersion": version}});
        let api: Api<K> = Api::all(self.client.clone());
        self.timed(
            kind_of::<K>(),
            "finalizers",
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await?;
        super::crash::reached("finalizers-written", kind_of::<K>());
        Ok(())
    }

    /// Publishes `event` about the object `regarding`. Events are best effort: a failure is
    /// logged and counted, never fatal.
    pub async fn event(&self, regarding: &ObjectReference, event: &PlannedEvent) {
        let ev = Event {
            type_: match event.type_ {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            },
            reason: event.reason.to_owned(),
            note: Some(truncate(&event.note, MAX_NOTE_BYTES).to_owned()),
            action: event.reason.to_owned(),
            secondary: None,
        };
        let kind = event.object.kind.as_str();
        if let Err(e) = self
            .timed(kind, "event", self.recorder.publish(&ev, regarding))
            .await
        {
            warn!(object = %event.object.name, reason = event.reason, error = %e, "publishing event failed");
            return;
        }
        super::crash::reached("event-published", kind);
    }
}

/// The kind's name, for metric labels: static for every derived kind.
fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    static STATIC_TYPE: () = ();
    match K::kind(&STATIC_TYPE) {
        Cow::Borrowed(kind) => kind,
        Cow::Owned(_) => "Other",
    }
}

/// events.k8s.io limits `note` to 1 KiB.
const MAX_NOTE_BYTES: usize = 1024;

/// `s` cut to at most `max` bytes at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The reference events about `obj` carry.
pub fn object_ref<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    obj.object_ref(&())
}

/// The names of `obj`'s finalizers with `finalizer` added or removed (`None` when nothing changes).
pub fn with_finalizer<K: Resource>(obj: &K, finalizer: &str, present: bool) -> Option<Vec<String>> {
    let current = obj.finalizers();
    let has = current.iter().any(|f| f == finalizer);
    if has == present {
        return None;
    }
    let mut wanted = current.to_vec();
    if present {
        wanted.push(finalizer.to_owned());
    } else {
        wanted.retain(|f| f != finalizer);
    }
    Some(wanted)
}
