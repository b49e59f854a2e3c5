//! The wire-format layer: zero-copy views of Ethernet, ARP, IPv4, ICMP, TCP and UDP, checksums,
//! one-pass frame parsing, in-place NAT rewrites and the frames the router builds itself.
//!
//! Why this way (STYLE.md, after smoltcp's `src/wire/`):
//! - Every protocol gets a view `Foo<T: AsRef<[u8]>>` over a borrowed buffer, with field offsets
//!   as constant ranges in a `field` module, getters always and setters only when
//!   `T: AsMut<[u8]>`. The contract is the one smoltcp documents: once `new_checked` (or
//!   `check_len`) has succeeded, no getter panics. `new_unchecked` says in its name that it
//!   promises nothing.
//! - The pipeline does not walk these views itself: [`parse::parse_frame`] validates a frame once
//!   and returns plain values and offsets ([`parse::ParsedFrame`]), which the rewrites in
//!   [`rewrite`] take back. One validation, no copies, no re-parsing per stage.
//! - Checksums are never recomputed over a payload on the forwarding path. NAT and TTL changes
//!   adjust them incrementally (RFC 1624), including the CHECKSUM_PARTIAL case of frames that
//!   arrive from a TAP with a virtio-net header asking for checksum offload ([`vnet`]).
//!
//! Rejected: etherparse's slices (DESIGN.md's first idea) parse well but offer no in-place
//! rewrite, so the offsets would have had to be recomputed for every rewrite anyway; a
//! smoltcp-style `Repr` per protocol would copy every field where the pipeline needs a handful.
//!
//! All errors of the layer are one enum, [`WireError`], so the pipeline can count each kind of
//! malformed frame under its own name ([`WireError::as_str`]).

use std::fmt;

pub mod arp;
pub mod build;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod parse;
pub mod rewrite;
pub mod samples;
pub mod tcp;
pub mod udp;
pub mod vnet;

pub use crate::tables::MacAddr;

pub use arp::{ArpPacket, ARP_OP_REPLY, ARP_OP_REQUEST};
pub use build::{
    build_arp_reply, build_arp_request, build_icmp_echo, build_icmp_error, build_tcp,
    build_tcp_rst, build_udp, make_echo_reply_in_place,
};
pub use ethernet::{EthernetFrame, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN};
pub use icmp::{
    IcmpPacket, ADMIN_PROHIBITED, DEST_UNREACHABLE, ECHO_REPLY, ECHO_REQUEST, FRAG_NEEDED,
    HOST_UNREACHABLE, NET_UNREACHABLE, PARAM_PROBLEM, PORT_UNREACHABLE, PROTO_UNREACHABLE,
    TIME_EXCEEDED, TTL_EXCEEDED_IN_TRANSIT,
};
pub use ipv4::{Ipv4Packet, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
pub use parse::{parse_frame, ArpInfo, InnerPacket, Ipv4Info, ParsedFrame, L3, L4};
pub use rewrite::{decrement_ttl, rewrite_dst, rewrite_icmp_error_inner, rewrite_src, set_macs};
pub use tcp::TcpSegment;
pub use udp::UdpDatagram;
pub use vnet::{VnetHeader, VNET_HDR_LEN};

/// Why a buffer is not a frame the dataplane can handle. One enum for the whole layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireError {
    /// The buffer ends before a header (or the part of it a check needs) is complete.
    Truncated,
    /// An IPv4 header whose version field is not 4.
    BadVersion,
    /// An IPv4 header length (IHL) below 5 words, or beyond the bytes present.
    BadHeaderLength,
    /// An IPv4 total length smaller than the header or larger than the bytes received.
    BadTotalLength,
    /// The IPv4 header checksum does not verify (RFC 1812 section 5.2.2: a router must check it).
    BadChecksum,
    /// A TCP data offset below 5 words or beyond the end of the segment.
    BadDataOffset,
    /// ARP for something other than Ethernet hardware and IPv4 protocol addresses.
    UnsupportedArp,
    /// An ICMP error whose quoted packet is not a complete IPv4 header (RFC 792 requires the
    /// header and 64 bits of data).
    BadIcmpQuote,
}

impl WireError {
    /// A short stable name, for counters and logs.
    pub const fn as_str(&self) -> &'static str {
        match self {
            WireError::Truncated => "truncated",
            WireError::BadVersion => "bad_ip_version",
            WireError::BadHeaderLength => "bad_ip_header_length",
            WireError::BadTotalLength => "bad_ip_total_length",
            WireError::BadChecksum => "bad_ip_checksum",
            WireError::BadDataOffset => "bad_tcp_data_offset",
            WireError::UnsupportedArp => "unsupported_arp",
            WireError::BadIcmpQuote => "bad_icmp_quote",
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = match self {
            WireError::Truncated => "frame truncated: a header is incomplete",
            WireError::BadVersion => "IPv4 header with a version other than 4",
            WireError::BadHeaderLength => "IPv4 header length below 20 bytes or beyond the frame",
            WireError::BadTotalLength => {
                "IPv4 total length shorter than the header or longer than the frame"
            }
            WireError::BadChecksum => "IPv4 header checksum does not verify",
            WireError::BadDataOffset => "TCP data offset below 20 bytes or beyond the segment",
            WireError::UnsupportedArp => "ARP for other than Ethernet and IPv4 addresses",
            WireError::BadIcmpQuote => "ICMP error quoting no complete IPv4 header",
        };
        f.write_str(msg)
    }
}

impl std::error::Error for WireError {}

/// Big-endian u16 at `at`; the caller has checked the bounds.
#[inline]
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Big-endian u32 at `at`; the caller has checked the bounds.
#[inline]
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_well() {
        assert_eq!(WireError::BadTotalLength.as_str(), "bad_ip_total_length");
        let e: Box<dyn std::error::Error> = Box::new(WireError::Truncated);
        assert_eq!(e.to_string(), "frame truncated: a header is incomplete");
    }
}
