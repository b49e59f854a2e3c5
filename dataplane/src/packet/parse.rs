//! One pass over a frame: everything the pipeline needs, as values and offsets, no copies.
//!
//! [`parse_frame`] validates a frame from Ethernet down to the transport header once and returns
//! a [`ParsedFrame`]: addresses, ports, flags, and the offsets that [`super::rewrite`] takes back
//! to change the frame in place. [`parse_ipv4_fast`] gives the same answer for the common case
//! (TCP or UDP over IPv4 without options, no fragment) in one pass over fixed offsets, and
//! declines everything else. The pipeline never holds a view across stages, so nothing
//! borrows the frame while it is being rewritten.
//!
//! What is checked, and why:
//! - IPv4 per RFC 791 and RFC 1812 section 5.2.2 (a router must check version, header length,
//!   total length and header checksum and discard what fails). Bytes beyond the total length are
//!   Ethernet padding and are left for the caller to trim, never rejected.
//! - Transport headers only in first fragments (fragment offset 0): later fragments carry none,
//!   and their [`L4`] is `Other`. A first fragment too short for its transport header is rejected
//!   as truncated, which also drops the tiny-fragment attack of RFC 1858.
//! - TCP, UDP and ICMP checksums are not verified: a router does not (RFC 1812), and frames from a
//!   TAP with offload carry partial ones.
//! - ICMP errors (destination unreachable, time exceeded, parameter problem) must quote at least a
//!   whole IPv4 header (RFC 792); the quoted transport header may be cut short (RFC 792 asks only
//!   for 64 bits of it), and [`InnerPacket::has_ports`] tells whether its ports are there.

use std::net::Ipv4Addr;

use super::arp::ArpPacket;
use super::ethernet::{self, EthernetFrame, ETHERTYPE_ARP, ETHERTYPE_IPV4};
use super::icmp::{self, IcmpPacket};
use super::ipv4::{self, Ipv4Packet, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use super::tcp::TcpSegment;
use super::udp::UdpDatagram;
use super::{get_u16, MacAddr, WireError};

/// A frame as the pipeline sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedFrame {
    pub dst_mac: MacAddr,
    pub src_mac: MacAddr,
    pub ethertype: u16,
    pub l3: L3,
}

/// The network layer of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    Arp(ArpInfo),
    Ipv4(Ipv4Info),
    /// Any other ethertype (IPv6, VLAN-tagged, ...): not parsed.
    Other,
}

/// An Ethernet/IPv4 ARP packet (RFC 826).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpInfo {
    pub operation: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

/// An IPv4 packet, validated, with its transport header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Info {
    /// Offset of the IP header in the frame (14: no VLAN tags).
    pub offset: usize,
    /// IHL * 4: at least 20, at most `total_len`.
    pub header_len: usize,
    /// The total length field: at most the bytes after `offset`. The frame may be longer
    /// (Ethernet padding).
    pub total_len: usize,
    pub ttl: u8,
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// MF set or a non-zero fragment offset.
    pub is_fragment: bool,
    /// Fragment offset zero (also true for a packet that is no fragment at all).
    pub is_first_fragment: bool,
    /// The transport header; parsed only in first fragments, `L4::Other` otherwise.
    pub l4: L4,
}

impl Ipv4Info {
    /// Offset of the transport header in the frame.
    pub fn l4_offset(&self) -> usize {
        self.offset + self.header_len
    }

    /// Offset just past the IP packet in the frame: where padding, if any, starts.
    pub fn end(&self) -> usize {
        self.offset + self.total_len
    }
}

/// The transport layer of a (first-fragment) IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: u8,
        seq: u32,
        ack: u32,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// Echo request or reply, or another query with an identifier ([`icmp::is_query`]:
    /// timestamp, information, address mask), tracked and translated by it as echo is.
    IcmpEcho {
        icmp_type: u8,
        code: u8,
        ident: u16,
        seq: u16,
    },
    /// Destination unreachable, time exceeded or parameter problem, with the packet it quotes.
    IcmpError {
        icmp_type: u8,
        code: u8,
        inner: InnerPacket,
    },
    /// Any other ICMP message.
    IcmpOther {
        icmp_type: u8,
        code: u8,
    },
    /// Another protocol, or a fragment other than the first.
    Other,
}

/// The packet an ICMP error quotes: the original as it was sent, from the host that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerPacket {
    /// Offset of the quoted IP header in the frame.
    pub offset: usize,
    /// Its IHL * 4; the whole header is present.
    pub header_len: usize,
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// TCP/UDP ports; for a quoted ICMP echo, its identifier in both.
    pub src_port: u16,
    pub dst_port: u16,
    /// The ports are present: at least 4 bytes of a quoted TCP/UDP header, or the 8 bytes of a
    /// quoted ICMP echo header, in a quoted first fragment.
    pub has_ports: bool,
}

