//! The tables the control plane publishes: one immutable snapshot of everything the packet path
//! consults (ports, segments, gateways and their routes, DFW rules, load-balanced services).
//!
//! Why a snapshot: workers read tables for every first packet and must never wait for the control
//! plane. The control thread compiles a complete new `Tables` and swaps it in (arc-swap); a worker
//! holds the old one until its batch ends. `generation` tells cached connections that what they
//! were built against has changed (see `conntrack`).
//!
//! The vocabulary is NSX's: a *segment* is an L2 domain with a subnet whose first address is its
//! T1 *gateway*; a *T1* routes between its segments and towards the *T0*; the T0 owns the *uplink*
//! to the physical network. Gateways and their routes are plain data here; the walk through them
//! is in `pipeline`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Index of a port in `Tables::ports`. Stable for the life of the port.
pub type PortId = u32;

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Group (multicast or broadcast) addresses have the low bit of the first octet set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts
                .next()
                .ok_or_else(|| format!("{s:?} is not a MAC address"))?;
            if part.len() != 2 {
                return Err(format!("{s:?} is not a MAC address"));
            }
            *byte =
                u8::from_str_radix(part, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?} is not a MAC address"));
        }
        Ok(MacAddr(out))
    }
}

/// An IPv4 prefix, `address/length`, with the host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Net {
    /// A prefix from an address and a length; host bits are cleared. `None` if `len > 32`.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Ipv4Net> {
        if len > 32 {
            return None;
        }
        Some(Ipv4Net {
            addr: Ipv4Addr::from(u32::from(addr) & Self::mask_of(len)),
            len,
        })
    }

    /// A /32 for one address.
    pub fn host(addr: Ipv4Addr) -> Ipv4Net {
        Ipv4Net { addr, len: 32 }
    }

    fn mask_of(len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn mask(&self) -> u32 {
        Self::mask_of(self.len)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Number of addresses in the prefix (2^(32-len)).
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }

    /// The address at `offset` from the network address, if inside the prefix.
    pub fn nth(&self, offset: u64) -> Option<Ipv4Addr> {
        (offset < self.size())
            .then(|| Ipv4Addr::from(u32::from(self.addr).wrapping_add(offset as u32)))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// True when the two prefixes share at least one address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    /// Parses `a.b.c.d/len`; a bare address is a /32. Host bits must be zero.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (
                a,
                l.parse::<u8>()
                    .map_err(|_| format!("{s:?}: bad prefix length"))?,
            ),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 prefix"))?;
        let net = Ipv4Net::new(addr, len).ok_or_else(|| format!("{s:?}: prefix length over 32"))?;
        if net.addr != addr {
            return Err(format!("{s:?} has host bits set (did you mean {net}?)"));
        }
        Ok(net)
    }
}

/// Index of a segment in `Tables::segments`.
pub type SegmentId = u32;
/// Index of a gateway (T0 or T1) in `Tables::gateways`.
pub type GatewayId = u32;
/// A DFW zone: the ports of one namespace share a zone. Rules are applied to zones.
pub type ZoneId = u32;

/// IP protocol numbers the tables match on.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// What is on the other end of a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortKind {
    /// A pod's (or VM's) vNIC on a segment. SpoofGuard pins it to `mac` and `ip`.
    Pod {
        segment: SegmentId,
        ip: Ipv4Addr,
        zone: ZoneId,
    },
    /// A gateway's uplink to the physical network; `peer_ip` is the next hop out.
    Uplink {
        gateway: GatewayId,
        addr: Ipv4Addr,
        prefix_len: u8,
        peer_ip: Ipv4Addr,
    },
}

/// A port: one TAP device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub id: PortId,
    /// For people: `ns-dev/wordpress-…`, `t0/uplink`.
    pub name: String,
    /// The MAC of the device on the other end (the pod's `eth0`, the upstream router's interface):
    /// frames we send to it carry this destination MAC.
    pub peer_mac: MacAddr,
    pub kind: PortKind,
}

