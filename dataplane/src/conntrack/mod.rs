//! Connection tracking: one entry per connection, reachable from both directions, carrying the
//! actions the slow path decided so that every later packet costs one lookup and a rewrite.
//!
//! A connection is found under two keys: the tuple of its first packet as it arrived
//! (*original*) and the tuple its replies will arrive with after every translation (*reply*).
//! Both lead to one entry of the table (see [`table`] for its layout: a slab of 128-byte entries
//! and an open-addressing index whose readers take no lock).
//!
//! Inserting the reply key is also how NAT ports are allocated: a translated tuple is free exactly
//! when no live connection holds it as a key, so a port stays reserved through TIME_WAIT and
//! endpoint-dependent mapping (RFC 4787 terms) falls out: the same egress port serves every
//! remote address at once. Alternatives considered: per-worker tables (the kernel spreads a
//! connection's two directions over different TAP queues, hence workers) and a separate port
//! allocator (it would duplicate what the reply key already says).
//!
//! The packets of an established connection take no lock: the lookup reads the index and the
//! entry optimistically (a seqlock), the expiry and the bits that say a packet cannot change the
//! state are one word updated by compare-and-swap, and the connection's mutex is taken only by
//! segments that may move the TCP state machine ([`TcpState`]). A caller with many packets at
//! hand hashes them first and warms their buckets and entries ([`Conntrack::warm_bucket`],
//! [`Conntrack::warm_entry`]) so that the cache misses of a batch overlap.
//!
//! Timeouts follow Linux conntrack's defaults (`nf_conntrack_tcp_timeout_*`). Time is passed in
//! as milliseconds; nothing here reads a clock.

mod table;

use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

use ahash::RandomState;

use crate::tables::{PortId, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
#[cfg(test)]
use table::Cold;
pub use table::{ConnId, FlowHash, Hint, Home};
use table::{Hot, Table};

/// A connection's tuple in one direction. For ICMP echo, `src_port` is the identifier and
/// `dst_port` is 0 in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowKey {
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl FlowKey {
    /// The key a packet travelling the other way would carry.
    pub fn reversed(&self) -> FlowKey {
        if self.protocol == PROTO_ICMP {
            FlowKey {
                src: self.dst,
                dst: self.src,
                ..*self
            }
        } else {
            FlowKey {
                protocol: self.protocol,
                src: self.dst,
                dst: self.src,
                src_port: self.dst_port,
                dst_port: self.src_port,
            }
        }
    }
}

/// Two words instead of the derive's seven writes (a length prefix and the bytes of each address).
/// This is the hash `Conntrack::hash_key` gives the load balancers and the NAT port sequence;
/// the table hashes keys its own way (`table::Table::hash`).
impl Hash for FlowKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(u32::from(self.src)) << 32 | u64::from(u32::from(self.dst)));
        state.write_u64(
            u64::from(self.src_port) << 24
                | u64::from(self.dst_port) << 8
                | u64::from(self.protocol),
        );
    }
}

/// What to do with a packet of one direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowAction {
    pub out_port: PortId,
    /// Routed (source MAC becomes the router's, destination the port's peer) or switched (MACs
    /// untouched, within one segment).
    pub routed: bool,
    /// Gateways crossed: the TTL is decremented by this much.
    pub ttl_dec: u8,
    /// Rewrite the source to this address and port (ICMP: identifier).
    pub snat: Option<(Ipv4Addr, u16)>,
    /// Rewrite the destination to this address and port.
    pub dnat: Option<(Ipv4Addr, u16)>,
}

/// Which way a packet travels relative to the connection's first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Original,
    Reply,
}

/// TCP connection states (RFC 9293 section 3.3.2, as Linux conntrack names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    LastAck,
    TimeWait,
    Close,
}

impl TcpState {
    /// Still carrying data both ways (what least-connections counts).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            TcpState::SynSent | TcpState::SynRecv | TcpState::Established
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
        }
    }
}

/// Per-protocol timeouts in milliseconds. Defaults are Linux's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn_sent: u64,
    pub tcp_syn_recv: u64,
    pub tcp_established: u64,
    pub tcp_fin_wait: u64,
    pub tcp_close_wait: u64,
    pub tcp_last_ack: u64,
    pub tcp_time_wait: u64,
    pub tcp_close: u64,
    /// A UDP flow that has seen traffic one way only.
    pub udp: u64,
    /// A UDP flow that has seen replies and is still at it 2 s after its first packet
    /// (Linux's rule: a one-shot exchange, a DNS query and its answer, keeps `udp`).
    pub udp_stream: u64,
    pub icmp: u64,
    /// Any other IP protocol.
    pub generic: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        const S: u64 = 1000;
        Timeouts {
            tcp_syn_sent: 120 * S,
            tcp_syn_recv: 60 * S,
            tcp_established: 432_000 * S,
            tcp_fin_wait: 120 * S,
            tcp_close_wait: 60 * S,
            tcp_last_ack: 30 * S,
            tcp_time_wait: 120 * S,
            tcp_close: 10 * S,
            udp: 30 * S,
            udp_stream: 120 * S,
            icmp: 30 * S,
            generic: 600 * S,
        }
    }
}

impl Timeouts {
    /// The names `set` accepts, as `pacific daemon --conntrack-timeout NAME=SECONDS` takes them.
    pub const NAMES: &'static [&'static str] = &[
        "tcp-syn-sent",
        "tcp-syn-recv",
        "tcp-established",
        "tcp-fin-wait",
        "tcp-close-wait",
        "tcp-last-ack",
        "tcp-time-wait",
        "tcp-close",
        "udp",
        "udp-stream",
        "icmp",
        "generic",
    ];

    /// Sets one timeout by name, in milliseconds.
    pub fn set(&mut self, name: &str, ms: u64) -> Result<(), String> {
        let slot = self.slot(name).ok_or_else(|| {
            format!(
                "unknown timeout {name:?} (one of: {})",
                Self::NAMES.join(", ")
            )
        })?;
        *slot = ms;
        Ok(())
    }

    /// One timeout by name, in milliseconds.
    pub fn get(&self, name: &str) -> Option<u64> {
        let mut copy = *self;
        copy.slot(name).map(|ms| *ms)
    }

    fn slot(&mut self, name: &str) -> Option<&mut u64> {
        Some(match name {
            "tcp-syn-sent" => &mut self.tcp_syn_sent,
            "tcp-syn-recv" => &mut self.tcp_syn_recv,
            "tcp-established" => &mut self.tcp_established,
            "tcp-fin-wait" => &mut self.tcp_fin_wait,
            "tcp-close-wait" => &mut self.tcp_close_wait,
            "tcp-last-ack" => &mut self.tcp_last_ack,
            "tcp-time-wait" => &mut self.tcp_time_wait,
            "tcp-close" => &mut self.tcp_close,
            "udp" => &mut self.udp,
            "udp-stream" => &mut self.udp_stream,
            "icmp" => &mut self.icmp,
            "generic" => &mut self.generic,
            _ => return None,
        })
    }

    fn tcp(&self, state: TcpState) -> u64 {
        match state {
            TcpState::SynSent => self.tcp_syn_sent,
            TcpState::SynRecv => self.tcp_syn_recv,
            TcpState::Established => self.tcp_established,
            TcpState::FinWait => self.tcp_fin_wait,
            TcpState::CloseWait => self.tcp_close_wait,
            TcpState::LastAck => self.tcp_last_ack,
            TcpState::TimeWait => self.tcp_time_wait,
            TcpState::Close => self.tcp_close,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// The most connections tracked at once; past it the soonest-expiring entries not yet
    /// established are evicted, and a new connection is refused when there are none.
    pub max_connections: usize,
    pub timeouts: Timeouts,
}

impl ConntrackConfig {
    /// The largest `max_connections` a table is built for (its index, 32 bytes a connection,
    /// and its slab, 128, are mapped whole when the table is, 2.5 GiB of address space at this
    /// size, and take memory only as connections fill them).
    pub const MAX_CONNECTIONS: usize = 1 << 24;
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            max_connections: 1 << 20,
            timeouts: Timeouts::default(),
        }
    }
}

/// A new connection, as the slow path decided it: what `insert` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    pub original: FlowKey,
    pub reply: FlowKey,
    /// The port the first packet arrived on.
    pub in_port: PortId,
    /// The service and backend the load balancer chose, if any: re-validation checks the backend
    /// still exists, least-connections counts it.
    pub lb: Option<LbBinding>,
    pub actions: [FlowAction; 2],
}

impl Conn {
    pub fn new(
        original: FlowKey,
        reply: FlowKey,
        in_port: PortId,
        actions: [FlowAction; 2],
    ) -> Conn {
        Conn {
            original,
            reply,
            in_port,
            lb: None,
            actions,
        }
    }
}

/// A tracked connection as it stood at one instant: what `get` and `snapshot` hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    /// The handle `refresh` and `remove` take; it finds nothing once the connection has ended.
    pub id: ConnId,
    pub original: FlowKey,
    pub reply: FlowKey,
    pub in_port: PortId,
    pub lb: Option<LbBinding>,
    pub actions: [FlowAction; 2],
    /// The tables generation the actions were decided against.
    pub generation: u64,
    pub tcp: TcpState,
    pub replied: bool,
    pub expires_at: u64,
    pub packets: [u64; 2],
}

/// Load-balancing facts of a connection, for re-validation and least-connections accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbBinding {
    pub service: usize,
    pub backend: usize,
}

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    pub id: ConnId,
    /// False when another worker had inserted the same original key first: `id` is that
    /// connection, which the packet was tracked on instead.
    pub created: bool,
    pub tracked: Tracked,
}

