//! The verbs against `kernel`'s in-memory fakes: no root, no real namespaces (the host
//! namespace handle is the test thread's own, only used as a name by the fakes).

use crate::system::{Pod, SpoofCheckRef, System};
use crate::{add, check, del, status};
use cni::delegate::{DelegateOutput, Delegator};
use cni::env::{Command, Env, EnvMap};
use cni::{CniError, CniResult, NetConf, Request};
use ipnet::IpNet;
use kernel::fake::{FakeFirewall, FakeKernel, FakeNetlink, FakeSysctl, FirewallState};
use kernel::firewall::{Attachment, GcAttachment, MacSpoofCheck};
use kernel::netlink::*;
use kernel::{Firewall, NetNs, Sysctl};
use nix::errno::Errno;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

const POD: &str = "/run/netns/pod1";

// ---------------------------------------------------------------------------------------
// Fakes

/// [`FakeFirewall`] plus one-shot failures by method name.
#[derive(Default)]
struct TestFirewall {
    inner: FakeFirewall,
    fail: Mutex<Vec<&'static str>>,
    spoof_listing_fails: Mutex<bool>,
    /// When set, teardown_masq records whether `eth0` still exists in this namespace.
    iface_probe: Mutex<Option<(FakeKernel, String)>>,
    iface_seen_at_teardown: Mutex<Option<bool>>,
}

impl TestFirewall {
    fn check(&self, method: &'static str) -> kernel::Result<()> {
        let mut f = self.fail.lock().unwrap();
        if let Some(pos) = f.iter().position(|m| *m == method) {
            f.remove(pos);
            return Err(kernel::Error::Nft {
                op: method,
                program: "nft".into(),
                status: "exit status: 1".into(),
                stderr: "injected".into(),
            });
        }
        Ok(())
    }
}

impl Firewall for TestFirewall {
    fn setup_masq(&self, a: &Attachment<'_>, ips: &[IpNet]) -> kernel::Result<()> {
        self.check("setup_masq")?;
        self.inner.setup_masq(a, ips)
    }
    fn teardown_masq(&self, a: &Attachment<'_>) -> kernel::Result<()> {
        if let Some((k, ns)) = &*self.iface_probe.lock().unwrap() {
            let seen = k.netlink(ns).link(LinkRef::Name("eth0")).is_ok();
            *self.iface_seen_at_teardown.lock().unwrap() = Some(seen);
        }
        self.check("teardown_masq")?;
        self.inner.teardown_masq(a)
    }
    fn gc_masq(&self, network: &str, valid: &[GcAttachment]) -> kernel::Result<usize> {
        self.check("gc_masq")?;
        self.inner.gc_masq(network, valid)
    }
    fn teardown_legacy_iptables_masq(&self, network: &str, cid: &str) -> kernel::Result<bool> {
        self.check("teardown_legacy_iptables_masq")?;
        self.inner.teardown_legacy_iptables_masq(network, cid)
    }
    fn setup_mac_spoof_check(&self, c: &MacSpoofCheck<'_>) -> kernel::Result<()> {
        self.check("setup_mac_spoof_check")?;
        self.inner.setup_mac_spoof_check(c)
    }
    fn teardown_mac_spoof_check(&self, cid: &str, ifname: &str) -> kernel::Result<()> {
        self.check("teardown_mac_spoof_check")?;
        self.inner.teardown_mac_spoof_check(cid, ifname)
    }
}

struct FakePod {
    nl: FakeNetlink,
    sysctl: FakeSysctl,
}

impl Pod for FakePod {
    fn netlink(&mut self) -> &mut dyn Netlink {
        &mut self.nl
    }
    fn with_sysctl(&self, f: &mut (dyn FnMut(&dyn Sysctl) + Send)) -> kernel::Result<()> {
        f(&self.sysctl);
        Ok(())
    }
}

/// The host's [`FakeSysctl`], with writes to chosen keys failing.
struct HostSysctl {
    inner: FakeSysctl,
    fail_keys: Mutex<Vec<String>>,
}

impl Sysctl for HostSysctl {
    fn read(&self, key: &kernel::SysctlKey) -> kernel::Result<String> {
        self.inner.read(key)
    }
    fn write(&self, key: &kernel::SysctlKey, value: &str) -> kernel::Result<()> {
        if self
            .fail_keys
            .lock()
            .unwrap()
            .iter()
            .any(|k| k == key.as_str())
        {
            return Err(kernel::Error::Sysctl {
                op: "write",
                key: key.to_string(),
                source: std::io::Error::from_raw_os_error(libc::EROFS),
            });
        }
        self.inner.write(key, value)
    }
}

struct FakeSystem {
    kernel: FakeKernel,
    fw: TestFirewall,
    host: String,
    host_sysctl: HostSysctl,
    missing: Mutex<Vec<String>>,
    not_netns: Mutex<Vec<String>>,
    sleeps: Mutex<Vec<Duration>>,
    randoms: Mutex<VecDeque<u32>>,
    counter: Mutex<u32>,
}

impl FakeSystem {
    /// `cni0` as an earlier ADD (or an admin) left it, down, with `addresses`; its index.
    fn existing_bridge(&self, addresses: &[&str]) -> u32 {
        let mut host = self.host();
        host.create_bridge(&BridgeSpec {
            name: "cni0",
            ..Default::default()
        })
        .unwrap();
        let index = host.link(LinkRef::Name("cni0")).unwrap().index;
        for a in addresses {
            host.add_address(index, a.parse().unwrap()).unwrap();
        }
        index
    }

    fn new() -> FakeSystem {
        let kernel = FakeKernel::new();
        let host = NetNs::current().unwrap().path().display().to_string();
        kernel.netlink(&host);
        kernel.set_sysctl(&host, "net/ipv4/ip_forward", "0");
        kernel.set_sysctl(&host, "net/ipv6/conf/all/forwarding", "0");
        let host_sysctl = HostSysctl {
            inner: kernel.sysctl(&host),
            fail_keys: Mutex::new(Vec::new()),
        };
        FakeSystem {
            kernel,
            fw: TestFirewall::default(),
            host,
            host_sysctl,
            missing: Mutex::new(Vec::new()),
            not_netns: Mutex::new(Vec::new()),
            sleeps: Mutex::new(Vec::new()),
            randoms: Mutex::new(VecDeque::new()),
            counter: Mutex::new(0x1000),
        }
    }

    fn host(&self) -> FakeNetlink {
        self.kernel.netlink(&self.host)
    }
    fn pod(&self, ns: &str) -> FakeNetlink {
        self.kernel.netlink(ns)
    }
    fn host_snapshot(&self) -> kernel::fake::FakeNs {
        self.kernel.snapshot(&self.host)
    }
    fn host_links(&self) -> Vec<String> {
        self.host_snapshot()
            .links
            .values()
            .map(|l| l.name.clone())
            .collect()
    }
    fn pod_links(&self, ns: &str) -> Vec<String> {
        self.kernel
            .snapshot(ns)
            .links
            .values()
            .map(|l| l.name.clone())
            .collect()
    }
    fn fw_state(&self) -> FirewallState {
        self.fw.inner.state()
    }
    fn calls_matching(&self, needle: &str) -> usize {
        self.kernel
            .calls()
            .iter()
            .filter(|c| c.contains(needle))
            .count()
    }
}

