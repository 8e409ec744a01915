//! A blocking NETLINK_NETFILTER socket speaking to nf_tables: pipelined
//! lookups and dumps, and atomic batches with one ACK per message.
//!
//! The kernel handles a request inside our `send` (netlink delivers to the
//! kernel synchronously), so every answer to a datagram is queued before
//! `send` returns; the receive side only has to count them.
//!
//! Closing is the expensive part: releasing a NETLINK_NETFILTER socket runs
//! nf_tables' NETLINK_URELEASE notifier, which takes the namespace's commit
//! mutex and, holding it, flushes the pending transaction-destroy work; that
//! work sleeps in `synchronize_rcu()` whenever a recent commit (ours or
//! anyone's) deleted rules or updated chains: 5-30 ms here. Worse than the
//! wait itself is the mutex held through it: every device registered or
//! unregistered in the namespace takes that mutex from a netdev notifier
//! while holding RTNL (nf_tables_netdev_event), so a veth being created or
//! deleted stalls under RTNL, and every rtnetlink request of every pod
//! operation on the node queues behind it. [`NfnlSocket`]'s drop therefore
//! never releases the socket itself: after a commit that left destroy work,
//! a forked child waits out a grace period first, holding nothing, and then
//! releases it (see [`release_after_grace_period`]); otherwise the kernel's
//! unix-socket garbage collector releases it from a worker thread (see
//! [`release_in_background`]).

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP_INTR, NLM_F_REQUEST};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use nix::errno::Errno;

use super::nfnl_wire::{self as wire, Request};
use crate::error::{Error, Result};

/// Dumps are capped at 32 KiB per skb by the kernel; room for any datagram.
const RECV_BUF_LEN: usize = 64 * 1024;
/// A transaction with many deletions (GC) gets one ACK per message; each ACK
/// skb costs ~1 KiB of receive-buffer accounting, so the default 208 KiB
/// would overflow (ENOBUFS) around 200 messages.
const RCVBUF: libc::c_int = 4 << 20;
/// nft raises its send buffer the same way for large transactions.
const SNDBUF: libc::c_int = 4 << 20;
/// The kernel answers synchronously; this only bounds a protocol mistake
/// on our side (waiting for an answer that never comes).
const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// Restarts of a read exchange whose dump was flagged NLM_F_DUMP_INTR.
const DUMP_ATTEMPTS: u32 = 5;

/// The kernel's answer to one request of an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Answer {
    /// The object messages (one for a lookup, any number for a dump).
    Messages(Vec<OwnedMsg>),
    /// The kernel refused the request.
    Errno(Errno, Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OwnedMsg {
    pub msg_type: u16,
    pub payload: Vec<u8>,
}

/// An nf_tables socket bound to the network namespace it was opened in.
#[derive(Debug)]
pub(super) struct NfnlSocket {
    /// Taken out only in `drop`.
    socket: ManuallyDrop<Socket>,
    seq: u32,
    buf: Vec<u8>,
    /// Off only in tests measuring the plain close.
    background_release: bool,
    /// A transaction sent on this socket may have left work for nf_tables'
    /// deferred destroy (anything but a rule addition).
    destroy_pending: bool,
}

impl Drop for NfnlSocket {
    fn drop(&mut self) {
        // SAFETY: the field is taken exactly once, here, and not touched
        // afterwards.
        let socket = unsafe { ManuallyDrop::take(&mut self.socket) };
        match (self.background_release, self.destroy_pending) {
            (false, _) => drop(socket),
            (true, false) => release_in_background(socket),
            (true, true) => release_after_grace_period(socket),
        }
    }
}

/// `MEMBARRIER_CMD_GLOBAL` from `<linux/membarrier.h>`: returns after an RCU
/// grace period (`synchronize_rcu()`; EINVAL on nohz_full kernels).
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Releasers forked by this process and not yet reaped.
static RELEASERS: std::sync::Mutex<Vec<libc::pid_t>> = std::sync::Mutex::new(Vec::new());

/// Closes `socket` after a commit that left destroy work, without making
/// anyone wait for it.
///
/// A forked child keeps the socket, waits for an RCU grace period holding no
/// lock (membarrier), and exits: the destroy work queued by our commit has
/// slept through its own grace period by then, so the release notifier's
/// flush finds it done and the commit mutex is held only for an instant. The
/// child does nothing but system calls and is reaped by this process's next
/// release or, once the plugin has exited, by whoever inherits it. Without a
/// child, [`release_in_background`].
fn release_after_grace_period(socket: Socket) {
    let mut keep = [socket.as_raw_fd()];
    // SAFETY: the child runs only close_range, membarrier and _exit, system
    // calls on memory that exists before the fork (`keep`), as fork(2)
    // requires of children of a possibly multi-threaded process.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the forked child; see above.
        unsafe {
            crate::child::close_all_except(&mut keep);
            libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0);
            libc::_exit(0)
        }
    }
    if pid < 0 {
        release_in_background(socket);
        return;
    }
    // The child holds the socket now: this close is not the last one.
    drop(socket);
    let mut releasers = RELEASERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    releasers.retain(|&child| {
        // SAFETY: waitpid on our own child without blocking.
        unsafe { libc::waitpid(child, std::ptr::null_mut(), libc::WNOHANG) == 0 }
    });
    releasers.push(pid);
}

