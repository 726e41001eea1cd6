//! The domains the pool verbs read and write, in VDSM's file layout: a domain's metadata
//! (`<root>/<mount>/<sdUUID>/dom_md/metadata`, written as `metadata.new` then renamed, as fileSD.py
//! `FileMetadataRW.writelines` does) and the pool manager's lease record on a domain.
//!
//! # The pool manager's lease (VDSM: clusterlock.py, sanlock's `SDM` resource on `dom_md/leases`)
//! A record `dom_md/poolkeeper-spm` (VDSM's key=value format, sealed) names the holder: its owner
//! token (unique per host boot), host id, lease version (`lver`, +1 at every acquisition, as
//! sanlock's) and the wall-clock time of its last renewal. Every change is a read-modify-write
//! under an exclusive `flock` of `dom_md/poolkeeper-spm.lock`, so hosts in different processes
//! sharing the directory see one order. Another owner may take the lease only once the record
//! has not been renewed for a whole lease duration; the holder stops acting as pool manager
//! after half that time without a successful renewal (see [`super::host`]), so two hosts are
//! never both pool manager while their clocks agree (one machine, or NTP).
//!
//! This module does blocking file I/O and nothing else; the decisions are in [`super::state`].

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::metadata::{Metadata, MetadataError};
use crate::protocol::{ErrorCode, VdsmError};

/// File name of the lease record under `dom_md`.
const LEASE_FILE: &str = "poolkeeper-spm";
/// File name of the lock serialising lease changes.
const LEASE_LOCK_FILE: &str = "poolkeeper-spm.lock";
/// The largest metadata file read.
const MAX_METADATA_BYTES: u64 = 64 * 1024;

/// Why a domain could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// No mount under the root holds the domain (VDSM: `StorageDomainDoesNotExist`, 358).
    #[error("domain {0} not found under the storage root")]
    NotFound(String),
    /// The metadata file cannot be read or written.
    #[error("domain metadata i/o failed")]
    Io(#[source] io::Error),
    /// The metadata is refused (seal broken, not UTF-8).
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

impl DomainError {
    /// VDSM's answer for this failure: 358 not found, 752 seal broken, 2001/2002 read or write
    /// failed.
    pub fn vdsm(&self, writing: bool) -> VdsmError {
        let code = match self {
            Self::NotFound(_) => ErrorCode::StorageDomainDoesNotExist,
            Self::Metadata(MetadataError::SealBroken { .. }) => ErrorCode::MetaDataSealIsBroken,
            Self::Metadata(_) => ErrorCode::MetaDataValidationError,
            Self::Io(_) if writing => ErrorCode::MiscFileWriteException,
            Self::Io(_) => ErrorCode::MiscFileReadException,
        };
        VdsmError::new(code, self.to_string())
    }
}

/// The lease record as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The holder's owner token (empty: released).
    pub owner: String,
    /// The holder's host id (-1: free).
    pub host_id: i64,
    /// The lease version.
    pub lver: i64,
    /// Milliseconds since the epoch of the last acquisition or renewal.
    pub renewed_ms: i64,
}

impl LeaseRecord {
    const FREE: Self = Self {
        owner: String::new(),
        host_id: -1,
        lver: 0,
        renewed_ms: 0,
    };

    /// Whether an owner holds the lease at `now_ms` (renewed within `duration`).
    pub fn held_at(&self, now_ms: i64, duration: Duration) -> bool {
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        !self.owner.is_empty() && now_ms.saturating_sub(self.renewed_ms) < ms
    }

    fn parse(md: &Metadata) -> Self {
        let int = |k: &str, d: i64| md.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        Self {
            owner: md.get("OWNER").unwrap_or_default().to_owned(),
            host_id: int("HOST_ID", -1),
            lver: int("LVER", 0),
            renewed_ms: int("RENEWED_MS", 0),
        }
    }

