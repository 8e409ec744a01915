//! Link deletion finished by a child process, so the caller can move on once the link has
//! left its namespace.
//!
//! Why: `RTM_DELLINK` of a veth returns only when the kernel has finished with the pair.
//! Unlisting it from the namespace comes early; after that the request still sleeps in
//! RCU (`synchronize_net` under RTNL, then `rcu_barrier` and the wait for the last
//! references in `netdev_run_todo`): 10-20 ms here, most of a DEL, although nothing
//! user-visible is left. A forked child sends the request on the caller's socket and
//! reports the kernel's answer through a pipe; the caller watches the namespace (another
//! socket) and, once the link is gone, need not wait for that answer. The child lives on
//! for the rest of the kernel's work and is reaped by whoever inherits it. Before the
//! link is gone, an error is still the caller's to report ([`PendingDelete::wait`]).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use super::socket::Ctx;
use crate::error::Result;

/// `NLMSG_ERROR` from `<linux/netlink.h>`.
const NLMSG_ERROR: u16 = 2;
/// Written by the child when it could not get an answer at all.
const NO_ANSWER: i32 = i32::MIN;

/// A link deletion that may still be running in a child process.
#[derive(Debug)]
pub struct PendingDelete {
    state: State,
}

#[derive(Debug)]
enum State {
    Done(Option<Result<()>>),
    Child {
        pid: libc::pid_t,
        answer: OwnedFd,
        ctx: Ctx,
    },
}

impl PendingDelete {
    /// An already finished deletion (fakes, or no child could be made).
    pub fn done(result: Result<()>) -> Self {
        PendingDelete {
            state: State::Done(Some(result)),
        }
    }

