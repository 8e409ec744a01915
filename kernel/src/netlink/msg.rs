//! Pure translation between this crate's types and rtnetlink messages, kept
//! apart from the socket so it can be unit-tested without privileges.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};

use ipnet::IpNet;
use netlink_packet_core::DefaultNla;
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    AfSpecBridge, BridgeVlanInfo, BridgeVlanInfoFlags, InfoBridge, InfoBridgePort, InfoData,
    InfoKind, InfoPortData, InfoVeth, InfoVxlan, LinkAttribute, LinkExtentMask, LinkFlags,
    LinkInfo, LinkMessage, LinkProtoInfoBridge, State,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteNextHopFlags, RouteProtocol,
    RouteScope as NlScope, RouteType,
};
use netlink_packet_route::AddressFamily;

use super::types::*;

/// `IFLA_BRPORT_MODE`: hairpin (reflective relay) on a bridge port.
const IFLA_BRPORT_MODE: u16 = 4;
/// `IFLA_BRPORT_ISOLATED`: isolated ports cannot talk to each other.
const IFLA_BRPORT_ISOLATED: u16 = 33;
/// `RT_TABLE_COMPAT`: what the 8-bit header field holds for tables ≥ 256,
/// whose real id travels in RTA_TABLE.
const RT_TABLE_COMPAT: u8 = 252;

fn af(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

/// A link message addressing `link` by index or (index 0 + IFLA_IFNAME) name;
/// the kernel resolves names for get, set and delete alike.
pub(crate) fn link_ref_message(link: LinkRef<'_>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    match link {
        LinkRef::Index(i) => msg.header.index = i,
        LinkRef::Name(n) => msg.attributes.push(LinkAttribute::IfName(n.to_owned())),
    }
    msg
}

/// RTM_GETLINK of one link (or a dump when neither index nor name is set) without its
/// counters: IFLA_STATS/STATS64 and the IPv6 statistics are a third of a bridge's reply,
/// and nothing here reads them.
pub(crate) fn get_link_message(link: Option<LinkRef<'_>>) -> LinkMessage {
    let mut msg = match link {
        Some(l) => link_ref_message(l),
        None => LinkMessage::default(),
    };
    msg.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    msg
}

/// A new link's common attributes: name, and MTU / MAC when given.
fn named_link(name: &str, mtu: Option<u32>, mac: Option<MacAddr>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    if let Some(mtu) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = mac {
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    }
    msg
}

pub(crate) fn new_bridge(spec: &BridgeSpec<'_>) -> LinkMessage {
    let mut msg = named_link(spec.name, spec.mtu, None);
    let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
    if spec.vlan_filtering {
        // Only on request: kernels without CONFIG_BRIDGE_VLAN_FILTERING
        // refuse the attribute with EOPNOTSUPP even when it is 0.
        info.push(LinkInfo::Data(InfoData::Bridge(vec![
            InfoBridge::VlanFiltering(true),
        ])));
    }
    msg.attributes.push(LinkAttribute::LinkInfo(info));
    msg
}

/// One TX and one RX queue per end, stated in the request. veth otherwise allocates a
/// queue per possible CPU and then cuts the real count to one in `veth_init_queues`, and
/// shrinking the real TX queues of a registered device runs `synchronize_net()`: an
/// expedited RCU grace period under the RTNL lock, twice per pair. Measured with
/// sched_switch tracing, those were the most frequent sleep of 4 concurrent ADDs, and every
/// other ADD and DEL on the node queued behind them on RTNL. Traffic sees no difference
/// (one real queue either way); what goes is the spare queues `ethtool -L` could enable.
const VETH_QUEUES: u32 = 1;

pub(crate) fn new_veth(spec: &VethSpec<'_>) -> LinkMessage {
    let mut peer = named_link(spec.peer_name, spec.mtu, spec.peer_mac);
    peer.attributes.extend([
        LinkAttribute::NumTxQueues(VETH_QUEUES),
        LinkAttribute::NumRxQueues(VETH_QUEUES),
    ]);
    if let Some(ns) = spec.peer_netns {
        // The kernel resolves the fd while handling the request, so it only
        // has to stay open until then; `spec` borrowing `ns` guarantees that.
        peer.attributes
            .push(LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()));
    }
    let mut msg = named_link(spec.name, spec.mtu, spec.mac);
    msg.attributes.extend([
        LinkAttribute::NumTxQueues(VETH_QUEUES),
        LinkAttribute::NumRxQueues(VETH_QUEUES),
    ]);
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    msg
}

