//! host-local end to end: the binary run as a runtime runs it (env + stdin, stdout JSON,
//! exit status), its files on disk, interop with Debian's Go host-local on one dataDir,
//! and the real cnitool.

use e2e::{json, list_files, Env, Impl, NetNs, World};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;

fn conf(w: &World, version: &str, ranges: Value) -> String {
    json!({
        "cniVersion": version,
        "name": "hlnet",
        "type": "host-local",
        "ipam": {
            "type": "host-local",
            "ranges": ranges,
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": w.path_str("ipam"),
        }
    })
    .to_string()
}

fn v4(subnet: &str) -> Value {
    json!([[{"subnet": subnet}]])
}

fn net_dir(w: &World) -> std::path::PathBuf {
    w.path("ipam/hlnet")
}

/// Reservation files (name = IP) and their content, Go's format.
fn reservations(w: &World) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(net_dir(w))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.parse::<std::net::IpAddr>().ok()?;
                    Some((name, std::fs::read_to_string(e.path()).unwrap_or_default()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn add_check_del_del_with_exact_files() {
    let w = World::with_plugins(&[("host-local", Impl::Ours)]);
    let pod = NetNs::new();
    let c = conf(
        &w,
        "1.1.0",
        json!([[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd09::/64"}]]),
    );
    let env = Env::new("ADD", "ctr1", pod.path());
    let r = w.exec("host-local", &env, c.as_bytes());
    r.ok();
    let v = r.json();
    assert_eq!(v["cniVersion"], "1.1.0");
    assert_eq!(v["ips"][0]["address"], "10.9.0.2/24");
    assert_eq!(v["ips"][0]["gateway"], "10.9.0.1");
    assert_eq!(v["ips"][1]["address"], "fd09::2/64");
    assert!(
        v["ips"][0].get("interface").is_none(),
        "IPAM results carry no interface index"
    );
    assert_eq!(v["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(
        reservations(&w),
        vec![
            ("10.9.0.2".to_string(), "ctr1\r\neth0".to_string()),
            ("fd09::2".to_string(), "ctr1\r\neth0".to_string()),
        ]
    );
    let mode = std::fs::metadata(net_dir(&w).join("10.9.0.2"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::read_to_string(net_dir(&w).join("last_reserved_ip.0")).unwrap(),
        "10.9.0.2"
    );
    assert_eq!(
        std::fs::read_to_string(net_dir(&w).join("last_reserved_ip.1")).unwrap(),
        "fd09::2"
    );
    assert!(net_dir(&w).join("lock").exists());

    w.exec("host-local", &env.cmd("CHECK"), c.as_bytes()).ok();
    // A duplicate ADD for the same attachment is refused, as in Go.
    let dup = w.exec("host-local", &env, c.as_bytes());
    assert!(
        dup.err(999).contains("duplicate allocation"),
        "{}",
        dup.stdout
    );

    w.exec("host-local", &env.cmd("DEL"), c.as_bytes()).ok();
    assert!(reservations(&w).is_empty());
    w.exec("host-local", &env.cmd("DEL"), c.as_bytes()).ok();
    let gone = w.exec("host-local", &env.cmd("CHECK"), c.as_bytes());
    assert!(gone
        .err(999)
        .contains("Failed to find address added by container ctr1"));
    // DEL of something never added, and DEL with an empty netns, succeed.
    let mut never = Env::new("DEL", "never", "");
    never.ifname = "eth1".into();
    w.exec("host-local", &never, c.as_bytes()).ok();
}

#[test]
fn results_in_every_version() {
    let w = World::with_plugins(&[("host-local", Impl::Ours)]);
    let pod = NetNs::new();
    for (i, ver) in [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
    ]
    .iter()
    .enumerate()
    {
        let c = conf(&w, ver, v4("10.10.0.0/24"));
        let v = w
            .exec(
                "host-local",
                &Env::new("ADD", &format!("v{i}"), pod.path()),
                c.as_bytes(),
            )
            .ok()
            .json();
        assert_eq!(v["cniVersion"], *ver);
        match *ver {
            "0.1.0" | "0.2.0" => assert!(v["ip4"]["ip"].as_str().unwrap().starts_with("10.10.0.")),
            "0.3.0" | "0.3.1" | "0.4.0" => assert_eq!(v["ips"][0]["version"], "4"),
            _ => assert!(v["ips"][0].get("version").is_none()),
        }
    }
    let v = w
        .exec("host-local", &Env::new("VERSION", "", ""), b"")
        .ok()
        .json();
    assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 7);
}

#[test]
fn requested_ips_and_round_robin() {
    let w = World::with_plugins(&[("host-local", Impl::Ours)]);
    let pod = NetNs::new();
    let c = conf(&w, "1.0.0", json!([[{"subnet": "10.11.0.0/29"}]]));
    let r = w.exec(
        "host-local",
        &Env::new("ADD", "a", pod.path()).args("IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.11.0.5"),
        c.as_bytes(),
    );
    assert_eq!(r.ok().json()["ips"][0]["address"], "10.11.0.5/29");
    // Round-robin resumes after the last reservation: .6, then wraps to .2 (.1 is the gateway, .7 broadcast).
    let next: Vec<String> = ["b", "c", "d"]
        .iter()
        .map(|id| {
            w.exec("host-local", &Env::new("ADD", id, pod.path()), c.as_bytes())
                .ok()
                .json()["ips"][0]["address"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(next, ["10.11.0.6/29", "10.11.0.2/29", "10.11.0.3/29"]);
    let taken = w.exec(
        "host-local",
        &Env::new("ADD", "e", pod.path()).args("IP=10.11.0.5"),
        c.as_bytes(),
    );
    assert!(taken.err(999).contains("10.11.0.5"));
    w.exec(
        "host-local",
        &Env::new("ADD", "f", pod.path()),
        c.as_bytes(),
    )
    .ok();
    let full = w.exec(
        "host-local",
        &Env::new("ADD", "g", pod.path()),
        c.as_bytes(),
    );
    let msg = full.err(11);
    // Go names the range from network+1 (the gateway is skipped, not excluded): same text.
    assert!(
        msg.contains("no IP addresses available in range set: 10.11.0.1-10.11.0.6"),
        "{msg}"
    );
}

#[test]
fn status_and_gc() {
    let w = World::with_plugins(&[("host-local", Impl::Ours)]);
    let pod = NetNs::new();
    let c = conf(&w, "1.1.0", v4("10.12.0.0/24"));
    for id in ["keep", "drop1", "drop2"] {
        w.exec("host-local", &Env::new("ADD", id, pod.path()), c.as_bytes())
            .ok();
    }
    // What a 1.1 runtime sends for STATUS/GC: CNI_* per-container variables empty.
    let status = Env::new("STATUS", "", "").ifname("");
    w.exec("host-local", &status, c.as_bytes()).ok();
    let mut gc: Value = serde_json::from_str(&c).unwrap();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    gc["cni.dev/attachments"] = gc["cni.dev/valid-attachments"].clone();
    let r = w.exec(
        "host-local",
        &Env::new("GC", "", "").ifname(""),
        gc.to_string().as_bytes(),
    );
    r.ok();
    assert!(r.stderr.contains("released 2 address"), "{}", r.stderr);
    assert_eq!(
        reservations(&w),
        vec![("10.12.0.2".into(), "keep\r\neth0".into())]
    );
    // Only the pre-final key: still honoured.
    let mut old: Value = serde_json::from_str(&c).unwrap();
    old["cni.dev/attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    w.exec(
        "host-local",
        &Env::new("GC", "", "").ifname(""),
        old.to_string().as_bytes(),
    )
    .ok();
    assert_eq!(reservations(&w).len(), 1);
    // A garbled list is refused rather than read as "nothing is valid".
    old["cni.dev/valid-attachments"] = json!("everything");
    w.exec(
        "host-local",
        &Env::new("GC", "", "").ifname(""),
        old.to_string().as_bytes(),
    )
    .err(7);
    assert_eq!(reservations(&w).len(), 1);
    // STATUS with an unusable dataDir: code 50.
    std::fs::write(w.path("notadir"), b"").unwrap();
    let bad = json!({"cniVersion": "1.1.0", "name": "hlnet", "ipam": {"type": "host-local", "ranges": v4("10.12.0.0/24"), "dataDir": w.path_str("notadir")}});
    let msg = w
        .exec("host-local", &status, bad.to_string().as_bytes())
        .err(50);
    assert!(msg.contains("notadir"), "{msg}");
    // STATUS/GC are 1.1 verbs.
    let old_ver = conf(&w, "1.0.0", v4("10.12.0.0/24"));
    w.exec("host-local", &status, old_ver.as_bytes()).err(1);
}

#[test]
fn bad_input_is_a_cni_error_and_writes_nothing() {
    let w = World::with_plugins(&[("host-local", Impl::Ours)]);
    let pod = NetNs::new();
    let dd = w.path_str("ipam");
    let ok_ipam = json!({"type": "host-local", "ranges": v4("10.13.0.0/24"), "dataDir": dd});
    let add = Env::new("ADD", "c1", pod.path());
    let cases: Vec<(Env, String, u64, &str)> = vec![
        (add.clone(), "{".into(), 6, "error parsing"),
        (add.clone(), "[]".into(), 6, "not a JSON object"),
        (add.clone(), json!({"cniVersion": "9.9.9", "name": "n", "ipam": ok_ipam}).to_string(), 1, "incompatible"),
        (add.clone(), json!({"cniVersion": "1.0.0", "ipam": ok_ipam}).to_string(), 7, "missing network name"),
        (add.clone(), json!({"cniVersion": "1.0.0", "name": "../../etc", "ipam": ok_ipam}).to_string(), 7, "network name"),
        (add.clone(), json!({"cniVersion": "1.0.0", "name": "n"}).to_string(), 7, "'ipam'"),
        (add.clone(), json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "host-local", "dataDir": dd}}).to_string(), 7, "no IP ranges"),
        (add.clone(), json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "host-local", "ranges": v4("10.13.0.1/24"), "dataDir": dd}}).to_string(), 7, "host bits"),
        (add.clone(), json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "host-local", "ranges": v4("10.13.0.0/31"), "dataDir": dd}}).to_string(), 7, "too small"),
        (add.clone(), json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.13.0.0/24"}, {"subnet": "fd00::/64"}]], "dataDir": dd}}).to_string(), 7, "mixed address families"),
        (add.clone(), json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "host-local", "ranges": "x", "dataDir": dd}}).to_string(), 7, ""),
        (add.clone(), json!({"cniVersion": "1.0.0", "name": "n", "ipam": ok_ipam}).to_string().replace("10.13.0.0/24", "10.13.0.0/24\u{0000}"), 6, ""),
        (Env::new("ADD", "../x", pod.path()), json!({"cniVersion": "1.0.0", "name": "n", "ipam": ok_ipam}).to_string(), 4, "containerID"),
        (Env::new("ADD", "c1", pod.path()).ifname("a/b"), json!({"cniVersion": "1.0.0", "name": "n", "ipam": ok_ipam}).to_string(), 4, "interface name"),
        (Env::new("ADD", "c1", ""), json!({"cniVersion": "1.0.0", "name": "n", "ipam": ok_ipam}).to_string(), 4, "CNI_NETNS"),
        (Env::new("FROB", "c1", pod.path()), json!({"cniVersion": "1.0.0", "name": "n", "ipam": ok_ipam}).to_string(), 4, "unknown CNI_COMMAND"),
        (add.clone().args("IP"), json!({"cniVersion": "1.0.0", "name": "n", "ipam": ok_ipam}).to_string(), 4, "ARGS"),
        (add.clone().args("IP=10.99.0.5"), json!({"cniVersion": "1.0.0", "name": "n", "ipam": ok_ipam}).to_string(), 7, "10.99.0.5"),
        (add.clone().args("IP=notanip"), json!({"cniVersion": "1.0.0", "name": "n", "ipam": ok_ipam}).to_string(), 7, ""),
        (add.clone(), json!({"cniVersion": "0.4.0", "name": "n", "ipam": ok_ipam}).to_string(), 999, ""),
    ];
    let last = cases.len() - 1;
    for (i, (env, stdin, code, needle)) in cases.into_iter().enumerate() {
        if i == last {
            // The control case: a valid request does write; everything before it must not have.
            assert!(
                list_files(&w.path("ipam")).is_empty(),
                "bad input wrote {:?}",
                list_files(&w.path("ipam"))
            );
            w.exec("host-local", &env, stdin.as_bytes()).ok();
            continue;
        }
        let r = w.exec("host-local", &env, stdin.as_bytes());
        let msg = r.err(code);
        assert!(msg.contains(needle), "case {i}: {msg:?} lacks {needle:?}");
    }
}

