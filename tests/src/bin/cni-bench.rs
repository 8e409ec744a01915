//! Benchmark driver: runs the same workload through the Go reference plugins and ours in
//! one run and prints per-op latency medians, p99, throughput and the ratios. Not a test:
//! `scripts/bench*.sh` build release binaries and call it.
//!
//! Usage: cni-bench host-local [--ops N] [--scale N]
//!        cni-bench bridge [--pods N]
//!        cni-bench all [--pods N] [--json PATH] [--svg PATH] [--md PATH]

use e2e::{NetNs, GO_PLUGIN_DIR};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let opt_str = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let opt = |name: &str, default: usize| -> usize {
        opt_str(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    match mode {
        "host-local" => host_local(opt("--ops", 200), opt("--scale", 60_000)),
        "bridge" => bridge(opt("--pods", 50)),
        "all" => all(&AllOpts {
            pods: opt("--pods", 50).max(2),
            json: opt_str("--json").map(PathBuf::from),
            svg: opt_str("--svg").map(PathBuf::from),
            md: opt_str("--md").map(PathBuf::from),
        }),
        RSS_EXEC => rss_exec(args.get(1).map(String::as_str).unwrap_or("")),
        _ => {
            eprintln!(
                "usage: cni-bench host-local [--ops N] [--scale N] | bridge [--pods N] \
                 | all [--pods N] [--json PATH] [--svg PATH] [--md PATH]"
            );
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

// ---------------------------------------------------------------------------------------
// `all`: the Go reference bridge + host-local against ours as installed (the multi-call
// binary under each plugin's name), as bridge + host-local and as the full flannel chain,
// in one run: latency per operation, masquerade share, peak RSS, binary sizes, targets.

/// Hidden mode `cni-bench __rss-exec PROG`: see [`rss_exec`].
const RSS_EXEC: &str = "__rss-exec";

const GO: &str = "go";
const OURS: &str = "ours";
const CHAIN: &str = "ours-chain";

/// The ops of one implementation in one scenario, in milliseconds.
type Samples = BTreeMap<(&'static str, usize, bool, &'static str), Vec<f64>>;

struct AllOpts {
    pods: usize,
    json: Option<PathBuf>,
    svg: Option<PathBuf>,
    md: Option<PathBuf>,
}

/// One implementation under test, with a node namespace and pod namespaces of its own so
/// that the interleaved runs never share kernel state (bridge, nftables, iptables).
struct Subject {
    label: &'static str,
    about: String,
    /// What the runtime executes: `bridge`, or `flannel` for the chain.
    entry: PathBuf,
    /// `CNI_PATH`.
    cni_path: String,
    node: NetNs,
    bridge: &'static str,
    /// The cluster network (flannel adds a route to it; the bridge configs get the same).
    network: &'static str,
    /// This node's pod subnet and its first address, as subnet.env writes it.
    subnet: &'static str,
    gateway_cidr: &'static str,
    pods: Vec<NetNs>,
}

impl Subject {
    /// The config a runtime would hand to `entry` in one scenario; all state under `state`.
    /// Go and ours get exactly the delegate config our flannel builds for the chain (kube-
    /// flannel's: gateway, default route, hairpin, MTU 1450, a route to the cluster network).
    fn conf(&self, state: &Path, masq: bool) -> Vec<u8> {
        std::fs::create_dir_all(state).expect("mkdir state");
        let conf = if self.label == CHAIN {
            // FLANNEL_IPMASQ=true means flanneld masquerades, so the delegate gets ipMasq
            // false: masq on in the bridge is FLANNEL_IPMASQ=false.
            let env = state.join("subnet.env");
            std::fs::write(
                &env,
                format!(
                    "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ={}\n",
                    self.network, self.gateway_cidr, !masq
                ),
            )
            .expect("write subnet.env");
            serde_json::json!({
                "cniVersion": "1.0.0",
                "name": "benchnet",
                "type": "flannel",
                "subnetFile": env,
                "dataDir": state.join("flannel"),
                "delegate": {"bridge": self.bridge, "hairpinMode": true, "isDefaultGateway": true},
                "ipam": {"dataDir": state.join("ipam")}
            })
        } else {
            serde_json::json!({
                "cniVersion": "1.0.0",
                "name": "benchnet",
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "isDefaultGateway": true,
                "hairpinMode": true,
                "mtu": 1450,
                "ipMasq": masq,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.subnet}]],
                    "routes": [{"dst": self.network}],
                    "dataDir": state.join("ipam")
                }
            })
        };
        conf.to_string().into_bytes()
    }
}