impl System for FakeSystem {
    fn host_netlink(&self) -> kernel::Result<Box<dyn Netlink + Send>> {
        Ok(Box::new(self.host()))
    }
    fn host_sysctl(&self) -> &dyn Sysctl {
        &self.host_sysctl
    }
    fn firewall(&self) -> &dyn Firewall {
        &self.fw
    }
    fn host_ns(&self) -> kernel::Result<NetNs> {
        NetNs::current()
    }
    fn open_pod(&self, path: &str) -> kernel::Result<Box<dyn Pod + Send>> {
        if self.missing.lock().unwrap().iter().any(|p| p == path) {
            return Err(kernel::Error::NetnsNotFound { path: path.into() });
        }
        if self.not_netns.lock().unwrap().iter().any(|p| p == path) {
            return Err(kernel::Error::NotNetns {
                path: path.into(),
                reason: "unknown FS magic 0xef53".into(),
            });
        }
        Ok(Box::new(FakePod {
            nl: self.kernel.netlink(path),
            sysctl: self.kernel.sysctl(path),
        }))
    }
    fn spoof_checks(&self) -> kernel::Result<Vec<SpoofCheckRef>> {
        if *self.fw.spoof_listing_fails.lock().unwrap() {
            return Err(kernel::Error::NftOutput {
                op: "list",
                reason: "injected".into(),
            });
        }
        Ok(self
            .fw_state()
            .spoofchk
            .iter()
            .map(|((cid, ifname), (veth, _))| SpoofCheckRef {
                ref_id: format!("{cid}-{ifname}"),
                host_veth: Some(veth.clone()),
            })
            .collect())
    }
    fn sleep(&self, d: Duration) {
        self.sleeps.lock().unwrap().push(d);
    }
    fn random_u32(&self) -> u32 {
        if let Some(v) = self.randoms.lock().unwrap().pop_front() {
            return v;
        }
        let mut c = self.counter.lock().unwrap();
        *c += 1;
        *c
    }
}

/// An IPAM plugin in memory: one address per (container, ifname) from 10.244.1.2 (and
/// fd00:1::2 when `dual`), released on DEL; every call recorded.
#[derive(Default)]
struct FakeIpam {
    calls: Mutex<Vec<(String, Command)>>,
    allocated: Mutex<BTreeMap<String, u32>>,
    next: Mutex<u32>,
    dual: bool,
    routes: Vec<Value>,
    dns: Option<Value>,
    gateway: Option<&'static str>,
    no_ips: bool,
    fail: Mutex<Vec<(Command, CniError)>>,
    /// When set, ADD records whether `eth0` exists in this fake namespace at that time.
    iface_probe: Option<(FakeKernel, String)>,
    iface_seen: Mutex<Option<bool>>,
    /// Likewise for DEL: whether `eth0` still existed when the address was released.
    iface_seen_at_del: Mutex<Option<bool>>,
}

impl FakeIpam {
    fn dual() -> FakeIpam {
        FakeIpam {
            dual: true,
            ..Default::default()
        }
    }
    fn count(&self, cmd: Command) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, c)| *c == cmd)
            .count()
    }
    fn allocated(&self) -> usize {
        self.allocated.lock().unwrap().len()
    }
    fn fail_next(&self, cmd: Command, e: CniError) {
        self.fail.lock().unwrap().push((cmd, e));
    }
}

