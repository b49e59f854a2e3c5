//! Connection tracking: one entry per connection, reachable from both directions, carrying the
//! actions the slow path decided so that every later packet costs one lookup and a rewrite.
//!
//! Shape: the table is split into shards, each a `parking_lot::Mutex` around a hash map from a
//! [`FlowKey`] to an `Arc<Conn>`. A connection is inserted under two keys: the tuple of its first
//! packet as it arrived (*original*) and the tuple its replies will arrive with after every
//! translation (*reply*). Each key lives in the shard its own hash picks, so neither direction
//! needs to know the other's shard; the two inserts are done one lock at a time.
//!
//! Inserting the reply key is also how NAT ports are allocated: a translated tuple is free exactly
//! when no live connection holds it as its reply key, so a port stays reserved through TIME_WAIT
//! and endpoint-dependent mapping (RFC 4787 terms) falls out: the same egress port serves every
//! remote address at once. Alternatives considered: per-worker tables (the kernel spreads a
//! connection's two directions over different TAP queues, hence workers) and a separate port
//! allocator (it would duplicate what the reply key already says).
//!
//! The packets of an established connection take one lock, the shard's: the connection's own
//! state is kept in atomics (expiry and the bits that say a packet cannot change the state, one
//! word; the actions behind a sequence lock), and its mutex is taken only by segments that may
//! move the TCP state machine ([`ConnState`]).
//!
//! Timeouts follow Linux conntrack's defaults (`nf_conntrack_tcp_timeout_*`). Time is passed in
//! as milliseconds; nothing here reads a clock.

use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use std::sync::atomic::{
    fence, AtomicU32, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::Arc;

use ahash::RandomState;
use parking_lot::Mutex;

use crate::tables::{PortId, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

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

/// Two words instead of the derive's seven writes (a length prefix and the bytes of each address):
/// every packet hashes its key twice, for the shard and for the bucket.
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
    /// A UDP flow that has seen replies.
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
        let slot = match name {
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
            other => {
                return Err(format!(
                    "unknown timeout {other:?} (one of: {})",
                    Self::NAMES.join(", ")
                ))
            }
        };
        *slot = ms;
        Ok(())
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
    /// The most connections tracked at once; past it the oldest-expiring entries are evicted.
    pub max_connections: usize,
    pub timeouts: Timeouts,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            max_connections: 1 << 20,
            timeouts: Timeouts::default(),
        }
    }
}

/// A copy of the part of a connection that changes after creation, taken at one instant.
#[derive(Debug, Clone, Copy)]
pub struct ConnMut {
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

/// One tracked connection.
#[derive(Debug)]
pub struct Conn {
    pub original: FlowKey,
    pub reply: FlowKey,
    /// The port the first packet arrived on.
    pub in_port: PortId,
    /// The service and backend the load balancer chose, if any: re-validation checks the backend
    /// still exists, least-connections counts it.
    pub lb: Option<LbBinding>,
    pub state: ConnState,
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
            state: ConnState {
                clock: AtomicU64::new(0),
                packets: [AtomicU64::new(0), AtomicU64::new(0)],
                actions: ActionCell::new(actions, 0),
                slow: Mutex::new(SlowState {
                    tcp: TcpState::SynSent,
                    fin_orig: false,
                    fin_reply: false,
                    replied: false,
                }),
            },
        }
    }
}

/// `ConnState::clock`: the expiry in its low 48 bits (milliseconds: 8,900 years of uptime)...
const EXPIRY_MASK: u64 = (1 << 48) - 1;
/// ...and above them what a packet needs to know to skip the state lock: the connection has
/// seen a reply,
const REPLIED: u64 = 1 << 48;
/// and (TCP) it is ESTABLISHED with no FIN seen, so a segment without SYN, FIN or RST changes
/// nothing but the expiry.
const STEADY: u64 = 1 << 49;

