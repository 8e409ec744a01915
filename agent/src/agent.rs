//! The agent's life: acquire a lease, write subnet.env, then follow the other leases
//! (watch, re-list on compaction or reconnect), renew ours, reconcile the data plane
//! and the firewall periodically, and re-acquire our subnet if the key disappears.
//!
//! One thread; the only blocking call is the watch wait, bounded so that SIGTERM,
//! renewals and reconcile passes are never late by more than [`TICK`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kernel::firewall::{AgentFirewall, AgentRules};

use crate::allocator::{self, Choice};
use crate::backend::{Backend, BackendError, ExtIface};
use crate::config::NetworkConfig;
use crate::health::Status;
use crate::lease::{Lease, LeaseAttrs};
use crate::log;
use crate::peers::{PeerEvent, Peers};
use crate::store::{Store, StoreError, WatchBatch};
use crate::subnet_env::{previous_subnet, previous_subnet_v6, SubnetEnv, SubnetEnvError};

/// Longest wait between two checks of the stop flag and the timers.
pub const TICK: Duration = Duration::from_millis(200);
/// flanneld's lease TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Behaviour knobs (from flags).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub subnet_file: PathBuf,
    pub ip_masq: bool,
    pub fully_random: bool,
    pub forward_rules: bool,
    pub lease_ttl: Duration,
    /// Renew this long before expiry (capped at half the TTL).
    pub renew_margin: Duration,
    pub reconcile_interval: Duration,
    pub rules_resync: Duration,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            subnet_file: PathBuf::from("/run/flannel/subnet.env"),
            ip_masq: false,
            fully_random: true,
            forward_rules: true,
            lease_ttl: DEFAULT_LEASE_TTL,
            renew_margin: Duration::from_secs(3600),
            reconcile_interval: Duration::from_secs(10),
            rules_resync: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("stopped")]
    Stopped,
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    SubnetEnv(#[from] SubnetEnvError),
    #[error(transparent)]
    Alloc(#[from] allocator::AllocError),
    #[error("install firewall rules: {0}")]
    Firewall(#[source] kernel::Error),
}

/// Everything the loop needs.
pub struct Agent {
    pub store: Box<dyn Store>,
    pub backend: Box<dyn Backend>,
    pub firewall: Option<Box<dyn AgentFirewall + Send>>,
    pub config: NetworkConfig,
    pub ext: ExtIface,
    pub opts: AgentOptions,
    pub status: Arc<Status>,
    pub stop: Arc<AtomicBool>,
}

/// Random index below `n`, from /dev/urandom (allocation spread, not security).
fn random_index(n: usize) -> usize {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    (u64::from_le_bytes(b) % n.max(1) as u64) as usize
}

impl Agent {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps up to `d`, waking early on stop.
    fn nap(&self, d: Duration) -> Result<(), AgentError> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.stopped() {
                return Err(AgentError::Stopped);
            }
            std::thread::sleep(TICK.min(end.saturating_duration_since(Instant::now())));
        }
        if self.stopped() {
            return Err(AgentError::Stopped);
        }
        Ok(())
    }

    /// Acquires a lease: reuse by public IP, else the previous subnet, else a free
    /// one. Lost races and store outages are retried, never fatal; only running
    /// out of subnets is.
    pub fn acquire(
        &self,
        attrs: &LeaseAttrs,
        hint: Option<ipnet::Ipv4Net>,
    ) -> Result<Lease, AgentError> {
        self.acquire_dual(attrs, hint, None)
    }

    /// [`Self::acquire`] with the IPv6 hint too (dual stack).
    pub fn acquire_dual(
        &self,
        attrs: &LeaseAttrs,
        hint: Option<ipnet::Ipv4Net>,
        hint_v6: Option<ipnet::Ipv6Net>,
    ) -> Result<Lease, AgentError> {
        let mut attempt: u32 = 0;
        loop {
            if self.stopped() {
                return Err(AgentError::Stopped);
            }
            attempt += 1;
            let listing = match self.store.list() {
                Ok(l) => l,
                Err(e) => {
                    log::warn(&format!("acquire lease: {e}; retrying"));
                    self.nap(Duration::from_secs(1))?;
                    continue;
                }
            };
            let plan = allocator::plan_dual(
                &self.config,
                &listing.leases,
                attrs.public_ip,
                hint,
                hint_v6,
                &mut random_index,
            )?;
            for k in &plan.delete {
                log::info(&format!(
                    "deleting our lease {k}: it does not fit the network config any more"
                ));
                if let Err(e) = self.store.delete(k) {
                    log::warn(&format!("delete {k}: {e}"));
                }
            }
            let outcome = match &plan.choice {
                Choice::Reuse(l) => self
                    .store
                    .overwrite(l, attrs, self.opts.lease_ttl)
                    .map(Some),
                Choice::Create(k) => {
                    self.store
                        .create(k, attrs, self.opts.lease_ttl, Some(listing.revision))
                }
            };
            match outcome {
                Ok(Some(lease)) => {
                    let how = if matches!(plan.choice, Choice::Reuse(_)) {
                        "reused"
                    } else {
                        "acquired"
                    };
                    log::info(&format!("{how} lease {} (attempt {attempt})", lease.key));
                    return Ok(lease);
                }
                Ok(None) => {
                    log::info(&format!("lost the race for {:?}; retrying", plan.choice));
                    // A little jitter so two racing nodes do not collide again.
                    self.nap(Duration::from_millis(20 + random_index(200) as u64))?;
                }
                Err(e) => {
                    log::warn(&format!("acquire lease: {e}; retrying"));
                    self.nap(Duration::from_secs(1))?;
                }
            }
        }
    }

    /// After our key vanished: recreate the *same* key if nobody took it (pods keep
    /// their addresses); otherwise acquire anew.
    fn reacquire(&self, own: &Lease) -> Result<Lease, AgentError> {
        self.status
            .set(false, format!("lease {} lost, re-acquiring", own.key));
        // The revision lets etcd refuse if another node took our IPv6 subnet with a
        // key of its own meanwhile.
        let seen = self.store.list().ok().map(|l| l.revision);
        match self
            .store
            .create(&own.key, &own.attrs, self.opts.lease_ttl, seen)
        {
            Ok(Some(l)) => {
                log::info(&format!("re-acquired lease {} after losing it", l.key));
                return Ok(l);
            }
            Ok(None) => log::warn(&format!(
                "lease {} is held by someone else now; acquiring a new subnet",
                own.key
            )),
            Err(e) => log::warn(&format!("re-create {}: {e}", own.key)),
        }
        self.acquire_dual(&own.attrs, None, None)
    }

    fn renew_at(&self, lease: &Lease) -> Option<Instant> {
        let exp = lease.expiration?;
        let left = exp.duration_since(SystemTime::now()).unwrap_or_default();
        let margin = self.opts.renew_margin.min(self.opts.lease_ttl / 2);
        Some(Instant::now() + left.saturating_sub(margin))
    }

    fn rules(&self, own: &Lease) -> AgentRules {
        AgentRules {
            network: self.config.network,
            subnet: own.key.v4,
            masq: self.opts.ip_masq,
            forward: self.opts.forward_rules,
            fully_random: self.opts.fully_random,
        }
    }

    fn sync_rules(&self, own: &Lease) -> Result<(), AgentError> {
        if let Some(fw) = &self.firewall {
            if fw
                .sync_agent_rules(&self.rules(own))
                .map_err(AgentError::Firewall)?
            {
                log::info("firewall rules (re)installed");
            }
        }
        Ok(())
    }

    fn write_env(&self, own: &Lease) -> Result<(), AgentError> {
        let env = SubnetEnv {
            network: Some(self.config.network),
            subnet: Some(own.key.v4),
            ipv6_network: self
                .config
                .ipv6
                .as_ref()
                .filter(|_| self.config.enable_ipv6)
                .map(|c| c.network),
            ipv6_subnet: own.key.v6,
            mtu: self.backend.mtu(),
            ipmasq: self.opts.ip_masq,
        };
        env.write(&self.opts.subnet_file)?;
        Ok(())
    }

    /// Own lease changed (start or re-acquisition with another subnet).
    fn take_subnet(&mut self, own: &Lease, peers: &mut Peers) -> Result<(), AgentError> {
        self.backend.configure_own(own.key.v4)?;
        if let Some(v6) = own.key.v6 {
            self.backend.configure_own_v6(v6)?;
        }
        let evs = peers.set_own(own.key.v4);
        self.apply_events(&evs);
        self.sync_rules(own)?;
        self.write_env(own)?;
        Ok(())
    }

    fn apply_events(&mut self, events: &[PeerEvent]) {
        for ev in events {
            match ev {
                PeerEvent::Added(l) => {
                    log::info(&format!(
                        "peer added: {} at {} ({})",
                        l.key, l.attrs.public_ip, l.attrs.backend_type
                    ));
                    if let Err(e) = self.backend.add_peer(l) {
                        // The next reconcile retries it.
                        log::error(&format!("program peer {}: {e}", l.key));
                    }
                }
                PeerEvent::Removed(l) => {
                    log::info(&format!("peer removed: {} at {}", l.key, l.attrs.public_ip));
                    if let Err(e) = self.backend.remove_peer(l) {
                        log::error(&format!("remove peer {}: {e}", l.key));
                    }
                }
            }
        }
    }

    fn reconcile(&mut self, peers: &Peers, last_failed: &mut Vec<String>) {
        match self.backend.reconcile(peers.map()) {
            Ok(r) => {
                if r.added + r.removed > 0 {
                    log::info(&format!(
                        "reconcile: {} peer(s) re-programmed, {} stale entries removed",
                        r.added, r.removed
                    ));
                }
                let failed: Vec<String> = r
                    .failed
                    .iter()
                    .map(|(s, why)| format!("{s}: {why}"))
                    .collect();
                // Each distinct failure once, not every pass.
                for f in failed.iter().filter(|f| !last_failed.contains(f)) {
                    log::error(&format!("peer not programmed: {f}"));
                }
                *last_failed = failed;
            }
            Err(e) => log::error(&format!("reconcile: {e}")),
        }
    }

    /// Full re-list: peer set reset, then a reconcile. Returns the revision to
    /// watch from.
    fn resync(
        &mut self,
        peers: &mut Peers,
        last_failed: &mut Vec<String>,
    ) -> Result<i64, StoreError> {
        let listing = self.store.list()?;
        let evs = peers.reset(&listing.leases);
        self.apply_events(&evs);
        self.reconcile(peers, last_failed);
        Ok(listing.revision)
    }

    /// Runs until `stop` is set. Errors during setup (backend, subnet exhaustion)
    /// are returned; everything later is logged and retried.
    pub fn run(mut self) -> Result<(), AgentError> {
        let backend_data = self.backend.prepare()?;
        let v6 = self.config.enable_ipv6;
        let attrs = LeaseAttrs {
            public_ip: self.ext.public_ip,
            public_ipv6: self.ext.public_ipv6.filter(|_| v6),
            backend_type: self.backend.backend_type().to_owned(),
            backend_data,
            backend_v6_data: self.backend.backend_v6_data().filter(|_| v6),
        };
        let hint = previous_subnet(&self.opts.subnet_file);
        let hint_v6 = previous_subnet_v6(&self.opts.subnet_file).filter(|_| v6);
        let mut own = self.acquire_dual(&attrs, hint, hint_v6)?;
        let mut peers = Peers::new();
        self.take_subnet(&own, &mut peers)?;
        self.status
            .set(true, format!("lease {} on {}", own.key, self.ext.name));
        log::info(&format!(
            "ready: subnet {} (mtu {}), subnet file {}",
            own.key.v4,
            self.backend.mtu(),
            self.opts.subnet_file.display()
        ));

        let mut last_failed = Vec::new();
        let mut revision = loop {
            match self.resync(&mut peers, &mut last_failed) {
                Ok(r) => break r,
                Err(e) => {
                    log::warn(&format!("list leases: {e}; retrying"));
                    self.nap(Duration::from_secs(1))?;
                }
            }
        };
        let mut watch = None;
        let mut backoff = Duration::from_millis(100);
        let mut next_reconcile = Instant::now() + self.opts.reconcile_interval;
        let mut next_rules = Instant::now() + self.opts.rules_resync;
        let mut next_renew = self.renew_at(&own);

        while !self.stopped() {
            let mut lost = false;
            if watch.is_none() {
                match self.store.watch(revision) {
                    Ok(w) => watch = Some(w),
                    Err(e) => {
                        log::warn(&format!(
                            "watch leases from revision {}: {e}; retrying in {backoff:?}",
                            revision + 1
                        ));
                        let _ = self.nap(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let Some(w) = watch.as_mut() else { continue };
            match w.next(TICK) {
                Ok(Some(WatchBatch::Events {
                    events,
                    revision: rev,
                })) => {
                    backoff = Duration::from_millis(100);
                    revision = revision.max(rev);
                    for e in &events {
                        match e {
                            crate::store::WatchEvent::Delete(k) if *k == own.key => lost = true,
                            crate::store::WatchEvent::Put(l)
                                if l.key == own.key && l.attrs.public_ip != own.attrs.public_ip =>
                            {
                                log::warn(&format!(
                                    "our key {} was taken over by {}",
                                    l.key, l.attrs.public_ip
                                ));
                                lost = true;
                            }
                            _ => {}
                        }
                    }
                    let evs = peers.apply(&events);
                    self.apply_events(&evs);
                }
                Ok(Some(WatchBatch::Compacted)) => {
                    log::info("watch history compacted; re-listing leases");
                    watch = None;
                    match self.resync(&mut peers, &mut last_failed) {
                        Ok(r) => revision = r,
                        Err(e) => log::warn(&format!("re-list leases: {e}")),
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    log::warn(&format!(
                        "lease watch broke: {e}; resuming from revision {}",
                        revision + 1
                    ));
                    watch = None;
                    let _ = self.nap(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }

            if next_renew.is_some_and(|t| Instant::now() >= t) {
                match self.store.renew(&own, self.opts.lease_ttl) {
                    Ok(l) => {
                        log::debug(&format!("renewed lease {}", l.key));
                        own = l;
                        next_renew = self.renew_at(&own);
                    }
                    Err(StoreError::LeaseLost { .. }) => lost = true,
                    Err(e) => {
                        log::warn(&format!("renew lease {}: {e}; retrying", own.key));
                        let retry = Duration::from_secs(60)
                            .min(self.opts.lease_ttl / 8)
                            .max(Duration::from_millis(500));
                        next_renew = Some(Instant::now() + retry);
                    }
                }
            }

            if lost {
                log::warn(&format!("lease {} is gone; re-acquiring", own.key));
                let old = own.key;
                own = match self.reacquire(&own) {
                    Ok(l) => l,
                    Err(AgentError::Stopped) => break,
                    Err(e) => return Err(e),
                };
                if own.key != old {
                    log::warn(&format!(
                        "subnet changed from {old} to {}: pods on the old subnet lose connectivity",
                        own.key
                    ));
                }
                self.take_subnet(&own, &mut peers)?;
                next_renew = self.renew_at(&own);
                self.status
                    .set(true, format!("lease {} on {}", own.key, self.ext.name));
            }

            if Instant::now() >= next_reconcile {
                self.reconcile(&peers, &mut last_failed);
                next_reconcile = Instant::now() + self.opts.reconcile_interval;
            }
            if Instant::now() >= next_rules {
                if let Err(e) = self.sync_rules(&own) {
                    log::error(&format!("{e}"));
                }
                next_rules = Instant::now() + self.opts.rules_resync;
            }
        }
        log::info(
            "stopping: lease, device and routes are left in place (the data path keeps working)",
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::vxlan::VxlanBackend;
    use crate::store::file::FileStore;
    use kernel::fake::FakeKernel;
    use kernel::netlink::{LinkRef, Netlink, Route, RouteMode, VethSpec};

    fn agent(
        k: &FakeKernel,
        ns: &str,
        store: &FileStore,
        dir: &std::path::Path,
        ip: &str,
        stop: Arc<AtomicBool>,
    ) -> Agent {
        let mut nl = k.netlink(ns);
        nl.create_veth(&VethSpec {
            name: "eth0",
            peer_name: "p",
            mtu: Some(1500),
            ..Default::default()
        })
        .unwrap();
        let idx = nl.link(LinkRef::Name("eth0")).unwrap().index;
        nl.add_address(idx, format!("{ip}/24").parse().unwrap())
            .unwrap();
        nl.add_route(
            &Route::new("192.0.2.0/24".parse().unwrap()).dev(idx),
            RouteMode::Create,
        )
        .unwrap();
        let config = NetworkConfig::parse(&store.network_config().unwrap()).unwrap();
        let ext = ExtIface {
            index: idx,
            name: "eth0".into(),
            addr: ip.parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            addr6: None,
            public_ipv6: None,
            mtu: 1500,
        };
        let backend = VxlanBackend::new(
            nl,
            Box::new(k.sysctl(ns)),
            config.backend.clone(),
            config.network,
            ext.clone(),
            None,
        );
        Agent {
            store: Box::new(store.clone()),
            backend: Box::new(backend),
            firewall: None,
            config,
            ext,
            opts: AgentOptions {
                subnet_file: dir.join(format!("{ns}.env")),
                reconcile_interval: Duration::from_millis(300),
                ..AgentOptions::default()
            },
            status: Status::new(),
            stop,
        }
    }

    /// Two agents on the fake kernel and one embedded store: each gets a subnet,
    /// writes subnet.env and programs the other; a removed lease disappears.
    #[test]
    fn two_agents_see_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("store")).unwrap();
        store
            .init_config(r#"{"Network":"10.50.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        let k = FakeKernel::new();
        let stop = Arc::new(AtomicBool::new(false));
        let a = agent(&k, "a", &store, dir.path(), "192.0.2.1", stop.clone());
        let b = agent(&k, "b", &store, dir.path(), "192.0.2.2", stop.clone());
        let ta = std::thread::spawn(move || a.run());
        let tb = std::thread::spawn(move || b.run());
        let routes_to_peer = |ns: &str| {
            k.snapshot(ns)
                .routes
                .iter()
                .filter(|r| r.dst.to_string().starts_with("10.50."))
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while (routes_to_peer("a") < 1 || routes_to_peer("b") < 1) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!((routes_to_peer("a"), routes_to_peer("b")), (1, 1));
        let env_a = std::fs::read_to_string(dir.path().join("a.env")).unwrap();
        assert!(
            env_a.starts_with("FLANNEL_NETWORK=10.50.0.0/16\nFLANNEL_SUBNET=10.50."),
            "{env_a}"
        );
        assert!(
            env_a.ends_with("FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"),
            "{env_a}"
        );

        // Remove b's lease behind its back: a drops the route, b re-acquires the same key.
        let listing = store.list().unwrap();
        let b_lease = listing
            .leases
            .iter()
            .find(|l| l.attrs.public_ip.to_string() == "192.0.2.2")
            .unwrap()
            .clone();
        store.delete(&b_lease.key).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let back = store
                .list()
                .unwrap()
                .leases
                .iter()
                .any(|l| l.key == b_lease.key);
            if back || Instant::now() > deadline {
                assert!(back, "b re-acquired its subnet");
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        ta.join().unwrap().unwrap();
        tb.join().unwrap().unwrap();
        assert_eq!(routes_to_peer("a"), 1, "a routes to b again");
    }

    #[test]
    fn exhausted_network_is_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("store")).unwrap();
        // /28 → three /30 blocks after the skipped first one.
        store
            .init_config(r#"{"Network":"10.60.0.0/28","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        let attrs = |ip: &str| LeaseAttrs {
            public_ip: ip.parse().unwrap(),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: None,
            backend_v6_data: None,
        };
        for (s, ip) in [
            ("10.60.0.4/30", "198.51.100.4"),
            ("10.60.0.8/30", "198.51.100.8"),
            ("10.60.0.12/30", "198.51.100.12"),
        ] {
            store
                .create(
                    &crate::lease::SubnetKey::v4(s.parse().unwrap()),
                    &attrs(ip),
                    Duration::from_secs(60),
                    None,
                )
                .unwrap()
                .unwrap();
        }
        let k = FakeKernel::new();
        let a = agent(
            &k,
            "a",
            &store,
            dir.path(),
            "192.0.2.1",
            Arc::new(AtomicBool::new(false)),
        );
        let e = a.run().unwrap_err();
        assert!(matches!(e, AgentError::Alloc(_)), "{e}");
    }

    /// A store that loses the first creation race: another node grabs `steal(key)`
    /// between our list and our create.
    struct RacyStore {
        inner: FileStore,
        raced: std::sync::atomic::AtomicBool,
        steal: fn(&crate::lease::SubnetKey) -> crate::lease::SubnetKey,
    }

    impl Store for RacyStore {
        fn describe(&self) -> String {
            "racy".into()
        }
        fn network_config(&self) -> Result<String, StoreError> {
            self.inner.network_config()
        }
        fn list(&self) -> Result<crate::store::Listing, StoreError> {
            self.inner.list()
        }
        fn create(
            &self,
            key: &crate::lease::SubnetKey,
            attrs: &LeaseAttrs,
            ttl: Duration,
            planned_at: Option<i64>,
        ) -> Result<Option<Lease>, StoreError> {
            if !self.raced.swap(true, Ordering::SeqCst) {
                let mut other = attrs.clone();
                other.public_ip = "198.51.100.99".parse().unwrap();
                let stolen = (self.steal)(key);
                assert!(self.inner.create(&stolen, &other, ttl, None)?.is_some());
            }
            self.inner.create(key, attrs, ttl, planned_at)
        }
        fn overwrite(
            &self,
            existing: &Lease,
            attrs: &LeaseAttrs,
            ttl: Duration,
        ) -> Result<Lease, StoreError> {
            self.inner.overwrite(existing, attrs, ttl)
        }
        fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
            self.inner.renew(lease, ttl)
        }
        fn delete(&self, key: &crate::lease::SubnetKey) -> Result<(), StoreError> {
            self.inner.delete(key)
        }
        fn watch(&self, revision: i64) -> Result<Box<dyn crate::store::Watch>, StoreError> {
            self.inner.watch(revision)
        }
    }

    /// An agent on a fresh embedded store with `config`, whose first lease creation loses
    /// to another node creating `steal(key)` just before.
    fn racing_agent(
        dir: &std::path::Path,
        config: &str,
        steal: fn(&crate::lease::SubnetKey) -> crate::lease::SubnetKey,
    ) -> (Agent, FileStore) {
        let store = FileStore::open(dir.join("store")).unwrap();
        store.init_config(config).unwrap();
        let k = FakeKernel::new();
        let mut a = agent(
            &k,
            "a",
            &store,
            dir,
            "192.0.2.1",
            Arc::new(AtomicBool::new(false)),
        );
        a.store = Box::new(RacyStore {
            inner: store.clone(),
            raced: AtomicBool::new(false),
            steal,
        });
        (a, store)
    }

    #[test]
    fn a_lost_race_is_retried_with_another_subnet() {
        let dir = tempfile::tempdir().unwrap();
        let (a, store) = racing_agent(
            dir.path(),
            r#"{"Network":"10.80.0.0/16","Backend":{"Type":"vxlan"}}"#,
            |k| *k,
        );
        let attrs = LeaseAttrs {
            public_ip: "192.0.2.1".parse().unwrap(),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: None,
            backend_v6_data: None,
        };
        // The hint is what we race for; we must end up elsewhere, not fail.
        let hint: ipnet::Ipv4Net = "10.80.9.0/24".parse().unwrap();
        let got = a.acquire(&attrs, Some(hint)).unwrap();
        assert_ne!(got.key.v4, hint);
        let leases = store.list().unwrap().leases;
        assert_eq!(leases.len(), 2);
        assert!(leases
            .iter()
            .any(|l| l.key.v4 == hint && l.attrs.public_ip.to_string() == "198.51.100.99"));
    }

    /// Dual stack: the racing node's key differs from ours (another IPv4 subnet) but
    /// holds our IPv6 subnet. Key uniqueness does not stop that (seen in a three-node
    /// run: two nodes with one IPv6 subnet); the overlap check must.
    #[test]
    fn a_lost_race_for_the_ipv6_half_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (a, store) = racing_agent(
            dir.path(),
            r#"{"Network":"10.80.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:80::/56","Backend":{"Type":"vxlan"}}"#,
            |k| crate::lease::SubnetKey {
                v4: "10.80.200.0/24".parse().unwrap(),
                v6: k.v6,
            },
        );
        let attrs = LeaseAttrs {
            public_ip: "192.0.2.1".parse().unwrap(),
            public_ipv6: Some("fd70::1".parse().unwrap()),
            backend_type: "vxlan".into(),
            backend_data: None,
            backend_v6_data: None,
        };
        let hint: ipnet::Ipv4Net = "10.80.9.0/24".parse().unwrap();
        let hint6: ipnet::Ipv6Net = "fd00:80:0:9::/64".parse().unwrap();
        let got = a.acquire_dual(&attrs, Some(hint), Some(hint6)).unwrap();
        assert_ne!(got.key.v6, Some(hint6), "{}", got.key);
        let leases = store.list().unwrap().leases;
        assert_eq!(leases.len(), 2, "{leases:?}");
        assert!(!leases[0].key.overlaps(&leases[1].key), "{leases:?}");
    }

    /// More changes than the store keeps history for while the agent is not looking:
    /// the watch reports compaction and the agent re-lists instead of missing peers.
    #[test]
    fn compaction_leads_to_a_relist() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("store")).unwrap();
        store
            .init_config(r#"{"Network":"10.90.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        let k = FakeKernel::new();
        let stop = Arc::new(AtomicBool::new(false));
        let a = agent(&k, "a", &store, dir.path(), "192.0.2.1", stop.clone());
        let env = dir.path().join("a.env");
        let t = std::thread::spawn(move || a.run());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !env.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let own = previous_subnet(&env).unwrap();
        let n = crate::store::file::HISTORY + 5;
        let entries: Vec<_> = crate::allocator::free_blocks(
            &NetworkConfig::parse(&store.network_config().unwrap()).unwrap(),
            &[own],
            n,
        )
        .into_iter()
        .enumerate()
        .map(|(i, net)| {
            let attrs = LeaseAttrs {
                public_ip: std::net::Ipv4Addr::from(0xc633_6400u32 + i as u32),
                public_ipv6: None,
                backend_type: "vxlan".into(),
                backend_data: Some(crate::lease::vxlan_backend_data(
                    1,
                    kernel::netlink::MacAddr([2, 0, 0, 0, (i >> 8) as u8, i as u8]),
                )),
                backend_v6_data: None,
            };
            (crate::lease::SubnetKey::v4(net), attrs)
        })
        .collect();
        assert_eq!(entries.len(), n);
        store
            .put_many(&entries, Some(Duration::from_secs(600)))
            .unwrap();
        let routes = || {
            k.snapshot("a")
                .routes
                .iter()
                .filter(|r| r.dst.to_string().starts_with("10.90."))
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while routes() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap().unwrap();
        assert_eq!(routes(), n);
    }

    /// Dual stack: both agents take a lease with an IPv6 part (flanneld's key and
    /// value), write the IPv6 keys to subnet.env and program each other's IPv6
    /// subnet on flannel-v6.1.
    #[test]
    fn dual_stack_agents() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("store")).unwrap();
        store
            .init_config(
                r#"{"Network":"10.70.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:70::/56","Backend":{"Type":"vxlan"}}"#,
            )
            .unwrap();
        let k = FakeKernel::new();
        let stop = Arc::new(AtomicBool::new(false));
        let dual = |ns: &str, ip: &str, ip6: &str| {
            let mut a = agent(&k, ns, &store, dir.path(), ip, stop.clone());
            let mut nl = k.netlink(ns);
            nl.add_address(a.ext.index, format!("{ip6}/64").parse().unwrap())
                .unwrap();
            a.ext.addr6 = Some(ip6.parse().unwrap());
            a.ext.public_ipv6 = a.ext.addr6;
            a.backend = Box::new(
                VxlanBackend::new(
                    nl,
                    Box::new(k.sysctl(ns)),
                    a.config.backend.clone(),
                    a.config.network,
                    a.ext.clone(),
                    None,
                )
                .with_ipv6(a.config.ipv6.as_ref().unwrap().network),
            );
            a
        };
        let a = dual("a", "192.0.2.1", "fd70::1");
        let b = dual("b", "192.0.2.2", "fd70::2");
        let ta = std::thread::spawn(move || a.run());
        let tb = std::thread::spawn(move || b.run());
        let v6_routes = |ns: &str| {
            k.snapshot(ns)
                .routes
                .iter()
                .filter(|r| r.dst.to_string().starts_with("fd00:70:"))
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while (v6_routes("a") < 1 || v6_routes("b") < 1) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        ta.join().unwrap().unwrap();
        tb.join().unwrap().unwrap();
        assert_eq!((v6_routes("a"), v6_routes("b")), (1, 1));
        let leases = store.list().unwrap().leases;
        assert_eq!(leases.len(), 2);
        for l in &leases {
            let v6 = l.key.v6.expect("IPv6 part in the key");
            assert!(v6.to_string().starts_with("fd00:70:0:"), "{v6}");
            assert_eq!(v6.prefix_len(), 64);
            assert!(l.key.to_string().contains('&'), "{}", l.key);
            let json = l.attrs.to_json();
            assert!(json.contains(r#""PublicIPv6":"fd70::"#), "{json}");
            assert!(
                json.contains(r#""BackendV6Data":{"VNI":1,"VtepMAC":"#),
                "{json}"
            );
        }
        let env_a = std::fs::read_to_string(dir.path().join("a.env")).unwrap();
        let own_a = leases
            .iter()
            .find(|l| l.attrs.public_ip.to_string() == "192.0.2.1")
            .unwrap();
        let v6a = own_a.key.v6.unwrap();
        assert!(
            env_a.contains(&format!(
                "FLANNEL_IPV6_NETWORK=fd00:70::/56\nFLANNEL_IPV6_SUBNET={}1/64\nFLANNEL_MTU=1450\n",
                v6a.network()
            )),
            "{env_a}"
        );
        assert_eq!(previous_subnet_v6(&dir.path().join("a.env")), Some(v6a));
    }
}
