//! Benchmark driver: runs the same workload through the Go reference plugins and ours in
//! one run and prints per-op latency medians, p99, throughput and the ratios. Not a test:
//! `scripts/bench-*.sh` build release binaries and call it.
//!
//! Usage: cni-bench host-local [--ops N] [--scale N]

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
        _ => {
            eprintln!("usage: cni-bench host-local [--ops N] [--scale N]");
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
