//! In-memory fakes of [`Netlink`], [`Sysctl`] and [`Firewall`] for unit tests
//! that must run without root (compiled with the `fake` feature).
//!
//! A [`FakeKernel`] is a small world of named network namespaces. Hand out
//! one [`FakeNetlink`] / [`FakeSysctl`] per namespace; they share state, so a
//! veth created from the "pod" handle with its peer in the "host" namespace
//! shows up on the host handle. A [`crate::NetNs`] given as veth peer
//! namespace is mapped to the fake namespace named by its path
//! (`ns.path().display()`), so tests name the host namespace after whatever
//! path they open it from.
//!
//! The fakes mimic the kernel's error codes where callers depend on them:
//! EEXIST for duplicates, ENODEV for missing links, EADDRNOTAVAIL for missing
//! addresses, ESRCH for missing routes, ENOENT for neighbours, VLANs and
//! sysctls, EINVAL for port operations on non-ports. Any method can be made
//! to fail once with [`FakeKernel::fail_next`], and every mutating call is
//! recorded in [`FakeKernel::calls`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;
use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::firewall::{Attachment, Firewall, GcAttachment, MacSpoofCheck};
use crate::netlink::*;
use crate::sysctl::{Sysctl, SysctlKey};

/// One fake namespace, as returned by [`FakeKernel::snapshot`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeNs {
    pub links: BTreeMap<u32, Link>,
    pub vlans: BTreeMap<u32, Vec<BridgeVlan>>,
    pub addresses: Vec<Address>,
    pub routes: Vec<Route>,
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<FdbEntry>,
    pub sysctls: BTreeMap<String, String>,
}

impl FakeNs {
    fn by_name(&self, name: &str) -> Option<u32> {
        self.links
            .values()
            .find(|l| l.name == name)
            .map(|l| l.index)
    }

    fn resolve(&self, link: LinkRef<'_>) -> Option<u32> {
        match link {
            LinkRef::Index(i) => self.links.contains_key(&i).then_some(i),
            LinkRef::Name(n) => self.by_name(n),
        }
    }
}

#[derive(Debug, Default)]
struct World {
    namespaces: BTreeMap<String, FakeNs>,
    /// Which (namespace, ifindex) each veth end's peer is.
    veth_peers: BTreeMap<(String, u32), (String, u32)>,
    next_index: u32,
    calls: Vec<String>,
    failures: Vec<(String, Errno)>,
}

impl World {
    fn ns(&mut self, ns: &str) -> &mut FakeNs {
        self.namespaces.entry(ns.to_owned()).or_default()
    }

    fn alloc_index(&mut self) -> u32 {
        // Index 1 is `lo` in every real namespace.
        self.next_index = self.next_index.max(1) + 1;
        self.next_index
    }

    /// Records the call and returns an injected failure, if one is pending.
    fn enter(&mut self, ns: &str, method: &str, object: String) -> Result<()> {
        self.calls.push(format!("{ns}: {method} {object}"));
        if let Some(pos) = self.failures.iter().position(|(m, _)| m == method) {
            let (_, errno) = self.failures.remove(pos);
            return Err(err(method, object, errno));
        }
        Ok(())
    }

    fn refresh_oper(&mut self, ns: &str, index: u32) {
        let peer = self.veth_peers.get(&(ns.to_owned(), index)).cloned();
        let peer_up = match &peer {
            Some((pns, pidx)) => self.ns(pns).links.get(pidx).is_some_and(|l| l.up),
            None => true,
        };
        if let Some(link) = self.ns(ns).links.get_mut(&index) {
            link.oper_state = match (link.up, peer_up) {
                (false, _) => OperState::Down,
                (true, false) => OperState::LowerLayerDown,
                (true, true) => OperState::Up,
            };
        }
    }
}

fn err(op: &str, object: impl Into<String>, errno: Errno) -> Error {
    Error::Netlink {
        op: "fake",
        object: format!("{op} {}", object.into()),
        errno,
        kernel_msg: None,
    }
}

/// Shared state of all fake namespaces and firewalls handed out from it.
#[derive(Debug, Clone, Default)]
pub struct FakeKernel {
    world: Arc<Mutex<World>>,
}

