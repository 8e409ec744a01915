//! The crate's single error type.
//!
//! Every variant names the operation, the object it was applied to and the
//! cause, so a message read in a kubelet log is enough to tell what failed.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a kernel operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The namespace path does not exist (ENOENT). CNI DEL treats this as
    /// "already gone", so it is kept apart from [`Error::NotNetns`].
    #[error("open network namespace {path:?}: no such file or directory")]
    NetnsNotFound { path: PathBuf },

    /// The path exists but is not a network namespace (a plain file left in
    /// /run/netns, a mount namespace, ...).
    #[error("open network namespace {path:?}: not a network namespace: {reason}")]
    NotNetns { path: PathBuf, reason: String },

    /// A namespace syscall (open, setns, unshare) failed.
    #[error("{op} network namespace {path:?}: {errno}")]
    Netns {
        op: &'static str,
        path: PathBuf,
        errno: Errno,
    },

    /// The kernel answered a netlink request with an error code.
    #[error("{op} {object}: {errno}{}", kernel_msg.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Netlink {
        op: &'static str,
        object: String,
        errno: Errno,
        /// The extended-ACK text the kernel attached, when it did.
        kernel_msg: Option<String>,
    },

    /// A dump kept being interrupted by concurrent changes (NLM_F_DUMP_INTR).
    #[error("{op} {object}: dump interrupted by concurrent changes {attempts} times in a row")]
    DumpInterrupted {
        op: &'static str,
        object: String,
        attempts: u32,
    },

    /// The kernel's reply could not be decoded or did not follow the protocol.
    #[error("{op} {object}: unexpected netlink reply: {reason}")]
    Protocol {
        op: &'static str,
        object: String,
        reason: String,
    },

    /// An argument was rejected before reaching the kernel.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },

    /// Reading or writing /proc/sys failed.
    #[error("{op} sysctl {key}: {source}")]
    Sysctl {
        op: &'static str,
        key: String,
        #[source]
        source: io::Error,
    },

    /// A helper program (nft) or thread could not be started or waited for.
    #[error("{op}: cannot run {program}: {source}")]
    Spawn {
        op: &'static str,
        program: String,
        #[source]
        source: io::Error,
    },

    /// nft ran and failed.
    #[error("{op}: {program} exited with {status}: {stderr}")]
    Nft {
        op: &'static str,
        program: String,
        status: String,
        stderr: String,
    },

    /// nft's JSON output could not be understood.
    #[error("{op}: cannot parse nft output: {reason}")]
    NftOutput { op: &'static str, reason: String },
}

impl Error {
    /// The kernel errno behind this error, if there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Netns { errno, .. } | Error::Netlink { errno, .. } => Some(*errno),
            Error::NetnsNotFound { .. } => Some(Errno::ENOENT),
            Error::Sysctl { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }

    /// The object already exists (EEXIST): callers creating a shared bridge or
    /// re-adding an address race with each other and tolerate this.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(Errno::EEXIST)
    }

    /// The object (namespace, link, address, route, neighbour, VLAN, sysctl)
    /// does not exist. The kernel spells this differently per object type:
    /// ENODEV for links, EADDRNOTAVAIL for addresses, ESRCH for routes and
    /// ENOENT for neighbours, VLANs and files.
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::NetnsNotFound { .. } => true,
            _ => matches!(
                self.errno(),
                Some(Errno::ENOENT | Errno::ENODEV | Errno::ESRCH | Errno::EADDRNOTAVAIL)
            ),
        }
    }

    pub(crate) fn invalid(
        what: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            what,
            value: value.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_errno() {
        let e = Error::Netlink {
            op: "create bridge",
            object: "link \"cni0\"".into(),
            errno: Errno::EEXIST,
            kernel_msg: None,
        };
        assert!(e.is_exists());
        assert!(!e.is_not_found());
        assert_eq!(
            e.to_string(),
            "create bridge link \"cni0\": EEXIST: File exists"
        );

        for errno in [
            Errno::ENOENT,
            Errno::ENODEV,
            Errno::ESRCH,
            Errno::EADDRNOTAVAIL,
        ] {
            let e = Error::Netlink {
                op: "delete",
                object: "x".into(),
                errno,
                kernel_msg: Some("Cannot find device".into()),
            };
            assert!(e.is_not_found(), "{errno}");
            assert!(e.to_string().ends_with("(Cannot find device)"));
        }
        let e = Error::NetnsNotFound {
            path: "/run/netns/x".into(),
        };
        assert!(e.is_not_found());
        assert!(e.to_string().contains("/run/netns/x"));
        let e = Error::NotNetns {
            path: "/tmp/f".into(),
            reason: "unknown FS magic 0xef53".into(),
        };
        assert!(!e.is_not_found());
    }
}