impl Delegator for FakeIpam {
    fn delegate(&self, plugin: &str, command: Command, stdin: &[u8], env: &Env) -> DelegateOutput {
        assert!(
            ["host-local", "dhcp", "static"].contains(&plugin),
            "{plugin}"
        );
        assert!(!stdin.is_empty(), "IPAM gets the whole config");
        self.calls.lock().unwrap().push((plugin.into(), command));
        {
            let mut f = self.fail.lock().unwrap();
            if let Some(pos) = f.iter().position(|(c, _)| *c == command) {
                return Err(f.remove(pos).1);
            }
        }
        let key = format!("{}/{}", env.container_id, env.ifname);
        if command == Command::Del {
            if let Some((k, ns)) = &self.iface_probe {
                let seen = k.netlink(ns).link(LinkRef::Name("eth0")).is_ok();
                *self.iface_seen_at_del.lock().unwrap() = Some(seen);
            }
        }
        match command {
            Command::Add => {
                if let Some((k, ns)) = &self.iface_probe {
                    let seen = k.netlink(ns).link(LinkRef::Name("eth0")).is_ok();
                    *self.iface_seen.lock().unwrap() = Some(seen);
                }
                let n = {
                    let mut next = self.next.lock().unwrap();
                    *next += 1;
                    *next + 1
                };
                self.allocated.lock().unwrap().insert(key, n);
                let mut ips = if self.no_ips {
                    vec![]
                } else {
                    vec![json!({"address": format!("10.244.1.{n}/24")})]
                };
                if let Some(gw) = self.gateway {
                    ips[0]["gateway"] = json!(gw);
                }
                if self.dual {
                    ips.push(json!({"address": format!("fd00:1::{n:x}/64")}));
                }
                let mut r = json!({"cniVersion": "1.0.0", "ips": ips, "routes": self.routes});
                if let Some(d) = &self.dns {
                    r["dns"] = d.clone();
                }
                Ok(Some(r))
            }
            Command::Del => {
                self.allocated.lock().unwrap().remove(&key);
                Ok(None)
            }
            _ => Ok(None),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Requests

struct Call {
    env: Env,
    conf: NetConf,
    stdin: Vec<u8>,
}

fn call(cmd: &str, cid: &str, netns: &str, conf: &Value) -> Call {
    let mut vars = EnvMap::new();
    for (k, v) in [
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ] {
        vars.insert(k.into(), v.into());
    }
    let stdin = conf.to_string().into_bytes();
    Call {
        env: Env::from_map(vars).unwrap(),
        conf: NetConf::parse(&stdin).unwrap(),
        stdin,
    }
}

impl Call {
    fn req<'a>(&'a self, ipam: &'a FakeIpam) -> Request<'a> {
        Request {
            env: &self.env,
            conf: &self.conf,
            stdin: &self.stdin,
            delegator: ipam,
        }
    }
}

fn conf(extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0", "name": "cbr0", "type": "bridge", "bridge": "cni0",
        "isGateway": true, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]},
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn do_add(
    sys: &FakeSystem,
    ipam: &FakeIpam,
    cid: &str,
    netns: &str,
    c: &Value,
) -> Result<CniResult, CniError> {
    let k = call("ADD", cid, netns, c);
    add::add(sys, &k.req(ipam))
}

fn do_del(
    sys: &FakeSystem,
    ipam: &FakeIpam,
    cid: &str,
    netns: &str,
    c: &Value,
) -> Result<(), CniError> {
    let k = call("DEL", cid, netns, c);
    del::del(sys, &k.req(ipam))
}

fn do_check(
    sys: &FakeSystem,
    ipam: &FakeIpam,
    cid: &str,
    prev: Option<&CniResult>,
    c: &Value,
) -> Result<(), CniError> {
    let mut c = c.clone();
    if let Some(p) = prev {
        c["prevResult"] = p.to_value("1.0.0").unwrap();
    }
    let k = call("CHECK", cid, POD, &c);
    check::check(sys, &k.req(ipam))
}

/// The kernel adds a subnet route with every address; the fake does not.
fn add_connected_routes(sys: &FakeSystem, ns: &str) {
    let mut nl = sys.pod(ns);
    for a in sys.kernel.snapshot(ns).addresses {
        nl.add_route(
            &Route::new(a.addr.trunc()).dev(a.ifindex),
            RouteMode::Create,
        )
        .unwrap();
    }
}

fn veths(sys: &FakeSystem) -> Vec<String> {
    sys.host_links()
        .into_iter()
        .filter(|n| n.starts_with("veth"))
        .collect()
}

/// Nothing of the attachment is left: no veth on either side, no address held, no
/// firewall state.
#[track_caller]
fn assert_clean(sys: &FakeSystem, ipam: &FakeIpam, ns: &str) {
    assert!(
        veths(sys).is_empty(),
        "host veths left: {:?}",
        sys.host_links()
    );
    assert!(
        !sys.pod_links(ns).iter().any(|n| n == "eth0"),
        "pod links left: {:?}",
        sys.pod_links(ns)
    );
    assert_eq!(ipam.allocated(), 0, "IPAM reservations left");
    let fw = sys.fw_state();
    assert!(fw.masq.is_empty(), "masq rules left: {:?}", fw.masq);
    assert!(
        fw.spoofchk.is_empty(),
        "spoof checks left: {:?}",
        fw.spoofchk
    );
}

// ---------------------------------------------------------------------------------------
// ADD

#[test]
fn add_builds_the_reference_result_and_state() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam {
        routes: vec![json!({"dst": "10.244.0.0/16"})],
        dns: Some(json!({"nameservers": ["1.1.1.1"]})),
        ..Default::default()
    };
    let c = conf(
        json!({"isDefaultGateway": true, "hairpinMode": true, "mtu": 1450,
                        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc"]}}),
    );
    let r = do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    let v = r.to_value("1.0.0").unwrap();

    let names: Vec<&str> = v["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3);
    assert_eq!(names[0], "cni0");
    assert!(
        names[1].starts_with("veth")
            && names[1].len() == 12
            && names[1][4..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{}",
        names[1]
    );
    assert_eq!(names[2], "eth0");
    assert_eq!(v["interfaces"][2]["sandbox"], POD);
    assert!(v["interfaces"][0].get("sandbox").is_none());
    assert_eq!(v["ips"][0]["address"], "10.244.1.2/24");
    assert_eq!(v["ips"][0]["gateway"], "10.244.1.1");
    assert_eq!(v["ips"][0]["interface"], 2);
    assert_eq!(
        v["routes"],
        json!([{"dst": "10.244.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.244.1.1"}])
    );
    assert_eq!(
        v["dns"],
        json!({"nameservers": ["10.96.0.10"], "search": ["svc"]})
    );
    assert_eq!(ipam.count(Command::Add), 1);

    // Host side: bridge up with the gateway, MAC pinned, port with hairpin, forwarding.
    let host = sys.host_snapshot();
    let br = host.links.values().find(|l| l.name == "cni0").unwrap();
    assert!(br.up && br.kind == Some(LinkKind::Bridge) && br.mtu == 1450);
    assert_eq!(
        v["interfaces"][0]["mac"],
        json!(br.mac.unwrap().to_string())
    );
    assert!(host
        .addresses
        .iter()
        .any(|a| a.ifindex == br.index && a.addr.to_string() == "10.244.1.1/24"));
    assert_eq!(sys.calls_matching("set_mac"), 1, "bridge MAC pinned once");
    let veth = host.links.values().find(|l| l.name == names[1]).unwrap();
    assert_eq!(veth.master, Some(br.index));
    assert!(veth.bridge_port.unwrap().hairpin && !veth.bridge_port.unwrap().isolated);
    assert!(veth.up && veth.mtu == 1450);
    assert_eq!(veth.oper_state, OperState::Up);
    assert_eq!(host.sysctls["net/ipv4/ip_forward"], "1");
    assert_eq!(
        host.sysctls["net/ipv6/conf/all/forwarding"], "0",
        "no IPv6 gateway"
    );
    assert_eq!(
        host.sysctls[&format!("net/ipv6/conf/{}/accept_ra", names[1])],
        "0"
    );

    // Pod side.
    let pod = sys.kernel.snapshot(POD);
    let eth0 = pod.links.values().find(|l| l.name == "eth0").unwrap();
    assert!(eth0.up && eth0.mtu == 1450 && eth0.kind == Some(LinkKind::Veth));
    assert_eq!(
        v["interfaces"][2]["mac"],
        json!(eth0.mac.unwrap().to_string())
    );
    assert!(pod
        .addresses
        .iter()
        .any(|a| a.ifindex == eth0.index && a.addr.to_string() == "10.244.1.2/24"));
    let routes: Vec<String> = pod.routes.iter().map(|r| r.to_string()).collect();
    assert!(
        routes
            .iter()
            .any(|r| r.starts_with("route 10.244.0.0/16 via 10.244.1.1")),
        "{routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r.starts_with("route 0.0.0.0/0 via 10.244.1.1")),
        "{routes:?}"
    );
    assert_eq!(pod.sysctls["net/ipv6/conf/eth0/accept_dad"], "0");
    assert_eq!(pod.sysctls["net/ipv4/conf/eth0/arp_notify"], "1");
    assert!(!pod
        .sysctls
        .contains_key("net/ipv6/conf/eth0/keep_addr_on_down"));
    assert!(
        sys.sleeps.lock().unwrap().is_empty(),
        "no sleeping on the happy path"
    );
    assert!(sys.fw_state().masq.is_empty());
}

#[test]
fn second_add_reuses_bridge_and_address() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    let c = conf(json!({}));
    do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    let creates = sys.calls_matching("create_bridge");
    let r = do_add(&sys, &ipam, "c2", "/run/netns/pod2", &c).unwrap();
    assert_eq!(r.ips[0].address.to_string(), "10.244.1.3/24");
    assert_eq!(
        sys.calls_matching("create_bridge"),
        creates,
        "bridge looked up, not recreated"
    );
    assert_eq!(sys.calls_matching("add_address 10.244.1.1/24"), 1);
    assert_eq!(sys.calls_matching("set_mac"), 1);
    assert_eq!(veths(&sys).len(), 2);
    // The existing bridge keeps its MTU and is not recreated even with another mtu.
    do_add(
        &sys,
        &ipam,
        "c3",
        "/run/netns/pod3",
        &conf(json!({"mtu": 1400})),
    )
    .unwrap();
    let br = sys.host().link(LinkRef::Name("cni0")).unwrap();
    assert_eq!(br.mtu, 1500);
}

#[test]
fn concurrent_adds_share_one_bridge() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    let c = conf(json!({"ipMasq": true}));
    std::thread::scope(|s| {
        for i in 0..16 {
            let (sys, ipam, c) = (&sys, &ipam, &c);
            s.spawn(move || {
                do_add(sys, ipam, &format!("c{i}"), &format!("/run/netns/p{i}"), c).unwrap();
            });
        }
    });
    let bridges = sys.host_links().iter().filter(|n| *n == "cni0").count();
    assert_eq!(bridges, 1);
    assert_eq!(veths(&sys).len(), 16);
    assert_eq!(ipam.allocated(), 16);
    assert_eq!(sys.fw_state().masq.len(), 16);
    let addrs = sys.host_snapshot().addresses;
    assert_eq!(addrs.len(), 1, "{addrs:?}");
}

#[test]
fn l2_mode_and_disabled_container_interface() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    let c = json!({"cniVersion": "1.0.0", "name": "l2", "type": "bridge", "bridge": "br-l2"});
    let r = do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    assert!(r.ips.is_empty() && r.routes.is_empty());
    assert_eq!(r.interfaces.len(), 3);
    assert_eq!(ipam.calls.lock().unwrap().len(), 0, "no IPAM in L2 mode");
    let eth0 = sys.pod(POD).link(LinkRef::Name("eth0")).unwrap();
    assert!(eth0.up);
    assert!(sys.kernel.snapshot(POD).addresses.is_empty());
    assert!(!sys
        .kernel
        .snapshot(POD)
        .sysctls
        .contains_key("net/ipv4/conf/eth0/arp_notify"));

    let mut c2 = c.clone();
    c2["disableContainerInterface"] = json!(true);
    do_add(&sys, &ipam, "c2", "/run/netns/p2", &c2).unwrap();
    let eth0 = sys
        .pod("/run/netns/p2")
        .link(LinkRef::Name("eth0"))
        .unwrap();
    assert!(!eth0.up, "left down");
    c2["ipam"] = json!({"type": "host-local"});
    let e = do_add(&sys, &ipam, "c3", "/run/netns/p3", &c2).unwrap_err();
    assert_eq!(
        e.msg,
        "cannot use IPAM when DisableContainerInterface flag is set"
    );
    assert_eq!(e.code, 7);
}

#[test]
fn mac_from_runtime_config_is_applied() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    let c = conf(
        json!({"runtimeConfig": {"mac": "02:42:ac:11:00:09"}, "args": {"cni": {"mac": "02:00:00:00:00:01"}}}),
    );
    let r = do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    assert_eq!(r.interfaces[2].mac.as_deref(), Some("02:42:ac:11:00:09"));
    let eth0 = sys.pod(POD).link(LinkRef::Name("eth0")).unwrap();
    assert_eq!(eth0.mac.unwrap().to_string(), "02:42:ac:11:00:09");
}

#[test]
fn dual_stack_sets_ipv6_sysctls_and_both_gateways() {
    let sys = FakeSystem::new();
    sys.kernel
        .set_sysctl(POD, "net/ipv6/conf/lo/disable_ipv6", "1");
    sys.kernel
        .set_sysctl(POD, "net/ipv6/conf/eth0/disable_ipv6", "0");
    let ipam = FakeIpam::dual();
    let r = do_add(
        &sys,
        &ipam,
        "c1",
        POD,
        &conf(json!({"isDefaultGateway": true})),
    )
    .unwrap();
    assert_eq!(r.ips.len(), 2);
    assert_eq!(r.ips[1].gateway, Some("fd00:1::1".parse().unwrap()));
    let dsts: Vec<String> = r.routes.iter().map(|r| r.dst.to_string()).collect();
    assert_eq!(dsts, ["0.0.0.0/0", "::/0"]);
    let pod = sys.kernel.snapshot(POD);
    assert_eq!(pod.sysctls["net/ipv6/conf/lo/disable_ipv6"], "0");
    assert_eq!(pod.sysctls["net/ipv6/conf/eth0/keep_addr_on_down"], "1");
    assert_eq!(
        sys.calls_matching("write net/ipv6/conf/eth0/disable_ipv6"),
        0,
        "already 0"
    );
    let host = sys.host_snapshot();
    assert!(host
        .addresses
        .iter()
        .any(|a| a.addr.to_string() == "fd00:1::1/64"));
    assert_eq!(host.sysctls["net/ipv6/conf/all/forwarding"], "1");
    // enabledad: DAD re-enabled, and settled (the fake's addresses are never tentative).
    let r = do_add(
        &sys,
        &ipam,
        "c2",
        "/run/netns/p2",
        &conf(json!({"enabledad": true})),
    )
    .unwrap();
    assert_eq!(r.ips.len(), 2);
    let pod = sys.kernel.snapshot("/run/netns/p2");
    assert_eq!(pod.sysctls["net/ipv6/conf/eth0/accept_dad"], "1");
    assert_eq!(pod.sysctls["net/ipv6/conf/eth0/enhanced_dad"], "1");
}

#[test]
fn ipv6_bridge_addresses_conflict_only_when_overlapping() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::dual();
    sys.existing_bridge(&["10.244.1.1/24", "fe80::1/64", "fd00:2::1/64"]);
    do_add(&sys, &ipam, "c1", POD, &conf(json!({}))).unwrap();
    let n = sys.host_snapshot().addresses.len();
    assert_eq!(n, 4, "link-local and other IPv6 subnets coexist");

