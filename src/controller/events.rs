//! Publishes events.k8s.io Events the way client-go's recorder has since Kubernetes 1.26: events
//! with the same regarding object, type, reason, action **and note** form a series (one Event whose
//! `series.count` grows); another note is another Event. kube-runtime's `Recorder` (kube 5) leaves
//! the note out of its key, so an event with the reason of an earlier one but another note (a
//! domain's blocking hosts after its phase change) only bumped the earlier Event's count, and its
//! note never reached `kubectl events`. Only the writer ([`super::write`]) calls this.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// How long a published event can be continued as a series (client-go's and kube's 6 minutes).
const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);

/// Events of one reporting controller, folded into series only when identical. Clones share what
/// was published.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    published: Arc<Mutex<Published>>,
}

/// The events published within the last [`SERIES_TTL`]: of each, only what continuing its series
/// needs. A new pool of 2,000 hosts publishes 2,000 events; each used to be kept whole, as the API
/// server returned it, and every publish scanned them all for expired ones.
#[derive(Default)]
struct Published {
    series: HashMap<Key, Series>,
    /// When expired entries were last dropped: at most once per [`PRUNE_EVERY`], not per event.
    pruned: Option<Timestamp>,
}

/// One published Event's series.
struct Series {
    name: String,
    count: i32,
    last: Timestamp,
}

/// How often expired series are dropped.
const PRUNE_EVERY: SignedDuration = SignedDuration::from_mins(1);

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("reporter", &self.reporter)
            .finish_non_exhaustive()
    }
}

/// What makes two events the same event (client-go's `eventKey`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    regarding: (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ),
    type_: &'static str,
    reason: String,
    action: String,
    note: Option<String>,
}

impl Recorder {
    /// A recorder publishing as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            published: Arc::default(),
        }
    }

    /// Publishes `ev` about `regarding`: a new Event, or the next of its series when the same
    /// event was published within the last six minutes.
    ///
    /// # Errors
    /// When the API server refuses the write.
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = Key {
            regarding: (
                regarding.kind.clone(),
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
            ),
            type_: type_str(ev.type_),
            reason: ev.reason.clone(),
            action: ev.action.clone(),
            note: ev.note.clone(),
        };
        let earlier = {
            let mut published = self
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if published.pruned.is_none_or(|t| t + PRUNE_EVERY <= now) {
                published.series.retain(|_, s| s.last + SERIES_TTL > now);
                published.pruned = Some(now);
            }
            published
                .series
                .get(&key)
                .filter(|s| s.last + SERIES_TTL > now)
                .map(|s| (s.name.clone(), s.count))
        };
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        let series = match earlier {
            Some((name, count)) => {
                let count = count + 1;
                let patch = json!({ "series": EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                } });
                events
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                Series {
                    name,
                    count,
                    last: now,
                }
            }
            None => {
                let event = self.new_event(ev, regarding, namespace, now);
                let created = events.create(&PostParams::default(), &event).await?;
                Series {
                    name: created.name_any(),
                    count: 1,
                    last: now,
                }
            }
        };
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .series
            .insert(key, series);
        Ok(())
    }

    fn new_event(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
        namespace: &str,
        now: Timestamp,
    ) -> K8sEvent {
        let controller = &self.reporter.controller;
        K8sEvent {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_ref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: ev.note.clone(),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            type_: Some(type_str(ev.type_).to_owned()),
            ..K8sEvent::default()
        }
    }
}

fn type_str(t: EventType) -> &'static str {
    match t {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}
