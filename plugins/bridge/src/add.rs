//! ADD: bridge, veth, IPAM, addresses and routes in the pod, gateway on the bridge,
//! masquerading; and on any failure, the undoing of all of it.

use crate::config::BridgeConf;
use crate::error::BridgeError;
use crate::plan::{self, L3Plan};
use crate::system::{Pod, System};
use crate::{open_pod, POD_IFINDEX_IN_RESULT};
use cni::delegate::{delegate_add, delegate_simple};
use cni::{CniError, CniResult, Command, Env, Interface, Request};
use ipnet::IpNet;
use kernel::firewall::{Attachment, MacSpoofCheck};
use kernel::netlink::{
    BridgePortFlags, BridgeSpec, BridgeVlan, Family, Link, LinkKind, LinkRef, MacAddr, Netlink,
    OperState, Route, RouteMode, RouteScope, VethSpec,
};
use kernel::{NetNs, SysctlKey};
use nix::errno::Errno;
use std::time::Duration;

/// Attempts at a free random host veth name. The Go plugin also tries 10 times.
const VETH_NAME_ATTEMPTS: u32 = 10;
/// Pauses before each look at the host veth's oper state. The Go plugin sleeps 0, 50,
/// 500, 1000 and 1000 ms; the state normally turns UP within microseconds of the pod
/// end going up (the kernel's link watcher treats veth carrier changes as urgent), so
/// short first pauses avoid a 50 ms stall when we look a moment too early. Same 2.5 s
/// bound.
const PORT_WAIT_MS: [u64; 12] = [0, 1, 2, 5, 10, 20, 50, 100, 250, 500, 1000, 600];
/// IPv6 DAD settling, as the Go plugin polls it (only with `enabledad`).
const DAD_POLL: Duration = Duration::from_millis(50);
const DAD_POLLS: u32 = 100;

/// What this ADD created so far, for the rollback.
#[derive(Debug, Default)]
struct Created {
    /// Container end of the veth (deleting it removes the host end too).
    container_ifindex: Option<u32>,
    spoofchk: bool,
    ipam: bool,
    masq: bool,
}

pub fn add(sys: &dyn System, req: &Request) -> Result<CniResult, CniError> {
    let conf = BridgeConf::parse(req.conf, &req.env.args).map_err(BridgeError::from)?;
    conf.validate_for_add().map_err(BridgeError::from)?;
    let prev = req.conf.prev_result().map_err(BridgeError::PrevResult)?;
    // A missing or misnamed IPAM plugin is found out before anything is created.
    if let Some(ipam) = &conf.ipam_type {
        req.delegator.preflight(ipam, req.env)?;
    }
    // Opened first: a bad CNI_NETNS must leave nothing behind, not even a new bridge.
    let mut pod = open_pod(sys, &req.env.netns)?;
    let mut host = sys.host_netlink().map_err(|e| {
        BridgeError::kernel("failed to open a netlink socket in the host namespace", e)
    })?;
    let host_ns = sys
        .host_ns()
        .map_err(|e| BridgeError::kernel("failed to open the host network namespace", e))?;
    let mut created = Created::default();
    let outcome = run(
        sys,
        req,
        &conf,
        prev,
        &mut *pod,
        &mut *host,
        &host_ns,
        &mut created,
    );
    match outcome {
        Ok(result) => Ok(result),
        Err(e) => {
            let problems = rollback(sys, req, &conf, &mut *pod, &created);
            let mut err = CniError::from(e);
            if !problems.is_empty() {
                let text = format!("rollback incomplete: {}", problems.join("; "));
                eprintln!(
                    "bridge: ADD of {} failed: {err}; {text}",
                    req.env.container_id
                );
                err.details = if err.details.is_empty() {
                    text
                } else {
                    format!("{}; {text}", err.details)
                };
            }
            Err(err)
        }
    }
}

/// IPAM plugins that neither look at the pod's interface nor at the bridge. Their ADD
/// runs while the bridge and veth are set up, taking their process start and work off
/// the ADD's latency. Others (`dhcp` runs its client on the new interface) run after
/// the veth exists, as in the Go plugin.
const IPAM_WITHOUT_INTERFACE: &[&str] = &["host-local", "static"];
/// IPAM plugins whose successful ADD means a new attachment: they refuse a second
/// allocation for the same container and interface. With them the masquerade rule is
/// set up before the veth exists; were the attachment live (a runtime's repeated ADD),
/// the rollback after the veth's failure would remove the live attachment's rules too.
const IPAM_REFUSING_REPEATS: &[&str] = &["host-local"];

