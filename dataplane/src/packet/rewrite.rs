//! In-place rewrites for routing and NAT, every checksum updated incrementally (RFC 1624).
//!
//! Each function takes the frame and the [`Ipv4Info`] that [`super::parse::parse_frame`] returned
//! for it, changes a few bytes where the parse found them, and adjusts each checksum that covers
//! them by the difference of the changed 16-bit words. Nothing is ever summed over a payload, so a
//! 64 KB GSO segment costs what a SYN costs. The address and port fields of IPv4, TCP, UDP and
//! ICMP all sit at even offsets from the start of the data their checksums cover, which is what
//! lets word-wise updates stay exact. [`apply_action`] does a connection's whole cached action
//! (TTL, SNAT, DNAT, MACs) in one pass, each checksum updated once for all its changed words.
//!
//! Checksums, field by field:
//! - IPv4 header checksum: TTL and addresses (RFC 791, RFC 1624).
//! - TCP/UDP checksum: the ports, and the addresses through the pseudo-header. When the frame's
//!   virtio-net header has `NEEDS_CSUM` (`csum_partial`) the field holds the uncomplemented
//!   pseudo-header sum (CHECKSUM_PARTIAL): an address change adjusts that sum
//!   ([`checksum::update_partial32`]) and a port change leaves it alone, since the kernel or NIC
//!   will sum the ports itself when it completes the checksum.
//! - UDP checksum zero means none was computed (RFC 768): it stays zero; an updated checksum that
//!   comes out zero is stored as 0xffff.
//! - ICMP checksum: no pseudo-header, so an address change leaves it alone; an echo identifier
//!   change (the ICMP "port" of NAPT, RFC 3022 section 2.2) updates it.
//!
//! A frame that does not match its `Ipv4Info` (a caller bug) is left as it is rather than
//! panicking: every access goes through `get`.

use std::net::Ipv4Addr;

use super::checksum::{self, update16, update32, update_partial32};
use super::ipv4::{self, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use super::parse::{InnerPacket, Ipv4Info, L4};
use super::{ethernet, icmp, tcp, udp, MacAddr};

fn read16(b: &[u8], at: usize) -> Option<u16> {
    let w = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([w[0], w[1]]))
}

fn read32(b: &[u8], at: usize) -> Option<u32> {
    let w = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
}

fn write16(b: &mut [u8], at: usize, v: u16) -> Option<()> {
    b.get_mut(at..at.checked_add(2)?)?
        .copy_from_slice(&v.to_be_bytes());
    Some(())
}

fn write32(b: &mut [u8], at: usize, v: u32) -> Option<()> {
    b.get_mut(at..at.checked_add(4)?)?
        .copy_from_slice(&v.to_be_bytes());
    Some(())
}

/// Lowers the TTL by `by` (the caller has checked `ttl > by`; below zero it stops at zero) and
/// updates the header checksum (RFC 1812 section 5.3.1; RFC 1624).
pub fn decrement_ttl(frame: &mut [u8], ip: &Ipv4Info, by: u8) {
    let _ = try_decrement_ttl(frame, ip, by);
}

fn try_decrement_ttl(frame: &mut [u8], ip: &Ipv4Info, by: u8) -> Option<()> {
    // TTL and protocol share a 16-bit word.
    let word_at = ip.offset + ipv4::field::TTL;
    let csum_at = ip.offset + ipv4::field::CHECKSUM.start;
    let old = read16(frame, word_at)?;
    let csum = read16(frame, csum_at)?;
    let ttl = (old >> 8) as u8;
    let new = (u16::from(ttl.saturating_sub(by)) << 8) | (old & 0x00ff);
    write16(frame, word_at, new)?;
    write16(frame, csum_at, update16(csum, old, new))
}

#[derive(Clone, Copy)]
enum Side {
    Src,
    Dst,
}

/// Source NAT: the source address, and for TCP/UDP the source port, for ICMP echo the identifier,
/// become `new_addr` and `new_port`. Other packets (other protocols, later fragments, ICMP errors
/// and other ICMP) have only their address rewritten and `new_port` is ignored.
pub fn rewrite_src(
    frame: &mut [u8],
    ip: &Ipv4Info,
    new_addr: Ipv4Addr,
    new_port: u16,
    csum_partial: bool,
) {
    let _ = rewrite_side(frame, ip, Side::Src, new_addr, new_port, csum_partial);
}

/// Destination NAT: as [`rewrite_src`], for the destination address and port (for ICMP echo,
/// the identifier again).
pub fn rewrite_dst(
    frame: &mut [u8],
    ip: &Ipv4Info,
    new_addr: Ipv4Addr,
    new_port: u16,
    csum_partial: bool,
) {
    let _ = rewrite_side(frame, ip, Side::Dst, new_addr, new_port, csum_partial);
}

fn rewrite_side(
    frame: &mut [u8],
    ip: &Ipv4Info,
    side: Side,
    new_addr: Ipv4Addr,
    new_port: u16,
    partial: bool,
) -> Option<()> {
    let addr_at = ip.offset
        + match side {
            Side::Src => ipv4::field::SRC_ADDR.start,
            Side::Dst => ipv4::field::DST_ADDR.start,
        };
    let ip_csum_at = ip.offset + ipv4::field::CHECKSUM.start;
    let old_addr = read32(frame, addr_at)?;
    let new_addr = u32::from(new_addr);
    let ip_csum = read16(frame, ip_csum_at)?;
    write32(frame, addr_at, new_addr)?;
    write16(frame, ip_csum_at, update32(ip_csum, old_addr, new_addr))?;

    let l4 = ip.l4_offset();
    // Source and destination ports are the first two words of both TCP and UDP.
    let port_at = match side {
        Side::Src => l4,
        Side::Dst => l4 + 2,
    };
    match ip.l4 {
        L4::Tcp { .. } => {
            let csum_at = l4 + tcp::field::CHECKSUM.start;
            rewrite_transport(
                frame, csum_at, port_at, old_addr, new_addr, new_port, partial, false,
            )
        }
        L4::Udp { .. } => {
            let csum_at = l4 + udp::field::CHECKSUM.start;
            rewrite_transport(
                frame, csum_at, port_at, old_addr, new_addr, new_port, partial, true,
            )
        }
        L4::IcmpEcho { .. } => {
            let ident_at = l4 + icmp::field::ECHO_IDENT.start;
            let csum_at = l4 + icmp::field::CHECKSUM.start;
            let old_ident = read16(frame, ident_at)?;
            let csum = read16(frame, csum_at)?;
            write16(frame, ident_at, new_port)?;
            // A partial ICMP checksum (not seen from Linux, which sums ICMP in software) would be
            // completed over the new identifier later: leave it.
            if !partial {
                write16(frame, csum_at, update16(csum, old_ident, new_port))?;
            }
            Some(())
        }
        L4::IcmpError { .. } | L4::IcmpOther { .. } | L4::Other => Some(()),
    }
}

/// Rewrites a TCP or UDP port and fixes the checksum for it and for an address change in the
/// pseudo-header.
#[allow(clippy::too_many_arguments)]
fn rewrite_transport(
    frame: &mut [u8],
    csum_at: usize,
    port_at: usize,
    old_addr: u32,
    new_addr: u32,
    new_port: u16,
    partial: bool,
    udp: bool,
) -> Option<()> {
    let csum = read16(frame, csum_at)?;
    let old_port = read16(frame, port_at)?;
    let csum = if partial {
        update_partial32(csum, old_addr, new_addr)
    } else if udp && csum == 0 {
        0
    } else {
        udp_nonzero(
            udp,
            update16(update32(csum, old_addr, new_addr), old_port, new_port),
        )
    };
    write16(frame, port_at, new_port)?;
    write16(frame, csum_at, csum)
}

/// A computed UDP checksum of zero is sent as all ones (RFC 768).
fn udp_nonzero(udp: bool, csum: u16) -> u16 {
    if udp && csum == 0 {
        0xffff
    } else {
        csum
    }
}

/// Sets the Ethernet source and destination addresses.
pub fn set_macs(frame: &mut [u8], src: MacAddr, dst: MacAddr) {
    if let Some(b) = frame.get_mut(ethernet::field::DESTINATION) {
        b.copy_from_slice(&dst.0);
    }
    if let Some(b) = frame.get_mut(ethernet::field::SOURCE) {
        b.copy_from_slice(&src.0);
    }
}