impl FakeKernel {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, World> {
        // A panicking test thread must not hide the state from the asserts.
        self.world
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A [`Netlink`] acting in namespace `ns` (created empty on first use,
    /// with a `lo` link).
    pub fn netlink(&self, ns: &str) -> FakeNetlink {
        let mut w = self.lock();
        let fresh = !w.namespaces.contains_key(ns);
        let space = w.ns(ns);
        if fresh {
            space.links.insert(
                1,
                Link {
                    index: 1,
                    name: "lo".into(),
                    kind: None,
                    mac: Some(MacAddr([0; 6])),
                    mtu: 65536,
                    master: None,
                    up: false,
                    promisc: false,
                    oper_state: OperState::Down,
                    link_index: None,
                    link_netnsid: None,
                    vlan_filtering: None,
                    bridge_port: None,
                    vxlan: None,
                },
            );
        }
        FakeNetlink {
            kernel: self.clone(),
            ns: ns.to_owned(),
        }
    }

    /// A [`Sysctl`] acting in namespace `ns`.
    pub fn sysctl(&self, ns: &str) -> FakeSysctl {
        self.lock().ns(ns);
        FakeSysctl {
            kernel: self.clone(),
            ns: ns.to_owned(),
        }
    }

    /// Makes the next call of `method` (a trait method name such as
    /// `"create_veth"` or `"write"`) fail with `errno`.
    pub fn fail_next(&self, method: &str, errno: Errno) {
        self.lock().failures.push((method.to_owned(), errno));
    }

    /// Every call so far, as `"<ns>: <method> <object>"`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// A copy of one namespace's state.
    pub fn snapshot(&self, ns: &str) -> FakeNs {
        self.lock().namespaces.get(ns).cloned().unwrap_or_default()
    }

    /// Presets a sysctl value, as the kernel would have it.
    pub fn set_sysctl(&self, ns: &str, key: &str, value: &str) {
        self.lock()
            .ns(ns)
            .sysctls
            .insert(key.to_owned(), value.to_owned());
    }
}

/// [`Netlink`] over a [`FakeKernel`] namespace.
#[derive(Debug, Clone)]
pub struct FakeNetlink {
    kernel: FakeKernel,
    ns: String,
}

fn new_link(
    index: u32,
    name: &str,
    kind: LinkKind,
    mtu: Option<u32>,
    mac: Option<MacAddr>,
) -> Link {
    let [a, b, c, d] = index.to_be_bytes();
    Link {
        index,
        name: name.to_owned(),
        kind: Some(kind),
        mac: Some(mac.unwrap_or(MacAddr([0x02, 0xfa, a, b, c, d]))),
        mtu: mtu.unwrap_or(1500),
        master: None,
        up: false,
        promisc: false,
        oper_state: OperState::Down,
        link_index: None,
        link_netnsid: None,
        vlan_filtering: None,
        bridge_port: None,
        vxlan: None,
    }
}

impl FakeNetlink {
    /// Runs `f` on this namespace after logging the call and checking for
    /// an injected failure.
    fn with<T>(
        &self,
        method: &str,
        object: String,
        f: impl FnOnce(&mut World, &str) -> Result<T>,
    ) -> Result<T> {
        let mut w = self.kernel.lock();
        w.enter(&self.ns, method, object)?;
        f(&mut w, &self.ns)
    }

    fn edit_link(&self, method: &str, link: LinkRef<'_>, f: impl FnOnce(&mut Link)) -> Result<()> {
        self.with(method, link.to_string(), |w, ns| {
            let space = w.ns(ns);
            let idx = space
                .resolve(link)
                .ok_or_else(|| err(method, link.to_string(), Errno::ENODEV))?;
            if let Some(l) = space.links.get_mut(&idx) {
                f(l);
            }
            w.refresh_oper(ns, idx);
            Ok(())
        })
    }
}

impl Netlink for FakeNetlink {
    fn link(&mut self, link: LinkRef<'_>) -> Result<Link> {
        let mut w = self.kernel.lock();
        let space = w.ns(&self.ns);
        space
            .resolve(link)
            .and_then(|i| space.links.get(&i).cloned())
            .ok_or_else(|| err("link", link.to_string(), Errno::ENODEV))
    }

    fn links(&mut self) -> Result<Vec<Link>> {
        Ok(self
            .kernel
            .lock()
            .ns(&self.ns)
            .links
            .values()
            .cloned()
            .collect())
    }

