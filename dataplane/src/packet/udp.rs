//! UDP datagrams (RFC 768).
//!
//! `new_checked` asks only for the 8-byte header. The length field is not held against the
//! buffer: a router forwards what the IP total length delimits (RFC 1812 does not ask it to look
//! deeper), and the view is always made over exactly the IP payload. A checksum of zero means the
//! sender computed none (RFC 768); a computed zero is sent as 0xffff.

use std::net::Ipv4Addr;

use super::checksum;
use super::ipv4::PROTO_UDP;
use super::{get_u16, put_u16, WireError};

/// Field offsets.
pub mod field {
    use std::ops::{Range, RangeFrom};

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
    pub const PAYLOAD: RangeFrom<usize> = 8..;
}

/// Length of the UDP header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// A view of a UDP datagram in a buffer (the IP payload, exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpDatagram<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpDatagram<T> {
    /// A view with no checks: getters may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpDatagram { buffer }
    }

    /// A view of a buffer that holds the 8-byte header; after it no getter panics.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let datagram = Self::new_unchecked(buffer);
        datagram.check_len()?;
        Ok(datagram)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
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

    /// The length field (header and data), as the sender wrote it.
    pub fn length(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH.start)
    }

    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }

    /// True when the checksum verifies with the pseudo-header of `src` and `dst`, or is zero
    /// (none computed).
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let b = self.buffer.as_ref();
        let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
        let pseudo = checksum::pseudo_header_sum(src, dst, PROTO_UDP, len);
        checksum::fold(checksum::sum(b, pseudo)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpDatagram<T> {
    pub fn set_src_port(&mut self, v: u16) {
        put_u16(self.buffer.as_mut(), field::SRC_PORT.start, v);
    }

    pub fn set_dst_port(&mut self, v: u16) {
        put_u16(self.buffer.as_mut(), field::DST_PORT.start, v);
    }

    pub fn set_length(&mut self, v: u16) {
        put_u16(self.buffer.as_mut(), field::LENGTH.start, v);
    }

    pub fn set_checksum(&mut self, v: u16) {
        put_u16(self.buffer.as_mut(), field::CHECKSUM.start, v);
    }

    /// Computes the checksum over the whole buffer (the datagram) and stores it.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        let csum = checksum::l4_checksum(src, dst, PROTO_UDP, self.buffer.as_ref());
        self.set_checksum(csum);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::samples;

    const A: Ipv4Addr = Ipv4Addr::new(172, 211, 0, 18);
    const B: Ipv4Addr = Ipv4Addr::new(172, 211, 0, 17);

    #[test]
    fn deconstruct_captured_datagram() {
        let udp = UdpDatagram::new_checked(&samples::UDP_DNS[34..]).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port()), (57087, 5353));
        assert_eq!(udp.length(), 14);
        assert_eq!(udp.checksum(), 0x6e43);
        assert!(udp.verify_checksum(A, B));
        assert_eq!(udp.payload(), b"hello\n");
    }

    #[test]
    fn construct_captured_datagram() {
        let mut buf = [0u8; 14];
        let mut udp = UdpDatagram::new_checked(&mut buf[..]).unwrap();
        udp.set_src_port(57087);
        udp.set_dst_port(5353);
        udp.set_length(14);
        udp.payload_mut().copy_from_slice(b"hello\n");
        udp.fill_checksum(A, B);
        assert_eq!(buf[..], samples::UDP_DNS[34..]);
    }

    #[test]
    fn zero_checksum_means_none() {
        let mut buf = samples::UDP_DNS[34..].to_vec();
        buf[6..8].fill(0);
        assert!(UdpDatagram::new_checked(&buf[..])
            .unwrap()
            .verify_checksum(A, B));
        assert_eq!(
            UdpDatagram::new_checked(&buf[..7]).err(),
            Some(WireError::Truncated)
        );
    }
}
