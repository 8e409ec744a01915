//! Hostile and broken input: hundreds of bad requests across the three plugins. Each must
//! end in a CNI error JSON on stdout with the expected code and a message, a non-zero exit,
//! no panic, and no change on disk (the world's state dir) or in the kernel (the node's
//! links, addresses, routes and nftables ruleset).

use e2e::{json, list_files, Env, NetNs, World};
use serde_json::Value;

struct Case {
    label: String,
    plugin: &'static str,
    env: Env,
    stdin: Vec<u8>,
    code: u64,
}

fn snapshot(w: &World) -> (Vec<String>, String) {
    let mut files = list_files(w.dir.path());
    files.retain(|f| !f.starts_with("bin/"));
    let kernel = w
        .node
        .sh("ip -o link; ip -o addr; ip route; ip -6 route; nft list ruleset");
    (files, kernel)
}

fn bridge_conf(w: &World) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "hnet", "type": "bridge", "bridge": "hbr0",
        "isGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.30.0.0/24"}]], "dataDir": w.path_str("ipam")}
    })
}

fn host_local_conf(w: &World) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "hnet", "type": "host-local",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.31.0.0/24"}]], "dataDir": w.path_str("ipam")}
    })
}

fn flannel_conf(w: &World) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "hnet", "type": "flannel",
        "subnetFile": w.path_str("subnet.env"), "dataDir": w.path_str("flannel"),
        "delegate": {"bridge": "hbr1"},
        "ipam": {"dataDir": w.path_str("ipam")}
    })
}

/// Truncations, wrong types, bad versions and huge documents derived from a valid config.
fn generic_cases(plugin: &'static str, valid: &Value, pod: &str, out: &mut Vec<Case>) {
    let text = valid.to_string();
    let add = Env::new("ADD", "hostile", pod);
    let mut push = |label: String, stdin: Vec<u8>, code: u64| {
        out.push(Case {
            label: format!("{plugin}: {label}"),
            plugin,
            env: add.clone(),
            stdin,
            code,
        })
    };
    for cut in [
        0,
        1,
        2,
        5,
        10,
        20,
        text.len() / 2,
        text.len() - 2,
        text.len() - 1,
    ] {
        push(
            format!("truncated at {cut}"),
            text.as_bytes()[..cut].to_vec(),
            6,
        );
    }
    for junk in [
        "null",
        "42",
        "\"str\"",
        "[]",
        "true",
        "{,}",
        "{\"a\":}",
        "\u{0}",
        "\u{feff}{}",
        "{} {}",
        "{\"name\":\"x\",}",
    ] {
        push(
            format!("not a config: {junk:?}"),
            junk.as_bytes().to_vec(),
            6,
        );
    }
    push(
        "invalid UTF-8".into(),
        vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
        6,
    );
    push(
        "NUL inside a string".into(),
        text.replacen("hnet", "h\u{0}net", 1).into_bytes(),
        6,
    );
    for (key, bad) in [
        ("cniVersion", json!(1)),
        ("cniVersion", json!(["1.0.0"])),
        ("name", json!(7)),
        ("name", json!({"a": 1})),
        ("type", json!(false)),
    ] {
        let mut v = valid.clone();
        v[key] = bad.clone();
        push(format!("{key} = {bad}"), v.to_string().into_bytes(), 6);
    }
    for ver in [
        "0.5.0",
        "2.0.0",
        "1.0",
        "1.0.0.0",
        "v1.0.0",
        " 1.0.0",
        "1.1.0-rc1",
        "99999999999.0.0",
    ] {
        let mut v = valid.clone();
        v["cniVersion"] = json!(ver);
        push(format!("cniVersion {ver:?}"), v.to_string().into_bytes(), 1);
    }
    for name in [
        "",
        "../../etc",
        "a/b",
        "..",
        ".",
        "-x",
        "a b",
        "a\nb",
        "a\u{1b}[31m",
        "é",
        "a;b",
        "a:b",
    ] {
        let mut v = valid.clone();
        v["name"] = json!(name);
        push(
            format!("network name {name:?}"),
            v.to_string().into_bytes(),
            7,
        );
    }
    let mut v = valid.clone();
    v["name"] = json!("n".repeat(300));
    push(
        "network name of 300 bytes".into(),
        v.to_string().into_bytes(),
        7,
    );
    let mut v = valid.clone();
    v["junk"] = json!("x".repeat(5 << 20));
    push("5 MiB document".into(), v.to_string().into_bytes(), 7);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    push("deeply nested".into(), deep.into_bytes(), 6);
    if plugin != "bridge" {
        // Only bridge reads prevResult itself (host-local ignores it, flannel hands it on).
        return;
    }
    let mut v = valid.clone();
    v["cniVersion"] = json!("0.4.0");
    v["prevResult"] = json!({"cniVersion": "0.4.0", "ips": [{"address": "garbage"}]});
    out.push(Case {
        label: format!("{plugin}: CHECK with a garbled prevResult"),
        plugin,
        env: Env::new("CHECK", "hostile", pod),
        stdin: v.to_string().into_bytes(),
        code: 6,
    });
}

