//! IPv4 headers (RFC 791).
//!
//! `new_checked` validates what every later getter relies on: the fixed header is present, the
//! version is 4, the header length (IHL) is at least 5 words and no more than the total length,
//! and the total length no more than the buffer. A buffer may be longer than the total length
//! (Ethernet pads short frames to 60 bytes): [`Ipv4Packet::payload`] stops at the total length,
//! so padding is never mistaken for data. The header checksum is checked apart
//! ([`Ipv4Packet::verify_checksum`]) because builders check a view before they fill it.

use std::net::Ipv4Addr;

use super::checksum;
use super::{get_u16, get_u32, put_u16, put_u32, WireError};

/// ICMP (RFC 792).
pub const PROTO_ICMP: u8 = 1;
/// TCP (RFC 9293).
pub const PROTO_TCP: u8 = 6;
/// UDP (RFC 768).
pub const PROTO_UDP: u8 = 17;

/// The "don't fragment" flag, in the flags-and-fragment-offset word.
pub const FLAG_DF: u16 = 0x4000;
/// The "more fragments" flag, in the flags-and-fragment-offset word.
pub const FLAG_MF: u16 = 0x2000;
/// The fragment offset mask (in 8-byte units) of the flags-and-fragment-offset word.
pub const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// Field offsets.
pub mod field {
    use std::ops::Range;

    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// Length of the header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// A view of an IPv4 packet in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// A view with no checks: getters may panic on a short or inconsistent buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// A view of a buffer whose header and lengths are consistent (see the module note); after it
    /// no getter panics.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// The checks of [`Ipv4Packet::new_checked`], in the order a reader meets the fields.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != 4 {
            return Err(WireError::BadVersion);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(WireError::BadHeaderLength);
        }
        let total_len = self.total_len();
        if total_len < header_len || total_len > len {
            return Err(WireError::BadTotalLength);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header length in bytes (IHL * 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    pub fn total_len(&self) -> usize {
        usize::from(get_u16(self.buffer.as_ref(), field::LENGTH.start))
    }

    pub fn ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::IDENT.start)
    }

    fn flags_and_offset(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::FLG_OFF.start)
    }

    pub fn dont_frag(&self) -> bool {
        self.flags_and_offset() & FLAG_DF != 0
    }

    pub fn more_frags(&self) -> bool {
        self.flags_and_offset() & FLAG_MF != 0
    }

    /// The fragment offset in bytes.
    pub fn frag_offset(&self) -> usize {
        usize::from(self.flags_and_offset() & FRAG_OFFSET_MASK) * 8
    }

    /// MF set or a non-zero offset: this packet is one piece of a larger datagram.
    pub fn is_fragment(&self) -> bool {
        self.flags_and_offset() & (FLAG_MF | FRAG_OFFSET_MASK) != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        get_u32(self.buffer.as_ref(), field::SRC_ADDR.start).into()
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        get_u32(self.buffer.as_ref(), field::DST_ADDR.start).into()
    }

    /// The whole header, options included.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// True when the header sums to 0xffff (RFC 1071: a correct header verifies to all ones).
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.header(), 0)) == 0xffff
    }

    /// The payload, up to the total length (padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets version 4 and the header length in bytes (a multiple of 4, 20 to 60).
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) as u8 & 0x0f);
    }

    pub fn set_dscp_ecn(&mut self, v: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = v;
    }

    pub fn set_total_len(&mut self, len: u16) {
        put_u16(self.buffer.as_mut(), field::LENGTH.start, len);
    }

    pub fn set_ident(&mut self, ident: u16) {
        put_u16(self.buffer.as_mut(), field::IDENT.start, ident);
    }

    /// Sets the flags-and-fragment-offset word: DF as given, MF clear, offset 0.
    pub fn set_unfragmented(&mut self, dont_frag: bool) {
        let v = if dont_frag { FLAG_DF } else { 0 };
        put_u16(self.buffer.as_mut(), field::FLG_OFF.start, v);
    }

    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    pub fn set_protocol(&mut self, protocol: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol;
    }

    pub fn set_checksum(&mut self, csum: u16) {
        put_u16(self.buffer.as_mut(), field::CHECKSUM.start, csum);
    }

    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        put_u32(self.buffer.as_mut(), field::SRC_ADDR.start, addr.into());
    }

    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        put_u32(self.buffer.as_mut(), field::DST_ADDR.start, addr.into());
    }

    /// Computes the header checksum over the header as it now stands and stores it.
    pub fn fill_checksum(&mut self) {
        let header_len = self.header_len();
        let csum = checksum::ipv4_header_checksum(&self.buffer.as_ref()[..header_len]);
        self.set_checksum(csum);
    }

    /// The payload, up to the total length.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..self.total_len();
        &mut self.buffer.as_mut()[range]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::samples;

    #[test]
    fn deconstruct_captured_echo_request() {
        let ip = Ipv4Packet::new_checked(&samples::ICMP_ECHO_REQUEST[14..]).unwrap();
        assert_eq!(ip.version(), 4);
        assert_eq!(ip.header_len(), 20);
        assert_eq!(ip.total_len(), 52);
        assert_eq!(ip.ident(), 0xf97c);
        assert!(ip.dont_frag() && !ip.more_frags() && !ip.is_fragment());
        assert_eq!(ip.ttl(), 64);
        assert_eq!(ip.protocol(), PROTO_ICMP);
        assert_eq!(ip.checksum(), 0xe782);
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), Ipv4Addr::new(172, 211, 0, 18));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(172, 211, 0, 17));
        assert_eq!(ip.payload().len(), 32);
        assert_eq!(&ip.payload()[24..], b"Pacific!");
    }

    #[test]
    fn construct_captured_rst_header() {
        let mut buf = [0u8; 40];
        buf[20..].copy_from_slice(&samples::TCP_RST_ACK[34..]);
        let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
        ip.set_version_and_header_len(20);
        ip.set_total_len(40);
        ip.set_unfragmented(true);
        ip.set_ttl(64);
        ip.set_protocol(PROTO_TCP);
        ip.set_src_addr(Ipv4Addr::new(172, 211, 0, 17));
        ip.set_dst_addr(Ipv4Addr::new(172, 211, 0, 18));
        ip.fill_checksum();
        assert_eq!(buf[..], samples::TCP_RST_ACK[14..]);
    }

    #[test]
    fn padding_beyond_total_length_is_kept_out() {
        let mut frame = samples::TCP_RST_ACK.to_vec();
        frame.resize(60, 0); // as the sender's NIC pads it
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        assert_eq!(ip.payload().len(), 20);
    }

    #[test]
    fn inconsistent_lengths_are_rejected() {
        let good = &samples::ICMP_ECHO_REQUEST[14..];
        let with = |at: usize, v: u8| {
            let mut b = good.to_vec();
            b[at] = v;
            Ipv4Packet::new_checked(b).err()
        };
        assert_eq!(with(0, 0x65), Some(WireError::BadVersion));
        for ihl in 0..5u8 {
            assert_eq!(
                with(0, 0x40 | ihl),
                Some(WireError::BadHeaderLength),
                "IHL {ihl}"
            );
        }
        assert_eq!(with(0, 0x4f), Some(WireError::BadTotalLength)); // 60 > total length 52
        assert_eq!(with(3, 19), Some(WireError::BadTotalLength)); // total < header
        assert_eq!(with(3, 53), Some(WireError::BadTotalLength)); // total > buffer
        assert_eq!(with(3, 20), None); // a bare header is a packet
        assert_eq!(
            Ipv4Packet::new_checked(&good[..19]).err(),
            Some(WireError::Truncated)
        );
    }
}
