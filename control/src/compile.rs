//! The compiler: desired state (`model::State`) to dataplane tables (`tables::Tables`).
//!
//! A pure function, so that what the dataplane will do can be read off a unit test without a
//! kernel. It is where the NSX topology is decided:
//! - one T0 (gateway 0) with the uplink; one T1 per namespace (gateways 1..), joined to T0 by a
//!   /31 transit link from 100.64.0.0/16 (NSX's default T0-T1 transit range);
//! - one segment per namespace and per TKG cluster, its first usable address the T1's gateway;
//! - T0 learns from every T1 its segments (`t1c`), its LB VIPs (`t1l`) and its egress IP
//!   (`t1n`), which is what NSX advertises and what the upstream router learns over eBGP;
//! - the DFW defaults of SEED-LAB.md, one section per namespace.
//!
//! Rejected: incremental updates of live tables. A lab has hundreds of objects, a full compile
//! takes microseconds, and a snapshot is trivially consistent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use pacific_dataplane::tables::{
    Backend, Dfw, DfwRule, Direction, FrontendKey, Gateway, GatewayId, GatewayKind, Ipv4Net,
    LbAlgorithm as DpAlgorithm, LbService, MacAddr, NextHop, Port, PortId, PortKind, Route,
    RouteOrigin, RouteTable, RuleAction, RuleCounters, Segment, SegmentId, Tables, PROTO_TCP,
    PROTO_UDP,
};

use crate::model::objects::{
    LbAlgorithm, NetworkPolicy, Pod, PolicyPeer, PolicyPort, PolicyRule, Protocol, ServiceType,
    State, TargetPort, LABEL_NAMESPACE_NAME,
};

/// The router MAC every gateway answers ARP with.
pub const ROUTER_MAC: MacAddr = MacAddr([0x02, 0xac, 0x00, 0x00, 0x00, 0x01]);
/// The MAC the lab gives the upstream router's end of the T0 uplink.
pub const UPLINK_PEER_MAC: MacAddr = MacAddr([0x02, 0xac, 0xcb, 0x00, 0x71, 0x01]);
/// The T0-T1 transit range (NSX's default `100.64.0.0/16`).
pub const TRANSIT_BASE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);

/// Who owns a port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortOwner {
    /// A pod (namespace, name).
    Pod(String, String),
    /// The T0 uplink.
    Uplink,
}

/// Stable DFW counter slots: a rule keeps its slot (and so its hit count) across compiles. The
/// slot of a rule that is gone (a deleted policy or namespace) is freed, and given to a new rule
/// zeroed: a rule created again counts from 0, as a new NSX rule does.
#[derive(Debug, Default)]
pub struct RuleSlots {
    slots: HashMap<String, usize>,
    /// Names given a slot during the compile under way.
    used: HashSet<String>,
    free: Vec<usize>,
    /// Slots taken from `free` during the compile under way: zeroed when it ends.
    reused: Vec<usize>,
    next: usize,
}

/// How many DFW rules can exist at once (a fixed bank of counters, shared by every snapshot).
pub const RULE_SLOTS: usize = 1 << 16;

impl RuleSlots {
    fn slot(&mut self, name: &str) -> usize {
        if !self.used.contains(name) {
            self.used.insert(name.to_string());
        }
        if let Some(&slot) = self.slots.get(name) {
            return slot;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.reused.push(slot);
                slot
            }
            None => {
                self.next += 1;
                (self.next - 1) % RULE_SLOTS
            }
        };
        self.slots.insert(name.to_string(), slot);
        slot
    }

    /// Ends a compile: frees the slots of rules it did not make, zeroes the slots it reused.
    fn finish(&mut self, counters: &RuleCounters) {
        let used = std::mem::take(&mut self.used);
        let free = &mut self.free;
        self.slots.retain(|name, slot| {
            let keep = used.contains(name);
            if !keep {
                free.push(*slot);
            }
            keep
        });
        for slot in self.reused.drain(..) {
            counters.reset(slot);
        }
    }
}

/// Stable transit-link slots: a namespace keeps its T0-T1 link (and so the T0 hop traceroute
/// shows) for as long as it exists, whatever namespaces come and go around it.
#[derive(Debug, Default)]
pub struct TransitSlots {
    slots: BTreeMap<String, u32>,
}

impl TransitSlots {
    /// Drops the slots of namespaces that are gone, then gives each new one the lowest free slot.
    fn assign<'a>(&mut self, namespaces: impl Iterator<Item = &'a str> + Clone) {
        let live: std::collections::BTreeSet<&str> = namespaces.clone().collect();
        self.slots.retain(|name, _| live.contains(name.as_str()));
        for name in namespaces {
            if !self.slots.contains_key(name) {
                let used: std::collections::BTreeSet<u32> = self.slots.values().copied().collect();
                let free = (0..).find(|i| !used.contains(i)).unwrap_or(0);
                self.slots.insert(name.to_string(), free);
            }
        }
    }

    fn get(&self, name: &str) -> u32 {
        self.slots.get(name).copied().unwrap_or(0)
    }
}

/// The T0-side and T1-side addresses of the transit link of the `index`th T1.
pub fn transit_pair(index: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(TRANSIT_BASE) + 2 * index;
    (Ipv4Addr::from(base), Ipv4Addr::from(base + 1))
}

fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}

/// Compiles `state` into tables with transit links numbered afresh (tests, benches).
pub fn compile(
    state: &State,
    ports: &BTreeMap<PortOwner, PortId>,
    generation: u64,
    counters: &Arc<RuleCounters>,
    slots: &mut RuleSlots,
) -> Tables {
    compile_with(
        state,
        ports,
        generation,
        counters,
        slots,
        &mut TransitSlots::default(),
    )
}

