//! End-to-end tests of the facade on a temp data directory, including concurrency and scale.

use super::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn config(data_dir: &Path, name: &str, ranges: Value) -> IpamConfig {
    config_with(data_dir, name, ranges, json!({}), None)
}

fn config_with(
    data_dir: &Path,
    name: &str,
    ranges: Value,
    extra_top: Value,
    env_ip: Option<&str>,
) -> IpamConfig {
    let mut conf = json!({
        "cniVersion": "1.1.0", "name": name, "type": "bridge",
        "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": ranges,
                 "routes": [{"dst": "0.0.0.0/0"}]}
    });
    if let (Some(top), Some(extra)) = (conf.as_object_mut(), extra_top.as_object()) {
        for (k, v) in extra {
            top.insert(k.clone(), v.clone());
        }
    }
    IpamConfig::parse(&conf, "1.1.0", env_ip).unwrap()
}

/// IP-named entries of `dir`; none when it does not exist (DEL/GC never create it).
fn ip_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.parse::<IpAddr>().is_ok())
        .collect();
    v.sort();
    v
}

#[test]
fn add_dual_stack_with_routes_and_dns() {
    let tmp = TempDir::new().unwrap();
    let resolv = tmp.path().join("resolv.conf");
    fs::write(&resolv, "nameserver 10.96.0.10\nsearch svc.cluster.local\n").unwrap();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "dual",
        "ipam": {"dataDir": tmp.path().join("d"), "resolvConf": resolv,
                 "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:1::/64"}]],
                 "routes": [{"dst": "10.244.0.0/16"}, {"dst": "::/0", "gw": "fd00:1::1"}]}
    });
    let cfg = IpamConfig::parse(&conf, "1.0.0", None).unwrap();
    let out = add(&cfg, "c1", "eth0").unwrap();
    assert_eq!(
        out.ips,
        [
            IpConfig {
                address: "10.244.1.2/24".parse().unwrap(),
                gateway: ip("10.244.1.1")
            },
            IpConfig {
                address: "fd00:1::2/64".parse().unwrap(),
                gateway: ip("fd00:1::1")
            },
        ]
    );
    assert_eq!(out.routes.len(), 2);
    let dns = out.dns.unwrap();
    assert_eq!(dns.nameservers, ["10.96.0.10"]);
    assert_eq!(dns.search, ["svc.cluster.local"]);

    check(&cfg, "c1", "eth0").unwrap();
    let e = check(&cfg, "c1", "eth1").unwrap_err();
    assert_eq!(
        e.to_string(),
        "host-local: Failed to find address added by container c1"
    );
    let mut released = del(&cfg, "c1", "eth0").unwrap();
    released.sort();
    assert_eq!(released, [ip("10.244.1.2"), ip("fd00:1::2")]);
    assert!(del(&cfg, "c1", "eth0").unwrap().is_empty());
    assert!(ip_files(&tmp.path().join("d/dual")).is_empty());
}

#[test]
fn round_robin_does_not_reuse_a_released_address_immediately() {
    let tmp = TempDir::new().unwrap();
    let cfg = config(tmp.path(), "rr", json!([[{"subnet": "10.0.0.0/29"}]]));
    let first = add(&cfg, "a", "eth0").unwrap().ips[0].address.addr();
    assert_eq!(first, ip("10.0.0.2"));
    del(&cfg, "a", "eth0").unwrap();
    assert_eq!(
        add(&cfg, "b", "eth0").unwrap().ips[0].address.addr(),
        ip("10.0.0.3")
    );
    for (id, want) in [
        ("c", "10.0.0.4"),
        ("d", "10.0.0.5"),
        ("e", "10.0.0.6"),
        ("f", "10.0.0.2"),
    ] {
        assert_eq!(
            add(&cfg, id, "eth0").unwrap().ips[0].address.addr(),
            ip(want)
        );
    }
    let e = add(&cfg, "g", "eth0").unwrap_err();
    assert_eq!(e.code(), 11);
    assert_eq!(
        e.to_string(),
        "failed to allocate for range 0: no IP addresses available in range set: 10.0.0.1-10.0.0.6"
    );
}

#[test]
fn duplicate_add_is_an_error() {
    let tmp = TempDir::new().unwrap();
    let cfg = config(tmp.path(), "dup", json!([[{"subnet": "10.0.0.0/24"}]]));
    add(&cfg, "c1", "eth0").unwrap();
    assert_eq!(
        add(&cfg, "c1", "eth0").unwrap_err().to_string(),
        "failed to allocate for range 0: 10.0.0.2 has been allocated to c1, duplicate allocation is not allowed"
    );
    add(&cfg, "c1", "eth1").unwrap();
}