impl InnerPacket {
    /// Offset of the quoted transport header in the frame.
    pub fn l4_offset(&self) -> usize {
        self.offset + self.header_len
    }

    /// Whether the quote names the connection it is about: its ports are there, or its protocol
    /// has none (GRE, ESP and the rest, SCTP included, are tracked by addresses alone).
    pub fn names_a_connection(&self) -> bool {
        self.has_ports || !matches!(self.protocol, PROTO_TCP | PROTO_UDP | PROTO_ICMP)
    }
}

/// Parses a frame (without virtio-net header) as described in the module note.
pub fn parse_frame(frame: &[u8]) -> Result<ParsedFrame, WireError> {
    let eth = EthernetFrame::new_checked(frame)?;
    let ethertype = eth.ethertype();
    let l3 = match ethertype {
        ETHERTYPE_ARP => L3::Arp(parse_arp(eth.payload())?),
        ETHERTYPE_IPV4 => L3::Ipv4(parse_ipv4(frame, ethernet::HEADER_LEN)?),
        _ => L3::Other,
    };
    Ok(ParsedFrame {
        dst_mac: eth.dst_addr(),
        src_mac: eth.src_addr(),
        ethertype,
        l3,
    })
}

/// The common case of [`parse_frame`], for the forwarding fast path: an untagged IPv4 frame
/// with a 20-byte header (no options), no fragment, carrying TCP or UDP. For such a frame it
/// returns what `parse_frame` would put in `L3::Ipv4`, with the same checks (RFC 1812 section
/// 5.2.2 header checksum included); for any other frame, valid or not, `None`, and the caller
/// takes `parse_frame`. The fixed-size headers are sliced out once, so reading the fields costs
/// no further bounds checks.
#[inline]
pub fn parse_ipv4_fast(frame: &[u8]) -> Option<Ipv4Info> {
    ipv4_fast::<true>(frame)
}

/// [`parse_ipv4_fast`] again on a frame it took (unchanged since, or cut to its IP total
/// length): the same fields, without the checks it passed (the header checksum among them).
/// The fast path's miss reads the frame a second time this way.
#[inline]
pub fn reparse_ipv4_fast(frame: &[u8]) -> Option<Ipv4Info> {
    ipv4_fast::<false>(frame)
}

#[inline(always)]
fn ipv4_fast<const CHECK: bool>(frame: &[u8]) -> Option<Ipv4Info> {
    const IP: usize = ethernet::HEADER_LEN;
    const L4_AT: usize = IP + ipv4::HEADER_LEN;
    // Ethernet, IPv4 and the 8 bytes UDP needs (TCP's 20 are checked below).
    let head: &[u8; L4_AT + 8] = frame.get(..L4_AT + 8)?.try_into().ok()?;
    let be16 = |at: usize| u16::from_be_bytes([head[at], head[at + 1]]);
    let be32 = |at: usize| u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    if CHECK && (be16(12) != ETHERTYPE_IPV4 || head[IP] != 0x45) {
        return None;
    }
    let total_len = usize::from(be16(IP + 2));
    // MF or a fragment offset: a fragment.
    if CHECK
        && (total_len < ipv4::HEADER_LEN + 8
            || total_len > frame.len() - IP
            || be16(IP + 6) & 0x3fff != 0)
    {
        return None;
    }
    let protocol = head[IP + 9];
    if CHECK && protocol != PROTO_UDP && protocol != PROTO_TCP {
        return None;
    }
    // RFC 1071 section 2: the sum may be taken in either byte order (B: the folded result
    // comes out byte-swapped, and 0xffff is its own swap) and over 32-bit words (C: 2^16 = 1
    // modulo 0xffff), so five words are added as they lie. The header's first byte is 0x45, so
    // the sum is never zero, and it folds to 0xffff exactly when it is a multiple of 0xffff:
    // the remainder is what the check needs, without the folding.
    let ne32 = |at: usize| {
        u64::from(u32::from_ne_bytes([
            head[at],
            head[at + 1],
            head[at + 2],
            head[at + 3],
        ]))
    };
    let sum = ne32(IP) + ne32(IP + 4) + ne32(IP + 8) + ne32(IP + 12) + ne32(IP + 16);
    if CHECK && sum % 0xffff != 0 {
        return None;
    }
    let (src_port, dst_port) = (be16(L4_AT), be16(L4_AT + 2));
    let l4 = match protocol {
        PROTO_UDP => L4::Udp { src_port, dst_port },
        PROTO_TCP => {
            let tcp: &[u8; super::tcp::HEADER_LEN] = frame
                .get(L4_AT..L4_AT + super::tcp::HEADER_LEN)?
                .try_into()
                .ok()?;
            let data_offset = usize::from(tcp[12] >> 4) * 4;
            if CHECK
                && (data_offset < super::tcp::HEADER_LEN
                    || data_offset > total_len - ipv4::HEADER_LEN)
            {
                return None;
            }
            L4::Tcp {
                src_port,
                dst_port,
                flags: tcp[13],
                seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
                ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
            }
        }
        _ => return None,
    };
    Some(Ipv4Info {
        offset: IP,
        header_len: ipv4::HEADER_LEN,
        total_len,
        ttl: head[IP + 8],
        protocol,
        src: Ipv4Addr::from(be32(IP + 12)),
        dst: Ipv4Addr::from(be32(IP + 16)),
        is_fragment: false,
        is_first_fragment: true,
        l4,
    })
}

