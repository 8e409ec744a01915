//! bridge end to end: our `bridge` binary run as a runtime runs it, in a throwaway node
//! namespace, with host-local as IPAM (ours when built, else the Go reference in
//! /usr/lib/cni). Every piece of state lives in the World's temp dir: host-local's
//! dataDir, cnitool's result cache (a private mount namespace puts the World's dir over
//! /var/lib). Traffic only goes to addresses inside namespaces the test made.
//!
//! Effects are tested, not just results: pods ping each other and the gateway; a
//! masqueraded pod reaches an "outside" namespace that sees the node's address; MTU
//! limits packets; IPv6 flows between pods.

use e2e::{eventually, json, list_files, Env, Impl, NetNs, Outcome, World};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const NET: &str = "e2enet";

fn ours_ipam() -> bool {
    e2e::our_bin_dir().join("host-local").is_file()
}

/// host-local: ours when it is built, else Go's (the tests pass with either).
fn ipam_impl() -> Impl {
    if ours_ipam() {
        Impl::Ours
    } else {
        Impl::Go
    }
}

fn world() -> World {
    e2e::our_binary("bridge");
    World::with_plugins(&[("bridge", Impl::Ours), ("host-local", ipam_impl())])
}

fn go_world() -> World {
    assert!(
        e2e::go_available("bridge") && e2e::go_available("host-local"),
        "the Go reference plugins are needed in {}",
        e2e::GO_PLUGIN_DIR
    );
    World::with_plugins(&[("bridge", Impl::Go), ("host-local", Impl::Go)])
}

/// The network config: bridge `cni0` with the gateway, a /24, state in the World; `extra`
/// keys replace or add top-level keys (`ranges` replaces the IPAM ranges).
fn conf(w: &World, version: &str, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": version,
        "name": NET,
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipam": {
            "type": "host-local",
            "dataDir": w.path_str("ipam"),
            "ranges": [[{"subnet": "10.88.0.0/24"}]],
        },
    });
    for (k, v) in extra.as_object().expect("extra is an object") {
        if k == "ranges" {
            c["ipam"]["ranges"] = v.clone();
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn exec(w: &World, cmd: &str, cid: &str, netns: &str, c: &Value) -> Outcome {
    w.exec(
        "bridge",
        &Env::new(cmd, cid, netns),
        c.to_string().as_bytes(),
    )
}

#[track_caller]
fn add(w: &World, cid: &str, pod: &NetNs, c: &Value) -> Value {
    let out = exec(w, "ADD", cid, pod.path(), c);
    out.ok();
    out.json()
}

#[track_caller]
fn del(w: &World, cid: &str, netns: &str, c: &Value) {
    exec(w, "DEL", cid, netns, c).ok();
}

fn pod_ip(result: &Value, v6: bool) -> String {
    result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .filter_map(|i| i["address"].as_str())
        .find(|a| a.contains(':') == v6)
        .expect("an address of the family")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn reservations(w: &World) -> Vec<String> {
    list_files(&w.path("ipam"))
        .into_iter()
        .filter(|f| {
            Path::new(f)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().parse::<IpAddr>().is_ok())
        })
        .collect()
}

/// What an attachment can leave on the node: veths, reservations, masquerade rules, the
/// Go plugin's iptables chains.
fn leftovers(w: &World) -> Vec<String> {
    let mut left: Vec<String> = w
        .node
        .links()
        .into_iter()
        .filter(|l| l.starts_with("veth"))
        .map(|l| format!("link {l}"))
        .collect();
    left.extend(
        reservations(w)
            .into_iter()
            .map(|r| format!("reservation {r}")),
    );
    let (_, rules, _) = w.node.run("nft", &["list", "ruleset"]);
    left.extend(
        rules
            .lines()
            .filter(|l| l.contains("masquerade comment") || l.contains("macspoofchk"))
            .map(|l| format!("nft rule {}", l.trim())),
    );
    let (_, ipt, _) = w.node.run("iptables", &["-t", "nat", "-S"]);
    left.extend(
        ipt.lines()
            .filter(|l| l.contains("CNI-"))
            .map(|l| format!("iptables {l}")),
    );
    left
}

/// Runs `f` on a thread that joined the namespace at `path`; sockets it creates stay there.
fn in_netns<T: Send>(path: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(path).expect("open netns");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    })
}

