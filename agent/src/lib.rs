//! A flanneld-compatible overlay agent.
//!
//! Layout (data flows top to bottom):
//! - [`config`]: the network config, flanneld's keys/defaults/validation (pure);
//! - [`lease`]: lease keys and value JSON in flanneld's exact format (pure);
//! - [`allocator`]: which subnet to take (pure);
//! - [`store`]: the lease store interface, with the embedded [`store::file`] store and
//!   the [`store::etcd`] v3 store;
//! - [`peers`]: the peer set and its Added/Removed events (pure);
//! - [`backend`]: the vxlan and host-gw data planes over `kernel::netlink::Netlink`;
//! - [`subnet_env`]: subnet.env for the CNI plugin;
//! - [`iface`], [`health`], [`agent`] (the loop), and the `flanneld` binary.

pub mod agent;
pub mod allocator;
pub mod backend;
pub mod config;
pub mod health;
pub mod iface;
pub mod lease;
pub mod log;
pub mod peers;
pub mod store;
pub mod subnet_env;