/// An L2 segment with its subnet; its first usable address is the T1 gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub id: SegmentId,
    pub name: String,
    pub subnet: Ipv4Net,
    pub gateway_ip: Ipv4Addr,
    pub t1: GatewayId,
    pub zone: ZoneId,
    pub ports: Vec<PortId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayKind {
    T0,
    T1,
}

/// Where a route sends a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// A connected segment: deliver to the port that owns the destination address.
    Segment(SegmentId),
    /// Another gateway, over the T0-T1 transit link.
    Gateway(GatewayId),
    /// Out of an uplink port, to the uplink's peer.
    Uplink(PortId),
    /// An address of this gateway (its own, a VIP or an egress IP).
    Local,
}

/// Why a route exists, as the routing table shows it (the seed's router prints `C>*`, `B>*`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOrigin {
    Connected,
    Static,
    /// A T1's advertised LB VIP.
    LbVip,
    /// A T1's advertised NAT (egress) address.
    Nat,
    /// A T1's connected segment, advertised to T0.
    T1Connected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub prefix: Ipv4Net,
    pub next_hop: NextHop,
    pub origin: RouteOrigin,
}

/// A longest-prefix-match table. Gateways hold a handful of routes each (connected segments,
/// transit, default) plus one /32 per VIP and egress IP on T0, so a sorted vector with one exact
/// /32 map in front is enough; see the performance notes in the README.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    hosts: HashMap<Ipv4Addr, Route, ahash::RandomState>,
    /// A one-word filter of the addresses of `hosts` ([`source_bit`]): a destination whose bit
    /// is clear has no /32, without a hash lookup. (Routes are only ever added, so it is a
    /// function of the set of /32s, and two equal tables have equal filters.)
    host_filter: u64,
    /// Non-/32 routes, longest prefix first.
    prefixes: Vec<Route>,
}

impl RouteTable {
    pub fn insert(&mut self, route: Route) {
        if route.prefix.prefix_len() == 32 {
            self.host_filter |= source_bit(u32::from(route.prefix.network()));
            self.hosts.insert(route.prefix.network(), route);
        } else {
            self.prefixes.retain(|r| r.prefix != route.prefix);
            let at = self
                .prefixes
                .iter()
                .position(|r| r.prefix.prefix_len() < route.prefix.prefix_len())
                .unwrap_or(self.prefixes.len());
            self.prefixes.insert(at, route);
        }
    }

    pub fn lookup(&self, dst: Ipv4Addr) -> Option<&Route> {
        let host = match self.host_filter & source_bit(u32::from(dst)) {
            0 => None,
            _ => self.hosts.get(&dst),
        };
        host.or_else(|| self.prefixes.iter().find(|r| r.prefix.contains(dst)))
    }

    /// Every route, most specific first.
    pub fn routes(&self) -> Vec<Route> {
        let mut all: Vec<Route> = self.hosts.values().copied().collect();
        all.extend(self.prefixes.iter().copied());
        all.sort_by(|a, b| {
            (u32::from(a.prefix.network()), b.prefix.prefix_len())
                .cmp(&(u32::from(b.prefix.network()), a.prefix.prefix_len()))
        });
        all
    }
}

/// A T0 or T1 gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub id: GatewayId,
    pub name: String,
    pub kind: GatewayKind,
    pub routes: RouteTable,
    /// T1: this gateway's address on the T0-T1 transit link; T0: unused (see `transit_peer`).
    pub transit_ip: Ipv4Addr,
    /// T1: the T0's address on this T1's transit link (the T0 hop a traceroute shows).
    pub transit_peer: Ipv4Addr,
    /// T1: the namespace's egress IP; traffic leaving the pod pool is translated to it.
    pub egress_ip: Option<Ipv4Addr>,
    /// Destinations that are never source-translated (the pod pool: pod-to-pod is not NAT'd).
    pub no_snat: Vec<Ipv4Net>,
}

/// A backend of a load-balanced service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbAlgorithm {
    RoundRobin,
    LeastConnections,
    SourceIpHash,
    /// Consistent hash of the whole connection (Maglev): the DLB's choice.
    ConnectionHash,
}