    fn to_metadata(&self) -> Metadata {
        let mut md = Metadata::default();
        md.set("OWNER", self.owner.clone());
        md.set("HOST_ID", self.host_id.to_string());
        md.set("LVER", self.lver.to_string());
        md.set("RENEWED_MS", self.renewed_ms.to_string());
        md
    }
}

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another owner holds it (VDSM: `AcquireLockFailure`, 651).
    #[error("lease held by host {host_id} (lver {lver})")]
    Held {
        /// The holder's host id.
        host_id: i64,
        /// Its lease version.
        lver: i64,
    },
    /// This owner no longer holds it (taken over after it expired).
    #[error("lease lost")]
    Lost,
    /// The domain or the record cannot be used.
    #[error(transparent)]
    Domain(#[from] DomainError),
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// File domains under a storage root.
#[derive(Clone, Debug)]
pub struct FileDomains {
    root: PathBuf,
    provision: bool,
}

impl FileDomains {
    /// Domains under `root`, as VDSM finds them (`<root>/*/<sdUUID>`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            provision: false,
        }
    }

    /// Domains under `root` where a domain that does not exist is created on first use in
    /// `<root>/sim/<sdUUID>` as `make-domain` creates it (the simulator's storage).
    pub fn provisioning(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            provision: true,
        }
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The `dom_md` directory of `sd`.
    ///
    /// # Errors
    /// [`DomainError::NotFound`] when no mount holds it (and it is not provisioned).
    pub fn dom_md(&self, sd: &str) -> Result<PathBuf, DomainError> {
        if let Some(dir) = find_domain(&self.root, sd).map_err(DomainError::Io)? {
            return Ok(dir.join("dom_md"));
        }
        if self.provision {
            return provision(&self.root.join("sim"), sd).map_err(DomainError::Io);
        }
        Err(DomainError::NotFound(sd.to_owned()))
    }

    /// The raw bytes of the metadata of `sd` (a missing file reads as none).
    ///
    /// # Errors
    /// Not found or I/O.
    pub fn read_bytes(&self, sd: &str) -> Result<Vec<u8>, DomainError> {
        let path = self.dom_md(sd)?.join("metadata");
        match read_limited(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(DomainError::Io(e)),
        }
    }

    /// Reads and parses the metadata of `sd` (fileSD.py: a missing metadata file reads as no
    /// lines, i.e. empty metadata).
    ///
    /// # Errors
    /// Not found, I/O, or metadata VDSM refuses.
    pub fn read(&self, sd: &str) -> Result<Metadata, DomainError> {
        Ok(Metadata::parse(&self.read_bytes(sd)?)?)
    }

    /// Writes the metadata of `sd`: `metadata.new`, then renamed over `metadata`.
    ///
    /// # Errors
    /// Not found or I/O.
    pub fn write(&self, sd: &str, md: &Metadata) -> Result<(), DomainError> {
        let dom_md = self.dom_md(sd)?;
        write_atomically(&dom_md.join("metadata"), &md.to_bytes()).map_err(DomainError::Io)
    }

    /// Runs `f` on the lease record of `sd` under the lock; writes back what it returns.
    fn with_lease<T>(
        &self,
        sd: &str,
        f: impl FnOnce(LeaseRecord) -> Result<(Option<LeaseRecord>, T), LeaseError>,
    ) -> Result<T, LeaseError> {
        let dom_md = self.dom_md(sd)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dom_md.join(LEASE_LOCK_FILE))
            .map_err(DomainError::Io)?;
        lock.lock().map_err(DomainError::Io)?;
        let path = dom_md.join(LEASE_FILE);
        let record = match read_limited(&path) {
            Ok(bytes) => LeaseRecord::parse(&Metadata::parse(&bytes).map_err(DomainError::from)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => LeaseRecord::FREE,
            Err(e) => return Err(DomainError::Io(e).into()),
        };
        let (write, out) = f(record)?;
        if let Some(new) = write {
            write_atomically(&path, &new.to_metadata().to_bytes()).map_err(DomainError::Io)?;
        }
        // The lock is released when `lock` is dropped.
        Ok(out)
    }

    /// Acquires the lease of `sd` for `owner` with `host_id` (clusterlock.py `acquire`): free,
    /// expired, or already ours. Returns the new lease version.
    ///
    /// # Errors
    /// [`LeaseError::Held`] while another owner renews it.
    pub fn acquire_lease(
        &self,
        sd: &str,
        owner: &str,
        host_id: i64,
        duration: Duration,
    ) -> Result<i64, LeaseError> {
        let now = now_ms();
        self.with_lease(sd, |r| {
            if r.owner == owner && r.held_at(now, duration) {
                let renewed = LeaseRecord {
                    renewed_ms: now,
                    ..r.clone()
                };
                return Ok((Some(renewed), r.lver));
            }
            if r.held_at(now, duration) {
                return Err(LeaseError::Held {
                    host_id: r.host_id,
                    lver: r.lver,
                });
            }
            let lver = r.lver + 1;
            let new = LeaseRecord {
                owner: owner.to_owned(),
                host_id,
                lver,
                renewed_ms: now,
            };
            Ok((Some(new), lver))
        })
    }

    /// Renews the lease of `sd` held by `owner`.
    ///
    /// # Errors
    /// [`LeaseError::Lost`] when another owner took it or it was released.
    pub fn renew_lease(&self, sd: &str, owner: &str) -> Result<(), LeaseError> {
        let now = now_ms();
        self.with_lease(sd, |r| {
            if r.owner != owner {
                return Err(LeaseError::Lost);
            }
            Ok((
                Some(LeaseRecord {
                    renewed_ms: now,
                    ..r
                }),
                (),
            ))
        })
    }

    /// Releases the lease of `sd` if `owner` holds it (clusterlock.py `release`); keeps the
    /// lease version.
    ///
    /// # Errors
    /// The record cannot be read or written.
    pub fn release_lease(&self, sd: &str, owner: &str) -> Result<(), LeaseError> {
        self.with_lease(sd, |r| {
            if r.owner != owner {
                return Ok((None, ()));
            }
            let free = LeaseRecord {
                owner: String::new(),
                host_id: -1,
                ..r
            };
            Ok((Some(free), ()))
        })
    }

    /// The lease of `sd` as `inquire` answers it: `(lver, Some(host id))` while held.
    ///
    /// # Errors
    /// The record cannot be read.
    pub fn inquire_lease(
        &self,
        sd: &str,
        duration: Duration,
    ) -> Result<(i64, Option<i64>), LeaseError> {
        let now = now_ms();
        self.with_lease(sd, |r| {
            let holder = r.held_at(now, duration).then_some(r.host_id);
            Ok((None, (r.lver, holder)))
        })
    }
}

