use super::*;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

use tempfile::TempDir;

const NET: &str = "testnet";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

struct Fixture {
    _tmp: TempDir,
    data: PathBuf,
    net: PathBuf,
    side: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("networks");
    Fixture {
        net: data.join(NET),
        side: data.join(".host-local").join(NET),
        data,
        _tmp: tmp,
    }
}

/// What an index entry lists, whichever form it has (see the store's module doc).
fn index_list(path: &Path) -> String {
    let file = fs::File::open(path).unwrap();
    match get_index_xattr(file.as_fd()).unwrap() {
        Some(list) => String::from_utf8(list).unwrap(),
        None => fs::read_to_string(path).unwrap(),
    }
}

/// 10.1.0.2 for c1/eth0, lock released.
fn reserve_one(store: &Store) {
    let locked = store.lock().unwrap();
    assert!(locked.reserve(ip("10.1.0.2"), "c1", "eth0", 0).unwrap());
}

impl Fixture {
    fn store(&self) -> Store {
        Store::open(&self.data, NET).unwrap()
    }

    /// A reservation as the Go plugin writes it (no index entry).
    fn go_reservation(&self, ip: &str, content: &str) {
        fs::write(self.net.join(ip), content).unwrap();
    }
}

#[test]
fn exact_files_contents_and_modes() {
    let f = fixture();
    let store = f.store();
    let locked = store.lock().unwrap();
    assert!(locked.reserve(ip("10.1.0.2"), "c1", "eth0", 0).unwrap());
    assert!(locked.reserve(ip("fd00::a"), "c1", "eth0", 1).unwrap());
    assert!(!locked.reserve(ip("10.1.0.2"), "c2", "eth0", 0).unwrap());
    drop(locked);

    let mask = umask();
    assert_eq!(mode(&f.net), 0o755 & !mask);
    assert_eq!(
        names(&f.net),
        [
            "10.1.0.2",
            "fd00::a",
            "last_reserved_ip.0",
            "last_reserved_ip.1",
            "lock"
        ]
    );
    assert_eq!(fs::read(f.net.join("10.1.0.2")).unwrap(), b"c1\r\neth0");
    assert_eq!(fs::read(f.net.join("fd00::a")).unwrap(), b"c1\r\neth0");
    assert_eq!(
        fs::read(f.net.join("last_reserved_ip.0")).unwrap(),
        b"10.1.0.2"
    );
    assert_eq!(
        fs::read(f.net.join("last_reserved_ip.1")).unwrap(),
        b"fd00::a"
    );
    assert_eq!(fs::read(f.net.join("lock")).unwrap(), b"");
    for name in [
        "10.1.0.2",
        "fd00::a",
        "last_reserved_ip.0",
        "last_reserved_ip.1",
    ] {
        assert_eq!(mode(&f.net.join(name)), 0o600, "{name}");
        // The attachment's first reservation is also its index entry; nothing else has a
        // second name.
        let links = if name == "10.1.0.2" { 2 } else { 1 };
        assert_eq!(
            fs::metadata(f.net.join(name)).unwrap().nlink(),
            links,
            "{name}"
        );
    }
    assert_eq!(mode(&f.net.join("lock")), 0o750 & !mask);

    // The sidecar is outside the network directory and holds only our files.
    assert_eq!(names(&f.side), [".imported", ".tmp", "c1:eth0"]);
    assert_eq!(
        inode(&f.side.join("c1:eth0")),
        inode(&f.net.join("10.1.0.2"))
    );
    assert_eq!(index_list(&f.side.join("c1:eth0")), "10.1.0.2\nfd00::a\n");
    assert!(names(&f.side.join(".tmp")).is_empty());
    assert_eq!(mode(&f.side), 0o700 & !mask);
}