/// Compiles `state` into tables. `ports` says which pods have a realized port (a pod without
/// one is left out of the dataplane); `counters` is the shared DFW counter bank; `transit`
/// keeps each namespace's T0-T1 link across compiles.
pub fn compile_with(
    state: &State,
    ports: &BTreeMap<PortOwner, PortId>,
    generation: u64,
    counters: &Arc<RuleCounters>,
    slots: &mut RuleSlots,
    transit: &mut TransitSlots,
) -> Tables {
    transit.assign(state.namespaces.keys().map(String::as_str));
    let mut t = Tables {
        generation,
        router_mac: ROUTER_MAC,
        rule_counters: Arc::clone(counters),
        ..Tables::default()
    };
    let pools = &state.pools;
    let uplink_port = ports.get(&PortOwner::Uplink).copied();

    // Gateways: T0 first, then one T1 per namespace, in name order.
    let t0_id: GatewayId = 0;
    let mut t0 = Gateway {
        id: t0_id,
        name: "t0".to_string(),
        kind: GatewayKind::T0,
        routes: RouteTable::default(),
        transit_ip: state.uplink.t0_addr,
        transit_peer: state.uplink.peer_addr,
        egress_ip: None,
        no_snat: Vec::new(),
    };
    t.gateway_addrs.insert(state.uplink.t0_addr, t0_id);
    if let Some(port) = uplink_port {
        t.ports_insert(Port {
            id: port,
            name: "t0/uplink".to_string(),
            peer_mac: UPLINK_PEER_MAC,
            kind: PortKind::Uplink {
                gateway: t0_id,
                addr: state.uplink.t0_addr,
                prefix_len: state.uplink.prefix_len,
                peer_ip: state.uplink.peer_addr,
            },
        });
        t0.routes.insert(Route {
            prefix: state.uplink.subnet(),
            next_hop: NextHop::Uplink(port),
            origin: RouteOrigin::Connected,
        });
        t0.routes.insert(Route {
            prefix: any(),
            next_hop: NextHop::Uplink(port),
            origin: RouteOrigin::Static,
        });
    }
    t.gateways.push(t0);

    let mut t1_of: BTreeMap<&str, GatewayId> = BTreeMap::new();
    let mut zone_of: BTreeMap<&str, u32> = BTreeMap::new();
    for (index, ns) in state.namespaces.values().enumerate() {
        let id = index as GatewayId + 1;
        let (t0_side, t1_side) = transit_pair(transit.get(&ns.name));
        let mut t1 = Gateway {
            id,
            name: format!("t1-{}", ns.name),
            kind: GatewayKind::T1,
            routes: RouteTable::default(),
            transit_ip: t1_side,
            transit_peer: t0_side,
            egress_ip: Some(ns.egress_ip),
            no_snat: vec![pools.pods],
        };
        t1.routes.insert(Route {
            prefix: any(),
            next_hop: NextHop::Gateway(t0_id),
            origin: RouteOrigin::Static,
        });
        // ClusterIPs are handled at the vNIC; one that reaches a T1 has no service behind it
        // and must not leak to the uplink.
        t1.routes.insert(Route {
            prefix: pools.services,
            next_hop: NextHop::Local,
            origin: RouteOrigin::Static,
        });
        t1.routes.insert(Route {
            prefix: Ipv4Net::host(ns.egress_ip),
            next_hop: NextHop::Local,
            origin: RouteOrigin::Nat,
        });
        t.gateway_addrs.insert(t1_side, id);
        t.gateway_addrs.insert(t0_side, t0_id);
        t.gateway_addrs.insert(ns.egress_ip, id);
        let t0 = &mut t.gateways[t0_id as usize];
        // The /31 transit link: T0's end is local (gateway_addrs), the T1's end is behind it.
        t0.routes.insert(Route {
            prefix: Ipv4Net::new(t0_side, 31).unwrap_or(Ipv4Net::host(t1_side)),
            next_hop: NextHop::Gateway(id),
            origin: RouteOrigin::Connected,
        });
        t0.routes.insert(Route {
            prefix: Ipv4Net::host(ns.egress_ip),
            next_hop: NextHop::Gateway(id),
            origin: RouteOrigin::Nat,
        });
        t.gateways.push(t1);
        t1_of.insert(&ns.name, id);
        zone_of.insert(&ns.name, index as u32);
    }

    // Segments and their pods.
    let mut segment_of: BTreeMap<&str, SegmentId> = BTreeMap::new();
    for seg_ref in state.segments() {
        let (Some(&t1), Some(&zone)) =
            (t1_of.get(seg_ref.namespace), zone_of.get(seg_ref.namespace))
        else {
            continue;
        };
        let id = t.segments.len() as SegmentId;
        let seg = seg_ref.segment;
        t.segments.push(Segment {
            id,
            name: seg.name.clone(),
            subnet: seg.subnet,
            gateway_ip: seg.gateway,
            t1,
            zone,
            ports: Vec::new(),
        });
        t.gateway_addrs.insert(seg.gateway, t1);
        t.gateways[t1 as usize].routes.insert(Route {
            prefix: seg.subnet,
            next_hop: NextHop::Segment(id),
            origin: RouteOrigin::Connected,
        });
        t.gateways[t0_id as usize].routes.insert(Route {
            prefix: seg.subnet,
            next_hop: NextHop::Gateway(t1),
            origin: RouteOrigin::T1Connected,
        });
        segment_of.insert(&seg.name, id);
    }
    for pod in state.pods.values() {
        let Some(&port) = ports.get(&PortOwner::Pod(pod.namespace.clone(), pod.name.clone()))
        else {
            continue;
        };
        let (Some(&segment), Some(&zone)) = (
            segment_of.get(pod.segment.as_str()),
            zone_of.get(pod.namespace.as_str()),
        ) else {
            continue;
        };
        t.ports_insert(Port {
            id: port,
            name: format!("{}/{}", pod.namespace, pod.name),
            peer_mac: pod.mac,
            kind: PortKind::Pod {
                segment,
                ip: pod.ip,
                zone,
            },
        });
        t.segments[segment as usize].ports.push(port);
        t.hosts.insert(pod.ip, port);
    }

    // A pod without a port (not built yet, or on its way out) serves nothing: it is no
    // endpoint here, as kubelet keeps a pod that is not ready out of its service's endpoints.
    let portless: HashSet<Ipv4Addr> = state
        .pods
        .values()
        .filter(|p| !ports.contains_key(&PortOwner::Pod(p.namespace.clone(), p.name.clone())))
        .map(|p| p.ip)
        .collect();

    // Load balancers: ClusterIPs (DLB, at every vNIC) and VIPs (SLB, on the namespace's T1).
    for svc in state.services.values() {
        let key_ns = match &svc.cluster {
            Some(c) => format!("{}/{}", svc.namespace, c),
            None => svc.namespace.clone(),
        };
        for port in &svc.ports {
            let protocol = protocol_number(port.protocol);
            let backends: Vec<Backend> = state
                .endpoints
                .iter()
                .filter(|e| {
                    e.namespace == key_ns
                        && e.service == svc.name
                        && e.port == port.port
                        && e.protocol == port.protocol
                })
                .flat_map(|e| e.endpoints.iter())
                .filter(|e| e.ready && !portless.contains(&e.ip))
                .map(|e| Backend {
                    ip: e.ip,
                    port: e.port,
                })
                .collect();
            let label = format!("{}/{}:{}", key_ns, svc.name, port.port);
            // A guest cluster's own ClusterIP is invisible to NSX.
            if let (Some(cip), None) = (svc.cluster_ip, &svc.cluster) {
                let frontend = Backend {
                    ip: cip,
                    port: port.port,
                };
                let mut lb = LbService::new(
                    label.clone(),
                    protocol,
                    frontend,
                    backends.clone(),
                    DpAlgorithm::ConnectionHash,
                );
                lb.client_affinity = svc.session_affinity;
                t.add_cluster_ip(
                    FrontendKey {
                        protocol,
                        ip: cip,
                        port: port.port,
                    },
                    t.services.len(),
                );
                t.services.push(lb);
            }
            if let (ServiceType::LoadBalancer, Some(vip), Some(&t1)) = (
                svc.service_type,
                svc.load_balancer_ip,
                t1_of.get(svc.namespace.as_str()),
            ) {
                let algorithm = match svc.algorithm {
                    LbAlgorithm::RoundRobin => DpAlgorithm::RoundRobin,
                    LbAlgorithm::LeastConnections => DpAlgorithm::LeastConnections,
                    LbAlgorithm::SourceIpHash => DpAlgorithm::SourceIpHash,
                };
                let mut lb = LbService::new(
                    format!("{label} (VIP {vip})"),
                    protocol,
                    Backend {
                        ip: vip,
                        port: port.port,
                    },
                    backends,
                    algorithm,
                );
                lb.client_affinity = svc.session_affinity;
                lb.snat_automap = !svc.external_traffic_local;
                lb.source_ranges = svc.load_balancer_source_ranges.clone();
                t.vips.insert(
                    FrontendKey {
                        protocol,
                        ip: vip,
                        port: port.port,
                    },
                    t.services.len(),
                );
                t.services.push(lb);
                t.vip_owner.insert(vip, t1);
                t.gateway_addrs.insert(vip, t1);
                t.gateways[t1 as usize].routes.insert(Route {
                    prefix: Ipv4Net::host(vip),
                    next_hop: NextHop::Local,
                    origin: RouteOrigin::LbVip,
                });
                t.gateways[t0_id as usize].routes.insert(Route {
                    prefix: Ipv4Net::host(vip),
                    next_hop: NextHop::Gateway(t1),
                    origin: RouteOrigin::LbVip,
                });
            }
        }
    }

    t.dfw = default_dfw(state, &t, &zone_of, slots);
    slots.finish(counters);
    t
}