fn parse_arp(payload: &[u8]) -> Result<ArpInfo, WireError> {
    let arp = ArpPacket::new_checked(payload)?;
    if !arp.is_ethernet_ipv4() {
        return Err(WireError::UnsupportedArp);
    }
    Ok(ArpInfo {
        operation: arp.operation(),
        sender_mac: arp.sender_hardware_addr(),
        sender_ip: arp.sender_protocol_addr(),
        target_mac: arp.target_hardware_addr(),
        target_ip: arp.target_protocol_addr(),
    })
}

fn parse_ipv4(frame: &[u8], offset: usize) -> Result<Ipv4Info, WireError> {
    let ip = Ipv4Packet::new_checked(frame.get(offset..).ok_or(WireError::Truncated)?)?;
    if !ip.verify_checksum() {
        return Err(WireError::BadChecksum);
    }
    let header_len = ip.header_len();
    let is_first_fragment = ip.frag_offset() == 0;
    let l4 = if is_first_fragment {
        parse_l4(frame, offset + header_len, ip.protocol(), ip.payload())?
    } else {
        L4::Other
    };
    Ok(Ipv4Info {
        offset,
        header_len,
        total_len: ip.total_len(),
        ttl: ip.ttl(),
        protocol: ip.protocol(),
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        is_fragment: ip.is_fragment(),
        is_first_fragment,
        l4,
    })
}

/// `payload` is the IP payload, found at `l4_offset` in `frame`.
fn parse_l4(frame: &[u8], l4_offset: usize, protocol: u8, payload: &[u8]) -> Result<L4, WireError> {
    Ok(match protocol {
        PROTO_TCP => {
            let tcp = TcpSegment::new_checked(payload)?;
            L4::Tcp {
                src_port: tcp.src_port(),
                dst_port: tcp.dst_port(),
                flags: tcp.flags(),
                seq: tcp.seq_number(),
                ack: tcp.ack_number(),
            }
        }
        PROTO_UDP => {
            let udp = UdpDatagram::new_checked(payload)?;
            L4::Udp {
                src_port: udp.src_port(),
                dst_port: udp.dst_port(),
            }
        }
        PROTO_ICMP => {
            let msg = IcmpPacket::new_checked(payload)?;
            let (icmp_type, code) = (msg.msg_type(), msg.msg_code());
            match icmp_type {
                t if icmp::is_query(t) => L4::IcmpEcho {
                    icmp_type,
                    code,
                    ident: msg.echo_ident(),
                    seq: msg.echo_seq_no(),
                },
                t if icmp::is_error(t) => {
                    let inner = parse_inner(frame, l4_offset + icmp::HEADER_LEN, msg.data())?;
                    L4::IcmpError {
                        icmp_type,
                        code,
                        inner,
                    }
                }
                _ => L4::IcmpOther { icmp_type, code },
            }
        }
        _ => L4::Other,
    })
}

/// Option types a router checks on receipt (RFC 791 section 3.1).
const OPTION_END: u8 = 0;
const OPTION_NOP: u8 = 1;
const OPTION_RECORD_ROUTE: u8 = 7;
const OPTION_TIMESTAMP: u8 = 68;
const OPTION_LOOSE_ROUTE: u8 = 131;
const OPTION_STRICT_ROUTE: u8 = 137;
const OPTION_ROUTER_ALERT: u8 = 148;

