//! nf_tables over netlink, the bytes: encoding of the few requests the
//! firewall sends (tables, chains, rules and their expressions, in one
//! nfnetlink batch) and decoding of the kernel's replies and rule dumps.
//!
//! Expressions are encoded the way nft 1.0.x linearises the equivalent nft
//! syntax, attribute order included, so `nft list ruleset` (and `nft
//! --debug=netlink`) cannot tell our rules from nft's. The unit tests hold
//! messages captured from `nft` with strace and dumps captured from the
//! kernel.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_ACK_TLVS, NLM_F_CAPPED};

pub(super) const NLMSG_HDRLEN: usize = 16;
pub(super) const NLMSG_NOOP: u16 = 1;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLMSG_OVERRUN: u16 = 4;
/// `NLMSGERR_ATTR_MSG`: the kernel's error text in an extended ACK.
const NLMSGERR_ATTR_MSG: u16 = 1;

const NLA_F_NESTED: u16 = 0x8000;
/// Strips NLA_F_NESTED and NLA_F_NET_BYTEORDER: the kernel sets them on some
/// nests of its dumps and not on others.
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLA_HDRLEN: usize = 4;

/// `struct nfgenmsg` follows every nlmsghdr of the subsystem.
pub(super) const NFGENMSG_LEN: usize = 4;
const NFNETLINK_V0: u8 = 0;
pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(super) const NFNL_MSG_BATCH_BEGIN: u16 = 16;
pub(super) const NFNL_MSG_BATCH_END: u16 = 17;
const NFNL_BATCH_GENID: u16 = 1;

// enum nf_tables_msg_types
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_DELCHAIN: u16 = 5;
pub(super) const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
pub(super) const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;

// Netfilter protocol families (nfgenmsg.nfgen_family).
pub(super) const NFPROTO_INET: u8 = 1;
pub(super) const NFPROTO_IPV4: u8 = 2;
pub(super) const NFPROTO_BRIDGE: u8 = 7;
pub(super) const NFPROTO_IPV6: u8 = 10;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_TABLE_USERDATA: u16 = 6;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_CHAIN_USERDATA: u16 = 12;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;

const NFTA_GEN_ID: u16 = 1;

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
// xt "match" expression (nft_compat), as iptables-nft writes `-m comment`.
const NFTA_MATCH_NAME: u16 = 1;
const NFTA_MATCH_INFO: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_BITWISE_OP: u16 = 6;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_MASQ_FLAGS: u16 = 1;

/// Register 0 holds the verdict; NFT_REG_1 is the first 16-byte data
/// register, which nft uses for every load/compare of these rules.
const NFT_REG_VERDICT: u32 = 0;
pub(super) const NFT_REG_1: u32 = 1;

pub(super) const NFT_CMP_EQ: u32 = 0;
pub(super) const NFT_CMP_NEQ: u32 = 1;
pub(super) const NFT_PAYLOAD_LL_HEADER: u32 = 0;
pub(super) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(super) const NFT_META_IIFNAME: u32 = 6;
pub(super) const NFT_META_NFPROTO: u32 = 15;

const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

pub(super) const NF_INET_PRE_ROUTING: u32 = 0;
pub(super) const NF_INET_POST_ROUTING: u32 = 4;

/// libnftnl's udata TLV types: the comment is type 0 for tables, chains and
/// rules alike.
const NFTNL_UDATA_COMMENT: u8 = 0;
/// `IFNAMSIZ`: interface names are compared as this many bytes, NUL-padded.
pub(super) const IFNAMSIZ: usize = 16;

/// One nf_tables request, without its netlink header: the socket assigns
/// the sequence number and adds NLM_F_REQUEST / NLM_F_ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Request {
    /// nf_tables message type (`NFT_MSG_*`), without the subsystem bits.
    pub msg_type: u16,
    /// NLM_F_CREATE / NLM_F_APPEND / NLM_F_DUMP ...
    pub flags: u16,
    /// nfgenmsg followed by the attributes.
    pub body: Vec<u8>,
    /// What the request is about, for error messages.
    pub what: String,
}

impl Request {
    fn new(msg_type: u16, flags: u16, family: u8, what: String) -> Self {
        Request {
            msg_type,
            flags,
            body: nfgenmsg(family, 0).to_vec(),
            what,
        }
    }

    pub fn is_dump(&self) -> bool {
        self.flags & netlink_packet_core::NLM_F_DUMP == netlink_packet_core::NLM_F_DUMP
    }

    fn attrs(&mut self) -> Attrs<'_> {
        Attrs {
            buf: &mut self.body,
        }
    }
}

fn nfgenmsg(family: u8, res_id: u16) -> [u8; NFGENMSG_LEN] {
    let r = res_id.to_be_bytes();
    [family, NFNETLINK_V0, r[0], r[1]]
}

/// Appends one whole netlink message (header + body) to `out`.
pub(super) fn put_message(out: &mut Vec<u8>, msg_type: u16, flags: u16, seq: u32, body: &[u8]) {
    let len = NLMSG_HDRLEN + body.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&msg_type.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    // Port 0: the kernel fills in the sender.
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(body);
    pad(out);
}

/// The nfgenmsg body of NFNL_MSG_BATCH_BEGIN/END. res_id names the
/// subsystem the batch is for; with `genid` the kernel refuses the whole
/// batch (ERESTART) if the ruleset changed since that generation.
pub(super) fn batch_marker_body(genid: Option<u32>) -> Vec<u8> {
    let mut body = nfgenmsg(0, NFNL_SUBSYS_NFTABLES).to_vec();
    if let Some(id) = genid {
        Attrs { buf: &mut body }.be32(NFNL_BATCH_GENID, id);
    }
    body
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// Attribute writer over a message body.
struct Attrs<'a> {
    buf: &'a mut Vec<u8>,
}