/// A connection's cached action as one rewrite: what [`decrement_ttl`], [`rewrite_src`],
/// [`rewrite_dst`] and [`set_macs`] do in turn, done in one pass by [`apply_action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    /// Lower the TTL by this much (0: leave it and its checksum untouched).
    pub ttl_dec: u8,
    pub snat: Option<(Ipv4Addr, u16)>,
    pub dnat: Option<(Ipv4Addr, u16)>,
    /// New Ethernet `(source, destination)` addresses.
    pub macs: Option<(MacAddr, MacAddr)>,
}

/// The ones'-complement sum contribution of a 16-bit word changing from `old` to `new`
/// (RFC 1624 equation 3: `~m + m'`).
fn delta16(old: u16, new: u16) -> u32 {
    u32::from(!old) + u32::from(new)
}

/// As [`delta16`] for a 32-bit field (two words).
fn delta32(old: u32, new: u32) -> u32 {
    delta16((old >> 16) as u16, (new >> 16) as u16) + delta16(old as u16, new as u16)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Applies `action` to a frame in one pass: the same bytes as [`decrement_ttl`] (when
/// `ttl_dec > 0`), [`rewrite_src`], [`rewrite_dst`] and [`set_macs`] one after the other, with
/// the IPv4 header checksum and the transport checksum each updated once for all the words
/// that changed (RFC 1624 equation 3 with the differences summed: ones'-complement addition is
/// associative, so this gives the value the updates in turn give; a unit test compares the
/// bytes). The fixed-size headers are sliced out once,
/// so the field accesses need no further bounds checks. A frame that does not match `ip` is
/// left as the functions in turn would leave it as far as its bytes reach, never a panic.
#[inline]
pub fn apply_action(frame: &mut [u8], ip: &Ipv4Info, action: &Action, csum_partial: bool) {
    if let Some((src, dst)) = action.macs {
        set_macs(frame, src, dst);
    }
    if action.ttl_dec == 0 && action.snat.is_none() && action.dnat.is_none() {
        return;
    }
    let l4_at = ip.l4_offset();
    let Some(hdr) = frame.get_mut(ip.offset..ip.offset.saturating_add(ipv4::HEADER_LEN)) else {
        return;
    };
    let hdr: &mut [u8; ipv4::HEADER_LEN] = match hdr.try_into() {
        Ok(h) => h,
        Err(_) => return,
    };
    let mut ip_delta = 0u32;
    if action.ttl_dec > 0 {
        let old = be16(hdr, ipv4::field::TTL);
        let ttl = (old >> 8) as u8;
        let new = (u16::from(ttl.saturating_sub(action.ttl_dec)) << 8) | (old & 0x00ff);
        put16(hdr, ipv4::field::TTL, new);
        ip_delta += delta16(old, new);
    }
    let src_at = ipv4::field::SRC_ADDR.start;
    let dst_at = ipv4::field::DST_ADDR.start;
    let mut addr_delta = 0u32;
    if let Some((addr, _)) = action.snat {
        let old = u32::from_be_bytes([
            hdr[src_at],
            hdr[src_at + 1],
            hdr[src_at + 2],
            hdr[src_at + 3],
        ]);
        let new = u32::from(addr);
        hdr[src_at..src_at + 4].copy_from_slice(&new.to_be_bytes());
        addr_delta += delta32(old, new);
    }
    if let Some((addr, _)) = action.dnat {
        let old = u32::from_be_bytes([
            hdr[dst_at],
            hdr[dst_at + 1],
            hdr[dst_at + 2],
            hdr[dst_at + 3],
        ]);
        let new = u32::from(addr);
        hdr[dst_at..dst_at + 4].copy_from_slice(&new.to_be_bytes());
        addr_delta += delta32(old, new);
    }
    let csum_at = ipv4::field::CHECKSUM.start;
    let csum = be16(hdr, csum_at);
    put16(
        hdr,
        csum_at,
        !checksum::fold(u32::from(!csum) + ip_delta + addr_delta),
    );
    if action.snat.is_none() && action.dnat.is_none() {
        return;
    }
    let (udp, csum_off) = match ip.l4 {
        L4::Tcp { .. } => (false, tcp::field::CHECKSUM.start),
        L4::Udp { .. } => (true, udp::field::CHECKSUM.start),
        L4::IcmpEcho { .. } => {
            let Some(l4) = frame.get_mut(l4_at..l4_at.saturating_add(icmp::HEADER_LEN)) else {
                return;
            };
            let ident_at = icmp::field::ECHO_IDENT.start;
            let mut ident = be16(l4, ident_at);
            let mut delta = 0u32;
            for (_, port) in [action.snat, action.dnat].into_iter().flatten() {
                delta += delta16(ident, port);
                ident = port;
            }
            put16(l4, ident_at, ident);
            // A partial ICMP checksum is completed later over the new identifier: leave it.
            if !csum_partial {
                let at = icmp::field::CHECKSUM.start;
                let csum = be16(l4, at);
                put16(l4, at, !checksum::fold(u32::from(!csum) + delta));
            }
            return;
        }
        L4::IcmpError { .. } | L4::IcmpOther { .. } | L4::Other => return,
    };
    let Some(l4) = frame.get_mut(l4_at..l4_at.saturating_add(csum_off + 2)) else {
        return;
    };
    let mut port_delta = 0u32;
    for (at, new) in [(0, action.snat), (2, action.dnat)] {
        if let Some((_, port)) = new {
            port_delta += delta16(be16(l4, at), port);
            put16(l4, at, port);
        }
    }
    let csum = be16(l4, csum_off);
    let csum = if csum_partial {
        checksum::fold(u32::from(csum) + addr_delta)
    } else if udp && csum == 0 {
        0
    } else {
        udp_nonzero(
            udp,
            !checksum::fold(u32::from(!csum) + addr_delta + port_delta),
        )
    };
    put16(l4, csum_off, csum);
}

/// [`Action`] as [`apply_action_v4`] takes it: the MACs by reference, from where the tables hold
/// them, rather than copied into the action first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionV4<'a> {
    pub ttl_dec: u8,
    pub snat: Option<(Ipv4Addr, u16)>,
    pub dnat: Option<(Ipv4Addr, u16)>,
    /// New Ethernet `(source, destination)` addresses.
    pub macs: Option<(&'a MacAddr, &'a MacAddr)>,
}

impl Action {
    /// The action for [`apply_action_v4`].
    pub fn v4(&self) -> ActionV4<'_> {
        ActionV4 {
            ttl_dec: self.ttl_dec,
            snat: self.snat,
            dnat: self.dnat,
            macs: self.macs.as_ref().map(|(src, dst)| (src, dst)),
        }
    }
}

/// [`apply_action`] for a frame that [`super::parse::parse_ipv4_fast`] accepted (Ethernet
/// without tags, IPv4 without options, UDP when `udp`, else TCP), with the header offsets fixed
/// and the bounds checked once: the same bytes (a unit test compares them), a good deal fewer
/// instructions. A frame shorter than its transport checksum is left alone.
///
/// The sums are taken over the frame's bytes as they lie in memory (RFC 1071 section 2(B): the
/// ones'-complement sum commutes with swapping the bytes of every word, so the folded result
/// comes out in the frame's order, ready to store) and over 32-bit words with the carry added
/// back (section 2(C) and (D): 2^32 = 1 modulo 0xffff), so no address is split into its halves
/// and no word is swapped. The old fields are read from the frame, where the parse just found
/// them, rather than carried in registers beside the action.
#[inline]
pub fn apply_action_v4(frame: &mut [u8], udp: bool, action: &ActionV4, csum_partial: bool) {
    const L4: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN;
    // The transport checksum ends each view: UDP's is at 6, TCP's at 16.
    const UDP_END: usize = L4 + udp::field::CHECKSUM.end;
    const TCP_END: usize = L4 + tcp::field::CHECKSUM.end;
    if udp {
        if let Some(head) = frame.first_chunk_mut::<UDP_END>() {
            rewrite_plain_v4(head, true, action, csum_partial);
        }
    } else if let Some(head) = frame.first_chunk_mut::<TCP_END>() {
        rewrite_plain_v4(head, false, action, csum_partial);
    }
}

