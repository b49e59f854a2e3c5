//! ICMP messages (RFC 792), the 8-byte header and what follows it.
//!
//! Every ICMP message the dataplane handles has an 8-byte header: type, code, checksum and four
//! bytes whose meaning depends on the type (identifier and sequence number for echo, the
//! next-hop MTU for "fragmentation needed" (RFC 1191), a pointer for parameter problem, unused
//! otherwise). The checksum covers the whole message and has no pseudo-header.

use super::checksum;
use super::{get_u16, put_u16, WireError};

/// Echo reply (RFC 792).
pub const ECHO_REPLY: u8 = 0;
/// Destination unreachable (RFC 792).
pub const DEST_UNREACHABLE: u8 = 3;
/// Echo request (RFC 792).
pub const ECHO_REQUEST: u8 = 8;
/// Time exceeded (RFC 792).
pub const TIME_EXCEEDED: u8 = 11;
/// Parameter problem (RFC 792).
pub const PARAM_PROBLEM: u8 = 12;

/// Destination unreachable code: net unreachable.
pub const NET_UNREACHABLE: u8 = 0;
/// Destination unreachable code: host unreachable.
pub const HOST_UNREACHABLE: u8 = 1;
/// Destination unreachable code: protocol unreachable.
pub const PROTO_UNREACHABLE: u8 = 2;
/// Destination unreachable code: port unreachable.
pub const PORT_UNREACHABLE: u8 = 3;
/// Destination unreachable code: fragmentation needed and DF set (RFC 1191 adds the MTU).
pub const FRAG_NEEDED: u8 = 4;
/// Destination unreachable code: communication administratively prohibited (RFC 1812).
pub const ADMIN_PROHIBITED: u8 = 13;
/// Time exceeded code: TTL exceeded in transit.
pub const TTL_EXCEEDED_IN_TRANSIT: u8 = 0;

/// Timestamp request (RFC 792).
pub const TIMESTAMP_REQUEST: u8 = 13;
/// Timestamp reply (RFC 792).
pub const TIMESTAMP_REPLY: u8 = 14;
/// Information request (RFC 792).
pub const INFO_REQUEST: u8 = 15;
/// Information reply (RFC 792).
pub const INFO_REPLY: u8 = 16;
/// Address mask request (RFC 950).
pub const ADDRESS_MASK_REQUEST: u8 = 17;
/// Address mask reply (RFC 950).
pub const ADDRESS_MASK_REPLY: u8 = 18;

/// True for the query messages whose identifier and sequence number sit where echo's do, and
/// which a NAT tracks and translates by that identifier as it does echo (RFC 5508 section 3.1;
/// Linux conntrack: echo, timestamp, information and address mask).
pub const fn is_query(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        ECHO_REPLY
            | ECHO_REQUEST
            | TIMESTAMP_REQUEST
            | TIMESTAMP_REPLY
            | INFO_REQUEST
            | INFO_REPLY
            | ADDRESS_MASK_REQUEST
            | ADDRESS_MASK_REPLY
    )
}

/// True for the types that quote the packet that caused them and are handled as errors here.
pub const fn is_error(icmp_type: u8) -> bool {
    matches!(icmp_type, DEST_UNREACHABLE | TIME_EXCEEDED | PARAM_PROBLEM)
}

/// Field offsets.
pub mod field {
    use std::ops::{Range, RangeFrom};

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    /// Echo: identifier.
    pub const ECHO_IDENT: Range<usize> = 4..6;
    /// Echo: sequence number.
    pub const ECHO_SEQNO: Range<usize> = 6..8;
    /// Fragmentation needed: next-hop MTU (RFC 1191 section 4).
    pub const NEXT_HOP_MTU: Range<usize> = 6..8;
    /// Parameter problem: pointer to the offending octet.
    pub const POINTER: usize = 4;
    /// The four type-specific bytes as a whole.
    pub const REST: Range<usize> = 4..8;
    pub const DATA: RangeFrom<usize> = 8..;
}