    let sys = FakeSystem::new();
    sys.existing_bridge(&["10.244.1.1/24", "fd00::1/16"]);
    let e = do_add(&sys, &ipam, "c1", POD, &conf(json!({}))).unwrap_err();
    assert!(
        e.msg
            .contains("already has an IP address different from fd00:1::1/64"),
        "{}",
        e.msg
    );
    assert_clean(&sys, &ipam, POD);
}

#[test]
fn bridge_address_conflict_is_explained_and_force_address_replaces() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    sys.existing_bridge(&["10.244.9.1/24"]);
    let e = do_add(&sys, &ipam, "c1", POD, &conf(json!({}))).unwrap_err();
    assert_eq!(e.code, 7);
    assert!(
        e.msg.starts_with(r#"failed to set bridge addr: "cni0" already has an IP address different from 10.244.1.1/24"#),
        "{}",
        e.msg
    );
    assert!(
        e.msg.contains("10.244.9.1/24") && e.msg.contains("forceAddress"),
        "{}",
        e.msg
    );
    assert_clean(&sys, &ipam, POD);
    assert_eq!(ipam.count(Command::Del), 1, "address released");

    do_add(&sys, &ipam, "c1", POD, &conf(json!({"forceAddress": true}))).unwrap();
    let addrs: Vec<String> = sys
        .host_snapshot()
        .addresses
        .iter()
        .map(|a| a.addr.to_string())
        .collect();
    assert_eq!(addrs, ["10.244.1.1/24"]);
}

/// A bridge whose last port left has the all-zero MAC; pinning that would fail.
#[test]
fn bridge_with_zero_mac_is_not_pinned_to_zero() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    sys.existing_bridge(&[]);
    sys.host()
        .set_mac(LinkRef::Name("cni0"), MacAddr([0; 6]))
        .unwrap();
    let before = sys.calls_matching("set_mac");
    do_add(&sys, &ipam, "c1", POD, &conf(json!({}))).unwrap();
    assert_eq!(
        sys.calls_matching("set_mac"),
        before,
        "nothing usable to pin"
    );
}

#[test]
fn name_taken_by_a_non_bridge() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    sys.host()
        .create_vxlan(&VxlanSpec {
            name: "cni0",
            vni: 1,
            ..Default::default()
        })
        .unwrap();
    let e = do_add(&sys, &ipam, "c1", POD, &conf(json!({}))).unwrap_err();
    assert_eq!(e.code, 7);
    assert!(
        e.msg
            .contains(r#""cni0" already exists but is not a bridge (it is a vxlan)"#),
        "{}",
        e.msg
    );
    // host-local ran alongside and was undone.
    assert_eq!(ipam.allocated(), 0);
    assert!(sys.pod_links(POD).iter().all(|n| n != "eth0"));
}

#[test]
fn ifname_already_in_the_pod() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    sys.pod(POD)
        .create_veth(&VethSpec {
            name: "eth0",
            peer_name: "other",
            ..Default::default()
        })
        .unwrap();
    let e = do_add(&sys, &ipam, "c1", POD, &conf(json!({}))).unwrap_err();
    assert!(
        e.msg.starts_with(
            "container veth name provided (eth0) already exists in netns \"/run/netns/pod1\""
        ),
        "{}",
        e.msg
    );
    assert!(
        sys.pod_links(POD).contains(&"eth0".to_string()),
        "the pod's own link is kept"
    );
    assert_eq!(ipam.allocated(), 0);
    assert_eq!(ipam.count(Command::Add), ipam.count(Command::Del));
    assert!(veths(&sys).is_empty());
}