pub(crate) fn new_vxlan(spec: &VxlanSpec<'_>) -> LinkMessage {
    let mut data = vec![InfoVxlan::Id(spec.vni)];
    match spec.local {
        Some(IpAddr::V4(a)) => data.push(InfoVxlan::Local(a)),
        Some(IpAddr::V6(a)) => data.push(InfoVxlan::Local6(a)),
        None => {}
    }
    if let Some(port) = spec.port {
        data.push(InfoVxlan::Port(port));
    }
    data.push(InfoVxlan::Learning(spec.learning));
    if let Some(dev) = spec.underlying {
        data.push(InfoVxlan::Link(dev));
    }
    let mut msg = named_link(spec.name, spec.mtu, spec.mac);
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vxlan),
        LinkInfo::Data(InfoData::Vxlan(data)),
    ]));
    msg
}

/// Changes IFF_UP or IFF_PROMISC only: `change_mask` tells the kernel to
/// leave every other flag alone.
pub(crate) fn set_flag(link: LinkRef<'_>, flag: LinkFlags, on: bool) -> LinkMessage {
    let mut msg = link_ref_message(link);
    msg.header.change_mask = flag;
    if on {
        msg.header.flags = flag;
    }
    msg
}

pub(crate) fn set_attr(link: LinkRef<'_>, attr: LinkAttribute) -> LinkMessage {
    let mut msg = link_ref_message(link);
    msg.attributes.push(attr);
    msg
}

/// AF_BRIDGE SETLINK with a nested IFLA_PROTINFO: handled by the bridge the
/// port belongs to (br_setlink), which fails with EINVAL for non-ports.
pub(crate) fn bridge_port_flags(port: u32, flags: &BridgePortFlags) -> LinkMessage {
    let mut nested = Vec::new();
    if let Some(h) = flags.hairpin {
        nested.push(LinkProtoInfoBridge::Other(DefaultNla::new(
            IFLA_BRPORT_MODE,
            vec![u8::from(h)],
        )));
    }
    if let Some(i) = flags.isolated {
        nested.push(LinkProtoInfoBridge::Other(DefaultNla::new(
            IFLA_BRPORT_ISOLATED,
            vec![u8::from(i)],
        )));
    }
    let mut msg = LinkMessage::default();
    msg.header.interface_family = AddressFamily::Bridge;
    msg.header.index = port;
    msg.attributes.push(LinkAttribute::ProtoInfoBridge(nested));
    msg
}

/// AF_BRIDGE SETLINK/DELLINK body adding or removing one VLAN on a port.
pub(crate) fn bridge_vlan(port: u32, vlan: BridgeVlan) -> LinkMessage {
    let mut flags = BridgeVlanInfoFlags::empty();
    if vlan.pvid {
        flags |= BridgeVlanInfoFlags::Pvid;
    }
    if vlan.untagged {
        flags |= BridgeVlanInfoFlags::Untagged;
    }
    let mut msg = LinkMessage::default();
    msg.header.interface_family = AddressFamily::Bridge;
    msg.header.index = port;
    msg.attributes
        .push(LinkAttribute::AfSpecBridge(vec![AfSpecBridge::VlanInfo(
            BridgeVlanInfo {
                flags,
                vid: vlan.vid,
            },
        )]));
    msg
}

/// AF_BRIDGE dump with RTEXT_FILTER_BRVLAN. Strict checking forbids an
/// ifindex in this request, so the caller picks its port out of the dump.
pub(crate) fn bridge_vlan_dump() -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.interface_family = AddressFamily::Bridge;
    msg.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Brvlan]));
    msg
}

pub(crate) fn parse_bridge_vlans(msg: &LinkMessage, port: u32) -> Vec<BridgeVlan> {
    if msg.header.index != port {
        return Vec::new();
    }
    let mut out = Vec::new();
    for attr in &msg.attributes {
        if let LinkAttribute::AfSpecBridge(specs) = attr {
            for spec in specs {
                if let AfSpecBridge::VlanInfo(info) = spec {
                    out.push(BridgeVlan {
                        vid: info.vid,
                        pvid: info.flags.contains(BridgeVlanInfoFlags::Pvid),
                        untagged: info.flags.contains(BridgeVlanInfoFlags::Untagged),
                    });
                }
            }
        }
    }
    out
}