#[test]
fn cursor_parsed_like_go() {
    let f = fixture();
    let store = f.store();
    let locked = store.lock().unwrap();
    assert_eq!(locked.last_reserved_ip(0), None);
    fs::write(f.net.join("last_reserved_ip.0"), "10.1.0.9").unwrap();
    assert_eq!(locked.last_reserved_ip(0), Some(ip("10.1.0.9")));
    // Go does not trim the cursor: a trailing newline makes it unparsable.
    fs::write(f.net.join("last_reserved_ip.0"), "10.1.0.9\n").unwrap();
    assert_eq!(locked.last_reserved_ip(0), None);
    fs::write(f.net.join("last_reserved_ip.3"), "::ffff:10.1.0.3").unwrap();
    assert_eq!(locked.last_reserved_ip(3), Some(ip("10.1.0.3")));
}

#[test]
fn cursor_is_rewritten_in_place_growing_and_shrinking() {
    let f = fixture();
    let store = f.store();
    let locked = store.lock().unwrap();
    assert!(locked.reserve(ip("10.1.0.99"), "c1", "eth0", 0).unwrap());
    let cursor = f.net.join("last_reserved_ip.0");
    let inode = fs::metadata(&cursor).unwrap().ino();
    assert_eq!(mode(&cursor), 0o600 & !umask());
    assert!(locked.reserve(ip("10.1.0.100"), "c2", "eth0", 0).unwrap());
    assert_eq!(fs::read_to_string(&cursor).unwrap(), "10.1.0.100");
    // Shorter than what it replaces: the tail must not survive.
    assert!(locked.reserve(ip("10.1.0.2"), "c3", "eth0", 0).unwrap());
    assert_eq!(fs::read_to_string(&cursor).unwrap(), "10.1.0.2");
    assert_eq!(locked.last_reserved_ip(0), Some(ip("10.1.0.2")));
    assert_eq!(
        fs::metadata(&cursor).unwrap().ino(),
        inode,
        "same file, no rename"
    );
}

#[test]
fn cursor_that_is_not_a_plain_file_of_ours_is_replaced_not_written_through() {
    let f = fixture();
    let store = f.store();
    let locked = store.lock().unwrap();
    let cursor = f.net.join("last_reserved_ip.0");
    // A second hard link to a file elsewhere: writing in place would change that file.
    let victim = f._tmp.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    fs::hard_link(&victim, &cursor).unwrap();
    assert!(locked.reserve(ip("10.1.0.5"), "c1", "eth0", 0).unwrap());
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert_eq!(fs::read_to_string(&cursor).unwrap(), "10.1.0.5");
    // A FIFO: never opened for writing (that would block or fail), replaced.
    fs::remove_file(&cursor).unwrap();
    nix::unistd::mkfifo(&cursor, Mode::from_bits_truncate(0o600)).unwrap();
    assert!(locked.reserve(ip("10.1.0.6"), "c2", "eth0", 0).unwrap());
    assert_eq!(fs::read_to_string(&cursor).unwrap(), "10.1.0.6");
    // A directory cannot be replaced by rename: the reservation is given back, like Go.
    fs::remove_file(&cursor).unwrap();
    fs::create_dir(&cursor).unwrap();
    assert!(locked.reserve(ip("10.1.0.7"), "c3", "eth0", 0).is_err());
    assert!(!f.net.join("10.1.0.7").exists());
}

#[test]
fn del_releases_via_index_and_is_idempotent() {
    let f = fixture();
    let store = f.store();
    let locked = store.lock().unwrap();
    locked.reserve(ip("10.1.0.2"), "c1", "eth0", 0).unwrap();
    locked.reserve(ip("10.1.0.3"), "c1", "eth1", 0).unwrap();
    locked.reserve(ip("fd00::2"), "c1", "eth0", 1).unwrap();
    assert_eq!(
        locked.reserved_by("c1", "eth0").unwrap(),
        [ip("10.1.0.2"), ip("fd00::2")]
    );
    let (released, errors) = locked.release_attachment("c1", "eth0");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(released, [ip("10.1.0.2"), ip("fd00::2")]);
    assert!(!f.net.join("10.1.0.2").exists());
    assert!(f.net.join("10.1.0.3").exists());
    assert!(!f.side.join("c1:eth0").exists());
    let (released, errors) = locked.release_attachment("c1", "eth0");
    assert!(released.is_empty() && errors.is_empty());
    assert!(!locked.has_attachment("c1", "eth0").unwrap());
    assert!(locked.has_attachment("c1", "eth1").unwrap());
}

