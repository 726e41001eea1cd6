//! Where domain metadata is read from: the [`Storage`] trait, its file implementation (VDSM's
//! layout `<root>/<mount>/<sdUUID>/dom_md/metadata`), the monitor's tolerant metadata reader, and
//! the layout writer for `make-domain`, demos and tests.
//!
//! A storage only reads; deadlines, delay and validity are the monitor's business, so real and
//! simulated storage go through the same monitor code.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

/// The largest metadata file read (VDSM's is a few hundred bytes).
const MAX_METADATA_BYTES: u64 = 64 * 1024;

/// Why a metadata read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No mount under the root holds the domain (VDSM: 358).
    #[error("domain not found under the storage root")]
    NotFound,
    /// The domain is there but its metadata cannot be read (VDSM: 2001).
    #[error("metadata unreadable")]
    Io(#[source] io::Error),
}

/// Reads the metadata of storage domains.
pub trait Storage: Send + Sync {
    /// Reads the metadata file of `sd_uuid`. The future may take long or never finish (hung
    /// storage); the monitor puts a deadline on it and does not start another read meanwhile.
    fn read_metadata(&self, sd_uuid: &str) -> BoxFuture<'static, Result<Vec<u8>, ReadError>>;
}

/// File domains under a storage root, found as VDSM finds them: the first `<root>/*/<sdUUID>`.
#[derive(Clone, Debug)]
pub struct FileStorage {
    root: PathBuf,
}

impl FileStorage {
    /// Storage under `root` (VDSM's is `/rhev/data-center/mnt`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

impl Storage for FileStorage {
    fn read_metadata(&self, sd_uuid: &str) -> BoxFuture<'static, Result<Vec<u8>, ReadError>> {
        let root = self.root.clone();
        let sd = sd_uuid.to_owned();
        // A read from hung storage blocks its thread; it runs on the blocking pool so the
        // runtime keeps serving, and the monitor's deadline reports it.
        let task = tokio::task::spawn_blocking(move || read_file_domain(&root, &sd));
        Box::pin(async move {
            match task.await {
                Ok(r) => r,
                Err(join) => Err(ReadError::Io(io::Error::other(join.to_string()))),
            }
        })
    }
}

fn read_file_domain(root: &Path, sd_uuid: &str) -> Result<Vec<u8>, ReadError> {
    let domain_dir = super::domains::find_domain(root, sd_uuid)
        .map_err(ReadError::Io)?
        .ok_or(ReadError::NotFound)?;
    let file =
        std::fs::File::open(domain_dir.join("dom_md").join("metadata")).map_err(ReadError::Io)?;
    let mut buf = Vec::new();
    file.take(MAX_METADATA_BYTES)
        .read_to_end(&mut buf)
        .map_err(ReadError::Io)?;
    Ok(buf)
}

/// What a metadata file says about its domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// `SDUUID=`: the domain the file belongs to.
    pub sd_uuid: Option<String>,
    /// `VERSION=`: the domain format version.
    pub version: Option<i64>,
    /// `CLASS=`: `Data`, `Iso` or `Backup`.
    pub class: Option<String>,
}

/// Parses VDSM `KEY=VALUE` metadata lines (other lines and keys are ignored).
pub fn parse_metadata(bytes: &[u8]) -> Metadata {
    let text = String::from_utf8_lossy(bytes);
    let mut md = Metadata {
        sd_uuid: None,
        version: None,
        class: None,
    };
    for line in text.lines() {
        if let Some((key, value)) = line.split_once('=') {
            match key.trim() {
                "SDUUID" => md.sd_uuid = Some(value.trim().to_ascii_lowercase()),
                "VERSION" => md.version = value.trim().parse().ok(),
                "CLASS" => md.class = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    md
}

/// The metadata of a healthy, unattached domain as [`make_file_domain`] writes it (VDSM's
/// format, sealed).
pub fn metadata_text(sd_uuid: &str) -> String {
    let md = super::metadata::Metadata::new_domain(sd_uuid, "Data", "poolkeeper");
    String::from_utf8_lossy(&md.to_bytes()).into_owned()
}

/// Creates `<root>/<mount>/<sd_uuid>/dom_md/metadata` for a new, unattached data domain in
/// VDSM's format (`ROLE=Regular`, no `POOL_UUID`, sealed by `_SHA_CKSUM`); returns the metadata
/// path. An existing file is overwritten. A pool manager's `StoragePool.create` or
/// `StorageDomain.attach` makes it a pool's member.
///
/// # Errors
/// When a directory or the file cannot be written.
pub fn make_file_domain(root: &Path, mount: &str, sd_uuid: &str) -> io::Result<PathBuf> {
    super::domains::write_new_domain(root, mount, sd_uuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sduuid_and_version() {
        let md = parse_metadata(metadata_text("AAAA").as_bytes());
        assert_eq!(md.sd_uuid.as_deref(), Some("aaaa"));
        assert_eq!(md.version, Some(5));
        assert_eq!(
            parse_metadata(b"\xff\xfe garbage"),
            Metadata {
                sd_uuid: None,
                version: None,
                class: None,
            }
        );
    }

    #[test]
    fn finds_a_domain_in_any_mount() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sd = "aaaaaaaa-0000-0000-0000-000000000001";
        make_file_domain(dir.path(), "nfs1:_export", sd).expect("layout");
        let text = read_file_domain(dir.path(), sd).expect("readable");
        assert_eq!(parse_metadata(&text).sd_uuid.as_deref(), Some(sd));
        assert!(matches!(
            read_file_domain(dir.path(), "bbbbbbbb-0000-0000-0000-000000000001"),
            Err(ReadError::NotFound)
        ));
        assert!(matches!(
            read_file_domain(&dir.path().join("absent"), sd),
            Err(ReadError::NotFound)
        ));
    }
}
