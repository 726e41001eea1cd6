//! The domain map, one type wherever it appears: a pool's status, a host's report, the planner's
//! desired map, a connect call and the agent's memory. In the API it is a list of `{uuid, status}`
//! sorted by uuid and keyed by it (the API server refuses a repeated uuid); on VDSM's wire it is the
//! object `domainDict` (`{sdUUID: "active" | "attached"}`, written by [`crate::protocol::wire`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, ser::SerializeSeq};

use super::{DomainMapEntry, MapStatus};

/// sdUUID → `active` or `attached`.
///
/// Shared on clone, copied on the first change (`Arc::make_mut`): a rollout plans one connect per
/// host, each with the pool's map, and 2,000 copies of a 20-domain map were 4 MB of the
/// controller's peak. A map read (deserialized) equal to one read recently is that one
/// ([`RECENT_MAPS`]): every host of a pool reports the pool's map, so the host cache holds one copy
/// per distinct map instead of one per host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DomainMap(Arc<BTreeMap<String, MapStatus>>);

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

    /// Whether `other` is this very copy (not only an equal map).
    pub fn shares(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
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
        Arc::make_mut(&mut self.0)
    }
}

impl FromIterator<(String, MapStatus)> for DomainMap {
    fn from_iter<I: IntoIterator<Item = (String, MapStatus)>>(iter: I) -> Self {
        Self(Arc::new(iter.into_iter().collect()))
    }
}

impl Serialize for DomainMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for (uuid, status) in self.0.iter() {
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
        let map: BTreeMap<_, _> = entries.into_iter().map(|e| (e.uuid, e.status)).collect();
        Ok(Self(RECENT.share(map)))
    }
}

/// How many distinct maps read recently are remembered for sharing: a few pools, each with its
/// current map and the one before it during a rollout. A map not among them is kept as read.
const RECENT_MAPS: usize = 8;

/// The maps read most recently.
static RECENT: Recent = Recent::new();

/// Maps read recently, newest first; only weak handles, so a map nobody holds any more is freed
/// as usual.
struct Recent(Mutex<Vec<Weak<BTreeMap<String, MapStatus>>>>);

impl Recent {
    const fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }

    /// `map`, or an equal map read recently that something still holds.
    fn share(&self, map: BTreeMap<String, MapStatus>) -> Arc<BTreeMap<String, MapStatus>> {
        if map.is_empty() {
            return Arc::new(map);
        }
        let mut recent = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(same) = recent
            .iter()
            .filter_map(Weak::upgrade)
            .find(|known| **known == map)
        {
            return same;
        }
        let map = Arc::new(map);
        recent.retain(|w| w.strong_count() > 0);
        recent.truncate(RECENT_MAPS - 1);
        recent.insert(0, Arc::downgrade(&map));
        map
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
    fn clones_share_until_one_changes() {
        let a = map();
        let mut b = a.clone();
        assert!(Arc::ptr_eq(&a.0, &b.0), "a clone shares the entries");
        b.insert("c".to_owned(), MapStatus::Active);
        assert_eq!(a.len(), 2, "changing the clone leaves the original alone");
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn equal_maps_read_while_one_is_held_are_one() {
        let recent = Recent::new();
        let read = |status| recent.share([("x1".to_owned(), status)].into_iter().collect());
        let first = read(MapStatus::Active);
        assert!(Arc::ptr_eq(&first, &read(MapStatus::Active)), "one copy");
        let other = read(MapStatus::Attached);
        assert!(!Arc::ptr_eq(&first, &other), "another map is its own");
        assert_eq!(other.get("x1"), Some(&MapStatus::Attached));
        drop(first);
        let again = read(MapStatus::Active);
        assert_eq!(
            Arc::strong_count(&again),
            1,
            "a map nobody holds is not kept"
        );
        let held: Vec<_> = (0..2 * RECENT_MAPS)
            .map(|i| recent.share([(format!("d{i}"), MapStatus::Active)].into_iter().collect()))
            .collect();
        assert_eq!(held.len(), 2 * RECENT_MAPS);
        assert_eq!(
            recent.0.lock().expect("lock").len(),
            RECENT_MAPS,
            "only the newest"
        );
    }

    #[test]
    fn active_lists_only_monitored_domains() {
        assert_eq!(map().active().collect::<Vec<_>>(), vec!["a"]);
    }
}