impl Attrs<'_> {
    fn bytes(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        let len = NLA_HDRLEN + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        pad(self.buf);
        self
    }

    /// NUL-terminated, as the kernel's NLA_STRING policies accept and nft sends.
    fn string(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.bytes(ty, &v)
    }

    /// nf_tables integers travel in network byte order.
    fn be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    fn be64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    fn nest(&mut self, ty: u16, fill: impl FnOnce(&mut Attrs<'_>)) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        fill(&mut Attrs { buf: self.buf });
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// NFTA_DATA_VALUE wrapped in its nft_data nest.
    fn data_value(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        self.nest(ty, |a| {
            a.bytes(NFTA_DATA_VALUE, value);
        })
    }
}

/// libnftnl udata holding just a comment: `{u8 type, u8 len, value}` where
/// the value keeps its terminating NUL.
pub(super) fn comment_udata(comment: &str) -> Vec<u8> {
    // COMMENT_MAX (128) + NUL fits the u8 length; longer input is cut on a
    // character boundary like libnftables' own limit.
    let mut end = comment.len().min(254);
    while !comment.is_char_boundary(end) {
        end -= 1;
    }
    let text = &comment.as_bytes()[..end];
    let mut v = vec![NFTNL_UDATA_COMMENT, (text.len() + 1) as u8];
    v.extend_from_slice(text);
    v.push(0);
    v
}

/// The comment TLV of a udata blob, if any.
pub(super) fn parse_comment_udata(mut udata: &[u8]) -> Option<String> {
    while udata.len() >= 2 {
        let (ty, len) = (udata[0], udata[1] as usize);
        let value = udata.get(2..2 + len)?;
        if ty == NFTNL_UDATA_COMMENT {
            let text = value.split(|&b| b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        udata = &udata[2 + len..];
    }
    None
}

/// A verdict of an `immediate` expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
    /// continue, break, queue ... nothing these rules use.
    Other(i32),
}

/// The expressions the firewall writes, decoded from or encoded to netlink.
/// Anything else found in a dump is kept by name only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Expr {
    Meta {
        key: u32,
        dreg: u32,
    },
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: u32,
        data: Vec<u8>,
    },
    /// `dreg = (sreg & mask) ^ xor` (the boolean flavour; shifts are Other).
    Bitwise {
        sreg: u32,
        dreg: u32,
        len: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// `immediate` into the verdict register.
    Verdict(Verdict),
    /// `masquerade` without flags or port range.
    Masq,
    Other(String),
}

impl Expr {
    fn encode(&self, a: &mut Attrs<'_>) {
        let name = match self {
            Expr::Meta { .. } => "meta",
            Expr::Payload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Verdict(_) => "immediate",
            Expr::Masq => "masq",
            Expr::Other(name) => name.as_str(),
        };
        a.nest(NFTA_LIST_ELEM, |a| {
            a.string(NFTA_EXPR_NAME, name);
            a.nest(NFTA_EXPR_DATA, |a| self.encode_data(a));
        });
    }

    /// Attribute order follows libnftnl's builders, which the golden tests
    /// compare byte for byte.
    fn encode_data(&self, a: &mut Attrs<'_>) {
        match self {
            Expr::Meta { key, dreg } => {
                a.be32(NFTA_META_KEY, *key).be32(NFTA_META_DREG, *dreg);
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                a.be32(NFTA_PAYLOAD_DREG, *dreg)
                    .be32(NFTA_PAYLOAD_BASE, *base)
                    .be32(NFTA_PAYLOAD_OFFSET, *offset)
                    .be32(NFTA_PAYLOAD_LEN, *len);
            }
            Expr::Cmp { sreg, op, data } => {
                a.be32(NFTA_CMP_SREG, *sreg)
                    .be32(NFTA_CMP_OP, *op)
                    .data_value(NFTA_CMP_DATA, data);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                len,
                mask,
                xor,
            } => {
                a.be32(NFTA_BITWISE_SREG, *sreg)
                    .be32(NFTA_BITWISE_DREG, *dreg)
                    .be32(NFTA_BITWISE_LEN, *len)
                    .data_value(NFTA_BITWISE_MASK, mask)
                    .data_value(NFTA_BITWISE_XOR, xor);
            }
            Expr::Verdict(v) => {
                let (code, chain) = match v {
                    Verdict::Accept => (NF_ACCEPT, None),
                    Verdict::Drop => (NF_DROP, None),
                    Verdict::Return => (NFT_RETURN, None),
                    Verdict::Jump(c) => (NFT_JUMP, Some(c)),
                    Verdict::Goto(c) => (NFT_GOTO, Some(c)),
                    Verdict::Other(code) => (*code, None),
                };
                a.be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT)
                    .nest(NFTA_IMMEDIATE_DATA, |a| {
                        a.nest(NFTA_DATA_VERDICT, |a| {
                            a.be32(NFTA_VERDICT_CODE, code as u32);
                            if let Some(c) = chain {
                                a.string(NFTA_VERDICT_CHAIN, c);
                            }
                        });
                    });
            }
            Expr::Masq | Expr::Other(_) => {}
        }
    }

    fn decode(elem: &[u8]) -> Result<Expr, String> {
        let mut name = None;
        let mut data: &[u8] = &[];
        for attr in attrs(elem) {
            let (ty, v) = attr?;
            match ty {
                NFTA_EXPR_NAME => name = Some(nul_str(v)),
                NFTA_EXPR_DATA => data = v,
                _ => {}
            }
        }
        let name = name.ok_or("expression without a name")?;
        let mut f = Fields::default();
        for attr in attrs(data) {
            let (ty, v) = attr?;
            f.set(ty, v);
        }
        let expr = match name.as_str() {
            "meta" if f.has(NFTA_META_KEY) && f.has(NFTA_META_DREG) => Expr::Meta {
                key: f.be32(NFTA_META_KEY)?,
                dreg: f.be32(NFTA_META_DREG)?,
            },
            "payload" if f.count() == 4 => Expr::Payload {
                dreg: f.be32(NFTA_PAYLOAD_DREG)?,
                base: f.be32(NFTA_PAYLOAD_BASE)?,
                offset: f.be32(NFTA_PAYLOAD_OFFSET)?,
                len: f.be32(NFTA_PAYLOAD_LEN)?,
            },
            "cmp" => Expr::Cmp {
                sreg: f.be32(NFTA_CMP_SREG)?,
                op: f.be32(NFTA_CMP_OP)?,
                data: data_value(f.get(NFTA_CMP_DATA)?)?,
            },
            // Kernels since 5.5 report NFTA_BITWISE_OP; 0 is mask-and-xor.
            "bitwise" if f.opt_be32(NFTA_BITWISE_OP)?.unwrap_or(0) == 0 => Expr::Bitwise {
                sreg: f.be32(NFTA_BITWISE_SREG)?,
                dreg: f.be32(NFTA_BITWISE_DREG)?,
                len: f.be32(NFTA_BITWISE_LEN)?,
                mask: data_value(f.get(NFTA_BITWISE_MASK)?)?,
                xor: data_value(f.get(NFTA_BITWISE_XOR)?)?,
            },
            "immediate" if f.be32(NFTA_IMMEDIATE_DREG)? == NFT_REG_VERDICT => {
                Expr::Verdict(decode_verdict(f.get(NFTA_IMMEDIATE_DATA)?)?)
            }
            "masq" if f.opt_be32(NFTA_MASQ_FLAGS)?.unwrap_or(0) == 0 && f.count() <= 1 => {
                Expr::Masq
            }
            _ => Expr::Other(name),
        };
        Ok(expr)
    }
}

