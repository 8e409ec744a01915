//! The filesystem seam: reading subnet.env and the saved delegate configs under
//! `dataDir/<containerID>` (the on-disk format the Go plugin shares: one file per
//! container holding the exact bytes given to the delegate).
//!
//! [`HostFs`] is the real thing. Saved configs appear atomically (temp file, rename) and
//! are made durable (fsync of the file and the directory) before ADD reports success,
//! because a zero-length file after a power cut used to leave pods stuck Terminating
//! (flannel#1662, cni-plugin#43). Every access goes through a
//! descriptor of `dataDir` opened with O_NOFOLLOW, and the per-container file is opened
//! with O_NOFOLLOW too: the plugin runs as root and must not write through, read through
//! or delete through a symlink planted in the directory.
//!
//! Pods of one network on one node almost always get identical bytes, so a saved config is
//! a hard link to a shared copy, `.shared.<hash of the bytes>`: the first ADD's own file,
//! offered for sharing once it is durable, and removed with the last name linked to it (or
//! by GC when a kill left it unlinked). An ADD then links a name instead of allocating an
//! inode and a data block (on ext4 without a journal, inode allocation scans past every
//! inode freed in the last minute, `recently_deleted`, which under pod churn measured
//! 0.4-0.7 ms per ADD), and only the directory needs writing for the name to survive a
//! power cut. The copy's content is compared before it is linked and the link checked
//! after, so a name only ever holds the exact bytes of its ADD. Nothing writes through a
//! saved file (every change is a new name renamed into place), so sharing the inode is
//! safe for us and for a Go DEL, which reads and removes the name.

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{fchmod, fstat, fstatat, Mode, SFlag};
use nix::unistd::{fsync, linkat, unlinkat, UnlinkatFlags};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Saved configs are at most the size of a network config (`cni` caps stdin at 4 MiB)
/// plus what flannel adds; anything bigger was not written by a flannel plugin.
pub const MAX_SAVED_BYTES: usize = cni::config::MAX_CONFIG_BYTES + 64 * 1024;

pub trait Fs: Sync {
    /// Reads at most `limit` bytes of the regular file `path`, following symlinks
    /// (`/run/flannel` may legitimately be one). NotFound when it does not exist.
    fn read_limited(&self, path: &Path, limit: usize) -> io::Result<Vec<u8>>;

    /// Atomically replaces `dir/<id>` with `data` (0600), creating `dir` (0700) first.
    /// The new content is visible at once but not yet durable: see [`Fs::sync`].
    fn save(&self, dir: &Path, id: &str, data: &[u8]) -> io::Result<()>;

    /// Makes what [`Fs::save`] wrote to `dir/<id>` (`data`) survive a power cut. A name
    /// linked to the shared copy needs only `dir` written: the copy was durable before it
    /// was offered. A file of its own is written, then `dir`, and it then becomes the
    /// shared copy if there is none.
    fn sync(&self, dir: &Path, id: &str, data: &[u8]) -> io::Result<()>;

    /// The saved bytes of `dir/<id>`; `None` when there is no such file (or no `dir`).
    /// A symlink, a non-regular file or an oversized file is an `InvalidData` error: it is
    /// not a config this plugin saved.
    fn load(&self, dir: &Path, id: &str) -> io::Result<Option<Vec<u8>>>;

    /// Removes `dir/<id>` (never what a symlink there points to); absent is fine.
    fn remove(&self, dir: &Path, id: &str) -> io::Result<()>;

    /// Names of the regular files in `dir` that can be container IDs, sorted. Temp files
    /// and shared copies (leading '.') and anything else are never listed, so never touched
    /// by GC as saved configs.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;

    /// Removes the shared copies in `dir` that no saved config links to any more (what a
    /// process killed between making one and linking it leaves, or a Go DEL, which removes
    /// only the container's name); returns how many.
    fn sweep_shared(&self, dir: &Path) -> io::Result<usize>;
}

/// The real filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostFs;

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// How files in `dataDir` are opened for reading: never through a symlink, and never
/// blocking on a FIFO planted there.
const READ_NOFOLLOW: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_NONBLOCK);

