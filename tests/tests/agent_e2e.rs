//! The overlay agent (`flanneld`, agent/) end to end, in a lab this test builds: a
//! switch namespace with bridge `br0` (10.250.0.254/24), node namespaces each wired to
//! it by a veth (`eth0`, 10.250.0.N/24, default route via the switch), one agent per
//! node, pods added through our flannel → bridge → host-local chain in each node.
//! Stores: the embedded one in the lab's temp dir, or an etcd (Debian's etcd-server)
//! the test starts inside the switch namespace. Every address is inside these
//! namespaces; every file is in temp dirs; every process is killed on drop.

use e2e::{json, Env, NetNs, World};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SWITCH_IP: &str = "10.250.0.254";
// Our agents lease from 10.244.1.0–10.244.63.0 only (flanneld's SubnetMin/SubnetMax), so
// the leases tests write by hand for foreign nodes (10.244.77.0/24 and up) can never
// collide with a subnet an agent picked at random.
const VXLAN_CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.63.0","Backend":{"Type":"vxlan"}}"#;
const HOSTGW_CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.63.0","Backend":{"Type":"host-gw"}}"#;
const ETCD_URL: &str = "http://10.250.0.254:2379";

/// The agent binary: `FLANNELD_BIN` (the benchmark points it at a release build),
/// else the one cargo built next to the plugins.
fn flanneld() -> PathBuf {
    let p = std::env::var_os("FLANNELD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| e2e::our_bin_dir().join("flanneld"));
    assert!(
        p.is_file(),
        "{} missing: cargo build --workspace --bins",
        p.display()
    );
    p
}

/// A process started inside a namespace; SIGTERM (then SIGKILL) on drop.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(ns: &NetNs, program: &Path, args: &[String], log: PathBuf) -> Daemon {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log");
        let err = out.try_clone().expect("dup log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        Daemon {
            child: Some(child),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGTERM, up to 10 s to exit, then SIGKILL. Returns the exit code if it exited
    /// by itself.
    fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Node {
    w: World,
    ip: String,
    agent: Option<Daemon>,
}

enum StoreKind {
    File(PathBuf),
    Etcd,
}

/// The switch, the nodes, the store.
struct Lab {
    // Field order is drop order: agents before etcd before namespaces.
    nodes: Vec<Node>,
    etcd: Option<Daemon>,
    store: StoreKind,
    switch: NetNs,
    dir: tempfile::TempDir,
}

fn tid_of(ns: &NetNs) -> String {
    // /proc/<pid>/task/<tid>/ns/net: ip(8) takes the thread id as a "pid".
    ns.path()
        .split('/')
        .nth(4)
        .expect("thread namespace path")
        .to_owned()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    start.elapsed()
}

impl Lab {
    fn new(nodes: usize) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("agent-e2e-")
            .tempdir()
            .expect("tempdir");
        let switch = NetNs::new();
        switch.sh(&format!(
            "ip link add br0 type bridge && ip addr add {SWITCH_IP}/24 dev br0 && ip link set br0 up"
        ));
        let mut lab = Lab {
            nodes: Vec::new(),
            etcd: None,
            store: StoreKind::File(dir.path().join("store")),
            switch,
            dir,
        };
        for i in 1..=nodes {
            lab.add_node(i);
        }
        lab
    }

    fn add_node(&mut self, i: usize) {
        let w = World::new();
        let ip = format!("10.250.0.{i}");
        self.switch.sh(&format!(
            "ip link add v{i} type veth peer name eth0 netns {} && ip link set v{i} master br0 up",
            tid_of(&w.node)
        ));
        w.node.sh(&format!(
            "ip addr add {ip}/24 dev eth0 && ip link set eth0 up && ip route add default via {SWITCH_IP} && sysctl -qw net.ipv4.ip_forward=1"
        ));
        self.nodes.push(Node { w, ip, agent: None });
    }

    fn store_dir(&self) -> PathBuf {
        match &self.store {
            StoreKind::File(d) => d.clone(),
            StoreKind::Etcd => panic!("not an embedded store"),
        }
    }

    /// Embedded store with `config`.
    fn file_store(&self, config: &str) {
        let d = self.store_dir();
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config"), config).unwrap();
    }

    /// Starts etcd in the switch namespace and stores `config` at flanneld's key.
    fn etcd_store(&mut self, config: &str) {
        assert!(
            Path::new("/usr/bin/etcd").is_file(),
            "etcd missing: apt-get install etcd-server"
        );
        let data = self.dir.path().join("etcd");
        let args: Vec<String> = [
            "--name=lab",
            &format!("--data-dir={}", data.display()),
            &format!("--listen-client-urls={ETCD_URL}"),
            &format!("--advertise-client-urls={ETCD_URL}"),
            "--listen-peer-urls=http://127.0.0.1:12380",
            "--initial-advertise-peer-urls=http://127.0.0.1:12380",
            "--initial-cluster=lab=http://127.0.0.1:12380",
            "--log-level=warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.etcd = Some(Daemon::start(
            &self.switch,
            Path::new("/usr/bin/etcd"),
            &args,
            self.dir.path().join("etcd.log"),
        ));
        self.store = StoreKind::Etcd;
        wait_for("etcd to answer", Duration::from_secs(20), || {
            self.etcdctl(&["endpoint", "health"]).0 == 0
        });
        let (code, _, err) = self.etcdctl(&["put", "/coreos.com/network/config", config]);
        assert_eq!(code, 0, "{err}");
    }

    fn restart_etcd(&mut self) {
        if let Some(mut e) = self.etcd.take() {
            e.stop();
        }
        let data = self.dir.path().join("etcd");
        let args: Vec<String> = [
            "--name=lab",
            &format!("--data-dir={}", data.display()),
            &format!("--listen-client-urls={ETCD_URL}"),
            &format!("--advertise-client-urls={ETCD_URL}"),
            "--listen-peer-urls=http://127.0.0.1:12380",
            "--initial-advertise-peer-urls=http://127.0.0.1:12380",
            "--initial-cluster=lab=http://127.0.0.1:12380",
            "--log-level=warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.etcd = Some(Daemon::start(
            &self.switch,
            Path::new("/usr/bin/etcd"),
            &args,
            self.dir.path().join("etcd.log"),
        ));
        wait_for("etcd to answer again", Duration::from_secs(20), || {
            self.etcdctl(&["endpoint", "health"]).0 == 0
        });
    }

    fn etcdctl(&self, args: &[&str]) -> (i32, String, String) {
        let mut full = vec![
            "ETCDCTL_API=3",
            "etcdctl",
            "--endpoints",
            ETCD_URL,
            "--dial-timeout=2s",
        ];
        full.extend_from_slice(args);
        self.switch.run("env", &full)
    }

    fn etcdctl_stdin(&self, args: &[&str], stdin: &str) -> String {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.switch.path()))
            .args([
                "--",
                "env",
                "ETCDCTL_API=3",
                "etcdctl",
                "--endpoints",
                ETCD_URL,
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("etcdctl");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn subnet_file(&self, i: usize) -> PathBuf {
        self.nodes[i].w.path("run/flannel/subnet.env")
    }

    fn start_agent(&mut self, i: usize, extra: &[&str]) {
        let n = &self.nodes[i];
        let mut args = vec![
            format!("--subnet-file={}", self.subnet_file(i).display()),
            format!("--vtep-mac-file={}", n.w.path("vtep.mac").display()),
            "--ip-masq".into(),
            "--reconcile-interval=1".into(),
            "--iptables-resync=1".into(),
            "-v=1".into(),
        ];
        match &self.store {
            StoreKind::File(d) => args.push(format!("--store-dir={}", d.display())),
            StoreKind::Etcd => args.push(format!("--etcd-endpoints={ETCD_URL}")),
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = n.w.path("flanneld.log");
        self.nodes[i].agent = Some(Daemon::start(&n.w.node, &flanneld(), &args, log));
    }

    fn stop_agent(&mut self, i: usize) -> Option<i32> {
        self.nodes[i].agent.take().and_then(|mut d| d.stop())
    }

    fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].w.path("flanneld.log")).unwrap_or_default()
    }

    /// FLANNEL_SUBNET once the agent wrote subnet.env, e.g. "10.244.7.1/24".
    fn wait_subnet(&self, i: usize) -> String {
        let path = self.subnet_file(i);
        let mut subnet = String::new();
        let ok = Instant::now() + Duration::from_secs(30);
        while Instant::now() < ok {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Some(s) = text.lines().find_map(|l| l.strip_prefix("FLANNEL_SUBNET=")) {
                    subnet = s.to_owned();
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        assert!(
            !subnet.is_empty(),
            "node {i} wrote no subnet.env; log:\n{}",
            self.agent_log(i)
        );
        subnet
    }

    /// Adds a pod to node `i` through our flannel chain; returns (namespace, IP).
    fn add_pod(&self, i: usize, cid: &str) -> (NetNs, String) {
        let w = &self.nodes[i].w;
        let pod = NetNs::new();
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": self.subnet_file(i).to_string_lossy(),
            "dataDir": w.path_str("flannel"),
            "ipam": {"dataDir": w.path_str("networks")},
            "delegate": {"hairpinMode": true, "isDefaultGateway": true},
        })
        .to_string();
        let out = w.exec(
            "flannel",
            &Env::new("ADD", cid, pod.path()),
            conf.as_bytes(),
        );
        out.ok();
        let ip = out.json()["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .expect("pod address")
            .to_owned();
        (pod, ip)
    }

    fn routes(&self, i: usize) -> String {
        self.nodes[i].w.node.sh("ip -4 route show")
    }
}

