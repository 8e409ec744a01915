//! The netlink firewall ([`NfnlFirewall`]) against the kernel, inside
//! private network namespaces, compared with the `nft` exec implementation
//! ([`NftFirewall`]): same printed ruleset, and each removes what the other
//! created.

mod common;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::{isolate, run};
use ipnet::IpNet;
use kernel::firewall::*;
use kernel::netlink::MacAddr;
use kernel::{Firewall, NetNs, NftFirewall};
use serde_json::Value;

fn att<'a>(network: &'a str, cid: &'a str, ifname: &'a str) -> Attachment<'a> {
    Attachment {
        network,
        container_id: cid,
        ifname,
    }
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn ruleset() -> String {
    run("nft", &["list", "ruleset"])
}

/// Table and chain comments: the Go plugin (nft syntax) and the netlink
/// implementation write them, but nft 1.0.6 drops them from JSON input, so
/// the exec implementation's tables have none.
const OBJECT_COMMENTS: [&str; 2] = [
    "comment \"Masquerading for plugins from github.com/containernetworking/plugins\"",
    "comment \"Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet\"",
];

/// `nft list ruleset` as (chain, line) pairs, sorted: the order of rules
/// within a chain differs when one implementation rewrites an unchanged
/// attachment (exec) and the other leaves it in place (netlink); that order
/// carries no meaning for these rules, which match disjoint addresses.
fn ruleset_normalized() -> Vec<(String, String)> {
    let mut chain = String::new();
    let mut lines: Vec<(String, String)> = ruleset()
        .lines()
        .map(str::trim)
        .filter(|l| !OBJECT_COMMENTS.contains(l))
        .map(|l| {
            if l.starts_with("table ") || l.starts_with("chain ") {
                chain = l.to_owned();
            }
            (chain.clone(), l.to_owned())
        })
        .collect();
    lines.sort();
    lines
}

/// `nft -j list ruleset` without what legitimately differs between two
/// namespaces holding the same rules (handles, metainfo, table and chain
/// comments, rule order), as sorted items.
fn ruleset_json() -> Vec<String> {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("handle");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: Value = serde_json::from_str(&run("nft", &["-j", "list", "ruleset"])).unwrap();
    let mut items: Vec<String> = v["nftables"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .filter(|i| i.get("metainfo").is_none())
        .map(|i| {
            strip(i);
            for kind in ["table", "chain"] {
                if let Some(Value::Object(o)) = i.get_mut(kind) {
                    o.remove("comment");
                }
            }
            i.to_string()
        })
        .collect();
    items.sort();
    items
}

fn flush_ruleset() {
    run("nft", &["flush", "ruleset"]);
}

/// Rules of one chain as (comment, printed statement) pairs.
fn chain_rules(family: &str, table: &str, chain: &str) -> Vec<(String, String)> {
    let out = std::process::Command::new("nft")
        .args(["-j", "list", "chain", family, table, chain])
        .output()
        .unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("rule"))
        .map(|r| {
            (
                r["comment"].as_str().unwrap_or_default().to_owned(),
                r["expr"].to_string(),
            )
        })
        .collect()
}

fn masq_comments() -> Vec<String> {
    chain_rules("inet", MASQ_TABLE, MASQ_CHAIN)
        .into_iter()
        .map(|(c, _)| c)
        .collect()
}

/// The masquerade workload both implementations run for the comparison.
fn masq_workload(fw: &dyn Firewall) {
    fw.setup_masq(
        &att("cbr0", "c1", "eth0"),
        &nets(&["10.244.1.5/24", "fd00:244:1::5/64"]),
    )
    .unwrap();
    fw.setup_masq(&att("cbr0", "c2", "eth0"), &nets(&["10.244.1.6/24"]))
        .unwrap();
    fw.setup_masq(
        &att("cbr0", "c2", "net1"),
        &nets(&["10.250.0.9/20", "fd00::9/65", "10.250.0.9/20"]),
    )
    .unwrap();
    fw.setup_masq(&att("other", "c9", "eth0"), &nets(&["192.168.7.7/32"]))
        .unwrap();
    // Idempotent, and a changed address replaces the attachment's rules.
    fw.setup_masq(&att("cbr0", "c2", "eth0"), &nets(&["10.244.1.6/24"]))
        .unwrap();
    fw.setup_masq(&att("cbr0", "c1", "eth0"), &nets(&["10.244.1.15/24"]))
        .unwrap();
}