/// A runtime's repeated ADD of a live attachment fails on the existing interface and
/// leaves the live attachment's masquerade rule, also with an IPAM plugin that hands out
/// the same addresses again (static), where the rule waits for the veth.
#[test]
fn repeated_add_keeps_the_live_masquerade_rule() {
    for ipam_type in ["host-local", "static"] {
        let sys = FakeSystem::new();
        let ipam = FakeIpam::default();
        let c = conf(json!({"ipMasq": true, "ipam": {"type": ipam_type}}));
        do_add(&sys, &ipam, "c1", POD, &c).unwrap();
        let key = ("cbr0".to_string(), "c1".to_string(), "eth0".to_string());
        assert!(sys.fw_state().masq.contains_key(&key), "{ipam_type}");
        let e = do_add(&sys, &ipam, "c1", POD, &c).unwrap_err();
        assert!(
            e.msg.contains("(eth0) already exists"),
            "{ipam_type}: {}",
            e.msg
        );
        if ipam_type == "static" {
            assert!(
                sys.fw_state().masq.contains_key(&key),
                "static: the live rule was removed"
            );
        }
    }
}

/// An IPAM plugin that may need the interface (dhcp) runs after the veth exists, and not
/// at all when the veth cannot be made; host-local runs alongside.
#[test]
fn ipam_order_depends_on_the_plugin() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam {
        iface_probe: Some((sys.kernel.clone(), POD.to_string())),
        ..Default::default()
    };
    let c = conf(json!({"ipam": {"type": "dhcp"}}));
    do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    assert_eq!(*ipam.iface_seen.lock().unwrap(), Some(true));
    do_del(&sys, &ipam, "c1", POD, &c).unwrap();

    sys.pod(POD)
        .create_veth(&VethSpec {
            name: "eth0",
            peer_name: "other",
            ..Default::default()
        })
        .unwrap();
    let calls = ipam.calls.lock().unwrap().len();
    do_add(&sys, &ipam, "c2", POD, &c).unwrap_err();
    assert_eq!(ipam.calls.lock().unwrap().len(), calls, "dhcp never asked");
}

#[test]
fn host_veth_name_clash_is_retried() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    sys.host()
        .create_veth(&VethSpec {
            name: "veth0000abcd",
            peer_name: "x",
            ..Default::default()
        })
        .unwrap();
    sys.randoms.lock().unwrap().extend([0xabcd, 0xabcd, 0x1234]);
    let r = do_add(&sys, &ipam, "c1", POD, &conf(json!({}))).unwrap();
    assert_eq!(r.interfaces[1].name, "veth00001234");
}

#[test]
fn bad_netns_fails_before_anything_is_created() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    sys.missing.lock().unwrap().push("/run/netns/gone".into());
    sys.not_netns.lock().unwrap().push("/tmp/file".into());
    let e = do_add(&sys, &ipam, "c1", "/run/netns/gone", &conf(json!({}))).unwrap_err();
    assert_eq!(e.code, 4);
    assert!(
        e.msg.contains("\"/run/netns/gone\"") && e.msg.contains("does not exist"),
        "{}",
        e.msg
    );
    let e = do_add(&sys, &ipam, "c1", "/tmp/file", &conf(json!({}))).unwrap_err();
    assert_eq!(e.code, 4);
    assert!(
        e.msg.contains("\"/tmp/file\"") && e.msg.contains("not a network namespace"),
        "{}",
        e.msg
    );
    assert!(
        sys.host_links().iter().all(|n| n != "cni0"),
        "no bridge created"
    );
    assert_eq!(ipam.calls.lock().unwrap().len(), 0);
}

#[test]
fn invalid_configs_fail_with_code_7() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    for (extra, want) in [
        (
            json!({"hairpinMode": true, "promiscMode": true}),
            "cannot set hairpin mode and promiscuous mode at the same time",
        ),
        (
            json!({"vlan": 5000}),
            "invalid VLAN ID 5000 (must be between 0 and 4094)",
        ),
        (
            json!({"ipMasqBackend": "x"}),
            "unknown ipmasq backend \"x\"",
        ),
    ] {
        let e = do_add(&sys, &ipam, "c1", POD, &conf(extra)).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (7, want));
    }
    assert!(sys.host_links().iter().all(|n| n != "cni0"));
}

#[test]
fn ipam_errors_pass_through_and_are_rolled_back() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    ipam.fail_next(
        Command::Add,
        CniError::new(11, "no IP addresses available in range set"),
    );
    let e = do_add(&sys, &ipam, "c1", POD, &conf(json!({"macspoofchk": true}))).unwrap_err();
    assert_eq!(
        (e.code, e.msg.as_str()),
        (11, "no IP addresses available in range set")
    );
    assert_eq!(ipam.count(Command::Del), 1, "IPAM DEL after its failed ADD");
    assert_clean(&sys, &ipam, POD);

    let ipam = FakeIpam {
        no_ips: true,
        ..Default::default()
    };
    let e = do_add(&sys, &ipam, "c1", POD, &conf(json!({}))).unwrap_err();
    assert_eq!(e.msg, "IPAM plugin returned missing IP config");
    assert_clean(&sys, &ipam, POD);
}

/// Any failure after the veth exists leaves nothing: veth, rules, address.
#[test]
fn rollback_on_every_injected_failure() {
    let netlink_failures = [
        // The masquerade rule is set up while the veth is created: it goes too.
        ("create_veth", "failed to create veth pair \"eth0\""),
        ("set_master", "failed to connect"),
        ("set_bridge_port", "failed to setup hairpin mode for veth"),
        (
            "add_address",
            "failed to add IP addr 10.244.1.2/24 to \"eth0\"",
        ),
        (
            "add_route",
            "failed to add route '0.0.0.0/0 via 10.244.1.1 dev eth0",
        ),
        ("set_mac", "could not set \"cni0\"'s mac"),
    ];
    for (method, want) in netlink_failures {
        let sys = FakeSystem::new();
        let ipam = FakeIpam::default();
        if method == "set_mac" {
            // Let the bridge exist first so the failure hits the gateway step.
            sys.existing_bridge(&[]);
            sys.host().set_up(LinkRef::Name("cni0"), true).unwrap();
        }
        sys.kernel.fail_next(method, Errno::EPERM);
        let c = conf(
            json!({"isDefaultGateway": true, "hairpinMode": true, "ipMasq": true, "macspoofchk": true}),
        );
        let Err(e) = do_add(&sys, &ipam, "c1", POD, &c) else {
            panic!("{method}: ADD succeeded despite the injected failure");
        };
        assert!(e.msg.contains(want), "{method}: {}", e.msg);
        assert!(e.msg.contains("EPERM"), "{method}: {}", e.msg);
        assert_eq!(e.code, 999);
        assert_clean(&sys, &ipam, POD);
        // A retried ADD succeeds.
        do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    }
    for method in ["setup_masq", "setup_mac_spoof_check"] {
        let sys = FakeSystem::new();
        let ipam = FakeIpam::default();
        sys.fw.fail.lock().unwrap().push(method);
        let c = conf(json!({"ipMasq": true, "macspoofchk": true}));
        let e = do_add(&sys, &ipam, "c1", POD, &c).unwrap_err();
        assert!(e.msg.contains("injected"), "{method}: {}", e.msg);
        assert_clean(&sys, &ipam, POD);
        do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    }
}

