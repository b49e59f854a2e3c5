//! The Internet checksum: full sums (RFC 1071) and incremental updates (RFC 1624).
//!
//! A sum is carried as an unfolded `u32` so that pieces (a pseudo-header, a header, a payload)
//! can be added before one final [`fold`]. The forwarding path never sums a payload: NAT and TTL
//! changes go through [`update16`]/[`update32`], which cost a few additions whatever the packet
//! size. RFC 1624's equation 3, `HC' = ~(~HC + ~m + m')`, is used rather than RFC 1141's
//! `HC' = HC + m - m'`, which yields a wrong `-0` (0xffff) when the true result is `+0`.
//!
//! Frames read from a TAP with checksum offload may carry CHECKSUM_PARTIAL TCP/UDP checksums
//! (virtio `NEEDS_CSUM`): the field then holds the folded but *uncomplemented* pseudo-header sum,
//! and the kernel (or the NIC) completes it over the segment later. [`update_partial32`] keeps
//! such a field right when NAT changes an address.
//!
//! [`sum`] is the plain loop over 16-bit words: only builders and tests sum whole packets, and the
//! forwarding path sums no more than an IPv4 header, so a wider (32- or 64-bit) accumulation was
//! not worth its subtlety.

use std::net::Ipv4Addr;

use super::ipv4::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// Adds `data`, as big-endian 16-bit words, to `initial` (ones'-complement, carries kept in the
/// upper bits). An odd last byte is padded with a zero byte (RFC 1071 section 4.1).
pub fn sum(data: &[u8], initial: u32) -> u32 {
    let mut acc = u64::from(initial);
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    // Only past 4 GiB of carries does this loop run; 2^32 = 1 (mod 0xffff) keeps the value.
    while acc >> 32 != 0 {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    acc as u32
}

/// Folds the carries of a sum into 16 bits. Not complemented.
#[inline]
pub fn fold(sum: u32) -> u16 {
    // The halves added with the carry out added back in (an add and an add-with-carry): what
    // two rounds of `(s & 0xffff) + (s >> 16)` give, since the first leaves at most 0x1fffe.
    // With a carry the 16-bit sum is at most 0xfffe, so adding it back cannot carry again.
    let (s, carry) = (sum as u16).overflowing_add((sum >> 16) as u16);
    s + u16::from(carry)
}

/// The value to store in a checksum field: the complement of the folded sum.
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// The sum of the TCP/UDP pseudo-header (RFC 793 section 3.1, RFC 768): source and destination
/// addresses, zero and protocol, and the length of the TCP/UDP segment.
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4_len: u16) -> u32 {
    let s = u32::from(src);
    let d = u32::from(dst);
    (s >> 16) + (s & 0xffff) + (d >> 16) + (d & 0xffff) + u32::from(protocol) + u32::from(l4_len)
}

/// The checksum of an IPv4 header (RFC 791 section 3.1), with its checksum field (bytes 10 and
/// 11) taken as zero whatever it holds.
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    finish(sum_skipping(header, 10))
}

/// The full TCP or UDP checksum of `segment` (header and payload), with its checksum field taken
/// as zero. For UDP a computed 0 is sent as 0xffff, since 0 means "no checksum" (RFC 768). For
/// ICMP, which has no pseudo-header (RFC 792), the ICMP checksum (field at bytes 2 and 3); for
/// any other protocol the pseudo-header plus the segment, nothing skipped.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let len = u16::try_from(segment.len()).unwrap_or(u16::MAX);
    let pseudo = pseudo_header_sum(src, dst, protocol, len);
    let s = match protocol {
        PROTO_TCP => sum_skipping(segment, 16) + pseudo,
        PROTO_UDP => sum_skipping(segment, 6) + pseudo,
        PROTO_ICMP => sum_skipping(segment, 2),
        _ => sum(segment, pseudo),
    };
    let c = finish(s);
    if protocol == PROTO_UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// Sum of `data` without the 16-bit word at the even offset `at` (a checksum field). The result
/// stays below 2^31 for `data` up to 64 KiB, so callers may add a pseudo-header sum to it.
fn sum_skipping(data: &[u8], at: usize) -> u32 {
    match (data.get(..at), data.get(at + 2..)) {
        (Some(head), Some(tail)) => fold(sum(tail, u32::from(fold(sum(head, 0))))).into(),
        _ => fold(sum(data, 0)).into(),
    }
}

/// A stored checksum updated for one 16-bit word changing from `old` to `new`
/// (RFC 1624 section 3, equation 3: `HC' = ~(~HC + ~m + m')`).
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!csum) + u32::from(!old) + u32::from(new))
}

/// A stored checksum updated for a 32-bit value (an IPv4 address) changing: two [`update16`]
/// steps in one sum.
pub fn update32(csum: u16, old: u32, new: u32) -> u16 {
    let s = u32::from(!csum)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!(old as u16))
        + (new >> 16)
        + (new & 0xffff);
    !fold(s)
}

