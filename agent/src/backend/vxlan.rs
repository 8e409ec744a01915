//! The vxlan backend: device `flannel.<VNI>` and, per remote lease, a permanent
//! neighbour, an FDB entry and an onlink route, in flanneld's order (neighbour, FDB,
//! route: the route comes last so the kernel never has to resolve the gateway).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use kernel::netlink::{
    Family, FdbEntry, LinkKind, LinkRef, MacAddr, Neighbour, Netlink, Route, RouteMode, VxlanSpec,
    MAIN_TABLE, NUD_PERMANENT,
};
use kernel::sysctl::{Sysctl, SysctlKey};
use serde_json::Value;

use super::{
    direct_oif, ip4, ip6, kerr, routes_v6, same_route, v4_dst, v6_dst, Backend, BackendError,
    ExtIface, ReconcileReport, RouteCache,
};
use crate::config::BackendConfig;
use crate::lease::{vxlan_backend_data, Lease};
use crate::log;

/// VXLAN over IPv4: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const OVERHEAD: u32 = 50;
/// VXLAN over IPv6: outer IPv6 (40) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const OVERHEAD_V6: u32 = 70;
/// Linux's default VXLAN UDP port when none is configured.
pub const KERNEL_DEFAULT_PORT: u16 = 8472;
/// What one peer needs in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerPlan {
    pub route: Route,
    /// None with DirectRouting to an on-link peer.
    pub neighbour: Option<Neighbour>,
    pub fdb: Option<FdbEntry>,
}

/// The IPv6 device `flannel-v6.<VNI>` (dual stack).
struct Vxlan6 {
    network: Ipv6Net,
    name: String,
    index: u32,
    mac: MacAddr,
    mtu: u32,
    own: Option<Ipv6Net>,
}

pub struct VxlanBackend<N: Netlink> {
    nl: N,
    sysctl: Box<dyn Sysctl + Send>,
    cfg: BackendConfig,
    network: Ipv4Net,
    ext: ExtIface,
    name: String,
    /// MAC to give a newly created device (persisted from an earlier run).
    mac_hint: Option<MacAddr>,
    /// Where the device MAC is persisted, so a recreated device (reboot) keeps it.
    mac_file: Option<std::path::PathBuf>,
    index: u32,
    mac: MacAddr,
    mtu: u32,
    own: Option<Ipv4Net>,
    routes_cache: RouteCache,
    v6: Option<Vxlan6>,
}