/// Ones'-complement addition of 32-bit words: the carry out is added back in (RFC 1071
/// section 2(D)). The result is zero only when both are.
#[inline(always)]
fn add32(a: u32, b: u32) -> u32 {
    let (s, carry) = a.overflowing_add(b);
    s + u32::from(carry)
}

#[inline(always)]
fn ne16(h: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([h[at], h[at + 1]])
}

#[inline(always)]
fn ne32(h: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]])
}

/// [`apply_action_v4`] on the frame's head up to the end of its transport checksum, whose
/// offset is then fixed by the array's length.
#[inline(always)]
fn rewrite_plain_v4<const N: usize>(
    head: &mut [u8; N],
    udp: bool,
    action: &ActionV4,
    csum_partial: bool,
) {
    const IP: usize = ethernet::HEADER_LEN;
    const L4: usize = IP + ipv4::HEADER_LEN;
    const TTL: usize = IP + ipv4::field::TTL;
    const SRC: usize = IP + ipv4::field::SRC_ADDR.start;
    const DST: usize = IP + ipv4::field::DST_ADDR.start;
    const IP_CSUM: usize = IP + ipv4::field::CHECKSUM.start;
    let l4_csum = N - 2;
    if let Some((src, dst)) = action.macs {
        head[ethernet::field::DESTINATION].copy_from_slice(&dst.0);
        head[ethernet::field::SOURCE].copy_from_slice(&src.0);
    }
    // Each change as RFC 1624 equation 3's `~m + m'`, in the frame's byte order. With nothing
    // to change the header checksum is stored as it was (`~fold(~c) = c`), as `apply_action`
    // leaves it.
    //
    // TTL and protocol share a word and only the TTL byte goes down, by `d`, with no borrow
    // from the protocol byte: `~m + m'` is `0xffff - m + m - d`. (With no TTL step the word is
    // not counted at all, as `apply_action` does not touch it: a zero sum stays zero.)
    let d = head[TTL].min(action.ttl_dec);
    head[TTL] -= d;
    let ip_delta = if action.ttl_dec > 0 {
        0xffff - u32::from(d)
    } else {
        0
    };
    let mut addr_delta = 0;
    let mut port_delta = 0;
    if let Some((addr, port)) = action.snat {
        let new = addr.octets();
        addr_delta = add32(!ne32(head, SRC), u32::from_ne_bytes(new));
        port_delta = u32::from(!ne16(head, L4)) + u32::from(u16::from_ne_bytes(port.to_be_bytes()));
        head[SRC..SRC + 4].copy_from_slice(&new);
        head[L4..L4 + 2].copy_from_slice(&port.to_be_bytes());
    }
    if let Some((addr, port)) = action.dnat {
        let new = addr.octets();
        addr_delta = add32(addr_delta, add32(!ne32(head, DST), u32::from_ne_bytes(new)));
        port_delta +=
            u32::from(!ne16(head, L4 + 2)) + u32::from(u16::from_ne_bytes(port.to_be_bytes()));
        head[DST..DST + 4].copy_from_slice(&new);
        head[L4 + 2..L4 + 4].copy_from_slice(&port.to_be_bytes());
    }
    let csum = ne16(head, IP_CSUM);
    let csum = !checksum::fold(add32(u32::from(!csum) + ip_delta, addr_delta));
    head[IP_CSUM..IP_CSUM + 2].copy_from_slice(&csum.to_ne_bytes());
    if action.snat.is_none() && action.dnat.is_none() {
        return;
    }
    let csum = ne16(head, l4_csum);
    let csum = if csum_partial {
        checksum::fold(add32(u32::from(csum), addr_delta))
    } else if udp && csum == 0 {
        0
    } else {
        udp_nonzero(
            udp,
            !checksum::fold(add32(u32::from(!csum) + port_delta, addr_delta)),
        )
    };
    head[l4_csum..l4_csum + 2].copy_from_slice(&csum.to_ne_bytes());
}

/// Translates the packet quoted by an ICMP error (RFC 5508 section 4.2, RFC 3022 section 4.3).
///
/// The quote is the original packet as its sender sent it, so when NAT reverses the outer header
/// of an error it must also rewrite the quote: `new_src` replaces the quoted source address and
/// port, `new_dst` the quoted destination (for a quoted ICMP echo the port is the identifier;
/// with both given, `new_dst`'s wins). The quoted IP header checksum, the quoted TCP/UDP/ICMP
/// checksum where the quote still holds it, and the outer ICMP checksum (for every 16-bit word
/// that changed) are updated incrementally. Only bytes within the outer total length are touched:
/// padding past it is not covered by the ICMP checksum. The outer header is left to
/// [`rewrite_src`]/[`rewrite_dst`].
pub fn rewrite_icmp_error_inner(
    frame: &mut [u8],
    ip: &Ipv4Info,
    inner: &InnerPacket,
    new_src: Option<(Ipv4Addr, u16)>,
    new_dst: Option<(Ipv4Addr, u16)>,
) {
    if !matches!(ip.l4, L4::IcmpError { .. }) {
        return;
    }
    let end = ip.end().min(frame.len());
    let Some(msg) = frame.get_mut(..end) else {
        return;
    };
    let outer_at = ip.l4_offset() + icmp::field::CHECKSUM.start;
    let Some(outer) = read16(msg, outer_at) else {
        return;
    };
    let mut quote = Quote { msg, outer };
    for (side, new) in [(Side::Src, new_src), (Side::Dst, new_dst)] {
        if let Some((addr, port)) = new {
            let _ = quote.rewrite(inner, side, addr.into(), port);
        }
    }
    let outer = quote.outer;
    let _ = write16(frame, outer_at, outer);
}

/// The bytes of an ICMP error message being rewritten, with its checksum kept up to date.
struct Quote<'a> {
    msg: &'a mut [u8],
    outer: u16,
}

impl Quote<'_> {
    /// Writes a word and folds the change into the outer ICMP checksum.
    fn set16(&mut self, at: usize, new: u16) -> Option<u16> {
        let old = read16(self.msg, at)?;
        write16(self.msg, at, new)?;
        self.outer = update16(self.outer, old, new);
        Some(old)
    }

    fn set32(&mut self, at: usize, new: u32) -> Option<u32> {
        let old = read32(self.msg, at)?;
        self.set16(at, (new >> 16) as u16)?;
        self.set16(at + 2, new as u16)?;
        Some(old)
    }

    fn rewrite(&mut self, inner: &InnerPacket, side: Side, addr: u32, port: u16) -> Option<()> {
        let (addr_at, port_at) = match side {
            Side::Src => (ipv4::field::SRC_ADDR.start, 0),
            Side::Dst => (ipv4::field::DST_ADDR.start, 2),
        };
        let ip_csum_at = inner.offset + ipv4::field::CHECKSUM.start;
        let ip_csum = read16(self.msg, ip_csum_at)?;
        let old_addr = self.set32(inner.offset + addr_at, addr)?;
        self.set16(ip_csum_at, update32(ip_csum, old_addr, addr))?;
        if !inner.has_ports {
            return Some(());
        }
        let l4 = inner.l4_offset();
        match inner.protocol {
            PROTO_TCP | PROTO_UDP => {
                let udp = inner.protocol == PROTO_UDP;
                let old_port = self.set16(l4 + port_at, port)?;
                let csum_at = l4
                    + if udp {
                        udp::field::CHECKSUM.start
                    } else {
                        tcp::field::CHECKSUM.start
                    };
                // A short quote may end before the checksum: then there is nothing to keep right.
                let csum = read16(self.msg, csum_at)?;
                if !(udp && csum == 0) {
                    let csum = update16(update32(csum, old_addr, addr), old_port, port);
                    self.set16(csum_at, udp_nonzero(udp, csum))?;
                }
            }
            PROTO_ICMP => {
                let old_ident = self.set16(l4 + icmp::field::ECHO_IDENT.start, port)?;
                let csum_at = l4 + icmp::field::CHECKSUM.start;
                let csum = read16(self.msg, csum_at)?;
                self.set16(csum_at, update16(csum, old_ident, port))?;
            }
            _ => {}
        }
        Some(())
    }
}

