//! The on-disk store, byte-compatible with Go's `backend/disk` so Go and Rust binaries can share a
//! data directory on a live node (reference §2.4, §4):
//!
//! ```text
//! <dataDir>/<network>/            0755
//!   lock                          flock(LOCK_EX), created if missing, never deleted
//!   last_reserved_ip.<N>          cursor of range set N: IP text, no newline, 0600
//!   <ip>                          one reservation: "<containerID>\r\n<ifname>", no newline, 0600
//! <dataDir>/.host-local/<network>/    our sidecar, 0700 (Go never looks here)
//!   .tmp/                         temp files; only used under the network lock
//!   .tmp/spare.*                  spare inodes: released files kept for reuse
//!   .imported                     marker: pre-existing reservations have been indexed
//!   <containerID>:<ifname>        index: the attachment's IPs, one per line (see below)
//!   <containerID>                 index of legacy ID-only reservations of that container
//! ```
//!
//! Differences from Go, none visible to a Go binary sharing the directory:
//! * Crash safety: a reservation is written to a temp file and hard-linked into place, so its
//!   name never exists without its full content. The cursor is rewritten in place, as Go does
//!   (see `LockedStore::write_cursor`).
//! * Inode reuse: a released reservation or index is not unlinked but moved into `.tmp` as a
//!   spare, and the next file we write reuses a spare before it creates one. Pod churn then
//!   allocates and frees no inodes: on ext4 without a journal every inode allocation scans past
//!   the recently deleted ones (`recently_deleted()`), which under churn cost more than the rest
//!   of an ADD, and with `discard` every freed file issues a discard.
//! * One inode per ADD, as Go: an attachment's index entry is a second hard link to its first
//!   reservation, whose inode carries the attachment's IPs in the xattr `user.host-local.ips`
//!   (in the inode itself on ext4 and XFS: no block either). Where user xattrs are not
//!   supported, and for entries written before, the index is a file of its own holding the
//!   IPs as content; both are read, so a node can move between versions either way.
//! * Scale: the index makes ADD (duplicate check) and DEL independent of the number of
//!   reservations. It is only a hint: every entry is verified against the reservation's content,
//!   and DEL/CHECK fall back to Go's full directory walk when the index knows nothing.
//! * Security: every operation is relative to directory fds opened with O_NOFOLLOW, so a planted
//!   symlink is never followed, and names from input are validated before use.
//!
//! The sidecar lives outside the network directory because Go walks that directory recursively
//! and reads every file. The index is written *before* the reservation is linked, so it always
//! lists every reservation we made (a crash leaves at most an extra, harmless entry).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, Mode};
use nix::unistd::{faccessat, linkat, unlinkat, AccessFlags, UnlinkatFlags};
use nix::NixPath;

use crate::allocator::Reservations;
use crate::error::IpamError;
use crate::ids;
use crate::range::canonical_ip;

const LOCK_FILE: &str = "lock";
const CURSOR_PREFIX: &str = "last_reserved_ip.";
const SIDECAR_ROOT: &str = ".host-local";
const TMP_DIR: &str = ".tmp";
/// Names in `.tmp` that are spares (see [`LockedStore::take_spare`]), not stale temps.
const SPARE_PREFIX: &str = "spare.";
/// Spares kept per network: enough for a burst of DELs followed by as many ADDs, few enough
/// that they never matter on disk (an inode and at most one block each).
const MAX_SPARES: usize = 32;
const IMPORTED_MARKER: &str = ".imported";
/// The attachment's IPs on a linked index entry (see the module doc).
const INDEX_XATTR: &CStr = c"user.host-local.ips";
const LINE_BREAK: &str = "\r\n";
/// Longest reservation content we interpret; `<64-char id>\r\n<15-char ifname>` needs 81.
/// Anything longer was not written by a host-local plugin and is left alone.
const MAX_RESERVATION_LEN: u64 = 4096;
const MAX_INDEX_LEN: u64 = 1 << 20;
const MAX_CURSOR_LEN: u64 = 64;
/// NAME_MAX on Linux file systems.
const MAX_NAME_LEN: usize = 255;

/// Who owns a reservation, from its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Attachment {
        container_id: String,
        ifname: String,
    },
    /// Written by plugins before v0.8.0: the container ID only.
    Legacy { container_id: String },
}

impl Owner {
    /// Parses content the way Go's readers compare it: surrounding whitespace trimmed.
    pub fn parse(content: &[u8]) -> Option<Owner> {
        let text = std::str::from_utf8(content).ok()?.trim();
        Some(match text.split_once(LINE_BREAK) {
            Some((container_id, ifname)) => Owner::Attachment {
                container_id: container_id.to_owned(),
                ifname: ifname.to_owned(),
            },
            None => Owner::Legacy {
                container_id: text.to_owned(),
            },
        })
    }

    fn is_attachment(&self, cid: &str, ifname: &str) -> bool {
        matches!(self, Owner::Attachment { container_id, ifname: i } if container_id == cid && i == ifname)
    }

    fn is_legacy(&self, cid: &str) -> bool {
        matches!(self, Owner::Legacy { container_id } if container_id == cid)
    }
}

