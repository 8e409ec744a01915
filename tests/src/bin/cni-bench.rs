//! Benchmark driver: runs the same workload through the Go reference plugins and ours in
//! one run and prints per-op latency medians, p99, throughput and the ratios. Not a test:
//! `scripts/bench-*.sh` build release binaries and call it.
//!
//! Usage: cni-bench host-local [--ops N] [--scale N]
//!        cni-bench bridge [--pods N]

use e2e::{NetNs, GO_PLUGIN_DIR};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let opt = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    match mode {
        "host-local" => host_local(opt("--ops", 200), opt("--scale", 60_000)),
        "bridge" => bridge(opt("--pods", 50)),
        _ => {
            eprintln!("usage: cni-bench host-local [--ops N] [--scale N] | bridge [--pods N]");
            std::process::exit(2);
        }
    }
}

struct Stats {
    samples: Vec<Duration>,
    wall: Duration,
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        let mut v: Vec<f64> = self.samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return f64::NAN;
        }
        let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[idx.min(v.len() - 1)]
    }
    fn median(&self) -> f64 {
        self.pct(50.0)
    }
    fn throughput(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64()
    }
}

fn run_plugin(
    bin: &Path,
    vars: &BTreeMap<String, String>,
    stdin: &[u8],
) -> (Duration, bool, String) {
    let t = Instant::now();
    let mut child = Command::new(bin)
        .env_clear()
        .envs(vars)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn plugin");
    if let Some(mut si) = child.stdin.take() {
        let _ = si.write_all(stdin);
    }
    let out = child.wait_with_output().expect("wait plugin");
    (
        t.elapsed(),
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn env(cmd: &str, cid: &str, netns: &str, path: &str) -> BTreeMap<String, String> {
    [
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", path),
        ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Runs `ops` ADDs then `ops` DELs with `parallel` workers; returns (add, del) stats.
fn churn(
    bin: &Path,
    conf: &[u8],
    netns: &str,
    ops: usize,
    parallel: usize,
    tag: &str,
) -> (Stats, Stats) {
    let dir = bin
        .parent()
        .unwrap_or(Path::new("/"))
        .to_string_lossy()
        .into_owned();
    let phase = |cmd: &str| -> Stats {
        let started = Instant::now();
        let samples = std::thread::scope(|s| {
            let handles: Vec<_> = (0..parallel)
                .map(|w| {
                    let dir = dir.clone();
                    s.spawn(move || {
                        let mut v = Vec::new();
                        for i in (w..ops).step_by(parallel) {
                            let cid = format!("{tag}-{i}");
                            let (d, ok, out) = run_plugin(bin, &env(cmd, &cid, netns, &dir), conf);
                            assert!(ok, "{cmd} {cid} failed: {out}");
                            v.push(d);
                        }
                        v
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("worker"))
                .collect()
        });
        Stats {
            samples,
            wall: started.elapsed(),
        }
    };
    let add = phase("ADD");
    let del = phase("DEL");
    (add, del)
}

fn host_local_conf(name: &str, data_dir: &Path, subnet: &str) -> Vec<u8> {
    serde_json::json!({
        "cniVersion": "0.3.1",
        "name": name,
        "type": "host-local",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir}
    })
    .to_string()
    .into_bytes()
}

fn host_local(ops: usize, scale: usize) {
    let ours = e2e::our_binary("host-local");
    let go = PathBuf::from(GO_PLUGIN_DIR).join("host-local");
    assert!(
        go.is_file(),
        "{} missing: apt-get install containernetworking-plugins",
        go.display()
    );
    let ns = NetNs::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    println!("host-local benchmark: {ops} ADD then {ops} DEL per run, /16 range, release builds");
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "scenario", "go p50", "ours p50", "go p99", "ours p99", "ratio"
    );
    for parallel in [1usize, 4] {
        let mut rows = Vec::new();
        for (label, bin) in [("go", &go), ("ours", &ours)] {
            let data = tmp.path().join(format!("{label}-{parallel}"));
            let conf = host_local_conf("bench", &data, "10.128.0.0/16");
            rows.push(churn(bin, &conf, ns.path(), ops, parallel, label));
        }
        for (i, what) in ["ADD", "DEL"].iter().enumerate() {
            let g = if i == 0 { &rows[0].0 } else { &rows[0].1 };
            let o = if i == 0 { &rows[1].0 } else { &rows[1].1 };
            println!(
                "{:<28} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>7.2}x",
                format!("{what} x{parallel} at once"),
                g.median(),
                o.median(),
                g.pct(99.0),
                o.pct(99.0),
                o.median() / g.median()
            );
            println!(
                "{:<28} {:>9.0}/s {:>9.0}/s {:>21} {:>7.2}x",
                format!("  throughput"),
                g.throughput(),
                o.throughput(),
                "",
                o.throughput() / g.throughput()
            );
        }
    }
    // ADD cost against the number of existing reservations.
    println!("\nADD latency with {scale} existing reservations in the network vs an empty one:");
    for (label, bin) in [("go", &go), ("ours", &ours)] {
        let empty_dir = tmp.path().join(format!("{label}-empty"));
        let full_dir = tmp.path().join(format!("{label}-full"));
        prefill(&full_dir.join("bench"), scale);
        let n = 30;
        let empty = churn(
            bin,
            &host_local_conf("bench", &empty_dir, "10.128.0.0/16"),
            ns.path(),
            n,
            1,
            "e",
        );
        let full = churn(
            bin,
            &host_local_conf("bench", &full_dir, "10.128.0.0/16"),
            ns.path(),
            n,
            1,
            "f",
        );
        println!(
            "  {label:<5} ADD p50 empty {:>8.2}ms  full {:>8.2}ms  (x{:.2});  DEL p50 empty {:>8.2}ms  full {:>8.2}ms",
            empty.0.median(),
            full.0.median(),
            full.0.median() / empty.0.median(),
            empty.1.median(),
            full.1.median()
        );
    }
}

/// Writes `count` reservations in the Go plugin's format (`<ip>` holding `cid\r\neth0`)
/// from the start of 10.128.0.0/16, with the cursor on the last one.
fn prefill(dir: &Path, count: usize) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut last = String::new();
    for i in 0..count {
        let n = 2 + i as u32;
        let ip = std::net::Ipv4Addr::from(0x0a80_0000u32 + n);
        last = ip.to_string();
        std::fs::write(dir.join(&last), format!("prefill-{i}\r\neth0")).expect("write reservation");
    }
    std::fs::write(dir.join("last_reserved_ip.0"), last).expect("write cursor");
}

/// Runs `f` on the calling thread after moving it into the namespace at `path`; children
/// the thread spawns are born there, as when a runtime execs a plugin on the node.
fn enter_netns(path: &str) {
    let ns = std::fs::File::open(path).expect("open node netns");
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns node netns");
}

/// Pod churn through a bridge plugin: `pods.len()` ADDs, then as many DELs, `parallel` at
/// once, each pod in its own namespace, the plugin exec'd in the node namespace.
fn bridge_churn(
    dir: &Path,
    conf: &[u8],
    node: &str,
    pods: &[String],
    parallel: usize,
    tag: &str,
) -> (Stats, Stats) {
    let bin = dir.join("bridge");
    let path = dir.to_string_lossy().into_owned();
    let phase = |cmd: &str| -> Stats {
        let started = Instant::now();
        let samples = std::thread::scope(|s| {
            let handles: Vec<_> = (0..parallel)
                .map(|w| {
                    let (bin, path) = (&bin, &path);
                    s.spawn(move || {
                        enter_netns(node);
                        let mut v = Vec::new();
                        for i in (w..pods.len()).step_by(parallel) {
                            let cid = format!("{tag}-{i}");
                            let vars = env(cmd, &cid, &pods[i], path);
                            let (d, ok, out) = run_plugin(bin, &vars, conf);
                            assert!(ok, "{tag}: {cmd} {cid} failed: {out}");
                            v.push(d);
                        }
                        v
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("worker"))
                .collect()
        });
        Stats {
            samples,
            wall: started.elapsed(),
        }
    };
    let add = phase("ADD");
    let del = phase("DEL");
    (add, del)
}

/// kube-flannel's delegate config (gateway, default route, hairpin, MTU 1450), with or
/// without ipMasq; 1.0.0 is the newest version the Go plugins v1.1.1 speak.
fn bridge_conf(bridge: &str, data_dir: &Path, subnet: &str, masq: bool) -> Vec<u8> {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "benchnet",
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "isDefaultGateway": true,
        "hairpinMode": true,
        "mtu": 1450,
        "ipMasq": masq,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir}
    })
    .to_string()
    .into_bytes()
}

fn bridge(pods: usize) {
    let ours = std::env::var("CNI_TEST_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .expect("binary directory")
        });
    let go = PathBuf::from(GO_PLUGIN_DIR);
    for (dir, what) in [
        (&ours, "cargo build --release --workspace --bins"),
        (&go, "apt-get install containernetworking-plugins"),
    ] {
        for p in ["bridge", "host-local"] {
            assert!(
                dir.join(p).is_file(),
                "{} missing: {what}",
                dir.join(p).display()
            );
        }
    }
    let node = NetNs::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    // The installed form: one multi-call binary under both names, so bridge runs
    // host-local in-process.
    let multi = ours.join("cni-plugins");
    let mc_dir = tmp.path().join("multicall-bin");
    let mut impls: Vec<(&str, PathBuf, &str, &str)> = vec![
        ("go", go.clone(), "cnigo", "10.90.0.0/16"),
        ("ours", ours.clone(), "cniours", "10.91.0.0/16"),
    ];
    if multi.is_file() {
        std::fs::create_dir_all(&mc_dir).expect("mkdir");
        for p in ["bridge", "host-local"] {
            std::os::unix::fs::symlink(&multi, mc_dir.join(p)).expect("symlink");
        }
        impls.push(("ours-mc", mc_dir.clone(), "cnimc", "10.92.0.0/16"));
    }
    // Pod namespaces are made before any timing; DEL leaves them empty for the next run.
    let pod_ns: Vec<NetNs> = (0..pods).map(|_| NetNs::new()).collect();
    let pod_paths: Vec<String> = pod_ns.iter().map(|p| p.path().to_owned()).collect();

    println!(
        "bridge benchmark: {pods} pods ADD then DEL per run, release builds, throwaway node and \
         pod namespaces, flannel-style config (gateway, default route, hairpin, mtu 1450)"
    );
    println!(
        "  go      = Go bridge + host-local v1.1.1 ({})",
        go.display()
    );
    println!(
        "  ours    = our bridge + host-local, two binaries ({})",
        ours.display()
    );
    if multi.is_file() {
        println!("  ours-mc = the multi-call binary under both names (host-local in-process)");
    }
    // (parallel, masq, impl) -> (add, del)
    let mut res: BTreeMap<(usize, bool, String), (Stats, Stats)> = BTreeMap::new();
    for parallel in [1usize, 4] {
        for masq in [false, true] {
            for (label, dir, br, subnet) in &impls {
                let data = tmp.path().join(format!("{label}-{parallel}-{masq}"));
                let conf = bridge_conf(br, &data, subnet, masq);
                // Warm-up: creates the bridge and its address, fills the page cache.
                let warm = vec![pod_paths[0].clone()];
                bridge_churn(dir, &conf, node.path(), &warm, 1, &format!("warm-{label}"));
                let tag = format!("{label}-{parallel}-{masq}");
                res.insert(
                    (parallel, masq, label.to_string()),
                    bridge_churn(dir, &conf, node.path(), &pod_paths, parallel, &tag),
                );
            }
        }
    }
    let labels: Vec<&str> = impls.iter().map(|i| i.0).collect();
    let mut header = format!("{:<20}", "scenario");
    for l in &labels {
        header.push_str(&format!(
            " {:>11} {:>11}",
            format!("{l} p50"),
            format!("{l} p99")
        ));
    }
    for l in labels.iter().skip(1) {
        header.push_str(&format!(" {:>11}", format!("{l}/go")));
    }
    println!("{header}");
    for parallel in [1usize, 4] {
        for masq in [false, true] {
            for (i, what) in ["ADD", "DEL"].iter().enumerate() {
                let pick = |l: &str| -> (f64, f64) {
                    let r = &res[&(parallel, masq, l.to_string())];
                    let st = if i == 0 { &r.0 } else { &r.1 };
                    (st.median(), st.pct(99.0))
                };
                let mut line = format!(
                    "{:<20}",
                    format!("{what} x{parallel}{}", if masq { " ipMasq" } else { "" })
                );
                for l in &labels {
                    let (p50, p99) = pick(l);
                    line.push_str(&format!(" {p50:>9.2}ms {p99:>9.2}ms"));
                }
                for l in labels.iter().skip(1) {
                    line.push_str(&format!(" {:>10.2}x", pick(l).0 / pick("go").0));
                }
                println!("{line}");
            }
        }
    }
    println!("\nmasquerade share (p50 with ipMasq minus p50 without):");
    for parallel in [1usize, 4] {
        for (i, what) in ["ADD", "DEL"].iter().enumerate() {
            let share = |label: &str| {
                let pick = |r: &(Stats, Stats)| if i == 0 { r.0.median() } else { r.1.median() };
                pick(&res[&(parallel, true, label.to_string())])
                    - pick(&res[&(parallel, false, label.to_string())])
            };
            let mut line = format!("  {what} x{parallel}:");
            for l in &labels {
                line.push_str(&format!("  {l} {:>7.2}ms", share(l)));
            }
            println!("{line}");
        }
    }
}