/// Whether the checksums of an IPv4 frame are right for its current bytes: `(header,
/// transport)`, the transport one true when the TCP/UDP/ICMP checksum verifies (a UDP zero, "no
/// checksum", counts as right), and for fragments (the checksum covers the whole datagram) or
/// protocols with no checksum known here. `None` when the frame does
/// not parse as IPv4. For tests and fuzzing: it sums the payload, which forwarding never does.
pub fn verify_checksums(frame: &[u8]) -> Option<(bool, bool)> {
    let parsed = super::parse::parse_frame(frame).ok()?;
    let super::parse::L3::Ipv4(ip) = parsed.l3 else {
        return None;
    };
    let packet = frame.get(ip.offset..ip.end())?;
    let header_ok = checksum::fold(checksum::sum(packet.get(..ip.header_len)?, 0)) == 0xffff;
    let l4 = packet.get(ip.header_len..)?;
    let l4_ok = match ip.protocol {
        _ if ip.is_fragment => true,
        PROTO_TCP | PROTO_UDP => {
            let len = u16::try_from(l4.len()).ok()?;
            let pseudo = checksum::pseudo_header_sum(ip.src, ip.dst, ip.protocol, len);
            (ip.protocol == PROTO_UDP && read16(l4, udp::field::CHECKSUM.start) == Some(0))
                || checksum::fold(checksum::sum(l4, pseudo)) == 0xffff
        }
        PROTO_ICMP => checksum::fold(checksum::sum(l4, 0)) == 0xffff,
        _ => true,
    };
    Some((header_ok, l4_ok))
}

/// Option type of a record route (RFC 791 section 3.1, `ping -R`).
const OPTION_RECORD_ROUTE: u8 = 7;

/// Records the route of a forwarded packet as Linux routers do (`ip_forward_options`): each
/// router it crosses writes the address it sends the packet from, `addrs` in order, into the
/// free slots of a record-route option of `header` (an IPv4 header with its options), and the
/// header checksum is recomputed. A full option stays as it is (RFC 791: the packet goes on
/// without), as does a header without one or whose options do not parse. Whether it changed.
pub fn record_route(header: &mut [u8], addrs: &[Ipv4Addr]) -> bool {
    let Some((at, len, header_len)) = find_option(header, OPTION_RECORD_ROUTE, 3) else {
        return false;
    };
    let mut changed = false;
    for addr in addrs {
        let pointer = usize::from(header[at + 2]);
        if pointer < 4 || pointer + 3 > len {
            break;
        }
        let slot = at + pointer - 1;
        header[slot..slot + 4].copy_from_slice(&addr.octets());
        header[at + 2] = header[at + 2].saturating_add(4);
        changed = true;
    }
    if changed {
        refresh_header_checksum(header, header_len);
    }
    changed
}

/// The first option of type `kind` and at least `min_len` bytes in `header` (an IPv4 header
/// with its options): its offset, its length and the header's length. `None` when there is
/// none, or the options before it do not parse (the walk stops at the end-of-options mark).
fn find_option(header: &[u8], kind: u8, min_len: usize) -> Option<(usize, usize, usize)> {
    let header_len = usize::from(header.first()? & 0x0f) * 4;
    if header_len <= ipv4::HEADER_LEN || header.len() < header_len {
        return None;
    }
    let mut at = ipv4::HEADER_LEN;
    while at < header_len {
        let this = header[at];
        let len = match this {
            0 => return None,
            1 => 1,
            _ => usize::from(header.get(at + 1).copied().unwrap_or(0)),
        };
        if (this != 1 && len < 2) || at + len > header_len {
            return None;
        }
        if this == kind {
            return (len >= min_len).then_some((at, len, header_len));
        }
        at += len;
    }
    None
}