pub(crate) fn parse_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: 0,
        master: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        promisc: msg.header.flags.contains(LinkFlags::Promisc),
        oper_state: OperState::Unknown,
        link_index: None,
        link_netnsid: None,
        vlan_filtering: None,
        bridge_port: None,
        vxlan: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(b) => link.mac = MacAddr::from_slice(b),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(m) if *m != 0 => link.master = Some(*m),
            LinkAttribute::Link(l) => link.link_index = Some(*l),
            LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(*id),
            LinkAttribute::OperState(s) => link.oper_state = oper_state(*s),
            LinkAttribute::LinkInfo(infos) => parse_link_info(infos, &mut link),
            _ => {}
        }
    }
    link
}

fn parse_link_info(infos: &[LinkInfo], link: &mut Link) {
    for info in infos {
        match info {
            LinkInfo::Kind(kind) => {
                link.kind = Some(match kind {
                    InfoKind::Bridge => LinkKind::Bridge,
                    InfoKind::Veth => LinkKind::Veth,
                    InfoKind::Vxlan => LinkKind::Vxlan,
                    other => LinkKind::Other(other.to_string()),
                })
            }
            LinkInfo::Data(InfoData::Bridge(opts)) => {
                for o in opts {
                    if let InfoBridge::VlanFiltering(v) = o {
                        link.vlan_filtering = Some(*v);
                    }
                }
            }
            LinkInfo::Data(InfoData::Vxlan(opts)) => {
                let mut vx = VxlanInfo {
                    vni: 0,
                    port: None,
                    learning: None,
                    local: None,
                    underlying: None,
                };
                for o in opts {
                    match o {
                        InfoVxlan::Id(v) => vx.vni = *v,
                        InfoVxlan::Port(p) => vx.port = Some(*p),
                        InfoVxlan::Learning(l) => vx.learning = Some(*l),
                        InfoVxlan::Local(a) => vx.local = Some(IpAddr::V4(*a)),
                        InfoVxlan::Local6(a) => vx.local = Some(IpAddr::V6(*a)),
                        InfoVxlan::Link(l) if *l != 0 => vx.underlying = Some(*l),
                        _ => {}
                    }
                }
                link.vxlan = Some(vx);
            }
            LinkInfo::PortData(InfoPortData::BridgePort(opts)) => {
                let mut port = BridgePortInfo::default();
                for o in opts {
                    match o {
                        InfoBridgePort::HairpinMode(h) => port.hairpin = *h,
                        InfoBridgePort::Isolated(i) => port.isolated = *i,
                        _ => {}
                    }
                }
                link.bridge_port = Some(port);
            }
            _ => {}
        }
    }
}

fn oper_state(s: State) -> OperState {
    match s {
        State::Unknown => OperState::Unknown,
        State::NotPresent => OperState::NotPresent,
        State::Down => OperState::Down,
        State::LowerLayerDown => OperState::LowerLayerDown,
        State::Testing => OperState::Testing,
        State::Dormant => OperState::Dormant,
        State::Up => OperState::Up,
        State::Other(v) => OperState::Other(v),
        _ => OperState::Unknown,
    }
}

pub(crate) fn address(ifindex: u32, addr: IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = af(Family::of(&addr.addr()));
    msg.header.prefix_len = addr.prefix_len();
    msg.header.index = ifindex;
    msg.header.scope = AddressScope::Universe;
    msg.attributes.push(AddressAttribute::Local(addr.addr()));
    msg.attributes.push(AddressAttribute::Address(addr.addr()));
    // Like the Go netlink library the reference plugin uses: an IPv4
    // address gets its subnet broadcast unless the prefix has none.
    if let IpNet::V4(v4) = addr {
        if v4.prefix_len() < 31 {
            msg.attributes
                .push(AddressAttribute::Broadcast(v4.broadcast()));
        }
    }
    msg
}

