//! The seam between the plugin's logic and the machine: the host namespace (netlink,
//! sysctl, firewall), pod namespaces, sleeping and randomness. [`RealSystem`] is the
//! only place that touches the real kernel; unit tests substitute the fakes of
//! `kernel::fake`.

use kernel::netlink::{Netlink, RouteSocket};
use kernel::{Firewall, NetNs, ProcSysctl, Sysctl};
use std::time::Duration;

/// A macspoofchk attachment found in the firewall (for GC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoofCheckRef {
    /// `<containerID>-<ifname>`, as the rule comment and chain names carry it.
    pub ref_id: String,
    /// The host veth the rule matches on, when the rule says.
    pub host_veth: Option<String>,
}

/// `Sync`, and handing out `Send` handles: ADD sets up the bridge and veth on a worker
/// thread while IPAM runs.
pub trait System: Sync {
    /// Netlink in the plugin's (host) namespace.
    fn host_netlink(&self) -> kernel::Result<Box<dyn Netlink + Send>>;
    fn host_sysctl(&self) -> &dyn Sysctl;
    fn firewall(&self) -> &dyn Firewall;
    /// A handle on the host namespace, where the veth peer is created.
    fn host_ns(&self) -> kernel::Result<NetNs>;
    /// Opens a pod's namespace. Missing paths fail with `is_not_found()`, paths that are
    /// not network namespaces with [`kernel::Error::NotNetns`].
    fn open_pod(&self, path: &str) -> kernel::Result<Box<dyn Pod + Send>>;
    /// The macspoofchk attachments present (GC only).
    fn spoof_checks(&self) -> kernel::Result<Vec<SpoofCheckRef>>;
    fn sleep(&self, d: Duration);
    fn random_u32(&self) -> u32;
}

/// One opened pod namespace.
pub trait Pod {
    /// Netlink bound to the pod's namespace.
    fn netlink(&mut self) -> &mut dyn Netlink;
    /// Runs `f` with sysctl access resolved in the pod's namespace (/proc/sys/net
    /// follows the calling thread's namespace).
    fn with_sysctl(&self, f: &mut (dyn FnMut(&dyn Sysctl) + Send)) -> kernel::Result<()>;
}

/// The machine itself.
pub struct RealSystem<F: Firewall> {
    sysctl: ProcSysctl,
    firewall: F,
}

impl<F: Firewall> RealSystem<F> {
    pub fn new(firewall: F) -> Self {
        RealSystem {
            sysctl: ProcSysctl::default(),
            firewall,
        }
    }
}

struct RealPod {
    ns: NetNs,
    socket: RouteSocket,
}

impl Pod for RealPod {
    fn netlink(&mut self) -> &mut dyn Netlink {
        &mut self.socket
    }

    fn with_sysctl(&self, f: &mut (dyn FnMut(&dyn Sysctl) + Send)) -> kernel::Result<()> {
        // /proc/sys/net resolves in the opening thread's namespace. Entered on this thread
        // and left again, as `open_pod` does: two setns calls where a helper thread would
        // cost a clone, a stack and a signal stack. The guard switches back when `f` returns
        // or unwinds, and aborts the process if it cannot.
        let _back = self.ns.enter()?;
        f(&ProcSysctl::default());
        Ok(())
    }
}

impl<F: Firewall + crate::firewall::SpoofCheckLister + Sync> System for RealSystem<F> {
    fn host_netlink(&self) -> kernel::Result<Box<dyn Netlink + Send>> {
        Ok(Box::new(RouteSocket::open()?))
    }

    fn host_sysctl(&self) -> &dyn Sysctl {
        &self.sysctl
    }

    fn firewall(&self) -> &dyn Firewall {
        &self.firewall
    }

    fn host_ns(&self) -> kernel::Result<NetNs> {
        NetNs::current()
    }

    fn open_pod(&self, path: &str) -> kernel::Result<Box<dyn Pod + Send>> {
        let ns = NetNs::open(path)?;
        // On this thread and back (the guard switches back, or aborts the process if it
        // cannot): two setns calls, where `RouteSocket::open_in` would start a thread.
        let socket = {
            let _back = ns.enter()?;
            RouteSocket::open()?
        };
        Ok(Box::new(RealPod { ns, socket }))
    }

    fn spoof_checks(&self) -> kernel::Result<Vec<SpoofCheckRef>> {
        self.firewall.spoof_checks()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }

    fn random_u32(&self) -> u32 {
        // RandomState's keys come from getrandom(2). The rand crate's thread RNG would run
        // CPUID feature detection first: ten CPUIDs at ~15 us each under a hypervisor, in
        // every plugin process.
        std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), ()) as u32
    }
}