fn any() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).unwrap_or(Ipv4Net::host(Ipv4Addr::UNSPECIFIED))
}

/// The NSX defaults for vSphere Pods (SEED-LAB.md): per namespace, allow in from the ingress pool
/// (load-balanced traffic, also when the client address is kept), from the T1's own addresses,
/// from the namespace's own segments and from the supervisor control plane; deny every other
/// inbound connection; allow everything outbound.
fn default_dfw(
    state: &State,
    t: &Tables,
    zone_of: &BTreeMap<&str, u32>,
    slots: &mut RuleSlots,
) -> Dfw {
    let zones = state.namespaces.len();
    let mut dfw = Dfw::new(vec![Vec::new(); zones], vec![Vec::new(); zones]);
    let supervisor: Vec<Ipv4Net> = state
        .segments()
        .into_iter()
        .filter(|s| {
            state
                .namespaces
                .get(s.namespace)
                .is_some_and(|ns| ns.supervisor)
        })
        .map(|s| s.segment.subnet)
        .collect();
    for ns in state.namespaces.values() {
        let Some(&zone) = zone_of.get(ns.name.as_str()) else {
            continue;
        };
        let own: Vec<Ipv4Net> = state
            .segments()
            .into_iter()
            .filter(|s| s.namespace == ns.name)
            .map(|s| s.segment.subnet)
            .collect();
        let t1 = t
            .gateways
            .iter()
            .find(|g| g.name == format!("t1-{}", ns.name));
        let mut t1_addrs: Vec<Ipv4Net> = own
            .iter()
            .filter_map(|net| net.nth(1))
            .map(Ipv4Net::host)
            .collect();
        if let Some(g) = t1 {
            t1_addrs.push(Ipv4Net::host(g.transit_ip));
        }
        let mut rule = |name: &str,
                        direction,
                        sources: Vec<Ipv4Net>,
                        original_destinations: Vec<Ipv4Net>,
                        action| {
            let full = format!("{}-{}", ns.name, name);
            DfwRule {
                counter: slots.slot(&full),
                name: full,
                section: ns.name.clone(),
                zone,
                direction,
                sources,
                original_destinations,
                destinations: Vec::new(),
                protocol: None,
                dst_ports: None,
                action,
            }
        };
        let inbound = vec![
            rule(
                "allow-ingress-pool",
                Direction::In,
                vec![state.pools.ingress],
                vec![],
                RuleAction::Allow,
            ),
            rule(
                "allow-lb-vip",
                Direction::In,
                vec![],
                vec![state.pools.ingress],
                RuleAction::Allow,
            ),
            rule(
                "allow-t1",
                Direction::In,
                t1_addrs,
                vec![],
                RuleAction::Allow,
            ),
            rule(
                "allow-intra-namespace",
                Direction::In,
                own.clone(),
                vec![],
                RuleAction::Allow,
            ),
            rule(
                "allow-supervisor",
                Direction::In,
                supervisor.clone(),
                vec![],
                RuleAction::Allow,
            ),
            rule(
                "default-deny-ingress",
                Direction::In,
                vec![],
                vec![],
                RuleAction::Drop,
            ),
        ];
        let outbound = vec![rule(
            "allow-egress",
            Direction::Out,
            vec![],
            vec![],
            RuleAction::Allow,
        )];
        // An allow rule with no address at all would allow everything: a list that came out
        // empty (no supervisor namespace yet) means the rule has nothing to allow.
        let mut inbound = inbound;
        inbound.retain(|r| {
            r.action != RuleAction::Allow
                || !r.sources.is_empty()
                || !r.original_destinations.is_empty()
        });
        // The namespace's NetworkPolicies come first, as NCP's sections for them come before
        // the namespace's defaults.
        let (mut policy_in, mut policy_out) = policy_dfw(state, &ns.name, zone, slots);
        policy_in.extend(inbound);
        policy_out.extend(outbound);
        dfw.rules_in[zone as usize] = policy_in;
        dfw.rules_out[zone as usize] = policy_out;
    }
    dfw
}

