//! Synchronous rtnetlink: links, bridge ports and VLANs, addresses, routes,
//! neighbours and FDB entries.
//!
//! [`RouteSocket`] is the real implementation of [`Netlink`]; a socket is
//! bound to the namespace it was opened in ([`RouteSocket::open_in`]), so
//! pod-side work needs no thread switching once the socket exists.

mod detached;
mod msg;
mod ops;
mod socket;
mod types;

pub use detached::PendingDelete;
pub use socket::RouteSocket;
pub use types::*;

use ipnet::IpNet;

use crate::error::Result;

/// Kernel networking operations used by the bridge plugin and the overlay
/// agent. Errors keep the kernel's errno, so callers can tolerate
/// [`crate::Error::is_exists`] / [`crate::Error::is_not_found`].
pub trait Netlink {
    /// One link; a missing link is an error for which `is_not_found()` holds.
    fn link(&mut self, link: LinkRef<'_>) -> Result<Link>;
    /// Every link in the namespace.
    fn links(&mut self) -> Result<Vec<Link>>;

    /// Creates a bridge; EEXIST when the name is taken.
    fn create_bridge(&mut self, spec: &BridgeSpec<'_>) -> Result<()>;
    /// Creates a veth pair in one request; EEXIST when either name is taken
    /// in its namespace.
    fn create_veth(&mut self, spec: &VethSpec<'_>) -> Result<()>;
    /// Creates a VXLAN device.
    fn create_vxlan(&mut self, spec: &VxlanSpec<'_>) -> Result<()>;
    /// Deletes a link (deleting one end of a veth removes both).
    fn delete_link(&mut self, link: LinkRef<'_>) -> Result<()>;
    /// Starts deleting a link and returns before the kernel is done with it: the caller
    /// watches for the link to leave the namespace, and only needs the answer if it does
    /// not (see `PendingDelete`). The socket must not be used again until the answer is
    /// in. The default deletes synchronously.
    fn delete_link_detached(&mut self, link: LinkRef<'_>) -> PendingDelete {
        PendingDelete::done(self.delete_link(link))
    }

    fn set_up(&mut self, link: LinkRef<'_>, up: bool) -> Result<()>;
    fn set_mtu(&mut self, link: LinkRef<'_>, mtu: u32) -> Result<()>;
    fn set_mac(&mut self, link: LinkRef<'_>, mac: MacAddr) -> Result<()>;
    /// Enslaves the link to `master` (a bridge ifindex), or frees it (None).
    fn set_master(&mut self, link: LinkRef<'_>, master: Option<u32>) -> Result<()>;
    /// Enslaves the link to `master` and sets it up. The socket does both in one request
    /// (one RTNL acquisition instead of two, which concurrent ADDs queue on); the default
    /// is the two requests.
    fn set_master_and_up(&mut self, link: LinkRef<'_>, master: u32) -> Result<()> {
        self.set_master(link, Some(master))?;
        self.set_up(link, true)
    }
    fn set_promisc(&mut self, link: LinkRef<'_>, on: bool) -> Result<()>;

    /// Sets hairpin / isolated on a bridge port.
    fn set_bridge_port(&mut self, port: u32, flags: &BridgePortFlags) -> Result<()>;
    /// Adds (or updates the flags of) a VLAN on a bridge port.
    fn bridge_vlan_add(&mut self, port: u32, vlan: BridgeVlan) -> Result<()>;
    /// Removes a VLAN from a bridge port; ENOENT if absent.
    fn bridge_vlan_del(&mut self, port: u32, vid: u16) -> Result<()>;
    /// VLANs configured on a bridge port, sorted by id.
    fn bridge_vlans(&mut self, port: u32) -> Result<Vec<BridgeVlan>>;

    /// Addresses, optionally only those of one link and/or family.
    fn addresses(&mut self, ifindex: Option<u32>, family: Option<Family>) -> Result<Vec<Address>>;
    /// Adds `addr` (host bits set, e.g. 10.1.2.3/24); EEXIST if present.
    fn add_address(&mut self, ifindex: u32, addr: IpNet) -> Result<()>;
    /// Removes an address; EADDRNOTAVAIL (`is_not_found`) if absent.
    fn delete_address(&mut self, ifindex: u32, addr: IpNet) -> Result<()>;

    fn routes(&mut self, filter: &RouteFilter) -> Result<Vec<Route>>;
    fn add_route(&mut self, route: &Route, mode: RouteMode) -> Result<()>;
    /// Deletes the route matching `route`'s destination, table and, when
    /// set, gateway, oif and metric; ESRCH (`is_not_found`) if none.
    fn delete_route(&mut self, route: &Route) -> Result<()>;

    /// ARP / NDP entries (not FDB), optionally of one link and/or family.
    fn neighbours(
        &mut self,
        ifindex: Option<u32>,
        family: Option<Family>,
    ) -> Result<Vec<Neighbour>>;
    /// Adds or replaces a permanent neighbour entry.
    fn add_neighbour(&mut self, neighbour: &Neighbour) -> Result<()>;
    fn delete_neighbour(&mut self, neighbour: &Neighbour) -> Result<()>;

    /// FDB entries of one device.
    fn fdb(&mut self, ifindex: u32) -> Result<Vec<FdbEntry>>;
    /// Adds or replaces a permanent FDB entry (`bridge fdb replace ... self`).
    fn add_fdb(&mut self, entry: &FdbEntry) -> Result<()>;
    fn delete_fdb(&mut self, entry: &FdbEntry) -> Result<()>;
}
