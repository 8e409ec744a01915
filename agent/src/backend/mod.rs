//! Data planes: what a lease turns into in the kernel.
//!
//! Both backends work through [`kernel::netlink::Netlink`] (unit-tested against
//! `kernel::fake`). Each programs peers incrementally on lease events and can
//! [`Backend::reconcile`] the kernel against the full peer set: entries it owns that
//! no lease justifies are removed, missing or wrong ones are (re)added, correct ones
//! are left alone, so an agent restart causes no traffic blip.
//!
//! Ownership, since routes carry no flannel tag: a route whose destination lies inside
//! the cluster `Network` (other than our own subnet) and that goes through the vxlan
//! device, or through the external interface via a gateway, is ours.

pub mod hostgw;
pub mod vxlan;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use kernel::netlink::{Route, MAIN_TABLE};

use crate::lease::Lease;

/// The interface the overlay runs over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtIface {
    pub index: u32,
    pub name: String,
    /// The interface's own IPv4 address (VXLAN source).
    pub addr: Ipv4Addr,
    /// What we advertise (`--public-ip`, else `addr`).
    pub public_ip: Ipv4Addr,
    /// The interface's global IPv6 address (the IPv6 VXLAN source), if it has one.
    pub addr6: Option<Ipv6Addr>,
    /// What we advertise as `PublicIPv6` (`--public-ipv6`, else `addr6`).
    pub public_ipv6: Option<Ipv6Addr>,
    pub mtu: u32,
}

/// Backend failures, each naming the operation, the object and the cause.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{op} {object}: {source}")]
    Kernel {
        op: &'static str,
        object: String,
        // Boxed: kernel errors are large and this type travels up every call.
        #[source]
        source: Box<kernel::Error>,
    },
    #[error("backend type {0:?} is not supported by this agent (use \"vxlan\" or \"host-gw\")")]
    Unsupported(String),
    #[error("peer {subnet} at {public_ip} is not directly reachable from {iface}: {reason}; host-gw needs every node on one L2 segment")]
    Unreachable {
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
        iface: String,
        reason: String,
    },
    #[error("{0}")]
    Setup(String),
}

/// The main table's IPv4 routes, re-read at most every two seconds: planning a batch of
/// new peers asks for them once per peer, and a dump per lease would make convergence
/// grow with the square of the node count.
#[derive(Default)]
pub(crate) struct RouteCache(Option<(std::time::Instant, Vec<kernel::netlink::Route>)>);

impl RouteCache {
    const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(2);

    /// The cached routes, or a fresh dump when `fresh`, empty or stale.
    pub(crate) fn get(
        &mut self,
        nl: &mut dyn kernel::netlink::Netlink,
        fresh: bool,
    ) -> Result<Vec<kernel::netlink::Route>, BackendError> {
        if let (false, Some((at, routes))) = (fresh, &self.0) {
            if at.elapsed() < Self::MAX_AGE {
                return Ok(routes.clone());
            }
        }
        let filter = kernel::netlink::RouteFilter {
            family: Some(kernel::netlink::Family::V4),
            table: Some(kernel::netlink::MAIN_TABLE),
            oif: None,
        };
        let routes = nl.routes(&filter).map_err(kerr("list", "routes"))?;
        self.0 = Some((std::time::Instant::now(), routes.clone()));
        Ok(routes)
    }

    pub(crate) fn invalidate(&mut self) {
        self.0 = None;
    }
}

pub(crate) fn kerr(
    op: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(kernel::Error) -> BackendError {
    let object = object.into();
    move |source| BackendError::Kernel {
        op,
        object,
        source: Box::new(source),
    }
}

/// What a reconcile pass changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub added: usize,
    pub removed: usize,
    /// Peers that could not be programmed, with the reason.
    pub failed: Vec<(Ipv4Net, String)>,
}

/// A data plane.
pub trait Backend: Send {
    /// `BackendType` of our lease; peers of another type are ignored.
    fn backend_type(&self) -> &'static str;
    /// MTU for pods (subnet.env `FLANNEL_MTU`).
    fn mtu(&self) -> u32;
    /// Creates or adopts the backend's device; returns the lease's `BackendData`.
    fn prepare(&mut self) -> Result<Option<serde_json::Value>, BackendError>;
    /// The lease's `BackendV6Data` (valid after `prepare`; None without IPv6).
    fn backend_v6_data(&self) -> Option<serde_json::Value> {
        None
    }
    /// Applies our own lease (vxlan: the device address).
    fn configure_own(&mut self, own: Ipv4Net) -> Result<(), BackendError>;
    /// Applies the IPv6 part of our own lease (vxlan: the IPv6 device address).
    fn configure_own_v6(&mut self, _own: Ipv6Net) -> Result<(), BackendError> {
        Ok(())
    }
    /// Programs one peer (idempotent).
    fn add_peer(&mut self, peer: &Lease) -> Result<(), BackendError>;
    /// Removes one peer's entries (missing entries are fine).
    fn remove_peer(&mut self, peer: &Lease) -> Result<(), BackendError>;
    /// Makes the kernel match `peers` exactly for what this backend owns.
    fn reconcile(
        &mut self,
        peers: &BTreeMap<Ipv4Net, Lease>,
    ) -> Result<ReconcileReport, BackendError>;
}