#[test]
fn forwarding_failure_is_rolled_back() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    sys.host_sysctl
        .fail_keys
        .lock()
        .unwrap()
        .push("net/ipv4/ip_forward".into());
    let c = conf(json!({"ipMasq": true}));
    let e = do_add(&sys, &ipam, "c1", POD, &c).unwrap_err();
    assert!(
        e.msg
            .starts_with("failed to enable forwarding: write sysctl net/ipv4/ip_forward"),
        "{}",
        e.msg
    );
    assert_clean(&sys, &ipam, POD);
    // Forwarding already on: not written at all.
    sys.kernel.set_sysctl(&sys.host, "net/ipv4/ip_forward", "1");
    do_add(&sys, &ipam, "c1", POD, &c).unwrap();
}

#[test]
fn incomplete_rollback_is_reported_in_details() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    sys.fw
        .fail
        .lock()
        .unwrap()
        .extend(["setup_masq", "teardown_masq"]);
    ipam.fail_next(Command::Del, CniError::new(999, "disk full"));
    let e = do_add(&sys, &ipam, "c1", POD, &conf(json!({"ipMasq": true}))).unwrap_err();
    assert!(e.details.contains("rollback incomplete"), "{e:?}");
    assert!(
        e.details.contains("removing ip masquerade rules") && e.details.contains("disk full"),
        "{e:?}"
    );
    assert!(veths(&sys).is_empty(), "the veth still goes");
}

#[test]
fn masq_and_spoof_check_are_set_up_for_the_attachment() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::dual();
    let r = do_add(
        &sys,
        &ipam,
        "c1",
        POD,
        &conf(json!({"ipMasq": true, "macspoofchk": true})),
    )
    .unwrap();
    let fw = sys.fw_state();
    let ips = &fw.masq[&("cbr0".to_string(), "c1".to_string(), "eth0".to_string())];
    let ips: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
    assert_eq!(ips, ["10.244.1.2/24", "fd00:1::2/64"]);
    let (veth, mac) = &fw.spoofchk[&("c1".to_string(), "eth0".to_string())];
    assert_eq!(veth, &r.interfaces[1].name);
    assert_eq!(Some(mac.to_string()), r.interfaces[2].mac);
}

#[test]
fn prev_result_is_passed_through() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    let mut c = conf(json!({}));
    c["prevResult"] = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "lo0"}],
        "ips": [{"address": "192.168.0.2/24", "interface": 0}],
        "dns": {"nameservers": ["9.9.9.9"]}});
    let r = do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    assert_eq!(r.interfaces.len(), 4);
    assert_eq!(r.interfaces[0].name, "lo0");
    assert_eq!(r.ips[0].interface, Some(0));
    assert_eq!(
        r.ips[1].interface,
        Some(3),
        "index shifted past the earlier interfaces"
    );
    assert_eq!(r.interfaces[3].name, "eth0");
    assert_eq!(r.dns.nameservers, ["9.9.9.9"]);
}

#[test]
fn vlan_access_port_and_gateway_interface() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    let r = do_add(&sys, &ipam, "c1", POD, &conf(json!({"vlan": 100}))).unwrap();
    let host = sys.host_snapshot();
    let br = host.links.values().find(|l| l.name == "cni0").unwrap();
    assert_eq!(br.vlan_filtering, Some(true));
    let veth = host
        .links
        .values()
        .find(|l| l.name == r.interfaces[1].name)
        .unwrap();
    assert_eq!(
        host.vlans[&veth.index],
        vec![BridgeVlan {
            vid: 100,
            pvid: true,
            untagged: true
        }],
        "default VLAN 1 removed"
    );
    // isGateway with a VLAN: the gateway lives on cni0.100, the 4th interface.
    assert_eq!(r.interfaces.len(), 4);
    assert_eq!(r.interfaces[3].name, "cni0.100");
    let gw_if = host.links.values().find(|l| l.name == "cni0.100").unwrap();
    assert!(gw_if.up);
    assert!(host
        .addresses
        .iter()
        .any(|a| a.ifindex == gw_if.index && a.addr.to_string() == "10.244.1.1/24"));
    assert!(!host.addresses.iter().any(|a| a.ifindex == br.index));
    let gw_port = host
        .links
        .values()
        .find(|l| {
            l.kind == Some(LinkKind::Veth) && l.master == Some(br.index) && l.index != veth.index
        })
        .unwrap();
    assert_eq!(
        host.vlans[&gw_port.index],
        vec![BridgeVlan {
            vid: 100,
            pvid: true,
            untagged: true
        }]
    );
    // A second pod reuses cni0.100.
    let r2 = do_add(
        &sys,
        &ipam,
        "c2",
        "/run/netns/p2",
        &conf(json!({"vlan": 100})),
    )
    .unwrap();
    assert_eq!(r2.interfaces[3].name, "cni0.100");
    assert_eq!(
        sys.host_links().iter().filter(|n| *n == "cni0.100").count(),
        1
    );
}

#[test]
fn vlan_trunk_and_preserved_default() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    let c =
        conf(json!({"isGateway": false, "vlanTrunk": [{"minID": 10, "maxID": 11}, {"id": 20}]}));
    let r = do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    let host = sys.host_snapshot();
    let veth = host
        .links
        .values()
        .find(|l| l.name == r.interfaces[1].name)
        .unwrap();
    let vids: Vec<(u16, bool, bool)> = host.vlans[&veth.index]
        .iter()
        .map(|v| (v.vid, v.pvid, v.untagged))
        .collect();
    assert_eq!(
        vids,
        [
            (1, true, true),
            (10, false, false),
            (11, false, false),
            (20, false, false)
        ]
    );

    let c = conf(json!({"vlan": 7, "preserveDefaultVlan": true, "isGateway": false}));
    let r = do_add(&sys, &ipam, "c2", "/run/netns/p2", &c).unwrap();
    let host = sys.host_snapshot();
    let veth = host
        .links
        .values()
        .find(|l| l.name == r.interfaces[1].name)
        .unwrap();
    let vids: Vec<u16> = host.vlans[&veth.index].iter().map(|v| v.vid).collect();
    assert_eq!(vids, [1, 7]);
    assert_eq!(
        r.interfaces.len(),
        3,
        "no gateway interface without isGateway"
    );
}

#[test]
fn vlan_without_kernel_support_is_a_clear_error_and_leaks_nothing() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    sys.kernel.fail_next("create_bridge", Errno::EOPNOTSUPP);
    let e = do_add(&sys, &ipam, "c1", POD, &conf(json!({"vlan": 100}))).unwrap_err();
    assert!(
        e.msg.contains("CONFIG_BRIDGE_VLAN_FILTERING") && e.msg.contains("\"vlan\""),
        "{}",
        e.msg
    );
    assert_eq!(e.code, 7);
    assert!(sys.host_links().iter().all(|n| n != "cni0"));
    // On an existing bridge the port VLAN call is the one refused.
    sys.existing_bridge(&[]);
    sys.kernel.fail_next("bridge_vlan_add", Errno::EOPNOTSUPP);
    let e = do_add(&sys, &ipam, "c1", POD, &conf(json!({"vlan": 100}))).unwrap_err();
    assert!(e.msg.contains("CONFIG_BRIDGE_VLAN_FILTERING"), "{}", e.msg);
    assert_clean(&sys, &ipam, POD);
}