/// Dump request; with strict checking the kernel returns only `ifindex`'s
/// addresses of `family`.
pub(crate) fn address_dump(ifindex: Option<u32>, family: Option<Family>) -> AddressMessage {
    let mut msg = AddressMessage::default();
    if let Some(f) = family {
        msg.header.family = af(f);
    }
    msg.header.index = ifindex.unwrap_or(0);
    msg
}

pub(crate) fn parse_address(msg: &AddressMessage) -> Option<Address> {
    let mut local = None;
    let mut address = None;
    let mut flags = u32::from(msg.header.flags.bits());
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            // The 32-bit attribute supersedes the 8-bit header field.
            AddressAttribute::Flags(f) => flags = f.bits(),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
    // point-to-point links. IPv6 only sends IFA_ADDRESS.
    let ip = local.or(address)?;
    Some(Address {
        ifindex: msg.header.index,
        addr: IpNet::new(ip, msg.header.prefix_len).ok()?,
        scope: u8::from(msg.header.scope),
        flags: AddressFlags(flags),
    })
}

fn nl_scope(s: RouteScope) -> NlScope {
    match s {
        RouteScope::Universe => NlScope::Universe,
        RouteScope::Site => NlScope::Site,
        RouteScope::Link => NlScope::Link,
        RouteScope::Host => NlScope::Host,
        RouteScope::Nowhere => NlScope::NoWhere,
        RouteScope::Other(v) => NlScope::Other(v),
    }
}

fn from_nl_scope(s: NlScope) -> RouteScope {
    match s {
        NlScope::Universe => RouteScope::Universe,
        NlScope::Site => RouteScope::Site,
        NlScope::Link => RouteScope::Link,
        NlScope::Host => RouteScope::Host,
        NlScope::NoWhere => RouteScope::Nowhere,
        NlScope::Other(v) => RouteScope::Other(v),
        _ => RouteScope::Other(u8::from(s)),
    }
}

fn set_table(msg: &mut RouteMessage, table: u32) {
    msg.header.table = u8::try_from(table).unwrap_or(RT_TABLE_COMPAT);
    msg.attributes.push(RouteAttribute::Table(table));
}

/// NEWROUTE / DELROUTE body. For deletion, scope NOWHERE and unspecified
/// protocol/type act as wildcards in the kernel's match.
pub(crate) fn route(r: &Route, for_delete: bool) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = af(r.family());
    msg.header.destination_prefix_length = r.dst.prefix_len();
    set_table(&mut msg, r.table);
    if for_delete {
        msg.header.scope = NlScope::NoWhere;
    } else {
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        let default_scope = if r.gateway.is_none() && r.oif.is_some() {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        msg.header.scope = nl_scope(r.scope.unwrap_or(default_scope));
    }
    if r.onlink {
        msg.header.flags = RouteFlags::Onlink;
    }
    if r.dst.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                r.dst.addr(),
            )));
    }
    if let Some(gw) = r.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(oif) = r.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(m) = r.metric {
        msg.attributes.push(RouteAttribute::Priority(m));
    }
    if let Some(src) = r.prefsrc {
        msg.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
    }
    msg
}

/// Dump request; strict checking lets the kernel filter on table and oif.
pub(crate) fn route_dump(filter: &RouteFilter) -> RouteMessage {
    let mut msg = RouteMessage::default();
    if let Some(f) = filter.family {
        msg.header.address_family = af(f);
    }
    if let Some(t) = filter.table {
        set_table(&mut msg, t);
    }
    if let Some(oif) = filter.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    msg
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// One kernel route; an ECMP route (RTA_MULTIPATH, how IPv6 stores
/// appended routes) becomes one [`Route`] per nexthop.
pub(crate) fn parse_route(msg: &RouteMessage) -> Vec<Route> {
    let family = match msg.header.address_family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        _ => return Vec::new(),
    };
    let unspecified = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let mut dst = unspecified;
    let mut base = Route::new(IpNet::from(unspecified));
    base.table = u32::from(msg.header.table);
    base.scope = Some(from_nl_scope(msg.header.scope));
    base.onlink = msg.header.flags.contains(RouteFlags::Onlink);
    let mut nexthops = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = route_ip(a).unwrap_or(dst),
            RouteAttribute::Gateway(a) => base.gateway = route_ip(a),
            RouteAttribute::Oif(o) => base.oif = Some(*o),
            RouteAttribute::Priority(p) => base.metric = Some(*p),
            RouteAttribute::Table(t) => base.table = *t,
            RouteAttribute::PrefSource(a) => base.prefsrc = route_ip(a),
            RouteAttribute::MultiPath(hops) => nexthops = Some(hops),
            _ => {}
        }
    }
    let Ok(net) = IpNet::new(dst, msg.header.destination_prefix_length) else {
        return Vec::new();
    };
    base.dst = net;
    match nexthops {
        None => vec![base],
        Some(hops) => hops
            .iter()
            .map(|hop| {
                let mut r = base.clone();
                r.oif = Some(hop.interface_index);
                r.onlink = hop.flags.contains(RouteNextHopFlags::Onlink);
                r.gateway = hop.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(g) => route_ip(g),
                    _ => None,
                });
                r
            })
            .collect(),
    }
}