/// A NetworkPolicy rule's allows before it is a DfwRule: addresses, protocol and ports.
struct PolicyAllow {
    sources: Vec<Ipv4Net>,
    destinations: Vec<Ipv4Net>,
    protocol: Option<u8>,
    dst_ports: Option<(u16, u16)>,
}

fn hosts<'a>(pods: impl IntoIterator<Item = &'a &'a Pod>) -> Vec<Ipv4Net> {
    let mut nets: Vec<Ipv4Net> = pods.into_iter().map(|p| Ipv4Net::host(p.ip)).collect();
    nets.sort();
    nets.dedup();
    nets
}

/// `net` without the `except` prefixes, as a list of prefixes (a DFW rule has no "not").
fn subtract(net: Ipv4Net, except: &[Ipv4Net]) -> Vec<Ipv4Net> {
    if !except.iter().any(|e| e.overlaps(&net)) {
        return vec![net];
    }
    if except
        .iter()
        .any(|e| e.contains(net.network()) && e.prefix_len() <= net.prefix_len())
    {
        return Vec::new();
    }
    let len = net.prefix_len() + 1;
    let upper = Ipv4Addr::from(u32::from(net.network()) | (1u32 << (32 - u32::from(len))));
    [Ipv4Net::new(net.network(), len), Ipv4Net::new(upper, len)]
        .into_iter()
        .flatten()
        .flat_map(|half| subtract(half, except))
        .collect()
}

/// The pods and addresses a rule's peers name, for a policy of namespace `ns`.
fn peer_set<'a>(state: &'a State, ns: &str, peers: &[PolicyPeer]) -> (Vec<&'a Pod>, Vec<Ipv4Net>) {
    let mut pods: Vec<&Pod> = Vec::new();
    let mut nets = Vec::new();
    for peer in peers {
        match peer {
            PolicyPeer::Pods {
                pod_selector,
                namespace_selector,
            } => {
                let in_scope = |pod_ns: &str| match namespace_selector {
                    None => pod_ns == ns,
                    Some(sel) => state.namespaces.get(pod_ns).is_some_and(|n| {
                        let mut labels = n.labels.clone();
                        labels.insert(LABEL_NAMESPACE_NAME.into(), n.name.clone());
                        sel.matches(&labels)
                    }),
                };
                pods.extend(state.pods.values().filter(|p| {
                    p.tkg_node.is_none()
                        && in_scope(&p.namespace)
                        && pod_selector
                            .as_ref()
                            .is_none_or(|sel| sel.matches(&p.labels))
                }));
            }
            PolicyPeer::IpBlock { cidr, except } => nets.extend(subtract(*cidr, except)),
            PolicyPeer::Ipv6Block { .. } => {}
        }
    }
    pods.sort_by_key(|p| p.ip);
    pods.dedup_by_key(|p| p.ip);
    nets.extend(hosts(&pods));
    (pods, nets)
}

/// A named port's number on each pod that has it, grouped: (port, the pods' addresses).
fn named_port(name: &str, protocol: Protocol, pods: &[&Pod]) -> BTreeMap<u16, Vec<Ipv4Net>> {
    let mut by_port: BTreeMap<u16, Vec<Ipv4Net>> = BTreeMap::new();
    for pod in pods {
        let number = pod
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
            .map(|p| p.container_port);
        if let Some(n) = number {
            by_port.entry(n).or_default().push(Ipv4Net::host(pod.ip));
        }
    }
    by_port
}