    fn create_bridge(&mut self, spec: &BridgeSpec<'_>) -> Result<()> {
        self.with("create_bridge", spec.name.to_owned(), |w, ns| {
            if w.ns(ns).by_name(spec.name).is_some() {
                return Err(err("create_bridge", spec.name, Errno::EEXIST));
            }
            let idx = w.alloc_index();
            let mut link = new_link(idx, spec.name, LinkKind::Bridge, spec.mtu, None);
            link.vlan_filtering = Some(spec.vlan_filtering);
            w.ns(ns).links.insert(idx, link);
            Ok(())
        })
    }

    fn create_veth(&mut self, spec: &VethSpec<'_>) -> Result<()> {
        let peer_ns = spec
            .peer_netns
            .map(|n| n.path().display().to_string())
            .unwrap_or_else(|| self.ns.clone());
        let object = format!("{} peer {} in {peer_ns}", spec.name, spec.peer_name);
        self.with("create_veth", object, |w, ns| {
            let clash = w.ns(ns).by_name(spec.name).is_some()
                || w.ns(&peer_ns).by_name(spec.peer_name).is_some()
                || (peer_ns == ns && spec.name == spec.peer_name);
            if clash {
                return Err(err("create_veth", spec.name, Errno::EEXIST));
            }
            let (a, b) = (w.alloc_index(), w.alloc_index());
            let mut local = new_link(a, spec.name, LinkKind::Veth, spec.mtu, spec.mac);
            let mut peer = new_link(b, spec.peer_name, LinkKind::Veth, spec.mtu, spec.peer_mac);
            local.link_index = Some(b);
            peer.link_index = Some(a);
            if peer_ns != ns {
                local.link_netnsid = Some(0);
                peer.link_netnsid = Some(0);
            }
            w.ns(ns).links.insert(a, local);
            w.ns(&peer_ns).links.insert(b, peer);
            w.veth_peers
                .insert((ns.to_owned(), a), (peer_ns.clone(), b));
            w.veth_peers
                .insert((peer_ns.clone(), b), (ns.to_owned(), a));
            Ok(())
        })
    }

    fn create_vxlan(&mut self, spec: &VxlanSpec<'_>) -> Result<()> {
        self.with("create_vxlan", spec.name.to_owned(), |w, ns| {
            if w.ns(ns).by_name(spec.name).is_some() {
                return Err(err("create_vxlan", spec.name, Errno::EEXIST));
            }
            let idx = w.alloc_index();
            let mut link = new_link(idx, spec.name, LinkKind::Vxlan, spec.mtu, spec.mac);
            link.vxlan = Some(VxlanInfo {
                vni: spec.vni,
                port: spec.port,
                learning: Some(spec.learning),
                local: spec.local,
                underlying: spec.underlying,
            });
            w.ns(ns).links.insert(idx, link);
            Ok(())
        })
    }

    fn delete_link(&mut self, link: LinkRef<'_>) -> Result<()> {
        self.with("delete_link", link.to_string(), |w, ns| {
            let idx = w
                .ns(ns)
                .resolve(link)
                .ok_or_else(|| err("delete_link", link.to_string(), Errno::ENODEV))?;
            let mut doomed = vec![(ns.to_owned(), idx)];
            if let Some(peer) = w.veth_peers.remove(&(ns.to_owned(), idx)) {
                w.veth_peers.remove(&peer);
                doomed.push(peer);
            }
            for (dns, didx) in doomed {
                let space = w.ns(&dns);
                space.links.remove(&didx);
                space.vlans.remove(&didx);
                space.addresses.retain(|a| a.ifindex != didx);
                space.routes.retain(|r| r.oif != Some(didx));
                space.neighbours.retain(|n| n.ifindex != didx);
                space.fdb.retain(|e| e.ifindex != didx);
                for l in space.links.values_mut() {
                    if l.master == Some(didx) {
                        l.master = None;
                        l.bridge_port = None;
                    }
                }
            }
            Ok(())
        })
    }

    fn set_up(&mut self, link: LinkRef<'_>, up: bool) -> Result<()> {
        self.with("set_up", format!("{link} {up}"), |w, ns| {
            let idx = w
                .ns(ns)
                .resolve(link)
                .ok_or_else(|| err("set_up", link.to_string(), Errno::ENODEV))?;
            if let Some(l) = w.ns(ns).links.get_mut(&idx) {
                l.up = up;
            }
            w.refresh_oper(ns, idx);
            if let Some((pns, pidx)) = w.veth_peers.get(&(ns.to_owned(), idx)).cloned() {
                w.refresh_oper(&pns, pidx);
            }
            Ok(())
        })
    }

