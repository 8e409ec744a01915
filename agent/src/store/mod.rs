//! Where leases live. One interface, two engines:
//! - [`etcd::EtcdStore`]: etcd v3 (through its JSON gateway), flanneld's key layout and
//!   values, for real clusters and for sharing a datastore with real flanneld nodes;
//! - [`file::FileStore`]: an embedded store in one directory (a JSON file under an
//!   flock), for one machine or a quick start without a server.
//!
//! Both follow etcd's model: every change bumps a revision, a watch resumes after a
//! revision, and a watch that fell behind the retained history is told so
//! ([`WatchBatch::Compacted`]) and must re-list.

pub mod base64;
pub mod etcd;
pub mod file;
mod http;

use std::time::Duration;

use crate::lease::{Lease, LeaseAttrs, SubnetKey};

/// Every store failure names the operation, the object and the cause.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("network config not found at {location}")]
    ConfigNotFound { location: String },
    #[error("{op} {object}: {source}")]
    Io {
        op: &'static str,
        object: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {object}: unexpected answer: {reason}")]
    Protocol {
        op: &'static str,
        object: String,
        reason: String,
    },
    #[error("{op} {object}: server error {code}: {message}")]
    Server {
        op: &'static str,
        object: String,
        code: i64,
        message: String,
    },
    #[error("lease {key} is gone (expired or deleted)")]
    LeaseLost { key: String },
}

/// A consistent snapshot of all leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub leases: Vec<Lease>,
    /// Revision of the snapshot; a watch resumes after it.
    pub revision: i64,
}

/// One change to the lease set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(Lease),
    /// Explicit delete or TTL expiry.
    Delete(SubnetKey),
}

/// What a watch delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchBatch {
    /// Changes up to and including `revision`.
    Events {
        events: Vec<WatchEvent>,
        revision: i64,
    },
    /// History before the resume point is gone: re-list.
    Compacted,
}

/// The lease store interface the agent runs on.
pub trait Store: Send + Sync {
    /// For logs: `etcd http://...` / `file /var/lib/...`.
    fn describe(&self) -> String;
    /// The network config text.
    fn network_config(&self) -> Result<String, StoreError>;
    /// All leases (unparseable keys and values are skipped and logged).
    fn list(&self) -> Result<Listing, StoreError>;
    /// Creates `key` with `attrs` and a TTL, only if no lease overlaps it in either
    /// family ([`SubnetKey::overlaps`]): in dual stack two racing nodes can pick
    /// different IPv4 but the same IPv6 subnet, keys that differ.
    /// `planned_at` is the revision of the listing `key` was chosen from. A store
    /// that cannot check every overlap atomically (etcd: the IPv6 subnet is a key
    /// suffix, out of reach of a range compare) refuses instead when any lease
    /// changed after it.
    /// Ok(None): someone else holds it (a lost race; the caller re-lists and retries).
    fn create(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Duration,
        planned_at: Option<i64>,
    ) -> Result<Option<Lease>, StoreError>;
    /// Unconditionally rewrites an existing lease of ours with a fresh TTL; a lease
    /// without TTL (a reservation) stays without one.
    fn overwrite(
        &self,
        existing: &Lease,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Lease, StoreError>;
    /// Extends our lease's TTL. [`StoreError::LeaseLost`] when it already expired or
    /// was deleted.
    fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError>;
    fn delete(&self, key: &SubnetKey) -> Result<(), StoreError>;
    /// Changes after `revision`.
    fn watch(&self, revision: i64) -> Result<Box<dyn Watch>, StoreError>;
}

/// A running watch.
pub trait Watch: Send {
    /// Waits up to `timeout`; Ok(None) when nothing happened.
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchBatch>, StoreError>;
}

/// Builds a lease from a key's last path element and value text, or says why not.
pub(crate) fn decode_lease(
    key_name: &str,
    value: &str,
    expiration: Option<std::time::SystemTime>,
    ttl_handle: i64,
) -> Result<Lease, String> {
    let key =
        SubnetKey::parse(key_name).ok_or_else(|| format!("{key_name:?} is not a subnet key"))?;
    let attrs = LeaseAttrs::from_json(value).map_err(|e| format!("{key_name}: {e}"))?;
    Ok(Lease {
        key,
        attrs,
        expiration,
        ttl_handle,
    })
}