#[allow(clippy::too_many_arguments)]
fn run(
    sys: &dyn System,
    req: &Request,
    conf: &BridgeConf,
    prev: Option<CniResult>,
    pod: &mut (dyn Pod + Send),
    host: &mut (dyn Netlink + Send),
    host_ns: &NetNs,
    created: &mut Created,
) -> Result<CniResult, BridgeError> {
    let env = req.env;
    let ipam_add = |ipam: &str| {
        delegate_add(req.delegator, ipam, req.stdin, env, &req.conf.cni_version)
            .map_err(BridgeError::Ipam)
    };
    let early_ipam = conf
        .ipam_type
        .as_deref()
        .filter(|t| IPAM_WITHOUT_INTERFACE.contains(t));
    // Recorded before the call: a failed IPAM ADD gets its DEL too (the spec asks the
    // caller to let the delegate undo a partial allocation).
    created.ipam = early_ipam.is_some();
    let masq_beside =
        conf.ip_masq && early_ipam.is_some_and(|t| IPAM_REFUSING_REPEATS.contains(&t));
    let (l2, mut ipam_result, early_masq) = {
        let mut l2 = L2 {
            sys,
            env,
            conf,
            pod: &mut *pod,
            host: &mut *host,
            host_ns,
            created: &mut *created,
        };
        match early_ipam {
            // The veth (about 1 ms of kernel work) stays on this thread; IPAM and the
            // masquerade rule (0.5-0.7 ms) go beside it.
            Some(ipam) => {
                let ((ipam, masq), l2) = kernel::sched::run_beside(
                    || {
                        let ipam = ipam_add(ipam);
                        // The masquerade rule needs only the addresses.
                        let masq = match &ipam {
                            Ok(r) if masq_beside && !r.ips.is_empty() => {
                                Some(setup_masq(sys, req, r.ips.iter().map(|ip| ip.address)))
                            }
                            _ => None,
                        };
                        (ipam, masq)
                    },
                    || l2.run(),
                );
                (l2, Some(ipam), masq)
            }
            None => (l2.run(), None, None),
        }
    };
    // Whatever the outcome: a failed transaction may still have created the table, and
    // teardown of what is absent is a no-op.
    created.masq = early_masq.is_some();
    // The interface's failure first: the Go plugin would not have asked IPAM yet.
    let l2 = l2?;
    if ipam_result.is_none() {
        if let Some(ipam) = conf.ipam_type.as_deref() {
            created.ipam = true;
            ipam_result = Some(ipam_add(ipam));
        }
    }
    let mut rest = Add {
        sys,
        req,
        conf,
        pod,
        host,
        br: l2.bridge.clone(),
        created,
    };
    rest.steps(prev, l2, ipam_result.transpose()?, early_masq)
}

/// Masquerades the pod's addresses. `setup_masq_new`: the veth was just created, or (see
/// `IPAM_REFUSING_REPEATS`) the addresses were just allocated.
fn setup_masq(
    sys: &dyn System,
    req: &Request,
    ips: impl Iterator<Item = IpNet>,
) -> Result<(), BridgeError> {
    let att = Attachment {
        network: &req.conf.name,
        container_id: &req.env.container_id,
        ifname: &req.env.ifname,
    };
    let ips: Vec<IpNet> = ips.collect();
    sys.firewall()
        .setup_masq_new(&att, &ips)
        .map_err(|e| BridgeError::kernel("failed to set up ip masquerading", e))
}

/// The bridge and the veth, as they stand after the layer-2 setup.
struct L2Done {
    bridge: Link,
    container: Link,
    host_veth: Link,
}

/// Layer 2: bridge, veth, port settings, VLANs, spoof check; on the calling thread, with
/// IPAM beside it when the IPAM plugin allows.
struct L2<'a> {
    sys: &'a dyn System,
    env: &'a Env,
    conf: &'a BridgeConf,
    pod: &'a mut (dyn Pod + Send),
    host: &'a mut (dyn Netlink + Send),
    host_ns: &'a NetNs,
    created: &'a mut Created,
}

