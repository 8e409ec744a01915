//! The host-gw backend: one route per remote subnet via the peer's public IP on the
//! external interface. Needs every node on one L2 segment; a peer behind a router is
//! reported (not silently mis-routed).

use std::collections::BTreeMap;

use ipnet::{IpNet, Ipv4Net};
use kernel::netlink::{Netlink, Route, RouteMode, MAIN_TABLE};
use serde_json::Value;

use super::{
    direct_oif, ip4, kerr, same_route, v4_dst, Backend, BackendError, ExtIface, ReconcileReport,
    RouteCache,
};
use crate::lease::Lease;
use crate::log;

pub struct HostGwBackend<N: Netlink> {
    nl: N,
    network: Ipv4Net,
    ext: ExtIface,
    own: Option<Ipv4Net>,
    routes_cache: RouteCache,
}

impl<N: Netlink + Send> HostGwBackend<N> {
    pub fn new(nl: N, network: Ipv4Net, ext: ExtIface) -> Self {
        HostGwBackend {
            nl,
            network,
            ext,
            own: None,
            routes_cache: RouteCache::default(),
        }
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
        Ok(None)
    }

    fn configure_own(&mut self, own: Ipv4Net) -> Result<(), BackendError> {
        self.own = Some(own);
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
            .map_err(kerr("add", route.to_string()))
    }

    fn remove_peer(&mut self, peer: &Lease) -> Result<(), BackendError> {
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
}