/// Creates `<mount>/<sd>` whole in a temporary directory, then renames it into place: racing
/// provisioners (and a pool manager writing the domain meanwhile) never see a half-made domain
/// nor overwrite one. Returns its `dom_md`.
fn provision(mount: &Path, sd: &str) -> io::Result<PathBuf> {
    let target = mount.join(sd);
    if !target.is_dir() {
        std::fs::create_dir_all(mount)?;
        let tmp = mount.join(format!(".new-{}", uuid::Uuid::new_v4()));
        write_new_domain(
            mount,
            tmp.file_name().and_then(|n| n.to_str()).unwrap_or(".new"),
            sd,
        )?;
        let renamed = std::fs::rename(tmp.join(sd), &target);
        // Losing the race is fine: the winner's domain stands.
        let _ = std::fs::remove_dir_all(&tmp);
        if let Err(e) = renamed
            && !target.is_dir()
        {
            return Err(e);
        }
    }
    Ok(target.join("dom_md"))
}

fn read_limited(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_METADATA_BYTES)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".new");
    let tmp = PathBuf::from(tmp_name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// `glob(<root>/*/<sdUUID>)`: the first mount (in name order) holding the domain directory.
pub(crate) fn find_domain(root: &Path, sd_uuid: &str) -> io::Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut mounts: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    mounts.sort();
    Ok(mounts
        .into_iter()
        .map(|m| m.join(sd_uuid))
        .find(|candidate| candidate.is_dir()))
}

