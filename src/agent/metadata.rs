//! VDSM's domain metadata: the `KEY=VALUE` lines of `dom_md/metadata`, sealed by a `_SHA_CKSUM`
//! line, parsed and written by VDSM's own rules, and the typed keys the pool verbs read and write
//! (the domain's `ROLE` and `POOL_UUID`, and on a master the pool keys of the disk backend).
//!
//! Pure: no I/O. [`super::domains`] reads and writes the file; this module only turns bytes into
//! keys and back.
//!
//! VDSM references (`lib/vdsm/storage/`): `persistent.py` `PersistentDict._refresh` (parse) and
//! `_flush` (write), `sd.py` `SD_MD_FIELDS` and `StorageDomainManifest.getPools`, `spbackends.py`
//! `SP_MD_FIELDS`, `_domainListEncoder` and `_domainListDecoder`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::api::{DomainMap, MapStatus};

/// The key of the checksum line (persistent.py `SHA_CKSUM_TAG`).
pub const SHA_CKSUM_TAG: &str = "_SHA_CKSUM";

/// sd.py `BLANK_UUID`: old pool metadata named it as the pool of an unattached domain.
pub const BLANK_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// Metadata keys as VDSM spells them.
pub mod key {
    /// `VERSION`: the domain format version (sd.py `DMDK_VERSION`).
    pub const VERSION: &str = "VERSION";
    /// `SDUUID`: the domain's own UUID.
    pub const SDUUID: &str = "SDUUID";
    /// `TYPE`: `NFS`, `LOCALFS`...
    pub const TYPE: &str = "TYPE";
    /// `ROLE`: `Master` or `Regular`.
    pub const ROLE: &str = "ROLE";
    /// `DESCRIPTION`: the domain's name.
    pub const DESCRIPTION: &str = "DESCRIPTION";
    /// `CLASS`: `Data`, `Iso` or `Backup`.
    pub const CLASS: &str = "CLASS";
    /// `POOL_UUID`: the pools the domain is attached to, comma-separated (constants.py
    /// `MDK_POOLS`).
    pub const POOL_UUID: &str = "POOL_UUID";
    /// `MASTER_VERSION` (master only; spbackends.py `PMDK_MASTER_VER`).
    pub const MASTER_VERSION: &str = "MASTER_VERSION";
    /// `POOL_DOMAINS`: the disk backend's map, `sdUUID:Status,...` (`PMDK_DOMAINS`).
    pub const POOL_DOMAINS: &str = "POOL_DOMAINS";
    /// `POOL_SPM_ID`: the pool manager's host id, -1 when free (`PMDK_SPM_ID`).
    pub const POOL_SPM_ID: &str = "POOL_SPM_ID";
    /// `POOL_SPM_LVER`: the pool manager's lease version, -1 when none (`PMDK_LVER`).
    pub const POOL_SPM_LVER: &str = "POOL_SPM_LVER";
    /// `POOL_DESCRIPTION`: the pool's name (`PMDK_POOL_DESCRIPTION`).
    pub const POOL_DESCRIPTION: &str = "POOL_DESCRIPTION";
}

/// sd.py `MASTER_DOMAIN`.
pub const ROLE_MASTER: &str = "Master";
/// sd.py `REGULAR_DOMAIN`.
pub const ROLE_REGULAR: &str = "Regular";

/// Why metadata bytes were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// The `_SHA_CKSUM` line does not match the keys (VDSM: `MetaDataSealIsBroken`, 752).
    #[error("metadata seal is broken: declared {declared}, computed {computed}")]
    SealBroken {
        /// The checksum the file declares.
        declared: String,
        /// The checksum of the keys read.
        computed: String,
    },
    /// A line is not UTF-8 (VDSM's `_preprocessLine` fails to decode it).
    #[error("metadata is not utf-8")]
    NotUtf8,
    /// A typed key holds a value VDSM's decoder refuses.
    #[error("metadata key {key} has an invalid value {value:?}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// Its value.
        value: String,
    },
}

/// The keys of one metadata file, every key kept (VDSM writes back keys it does not know).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    keys: BTreeMap<String, String>,
}

/// Python's `str.strip()` on a byte string: ASCII whitespace, vertical tab included.
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b')
}