impl L2<'_> {
    fn run(&mut self) -> Result<L2Done, BridgeError> {
        let conf = self.conf;
        let bridge = ensure_bridge(self.sys, &mut *self.host, conf)?;
        let (container, host_veth) = self.create_veth()?;
        self.attach_port(&host_veth, &bridge)?;
        if conf.uses_vlans() {
            setup_port_vlans(&mut *self.host, host_veth.index, &host_veth.name, conf)?;
        }
        if conf.macspoofchk {
            if let Some(mac) = container.mac {
                let check = MacSpoofCheck {
                    container_id: &self.env.container_id,
                    ifname: &self.env.ifname,
                    host_veth: &host_veth.name,
                    mac,
                };
                // Recorded before the attempt: a failed transaction may still have
                // created the base chain, and teardown of what is absent is a no-op.
                self.created.spoofchk = true;
                self.sys
                    .firewall()
                    .setup_mac_spoof_check(&check)
                    .map_err(|e| BridgeError::kernel("failed to set up the mac spoof check", e))?;
            }
        }
        if conf.is_layer3() {
            // Here rather than after IPAM as in the Go plugin: it then overlaps IPAM.
            pod_base_sysctls(&*self.pod, &self.env.ifname, conf.enable_dad)?;
        }
        Ok(L2Done {
            bridge,
            container,
            host_veth,
        })
    }

    /// One request from inside the pod creates both ends, the host end directly in the
    /// host namespace. Returns the container end and the host end.
    fn create_veth(&mut self) -> Result<(Link, Link), BridgeError> {
        let env = self.env;
        let ifname = env.ifname.as_str();
        let mut last = None;
        for _ in 0..VETH_NAME_ATTEMPTS {
            // "veth" + 8 hex digits: NetworkManager ignores veth* devices.
            let peer = format!("veth{:08x}", self.sys.random_u32());
            let spec = VethSpec {
                name: ifname,
                mac: self.conf.mac,
                peer_name: &peer,
                peer_mac: None,
                mtu: self.conf.mtu,
                peer_netns: Some(self.host_ns),
            };
            match self.pod.netlink().create_veth(&spec) {
                Ok(()) => {
                    let container = self.pod.netlink().link(LinkRef::Name(ifname));
                    // Recorded as soon as it exists, so a failed lookup is rolled back.
                    if let Ok(c) = &container {
                        self.created.container_ifindex = Some(c.index);
                    }
                    let container = match container {
                        Ok(c) => c,
                        Err(e) => {
                            // Still ours: remove it by name before failing.
                            let _ = self.pod.netlink().delete_link(LinkRef::Name(ifname));
                            return Err(BridgeError::kernel(
                                format!("failed to look up {ifname:?} after creating it"),
                                e,
                            ));
                        }
                    };
                    let host = self.host.link(LinkRef::Name(&peer)).map_err(|e| {
                        BridgeError::kernel(format!("failed to lookup {peer:?}"), e)
                    })?;
                    return Ok((container, host));
                }
                Err(e) if e.is_exists() => {
                    // Either CNI_IFNAME is taken in the pod or the random name in the
                    // host: only the first is worth reporting.
                    match self.pod.netlink().link(LinkRef::Name(ifname)) {
                        Ok(_) => {
                            return Err(BridgeError::IfnameExists {
                                ifname: ifname.to_owned(),
                                netns: env.netns.clone(),
                            })
                        }
                        Err(nf) if nf.is_not_found() => last = Some(e),
                        Err(other) => {
                            return Err(BridgeError::kernel(
                                format!("failed to look up {ifname:?} in netns {:?}", env.netns),
                                other,
                            ))
                        }
                    }
                }
                Err(e) => {
                    return Err(BridgeError::kernel(
                        format!(
                            "failed to create veth pair {ifname:?} in netns {:?}",
                            env.netns
                        ),
                        e,
                    ))
                }
            }
        }
        Err(BridgeError::kernel(
            format!("failed to find a free name for the host end of {ifname:?} after {VETH_NAME_ATTEMPTS} attempts"),
            last.unwrap_or(kernel::Error::Invalid {
                what: "veth name",
                value: String::new(),
                reason: "no attempt made".into(),
            }),
        ))
    }

    fn attach_port(&mut self, veth: &Link, br: &Link) -> Result<(), BridgeError> {
        let (name, conf) = (veth.name.as_str(), self.conf);
        // Before the link comes up, when IPv6 would start on it: "we own the routes".
        if let Ok(key) = SysctlKey::interface(Family::V6, name, "accept_ra") {
            let _ = self.sys.host_sysctl().write(&key, "0");
        }
        self.host
            .set_master_and_up(LinkRef::Index(veth.index), br.index)
            .map_err(|e| {
                BridgeError::kernel(
                    format!(
                        "failed to connect {name:?} to bridge {} and set it up",
                        br.name
                    ),
                    e,
                )
            })?;
        // A new port starts with hairpin and isolation off: only a request for either
        // costs a round trip. Nothing crosses the port yet (the pod end has no address),
        // so setting them on a port that is already up changes nothing observable.
        if conf.hairpin || conf.port_isolation {
            let flags = BridgePortFlags {
                hairpin: conf.hairpin.then_some(true),
                isolated: conf.port_isolation.then_some(true),
            };
            let what = if conf.hairpin {
                format!("failed to setup hairpin mode for {name}")
            } else {
                format!("failed to set port isolation on {name}")
            };
            self.host
                .set_bridge_port(veth.index, &flags)
                .map_err(|e| BridgeError::kernel(what, e))?;
        }
        Ok(())
    }
}