/// Length of the ICMP header.
pub const HEADER_LEN: usize = field::DATA.start;

/// A view of an ICMP message in a buffer (the IP payload, exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// A view with no checks: getters may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        IcmpPacket { buffer }
    }

    /// A view of a buffer that holds the 8-byte header; after it no getter panics.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
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

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    pub fn echo_ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ECHO_IDENT.start)
    }

    pub fn echo_seq_no(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ECHO_SEQNO.start)
    }

    pub fn next_hop_mtu(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::NEXT_HOP_MTU.start)
    }

    /// After the header: echo data, or the quoted packet of an error.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA]
    }

    /// True when the whole message sums to 0xffff.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buffer.as_ref(), 0)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v;
    }

    pub fn set_msg_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v;
    }

    pub fn set_checksum(&mut self, v: u16) {
        put_u16(self.buffer.as_mut(), field::CHECKSUM.start, v);
    }

    pub fn set_echo_ident(&mut self, v: u16) {
        put_u16(self.buffer.as_mut(), field::ECHO_IDENT.start, v);
    }

    pub fn set_echo_seq_no(&mut self, v: u16) {
        put_u16(self.buffer.as_mut(), field::ECHO_SEQNO.start, v);
    }

    /// Sets the four type-specific bytes to zero and the next-hop MTU (RFC 1191) to `mtu`.
    pub fn set_next_hop_mtu(&mut self, mtu: u16) {
        let b = self.buffer.as_mut();
        b[field::REST].fill(0);
        put_u16(b, field::NEXT_HOP_MTU.start, mtu);
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }

    /// Computes the checksum over the whole buffer as it now stands and stores it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let csum = checksum::finish(checksum::sum(self.buffer.as_ref(), 0));
        self.set_checksum(csum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::samples;

    #[test]
    fn deconstruct_captured_echo() {
        let icmp = IcmpPacket::new_checked(&samples::ICMP_ECHO_REQUEST[34..]).unwrap();
        assert_eq!((icmp.msg_type(), icmp.msg_code()), (ECHO_REQUEST, 0));
        assert_eq!(icmp.echo_ident(), 3749);
        assert_eq!(icmp.echo_seq_no(), 1);
        assert_eq!(icmp.checksum(), 0x2838);
        assert!(icmp.verify_checksum());
        assert_eq!(&icmp.data()[16..], b"Pacific!");
    }

    #[test]
    fn construct_captured_reply() {
        let mut buf = samples::ICMP_ECHO_REQUEST[34..].to_vec();
        let mut icmp = IcmpPacket::new_checked(&mut buf[..]).unwrap();
        icmp.set_msg_type(ECHO_REPLY);
        icmp.fill_checksum();
        assert_eq!(buf[..], samples::ICMP_ECHO_REPLY[34..]);
    }

    #[test]
    fn deconstruct_captured_port_unreachable() {
        let icmp = IcmpPacket::new_checked(&samples::ICMP_PORT_UNREACHABLE[34..]).unwrap();
        assert_eq!(
            (icmp.msg_type(), icmp.msg_code()),
            (DEST_UNREACHABLE, PORT_UNREACHABLE)
        );
        assert!(is_error(icmp.msg_type()));
        assert!(icmp.verify_checksum());
        // The quote is the UDP datagram as it was sent, IP header first.
        assert_eq!(icmp.data(), &samples::UDP_DNS[14..]);
    }

    #[test]
    fn frag_needed_carries_the_mtu() {
        let mut buf = [0xffu8; 8];
        let mut icmp = IcmpPacket::new_checked(&mut buf[..]).unwrap();
        icmp.set_next_hop_mtu(1400);
        assert_eq!(icmp.next_hop_mtu(), 1400);
        assert_eq!(buf[4..], [0, 0, 0x05, 0x78]);
        assert_eq!(
            IcmpPacket::new_checked(&buf[..7]).err(),
            Some(WireError::Truncated)
        );
    }
}