#[test]
fn symlinked_data_dir_is_refused() {
    let w = World::with_plugins(&[("host-local", Impl::Ours)]);
    let pod = NetNs::new();
    let elsewhere = w.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(w.path("ipam")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, w.path("ipam/hlnet")).unwrap();
    let c = conf(&w, "1.0.0", v4("10.14.0.0/24"));
    let r = w.exec(
        "host-local",
        &Env::new("ADD", "c1", pod.path()),
        c.as_bytes(),
    );
    assert_ne!(r.code, 0);
    assert!(
        list_files(&elsewhere).is_empty(),
        "followed a symlink: {:?}",
        list_files(&elsewhere)
    );
}

#[test]
fn concurrent_adds_never_collide() {
    let w = World::with_plugins(&[("host-local", Impl::Ours)]);
    let pod = NetNs::new();
    let c = conf(&w, "1.0.0", v4("10.15.0.0/24"));
    let ips: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..24)
            .map(|i| {
                let (w, c, pod) = (&w, &c, &pod);
                s.spawn(move || {
                    let r = w.exec(
                        "host-local",
                        &Env::new("ADD", &format!("p{i}"), pod.path()),
                        c.as_bytes(),
                    );
                    r.ok().json()["ips"][0]["address"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut uniq = ips.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), ips.len(), "duplicate IPs handed out: {ips:?}");
    std::thread::scope(|s| {
        for i in 0..24 {
            let (w, c, pod) = (&w, &c, &pod);
            s.spawn(move || {
                w.exec(
                    "host-local",
                    &Env::new("DEL", &format!("p{i}"), pod.path()),
                    c.as_bytes(),
                )
                .ok()
                .code
            });
        }
    });
    assert!(reservations(&w).is_empty());
}

/// A node swaps binaries live: reservations made by Go are released by ours and the reverse,
/// and the two allocate from one directory without collisions.
#[test]
fn go_interop_on_one_data_dir() {
    if !e2e::go_available("host-local") {
        panic!("Debian's containernetworking-plugins is needed: apt-get install containernetworking-plugins");
    }
    let w = World::with_plugins(&[("host-local", Impl::Ours)]);
    let go = World::with_plugins(&[("host-local", Impl::Go)]);
    let pod = NetNs::new();
    // Go v1.1.1 speaks up to 1.0.0.
    let c = conf(
        &w,
        "1.0.0",
        json!([[{"subnet": "10.16.0.0/24"}], [{"subnet": "fd16::/120"}]]),
    );
    let mut got = Vec::new();
    for (i, world) in [&go, &w, &go, &w].iter().enumerate() {
        let v = world
            .exec(
                "host-local",
                &Env::new("ADD", &format!("m{i}"), pod.path()),
                c.as_bytes(),
            )
            .ok()
            .json();
        got.push(v["ips"][0]["address"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        got,
        [
            "10.16.0.2/24",
            "10.16.0.3/24",
            "10.16.0.4/24",
            "10.16.0.5/24"
        ],
        "one shared round-robin cursor"
    );
    // Each side releases the other's reservations, and sees them for duplicate checks.
    w.exec(
        "host-local",
        &Env::new("CHECK", "m0", pod.path()),
        c.as_bytes(),
    )
    .ok();
    go.exec(
        "host-local",
        &Env::new("CHECK", "m1", pod.path()),
        c.as_bytes(),
    )
    .ok();
    w.exec(
        "host-local",
        &Env::new("DEL", "m0", pod.path()),
        c.as_bytes(),
    )
    .ok();
    go.exec(
        "host-local",
        &Env::new("DEL", "m1", pod.path()),
        c.as_bytes(),
    )
    .ok();
    let left: Vec<String> = reservations(&w)
        .into_iter()
        .map(|(ip, owner)| format!("{ip}={owner}"))
        .collect();
    assert_eq!(
        left,
        [
            "10.16.0.4=m2\r\neth0",
            "10.16.0.5=m3\r\neth0",
            "fd16::4=m2\r\neth0",
            "fd16::5=m3\r\neth0"
        ]
    );
    go.exec(
        "host-local",
        &Env::new("DEL", "m3", pod.path()),
        c.as_bytes(),
    )
    .ok();
    w.exec(
        "host-local",
        &Env::new("DEL", "m2", pod.path()),
        c.as_bytes(),
    )
    .ok();
    assert!(reservations(&w).is_empty());
    // Go's lock file and cursor survive and remain Go-readable.
    assert!(net_dir(&w).join("lock").exists());
    let after = go
        .exec(
            "host-local",
            &Env::new("ADD", "m4", pod.path()),
            c.as_bytes(),
        )
        .ok()
        .json();
    assert_eq!(after["ips"][0]["address"], "10.16.0.6/24");
}

/// host-local driven by the real libcni (cnitool 1.1.2) as the single plugin of a list.
#[test]
fn through_cnitool() {
    let w = World::with_plugins(&[("host-local", Impl::Ours)]);
    let pod = NetNs::new();
    let confdir = w.path("net.d");
    std::fs::create_dir_all(&confdir).unwrap();
    for ver in ["0.3.1", "0.4.0", "1.0.0"] {
        let list = json!({
            "cniVersion": ver,
            "name": "hlnet",
            "plugins": [{"type": "host-local", "ipam": {"type": "host-local", "ranges": v4("10.17.0.0/24"), "dataDir": w.path_str("ipam")}}]
        });
        std::fs::write(confdir.join("10-hl.conflist"), list.to_string()).unwrap();
        let run = |cmd: &str| w.cnitool(&confdir, cmd, "hlnet", &pod);
        let (code, out, err) = run("add");
        assert_eq!(code, 0, "cnitool add {ver}: {err}{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cniVersion"], ver);
        assert!(v["ips"][0]["address"]
            .as_str()
            .unwrap()
            .starts_with("10.17.0."));
        assert_eq!(reservations(&w).len(), 1);
        if ver != "0.3.1" {
            let (code, out, err) = run("check");
            assert_eq!(code, 0, "cnitool check {ver}: {err}{out}");
        }
        let (code, out, err) = run("del");
        assert_eq!(code, 0, "cnitool del {ver}: {err}{out}");
        assert!(reservations(&w).is_empty());
    }
}
