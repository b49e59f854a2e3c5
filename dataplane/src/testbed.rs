//! A small topology built directly as tables, for the pipeline's unit tests and the criterion
//! benches: no control plane, no kernel.
//!
//! ```text
//!  ns-a (zone 0, T1 gw 1)  seg-a 172.211.0.16/28: pod a1 .18 (port 1), a2 .19 (port 2), a3 .20 (port 3)
//!  ns-b (zone 1, T1 gw 2)  seg-b 172.211.0.128/28: pod b1 .130 (port 4)
//!  T0 (gw 0), uplink port 0: 203.0.113.2/24, peer 203.0.113.1 (outside: everything else)
//!  ns-a egress IP 172.60.96.2; ClusterIP 172.96.1.90:80 -> a2:80, a3:80; VIP 172.80.88.5:80 -> a2:80
//! ```
//! plus, on request, `extra_services` more ClusterIPs (172.96.128.0 upwards, each with backend
//! a2:80) and `extra_rules` more non-matching DFW rules in front of ns-a's inbound defaults, to
//! show how the per-packet cost grows with configuration.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::tables::*;

pub const ROUTER_MAC: MacAddr = MacAddr([0x02, 0xac, 0, 0, 0, 1]);
pub const UPLINK_PEER_MAC: MacAddr = MacAddr([0x02, 0xac, 0xcb, 0, 0x71, 1]);
pub const UPLINK: PortId = 0;
pub const A1: PortId = 1;
pub const A2: PortId = 2;
pub const A3: PortId = 3;
pub const B1: PortId = 4;

pub const A1_IP: Ipv4Addr = Ipv4Addr::new(172, 211, 0, 18);
pub const A2_IP: Ipv4Addr = Ipv4Addr::new(172, 211, 0, 19);
pub const A3_IP: Ipv4Addr = Ipv4Addr::new(172, 211, 0, 20);
pub const B1_IP: Ipv4Addr = Ipv4Addr::new(172, 211, 0, 130);
pub const GW_A: Ipv4Addr = Ipv4Addr::new(172, 211, 0, 17);
pub const GW_B: Ipv4Addr = Ipv4Addr::new(172, 211, 0, 129);
pub const EGRESS_A: Ipv4Addr = Ipv4Addr::new(172, 60, 96, 2);
pub const EGRESS_B: Ipv4Addr = Ipv4Addr::new(172, 60, 96, 3);
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(172, 96, 1, 90);
pub const VIP: Ipv4Addr = Ipv4Addr::new(172, 80, 88, 5);
pub const T0_UPLINK_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const UPSTREAM_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const OUTSIDE_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
pub const T0_TRANSIT_A: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
pub const T1_TRANSIT_A: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

/// The MAC of a pod of the testbed (derived from its address, as the control plane does).
pub fn pod_mac(ip: Ipv4Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr([0x02, 0xac, o[0], o[1], o[2], o[3]])
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap_or(Ipv4Net::host(Ipv4Addr::UNSPECIFIED))
}

/// Configuration knobs of the testbed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub extra_services: usize,
    pub extra_rules: usize,
}

