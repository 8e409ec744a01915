//! flannel end to end: our `flannel` binary run as a runtime runs it, in a throwaway node
//! namespace, delegating to the Go reference `bridge` and `host-local` (Debian's
//! containernetworking-plugins v1.1.1 in /usr/lib/cni). Every path (subnetFile, dataDir,
//! host-local's dataDir) is inside the World's temp dir.
//!
//! The Go plugins of v1.1.1 speak CNI up to 1.0.0 and know neither STATUS nor GC, so tests
//! that need 1.1.0 put a shim named `bridge` in CNI_PATH: it records STATUS/GC requests
//! and hands everything else to the Go bridge with the config's version lowered to 1.0.0.

use e2e::{json, list_files, saved_configs, Env, Impl, NetNs, World};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

const V4_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

fn go_world() -> World {
    assert!(
        e2e::go_available("bridge") && e2e::go_available("host-local"),
        "the Go reference plugins are needed in {}",
        e2e::GO_PLUGIN_DIR
    );
    e2e::our_binary("flannel");
    World::with_plugins(&[
        ("flannel", Impl::Ours),
        ("bridge", Impl::Go),
        ("host-local", Impl::Go),
    ])
}

/// Replaces `bridge` with a shell shim (see the module docs); requests land in `rec/`.
fn install_version_shim(w: &World) {
    let rec = w.path("rec");
    std::fs::create_dir_all(&rec).unwrap();
    let script = format!(
        "#!/bin/sh\n\
         in=$(cat)\n\
         case \"$CNI_COMMAND\" in\n\
         STATUS|GC) printf '%s' \"$in\" > '{rec}/'\"$CNI_COMMAND\"; exit 0 ;;\n\
         esac\n\
         printf '%s' \"$in\" | sed 's/\"cniVersion\":\"1.1.0\"/\"cniVersion\":\"1.0.0\"/g' | exec {go}/bridge\n",
        rec = rec.display(),
        go = e2e::GO_PLUGIN_DIR
    );
    let p = w.bin.join("bridge");
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn write_subnet_env(w: &World, text: &str) {
    let dir = w.path("run/flannel");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("subnet.env"), text).unwrap();
}

/// kube-flannel's config with every path inside the World.
fn conf(w: &World, version: &str) -> String {
    json!({
        "cniVersion": version,
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": w.path_str("run/flannel/subnet.env"),
        "dataDir": w.path_str("flannel"),
        "ipam": {"dataDir": w.path_str("networks")},
        "delegate": {"hairpinMode": true, "isDefaultGateway": true},
    })
    .to_string()
}

fn saved_path(w: &World, cid: &str) -> PathBuf {
    w.path("flannel").join(cid)
}

fn reservations(w: &World) -> Vec<String> {
    list_files(&w.path("networks/cbr0"))
        .into_iter()
        .filter(|f| f != "lock" && !f.starts_with("last_reserved_ip"))
        .collect()
}

fn pod_addr(pod: &NetNs) -> String {
    pod.sh("ip -o addr show eth0")
}

fn add(w: &World, version: &str, cid: &str, pod: &NetNs) -> serde_json::Value {
    let out = w.exec(
        "flannel",
        &Env::new("ADD", cid, pod.path()),
        conf(w, version).as_bytes(),
    );
    out.ok();
    out.json()
}

fn del(w: &World, version: &str, cid: &str, pod: &NetNs) {
    w.exec(
        "flannel",
        &Env::new("DEL", cid, pod.path()),
        conf(w, version).as_bytes(),
    )
    .ok();
}

#[test]
fn kube_flannel_add_then_del() {
    let w = go_world();
    write_subnet_env(&w, V4_ENV);
    let pod = NetNs::new();
    let r = add(&w, "0.3.1", "pod1", &pod);
    assert_eq!(r["cniVersion"], "0.3.1");
    assert_eq!(r["ips"][0]["version"], "4");
    assert_eq!(r["ips"][0]["address"], "10.244.1.2/24");
    assert!(pod_addr(&pod).contains("inet 10.244.1.2/24"));
    assert!(pod.sh("ip route").contains("10.244.0.0/16 via 10.244.1.1"));

    let saved = std::fs::read_to_string(saved_path(&w, "pod1")).unwrap();
    let want = format!(
        r#"{{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{{"dataDir":"{}","ranges":[[{{"subnet":"10.244.1.0/24"}}]],"routes":[{{"dst":"10.244.0.0/16"}}],"type":"host-local"}},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}}"#,
        w.path_str("networks")
    );
    assert_eq!(saved, want);
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(saved_path(&w, "pod1")), 0o600);
    assert_eq!(mode(w.path("flannel")), 0o700);
    assert_eq!(
        saved_configs(&w.path("flannel")),
        vec!["pod1"],
        "no temp file left"
    );
    assert_eq!(reservations(&w), vec!["10.244.1.2"]);
    let content = std::fs::read_to_string(w.path("networks/cbr0/10.244.1.2")).unwrap();
    assert_eq!(content, "pod1\r\neth0");
    assert!(w.node.links().iter().any(|l| l == "cni0"));

    del(&w, "0.3.1", "pod1", &pod);
    assert!(!saved_path(&w, "pod1").exists());
    assert!(reservations(&w).is_empty());
    assert!(!pod.links().iter().any(|l| l == "eth0"));
    // A second DEL (runtimes retry) finds nothing and succeeds.
    del(&w, "0.3.1", "pod1", &pod);
}