/// `parallel` workers run `cmd` for the pods in `pods` (worker w takes every
/// `parallel`-th), in the subject's node namespace; returns the per-op times in ms.
fn timed_ops(
    s: &Subject,
    conf: &[u8],
    cmd: &str,
    pods: std::ops::Range<usize>,
    parallel: usize,
    tag: &str,
) -> Vec<f64> {
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..parallel)
            .map(|w| {
                let pods = pods.clone();
                sc.spawn(move || {
                    enter_netns(s.node.path());
                    let mut v = Vec::new();
                    for i in pods.skip(w).step_by(parallel) {
                        let cid = format!("{tag}-{i}");
                        let vars = env(cmd, &cid, s.pods[i].path(), &s.cni_path);
                        let (d, ok, out) = run_plugin(&s.entry, &vars, conf);
                        assert!(ok, "{}: {cmd} {cid} failed: {out}", s.label);
                        v.push(d.as_secs_f64() * 1e3);
                    }
                    v
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    })
}

/// The pods of one phase cut into rounds; every round runs each implementation once, so
/// slow spells of a shared machine hit all of them. Rounds hold several ops per worker so
/// that "4 at once" stays 4 at once for most of each round.
fn rounds(n: usize, parallel: usize) -> Vec<std::ops::Range<usize>> {
    let size = if parallel == 1 { 10 } else { 3 * parallel };
    let k = ((n + size / 2) / size).max(1);
    (0..k).map(|j| j * n / k..(j + 1) * n / k).collect()
}

/// Puts each scenario's state directory (made under `dir`) in a block group of its own.
/// On ext4 without a journal (this VM's root file system) a new inode is allocated past
/// every free inode of its group deleted in the last 60 s (5 min while that inode's table
/// block is dirty, `recently_deleted()`), and a directory under /tmp shares its group with
/// whatever earlier test runs deleted there: in that state the one file an ADD creates
/// (host-local's reservation, Go's and ours alike) cost 0.4-0.7 ms of that scan (perf),
/// more than the rest of our ADD's file work, and varying with what ran before. With the
/// "top directory" flag on `dir`, ext4's Orlov allocator spreads its subdirectories over
/// groups with free room, as it does for a node's own /var/lib; with a journal the scan
/// does not exist at all. Best effort: elsewhere the flag is refused and nothing changes.
fn spread_state_dirs(dir: &Path) -> String {
    match Command::new("chattr").arg("+T").arg(dir).output() {
        Ok(o) if o.status.success() => {
            "scenario state dirs spread over ext4 block groups (chattr +T)".into()
        }
        Ok(o) => format!(
            "scenario state dirs not spread (chattr +T: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("scenario state dirs not spread (chattr: {e})"),
    }
}

/// Waits (at most 30 s) until the machine is idle: under 10% of all CPU time busy over
/// 300 ms. Deleted namespaces and veths are finished by kernel workers after the syscall
/// returns (RCU callbacks, `cleanup_net`, which takes RTNL); a scenario started while they
/// run is charged for the previous one, whichever implementation it hits.
fn settle(before: &str) {
    fn busy_total() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let total: u64 = cpu.iter().sum();
        // idle + iowait
        let idle = cpu.get(3)? + cpu.get(4).copied().unwrap_or(0);
        Some((total - idle, total))
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let Some((b0, t0)) = busy_total() else { return };
        std::thread::sleep(Duration::from_millis(300));
        let Some((b1, t1)) = busy_total() else { return };
        if t1 > t0 && (b1 - b0) * 10 < t1 - t0 {
            break;
        }
    }
    eprintln!(
        "settled before {before} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[idx.min(s.len() - 1)]
}

/// Runs `prog` as a child, waits for it with wait4(2), appends `maxrss_kb=<n>` to stderr
/// and exits as the child did. stdin, stdout, stderr and the environment are inherited.
///
/// Why a launcher: a child's ru_maxrss is at least the resident size of the address space
/// it had before execve: the parent's whole address space under posix_spawn/vfork, a copy
/// of its anonymous memory under fork. Exec'd straight from this driver (hundreds of
/// namespace threads, sample buffers), every plugin would "peak" at the driver's size.
/// This launcher is a fresh, small process, so the figure is the plugin's own peak (and
/// that of the children it waited for), floored at the launcher's size, which `all`
/// measures with /bin/true and prints.
fn rss_exec(prog: &str) -> ! {
    let Ok(c_prog) = std::ffi::CString::new(prog) else {
        std::process::exit(2)
    };
    let argv = [c_prog.as_ptr(), std::ptr::null()];
    // SAFETY: this process has one thread; the child only calls execv and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        eprintln!("fork: {}", std::io::Error::last_os_error());
        std::process::exit(2);
    }
    if pid == 0 {
        // SAFETY: argv is a NULL-terminated array of valid C strings that outlive the call.
        unsafe {
            libc::execv(c_prog.as_ptr(), argv.as_ptr());
            libc::_exit(127)
        }
    }
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is a plain C struct; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals of the right types.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        eprintln!("wait4: {}", std::io::Error::last_os_error());
        std::process::exit(2);
    }
    eprintln!("\nmaxrss_kb={}", ru.ru_maxrss);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    std::process::exit(code)
}