/// "10.244.7.1/24" → ("10.244.7.0", "10.244.7.0/24", "10.244.7.0-24").
fn subnet_parts(flannel_subnet: &str) -> (String, String, String) {
    let (addr, len) = flannel_subnet.split_once('/').expect("cidr");
    let mut octets: Vec<&str> = addr.split('.').collect();
    octets[3] = "0";
    let base = octets.join(".");
    (
        base.clone(),
        format!("{base}/{len}"),
        format!("{base}-{len}"),
    )
}

fn ping(from: &NetNs, ip: &str) -> bool {
    (0..5).any(|_| from.try_sh(&format!("ping -c 1 -W 1 {ip}")).0 == 0)
}

#[track_caller]
fn assert_ping(from: &NetNs, ip: &str, what: &str) {
    assert!(ping(from, ip), "{what}: no answer from {ip}");
}

fn vtep_mac(node: &NetNs) -> String {
    let out = node.sh("ip -o link show flannel.1");
    out.split("link/ether ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("mac")
        .to_owned()
}

#[test]
fn vxlan_three_nodes_embedded_store() {
    let mut lab = Lab::new(3);
    lab.file_store(VXLAN_CONFIG);
    for i in 0..3 {
        lab.start_agent(i, &[]);
    }
    let subnets: Vec<String> = (0..3).map(|i| lab.wait_subnet(i)).collect();
    assert!(
        subnets[0] != subnets[1] && subnets[1] != subnets[2] && subnets[0] != subnets[2],
        "{subnets:?}"
    );
    for (i, s) in subnets.iter().enumerate() {
        let env = std::fs::read_to_string(lab.subnet_file(i)).unwrap();
        assert_eq!(
            env,
            format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={s}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
        );
    }
    // The device, as flanneld makes it.
    let n0 = &lab.nodes[0].w.node;
    let dev = n0.sh("ip -d -o link show flannel.1");
    for want in [
        "mtu 1450",
        "vxlan id 1",
        "local 10.250.0.1",
        "dev eth0",
        "dstport 8472",
        "nolearning",
        "UP",
    ] {
        assert!(dev.contains(want), "{want} missing in {dev}");
    }
    let (base0, _, _) = subnet_parts(&subnets[0]);
    assert!(n0
        .sh("ip -o -4 addr show flannel.1")
        .contains(&format!("inet {base0}/32")));

    // Every node routes to the other two.
    for i in 0..3 {
        wait_for(&format!("node {i} routes"), Duration::from_secs(15), || {
            let r = lab.routes(i);
            (0..3).filter(|j| *j != i).all(|j| {
                let (base, net, _) = subnet_parts(&subnets[j]);
                r.contains(&format!("{net} via {base} dev flannel.1 onlink"))
            })
        });
    }
    let (base2, net2, key2) = subnet_parts(&subnets[2]);
    let mac2 = vtep_mac(&lab.nodes[2].w.node);
    assert!(n0
        .sh("ip neigh show dev flannel.1")
        .contains(&format!("{base2} lladdr {mac2} PERMANENT")));
    assert!(n0
        .sh("bridge fdb show dev flannel.1")
        .contains(&format!("{mac2} dst 10.250.0.3 self permanent")));

    // Pods on each node reach each other across nodes.
    let (pa, ip_a) = lab.add_pod(0, "pod-a");
    let (pb, ip_b) = lab.add_pod(1, "pod-b");
    let (pc, ip_c) = lab.add_pod(2, "pod-c");
    assert_ping(&pa, &ip_b, "A -> B over vxlan");
    assert_ping(&pa, &ip_c, "A -> C over vxlan");
    assert_ping(&pb, &ip_c, "B -> C over vxlan");
    assert_ping(&pc, &ip_a, "C -> A over vxlan");
    // Masquerade and forward rules are in place.
    let rules = n0.sh("nft list table ip flannel-ipv4");
    assert!(
        rules.contains("masquerade") && rules.contains("ip saddr 10.244.0.0/16 accept"),
        "{rules}"
    );

    // --ip-masq: the switch has no route to pods, so its answer proves the source
    // was masqueraded to the node's address.
    assert_ping(
        &pa,
        SWITCH_IP,
        "pod -> outside the cluster network (masqueraded)",
    );
    // Rules are kept in sync: a flushed chain comes back.
    n0.sh("nft flush chain ip flannel-ipv4 postrtg");
    wait_for(
        "masquerade rules to be restored",
        Duration::from_secs(10),
        || {
            n0.sh("nft list chain ip flannel-ipv4 postrtg")
                .contains("masquerade")
        },
    );

    // C goes away and its lease is removed: A and B forget it entirely.
    assert_eq!(lab.stop_agent(2), Some(0), "clean exit on SIGTERM");
    store_cmd(&lab, &["delete", &key2], "");
    for i in 0..2 {
        wait_for(
            &format!("node {i} to drop C"),
            Duration::from_secs(10),
            || {
                let n = &lab.nodes[i].w.node;
                !lab.routes(i).contains(&net2)
                    && !n.sh("ip neigh show dev flannel.1").contains(&base2)
                    && !n.sh("bridge fdb show dev flannel.1").contains(&mac2)
            },
        );
    }
    assert_ping(&pa, &ip_b, "A -> B still");
    assert!(!ping(&pa, &ip_c), "C is unreachable once its lease is gone");
}

fn store_cmd(lab: &Lab, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(flanneld())
        .arg("store")
        .arg(format!("--store-dir={}", lab.store_dir().display()))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flanneld store");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "flanneld store {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn host_gw_three_nodes_and_unreachable_peer() {
    let mut lab = Lab::new(3);
    lab.file_store(HOSTGW_CONFIG);
    for i in 0..3 {
        lab.start_agent(i, &["--iface=eth0"]);
    }
    let subnets: Vec<String> = (0..3).map(|i| lab.wait_subnet(i)).collect();
    let env = std::fs::read_to_string(lab.subnet_file(0)).unwrap();
    assert!(
        env.contains("FLANNEL_MTU=1500\n"),
        "host-gw keeps the underlay MTU: {env}"
    );
    for i in 0..3 {
        wait_for(
            &format!("node {i} host-gw routes"),
            Duration::from_secs(15),
            || {
                let r = lab.routes(i);
                (0..3).filter(|j| *j != i).all(|j| {
                    let (_, net, _) = subnet_parts(&subnets[j]);
                    r.contains(&format!("{net} via 10.250.0.{} dev eth0", j + 1))
                })
            },
        );
    }
    assert!(!lab.nodes[0]
        .w
        .node
        .links()
        .iter()
        .any(|l| l.starts_with("flannel")));
    let (pa, ip_a) = lab.add_pod(0, "pod-a");
    let (pb, ip_b) = lab.add_pod(1, "pod-b");
    let (_pc, ip_c) = lab.add_pod(2, "pod-c");
    assert_ping(&pa, &ip_b, "A -> B over host-gw");
    assert_ping(&pa, &ip_c, "A -> C over host-gw");
    assert_ping(&pb, &ip_a, "B -> A over host-gw");

    // A peer behind a router: a clear error, no route.
    store_cmd(
        &lab,
        &["put", "--ttl=600"],
        r#"10.244.250.0-24 {"PublicIP":"192.0.2.77","PublicIPv6":null,"BackendType":"host-gw"}"#,
    );
    wait_for(
        "the unreachable-peer error",
        Duration::from_secs(10),
        || {
            lab.agent_log(0)
                .contains("192.0.2.77 is not directly reachable from eth0")
        },
    );
    assert!(!lab.routes(0).contains("10.244.250.0/24"));
    assert_ping(&pa, &ip_b, "others unaffected");
}

/// Pings from `pod` to `ip` every 50 ms for `count` packets, in the background.
fn background_ping(pod: &NetNs, ip: &str, count: u32) -> Child {
    Command::new("nsenter")
        .arg(format!("--net={}", pod.path()))
        .args([
            "--",
            "ping",
            "-i",
            "0.05",
            "-W",
            "1",
            "-c",
            &count.to_string(),
            ip,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ping")
}

fn received(out: &std::process::Output) -> (u32, u32) {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_default();
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    (
        nums.first().copied().unwrap_or(0),
        nums.get(1).copied().unwrap_or(0),
    )
}

#[test]
fn restart_keeps_subnet_mac_and_traffic_and_reconciles_stale_entries() {
    let mut lab = Lab::new(2);
    lab.file_store(VXLAN_CONFIG);
    lab.start_agent(0, &["--healthz-port=10999"]);
    lab.start_agent(1, &[]);
    let s0 = lab.wait_subnet(0);
    let s1 = lab.wait_subnet(1);
    let (_, net1, _) = subnet_parts(&s1);
    wait_for("A's route to B", Duration::from_secs(15), || {
        lab.routes(0).contains(&net1)
    });
    let health = |path: &str| {
        lab.nodes[0]
            .w
            .node
            .run(
                "bash",
                &[
                    "-c",
                    &format!("exec 3<>/dev/tcp/127.0.0.1/10999 && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && head -1 <&3"),
                ],
            )
            .1
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(health("/healthz"), "200");
    assert_eq!(health("/readyz"), "200");
    let (pa, _) = lab.add_pod(0, "pod-a");
    let (_pb, ip_b) = lab.add_pod(1, "pod-b");
    assert_ping(&pa, &ip_b, "before restart");
    let mac_before = vtep_mac(&lab.nodes[0].w.node);
    let device_before = lab.nodes[0]
        .w
        .node
        .sh("ip -o link show flannel.1")
        .split(':')
        .next()
        .unwrap_or("")
        .to_owned();

    // 100 pings over ~5 s while the agent is stopped and restarted.
    let pinger = background_ping(&pa, &ip_b, 100);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        lab.stop_agent(0),
        Some(0),
        "clean exit on SIGTERM:\n{}",
        lab.agent_log(0)
    );
    // While it is down: a peer that vanished meanwhile left entries behind.
    let node0 = &lab.nodes[0].w.node;
    node0.sh("ip neigh replace 10.244.222.0 lladdr 0a:de:ad:00:00:01 dev flannel.1 nud permanent");
    node0.sh("bridge fdb replace 0a:de:ad:00:00:01 dev flannel.1 dst 10.250.0.99 self permanent");
    node0.sh("ip route replace 10.244.222.0/24 via 10.244.222.0 dev flannel.1 onlink");
    std::thread::sleep(Duration::from_millis(500));
    lab.start_agent(0, &["--healthz-port=10999"]);
    assert_eq!(lab.wait_subnet(0), s0, "same subnet after restart");
    let out = pinger.wait_with_output().expect("ping");
    let (sent, got) = received(&out);
    eprintln!("agent restart: {} of {sent} pings lost", sent - got);
    assert!(
        sent >= 90 && sent - got <= 2,
        "lost {} of {sent} pings across the restart",
        sent - got
    );
    assert_eq!(
        vtep_mac(&lab.nodes[0].w.node),
        mac_before,
        "device adopted, MAC kept"
    );
    let device_after = lab.nodes[0]
        .w
        .node
        .sh("ip -o link show flannel.1")
        .split(':')
        .next()
        .unwrap_or("")
        .to_owned();
    assert_eq!(device_before, device_after, "device not recreated");
    let node0 = &lab.nodes[0].w.node;
    wait_for(
        "stale entries to be reconciled away",
        Duration::from_secs(10),
        || {
            !lab.routes(0).contains("10.244.222.0")
                && !node0
                    .sh("ip neigh show dev flannel.1")
                    .contains("10.244.222.0")
                && !node0
                    .sh("bridge fdb show dev flannel.1")
                    .contains("0a:de:ad:00:00:01")
        },
    );
    assert!(
        lab.routes(0).contains(&net1),
        "the live peer's route was kept"
    );

    // A reboot loses the device: it comes back with the same MAC (persisted).
    assert_eq!(lab.stop_agent(0), Some(0));
    lab.nodes[0].w.node.sh("ip link del flannel.1");
    lab.start_agent(0, &[]);
    assert_eq!(lab.wait_subnet(0), s0);
    wait_for("flannel.1 recreated", Duration::from_secs(10), || {
        lab.nodes[0].w.node.links().iter().any(|l| l == "flannel.1")
    });
    assert_eq!(
        vtep_mac(&lab.nodes[0].w.node),
        mac_before,
        "MAC persisted across device loss"
    );
    wait_for("A's route back", Duration::from_secs(10), || {
        lab.routes(0).contains(&net1)
    });
    assert_ping(&pa, &ip_b, "after device recreation");
}

#[test]
fn lease_is_renewed_and_a_lost_lease_is_reacquired() {
    let mut lab = Lab::new(2);
    lab.file_store(VXLAN_CONFIG);
    lab.start_agent(0, &["--subnet-lease-ttl=3"]);
    lab.start_agent(1, &[]);
    let s0 = lab.wait_subnet(0);
    let (_, net0, key0) = subnet_parts(&s0);
    wait_for("B's route to A", Duration::from_secs(15), || {
        lab.routes(1).contains(&net0)
    });
    // Three TTLs later the lease is still there: renewed, never expired.
    let expiry = || -> u64 {
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(lab.store_dir().join("leases.json")).unwrap(),
        )
        .unwrap();
        state["leases"][&key0]["expires_ms"].as_u64().unwrap_or(0)
    };
    let first = expiry();
    std::thread::sleep(Duration::from_secs(9));
    assert!(store_cmd(&lab, &["list"], "").contains(&key0));
    assert!(expiry() > first + 3000, "expiry moved forward");
    assert!(
        !lab.agent_log(1).contains(&format!("peer removed: {key0}")),
        "peers never saw it expire"
    );

    // The key is deleted under the agent: it recreates the same key.
    store_cmd(&lab, &["delete", &key0], "");
    wait_for("A to re-acquire its key", Duration::from_secs(10), || {
        store_cmd(&lab, &["list"], "").contains(&key0)
    });
    assert_eq!(lab.wait_subnet(0), s0);
    wait_for("B's route to A again", Duration::from_secs(10), || {
        lab.routes(1).contains(&net0)
    });
    assert!(
        lab.agent_log(0).contains("re-acquired lease"),
        "{}",
        lab.agent_log(0)
    );
}

/// A node configured exactly as real flanneld would configure it, from its lease.
fn emulate_flanneld_node(
    node: &NetNs,
    own_base: &str,
    mac: &str,
    peers: &[(String, String, String)],
) {
    node.sh(&format!(
        "ip link add flannel.1 address {mac} mtu 1450 type vxlan id 1 local 10.250.0.3 dev eth0 dstport 8472 nolearning && \
         ip addr add {own_base}/32 dev flannel.1 && ip link set flannel.1 up"
    ));
    for (net, base, (peer_mac, peer_ip)) in peers.iter().map(|(n, m, ip)| {
        let (b, net, _) = subnet_parts(n);
        (net, b, (m.clone(), ip.clone()))
    }) {
        node.sh(&format!(
            "ip neigh replace {base} lladdr {peer_mac} dev flannel.1 nud permanent && \
             bridge fdb replace {peer_mac} dev flannel.1 dst {peer_ip} self permanent && \
             ip route replace {net} via {base} dev flannel.1 onlink"
        ));
    }
}

#[test]
fn etcd_store_two_agents_and_flanneld_interop() {
    let mut lab = Lab::new(3);
    lab.etcd_store(VXLAN_CONFIG);
    lab.start_agent(0, &[]);
    lab.start_agent(1, &[]);
    let s0 = lab.wait_subnet(0);
    let s1 = lab.wait_subnet(1);
    let (_, net0, key0) = subnet_parts(&s0);
    let (_, net1, _) = subnet_parts(&s1);
    wait_for("routes both ways", Duration::from_secs(15), || {
        lab.routes(0).contains(&net1) && lab.routes(1).contains(&net0)
    });
    let (pa, _ip_a) = lab.add_pod(0, "pod-a");
    let (_pb, ip_b) = lab.add_pod(1, "pod-b");
    assert_ping(&pa, &ip_b, "A -> B with the etcd store");

    // Our leases read back in flanneld's format, bound to an etcd lease.
    let (code, listing, err) = lab.etcdctl(&["get", "--prefix", "/coreos.com/network/subnets/"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 4, "{listing}");
    let mac0 = vtep_mac(&lab.nodes[0].w.node);
    let value0 = lines
        .chunks(2)
        .find(|kv| kv[0] == format!("/coreos.com/network/subnets/{key0}"))
        .map(|kv| kv[1].to_owned())
        .expect("our key");
    assert_eq!(
        value0,
        format!(
            r#"{{"PublicIP":"10.250.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac0}"}}}}"#
        )
    );
    let (_, json_listing, _) = lab.etcdctl(&[
        "get",
        &format!("/coreos.com/network/subnets/{key0}"),
        "-w",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json_listing).expect("etcdctl json");
    assert_ne!(
        v["kvs"][0]["lease"].as_i64().unwrap_or(0),
        0,
        "lease-bound key: {json_listing}"
    );

    // Node C runs "real flanneld": its lease is written the way flanneld writes it
    // (24 h etcd lease, value JSON from the reference), its kernel state by hand.
    let c_mac = "3e:41:9c:07:d2:10";
    let c_key = "10.244.77.0-24";
    let c_value = r#"{"PublicIP":"10.250.0.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3e:41:9c:07:d2:10"}}"#;
    let (_, grant, _) = lab.etcdctl(&["lease", "grant", "86400"]);
    let lease_id = grant
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_owned();
    let (code, _, err) = lab.etcdctl(&[
        "put",
        &format!("/coreos.com/network/subnets/{c_key}"),
        c_value,
        &format!("--lease={lease_id}"),
    ]);
    assert_eq!(code, 0, "{err}");
    let mac1 = vtep_mac(&lab.nodes[1].w.node);
    emulate_flanneld_node(
        &lab.nodes[2].w.node,
        "10.244.77.0",
        c_mac,
        &[
            (s0.clone(), mac0.clone(), "10.250.0.1".into()),
            (s1.clone(), mac1, "10.250.0.2".into()),
        ],
    );
    wait_for(
        "A to route to the flanneld node",
        Duration::from_secs(10),
        || {
            lab.routes(0)
                .contains("10.244.77.0/24 via 10.244.77.0 dev flannel.1 onlink")
        },
    );
    assert!(lab.nodes[0]
        .w
        .node
        .sh("bridge fdb show dev flannel.1")
        .contains(&format!("{c_mac} dst 10.250.0.3")));
    assert_ping(
        &pa,
        "10.244.77.0",
        "pod on our node -> flanneld node's vxlan address",
    );

    // flanneld's node goes away (its key expires or is deleted): routes follow.
    let (code, _, _) = lab.etcdctl(&["del", &format!("/coreos.com/network/subnets/{c_key}")]);
    assert_eq!(code, 0);
    wait_for(
        "A to drop the flanneld node",
        Duration::from_secs(10),
        || !lab.routes(0).contains("10.244.77.0"),
    );

    // etcd restarts and history is compacted while a new lease appears: the agents
    // reconnect (re-listing if needed) and pick it up.
    lab.restart_etcd();
    let (_, grant, _) = lab.etcdctl(&["lease", "grant", "600"]);
    let id = grant
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_owned();
    lab.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.244.88.0-24",
        &c_value.replace("3e:41:9c:07:d2:10", "3e:41:9c:07:d2:88"),
        &format!("--lease={id}"),
    ]);
    let (_, status, _) = lab.etcdctl(&["endpoint", "status", "-w", "json"]);
    let rev = status
        .split("\"revision\":")
        .nth(1)
        .and_then(|s| s.split([',', '}']).next())
        .unwrap_or("1")
        .trim()
        .to_owned();
    lab.etcdctl(&["compact", &rev]);
    for i in 0..2 {
        wait_for(
            &format!("node {i} to see the lease added across the etcd restart"),
            Duration::from_secs(20),
            || lab.routes(i).contains("10.244.88.0/24"),
        );
    }
    assert_ping(&pa, &ip_b, "A -> B after the etcd restart");
    for line in lab
        .agent_log(0)
        .lines()
        .filter(|l| l.contains("watch") || l.contains("compact") || l.contains("re-list"))
    {
        eprintln!("node 0: {line}");
    }
}

fn peer_value(public_ip: &str, mac_suffix: usize) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0a:00:00:00:{:02x}:{:02x}"}}}}"#,
        mac_suffix / 256,
        mac_suffix % 256
    )
}

/// Writes leases in one transaction (one flanneld-store call or one etcd txn).
fn put_leases(lab: &Lab, leases: &[(String, String)]) {
    match lab.store {
        StoreKind::File(_) => {
            let text: String = leases.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
            store_cmd(lab, &["put", "--ttl=600"], &text);
        }
        StoreKind::Etcd => {
            // etcdctl txn reads Go-quoted strings; Rust's Debug quoting of ASCII JSON
            // is the same.
            let puts: String = leases
                .iter()
                .map(|(k, v)| format!("put /coreos.com/network/subnets/{k} {v:?}\n"))
                .collect();
            lab.etcdctl_stdin(&["txn"], &format!("\n{puts}\n\n"));
        }
    }
}

fn tunnel_routes(lab: &Lab) -> usize {
    lab.nodes[0]
        .w
        .node
        .sh("ip -4 route show dev flannel.1")
        .lines()
        .filter(|l| l.contains("onlink"))
        .count()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// Convergence: one agent; 50 simulated peers' leases appear in one store write;
/// time until all 50 are routed; then the latency of single new leases; agent
/// memory. Run by scripts/bench-agent.sh (ignored in the normal test run).
#[test]
#[ignore]
fn convergence_benchmark() {
    for store in ["embedded", "etcd"] {
        let mut lab = Lab::new(1);
        if store == "etcd" {
            lab.etcd_store(VXLAN_CONFIG);
        } else {
            lab.file_store(VXLAN_CONFIG);
        }
        lab.start_agent(0, &["-v=0"]);
        lab.wait_subnet(0);
        let pid = lab.nodes[0].agent.as_ref().map(Daemon::pid).unwrap_or(0);
        let idle_rss = status_kib(pid, "VmRSS:");
        let leases: Vec<(String, String)> = (0..50)
            .map(|i| {
                (
                    format!("10.244.{}.0-24", 100 + i),
                    peer_value(&format!("10.250.1.{}", i + 1), i + 1),
                )
            })
            .collect();
        let start = Instant::now();
        put_leases(&lab, &leases);
        let write = start.elapsed();
        wait_for("50 peer routes", Duration::from_secs(60), || {
            tunnel_routes(&lab) == 50
        });
        let all50 = start.elapsed();
        let mut singles = Vec::new();
        for k in 0..10 {
            let lease = (
                format!("10.244.{}.0-24", 200 + k),
                peer_value(&format!("10.250.2.{}", k + 1), 1000 + k),
            );
            let t = Instant::now();
            put_leases(&lab, &[lease]);
            wait_for("one more route", Duration::from_secs(30), || {
                tunnel_routes(&lab) == 51 + k
            });
            singles.push(t.elapsed());
        }
        singles.sort();
        let rss = status_kib(pid, "VmRSS:");
        let hwm = status_kib(pid, "VmHWM:");
        println!(
            "BENCH store={store} peers=50 converge_ms={:.1} (store write {:.1} ms) single_lease_median_ms={:.1} single_lease_max_ms={:.1} rss_idle_kib={idle_rss} rss_kib={rss} rss_peak_kib={hwm}",
            all50.as_secs_f64() * 1e3,
            write.as_secs_f64() * 1e3,
            singles[singles.len() / 2].as_secs_f64() * 1e3,
            singles[singles.len() - 1].as_secs_f64() * 1e3,
        );
        let log = lab.nodes[0]
            .agent
            .as_ref()
            .map(Daemon::log_text)
            .unwrap_or_default();
        assert!(
            !log.lines().any(|l| l.starts_with("E ")),
            "agent errors during the benchmark:\n{log}"
        );
        assert_eq!(lab.nodes[0].ip, "10.250.0.1");
    }
}

#[test]
fn vxlan_direct_routing_between_on_link_nodes() {
    let mut lab = Lab::new(2);
    lab.file_store(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
    );
    lab.start_agent(0, &[]);
    lab.start_agent(1, &[]);
    let s1 = lab.wait_subnet(1);
    lab.wait_subnet(0);
    let (_, net1, _) = subnet_parts(&s1);
    // Same L2 segment: a plain route via the peer's address, no tunnel entries.
    wait_for("a direct route to B", Duration::from_secs(15), || {
        lab.routes(0)
            .contains(&format!("{net1} via 10.250.0.2 dev eth0"))
    });
    assert!(lab.nodes[0]
        .w
        .node
        .sh("bridge fdb show dev flannel.1")
        .trim()
        .is_empty());
    let (pa, _) = lab.add_pod(0, "pod-a");
    let (_pb, ip_b) = lab.add_pod(1, "pod-b");
    assert_ping(&pa, &ip_b, "A -> B with DirectRouting");
}

const DUAL_CONFIG: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:244::/56","Backend":{"Type":"vxlan"}}"#;

/// Dual stack: three nodes with IPv4 and IPv6 (fd70::N/64, DAD off) on the switch,
/// vxlan over both (`flannel.1` and `flannel-v6.1`), pods with an address of each
/// family that reach each other across nodes over IPv6 as well as IPv4.
#[test]
fn vxlan_dual_stack_three_nodes() {
    let mut lab = Lab::new(3);
    lab.switch.sh(
        "sysctl -qw net.ipv6.conf.br0.accept_dad=0 && ip -6 addr add fd70::fe/64 dev br0 nodad",
    );
    for i in 0..3 {
        lab.nodes[i].w.node.sh(&format!(
            "sysctl -qw net.ipv6.conf.all.forwarding=1 && sysctl -qw net.ipv6.conf.eth0.accept_dad=0 && ip -6 addr add fd70::{}/64 dev eth0 nodad",
            i + 1
        ));
    }
    lab.file_store(DUAL_CONFIG);
    for i in 0..3 {
        lab.start_agent(i, &[]);
    }
    let subnets: Vec<String> = (0..3).map(|i| lab.wait_subnet(i)).collect();
    let mut subnets6 = Vec::new();
    for (i, s) in subnets.iter().enumerate() {
        let env = std::fs::read_to_string(lab.subnet_file(i)).unwrap();
        let s6 = env
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))
            .unwrap_or_else(|| panic!("node {i}: no FLANNEL_IPV6_SUBNET in\n{env}"))
            .to_owned();
        assert_eq!(
            env,
            format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={s}\nFLANNEL_IPV6_NETWORK=fd00:244::/56\nFLANNEL_IPV6_SUBNET={s6}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
        );
        assert!(
            s6.starts_with("fd00:244:0:") && s6.ends_with("::1/64"),
            "{s6}"
        );
        subnets6.push(s6);
    }
    assert!(
        subnets6[0] != subnets6[1] && subnets6[1] != subnets6[2] && subnets6[0] != subnets6[2],
        "{subnets6:?}"
    );
    // "fd00:244:0:5::1/64" → ("fd00:244:0:5::", "fd00:244:0:5::/64").
    let parts6 = |s6: &str| {
        let base = s6.trim_end_matches("1/64").to_owned();
        (base.clone(), format!("{base}/64"))
    };

    // The IPv6 device, as flanneld makes it.
    let n0 = &lab.nodes[0].w.node;
    let dev = n0.sh("ip -d -o link show flannel-v6.1");
    for want in [
        "mtu 1430",
        "vxlan id 1",
        "local fd70::1",
        "dev eth0",
        "dstport 8472",
        "nolearning",
        "UP",
    ] {
        assert!(dev.contains(want), "{want} missing in {dev}");
    }
    let (base0, _) = parts6(&subnets6[0]);
    let addrs = n0.sh("ip -o -6 addr show dev flannel-v6.1");
    assert!(addrs.contains(&format!("inet6 {base0}/128")), "{addrs}");

    // Lease keys and values in flanneld's dual-stack format.
    let listing = store_cmd(&lab, &["list"], "");
    for (i, (s, s6)) in subnets.iter().zip(&subnets6).enumerate() {
        let (_, _, key) = subnet_parts(s);
        let (b6, _) = parts6(s6);
        assert!(
            listing.contains(&format!("{key}&{b6}-64")),
            "key of node {i} missing in {listing}"
        );
        assert!(
            listing.contains(&format!("\"PublicIPv6\":\"fd70::{}\"", i + 1)),
            "{listing}"
        );
    }
    assert!(
        listing.contains("\"BackendV6Data\":{\"VNI\":1,\"VtepMAC\":"),
        "{listing}"
    );

    // Every node routes to the other two over both devices.
    for i in 0..3 {
        wait_for(
            &format!("node {i} IPv6 routes"),
            Duration::from_secs(15),
            || {
                let r = lab.nodes[i].w.node.sh("ip -6 route show");
                (0..3).filter(|j| *j != i).all(|j| {
                    let (base, net) = parts6(&subnets6[j]);
                    r.contains(&format!("{net} via {base} dev flannel-v6.1"))
                        && lab.routes(i).contains(&subnet_parts(&subnets[j]).1)
                })
            },
        );
    }
    let mac6_2 = {
        let out = lab.nodes[2].w.node.sh("ip -o link show flannel-v6.1");
        out.split("link/ether ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("mac")
            .to_owned()
    };
    let (base2, net2) = parts6(&subnets6[2]);
    assert!(n0
        .sh("ip -6 neigh show dev flannel-v6.1")
        .contains(&format!("{base2} lladdr {mac6_2} PERMANENT")));
    assert!(n0
        .sh("bridge fdb show dev flannel-v6.1")
        .contains(&format!("{mac6_2} dst fd70::3 self permanent")));

    // Pods get one address of each family and talk across nodes over IPv6 and IPv4.
    let pods: Vec<(NetNs, String, String)> = (0..3)
        .map(|i| add_dual_pod(&lab, i, &format!("pod-{i}")))
        .collect();
    for (i, (_, ip4, ip6)) in pods.iter().enumerate() {
        let (b4, _, _) = subnet_parts(&subnets[i]);
        assert!(
            ip4.starts_with(b4.trim_end_matches('0')),
            "{ip4} in {}",
            subnets[i]
        );
        assert!(ip6.starts_with(&parts6(&subnets6[i]).0), "{ip6}");
    }
    for (from, to) in [(0, 1), (0, 2), (1, 2), (2, 0)] {
        let (ns, _, _) = &pods[from];
        let (_, ip4, ip6) = &pods[to];
        wait_for(
            &format!("pod {from} -> pod {to} over IPv6 ({ip6})"),
            Duration::from_secs(20),
            || ns.try_sh(&format!("ping -6 -c 1 -W 1 {ip6}")).0 == 0,
        );
        assert_ping(ns, ip4, "IPv4 alongside");
    }

    // C's lease goes away: A and B drop its IPv6 entries too.
    assert_eq!(lab.stop_agent(2), Some(0));
    let (_, _, key2) = subnet_parts(&subnets[2]);
    store_cmd(&lab, &["delete", &format!("{key2}&{base2}-64")], "");
    for i in 0..2 {
        wait_for(
            &format!("node {i} to drop C's IPv6 entries"),
            Duration::from_secs(10),
            || {
                let n = &lab.nodes[i].w.node;
                !n.sh("ip -6 route show").contains(&net2)
                    && !n.sh("ip -6 neigh show dev flannel-v6.1").contains(&base2)
                    && !n.sh("bridge fdb show dev flannel-v6.1").contains(&mac6_2)
            },
        );
    }
    let (pa, _, _) = &pods[0];
    let (_, _, ip6_b) = &pods[1];
    assert!(
        pa.try_sh(&format!("ping -6 -c 1 -W 2 {ip6_b}")).0 == 0,
        "A -> B still"
    );
}

/// Adds a pod to node `i` through our flannel chain; returns (namespace, IPv4, IPv6).
fn add_dual_pod(lab: &Lab, i: usize, cid: &str) -> (NetNs, String, String) {
    let w = &lab.nodes[i].w;
    let pod = NetNs::new();
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": lab.subnet_file(i).to_string_lossy(),
        "dataDir": w.path_str("flannel"),
        "ipam": {"dataDir": w.path_str("networks")},
        "delegate": {"hairpinMode": true, "isDefaultGateway": true},
    })
    .to_string();
    let out = w.exec(
        "flannel",
        &Env::new("ADD", cid, pod.path()),
        conf.as_bytes(),
    );
    out.ok();
    let result = out.json();
    let addrs: Vec<String> = result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next())
        .map(str::to_owned)
        .collect();
    let v4 = addrs.iter().find(|a| !a.contains(':')).cloned();
    let v6 = addrs.iter().find(|a| a.contains(':')).cloned();
    match (v4, v6) {
        (Some(v4), Some(v6)) => (pod, v4, v6),
        _ => panic!("pod {cid} on node {i} lacks an address of each family: {result}"),
    }
}
