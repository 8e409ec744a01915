//! nftables rules applied with `nft` inside private namespaces (the `nft`
//! child inherits the test thread's namespace).

mod common;

use common::{isolate, run};
use ipnet::IpNet;
use kernel::firewall::*;
use kernel::{Firewall, NftFirewall};
use serde_json::Value;

fn masq_rules() -> Vec<Value> {
    let out = run(
        "nft",
        &["-j", "list", "chain", "inet", MASQ_TABLE, MASQ_CHAIN],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("rule").cloned())
        .collect()
}

fn comments(rules: &[Value]) -> Vec<String> {
    rules
        .iter()
        .map(|r| r["comment"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn att<'a>(cid: &'a str) -> Attachment<'a> {
    Attachment {
        network: "cbr0",
        container_id: cid,
        ifname: "eth0",
    }
}

#[test]
fn masq_setup_teardown_gc() {
    let Some(_ns) = isolate() else { return };
    let fw = NftFirewall::new();

    // Nothing there yet: teardown and GC are no-ops.
    fw.teardown_masq(&att("c1")).unwrap();
    assert_eq!(fw.gc_masq("cbr0", &[]).unwrap(), 0);

    let c1: Vec<IpNet> = vec![
        "10.244.1.5/24".parse().unwrap(),
        "fd00:244:1::5/64".parse().unwrap(),
    ];
    fw.setup_masq(&att("c1"), &c1).unwrap();
    fw.setup_masq(&att("c1"), &c1).unwrap();
    assert_eq!(masq_rules().len(), 2, "setup twice must not duplicate");
    let text = run("nft", &["list", "table", "inet", MASQ_TABLE]);
    for want in [
        "ip saddr 10.244.1.5 ip daddr != 10.244.1.0/24 masquerade comment",
        "ip6 saddr fd00:244:1::5 ip6 daddr != fd00:244:1::/64 masquerade comment",
        "type nat hook postrouting priority srcnat; policy accept;",
        "ip daddr 224.0.0.0/4 return",
        "ip6 daddr ff00::/8 return",
        "goto masq_checks",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(text.contains(&masq_comment("cbr0", "c1", "eth0")), "{text}");
    assert_eq!(text.matches("goto masq_checks").count(), 1, "{text}");

    fw.setup_masq(&att("c2"), &["10.244.1.6/24".parse().unwrap()])
        .unwrap();
    fw.setup_masq(
        &Attachment {
            network: "othernet",
            container_id: "c9",
            ifname: "eth0",
        },
        &["10.9.0.2/16".parse().unwrap()],
    )
    .unwrap();
    assert_eq!(masq_rules().len(), 4);

    // GC keeps c2 and the other network's rule, removes c1's two rules.
    let valid = [GcAttachment {
        container_id: "c2".into(),
        ifname: "eth0".into(),
    }];
    assert_eq!(fw.gc_masq("cbr0", &valid).unwrap(), 2);
    let left = comments(&masq_rules());
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&masq_comment("cbr0", "c2", "eth0")));
    assert!(left.contains(&masq_comment("othernet", "c9", "eth0")));

    fw.teardown_masq(&att("c2")).unwrap();
    fw.teardown_masq(&att("c2")).unwrap();
    assert_eq!(
        comments(&masq_rules()),
        vec![masq_comment("othernet", "c9", "eth0")]
    );
}

#[test]
fn masq_teardown_finds_rules_written_by_the_go_plugin() {
    let Some(_ns) = isolate() else { return };
    // The rule as knftables writes it, in nft syntax.
    let comment = masq_comment("cbr0", "goctr", "eth0");
    let script = format!(
        "add table inet {MASQ_TABLE}\n\
         add chain inet {MASQ_TABLE} {MASQ_CHAIN}\n\
         add rule inet {MASQ_TABLE} {MASQ_CHAIN} ip saddr 10.1.0.7 ip daddr != 10.1.0.0/24 masquerade comment \"{comment}\"\n"
    );
    let path = std::env::temp_dir().join(format!("kernel-test-{}.nft", std::process::id()));
    std::fs::write(&path, script).unwrap();
    let applied = std::process::Command::new("nft")
        .arg("-f")
        .arg(&path)
        .status();
    std::fs::remove_file(&path).unwrap();
    assert!(applied.unwrap().success());
    assert_eq!(masq_rules().len(), 1);
    NftFirewall::new().teardown_masq(&att("goctr")).unwrap();
    assert!(masq_rules().is_empty());
}

