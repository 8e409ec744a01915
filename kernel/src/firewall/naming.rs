//! Table, chain and comment names shared with the Go reference plugins.
//!
//! These strings are the interface between plugin versions: a pod set up by
//! the Go bridge plugin is torn down by ours (and the reverse) only if both
//! compute exactly the same names.

use sha2::{Digest, Sha512};

/// nftables ip-masq table (family `inet`).
pub const MASQ_TABLE: &str = "cni_plugins_masquerade";
/// Regular chain holding the per-IP masquerade rules.
pub const MASQ_CHAIN: &str = "masq_checks";
/// Base chain (nat hook postrouting, priority srcnat) jumping to MASQ_CHAIN.
pub const MASQ_POSTROUTING: &str = "postrouting";
/// libnftables' comment limit (knftables CommentLengthMax).
pub const COMMENT_MAX: usize = 128;
/// Length of the `<h16(network)>-<h16(ifname:containerID)>` comment prefix.
pub const MASQ_INSTANCE_HASH_LEN: usize = 33;

/// macspoofchk table (family `bridge`) and its base chain.
pub const SPOOFCHK_TABLE: &str = "nat";
pub const SPOOFCHK_PREROUTING: &str = "PREROUTING";

/// The first `len` hex digits of sha512(`input`).
pub fn sha512_hex(input: &str, len: usize) -> String {
    let digest = Sha512::digest(input.as_bytes());
    let mut hex = String::with_capacity(128);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex.truncate(len);
    hex
}

/// `h16(network)`: every masq comment of a network starts with this and `-`.
pub fn masq_network_hash(network: &str) -> String {
    sha512_hex(network, 16)
}

/// `h16(network)-h16(ifname:containerID)`, the prefix identifying one
/// attachment's rules.
pub fn masq_instance_hash(network: &str, container_id: &str, ifname: &str) -> String {
    format!(
        "{}-{}",
        masq_network_hash(network),
        sha512_hex(&format!("{ifname}:{container_id}"), 16)
    )
}

/// The comment on every masquerade rule of an attachment. Quotes are
/// stripped (they would end the comment in nft syntax) and the result cut at
/// 128 bytes (on a character boundary; names valid under CNI are ASCII).
pub fn masq_comment(network: &str, container_id: &str, ifname: &str) -> String {
    let strip = |s: &str| s.replace('"', "");
    let mut comment = format!(
        "{}, net: {}, if: {}, id: {}",
        masq_instance_hash(network, container_id, ifname),
        strip(network),
        strip(ifname),
        strip(container_id)
    );
    if comment.len() > COMMENT_MAX {
        let mut cut = COMMENT_MAX;
        while !comment.is_char_boundary(cut) {
            cut -= 1;
        }
        comment.truncate(cut);
    }
    comment
}

/// The hashes at the start of a masq comment: `(network hash, instance
/// hash)`, or None if the comment was not written by a CNI plugin.
pub fn parse_masq_comment(comment: &str) -> Option<(&str, &str)> {
    let instance = comment.get(..MASQ_INSTANCE_HASH_LEN)?;
    let (net, att) = instance.split_once('-')?;
    let is_hex = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let rest = &comment[MASQ_INSTANCE_HASH_LEN..];
    if !is_hex(net) || !is_hex(att) || !(rest.is_empty() || rest.starts_with(',')) {
        return None;
    }
    Some((net, instance))
}

/// Legacy iptables chain of a container: `CNI-` + 24 hex digits of
/// sha512(network + containerID), 28 characters in all.
pub fn legacy_masq_chain(network: &str, container_id: &str) -> String {
    format!(
        "CNI-{}",
        sha512_hex(&format!("{network}{container_id}"), 24)
    )
}

/// Legacy iptables comment, `name: "<network>" id: "<containerID>"` (Go %q;
/// the CNI name/ID character set needs no escaping, where Rust's `{:?}`
/// agrees).
pub fn legacy_masq_comment(network: &str, container_id: &str) -> String {
    format!("name: {network:?} id: {container_id:?}")
}

/// The container whose legacy iptables masquerade a POSTROUTING rule is: the rule carries
/// the Go comment of `network` and a container ID, and jumps to that container's legacy
/// chain. `None` for every other rule (other networks, other tools), so GC can only ever
/// remove what the Go plugin made for this network.
pub fn legacy_masq_owner(network: &str, comment: &str, jump: Option<&str>) -> Option<String> {
    let id = comment
        .strip_prefix(&format!("name: {network:?} id: \""))?
        .strip_suffix('"')?;
    if id.is_empty() || id.contains('"') {
        return None;
    }
    (jump == Some(legacy_masq_chain(network, id).as_str())).then(|| id.to_owned())
}