/// Closes `socket` without waiting for nf_tables' release notifier.
///
/// The socket is sent (SCM_RIGHTS) into a unix socket pair together with
/// the receiving end of the pair itself, and every descriptor is closed: the
/// receiving end is then referenced only from its own queue, an unreachable
/// cycle that the unix GC collects from a workqueue, where the netlink
/// release (and its wait) happens. Closing the sending end last schedules
/// that GC. Kernels before 6.10 run the GC inside that close, which makes
/// this as slow as a plain close but no slower; any failure falls back to a
/// plain close.
fn release_in_background(socket: Socket) {
    let mut pair = [-1 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into the 2-element array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    };
    if rc != 0 {
        drop(socket);
        return;
    }
    // SAFETY: both descriptors were just created and are owned by nobody
    // else.
    let (sender, receiver) =
        unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    if send_fds(
        sender.as_raw_fd(),
        &[socket.as_raw_fd(), receiver.as_raw_fd()],
    )
    .is_err()
    {
        drop(socket);
        return;
    }
    // Order matters: our own references must be gone before the GC runs,
    // or the GC drops only the in-flight one and the last close is ours.
    drop(socket);
    drop(receiver);
    drop(sender);
}

/// Sends one byte carrying `fds` as SCM_RIGHTS.
fn send_fds(via: RawFd, fds: &[RawFd; 2]) -> std::io::Result<()> {
    const FDS_LEN: usize = 2 * std::mem::size_of::<RawFd>();
    // CMSG_SPACE for two ints is at most 24 bytes on Linux ABIs (checked
    // below); u64 elements give the cmsghdr alignment.
    let mut control = [0u64; 4];
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(FDS_LEN as u32) } as usize;
    if space > std::mem::size_of_val(&control) {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points to `space` writable, aligned bytes, so
    // CMSG_FIRSTHDR returns a header inside them, and CMSG_DATA of that
    // header has room for FDS_LEN bytes (CMSG_SPACE accounted for them).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(FDS_LEN as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), FDS_LEN);
    }
    // SAFETY: msg and everything it points to live across the call.
    let rc = unsafe { libc::sendmsg(via, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if rc == 1 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl NfnlSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open(op: &'static str) -> Result<Self> {
        let sys = |e: std::io::Error| Error::Netlink {
            op,
            object: "NETLINK_NETFILTER socket".into(),
            errno: io_errno(&e),
            kernel_msg: None,
        };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(sys)?;
        socket.bind_auto().map_err(sys)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(sys)?;
        // Best effort: extended ACKs only add the kernel's error text, and
        // capping keeps our request out of the error messages.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        let fd = socket.as_raw_fd();
        // The FORCE variants ignore rmem_max/wmem_max (CAP_NET_ADMIN, which
        // nf_tables needs anyway); the plain ones are the fallback.
        if setsockopt_int(fd, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
            let _ = setsockopt_int(fd, libc::SO_RCVBUF, RCVBUF);
        }
        if setsockopt_int(fd, libc::SO_SNDBUFFORCE, SNDBUF).is_err() {
            let _ = setsockopt_int(fd, libc::SO_SNDBUF, SNDBUF);
        }
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as _,
            tv_usec: 0,
        };
        // SAFETY: fd is the open socket owned by `socket`; the option value
        // points to a timeval that lives across the call, with its size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(sys(std::io::Error::last_os_error()));
        }
        Ok(NfnlSocket {
            socket: ManuallyDrop::new(socket),
            // Any start works; a non-zero one keeps our numbers apart from
            // the kernel's unsolicited messages (seq 0).
            seq: 1,
            // Never zeroed: see `recv`.
            buf: Vec::with_capacity(RECV_BUF_LEN),
            background_release: true,
            destroy_pending: false,
        })
    }

    #[cfg(test)]
    pub fn set_background_release(&mut self, on: bool) {
        self.background_release = on;
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends read requests (lookups and at most one dump, last) in one
    /// datagram and returns one answer per request. A dump interrupted by a
    /// concurrent change is redone with the whole exchange.
    pub fn query(&mut self, op: &'static str, requests: &[Request]) -> Result<Vec<Answer>> {
        for _ in 0..DUMP_ATTEMPTS {
            let (answers, interrupted) = self.query_once(op, requests)?;
            if !interrupted {
                return Ok(answers);
            }
        }
        Err(Error::DumpInterrupted {
            op,
            object: requests
                .iter()
                .map(|r| r.what.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            attempts: DUMP_ATTEMPTS,
        })
    }

    fn query_once(
        &mut self,
        op: &'static str,
        requests: &[Request],
    ) -> Result<(Vec<Answer>, bool)> {
        let mut datagram = Vec::new();
        let mut pending: HashMap<u32, usize> = HashMap::new();
        for (i, r) in requests.iter().enumerate() {
            let seq = self.next_seq();
            // A dump ends with NLMSG_DONE; a lookup with its ACK.
            let ack = if r.is_dump() { 0 } else { NLM_F_ACK };
            wire::put_message(
                &mut datagram,
                subsys_type(r.msg_type),
                NLM_F_REQUEST | ack | r.flags,
                seq,
                &r.body,
            );
            pending.insert(seq, i);
        }
        self.send(op, &datagram, || describe(requests))?;
        let mut collected: Vec<Vec<OwnedMsg>> = vec![Vec::new(); requests.len()];
        let mut answers: Vec<Option<Answer>> = vec![None; requests.len()];
        let mut interrupted = false;
        while !pending.is_empty() {
            let len = self.recv(op, || describe(requests))?;
            for msg in wire::messages(&self.buf[..len]) {
                let msg = msg.map_err(|e| protocol(op, describe(requests), e))?;
                let Some(&i) = pending.get(&msg.seq) else {
                    continue;
                };
                if msg.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                let done = match msg.msg_type {
                    wire::NLMSG_ERROR => {
                        let (code, text) = wire::parse_error(&msg)
                            .map_err(|e| protocol(op, &requests[i].what, e))?;
                        answers[i] = Some(if code == 0 {
                            Answer::Messages(std::mem::take(&mut collected[i]))
                        } else {
                            Answer::Errno(Errno::from_raw(code), text)
                        });
                        true
                    }
                    wire::NLMSG_DONE => {
                        let code = wire::parse_done(&msg);
                        answers[i] = Some(if code == 0 {
                            Answer::Messages(std::mem::take(&mut collected[i]))
                        } else {
                            Answer::Errno(Errno::from_raw(code), None)
                        });
                        true
                    }
                    wire::NLMSG_NOOP => false,
                    wire::NLMSG_OVERRUN => {
                        return Err(protocol(op, &requests[i].what, "NLMSG_OVERRUN"))
                    }
                    _ => {
                        collected[i].push(OwnedMsg {
                            msg_type: msg.msg_type & 0xff,
                            payload: msg.payload.to_vec(),
                        });
                        false
                    }
                };
                if done {
                    pending.remove(&msg.seq);
                }
            }
        }
        let answers = answers
            .into_iter()
            .map(|a| a.unwrap_or(Answer::Messages(Vec::new())))
            .collect();
        Ok((answers, interrupted))
    }

    /// Applies `requests` as one nf_tables transaction: all or nothing.
    /// With `genid`, the kernel refuses the transaction with ERESTART if the
    /// ruleset changed since that generation was read.
    ///
    /// Every message asks for an ACK; the kernel queues all ACKs and errors
    /// once the batch is processed (after the commit), so a failure names
    /// the first message that failed.
    pub fn transact(
        &mut self,
        op: &'static str,
        requests: &[Request],
        genid: Option<u32>,
    ) -> Result<()> {
        if requests.is_empty() {
            return Ok(());
        }
        let mut datagram = Vec::new();
        let begin = self.next_seq();
        wire::put_message(
            &mut datagram,
            wire::NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin,
            &wire::batch_marker_body(genid),
        );
        let mut pending: HashMap<u32, usize> = HashMap::new();
        for (i, r) in requests.iter().enumerate() {
            let seq = self.next_seq();
            wire::put_message(
                &mut datagram,
                subsys_type(r.msg_type),
                NLM_F_REQUEST | NLM_F_ACK | r.flags,
                seq,
                &r.body,
            );
            pending.insert(seq, i);
        }
        let end = self.next_seq();
        wire::put_message(
            &mut datagram,
            wire::NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end,
            &wire::batch_marker_body(None),
        );
        let transaction = || format!("transaction of {} messages", requests.len());
        // Rule additions are freed inline by the commit; everything else (a
        // deletion, a chain or table update) waits for the deferred destroy.
        // Set before sending: the commit may happen although we fail later.
        self.destroy_pending |= requests.iter().any(|r| r.msg_type != wire::NFT_MSG_NEWRULE);
        self.send(op, &datagram, transaction)?;
        // (message index, errno, text) of every refused message.
        let mut failures: Vec<(usize, Errno, Option<String>)> = Vec::new();
        while !pending.is_empty() {
            let len = self.recv(op, transaction)?;
            for msg in wire::messages(&self.buf[..len]) {
                let msg = msg.map_err(|e| protocol(op, transaction(), e))?;
                if msg.msg_type != wire::NLMSG_ERROR {
                    continue;
                }
                if msg.seq == begin || msg.seq == end {
                    // The batch as a whole: a stale genid (ERESTART), a
                    // failed commit, or the kernel out of memory. Per-message
                    // ACKs, if any, say nothing more.
                    let (code, text) =
                        wire::parse_error(&msg).map_err(|e| protocol(op, transaction(), e))?;
                    if code != 0 {
                        return Err(kernel_error(op, transaction(), code, text));
                    }
                    continue;
                }
                let Some(i) = pending.remove(&msg.seq) else {
                    continue;
                };
                let (code, text) =
                    wire::parse_error(&msg).map_err(|e| protocol(op, &requests[i].what, e))?;
                if code != 0 {
                    failures.push((i, Errno::from_raw(code), text));
                }
            }
        }
        // The kernel keeps processing after a refused message, and later
        // ones may fail only as a consequence; report the first.
        match failures.into_iter().min_by_key(|f| f.0) {
            None => Ok(()),
            Some((i, errno, text)) => Err(Error::Netlink {
                op,
                object: requests[i].what.clone(),
                errno,
                kernel_msg: text,
            }),
        }
    }

    fn send(&self, op: &'static str, datagram: &[u8], what: impl Fn() -> String) -> Result<()> {
        loop {
            match self.socket.send(datagram, 0) {
                Ok(n) if n == datagram.len() => return Ok(()),
                Ok(n) => {
                    return Err(protocol(
                        op,
                        what(),
                        format!("sent {n} of {} bytes", datagram.len()),
                    ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(kernel_error(op, what(), io_errno(&e) as i32, None)),
            }
        }
    }

    /// One datagram into `self.buf`. ENOBUFS (answers dropped because the
    /// receive queue overflowed) is returned as such: for a transaction the
    /// outcome is then unknown and the caller re-reads the ruleset.
    fn recv(&mut self, op: &'static str, what: impl Fn() -> String) -> Result<usize> {
        loop {
            // recv writes into the spare capacity and sets the length: only the pages a
            // reply lands in are ever touched.
            self.buf.clear();
            match self.socket.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(n) if n > RECV_BUF_LEN => {
                    return Err(protocol(
                        op,
                        what(),
                        format!("reply of {n} bytes truncated"),
                    ))
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(io_errno(&e), Errno::EAGAIN) => {
                    return Err(protocol(
                        op,
                        what(),
                        format!("no answer from the kernel within {RECV_TIMEOUT:?}"),
                    ))
                }
                Err(e) => return Err(kernel_error(op, what(), io_errno(&e) as i32, None)),
            }
        }
    }
}

/// Parses a lookup answer that may legitimately be ENOENT.
pub(super) fn exists(op: &'static str, request: &Request, answer: &Answer) -> Result<bool> {
    match answer {
        Answer::Messages(_) => Ok(true),
        Answer::Errno(Errno::ENOENT, _) => Ok(false),
        Answer::Errno(errno, text) => Err(Error::Netlink {
            op,
            object: request.what.clone(),
            errno: *errno,
            kernel_msg: text.clone(),
        }),
    }
}

/// The messages of an answer, or the kernel's refusal as an error.
pub(super) fn messages<'a>(
    op: &'static str,
    request: &Request,
    answer: &'a Answer,
) -> Result<&'a [OwnedMsg]> {
    match answer {
        Answer::Messages(m) => Ok(m),
        Answer::Errno(errno, text) => Err(Error::Netlink {
            op,
            object: request.what.clone(),
            errno: *errno,
            kernel_msg: text.clone(),
        }),
    }
}

/// Decodes the rules of a dump answer.
pub(super) fn rules(
    op: &'static str,
    request: &Request,
    answer: &Answer,
) -> Result<Vec<wire::Rule>> {
    messages(op, request, answer)?
        .iter()
        .filter(|m| m.msg_type == wire::NFT_MSG_NEWRULE)
        .map(|m| wire::parse_rule(&m.payload).map_err(|e| protocol(op, &request.what, e)))
        .collect()
}

/// The generation id of a GETGEN answer.
pub(super) fn genid(op: &'static str, request: &Request, answer: &Answer) -> Result<u32> {
    let msgs = messages(op, request, answer)?;
    let gen = msgs
        .iter()
        .find(|m| m.msg_type == wire::NFT_MSG_NEWGEN)
        .ok_or_else(|| protocol(op, &request.what, "no NFT_MSG_NEWGEN in reply"))?;
    wire::parse_gen(&gen.payload).map_err(|e| protocol(op, &request.what, e))
}

fn subsys_type(msg_type: u16) -> u16 {
    (wire::NFNL_SUBSYS_NFTABLES << 8) | msg_type
}

fn describe(requests: &[Request]) -> String {
    requests
        .iter()
        .map(|r| r.what.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn protocol(op: &'static str, object: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Protocol {
        op,
        object: object.into(),
        reason: reason.into(),
    }
}

fn kernel_error(op: &'static str, object: String, code: i32, text: Option<String>) -> Error {
    Error::Netlink {
        op,
        object,
        errno: Errno::from_raw(code),
        kernel_msg: text,
    }
}

fn setsockopt_int(fd: libc::c_int, opt: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
    // SAFETY: fd is an open socket for the duration of the call and the
    // option value is a c_int on our stack, passed with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::nfnl_wire::*;
    use super::*;

    /// NETLINK_NETFILTER sockets of the calling thread's namespace.
    fn nfnl_sockets() -> usize {
        std::fs::read_to_string("/proc/thread-self/net/netlink")
            .unwrap()
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("12"))
            .count()
    }

    /// A commit that leaves work for nf_tables' deferred destroy (a rule
    /// deletion), then the socket's release.
    fn commit_and_drop(background: bool) -> Duration {
        let mut s = NfnlSocket::open("test").unwrap();
        let goto = [Expr::Verdict(Verdict::Accept)];
        s.transact(
            "test",
            &[
                new_table(NFPROTO_INET, "t", None),
                new_chain(NFPROTO_INET, "t", "c", None, None),
                new_rule(NFPROTO_INET, "t", "c", &goto, None),
            ],
            None,
        )
        .unwrap();
        s.transact("test", &[flush_chain(NFPROTO_INET, "t", "c")], None)
            .unwrap();
        s.set_background_release(background);
        let start = Instant::now();
        drop(s);
        start.elapsed()
    }

    #[test]
    fn background_release_frees_the_socket_without_waiting() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let baseline = nfnl_sockets();
        let plain: Duration = (0..5).map(|_| commit_and_drop(false)).sum();
        let background: Duration = (0..5).map(|_| commit_and_drop(true)).sum();
        eprintln!(
            "release after a deleting commit: plain close {:?}, background {:?}",
            plain / 5,
            background / 5
        );
        // The kernel's GC worker releases the handed-off sockets shortly.
        let deadline = Instant::now() + Duration::from_secs(5);
        while nfnl_sockets() > baseline && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(nfnl_sockets(), baseline, "handed-off sockets leaked");
    }

    fn releasers() -> Vec<libc::pid_t> {
        RELEASERS.lock().unwrap().clone()
    }

    #[test]
    fn only_commits_that_leave_destroy_work_fork_a_releaser() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut s = NfnlSocket::open("test").unwrap();
        s.transact("test", &[new_table(NFPROTO_INET, "t", None)], None)
            .unwrap();
        s.transact(
            "test",
            &[new_chain(NFPROTO_INET, "t", "c", None, None)],
            None,
        )
        .unwrap();
        assert!(
            s.destroy_pending,
            "a table or chain message may be an update"
        );
        let mut s = NfnlSocket::open("test").unwrap();
        let accept = [Expr::Verdict(Verdict::Accept)];
        s.transact(
            "test",
            &[new_rule(NFPROTO_INET, "t", "c", &accept, None)],
            None,
        )
        .unwrap();
        assert!(!s.destroy_pending, "rule additions are freed by the commit");
        s.transact("test", &[flush_chain(NFPROTO_INET, "t", "c")], None)
            .unwrap();
        assert!(s.destroy_pending);
    }

    #[test]
    fn releasers_are_reaped_by_the_next_release() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let before = releasers();
        for _ in 0..3 {
            commit_and_drop(true);
        }
        let ours: Vec<libc::pid_t> = releasers()
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        assert!(!ours.is_empty(), "no releaser was forked");
        // Each exits after one grace period and stays a zombie until reaped.
        let zombie = |pid: libc::pid_t| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ours.iter().all(|p| zombie(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        commit_and_drop(true);
        let now = releasers();
        for pid in ours {
            assert!(!now.contains(&pid), "releaser {pid} not reaped");
            assert!(
                !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "releaser {pid} left a zombie"
            );
        }
    }

    #[test]
    fn lookups_of_missing_objects_answer_enoent() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut s = NfnlSocket::open("test").unwrap();
        let reqs = [
            get_chain(NFPROTO_IPV4, "nat", "CNI-x"),
            get_gen(),
            dump_rules(NFPROTO_INET, "absent", None),
        ];
        let answers = s.query("test", &reqs).unwrap();
        assert!(!exists("test", &reqs[0], &answers[0]).unwrap());
        assert!(genid("test", &reqs[1], &answers[1]).unwrap() > 0);
        assert!(rules("test", &reqs[2], &answers[2]).unwrap().is_empty());
        // A refused transaction names the message that failed.
        let err = s
            .transact("test", &[del_rule(NFPROTO_INET, "absent", "c", 1)], None)
            .unwrap_err();
        assert_eq!(err.errno(), Some(Errno::ENOENT), "{err}");
        assert!(
            err.to_string()
                .starts_with("test rule handle 1 in chain inet absent c: ENOENT"),
            "{err}"
        );
        // A stale generation is refused as a whole.
        let gen = genid("test", &reqs[1], &answers[1]).unwrap();
        s.transact("test", &[new_table(NFPROTO_INET, "t", None)], Some(gen))
            .unwrap();
        let err = s
            .transact("test", &[new_table(NFPROTO_INET, "u", None)], Some(gen))
            .unwrap_err();
        assert_eq!(err.errno(), Some(Errno::ERESTART), "{err}");
        // The socket is still usable after errors.
        s.transact("test", &[new_table(NFPROTO_INET, "u", None)], None)
            .unwrap();
    }
}