/// Where the options of `header` (an IPv4 header with its options, IHL * 4 bytes) go wrong, as
/// Linux judges them on receipt (`__ip_options_compile` with a packet): the offset of the bad
/// octet from the header's start, the pointer of the ICMP parameter problem a Linux router
/// answers with before it drops the packet. `None` for options that hold (unknown types are
/// passed over by their length, as Linux does), or a header of 20 bytes.
pub fn ip_options_problem(header: &[u8]) -> Option<u8> {
    let bad = |at: usize| Some(u8::try_from(at).unwrap_or(u8::MAX));
    let end = header.len().min(60);
    let (mut rr, mut ts, mut srr) = (false, false, false);
    let mut at = ipv4::HEADER_LEN;
    while at < end {
        let kind = header[at];
        match kind {
            OPTION_END => return None,
            OPTION_NOP => {
                at += 1;
                continue;
            }
            _ => {}
        }
        let Some(&len) = header.get(at + 1).filter(|_| at + 1 < end) else {
            return bad(at);
        };
        let len = usize::from(len);
        if len < 2 || at + len > end {
            return bad(at);
        }
        let pointer = header.get(at + 2).map(|&p| usize::from(p));
        match kind {
            OPTION_LOOSE_ROUTE | OPTION_STRICT_ROUTE => match pointer {
                _ if len < 3 => return bad(at + 1),
                Some(p) if p < 4 => return bad(at + 2),
                _ if srr => return bad(at),
                _ => srr = true,
            },
            OPTION_RECORD_ROUTE => match pointer {
                _ if rr => return bad(at),
                _ if len < 3 => return bad(at + 1),
                Some(p) if p < 4 || (p <= len && p + 3 > len) => return bad(at + 2),
                _ => rr = true,
            },
            OPTION_TIMESTAMP => {
                if ts {
                    return bad(at);
                }
                if len < 4 {
                    return bad(at + 1);
                }
                let p = pointer.unwrap_or(0);
                let flags = header[at + 3];
                if p < 5 {
                    return bad(at + 2);
                }
                if p <= len {
                    // Room for the next entry: a time, or an address and a time.
                    let entry = if flags & 0x0f == 0 { 4 } else { 8 };
                    let known = matches!(flags & 0x0f, 0 | 1 | 3);
                    if p + 3 > len || (known && p + entry - 1 > len) {
                        return bad(at + 2);
                    }
                } else if flags & 0x0f != 3 && flags >> 4 == 15 {
                    // Full, and its overflow count can go no higher.
                    return bad(at + 3);
                }
                ts = true;
            }
            OPTION_ROUTER_ALERT if len < 4 => return bad(at + 1),
            _ => {}
        }
        at += len;
    }
    None
}

