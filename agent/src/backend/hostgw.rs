//! The host-gw backend: one route per remote subnet via the peer's public IP on the
//! external interface. Needs every node on one L2 segment; a peer behind a router is
//! reported (not silently mis-routed).

use std::collections::BTreeMap;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use kernel::netlink::{Netlink, Route, RouteMode, MAIN_TABLE};
use serde_json::Value;

use super::{
    direct_oif, ip4, ip6, kerr, routes_v6, same_route, v4_dst, v6_dst, Backend, BackendError,
    ExtIface, ReconcileReport, RouteCache,
};
use crate::lease::Lease;
use crate::log;

pub struct HostGwBackend<N: Netlink> {
    nl: N,
    network: Ipv4Net,
    ext: ExtIface,
    own: Option<Ipv4Net>,
    routes_cache: RouteCache,
    /// Dual stack: the IPv6 network and our IPv6 subnet.
    network6: Option<Ipv6Net>,
    own6: Option<Ipv6Net>,
}

impl<N: Netlink + Send> HostGwBackend<N> {
    pub fn new(nl: N, network: Ipv4Net, ext: ExtIface) -> Self {
        HostGwBackend {
            nl,
            network,
            ext,
            own: None,
            routes_cache: RouteCache::default(),
            network6: None,
            own6: None,
        }
    }

    /// Dual stack: also route the peers' IPv6 subnets via their `PublicIPv6`.
    pub fn with_ipv6(mut self, network: Ipv6Net) -> Self {
        self.network6 = Some(network);
        self
    }

    /// The IPv6 route `peer` needs (dual stack, host-gw peers with an IPv6 part).
    fn plan_v6(&self, peer: &Lease) -> Option<Route> {
        self.network6?;
        if peer.attrs.backend_type != "host-gw" {
            return None;
        }
        let (subnet, public) = (peer.key.v6?, peer.attrs.public_ipv6?);
        Some(
            Route::new(IpNet::V6(subnet))
                .via(ip6(public))
                .dev(self.ext.index),
        )
    }

    fn owns_route_v6(&self, r: &Route) -> bool {
        let (Some(net), Some(dst)) = (self.network6, v6_dst(r)) else {
            return false;
        };
        r.table == MAIN_TABLE
            && net.contains(&dst)
            && Some(dst) != self.own6
            && r.gateway.is_some()
            && r.oif == Some(self.ext.index)
    }

    fn routes(&mut self, fresh: bool) -> Result<Vec<Route>, BackendError> {
        self.routes_cache.get(&mut self.nl, fresh)
    }

    /// The route `peer` needs, None for leases of other backends.
    fn plan(&mut self, peer: &Lease) -> Result<Option<Route>, BackendError> {
        if peer.attrs.backend_type != "host-gw" {
            return Ok(None);
        }
        let public = peer.attrs.public_ip;
        let routes = self.routes(false)?;
        let reachable = direct_oif(&routes, public).and_then(|oif| {
            if oif == self.ext.index {
                Ok(oif)
            } else {
                Err(format!(
                    "it is on-link through interface #{oif}, not {}",
                    self.ext.name
                ))
            }
        });
        match reachable {
            Ok(oif) => Ok(Some(
                Route::new(IpNet::V4(peer.key.v4)).via(ip4(public)).dev(oif),
            )),
            Err(reason) => Err(BackendError::Unreachable {
                subnet: peer.key.v4,
                public_ip: public,
                iface: self.ext.name.clone(),
                reason,
            }),
        }
    }

    fn owns_route(&self, r: &Route) -> bool {
        let Some(dst) = v4_dst(r) else { return false };
        r.table == MAIN_TABLE
            && self.network.contains(&dst)
            && Some(dst) != self.own
            && r.gateway.is_some()
            && r.oif == Some(self.ext.index)
    }
}

impl<N: Netlink + Send> HostGwBackend<N> {
    fn reconcile_v6(
        &mut self,
        peers: &BTreeMap<Ipv4Net, Lease>,
        report: &mut ReconcileReport,
    ) -> Result<(), BackendError> {
        let routes = routes_v6(&mut self.nl)?;
        let wanted: Vec<(Ipv4Net, Route)> = peers
            .iter()
            .filter_map(|(s, l)| self.plan_v6(l).map(|r| (*s, r)))
            .collect();
        let owned: Vec<Route> = routes
            .iter()
            .filter(|r| self.owns_route_v6(r))
            .cloned()
            .collect();
        for r in &owned {
            if !wanted.iter().any(|(_, w)| same_route(r, w)) {
                match self.nl.delete_route(r) {
                    Err(e) if !e.is_not_found() => {
                        return Err(kerr("delete stale", r.to_string())(e))
                    }
                    _ => report.removed += 1,
                }
            }
        }
        for (subnet, w) in &wanted {
            if routes.iter().any(|r| same_route(r, w)) {
                continue;
            }
            match self.nl.add_route(w, RouteMode::Replace) {
                Ok(()) => report.added += 1,
                Err(e) => report
                    .failed
                    .push((*subnet, kerr("add", w.to_string())(e).to_string())),
            }
        }
        Ok(())
    }
}