/// The expiry word of an entry: the expiry in its low 48 bits (milliseconds: 8,900 years of
/// uptime)...
const EXPIRY_MASK: u64 = (1 << 48) - 1;
/// ...and above them what a packet needs to know to skip the state lock: the connection has
/// seen a reply,
const REPLIED: u64 = 1 << 48;
/// and (TCP) it is ESTABLISHED with no FIN seen, so a segment without SYN, FIN or RST changes
/// nothing but the expiry.
const STEADY: u64 = 1 << 49;
/// Set in the expiry word of a replied UDP flow once it has lived 2 s: `udp_stream` applies.
const STREAM: u64 = 1 << 50;

/// Linux's rule for UDP (nf_conntrack_proto_udp.c): a replied flow still active 2 s after its
/// first packet is a stream.
fn is_stream(created: u64, now: u64) -> bool {
    now >= created.saturating_add(2000)
}

/// The TCP state machine's part of a connection, under the connection's mutex; only segments
/// that may change it take the mutex. A state change stores a new expiry word, so a packet on
/// the fast path that read the previous word fails its compare-and-swap and looks again instead
/// of writing a stale timeout over a FIN's.
#[derive(Debug, Clone, Copy)]
struct SlowState {
    tcp: TcpState,
    fin_orig: bool,
    fin_reply: bool,
    replied: bool,
    /// While the connection is CLOSE by a RST: the state the RST ended, and which sides have
    /// sent a segment without RST since. When both have, the RST was not an end's own and the
    /// state comes back (see [`tcp_transition`]).
    reset: Option<(TcpState, [bool; 2])>,
}

impl Default for SlowState {
    fn default() -> Self {
        SlowState {
            tcp: TcpState::SynSent,
            fin_orig: false,
            fin_reply: false,
            replied: false,
            reset: None,
        }
    }
}

impl SlowState {
    fn bits(&self) -> u64 {
        let mut bits = 0;
        if self.replied {
            bits |= REPLIED;
        }
        if self.tcp == TcpState::Established && !self.fin_orig && !self.fin_reply {
            bits |= STEADY;
        }
        bits
    }
}

const ROUTED: u64 = 1 << 32;
const HAS_SNAT: u64 = 1 << 33;
const HAS_DNAT: u64 = 1 << 34;
const TTL_SHIFT: u32 = 40;

fn pack(a: &FlowAction) -> [u64; 3] {
    let endpoint = |e: Option<(Ipv4Addr, u16)>| {
        e.map_or(0, |(addr, port)| {
            u64::from(u32::from(addr)) << 16 | u64::from(port)
        })
    };
    let mut w0 = u64::from(a.out_port) | u64::from(a.ttl_dec) << TTL_SHIFT;
    if a.routed {
        w0 |= ROUTED;
    }
    if a.snat.is_some() {
        w0 |= HAS_SNAT;
    }
    if a.dnat.is_some() {
        w0 |= HAS_DNAT;
    }
    [w0, endpoint(a.snat), endpoint(a.dnat)]
}

fn unpack(w: [u64; 3]) -> FlowAction {
    let w = PackedAction(w);
    FlowAction {
        out_port: w.out_port(),
        routed: w.routed(),
        ttl_dec: w.ttl_dec(),
        snat: w.snat(),
        dnat: w.dnat(),
    }
}

/// A direction's action as the entry holds it, in the three words of [`pack`]: what the fast
/// path reads field by field, where a [`FlowAction`] of options built on two paths and handed
/// up would be assembled in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedAction([u64; 3]);

impl PackedAction {
    #[inline(always)]
    pub fn out_port(self) -> PortId {
        self.0[0] as PortId
    }

    #[inline(always)]
    pub fn routed(self) -> bool {
        self.0[0] & ROUTED != 0
    }

    #[inline(always)]
    pub fn ttl_dec(self) -> u8 {
        (self.0[0] >> TTL_SHIFT) as u8
    }

    #[inline(always)]
    pub fn snat(self) -> Option<(Ipv4Addr, u16)> {
        Self::endpoint(self.0[0] & HAS_SNAT != 0, self.0[1])
    }

    #[inline(always)]
    pub fn dnat(self) -> Option<(Ipv4Addr, u16)> {
        Self::endpoint(self.0[0] & HAS_DNAT != 0, self.0[2])
    }

    /// Whether the action translates either end.
    #[inline(always)]
    pub fn translates(self) -> bool {
        self.0[0] & (HAS_SNAT | HAS_DNAT) != 0
    }

    #[inline(always)]
    pub fn unpack(self) -> FlowAction {
        unpack(self.0)
    }

    #[inline(always)]
    fn endpoint(present: bool, e: u64) -> Option<(Ipv4Addr, u16)> {
        present.then(|| (Ipv4Addr::from((e >> 16) as u32), e as u16))
    }
}

/// What `track` made of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracked {
    /// Apply this action; `generation` says what it was decided against. `opened` is -1 when
    /// this packet closed the connection (FIN or RST: it stops counting as open for
    /// least-connections), +1 when it reopened a closed one, else 0.
    Pass {
        action: FlowAction,
        generation: u64,
        opened: i8,
    },
    /// A packet that makes no sense for the connection's state (a SYN-ACK from the client...).
    Invalid,
}

/// [`Tracked`] with the action still in the three words of the entry: what [`Conntrack::advance`]
/// returns, so that its quick and slow paths meet on a few words in registers, the action
/// unpacked once after them (an enum of unpacked actions built on two paths was assembled in
/// memory and read back, 30 instructions a packet); and what [`Conntrack::track_packed`] hands
/// the fast path, which reads the words as it needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advanced {
    Pass {
        action: PackedAction,
        generation: u64,
        opened: i8,
    },
    Invalid,
}

impl Advanced {
    #[inline(always)]
    pub fn unpack(self) -> Tracked {
        match self {
            Advanced::Pass {
                action,
                generation,
                opened,
            } => Tracked::Pass {
                action: action.unpack(),
                generation,
                opened,
            },
            Advanced::Invalid => Tracked::Invalid,
        }
    }
}

/// The expiry words a packet at `now` may give a connection on the quick path, one per timeout
/// it may take: worked out once for a batch of packets ([`Conntrack::deadlines`]) rather than
/// added, saturated and capped for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    now: u64,
    tcp_established: u64,
    udp: u64,
    udp_stream: u64,
    icmp: u64,
    generic: u64,
}

/// Why an insert did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// The reply tuple belongs to a live connection: pick another NAT port.
    ReplyTaken,
    /// The table is full and nothing could be evicted.
    Full,
}

/// Counters of the table itself.
#[derive(Debug, Default)]
pub struct ConntrackStats {
    pub created: AtomicU64,
    pub expired: AtomicU64,
    pub evicted: AtomicU64,
    pub refused: AtomicU64,
    pub removed: AtomicU64,
}

/// How many entries eviction compares when the table is full (exact LRU would cost a list).
const EVICTION_SAMPLE: usize = 16;
/// How many samples a full table looks through for a connection it may evict.
const EVICTION_ROUNDS: usize = 4;
/// Lookups that find a connection ending under them start again; this bounds how often.
const RETRIES: usize = 8;

pub struct Conntrack {
    table: Table,
    hasher: RandomState,
    config: ConntrackConfig,
    evict_cursor: AtomicUsize,
    /// Where the next `expire_part` starts.
    expire_cursor: AtomicU32,
    pub stats: ConntrackStats,
}

impl Conntrack {
    pub fn new(config: ConntrackConfig) -> Conntrack {
        let table = Table::new(config.max_connections);
        Conntrack {
            config: ConntrackConfig {
                max_connections: table.capacity(),
                ..config
            },
            table,
            // Fixed seeds: load-balancing choices and NAT port sequences hash keys with this,
            // and they must not change from one run to the next.
            hasher: RandomState::with_seeds(0x5ac1, 0xf1c0, 0x7a5f, 0xe3d1),
            evict_cursor: AtomicUsize::new(0),
            expire_cursor: AtomicU32::new(0),
            stats: ConntrackStats::default(),
        }
    }

    pub fn config(&self) -> &ConntrackConfig {
        &self.config
    }

    /// How long a flow's first packet, unanswered, is remembered (milliseconds): a SYN's
    /// `tcp_syn_sent`, a UDP datagram's `udp`, an echo's `icmp`, any other's `generic`.
    pub fn first_packet_timeout(&self, key: &FlowKey) -> u64 {
        let t = &self.config.timeouts;
        match key.protocol {
            PROTO_TCP => t.tcp_syn_sent,
            PROTO_UDP => t.udp,
            PROTO_ICMP => t.icmp,
            _ => t.generic,
        }
    }

    /// Hashes a key with fixed seeds (for callers that spread work by flow: the DLB, NAT ports).
    pub fn hash_key(&self, key: &FlowKey) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The key as the table indexes it (hash it once, use it for warming and tracking).
    #[inline(always)]
    pub fn flow_hash(&self, key: &FlowKey) -> FlowHash {
        self.table.hash(key)
    }

    /// [`Conntrack::flow_hash`] of a key as a packet carries it: its protocol, the eight bytes of
    /// its source and destination addresses and the four of its ports, in the packet's order.
    #[inline(always)]
    pub fn flow_hash_wire(&self, protocol: u8, addresses: [u8; 8], ports: [u8; 4]) -> FlowHash {
        self.table
            .hash_words(table::pack_wire(protocol, addresses, ports))
    }