    fn set_mtu(&mut self, link: LinkRef<'_>, mtu: u32) -> Result<()> {
        self.edit_link("set_mtu", link, |l| l.mtu = mtu)
    }

    fn set_mac(&mut self, link: LinkRef<'_>, mac: MacAddr) -> Result<()> {
        self.edit_link("set_mac", link, |l| l.mac = Some(mac))
    }

    fn set_master(&mut self, link: LinkRef<'_>, master: Option<u32>) -> Result<()> {
        self.with("set_master", format!("{link} {master:?}"), |w, ns| {
            let space = w.ns(ns);
            let idx = space
                .resolve(link)
                .ok_or_else(|| err("set_master", link.to_string(), Errno::ENODEV))?;
            if let Some(m) = master {
                if !space.links.contains_key(&m) {
                    return Err(err("set_master", format!("master #{m}"), Errno::ENODEV));
                }
            }
            let is_bridge = master
                .and_then(|m| space.links.get(&m))
                .is_some_and(|l| l.kind == Some(LinkKind::Bridge));
            if let Some(l) = space.links.get_mut(&idx) {
                l.master = master;
                l.bridge_port = is_bridge.then(BridgePortInfo::default);
            }
            // Enslaving to a bridge gives the port the default PVID 1.
            if is_bridge {
                let pvid1 = BridgeVlan {
                    vid: 1,
                    pvid: true,
                    untagged: true,
                };
                space.vlans.insert(idx, vec![pvid1]);
            } else {
                space.vlans.remove(&idx);
            }
            Ok(())
        })
    }

    fn set_promisc(&mut self, link: LinkRef<'_>, on: bool) -> Result<()> {
        self.edit_link("set_promisc", link, |l| l.promisc = on)
    }

    fn set_bridge_port(&mut self, port: u32, flags: &BridgePortFlags) -> Result<()> {
        self.with("set_bridge_port", format!("#{port} {flags:?}"), |w, ns| {
            let info = w
                .ns(ns)
                .links
                .get_mut(&port)
                .and_then(|l| l.bridge_port.as_mut())
                .ok_or_else(|| err("set_bridge_port", format!("#{port}"), Errno::EINVAL))?;
            if let Some(h) = flags.hairpin {
                info.hairpin = h;
            }
            if let Some(i) = flags.isolated {
                info.isolated = i;
            }
            Ok(())
        })
    }

    fn bridge_vlan_add(&mut self, port: u32, vlan: BridgeVlan) -> Result<()> {
        self.with("bridge_vlan_add", format!("#{port} {vlan:?}"), |w, ns| {
            let space = w.ns(ns);
            if space.links.get(&port).and_then(|l| l.bridge_port).is_none() {
                return Err(err("bridge_vlan_add", format!("#{port}"), Errno::EINVAL));
            }
            let vlans = space.vlans.entry(port).or_default();
            vlans.retain(|v| v.vid != vlan.vid);
            if vlan.pvid {
                // A port has at most one PVID.
                for v in vlans.iter_mut() {
                    v.pvid = false;
                }
            }
            vlans.push(vlan);
            vlans.sort();
            Ok(())
        })
    }

    fn bridge_vlan_del(&mut self, port: u32, vid: u16) -> Result<()> {
        self.with("bridge_vlan_del", format!("#{port} vid {vid}"), |w, ns| {
            let vlans = w.ns(ns).vlans.entry(port).or_default();
            let before = vlans.len();
            vlans.retain(|v| v.vid != vid);
            if vlans.len() == before {
                return Err(err(
                    "bridge_vlan_del",
                    format!("#{port} vid {vid}"),
                    Errno::ENOENT,
                ));
            }
            Ok(())
        })
    }

    fn bridge_vlans(&mut self, port: u32) -> Result<Vec<BridgeVlan>> {
        Ok(self
            .kernel
            .lock()
            .ns(&self.ns)
            .vlans
            .get(&port)
            .cloned()
            .unwrap_or_default())
    }

    fn addresses(&mut self, ifindex: Option<u32>, family: Option<Family>) -> Result<Vec<Address>> {
        let mut w = self.kernel.lock();
        Ok(w.ns(&self.ns)
            .addresses
            .iter()
            .filter(|a| ifindex.is_none_or(|i| a.ifindex == i))
            .filter(|a| family.is_none_or(|f| Family::of(&a.addr.addr()) == f))
            .cloned()
            .collect())
    }