    /// The kernel's answer if it has come, without waiting.
    pub fn poll(&mut self) -> Option<Result<()>> {
        match &mut self.state {
            State::Done(result) => result.take(),
            State::Child { answer, .. } => {
                let mut fds = [libc::pollfd {
                    fd: answer.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                // SAFETY: one valid pollfd, length 1, no timeout.
                let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
                if ready > 0 {
                    Some(self.read_answer())
                } else {
                    None
                }
            }
        }
    }

    /// Waits for the kernel's answer.
    pub fn wait(mut self) -> Result<()> {
        match &mut self.state {
            State::Done(result) => result
                .take()
                .unwrap_or_else(|| Err(Ctx::new("delete", "link").protocol("answer taken twice"))),
            State::Child { .. } => self.read_answer(),
        }
    }

    fn read_answer(&mut self) -> Result<()> {
        let State::Child { pid, answer, ctx } =
            std::mem::replace(&mut self.state, State::Done(None))
        else {
            return Ok(());
        };
        let mut code = [0u8; 4];
        let n = loop {
            // SAFETY: reads at most 4 bytes into a 4-byte buffer from an fd we own.
            let n = unsafe { libc::read(answer.as_raw_fd(), code.as_mut_ptr().cast(), 4) };
            if n < 0 && Errno::last() == Errno::EINTR {
                continue;
            }
            break n;
        };
        // The child has written its last byte (or died): reap it.
        // SAFETY: waitpid on our own child; a null status pointer is allowed.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        match (n, i32::from_ne_bytes(code)) {
            (4, 0) => Ok(()),
            (4, errno) if errno > 0 => Err(ctx.errno(Errno::from_raw(errno), None)),
            _ => Err(ctx.protocol("the process deleting the link got no answer from the kernel")),
        }
    }
}

impl Drop for PendingDelete {
    /// Not waited for: the child finishes on its own; reaped here if already done, else
    /// by the process that inherits it when this one exits.
    fn drop(&mut self) {
        if let State::Child { pid, .. } = self.state {
            // SAFETY: waitpid on our own child without blocking.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        }
    }
}

/// Sends `request` (an encoded RTM_DELLINK with NLM_F_ACK and sequence `seq`) on `socket`
/// from a forked child; see the module doc. Falls back to `sync` when no child can be made.
pub(crate) fn delete_in_child(
    socket: RawFd,
    request: &[u8],
    seq: u32,
    ctx: Ctx,
    sync: impl FnOnce() -> Result<()>,
) -> PendingDelete {
    let mut pipe = [-1 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the 2-element array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return PendingDelete::done(sync());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (answer, report) =
        unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    // Allocated before the fork: the child must not allocate (another thread of ours may
    // hold the allocator's lock at the instant of the fork, forever in the child).
    let mut buf = vec![0u8; 8192];
    // SAFETY: the child runs only async-signal-safe system calls on memory that exists
    // before the fork (request, buf) and ends in _exit, as fork(2) requires of children of
    // a multi-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return PendingDelete::done(sync());
    }
    if pid == 0 {
        // SAFETY: see above; the child never returns from here.
        unsafe { child(socket, report.as_raw_fd(), request, seq, &mut buf) }
    }
    drop(report);
    PendingDelete {
        state: State::Child { pid, answer, ctx },
    }
}

/// The child: keep only the socket and the pipe (the runtime must see EOF on our stdout
/// when the parent exits, and no lock file may stay locked by us), send, read the ACK,
/// report its errno, exit.
///
/// # Safety
/// Only in the child of `fork`; uses system calls only.
unsafe fn child(socket: RawFd, report: RawFd, request: &[u8], seq: u32, buf: &mut [u8]) -> ! {
    crate::child::close_all_except(&mut [socket, report]);
    let code = exchange(socket, request, seq, buf);
    let bytes = code.to_ne_bytes();
    libc::write(report, bytes.as_ptr().cast(), bytes.len());
    libc::_exit(0)
}

/// The errno of the kernel's ACK to `seq` (0: success), or [`NO_ANSWER`].
unsafe fn exchange(socket: RawFd, request: &[u8], seq: u32, buf: &mut [u8]) -> i32 {
    loop {
        let n = libc::send(socket, request.as_ptr().cast(), request.len(), 0);
        if n >= 0 {
            break;
        }
        if Errno::last() != Errno::EINTR {
            return NO_ANSWER;
        }
    }
    loop {
        let n = libc::recv(socket, buf.as_mut_ptr().cast(), buf.len(), 0);
        if n < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            return NO_ANSWER;
        }
        if let Some(code) = ack_errno(&buf[..n as usize], seq) {
            return code;
        }
    }
}

/// Finds the NLMSG_ERROR for `seq` in a datagram: its (positive) errno, 0 for an ACK.
fn ack_errno(datagram: &[u8], seq: u32) -> Option<i32> {
    let mut rest = datagram;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(rest[4..6].try_into().ok()?);
        let msg_seq = u32::from_ne_bytes(rest[8..12].try_into().ok()?);
        if len < 16 || len > rest.len() {
            return None;
        }
        if kind == NLMSG_ERROR && msg_seq == seq && len >= 20 {
            let error = i32::from_ne_bytes(rest[16..20].try_into().ok()?);
            return Some(-error);
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        rest = rest.get(next..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut m = Vec::new();
        m.extend((len as u32).to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend(0u16.to_ne_bytes());
        m.extend(seq.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    #[test]
    fn the_ack_for_our_sequence_number_is_found() {
        let mut d = message(16, 7, &[0; 8]);
        d.extend(message(NLMSG_ERROR, 6, &(-19i32).to_ne_bytes()));
        d.extend(message(NLMSG_ERROR, 7, &(-19i32).to_ne_bytes()));
        assert_eq!(ack_errno(&d, 7), Some(19));
        assert_eq!(
            ack_errno(&message(NLMSG_ERROR, 7, &0i32.to_ne_bytes()), 7),
            Some(0)
        );
        assert_eq!(
            ack_errno(&message(NLMSG_ERROR, 8, &0i32.to_ne_bytes()), 7),
            None
        );
        assert_eq!(ack_errno(&[1, 2, 3], 7), None);
        let mut bad = message(NLMSG_ERROR, 7, &0i32.to_ne_bytes());
        bad[0] = 200;
        assert_eq!(ack_errno(&bad, 7), None);
    }

    #[test]
    fn a_finished_deletion_answers_once() {
        let mut p = PendingDelete::done(Ok(()));
        assert!(matches!(p.poll(), Some(Ok(()))));
        assert!(p.poll().is_none());
    }
}