/// The exact bytes Go writes into a reservation file.
pub fn reservation_content(container_id: &str, ifname: &str) -> String {
    format!("{}{LINE_BREAK}{ifname}", container_id.trim())
}

/// Index file name of an attachment; `None` when it cannot be a safe single file name (then the
/// store falls back to walking the network directory).
fn index_name(container_id: &str, ifname: &str) -> Option<String> {
    let valid =
        ids::validate_container_id(container_id).is_ok() && ids::validate_ifname(ifname).is_ok();
    let name = format!("{container_id}:{ifname}");
    (valid && name.len() <= MAX_NAME_LEN).then_some(name)
}

fn legacy_index_name(container_id: &str) -> Option<String> {
    (ids::validate_container_id(container_id).is_ok() && container_id.len() <= MAX_NAME_LEN)
        .then(|| container_id.to_owned())
}

fn cursor_name(set_index: usize) -> String {
    format!("{CURSOR_PREFIX}{set_index}")
}

/// Unique within the machine; uniqueness matters little since temp files are used under the lock.
fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
thread_local! {
    /// Directory entries read and files probed by this thread; lets tests assert that an
    /// operation's cost is independent of the number of reservations, without timing noise.
    pub(crate) static FS_PROBES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
thread_local! {
    /// Makes this thread's index xattr calls fail as on a file system without user xattrs.
    pub(crate) static NO_USER_XATTRS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn user_xattrs_off() -> bool {
    #[cfg(test)]
    return NO_USER_XATTRS.with(|c| c.get());
    #[cfg(not(test))]
    false
}

fn count_probes(_n: usize) {
    #[cfg(test)]
    FS_PROBES.with(|c| c.set(c.get() + _n as u64));
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn file_type(mode: libc::mode_t) -> libc::mode_t {
    mode & libc::S_IFMT
}

/// Opens a directory without following a final symlink, with an error that says what is wrong.
fn open_dir_at<P: ?Sized + NixPath>(parent: BorrowedFd<'_>, name: &P) -> Result<OwnedFd, Errno> {
    openat(parent, name, dir_flags(), Mode::empty())
}

fn dir_error<P: ?Sized + NixPath>(
    parent: BorrowedFd<'_>,
    name: &P,
    path: &Path,
    err: Errno,
) -> IpamError {
    match err {
        // With O_DIRECTORY|O_NOFOLLOW Linux reports a symlink as ENOTDIR (or ELOOP).
        Errno::ENOTDIR | Errno::ELOOP => {
            match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if file_type(st.st_mode) == libc::S_IFLNK => IpamError::Symlink {
                    path: path.to_owned(),
                },
                _ => IpamError::NotADirectory {
                    path: path.to_owned(),
                },
            }
        }
        e => IpamError::io("open directory", path, e),
    }
}

/// Opens `parent/name` as a directory, creating it with `mode` (subject to umask, like Go's
/// MkdirAll) if it does not exist.
fn ensure_dir_at(
    parent: BorrowedFd<'_>,
    name: &str,
    mode: u32,
    path: &Path,
) -> Result<OwnedFd, IpamError> {
    match open_dir_at(parent, name) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(dir_error(parent, name, path, e)),
    }
    match mkdirat(parent, name, Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(IpamError::io("create directory", path, e)),
    }
    open_dir_at(parent, name).map_err(|e| dir_error(parent, name, path, e))
}

/// `Some(content)` of a small regular file, `None` if it is missing, a symlink, not a regular
/// file, or larger than `limit` (none of which we wrote).
fn read_small(dir: BorrowedFd<'_>, name: &str, limit: u64) -> Result<Option<Vec<u8>>, Errno> {
    match open_regular(dir, name)? {
        Some(fd) => read_capped(fd, limit),
        None => Ok(None),
    }
}

/// `dir/name` opened for reading if it is a regular file; `None` if it is missing, a symlink
/// or anything else.
fn open_regular(dir: BorrowedFd<'_>, name: &str) -> Result<Option<OwnedFd>, Errno> {
    // O_NONBLOCK: a FIFO planted under an IP name must not hang us.
    count_probes(1);
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = match openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ELOOP | Errno::ENXIO) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok((file_type(fstat(&fd)?.st_mode) == libc::S_IFREG).then_some(fd))
}

fn read_capped(fd: OwnedFd, limit: u64) -> Result<Option<Vec<u8>>, Errno> {
    let mut buf = Vec::new();
    File::from(fd)
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    Ok((buf.len() as u64 <= limit).then_some(buf))
}

fn list_dir(dir: BorrowedFd<'_>) -> Result<Vec<String>, Errno> {
    let mut d = Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in d.iter() {
        count_probes(1);
        let entry = entry?;
        let name: &CStr = entry.file_name();
        // Names that are not UTF-8 are neither IPs nor anything we create.
        if let Ok(name) = name.to_str() {
            if name != "." && name != ".." {
                names.push(name.to_owned());
            }
        }
    }
    Ok(names)
}

fn parse_ip_lines(content: &[u8]) -> Vec<IpAddr> {
    String::from_utf8_lossy(content)
        .lines()
        .filter_map(|l| IpAddr::from_str(l.trim()).ok())
        .map(canonical_ip)
        .collect()
}