    fn add_address(&mut self, ifindex: u32, addr: IpNet) -> Result<()> {
        self.with("add_address", format!("{addr} on #{ifindex}"), |w, ns| {
            let space = w.ns(ns);
            if !space.links.contains_key(&ifindex) {
                return Err(err("add_address", format!("#{ifindex}"), Errno::ENODEV));
            }
            if space
                .addresses
                .iter()
                .any(|a| a.ifindex == ifindex && a.addr.addr() == addr.addr())
            {
                return Err(err("add_address", addr.to_string(), Errno::EEXIST));
            }
            space.addresses.push(Address {
                ifindex,
                addr,
                scope: 0,
                flags: AddressFlags(AddressFlags::PERMANENT),
            });
            Ok(())
        })
    }

    fn delete_address(&mut self, ifindex: u32, addr: IpNet) -> Result<()> {
        self.with(
            "delete_address",
            format!("{addr} on #{ifindex}"),
            |w, ns| {
                let space = w.ns(ns);
                let before = space.addresses.len();
                space
                    .addresses
                    .retain(|a| !(a.ifindex == ifindex && a.addr == addr));
                if space.addresses.len() == before {
                    return Err(err(
                        "delete_address",
                        addr.to_string(),
                        Errno::EADDRNOTAVAIL,
                    ));
                }
                Ok(())
            },
        )
    }

    fn routes(&mut self, filter: &RouteFilter) -> Result<Vec<Route>> {
        let mut w = self.kernel.lock();
        Ok(w.ns(&self.ns)
            .routes
            .iter()
            .filter(|r| filter.family.is_none_or(|f| r.family() == f))
            .filter(|r| filter.table.is_none_or(|t| r.table == t))
            .filter(|r| filter.oif.is_none_or(|o| r.oif == Some(o)))
            .cloned()
            .collect())
    }

    fn add_route(&mut self, route: &Route, mode: RouteMode) -> Result<()> {
        self.with("add_route", route.to_string(), |w, ns| {
            let space = w.ns(ns);
            if let Some(oif) = route.oif {
                if !space.links.contains_key(&oif) {
                    return Err(err("add_route", route.to_string(), Errno::ENODEV));
                }
            }
            let same_key = |r: &Route| {
                r.dst == route.dst && r.table == route.table && r.metric == route.metric
            };
            let identical =
                |r: &Route| same_key(r) && r.gateway == route.gateway && r.oif == route.oif;
            let mut stored = route.clone();
            if stored.scope.is_none() {
                let link_scope = route.gateway.is_none() && route.oif.is_some();
                stored.scope = Some(if link_scope {
                    RouteScope::Link
                } else {
                    RouteScope::Universe
                });
            }
            match mode {
                RouteMode::Create if space.routes.iter().any(same_key) => {
                    Err(err("add_route", route.to_string(), Errno::EEXIST))
                }
                RouteMode::Append if space.routes.iter().any(identical) => {
                    Err(err("add_route", route.to_string(), Errno::EEXIST))
                }
                RouteMode::Replace => {
                    space.routes.retain(|r| !same_key(r));
                    space.routes.push(stored);
                    Ok(())
                }
                _ => {
                    space.routes.push(stored);
                    Ok(())
                }
            }
        })
    }

    fn delete_route(&mut self, route: &Route) -> Result<()> {
        self.with("delete_route", route.to_string(), |w, ns| {
            let space = w.ns(ns);
            let pos = space.routes.iter().position(|r| {
                r.dst == route.dst
                    && r.table == route.table
                    && route.gateway.is_none_or(|g| r.gateway == Some(g))
                    && route.oif.is_none_or(|o| r.oif == Some(o))
                    && route.metric.is_none_or(|m| r.metric == Some(m))
            });
            match pos {
                Some(p) => {
                    space.routes.remove(p);
                    Ok(())
                }
                None => Err(err("delete_route", route.to_string(), Errno::ESRCH)),
            }
        })
    }

    fn neighbours(
        &mut self,
        ifindex: Option<u32>,
        family: Option<Family>,
    ) -> Result<Vec<Neighbour>> {
        let mut w = self.kernel.lock();
        Ok(w.ns(&self.ns)
            .neighbours
            .iter()
            .filter(|n| ifindex.is_none_or(|i| n.ifindex == i))
            .filter(|n| family.is_none_or(|f| Family::of(&n.ip) == f))
            .cloned()
            .collect())
    }

