//! VDSM's error codes and the two error types of a call: [`VdsmError`] (what a host answers) and
//! [`RpcError`] (everything a caller can get back, transport included).

use std::time::Duration;

/// A JSON-RPC error code: VDSM's storage error codes and the JSON-RPC 2.0 protocol codes.
///
/// Codes this crate does not name are kept as [`ErrorCode::Other`] so a newer host never breaks
/// the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 302: connect failed; used for a map larger than this agent can report.
    StoragePoolConnectionError,
    /// 309: a pool verb for a pool the host is not connected to.
    StoragePoolUnknown,
    /// 323: connect while the host is joined to another pool.
    CannotConnectMultiplePools,
    /// 324: the master domain is not a master, not of this pool, of another master version, or
    /// not active in the map.
    StoragePoolWrongMaster,
    /// 325: connect with another hostID while connected, or a connect that would downgrade the
    /// memory backend (no `domainDict`).
    StoragePoolConnected,
    /// 328: attaching a domain to a pool that holds 100 already (never on connect).
    TooManyDomainsInStoragePool,
    /// 358: the domain is not found on this host.
    StorageDomainDoesNotExist,
    /// 379: the domain is partly or entirely inaccessible.
    StorageDomainAccessError,
    /// 304: the master domain is not found (sp.py `setMasterDomain`), or no master was named.
    StoragePoolMasterNotFound,
    /// 353: the domain is not in the pool's map, or its metadata does not name the pool.
    StorageDomainNotInPool,
    /// 369: the domain is not active in the pool's map.
    StorageDomainNotActive,
    /// 375: the domain is not a member of the pool (sp.py `validatePoolSD`).
    StorageDomainNotMemberOfPool,
    /// 380: the domain's metadata names another pool.
    StorageDomainAlreadyAttached,
    /// 383: the master domain cannot be detached.
    CannotDetachMasterStorageDomain,
    /// 651: the pool manager's lease is held by another host.
    AcquireLockFailure,
    /// 653: `spmStop` while the pool manager has unfinished tasks.
    SpmStopError,
    /// 654: a pool-manager verb on a host that is not the pool manager ("Not SPM").
    SpmStatusError,
    /// 656: an operation not allowed while this host is the pool manager (disconnect).
    IsSpm,
    /// 752: the metadata's `_SHA_CKSUM` does not match its keys.
    MetaDataSealIsBroken,
    /// 753: a metadata value VDSM's decoders refuse.
    MetaDataValidationError,
    /// 2001: a metadata read failed or timed out.
    MiscFileReadException,
    /// 2002: a metadata write failed.
    MiscFileWriteException,
    /// -32700: the body is not JSON.
    ParseError,
    /// -32600: JSON, but not a JSON-RPC 2.0 request.
    InvalidRequest,
    /// -32601: no such method.
    MethodNotFound,
    /// -32602: parameters missing, of the wrong type, or out of range.
    InvalidParams,
    /// -32603: the host failed internally.
    InternalError,
    /// Any other code.
    Other(i64),
}

impl ErrorCode {
    /// The number on the wire.
    pub fn code(self) -> i64 {
        match self {
            Self::StoragePoolConnectionError => 302,
            Self::StoragePoolUnknown => 309,
            Self::CannotConnectMultiplePools => 323,
            Self::StoragePoolWrongMaster => 324,
            Self::StoragePoolConnected => 325,
            Self::TooManyDomainsInStoragePool => 328,
            Self::StorageDomainDoesNotExist => 358,
            Self::StorageDomainAccessError => 379,
            Self::StoragePoolMasterNotFound => 304,
            Self::StorageDomainNotInPool => 353,
            Self::StorageDomainNotActive => 369,
            Self::StorageDomainNotMemberOfPool => 375,
            Self::StorageDomainAlreadyAttached => 380,
            Self::CannotDetachMasterStorageDomain => 383,
            Self::AcquireLockFailure => 651,
            Self::SpmStopError => 653,
            Self::SpmStatusError => 654,
            Self::IsSpm => 656,
            Self::MetaDataSealIsBroken => 752,
            Self::MetaDataValidationError => 753,
            Self::MiscFileReadException => 2001,
            Self::MiscFileWriteException => 2002,
            Self::ParseError => -32700,
            Self::InvalidRequest => -32600,
            Self::MethodNotFound => -32601,
            Self::InvalidParams => -32602,
            Self::InternalError => -32603,
            Self::Other(code) => code,
        }
    }

    /// The code for a number on the wire.
    pub fn from_code(code: i64) -> Self {
        match code {
            302 => Self::StoragePoolConnectionError,
            309 => Self::StoragePoolUnknown,
            323 => Self::CannotConnectMultiplePools,
            324 => Self::StoragePoolWrongMaster,
            325 => Self::StoragePoolConnected,
            328 => Self::TooManyDomainsInStoragePool,
            358 => Self::StorageDomainDoesNotExist,
            379 => Self::StorageDomainAccessError,
            304 => Self::StoragePoolMasterNotFound,
            353 => Self::StorageDomainNotInPool,
            369 => Self::StorageDomainNotActive,
            375 => Self::StorageDomainNotMemberOfPool,
            380 => Self::StorageDomainAlreadyAttached,
            383 => Self::CannotDetachMasterStorageDomain,
            651 => Self::AcquireLockFailure,
            653 => Self::SpmStopError,
            654 => Self::SpmStatusError,
            656 => Self::IsSpm,
            752 => Self::MetaDataSealIsBroken,
            753 => Self::MetaDataValidationError,
            2001 => Self::MiscFileReadException,
            2002 => Self::MiscFileWriteException,
            -32700 => Self::ParseError,
            -32600 => Self::InvalidRequest,
            -32601 => Self::MethodNotFound,
            -32602 => Self::InvalidParams,
            -32603 => Self::InternalError,
            other => Self::Other(other),
        }
    }

