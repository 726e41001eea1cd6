//! The domain map, one type wherever it appears: a pool's status, a host's report, the planner's
//! desired map, a connect call and the agent's memory. In the API it is a list of `{uuid, status}`
//! sorted by uuid and keyed by it (the API server refuses a repeated uuid); on VDSM's wire it is the
//! object `domainDict` (`{sdUUID: "active" | "attached"}`, written by [`crate::protocol::wire`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, ser::SerializeSeq};

use super::{DomainMapEntry, MapStatus};

/// sdUUID → `active` or `attached`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DomainMap(BTreeMap<String, MapStatus>);

impl DomainMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The uuids of the `active` entries (the domains hosts monitor), sorted.
    pub fn active(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(|(_, s)| **s == MapStatus::Active)
            .map(|(u, _)| u.as_str())
    }

    /// Whether the map holds no domain.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The map is a sorted map in every respect but its serialized forms.
impl Deref for DomainMap {
    type Target = BTreeMap<String, MapStatus>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for DomainMap {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl FromIterator<(String, MapStatus)> for DomainMap {
    fn from_iter<I: IntoIterator<Item = (String, MapStatus)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl Serialize for DomainMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for (uuid, status) in &self.0 {
            seq.serialize_element(&Entry {
                uuid,
                status: *status,
            })?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct Entry<'a> {
    uuid: &'a str,
    status: MapStatus,
}

impl<'de> Deserialize<'de> for DomainMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The schema refuses repeated uuids; should one slip through, the last entry counts (a
        // map that fails to parse would stall the controller's whole watch of the kind).
        let entries = Vec::<DomainMapEntry>::deserialize(deserializer)?;
        Ok(entries.into_iter().map(|e| (e.uuid, e.status)).collect())
    }
}

impl JsonSchema for DomainMap {
    fn schema_name() -> Cow<'static, str> {
        "DomainMap".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let entry = generator.subschema_for::<DomainMapEntry>();
        json_schema!({
            "type": "array",
            "items": entry,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["uuid"],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> DomainMap {
        [
            ("b".to_owned(), MapStatus::Attached),
            ("a".to_owned(), MapStatus::Active),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn api_form_is_a_sorted_list_and_reads_back() {
        let json = serde_json::to_value(map()).expect("json");
        assert_eq!(
            json,
            serde_json::json!([{"uuid": "a", "status": "active"}, {"uuid": "b", "status": "attached"}])
        );
        let back: DomainMap = serde_json::from_value(json).expect("back");
        assert_eq!(back, map());
    }

    #[test]
    fn active_lists_only_monitored_domains() {
        assert_eq!(map().active().collect::<Vec<_>>(), vec!["a"]);
    }
}
