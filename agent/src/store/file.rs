//! The embedded store: one directory, no server.
//!
//! - `config`: the network config JSON (operator-written, like `<prefix>/config`);
//! - `leases.json`: `{revision, compacted, next_handle, leases: {key: {value,
//!   expires_ms, handle}}, events: [{rev, key, value|null}]}`, replaced atomically
//!   (temp file + rename), so readers never need the lock;
//! - `lock`: writers hold an exclusive flock for read-modify-write.
//!
//! Any number of agents on one machine (separate network namespaces share the
//! filesystem) can use the same directory. Expired leases are removed, with a delete
//! event, by whichever agent first notices. The event log keeps the last
//! [`HISTORY`] changes; a watcher further behind gets [`WatchBatch::Compacted`].

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde_json::{json, Value};

use super::{decode_lease, Listing, Store, StoreError, Watch, WatchBatch, WatchEvent};
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::log;
use crate::subnet_env::write_atomic;

/// Changes kept for watchers that reconnect.
pub const HISTORY: usize = 1000;
/// How often a watch looks at the file.
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    value: String,
    expires_ms: Option<u64>,
    handle: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    rev: i64,
    key: String,
    value: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    revision: i64,
    compacted: i64,
    next_handle: i64,
    leases: BTreeMap<String, Entry>,
    events: Vec<Event>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn to_system_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl State {
    fn parse(text: &str) -> Result<State, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let int = |v: &Value, k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
        let mut st = State {
            revision: int(&v, "revision"),
            compacted: int(&v, "compacted"),
            next_handle: int(&v, "next_handle"),
            ..State::default()
        };
        if let Some(leases) = v.get("leases").and_then(Value::as_object) {
            for (k, e) in leases {
                let value = e
                    .get("value")
                    .and_then(Value::as_str)
                    .ok_or("lease without value")?;
                st.leases.insert(
                    k.clone(),
                    Entry {
                        value: value.to_owned(),
                        expires_ms: e.get("expires_ms").and_then(Value::as_u64),
                        handle: int(e, "handle"),
                    },
                );
            }
        }
        if let Some(events) = v.get("events").and_then(Value::as_array) {
            for e in events {
                st.events.push(Event {
                    rev: int(e, "rev"),
                    key: e
                        .get("key")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    value: e.get("value").and_then(Value::as_str).map(str::to_owned),
                });
            }
        }
        Ok(st)
    }

    fn render(&self) -> String {
        let leases: serde_json::Map<String, Value> = self
            .leases
            .iter()
            .map(|(k, e)| {
                (
                    k.clone(),
                    json!({"value": e.value, "expires_ms": e.expires_ms, "handle": e.handle}),
                )
            })
            .collect();
        let events: Vec<Value> = self
            .events
            .iter()
            .map(|e| json!({"rev": e.rev, "key": e.key, "value": e.value}))
            .collect();
        let v = json!({
            "revision": self.revision,
            "compacted": self.compacted,
            "next_handle": self.next_handle,
            "leases": leases,
            "events": events,
        });
        // Pretty: an operator reads this file with `cat`.
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    fn record(&mut self, key: &str, value: Option<String>) {
        self.revision += 1;
        self.events.push(Event {
            rev: self.revision,
            key: key.to_owned(),
            value,
        });
        if self.events.len() > HISTORY {
            let drop = self.events.len() - HISTORY;
            self.compacted = self.events[drop - 1].rev;
            self.events.drain(..drop);
        }
    }

    /// Removes expired leases (with delete events); whether anything changed.
    fn expire(&mut self, now: u64) -> bool {
        let dead: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, e)| e.expires_ms.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &dead {
            self.leases.remove(k);
            self.record(k, None);
        }
        !dead.is_empty()
    }

    fn has_expired(&self, now: u64) -> bool {
        self.leases
            .values()
            .any(|e| e.expires_ms.is_some_and(|t| t <= now))
    }

    fn lease(&self, key: &str) -> Option<Lease> {
        let e = self.leases.get(key)?;
        match decode_lease(key, &e.value, e.expires_ms.map(to_system_time), e.handle) {
            Ok(l) => Some(l),
            Err(why) => {
                log::warn(&format!("embedded store: skipping lease {why}"));
                None
            }
        }
    }
}

