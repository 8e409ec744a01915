//! Kernel operations for the CNI plugins and the overlay agent: network
//! namespaces, synchronous rtnetlink, sysctls and nftables rules.
//!
//! Nothing here knows about CNI configuration. Each side effect sits behind a
//! trait ([`Netlink`], [`Sysctl`], [`Firewall`]) with a real implementation
//! ([`RouteSocket`], [`ProcSysctl`], [`NftFirewall`]) and, with the `fake`
//! feature, an in-memory one (`fake` module) for unit tests without root.
//!
//! Namespace discipline: open a [`NetNs`], then either open a
//! [`RouteSocket::open_in`] it (the socket stays bound to it) or run code in
//! it with [`run_in_netns`], which uses a throw-away thread so no thread of
//! the caller is ever left inside a pod namespace.

mod child;
pub mod error;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod firewall;
pub mod netlink;
pub mod netns;
pub mod sched;
pub mod sysctl;

pub use error::{Error, Result};
pub use firewall::{Firewall, NftFirewall};
pub use netlink::{Netlink, RouteSocket};
pub use netns::{run_in_netns, NetNs, NetnsGuard};
pub use sysctl::{ProcSysctl, Sysctl, SysctlKey};