/// Like `run_plugin`, through the [`rss_exec`] launcher: (success, stdout, peak RSS kB).
fn run_measured(bin: &Path, vars: &BTreeMap<String, String>, stdin: &[u8]) -> (bool, String, u64) {
    let launcher = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(launcher)
        .arg(RSS_EXEC)
        .arg(bin)
        .env_clear()
        .envs(vars)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn launcher");
    if let Some(mut si) = child.stdin.take() {
        let _ = si.write_all(stdin);
    }
    let out = child.wait_with_output().expect("wait launcher");
    let err = String::from_utf8_lossy(&out.stderr);
    let kb = err
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("maxrss_kb="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("launcher gave no maxrss for {}: {err}", bin.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        kb,
    )
}

/// Peak RSS (kB) over `n` sequential ADDs then `n` DELs of `entry` with `conf`, each run
/// through the launcher, in `node`.
fn peak_rss(
    node: &str,
    entry: &Path,
    cni_path: &str,
    conf: &[u8],
    pods: &[&str],
    tag: &str,
) -> u64 {
    std::thread::scope(|sc| {
        sc.spawn(|| {
            enter_netns(node);
            let mut peak = 0;
            for cmd in ["ADD", "DEL"] {
                for (i, pod) in pods.iter().enumerate() {
                    let cid = format!("{tag}-{i}");
                    let (ok, out, kb) = run_measured(entry, &env(cmd, &cid, pod, cni_path), conf);
                    assert!(ok, "{tag}: {cmd} {cid} failed: {out}");
                    peak = peak.max(kb);
                }
            }
            peak
        })
        .join()
        .expect("rss worker")
    })
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .len()
}

/// `YYYY-MM-DD hh:mm:ss UTC`, from the invocation log's timestamp formatter.
fn utc_now() -> String {
    let t = cni::log::rfc3339(std::time::SystemTime::now());
    format!("{} {} UTC", &t[..10], &t[11..19])
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn loadavg() -> String {
    read_trim("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn go_package_version() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "containernetworking-plugins"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// The scenarios in table order: (op, parallel, ipMasq).
fn scenarios() -> Vec<(&'static str, usize, bool)> {
    let mut v = Vec::new();
    for parallel in [1usize, 4] {
        for op in ["ADD", "DEL"] {
            for masq in [false, true] {
                v.push((op, parallel, masq));
            }
        }
    }
    v
}

fn scenario_name(op: &str, parallel: usize, masq: bool) -> String {
    format!("{op} x{parallel}{}", if masq { " ipMasq" } else { "" })
}

/// One target: what it says, whether it is met, the measured values.
struct Target {
    what: String,
    pass: bool,
    values: Vec<(String, f64)>,
}

impl Target {
    /// Met when every value satisfies `ok`.
    fn new(what: &str, values: Vec<(String, f64)>, ok: impl Fn(f64) -> bool) -> Target {
        Target {
            what: what.into(),
            pass: values.iter().all(|(_, v)| ok(*v)),
            values,
        }
    }

    fn line(&self) -> String {
        let vals: Vec<String> = self
            .values
            .iter()
            .map(|(k, v)| format!("{k} {}", fmt_ratio(*v)))
            .collect();
        format!(
            "{}  {}: {}",
            if self.pass { "PASS" } else { "MISS" },
            self.what,
            vals.join(", ")
        )
    }
}

fn fmt_ratio(v: f64) -> String {
    if v.is_infinite() {
        "inf".into()
    } else {
        format!("{v:.2}x")
    }
}

/// A number JSON can hold (serde_json writes non-finite floats as null anyway).
fn num(v: f64) -> serde_json::Value {
    if v.is_finite() {
        serde_json::json!((v * 1000.0).round() / 1000.0)
    } else {
        serde_json::Value::Null
    }
}

fn all(opts: &AllOpts) {
    let pods = opts.pods;
    let started_at = utc_now();
    let load_start = loadavg();
    let ours_dir = e2e::our_bin_dir();
    let multi = ours_dir.join("cni-plugins");
    let go_dir = PathBuf::from(GO_PLUGIN_DIR);
    assert!(
        multi.is_file(),
        "{} missing: cargo build --release --workspace --bins",
        multi.display()
    );
    for p in ["bridge", "host-local"] {
        assert!(
            go_dir.join(p).is_file(),
            "{} missing: apt-get install containernetworking-plugins",
            go_dir.join(p).display()
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("cni-bench-")
        .tempdir()
        .expect("tempdir");
    let state_fs = spread_state_dirs(tmp.path());
    eprintln!("{state_fs}");
    // The installed form: the multi-call binary under the three plugin names, so bridge
    // and flannel run their delegates in-process.
    let mc_dir = tmp.path().join("bin");
    std::fs::create_dir_all(&mc_dir).expect("mkdir");
    for p in ["flannel", "bridge", "host-local"] {
        std::os::unix::fs::symlink(&multi, mc_dir.join(p)).expect("symlink");
    }
    let mc_path = mc_dir.to_string_lossy().into_owned();
    let go_version = go_package_version();

    eprintln!("setting up: 3 node namespaces, {} pod namespaces", 3 * pods);
    let mk_pods = || (0..pods).map(|_| NetNs::new()).collect::<Vec<_>>();
    let subjects = [
        Subject {
            label: GO,
            about: format!(
                "Go bridge + host-local {go_version} ({GO_PLUGIN_DIR}), bridge execs host-local"
            ),
            entry: go_dir.join("bridge"),
            cni_path: GO_PLUGIN_DIR.into(),
            node: NetNs::new(),
            bridge: "cnigo0",
            network: "10.90.0.0/16",
            subnet: "10.90.1.0/24",
            gateway_cidr: "10.90.1.1/24",
            pods: mk_pods(),
        },
        Subject {
            label: OURS,
            about: "our bridge + host-local: cni-plugins as `bridge`, host-local in-process".into(),
            entry: mc_dir.join("bridge"),
            cni_path: mc_path.clone(),
            node: NetNs::new(),
            bridge: "cniours0",
            network: "10.91.0.0/16",
            subnet: "10.91.1.0/24",
            gateway_cidr: "10.91.1.1/24",
            pods: mk_pods(),
        },
        Subject {
            label: CHAIN,
            about: "our flannel -> bridge -> host-local: cni-plugins as `flannel`, one process"
                .into(),
            entry: mc_dir.join("flannel"),
            cni_path: mc_path.clone(),
            node: NetNs::new(),
            bridge: "cnichain0",
            network: "10.92.0.0/16",
            subnet: "10.92.1.0/24",
            gateway_cidr: "10.92.1.1/24",
            pods: mk_pods(),
        },
    ];

    // Latency: per scenario, a warm-up ADD+DEL per implementation (creates the bridge,
    // fills caches), then ADD of every pod and DEL of every pod, round-robin.
    // A fresh namespace's first interface, address and routes cost more than later ones
    // (per-namespace tables are set up lazily): one untimed ADD+DEL of every pod first, so
    // the first scenario is not charged for it.
    settle("setup");
    eprintln!("warming up the pod namespaces (untimed ADD+DEL of every pod)");
    for s in &subjects {
        let conf = s.conf(&tmp.path().join(format!("{}-prewarm", s.label)), false);
        for cmd in ["ADD", "DEL"] {
            timed_ops(s, &conf, cmd, 0..pods, 2, "prewarm");
        }
    }
    let mut samples: Samples = BTreeMap::new();
    for parallel in [1usize, 4] {
        for masq in [false, true] {
            let key = format!("x{parallel}-{}", if masq { "masq" } else { "nomasq" });
            settle(&key);
            eprintln!("running {key}: {pods} pods ADD then DEL per implementation");
            let confs: Vec<Vec<u8>> = subjects
                .iter()
                .map(|s| s.conf(&tmp.path().join(format!("{}-{key}", s.label)), masq))
                .collect();
            for (s, conf) in subjects.iter().zip(&confs) {
                for cmd in ["ADD", "DEL"] {
                    timed_ops(s, conf, cmd, 0..1, 1, &format!("warm-{key}"));
                }
            }
            let parts = rounds(pods, parallel);
            for cmd in ["ADD", "DEL"] {
                for (r, part) in parts.iter().enumerate() {
                    for k in 0..subjects.len() {
                        let j = (r + k) % subjects.len();
                        let s = &subjects[j];
                        let v = timed_ops(s, &confs[j], cmd, part.clone(), parallel, &key);
                        samples
                            .entry((cmd, parallel, masq, s.label))
                            .or_default()
                            .extend(v);
                    }
                }
            }
        }
    }

    // Process start: VERSION through each entry point and /bin/true, from this driver
    // (the floor every exec'd plugin pays), interleaved.
    eprintln!("process start: {pods} x VERSION per implementation, /bin/true");
    let mut starts: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let vvars: BTreeMap<String, String> = [("CNI_COMMAND", "VERSION"), ("PATH", "/usr/bin:/bin")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for _ in 0..pods {
        for s in &subjects {
            let (d, ok, out) = run_plugin(&s.entry, &vvars, br#"{"cniVersion":"1.0.0"}"#);
            assert!(ok, "{} VERSION failed: {out}", s.label);
            starts
                .entry(s.label)
                .or_default()
                .push(d.as_secs_f64() * 1e3);
        }
        let (d, ok, _) = run_plugin(Path::new("/bin/true"), &vvars, b"");
        assert!(ok, "/bin/true failed");
        starts
            .entry("true")
            .or_default()
            .push(d.as_secs_f64() * 1e3);
    }

    // Peak RSS, untimed, through the launcher.
    let rss_pods = pods.min(10);
    eprintln!("peak RSS: {rss_pods} ADD + {rss_pods} DEL per plugin, ipMasq off and on");
    let (rc, _, baseline_kb) = run_measured(Path::new("/bin/true"), &BTreeMap::new(), b"");
    assert!(rc, "/bin/true failed");
    let mut rss: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &subjects {
        let pod_paths: Vec<&str> = s.pods[..rss_pods].iter().map(|p| p.path()).collect();
        for masq in [false, true] {
            let state = tmp.path().join(format!("rss-{}-{masq}", s.label));
            let conf = s.conf(&state, masq);
            let tag = format!("rss-{masq}");
            let kb = peak_rss(
                s.node.path(),
                &s.entry,
                &s.cni_path,
                &conf,
                &pod_paths,
                &tag,
            );
            let e = rss.entry(s.label).or_default();
            *e = (*e).max(kb);
        }
        // host-local run alone, as a runtime (or another plugin) execs it.
        if s.label != CHAIN {
            let hl = if s.label == GO {
                go_dir.join("host-local")
            } else {
                mc_dir.join("host-local")
            };
            let conf = host_local_conf(
                "benchnet",
                &tmp.path().join(format!("rss-hl-{}", s.label)),
                s.subnet,
            );
            let kb = peak_rss(s.node.path(), &hl, &s.cni_path, &conf, &pod_paths, "rss-hl");
            rss.insert(
                if s.label == GO {
                    "go-host-local"
                } else {
                    "ours-host-local"
                },
                kb,
            );
        }
    }
    let go_bridge_size = file_size(&go_dir.join("bridge"));
    let go_hl_size = file_size(&go_dir.join("host-local"));
    let ours_size = file_size(&multi);

    let finished_at = utc_now();
    let load_end = loadavg();
    let machine = format!(
        "Linux {}, {} CPUs ({}), load average {} at start, {} at end; {state_fs}",
        read_trim("/proc/sys/kernel/osrelease"),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model(),
        load_start,
        load_end
    );

    // ---- numbers
    let p = |op: &str, par: usize, masq: bool, l: &str, q: f64| -> f64 {
        samples
            .iter()
            .find(|(k, _)| k.0 == op && k.1 == par && k.2 == masq && k.3 == l)
            .map(|(_, v)| pct(v, q))
            .unwrap_or(f64::NAN)
    };
    let share =
        |op: &str, par: usize, l: &str| p(op, par, true, l, 50.0) - p(op, par, false, l, 50.0);
    let share_ratio = |op: &str, par: usize, l: &str| {
        let ours = share(op, par, l);
        if ours <= 0.0 {
            f64::INFINITY
        } else {
            share(op, par, GO) / ours
        }
    };
    let labels = [GO, OURS, CHAIN];

    // ---- text report
    let mut text = String::new();
    let mut md = String::new();
    let w = |t: &mut String, line: String| {
        t.push_str(&line);
        t.push('\n');
    };
    w(
        &mut text,
        format!("CNI plugin benchmark, {started_at} .. {finished_at}"),
    );
    w(&mut text, format!("machine: {machine}"));
    w(
        &mut text,
        format!(
            "workload: {pods} pods ADD then DEL per scenario, sequentially (x1) and 4 at once \
             (x4), with and without ipMasq; a warm-up ADD+DEL first; implementations \
             interleaved in rounds; each in its own node namespace, bridge and subnet; \
             config: gateway, default route, hairpin, mtu 1450, a /24 and a route to the /16"
        ),
    );
    for s in &subjects {
        w(&mut text, format!("  {:<10} = {}", s.label, s.about));
    }
    w(&mut text, String::new());
    w(
        &mut text,
        format!(
            "{:<16} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>9} {:>8} {:>9}",
            "per op, ms",
            "go p50",
            "go p99",
            "ours p50",
            "ours p99",
            "chain p50",
            "chain p99",
            "ours/go",
            "chain/go",
            "ours/go",
            "chain/go"
        ),
    );
    w(
        &mut text,
        format!("{:<16} {:>61} {:>18} {:>18}", "", "", "(p50)", "(p99)"),
    );
    md.push_str(
        "| per op (ms) | go p50 | go p99 | ours p50 | ours p99 | chain p50 | chain p99 | ours/go p50 | chain/go p50 | ours/go p99 | chain/go p99 |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for (op, par, masq) in scenarios() {
        let v: Vec<f64> = labels
            .iter()
            .flat_map(|l| [p(op, par, masq, l, 50.0), p(op, par, masq, l, 99.0)])
            .collect();
        let r = [v[2] / v[0], v[4] / v[0], v[3] / v[1], v[5] / v[1]];
        let name = scenario_name(op, par, masq);
        w(
            &mut text,
            format!(
                "{name:<16} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>9.2} {:>7.2}x {:>8.2}x {:>7.2}x {:>8.2}x",
                v[0], v[1], v[2], v[3], v[4], v[5], r[0], r[1], r[2], r[3]
            ),
        );
        md.push_str(&format!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2}x | {:.2}x | {:.2}x |\n",
            v[0], v[1], v[2], v[3], v[4], v[5], r[0], r[1], r[2], r[3]
        ));
    }
    {
        let v: Vec<f64> = labels
            .iter()
            .flat_map(|l| [pct(&starts[l], 50.0), pct(&starts[l], 99.0)])
            .collect();
        let r = [v[2] / v[0], v[4] / v[0], v[3] / v[1], v[5] / v[1]];
        let name = "VERSION (start)";
        w(
            &mut text,
            format!(
                "{name:<16} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>9.2} {:>7.2}x {:>8.2}x {:>7.2}x {:>8.2}x",
                v[0], v[1], v[2], v[3], v[4], v[5], r[0], r[1], r[2], r[3]
            ),
        );
        md.push_str(&format!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2}x | {:.2}x | {:.2}x |\n",
            v[0], v[1], v[2], v[3], v[4], v[5], r[0], r[1], r[2], r[3]
        ));
        let t = pct(&starts["true"], 50.0);
        w(
            &mut text,
            format!("(exec of /bin/true from this driver: p50 {t:.2} ms; p99 of {pods} ops is their maximum)"),
        );
        md.push_str(&format!(
            "\nVERSION is process start plus a trivial command; exec of /bin/true from the driver: p50 {t:.2} ms. p99 of {pods} ops is their maximum.\n"
        ));
    }
    w(&mut text, String::new());
    w(
        &mut text,
        "masquerade share, ms (p50 with ipMasq minus p50 without):".into(),
    );
    md.push_str(
        "\n| masquerade share (ms, p50 with ipMasq − without) | go | ours | chain | go/ours | go/chain |\n\
         |---|--:|--:|--:|--:|--:|\n",
    );
    for par in [1usize, 4] {
        for op in ["ADD", "DEL"] {
            let (g, o, c) = (
                share(op, par, GO),
                share(op, par, OURS),
                share(op, par, CHAIN),
            );
            let (ro, rc) = (share_ratio(op, par, OURS), share_ratio(op, par, CHAIN));
            w(
                &mut text,
                format!(
                    "  {op} x{par}:  go {g:>7.2}   ours {o:>6.2}   chain {c:>6.2}   go/ours {:>7}   go/chain {:>7}",
                    fmt_ratio(ro),
                    fmt_ratio(rc)
                ),
            );
            md.push_str(&format!(
                "| {op} x{par} | {g:.2} | {o:.2} | {c:.2} | {} | {} |\n",
                fmt_ratio(ro),
                fmt_ratio(rc)
            ));
        }
    }
    let kb = |k: &str| rss.get(k).copied().unwrap_or(0);
    let vs = |a: u64, b: u64, of: &str| format!("{:.2}x {of}", a as f64 / b as f64);
    let rss_rows: Vec<(&str, u64, String)> = vec![
        (
            "go bridge (with its host-local child)",
            kb(GO),
            String::new(),
        ),
        (
            "go host-local, run alone",
            kb("go-host-local"),
            String::new(),
        ),
        (
            "ours: cni-plugins as bridge (host-local in-process)",
            kb(OURS),
            vs(kb(OURS), kb(GO), "go bridge"),
        ),
        (
            "ours: cni-plugins as flannel (whole chain)",
            kb(CHAIN),
            vs(kb(CHAIN), kb(GO), "go bridge"),
        ),
        (
            "ours: cni-plugins as host-local, run alone",
            kb("ours-host-local"),
            vs(kb("ours-host-local"), kb("go-host-local"), "go host-local"),
        ),
    ];
    w(&mut text, String::new());
    w(
        &mut text,
        format!(
            "peak RSS per plugin process (max ru_maxrss of wait4 over {rss_pods} ADD + {rss_pods} DEL, \
             ipMasq off and on; floor: the launcher, {baseline_kb} kB with /bin/true; \
             ru_maxrss counts resident file pages too: the executable's text, libc):"
        ),
    );
    md.push_str(&format!(
        "\n| peak RSS per plugin process (ru_maxrss, incl. file pages; floor {baseline_kb} kB) | kB | ratio |\n|---|--:|--:|\n"
    ));
    for (what, v, ratio) in &rss_rows {
        w(&mut text, format!("  {what:<52} {v:>7} kB  {ratio}"));
        md.push_str(&format!("| {what} | {v} | {ratio} |\n"));
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let size_ratio = ours_size as f64 / (go_bridge_size + go_hl_size) as f64;
    w(&mut text, String::new());
    w(
        &mut text,
        format!(
            "binary sizes: go bridge {:.2} MiB + go host-local {:.2} MiB = {:.2} MiB (a Go flannel \
             would be a third file); ours: cni-plugins {:.2} MiB, one file for all three plugins \
             ({size_ratio:.2}x)",
            mib(go_bridge_size),
            mib(go_hl_size),
            mib(go_bridge_size + go_hl_size),
            mib(ours_size)
        ),
    );
    md.push_str(&format!(
        "\n| binary size | bytes |\n|---|--:|\n| go bridge | {go_bridge_size} |\n| go host-local | {go_hl_size} |\n\
         | ours: cni-plugins (flannel + bridge + host-local, one file) | {ours_size} ({size_ratio:.2}x go bridge + host-local) |\n"
    ));

    // ---- targets
    let ratio_of = |op: &str, masq: bool, l: &str| -> Vec<(String, f64)> {
        [1usize, 4]
            .iter()
            .map(|&par| {
                (
                    format!("x{par}"),
                    p(op, par, masq, l, 50.0) / p(op, par, masq, GO, 50.0),
                )
            })
            .collect()
    };
    let speedup = |op: &str, l: &str| -> Vec<(String, f64)> {
        [1usize, 4]
            .iter()
            .map(|&par| {
                (
                    format!("x{par}"),
                    p(op, par, true, GO, 50.0) / p(op, par, true, l, 50.0),
                )
            })
            .collect()
    };
    let del_ratio = |l: &str| -> Vec<(String, f64)> {
        scenarios()
            .into_iter()
            .filter(|s| s.0 == "DEL")
            .map(|(op, par, masq)| {
                (
                    format!("x{par}{}", if masq { " ipMasq" } else { "" }),
                    p(op, par, masq, l, 50.0) / p(op, par, masq, GO, 50.0),
                )
            })
            .collect()
    };
    let shares = |l: &str| -> Vec<(String, f64)> {
        [1usize, 4]
            .iter()
            .map(|&par| (format!("x{par}"), share_ratio("DEL", par, l)))
            .collect()
    };
    let third = 1.0 / 3.0 + 1e-9;
    let targets = vec![
        Target::new(
            "ours (bridge+host-local) ADD p50 <= 0.25x go",
            ratio_of("ADD", false, OURS),
            |v| v <= 0.25,
        ),
        Target::new(
            "ours-chain (flannel->bridge->host-local) ADD p50 <= 0.35x go bridge+host-local",
            ratio_of("ADD", false, CHAIN),
            |v| v <= 0.35,
        ),
        Target::new("ours DEL p50 <= go", del_ratio(OURS), |v| v <= 1.0),
        Target::new("ours-chain DEL p50 <= go", del_ratio(CHAIN), |v| v <= 1.0),
        Target::new(
            "ipMasq: ours ADD >= 10x faster than go (go/ours p50)",
            speedup("ADD", OURS),
            |v| v >= 10.0,
        ),
        Target::new(
            "ipMasq: ours-chain ADD >= 10x faster than go (go/chain p50)",
            speedup("ADD", CHAIN),
            |v| v >= 10.0,
        ),
        Target::new(
            "ipMasq: masquerade share of DEL >= 10x smaller, ours (go share / ours share)",
            shares(OURS),
            |v| v >= 10.0,
        ),
        Target::new(
            "ipMasq: masquerade share of DEL >= 10x smaller, ours-chain",
            shares(CHAIN),
            |v| v >= 10.0,
        ),
        Target::new(
            "peak RSS <= 1/3 of go",
            vec![
                ("bridge".into(), kb(OURS) as f64 / kb(GO) as f64),
                ("flannel chain".into(), kb(CHAIN) as f64 / kb(GO) as f64),
                (
                    "host-local".into(),
                    kb("ours-host-local") as f64 / kb("go-host-local") as f64,
                ),
            ],
            |v| v <= third,
        ),
    ];
    w(&mut text, String::new());
    w(&mut text, "targets:".into());
    md.push_str("\nTargets:\n\n");
    for t in &targets {
        w(&mut text, format!("  {}", t.line()));
        md.push_str(&format!("- {}\n", t.line()));
    }
    print!("{text}");

    // ---- files
    if let Some(path) = &opts.md {
        let head = format!(
            "Measured {started_at} on {machine}; {pods} pods per scenario; Go: \
             containernetworking-plugins {go_version}.\n\n"
        );
        write_file(path, format!("{head}{md}").as_bytes());
    }
    if let Some(path) = &opts.json {
        let scen: Vec<serde_json::Value> = scenarios()
            .into_iter()
            .map(|(op, par, masq)| {
                let mut results = serde_json::Map::new();
                for l in labels {
                    let v = &samples[&(op, par, masq, l)];
                    results.insert(
                        l.into(),
                        serde_json::json!({
                            "p50_ms": num(pct(v, 50.0)),
                            "p99_ms": num(pct(v, 99.0)),
                            "ratio_p50_to_go": num(p(op, par, masq, l, 50.0) / p(op, par, masq, GO, 50.0)),
                            "ratio_p99_to_go": num(p(op, par, masq, l, 99.0) / p(op, par, masq, GO, 99.0)),
                            "samples_ms": v.iter().map(|x| num(*x)).collect::<Vec<_>>(),
                        }),
                    );
                }
                serde_json::json!({"op": op, "parallel": par, "ip_masq": masq, "results": results})
            })
            .collect();
        let shares_json: Vec<serde_json::Value> = [1usize, 4]
            .iter()
            .flat_map(|&par| {
                ["ADD", "DEL"].map(|op| {
                    serde_json::json!({
                        "op": op, "parallel": par,
                        "go_ms": num(share(op, par, GO)),
                        "ours_ms": num(share(op, par, OURS)),
                        "ours_chain_ms": num(share(op, par, CHAIN)),
                        "go_over_ours": num(share_ratio(op, par, OURS)),
                        "go_over_ours_chain": num(share_ratio(op, par, CHAIN)),
                    })
                })
            })
            .collect();
        let doc = serde_json::json!({
            "started": started_at,
            "finished": finished_at,
            "machine": {
                "kernel": read_trim("/proc/sys/kernel/osrelease"),
                "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                "cpu": cpu_model(),
                "loadavg_start": load_start,
                "loadavg_end": load_end,
            },
            "go_package": format!("containernetworking-plugins {go_version}"),
            "pods": pods,
            "implementations": subjects.iter().map(|s| (s.label.to_string(), serde_json::json!(s.about))).collect::<serde_json::Map<_, _>>(),
            "scenarios": scen,
            "masquerade_share": shares_json,
            "process_start_ms": starts.iter().map(|(k, v)| (k.to_string(), serde_json::json!({
                "p50": num(pct(v, 50.0)),
                "p99": num(pct(v, 99.0)),
            }))).collect::<serde_json::Map<_, _>>(),

            "peak_rss_kb": {
                "launcher_floor": baseline_kb,
                "go_bridge": kb(GO),
                "go_host_local": kb("go-host-local"),
                "ours_bridge": kb(OURS),
                "ours_flannel_chain": kb(CHAIN),
                "ours_host_local": kb("ours-host-local"),
            },
            "binary_bytes": {
                "go_bridge": go_bridge_size,
                "go_host_local": go_hl_size,
                "ours_cni_plugins": ours_size,
            },
            "targets": targets.iter().map(|t| serde_json::json!({
                "target": t.what,
                "pass": t.pass,
                "values": t.values.iter().map(|(k, v)| (k.clone(), num(*v))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
        });
        let mut bytes = serde_json::to_vec_pretty(&doc).expect("json");
        bytes.push(b'\n');
        write_file(path, &bytes);
    }
    if let Some(path) = &opts.svg {
        let panels: Vec<Panel> = scenarios()
            .into_iter()
            .map(|(op, par, masq)| Panel {
                title: scenario_name(op, par, masq),
                series: labels
                    .iter()
                    .map(|l| (*l, samples[&(op, par, masq, *l)].clone()))
                    .collect(),
            })
            .collect();
        let subtitle = format!(
            "{started_at}; Linux {}, {} CPUs ({}); {pods} pods per scenario",
            read_trim("/proc/sys/kernel/osrelease"),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu_model()
        );
        write_file(path, svg_cdf(&panels, &subtitle).as_bytes());
    }
}

fn write_file(path: &Path, data: &[u8]) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).expect("mkdir output dir");
    }
    std::fs::write(path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    eprintln!("wrote {}", path.display());
}

/// One chart panel: a scenario's per-op latencies for each implementation.
struct Panel {
    title: String,
    series: Vec<(&'static str, Vec<f64>)>,
}

fn colour(label: &str) -> &'static str {
    match label {
        GO => "#6b6b6b",
        OURS => "#1f6fd1",
        _ => "#e8590c",
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Empirical CDFs of per-op latency, one panel per scenario (rows: ADD, ADD ipMasq, DEL,
/// DEL ipMasq; columns: sequential, 4 at once), a common log-scale x axis in ms.
fn svg_cdf(panels: &[Panel], subtitle: &str) -> String {
    let (cols, pw, ph) = (2usize, 400.0, 150.0);
    let (ml, mr, mt, mb) = (52.0, 18.0, 30.0, 40.0);
    let (cw, chh) = (ml + pw + mr, mt + ph + mb);
    let top = 78.0;
    let rows = panels.len().div_ceil(cols);
    let width = cw * cols as f64 + 10.0;
    let height = top + chh * rows as f64 + 10.0;
    let all: Vec<f64> = panels
        .iter()
        .flat_map(|p| p.series.iter().flat_map(|s| s.1.iter().copied()))
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .log10()
        .floor();
    let hi = all
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let mut s = String::new();
    s.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    ));
    s.push_str(&format!(
        "<text x=\"10\" y=\"20\" font-size=\"15\" font-weight=\"bold\">Per-op latency, \
         cumulative share of ops (x: ms, log scale): Go bridge + host-local vs ours</text>\n\
         <text x=\"10\" y=\"38\" fill=\"#444\">{}</text>\n",
        xml_escape(subtitle)
    ));
    let names = [
        (GO, "go: Go bridge + host-local"),
        (OURS, "ours: bridge + host-local (cni-plugins)"),
        (CHAIN, "ours-chain: flannel -> bridge -> host-local"),
    ];
    let mut lx = 10.0;
    for (l, text) in names {
        s.push_str(&format!(
            "<line x1=\"{lx}\" y1=\"58\" x2=\"{:.0}\" y2=\"58\" stroke=\"{}\" stroke-width=\"3\"/>\
             <text x=\"{:.0}\" y=\"62\">{}</text>\n",
            lx + 22.0,
            colour(l),
            lx + 27.0,
            xml_escape(text)
        ));
        lx += 36.0 + 6.2 * text.len() as f64;
    }
    for (i, panel) in panels.iter().enumerate() {
        let (col, row) = (i % cols, i / cols);
        let x0 = 5.0 + col as f64 * cw + ml;
        let y0 = top + row as f64 * chh + mt;
        let xs = |v: f64| x0 + (v.max(1e-9).log10() - lo) / (hi - lo) * pw;
        let ys = |f: f64| y0 + ph - f * ph;
        s.push_str(&format!(
            "<g>\n<text x=\"{x0}\" y=\"{:.1}\" font-weight=\"bold\">{}</text>\n\
             <rect x=\"{x0}\" y=\"{y0}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>\n",
            y0 - 8.0,
            xml_escape(&panel.title)
        ));
        // x grid: 1, 2, 5 per decade.
        let mut d = lo;
        while d < hi + 0.5 {
            for m in [1.0, 2.0, 5.0] {
                let v = m * 10f64.powf(d);
                let lv = v.log10();
                if lv < lo - 1e-9 || lv > hi + 1e-9 {
                    continue;
                }
                let x = xs(v);
                let major = m == 1.0;
                s.push_str(&format!(
                    "<line x1=\"{x:.1}\" y1=\"{y0}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{}\"/>\n\
                     <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">{}</text>\n",
                    y0 + ph,
                    if major { "#ccc" } else { "#eee" },
                    y0 + ph + 13.0,
                    trim_num(v)
                ));
            }
            d += 1.0;
        }
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">ms</text>\n",
            x0 + pw / 2.0,
            y0 + ph + 27.0
        ));
        for (f, text) in [(0.0, "0"), (0.5, "p50"), (0.99, "p99")] {
            let y = ys(f);
            if f > 0.0 {
                s.push_str(&format!(
                    "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\" \
                     stroke-dasharray=\"3,3\"/>\n",
                    x0 + pw
                ));
            }
            s.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#444\">{text}</text>\n",
                x0 - 4.0,
                y + 4.0
            ));
        }
        let mut medians = String::new();
        for (label, v) in &panel.series {
            let mut sorted = v.clone();
            sorted.sort_by(f64::total_cmp);
            if sorted.is_empty() {
                continue;
            }
            let n = sorted.len() as f64;
            let mut path = format!("M{:.1},{:.1}", xs(sorted[0]), ys(0.0));
            for (k, x) in sorted.iter().enumerate() {
                path.push_str(&format!(" H{:.1} V{:.1}", xs(*x), ys((k + 1) as f64 / n)));
            }
            s.push_str(&format!(
                "<path d=\"{path}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\"/>\n",
                colour(label)
            ));
            medians.push_str(&format!(
                "<tspan dx=\"7\" fill=\"{}\">{label} {:.2}</tspan>",
                colour(label),
                pct(v, 50.0)
            ));
        }
        // Medians on the title line, right-aligned.
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#444\">p50 ms:{medians}</text>\n",
            x0 + pw,
            y0 - 8.0
        ));
        s.push_str("</g>\n");
    }
    s.push_str("</svg>\n");
    s
}

fn trim_num(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let t = format!("{v:.3}");
        t.trim_end_matches('0').to_string()
    }
}
