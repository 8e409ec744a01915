//! The `bridge` CNI plugin: a drop-in replacement for the Go reference plugin
//! (containernetworking/plugins `plugins/main/bridge`), configured by the same keys,
//! producing the same results and the same host state (link, rule and chain names), so
//! pods added by one are deleted cleanly by the other.
//!
//! Layout: [`config`] parses and validates (pure); [`add`], [`del`], [`check`] and
//! [`status`] are the verbs, written against the [`system::System`] seam (kernel traits
//! plus pod namespaces), so they are unit-tested with `kernel`'s fakes; [`RealSystem`]
//! and [`firewall::PluginFirewall`] are the only wiring to the real machine.

pub mod add;
pub mod check;
pub mod config;
pub mod del;
pub mod error;
pub mod firewall;
pub mod plan;
pub mod status;
pub mod system;

#[cfg(test)]
mod tests;

pub use config::BridgeConf;
pub use error::BridgeError;
pub use system::{Pod, RealSystem, System};

use cni::{CniError, CniResult, Plugin, Request};
use firewall::PluginFirewall;

/// Index of the container interface among the interfaces this plugin reports
/// (`[bridge, host veth, container]`); every IP points at it.
pub const POD_IFINDEX_IN_RESULT: usize = 2;

/// The plugin as the binary runs it.
pub struct BridgePlugin;

impl BridgePlugin {
    fn system() -> RealSystem<PluginFirewall> {
        RealSystem::new(PluginFirewall::new())
    }
}

impl Plugin for BridgePlugin {
    fn name(&self) -> &'static str {
        "bridge"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        add::add(&Self::system(), req)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        del::del(&Self::system(), req)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        check::check(&Self::system(), req)
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        status::status(&Self::system(), req)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        status::gc(&Self::system(), req)
    }
}

/// Maps a failure to open `CNI_NETNS` to the plugin's error.
pub(crate) fn netns_error(path: &str, e: kernel::Error) -> BridgeError {
    match e {
        kernel::Error::NetnsNotFound { .. } => BridgeError::NetnsMissing {
            path: path.to_owned(),
        },
        kernel::Error::NotNetns { reason, .. } => BridgeError::NotNetns {
            path: path.to_owned(),
            reason,
        },
        other => BridgeError::Netns {
            path: path.to_owned(),
            source: other,
        },
    }
}

pub(crate) fn open_pod(sys: &dyn System, path: &str) -> Result<Box<dyn Pod + Send>, BridgeError> {
    sys.open_pod(path).map_err(|e| netns_error(path, e))
}