/// The allows of one ingress (`ingress == true`) or egress rule of a policy whose selected pods
/// are `selected`. An empty address list in a DfwRule means "any", so a peer list that names no
/// address (a selector that matches no pod) allows nothing, and gives no rule.
fn policy_allows(
    state: &State,
    ns: &str,
    selected: &[&Pod],
    rule: &PolicyRule,
    ingress: bool,
) -> Vec<PolicyAllow> {
    let everywhere = rule.peers.is_empty();
    let (peer_pods, peer_nets) = peer_set(state, ns, &rule.peers);
    if !everywhere && peer_nets.is_empty() {
        return Vec::new();
    }
    let own = hosts(selected);
    let (peer, mine) = if everywhere {
        (Vec::new(), own)
    } else {
        (peer_nets, own)
    };
    let allow = |peer: Vec<Ipv4Net>, mine: Vec<Ipv4Net>, protocol, dst_ports| {
        let (sources, destinations) = if ingress { (peer, mine) } else { (mine, peer) };
        PolicyAllow {
            sources,
            destinations,
            protocol,
            dst_ports,
        }
    };
    if rule.ports.is_empty() {
        return vec![allow(peer, mine, None, None)];
    }
    let all_pods: Vec<&Pod> = state
        .pods
        .values()
        .filter(|p| p.tkg_node.is_none())
        .collect();
    let mut out = Vec::new();
    for PolicyPort {
        protocol,
        port,
        end_port,
    } in &rule.ports
    {
        let number = Some(protocol_number(*protocol));
        match port {
            None => out.push(allow(peer.clone(), mine.clone(), number, None)),
            Some(TargetPort::Number(p)) => out.push(allow(
                peer.clone(),
                mine.clone(),
                number,
                Some((*p, end_port.unwrap_or(*p))),
            )),
            // A named port is the destination's: the selected pods' for ingress, the peers'
            // for egress (each pod may give the name another number).
            Some(TargetPort::Name(name)) if ingress => {
                for (p, pods) in named_port(name, *protocol, selected) {
                    out.push(allow(peer.clone(), pods, number, Some((p, p))));
                }
            }
            Some(TargetPort::Name(name)) => {
                let targets = if everywhere { &all_pods } else { &peer_pods };
                for (p, pods) in named_port(name, *protocol, targets) {
                    out.push(allow(pods, mine.clone(), number, Some((p, p))));
                }
            }
        }
    }
    out
}

/// The DFW rules of a namespace's NetworkPolicies: every allow (the union of the policies),
/// then, per policy, a drop of what is left for the pods it isolates. A policy selects vSphere
/// Pods, not the node VMs of a TKG cluster (which are pods of the namespace here), as NCP's
/// selectors are over the supervisor's pods. Ingress rules judge the
/// pod's own address (after the DLB or SLB translated a ClusterIP or VIP); egress rules the
/// destination after translation too. Pods no policy selects are left to the defaults.
fn policy_dfw(
    state: &State,
    ns: &str,
    zone: u32,
    slots: &mut RuleSlots,
) -> (Vec<DfwRule>, Vec<DfwRule>) {
    let policies: Vec<&NetworkPolicy> = state
        .network_policies
        .values()
        .filter(|p| p.namespace == ns)
        .collect();
    let mut allows = [Vec::new(), Vec::new()];
    let mut drops = [Vec::new(), Vec::new()];
    for policy in policies {
        let selected: Vec<&Pod> = state
            .pods
            .values()
            .filter(|p| {
                p.namespace == ns && p.tkg_node.is_none() && policy.pod_selector.matches(&p.labels)
            })
            .collect();
        if selected.is_empty() {
            continue;
        }
        for (d, (rules, direction, word)) in [
            (&policy.ingress, Direction::In, "ingress"),
            (&policy.egress, Direction::Out, "egress"),
        ]
        .into_iter()
        .enumerate()
        {
            let Some(rules) = rules else { continue };
            let mut make = |name: String, a: PolicyAllow, action| DfwRule {
                counter: slots.slot(&name),
                name,
                section: ns.to_string(),
                zone,
                direction,
                sources: a.sources,
                original_destinations: Vec::new(),
                destinations: a.destinations,
                protocol: a.protocol,
                dst_ports: a.dst_ports,
                action,
            };
            for (i, rule) in rules.iter().enumerate() {
                let list = policy_allows(state, ns, &selected, rule, direction == Direction::In);
                let several = list.len() > 1;
                for (j, a) in list.into_iter().enumerate() {
                    let name = if several {
                        format!("{ns}/{}/{word}-{i}.{j}", policy.name)
                    } else {
                        format!("{ns}/{}/{word}-{i}", policy.name)
                    };
                    allows[d].push(make(name, a, RuleAction::Allow));
                }
            }
            let own = hosts(&selected);
            let (sources, destinations) = match direction {
                Direction::In => (Vec::new(), own),
                Direction::Out => (own, Vec::new()),
            };
            let isolate = PolicyAllow {
                sources,
                destinations,
                protocol: None,
                dst_ports: None,
            };
            drops[d].push(make(
                format!("{ns}/{}/isolate-{word}", policy.name),
                isolate,
                RuleAction::Drop,
            ));
        }
    }
    let [mut allow_in, mut allow_out] = allows;
    let [drop_in, drop_out] = drops;
    allow_in.extend(drop_in);
    allow_out.extend(drop_out);
    (allow_in, allow_out)
}

/// Helpers on `Tables` used while building.
trait PortsInsert {
    fn ports_insert(&mut self, port: Port);
}

