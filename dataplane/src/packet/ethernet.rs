//! Ethernet II frames (IEEE 802.3 with an EtherType; RFC 894 for IPv4 over Ethernet).
//!
//! A TAP hands over frames without preamble or FCS, and a sender's frame may be shorter than the
//! 60-byte minimum (as captured on a veth) or padded up to it: the header is all a view needs.
//! VLAN tags are not handled: a tagged frame reads as ethertype [`ETHERTYPE_VLAN`].

use super::{get_u16, put_u16, MacAddr, WireError};

/// IPv4 (RFC 894).
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// ARP (RFC 826).
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// IEEE 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// IPv6 (RFC 2464).
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Field offsets.
pub mod field {
    use std::ops::{Range, RangeFrom};

    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: RangeFrom<usize> = 14..;
}

/// Length of the Ethernet header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// A view of an Ethernet frame in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// A view with no checks: getters may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// A view of a buffer that holds at least the header; after it no getter panics.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// `Err(Truncated)` if the buffer is shorter than the header.
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

    pub fn dst_addr(&self) -> MacAddr {
        mac_at(self.buffer.as_ref(), field::DESTINATION.start)
    }

    pub fn src_addr(&self) -> MacAddr {
        mac_at(self.buffer.as_ref(), field::SOURCE.start)
    }

    pub fn ethertype(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ETHERTYPE.start)
    }

    /// Everything after the header, Ethernet padding included.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr.0);
    }

    pub fn set_src_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr.0);
    }

    pub fn set_ethertype(&mut self, ethertype: u16) {
        put_u16(self.buffer.as_mut(), field::ETHERTYPE.start, ethertype);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// The MAC address at `at`; the caller has checked the bounds.
pub(crate) fn mac_at(b: &[u8], at: usize) -> MacAddr {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[at..at + 6]);
    MacAddr(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::samples;

    #[test]
    fn deconstruct_captured_arp_frame() {
        let frame = EthernetFrame::new_checked(&samples::ARP_REQUEST[..]).unwrap();
        assert_eq!(frame.dst_addr(), MacAddr::BROADCAST);
        assert_eq!(frame.src_addr().to_string(), "02:ac:d3:00:00:12");
        assert_eq!(frame.ethertype(), ETHERTYPE_ARP);
        assert_eq!(frame.payload().len(), 28);
    }

    #[test]
    fn construct_matches_capture() {
        let mut buf = samples::TCP_SYN;
        buf[..14].fill(0);
        let mut frame = EthernetFrame::new_checked(&mut buf[..]).unwrap();
        frame.set_dst_addr("02:ac:d3:00:00:11".parse().unwrap());
        frame.set_src_addr("02:ac:d3:00:00:12".parse().unwrap());
        frame.set_ethertype(ETHERTYPE_IPV4);
        assert_eq!(buf, samples::TCP_SYN);
    }

    #[test]
    fn short_buffers_are_truncated() {
        for len in 0..HEADER_LEN {
            let r = EthernetFrame::new_checked(&samples::ARP_REQUEST[..len]);
            assert_eq!(r.err(), Some(WireError::Truncated));
        }
        assert!(EthernetFrame::new_checked(&samples::ARP_REQUEST[..14])
            .unwrap()
            .payload()
            .is_empty());
    }
}