#[test]
fn masq_ruleset_is_identical_to_the_exec_one() {
    let Some(_ns) = isolate() else { return };
    masq_workload(&NfnlFirewall::new());
    let text = ruleset();
    let (lines, json) = (ruleset_normalized(), ruleset_json());
    flush_ruleset();
    masq_workload(&NftFirewall::new());
    assert_eq!(
        lines,
        ruleset_normalized(),
        "netlink vs exec, nft list ruleset"
    );
    assert_eq!(json, ruleset_json(), "netlink vs exec, nft -j list ruleset");
    for comment in OBJECT_COMMENTS {
        assert!(
            text.contains(comment),
            "netlink sets the Go comments:\n{text}"
        );
    }

    for want in [
        "type nat hook postrouting priority srcnat; policy accept;",
        "ip daddr 224.0.0.0/4 return",
        "ip6 daddr ff00::/8 return",
        "goto masq_checks",
        "ip saddr 10.244.1.15 ip daddr != 10.244.1.0/24 masquerade comment",
        "ip saddr 10.250.0.9 ip daddr != 10.250.0.0/20 masquerade comment",
        "ip6 saddr fd00::9 ip6 daddr != fd00::/65 masquerade comment",
        "ip saddr 192.168.7.7 ip daddr != 192.168.7.7 masquerade comment",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(!text.contains("10.244.1.5 "), "replaced rule kept:\n{text}");
    assert_eq!(text.matches("goto masq_checks").count(), 1, "{text}");
    assert_eq!(masq_comments().len(), 5, "{text}");
}

#[test]
fn masq_teardown_and_gc() {
    let Some(_ns) = isolate() else { return };
    let fw = NfnlFirewall::new();

    // Nothing there yet: teardown and GC succeed without creating anything.
    fw.teardown_masq(&att("cbr0", "c1", "eth0")).unwrap();
    assert_eq!(fw.gc_masq("cbr0", &[]).unwrap(), 0);
    assert_eq!(ruleset(), "", "a no-op must not write");

    masq_workload(&fw);
    let valid = [GcAttachment {
        container_id: "c2".into(),
        ifname: "eth0".into(),
    }];
    // c1/eth0 (1 rule) and c2/net1 (2 rules) go; c2/eth0 and network
    // "other" stay.
    assert_eq!(fw.gc_masq("cbr0", &valid).unwrap(), 3);
    assert_eq!(fw.gc_masq("cbr0", &valid).unwrap(), 0);
    let left = masq_comments();
    assert_eq!(
        left,
        [
            masq_comment("cbr0", "c2", "eth0"),
            masq_comment("other", "c9", "eth0")
        ]
    );
    fw.teardown_masq(&att("cbr0", "c2", "eth0")).unwrap();
    fw.teardown_masq(&att("cbr0", "c2", "eth0")).unwrap();
    assert_eq!(masq_comments(), [masq_comment("other", "c9", "eth0")]);
    // Teardown leaves the shared chains for the next pod.
    assert_eq!(chain_rules("inet", MASQ_TABLE, MASQ_POSTROUTING).len(), 3);
}

#[test]
fn masq_cross_implementation() {
    let Some(_ns) = isolate() else { return };
    let (nl, ex) = (NfnlFirewall::new(), NftFirewall::new());
    let ips = nets(&["10.244.1.5/24", "fd00:244:1::5/64"]);

    // exec creates, netlink finds the rules already right and removes them.
    ex.setup_masq(&att("cbr0", "a", "eth0"), &ips).unwrap();
    let before = ruleset();
    nl.setup_masq(&att("cbr0", "a", "eth0"), &ips).unwrap();
    assert_eq!(
        before,
        ruleset(),
        "netlink must see exec's rules as its own"
    );
    nl.teardown_masq(&att("cbr0", "a", "eth0")).unwrap();
    assert!(masq_comments().is_empty());

    // netlink creates, exec removes (and GC across).
    nl.setup_masq(&att("cbr0", "b", "eth0"), &ips).unwrap();
    nl.setup_masq(&att("cbr0", "c", "eth0"), &ips).unwrap();
    ex.setup_masq(&att("cbr0", "b", "eth0"), &ips).unwrap();
    assert_eq!(masq_comments().len(), 4);
    ex.teardown_masq(&att("cbr0", "b", "eth0")).unwrap();
    assert_eq!(masq_comments(), vec![masq_comment("cbr0", "c", "eth0"); 2]);
    assert_eq!(ex.gc_masq("cbr0", &[]).unwrap(), 2);
    assert!(masq_comments().is_empty());

    // Rules written in nft syntax, as the Go plugin's knftables does.
    let comment = masq_comment("cbr0", "goctr", "eth0");
    let script = format!(
        "add table inet {MASQ_TABLE}\n\
         add chain inet {MASQ_TABLE} {MASQ_CHAIN}\n\
         add rule inet {MASQ_TABLE} {MASQ_CHAIN} ip saddr 10.1.0.7 ip daddr != 10.1.0.0/24 masquerade comment \"{comment}\"\n"
    );
    run_nft_script(&script);
    assert_eq!(nl.gc_masq("cbr0", &[]).unwrap(), 1);
    assert!(masq_comments().is_empty());
}

fn run_nft_script(script: &str) {
    let path = std::env::temp_dir().join(format!(
        "kernel-nfnl-test-{}-{:?}.nft",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, script).unwrap();
    let status = std::process::Command::new("nft")
        .arg("-f")
        .arg(&path)
        .status();
    std::fs::remove_file(&path).unwrap();
    assert!(status.unwrap().success(), "{script}");
}

#[test]
fn masq_repairs_a_damaged_postrouting_chain() {
    let Some(_ns) = isolate() else { return };
    let fw = NfnlFirewall::new();
    fw.setup_masq(&att("cbr0", "c1", "eth0"), &nets(&["10.244.1.5/24"]))
        .unwrap();
    let good = ruleset();
    run(
        "nft",
        &["flush", "chain", "inet", MASQ_TABLE, MASQ_POSTROUTING],
    );
    run(
        "nft",
        &[
            "add",
            "rule",
            "inet",
            MASQ_TABLE,
            MASQ_POSTROUTING,
            "goto",
            MASQ_CHAIN,
        ],
    );
    fw.setup_masq(&att("cbr0", "c1", "eth0"), &nets(&["10.244.1.5/24"]))
        .unwrap();
    assert_eq!(good, ruleset());
}

/// The ADD path (a freshly created interface): the same ruleset as `setup_masq` gives for
/// new attachments, postrouting created on the first and repaired when damaged, and other
/// attachments' rules left alone, without reading them.
#[test]
fn masq_for_a_new_attachment_matches_setup_and_repairs_postrouting() {
    let Some(_ns) = isolate() else { return };
    let fw = NfnlFirewall::new();
    let adds: [(&str, &[&str]); 3] = [
        ("c1", &["10.244.1.5/24", "fd00:244:1::5/64"]),
        ("c2", &["10.244.1.6/24"]),
        ("c3", &["10.244.1.7/24"]),
    ];
    for (cid, ips) in &adds {
        fw.setup_masq(&att("cbr0", cid, "eth0"), &nets(ips))
            .unwrap();
    }
    let expected = ruleset();
    flush_ruleset();
    for (i, (cid, ips)) in adds.iter().enumerate() {
        if i == 2 {
            run(
                "nft",
                &["flush", "chain", "inet", MASQ_TABLE, MASQ_POSTROUTING],
            );
        }
        fw.setup_masq_new(&att("cbr0", cid, "eth0"), &nets(ips))
            .unwrap();
    }
    assert_eq!(expected, ruleset());
    fw.teardown_masq(&att("cbr0", "c2", "eth0")).unwrap();
    assert_eq!(masq_comments().len(), 3, "{:?}", masq_comments());
}

#[test]
fn kernel_errors_name_the_operation_and_object() {
    let Some(_ns) = isolate() else { return };
    // A postrouting chain with another hook: the kernel refuses to turn it
    // into ours, and the error says which request failed.
    run_nft_script(&format!(
        "add table inet {MASQ_TABLE}\n\
         add chain inet {MASQ_TABLE} {MASQ_POSTROUTING} {{ type filter hook input priority 0 ; }}\n"
    ));
    let err = NfnlFirewall::new()
        .setup_masq(&att("cbr0", "c1", "eth0"), &nets(&["10.244.1.5/24"]))
        .unwrap_err();
    let text = err.to_string();
    assert!(err.errno().is_some(), "{err:?}");
    assert!(
        text.starts_with("set up ip masquerade chain inet cni_plugins_masquerade postrouting: "),
        "{text}"
    );
    eprintln!("error as reported: {text}");
}

fn iptables_legacy_rules(chain: &str, comment: &str) {
    for (bin, dst, src, mcast) in [
        ("iptables", "10.99.1.0/24", "10.99.1.123", "224.0.0.0/4"),
        ("ip6tables", "fd99::/64", "fd99::7b", "ff00::/8"),
    ] {
        let c = ["-m", "comment", "--comment", comment];
        let mut rules: Vec<Vec<&str>> = vec![
            vec!["-t", "nat", "-N", chain],
            vec!["-t", "nat", "-A", chain, "-d", dst, "-j", "ACCEPT"],
            vec![
                "-t",
                "nat",
                "-A",
                chain,
                "!",
                "-d",
                mcast,
                "-j",
                "MASQUERADE",
            ],
            vec!["-t", "nat", "-A", "POSTROUTING", "-s", src, "-j", chain],
            vec!["-t", "nat", "-A", "POSTROUTING", "-s", dst, "-j", "ACCEPT"],
        ];
        for r in &mut rules[1..4] {
            r.extend(c);
        }
        for args in rules {
            run(bin, &args);
        }
    }
}

#[test]
fn legacy_iptables_masq_is_removed() {
    let Some(_ns) = isolate() else { return };
    let fw = NfnlFirewall::new();
    // No nat tables at all: nothing found, nothing written.
    assert!(!fw.teardown_legacy_iptables_masq("benchnet", "e1").unwrap());
    assert_eq!(ruleset(), "");

    let chain = legacy_masq_chain("benchnet", "e1");
    iptables_legacy_rules(&chain, &legacy_masq_comment("benchnet", "e1"));
    // Another container's chain, which must survive.
    let other = legacy_masq_chain("benchnet", "e2");
    run("iptables", &["-t", "nat", "-N", &other]);
    run(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            "10.99.1.124",
            "-j",
            &other,
        ],
    );

    assert!(fw.teardown_legacy_iptables_masq("benchnet", "e1").unwrap());
    for bin in ["iptables", "ip6tables"] {
        let left = run(bin, &["-t", "nat", "-S"]);
        assert!(!left.contains(&chain), "{bin}:\n{left}");
        assert!(
            left.contains("-j ACCEPT"),
            "unrelated rule kept, {bin}:\n{left}"
        );
    }
    assert!(run("iptables", &["-t", "nat", "-S"]).contains(&format!("-j {other}")));
    assert!(!fw.teardown_legacy_iptables_masq("benchnet", "e1").unwrap());

    // Cross-check: the exec implementation agrees on what is left.
    iptables_legacy_rules(&legacy_masq_chain("n2", "x"), "c");
    let ex = NftFirewall::new();
    assert!(fw.teardown_legacy_iptables_masq("n2", "x").unwrap());
    assert!(!ex.teardown_legacy_iptables_masq("n2", "x").unwrap());
    assert!(ex.teardown_legacy_iptables_masq("benchnet", "e2").unwrap());
    assert!(!fw.teardown_legacy_iptables_masq("benchnet", "e2").unwrap());
    assert!(!run("iptables", &["-t", "nat", "-S"]).contains("CNI-"));
}

fn spoof(cid: &str, veth: &'static str, mac: &str) -> (String, &'static str, MacAddr) {
    (cid.to_owned(), veth, mac.parse().unwrap())
}

fn spoofchk_workload(fw: &dyn Firewall) {
    let checks = [
        spoof("c1", "veth0a1b2c3d", "02:42:ac:11:00:02"),
        spoof("c2", "veth99999999", "0a:58:0a:f4:01:07"),
        spoof("c1", "veth0a1b2c3d", "02:42:ac:11:00:02"),
    ];
    for (cid, veth, mac) in &checks {
        fw.setup_mac_spoof_check(&MacSpoofCheck {
            container_id: cid,
            ifname: "eth0",
            host_veth: veth,
            mac: *mac,
        })
        .unwrap();
    }
}

#[test]
fn mac_spoof_check_matches_exec_and_cross_removes() {
    let Some(_ns) = isolate() else { return };
    let (nl, ex) = (NfnlFirewall::new(), NftFirewall::new());
    nl.teardown_mac_spoof_check("c1", "eth0").unwrap();
    assert_eq!(ruleset(), "", "a no-op must not write");

    spoofchk_workload(&nl);
    let (text, json) = (ruleset(), ruleset_json());
    flush_ruleset();
    spoofchk_workload(&ex);
    // No reordering here: both rewrite an attachment's rules on every setup.
    assert_eq!(text, ruleset(), "netlink vs exec, nft list ruleset");
    assert_eq!(json, ruleset_json(), "netlink vs exec, nft -j list ruleset");
    for want in [
        "type filter hook prerouting priority dstnat; policy accept;",
        "iifname \"veth0a1b2c3d\" jump cni-br-iface-c1-eth0 comment \"macspoofchk-c1-eth0\"",
        "jump cni-br-iface-c1-eth0-mac comment \"macspoofchk-c1-eth0\"",
        "ether saddr 02:42:ac:11:00:02 return comment \"macspoofchk-c1-eth0\"",
        "drop comment \"macspoofchk-c1-eth0\"",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert_eq!(text.matches("jump cni-br-iface-c1-eth0 comment").count(), 1);

    // Created by exec, removed by netlink; and the reverse.
    nl.teardown_mac_spoof_check("c1", "eth0").unwrap();
    nl.teardown_mac_spoof_check("c1", "eth0").unwrap();
    let text = ruleset();
    assert!(!text.contains("c1-eth0"), "{text}");
    assert!(text.contains("cni-br-iface-c2-eth0-mac"), "{text}");
    spoofchk_workload(&nl);
    ex.teardown_mac_spoof_check("c2", "eth0").unwrap();
    nl.teardown_mac_spoof_check("c1", "eth0").unwrap();
    let prerouting = chain_rules("bridge", "nat", "PREROUTING");
    assert!(prerouting.is_empty(), "{prerouting:?}");
    assert!(!ruleset().contains("cni-br-iface"), "{}", ruleset());
}

/// 16 attachments set up and torn down at once, some through `nft`: every
/// transaction is atomic, so the end state is exact whatever the
/// interleaving.
#[test]
fn concurrent_attachments_neither_lose_nor_duplicate_rules() {
    let Some(ns) = isolate() else { return };
    const N: usize = 16;
    let cids: Vec<String> = (0..N).map(|i| format!("ctr{i:02}")).collect();
    let ips: Vec<Vec<IpNet>> = (0..N)
        .map(|i| {
            nets(&[
                &format!("10.244.1.{}/24", i + 2),
                &format!("fd00:1::{:x}/64", i + 2),
            ])
        })
        .collect();
    let in_parallel = |work: &(dyn Fn(usize) + Sync)| {
        let barrier = Barrier::new(N);
        std::thread::scope(|s| {
            for i in 0..N {
                let (barrier, ns) = (&barrier, &ns);
                s.spawn(move || {
                    let _in_test_ns = ns.enter().unwrap();
                    barrier.wait();
                    work(i);
                });
            }
        });
    };
    // Every fourth thread goes through nft, the others through netlink.
    let fw = |i: usize| -> Box<dyn Firewall> {
        if i % 4 == 3 {
            Box::new(NftFirewall::new())
        } else {
            Box::new(NfnlFirewall::new())
        }
    };
    let expect = |present: &[usize]| {
        let mut want: Vec<String> = present
            .iter()
            .flat_map(|i| vec![masq_comment("cbr0", &cids[*i], "eth0"); 2])
            .collect();
        want.sort();
        let mut got = masq_comments();
        got.sort();
        assert_eq!(got, want);
        assert_eq!(
            chain_rules("inet", MASQ_TABLE, MASQ_POSTROUTING).len(),
            3,
            "{}",
            ruleset()
        );
    };

    in_parallel(&|i| {
        fw(i)
            .setup_masq(&att("cbr0", &cids[i], "eth0"), &ips[i])
            .unwrap();
        fw(i)
            .setup_mac_spoof_check(&MacSpoofCheck {
                container_id: &cids[i],
                ifname: "eth0",
                host_veth: &format!("veth{i:08}"),
                mac: MacAddr([2, 0, 0, 0, 0, i as u8]),
            })
            .unwrap();
    });
    expect(&(0..N).collect::<Vec<_>>());
    assert_eq!(chain_rules("bridge", "nat", "PREROUTING").len(), N);

    // Odd ones leave, even ones are set up again (a retried ADD).
    in_parallel(&|i| {
        let a = att("cbr0", &cids[i], "eth0");
        if i % 2 == 1 {
            fw(i).teardown_masq(&a).unwrap();
            fw(i).teardown_mac_spoof_check(&cids[i], "eth0").unwrap();
        } else {
            fw(i).setup_masq(&a, &ips[i]).unwrap();
        }
    });
    expect(&(0..N).step_by(2).collect::<Vec<_>>());
    assert_eq!(chain_rules("bridge", "nat", "PREROUTING").len(), N / 2);

    in_parallel(&|i| {
        fw(i).teardown_masq(&att("cbr0", &cids[i], "eth0")).unwrap();
        fw(i).teardown_mac_spoof_check(&cids[i], "eth0").unwrap();
    });
    expect(&[]);
    assert!(!ruleset().contains("cni-br-iface"), "{}", ruleset());
}

/// A GC removing a thousand rules is one transaction with a thousand ACKs:
/// the receive buffer must hold them (else ENOBUFS).
#[test]
fn large_gc_in_one_transaction() {
    let Some(_ns) = isolate() else { return };
    let fw = NfnlFirewall::new();
    const N: usize = 1000;
    for i in 0..N {
        let cid = format!("c{i}");
        let ip = format!("10.{}.{}.{}/16", 100 + i / 65536, (i / 256) % 256, i % 256);
        fw.setup_masq(&att("big", &cid, "eth0"), &nets(&[&ip]))
            .unwrap();
    }
    assert_eq!(masq_comments().len(), N);
    assert_eq!(fw.gc_masq("big", &[]).unwrap(), N);
    assert!(masq_comments().is_empty());
}

/// Prints per-operation times of both implementations (no assertion:
/// timing depends on the machine and the build profile). Run alone with
/// `--nocapture` to see them. Means exceed medians because a commit that
/// follows a deleting one within an RCU grace period waits for nf_tables to
/// finish releasing the previous socket (kernel behaviour, the same for
/// `nft`, which pays it in its own exit instead). Each measured step is what one plugin
/// invocation does: a fresh firewall object, its operations, and its drop.
/// 50 other pods' rules are present, as on a node; each measured pod is set
/// up and torn down within the loop, so the table size stays constant.
#[test]
fn benchmark_netlink_vs_exec() {
    let Some(_ns) = isolate() else { return };
    type Make = fn() -> Box<dyn Firewall>;
    let impls: [(&str, Make, u32); 2] = [
        ("netlink", || Box::new(NfnlFirewall::new()), 200),
        ("nft-exec", || Box::new(NftFirewall::new()), 20),
    ];
    let ips = nets(&["10.244.1.5/24", "fd00:244:1::5/64"]);
    let mut report = Vec::new();
    for (name, make, n) in impls {
        flush_ruleset();
        let fw = make();
        for i in 0..50 {
            fw.setup_masq(&att("cbr0", &format!("bg{i}"), "eth0"), &ips)
                .unwrap();
        }
        drop(fw);
        let mut t: [Vec<Duration>; 6] = Default::default();
        for i in 0..n {
            let cid = format!("bench{i}");
            let a = att("cbr0", &cid, "eth0");
            let check = MacSpoofCheck {
                container_id: &cid,
                ifname: "eth0",
                host_veth: "veth0",
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
            };
            let mut clock = Instant::now();
            let mut lap = |k: usize| {
                t[k].push(clock.elapsed());
                clock = Instant::now();
            };
            // ADD's masquerade share.
            make().setup_masq(&a, &ips).unwrap();
            lap(0);
            // A repeated ADD: everything already in place.
            make().setup_masq(&a, &ips).unwrap();
            lap(1);
            // DEL's masquerade share: nftables rules and the legacy
            // iptables chain (absent).
            let fw = make();
            fw.teardown_masq(&a).unwrap();
            assert!(!fw.teardown_legacy_iptables_masq("cbr0", &cid).unwrap());
            drop(fw);
            lap(2);
            // A repeated DEL: nothing left.
            let fw = make();
            fw.teardown_masq(&a).unwrap();
            assert!(!fw.teardown_legacy_iptables_masq("cbr0", &cid).unwrap());
            drop(fw);
            lap(3);
            make().setup_mac_spoof_check(&check).unwrap();
            lap(4);
            make().teardown_mac_spoof_check(&cid, "eth0").unwrap();
            lap(5);
        }
        let names = [
            "ADD masq",
            "re-ADD masq (no-op)",
            "DEL masq+legacy",
            "re-DEL (nothing)",
            "spoofchk setup",
            "spoofchk teardown",
        ];
        report.push(format!("{name} (n={n}): median / mean / p90"));
        for (label, mut laps) in names.into_iter().zip(t) {
            laps.sort();
            let mean = laps.iter().sum::<Duration>() / n;
            let median = laps[laps.len() / 2];
            let p90 = laps[laps.len() * 9 / 10];
            report.push(format!(
                "  {label:>20}: {median:>9.1?} / {mean:>9.1?} / {p90:>9.1?}"
            ));
        }
    }
    for line in report {
        eprintln!("{line}");
    }
}

/// Every other test isolates itself first; this one, left in the namespace
/// the test binary started in, checks that none of their objects leaked
/// there (tests run concurrently, so it can run at any point).
#[test]
fn zz_nothing_leaks_into_the_original_namespace() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let here = NetNs::current().unwrap();
    let start = NetNs::open("/proc/self/ns/net").unwrap();
    assert_eq!(here.id().unwrap(), start.id().unwrap());
    let text = ruleset();
    for marker in [MASQ_TABLE, "cni-br-iface", "CNI-", "bridge nat"] {
        assert!(
            !text.contains(marker),
            "{marker} leaked into the original netns:\n{text}"
        );
    }
}

/// GC removes the Go plugin's iptables masquerading (iptables-nft: the comment is an xt
/// match, not rule userdata) of containers not in the valid list, in both families, and
/// nothing else.
#[test]
fn gc_removes_legacy_iptables_masq_of_stale_containers_only() {
    let Some(_ns) = isolate() else { return };
    let install = |network: &str, cid: &str| {
        let chain = legacy_masq_chain(network, cid);
        iptables_legacy_rules(&chain, &legacy_masq_comment(network, cid));
        chain
    };
    let stale = install("gcnet", "stale");
    let keep = install("gcnet", "keep");
    // Same shape, another network: not this GC's business.
    let other = install("othernet", "stale");
    let fw = NfnlFirewall::new();
    let valid = [GcAttachment {
        container_id: "keep".into(),
        ifname: "eth0".into(),
    }];
    assert_eq!(
        fw.gc_masq("gcnet", &valid).unwrap(),
        2,
        "one chain per family"
    );
    for bin in ["iptables", "ip6tables"] {
        let left = run(bin, &["-t", "nat", "-S"]);
        assert!(!left.contains(&stale), "{bin}: {left}");
        assert!(left.contains(&format!("-j {keep}")), "{bin}: {left}");
        assert!(left.contains(&format!("-j {other}")), "{bin}: {left}");
    }
    assert_eq!(fw.gc_masq("gcnet", &valid).unwrap(), 0);
}