#[test]
fn crash_between_link_and_index_is_handled_by_del_and_gc() {
    let f = fixture();
    let store = f.store();
    drop(store.lock().unwrap());
    // What a crash right after linkat (before the index write) leaves behind is exactly a
    // reservation without index entry, the same as a reservation made by the Go plugin.
    f.go_reservation("10.1.0.7", "crashed\r\neth0");
    f.go_reservation("10.1.0.8", "crashed\r\neth1");
    let locked = store.lock().unwrap();
    assert!(locked.has_attachment("crashed", "eth0").unwrap());
    let (released, errors) = locked.release_attachment("crashed", "eth0");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(released, [ip("10.1.0.7")]);
    let (released, errors) = locked.gc(&HashSet::new());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(released, [ip("10.1.0.8")]);
    assert_eq!(names(&f.net), ["lock"]);
}

#[test]
fn stale_index_entries_are_verified_and_cleaned() {
    let f = fixture();
    let store = f.store();
    let locked = store.lock().unwrap();
    locked.reserve(ip("10.1.0.2"), "c1", "eth0", 0).unwrap();
    // A Go DEL removed the file behind our back; the address then went to someone else.
    fs::remove_file(f.net.join("10.1.0.2")).unwrap();
    f.go_reservation("10.1.0.2", "other\r\neth0");
    assert!(locked.reserved_by("c1", "eth0").unwrap().is_empty());
    // Reserving again prunes the stale entry.
    locked.reserve(ip("10.1.0.5"), "c1", "eth0", 0).unwrap();
    assert_eq!(index_list(&f.side.join("c1:eth0")), "10.1.0.5\n");
    // A Go DEL and a Go re-ADD of the same attachment: the index verifies nothing, so DEL walks.
    fs::remove_file(f.net.join("10.1.0.5")).unwrap();
    f.go_reservation("10.1.0.9", "c1\r\neth0");
    let (released, errors) = locked.release_attachment("c1", "eth0");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(released, [ip("10.1.0.9")]);
    assert_eq!(fs::read(f.net.join("10.1.0.2")).unwrap(), b"other\r\neth0");
}

#[test]
fn legacy_id_only_files() {
    let f = fixture();
    fs::create_dir_all(&f.net).unwrap();
    // Present before our first use: indexed by the import.
    f.go_reservation("10.1.0.20", "  old1 \n");
    f.go_reservation("10.1.0.21", "gocid\r\neth0");
    let store = f.store();
    let locked = store.lock().unwrap();
    assert_eq!(
        fs::read_to_string(f.side.join("old1")).unwrap(),
        "10.1.0.20\n"
    );
    assert_eq!(
        fs::read_to_string(f.side.join("gocid:eth0")).unwrap(),
        "10.1.0.21\n"
    );
    // A legacy file blocks every ifname of that container (duplicate check).
    assert_eq!(
        locked.reserved_by("old1", "net7").unwrap(),
        [ip("10.1.0.20")]
    );
    assert_eq!(
        locked.reserved_by("gocid", "eth0").unwrap(),
        [ip("10.1.0.21")]
    );
    assert!(locked.has_attachment("old1", "eth0").unwrap());
    // Created after the import: only the walk sees it.
    f.go_reservation("10.1.0.22", "old2");
    assert!(locked.has_attachment("old2", "eth0").unwrap());
    for (cid, expected) in [("old1", "10.1.0.20"), ("old2", "10.1.0.22")] {
        let (released, errors) = locked.release_attachment(cid, "eth0");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(released, [ip(expected)]);
    }
    assert!(!f.side.join("old1").exists());
    // The legacy fallback only applies when no full match exists.
    f.go_reservation("10.1.0.30", "mixed");
    f.go_reservation("10.1.0.31", "mixed\r\neth0");
    let (released, _) = locked.release_attachment("mixed", "eth0");
    assert_eq!(released, [ip("10.1.0.31")]);
    assert!(f.net.join("10.1.0.30").exists());
}

