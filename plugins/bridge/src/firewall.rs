//! The firewall the plugin uses on a real node: `kernel`'s default one (nf_tables over
//! netlink; `nft` when `CNI_RS_FIREWALL=nft-exec`), with Go-identical table, chain and
//! comment names, so Go and Rust DELs remove each other's rules. GC additionally lists
//! the spoof checks, through `nft`.

use crate::system::SpoofCheckRef;
use ipnet::IpNet;
use kernel::firewall::{
    default_firewall, Attachment, DefaultFirewall, GcAttachment, MacSpoofCheck,
    SPOOFCHK_PREROUTING, SPOOFCHK_TABLE,
};
use kernel::{Firewall, NftFirewall};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Lists the macspoofchk attachments present, for GC.
pub trait SpoofCheckLister {
    fn spoof_checks(&self) -> kernel::Result<Vec<SpoofCheckRef>>;
}

#[derive(Debug, Clone)]
pub struct PluginFirewall {
    inner: DefaultFirewall,
    /// Only for locating the `nft` binary GC lists spoof checks with; looked up on first
    /// use, since a search of PATH on every ADD and DEL would be wasted.
    nft: OnceLock<NftFirewall>,
}

impl Default for PluginFirewall {
    fn default() -> Self {
        Self::new()
    }
}

impl PluginFirewall {
    pub fn new() -> Self {
        PluginFirewall {
            inner: default_firewall(),
            nft: OnceLock::new(),
        }
    }
}

impl Firewall for PluginFirewall {
    fn setup_masq(&self, attachment: &Attachment<'_>, ips: &[IpNet]) -> kernel::Result<()> {
        self.inner.setup_masq(attachment, ips)
    }

    fn setup_masq_new(&self, attachment: &Attachment<'_>, ips: &[IpNet]) -> kernel::Result<()> {
        self.inner.setup_masq_new(attachment, ips)
    }

    fn teardown_masq(&self, attachment: &Attachment<'_>) -> kernel::Result<()> {
        self.inner.teardown_masq(attachment)
    }

    fn gc_masq(&self, network: &str, valid: &[GcAttachment]) -> kernel::Result<usize> {
        self.inner.gc_masq(network, valid)
    }

    fn teardown_legacy_iptables_masq(
        &self,
        network: &str,
        container_id: &str,
    ) -> kernel::Result<bool> {
        self.inner
            .teardown_legacy_iptables_masq(network, container_id)
    }

    fn setup_mac_spoof_check(&self, check: &MacSpoofCheck<'_>) -> kernel::Result<()> {
        self.inner.setup_mac_spoof_check(check)
    }

    fn teardown_mac_spoof_check(&self, container_id: &str, ifname: &str) -> kernel::Result<()> {
        self.inner.teardown_mac_spoof_check(container_id, ifname)
    }
}

impl SpoofCheckLister for PluginFirewall {
    fn spoof_checks(&self) -> kernel::Result<Vec<SpoofCheckRef>> {
        const OP: &str = "list mac spoof checks";
        let program = self.nft.get_or_init(NftFirewall::new).program();
        let out = Command::new(program)
            .args([
                "-j",
                "list",
                "chain",
                "bridge",
                SPOOFCHK_TABLE,
                SPOOFCHK_PREROUTING,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| kernel::Error::Spawn {
                op: OP,
                program: program.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if stderr.contains("No such file or directory") {
                return Ok(Vec::new());
            }
            return Err(kernel::Error::Nft {
                op: OP,
                program: program.display().to_string(),
                status: out.status.to_string(),
                stderr,
            });
        }
        let out = out.stdout;
        let listing: Value =
            serde_json::from_slice(&out).map_err(|e| kernel::Error::NftOutput {
                op: OP,
                reason: e.to_string(),
            })?;
        Ok(spoof_checks_of(&listing))
    }
}

/// The attachments behind the PREROUTING jump rules of a `nft -j list chain bridge nat
/// PREROUTING` answer: comment `macspoofchk-<ref>`, match `iifname "<veth>"`.
pub fn spoof_checks_of(listing: &Value) -> Vec<SpoofCheckRef> {
    let items = listing.get("nftables").and_then(Value::as_array);
    let mut out: Vec<SpoofCheckRef> = Vec::new();
    for rule in items.into_iter().flatten().filter_map(|i| i.get("rule")) {
        let Some(ref_id) = rule
            .get("comment")
            .and_then(Value::as_str)
            .and_then(|c| c.strip_prefix("macspoofchk-"))
        else {
            continue;
        };
        let host_veth = rule
            .get("expr")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|e| {
                let m = e.get("match")?;
                (m.pointer("/left/meta/key")? == "iifname")
                    .then(|| m.get("right")?.as_str().map(str::to_owned))?
            });
        if !out.iter().any(|s| s.ref_id == ref_id) {
            out.push(SpoofCheckRef {
                ref_id: ref_id.to_owned(),
                host_veth,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spoof_check_listing() {
        let listing = json!({"nftables": [
            {"metainfo": {}},
            {"chain": {"family": "bridge", "table": "nat", "name": "PREROUTING"}},
            {"rule": {"family": "bridge", "table": "nat", "chain": "PREROUTING", "handle": 4,
                "comment": "macspoofchk-abc-eth0",
                "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "veth01234567"}},
                         {"jump": {"target": "cni-br-iface-abc-eth0"}}]}},
            {"rule": {"family": "bridge", "table": "nat", "chain": "PREROUTING", "handle": 5,
                "comment": "someone else", "expr": []}},
        ]});
        assert_eq!(
            spoof_checks_of(&listing),
            vec![SpoofCheckRef {
                ref_id: "abc-eth0".into(),
                host_veth: Some("veth01234567".into())
            }]
        );
        assert!(spoof_checks_of(&json!({})).is_empty());
    }
}
