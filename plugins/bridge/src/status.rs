//! STATUS and GC (CNI 1.1), which the Go plugin leaves unimplemented.

use crate::config::BridgeConf;
use crate::error::BridgeError;
use crate::system::System;
use cni::delegate::delegate_simple;
use cni::error::join_errors;
use cni::{CniError, Command, Request};
use kernel::firewall::GcAttachment;
use kernel::netlink::{LinkKind, LinkRef};
use std::collections::HashSet;

/// Can this network take pods now? The configured bridge may be absent (ADD creates
/// it); a link of that name that is not a bridge blocks every ADD (50); a bridge that is
/// down leaves the pods on it without connectivity (51). Then IPAM's own STATUS.
/// Side-effect free and cheap (runtimes call it every few seconds): one link lookup.
pub fn status(sys: &dyn System, req: &Request) -> Result<(), CniError> {
    let conf = BridgeConf::parse(req.conf, &req.env.args).map_err(BridgeError::from)?;
    let mut host = sys
        .host_netlink()
        .map_err(|e| BridgeError::kernel("failed to open a netlink socket", e))?;
    match host.link(LinkRef::Name(&conf.bridge)) {
        Ok(link) if link.kind != Some(LinkKind::Bridge) => {
            return Err(BridgeError::StatusNotABridge {
                name: conf.bridge.clone(),
                kind: match &link.kind {
                    None => "a link without kind".into(),
                    Some(k) => format!("{k:?}").to_lowercase(),
                },
            }
            .into())
        }
        Ok(link) if !link.up => {
            return Err(BridgeError::StatusBridgeDown {
                name: conf.bridge.clone(),
            }
            .into())
        }
        Ok(_) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => {
            return Err(BridgeError::kernel(
                format!("failed to look up bridge {:?}", conf.bridge),
                e,
            )
            .into())
        }
    }
    if let Some(ipam) = &conf.ipam_type {
        delegate_simple(req.delegator, ipam, Command::Status, req.stdin, req.env)?;
    }
    Ok(())
}

/// Removes this network's masquerade rules and spoof checks of attachments that are not
/// in the valid list, then forwards GC to IPAM (which releases their addresses). Every
/// step runs; all failures are reported.
pub fn gc(sys: &dyn System, req: &Request) -> Result<(), CniError> {
    let conf = BridgeConf::parse(req.conf, &req.env.args).map_err(BridgeError::from)?;
    let valid = req.conf.valid_attachments()?;
    let mut errors: Vec<CniError> = Vec::new();

    let keep: Vec<GcAttachment> = valid
        .iter()
        .map(|a| GcAttachment {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
        })
        .collect();
    match sys.firewall().gc_masq(&req.conf.name, &keep) {
        Ok(n) if n > 0 => eprintln!(
            "bridge: GC removed {n} ip masquerade rule(s) of network {:?}",
            req.conf.name
        ),
        Ok(_) => {}
        Err(e) => errors
            .push(BridgeError::kernel("failed to garbage-collect ip masquerade rules", e).into()),
    }

    if let Err(e) = gc_spoof_checks(sys, &conf, &valid) {
        errors.push(e.into());
    }

    if let Some(ipam) = &conf.ipam_type {
        if let Err(e) = delegate_simple(req.delegator, ipam, Command::Gc, req.stdin, req.env) {
            errors.insert(0, e);
        }
    }
    join_errors(errors)
}

/// Spoof-check rules carry no network name, only `<containerID>-<ifname>` and the host
/// veth. One is this network's when its veth is a port of our bridge; when the veth is
/// gone the pod is gone whatever its network, and the rule would otherwise drop the
/// traffic of a future veth that happens to get the same name.
fn gc_spoof_checks(
    sys: &dyn System,
    conf: &BridgeConf,
    valid: &[cni::Attachment],
) -> Result<(), BridgeError> {
    let present = sys
        .spoof_checks()
        .map_err(|e| BridgeError::kernel("failed to list mac spoof checks", e))?;
    if present.is_empty() {
        return Ok(());
    }
    let keep: HashSet<String> = valid
        .iter()
        .map(|a| format!("{}-{}", a.container_id, a.ifname))
        .collect();
    let mut host = sys
        .host_netlink()
        .map_err(|e| BridgeError::kernel("failed to open a netlink socket", e))?;
    let bridge = match host.link(LinkRef::Name(&conf.bridge)) {
        Ok(l) => Some(l.index),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(BridgeError::kernel("failed to look up the bridge", e)),
    };
    let mut failures = Vec::new();
    for check in present.iter().filter(|c| !keep.contains(&c.ref_id)) {
        let stale = match &check.host_veth {
            None => false,
            Some(veth) => match host.link(LinkRef::Name(veth)) {
                Ok(l) => bridge.is_some() && l.master == bridge,
                Err(e) if e.is_not_found() => true,
                Err(_) => false,
            },
        };
        if !stale {
            continue;
        }
        // Only the concatenation `<id>-<ifname>` names the chains and comments, so any
        // split of the reference id reproduces them.
        let (cid, ifname) = check
            .ref_id
            .rsplit_once('-')
            .unwrap_or((check.ref_id.as_str(), ""));
        match sys.firewall().teardown_mac_spoof_check(cid, ifname) {
            Ok(()) => eprintln!("bridge: GC removed the mac spoof check {}", check.ref_id),
            Err(e) => failures.push(format!("{}: {e}", check.ref_id)),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(BridgeError::Cleanup(format!(
            "failed to remove stale mac spoof checks: {}",
            failures.join("; ")
        )))
    }
}