pub(crate) fn neighbour(n: &Neighbour) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = af(Family::of(&n.ip));
    msg.header.ifindex = n.ifindex;
    msg.header.state = NeighbourState::Permanent;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(
            n.ip,
        )));
    if let Some(mac) = n.mac {
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    }
    msg
}

/// Neighbour dumps forbid an ifindex in the header under strict checking;
/// the filter goes in NDA_IFINDEX instead.
pub(crate) fn neighbour_dump(ifindex: Option<u32>, family: Option<Family>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    if let Some(f) = family {
        msg.header.family = af(f);
    }
    if let Some(i) = ifindex {
        msg.attributes.push(NeighbourAttribute::IfIndex(i));
    }
    msg
}

fn neigh_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        // In AF_BRIDGE (FDB) messages NDA_DST is the remote VTEP address,
        // which the parser cannot type from the message family.
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(&bytes[..]).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(&bytes[..]).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

pub(crate) fn parse_neighbour(msg: &NeighbourMessage) -> Option<Neighbour> {
    if !matches!(
        msg.header.family,
        AddressFamily::Inet | AddressFamily::Inet6
    ) {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(a) => ip = neigh_ip(a),
            NeighbourAttribute::LinkLayerAddress(b) => mac = MacAddr::from_slice(b),
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex: msg.header.ifindex,
        ip: ip?,
        mac,
        state: u16::from(msg.header.state),
    })
}

/// AF_BRIDGE neighbour with NTF_SELF: the entry goes into the VXLAN
/// device's own FDB (`bridge fdb ... self`), not a bridge master's.
pub(crate) fn fdb(e: &FdbEntry) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = e.ifindex;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(e.mac.0.to_vec()));
    if let Some(dst) = e.dst {
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(dst)));
    }
    msg
}

/// FDB dumps take the port filter from the header's ifindex.
pub(crate) fn fdb_dump(ifindex: u32) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = ifindex;
    msg
}