// ---------------------------------------------------------------------------------------

#[test]
fn two_pods_ping_each_other_and_the_gateway() {
    let w = world();
    let c = conf(&w, "1.0.0", json!({"isDefaultGateway": true}));
    let (p1, p2) = (NetNs::new(), NetNs::new());
    let r1 = add(&w, "pod1", &p1, &c);
    let r2 = add(&w, "pod2", &p2, &c);
    let (ip1, ip2) = (pod_ip(&r1, false), pod_ip(&r2, false));
    assert_ne!(ip1, ip2);
    assert_eq!(r1["ips"][0]["gateway"], "10.88.0.1");
    assert_eq!(r1["ips"][0]["interface"], 2);
    assert_eq!(r1["interfaces"][2]["sandbox"], p1.path());
    p1.sh(&format!("ping -c1 -W2 {ip2}"));
    p2.sh(&format!("ping -c1 -W2 {ip1}"));
    p1.sh("ping -c1 -W2 10.88.0.1");
    w.node.sh(&format!("ping -c1 -W2 {ip2}"));
    assert!(p1.sh("ip route").contains("default via 10.88.0.1 dev eth0"));
    // Both ends are made with one queue each way (no queue shrinking under RTNL).
    let host_veth = r1["interfaces"][1]["name"].as_str().unwrap().to_owned();
    for details in [
        p1.sh("ip -d link show eth0"),
        w.node.sh(&format!("ip -d link show {host_veth}")),
    ] {
        assert!(details.contains("numtxqueues 1 numrxqueues 1"), "{details}");
    }
    del(&w, "pod1", p1.path(), &c);
    del(&w, "pod2", p2.path(), &c);
    assert_eq!(leftovers(&w), Vec::<String>::new());
}

#[test]
fn ip_masq_hides_pods_behind_the_node_address() {
    let w = world();
    let c = conf(
        &w,
        "1.0.0",
        json!({"isDefaultGateway": true, "ipMasq": true}),
    );
    // "Outside": a namespace behind a veth on the node; it has no route to the pods, so
    // only masqueraded traffic can get an answer.
    let outside = NetNs::new();
    w.node.sh(&format!(
        "ip link add o-node type veth peer name o-out netns {} && \
         ip addr add 192.0.2.1/24 dev o-node && ip link set o-node up",
        outside.path()
    ));
    outside.sh("ip addr add 192.0.2.2/24 dev o-out && ip link set o-out up");
    let pod = NetNs::new();
    let r = add(&w, "pod1", &pod, &c);
    let ip = pod_ip(&r, false);
    pod.sh("ping -c1 -W2 192.0.2.2");

    let listener = in_netns(outside.path(), || {
        UdpSocket::bind("192.0.2.2:7777").expect("bind in the outside namespace")
    });
    listener
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    in_netns(pod.path(), || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind in the pod");
        s.send_to(b"hello", "192.0.2.2:7777").expect("send");
    });
    let mut buf = [0u8; 16];
    let (n, from): (usize, SocketAddr) = listener.recv_from(&mut buf).expect("datagram");
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(
        from.ip().to_string(),
        "192.0.2.1",
        "the outside sees the node, not the pod {ip}"
    );
    let rules = w.node.sh("nft list table inet cni_plugins_masquerade");
    assert!(
        rules.contains(&format!(
            "ip saddr {ip} ip daddr != 10.88.0.0/24 masquerade"
        )),
        "{rules}"
    );
    del(&w, "pod1", pod.path(), &c);
    assert_eq!(leftovers(&w), Vec::<String>::new());
}

#[test]
fn hairpin_flag_is_set_on_the_port() {
    let w = world();
    let pod = NetNs::new();
    let c = conf(&w, "1.0.0", json!({"hairpinMode": true}));
    let r = add(&w, "pod1", &pod, &c);
    let veth = r["interfaces"][1]["name"].as_str().unwrap().to_owned();
    let details = w.node.sh(&format!("ip -d link show {veth}"));
    assert!(details.contains("hairpin on"), "{details}");
    assert!(details.contains("master cni0"), "{details}");

    let pod2 = NetNs::new();
    let r2 = add(&w, "pod2", &pod2, &conf(&w, "1.0.0", json!({})));
    let veth2 = r2["interfaces"][1]["name"].as_str().unwrap().to_owned();
    let details = w.node.sh(&format!("ip -d link show {veth2}"));
    assert!(details.contains("hairpin off"), "{details}");
}

