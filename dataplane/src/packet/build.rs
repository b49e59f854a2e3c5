//! Frames the router writes itself (ARP replies and requests, echo replies, ICMP errors, TCP
//! resets) and generic frames for tests and benches.
//!
//! Every builder writes into a caller's buffer and returns the length written, or `None` when the
//! buffer is too small or the inputs cannot make a valid frame: no allocation, no panic (STYLE.md:
//! outputs go into caller buffers, as in quinn-proto). Frames are not padded to Ethernet's 60-byte
//! minimum: a TAP does not need it and Linux does not pad on veth or TAP either.
//!
//! What goes into the router's own headers, and why:
//! - IPv4: identification 0 (an unfragmentable packet needs none, RFC 6864 section 4.1), TTL 64.
//! - ICMP errors: precedence 6 (RFC 1812 section 4.3.2.5) over the offending packet's TOS
//!   masked with 0x1e, as Linux's `icmp_send` sets it (0xb8 gives 0xd8), DF clear so the error can
//!   reach its destination whatever the path MTU, at most 576 bytes (RFC 1812 section 4.3.2.3).
//!   Whether an error may be sent at all (not about an ICMP error, a broadcast, a non-first
//!   fragment: RFC 1812 section 4.3.2.7) is the caller's decision.
//! - TCP resets follow RFC 9293 section 3.10.7.1 and are never sent in answer to a reset.

use std::net::Ipv4Addr;