/// The changing state of a connection, built so that the packets of an established connection
/// take no lock of their own (the shard lock of the lookup is the only one):
/// - `clock` (expiry and the fast-path bits) is one word, updated by compare-and-swap: a state
///   change stores a new word under `slow`, so a packet that read the old bits fails its swap and
///   looks again instead of writing a stale timeout over a FIN's.
/// - `actions` change only on re-validation, behind a sequence lock (below).
/// - `packets` are statistics: a plain load and store, since one direction of a flow arrives on
///   one queue, hence one worker; two workers racing on one direction may lose a count.
/// - `slow` (the TCP state machine) is locked only for segments that may change it.
///
/// Rejected: one mutex per connection (the previous design: two more atomic read-modify-writes
/// per packet), and the state inline in the shard map (the two keys of a connection live in
/// different shards, so neither shard lock covers both directions).
#[derive(Debug)]
pub struct ConnState {
    clock: AtomicU64,
    packets: [AtomicU64; 2],
    actions: ActionCell,
    slow: Mutex<SlowState>,
}

/// What only segments that change the TCP state touch.
#[derive(Debug, Clone, Copy)]
struct SlowState {
    tcp: TcpState,
    fin_orig: bool,
    fin_reply: bool,
    replied: bool,
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

impl ConnState {
    /// A copy of the state: the state machine under its lock, the actions as of one table
    /// generation, expiry and counters as last written.
    pub fn snapshot(&self) -> ConnMut {
        let slow = self.slow.lock();
        let (actions, generation) = self.actions.read();
        ConnMut {
            actions,
            generation,
            tcp: slow.tcp,
            replied: slow.replied,
            expires_at: self.expires_at(),
            packets: [self.packets[0].load(Relaxed), self.packets[1].load(Relaxed)],
        }
    }

    pub fn expires_at(&self) -> u64 {
        self.clock.load(Relaxed) & EXPIRY_MASK
    }

    pub fn generation(&self) -> u64 {
        self.actions.read().1
    }

    /// The action for one direction and the generation it was decided against.
    pub fn action(&self, dir: Dir) -> (FlowAction, u64) {
        self.actions.read_one(dir)
    }

    /// Makes the connection expire at `at` (eviction), keeping the fast-path bits.
    fn expire_at(&self, at: u64) {
        let _ = self.clock.fetch_update(Relaxed, Relaxed, |w| {
            Some((w & !EXPIRY_MASK) | at.min(EXPIRY_MASK))
        });
    }

    fn count(&self, dir: Dir) {
        let n = &self.packets[dir as usize];
        n.store(n.load(Relaxed).wrapping_add(1), Relaxed);
    }
}

/// Both directions' actions and their generation behind a sequence lock, in atomics (the crate
/// keeps `unsafe` in `tap`): a reader retries while a writer is between its two increments of
/// `seq`; writers are serialized by the connection's `slow` lock. The orderings are those of
/// Boehm's "Can seqlocks get along with programming language memory models?" (2012); on x86
/// every one of them is a plain load or store.
#[derive(Debug)]
struct ActionCell {
    seq: AtomicU32,
    /// Per direction: port, flags and TTL step; SNAT address and port; DNAT address and port.
    words: [AtomicU64; 6],
    generation: AtomicU64,
}

impl ActionCell {
    fn new(actions: [FlowAction; 2], generation: u64) -> ActionCell {
        let w = |i: usize| AtomicU64::new(pack(&actions[i / 3])[i % 3]);
        ActionCell {
            seq: AtomicU32::new(0),
            words: [w(0), w(1), w(2), w(3), w(4), w(5)],
            generation: AtomicU64::new(generation),
        }
    }

    fn read(&self) -> ([FlowAction; 2], u64) {
        loop {
            let before = self.seq.load(Acquire);
            let w: [u64; 6] = std::array::from_fn(|i| self.words[i].load(Relaxed));
            let generation = self.generation.load(Relaxed);
            fence(Acquire);
            if before & 1 == 0 && self.seq.load(Relaxed) == before {
                return (
                    [unpack([w[0], w[1], w[2]]), unpack([w[3], w[4], w[5]])],
                    generation,
                );
            }
            std::hint::spin_loop();
        }
    }