/// The embedded store in directory `dir`.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// Uses (and creates) `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            op: "create store directory",
            object: format!("{dir:?}"),
            source,
        })?;
        Ok(FileStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("leases.json")
    }

    /// Writes the network config if there is none yet (first writer wins, as with
    /// `etcdctl put` done once by an operator). Returns whether it wrote.
    pub fn init_config(&self, text: &str) -> Result<bool, StoreError> {
        let _lock = self.lock()?;
        let path = self.dir.join("config");
        if path.exists() {
            return Ok(false);
        }
        write_atomic(&path, text.as_bytes(), 0o644).map_err(|e| StoreError::Io {
            op: "write",
            object: format!("{path:?}"),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(true)
    }

    fn io(&self, op: &'static str, source: std::io::Error) -> StoreError {
        StoreError::Io {
            op,
            object: format!("embedded store {:?}", self.dir),
            source,
        }
    }

    fn lock(&self) -> Result<Flock<fs::File>, StoreError> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("lock"))
            .map_err(|e| self.io("open lock", e))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| self.io("lock", std::io::Error::from(errno)))
    }

    fn read(&self) -> Result<State, StoreError> {
        match fs::read_to_string(self.state_path()) {
            Ok(text) => State::parse(&text).map_err(|reason| StoreError::Protocol {
                op: "read",
                object: format!("{:?}", self.state_path()),
                reason,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(self.io("read", e)),
        }
    }

    fn write(&self, st: &State) -> Result<(), StoreError> {
        write_atomic(&self.state_path(), st.render().as_bytes(), 0o644)
            .map_err(|e| self.io("write", std::io::Error::other(e.to_string())))
    }

    /// Locked read-modify-write; expiry is applied first so every writer sees (and
    /// publishes) the same live set.
    fn modify<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, StoreError> {
        let _lock = self.lock()?;
        let mut st = self.read()?;
        let before = st.clone();
        st.expire(now_ms());
        let out = f(&mut st);
        if st != before {
            self.write(&st)?;
        }
        Ok(out)
    }

    fn entry(ttl: Duration, handle: i64, attrs: &LeaseAttrs) -> Entry {
        Entry {
            value: attrs.to_json(),
            expires_ms: Some(now_ms() + ttl.as_millis() as u64),
            handle,
        }
    }
}

impl FileStore {
    /// Operator/test write: puts every `(key, value)` in one locked transaction,
    /// overwriting existing keys; `ttl` None writes reservations (no expiry).
    pub fn put_many(
        &self,
        entries: &[(SubnetKey, LeaseAttrs)],
        ttl: Option<Duration>,
    ) -> Result<i64, StoreError> {
        self.modify(|st| {
            for (key, attrs) in entries {
                let name = key.to_string();
                st.next_handle += 1;
                let mut entry = Self::entry(ttl.unwrap_or_default(), st.next_handle, attrs);
                if ttl.is_none() {
                    entry.expires_ms = None;
                }
                st.leases.insert(name.clone(), entry.clone());
                st.record(&name, Some(entry.value));
            }
            st.revision
        })
    }

    /// Replaces the network config unconditionally.
    pub fn set_config(&self, text: &str) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let path = self.dir.join("config");
        write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(|e| self.io("write config", std::io::Error::other(e.to_string())))
    }
}

impl Store for FileStore {
    fn describe(&self) -> String {
        format!("embedded store {}", self.dir.display())
    }

    fn network_config(&self) -> Result<String, StoreError> {
        let path = self.dir.join("config");
        fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::ConfigNotFound {
                    location: path.display().to_string(),
                }
            } else {
                self.io("read config", e)
            }
        })
    }

    fn list(&self) -> Result<Listing, StoreError> {
        let mut st = self.read()?;
        if st.has_expired(now_ms()) {
            // Publish the expiry so that watchers get the delete events too.
            st = self.modify(|s| s.clone())?;
        }
        Ok(Listing {
            leases: st.leases.keys().filter_map(|k| st.lease(k)).collect(),
            revision: st.revision,
        })
    }

    fn create(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Duration,
        _planned_at: Option<i64>,
    ) -> Result<Option<Lease>, StoreError> {
        let name = key.to_string();
        // Under the flock the whole check is atomic, so the listing's revision is
        // not needed.
        self.modify(|st| {
            let taken = st.leases.contains_key(&name)
                || st
                    .leases
                    .keys()
                    .filter_map(|k| SubnetKey::parse(k))
                    .any(|other| other.overlaps(key));
            if taken {
                return None;
            }
            st.next_handle += 1;
            let entry = Self::entry(ttl, st.next_handle, attrs);
            st.leases.insert(name.clone(), entry.clone());
            st.record(&name, Some(entry.value));
            st.lease(&name)
        })
    }

    fn overwrite(
        &self,
        existing: &Lease,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let name = existing.key.to_string();
        let lost = || StoreError::LeaseLost { key: name.clone() };
        self.modify(|st| {
            let permanent = st.leases.get(&name).is_some_and(|e| e.expires_ms.is_none());
            st.next_handle += 1;
            let mut entry = Self::entry(ttl, st.next_handle, attrs);
            if permanent {
                entry.expires_ms = None;
            }
            st.leases.insert(name.clone(), entry.clone());
            st.record(&name, Some(entry.value));
            st.lease(&name)
        })?
        .ok_or_else(lost)
    }

    fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        let name = lease.key.to_string();
        let lost = || StoreError::LeaseLost { key: name.clone() };
        self.modify(|st| {
            let e = st.leases.get_mut(&name)?;
            if e.handle != lease.ttl_handle {
                // Recreated by someone else after ours expired.
                return None;
            }
            if e.expires_ms.is_some() {
                // Like an etcd keepalive: no revision, no event.
                e.expires_ms = Some(now_ms() + ttl.as_millis() as u64);
            }
            st.lease(&name)
        })?
        .ok_or_else(lost)
    }

    fn delete(&self, key: &SubnetKey) -> Result<(), StoreError> {
        let name = key.to_string();
        self.modify(|st| {
            if st.leases.remove(&name).is_some() {
                st.record(&name, None);
            }
        })
    }

    fn watch(&self, revision: i64) -> Result<Box<dyn Watch>, StoreError> {
        Ok(Box::new(FileWatch {
            store: self.clone(),
            after: revision,
            seen: None,
            next_expiry_check: Instant::now(),
        }))
    }
}

