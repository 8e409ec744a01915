//! /proc/sys access inside private namespaces.

mod common;

use common::{isolate, PodNs};
use kernel::netlink::{Family, VethSpec};
use kernel::{run_in_netns, NetNs, Netlink, ProcSysctl, RouteSocket, Sysctl, SysctlKey};

#[test]
fn sysctls_follow_the_calling_threads_namespace() {
    let Some(own) = isolate() else { return };
    let root = NetNs::open("/proc/self/ns/net").unwrap();
    let sys = ProcSysctl::default();
    let forward = SysctlKey::forwarding(Family::V4);
    let read_root = || run_in_netns(&root, || sys.read(&forward)).unwrap().unwrap();
    let root_before = read_root();

    sys.write(&forward, "0").unwrap();
    assert_eq!(sys.read(&forward).unwrap(), "0");
    assert!(sys.ensure(&forward, "1").unwrap());
    assert!(!sys.ensure(&forward, "1").unwrap());
    assert_eq!(sys.read(&forward).unwrap(), "1");
    assert_eq!(read_root(), root_before, "root namespace must be untouched");

    // Interface keys of the pod: only visible from a thread inside the pod.
    let pod = PodNs::new();
    let pod_ns = pod.open();
    let mut pod_sock = RouteSocket::open_in(&pod_ns).unwrap();
    pod_sock
        .create_veth(&VethSpec {
            name: "eth0",
            peer_name: "vethsys0",
            peer_netns: Some(&own),
            ..Default::default()
        })
        .unwrap();
    let arp_notify = SysctlKey::interface(Family::V4, "eth0", "arp_notify").unwrap();
    let accept_dad = SysctlKey::interface(Family::V6, "eth0", "accept_dad").unwrap();
    let (arp, dad) = run_in_netns(&pod_ns, || -> kernel::Result<(String, bool)> {
        sys.write(&arp_notify, "1")?;
        Ok((sys.read(&arp_notify)?, sys.ensure(&accept_dad, "0")?))
    })
    .unwrap()
    .unwrap();
    assert_eq!(arp, "1");
    assert!(dad, "accept_dad defaults to 1");
    let err = sys.read(&arp_notify).unwrap_err();
    assert!(
        err.is_not_found(),
        "eth0 is not in the host namespace: {err}"
    );
    assert!(
        err.to_string().contains("net/ipv4/conf/eth0/arp_notify"),
        "{err}"
    );

    let host_end = SysctlKey::interface(Family::V6, "vethsys0", "accept_ra").unwrap();
    sys.write(&host_end, "0").unwrap();
    assert_eq!(sys.read(&host_end).unwrap(), "0");
}