/// Bad environments: missing or malformed CNI_* variables.
fn env_cases(plugin: &'static str, valid: &Value, pod: &str, out: &mut Vec<Case>) {
    let stdin = valid.to_string().into_bytes();
    let mut push = |label: String, env: Env, code: u64| {
        out.push(Case {
            label: format!("{plugin}: {label}"),
            plugin,
            env,
            stdin: stdin.clone(),
            code,
        })
    };
    for cid in [
        "",
        "../../../etc/passwd",
        "a/b",
        ".hidden",
        "-dash",
        "a b",
        "a\nb",
        "a\u{7}b",
        "ä",
        &"c".repeat(300),
    ] {
        let code = 4;
        push(
            format!(
                "container id {:?}",
                cid.chars().take(20).collect::<String>()
            ),
            Env::new("ADD", cid, pod),
            code,
        );
    }
    for ifname in [
        "",
        ".",
        "..",
        "a/b",
        "a:b",
        "a b",
        "1234567890123456",
        "eth\n0",
        "\u{1b}x",
    ] {
        push(
            format!("ifname {ifname:?}"),
            Env::new("ADD", "hostile", pod).ifname(ifname),
            4,
        );
    }
    push(
        "ADD without netns".into(),
        Env::new("ADD", "hostile", ""),
        4,
    );
    push(
        "CHECK without netns".into(),
        Env::new("CHECK", "hostile", ""),
        4,
    );
    push(
        "unknown command".into(),
        Env::new("FROB", "hostile", pod),
        4,
    );
    push(
        "lower-case command".into(),
        Env::new("add", "hostile", pod),
        4,
    );
    push(
        "CNI_ARGS pair without =".into(),
        Env::new("ADD", "hostile", pod).args("IgnoreUnknown"),
        4,
    );
    push(
        "CNI_ARGS empty key".into(),
        Env::new("ADD", "hostile", pod).args("=x"),
        4,
    );
    let mut no_path = Env::new("ADD", "hostile", pod);
    no_path.extra.push(("CNI_PATH".into(), String::new()));
    push("ADD without CNI_PATH".into(), no_path, 4);
    push(
        "GC of a 1.0.0 config".into(),
        Env::new("GC", "", "").ifname(""),
        1,
    );
    push(
        "STATUS of a 1.0.0 config".into(),
        Env::new("STATUS", "", "").ifname(""),
        1,
    );
    let mut old = valid.clone();
    old["cniVersion"] = json!("0.3.1");
    out.push(Case {
        label: format!("{plugin}: CHECK of a 0.3.1 config"),
        plugin,
        env: Env::new("CHECK", "hostile", pod),
        stdin: old.to_string().into_bytes(),
        code: 1,
    });
}

/// Netns paths that are not network namespaces.
fn netns_cases(plugin: &'static str, valid: &Value, w: &World, out: &mut Vec<Case>) {
    std::fs::write(w.path("plainfile"), b"not a namespace").unwrap();
    for (label, path) in [
        ("a regular file", w.path_str("plainfile")),
        ("a directory", w.path_str("")),
        ("a mount namespace", "/proc/self/ns/mnt".to_string()),
        ("a missing path", w.path_str("no/such/ns")),
        ("a relative path", "relative/ns".to_string()),
    ] {
        out.push(Case {
            label: format!("{plugin}: netns is {label}"),
            plugin,
            env: Env::new("ADD", "hostile", &path),
            stdin: valid.to_string().into_bytes(),
            code: 4,
        });
    }
}

