//! Choice of the [`Firewall`] implementation plugins use.
//!
//! [`default_firewall`] returns the netlink implementation unless the
//! environment variable [`FIREWALL_ENV`] says `nft-exec`, which selects the
//! `nft` binary instead (a fallback, and a cross-check when debugging rule
//! differences).

use ipnet::IpNet;

use super::{Attachment, Firewall, GcAttachment, MacSpoofCheck, NfnlFirewall, NftFirewall};
use crate::error::Result;

/// Environment variable selecting the implementation: `nft-exec` for
/// [`NftFirewall`]; unset, empty, `netlink` (or anything else) for
/// [`NfnlFirewall`].
pub const FIREWALL_ENV: &str = "CNI_RS_FIREWALL";

/// The implementation [`default_firewall`] picked.
#[derive(Debug, Clone)]
pub enum DefaultFirewall {
    Netlink(NfnlFirewall),
    Exec(NftFirewall),
}

impl DefaultFirewall {
    /// Selects by the value of [`FIREWALL_ENV`] (None = unset).
    pub fn from_setting(setting: Option<&str>) -> Self {
        match setting.map(str::trim) {
            Some("nft-exec") => DefaultFirewall::Exec(NftFirewall::new()),
            _ => DefaultFirewall::Netlink(NfnlFirewall::new()),
        }
    }

    fn inner(&self) -> &dyn Firewall {
        match self {
            DefaultFirewall::Netlink(f) => f,
            DefaultFirewall::Exec(f) => f,
        }
    }
}

/// The firewall plugins should use: nf_tables over netlink, or `nft` when
/// `CNI_RS_FIREWALL=nft-exec`.
pub fn default_firewall() -> DefaultFirewall {
    DefaultFirewall::from_setting(std::env::var(FIREWALL_ENV).ok().as_deref())
}

impl Firewall for DefaultFirewall {
    fn setup_masq_new(&self, attachment: &Attachment<'_>, ips: &[IpNet]) -> Result<()> {
        self.inner().setup_masq_new(attachment, ips)
    }

    fn setup_masq(&self, attachment: &Attachment<'_>, ips: &[IpNet]) -> Result<()> {
        self.inner().setup_masq(attachment, ips)
    }

    fn teardown_masq(&self, attachment: &Attachment<'_>) -> Result<()> {
        self.inner().teardown_masq(attachment)
    }

    fn gc_masq(&self, network: &str, valid: &[GcAttachment]) -> Result<usize> {
        self.inner().gc_masq(network, valid)
    }

    fn teardown_legacy_iptables_masq(&self, network: &str, container_id: &str) -> Result<bool> {
        self.inner()
            .teardown_legacy_iptables_masq(network, container_id)
    }

    fn setup_mac_spoof_check(&self, check: &MacSpoofCheck<'_>) -> Result<()> {
        self.inner().setup_mac_spoof_check(check)
    }

    fn teardown_mac_spoof_check(&self, container_id: &str, ifname: &str) -> Result<()> {
        self.inner().teardown_mac_spoof_check(container_id, ifname)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection() {
        for s in [None, Some(""), Some("netlink"), Some("nfnl"), Some("bogus")] {
            assert!(
                matches!(
                    DefaultFirewall::from_setting(s),
                    DefaultFirewall::Netlink(_)
                ),
                "{s:?}"
            );
        }
        assert!(matches!(
            DefaultFirewall::from_setting(Some("nft-exec")),
            DefaultFirewall::Exec(_)
        ));
    }
}