    /// First stage of a batch: brings the key's index bucket towards the cache, and hands it on
    /// to [`Conntrack::warm_entry`].
    #[inline(always)]
    pub fn warm_bucket(&self, h: &FlowHash) -> Home<'_> {
        self.table.warm_bucket(h)
    }

    /// Second stage of a batch, after [`Conntrack::warm_bucket`]: brings the entry the bucket
    /// points at towards the cache, and says where it is for [`Conntrack::track_hashed`].
    #[inline(always)]
    pub fn warm_entry<'t>(&'t self, home: Home<'t>, h: &FlowHash) -> Hint<'t> {
        self.table.warm_entry(home, h)
    }

    /// The expiry words of the quick path for packets at `now` (see [`Deadlines`]).
    #[inline]
    pub fn deadlines(&self, now: u64) -> Deadlines {
        let t = &self.config.timeouts;
        let at = |timeout: u64| now.saturating_add(timeout).min(EXPIRY_MASK);
        Deadlines {
            now,
            tcp_established: at(t.tcp_established),
            udp: at(t.udp),
            udp_stream: at(t.udp_stream),
            icmp: at(t.icmp),
            generic: at(t.generic),
        }
    }

    /// Looks a packet up and, when it belongs to a connection, advances the connection's state and
    /// returns the action for its direction. `tcp_flags` is 0 for non-TCP. (`get` hands out the
    /// connection itself, for the rare packets that need it: re-validation, ICMP errors.)
    #[inline]
    pub fn track(&self, key: &FlowKey, tcp_flags: u8, now: u64) -> Option<(Dir, Tracked)> {
        let h = self.table.hash(key);
        self.track_hashed(key.protocol, &h, Hint::NONE, tcp_flags, now)
    }

    /// [`Conntrack::track`] for a key already hashed (and perhaps warmed).
    #[inline]
    pub fn track_hashed(
        &self,
        protocol: u8,
        h: &FlowHash,
        hint: Hint<'_>,
        tcp_flags: u8,
        now: u64,
    ) -> Option<(Dir, Tracked)> {
        self.track_packed(protocol, h, hint, tcp_flags, || self.deadlines(now))
            .map(|(dir, advanced)| (dir, advanced.unpack()))
    }

    /// [`Conntrack::track_hashed`] with the action left packed, for packets at the time of the
    /// `deadlines` given (a batch's, worked out once; or one packet's, worked out as its
    /// connection needs them: inlined, only the one it takes is computed).
    #[inline]
    pub fn track_packed(
        &self,
        protocol: u8,
        h: &FlowHash,
        hint: Hint<'_>,
        tcp_flags: u8,
        deadlines: impl Fn() -> Deadlines + Copy,
    ) -> Option<(Dir, Advanced)> {
        // The first look with the hint, the retries without.
        let hot = self.table.find(h, hint)?;
        if let Some(advanced) = self.advance(&hot, protocol, tcp_flags, deadlines) {
            return Some((hot.dir, advanced));
        }
        for _ in 1..RETRIES {
            let hot = self.table.find(h, Hint::NONE)?;
            if let Some(advanced) = self.advance(&hot, protocol, tcp_flags, deadlines) {
                return Some((hot.dir, advanced));
            }
        }
        None
    }

    /// Looks a key up without touching the connection's state.
    pub fn get(&self, key: &FlowKey) -> Option<(ConnInfo, Dir)> {
        let h = self.table.hash(key);
        for _ in 0..RETRIES {
            let hot = self.table.find(&h, Hint::NONE)?;
            if let Some(info) = self.info(hot.id) {
                return Some((info, hot.dir));
            }
        }
        None
    }

    /// The connection behind a handle, if it has not ended.
    pub fn info(&self, id: ConnId) -> Option<ConnInfo> {
        let cold = self.table.cold(id.slot)?;
        if cold.incarnation != id.incarnation {
            return None;
        }
        self.info_locked(id.slot, &cold)
    }

    /// The connection in `slot`, if one lives there (the caller holds its mutex, `cold`).
    fn info_locked(&self, slot: u32, cold: &table::Cold) -> Option<ConnInfo> {
        if !cold.live {
            return None;
        }
        let whole = self.table.whole(slot)?;
        Some(ConnInfo {
            id: ConnId {
                slot,
                incarnation: cold.incarnation,
            },
            original: whole.keys[0],
            reply: whole.keys[1],
            in_port: cold.in_port,
            lb: cold.lb,
            actions: [unpack(whole.actions[0]), unpack(whole.actions[1])],
            generation: whole.generation,
            tcp: cold.slow.tcp,
            replied: cold.slow.replied,
            expires_at: whole.clock & EXPIRY_MASK,
            packets: whole.packets,
        })
    }

    /// Advances a connection with one packet: the expiry, the counters and, when the packet may
    /// change it, the state machine (see [`SlowState`]). `None`: the entry changed under the
    /// packet (another packet's state change, the connection's end); look again.
    #[inline]
    fn advance(
        &self,
        hot: &Hot,
        protocol: u8,
        flags: u8,
        d: impl Fn() -> Deadlines,
    ) -> Option<Advanced> {
        let word = hot.clock;
        let replied = word & REPLIED != 0;
        let deadline = match protocol {
            PROTO_TCP => {
                let quiet = flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0;
                (quiet && word & STEADY != 0 && (hot.dir == Dir::Original || replied))
                    .then(|| d().tcp_established)
            }
            PROTO_UDP | PROTO_ICMP if hot.dir == Dir::Reply && !replied => None,
            PROTO_UDP if replied && word & STREAM != 0 => Some(d().udp_stream),
            // The packet that finds a replied flow 2 s old makes it a stream.
            PROTO_UDP if replied && is_stream(hot.created(), d().now) => {
                return self.advance_quick(hot, d().udp_stream, STREAM);
            }
            PROTO_UDP => Some(d().udp),
            PROTO_ICMP => Some(d().icmp),
            _ => Some(d().generic),
        };
        let Some(deadline) = deadline else {
            return self.advance_slow(hot.id, hot.dir, protocol, flags, d().now);
        };
        self.advance_quick(hot, deadline, 0)
    }

    /// The packet moves the expiry word to `deadline` (with `bits` added) by compare-and-swap and
    /// is counted.
    #[inline(always)]
    fn advance_quick(&self, hot: &Hot, deadline: u64, bits: u64) -> Option<Advanced> {
        let word = hot.clock;
        let next = (word & !EXPIRY_MASK) | bits | deadline;
        if next != word && !hot.swap_clock(next) {
            return None;
        }
        hot.count();
        Some(Advanced::Pass {
            action: PackedAction(hot.action),
            generation: hot.generation,
            opened: 0,
        })
    }

    /// A packet that may change the connection's state: under the connection's mutex.
    /// (It takes the handle and direction, not the [`Hot`] view: a reference to that would keep
    /// the view in memory on the fast path, where it lives in registers.)
    fn advance_slow(
        &self,
        id: ConnId,
        dir: Dir,
        protocol: u8,
        flags: u8,
        now: u64,
    ) -> Option<Advanced> {
        let slot = id.slot;
        let mut cold = self.table.cold(slot)?;
        if !cold.live || cold.incarnation != id.incarnation {
            return None;
        }
        let whole = self.table.whole(slot)?;
        let t = &self.config.timeouts;
        let slow = &mut cold.slow;
        let mut opened = 0;
        // Once a stream, always a stream (the word is rebuilt from the state below).
        let mut stream = whole.clock & STREAM;
        let timeout = match protocol {
            PROTO_TCP => {
                let fresh = whole.packets == [0, 0];
                let was_open = slow.tcp.is_open();
                match tcp_transition(slow, dir, flags, fresh) {
                    Some(state) => {
                        opened = i8::from(state.is_open()) - i8::from(was_open);
                        t.tcp(state)
                    }
                    None => return Some(Advanced::Invalid),
                }
            }
            PROTO_UDP => {
                if dir == Dir::Reply {
                    slow.replied = true;
                }
                if slow.replied && is_stream(whole.created, now) {
                    stream = STREAM;
                    t.udp_stream
                } else {
                    t.udp
                }
            }
            PROTO_ICMP => {
                if dir == Dir::Reply {
                    slow.replied = true;
                }
                t.icmp
            }
            _ => t.generic,
        };
        // A plain store: a packet on the fast path that read the previous word fails its swap.
        self.table.store_clock(
            slot,
            slow.bits() | stream | now.saturating_add(timeout).min(EXPIRY_MASK),
        );
        self.table.count(slot, dir);
        Some(Advanced::Pass {
            action: PackedAction(whole.actions[dir as usize]),
            generation: whole.generation,
            opened,
        })
    }

    /// Inserts a new connection under both its keys, starting its state with the first packet's
    /// `tcp_flags`. Fails without side effects when the reply key is taken (try another NAT port)
    /// or when the table is full. When another worker inserted the same original key first, the
    /// packet is tracked on that connection instead (`created` false).
    pub fn insert(
        &self,
        conn: Conn,
        generation: u64,
        tcp_flags: u8,
        now: u64,
    ) -> Result<Inserted, InsertError> {
        let original = self.table.hash(&conn.original);
        let reply = self.table.hash(&conn.reply);
        // The first packet's step, taken on the entry before it is linked (what `advance` would do
        // on it just after, without its lock and reads): `None` for a segment the state machine
        // refuses, left to `advance` below.
        let first = self.first_step(conn.original.protocol, tcp_flags, now);
        // A connection that holds the original key already (another worker's, inserted since
        // this packet missed) is found by `link` below.
        let slot = match self.table.allocate() {
            Some(slot) => slot,
            None => {
                // A taken reply key (NAT port selection probes here) evicts nothing: checked
                // without a lock before the eviction, as `link` below checks it under one. With
                // room, `link` alone finds it (a lookup fewer for every new connection).
                if self.table.find(&reply, Hint::NONE).is_some() {
                    return Err(InsertError::ReplyTaken);
                }
                self.evict_one(now);
                self.table.allocate().ok_or_else(|| {
                    self.stats.refused.fetch_add(1, Relaxed);
                    InsertError::Full
                })?
            }
        };
        let id = {
            let Some(mut cold) = self.table.cold(slot) else {
                self.table.release(slot);
                return Err(InsertError::Full);
            };
            cold.in_port = conn.in_port;
            cold.lb = conn.lb;
            let (slow, clock) = match first {
                Some((slow, clock, _)) => (slow, clock),
                // Alive until the first packet below sets the state's own timeout.
                None => (
                    SlowState::default(),
                    now.saturating_add(self.config.timeouts.generic)
                        .min(EXPIRY_MASK),
                ),
            };
            cold.slow = slow;
            self.table.fill(
                slot,
                &mut cold,
                [conn.original, conn.reply],
                [pack(&conn.actions[0]), pack(&conn.actions[1])],
                generation,
                clock,
                now,
                u64::from(first.is_some()),
            )
        };
        let undo = |unlink_reply: bool| {
            if unlink_reply {
                self.table.unlink(&reply, slot);
            }
            if let Some(mut cold) = self.table.cold(slot) {
                self.table.clear(slot, &mut cold);
            }
            self.table.release(slot);
        };
        match self.table.link(&reply, slot, Dir::Reply) {
            Ok(()) => {}
            Err(Some(_)) => {
                undo(false);
                return Err(InsertError::ReplyTaken);
            }
            Err(None) => {
                undo(false);
                self.stats.refused.fetch_add(1, Relaxed);
                return Err(InsertError::Full);
            }
        }
        match self.table.link(&original, slot, Dir::Original) {
            Ok(()) => {}
            Err(Some(_)) => {
                undo(true);
                return self
                    .track_existing(&conn, &original, tcp_flags, now)
                    .ok_or(InsertError::ReplyTaken);
            }
            Err(None) => {
                undo(true);
                self.stats.refused.fetch_add(1, Relaxed);
                return Err(InsertError::Full);
            }
        }
        self.stats.created.fetch_add(1, Relaxed);
        if let Some((_, _, opened)) = first {
            return Ok(Inserted {
                id,
                created: true,
                tracked: Tracked::Pass {
                    action: conn.actions[0],
                    generation,
                    opened,
                },
            });
        }
        // The first packet, on the entry just filled (no lookup), unless another packet of the
        // connection got there first.
        let protocol = conn.original.protocol;
        let first = self
            .table
            .read_hot(slot, Dir::Original, &original)
            .and_then(|hot| self.advance(&hot, protocol, tcp_flags, || self.deadlines(now)))
            .map(|advanced| (Dir::Original, advanced.unpack()));
        let tracked = match first
            .or_else(|| self.track_hashed(protocol, &original, Hint::NONE, tcp_flags, now))
        {
            Some((_, tracked)) => tracked,
            // Ended at once (evicted by a full table): the first packet still goes.
            None => Tracked::Pass {
                action: conn.actions[0],
                generation,
                opened: 0,
            },
        };
        Ok(Inserted {
            id,
            created: true,
            tracked,
        })
    }

    /// What the first packet of a new connection (original direction, nothing counted yet) makes
    /// of it, as `advance` and `advance_slow` would: the state, the expiry word and `opened`.
    #[inline]
    fn first_step(&self, protocol: u8, flags: u8, now: u64) -> Option<(SlowState, u64, i8)> {
        let t = &self.config.timeouts;
        let at = |timeout: u64| now.saturating_add(timeout).min(EXPIRY_MASK);
        let mut slow = SlowState::default();
        Some(match protocol {
            PROTO_TCP => {
                let was_open = slow.tcp.is_open();
                let state = tcp_transition(&mut slow, Dir::Original, flags, true)?;
                let opened = i8::from(state.is_open()) - i8::from(was_open);
                (slow, slow.bits() | at(t.tcp(state)), opened)
            }
            PROTO_UDP => (slow, at(t.udp), 0),
            PROTO_ICMP => (slow, at(t.icmp), 0),
            _ => (slow, at(t.generic), 0),
        })
    }

    /// The packet of an insert whose original key a connection holds already.
    fn track_existing(
        &self,
        conn: &Conn,
        original: &FlowHash,
        tcp_flags: u8,
        now: u64,
    ) -> Option<Inserted> {
        for _ in 0..RETRIES {
            let hot = self.table.find(original, Hint::NONE)?;
            if let Some(advanced) = self.advance(&hot, conn.original.protocol, tcp_flags, || {
                self.deadlines(now)
            }) {
                return Some(Inserted {
                    id: hot.id,
                    created: false,
                    tracked: advanced.unpack(),
                });
            }
        }
        None
    }

    /// Evicts, from a full table, the connection that expires soonest among a small sample
    /// taken where the last eviction left off, of those not yet established (see
    /// [`Conntrack::evictable_id`]); up to [`EVICTION_ROUNDS`] samples. False when nothing
    /// could be evicted: the new connection is then refused, as Linux's early drop spares
    /// assured connections and drops the packet instead. Evicting established ones, the idlest
    /// first, silently broke them: a server's next segment to a pod behind SNAT found no
    /// binding and was lost, and the pod, with nothing to send, never made a new one.
    fn evict_one(&self, now: u64) -> bool {
        let high_water = self.table.high_water() as usize;
        if high_water == 0 {
            return false;
        }
        for _ in 0..EVICTION_ROUNDS {
            let start = self.evict_cursor.fetch_add(EVICTION_SAMPLE, Relaxed);
            let victim = (start..start + EVICTION_SAMPLE)
                .map(|n| (n % high_water) as u32)
                .filter_map(|slot| self.evictable_id(slot))
                .min_by_key(|id| self.table.clock(id.slot) & EXPIRY_MASK);
            if victim.is_some_and(|id| self.end(id, |_| true).is_some()) {
                self.stats.evicted.fetch_add(1, Relaxed);
                return true;
            }
        }
        let _ = now;
        false
    }

    /// The handle of the connection in `slot` if one lives there that a full table may evict:
    /// not an established TCP connection, nor a UDP (or other portless) flow that has been
    /// answered. Half-open connections, unanswered flows and closing ones (a FIN seen: FIN_WAIT,
    /// CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE) may go, as Linux's `tcp_can_early_drop` lets its
    /// full table drop them: kept, a table full of connections half-closed towards a peer that
    /// never closes its end refused every new one for the 120 s of FIN_WAIT. One look at the
    /// connection's state, under its mutex: this runs for every new connection a full table
    /// sees.
    fn evictable_id(&self, slot: u32) -> Option<ConnId> {
        if !self.table.is_live(slot) {
            return None;
        }
        let replied = self.table.clock(slot) & REPLIED != 0;
        let cold = self.table.cold(slot)?;
        // Other protocols than TCP stay in the state a connection starts with (SYN_SENT), where
        // a TCP connection is never replied: a SYN-ACK makes it SYN_RECV.
        let established = match cold.slow.tcp {
            TcpState::Established => true,
            TcpState::SynSent => replied,
            TcpState::SynRecv
            | TcpState::FinWait
            | TcpState::CloseWait
            | TcpState::LastAck
            | TcpState::TimeWait
            | TcpState::Close => false,
        };
        (cold.live && !established).then_some(ConnId {
            slot,
            incarnation: cold.incarnation,
        })
    }

    /// Ends a connection if it still stands and `doomed` says so of it: both keys leave the
    /// index, the slot goes back to the free list. Returns what the connection was.
    fn end(&self, id: ConnId, doomed: impl FnOnce(&ConnInfo) -> bool) -> Option<ConnInfo> {
        self.end_slot(id.slot, Some(id.incarnation), doomed)
    }

    /// [`Conntrack::end`] for whatever connection lives in `slot` (of the given incarnation, if
    /// one is given), under one hold of its mutex. `doomed` runs under it: it must not call
    /// back into the table.
    fn end_slot(
        &self,
        slot: u32,
        incarnation: Option<u32>,
        doomed: impl FnOnce(&ConnInfo) -> bool,
    ) -> Option<ConnInfo> {
        let mut cold = self.table.cold(slot)?;
        if incarnation.is_some_and(|i| i != cold.incarnation) {
            return None; // ended meanwhile
        }
        let info = self.info_locked(slot, &cold)?;
        if !doomed(&info) {
            return None;
        }
        self.table.unlink(&self.table.hash(&info.original), slot);
        self.table.unlink(&self.table.hash(&info.reply), slot);
        self.table.clear(slot, &mut cold);
        drop(cold);
        self.table.release(slot);
        Some(info)
    }

    /// Removes the TCP connection holding `key` if it is closing (TIME_WAIT or CLOSE): its
    /// tuple is being reused by a new connection. True when one was removed.
    pub fn evict_closing(&self, key: &FlowKey) -> bool {
        let Some((info, _)) = self.get(key) else {
            return false;
        };
        let closing = |c: &ConnInfo| {
            c.original.protocol == PROTO_TCP
                && matches!(c.tcp, TcpState::TimeWait | TcpState::Close)
        };
        let removed = self.end(info.id, closing).is_some();
        if removed {
            self.stats.removed.fetch_add(1, Relaxed);
        }
        removed
    }

    /// Removes a connection (both keys). False when it had ended already.
    pub fn remove(&self, id: ConnId) -> bool {
        let removed = self.end(id, |_| true).is_some();
        if removed {
            self.stats.removed.fetch_add(1, Relaxed);
        }
        removed
    }

    /// Updates a connection's cached actions after re-validation against a new generation.
    pub fn refresh(&self, id: ConnId, actions: [FlowAction; 2], generation: u64) -> bool {
        let Some(cold) = self.table.cold(id.slot) else {
            return false;
        };
        if !cold.live || cold.incarnation != id.incarnation {
            return false;
        }
        self.table
            .write_actions(id.slot, [pack(&actions[0]), pack(&actions[1])], generation);
        true
    }

    /// Every live connection, slot by slot, each read under its mutex.
    fn live(&self) -> impl Iterator<Item = ConnInfo> + '_ {
        (0..self.table.high_water())
            .filter(|&slot| self.table.is_live(slot))
            .filter_map(|slot| self.info_locked(slot, &*self.table.cold(slot)?))
    }

    /// Drops every connection whose timeout has passed. Returns how many went; `gone` is told
    /// of each, so load-balancer accounting can follow.
    pub fn expire_with(&self, now: u64, gone: impl FnMut(&ConnInfo)) -> usize {
        self.expire_slots(now, 0..self.table.high_water(), gone)
    }

    /// [`Conntrack::expire_with`] for the next `1/parts` of the table's slots (at least a
    /// chunk's worth), going round: called `parts` times a second it visits every connection
    /// once a second, and no call holds its worker up for a whole sweep (a million connections
    /// take some 10 ms).
    pub fn expire_part(&self, now: u64, parts: u32, gone: impl FnMut(&ConnInfo)) -> usize {
        let high_water = self.table.high_water();
        if high_water == 0 {
            return 0;
        }
        let span = high_water
            .div_ceil(parts.max(1))
            .max(table::CHUNK as u32)
            .min(high_water);
        let start = self.expire_cursor.load(Relaxed) % high_water;
        let end = start.saturating_add(span).min(high_water);
        self.expire_cursor
            .store(if end == high_water { 0 } else { end }, Relaxed);
        self.expire_slots(now, start..end, gone)
    }

    fn expire_slots(
        &self,
        now: u64,
        slots: std::ops::Range<u32>,
        mut gone: impl FnMut(&ConnInfo),
    ) -> usize {
        let mut expired = 0;
        for slot in slots {
            // Only the expiry word is read of a connection that still has time.
            if !self.table.is_live(slot) || self.table.clock(slot) & EXPIRY_MASK > now {
                continue;
            }
            if let Some(info) = self.end_slot(slot, None, |c| c.expires_at <= now) {
                gone(&info);
                expired += 1;
            }
        }
        self.stats.expired.fetch_add(expired as u64, Relaxed);
        expired
    }

    /// Drops every connection whose timeout has passed. Returns how many went.
    pub fn expire(&self, now: u64) -> usize {
        self.expire_with(now, |_| {})
    }

    /// Removes every connection for which `doomed` says so (a deleted pod, a flushed backend).
    pub fn remove_where(&self, doomed: impl Fn(&ConnInfo) -> bool) -> usize {
        let gone = (0..self.table.high_water())
            .filter(|&slot| self.table.is_live(slot))
            .filter(|&slot| self.end_slot(slot, None, &doomed).is_some())
            .count();
        self.stats.removed.fetch_add(gone as u64, Relaxed);
        gone
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.table.live()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of up to `limit` live connections, for `pacific get nat`.
    pub fn snapshot(&self, limit: usize) -> Vec<ConnInfo> {
        self.live().take(limit).collect()
    }
}