#[test]
fn failure_in_a_later_set_releases_earlier_sets() {
    let tmp = TempDir::new().unwrap();
    let cfg = config(
        tmp.path(),
        "rb",
        json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.9.0.0/30"}]]),
    );
    add(&cfg, "c1", "eth0").unwrap();
    let e = add(&cfg, "c2", "eth0").unwrap_err();
    assert_eq!(
        e.to_string(),
        "failed to allocate for range 1: no IP addresses available in range set: 10.9.0.1-10.9.0.2"
    );
    assert_eq!(e.code(), 11);
    assert_eq!(ip_files(&tmp.path().join("rb")), ["10.0.0.2", "10.9.0.2"]);
    assert!(!tmp.path().join(".host-local/rb/c2:eth0").exists());
}

#[test]
fn requested_ips() {
    let tmp = TempDir::new().unwrap();
    let ranges = json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/120"}]]);
    let cfg = config_with(
        tmp.path(),
        "req",
        ranges.clone(),
        json!({"runtimeConfig": {"ips": ["fd00::77/120"]}}),
        Some("10.0.0.50"),
    );
    let out = add(&cfg, "c1", "eth0").unwrap();
    let got: Vec<IpAddr> = out.ips.iter().map(|c| c.address.addr()).collect();
    assert_eq!(got, [ip("10.0.0.50"), ip("fd00::77")]);
    // The requested reservation also moves the cursor, as in Go.
    assert_eq!(
        fs::read(tmp.path().join("req/last_reserved_ip.0")).unwrap(),
        b"10.0.0.50"
    );

    let taken = config_with(
        tmp.path(),
        "req",
        ranges.clone(),
        json!({}),
        Some("10.0.0.50"),
    );
    assert_eq!(
        add(&taken, "c2", "eth0").unwrap_err().to_string(),
        "failed to allocate for range 0: requested IP address 10.0.0.50 is not available in range set 10.0.0.1-10.0.0.254"
    );
    let gw = config_with(
        tmp.path(),
        "req",
        ranges.clone(),
        json!({}),
        Some("10.0.0.1"),
    );
    let e = add(&gw, "c2", "eth0").unwrap_err();
    assert_eq!(
        e.to_string(),
        "failed to allocate for range 0: requested ip 10.0.0.1 is subnet's gateway"
    );
    assert_eq!(e.code(), 7);

    let outside = config_with(
        tmp.path(),
        "req",
        ranges,
        json!({"args": {"cni": {"ips": ["10.99.0.1", "10.0.0.60"]}}}),
        None,
    );
    let e = add(&outside, "c3", "eth0").unwrap_err();
    assert_eq!(
        e.to_string(),
        "failed to allocate all requested IPs: 10.99.0.1"
    );
    // Everything c3 got on the way was given back.
    assert_eq!(ip_files(&tmp.path().join("req")), ["10.0.0.50", "fd00::77"]);
}

#[test]
fn ids_are_validated() {
    let tmp = TempDir::new().unwrap();
    let cfg = config(tmp.path(), "ids", json!([[{"subnet": "10.0.0.0/24"}]]));
    for (cid, ifname) in [("../x", "eth0"), ("c", "a/b"), ("c", ""), ("", "eth0")] {
        assert_eq!(add(&cfg, cid, ifname).unwrap_err().code(), 4);
        assert_eq!(del(&cfg, cid, ifname).unwrap_err().code(), 4);
        assert_eq!(check(&cfg, cid, ifname).unwrap_err().code(), 4);
    }
}

#[test]
fn del_check_gc_on_unknown_network_create_nothing() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("none");
    let cfg = config(&data, "ghost", json!([[{"subnet": "10.0.0.0/24"}]]));
    assert!(del(&cfg, "c1", "eth0").unwrap().is_empty());
    assert!(gc(&cfg, &[]).unwrap().is_empty());
    assert!(matches!(
        check(&cfg, "c1", "eth0"),
        Err(IpamError::NotFound { .. })
    ));
    assert!(!data.exists());
}

#[test]
fn missing_resolv_conf_fails_add_before_touching_the_store() {
    let tmp = TempDir::new().unwrap();
    let conf = json!({"name": "rc", "ipam": {"dataDir": tmp.path().join("d"),
        "resolvConf": tmp.path().join("nope"), "subnet": "10.0.0.0/24"}});
    let cfg = IpamConfig::parse(&conf, "1.0.0", None).unwrap();
    let e = add(&cfg, "c1", "eth0").unwrap_err();
    assert!(e.to_string().contains("resolvConf"), "{e}");
    assert!(!tmp.path().join("d").exists());
    // DEL does not read resolvConf.
    del(&cfg, "c1", "eth0").unwrap();
}