/// Creates `<root>/<mount>/<sd_uuid>/dom_md/metadata` as a new, unattached data domain (VDSM's
/// format, sealed); returns the metadata path. An existing file is overwritten.
///
/// # Errors
/// When a directory or the file cannot be written.
pub fn write_new_domain(root: &Path, mount: &str, sd_uuid: &str) -> io::Result<PathBuf> {
    let dom_md = root.join(mount).join(sd_uuid).join("dom_md");
    std::fs::create_dir_all(&dom_md)?;
    let path = dom_md.join("metadata");
    let md = Metadata::new_domain(sd_uuid, "Data", "poolkeeper");
    write_atomically(&path, &md.to_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD: &str = "aaaaaaaa-0000-0000-0000-000000000001";
    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn metadata_round_trips_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_new_domain(dir.path(), "nfs1:_export", SD).expect("layout");
        let d = FileDomains::new(dir.path());
        let mut md = d.read(SD).expect("reads");
        assert_eq!(md.sd_uuid(), Some(SD));
        md.set("ROLE", "Master");
        d.write(SD, &md).expect("writes");
        assert_eq!(d.read(SD).expect("reads"), md);
        assert!(matches!(
            d.read("bbbbbbbb-0000-0000-0000-000000000001"),
            Err(DomainError::NotFound(_))
        ));
    }

    #[test]
    fn a_tampered_file_is_refused_with_752() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_new_domain(dir.path(), "m", SD).expect("layout");
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.replace("ROLE=Regular", "ROLE=Master")).expect("write");
        let e = FileDomains::new(dir.path()).read(SD).expect_err("refused");
        assert_eq!(e.vdsm(false).code, ErrorCode::MetaDataSealIsBroken);
    }

    #[test]
    fn provisioning_storage_creates_missing_domains() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = FileDomains::provisioning(dir.path());
        assert_eq!(d.read(SD).expect("made").sd_uuid(), Some(SD));
        assert!(dir.path().join("sim").join(SD).is_dir());
    }

    #[test]
    fn a_held_lease_is_refused_to_others_until_it_expires_or_is_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_new_domain(dir.path(), "m", SD).expect("layout");
        // Two handles on one directory, as two processes would have.
        let (a, b) = (FileDomains::new(dir.path()), FileDomains::new(dir.path()));
        assert_eq!(a.acquire_lease(SD, "boot-a", 1, LONG).expect("free"), 1);
        assert!(matches!(
            b.acquire_lease(SD, "boot-b", 2, LONG),
            Err(LeaseError::Held {
                host_id: 1,
                lver: 1
            })
        ));
        assert_eq!(b.inquire_lease(SD, LONG).expect("inquire"), (1, Some(1)));
        a.renew_lease(SD, "boot-a").expect("renews");
        // Expired (a zero duration): another owner takes it, the old holder has lost it.
        assert_eq!(
            b.acquire_lease(SD, "boot-b", 2, Duration::ZERO)
                .expect("expired"),
            2
        );
        assert!(matches!(a.renew_lease(SD, "boot-a"), Err(LeaseError::Lost)));
        b.release_lease(SD, "boot-b").expect("released");
        assert_eq!(a.inquire_lease(SD, LONG).expect("inquire"), (2, None));
        assert_eq!(a.acquire_lease(SD, "boot-a", 1, LONG).expect("free"), 3);
    }

    #[test]
    fn concurrent_acquirers_get_one_winner() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_new_domain(dir.path(), "m", SD).expect("layout");
        let winners: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let d = FileDomains::new(dir.path());
                    s.spawn(move || {
                        usize::from(d.acquire_lease(SD, &format!("boot-{i}"), i, LONG).is_ok())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(winners, 1);
    }
}