/// `quote` is the data of an ICMP error, found at `offset` in the frame.
fn parse_inner(frame: &[u8], offset: usize, quote: &[u8]) -> Result<InnerPacket, WireError> {
    debug_assert_eq!(frame.get(offset..offset + quote.len()), Some(quote));
    if quote.len() < ipv4::HEADER_LEN {
        return Err(WireError::BadIcmpQuote);
    }
    // Only the header has to be whole: the quoted total length describes the original packet,
    // of which the quote is a prefix.
    let ip = Ipv4Packet::new_unchecked(quote);
    let header_len = ip.header_len();
    if ip.version() != 4 || header_len < ipv4::HEADER_LEN || header_len > quote.len() {
        return Err(WireError::BadIcmpQuote);
    }
    let protocol = ip.protocol();
    let l4 = &quote[header_len..];
    let first = ip.frag_offset() == 0;
    let (src_port, dst_port, has_ports) = match protocol {
        PROTO_TCP | PROTO_UDP if first && l4.len() >= 4 => (get_u16(l4, 0), get_u16(l4, 2), true),
        PROTO_ICMP
            if first && l4.len() >= icmp::HEADER_LEN && icmp::is_query(l4[icmp::field::TYPE]) =>
        {
            let ident = get_u16(l4, icmp::field::ECHO_IDENT.start);
            (ident, ident, true)
        }
        _ => (0, 0, false),
    };
    Ok(InnerPacket {
        offset,
        header_len,
        protocol,
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        src_port,
        dst_port,
        has_ports,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::packet::checksum;
    use crate::packet::samples;
    use crate::packet::tcp::{ACK, SYN};

    const A: Ipv4Addr = Ipv4Addr::new(172, 211, 0, 18);
    const B: Ipv4Addr = Ipv4Addr::new(172, 211, 0, 17);

    /// A 20-byte header followed by `options`, IHL set to match (a multiple of 4).
    fn with_options(options: &[u8]) -> Vec<u8> {
        let mut h = vec![
            0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 1, 0, 0, 172, 211, 0, 20, 198, 51, 100, 10,
        ];
        h.extend_from_slice(options);
        h[0] = 0x40 | u8::try_from(h.len() / 4).unwrap();
        h
    }

    #[test]
    fn ip_options_that_hold_have_no_problem() {
        assert_eq!(ip_options_problem(&with_options(&[])), None);
        // ping -R: a NOP, then a record route of 9 slots, empty, full, or in between.
        let mut rr = vec![1, 7, 39, 4];
        rr.resize(40, 0);
        assert_eq!(ip_options_problem(&with_options(&rr)), None);
        rr[3] = 40;
        assert_eq!(ip_options_problem(&with_options(&rr)), None);
        rr[3] = 24;
        assert_eq!(ip_options_problem(&with_options(&rr)), None);
        // ping -T tsonly and tsandaddr, a router alert, an unknown option, End then garbage.
        let mut ts = vec![68, 40, 5, 0];
        ts.resize(40, 0);
        assert_eq!(ip_options_problem(&with_options(&ts)), None);
        let mut ts = vec![68, 36, 5, 1];
        ts.resize(36, 0);
        assert_eq!(ip_options_problem(&with_options(&ts)), None);
        assert_eq!(ip_options_problem(&with_options(&[148, 4, 0, 0])), None);
        assert_eq!(ip_options_problem(&with_options(&[30, 4, 9, 9])), None);
        assert_eq!(ip_options_problem(&with_options(&[0, 7, 0, 1])), None);
    }

    #[test]
    fn bad_ip_options_point_at_the_octet_linux_points_at() {
        let problem = |o: &[u8]| ip_options_problem(&with_options(o));
        // A record route whose pointer is below 4, or whose next slot runs past it.
        assert_eq!(problem(&[7, 7, 3, 0, 0, 0, 0, 0]), Some(22));
        assert_eq!(problem(&[1, 7, 7, 2, 0, 0, 0, 0]), Some(23));
        assert_eq!(problem(&[7, 7, 5, 0, 0, 0, 0, 0]), Some(22));
        assert_eq!(problem(&[7, 2, 0, 0]), Some(21), "too short for a pointer");
        // Its length past the header; an option length of 0 or 1, or past the header.
        assert_eq!(problem(&[7, 39, 4, 0, 0, 0, 0, 0]), Some(20));
        assert_eq!(problem(&[1, 1, 30, 0]), Some(22));
        assert_eq!(problem(&[30, 1, 0, 0]), Some(20));
        assert_eq!(problem(&[30, 9, 0, 0]), Some(20));
        assert_eq!(problem(&[1, 1, 1, 30]), Some(23), "no room for a length");
        // Two record routes.
        assert_eq!(problem(&[7, 3, 4, 7, 3, 4, 0, 0]), Some(23));
        // Timestamps: too short, pointer below 5, no room for the next entry, overflow spent.
        assert_eq!(problem(&[68, 3, 5, 0]), Some(21));
        assert_eq!(problem(&[68, 8, 4, 0, 0, 0, 0, 0]), Some(22));
        assert_eq!(problem(&[68, 8, 6, 0, 0, 0, 0, 0]), Some(22));
        assert_eq!(
            problem(&[68, 8, 5, 1, 0, 0, 0, 0]),
            Some(22),
            "no room for address and time"
        );
        assert_eq!(problem(&[68, 8, 9, 0xf0, 0, 0, 0, 0]), Some(23));
        assert_eq!(
            problem(&[68, 8, 9, 0xe0, 0, 0, 0, 0]),
            None,
            "full, overflow counted"
        );
        // A router alert too short; a header cut short of its IHL finds the length missing.
        assert_eq!(problem(&[148, 2, 0, 0]), Some(21));
        let mut cut = with_options(&[7, 7, 4, 0, 0, 0, 0, 0]);
        cut.truncate(24);
        assert_eq!(ip_options_problem(&cut), Some(20));
    }

    /// Recomputes the IP header checksum of a frame edited by a test.
    pub(crate) fn fix_ip_checksum(frame: &mut [u8]) {
        let hl = usize::from(frame[14] & 0x0f) * 4;
        let c = checksum::ipv4_header_checksum(&frame[14..14 + hl]);
        frame[24..26].copy_from_slice(&c.to_be_bytes());
    }

    fn ipv4(frame: &[u8]) -> Ipv4Info {
        match parse_frame(frame).unwrap().l3 {
            L3::Ipv4(ip) => ip,
            other => panic!("not IPv4: {other:?}"),
        }
    }

    /// The fast parse agrees with `parse_frame` wherever it answers, on every sample, every
    /// truncation and every single-bit mutant (IP header checksum made right, so the mutants
    /// reach the transport header), and answers for the captured TCP and UDP frames.
    #[test]
    fn fast_parse_agrees_with_parse_frame() {
        let check = |frame: &[u8]| -> bool {
            let Some(fast) = parse_ipv4_fast(frame) else {
                return false;
            };
            let parsed = parse_frame(frame).unwrap();
            assert_eq!(parsed.l3, L3::Ipv4(fast), "{frame:02x?}");
            true
        };
        for sample in [
            &samples::TCP_SYN[..],
            &samples::TCP_RST_ACK,
            &samples::UDP_DNS,
            &samples::TCP_SYN_PARTIAL,
        ] {
            assert!(check(sample), "{sample:02x?}");
        }
        let mut answered = 0;
        for sample in samples::ALL {
            for n in 0..=sample.len() {
                answered += usize::from(check(&sample[..n]));
            }
            for bit in 0..sample.len() * 8 {
                let mut frame = sample.to_vec();
                frame[bit / 8] ^= 1 << (bit % 8);
                if frame.len() >= 34 && frame[14] == 0x45 {
                    fix_ip_checksum(&mut frame);
                }
                answered += usize::from(check(&frame));
            }
        }
        assert!(answered > 1000, "{answered}");
        // The header checksum (summed by each its own way): on a frame whose header has a
        // flipped bit, the right value of the field, each of its one-bit neighbours, its byte
        // swap, 0 and 0xffff are taken by both or by neither.
        let mut taken = 0;
        for sample in [&samples::UDP_DNS[..], &samples::TCP_SYN] {
            for bit in 14 * 8..34 * 8 {
                let mut frame = sample.to_vec();
                frame[bit / 8] ^= 1 << (bit % 8);
                frame[24..26].fill(0);
                let right = crate::packet::checksum::ipv4_header_checksum(&frame[14..34]);
                let neighbours = (0..16).map(|k| right ^ (1 << k));
                let values = [right, right.swap_bytes(), 0, 0xffff];
                for csum in values.into_iter().chain(neighbours) {
                    frame[24..26].copy_from_slice(&csum.to_be_bytes());
                    let general = parse_frame(&frame)
                        .is_ok_and(|p| matches!(p.l3, L3::Ipv4(ip) if !ip.is_fragment));
                    if frame[23] == PROTO_UDP || frame[23] == PROTO_TCP {
                        assert_eq!(check(&frame), general, "{frame:02x?}");
                        taken += usize::from(general);
                    }
                }
            }
        }
        assert!(taken > 100, "{taken}");
        // Options, fragments and ICMP are left to `parse_frame`.
        assert_eq!(parse_ipv4_fast(&samples::ICMP_ECHO_REQUEST), None);
        let mut frag = samples::UDP_DNS.to_vec();
        frag[20] |= 0x20; // MF
        fix_ip_checksum(&mut frag);
        assert!(matches!(parse_frame(&frag).unwrap().l3, L3::Ipv4(_)));
        assert_eq!(parse_ipv4_fast(&frag), None);
    }

    #[test]
    fn captured_arp_request() {
        let parsed = parse_frame(&samples::ARP_REQUEST).unwrap();
        assert_eq!(parsed.dst_mac, MacAddr::BROADCAST);
        assert_eq!(parsed.src_mac.to_string(), "02:ac:d3:00:00:12");
        assert_eq!(parsed.ethertype, ETHERTYPE_ARP);
        let L3::Arp(arp) = parsed.l3 else {
            panic!("{parsed:?}")
        };
        assert_eq!(
            arp,
            ArpInfo {
                operation: 1,
                sender_mac: parsed.src_mac,
                sender_ip: A,
                target_mac: MacAddr::ZERO,
                target_ip: B,
            }
        );
    }

    #[test]
    fn captured_echo_request() {
        let ip = ipv4(&samples::ICMP_ECHO_REQUEST);
        assert_eq!((ip.offset, ip.header_len, ip.total_len), (14, 20, 52));
        assert_eq!(
            (ip.ttl, ip.protocol, ip.src, ip.dst),
            (64, PROTO_ICMP, A, B)
        );
        assert!(!ip.is_fragment && ip.is_first_fragment);
        assert_eq!(
            ip.l4,
            L4::IcmpEcho {
                icmp_type: 8,
                code: 0,
                ident: 3749,
                seq: 1
            }
        );
        assert_eq!((ip.l4_offset(), ip.end()), (34, 66));
    }

    #[test]
    fn captured_tcp_syn_and_rst() {
        let ip = ipv4(&samples::TCP_SYN);
        assert_eq!(
            ip.l4,
            L4::Tcp {
                src_port: 60698,
                dst_port: 8080,
                flags: SYN,
                seq: 4019171490,
                ack: 0
            }
        );
        let ip = ipv4(&samples::TCP_RST_ACK);
        assert_eq!(
            ip.l4,
            L4::Tcp {
                src_port: 8080,
                dst_port: 60698,
                flags: 0x14,
                seq: 0,
                ack: 4019171491
            }
        );
        assert_eq!(ACK, 0x10);
    }

    #[test]
    fn captured_udp_and_its_port_unreachable() {
        assert_eq!(
            ipv4(&samples::UDP_DNS).l4,
            L4::Udp {
                src_port: 57087,
                dst_port: 5353
            }
        );
        let ip = ipv4(&samples::ICMP_PORT_UNREACHABLE);
        assert_eq!((ip.src, ip.dst), (B, A));
        let L4::IcmpError {
            icmp_type: 3,
            code: 3,
            inner,
        } = ip.l4
        else {
            panic!("{:?}", ip.l4)
        };
        assert_eq!(
            inner,
            InnerPacket {
                offset: 42,
                header_len: 20,
                protocol: PROTO_UDP,
                src: A,
                dst: B,
                src_port: 57087,
                dst_port: 5353,
                has_ports: true,
            }
        );
        assert_eq!(inner.l4_offset(), 62);
    }

    #[test]
    fn padding_is_accepted_not_parsed() {
        let mut frame = samples::TCP_RST_ACK.to_vec();
        frame.resize(60, 0xee);
        let ip = ipv4(&frame);
        assert_eq!((ip.total_len, ip.end()), (40, 54));
        let mut frame = samples::ARP_REQUEST.to_vec();
        frame.resize(60, 0);
        assert!(matches!(parse_frame(&frame).unwrap().l3, L3::Arp(_)));
    }

    #[test]
    fn every_truncation_is_an_error_or_a_valid_parse() {
        for sample in samples::ALL {
            let whole = parse_frame(sample).unwrap();
            for len in 0..sample.len() {
                match parse_frame(&sample[..len]) {
                    // Only ARP survives a cut (it is shorter than the 60-byte minimum already)
                    // and only when nothing of the ARP packet is lost.
                    Ok(p) => assert!(matches!(p.l3, L3::Arp(_)) && len >= 42, "{len}: {p:?}"),
                    Err(e) => assert!(len < sample.len(), "{e}"),
                }
            }
            assert_eq!(parse_frame(sample).unwrap(), whole);
        }
    }

    #[test]
    fn every_single_bit_flip_parses_or_fails_cleanly() {
        for sample in samples::ALL {
            let mut frame = sample.to_vec();
            for bit in 0..frame.len() * 8 {
                frame[bit / 8] ^= 1 << (bit % 8);
                let _ = parse_frame(&frame);
                // And with the header checksum made right again, to reach the deeper layers.
                if frame.len() >= 34 && frame[12..14] == [0x08, 0x00] && frame[14] & 0x0f == 5 {
                    let saved = [frame[24], frame[25]];
                    fix_ip_checksum(&mut frame);
                    let _ = parse_frame(&frame);
                    frame[24..26].copy_from_slice(&saved);
                }
                frame[bit / 8] ^= 1 << (bit % 8);
            }
        }
    }

    #[test]
    fn ipv4_lengths_and_checksum_are_enforced() {
        let edit = |at: usize, v: u8| {
            let mut f = samples::TCP_SYN.to_vec();
            f[at] = v;
            fix_ip_checksum(&mut f);
            parse_frame(&f).err()
        };
        for ihl in 0..5 {
            assert_eq!(
                edit(14, 0x40 | ihl),
                Some(WireError::BadHeaderLength),
                "IHL {ihl}"
            );
        }
        assert_eq!(edit(14, 0x55), Some(WireError::BadVersion));
        assert_eq!(edit(17, 19), Some(WireError::BadTotalLength)); // total 19 < IHL*4
        assert_eq!(edit(17, 61), Some(WireError::BadTotalLength)); // total 61 > 60 present
        assert_eq!(edit(17, 50), Some(WireError::BadDataOffset)); // 40-byte TCP header in 30
        assert_eq!(edit(17, 30), Some(WireError::Truncated)); // 10 bytes of TCP
        let mut f = samples::TCP_SYN.to_vec();
        f[22] -= 1; // TTL, checksum left stale
        assert_eq!(parse_frame(&f).err(), Some(WireError::BadChecksum));
    }

    #[test]
    fn header_options_move_the_transport_header() {
        // Rebuild the UDP sample with 4 bytes of options (an End of Options list).
        let mut f = samples::UDP_DNS[..34].to_vec();
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(&samples::UDP_DNS[34..]);
        f[14] = 0x46;
        f[17] += 4;
        fix_ip_checksum(&mut f);
        let ip = ipv4(&f);
        assert_eq!((ip.header_len, ip.l4_offset()), (24, 38));
        assert_eq!(
            ip.l4,
            L4::Udp {
                src_port: 57087,
                dst_port: 5353
            }
        );
    }

    #[test]
    fn fragments() {
        // A later fragment (offset 8 bytes): no transport header is read, whatever it looks like.
        let mut f = samples::UDP_DNS.to_vec();
        f[20..22].copy_from_slice(&0x0001u16.to_be_bytes());
        fix_ip_checksum(&mut f);
        let ip = ipv4(&f);
        assert!(ip.is_fragment && !ip.is_first_fragment);
        assert_eq!(ip.l4, L4::Other);
        // A first fragment (MF) has its transport header parsed.
        f[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
        fix_ip_checksum(&mut f);
        let ip = ipv4(&f);
        assert!(ip.is_fragment && ip.is_first_fragment);
        assert_eq!(
            ip.l4,
            L4::Udp {
                src_port: 57087,
                dst_port: 5353
            }
        );
        // A first fragment too short for a TCP header (RFC 1858's tiny fragment) is refused.
        let mut f = samples::TCP_SYN[..42].to_vec();
        f[17] = 28;
        f[20] = 0x20;
        fix_ip_checksum(&mut f);
        assert_eq!(parse_frame(&f).err(), Some(WireError::Truncated));
    }

    #[test]
    fn other_arp_and_other_ethertypes() {
        let mut f = samples::ARP_REQUEST;
        f[19] = 16; // hardware address length
        assert_eq!(parse_frame(&f).err(), Some(WireError::UnsupportedArp));
        let mut f = samples::TCP_SYN;
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        let p = parse_frame(&f).unwrap();
        assert_eq!((p.ethertype, p.l3), (0x86dd, L3::Other));
    }

    #[test]
    fn icmp_quotes() {
        // Keep the captured port unreachable but cut its quote to `n` bytes.
        let cut = |n: usize| {
            let mut f = samples::ICMP_PORT_UNREACHABLE[..42 + n].to_vec();
            f[16..18].copy_from_slice(&((28 + n) as u16).to_be_bytes());
            fix_ip_checksum(&mut f);
            parse_frame(&f)
        };
        for n in 0..20 {
            assert_eq!(cut(n).err(), Some(WireError::BadIcmpQuote), "quote of {n}");
        }
        for n in 20..24 {
            let L3::Ipv4(ip) = cut(n).unwrap().l3 else {
                panic!()
            };
            let L4::IcmpError { inner, .. } = ip.l4 else {
                panic!()
            };
            assert!(!inner.has_ports && inner.src_port == 0, "quote of {n}");
        }
        let L3::Ipv4(ip) = cut(24).unwrap().l3 else {
            panic!()
        };
        let L4::IcmpError { inner, .. } = ip.l4 else {
            panic!()
        };
        assert!(inner.has_ports && (inner.src_port, inner.dst_port) == (57087, 5353));
        // A quoted header of the wrong version is refused.
        let mut f = samples::ICMP_PORT_UNREACHABLE.to_vec();
        f[42] = 0x65;
        assert_eq!(parse_frame(&f).err(), Some(WireError::BadIcmpQuote));
    }

    #[test]
    fn icmp_error_quoting_an_echo_has_its_ident() {
        // Time exceeded for the captured echo request, quoting it whole.
        let mut out = [0u8; 128];
        let n = crate::packet::build::build_icmp_error(
            &mut out,
            MacAddr([2, 0, 0, 0, 0, 1]),
            MacAddr([2, 0, 0, 0, 0, 2]),
            Ipv4Addr::new(172, 211, 0, 1),
            icmp::TIME_EXCEEDED,
            0,
            0,
            &samples::ICMP_ECHO_REQUEST[14..],
        )
        .unwrap();
        let ip = ipv4(&out[..n]);
        let L4::IcmpError {
            icmp_type: 11,
            code: 0,
            inner,
        } = ip.l4
        else {
            panic!("{:?}", ip.l4)
        };
        assert_eq!((inner.protocol, inner.src, inner.dst), (PROTO_ICMP, A, B));
        assert!(inner.has_ports && inner.src_port == 3749 && inner.dst_port == 3749);
    }
}