/// persistent.py `_preprocessLine`: UTF-8 text as ASCII, other characters as XML references.
fn preprocess(line: &str, out: &mut String) {
    for c in line.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "&#{};", u32::from(c));
        }
    }
}

/// The seal of `keys`: SHA-1 over `key=value` of every key in sorted order, no separators.
fn checksum(keys: &BTreeMap<String, String>) -> String {
    let mut text = String::new();
    for (k, v) in keys {
        preprocess(&format!("{k}={v}"), &mut text);
    }
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes());
    digest.as_ref().iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

impl Metadata {
    /// Parses a metadata file as `PersistentDict._refresh` does: a line without `=` is skipped;
    /// the key is kept as written and the value stripped; the last of repeated keys wins; no
    /// keys at all is valid empty metadata; without a `_SHA_CKSUM` line the keys are trusted as
    /// they are; with one, it must match.
    ///
    /// # Errors
    /// A checksum mismatch, or bytes that are not UTF-8.
    pub fn parse(bytes: &[u8]) -> Result<Self, MetadataError> {
        let text = std::str::from_utf8(bytes).map_err(|_| MetadataError::NotUtf8)?;
        let mut keys = BTreeMap::new();
        let mut declared = None;
        // fileSD.py `FileMetadataRW.readlines`: lines without their newline.
        for line in text.split_terminator('\n') {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = py_strip(v);
            if k == SHA_CKSUM_TAG {
                declared = Some(v.to_owned());
            } else {
                keys.insert(k.to_owned(), v.to_owned());
            }
        }
        let md = Self { keys };
        if md.keys.is_empty() {
            return Ok(md);
        }
        if let Some(declared) = declared {
            let computed = checksum(&md.keys);
            if declared != computed {
                return Err(MetadataError::SealBroken { declared, computed });
            }
        }
        Ok(md)
    }