/// The attributes of one nest, by type (each type at most once here).
#[derive(Default)]
struct Fields<'a> {
    found: Vec<(u16, &'a [u8])>,
}

impl<'a> Fields<'a> {
    fn set(&mut self, ty: u16, v: &'a [u8]) {
        self.found.push((ty, v));
    }

    fn count(&self) -> usize {
        self.found.len()
    }

    fn has(&self, ty: u16) -> bool {
        self.found.iter().any(|(t, _)| *t == ty)
    }

    fn get(&self, ty: u16) -> Result<&'a [u8], String> {
        self.found
            .iter()
            .find(|(t, _)| *t == ty)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("attribute {ty} missing"))
    }

    fn be32(&self, ty: u16) -> Result<u32, String> {
        be32(self.get(ty)?)
    }

    fn opt_be32(&self, ty: u16) -> Result<Option<u32>, String> {
        if self.has(ty) {
            self.be32(ty).map(Some)
        } else {
            Ok(None)
        }
    }
}

fn be32(v: &[u8]) -> Result<u32, String> {
    v.try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| format!("{}-byte value where a u32 was expected", v.len()))
}

fn be64(v: &[u8]) -> Result<u64, String> {
    v.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| format!("{}-byte value where a u64 was expected", v.len()))
}

fn nul_str(v: &[u8]) -> String {
    let text = v.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(text).into_owned()
}

fn data_value(nest: &[u8]) -> Result<Vec<u8>, String> {
    for attr in attrs(nest) {
        let (ty, v) = attr?;
        if ty == NFTA_DATA_VALUE {
            return Ok(v.to_vec());
        }
    }
    Err("nft_data without a value".into())
}

fn decode_verdict(nest: &[u8]) -> Result<Verdict, String> {
    for attr in attrs(nest) {
        let (ty, v) = attr?;
        if ty != NFTA_DATA_VERDICT {
            continue;
        }
        let mut f = Fields::default();
        for attr in attrs(v) {
            let (ty, v) = attr?;
            f.set(ty, v);
        }
        let code = f.be32(NFTA_VERDICT_CODE)? as i32;
        let chain = || f.get(NFTA_VERDICT_CHAIN).map(nul_str);
        return Ok(match code {
            NF_ACCEPT => Verdict::Accept,
            NF_DROP => Verdict::Drop,
            NFT_RETURN => Verdict::Return,
            NFT_JUMP => Verdict::Jump(chain()?),
            NFT_GOTO => Verdict::Goto(chain()?),
            other => Verdict::Other(other),
        });
    }
    Err("immediate to the verdict register without a verdict".into())
}

/// Iterates the attributes of `buf`, yielding (type without flags, value).
/// A malformed length ends the iteration with an error instead of a panic.
pub(super) fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), String>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > rest.len() {
            rest = &[];
            return Some(Err(format!("attribute {ty} of bad length {len}")));
        }
        let value = &rest[NLA_HDRLEN..len];
        rest = rest.get((len + 3) & !3..).unwrap_or_default();
        Some(Ok((ty, value)))
    })
}

/// One netlink message of a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NlMsg<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    /// Everything after the nlmsghdr.
    pub payload: &'a [u8],
}

/// Splits a datagram into its messages.
pub(super) fn messages(datagram: &[u8]) -> impl Iterator<Item = Result<NlMsg<'_>, String>> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(hdr) = rest.get(..NLMSG_HDRLEN) else {
            rest = &[];
            return Some(Err("truncated netlink header".into()));
        };
        let len = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            rest = &[];
            return Some(Err(format!("netlink message of bad length {len}")));
        }
        let msg = NlMsg {
            msg_type: u16::from_ne_bytes([hdr[4], hdr[5]]),
            flags: u16::from_ne_bytes([hdr[6], hdr[7]]),
            seq: u32::from_ne_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]),
            payload: &rest[NLMSG_HDRLEN..len],
        };
        rest = rest.get((len + 3) & !3..).unwrap_or_default();
        Some(Ok(msg))
    })
}

