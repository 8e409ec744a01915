//! DEL: idempotent, best effort, every step attempted, every failure reported.

use crate::config::BridgeConf;
use crate::error::BridgeError;
use crate::netns_error;
use crate::system::{Pod, System};
use cni::delegate::delegate_simple;
use cni::error::join_errors;
use cni::{CniError, Command, Request};
use kernel::firewall::Attachment;
use kernel::netlink::LinkRef;
use std::time::Duration;

/// How often, and how long at most, DEL looks for the pod's interface to have left the
/// namespace before releasing its address alongside the rest of the deletion. Past the
/// limit (a kernel slower than any seen), the release simply waits for the deletion.
const DEL_WATCH_STEP: Duration = Duration::from_micros(250);
const DEL_WATCH_LIMIT: Duration = Duration::from_millis(50);

/// Removes the pod's interface (the kernel removes the host end with it), releases the
/// address, and removes the attachment's firewall rules.
///
/// Differences from the Go plugin, all so that a DEL a runtime repeats, or sends after
/// the pod namespace is gone, leaves nothing behind and still succeeds:
/// - the masquerade and spoof-check rules are removed even when `CNI_NETNS` is empty or
///   gone (they are found by comment and chain name, not by the pod's addresses);
/// - the Go plugin's iptables chain `CNI-<hash>` is removed too (a pod added by the Go
///   plugin, deleted by us);
/// - a step failing does not skip the others; all failures are reported, IPAM's first
///   (its code is the one runtimes act on);
/// - a config that no longer validates still gets its teardown.
pub fn del(sys: &dyn System, req: &Request) -> Result<(), CniError> {
    let env = req.env;
    let (conf, conf_error) = BridgeConf::lenient(req.conf, &env.args);
    if let Some(e) = conf_error {
        eprintln!("bridge: DEL with an invalid network config ({e}); tearing down anyway");
    }
    let mut ipam_errors = Vec::new();
    let mut errors: Vec<CniError> = Vec::new();

    let mut pod = None;
    if !env.netns.is_empty() {
        match sys.open_pod(&env.netns) {
            Ok(p) => pod = Some(p),
            // The namespace is gone, and the veth with it.
            Err(kernel::Error::NetnsNotFound { .. }) => {}
            Err(e) => errors.push(netns_error(&env.netns, e).into()),
        }
    }
    let delete_link = |mut pod: Box<dyn Pod + Send>| -> Option<CniError> {
        let what = || format!("failed to delete {:?} in netns {:?}", env.ifname, env.netns);
        match pod.netlink().delete_link(LinkRef::Name(&env.ifname)) {
            Ok(()) => None,
            Err(e) if e.is_not_found() => None,
            Err(e) => Some(BridgeError::kernel(what(), e).into()),
        }
    };
    // The attachment's firewall rules go once its interface has left the pod (never
    // before: the pod's traffic would leave unmasqueraded), inside the deletion's RCU wait
    // when DEL watches for that, else after the deletion.
    let teardown_firewall = || -> Vec<CniError> {
        let mut errors: Vec<CniError> = Vec::new();
        let fw = sys.firewall();
        if conf.macspoofchk {
            if let Err(e) = fw.teardown_mac_spoof_check(&env.container_id, &env.ifname) {
                errors.push(BridgeError::kernel("failed to remove the mac spoof check", e).into());
            }
        }
        if conf.is_layer3() && conf.ip_masq {
            let att = Attachment {
                network: &req.conf.name,
                container_id: &env.container_id,
                ifname: &env.ifname,
            };
            if let Err(e) = fw.teardown_masq(&att) {
                errors.push(BridgeError::kernel("failed to remove ip masquerade rules", e).into());
            }
            if let Err(e) = fw.teardown_legacy_iptables_masq(&req.conf.name, &env.container_id) {
                errors.push(
                    BridgeError::kernel("failed to remove the iptables masquerade chain", e).into(),
                );
            }
        }
        errors
    };
    let mut firewall_done = false;
    let ipam_del = |ipam: &str| delegate_simple(req.delegator, ipam, Command::Del, req.stdin, env);
    match (pod, conf.ipam_type.as_deref()) {
        // Deleting a veth takes the kernel 10-20 ms, most of it waiting for RCU after the
        // device has already left the namespace. IPAM's DEL runs in that wait, but only
        // once the interface is gone, so the pod can no longer answer for its address by
        // the time IPAM hands the address out again. A second socket in the pod watches
        // for that; no extra request takes the RTNL lock that concurrent ADDs and DELs
        // queue on (taking the link down first would, with a synchronize_net inside).
        (Some(mut pod), Some(ipam)) => match (
            pod.netlink().link(LinkRef::Name(&env.ifname)),
            sys.open_pod(&env.netns),
        ) {
            (Ok(link), Ok(mut watch)) => {
                let (link, released) = std::thread::scope(|s| {
                    let worker = s.spawn(move || delete_link(pod));
                    let mut waited = Duration::ZERO;
                    let gone = loop {
                        let gone = watch
                            .netlink()
                            .link(LinkRef::Index(link.index))
                            .is_err_and(|e| e.is_not_found());
                        if gone || worker.is_finished() || waited >= DEL_WATCH_LIMIT {
                            break gone;
                        }
                        sys.sleep(DEL_WATCH_STEP);
                        waited += DEL_WATCH_STEP;
                    };
                    let released = gone.then(|| (ipam_del(ipam), teardown_firewall()));
                    let link = worker
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    (link, released)
                });
                errors.extend(link);
                match released {
                    Some((ipam_result, firewall)) => {
                        ipam_errors.extend(ipam_result.err());
                        errors.extend(firewall);
                        firewall_done = true;
                    }
                    None => ipam_errors.extend(ipam_del(ipam).err()),
                }
            }
            // Already gone, or no second handle: nothing to overlap.
            _ => {
                errors.extend(delete_link(pod));
                ipam_errors.extend(ipam_del(ipam).err());
            }
        },
        (pod, ipam) => {
            errors.extend(pod.and_then(delete_link));
            if let Some(ipam) = ipam {
                ipam_errors.extend(ipam_del(ipam).err());
            }
        }
    }

    if !firewall_done {
        errors.extend(teardown_firewall());
    }
    ipam_errors.extend(errors);
    join_errors(ipam_errors)
}