    /// One direction's action: what a packet needs, half the loads of `read`.
    fn read_one(&self, dir: Dir) -> (FlowAction, u64) {
        let at = dir as usize * 3;
        loop {
            let before = self.seq.load(Acquire);
            let w: [u64; 3] = std::array::from_fn(|i| self.words[at + i].load(Relaxed));
            let generation = self.generation.load(Relaxed);
            fence(Acquire);
            if before & 1 == 0 && self.seq.load(Relaxed) == before {
                return (unpack(w), generation);
            }
            std::hint::spin_loop();
        }
    }

    /// Only with the connection's `slow` lock held (or before the connection is shared).
    fn write(&self, actions: [FlowAction; 2], generation: u64) {
        let seq = self.seq.load(Relaxed);
        self.seq.store(seq.wrapping_add(1), Relaxed);
        fence(Release);
        for (dir, action) in actions.iter().enumerate() {
            for (i, word) in pack(action).into_iter().enumerate() {
                self.words[dir * 3 + i].store(word, Relaxed);
            }
        }
        self.generation.store(generation, Relaxed);
        self.seq.store(seq.wrapping_add(2), Release);
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
    let endpoint =
        |present: bool, e: u64| present.then(|| (Ipv4Addr::from((e >> 16) as u32), e as u16));
    FlowAction {
        out_port: w[0] as PortId,
        routed: w[0] & ROUTED != 0,
        ttl_dec: (w[0] >> TTL_SHIFT) as u8,
        snat: endpoint(w[0] & HAS_SNAT != 0, w[1]),
        dnat: endpoint(w[0] & HAS_DNAT != 0, w[2]),
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

struct Shard {
    map: std::collections::HashMap<FlowKey, Arc<Conn>, RandomState>,
}

pub struct Conntrack {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    config: ConntrackConfig,
    per_shard_limit: usize,
    pub stats: ConntrackStats,
}

const SHARDS: usize = 64;

impl Conntrack {
    pub fn new(config: ConntrackConfig) -> Conntrack {
        // Fixed seeds: every worker must hash a key to the same shard; keys are not attacker
        // controlled beyond what any conntrack accepts.
        let hasher = RandomState::with_seeds(0x5ac1, 0xf1c0, 0x7a5f, 0xe3d1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    map: std::collections::HashMap::with_hasher(hasher.clone()),
                })
            })
            .collect();
        // Two keys per connection.
        let per_shard_limit = (config.max_connections * 2).div_ceil(SHARDS).max(2);
        Conntrack {
            shards,
            hasher,
            config,
            per_shard_limit,
            stats: ConntrackStats::default(),
        }
    }

    pub fn config(&self) -> &ConntrackConfig {
        &self.config
    }

    /// The shard takes bits 32 and up of the hash: the maps inside use the low bits for the
    /// bucket and the top seven for the control byte, so taking the shard from either would
    /// leave a shard's keys all alike in the bits its map spreads them by.
    fn shard_of(&self, key: &FlowKey) -> usize {
        ((self.hasher.hash_one(key) >> 32) as usize) % SHARDS
    }

    /// Hashes a key the way the table does (for callers that spread work by flow).
    pub fn hash_key(&self, key: &FlowKey) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Looks a packet up and, when it belongs to a connection, advances the connection's state and
    /// returns the action for its direction. `tcp_flags` is 0 for non-TCP. (`get` hands out the
    /// connection itself, for the rare packets that need it: re-validation, ICMP errors.)
    pub fn track(&self, key: &FlowKey, tcp_flags: u8, now: u64) -> Option<(Dir, Tracked)> {
        // The fast path: no reference count taken, the answer copied out under the shard lock.
        let shard = self.shards[self.shard_of(key)].lock();
        let conn = shard.map.get(key)?;
        let dir = if conn.original == *key {
            Dir::Original
        } else {
            Dir::Reply
        };
        Some((dir, self.advance(conn, dir, tcp_flags, now)))
    }

