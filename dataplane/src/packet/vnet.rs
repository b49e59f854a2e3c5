//! The virtio-net header (`struct virtio_net_hdr`, virtio 1.0 section 5.1.6) that precedes every
//! frame on a TAP opened with `IFF_VNET_HDR`.
//!
//! With it the kernel can hand over frames whose TCP/UDP checksum is left to be completed
//! (`NEEDS_CSUM`: CHECKSUM_PARTIAL, the field holds the pseudo-header sum) and segments larger
//! than the MTU (GSO), which is what makes TAP forwarding fast (DESIGN.md, "TAP facts"). The
//! dataplane forwards the header with the frame; it reads it only to know whether a checksum is
//! partial ([`VnetHeader::needs_csum`]), which changes how NAT updates it.
//!
//! The 10-byte form is used (no `num_buffers`: no `VIRTIO_NET_F_MRG_RXBUF` on a TAP unless asked
//! with TUNSETVNETHDRSZ). Fields are little-endian: virtio 1.0 is, and a TAP's legacy "native
//! endian" is the same on x86-64 and aarch64 Linux.

/// Length of the header as configured on our TAPs.
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the checksum from `csum_start`, stored at `csum_start + csum_offset`, is to be
/// completed (CHECKSUM_PARTIAL).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum has been validated.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

/// `gso_type`: not a GSO frame.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 segmentation.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload.
pub const GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 segmentation.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the segments carry ECN (CWR handling).
pub const GSO_ECN: u8 = 0x80;

/// Field offsets.
pub mod field {
    use std::ops::Range;

    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Range<usize> = 2..4;
    pub const GSO_SIZE: Range<usize> = 4..6;
    pub const CSUM_START: Range<usize> = 6..8;
    pub const CSUM_OFFSET: Range<usize> = 8..10;
}

/// A decoded virtio-net header. Offsets (`csum_start`, `hdr_len`) count from the start of the
/// Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl VnetHeader {
    /// Decodes the first [`VNET_HDR_LEN`] bytes of `b`; `None` if `b` is shorter.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = b.get(..VNET_HDR_LEN)?;
        Some(VnetHeader {
            flags: b[field::FLAGS],
            gso_type: b[field::GSO_TYPE],
            hdr_len: le16(b, field::HDR_LEN.start),
            gso_size: le16(b, field::GSO_SIZE.start),
            csum_start: le16(b, field::CSUM_START.start),
            csum_offset: le16(b, field::CSUM_OFFSET.start),
        })
    }

    /// Encodes into the first [`VNET_HDR_LEN`] bytes of `b`. A shorter `b` is a caller bug: it is
    /// left untouched (and debug builds assert).
    pub fn write(&self, b: &mut [u8]) {
        debug_assert!(
            b.len() >= VNET_HDR_LEN,
            "virtio-net header buffer too short"
        );
        let Some(b) = b.get_mut(..VNET_HDR_LEN) else {
            return;
        };
        b[field::FLAGS] = self.flags;
        b[field::GSO_TYPE] = self.gso_type;
        b[field::HDR_LEN].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[field::GSO_SIZE].copy_from_slice(&self.gso_size.to_le_bytes());
        b[field::CSUM_START].copy_from_slice(&self.csum_start.to_le_bytes());
        b[field::CSUM_OFFSET].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    /// The frame's TCP/UDP checksum is partial (holds the pseudo-header sum only).
    pub fn needs_csum(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }

    /// The frame is a large segment to be cut into `gso_size` pieces on the way out.
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_tso_header() {
        // What the kernel writes for a 64 KB TCP/IPv4 segment with checksum offload: hdr_len 66
        // (14 + 20 + 32), MSS 1448, checksum from byte 34, stored 16 bytes in.
        let bytes = [0x01, 0x01, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00];
        let h = VnetHeader::parse(&bytes).unwrap();
        assert_eq!(
            h,
            VnetHeader {
                flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: 66,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16
            }
        );
        assert!(h.needs_csum() && h.is_gso());
        let mut out = [0xffu8; 12];
        h.write(&mut out);
        assert_eq!(out[..10], bytes);
        assert_eq!(out[10..], [0xff, 0xff]);
    }

    #[test]
    fn plain_and_short_headers() {
        let h = VnetHeader::parse(&[0; 10]).unwrap();
        assert!(!h.needs_csum() && !h.is_gso());
        assert!(!VnetHeader {
            gso_type: GSO_ECN,
            ..h
        }
        .is_gso());
        assert!(VnetHeader {
            gso_type: GSO_TCPV4 | GSO_ECN,
            ..h
        }
        .is_gso());
        assert!(!VnetHeader {
            flags: VIRTIO_NET_HDR_F_DATA_VALID,
            ..h
        }
        .needs_csum());
        assert_eq!(VnetHeader::parse(&[0; 9]), None);
    }
}
