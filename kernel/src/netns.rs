//! Network namespace handles, a guard that switches back on drop, and
//! [`run_in_netns`], which confines a namespace switch to a throw-away thread.
//!
//! `setns(2)` moves only the calling thread. Code that switches a long-lived
//! thread and forgets (or fails, or panics before) switching back leaves that
//! thread configuring the pod's namespace. The guard makes switching back
//! unconditional; `run_in_netns` avoids the question altogether.

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::stat::fstat;
use nix::sys::statfs::{fstatfs, NSFS_MAGIC, PROC_SUPER_MAGIC};

use crate::error::{Error, Result};

/// `NS_GET_NSTYPE` from `<linux/nsfs.h>`: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open network namespace file (`/proc/<pid>/ns/net`, `/run/netns/<name>`,
/// `/proc/<pid>/task/<tid>/ns/net`, ...). Holding the descriptor keeps the
/// namespace alive even if every process in it exits.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: PathBuf,
}

impl NetNs {
    /// Opens `path` and checks that it really is a network namespace.
    ///
    /// A missing path is [`Error::NetnsNotFound`] (CNI DEL then only releases
    /// IPAM); a path that exists but is something else is [`Error::NotNetns`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NetnsNotFound { path })
            }
            Err(e) => {
                return Err(Error::Netns {
                    op: "open",
                    path,
                    errno: io_errno(&e),
                })
            }
        };
        let fd = OwnedFd::from(file);
        check_is_netns(fd.as_fd(), &path)?;
        Ok(NetNs { fd, path })
    }

    /// The namespace of the calling *thread*. `/proc/self/ns/net` would name
    /// the main thread's namespace, which differs inside [`run_in_netns`].
    pub fn current() -> Result<Self> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// The path this handle was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Identity of the namespace (device and inode of the nsfs file): two
    /// handles refer to the same namespace exactly when these are equal,
    /// whatever paths they were opened through.
    pub fn id(&self) -> Result<(u64, u64)> {
        let st = fstat(self.fd.as_fd()).map_err(|errno| Error::Netns {
            op: "stat",
            path: self.path.clone(),
            errno,
        })?;
        Ok((st.st_dev, st.st_ino))
    }

    /// Moves the calling thread into this namespace until the guard drops.
    ///
    /// Prefer [`run_in_netns`]; use this only when the work must happen on
    /// the current thread.
    pub fn enter(&self) -> Result<NetnsGuard> {
        let original = NetNs::current()?;
        setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|errno| Error::Netns {
            op: "enter",
            path: self.path.clone(),
            errno,
        })?;
        Ok(NetnsGuard {
            original,
            _thread_bound: PhantomData,
        })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Switches the thread back to its original namespace when dropped, including
/// while unwinding from a panic. Not `Send`: it must drop on the thread that
/// created it, since `setns` acts on the calling thread only.
#[must_use = "the thread switches back as soon as the guard is dropped"]
#[derive(Debug)]
pub struct NetnsGuard {
    original: NetNs,
    _thread_bound: PhantomData<*const ()>,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(errno) = setns(self.original.fd.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Carrying on would let this thread configure the wrong namespace
            // (and a drop cannot return an error), so stop the process.
            eprintln!(
                "fatal: cannot switch thread back to network namespace {:?}: {errno}",
                self.original.path
            );
            std::process::abort();
        }
    }
}

/// Runs `f` on a new thread that has joined `ns`, and returns its value.
///
/// The thread exits right after `f`, so nothing ever needs switching back and
/// no thread of the caller can be left in the pod namespace. `f` may borrow
/// from the caller. A panic in `f` is propagated to the caller. Sockets opened
/// inside `f` (see [`crate::netlink::RouteSocket::open_in`]) stay bound to
/// `ns` after the thread has gone.
pub fn run_in_netns<T, F>(ns: &NetNs, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("netns-worker".into())
            .spawn_scoped(scope, move || -> Result<T> {
                setns(ns.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|errno| Error::Netns {
                    op: "enter",
                    path: ns.path.clone(),
                    errno,
                })?;
                Ok(f())
            })
            .map_err(|source| Error::Spawn {
                op: "run in network namespace",
                program: "thread".into(),
                source,
            })?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn check_is_netns(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let st = fstatfs(fd).map_err(|errno| Error::Netns {
        op: "statfs",
        path: path.to_path_buf(),
        errno,
    })?;
    let magic = st.filesystem_type();
    // Kernels before 3.19 exposed namespace files on procfs itself.
    if magic != NSFS_MAGIC && magic != PROC_SUPER_MAGIC {
        return Err(Error::NotNetns {
            path: path.to_path_buf(),
            reason: format!("unknown FS magic {:#x}", magic.0),
        });
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the namespace
    // behind `fd`, which is a valid open descriptor borrowed for the duration
    // of the call; no memory is passed to the kernel.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
    if ret == -1 {
        let errno = Errno::last();
        // ENOTTY: a kernel older than 4.11 without the ioctl; the FS magic has
        // to be enough there (it is all the Go plugins check).
        if errno == Errno::ENOTTY {
            return Ok(());
        }
        return Err(Error::NotNetns {
            path: path.to_path_buf(),
            reason: format!("NS_GET_NSTYPE: {errno}"),
        });
    }
    if ret != libc::CLONE_NEWNET {
        return Err(Error::NotNetns {
            path: path.to_path_buf(),
            reason: format!("namespace type {ret:#x} is not CLONE_NEWNET"),
        });
    }
    Ok(())
}

fn io_errno(e: &io::Error) -> Errno {
    e.raw_os_error()
        .map(Errno::from_raw)
        .unwrap_or(Errno::UnknownErrno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_path_is_not_found() {
        let err = NetNs::open("/nonexistent/netns/x").unwrap_err();
        assert!(matches!(err, Error::NetnsNotFound { .. }), "{err}");
        assert!(err.is_not_found());
    }

    #[test]
    fn regular_file_is_not_a_namespace() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let err = NetNs::open(f.path()).unwrap_err();
        assert!(matches!(err, Error::NotNetns { .. }), "{err}");
        assert!(err.to_string().contains("unknown FS magic"), "{err}");
        assert!(!err.is_not_found());
    }

    #[test]
    fn other_namespace_type_is_rejected() {
        let err = NetNs::open("/proc/thread-self/ns/uts").unwrap_err();
        assert!(matches!(err, Error::NotNetns { .. }), "{err}");
    }

    #[test]
    fn current_namespace_opens_and_has_stable_identity() {
        let a = NetNs::current().unwrap();
        let b = NetNs::open("/proc/self/ns/net").unwrap();
        assert_eq!(a.id().unwrap(), b.id().unwrap());
        assert_eq!(a.path(), Path::new("/proc/thread-self/ns/net"));
    }

    #[test]
    fn run_in_netns_returns_value_and_propagates_panics() {
        let ns = NetNs::current().unwrap();
        let local = String::from("borrowed");
        let got = run_in_netns(&ns, || local.len()).unwrap();
        assert_eq!(got, 8);
        let caught = std::panic::catch_unwind(|| run_in_netns(&ns, || panic!("boom")));
        assert!(caught.is_err());
    }
}