#[test]
fn status_reports_code_50() {
    let tmp = TempDir::new().unwrap();
    let cfg = config(tmp.path(), "st", json!([[{"subnet": "10.0.0.0/24"}]]));
    status(&cfg).unwrap();
    assert!(tmp.path().join("st").is_dir());
    let file = tmp.path().join("file");
    fs::write(&file, "").unwrap();
    let bad = config(&file, "st", json!([[{"subnet": "10.0.0.0/24"}]]));
    let e = status(&bad).unwrap_err();
    assert_eq!(e.code(), 50);
    assert!(e.to_string().contains("is not a directory"), "{e}");
}

#[test]
fn gc_releases_everything_not_valid() {
    let tmp = TempDir::new().unwrap();
    let cfg = config(tmp.path(), "gc", json!([[{"subnet": "10.0.0.0/24"}]]));
    for id in ["a", "b", "c"] {
        add(&cfg, id, "eth0").unwrap();
    }
    let valid = [Attachment {
        container_id: "b".into(),
        ifname: "eth0".into(),
    }];
    let mut released = gc(&cfg, &valid).unwrap();
    released.sort();
    assert_eq!(released, [ip("10.0.0.2"), ip("10.0.0.4")]);
    assert_eq!(ip_files(&tmp.path().join("gc")), ["10.0.0.3"]);
    assert_eq!(gc(&cfg, &[]).unwrap(), [ip("10.0.0.3")]);
    assert!(tmp.path().join("gc/lock").exists());
    assert!(tmp.path().join("gc/last_reserved_ip.0").exists());
}

#[test]
fn concurrent_threads_never_share_an_address() {
    let tmp = TempDir::new().unwrap();
    let cfg = config(
        tmp.path(),
        "par",
        json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/120"}]]),
    );
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                (0..15)
                    .map(|i| {
                        let out = add(&cfg, &format!("t{t}-{i}"), "eth0").unwrap();
                        out.ips.iter().map(|c| c.address.addr()).collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<IpAddr> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .flatten()
        .collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n);
    assert_eq!(n, 8 * 15 * 2);
    assert_eq!(ip_files(&tmp.path().join("par")).len(), n);

    let dels: Vec<_> = (0..8)
        .map(|t| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                for i in 0..15 {
                    assert_eq!(del(&cfg, &format!("t{t}-{i}"), "eth0").unwrap().len(), 2);
                }
            })
        })
        .collect();
    for h in dels {
        h.join().unwrap();
    }
    assert!(ip_files(&tmp.path().join("par")).is_empty());
}

const CHILD_ENV: &str = "HOST_LOCAL_TEST_CHILD";

/// Runs only as a child of `concurrent_processes_never_share_an_address`.
#[test]
fn child_allocator_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (dir, prefix) = spec.split_once('|').unwrap();
    let cfg = config(Path::new(dir), "proc", json!([[{"subnet": "10.5.0.0/24"}]]));
    for i in 0..20 {
        let out = add(&cfg, &format!("{prefix}-{i}"), "eth0").unwrap();
        println!("ALLOCATED {}", out.ips[0].address.addr());
    }
}

#[test]
fn concurrent_processes_never_share_an_address() {
    let tmp = TempDir::new().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|p| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "tests::child_allocator_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, format!("{}|p{p}", tmp.path().display()))
                .output()
        })
        .collect();
    // Also allocate from this process while the children run.
    let cfg = config(tmp.path(), "proc", json!([[{"subnet": "10.5.0.0/24"}]]));
    let mut all: Vec<IpAddr> = (0..20)
        .map(|i| {
            add(&cfg, &format!("parent-{i}"), "eth0").unwrap().ips[0]
                .address
                .addr()
        })
        .collect();
    for child in children {
        let out = child.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        all.extend(
            stdout
                .lines()
                // The harness may print "test ... " on the same line as the first one.
                .filter_map(|l| l.split_once("ALLOCATED ").map(|(_, ip)| ip))
                .map(ip),
        );
    }
    let n = all.len();
    assert_eq!(n, 100);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "an address was handed out twice");
    assert_eq!(ip_files(&tmp.path().join("proc")).len(), n);
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Times one ADD of a fresh attachment; also returns the files/entries it probed.
fn time_add(cfg: &IpamConfig, container_id: &str) -> (Duration, u64) {
    let probes = || store::FS_PROBES.with(|c| c.get());
    let before = probes();
    let t = Instant::now();
    add(cfg, container_id, "eth0").unwrap();
    (t.elapsed(), probes() - before)
}