/// One load-balanced frontend (a ClusterIP:port for the DLB, a VIP:port for the SLB).
#[derive(Debug)]
pub struct LbService {
    /// `ns-dev/wordpress:80`.
    pub name: String,
    pub protocol: u8,
    pub frontend: Backend,
    pub backends: Vec<Backend>,
    pub algorithm: LbAlgorithm,
    /// `sessionAffinity: ClientIP` with its `timeoutSeconds`: a client's new connections go to
    /// the backend it was given, while that backend stands and the client is not idle that long
    /// (remembered in `affinity::Affinity`; its first choice is the hash of its address).
    pub client_affinity: Option<u32>,
    /// SLB: translate the client's address to the T1's (NSX automap); false for
    /// `externalTrafficPolicy: Local`.
    pub snat_automap: bool,
    /// SLB: `loadBalancerSourceRanges`, the clients a VIP admits (as the client's address
    /// reaches the VIP's T1, after any egress SNAT of its own namespace); empty admits any.
    pub source_ranges: Vec<Ipv4Net>,
    /// Maglev lookup table: `backends` index per slot (empty when there are no backends).
    pub maglev: Vec<u16>,
    /// Round-robin cursor, shared by the workers.
    pub next: AtomicUsize,
    /// Live connections per backend, for least-connections (approximate across workers).
    pub active: Vec<AtomicU64>,
}

impl Clone for LbService {
    fn clone(&self) -> Self {
        LbService {
            name: self.name.clone(),
            protocol: self.protocol,
            frontend: self.frontend,
            backends: self.backends.clone(),
            algorithm: self.algorithm,
            client_affinity: self.client_affinity,
            snat_automap: self.snat_automap,
            source_ranges: self.source_ranges.clone(),
            maglev: self.maglev.clone(),
            next: AtomicUsize::new(self.next.load(Relaxed)),
            active: self
                .active
                .iter()
                .map(|a| AtomicU64::new(a.load(Relaxed)))
                .collect(),
        }
    }
}

impl LbService {
    pub fn new(
        name: String,
        protocol: u8,
        frontend: Backend,
        backends: Vec<Backend>,
        algorithm: LbAlgorithm,
    ) -> LbService {
        let maglev = maglev::build(&backends);
        let active = backends.iter().map(|_| AtomicU64::new(0)).collect();
        LbService {
            name,
            protocol,
            frontend,
            backends,
            algorithm,
            client_affinity: None,
            snat_automap: false,
            source_ranges: Vec::new(),
            maglev,
            next: AtomicUsize::new(0),
            active,
        }
    }

    /// Whether the VIP admits a client (`loadBalancerSourceRanges`; none given admits any).
    pub fn admits(&self, client: Ipv4Addr) -> bool {
        self.source_ranges.is_empty() || self.source_ranges.iter().any(|n| n.contains(client))
    }

    /// How new connections are spread: by the algorithm, except that a service with client
    /// affinity hashes the client address (its first choice for a client, then remembered).
    pub fn algorithm_in_force(&self) -> LbAlgorithm {
        if self.client_affinity.is_some() {
            LbAlgorithm::SourceIpHash
        } else {
            self.algorithm
        }
    }

    /// Picks a backend for a new connection. `hash` is what [`Self::algorithm_in_force`] hashes:
    /// the whole 5-tuple (`ConnectionHash`), the client address (`SourceIpHash`), nothing
    /// otherwise. `None` when the service has no backend.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.backends.is_empty() {
            return None;
        }
        let index = match self.algorithm_in_force() {
            LbAlgorithm::RoundRobin => self.next.fetch_add(1, Relaxed) % self.backends.len(),
            LbAlgorithm::LeastConnections => {
                // Ties go round robin, so an idle pool still spreads.
                let start = self.next.fetch_add(1, Relaxed);
                let n = self.backends.len();
                (0..n)
                    .map(|i| (start + i) % n)
                    .min_by_key(|&i| self.active[i].load(Relaxed))
                    .unwrap_or(0)
            }
            LbAlgorithm::SourceIpHash | LbAlgorithm::ConnectionHash => {
                maglev::lookup(&self.maglev, hash)?
            }
        };
        Some(index)
    }

    pub fn backend_index(&self, backend: Backend) -> Option<usize> {
        self.backends.iter().position(|b| *b == backend)
    }
}

/// Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4): each backend fills the
/// lookup table in the order of its own permutation, so removing one backend moves only the
/// slots it held (about 1/N of the connections) and adding one takes about 1/(N+1) from each.
pub mod maglev {
    use super::Backend;

    /// Table size: a prime, well above 100x a typical backend count (the paper's guidance).
    pub const TABLE_SIZE: usize = 4099;

    fn hash(backend: &Backend, seed: u64) -> u64 {
        // splitmix64 over the backend's address and port: stable across runs and workers.
        let mut z = (u64::from(u32::from(backend.ip)) << 16 | u64::from(backend.port)) ^ seed;
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn build(backends: &[Backend]) -> Vec<u16> {
        let n = backends.len();
        if n == 0 {
            return Vec::new();
        }
        let m = TABLE_SIZE as u64;
        let perms: Vec<(u64, u64)> = backends
            .iter()
            .map(|b| (hash(b, 0x5ac1_f1c0) % m, hash(b, 0x7a5f_e3d1) % (m - 1) + 1))
            .collect();
        let mut next = vec![0u64; n];
        let mut table = vec![u16::MAX; TABLE_SIZE];
        let mut filled = 0;
        while filled < TABLE_SIZE {
            for (i, &(offset, skip)) in perms.iter().enumerate() {
                let mut slot = ((offset + next[i] * skip) % m) as usize;
                while table[slot] != u16::MAX {
                    next[i] += 1;
                    slot = ((offset + next[i] * skip) % m) as usize;
                }
                table[slot] = i as u16;
                next[i] += 1;
                filled += 1;
                if filled == TABLE_SIZE {
                    break;
                }
            }
        }
        table
    }

    pub fn lookup(table: &[u16], hash: u64) -> Option<usize> {
        if table.is_empty() {
            return None;
        }
        table
            .get((hash % table.len() as u64) as usize)
            .map(|&i| usize::from(i))
    }
}

/// Key of a load-balanced frontend: protocol, address, port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrontendKey {
    pub protocol: u8,
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// DFW rule direction, seen from the protected port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Traffic arriving at a port of the zone.
    In,
    /// Traffic leaving a port of the zone.
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    Allow,
    /// Silently dropped, as NSX's default deny (the seed's pings time out).
    Drop,
    /// Dropped with a TCP RST or ICMP admin-prohibited to the sender.
    Reject,
}

/// One distributed-firewall rule. A packet matches when every given condition holds; empty
/// address lists mean "any".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DfwRule {
    /// Stable identity across table generations: the index of its hit counter.
    pub counter: usize,
    pub name: String,
    /// The policy section, as NSX groups rules (the namespace's name).
    pub section: String,
    pub zone: ZoneId,
    pub direction: Direction,
    /// Source addresses (after any SNAT of load-balanced traffic).
    pub sources: Vec<Ipv4Net>,
    /// Destination addresses as the client addressed them (a VIP before the SLB translated it):
    /// this is how "arrived through an ingress VIP" is written.
    pub original_destinations: Vec<Ipv4Net>,
    /// Destination addresses after translation (the pod's own address).
    pub destinations: Vec<Ipv4Net>,
    pub protocol: Option<u8>,
    pub dst_ports: Option<(u16, u16)>,
    pub action: RuleAction,
}

/// The facts a DFW rule is matched against.
#[derive(Debug, Clone, Copy)]
pub struct DfwQuery {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub original_dst: Ipv4Addr,
    pub protocol: u8,
    pub dst_port: u16,
}

impl DfwRule {
    pub fn matches(&self, q: &DfwQuery) -> bool {
        let any_of =
            |nets: &[Ipv4Net], ip: Ipv4Addr| nets.is_empty() || nets.iter().any(|n| n.contains(ip));
        any_of(&self.sources, q.src)
            && any_of(&self.original_destinations, q.original_dst)
            && any_of(&self.destinations, q.dst)
            && self.protocol.is_none_or(|p| p == q.protocol)
            && self
                .dst_ports
                .is_none_or(|(lo, hi)| (lo..=hi).contains(&q.dst_port))
    }
}