/// Opens `dir` itself with O_NOFOLLOW; `None` if it does not exist and `create` is false.
fn open_dir(dir: &Path, create: bool) -> io::Result<Option<OwnedFd>> {
    if create {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(AT_FDCWD, dir, flags, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) if !create => Ok(None),
        Err(Errno::ELOOP) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is a symbolic link; refusing to follow it (point dataDir at the real directory)",
        )),
        Err(e) => Err(errno(e)),
    }
}

/// Removes `.<id>.*.tmp` files: what a save killed between create and rename leaves.
/// The runtime never runs two operations for one container at once, so when that
/// container's config is removed no save of it can be in flight.
fn remove_stale_temps(dirfd: &OwnedFd, id: &str) {
    let prefix = format!(".{id}.");
    let Ok(names) = entry_names(dirfd) else {
        return;
    };
    let stale = names
        .into_iter()
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".tmp"));
    for name in stale {
        let _ = unlinkat(dirfd, name.as_str(), UnlinkatFlags::NoRemoveDir);
    }
}

/// The UTF-8 entry names of the directory open at `dirfd`. `Dir` takes ownership of its
/// fd, so the listing goes through a second descriptor of the same directory, and callers
/// stat and unlink relative to the first.
fn entry_names(dirfd: &OwnedFd) -> io::Result<Vec<String>> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let dupfd = openat(dirfd, ".", flags, Mode::empty()).map_err(errno)?;
    let mut d = nix::dir::Dir::from_fd(dupfd).map_err(errno)?;
    let mut names = Vec::new();
    for entry in d.iter() {
        if let Ok(name) = entry.map_err(errno)?.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn read_capped(file: File, limit: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    file.take(limit as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

fn is_regular(mode: nix::libc::mode_t) -> bool {
    SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG
}

impl Fs for HostFs {
    fn read_limited(&self, path: &Path, limit: usize) -> io::Result<Vec<u8>> {
        // O_NONBLOCK: a FIFO planted at the path must not hang the runtime.
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let fd = openat(AT_FDCWD, path, flags, Mode::empty()).map_err(errno)?;
        if !is_regular(fstat(&fd).map_err(errno)?.st_mode) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is not a regular file",
            ));
        }
        read_capped(File::from(fd), limit)
    }

    fn save(&self, dir: &Path, id: &str, data: &[u8]) -> io::Result<()> {
        let Some(dirfd) = open_dir(dir, true)? else {
            return Err(io::ErrorKind::NotFound.into());
        };
        // A repeated ADD replaces the name: the copy its old content shared may go unused.
        let replaced = linked_shared_copy(&dirfd, id);
        let saved = save_in(&dirfd, id, data);
        release_shared(&dirfd, replaced);
        saved
    }

    fn sync(&self, dir: &Path, id: &str, data: &[u8]) -> io::Result<()> {
        let Some(dirfd) = open_dir(dir, false)? else {
            return Err(io::ErrorKind::NotFound.into());
        };
        let fd = openat(&dirfd, id, READ_NOFOLLOW, Mode::empty()).map_err(errno)?;
        let st = fstat(&fd).map_err(errno)?;
        let shared = shared_name(data);
        let linked = st.st_nlink > 1
            && fstatat(&dirfd, shared.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|c| (c.st_dev, c.st_ino) == (st.st_dev, st.st_ino));
        // File before directory: once the name is durable its content must be too. The
        // link count the new name raised is in the same journal commit as the name (ext4,
        // xfs); without a journal, the fsck such a file system needs after a crash
        // recounts it.
        if !linked {
            fsync(&fd).map_err(errno)?;
        }
        fsync(&dirfd).map_err(errno)?;
        if !linked {
            // Durable now, so others may link it. Taken (a copy offered meanwhile, or
            // something that is not one): this file stays private.
            let _ = linkat(&dirfd, id, &dirfd, shared.as_str(), AtFlags::empty());
        }
        Ok(())
    }

    fn load(&self, dir: &Path, id: &str) -> io::Result<Option<Vec<u8>>> {
        let Some(dirfd) = open_dir(dir, false)? else {
            return Ok(None);
        };
        let fd = match openat(&dirfd, id, READ_NOFOLLOW, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "it is a symbolic link, not a saved config; not following it",
                ))
            }
            Err(e) => return Err(errno(e)),
        };
        if !is_regular(fstat(&fd).map_err(errno)?.st_mode) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "it is not a regular file",
            ));
        }
        let data = read_capped(File::from(fd), MAX_SAVED_BYTES + 1)?;
        if data.len() > MAX_SAVED_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("it is larger than {MAX_SAVED_BYTES} bytes"),
            ));
        }
        Ok(Some(data))
    }

    fn remove(&self, dir: &Path, id: &str) -> io::Result<()> {
        let Some(dirfd) = open_dir(dir, false)? else {
            return Ok(());
        };
        let shared = linked_shared_copy(&dirfd, id);
        match unlinkat(&dirfd, id, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(errno(e)),
        }
        release_shared(&dirfd, shared);
        remove_stale_temps(&dirfd, id);
        // No fsync of the directory: a removal lost in a power cut only brings the file
        // back, and then a repeated DEL replays it (DEL is idempotent) or GC removes it (the
        // container is in no valid list). Syncing would cost every DEL a disk write.
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let Some(dirfd) = open_dir(dir, false)? else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        for name in entry_names(&dirfd)? {
            if !cni::env::is_valid_id(&name) || name.len() > cni::env::MAX_ID_LEN {
                continue;
            }
            let st = match fstatat(&dirfd, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(errno(e)),
            };
            if is_regular(st.st_mode) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn sweep_shared(&self, dir: &Path) -> io::Result<usize> {
        let Some(dirfd) = open_dir(dir, false)? else {
            return Ok(0);
        };
        let unused: Vec<String> = entry_names(&dirfd)?
            .into_iter()
            .filter(|n| n.starts_with(SHARED_PREFIX))
            .filter(|n| {
                fstatat(&dirfd, n.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| is_regular(st.st_mode) && st.st_nlink == 1)
            })
            .collect();
        let mut removed = 0;
        for name in unused {
            // An ADD that links it between our stat and this unlink keeps its own name to
            // the inode; the copy is simply made again by the next ADD.
            match unlinkat(&dirfd, name.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) => removed += 1,
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(errno(e)),
            }
        }
        Ok(removed)
    }
}