impl PortsInsert for Tables {
    fn ports_insert(&mut self, port: Port) {
        let index = port.id as usize;
        if self.ports.len() <= index {
            self.ports.resize(index + 1, None);
        }
        self.ports[index] = Some(port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest::parse_manifests;
    use crate::model::store::Store;
    use pacific_dataplane::tables::DfwQuery;

    fn state(yaml: &str) -> State {
        let mut store = Store::new("node-1");
        let manifests = parse_manifests(yaml, None, None).unwrap();
        store.apply(manifests, 1).unwrap();
        store.state().clone()
    }

    fn compiled(state: &State) -> Tables {
        let counters = Arc::new(RuleCounters::with_slots(RULE_SLOTS));
        compile(
            state,
            &BTreeMap::new(),
            1,
            &counters,
            &mut RuleSlots::default(),
        )
    }

    const TWO_NAMESPACES: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: blue}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: green}\n";

    #[test]
    fn without_a_supervisor_namespace_outside_traffic_is_still_denied() {
        let t = compiled(&state(TWO_NAMESPACES));
        let q = |src: [u8; 4]| DfwQuery {
            src: src.into(),
            dst: "172.211.0.2".parse().unwrap(),
            original_dst: "172.211.0.2".parse().unwrap(),
            protocol: PROTO_TCP,
            dst_port: 80,
        };
        for zone in 0..2 {
            let rule = t
                .dfw
                .evaluate(zone, Direction::In, &q([198, 51, 100, 10]))
                .unwrap();
            assert_eq!(rule.action, RuleAction::Drop, "{}", rule.name);
            assert!(t.dfw.rules_in[zone as usize]
                .iter()
                .all(|r| !r.name.ends_with("allow-supervisor")));
        }
    }

    #[test]
    fn transit_links_stay_put_when_a_namespace_sorts_in_front() {
        let mut store = Store::new("node-1");
        store
            .apply(parse_manifests(TWO_NAMESPACES, None, None).unwrap(), 1)
            .unwrap();
        let mut slots = TransitSlots::default();
        let counters = Arc::new(RuleCounters::with_slots(RULE_SLOTS));
        let before = compile_with(
            store.state(),
            &BTreeMap::new(),
            1,
            &counters,
            &mut RuleSlots::default(),
            &mut slots,
        );
        let first = "apiVersion: v1\nkind: Namespace\nmetadata: {name: aaa}\n";
        store
            .apply(parse_manifests(first, None, None).unwrap(), 2)
            .unwrap();
        let after = compile_with(
            store.state(),
            &BTreeMap::new(),
            2,
            &counters,
            &mut RuleSlots::default(),
            &mut slots,
        );
        let transit = |t: &Tables, name: &str| {
            t.gateways
                .iter()
                .find(|g| g.name == name)
                .map(|g| g.transit_ip)
        };
        assert_eq!(transit(&before, "t1-blue"), transit(&after, "t1-blue"));
        assert_eq!(transit(&before, "t1-green"), transit(&after, "t1-green"));
        assert_ne!(transit(&after, "t1-aaa"), transit(&after, "t1-blue"));
    }

    #[test]
    fn a_client_ip_timeout_reaches_the_cluster_ip_and_the_vip() {
        let t = compiled(&state(&format!(
            "{TWO_NAMESPACES}---
apiVersion: v1
kind: Service
metadata: {{name: sticky, namespace: blue}}
spec:
  type: LoadBalancer
  selector: {{app: web}}
  ports: [{{port: 80}}]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 60}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: default-timeout, namespace: blue}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80}}]
  sessionAffinity: ClientIP
---
apiVersion: v1
kind: Service
metadata: {{name: plain, namespace: blue}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80}}]
"
        )));
        let affinity: BTreeMap<&str, Option<u32>> = t
            .services
            .iter()
            .map(|s| (s.name.split(" (").next().unwrap_or(""), s.client_affinity))
            .collect();
        let vips = t
            .services
            .iter()
            .filter(|s| s.name.contains("(VIP"))
            .count();
        assert_eq!(vips, 1, "{affinity:?}");
        for s in &t.services {
            let expected = match s.name.split(" (").next() {
                Some("blue/sticky:80") => Some(60),
                Some("blue/default-timeout:80") => Some(10800),
                _ => None,
            };
            assert_eq!(s.client_affinity, expected, "{}", s.name);
        }
        assert_eq!(affinity.len(), 3, "{affinity:?}");
    }

    const POLICY_LAB: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---
apiVersion: v1
kind: Namespace
metadata: {name: bank, labels: {team: money}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}, annotations: {pacific.dev/ip: 172.211.0.2}}
spec: {containers: [{name: web}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}, annotations: {pacific.dev/ip: 172.211.0.3}}
spec: {containers: [{name: db, ports: [{name: mysql, containerPort: 3306}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: shop, labels: {app: other}, annotations: {pacific.dev/ip: 172.211.0.4}}
spec: {containers: [{name: other}]}
---
apiVersion: v1
kind: Pod
metadata: {name: teller, namespace: bank, annotations: {pacific.dev/ip: 172.211.0.20}}
spec: {containers: [{name: teller}]}
";

    fn tcp(src: &str, dst: &str, port: u16) -> DfwQuery {
        DfwQuery {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            original_dst: dst.parse().unwrap(),
            protocol: PROTO_TCP,
            dst_port: port,
        }
    }

    /// The rule that judges `q` in `zone`, by name and action.
    fn verdict(t: &Tables, zone: u32, direction: Direction, q: &DfwQuery) -> (String, RuleAction) {
        let rule = t.dfw.evaluate(zone, direction, q).unwrap();
        (rule.name.clone(), rule.action)
    }

    fn with_policy(policy: &str) -> Tables {
        compiled(&state(&format!("{POLICY_LAB}---\n{policy}")))
    }

    /// Zones are the namespaces in name order: bank 0, shop 1.
    const SHOP: u32 = 1;

    #[test]
    fn an_ingress_policy_admits_its_peers_on_the_named_port_and_isolates_the_rest() {
        let t = with_policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: mysql}]}]