#[test]
fn add_cost_does_not_grow_with_60k_reservations() {
    const EXISTING: u32 = 60_000;
    // tmpfs by default: 60k files on a shared disk take tens of seconds to write back. Set
    // HOST_LOCAL_SCALE_TMPDIR to a directory on a real disk for realistic numbers.
    let base_dir = std::env::var_os("HOST_LOCAL_SCALE_TMPDIR")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    let tmp = TempDir::new_in(&base_dir).unwrap();
    let subnet = json!([[{"subnet": "10.20.0.0/16"}]]);
    let net_dir: PathBuf = tmp.path().join("big");
    fs::create_dir_all(&net_dir).unwrap();
    let base = u32::from(std::net::Ipv4Addr::new(10, 20, 0, 2));
    let t = Instant::now();
    let mut last = String::new();
    for i in 0..EXISTING {
        last = std::net::Ipv4Addr::from(base + i).to_string();
        fs::write(net_dir.join(&last), format!("pod-{i}\r\neth0")).unwrap();
    }
    // The Go plugin leaves the cursor on the last address it handed out.
    fs::write(net_dir.join("last_reserved_ip.0"), &last).unwrap();
    let populate = t.elapsed();

    let big = config(tmp.path(), "big", subnet.clone());
    let t = Instant::now();
    drop(
        store::Store::open(&big.data_dir, &big.name)
            .unwrap()
            .lock()
            .unwrap(),
    );
    let import = t.elapsed();

    let small = config(tmp.path(), "small", subnet);
    add(&small, "warmup", "eth0").unwrap();
    add(&big, "warmup", "eth0").unwrap();
    // Interleaved, so both sides see the same disk conditions (fdatasync latency on a shared
    // machine varies by orders of magnitude over seconds).
    let rounds = 40;
    let (mut empty, mut full) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let (t_empty, probes_empty) = time_add(&small, &format!("e-{i}"));
        let (t_full, probes_full) = time_add(&big, &format!("f-{i}"));
        // The deterministic check: the same work whatever the number of reservations.
        assert_eq!(
            probes_full, probes_empty,
            "ADD #{i} probed more files at 60k"
        );
        empty.push(t_empty);
        full.push(t_full);
    }
    let (empty, full) = (median(empty), median(full));

    let t = Instant::now();
    del(&big, "f-0", "eth0").unwrap();
    let del_indexed = t.elapsed();
    let t = Instant::now();
    del(&big, "never-added", "eth0").unwrap();
    let del_walk = t.elapsed();

    println!(
        "scale ({}): populate {EXISTING} Go-style files {populate:?}; one-time import {import:?}; \
         ADD median over {rounds}: empty network {empty:?}, with {EXISTING} reservations {full:?} \
         ({:.2}x); DEL via index {del_indexed:?}; DEL of an unknown attachment (walk) {del_walk:?}",
        base_dir.display(),
        full.as_secs_f64() / empty.as_secs_f64()
    );
    assert!(
        // Additive slack for fdatasync spikes on a shared disk.
        full < empty * 5 + Duration::from_millis(5),
        "ADD at {EXISTING} reservations took {full:?} vs {empty:?} on an empty network"
    );
    assert!(
        ip_files(&tmp.path().join("big")).len() as u32 == EXISTING + rounds as u32,
        "one reservation per ADD expected"
    );
}

/// Runs only as a child of `killed_processes_never_leave_partial_state`: ADD/DEL forever.
#[test]
fn child_crash_loop() {
    let Ok(dir) = std::env::var(CRASH_ENV) else {
        return;
    };
    let cfg = config(Path::new(&dir), "crash", crash_ranges());
    let me = std::process::id();
    for i in 0..1_000_000u32 {
        let id = format!("k{me}-{i}");
        // Exhaustion is expected now and then; anything else is a bug.
        if let Err(e) = add(&cfg, &id, "eth0") {
            assert_eq!(e.code(), 11, "{e}");
        }
        if i > 0 {
            del(&cfg, &format!("k{me}-{}", i - 1), "eth0").unwrap();
        }
    }
}

const CRASH_ENV: &str = "HOST_LOCAL_TEST_CRASH";

fn crash_ranges() -> Value {
    json!([[{"subnet": "10.6.0.0/26"}], [{"subnet": "fd06::/122"}]])
}