pub(crate) fn v4_dst(route: &Route) -> Option<Ipv4Net> {
    match route.dst {
        IpNet::V4(n) => Some(n),
        IpNet::V6(_) => None,
    }
}

/// Whether a listed kernel route is the route we want (fields we set).
pub(crate) fn same_route(actual: &Route, want: &Route) -> bool {
    actual.dst == want.dst
        && actual.table == want.table
        && actual.gateway == want.gateway
        && want.oif.is_none_or(|o| actual.oif == Some(o))
        && actual.onlink == want.onlink
}

/// Longest-prefix match of `ip` over main-table IPv4 routes (lowest metric on ties),
/// what `ip route get` would pick for plain unicast.
pub(crate) fn lookup(routes: &[Route], ip: Ipv4Addr) -> Option<&Route> {
    routes
        .iter()
        .filter(|r| r.table == MAIN_TABLE)
        .filter(|r| matches!(r.dst, IpNet::V4(n) if n.contains(&ip)))
        .max_by(|a, b| {
            a.dst
                .prefix_len()
                .cmp(&b.dst.prefix_len())
                .then(b.metric.unwrap_or(0).cmp(&a.metric.unwrap_or(0)))
        })
}

/// The interface through which `ip` is on-link (no gateway), or why not.
pub(crate) fn direct_oif(routes: &[Route], ip: Ipv4Addr) -> Result<u32, String> {
    match lookup(routes, ip) {
        None => Err("no route".into()),
        Some(r) => match (r.gateway, r.oif) {
            (Some(gw), _) => Err(format!("the route to it goes via gateway {gw}")),
            (None, Some(oif)) => Ok(oif),
            (None, None) => Err(format!("the route to it ({}) has no interface", r.dst)),
        },
    }
}

pub(crate) fn ip4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

pub(crate) fn ip6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

pub(crate) fn v6_dst(route: &Route) -> Option<Ipv6Net> {
    match route.dst {
        IpNet::V6(n) => Some(n),
        IpNet::V4(_) => None,
    }
}

/// The main table's IPv6 routes.
pub(crate) fn routes_v6(nl: &mut dyn kernel::netlink::Netlink) -> Result<Vec<Route>, BackendError> {
    let filter = kernel::netlink::RouteFilter {
        family: Some(kernel::netlink::Family::V6),
        table: Some(MAIN_TABLE),
        oif: None,
    };
    nl.routes(&filter).map_err(kerr("list", "IPv6 routes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(dst: &str) -> Route {
        Route::new(dst.parse().unwrap())
    }

    #[test]
    fn longest_prefix_match_decides_directness() {
        let routes = vec![
            r("0.0.0.0/0").via("192.0.2.254".parse().unwrap()).dev(2),
            r("192.0.2.0/24").dev(2),
            r("198.51.100.0/24")
                .via("192.0.2.1".parse().unwrap())
                .dev(2),
            r("198.51.100.7/32").dev(3).metric(5),
            r("198.51.100.7/32").dev(4).metric(1),
        ];
        assert_eq!(direct_oif(&routes, "192.0.2.9".parse().unwrap()), Ok(2));
        assert!(direct_oif(&routes, "198.51.100.9".parse().unwrap())
            .unwrap_err()
            .contains("via gateway 192.0.2.1"));
        assert_eq!(direct_oif(&routes, "198.51.100.7".parse().unwrap()), Ok(4));
        assert!(direct_oif(&routes, "203.0.113.1".parse().unwrap())
            .unwrap_err()
            .contains("254"));
        assert_eq!(
            direct_oif(&routes[1..2], "10.0.0.1".parse().unwrap()),
            Err("no route".into())
        );
    }

    #[test]
    fn route_identity() {
        let want = r("10.1.2.0/24")
            .via("10.1.2.0".parse().unwrap())
            .dev(7)
            .onlink();
        let mut got = want.clone();
        got.scope = Some(kernel::netlink::RouteScope::Universe);
        got.metric = Some(0);
        assert!(same_route(&got, &want));
        got.onlink = false;
        assert!(!same_route(&got, &want));
    }
}