#[test]
fn stale_temp_files_are_removed_under_the_lock() {
    let f = fixture();
    let store = f.store();
    reserve_one(&store);
    let tmp = f.side.join(".tmp");
    // Killed while writing a temp file, and killed between linkat and the temp's unlink.
    fs::write(tmp.join("999.1"), "c9\r\ne").unwrap();
    fs::hard_link(f.net.join("10.1.0.2"), tmp.join("999.2")).unwrap();
    fs::create_dir(tmp.join("999.3")).unwrap();
    drop(store.lock().unwrap());
    assert!(names(&tmp).is_empty());
    assert_eq!(fs::read(f.net.join("10.1.0.2")).unwrap(), b"c1\r\neth0");
    // Its own name and its index entry's, not the dead process's temp.
    assert_eq!(fs::metadata(f.net.join("10.1.0.2")).unwrap().nlink(), 2);
}

#[test]
fn symlinked_or_file_directories_are_refused() {
    let f = fixture();
    let outside = f._tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::create_dir_all(&f.data).unwrap();
    symlink(&outside, &f.net).unwrap();
    let e = Store::open(&f.data, NET).unwrap_err();
    assert!(matches!(e, IpamError::Symlink { .. }), "{e}");
    assert!(e.to_string().contains(&*f.net.to_string_lossy()), "{e}");
    assert!(matches!(
        Store::open_existing(&f.data, NET),
        Err(IpamError::Symlink { .. })
    ));
    assert!(names(&outside).is_empty());

    fs::remove_file(&f.net).unwrap();
    fs::write(&f.net, "").unwrap();
    let e = Store::open(&f.data, NET).unwrap_err();
    assert!(matches!(e, IpamError::NotADirectory { .. }), "{e}");

    let linked_data = f._tmp.path().join("linked-data");
    symlink(&outside, &linked_data).unwrap();
    let e = Store::open(&linked_data, NET).unwrap_err();
    assert!(matches!(e, IpamError::Symlink { .. }), "{e}");
    // A trailing slash must not sneak the symlink past O_NOFOLLOW.
    let with_slash = PathBuf::from(format!("{}/", linked_data.display()));
    assert!(matches!(
        Store::open(&with_slash, NET),
        Err(IpamError::Symlink { .. })
    ));
    assert!(names(&outside).is_empty());

    let file_data = f._tmp.path().join("file-data");
    fs::write(&file_data, "").unwrap();
    assert!(matches!(
        Store::open(&file_data, NET),
        Err(IpamError::NotADirectory { .. })
    ));
    // The sidecar is opened the same way.
    let g = fixture();
    fs::create_dir_all(&g.data).unwrap();
    symlink(&outside, g.data.join(".host-local")).unwrap();
    assert!(matches!(
        Store::open(&g.data, NET),
        Err(IpamError::Symlink { .. })
    ));
}

