//! A blocking NETLINK_ROUTE socket: request/ACK and dump exchanges with
//! sequence checking, multi-part replies, extended-ACK messages and retry of
//! interrupted dumps.

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_ACK_TLVS,
    NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::errno::Errno;
use std::os::fd::AsRawFd;

use crate::error::{Error, Result};
use crate::netns::{run_in_netns, NetNs};

/// Large enough for any rtnetlink datagram the kernel builds: dump skbs are
/// capped at 32 KiB plus headers, and one link message with VF info can come
/// close to that.
const RECV_BUF_LEN: usize = 64 * 1024;

/// How often a dump flagged NLM_F_DUMP_INTR is restarted before giving up.
/// The Go plugins (netlinksafe) use the same budget.
const DUMP_ATTEMPTS: u32 = 5;

/// `NLMSGERR_ATTR_MSG` from `<linux/netlink.h>`.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// What an exchange is about, for error messages.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub op: &'static str,
    pub object: String,
}

impl Ctx {
    pub fn new(op: &'static str, object: impl Into<String>) -> Self {
        Ctx {
            op,
            object: object.into(),
        }
    }

    pub fn protocol(&self, reason: impl Into<String>) -> Error {
        Error::Protocol {
            op: self.op,
            object: self.object.clone(),
            reason: reason.into(),
        }
    }

    pub fn errno(&self, errno: Errno, kernel_msg: Option<String>) -> Error {
        Error::Netlink {
            op: self.op,
            object: self.object.clone(),
            errno,
            kernel_msg,
        }
    }
}

/// A route-family netlink socket, bound to the network namespace it was
/// created in for its whole life (whichever thread later uses it).
#[derive(Debug)]
pub struct RouteSocket {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl RouteSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let ctx = Ctx::new("open", "NETLINK_ROUTE socket");
        let sys = |e: std::io::Error| ctx.errno(io_errno(&e), None);
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(sys)?;
        socket.bind_auto().map_err(sys)?;
        // Only the kernel may talk to us.
        socket.connect(&SocketAddr::new(0, 0)).map_err(sys)?;
        // Strict checking (4.20+) makes the kernel filter dumps by the
        // ifindex/table we put in the request instead of returning
        // everything; older kernels refuse the option and we filter ourselves.
        let _ = socket.set_netlink_get_strict_chk(true);
        // Extended ACKs carry the kernel's own error text ("Unknown device
        // type", ...), and capping keeps the echoed request out of errors.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(RouteSocket {
            socket,
            seq: 0,
            // Never zeroed: recv writes into the spare capacity and sets the length, so
            // only the pages a reply lands in are ever touched (peak RSS).
            buf: Vec::with_capacity(RECV_BUF_LEN),
        })
    }

    /// Opens a socket inside `ns`. The socket is created on a short-lived
    /// thread that has joined `ns`; it stays bound to `ns` afterwards.
    pub fn open_in(ns: &NetNs) -> Result<Self> {
        run_in_netns(ns, Self::open)?
    }

    /// Sends a request that changes or fetches one object and waits for the
    /// kernel's ACK. Returns the reply messages seen before the ACK.
    pub(crate) fn request(
        &mut self,
        ctx: &Ctx,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(ctx, msg, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        self.receive(ctx, seq, false).map(|(msgs, _)| msgs)
    }

    /// Runs a dump, restarting it when the kernel flags it as interrupted by
    /// concurrent changes (the results would be inconsistent).
    pub(crate) fn dump(
        &mut self,
        ctx: &Ctx,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        for _ in 0..DUMP_ATTEMPTS {
            let seq = self.send(ctx, msg.clone(), NLM_F_REQUEST | NLM_F_DUMP)?;
            let (msgs, interrupted) = self.receive(ctx, seq, true)?;
            if !interrupted {
                return Ok(msgs);
            }
        }
        Err(Error::DumpInterrupted {
            op: ctx.op,
            object: ctx.object.clone(),
            attempts: DUMP_ATTEMPTS,
        })
    }

    /// A request with NLM_F_ACK encoded under the next sequence number, for a sender other
    /// than [`Self::request`] (see `detached`): the raw socket, the number, the bytes.
    pub(crate) fn prepare(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> (std::os::fd::RawFd, u32, Vec<u8>) {
        self.seq = self.seq.wrapping_add(1);
        let packet = encode(msg, NLM_F_REQUEST | NLM_F_ACK | flags, self.seq);
        (self.socket.as_raw_fd(), self.seq, packet)
    }

    fn send(&mut self, ctx: &Ctx, msg: RouteNetlinkMessage, flags: u16) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let packet = encode(msg, flags, self.seq);
        loop {
            match self.socket.send(&packet, 0) {
                Ok(_) => return Ok(self.seq),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ctx.errno(io_errno(&e), None)),
            }
        }
    }

    /// Reads datagrams until the exchange numbered `seq` is complete.
    fn receive(
        &mut self,
        ctx: &Ctx,
        seq: u32,
        is_dump: bool,
    ) -> Result<(Vec<RouteNetlinkMessage>, bool)> {
        let mut reply = Reply::default();
        loop {
            let len = loop {
                self.buf.clear();
                match self.socket.recv(&mut self.buf, libc::MSG_TRUNC) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(ctx.errno(io_errno(&e), None)),
                }
            };
            if len > self.buf.len() {
                return Err(ctx.protocol(format!("reply of {len} bytes truncated")));
            }
            if reply.absorb(ctx, &self.buf[..len], seq, is_dump)? {
                return Ok((reply.messages, reply.interrupted));
            }
        }
    }
}

