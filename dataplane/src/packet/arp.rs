//! ARP packets (RFC 826), Ethernet hardware and IPv4 protocol addresses only.
//!
//! The view fixes the field offsets for 6-byte hardware and 4-byte protocol addresses, the only
//! ARP the dataplane speaks; [`ArpPacket::is_ethernet_ipv4`] tells whether a packet is of that
//! kind, and `parse_frame` rejects any other.

use std::net::Ipv4Addr;

use super::ethernet::{mac_at, ETHERTYPE_IPV4};
use super::{get_u16, get_u32, put_u16, put_u32, MacAddr, WireError};

/// ARP operation: request (RFC 826).
pub const ARP_OP_REQUEST: u16 = 1;
/// ARP operation: reply (RFC 826).
pub const ARP_OP_REPLY: u16 = 2;
/// Hardware type: Ethernet.
pub const HTYPE_ETHERNET: u16 = 1;

/// Field offsets for Ethernet/IPv4 ARP.
pub mod field {
    use std::ops::Range;

    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = field::TPA.end;

/// A view of an Ethernet/IPv4 ARP packet in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// A view with no checks: getters may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    /// A view of a buffer that holds 28 bytes; after it no getter panics. The address types are
    /// not checked here: see [`ArpPacket::is_ethernet_ipv4`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < PACKET_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn hardware_type(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::HTYPE.start)
    }

    pub fn protocol_type(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::PTYPE.start)
    }

    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// True for Ethernet hardware and IPv4 protocol addresses of the usual lengths, the only ARP
    /// whose addresses sit at this view's offsets.
    pub fn is_ethernet_ipv4(&self) -> bool {
        self.hardware_type() == HTYPE_ETHERNET
            && self.protocol_type() == ETHERTYPE_IPV4
            && self.hardware_len() == 6
            && self.protocol_len() == 4
    }

    pub fn operation(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::OPER.start)
    }

    pub fn sender_hardware_addr(&self) -> MacAddr {
        mac_at(self.buffer.as_ref(), field::SHA.start)
    }

    pub fn sender_protocol_addr(&self) -> Ipv4Addr {
        get_u32(self.buffer.as_ref(), field::SPA.start).into()
    }

    pub fn target_hardware_addr(&self) -> MacAddr {
        mac_at(self.buffer.as_ref(), field::THA.start)
    }

    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        get_u32(self.buffer.as_ref(), field::TPA.start).into()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Sets hardware type, protocol type and address lengths for Ethernet/IPv4.
    pub fn set_ethernet_ipv4(&mut self) {
        let b = self.buffer.as_mut();
        put_u16(b, field::HTYPE.start, HTYPE_ETHERNET);
        put_u16(b, field::PTYPE.start, ETHERTYPE_IPV4);
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
    }

    pub fn set_operation(&mut self, op: u16) {
        put_u16(self.buffer.as_mut(), field::OPER.start, op);
    }

    pub fn set_sender_hardware_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&addr.0);
    }

    pub fn set_sender_protocol_addr(&mut self, addr: Ipv4Addr) {
        put_u32(self.buffer.as_mut(), field::SPA.start, addr.into());
    }

    pub fn set_target_hardware_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&addr.0);
    }

    pub fn set_target_protocol_addr(&mut self, addr: Ipv4Addr) {
        put_u32(self.buffer.as_mut(), field::TPA.start, addr.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::samples;

    #[test]
    fn deconstruct_captured_request() {
        // who-has 172.211.0.17 tell 172.211.0.18, from 02:ac:d3:00:00:12.
        let arp = ArpPacket::new_checked(&samples::ARP_REQUEST[14..]).unwrap();
        assert!(arp.is_ethernet_ipv4());
        assert_eq!(arp.operation(), ARP_OP_REQUEST);
        assert_eq!(arp.sender_hardware_addr().to_string(), "02:ac:d3:00:00:12");
        assert_eq!(arp.sender_protocol_addr(), Ipv4Addr::new(172, 211, 0, 18));
        assert_eq!(arp.target_hardware_addr(), MacAddr::ZERO);
        assert_eq!(arp.target_protocol_addr(), Ipv4Addr::new(172, 211, 0, 17));
    }

    #[test]
    fn construct_captured_reply() {
        let mut buf = [0u8; PACKET_LEN];
        let mut arp = ArpPacket::new_checked(&mut buf[..]).unwrap();
        arp.set_ethernet_ipv4();
        arp.set_operation(ARP_OP_REPLY);
        arp.set_sender_hardware_addr("02:ac:d3:00:00:11".parse().unwrap());
        arp.set_sender_protocol_addr(Ipv4Addr::new(172, 211, 0, 17));
        arp.set_target_hardware_addr("02:ac:d3:00:00:12".parse().unwrap());
        arp.set_target_protocol_addr(Ipv4Addr::new(172, 211, 0, 18));
        assert_eq!(buf[..], samples::ARP_REPLY[14..]);
    }

    #[test]
    fn other_address_types_are_told_apart() {
        let mut buf: [u8; 28] = samples::ARP_REQUEST[14..].try_into().unwrap();
        buf[1] = 6; // IEEE 802 hardware type
        assert!(!ArpPacket::new_checked(&buf[..]).unwrap().is_ethernet_ipv4());
        assert_eq!(
            ArpPacket::new_checked(&buf[..27]).err(),
            Some(WireError::Truncated)
        );
    }
}
