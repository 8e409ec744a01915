//! bridge's `vlan`, `vlanTrunk` and `preserveDefaultVlan` tested by effect. The machines
//! this project runs on (and its CI) have a kernel without bridge VLAN filtering and
//! without 802.1Q, so `scripts/vm/run-kernel-test.sh` boots Debian 12's stock kernel in a
//! throwaway QEMU VM (KVM where it works, else TCG) and runs our built multi-call binary
//! there through `scripts/vm/vlan-cases.sh`: pods on access VLANs ping within their VLAN
//! and not across, a trunk pod's 802.1Q subinterfaces reach only the trunk's VLANs, a port
//! that preserved VLAN 1 hears VLAN 1 and one that did not stays deaf to it, and DEL, twice,
//! leaves no veth and no reservation. Nothing touches the host's network or CNI dirs: the
//! kernel package is downloaded (not installed) into `<target>/vm` and reused, and the
//! script's temp dir is removed when it exits.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longer than the script's own bounds (a cold kernel download, a KVM attempt of 60 s and
/// a TCG run of 300 s); only a wedged download gets here.
const HARD_LIMIT: Duration = Duration::from_secs(20 * 60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace root")
        .to_path_buf()
}

#[test]
fn vlan_options_work_by_effect_under_a_vlan_capable_kernel() {
    // The guest installs this one file as both `bridge` and `host-local`, as install.sh
    // does on a node: it must be the multi-call binary, not the bridge-only one.
    let plugin = std::fs::canonicalize(e2e::our_binary("bridge")).expect("resolve plugin");
    assert_eq!(
        plugin.file_name().and_then(|n| n.to_str()),
        Some("cni-plugins"),
        "{} is not the multi-call binary: cargo build --workspace --bins",
        plugin.display()
    );
    let cache = e2e::our_bin_dir()
        .parent()
        .expect("the bin dir lives in the target dir")
        .join("vm");
    let script = repo_root().join("scripts/vm/run-kernel-test.sh");

    // setpriv: a test run interrupted or killed takes the script (whose trap stops qemu)
    // with it, although the script lives in a process group of its own.
    let mut child = Command::new("setpriv")
        .args(["--pdeathsig", "TERM", "--"])
        .arg(&script)
        .arg("--cache")
        .arg(&cache)
        .arg(&plugin)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: on the hard limit, timeout and qemu go with the script.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the VM script") {
            break Some(status);
        }
        if start.elapsed() > HARD_LIMIT {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    // The script prints the whole guest console, then its summary.
    let summary: Vec<&str> = stdout
        .lines()
        .skip_while(|l| *l != "---- summary ----")
        .skip(1)
        .collect();
    println!("{}", summary.join("\n"));
    let ok = status.is_some_and(|s| s.success());
    assert!(
        ok,
        "the VM test failed (status {status:?}, {:?}):\n--- script stderr ---\n{stderr}\n--- script stdout (guest console) ---\n{stdout}",
        start.elapsed()
    );
    // The cases that must have run, so that a guest script that silently skips one fails.
    for case in [
        "vlan",
        "vlanTrunk",
        "preserveDefaultVlan",
        "vlan-gateway",
        "del-twice",
    ] {
        assert!(
            summary.iter().any(|l| *l == format!("VMTEST ok {case}")),
            "case {case} did not report ok:\n{stdout}"
        );
    }
}