// ---------------------------------------------------------------------------------------
// DEL

#[test]
fn del_removes_everything_and_is_idempotent() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    let c = conf(json!({"ipMasq": true, "macspoofchk": true}));
    do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    sys.fw.inner.add_legacy_chain("cbr0", "c1");
    do_del(&sys, &ipam, "c1", POD, &c).unwrap();
    assert_clean(&sys, &ipam, POD);
    assert!(
        sys.fw_state().legacy_chains.is_empty(),
        "Go's iptables chain removed"
    );
    // Repeated DEL, DEL without the interface: still fine.
    do_del(&sys, &ipam, "c1", POD, &c).unwrap();
    assert_eq!(ipam.count(Command::Del), 2, "IPAM DEL every time");
    // The bridge and its address stay.
    assert!(sys.host_links().contains(&"cni0".to_string()));
    assert_eq!(sys.host_snapshot().addresses.len(), 1);
}

/// The address is released only once the pod's interface is gone, so IPAM can never
/// hand it to a new pod while the old one still answers for it.
#[test]
fn del_releases_the_address_only_after_the_interface_is_gone() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam {
        iface_probe: Some((sys.kernel.clone(), POD.to_string())),
        ..Default::default()
    };
    let c = conf(json!({}));
    do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    do_del(&sys, &ipam, "c1", POD, &c).unwrap();
    assert_eq!(*ipam.iface_seen_at_del.lock().unwrap(), Some(false));
    assert_clean(&sys, &ipam, POD);
}

/// Likewise the masquerade rules: removed inside the deletion's wait, but never while the
/// pod could still send through them.
#[test]
fn del_removes_masquerade_only_after_the_interface_is_gone() {
    let sys = FakeSystem::new();
    *sys.fw.iface_probe.lock().unwrap() = Some((sys.kernel.clone(), POD.to_string()));
    let ipam = FakeIpam::default();
    let c = conf(json!({"ipMasq": true}));
    do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    do_del(&sys, &ipam, "c1", POD, &c).unwrap();
    assert_eq!(*sys.fw.iface_seen_at_teardown.lock().unwrap(), Some(false));
    assert_clean(&sys, &ipam, POD);
}

#[test]
fn del_with_empty_or_vanished_netns_still_cleans_rules_and_address() {
    for netns in ["", "/run/netns/gone"] {
        let sys = FakeSystem::new();
        let ipam = FakeIpam::default();
        let c = conf(json!({"ipMasq": true, "macspoofchk": true}));
        do_add(&sys, &ipam, "c1", "/run/netns/gone", &c).unwrap();
        // The namespace vanishes, taking its veth (and so the host end) with it.
        sys.pod("/run/netns/gone")
            .delete_link(LinkRef::Name("eth0"))
            .unwrap();
        sys.missing.lock().unwrap().push("/run/netns/gone".into());
        do_del(&sys, &ipam, "c1", netns, &c).unwrap();
        assert_clean(&sys, &ipam, "/run/netns/gone");
    }
}

#[test]
fn del_without_prev_result_or_with_an_invalid_config() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    let c = conf(json!({"ipMasq": true}));
    do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    // The same network with a config that no longer validates.
    let bad =
        conf(json!({"ipMasq": true, "vlan": 99999, "hairpinMode": true, "promiscMode": true}));
    do_del(&sys, &ipam, "c1", POD, &bad).unwrap();
    assert_clean(&sys, &ipam, POD);
}

#[test]
fn del_reports_every_failure_and_still_does_the_rest() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    let c = conf(json!({"ipMasq": true, "macspoofchk": true}));
    do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    ipam.fail_next(Command::Del, CniError::new(11, "locked, try later"));
    sys.fw.fail.lock().unwrap().push("teardown_mac_spoof_check");
    let e = do_del(&sys, &ipam, "c1", POD, &c).unwrap_err();
    assert_eq!(e.code, 11, "IPAM's error comes first");
    assert!(
        e.msg.contains("locked, try later") && e.msg.contains("mac spoof check"),
        "{}",
        e.msg
    );
    assert!(veths(&sys).is_empty());
    assert!(
        sys.fw_state().masq.is_empty(),
        "masq removed despite the other failures"
    );
    // The retried DEL finishes the job.
    do_del(&sys, &ipam, "c1", POD, &c).unwrap();
    assert_clean(&sys, &ipam, POD);
}

#[test]
fn del_with_a_path_that_is_not_a_namespace() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    let c = conf(json!({"ipMasq": true}));
    do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    sys.not_netns.lock().unwrap().push("/tmp/notns".into());
    let e = do_del(&sys, &ipam, "c1", "/tmp/notns", &c).unwrap_err();
    assert_eq!(e.code, 4);
    assert!(e.msg.contains("/tmp/notns"), "{}", e.msg);
    assert_eq!(ipam.allocated(), 0, "address released anyway");
    assert!(sys.fw_state().masq.is_empty());
}

#[test]
fn del_in_l2_mode_never_calls_ipam() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    let c = json!({"cniVersion": "0.3.1", "name": "l2", "type": "bridge"});
    do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    do_del(&sys, &ipam, "c1", POD, &c).unwrap();
    assert!(ipam.calls.lock().unwrap().is_empty());
    assert!(veths(&sys).is_empty());
}

// ---------------------------------------------------------------------------------------
// CHECK