",
        );
        let web_db = tcp("172.211.0.2", "172.211.0.3", 3306);
        assert_eq!(
            verdict(&t, SHOP, Direction::In, &web_db),
            ("shop/db-from-web/ingress-0".into(), RuleAction::Allow)
        );
        for q in [
            tcp("172.211.0.4", "172.211.0.3", 3306),
            tcp("172.211.0.2", "172.211.0.3", 80),
        ] {
            assert_eq!(
                verdict(&t, SHOP, Direction::In, &q),
                ("shop/db-from-web/isolate-ingress".into(), RuleAction::Drop)
            );
        }
        // other is selected by no policy: the namespace defaults judge it.
        assert_eq!(
            verdict(
                &t,
                SHOP,
                Direction::In,
                &tcp("172.211.0.2", "172.211.0.4", 80)
            )
            .0,
            "shop-allow-intra-namespace"
        );
        assert_eq!(
            verdict(
                &t,
                SHOP,
                Direction::Out,
                &tcp("172.211.0.3", "198.51.100.1", 80)
            )
            .0,
            "shop-allow-egress"
        );
    }

    #[test]
    fn a_namespace_selector_admits_another_namespace_ahead_of_the_default_deny() {
        let policy = |selector: &str| {
            with_policy(&format!(
                "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: db-from-bank, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: db}}}}
  ingress: [{{from: [{{namespaceSelector: {selector}}}]}}]
"
            ))
        };
        let teller_db = tcp("172.211.0.20", "172.211.0.3", 3306);
        let t = policy("{matchLabels: {team: money}}");
        assert_eq!(
            verdict(&t, SHOP, Direction::In, &teller_db).1,
            RuleAction::Allow
        );
        let t = policy("{matchLabels: {kubernetes.io/metadata.name: bank}}");
        assert_eq!(
            verdict(&t, SHOP, Direction::In, &teller_db).1,
            RuleAction::Allow
        );
        let t = policy("{matchExpressions: [{key: team, operator: NotIn, values: [money]}]}");
        assert_eq!(
            verdict(&t, SHOP, Direction::In, &teller_db),
            ("shop/db-from-bank/isolate-ingress".into(), RuleAction::Drop)
        );
        // The matching namespace is shop itself: web comes in.
        assert_eq!(
            verdict(
                &t,
                SHOP,
                Direction::In,
                &tcp("172.211.0.2", "172.211.0.3", 1)
            )
            .1,
            RuleAction::Allow
        );
    }

    /// The recipe users get wrong: a namespaceSelector and a podSelector in one peer (AND)
    /// admit only pods of both; as two peers (OR) they admit either.
    #[test]
    fn selectors_in_one_peer_and_as_two_peers_differ() {
        let policy = |from: &str| {
            with_policy(&format!(
                "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: db, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: db}}}}
  ingress: [{{from: {from}}}]
"
            ))
        };
        let web_db = tcp("172.211.0.2", "172.211.0.3", 3306);
        let teller_db = tcp("172.211.0.20", "172.211.0.3", 3306);
        let and = policy("[{namespaceSelector: {matchLabels: {team: money}}, podSelector: {matchLabels: {app: web}}}]");
        for q in [&web_db, &teller_db] {
            assert_eq!(verdict(&and, SHOP, Direction::In, q).1, RuleAction::Drop);
        }
        let or = policy("[{namespaceSelector: {matchLabels: {team: money}}}, {podSelector: {matchLabels: {app: web}}}]");
        for q in [&web_db, &teller_db] {
            assert_eq!(verdict(&or, SHOP, Direction::In, q).1, RuleAction::Allow);
        }
    }

    #[test]
    fn policies_add_up_and_a_selector_of_no_pod_allows_nothing() {
        let t = with_policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: nobody}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: other}}}], ports: [{port: 3300, endPort: 3310}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
",
        );
        assert_eq!(
            verdict(
                &t,
                SHOP,
                Direction::In,
                &tcp("172.211.0.4", "172.211.0.3", 3306)
            ),
            ("shop/b/ingress-0".into(), RuleAction::Allow)
        );
        assert_eq!(
            verdict(
                &t,
                SHOP,
                Direction::In,
                &tcp("172.211.0.2", "172.211.0.3", 3306)
            )
            .1,
            RuleAction::Drop
        );
        assert!(t.dfw.rules_in[SHOP as usize]
            .iter()
            .all(|r| !r.name.starts_with("shop/a/ingress")));
        // No ingress list: web takes nothing, not even from its namespace.
        assert_eq!(
            verdict(
                &t,
                SHOP,
                Direction::In,
                &tcp("172.211.0.4", "172.211.0.2", 80)
            ),
            ("shop/deny-all/isolate-ingress".into(), RuleAction::Drop)
        );
    }

    #[test]
    fn an_egress_policy_allows_its_ip_block_without_the_exceptions() {
        let t = with_policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: shop}
