//! TCP segments (RFC 9293 section 3.1), header fields only.
//!
//! The dataplane reads ports, sequence numbers and flags for connection tracking and writes ports
//! and the checksum for NAT; options are carried through untouched. `new_checked` validates the
//! data offset (5 to 15 words, within the segment), so [`TcpSegment::payload`] never panics.

use std::net::Ipv4Addr;

use super::checksum;
use super::ipv4::PROTO_TCP;
use super::{get_u16, get_u32, put_u16, put_u32, WireError};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
/// ECN-Echo (RFC 3168).
pub const ECE: u8 = 0x40;
/// Congestion Window Reduced (RFC 3168).
pub const CWR: u8 = 0x80;

/// Field offsets.
pub mod field {
    use std::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    /// Data offset in the high nibble; the low nibble is reserved.
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Length of the header without options.
pub const HEADER_LEN: usize = field::URGENT.end;

/// A view of a TCP segment in a buffer (the IP payload, exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpSegment<T> {
    /// A view with no checks: getters may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpSegment { buffer }
    }

    /// A view of a buffer that holds the header its data offset announces; after it no getter
    /// panics.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let segment = Self::new_unchecked(buffer);
        segment.check_len()?;
        Ok(segment)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN || header_len > len {
            return Err(WireError::BadDataOffset);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    pub fn dst_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    pub fn seq_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::SEQ_NUM.start)
    }

    pub fn ack_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::ACK_NUM.start)
    }

    /// The header length in bytes (data offset * 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    /// The eight flag bits ([`FIN`] to [`CWR`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn window_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::WINDOW.start)
    }

    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    pub fn urgent_at(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::URGENT.start)
    }

    /// The data after the header and options.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// The sequence space the segment occupies: its data, plus one each for SYN and FIN
    /// (RFC 9293 section 3.4).
    pub fn segment_len(&self) -> u32 {
        let flags = self.flags();
        self.payload().len() as u32 + u32::from(flags & SYN != 0) + u32::from(flags & FIN != 0)
    }

    /// True when the checksum verifies with the pseudo-header of `src` and `dst`.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let b = self.buffer.as_ref();
        let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
        let pseudo = checksum::pseudo_header_sum(src, dst, PROTO_TCP, len);
        checksum::fold(checksum::sum(b, pseudo)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpSegment<T> {
    pub fn set_src_port(&mut self, v: u16) {
        put_u16(self.buffer.as_mut(), field::SRC_PORT.start, v);
    }

    pub fn set_dst_port(&mut self, v: u16) {
        put_u16(self.buffer.as_mut(), field::DST_PORT.start, v);
    }

    pub fn set_seq_number(&mut self, v: u32) {
        put_u32(self.buffer.as_mut(), field::SEQ_NUM.start, v);
    }

    pub fn set_ack_number(&mut self, v: u32) {
        put_u32(self.buffer.as_mut(), field::ACK_NUM.start, v);
    }

    /// Sets the data offset from a header length in bytes (a multiple of 4, 20 to 60); the
    /// reserved bits are cleared.
    pub fn set_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::DATA_OFFSET] = ((len / 4) as u8) << 4;
    }

    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    pub fn set_window_len(&mut self, v: u16) {
        put_u16(self.buffer.as_mut(), field::WINDOW.start, v);
    }

    pub fn set_checksum(&mut self, v: u16) {
        put_u16(self.buffer.as_mut(), field::CHECKSUM.start, v);
    }

    pub fn set_urgent_at(&mut self, v: u16) {
        put_u16(self.buffer.as_mut(), field::URGENT.start, v);
    }

    /// Computes the checksum over the whole buffer (the segment) and stores it.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        let csum = checksum::l4_checksum(src, dst, PROTO_TCP, self.buffer.as_ref());
        self.set_checksum(csum);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let at = self.header_len();
        &mut self.buffer.as_mut()[at..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::samples;

    const A: Ipv4Addr = Ipv4Addr::new(172, 211, 0, 18);
    const B: Ipv4Addr = Ipv4Addr::new(172, 211, 0, 17);

    #[test]
    fn deconstruct_captured_syn() {
        let tcp = TcpSegment::new_checked(&samples::TCP_SYN[34..]).unwrap();
        assert_eq!((tcp.src_port(), tcp.dst_port()), (60698, 8080));
        assert_eq!(tcp.seq_number(), 4019171490);
        assert_eq!(tcp.ack_number(), 0);
        assert_eq!(tcp.header_len(), 40);
        assert_eq!(tcp.flags(), SYN);
        assert_eq!(tcp.window_len(), 64240);
        assert_eq!(tcp.checksum(), 0xebc1);
        assert!(tcp.verify_checksum(A, B));
        assert!(!tcp.verify_checksum(B, Ipv4Addr::new(172, 211, 0, 19)));
        assert!(tcp.payload().is_empty());
        assert_eq!(tcp.segment_len(), 1);
    }

    #[test]
    fn construct_captured_rst() {
        let mut buf = [0u8; 20];
        let mut tcp = TcpSegment::new_unchecked(&mut buf[..]);
        tcp.set_src_port(8080);
        tcp.set_dst_port(60698);
        tcp.set_seq_number(0);
        tcp.set_ack_number(4019171491);
        tcp.set_header_len(20);
        tcp.set_flags(RST | ACK);
        tcp.set_window_len(0);
        tcp.set_urgent_at(0);
        tcp.fill_checksum(B, A);
        assert_eq!(buf[..], samples::TCP_RST_ACK[34..]);
    }

    #[test]
    fn bad_data_offsets_are_rejected() {
        let mut seg = samples::TCP_SYN[34..].to_vec();
        for offset in 0..5u8 {
            seg[12] = offset << 4;
            assert_eq!(
                TcpSegment::new_checked(&seg[..]).err(),
                Some(WireError::BadDataOffset)
            );
        }
        seg[12] = 11 << 4; // 44 bytes of header in a 40-byte segment
        assert_eq!(
            TcpSegment::new_checked(&seg[..]).err(),
            Some(WireError::BadDataOffset)
        );
        seg[12] = 10 << 4;
        assert!(TcpSegment::new_checked(&seg[..]).is_ok());
        assert_eq!(
            TcpSegment::new_checked(&seg[..19]).err(),
            Some(WireError::Truncated)
        );
    }
}