/// Undoes what `created` records, in reverse order. Unlike the Go plugin, the veth goes
/// too, so that the runtime's retried ADD does not fail on an existing interface.
fn rollback(
    sys: &dyn System,
    req: &Request,
    conf: &BridgeConf,
    pod: &mut dyn Pod,
    created: &Created,
) -> Vec<String> {
    let env = req.env;
    let att = Attachment {
        network: &req.conf.name,
        container_id: &env.container_id,
        ifname: &env.ifname,
    };
    let mut problems = Vec::new();
    if created.masq {
        if let Err(e) = sys.firewall().teardown_masq(&att) {
            problems.push(format!("removing ip masquerade rules: {e}"));
        }
    }
    if created.spoofchk {
        if let Err(e) = sys
            .firewall()
            .teardown_mac_spoof_check(&env.container_id, &env.ifname)
        {
            problems.push(format!("removing mac spoof check: {e}"));
        }
    }
    if let Some(index) = created.container_ifindex {
        match pod.netlink().delete_link(LinkRef::Index(index)) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => problems.push(format!("deleting veth {:?}: {e}", env.ifname)),
        }
    }
    if created.ipam {
        if let Some(ipam) = &conf.ipam_type {
            if let Err(e) = delegate_simple(req.delegator, ipam, Command::Del, req.stdin, env) {
                problems.push(format!(
                    "releasing the address with IPAM plugin {ipam:?}: {e}"
                ));
            }
        }
    }
    problems
}

fn kind_text(kind: &Option<LinkKind>) -> String {
    match kind {
        None => "a link without kind".into(),
        Some(LinkKind::Bridge) => "a bridge".into(),
        Some(LinkKind::Veth) => "a veth".into(),
        Some(LinkKind::Vxlan) => "a vxlan".into(),
        Some(LinkKind::Other(k)) => format!("a {k} link"),
    }
}

/// Looks the bridge up first (one round trip on every ADD but the first on a node) and
/// creates it only when missing. Concurrent ADDs race on the creation: EEXIST means a
/// sibling won, and its bridge is used.
fn ensure_bridge(
    sys: &dyn System,
    host: &mut dyn Netlink,
    conf: &BridgeConf,
) -> Result<Link, BridgeError> {
    let name = conf.bridge.as_str();
    let fail = |e| BridgeError::kernel(format!("failed to create bridge {name:?}"), e);
    let mut br = match host.link(LinkRef::Name(name)) {
        Ok(l) => l,
        Err(e) if e.is_not_found() => {
            let spec = BridgeSpec {
                name,
                mtu: conf.mtu,
                // Only asked for with VLANs: kernels without bridge VLAN filtering
                // refuse the attribute even when it is 0.
                vlan_filtering: conf.uses_vlans(),
            };
            match host.create_bridge(&spec) {
                Ok(()) => {}
                Err(e) if e.is_exists() => {}
                Err(e) if conf.uses_vlans() && e.errno() == Some(Errno::EOPNOTSUPP) => {
                    return Err(BridgeError::VlanUnsupported {
                        what: format!("failed to create bridge {name:?} with VLAN filtering"),
                        source: e,
                    })
                }
                Err(e) => return Err(fail(e)),
            }
            host.link(LinkRef::Name(name)).map_err(fail)?
        }
        Err(e) => return Err(fail(e)),
    };
    if br.kind != Some(LinkKind::Bridge) {
        return Err(BridgeError::NotABridge {
            name: name.to_owned(),
            kind: kind_text(&br.kind),
        });
    }
    if conf.promisc && !br.promisc {
        host.set_promisc(LinkRef::Index(br.index), true)
            .map_err(|e| fail_ctx(name, "could not set promiscuous mode on", e))?;
    }
    // "We own the routes of this interface": no router advertisements. Errors are
    // ignored like the Go plugin does (IPv6 may be disabled).
    if let Ok(key) = SysctlKey::interface(Family::V6, name, "accept_ra") {
        let _ = sys.host_sysctl().ensure(&key, "0");
    }
    if !br.up {
        host.set_up(LinkRef::Index(br.index), true)
            .map_err(|e| fail_ctx(name, "could not set up", e))?;
        br.up = true;
    }
    Ok(br)
}

fn fail_ctx(name: &str, what: &str, e: kernel::Error) -> BridgeError {
    BridgeError::kernel(
        format!("failed to create bridge {name:?}: {what} {name:?}"),
        e,
    )
}

/// Layer 3 and the result, on the calling thread.
struct Add<'a> {
    sys: &'a dyn System,
    req: &'a Request<'a>,
    conf: &'a BridgeConf,
    pod: &'a mut (dyn Pod + Send),
    host: &'a mut (dyn Netlink + Send),
    br: Link,
    created: &'a mut Created,
}

