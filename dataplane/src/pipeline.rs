//! The packet pipeline: one frame in, a verdict and a list of frames to transmit out.
//!
//! `process(ctx, now, port, packet)` has no file descriptors, no clock and no threads (STYLE.md,
//! after quinn-proto and boringtun): the workers in `ports` do the I/O and the counting, tests and
//! benches drive it on byte buffers.
//!
//! The walk of a packet (DESIGN.md, "Packet walk"):
//! 1. Parse; a malformed frame is dropped and counted. IPv6 and unknown ethertypes likewise.
//!    The common case, TCP or UDP to the router MAC, takes a fast path
//!    ([`parse::parse_ipv4_fast`], one combined rewrite) through the same steps.
//! 2. SpoofGuard: a pod's port sends only from the pod's own MAC and IP (ARP included).
//! 3. ARP is answered from the tables (gateway addresses with the router MAC, pods of the same
//!    segment with their own MAC: NSX's ARP suppression) and never flooded.
//! 4. Connection lookup. A hit applies the cached action: TTL, NAT rewrite, MACs, out port.
//! 5. A miss walks the gateways ([`Pipeline::walk`]): DLB at the source vNIC, then each gateway
//!    in turn (TTL check, SLB at the T1 owning a VIP, route lookup, egress SNAT when a T1 hands a
//!    packet for outside the pod pool to T0), the DFW at both ends, and finally a connection entry
//!    carrying the actions of both directions.
//! 6. ICMP errors that concern a tracked connection (by its ports, or by addresses alone for
//!    protocols without ports) and come in by the port the quoted packet left by follow it back,
//!    inner header translated (RFC 5508 section 4.2; RFC 3022 section 4.3).
//! 7. Out: a routed packet bigger than the gateways' MTU ([`PORT_MTU`]) gets "fragmentation
//!    needed" when it says don't-fragment, and is cut into fragments when not.
//!
//! A gateway whose TTL check fails answers with ICMP time-exceeded from its own address facing
//! the sender, quoting the packet with the addresses the sender wrote, so `traceroute` shows T1
//! and T0 even for connections that are translated further on. What a gateway answers loses a
//! TTL step at each gateway it crosses back, and an error's quote the steps the packet lost on
//! its way in ([`build::age_answer`]), as kernel routers in a row would show it.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::cache::Cache;
use arc_swap::ArcSwap;

use crate::affinity::Affinity;
use crate::conntrack::{
    Advanced, Conn, ConnInfo, Conntrack, ConntrackConfig, Deadlines, Dir, FlowAction, FlowHash,
    FlowKey, Hint, Home, InsertError, Inserted, LbBinding, PackedAction, Tracked,
};
use crate::fragments::{DatagramId, Fate, Fragments};
use crate::idents::Idents;
use crate::packet::build;
use crate::packet::checksum;
use crate::packet::ethernet::{self, mac_at, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use crate::packet::parse::{
    self, parse_frame, ArpInfo, InnerPacket, Ipv4Info, ParsedFrame, L3, L4,
};
use crate::packet::rewrite;
use crate::packet::vnet::{self, VnetHeader, VIRTIO_NET_HDR_F_NEEDS_CSUM};
use crate::packet::MacAddr;
use crate::packet::{icmp, ipv4};
use crate::reassembly::{Added, Reassembly};
use crate::tables::{
    Backend, DfwQuery, Direction, FrontendKey, GatewayId, GatewayKind, LbAlgorithm, NextHop, Port,
    PortId, PortKind, RuleAction, Tables, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};

/// Bytes reserved in front of every frame for the virtio-net header (`struct virtio_net_hdr`,
/// 10 bytes; TAP devices are opened with IFF_VNET_HDR and TUNSETVNETHDRSZ 10).
pub const VNET_HDR_LEN: usize = 10;
/// The largest frame a TAP hands us with TSO on: a 64 KiB IP packet plus Ethernet header.
pub const MAX_FRAME_LEN: usize = 65536 + 14 + 4;
/// Frames [`Pipeline::process_batch`] looks up together: enough misses in flight to cover a
/// memory latency, few enough that the first frame's connection is still cached by the time it
/// is processed.
pub const BATCH: usize = 32;

/// The IP MTU of every port: the TAPs are made with 1500, as NSX segments and uplinks are by
/// default, and so of every gateway interface. The answers the router fragments itself are cut
/// to it; a routed packet past it (from a pod that raised its own MTU) is refused with
/// "fragmentation needed" when it says don't-fragment, and cut to it otherwise.
pub const PORT_MTU: usize = 1500;

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
        PacketBuf {
            buf: vec![0u8; VNET_HDR_LEN + MAX_FRAME_LEN].into_boxed_slice(),
            len: 0,
        }
    }

    /// The bytes to write to a TAP queue: header and frame.
    #[inline]
    pub fn wire(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The Ethernet frame without the virtio-net header.
    #[inline]
    pub fn frame(&self) -> &[u8] {
        &self.buf[VNET_HDR_LEN..self.len.max(VNET_HDR_LEN)]
    }

    #[inline]
    pub fn frame_mut(&mut self) -> &mut [u8] {
        let end = self.len.max(VNET_HDR_LEN);
        &mut self.buf[VNET_HDR_LEN..end]
    }

    /// Replaces the contents with a frame and an all-zero virtio-net header (no offloads).
    #[inline]
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
    /// One of the fragments of an answer too big for one frame (an echo reply to a fragmented
    /// ping): `WorkerContext::fragments_out[i]`.
    Fragment(u8),
    /// A later fragment that was held for its first, released by it:
    /// `WorkerContext::released[i]`.
    Released(u8),
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
    /// The router answered (ARP reply, ICMP echo reply or error, TCP reset); see
    /// `WorkerContext::tx`.
    Reply,
    /// The router took the frame for itself and has nothing to send.
    Consumed,
    /// The frame was dropped; the reason is counted on the ingress port. The sender may be told
    /// (ICMP time exceeded or unreachable, a reset): a frame the router built, in `tx`.
    Drop(DropReason),
}

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal,)*) => {
        /// Why a frame was dropped. Each reason is a counter on the ingress port, except
        /// `link-down`, `tx-queue-full` and `tx-error`: on the port the frame could not leave by.
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
    NoService => "no-service",
    NatExhausted => "nat-port-exhausted",
    ConntrackFull => "conntrack-full",
    ConntrackInvalid => "conntrack-invalid",
    Fragment => "fragment",
    FragNeeded => "frag-needed",
    BadIpOptions => "bad-ip-options",
    TxQueueFull => "tx-queue-full",
    LinkDown => "link-down",
    TxError => "tx-error",
    Unimplemented => "unimplemented",
}

/// Per-worker state the pipeline writes into: the transmit list and a scratch buffer for frames
/// the router builds. Reused for every packet.
pub struct WorkerContext {
    pub tx: Vec<Tx>,
    pub scratch: PacketBuf,
    /// The worker's copy of the tables pointer: checking it is one load, where an `ArcSwap::load`
    /// per packet costs two atomic read-modify-writes on arc-swap's debt list.
    tables: Option<TablesCache>,
    icmp_errors: IcmpErrorBudget,
    /// Buffers of one frame each for [`TxSource::Fragment`], grown on first use.
    fragments_out: Vec<PacketBuf>,
    /// The held fragments a first fragment released, for [`TxSource::Released`].
    released: Vec<PacketBuf>,
    /// "Host unreachable" errors waiting for their ARP to fail (see [`HeldError`]).
    pub held: VecDeque<HeldError>,
}

/// How long a Linux router tries ARP for a neighbour before it answers the packets waiting
/// for it with "host unreachable": `mcast_solicit` 3 probes, `retrans_time_ms` 1000 apart.
pub const ARP_FAIL_MS: u64 = 3000;

/// The packets a Linux router queues for one unresolved neighbour at most (`unres_qlen`); a
/// worker holds this many errors at once, later ones are dropped unanswered.
pub const HELD_ERRORS_MAX: usize = 101;

/// A "host unreachable" for an address of a segment no pod has, sent once `due` comes (ms of
/// the worker's clock): a Linux router answers it only after ARP for the address failed, so
/// `ping` and `connect` report it about 3 s later, not at once.
pub struct HeldError {
    pub due: u64,
    pub port: PortId,
    pub frame: PacketBuf,
}

impl WorkerContext {
    /// The buffer a frame to transmit is in: `pkt`, the one the frame came in, or one of the
    /// context's.
    pub fn buffer<'a>(&'a self, tx: &Tx, pkt: &'a PacketBuf) -> &'a PacketBuf {
        match tx.source {
            TxSource::Packet => pkt,
            TxSource::Scratch => &self.scratch,
            TxSource::Fragment(i) => self.fragments_out.get(usize::from(i)).unwrap_or(pkt),
            TxSource::Released(i) => self.released.get(usize::from(i)).unwrap_or(pkt),
        }
    }
}

/// The ICMP errors (time exceeded, unreachable) a worker may still send: a token bucket, as
/// routers limit them (RFC 1812 section 4.3.2.8), with Linux's defaults (`icmp_msgs_per_sec`
/// 1000, `icmp_msgs_burst` 50). A `traceroute` never meets it; a flood of expiring packets gets
/// a thousand answers a second per worker, not one per packet. Echo replies and TCP resets are
/// not limited, as in Linux.
#[derive(Debug, Clone, Copy)]
struct IcmpErrorBudget {
    tokens: u64,
    /// When `tokens` was last topped up, ms.
    refilled: u64,
    /// The time of the frame being answered, ms (set by `answer_walk`).
    now: u64,
}

impl IcmpErrorBudget {
    const PER_SECOND: u64 = 1000;
    const BURST: u64 = 50;

    /// Whether one more error may be sent now (and if so, spends it).
    fn take(&mut self) -> bool {
        let elapsed = self.now.saturating_sub(self.refilled);
        let earned = elapsed.saturating_mul(Self::PER_SECOND) / 1000;
        if earned > 0 {
            self.tokens = self.tokens.saturating_add(earned).min(Self::BURST);
            self.refilled = self.now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

impl Default for IcmpErrorBudget {
    fn default() -> Self {
        IcmpErrorBudget {
            tokens: Self::BURST,
            refilled: 0,
            now: 0,
        }
    }
}

type TablesCache = Cache<Arc<ArcSwap<Tables>>, Arc<Tables>>;

impl Default for WorkerContext {
    fn default() -> Self {
        WorkerContext {
            tx: Vec::with_capacity(16),
            scratch: PacketBuf::new(),
            tables: None,
            icmp_errors: IcmpErrorBudget::default(),
            fragments_out: Vec::new(),
            released: Vec::new(),
            held: VecDeque::new(),
        }
    }
}

/// The decision the slow path reached for a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Path {
    out_port: PortId,
    routed: bool,
    hops: u8,
    /// Translate the source to this address (the port is allocated at insert).
    snat_addr: Option<Ipv4Addr>,
    dnat: Option<(Ipv4Addr, u16)>,
    lb: Option<LbBinding>,
}

/// A frame the fast path takes, as [`Pipeline::fast_frame`] parsed it: what `process_batch`
/// keeps of each frame between its stages.
#[derive(Debug, Clone, Copy)]
struct FastFrame<'t> {
    /// The key, hashed (`FlowHash::key` gives it back).
    hash: FlowHash,
    ttl: u8,
    tcp_flags: u8,
    /// The IP total length: the packet ends there, padding may follow.
    end: u16,
    /// Where the warming stage saw the connection, if it did.
    hint: Hint<'t>,
}

/// The out port the fast path last forwarded a frame to, in a batch (the tables cannot change
/// within it), with the twelve bytes a routed frame gets there: the port's peer as the
/// destination, the router as the source. A run of frames to one port looks the port up and
/// assembles its MACs once.
#[derive(Debug, Clone, Copy)]
struct OutHead {
    /// The port's id; `u64::MAX`, no port's, before the first frame.
    port: u64,
    macs: [u8; 12],
}

impl OutHead {
    const NONE: OutHead = OutHead {
        port: u64::MAX,
        macs: [0; 12],
    };
}

/// What [`Pipeline::fast_frame`] checks the head of a frame from one port against, worked out
/// once for a batch: the router's MAC as the destination and, on a pod's port, the pod's MAC as
/// the source and its IP as the source address (SpoofGuard). The twelve bytes of MACs are
/// compared as two words loaded from the frame, what a port does not check masked off.
#[derive(Debug, Clone, Copy)]
struct FastGuard {
    /// Bytes 0..8 of the frame (the destination MAC, the source's first two bytes) and 8..12,
    /// as they load from memory.
    macs: (u64, u32),
    macs_mask: (u64, u32),
    /// The source address (as a `u32`): masked to nothing on a port that is not a pod's.
    src: u32,
    src_mask: u32,
}

impl FastGuard {
    fn new(t: &Tables, port: &Port) -> FastGuard {
        let mut head = [0u8; 12];
        head[..6].copy_from_slice(&t.router_mac.0);
        head[6..].copy_from_slice(&port.peer_mac.0);
        let (src, src_mask, mask) = match port.kind {
            PortKind::Pod { ip, .. } => (u32::from(ip), u32::MAX, [0xff; 12]),
            _ => (0, 0, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0]),
        };
        FastGuard {
            macs: Self::words(&head),
            macs_mask: Self::words(&mask),
            src,
            src_mask,
        }
    }

    /// Whether a frame whose first twelve bytes are `head`, sent from `src`, passes.
    #[inline(always)]
    fn passes(&self, head: &[u8; 12], src: Ipv4Addr) -> bool {
        let (lo, hi) = Self::words(head);
        // Every difference that counts, or'd into one word: one test, one branch.
        let macs = (lo ^ self.macs.0) & self.macs_mask.0
            | u64::from((hi ^ self.macs.1) & self.macs_mask.1);
        macs | u64::from((u32::from(src) ^ self.src) & self.src_mask) == 0
    }

    #[inline(always)]
    fn words(b: &[u8; 12]) -> (u64, u32) {
        let [a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3] = *b;
        (
            u64::from_ne_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            u32::from_ne_bytes([b0, b1, b2, b3]),
        )
    }
}

/// Where the walk through the gateways ended. `back`, in the variants the router answers, counts
/// the gateways the packet crossed before the one that answers: the answer crosses them again
/// on its way back, and each takes one off its TTL ([`build::age_answer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    Deliver(Path),
    /// Addressed to a gateway itself (`owned`) or to an address in a pool the gateway answers
    /// for without a service behind it (a ClusterIP's unused port): answered from `addr`.
    Local {
        addr: Ipv4Addr,
        owned: bool,
        back: u8,
    },
    /// The TTL ran out at a gateway whose address facing the sender is `from`.
    TtlExceeded {
        from: Ipv4Addr,
        back: u8,
    },
    /// No route or no host: ICMP destination unreachable from `from`.
    Unreachable {
        from: Ipv4Addr,
        code: u8,
        back: u8,
    },
    /// A load-balanced frontend with no backend: refused at once.
    NoBackend {
        frontend: Ipv4Addr,
        back: u8,
    },
    Drop(DropReason),
}

