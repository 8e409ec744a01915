//! Packet-filter rules the bridge plugin installs: per-container ip-masq
//! (nftables, plus removal of the Go plugin's legacy iptables chains) and
//! MAC spoof checking.
//!
//! Two implementations, interchangeable on a live node (same tables, chains,
//! rules and comments as the Go plugins v1.6+):
//! - [`NfnlFirewall`] (the default, see [`default_firewall`]) speaks
//!   nf_tables netlink directly: one read and at most one atomic
//!   transaction per operation, no process spawned.
//! - [`NftFirewall`] builds libnftables JSON and applies each change as one
//!   atomic `nft -j -f -` transaction; selected with
//!   `CNI_RS_FIREWALL=nft-exec`.
//!
//! Both act on the network namespace of the calling thread.
//!
//! The overlay agent's own rules (ip-masq and FORWARD accept for the cluster network)
//! are in `agent_rules` ([`AgentFirewall`], [`NftAgentFirewall`]).

mod agent_rules;
mod naming;
mod nfnl;
mod nfnl_select;
mod nfnl_socket;
#[cfg(test)]
mod nfnl_testdata;
mod nfnl_wire;
mod nft;

pub use agent_rules::{AgentFirewall, AgentRules, NftAgentFirewall};
pub use naming::*;
pub use nfnl::NfnlFirewall;
pub use nfnl_select::{default_firewall, DefaultFirewall, FIREWALL_ENV};
pub use nft::NftFirewall;

use ipnet::IpNet;

use crate::error::Result;
use crate::netlink::MacAddr;

/// One container interface on one network: the key of its rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
}

/// An attachment that is still in use, as listed in a CNI GC request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GcAttachment {
    pub container_id: String,
    pub ifname: String,
}

/// Inputs of the MAC spoof check for one attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacSpoofCheck<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    /// Host end of the veth: frames entering the bridge from it are checked.
    pub host_veth: &'a str,
    /// The only source MAC the container may use.
    pub mac: MacAddr,
}

/// Firewall effects of the bridge plugin. All operations are idempotent:
/// setting up twice leaves one copy of each rule, and tearing down what is
/// not there succeeds.
pub trait Firewall {
    /// Masquerades traffic from each address to anything outside its subnet
    /// (multicast excepted). `ips` carry the subnet prefix with host bits
    /// kept, e.g. `10.244.1.5/24`. Replaces the attachment's earlier rules.
    fn setup_masq(&self, attachment: &Attachment<'_>, ips: &[IpNet]) -> Result<()>;

    /// [`Self::setup_masq`] for a new attachment, whose interface or addresses the caller
    /// has just created: no rules of it can exist yet (an ADD that got as far as its rules
    /// left the interface and its addresses behind, and a repeated ADD fails on either:
    /// the bridge plugin's IPAM refuses a second allocation for the same container and
    /// interface), so the attachment's earlier rules need not be looked for. The netlink implementation then
    /// reads only `postrouting` instead of every pod's rules, which made an ADD's cost grow
    /// with the number of pods on the node. Were a rule left over all the same, the copy
    /// is harmless (same match and verdict) and DEL and GC remove every copy.
    fn setup_masq_new(&self, attachment: &Attachment<'_>, ips: &[IpNet]) -> Result<()> {
        self.setup_masq(attachment, ips)
    }

    /// Removes the attachment's masquerade rules, found by comment, so it
    /// works without the IPs (DEL after the pod namespace is gone).
    fn teardown_masq(&self, attachment: &Attachment<'_>) -> Result<()>;

    /// Removes the masquerade rules of `network` whose attachment is not in
    /// `valid`; returns how many rules were removed. The netlink implementation
    /// also removes the Go plugin's iptables `CNI-…` chains of containers not
    /// in `valid` (pods added before the node switched to us); the `nft` exec
    /// one cannot, since `nft -j` hides iptables-nft's comments, the only
    /// place the container ID is.
    fn gc_masq(&self, network: &str, valid: &[GcAttachment]) -> Result<usize>;

    /// Removes the Go plugin's iptables masquerade for a container (chain
    /// `CNI-<hash>` in the iptables-nft `nat` tables and the POSTROUTING
    /// rules jumping to it). Returns whether anything was found.
    fn teardown_legacy_iptables_masq(&self, network: &str, container_id: &str) -> Result<bool>;

    /// Drops frames from `host_veth` whose source MAC is not `mac`.
    fn setup_mac_spoof_check(&self, check: &MacSpoofCheck<'_>) -> Result<()>;

    /// Removes the attachment's spoof-check chains and rules.
    fn teardown_mac_spoof_check(&self, container_id: &str, ifname: &str) -> Result<()>;
}