/// Hit counters of DFW rules, kept across table generations (the control plane hands the same
/// bank to every snapshot and keeps a rule's slot for as long as the rule exists).
#[derive(Debug, Default)]
pub struct RuleCounters {
    hits: Vec<AtomicU64>,
}

impl RuleCounters {
    pub fn with_slots(n: usize) -> RuleCounters {
        RuleCounters {
            hits: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn hit(&self, slot: usize) {
        if let Some(c) = self.hits.get(slot) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn get(&self, slot: usize) -> u64 {
        self.hits.get(slot).map_or(0, |c| c.load(Relaxed))
    }

    /// Zeroes a slot, for a rule that takes over the slot of one that is gone.
    pub fn reset(&self, slot: usize) {
        if let Some(c) = self.hits.get(slot) {
            c.store(0, Relaxed);
        }
    }

    pub fn slots(&self) -> usize {
        self.hits.len()
    }
}

/// The DFW rules of every zone, in priority order.
///
/// Lookup is a tuple-space search on the source address (Srinivasan et al., SIGCOMM 1999): a
/// rule is filed under each of its source prefixes, in one hash map per prefix length, and a
/// query probes one map per length in use. Candidates are checked in full, and the lowest
/// index (highest priority) that matches wins, so first-match semantics are kept while 10,000
/// host rules cost about what 10 do. Rules with any source are scanned in order. The index is
/// built on first use of a snapshot (tables never change after publication).
#[derive(Debug, Default)]
pub struct Dfw {
    /// `rules_in[zone]` / `rules_out[zone]`: first match wins; no match allows.
    pub rules_in: Vec<Vec<DfwRule>>,
    pub rules_out: Vec<Vec<DfwRule>>,
    index: std::sync::OnceLock<[Vec<RuleIndex>; 2]>,
}

impl Clone for Dfw {
    /// The copy is indexed afresh: whoever clones tables usually means to change them.
    fn clone(&self) -> Self {
        Dfw {
            rules_in: self.rules_in.clone(),
            rules_out: self.rules_out.clone(),
            index: Default::default(),
        }
    }
}

/// Masked source address to rule indices, ascending, for one prefix length.
type RulesBySource = HashMap<u32, Vec<u32>, ahash::RandomState>;

/// The rules of one zone and direction, filed by source prefix.
#[derive(Debug, Default)]
struct RuleIndex {
    /// Per prefix length in use: masked source address to rule indices, ascending, and a
    /// one-word filter of the addresses it holds ([`source_bit`]): a source whose bit is clear
    /// is not in the map, without a hash lookup (most lengths miss).
    by_source: Vec<(u8, u64, RulesBySource)>,
    /// Rules that match any source, ascending.
    any_source: Vec<u32>,
}

/// The bit of a masked source address in a [`RuleIndex`] filter (and of a /32 in a
/// [`RouteTable`]'s): the top six bits of a multiplicative hash.
#[inline(always)]
fn source_bit(masked: u32) -> u64 {
    1 << (masked.wrapping_mul(0x9e37_79b1) >> 26)
}

impl RuleIndex {
    fn build(rules: &[DfwRule]) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (i, rule) in rules.iter().enumerate() {
            if rule.sources.is_empty() {
                index.any_source.push(i as u32);
                continue;
            }
            for net in &rule.sources {
                let len = net.prefix_len();
                let at = match index.by_source.iter().position(|(l, _, _)| *l == len) {
                    Some(at) => at,
                    None => {
                        index.by_source.push((len, 0, HashMap::default()));
                        index.by_source.len() - 1
                    }
                };
                let (_, filter, map) = &mut index.by_source[at];
                let network = u32::from(net.network());
                *filter |= source_bit(network);
                let list = map.entry(network).or_default();
                if list.last() != Some(&(i as u32)) {
                    list.push(i as u32);
                }
            }
        }
        index
    }

    /// The index of the first rule that matches.
    fn first_match(&self, rules: &[DfwRule], q: &DfwQuery) -> Option<usize> {
        let mut best = u32::MAX;
        let src = u32::from(q.src);
        for (len, filter, map) in &self.by_source {
            let mask = if *len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(*len))
            };
            let masked = src & mask;
            if filter & source_bit(masked) == 0 {
                continue;
            }
            if let Some(list) = map.get(&masked) {
                // Ascending: the first that matches is this list's best.
                if let Some(&i) = list
                    .iter()
                    .take_while(|&&i| i < best)
                    .find(|&&i| rules[i as usize].matches(q))
                {
                    best = i;
                }
            }
        }
        if let Some(&i) = self
            .any_source
            .iter()
            .take_while(|&&i| i < best)
            .find(|&&i| rules[i as usize].matches(q))
        {
            best = i;
        }
        (best != u32::MAX).then_some(best as usize)
    }
}