/// The errno (positive; 0 = ACK) and extended-ACK text of an NLMSG_ERROR.
pub(super) fn parse_error(msg: &NlMsg<'_>) -> Result<(i32, Option<String>), String> {
    let p = msg.payload;
    let code = p
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or("truncated NLMSG_ERROR")?;
    let mut text = None;
    if msg.flags & NLM_F_ACK_TLVS != 0 {
        // The echoed request is just its header when the kernel honoured
        // NETLINK_CAP_ACK (NLM_F_CAPPED), else the whole request.
        let echoed = if msg.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            p.get(4..8)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .unwrap_or(NLMSG_HDRLEN)
        };
        let tlvs = p.get(4 + ((echoed + 3) & !3)..).unwrap_or_default();
        for attr in attrs(tlvs) {
            let Ok((ty, v)) = attr else { break };
            if ty == NLMSGERR_ATTR_MSG {
                text = Some(nul_str(v));
            }
        }
    }
    Ok((-code, text))
}

/// The error code carried by NLMSG_DONE (0 for a complete dump).
pub(super) fn parse_done(msg: &NlMsg<'_>) -> i32 {
    msg.payload
        .get(..4)
        .map(|b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// A rule as dumped by the kernel. Its expressions stay encoded until asked
/// for: finding rules by comment, the common case, never needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rule {
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
    /// The NFTA_RULE_EXPRESSIONS nest.
    expressions: Vec<u8>,
}

impl Rule {
    pub fn exprs(&self) -> Result<Vec<Expr>, String> {
        let mut out = Vec::new();
        for elem in attrs(&self.expressions) {
            let (ty, e) = elem?;
            if ty == NFTA_LIST_ELEM {
                out.push(Expr::decode(e)?);
            }
        }
        Ok(out)
    }

    /// Whether the rule consists of exactly `want` (false if it cannot be
    /// decoded: such a rule is not one of ours as written).
    pub fn is(&self, want: &[Expr]) -> bool {
        self.exprs().is_ok_and(|e| e == want)
    }

    /// The comment of a rule written by iptables-nft: `-m comment` becomes an xt `comment`
    /// match whose info is `struct xt_comment_info` (a NUL-padded string), not the rule
    /// userdata nft itself uses, and `nft -j` does not show it.
    pub fn xt_comment(&self) -> Option<String> {
        attrs(&self.expressions).flatten().find_map(|(ty, elem)| {
            if ty != NFTA_LIST_ELEM {
                return None;
            }
            let mut is_match = false;
            let mut data: &[u8] = &[];
            for (t, v) in attrs(elem).flatten() {
                match t {
                    NFTA_EXPR_NAME => is_match = nul_str(v) == "match",
                    NFTA_EXPR_DATA => data = v,
                    _ => {}
                }
            }
            if !is_match {
                return None;
            }
            let mut is_comment = false;
            let mut info = None;
            for (t, v) in attrs(data).flatten() {
                match t {
                    NFTA_MATCH_NAME => is_comment = nul_str(v) == "comment",
                    NFTA_MATCH_INFO => info = Some(nul_str(v)),
                    _ => {}
                }
            }
            info.filter(|_| is_comment)
        })
    }

    /// Target of the rule's jump or goto, if it has one.
    pub fn jump_target(&self) -> Option<String> {
        self.exprs().ok()?.into_iter().find_map(|e| match e {
            Expr::Verdict(Verdict::Jump(c) | Verdict::Goto(c)) => Some(c),
            _ => None,
        })
    }
}

/// Decodes the payload (nfgenmsg + attributes) of an NFT_MSG_NEWRULE.
pub(super) fn parse_rule(payload: &[u8]) -> Result<Rule, String> {
    let family = *payload.first().ok_or("empty rule message")?;
    let body = payload.get(NFGENMSG_LEN..).ok_or("truncated nfgenmsg")?;
    let mut rule = Rule {
        family,
        table: String::new(),
        chain: String::new(),
        handle: 0,
        comment: None,
        expressions: Vec::new(),
    };
    let mut has_handle = false;
    for attr in attrs(body) {
        let (ty, v) = attr?;
        match ty {
            NFTA_RULE_TABLE => rule.table = nul_str(v),
            NFTA_RULE_CHAIN => rule.chain = nul_str(v),
            NFTA_RULE_HANDLE => {
                rule.handle = be64(v)?;
                has_handle = true;
            }
            NFTA_RULE_EXPRESSIONS => rule.expressions = v.to_vec(),
            NFTA_RULE_USERDATA => rule.comment = parse_comment_udata(v),
            _ => {}
        }
    }
    if !has_handle {
        return Err("rule without a handle".into());
    }
    Ok(rule)
}

/// The generation id of an NFT_MSG_NEWGEN.
pub(super) fn parse_gen(payload: &[u8]) -> Result<u32, String> {
    let body = payload.get(NFGENMSG_LEN..).ok_or("truncated nfgenmsg")?;
    for attr in attrs(body) {
        let (ty, v) = attr?;
        if ty == NFTA_GEN_ID {
            return be32(v);
        }
    }
    Err("generation message without NFTA_GEN_ID".into())
}

pub(super) fn family_name(family: u8) -> &'static str {
    match family {
        NFPROTO_INET => "inet",
        NFPROTO_IPV4 => "ip",
        NFPROTO_IPV6 => "ip6",
        NFPROTO_BRIDGE => "bridge",
        _ => "unknown-family",
    }
}

/// `<family> <table> <chain>` for error messages.
struct Where<'a>(u8, &'a str, &'a str);