fn host_local_specific(w: &World, pod: &str, out: &mut Vec<Case>) {
    let base = host_local_conf(w);
    let add = Env::new("ADD", "hostile", pod);
    let ipam = |patch: Value| {
        let mut v = base.clone();
        for (k, val) in patch.as_object().unwrap() {
            v["ipam"][k] = val.clone();
        }
        v.to_string().into_bytes()
    };
    let cases: Vec<(&str, Value, u64)> = vec![
        ("ranges not a list", json!({"ranges": {"a": 1}}), 7),
        (
            "range set not a list",
            json!({"ranges": ["10.0.0.0/24"]}),
            7,
        ),
        (
            "subnet not a CIDR",
            json!({"ranges": [[{"subnet": "10.0.0.0"}]]}),
            7,
        ),
        (
            "subnet garbage",
            json!({"ranges": [[{"subnet": "banana"}]]}),
            7,
        ),
        (
            "subnet with host bits",
            json!({"ranges": [[{"subnet": "10.0.0.5/24"}]]}),
            7,
        ),
        (
            "subnet /32",
            json!({"ranges": [[{"subnet": "10.0.0.0/32"}]]}),
            7,
        ),
        (
            "subnet /128",
            json!({"ranges": [[{"subnet": "fd00::/128"}]]}),
            7,
        ),
        (
            "subnet prefix 33",
            json!({"ranges": [[{"subnet": "10.0.0.0/33"}]]}),
            7,
        ),
        (
            "rangeStart outside",
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}]]}),
            7,
        ),
        (
            "rangeEnd outside",
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.9.0.5"}]]}),
            7,
        ),
        (
            "rangeStart garbage",
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "x"}]]}),
            7,
        ),
        (
            "gateway garbage",
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": 12}]]}),
            7,
        ),
        (
            "overlapping sets",
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}),
            7,
        ),
        (
            "overlap within a set",
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.128/25"}]]}),
            7,
        ),
        (
            "mixed families",
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}),
            7,
        ),
        ("empty range set", json!({"ranges": [[]]}), 7),
        ("no ranges", json!({"ranges": []}), 7),
        ("routes not a list", json!({"routes": "0.0.0.0/0"}), 7),
        ("route dst garbage", json!({"routes": [{"dst": "nope"}]}), 7),
        (
            "route gw garbage",
            json!({"routes": [{"dst": "0.0.0.0/0", "gw": "nope"}]}),
            7,
        ),
        ("dataDir not a string", json!({"dataDir": 5}), 7),
        (
            "resolvConf missing",
            json!({"resolvConf": w.path_str("no-resolv.conf")}),
            999,
        ),
    ];
    for (label, patch, code) in cases {
        out.push(Case {
            label: format!("host-local: {label}"),
            plugin: "host-local",
            env: add.clone(),
            stdin: ipam(patch),
            code,
        });
    }
    let mut v = base.clone();
    v.as_object_mut().unwrap().remove("ipam");
    out.push(Case {
        label: "host-local: no ipam".into(),
        plugin: "host-local",
        env: add.clone(),
        stdin: v.to_string().into_bytes(),
        code: 7,
    });
    for ip in [
        "10.99.0.1",
        "banana",
        "10.31.0.1",
        "10.31.0.0/33",
        "::ffff:zz",
    ] {
        out.push(Case {
            label: format!("host-local: requested IP {ip}"),
            plugin: "host-local",
            env: add.clone().args(&format!("IgnoreUnknown=1;IP={ip}")),
            stdin: base.to_string().into_bytes(),
            code: 7,
        });
        let mut v = base.clone();
        v["runtimeConfig"] = json!({"ips": [ip]});
        out.push(Case {
            label: format!("host-local: runtimeConfig.ips {ip}"),
            plugin: "host-local",
            env: add.clone(),
            stdin: v.to_string().into_bytes(),
            code: 7,
        });
    }
    // State dirs that are not what they should be.
    std::fs::write(w.path("file-as-datadir"), b"").unwrap();
    std::os::unix::fs::symlink("/etc", w.path("link-to-etc")).unwrap();
    for (label, dir) in [
        ("a regular file", w.path_str("file-as-datadir")),
        ("a symlink to /etc", w.path_str("link-to-etc")),
    ] {
        let mut v = base.clone();
        v["ipam"]["dataDir"] = json!(dir);
        v["name"] = json!("passwd");
        out.push(Case {
            label: format!("host-local: dataDir is {label}"),
            plugin: "host-local",
            env: add.clone(),
            stdin: v.to_string().into_bytes(),
            code: 999,
        });
    }
}