impl Dfw {
    pub fn new(rules_in: Vec<Vec<DfwRule>>, rules_out: Vec<Vec<DfwRule>>) -> Dfw {
        Dfw {
            rules_in,
            rules_out,
            index: Default::default(),
        }
    }

    fn index(&self) -> &[Vec<RuleIndex>; 2] {
        self.index.get_or_init(|| {
            [
                self.rules_in.iter().map(|r| RuleIndex::build(r)).collect(),
                self.rules_out.iter().map(|r| RuleIndex::build(r)).collect(),
            ]
        })
    }

    /// The first rule of `zone` in `direction` that matches, if any.
    pub fn evaluate(&self, zone: ZoneId, direction: Direction, q: &DfwQuery) -> Option<&DfwRule> {
        let (rules, slot) = match direction {
            Direction::In => (self.rules_in.get(zone as usize)?, 0),
            Direction::Out => (self.rules_out.get(zone as usize)?, 1),
        };
        let index = self.index()[slot].get(zone as usize)?;
        index.first_match(rules, q).and_then(|i| rules.get(i))
    }

    /// The same answer by a plain scan, for checking the index.
    pub fn evaluate_linear(
        &self,
        zone: ZoneId,
        direction: Direction,
        q: &DfwQuery,
    ) -> Option<&DfwRule> {
        let rules = match direction {
            Direction::In => self.rules_in.get(zone as usize),
            Direction::Out => self.rules_out.get(zone as usize),
        }?;
        rules.iter().find(|r| r.matches(q))
    }
}

/// The complete snapshot. Built by the control plane, read by the workers, never mutated after
/// publication except through its atomic counters.
#[derive(Debug, Default)]
pub struct Tables {
    pub generation: u64,
    /// The one MAC every gateway answers with (NSX's virtual router MAC).
    pub router_mac: MacAddr,
    /// Indexed by `PortId`; `None` for a removed port's slot.
    pub ports: Vec<Option<Port>>,
    pub segments: Vec<Segment>,
    pub gateways: Vec<Gateway>,
    /// Pod (and VM) addresses to their port: delivery on a segment, ARP suppression.
    pub hosts: HashMap<Ipv4Addr, PortId, ahash::RandomState>,
    /// Every gateway-owned address (gateway IPs of segments, transit and uplink addresses,
    /// VIPs, egress IPs) and the gateway that answers for it.
    pub gateway_addrs: HashMap<Ipv4Addr, GatewayId, ahash::RandomState>,
    /// The DLB: ClusterIP frontends, applied at the source vNIC.
    pub cluster_ips: HashMap<FrontendKey, usize, ahash::RandomState>,
    /// The addresses of `cluster_ips`: a packet to another address of the service pool has no
    /// service at all, and is dropped silently (kube-proxy's "Drop traffic to unallocated
    /// ClusterIPs"), where one to a port a ClusterIP lacks is refused.
    pub cluster_ip_addrs: HashSet<Ipv4Addr, ahash::RandomState>,
    /// The SLB: VIP frontends, applied at the T1 that owns the VIP (`vip_owner`).
    pub vips: HashMap<FrontendKey, usize, ahash::RandomState>,
    pub vip_owner: HashMap<Ipv4Addr, GatewayId, ahash::RandomState>,
    /// Indexed by the values of `cluster_ips` and `vips`.
    pub services: Vec<LbService>,
    pub dfw: Dfw,
    pub rule_counters: Arc<RuleCounters>,
}