    fn add_neighbour(&mut self, neighbour: &Neighbour) -> Result<()> {
        self.with(
            "add_neighbour",
            format!("{} on #{}", neighbour.ip, neighbour.ifindex),
            |w, ns| {
                let space = w.ns(ns);
                space
                    .neighbours
                    .retain(|n| !(n.ifindex == neighbour.ifindex && n.ip == neighbour.ip));
                let mut stored = neighbour.clone();
                stored.state = NUD_PERMANENT;
                space.neighbours.push(stored);
                Ok(())
            },
        )
    }

    fn delete_neighbour(&mut self, neighbour: &Neighbour) -> Result<()> {
        self.with("delete_neighbour", neighbour.ip.to_string(), |w, ns| {
            let space = w.ns(ns);
            let before = space.neighbours.len();
            space
                .neighbours
                .retain(|n| !(n.ifindex == neighbour.ifindex && n.ip == neighbour.ip));
            if space.neighbours.len() == before {
                return Err(err(
                    "delete_neighbour",
                    neighbour.ip.to_string(),
                    Errno::ENOENT,
                ));
            }
            Ok(())
        })
    }

    fn fdb(&mut self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        let mut w = self.kernel.lock();
        Ok(w.ns(&self.ns)
            .fdb
            .iter()
            .filter(|e| e.ifindex == ifindex)
            .cloned()
            .collect())
    }

    fn add_fdb(&mut self, entry: &FdbEntry) -> Result<()> {
        self.with(
            "add_fdb",
            format!("{} on #{}", entry.mac, entry.ifindex),
            |w, ns| {
                let space = w.ns(ns);
                space
                    .fdb
                    .retain(|e| !(e.ifindex == entry.ifindex && e.mac == entry.mac));
                space.fdb.push(entry.clone());
                Ok(())
            },
        )
    }

    fn delete_fdb(&mut self, entry: &FdbEntry) -> Result<()> {
        self.with("delete_fdb", entry.mac.to_string(), |w, ns| {
            let space = w.ns(ns);
            let before = space.fdb.len();
            space.fdb.retain(|e| e != entry);
            if space.fdb.len() == before {
                return Err(err("delete_fdb", entry.mac.to_string(), Errno::ENOENT));
            }
            Ok(())
        })
    }
}

/// [`Sysctl`] over a [`FakeKernel`] namespace. Unset keys read as ENOENT
/// (preset them with [`FakeKernel::set_sysctl`]); writes always succeed.
#[derive(Debug, Clone)]
pub struct FakeSysctl {
    kernel: FakeKernel,
    ns: String,
}

impl Sysctl for FakeSysctl {
    fn read(&self, key: &SysctlKey) -> Result<String> {
        let mut w = self.kernel.lock();
        w.ns(&self.ns)
            .sysctls
            .get(key.as_str())
            .cloned()
            .ok_or_else(|| Error::Sysctl {
                op: "read",
                key: key.to_string(),
                source: std::io::Error::from_raw_os_error(libc::ENOENT),
            })
    }

    fn write(&self, key: &SysctlKey, value: &str) -> Result<()> {
        let mut w = self.kernel.lock();
        if let Err(e) = w.enter(&self.ns, "write", format!("{key} = {value}")) {
            return Err(Error::Sysctl {
                op: "write",
                key: key.to_string(),
                source: std::io::Error::from_raw_os_error(
                    e.errno().map_or(libc::EIO, |e| e as i32),
                ),
            });
        }
        w.ns(&self.ns)
            .sysctls
            .insert(key.as_str().to_owned(), value.to_owned());
        Ok(())
    }
}

/// Rule state of a [`FakeFirewall`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallState {
    /// (network, container ID, ifname) → masqueraded addresses.
    pub masq: BTreeMap<(String, String, String), Vec<IpNet>>,
    /// (container ID, ifname) → (host veth, allowed MAC).
    pub spoofchk: BTreeMap<(String, String), (String, MacAddr)>,
    /// Legacy iptables chains still present (`CNI-...` names).
    pub legacy_chains: BTreeSet<String>,
    pub calls: Vec<String>,
}

/// In-memory [`Firewall`] with the same idempotency as the real one.
#[derive(Debug, Default)]
pub struct FakeFirewall {
    state: Mutex<FirewallState>,
}

impl FakeFirewall {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn state(&self) -> FirewallState {
        self.lock().clone()
    }