/// Decisions of an existing connection that re-validation must keep.
#[derive(Debug, Clone, Copy, Default)]
struct Pin {
    backend: Option<(Ipv4Addr, u16)>,
    /// The backend stands even when its service no longer lists it: an established TCP
    /// connection, which kube-proxy's conntrack entries keep on their endpoint until they
    /// end (its DNAT rules see only new connections). A UDP flow is moved, as kube-proxy
    /// flushes the conntrack entries of a removed UDP endpoint.
    established: bool,
    /// The source address the connection was translated to (a VIP's automap, a hairpin's
    /// gateway): an established connection whose frontend is gone keeps it with its backend.
    snat: Option<Ipv4Addr>,
}

/// What the cached action of a tracked connection says about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hit {
    Transmit(FlowAction),
    Done(Verdict),
    /// The TTL runs out on the way: the walk finds at which gateway.
    TtlWalk,
    /// The connection no longer stands; the packet starts a new one.
    Miss,
}

/// The pipeline: shared by all workers.
pub struct Pipeline {
    tables: Arc<ArcSwap<Tables>>,
    pub conntrack: Conntrack,
    /// The datagrams whose later fragments follow their first.
    pub fragments: Fragments,
    /// The fragmented datagrams addressed to the router, being put together.
    pub reassembly: Reassembly,
    /// The backends clients of `sessionAffinity: ClientIP` services were given: outlives a
    /// publication of new tables, so a scaled service keeps its clients where they were.
    pub affinity: Affinity,
    /// The IP identifications of the echo replies and ICMP errors the router sends.
    pub idents: Idents,
    /// The flows a destination's DFW dropped after the sender's egress allowed them.
    pub denied: DeniedFlows,
}

/// The flows the sender's egress rules allowed and the destination's ingress rules dropped,
/// each for as long as an unanswered first packet of its protocol is remembered: NSX's DFW keeps
/// a state table at each vNIC, so the sender's side holds such a flow and its next packets (a
/// retransmitted SYN, the next ping of one `ping`) pass there on that state, counted again only
/// on the destination's drop rule. A fixed array of slots, a fingerprint of the flow's hash and
/// the second it is forgotten in each: a flow that a collision pushes out counts once more, at
/// worst, and the memory never grows with what a sender tries.
#[derive(Debug)]
pub struct DeniedFlows {
    slots: Box<[AtomicU64]>,
}

impl DeniedFlows {
    const SLOTS: usize = 4096;

    /// Remembers the flow of `hash` until `until_ms`; true if it was remembered already, at
    /// `now_ms`.
    pub fn seen(&self, hash: u64, now_ms: u64, until_ms: u64) -> bool {
        let Some(slot) = self.slots.get(hash as usize % Self::SLOTS) else {
            return false;
        };
        let fingerprint = (hash >> 32) | 1;
        let old = slot.load(Relaxed);
        let held = old >> 32 == fingerprint && (old & 0xffff_ffff) > now_ms / 1000;
        if !held {
            slot.store(
                fingerprint << 32 | (until_ms / 1000).min(0xffff_ffff),
                Relaxed,
            );
        }
        held
    }
}