/// Recomputes the checksum of an IPv4 header `header_len` bytes long.
fn refresh_header_checksum(header: &mut [u8], header_len: usize) {
    header[10..12].fill(0);
    let sum = checksum::ipv4_header_checksum(&header[..header_len]);
    header[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// Option type of an internet timestamp (RFC 791 section 3.1, `ping -T`).
const OPTION_TIMESTAMP: u8 = 68;

/// Stamps the timestamp option of a packet as the Linux routers it crosses would on receipt
/// (`ip_options_compile`): for each router, `ms` (milliseconds since midnight UTC) in the next
/// free entry, after the address it received the packet on (`addrs`, in order) when the
/// option asks for addresses too (`ping -T tsandaddr`); once full, its overflow count goes up
/// instead, at most to 15. Prespecified addresses (`tsprespec`) are left as they are, as is
/// a header without the option or whose options do not parse; the header checksum is
/// recomputed. Whether it changed.
pub fn timestamp(header: &mut [u8], addrs: &[Ipv4Addr], ms: u32) -> bool {
    let Some((at, len, header_len)) = find_option(header, OPTION_TIMESTAMP, 4) else {
        return false;
    };
    let flags = header[at + 3] & 0x0f;
    let entry = match flags {
        0 => 4,
        1 => 8,
        _ => return false,
    };
    let mut changed = false;
    for addr in addrs {
        let pointer = usize::from(header[at + 2]);
        if pointer < 5 {
            break;
        }
        if pointer + entry - 1 > len {
            let overflow = header[at + 3] >> 4;
            if overflow == 15 {
                break;
            }
            header[at + 3] = ((overflow + 1) << 4) | flags;
        } else {
            let slot = at + pointer - 1;
            if entry == 8 {
                header[slot..slot + 4].copy_from_slice(&addr.octets());
            }
            header[slot + entry - 4..slot + entry].copy_from_slice(&ms.to_be_bytes());
            header[at + 2] = header[at + 2].saturating_add(entry as u8);
        }
        changed = true;
    }
    if changed {
        refresh_header_checksum(header, header_len);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::checksum::{fold, l4_checksum, pseudo_header_sum};
    use crate::packet::parse::tests::fix_ip_checksum;
    use crate::packet::parse::{parse_frame, L3};
    use crate::packet::{build, samples};

    const A: Ipv4Addr = Ipv4Addr::new(172, 211, 0, 18);
    const B: Ipv4Addr = Ipv4Addr::new(172, 211, 0, 17);
    const EGRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 1);
    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 17);

    fn ipv4(frame: &[u8]) -> Ipv4Info {
        match parse_frame(frame).unwrap().l3 {
            L3::Ipv4(ip) => ip,
            other => panic!("not IPv4: {other:?}"),
        }
    }

    #[test]
    fn timestamp_stamps_each_router_then_counts_the_overflow() {
        // ping -T tsandaddr: 4 entries of address and time, the first taken by the sender.
        let mut header = vec![0x4e, 0, 0, 56, 0, 1, 0x40, 0, 64, 1, 0, 0];
        header.extend_from_slice(&[172, 211, 0, 20, 198, 51, 100, 10]);
        header.extend_from_slice(&[68, 36, 13, 1, 172, 211, 0, 20, 0, 0, 0, 9]);
        header.resize(56, 0);
        let t1 = Ipv4Addr::new(172, 211, 0, 17);
        let t0 = Ipv4Addr::new(100, 64, 0, 0);
        let ms = 0x0102_0304;
        assert!(timestamp(&mut header, &[t1, t0], ms));
        assert_eq!(header[22], 29, "pointer past the two stamped");
        assert_eq!(header[32..40], [172, 211, 0, 17, 1, 2, 3, 4]);
        assert_eq!(header[40..48], [100, 64, 0, 0, 1, 2, 3, 4]);
        assert_eq!(fold(checksum::sum(&header, 0)), 0xffff, "header checksum");
        // One entry left: the next router takes it, the one after counts itself as overflow.
        assert!(timestamp(&mut header, &[t1, t0], ms));
        assert_eq!((header[22], header[23]), (37, 0x11));
        assert_eq!(header[48..56], [172, 211, 0, 17, 1, 2, 3, 4]);
        header[23] = 0xf1;
        let full = header.clone();
        assert!(!timestamp(&mut header, &[t0], ms), "overflow spent");
        assert_eq!(header, full);

        // tsonly: times only; tsprespec and no option at all: left as they are.
        let mut only = full[..20].to_vec();
        only[0] = 0x47;
        only.extend_from_slice(&[68, 8, 5, 0, 0, 0, 0, 0]);
        assert!(timestamp(&mut only, &[t1], ms));
        assert_eq!((only[22], &only[24..28]), (9, &[1, 2, 3, 4][..]));
        let mut prespec = only.clone();
        prespec[22..24].copy_from_slice(&[5, 3]);
        let before = prespec.clone();
        assert!(!timestamp(&mut prespec, &[t1], ms));
        assert_eq!(prespec, before);
        let mut plain = full[..20].to_vec();
        plain[0] = 0x45;
        assert!(!timestamp(&mut plain, &[t1], ms));
    }

    #[test]
    fn record_route_fills_the_free_slots_in_order_and_keeps_the_checksum() {
        // ping -R from 172.211.0.20: a NOP, then a record route of 9 slots, the first filled.
        let mut header = vec![0x4f, 0xb8, 0, 124, 0, 1, 0x40, 0, 64, 1, 0, 0];
        header.extend_from_slice(&[172, 211, 0, 20, 198, 51, 100, 10]);
        header.extend_from_slice(&[1, 7, 39, 8, 172, 211, 0, 20]);
        header.resize(60, 0);
        let sum = checksum::ipv4_header_checksum(&header);
        header[10..12].copy_from_slice(&sum.to_be_bytes());
        let t1 = Ipv4Addr::new(100, 64, 0, 1);
        let t0 = Ipv4Addr::new(203, 0, 113, 2);
        assert!(record_route(&mut header, &[t1, t0]));
        assert_eq!(header[23], 16, "pointer past the two recorded");
        assert_eq!(header[28..32], t1.octets());
        assert_eq!(header[32..36], t0.octets());
        assert_eq!(header[36..40], [0; 4]);
        assert_eq!(header[1], 0xb8, "TOS untouched");
        assert_eq!(fold(checksum::sum(&header, 0)), 0xffff, "header checksum");

        // The last free slot takes one address; a full option none, the packet unchanged.
        header[23] = 36;
        assert!(record_route(&mut header, &[t1, t0]));
        assert_eq!((header[23], &header[56..60]), (40, &t1.octets()[..]));
        let full = header.clone();
        assert!(!record_route(&mut header, &[t0]));
        assert_eq!(header, full);

        // No option, options that do not parse, a header that is cut short: left as they are.
        let mut plain = full[..20].to_vec();
        plain[0] = 0x45;
        assert!(!record_route(&mut plain, &[t0]));
        let mut bad = full.clone();
        bad[21] = 0;
        assert!(!record_route(&mut bad, &[t0]));
        let mut bad = full.clone();
        bad[21..24].copy_from_slice(&[7, 39, 2]);
        assert!(!record_route(&mut bad, &[t0]));
        assert!(!record_route(&mut full.clone()[..30], &[t0]));
        // A timestamp first, then the record route: found behind it.
        let mut both = full[..20].to_vec();
        both[0] = 0x48;
        both.extend_from_slice(&[68, 4, 5, 0, 7, 7, 4, 0, 0, 0, 0, 0]);
        assert!(record_route(&mut both, &[t0]));
        assert_eq!((both[26], &both[27..31]), (8, &t0.octets()[..]));
    }

    /// Every checksum of the frame recomputed from scratch equals the stored one.
    fn assert_checksums(frame: &[u8]) {
        let ip = ipv4(frame); // verifies the IP header checksum
        let header = &frame[ip.offset..ip.l4_offset()];
        assert_eq!(
            checksum::ipv4_header_checksum(header),
            read16(header, 10).unwrap()
        );
        let l4 = &frame[ip.l4_offset()..ip.end()];
        match ip.protocol {
            PROTO_TCP => assert_eq!(
                read16(l4, 16).unwrap(),
                l4_checksum(ip.src, ip.dst, PROTO_TCP, l4)
            ),
            PROTO_UDP => assert_eq!(
                read16(l4, 6).unwrap(),
                l4_checksum(ip.src, ip.dst, PROTO_UDP, l4)
            ),
            PROTO_ICMP => assert_eq!(
                read16(l4, 2).unwrap(),
                l4_checksum(ip.src, ip.dst, PROTO_ICMP, l4)
            ),
            _ => {}
        }
        assert_eq!(verify_checksums(frame), Some((true, true)));
    }

    #[test]
    fn snat_and_dnat_on_captured_tcp() {
        let mut f = samples::TCP_SYN;
        let ip = ipv4(&f);
        rewrite_src(&mut f, &ip, EGRESS, 40001, false);
        assert_checksums(&f);
        let ip = ipv4(&f);
        assert_eq!((ip.src, ip.dst), (EGRESS, B));
        assert!(matches!(
            ip.l4,
            L4::Tcp {
                src_port: 40001,
                dst_port: 8080,
                ..
            }
        ));
        rewrite_dst(&mut f, &ip, POD, 80, false);
        assert_checksums(&f);
        let ip = ipv4(&f);
        assert_eq!((ip.src, ip.dst), (EGRESS, POD));
        assert!(matches!(
            ip.l4,
            L4::Tcp {
                src_port: 40001,
                dst_port: 80,
                ..
            }
        ));
        // And back: the translation is reversible to the byte.
        rewrite_dst(&mut f, &ip, B, 8080, false);
        let ip = ipv4(&f);
        rewrite_src(&mut f, &ip, A, 60698, false);
        assert_eq!(f, samples::TCP_SYN);
    }

    #[test]
    fn snat_and_dnat_on_captured_udp() {
        let mut f = samples::UDP_DNS;
        let ip = ipv4(&f);
        rewrite_src(&mut f, &ip, EGRESS, 1024, false);
        assert_checksums(&f);
        let ip = ipv4(&f);
        rewrite_dst(&mut f, &ip, POD, 53, false);
        assert_checksums(&f);
        assert_eq!(
            ipv4(&f).l4,
            L4::Udp {
                src_port: 1024,
                dst_port: 53
            }
        );
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let mut f = samples::UDP_DNS;
        f[40..42].fill(0);
        let ip = ipv4(&f);
        rewrite_src(&mut f, &ip, EGRESS, 1024, false);
        rewrite_dst(&mut f, &ip, POD, 53, false);
        assert_eq!(f[40..42], [0, 0]);
        assert_eq!(verify_checksums(&f), Some((true, true)));
        assert_eq!(
            ipv4(&f).l4,
            L4::Udp {
                src_port: 1024,
                dst_port: 53
            }
        );
    }

    #[test]
    fn udp_checksum_that_comes_out_zero_is_sent_as_ffff() {
        // Find the source port for which the UDP checksum of the SNATed datagram is zero.
        let ip = ipv4(&samples::UDP_DNS);
        let port = (0..=u16::MAX)
            .find(|&p| {
                let mut seg = samples::UDP_DNS[34..].to_vec();
                seg[0..2].copy_from_slice(&p.to_be_bytes());
                let pseudo = pseudo_header_sum(EGRESS, B, PROTO_UDP, seg.len() as u16);
                checksum::finish(checksum::sum(&seg[..6], 0) + checksum::sum(&seg[8..], pseudo))
                    == 0
            })
            .unwrap();
        let mut f = samples::UDP_DNS;
        rewrite_src(&mut f, &ip, EGRESS, port, false);
        assert_eq!(f[40..42], [0xff, 0xff]);
        assert_checksums(&f);
    }

    #[test]
    fn icmp_echo_ident_follows_nat() {
        let mut f = samples::ICMP_ECHO_REQUEST;
        let ip = ipv4(&f);
        // An address change alone leaves the ICMP checksum as it was.
        rewrite_src(&mut f, &ip, EGRESS, 3749, false);
        assert_eq!(f[36..38], samples::ICMP_ECHO_REQUEST[36..38]);
        assert_checksums(&f);
        rewrite_src(&mut f, &ip, EGRESS, 7, false);
        assert_checksums(&f);
        let ip = ipv4(&f);
        assert_eq!(
            ip.l4,
            L4::IcmpEcho {
                icmp_type: 8,
                code: 0,
                ident: 7,
                seq: 1
            }
        );
        rewrite_dst(&mut f, &ip, POD, 9, false);
        assert_checksums(&f);
        let ip = ipv4(&f);
        assert_eq!((ip.src, ip.dst), (EGRESS, POD));
        assert_eq!(
            ip.l4,
            L4::IcmpEcho {
                icmp_type: 8,
                code: 0,
                ident: 9,
                seq: 1
            }
        );
    }

    #[test]
    fn ttl_decrement() {
        let mut f = samples::TCP_SYN;
        let ip = ipv4(&f);
        decrement_ttl(&mut f, &ip, 1);
        assert_checksums(&f);
        assert_eq!(ipv4(&f).ttl, 63);
        decrement_ttl(&mut f, &ip, 5);
        assert_checksums(&f);
        assert_eq!(ipv4(&f).ttl, 58);
        decrement_ttl(&mut f, &ip, 200); // caller bug: stops at zero
        assert_checksums(&f);
        assert_eq!(ipv4(&f).ttl, 0);
        // The transport checksum does not cover the TTL.
        assert_eq!(f[34..], samples::TCP_SYN[34..]);
    }

    #[test]
    fn checksum_partial_tcp() {
        // The offloaded SYN: its checksum field holds fold(pseudo-header sum).
        let mut f = samples::TCP_SYN_PARTIAL;
        let len = 40;
        let ip = ipv4(&f);
        rewrite_src(&mut f, &ip, EGRESS, 40001, true);
        assert_eq!(
            read16(&f, 50),
            Some(fold(pseudo_header_sum(EGRESS, B, PROTO_TCP, len)))
        );
        let ip = ipv4(&f);
        assert!(matches!(
            ip.l4,
            L4::Tcp {
                src_port: 40001,
                ..
            }
        ));
        rewrite_dst(&mut f, &ip, POD, 80, true);
        assert_eq!(
            read16(&f, 50),
            Some(fold(pseudo_header_sum(EGRESS, POD, PROTO_TCP, len)))
        );
        assert_eq!(verify_checksums(&f).map(|v| v.0), Some(true));
        // What the kernel will do with it: complete the sum over the segment. It must verify.
        let seg = &mut f[34..];
        let done = checksum::finish(checksum::sum(seg, 0));
        seg[16..18].copy_from_slice(&done.to_be_bytes());
        assert_checksums(&f);
    }

    #[test]
    fn checksum_partial_udp_port_change_alone_leaves_field() {
        let mut f = samples::UDP_DNS;
        let partial = fold(pseudo_header_sum(A, B, PROTO_UDP, 14));
        f[40..42].copy_from_slice(&partial.to_be_bytes());
        let ip = ipv4(&f);
        rewrite_src(&mut f, &ip, A, 2000, true);
        assert_eq!(read16(&f, 40), Some(partial));
        rewrite_dst(&mut f, &ip, EGRESS, 53, true);
        assert_eq!(
            read16(&f, 40),
            Some(fold(pseudo_header_sum(A, EGRESS, PROTO_UDP, 14)))
        );
        assert_eq!(
            ipv4(&f).l4,
            L4::Udp {
                src_port: 2000,
                dst_port: 53
            }
        );
    }

    #[test]
    fn later_fragments_get_addresses_only() {
        let mut f = samples::UDP_DNS;
        f[20..22].copy_from_slice(&0x0003u16.to_be_bytes());
        fix_ip_checksum(&mut f);
        let ip = ipv4(&f);
        rewrite_src(&mut f, &ip, EGRESS, 1, false);
        assert_eq!(f[34..], samples::UDP_DNS[34..]);
        assert_eq!(ipv4(&f).src, EGRESS);
    }

    #[test]
    fn set_macs_writes_both() {
        let mut f = samples::ARP_REQUEST;
        set_macs(
            &mut f,
            MacAddr([2, 0, 0, 0, 0, 1]),
            MacAddr([2, 0, 0, 0, 0, 2]),
        );
        assert_eq!(f[..12], [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        set_macs(&mut f[..3], MacAddr::ZERO, MacAddr::ZERO); // too short: untouched, no panic
    }

    #[test]
    fn icmp_error_inner_udp_captured() {
        // The captured port unreachable from B to A quotes A's datagram to B whole. Pretend A's
        // datagram had been SNATed from POD:1024 and DNATed from EGRESS:53: put them back.
        let mut f = samples::ICMP_PORT_UNREACHABLE;
        let ip = ipv4(&f);
        let L4::IcmpError { inner, .. } = ip.l4 else {
            panic!()
        };
        rewrite_icmp_error_inner(&mut f, &ip, &inner, Some((POD, 1024)), Some((EGRESS, 53)));
        rewrite_dst(&mut f, &ip, POD, 0, false);
        assert_checksums(&f); // outer IP header and outer ICMP checksum
        let ip = ipv4(&f);
        let L4::IcmpError { inner, .. } = ip.l4 else {
            panic!()
        };
        assert_eq!(
            (inner.src, inner.src_port, inner.dst, inner.dst_port),
            (POD, 1024, EGRESS, 53)
        );
        // The quoted datagram is whole here, so its own checksums must be right too.
        let quoted = &f[inner.offset..ip.end()];
        assert_eq!(
            checksum::ipv4_header_checksum(&quoted[..20]),
            read16(quoted, 10).unwrap()
        );
        assert_eq!(
            read16(quoted, 26).unwrap(),
            l4_checksum(POD, EGRESS, PROTO_UDP, &quoted[20..])
        );
    }

    /// An ICMP error from `B` quoting the first `quote_len` bytes of `original` (an IP packet).
    fn error_quoting(original: &[u8], quote_len: usize, padding: usize) -> Vec<u8> {
        let mut out = vec![0u8; 600];
        let n = build::build_icmp_error(
            &mut out,
            MacAddr([2, 0, 0, 0, 0, 1]),
            MacAddr([2, 0, 0, 0, 0, 2]),
            B,
            icmp::DEST_UNREACHABLE,
            icmp::ADMIN_PROHIBITED,
            0,
            &original[..quote_len],
        )
        .unwrap();
        out.truncate(n);
        out.resize(n + padding, 0xee);
        out
    }

    #[test]
    fn icmp_error_inner_tcp_at_every_quote_length() {
        // What the translated SYN looks like, rewritten (and checked) on its own.
        let mut expected = samples::TCP_SYN;
        let ip = ipv4(&expected);
        rewrite_src(&mut expected, &ip, POD, 5555, false);
        assert_checksums(&expected);
        let original = &samples::TCP_SYN[14..];
        for quote_len in 20..=original.len() {
            let mut f = error_quoting(original, quote_len, 6);
            let ip = ipv4(&f);
            let L4::IcmpError { inner, .. } = ip.l4 else {
                panic!()
            };
            rewrite_icmp_error_inner(&mut f, &ip, &inner, Some((POD, 5555)), None);
            assert_checksums(&f);
            assert_eq!(f[ip.end()..], [0xee; 6], "padding untouched");
            // The quote is now the start of the translated SYN, checksums included; with fewer
            // than 4 bytes of TCP header the ports are not there and only the IP header changes.
            let quoted = &f[inner.offset..ip.end()];
            // A quote that ends inside the TCP checksum (byte 37) leaves that half-field alone.
            let translated = match quote_len {
                20..=23 => 20,
                37 => 36,
                n => n,
            };
            assert_eq!(
                quoted[..translated],
                expected[14..14 + translated],
                "quote of {quote_len}"
            );
            assert_eq!(
                quoted[translated..],
                original[translated..quote_len],
                "quote of {quote_len}"
            );
        }
    }

    #[test]
    fn icmp_error_inner_echo() {
        let original = &samples::ICMP_ECHO_REQUEST[14..];
        let mut expected = samples::ICMP_ECHO_REQUEST;
        let ip = ipv4(&expected);
        rewrite_src(&mut expected, &ip, EGRESS, 77, false);
        rewrite_dst(&mut expected, &ip, POD, 78, false);
        for quote_len in [20, 24, 28, original.len()] {
            let mut f = error_quoting(original, quote_len, 0);
            let ip = ipv4(&f);
            let L4::IcmpError { inner, .. } = ip.l4 else {
                panic!()
            };
            rewrite_icmp_error_inner(&mut f, &ip, &inner, Some((EGRESS, 77)), Some((POD, 78)));
            assert_checksums(&f);
            // The identifier needs the whole 8-byte ICMP header quoted (`has_ports`).
            let quoted = &f[inner.offset..ip.end()];
            let translated = if quote_len >= 28 { quote_len } else { 20 };
            assert_eq!(
                quoted[..translated],
                expected[14..14 + translated],
                "quote of {quote_len}"
            );
            assert_eq!(
                quoted[translated..],
                original[translated..quote_len],
                "quote of {quote_len}"
            );
        }
    }

    #[test]
    fn icmp_error_inner_needs_an_icmp_error() {
        let mut f = samples::TCP_SYN;
        let ip = ipv4(&f);
        let inner = InnerPacket {
            offset: 34,
            header_len: 20,
            protocol: PROTO_TCP,
            src: A,
            dst: B,
            src_port: 1,
            dst_port: 2,
            has_ports: true,
        };
        rewrite_icmp_error_inner(&mut f, &ip, &inner, Some((POD, 1)), None);
        assert_eq!(f, samples::TCP_SYN);
    }

    /// The fuzz target's invariants, on every single-bit mutant of every sample (with the IP
    /// header checksum made right so the mutants reach the transport layer): rewrites never
    /// panic, and checksums that were right stay right.
    #[test]
    fn rewrites_keep_checksums_right_on_mutants() {
        for sample in samples::ALL {
            for bit in 0..sample.len() * 8 {
                let mut frame = sample.to_vec();
                frame[bit / 8] ^= 1 << (bit % 8);
                if frame.len() >= 34
                    && frame[12..14] == [8, 0]
                    && (20..=60).contains(&(usize::from(frame[14] & 15) * 4))
                {
                    let hl = usize::from(frame[14] & 15) * 4;
                    if frame.len() >= 14 + hl {
                        let c = checksum::ipv4_header_checksum(&frame[14..14 + hl]);
                        frame[24..26].copy_from_slice(&c.to_be_bytes());
                    }
                }
                exercise(&frame);
            }
        }
    }

    /// splitmix64 from a fixed seed, so that a failure repeats.
    fn splitmix(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    /// Every sample, and a UDP datagram with no checksum.
    fn sample_frames() -> Vec<Vec<u8>> {
        let mut no_udp_csum = samples::UDP_DNS.to_vec();
        no_udp_csum[40..42].fill(0);
        let mut frames: Vec<Vec<u8>> = samples::ALL.iter().map(|f| f.to_vec()).collect();
        frames.push(no_udp_csum);
        frames
    }

    /// A random action (each part there or not) and whether the checksum is partial.
    fn random_action(next: &mut impl FnMut() -> u64) -> (Action, bool) {
        let r = next();
        let pick = |bit: u32| r >> bit & 1 == 1;
        let mut endpoint = || {
            let v = next();
            (Ipv4Addr::from(v as u32), (v >> 32) as u16)
        };
        let snat = pick(1).then(&mut endpoint);
        let dnat = pick(2).then(&mut endpoint);
        let macs = pick(3).then(|| {
            let m = next().to_be_bytes();
            (
                MacAddr([m[0], m[1], m[2], m[3], m[4], m[5]]),
                MacAddr([m[2], m[3], m[4], m[5], m[6], m[7]]),
            )
        });
        let action = Action {
            ttl_dec: if pick(0) { (r >> 8) as u8 % 4 } else { 0 },
            snat,
            dnat,
            macs,
        };
        (action, pick(4))
    }

    /// The combined rewrite against the functions in turn, byte for byte: random actions on
    /// every sample, with and without CHECKSUM_PARTIAL, and on a UDP datagram with no checksum.
    #[test]
    fn apply_action_equals_the_rewrites_in_turn() {
        let mut next = splitmix(0x5eed);
        let mut cases = 0;
        for frame in &sample_frames() {
            let Ok(parsed) = parse_frame(frame) else {
                continue;
            };
            let L3::Ipv4(ip) = parsed.l3 else { continue };
            for _ in 0..2000 {
                let (action, partial) = random_action(&mut next);
                let mut old = frame.clone();
                if action.ttl_dec > 0 {
                    decrement_ttl(&mut old, &ip, action.ttl_dec);
                }
                if let Some((addr, port)) = action.snat {
                    rewrite_src(&mut old, &ip, addr, port, partial);
                }
                if let Some((addr, port)) = action.dnat {
                    rewrite_dst(&mut old, &ip, addr, port, partial);
                }
                if let Some((src, dst)) = action.macs {
                    set_macs(&mut old, src, dst);
                }
                let mut new = frame.clone();
                apply_action(&mut new, &ip, &action, partial);
                assert_eq!(new, old, "{action:?} partial {partial} on {frame:02x?}");
                cases += 1;
            }
        }
        assert!(cases >= 8 * 2000);
        // Whatever the frame, a mismatched `Ipv4Info` never panics.
        let ip = ipv4(&samples::TCP_SYN);
        let all = Action {
            ttl_dec: 1,
            snat: Some((A, 1)),
            dnat: Some((B, 2)),
            macs: Some((MacAddr([2; 6]), MacAddr([4; 6]))),
        };
        for n in 0..samples::TCP_SYN.len() {
            apply_action(&mut samples::TCP_SYN[..n].to_vec(), &ip, &all, false);
        }
    }

    /// The fixed-offset rewrite against the general one, byte for byte, on every sample the
    /// fast parse accepts: random actions, with and without CHECKSUM_PARTIAL, on a UDP datagram
    /// with no checksum, on frames cut short, and on the samples with their addresses, ports and
    /// checksums replaced by random values and by the edges of ones'-complement arithmetic (0,
    /// 0xffff), so that every carry and every zero sum is met.
    #[test]
    fn apply_action_v4_equals_apply_action() {
        let mut next = splitmix(0xfa57);
        let mut cases = 0;
        for frame in &sample_frames() {
            // The general rewrite reads only the offsets and the protocol of the parse.
            let Some(ip) = super::super::parse::parse_ipv4_fast(frame) else {
                continue;
            };
            for round in 0..4000 {
                let mut frame = frame.clone();
                if round >= 1000 {
                    // Addresses, ports, TTL and both checksums (the TCP one lies past byte 42).
                    let tcp_csum = if frame[23] == PROTO_UDP { 40 } else { 50 };
                    for at in [22, 24, 26, 28, 30, 32, 34, 36, 40, tcp_csum] {
                        let r = next();
                        let word = match r % 4 {
                            0 => 0,
                            1 => 0xffff,
                            _ => (r >> 8) as u16,
                        };
                        frame[at..at + 2].copy_from_slice(&word.to_be_bytes());
                    }
                    // TTL and protocol share a word: the protocol stays.
                    frame[23] = if tcp_csum == 40 { PROTO_UDP } else { PROTO_TCP };
                }
                let (mut action, partial) = random_action(&mut next);
                if round % 3 == 0 {
                    // An address translated to itself (a new port only): the sum of `~m + m'`
                    // is all ones, where a carry dropped would show.
                    let at = |i: usize| {
                        Ipv4Addr::new(frame[i], frame[i + 1], frame[i + 2], frame[i + 3])
                    };
                    action.snat = action.snat.map(|(_, port)| (at(26), port));
                    action.dnat = action.dnat.map(|(_, port)| (at(30), port));
                }
                let mut general = frame.clone();
                apply_action(&mut general, &ip, &action, partial);
                let mut fixed = frame.clone();
                apply_action_v4(&mut fixed, ip.protocol == PROTO_UDP, &action.v4(), partial);
                assert_eq!(
                    fixed, general,
                    "{action:?} partial {partial} on {frame:02x?}"
                );
                cases += 1;
            }
            for n in 0..frame.len() {
                let mut cut = frame[..n].to_vec();
                let all = Action {
                    ttl_dec: 1,
                    snat: Some((A, 1)),
                    dnat: Some((B, 2)),
                    macs: None,
                };
                apply_action_v4(&mut cut, frame[23] == PROTO_UDP, &all.v4(), false);
                assert!(cut == frame[..n] || n >= 42, "a short frame is left alone");
            }
        }
        assert!(cases >= 3 * 4000, "{cases}");
    }

    fn exercise(frame: &[u8]) {
        let Ok(parsed) = parse_frame(frame) else {
            return;
        };
        let L3::Ipv4(ip) = parsed.l3 else { return };
        let before = verify_checksums(frame);
        for partial in [false, true] {
            let mut f = frame.to_vec();
            decrement_ttl(&mut f, &ip, 1);
            rewrite_src(&mut f, &ip, EGRESS, 4242, partial);
            rewrite_dst(&mut f, &ip, POD, 8080, partial);
            if let L4::IcmpError { inner, .. } = ip.l4 {
                rewrite_icmp_error_inner(&mut f, &ip, &inner, Some((POD, 1)), Some((A, 2)));
            }
            let after = verify_checksums(&f);
            assert_eq!(after.map(|v| v.0), Some(true), "IP header checksum");
            // A partial checksum is completed later, over bytes that then are right.
            if !partial && before.map(|v| v.1) == Some(true) {
                assert_eq!(
                    after.map(|v| v.1),
                    Some(true),
                    "transport checksum {frame:02x?}"
                );
            }
        }
    }

    /// A small xorshift generator, seeded, so that the cases below are the same on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u8 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 24) as u8
        }
    }

    /// Options of `len` bytes, most of them options a router looks at, with lengths, pointers
    /// and overflow counts that fit, nearly fit or are anything from 0 to 255.
    fn arbitrary_options(rng: &mut Rng, len: usize) -> Vec<u8> {
        let mut o = Vec::with_capacity(len);
        while o.len() < len {
            let kinds = [0, 1, 7, 7, 7, 68, 68, 68, 131, 137, 148, rng.next()];
            let kind = kinds[usize::from(rng.next() % 12)];
            let room = u8::try_from(len - o.len()).unwrap();
            let opt_len = match rng.next() % 8 {
                0 => rng.next(),
                1 => room.saturating_sub(rng.next() % 3),
                _ => 2 + rng.next() % room.saturating_sub(1).max(1),
            };
            let pointer = match rng.next() % 4 {
                0 => rng.next(),
                1 => opt_len.wrapping_add(rng.next() % 8).wrapping_sub(4),
                _ => 4 + u8::from(kind == 68) + 4 * (rng.next() % (opt_len / 4).max(1)),
            };
            let flags = [0, 1, 3, rng.next()][usize::from(rng.next() % 4)] & 0x0f;
            let overflow = if rng.next() & 1 == 0 {
                15
            } else {
                rng.next() >> 4
            };
            o.extend_from_slice(&[kind, opt_len, pointer, (overflow << 4) | flags]);
            for _ in 4..usize::from(opt_len).min(12) {
                o.push(rng.next());
            }
        }
        o.truncate(len);
        o
    }

    /// Where each option of `header` starts and ends, walked as the router walks them, up to
    /// the end-of-options or the first that does not parse.
    fn option_spans(header: &[u8]) -> Vec<(usize, usize)> {
        let end = usize::from(header[0] & 0x0f) * 4;
        let mut spans = Vec::new();
        let mut at = 20;
        while at < end && header[at] != 0 {
            let len = if header[at] == 1 {
                1
            } else {
                usize::from(header.get(at + 1).copied().unwrap_or(0))
            };
            if len == 0 || (header[at] != 1 && len < 2) || at + len > end {
                break;
            }
            spans.push((at, at + len));
            at += len;
        }
        spans
    }

    /// What must hold after `record_route` or `timestamp` changed `before` into `after`: the
    /// header length, every byte outside the value part of one option of `kind` (past its
    /// type, length) and the checksum, and the payload unchanged; the header checksum right.
    /// The span of the option changed.
    fn only_the_option_changed(before: &[u8], after: &[u8], kind: u8) -> (usize, usize) {
        let header_len = usize::from(before[0] & 0x0f) * 4;
        assert_eq!(after.len(), before.len());
        assert_eq!(after[0], before[0], "header length");
        assert_eq!(after[header_len..], before[header_len..], "payload");
        assert_eq!(
            fold(checksum::sum(&after[..header_len], 0)),
            0xffff,
            "header checksum"
        );
        let changed: Vec<usize> = (0..header_len)
            .filter(|&i| !(10..12).contains(&i) && after[i] != before[i])
            .collect();
        let span = option_spans(before)
            .into_iter()
            .find(|&(s, e)| before[s] == kind && changed.iter().all(|&i| i >= s + 2 && i < e));
        span.unwrap_or_else(|| {
            panic!("bytes {changed:?} changed outside an option {kind}: {before:?}")
        })
    }

    #[test]
    fn record_route_and_timestamp_keep_every_other_byte_of_arbitrary_headers() {
        let mut rng = Rng(0x5eed_0000_7ac1_f1c0);
        let addrs: Vec<Ipv4Addr> = (1..=8).map(|i| Ipv4Addr::new(100, 64, i, 1)).collect();
        let ms = 0x0102_0304;
        let mut stamped = [0usize; 2];
        for ihl in 6..=15u8 {
            for case in 0..3000 {
                let header_len = usize::from(ihl) * 4;
                let mut before = vec![0x40 | ihl, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
                before.extend_from_slice(&[172, 211, 0, 20, 198, 51, 100, 10]);
                before.extend(arbitrary_options(&mut rng, header_len - 20));
                before[3] = u8::try_from(header_len + 8).unwrap();
                let sum = checksum::ipv4_header_checksum(&before[..header_len]);
                before[10..12].copy_from_slice(&sum.to_be_bytes());
                before.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
                let n = case % (addrs.len() + 1);
                let problem = crate::packet::parse::ip_options_problem(&before[..header_len]);
                if let Some(p) = problem {
                    assert!((20..header_len).contains(&usize::from(p)), "{p} {before:?}");
                }

                let mut after = before.clone();
                if record_route(&mut after, &addrs[..n]) {
                    let (s, _) = only_the_option_changed(&before, &after, OPTION_RECORD_ROUTE);
                    let (from, to) = (usize::from(before[s + 2]), usize::from(after[s + 2]));
                    assert!(to > from && (to - from).is_multiple_of(4) && (to - from) / 4 <= n);
                    let recorded: Vec<u8> = addrs.iter().flat_map(|a| a.octets()).collect();
                    assert_eq!(after[s + from - 1..s + to - 1], recorded[..to - from]);
                    stamped[0] += 1;
                } else {
                    assert_eq!(after, before);
                    // A record route that holds and has room takes the first address.
                    let rr = option_spans(&before)
                        .into_iter()
                        .find(|&(s, _)| before[s] == 7);
                    if let (None, Some((s, e)), true) = (problem, rr, n > 0) {
                        assert!(usize::from(before[s + 2]) > e - s, "not filled: {before:?}");
                    }
                }

                let mut after = before.clone();
                if timestamp(&mut after, &addrs[..n], ms) {
                    let (s, _) = only_the_option_changed(&before, &after, OPTION_TIMESTAMP);
                    assert!(after[s + 2] >= before[s + 2], "pointer went back");
                    assert_eq!(after[s + 3] & 0x0f, before[s + 3] & 0x0f, "flags");
                    assert!(
                        after[s + 3] >> 4 >= before[s + 3] >> 4,
                        "overflow went back"
                    );
                    stamped[1] += 1;
                } else {
                    assert_eq!(after, before);
                }

                // The parameter problem a bad option is answered with points at its octet.
                if let Some(p) = problem {
                    let mut out = [0u8; 256];
                    let mac = MacAddr([2, 0, 0, 0, 0, 1]);
                    let len = build::build_icmp_error(
                        &mut out,
                        mac,
                        mac,
                        B,
                        icmp::PARAM_PROBLEM,
                        0,
                        u16::from(p),
                        &before,
                    )
                    .expect("an error fits");
                    assert_eq!(out[34 + 4], p, "pointer");
                    assert_eq!(verify_checksums(&out[..len]), Some((true, true)));
                }
            }
        }
        // The generator reaches both rewrites often, or the properties above say little.
        assert!(stamped.iter().all(|&k| k > 1000), "{stamped:?}");
    }
}