#[test]
fn mtu_applies_to_both_ends_and_limits_packets() {
    let w = world();
    let c = conf(&w, "1.0.0", json!({"mtu": 1400}));
    let (p1, p2) = (NetNs::new(), NetNs::new());
    let r1 = add(&w, "pod1", &p1, &c);
    let r2 = add(&w, "pod2", &p2, &c);
    assert!(p1.sh("ip link show eth0").contains("mtu 1400"));
    let veth = r1["interfaces"][1]["name"].as_str().unwrap().to_owned();
    assert!(w
        .node
        .sh(&format!("ip link show {veth}"))
        .contains("mtu 1400"));
    assert!(w.node.sh("ip link show cni0").contains("mtu 1400"));
    let ip2 = pod_ip(&r2, false);
    // 1400 - 20 (IPv4) - 8 (ICMP) fits with DF set; one byte more does not.
    p1.sh(&format!("ping -c1 -W2 -M do -s 1372 {ip2}"));
    let (code, _, _) = p1.try_sh(&format!("ping -c1 -W2 -M do -s 1373 {ip2}"));
    assert_ne!(code, 0, "a 1401-byte packet must not pass a 1400 MTU");
}

#[test]
fn dual_stack_pods_reach_each_other_over_ipv6() {
    let w = world();
    let c = conf(
        &w,
        "1.0.0",
        json!({"ranges": [[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd88::/64"}]],
               "isDefaultGateway": true}),
    );
    let (p1, p2) = (NetNs::new(), NetNs::new());
    let r1 = add(&w, "pod1", &p1, &c);
    let r2 = add(&w, "pod2", &p2, &c);
    assert_eq!(r1["ips"].as_array().unwrap().len(), 2);
    let (v6a, v6b) = (pod_ip(&r1, true), pod_ip(&r2, true));
    let addrs = p1.sh("ip -o addr show eth0");
    assert!(
        addrs.contains(&format!("inet {}/24", pod_ip(&r1, false))),
        "{addrs}"
    );
    assert!(addrs.contains(&format!("inet6 {v6a}/64")), "{addrs}");
    assert!(
        !addrs.contains("tentative"),
        "DAD is off by default: {addrs}"
    );
    p1.sh(&format!("ping -6 -c1 -W2 {v6b}"));
    p2.sh(&format!("ping -6 -c1 -W2 {v6a}"));
    p1.sh(&format!("ping -c1 -W2 {}", pod_ip(&r2, false)));
    let routes = p1.sh("ip -6 route");
    assert!(routes.contains("default via fd88::1 dev eth0"), "{routes}");
    let br = w.node.sh("ip -o addr show cni0");
    assert!(
        br.contains("inet 10.88.0.1/24") && br.contains("inet6 fd88::1/64"),
        "{br}"
    );
    del(&w, "pod1", p1.path(), &c);
    del(&w, "pod2", p2.path(), &c);
    assert_eq!(leftovers(&w), Vec::<String>::new());
}

/// This kernel has no bridge VLAN filtering (EOPNOTSUPP); where it has, the VLAN must
/// really be on the port. The VLAN options' effect on traffic is tested under a kernel
/// that has it, in a VM: tests/tests/vlan_vm_e2e.rs.
#[test]
fn vlan_is_configured_or_refused_clearly_without_leaks() {
    let w = world();
    let pod = NetNs::new();
    let c = conf(&w, "1.0.0", json!({"vlan": 100, "isGateway": false}));
    let out = exec(&w, "ADD", "pod1", pod.path(), &c);
    if out.code == 0 {
        let veth = out.json()["interfaces"][1]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        let vlans = w.node.sh(&format!("bridge vlan show dev {veth}"));
        assert!(vlans.contains("100 PVID"), "{vlans}");
        del(&w, "pod1", pod.path(), &c);
    } else {
        let msg = out.err(7);
        assert!(
            msg.contains("CONFIG_BRIDGE_VLAN_FILTERING") && msg.contains("\"vlan\""),
            "{msg}"
        );
        assert!(
            !pod.links().contains(&"eth0".to_string()),
            "{:?}",
            pod.links()
        );
        // The retry after removing the VLAN works on the same pod.
        add(&w, "pod1", &pod, &conf(&w, "1.0.0", json!({})));
        del(&w, "pod1", pod.path(), &c);
    }
    assert_eq!(leftovers(&w), Vec::<String>::new());
}

#[test]
fn add_check_del_del_leaves_nothing() {
    let w = world();
    let pod = NetNs::new();
    let c = conf(
        &w,
        "1.0.0",
        json!({"ipMasq": true, "isDefaultGateway": true, "macspoofchk": true}),
    );
    let r = add(&w, "pod1", &pod, &c);
    assert_eq!(reservations(&w).len(), 1);
    let mut chk = c.clone();
    chk["prevResult"] = r.clone();
    exec(&w, "CHECK", "pod1", pod.path(), &chk).ok();
    let spoof = w.node.sh("nft list table bridge nat");
    assert!(spoof.contains("macspoofchk-pod1-eth0"), "{spoof}");
    let mut del_c = c.clone();
    del_c["prevResult"] = r;
    del(&w, "pod1", pod.path(), &del_c);
    assert_eq!(leftovers(&w), Vec::<String>::new());
    assert!(!pod.links().contains(&"eth0".to_string()));
    del(&w, "pod1", pod.path(), &del_c);
    // DEL without prevResult and with the interface gone: still fine.
    del(&w, "pod1", pod.path(), &c);
    assert_eq!(leftovers(&w), Vec::<String>::new());
    // The bridge and its gateway stay for the next pod.
    assert!(w.node.sh("ip -o addr show cni0").contains("10.88.0.1/24"));
}

#[test]
fn del_after_the_pod_namespace_is_gone_leaves_nothing() {
    let w = world();
    let c = conf(&w, "1.0.0", json!({"ipMasq": true, "macspoofchk": true}));
    let pod = NetNs::new();
    let path = pod.path().to_owned();
    add(&w, "pod1", &pod, &c);
    drop(pod);
    eventually("the namespace's veth disappears", || {
        !w.node.links().iter().any(|l| l.starts_with("veth"))
    });
    del(&w, "pod1", &path, &c);
    assert_eq!(leftovers(&w), Vec::<String>::new());
    // And with CNI_NETNS empty, as runtimes send it after a restart.
    let pod = NetNs::new();
    add(&w, "pod2", &pod, &c);
    drop(pod);
    del(&w, "pod2", "", &c);
    eventually("no leftovers", || leftovers(&w).is_empty());
}

#[test]
fn fifty_concurrent_adds_on_a_missing_bridge_then_fifty_dels() {
    let w = world();
    let c = conf(&w, "1.0.0", json!({"ipMasq": true}));
    let pods: Vec<NetNs> = (0..50).map(|_| NetNs::new()).collect();
    assert!(!w.node.links().contains(&"cni0".to_string()));
    let results: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (w, c) = (&w, &c);
                s.spawn(move || exec(w, "ADD", &format!("pod{i}"), p.path(), c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<String> = results
        .iter()
        .map(|o| pod_ip(&o.ok().json(), false))
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 50, "distinct addresses");
    assert_eq!(reservations(&w).len(), 50);
    let veths = w
        .node
        .links()
        .iter()
        .filter(|l| l.starts_with("veth"))
        .count();
    assert_eq!(veths, 50);
    let rules = w.node.sh("nft list table inet cni_plugins_masquerade");
    assert_eq!(rules.matches("masquerade comment").count(), 50, "{rules}");
    assert_eq!(rules.matches("goto masq_checks").count(), 1, "{rules}");
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let (w, c) = (&w, &c);
            s.spawn(move || del(w, &format!("pod{i}"), p.path(), c));
        }
    });
    assert_eq!(leftovers(&w), Vec::<String>::new());
}