impl Add<'_> {
    fn ifname(&self) -> &str {
        &self.req.env.ifname
    }

    fn steps(
        &mut self,
        prev: Option<CniResult>,
        l2: L2Done,
        ipam_result: Option<CniResult>,
        early_masq: Option<Result<(), BridgeError>>,
    ) -> Result<CniResult, BridgeError> {
        let conf = self.conf;
        let env = self.req.env;
        let L2Done {
            container,
            host_veth,
            ..
        } = l2;
        let container_mac = container.mac.map(|m| m.to_string());
        let offset = prev.as_ref().map_or(0, |p| p.interfaces.len());
        let mut extra_interfaces = Vec::new();
        let mut ours = CniResult::default();
        if let Some(ipam_result) = ipam_result {
            if ipam_result.ips.is_empty() {
                return Err(BridgeError::IpamNoIps);
            }
            let plan = plan::plan(&ipam_result, conf, (offset + POD_IFINDEX_IN_RESULT) as u32);
            self.configure_pod(container.index, &plan)?;
            if conf.is_gateway {
                extra_interfaces.extend(self.configure_gateways(&plan)?);
            }
            // An interface failure wins the report over a masquerade failure, as in the Go
            // plugin, which masquerades last.
            match early_masq {
                Some(masq) => masq?,
                None if conf.ip_masq => {
                    self.created.masq = true;
                    setup_masq(self.sys, self.req, plan.ips.iter().map(|ip| ip.address))?;
                }
                None => {}
            }
            ours.ips = plan.ips;
            ours.routes = plan.routes;
            ours.dns = ipam_result.dns;
        } else if !conf.disable_container_interface {
            self.pod
                .netlink()
                .set_up(LinkRef::Index(container.index), true)
                .map_err(|e| {
                    BridgeError::kernel(format!("failed to set {:?} up", env.ifname), e)
                })?;
        }
        let host_veth = if conf.disable_container_interface {
            host_veth
        } else {
            self.wait_port_up(&host_veth)?
        };
        // Re-read: the bridge's MAC follows its lowest port's unless it was pinned.
        let br = self.host.link(LinkRef::Index(self.br.index)).map_err(|e| {
            BridgeError::kernel(format!("failed to look up bridge {:?}", conf.bridge), e)
        })?;
        if let Some(mtu) = conf.mtu.filter(|m| *m != br.mtu) {
            // Like the Go plugin, an existing bridge's MTU is not reconciled. With our port
            // attached it follows its smallest port unless an admin pinned it, so a
            // difference now means pods on this bridge get another path MTU: say so.
            eprintln!(
                "bridge: bridge {:?} has MTU {} with this pod attached, the network config \
                 asks for {mtu}: check the MTU of its other ports (ip link show master {})",
                br.name, br.mtu, br.name
            );
        }
        let mut interfaces = vec![
            Interface {
                name: br.name.clone(),
                mac: br.mac.map(|m| m.to_string()),
                ..Default::default()
            },
            Interface {
                name: host_veth.name.clone(),
                mac: host_veth.mac.map(|m| m.to_string()),
                ..Default::default()
            },
            Interface {
                name: env.ifname.clone(),
                mac: container_mac,
                sandbox: Some(env.netns.clone()),
                ..Default::default()
            },
        ];
        interfaces.extend(extra_interfaces);
        ours.interfaces = interfaces;
        if let Some(dns) = &conf.dns {
            ours.dns = dns.clone();
        }
        Ok(match prev {
            None => ours,
            // A chained bridge passes what came before through and appends its own.
            Some(mut p) => {
                p.interfaces.extend(ours.interfaces);
                p.ips.extend(ours.ips);
                p.routes.extend(ours.routes);
                if !ours.dns.is_empty() {
                    p.dns = ours.dns;
                }
                p
            }
        })
    }

    /// Container sysctls, addresses, link up, optional DAD settling, routes.
    fn configure_pod(&mut self, index: u32, plan: &L3Plan) -> Result<(), BridgeError> {
        let ifname = self.ifname().to_owned();
        let enable_dad = self.conf.enable_dad;
        if plan.has_v6() {
            enable_ipv6(&*self.pod, &ifname)?;
        }
        let nl = self.pod.netlink();
        for ip in &plan.ips {
            nl.add_address(index, ip.address).map_err(|e| {
                BridgeError::kernel(
                    format!("failed to add IP addr {} to {ifname:?}", ip.address),
                    e,
                )
            })?;
        }
        nl.set_up(LinkRef::Index(index), true)
            .map_err(|e| BridgeError::kernel(format!("failed to set {ifname:?} UP"), e))?;
        if enable_dad && plan.family_gateway(false).is_some() {
            self.settle_dad(index)?;
        }
        let nl = self.pod.netlink();
        for r in &plan.routes {
            let gw = r.gw.or_else(|| plan.family_gateway(r.dst.addr().is_ipv4()));
            let mut route = Route::new(r.dst).dev(index);
            if let Some(gw) = gw {
                route = route.via(gw);
            }
            if let Some(p) = r.priority.filter(|p| *p != 0) {
                route = route.metric(p);
            }
            if let Some(t) = r.table {
                route = route.table(t);
            }
            if let Some(s) = r.scope {
                route = route.scope(scope_of(s));
            }
            nl.add_route(&route, RouteMode::Append).map_err(|e| {
                let via = gw.map(|g| g.to_string()).unwrap_or_else(|| "<nil>".into());
                BridgeError::kernel(
                    format!(
                        "failed to add route '{} via {via} dev {ifname} metric {} (Scope: {}, Table: {})'",
                        r.dst,
                        r.priority.unwrap_or(0),
                        r.scope.unwrap_or(0),
                        r.table.unwrap_or(0)
                    ),
                    e,
                )
            })?;
        }
        Ok(())
    }

    /// With `enabledad`, waits until no IPv6 address of the interface is tentative.
    fn settle_dad(&mut self, index: u32) -> Result<(), BridgeError> {
        let ifname = self.ifname().to_owned();
        for attempt in 0..=DAD_POLLS {
            let addrs = self
                .pod
                .netlink()
                .addresses(Some(index), Some(Family::V6))
                .map_err(|e| {
                    BridgeError::kernel(format!("failed to list the addresses of {ifname:?}"), e)
                })?;
            if let Some(a) = addrs.iter().find(|a| a.flags.dadfailed()) {
                return Err(BridgeError::DadFailed {
                    ifname,
                    addr: a.addr.to_string(),
                });
            }
            match addrs.iter().find(|a| a.flags.tentative()) {
                None => return Ok(()),
                Some(a) if attempt == DAD_POLLS => {
                    return Err(BridgeError::DadTimeout {
                        ifname,
                        addr: a.addr.to_string(),
                        secs: (DAD_POLL * DAD_POLLS).as_secs(),
                    })
                }
                Some(_) => self.sys.sleep(DAD_POLL),
            }
        }
        Ok(())
    }

    /// Puts each gateway on the bridge (or on `<bridge>.<vlan>`), then turns forwarding
    /// on for its family. Returns the VLAN gateway interface when one is used.
    fn configure_gateways(&mut self, plan: &L3Plan) -> Result<Option<Interface>, BridgeError> {
        let mut target = self.br.clone();
        let mut vlan_if = None;
        if self.conf.vlan != 0 && !(plan.bridge_v4.is_empty() && plan.bridge_v6.is_empty()) {
            let link = self.ensure_vlan_interface()?;
            vlan_if = Some(Interface {
                name: link.name.clone(),
                mac: link.mac.map(|m| m.to_string()),
                ..Default::default()
            });
            target = link;
        }
        for (family, gws) in [(Family::V4, &plan.bridge_v4), (Family::V6, &plan.bridge_v6)] {
            for gw in gws {
                ensure_address(
                    &mut *self.host,
                    &target,
                    family,
                    *gw,
                    self.conf.force_address,
                )
                .map_err(|e| match (e, vlan_if.is_some()) {
                    (BridgeError::Kernel { what, source }, true) => BridgeError::Kernel {
                        what: format!("failed to set vlan interface for bridge with addr: {what}"),
                        source,
                    },
                    (other, _) => other,
                })?;
            }
            if !gws.is_empty() {
                self.sys
                    .host_sysctl()
                    .ensure(&SysctlKey::forwarding(family), "1")
                    .map_err(|e| BridgeError::kernel("failed to enable forwarding", e))?;
            }
        }
        Ok(vlan_if)
    }

    /// `<bridge>.<vlan>`: a veth in the host namespace whose other end is a bridge port
    /// in the VLAN, carrying the VLAN's gateway address. Shared by every pod of the VLAN,
    /// so never removed by a rollback.
    fn ensure_vlan_interface(&mut self) -> Result<Link, BridgeError> {
        let name = format!("{}.{}", self.br.name, self.conf.vlan);
        let fail = |what: &str, e| {
            BridgeError::kernel(
                format!("failed to create vlan interface: {what} {name:?}"),
                e,
            )
        };
        match self.host.link(LinkRef::Name(&name)) {
            Ok(l) => return Ok(l),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(fail("failed to find interface", e)),
        }
        if name.len() > 15 {
            return Err(BridgeError::kernel(
                format!("failed to create vlan interface {name:?}"),
                kernel::Error::Invalid {
                    what: "interface name",
                    value: name.clone(),
                    reason: "longer than 15 bytes; use a shorter bridge name".into(),
                },
            ));
        }
        let peer = format!("veth{:08x}", self.sys.random_u32());
        let spec = VethSpec {
            name: &name,
            mac: None,
            peer_name: &peer,
            peer_mac: None,
            mtu: Some(self.br.mtu).filter(|m| *m > 0),
            peer_netns: None,
        };
        match self.host.create_veth(&spec) {
            Ok(()) => {
                let port = self
                    .host
                    .link(LinkRef::Name(&peer))
                    .map_err(|e| fail("faild to create vlan gateway", e))?;
                self.attach_vlan_gateway_port(&port)?;
            }
            // A concurrent ADD created it first.
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(fail("faild to create vlan gateway", e)),
        }
        let link = self
            .host
            .link(LinkRef::Name(&name))
            .map_err(|e| fail("failed to lookup", e))?;
        self.host
            .set_up(LinkRef::Index(link.index), true)
            .map_err(|e| fail("failed to up", e))?;
        Ok(link)
    }

    fn attach_vlan_gateway_port(&mut self, port: &Link) -> Result<(), BridgeError> {
        self.host
            .set_master(LinkRef::Index(port.index), Some(self.br.index))
            .map_err(|e| {
                BridgeError::kernel(
                    format!(
                        "failed to connect {:?} to bridge {}",
                        port.name, self.br.name
                    ),
                    e,
                )
            })?;
        let access_only = BridgeConf {
            trunk: Vec::new(),
            ..self.conf.clone()
        };
        setup_port_vlans(&mut *self.host, port.index, &port.name, &access_only)?;
        self.host
            .set_up(LinkRef::Index(port.index), true)
            .map_err(|e| BridgeError::kernel(format!("failed to set {:?} up", port.name), e))
    }

    fn wait_port_up(&mut self, veth: &Link) -> Result<Link, BridgeError> {
        let mut state = OperState::Unknown;
        for ms in PORT_WAIT_MS {
            if ms > 0 {
                self.sys.sleep(Duration::from_millis(ms));
            }
            let link = self
                .host
                .link(LinkRef::Index(veth.index))
                .map_err(|e| BridgeError::kernel(format!("failed to lookup {:?}", veth.name), e))?;
            if link.oper_state == OperState::Up {
                return Ok(link);
            }
            state = link.oper_state;
        }
        Err(BridgeError::PortState {
            state: format!("{state:?}").to_lowercase(),
        })
    }
}

