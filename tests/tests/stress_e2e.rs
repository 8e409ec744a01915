//! Load and crash safety of the whole chain (flannel → bridge → host-local) on one node.
//! Sizes are reduced for CI; `scripts/stress.sh` runs the full sizes (LOAD_PODS=200,
//! FAULT_RUNS=300).

use e2e::{json, list_files, Env, Impl, NetNs, World};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A node with flannel configured as kube-flannel but on CNI 1.1 (for GC), ip-masq done
/// by the bridge (FLANNEL_IPMASQ=false) so nftables rules are part of what must not leak.
fn node(chain: Impl) -> World {
    let w = World::new();
    if chain == Impl::OursCopy {
        // Private copies: every delegation is a real fork+exec, so a killed parent can
        // leave a running child.
        w.install("bridge", Impl::OursCopy);
        w.install("host-local", Impl::OursCopy);
    }
    std::fs::create_dir_all(w.path("run")).unwrap();
    std::fs::write(
        w.path("run/subnet.env"),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    w
}

fn conf(w: &World) -> Value {
    json!({
        "cniVersion": "1.1.0", "name": "cbr0", "type": "flannel",
        "subnetFile": w.path_str("run/subnet.env"), "dataDir": w.path_str("flannel"),
        "delegate": {"hairpinMode": true, "isDefaultGateway": true, "bridge": "cni0"},
        "ipam": {"dataDir": w.path_str("ipam")}
    })
}

fn gc(w: &World, live: &BTreeSet<String>) {
    let mut c = conf(w);
    let valid: Vec<Value> = live
        .iter()
        .map(|id| json!({"containerID": id, "ifname": "eth0"}))
        .collect();
    c["cni.dev/valid-attachments"] = json!(valid);
    c["cni.dev/attachments"] = json!(valid);
    w.exec(
        "flannel",
        &Env::new("GC", "", "").ifname(""),
        c.to_string().as_bytes(),
    )
    .ok();
}

/// Everything on the node that belongs to a container, by container ID.
#[derive(Debug, Default, PartialEq)]
struct NodeState {
    reservations: BTreeMap<String, Vec<String>>,
    saved: BTreeSet<String>,
    /// flannel's shared copies (`.shared.*`) that no saved config links to any more.
    unused_shared: Vec<String>,
    masq: BTreeSet<String>,
    veths: usize,
}

fn node_state(w: &World) -> NodeState {
    let mut s = NodeState::default();
    let net = w.path("ipam/cbr0");
    for f in list_files(&net) {
        if f.contains('/') || f.parse::<std::net::IpAddr>().is_err() {
            continue;
        }
        let owner = std::fs::read_to_string(net.join(&f)).unwrap_or_default();
        let cid = owner.split("\r\n").next().unwrap_or("").to_owned();
        s.reservations.entry(cid).or_default().push(f);
    }
    for f in list_files(&w.path("flannel")) {
        if !f.starts_with('.') {
            s.saved.insert(f);
        } else if f.starts_with(".shared.") {
            let links = std::fs::metadata(w.path("flannel").join(&f)).map_or(0, |m| m.nlink());
            if links < 2 {
                s.unused_shared.push(f);
            }
        }
    }
    let (_, rules, _) = w.node.run("nft", &["list", "ruleset"]);
    for line in rules
        .lines()
        .filter(|l| l.contains("masquerade") && l.contains("id: "))
    {
        if let Some(id) = line.split("id: ").nth(1) {
            s.masq.insert(id.trim_end_matches('"').trim().to_owned());
        }
    }
    s.veths = w
        .node
        .links()
        .iter()
        .filter(|l| l.starts_with("veth"))
        .count();
    s
}

fn assert_matches_live(w: &World, live: &BTreeSet<String>, when: &str) {
    let s = node_state(w);
    let owners: BTreeSet<String> = s.reservations.keys().cloned().collect();
    assert_eq!(
        &owners, live,
        "{when}: reservations belong to exactly the live pods"
    );
    for (cid, ips) in &s.reservations {
        assert_eq!(ips.len(), 1, "{when}: {cid} holds {ips:?}");
    }
    assert_eq!(&s.saved, live, "{when}: saved flannel configs");
    assert!(
        s.unused_shared.is_empty(),
        "{when}: shared copies no saved config links to: {:?}",
        s.unused_shared
    );
    assert_eq!(&s.masq, live, "{when}: masquerade rules");
    assert_eq!(s.veths, live.len(), "{when}: veths on the node");
}

#[test]
fn load_concurrent_then_interleaved() {
    let pods = env_usize("LOAD_PODS", 48);
    let parallel = env_usize("LOAD_PARALLEL", 16);
    let w = node(Impl::Ours);
    let c = conf(&w).to_string();
    let nss: Vec<NetNs> = (0..pods).map(|_| NetNs::new()).collect();
    let run = |cmd: &str, ids: &[usize]| -> (Vec<(usize, String)>, Duration) {
        let started = Instant::now();
        let chunks: Vec<Vec<usize>> = (0..parallel)
            .map(|k| ids.iter().copied().skip(k).step_by(parallel).collect())
            .collect();
        let out = std::thread::scope(|s| {
            let hs: Vec<_> = chunks
                .iter()
                .map(|chunk| {
                    let (w, c, nss) = (&w, &c, &nss);
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|&i| {
                                let r = w.exec(
                                    "flannel",
                                    &Env::new(cmd, &format!("pod{i}"), nss[i].path()),
                                    c.as_bytes(),
                                );
                                r.ok();
                                let ip = if cmd == "ADD" {
                                    r.json()["ips"][0]["address"]
                                        .as_str()
                                        .unwrap_or("")
                                        .to_owned()
                                } else {
                                    String::new()
                                };
                                (i, ip)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().expect("worker"))
                .collect()
        });
        (out, started.elapsed())
    };
    let all: Vec<usize> = (0..pods).collect();
    let (added, t_add) = run("ADD", &all);
    let ips: BTreeSet<&String> = added.iter().map(|(_, ip)| ip).collect();
    assert_eq!(ips.len(), pods, "duplicate IPs among {pods} pods");
    let live: BTreeSet<String> = all.iter().map(|i| format!("pod{i}")).collect();
    assert_matches_live(&w, &live, "after concurrent ADD");
    let (_, t_del) = run("DEL", &all);
    assert_matches_live(&w, &BTreeSet::new(), "after concurrent DEL");
    eprintln!(
        "load: {pods} pods, {parallel} at once: ADD {:.0} pods/s ({:?}), DEL {:.0} pods/s ({:?})",
        pods as f64 / t_add.as_secs_f64(),
        t_add,
        pods as f64 / t_del.as_secs_f64(),
        t_del
    );
    // Interleaved: each wave adds a new half while the previous half is deleted, racing;
    // GC with the runtime's valid list runs between waves (never concurrently, per spec).
    let half = pods / 2;
    let (first, second): (Vec<usize>, Vec<usize>) = all.iter().partition(|&&i| i < half);
    run("ADD", &first);
    let mut live: BTreeSet<String> = first.iter().map(|i| format!("pod{i}")).collect();
    for wave in 0..3 {
        let (adding, deleting) = if wave % 2 == 0 {
            (&second, &first)
        } else {
            (&first, &second)
        };
        std::thread::scope(|s| {
            s.spawn(|| run("ADD", adding));
            s.spawn(|| run("DEL", deleting));
        });
        live = adding.iter().map(|i| format!("pod{i}")).collect();
        gc(&w, &live);
        assert_matches_live(&w, &live, &format!("after wave {wave}"));
    }
    let ids: Vec<usize> = live.iter().map(|s| s[3..].parse().unwrap()).collect();
    run("DEL", &ids);
    assert_matches_live(&w, &BTreeSet::new(), "at the end");
}

/// xorshift64*: reproducible runs from a printed seed, without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn fault_injection(chain: Impl) {
    let runs = env_usize("FAULT_RUNS", 40);
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    eprintln!("fault injection ({chain:?}): {runs} runs, FAULT_SEED={seed}");
    let mut rng = Rng(seed);
    let w = node(chain);
    let c = conf(&w).to_string();
    let pool: Vec<NetNs> = (0..6).map(|_| NetNs::new()).collect();
    // How long an uninterrupted ADD takes here, to spread the kills over its whole life.
    let probe = Instant::now();
    w.exec(
        "flannel",
        &Env::new("ADD", "probe", pool[0].path()),
        c.as_bytes(),
    )
    .ok();
    let add_time = probe.elapsed();
    w.exec(
        "flannel",
        &Env::new("DEL", "probe", pool[0].path()),
        c.as_bytes(),
    )
    .ok();
    let mut live: BTreeSet<String> = BTreeSet::new();
    let mut ip_of: BTreeMap<String, String> = BTreeMap::new();
    let (mut kills, mut completed) = (0, 0);
    for run in 0..runs {
        let slot = rng.below(pool.len() as u64) as usize;
        let cid = format!("p{slot}");
        let cmd = if live.contains(&cid) { "DEL" } else { "ADD" };
        let env = Env::new(cmd, &cid, pool[slot].path());
        let mut child = w.spawn("flannel", &env, c.as_bytes());
        let delay = Duration::from_micros(rng.below(add_time.as_micros() as u64 * 3 / 2));
        std::thread::sleep(delay);
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("wait");
        // Counted by how it ended: a kill that lands after the plugin finished is no kill.
        if std::os::unix::process::ExitStatusExt::signal(&out.status) == Some(libc::SIGKILL) {
            kills += 1;
        }
        let ok = out.status.success();
        if ok {
            completed += 1;
        }
        match (cmd, ok) {
            ("ADD", true) => {
                let v: Value = serde_json::from_slice(&out.stdout).expect("ADD result");
                let ip = v["ips"][0]["address"].as_str().unwrap_or("").to_owned();
                assert!(
                    !ip_of.values().any(|other| *other == ip),
                    "run {run}: {ip} handed to two live pods"
                );
                ip_of.insert(cid.clone(), ip);
                live.insert(cid);
            }
            _ => {
                // What a runtime does after a failed or killed ADD or DEL: DEL until it
                // succeeds (a DEL may race a killed parent's surviving child; retry).
                let mut tries = 0;
                loop {
                    let r = w.exec("flannel", &env.cmd("DEL"), c.as_bytes());
                    if r.code == 0 {
                        break;
                    }
                    tries += 1;
                    assert!(
                        tries < 5,
                        "run {run}: DEL of {cid} keeps failing: {}",
                        r.stdout
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                live.remove(&cid);
                ip_of.remove(&cid);
            }
        }
        if run % 10 == 9 {
            // Children orphaned by a kill may still be finishing; GC is what reclaims
            // whatever they complete after the runtime's DEL.
            std::thread::sleep(Duration::from_millis(200));
            gc(&w, &live);
            assert_matches_live(&w, &live, &format!("after run {run} (seed {seed})"));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    gc(&w, &live);
    assert_matches_live(&w, &live, &format!("at the end (seed {seed})"));
    for cid in live.clone() {
        let slot: usize = cid[1..].parse().unwrap();
        w.exec(
            "flannel",
            &Env::new("DEL", &cid, pool[slot].path()),
            c.as_bytes(),
        )
        .ok();
    }
    assert_matches_live(&w, &BTreeSet::new(), "after deleting every pod");
    eprintln!(
        "fault injection ({chain:?}): {runs} runs, {kills} killed, {completed} completed, 0 leaks"
    );
}

#[test]
fn fault_injection_in_process_chain() {
    fault_injection(Impl::Ours);
}

#[test]
fn fault_injection_exec_chain() {
    fault_injection(Impl::OursCopy);
}
