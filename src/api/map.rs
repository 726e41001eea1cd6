//! The domain map, one type wherever it appears: a pool's status, a host's report, the planner's
//! desired map, a connect call and the agent's memory. In the API it is a list of `{uuid, status}`
//! sorted by uuid and keyed by it (the API server refuses a repeated uuid); on VDSM's wire it is the
//! object `domainDict` (`{sdUUID: "active" | "attached"}`, see [`as_object`]).

use std::borrow::Cow;
use std::collections::BTreeMap;

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

    /// The status of `uuid` in the map.
    pub fn get(&self, uuid: &str) -> Option<MapStatus> {
        self.0.get(uuid).copied()
    }

    /// Whether `uuid` is in the map.
    pub fn contains(&self, uuid: &str) -> bool {
        self.0.contains_key(uuid)
    }

    /// Puts `uuid` in the map with `status`.
    pub fn insert(&mut self, uuid: String, status: MapStatus) {
        self.0.insert(uuid, status);
    }

    /// Takes `uuid` out of the map.
    pub fn remove(&mut self, uuid: &str) -> Option<MapStatus> {
        self.0.remove(uuid)
    }

    /// The entries, sorted by uuid.
    pub fn iter(&self) -> impl Iterator<Item = (&str, MapStatus)> {
        self.0.iter().map(|(u, s)| (u.as_str(), *s))
    }

    /// The uuids of the `active` entries (the domains hosts monitor), sorted.
    pub fn active(&self) -> impl Iterator<Item = &str> {
        self.iter()
            .filter(|(_, s)| *s == MapStatus::Active)
            .map(|(u, _)| u)
    }

    /// How many domains the map holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the map holds no domain.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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

/// VDSM's wire form of a map, `domainDict`: a JSON object `{sdUUID: status}`. For
/// `#[serde(with = "as_object")]` on an `Option<DomainMap>` (absent: the disk backend).
pub mod as_object {
    use super::{BTreeMap, Deserialize, Deserializer, DomainMap, MapStatus, Serializer};

    /// Writes the map as an object.
    ///
    /// # Errors
    /// When the serializer fails.
    pub fn serialize<S: Serializer>(
        map: &Option<DomainMap>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match map {
            Some(m) => serializer.collect_map(m.0.iter()),
            None => serializer.serialize_none(),
        }
    }

    /// Reads the map from an object.
    ///
    /// # Errors
    /// When the value is not an object of domain statuses.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<DomainMap>, D::Error> {
        Ok(Option::<BTreeMap<String, MapStatus>>::deserialize(deserializer)?.map(DomainMap))
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
    fn wire_form_is_vdsms_object() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Params {
            #[serde(with = "as_object", default)]
            dict: Option<DomainMap>,
        }
        let json = serde_json::to_value(Params { dict: Some(map()) }).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"dict": {"a": "active", "b": "attached"}})
        );
        let back: Params = serde_json::from_value(json).expect("back");
        assert_eq!(back.dict, Some(map()));
        let none: Params = serde_json::from_value(serde_json::json!({})).expect("none");
        assert_eq!(none.dict, None);
    }

    #[test]
    fn active_lists_only_monitored_domains() {
        assert_eq!(map().active().collect::<Vec<_>>(), vec!["a"]);
    }
}