impl fmt::Display for Where<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", family_name(self.0), self.1, self.2)
    }
}

/// Base-chain properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Hook {
    pub chain_type: &'static str,
    pub hooknum: u32,
    pub priority: i32,
}

/// Creates the table, or leaves an existing one alone: without NLM_F_EXCL
/// the kernel treats NEWTABLE for an existing table as a (no-op) update.
pub(super) fn new_table(family: u8, name: &str, comment: Option<&str>) -> Request {
    let mut r = Request::new(
        NFT_MSG_NEWTABLE,
        netlink_packet_core::NLM_F_CREATE,
        family,
        format!("table {} {name}", family_name(family)),
    );
    let mut a = r.attrs();
    a.string(NFTA_TABLE_NAME, name).be32(NFTA_TABLE_FLAGS, 0);
    if let Some(c) = comment {
        a.bytes(NFTA_TABLE_USERDATA, &comment_udata(c));
    }
    r
}

/// Creates the chain, or updates an existing one (same hook required):
/// idempotent without NLM_F_EXCL.
pub(super) fn new_chain(
    family: u8,
    table: &str,
    name: &str,
    hook: Option<Hook>,
    comment: Option<&str>,
) -> Request {
    let mut r = Request::new(
        NFT_MSG_NEWCHAIN,
        netlink_packet_core::NLM_F_CREATE,
        family,
        format!("chain {}", Where(family, table, name)),
    );
    let mut a = r.attrs();
    a.string(NFTA_CHAIN_TABLE, table)
        .string(NFTA_CHAIN_NAME, name);
    if let Some(h) = hook {
        a.string(NFTA_CHAIN_TYPE, h.chain_type)
            .be32(NFTA_CHAIN_POLICY, NF_ACCEPT as u32)
            .nest(NFTA_CHAIN_HOOK, |a| {
                a.be32(NFTA_HOOK_HOOKNUM, h.hooknum)
                    .be32(NFTA_HOOK_PRIORITY, h.priority as u32);
            });
    }
    if let Some(c) = comment {
        a.bytes(NFTA_CHAIN_USERDATA, &comment_udata(c));
    }
    r
}

/// Deletes an empty, unreferenced chain.
pub(super) fn del_chain(family: u8, table: &str, name: &str) -> Request {
    let mut r = Request::new(
        NFT_MSG_DELCHAIN,
        0,
        family,
        format!("chain {}", Where(family, table, name)),
    );
    r.attrs()
        .string(NFTA_CHAIN_TABLE, table)
        .string(NFTA_CHAIN_NAME, name);
    r
}

/// DELRULE without a handle deletes every rule of the chain (`nft flush
/// chain`).
pub(super) fn flush_chain(family: u8, table: &str, chain: &str) -> Request {
    let mut r = Request::new(
        NFT_MSG_DELRULE,
        0,
        family,
        format!("rules of chain {}", Where(family, table, chain)),
    );
    r.attrs()
        .string(NFTA_RULE_TABLE, table)
        .string(NFTA_RULE_CHAIN, chain);
    r
}

/// Appends a rule to the chain.
pub(super) fn new_rule(
    family: u8,
    table: &str,
    chain: &str,
    exprs: &[Expr],
    comment: Option<&str>,
) -> Request {
    let mut r = Request::new(
        NFT_MSG_NEWRULE,
        netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_APPEND,
        family,
        format!("rule in chain {}", Where(family, table, chain)),
    );
    let mut a = r.attrs();
    a.string(NFTA_RULE_TABLE, table)
        .string(NFTA_RULE_CHAIN, chain)
        .nest(NFTA_RULE_EXPRESSIONS, |a| {
            for e in exprs {
                e.encode(a);
            }
        });
    if let Some(c) = comment {
        a.bytes(NFTA_RULE_USERDATA, &comment_udata(c));
    }
    r
}

pub(super) fn del_rule(family: u8, table: &str, chain: &str, handle: u64) -> Request {
    let mut r = Request::new(
        NFT_MSG_DELRULE,
        0,
        family,
        format!(
            "rule handle {handle} in chain {}",
            Where(family, table, chain)
        ),
    );
    r.attrs()
        .string(NFTA_RULE_TABLE, table)
        .string(NFTA_RULE_CHAIN, chain)
        .be64(NFTA_RULE_HANDLE, handle);
    r
}

/// Looks up one chain: ENOENT when it (or its table) does not exist.
pub(super) fn get_chain(family: u8, table: &str, name: &str) -> Request {
    let mut r = Request::new(
        NFT_MSG_GETCHAIN,
        0,
        family,
        format!("chain {}", Where(family, table, name)),
    );
    r.attrs()
        .string(NFTA_CHAIN_TABLE, table)
        .string(NFTA_CHAIN_NAME, name);
    r
}

/// Dumps the rules of one table of `family`, or of one chain of it: the
/// kernel filters on NFTA_RULE_TABLE / NFTA_RULE_CHAIN, and an absent table
/// or chain yields an empty dump rather than an error.
pub(super) fn dump_rules(family: u8, table: &str, chain: Option<&str>) -> Request {
    let what = match chain {
        Some(c) => format!("rules of chain {}", Where(family, table, c)),
        None => format!("rules of table {} {table}", family_name(family)),
    };
    let mut r = Request::new(
        NFT_MSG_GETRULE,
        netlink_packet_core::NLM_F_DUMP,
        family,
        what,
    );
    let mut a = r.attrs();
    a.string(NFTA_RULE_TABLE, table);
    if let Some(c) = chain {
        a.string(NFTA_RULE_CHAIN, c);
    }
    r
}