struct FileWatch {
    store: FileStore,
    after: i64,
    /// (inode, mtime ns, size) of the state file last read: skip re-parsing an
    /// unchanged file.
    seen: Option<(u64, i64, u64)>,
    next_expiry_check: Instant,
}

impl FileWatch {
    fn poll(&mut self) -> Result<Option<WatchBatch>, StoreError> {
        let stamp = fs::metadata(self.store.state_path()).ok().map(|m| {
            (
                m.ino(),
                m.mtime_nsec() + m.mtime() * 1_000_000_000,
                m.size(),
            )
        });
        let expiry_due = Instant::now() >= self.next_expiry_check;
        if stamp == self.seen && !expiry_due {
            return Ok(None);
        }
        self.seen = stamp;
        let mut st = self.store.read()?;
        if expiry_due {
            self.next_expiry_check = Instant::now() + Duration::from_millis(500);
            if st.has_expired(now_ms()) {
                st = self.store.modify(|s| s.clone())?;
            }
        }
        if self.after < st.compacted {
            return Ok(Some(WatchBatch::Compacted));
        }
        let events: Vec<WatchEvent> = st
            .events
            .iter()
            .filter(|e| e.rev > self.after)
            .filter_map(|e| {
                let key = SubnetKey::parse(&e.key)?;
                match &e.value {
                    None => Some(WatchEvent::Delete(key)),
                    Some(v) => {
                        // This event's own value; TTL data from the live entry.
                        let cur = st.leases.get(&e.key);
                        let expiration = cur.and_then(|c| c.expires_ms.map(to_system_time));
                        let handle = cur.map_or(0, |c| c.handle);
                        match decode_lease(&e.key, v, expiration, handle) {
                            Ok(l) => Some(WatchEvent::Put(l)),
                            Err(why) => {
                                log::warn(&format!("embedded store: skipping event {why}"));
                                None
                            }
                        }
                    }
                }
            })
            .collect();
        if st.revision <= self.after {
            return Ok(None);
        }
        self.after = st.revision;
        Ok(Some(WatchBatch::Events {
            events,
            revision: st.revision,
        }))
    }
}