/// [`Fs::save`] in an open `dataDir`: a link to the shared copy when it holds `data`,
/// otherwise a file of our own, which [`Fs::sync`] offers as the shared copy.
fn save_in(dirfd: &OwnedFd, id: &str, data: &[u8]) -> io::Result<()> {
    let shared = shared_name(data);
    if let Some(identity) = same_content(dirfd, &shared, data) {
        // Any failure (the copy removed by the last DEL in between, say) falls through to a
        // file of our own, which then replaces whatever the attempt left at `id`.
        if link_shared(dirfd, &shared, id, identity).is_ok() {
            return Ok(());
        }
    }
    let tmp = temp_name(id);
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(dirfd, tmp.as_str(), flags, Mode::from_bits_truncate(0o600)).map_err(errno)?;
    let written = (|| -> io::Result<()> {
        // The umask can only narrow 0600, but be exact: the Go plugin writes 0600.
        fchmod(&fd, Mode::from_bits_truncate(0o600)).map_err(errno)?;
        let mut f = File::from(fd);
        f.write_all(data)?;
        drop(f);
        renameat(dirfd, tmp.as_str(), dirfd, id).map_err(errno)
    })();
    if let Err(e) = written {
        let _ = unlinkat(dirfd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        return Err(e);
    }
    Ok(())
}

const SHARED_PREFIX: &str = ".shared.";

/// The shared copy's name for `data`: FNV-1a of the bytes, which every build and version
/// computes alike (all plugin processes on a node must agree on it). A collision costs
/// only the sharing: the content is compared before any link.
fn shared_name(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{SHARED_PREFIX}{h:016x}")
}

/// A fresh temp name for `id`. A leading '.' can never start a container ID, so a temp file
/// is never mistaken for a saved config (by us or by the Go plugin). The suffix only keeps
/// concurrent writers apart: RandomState's getrandom(2) keys, not the rand crate, whose
/// CPUID feature detection costs ~150 us under a hypervisor.
fn temp_name(id: &str) -> String {
    let suffix = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), ());
    format!(".{id}.{suffix:016x}.tmp")
}