impl Default for DeniedFlows {
    fn default() -> Self {
        DeniedFlows {
            slots: (0..Self::SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Pipeline {
    pub fn new(tables: Arc<ArcSwap<Tables>>) -> Self {
        Self::with_config(tables, ConntrackConfig::default())
    }

    pub fn with_config(tables: Arc<ArcSwap<Tables>>, config: ConntrackConfig) -> Self {
        Pipeline {
            tables,
            conntrack: Conntrack::new(config),
            fragments: Fragments::default(),
            reassembly: Reassembly::default(),
            affinity: Affinity::default(),
            idents: Idents::default(),
            denied: DeniedFlows::default(),
        }
    }

    pub fn tables(&self) -> Arc<Tables> {
        self.tables.load_full()
    }

    /// Processes one frame received on `in_port` at `now` (milliseconds of a monotonic clock).
    /// The tables are the newest published, as cached in `ctx` (see [`WorkerContext`]).
    pub fn process(
        &self,
        ctx: &mut WorkerContext,
        now: u64,
        in_port: PortId,
        pkt: &mut PacketBuf,
    ) -> Verdict {
        // Taken out of the context for the call, so the tables borrow the cache, not `ctx`.
        let mut cache = match ctx.tables.take() {
            Some(cache) if std::ptr::eq(cache.arc_swap(), &*self.tables) => cache,
            _ => Cache::new(Arc::clone(&self.tables)),
        };
        let verdict = self.process_with(cache.load(), ctx, now, in_port, pkt);
        ctx.tables = Some(cache);
        verdict
    }

    /// [`Pipeline::process`] against the given tables (a caller that holds a snapshot for a
    /// batch of frames).
    pub fn process_with(
        &self,
        tables: &Tables,
        ctx: &mut WorkerContext,
        now: u64,
        in_port: PortId,
        pkt: &mut PacketBuf,
    ) -> Verdict {
        self.process_inner(tables, ctx, now, in_port, pkt, true)
    }

    /// [`Pipeline::process_with`], with the fast path or (`fast` false: tests, to compare the
    /// two) without it.
    #[inline(always)]
    fn process_inner(
        &self,
        tables: &Tables,
        ctx: &mut WorkerContext,
        now: u64,
        in_port: PortId,
        pkt: &mut PacketBuf,
        fast: bool,
    ) -> Verdict {
        ctx.tx.clear();
        let Some(port) = tables.port(in_port) else {
            return Verdict::Drop(DropReason::UnknownPort);
        };
        if pkt.len < VNET_HDR_LEN {
            return Verdict::Drop(DropReason::Malformed);
        }
        let guard = FastGuard::new(tables, port);
        if let Some(ff) = self.fast_frame(&guard, pkt.frame()).filter(|_| fast) {
            let deadlines = || self.conntrack.deadlines(now);
            let mut out = OutHead::NONE;
            return self.fast_path::<false>(tables, ctx, now, deadlines, port, &ff, &mut out, pkt);
        }
        self.general_path(tables, ctx, now, port, pkt)
    }

    /// Processes a batch of frames received on `in_port`, in order, and hands each one's
    /// verdict to `emit` with the context and the packet (whose `tx` list says what to send),
    /// before the next frame is processed.
    ///
    /// The same as [`Pipeline::process`] frame by frame, but a batch pays its cache misses
    /// together: every frame of the fast path is parsed and hashed first and its connection's
    /// index bucket touched, then every bucket is read and the entry it points at touched, and
    /// only then are the frames processed, by which time their connections are in the cache.
    /// (VPP's dual and quad loops; without prefetch instructions, which Rust offers only as
    /// `unsafe`, the touches are plain loads whose results are dropped: the CPU still has them
    /// all in flight at once.)
    pub fn process_batch(
        &self,
        ctx: &mut WorkerContext,
        now: u64,
        in_port: PortId,
        pkts: &mut [PacketBuf],
        mut emit: impl FnMut(usize, Verdict, &WorkerContext, &PacketBuf),
    ) {
        let mut cache = match ctx.tables.take() {
            Some(cache) if std::ptr::eq(cache.arc_swap(), &*self.tables) => cache,
            _ => Cache::new(Arc::clone(&self.tables)),
        };
        let tables: &Tables = cache.load();
        let port = tables.port(in_port);
        let guard = port.map(|port| FastGuard::new(tables, port));
        let deadlines = self.conntrack.deadlines(now);
        let mut out = OutHead::NONE;
        let mut done = 0;
        for batch in pkts.chunks_mut(BATCH) {
            let mut prepared: [Option<(FastFrame, Home)>; BATCH] = [None; BATCH];
            if let Some(guard) = &guard {
                for (pkt, slot) in batch.iter().zip(prepared.iter_mut()) {
                    // Stored only when taken: a store of the option on both outcomes would
                    // assemble it on the stack first.
                    // The frame as `frame()` gives it, but a frame shorter than the virtio-net header
                    // (which `frame()` makes empty, and the fast path refuses) is refused at once.
                    let frame = pkt.buf.get(VNET_HDR_LEN..pkt.len);
                    if let Some(ff) = frame.and_then(|frame| self.fast_frame(guard, frame)) {
                        let home = self.conntrack.warm_bucket(&ff.hash);
                        *slot = Some((ff, home));
                    }
                }
            }
            for (ff, home) in prepared.iter_mut().flatten() {
                ff.hint = self.conntrack.warm_entry(*home, &ff.hash);
            }
            for (i, (pkt, prep)) in batch.iter_mut().zip(prepared.iter()).enumerate() {
                ctx.tx.clear();
                let verdict = match (port, prep) {
                    (None, _) => Verdict::Drop(DropReason::UnknownPort),
                    (Some(port), Some((ff, _))) => {
                        let deadlines = || deadlines;
                        self.fast_path::<true>(tables, ctx, now, deadlines, port, ff, &mut out, pkt)
                    }
                    // A frame shorter than its header is empty there: dropped as malformed.
                    (Some(port), None) => self.general_path(tables, ctx, now, port, pkt),
                };
                emit(done + i, verdict, ctx, pkt);
            }
            done += batch.len();
        }
        ctx.tables = Some(cache);
    }

    /// Every frame the fast path does not take: parsed whole, then SpoofGuard, ARP, IPv4.
    fn general_path(
        &self,
        tables: &Tables,
        ctx: &mut WorkerContext,
        now: u64,
        port: &Port,
        pkt: &mut PacketBuf,
    ) -> Verdict {
        let parsed = match parse_frame(pkt.frame()) {
            Ok(parsed) => parsed,
            Err(_) => return Verdict::Drop(DropReason::Malformed),
        };
        if let PortKind::Pod { ip, .. } = port.kind {
            if parsed.src_mac != port.peer_mac {
                return Verdict::Drop(DropReason::SpoofedSource);
            }
            let claimed = match &parsed.l3 {
                L3::Arp(arp) if arp.sender_ip.is_unspecified() => ip, // an RFC 5227 probe
                L3::Arp(arp) => arp.sender_ip,
                L3::Ipv4(v4) => v4.src,
                L3::Other => ip,
            };
            let arp_mac_ok = match &parsed.l3 {
                L3::Arp(arp) => arp.sender_mac == port.peer_mac,
                _ => true,
            };
            if claimed != ip || !arp_mac_ok {
                return Verdict::Drop(DropReason::SpoofedSource);
            }
        }
        match parsed.l3 {
            L3::Arp(arp) => self.arp(tables, ctx, port, &arp),
            L3::Ipv4(ref ip) => {
                // Ethernet pads short frames; the IP total length is the truth (STYLE.md 3).
                let end = VNET_HDR_LEN + ip.offset + ip.total_len;
                if end < pkt.len {
                    pkt.len = end;
                }
                self.ipv4(tables, ctx, now, port, &parsed, ip, pkt)
            }
            L3::Other if parsed.ethertype == ETHERTYPE_IPV6 => Verdict::Drop(DropReason::Ipv6),
            L3::Other => Verdict::Drop(DropReason::UnsupportedEthertype),
        }
    }

    /// ARP (RFC 826): requests for a gateway address get the router MAC; requests for a pod of the
    /// requester's own segment get that pod's MAC (ARP suppression). Nothing is ever flooded.
    fn arp(&self, t: &Tables, ctx: &mut WorkerContext, port: &Port, arp: &ArpInfo) -> Verdict {
        const REQUEST: u16 = 1;
        if arp.operation != REQUEST {
            return Verdict::Consumed;
        }
        let answer = match port.kind {
            PortKind::Pod { segment, .. } => {
                let Some(seg) = t.segment(segment) else {
                    return Verdict::Drop(DropReason::UnknownPort);
                };
                if arp.target_ip == seg.gateway_ip {
                    Some(t.router_mac)
                } else if arp.target_ip == arp.sender_ip {
                    None // gratuitous
                } else {
                    // Never the asker itself: an RFC 5227 probe for its own address (sender
                    // 0.0.0.0) must meet silence, or the pod thinks its address is taken.
                    t.hosts
                        .get(&arp.target_ip)
                        .filter(|&&p| p != port.id)
                        .and_then(|&p| t.port(p))
                        .filter(
                            |p| matches!(p.kind, PortKind::Pod { segment: s, .. } if s == segment),
                        )
                        .map(|p| p.peer_mac)
                }
            }
            PortKind::Uplink { addr, .. } => (arp.target_ip == addr).then_some(t.router_mac),
        };
        let Some(mac) = answer else {
            return Verdict::Consumed;
        };
        let scratch = &mut ctx.scratch;
        scratch.buf[..VNET_HDR_LEN].fill(0);
        let out = &mut scratch.buf[VNET_HDR_LEN..];
        match build::build_arp_reply(out, mac, arp.target_ip, arp.sender_mac, arp.sender_ip) {
            Some(n) => {
                scratch.len = VNET_HDR_LEN + n;
                ctx.tx.push(Tx {
                    port: port.id,
                    source: TxSource::Scratch,
                });
                Verdict::Reply
            }
            None => Verdict::Drop(DropReason::Malformed),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ipv4(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        now: u64,
        port: &Port,
        parsed: &ParsedFrame,
        ip: &Ipv4Info,
        pkt: &mut PacketBuf,
    ) -> Verdict {
        // IP options (a header longer than 20 bytes, which the fast path never takes): checked
        // on receipt, as a Linux router does, by the gateway the sender faces. A frame switched
        // inside its segment meets no router, and is not looked at.
        if ip.header_len > ipv4::HEADER_LEN && parsed.dst_mac == t.router_mac {
            let header = pkt.frame().get(ip.offset..ip.l4_offset());
            if let Some(pointer) = header.and_then(parse::ip_options_problem) {
                return self.bad_ip_options(t, ctx, now, port, parsed, ip, pkt, pointer);
            }
        }
        // A later fragment has no ports to look up: it goes where its first fragment went.
        if ip.is_fragment && !ip.is_first_fragment {
            return self.later_fragment(t, ctx, now, port, ip, pkt);
        }
        if !ip.is_fragment {
            return self.ipv4_packet(t, ctx, now, port, parsed, ip, pkt);
        }
        // Read before the rewrite: the later fragments arrive with the addresses as they were.
        let Some(id) = datagram_id(port.id, ip, pkt.frame()) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let verdict = self.ipv4_packet(t, ctx, now, port, parsed, ip, pkt);
        self.first_fragment_done(t, ctx, now, port, id, verdict)
    }

    /// A packet whose IP options do not hold (`pointer` at the bad octet): dropped, and
    /// answered with an ICMP parameter problem from the gateway the sender faces (its segment's
    /// gateway address, or the uplink's), as a Linux router answers it (`ip_options_compile`).
    #[cold]
    #[allow(clippy::too_many_arguments)]
    fn bad_ip_options(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        now: u64,
        port: &Port,
        parsed: &ParsedFrame,
        ip: &Ipv4Info,
        pkt: &PacketBuf,
        pointer: u8,
    ) -> Verdict {
        let from = match port.kind {
            PortKind::Pod { segment, .. } => t.segment(segment).map(|seg| seg.gateway_ip),
            PortKind::Uplink { addr, .. } => Some(addr),
        };
        if let Some(from) = from {
            ctx.icmp_errors.now = now;
            let error = (icmp::PARAM_PROBLEM, 0, u16::from(pointer));
            self.icmp_error_with(t, ctx, port, parsed, ip, pkt, from, error, 0);
        }
        Verdict::Drop(DropReason::BadIpOptions)
    }

    /// A packet, or a datagram's first fragment, through the connection table and the walk.
    #[allow(clippy::too_many_arguments)]
    fn ipv4_packet(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        now: u64,
        port: &Port,
        parsed: &ParsedFrame,
        ip: &Ipv4Info,
        pkt: &mut PacketBuf,
    ) -> Verdict {
        // L2: a frame not addressed to the router is switched inside its segment (still through
        // conntrack and the DFW: NSX applies the DFW at every vNIC) or dropped.
        let switched_to = if parsed.dst_mac == t.router_mac {
            None
        } else {
            match self.switch_target(t, ctx, port, parsed, ip) {
                Ok(target) => Some(target),
                Err(verdict) => return verdict,
            }
        };
        let (key, tcp_flags) = match flow_key(ip) {
            FlowOf::Key(key, flags) => (key, flags),
            FlowOf::IcmpError(inner) => {
                return self.related_icmp_error(t, ctx, now, port, ip, &inner, pkt)
            }
        };
        if let Some((dir, tracked)) = self.conntrack.track(&key, tcp_flags, now) {
            match self.hit(t, &key, ip.ttl, dir, tracked) {
                Hit::Transmit(action) => {
                    return self.transmit_datagram(t, ctx, now, port, ip, &action, pkt)
                }
                Hit::Done(verdict) => return verdict,
                Hit::TtlWalk => {
                    let walk = self.walk(t, port.id, &key, ip.ttl, Pin::default(), None);
                    return self.answer_walk(t, ctx, now, port, parsed, ip, pkt, walk);
                }
                Hit::Miss => {}
            }
        }
        self.miss(
            t,
            ctx,
            now,
            port,
            parsed,
            ip,
            &key,
            tcp_flags,
            switched_to,
            pkt,
        )
    }

    /// A frame for the fast path: what [`parse::parse_ipv4_fast`] found in a frame addressed to
    /// the router that passes SpoofGuard on the guard's port, its key hashed. `None` sends the frame down
    /// the general path, which drops or switches it. (Pure: `process_batch` decides it for a
    /// whole batch before processing the first frame.)
    #[inline]
    fn fast_frame(&self, guard: &FastGuard, frame: &[u8]) -> Option<FastFrame<'static>> {
        let ip = parse::parse_ipv4_fast(frame)?;
        // Not for us (switched, broadcast), or failing SpoofGuard: the general path drops or
        // switches it, and counts it.
        if !guard.passes(frame.first_chunk::<12>()?, ip.src) {
            return None;
        }
        let tcp_flags = match ip.l4 {
            L4::Tcp { flags, .. } => flags,
            L4::Udp { .. } => 0,
            _ => return None,
        };
        // The key's addresses and ports as the frame carries them (IPv4 without options: the
        // ports follow the header at once), hashed without being taken apart.
        const ADDRESSES_AT: usize = ethernet::HEADER_LEN + 12;
        let wire = frame.get(ADDRESSES_AT..ADDRESSES_AT + 12)?;
        Some(FastFrame {
            hash: self.conntrack.flow_hash_wire(
                ip.protocol,
                *wire.first_chunk::<8>()?,
                *wire.last_chunk::<4>()?,
            ),
            ttl: ip.ttl,
            tcp_flags,
            // At most 14 + 65535: the fast parse checked the total length against the frame.
            end: u16::try_from(ip.total_len).ok()?,
            hint: Hint::NONE,
        })
    }

    /// The fast path: a TCP or UDP frame that [`Pipeline::fast_frame`] took. It does what
    /// [`Pipeline::ipv4`] does for such a frame (a hit applies the cached action, a miss is
    /// walked as a new flow); the common case, a packet of an established connection whose
    /// action stands, goes straight to [`rewrite::apply_action_v4`], and only the rare branches
    /// parse the frame again for the general machinery. `KEEP`: `out` lives across the frames
    /// of a batch (see [`OutHead`]); without it the MACs are written from the out port.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn fast_path<const KEEP: bool>(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        now: u64,
        deadlines: impl Fn() -> Deadlines + Copy,
        port: &Port,
        ff: &FastFrame,
        out: &mut OutHead,
        pkt: &mut PacketBuf,
    ) -> Verdict {
        // Ethernet pads short frames; the IP total length is the truth (STYLE.md 3).
        let end = VNET_HDR_LEN + ethernet::HEADER_LEN + usize::from(ff.end);
        // The fast parse checked the total length against the frame: `end` is never past it.
        if end > pkt.len {
            return Verdict::Drop(DropReason::Malformed);
        }
        pkt.len = end;
        // The length in a register (and known to hold the virtio-net header): the connection
        // table's atomics below would have it read from the packet again.
        let len = end;
        let protocol = ff.hash.protocol();
        let tracked =
            self.conntrack
                .track_packed(protocol, &ff.hash, ff.hint, ff.tcp_flags, deadlines);
        if let Some((
            _,
            Advanced::Pass {
                action,
                generation,
                opened,
            },
        )) = tracked
        {
            // What `hit` finds for it: the action stands (decided under these tables, and the
            // packet neither opened nor closed the connection: the two tested as one word), the
            // TTL lasts, and a routed packet fits the gateways' MTU (a bigger one, a GSO batch
            // or a jumbo frame, is judged by `transmit`).
            let stands = (generation ^ t.generation) | u64::from(opened.cast_unsigned()) == 0;
            let past_mtu = len > VNET_HDR_LEN + ethernet::HEADER_LEN + PORT_MTU;
            if stands && !(action.routed() & ((ff.ttl <= action.ttl_dec()) | past_mtu)) {
                let udp = protocol != PROTO_TCP;
                return Self::forward_v4::<KEEP>(t, &mut ctx.tx, out, action, udp, len, pkt);
            }
        }
        let tracked = tracked.map(|(dir, advanced)| (dir, advanced.unpack()));
        // The connection was tracked: whatever follows must not send the frame down the
        // general path, which would track it again. The parse cannot fail (it did not before).
        let key = ff.hash.key();
        let Some(ip) = parse::reparse_ipv4_fast(pkt.frame()) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let src_mac = mac_at(pkt.frame(), 6);
        let parsed = || ParsedFrame {
            dst_mac: t.router_mac,
            src_mac,
            ethertype: ETHERTYPE_IPV4,
            l3: L3::Ipv4(ip),
        };
        if let Some((dir, tracked)) = tracked {
            match self.hit(t, &key, ip.ttl, dir, tracked) {
                Hit::Transmit(action) => return self.transmit(t, ctx, port, &ip, &action, pkt),
                Hit::Done(verdict) => return verdict,
                Hit::TtlWalk => {
                    let walk = self.walk(t, port.id, &key, ip.ttl, Pin::default(), None);
                    return self.answer_walk(t, ctx, now, port, &parsed(), &ip, pkt, walk);
                }
                Hit::Miss => {}
            }
        }
        self.miss(
            t,
            ctx,
            now,
            port,
            &parsed(),
            &ip,
            &key,
            ff.tcp_flags,
            None,
            pkt,
        )
    }

    /// [`Pipeline::transmit`] for the fast path's frame (see [`rewrite::apply_action_v4`]), the
    /// action read from its packed words and the MACs taken from where the tables hold them:
    /// what goes through registers instead of a [`rewrite::Action`] assembled in memory.
    /// `len`: the packet's length, as the fast path trimmed it.
    #[inline(always)]
    fn forward_v4<const KEEP: bool>(
        t: &Tables,
        tx: &mut Vec<Tx>,
        out: &mut OutHead,
        action: PackedAction,
        udp: bool,
        len: usize,
        pkt: &mut PacketBuf,
    ) -> Verdict {
        let out_port = action.out_port();
        // A batch keeps the port's MACs in `out`; one frame (`KEEP` false) writes them from the
        // port, as the keeping would always miss.
        let direct = if KEEP {
            if u64::from(out_port) != out.port {
                let Some(port) = t.port(out_port) else {
                    return Verdict::Drop(DropReason::NoRoute);
                };
                let mut macs = [0u8; 12];
                macs[..6].copy_from_slice(&port.peer_mac.0);
                macs[6..].copy_from_slice(&t.router_mac.0);
                *out = OutHead {
                    port: u64::from(out_port),
                    macs,
                };
            }
            None
        } else {
            let Some(port) = t.port(out_port) else {
                return Verdict::Drop(DropReason::NoRoute);
            };
            Some(port)
        };
        let Some((vnet, frame)) = pkt
            .buf
            .get_mut(..len)
            .and_then(|b| b.split_first_chunk_mut::<VNET_HDR_LEN>())
        else {
            return Verdict::Drop(DropReason::Malformed);
        };
        // The flags byte of the virtio-net header (its first byte) is all this needs.
        let partial = vnet[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
        let rewrite = rewrite::ActionV4 {
            ttl_dec: action.ttl_dec(),
            snat: action.snat(),
            dnat: action.dnat(),
            macs: None,
        };
        rewrite::apply_action_v4(frame, udp, &rewrite, partial);
        // The MACs as `apply_action_v4` would set them: as two words kept for the batch, or
        // from the port.
        if action.routed() {
            if let Some(head) = frame.first_chunk_mut::<12>() {
                match direct {
                    None => *head = out.macs,
                    Some(port) => {
                        head[..6].copy_from_slice(&port.peer_mac.0);
                        head[6..].copy_from_slice(&t.router_mac.0);
                    }
                }
            }
        }
        tx.push(Tx {
            port: out_port,
            source: TxSource::Packet,
        });
        Verdict::Forward
    }

    /// What a packet of a tracked connection gets: its cached action, re-validated when the
    /// tables changed since it was decided.
    #[inline]
    fn hit(&self, t: &Tables, key: &FlowKey, ttl: u8, dir: Dir, tracked: Tracked) -> Hit {
        let Tracked::Pass {
            action,
            generation,
            opened,
        } = tracked
        else {
            return Hit::Done(Verdict::Drop(DropReason::ConntrackInvalid));
        };
        if opened != 0 {
            self.count_open(t, key, opened);
        }
        let conn = if generation == t.generation {
            None
        } else {
            self.conntrack.get(key).map(|(c, _)| c)
        };
        let action = match &conn {
            None if generation == t.generation => Some(action),
            // Decided under older tables, and ended since it was tracked (expired, or forgotten
            // with its pod's port): its action is not re-checked, so it is not applied either
            // (it may send a new pod's SYN to the backend of a deleted service).
            None => None,
            Some(conn) => self
                .revalidate(t, conn, opened > 0)
                .map(|actions| actions[dir as usize]),
        };
        match action {
            // Let the walk find which gateway the TTL runs out at.
            Some(action) if action.routed && ttl <= action.ttl_dec => Hit::TtlWalk,
            Some(action) => Hit::Transmit(action),
            None => {
                // The connection no longer stands (its backend or pod went, the DFW now
                // denies it). A client's next packet starts afresh, so it is never stuck on a
                // dead backend; a server's reply has nowhere to go.
                if let Some(conn) = &conn {
                    self.conntrack.remove(conn.id);
                }
                if dir == Dir::Reply {
                    Hit::Done(Verdict::Drop(DropReason::NoBackend))
                } else {
                    Hit::Miss
                }
            }
        }
    }

    /// A packet no connection stands for: walked through the gateways, checked against the
    /// DFW, and made the first packet of a new connection.
    #[allow(clippy::too_many_arguments)]
    fn miss(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        now: u64,
        port: &Port,
        parsed: &ParsedFrame,
        ip: &Ipv4Info,
        key: &FlowKey,
        tcp_flags: u8,
        switched_to: Option<PortId>,
        pkt: &mut PacketBuf,
    ) -> Verdict {
        let walk = match switched_to {
            Some(out_port) => Walk::Deliver(Path {
                out_port,
                routed: false,
                hops: 0,
                snat_addr: None,
                dnat: None,
                lb: None,
            }),
            None => self.walk(t, port.id, key, ip.ttl, Pin::default(), Some(now)),
        };
        let Walk::Deliver(path) = walk else {
            return self.answer_walk(t, ctx, now, port, parsed, ip, pkt, walk);
        };
        // A routed TCP segment that cannot open a connection is conntrack INVALID on a Linux
        // router, and kube-proxy's FORWARD drops it: no connection, no SNAT binding, no rule hit.
        if path.routed && key.protocol == PROTO_TCP && !crate::conntrack::tcp_opens(tcp_flags) {
            return Verdict::Drop(DropReason::ConntrackInvalid);
        }
        if let Some(rule_action) = self.dfw_verdict(t, port, key, &path, Some(now)) {
            if rule_action != RuleAction::Allow {
                return Verdict::Drop(DropReason::DfwDeny);
            }
        }
        // Refused as too big (don't-fragment set): before any connection is made for it, as a
        // Linux router drops it before its conntrack confirms the flow, so `get nat` lists no
        // SNAT binding, and holds no port, for a packet that never left.
        if path.routed && pkt.len > VNET_HDR_LEN + ethernet::HEADER_LEN + PORT_MTU {
            if let Some(refused) = self.refuse_too_big(t, ctx, port, pkt) {
                return refused;
            }
        }
        match self.create(t, now, port.id, key, tcp_flags, &path) {
            Ok(action) => self.transmit_datagram(t, ctx, now, port, ip, &action, pkt),
            Err(reason) => Verdict::Drop(reason),
        }
    }

    /// A frame for another MAC: delivered to that pod if it is on the sender's segment; broadcast
    /// and multicast stay on the segment (flooded to its other ports).
    /// Where a frame for another MAC goes: the pod of the sender's segment with that MAC.
    /// Broadcast and multicast stay on the segment (flooded to its other ports); anything else is
    /// not for us. `Err` carries the verdict when the frame does not become a flow.
    fn switch_target(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        port: &Port,
        parsed: &ParsedFrame,
        ip: &Ipv4Info,
    ) -> Result<PortId, Verdict> {
        let PortKind::Pod { segment, .. } = port.kind else {
            return Err(Verdict::Drop(DropReason::NotForUs));
        };
        if parsed.dst_mac.is_multicast() {
            if let Some(seg) = t.segment(segment) {
                let others = seg.ports.iter().filter(|&&p| p != port.id);
                ctx.tx.extend(others.map(|&p| Tx {
                    port: p,
                    source: TxSource::Packet,
                }));
            }
            return Err(if ctx.tx.is_empty() {
                Verdict::Consumed
            } else {
                Verdict::Forward
            });
        }
        t.hosts
            .get(&ip.dst)
            .and_then(|&p| t.port(p))
            .filter(|p| {
                p.peer_mac == parsed.dst_mac
                    && matches!(p.kind, PortKind::Pod { segment: s, .. } if s == segment)
            })
            .map(|p| p.id)
            .ok_or(Verdict::Drop(DropReason::NotForUs))
    }

    /// Applies a connection's action to the packet and queues it.
    #[inline]
    fn transmit(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        port: &Port,
        ip: &Ipv4Info,
        action: &FlowAction,
        pkt: &mut PacketBuf,
    ) -> Verdict {
        self.transmit_with(t, ctx, port, action, pkt, |frame, rewrite, partial| {
            rewrite::apply_action(frame, ip, rewrite, partial)
        })
    }

    /// [`Pipeline::transmit`] for a packet of the general path that may be a datagram's first
    /// fragment: then what it got is remembered for the later fragments (see [`crate::fragments`]).
    #[allow(clippy::too_many_arguments)]
    fn transmit_datagram(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        now: u64,
        port: &Port,
        ip: &Ipv4Info,
        action: &FlowAction,
        pkt: &mut PacketBuf,
    ) -> Verdict {
        // Read before the rewrite: the later fragments arrive with the addresses as they were.
        let datagram = ip
            .is_fragment
            .then(|| datagram_id(port.id, ip, pkt.frame()))
            .flatten();
        let verdict = self.transmit(t, ctx, port, ip, action, pkt);
        if let (Some(id), Verdict::Forward) = (datagram, verdict) {
            self.fragments.remember(id, *action, now);
        }
        verdict
    }

    /// After a datagram's first fragment: a dropped one drops its later fragments (remembered,
    /// so they are counted as they come); one that went through, or started a reassembly,
    /// releases those that came before it and were held, each then done as it would have
    /// been had it come after (see [`crate::fragments`]).
    fn first_fragment_done(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        now: u64,
        port: &Port,
        id: DatagramId,
        verdict: Verdict,
    ) -> Verdict {
        let went_on = matches!(verdict, Verdict::Forward | Verdict::Consumed);
        if !went_on {
            self.fragments.remember_dropped(id, now);
        }
        let mut held = self.fragments.take_early(&id, now);
        if held.is_empty() {
            return verdict;
        }
        if !went_on {
            self.fragments.count_early_dropped(held.len());
            return verdict;
        }
        // In the datagram's order: the last fragment ends what the others follow.
        held.sort_by_key(|frame| match parse_frame(frame) {
            Ok(ParsedFrame {
                l3: L3::Ipv4(ip), ..
            }) => fragment_offset(&ip, frame),
            _ => 0,
        });
        let mut released = std::mem::take(&mut ctx.released);
        released.clear();
        let mut verdict = verdict;
        for (index, frame) in (0..=u8::MAX).zip(held.iter()) {
            let mut buf = vec![0u8; VNET_HDR_LEN + frame.len()].into_boxed_slice();
            buf[VNET_HDR_LEN..].copy_from_slice(frame);
            released.push(PacketBuf {
                len: buf.len(),
                buf,
            });
            let Some(pkt) = released.last_mut() else {
                break;
            };
            let Ok(ParsedFrame {
                l3: L3::Ipv4(ip), ..
            }) = parse_frame(pkt.frame())
            else {
                continue;
            };
            let before = ctx.tx.len();
            let done = self.later_fragment(t, ctx, now, port, &ip, pkt);
            for tx in ctx.tx.iter_mut().skip(before) {
                if tx.source == TxSource::Packet {
                    tx.source = TxSource::Released(index);
                }
            }
            // A ping to the router that the held fragments complete is answered now.
            if verdict == Verdict::Consumed && matches!(done, Verdict::Reply | Verdict::Forward) {
                verdict = done;
            }
        }
        ctx.released = released;
        verdict
    }

    /// A fragment past the first (RFC 791): it follows its first fragment, is dropped when
    /// that was dropped, or is held until it comes (see [`crate::fragments`]).
    fn later_fragment(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        now: u64,
        port: &Port,
        ip: &Ipv4Info,
        pkt: &mut PacketBuf,
    ) -> Verdict {
        let Some(id) = datagram_id(port.id, ip, pkt.frame()) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let last = !more_fragments(ip, pkt.frame());
        match self.fragments.follow(&id, last, now) {
            // Its first fragment had the TTL it has: only a changed TTL stops it here.
            Fate::Follow(action) if action.routed && ip.ttl <= action.ttl_dec => {
                Verdict::Drop(DropReason::TtlExceeded)
            }
            // The rewrite leaves the transport header of a later fragment alone: it has none.
            Fate::Follow(action) => self.transmit(t, ctx, port, ip, &action, pkt),
            Fate::Dropped => Verdict::Drop(DropReason::Fragment),
            // Perhaps part of a datagram addressed to the router, or one whose first is late.
            Fate::Unknown => {
                let frame = pkt.frame();
                let offset = fragment_offset(ip, frame);
                let Some(payload) = frame.get(ip.l4_offset()..ip.end()) else {
                    return Verdict::Drop(DropReason::Malformed);
                };
                match self.reassembly.add(&id, offset, payload, last, now) {
                    Added::Held => Verdict::Consumed,
                    Added::Refused => Verdict::Drop(DropReason::Fragment),
                    Added::NoDatagram if self.fragments.hold(id, frame, now) => Verdict::Consumed,
                    Added::NoDatagram => Verdict::Drop(DropReason::Fragment),
                    Added::Complete {
                        datagram,
                        hops_back,
                    } => {
                        let peer = mac_at(frame, 6);
                        self.answer_reassembled(t, ctx, now, port, peer, &datagram, hops_back)
                    }
                }
            }
        }
    }

    /// Answers a datagram addressed to the router that came in fragments, now whole, as the
    /// router answers it unfragmented (Linux answers what it reassembled): an echo request to
    /// a gateway's address gets its reply, in fragments as the request came; a TCP segment or
    /// UDP datagram to a port nothing listens on a reset or port unreachable, the error quoting
    /// the datagram whole; other ICMP is taken.
    #[allow(clippy::too_many_arguments)]
    fn answer_reassembled(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        now: u64,
        port: &Port,
        peer: MacAddr,
        datagram: &[u8],
        hops_back: u8,
    ) -> Verdict {
        let mut whole = PacketBuf {
            buf: vec![0u8; VNET_HDR_LEN + ethernet::HEADER_LEN + datagram.len()].into_boxed_slice(),
            len: VNET_HDR_LEN + ethernet::HEADER_LEN + datagram.len(),
        };
        {
            let frame = whole.frame_mut();
            frame[..6].copy_from_slice(&t.router_mac.0);
            frame[6..12].copy_from_slice(&peer.0);
            frame[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            frame[ethernet::HEADER_LEN..].copy_from_slice(datagram);
        }
        let Ok(parsed) = parse_frame(whole.frame()) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let L3::Ipv4(ip) = parsed.l3 else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let is_echo = matches!(
            ip.l4,
            L4::IcmpEcho {
                icmp_type: icmp::ECHO_REQUEST,
                ..
            }
        );
        if !is_echo {
            let FlowOf::Key(key, _) = flow_key(&ip) else {
                return Verdict::Consumed; // an ICMP error: never answered
            };
            // The walk the first fragment took (the tables may have changed since: then what
            // they say now).
            let Walk::Local { addr, back, .. } =
                self.walk(t, port.id, &key, ip.ttl, Pin::default(), None)
            else {
                return Verdict::Consumed;
            };
            if ip.protocol == PROTO_ICMP {
                return Verdict::Consumed;
            }
            ctx.icmp_errors.now = now;
            self.refuse(t, ctx, port, &parsed, &ip, &whole, addr, back);
            return if ctx.tx.is_empty() {
                Verdict::Consumed
            } else {
                Verdict::Reply
            };
        }
        // Checked once, whole (each fragment of the reply updates the request's checksum, in
        // the first): a request that fails it, or whose overlapping fragments rewrote its
        // bytes, is dropped as Linux drops it.
        let header_len = usize::from(datagram.first().map_or(0, |b| b & 0x0f)) * 4;
        if !datagram
            .get(header_len..)
            .is_some_and(build::icmp_checksum_ok)
        {
            return Verdict::Drop(DropReason::Malformed);
        }
        let ident = self.idents.next(ip.src);
        for index in 0..=u8::MAX {
            let i = usize::from(index);
            if ctx.fragments_out.len() <= i {
                ctx.fragments_out.push(PacketBuf {
                    buf: vec![0u8; VNET_HDR_LEN + PORT_MTU + ethernet::HEADER_LEN]
                        .into_boxed_slice(),
                    len: 0,
                });
            }
            let out = &mut ctx.fragments_out[i];
            out.buf[..VNET_HDR_LEN].fill(0);
            let built = build::echo_reply_fragment(
                &mut out.buf[VNET_HDR_LEN..],
                t.router_mac,
                peer,
                datagram,
                PORT_MTU,
                i,
            );
            let Some((n, last)) = built else { break };
            build::set_ident(&mut out.buf[VNET_HDR_LEN..VNET_HDR_LEN + n], ident);
            build::age_answer(&mut out.buf[VNET_HDR_LEN..VNET_HDR_LEN + n], hops_back);
            out.len = VNET_HDR_LEN + n;
            ctx.tx.push(Tx {
                port: port.id,
                source: TxSource::Fragment(index),
            });
            if last {
                return Verdict::Reply;
            }
        }
        ctx.tx.clear();
        Verdict::Drop(DropReason::Fragment)
    }

    /// [`Pipeline::transmit`] with the rewrite done by `apply` (the frame, the rewrite, whether
    /// the frame's transport checksum is partial). `port` is the one the packet came in by.
    ///
    /// A routed packet bigger than the MTU of the gateways' interfaces ([`PORT_MTU`]: a pod
    /// that raised its own, `ip link set eth0 mtu 9000`) is what a Linux router refuses or
    /// cuts up (RFC 1812 section 5.2.6): see [`Pipeline::too_big`]. A GSO frame is the
    /// kernel's batch of segments, each within its sender's MTU, and is not judged by its size.
    #[inline]
    fn transmit_with(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        port: &Port,
        action: &FlowAction,
        pkt: &mut PacketBuf,
        apply: impl FnOnce(&mut [u8], &rewrite::Action, bool),
    ) -> Verdict {
        if action.routed
            && pkt.len > VNET_HDR_LEN + ethernet::HEADER_LEN + PORT_MTU
            && pkt
                .buf
                .get(vnet::field::GSO_TYPE)
                .is_some_and(|&g| g & !vnet::GSO_ECN == vnet::GSO_NONE)
        {
            return self.too_big(t, ctx, port, action, pkt, apply);
        }
        // IP options (`ping -R`): rare, so looked at only here, off the fast path.
        if action.routed && pkt.frame().get(ethernet::HEADER_LEN) != Some(&0x45) {
            record_route(t, port, action, pkt.frame_mut());
        }
        // The flags byte of the virtio-net header (its first byte) is all this needs.
        let partial = pkt
            .buf
            .first()
            .is_some_and(|f| f & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0);
        let Some(out) = t.port(action.out_port) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        let rewrite = rewrite::Action {
            ttl_dec: action.ttl_dec,
            snat: action.snat,
            dnat: action.dnat,
            macs: action.routed.then_some((t.router_mac, out.peer_mac)),
        };
        apply(pkt.frame_mut(), &rewrite, partial);
        ctx.tx.push(Tx {
            port: action.out_port,
            source: TxSource::Packet,
        });
        Verdict::Forward
    }

    /// A routed packet bigger than [`PORT_MTU`]. With don't-fragment set, the gateway the
    /// sender faces answers "fragmentation needed" with the next hop's MTU (RFC 1191; not rate
    /// limited, as Linux does not limit it) and drops it, counted as `frag-needed`: so path
    /// MTU discovery learns 1500 from the first router, as behind a Linux router. Without, the
    /// packet is translated whole, then cut into fragments of at most [`PORT_MTU`] (its
    /// transport checksum completed first when the kernel left it partial: the fragments go
    /// out with no offloads).
    #[cold]
    fn too_big(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        port: &Port,
        action: &FlowAction,
        pkt: &mut PacketBuf,
        apply: impl FnOnce(&mut [u8], &rewrite::Action, bool),
    ) -> Verdict {
        let Some(df) = dont_fragment(pkt.frame()) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if df {
            return self.frag_needed(t, ctx, port, pkt);
        }
        let Some(out) = t.port(action.out_port) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        let vnet = VnetHeader::parse(&pkt.buf).unwrap_or_default();
        let rewrite = rewrite::Action {
            ttl_dec: action.ttl_dec,
            snat: action.snat,
            dnat: action.dnat,
            macs: Some((t.router_mac, out.peer_mac)),
        };
        apply(pkt.frame_mut(), &rewrite, vnet.needs_csum());
        if vnet.needs_csum() {
            let frame = pkt.frame_mut();
            let start = usize::from(vnet.csum_start);
            let at = start + usize::from(vnet.csum_offset);
            if at + 2 > frame.len() {
                return Verdict::Drop(DropReason::Malformed);
            }
            let mut sum = checksum::finish(checksum::sum(&frame[start..], 0));
            let is_udp = frame.get(ethernet::HEADER_LEN + 9) == Some(&PROTO_UDP);
            if sum == 0 && is_udp {
                sum = 0xffff;
            }
            frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        if queue_fragments(ctx, action.out_port, pkt.frame()) {
            Verdict::Forward
        } else {
            Verdict::Drop(DropReason::Malformed)
        }
    }

    /// A first packet past the MTU: refused with [`Pipeline::frag_needed`] when it says
    /// don't-fragment and is no GSO frame (`None`: it goes on). Out of line, off the way of
    /// the first packets that fit.
    #[cold]
    #[inline(never)]
    fn refuse_too_big(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        port: &Port,
        pkt: &PacketBuf,
    ) -> Option<Verdict> {
        too_big_to_route(pkt).then(|| self.frag_needed(t, ctx, port, pkt))
    }

    /// "Fragmentation needed" (with the gateways' MTU) from the gateway the sender faces,
    /// about the packet as received; the packet is dropped, counted as `frag-needed`. Never
    /// about an ICMP error, and not rate limited (Linux does not limit it either: path MTU
    /// discovery depends on it).
    #[cold]
    fn frag_needed(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        port: &Port,
        pkt: &PacketBuf,
    ) -> Verdict {
        let frame = pkt.frame();
        let from = match port.kind {
            PortKind::Pod { segment, .. } => t.segment(segment).map(|s| s.gateway_ip),
            PortKind::Uplink { addr, .. } => Some(addr),
        };
        let original = frame.get(ethernet::HEADER_LEN..).unwrap_or_default();
        let is_error = matches!(
            parse_frame(frame),
            Ok(ParsedFrame {
                l3: L3::Ipv4(Ipv4Info {
                    l4: L4::IcmpError { .. },
                    ..
                }),
                ..
            })
        );
        let scratch = &mut ctx.scratch;
        let built = from.filter(|_| !is_error).and_then(|from| {
            build::build_icmp_error(
                &mut scratch.buf[VNET_HDR_LEN..],
                t.router_mac,
                mac_at(frame, 6),
                from,
                icmp::DEST_UNREACHABLE,
                icmp::FRAG_NEEDED,
                PORT_MTU as u16,
                original,
            )
        });
        if let Some(n) = built {
            let sender = ip_of(frame, ethernet::HEADER_LEN + 12);
            build::set_ident(
                &mut scratch.buf[VNET_HDR_LEN..VNET_HDR_LEN + n],
                self.idents.next(sender),
            );
            scratch.buf[..VNET_HDR_LEN].fill(0);
            scratch.len = VNET_HDR_LEN + n;
            ctx.tx.push(Tx {
                port: port.id,
                source: TxSource::Scratch,
            });
        }
        Verdict::Drop(DropReason::FragNeeded)
    }

    /// Walks a new flow through the gateways. Pure: reads the tables, changes nothing (the
    /// round-robin cursor aside), unless `opening` says the flow is a new connection at that
    /// time: a service with client affinity then remembers (or refreshes) the client's backend.
    fn walk(
        &self,
        t: &Tables,
        in_port: PortId,
        key: &FlowKey,
        ttl: u8,
        pin: Pin,
        opening: Option<u64>,
    ) -> Walk {
        let Some(port) = t.port(in_port) else {
            return Walk::Drop(DropReason::UnknownPort);
        };
        let mut dst = key.dst;
        let mut dport = key.dst_port;
        let mut dnat = None;
        let mut lb = None;
        let mut snat_addr = None;
        let (mut gw, mut facing) = match port.kind {
            PortKind::Pod { segment, .. } => {
                let Some(seg) = t.segment(segment) else {
                    return Walk::Drop(DropReason::UnknownPort);
                };
                // The DLB sits at the source vNIC: a ClusterIP never leaves the pod's port.
                let frontend = FrontendKey {
                    protocol: key.protocol,
                    ip: dst,
                    port: dport,
                };
                if let Some(&svc) = t.cluster_ips.get(&frontend) {
                    match self.choose_backend(t, svc, key, pin, opening) {
                        Some((index, b)) => {
                            dnat = Some((b.ip, b.port));
                            lb = Some(LbBinding {
                                service: svc,
                                backend: index,
                            });
                            dst = b.ip;
                            dport = b.port;
                            // Hairpin: a pod that reaches itself through its service would see
                            // its own address as source, which its kernel drops; the gateway's
                            // address stands in (kube-proxy masquerades the same case).
                            if b.ip == key.src {
                                snat_addr = Some(seg.gateway_ip);
                            }
                        }
                        None => {
                            return Walk::NoBackend {
                                frontend: key.dst,
                                back: 0,
                            }
                        }
                    }
                } else if let Some((ip, port)) = pin.backend.filter(|_| pin.established) {
                    // An established TCP connection whose frontend is no ClusterIP (now): its
                    // service was deleted or its port changed, or it went to a VIP. As
                    // kube-proxy's conntrack entry, it keeps its endpoint and its source
                    // translation (a VIP's automap too) while that pod is there.
                    dnat = Some((ip, port));
                    dst = ip;
                    dport = port;
                    snat_addr = pin.snat;
                }
                (seg.t1, seg.gateway_ip)
            }
            PortKind::Uplink { gateway, addr, .. } => (gateway, addr),
        };
        let mut hops: u8 = 0;
        // A packet crosses at most T1, T0, T1; the bound only guards against a routing loop.
        while hops < 8 {
            let Some(g) = t.gateway(gw) else {
                return Walk::Drop(DropReason::NoRoute);
            };
            // The SLB on the T1 that owns the VIP. After the translation the same gateway goes
            // on to route towards the member (one TTL step for the T1, as NSX counts it).
            if g.kind == GatewayKind::T1 && lb.is_none() && t.vip_owner.get(&dst) == Some(&gw) {
                let frontend = FrontendKey {
                    protocol: key.protocol,
                    ip: dst,
                    port: dport,
                };
                if let Some(&svc) = t.vips.get(&frontend) {
                    // `loadBalancerSourceRanges`: NCP realizes them as firewall rules in front
                    // of the VIP, so a client outside them is dropped silently, as denied.
                    let client = snat_addr.unwrap_or(key.src);
                    if !t.services.get(svc).is_some_and(|s| s.admits(client)) {
                        return Walk::Drop(DropReason::DfwDeny);
                    }
                    let Some((index, b)) = self.choose_backend(t, svc, key, pin, opening) else {
                        return Walk::NoBackend {
                            frontend: dst,
                            back: hops,
                        };
                    };
                    dnat = Some((b.ip, b.port));
                    lb = Some(LbBinding {
                        service: svc,
                        backend: index,
                    });
                    dst = b.ip;
                    dport = b.port;
                    // NSX automap: the member sees the T1's own address on its segment. Without
                    // it (`externalTrafficPolicy: Local`) the client's address stays, unless the
                    // client is the member itself, which would drop a packet from itself: the
                    // hairpin of the ClusterIP case.
                    if t.services[svc].snat_automap || b.ip == key.src {
                        snat_addr = Some(self.member_facing_address(t, b.ip).unwrap_or(facing));
                    }
                } else if let Some((ip, port)) = pin.backend.filter(|_| pin.established) {
                    // The VIP stays but its port went (`port: 80` -> `8080`) under an
                    // established TCP connection: it keeps its member and its translation,
                    // as kube-proxy's conntrack entry keeps them.
                    dnat = Some((ip, port));
                    dst = ip;
                    dport = port;
                    snat_addr = pin.snat;
                }
            }
            if t.gateway_addrs.get(&dst) == Some(&gw) {
                return Walk::Local {
                    addr: dst,
                    owned: true,
                    back: hops,
                };
            }
            if ttl <= hops + 1 {
                return Walk::TtlExceeded {
                    from: facing,
                    back: hops,
                };
            }
            // The gateways crossed before this one, which answers from here on.
            let back = hops;
            hops += 1;
            let Some(route) = g.routes.lookup(dst) else {
                return Walk::Unreachable {
                    from: facing,
                    code: icmp::NET_UNREACHABLE,
                    back,
                };
            };
            match route.next_hop {
                NextHop::Local => {
                    return Walk::Local {
                        addr: dst,
                        owned: t.gateway_addrs.contains_key(&dst),
                        back,
                    };
                }
                NextHop::Segment(segment) => {
                    let target = t.hosts.get(&dst).and_then(|&p| t.port(p)).filter(
                        |p| matches!(p.kind, PortKind::Pod { segment: s, .. } if s == segment),
                    );
                    return match target {
                        Some(p) => Walk::Deliver(Path {
                            out_port: p.id,
                            routed: true,
                            hops,
                            snat_addr,
                            dnat,
                            lb,
                        }),
                        // A directed broadcast is not forwarded (RFC 2644, Linux's
                        // `bc_forwarding` 0) nor answered with an error (RFC 1812 section
                        // 4.3.2.7): dropped silently, as a Linux router drops it.
                        None if t
                            .segment(segment)
                            .is_some_and(|s| s.subnet.broadcast() == dst) =>
                        {
                            Walk::Drop(DropReason::NoRoute)
                        }
                        None => Walk::Unreachable {
                            from: facing,
                            code: icmp::HOST_UNREACHABLE,
                            back,
                        },
                    };
                }
                NextHop::Uplink(out_port) => {
                    return Walk::Deliver(Path {
                        out_port,
                        routed: true,
                        hops,
                        snat_addr,
                        dnat,
                        lb,
                    });
                }
                NextHop::Gateway(next) => {
                    let Some(next_g) = t.gateway(next) else {
                        return Walk::Drop(DropReason::NoRoute);
                    };
                    // Egress SNAT where a T1 hands a packet for outside the pod pool to T0.
                    if g.kind == GatewayKind::T1
                        && snat_addr.is_none()
                        && !g.no_snat.iter().any(|n| n.contains(dst))
                    {
                        snat_addr = g.egress_ip;
                    }
                    facing = match g.kind {
                        GatewayKind::T1 => g.transit_peer,
                        GatewayKind::T0 => next_g.transit_ip,
                    };
                    gw = next;
                }
            }
        }
        Walk::Drop(DropReason::NoRoute)
    }

    /// The T1's address on the segment of `member` (where automap SNAT sources from).
    fn member_facing_address(&self, t: &Tables, member: Ipv4Addr) -> Option<Ipv4Addr> {
        let port = t.port(*t.hosts.get(&member)?)?;
        match port.kind {
            PortKind::Pod { segment, .. } => t.segment(segment).map(|s| s.gateway_ip),
            PortKind::Uplink { addr, .. } => Some(addr),
        }
    }

    /// The backend of a new flow to service `svc`: the pinned one of an existing connection
    /// (if it still stands), the client's remembered one under affinity when `opening` a
    /// connection, else the service's algorithm's choice.
    fn choose_backend(
        &self,
        t: &Tables,
        svc: usize,
        key: &FlowKey,
        pin: Pin,
        opening: Option<u64>,
    ) -> Option<(usize, Backend)> {
        let service = t.services.get(svc)?;
        if let Some((ip, port)) = pin.backend {
            let b = Backend { ip, port };
            return match service.backend_index(b) {
                Some(i) => Some((i, b)),
                // Out of the service's endpoints (its pod went out of the selector, the
                // targetPort moved, the deployment scaled down): still the connection's. The
                // walk on finds whether the pod is still there; the index counts nothing.
                None if pin.established => Some((usize::MAX, b)),
                None => None,
            };
        }
        let first_choice = || {
            let hash = match service.algorithm_in_force() {
                LbAlgorithm::ConnectionHash => self.conntrack.hash_key(key),
                LbAlgorithm::SourceIpHash => self.conntrack.hash_key(&FlowKey {
                    protocol: 0,
                    src: key.src,
                    dst: key.src,
                    src_port: 0,
                    dst_port: 0,
                }),
                LbAlgorithm::RoundRobin | LbAlgorithm::LeastConnections => 0,
            };
            service.pick(hash)
        };
        let index = match (service.client_affinity, opening) {
            (Some(timeout_s), Some(now)) => {
                self.affinity
                    .choose(service, timeout_s, key.src, now, first_choice)?
            }
            _ => first_choice()?,
        };
        service.backends.get(index).map(|&b| (index, b))
    }

    /// The DFW's say on a new flow: the source zone's egress rules, then the destination zone's
    /// ingress rules; the first matching rule of each counts, when `count` is the time now (a
    /// connection judged again under new tables is no new connection: its rule's hits stay as
    /// they are). A flow the egress allows and the ingress drops counts on the egress allow
    /// once, as NSX's sender-side state holds it ([`DeniedFlows`]), and on the drop each time.
    /// Both judge the destination after a DLB or SLB translated it (a NetworkPolicy names the
    /// pods behind a ClusterIP, not the ClusterIP), `original_dst` as the client addressed it.
    /// `None`: no rule matched (allowed).
    fn dfw_verdict(
        &self,
        t: &Tables,
        port: &Port,
        key: &FlowKey,
        path: &Path,
        count: Option<u64>,
    ) -> Option<RuleAction> {
        let (dst, dst_port) = path.dnat.unwrap_or((key.dst, key.dst_port));
        let src = path.snat_addr.unwrap_or(key.src);
        // A pod cannot block access to itself (Kubernetes' NetworkPolicy): a connection that a
        // ClusterIP or VIP hairpins back to the port it came from is not judged.
        if path.out_port == port.id && matches!(port.kind, PortKind::Pod { .. }) {
            return None;
        }
        let mut verdict = None;
        let mut egress_allow = None;
        if let PortKind::Pod { zone, .. } = port.kind {
            let q = DfwQuery {
                src: key.src,
                dst,
                original_dst: key.dst,
                protocol: key.protocol,
                dst_port,
            };
            if let Some(rule) = t.dfw.evaluate(zone, Direction::Out, &q) {
                if rule.action != RuleAction::Allow {
                    if count.is_some() {
                        t.rule_counters.hit(rule.counter);
                    }
                    return Some(rule.action);
                }
                verdict = Some(RuleAction::Allow);
                egress_allow = Some(rule.counter);
            }
        }
        if let Some(PortKind::Pod { zone, .. }) = t.port(path.out_port).map(|p| &p.kind) {
            let q = DfwQuery {
                src,
                dst,
                original_dst: key.dst,
                protocol: key.protocol,
                dst_port,
            };
            if let Some(rule) = t.dfw.evaluate(*zone, Direction::In, &q) {
                if let Some(now) = count {
                    t.rule_counters.hit(rule.counter);
                    if let Some(allow) = egress_allow {
                        let held = rule.action != RuleAction::Allow && {
                            let until =
                                now.saturating_add(self.conntrack.first_packet_timeout(key));
                            self.denied.seen(self.conntrack.hash_key(key), now, until)
                        };
                        if !held {
                            t.rule_counters.hit(allow);
                        }
                    }
                }
                return Some(rule.action);
            }
        }
        if let (Some(_), Some(allow)) = (count, egress_allow) {
            t.rule_counters.hit(allow);
        }
        verdict
    }

    /// Creates the connection entry for a new flow, allocating the SNAT port, and returns the
    /// action for the first packet.
    fn create(
        &self,
        t: &Tables,
        now: u64,
        in_port: PortId,
        key: &FlowKey,
        tcp_flags: u8,
        path: &Path,
    ) -> Result<FlowAction, DropReason> {
        let (dst, dst_port) = path.dnat.unwrap_or((key.dst, key.dst_port));
        let icmp = key.protocol == PROTO_ICMP;
        // With SNAT we choose the port and try others; without, the client chose its tuple, and
        // a SYN reusing the tuple of a connection in TIME_WAIT or CLOSE takes its place (as
        // Linux does), so one more try after clearing it. A protocol with no ports we rewrite
        // (GRE, ESP, ...) has one tuple per address pair: taken, it cannot be made unique (a
        // "port" would not be on the wire), and the flow is refused as Linux's NAT refuses it.
        let has_ports = matches!(key.protocol, PROTO_TCP | PROTO_UDP | PROTO_ICMP);
        let attempts: u32 = match path.snat_addr {
            Some(_) if has_ports => 64,
            Some(_) => 1,
            None => 2,
        };
        // The port sequence's seed, hashed only when the first try (the client's own port) fails.
        let mut seed = None;
        for attempt in 0..attempts {
            let snat = path.snat_addr.map(|addr| {
                let port = match attempt {
                    0 => key.src_port,
                    _ => nat_port(
                        key,
                        *seed.get_or_insert_with(|| self.conntrack.hash_key(key)),
                        attempt,
                    ),
                };
                (addr, port)
            });
            let (src, src_port) = snat.unwrap_or((key.src, key.src_port));
            let reply = if icmp {
                FlowKey {
                    protocol: PROTO_ICMP,
                    src: dst,
                    dst: src,
                    src_port,
                    dst_port: 0,
                }
            } else {
                FlowKey {
                    protocol: key.protocol,
                    src: dst,
                    dst: src,
                    src_port: dst_port,
                    dst_port: src_port,
                }
            };
            let original_action = FlowAction {
                out_port: path.out_port,
                routed: path.routed,
                ttl_dec: path.hops,
                snat,
                dnat: path.dnat,
            };
            let reply_action = FlowAction {
                out_port: in_port,
                routed: path.routed,
                ttl_dec: path.hops,
                snat: path.dnat.map(|_| (key.dst, key.dst_port)),
                dnat: snat.map(|_| (key.src, key.src_port)),
            };
            let mut conn = Conn::new(*key, reply, in_port, [original_action, reply_action]);
            conn.lb = path.lb;
            match self.conntrack.insert(conn, t.generation, tcp_flags, now) {
                Ok(Inserted {
                    created,
                    tracked: Tracked::Pass { action, .. },
                    ..
                }) => {
                    // Least-connections counts each connection once, when it is created.
                    if let Some(lb) = conn.lb.filter(|_| created) {
                        if let Some(active) = t
                            .services
                            .get(lb.service)
                            .and_then(|s| s.active.get(lb.backend))
                        {
                            active.fetch_add(1, Relaxed);
                        }
                    }
                    return Ok(action);
                }
                Ok(Inserted {
                    tracked: Tracked::Invalid,
                    ..
                }) => return Err(DropReason::ConntrackInvalid),
                Err(InsertError::ReplyTaken) if path.snat_addr.is_some() => continue,
                Err(InsertError::ReplyTaken) => {
                    let syn = tcp_flags & crate::conntrack::TCP_SYN != 0;
                    if attempt == 0 && syn && self.conntrack.evict_closing(&reply) {
                        continue;
                    }
                    return Err(DropReason::ConntrackInvalid);
                }
                Err(InsertError::Full) => return Err(DropReason::ConntrackFull),
            }
        }
        Err(if path.snat_addr.is_some() {
            DropReason::NatExhausted
        } else {
            DropReason::ConntrackInvalid
        })
    }

    /// Re-checks a connection against tables of a newer generation: the route may have moved,
    /// the DFW may now deny it, its backend's pod may be gone, its namespace's egress IP may
    /// have changed (the old address is no longer routed back, and may go to another
    /// namespace). A NAT binding whose address still stands is kept, and so is the backend of
    /// an established TCP connection that its service no longer lists (or that lost its
    /// service), while its pod is there, as kube-proxy's conntrack keeps it; a UDP flow, or a
    /// SYN that `reopened` a closed connection, goes by the service's current endpoints.
    /// `None`: the connection must end.
    fn revalidate(&self, t: &Tables, conn: &ConnInfo, reopened: bool) -> Option<[FlowAction; 2]> {
        let [orig, reply] = conn.actions;
        let pin = Pin {
            backend: conn.lb.and(orig.dnat),
            // A SYN that reopens a closed connection is a new one, balanced afresh.
            established: conn.original.protocol == PROTO_TCP && !reopened,
            snat: orig.snat.map(|(addr, _)| addr),
        };
        let Walk::Deliver(path) = self.walk(t, conn.in_port, &conn.original, u8::MAX, pin, None)
        else {
            return None;
        };
        if path.dnat != orig.dnat || path.snat_addr != orig.snat.map(|(addr, _)| addr) {
            return None;
        }
        let port = t.port(conn.in_port)?;
        if let Some(action) = self.dfw_verdict(t, port, &conn.original, &path, None) {
            if action != RuleAction::Allow {
                return None;
            }
        }
        // Switched or routed, and so the TTL steps, stay as the first packet found them (the
        // walk routes everything); the out port follows the tables.
        let actions = [
            FlowAction {
                out_port: path.out_port,
                ..orig
            },
            FlowAction {
                out_port: conn.in_port,
                ..reply
            },
        ];
        self.conntrack.refresh(conn.id, actions, t.generation);
        Some(actions)
    }

    /// Answers what the walk could not deliver: echo replies, ICMP errors, TCP resets.
    #[allow(clippy::too_many_arguments)]
    fn answer_walk(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        now: u64,
        port: &Port,
        parsed: &ParsedFrame,
        ip: &Ipv4Info,
        pkt: &mut PacketBuf,
        walk: Walk,
    ) -> Verdict {
        ctx.icmp_errors.now = now;
        match walk {
            Walk::Deliver(_) => Verdict::Drop(DropReason::NoRoute),
            Walk::Drop(reason) => Verdict::Drop(reason),
            // Past the first gateway, a packet too big for the link after it stopped there: a
            // Linux router checks the TTL, then the MTU, hop by hop, so tracepath learns the
            // path MTU at the hop where it shrinks.
            // So does one for a gateway past the first (a ping to the T0 or another T1, an
            // address of another segment): the first gateway forwards it over a 1500 link.
            Walk::TtlExceeded { back, .. }
            | Walk::Local { back, .. }
            | Walk::Unreachable { back, .. }
            | Walk::NoBackend { back, .. }
                if back > 0 && too_big_to_route(pkt) =>
            {
                self.frag_needed(t, ctx, port, pkt)
            }
            Walk::TtlExceeded { from, back } => {
                let error = (icmp::TIME_EXCEEDED, 0);
                self.icmp_error(t, ctx, port, parsed, ip, pkt, from, error, back);
                Verdict::Drop(DropReason::TtlExceeded)
            }
            Walk::Unreachable { from, code, back } => {
                let error = (icmp::DEST_UNREACHABLE, code);
                let sent = ctx.tx.len();
                self.icmp_error(t, ctx, port, parsed, ip, pkt, from, error, back);
                // No pod has the address: the error waits as long as ARP would have.
                if code == icmp::HOST_UNREACHABLE && ctx.tx.len() > sent {
                    ctx.tx.truncate(sent);
                    if ctx.held.len() < HELD_ERRORS_MAX {
                        let wire = ctx.scratch.wire();
                        ctx.held.push_back(HeldError {
                            due: now.saturating_add(ARP_FAIL_MS),
                            port: port.id,
                            frame: PacketBuf {
                                buf: wire.into(),
                                len: wire.len(),
                            },
                        });
                    }
                }
                Verdict::Drop(DropReason::NoRoute)
            }
            Walk::NoBackend { frontend, back } => {
                // Refuse at once, as kube-proxy's REJECT does: RST for TCP, port unreachable
                // otherwise, from the frontend's address.
                self.refuse(t, ctx, port, parsed, ip, pkt, frontend, back);
                Verdict::Drop(DropReason::NoBackend)
            }
            // An address of the service pool that no ClusterIP has: nothing there to refuse
            // or answer, so nothing is sent (kube-proxy's "Drop traffic to unallocated
            // ClusterIPs"); a ClusterIP's port it lacks is refused below, as kube-proxy rejects.
            Walk::Local {
                addr, owned: false, ..
            } if !t.cluster_ip_addrs.contains(&addr) => Verdict::Drop(DropReason::NoService),
            // A fragmented datagram to the router: put together, then answered (`reassembly`):
            // a ping to a gateway's address, or one to a port nothing listens on.
            Walk::Local { owned, back, .. }
                if ip.is_fragment
                    && (owned
                        || !matches!(
                            ip.l4,
                            L4::IcmpEcho { .. } | L4::IcmpOther { .. } | L4::IcmpError { .. }
                        )) =>
            {
                let frame = pkt.frame();
                let (Some(id), Some(header), Some(payload)) = (
                    datagram_id(port.id, ip, frame),
                    frame.get(ip.offset..ip.l4_offset()),
                    frame.get(ip.l4_offset()..ip.end()),
                ) else {
                    return Verdict::Drop(DropReason::Malformed);
                };
                match self.reassembly.start(id, header, payload, back, now) {
                    Added::Refused => Verdict::Drop(DropReason::Fragment),
                    _ => Verdict::Consumed,
                }
            }
            // Other ICMP in fragments to a pool address is taken, as it is whole.
            Walk::Local { .. } if ip.is_fragment => Verdict::Consumed,
            Walk::Local { addr, owned, back } => {
                if owned {
                    if let L4::IcmpEcho {
                        icmp_type: icmp::ECHO_REQUEST,
                        ..
                    } = ip.l4
                    {
                        let frame = pkt.frame_mut();
                        let answer = |frame: &mut [u8]| {
                            build::make_echo_reply_in_place(frame, ip, t.router_mac)
                        };
                        let reply = if back > 0 && ip.header_len > ipv4::HEADER_LEN {
                            record_route_answered(t, port, ip, back, frame, answer)
                        } else {
                            answer(frame)
                        };
                        if let Some(n) = reply {
                            build::set_ident(&mut frame[..n], self.idents.next(ip.src));
                            build::age_answer(&mut frame[..n], back);
                            // An echo reply leaves with a plain header: no offloads pending.
                            pkt.buf[..VNET_HDR_LEN].fill(0);
                            pkt.len = VNET_HDR_LEN + n;
                            rewrite::set_macs(pkt.frame_mut(), t.router_mac, parsed.src_mac);
                            // A reply bigger than the port's MTU (to a pod that raised its
                            // own) leaves in fragments, as Linux cuts what it answers.
                            if n > ethernet::HEADER_LEN + PORT_MTU {
                                return if queue_fragments(ctx, port.id, pkt.frame()) {
                                    Verdict::Reply
                                } else {
                                    Verdict::Drop(DropReason::Malformed)
                                };
                            }
                            ctx.tx.push(Tx {
                                port: port.id,
                                source: TxSource::Packet,
                            });
                            return Verdict::Reply;
                        }
                        return Verdict::Drop(DropReason::Malformed);
                    }
                }
                if matches!(
                    ip.l4,
                    L4::IcmpEcho { .. } | L4::IcmpOther { .. } | L4::IcmpError { .. }
                ) {
                    return Verdict::Consumed;
                }
                // A port nothing listens on: a reset or port unreachable, when one is due.
                self.refuse(t, ctx, port, parsed, ip, pkt, addr, back);
                if ctx.tx.is_empty() {
                    Verdict::Consumed
                } else {
                    Verdict::Reply
                }
            }
        }
    }

    /// TCP RST (from `from`) or ICMP port unreachable, to the sender of the packet, from a
    /// gateway `back` gateways in.
    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        port: &Port,
        parsed: &ParsedFrame,
        ip: &Ipv4Info,
        pkt: &PacketBuf,
        from: Ipv4Addr,
        back: u8,
    ) {
        if let L4::Tcp { flags, .. } = ip.l4 {
            if flags & crate::conntrack::TCP_RST != 0 {
                return;
            }
            let scratch = &mut ctx.scratch;
            scratch.buf[..VNET_HDR_LEN].fill(0);
            let built = build::build_tcp_rst(
                &mut scratch.buf[VNET_HDR_LEN..],
                t.router_mac,
                parsed.src_mac,
                pkt.frame(),
                ip,
            );
            if let Some(n) = built {
                build::age_answer(&mut scratch.buf[VNET_HDR_LEN..VNET_HDR_LEN + n], back);
                scratch.len = VNET_HDR_LEN + n;
                ctx.tx.push(Tx {
                    port: port.id,
                    source: TxSource::Scratch,
                });
            }
        } else {
            let error = (icmp::DEST_UNREACHABLE, icmp::PORT_UNREACHABLE);
            self.icmp_error(t, ctx, port, parsed, ip, pkt, from, error, back);
        }
    }

    /// Builds an ICMP error (`(type, code)`) about the received packet, from `from` at a gateway
    /// `back` gateways in, back out of the ingress port. Never about an ICMP error (RFC 1122
    /// section 3.2.2).
    #[allow(clippy::too_many_arguments)]
    fn icmp_error(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        port: &Port,
        parsed: &ParsedFrame,
        ip: &Ipv4Info,
        pkt: &PacketBuf,
        from: Ipv4Addr,
        (icmp_type, code): (u8, u8),
        back: u8,
    ) {
        let error = (icmp_type, code, 0);
        self.icmp_error_with(t, ctx, port, parsed, ip, pkt, from, error, back);
    }

    /// [`Pipeline::icmp_error`] with the error's `info` (see [`build::build_icmp_error`]).
    #[allow(clippy::too_many_arguments)]
    fn icmp_error_with(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        port: &Port,
        parsed: &ParsedFrame,
        ip: &Ipv4Info,
        pkt: &PacketBuf,
        from: Ipv4Addr,
        (icmp_type, code, info): (u8, u8, u16),
        back: u8,
    ) {
        if matches!(ip.l4, L4::IcmpError { .. }) || !ctx.icmp_errors.take() {
            return;
        }
        let frame = pkt.frame();
        let end = (ip.offset + ip.total_len).min(frame.len());
        let Some(original) = frame.get(ip.offset..end) else {
            return;
        };
        let scratch = &mut ctx.scratch;
        scratch.buf[..VNET_HDR_LEN].fill(0);
        let out = &mut scratch.buf[VNET_HDR_LEN..];
        if let Some(n) = build::build_icmp_error(
            out,
            t.router_mac,
            parsed.src_mac,
            from,
            icmp_type,
            code,
            info,
            original,
        ) {
            let to = ip_of(out, ethernet::HEADER_LEN + 16);
            build::set_ident(&mut out[..n], self.idents.next(to));
            build::age_answer(&mut out[..n], back);
            scratch.len = VNET_HDR_LEN + n;
            ctx.tx.push(Tx {
                port: port.id,
                source: TxSource::Scratch,
            });
        }
    }

    /// An ICMP error arrived. If it concerns a tracked connection it follows that connection
    /// (outer and inner headers translated back); otherwise it is routed like any new packet.
    #[allow(clippy::too_many_arguments)]
    fn related_icmp_error(
        &self,
        t: &Tables,
        ctx: &mut WorkerContext,
        now: u64,
        port: &Port,
        ip: &Ipv4Info,
        inner: &InnerPacket,
        pkt: &mut PacketBuf,
    ) -> Verdict {
        let inner_key = if inner.protocol == PROTO_ICMP {
            FlowKey {
                protocol: PROTO_ICMP,
                src: inner.src,
                dst: inner.dst,
                src_port: inner.src_port,
                dst_port: 0,
            }
        } else {
            FlowKey {
                protocol: inner.protocol,
                src: inner.src,
                dst: inner.dst,
                src_port: inner.src_port,
                dst_port: inner.dst_port,
            }
        };
        // The quoted packet travelled the other way: its reverse is a key of the connection. And
        // it left by the port the error comes in by: an error from anywhere else (a pod quoting
        // another namespace's connection, past the DFW that keeps it from that namespace) is
        // about nothing of its sender's and is judged as any packet.
        let related = self
            .conntrack
            .get(&inner_key.reversed())
            .filter(|(conn, dir)| {
                let quoted = match dir {
                    Dir::Original => Dir::Reply,
                    Dir::Reply => Dir::Original,
                };
                conn.actions[quoted as usize].out_port == port.id
            });
        if let Some((conn, dir)) = related {
            let action = conn.actions[dir as usize];
            let Some(out) = t.port(action.out_port) else {
                return Verdict::Drop(DropReason::NoRoute);
            };
            if action.routed && ip.ttl <= action.ttl_dec {
                // Its TTL runs out at a gateway on the way: dropped there, and not answered (no
                // error about an error, RFC 1812 4.3.2.7).
                return Verdict::Drop(DropReason::TtlExceeded);
            }
            let frame = pkt.frame_mut();
            if action.routed && action.ttl_dec > 0 {
                rewrite::decrement_ttl(frame, ip, action.ttl_dec);
            }
            // The error's source is the remote end itself when it reports on its own behalf.
            if let Some((addr, _)) = action.snat {
                if ip.src == inner.dst {
                    rewrite::rewrite_src(frame, ip, addr, 0, false);
                }
            }
            if let Some((addr, _)) = action.dnat {
                rewrite::rewrite_dst(frame, ip, addr, 0, false);
            }
            rewrite::rewrite_icmp_error_inner(frame, ip, inner, action.dnat, action.snat);
            if action.routed {
                rewrite::set_macs(frame, t.router_mac, out.peer_mac);
            }
            ctx.tx.push(Tx {
                port: action.out_port,
                source: TxSource::Packet,
            });
            return Verdict::Forward;
        }
        let key = FlowKey {
            protocol: PROTO_ICMP,
            src: ip.src,
            dst: ip.dst,
            src_port: 0,
            dst_port: 0,
        };
        let Walk::Deliver(path) = self.walk(t, port.id, &key, ip.ttl, Pin::default(), None) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        if self
            .dfw_verdict(t, port, &key, &path, Some(now))
            .is_some_and(|a| a != RuleAction::Allow)
        {
            return Verdict::Drop(DropReason::DfwDeny);
        }
        let action = FlowAction {
            out_port: path.out_port,
            routed: path.routed,
            ttl_dec: path.hops,
            snat: None,
            dnat: None,
        };
        if ip.ttl <= action.ttl_dec {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        self.transmit(t, ctx, port, ip, &action, pkt)
    }

    /// Least-connections bookkeeping: a connection of a load-balanced service that closes (FIN,
    /// RST) or reopens moves its backend's count.
    fn count_open(&self, t: &Tables, key: &FlowKey, change: i8) {
        let Some((conn, _)) = self.conntrack.get(key) else {
            return;
        };
        if let Some(active) = lb_count(t, &conn) {
            if change > 0 {
                active.fetch_add(1, Relaxed);
            } else {
                let _ = active.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
            }
        }
    }

    /// Expires idle state (connections, clients' remembered backends) at `now`: the whole
    /// tables at once.
    pub fn expire(&self, now: u64) {
        let t = self.tables.load();
        self.conntrack
            .expire_with(now, |conn| self.give_back(&t, conn));
        self.fragments.expire(now);
        self.reassembly.expire(now);
        self.affinity.expire(now, |f| t.affinity_timeout(f));
    }

    /// Expires a tenth of the connection table at `now`: what a worker calls ten times a
    /// second, so that no call holds it up for a whole sweep.
    pub fn expire_part(&self, now: u64) {
        let t = self.tables.load();
        self.conntrack
            .expire_part(now, 10, |conn| self.give_back(&t, conn));
        self.fragments.expire(now);
        self.reassembly.expire(now);
        self.affinity.expire_part(now, |f| t.affinity_timeout(f));
    }

    /// Least-connections counts live connections per backend: a connection that ends gives
    /// its count back.
    fn give_back(&self, t: &Tables, conn: &ConnInfo) {
        // A TCP connection that closed gave its count back when it closed.
        if conn.original.protocol == PROTO_TCP && !conn.tcp.is_open() {
            return;
        }
        if let Some(active) = lb_count(t, conn) {
            let _ = active.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        }
    }
}

/// The least-connections count a load-balanced connection holds in `t`: found by the frontend
/// it was opened to and the backend it was translated to, not by the indices of the tables it
/// was decided under (a change may have reordered the service's backends, and the tables carry
/// the counts over: [`Tables::carry_lb_counts`]).
fn lb_count<'t>(t: &'t Tables, conn: &ConnInfo) -> Option<&'t AtomicU64> {
    conn.lb?;
    let (ip, port) = conn.actions[0].dnat?;
    let frontend = FrontendKey {
        protocol: conn.original.protocol,
        ip: conn.original.dst,
        port: conn.original.dst_port,
    };
    t.lb_count(&frontend, Backend { ip, port })
}

enum FlowOf {
    Key(FlowKey, u8),
    IcmpError(InnerPacket),
}

/// Fills the record-route option of a routed packet (`ping -R`) as Linux routers in a row
/// would: each gateway it crosses, in order, writes the address it sends it from (a T1 its
/// transit address towards T0 or its segment's gateway address, T0 its uplink address or its
/// transit address towards the T1). The gateways are found by the routes to the packet's
/// destination as translated (a reply to an egress IP routes to its pod), at most the
/// action's TTL steps of them. A packet without the option is left as it is.
#[cold]
fn record_route(t: &Tables, in_port: &Port, action: &FlowAction, frame: &mut [u8]) {
    let Some(header) = frame.get_mut(ethernet::HEADER_LEN..) else {
        return;
    };
    let Some(dst) = header
        .get(16..20)
        .map(|d| Ipv4Addr::new(d[0], d[1], d[2], d[3]))
    else {
        return;
    };
    let dst = action.dnat.map_or(dst, |(ip, _)| ip);
    let crossed = Crossed::towards(t, in_port, dst, action.ttl_dec);
    rewrite::record_route(header, crossed.addrs());
    rewrite::timestamp(header, &crossed.into[..crossed.n], ms_since_midnight_utc());
}

/// What an internet timestamp holds (RFC 791): milliseconds since midnight UTC, as Linux's
/// `inet_current_timestamp` gives them.
fn ms_since_midnight_utc() -> u32 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u32::try_from(since_epoch.as_millis() % 86_400_000).unwrap_or(0)
}

/// The gateways a packet from `in_port` to `dst` crosses, in order (at most 8), each with
/// the address it sends the packet on from (what each writes in a record route) and the
/// address it receives it on (what each writes before its time in a timestamp).
struct Crossed {
    gateways: [GatewayId; 8],
    from: [Ipv4Addr; 8],
    into: [Ipv4Addr; 8],
    n: usize,
}

impl Crossed {
    /// At most `max` of them; the walk stops before a gateway that takes the packet itself.
    fn towards(t: &Tables, in_port: &Port, dst: Ipv4Addr, max: u8) -> Crossed {
        let mut crossed = Crossed {
            gateways: [0; 8],
            from: [Ipv4Addr::UNSPECIFIED; 8],
            into: [Ipv4Addr::UNSPECIFIED; 8],
            n: 0,
        };
        let (mut gw, mut into) = match in_port.kind {
            PortKind::Pod { segment, .. } => match t.segment(segment) {
                Some(seg) => (seg.t1, seg.gateway_ip),
                None => return crossed,
            },
            PortKind::Uplink { gateway, addr, .. } => (gateway, addr),
        };
        while crossed.n < usize::from(max).min(crossed.from.len()) {
            let Some((from, next)) = sends_from(t, gw, dst) else {
                break;
            };
            crossed.gateways[crossed.n] = gw;
            crossed.from[crossed.n] = from;
            crossed.into[crossed.n] = into;
            crossed.n += 1;
            let Some(next) = next else { break };
            // The next gateway receives it on its end of the transit link between the two.
            into = match (t.gateway(gw), t.gateway(next)) {
                (Some(g), Some(n)) if n.kind == GatewayKind::T0 => g.transit_peer,
                (_, Some(n)) => n.transit_ip,
                _ => break,
            };
            gw = next;
        }
        crossed
    }

    fn addrs(&self) -> &[Ipv4Addr] {
        &self.from[..self.n]
    }
}

/// The address gateway `gw` sends a packet for `dst` from, and the gateway it sends it to
/// (none when it leaves by a segment or the uplink). `None` for an address it takes itself,
/// or one it has no route for.
fn sends_from(t: &Tables, gw: GatewayId, dst: Ipv4Addr) -> Option<(Ipv4Addr, Option<GatewayId>)> {
    let g = t.gateway(gw)?;
    let route = g.routes.lookup(dst)?;
    match route.next_hop {
        NextHop::Local => None,
        NextHop::Segment(segment) => t.segment(segment).map(|seg| (seg.gateway_ip, None)),
        NextHop::Uplink(out) => match t.port(out).map(|p| &p.kind) {
            Some(PortKind::Uplink { addr, .. }) => Some((*addr, None)),
            _ => None,
        },
        NextHop::Gateway(next) => match (g.kind, t.gateway(next)) {
            (GatewayKind::T1, Some(_)) => Some((g.transit_ip, Some(next))),
            (GatewayKind::T0, Some(next_g)) => Some((next_g.transit_peer, Some(next))),
            (_, None) => None,
        },
    }
}

/// The record route of an echo request a gateway `back` gateways in answers, and of its
/// reply, as Linux routers in a row fill them: the gateways crossed on the way in write the
/// addresses they send it on from into the request (before `answer` turns it into the
/// reply), the same gateways on the way back, in reverse, theirs towards the sender into the
/// reply. A frame without the option is left as it is.
#[cold]
fn record_route_answered(
    t: &Tables,
    in_port: &Port,
    ip: &Ipv4Info,
    back: u8,
    frame: &mut [u8],
    answer: impl FnOnce(&mut [u8]) -> Option<usize>,
) -> Option<usize> {
    let crossed = Crossed::towards(t, in_port, ip.dst, back);
    if let Some(header) = frame.get_mut(ip.offset..) {
        rewrite::record_route(header, crossed.addrs());
    }
    let n = answer(frame)?;
    let mut back_addrs = [Ipv4Addr::UNSPECIFIED; 8];
    let mut k = 0;
    for &gw in crossed.gateways[..crossed.n].iter().rev() {
        let Some((from, _)) = sends_from(t, gw, ip.src) else {
            break;
        };
        back_addrs[k] = from;
        k += 1;
    }
    if let Some(header) = frame.get_mut(ip.offset..n) {
        rewrite::record_route(header, &back_addrs[..k]);
    }
    Some(n)
}

/// Queues `frame`, an IPv4 packet bigger than [`PORT_MTU`], cut into fragments of at most
/// [`PORT_MTU`] (`build::fragment`) to leave by `out_port`, after any fragments this frame's
/// processing already queued (held ones released). False, with none of it queued, for a
/// packet that cannot be cut (a header that lies).
fn queue_fragments(ctx: &mut WorkerContext, out_port: PortId, frame: &[u8]) -> bool {
    let first = ctx
        .tx
        .iter()
        .filter_map(|tx| match tx.source {
            TxSource::Fragment(i) => Some(usize::from(i) + 1),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    for (index, next) in (first..).enumerate() {
        let Ok(slot) = u8::try_from(next) else { break };
        while ctx.fragments_out.len() <= next {
            ctx.fragments_out.push(PacketBuf {
                buf: vec![0u8; VNET_HDR_LEN + PORT_MTU + ethernet::HEADER_LEN].into_boxed_slice(),
                len: 0,
            });
        }
        let buf = &mut ctx.fragments_out[next];
        buf.buf[..VNET_HDR_LEN].fill(0);
        let built = build::fragment(&mut buf.buf[VNET_HDR_LEN..], frame, PORT_MTU, index);
        let Some((n, last)) = built else { break };
        buf.len = VNET_HDR_LEN + n;
        ctx.tx.push(Tx {
            port: out_port,
            source: TxSource::Fragment(slot),
        });
        if last {
            return true;
        }
    }
    ctx.tx
        .retain(|tx| !matches!(tx.source, TxSource::Fragment(i) if usize::from(i) >= first));
    false
}

/// The IPv4 address at `at` in `frame` (0.0.0.0 past its end).
fn ip_of(frame: &[u8], at: usize) -> Ipv4Addr {
    frame
        .get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(Ipv4Addr::UNSPECIFIED, Ipv4Addr::from)
}

/// The datagram a fragment belongs to, as it arrived on `in_port` (RFC 791 section 3.2).
fn datagram_id(in_port: PortId, ip: &Ipv4Info, frame: &[u8]) -> Option<DatagramId> {
    let at = ip.offset + ipv4::field::IDENT.start;
    let ident = frame.get(at..at + 2)?;
    Some(DatagramId {
        in_port,
        src: ip.src,
        dst: ip.dst,
        protocol: ip.protocol,
        ident: u16::from_be_bytes([ident[0], ident[1]]),
    })
}

/// Where a fragment's payload goes in its datagram, in bytes (0 for a frame too short).
fn fragment_offset(ip: &Ipv4Info, frame: &[u8]) -> usize {
    frame
        .get(ip.offset..ip.end())
        .and_then(|packet| ipv4::Ipv4Packet::new_checked(packet).ok())
        .map_or(0, |packet| packet.frag_offset())
}

/// Whether the don't-fragment flag of the IPv4 packet in `frame` is set (`None`: too short).
fn dont_fragment(frame: &[u8]) -> Option<bool> {
    let high = *frame.get(ethernet::HEADER_LEN + ipv4::field::FLG_OFF.start)?;
    Some(u16::from(high) << 8 & ipv4::FLAG_DF != 0)
}

/// Whether a routed packet is bigger than the gateways' MTU and says don't-fragment (a GSO
/// frame is judged by its segments, each within its sender's MTU: never).
fn too_big_to_route(pkt: &PacketBuf) -> bool {
    pkt.len > VNET_HDR_LEN + ethernet::HEADER_LEN + PORT_MTU
        && pkt
            .buf
            .get(vnet::field::GSO_TYPE)
            .is_some_and(|&g| g & !vnet::GSO_ECN == vnet::GSO_NONE)
        && dont_fragment(pkt.frame()) == Some(true)
}

/// Whether the more-fragments flag of the packet is set (a frame too short says no).
fn more_fragments(ip: &Ipv4Info, frame: &[u8]) -> bool {
    frame
        .get(ip.offset + ipv4::field::FLG_OFF.start)
        .is_some_and(|&high| u16::from(high) << 8 & ipv4::FLAG_MF != 0)
}

/// The connection key of a packet and its TCP flags (0 for other protocols).
fn flow_key(ip: &Ipv4Info) -> FlowOf {
    let key = |src_port, dst_port| FlowKey {
        protocol: ip.protocol,
        src: ip.src,
        dst: ip.dst,
        src_port,
        dst_port,
    };
    match ip.l4 {
        L4::Tcp {
            src_port,
            dst_port,
            flags,
            ..
        } => FlowOf::Key(key(src_port, dst_port), flags),
        L4::Udp { src_port, dst_port } => FlowOf::Key(key(src_port, dst_port), 0),
        L4::IcmpEcho { ident, .. } => FlowOf::Key(key(ident, 0), 0),
        L4::IcmpError { inner, .. } if inner.names_a_connection() => FlowOf::IcmpError(inner),
        L4::IcmpError { .. } | L4::IcmpOther { .. } | L4::Other => FlowOf::Key(key(0, 0), 0),
    }
}

/// The NAT port to try at `attempt`: the client's own port first (most connections keep their
/// port), then a hash-driven sequence over the ephemeral range (ICMP: every identifier).
fn nat_port(key: &FlowKey, seed: u64, attempt: u32) -> u16 {
    if attempt == 0 {
        return key.src_port;
    }
    let (lo, span) = if key.protocol == PROTO_ICMP {
        (0u64, 65536u64)
    } else {
        (1024u64, 65536 - 1024)
    };
    let step = seed.rotate_left(17) | 1;
    (lo + (seed.wrapping_add(u64::from(attempt).wrapping_mul(step)) % span)) as u16
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;

/// The fast path against the general one: the same frames through two pipelines on the same
/// tables, one with the fast path and one without, must give the same verdicts, the same
/// transmit lists and the same bytes out.
#[cfg(test)]
mod fast_path_tests {
    use super::*;
    use crate::testbed::{self, *};

    fn udp(src_mac: MacAddr, src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, ports: (u16, u16)) -> Vec<u8> {
        let mut b = vec![0u8; 128];
        let n = build::build_udp(
            &mut b,
            src_mac,
            ROUTER_MAC,
            src,
            dst,
            ttl,
            ports.0,
            ports.1,
            b"fast path",
        )
        .unwrap();
        b.truncate(n);
        b
    }

    fn tcp(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, ports: (u16, u16), flags: u8) -> Vec<u8> {
        let mut b = vec![0u8; 128];
        let n = build::build_tcp(
            &mut b,
            pod_mac(src),
            ROUTER_MAC,
            src,
            dst,
            ttl,
            ports.0,
            ports.1,
            7,
            0,
            flags,
            b"",
        )
        .unwrap();
        b.truncate(n);
        b
    }

    /// Frames that walk every branch of the fast path, and the verdicts they get.
    fn scenario() -> (Vec<(PortId, Vec<u8>)>, Vec<Verdict>) {
        let a1 = pod_mac(A1_IP);
        let mut padded = udp(a1, A1_IP, OUTSIDE_HOST, 64, (4000, 53));
        padded.resize(padded.len() + 11, 0xee);
        let mut bad_csum = udp(a1, A1_IP, OUTSIDE_HOST, 64, (4001, 53));
        bad_csum[24] ^= 1;
        let mut switched = udp(a1, A1_IP, A2_IP, 64, (4002, 53));
        switched[..6].copy_from_slice(&pod_mac(A2_IP).0);
        let frames: Vec<(PortId, Vec<u8>)> = vec![
            // Egress SNAT: first packet, then established, then the reply from outside.
            (A1, udp(a1, A1_IP, OUTSIDE_HOST, 64, (4000, 53))),
            (A1, udp(a1, A1_IP, OUTSIDE_HOST, 64, (4000, 53))),
            (
                UPLINK,
                udp(UPLINK_PEER_MAC, OUTSIDE_HOST, EGRESS_A, 60, (53, 4000)),
            ),
            (A1, padded),
            // TTL running out on a new flow and on an established one.
            (A1, udp(a1, A1_IP, OUTSIDE_HOST, 1, (4000, 53))),
            (A1, udp(a1, A1_IP, OUTSIDE_HOST, 2, (4000, 53))),
            (A1, udp(a1, A1_IP, OUTSIDE_HOST, 1, (4003, 53))),
            // SpoofGuard, a bad header checksum, a switched frame.
            (A1, udp(a1, A2_IP, OUTSIDE_HOST, 64, (4000, 53))),
            (A1, udp(pod_mac(A2_IP), A1_IP, OUTSIDE_HOST, 64, (4000, 53))),
            (A1, bad_csum),
            (A1, switched),
            // A ClusterIP connection (DLB DNAT), its reply, and routing between segments.
            (A1, tcp(A1_IP, CLUSTER_IP, 64, (5000, 80), 0x02)),
            (A1, tcp(A1_IP, CLUSTER_IP, 64, (5000, 80), 0x10)),
            (A1, tcp(A1_IP, A2_IP, 64, (5001, 8080), 0x02)),
            (A2, tcp(A2_IP, A1_IP, 64, (8080, 5001), 0x12)),
            (A1, tcp(A1_IP, A2_IP, 64, (5001, 8080), 0x10)),
            // A SYN-ACK from the client side: invalid for the connection.
            (A1, tcp(A1_IP, A2_IP, 64, (5001, 8080), 0x12)),
            // Denied by the DFW (another namespace), and a VIP port with no service.
            (A1, tcp(A1_IP, B1_IP, 64, (5003, 8080), 0x02)),
            (A1, tcp(A1_IP, VIP, 64, (5002, 443), 0x02)),
        ];
        // The scenario covers what it means to: forwarding, TTL, SpoofGuard, malformed,
        // conntrack state, the DFW and a local answer.
        use DropReason::*;
        use Verdict::{Drop as D, Forward as F, Reply};
        let ttl = D(TtlExceeded);
        let expected = vec![
            F,
            F,
            F,
            F,
            ttl,
            ttl,
            ttl,
            D(SpoofedSource),
            D(SpoofedSource),
            D(Malformed),
            F,
            F,
            F,
            F,
            F,
            F,
            D(ConntrackInvalid),
            D(DfwDeny),
            // The reset from the VIP.
            Reply,
        ];
        (frames, expected)
    }

    fn pipeline_pair() -> (Arc<ArcSwap<Tables>>, Pipeline, Pipeline) {
        let tables = Arc::new(ArcSwap::from_pointee(testbed::tables(
            1,
            Options::default(),
        )));
        let a = Pipeline::new(Arc::clone(&tables));
        let b = Pipeline::new(Arc::clone(&tables));
        (tables, a, b)
    }

    #[test]
    fn fast_and_general_paths_agree() {
        let (tables, fast, general) = pipeline_pair();
        let (frames, expected) = scenario();
        let (mut ctx_f, mut ctx_g) = (WorkerContext::default(), WorkerContext::default());
        let (mut pkt_f, mut pkt_g) = (PacketBuf::new(), PacketBuf::new());
        let t = tables.load_full();
        let mut fast_taken = 0;
        let mut verdicts = Vec::new();
        for (i, (port, frame)) in frames.iter().enumerate() {
            pkt_f.set_frame(frame);
            pkt_g.set_frame(frame);
            let now = 1000 + i as u64;
            fast_taken += usize::from(parse::parse_ipv4_fast(frame).is_some());
            let vf = fast.process_inner(&t, &mut ctx_f, now, *port, &mut pkt_f, true);
            let vg = general.process_inner(&t, &mut ctx_g, now, *port, &mut pkt_g, false);
            assert_eq!(vf, vg, "frame {i}");
            verdicts.push(vf);
            assert_eq!(ctx_f.tx, ctx_g.tx, "frame {i}");
            assert_eq!(pkt_f.wire(), pkt_g.wire(), "frame {i}");
            if vf == Verdict::Reply {
                assert_eq!(ctx_f.scratch.wire(), ctx_g.scratch.wire(), "frame {i}");
            }
        }
        assert!(fast_taken >= 12, "{fast_taken}");
        assert_eq!(verdicts, expected);
        assert_eq!(fast.conntrack.len(), general.conntrack.len());
    }

    /// Egress rules judge a ClusterIP connection by the backend the DLB chose (a NetworkPolicy
    /// names pods, not ClusterIPs): an allow of the backends passes it, and a drop of the
    /// backends stops it, though neither names the ClusterIP.
    #[test]
    fn egress_rules_see_the_backend_behind_a_cluster_ip() {
        let verdict = |action| {
            let mut t = testbed::tables(1, Options::default());
            use crate::tables::{DfwRule, Ipv4Net};
            let backends = vec![Ipv4Net::host(A2_IP), Ipv4Net::host(A3_IP)];
            let rule = |name: &str, destinations, action| DfwRule {
                counter: 90,
                name: name.into(),
                section: "ns-0".into(),
                zone: 0,
                direction: Direction::Out,
                sources: vec![Ipv4Net::host(A1_IP)],
                original_destinations: vec![],
                destinations,
                protocol: Some(PROTO_TCP),
                dst_ports: Some((80, 80)),
                action,
            };
            t.dfw.rules_out[0].insert(0, rule("to-backends", backends, action));
            t.dfw.rules_out[0].insert(1, rule("isolate", vec![], RuleAction::Drop));
            let p = Pipeline::new(Arc::new(ArcSwap::from_pointee(t)));
            let mut pkt = PacketBuf::new();
            pkt.set_frame(&tcp(A1_IP, CLUSTER_IP, 64, (5000, 80), 0x02));
            p.process(&mut WorkerContext::default(), 1000, A1, &mut pkt)
        };
        assert_eq!(verdict(RuleAction::Allow), Verdict::Forward);
        assert_eq!(
            verdict(RuleAction::Drop),
            Verdict::Drop(DropReason::DfwDeny)
        );
    }

    /// A pod cannot block access to itself (Kubernetes' NetworkPolicy): a pod that its own
    /// policies isolate both ways still reaches itself through its VIP, hairpinned back to its
    /// own port, while another pod is dropped.
    #[test]
    fn a_pod_isolated_both_ways_reaches_itself_through_its_vip() {
        let mut t = testbed::tables(1, Options::default());
        use crate::tables::{DfwRule, Ipv4Net};
        let isolate = |direction, sources, destinations| DfwRule {
            counter: 90,
            name: "isolate".into(),
            section: "ns-0".into(),
            zone: 0,
            direction,
            sources,
            original_destinations: vec![],
            destinations,
            protocol: None,
            dst_ports: None,
            action: RuleAction::Drop,
        };
        let a2 = vec![Ipv4Net::host(A2_IP)];
        t.dfw.rules_in[0].insert(0, isolate(Direction::In, vec![], a2.clone()));
        t.dfw.rules_out[0].insert(0, isolate(Direction::Out, a2, vec![]));
        let p = Pipeline::new(Arc::new(ArcSwap::from_pointee(t)));
        let send = |port, src| {
            let mut pkt = PacketBuf::new();
            pkt.set_frame(&tcp(src, VIP, 64, (5000, 80), 0x02));
            p.process(&mut WorkerContext::default(), 1000, port, &mut pkt)
        };
        assert_eq!(send(A2, A2_IP), Verdict::Forward, "A2 to itself");
        assert_eq!(
            send(A1, A1_IP),
            Verdict::Drop(DropReason::DfwDeny),
            "A1 to the isolated A2"
        );
    }

    /// A batch does frame by frame what `process` does, also when a later frame of the batch
    /// belongs to a connection an earlier one creates (it was hashed before the connection
    /// existed), and with an empty frame.
    #[test]
    fn a_batch_does_what_one_frame_at_a_time_does() {
        let (_, single, batched) = pipeline_pair();
        let (mut frames, mut expected) = scenario();
        frames.push((A1, Vec::new()));
        expected.push(Verdict::Drop(DropReason::Malformed));
        let mut ctx_s = WorkerContext::default();
        let mut ctx_b = WorkerContext::default();
        let mut pkt = PacketBuf::new();
        let mut seen = 0;
        // One batch per run of frames from the same port.
        for run in frames.chunk_by(|a, b| a.0 == b.0) {
            let port = run[0].0;
            let mut pkts: Vec<PacketBuf> = run
                .iter()
                .map(|(_, f)| {
                    let mut p = PacketBuf::new();
                    p.set_frame(f);
                    p
                })
                .collect();
            let mut out = Vec::new();
            batched.process_batch(&mut ctx_b, 5000, port, &mut pkts, |i, v, ctx, p| {
                let scratch = (v == Verdict::Reply).then(|| ctx.scratch.wire().to_vec());
                out.push((i, v, ctx.tx.clone(), p.wire().to_vec(), scratch));
            });
            assert_eq!(out.len(), run.len());
            for (i, v, tx, wire, scratch) in out {
                let (_, frame) = &run[i];
                pkt.set_frame(frame);
                let vs = single.process(&mut ctx_s, 5000, port, &mut pkt);
                assert_eq!((i, v), (i, vs), "frame {}", seen + i);
                assert_eq!(v, expected[seen + i], "frame {}", seen + i);
                assert_eq!(tx, ctx_s.tx, "frame {}", seen + i);
                assert_eq!(wire, pkt.wire(), "frame {}", seen + i);
                if let Some(scratch) = scratch {
                    assert_eq!(scratch, ctx_s.scratch.wire(), "frame {}", seen + i);
                }
            }
            seen += run.len();
        }
        assert_eq!(seen, frames.len());
        assert_eq!(single.conntrack.len(), batched.conntrack.len());
    }
}