    /// Pretends the Go plugin left its iptables chain for a container.
    pub fn add_legacy_chain(&self, network: &str, container_id: &str) {
        self.lock()
            .legacy_chains
            .insert(crate::firewall::legacy_masq_chain(network, container_id));
    }

    fn lock(&self) -> MutexGuard<'_, FirewallState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn key(a: &Attachment<'_>) -> (String, String, String) {
    (
        a.network.to_owned(),
        a.container_id.to_owned(),
        a.ifname.to_owned(),
    )
}

impl Firewall for FakeFirewall {
    fn setup_masq(&self, attachment: &Attachment<'_>, ips: &[IpNet]) -> Result<()> {
        let mut s = self.lock();
        s.calls.push(format!("setup_masq {attachment:?} {ips:?}"));
        let mut unique = ips.to_vec();
        unique.dedup();
        s.masq.insert(key(attachment), unique);
        Ok(())
    }

    fn teardown_masq(&self, attachment: &Attachment<'_>) -> Result<()> {
        let mut s = self.lock();
        s.calls.push(format!("teardown_masq {attachment:?}"));
        s.masq.remove(&key(attachment));
        Ok(())
    }

    fn gc_masq(&self, network: &str, valid: &[GcAttachment]) -> Result<usize> {
        let mut s = self.lock();
        s.calls.push(format!("gc_masq {network} {valid:?}"));
        let doomed: Vec<_> = s
            .masq
            .keys()
            .filter(|(n, c, i)| {
                n == network && !valid.iter().any(|v| &v.container_id == c && &v.ifname == i)
            })
            .cloned()
            .collect();
        let mut removed = 0;
        for k in doomed {
            removed += s.masq.remove(&k).map_or(0, |ips| ips.len());
        }
        Ok(removed)
    }

    fn teardown_legacy_iptables_masq(&self, network: &str, container_id: &str) -> Result<bool> {
        let mut s = self.lock();
        s.calls.push(format!(
            "teardown_legacy_iptables_masq {network} {container_id}"
        ));
        Ok(s.legacy_chains
            .remove(&crate::firewall::legacy_masq_chain(network, container_id)))
    }

    fn setup_mac_spoof_check(&self, check: &MacSpoofCheck<'_>) -> Result<()> {
        let mut s = self.lock();
        s.calls.push(format!("setup_mac_spoof_check {check:?}"));
        s.spoofchk.insert(
            (check.container_id.to_owned(), check.ifname.to_owned()),
            (check.host_veth.to_owned(), check.mac),
        );
        Ok(())
    }

