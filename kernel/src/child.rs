//! What the children this crate forks have in common. They finish kernel work after the
//! plugin has answered (see `netlink::detached` and `firewall::nfnl_socket`), so they must
//! not keep anything of the plugin's: the runtime reads the plugin's stdout until EOF, and
//! host-local's lock is held through an open descriptor.

use std::os::fd::RawFd;

/// Closes every descriptor of the calling process except those in `keep`.
///
/// # Safety
/// Only in the child of `fork`, where no other code owns the descriptors any more; it
/// makes only system calls and sorts `keep` in place (no allocation).
pub(crate) unsafe fn close_all_except(keep: &mut [RawFd]) {
    keep.sort_unstable();
    let mut from: RawFd = 0;
    for &fd in keep.iter() {
        if fd > from {
            close_range(from, fd - 1);
        }
        from = from.max(fd.saturating_add(1));
    }
    close_range(from, RawFd::MAX);
}

/// `close_range(2)`: a single system call, whatever the number of open descriptors.
unsafe fn close_range(from: RawFd, to: RawFd) {
    libc::syscall(
        libc::SYS_close_range,
        from as libc::c_uint,
        to as libc::c_uint,
        0 as libc::c_uint,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn only_the_kept_descriptors_survive() {
        let files: Vec<std::fs::File> = (0..4)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let fds: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: fork in a test; the child makes only system calls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut keep = [fds[2], fds[0]];
            // SAFETY: we are the forked child.
            unsafe { close_all_except(&mut keep) };
            let open = |fd: RawFd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
            let ok = open(fds[0]) && open(fds[2]) && !open(fds[1]) && !open(fds[3]) && !open(0);
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