/// Asks for the ruleset generation, to be passed back in a batch (genid).
pub(super) fn get_gen() -> Request {
    Request::new(NFT_MSG_GETGEN, 0, 0, "ruleset generation".into())
}

/// `meta nfproto <proto>`: the dependency nft adds before a network-header
/// match in an inet table, which sees both IPv4 and IPv6 packets.
pub(super) fn nfproto_is(proto: u8) -> [Expr; 2] {
    [
        Expr::Meta {
            key: NFT_META_NFPROTO,
            dreg: NFT_REG_1,
        },
        Expr::Cmp {
            sreg: NFT_REG_1,
            op: NFT_CMP_EQ,
            data: vec![proto],
        },
    ]
}

fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Network-header offset of the source (or destination) address.
fn addr_offset(v4: bool, source: bool) -> u32 {
    match (v4, source) {
        (true, true) => 12,
        (true, false) => 16,
        (false, true) => 8,
        (false, false) => 24,
    }
}

fn load(base: u32, offset: u32, len: usize) -> Expr {
    Expr::Payload {
        base,
        offset,
        len: len as u32,
        dreg: NFT_REG_1,
    }
}

fn cmp(op: u32, data: Vec<u8>) -> Expr {
    Expr::Cmp {
        sreg: NFT_REG_1,
        op,
        data,
    }
}

/// `ip[6] saddr <addr>` (with `source`) or `ip[6] daddr <addr>`.
pub(super) fn addr_match(addr: IpAddr, source: bool) -> Vec<Expr> {
    let bytes = addr_bytes(addr);
    let offset = addr_offset(addr.is_ipv4(), source);
    vec![
        load(NFT_PAYLOAD_NETWORK_HEADER, offset, bytes.len()),
        cmp(NFT_CMP_EQ, bytes),
    ]
}

/// `ip[6] daddr [!=] <net>`, linearised as nft does: a whole-address match
/// for a host prefix, a load of just the prefix bytes when the prefix ends
/// on a byte boundary, otherwise the whole address masked with `bitwise`.
pub(super) fn daddr_prefix(net: IpNet, op: u32) -> Vec<Expr> {
    let v4 = net.addr().is_ipv4();
    let network = addr_bytes(net.network());
    let full = network.len();
    let offset = addr_offset(v4, false);
    let bits = usize::from(net.prefix_len());
    if bits == full * 8 {
        vec![
            load(NFT_PAYLOAD_NETWORK_HEADER, offset, full),
            cmp(op, network),
        ]
    } else if bits > 0 && bits % 8 == 0 {
        let n = bits / 8;
        vec![
            load(NFT_PAYLOAD_NETWORK_HEADER, offset, n),
            cmp(op, network[..n].to_vec()),
        ]
    } else {
        vec![
            load(NFT_PAYLOAD_NETWORK_HEADER, offset, full),
            Expr::Bitwise {
                sreg: NFT_REG_1,
                dreg: NFT_REG_1,
                len: full as u32,
                mask: addr_bytes(net.netmask()),
                xor: vec![0; full],
            },
            cmp(op, network),
        ]
    }
}

/// `iifname "<name>"`: the name NUL-padded to IFNAMSIZ.
pub(super) fn iifname_is(name: &str) -> [Expr; 2] {
    let mut data = name.as_bytes().to_vec();
    data.resize(IFNAMSIZ, 0);
    [
        Expr::Meta {
            key: NFT_META_IIFNAME,
            dreg: NFT_REG_1,
        },
        cmp(NFT_CMP_EQ, data),
    ]
}