impl Tables {
    /// Puts a ClusterIP frontend in the DLB, naming service `svc` (an index of `services`).
    pub fn add_cluster_ip(&mut self, frontend: FrontendKey, svc: usize) {
        self.cluster_ip_addrs.insert(frontend.ip);
        self.cluster_ips.insert(frontend, svc);
    }

    /// The `sessionAffinity: ClientIP` timeout (s) of the service at a ClusterIP or VIP
    /// frontend; `None` when no service there has affinity.
    pub fn affinity_timeout(&self, frontend: &FrontendKey) -> Option<u32> {
        let svc = self
            .cluster_ips
            .get(frontend)
            .or_else(|| self.vips.get(frontend))?;
        self.services.get(*svc)?.client_affinity
    }

    pub fn port(&self, id: PortId) -> Option<&Port> {
        self.ports.get(id as usize).and_then(Option::as_ref)
    }

    /// The least-connections count of `backend` behind the ClusterIP or VIP `frontend`
    /// (what a load-balanced connection was opened to and translated to); `None` when the
    /// frontend or that backend is gone, and its count with it.
    pub fn lb_count(&self, frontend: &FrontendKey, backend: Backend) -> Option<&AtomicU64> {
        let svc = self
            .cluster_ips
            .get(frontend)
            .or_else(|| self.vips.get(frontend))?;
        let service = self.services.get(*svc)?;
        service.active.get(service.backend_index(backend)?)
    }

    /// Takes over the live connections `old` (the tables these replace) counted per backend,
    /// for the same frontends' same backends: least-connections does not forget, at each change
    /// of the configuration, the connections that stay open (the long ones a scaled-up
    /// deployment's new pod should be spared of).
    pub fn carry_lb_counts(&self, old: &Tables) {
        for (frontend, &svc) in self.cluster_ips.iter().chain(self.vips.iter()) {
            let Some(service) = self.services.get(svc) else {
                continue;
            };
            for (&backend, active) in service.backends.iter().zip(&service.active) {
                if let Some(n) = old.lb_count(frontend, backend) {
                    active.store(n.load(Relaxed), Relaxed);
                }
            }
        }
    }

    pub fn segment(&self, id: SegmentId) -> Option<&Segment> {
        self.segments.get(id as usize)
    }

