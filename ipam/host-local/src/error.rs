//! The one error type of the crate. Every variant knows its CNI error code, so the binary can turn
//! any failure into `{"code":N,"msg":...}` in one place.
//!
//! Messages that the Go plugin also produces are spelled exactly like Go's, because runtimes and
//! users grep for them (e.g. `no IP addresses available in range set: ...`).

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

/// CNI error codes used by this crate (spec §"Error").
pub mod code {
    /// Invalid or missing environment / identifiers (container ID, ifname).
    pub const INVALID_ENV: u32 = 4;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Transient condition, the runtime should retry later (pool exhausted).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: plugin not available.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Anything else; what Go's skel uses for untyped errors.
    pub const INTERNAL: u32 = 999;
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("IPAM config missing 'ipam' key")]
    MissingIpam,

    #[error("no IP ranges specified")]
    NoRanges,

    /// `reason` is the text of the range or range-set check that failed, worded like Go's.
    #[error("invalid range set {index}: {reason}")]
    InvalidRangeSet { index: usize, reason: String },

    #[error("range set {first} overlaps with {second}")]
    RangeSetsOverlap { first: usize, second: usize },

    #[error("CNI version {version} does not support more than 1 address per family")]
    TooManyAddressesPerFamily { version: String },

    /// A key has the wrong JSON type or an unparsable value; `field` is its JSON path.
    #[error("invalid IPAM config: {field}: {reason}")]
    InvalidField { field: String, reason: String },

    #[error("invalid network name {name:?}: {reason}")]
    InvalidNetworkName { name: String, reason: String },

    #[error("invalid container ID {id:?}: {reason}")]
    InvalidContainerId { id: String, reason: String },

    #[error("invalid interface name {name:?}: {reason}")]
    InvalidIfname { name: String, reason: String },

    #[error("failed to read resolvConf {}: {source}", path.display())]
    ResolvConf { path: PathBuf, source: io::Error },

    /// Wraps the cause of a failed range-set allocation; the code is the cause's code.
    #[error("failed to allocate for range {index}: {source}")]
    Allocate {
        index: usize,
        source: Box<IpamError>,
    },

    #[error("no IP addresses available in range set: {range_set}")]
    Exhausted { range_set: String },

    #[error("{ip} has been allocated to {container_id}, duplicate allocation is not allowed")]
    DuplicateAllocation { ip: IpAddr, container_id: String },

    #[error("{ip} not in range set {range_set}")]
    NotInRangeSet { ip: IpAddr, range_set: String },

    #[error("requested ip {ip} is subnet's gateway")]
    RequestedGateway { ip: IpAddr },

    #[error("requested IP address {ip} is not available in range set {range_set}")]
    RequestedUnavailable { ip: IpAddr, range_set: String },

    #[error("failed to allocate all requested IPs:{}", join_ips(ips))]
    RequestedUnmatched { ips: Vec<IpAddr> },

    #[error("host-local: Failed to find address added by container {container_id}")]
    NotFound { container_id: String },

    /// Several independent failures (DEL and GC keep going and report them all).
    #[error("{}", messages.join("; "))]
    Multiple { messages: Vec<String> },

    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("{} is a symbolic link; refusing to follow it (host-local state must be a real directory)", path.display())]
    Symlink { path: PathBuf },

    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },

    /// STATUS failure: the store cannot serve an ADD right now.
    #[error("host-local is not available: {source}")]
    Unavailable { source: Box<IpamError> },
}

fn join_ips(ips: &[IpAddr]) -> String {
    ips.iter().map(|ip| format!(" {ip}")).collect()
}

impl IpamError {
    /// The CNI error code to report for this error.
    pub fn code(&self) -> u32 {
        use IpamError::*;
        match self {
            MissingIpam
            | NoRanges
            | InvalidRangeSet { .. }
            | RangeSetsOverlap { .. }
            | TooManyAddressesPerFamily { .. }
            | InvalidField { .. }
            | InvalidNetworkName { .. }
            | NotInRangeSet { .. }
            | RequestedGateway { .. }
            | RequestedUnmatched { .. } => code::INVALID_CONFIG,
            InvalidContainerId { .. } | InvalidIfname { .. } => code::INVALID_ENV,
            Exhausted { .. } => code::TRY_AGAIN_LATER,
            Unavailable { .. } => code::NOT_AVAILABLE,
            Allocate { source, .. } => source.code(),
            ResolvConf { .. }
            | DuplicateAllocation { .. }
            | RequestedUnavailable { .. }
            | NotFound { .. }
            | Multiple { .. }
            | Io { .. }
            | Symlink { .. }
            | NotADirectory { .. } => code::INTERNAL,
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<io::Error>,
    ) -> Self {
        IpamError::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let exhausted = IpamError::Exhausted {
            range_set: "10.0.0.2-10.0.0.254".into(),
        };
        assert_eq!(exhausted.code(), 11);
        let wrapped = IpamError::Allocate {
            index: 0,
            source: Box::new(exhausted),
        };
        assert_eq!(wrapped.code(), 11);
        assert_eq!(
            wrapped.to_string(),
            "failed to allocate for range 0: no IP addresses available in range set: 10.0.0.2-10.0.0.254"
        );
        assert_eq!(IpamError::NoRanges.code(), 7);
        assert_eq!(
            IpamError::InvalidContainerId {
                id: "x".into(),
                reason: "r".into()
            }
            .code(),
            4
        );
        let unavailable = IpamError::Unavailable {
            source: Box::new(IpamError::io("open", "/x", io::ErrorKind::PermissionDenied)),
        };
        assert_eq!(unavailable.code(), 50);
        assert_eq!(IpamError::Multiple { messages: vec![] }.code(), 999);
    }

    #[test]
    fn unmatched_requested_ips_message() {
        let e = IpamError::RequestedUnmatched {
            ips: vec!["10.0.0.9".parse().unwrap(), "fd00::9".parse().unwrap()],
        };
        assert_eq!(
            e.to_string(),
            "failed to allocate all requested IPs: 10.0.0.9 fd00::9"
        );
    }
}