/// `ether saddr <mac>`: link-layer header bytes 6..12.
pub(super) fn ether_saddr_is(mac: [u8; 6]) -> [Expr; 2] {
    [
        load(NFT_PAYLOAD_LL_HEADER, 6, 6),
        cmp(NFT_CMP_EQ, mac.to_vec()),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::nfnl_testdata::*;
    use super::*;

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn to_hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Our request must carry exactly nft's body; the subsystem bits of the
    /// type and the flags nft sets are checked too (we add NLM_F_ACK and,
    /// for tables, NLM_F_CREATE, which the kernel ignores there).
    fn assert_same(ours: &Request, golden: (u16, u16, &str)) {
        let (ty, flags, body) = golden;
        assert_eq!(
            (NFNL_SUBSYS_NFTABLES << 8) | ours.msg_type,
            ty,
            "{}",
            ours.what
        );
        assert_eq!(
            ours.flags | netlink_packet_core::NLM_F_REQUEST,
            flags | (ours.flags & netlink_packet_core::NLM_F_CREATE),
            "{}",
            ours.what
        );
        assert_eq!(to_hex(&ours.body), body, "{}", ours.what);
    }

    const T: &str = "cni_plugins_masquerade";

    fn masq_rule(ip: &str) -> Vec<Expr> {
        let net: IpNet = ip.parse().unwrap();
        let proto = if net.addr().is_ipv4() {
            NFPROTO_IPV4
        } else {
            NFPROTO_IPV6
        };
        let mut e = nfproto_is(proto).to_vec();
        e.extend(addr_match(net.addr(), true));
        e.extend(daddr_prefix(net, NFT_CMP_NEQ));
        e.push(Expr::Masq);
        e
    }

    #[test]
    fn masq_objects_encode_like_nft() {
        let post = Hook {
            chain_type: "nat",
            hooknum: NF_INET_POST_ROUTING,
            priority: 100,
        };
        let mut mcast4 = nfproto_is(NFPROTO_IPV4).to_vec();
        mcast4.extend(daddr_prefix("224.0.0.0/4".parse().unwrap(), NFT_CMP_EQ));
        mcast4.push(Expr::Verdict(Verdict::Return));
        let mut mcast6 = nfproto_is(NFPROTO_IPV6).to_vec();
        mcast6.extend(daddr_prefix("ff00::/8".parse().unwrap(), NFT_CMP_EQ));
        mcast6.push(Expr::Verdict(Verdict::Return));
        let ours = [
            new_table(
                NFPROTO_INET,
                T,
                Some("Masquerading for plugins from github.com/containernetworking/plugins"),
            ),
            new_chain(
                NFPROTO_INET,
                T,
                "masq_checks",
                None,
                Some("Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet"),
            ),
            new_chain(NFPROTO_INET, T, "postrouting", Some(post), None),
            new_rule(NFPROTO_INET, T, "postrouting", &mcast4, None),
            new_rule(NFPROTO_INET, T, "postrouting", &mcast6, None),
            new_rule(
                NFPROTO_INET,
                T,
                "postrouting",
                &[Expr::Verdict(Verdict::Goto("masq_checks".into()))],
                None,
            ),
            new_rule(NFPROTO_INET, T, "masq_checks", &masq_rule("10.244.1.5/24"), Some("c")),
            new_rule(NFPROTO_INET, T, "masq_checks", &masq_rule("fd00::5/64"), Some("c")),
        ];
        assert_eq!(ours.len(), NFT_MASQ_BATCH.len());
        for (o, g) in ours.iter().zip(NFT_MASQ_BATCH) {
            assert_same(o, *g);
        }
    }

    #[test]
    fn spoofchk_objects_encode_like_nft() {
        let pre = Hook {
            chain_type: "filter",
            hooknum: NF_INET_PRE_ROUTING,
            priority: -300,
        };
        let (iface, mac) = ("cni-br-iface-c1-eth0", "cni-br-iface-c1-eth0-mac");
        let c = Some("macspoofchk-c1-eth0");
        let mut jump = iifname_is("veth0a1b2c3d").to_vec();
        jump.push(Expr::Verdict(Verdict::Jump(iface.into())));
        let mut ret = ether_saddr_is([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]).to_vec();
        ret.push(Expr::Verdict(Verdict::Return));
        let b = NFPROTO_BRIDGE;
        let ours = [
            new_table(b, "nat", None),
            new_chain(b, "nat", "PREROUTING", Some(pre), None),
            new_chain(b, "nat", iface, None, None),
            new_chain(b, "nat", mac, None, None),
            new_rule(b, "nat", "PREROUTING", &jump, c),
            new_rule(
                b,
                "nat",
                iface,
                &[Expr::Verdict(Verdict::Jump(mac.into()))],
                c,
            ),
            new_rule(b, "nat", mac, &ret, c),
            new_rule(b, "nat", mac, &[Expr::Verdict(Verdict::Drop)], c),
        ];
        assert_eq!(ours.len(), NFT_SPOOFCHK_BATCH.len());
        for (o, g) in ours.iter().zip(NFT_SPOOFCHK_BATCH) {
            assert_same(o, *g);
        }
    }

    #[test]
    fn deletions_encode_like_nft() {
        let ours = [
            del_rule(NFPROTO_INET, T, "masq_checks", 7),
            flush_chain(NFPROTO_INET, T, "postrouting"),
            flush_chain(NFPROTO_BRIDGE, "nat", "cni-br-iface-c1-eth0"),
            del_chain(NFPROTO_BRIDGE, "nat", "cni-br-iface-c1-eth0"),
        ];
        for (o, g) in ours.iter().zip(NFT_DELETE_BATCH) {
            assert_same(o, *g);
        }
    }

    #[test]
    fn kernel_dump_decodes_to_what_we_encode() {
        let rules: Vec<Rule> = KERNEL_MASQ_DUMP
            .iter()
            .map(|h| parse_rule(&hex(h)).unwrap())
            .collect();
        let summary: Vec<(&str, u64)> =
            rules.iter().map(|r| (r.chain.as_str(), r.handle)).collect();
        assert_eq!(
            summary,
            [
                ("masq_checks", 6),
                ("masq_checks", 7),
                ("postrouting", 3),
                ("postrouting", 4),
                ("postrouting", 5)
            ]
        );
        assert!(rules
            .iter()
            .all(|r| r.family == NFPROTO_INET && r.table == T));
        assert_eq!(rules[0].comment.as_deref(), Some("c"));
        assert_eq!(rules[2].comment, None);
        // What the kernel reports is what we would send for the same rule,
        // so "already present" is a plain comparison.
        assert_eq!(rules[0].exprs().unwrap(), masq_rule("10.244.1.5/24"));
        assert!(rules[1].is(&masq_rule("fd00::5/64")));
        assert!(!rules[1].is(&masq_rule("fd00::6/64")));
        assert_eq!(rules[4].jump_target().as_deref(), Some("masq_checks"));
        assert_eq!(rules[2].jump_target(), None);
        let mut mcast4 = nfproto_is(NFPROTO_IPV4).to_vec();
        mcast4.extend(daddr_prefix("224.0.0.0/4".parse().unwrap(), NFT_CMP_EQ));
        mcast4.push(Expr::Verdict(Verdict::Return));
        assert_eq!(rules[2].exprs().unwrap(), mcast4);
    }

    #[test]
    fn iptables_nft_rule_decodes_its_jump() {
        let rule = parse_rule(&hex(KERNEL_IPTABLES_DUMP)).unwrap();
        assert_eq!((rule.family, rule.table.as_str()), (NFPROTO_IPV4, "nat"));
        assert_eq!(rule.chain, "POSTROUTING");
        assert_eq!(
            rule.jump_target().as_deref(),
            Some("CNI-80046ea6662e566de92511fe")
        );
        // xt matches and counters are kept by name only.
        let exprs = rule.exprs().unwrap();
        assert!(exprs.contains(&Expr::Other("match".into())), "{exprs:?}");
        assert!(exprs.contains(&Expr::Other("counter".into())), "{exprs:?}");
    }

    #[test]
    fn prefixes_linearise_like_nft() {
        // Cases checked against `nft --debug=netlink` output.
        let e = daddr_prefix("10.244.0.0/20".parse().unwrap(), NFT_CMP_NEQ);
        assert_eq!(e.len(), 3);
        assert!(matches!(&e[1], Expr::Bitwise { mask, .. } if mask == &[255, 255, 240, 0]));
        let e = daddr_prefix("10.244.1.5/32".parse().unwrap(), NFT_CMP_NEQ);
        assert!(
            matches!(&e[..], [Expr::Payload { len: 4, .. }, Expr::Cmp { data, .. }] if data == &[10, 244, 1, 5])
        );
        let e = daddr_prefix("0.0.0.0/0".parse().unwrap(), NFT_CMP_NEQ);
        assert!(matches!(&e[1], Expr::Bitwise { mask, .. } if mask == &[0, 0, 0, 0]));
        let e = daddr_prefix("fd00::/65".parse().unwrap(), NFT_CMP_NEQ);
        assert!(matches!(
            &e[0],
            Expr::Payload {
                len: 16,
                offset: 24,
                ..
            }
        ));
        assert!(matches!(&e[1], Expr::Bitwise { mask, .. } if mask[8] == 0x80 && mask[9] == 0));
        let e = daddr_prefix("fd00::5/128".parse().unwrap(), NFT_CMP_NEQ);
        assert_eq!(e.len(), 2);
        // Host bits of the address do not leak into the compared network.
        let e = daddr_prefix("10.244.1.5/24".parse().unwrap(), NFT_CMP_NEQ);
        assert!(matches!(&e[1], Expr::Cmp { data, .. } if data == &[10, 244, 1]));
    }

    #[test]
    fn udata_comment_round_trip() {
        assert_eq!(comment_udata("abc"), b"\x00\x04abc\x00");
        assert_eq!(
            parse_comment_udata(&comment_udata("abc")).as_deref(),
            Some("abc")
        );
        // Other TLVs before the comment are skipped; truncation is no panic.
        let mut u = vec![1, 2, 9, 9];
        u.extend(comment_udata("x"));
        assert_eq!(parse_comment_udata(&u).as_deref(), Some("x"));
        assert_eq!(parse_comment_udata(&[0, 9, b'a']), None);
        assert_eq!(parse_comment_udata(&[]), None);
        let long = "é".repeat(200);
        let u = comment_udata(&long);
        assert_eq!(u[1] as usize, u.len() - 2);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert!(attrs(&[200, 0, 1, 0]).next().unwrap().is_err());
        assert!(messages(&[1, 2, 3]).next().unwrap().is_err());
        let mut m = 100u32.to_ne_bytes().to_vec();
        m.resize(16, 0);
        assert!(messages(&m).next().unwrap().is_err());
        assert!(parse_rule(&[]).is_err());
        assert!(parse_rule(&[1, 0, 0, 0]).is_err(), "no handle");
        let good = hex(KERNEL_MASQ_DUMP[0]);
        for cut in 0..good.len() {
            if let Ok(rule) = parse_rule(&good[..cut]) {
                let _ = rule.exprs();
            }
        }
        // A rule whose expressions do not decode is nobody's rule.
        let mut rule = parse_rule(&good).unwrap();
        rule.expressions.truncate(10);
        assert!(rule.exprs().is_err());
        assert!(!rule.is(&[]));
        assert_eq!(rule.jump_target(), None);
        assert!(parse_gen(&[0, 0]).is_err());
    }

    #[test]
    fn error_and_done_decoding() {
        // NLMSG_ERROR with a capped echo and an extended-ACK message.
        let mut p = (-libc::ENOENT).to_ne_bytes().to_vec();
        p.extend(20u32.to_ne_bytes());
        p.resize(4 + 16, 0);
        p.extend(6u16.to_ne_bytes());
        p.extend(NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend(b"no\0\0");
        let msg = NlMsg {
            msg_type: NLMSG_ERROR,
            flags: NLM_F_ACK_TLVS | NLM_F_CAPPED,
            seq: 1,
            payload: &p,
        };
        assert_eq!(
            parse_error(&msg).unwrap(),
            (libc::ENOENT, Some("no".into()))
        );
        let ack = 0i32.to_ne_bytes();
        let msg = NlMsg {
            payload: &ack,
            flags: 0,
            ..msg
        };
        assert_eq!(parse_error(&msg).unwrap(), (0, None));
        let done = NlMsg {
            msg_type: NLMSG_DONE,
            flags: 0,
            seq: 1,
            payload: &(-libc::EINTR).to_ne_bytes(),
        };
        assert_eq!(parse_done(&done), libc::EINTR);
    }

    #[test]
    fn message_framing() {
        let mut out = Vec::new();
        put_message(&mut out, 0x0a06, 5, 42, &[1, 0, 0, 0, 9]);
        put_message(&mut out, NLMSG_DONE, 2, 43, &[0, 0, 0, 0]);
        let msgs: Vec<NlMsg<'_>> = messages(&out).map(Result::unwrap).collect();
        assert_eq!(msgs.len(), 2);
        assert_eq!(
            (msgs[0].msg_type, msgs[0].flags, msgs[0].seq),
            (0x0a06, 5, 42)
        );
        assert_eq!(msgs[0].payload, &[1, 0, 0, 0, 9]);
        assert_eq!(msgs[1].seq, 43);
        assert_eq!(batch_marker_body(None), [0, 0, 0, 10]);
        assert_eq!(
            batch_marker_body(Some(7)),
            [0, 0, 0, 10, 8, 0, 1, 0, 0, 0, 0, 7]
        );
    }
}