spec:
  podSelector: {matchLabels: {app: other}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.200/32, 198.51.100.64/26]}}]
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: mysql}]
",
        );
        let out =
            |dst: &str, port| verdict(&t, SHOP, Direction::Out, &tcp("172.211.0.4", dst, port));
        for dst in [
            "198.51.100.20",
            "198.51.100.201",
            "198.51.100.255",
            "198.51.100.63",
        ] {
            assert_eq!(out(dst, 80).1, RuleAction::Allow, "{dst}");
        }
        for dst in [
            "198.51.100.200",
            "198.51.100.64",
            "198.51.100.127",
            "203.0.113.9",
        ] {
            assert_eq!(
                out(dst, 80),
                ("shop/out/isolate-egress".into(), RuleAction::Drop),
                "{dst}"
            );
        }
        assert_eq!(
            out("172.211.0.3", 3306),
            ("shop/out/egress-1".into(), RuleAction::Allow)
        );
        assert_eq!(out("172.211.0.3", 80).1, RuleAction::Drop);
        // Only egress: other's ingress keeps the defaults; web's egress is not isolated.
        assert_eq!(
            verdict(
                &t,
                SHOP,
                Direction::In,
                &tcp("172.211.0.2", "172.211.0.4", 80)
            )
            .0,
            "shop-allow-intra-namespace"
        );
        assert_eq!(
            verdict(
                &t,
                SHOP,
                Direction::Out,
                &tcp("172.211.0.2", "203.0.113.9", 80)
            )
            .0,
            "shop-allow-egress"
        );
    }

    /// A dual-stack policy applies as Kubernetes takes it: its IPv6 ipBlock names no address
    /// Pacific carries, so a rule that has only it allows nothing (not everything), and the
    /// IPv4 block beside it still allows.
    #[test]
    fn an_ipv6_ip_block_allows_no_ipv4_address() {
        let t = with_policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: \"::/0\", except: [\"fd00::/8\"]}
  - to:
    - ipBlock: {cidr: 198.51.100.0/24}
    - ipBlock: {cidr: \"2001:db8::/32\"}
    ports: [{port: 80}]
",
        );
        let web = "172.211.0.2";
        let (rule, action) = verdict(&t, SHOP, Direction::Out, &tcp(web, "203.0.113.9", 443));
        assert_eq!(
            (rule.as_str(), action),
            ("shop/out/isolate-egress", RuleAction::Drop)
        );
        let (rule, action) = verdict(&t, SHOP, Direction::Out, &tcp(web, "198.51.100.7", 80));
        assert_eq!(
            (rule.as_str(), action),
            ("shop/out/egress-1", RuleAction::Allow)
        );
    }

    /// Kubernetes defaults policyTypes by `len(spec.egress) != 0`: an empty `egress: []`
    /// without policyTypes makes an Ingress policy, and leaves the pods' egress alone.
    #[test]
    fn an_empty_egress_list_without_policy_types_isolates_ingress_only() {
        let t = with_policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: []
  egress: []
",
        );
        assert_eq!(
            verdict(
                &t,
                SHOP,
                Direction::Out,
                &tcp("172.211.0.3", "198.51.100.1", 80)
            )
            .0,
            "shop-allow-egress"
        );
        assert_eq!(
            verdict(
                &t,
                SHOP,
                Direction::In,
                &tcp("172.211.0.2", "172.211.0.3", 3306)
            ),
            ("shop/db/isolate-ingress".into(), RuleAction::Drop)
        );
    }

    #[test]
    fn a_policy_of_every_pod_leaves_the_tkg_node_vms_alone() {
        let mut store = Store::new("node-1");
        store.apply(crate::model::seed_lab().unwrap(), 1).unwrap();
        let deny_all = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: ns-dev}\nspec: {podSelector: {}}\n";
        store
            .apply(parse_manifests(deny_all, None, None).unwrap(), 2)
            .unwrap();
        let st = store.state();
        let t = compiled(st);
        let rule = t
            .dfw
            .rules_in
            .iter()
            .flatten()
            .find(|r| r.name == "ns-dev/deny-all/isolate-ingress")
            .unwrap();
        for pod in st.pods.values().filter(|p| p.namespace == "ns-dev") {
            let isolated = rule.destinations.contains(&Ipv4Net::host(pod.ip));
            assert_eq!(isolated, pod.tkg_node.is_none(), "{}", pod.name);
        }
        assert!(rule.destinations.len() >= 3, "{:?}", rule.destinations);
    }

    #[test]
    fn a_rule_made_again_counts_from_zero_and_the_others_keep_their_hits() {
        let counters = Arc::new(RuleCounters::with_slots(RULE_SLOTS));
        let mut slots = RuleSlots::default();
        let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: shop}\nspec: {podSelector: {matchLabels: {app: db}}}\n";
        let with = state(&format!("{POLICY_LAB}---\n{policy}"));
        let without = state(POLICY_LAB);
        let counter = |t: &Tables, name: &str| {
            t.dfw
                .rules_in
                .iter()
                .flatten()
                .find(|r| r.name == name)
                .map(|r| r.counter)
        };
        let t = compile(&with, &BTreeMap::new(), 1, &counters, &mut slots);
        let isolate = counter(&t, "shop/db/isolate-ingress").unwrap();
        let deny = counter(&t, "shop-default-deny-ingress").unwrap();
        counters.hit(isolate);
        counters.hit(deny);
        let t = compile(&without, &BTreeMap::new(), 2, &counters, &mut slots);
        assert_eq!(counter(&t, "shop/db/isolate-ingress"), None);
        assert_eq!(counter(&t, "shop-default-deny-ingress"), Some(deny));
        let t = compile(&with, &BTreeMap::new(), 3, &counters, &mut slots);
        let again = counter(&t, "shop/db/isolate-ingress").unwrap();
        assert_eq!(counters.get(again), 0);
        assert_eq!(counters.get(deny), 1);
        // Every rule of the tables has a slot of its own.
        let all: Vec<usize> = t
            .dfw
            .rules_in
            .iter()
            .chain(&t.dfw.rules_out)
            .flatten()
            .map(|r| r.counter)
            .collect();
        let distinct: HashSet<usize> = all.iter().copied().collect();
        assert_eq!(all.len(), distinct.len(), "{all:?}");
    }
}