/// A CHECKSUM_PARTIAL field (virtio `NEEDS_CSUM`: it holds the folded, *uncomplemented*
/// pseudo-header sum `S`) updated for an address changing: `S' = S + ~m + m'`, folded. The result
/// equals `fold(pseudo_header_sum(..))` computed afresh with the new address.
pub fn update_partial32(partial: u16, old: u32, new: u32) -> u16 {
    let s = u32::from(partial)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!(old as u16))
        + (new >> 16)
        + (new & 0xffff);
    fold(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::samples;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2 once folded.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(finish(sum(&data, 0)), !0xddf2);
        // Byte-order independence and odd lengths: a trailing byte is the high half of a word.
        assert_eq!(
            fold(sum(&data[..7], 0)),
            fold(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0x00], 0))
        );
        assert_eq!(sum(&[0xab], 0), 0xab00);
        assert_eq!(sum(&[], 7), 7);
    }

    /// The fold with the carry added back gives what two rounds of adding the halves give, on
    /// the edges (a zero sum, all ones, the largest carries) and on a spread of values.
    #[test]
    fn fold_adds_the_halves_with_their_carry() {
        let two_rounds = |x: u32| {
            let s = (x & 0xffff) + (x >> 16);
            ((s & 0xffff) + (s >> 16)) as u16
        };
        let edges = [
            0,
            1,
            0xffff,
            0x1_0000,
            0x1_fffe,
            0xffff_0000,
            0xffff_fffe,
            u32::MAX,
        ];
        let spread = (0..1 << 20).map(|i: u32| i.wrapping_mul(0x9e37_79b9));
        for x in edges.into_iter().chain(spread) {
            assert_eq!(fold(x), two_rounds(x), "{x:#x}");
        }
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xffff), 0xffff);
        assert_eq!(fold(0x1_fffe), 0xffff);
    }

    #[test]
    fn sum_in_pieces_equals_sum_whole() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1501).collect();
        let whole = fold(sum(&data, 0));
        for split in (0..data.len()).step_by(2) {
            let s = sum(&data[split..], sum(&data[..split], 0));
            assert_eq!(fold(s), whole, "split at {split}");
        }
        // Many large words do not overflow.
        let big = vec![0xffu8; 70_000];
        assert_eq!(fold(sum(&big, 0xffff_ffff)), 0xffff);
    }

    #[test]
    fn ipv4_header_of_captured_frames() {
        // The kernel computed these; ours must agree and a header must verify to 0xffff.
        for frame in [
            &samples::ICMP_ECHO_REQUEST[..],
            &samples::TCP_SYN,
            &samples::UDP_DNS,
        ] {
            let header = &frame[14..34];
            assert_eq!(
                ipv4_header_checksum(header),
                u16::from_be_bytes([header[10], header[11]])
            );
            assert_eq!(fold(sum(header, 0)), 0xffff);
        }
    }

    #[test]
    fn l4_of_captured_frames() {
        let a = Ipv4Addr::new(172, 211, 0, 18);
        let b = Ipv4Addr::new(172, 211, 0, 17);
        let syn = &samples::TCP_SYN[34..];
        assert_eq!(l4_checksum(a, b, PROTO_TCP, syn), 0xebc1);
        let udp = &samples::UDP_DNS[34..];
        assert_eq!(l4_checksum(a, b, PROTO_UDP, udp), 0x6e43);
        let rst = &samples::TCP_RST_ACK[34..];
        assert_eq!(l4_checksum(b, a, PROTO_TCP, rst), 0xa928);
        let echo = &samples::ICMP_ECHO_REQUEST[34..];
        assert_eq!(l4_checksum(a, b, PROTO_ICMP, echo), 0x2838);
        // The offloaded SYN carries the folded pseudo-header sum, uncomplemented.
        let partial = &samples::TCP_SYN_PARTIAL[34..];
        assert_eq!(
            u16::from_be_bytes([partial[16], partial[17]]),
            fold(pseudo_header_sum(a, b, PROTO_TCP, partial.len() as u16))
        );
    }

    #[test]
    fn udp_zero_is_sent_as_ffff() {
        // Find a payload whose checksum comes out as zero: the last two bytes absorb the rest.
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        let mut seg = [0u8, 1, 0, 2, 0, 10, 0, 0, 0, 0];
        let s = fold(sum(&seg, pseudo_header_sum(a, b, PROTO_UDP, 10)));
        // Adding the complement of the sum makes the folded sum 0xffff, the checksum 0.
        seg[8..10].copy_from_slice(&(!s).to_be_bytes());
        assert_eq!(l4_checksum(a, b, PROTO_UDP, &seg), 0xffff);
    }

    #[test]
    fn incremental_equals_recomputed() {
        let mut header = samples::ICMP_ECHO_REQUEST[14..34].to_vec();
        let mut csum = ipv4_header_checksum(&header);
        for new in [0u32, 1, 0xffff_ffff, 0xac11_0001, 0x0a00_00ff, 0x8000_0000] {
            let old = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
            header[12..16].copy_from_slice(&new.to_be_bytes());
            csum = update32(csum, old, new);
            assert_eq!(csum, ipv4_header_checksum(&header), "src {new:#x}");
        }
        // TTL 64 -> 1, one word at a time, through every value.
        for ttl in (1..64u8).rev() {
            let old = u16::from_be_bytes([header[8], header[9]]);
            header[8] = ttl;
            let new = u16::from_be_bytes([header[8], header[9]]);
            csum = update16(csum, old, new);
            assert_eq!(csum, ipv4_header_checksum(&header), "ttl {ttl}");
        }
    }

    #[test]
    fn rfc1624_negative_zero_case() {
        // RFC 1624 section 4: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285 gives 0x0000, not 0xffff.
        assert_eq!(update16(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn partial_update_matches_fresh_pseudo_header() {
        let (a, b) = (
            Ipv4Addr::new(172, 211, 0, 18),
            Ipv4Addr::new(172, 211, 0, 17),
        );
        let before = fold(pseudo_header_sum(a, b, PROTO_TCP, 40));
        for new in [
            Ipv4Addr::new(198, 18, 0, 1),
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::BROADCAST,
        ] {
            let after = update_partial32(before, a.into(), new.into());
            assert_eq!(
                after,
                fold(pseudo_header_sum(new, b, PROTO_TCP, 40)),
                "{new}"
            );
        }
    }
}
