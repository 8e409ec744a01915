//! host-local IPAM: a drop-in replacement for the Go reference plugin that shares its on-disk
//! state (`<dataDir>/<network>/`), so Go and Rust binaries can be swapped on a live node.
//!
//! This crate knows nothing of the CNI wire protocol: the binary parses the request, calls one of
//! [`add`], [`del`], [`check`], [`status`] or [`gc`] with an [`IpamConfig`], and turns the result
//! or the [`IpamError`] (which carries its CNI code) into output.
//!
//! * [`config`]: the IPAM config from the whole network config JSON.
//! * [`range`]: validated ranges and range sets.
//! * [`allocator`]: round-robin choice of an IP, over the [`allocator::Reservations`] trait.
//! * [`store`]: the Go-compatible files, the lock, and our sidecar index.

pub mod allocator;
pub mod config;
pub mod dns;
pub mod error;
pub mod ids;
mod plugin;
pub mod range;
pub mod store;

pub use plugin::HostLocalPlugin;

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

pub use config::IpamConfig;
pub use dns::Dns;
pub use error::IpamError;
use store::Store;

/// One address of an ADD result: `ip/prefix-of-its-subnet` and the range's gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: IpAddr,
}

/// What ADD returns: one IP per range set (in range-set order), `ipam.routes` verbatim, and the
/// parsed `resolvConf` if one was configured.
#[derive(Clone, Debug, PartialEq)]
pub struct AddOutput {
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Value>,
    pub dns: Option<Dns>,
}

/// A `(containerID, ifname)` pair from GC's `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

fn validate_attachment(container_id: &str, ifname: &str) -> Result<(), IpamError> {
    ids::validate_container_id(container_id)?;
    ids::validate_ifname(ifname)
}

fn collect_errors(errors: Vec<IpamError>) -> Result<(), IpamError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(IpamError::Multiple {
            messages: errors.iter().map(ToString::to_string).collect(),
        })
    }
}

/// ADD: allocates one IP per range set, honouring requested IPs. On any failure every address
/// this call reserved is released again.
pub fn add(cfg: &IpamConfig, container_id: &str, ifname: &str) -> Result<AddOutput, IpamError> {
    validate_attachment(container_id, ifname)?;
    let dns = cfg
        .resolv_conf
        .as_deref()
        .map(dns::parse_resolv_conf)
        .transpose()?;
    // A requested IP no range set can hold fails before anything touches the disk.
    let unmatched: Vec<IpAddr> = cfg
        .requested_ips
        .iter()
        .copied()
        .filter(|ip| !cfg.range_sets.iter().any(|set| set.contains(*ip)))
        .collect();
    if !unmatched.is_empty() {
        return Err(IpamError::RequestedUnmatched { ips: unmatched });
    }
    for (index, set) in cfg.range_sets.iter().enumerate() {
        for &ip in &cfg.requested_ips {
            if set.range_for(ip).is_some_and(|r| r.gateway == ip) {
                return Err(IpamError::Allocate {
                    index,
                    source: Box::new(IpamError::RequestedGateway { ip }),
                });
            }
        }
    }
    let store = Store::open(&cfg.data_dir, &cfg.name)?;

    let mut requested = cfg.requested_ips.clone();
    let mut reserved: Vec<IpAddr> = Vec::new();
    let mut ips = Vec::with_capacity(cfg.range_sets.len());
    for (index, set) in cfg.range_sets.iter().enumerate() {
        let wanted = requested
            .iter()
            .position(|ip| set.contains(*ip))
            .map(|i| requested.remove(i));
        // The lock is held per range set, like Go, so concurrent ADDs interleave between sets.
        let allocated = store.lock().and_then(|mut locked| {
            allocator::allocate(set, index, &mut locked, container_id, ifname, wanted)
        });
        match allocated {
            Ok(a) => {
                reserved.push(a.ip);
                ips.push(IpConfig {
                    address: IpNet::new(a.ip, a.prefix_len).unwrap_or_else(|_| IpNet::from(a.ip)),
                    gateway: a.gateway,
                });
            }
            Err(source) => {
                rollback(&store, &reserved, container_id, ifname);
                return Err(IpamError::Allocate {
                    index,
                    source: Box::new(source),
                });
            }
        }
    }
    if !requested.is_empty() {
        rollback(&store, &reserved, container_id, ifname);
        return Err(IpamError::RequestedUnmatched { ips: requested });
    }
    Ok(AddOutput {
        ips,
        routes: cfg.routes.clone(),
        dns,
    })
}

/// Best effort, as in Go: the ADD error is what the runtime must see.
fn rollback(store: &Store, reserved: &[IpAddr], container_id: &str, ifname: &str) {
    if reserved.is_empty() {
        return;
    }
    if let Ok(locked) = store.lock() {
        let _ = locked.release_ips(reserved, container_id, ifname);
    }
}

/// DEL: releases every address of `(container_id, ifname)`, in any range (also ranges no longer
/// configured). Nothing reserved is success. Returns the released addresses for logging.
pub fn del(cfg: &IpamConfig, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
    validate_attachment(container_id, ifname)?;
    let Some(store) = Store::open_existing(&cfg.data_dir, &cfg.name)? else {
        return Ok(Vec::new());
    };
    let locked = store.lock()?;
    let (released, errors) = locked.release_attachment(container_id, ifname);
    collect_errors(errors).map(|()| released)
}

/// CHECK: succeeds if the attachment holds at least one address (the address itself is not
/// compared with prevResult, as in Go).
pub fn check(cfg: &IpamConfig, container_id: &str, ifname: &str) -> Result<(), IpamError> {
    validate_attachment(container_id, ifname)?;
    let not_found = || IpamError::NotFound {
        container_id: container_id.to_owned(),
    };
    let store = Store::open_existing(&cfg.data_dir, &cfg.name)?.ok_or_else(not_found)?;
    let locked = store.lock()?;
    if locked.has_attachment(container_id, ifname)? {
        Ok(())
    } else {
        Err(not_found())
    }
}

/// STATUS: the data directory can be created/opened and written. Errors have code 50.
pub fn status(cfg: &IpamConfig) -> Result<(), IpamError> {
    Store::open(&cfg.data_dir, &cfg.name)
        .and_then(|store| store.check_writable())
        .map_err(|source| IpamError::Unavailable {
            source: Box::new(source),
        })
}

/// GC: releases every reservation whose owner is not in `valid`. An empty `valid` releases
/// everything (spec: a missing, `null` or empty list means no attachment is valid). Returns the
/// released addresses for logging; failures are collected and reported together.
pub fn gc(cfg: &IpamConfig, valid: &[Attachment]) -> Result<Vec<IpAddr>, IpamError> {
    let Some(store) = Store::open_existing(&cfg.data_dir, &cfg.name)? else {
        return Ok(Vec::new());
    };
    let valid: HashSet<(String, String)> = valid
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let locked = store.lock()?;
    let (released, errors) = locked.gc(&valid);
    collect_errors(errors).map(|()| released)
}

#[cfg(test)]
mod tests;