fn bridge_specific(w: &World, pod: &str, out: &mut Vec<Case>) {
    let base = bridge_conf(w);
    let add = Env::new("ADD", "hostile", pod);
    let cases: Vec<(&str, Value)> = vec![
        ("vlan 4095", json!({"vlan": 4095})),
        ("vlan -1", json!({"vlan": -1})),
        ("vlan string", json!({"vlan": "10"})),
        ("mtu string", json!({"mtu": "1500"})),
        ("mtu negative", json!({"mtu": -5})),
        (
            "hairpin and promisc",
            json!({"hairpinMode": true, "promiscMode": true}),
        ),
        ("isGateway string", json!({"isGateway": "yes"})),
        ("ipMasqBackend unknown", json!({"ipMasqBackend": "pf"})),
        (
            "bridge name too long",
            json!({"bridge": "abcdefghijklmnop"}),
        ),
        ("bridge name with slash", json!({"bridge": "a/b"})),
        ("bridge name ..", json!({"bridge": ".."})),
        (
            "vlanTrunk minID 0",
            json!({"vlanTrunk": [{"minID": 0, "maxID": 5}]}),
        ),
        (
            "vlanTrunk min > max",
            json!({"vlanTrunk": [{"minID": 9, "maxID": 5}]}),
        ),
        ("vlanTrunk id 5000", json!({"vlanTrunk": [{"id": 5000}]})),
        ("vlanTrunk maxID only", json!({"vlanTrunk": [{"maxID": 5}]})),
        (
            "disableContainerInterface with IPAM",
            json!({"disableContainerInterface": true}),
        ),
        ("ipam not an object", json!({"ipam": "host-local"})),
        ("ipam type not a string", json!({"ipam": {"type": 3}})),
        (
            "ipam type with a slash",
            json!({"ipam": {"type": "../../bin/sh"}}),
        ),
        (
            "ipam plugin missing",
            json!({"ipam": {"type": "no-such-ipam"}}),
        ),
        ("dns not an object", json!({"dns": "8.8.8.8"})),
        ("mac garbage", json!({"runtimeConfig": {"mac": "zz:zz"}})),
    ];
    for (label, patch) in cases {
        let mut v = base.clone();
        for (k, val) in patch.as_object().unwrap() {
            v[k] = val.clone();
        }
        let code = match label {
            "ipam plugin missing" | "ipam type with a slash" => 7,
            _ => 7,
        };
        out.push(Case {
            label: format!("bridge: {label}"),
            plugin: "bridge",
            env: add.clone(),
            stdin: v.to_string().into_bytes(),
            code,
        });
    }
    out.push(Case {
        label: "bridge: CNI_ARGS MAC garbage".into(),
        plugin: "bridge",
        env: add.clone().args("IgnoreUnknown=1;MAC=garbage"),
        stdin: base.to_string().into_bytes(),
        code: 7,
    });
}

fn flannel_specific(w: &World, pod: &str, out: &mut Vec<Case>) {
    let base = flannel_conf(w);
    let add = Env::new("ADD", "hostile", pod);
    let conf_cases: Vec<(&str, Value, u64)> = vec![
        ("delegate with name", json!({"delegate": {"name": "x"}}), 7),
        ("delegate with ipam", json!({"delegate": {"ipam": {}}}), 7),
        (
            "delegate type not a string",
            json!({"delegate": {"type": 5}}),
            7,
        ),
        ("delegate not an object", json!({"delegate": "bridge"}), 7),
        (
            "delegate type with a slash",
            json!({"delegate": {"type": "../../bin/sh"}}),
            7,
        ),
        ("subnetFile not a string", json!({"subnetFile": 1}), 7),
        ("dataDir not a string", json!({"dataDir": []}), 7),
        ("ipam not an object", json!({"ipam": 4}), 7),
        (
            "ipam.routes garbage",
            json!({"ipam": {"routes": [{"dst": "nope"}]}}),
            7,
        ),
        (
            "subnet.env missing",
            json!({"subnetFile": w.path_str("nothing-here.env")}),
            11,
        ),
    ];
    for (label, patch, code) in conf_cases {
        let mut v = base.clone();
        for (k, val) in patch.as_object().unwrap() {
            v[k] = val.clone();
        }
        out.push(Case {
            label: format!("flannel: {label}"),
            plugin: "flannel",
            env: add.clone(),
            stdin: v.to_string().into_bytes(),
            code,
        });
    }
    let envs = [
        ("empty", ""),
        ("no network", "FLANNEL_SUBNET=10.40.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"),
        ("no subnet", "FLANNEL_NETWORK=10.40.0.0/16\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"),
        ("no mtu", "FLANNEL_NETWORK=10.40.0.0/16\nFLANNEL_SUBNET=10.40.1.1/24\nFLANNEL_IPMASQ=true\n"),
        ("bad subnet", "FLANNEL_NETWORK=10.40.0.0/16\nFLANNEL_SUBNET=banana\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"),
        ("bad mtu", "FLANNEL_NETWORK=10.40.0.0/16\nFLANNEL_SUBNET=10.40.1.1/24\nFLANNEL_MTU=-1\nFLANNEL_IPMASQ=true\n"),
        ("key without =", "FLANNEL_NETWORK\nFLANNEL_SUBNET=10.40.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"),
        ("binary junk", "\u{0}\u{1}\u{2}FLANNEL_NETWORK=\u{ff}"),
        ("v6 subnet in v4 key", "FLANNEL_NETWORK=10.40.0.0/16\nFLANNEL_SUBNET=fd00::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"),
        ("huge mtu", "FLANNEL_NETWORK=10.40.0.0/16\nFLANNEL_SUBNET=10.40.1.1/24\nFLANNEL_MTU=99999999999999999999\nFLANNEL_IPMASQ=true\n"),
    ];
    for (i, (label, text)) in envs.iter().enumerate() {
        let file = w.path(&format!("subnet-{i}.env"));
        std::fs::write(&file, text).unwrap();
        let mut v = base.clone();
        v["subnetFile"] = json!(file.to_string_lossy());
        out.push(Case {
            label: format!("flannel: subnet.env {label}"),
            plugin: "flannel",
            env: add.clone(),
            stdin: v.to_string().into_bytes(),
            // A damaged subnet.env is the node's fault, not the request's: 999 as in Go,
            // with the file, line and key named.
            code: 999,
        });
    }
    let mut v = base.clone();
    v["subnetFile"] = json!(w.path_str(""));
    out.push(Case {
        label: "flannel: subnet.env is a directory".into(),
        plugin: "flannel",
        env: add.clone(),
        stdin: v.to_string().into_bytes(),
        code: 999,
    });
}