/// A pod set up by the Go bridge and host-local (iptables masquerading) is torn down by
/// ours: interface, reservation, and the `CNI-…` chain with its POSTROUTING jump.
#[test]
fn go_added_pod_is_deleted_by_ours() {
    let w = go_world();
    let pod = NetNs::new();
    let c = conf(
        &w,
        "1.0.0",
        json!({"ipMasq": true, "isDefaultGateway": true}),
    );
    let r = add(&w, "gopod", &pod, &c);
    let ip = pod_ip(&r, false);
    let ipt = w.node.sh("iptables -t nat -S");
    assert!(ipt.contains("CNI-") && ipt.contains(&ip), "{ipt}");
    assert_eq!(reservations(&w).len(), 1);

    e2e::our_binary("bridge");
    w.install("bridge", Impl::Ours);
    let mut chk = c.clone();
    chk["prevResult"] = r.clone();
    exec(&w, "CHECK", "gopod", pod.path(), &chk).ok();
    del(&w, "gopod", pod.path(), &chk);
    assert_eq!(leftovers(&w), Vec::<String>::new());
    assert!(!pod.links().contains(&"eth0".to_string()));
    let ipt = w.node.sh("iptables -t nat -S");
    assert!(!ipt.contains("CNI-"), "{ipt}");
}