/// The container sysctls every L3 attachment gets, written best effort as the Go plugin
/// does (IPv6 may be disabled in the pod).
fn pod_base_sysctls(pod: &dyn Pod, ifname: &str, enable_dad: bool) -> Result<(), BridgeError> {
    let mut write = |s: &dyn kernel::Sysctl| {
        let set = |fam, leaf: &str, value: &str| {
            if let Ok(key) = SysctlKey::interface(fam, ifname, leaf) {
                let _ = s.write(&key, value);
            }
        };
        if enable_dad {
            set(Family::V6, "enhanced_dad", "1");
            set(Family::V6, "accept_dad", "1");
        } else {
            // No DAD: the address is usable at once (DAD delays pod start by 1-2 s).
            set(Family::V6, "accept_dad", "0");
        }
        // Gratuitous ARP when the link comes up, so neighbours drop stale entries of a
        // reused IP.
        set(Family::V4, "arp_notify", "1");
    };
    pod.with_sysctl(&mut write)
        .map_err(|e| BridgeError::kernel("failed to set sysctls in the pod namespace", e))
}

/// For an IPv6 address: IPv6 on for `lo` and the interface (written only when off), and
/// addresses kept when the link goes down (the Go plugin's `ConfigureIface`).
fn enable_ipv6(pod: &dyn Pod, ifname: &str) -> Result<(), BridgeError> {
    let mut failure: Option<BridgeError> = None;
    let mut write = |s: &dyn kernel::Sysctl| {
        for dev in ["lo", ifname] {
            let Ok(key) = SysctlKey::interface(Family::V6, dev, "disable_ipv6") else {
                continue;
            };
            match s.read(&key) {
                Ok(v) if v == "0" => {}
                Ok(_) => {
                    if let Err(e) = s.write(&key, "0") {
                        failure = Some(BridgeError::kernel(
                            format!("failed to enable IPv6 for interface {dev:?}"),
                            e,
                        ));
                    }
                }
                Err(e) => eprintln!("bridge: cannot read {key}: {e}"),
            }
        }
        if let Ok(key) = SysctlKey::interface(Family::V6, ifname, "keep_addr_on_down") {
            let _ = s.write(&key, "1");
        }
    };
    pod.with_sysctl(&mut write)
        .map_err(|e| BridgeError::kernel("failed to set sysctls in the pod namespace", e))?;
    failure.map_or(Ok(()), Err)
}

