//! Test harness: every test builds its own world (a throwaway "node" network namespace in
//! which the plugins run, pod namespaces, a temp dir for all state) and tears it down
//! through guards that also run when the test panics, so tests run in parallel and a
//! failed test leaves nothing behind in the machine's own namespace or state dirs.
//!
//! Namespaces are held by threads of the test process (`unshare(CLONE_NEWNET)` on a
//! dedicated thread, addressed as `/proc/<pid>/task/<tid>/ns/net`), never by `ip netns
//! add`: a test killed outright then takes its namespaces with it instead of leaving
//! entries under /run/netns.

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;

pub use serde_json::json;

/// A network namespace that lives as long as this value.
pub struct NetNs {
    path: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NetNs {
    /// A fresh namespace with `lo` up.
    pub fn new() -> NetNs {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let res = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map(|_| {
                format!(
                    "/proc/{}/task/{}/ns/net",
                    std::process::id(),
                    nix::unistd::gettid()
                )
            });
            let ok = res.is_ok();
            let _ = ready_tx.send(res);
            if ok {
                // Blocks until the owner drops the sender; the namespace dies with us.
                let _ = stop_rx.recv();
            }
        });
        let path = match ready_rx.recv() {
            Ok(Ok(p)) => p,
            other => {
                panic!("cannot create a network namespace (tests must run as root): {other:?}")
            }
        };
        let ns = NetNs {
            path,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        ns.sh("ip link set lo up");
        ns
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Runs `program args` inside this namespace and returns (status code, stdout, stderr).
    pub fn run(&self, program: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path))
            .arg("--")
            .arg(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run nsenter {program}: {e}"));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a shell snippet inside the namespace (test-controlled text only) and asserts
    /// success; returns stdout.
    pub fn sh(&self, script: &str) -> String {
        let (code, out, err) = self.run("sh", &["-c", script]);
        assert_eq!(code, 0, "in {}: `{script}` failed: {err}{out}", self.path);
        out
    }

    /// Like `sh` but returns the status instead of asserting.
    pub fn try_sh(&self, script: &str) -> (i32, String, String) {
        self.run("sh", &["-c", script])
    }

    /// Link names in this namespace.
    pub fn links(&self) -> Vec<String> {
        self.sh("ip -o link show")
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .collect()
    }
}

impl Default for NetNs {
    fn default() -> Self {
        NetNs::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Which implementation of a plugin to put in a CNI_PATH dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    Ours,
    /// Ours, but a private copy of the file: delegation to it cannot run in-process, so
    /// the exec path is what gets tested.
    OursCopy,
    /// Debian's containernetworking-plugins (Go reference, /usr/lib/cni).
    Go,
}

pub const GO_PLUGIN_DIR: &str = "/usr/lib/cni";

/// Where cargo put our binaries: next to the test executable's `deps` dir, or
/// `CNI_TEST_BIN_DIR`.
pub fn our_bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CNI_TEST_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Our plugin `name` as a runtime would find it. When the multi-call binary
/// (`cni-plugins`) is built, `name` is a symlink to it in `<bin dir>/plugins/` (so
/// delegation between our plugins runs in-process, as on an installed node); otherwise the
/// single-plugin binary.
pub fn our_binary(name: &str) -> PathBuf {
    let dir = our_bin_dir();
    let multi = dir.join("cni-plugins");
    let p = if multi.is_file() {
        let links = dir.join("plugins");
        let _ = std::fs::create_dir_all(&links);
        let link = links.join(name);
        if std::fs::read_link(&link)
            .map(|t| t != multi)
            .unwrap_or(true)
        {
            // Parallel test processes race here: build the link under a unique name and
            // rename it into place.
            let tmp = links.join(format!(".{name}.{}", unique("l")));
            let _ = std::os::unix::fs::symlink(&multi, &tmp);
            let _ = std::fs::rename(&tmp, &link);
        }
        link
    } else {
        dir.join(name)
    };
    assert!(
        p.is_file(),
        "{} is missing: build the plugins first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

pub fn go_available(name: &str) -> bool {
    Path::new(GO_PLUGIN_DIR).join(name).is_file()
}

static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// A short name unique across parallel tests and processes (fits IFNAMSIZ with a prefix).
pub fn unique(prefix: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{:x}", std::process::id() % 0xfff, n)
}

/// The answer of one plugin run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "plugin failed: stdout {} stderr {}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts a CNI error with `code` and returns its message.
    #[track_caller]
    pub fn err(&self, code: u64) -> String {
        assert_ne!(
            self.code, 0,
            "expected failure, got success: {}",
            self.stdout
        );
        let v = self.json();
        assert_eq!(
            v["code"].as_u64(),
            Some(code),
            "wrong error code: {}",
            self.stdout
        );
        let msg = v["msg"].as_str().unwrap_or_default().to_owned();
        assert!(!msg.is_empty(), "error without msg: {}", self.stdout);
        msg
    }
}

/// One test's world: a node namespace, a temp dir, and a CNI_PATH dir of chosen plugins.
pub struct World {
    pub node: NetNs,
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
}

impl World {
    /// A world whose CNI_PATH holds our three plugins.
    pub fn new() -> World {
        World::with_plugins(&[
            ("host-local", Impl::Ours),
            ("bridge", Impl::Ours),
            ("flannel", Impl::Ours),
        ])
    }

    pub fn with_plugins(plugins: &[(&str, Impl)]) -> World {
        let dir = tempfile::Builder::new()
            .prefix("cni-e2e-")
            .tempdir()
            .expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("mkdir bin");
        let w = World {
            node: NetNs::new(),
            dir,
            bin,
        };
        for (name, which) in plugins {
            w.install(name, *which);
        }
        w
    }

    /// Puts `name` into this world's CNI_PATH dir (replacing what was there).
    pub fn install(&self, name: &str, which: Impl) {
        let dst = self.bin.join(name);
        let _ = std::fs::remove_file(&dst);
        match which {
            Impl::Ours => {
                std::os::unix::fs::symlink(our_binary(name), &dst).expect("symlink plugin");
            }
            Impl::OursCopy => {
                std::fs::copy(our_binary(name), &dst).expect("copy plugin");
            }
            Impl::Go => {
                let src = Path::new(GO_PLUGIN_DIR).join(name);
                assert!(
                    src.is_file(),
                    "{} missing: apt-get install containernetworking-plugins",
                    src.display()
                );
                std::os::unix::fs::symlink(&src, &dst).expect("symlink plugin");
            }
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn path_str(&self, rel: &str) -> String {
        self.path(rel).to_string_lossy().into_owned()
    }

    /// Runs plugin `name` from the CNI_PATH dir in the node namespace, as a runtime does:
    /// a clean environment of CNI_* variables plus `extra`, the config on stdin.
    pub fn exec(&self, name: &str, env: &Env, stdin: &[u8]) -> Outcome {
        let child = self.spawn(name, env, stdin);
        let out = child.wait_with_output().expect("wait plugin");
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts plugin `name` like `exec` without waiting: the fault-injection tests kill it.
    /// The returned process is the plugin itself (nsenter execs it in place).
    pub fn spawn(&self, name: &str, env: &Env, stdin: &[u8]) -> std::process::Child {
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        vars.insert("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into());
        vars.insert("CNI_COMMAND".into(), env.command.clone());
        vars.insert("CNI_CONTAINERID".into(), env.container_id.clone());
        vars.insert("CNI_NETNS".into(), env.netns.clone());
        vars.insert("CNI_IFNAME".into(), env.ifname.clone());
        vars.insert("CNI_ARGS".into(), env.args.clone());
        vars.insert("CNI_PATH".into(), self.bin.to_string_lossy().into_owned());
        for (k, v) in &env.extra {
            vars.insert(k.clone(), v.clone());
        }
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.node.path()))
            .arg("--")
            .arg(self.bin.join(name))
            .env_clear()
            .envs(&vars)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot exec {name}: {e}"));
        let mut si = child.stdin.take().expect("stdin");
        // A writer thread: a hostile multi-MiB stdin must not block us while the plugin
        // stops reading early and answers.
        let data = stdin.to_vec();
        std::thread::spawn(move || {
            let _ = si.write_all(&data);
        });
        child
    }
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

/// The upstream cnitool (libcni 1.1.2): `CNITOOL`, else `target/cnitool` where
/// `scripts/test.sh` builds it.
pub fn cnitool_path() -> PathBuf {
    std::env::var_os("CNITOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| our_bin_dir().join("../cnitool"))
}

impl World {
    /// Runs `cnitool CMD NET POD` as a runtime would, inside the node namespace, with
    /// NETCONFPATH=`confdir` and this world's CNI_PATH. libcni keeps a result cache in
    /// /var/lib/cni/results; a private mount namespace with the world's `varlib` dir
    /// bound over /var/lib keeps that cache inside the world.
    pub fn cnitool(
        &self,
        confdir: &Path,
        cmd: &str,
        net: &str,
        pod: &NetNs,
    ) -> (i32, String, String) {
        let tool = cnitool_path();
        assert!(
            tool.is_file(),
            "cnitool missing at {}: scripts/test.sh builds it",
            tool.display()
        );
        let varlib = self.path("varlib");
        std::fs::create_dir_all(&varlib).expect("mkdir varlib");
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.node.path()))
            .args(["--", "unshare", "--mount", "--propagation", "private", "--"])
            .args([
                "sh",
                "-c",
                r#"mount --bind "$1" /var/lib && shift && exec "$@""#,
                "cnitool-sandbox",
            ])
            .arg(&varlib)
            .arg("env")
            .arg(format!("NETCONFPATH={}", confdir.display()))
            .arg(format!("CNI_PATH={}", self.bin.display()))
            .arg(&tool)
            .args([cmd, net, pod.path()])
            .output()
            .expect("run cnitool");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// The CNI_* parameters of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub extra: Vec<(String, String)>,
}

impl Env {
    pub fn new(command: &str, container_id: &str, netns: &str) -> Env {
        Env {
            command: command.into(),
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            ..Default::default()
        }
    }

    pub fn cmd(&self, command: &str) -> Env {
        Env {
            command: command.into(),
            ..self.clone()
        }
    }

    pub fn ifname(mut self, ifname: &str) -> Env {
        self.ifname = ifname.into();
        self
    }

    pub fn args(mut self, args: &str) -> Env {
        self.args = args.into();
        self
    }
}

/// Files under `dir` (recursively), as relative paths, sorted.
/// Polls `cond` every 20 ms for up to 5 s and panics naming `what` if it never holds.
/// For kernel work that is asynchronous by design: dropping the last reference to a
/// network namespace queues its teardown (`cleanup_net` on a workqueue), so the host end
/// of a pod's veth outlives the namespace for a moment.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "timed out: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The saved configs in flannel's `dataDir` (sorted). Anything else there must be a shared
/// copy (`.shared.*`) that one of them links to; a temp file or an unused copy fails.
pub fn saved_configs(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let all = list_files(dir);
    let (hidden, saved): (Vec<String>, Vec<String>) =
        all.into_iter().partition(|f| f.starts_with('.'));
    let inode = |f: &str| std::fs::symlink_metadata(dir.join(f)).map(|m| m.ino()).ok();
    let linked: Vec<Option<u64>> = saved.iter().map(|f| inode(f)).collect();
    for f in &hidden {
        assert!(
            f.starts_with(".shared.") && linked.contains(&inode(f)),
            "{f} in {dir:?} is neither a saved config nor a copy one of {saved:?} links to"
        );
    }
    saved
}

pub fn list_files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            // Never through a symlink: tests plant links to /etc on purpose.
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(base, &p, out);
            } else if let Ok(rel) = p.strip_prefix(base) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