/// A node that switched from the Go plugins to ours mid-life: pods the Go bridge added
/// (iptables masquerading, a `CNI-…` chain each) and that vanished without a DEL are
/// garbage-collected by our GC, chain, jump and address; a pod still in the valid list
/// keeps all of it.
#[test]
fn gc_collects_the_go_plugins_iptables_masquerade_of_stale_pods() {
    let w = go_world();
    let c10 = conf(&w, "1.0.0", json!({"ipMasq": true}));
    let (keep, stale) = (NetNs::new(), NetNs::new());
    let r_keep = add(&w, "keep", &keep, &c10);
    let r_stale = add(&w, "stale", &stale, &c10);
    let chain_of = |cid: &str| {
        let ipt = w.node.sh("iptables -t nat -S POSTROUTING");
        ipt.lines()
            .find(|l| l.contains(&format!("id: \\\"{cid}\\\"")))
            .and_then(|l| l.split("-j ").nth(1))
            .map(|c| c.trim().to_owned())
            .unwrap_or_else(|| panic!("no Go jump for {cid}: {ipt}"))
    };
    let (keep_chain, stale_chain) = (chain_of("keep"), chain_of("stale"));
    assert!(stale_chain.starts_with("CNI-"), "{stale_chain}");

    e2e::our_binary("bridge");
    w.install("bridge", Impl::Ours);
    w.install("host-local", Impl::Ours);
    let mut c11 = conf(&w, "1.1.0", json!({"ipMasq": true}));
    let valid = json!([{"containerID": "keep", "ifname": "eth0"}]);
    c11["cni.dev/valid-attachments"] = valid.clone();
    c11["cni.dev/attachments"] = valid;
    let gc_env = Env::new("GC", "", "").ifname("");
    w.exec("bridge", &gc_env, c11.to_string().as_bytes()).ok();

    let ipt = w.node.sh("iptables -t nat -S");
    assert!(!ipt.contains(&stale_chain), "stale chain left: {ipt}");
    assert!(
        ipt.contains(&format!("-N {keep_chain}")) && ipt.contains(&format!("-j {keep_chain}")),
        "the valid pod's chain must stay: {ipt}"
    );
    let left = reservations(&w);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with(&pod_ip(&r_keep, false)), "{left:?}");
    assert!(!left[0].ends_with(&pod_ip(&r_stale, false)));
    // GC again: nothing more to do, and no error.
    w.exec("bridge", &gc_env, c11.to_string().as_bytes()).ok();
    // The valid pod is then deleted by ours, its Go chain included.
    let mut d = c10.clone();
    d["prevResult"] = r_keep;
    del(&w, "keep", keep.path(), &d);
    drop(stale);
    eventually("the stale pod's veth goes with its namespace", || {
        leftovers(&w).is_empty()
    });
}