impl Watch for FileWatch {
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchBatch>, StoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(batch) = self.poll()? {
                return Ok(Some(batch));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL.min(deadline - now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(ip: &str) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: ip.parse().unwrap(),
            public_ipv6: None,
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    fn key(s: &str) -> SubnetKey {
        SubnetKey::v4(s.parse().unwrap())
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn create_is_exclusive_and_watch_sees_changes() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileStore::open(dir.path()).unwrap();
        let b = FileStore::open(dir.path()).unwrap();
        assert!(matches!(
            a.network_config(),
            Err(StoreError::ConfigNotFound { .. })
        ));
        assert!(a.init_config(r#"{"Network":"10.1.0.0/16"}"#).unwrap());
        assert!(!b.init_config("{}").unwrap());
        assert_eq!(b.network_config().unwrap(), r#"{"Network":"10.1.0.0/16"}"#);

        let start = a.list().unwrap();
        assert_eq!(start.revision, 0);
        let mut w = b.watch(start.revision).unwrap();
        let l1 = a
            .create(&key("10.1.1.0/24"), &attrs("192.0.2.1"), HOUR, None)
            .unwrap()
            .unwrap();
        assert_eq!(
            b.create(&key("10.1.1.0/24"), &attrs("192.0.2.2"), HOUR, None)
                .unwrap(),
            None,
            "lost race"
        );
        let batch = w.next(Duration::from_secs(2)).unwrap().unwrap();
        assert_eq!(
            batch,
            WatchBatch::Events {
                events: vec![WatchEvent::Put(l1.clone())],
                revision: 1
            }
        );
        // Renewal is silent, deletion is an event.
        let renewed = a.renew(&l1, HOUR).unwrap();
        assert!(renewed.expiration >= l1.expiration);
        assert_eq!(w.next(Duration::from_millis(200)).unwrap(), None);
        b.delete(&l1.key).unwrap();
        let batch = w.next(Duration::from_secs(2)).unwrap().unwrap();
        assert_eq!(
            batch,
            WatchBatch::Events {
                events: vec![WatchEvent::Delete(l1.key)],
                revision: 2
            }
        );
        assert!(matches!(
            a.renew(&l1, HOUR),
            Err(StoreError::LeaseLost { .. })
        ));
        // The file is the exact flanneld value, readable by an operator.
        let text = fs::read_to_string(dir.path().join("leases.json")).unwrap();
        assert!(text.contains("\"revision\": 2"), "{text}");
    }

    #[test]
    fn expiry_deletes_with_an_event_and_renew_after_expiry_fails() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        let l = s
            .create(
                &key("10.1.2.0/24"),
                &attrs("192.0.2.1"),
                Duration::from_millis(100),
                None,
            )
            .unwrap()
            .unwrap();
        let mut w = s.watch(1).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let batch = w.next(Duration::from_secs(3)).unwrap().unwrap();
        assert_eq!(
            batch,
            WatchBatch::Events {
                events: vec![WatchEvent::Delete(l.key)],
                revision: 2
            }
        );
        assert!(s.list().unwrap().leases.is_empty());
        assert!(matches!(
            s.renew(&l, HOUR),
            Err(StoreError::LeaseLost { .. })
        ));
        // Someone else's lease on the same key is not ours to renew.
        s.create(&l.key, &attrs("192.0.2.9"), HOUR, None)
            .unwrap()
            .unwrap();
        assert!(matches!(
            s.renew(&l, HOUR),
            Err(StoreError::LeaseLost { .. })
        ));
    }

    #[test]
    fn overwrite_keeps_reservations_permanent() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        // An operator reservation: no expiry.
        let mut st = State::default();
        st.leases.insert(
            "10.1.3.0-24".into(),
            Entry {
                value: attrs("192.0.2.1").to_json(),
                expires_ms: None,
                handle: 0,
            },
        );
        st.revision = 1;
        s.write(&st).unwrap();
        let listed = s.list().unwrap();
        assert_eq!(listed.leases[0].expiration, None);
        let l = s
            .overwrite(&listed.leases[0], &attrs("192.0.2.1"), HOUR)
            .unwrap();
        assert_eq!(l.expiration, None);
        assert_eq!(s.list().unwrap().revision, 2);
    }

    #[test]
    fn history_overflow_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        let k = key("10.1.4.0/24");
        let l = s
            .create(&k, &attrs("192.0.2.1"), HOUR, None)
            .unwrap()
            .unwrap();
        // One transaction (an fsync per overwrite would make this test slow).
        let again: Vec<_> = (0..HISTORY).map(|_| (l.key, attrs("192.0.2.1"))).collect();
        s.put_many(&again, Some(HOUR)).unwrap();
        let mut w = s.watch(0).unwrap();
        assert_eq!(
            w.next(Duration::from_secs(1)).unwrap(),
            Some(WatchBatch::Compacted)
        );
        let mut w = s.watch(1).unwrap();
        match w.next(Duration::from_secs(1)).unwrap() {
            Some(WatchBatch::Events { events, revision }) => {
                assert_eq!(events.len(), HISTORY);
                assert_eq!(revision, HISTORY as i64 + 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_values_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        let mut st = State::default();
        for (k, v) in [
            ("10.1.5.0-24", "not json"),
            ("junk", "{}"),
            ("10.1.6.0-24", r#"{"PublicIP":"192.0.2.6"}"#),
        ] {
            st.leases.insert(
                k.into(),
                Entry {
                    value: v.into(),
                    expires_ms: None,
                    handle: 0,
                },
            );
        }
        s.write(&st).unwrap();
        let l = s.list().unwrap();
        assert_eq!(l.leases.len(), 1);
        assert_eq!(l.leases[0].key, key("10.1.6.0/24"));
        fs::write(dir.path().join("leases.json"), "{{{").unwrap();
        assert!(matches!(s.list(), Err(StoreError::Protocol { .. })));
    }
}
