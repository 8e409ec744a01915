//! The etcd store's lease creation against a real etcd (Debian's etcd-server, which
//! `scripts/test.sh` installs): the txn's compares are what keep two nodes from
//! sharing a subnet, and only a real server says whether it accepts and applies them.
//! etcd listens on loopback ports picked free for this test, data in a temp dir.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flanneld_rs::lease::{LeaseAttrs, SubnetKey};
use flanneld_rs::store::etcd::{EtcdStore, DEFAULT_PREFIX};
use flanneld_rs::store::Store;

/// Kills and reaps etcd even when an assertion panics.
struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn start_etcd(dir: &Path) -> (Etcd, String) {
    assert!(
        Path::new("/usr/bin/etcd").is_file(),
        "etcd missing: apt-get install etcd-server (scripts/test.sh does)"
    );
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let child = Command::new("/usr/bin/etcd")
        .arg("--name=t")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=t={peer}"))
        .arg("--log-level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    let etcd = Etcd(child);
    let store = EtcdStore::new(std::slice::from_ref(&client), DEFAULT_PREFIX).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.list().is_err() {
        assert!(Instant::now() < deadline, "etcd at {client} never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    (etcd, client)
}

fn key(s: &str) -> SubnetKey {
    SubnetKey::parse(s).unwrap()
}

fn attrs(ip: &str) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: ip.parse().unwrap(),
        public_ipv6: Some("fd70::1".parse().unwrap()),
        backend_type: "host-gw".into(),
        backend_data: None,
        backend_v6_data: None,
    }
}

#[test]
fn creation_refuses_a_key_sharing_either_subnet() {
    let dir = tempfile::tempdir().unwrap();
    let (_etcd, url) = start_etcd(dir.path());
    let store = EtcdStore::new(&[url], DEFAULT_PREFIX).unwrap();
    let ttl = Duration::from_secs(60);
    let rev = |s: &EtcdStore| s.list().unwrap().revision;

    let before = rev(&store);
    let a = key("10.5.1.0-24&fd00:5:0:1::-64");
    assert!(store
        .create(&a, &attrs("192.0.2.1"), ttl, Some(before))
        .unwrap()
        .is_some());
    assert_eq!(
        store.create(&a, &attrs("192.0.2.2"), ttl, None).unwrap(),
        None,
        "the same key"
    );
    // Another IPv4 subnet, our IPv6 one, planned from a listing that predates `a`:
    // the race seen with three nodes. The revision compare refuses it.
    let b = key("10.5.2.0-24&fd00:5:0:1::-64");
    assert_eq!(
        store
            .create(&b, &attrs("192.0.2.2"), ttl, Some(before))
            .unwrap(),
        None,
        "a key planned before `a` appeared"
    );
    // Our IPv4 subnet with another IPv6 one, or alone: the range compare refuses.
    for clash in ["10.5.1.0-24&fd00:5:0:2::-64", "10.5.1.0-24"] {
        assert_eq!(
            store
                .create(&key(clash), &attrs("192.0.2.2"), ttl, Some(rev(&store)))
                .unwrap(),
            None,
            "{clash}"
        );
    }
    // Neither subnet taken, planned from a fresh listing: created. `10.5.10.0-24`
    // shares the text `10.5.1` with `a` but sorts outside its range.
    for free in [
        "10.5.2.0-24&fd00:5:0:2::-64",
        "10.5.10.0-24&fd00:5:0:10::-64",
    ] {
        assert!(
            store
                .create(&key(free), &attrs("192.0.2.3"), ttl, Some(rev(&store)))
                .unwrap()
                .is_some(),
            "{free}"
        );
    }
    // IPv4 alone: a stale listing is no reason to refuse a free subnet.
    assert!(store
        .create(&key("10.5.3.0-24"), &attrs("192.0.2.4"), ttl, Some(before))
        .unwrap()
        .is_some());

    let mut held: Vec<String> = store
        .list()
        .unwrap()
        .leases
        .iter()
        .map(|l| format!("{} {}", l.key, l.attrs.public_ip))
        .collect();
    held.sort();
    assert_eq!(
        held,
        [
            "10.5.1.0-24&fd00:5:0:1::-64 192.0.2.1",
            "10.5.10.0-24&fd00:5:0:10::-64 192.0.2.3",
            "10.5.2.0-24&fd00:5:0:2::-64 192.0.2.3",
            "10.5.3.0-24 192.0.2.4",
        ]
    );
}