/// The reverse: a pod of ours (and of our host-local, when built) deleted by Go's.
#[test]
fn our_pod_is_deleted_by_go() {
    let w = world();
    let pod = NetNs::new();
    let c = conf(&w, "1.0.0", json!({"isDefaultGateway": true}));
    let r = add(&w, "rspod", &pod, &c);
    assert_eq!(reservations(&w).len(), 1);
    w.install("bridge", Impl::Go);
    w.install("host-local", Impl::Go);
    let mut chk = c.clone();
    chk["prevResult"] = r;
    exec(&w, "CHECK", "rspod", pod.path(), &chk).ok();
    del(&w, "rspod", pod.path(), &chk);
    assert_eq!(leftovers(&w), Vec::<String>::new());
    assert!(!pod.links().contains(&"eth0".to_string()));
}

fn cnitool(w: &World, confdir: &Path, cmd: &str, pod: &NetNs) -> (i32, String, String) {
    w.cnitool(confdir, cmd, NET, pod)
}

#[test]
fn cnitool_add_check_del_every_version() {
    let w = world();
    let dir = w.path("net.d");
    std::fs::create_dir_all(&dir).unwrap();
    for version in ["0.3.1", "0.4.0", "1.0.0"] {
        let mut plugin = conf(
            &w,
            version,
            json!({"ipMasq": true, "isDefaultGateway": true}),
        );
        if let Some(o) = plugin.as_object_mut() {
            o.remove("name");
            o.remove("cniVersion");
        }
        let list = json!({"cniVersion": version, "name": NET, "plugins": [plugin]});
        std::fs::write(dir.join("10-e2e.conflist"), list.to_string()).unwrap();
        let pod = NetNs::new();
        let (code, out, err) = cnitool(&w, &dir, "add", &pod);
        assert_eq!(code, 0, "{version} add: {out} {err}");
        let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(r["cniVersion"], version);
        assert_eq!(r["interfaces"][2]["sandbox"], pod.path());
        pod.sh("ping -c1 -W2 10.88.0.1");
        if version != "0.3.1" {
            let (code, out, err) = cnitool(&w, &dir, "check", &pod);
            assert_eq!(code, 0, "{version} check: {out} {err}");
        }
        let cached = list_files(&w.path("varlib/cni/results"));
        assert_eq!(
            cached.len(),
            1,
            "libcni cached the result in the World: {cached:?}"
        );
        let (code, out, err) = cnitool(&w, &dir, "del", &pod);
        assert_eq!(code, 0, "{version} del: {out} {err}");
        assert_eq!(leftovers(&w), Vec::<String>::new(), "{version}");
    }
}

/// An IPAM stand-in used only when our host-local is not built (Go's v1.1.1 knows
/// neither STATUS nor GC): records the request and succeeds.
fn install_recording_ipam(w: &World) -> PathBuf {
    let rec = w.path("ipam-rec");
    std::fs::create_dir_all(&rec).unwrap();
    let script = format!(
        "#!/bin/sh\ncat > '{}/'\"$CNI_COMMAND\"\nexit 0\n",
        rec.display()
    );
    let p = w.bin.join("host-local");
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    rec
}

