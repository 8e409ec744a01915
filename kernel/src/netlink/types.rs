//! Plain data types exchanged with the [`super::Netlink`] trait.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::error::Error;
use crate::netns::NetNs;

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    /// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff`, any case.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::invalid("MAC address", s, reason);
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(|| bad("expected 6 octets"))?;
            if part.len() != 2 {
                return Err(bad("each octet must be 2 hex digits"));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad("not hexadecimal"))?;
        }
        if parts.next().is_some() {
            return Err(bad("expected 6 octets"));
        }
        Ok(MacAddr(out))
    }
}

/// Names a link by index or by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRef<'a> {
    Index(u32),
    Name(&'a str),
}

impl fmt::Display for LinkRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkRef::Index(i) => write!(f, "link #{i}"),
            LinkRef::Name(n) => write!(f, "link {n:?}"),
        }
    }
}

impl From<u32> for LinkRef<'_> {
    fn from(index: u32) -> Self {
        LinkRef::Index(index)
    }
}

impl<'a> From<&'a str> for LinkRef<'a> {
    fn from(name: &'a str) -> Self {
        LinkRef::Name(name)
    }
}

/// `IFLA_INFO_KIND` of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    Veth,
    Vxlan,
    Other(String),
}

/// RFC 2863 operational state (`IFLA_OPERSTATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperState {
    Unknown,
    NotPresent,
    Down,
    LowerLayerDown,
    Testing,
    Dormant,
    Up,
    Other(u8),
}

/// Bridge-port settings of a link enslaved to a bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgePortInfo {
    pub hairpin: bool,
    pub isolated: bool,
}

/// VXLAN settings read back from a vxlan link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub port: Option<u16>,
    pub learning: Option<bool>,
    pub local: Option<IpAddr>,
    pub underlying: Option<u32>,
}

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// None for links without a kind, such as `lo` or physical NICs.
    pub kind: Option<LinkKind>,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// Index of the bridge (or other master) this link is enslaved to.
    pub master: Option<u32>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    pub promisc: bool,
    pub oper_state: OperState,
    /// `IFLA_LINK`: for a veth, the peer's ifindex (in the peer's namespace).
    pub link_index: Option<u32>,
    /// Set when `link_index` lives in another namespace.
    pub link_netnsid: Option<i32>,
    /// For bridges: whether VLAN filtering is on.
    pub vlan_filtering: Option<bool>,
    /// For bridge ports: hairpin and isolated flags.
    pub bridge_port: Option<BridgePortInfo>,
    pub vxlan: Option<VxlanInfo>,
}

/// A bridge to create.
#[derive(Debug, Clone, Default)]
pub struct BridgeSpec<'a> {
    pub name: &'a str,
    pub mtu: Option<u32>,
    /// Only sent when true: kernels built without
    /// CONFIG_BRIDGE_VLAN_FILTERING reject the attribute even when it is 0.
    pub vlan_filtering: bool,
}

/// A veth pair to create. The local end lives in the socket's namespace; the
/// peer is created directly in `peer_netns` (IFLA_NET_NS_FD), so it never
/// appears in the local namespace, not even briefly.
#[derive(Debug, Clone, Default)]
pub struct VethSpec<'a> {
    pub name: &'a str,
    pub mac: Option<MacAddr>,
    pub peer_name: &'a str,
    pub peer_mac: Option<MacAddr>,
    /// Applied to both ends.
    pub mtu: Option<u32>,
    /// None: the peer stays in the socket's namespace.
    pub peer_netns: Option<&'a NetNs>,
}

/// A VXLAN device to create (flannel's `flannel.<vni>`).
#[derive(Debug, Clone, Default)]
pub struct VxlanSpec<'a> {
    pub name: &'a str,
    pub vni: u32,
    pub local: Option<IpAddr>,
    /// UDP destination port; None = kernel default (8472 on Linux).
    pub port: Option<u16>,
    pub learning: bool,
    /// Underlying device used for the encapsulated traffic.
    pub underlying: Option<u32>,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
}

/// Bridge-port flags to change; `None` leaves a flag as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgePortFlags {
    pub hairpin: Option<bool>,
    pub isolated: Option<bool>,
}

/// A VLAN on a bridge port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BridgeVlan {
    pub vid: u16,
    /// Untagged ingress frames are assigned to this VLAN.
    pub pvid: bool,
    /// Frames leave the port untagged.
    pub untagged: bool,
}

/// Address family selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// `IFA_F_*` flags of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddressFlags(pub u32);

impl AddressFlags {
    pub const NODAD: u32 = 0x02;
    pub const DADFAILED: u32 = 0x08;
    pub const TENTATIVE: u32 = 0x40;
    pub const PERMANENT: u32 = 0x80;

    /// DAD has not finished; the address cannot be used as a source yet.
    pub fn tentative(self) -> bool {
        self.0 & Self::TENTATIVE != 0
    }