/// `<containerID>-<ifname>`, the macspoofchk reference id.
fn spoofchk_ref(container_id: &str, ifname: &str) -> String {
    format!("{container_id}-{ifname}")
}

/// Per-attachment chain PREROUTING jumps to.
pub fn spoofchk_iface_chain(container_id: &str, ifname: &str) -> String {
    format!("cni-br-iface-{}", spoofchk_ref(container_id, ifname))
}

/// Chain holding the allowed source MAC and the final drop.
pub fn spoofchk_mac_chain(container_id: &str, ifname: &str) -> String {
    format!("{}-mac", spoofchk_iface_chain(container_id, ifname))
}

/// Comment on every macspoofchk rule of an attachment.
pub fn spoofchk_comment(container_id: &str, ifname: &str) -> String {
    format!("macspoofchk-{}", spoofchk_ref(container_id, ifname))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_owner_only_for_this_networks_go_jumps() {
        let chain = legacy_masq_chain("cbr0", "abc");
        let comment = legacy_masq_comment("cbr0", "abc");
        assert_eq!(
            legacy_masq_owner("cbr0", &comment, Some(&chain)).as_deref(),
            Some("abc")
        );
        // Another network, a jump elsewhere, no jump, a forged comment: not ours to touch.
        assert_eq!(legacy_masq_owner("other", &comment, Some(&chain)), None);
        let elsewhere = legacy_masq_chain("cbr0", "xyz");
        assert_eq!(legacy_masq_owner("cbr0", &comment, Some(&elsewhere)), None);
        assert_eq!(legacy_masq_owner("cbr0", &comment, None), None);
        assert_eq!(
            legacy_masq_owner("cbr0", "name: \"cbr0\" id: \"\"", Some(&chain)),
            None
        );
    }

    #[test]
    fn legacy_chain_matches_the_go_plugin() {
        // Observed on a node running the Go plugin (reference §1.5).
        assert_eq!(
            legacy_masq_chain("benchnet", "e1"),
            "CNI-80046ea6662e566de92511fe"
        );
        assert_eq!(
            legacy_masq_comment("benchnet", "e1"),
            r#"name: "benchnet" id: "e1""#
        );
    }

    #[test]
    fn masq_comment_layout() {
        let c = masq_comment("cbr0", "abc123", "eth0");
        let net = sha512_hex("cbr0", 16);
        let inst = sha512_hex("eth0:abc123", 16);
        assert_eq!(c, format!("{net}-{inst}, net: cbr0, if: eth0, id: abc123"));
        assert_eq!(
            masq_instance_hash("cbr0", "abc123", "eth0").len(),
            MASQ_INSTANCE_HASH_LEN
        );
        assert_eq!(parse_masq_comment(&c), Some((net.as_str(), &c[..33])));
        assert_eq!(sha512_hex("", 8), "cf83e135");
    }

    #[test]
    fn masq_comment_strips_quotes_and_is_cut() {
        let c = masq_comment("n\"et", "x", "eth0");
        assert!(c.ends_with("net: net, if: eth0, id: x"), "{c}");
        let long_id = "a".repeat(200);
        let c = masq_comment("net", &long_id, "eth0");
        assert_eq!(c.len(), COMMENT_MAX);
        assert!(c.starts_with(&masq_instance_hash("net", &long_id, "eth0")));
        let c = masq_comment("net", &"é".repeat(100), "eth0");
        assert!(c.len() <= COMMENT_MAX);
    }

    #[test]
    fn foreign_comments_do_not_parse() {
        for c in [
            "",
            "hello",
            "0123456789abcdef_0123456789abcdef, x",
            "0123456789abcdeg-0123456789abcdef",
        ] {
            assert_eq!(parse_masq_comment(c), None, "{c}");
        }
        assert!(parse_masq_comment("0123456789abcdef-0123456789abcdef").is_some());
    }

    #[test]
    fn spoofchk_names() {
        assert_eq!(spoofchk_iface_chain("c1", "eth0"), "cni-br-iface-c1-eth0");
        assert_eq!(spoofchk_mac_chain("c1", "eth0"), "cni-br-iface-c1-eth0-mac");
        assert_eq!(spoofchk_comment("c1", "eth0"), "macspoofchk-c1-eth0");
    }
}