/// `scope` of a CNI route (`RT_SCOPE_*` number).
fn scope_of(s: u32) -> RouteScope {
    match s {
        0 => RouteScope::Universe,
        200 => RouteScope::Site,
        253 => RouteScope::Link,
        254 => RouteScope::Host,
        255 => RouteScope::Nowhere,
        other => RouteScope::Other(other.min(255) as u8),
    }
}

/// Access VLAN (PVID, untagged) and trunk VLANs (tagged) on a bridge port, after
/// removing the port's default VLANs unless `preserveDefaultVlan`.
fn setup_port_vlans(
    host: &mut dyn Netlink,
    port: u32,
    name: &str,
    conf: &BridgeConf,
) -> Result<(), BridgeError> {
    let vlan_err = |what: String, e: kernel::Error| {
        if e.errno() == Some(Errno::EOPNOTSUPP) {
            BridgeError::VlanUnsupported { what, source: e }
        } else {
            BridgeError::kernel(what, e)
        }
    };
    if !conf.preserve_default_vlan {
        let what = || format!("failed to remove default vlan on interface {name:?}");
        for v in host.bridge_vlans(port).map_err(|e| vlan_err(what(), e))? {
            match host.bridge_vlan_del(port, v.vid) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(vlan_err(what(), e)),
            }
        }
    }
    let mut wanted = Vec::new();
    if conf.vlan != 0 {
        wanted.push(BridgeVlan {
            vid: conf.vlan,
            pvid: true,
            untagged: true,
        });
    } else if !conf.trunk.is_empty() && !conf.preserve_default_vlan {
        // Untagged frames of a trunk port stay in VLAN 1 (reference §1.2 step 6).
        wanted.push(BridgeVlan {
            vid: 1,
            pvid: true,
            untagged: true,
        });
    }
    wanted.extend(conf.trunk.iter().map(|&vid| BridgeVlan {
        vid,
        pvid: false,
        untagged: false,
    }));
    for v in wanted {
        host.bridge_vlan_add(port, v).map_err(|e| {
            vlan_err(
                format!("failed to setup vlan tag {} on interface {name:?}", v.vid),
                e,
            )
        })?;
    }
    Ok(())
}