    /// DAD found a duplicate; the address will never become usable.
    pub fn dadfailed(self) -> bool {
        self.0 & Self::DADFAILED != 0
    }

    pub fn permanent(self) -> bool {
        self.0 & Self::PERMANENT != 0
    }
}

/// An address assigned to a link. `addr` keeps the host bits
/// (10.1.2.3/24), so `addr.addr()` is the address and `addr.network()` the
/// subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub ifindex: u32,
    pub addr: IpNet,
    /// `RT_SCOPE_*` value (0 universe, 253 link, 254 host).
    pub scope: u8,
    pub flags: AddressFlags,
}

/// `RT_SCOPE_*` of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteScope {
    Universe,
    Site,
    Link,
    Host,
    Nowhere,
    Other(u8),
}

/// The main routing table (`RT_TABLE_MAIN`).
pub const MAIN_TABLE: u32 = 254;

/// A route. Build one with [`Route::new`] and the chained setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// RTNH_F_ONLINK: the gateway is reachable on `oif` even though no
    /// address covers it (bridge-plugin default routes, flannel host-gw).
    pub onlink: bool,
    /// `RTA_PRIORITY`, shown as `metric` by `ip route`.
    pub metric: Option<u32>,
    pub table: u32,
    /// None when adding: link scope for a route without gateway, universe
    /// otherwise (what `ip route add` picks).
    pub scope: Option<RouteScope>,
    pub prefsrc: Option<IpAddr>,
}

impl Route {
    /// A route to `dst` in the main table. The destination is truncated to
    /// its network address.
    pub fn new(dst: IpNet) -> Self {
        Route {
            dst: dst.trunc(),
            gateway: None,
            oif: None,
            onlink: false,
            metric: None,
            table: MAIN_TABLE,
            scope: None,
            prefsrc: None,
        }
    }

    pub fn via(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self
    }

    pub fn dev(mut self, oif: u32) -> Self {
        self.oif = Some(oif);
        self
    }

    pub fn onlink(mut self) -> Self {
        self.onlink = true;
        self
    }

    pub fn metric(mut self, metric: u32) -> Self {
        self.metric = Some(metric);
        self
    }

    pub fn table(mut self, table: u32) -> Self {
        self.table = table;
        self
    }

    pub fn scope(mut self, scope: RouteScope) -> Self {
        self.scope = Some(scope);
        self
    }

    pub fn family(&self) -> Family {
        Family::of(&self.dst.addr())
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route {}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        if let Some(m) = self.metric {
            write!(f, " metric {m}")?;
        }
        if self.table != MAIN_TABLE {
            write!(f, " table {}", self.table)?;
        }
        Ok(())
    }
}

/// How an added route combines with existing ones for the same destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    /// Fail with EEXIST if the route exists (`ip route add`).
    Create,
    /// Add another nexthop/route for the same destination, ECMP style
    /// (`ip route append`, NLM_F_CREATE|NLM_F_APPEND); what the bridge plugin
    /// uses for IPAM routes.
    Append,
    /// Create or overwrite (`ip route replace`).
    Replace,
}

/// Which routes to list. The kernel filters on these when it supports strict
/// dump checking; the results are filtered again here for older kernels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteFilter {
    pub family: Option<Family>,
    /// None: all tables.
    pub table: Option<u32>,
    pub oif: Option<u32>,
}

/// `NUD_*` state of a neighbour entry.
pub const NUD_PERMANENT: u16 = 0x80;

/// An ARP (IPv4) or NDP (IPv6) neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: Option<MacAddr>,
    /// `NUD_*` bits; entries added through this crate are NUD_PERMANENT.
    pub state: u16,
}

/// A forwarding-database entry on a VXLAN (or bridge) device, with the
/// remote VTEP the MAC is reached through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub ifindex: u32,
    pub mac: MacAddr,
    pub dst: Option<IpAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac: MacAddr = "0A-1b:2C:3d:4E:5f".parse().unwrap();
        assert_eq!(mac.0, [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]);
        assert_eq!(mac.to_string(), "0a:1b:2c:3d:4e:5f");
        for bad in [
            "",
            "0a:1b:2c:3d:4e",
            "0a:1b:2c:3d:4e:5f:00",
            "0a:1b:2c:3d:4e:zz",
            "a:1b:2c:3d:4e:5f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn route_builder_truncates_and_displays() {
        let r = Route::new("10.1.2.3/24".parse().unwrap())
            .via("10.1.2.1".parse().unwrap())
            .dev(3)
            .metric(100)
            .table(7);
        assert_eq!(r.dst.to_string(), "10.1.2.0/24");
        assert_eq!(
            r.to_string(),
            "route 10.1.2.0/24 via 10.1.2.1 dev #3 metric 100 table 7"
        );
        assert_eq!(r.family(), Family::V4);
    }

    #[test]
    fn address_flags() {
        let f = AddressFlags(AddressFlags::TENTATIVE | AddressFlags::PERMANENT);
        assert!(f.tentative() && f.permanent() && !f.dadfailed());
    }
}