#[test]
fn check_passes_after_add_and_names_what_is_wrong() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam {
        routes: vec![json!({"dst": "10.244.0.0/16"})],
        ..Default::default()
    };
    let c = conf(json!({"isDefaultGateway": true}));
    let r = do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    add_connected_routes(&sys, POD);
    do_check(&sys, &ipam, "c1", Some(&r), &c).unwrap();
    assert_eq!(ipam.count(Command::Check), 1);

    let e = do_check(&sys, &ipam, "c1", None, &c).unwrap_err();
    assert_eq!(e.msg, "Required prevResult missing");

    let mut wrong = r.clone();
    wrong.interfaces[0].mac = Some("02:00:00:00:00:99".into());
    let e = do_check(&sys, &ipam, "c1", Some(&wrong), &c).unwrap_err();
    assert_eq!(
        e.msg,
        "Bridge interface cni0 Mac doesn't match: 02:00:00:00:00:99"
    );

    let e = do_check(
        &sys,
        &ipam,
        "c1",
        Some(&r),
        &conf(json!({"isDefaultGateway": true, "promiscMode": true})),
    )
    .unwrap_err();
    assert_eq!(
        e.msg,
        "Bridge interface cni0 configured Promisc Mode true doesn't match current state: false "
    );

    let mut wrong = r.clone();
    wrong.interfaces[2].sandbox = Some("/run/netns/other".into());
    let e = do_check(&sys, &ipam, "c1", Some(&wrong), &c).unwrap_err();
    assert_eq!(
        e.msg,
        "Sandbox in prevResult  doesn't match configured netns: /run/netns/pod1"
    );

    let mut wrong = r.clone();
    wrong.interfaces[2].mac = Some("02:00:00:00:00:98".into());
    let e = do_check(&sys, &ipam, "c1", Some(&wrong), &c).unwrap_err();
    assert!(
        e.msg
            .starts_with("Interface eth0 Mac 02:00:00:00:00:98 doesn't match container Mac: "),
        "{}",
        e.msg
    );

    let mut wrong = r.clone();
    wrong.interfaces[1].mac = Some("02:00:00:00:00:97".into());
    let e = do_check(&sys, &ipam, "c1", Some(&wrong), &c).unwrap_err();
    assert!(
        e.msg
            .ends_with("Mac doesn't match: 02:00:00:00:00:97 not found"),
        "{}",
        e.msg
    );

    let mut wrong = r.clone();
    wrong.ips[0].address = "10.244.1.77/24".parse().unwrap();
    let e = do_check(&sys, &ipam, "c1", Some(&wrong), &c).unwrap_err();
    assert_eq!(
        e.msg,
        "Failed to match addr 10.244.1.77/24 on interface eth0"
    );

    let mut wrong = r.clone();
    wrong.routes[0].dst = "10.99.0.0/16".parse().unwrap();
    let e = do_check(&sys, &ipam, "c1", Some(&wrong), &c).unwrap_err();
    assert_eq!(
        e.msg,
        "Expected Route 10.99.0.0/16 not found in routing table"
    );

    let mut wrong = r.clone();
    wrong.routes[1].gw = Some("10.244.1.254".parse().unwrap());
    let e = do_check(&sys, &ipam, "c1", Some(&wrong), &c).unwrap_err();
    assert_eq!(
        e.msg,
        "Expected Route 0.0.0.0/0 via 10.244.1.254 not found in routing table"
    );

    // The host veth detached from the bridge.
    let veth = r.interfaces[1].name.clone();
    sys.host().set_master(LinkRef::Name(&veth), None).unwrap();
    let e = do_check(&sys, &ipam, "c1", Some(&r), &c).unwrap_err();
    assert_eq!(e.msg, "CNI veth created for bridge cni0 was not found");

    // The pod's interface gone.
    sys.pod(POD).delete_link(LinkRef::Name("eth0")).unwrap();
    let e = do_check(&sys, &ipam, "c1", Some(&r), &c).unwrap_err();
    assert_eq!(e.msg, "Interface name eth0 not found");

    ipam.fail_next(
        Command::Check,
        CniError::new(999, "failed to find address added by container c1"),
    );
    let e = do_check(&sys, &ipam, "c1", Some(&r), &c).unwrap_err();
    assert_eq!(e.msg, "failed to find address added by container c1");
}

#[test]
fn check_without_bridge() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    let c = conf(json!({}));
    let r = do_add(&sys, &ipam, "c1", POD, &c).unwrap();
    add_connected_routes(&sys, POD);
    let mut wrong = r.clone();
    wrong.interfaces[0].name = "elsewhere".into();
    let e = do_check(&sys, &ipam, "c1", Some(&wrong), &c).unwrap_err();
    assert_eq!(e.msg, "Interface name missing ");
    sys.host().delete_link(LinkRef::Name("cni0")).unwrap();
    let e = do_check(&sys, &ipam, "c1", Some(&r), &c).unwrap_err();
    assert_eq!(e.msg, "Interface name cni0 not found");
}

// ---------------------------------------------------------------------------------------
// STATUS and GC

fn status_of(sys: &FakeSystem, ipam: &FakeIpam) -> Result<(), CniError> {
    let c = json!({"cniVersion": "1.1.0", "name": "cbr0", "type": "bridge", "ipam": {"type": "host-local"}});
    let k = call("STATUS", "", "", &c);
    status::status(sys, &k.req(ipam))
}

#[test]
fn status_reports_a_broken_bridge_and_asks_ipam() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    status_of(&sys, &ipam).unwrap();
    assert_eq!(ipam.count(Command::Status), 1);

    sys.existing_bridge(&[]);
    let e = status_of(&sys, &ipam).unwrap_err();
    assert_eq!(e.code, 51);
    assert!(e.msg.contains("\"cni0\" is down"), "{}", e.msg);
    sys.host().set_up(LinkRef::Name("cni0"), true).unwrap();
    status_of(&sys, &ipam).unwrap();

    ipam.fail_next(Command::Status, CniError::new(50, "range full"));
    let e = status_of(&sys, &ipam).unwrap_err();
    assert_eq!((e.code, e.msg.as_str()), (50, "range full"));

    sys.host().delete_link(LinkRef::Name("cni0")).unwrap();
    sys.host()
        .create_vxlan(&VxlanSpec {
            name: "cni0",
            vni: 1,
            ..Default::default()
        })
        .unwrap();
    let e = status_of(&sys, &ipam).unwrap_err();
    assert_eq!(e.code, 50);
    assert!(e.msg.contains("not a bridge"), "{}", e.msg);
    assert_eq!(
        sys.kernel
            .calls()
            .iter()
            .filter(|c| c.contains("set_up"))
            .count(),
        1,
        "STATUS changes nothing"
    );
}

fn gc_of(sys: &FakeSystem, ipam: &FakeIpam, name: &str, valid: Value) -> Result<(), CniError> {
    let mut c = json!({"cniVersion": "1.1.0", "name": name, "type": "bridge", "ipam": {"type": "host-local"}});
    c["cni.dev/valid-attachments"] = valid.clone();
    c["cni.dev/attachments"] = valid;
    let mut k = call("GC", "", "", &c);
    k.env.command = Command::Gc;
    status::gc(sys, &k.req(ipam))
}

#[test]
fn gc_removes_stale_rules_of_this_network_and_forwards_to_ipam() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    let c = conf(json!({"ipMasq": true, "macspoofchk": true}));
    for (i, cid) in ["keep", "stale1", "stale2"].iter().enumerate() {
        do_add(&sys, &ipam, cid, &format!("/run/netns/p{i}"), &c).unwrap();
    }
    // Another network's attachment, on another bridge.
    let mut other = conf(json!({"ipMasq": true, "macspoofchk": true, "bridge": "cni1"}));
    other["name"] = json!("othernet");
    do_add(&sys, &ipam, "foreign", "/run/netns/p9", &other).unwrap();
    // stale2's pod namespace is gone, taking its veth.
    sys.pod("/run/netns/p2")
        .delete_link(LinkRef::Name("eth0"))
        .unwrap();

    gc_of(
        &sys,
        &ipam,
        "cbr0",
        json!([{"containerID": "keep", "ifname": "eth0"}]),
    )
    .unwrap();
    let fw = sys.fw_state();
    let mut masq: Vec<&String> = fw.masq.keys().map(|(_, cid, _)| cid).collect();
    masq.sort();
    assert_eq!(masq, ["foreign", "keep"]);
    let spoof: Vec<&String> = fw.spoofchk.keys().map(|(cid, _)| cid).collect();
    assert_eq!(spoof, ["foreign", "keep"]);
    assert_eq!(ipam.count(Command::Gc), 1);
}

#[test]
fn gc_collects_errors_and_still_forwards() {
    let sys = FakeSystem::new();
    let ipam = FakeIpam::default();
    sys.fw.fail.lock().unwrap().push("gc_masq");
    *sys.fw.spoof_listing_fails.lock().unwrap() = true;
    ipam.fail_next(Command::Gc, CniError::new(5, "cannot read dataDir"));
    let e = gc_of(&sys, &ipam, "cbr0", json!([])).unwrap_err();
    assert_eq!(e.code, 5);
    assert!(
        e.msg.contains("cannot read dataDir")
            && e.msg.contains("ip masquerade")
            && e.msg.contains("spoof"),
        "{}",
        e.msg
    );
    assert_eq!(ipam.count(Command::Gc), 1);
    let e = gc_of(&sys, &ipam, "cbr0", json!([{"containerID": 3}])).unwrap_err();
    assert_eq!(e.code, 7);
}