    /// Looks a key up without touching the connection's state.
    pub fn get(&self, key: &FlowKey) -> Option<(Arc<Conn>, Dir)> {
        let shard = self.shards[self.shard_of(key)].lock();
        let conn = shard.map.get(key)?;
        let dir = if conn.original == *key {
            Dir::Original
        } else {
            Dir::Reply
        };
        Some((Arc::clone(conn), dir))
    }

    /// Advances a connection with one packet: the expiry, the counters and, when the packet may
    /// change it, the state machine (see [`ConnState`]).
    fn advance(&self, conn: &Conn, dir: Dir, flags: u8, now: u64) -> Tracked {
        let st = &conn.state;
        let t = &self.config.timeouts;
        let protocol = conn.original.protocol;
        let mut word = st.clock.load(Relaxed);
        loop {
            let replied = word & REPLIED != 0;
            let timeout = match protocol {
                PROTO_TCP => {
                    let quiet = flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0;
                    (quiet && word & STEADY != 0 && (dir == Dir::Original || replied))
                        .then_some(t.tcp_established)
                }
                PROTO_UDP | PROTO_ICMP if dir == Dir::Reply && !replied => None,
                PROTO_UDP if replied => Some(t.udp_stream),
                PROTO_UDP => Some(t.udp),
                PROTO_ICMP => Some(t.icmp),
                _ => Some(t.generic),
            };
            let Some(timeout) = timeout else {
                return self.advance_slow(conn, dir, flags, now);
            };
            let next = (word & !EXPIRY_MASK) | now.saturating_add(timeout).min(EXPIRY_MASK);
            match st.clock.compare_exchange_weak(word, next, Relaxed, Relaxed) {
                Ok(_) => break,
                Err(current) => word = current,
            }
        }
        st.count(dir);
        let (action, generation) = st.action(dir);
        Tracked::Pass {
            action,
            generation,
            opened: 0,
        }
    }