    fn teardown_mac_spoof_check(&self, container_id: &str, ifname: &str) -> Result<()> {
        let mut s = self.lock();
        s.calls
            .push(format!("teardown_mac_spoof_check {container_id} {ifname}"));
        s.spoofchk
            .remove(&(container_id.to_owned(), ifname.to_owned()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetNs;

    #[test]
    fn bridge_plugin_flow_without_root() {
        let kernel = FakeKernel::new();
        let host_ns = NetNs::current().unwrap();
        let host_name = host_ns.path().display().to_string();
        let mut host = kernel.netlink(&host_name);
        let mut pod = kernel.netlink("pod");

        host.create_bridge(&BridgeSpec {
            name: "cni0",
            mtu: Some(1450),
            vlan_filtering: false,
        })
        .unwrap();
        assert!(host
            .create_bridge(&BridgeSpec {
                name: "cni0",
                ..Default::default()
            })
            .unwrap_err()
            .is_exists());
        pod.create_veth(&VethSpec {
            name: "eth0",
            peer_name: "veth0001",
            mtu: Some(1450),
            peer_netns: Some(&host_ns),
            ..Default::default()
        })
        .unwrap();
        let br = host.link("cni0".into()).unwrap();
        let veth = host.link("veth0001".into()).unwrap();
        let eth0 = pod.link("eth0".into()).unwrap();
        assert_eq!(veth.link_index, Some(eth0.index));
        assert!(pod.link("veth0001".into()).unwrap_err().is_not_found());

        host.set_master(LinkRef::Index(veth.index), Some(br.index))
            .unwrap();
        host.set_bridge_port(
            veth.index,
            &BridgePortFlags {
                hairpin: Some(true),
                isolated: None,
            },
        )
        .unwrap();
        assert!(
            host.link(LinkRef::Index(veth.index))
                .unwrap()
                .bridge_port
                .unwrap()
                .hairpin
        );
        assert_eq!(host.bridge_vlans(veth.index).unwrap()[0].vid, 1);

        host.set_up(LinkRef::Index(veth.index), true).unwrap();
        assert_eq!(
            host.link("veth0001".into()).unwrap().oper_state,
            OperState::LowerLayerDown
        );
        pod.set_up("eth0".into(), true).unwrap();
        assert_eq!(
            host.link("veth0001".into()).unwrap().oper_state,
            OperState::Up
        );

        let addr: IpNet = "10.244.1.5/24".parse().unwrap();
        pod.add_address(eth0.index, addr).unwrap();
        assert!(pod.add_address(eth0.index, addr).unwrap_err().is_exists());
        let default = Route::new("0.0.0.0/0".parse().unwrap())
            .via("10.244.1.1".parse().unwrap())
            .dev(eth0.index);
        pod.add_route(&default, RouteMode::Append).unwrap();
        assert!(pod
            .add_route(&default, RouteMode::Append)
            .unwrap_err()
            .is_exists());

        // DEL: removing the pod end removes the host end and pod state.
        pod.delete_link("eth0".into()).unwrap();
        assert!(host.link("veth0001".into()).unwrap_err().is_not_found());
        let snap = kernel.snapshot("pod");
        assert!(snap.addresses.is_empty() && snap.routes.is_empty());
        assert!(pod.delete_link("eth0".into()).unwrap_err().is_not_found());
        assert!(kernel
            .calls()
            .iter()
            .any(|c| c.starts_with("pod: create_veth eth0")));
    }

    #[test]
    fn injected_failures_and_not_found_codes() {
        let kernel = FakeKernel::new();
        let mut nl = kernel.netlink("host");
        kernel.fail_next("create_bridge", Errno::EPERM);
        let e = nl.create_bridge(&BridgeSpec {
            name: "b",
            ..Default::default()
        });
        assert_eq!(e.unwrap_err().errno(), Some(Errno::EPERM));
        nl.create_bridge(&BridgeSpec {
            name: "b",
            ..Default::default()
        })
        .unwrap();
        assert!(nl
            .delete_address(1, "10.0.0.1/8".parse().unwrap())
            .unwrap_err()
            .is_not_found());
        assert!(nl
            .delete_route(&Route::new("10.0.0.0/8".parse().unwrap()))
            .unwrap_err()
            .is_not_found());
        assert!(nl.bridge_vlan_del(1, 5).unwrap_err().is_not_found());
        assert_eq!(
            nl.set_bridge_port(1, &Default::default())
                .unwrap_err()
                .errno(),
            Some(Errno::EINVAL)
        );

        let sysctl = kernel.sysctl("host");
        let key = SysctlKey::forwarding(Family::V4);
        assert!(sysctl.read(&key).unwrap_err().is_not_found());
        kernel.set_sysctl("host", key.as_str(), "0");
        assert!(sysctl.ensure(&key, "1").unwrap());
        assert!(!sysctl.ensure(&key, "1").unwrap());
        assert_eq!(kernel.snapshot("host").sysctls[key.as_str()], "1");
    }

    #[test]
    fn fake_firewall_is_idempotent() {
        let fw = FakeFirewall::new();
        let att = Attachment {
            network: "net",
            container_id: "c1",
            ifname: "eth0",
        };
        let ips: Vec<IpNet> = vec!["10.0.0.2/24".parse().unwrap()];
        fw.setup_masq(&att, &ips).unwrap();
        fw.setup_masq(&att, &ips).unwrap();
        assert_eq!(fw.state().masq.len(), 1);
        fw.setup_masq(
            &Attachment {
                container_id: "c2",
                ..att
            },
            &ips,
        )
        .unwrap();
        let valid = [GcAttachment {
            container_id: "c2".into(),
            ifname: "eth0".into(),
        }];
        assert_eq!(fw.gc_masq("net", &valid).unwrap(), 1);
        fw.teardown_masq(&att).unwrap();
        fw.add_legacy_chain("net", "c1");
        assert!(fw.teardown_legacy_iptables_masq("net", "c1").unwrap());
        assert!(!fw.teardown_legacy_iptables_masq("net", "c1").unwrap());
    }
}