use super::arp::{ArpPacket, ARP_OP_REPLY, ARP_OP_REQUEST, PACKET_LEN as ARP_LEN};
use super::checksum::update16;
use super::ethernet::{self, mac_at, EthernetFrame, ETHERTYPE_ARP, ETHERTYPE_IPV4};
use super::icmp::{self, IcmpPacket, DEST_UNREACHABLE, ECHO_REPLY, ECHO_REQUEST, FRAG_NEEDED};
use super::ipv4::{self, Ipv4Packet, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use super::parse::{Ipv4Info, L4};
use super::rewrite::set_macs;
use super::tcp::{self, TcpSegment, ACK, RST};
use super::udp::{self, UdpDatagram};
use super::MacAddr;

const ETH_LEN: usize = ethernet::HEADER_LEN;
const IP_LEN: usize = ipv4::HEADER_LEN;
const L4_AT: usize = ETH_LEN + IP_LEN;

/// The TTL of packets the router originates.
pub const DEFAULT_TTL: u8 = 64;
/// Precedence of ICMP errors: 6, internetwork control (RFC 1812 section 4.3.2.5).
pub const ICMP_ERROR_TOS: u8 = 0xc0;
/// The bits of an offending packet's TOS an ICMP error keeps (Linux's `IPTOS_TOS_MASK`: not the
/// precedence, nor the low ECN bit).
const TOS_MASK: u8 = 0x1e;
/// The most of the original packet an ICMP error quotes: 576 - 20 - 8, so that the error fits in
/// the 576 bytes every host accepts (RFC 1812 section 4.3.2.3).
pub const MAX_ICMP_QUOTE: usize = 576 - IP_LEN - icmp::HEADER_LEN;

/// An ARP reply telling `to_mac`/`to_ip` that `our_ip` is at `our_mac` (RFC 826).
pub fn build_arp_reply(
    out: &mut [u8],
    our_mac: MacAddr,
    our_ip: Ipv4Addr,
    to_mac: MacAddr,
    to_ip: Ipv4Addr,
) -> Option<usize> {
    emit_arp(out, ARP_OP_REPLY, our_mac, our_ip, to_mac, to_mac, to_ip)
}

/// A broadcast ARP request for `target_ip` (RFC 826; the target hardware address is zero, as
/// Linux sends it).
pub fn build_arp_request(
    out: &mut [u8],
    src_mac: MacAddr,
    src_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
) -> Option<usize> {
    emit_arp(
        out,
        ARP_OP_REQUEST,
        src_mac,
        src_ip,
        MacAddr::BROADCAST,
        MacAddr::ZERO,
        target_ip,
    )
}

fn emit_arp(
    out: &mut [u8],
    op: u16,
    sender_mac: MacAddr,
    sender_ip: Ipv4Addr,
    eth_dst: MacAddr,
    target_mac: MacAddr,
    target_ip: Ipv4Addr,
) -> Option<usize> {
    let len = ETH_LEN + ARP_LEN;
    let out = out.get_mut(..len)?;
    emit_ethernet(out, sender_mac, eth_dst, ETHERTYPE_ARP);
    let mut arp = ArpPacket::new_unchecked(&mut out[ETH_LEN..]);
    arp.set_ethernet_ipv4();
    arp.set_operation(op);
    arp.set_sender_hardware_addr(sender_mac);
    arp.set_sender_protocol_addr(sender_ip);
    arp.set_target_hardware_addr(target_mac);
    arp.set_target_protocol_addr(target_ip);
    Some(len)
}

/// Whether an ICMP message (header and data) sums to its checksum (RFC 792). The replies below
/// only update the request's checksum for the type (RFC 1624), so a request that fails this
/// would be answered with a reply that fails it too: like Linux (`icmp_rcv`, counted as
/// `InCsumErrors`), the router drops such a request instead.
pub fn icmp_checksum_ok(msg: &[u8]) -> bool {
    super::checksum::fold(super::checksum::sum(msg, 0)) == 0xffff
}

/// Turns an echo request into its reply in place (RFC 792): MACs swapped (the reply comes from
/// `router_mac`), addresses swapped, type 0, the ICMP checksum updated for the type change alone
/// (RFC 1624), TTL reset to 64, don't-fragment clear (Linux answers from a socket that does
/// not set it, so a reply past the MTU may be cut) and the header checksum recomputed. A
/// record-route option (`ping -R`) is echoed as Linux echoes it ([`record_route_echo`]);
/// other IP options are sent back as they came. Returns the reply's frame length (the request's, trimmed to its IP total length),
/// or `None` if `ip` is not an echo request of this frame or its checksum is wrong
/// ([`icmp_checksum_ok`]); the frame is then untouched.
pub fn make_echo_reply_in_place(
    frame: &mut [u8],
    ip: &Ipv4Info,
    router_mac: MacAddr,
) -> Option<usize> {
    let L4::IcmpEcho {
        icmp_type: ECHO_REQUEST,
        code,
        ..
    } = ip.l4
    else {
        return None;
    };
    let end = ip.end();
    let icmp_at = ip.l4_offset();
    if frame.len() < end
        || icmp_at + icmp::HEADER_LEN > end
        || ip.offset < ETH_LEN
        || !icmp_checksum_ok(&frame[icmp_at..end])
    {
        return None;
    }
    let requester = mac_at(frame, ethernet::field::SOURCE.start);
    set_macs(frame, router_mac, requester);

    let header = &mut frame[ip.offset..icmp_at];
    let (src, dst) = (ipv4::field::SRC_ADDR, ipv4::field::DST_ADDR);
    let (head, tail) = header.split_at_mut(dst.start);
    head[src].swap_with_slice(&mut tail[..4]);
    let mut packet = Ipv4Packet::new_unchecked(header);
    packet.set_ttl(DEFAULT_TTL);
    packet.set_unfragmented(false);
    let answering = packet.src_addr();
    record_route_echo(&mut frame[ip.offset + IP_LEN..icmp_at], answering);
    let mut packet = Ipv4Packet::new_unchecked(&mut frame[ip.offset..icmp_at]);
    packet.fill_checksum();

    let mut msg = IcmpPacket::new_unchecked(&mut frame[icmp_at..end]);
    let old = u16::from_be_bytes([ECHO_REQUEST, code]);
    let new = u16::from_be_bytes([ECHO_REPLY, code]);
    msg.set_msg_type(ECHO_REPLY);
    let csum = update16(msg.checksum(), old, new);
    msg.set_checksum(csum);
    Some(end)
}

/// Sets the IP identification of the IPv4 packet in `frame` to `ident`, its header checksum
/// updated (RFC 1624). A frame too short for an IPv4 header is left as it is.
pub fn set_ident(frame: &mut [u8], ident: u16) {
    let Some(header) = frame.get_mut(ETH_LEN..L4_AT) else {
        return;
    };
    let at = ipv4::field::IDENT.start;
    let csum_at = ipv4::field::CHECKSUM.start;
    let old = u16::from_be_bytes([header[at], header[at + 1]]);
    let csum = u16::from_be_bytes([header[csum_at], header[csum_at + 1]]);
    header[at..at + 2].copy_from_slice(&ident.to_be_bytes());
    header[csum_at..csum_at + 2].copy_from_slice(&update16(csum, old, ident).to_be_bytes());
}

/// The options of an echo request that hold a record route (RFC 791: `ping -R` sends a NOP
/// and one), turned into the reply's as Linux turns them (`ip_options_compile` records the
/// answering address on receipt, `ip_options_echo` copies the option without the NOPs and
/// records it again on sending): the option first, the answering address in its next two
/// free slots (as many as are free), the rest end-of-options. So `ping -R` lists the gateway
/// twice, as a Linux router. Options of any other shape are left as they are.
fn record_route_echo(options: &mut [u8], answering: Ipv4Addr) {
    let mut at = 0;
    let mut rr = None;
    while at < options.len() {
        match options[at] {
            0 => break,
            1 => at += 1,
            7 if rr.is_none() => {
                let len = usize::from(*options.get(at + 1).unwrap_or(&0));
                if len < 3 || at + len > options.len() {
                    return;
                }
                rr = Some((at, len));
                at += len;
            }
            _ => return,
        }
    }
    let Some((start, len)) = rr else { return };
    let mut option = [0u8; 40];
    option[..len].copy_from_slice(&options[start..start + len]);
    for _ in 0..2 {
        let pointer = usize::from(option[2]);
        if pointer < 4 || pointer + 3 > len {
            break;
        }
        option[pointer - 1..pointer + 3].copy_from_slice(&answering.octets());
        option[2] += 4;
    }
    options.fill(0);
    options[..len].copy_from_slice(&option[..len]);
}

/// An ICMP error (RFC 792) from `from_ip` to the source of `original`, the offending IP packet
/// from its header on, trimmed to its total length. Quotes up to [`MAX_ICMP_QUOTE`] bytes of it
/// (RFC 1812 section 4.3.2.3: at least the header and 8 bytes; Linux quotes as much as fits in
/// 576). `info` is the next-hop MTU of a "fragmentation needed" (RFC 1191), the pointer of a
/// parameter problem (its low byte, the offset of the bad octet), and ignored otherwise.
/// TTL 64, DF clear, TOS 0xc0 with the original's TOS bits (0xd8 for 0xb8, as Linux), both
/// checksums computed. `None` if `original` is shorter than an
/// IP header or `out` is too small.
#[allow(clippy::too_many_arguments)]
pub fn build_icmp_error(
    out: &mut [u8],
    src_mac: MacAddr,
    dst_mac: MacAddr,
    from_ip: Ipv4Addr,
    icmp_type: u8,
    code: u8,
    info: u16,
    original: &[u8],
) -> Option<usize> {
    let to_ip = Ipv4Packet::new_unchecked(original.get(..IP_LEN)?).src_addr();
    let tos = ICMP_ERROR_TOS | (original[1] & TOS_MASK);
    let quote = &original[..original.len().min(MAX_ICMP_QUOTE)];
    let icmp_len = icmp::HEADER_LEN + quote.len();
    let head = Ipv4Head {
        src: from_ip,
        dst: to_ip,
        ttl: DEFAULT_TTL,
        protocol: PROTO_ICMP,
        tos,
        dont_frag: false,
    };
    let len = emit_headers(out, src_mac, dst_mac, &head, icmp_len)?;
    let mut msg = IcmpPacket::new_unchecked(&mut out[L4_AT..len]);
    msg.set_msg_type(icmp_type);
    msg.set_msg_code(code);
    let mtu = if (icmp_type, code) == (DEST_UNREACHABLE, FRAG_NEEDED) {
        info
    } else {
        0
    };
    msg.set_next_hop_mtu(mtu);
    msg.data_mut().copy_from_slice(quote);
    if icmp_type == icmp::PARAM_PROBLEM {
        // The pointer: the first of the four type-specific bytes (RFC 792).
        out[L4_AT + 4] = info.to_be_bytes()[1];
    }
    IcmpPacket::new_unchecked(&mut out[L4_AT..len]).fill_checksum();
    Some(len)
}

/// Fragment `index` (from 0) of the echo reply to `request`, an echo request whole (an IPv4
/// datagram from its header on, as [`crate::reassembly`] puts it together), into `out` as an
/// Ethernet frame from `router_mac` to `peer_mac`. The reply is cut into fragments of at most
/// `mtu` bytes of IP (RFC 791 section 3.2: payloads in multiples of 8 bytes, more-fragments on
/// all but the last), with the request's identification and TOS (Linux's `icmp_reply` copies
/// it), TTL 64, no options, addresses
/// swapped; its ICMP checksum is the request's updated for the type (RFC 1624), as
/// [`make_echo_reply_in_place`] does. The frame's length and whether it is the last fragment;
/// `None` past the last, when `request` is no echo request, or when `out` is too small.
pub fn echo_reply_fragment(
    out: &mut [u8],
    router_mac: MacAddr,
    peer_mac: MacAddr,
    request: &[u8],
    mtu: usize,
    index: usize,
) -> Option<(usize, bool)> {
    let header_len = usize::from(request.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*request.get(2)?, *request.get(3)?]));
    let msg = request.get(header_len..total)?;
    if header_len < IP_LEN
        || request.get(ipv4::field::PROTOCOL) != Some(&PROTO_ICMP)
        || msg.len() < icmp::HEADER_LEN
        || msg[0] != ECHO_REQUEST
        || mtu < IP_LEN + 8
    {
        return None;
    }
    let step = (mtu - IP_LEN) / 8 * 8;
    let start = index.checked_mul(step)?;
    if start >= msg.len() {
        return None;
    }
    let end = msg.len().min(start + step);
    let last = end == msg.len();
    let len = L4_AT + (end - start);
    let frame = out.get_mut(..len)?;

    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.set_dst_addr(peer_mac);
    eth.set_src_addr(router_mac);
    eth.set_ethertype(ETHERTYPE_IPV4);

    let ip = &mut frame[ETH_LEN..L4_AT];
    ip.fill(0);
    ip[0] = 0x45;
    ip[1] = request[1];
    ip[2..4].copy_from_slice(&((IP_LEN + end - start) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&request[4..6]);
    let more = if last { 0 } else { ipv4::FLAG_MF };
    ip[6..8].copy_from_slice(&(more | (start / 8) as u16).to_be_bytes());
    ip[8] = DEFAULT_TTL;
    ip[9] = PROTO_ICMP;
    ip[12..16].copy_from_slice(request.get(16..20)?);
    ip[16..20].copy_from_slice(request.get(12..16)?);
    let sum = super::checksum::ipv4_header_checksum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());

    let payload = &mut frame[L4_AT..];
    payload.copy_from_slice(&msg[start..end]);
    if index == 0 {
        let code = msg[1];
        let csum = u16::from_be_bytes([msg[2], msg[3]]);
        let old = u16::from_be_bytes([ECHO_REQUEST, code]);
        let new = u16::from_be_bytes([ECHO_REPLY, code]);
        payload[0] = ECHO_REPLY;
        payload[2..4].copy_from_slice(&update16(csum, old, new).to_be_bytes());
    }
    Some((len, last))
}