    /// A packet that may change the connection's state: under the connection's lock.
    fn advance_slow(&self, conn: &Conn, dir: Dir, flags: u8, now: u64) -> Tracked {
        let st = &conn.state;
        let mut slow = st.slow.lock();
        let t = &self.config.timeouts;
        let mut opened = 0;
        let timeout = match conn.original.protocol {
            PROTO_TCP => {
                let fresh = st.packets.iter().all(|n| n.load(Relaxed) == 0);
                let was_open = slow.tcp.is_open();
                match tcp_transition(&mut slow, dir, flags, fresh) {
                    Some(state) => {
                        opened = i8::from(state.is_open()) - i8::from(was_open);
                        t.tcp(state)
                    }
                    None => return Tracked::Invalid,
                }
            }
            PROTO_UDP => {
                if dir == Dir::Reply {
                    slow.replied = true;
                }
                if slow.replied {
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
        st.clock.store(
            slow.bits() | now.saturating_add(timeout).min(EXPIRY_MASK),
            Relaxed,
        );
        st.count(dir);
        let (action, generation) = st.action(dir);
        Tracked::Pass {
            action,
            generation,
            opened,
        }
    }

    /// Inserts a new connection under both its keys, starting its state with the first packet's
    /// `tcp_flags`. Fails without side effects when the reply key is taken (try another NAT port)
    /// or when the table is full. When another worker inserted the same original key first, that
    /// connection is returned instead and ours is dropped.
    pub fn insert(
        &self,
        conn: Conn,
        generation: u64,
        tcp_flags: u8,
        now: u64,
    ) -> Result<(Arc<Conn>, Tracked), InsertError> {
        let (actions, _) = conn.state.actions.read();
        conn.state.actions.write(actions, generation);
        let conn = Arc::new(conn);
        let reply_shard = self.shard_of(&conn.reply);
        {
            let mut shard = self.shards[reply_shard].lock();
            if shard.map.contains_key(&conn.reply) {
                return Err(InsertError::ReplyTaken);
            }
            if shard.map.len() >= self.per_shard_limit && !self.evict_one(&mut shard, now) {
                self.stats.refused.fetch_add(1, Relaxed);
                return Err(InsertError::Full);
            }
            shard.map.insert(conn.reply, Arc::clone(&conn));
        }
        let orig_shard = self.shard_of(&conn.original);
        let existing = {
            let mut shard = self.shards[orig_shard].lock();
            match shard.map.get(&conn.original) {
                Some(existing) => Some(Arc::clone(existing)),
                None => {
                    if shard.map.len() >= self.per_shard_limit && !self.evict_one(&mut shard, now) {
                        drop(shard);
                        self.remove_key_if(&conn.reply, &conn);
                        self.stats.refused.fetch_add(1, Relaxed);
                        return Err(InsertError::Full);
                    }
                    shard.map.insert(conn.original, Arc::clone(&conn));
                    None
                }
            }
        };
        if let Some(existing) = existing {
            self.remove_key_if(&conn.reply, &conn);
            let tracked = self.advance(&existing, Dir::Original, tcp_flags, now);
            return Ok((existing, tracked));
        }
        self.stats.created.fetch_add(1, Relaxed);
        let tracked = self.advance(&conn, Dir::Original, tcp_flags, now);
        Ok((conn, tracked))
    }

    /// Evicts, from a full shard, the entry that expires soonest among a small sample (exact LRU
    /// would cost a list per shard). Returns false when the shard has nothing to evict.
    fn evict_one(&self, shard: &mut Shard, now: u64) -> bool {
        let victim = shard
            .map
            .iter()
            .take(16)
            .min_by_key(|(_, c)| c.state.expires_at())
            .map(|(k, c)| (*k, Arc::clone(c)));
        let Some((key, conn)) = victim else {
            return false;
        };
        shard.map.remove(&key);
        // The partner key may live in this same shard (already locked) or in another one; the
        // latter is cleaned lazily: `expire` drops a key whose partner is gone.
        let partner = if key == conn.original {
            conn.reply
        } else {
            conn.original
        };
        if shard
            .map
            .get(&partner)
            .is_some_and(|c| Arc::ptr_eq(c, &conn))
        {
            shard.map.remove(&partner);
        }
        // Make the evicted connection expire now so its other key goes at the next sweep.
        conn.state.expire_at(now);
        self.stats.evicted.fetch_add(1, Relaxed);
        true
    }

    fn remove_key_if(&self, key: &FlowKey, conn: &Arc<Conn>) {
        let mut shard = self.shards[self.shard_of(key)].lock();
        if shard.map.get(key).is_some_and(|c| Arc::ptr_eq(c, conn)) {
            shard.map.remove(key);
        }
    }

    /// Removes the TCP connection holding `key` if it is closing (TIME_WAIT or CLOSE): its
    /// tuple is being reused by a new connection. True when one was removed.
    pub fn evict_closing(&self, key: &FlowKey) -> bool {
        let Some((conn, _)) = self.get(key) else {
            return false;
        };
        let closing = conn.original.protocol == PROTO_TCP
            && matches!(
                conn.state.slow.lock().tcp,
                TcpState::TimeWait | TcpState::Close
            );
        if closing {
            self.remove(&conn);
        }
        closing
    }

    /// Removes a connection (both keys).
    pub fn remove(&self, conn: &Arc<Conn>) {
        self.remove_key_if(&conn.original, conn);
        self.remove_key_if(&conn.reply, conn);
        self.stats.removed.fetch_add(1, Relaxed);
    }

    /// Updates a connection's cached actions after re-validation against a new generation.
    pub fn refresh(&self, conn: &Conn, actions: [FlowAction; 2], generation: u64) {
        let _writer = conn.state.slow.lock();
        conn.state.actions.write(actions, generation);
    }

    /// Drops every connection whose timeout has passed. Returns how many went; `gone` is told
    /// of each (once, at its original key), so load-balancer accounting can follow.
    pub fn expire_with(&self, now: u64, mut gone: impl FnMut(&Conn)) -> usize {
        let mut keys = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let before = shard.map.len();
            shard.map.retain(|key, c| {
                let live = c.state.expires_at() > now;
                if !live && *key == c.original {
                    gone(c);
                }
                live
            });
            keys += before - shard.map.len();
        }
        // Each connection has two keys.
        let conns = keys / 2;
        self.stats.expired.fetch_add(conns as u64, Relaxed);
        conns
    }

    /// Drops every connection whose timeout has passed. Returns how many went.
    pub fn expire(&self, now: u64) -> usize {
        self.expire_with(now, |_| {})
    }

    /// Removes every connection for which `doomed` says so (a deleted pod, a flushed backend).
    pub fn remove_where(&self, doomed: impl Fn(&Conn) -> bool) -> usize {
        let mut gone = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let before = shard.map.len();
            shard.map.retain(|_, c| !doomed(c));
            gone += before - shard.map.len();
        }
        gone / 2
    }

    /// Live connections (each counted once).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map.len())
            .sum::<usize>()
            / 2
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of every live connection, for `pacific get nat` and `get conntrack`.
    pub fn snapshot(&self, limit: usize) -> Vec<Arc<Conn>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (key, conn) in shard.map.iter() {
                if *key == conn.original {
                    out.push(Arc::clone(conn));
                    if out.len() >= limit {
                        return out;
                    }
                }
            }
        }
        out
    }
}

