//! The packet pipeline: one frame in, a verdict and a list of frames to transmit out.
//!
//! (API stub: the stages are being written; this file fixes the interface the workers use.)

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::tables::{PortId, Tables};

/// Bytes reserved in front of every frame for the virtio-net header (`struct virtio_net_hdr`,
/// 10 bytes; TAP devices are opened with IFF_VNET_HDR and TUNSETVNETHDRSZ 10).
pub const VNET_HDR_LEN: usize = 10;
/// The largest frame a TAP hands us with TSO on: a 64 KiB IP packet plus Ethernet header.
pub const MAX_FRAME_LEN: usize = 65536 + 14 + 4;

/// One packet buffer: `buf[..VNET_HDR_LEN]` is the virtio-net header, `buf[VNET_HDR_LEN..len]`
/// the Ethernet frame. Owned by a worker and reused: no allocation per packet.
pub struct PacketBuf {
    pub buf: Box<[u8]>,
    /// Bytes used in `buf`, header included.
    pub len: usize,
}

impl Default for PacketBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketBuf {
    pub fn new() -> Self {
        PacketBuf { buf: vec![0u8; VNET_HDR_LEN + MAX_FRAME_LEN].into_boxed_slice(), len: 0 }
    }

    /// The bytes to write to a TAP queue: header and frame.
    pub fn wire(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The Ethernet frame without the virtio-net header.
    pub fn frame(&self) -> &[u8] {
        &self.buf[VNET_HDR_LEN..self.len.max(VNET_HDR_LEN)]
    }

    pub fn frame_mut(&mut self) -> &mut [u8] {
        let end = self.len.max(VNET_HDR_LEN);
        &mut self.buf[VNET_HDR_LEN..end]
    }

    /// Replaces the contents with a frame and an all-zero virtio-net header (no offloads).
    pub fn set_frame(&mut self, frame: &[u8]) {
        let n = frame.len().min(MAX_FRAME_LEN);
        self.buf[..VNET_HDR_LEN].fill(0);
        self.buf[VNET_HDR_LEN..VNET_HDR_LEN + n].copy_from_slice(&frame[..n]);
        self.len = VNET_HDR_LEN + n;
    }
}

/// Where a frame to transmit lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxSource {
    /// The received packet buffer, rewritten in place.
    Packet,
    /// `WorkerContext::scratch`: a frame the router built (ICMP error, TCP reset...).
    Scratch,
}

/// One frame to transmit: on `port`, the bytes of `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tx {
    pub port: PortId,
    pub source: TxSource,
}

/// What the pipeline did with a frame. The caller (a worker) acts on it and counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The frame was rewritten and goes out of the ports in `WorkerContext::tx`.
    Forward,
    /// The router answered (ARP reply, ICMP echo reply or error); see `WorkerContext::tx`.
    Reply,
    /// The router took the frame for itself and has nothing to send.
    Consumed,
    /// The frame was dropped; the reason is counted on the ingress port.
    Drop(DropReason),
}

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal,)*) => {
        /// Why a frame was dropped. Each reason is a counter on the ingress port.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason { $($variant,)* }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();

            /// The counter's name, as `pacific get ports` prints it.
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }
        }
    };
}

drop_reasons! {
    Malformed => "malformed",
    UnknownPort => "unknown-port",
    UnsupportedEthertype => "unsupported-ethertype",
    Ipv6 => "ipv6",
    SpoofedSource => "spoofguard",
    NotForUs => "not-for-us",
    NoRoute => "no-route",
    TtlExceeded => "ttl-exceeded",
    DfwDeny => "dfw-deny",
    NoBackend => "no-backend",
    NatExhausted => "nat-port-exhausted",
    ConntrackFull => "conntrack-full",
    ConntrackInvalid => "conntrack-invalid",
    Fragment => "fragment",
    TxQueueFull => "tx-queue-full",
    TxError => "tx-error",
    Unimplemented => "unimplemented",
}

/// Per-worker state the pipeline writes into: the transmit list and a scratch buffer for frames
/// the router builds. Reused for every packet.
pub struct WorkerContext {
    pub tx: Vec<Tx>,
    pub scratch: PacketBuf,
}

impl Default for WorkerContext {
    fn default() -> Self {
        WorkerContext { tx: Vec::with_capacity(16), scratch: PacketBuf::new() }
    }
}

/// The pipeline: shared by all workers.
pub struct Pipeline {
    tables: Arc<ArcSwap<Tables>>,
}

impl Pipeline {
    pub fn new(tables: Arc<ArcSwap<Tables>>) -> Self {
        Pipeline { tables }
    }

    /// Processes one frame received on `in_port` at `now` (milliseconds of a monotonic clock).
    pub fn process(
        &self,
        ctx: &mut WorkerContext,
        now: u64,
        in_port: PortId,
        pkt: &mut PacketBuf,
    ) -> Verdict {
        ctx.tx.clear();
        let _ = (now, in_port, pkt, self.tables.load());
        Verdict::Drop(DropReason::Unimplemented)
    }

    /// Expires idle state (connections) at `now`. Called periodically by a worker.
    pub fn expire(&self, now: u64) {
        let _ = now;
    }
}