    pub fn gateway(&self, id: GatewayId) -> Option<&Gateway> {
        self.gateways.get(id as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_lookup_is_longest_prefix_first() {
        let mut t = RouteTable::default();
        let r = |p: &str, n| Route {
            prefix: p.parse().unwrap(),
            next_hop: n,
            origin: RouteOrigin::Static,
        };
        t.insert(r("0.0.0.0/0", NextHop::Uplink(9)));
        t.insert(r("172.211.0.16/28", NextHop::Gateway(1)));
        t.insert(r("172.211.0.0/16", NextHop::Gateway(2)));
        t.insert(r("172.80.88.5/32", NextHop::Gateway(3)));
        let hop = |ip: &str| t.lookup(ip.parse().unwrap()).unwrap().next_hop;
        assert_eq!(hop("172.211.0.18"), NextHop::Gateway(1));
        assert_eq!(hop("172.211.0.130"), NextHop::Gateway(2));
        assert_eq!(hop("172.80.88.5"), NextHop::Gateway(3));
        assert_eq!(hop("172.80.88.6"), NextHop::Uplink(9));
    }

    #[test]
    fn the_dfw_index_agrees_with_a_plain_scan() {
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let rule = |counter, sources: Vec<Ipv4Net>, port: Option<(u16, u16)>, action| DfwRule {
            counter,
            name: format!("r{counter}"),
            section: "s".into(),
            zone: 0,
            direction: Direction::In,
            sources,
            original_destinations: vec![],
            destinations: vec![],
            protocol: None,
            dst_ports: port,
            action,
        };
        let mut rules = vec![
            rule(0, vec![net("10.0.0.0/8")], Some((22, 22)), RuleAction::Drop),
            rule(
                1,
                vec![net("10.1.2.3/32"), net("192.168.0.0/16")],
                None,
                RuleAction::Allow,
            ),
            rule(2, vec![], Some((80, 80)), RuleAction::Allow),
            rule(3, vec![net("10.1.0.0/16")], None, RuleAction::Reject),
        ];
        for i in 0..1000u32 {
            rules.push(rule(
                4 + i as usize,
                vec![Ipv4Net::host(Ipv4Addr::from(0xc612_0000 + i))],
                None,
                RuleAction::Drop,
            ));
        }
        rules.push(rule(2000, vec![], None, RuleAction::Drop));
        let dfw = Dfw::new(vec![rules], vec![]);
        let mut seed = 7u32;
        for _ in 0..20_000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let pick = [
                0x0a01_0203u32,
                0x0a01_0909,
                0x0a63_0000,
                0xc0a8_0101,
                0xc612_0000 + (seed >> 8) % 1200,
                seed,
            ];
            let q = DfwQuery {
                src: Ipv4Addr::from(pick[(seed % 6) as usize]),
                dst: Ipv4Addr::new(172, 211, 0, 18),
                original_dst: Ipv4Addr::new(172, 211, 0, 18),
                protocol: 6,
                dst_port: [22, 80, 443][(seed >> 4) as usize % 3],
            };
            let fast = dfw.evaluate(0, Direction::In, &q).map(|r| r.counter);
            let slow = dfw.evaluate_linear(0, Direction::In, &q).map(|r| r.counter);
            assert_eq!(fast, slow, "{q:?}");
        }
    }

    #[test]
    fn maglev_moves_few_connections_when_a_backend_goes() {
        let b = |last: u8| Backend {
            ip: Ipv4Addr::new(172, 211, 0, last),
            port: 80,
        };
        let before = maglev::build(&[b(18), b(19), b(20)]);
        let after = maglev::build(&[b(18), b(20)]);
        let mut moved_needlessly = 0;
        for slot in 0..maglev::TABLE_SIZE {
            let was = [b(18), b(19), b(20)][before[slot] as usize];
            let now = [b(18), b(20)][after[slot] as usize];
            if was != b(19) && was != now {
                moved_needlessly += 1;
            }
        }
        // Maglev is near-minimal, not perfectly minimal: allow a few percent.
        assert!(
            moved_needlessly < maglev::TABLE_SIZE / 20,
            "{moved_needlessly} slots moved"
        );
        let share = before.iter().filter(|&&i| i == 1).count();
        assert!(share > maglev::TABLE_SIZE / 4 && share < maglev::TABLE_SIZE * 5 / 12);
    }

    #[test]
    fn prefixes_parse_and_contain() {
        let net: Ipv4Net = "172.211.0.16/28".parse().unwrap();
        assert!(net.contains("172.211.0.18".parse().unwrap()));
        assert!(!net.contains("172.211.0.32".parse().unwrap()));
        assert_eq!(net.broadcast(), Ipv4Addr::new(172, 211, 0, 31));
        assert_eq!(net.nth(1), Some(Ipv4Addr::new(172, 211, 0, 17)));
        assert_eq!(net.nth(16), None);
        assert!("172.211.0.17/28".parse::<Ipv4Net>().is_err());
        assert!("0.0.0.0/0"
            .parse::<Ipv4Net>()
            .unwrap()
            .contains(Ipv4Addr::new(1, 2, 3, 4)));
    }

    #[test]
    fn macs_round_trip() {
        let mac: MacAddr = "02:ac:d3:00:00:12".parse().unwrap();
        assert_eq!(mac.to_string(), "02:ac:d3:00:00:12");
        assert!("02:ac:d3:00:00".parse::<MacAddr>().is_err());
    }
}