/// A random locally administered unicast MAC (what flanneld generates).
pub fn random_mac() -> MacAddr {
    let mut b = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    if b == [0; 6] {
        // No /dev/urandom: time and pid still differ between nodes.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id()) << 64;
        b.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    b[0] = (b[0] & 0xfe) | 0x02;
    MacAddr(b)
}

impl<N: Netlink + Send> VxlanBackend<N> {
    pub fn new(
        nl: N,
        sysctl: Box<dyn Sysctl + Send>,
        cfg: BackendConfig,
        network: Ipv4Net,
        ext: ExtIface,
        mac_hint: Option<MacAddr>,
    ) -> Self {
        let name = format!("flannel.{}", cfg.vni);
        let mtu = cfg.mtu.unwrap_or(ext.mtu).saturating_sub(OVERHEAD);
        VxlanBackend {
            nl,
            sysctl,
            cfg,
            network,
            ext,
            name,
            mac_hint,
            mac_file: None,
            index: 0,
            mac: MacAddr([0; 6]),
            mtu,
            own: None,
            routes_cache: RouteCache::default(),
            v6: None,
        }
    }

    /// Dual stack: also runs the IPv6 overlay of `network` on a second device,
    /// `flannel-v6.<VNI>`, sourced from the uplink's IPv6 address (flanneld's
    /// layout). Its MTU is the underlay's minus [`OVERHEAD_V6`].
    pub fn with_ipv6(mut self, network: Ipv6Net) -> Self {
        self.v6 = Some(Vxlan6 {
            network,
            name: format!("flannel-v6.{}", self.cfg.vni),
            index: 0,
            mac: MacAddr([0; 6]),
            mtu: self
                .cfg
                .mtu
                .unwrap_or(self.ext.mtu)
                .saturating_sub(OVERHEAD_V6),
            own: None,
        });
        self
    }

    /// The IPv6 device's name and MAC (valid after `prepare`), in dual stack.
    pub fn device_v6(&self) -> Option<(&str, MacAddr)> {
        self.v6.as_ref().map(|v| (v.name.as_str(), v.mac))
    }

    fn mac_file_v6(&self) -> Option<std::path::PathBuf> {
        self.mac_file.as_ref().map(|p| {
            let mut name = p.file_name().unwrap_or_default().to_os_string();
            name.push(".v6");
            p.with_file_name(name)
        })
    }

    /// Persists the device MAC in `path` after `prepare` (read it back with
    /// [`read_mac_file`] and pass it as the hint on the next start).
    pub fn with_mac_file(mut self, path: std::path::PathBuf) -> Self {
        self.mac_file = Some(path);
        self
    }

    pub fn device(&self) -> &str {
        &self.name
    }

    /// The device's MAC (valid after `prepare`).
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    fn compatible(&self, link: &kernel::netlink::Link, local: IpAddr) -> Result<(), String> {
        if link.kind != Some(LinkKind::Vxlan) {
            return Err(format!("kind {:?}", link.kind));
        }
        let Some(vx) = &link.vxlan else {
            return Err("no vxlan attributes".into());
        };
        let want_port = self.cfg.port.unwrap_or(KERNEL_DEFAULT_PORT);
        let checks = [
            (
                vx.vni == self.cfg.vni,
                format!("VNI {} (want {})", vx.vni, self.cfg.vni),
            ),
            (
                vx.local == Some(local),
                format!("local {:?} (want {local})", vx.local),
            ),
            (
                vx.underlying == Some(self.ext.index),
                format!("dev #{:?} (want #{})", vx.underlying, self.ext.index),
            ),
            (
                vx.port.unwrap_or(KERNEL_DEFAULT_PORT) == want_port,
                format!("port {:?} (want {want_port})", vx.port),
            ),
            (
                vx.learning.is_none_or(|l| l == self.cfg.learning),
                format!("learning {:?} (want {})", vx.learning, self.cfg.learning),
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(why),
            None => Ok(()),
        }
    }

    fn create(&mut self) -> Result<(), BackendError> {
        let mac = self.mac_hint.unwrap_or_else(random_mac);
        let name = self.name.clone();
        self.create_dev(&name, ip4(self.ext.addr), self.mtu, mac)
    }

    fn create_dev(
        &mut self,
        name: &str,
        local: IpAddr,
        mtu: u32,
        mac: MacAddr,
    ) -> Result<(), BackendError> {
        let spec = VxlanSpec {
            name,
            vni: self.cfg.vni,
            local: Some(local),
            port: self.cfg.port,
            learning: self.cfg.learning,
            underlying: Some(self.ext.index),
            mtu: Some(mtu),
            mac: Some(mac),
        };
        self.nl
            .create_vxlan(&spec)
            .map_err(kerr("create vxlan device", name.to_owned()))
    }

    /// Creates or adopts the IPv6 device (dual stack only).
    fn prepare_v6(&mut self) -> Result<(), BackendError> {
        let Some(v6) = &self.v6 else { return Ok(()) };
        let (name, mtu) = (v6.name.clone(), v6.mtu);
        let local = ip6(self.ext.addr6.ok_or_else(|| {
            BackendError::Setup(format!(
                "{} has no global IPv6 address to run {name} over (use an interface with one)",
                self.ext.name
            ))
        })?);
        let mac_file = self.mac_file_v6();
        let hint = mac_file.as_deref().and_then(read_mac_file);
        match self.nl.link(LinkRef::Name(&name)) {
            Ok(link) => match self.compatible(&link, local) {
                Ok(()) => log::info(&format!("reusing existing vxlan device {name}")),
                Err(why) => {
                    log::warn(&format!(
                        "vxlan device {name} is incompatible ({why}); recreating it"
                    ));
                    self.nl
                        .delete_link(LinkRef::Name(&name))
                        .map_err(kerr("delete incompatible", name.clone()))?;
                    self.create_dev(&name, local, mtu, hint.unwrap_or_else(random_mac))?;
                }
            },
            Err(e) if e.is_not_found() => {
                self.create_dev(&name, local, mtu, hint.unwrap_or_else(random_mac))?
            }
            Err(e) => return Err(kerr("get", name.clone())(e)),
        }
        let link = self
            .nl
            .link(LinkRef::Name(&name))
            .map_err(kerr("get", name.clone()))?;
        let mac = link.mac.ok_or_else(|| {
            BackendError::Setup(format!("vxlan device {name} has no MAC address"))
        })?;
        if link.mtu != mtu {
            self.nl
                .set_mtu(LinkRef::Index(link.index), mtu)
                .map_err(kerr("set mtu of", name.clone()))?;
        }
        // No router advertisements, and no DAD for the /128 (nobody else can hold it).
        for (knob, value) in [("accept_ra", "0"), ("accept_dad", "0")] {
            if let Ok(key) = SysctlKey::interface(Family::V6, &name, knob) {
                if self.sysctl.read(&key).ok().as_deref() != Some(value) {
                    if let Err(e) = self.sysctl.write(&key, value) {
                        log::debug(&format!("{e}"));
                    }
                }
            }
        }
        if let Some(path) = &mac_file {
            persist_mac(path, mac)?;
        }
        if let Some(v6) = self.v6.as_mut() {
            v6.index = link.index;
            v6.mac = mac;
        }
        Ok(())
    }

    /// The IPv6 entries `peer` needs (dual stack, vxlan peers with an IPv6 part).
    fn plan_v6(&self, peer: &Lease) -> Result<Option<PeerPlan>, BackendError> {
        let Some(v6) = &self.v6 else { return Ok(None) };
        if peer.attrs.backend_type != "vxlan" {
            return Ok(None);
        }
        let (Some(subnet), Some(public)) = (peer.key.v6, peer.attrs.public_ipv6) else {
            return Ok(None);
        };
        let Some(mac) = peer.attrs.vtep_mac_v6() else {
            return Err(BackendError::Setup(format!(
                "peer {subnet}: vxlan lease without a valid BackendV6Data.VtepMAC"
            )));
        };
        let gw = ip6(subnet.network());
        Ok(Some(PeerPlan {
            route: Route::new(IpNet::V6(subnet)).via(gw).dev(v6.index).onlink(),
            neighbour: Some(Neighbour {
                ifindex: v6.index,
                ip: gw,
                mac: Some(mac),
                state: NUD_PERMANENT,
            }),
            fdb: Some(FdbEntry {
                ifindex: v6.index,
                mac,
                dst: Some(ip6(public)),
            }),
        }))
    }

    fn owns_route_v6(&self, r: &Route) -> bool {
        let (Some(v6), Some(dst)) = (&self.v6, v6_dst(r)) else {
            return false;
        };
        r.table == MAIN_TABLE
            && v6.network.contains(&dst)
            && Some(dst) != v6.own
            && r.oif == Some(v6.index)
    }

    /// Makes one device's routes, FDB and neighbours match `plans`.
    #[allow(clippy::too_many_arguments)]
    fn sync(
        &mut self,
        plans: &[(Ipv4Net, PeerPlan)],
        routes: &[Route],
        owned: &[Route],
        index: u32,
        family: Family,
        name: &str,
        report: &mut ReconcileReport,
    ) -> Result<(), BackendError> {
        let neighbours = self
            .nl
            .neighbours(Some(index), Some(family))
            .map_err(kerr("list neighbours of", name.to_owned()))?;
        let fdb = self
            .nl
            .fdb(index)
            .map_err(kerr("list fdb of", name.to_owned()))?;

        // Removals first, routes before the entries they rely on.
        for r in owned {
            if !plans.iter().any(|(_, p)| same_route(r, &p.route)) {
                ignore_missing(self.nl.delete_route(r))
                    .map_err(kerr("delete stale", r.to_string()))?;
                report.removed += 1;
            }
        }
        let want_fdb: BTreeSet<(MacAddr, Option<IpAddr>)> = plans
            .iter()
            .filter_map(|(_, p)| p.fdb.as_ref())
            .map(|f| (f.mac, f.dst))
            .collect();
        for f in &fdb {
            // The all-zero entry is a default destination someone configured on purpose.
            if f.mac != MacAddr([0; 6]) && !want_fdb.contains(&(f.mac, f.dst)) {
                ignore_missing(self.nl.delete_fdb(f))
                    .map_err(kerr("delete stale fdb entry", f.mac.to_string()))?;
                report.removed += 1;
            }
        }
        let want_neigh: BTreeMap<IpAddr, Option<MacAddr>> = plans
            .iter()
            .filter_map(|(_, p)| p.neighbour.as_ref())
            .map(|n| (n.ip, n.mac))
            .collect();
        for n in neighbours.iter().filter(|n| n.state & NUD_PERMANENT != 0) {
            if want_neigh.get(&n.ip) != Some(&n.mac) {
                ignore_missing(self.nl.delete_neighbour(n))
                    .map_err(kerr("delete stale neighbour", n.ip.to_string()))?;
                report.removed += 1;
            }
        }

        for (subnet, plan) in plans {
            let neigh_ok = plan.neighbour.as_ref().is_none_or(|w| {
                neighbours
                    .iter()
                    .any(|n| n.ip == w.ip && n.mac == w.mac && n.state & NUD_PERMANENT != 0)
            });
            let fdb_ok = plan
                .fdb
                .as_ref()
                .is_none_or(|w| fdb.iter().any(|f| f.mac == w.mac && f.dst == w.dst));
            let route_ok = routes.iter().any(|r| same_route(r, &plan.route));
            if neigh_ok && fdb_ok && route_ok {
                continue;
            }
            match self.apply(plan) {
                Ok(()) => report.added += 1,
                Err(e) => report.failed.push((*subnet, e.to_string())),
            }
        }
        Ok(())
    }

    fn routes(&mut self, fresh: bool) -> Result<Vec<Route>, BackendError> {
        self.routes_cache.get(&mut self.nl, fresh)
    }

    /// The entries `peer` needs, or why it gets none.
    fn plan(&mut self, peer: &Lease) -> Result<Option<PeerPlan>, BackendError> {
        if peer.attrs.backend_type != "vxlan" {
            return Ok(None);
        }
        let subnet = peer.key.v4;
        let public = peer.attrs.public_ip;
        if self.cfg.direct_routing {
            let routes = self.routes(false)?;
            if let Ok(oif) = direct_oif(&routes, public) {
                return Ok(Some(PeerPlan {
                    route: Route::new(IpNet::V4(subnet)).via(ip4(public)).dev(oif),
                    neighbour: None,
                    fdb: None,
                }));
            }
        }
        let Some(mac) = peer.attrs.vtep_mac() else {
            return Err(BackendError::Setup(format!(
                "peer {subnet}: vxlan lease without a valid BackendData.VtepMAC"
            )));
        };
        let gw = ip4(subnet.network());
        Ok(Some(PeerPlan {
            route: Route::new(IpNet::V4(subnet))
                .via(gw)
                .dev(self.index)
                .onlink(),
            neighbour: Some(Neighbour {
                ifindex: self.index,
                ip: gw,
                mac: Some(mac),
                state: NUD_PERMANENT,
            }),
            fdb: Some(FdbEntry {
                ifindex: self.index,
                mac,
                dst: Some(ip4(public)),
            }),
        }))
    }

    fn apply(&mut self, plan: &PeerPlan) -> Result<(), BackendError> {
        let subnet = plan.route.dst;
        if let Some(n) = &plan.neighbour {
            self.nl
                .add_neighbour(n)
                .map_err(kerr("add neighbour", format!("{} for peer {subnet}", n.ip)))?;
        }
        if let Some(f) = &plan.fdb {
            if let Err(e) = self.nl.add_fdb(f) {
                if let Some(n) = &plan.neighbour {
                    let _ = self.nl.delete_neighbour(n);
                }
                return Err(kerr(
                    "add fdb entry",
                    format!("{} for peer {subnet}", f.mac),
                )(e));
            }
        }
        if let Err(e) = self.nl.add_route(&plan.route, RouteMode::Replace) {
            if let Some(f) = &plan.fdb {
                let _ = self.nl.delete_fdb(f);
            }
            if let Some(n) = &plan.neighbour {
                let _ = self.nl.delete_neighbour(n);
            }
            return Err(kerr("add", plan.route.to_string())(e));
        }
        Ok(())
    }

    /// Whether a listed route is one this backend manages.
    fn owns_route(&self, r: &Route) -> bool {
        let Some(dst) = v4_dst(r) else { return false };
        r.table == MAIN_TABLE
            && self.network.contains(&dst)
            && Some(dst) != self.own
            && (r.oif == Some(self.index) || (r.gateway.is_some() && r.oif == Some(self.ext.index)))
    }
}

fn ignore_missing(r: kernel::Result<()>) -> kernel::Result<()> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

impl<N: Netlink + Send> Backend for VxlanBackend<N> {
    fn backend_type(&self) -> &'static str {
        "vxlan"
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn prepare(&mut self) -> Result<Option<Value>, BackendError> {
        match self.nl.link(LinkRef::Name(&self.name)) {
            Ok(link) => match self.compatible(&link, ip4(self.ext.addr)) {
                // Adopted as is: same MAC, entries and traffic keep flowing.
                Ok(()) => log::info(&format!("reusing existing vxlan device {}", self.name)),
                Err(why) => {
                    log::warn(&format!(
                        "vxlan device {} is incompatible ({why}); recreating it",
                        self.name
                    ));
                    self.nl
                        .delete_link(LinkRef::Name(&self.name))
                        .map_err(kerr("delete incompatible", self.name.clone()))?;
                    self.create()?;
                }
            },
            Err(e) if e.is_not_found() => self.create()?,
            Err(e) => return Err(kerr("get", self.name.clone())(e)),
        }
        let link = self
            .nl
            .link(LinkRef::Name(&self.name))
            .map_err(kerr("get", self.name.clone()))?;
        self.index = link.index;
        self.mac = link.mac.ok_or_else(|| {
            BackendError::Setup(format!("vxlan device {} has no MAC address", self.name))
        })?;
        if link.mtu != self.mtu {
            // flanneld never corrects an adopted device's MTU; an underlay MTU change
            // would otherwise need a manual device deletion.
            self.nl
                .set_mtu(LinkRef::Index(self.index), self.mtu)
                .map_err(kerr("set mtu of", self.name.clone()))?;
        }
        // No router advertisements on the overlay device; IPv6 may be disabled, in
        // which case there is nothing to turn off.
        if let Ok(key) = SysctlKey::interface(Family::V6, &self.name, "accept_ra") {
            if self.sysctl.read(&key).ok().as_deref() != Some("0") {
                if let Err(e) = self.sysctl.write(&key, "0") {
                    log::debug(&format!("{e}"));
                }
            }
        }
        if let Some(path) = &self.mac_file {
            persist_mac(path, self.mac)?;
        }
        self.prepare_v6()?;
        Ok(Some(vxlan_backend_data(self.cfg.vni, self.mac)))
    }

    fn backend_v6_data(&self) -> Option<Value> {
        self.v6
            .as_ref()
            .map(|v6| vxlan_backend_data(self.cfg.vni, v6.mac))
    }

    fn configure_own_v6(&mut self, own: Ipv6Net) -> Result<(), BackendError> {
        let Some(v6) = self.v6.as_mut() else {
            return Ok(());
        };
        v6.own = Some(own);
        let (index, name, mac) = (v6.index, v6.name.clone(), v6.mac);
        let want = IpNet::V6(
            Ipv6Net::new(own.network(), 128).map_err(|e| BackendError::Setup(e.to_string()))?,
        );
        let addrs = self
            .nl
            .addresses(Some(index), Some(Family::V6))
            .map_err(kerr("list addresses of", name.clone()))?;
        let mut present = false;
        for a in addrs {
            if a.addr == want {
                present = true;
            } else if let IpAddr::V6(ip) = a.addr.addr() {
                // flanneld replaces every address but the link-local one.
                if (ip.segments()[0] & 0xffc0) != 0xfe80 {
                    self.nl.delete_address(index, a.addr).map_err(kerr(
                        "delete stale address",
                        format!("{} on {name}", a.addr),
                    ))?;
                }
            }
        }
        if !present {
            self.nl
                .add_address(index, want)
                .map_err(kerr("add address", format!("{want} on {name}")))?;
        }
        let link = self
            .nl
            .link(LinkRef::Index(index))
            .map_err(kerr("get", name.clone()))?;
        if !link.up {
            self.nl
                .set_up(LinkRef::Index(index), true)
                .map_err(kerr("set up", name.clone()))?;
        }
        let now = self
            .nl
            .link(LinkRef::Index(index))
            .map_err(kerr("get", name.clone()))?;
        if now.mac != Some(mac) {
            return Err(BackendError::Setup(format!(
                "MAC of {name} changed from {mac} to {:?} after creation (udev MACAddressPolicy?)",
                now.mac
            )));
        }
        Ok(())
    }

    fn configure_own(&mut self, own: Ipv4Net) -> Result<(), BackendError> {
        self.own = Some(own);
        let want = IpNet::V4(
            Ipv4Net::new(own.network(), 32).map_err(|e| BackendError::Setup(e.to_string()))?,
        );
        let addrs = self
            .nl
            .addresses(Some(self.index), Some(Family::V4))
            .map_err(kerr("list addresses of", self.name.clone()))?;
        let mut present = false;
        for a in addrs {
            if a.addr == want {
                present = true;
            } else if let IpAddr::V4(ip) = a.addr.addr() {
                if self.network.contains(&ip) {
                    self.nl.delete_address(self.index, a.addr).map_err(kerr(
                        "delete stale address",
                        format!("{} on {}", a.addr, self.name),
                    ))?;
                }
            }
        }
        if !present {
            self.nl
                .add_address(self.index, want)
                .map_err(kerr("add address", format!("{want} on {}", self.name)))?;
        }
        let link = self
            .nl
            .link(LinkRef::Index(self.index))
            .map_err(kerr("get", self.name.clone()))?;
        if !link.up {
            self.nl
                .set_up(LinkRef::Index(self.index), true)
                .map_err(kerr("set up", self.name.clone()))?;
        }
        // udev/systemd (MACAddressPolicy=random) may rewrite the MAC after creation;
        // peers would then send to a MAC nobody has.
        let now = self
            .nl
            .link(LinkRef::Index(self.index))
            .map_err(kerr("get", self.name.clone()))?;
        if now.mac != Some(self.mac) {
            return Err(BackendError::Setup(format!(
                "MAC of {} changed from {} to {:?} after creation (udev MACAddressPolicy?)",
                self.name, self.mac, now.mac
            )));
        }
        Ok(())
    }

    fn add_peer(&mut self, peer: &Lease) -> Result<(), BackendError> {
        match self.plan(peer)? {
            Some(plan) => {
                self.apply(&plan)?;
                match self.plan_v6(peer)? {
                    Some(plan6) => self.apply(&plan6),
                    None => Ok(()),
                }
            }
            None => {
                log::debug(&format!(
                    "ignoring peer {} of backend type {:?}",
                    peer.key.v4, peer.attrs.backend_type
                ));
                Ok(())
            }
        }
    }

    fn remove_peer(&mut self, peer: &Lease) -> Result<(), BackendError> {
        if let (Some(v6), Some(subnet6)) = (&self.v6, peer.key.v6) {
            let index6 = v6.index;
            let gw6 = ip6(subnet6.network());
            let route = Route::new(IpNet::V6(subnet6)).via(gw6).dev(index6);
            ignore_missing(self.nl.delete_route(&route))
                .map_err(kerr("delete", route.to_string()))?;
            let mac6 = peer.attrs.vtep_mac_v6();
            if let (Some(mac), Some(public)) = (mac6, peer.attrs.public_ipv6) {
                let fdb = FdbEntry {
                    ifindex: index6,
                    mac,
                    dst: Some(ip6(public)),
                };
                ignore_missing(self.nl.delete_fdb(&fdb))
                    .map_err(kerr("delete fdb entry", mac.to_string()))?;
            }
            let neigh = Neighbour {
                ifindex: index6,
                ip: gw6,
                mac: mac6,
                state: NUD_PERMANENT,
            };
            ignore_missing(self.nl.delete_neighbour(&neigh))
                .map_err(kerr("delete neighbour", gw6.to_string()))?;
        }
        let subnet = IpNet::V4(peer.key.v4);
        let gw = ip4(peer.key.v4.network());
        let public = ip4(peer.attrs.public_ip);
        // Both shapes: the peer may have been programmed before a DirectRouting or
        // address change.
        let tunnel = Route::new(subnet).via(gw).dev(self.index);
        ignore_missing(self.nl.delete_route(&tunnel))
            .map_err(kerr("delete", tunnel.to_string()))?;
        if !peer.attrs.public_ip.is_unspecified() {
            let direct = Route::new(subnet).via(public);
            ignore_missing(self.nl.delete_route(&direct))
                .map_err(kerr("delete", direct.to_string()))?;
        }
        if let Some(mac) = peer.attrs.vtep_mac() {
            let fdb = FdbEntry {
                ifindex: self.index,
                mac,
                dst: Some(public),
            };
            ignore_missing(self.nl.delete_fdb(&fdb))
                .map_err(kerr("delete fdb entry", mac.to_string()))?;
        }
        let neigh = Neighbour {
            ifindex: self.index,
            ip: gw,
            mac: peer.attrs.vtep_mac(),
            state: NUD_PERMANENT,
        };
        ignore_missing(self.nl.delete_neighbour(&neigh))
            .map_err(kerr("delete neighbour", gw.to_string()))?;
        Ok(())
    }

    fn reconcile(
        &mut self,
        peers: &BTreeMap<Ipv4Net, Lease>,
    ) -> Result<ReconcileReport, BackendError> {
        let mut report = ReconcileReport::default();
        self.routes_cache.invalidate();
        let mut plans = Vec::new();
        let mut plans6 = Vec::new();
        for (subnet, lease) in peers {
            match self.plan(lease) {
                Ok(Some(p)) => plans.push((*subnet, p)),
                Ok(None) => {}
                Err(e) => report.failed.push((*subnet, e.to_string())),
            }
            match self.plan_v6(lease) {
                Ok(Some(p)) => plans6.push((*subnet, p)),
                Ok(None) => {}
                Err(e) => report.failed.push((*subnet, e.to_string())),
            }
        }
        let routes = self.routes(true)?;
        let owned: Vec<Route> = routes
            .iter()
            .filter(|r| self.owns_route(r))
            .cloned()
            .collect();
        let (index, name) = (self.index, self.name.clone());
        self.sync(
            &plans,
            &routes,
            &owned,
            index,
            Family::V4,
            &name,
            &mut report,
        )?;
        if let Some((index6, name6)) = self.v6.as_ref().map(|v| (v.index, v.name.clone())) {
            let routes6 = routes_v6(&mut self.nl)?;
            let owned6: Vec<Route> = routes6
                .iter()
                .filter(|r| self.owns_route_v6(r))
                .cloned()
                .collect();
            self.sync(
                &plans6,
                &routes6,
                &owned6,
                index6,
                Family::V6,
                &name6,
                &mut report,
            )?;
        }
        Ok(report)
    }
}

/// Writes `mac` to `path` unless it already holds it.
fn persist_mac(path: &std::path::Path, mac: MacAddr) -> Result<(), BackendError> {
    if read_mac_file(path) != Some(mac) {
        crate::subnet_env::write_atomic(path, format!("{mac}\n").as_bytes(), 0o644)
            .map_err(|e| BackendError::Setup(format!("persist VTEP MAC: {e}")))?;
    }
    Ok(())
}

/// The MAC persisted by an earlier run, if the file holds one.
pub fn read_mac_file(path: &std::path::Path) -> Option<MacAddr> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Peer subnet base (gateway of the onlink route and neighbour IP).
pub fn peer_gateway(subnet: Ipv4Net) -> Ipv4Addr {
    subnet.network()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{LeaseAttrs, SubnetKey};
    use kernel::fake::{FakeKernel, FakeNetlink};
    use kernel::netlink::{BridgeSpec, VethSpec};

    const NS: &str = "node";

    fn ext(nl: &mut FakeNetlink) -> ExtIface {
        // A veth stands in for the uplink (the fake has no physical links).
        nl.create_veth(&VethSpec {
            name: "eth0",
            peer_name: "eth0-peer",
            mtu: Some(1500),
            ..Default::default()
        })
        .unwrap();
        let l = nl.link(LinkRef::Name("eth0")).unwrap();
        nl.add_address(l.index, "192.0.2.1/24".parse().unwrap())
            .unwrap();
        nl.add_route(
            &Route::new("192.0.2.0/24".parse().unwrap()).dev(l.index),
            RouteMode::Create,
        )
        .unwrap();
        ExtIface {
            index: l.index,
            name: "eth0".into(),
            addr: "192.0.2.1".parse().unwrap(),
            public_ip: "192.0.2.1".parse().unwrap(),
            addr6: None,
            public_ipv6: None,
            mtu: 1500,
        }
    }

    fn cfg(direct: bool) -> BackendConfig {
        BackendConfig {
            kind: "vxlan".into(),
            direct_routing: direct,
            ..BackendConfig::default()
        }
    }

    fn peer(subnet: &str, ip: &str, mac: &str) -> Lease {
        Lease {
            key: SubnetKey::v4(subnet.parse().unwrap()),
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                public_ipv6: None,
                backend_type: "vxlan".into(),
                backend_data: Some(vxlan_backend_data(1, mac.parse().unwrap())),
                backend_v6_data: None,
            },
            expiration: None,
            ttl_handle: 0,
        }
    }

    fn setup(direct: bool) -> (FakeKernel, VxlanBackend<FakeNetlink>) {
        let k = FakeKernel::new();
        let mut nl = k.netlink(NS);
        let e = ext(&mut nl);
        let mut b = VxlanBackend::new(
            nl,
            Box::new(k.sysctl(NS)),
            cfg(direct),
            "10.244.0.0/16".parse().unwrap(),
            e,
            Some("0a:00:00:00:00:01".parse().unwrap()),
        );
        let data = b.prepare().unwrap().unwrap();
        assert_eq!(
            data,
            serde_json::json!({"VNI": 1, "VtepMAC": "0a:00:00:00:00:01"})
        );
        b.configure_own("10.244.1.0/24".parse().unwrap()).unwrap();
        (k, b)
    }

    fn calls_since(k: &FakeKernel, from: usize) -> Vec<String> {
        k.calls()[from..]
            .iter()
            .map(|c| c.trim_start_matches("node: ").to_owned())
            .collect()
    }

    #[test]
    fn device_is_created_like_flanneld() {
        let (k, b) = setup(false);
        let snap = k.snapshot(NS);
        let dev = snap.links.values().find(|l| l.name == "flannel.1").unwrap();
        assert_eq!(dev.mtu, 1450);
        assert!(dev.up);
        assert_eq!(dev.mac, Some("0a:00:00:00:00:01".parse().unwrap()));
        assert_eq!(b.mtu(), 1450);
        let addrs: Vec<String> = snap
            .addresses
            .iter()
            .filter(|a| a.ifindex == dev.index)
            .map(|a| a.addr.to_string())
            .collect();
        assert_eq!(addrs, vec!["10.244.1.0/32"]);
        let calls = k.calls();
        let create = calls.iter().find(|c| c.contains("create_vxlan")).unwrap();
        assert!(create.contains("flannel.1"), "{create}");
        assert_eq!(
            snap.sysctls
                .get("net/ipv6/conf/flannel.1/accept_ra")
                .map(String::as_str),
            Some("0")
        );
    }

    #[test]
    fn peer_add_order_and_removal() {
        let (k, mut b) = setup(false);
        let p = peer("10.244.7.0/24", "192.0.2.7", "0a:00:00:00:00:07");
        let from = k.calls().len();
        b.add_peer(&p).unwrap();
        let calls = calls_since(&k, from);
        let methods: Vec<&str> = calls.iter().map(|c| c.split(' ').next().unwrap()).collect();
        assert_eq!(
            methods,
            ["add_neighbour", "add_fdb", "add_route"],
            "{calls:?}"
        );
        let snap = k.snapshot(NS);
        let idx = snap
            .links
            .values()
            .find(|l| l.name == "flannel.1")
            .unwrap()
            .index;
        assert!(snap.neighbours.contains(&Neighbour {
            ifindex: idx,
            ip: "10.244.7.0".parse().unwrap(),
            mac: Some("0a:00:00:00:00:07".parse().unwrap()),
            state: NUD_PERMANENT
        }));
        assert!(snap.fdb.contains(&FdbEntry {
            ifindex: idx,
            mac: "0a:00:00:00:00:07".parse().unwrap(),
            dst: Some("192.0.2.7".parse().unwrap())
        }));
        let route = snap
            .routes
            .iter()
            .find(|r| r.dst.to_string() == "10.244.7.0/24")
            .unwrap();
        assert_eq!(route.gateway, Some("10.244.7.0".parse().unwrap()));
        assert_eq!(route.oif, Some(idx));
        assert!(route.onlink);

        // Other backends' leases are ignored.
        let mut hg = peer("10.244.8.0/24", "192.0.2.8", "0a:00:00:00:00:08");
        hg.attrs.backend_type = "host-gw".into();
        b.add_peer(&hg).unwrap();

        b.remove_peer(&p).unwrap();
        let snap = k.snapshot(NS);
        assert!(snap.neighbours.iter().all(|n| n.ifindex != idx));
        assert!(snap.fdb.is_empty());
        assert!(!snap
            .routes
            .iter()
            .any(|r| r.dst.to_string().starts_with("10.244.")));
        // Removing twice is fine.
        b.remove_peer(&p).unwrap();
    }

    #[test]
    fn failed_fdb_rolls_back_the_neighbour() {
        let (k, mut b) = setup(false);
        k.fail_next("add_fdb", nix::errno::Errno::EINVAL);
        let p = peer("10.244.7.0/24", "192.0.2.7", "0a:00:00:00:00:07");
        assert!(b.add_peer(&p).is_err());
        let snap = k.snapshot(NS);
        assert!(snap.neighbours.is_empty() && snap.fdb.is_empty());
        assert!(!snap
            .routes
            .iter()
            .any(|r| r.dst.to_string() == "10.244.7.0/24"));
    }

    #[test]
    fn reconcile_removes_stale_and_leaves_correct_entries_alone() {
        let (k, mut b) = setup(false);
        let keep = peer("10.244.7.0/24", "192.0.2.7", "0a:00:00:00:00:07");
        let gone = peer("10.244.9.0/24", "192.0.2.9", "0a:00:00:00:00:09");
        b.add_peer(&keep).unwrap();
        b.add_peer(&gone).unwrap();
        // A route the operator added elsewhere must survive.
        let mut nl = k.netlink(NS);
        nl.add_route(
            &Route::new("10.99.0.0/16".parse().unwrap()).dev(b.ext.index),
            RouteMode::Create,
        )
        .unwrap();

        let peers: BTreeMap<_, _> = [(keep.key.v4, keep.clone())].into();
        let from = k.calls().len();
        let report = b.reconcile(&peers).unwrap();
        assert_eq!(report.removed, 3, "{report:?}");
        assert_eq!(report.added, 0, "{report:?}");
        let calls = calls_since(&k, from);
        assert!(calls.iter().all(|c| c.starts_with("delete_")), "{calls:?}");
        let snap = k.snapshot(NS);
        assert_eq!(snap.fdb.len(), 1);
        assert_eq!(snap.neighbours.len(), 1);
        assert!(snap
            .routes
            .iter()
            .any(|r| r.dst.to_string() == "10.99.0.0/16"));
        assert!(!snap
            .routes
            .iter()
            .any(|r| r.dst.to_string() == "10.244.9.0/24"));

        // A second pass changes nothing; a missing entry is re-added.
        let from = k.calls().len();
        assert_eq!(b.reconcile(&peers).unwrap(), ReconcileReport::default());
        assert!(calls_since(&k, from).is_empty());
        nl.delete_fdb(&snap.fdb[0]).unwrap();
        let report = b.reconcile(&peers).unwrap();
        assert_eq!(report.added, 1);
        assert_eq!(k.snapshot(NS).fdb.len(), 1);
    }

    #[test]
    fn restart_adopts_the_device_without_touching_entries() {
        let (k, mut b) = setup(false);
        let p = peer("10.244.7.0/24", "192.0.2.7", "0a:00:00:00:00:07");
        b.add_peer(&p).unwrap();
        let before = k.snapshot(NS);
        // A new agent, with no MAC hint: it must keep the device's MAC.
        let mut nl = k.netlink(NS);
        let e = b.ext.clone();
        let _ = &mut nl;
        let mut again = VxlanBackend::new(
            nl,
            Box::new(k.sysctl(NS)),
            cfg(false),
            "10.244.0.0/16".parse().unwrap(),
            e,
            None,
        );
        let from = k.calls().len();
        let data = again.prepare().unwrap().unwrap();
        assert_eq!(data["VtepMAC"], "0a:00:00:00:00:01");
        again
            .configure_own("10.244.1.0/24".parse().unwrap())
            .unwrap();
        let peers: BTreeMap<_, _> = [(p.key.v4, p.clone())].into();
        again.reconcile(&peers).unwrap();
        let calls = calls_since(&k, from);
        assert!(
            calls.iter().all(|c| !c.starts_with("delete")
                && !c.starts_with("add")
                && !c.starts_with("create")),
            "{calls:?}"
        );
        assert_eq!(k.snapshot(NS), before);
    }

    #[test]
    fn incompatible_device_is_recreated() {
        let k = FakeKernel::new();
        let mut nl = k.netlink(NS);
        let e = ext(&mut nl);
        nl.create_vxlan(&VxlanSpec {
            name: "flannel.1",
            vni: 7,
            ..Default::default()
        })
        .unwrap();
        let mut b = VxlanBackend::new(
            nl,
            Box::new(k.sysctl(NS)),
            cfg(false),
            "10.244.0.0/16".parse().unwrap(),
            e,
            None,
        );
        b.prepare().unwrap();
        let calls = k.calls();
        assert!(calls.iter().any(|c| c.contains("delete_link")), "{calls:?}");
        assert_eq!(
            calls.iter().filter(|c| c.contains("create_vxlan")).count(),
            2
        );
        // A name clash with something else entirely is also replaced.
        let mut nl = k.netlink(NS);
        nl.create_bridge(&BridgeSpec {
            name: "flannel.2",
            ..Default::default()
        })
        .unwrap();
    }

    #[test]
    fn direct_routing_uses_plain_routes_for_on_link_peers() {
        let (k, mut b) = setup(true);
        let near = peer("10.244.7.0/24", "192.0.2.7", "0a:00:00:00:00:07");
        let far = peer("10.244.8.0/24", "198.51.100.8", "0a:00:00:00:00:08");
        // Far peer reachable via a router.
        let mut nl = k.netlink(NS);
        nl.add_route(
            &Route::new("198.51.100.0/24".parse().unwrap())
                .via("192.0.2.254".parse().unwrap())
                .dev(b.ext.index),
            RouteMode::Create,
        )
        .unwrap();
        b.add_peer(&near).unwrap();
        b.add_peer(&far).unwrap();
        let snap = k.snapshot(NS);
        let r = snap
            .routes
            .iter()
            .find(|r| r.dst.to_string() == "10.244.7.0/24")
            .unwrap();
        assert_eq!(r.gateway, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(r.oif, Some(b.ext.index));
        assert!(!r.onlink);
        assert_eq!(snap.fdb.len(), 1, "only the far peer is tunnelled");
        let peers: BTreeMap<_, _> = [(near.key.v4, near.clone()), (far.key.v4, far.clone())].into();
        assert_eq!(b.reconcile(&peers).unwrap(), ReconcileReport::default());
        b.remove_peer(&near).unwrap();
        assert!(!k
            .snapshot(NS)
            .routes
            .iter()
            .any(|r| r.dst.to_string() == "10.244.7.0/24"));
    }

    #[test]
    fn lease_without_mac_is_reported() {
        let (_k, mut b) = setup(false);
        let mut p = peer("10.244.7.0/24", "192.0.2.7", "0a:00:00:00:00:07");
        p.attrs.backend_data = None;
        assert!(b.add_peer(&p).unwrap_err().to_string().contains("VtepMAC"));
        let peers: BTreeMap<_, _> = [(p.key.v4, p)].into();
        assert_eq!(b.reconcile(&peers).unwrap().failed.len(), 1);
    }

    #[test]
    fn random_macs_are_local_unicast() {
        for _ in 0..20 {
            let m = random_mac();
            assert_eq!(m.0[0] & 0x03, 0x02, "{m}");
        }
    }

    fn setup_dual() -> (FakeKernel, VxlanBackend<FakeNetlink>) {
        let k = FakeKernel::new();
        let mut nl = k.netlink(NS);
        let mut e = ext(&mut nl);
        nl.add_address(e.index, "fd70::1/64".parse().unwrap())
            .unwrap();
        e.addr6 = Some("fd70::1".parse().unwrap());
        e.public_ipv6 = e.addr6;
        let mut b = VxlanBackend::new(
            nl,
            Box::new(k.sysctl(NS)),
            cfg(false),
            "10.244.0.0/16".parse().unwrap(),
            e,
            Some("0a:00:00:00:00:01".parse().unwrap()),
        )
        .with_ipv6("fd00:10::/56".parse().unwrap());
        b.prepare().unwrap().unwrap();
        b.configure_own("10.244.1.0/24".parse().unwrap()).unwrap();
        b.configure_own_v6("fd00:10:0:1::/64".parse().unwrap())
            .unwrap();
        (k, b)
    }

    fn peer_dual(n: u8) -> Lease {
        let mut p = peer(
            &format!("10.244.{n}.0/24"),
            &format!("192.0.2.{n}"),
            &format!("0a:00:00:00:00:{n:02x}"),
        );
        p.key.v6 = Some(format!("fd00:10:0:{n:x}::/64").parse().unwrap());
        p.attrs.public_ipv6 = Some(format!("fd70::{n:x}").parse().unwrap());
        p.attrs.backend_v6_data = Some(vxlan_backend_data(
            1,
            format!("0a:00:00:00:06:{n:02x}").parse().unwrap(),
        ));
        p
    }

    #[test]
    fn dual_stack_device_like_flanneld() {
        let (k, b) = setup_dual();
        let snap = k.snapshot(NS);
        let dev = snap
            .links
            .values()
            .find(|l| l.name == "flannel-v6.1")
            .unwrap();
        assert_eq!(dev.mtu, 1430, "uplink 1500 - 70");
        assert!(dev.up);
        let vx = dev.vxlan.as_ref().unwrap();
        assert_eq!(vx.vni, 1);
        assert_eq!(vx.local, Some("fd70::1".parse().unwrap()));
        let (name, mac) = b.device_v6().unwrap();
        assert_eq!(name, "flannel-v6.1");
        assert_ne!(mac, b.mac(), "a MAC of its own");
        assert_eq!(
            b.backend_v6_data(),
            Some(serde_json::json!({"VNI": 1, "VtepMAC": mac.to_string()}))
        );
        let addrs: Vec<String> = snap
            .addresses
            .iter()
            .filter(|a| a.ifindex == dev.index)
            .map(|a| a.addr.to_string())
            .collect();
        assert_eq!(addrs, vec!["fd00:10:0:1::/128"]);
        for knob in ["accept_ra", "accept_dad"] {
            assert_eq!(
                snap.sysctls
                    .get(&format!("net/ipv6/conf/flannel-v6.1/{knob}"))
                    .map(String::as_str),
                Some("0"),
                "{knob}"
            );
        }
        // The IPv4 device is unchanged.
        assert_eq!(b.mtu(), 1450);
        // Without an IPv6 uplink address dual stack refuses to start.
        let k2 = FakeKernel::new();
        let mut nl = k2.netlink(NS);
        let e = ext(&mut nl);
        let mut b2 = VxlanBackend::new(nl, Box::new(k2.sysctl(NS)), cfg(false), b.network, e, None)
            .with_ipv6("fd00:10::/56".parse().unwrap());
        let err = b2.prepare().unwrap_err().to_string();
        assert!(err.contains("no global IPv6 address"), "{err}");
    }

    #[test]
    fn dual_stack_peer_add_remove_and_reconcile() {
        let (k, mut b) = setup_dual();
        let idx6 = k
            .snapshot(NS)
            .links
            .values()
            .find(|l| l.name == "flannel-v6.1")
            .unwrap()
            .index;
        let p = peer_dual(7);
        let from = k.calls().len();
        b.add_peer(&p).unwrap();
        let calls = calls_since(&k, from);
        let methods: Vec<&str> = calls.iter().map(|c| c.split(' ').next().unwrap()).collect();
        assert_eq!(
            methods,
            [
                "add_neighbour",
                "add_fdb",
                "add_route",
                "add_neighbour",
                "add_fdb",
                "add_route"
            ],
            "{calls:?}"
        );
        let snap = k.snapshot(NS);
        let mac6: MacAddr = "0a:00:00:00:06:07".parse().unwrap();
        assert!(snap.neighbours.contains(&Neighbour {
            ifindex: idx6,
            ip: "fd00:10:0:7::".parse().unwrap(),
            mac: Some(mac6),
            state: NUD_PERMANENT
        }));
        assert!(snap.fdb.contains(&FdbEntry {
            ifindex: idx6,
            mac: mac6,
            dst: Some("fd70::7".parse().unwrap())
        }));
        let route = snap
            .routes
            .iter()
            .find(|r| r.dst.to_string() == "fd00:10:0:7::/64")
            .unwrap();
        assert_eq!(route.gateway, Some("fd00:10:0:7::".parse().unwrap()));
        assert_eq!(route.oif, Some(idx6));
        assert!(route.onlink);

        // A v4-only vxlan peer gets no IPv6 entries; a v6 part without a MAC is an error.
        b.add_peer(&peer("10.244.8.0/24", "192.0.2.8", "0a:00:00:00:00:08"))
            .unwrap();
        let mut bad = peer_dual(9);
        bad.attrs.backend_v6_data = None;
        let e = b.add_peer(&bad).unwrap_err().to_string();
        assert!(e.contains("BackendV6Data"), "{e}");

        // Reconcile to {7}: 8 and 9 go, v6 entries of 7 stay; a lost v6 route returns.
        let peers: BTreeMap<_, _> = [(p.key.v4, p.clone())].into();
        b.reconcile(&peers).unwrap();
        let snap = k.snapshot(NS);
        assert_eq!(snap.fdb.iter().filter(|f| f.ifindex == idx6).count(), 1);
        assert_eq!(
            snap.neighbours.iter().filter(|n| n.ifindex == idx6).count(),
            1
        );
        let v6_routes = |k: &FakeKernel| {
            k.snapshot(NS)
                .routes
                .iter()
                .filter(|r| r.dst.to_string().starts_with("fd00:10:"))
                .count()
        };
        assert_eq!(v6_routes(&k), 1);
        let from = k.calls().len();
        assert_eq!(b.reconcile(&peers).unwrap(), ReconcileReport::default());
        assert!(calls_since(&k, from).is_empty());
        let mut nl = k.netlink(NS);
        nl.delete_route(&route.clone()).unwrap();
        assert_eq!(v6_routes(&k), 0);
        let report = b.reconcile(&peers).unwrap();
        assert_eq!(report.added, 1, "{report:?}");
        assert_eq!(v6_routes(&k), 1);

        // Removal takes the IPv6 entries away too.
        b.remove_peer(&p).unwrap();
        let snap = k.snapshot(NS);
        assert!(snap.neighbours.iter().all(|n| n.ifindex != idx6));
        assert!(snap.fdb.iter().all(|f| f.ifindex != idx6));
        assert_eq!(v6_routes(&k), 0);
        b.remove_peer(&p).unwrap();
    }
}