/// (device, inode) of `dir/name` if it is a regular file holding exactly `data`.
fn same_content(dirfd: &OwnedFd, name: &str, data: &[u8]) -> Option<(u64, u64)> {
    let fd = openat(dirfd, name, READ_NOFOLLOW, Mode::empty()).ok()?;
    let st = fstat(&fd).ok()?;
    if !is_regular(st.st_mode) || usize::try_from(st.st_size).ok()? != data.len() {
        return None;
    }
    let content = read_capped(File::from(fd), data.len() + 1).ok()?;
    (content == data).then_some((st.st_dev, st.st_ino))
}

/// Links `id` to the shared copy whose content was compared (`identity`): a new name
/// directly, an existing one replaced atomically through a temp name. The link is checked
/// afterwards, since the copy's name may have been removed and made again in between.
fn link_shared(dirfd: &OwnedFd, shared: &str, id: &str, identity: (u64, u64)) -> io::Result<()> {
    match linkat(dirfd, shared, dirfd, id, AtFlags::empty()) {
        Ok(()) => {}
        Err(Errno::EEXIST) => {
            let tmp = temp_name(id);
            linkat(dirfd, shared, dirfd, tmp.as_str(), AtFlags::empty()).map_err(errno)?;
            if let Err(e) = renameat(dirfd, tmp.as_str(), dirfd, id) {
                let _ = unlinkat(dirfd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
                return Err(errno(e));
            }
        }
        Err(e) => return Err(errno(e)),
    }
    let st = fstatat(dirfd, id, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(errno)?;
    if (st.st_dev, st.st_ino) == identity {
        Ok(())
    } else {
        Err(io::Error::other(
            "the shared copy changed while it was linked",
        ))
    }
}

/// Removes the shared copy a name used to link to once nothing else does. Called after
/// that name went, so that of two concurrent DELs at least the last sees the copy unused.
/// An ADD linking it at this very moment keeps its own name to the inode either way, or
/// finds the copy gone and makes a new one.
fn release_shared(dirfd: &OwnedFd, shared: Option<(String, (u64, u64))>) {
    if let Some((name, identity)) = shared {
        if fstatat(dirfd, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| (st.st_dev, st.st_ino) == identity && st.st_nlink == 1)
        {
            let _ = unlinkat(dirfd, name.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// The shared copy `dir/id` is linked to, with its (device, inode), read through the
/// content; `None` for a file with a single link (private, or written by the Go plugin).
fn linked_shared_copy(dirfd: &OwnedFd, id: &str) -> Option<(String, (u64, u64))> {
    let fd = openat(dirfd, id, READ_NOFOLLOW, Mode::empty()).ok()?;
    let st = fstat(&fd).ok()?;
    if !is_regular(st.st_mode) || st.st_nlink < 2 {
        return None;
    }
    let content = read_capped(File::from(fd), MAX_SAVED_BYTES + 1).ok()?;
    (content.len() <= MAX_SAVED_BYTES).then(|| (shared_name(&content), (st.st_dev, st.st_ino)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn save_is_atomic_private_and_replaces() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a/b/flannel");
        HostFs.save(&dir, "c1", b"{\"type\":\"bridge\"}").unwrap();
        HostFs.sync(&dir, "c1", b"{\"type\":\"bridge\"}").unwrap();
        HostFs.save(&dir, "c1", b"second").unwrap();
        HostFs.sync(&dir, "c1", b"second").unwrap();
        assert!(HostFs.sync(&dir, "absent", b"x").is_err());
        let meta = std::fs::metadata(dir.join("c1")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(std::fs::read(dir.join("c1")).unwrap(), b"second");
        assert_eq!(
            names(&dir),
            vec![shared_name(b"second"), "c1".to_owned()],
            "no temp files left behind, and only the copy c1 shares"
        );
        assert_eq!(HostFs.load(&dir, "c1").unwrap().unwrap(), b"second");
    }

    #[test]
    fn missing_dir_and_file_are_none() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("nope");
        assert_eq!(HostFs.load(&dir, "c1").unwrap(), None);
        HostFs.remove(&dir, "c1").unwrap();
        assert!(HostFs.list(&dir).unwrap().is_empty());
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(HostFs.load(&dir, "c1").unwrap(), None);
        HostFs.remove(&dir, "c1").unwrap();
    }

    #[test]
    fn symlinks_are_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("flannel");
        std::fs::create_dir(&dir).unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("c1")).unwrap();

        let e = HostFs.load(&dir, "c1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(HostFs.list(&dir).unwrap().is_empty());
        // Saving replaces the link itself; the target is untouched.
        HostFs.save(&dir, "c1", b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(dir.join("c1"))
            .unwrap()
            .file_type()
            .is_symlink());
        // Removing a planted link removes the link only.
        std::fs::remove_file(dir.join("c1")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("c2")).unwrap();
        HostFs.remove(&dir, "c2").unwrap();
        assert!(victim.exists());

        // A symlinked dataDir is refused rather than followed.
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = t.path().join("linkdir");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(HostFs.save(&link, "c3", b"x").is_err());
        assert!(!real.join("c3").exists());
    }

    #[test]
    fn list_skips_temp_files_dirs_and_non_ids() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        for name in ["b2", "a1", ".a1.0123.tmp", "-x", "lock"] {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        std::fs::create_dir(dir.join("subdir")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("l1")).unwrap();
        assert_eq!(HostFs.list(dir).unwrap(), vec!["a1", "b2", "lock"]);
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn identical_configs_share_one_inode_until_the_last_goes() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("flannel");
        let shared = shared_name(b"conf");
        let ino = |n: &str| std::fs::metadata(dir.join(n)).unwrap().ino();
        // The first file is offered for sharing only once it is durable.
        HostFs.save(&dir, "c1", b"conf").unwrap();
        assert!(!dir.join(&shared).exists(), "offered before its sync");
        HostFs.sync(&dir, "c1", b"conf").unwrap();
        assert_eq!(ino("c1"), ino(&shared));
        HostFs.save(&dir, "c2", b"conf").unwrap();
        HostFs.sync(&dir, "c2", b"conf").unwrap();
        HostFs.save(&dir, "c3", b"other").unwrap();
        assert_eq!(ino("c1"), ino(&shared));
        assert_eq!(ino("c2"), ino(&shared));
        assert_ne!(ino("c3"), ino("c1"));
        assert_eq!(std::fs::metadata(dir.join("c1")).unwrap().nlink(), 3);
        assert_eq!(HostFs.list(&dir).unwrap(), vec!["c1", "c2", "c3"]);
        assert_eq!(HostFs.load(&dir, "c2").unwrap().unwrap(), b"conf");

        // Replacing a name never writes through the shared inode.
        HostFs.save(&dir, "c2", b"changed").unwrap();
        HostFs.sync(&dir, "c2", b"changed").unwrap();
        assert_eq!(std::fs::read(dir.join("c1")).unwrap(), b"conf");
        assert_eq!(std::fs::read(dir.join("c2")).unwrap(), b"changed");
        HostFs.save(&dir, "c2", b"conf").unwrap();
        assert_eq!(ino("c2"), ino(&shared), "an existing name relinked");

        HostFs.remove(&dir, "c1").unwrap();
        assert!(dir.join(&shared).exists(), "c2 still links it");
        HostFs.remove(&dir, "c2").unwrap();
        HostFs.remove(&dir, "c3").unwrap();
        assert!(names(&dir).is_empty(), "{:?}", names(&dir));
    }

    #[test]
    fn a_shared_copy_that_is_not_the_content_is_never_linked() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let shared = shared_name(b"conf");
        // Different bytes under the name (a collision, or tampering), then a symlink, then
        // a directory: each time the saved file is a private copy with the exact bytes.
        std::fs::write(dir.join(&shared), b"evil").unwrap();
        HostFs.save(dir, "c1", b"conf").unwrap();
        HostFs.sync(dir, "c1", b"conf").unwrap();
        assert_eq!(std::fs::read(dir.join("c1")).unwrap(), b"conf");
        assert_eq!(std::fs::metadata(dir.join("c1")).unwrap().nlink(), 1);
        HostFs.remove(dir, "c1").unwrap();
        assert_eq!(
            std::fs::read(dir.join(&shared)).unwrap(),
            b"evil",
            "left alone"
        );

        std::fs::remove_file(dir.join(&shared)).unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"conf").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(&shared)).unwrap();
        HostFs.save(dir, "c2", b"conf").unwrap();
        HostFs.sync(dir, "c2", b"conf").unwrap();
        assert!(!std::fs::symlink_metadata(dir.join("c2"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_ne!(
            std::fs::metadata(dir.join("c2")).unwrap().ino(),
            std::fs::metadata(&victim).unwrap().ino()
        );

        std::fs::remove_file(dir.join(&shared)).unwrap();
        std::fs::create_dir(dir.join(&shared)).unwrap();
        HostFs.save(dir, "c3", b"conf").unwrap();
        HostFs.sync(dir, "c3", b"conf").unwrap();
        assert_eq!(std::fs::read(dir.join("c3")).unwrap(), b"conf");
    }

    #[test]
    fn sweep_removes_only_unlinked_shared_copies() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        for (id, data) in [("live", b"a"), ("gone", b"b")] {
            HostFs.save(dir, id, data).unwrap();
            HostFs.sync(dir, id, data).unwrap();
        }
        // What a Go DEL does: the container's name only.
        std::fs::remove_file(dir.join("gone")).unwrap();
        std::fs::write(dir.join(".a1.0123.tmp"), b"x").unwrap();
        assert_eq!(HostFs.sweep_shared(dir).unwrap(), 1);
        assert_eq!(
            names(dir),
            vec![
                ".a1.0123.tmp".to_owned(),
                shared_name(b"a"),
                "live".to_owned()
            ]
        );
        assert_eq!(HostFs.sweep_shared(&dir.join("absent")).unwrap(), 0);
    }

    #[test]
    fn shared_names_are_stable() {
        // Every plugin build on a node must name a copy alike: pinned, not recomputed.
        assert_eq!(shared_name(b""), ".shared.cbf29ce484222325");
        assert_eq!(shared_name(b"a"), ".shared.af63dc4c8601ec8c");
    }

    #[test]
    fn oversized_and_special_files_are_invalid_data() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        std::fs::write(dir.join("big"), vec![b' '; MAX_SAVED_BYTES + 1]).unwrap();
        assert_eq!(
            HostFs.load(dir, "big").unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        std::fs::create_dir(dir.join("d")).unwrap();
        assert_eq!(
            HostFs.load(dir, "d").unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn read_limited_caps_and_refuses_non_files() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("subnet.env");
        std::fs::write(&p, "0123456789").unwrap();
        assert_eq!(HostFs.read_limited(&p, 4).unwrap(), b"0123");
        assert_eq!(
            HostFs
                .read_limited(&t.path().join("none"), 4)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        assert!(HostFs.read_limited(t.path(), 4).is_err());
        let fifo = t.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        assert!(
            HostFs.read_limited(&fifo, 4).is_err(),
            "a FIFO must not block"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    #[test]
    fn remove_also_drops_stale_temps_of_that_container_only() {
        let d = tempfile::tempdir().unwrap();
        HostFs.save(d.path(), "c1", b"{}").unwrap();
        std::fs::write(d.path().join(".c1.0123456789abcdef.tmp"), b"half").unwrap();
        std::fs::write(d.path().join(".c2.0123456789abcdef.tmp"), b"half").unwrap();
        HostFs.remove(d.path(), "c1").unwrap();
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".c2.0123456789abcdef.tmp"]);
    }
}
