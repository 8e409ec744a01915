//! [`Netlink`] over a real [`RouteSocket`].

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::RouteNetlinkMessage as M;

use super::detached::{self, PendingDelete};
use super::msg;
use super::socket::{Ctx, RouteSocket};
use super::types::*;
use super::Netlink;
use crate::error::Result;

const CREATE_EXCL: u16 = NLM_F_CREATE | NLM_F_EXCL;
const CREATE_REPLACE: u16 = NLM_F_CREATE | NLM_F_REPLACE;

impl RouteSocket {
    fn ack(&mut self, ctx: Ctx, message: M, flags: u16) -> Result<()> {
        self.request(&ctx, message, flags).map(drop)
    }
}

fn addr_object(ifindex: u32, addr: &IpNet) -> String {
    format!("address {addr} on link #{ifindex}")
}

impl Netlink for RouteSocket {
    fn link(&mut self, link: LinkRef<'_>) -> Result<Link> {
        let ctx = Ctx::new("get", link.to_string());
        let replies = self.request(&ctx, M::GetLink(msg::get_link_message(Some(link))), 0)?;
        replies
            .iter()
            .find_map(|m| match m {
                M::NewLink(l) => Some(msg::parse_link(l)),
                _ => None,
            })
            .ok_or_else(|| ctx.protocol("no RTM_NEWLINK in reply"))
    }