fn ip_lines(ips: &[IpAddr]) -> String {
    ips.iter().map(|ip| format!("{ip}\n")).collect()
}

/// The IP list of a linked index entry; `None` when the file has none (an index file of its
/// own, or a file system without user xattrs).
fn get_index_xattr(fd: BorrowedFd<'_>) -> Result<Option<Vec<u8>>, Errno> {
    if user_xattrs_off() {
        return Ok(None);
    }
    // 4 KiB: some hundred IPs, far more than one attachment ever holds.
    let mut buf = vec![0u8; 4096];
    // SAFETY: the name is NUL-terminated and buf is writable for its length.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            INDEX_XATTR.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return match Errno::last() {
            Errno::ENODATA | Errno::EOPNOTSUPP => Ok(None),
            e => Err(e),
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

fn set_index_xattr(fd: BorrowedFd<'_>, value: &[u8]) -> Result<(), Errno> {
    if user_xattrs_off() {
        return Err(Errno::EOPNOTSUPP);
    }
    // SAFETY: the name is NUL-terminated and value is readable for its length.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            INDEX_XATTR.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(rc).map(drop)
}

/// A reused spare may carry the list of the index it once was.
fn clear_index_xattr(fd: BorrowedFd<'_>) {
    // SAFETY: the name is NUL-terminated.
    unsafe { libc::fremovexattr(fd.as_raw_fd(), INDEX_XATTR.as_ptr()) };
}

/// Reservation file names with the IP each one parses to.
type NamedIps = Vec<(String, IpAddr)>;

/// The state of one network: `<dataDir>/<network>/` plus its sidecar.
#[derive(Debug)]
pub struct Store {
    net_path: PathBuf,
    side_path: PathBuf,
    net_dir: OwnedFd,
    side_dir: OwnedFd,
    tmp_dir: OwnedFd,
}

impl Store {
    /// Opens the store, creating `<data_dir>/<network>/` (0755, like Go) and the sidecar.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store, IpamError> {
        ids::validate_network_name(network)?;
        let data_dir = normalize(data_dir);
        let data_fd = match open_dir_at(AT_FDCWD, &data_dir) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&data_dir)
                    .map_err(|e| IpamError::io("create directory", &data_dir, e))?;
                open_dir_at(AT_FDCWD, &data_dir)
                    .map_err(|e| dir_error(AT_FDCWD, &data_dir, &data_dir, e))?
            }
            Err(e) => return Err(dir_error(AT_FDCWD, &data_dir, &data_dir, e)),
        };
        let net_path = data_dir.join(network);
        let net_dir = ensure_dir_at(data_fd.as_fd(), network, 0o755, &net_path)?;
        Self::with_net_dir(&data_dir, data_fd, network, net_path, net_dir)
    }

    /// Like [`Store::open`] but `Ok(None)` when the network directory does not exist (nothing
    /// was ever reserved), so DEL/CHECK/GC create nothing.
    pub fn open_existing(data_dir: &Path, network: &str) -> Result<Option<Store>, IpamError> {
        ids::validate_network_name(network)?;
        let data_dir = normalize(data_dir);
        let data_fd = match open_dir_at(AT_FDCWD, &data_dir) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(dir_error(AT_FDCWD, &data_dir, &data_dir, e)),
        };
        let net_path = data_dir.join(network);
        let net_dir = match open_dir_at(data_fd.as_fd(), network) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(dir_error(data_fd.as_fd(), network, &net_path, e)),
        };
        Self::with_net_dir(&data_dir, data_fd, network, net_path, net_dir).map(Some)
    }

    fn with_net_dir(
        data_dir: &Path,
        data_fd: OwnedFd,
        network: &str,
        net_path: PathBuf,
        net_dir: OwnedFd,
    ) -> Result<Store, IpamError> {
        let root_path = data_dir.join(SIDECAR_ROOT);
        let root = ensure_dir_at(data_fd.as_fd(), SIDECAR_ROOT, 0o700, &root_path)?;
        let side_path = root_path.join(network);
        let side_dir = ensure_dir_at(root.as_fd(), network, 0o700, &side_path)?;
        let tmp_dir = ensure_dir_at(side_dir.as_fd(), TMP_DIR, 0o700, &side_path.join(TMP_DIR))?;
        Ok(Store {
            net_path,
            side_path,
            net_dir,
            side_dir,
            tmp_dir,
        })
    }

    /// `<dataDir>/<network>`.
    pub fn network_dir(&self) -> &Path {
        &self.net_path
    }

    /// Takes the network's flock (blocking: contention waits, it never fails), then removes
    /// stale temp files and indexes pre-existing reservations on first use.
    pub fn lock(&self) -> Result<LockedStore<'_>, IpamError> {
        let lock_path = self.net_path.join(LOCK_FILE);
        let flags = OFlag::O_RDONLY
            | OFlag::O_CREAT
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC;
        let fd = openat(
            self.net_dir.as_fd(),
            LOCK_FILE,
            flags,
            Mode::from_bits_truncate(0o750),
        )
        .map_err(|e| IpamError::io("open lock file", &lock_path, e))?;
        let file = File::from(fd);
        // std's File::lock is flock(2), which excludes Go's go-filemutex; fcntl locks would not.
        loop {
            match file.lock() {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(IpamError::io("lock", &lock_path, e)),
            }
        }
        let locked = LockedStore {
            store: self,
            _lock: file,
            spares: RefCell::new(Vec::new()),
        };
        locked.remove_stale_temps();
        // The index is only a hint: a failed import (e.g. disk full) must not block DEL or GC.
        // Without the marker the next lock holder simply tries again.
        let _ = locked.import_if_needed();
        Ok(locked)
    }

    /// STATUS: the network and sidecar directories are writable, checked without side effects
    /// other than creating them.
    pub fn check_writable(&self) -> Result<(), IpamError> {
        let rw = AccessFlags::W_OK | AccessFlags::X_OK;
        faccessat(self.net_dir.as_fd(), ".", rw, AtFlags::empty())
            .map_err(|e| IpamError::io("write access to", &self.net_path, e))?;
        // An unnamed O_TMPFILE proves the file system takes writes without leaving anything
        // behind that a concurrent lock holder would have to clean up.
        let flags = OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
        let tmp_path = self.side_path.join(TMP_DIR);
        match openat(
            self.tmp_dir.as_fd(),
            ".",
            flags,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => File::from(fd)
                .write_all(b"x")
                .map_err(|e| IpamError::io("write a file in", &tmp_path, e)),
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => {
                faccessat(self.tmp_dir.as_fd(), ".", rw, AtFlags::empty())
                    .map_err(|e| IpamError::io("write access to", &tmp_path, e))
            }
            Err(e) => Err(IpamError::io("create a file in", &tmp_path, e)),
        }
    }
}