/// STATUS and GC exactly as a 1.1 runtime sends them: the plugin config with `name` and
/// `cniVersion` injected, GC's valid list under both keys, and empty CNI_CONTAINERID,
/// CNI_NETNS, CNI_IFNAME and CNI_ARGS.
#[test]
fn status_and_gc_as_a_1_1_runtime_sends_them() {
    let w = world();
    let c10 = conf(&w, "1.0.0", json!({"ipMasq": true, "macspoofchk": true}));
    let pods: Vec<NetNs> = (0..3).map(|_| NetNs::new()).collect();
    for (i, p) in pods.iter().enumerate() {
        add(&w, &format!("pod{i}"), p, &c10);
    }
    let rec = if ours_ipam() {
        None
    } else {
        Some(install_recording_ipam(&w))
    };
    let mut c11 = conf(&w, "1.1.0", json!({"ipMasq": true, "macspoofchk": true}));
    let empty = |cmd: &str| Env {
        command: cmd.into(),
        ifname: String::new(),
        ..Default::default()
    };
    w.exec("bridge", &empty("STATUS"), c11.to_string().as_bytes())
        .ok();

    let valid = json!([{"containerID": "pod0", "ifname": "eth0"}]);
    c11["cni.dev/valid-attachments"] = valid.clone();
    c11["cni.dev/attachments"] = valid;
    w.exec("bridge", &empty("GC"), c11.to_string().as_bytes())
        .ok();
    let rules = w.node.sh("nft list ruleset");
    assert_eq!(rules.matches("masquerade comment").count(), 1, "{rules}");
    assert!(rules.contains("id: pod0"), "{rules}");
    assert!(
        rules.contains("macspoofchk-pod0-eth0") && !rules.contains("macspoofchk-pod1"),
        "{rules}"
    );
    match rec {
        None => assert_eq!(
            reservations(&w).len(),
            1,
            "host-local released pod1 and pod2"
        ),
        Some(rec) => {
            let gc: Value =
                serde_json::from_slice(&std::fs::read(rec.join("GC")).unwrap()).unwrap();
            assert_eq!(gc["cni.dev/valid-attachments"][0]["containerID"], "pod0");
            assert!(rec.join("STATUS").is_file());
        }
    }

    // A link named like the bridge that is not one (this kernel has no dummy links): the
    // network cannot take pods.
    let w2 = world();
    w2.node.sh("ip link add cni0 type veth peer name cni0p");
    let c = conf(&w2, "1.1.0", json!({}));
    let out = w2.exec("bridge", &empty("STATUS"), c.to_string().as_bytes());
    let msg = out.err(50);
    assert!(msg.contains("not a bridge"), "{msg}");
    w2.node
        .sh("ip link del cni0 && ip link add cni0 type bridge");
    let out = w2.exec("bridge", &empty("STATUS"), c.to_string().as_bytes());
    assert!(out.err(51).contains("is down"));
}

#[test]
fn clear_errors_for_the_known_traps() {
    let w = world();
    let c = conf(&w, "1.0.0", json!({}));
    // CNI_NETNS missing, and not a namespace.
    let msg = exec(&w, "ADD", "p", "/proc/self/task/999999999/ns/net", &c).err(4);
    assert!(msg.contains("/proc/self/task/999999999/ns/net"), "{msg}");
    let file = w.path("not-a-netns");
    std::fs::write(&file, b"").unwrap();
    let msg = exec(&w, "ADD", "p", &file.to_string_lossy(), &c).err(4);
    assert!(
        msg.contains(&*file.to_string_lossy()) && msg.contains("not a network namespace"),
        "{msg}"
    );
    // CNI_IFNAME already in the pod.
    let pod = NetNs::new();
    pod.sh("ip link add eth0 type veth peer name other0");
    let msg = exec(&w, "ADD", "p", pod.path(), &c).err(999);
    assert!(msg.contains("(eth0) already exists in netns"), "{msg}");
    assert!(
        pod.links().contains(&"eth0".to_string()),
        "the pod's link is kept"
    );
    // The bridge carries another subnet's gateway.
    let pod2 = NetNs::new();
    w.node.sh(
        "(ip link show cni0 >/dev/null 2>&1 || ip link add cni0 type bridge) && \
         ip addr add 10.99.0.1/24 dev cni0",
    );
    let msg = exec(&w, "ADD", "p2", pod2.path(), &c).err(7);
    assert!(
        msg.contains("already has an IP address different from 10.88.0.1/24")
            && msg.contains("10.99.0.1/24")
            && msg.contains("forceAddress"),
        "{msg}"
    );
    assert!(!pod2.links().contains(&"eth0".to_string()));
    let forced = conf(&w, "1.0.0", json!({"forceAddress": true}));
    add(&w, "p2", &pod2, &forced);
    del(&w, "p2", pod2.path(), &forced);
    // A non-bridge under the bridge's name.
    let w2 = world();
    w2.node.sh("ip link add cni0 type veth peer name cni0p");
    let msg = exec(
        &w2,
        "ADD",
        "p",
        NetNs::new().path(),
        &conf(&w2, "1.0.0", json!({})),
    )
    .err(7);
    assert!(msg.contains("already exists but is not a bridge"), "{msg}");
    assert_eq!(leftovers(&w), Vec::<String>::new());
    assert_eq!(leftovers(&w2), Vec::<String>::new());
}