/// The Go plugin's `ensureAddr`: the same address/prefix already there is fine; any other
/// IPv4 address, or an overlapping IPv6 one, is a conflict (deleted with
/// `forceAddress`). EEXIST from a concurrent ADD is fine. After adding, the link's MAC
/// is set to its current value, which pins it: a bridge otherwise takes the lowest MAC
/// of its ports and changes it as pods come and go.
fn ensure_address(
    host: &mut dyn Netlink,
    link: &Link,
    family: Family,
    gw: IpNet,
    force: bool,
) -> Result<(), BridgeError> {
    let name = link.name.as_str();
    let existing = host
        .addresses(Some(link.index), Some(family))
        .map_err(|e| {
            BridgeError::kernel(format!("could not get list of IP addresses of {name:?}"), e)
        })?;
    for a in &existing {
        if a.addr == gw {
            return Ok(());
        }
        let overlaps = a.addr.contains(&gw.addr()) || gw.contains(&a.addr.addr());
        if family == Family::V4 || overlaps {
            if !force {
                return Err(BridgeError::AddressConflict {
                    bridge: name.to_owned(),
                    wanted: gw.to_string(),
                    existing: a.addr.to_string(),
                });
            }
            host.delete_address(link.index, a.addr).map_err(|e| {
                BridgeError::kernel(format!("could not remove IP address from {name:?}"), e)
            })?;
        }
    }
    match host.add_address(link.index, gw) {
        Ok(()) => {}
        Err(e) if e.is_exists() => {}
        Err(e) => {
            return Err(BridgeError::kernel(
                format!("failed to set bridge addr: could not add IP address to {name:?}"),
                e,
            ))
        }
    }
    // The MAC read when the ADD started, as the Go plugin pins it. A bridge whose last
    // port left has the all-zero MAC, which the kernel refuses to set (the Go plugin then
    // fails the ADD); the port this ADD just attached has given it a real one since.
    let usable = |m: &MacAddr| m.0 != [0; 6];
    let mac = match link.mac.filter(usable) {
        Some(m) => Some(m),
        None => host
            .link(LinkRef::Index(link.index))
            .map_err(|e| BridgeError::kernel(format!("failed to look up {name:?}"), e))?
            .mac
            .filter(usable),
    };
    if let Some(mac) = mac {
        host.set_mac(LinkRef::Index(link.index), mac)
            .map_err(|e| BridgeError::kernel(format!("could not set {name:?}'s mac"), e))?;
    }
    Ok(())
}