/// TCP flag bits (RFC 9293 section 3.1).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Whether a TCP segment of no connection may open one, as Linux's conntrack has it: a SYN, or
/// an ACK (a connection picked up midway, `nf_conntrack_tcp_loose`); PSH, URG, ECE and CWR
/// aside. Anything else (a RST, a FIN, a SYN-ACK, SYN with FIN or RST, no flags at all) is
/// INVALID, and makes no connection.
pub fn tcp_opens(flags: u8) -> bool {
    let f = flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK);
    f == TCP_SYN || f == TCP_ACK
}

/// Advances a TCP connection with one segment's flags. `None`: the segment is invalid in this
/// state (conntrack INVALID) and must be dropped without changing anything.
/// `fresh`: no packet has been counted yet.
fn tcp_transition(st: &mut SlowState, dir: Dir, flags: u8, fresh: bool) -> Option<TcpState> {
    use TcpState::*;
    let syn = flags & TCP_SYN != 0;
    let ack = flags & TCP_ACK != 0;
    let fin = flags & TCP_FIN != 0;
    let rst = flags & TCP_RST != 0;
    let next = if rst {
        // Another RST starts the count again: its end has no connection, whatever the other says.
        let before = st.reset.map_or(st.tcp, |(before, _)| before);
        if st.tcp != Close || st.reset.is_some() {
            st.reset = Some((before, [false; 2]));
        }
        Close
    } else if syn && !ack {
        match (dir, st.tcp) {
            // A new SYN from the client on a closed or closing connection reopens it (port
            // reuse, as Linux allows from TIME_WAIT).
            (Dir::Original, SynSent | TimeWait | Close) => {
                st.fin_orig = false;
                st.fin_reply = false;
                st.replied = false;
                st.reset = None;
                SynSent
            }
            (Dir::Original, s) => s,
            // The peer's own SYN while ours is unanswered: a simultaneous open (RFC 9293
            // section 3.5, TCP hole punching through the SNAT; Linux's SYN_SENT2). Each side
            // then answers the other's SYN with a SYN-ACK.
            (Dir::Reply, SynSent) => {
                st.replied = true;
                SynSent
            }
            (Dir::Reply, _) => return None,
        }
    } else if syn && ack {
        match (dir, st.tcp) {
            (Dir::Reply, SynSent | SynRecv) => {
                st.replied = true;
                SynRecv
            }
            (Dir::Reply, s) => s,
            // Our side's answer to the peer's SYN of a simultaneous open.
            (Dir::Original, SynSent) if st.replied => SynRecv,
            (Dir::Original, SynRecv) if st.replied => SynRecv,
            (Dir::Original, _) => return None,
        }
    } else {
        if dir == Dir::Reply {
            st.replied = true;
        }
        // After a RST, segments without one pass and leave the connection CLOSE, as Linux's
        // conntrack passes an ACK in CLOSE: a retransmission whose RST was lost further on
        // (its end answers it with another RST), data the RST overtook. But an end that sent a
        // real RST, or got one, has no connection left and answers anything with a RST; when
        // both sides go on talking, the RST was neither's own (out of window, stale, injected:
        // Linux's conntrack finds it outside the window and ignores it, with no sequence
        // tracking here this is the sign left), and the connection goes on where it was.
        if st.tcp == Close {
            if let Some((before, mut heard)) = st.reset {
                heard[dir as usize] = true;
                if heard != [true; 2] {
                    st.reset = Some((before, heard));
                    return Some(Close);
                }
                st.tcp = before;
                st.reset = None;
            }
        }
        if fin {
            match dir {
                Dir::Original => st.fin_orig = true,
                Dir::Reply => st.fin_reply = true,
            }
        }
        match (st.fin_orig, st.fin_reply) {
            (true, true) if fin => LastAck,
            (true, true) if ack => TimeWait,
            (true, true) => st.tcp,
            (true, false) => FinWait,
            (false, true) => CloseWait,
            (false, false) => match st.tcp {
                SynRecv if dir == Dir::Original && ack => Established,
                // Picked up mid-stream (Linux's nf_conntrack_tcp_loose): trust it.
                SynSent if fresh && ack => Established,
                Close | TimeWait => return None,
                s => s,
            },
        }
    };
    st.tcp = next;
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FlowKey {
        FlowKey {
            protocol: PROTO_TCP,
            src: src.into(),
            dst: dst.into(),
            src_port: sport,
            dst_port: dport,
        }
    }

    fn action(port: PortId) -> FlowAction {
        FlowAction {
            out_port: port,
            routed: true,
            ttl_dec: 1,
            snat: None,
            dnat: None,
        }
    }

    fn new_conn(orig: FlowKey) -> Conn {
        Conn::new(orig, orig.reversed(), 1, [action(2), action(1)])
    }

    fn info(ct: &Conntrack, k: &FlowKey) -> ConnInfo {
        ct.get(k).expect("tracked").0
    }

    fn state(ct: &Conntrack, k: &FlowKey) -> TcpState {
        info(ct, k).tcp
    }

    #[test]
    fn tcp_handshake_data_and_close_walk_every_state() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let k = key([172, 211, 0, 18], 40000, [198, 51, 100, 100], 80);
        let r = k.reversed();
        ct.insert(new_conn(k), 1, TCP_SYN, 0).unwrap();
        assert_eq!(state(&ct, &k), TcpState::SynSent);
        ct.track(&r, TCP_SYN | TCP_ACK, 1);
        assert_eq!(state(&ct, &k), TcpState::SynRecv);
        ct.track(&k, TCP_ACK, 2);
        assert_eq!(state(&ct, &k), TcpState::Established);
        ct.track(&k, TCP_FIN | TCP_ACK, 3);
        assert_eq!(state(&ct, &k), TcpState::FinWait);
        ct.track(&r, TCP_FIN | TCP_ACK, 4);
        assert_eq!(state(&ct, &k), TcpState::LastAck);
        ct.track(&k, TCP_ACK, 5);
        assert_eq!(state(&ct, &k), TcpState::TimeWait);
        assert_eq!(
            info(&ct, &k).expires_at,
            5 + Timeouts::default().tcp_time_wait
        );
        // A new SYN from the client reuses the tuple.
        ct.track(&k, TCP_SYN, 6);
        assert_eq!(state(&ct, &k), TcpState::SynSent);
    }

    #[test]
    fn server_closing_first_goes_to_close_wait_and_rst_closes() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let k = key([172, 211, 0, 18], 40001, [172, 211, 0, 19], 3306);
        let r = k.reversed();
        ct.insert(new_conn(k), 1, TCP_SYN, 0).unwrap();
        ct.track(&r, TCP_SYN | TCP_ACK, 1);
        ct.track(&k, TCP_ACK, 2);
        ct.track(&r, TCP_FIN | TCP_ACK, 3);
        assert_eq!(state(&ct, &k), TcpState::CloseWait);
        ct.track(&k, TCP_RST, 4);
        assert_eq!(state(&ct, &k), TcpState::Close);
        assert_eq!(info(&ct, &k).expires_at, 4 + Timeouts::default().tcp_close);
    }

    const PSH: u8 = 0x08;

    fn passes(t: Option<(Dir, Tracked)>) -> bool {
        matches!(t, Some((_, Tracked::Pass { .. })))
    }

    #[test]
    fn a_rst_both_sides_talk_past_was_not_theirs_and_the_connection_goes_on() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let k = key([172, 211, 0, 18], 40010, [198, 51, 100, 100], 7010);
        let r = k.reversed();
        ct.insert(new_conn(k), 1, TCP_SYN, 0).unwrap();
        ct.track(&r, TCP_SYN | TCP_ACK, 1);
        ct.track(&k, TCP_ACK, 2);
        // A RST in the server's name, out of the window (the client's stack ignores it).
        assert!(passes(ct.track(&r, TCP_RST, 3)));
        assert_eq!(state(&ct, &k), TcpState::Close);
        // The client's challenge ACK passes, the state stays CLOSE...
        assert!(passes(ct.track(&k, TCP_ACK, 4)), "challenge ACK");
        assert_eq!(state(&ct, &k), TcpState::Close);
        // ...until the server talks on: the connection is what it was.
        assert!(passes(ct.track(&r, TCP_ACK | PSH, 5)), "server data");
        assert_eq!(state(&ct, &k), TcpState::Established);
        assert_eq!(
            info(&ct, &k).expires_at,
            5 + Timeouts::default().tcp_established
        );
        // And a real RST still closes it.
        ct.track(&k, TCP_RST, 6);
        assert_eq!(state(&ct, &k), TcpState::Close);
    }

    #[test]
    fn after_a_real_rst_retransmissions_pass_and_the_connection_stays_closed() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let k = key([172, 211, 0, 18], 40011, [198, 51, 100, 100], 7010);
        let r = k.reversed();
        ct.insert(new_conn(k), 1, TCP_SYN, 0).unwrap();
        ct.track(&r, TCP_SYN | TCP_ACK, 1);
        ct.track(&k, TCP_ACK, 2);
        ct.track(&r, TCP_RST, 3);
        // The RST was lost further on: the client's retransmissions pass, and the server, with
        // no connection left, answers each with a RST.
        for now in [4, 6] {
            assert!(passes(ct.track(&k, TCP_ACK | PSH, now)), "retransmission");
            assert_eq!(state(&ct, &k), TcpState::Close);
            ct.track(&r, TCP_RST, now + 1);
        }
        // Data the server's RST overtook passes too; the client, reset, answers it with a RST.
        assert!(passes(ct.track(&r, TCP_ACK | PSH, 8)));
        ct.track(&k, TCP_RST, 9);
        assert_eq!(state(&ct, &k), TcpState::Close);
        assert_eq!(info(&ct, &k).expires_at, 9 + Timeouts::default().tcp_close);
    }

    #[test]
    fn invalid_segments_change_nothing() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let k = key([172, 211, 0, 18], 40002, [172, 211, 0, 19], 80);
        ct.insert(new_conn(k), 1, TCP_SYN, 0).unwrap();
        // A SYN-ACK from the client side is nonsense.
        let (_, t) = ct.track(&k, TCP_SYN | TCP_ACK, 1).unwrap();
        assert_eq!(t, Tracked::Invalid);
        assert_eq!(state(&ct, &k), TcpState::SynSent);
        // A SYN from the server side of an established connection too.
        ct.track(&k.reversed(), TCP_SYN | TCP_ACK, 2);
        ct.track(&k, TCP_ACK, 3);
        let (_, t) = ct.track(&k.reversed(), TCP_SYN, 4).unwrap();
        assert_eq!(t, Tracked::Invalid);
        assert_eq!(state(&ct, &k), TcpState::Established);
    }

    #[test]
    fn a_simultaneous_open_is_followed_to_established() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let k = key([172, 211, 0, 18], 40020, [198, 51, 100, 100], 40020);
        let r = k.reversed();
        ct.insert(new_conn(k), 1, TCP_SYN, 0).unwrap();
        // The peer's SYN crosses ours; each answers the other's with a SYN-ACK, then ACKs.
        assert!(passes(ct.track(&r, TCP_SYN, 1)), "the peer's SYN");
        assert_eq!(state(&ct, &k), TcpState::SynSent);
        assert!(passes(ct.track(&k, TCP_SYN | TCP_ACK, 2)), "our SYN-ACK");
        assert!(
            passes(ct.track(&r, TCP_SYN | TCP_ACK, 3)),
            "the peer's SYN-ACK"
        );
        assert_eq!(state(&ct, &k), TcpState::SynRecv);
        assert!(passes(ct.track(&r, TCP_ACK, 4)));
        assert!(passes(ct.track(&k, TCP_ACK, 5)));
        assert_eq!(state(&ct, &k), TcpState::Established);
    }

    /// A new connection's first packet is stepped on its entry before the entry is linked (the
    /// insert's `first_step`), not by the general `advance`: what it leaves must be what the
    /// state machine says of that packet, for every kind of first packet.
    #[test]
    fn a_first_packet_leaves_the_state_and_timeout_of_its_kind() {
        let t = Timeouts::default();
        let tcp = key([172, 211, 0, 18], 40000, [198, 51, 100, 100], 80);
        let cases = [
            (tcp, TCP_SYN, TcpState::SynSent, t.tcp_syn_sent),
            // Picked up mid-stream (nf_conntrack_tcp_loose): established at once.
            (tcp, TCP_ACK, TcpState::Established, t.tcp_established),
            (
                FlowKey {
                    protocol: PROTO_UDP,
                    ..tcp
                },
                0,
                SlowState::default().tcp,
                t.udp,
            ),
            (
                FlowKey {
                    protocol: PROTO_ICMP,
                    ..tcp
                },
                0,
                SlowState::default().tcp,
                t.icmp,
            ),
            (
                FlowKey {
                    protocol: 47,
                    ..tcp
                },
                0,
                SlowState::default().tcp,
                t.generic,
            ),
        ];
        for (k, flags, tcp_state, timeout) in cases {
            let ct = Conntrack::new(ConntrackConfig::default());
            ct.insert(new_conn(k), 1, flags, 1000).unwrap();
            let conn = info(&ct, &k);
            assert_eq!(conn.tcp, tcp_state, "{k:?} flags {flags:#x}");
            assert_eq!(conn.expires_at, 1000 + timeout, "{k:?} flags {flags:#x}");
            assert_eq!(conn.packets, [1, 0], "{k:?} flags {flags:#x}");
            assert!(!conn.replied);
        }
    }

    #[test]
    fn both_directions_find_one_connection_and_it_expires() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let k = FlowKey {
            protocol: PROTO_UDP,
            ..key([172, 211, 0, 18], 5353, [198, 51, 100, 100], 53)
        };
        ct.insert(new_conn(k), 1, 0, 1000).unwrap();
        // The answer comes 2 s after the question: a UDP stream.
        let (dir, t) = ct.track(&k.reversed(), 0, 3000).unwrap();
        assert_eq!(dir, Dir::Reply);
        assert_eq!(
            t,
            Tracked::Pass {
                action: action(1),
                generation: 1,
                opened: 0
            }
        );
        assert_eq!(ct.len(), 1);
        // A UDP stream lives 120 s from the last packet.
        assert_eq!(ct.expire(3000 + 119_999), 0);
        let mut gone = Vec::new();
        assert_eq!(ct.expire_with(3000 + 120_000, |c| gone.push(c.original)), 1);
        assert_eq!(gone, [k]);
        assert!(ct.get(&k).is_none() && ct.get(&k.reversed()).is_none());
        assert_eq!(ct.len(), 0);
    }

    #[test]
    fn a_taken_reply_tuple_is_refused_without_side_effects() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let a = key([172, 211, 0, 18], 40000, [198, 51, 100, 100], 80);
        let b = key([172, 211, 0, 20], 40000, [198, 51, 100, 100], 80);
        // Both translate to the same egress tuple.
        let reply = key([198, 51, 100, 100], 80, [172, 60, 96, 2], 40000);
        ct.insert(
            Conn::new(a, reply, 1, [action(2), action(1)]),
            1,
            TCP_SYN,
            0,
        )
        .unwrap();
        let err = ct.insert(
            Conn::new(b, reply, 3, [action(2), action(3)]),
            1,
            TCP_SYN,
            0,
        );
        assert_eq!(err.err(), Some(InsertError::ReplyTaken));
        assert!(ct.get(&b).is_none());
        assert_eq!(ct.len(), 1);
        assert_eq!(ct.get(&reply).map(|(c, _)| c.original), Some(a));
    }

    #[test]
    fn a_second_insert_of_one_original_key_tracks_the_first_connection() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let k = FlowKey {
            protocol: PROTO_UDP,
            ..key([172, 211, 0, 18], 5000, [198, 51, 100, 100], 53)
        };
        let first = ct.insert(new_conn(k), 1, 0, 0).unwrap();
        assert!(first.created);
        // Another worker's walk of the same first packet, with another NAT port.
        let other_reply = key([198, 51, 100, 100], 53, [172, 60, 96, 2], 6000);
        let second = ct
            .insert(
                Conn::new(k, other_reply, 1, [action(7), action(1)]),
                1,
                0,
                0,
            )
            .unwrap();
        assert!(!second.created);
        assert_eq!(second.id, first.id);
        assert!(matches!(second.tracked, Tracked::Pass { action: a, .. } if a == action(2)));
        assert!(ct.get(&other_reply).is_none());
        assert_eq!(ct.len(), 1);
        assert_eq!(info(&ct, &k).packets, [2, 0]);
    }

    #[test]
    fn data_segments_keep_established_and_a_fin_still_shortens_the_timeout() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let t = Timeouts::default();
        let k = key([172, 211, 0, 18], 40003, [198, 51, 100, 100], 443);
        let r = k.reversed();
        ct.insert(new_conn(k), 1, TCP_SYN, 0).unwrap();
        ct.track(&r, TCP_SYN | TCP_ACK, 1);
        ct.track(&k, TCP_ACK, 2);
        // Data both ways: no state lock needed, the expiry follows every packet.
        for now in 3..10 {
            let (_, tracked) = ct.track(&r, TCP_ACK | 0x08, now).unwrap();
            assert!(matches!(tracked, Tracked::Pass { .. }));
            ct.track(&k, TCP_ACK, now).unwrap();
            assert_eq!(state(&ct, &k), TcpState::Established);
            assert_eq!(info(&ct, &k).expires_at, now + t.tcp_established);
        }
        ct.track(&k, TCP_FIN | TCP_ACK, 10);
        let st = info(&ct, &k);
        assert_eq!(st.tcp, TcpState::FinWait);
        assert_eq!(st.expires_at, 10 + t.tcp_fin_wait);
        assert_eq!(st.packets, [1 + 1 + 7 + 1, 1 + 7]);
        // After a FIN a plain ACK goes through the state machine again.
        ct.track(&r, TCP_ACK, 11);
        assert_eq!(info(&ct, &k).expires_at, 11 + t.tcp_fin_wait);
    }

    #[test]
    fn udp_timeout_grows_once_replied_and_two_seconds_old() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let t = Timeouts::default();
        let k = FlowKey {
            protocol: PROTO_UDP,
            ..key([172, 211, 0, 18], 5000, [198, 51, 100, 100], 53)
        };
        ct.insert(new_conn(k), 1, 0, 0).unwrap();
        ct.track(&k, 0, 5).unwrap();
        assert_eq!(info(&ct, &k).expires_at, 5 + t.udp);
        assert!(!info(&ct, &k).replied);
        // Replied, but a one-shot exchange so far: Linux's `udp` still.
        ct.track(&k.reversed(), 0, 6).unwrap();
        assert_eq!(info(&ct, &k).expires_at, 6 + t.udp);
        ct.track(&k, 0, 7).unwrap();
        assert_eq!(info(&ct, &k).expires_at, 7 + t.udp);
        assert!(info(&ct, &k).replied);
        // Still at it 2 s after the first packet: a stream, and it stays one.
        ct.track(&k, 0, 2000).unwrap();
        assert_eq!(info(&ct, &k).expires_at, 2000 + t.udp_stream);
        ct.track(&k.reversed(), 0, 2001).unwrap();
        assert_eq!(info(&ct, &k).expires_at, 2001 + t.udp_stream);
        // A stream that began with its reply direction's first packet late (the slow path).
        let late = FlowKey {
            src_port: 5001,
            ..k
        };
        ct.insert(new_conn(late), 1, 0, 10_000).unwrap();
        ct.track(&late.reversed(), 0, 13_000).unwrap();
        assert_eq!(info(&ct, &late).expires_at, 13_000 + t.udp_stream);
        ct.track(&late, 0, 13_001).unwrap();
        assert_eq!(info(&ct, &late).expires_at, 13_001 + t.udp_stream);
    }

    #[test]
    fn actions_survive_packing_and_a_refresh_is_seen_by_the_next_packet() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let k = FlowKey {
            protocol: PROTO_UDP,
            ..key([172, 211, 0, 18], 5001, [198, 51, 100, 100], 53)
        };
        let orig = FlowAction {
            out_port: u32::MAX,
            routed: true,
            ttl_dec: 2,
            snat: Some((Ipv4Addr::new(172, 60, 96, 2), 65535)),
            dnat: None,
        };
        let reply = FlowAction {
            out_port: 1,
            routed: false,
            ttl_dec: 0,
            snat: None,
            dnat: Some((Ipv4Addr::new(172, 211, 0, 18), 5001)),
        };
        assert_eq!(unpack(pack(&orig)), orig);
        assert_eq!(unpack(pack(&reply)), reply);
        let inserted = ct
            .insert(Conn::new(k, k.reversed(), 1, [orig, reply]), 7, 0, 0)
            .unwrap();
        assert_eq!(
            inserted.tracked,
            Tracked::Pass {
                action: orig,
                generation: 7,
                opened: 0
            }
        );
        let moved = FlowAction {
            out_port: 9,
            ..orig
        };
        assert!(ct.refresh(inserted.id, [moved, reply], 8));
        let (dir, tracked) = ct.track(&k, 0, 1).unwrap();
        assert_eq!(dir, Dir::Original);
        assert_eq!(
            tracked,
            Tracked::Pass {
                action: moved,
                generation: 8,
                opened: 0
            }
        );
        assert_eq!(ct.info(inserted.id).unwrap().actions, [moved, reply]);
    }

    #[test]
    fn a_reader_never_sees_half_a_refresh() {
        let k = FlowKey {
            protocol: PROTO_UDP,
            ..key([172, 211, 0, 18], 5002, [198, 51, 100, 100], 80)
        };
        // Generation n goes with out port n and an SNAT port of n: a torn read would mix them.
        let action_of = |n: u64| FlowAction {
            out_port: n as PortId,
            snat: Some((Ipv4Addr::new(172, 60, 96, 2), n as u16)),
            ..action(0)
        };
        let ct = Arc::new(Conntrack::new(ConntrackConfig::default()));
        let id = ct.insert(new_conn(k), 0, 0, 0).unwrap().id;
        let writer = {
            let ct = Arc::clone(&ct);
            std::thread::spawn(move || {
                for n in 1..20_000u64 {
                    assert!(ct.refresh(id, [action_of(n), action(1)], n));
                }
            })
        };
        for _ in 0..20_000 {
            let Some((
                _,
                Tracked::Pass {
                    action: a,
                    generation,
                    ..
                },
            )) = ct.track(&k, 0, 1)
            else {
                panic!("the connection is always there");
            };
            if generation > 0 {
                assert_eq!(a, action_of(generation));
            }
        }
        writer.join().unwrap();
    }

    /// Connections come and go on two threads while a third looks them up: every lookup that
    /// finds something finds the connection of its own key (its action names the key's port),
    /// and a handle to a connection that ended never reaches the slot's next tenant.
    #[test]
    fn lookups_racing_inserts_and_removals_find_only_their_own_connection() {
        let ct = Arc::new(Conntrack::new(ConntrackConfig {
            max_connections: 256,
            ..Default::default()
        }));
        let udp = |port: u16| FlowKey {
            protocol: PROTO_UDP,
            ..key([172, 211, 0, 18], port, [198, 51, 100, 100], 53)
        };
        let churn = |base: u16| {
            let ct = Arc::clone(&ct);
            std::thread::spawn(move || {
                for round in 0..300u16 {
                    let ids: Vec<ConnId> = (0..100u16)
                        .map(|i| {
                            let k = udp(base + i);
                            let c = Conn::new(
                                k,
                                k.reversed(),
                                1,
                                [action(u32::from(base + i)), action(1)],
                            );
                            ct.insert(c, u64::from(round), 0, 0).unwrap().id
                        })
                        .collect();
                    for id in ids {
                        assert!(ct.remove(id));
                        assert!(!ct.remove(id), "a handle ends its connection once");
                        assert!(ct.info(id).is_none());
                    }
                }
            })
        };
        let writers = [churn(1000), churn(2000)];
        let mut found = 0;
        while writers.iter().any(|w| !w.is_finished()) {
            for port in (1000..1100).chain(2000..2100) {
                if let Some((Dir::Original, Tracked::Pass { action: a, .. })) =
                    ct.track(&udp(port), 0, 0)
                {
                    assert_eq!(a.out_port, u32::from(port));
                    found += 1;
                }
            }
        }
        for w in writers {
            w.join().unwrap();
        }
        assert!(found > 0);
        assert!(ct.is_empty());
    }

    /// The table against a model (a map of live connections), over thousands of random
    /// inserts, removals and lookups, with every key made to share two home buckets of one
    /// stripe so that most keys live in overflow chains: whatever the chains and the reuse of
    /// slots do, a key finds exactly the connection the model says holds it, a taken reply key
    /// is refused, and the counts agree.
    #[test]
    fn the_table_agrees_with_a_model_under_random_operations() {
        use std::collections::HashMap;
        let ct = Conntrack::new(ConntrackConfig {
            max_connections: 4096,
            ..Default::default()
        });
        let crowded = |k: &FlowKey| {
            let home = ct.table.home(&ct.table.hash(k));
            home == 0 || home == table::STRIPES
        };
        let universe: Vec<FlowKey> = (0..2_000_000u32)
            .map(|n| FlowKey {
                protocol: PROTO_UDP,
                src: Ipv4Addr::from(0xacd3_0000 + n / 50_000),
                dst: Ipv4Addr::new(198, 51, 100, 1),
                src_port: 1024 + (n % 50_000) as u16,
                dst_port: 53,
            })
            .filter(|k| crowded(k))
            .take(120)
            .collect();
        assert_eq!(universe.len(), 120, "enough crowded keys");
        // Live connections by their original key: (reply key, handle).
        let mut model: HashMap<FlowKey, (FlowKey, ConnId)> = HashMap::new();
        let holder = |model: &HashMap<FlowKey, (FlowKey, ConnId)>, k: &FlowKey| {
            model.iter().find_map(|(o, (r, id))| {
                (o == k || r == k).then_some((
                    *o,
                    *r,
                    *id,
                    if o == k { Dir::Original } else { Dir::Reply },
                ))
            })
        };
        let mut x = 0x9e37_79b9_u64;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let (mut created, mut removed, mut deepest) = (0, 0, 0);
        for step in 0..20_000 {
            deepest = deepest.max(model.len());
            // Inserts outnumber removals: the table fills up to the universe's limit.
            match next(20) {
                0..=9 => {
                    let (o, r) = (universe[next(120)], universe[next(120)]);
                    if o == r {
                        continue;
                    }
                    let got = ct.insert(Conn::new(o, r, 1, [action(2), action(1)]), 1, 0, 0);
                    // A key held in either direction belongs to that connection.
                    match (holder(&model, &r), holder(&model, &o)) {
                        (Some(_), _) => {
                            assert_eq!(got, Err(InsertError::ReplyTaken), "step {step}")
                        }
                        (None, Some((_, _, id, _))) => {
                            let got = got.expect("tracked on the existing connection");
                            assert!(!got.created && got.id == id, "step {step}");
                        }
                        (None, None) => {
                            let got = got.expect("room");
                            assert!(got.created, "step {step}");
                            model.insert(o, (r, got.id));
                            created += 1;
                        }
                    }
                }
                10..=13 if !model.is_empty() => {
                    let o = *model.keys().nth(next(model.len())).expect("non-empty");
                    let (_, id) = model.remove(&o).expect("present");
                    assert!(ct.remove(id), "step {step}");
                    assert!(!ct.remove(id), "step {step}: ended once");
                    removed += 1;
                }
                _ => {
                    let k = universe[next(120)];
                    let got = ct.get(&k).map(|(c, dir)| (c.original, c.reply, c.id, dir));
                    assert_eq!(got, holder(&model, &k), "step {step}: {k:?}");
                }
            }
            assert_eq!(ct.len(), model.len(), "step {step}");
        }
        for k in &universe {
            let got = ct.get(k).map(|(c, dir)| (c.original, c.reply, c.id, dir));
            assert_eq!(got, holder(&model, k));
        }
        // It did what it claims: many connections came and went, at times 30 or more at once
        // (60 keys and more on two home buckets of 7 slots).
        assert!(
            created > 1000 && removed > 1000 && deepest >= 30,
            "{created} {removed} {deepest}"
        );
    }

    /// A sweep in parts visits every slot once per round: ten parts of a table of several
    /// chunks expire what one full sweep would.
    #[test]
    fn expiring_in_parts_goes_round_the_whole_table() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let n = 3 * table::CHUNK as u16 + 5;
        for port in 0..n {
            let k = FlowKey {
                protocol: PROTO_UDP,
                ..key([172, 211, 0, 18], port, [198, 51, 100, 1], 53)
            };
            ct.insert(new_conn(k), 1, 0, 0).unwrap();
        }
        let timeout = Timeouts::default().udp;
        let mut gone = 0;
        let mut calls = 0;
        while gone < usize::from(n) {
            gone += ct.expire_part(timeout, 10, |_| {});
            calls += 1;
            assert!(calls <= 10, "one round is at most ten parts");
        }
        assert!(ct.is_empty());
        assert_eq!(ct.expire_part(timeout, 10, |_| {}), 0);
    }

    /// A table full of established connections refuses a new one (counted) instead of evicting
    /// one of them; once one closes, or is half-closed, it is the one that goes.
    #[test]
    fn a_full_table_keeps_its_established_connections_and_refuses_new_ones() {
        let ct = Conntrack::new(ConntrackConfig {
            max_connections: 64,
            ..Default::default()
        });
        let conn = |port: u16| key([172, 211, 0, 18], 1024 + port, [198, 51, 100, 100], 80);
        for port in 0..63u16 {
            let k = conn(port);
            ct.insert(new_conn(k), 1, TCP_SYN, 1).unwrap();
            ct.track(&k.reversed(), TCP_SYN | TCP_ACK, 2);
            ct.track(&k, TCP_ACK, 3);
        }
        // An answered UDP flow is as established.
        let udp = FlowKey {
            protocol: PROTO_UDP,
            ..key([172, 211, 0, 18], 5353, [198, 51, 100, 1], 53)
        };
        ct.insert(new_conn(udp), 1, 0, 1).unwrap();
        ct.track(&udp.reversed(), 0, 2);
        for port in 100..110u16 {
            let result = ct.insert(new_conn(conn(port)), 1, TCP_SYN, 10);
            assert_eq!(result.err(), Some(InsertError::Full));
        }
        assert_eq!(ct.stats.refused.load(Relaxed), 10);
        assert_eq!(ct.stats.evicted.load(Relaxed), 0);
        for port in 0..63u16 {
            assert_eq!(state(&ct, &conn(port)), TcpState::Established, "{port}");
        }
        assert!(ct.get(&udp).is_some());
        // One closes (TIME_WAIT): a new connection takes its place.
        let closing = conn(7);
        ct.track(&closing, TCP_FIN | TCP_ACK, 20);
        ct.track(&closing.reversed(), TCP_FIN | TCP_ACK, 21);
        ct.track(&closing, TCP_ACK, 22);
        assert_eq!(state(&ct, &closing), TcpState::TimeWait);
        ct.insert(new_conn(conn(200)), 1, TCP_SYN, 30).unwrap();
        assert!(ct.get(&closing).is_none());
        assert_eq!(ct.stats.evicted.load(Relaxed), 1);
        ct.track(&conn(200).reversed(), TCP_SYN | TCP_ACK, 31);
        ct.track(&conn(200), TCP_ACK, 32);
        assert!(ct.get(&udp).is_some());
        for port in (0..63u16).filter(|&p| p != 7) {
            assert_eq!(state(&ct, &conn(port)), TcpState::Established, "{port}");
        }
        // One is closed by the pod only (its FIN acknowledged, the server's end still open):
        // a new connection takes its place too, as Linux drops a closing one.
        let half_closed = conn(8);
        ct.track(&half_closed, TCP_FIN | TCP_ACK, 40);
        ct.track(&half_closed.reversed(), TCP_ACK, 41);
        assert_ne!(state(&ct, &half_closed), TcpState::Established);
        ct.insert(new_conn(conn(201)), 1, TCP_SYN, 50).unwrap();
        assert!(ct.get(&half_closed).is_none());
        assert_eq!(ct.stats.evicted.load(Relaxed), 2);
        assert!(ct.get(&udp).is_some());
        for port in (0..63u16).filter(|&p| p != 7 && p != 8).chain([200]) {
            assert_eq!(state(&ct, &conn(port)), TcpState::Established, "{port}");
        }
    }

    #[test]
    fn a_full_table_evicts_the_soonest_to_expire_and_counts() {
        let ct = Conntrack::new(ConntrackConfig {
            max_connections: 64,
            ..Default::default()
        });
        for port in 0..1000u16 {
            let k = FlowKey {
                protocol: PROTO_UDP,
                ..key([172, 211, 0, 18], 1024 + port, [198, 51, 100, 1], 53)
            };
            ct.insert(new_conn(k), 1, 0, u64::from(port)).unwrap();
        }
        assert_eq!(ct.len(), 64);
        assert_eq!(ct.stats.evicted.load(Relaxed), 1000 - 64);
        // The newest connection is never the one to go.
        let newest = FlowKey {
            protocol: PROTO_UDP,
            ..key([172, 211, 0, 18], 1024 + 999, [198, 51, 100, 1], 53)
        };
        assert!(ct.get(&newest).is_some());
    }
}

#[cfg(test)]
mod memory {
    use super::*;
    use std::mem::size_of;

    /// Memory per tracked connection at the table's capacity: the entry (two cache lines), its
    /// cold part under a mutex, and its share of the index (fixed, at most 4/7 full at
    /// capacity). The README states the figure this prints.
    #[test]
    fn a_connection_costs_at_most_256_bytes() {
        let table = Table::new(1 << 20);
        let entry = size_of::<table::Entry>();
        let cold = size_of::<parking_lot::Mutex<Cold>>();
        let index = table.index_bytes_per_connection();
        let per_connection = entry + cold + index;
        println!(
            "entry {entry} B + cold {cold} B + index {index} B = {per_connection} B per connection"
        );
        assert!(
            per_connection <= 256,
            "{per_connection} bytes per connection"
        );
    }
}