#[test]
fn legacy_iptables_masq_is_removed() {
    let Some(_ns) = isolate() else { return };
    let chain = legacy_masq_chain("benchnet", "e1");
    let comment = legacy_masq_comment("benchnet", "e1");
    for (bin, dst, src, mcast) in [
        ("iptables", "10.99.1.0/24", "10.99.1.123", "224.0.0.0/4"),
        ("ip6tables", "fd99::/64", "fd99::7b", "ff00::/8"),
    ] {
        let rules: [&[&str]; 5] = [
            &["-t", "nat", "-N", &chain],
            &[
                "-t",
                "nat",
                "-A",
                &chain,
                "-d",
                dst,
                "-j",
                "ACCEPT",
                "-m",
                "comment",
                "--comment",
                &comment,
            ],
            &[
                "-t",
                "nat",
                "-A",
                &chain,
                "!",
                "-d",
                mcast,
                "-j",
                "MASQUERADE",
                "-m",
                "comment",
                "--comment",
                &comment,
            ],
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                src,
                "-j",
                &chain,
                "-m",
                "comment",
                "--comment",
                &comment,
            ],
            &["-t", "nat", "-A", "POSTROUTING", "-s", dst, "-j", "ACCEPT"],
        ];
        for args in rules {
            run(bin, args);
        }
    }
    let fw = NftFirewall::new();
    assert!(fw.teardown_legacy_iptables_masq("benchnet", "e1").unwrap());
    for bin in ["iptables", "ip6tables"] {
        let left = run(bin, &["-t", "nat", "-S"]);
        assert!(!left.contains(&chain), "{bin}:\n{left}");
        assert!(
            left.contains("-A POSTROUTING -s"),
            "unrelated rule kept, {bin}:\n{left}"
        );
    }
    assert!(!fw.teardown_legacy_iptables_masq("benchnet", "e1").unwrap());
    // Another container's chain is not touched.
    run(
        "iptables",
        &["-t", "nat", "-N", &legacy_masq_chain("benchnet", "e2")],
    );
    assert!(!fw.teardown_legacy_iptables_masq("benchnet", "e1").unwrap());
    assert!(run("iptables", &["-t", "nat", "-S"]).contains(&legacy_masq_chain("benchnet", "e2")));
}

#[test]
fn mac_spoof_check_setup_and_teardown() {
    let Some(_ns) = isolate() else { return };
    let fw = NftFirewall::new();
    fw.teardown_mac_spoof_check("c1", "eth0").unwrap();
    let check = MacSpoofCheck {
        container_id: "c1",
        ifname: "eth0",
        host_veth: "veth0a1b2c3d",
        mac: "02:42:ac:11:00:02".parse().unwrap(),
    };
    fw.setup_mac_spoof_check(&check).unwrap();
    fw.setup_mac_spoof_check(&check).unwrap();
    let other = MacSpoofCheck {
        container_id: "c2",
        ..check
    };
    fw.setup_mac_spoof_check(&other).unwrap();
    let text = run("nft", &["list", "table", "bridge", "nat"]);
    for want in [
        "chain PREROUTING",
        // nft names priority -300 of the bridge family "dstnat".
        "type filter hook prerouting priority dstnat; policy accept;",
        "iifname \"veth0a1b2c3d\" jump cni-br-iface-c1-eth0 comment \"macspoofchk-c1-eth0\"",
        "chain cni-br-iface-c1-eth0 {",
        "jump cni-br-iface-c1-eth0-mac comment \"macspoofchk-c1-eth0\"",
        "ether saddr 02:42:ac:11:00:02 return comment \"macspoofchk-c1-eth0\"",
        "drop comment \"macspoofchk-c1-eth0\"",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert_eq!(
        text.matches("jump cni-br-iface-c1-eth0 comment").count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.matches("ether saddr 02:42:ac:11:00:02 return comment \"macspoofchk-c1-eth0\"")
            .count(),
        1
    );

    fw.teardown_mac_spoof_check("c1", "eth0").unwrap();
    fw.teardown_mac_spoof_check("c1", "eth0").unwrap();
    let text = run("nft", &["list", "table", "bridge", "nat"]);
    assert!(!text.contains("c1-eth0"), "{text}");
    assert!(text.contains("cni-br-iface-c2-eth0-mac"), "{text}");
}