    /// The file as `PersistentDict._flush` writes it: every key sorted, `key=value` (value
    /// stripped), then the `_SHA_CKSUM` line; each line ends with a newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let stripped: BTreeMap<String, String> = self
            .keys
            .iter()
            .map(|(k, v)| (k.clone(), py_strip(v).to_owned()))
            .collect();
        let mut out = String::new();
        for (k, v) in &stripped {
            let _ = writeln!(out, "{k}={v}");
        }
        let _ = writeln!(out, "{SHA_CKSUM_TAG}={}", checksum(&stripped));
        out.into_bytes()
    }

    /// A new domain's metadata as `poolkeeper make-domain` writes it: unattached, `Regular`.
    pub fn new_domain(sd_uuid: &str, class: &str, description: &str) -> Self {
        let mut md = Self::default();
        for (k, v) in [
            (key::CLASS, class),
            (key::DESCRIPTION, description),
            ("IOOPTIMEOUTSEC", "10"),
            ("LEASERETRIES", "3"),
            ("LEASETIMESEC", "60"),
            ("LOCKPOLICY", ""),
            ("LOCKRENEWALINTERVALSEC", "5"),
            (key::POOL_UUID, ""),
            ("REMOTE_PATH", "poolkeeper"),
            (key::ROLE, ROLE_REGULAR),
            (key::SDUUID, sd_uuid),
            (key::TYPE, "LOCALFS"),
            (key::VERSION, "5"),
        ] {
            md.set(k, v);
        }
        md
    }

    /// A key's value as written.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }

    /// Sets a key.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.keys.insert(key.to_owned(), value.into());
    }

    /// Removes a key.
    pub fn remove(&mut self, key: &str) {
        self.keys.remove(key);
    }

    /// `SDUUID`.
    pub fn sd_uuid(&self) -> Option<&str> {
        self.get(key::SDUUID)
    }

    /// `CLASS` (`Data`, `Iso`, `Backup`).
    pub fn class(&self) -> Option<&str> {
        self.get(key::CLASS)
    }

    /// Whether `ROLE` is `Master` (sd.py `isMaster`).
    pub fn is_master(&self) -> bool {
        self.get(key::ROLE) == Some(ROLE_MASTER)
    }

    /// The pools of `POOL_UUID` as sd.py `getPools` reads them: comma-separated, empty for
    /// none, `BLANK_UUID` dropped. Values are compared as written (VDSM's pool UUIDs are lower
    /// case; an upper-case one does not match).
    pub fn pools(&self) -> Vec<&str> {
        match self.get(key::POOL_UUID) {
            None | Some("") => Vec::new(),
            Some(s) => s.split(',').filter(|p| *p != BLANK_UUID).collect(),
        }
    }

    /// Sets `POOL_UUID` to `pools`.
    pub fn set_pools(&mut self, pools: &[&str]) {
        self.set(key::POOL_UUID, pools.join(","));
    }

    fn int(&self, key: &'static str) -> Result<Option<i64>, MetadataError> {
        self.get(key)
            .map(|v| {
                py_strip(v).parse().map_err(|_| MetadataError::BadValue {
                    key,
                    value: v.to_owned(),
                })
            })
            .transpose()
    }

    /// `MASTER_VERSION`.
    ///
    /// # Errors
    /// When it is not an integer.
    pub fn master_version(&self) -> Result<Option<i64>, MetadataError> {
        self.int(key::MASTER_VERSION)
    }

    /// `POOL_SPM_ID` and `POOL_SPM_LVER`.
    ///
    /// # Errors
    /// When one is not an integer.
    pub fn spm(&self) -> Result<(Option<i64>, Option<i64>), MetadataError> {
        Ok((self.int(key::POOL_SPM_ID)?, self.int(key::POOL_SPM_LVER)?))
    }

    /// `POOL_DOMAINS` as spbackends.py `_domainListDecoder` reads it: `sdUUID:Status` pairs,
    /// quotes stripped, the status capitalised; `Inactive` is the deprecated `Attached` (sd.py
    /// `DEPRECATED_STATUSES`). `None` when the key is absent.
    ///
    /// # Errors
    /// An entry that is not one `:`-separated pair, or an unknown status.
    pub fn pool_domains(&self) -> Result<Option<DomainMap>, MetadataError> {
        let Some(s) = self.get(key::POOL_DOMAINS) else {
            return Ok(None);
        };
        let bad = || MetadataError::BadValue {
            key: key::POOL_DOMAINS,
            value: s.to_owned(),
        };
        let mut map = DomainMap::new();
        if s.is_empty() {
            return Ok(Some(map));
        }
        for decl in s.split(',') {
            let mut parts = decl.split(':');
            let (Some(k), Some(v), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad());
            };
            let status = match v.trim_matches('\'').to_ascii_lowercase().as_str() {
                "active" => MapStatus::Active,
                "attached" | "inactive" => MapStatus::Attached,
                _ => return Err(bad()),
            };
            map.insert(k.trim_matches('\'').to_owned(), status);
        }
        Ok(Some(map))
    }

    /// Sets `POOL_DOMAINS` as `_domainListEncoder` writes it (sorted here).
    pub fn set_pool_domains(&mut self, map: &DomainMap) {
        let s = map
            .iter()
            .map(|(sd, st)| format!("{sd}:{}", crate::protocol::wire::vdsm_status_name(*st)))
            .collect::<Vec<_>>()
            .join(",");
        self.set(key::POOL_DOMAINS, s);
    }

    /// Drops the pool keys of the disk backend (a domain that stops being a master keeps
    /// `MASTER_VERSION=0`, spbackends.py `setDomainRegularRole`).
    pub fn demote(&mut self) {
        self.set(key::ROLE, ROLE_REGULAR);
        self.set(key::MASTER_VERSION, "0");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD: &str = "aaaaaaaa-0000-0000-0000-000000000001";
    const SP: &str = "5849b030-626e-47cb-ad90-3ce782d831b3";

    #[test]
    fn written_metadata_round_trips_and_carries_vdsm_checksum() {
        let md = Metadata::new_domain(SD, "Data", "data1");
        let bytes = md.to_bytes();
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        let last = text.lines().last().expect("lines");
        assert!(last.starts_with("_SHA_CKSUM="), "{text}");
        assert_eq!(last.len(), "_SHA_CKSUM=".len() + 40);
        let lines: Vec<&str> = text.lines().collect();
        let mut sorted = lines[..lines.len() - 1].to_vec();
        sorted.sort_unstable();
        assert_eq!(&lines[..lines.len() - 1], &sorted[..], "keys sorted");
        assert_eq!(Metadata::parse(&bytes), Ok(md));
    }

    #[test]
    fn checksum_is_sha1_of_sorted_lines_concatenated() {
        // hashlib.sha1(b"A=1B=2").hexdigest(), as VDSM's `_flush` computes it.
        let md = Metadata::parse(b"B=2\nA=1\n").expect("parses");
        assert_eq!(
            String::from_utf8(md.to_bytes()).expect("utf-8"),
            "A=1\nB=2\n_SHA_CKSUM=427b9406ba3a6c76b80bb671a9e40b8326143378\n"
        );
    }

    fn sha1_hex(s: &str) -> String {
        let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, s.as_bytes());
        d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_checksum_mismatch_is_refused() {
        let mut bytes = Metadata::new_domain(SD, "Data", "d").to_bytes();
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        let tampered = text.replace("ROLE=Regular", "ROLE=Master");
        bytes = tampered.into_bytes();
        assert!(matches!(
            Metadata::parse(&bytes),
            Err(MetadataError::SealBroken { .. })
        ));
    }

    #[test]
    fn vdsm_parser_tolerances() {
        // No checksum: trusted. Lines without '=' skipped; values stripped, keys not; the
        // last repeated key wins; '=' inside a value kept.
        let md = Metadata::parse(b"garbage\nROLE= Master \nROLE=Regular\n K=a=b\n").expect("ok");
        assert_eq!(md.get("ROLE"), Some("Regular"));
        assert_eq!(md.get(" K"), Some("a=b"));
        assert_eq!(md.get("K"), None);
        // Only a checksum line: empty metadata is valid whatever it declares.
        assert_eq!(
            Metadata::parse(b"_SHA_CKSUM=nope\n"),
            Ok(Metadata::default())
        );
        assert_eq!(Metadata::parse(b"\xff=1\n"), Err(MetadataError::NotUtf8));
    }

    #[test]
    fn whitespace_around_values_does_not_break_the_seal() {
        let sealed = Metadata::parse(b"A=1\n").expect("ok").to_bytes();
        let text = String::from_utf8(sealed)
            .expect("utf-8")
            .replace("A=1", "A=1  ");
        assert!(Metadata::parse(text.as_bytes()).is_ok());
    }

    #[test]
    fn non_ascii_values_are_sealed_as_xml_references() {
        let mut md = Metadata::default();
        md.set(key::DESCRIPTION, "dépôt");
        assert_eq!(checksum(&md.keys), sha1_hex("DESCRIPTION=d&#233;p&#244;t"));
        assert_eq!(Metadata::parse(&md.to_bytes()), Ok(md));
    }

    #[test]
    fn pools_follow_get_pools() {
        let mut md = Metadata::new_domain(SD, "Data", "d");
        assert!(md.pools().is_empty());
        md.set(key::POOL_UUID, format!("{BLANK_UUID},{SP}"));
        assert_eq!(md.pools(), vec![SP]);
        md.set_pools(&[SP]);
        assert_eq!(md.get(key::POOL_UUID), Some(SP));
    }

    #[test]
    fn pool_domains_decode_like_vdsm() {
        let mut md = Metadata::default();
        assert_eq!(md.pool_domains(), Ok(None));
        md.set(key::POOL_DOMAINS, "");
        assert_eq!(md.pool_domains(), Ok(Some(DomainMap::new())));
        md.set(key::POOL_DOMAINS, format!("'{SD}':active,{SP}:Inactive"));
        let map = md.pool_domains().expect("ok").expect("present");
        assert_eq!(map.get(SD), Some(&MapStatus::Active));
        assert_eq!(map.get(SP), Some(&MapStatus::Attached));
        md.set_pool_domains(&map);
        assert_eq!(
            md.get(key::POOL_DOMAINS),
            Some(format!("{SP}:Attached,{SD}:Active").as_str())
        );
        md.set(key::POOL_DOMAINS, "a:b:c");
        assert!(md.pool_domains().is_err());
        md.set(key::POOL_DOMAINS, "a:Bogus");
        assert!(md.pool_domains().is_err());
    }
}