#[test]
fn planted_symlinks_inside_the_network_dir_are_not_followed() {
    let f = fixture();
    let store = f.store();
    let victim = f._tmp.path().join("victim");
    fs::write(&victim, "c1\r\neth0").unwrap();
    symlink(&victim, f.net.join("10.1.0.2")).unwrap();
    symlink(&victim, f.net.join("last_reserved_ip.0")).unwrap();
    symlink(&victim, f.side.join("c1:eth0")).unwrap();

    let locked = store.lock().unwrap();
    assert_eq!(locked.last_reserved_ip(0), None);
    assert!(locked.reserved_by("c1", "eth0").unwrap().is_empty());
    // The symlinked IP counts as taken, never as ours.
    assert!(!locked.reserve(ip("10.1.0.2"), "c1", "eth0", 0).unwrap());
    assert!(locked.reserve(ip("10.1.0.3"), "c1", "eth0", 0).unwrap());
    // The cursor and index symlinks were replaced, not written through.
    assert!(fs::symlink_metadata(f.net.join("last_reserved_ip.0"))
        .unwrap()
        .is_file());
    assert!(fs::symlink_metadata(f.side.join("c1:eth0"))
        .unwrap()
        .is_file());
    let (released, errors) = locked.release_attachment("c1", "eth0");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(released, [ip("10.1.0.3")]);
    let (released, errors) = locked.gc(&HashSet::new());
    assert!(released.is_empty() && errors.is_empty());
    assert!(fs::symlink_metadata(f.net.join("10.1.0.2"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(&victim).unwrap(), b"c1\r\neth0");
    drop(locked);

    fs::remove_file(f.net.join("lock")).unwrap();
    symlink(&victim, f.net.join("lock")).unwrap();
    let e = store.lock().unwrap_err();
    assert!(e.to_string().contains("lock"), "{e}");
}

#[test]
fn gc_keeps_valid_and_never_touches_other_files() {
    let f = fixture();
    let store = f.store();
    let locked = store.lock().unwrap();
    locked.reserve(ip("10.1.0.2"), "a", "eth0", 0).unwrap();
    locked.reserve(ip("10.1.0.3"), "b", "eth0", 0).unwrap();
    locked.reserve(ip("10.1.0.4"), "b", "eth1", 0).unwrap();
    locked.reserve(ip("fd00::4"), "a", "eth1", 1).unwrap();
    f.go_reservation("10.1.0.5", "c");
    f.go_reservation("10.1.0.6", "d");
    f.go_reservation("10.1.0.7", "");
    f.go_reservation("notes", "b\r\neth0");
    fs::create_dir(f.net.join("10.1.0.99")).unwrap();
    let valid: HashSet<(String, String)> = [("a", "eth0"), ("c", "eth9")]
        .iter()
        .map(|(c, i)| (c.to_string(), i.to_string()))
        .collect();
    let (mut released, errors) = locked.gc(&valid);
    assert!(errors.is_empty(), "{errors:?}");
    released.sort();
    assert_eq!(
        released,
        ["10.1.0.3", "10.1.0.4", "10.1.0.6", "10.1.0.7", "fd00::4"].map(ip)
    );
    assert_eq!(
        names(&f.net),
        [
            "10.1.0.2",
            "10.1.0.5",
            "10.1.0.99",
            "last_reserved_ip.0",
            "last_reserved_ip.1",
            "lock",
            "notes"
        ]
    );
    assert_eq!(names(&f.side), [".imported", ".tmp", "a:eth0"]);
}

#[test]
fn invalid_ids_never_become_paths() {
    let f = fixture();
    let store = f.store();
    let locked = store.lock().unwrap();
    for (cid, ifname) in [
        ("../x", "eth0"),
        ("c1", "../../x"),
        ("c1", "a/b"),
        ("", "eth0"),
    ] {
        assert!(locked.reserve(ip("10.1.0.2"), cid, ifname, 0).is_err());
        assert_eq!(index_name(cid, ifname), None);
    }
    assert!(Store::open(&f.data, "../escape").is_err());
    assert!(Store::open(&f.data, ".host-local").is_err());
    // An over-long container ID cannot be an index name; the walk still finds it.
    let long = "x".repeat(300);
    assert!(locked.reserve(ip("10.1.0.2"), &long, "eth0", 0).unwrap());
    assert_eq!(locked.reserved_by(&long, "eth0").unwrap(), [ip("10.1.0.2")]);
    let (released, _) = locked.release_attachment(&long, "eth0");
    assert_eq!(released, [ip("10.1.0.2")]);
}

#[test]
fn status_checks() {
    let f = fixture();
    let store = f.store();
    store.check_writable().unwrap();
    assert!(names(&f.side.join(".tmp")).is_empty());
}

#[test]
fn open_existing_creates_nothing_for_unknown_networks() {
    let f = fixture();
    assert!(Store::open_existing(&f.data, NET).unwrap().is_none());
    assert!(!f.data.exists());
    fs::create_dir_all(&f.data).unwrap();
    assert!(Store::open_existing(&f.data, NET).unwrap().is_none());
    assert!(!f.net.exists());
}

fn spares(f: &Fixture) -> Vec<String> {
    names(&f.side.join(".tmp"))
        .into_iter()
        .filter(|n| n.starts_with(SPARE_PREFIX))
        .collect()
}

fn inode(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap().ino()
}

#[test]
fn released_files_become_spares_and_the_next_writes_reuse_them() {
    let f = fixture();
    let store = f.store();
    let locked = store.lock().unwrap();
    locked.reserve(ip("10.1.0.2"), "c1", "eth0", 0).unwrap();
    // The reservation and its index entry are one inode.
    let freed = inode(&f.net.join("10.1.0.2"));
    assert_eq!(inode(&f.side.join("c1:eth0")), freed);
    let (released, errors) = locked.release_attachment("c1", "eth0");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(released, [ip("10.1.0.2")]);
    assert_eq!(spares(&f).len(), 1);
    drop(locked);

    // A later lock holder (another process) finds it and writes into it: no new inode.
    let locked = store.lock().unwrap();
    assert!(locked.reserve(ip("10.1.0.9"), "c22222", "eth1", 0).unwrap());
    drop(locked);
    assert!(spares(&f).is_empty());
    assert_eq!(inode(&f.net.join("10.1.0.9")), freed);
    assert_eq!(inode(&f.side.join("c22222:eth1")), freed);
    // Exactly what a fresh file would hold, longer content over shorter.
    assert_eq!(fs::read(f.net.join("10.1.0.9")).unwrap(), b"c22222\r\neth1");
    assert_eq!(index_list(&f.side.join("c22222:eth1")), "10.1.0.9\n");
    assert_eq!(mode(&f.net.join("10.1.0.9")), 0o600);
    assert_eq!(fs::metadata(f.net.join("10.1.0.9")).unwrap().nlink(), 2);
}

#[test]
fn a_reused_spare_never_carries_an_old_index_list() {
    let f = fixture();
    let store = f.store();
    reserve_one(&store);
    let locked = store.lock().unwrap();
    let (_, errors) = locked.release_attachment("c1", "eth0");
    assert!(errors.is_empty(), "{errors:?}");
    drop(locked);
    // c2 already has an index file of its own (an older version wrote it), so its next
    // reservation is not an index entry and reuses the spare as a plain reservation.
    f.go_reservation("10.1.0.7", "c2\r\neth0");
    fs::write(f.side.join("c2:eth0"), "10.1.0.7\n").unwrap();
    let locked = store.lock().unwrap();
    assert!(locked.reserve(ip("10.1.0.8"), "c2", "eth0", 1).unwrap());
    assert_eq!(
        locked.reserved_by("c2", "eth0").unwrap(),
        [ip("10.1.0.7"), ip("10.1.0.8")]
    );
    drop(locked);
    assert_eq!(index_list(&f.side.join("c2:eth0")), "10.1.0.7\n10.1.0.8\n");
    assert_eq!(index_list(&f.net.join("10.1.0.8")), "c2\r\neth0");
    assert_eq!(fs::metadata(f.net.join("10.1.0.8")).unwrap().nlink(), 1);
}

#[test]
fn spares_are_capped() {
    let f = fixture();
    let store = f.store();
    let locked = store.lock().unwrap();
    for i in 0..40u8 {
        let cid = format!("c{i}");
        locked
            .reserve(ip(&format!("10.1.0.{}", i + 2)), &cid, "eth0", 0)
            .unwrap();
    }
    for i in 0..40u8 {
        let (_, errors) = locked.release_attachment(&format!("c{i}"), "eth0");
        assert!(errors.is_empty(), "{errors:?}");
    }
    drop(locked);
    assert_eq!(spares(&f).len(), MAX_SPARES);
    assert_eq!(names(&f.net), ["last_reserved_ip.0", "lock"]);
    drop(store.lock().unwrap());
    assert_eq!(spares(&f).len(), MAX_SPARES);
}

#[test]
fn a_spare_that_is_not_a_plain_file_of_ours_is_removed_never_written() {
    let f = fixture();
    let store = f.store();
    reserve_one(&store);
    let tmp = f.side.join(".tmp");
    let victim = f._tmp.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    // A second name of a live reservation (as a process killed between link and unlink
    // would leave, were it named like a spare), a symlink, a directory and a FIFO.
    fs::hard_link(f.net.join("10.1.0.2"), tmp.join("spare.1")).unwrap();
    symlink(&victim, tmp.join("spare.2")).unwrap();
    fs::create_dir(tmp.join("spare.3")).unwrap();
    nix::unistd::mkfifo(&tmp.join("spare.4"), Mode::from_bits_truncate(0o600)).unwrap();

    let locked = store.lock().unwrap();
    assert!(locked.reserve(ip("10.1.0.3"), "c2", "eth0", 0).unwrap());
    assert!(locked.reserve(ip("10.1.0.4"), "c3", "eth0", 0).unwrap());
    drop(locked);
    assert_eq!(fs::read(f.net.join("10.1.0.2")).unwrap(), b"c1\r\neth0");
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert_eq!(fs::read(f.net.join("10.1.0.3")).unwrap(), b"c2\r\neth0");
    assert_eq!(fs::read(f.net.join("10.1.0.4")).unwrap(), b"c3\r\neth0");
    assert!(spares(&f).is_empty(), "{:?}", spares(&f));
}

#[test]
fn a_go_reservation_retired_as_a_spare_is_reused_with_our_mode() {
    let f = fixture();
    let store = f.store();
    f.go_reservation("10.1.0.2", "go1\r\neth0");
    fs::set_permissions(f.net.join("10.1.0.2"), fs::Permissions::from_mode(0o644)).unwrap();
    let locked = store.lock().unwrap();
    let (released, errors) = locked.release_attachment("go1", "eth0");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(released, [ip("10.1.0.2")]);
    assert!(locked.reserve(ip("10.1.0.5"), "c5", "eth0", 0).unwrap());
    drop(locked);
    assert_eq!(mode(&f.net.join("10.1.0.5")), 0o600);
    assert_eq!(mode(&f.side.join("c5:eth0")), 0o600);
}

#[test]
fn without_user_xattrs_the_index_is_a_file_of_its_own() {
    NO_USER_XATTRS.with(|c| c.set(true));
    let f = fixture();
    let store = f.store();
    let locked = store.lock().unwrap();
    assert!(locked.reserve(ip("10.1.0.2"), "c1", "eth0", 0).unwrap());
    assert!(locked.reserve(ip("fd00::2"), "c1", "eth0", 1).unwrap());
    assert_eq!(
        fs::read_to_string(f.side.join("c1:eth0")).unwrap(),
        "10.1.0.2\nfd00::2\n"
    );
    for name in ["10.1.0.2", "fd00::2"] {
        assert_eq!(fs::metadata(f.net.join(name)).unwrap().nlink(), 1, "{name}");
    }
    assert_eq!(
        locked.reserved_by("c1", "eth0").unwrap(),
        [ip("10.1.0.2"), ip("fd00::2")]
    );
    let (released, errors) = locked.release_attachment("c1", "eth0");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(released, [ip("10.1.0.2"), ip("fd00::2")]);
    assert!(!f.side.join("c1:eth0").exists());
    NO_USER_XATTRS.with(|c| c.set(false));
}