/// TCP flag bits (RFC 9293 section 3.1).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

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
        Close
    } else if syn && !ack {
        match (dir, st.tcp) {
            // A new SYN from the client on a closed or closing connection reopens it (port
            // reuse, as Linux allows from TIME_WAIT).
            (Dir::Original, SynSent | TimeWait | Close) => {
                st.fin_orig = false;
                st.fin_reply = false;
                st.replied = false;
                SynSent
            }
            (Dir::Original, s) => s,
            // A SYN from the server side: simultaneous open is not supported.
            (Dir::Reply, _) => return None,
        }
    } else if syn && ack {
        match (dir, st.tcp) {
            (Dir::Reply, SynSent | SynRecv) => {
                st.replied = true;
                SynRecv
            }
            (Dir::Reply, s) => s,
            (Dir::Original, _) => return None,
        }
    } else {
        if dir == Dir::Reply {
            st.replied = true;
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

    fn state(ct: &Conntrack, k: &FlowKey) -> TcpState {
        ct.get(k).unwrap().0.state.snapshot().tcp
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
        let expires = ct.get(&k).unwrap().0.state.snapshot().expires_at;
        assert_eq!(expires, 5 + Timeouts::default().tcp_time_wait);
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
        let expires = ct.get(&k).unwrap().0.state.snapshot().expires_at;
        assert_eq!(expires, 4 + Timeouts::default().tcp_close);
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
        // A SYN from the server side too.
        let (_, t) = ct.track(&k.reversed(), TCP_SYN, 1).unwrap();
        assert_eq!(t, Tracked::Invalid);
    }

    #[test]
    fn both_directions_find_one_connection_and_it_expires() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let k = FlowKey {
            protocol: PROTO_UDP,
            ..key([172, 211, 0, 18], 5353, [198, 51, 100, 100], 53)
        };
        ct.insert(new_conn(k), 1, 0, 1000).unwrap();
        let (dir, t) = ct.track(&k.reversed(), 0, 2000).unwrap();
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
        // Replied UDP lives 120 s from the last packet.
        assert_eq!(ct.expire(2000 + 119_999), 0);
        assert_eq!(ct.expire(2000 + 120_000), 1);
        assert!(ct.get(&k).is_none() && ct.get(&k.reversed()).is_none());
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
            assert_eq!(
                ct.get(&k).unwrap().0.state.expires_at(),
                now + t.tcp_established
            );
        }
        ct.track(&k, TCP_FIN | TCP_ACK, 10);
        let st = ct.get(&k).unwrap().0.state.snapshot();
        assert_eq!(st.tcp, TcpState::FinWait);
        assert_eq!(st.expires_at, 10 + t.tcp_fin_wait);
        assert_eq!(st.packets, [1 + 1 + 7 + 1, 1 + 7]);
        // After a FIN a plain ACK goes through the state machine again.
        ct.track(&r, TCP_ACK, 11);
        assert_eq!(
            ct.get(&k).unwrap().0.state.expires_at(),
            11 + t.tcp_fin_wait
        );
    }

    #[test]
    fn udp_timeout_grows_once_replied_in_either_direction() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let t = Timeouts::default();
        let k = FlowKey {
            protocol: PROTO_UDP,
            ..key([172, 211, 0, 18], 5000, [198, 51, 100, 100], 53)
        };
        ct.insert(new_conn(k), 1, 0, 0).unwrap();
        ct.track(&k, 0, 5).unwrap();
        let conn = ct.get(&k).unwrap().0;
        assert_eq!(conn.state.expires_at(), 5 + t.udp);
        assert!(!conn.state.snapshot().replied);
        ct.track(&k.reversed(), 0, 6).unwrap();
        assert_eq!(conn.state.expires_at(), 6 + t.udp_stream);
        ct.track(&k, 0, 7).unwrap();
        assert_eq!(conn.state.expires_at(), 7 + t.udp_stream);
        assert!(conn.state.snapshot().replied);
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
        let (conn, tracked) = ct
            .insert(Conn::new(k, k.reversed(), 1, [orig, reply]), 7, 0, 0)
            .unwrap();
        assert_eq!(
            tracked,
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
        ct.refresh(&conn, [moved, reply], 8);
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
        assert_eq!(conn.state.snapshot().actions, [moved, reply]);
    }

    #[test]
    fn a_reader_never_sees_half_a_refresh() {
        let k = key([172, 211, 0, 18], 5002, [198, 51, 100, 100], 80);
        let conn = Arc::new(new_conn(k));
        // Generation n goes with out port n and an SNAT port of n: a torn read would mix them.
        let action_of = |n: u64| FlowAction {
            out_port: n as PortId,
            snat: Some((Ipv4Addr::new(172, 60, 96, 2), n as u16)),
            ..action(0)
        };
        let ct = Conntrack::new(ConntrackConfig::default());
        let writer = {
            let conn = Arc::clone(&conn);
            std::thread::spawn(move || {
                for n in 1..20_000u64 {
                    ct.refresh(&conn, [action_of(n), action(1)], n);
                }
            })
        };
        for _ in 0..20_000 {
            let (a, generation) = conn.state.action(Dir::Original);
            if generation > 0 {
                assert_eq!(a, action_of(generation));
            }
        }
        writer.join().unwrap();
    }

    #[test]
    fn keys_of_one_shard_still_spread_over_the_buckets_of_its_map() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let mut low_bits = std::collections::HashSet::new();
        for port in 0..4096u16 {
            let k = key([172, 211, 0, 18], port, [198, 51, 100, 100], 80);
            if ct.shard_of(&k) == 0 {
                low_bits.insert(ct.hash_key(&k) % 64);
            }
        }
        assert!(low_bits.len() > 32, "{} distinct", low_bits.len());
    }

    #[test]
    fn a_full_table_evicts_and_counts() {
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
        assert!(ct.len() <= 64 + SHARDS, "len {}", ct.len());
        assert!(ct.stats.evicted.load(Relaxed) > 0);
    }
}

#[cfg(test)]
mod memory {
    use super::*;
    use std::mem::size_of;

    /// Memory per tracked connection: the connection itself behind its `Arc` (two counters),
    /// plus two hash-map slots (key, pointer, one control byte) at hashbrown's highest load
    /// factor, 7/8. The README states the figure this prints.
    #[test]
    fn a_connection_costs_at_most_256_bytes() {
        let conn = 2 * size_of::<usize>() + size_of::<Conn>();
        let slot = size_of::<FlowKey>() + size_of::<Arc<Conn>>() + 1;
        let per_connection = conn + (2 * slot * 8).div_ceil(7);
        println!(
            "Conn {} B, per connection {} B",
            size_of::<Conn>(),
            per_connection
        );
        assert!(
            per_connection <= 256,
            "{per_connection} bytes per connection"
        );
    }
}