    fn links(&mut self) -> Result<Vec<Link>> {
        let ctx = Ctx::new("list", "links");
        let replies = self.dump(&ctx, M::GetLink(msg::get_link_message(None)))?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                M::NewLink(l) => Some(msg::parse_link(l)),
                _ => None,
            })
            .collect())
    }

    fn create_bridge(&mut self, spec: &BridgeSpec<'_>) -> Result<()> {
        let ctx = Ctx::new("create bridge", LinkRef::Name(spec.name).to_string());
        self.ack(ctx, M::NewLink(msg::new_bridge(spec)), CREATE_EXCL)
    }

    fn create_veth(&mut self, spec: &VethSpec<'_>) -> Result<()> {
        let ctx = Ctx::new(
            "create veth",
            format!("pair {:?} / peer {:?}", spec.name, spec.peer_name),
        );
        self.ack(ctx, M::NewLink(msg::new_veth(spec)), CREATE_EXCL)
    }

    fn create_vxlan(&mut self, spec: &VxlanSpec<'_>) -> Result<()> {
        let ctx = Ctx::new(
            "create vxlan",
            format!("link {:?} vni {}", spec.name, spec.vni),
        );
        self.ack(ctx, M::NewLink(msg::new_vxlan(spec)), CREATE_EXCL)
    }

    fn delete_link(&mut self, link: LinkRef<'_>) -> Result<()> {
        let ctx = Ctx::new("delete", link.to_string());
        self.ack(ctx, M::DelLink(msg::link_ref_message(link)), 0)
    }

    fn delete_link_detached(&mut self, link: LinkRef<'_>) -> PendingDelete {
        let ctx = Ctx::new("delete", link.to_string());
        let (fd, seq, request) = self.prepare(M::DelLink(msg::link_ref_message(link)), 0);
        detached::delete_in_child(fd, &request, seq, ctx, || self.delete_link(link))
    }

    fn set_up(&mut self, link: LinkRef<'_>, up: bool) -> Result<()> {
        let ctx = Ctx::new(if up { "set up" } else { "set down" }, link.to_string());
        self.ack(ctx, M::SetLink(msg::set_flag(link, LinkFlags::Up, up)), 0)
    }

    fn set_mtu(&mut self, link: LinkRef<'_>, mtu: u32) -> Result<()> {
        let ctx = Ctx::new("set mtu", format!("{link} to {mtu}"));
        self.ack(
            ctx,
            M::SetLink(msg::set_attr(link, LinkAttribute::Mtu(mtu))),
            0,
        )
    }

    fn set_mac(&mut self, link: LinkRef<'_>, mac: MacAddr) -> Result<()> {
        let ctx = Ctx::new("set mac", format!("{link} to {mac}"));
        let attr = LinkAttribute::Address(mac.0.to_vec());
        self.ack(ctx, M::SetLink(msg::set_attr(link, attr)), 0)
    }

    fn set_master(&mut self, link: LinkRef<'_>, master: Option<u32>) -> Result<()> {
        let ctx = match master {
            Some(m) => Ctx::new("set master", format!("{link} to link #{m}")),
            None => Ctx::new("remove master", link.to_string()),
        };
        // IFLA_MASTER 0 means "no master".
        let attr = LinkAttribute::Controller(master.unwrap_or(0));
        self.ack(ctx, M::SetLink(msg::set_attr(link, attr)), 0)
    }

    fn set_master_and_up(&mut self, link: LinkRef<'_>, master: u32) -> Result<()> {
        let ctx = Ctx::new("set master and up", format!("{link} to link #{master}"));
        // do_setlink applies the flags, then IFLA_MASTER: the port comes up an instant
        // before it is enslaved, with the same end state as the two requests.
        let mut msg = msg::set_flag(link, LinkFlags::Up, true);
        msg.attributes.push(LinkAttribute::Controller(master));
        self.ack(ctx, M::SetLink(msg), 0)
    }

    fn set_promisc(&mut self, link: LinkRef<'_>, on: bool) -> Result<()> {
        let ctx = Ctx::new(
            if on {
                "set promisc on"
            } else {
                "set promisc off"
            },
            link.to_string(),
        );
        self.ack(
            ctx,
            M::SetLink(msg::set_flag(link, LinkFlags::Promisc, on)),
            0,
        )
    }

    fn set_bridge_port(&mut self, port: u32, flags: &BridgePortFlags) -> Result<()> {
        let ctx = Ctx::new("set bridge port flags", format!("link #{port} ({flags:?})"));
        self.ack(ctx, M::SetLink(msg::bridge_port_flags(port, flags)), 0)
    }

    fn bridge_vlan_add(&mut self, port: u32, vlan: BridgeVlan) -> Result<()> {
        let ctx = Ctx::new(
            "add bridge vlan",
            format!("vid {} on link #{port}", vlan.vid),
        );
        self.ack(ctx, M::SetLink(msg::bridge_vlan(port, vlan)), 0)
    }

    fn bridge_vlan_del(&mut self, port: u32, vid: u16) -> Result<()> {
        let ctx = Ctx::new("delete bridge vlan", format!("vid {vid} on link #{port}"));
        let vlan = BridgeVlan {
            vid,
            pvid: false,
            untagged: false,
        };
        self.ack(ctx, M::DelLink(msg::bridge_vlan(port, vlan)), 0)
    }

    fn bridge_vlans(&mut self, port: u32) -> Result<Vec<BridgeVlan>> {
        let ctx = Ctx::new("list bridge vlans", format!("of link #{port}"));
        let replies = self.dump(&ctx, M::GetLink(msg::bridge_vlan_dump()))?;
        let mut vlans: Vec<BridgeVlan> = replies
            .iter()
            .flat_map(|m| match m {
                M::NewLink(l) => msg::parse_bridge_vlans(l, port),
                _ => Vec::new(),
            })
            .collect();
        vlans.sort();
        Ok(vlans)
    }

    fn addresses(&mut self, ifindex: Option<u32>, family: Option<Family>) -> Result<Vec<Address>> {
        let object = match ifindex {
            Some(i) => format!("addresses of link #{i}"),
            None => "addresses".to_owned(),
        };
        let ctx = Ctx::new("list", object);
        let replies = self.dump(&ctx, M::GetAddress(msg::address_dump(ifindex, family)))?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                M::NewAddress(a) => msg::parse_address(a),
                _ => None,
            })
            .filter(|a| ifindex.is_none_or(|i| a.ifindex == i))
            .filter(|a| family.is_none_or(|f| Family::of(&a.addr.addr()) == f))
            .collect())
    }

    fn add_address(&mut self, ifindex: u32, addr: IpNet) -> Result<()> {
        let ctx = Ctx::new("add", addr_object(ifindex, &addr));
        self.ack(ctx, M::NewAddress(msg::address(ifindex, addr)), CREATE_EXCL)
    }

    fn delete_address(&mut self, ifindex: u32, addr: IpNet) -> Result<()> {
        let ctx = Ctx::new("delete", addr_object(ifindex, &addr));
        self.ack(ctx, M::DelAddress(msg::address(ifindex, addr)), 0)
    }

    fn routes(&mut self, filter: &RouteFilter) -> Result<Vec<Route>> {
        let ctx = Ctx::new("list", "routes");
        let replies = self.dump(&ctx, M::GetRoute(msg::route_dump(filter)))?;
        Ok(replies
            .iter()
            .flat_map(|m| match m {
                M::NewRoute(r) => msg::parse_route(r),
                _ => Vec::new(),
            })
            .filter(|r| filter.family.is_none_or(|f| r.family() == f))
            .filter(|r| filter.table.is_none_or(|t| r.table == t))
            .filter(|r| filter.oif.is_none_or(|o| r.oif == Some(o)))
            .collect())
    }

    fn add_route(&mut self, route: &Route, mode: RouteMode) -> Result<()> {
        let flags = match mode {
            RouteMode::Create => CREATE_EXCL,
            RouteMode::Append => NLM_F_CREATE | NLM_F_APPEND,
            RouteMode::Replace => CREATE_REPLACE,
        };
        let ctx = Ctx::new("add", route.to_string());
        self.ack(ctx, M::NewRoute(msg::route(route, false)), flags)
    }

    fn delete_route(&mut self, route: &Route) -> Result<()> {
        let ctx = Ctx::new("delete", route.to_string());
        self.ack(ctx, M::DelRoute(msg::route(route, true)), 0)
    }

    fn neighbours(
        &mut self,
        ifindex: Option<u32>,
        family: Option<Family>,
    ) -> Result<Vec<Neighbour>> {
        let ctx = Ctx::new("list", "neighbours");
        let replies = self.dump(&ctx, M::GetNeighbour(msg::neighbour_dump(ifindex, family)))?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                M::NewNeighbour(n) => msg::parse_neighbour(n),
                _ => None,
            })
            .filter(|n| ifindex.is_none_or(|i| n.ifindex == i))
            .filter(|n| family.is_none_or(|f| Family::of(&n.ip) == f))
            .collect())
    }

    fn add_neighbour(&mut self, neighbour: &Neighbour) -> Result<()> {
        let ctx = Ctx::new(
            "add",
            format!("neighbour {} on link #{}", neighbour.ip, neighbour.ifindex),
        );
        self.ack(
            ctx,
            M::NewNeighbour(msg::neighbour(neighbour)),
            CREATE_REPLACE,
        )
    }

    fn delete_neighbour(&mut self, neighbour: &Neighbour) -> Result<()> {
        let ctx = Ctx::new(
            "delete",
            format!("neighbour {} on link #{}", neighbour.ip, neighbour.ifindex),
        );
        self.ack(ctx, M::DelNeighbour(msg::neighbour(neighbour)), 0)
    }

    fn fdb(&mut self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        let ctx = Ctx::new("list", format!("fdb of link #{ifindex}"));
        let replies = self.dump(&ctx, M::GetNeighbour(msg::fdb_dump(ifindex)))?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                M::NewNeighbour(n) => msg::parse_fdb(n),
                _ => None,
            })
            .filter(|e| e.ifindex == ifindex)
            .collect())
    }

    fn add_fdb(&mut self, entry: &FdbEntry) -> Result<()> {
        let ctx = Ctx::new(
            "add",
            format!("fdb {} on link #{}", entry.mac, entry.ifindex),
        );
        self.ack(ctx, M::NewNeighbour(msg::fdb(entry)), CREATE_REPLACE)
    }

    fn delete_fdb(&mut self, entry: &FdbEntry) -> Result<()> {
        let ctx = Ctx::new(
            "delete",
            format!("fdb {} on link #{}", entry.mac, entry.ifindex),
        );
        self.ack(ctx, M::DelNeighbour(msg::fdb(entry)), 0)
    }
}