#[test]
fn result_version_follows_the_config() {
    let w = go_world();
    install_version_shim(&w);
    write_subnet_env(&w, V4_ENV);
    for (i, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let pod = NetNs::new();
        let cid = format!("pod-{i}");
        let r = add(&w, version, &cid, &pod);
        assert_eq!(r["cniVersion"], *version, "{r}");
        let ip = &r["ips"][0];
        assert_eq!(ip.get("version").is_some(), *version < "1.0.0", "{r}");
        assert_eq!(ip["interface"], 2, "{r}");
        assert_eq!(r["interfaces"][2]["name"], "eth0");
        let addr = ip["address"].as_str().unwrap().to_owned();
        assert!(pod_addr(&pod).contains(&format!("inet {addr}")), "{addr}");
        del(&w, version, &cid, &pod);
        assert!(!saved_path(&w, &cid).exists());
    }
    assert!(reservations(&w).is_empty());
}

#[test]
fn subnet_change_between_add_and_del_still_releases_the_old_ip() {
    let w = go_world();
    write_subnet_env(&w, V4_ENV);
    let pod = NetNs::new();
    add(&w, "0.3.1", "pod1", &pod);
    assert_eq!(reservations(&w), vec!["10.244.1.2"]);
    write_subnet_env(&w, &V4_ENV.replace("10.244.1.1/24", "10.244.2.1/24"));
    del(&w, "0.3.1", "pod1", &pod);
    assert!(reservations(&w).is_empty());
    assert!(!saved_path(&w, "pod1").exists());
}

#[test]
fn missing_subnet_env() {
    let w = go_world();
    write_subnet_env(&w, V4_ENV);
    let pod1 = NetNs::new();
    add(&w, "1.0.0", "pod1", &pod1);
    std::fs::remove_file(w.path("run/flannel/subnet.env")).unwrap();

    let pod2 = NetNs::new();
    let out = w.exec(
        "flannel",
        &Env::new("ADD", "pod2", pod2.path()),
        conf(&w, "1.0.0").as_bytes(),
    );
    let msg = out.err(11);
    assert!(msg.contains(&w.path_str("run/flannel/subnet.env")), "{msg}");
    assert!(msg.contains("subnetFile"), "{msg}");
    assert!(!saved_path(&w, "pod2").exists());

    let status = Env {
        command: "STATUS".into(),
        ..Default::default()
    };
    let msg = w
        .exec("flannel", &status, conf(&w, "1.1.0").as_bytes())
        .err(50);
    assert!(msg.contains(&w.path_str("run/flannel/subnet.env")), "{msg}");

    // Teardown never needs subnet.env.
    del(&w, "1.0.0", "pod1", &pod1);
    assert!(reservations(&w).is_empty());
    assert!(!saved_path(&w, "pod1").exists());
}

#[test]
fn pod_added_by_the_go_plugin_is_deleted() {
    // What the Go flannel plugin does on ADD: write its one-line delegate config to
    // dataDir/<containerID> (0600) and hand the same bytes to the bridge.
    let w = go_world();
    let pod = NetNs::new();
    let go_bytes = format!(
        r#"{{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{{"dataDir":"{}","ranges":[[{{"subnet":"10.244.5.0/24"}}]],"routes":[{{"dst":"10.244.0.0/16"}}],"type":"host-local"}},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}}"#,
        w.path_str("networks")
    );
    std::fs::create_dir_all(w.path("flannel")).unwrap();
    std::fs::write(saved_path(&w, "gopod"), &go_bytes).unwrap();
    w.exec(
        "bridge",
        &Env::new("ADD", "gopod", pod.path()),
        go_bytes.as_bytes(),
    )
    .ok();
    assert_eq!(reservations(&w), vec!["10.244.5.2"]);

    // No subnet.env at all: DEL must not need it.
    del(&w, "0.3.1", "gopod", &pod);
    assert!(reservations(&w).is_empty());
    assert!(!saved_path(&w, "gopod").exists());
    assert!(!pod.links().iter().any(|l| l == "eth0"));
}

#[test]
fn damaged_saved_file_still_releases_the_ip() {
    let w = go_world();
    write_subnet_env(&w, V4_ENV);
    let pod = NetNs::new();
    add(&w, "0.3.1", "pod1", &pod);
    // A power cut before the Go plugin's fsync left zero bytes (cni-plugin#43).
    std::fs::write(saved_path(&w, "pod1"), "").unwrap();
    let out = w.exec(
        "flannel",
        &Env::new("DEL", "pod1", pod.path()),
        conf(&w, "0.3.1").as_bytes(),
    );
    out.ok();
    assert!(out.stderr.contains("damaged"), "{}", out.stderr);
    assert!(
        reservations(&w).is_empty(),
        "released through the rebuilt config"
    );
    assert!(!saved_path(&w, "pod1").exists());
}

