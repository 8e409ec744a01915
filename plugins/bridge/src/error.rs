//! Everything that can go wrong in the plugin, and (in [`BridgeError::code`], the only
//! place) which CNI code each failure carries.

use crate::config::ConfigError;
use cni::{code, CniError};
use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// `prevResult` present but unreadable (code kept from the parser).
    #[error(transparent)]
    PrevResult(CniError),

    #[error(
        "failed to open netns {path:?}: no such file or directory; the pod's network \
         namespace does not exist (was the sandbox already removed?)"
    )]
    NetnsMissing { path: String },

    #[error(
        "failed to open netns {path:?}: not a network namespace ({reason}); CNI_NETNS must \
         be a path like /proc/<pid>/ns/net or /run/netns/<name>"
    )]
    NotNetns { path: String, reason: String },

    #[error("failed to open netns {path:?}: {source}")]
    Netns { path: String, source: kernel::Error },

    #[error(
        "failed to create bridge {name:?}: {name:?} already exists but is not a bridge \
         (it is {kind}); delete or rename that link, or set \"bridge\" in the network \
         config to another name"
    )]
    NotABridge { name: String, kind: String },

    #[error(
        "container veth name provided ({ifname}) already exists in netns {netns:?}; an \
         earlier attachment was not deleted (DEL it first) or CNI_IFNAME clashes with \
         another interface of the pod"
    )]
    IfnameExists { ifname: String, netns: String },

    /// The bridge's address differs from the gateway this network needs (the first
    /// sentence is the Go plugin's, word for word).
    #[error(
        "failed to set bridge addr: {bridge:?} already has an IP address different from \
         {wanted} (it has {existing}); the node's pod subnet changed or another network \
         uses this bridge: set \"forceAddress\": true to replace it, or remove it with \
         `ip addr del {existing} dev {bridge}`"
    )]
    AddressConflict {
        bridge: String,
        wanted: String,
        existing: String,
    },

    /// A VLAN operation the kernel refused because it was built without bridge VLAN
    /// filtering.
    #[error(
        "{what}: {source}; this kernel has no bridge VLAN filtering \
         (CONFIG_BRIDGE_VLAN_FILTERING): remove \"vlan\"/\"vlanTrunk\" from the network \
         config or use a kernel with that option"
    )]
    VlanUnsupported { what: String, source: kernel::Error },

    #[error("IPAM plugin returned missing IP config")]
    IpamNoIps,

    /// The IPAM plugin's own error, passed through with its code (libcni >= 1.2 unwraps
    /// typed errors, so a prefix would be lost anyway).
    #[error(transparent)]
    Ipam(CniError),

    #[error("link {ifname} has address {addr} in DADFAILED state")]
    DadFailed { ifname: String, addr: String },

    #[error(
        "IPv6 duplicate address detection on {ifname} did not finish within {secs} s \
         (address {addr} is still tentative)"
    )]
    DadTimeout {
        ifname: String,
        addr: String,
        secs: u64,
    },

    #[error("bridge port in error state: {state}")]
    PortState { state: String },

    /// A kernel operation, with what it was for.
    #[error("{what}: {source}")]
    Kernel { what: String, source: kernel::Error },

    /// A CHECK finding (texts are the Go plugin's).
    #[error("{0}")]
    Check(String),

    /// Stale state GC could not remove.
    #[error("{0}")]
    Cleanup(String),

    #[error("Required prevResult missing")]
    PrevResultMissing,

    /// STATUS: the configured bridge cannot take new pods.
    #[error(
        "bridge {name:?} exists but is not a bridge (it is {kind}); no pod can be added to \
         this network until that link is removed or \"bridge\" names another link"
    )]
    StatusNotABridge { name: String, kind: String },

    /// STATUS: the bridge is administratively down; pods on it have no connectivity.
    #[error(
        "bridge {name:?} is down: pods attached to it have no connectivity; bring it up \
         with `ip link set {name} up` (the next ADD also does)"
    )]
    StatusBridgeDown { name: String },
}

impl BridgeError {
    pub fn kernel(what: impl Into<String>, source: kernel::Error) -> Self {
        BridgeError::Kernel {
            what: what.into(),
            source,
        }
    }

    pub fn code(&self) -> u32 {
        match self {
            BridgeError::Config(_) | BridgeError::NotABridge { .. } => code::INVALID_CONFIG,
            BridgeError::AddressConflict { .. } | BridgeError::VlanUnsupported { .. } => {
                code::INVALID_CONFIG
            }
            BridgeError::PrevResult(e) | BridgeError::Ipam(e) => e.code,
            // CNI_NETNS does not name a usable namespace: the runtime passed a bad value.
            BridgeError::NetnsMissing { .. } | BridgeError::NotNetns { .. } => code::INVALID_ENV,
            BridgeError::StatusNotABridge { .. } => code::NOT_AVAILABLE,
            BridgeError::StatusBridgeDown { .. } => code::NOT_AVAILABLE_LIMITED,
            BridgeError::Kernel { source, .. } | BridgeError::Netns { source, .. }
                if is_transient(source) =>
            {
                code::TRY_AGAIN_LATER
            }
            _ => code::INTERNAL,
        }
    }
}

/// Failures a retry can cure: a dump kept being interrupted by concurrent changes, or
/// the kernel was momentarily out of resources.
fn is_transient(e: &kernel::Error) -> bool {
    matches!(e, kernel::Error::DumpInterrupted { .. })
        || matches!(
            e.errno(),
            Some(Errno::EAGAIN | Errno::EBUSY | Errno::ENOBUFS)
        )
}

impl From<BridgeError> for CniError {
    fn from(e: BridgeError) -> CniError {
        match e {
            BridgeError::PrevResult(c) | BridgeError::Ipam(c) => c,
            other => CniError::new(other.code(), other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nl(errno: Errno) -> kernel::Error {
        kernel::Error::Netlink {
            op: "create veth",
            object: "x".into(),
            errno,
            kernel_msg: None,
        }
    }

    #[test]
    fn codes() {
        assert_eq!(BridgeError::from(ConfigError::VlanAndTrunk).code(), 7);
        assert_eq!(
            BridgeError::NetnsMissing { path: "/x".into() }.code(),
            code::INVALID_ENV
        );
        assert_eq!(BridgeError::kernel("x", nl(Errno::EPERM)).code(), 999);
        assert_eq!(BridgeError::kernel("x", nl(Errno::EBUSY)).code(), 11);
        let ipam = CniError::new(11, "later").with_details("d");
        let c: CniError = BridgeError::Ipam(ipam.clone()).into();
        assert_eq!(c, ipam, "IPAM errors pass through unchanged");
        assert_eq!(
            BridgeError::StatusNotABridge {
                name: "b".into(),
                kind: "a dummy link".into()
            }
            .code(),
            50
        );
        assert_eq!(
            BridgeError::StatusBridgeDown { name: "b".into() }.code(),
            51
        );
    }

    #[test]
    fn address_conflict_keeps_the_go_sentence() {
        let e = BridgeError::AddressConflict {
            bridge: "cni0".into(),
            wanted: "10.244.2.1/24".into(),
            existing: "10.244.1.1/24".into(),
        };
        let msg = e.to_string();
        assert!(msg.starts_with(
            r#"failed to set bridge addr: "cni0" already has an IP address different from 10.244.2.1/24"#
        ));
        assert!(msg.contains("forceAddress") && msg.contains("10.244.1.1/24"));
    }
}