/// Drops `.` and trailing slashes: a trailing slash would make the kernel follow a symlinked
/// final component despite O_NOFOLLOW.
fn normalize(path: &Path) -> PathBuf {
    let normal: PathBuf = path
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    if normal.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        normal
    }
}

/// The store with the network lock held; dropping it releases the lock.
#[derive(Debug)]
pub struct LockedStore<'a> {
    store: &'a Store,
    _lock: File,
    /// Spare names in `.tmp`, listed when the lock was taken; only this holder changes them.
    spares: RefCell<Vec<String>>,
}

impl LockedStore<'_> {
    fn net(&self) -> BorrowedFd<'_> {
        self.store.net_dir.as_fd()
    }

    fn side(&self) -> BorrowedFd<'_> {
        self.store.side_dir.as_fd()
    }

    fn tmp(&self) -> BorrowedFd<'_> {
        self.store.tmp_dir.as_fd()
    }

    fn net_file(&self, name: &str) -> PathBuf {
        self.store.net_path.join(name)
    }

    fn side_file(&self, name: &str) -> PathBuf {
        self.store.side_path.join(name)
    }

    /// Any temp file present while we hold the lock belongs to a process that died mid-write;
    /// spares are kept (up to [`MAX_SPARES`]).
    fn remove_stale_temps(&self) {
        let Ok(names) = list_dir(self.tmp()) else {
            return;
        };
        let mut spares = self.spares.borrow_mut();
        for name in names {
            if name.starts_with(SPARE_PREFIX) && spares.len() < MAX_SPARES {
                spares.push(name);
            } else {
                self.remove_temp(&name);
            }
        }
    }

    fn remove_temp(&self, name: &str) {
        if unlinkat(self.tmp(), name, UnlinkatFlags::NoRemoveDir).is_err() {
            let _ = unlinkat(self.tmp(), name, UnlinkatFlags::RemoveDir);
        }
    }

    /// A spare opened for writing: a plain file of ours, with no other name (it may be the
    /// leftover second name of a live file if a process died between link and unlink, and must
    /// then never be written). Anything else found under a spare name is removed.
    fn take_spare(&self) -> Option<(String, File, u64)> {
        loop {
            let name = self.spares.borrow_mut().pop()?;
            // No O_TRUNC: only a file that passes the checks below may be changed.
            let flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
            let Ok(fd) = openat(self.tmp(), name.as_str(), flags, Mode::empty()) else {
                self.remove_temp(&name);
                continue;
            };
            if let Ok(st) = fstat(&fd) {
                // Checked in this order: a file that is not ours is never chmod-ed either.
                let ours = file_type(st.st_mode) == libc::S_IFREG && st.st_nlink == 1;
                if ours
                    && (st.st_mode & 0o7777 == 0o600
                        || fchmod(&fd, Mode::from_bits_truncate(0o600)).is_ok())
                {
                    return Some((name, File::from(fd), st.st_size as u64));
                }
            }
            self.remove_temp(&name);
        }
    }

    /// Writes `content` into a spare, or else into a new 0600 temp file, and returns its name.
    fn create_temp(&self, content: &[u8]) -> Result<String, IpamError> {
        self.create_temp_file(content).map(|(name, _)| name)
    }

    /// [`Self::create_temp`], with the file still open.
    fn create_temp_file(&self, content: &[u8]) -> Result<(String, File), IpamError> {
        if let Some((name, file, old_len)) = self.take_spare() {
            clear_index_xattr(file.as_fd());
            // Overwritten, then cut: truncating to zero first would arm ext4's auto_da_alloc
            // writeback on close (see `write_cursor`). The file has no other name yet, so its
            // mixed content in between is seen by nobody.
            let written =
                std::os::unix::fs::FileExt::write_all_at(&file, content, 0).and_then(|()| {
                    if old_len > content.len() as u64 {
                        file.set_len(content.len() as u64)
                    } else {
                        Ok(())
                    }
                });
            if written.is_ok() {
                return Ok((name, file));
            }
            self.remove_temp(&name);
        }
        let name = temp_name();
        let path = self.store.side_path.join(TMP_DIR).join(&name);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(
            self.tmp(),
            name.as_str(),
            flags,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| IpamError::io("create", &path, e))?;
        let mut file = File::from(fd);
        if let Err(e) = file.write_all(content) {
            let _ = unlinkat(self.tmp(), name.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(IpamError::io("write", &path, e));
        }
        Ok((name, file))
    }

    /// Replaces `dir/name` atomically (temp file + rename).
    fn write_atomic(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        path: PathBuf,
        content: &[u8],
    ) -> Result<(), IpamError> {
        let tmp = self.create_temp(content)?;
        renameat(self.tmp(), tmp.as_str(), dir, name).map_err(|e| {
            let _ = unlinkat(self.tmp(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            IpamError::io("rename into", path, e)
        })
    }

    /// Rewrites the round-robin cursor in place: written at offset 0, any longer old content
    /// cut off. Not atomic and needs not be: every reader holds the network lock (Go takes the
    /// same flock), and a cursor torn by a crash parses as no cursor, which only restarts the
    /// round-robin at the start of the range, as Go treats a garbled cursor. A rename would
    /// cost a new inode per ADD and, on ext4, a forced writeback of the new data when it
    /// replaces an existing name (auto_da_alloc): 0.4 ms of every ADD on this machine. No
    /// O_TRUNC either: truncating to zero arms the same writeback for close().
    ///
    /// Anything but a plain file of ours at the name (a planted symlink, a FIFO, a second
    /// hard link to some other file) is replaced by rename instead of written through.
    fn write_cursor(&self, name: &str, content: &[u8]) -> Result<(), IpamError> {
        let path = self.net_file(name);
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC;
        let fd = match openat(self.net(), name, flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => fd,
            Err(Errno::ELOOP | Errno::ENXIO | Errno::EISDIR) => {
                return self.write_atomic(self.net(), name, path, content)
            }
            Err(e) => return Err(IpamError::io("open", &path, e)),
        };
        let st = fstat(&fd).map_err(|e| IpamError::io("stat", &path, e))?;
        if file_type(st.st_mode) != libc::S_IFREG || st.st_nlink != 1 {
            drop(fd);
            return self.write_atomic(self.net(), name, path, content);
        }
        let file = File::from(fd);
        std::os::unix::fs::FileExt::write_all_at(&file, content, 0)
            .map_err(|e| IpamError::io("write", &path, e))?;
        if st.st_size as u64 > content.len() as u64 {
            file.set_len(content.len() as u64)
                .map_err(|e| IpamError::io("truncate", &path, e))?;
        }
        Ok(())
    }

    /// Creates `<network>/<name>` with `content` atomically; `Ok(false)` if the name exists.
    /// With `new_index`, the attachment's index entry `(name, ips)`, which does not exist
    /// yet, is made first: as a second link to this file (see the module doc), or as a file of
    /// its own where the file system has no user xattrs.
    fn link_new(
        &self,
        name: &str,
        content: &[u8],
        new_index: Option<(&str, &[IpAddr])>,
    ) -> Result<bool, IpamError> {
        // No fsync: it would cost milliseconds per ADD under the lock, and what a power cut
        // can leave (a name whose content never reached the disk) belongs to a pod whose
        // namespace died with the node anyway; GC releases it, since an empty or garbled
        // owner is never in a valid-attachments list. A killed process cannot leave one:
        // the name appears only once the content is written.
        let (tmp, file) = self.create_temp_file(content)?;
        let mut linked_index = None;
        let indexed = match new_index {
            None => Ok(()),
            Some((index, ips)) => {
                if set_index_xattr(file.as_fd(), ip_lines(ips).as_bytes()).is_ok() {
                    // Before the reservation's own name, like every index entry.
                    let link = || {
                        linkat(
                            self.tmp(),
                            tmp.as_str(),
                            self.side(),
                            index,
                            AtFlags::empty(),
                        )
                    };
                    let mut made = link();
                    if made == Err(Errno::EEXIST) {
                        // Not a file of ours (a planted symlink, say): removed, never used.
                        made = self
                            .retire(self.side(), index, || self.side_file(index))
                            .map_or(made, |()| link());
                    }
                    made.map(|()| linked_index = Some(index))
                        .map_err(|e| IpamError::io("create", self.side_file(index), e))
                } else {
                    self.write_index(index, ips)
                }
            }
        };
        drop(file);
        let linked = indexed.and_then(|()| {
            match linkat(self.tmp(), tmp.as_str(), self.net(), name, AtFlags::empty()) {
                Ok(()) => Ok(true),
                Err(Errno::EEXIST) => Ok(false),
                Err(e) => Err(IpamError::io("create", self.net_file(name), e)),
            }
        });
        // If this unlink fails the temp is a second name of the reservation inode; the next
        // lock holder removes that name only.
        let _ = unlinkat(self.tmp(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        if !matches!(linked, Ok(true)) {
            // An index entry linked to nothing reserved would only be pruned later.
            if let Some(index) = linked_index {
                let _ = self.retire(self.side(), index, || self.side_file(index));
            }
        }
        linked
    }

    fn remove_net_file(&self, name: &str) -> Result<(), IpamError> {
        self.retire(self.net(), name, || self.net_file(name))
    }

    /// Removes `dir/name`: a plain file of ours becomes a spare while there is room, anything
    /// else is unlinked. Either way the name is gone at once, atomically.
    fn retire(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        path: impl Fn() -> PathBuf,
    ) -> Result<(), IpamError> {
        if self.spares.borrow().len() < MAX_SPARES {
            let plain = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| file_type(st.st_mode) == libc::S_IFREG && st.st_nlink == 1);
            if plain {
                let spare = format!("{SPARE_PREFIX}{}", temp_name());
                if renameat(dir, name, self.tmp(), spare.as_str()).is_ok() {
                    self.spares.borrow_mut().push(spare);
                    return Ok(());
                }
            }
        }
        match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(IpamError::io("remove", path(), e)),
        }
    }

    fn owner_of(&self, ip: IpAddr) -> Result<Option<Owner>, IpamError> {
        let name = ip.to_string();
        read_small(self.net(), &name, MAX_RESERVATION_LEN)
            .map(|c| c.as_deref().and_then(Owner::parse))
            .map_err(|e| IpamError::io("read", self.net_file(&name), e))
    }

    /// Every entry of the network directory whose name is an IP (so never `lock` or a cursor).
    fn reservation_names(&self) -> Result<NamedIps, IpamError> {
        let names =
            list_dir(self.net()).map_err(|e| IpamError::io("list", &self.store.net_path, e))?;
        Ok(names
            .into_iter()
            .filter_map(|n| IpAddr::from_str(&n).ok().map(|ip| (n, canonical_ip(ip))))
            .collect())
    }

    /// Go's walk: the reservations owned by the attachment and, separately, by the bare ID.
    fn walk_owned(&self, cid: &str, ifname: &str) -> Result<(NamedIps, NamedIps), IpamError> {
        let mut full = Vec::new();
        let mut legacy = Vec::new();
        for (name, ip) in self.reservation_names()? {
            let content = match read_small(self.net(), &name, MAX_RESERVATION_LEN) {
                Ok(c) => c,
                // Vanished or unreadable entries are simply not ours to match.
                Err(_) => continue,
            };
            match content.as_deref().and_then(Owner::parse) {
                Some(o) if o.is_attachment(cid, ifname) => full.push((name, ip)),
                Some(o) if o.is_legacy(cid) => legacy.push((name, ip)),
                _ => {}
            }
        }
        Ok((full, legacy))
    }

    /// The IPs an index entry lists, from either form (see the module doc).
    fn read_index(&self, name: &str) -> Result<Option<Vec<IpAddr>>, IpamError> {
        let read = || -> Result<Option<Vec<u8>>, Errno> {
            let Some(fd) = open_regular(self.side(), name)? else {
                return Ok(None);
            };
            match get_index_xattr(fd.as_fd())? {
                Some(list) => Ok(Some(list)),
                None => read_capped(fd, MAX_INDEX_LEN),
            }
        };
        read()
            .map(|c| c.map(|c| parse_ip_lines(&c)))
            .map_err(|e| IpamError::io("read", self.side_file(name), e))
    }

    /// Writes the index, or removes it when empty.
    fn write_index(&self, name: &str, ips: &[IpAddr]) -> Result<(), IpamError> {
        if ips.is_empty() {
            return self.retire(self.side(), name, || self.side_file(name));
        }
        let content = ip_lines(ips);
        // A linked entry is updated in place: one setxattr, atomic, no new file.
        let linked = open_regular(self.side(), name)
            .ok()
            .flatten()
            .filter(|fd| matches!(get_index_xattr(fd.as_fd()), Ok(Some(_))));
        if let Some(fd) = linked {
            return set_index_xattr(fd.as_fd(), content.as_bytes())
                .map_err(|e| IpamError::io("write the index list of", self.side_file(name), e));
        }
        self.write_atomic(self.side(), name, self.side_file(name), content.as_bytes())
    }

    /// The listed IPs whose reservation is still owned as `keep` says; `None` without index.
    fn verified_index(
        &self,
        name: &str,
        keep: impl Fn(&Owner) -> bool,
    ) -> Result<Option<Vec<IpAddr>>, IpamError> {
        let Some(listed) = self.read_index(name)? else {
            return Ok(None);
        };
        let mut verified = Vec::with_capacity(listed.len());
        for ip in listed {
            if !verified.contains(&ip) && self.owner_of(ip)?.is_some_and(|o| keep(&o)) {
                verified.push(ip);
            }
        }
        Ok(Some(verified))
    }

    /// First use of a sidecar: index the reservations already on disk (made by the Go plugin,
    /// including legacy ID-only files) so the duplicate check sees them without walking.
    fn import_if_needed(&self) -> Result<(), IpamError> {
        match fstatat(self.side(), IMPORTED_MARKER, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(_) => return Ok(()),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(IpamError::io("stat", self.side_file(IMPORTED_MARKER), e)),
        }
        let mut found: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, ip) in self.reservation_names()? {
            let Ok(Some(content)) = read_small(self.net(), &name, MAX_RESERVATION_LEN) else {
                continue;
            };
            let index = match Owner::parse(&content) {
                Some(Owner::Attachment {
                    container_id,
                    ifname,
                }) => index_name(&container_id, &ifname),
                Some(Owner::Legacy { container_id }) => legacy_index_name(&container_id),
                None => None,
            };
            if let Some(index) = index {
                found.entry(index).or_default().push(ip);
            }
        }
        for (index, mut ips) in found {
            for ip in self.read_index(&index)?.unwrap_or_default() {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
            self.write_index(&index, &ips)?;
        }
        self.write_atomic(
            self.side(),
            IMPORTED_MARKER,
            self.side_file(IMPORTED_MARKER),
            b"",
        )
    }

    /// The round-robin cursor. Parsed without trimming, like Go: anything unparsable means
    /// "start at the beginning".
    pub fn last_reserved_ip(&self, set_index: usize) -> Option<IpAddr> {
        let content = read_small(self.net(), &cursor_name(set_index), MAX_CURSOR_LEN).ok()??;
        let ip = IpAddr::from_str(std::str::from_utf8(&content).ok()?).ok()?;
        Some(canonical_ip(ip))
    }

    /// Reserves `ip` for the attachment if free, then moves the cursor of `set_index`.
    pub fn reserve(
        &self,
        ip: IpAddr,
        container_id: &str,
        ifname: &str,
        set_index: usize,
    ) -> Result<bool, IpamError> {
        ids::validate_container_id(container_id)?;
        ids::validate_ifname(ifname)?;
        let name = ip.to_string();
        // Under the lock nobody else creates names (Go takes the same flock), so a stat is
        // enough to skip taken candidates cheaply.
        count_probes(1);
        match fstatat(self.net(), name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(_) => return Ok(false),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(IpamError::io("stat", self.net_file(&name), e)),
        }
        let index = index_name(container_id, ifname);
        let mut new_index = None;
        if let Some(index) = &index {
            let listed = self.verified_index(index, |o| o.is_attachment(container_id, ifname))?;
            let stale = listed.as_ref().is_some_and(Vec::is_empty);
            let mut ips = listed.unwrap_or_default();
            ips.push(ip);
            if ips.len() > 1 {
                self.write_index(index, &ips)?;
            } else {
                if stale {
                    // Nothing verified under the name: it gives way to an entry linked to
                    // this reservation.
                    self.retire(self.side(), index, || self.side_file(index))?;
                }
                new_index = Some((index.as_str(), ips));
            }
        }
        let content = reservation_content(container_id, ifname);
        let new_index = new_index.as_ref().map(|(i, ips)| (*i, ips.as_slice()));
        if !self.link_new(&name, content.as_bytes(), new_index)? {
            // Created by a writer that ignores the lock; our extra index entry fails
            // verification wherever it is read.
            return Ok(false);
        }
        let cursor = cursor_name(set_index);
        if let Err(e) = self.write_cursor(&cursor, name.as_bytes()) {
            // Go also gives the address back when the cursor cannot be written.
            let _ = self.remove_net_file(&name);
            return Err(e);
        }
        Ok(true)
    }

    /// IPs of `(container_id, ifname)` plus legacy reservations of `container_id`, from the index
    /// (O(1) in the number of reservations).
    pub fn reserved_by(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        match (
            index_name(container_id, ifname),
            legacy_index_name(container_id),
        ) {
            (Some(index), Some(legacy)) => {
                let mut ips = self
                    .verified_index(&index, |o| o.is_attachment(container_id, ifname))?
                    .unwrap_or_default();
                ips.extend(
                    self.verified_index(&legacy, |o| o.is_legacy(container_id))?
                        .unwrap_or_default(),
                );
                Ok(ips)
            }
            _ => {
                let (full, legacy) = self.walk_owned(container_id, ifname)?;
                Ok(full.into_iter().chain(legacy).map(|(_, ip)| ip).collect())
            }
        }
    }

    /// Gives back addresses this ADD reserved (rollback); only those still owned by it.
    pub fn release_ips(
        &self,
        ips: &[IpAddr],
        container_id: &str,
        ifname: &str,
    ) -> Result<(), IpamError> {
        let mut first_error = None;
        for ip in ips {
            match self.owner_of(*ip) {
                Ok(Some(o)) if o.is_attachment(container_id, ifname) => {
                    if let Err(e) = self.remove_net_file(&ip.to_string()) {
                        first_error.get_or_insert(e);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(index) = index_name(container_id, ifname) {
            if let Some(listed) = self.read_index(&index)? {
                let rest: Vec<IpAddr> = listed.into_iter().filter(|ip| !ips.contains(ip)).collect();
                self.write_index(&index, &rest)?;
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// DEL: releases every reservation of the attachment, whatever range it is in. Falls back to
    /// Go's walk (attachment match, else legacy ID match) when the index yields nothing, so
    /// reservations made by the Go plugin are released too. Returns the released IPs and the
    /// errors met on the way (it keeps going).
    pub fn release_attachment(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> (Vec<IpAddr>, Vec<IpamError>) {
        let mut released = Vec::new();
        let mut errors = Vec::new();
        let index = index_name(container_id, ifname);
        // An unreadable index only matters if the walk below cannot make up for it.
        let mut index_error = None;
        if let Some(index) = &index {
            match self.verified_index(index, |o| o.is_attachment(container_id, ifname)) {
                Ok(ips) => {
                    for ip in ips.unwrap_or_default() {
                        match self.remove_net_file(&ip.to_string()) {
                            Ok(()) => released.push(ip),
                            Err(e) => errors.push(e),
                        }
                    }
                }
                Err(e) => index_error = Some(e),
            }
        }
        if released.is_empty() {
            match self.walk_owned(container_id, ifname) {
                Ok((full, legacy)) => {
                    index_error = None;
                    let legacy_fallback = full.is_empty() && !legacy.is_empty();
                    let victims = if full.is_empty() { legacy } else { full };
                    for (name, ip) in victims {
                        match self.remove_net_file(&name) {
                            Ok(()) => released.push(ip),
                            Err(e) => errors.push(e),
                        }
                    }
                    if legacy_fallback && errors.is_empty() {
                        if let Some(legacy) = legacy_index_name(container_id) {
                            if let Err(e) = self.write_index(&legacy, &[]) {
                                errors.push(e);
                            }
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        errors.extend(index_error);
        // Keep the index when something failed, so a retried DEL still finds the addresses.
        if let (Some(index), true) = (&index, errors.is_empty()) {
            if let Err(e) = self.write_index(index, &[]) {
                errors.push(e);
            }
        }
        (released, errors)
    }

    /// CHECK: does any reservation belong to the attachment (or, legacy, to the container)?
    pub fn has_attachment(&self, container_id: &str, ifname: &str) -> Result<bool, IpamError> {
        if !self.reserved_by(container_id, ifname)?.is_empty() {
            return Ok(true);
        }
        let (full, legacy) = self.walk_owned(container_id, ifname)?;
        Ok(!full.is_empty() || !legacy.is_empty())
    }

    /// GC: releases every reservation whose owner is not in `valid`; a legacy ID-only file is
    /// kept when its ID appears with any ifname. Only IP-named regular files are considered,
    /// so `lock`, cursors and foreign files are never touched. Stale index entries go too.
    pub fn gc(&self, valid: &HashSet<(String, String)>) -> (Vec<IpAddr>, Vec<IpamError>) {
        let valid_ids: HashSet<&str> = valid.iter().map(|(c, _)| c.as_str()).collect();
        let keep = |o: &Owner| match o {
            Owner::Attachment {
                container_id,
                ifname,
            } => valid.contains(&(container_id.clone(), ifname.clone())),
            Owner::Legacy { container_id } => valid_ids.contains(container_id.as_str()),
        };
        let mut released = Vec::new();
        let mut errors = Vec::new();
        match self.reservation_names() {
            Ok(names) => {
                for (name, ip) in names {
                    match read_small(self.net(), &name, MAX_RESERVATION_LEN) {
                        Ok(Some(content)) => match Owner::parse(&content) {
                            Some(owner) if keep(&owner) => {}
                            // Unreadable owners (not UTF-8: damage, never something we or Go
                            // wrote) cannot be in the valid list either.
                            _ => match self.remove_net_file(&name) {
                                Ok(()) => released.push(ip),
                                Err(e) => errors.push(e),
                            },
                        },
                        Ok(None) => {}
                        Err(e) => errors.push(IpamError::io("read", self.net_file(&name), e)),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        match list_dir(self.side()) {
            Ok(names) => {
                for name in names.iter().filter(|n| !n.starts_with('.')) {
                    let owner = match name.split_once(':') {
                        Some((container_id, ifname)) => Owner::Attachment {
                            container_id: container_id.to_owned(),
                            ifname: ifname.to_owned(),
                        },
                        None => Owner::Legacy {
                            container_id: name.clone(),
                        },
                    };
                    let pruned = if keep(&owner) {
                        self.verified_index(name, |o| *o == owner)
                            .map(Option::unwrap_or_default)
                    } else {
                        Ok(Vec::new())
                    };
                    if let Err(e) = pruned.and_then(|ips| self.write_index(name, &ips)) {
                        errors.push(e);
                    }
                }
            }
            Err(e) => errors.push(IpamError::io("list", &self.store.side_path, e)),
        }
        (released, errors)
    }
}

impl Reservations for LockedStore<'_> {
    fn last_reserved_ip(&mut self, set_index: usize) -> Option<IpAddr> {
        LockedStore::last_reserved_ip(self, set_index)
    }

    fn reserved_by(&mut self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        LockedStore::reserved_by(self, container_id, ifname)
    }

    fn reserve(
        &mut self,
        ip: IpAddr,
        container_id: &str,
        ifname: &str,
        set_index: usize,
    ) -> Result<bool, IpamError> {
        LockedStore::reserve(self, ip, container_id, ifname, set_index)
    }
}

#[cfg(test)]
mod tests;
