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
/// Four DELs at once wait on RTNL for tens of ms each here, hence a limit well above
/// that; after the first 20 ms the looks get sparser.
const DEL_WATCH_STEP: Duration = Duration::from_micros(250);
const DEL_WATCH_SLOW_AFTER: Duration = Duration::from_millis(20);
const DEL_WATCH_SLOW_STEP: Duration = Duration::from_millis(1);
const DEL_WATCH_LIMIT: Duration = Duration::from_millis(1000);

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
    let link_outcome = |result: kernel::Result<()>| -> Option<CniError> {
        match result {
            Ok(()) => None,
            Err(e) if e.is_not_found() => None,
            Err(e) => Some(
                BridgeError::kernel(
                    format!("failed to delete {:?} in netns {:?}", env.ifname, env.netns),
                    e,
                )
                .into(),
            ),
        }
    };
    let delete_link = |mut pod: Box<dyn Pod + Send>| -> Option<CniError> {
        link_outcome(pod.netlink().delete_link(LinkRef::Name(&env.ifname)))
    };
    let ipam_del = |ipam: &str| delegate_simple(req.delegator, ipam, Command::Del, req.stdin, env);
    match (pod, conf.ipam_type.as_deref()) {
        // Deleting a veth takes the kernel 10-20 ms, most of it waiting for RCU after the
        // device has already left the namespace. IPAM's DEL and the firewall teardown run
        // once the interface is gone (so the pod can no longer answer for its address by
        // the time IPAM hands it out again), and the DEL returns then, leaving the rest
        // of the kernel's work to a child process. A second socket in the pod watches
        // for that; no extra request takes the RTNL lock that concurrent ADDs and DELs
        // queue on (taking the link down first would, with a synchronize_net inside).
        (Some(mut pod), Some(ipam)) => match (
            pod.netlink().link(LinkRef::Name(&env.ifname)),
            sys.open_pod(&env.netns),
        ) {
            (Ok(link), Ok(mut watch)) => {
                // The kernel's answer to the deletion comes only after it has finished
                // with the pair; a child process waits for it (see PendingDelete), and
                // the pod socket is its until then.
                let mut pending = pod
                    .netlink()
                    .delete_link_detached(LinkRef::Name(&env.ifname));
                drop(pod);
                let mut answer = None;
                let mut waited = Duration::ZERO;
                let gone = loop {
                    let gone = watch
                        .netlink()
                        .link(LinkRef::Index(link.index))
                        .is_err_and(|e| e.is_not_found());
                    if answer.is_none() {
                        answer = pending.poll();
                    }
                    if gone || answer.is_some() || waited >= DEL_WATCH_LIMIT {
                        break gone;
                    }
                    let step = if waited < DEL_WATCH_SLOW_AFTER {
                        DEL_WATCH_STEP
                    } else {
                        DEL_WATCH_SLOW_STEP
                    };
                    sys.sleep(step);
                    waited += step;
                };
                // Once gone, the deletion is past the point of no return and this DEL does
                // not wait for the rest of it; otherwise the address waits for its answer.
                let answer = if gone {
                    answer
                } else {
                    Some(answer.unwrap_or_else(|| pending.wait()))
                };
                errors.extend(answer.and_then(link_outcome));
                ipam_errors.extend(ipam_del(ipam).err());
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

    // After the interface's deletion (never before: the pod's traffic would leave
    // unmasqueraded).
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
    ipam_errors.extend(errors);
    join_errors(ipam_errors)
}