#[test]
fn killed_processes_never_leave_partial_state() {
    let tmp = TempDir::new().unwrap();
    let net = tmp.path().join("crash");
    let exe = std::env::current_exe().unwrap();
    let mut reservations_seen = 0;
    for round in 0..8u64 {
        let mut children: Vec<_> = (0..2)
            .map(|_| {
                Command::new(&exe)
                    .args(["--exact", "tests::child_crash_loop", "--test-threads=1"])
                    .env(CRASH_ENV, tmp.path())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(30 + round * 17));
        for child in &mut children {
            child.kill().unwrap(); // SIGKILL, at an arbitrary instant
            child.wait().unwrap();
        }
        for name in fs::read_dir(&net).unwrap() {
            let name = name.unwrap().file_name().into_string().unwrap();
            let content = fs::read_to_string(net.join(&name)).unwrap();
            if name.parse::<IpAddr>().is_ok() {
                reservations_seen += 1;
                let (id, ifname) = content.split_once("\r\n").unwrap_or(("", ""));
                assert!(
                    id.starts_with('k') && ifname == "eth0",
                    "{name}: partial reservation {content:?}"
                );
            } else if let Some(_set) = name.strip_prefix("last_reserved_ip.") {
                assert!(content.parse::<IpAddr>().is_ok(), "{name}: {content:?}");
            } else {
                assert_eq!(name, "lock");
            }
        }
    }
    assert!(reservations_seen > 0, "the children never got to allocate");
    println!("crash test: {reservations_seen} reservations inspected after SIGKILLs");
    // Whatever the kills left behind, GC with no valid attachment cleans all of it.
    let cfg = config(tmp.path(), "crash", crash_ranges());
    gc(&cfg, &[]).unwrap();
    assert!(ip_files(&net).is_empty());
    let side = tmp.path().join(".host-local/crash");
    let mut side_names: Vec<String> = fs::read_dir(&side)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    side_names.sort();
    assert_eq!(side_names, [".imported", ".tmp"]);
    // No temp file survives a lock holder; what `.tmp` keeps are spares: plain files with no
    // other name (never a second link to a live reservation), at most the store's cap.
    let spares: Vec<_> = fs::read_dir(side.join(".tmp"))
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert!(spares.len() <= 32, "{} spares", spares.len());
    for e in spares {
        let name = e.file_name().into_string().unwrap();
        let meta = fs::symlink_metadata(e.path()).unwrap();
        assert!(name.starts_with("spare."), "stale temp {name}");
        assert!(
            meta.is_file() && std::os::unix::fs::MetadataExt::nlink(&meta) == 1,
            "{name}: {meta:?}"
        );
    }
}

mod model {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// ADD/DEL sequences on the real store behave like a simple map: no address twice,
        /// duplicates and exhaustion reported, double DEL a no-op, and empty at the end.
        #[test]
        fn disk_store_matches_model(ops in proptest::collection::vec((any::<bool>(), 0u8..7), 1..40)) {
            let tmp = TempDir::new().unwrap();
            let cfg = config(tmp.path(), "model", json!([[{"subnet": "10.8.0.0/29"}]]));
            let mut model: HashMap<u8, IpAddr> = HashMap::new();
            for (is_add, id) in ops {
                let cid = format!("m{id}");
                if is_add {
                    match add(&cfg, &cid, "eth0") {
                        Ok(out) => {
                            let got = out.ips[0].address.addr();
                            prop_assert!(!model.contains_key(&id));
                            prop_assert!(!model.values().any(|v| *v == got), "{} twice", got);
                            prop_assert!(ip_files(&tmp.path().join("model")).contains(&got.to_string()));
                            model.insert(id, got);
                        }
                        Err(IpamError::Allocate { source, .. }) => match *source {
                            IpamError::DuplicateAllocation { .. } => prop_assert!(model.contains_key(&id)),
                            IpamError::Exhausted { .. } => prop_assert_eq!(model.len(), 5),
                            other => prop_assert!(false, "unexpected {}", other),
                        },
                        Err(other) => prop_assert!(false, "unexpected {}", other),
                    }
                } else {
                    let released = del(&cfg, &cid, "eth0").unwrap();
                    prop_assert_eq!(released, model.remove(&id).into_iter().collect::<Vec<_>>());
                }
            }
            for id in 0u8..7 {
                del(&cfg, &format!("m{id}"), "eth0").unwrap();
                let again = del(&cfg, &format!("m{id}"), "eth0").unwrap();
                prop_assert!(again.is_empty());
            }
            prop_assert!(ip_files(&tmp.path().join("model")).is_empty());
            let side: Vec<String> = fs::read_dir(tmp.path().join(".host-local/model"))
                .into_iter()
                .flatten()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| !n.starts_with('.'))
                .collect();
            prop_assert!(side.is_empty(), "stale index {:?}", side);
        }
    }
}