/// Replies collected so far for one exchange.
#[derive(Debug, Default)]
struct Reply {
    messages: Vec<RouteNetlinkMessage>,
    /// Some part of a dump carried NLM_F_DUMP_INTR.
    interrupted: bool,
}

impl Reply {
    /// Consumes one datagram (possibly several netlink messages) and says
    /// whether the exchange is complete: the ACK or error of a request, or
    /// NLMSG_DONE of a dump. Messages with another sequence number are
    /// leftovers of an exchange abandoned on error, and are skipped.
    fn absorb(&mut self, ctx: &Ctx, datagram: &[u8], seq: u32, is_dump: bool) -> Result<bool> {
        let mut offset = 0;
        while offset < datagram.len() {
            let chunk = &datagram[offset..];
            let msg_len = NetlinkBuffer::new_checked(chunk)
                .map_err(|e| ctx.protocol(e.to_string()))?
                .length() as usize;
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&chunk[..msg_len])
                .map_err(|e| ctx.protocol(e.to_string()))?;
            offset += (msg_len + 3) & !3;
            if msg.header.sequence_number != seq {
                continue;
            }
            if msg.header.flags & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            match msg.payload {
                NetlinkPayload::InnerMessage(inner) => self.messages.push(inner),
                NetlinkPayload::Error(err) => match err.code {
                    None => return Ok(true),
                    Some(code) => {
                        let text = ext_ack_message(msg.header.flags, &err.header, true);
                        return Err(ctx.errno(Errno::from_raw(-code.get()), text));
                    }
                },
                NetlinkPayload::Done(done) => {
                    if done.code != 0 {
                        let text = ext_ack_message(msg.header.flags, &done.extended_ack, false);
                        return Err(ctx.errno(Errno::from_raw(-done.code), text));
                    }
                    if is_dump {
                        return Ok(true);
                    }
                }
                NetlinkPayload::Noop => {}
                NetlinkPayload::Overrun(_) => return Err(ctx.protocol("NLMSG_OVERRUN")),
                _ => return Err(ctx.protocol("unknown netlink payload")),
            }
        }
        Ok(false)
    }
}

/// Serialises one request.
pub(crate) fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    bytes
}

/// Extracts NLMSGERR_ATTR_MSG from an error or DONE payload.
///
/// For NLMSG_ERROR the TLVs follow the echoed request, which is only its
/// 16-byte header when the kernel honoured NETLINK_CAP_ACK (NLM_F_CAPPED),
/// else the whole request. For NLMSG_DONE they follow the error code directly.
fn ext_ack_message(flags: u16, payload: &[u8], after_request: bool) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let mut tlvs = payload;
    if after_request {
        let skip = if flags & NLM_F_CAPPED != 0 {
            16
        } else {
            let len = u32::from_ne_bytes(payload.get(..4)?.try_into().ok()?) as usize;
            (len + 3) & !3
        };
        tlvs = payload.get(skip..)?;
    }
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &tlvs[4..len];
            let text = text.split(|&b| b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        tlvs = tlvs.get((len + 3) & !3..).unwrap_or_default();
    }
    None
}

fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NLM_F_MULTIPART;
    use netlink_packet_route::link::LinkMessage;

    fn tlv(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn ext_ack_text_after_capped_request() {
        let mut payload = vec![0u8; 16];
        payload.extend(tlv(2, &[1, 2, 3, 4]));
        payload.extend(tlv(NLMSGERR_ATTR_MSG, b"Unknown device type\0"));
        let got = ext_ack_message(NLM_F_ACK_TLVS | NLM_F_CAPPED, &payload, true);
        assert_eq!(got.as_deref(), Some("Unknown device type"));
        assert_eq!(ext_ack_message(0, &payload, true), None);
    }

    #[test]
    fn ext_ack_text_after_full_request_and_in_done() {
        let mut payload = 24u32.to_ne_bytes().to_vec();
        payload.resize(24, 0);
        payload.extend(tlv(NLMSGERR_ATTR_MSG, b"boom\0"));
        assert_eq!(
            ext_ack_message(NLM_F_ACK_TLVS, &payload, true).as_deref(),
            Some("boom")
        );
        let done = tlv(NLMSGERR_ATTR_MSG, b"dump failed\0");
        assert_eq!(
            ext_ack_message(NLM_F_ACK_TLVS, &done, false).as_deref(),
            Some("dump failed")
        );
        // A malformed TLV length must not panic.
        assert_eq!(
            ext_ack_message(NLM_F_ACK_TLVS, &[200, 0, 1, 0], false),
            None
        );
    }

    /// A kernel message as it arrives: header fields set by hand.
    fn kernel_msg(payload: NetlinkPayload<RouteNetlinkMessage>, seq: u32, flags: u16) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        header.flags = flags;
        let mut m = NetlinkMessage::new(header, payload);
        m.finalize();
        let mut b = vec![0; m.buffer_len()];
        m.serialize(&mut b);
        b
    }

    fn link_payload(index: u32) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut l = LinkMessage::default();
        l.header.index = index;
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l))
    }

    fn error_payload(code: i32) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut e = netlink_packet_core::ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(code);
        e.header = vec![0; 16];
        NetlinkPayload::Error(e)
    }

    fn done_payload(code: i32) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut d = netlink_packet_core::DoneMessage::default();
        d.code = code;
        NetlinkPayload::Done(d)
    }

    #[test]
    fn multipart_dump_skips_stale_sequence_numbers() {
        let ctx = Ctx::new("list", "links");
        let mut reply = Reply::default();
        let mut first = kernel_msg(link_payload(1), 7, NLM_F_MULTIPART);
        first.extend(kernel_msg(link_payload(99), 6, NLM_F_MULTIPART));
        first.extend(kernel_msg(link_payload(2), 7, NLM_F_MULTIPART));
        assert!(!reply.absorb(&ctx, &first, 7, true).unwrap());
        let done = kernel_msg(done_payload(0), 7, NLM_F_MULTIPART);
        assert!(reply.absorb(&ctx, &done, 7, true).unwrap());
        let indexes: Vec<u32> = reply
            .messages
            .iter()
            .map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => l.header.index,
                _ => 0,
            })
            .collect();
        assert_eq!(indexes, vec![1, 2]);
        assert!(!reply.interrupted);
    }

    #[test]
    fn dump_interruption_is_reported() {
        let ctx = Ctx::new("list", "routes");
        let mut reply = Reply::default();
        let mut d = kernel_msg(link_payload(1), 3, NLM_F_MULTIPART | NLM_F_DUMP_INTR);
        d.extend(kernel_msg(
            done_payload(0),
            3,
            NLM_F_MULTIPART | NLM_F_DUMP_INTR,
        ));
        assert!(reply.absorb(&ctx, &d, 3, true).unwrap());
        assert!(reply.interrupted);
    }

    #[test]
    fn ack_and_errors_end_a_request() {
        let ctx = Ctx::new("create bridge", "link \"br0\"");
        let mut reply = Reply::default();
        let mut d = kernel_msg(link_payload(4), 9, 0);
        d.extend(kernel_msg(error_payload(0), 9, 0));
        assert!(reply.absorb(&ctx, &d, 9, false).unwrap());
        assert_eq!(reply.messages.len(), 1);

        // A stale error for an older request is ignored, ours is returned.
        let mut d = kernel_msg(error_payload(-libc::ENODEV), 8, 0);
        d.extend(kernel_msg(error_payload(-libc::EEXIST), 9, 0));
        let err = Reply::default().absorb(&ctx, &d, 9, false).unwrap_err();
        assert!(err.is_exists(), "{err}");
        assert!(
            err.to_string()
                .starts_with("create bridge link \"br0\": EEXIST"),
            "{err}"
        );

        // A dump can fail in its DONE message.
        let d = kernel_msg(done_payload(-libc::EINTR), 2, NLM_F_MULTIPART);
        let err = Reply::default().absorb(&ctx, &d, 2, true).unwrap_err();
        assert_eq!(err.errno(), Some(Errno::EINTR));

        // Garbage is a protocol error, not a panic.
        let err = Reply::default()
            .absorb(&ctx, &[1, 2, 3], 2, true)
            .unwrap_err();
        assert!(matches!(err, Error::Protocol { .. }), "{err}");
    }

    #[test]
    fn encode_sets_header() {
        let bytes = encode(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
            7,
        );
        let buf = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(buf.length() as usize, bytes.len());
        assert_eq!(buf.message_type(), 18); // RTM_GETLINK
        assert_eq!(buf.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(buf.sequence_number(), 7);
    }
}