#[test]
fn failed_delegate_add_leaves_no_saved_file() {
    let w = go_world();
    // A /30 holds one pod address (.2): the gateway takes .1.
    write_subnet_env(&w, &V4_ENV.replace("10.244.1.1/24", "10.244.1.1/30"));
    let pod1 = NetNs::new();
    add(&w, "0.4.0", "pod1", &pod1);
    let pod2 = NetNs::new();
    let out = w.exec(
        "flannel",
        &Env::new("ADD", "pod2", pod2.path()),
        conf(&w, "0.4.0").as_bytes(),
    );
    assert_ne!(out.code, 0);
    let v = out.json();
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("no IP addresses available"),
        "{v}"
    );
    assert!(!saved_path(&w, "pod2").exists(), "P13");
    assert_eq!(saved_configs(&w.path("flannel")), vec!["pod1"]);
    assert_eq!(reservations(&w), vec!["10.244.1.2"]);
    del(&w, "0.4.0", "pod1", &pod1);
}

#[test]
fn check_delegates_to_the_bridge() {
    let w = go_world();
    write_subnet_env(&w, V4_ENV);
    let pod = NetNs::new();
    let result = add(&w, "1.0.0", "pod1", &pod);
    let mut c: serde_json::Value = serde_json::from_str(&conf(&w, "1.0.0")).unwrap();
    c["prevResult"] = result.clone();
    // The Go v1.1.1 bridge's own CHECK cannot pass flannel's routes: host-local returns
    // them without a gateway, the bridge installs them via the gateway, and its CHECK
    // then looks for a gateway-less route. That answer still proves the CHECK reached
    // the bridge (Go's flannel would have said success without asking).
    let out = w.exec(
        "flannel",
        &Env::new("CHECK", "pod1", pod.path()),
        c.to_string().as_bytes(),
    );
    let msg = out.err(999);
    assert!(msg.contains("not found in routing table"), "{msg}");
    let mut result = result;
    result.as_object_mut().unwrap().remove("routes");
    c["prevResult"] = result;
    let c = c.to_string();
    w.exec(
        "flannel",
        &Env::new("CHECK", "pod1", pod.path()),
        c.as_bytes(),
    )
    .ok();
    // The bridge notices what flannel's Go CHECK never looked at.
    pod.sh("ip addr flush dev eth0");
    let out = w.exec(
        "flannel",
        &Env::new("CHECK", "pod1", pod.path()),
        c.as_bytes(),
    );
    assert_ne!(out.code, 0, "{}", out.stdout);
    let other = NetNs::new();
    w.exec(
        "flannel",
        &Env::new("CHECK", "nopod", other.path()),
        c.as_bytes(),
    )
    .err(3);
    del(&w, "1.0.0", "pod1", &pod);
}

#[test]
fn status_and_gc_are_forwarded_and_gc_removes_stale_pods() {
    let w = go_world();
    install_version_shim(&w);
    write_subnet_env(&w, V4_ENV);
    let status = Env {
        command: "STATUS".into(),
        ..Default::default()
    };
    w.exec("flannel", &status, conf(&w, "1.1.0").as_bytes())
        .ok();
    let sent = std::fs::read_to_string(w.path("rec/STATUS")).unwrap();
    assert!(
        sent.contains(r#""ranges":[[{"subnet":"10.244.1.0/24"}]]"#),
        "{sent}"
    );

    let (keep, gone) = (NetNs::new(), NetNs::new());
    add(&w, "1.1.0", "keep", &keep);
    add(&w, "1.1.0", "gone", &gone);
    assert_eq!(reservations(&w).len(), 2);
    // Temp files of interrupted writes: a stale container's go with its config, a live
    // container's are left alone (its save may be in flight).
    std::fs::write(w.path("flannel/.gone.0000.tmp"), "x").unwrap();
    std::fs::write(w.path("flannel/.keep.0000.tmp"), "x").unwrap();

    let mut c: serde_json::Value = serde_json::from_str(&conf(&w, "1.1.0")).unwrap();
    let valid = json!([{"containerID": "keep", "ifname": "eth0"}]);
    c["cni.dev/valid-attachments"] = valid.clone();
    c["cni.dev/attachments"] = valid;
    let gc = Env {
        command: "GC".into(),
        ..Default::default()
    };
    w.exec("flannel", &gc, c.to_string().as_bytes()).ok();

    assert!(saved_path(&w, "keep").exists());
    assert!(!saved_path(&w, "gone").exists());
    assert!(!w.path("flannel/.gone.0000.tmp").exists());
    assert!(w.path("flannel/.keep.0000.tmp").exists());
    let left = reservations(&w);
    assert_eq!(left.len(), 1, "{left:?}");
    let content = std::fs::read_to_string(w.path("networks/cbr0").join(&left[0])).unwrap();
    assert_eq!(content, "keep\r\neth0");
    let sent: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.path("rec/GC")).unwrap()).unwrap();
    assert_eq!(sent["cni.dev/valid-attachments"][0]["containerID"], "keep");
    assert_eq!(sent["type"], "bridge");
    del(&w, "1.1.0", "keep", &keep);
}