/// Fragment `index` (from 0) of `frame`, an Ethernet frame holding an IPv4 packet (whole, or
/// itself a fragment), cut into fragments of at most `mtu` bytes of IP as a router cuts a
/// packet bigger than the next hop's MTU (RFC 791 section 3.2; RFC 1812 section 5.2.6): each
/// payload a multiple of 8 bytes but the last, the offsets counted from the packet's own, the
/// more-fragments flag on all but the last (which keeps the packet's own); the first fragment
/// keeps every option, the others those whose copied flag is set. The Ethernet header, the
/// identification, TTL and TOS are the packet's; the header checksum is computed. The
/// fragment's length and whether it is the last; `None` past the last, for a frame that does
/// not hold the IPv4 packet its header claims, or when `out` is too small.
pub fn fragment(out: &mut [u8], frame: &[u8], mtu: usize, index: usize) -> Option<(usize, bool)> {
    let packet = frame.get(ETH_LEN..)?;
    let header_len = usize::from(packet.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
    let header = packet.get(..header_len)?;
    let payload = packet.get(header_len..total)?;
    if header_len < IP_LEN || mtu < header_len + 8 {
        return None;
    }
    let flags = u16::from_be_bytes([header[6], header[7]]);
    let base = usize::from(flags & 0x1fff) * 8;
    let more_after = flags & ipv4::FLAG_MF != 0;

    // The header of the fragments past the first: the options to copy, padded to 32 bits.
    let mut later = [0u8; 60];
    later[..IP_LEN].copy_from_slice(&header[..IP_LEN]);
    let mut later_len = IP_LEN;
    let mut at = IP_LEN;
    while at < header_len {
        let kind = header[at];
        let len = match kind {
            0 => break,
            1 => 1,
            _ => usize::from(*header.get(at + 1)?).max(2),
        };
        let option = header.get(at..at + len)?;
        if kind & 0x80 != 0 {
            later[later_len..later_len + len].copy_from_slice(option);
            later_len += len;
        }
        at += len;
    }
    let later_len = later_len.div_ceil(4) * 4;
    later[0] = 0x40 | (later_len / 4) as u8;

    // Fragment i starts where the ones before it ended: the first carries less when its header
    // is longer.
    let first_step = (mtu - header_len) / 8 * 8;
    let step = (mtu - later_len) / 8 * 8;
    let (start, head) = if index == 0 {
        (0, header)
    } else {
        (
            first_step + (index - 1).checked_mul(step)?,
            &later[..later_len],
        )
    };
    if start >= payload.len() && !(index == 0 && payload.is_empty()) {
        return None;
    }
    let end = payload
        .len()
        .min(start + if index == 0 { first_step } else { step });
    let last = end == payload.len();
    let ip_len = head.len() + end - start;
    let len = ETH_LEN + ip_len;
    let out = out.get_mut(..len)?;
    out[..ETH_LEN].copy_from_slice(frame.get(..ETH_LEN)?);
    let ip = &mut out[ETH_LEN..];
    ip[..head.len()].copy_from_slice(head);
    ip[2..4].copy_from_slice(&u16::try_from(ip_len).ok()?.to_be_bytes());
    let more = if last && !more_after {
        0
    } else {
        ipv4::FLAG_MF
    };
    let offset = u16::try_from((base + start) / 8).ok()?;
    let keep = flags & !(ipv4::FLAG_MF | 0x1fff);
    ip[6..8].copy_from_slice(&(keep | more | offset).to_be_bytes());
    ip[10..12].fill(0);
    let sum = super::checksum::ipv4_header_checksum(&ip[..head.len()]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip[head.len()..].copy_from_slice(&payload[start..end]);
    Some((len, last))
}

/// Ages an answer the router built at a gateway `hops` routers in from the port it leaves by:
/// on its way back each of them forwards it and takes one off its TTL (RFC 791), as each took
/// one off the packet it answers on the way in. So `ping` shows ttl=63 from a gateway one
/// router away, as from a kernel router one hop off. An ICMP error's quote loses the same
/// steps: it shows the packet as it reached the gateway that answers (RFC 1812 section 4.3.2.3
/// quotes the header as received; a TTL that ran out reads 1 there, as Linux quotes it), its
/// addresses still as the sender wrote them. Checksums are updated (RFC 1624 for the quote's
/// header, the ICMP checksum recomputed). A frame that does not hold the IPv4 packet its header
/// claims, and any frame when `hops` is 0, is left as it is.
pub fn age_answer(frame: &mut [u8], hops: u8) {
    if hops > 0 {
        let _ = try_age_answer(frame, hops);
    }
}

fn try_age_answer(frame: &mut [u8], hops: u8) -> Option<()> {
    let mut ip = Ipv4Packet::new_checked(frame.get_mut(ETH_LEN..)?).ok()?;
    ip.set_ttl(ip.ttl().saturating_sub(hops));
    ip.fill_checksum();
    let (header_len, total_len, protocol) = (ip.header_len(), ip.total_len(), ip.protocol());
    if protocol != PROTO_ICMP {
        return Some(());
    }
    let msg = frame.get_mut(ETH_LEN + header_len..ETH_LEN + total_len)?;
    if !matches!(msg.first(), Some(&(DEST_UNREACHABLE | icmp::TIME_EXCEEDED))) {
        return Some(());
    }
    let quote = msg.get_mut(icmp::HEADER_LEN..)?;
    let word_at = ipv4::field::TTL;
    let csum_at = ipv4::field::CHECKSUM;
    let old = u16::from_be_bytes([*quote.get(word_at)?, *quote.get(word_at + 1)?]);
    let csum = u16::from_be_bytes([*quote.get(csum_at.start)?, *quote.get(csum_at.start + 1)?]);
    let ttl = (old >> 8) as u8;
    let new = (u16::from(ttl.saturating_sub(hops)) << 8) | (old & 0x00ff);
    quote[word_at..word_at + 2].copy_from_slice(&new.to_be_bytes());
    quote[csum_at].copy_from_slice(&update16(csum, old, new).to_be_bytes());
    IcmpPacket::new_unchecked(msg).fill_checksum();
    Some(())
}

/// A TCP reset answering the segment `ip` describes in `frame` (RFC 9293 section 3.10.7.1): it
/// appears to come from the segment's destination (addresses and ports swapped). If the segment
/// has ACK, the reset takes its sequence number from that acknowledgment and carries no ACK;
/// otherwise it has sequence number 0 and acknowledges everything the segment occupied (data,
/// plus one for SYN and one for FIN). `None` for a segment that is itself a reset, for anything
/// that is not TCP, or when `out` is too small.
pub fn build_tcp_rst(
    out: &mut [u8],
    src_mac: MacAddr,
    dst_mac: MacAddr,
    frame: &[u8],
    ip: &Ipv4Info,
) -> Option<usize> {
    let L4::Tcp {
        src_port,
        dst_port,
        flags,
        seq,
        ack,
    } = ip.l4
    else {
        return None;
    };
    if flags & RST != 0 {
        return None;
    }
    let segment = TcpSegment::new_checked(frame.get(ip.l4_offset()..ip.end())?).ok()?;
    let (rst_seq, rst_ack, rst_flags) = if flags & ACK != 0 {
        (ack, 0, RST)
    } else {
        (0, seq.wrapping_add(segment.segment_len()), RST | ACK)
    };
    let head = Ipv4Head::new(ip.dst, ip.src, DEFAULT_TTL, PROTO_TCP);
    let fields = TcpFields {
        src_port: dst_port,
        dst_port: src_port,
        seq: rst_seq,
        ack: rst_ack,
        flags: rst_flags,
        window: 0,
    };
    emit_tcp(out, src_mac, dst_mac, &head, &fields, &[])
}

/// A UDP datagram in an Ethernet frame, checksums computed (for tests and benches).
#[allow(clippy::too_many_arguments)]
pub fn build_udp(
    out: &mut [u8],
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Option<usize> {
    let udp_len = udp::HEADER_LEN + payload.len();
    let len_field = u16::try_from(udp_len).ok()?;
    let head = Ipv4Head::new(src, dst, ttl, PROTO_UDP);
    let len = emit_headers(out, src_mac, dst_mac, &head, udp_len)?;
    let mut udp = UdpDatagram::new_unchecked(&mut out[L4_AT..len]);
    udp.set_src_port(src_port);
    udp.set_dst_port(dst_port);
    udp.set_length(len_field);
    udp.payload_mut().copy_from_slice(payload);
    udp.fill_checksum(src, dst);
    Some(len)
}

/// A TCP segment without options in an Ethernet frame, window 65535, checksums computed (for
/// tests and benches).
#[allow(clippy::too_many_arguments)]
pub fn build_tcp(
    out: &mut [u8],
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Option<usize> {
    let head = Ipv4Head::new(src, dst, ttl, PROTO_TCP);
    let fields = TcpFields {
        src_port,
        dst_port,
        seq,
        ack,
        flags,
        window: u16::MAX,
    };
    emit_tcp(out, src_mac, dst_mac, &head, &fields, payload)
}

/// An ICMP echo request (`request`) or reply in an Ethernet frame, checksums computed (for tests
/// and benches).
#[allow(clippy::too_many_arguments)]
pub fn build_icmp_echo(
    out: &mut [u8],
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    request: bool,
    ident: u16,
    seq: u16,
    payload: &[u8],
) -> Option<usize> {
    let head = Ipv4Head::new(src, dst, ttl, PROTO_ICMP);
    let len = emit_headers(
        out,
        src_mac,
        dst_mac,
        &head,
        icmp::HEADER_LEN + payload.len(),
    )?;
    let mut msg = IcmpPacket::new_unchecked(&mut out[L4_AT..len]);
    msg.set_msg_type(if request { ECHO_REQUEST } else { ECHO_REPLY });
    msg.set_msg_code(0);
    msg.set_echo_ident(ident);
    msg.set_echo_seq_no(seq);
    msg.data_mut().copy_from_slice(payload);
    msg.fill_checksum();
    Some(len)
}

/// What varies in the IPv4 headers we write.
struct Ipv4Head {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    protocol: u8,
    tos: u8,
    dont_frag: bool,
}

impl Ipv4Head {
    /// An ordinary header: TOS 0 and DF set, as Linux sends with path MTU discovery.
    fn new(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, protocol: u8) -> Self {
        Ipv4Head {
            src,
            dst,
            ttl,
            protocol,
            tos: 0,
            dont_frag: true,
        }
    }
}

struct TcpFields {
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
}

fn emit_ethernet(out: &mut [u8], src: MacAddr, dst: MacAddr, ethertype: u16) {
    let mut eth = EthernetFrame::new_unchecked(out);
    eth.set_dst_addr(dst);
    eth.set_src_addr(src);
    eth.set_ethertype(ethertype);
}

/// Writes Ethernet and IPv4 headers (checksum filled) for `l4_len` bytes of transport data;
/// returns the frame length, or `None` if it exceeds `out` or IPv4's 65535 bytes.
fn emit_headers(
    out: &mut [u8],
    src_mac: MacAddr,
    dst_mac: MacAddr,
    head: &Ipv4Head,
    l4_len: usize,
) -> Option<usize> {
    let total = u16::try_from(IP_LEN.checked_add(l4_len)?).ok()?;
    let len = ETH_LEN + usize::from(total);
    let out = out.get_mut(..len)?;
    emit_ethernet(out, src_mac, dst_mac, ETHERTYPE_IPV4);
    let mut ip = Ipv4Packet::new_unchecked(&mut out[ETH_LEN..L4_AT]);
    ip.set_version_and_header_len(IP_LEN);
    ip.set_dscp_ecn(head.tos);
    ip.set_total_len(total);
    ip.set_ident(0);
    ip.set_unfragmented(head.dont_frag);
    ip.set_ttl(head.ttl);
    ip.set_protocol(head.protocol);
    ip.set_src_addr(head.src);
    ip.set_dst_addr(head.dst);
    ip.fill_checksum();
    Some(len)
}

fn emit_tcp(
    out: &mut [u8],
    src_mac: MacAddr,
    dst_mac: MacAddr,
    head: &Ipv4Head,
    fields: &TcpFields,
    payload: &[u8],
) -> Option<usize> {
    let len = emit_headers(out, src_mac, dst_mac, head, tcp::HEADER_LEN + payload.len())?;
    let mut tcp = TcpSegment::new_unchecked(&mut out[L4_AT..len]);
    tcp.set_src_port(fields.src_port);
    tcp.set_dst_port(fields.dst_port);
    tcp.set_seq_number(fields.seq);
    tcp.set_ack_number(fields.ack);
    tcp.set_header_len(tcp::HEADER_LEN);
    tcp.set_flags(fields.flags);
    tcp.set_window_len(fields.window);
    tcp.set_urgent_at(0);
    tcp.payload_mut().copy_from_slice(payload);
    tcp.fill_checksum(head.src, head.dst);
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::parse::{parse_frame, L3};
    use crate::packet::rewrite::verify_checksums;
    use crate::packet::samples;
    use crate::packet::tcp::{FIN, PSH, SYN};

    const A: Ipv4Addr = Ipv4Addr::new(172, 211, 0, 18);
    const B: Ipv4Addr = Ipv4Addr::new(172, 211, 0, 17);
    const MAC_A: MacAddr = MacAddr([0x02, 0xac, 0xd3, 0, 0, 0x12]);
    const MAC_B: MacAddr = MacAddr([0x02, 0xac, 0xd3, 0, 0, 0x11]);

    fn ipv4(frame: &[u8]) -> Ipv4Info {
        match parse_frame(frame).unwrap().l3 {
            L3::Ipv4(ip) => ip,
            other => panic!("not IPv4: {other:?}"),
        }
    }

    /// Equal except the IP identification and, with it, the header checksum.
    fn assert_same_but_ident(ours: &[u8], captured: &[u8]) {
        assert_eq!(ours.len(), captured.len());
        for (i, (a, b)) in ours.iter().zip(captured).enumerate() {
            if !(18..20).contains(&i) && !(24..26).contains(&i) {
                assert_eq!(a, b, "byte {i}");
            }
        }
        assert_eq!(verify_checksums(ours), Some((true, true)));
    }

    #[test]
    fn arp_request_and_reply_match_captures() {
        let mut out = [0u8; 64];
        let n = build_arp_request(&mut out, MAC_A, A, B).unwrap();
        assert_eq!(out[..n], samples::ARP_REQUEST);
        let n = build_arp_reply(&mut out, MAC_B, B, MAC_A, A).unwrap();
        assert_eq!(out[..n], samples::ARP_REPLY);
        assert_eq!(build_arp_reply(&mut out[..41], MAC_B, B, MAC_A, A), None);
    }

    #[test]
    fn a_record_route_is_echoed_with_the_gateway_twice_as_linux_does() {
        // ping -R 172.211.0.17: a NOP, then a record route of 9 slots, the first the pod's.
        let mut options = vec![1u8, 7, 39, 8];
        options.extend_from_slice(&A.octets());
        options.resize(40, 0);
        let request = &samples::ICMP_ECHO_REQUEST;
        let mut f = request[..14].to_vec();
        f.extend_from_slice(&request[14..34]);
        f.extend_from_slice(&options);
        f.extend_from_slice(&request[34..]);
        f[14] = 0x4f;
        let total = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[24..26].fill(0);
        let sum = super::super::checksum::ipv4_header_checksum(&f[14..74]);
        f[24..26].copy_from_slice(&sum.to_be_bytes());
        let ip = ipv4(&f);
        let n = make_echo_reply_in_place(&mut f, &ip, MAC_B).unwrap();
        let reply = &f[..n];
        assert_eq!(verify_checksums(reply), Some((true, true)));
        // No NOP (ping would print it): the option first, the gateway in two slots, as
        // Linux's reply reads "RR: 172.211.0.18 172.211.0.17 172.211.0.17 ...".
        let mut want = vec![7u8, 39, 16];
        want.extend_from_slice(&A.octets());
        want.extend_from_slice(&B.octets());
        want.extend_from_slice(&B.octets());
        want.resize(40, 0);
        assert_eq!(&reply[34..74], &want[..]);
        // Options of another shape come back as they came.
        let mut options = [0u8; 4];
        record_route_echo(&mut options, B);
        assert_eq!(options, [0; 4]);
        let mut options = [68u8, 4, 5, 0];
        record_route_echo(&mut options, B);
        assert_eq!(options, [68, 4, 5, 0]);
    }

    #[test]
    fn echo_reply_in_place_matches_the_kernels() {
        let mut f = samples::ICMP_ECHO_REQUEST.to_vec();
        f.extend_from_slice(&[0; 6]); // padding, to be trimmed
        let ip = ipv4(&f);
        let n = make_echo_reply_in_place(&mut f, &ip, MAC_B).unwrap();
        assert_eq!(n, 66);
        let reply = &f[..n];
        // The kernel's reply has its own IP identification; all else is the same, its DF
        // clear too.
        assert_same_but_ident(reply, &samples::ICMP_ECHO_REPLY);
        let ip = ipv4(reply);
        assert_eq!((ip.src, ip.dst, ip.ttl), (B, A, 64));
        // Not an echo request: refused, untouched.
        let mut f = samples::ICMP_ECHO_REPLY;
        let ip = ipv4(&f);
        assert_eq!(make_echo_reply_in_place(&mut f, &ip, MAC_B), None);
        assert_eq!(f, samples::ICMP_ECHO_REPLY);
        // A request whose data does not match its checksum (a bit flipped on the way) is not
        // answered: the reply would carry the same error.
        let mut f = samples::ICMP_ECHO_REQUEST.to_vec();
        let last = f.len() - 1;
        f[last] ^= 0x01;
        let ip = ipv4(&f);
        let before = f.clone();
        assert_eq!(make_echo_reply_in_place(&mut f, &ip, MAC_B), None);
        assert_eq!(f, before, "untouched");
    }

    #[test]
    fn port_unreachable_matches_the_kernels() {
        let mut out = [0u8; 600];
        let n = build_icmp_error(
            &mut out,
            MAC_B,
            MAC_A,
            B,
            3,
            3,
            1400,
            &samples::UDP_DNS[14..],
        )
        .unwrap();
        assert_same_but_ident(&out[..n], &samples::ICMP_PORT_UNREACHABLE);
    }

    #[test]
    fn an_icmp_error_keeps_the_tos_bits_of_the_packet_it_answers() {
        // ping -Q 0xb8 -t 1 through a Linux router: time exceeded comes back with TOS 0xd8
        // (precedence 6 over 0xb8's TOS bits); precedence and the low ECN bit are not copied,
        // the other ECN bit is (Linux's mask, 0x1e: 0xbb gives 0xda from a kernel 6.18 router).
        let mut big = vec![0u8; 200];
        let n = build_udp(&mut big, MAC_A, MAC_B, A, B, 1, 1, 2, &[7u8; 20]).unwrap();
        let mut out = [0u8; 300];
        for (tos, want) in [
            (0x00, 0xc0),
            (0xb8, 0xd8),
            (0xbb, 0xda),
            (0x10, 0xd0),
            (0xb6, 0xd6),
        ] {
            big[15] = tos;
            let len = build_icmp_error(&mut out, MAC_B, MAC_A, B, 11, 0, 0, &big[14..n]).unwrap();
            assert_eq!(out[15], want, "for TOS {tos:#x}");
            assert_eq!(verify_checksums(&out[..len]).map(|c| c.0), Some(true));
        }
    }

    #[test]
    fn icmp_error_quote_limits_and_mtu() {
        let mut big = vec![0u8; 1514];
        let n = build_udp(&mut big, MAC_A, MAC_B, A, B, 64, 1, 2, &[7u8; 1472]).unwrap();
        assert_eq!(n, 1514);
        let mut out = [0u8; 700];
        let n = build_icmp_error(&mut out, MAC_B, MAC_A, B, 3, 4, 1400, &big[14..n]).unwrap();
        assert_eq!(n, 14 + 576);
        assert_eq!(verify_checksums(&out[..n]), Some((true, true)));
        let ip = ipv4(&out[..n]);
        assert_eq!((ip.src, ip.dst, ip.ttl), (B, A, 64));
        assert_eq!(out[14 + 1], ICMP_ERROR_TOS);
        assert_eq!(out[20..22], [0, 0], "DF clear");
        assert_eq!(out[38..42], [0, 0, 0x05, 0x78], "next-hop MTU 1400");
        // Other types leave those bytes zero.
        let n = build_icmp_error(&mut out, MAC_B, MAC_A, B, 11, 0, 1400, &big[14..50]).unwrap();
        assert_eq!((n, &out[38..42]), (14 + 20 + 8 + 36, &[0u8; 4][..]));
        // No IP header to answer, or no room: nothing.
        assert_eq!(
            build_icmp_error(&mut out, MAC_B, MAC_A, B, 11, 0, 0, &big[14..33]),
            None
        );
        assert_eq!(
            build_icmp_error(&mut out[..61], MAC_B, MAC_A, B, 11, 0, 0, &big[14..34]),
            None
        );
        assert!(
            build_icmp_error(&mut out[..62], MAC_B, MAC_A, B, 11, 0, 0, &big[14..34]).is_some()
        );
    }

    #[test]
    fn aging_an_answer_steps_its_ttl_and_its_quotes_checksums_stay_right() {
        let mut big = vec![0u8; 200];
        let n = build_udp(&mut big, MAC_A, MAC_B, A, B, 3, 1, 2, b"probe").unwrap();
        let mut out = [0u8; 200];
        let n = build_icmp_error(&mut out, MAC_B, MAC_A, B, 11, 0, 0, &big[14..n]).unwrap();
        let mut aged = out;
        age_answer(&mut aged[..n], 2);
        assert_eq!(verify_checksums(&aged[..n]), Some((true, true)));
        assert_eq!(ipv4(&aged[..n]).ttl, 62);
        let quote = &aged[42..62];
        assert_eq!(quote[8], 1, "the quote as the answering gateway got it");
        let csum = crate::packet::checksum::ipv4_header_checksum(quote);
        assert_eq!(csum.to_be_bytes(), [quote[10], quote[11]]);
        // Only the TTLs and checksums changed.
        let differ: Vec<usize> = (0..n).filter(|&i| aged[i] != out[i]).collect();
        assert!(
            differ
                .iter()
                .all(|i| [22, 24, 25, 36, 37, 50, 52, 53].contains(i)),
            "{differ:?}"
        );
        // No step, or not a whole packet: untouched.
        let mut same = out;
        age_answer(&mut same[..n], 0);
        age_answer(&mut same[..30], 5);
        assert_eq!(same, out);
        // A reset: only its own header.
        let ip = ipv4(&samples::TCP_SYN);
        let mut rst = [0u8; 64];
        let n = build_tcp_rst(&mut rst, MAC_B, MAC_A, &samples::TCP_SYN, &ip).unwrap();
        age_answer(&mut rst[..n], 1);
        assert_eq!(verify_checksums(&rst[..n]), Some((true, true)));
        assert_eq!(ipv4(&rst[..n]).ttl, 63);
    }

    #[test]
    fn reset_for_a_syn_matches_the_kernels() {
        let ip = ipv4(&samples::TCP_SYN);
        let mut out = [0u8; 64];
        let n = build_tcp_rst(&mut out, MAC_B, MAC_A, &samples::TCP_SYN, &ip).unwrap();
        assert_eq!(out[..n], samples::TCP_RST_ACK);
        // No answer to a reset.
        let rst = ipv4(&samples::TCP_RST_ACK);
        assert_eq!(
            build_tcp_rst(&mut out, MAC_A, MAC_B, &samples::TCP_RST_ACK, &rst),
            None
        );
        assert_eq!(
            build_tcp_rst(&mut out[..53], MAC_B, MAC_A, &samples::TCP_SYN, &ip),
            None
        );
    }

    #[test]
    fn reset_sequence_numbers() {
        let mut seg = [0u8; 128];
        let mut out = [0u8; 64];
        // With ACK: seq = their ack, no ACK.
        let n = build_tcp(
            &mut seg,
            MAC_A,
            MAC_B,
            A,
            B,
            64,
            1000,
            80,
            500,
            9000,
            ACK | PSH,
            b"abc",
        )
        .unwrap();
        let m = build_tcp_rst(&mut out, MAC_B, MAC_A, &seg[..n], &ipv4(&seg[..n])).unwrap();
        let ip = ipv4(&out[..m]);
        assert_eq!(
            ip.l4,
            L4::Tcp {
                src_port: 80,
                dst_port: 1000,
                flags: RST,
                seq: 9000,
                ack: 0
            }
        );
        assert_eq!(verify_checksums(&out[..m]), Some((true, true)));
        // Without ACK: seq 0, ack = seq + data + SYN + FIN, wrapping.
        let n = build_tcp(
            &mut seg,
            MAC_A,
            MAC_B,
            A,
            B,
            64,
            1000,
            80,
            u32::MAX,
            0,
            SYN | FIN,
            b"ab",
        )
        .unwrap();
        let m = build_tcp_rst(&mut out, MAC_B, MAC_A, &seg[..n], &ipv4(&seg[..n])).unwrap();
        let ip = ipv4(&out[..m]);
        assert_eq!((ip.src, ip.dst), (B, A));
        assert_eq!(
            ip.l4,
            L4::Tcp {
                src_port: 80,
                dst_port: 1000,
                flags: RST | ACK,
                seq: 0,
                ack: 3
            }
        );
    }

    #[test]
    fn generic_builders_match_captures() {
        let mut out = [0u8; 128];
        let n = build_udp(&mut out, MAC_A, MAC_B, A, B, 64, 57087, 5353, b"hello\n").unwrap();
        assert_same_but_ident(&out[..n], &samples::UDP_DNS);
        let payload = &samples::ICMP_ECHO_REQUEST[42..];
        let n = build_icmp_echo(&mut out, MAC_A, MAC_B, A, B, 64, true, 3749, 1, payload).unwrap();
        assert_same_but_ident(&out[..n], &samples::ICMP_ECHO_REQUEST);
        let n = build_tcp(
            &mut out,
            MAC_B,
            MAC_A,
            B,
            A,
            64,
            8080,
            60698,
            0,
            4019171491,
            RST | ACK,
            b"",
        )
        .unwrap();
        let mut rst = samples::TCP_RST_ACK;
        rst[48..50].copy_from_slice(&[0xff, 0xff]); // our window
        let csum = update16(u16::from_be_bytes([rst[50], rst[51]]), 0, 0xffff);
        rst[50..52].copy_from_slice(&csum.to_be_bytes());
        assert_eq!(out[..n], rst);
    }

    #[test]
    fn builders_refuse_small_buffers() {
        let mut out = [0u8; 128];
        let full = build_tcp(&mut out, MAC_A, MAC_B, A, B, 64, 1, 2, 3, 4, SYN, b"xyz").unwrap();
        for len in 0..full {
            assert_eq!(
                build_tcp(
                    &mut out[..len],
                    MAC_A,
                    MAC_B,
                    A,
                    B,
                    64,
                    1,
                    2,
                    3,
                    4,
                    SYN,
                    b"xyz"
                ),
                None
            );
            assert_eq!(
                build_udp(
                    &mut out[..len],
                    MAC_A,
                    MAC_B,
                    A,
                    B,
                    64,
                    1,
                    2,
                    b"xyzxyzxyzxyzxyz"
                ),
                None
            );
            assert_eq!(
                build_icmp_echo(
                    &mut out[..len],
                    MAC_A,
                    MAC_B,
                    A,
                    B,
                    64,
                    true,
                    1,
                    2,
                    b"xyzxyzxyzxyzxyz"
                ),
                None
            );
        }
        // IPv4 cannot carry more than 65535 bytes.
        let mut huge = vec![0u8; 70_000];
        let payload = vec![0u8; 65_535 - 28 + 1];
        assert_eq!(
            build_udp(&mut huge, MAC_A, MAC_B, A, B, 64, 1, 2, &payload),
            None
        );
        assert!(build_udp(&mut huge, MAC_A, MAC_B, A, B, 64, 1, 2, &payload[1..]).is_some());
    }

    #[test]
    fn fragment_cuts_a_packet_keeping_copied_options_and_its_own_offset() {
        // A 3000-byte payload behind a header with two options: record route (not copied,
        // 7 bytes) and a copied one (type 0x82, 4 bytes), padded with an end-of-list to 32.
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        let mut ip = vec![
            0x48, 0, 0, 0, 0x12, 0x34, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip.extend_from_slice(&[7, 7, 4, 0, 0, 0, 0, 0x82, 4, 9, 9, 0]);
        let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let total = (ip.len() + payload.len()) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&payload);
        let mut got = Vec::new();
        let mut out = vec![0u8; 1514];
        for index in 0.. {
            let Some((n, last)) = fragment(&mut out, &frame, 1500, index) else {
                panic!("fragment {index} missing")
            };
            let f = &out[..n];
            let hl = usize::from(f[14] & 0x0f) * 4;
            assert!(n - 14 <= 1500);
            let sum = super::super::checksum::sum(&f[14..14 + hl], 0);
            assert_eq!(super::super::checksum::fold(sum), 0xffff);
            let flags = u16::from_be_bytes([f[20], f[21]]);
            assert_eq!(
                usize::from(flags & 0x1fff) * 8,
                got.len(),
                "offset of {index}"
            );
            assert_eq!(flags & ipv4::FLAG_MF != 0, !last);
            if index == 0 {
                assert_eq!(hl, 32, "every option");
            } else {
                assert_eq!(hl, 24, "the copied option only");
                assert_eq!(&f[34..38], &[0x82, 4, 9, 9]);
            }
            got.extend_from_slice(&f[14 + hl..]);
            if last {
                assert!(fragment(&mut out, &frame, 1500, index + 1).is_none());
                break;
            }
        }
        assert_eq!(got, payload);

        // A fragment cut again: offsets from its own, its more-fragments flag on the last.
        let mut frag = frame[..14].to_vec();
        let mut head = ip[..20].to_vec();
        head[0] = 0x45;
        head[2..4].copy_from_slice(&(20u16 + 2000).to_be_bytes());
        head[6..8].copy_from_slice(&(ipv4::FLAG_MF | 185).to_be_bytes());
        frag.extend_from_slice(&head);
        frag.extend_from_slice(&payload[..2000]);
        let (n, last) = fragment(&mut out, &frag, 1500, 1).unwrap();
        assert!(last);
        assert_eq!(
            u16::from_be_bytes([out[20], out[21]]),
            ipv4::FLAG_MF | (185 + 1480 / 8)
        );
        assert_eq!(n, 14 + 20 + 520);
    }
}