#[test]
fn hostile_inputs_fail_cleanly_and_change_nothing() {
    let w = World::new();
    let pod = NetNs::new();
    std::fs::write(
        w.path("subnet.env"),
        "FLANNEL_NETWORK=10.40.0.0/16\nFLANNEL_SUBNET=10.40.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    let mut cases = Vec::new();
    for (plugin, valid) in [
        ("host-local", host_local_conf(&w)),
        ("bridge", bridge_conf(&w)),
        ("flannel", flannel_conf(&w)),
    ] {
        generic_cases(plugin, &valid, pod.path(), &mut cases);
        env_cases(plugin, &valid, pod.path(), &mut cases);
        if plugin != "host-local" {
            // host-local never touches the namespace (neither does Go's): nothing to refuse.
            netns_cases(plugin, &valid, &w, &mut cases);
        }
    }
    host_local_specific(&w, pod.path(), &mut cases);
    bridge_specific(&w, pod.path(), &mut cases);
    flannel_specific(&w, pod.path(), &mut cases);
    assert!(cases.len() >= 200, "only {} cases", cases.len());

    let before = snapshot(&w);
    let pod_before = pod.sh("ip -o link; ip -o addr");
    let mut failures = Vec::new();
    for c in &cases {
        let r = w.exec(c.plugin, &c.env, &c.stdin);
        let problem = if r.code == 0 {
            Some(format!("succeeded: {}", r.stdout))
        } else if r.stderr.contains("panicked")
            || r.stderr.contains("internal error (this is a bug")
        {
            Some(format!("panicked: {}", r.stderr))
        } else {
            match serde_json::from_str::<Value>(&r.stdout) {
                Err(_) => Some(format!(
                    "stdout is not JSON: {:?} (stderr {})",
                    r.stdout, r.stderr
                )),
                Ok(v) if v["code"].as_u64() != Some(c.code) => Some(format!(
                    "code {} (want {}): {}",
                    v["code"], c.code, v["msg"]
                )),
                Ok(v) if v["msg"].as_str().is_none_or(str::is_empty) => Some("empty msg".into()),
                Ok(_) => None,
            }
        };
        let after = snapshot(&w);
        let changed = after != before;
        if let Some(p) = problem {
            failures.push(format!("{}: {p}", c.label));
        } else if changed {
            failures.push(format!(
                "{}: changed state: files {:?} kernel {}",
                c.label, after.0, after.1
            ));
        }
        if changed {
            panic!(
                "{} of {} cases failed so far, and the last changed state:\n{}",
                failures.len(),
                cases.len(),
                failures.join("\n")
            );
        }
    }
    assert_eq!(
        pod.sh("ip -o link; ip -o addr"),
        pod_before,
        "the pod namespace changed"
    );
    eprintln!("{} hostile inputs checked", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