    /// VDSM's name for the code (UpperCamelCase, fit for an event reason or a metric label).
    pub fn name(self) -> &'static str {
        match self {
            Self::StoragePoolConnectionError => "StoragePoolConnectionError",
            Self::StoragePoolUnknown => "StoragePoolUnknown",
            Self::CannotConnectMultiplePools => "CannotConnectMultiplePools",
            Self::StoragePoolWrongMaster => "StoragePoolWrongMaster",
            Self::StoragePoolConnected => "StoragePoolConnected",
            Self::TooManyDomainsInStoragePool => "TooManyDomainsInStoragePool",
            Self::StorageDomainDoesNotExist => "StorageDomainDoesNotExist",
            Self::StorageDomainAccessError => "StorageDomainAccessError",
            Self::StoragePoolMasterNotFound => "StoragePoolMasterNotFound",
            Self::StorageDomainNotInPool => "StorageDomainNotInPool",
            Self::StorageDomainNotActive => "StorageDomainNotActive",
            Self::StorageDomainNotMemberOfPool => "StorageDomainNotMemberOfPool",
            Self::StorageDomainAlreadyAttached => "StorageDomainAlreadyAttached",
            Self::CannotDetachMasterStorageDomain => "CannotDetachMasterStorageDomain",
            Self::AcquireLockFailure => "AcquireLockFailure",
            Self::SpmStopError => "SpmStopError",
            Self::SpmStatusError => "SpmStatusError",
            Self::IsSpm => "IsSpm",
            Self::MetaDataSealIsBroken => "MetaDataSealIsBroken",
            Self::MetaDataValidationError => "MetaDataValidationError",
            Self::MiscFileReadException => "MiscFileReadException",
            Self::MiscFileWriteException => "MiscFileWriteException",
            Self::ParseError => "ParseError",
            Self::InvalidRequest => "InvalidRequest",
            Self::MethodNotFound => "MethodNotFound",
            Self::InvalidParams => "InvalidParams",
            Self::InternalError => "InternalError",
            Self::Other(_) => "OtherError",
        }
    }
}

/// An error a host answers: a JSON-RPC error object with VDSM's code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("error {}: {message}", code.code())]
pub struct VdsmError {
    /// The code.
    pub code: ErrorCode,
    /// The host's message, for people.
    pub message: String,
}

impl VdsmError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A fixed string for metric labels and event reasons: the code's name.
    pub fn category(&self) -> &'static str {
        self.code.name()
    }
}

/// Why a call failed: the host answered with an error, or no usable answer came back.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The host answered with a JSON-RPC error (VDSM's code).
    #[error(transparent)]
    Vdsm(#[from] VdsmError),
    /// No answer within the call's timeout (the host may or may not have acted).
    #[error("no answer within {timeout:?}")]
    Timeout {
        /// The timeout of the call.
        timeout: Duration,
    },
    /// The request could not be sent or the answer not received (connection refused, TLS,
    /// the connection closed...).
    #[error("transport failed: {reason}")]
    Transport {
        /// What failed.
        reason: String,
    },
    /// The host refused the credential when the connection opened; it did nothing.
    #[error("credential refused by the host")]
    Unauthorized,
    /// The host answered the connection with a STOMP ERROR (a version it does not speak, a
    /// frame too large...).
    #[error("the host refused: {message}")]
    Refused {
        /// The host's message.
        message: String,
    },
    /// The answer is not a JSON-RPC response to this request.
    #[error("malformed response: {reason}")]
    BadResponse {
        /// What is wrong with it.
        reason: String,
    },
}

impl RpcError {
    /// A fixed string for metric labels and event reasons: VDSM's code name for host errors
    /// (e.g. `CannotConnectMultiplePools`), else `Timeout`, `Transport`, `Unauthorized`,
    /// `Refused` or `BadResponse`.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Vdsm(e) => e.category(),
            Self::Timeout { .. } => "Timeout",
            Self::Transport { .. } => "Transport",
            Self::Unauthorized => "Unauthorized",
            Self::Refused { .. } => "Refused",
            Self::BadResponse { .. } => "BadResponse",
        }
    }

    /// The host's error code, when the host answered with one.
    pub fn vdsm_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Vdsm(e) => Some(e.code),
            _ => None,
        }
    }

    /// Whether the host may not have received or finished the call (timeout or transport), as
    /// opposed to a definite answer.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Transport { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_code_round_trips() {
        for code in [
            302, 304, 309, 323, 324, 325, 328, 353, 358, 369, 375, 379, 380, 383, 651, 653, 654,
            656, 752, 753, 2001, 2002, -32700, -32600, -32601, -32602, -32603,
        ] {
            let typed = ErrorCode::from_code(code);
            assert!(!matches!(typed, ErrorCode::Other(_)), "{code} has a name");
            assert_eq!(typed.code(), code);
        }
        assert_eq!(ErrorCode::from_code(655), ErrorCode::Other(655));
        assert_eq!(ErrorCode::Other(655).code(), 655);
    }

    #[test]
    fn categories_are_fixed_strings() {
        let e = RpcError::from(VdsmError::new(ErrorCode::CannotConnectMultiplePools, "x"));
        assert_eq!(e.category(), "CannotConnectMultiplePools");
        assert_eq!(e.vdsm_code(), Some(ErrorCode::CannotConnectMultiplePools));
        let t = RpcError::Timeout {
            timeout: Duration::from_secs(1),
        };
        assert_eq!(t.category(), "Timeout");
        assert!(t.is_unreachable());
        assert_eq!(t.vdsm_code(), None);
    }
}