pub fn tables(generation: u64, opts: Options) -> Tables {
    let mut t = Tables {
        generation,
        router_mac: ROUTER_MAC,
        ..Tables::default()
    };
    t.rule_counters = Arc::new(RuleCounters::with_slots(opts.extra_rules + 64));
    let pod = |id, name: &str, segment, ip, zone| {
        Some(Port {
            id,
            name: name.to_string(),
            peer_mac: pod_mac(ip),
            kind: PortKind::Pod { segment, ip, zone },
        })
    };
    t.ports = vec![
        Some(Port {
            id: UPLINK,
            name: "t0/uplink".into(),
            peer_mac: UPLINK_PEER_MAC,
            kind: PortKind::Uplink {
                gateway: 0,
                addr: T0_UPLINK_IP,
                prefix_len: 24,
                peer_ip: UPSTREAM_IP,
            },
        }),
        pod(A1, "ns-a/a1", 0, A1_IP, 0),
        pod(A2, "ns-a/a2", 0, A2_IP, 0),
        pod(A3, "ns-a/a3", 0, A3_IP, 0),
        pod(B1, "ns-b/b1", 1, B1_IP, 1),
    ];
    t.segments = vec![
        Segment {
            id: 0,
            name: "seg-ns-a".into(),
            subnet: net("172.211.0.16/28"),
            gateway_ip: GW_A,
            t1: 1,
            zone: 0,
            ports: vec![A1, A2, A3],
        },
        Segment {
            id: 1,
            name: "seg-ns-b".into(),
            subnet: net("172.211.0.128/28"),
            gateway_ip: GW_B,
            t1: 2,
            zone: 1,
            ports: vec![B1],
        },
    ];
    for (ip, port) in [(A1_IP, A1), (A2_IP, A2), (A3_IP, A3), (B1_IP, B1)] {
        t.hosts.insert(ip, port);
    }
    let route = |p: &str, next_hop, origin| Route {
        prefix: net(p),
        next_hop,
        origin,
    };
    let mut t0 = RouteTable::default();
    for (prefix, next_hop, origin) in [
        ("0.0.0.0/0", NextHop::Uplink(UPLINK), RouteOrigin::Static),
        (
            "203.0.113.0/24",
            NextHop::Uplink(UPLINK),
            RouteOrigin::Connected,
        ),
        (
            "172.211.0.16/28",
            NextHop::Gateway(1),
            RouteOrigin::T1Connected,
        ),
        (
            "172.211.0.128/28",
            NextHop::Gateway(2),
            RouteOrigin::T1Connected,
        ),
        ("172.60.96.2/32", NextHop::Gateway(1), RouteOrigin::Nat),
        ("172.60.96.3/32", NextHop::Gateway(2), RouteOrigin::Nat),
        ("172.80.88.5/32", NextHop::Gateway(1), RouteOrigin::LbVip),
        ("100.64.0.1/32", NextHop::Gateway(1), RouteOrigin::Connected),
        ("100.64.0.3/32", NextHop::Gateway(2), RouteOrigin::Connected),
    ] {
        t0.insert(route(prefix, next_hop, origin));
    }
    let t1 = |seg: &str, segment, egress: &str| {
        let mut r = RouteTable::default();
        r.insert(route("0.0.0.0/0", NextHop::Gateway(0), RouteOrigin::Static));
        r.insert(route(
            seg,
            NextHop::Segment(segment),
            RouteOrigin::Connected,
        ));
        r.insert(route("172.96.0.0/16", NextHop::Local, RouteOrigin::Static));
        r.insert(route(egress, NextHop::Local, RouteOrigin::Nat));
        r
    };
    let pods_pool = net("172.211.0.0/16");
    t.gateways = vec![
        Gateway {
            id: 0,
            name: "t0".into(),
            kind: GatewayKind::T0,
            routes: t0,
            transit_ip: T0_UPLINK_IP,
            transit_peer: UPSTREAM_IP,
            egress_ip: None,
            no_snat: vec![],
        },
        Gateway {
            id: 1,
            name: "t1-ns-a".into(),
            kind: GatewayKind::T1,
            routes: t1("172.211.0.16/28", 0, "172.60.96.2/32"),
            transit_ip: T1_TRANSIT_A,
            transit_peer: T0_TRANSIT_A,
            egress_ip: Some(EGRESS_A),
            no_snat: vec![pods_pool],
        },
        Gateway {
            id: 2,
            name: "t1-ns-b".into(),
            kind: GatewayKind::T1,
            routes: t1("172.211.0.128/28", 1, "172.60.96.3/32"),
            transit_ip: Ipv4Addr::new(100, 64, 0, 3),
            transit_peer: Ipv4Addr::new(100, 64, 0, 2),
            egress_ip: Some(EGRESS_B),
            no_snat: vec![pods_pool],
        },
    ];
    for (ip, gw) in [
        (T0_UPLINK_IP, 0),
        (T0_TRANSIT_A, 0),
        (Ipv4Addr::new(100, 64, 0, 2), 0),
        (GW_A, 1),
        (T1_TRANSIT_A, 1),
        (EGRESS_A, 1),
        (VIP, 1),
        (GW_B, 2),
        (EGRESS_B, 2),
    ] {
        t.gateway_addrs.insert(ip, gw);
    }
    let b = |ip, port| Backend { ip, port };
    let svc = LbService::new(
        "ns-a/web:80".into(),
        PROTO_TCP,
        b(CLUSTER_IP, 80),
        vec![b(A2_IP, 80), b(A3_IP, 80)],
        LbAlgorithm::ConnectionHash,
    );
    t.add_cluster_ip(
        FrontendKey {
            protocol: PROTO_TCP,
            ip: CLUSTER_IP,
            port: 80,
        },
        0,
    );
    t.services.push(svc);
    let mut vip = LbService::new(
        "ns-a/web:80 (VIP)".into(),
        PROTO_TCP,
        b(VIP, 80),
        vec![b(A2_IP, 80)],
        LbAlgorithm::RoundRobin,
    );
    vip.snat_automap = true;
    t.vips.insert(
        FrontendKey {
            protocol: PROTO_TCP,
            ip: VIP,
            port: 80,
        },
        1,
    );
    t.vip_owner.insert(VIP, 1);
    t.services.push(vip);
    for i in 0..opts.extra_services {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 96, 128, 0)) + i as u32);
        t.add_cluster_ip(
            FrontendKey {
                protocol: PROTO_TCP,
                ip,
                port: 80,
            },
            t.services.len(),
        );
        t.services.push(LbService::new(
            format!("extra-{i}"),
            PROTO_TCP,
            b(ip, 80),
            vec![b(A2_IP, 80)],
            LbAlgorithm::ConnectionHash,
        ));
    }
    t.dfw = default_dfw(opts.extra_rules);
    t
}