pub(crate) fn parse_fdb(msg: &NeighbourMessage) -> Option<FdbEntry> {
    if msg.header.family != AddressFamily::Bridge {
        return None;
    }
    let mut mac = None;
    let mut dst = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(b) => mac = MacAddr::from_slice(b),
            NeighbourAttribute::Destination(a) => dst = neigh_ip(a),
            _ => {}
        }
    }
    Some(FdbEntry {
        ifindex: msg.header.ifindex,
        mac: mac?,
        dst,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, NlaBuffer, NlasIterator, Parseable};
    use netlink_packet_route::route::RouteNextHop;

    fn emit(msg: &LinkMessage) -> Vec<u8> {
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        buf
    }

    /// Top-level (type, value) pairs after the 16-byte ifinfomsg.
    fn top_nlas(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
        NlasIterator::new(&bytes[16..])
            .map(|nla| {
                let nla: NlaBuffer<&[u8]> = nla.unwrap();
                (nla.kind(), nla.value().to_vec())
            })
            .collect()
    }

    fn round_trip(msg: &LinkMessage) -> LinkMessage {
        let bytes = emit(msg);
        LinkMessage::parse(&bytes[..]).unwrap()
    }

    #[test]
    fn bridge_without_vlan_filtering_sends_no_info_data() {
        let msg = new_bridge(&BridgeSpec {
            name: "cni0",
            mtu: Some(1450),
            vlan_filtering: false,
        });
        let nlas = top_nlas(&emit(&msg));
        let linkinfo = &nlas.iter().find(|(k, _)| *k == 18).unwrap().1;
        let inner: Vec<u16> = NlasIterator::new(&linkinfo[..])
            .map(|n| n.unwrap().kind())
            .collect();
        assert_eq!(inner, vec![1], "only IFLA_INFO_KIND");
        assert!(nlas
            .iter()
            .any(|(k, v)| *k == 4 && v == &1450u32.to_ne_bytes()));

        let msg = new_bridge(&BridgeSpec {
            name: "cni0",
            mtu: None,
            vlan_filtering: true,
        });
        let link = parse_link(&round_trip(&msg));
        assert_eq!(link.kind, Some(LinkKind::Bridge));
        assert_eq!(link.vlan_filtering, Some(true));
        assert_eq!(link.name, "cni0");
    }

    #[test]
    fn veth_peer_carries_its_own_attributes() {
        let mac: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        let msg = new_veth(&VethSpec {
            name: "eth0",
            mac: Some(mac),
            peer_name: "veth1234abcd",
            peer_mac: None,
            mtu: Some(1400),
            peer_netns: None,
        });
        let parsed = round_trip(&msg);
        let link = parse_link(&parsed);
        assert_eq!(
            (link.name.as_str(), link.mac, link.mtu),
            ("eth0", Some(mac), 1400)
        );
        let peer = parsed
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
                    _ => None,
                }),
                _ => None,
            })
            .unwrap();
        let queues = |m: &LinkMessage| {
            m.attributes
                .iter()
                .filter(|a| {
                    matches!(
                        a,
                        LinkAttribute::NumTxQueues(1) | LinkAttribute::NumRxQueues(1)
                    )
                })
                .count()
        };
        assert_eq!((queues(&parsed), queues(&peer)), (2, 2));
        let peer = parse_link(&peer);
        assert_eq!(
            (peer.name.as_str(), peer.mac, peer.mtu),
            ("veth1234abcd", None, 1400)
        );
    }

    #[test]
    fn bridge_port_flags_are_nested_protinfo() {
        let msg = bridge_port_flags(
            7,
            &BridgePortFlags {
                hairpin: Some(true),
                isolated: Some(false),
            },
        );
        let bytes = emit(&msg);
        assert_eq!(bytes[0], libc::AF_BRIDGE as u8);
        assert_eq!(u32::from_ne_bytes(bytes[4..8].try_into().unwrap()), 7);
        let nlas = top_nlas(&bytes);
        assert_eq!(nlas.len(), 1);
        assert_eq!(nlas[0].0, 12, "IFLA_PROTINFO");
        // br_setlink only parses the new per-attribute form when nested.
        assert_eq!(u16::from_ne_bytes([bytes[18], bytes[19]]), 12 | 0x8000);
        let inner: Vec<(u16, Vec<u8>)> = NlasIterator::new(&nlas[0].1[..])
            .map(|n| {
                let n = n.unwrap();
                (n.kind(), n.value().to_vec())
            })
            .collect();
        assert_eq!(inner, vec![(4, vec![1]), (33, vec![0])]);
    }

    #[test]
    fn vlan_message_round_trip() {
        let vlan = BridgeVlan {
            vid: 100,
            pvid: true,
            untagged: true,
        };
        let parsed = round_trip(&bridge_vlan(9, vlan));
        assert_eq!(parse_bridge_vlans(&parsed, 9), vec![vlan]);
        assert!(parse_bridge_vlans(&parsed, 8).is_empty());
    }

    #[test]
    fn vxlan_round_trip() {
        let msg = new_vxlan(&VxlanSpec {
            name: "flannel.1",
            vni: 1,
            local: Some("192.0.2.1".parse().unwrap()),
            port: Some(8472),
            learning: false,
            underlying: Some(2),
            mtu: Some(1450),
            mac: None,
        });
        let link = parse_link(&round_trip(&msg));
        assert_eq!(
            link.vxlan,
            Some(VxlanInfo {
                vni: 1,
                port: Some(8472),
                learning: Some(false),
                local: Some("192.0.2.1".parse().unwrap()),
                underlying: Some(2),
            })
        );
    }

    #[test]
    fn up_flag_uses_change_mask() {
        let msg = set_flag(LinkRef::Name("eth0"), LinkFlags::Up, false);
        assert_eq!(msg.header.change_mask, LinkFlags::Up);
        assert!(msg.header.flags.is_empty());
        assert_eq!(msg.header.index, 0);
        assert_eq!(msg.attributes, vec![LinkAttribute::IfName("eth0".into())]);
    }

    #[test]
    fn address_message_and_parse() {
        let msg = address(3, "10.1.2.3/24".parse().unwrap());
        assert!(msg
            .attributes
            .contains(&AddressAttribute::Broadcast("10.1.2.255".parse().unwrap())));
        let parsed = parse_address(&msg).unwrap();
        assert_eq!(parsed.addr.to_string(), "10.1.2.3/24");
        assert_eq!(parsed.ifindex, 3);

        let msg = address(3, "fd00::5/64".parse().unwrap());
        assert!(!msg
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Broadcast(_))));
        let mut msg = msg;
        msg.attributes.push(AddressAttribute::Flags(
            netlink_packet_route::address::AddressFlags::Tentative,
        ));
        assert!(parse_address(&msg).unwrap().flags.tentative());
        let dump = address_dump(Some(4), Some(Family::V6));
        assert_eq!(
            (dump.header.index, dump.header.family),
            (4, AddressFamily::Inet6)
        );
    }

    #[test]
    fn default_onlink_route() {
        let r = Route::new("0.0.0.0/0".parse().unwrap())
            .via("10.1.2.1".parse().unwrap())
            .dev(2)
            .onlink();
        let msg = route(&r, false);
        assert!(msg.header.flags.contains(RouteFlags::Onlink));
        assert_eq!(msg.header.scope, NlScope::Universe);
        assert_eq!(msg.header.table, 254);
        assert!(!msg
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
        let back = parse_route(&msg);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].gateway, r.gateway);
        assert!(back[0].onlink);

        let del = route(&Route::new("10.0.0.0/8".parse().unwrap()).table(1000), true);
        assert_eq!(del.header.scope, NlScope::NoWhere);
        assert_eq!(del.header.table, RT_TABLE_COMPAT);
        assert!(del.attributes.contains(&RouteAttribute::Table(1000)));

        let direct = route(&Route::new("10.9.0.0/16".parse().unwrap()).dev(4), false);
        assert_eq!(direct.header.scope, NlScope::Link);
    }

    #[test]
    fn multipath_route_expands_per_nexthop() {
        let mut msg = route(
            &Route::new("fd00:1::/64".parse().unwrap()).metric(1024),
            false,
        );
        let hop = |idx: u32, gw: &str| {
            let mut h = RouteNextHop::default();
            h.interface_index = idx;
            h.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(
                    gw.parse::<IpAddr>().unwrap(),
                )));
            h
        };
        msg.attributes.push(RouteAttribute::MultiPath(vec![
            hop(2, "fd00::1"),
            hop(3, "fd00::2"),
        ]));
        let routes = parse_route(&msg);
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[1].oif, Some(3));
        assert_eq!(routes[1].gateway, Some("fd00::2".parse().unwrap()));
        assert_eq!(routes[0].metric, Some(1024));
    }

    #[test]
    fn neighbour_and_fdb_round_trip() {
        let mac: MacAddr = "aa:bb:cc:dd:ee:ff".parse().unwrap();
        let n = Neighbour {
            ifindex: 5,
            ip: "10.244.1.0".parse().unwrap(),
            mac: Some(mac),
            state: NUD_PERMANENT,
        };
        assert_eq!(parse_neighbour(&neighbour(&n)), Some(n));
        let e = FdbEntry {
            ifindex: 5,
            mac,
            dst: Some("192.0.2.7".parse().unwrap()),
        };
        let msg = fdb(&e);
        assert_eq!(msg.header.flags, NeighbourFlags::Own);
        assert_eq!(parse_fdb(&msg), Some(e));
        assert_eq!(parse_neighbour(&msg), None, "bridge family is not ARP/NDP");
        let dump = neighbour_dump(Some(5), None);
        assert_eq!(dump.header.ifindex, 0);
        assert_eq!(dump.attributes, vec![NeighbourAttribute::IfIndex(5)]);
    }
}
