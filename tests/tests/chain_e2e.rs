//! The whole chain (flannel → bridge → host-local, all ours) on a throwaway node, driven
//! by the real cnitool (libcni 1.1.2) for 0.3.1/0.4.0/1.0.0 conflists and, for 1.1.0, by
//! exec'ing the plugins with exactly what a 1.1 runtime sends. Every conflist in
//! conf-examples/ is exercised here, with its paths pointed into the test's temp dir.

use e2e::{eventually, json, list_files, saved_configs, Env, Impl, NetNs, World};
use serde_json::Value;
use std::path::{Path, PathBuf};

const V4_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
const DUAL_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd44::/56\nFLANNEL_IPV6_SUBNET=fd44:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

fn example(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../conf-examples")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// A node: our three plugins (the multi-call binary when built) plus Go's portmap, which
/// kube-flannel chains after flannel and which reads our result as its prevResult.
fn node() -> World {
    let w = World::new();
    if e2e::go_available("portmap") {
        w.install("portmap", Impl::Go);
    }
    w
}

fn write_subnet_env(w: &World, text: &str) {
    std::fs::create_dir_all(w.path("run/flannel")).unwrap();
    std::fs::write(w.path("run/flannel/subnet.env"), text).unwrap();
}

/// Points a conflist's state paths into the world and writes it to `<world>/net.d`.
fn install_conflist(w: &World, mut list: Value, version: Option<&str>) -> (PathBuf, Value) {
    if let Some(v) = version {
        list["cniVersion"] = json!(v);
    }
    if !e2e::go_available("portmap") {
        list["plugins"]
            .as_array_mut()
            .unwrap()
            .retain(|p| p["type"] != "portmap");
    }
    for p in list["plugins"].as_array_mut().unwrap() {
        match p["type"].as_str() {
            Some("flannel") => {
                p["subnetFile"] = json!(w.path_str("run/flannel/subnet.env"));
                p["dataDir"] = json!(w.path_str("flannel"));
                p["ipam"] = json!({"dataDir": w.path_str("ipam")});
            }
            Some("bridge") => {
                p["ipam"]["dataDir"] = json!(w.path_str("ipam"));
            }
            _ => {}
        }
    }
    let dir = w.path("net.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("10-test.conflist"), list.to_string()).unwrap();
    (dir, list)
}

fn cnitool(w: &World, confdir: &Path, cmd: &str, net: &str, pod: &NetNs) -> (i32, String, String) {
    w.cnitool(confdir, cmd, net, pod)
}

/// What is left on the node after every pod is gone: veths, reservations, saved configs,
/// masquerade rules.
fn leftovers(w: &World) -> Vec<String> {
    let mut left = Vec::new();
    for l in w.node.links() {
        if l.starts_with("veth") {
            left.push(format!("link {l}"));
        }
    }
    for f in list_files(&w.path("ipam")) {
        let name = Path::new(&f)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if name.parse::<std::net::IpAddr>().is_ok() {
            left.push(format!("reservation {f}"));
        }
    }
    for f in list_files(&w.path("flannel")) {
        left.push(format!("saved config {f}"));
    }
    // The table and its base chains stay (as with Go); per-pod rules must not.
    let (_, rules, _) = w.node.run("nft", &["list", "ruleset"]);
    for rule in rules
        .lines()
        .filter(|l| l.contains("saddr") && l.contains("masquerade"))
    {
        left.push(format!("nft rule {}", rule.trim()));
    }
    left
}

fn pod_ip(result: &Value, v6: bool) -> String {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap())
        .find(|a| a.contains(':') == v6)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn kube_flannel_conflist_through_cnitool_every_version() {
    for version in ["0.3.1", "0.4.0", "1.0.0"] {
        let w = node();
        write_subnet_env(&w, V4_ENV);
        let (dir, _) = install_conflist(&w, example("10-flannel.conflist"), Some(version));
        let (a, b) = (NetNs::new(), NetNs::new());
        let mut ips = Vec::new();
        for pod in [&a, &b] {
            let (code, out, err) = cnitool(&w, &dir, "add", "cbr0", pod);
            assert_eq!(code, 0, "{version} add: {err}{out}");
            let v: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["cniVersion"], version);
            let names: Vec<&str> = v["interfaces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["name"].as_str().unwrap())
                .collect();
            assert_eq!(names[0], "cni0");
            assert_eq!(names[2], "eth0");
            assert_eq!(v["interfaces"][2]["sandbox"], pod.path());
            assert_eq!(v["ips"][0]["interface"], 2);
            ips.push(pod_ip(&v, false));
        }
        assert_ne!(ips[0], ips[1]);
        a.sh(&format!("ping -c 1 -W 2 {}", ips[1]));
        b.sh(&format!("ping -c 1 -W 2 {}", ips[0]));
        a.sh("ping -c 1 -W 2 10.244.1.1");
        // The default route and the cluster route are in the pod (isDefaultGateway).
        let routes = a.sh("ip route");
        assert!(routes.contains("default via 10.244.1.1"), "{routes}");
        assert!(routes.contains("10.244.0.0/16 via 10.244.1.1"), "{routes}");
        // Not /sys/class/net: sysfs shows the namespace of whoever mounted it.
        let link = a.sh("ip -o link show eth0");
        assert!(link.contains("mtu 1450 "), "{link}");
        if version != "0.3.1" {
            let (code, out, err) = cnitool(&w, &dir, "check", "cbr0", &a);
            assert_eq!(code, 0, "{version} check: {err}{out}");
        }
        for pod in [&a, &b] {
            let (code, out, err) = cnitool(&w, &dir, "del", "cbr0", pod);
            assert_eq!(code, 0, "{version} del: {err}{out}");
        }
        assert_eq!(leftovers(&w), Vec::<String>::new(), "{version}");
    }
}

#[test]
fn dual_stack_conflist_through_cnitool() {
    let w = node();
    write_subnet_env(&w, DUAL_ENV);
    let (dir, _) = install_conflist(&w, example("10-flannel-dualstack.conflist"), None);
    let (a, b) = (NetNs::new(), NetNs::new());
    let mut res = Vec::new();
    for pod in [&a, &b] {
        let (code, out, err) = cnitool(&w, &dir, "add", "cbr0", pod);
        assert_eq!(code, 0, "add: {err}{out}");
        res.push(serde_json::from_str::<Value>(&out).unwrap());
    }
    assert_eq!(res[0]["ips"].as_array().unwrap().len(), 2);
    a.sh(&format!("ping -c 1 -W 2 {}", pod_ip(&res[1], false)));
    a.sh(&format!("ping -c 1 -W 2 {}", pod_ip(&res[1], true)));
    b.sh(&format!("ping -c 1 -W 2 {}", pod_ip(&res[0], true)));
    // FLANNEL_IPMASQ=false: the bridge masquerades, so the rule is there while pods live.
    let (_, rules, _) = w.node.run("nft", &["list", "ruleset"]);
    assert!(
        rules.contains("saddr 10.244.1.") && rules.contains("masquerade"),
        "{rules}"
    );
    let (code, out, err) = cnitool(&w, &dir, "check", "cbr0", &a);
    assert_eq!(code, 0, "check: {err}{out}");
    for pod in [&a, &b] {
        let (code, out, err) = cnitool(&w, &dir, "del", "cbr0", pod);
        assert_eq!(code, 0, "del: {err}{out}");
    }
    assert_eq!(leftovers(&w), Vec::<String>::new());
}

/// The first plugin's stdin as libcni builds it: the plugin object with the list's name and
/// cniVersion injected (and, for GC, the attachment keys).
fn plugin_stdin(list: &Value, extra: &[(&str, Value)]) -> Vec<u8> {
    let mut p = list["plugins"][0].clone();
    p["name"] = list["name"].clone();
    p["cniVersion"] = list["cniVersion"].clone();
    for (k, v) in extra {
        p[*k] = v.clone();
    }
    p.to_string().into_bytes()
}

/// A 1.1 runtime (containerd 2 / CRI-O): ADD, CHECK with prevResult, STATUS, GC with a
/// valid list, DEL with prevResult.
#[test]
fn cni_1_1_conflist_as_a_1_1_runtime_drives_it() {
    let w = node();
    write_subnet_env(&w, V4_ENV);
    let (_, list) = install_conflist(&w, example("10-flannel-cni1.1.conflist"), None);
    let (keep, stale) = (NetNs::new(), NetNs::new());
    let plain = plugin_stdin(&list, &[]);
    let r_keep = w
        .exec("flannel", &Env::new("ADD", "keep", keep.path()), &plain)
        .ok()
        .json();
    assert_eq!(r_keep["cniVersion"], "1.1.0");
    let r_stale = w
        .exec("flannel", &Env::new("ADD", "stale", stale.path()), &plain)
        .ok()
        .json();
    keep.sh(&format!("ping -c 1 -W 2 {}", pod_ip(&r_stale, false)));
    let check = plugin_stdin(&list, &[("prevResult", r_keep.clone())]);
    w.exec("flannel", &Env::new("CHECK", "keep", keep.path()), &check)
        .ok();
    let status_env = Env::new("STATUS", "", "").ifname("");
    w.exec("flannel", &status_env, &plain).ok();
    // The stale pod's namespace dies without a DEL (a crashed runtime); GC reclaims it.
    let stale_veth = r_stale["interfaces"][1]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(stale);
    eventually("the dead pod's host veth disappears", || {
        !w.node.links().contains(&stale_veth)
    });
    let valid = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let gc = plugin_stdin(
        &list,
        &[
            ("cni.dev/valid-attachments", valid.clone()),
            ("cni.dev/attachments", valid),
        ],
    );
    w.exec("flannel", &Env::new("GC", "", "").ifname(""), &gc)
        .ok();
    let left = list_files(&w.path("ipam"));
    let owners: Vec<String> = left
        .iter()
        .filter(|f| {
            Path::new(f)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .parse::<std::net::IpAddr>()
                .is_ok()
        })
        .map(|f| std::fs::read_to_string(w.path("ipam").join(f)).unwrap())
        .collect();
    assert_eq!(
        owners,
        ["keep\r\neth0"],
        "GC must keep exactly the valid attachment"
    );
    assert_eq!(saved_configs(&w.path("flannel")), ["keep"]);
    // STATUS turns 50 when subnet.env goes away; DEL still works without it.
    std::fs::remove_file(w.path("run/flannel/subnet.env")).unwrap();
    w.exec("flannel", &status_env, &plain).err(50);
    let del = plugin_stdin(&list, &[("prevResult", r_keep)]);
    w.exec("flannel", &Env::new("DEL", "keep", keep.path()), &del)
        .ok();
    w.exec("flannel", &Env::new("DEL", "keep", keep.path()), &del)
        .ok();
    assert_eq!(leftovers(&w), Vec::<String>::new());
}

/// The standalone bridge + host-local example (ipMasq on, dual-stack ranges) as a 1.1
/// runtime drives it.
#[test]
fn standalone_bridge_conflist() {
    let w = node();
    let (_, mut list) = install_conflist(&w, example("20-bridge-host-local.conflist"), None);
    // Keep the example's shape but a bridge name of this world's own.
    list["plugins"][0]["bridge"] = json!("cni0");
    let pod = NetNs::new();
    let stdin = plugin_stdin(&list, &[]);
    let r = w
        .exec("bridge", &Env::new("ADD", "solo", pod.path()), &stdin)
        .ok()
        .json();
    assert_eq!(r["ips"].as_array().unwrap().len(), 2);
    pod.sh("ping -c 1 -W 2 10.22.0.1");
    let (_, rules, _) = w.node.run("nft", &["list", "ruleset"]);
    assert!(
        rules.contains("masquerade") && rules.contains("id: solo"),
        "{rules}"
    );
    let with_prev = plugin_stdin(&list, &[("prevResult", r)]);
    w.exec("bridge", &Env::new("CHECK", "solo", pod.path()), &with_prev)
        .ok();
    w.exec("bridge", &Env::new("STATUS", "", "").ifname(""), &stdin)
        .ok();
    w.exec("bridge", &Env::new("DEL", "solo", pod.path()), &with_prev)
        .ok();
    assert_eq!(leftovers(&w), Vec::<String>::new());
}

/// The operator's trail: `logFile` on flannel gives one line per invocation of every
/// plugin of the chain, with command, container, ifname, network, outcome and duration.
#[test]
fn invocation_log_covers_the_whole_chain() {
    let w = node();
    write_subnet_env(&w, V4_ENV);
    let (_, mut list) = install_conflist(&w, example("10-flannel-cni1.1.conflist"), None);
    let log = w.path("cni.log");
    list["plugins"][0]["logFile"] = json!(log.to_string_lossy());
    let pod = NetNs::new();
    let stdin = plugin_stdin(&list, &[]);
    w.exec("flannel", &Env::new("ADD", "logged", pod.path()), &stdin)
        .ok();
    w.exec("flannel", &Env::new("DEL", "logged", pod.path()), &stdin)
        .ok();
    let missing = Env::new("ADD", "broken", "/nonexistent/netns");
    w.exec("flannel", &missing, &stdin).err(4);
    let text = std::fs::read_to_string(&log).unwrap();
    for plugin in ["flannel", "bridge", "host-local"] {
        for cmd in ["ADD", "DEL"] {
            let needle =
                format!("plugin={plugin} cmd={cmd} net=cbr0 cid=\"logged\" ifname=\"eth0\"");
            let line = text.lines().find(|l| l.contains(&needle));
            let line = line.unwrap_or_else(|| panic!("no line for {needle} in\n{text}"));
            assert!(
                line.contains("result=ok") && line.contains("duration_ms="),
                "{line}"
            );
        }
    }
    assert!(
        text.lines().any(|l| l.contains("plugin=flannel cmd=ADD")
            && l.contains("cid=\"broken\"")
            && l.contains("result=error code=4")),
        "{text}"
    );
}

/// scripts/install.sh as an operator runs it: one file, three hard links, a conflist;
/// a re-install replaces the files by rename; --uninstall removes exactly what it put.
#[test]
fn install_script_installs_atomically_and_uninstalls() {
    let w = World::new();
    let from = e2e::our_bin_dir();
    assert!(
        from.join("cni-plugins").is_file(),
        "build the multi-call binary first"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (bin, conf) = (w.path("opt/cni/bin"), w.path("etc/cni/net.d"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("portmap"), b"someone else's plugin").unwrap();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(root.join("scripts/install.sh"))
            .args([
                "--bin-dir",
                bin.to_str().unwrap(),
                "--conf-dir",
                conf.to_str().unwrap(),
            ])
            .args(["--from", from.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[]);
    use std::os::unix::fs::MetadataExt;
    let inode = |p: &str| std::fs::metadata(bin.join(p)).unwrap().ino();
    assert_eq!(inode("flannel"), inode("bridge"));
    assert_eq!(inode("bridge"), inode("host-local"));
    assert!(conf.join("10-flannel.conflist").is_file());
    let before = inode("flannel");
    // A runtime holding the old binary open keeps it: the upgrade is a rename, not a rewrite.
    let held = std::fs::File::open(bin.join("flannel")).unwrap();
    run(&[]);
    assert_ne!(
        inode("flannel"),
        before,
        "re-install must replace by rename"
    );
    assert_eq!(held.metadata().unwrap().ino(), before);
    let left: Vec<String> = std::fs::read_dir(&bin)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter().all(|n| !n.starts_with('.')),
        "temp files left: {left:?}"
    );
    run(&["--uninstall"]);
    assert!(
        !bin.join("flannel").exists()
            && !bin.join("bridge").exists()
            && !bin.join("host-local").exists()
    );
    assert!(
        bin.join("portmap").exists(),
        "uninstall must leave other plugins alone"
    );
    assert!(!conf.join("10-flannel.conflist").exists());
}