/// The seed's defaults for both zones, with `extra` non-matching rules in front of ns-a's.
fn default_dfw(extra: usize) -> Dfw {
    let mut slot = 0;
    let mut rule = |zone,
                    name: &str,
                    direction,
                    sources: Vec<Ipv4Net>,
                    original_destinations: Vec<Ipv4Net>,
                    action| {
        slot += 1;
        DfwRule {
            counter: slot,
            name: name.to_string(),
            section: format!("ns-{zone}"),
            zone,
            direction,
            sources,
            original_destinations,
            destinations: vec![],
            protocol: None,
            dst_ports: None,
            action,
        }
    };
    let mut dfw = Dfw::default();
    for (zone, own, gw, transit) in [
        (0, "172.211.0.16/28", "172.211.0.17/32", "100.64.0.1/32"),
        (1, "172.211.0.128/28", "172.211.0.129/32", "100.64.0.3/32"),
    ] {
        let mut inbound = Vec::new();
        if zone == 0 {
            for i in 0..extra {
                // Sources that never match: the benchmarking range (RFC 2544), unused here.
                let src = Ipv4Net::host(Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i as u32,
                ));
                inbound.push(rule(
                    zone,
                    "extra",
                    Direction::In,
                    vec![src],
                    vec![],
                    RuleAction::Drop,
                ));
            }
        }
        inbound.push(rule(
            zone,
            "allow-ingress-pool",
            Direction::In,
            vec![net("172.80.0.0/16")],
            vec![],
            RuleAction::Allow,
        ));
        inbound.push(rule(
            zone,
            "allow-lb-vip",
            Direction::In,
            vec![],
            vec![net("172.80.0.0/16")],
            RuleAction::Allow,
        ));
        inbound.push(rule(
            zone,
            "allow-t1",
            Direction::In,
            vec![net(gw), net(transit)],
            vec![],
            RuleAction::Allow,
        ));
        inbound.push(rule(
            zone,
            "allow-intra-namespace",
            Direction::In,
            vec![net(own)],
            vec![],
            RuleAction::Allow,
        ));
        inbound.push(rule(
            zone,
            "default-deny-ingress",
            Direction::In,
            vec![],
            vec![],
            RuleAction::Drop,
        ));
        dfw.rules_in.push(inbound);
        dfw.rules_out.push(vec![rule(
            zone,
            "allow-egress",
            Direction::Out,
            vec![],
            vec![],
            RuleAction::Allow,
        )]);
    }
    dfw
}