impl<N: Netlink + Send> Backend for HostGwBackend<N> {
    fn backend_type(&self) -> &'static str {
        "host-gw"
    }

    fn mtu(&self) -> u32 {
        self.ext.mtu
    }

    fn prepare(&mut self) -> Result<Option<Value>, BackendError> {
        if self.ext.public_ip != self.ext.addr {
            return Err(BackendError::Setup(format!(
                "host-gw cannot work behind NAT: public IP {} differs from {}'s address {}",
                self.ext.public_ip, self.ext.name, self.ext.addr
            )));
        }
        if self.network6.is_some() {
            match (self.ext.addr6, self.ext.public_ipv6) {
                (None, _) => {
                    return Err(BackendError::Setup(format!(
                        "{} has no global IPv6 address for the IPv6 routes",
                        self.ext.name
                    )))
                }
                (Some(a), Some(p)) if a != p => {
                    return Err(BackendError::Setup(format!(
                    "host-gw cannot work behind NAT: public IPv6 {p} differs from {}'s address {a}",
                    self.ext.name
                )))
                }
                _ => {}
            }
        }
        Ok(None)
    }

    fn configure_own(&mut self, own: Ipv4Net) -> Result<(), BackendError> {
        self.own = Some(own);
        Ok(())
    }

    fn configure_own_v6(&mut self, own: Ipv6Net) -> Result<(), BackendError> {
        self.own6 = Some(own);
        Ok(())
    }

    fn add_peer(&mut self, peer: &Lease) -> Result<(), BackendError> {
        let Some(route) = self.plan(peer)? else {
            log::debug(&format!(
                "ignoring peer {} of backend type {:?}",
                peer.key.v4, peer.attrs.backend_type
            ));
            return Ok(());
        };
        // Replace: a route to the subnet through another gateway (a stale lease of
        // a node that moved) is overwritten in one step.
        self.nl
            .add_route(&route, RouteMode::Replace)
            .map_err(kerr("add", route.to_string()))?;
        if let Some(route6) = self.plan_v6(peer) {
            self.nl
                .add_route(&route6, RouteMode::Replace)
                .map_err(kerr("add", route6.to_string()))?;
        }
        Ok(())
    }

    fn remove_peer(&mut self, peer: &Lease) -> Result<(), BackendError> {
        if let (Some(_), Some(subnet6), Some(public6)) =
            (self.network6, peer.key.v6, peer.attrs.public_ipv6)
        {
            let route6 = Route::new(IpNet::V6(subnet6)).via(ip6(public6));
            match self.nl.delete_route(&route6) {
                Err(e) if !e.is_not_found() => return Err(kerr("delete", route6.to_string())(e)),
                _ => {}
            }
        }
        if peer.attrs.public_ip.is_unspecified() {
            return Ok(());
        }
        let route = Route::new(IpNet::V4(peer.key.v4)).via(ip4(peer.attrs.public_ip));
        match self.nl.delete_route(&route) {
            Err(e) if !e.is_not_found() => Err(kerr("delete", route.to_string())(e)),
            _ => Ok(()),
        }
    }

    fn reconcile(
        &mut self,
        peers: &BTreeMap<Ipv4Net, Lease>,
    ) -> Result<ReconcileReport, BackendError> {
        let mut report = ReconcileReport::default();
        let routes = self.routes(true)?;
        let mut wanted = Vec::new();
        for (subnet, lease) in peers {
            match self.plan(lease) {
                Ok(Some(r)) => wanted.push(r),
                Ok(None) => {}
                Err(e) => report.failed.push((*subnet, e.to_string())),
            }
        }
        let owned: Vec<&Route> = routes.iter().filter(|r| self.owns_route(r)).collect();
        for r in owned {
            if !wanted.iter().any(|w| same_route(r, w)) {
                match self.nl.delete_route(r) {
                    Err(e) if !e.is_not_found() => {
                        return Err(kerr("delete stale", r.to_string())(e))
                    }
                    _ => report.removed += 1,
                }
            }
        }
        for w in &wanted {
            if routes.iter().any(|r| same_route(r, w)) {
                continue;
            }
            match self.nl.add_route(w, RouteMode::Replace) {
                Ok(()) => report.added += 1,
                Err(e) => {
                    if let Some(subnet) = v4_dst(w) {
                        report
                            .failed
                            .push((subnet, kerr("add", w.to_string())(e).to_string()));
                    }
                }
            }
        }
        if self.network6.is_some() {
            self.reconcile_v6(peers, &mut report)?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{LeaseAttrs, SubnetKey};
    use kernel::fake::{FakeKernel, FakeNetlink};
    use kernel::netlink::{LinkRef, VethSpec};

    const NS: &str = "node";

    fn setup() -> (FakeKernel, HostGwBackend<FakeNetlink>) {
        let k = FakeKernel::new();
        let mut nl = k.netlink(NS);
        nl.create_veth(&VethSpec {
            name: "eth0",
            peer_name: "p",
            ..Default::default()
        })
        .unwrap();
        let idx = nl.link(LinkRef::Name("eth0")).unwrap().index;
        nl.add_route(
            &Route::new("192.0.2.0/24".parse().unwrap()).dev(idx),
            RouteMode::Create,
        )
        .unwrap();
        nl.add_route(
            &Route::new("0.0.0.0/0".parse().unwrap())
                .via("192.0.2.254".parse().unwrap())
                .dev(idx),
            RouteMode::Create,
        )
        .unwrap();
        let ext = ExtIface {
            index: idx,
            name: "eth0".into(),
            addr: "192.0.2.1".parse().unwrap(),
            public_ip: "192.0.2.1".parse().unwrap(),
            addr6: None,
            public_ipv6: None,
            mtu: 1500,
        };
        let mut b = HostGwBackend::new(nl, "10.244.0.0/16".parse().unwrap(), ext);
        assert_eq!(b.prepare().unwrap(), None);
        b.configure_own("10.244.1.0/24".parse().unwrap()).unwrap();
        (k, b)
    }

    fn peer(subnet: &str, ip: &str) -> Lease {
        Lease {
            key: SubnetKey::v4(subnet.parse().unwrap()),
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                public_ipv6: None,
                backend_type: "host-gw".into(),
                backend_data: None,
                backend_v6_data: None,
            },
            expiration: None,
            ttl_handle: 0,
        }
    }

    fn has_route(k: &FakeKernel, dst: &str, via: &str) -> bool {
        k.snapshot(NS).routes.iter().any(|r| {
            r.dst.to_string() == dst && r.gateway.map(|g| g.to_string()).as_deref() == Some(via)
        })
    }

    #[test]
    fn route_per_peer_via_public_ip() {
        let (k, mut b) = setup();
        assert_eq!(b.mtu(), 1500);
        let p = peer("10.244.2.0/24", "192.0.2.2");
        b.add_peer(&p).unwrap();
        assert!(has_route(&k, "10.244.2.0/24", "192.0.2.2"));
        // The peer moved to another address: replaced, not duplicated.
        let moved = peer("10.244.2.0/24", "192.0.2.22");
        b.add_peer(&moved).unwrap();
        assert!(has_route(&k, "10.244.2.0/24", "192.0.2.22"));
        assert!(!has_route(&k, "10.244.2.0/24", "192.0.2.2"));
        b.remove_peer(&moved).unwrap();
        assert!(!has_route(&k, "10.244.2.0/24", "192.0.2.22"));
        b.remove_peer(&moved).unwrap();
    }

    #[test]
    fn unreachable_peer_is_a_clear_error() {
        let (k, mut b) = setup();
        let far = peer("10.244.3.0/24", "198.51.100.3");
        let e = b.add_peer(&far).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("198.51.100.3")
                && text.contains("via gateway 192.0.2.254")
                && text.contains("L2"),
            "{text}"
        );
        assert!(!has_route(&k, "10.244.3.0/24", "198.51.100.3"));
        // vxlan leases are not ours.
        let mut vx = peer("10.244.4.0/24", "192.0.2.4");
        vx.attrs.backend_type = "vxlan".into();
        b.add_peer(&vx).unwrap();
        assert!(!has_route(&k, "10.244.4.0/24", "192.0.2.4"));
    }

    #[test]
    fn reconcile_removes_routes_of_vanished_peers_only() {
        let (k, mut b) = setup();
        let a = peer("10.244.2.0/24", "192.0.2.2");
        let gone = peer("10.244.5.0/24", "192.0.2.5");
        b.add_peer(&a).unwrap();
        b.add_peer(&gone).unwrap();
        let peers: BTreeMap<_, _> = [(a.key.v4, a.clone())].into();
        let r = b.reconcile(&peers).unwrap();
        assert_eq!((r.added, r.removed), (0, 1));
        assert!(has_route(&k, "10.244.2.0/24", "192.0.2.2"));
        assert!(!has_route(&k, "10.244.5.0/24", "192.0.2.5"));
        assert!(
            has_route(&k, "0.0.0.0/0", "192.0.2.254"),
            "default route untouched"
        );
        let from = k.calls().len();
        assert_eq!(b.reconcile(&peers).unwrap(), ReconcileReport::default());
        assert_eq!(k.calls().len(), from, "nothing touched when in sync");
    }

    #[test]
    fn nat_is_refused() {
        let (_k, mut b) = setup();
        b.ext.public_ip = "203.0.113.1".parse().unwrap();
        assert!(b.prepare().unwrap_err().to_string().contains("NAT"));
    }

    #[test]
    fn dual_stack_routes_via_public_ipv6() {
        let k = FakeKernel::new();
        let mut nl = k.netlink(NS);
        nl.create_veth(&VethSpec {
            name: "eth0",
            peer_name: "p",
            ..Default::default()
        })
        .unwrap();
        let idx = nl.link(LinkRef::Name("eth0")).unwrap().index;
        nl.add_route(
            &Route::new("192.0.2.0/24".parse().unwrap()).dev(idx),
            RouteMode::Create,
        )
        .unwrap();
        let ext = ExtIface {
            index: idx,
            name: "eth0".into(),
            addr: "192.0.2.1".parse().unwrap(),
            public_ip: "192.0.2.1".parse().unwrap(),
            addr6: Some("fd70::1".parse().unwrap()),
            public_ipv6: Some("fd70::1".parse().unwrap()),
            mtu: 1500,
        };
        let mut b = HostGwBackend::new(nl, "10.244.0.0/16".parse().unwrap(), ext.clone())
            .with_ipv6("fd00:10::/56".parse().unwrap());
        assert_eq!(b.prepare().unwrap(), None);
        b.configure_own("10.244.1.0/24".parse().unwrap()).unwrap();
        b.configure_own_v6("fd00:10:0:1::/64".parse().unwrap())
            .unwrap();
        let peer = |n: u8| Lease {
            key: SubnetKey {
                v4: format!("10.244.{n}.0/24").parse().unwrap(),
                v6: Some(format!("fd00:10:0:{n:x}::/64").parse().unwrap()),
            },
            attrs: LeaseAttrs {
                public_ip: format!("192.0.2.{n}").parse().unwrap(),
                public_ipv6: Some(format!("fd70::{n:x}").parse().unwrap()),
                backend_type: "host-gw".into(),
                backend_data: None,
                backend_v6_data: None,
            },
            expiration: None,
            ttl_handle: 0,
        };
        let (p7, p9) = (peer(7), peer(9));
        b.add_peer(&p7).unwrap();
        b.add_peer(&p9).unwrap();
        let v6_routes = || -> Vec<Route> {
            k.snapshot(NS)
                .routes
                .into_iter()
                .filter(|r| r.dst.to_string().starts_with("fd00:10:"))
                .collect()
        };
        let r = v6_routes();
        assert_eq!(r.len(), 2);
        let r7 = r
            .iter()
            .find(|r| r.dst.to_string() == "fd00:10:0:7::/64")
            .unwrap();
        assert_eq!(r7.gateway, Some("fd70::7".parse().unwrap()));
        assert_eq!(r7.oif, Some(idx));
        // Reconcile to {7} drops 9's v6 route; a deleted one comes back.
        let peers: BTreeMap<_, _> = [(p7.key.v4, p7.clone())].into();
        b.reconcile(&peers).unwrap();
        assert_eq!(v6_routes().len(), 1);
        k.netlink(NS).delete_route(&v6_routes()[0]).unwrap();
        let report = b.reconcile(&peers).unwrap();
        assert_eq!(report.added, 1, "{report:?}");
        assert_eq!(v6_routes().len(), 1);
        b.remove_peer(&p7).unwrap();
        assert!(v6_routes().is_empty());
        // Behind NAT (public IPv6 differs from the interface's) is refused.
        let mut nat = ext;
        nat.public_ipv6 = Some("2001:db8::1".parse().unwrap());
        let mut b = HostGwBackend::new(k.netlink(NS), "10.244.0.0/16".parse().unwrap(), nat)
            .with_ipv6("fd00:10::/56".parse().unwrap());
        assert!(b.prepare().unwrap_err().to_string().contains("NAT"));
    }
}
