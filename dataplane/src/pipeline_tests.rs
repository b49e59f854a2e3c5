//! The pipeline on byte arrays: frames in, frames out, every checksum recomputed from scratch.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::*;
use crate::packet::build;
use crate::packet::checksum;
use crate::packet::parse::{parse_frame, L3, L4};
use crate::tables::{Direction, MacAddr, Tables, PROTO_TCP, PROTO_UDP};
use crate::testbed::{self, *};

struct Bed {
    pipeline: Pipeline,
    tables: Arc<ArcSwap<Tables>>,
    ctx: WorkerContext,
    pkt: PacketBuf,
    now: u64,
}

impl Bed {
    fn new() -> Bed {
        let tables = Arc::new(ArcSwap::from_pointee(testbed::tables(
            1,
            Options::default(),
        )));
        Bed {
            pipeline: Pipeline::new(Arc::clone(&tables)),
            tables,
            ctx: WorkerContext::default(),
            pkt: PacketBuf::new(),
            now: 1000,
        }
    }

    fn send(&mut self, port: PortId, frame: &[u8]) -> Verdict {
        self.pkt.set_frame(frame);
        self.now += 1;
        self.pipeline
            .process(&mut self.ctx, self.now, port, &mut self.pkt)
    }

    /// A client SYN from a1 to the ClusterIP, from `sport`: the port and address of the backend
    /// the DLB chose.
    fn open_to_cluster_ip(&mut self, sport: u16) -> (PortId, Ipv4Addr) {
        assert_eq!(
            self.send(A1, &a1_to_cluster_ip(sport, SYN)),
            Verdict::Forward
        );
        let (port, frame) = self.out();
        (port, check(&frame).dst)
    }

    /// The counter slot of the DFW rule `name` of `zone`'s rules in direction `dir`.
    fn rule_counter(&self, dir: Direction, zone: usize, name: &str) -> usize {
        let t = self.tables.load();
        let rules = match dir {
            Direction::In => &t.dfw.rules_in,
            Direction::Out => &t.dfw.rules_out,
        };
        rules[zone]
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no rule {name} in zone {zone}"))
            .counter
    }

    /// The one frame transmitted, and where.
    fn out(&self) -> (PortId, Vec<u8>) {
        assert_eq!(
            self.ctx.tx.len(),
            1,
            "expected one frame out, got {:?}",
            self.ctx.tx
        );
        let tx = self.ctx.tx[0];
        let bytes = self.ctx.buffer(&tx, &self.pkt).frame().to_vec();
        (tx.port, bytes)
    }
}

/// A TCP segment from a1 to the ClusterIP's port 80.
fn a1_to_cluster_ip(sport: u16, flags: u8) -> Vec<u8> {
    tcp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        A1_IP,
        CLUSTER_IP,
        sport,
        80,
        flags,
    )
}

/// A backend's TCP answer from its port 80 to a1's `sport`.
fn backend_to_a1(backend: Ipv4Addr, sport: u16, flags: u8) -> Vec<u8> {
    tcp(
        pod_mac(backend),
        ROUTER_MAC,
        backend,
        A1_IP,
        80,
        sport,
        flags,
    )
}

fn buf() -> Vec<u8> {
    vec![0u8; 2048]
}

fn udp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut b = buf();
    let n = build::build_udp(
        &mut b, src_mac, dst_mac, src, dst, ttl, sport, dport, b"hello",
    )
    .unwrap();
    b.truncate(n);
    b
}

fn tcp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let mut b = buf();
    let n = build::build_tcp(
        &mut b, src_mac, dst_mac, src, dst, 64, sport, dport, 1000, 0, flags, b"",
    )
    .unwrap();
    b.truncate(n);
    b
}

fn ping(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    ident: u16,
) -> Vec<u8> {
    let mut b = buf();
    let n = build::build_icmp_echo(
        &mut b,
        src_mac,
        dst_mac,
        src,
        dst,
        ttl,
        true,
        ident,
        1,
        b"abcdefgh",
    )
    .unwrap();
    b.truncate(n);
    b
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// Parses a frame and checks every checksum against a from-scratch computation.
fn check(frame: &[u8]) -> crate::packet::parse::Ipv4Info {
    let parsed = parse_frame(frame).expect("frame parses");
    let L3::Ipv4(ip) = parsed.l3 else {
        panic!("not IPv4")
    };
    let header = &frame[ip.offset..ip.offset + ip.header_len];
    assert_eq!(
        checksum::fold(checksum::sum(header, 0)),
        0xffff,
        "IP header checksum"
    );
    let l4 = &frame[ip.offset + ip.header_len..ip.offset + ip.total_len];
    match ip.protocol {
        PROTO_ICMP => assert_eq!(
            checksum::fold(checksum::sum(l4, 0)),
            0xffff,
            "ICMP checksum"
        ),
        p @ (PROTO_TCP | PROTO_UDP) => {
            let pseudo = checksum::pseudo_header_sum(ip.src, ip.dst, p, l4.len() as u16);
            assert_eq!(
                checksum::fold(checksum::sum(l4, pseudo)),
                0xffff,
                "L4 checksum"
            );
        }
        // No checksum known here (GRE, ESP...): the IP header's is all there is to check.
        _ => {}
    }
    ip
}

fn macs(frame: &[u8]) -> (MacAddr, MacAddr) {
    let p = parse_frame(frame).unwrap();
    (p.src_mac, p.dst_mac)
}

#[test]
fn arp_for_the_gateway_is_answered_with_the_router_mac() {
    let mut bed = Bed::new();
    let mut b = buf();
    let n = build::build_arp_request(&mut b, pod_mac(A1_IP), A1_IP, GW_A).unwrap();
    assert_eq!(bed.send(A1, &b[..n]), Verdict::Reply);
    let (port, frame) = bed.out();
    assert_eq!(port, A1);
    let L3::Arp(arp) = parse_frame(&frame).unwrap().l3 else {
        panic!()
    };
    assert_eq!(
        (arp.operation, arp.sender_ip, arp.sender_mac, arp.target_ip),
        (2, GW_A, ROUTER_MAC, A1_IP)
    );
}

#[test]
fn arp_is_suppressed_within_a_segment_and_never_crosses_it() {
    let mut bed = Bed::new();
    let mut b = buf();
    let n = build::build_arp_request(&mut b, pod_mac(A1_IP), A1_IP, A2_IP).unwrap();
    assert_eq!(bed.send(A1, &b[..n]), Verdict::Reply);
    let L3::Arp(arp) = parse_frame(&bed.out().1).unwrap().l3 else {
        panic!()
    };
    assert_eq!(arp.sender_mac, pod_mac(A2_IP));
    let n = build::build_arp_request(&mut b, pod_mac(A1_IP), A1_IP, B1_IP).unwrap();
    assert_eq!(bed.send(A1, &b[..n]), Verdict::Consumed);
    assert!(bed.ctx.tx.is_empty());
    // An RFC 5227 probe of A1's own address (sender 0.0.0.0): no answer, no conflict; another
    // pod probing A1's address is told it is taken.
    let probe = |from: MacAddr| {
        let mut b = buf();
        let n = build::build_arp_request(&mut b, from, Ipv4Addr::UNSPECIFIED, A1_IP).unwrap();
        b.truncate(n);
        b
    };
    assert_eq!(bed.send(A1, &probe(pod_mac(A1_IP))), Verdict::Consumed);
    assert!(bed.ctx.tx.is_empty(), "{:?}", bed.ctx.tx);
    assert_eq!(bed.send(A2, &probe(pod_mac(A2_IP))), Verdict::Reply);
    let L3::Arp(arp) = parse_frame(&bed.out().1).unwrap().l3 else {
        panic!()
    };
    assert_eq!((arp.sender_ip, arp.sender_mac), (A1_IP, pod_mac(A1_IP)));
}

#[test]
fn the_gateway_answers_ping() {
    let mut bed = Bed::new();
    assert_eq!(
        bed.send(A1, &ping(pod_mac(A1_IP), ROUTER_MAC, A1_IP, GW_A, 64, 7)),
        Verdict::Reply
    );
    let (port, frame) = bed.out();
    assert_eq!(port, A1);
    let ip = check(&frame);
    assert_eq!((ip.src, ip.dst), (GW_A, A1_IP));
    assert!(matches!(
        ip.l4,
        L4::IcmpEcho {
            icmp_type: 0,
            ident: 7,
            ..
        }
    ));
    assert_eq!(macs(&frame), (ROUTER_MAC, pod_mac(A1_IP)));
}

#[test]
fn echo_between_pods_is_routed_through_t1_with_one_ttl_step() {
    let mut bed = Bed::new();
    assert_eq!(
        bed.send(A1, &ping(pod_mac(A1_IP), ROUTER_MAC, A1_IP, A2_IP, 64, 9)),
        Verdict::Forward
    );
    let (port, frame) = bed.out();
    assert_eq!(port, A2);
    let ip = check(&frame);
    assert_eq!((ip.src, ip.dst, ip.ttl), (A1_IP, A2_IP, 63));
    assert_eq!(macs(&frame), (ROUTER_MAC, pod_mac(A2_IP)));
    // And the reply comes back on the cached path.
    assert_eq!(
        bed.send(A2, &{
            let mut b = buf();
            let n = build::build_icmp_echo(
                &mut b,
                pod_mac(A2_IP),
                ROUTER_MAC,
                A2_IP,
                A1_IP,
                64,
                false,
                9,
                1,
                b"abcdefgh",
            )
            .unwrap();
            b.truncate(n);
            b
        }),
        Verdict::Forward
    );
    assert_eq!(bed.out().0, A1);
}

#[test]
fn ttl_expiry_answers_from_each_gateway_in_turn() {
    let mut bed = Bed::new();
    // TTL 1: expires at the T1, answered from its address on the pod's segment.
    let probe = udp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        A1_IP,
        OUTSIDE_HOST,
        1,
        40000,
        33434,
    );
    assert_eq!(bed.send(A1, &probe), Verdict::Drop(DropReason::TtlExceeded));
    let (port, frame) = bed.out();
    assert_eq!(port, A1);
    let ip = check(&frame);
    assert_eq!((ip.src, ip.dst), (GW_A, A1_IP));
    let L4::IcmpError {
        icmp_type: 11,
        code: 0,
        inner,
    } = ip.l4
    else {
        panic!("{:?}", ip.l4)
    };
    // The quote is the probe as the pod sent it.
    assert_eq!(
        (inner.src, inner.dst, inner.src_port, inner.dst_port),
        (A1_IP, OUTSIDE_HOST, 40000, 33434)
    );
    // TTL 2: expires at T0, answered from T0's side of the transit link.
    let probe = udp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        A1_IP,
        OUTSIDE_HOST,
        2,
        40001,
        33435,
    );
    assert_eq!(bed.send(A1, &probe), Verdict::Drop(DropReason::TtlExceeded));
    let ip = check(&bed.out().1);
    assert_eq!(ip.src, T0_TRANSIT_A);
    // TTL 3 leaves through the uplink, translated to the egress IP, TTL 1.
    let probe = udp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        A1_IP,
        OUTSIDE_HOST,
        3,
        40002,
        33436,
    );
    assert_eq!(bed.send(A1, &probe), Verdict::Forward);
    let (port, frame) = bed.out();
    assert_eq!(port, UPLINK);
    let ip = check(&frame);
    assert_eq!((ip.src, ip.ttl), (EGRESS_A, 1));
}

/// The IP identification and flags word of a frame (Ethernet, IPv4).
fn ident_and_flags(frame: &[u8]) -> (u16, u16) {
    (
        u16::from_be_bytes([frame[18], frame[19]]),
        u16::from_be_bytes([frame[20], frame[21]]),
    )
}

#[test]
fn echo_replies_and_icmp_errors_to_a_host_count_their_ids_up_with_df_clear() {
    let mut bed = Bed::new();
    // As from Linux (`tcpdump -v`: "id 51864 ... flags [none]", then 51865 ...): each answer
    // to a1 takes the next ID of one counter, an echo reply as a time exceeded, never 0.
    let mut ids = Vec::new();
    for ttl in [64, 1, 64, 2] {
        let verdict = if ttl == 64 {
            bed.send(A1, &ping(pod_mac(A1_IP), ROUTER_MAC, A1_IP, GW_A, 64, 7))
        } else {
            let probe = udp(
                pod_mac(A1_IP),
                ROUTER_MAC,
                A1_IP,
                OUTSIDE_HOST,
                ttl,
                40000,
                33434,
            );
            bed.send(A1, &probe)
        };
        assert_ne!(verdict, Verdict::Forward);
        let frame = bed.out().1;
        check(&frame);
        let (id, flags) = ident_and_flags(&frame);
        assert_eq!(flags, 0, "DF clear, unfragmented");
        assert_ne!(id, 0);
        ids.push(id);
    }
    for pair in ids.windows(2) {
        assert_eq!(pair[1], pair[0].wrapping_add(1).max(1), "{ids:?}");
    }
}

/// The TTL of the quoted IP header in an ICMP error (Ethernet, 20-byte IP header, ICMP header).
fn quoted_ttl(frame: &[u8]) -> u8 {
    frame[14 + 20 + 8 + 8]
}

/// What the router answers from a gateway some routers in loses a TTL step at each of them on
/// the way back, as the packet it answers lost one at each on the way in: `ping` from a pod
/// saw ttl=64 from T0 (two hops in, by traceroute) and from outside ttl=63 from a VIP behind
/// T0 and the upstream router, as if each gateway were the first router on the path.
#[test]
fn answers_from_gateways_further_in_lose_a_ttl_step_per_gateway_crossed_back() {
    let mut bed = Bed::new();
    // From a pod: its T1 answers at 64, T0 (one router further) at 63.
    for (dst, ttl) in [(GW_A, 64), (T0_TRANSIT_A, 63), (T0_UPLINK_IP, 63)] {
        let echo = ping(pod_mac(A1_IP), ROUTER_MAC, A1_IP, dst, 64, 7);
        assert_eq!(bed.send(A1, &echo), Verdict::Reply, "{dst}");
        let ip = check(&bed.out().1);
        assert_eq!((ip.src, ip.dst, ip.ttl), (dst, A1_IP, ttl), "{dst}");
    }
    // TTL 1 runs out at the T1: 64, the quote as it reached the T1. TTL 2 runs out at T0: 63,
    // and the quote shows TTL 1, as it reached T0 (a kernel router quotes the same).
    for (probe_ttl, from, ttl) in [(1, GW_A, 64), (2, T0_TRANSIT_A, 63)] {
        let probe = udp(
            pod_mac(A1_IP),
            ROUTER_MAC,
            A1_IP,
            OUTSIDE_HOST,
            probe_ttl,
            41000,
            33434,
        );
        assert_eq!(bed.send(A1, &probe), Verdict::Drop(DropReason::TtlExceeded));
        let frame = bed.out().1;
        let ip = check(&frame);
        assert_eq!((ip.src, ip.ttl, quoted_ttl(&frame)), (from, ttl, 1));
        let L4::IcmpError { inner, .. } = ip.l4 else {
            panic!("{:?}", ip.l4)
        };
        assert_eq!((inner.src, inner.dst), (A1_IP, OUTSIDE_HOST));
        let quote = &frame[inner.offset..inner.offset + inner.header_len];
        assert_eq!(checksum::fold(checksum::sum(quote, 0)), 0xffff, "quote");
    }
    // From outside: T0 answers at 64, the VIP's T1 behind it at 63, and a TTL that runs out at
    // that T1 likewise.
    for (dst, ttl) in [(T0_UPLINK_IP, 64), (VIP, 63)] {
        let echo = ping(UPLINK_PEER_MAC, ROUTER_MAC, OUTSIDE_HOST, dst, 60, 8);
        assert_eq!(bed.send(UPLINK, &echo), Verdict::Reply, "{dst}");
        let ip = check(&bed.out().1);
        assert_eq!((ip.src, ip.dst, ip.ttl), (dst, OUTSIDE_HOST, ttl), "{dst}");
    }
    let syn = |ttl: u8, dport: u16| {
        let mut b = buf();
        let n = build::build_tcp(
            &mut b,
            UPLINK_PEER_MAC,
            ROUTER_MAC,
            OUTSIDE_HOST,
            VIP,
            ttl,
            42000,
            dport,
            1,
            0,
            SYN,
            b"",
        )
        .unwrap();
        b.truncate(n);
        b
    };
    assert_eq!(
        bed.send(UPLINK, &syn(2, 80)),
        Verdict::Drop(DropReason::TtlExceeded)
    );
    let frame = bed.out().1;
    let ip = check(&frame);
    assert_eq!((ip.src, ip.ttl, quoted_ttl(&frame)), (T1_TRANSIT_A, 63, 1));
    // A port the VIP does not serve: the T1 resets, one step down.
    bed.send(UPLINK, &syn(60, 81));
    let ip = check(&bed.out().1);
    assert!(matches!(ip.l4, L4::Tcp { .. }), "{:?}", ip.l4);
    assert_eq!((ip.src, ip.ttl), (VIP, 63));
}

#[test]
fn egress_snat_translates_both_ways_and_related_icmp_errors_follow() {
    let mut bed = Bed::new();
    assert_eq!(
        bed.send(
            A1,
            &udp(
                pod_mac(A1_IP),
                ROUTER_MAC,
                A1_IP,
                OUTSIDE_HOST,
                64,
                5353,
                53
            )
        ),
        Verdict::Forward
    );
    let (port, frame) = bed.out();
    assert_eq!(port, UPLINK);
    let ip = check(&frame);
    let L4::Udp {
        src_port: nat_port, ..
    } = ip.l4
    else {
        panic!()
    };
    assert_eq!((ip.src, ip.dst), (EGRESS_A, OUTSIDE_HOST));
    assert_eq!(macs(&frame), (ROUTER_MAC, UPLINK_PEER_MAC));
    // The reply to the egress IP goes back to the pod.
    let reply = udp(
        UPLINK_PEER_MAC,
        ROUTER_MAC,
        OUTSIDE_HOST,
        EGRESS_A,
        60,
        53,
        nat_port,
    );
    assert_eq!(bed.send(UPLINK, &reply), Verdict::Forward);
    let (port, frame) = bed.out();
    assert_eq!(port, A1);
    let ip = check(&frame);
    assert_eq!((ip.src, ip.dst, ip.ttl), (OUTSIDE_HOST, A1_IP, 58));
    assert!(matches!(
        ip.l4,
        L4::Udp {
            src_port: 53,
            dst_port: 5353
        }
    ));
    // A port unreachable from the outside host about the translated datagram.
    let mut original = udp(
        ROUTER_MAC,
        UPLINK_PEER_MAC,
        EGRESS_A,
        OUTSIDE_HOST,
        62,
        nat_port,
        53,
    );
    let original_ip = original.split_off(14);
    let mut b = buf();
    let n = build::build_icmp_error(
        &mut b,
        UPLINK_PEER_MAC,
        ROUTER_MAC,
        OUTSIDE_HOST,
        3,
        3,
        0,
        &original_ip,
    )
    .unwrap();
    // build_icmp_error sends to the quoted packet's source: the egress IP.
    assert_eq!(bed.send(UPLINK, &b[..n]), Verdict::Forward);
    let (port, frame) = bed.out();
    assert_eq!(port, A1);
    let ip = check(&frame);
    assert_eq!((ip.src, ip.dst), (OUTSIDE_HOST, A1_IP));
    let L4::IcmpError { inner, .. } = ip.l4 else {
        panic!()
    };
    assert_eq!(
        (inner.src, inner.src_port, inner.dst, inner.dst_port),
        (A1_IP, 5353, OUTSIDE_HOST, 53)
    );
    let inner_header = &frame[inner.offset..inner.offset + inner.header_len];
    assert_eq!(
        checksum::fold(checksum::sum(inner_header, 0)),
        0xffff,
        "inner IP header checksum"
    );
    // Forwarded, the error takes the TTL steps of the gateways it crosses, as the reply did.
    assert_eq!(ip.ttl, build::DEFAULT_TTL - 2);
    // One whose TTL runs out on the way is dropped there, neither forwarded as it came nor
    // answered (no error about an error: RFC 1812 4.3.2.7).
    let mut late = b[..n].to_vec();
    late[14 + 8] = 2;
    crate::packet::parse::tests::fix_ip_checksum(&mut late);
    assert_eq!(
        bed.send(UPLINK, &late),
        Verdict::Drop(DropReason::TtlExceeded)
    );
    assert!(bed.ctx.tx.is_empty(), "{:?}", bed.ctx.tx);
}

/// An ICMP error is related to a connection only when it comes in by the port the quoted packet
/// left by. A pod of another namespace that quotes a1's flow to the outside (its translated
/// form, addressed to the egress IP) got its port unreachable delivered to a1, past the DFW
/// that keeps ns-b from ns-a: a1's connected UDP socket failed with "connection refused".
#[test]
fn an_icmp_error_from_elsewhere_than_the_quoted_packet_went_is_not_related() {
    let mut bed = Bed::new();
    let question = udp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        A1_IP,
        OUTSIDE_HOST,
        64,
        41999,
        5300,
    );
    assert_eq!(bed.send(A1, &question), Verdict::Forward);
    let (port, frame) = bed.out();
    assert_eq!(port, UPLINK);
    let forged = |from_mac, from_ip| {
        let mut b = buf();
        let n =
            build::build_icmp_error(&mut b, from_mac, ROUTER_MAC, from_ip, 3, 3, 0, &frame[14..])
                .unwrap();
        b.truncate(n);
        b
    };
    let verdict = bed.send(B1, &forged(pod_mac(B1_IP), B1_IP));
    assert_ne!(verdict, Verdict::Forward, "b1's error was passed on");
    assert!(
        bed.ctx.tx.iter().all(|tx| tx.port != A1),
        "b1's error reached a1: {:?}",
        bed.ctx.tx
    );
    // The same error from the outside, where the datagram went, is a1's.
    assert_eq!(
        bed.send(UPLINK, &forged(UPLINK_PEER_MAC, OUTSIDE_HOST)),
        Verdict::Forward
    );
    let (port, frame) = bed.out();
    assert_eq!(port, A1);
    assert_eq!(check(&frame).dst, A1_IP);
}

/// Two pods of one namespace sending GRE to the same host would share one tuple on the wire
/// (egress IP, host, GRE): nothing in a reply could tell whose it is. The second is dropped as
/// `nat-port-exhausted` while the first lasts, as Linux's NAT drops a tuple it cannot make
/// unique; it went out under a "port" that is not on the wire, and the host's answers and
/// errors about it reached the first pod.
#[test]
fn a_second_pod_s_portless_flow_to_the_same_host_is_refused_not_mistaken() {
    const GRE: u8 = 47;
    let mut bed = Bed::new();
    let gre_from = |mac, ip| {
        let mut gre = udp(mac, ROUTER_MAC, ip, OUTSIDE_HOST, 64, 0, 0x0800);
        gre[23] = GRE;
        fix_header_checksum(&mut gre);
        gre
    };
    assert_eq!(
        bed.send(A1, &gre_from(pod_mac(A1_IP), A1_IP)),
        Verdict::Forward
    );
    assert_eq!(
        bed.send(A2, &gre_from(pod_mac(A2_IP), A2_IP)),
        Verdict::Drop(DropReason::NatExhausted)
    );
    assert!(bed.ctx.tx.is_empty(), "{:?}", bed.ctx.tx);
    // The first pod's GRE still goes, and its host's answer comes back to it.
    assert_eq!(
        bed.send(A1, &gre_from(pod_mac(A1_IP), A1_IP)),
        Verdict::Forward
    );
    let mut answer = udp(
        UPLINK_PEER_MAC,
        ROUTER_MAC,
        OUTSIDE_HOST,
        EGRESS_A,
        60,
        0,
        0x0800,
    );
    answer[23] = GRE;
    fix_header_checksum(&mut answer);
    assert_eq!(bed.send(UPLINK, &answer), Verdict::Forward);
    assert_eq!(bed.out().0, A1);
}

/// A protocol without ports (GRE here; ESP, SCTP as Pacific tracks it) is translated by address
/// alone, and so is an ICMP error about it: a frag-needed from the upstream router about a GRE
/// packet reaches the pod that sent it (a GRE tunnel through SNAT learns its path MTU), as Linux's
/// conntrack relates errors to its address-only connections. It was taken for an error about
/// nothing tracked and never reached the pod.
#[test]
fn icmp_errors_about_a_portless_protocol_follow_its_snat_back() {
    const GRE: u8 = 47;
    let mut bed = Bed::new();
    let mut gre = udp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        A1_IP,
        OUTSIDE_HOST,
        64,
        0,
        0x0800,
    );
    gre[23] = GRE;
    fix_header_checksum(&mut gre);
    assert_eq!(bed.send(A1, &gre), Verdict::Forward);
    let (port, frame) = bed.out();
    assert_eq!(port, UPLINK);
    let ip = check(&frame);
    assert_eq!((ip.protocol, ip.src, ip.dst), (GRE, EGRESS_A, OUTSIDE_HOST));
    // The upstream router's next link is smaller: need to frag, quoting the packet as it left.
    let mut b = buf();
    let n = build::build_icmp_error(
        &mut b,
        UPLINK_PEER_MAC,
        ROUTER_MAC,
        UPSTREAM_IP,
        3,
        4,
        1400,
        &frame[14..],
    )
    .unwrap();
    assert_eq!(bed.send(UPLINK, &b[..n]), Verdict::Forward);
    let (port, frame) = bed.out();
    assert_eq!(
        port, A1,
        "the error goes back to the pod that sent the GRE packet"
    );
    let ip = check(&frame);
    assert_eq!((ip.src, ip.dst), (UPSTREAM_IP, A1_IP));
    assert_eq!(macs(&frame), (ROUTER_MAC, pod_mac(A1_IP)));
    let L4::IcmpError { inner, .. } = ip.l4 else {
        panic!("not an ICMP error: {:?}", ip.l4)
    };
    assert_eq!(
        (inner.protocol, inner.src, inner.dst),
        (GRE, A1_IP, OUTSIDE_HOST)
    );
    let inner_header = &frame[inner.offset..inner.offset + inner.header_len];
    assert_eq!(
        checksum::fold(checksum::sum(inner_header, 0)),
        0xffff,
        "inner IP header checksum"
    );
}

/// A namespace whose egress IP changes: its flows leave from the new address, not on with the
/// old one, which the upstream router no longer routes back (and another namespace may get).
#[test]
fn a_flow_follows_its_namespaces_new_egress_ip() {
    let mut bed = Bed::new();
    let datagram = udp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        A1_IP,
        OUTSIDE_HOST,
        64,
        5353,
        53,
    );
    assert_eq!(bed.send(A1, &datagram), Verdict::Forward);
    assert_eq!(check(&bed.out().1).src, EGRESS_A);
    let new_egress = Ipv4Addr::new(172, 60, 96, 9);
    let mut t = testbed::tables(2, Options::default());
    t.gateways[1].egress_ip = Some(new_egress);
    t.gateway_addrs.remove(&EGRESS_A);
    t.gateway_addrs.insert(new_egress, 1);
    bed.tables.store(Arc::new(t));
    assert_eq!(bed.send(A1, &datagram), Verdict::Forward);
    let (port, frame) = bed.out();
    assert_eq!(port, UPLINK);
    assert_eq!(check(&frame).src, new_egress);
}

#[test]
fn pod_to_pod_is_never_translated() {
    let mut bed = Bed::new();
    // ns-a to ns-b is routed (and denied by the DFW, see below); within ns-a it is delivered as is.
    assert_eq!(
        bed.send(
            A1,
            &tcp(pod_mac(A1_IP), ROUTER_MAC, A1_IP, A2_IP, 40000, 80, SYN)
        ),
        Verdict::Forward
    );
    let ip = check(&bed.out().1);
    assert_eq!((ip.src, ip.dst), (A1_IP, A2_IP));
}

#[test]
fn the_dfw_denies_outside_and_other_namespaces_and_counts_it() {
    let mut bed = Bed::new();
    let deny_slot = bed.rule_counter(Direction::In, 0, "default-deny-ingress");
    let syn = tcp(
        UPLINK_PEER_MAC,
        ROUTER_MAC,
        OUTSIDE_HOST,
        A1_IP,
        40000,
        80,
        SYN,
    );
    assert_eq!(bed.send(UPLINK, &syn), Verdict::Drop(DropReason::DfwDeny));
    assert!(bed.ctx.tx.is_empty(), "denied means silently dropped");
    let from_b = tcp(pod_mac(B1_IP), ROUTER_MAC, B1_IP, A1_IP, 40000, 80, SYN);
    assert_eq!(bed.send(B1, &from_b), Verdict::Drop(DropReason::DfwDeny));
    assert_eq!(bed.tables.load().rule_counters.get(deny_slot), 2);
    // Outbound is allowed, and so is the reply of an allowed connection.
    assert_eq!(
        bed.send(
            A1,
            &tcp(pod_mac(A1_IP), ROUTER_MAC, A1_IP, B1_IP, 41000, 80, SYN)
        ),
        Verdict::Drop(DropReason::DfwDeny)
    );
    assert_eq!(
        bed.send(
            A1,
            &tcp(
                pod_mac(A1_IP),
                ROUTER_MAC,
                A1_IP,
                OUTSIDE_HOST,
                41000,
                80,
                SYN
            )
        ),
        Verdict::Forward
    );
    let ip = check(&bed.out().1);
    let L4::Tcp { src_port, .. } = ip.l4 else {
        panic!()
    };
    let synack = tcp(
        UPLINK_PEER_MAC,
        ROUTER_MAC,
        OUTSIDE_HOST,
        EGRESS_A,
        80,
        src_port,
        SYN | ACK,
    );
    assert_eq!(bed.send(UPLINK, &synack), Verdict::Forward);
    assert_eq!(bed.out().0, A1);
}

#[test]
fn the_dlb_spreads_a_cluster_ip_and_translates_replies_back() {
    let mut bed = Bed::new();
    let mut seen = std::collections::BTreeSet::new();
    for sport in 40000..40040u16 {
        assert_eq!(
            bed.send(
                A1,
                &tcp(
                    pod_mac(A1_IP),
                    ROUTER_MAC,
                    A1_IP,
                    CLUSTER_IP,
                    sport,
                    80,
                    SYN
                )
            ),
            Verdict::Forward
        );
        let (port, frame) = bed.out();
        let ip = check(&frame);
        assert_eq!(ip.src, A1_IP);
        assert!(matches!(ip.l4, L4::Tcp { dst_port: 80, .. }));
        seen.insert((port, ip.dst));
        // The backend's SYN-ACK comes back from the ClusterIP.
        let synack = tcp(
            pod_mac(ip.dst),
            ROUTER_MAC,
            ip.dst,
            A1_IP,
            80,
            sport,
            SYN | ACK,
        );
        assert_eq!(bed.send(port, &synack), Verdict::Forward);
        let (back, frame) = bed.out();
        assert_eq!(back, A1);
        let ip = check(&frame);
        assert_eq!(ip.src, CLUSTER_IP);
    }
    assert_eq!(seen, [(A2, A2_IP), (A3, A3_IP)].into_iter().collect());
}

#[test]
fn the_slb_sends_vip_traffic_to_a_member_with_automap_snat() {
    let mut bed = Bed::new();
    let syn = tcp(
        UPLINK_PEER_MAC,
        ROUTER_MAC,
        OUTSIDE_HOST,
        VIP,
        40000,
        80,
        SYN,
    );
    assert_eq!(bed.send(UPLINK, &syn), Verdict::Forward);
    let (port, frame) = bed.out();
    assert_eq!(port, A2);
    let ip = check(&frame);
    assert_eq!((ip.src, ip.dst), (GW_A, A2_IP));
    let (port, ip) = a2_answers_the_t1_address(&mut bed, &ip);
    assert_eq!(port, UPLINK);
    assert_eq!((ip.src, ip.dst), (VIP, OUTSIDE_HOST));
    assert!(matches!(
        ip.l4,
        L4::Tcp {
            src_port: 80,
            dst_port: 40000,
            ..
        }
    ));
}

/// A2's SYN-ACK to the T1's address (automap or hairpin SNAT made `syn` come from there):
/// where it goes, and as what.
fn a2_answers_the_t1_address(
    bed: &mut Bed,
    syn: &crate::packet::parse::Ipv4Info,
) -> (PortId, crate::packet::parse::Ipv4Info) {
    let L4::Tcp { src_port, .. } = syn.l4 else {
        panic!("not TCP: {syn:?}")
    };
    let synack = tcp(
        pod_mac(A2_IP),
        ROUTER_MAC,
        A2_IP,
        GW_A,
        80,
        src_port,
        SYN | ACK,
    );
    assert_eq!(bed.send(A2, &synack), Verdict::Forward);
    let (port, frame) = bed.out();
    (port, check(&frame))
}

/// `externalTrafficPolicy: Local` keeps the client's address, except for a member that reaches
/// its own VIP and is picked: it would see a packet from itself, so the T1 stands in.
#[test]
fn a_member_reaching_its_own_local_vip_is_answered_through_a_hairpin() {
    let mut bed = Bed::new();
    let mut t = testbed::tables(2, Options::default());
    for svc in t.services.iter_mut().filter(|s| s.snat_automap) {
        svc.snat_automap = false;
    }
    bed.tables.store(Arc::new(t));
    // From another pod: the member sees the client itself.
    let syn = tcp(pod_mac(A1_IP), ROUTER_MAC, A1_IP, VIP, 40000, 80, SYN);
    assert_eq!(bed.send(A1, &syn), Verdict::Forward);
    let (port, frame) = bed.out();
    assert_eq!(port, A2);
    assert_eq!((check(&frame).src, check(&frame).dst), (A1_IP, A2_IP));
    // From the member itself: the T1's address on its segment, and the answer finds its way.
    let syn = tcp(pod_mac(A2_IP), ROUTER_MAC, A2_IP, VIP, 40001, 80, SYN);
    assert_eq!(bed.send(A2, &syn), Verdict::Forward);
    let (port, frame) = bed.out();
    assert_eq!(port, A2);
    let ip = check(&frame);
    assert_eq!((ip.src, ip.dst), (GW_A, A2_IP));
    let (port, ip) = a2_answers_the_t1_address(&mut bed, &ip);
    assert_eq!(port, A2);
    assert_eq!((ip.src, ip.dst), (VIP, A2_IP));
    assert!(matches!(
        ip.l4,
        L4::Tcp {
            src_port: 80,
            dst_port: 40001,
            ..
        }
    ));
}

#[test]
fn spoofguard_drops_foreign_sources() {
    let mut bed = Bed::new();
    let spoofed = ping(pod_mac(A1_IP), ROUTER_MAC, B1_IP, A2_IP, 64, 1);
    assert_eq!(
        bed.send(A1, &spoofed),
        Verdict::Drop(DropReason::SpoofedSource)
    );
    let posing_as_ingress = ping(
        pod_mac(A1_IP),
        ROUTER_MAC,
        Ipv4Addr::new(172, 80, 0, 99),
        B1_IP,
        64,
        1,
    );
    assert_eq!(
        bed.send(A1, &posing_as_ingress),
        Verdict::Drop(DropReason::SpoofedSource)
    );
    let wrong_mac = ping(pod_mac(A2_IP), ROUTER_MAC, A1_IP, A2_IP, 64, 1);
    assert_eq!(
        bed.send(A1, &wrong_mac),
        Verdict::Drop(DropReason::SpoofedSource)
    );
}

#[test]
fn malformed_and_foreign_frames_are_dropped_and_named() {
    let mut bed = Bed::new();
    let good = ping(pod_mac(A1_IP), ROUTER_MAC, A1_IP, A2_IP, 64, 1);
    assert_eq!(
        bed.send(A1, &good[..20]),
        Verdict::Drop(DropReason::Malformed)
    );
    let mut v6 = good.clone();
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_eq!(bed.send(A1, &v6), Verdict::Drop(DropReason::Ipv6));
    assert_eq!(bed.send(99, &good), Verdict::Drop(DropReason::UnknownPort));
}

/// The test bed's tables (generation 2) with its ClusterIP service left without endpoints.
fn tables_with_an_empty_cluster_ip() -> Tables {
    let mut t = testbed::tables(2, Options::default());
    t.services[0] = crate::tables::LbService::new(
        "empty".into(),
        PROTO_TCP,
        crate::tables::Backend {
            ip: CLUSTER_IP,
            port: 80,
        },
        vec![],
        crate::tables::LbAlgorithm::ConnectionHash,
    );
    t
}

#[test]
fn a_cluster_ip_without_backends_refuses_at_once() {
    let mut bed = Bed::new();
    bed.tables
        .store(Arc::new(tables_with_an_empty_cluster_ip()));
    let syn = tcp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        A1_IP,
        CLUSTER_IP,
        40000,
        80,
        SYN,
    );
    assert_eq!(bed.send(A1, &syn), Verdict::Drop(DropReason::NoBackend));
    let (port, frame) = bed.out();
    assert_eq!(port, A1);
    assert_reset_from_the_cluster_ip(&frame);
}

/// A port the ClusterIP's service lacks is refused, as kube-proxy rejects it; an address of the
/// service pool that no ClusterIP has is dropped without a word and counted, as kube-proxy's
/// nftables mode drops it ("Drop traffic to unallocated ClusterIPs").
#[test]
fn a_cluster_ip_refuses_a_port_it_lacks_and_an_unallocated_one_is_silent() {
    let mut bed = Bed::new();
    let to =
        |dst: Ipv4Addr, dport: u16| tcp(pod_mac(A1_IP), ROUTER_MAC, A1_IP, dst, 40000, dport, SYN);
    assert_eq!(bed.send(A1, &to(CLUSTER_IP, 81)), Verdict::Reply);
    let (port, frame) = bed.out();
    assert_eq!(port, A1);
    assert_reset_from_the_cluster_ip(&frame);
    let unallocated = Ipv4Addr::new(172, 96, 9, 9);
    assert_eq!(
        bed.send(A1, &to(unallocated, 80)),
        Verdict::Drop(DropReason::NoService)
    );
    assert!(bed.ctx.tx.is_empty(), "{:?}", bed.ctx.tx);
    let echo = ping(pod_mac(A1_IP), ROUTER_MAC, A1_IP, unallocated, 64, 7);
    assert_eq!(bed.send(A1, &echo), Verdict::Drop(DropReason::NoService));
    assert!(bed.ctx.tx.is_empty(), "{:?}", bed.ctx.tx);
}

/// The frame is a TCP reset from the ClusterIP to a1.
fn assert_reset_from_the_cluster_ip(frame: &[u8]) {
    let ip = check(frame);
    assert_eq!((ip.src, ip.dst), (CLUSTER_IP, A1_IP));
    let L4::Tcp { flags, .. } = ip.l4 else {
        panic!("not TCP: {:?}", ip.l4)
    };
    assert_ne!(flags & 0x04, 0, "RST");
}

#[test]
fn a_dfw_change_applies_to_existing_connections_and_nat_bindings_survive_others() {
    let mut bed = Bed::new();
    // An allowed connection a2 -> a1 (intra-namespace).
    assert_eq!(
        bed.send(
            A2,
            &tcp(pod_mac(A2_IP), ROUTER_MAC, A2_IP, A1_IP, 40000, 80, SYN)
        ),
        Verdict::Forward
    );
    // An egress connection with a NAT binding.
    let egress = udp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        A1_IP,
        OUTSIDE_HOST,
        64,
        7000,
        53,
    );
    assert_eq!(bed.send(A1, &egress), Verdict::Forward);
    let L4::Udp {
        src_port: bound, ..
    } = check(&bed.out().1).l4
    else {
        panic!()
    };
    // New tables: ns-a's intra-namespace rule now denies.
    let mut t = testbed::tables(2, Options::default());
    for r in t.dfw.rules_in[0]
        .iter_mut()
        .filter(|r| r.name == "allow-intra-namespace")
    {
        r.action = crate::tables::RuleAction::Drop;
    }
    bed.tables.store(Arc::new(t));
    assert_eq!(
        bed.send(
            A2,
            &tcp(pod_mac(A2_IP), ROUTER_MAC, A2_IP, A1_IP, 40000, 80, ACK)
        ),
        Verdict::Drop(DropReason::DfwDeny)
    );
    assert_eq!(bed.send(A1, &egress), Verdict::Forward);
    let L4::Udp { src_port, .. } = check(&bed.out().1).l4 else {
        panic!()
    };
    assert_eq!(src_port, bound);
}

#[test]
fn a_checksum_partial_frame_keeps_its_partial_sum_consistent_through_snat() {
    let mut bed = Bed::new();
    let frame = tcp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        A1_IP,
        OUTSIDE_HOST,
        40000,
        80,
        SYN,
    );
    // Turn it into what a TAP with offloads hands over: NEEDS_CSUM, the checksum field holding
    // the folded pseudo-header sum only.
    let mut f = frame.clone();
    let l4 = 14 + 20;
    let len = (f.len() - l4) as u16;
    let partial = checksum::fold(checksum::pseudo_header_sum(
        A1_IP,
        OUTSIDE_HOST,
        PROTO_TCP,
        len,
    ));
    f[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
    bed.pkt.set_frame(&f);
    crate::packet::vnet::VnetHeader {
        flags: 1,
        gso_type: 0,
        hdr_len: 0,
        gso_size: 0,
        csum_start: l4 as u16,
        csum_offset: 16,
    }
    .write(&mut bed.pkt.buf[..VNET_HDR_LEN]);
    bed.now += 1;
    assert_eq!(
        bed.pipeline
            .process(&mut bed.ctx, bed.now, A1, &mut bed.pkt),
        Verdict::Forward
    );
    let out = bed.pkt.frame().to_vec();
    let ip = crate::packet::parse::parse_frame(&out).unwrap();
    let L3::Ipv4(ip) = ip.l3 else { panic!() };
    assert_eq!(ip.src, EGRESS_A);
    let field = u16::from_be_bytes([out[l4 + 16], out[l4 + 17]]);
    let expect = checksum::fold(checksum::pseudo_header_sum(
        EGRESS_A,
        OUTSIDE_HOST,
        PROTO_TCP,
        len,
    ));
    assert_eq!(field, expect, "partial sum follows the address change only");
}

#[test]
fn switched_frames_are_tracked_and_judged_once_per_connection() {
    let mut bed = Bed::new();
    let allow_slot = bed.rule_counter(Direction::In, 0, "allow-intra-namespace");
    // a1 talks to a2 directly (a2's MAC, learned by ARP suppression): no TTL step, MACs kept.
    for _ in 0..5 {
        let frame = udp(pod_mac(A1_IP), pod_mac(A2_IP), A1_IP, A2_IP, 64, 9000, 9001);
        assert_eq!(bed.send(A1, &frame), Verdict::Forward);
        let (port, out) = bed.out();
        assert_eq!(port, A2);
        assert_eq!(out, frame);
    }
    let reply = udp(pod_mac(A2_IP), pod_mac(A1_IP), A2_IP, A1_IP, 64, 9001, 9000);
    assert_eq!(bed.send(A2, &reply), Verdict::Forward);
    assert_eq!(bed.out().0, A1);
    assert_eq!(
        bed.tables.load().rule_counters.get(allow_slot),
        1,
        "one DFW decision per connection"
    );
    // A frame for a MAC that is not on the segment goes nowhere.
    let stray = udp(pod_mac(A1_IP), pod_mac(B1_IP), A1_IP, B1_IP, 64, 9000, 9001);
    assert_eq!(bed.send(A1, &stray), Verdict::Drop(DropReason::NotForUs));
}

#[test]
fn a_backend_on_the_clients_segment_answers_from_the_cluster_ip() {
    let mut bed = Bed::new();
    let (port, backend) = bed.open_to_cluster_ip(42000);
    // The backend knows the client is on-link and answers straight to its MAC (switched).
    let synack = tcp(
        pod_mac(backend),
        pod_mac(A1_IP),
        backend,
        A1_IP,
        80,
        42000,
        SYN | ACK,
    );
    assert_eq!(bed.send(port, &synack), Verdict::Forward);
    let (back, frame) = bed.out();
    assert_eq!(back, A1);
    let ip = check(&frame);
    assert_eq!((ip.src, ip.dst), (CLUSTER_IP, A1_IP));
}

/// A TCP connection from a1's `sport` to the outside host's `dport`, through the SNAT: a1's SYN
/// goes out, and the two ends' segments, by their flags, are built here: a1's, and the outside
/// host's to the egress IP and the NAT port the SYN left with.
fn syn_through_snat(
    bed: &mut Bed,
    sport: u16,
    dport: u16,
) -> (impl Fn(u8) -> Vec<u8>, impl Fn(u8) -> Vec<u8>) {
    let from_pod = move |flags| {
        tcp(
            pod_mac(A1_IP),
            ROUTER_MAC,
            A1_IP,
            OUTSIDE_HOST,
            sport,
            dport,
            flags,
        )
    };
    assert_eq!(bed.send(A1, &from_pod(SYN)), Verdict::Forward);
    let (_, frame) = bed.out();
    let L4::Tcp {
        src_port: nat_port, ..
    } = check(&frame).l4
    else {
        panic!("not TCP: {frame:02x?}")
    };
    let from_outside = move |flags| {
        tcp(
            UPLINK_PEER_MAC,
            ROUTER_MAC,
            OUTSIDE_HOST,
            EGRESS_A,
            dport,
            nat_port,
            flags,
        )
    };
    (from_pod, from_outside)
}

/// A RST the ends did not send (out of their window: a stale or injected one) no longer ends a
/// connection through SNAT: the pod's challenge ACK and the server's next data get through, as
/// through Linux's conntrack, which ignores a RST outside the window. Both were dropped as
/// `conntrack-invalid`, and the connection hung while both ends still had it.
#[test]
fn a_connection_outlives_a_rst_neither_end_sent() {
    let mut bed = Bed::new();
    const RST: u8 = 0x04;
    let (from_pod, from_server) = syn_through_snat(&mut bed, 43210, 7010);
    assert_eq!(bed.send(UPLINK, &from_server(SYN | ACK)), Verdict::Forward);
    assert_eq!(bed.send(A1, &from_pod(ACK)), Verdict::Forward);
    // A RST in the server's name reaches the pod, whose stack finds it out of its window...
    assert_eq!(bed.send(UPLINK, &from_server(RST)), Verdict::Forward);
    // ...and answers with a challenge ACK; the server, which never sent it, talks on.
    assert_eq!(bed.send(A1, &from_pod(ACK)), Verdict::Forward);
    assert_eq!(bed.send(UPLINK, &from_server(ACK)), Verdict::Forward);
    let (port, frame) = bed.out();
    assert_eq!(port, A1);
    assert_eq!(check(&frame).dst, A1_IP);
    for _ in 0..3 {
        assert_eq!(bed.send(A1, &from_pod(ACK)), Verdict::Forward);
        assert_eq!(bed.send(UPLINK, &from_server(ACK)), Verdict::Forward);
    }
}

/// TCP hole punching through the SNAT: the pod's SYN opens the binding (and is lost beyond,
/// at the peer's own NAT), the peer's SYN to the binding crosses it. The peer's SYN reaches the
/// pod and the simultaneous open completes, as through Linux's conntrack (SYN_SENT2); the
/// peer's SYN was dropped as `conntrack-invalid`.
#[test]
fn a_simultaneous_open_through_the_snat_completes() {
    let mut bed = Bed::new();
    let (from_pod, from_peer) = syn_through_snat(&mut bed, 40020, 40020);
    assert_eq!(bed.send(UPLINK, &from_peer(SYN)), Verdict::Forward);
    let (port, frame) = bed.out();
    assert_eq!(port, A1, "the peer's SYN reaches the pod");
    let ip = check(&frame);
    assert_eq!((ip.src, ip.dst), (OUTSIDE_HOST, A1_IP));
    assert!(matches!(
        ip.l4,
        L4::Tcp {
            dst_port: 40020,
            ..
        }
    ));
    assert_eq!(bed.send(A1, &from_pod(SYN | ACK)), Verdict::Forward);
    assert_eq!(bed.out().0, UPLINK);
    assert_eq!(bed.send(UPLINK, &from_peer(SYN | ACK)), Verdict::Forward);
    assert_eq!(bed.send(A1, &from_pod(ACK)), Verdict::Forward);
    assert_eq!(bed.send(UPLINK, &from_peer(ACK)), Verdict::Forward);
    assert_eq!(bed.out().0, A1);
}

#[test]
fn a_syn_reusing_a_time_wait_tuple_replaces_the_old_connection() {
    let mut bed = Bed::new();
    const FIN: u8 = 0x01;
    // A connection through the ClusterIP from port 43000, closed both ways: TIME_WAIT.
    let (port, backend) = bed.open_to_cluster_ip(43000);
    let from_backend = |flags| backend_to_a1(backend, 43000, flags);
    let from_client = |flags| {
        tcp(
            pod_mac(A1_IP),
            ROUTER_MAC,
            A1_IP,
            CLUSTER_IP,
            43000,
            80,
            flags,
        )
    };
    assert_eq!(bed.send(port, &from_backend(SYN | ACK)), Verdict::Forward);
    assert_eq!(bed.send(A1, &from_client(ACK)), Verdict::Forward);
    assert_eq!(bed.send(A1, &from_client(FIN | ACK)), Verdict::Forward);
    assert_eq!(bed.send(port, &from_backend(FIN | ACK)), Verdict::Forward);
    assert_eq!(bed.send(A1, &from_client(ACK)), Verdict::Forward);
    // Now the client connects to the backend directly from the same port.
    let direct = tcp(pod_mac(A1_IP), ROUTER_MAC, A1_IP, backend, 43000, 80, SYN);
    assert_eq!(bed.send(A1, &direct), Verdict::Forward);
    assert_eq!(bed.send(port, &from_backend(SYN | ACK)), Verdict::Forward);
    let (back, frame) = bed.out();
    assert_eq!(back, A1);
    assert_eq!(
        check(&frame).src,
        backend,
        "the answer is the backend's own, not the old ClusterIP's"
    );
}

#[test]
fn least_connections_counts_live_connections_and_gives_them_back() {
    let mut bed = Bed::new();
    let mut t = testbed::tables(2, Options::default());
    let b = |ip| crate::tables::Backend { ip, port: 80 };
    let mut vip = crate::tables::LbService::new(
        "lc".into(),
        PROTO_TCP,
        b(VIP),
        vec![b(A2_IP), b(A3_IP)],
        crate::tables::LbAlgorithm::LeastConnections,
    );
    vip.snat_automap = true;
    t.services[1] = vip;
    bed.tables.store(Arc::new(t));
    let mut members = Vec::new();
    for sport in [50000u16, 50001] {
        assert_eq!(
            bed.send(
                UPLINK,
                &tcp(
                    UPLINK_PEER_MAC,
                    ROUTER_MAC,
                    OUTSIDE_HOST,
                    VIP,
                    sport,
                    80,
                    SYN
                )
            ),
            Verdict::Forward
        );
        members.push(bed.out().0);
    }
    members.sort();
    assert_eq!(
        members,
        vec![A2, A3],
        "each member gets one of two connections"
    );
    let active = |bed: &Bed| {
        bed.tables.load().services[1]
            .active
            .iter()
            .map(|a| a.load(Relaxed))
            .collect::<Vec<_>>()
    };
    assert_eq!(active(&bed), vec![1, 1]);
    // Unanswered SYNs expire after the SYN_SENT timeout; their counts go back.
    bed.pipeline.expire(bed.now + 121_000);
    assert_eq!(active(&bed), vec![0, 0]);
}

#[test]
fn a_vip_with_source_ranges_admits_only_clients_inside_them() {
    let mut bed = Bed::new();
    let net = |s: &str| s.parse::<crate::tables::Ipv4Net>().unwrap();
    let with_ranges = |bed: &mut Bed, ranges: &[&str]| {
        let mut t = testbed::tables(2, Options::default());
        let vip = t
            .services
            .iter_mut()
            .find(|s| s.frontend.ip == VIP)
            .expect("the testbed has a VIP");
        vip.source_ranges = ranges.iter().map(|r| net(r)).collect();
        bed.tables.store(Arc::new(t));
    };
    let from_outside = |sport| {
        tcp(
            UPLINK_PEER_MAC,
            ROUTER_MAC,
            OUTSIDE_HOST,
            VIP,
            sport,
            80,
            SYN,
        )
    };
    with_ranges(&mut bed, &["198.51.100.128/25"]);
    assert_eq!(
        bed.send(UPLINK, &from_outside(40000)),
        Verdict::Drop(DropReason::DfwDeny)
    );
    assert!(bed.ctx.tx.is_empty(), "refused means silently dropped");
    with_ranges(&mut bed, &["198.51.100.0/25"]);
    assert_eq!(bed.send(UPLINK, &from_outside(40001)), Verdict::Forward);
    assert_eq!(bed.out().0, A2);
    // A pod of another namespace arrives as its egress IP; one of the VIP's own namespace as
    // its own address.
    with_ranges(&mut bed, &["172.60.96.3/32"]);
    let from_b = tcp(pod_mac(B1_IP), ROUTER_MAC, B1_IP, VIP, 40002, 80, SYN);
    assert_eq!(bed.send(B1, &from_b), Verdict::Forward);
    let from_a = tcp(pod_mac(A1_IP), ROUTER_MAC, A1_IP, VIP, 40003, 80, SYN);
    assert_eq!(bed.send(A1, &from_a), Verdict::Drop(DropReason::DfwDeny));
}

/// A UDP datagram with `len` bytes of payload (a repeating pattern), identification `ident`.
fn big_udp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    (src, sport): (Ipv4Addr, u16),
    (dst, dport): (Ipv4Addr, u16),
    ident: u16,
    len: usize,
) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let mut b = vec![0u8; len + 64];
    let n = build::build_udp(
        &mut b, src_mac, dst_mac, src, dst, 64, sport, dport, &payload,
    )
    .unwrap();
    b.truncate(n);
    b[18..20].copy_from_slice(&ident.to_be_bytes());
    fix_header_checksum(&mut b);
    b
}

fn fix_header_checksum(frame: &mut [u8]) {
    frame[24..26].fill(0);
    let csum = checksum::ipv4_header_checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&csum.to_be_bytes());
}

/// Splits an IPv4 frame (no options) into fragments of at most `mtu` bytes of IP (RFC 791
/// section 3.2: payloads in multiples of 8 bytes, more-fragments on all but the last).
fn fragments_of(frame: &[u8], mtu: usize) -> Vec<Vec<u8>> {
    let (head, payload) = frame.split_at(34);
    let step = (mtu - 20) / 8 * 8;
    let chunks: Vec<&[u8]> = payload.chunks(step).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut f = head.to_vec();
            f.extend_from_slice(chunk);
            f[16..18].copy_from_slice(&((20 + chunk.len()) as u16).to_be_bytes());
            let more = if i + 1 < chunks.len() { 0x2000 } else { 0 };
            let offset = (i * step / 8) as u16;
            f[20..22].copy_from_slice(&(more | offset).to_be_bytes());
            fix_header_checksum(&mut f);
            f
        })
        .collect()
}

/// The fragments as transmitted, put back together (in order, no gaps checked by the caller's
/// count): the headers of each checked, then the datagram's UDP checksum over all its bytes.
fn reassembled_udp(fragments: &[Vec<u8>]) -> (Ipv4Addr, Ipv4Addr, u16, u16, Vec<u8>) {
    let mut l4 = Vec::new();
    let (mut src, mut dst) = (Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED);
    for f in fragments {
        let parsed = parse_frame(f).expect("fragment parses");
        let L3::Ipv4(ip) = parsed.l3 else {
            panic!("not IPv4")
        };
        let header = &f[ip.offset..ip.offset + ip.header_len];
        assert_eq!(checksum::fold(checksum::sum(header, 0)), 0xffff);
        let offset = usize::from(u16::from_be_bytes([f[20], f[21]]) & 0x1fff) * 8;
        assert_eq!(offset, l4.len(), "fragments in order, none missing");
        l4.extend_from_slice(&f[ip.offset + ip.header_len..ip.offset + ip.total_len]);
        (src, dst) = (ip.src, ip.dst);
    }
    let pseudo = checksum::pseudo_header_sum(src, dst, PROTO_UDP, l4.len() as u16);
    assert_eq!(
        checksum::fold(checksum::sum(&l4, pseudo)),
        0xffff,
        "the datagram's UDP checksum"
    );
    let sport = u16::from_be_bytes([l4[0], l4[1]]);
    let dport = u16::from_be_bytes([l4[2], l4[3]]);
    (src, dst, sport, dport, l4[8..].to_vec())
}

#[test]
fn a_fragmented_datagram_is_translated_whole_both_ways() {
    let mut bed = Bed::new();
    let datagram = big_udp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        (A1_IP, 5353),
        (OUTSIDE_HOST, 53),
        0x1234,
        3000,
    );
    let frags = fragments_of(&datagram, 1500);
    assert_eq!(frags.len(), 3);
    let mut out = Vec::new();
    for f in &frags {
        assert_eq!(bed.send(A1, f), Verdict::Forward);
        let (port, frame) = bed.out();
        assert_eq!(port, UPLINK);
        assert_eq!(macs(&frame), (ROUTER_MAC, UPLINK_PEER_MAC));
        assert_eq!(
            frame[22], 62,
            "TTL down by the T1 and the T0, every fragment"
        );
        out.push(frame);
    }
    let (src, dst, nat_port, dport, payload) = reassembled_udp(&out);
    assert_eq!((src, dst, dport), (EGRESS_A, OUTSIDE_HOST, 53));
    assert_eq!(payload, datagram[42..].to_vec(), "the payload untouched");
    assert!(
        bed.pipeline.fragments.is_empty(),
        "the last fragment ends it"
    );

    // The answer, fragmented too, goes back to the pod, translated whole.
    let answer = big_udp(
        UPLINK_PEER_MAC,
        ROUTER_MAC,
        (OUTSIDE_HOST, 53),
        (EGRESS_A, nat_port),
        0x9999,
        2500,
    );
    let mut back = Vec::new();
    for f in fragments_of(&answer, 1500) {
        assert_eq!(bed.send(UPLINK, &f), Verdict::Forward);
        let (port, frame) = bed.out();
        assert_eq!(port, A1);
        back.push(frame);
    }
    let (src, dst, sport, dport, _) = reassembled_udp(&back);
    assert_eq!((src, dst, sport, dport), (OUTSIDE_HOST, A1_IP, 53, 5353));
}

#[test]
fn later_fragments_of_a_first_that_was_dropped_are_dropped() {
    let mut bed = Bed::new();
    // The outside cannot reach a pod (the DFW drops the first fragment), nor can the rest.
    let inbound = big_udp(
        UPLINK_PEER_MAC,
        ROUTER_MAC,
        (OUTSIDE_HOST, 53),
        (A1_IP, 5353),
        8,
        3000,
    );
    let frags = fragments_of(&inbound, 1500);
    assert_eq!(
        bed.send(UPLINK, &frags[0]),
        Verdict::Drop(DropReason::DfwDeny)
    );
    for f in &frags[1..] {
        assert_eq!(bed.send(UPLINK, f), Verdict::Drop(DropReason::Fragment));
    }
    // A fragment of the same identification from another port follows nothing either.
    let from_a2 = big_udp(
        pod_mac(A2_IP),
        ROUTER_MAC,
        (A2_IP, 5353),
        (OUTSIDE_HOST, 53),
        9,
        3000,
    );
    let a1 = fragments_of(
        &big_udp(
            pod_mac(A1_IP),
            ROUTER_MAC,
            (A1_IP, 5353),
            (OUTSIDE_HOST, 53),
            9,
            3000,
        ),
        1500,
    );
    assert_eq!(bed.send(A1, &a1[0]), Verdict::Forward);
    assert_eq!(
        bed.send(A2, &fragments_of(&from_a2, 1500)[1]),
        Verdict::Consumed,
        "held for a first from a2"
    );
    assert_eq!(bed.send(A1, &a1[1]), Verdict::Forward);
    assert_eq!(
        bed.ctx.tx.len(),
        1,
        "a2's fragment did not follow a1's first"
    );
    // A fragment held for a first that comes and is dropped goes with it, counted.
    let denied = fragments_of(
        &big_udp(
            UPLINK_PEER_MAC,
            ROUTER_MAC,
            (OUTSIDE_HOST, 53),
            (A1_IP, 5353),
            11,
            3000,
        ),
        1500,
    );
    let dropped = bed.pipeline.fragments.early_dropped();
    assert_eq!(bed.send(UPLINK, &denied[2]), Verdict::Consumed);
    assert_eq!(
        bed.send(UPLINK, &denied[0]),
        Verdict::Drop(DropReason::DfwDeny)
    );
    assert!(bed.ctx.tx.is_empty(), "nothing reached the pod");
    assert_eq!(bed.pipeline.fragments.early_dropped(), dropped + 1);
    assert_eq!(
        bed.send(UPLINK, &denied[1]),
        Verdict::Drop(DropReason::Fragment)
    );
}

#[test]
fn a_fragmented_datagram_to_a_closed_port_of_a_gateway_is_refused_whole() {
    let mut bed = Bed::new();
    // A 3000-byte UDP datagram to the T1's address, where nothing listens: port unreachable
    // once it is whole (as from Linux, which reassembles first), quoting it unfragmented.
    for (ident, order) in [(10u16, [0, 1, 2]), (11, [2, 1, 0])] {
        let to_gateway = fragments_of(
            &big_udp(
                pod_mac(A1_IP),
                ROUTER_MAC,
                (A1_IP, 5354),
                (GW_A, 53),
                ident,
                3000,
            ),
            1500,
        );
        assert_eq!(bed.send(A1, &to_gateway[order[0]]), Verdict::Consumed);
        assert_eq!(bed.send(A1, &to_gateway[order[1]]), Verdict::Consumed);
        assert_eq!(bed.send(A1, &to_gateway[order[2]]), Verdict::Reply);
        let (port, error) = bed.out();
        assert_eq!(port, A1);
        let ip = check(&error);
        assert_eq!((ip.src, ip.dst), (GW_A, A1_IP));
        let icmp = &error[34..];
        assert_eq!((icmp[0], icmp[1]), (3, 3), "port unreachable");
        let quote = &icmp[8..];
        assert_eq!(
            u16::from_be_bytes([quote[2], quote[3]]),
            3028,
            "the whole datagram"
        );
        assert_eq!(
            u16::from_be_bytes([quote[6], quote[7]]),
            0,
            "not a fragment"
        );
        assert_eq!(u16::from_be_bytes([quote[22], quote[23]]), 53, "its port");
        assert!(bed.pipeline.reassembly.is_empty());
    }
}

/// The frames a verdict sent, in order.
fn sent(bed: &Bed) -> Vec<(PortId, Vec<u8>)> {
    bed.ctx
        .tx
        .iter()
        .map(|tx| (tx.port, bed.ctx.buffer(tx, &bed.pkt).frame().to_vec()))
        .collect()
}

#[test]
fn fragments_before_their_first_wait_for_it_and_follow_it_through_the_snat() {
    let mut bed = Bed::new();
    // The last fragment first, then the middle, then the first (as some senders order them).
    let datagram = big_udp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        (A1_IP, 5353),
        (OUTSIDE_HOST, 53),
        7,
        4000,
    );
    let frags = fragments_of(&datagram, 1500);
    assert_eq!(frags.len(), 3);
    assert_eq!(bed.send(A1, &frags[2]), Verdict::Consumed);
    assert_eq!(bed.send(A1, &frags[1]), Verdict::Consumed);
    assert!(bed.ctx.tx.is_empty(), "held, not sent");
    assert_eq!(bed.send(A1, &frags[0]), Verdict::Forward);
    let out = sent(&bed);
    assert_eq!(out.len(), 3, "the first, then the two held");
    assert!(out.iter().all(|(port, _)| *port == UPLINK));
    let mut frames: Vec<Vec<u8>> = out.into_iter().map(|(_, f)| f).collect();
    frames.sort_by_key(|f| u16::from_be_bytes([f[20], f[21]]) & 0x1fff);
    assert!(frames.iter().all(|f| f[22] == 62), "TTL down by T1 and T0");
    let (src, dst, _, dport, payload) = reassembled_udp(&frames);
    assert_eq!((src, dst, dport), (EGRESS_A, OUTSIDE_HOST, 53));
    assert_eq!(payload, datagram[42..].to_vec());
    assert_eq!(bed.pipeline.fragments.early_len(), 0);
    assert!(bed.pipeline.fragments.is_empty(), "the last one ended it");
}

#[test]
fn a_fragmented_ping_to_a_gateway_whose_last_fragment_comes_first_is_answered() {
    let mut bed = Bed::new();
    let frags = big_ping((pod_mac(A1_IP), A1_IP), GW_A, 64, 0x5555, 3000);
    assert_eq!(frags.len(), 3);
    assert_eq!(bed.send(A1, &frags[2]), Verdict::Consumed);
    assert_eq!(bed.send(A1, &frags[0]), Verdict::Consumed);
    assert_eq!(bed.send(A1, &frags[1]), Verdict::Reply);
    let (ip, msg) = reassembled_icmp(&bed);
    assert_eq!((ip.src, ip.dst, msg.len()), (GW_A, A1_IP, 3008));
    // All but the first first: the first completes it.
    let frags = big_ping((pod_mac(A1_IP), A1_IP), GW_A, 64, 0x6666, 3000);
    assert_eq!(bed.send(A1, &frags[2]), Verdict::Consumed);
    assert_eq!(bed.send(A1, &frags[1]), Verdict::Consumed);
    assert_eq!(bed.send(A1, &frags[0]), Verdict::Reply);
    let (ip, msg) = reassembled_icmp(&bed);
    assert_eq!((ip.src, msg.len(), msg[0]), (GW_A, 3008, 0));
    assert!(bed.pipeline.reassembly.is_empty());
    assert_eq!(bed.pipeline.fragments.early_len(), 0);
}

/// A fragmented echo request of `len` bytes of payload, identification `ident`.
fn big_ping(
    (src_mac, src): (MacAddr, Ipv4Addr),
    dst: Ipv4Addr,
    ttl: u8,
    ident: u16,
    len: usize,
) -> Vec<Vec<u8>> {
    let payload: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
    let mut b = vec![0u8; len + 64];
    let n = build::build_icmp_echo(
        &mut b, src_mac, ROUTER_MAC, src, dst, ttl, true, 77, 1, &payload,
    )
    .unwrap();
    b.truncate(n);
    b[18..20].copy_from_slice(&ident.to_be_bytes());
    fix_header_checksum(&mut b);
    fragments_of(&b, 1500)
}

/// The frames a verdict sent, put back together as one datagram from its IP header on: the
/// headers of each checked, then the ICMP checksum over the whole message.
fn reassembled_icmp(bed: &Bed) -> (Ipv4Info, Vec<u8>) {
    let frames: Vec<Vec<u8>> = bed
        .ctx
        .tx
        .iter()
        .map(|tx| bed.ctx.buffer(tx, &bed.pkt).frame().to_vec())
        .collect();
    let mut msg = Vec::new();
    let mut first = None;
    for (i, f) in frames.iter().enumerate() {
        assert!(f.len() <= 1514, "fragment {i} is {} bytes", f.len());
        let L3::Ipv4(ip) = parse_frame(f).expect("fragment parses").l3 else {
            panic!("not IPv4")
        };
        assert_eq!(
            checksum::fold(checksum::sum(&f[14..14 + ip.header_len], 0)),
            0xffff
        );
        let flags = u16::from_be_bytes([f[20], f[21]]);
        assert_eq!(usize::from(flags & 0x1fff) * 8, msg.len(), "offset of {i}");
        assert_eq!(
            flags & 0x2000 != 0,
            i + 1 < frames.len(),
            "more-fragments of {i}"
        );
        msg.extend_from_slice(&f[14 + ip.header_len..14 + ip.total_len]);
        first.get_or_insert(ip);
    }
    assert_eq!(
        checksum::fold(checksum::sum(&msg, 0)),
        0xffff,
        "ICMP checksum"
    );
    (first.expect("something was sent"), msg)
}

#[test]
fn a_fragmented_ping_to_a_gateway_is_answered_whole_in_fragments() {
    let mut bed = Bed::new();
    // ping -s 3000 172.211.0.17 from a1: three fragments in, three out, once the last came.
    let frags = big_ping((pod_mac(A1_IP), A1_IP), GW_A, 64, 0x1111, 3000);
    assert_eq!(frags.len(), 3);
    assert_eq!(bed.send(A1, &frags[0]), Verdict::Consumed);
    assert_eq!(bed.send(A1, &frags[1]), Verdict::Consumed);
    assert_eq!(bed.send(A1, &frags[2]), Verdict::Reply);
    assert_eq!(bed.ctx.tx.len(), 3);
    assert!(bed.ctx.tx.iter().all(|tx| tx.port == A1));
    let (ip, msg) = reassembled_icmp(&bed);
    assert_eq!((ip.src, ip.dst, ip.ttl), (GW_A, A1_IP, 64));
    assert_eq!(msg.len(), 8 + 3000);
    assert_eq!(msg[0], 0, "an echo reply");
    let payload: Vec<u8> = (0..3000).map(|i| (i * 13 % 251) as u8).collect();
    assert_eq!(&msg[8..], &payload[..], "the request's payload, whole");
    assert_eq!(&msg[4..6], &77u16.to_be_bytes(), "the request's identifier");
    assert!(bed.pipeline.reassembly.is_empty());

    // T0, one gateway further in: the reply takes a TTL step on its way back.
    let frags = big_ping((pod_mac(A1_IP), A1_IP), T0_TRANSIT_A, 64, 0x2222, 2000);
    assert_eq!(bed.send(A1, &frags[0]), Verdict::Consumed);
    assert_eq!(bed.send(A1, &frags[1]), Verdict::Reply);
    let (ip, msg) = reassembled_icmp(&bed);
    assert_eq!((ip.src, ip.ttl, msg.len()), (T0_TRANSIT_A, 63, 2008));

    // One whose bytes do not match its ICMP checksum (a payload byte changed on the way, or
    // rewritten by an overlapping fragment) is not answered: the reply would fail it too.
    let mut frags = big_ping((pod_mac(A1_IP), A1_IP), GW_A, 64, 0x4444, 3000);
    let last = frags[1].len() - 1;
    frags[1][last] ^= 0x01;
    assert_eq!(bed.send(A1, &frags[0]), Verdict::Consumed);
    assert_eq!(bed.send(A1, &frags[1]), Verdict::Consumed);
    assert_eq!(
        bed.send(A1, &frags[2]),
        Verdict::Drop(DropReason::Malformed)
    );
    assert!(bed.ctx.tx.is_empty());
    assert!(bed.pipeline.reassembly.is_empty());

    // A datagram whose middle never came is not answered, and is forgotten in time.
    let frags = big_ping((pod_mac(A1_IP), A1_IP), GW_A, 64, 0x3333, 4000);
    assert_eq!(bed.send(A1, &frags[0]), Verdict::Consumed);
    assert_eq!(bed.send(A1, &frags[2]), Verdict::Consumed);
    assert_eq!(bed.pipeline.reassembly.len(), 1);
    bed.pipeline.expire(bed.now + crate::reassembly::TIMEOUT_MS);
    assert!(bed.pipeline.reassembly.is_empty());
}

#[test]
fn the_fragments_of_a_gateways_echo_reply_carry_the_requests_tos() {
    let mut bed = Bed::new();
    // ping -Q 0xb9 -s 3000 172.211.0.17: Linux's reply copies the request's TOS, ECN bits
    // included, into every fragment.
    let mut frags = big_ping((pod_mac(A1_IP), A1_IP), GW_A, 64, 0x7777, 3000);
    for f in &mut frags {
        f[15] = 0xb9;
        fix_header_checksum(f);
    }
    assert_eq!(bed.send(A1, &frags[0]), Verdict::Consumed);
    assert_eq!(bed.send(A1, &frags[1]), Verdict::Consumed);
    assert_eq!(bed.send(A1, &frags[2]), Verdict::Reply);
    assert_eq!(bed.ctx.tx.len(), 3);
    for tx in &bed.ctx.tx {
        assert_eq!(bed.ctx.buffer(tx, &bed.pkt).frame()[15], 0xb9);
    }
    let (ip, msg) = reassembled_icmp(&bed);
    assert_eq!((ip.src, ip.dst, msg[0]), (GW_A, A1_IP, 0));
}

#[test]
fn a_ping_past_the_mtu_to_a_gateway_is_answered_in_fragments() {
    let mut bed = Bed::new();
    // ping -s 3000 172.211.0.17 from a pod that raised its MTU to 9000: one 3028-byte request
    // (DF set, as ping sends it), a reply cut to the gateway's MTU of 1500 as Linux cuts it.
    let payload: Vec<u8> = (0..3000).map(|i| (i * 13 % 251) as u8).collect();
    for (dst, ttl) in [(GW_A, 64), (T1_TRANSIT_A, 64)] {
        let mut b = vec![0u8; 3100];
        let n = build::build_icmp_echo(
            &mut b,
            pod_mac(A1_IP),
            ROUTER_MAC,
            A1_IP,
            dst,
            64,
            true,
            77,
            1,
            &payload,
        )
        .unwrap();
        assert_eq!(bed.send(A1, &b[..n]), Verdict::Reply);
        assert_eq!(bed.ctx.tx.len(), 3, "three fragments of at most 1500 bytes");
        assert!(bed.ctx.tx.iter().all(|tx| tx.port == A1));
        let (ip, msg) = reassembled_icmp(&bed);
        assert_eq!((ip.src, ip.dst, ip.ttl), (dst, A1_IP, ttl));
        assert_eq!(msg[0], 0, "an echo reply");
        assert_eq!(&msg[4..6], &77u16.to_be_bytes(), "the request's identifier");
        assert_eq!(&msg[8..], &payload[..], "the request's payload, whole");
    }
}

#[test]
fn a_fragmented_ping_crosses_the_snat_and_comes_back() {
    let mut bed = Bed::new();
    let mut b = vec![0u8; 3100];
    let n = build::build_icmp_echo(
        &mut b,
        pod_mac(A1_IP),
        ROUTER_MAC,
        A1_IP,
        OUTSIDE_HOST,
        64,
        true,
        0x4242,
        1,
        &[0x5a; 2000],
    )
    .unwrap();
    b.truncate(n);
    b[18..20].copy_from_slice(&77u16.to_be_bytes());
    fix_header_checksum(&mut b);
    let mut icmp = Vec::new();
    for f in fragments_of(&b, 1500) {
        assert_eq!(bed.send(A1, &f), Verdict::Forward);
        let (port, frame) = bed.out();
        assert_eq!(port, UPLINK);
        let ip = match parse_frame(&frame).unwrap().l3 {
            L3::Ipv4(ip) => ip,
            _ => panic!(),
        };
        assert_eq!(ip.src, EGRESS_A);
        icmp.extend_from_slice(&frame[34..14 + ip.total_len]);
    }
    assert_eq!(icmp.len(), 2008);
    assert_eq!(
        checksum::fold(checksum::sum(&icmp, 0)),
        0xffff,
        "the ICMP checksum over the whole echo"
    );
}

/// A small deterministic generator (xorshift64*), so a failing case repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Well-formed frames of every path the pipeline knows, for the mutations below to start from.
fn seed_frames() -> Vec<Vec<u8>> {
    let a1 = pod_mac(A1_IP);
    let mut seeds = vec![
        udp(a1, ROUTER_MAC, A1_IP, OUTSIDE_HOST, 64, 40000, 53),
        udp(a1, ROUTER_MAC, A1_IP, CLUSTER_IP, 64, 40001, 80),
        udp(a1, pod_mac(A2_IP), A1_IP, A2_IP, 64, 40002, 80),
        tcp(a1, ROUTER_MAC, A1_IP, CLUSTER_IP, 40003, 80, SYN),
        tcp(a1, ROUTER_MAC, A1_IP, OUTSIDE_HOST, 40004, 443, SYN),
        tcp(
            UPLINK_PEER_MAC,
            ROUTER_MAC,
            OUTSIDE_HOST,
            VIP,
            50000,
            80,
            SYN,
        ),
        tcp(
            UPLINK_PEER_MAC,
            ROUTER_MAC,
            OUTSIDE_HOST,
            EGRESS_A,
            443,
            40004,
            SYN | ACK,
        ),
        tcp(pod_mac(B1_IP), ROUTER_MAC, B1_IP, A1_IP, 40005, 80, SYN),
        ping(a1, ROUTER_MAC, A1_IP, GW_A, 64, 1),
        ping(a1, ROUTER_MAC, A1_IP, OUTSIDE_HOST, 1, 2),
        ping(
            UPLINK_PEER_MAC,
            ROUTER_MAC,
            UPSTREAM_IP,
            T0_UPLINK_IP,
            64,
            3,
        ),
        ping(UPLINK_PEER_MAC, ROUTER_MAC, OUTSIDE_HOST, EGRESS_A, 64, 4),
    ];
    let mut b = buf();
    let n = build::build_arp_request(&mut b, a1, A1_IP, GW_A).unwrap();
    seeds.push(b[..n].to_vec());
    let n = build::build_arp_request(&mut b, UPLINK_PEER_MAC, UPSTREAM_IP, VIP).unwrap();
    seeds.push(b[..n].to_vec());
    // An ICMP error from the outside about a translated datagram (its quote is translated back).
    let sent = udp(a1, ROUTER_MAC, EGRESS_A, OUTSIDE_HOST, 64, 40000, 53);
    let n = build::build_icmp_error(
        &mut b,
        UPLINK_PEER_MAC,
        ROUTER_MAC,
        OUTSIDE_HOST,
        3,
        3,
        0,
        &sent[14..],
    )
    .unwrap();
    seeds.push(b[..n].to_vec());
    let big = big_udp(a1, ROUTER_MAC, (A1_IP, 40006), (OUTSIDE_HOST, 53), 77, 3000);
    seeds.extend(fragments_of(&big, 1500));
    seeds.extend(big_ping((a1, A1_IP), GW_A, 64, 78, 3000));
    seeds.extend(big_ping((UPLINK_PEER_MAC, OUTSIDE_HOST), VIP, 64, 79, 2000));
    seeds
}

/// One mutation of a seed: bytes changed (mostly in the headers), the frame cut or grown, and
/// sometimes its IP header checksum made right again so the mutation reaches the layers above.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut f = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let pick = rng.below(4);
        match pick {
            0 if !f.is_empty() => f.truncate(rng.below(f.len())),
            1 => f.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
            _ if !f.is_empty() => {
                let span = f.len().min(if rng.below(4) == 0 { f.len() } else { 64 });
                let at = rng.below(span);
                f[at] = rng.next() as u8;
            }
            _ => {}
        }
    }
    if rng.below(2) == 0 && f.len() >= 34 && f[12..14] == [0x08, 0x00] {
        let header_len = usize::from(f[14] & 0x0f) * 4;
        if header_len >= 20 && f.len() >= 14 + header_len {
            f[24..26].fill(0);
            let csum = checksum::ipv4_header_checksum(&f[14..14 + header_len]);
            f[24..26].copy_from_slice(&csum.to_be_bytes());
        }
    }
    f
}

/// A virtio-net header as a misbehaving or unusual kernel could hand it over: offload flags,
/// GSO types and offsets anywhere.
fn random_vnet_header(rng: &mut Rng, frame_len: usize) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = [0, 1, 2, 0xff][rng.below(4)];
    h[1] = [0, 1, 3, 4, 5, 0x80, 0x81, 0xff][rng.below(8)];
    let word = |rng: &mut Rng| -> u16 {
        match rng.below(3) {
            0 => rng.next() as u16,
            1 => rng.below(frame_len + 8) as u16,
            _ => [0u16, 14, 34, 1448, 0xffff][rng.below(5)],
        }
    };
    for at in [2, 4, 6, 8] {
        h[at..at + 2].copy_from_slice(&word(rng).to_le_bytes());
    }
    h
}

/// Every port of the testbed, and one the tables do not know.
const FUZZ_PORTS: [PortId; 6] = [UPLINK, A1, A2, A3, B1, 77];

/// Tens of thousands of damaged frames, one at a time and in batches, with odd virtio-net
/// headers: none panics, every one gets a verdict that matches what is queued to send (a dropped frame is at
/// most answered, never passed on), and
/// every IPv4 frame sent has a right header checksum. The well-formed seeds interleaved keep
/// connections, NAT bindings and fragment state alive for the damaged ones to hit.
#[test]
fn damaged_frames_are_answered_or_dropped_never_a_panic() {
    let mut bed = Bed::new();
    let seeds = seed_frames();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let known = |port: PortId| FUZZ_PORTS[..5].contains(&port);
    let sent_ok = |ctx: &WorkerContext, pkt: &PacketBuf| {
        for tx in &ctx.tx {
            assert!(known(tx.port), "sent to unknown port {}", tx.port);
            let frame = ctx.buffer(tx, pkt).frame();
            if let Ok(parsed) = parse_frame(frame) {
                if let L3::Ipv4(ip) = parsed.l3 {
                    let header = &frame[ip.offset..ip.offset + ip.header_len];
                    assert_eq!(checksum::fold(checksum::sum(header, 0)), 0xffff);
                }
            }
        }
    };
    let mut verdicts = [0usize; 4];
    for round in 0..100_000 {
        let seed = &seeds[rng.below(seeds.len())];
        let frame = if round % 5 == 0 {
            seed.clone()
        } else {
            mutate(&mut rng, seed)
        };
        let port = FUZZ_PORTS[rng.below(FUZZ_PORTS.len())];
        bed.pkt.set_frame(&frame);
        if rng.below(4) == 0 {
            let h = random_vnet_header(&mut rng, frame.len());
            bed.pkt.buf[..VNET_HDR_LEN].copy_from_slice(&h);
        }
        bed.now += 1 + rng.below(3) as u64 * 1000;
        let verdict = bed
            .pipeline
            .process(&mut bed.ctx, bed.now, port, &mut bed.pkt);
        match verdict {
            Verdict::Forward | Verdict::Reply => assert!(!bed.ctx.tx.is_empty(), "{frame:02x?}"),
            Verdict::Consumed => assert!(bed.ctx.tx.is_empty(), "{:?} {frame:02x?}", bed.ctx.tx),
            // A drop may be answered (ICMP time exceeded, unreachable), never passed on.
            Verdict::Drop(_) => assert!(
                bed.ctx.tx.iter().all(|tx| tx.source == TxSource::Scratch),
                "{verdict:?} {frame:02x?}"
            ),
        }
        sent_ok(&bed.ctx, &bed.pkt);
        verdicts[match verdict {
            Verdict::Forward => 0,
            Verdict::Reply => 1,
            Verdict::Consumed => 2,
            Verdict::Drop(_) => 3,
        }] += 1;
        if round % 1000 == 0 {
            bed.pipeline.expire(bed.now);
        }
    }
    // The mix reached every outcome, so the mutations did not all die at the first check.
    eprintln!("verdicts (forward, reply, consumed, drop): {verdicts:?}");
    assert!(verdicts.iter().all(|&n| n > 100), "{verdicts:?}");

    // The same through the batched path, 32 frames a call, each port in turn.
    let mut pkts: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new()).collect();
    for round in 0..1000 {
        for pkt in pkts.iter_mut() {
            let seed = &seeds[rng.below(seeds.len())];
            pkt.set_frame(&mutate(&mut rng, seed));
            if rng.below(4) == 0 {
                let h = random_vnet_header(&mut rng, pkt.len - VNET_HDR_LEN);
                pkt.buf[..VNET_HDR_LEN].copy_from_slice(&h);
            }
        }
        bed.now += 1;
        let port = FUZZ_PORTS[round % FUZZ_PORTS.len()];
        let mut seen = 0;
        bed.pipeline
            .process_batch(&mut bed.ctx, bed.now, port, &mut pkts, |_, _, ctx, pkt| {
                seen += 1;
                sent_ok(ctx, pkt);
            });
        assert_eq!(seen, BATCH, "every frame of a batch gets its verdict");
    }
}

/// A flood of expiring packets gets the burst of ICMP errors and then the steady rate, while
/// echo replies are not limited and a `traceroute`'s few probes are always answered.
#[test]
fn icmp_errors_are_rate_limited_as_routers_do() {
    let mut bed = Bed::new();
    let expiring = udp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        A1_IP,
        OUTSIDE_HOST,
        1,
        40000,
        33434,
    );
    let errors_at = |bed: &mut Bed, now: u64, count: usize| -> usize {
        (0..count)
            .filter(|_| {
                bed.pkt.set_frame(&expiring);
                let v = bed.pipeline.process(&mut bed.ctx, now, A1, &mut bed.pkt);
                assert_eq!(v, Verdict::Drop(DropReason::TtlExceeded));
                !bed.ctx.tx.is_empty()
            })
            .count()
    };
    // 200 in the same millisecond: the burst of 50.
    assert_eq!(errors_at(&mut bed, 5000, 200), 50);
    // 10 ms later, 10 more; a second later, a full burst again (not a thousand).
    assert_eq!(errors_at(&mut bed, 5010, 200), 10);
    assert_eq!(errors_at(&mut bed, 6010, 200), 50);
    // Echo replies are not limited, even with the error budget spent.
    for _ in 0..100 {
        bed.pkt
            .set_frame(&ping(pod_mac(A1_IP), ROUTER_MAC, A1_IP, GW_A, 64, 7));
        let v = bed.pipeline.process(&mut bed.ctx, 6010, A1, &mut bed.pkt);
        assert_eq!(v, Verdict::Reply);
    }
}

/// Tables of generation `generation` whose ClusterIP (service 0) and VIP (service 1) have
/// `backends` and `sessionAffinity: ClientIP` with `timeout_s`.
fn sticky_tables(generation: u64, backends: &[Ipv4Addr], timeout_s: u32) -> Tables {
    let mut t = testbed::tables(generation, Options::default());
    let b = |ip| crate::tables::Backend { ip, port: 80 };
    for (i, frontend, algorithm) in [
        (0, CLUSTER_IP, crate::tables::LbAlgorithm::ConnectionHash),
        (1, VIP, crate::tables::LbAlgorithm::RoundRobin),
    ] {
        let mut svc = crate::tables::LbService::new(
            format!("sticky-{i}"),
            PROTO_TCP,
            b(frontend),
            backends.iter().map(|&ip| b(ip)).collect(),
            algorithm,
        );
        svc.client_affinity = Some(timeout_s);
        svc.snat_automap = i == 1;
        t.services[i] = svc;
    }
    t
}

#[test]
fn a_sticky_client_keeps_its_backend_through_scaling_until_idle_past_the_timeout() {
    let mut bed = Bed::new();
    bed.tables.store(Arc::new(sticky_tables(2, &[A3_IP], 60)));
    assert_eq!(bed.open_to_cluster_ip(41000), (A3, A3_IP));
    // Scaled up: without remembering, the connection hash would spread these over both.
    bed.tables
        .store(Arc::new(sticky_tables(3, &[A2_IP, A3_IP], 60)));
    for sport in 41001..41033 {
        assert_eq!(bed.open_to_cluster_ip(sport), (A3, A3_IP), "port {sport}");
    }
    // Its backend gone: another, kept when the old one returns.
    bed.tables.store(Arc::new(sticky_tables(4, &[A2_IP], 60)));
    assert_eq!(bed.open_to_cluster_ip(41100), (A2, A2_IP));
    bed.tables
        .store(Arc::new(sticky_tables(5, &[A2_IP, A3_IP], 60)));
    for sport in 41101..41117 {
        assert_eq!(bed.open_to_cluster_ip(sport), (A2, A2_IP), "port {sport}");
    }
    // The VIP remembers its own clients (the outside host), apart from the ClusterIP's.
    let vip_member = |bed: &mut Bed, sport| {
        let syn = tcp(
            UPLINK_PEER_MAC,
            ROUTER_MAC,
            OUTSIDE_HOST,
            VIP,
            sport,
            80,
            SYN,
        );
        assert_eq!(bed.send(UPLINK, &syn), Verdict::Forward);
        bed.out().0
    };
    let member = vip_member(&mut bed, 52000);
    for sport in 52001..52017 {
        assert_eq!(
            vip_member(&mut bed, sport),
            member,
            "round robin overridden"
        );
    }
    assert_eq!(bed.pipeline.affinity.len(), 2);
    // Idle past the timeout: the periodic expiry forgets both clients.
    bed.pipeline.expire(bed.now + 60_000);
    assert!(bed.pipeline.affinity.is_empty());
}

#[test]
fn services_without_affinity_remember_nothing() {
    let mut bed = Bed::new();
    let mut seen = std::collections::BTreeSet::new();
    for sport in 43000..43064 {
        seen.insert(bed.open_to_cluster_ip(sport));
    }
    assert_eq!(seen.len(), 2, "the connection hash spreads: {seen:?}");
    assert!(bed.pipeline.affinity.is_empty());
}

/// ns-a's ClusterIP served by b1 of ns-b, which admits ns-a then; a1 opens a connection to it
/// from `sport` and, when `close`, closes it into TIME_WAIT. Then new tables: a1 is gone and a
/// new pod (port 5) has its address, the ClusterIP belongs to a new service without endpoints,
/// and ns-b is back to its default deny. The verdict of the new pod's first SYN from `sport`.
fn first_syn_of_a_new_pod_over_an_old_entry(sport: u16, close: bool) -> (Verdict, Vec<u8>) {
    const FIN: u8 = 0x01;
    const NEW_A1: PortId = 5;
    let mut bed = Bed::new();
    let mut t = testbed::tables(2, Options::default());
    let web = |backends| {
        crate::tables::LbService::new(
            "ns-a/web:80".into(),
            PROTO_TCP,
            crate::tables::Backend {
                ip: CLUSTER_IP,
                port: 80,
            },
            backends,
            crate::tables::LbAlgorithm::ConnectionHash,
        )
    };
    t.services[0] = web(vec![crate::tables::Backend {
        ip: B1_IP,
        port: 80,
    }]);
    let mut admit = t.dfw.rules_in[1][0].clone();
    admit.name = "admit-ns-a".into();
    admit.sources = vec!["172.211.0.16/28".parse().unwrap()];
    admit.action = crate::tables::RuleAction::Allow;
    t.dfw.rules_in[1].insert(0, admit);
    bed.tables.store(Arc::new(t));
    let (port, backend) = bed.open_to_cluster_ip(sport);
    assert_eq!((port, backend), (B1, B1_IP));
    let from_b1 = |flags| tcp(pod_mac(B1_IP), ROUTER_MAC, B1_IP, A1_IP, 80, sport, flags);
    let from_a1 = |flags| a1_to_cluster_ip(sport, flags);
    assert_eq!(bed.send(B1, &from_b1(SYN | ACK)), Verdict::Forward);
    assert_eq!(bed.send(A1, &from_a1(ACK)), Verdict::Forward);
    if close {
        assert_eq!(bed.send(A1, &from_a1(FIN | ACK)), Verdict::Forward);
        assert_eq!(bed.send(B1, &from_b1(FIN | ACK)), Verdict::Forward);
        assert_eq!(bed.send(A1, &from_a1(ACK)), Verdict::Forward);
    }
    let mut t = testbed::tables(3, Options::default());
    let mut new_pod = t.ports[A1 as usize].take().unwrap();
    new_pod.id = NEW_A1;
    new_pod.name = "ns-a/a1-new".into();
    t.ports.push(Some(new_pod));
    t.segments[0].ports = vec![NEW_A1, A2, A3];
    t.hosts.insert(A1_IP, NEW_A1);
    t.services[0] = web(vec![]);
    bed.tables.store(Arc::new(t));
    let old = FlowKey {
        protocol: PROTO_TCP,
        src: A1_IP,
        dst: CLUSTER_IP,
        src_port: sport,
        dst_port: 80,
    };
    assert!(
        bed.pipeline.conntrack.get(&old).is_some(),
        "the old entry is there"
    );
    let verdict = bed.send(NEW_A1, &from_a1(SYN));
    let (out_port, frame) = bed.out();
    assert_eq!(out_port, NEW_A1);
    (verdict, frame)
}

#[test]
fn a_new_pod_s_first_syn_over_an_old_pod_s_entry_is_refused_as_a_fresh_one() {
    for close in [true, false] {
        let (verdict, frame) = first_syn_of_a_new_pod_over_an_old_entry(43000, close);
        assert_eq!(
            verdict,
            Verdict::Drop(DropReason::NoBackend),
            "close {close}"
        );
        assert_reset_from_the_cluster_ip(&frame);
    }
}

#[test]
fn a_connection_that_ends_between_its_lookup_and_its_revalidation_is_not_applied_stale() {
    // a1's connection through the ClusterIP, decided under generation 1; then new tables, in
    // which the ClusterIP has no endpoints, and the connection ends (its pod's port forgotten
    // by the control plane, or expired by another worker) right after the packet found it.
    let mut bed = Bed::new();
    let (port, backend) = bed.open_to_cluster_ip(43000);
    let key = FlowKey {
        protocol: PROTO_TCP,
        src: A1_IP,
        dst: CLUSTER_IP,
        src_port: 43000,
        dst_port: 80,
    };
    let (dir, tracked) = bed.pipeline.conntrack.track(&key, SYN, bed.now).unwrap();
    let (conn, _) = bed.pipeline.conntrack.get(&key).unwrap();
    assert_eq!(conn.actions[0].out_port, port);
    assert!(bed.pipeline.conntrack.remove(conn.id));
    bed.tables
        .store(Arc::new(tables_with_an_empty_cluster_ip()));
    let t = bed.tables.load_full();
    let hit = bed.pipeline.hit(&t, &key, 64, dir, tracked);
    assert_eq!(
        hit,
        Hit::Miss,
        "the SYN is walked afresh (and refused), not sent to the old backend {backend}"
    );
}

/// `frame` with its don't-fragment flag set or cleared (header checksum fixed).
fn with_df(mut frame: Vec<u8>, df: bool) -> Vec<u8> {
    if df {
        frame[20] |= 0x40;
    } else {
        frame[20] &= !0x40;
    }
    fix_header_checksum(&mut frame);
    frame
}

#[test]
fn a_routed_packet_past_the_mtu_with_df_gets_fragmentation_needed_from_the_first_gateway() {
    let mut bed = Bed::new();
    // a1 raised its MTU to 9000 (ip link set eth0 mtu 9000) and sends 8000 bytes, DF set
    // (ping -M do -s 8000, or UDP under Linux's path MTU discovery). The flow is open already,
    // so the packet takes the fast path.
    let small = big_udp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        (A1_IP, 5353),
        (OUTSIDE_HOST, 53),
        1,
        100,
    );
    assert_eq!(bed.send(A1, &with_df(small, true)), Verdict::Forward);
    for ident in [2, 3] {
        let jumbo = big_udp(
            pod_mac(A1_IP),
            ROUTER_MAC,
            (A1_IP, 5353),
            (OUTSIDE_HOST, 53),
            ident,
            8000,
        );
        assert_eq!(
            bed.send(A1, &with_df(jumbo, true)),
            Verdict::Drop(DropReason::FragNeeded)
        );
        let (port, error) = bed.out();
        assert_eq!(port, A1, "answered to the sender, nothing forwarded");
        let ip = check(&error);
        assert_eq!(
            (ip.src, ip.dst),
            (GW_A, A1_IP),
            "from the T1, the first router"
        );
        let icmp = &error[34..];
        assert_eq!(
            (icmp[0], icmp[1]),
            (3, 4),
            "fragmentation needed and DF set"
        );
        assert_eq!(
            u16::from_be_bytes([icmp[6], icmp[7]]),
            1500,
            "the next-hop MTU"
        );
        assert_eq!(checksum::fold(checksum::sum(icmp, 0)), 0xffff);
        // The quote is the packet as a1 sent it (its own address, not the egress IP).
        assert_eq!(&icmp[8 + 12..8 + 16], &A1_IP.octets());
        assert_eq!(u16::from_be_bytes([icmp[8 + 4], icmp[8 + 5]]), ident);
    }
    // At the MTU exactly it goes.
    let fits = big_udp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        (A1_IP, 5353),
        (OUTSIDE_HOST, 53),
        4,
        1500 - 28,
    );
    assert_eq!(bed.send(A1, &with_df(fits, true)), Verdict::Forward);
    assert_eq!(bed.out().0, UPLINK);
}

#[test]
fn a_routed_packet_past_the_mtu_without_df_is_cut_into_fragments() {
    let mut bed = Bed::new();
    let jumbo = with_df(
        big_udp(
            pod_mac(A1_IP),
            ROUTER_MAC,
            (A1_IP, 5353),
            (OUTSIDE_HOST, 53),
            0x4321,
            8000,
        ),
        false,
    );
    // As a TAP with offloads hands it over: the UDP checksum left partial.
    let mut partial = jumbo.clone();
    let len = (partial.len() - 34) as u16;
    let pseudo = checksum::fold(checksum::pseudo_header_sum(
        A1_IP,
        OUTSIDE_HOST,
        PROTO_UDP,
        len,
    ));
    partial[40..42].copy_from_slice(&pseudo.to_be_bytes());
    for (frame, needs_csum) in [(jumbo.clone(), false), (partial, true)] {
        bed.pkt.set_frame(&frame);
        if needs_csum {
            crate::packet::vnet::VnetHeader {
                flags: 1,
                gso_type: 0,
                hdr_len: 0,
                gso_size: 0,
                csum_start: 34,
                csum_offset: 6,
            }
            .write(&mut bed.pkt.buf[..VNET_HDR_LEN]);
        }
        bed.now += 1;
        let verdict = bed
            .pipeline
            .process(&mut bed.ctx, bed.now, A1, &mut bed.pkt);
        assert_eq!(verdict, Verdict::Forward);
        let out = sent(&bed);
        assert_eq!(out.len(), 6, "8028 bytes of IP in 1500-byte fragments");
        assert!(out
            .iter()
            .all(|(port, f)| *port == UPLINK && f.len() <= 1514));
        for (_, f) in &out {
            assert_eq!(
                u16::from_be_bytes([f[18], f[19]]),
                0x4321,
                "one identification"
            );
            assert_eq!(f[22], 62, "TTL down by T1 and T0");
            assert_eq!(
                bed.ctx.buffer(&bed.ctx.tx[0], &bed.pkt).buf[0],
                0,
                "no offloads"
            );
        }
        let frames: Vec<Vec<u8>> = out.into_iter().map(|(_, f)| f).collect();
        let (src, dst, _, dport, payload) = reassembled_udp(&frames);
        assert_eq!((src, dst, dport), (EGRESS_A, OUTSIDE_HOST, 53));
        assert_eq!(payload, jumbo[42..].to_vec());
    }
    // A GSO frame is the kernel's batch of segments (UDP_SEGMENT here), each within the
    // MTU: it goes whole, offloads kept.
    let mut bed = Bed::new();
    let batch = with_df(
        big_udp(
            pod_mac(A1_IP),
            ROUTER_MAC,
            (A1_IP, 5353),
            (OUTSIDE_HOST, 53),
            5,
            8 * 1472,
        ),
        true,
    );
    bed.pkt.set_frame(&batch);
    crate::packet::vnet::VnetHeader {
        flags: 0,
        gso_type: crate::packet::vnet::GSO_UDP_L4,
        hdr_len: 42,
        gso_size: 1472,
        csum_start: 0,
        csum_offset: 0,
    }
    .write(&mut bed.pkt.buf[..VNET_HDR_LEN]);
    bed.now += 1;
    assert_eq!(
        bed.pipeline
            .process(&mut bed.ctx, bed.now, A1, &mut bed.pkt),
        Verdict::Forward
    );
    let (port, frame) = bed.out();
    assert_eq!((port, frame.len()), (UPLINK, batch.len()));
    assert_eq!(bed.pkt.buf[1], crate::packet::vnet::GSO_UDP_L4);
}

#[test]
fn a_directed_broadcast_is_dropped_silently_where_an_absent_host_is_unreachable() {
    let mut bed = Bed::new();
    // ping -b 172.211.0.143 (seg-b's broadcast) from a1, and the same from the outside: no
    // ICMP error about a broadcast (RFC 1812 section 4.3.2.7), nothing forwarded.
    let bcast = Ipv4Addr::new(172, 211, 0, 143);
    let from_a1 = ping(pod_mac(A1_IP), ROUTER_MAC, A1_IP, bcast, 64, 1);
    assert_eq!(bed.send(A1, &from_a1), Verdict::Drop(DropReason::NoRoute));
    assert!(bed.ctx.tx.is_empty(), "answered: {:?}", bed.ctx.tx);
    let from_outside = ping(UPLINK_PEER_MAC, ROUTER_MAC, OUTSIDE_HOST, bcast, 64, 2);
    assert_eq!(
        bed.send(UPLINK, &from_outside),
        Verdict::Drop(DropReason::NoRoute)
    );
    assert!(bed.ctx.tx.is_empty(), "answered: {:?}", bed.ctx.tx);
    // An address of the segment no pod has is unreachable, as ARP's silence tells a router:
    // once ARP failed, 3 s later, as from a Linux router (ping's "Destination Host
    // Unreachable" comes then, not at once).
    let absent = ping(
        pod_mac(A1_IP),
        ROUTER_MAC,
        A1_IP,
        Ipv4Addr::new(172, 211, 0, 140),
        64,
        3,
    );
    assert_eq!(bed.send(A1, &absent), Verdict::Drop(DropReason::NoRoute));
    assert!(bed.ctx.tx.is_empty(), "answered at once: {:?}", bed.ctx.tx);
    let held = bed.ctx.held.pop_front().expect("a host unreachable held");
    assert!(bed.ctx.held.is_empty());
    assert_eq!(held.port, A1);
    assert_eq!(held.due, bed.now + crate::pipeline::ARP_FAIL_MS);
    let error = held.frame.frame();
    assert_eq!((error[34], error[35]), (3, 1), "host unreachable");
    assert_eq!(&error[30..34], &A1_IP.octets(), "to the sender");
    // What the error quotes is the ping itself.
    assert_eq!(&error[42 + 16..42 + 20], &[172, 211, 0, 140]);
}

#[test]
fn a_ping_past_the_mtu_to_a_gateway_past_the_first_gets_fragmentation_needed() {
    let mut bed = Bed::new();
    // ping -M do -s 3000 100.64.0.0 (the T0; or its uplink, or another namespace's T1) from
    // a pod with MTU 9000: its T1 would forward it over the 1500 transit link, so the T1
    // refuses it, as a Linux router does, and tracepath to the T0 learns 1500 as it does to
    // anything past it.
    let payload = [7u8; 3000];
    for dst in [T0_TRANSIT_A, T0_UPLINK_IP, GW_B] {
        let mut b = vec![0u8; 3100];
        let n = build::build_icmp_echo(
            &mut b,
            pod_mac(A1_IP),
            ROUTER_MAC,
            A1_IP,
            dst,
            64,
            true,
            78,
            1,
            &payload,
        )
        .unwrap();
        assert_eq!(
            bed.send(A1, &b[..n]),
            Verdict::Drop(DropReason::FragNeeded),
            "to {dst}"
        );
        let (port, error) = bed.out();
        assert_eq!(port, A1);
        let ip = check(&error);
        assert_eq!(
            (ip.src, error[34], error[35]),
            (GW_A, 3, 4),
            "to {dst}: fragmentation needed from the T1, not an echo reply"
        );
        assert_eq!(u16::from_be_bytes([error[40], error[41]]), 1500);
    }
}

#[test]
fn tracepath_learns_the_mtu_at_the_first_gateway_whatever_the_ttl() {
    let mut bed = Bed::new();
    // tracepath from a1 with MTU 9000: its probes are big, DF set, TTL 1, 2, ...
    for (ttl, expect) in [(1u8, (11u8, 0u8)), (2, (3, 4)), (3, (3, 4))] {
        let mut probe = with_df(
            big_udp(
                pod_mac(A1_IP),
                ROUTER_MAC,
                (A1_IP, 44444),
                (OUTSIDE_HOST, 33434 + u16::from(ttl)),
                u16::from(ttl),
                8000,
            ),
            true,
        );
        probe[22] = ttl;
        fix_header_checksum(&mut probe);
        bed.send(A1, &probe);
        let (port, error) = bed.out();
        assert_eq!(port, A1);
        let ip = check(&error);
        assert_eq!(
            (ip.src, error[34], error[35]),
            (GW_A, expect.0, expect.1),
            "TTL {ttl}: the T1 answers, time exceeded at 1, fragmentation needed past it"
        );
    }
}

/// Tables of generation `generation` whose ClusterIP service (service 0, TCP port 80) and a
/// UDP one on port 53 (service 2) have `backends`, the DFW's hit counters those of `counters`.
fn tables_with_backends(generation: u64, backends: &[Ipv4Addr], counters: &Tables) -> Tables {
    let mut t = testbed::tables(generation, Options::default());
    t.rule_counters = Arc::clone(&counters.rule_counters);
    for (svc, protocol, port) in [(0, PROTO_TCP, 80), (2, PROTO_UDP, 53)] {
        let service = crate::tables::LbService::new(
            format!("ns-a/web:{port}"),
            protocol,
            crate::tables::Backend {
                ip: CLUSTER_IP,
                port,
            },
            backends
                .iter()
                .map(|&ip| crate::tables::Backend { ip, port })
                .collect(),
            crate::tables::LbAlgorithm::ConnectionHash,
        );
        if svc < t.services.len() {
            t.services[svc] = service;
        } else {
            t.services.push(service);
        }
        t.add_cluster_ip(
            crate::tables::FrontendKey {
                protocol,
                ip: CLUSTER_IP,
                port,
            },
            svc,
        );
    }
    t
}

#[test]
fn an_established_tcp_connection_keeps_its_backend_after_the_service_drops_it() {
    // a1's connection through the ClusterIP is up with one of a2, a3. Then the service's
    // selector (or targetPort) changes and that pod, still running, is no longer an endpoint:
    // as with kube-proxy, whose conntrack entry outlives the endpoint, the connection goes on
    // with it; a new connection goes to the service's current endpoint.
    let mut bed = Bed::new();
    let first = tables_with_backends(1, &[A2_IP, A3_IP], &bed.tables.load());
    bed.tables.store(Arc::new(first));
    let sport = 45000;
    let (port, backend) = bed.open_to_cluster_ip(sport);
    let other = if backend == A2_IP { A3_IP } else { A2_IP };
    let from_backend = |flags| backend_to_a1(backend, sport, flags);
    let from_a1 = a1_to_cluster_ip;
    assert_eq!(bed.send(port, &from_backend(SYN | ACK)), Verdict::Forward);
    assert_eq!(bed.send(A1, &from_a1(sport, ACK)), Verdict::Forward);
    let next = tables_with_backends(2, &[other], &bed.tables.load());
    bed.tables.store(Arc::new(next));
    assert_eq!(bed.send(A1, &from_a1(sport, ACK | 0x08)), Verdict::Forward);
    let (out_port, frame) = bed.out();
    assert_eq!(
        (out_port, check(&frame).dst),
        (port, backend),
        "the established connection stays with its backend"
    );
    assert_eq!(bed.send(port, &from_backend(ACK)), Verdict::Forward);
    let (out_port, frame) = bed.out();
    let reply = check(&frame);
    assert_eq!(
        (out_port, reply.src, reply.dst),
        (A1, CLUSTER_IP, A1_IP),
        "its answers still come from the ClusterIP"
    );
    let (_, new_backend) = bed.open_to_cluster_ip(sport + 1);
    assert_eq!(
        new_backend, other,
        "a new connection goes to the current endpoint"
    );
}

#[test]
fn a_udp_flow_and_a_reopened_tcp_connection_move_to_the_current_endpoint() {
    // kube-proxy flushes the conntrack entries of a removed UDP endpoint, and a SYN that
    // reopens a closed TCP connection is balanced afresh: neither stays on the old backend.
    const FIN: u8 = 0x01;
    let mut bed = Bed::new();
    let first = tables_with_backends(1, &[A2_IP, A3_IP], &bed.tables.load());
    bed.tables.store(Arc::new(first));
    let to_53 = udp(pod_mac(A1_IP), ROUTER_MAC, A1_IP, CLUSTER_IP, 64, 5353, 53);
    assert_eq!(bed.send(A1, &to_53), Verdict::Forward);
    let udp_backend = check(&bed.out().1).dst;
    let sport = 46000;
    let (port, backend) = bed.open_to_cluster_ip(sport);
    let from_backend = |flags| backend_to_a1(backend, sport, flags);
    let from_a1 = |flags| a1_to_cluster_ip(sport, flags);
    assert_eq!(bed.send(port, &from_backend(SYN | ACK)), Verdict::Forward);
    assert_eq!(bed.send(A1, &from_a1(ACK)), Verdict::Forward);
    assert_eq!(bed.send(A1, &from_a1(FIN | ACK)), Verdict::Forward);
    assert_eq!(bed.send(port, &from_backend(FIN | ACK)), Verdict::Forward);
    assert_eq!(bed.send(A1, &from_a1(ACK)), Verdict::Forward);
    let udp_other = if udp_backend == A2_IP { A3_IP } else { A2_IP };
    let tcp_other = if backend == A2_IP { A3_IP } else { A2_IP };
    let next = tables_with_backends(2, &[udp_other], &bed.tables.load());
    bed.tables.store(Arc::new(next));
    assert_eq!(bed.send(A1, &to_53), Verdict::Forward);
    assert_eq!(check(&bed.out().1).dst, udp_other, "the UDP flow moved");
    let next = tables_with_backends(3, &[tcp_other], &bed.tables.load());
    bed.tables.store(Arc::new(next));
    assert_eq!(bed.send(A1, &from_a1(SYN)), Verdict::Forward);
    assert_eq!(
        check(&bed.out().1).dst,
        tcp_other,
        "the reopening SYN went to the current endpoint"
    );
}

#[test]
fn a_connection_judged_again_under_new_tables_is_not_counted_again_by_the_dfw() {
    // `get dfw` counts connections: one a2 -> a1 connection, and three unrelated changes of
    // the tables while it carries data, leave its rule at one hit.
    let mut bed = Bed::new();
    let allow_slot = bed.rule_counter(Direction::In, 0, "allow-intra-namespace");
    let egress_slot = bed.rule_counter(Direction::Out, 0, "allow-egress");
    let from_a2 = |flags| tcp(pod_mac(A2_IP), ROUTER_MAC, A2_IP, A1_IP, 40000, 80, flags);
    assert_eq!(bed.send(A2, &from_a2(SYN)), Verdict::Forward);
    for generation in 2..5 {
        let mut t = testbed::tables(generation, Options::default());
        t.rule_counters = Arc::clone(&bed.tables.load().rule_counters);
        bed.tables.store(Arc::new(t));
        assert_eq!(bed.send(A2, &from_a2(ACK)), Verdict::Forward);
    }
    let counters = &bed.tables.load().rule_counters;
    assert_eq!(
        (counters.get(allow_slot), counters.get(egress_slot)),
        (1, 1),
        "one connection, one hit per rule"
    );
}

/// Tables of generation `generation` whose ClusterIP (service 0) balances least-connections
/// over `backends`, taking over the counts of `old` as the daemon's publication does.
fn least_connections_tables(generation: u64, backends: &[Ipv4Addr], old: &Tables) -> Tables {
    let mut t = testbed::tables(generation, Options::default());
    t.services[0] = crate::tables::LbService::new(
        "ns-a/web:80".into(),
        PROTO_TCP,
        crate::tables::Backend {
            ip: CLUSTER_IP,
            port: 80,
        },
        backends
            .iter()
            .map(|&ip| crate::tables::Backend { ip, port: 80 })
            .collect(),
        crate::tables::LbAlgorithm::LeastConnections,
    );
    t.carry_lb_counts(old);
    t
}

#[test]
fn least_connections_remembers_open_connections_across_a_change() {
    // Two long connections on a2, the only replica; the deployment scales up (new tables with
    // a3 too): the next two connections go to a3, the one without any, as IPVS's lc would
    // send them; and one of a2's connections that closes afterwards gives its count back.
    const FIN: u8 = 0x01;
    let mut bed = Bed::new();
    let first = least_connections_tables(1, &[A2_IP], &bed.tables.load());
    bed.tables.store(Arc::new(first));
    for sport in [47000, 47001] {
        assert_eq!(bed.open_to_cluster_ip(sport), (A2, A2_IP));
        let syn_ack = tcp(
            pod_mac(A2_IP),
            ROUTER_MAC,
            A2_IP,
            A1_IP,
            80,
            sport,
            SYN | ACK,
        );
        assert_eq!(bed.send(A2, &syn_ack), Verdict::Forward);
    }
    let next = least_connections_tables(2, &[A2_IP, A3_IP], &bed.tables.load());
    bed.tables.store(Arc::new(next));
    for sport in [47002, 47003] {
        assert_eq!(
            bed.open_to_cluster_ip(sport),
            (A3, A3_IP),
            "a new connection goes to the new replica, which has fewer"
        );
    }
    let fin = tcp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        A1_IP,
        CLUSTER_IP,
        47000,
        80,
        FIN | ACK,
    );
    assert_eq!(bed.send(A1, &fin), Verdict::Forward);
    let t = bed.tables.load();
    let counts: Vec<u64> = t.services[0]
        .active
        .iter()
        .map(|a| a.load(Relaxed))
        .collect();
    assert_eq!(counts, vec![1, 2], "a2 keeps one open connection, a3 two");
}

#[test]
fn an_established_tcp_connection_outlives_its_cluster_ip_service() {
    // The service is deleted (to be applied again, say) while a1's connection through its
    // ClusterIP is up: as kube-proxy's conntrack entry, the connection goes on with its pod;
    // a new connection to the ClusterIP reaches no pod, and neither does a UDP flow's next
    // datagram (kube-proxy flushes a deleted UDP service's entries).
    let mut bed = Bed::new();
    let first = tables_with_backends(1, &[A2_IP, A3_IP], &bed.tables.load());
    bed.tables.store(Arc::new(first));
    let to_53 = udp(pod_mac(A1_IP), ROUTER_MAC, A1_IP, CLUSTER_IP, 64, 5353, 53);
    assert_eq!(bed.send(A1, &to_53), Verdict::Forward);
    let sport = 48000;
    let (port, backend) = bed.open_to_cluster_ip(sport);
    let from_backend = |flags| backend_to_a1(backend, sport, flags);
    let from_a1 = a1_to_cluster_ip;
    assert_eq!(bed.send(port, &from_backend(SYN | ACK)), Verdict::Forward);
    assert_eq!(bed.send(A1, &from_a1(sport, ACK)), Verdict::Forward);
    let mut next = testbed::tables(2, Options::default());
    next.cluster_ips.clear();
    next.cluster_ip_addrs.clear();
    bed.tables.store(Arc::new(next));
    assert_eq!(bed.send(A1, &from_a1(sport, ACK | 0x08)), Verdict::Forward);
    let (out_port, frame) = bed.out();
    assert_eq!(
        (out_port, check(&frame).dst),
        (port, backend),
        "the established connection goes on with its pod"
    );
    assert_eq!(bed.send(port, &from_backend(ACK)), Verdict::Forward);
    let (out_port, frame) = bed.out();
    let reply = check(&frame);
    assert_eq!((out_port, reply.src, reply.dst), (A1, CLUSTER_IP, A1_IP));
    bed.send(A1, &from_a1(sport + 1, SYN));
    assert!(
        bed.ctx.tx.iter().all(|tx| tx.port == A1),
        "a new connection reaches no pod: {:?}",
        bed.ctx.tx
    );
    bed.send(A1, &to_53);
    assert!(
        bed.ctx.tx.iter().all(|tx| tx.port == A1),
        "the UDP flow reaches no pod: {:?}",
        bed.ctx.tx
    );
}

/// The automap port a VIP connection's segment left with.
fn tcp_src(ip: &crate::packet::parse::Ipv4Info) -> (Ipv4Addr, u16) {
    let L4::Tcp { src_port, .. } = ip.l4 else {
        panic!("not TCP: {ip:?}")
    };
    (ip.src, src_port)
}

/// Tables of generation `generation` whose VIP (service 1) balances round-robin over a2, a3.
fn vip_over_a2_a3(generation: u64) -> Tables {
    let mut t = testbed::tables(generation, Options::default());
    let b = |ip| crate::tables::Backend { ip, port: 80 };
    let mut vip = crate::tables::LbService::new(
        "ns-a/web:80 (VIP)".into(),
        PROTO_TCP,
        b(VIP),
        vec![b(A2_IP), b(A3_IP)],
        crate::tables::LbAlgorithm::RoundRobin,
    );
    vip.snat_automap = true;
    t.services[1] = vip;
    t
}

#[test]
fn an_established_tcp_connection_from_a_pod_to_a_vip_outlives_a_change() {
    // Two connections of a1 to the VIP reach a2 and a3 from the T1's address (automap). New
    // tables (any apply) judge them again: each keeps its member and translation, where each
    // used to be balanced afresh (round-robin from the start: the later one went to a2, from
    // another port, and a2 answered with a RST).
    let mut bed = Bed::new();
    bed.tables.store(Arc::new(vip_over_a2_a3(1)));
    let from_a1 = |sport, flags| tcp(pod_mac(A1_IP), ROUTER_MAC, A1_IP, VIP, sport, 80, flags);
    let mut opened = Vec::new();
    for sport in [41000, 41001] {
        assert_eq!(bed.send(A1, &from_a1(sport, SYN)), Verdict::Forward);
        let (port, frame) = bed.out();
        let syn = check(&frame);
        let member = (port, syn.dst, tcp_src(&syn));
        let synack = tcp(
            pod_mac(syn.dst),
            ROUTER_MAC,
            syn.dst,
            GW_A,
            80,
            tcp_src(&syn).1,
            SYN | ACK,
        );
        assert_eq!(bed.send(port, &synack), Verdict::Forward);
        assert_eq!(bed.out().0, A1);
        assert_eq!(bed.send(A1, &from_a1(sport, ACK)), Verdict::Forward);
        opened.push((sport, member));
    }
    assert_ne!(opened[0].1 .1, opened[1].1 .1, "one on a2, one on a3");
    bed.tables.store(Arc::new(vip_over_a2_a3(2)));
    for &(sport, member) in opened.iter().rev() {
        assert_eq!(bed.send(A1, &from_a1(sport, ACK | 0x08)), Verdict::Forward);
        let (port, frame) = bed.out();
        let data = check(&frame);
        assert_eq!(
            (port, data.dst, tcp_src(&data)),
            member,
            "the connection keeps its member and its automap address and port"
        );
    }
}

#[test]
fn an_established_tcp_connection_outlives_its_vip_port_change() {
    // The VIP's `port: 80` becomes 8080 while an outside client's connection on 80 is up: as
    // kube-proxy's conntrack entry, it goes on with its member; a new connection to :80 is
    // refused as to any port the VIP does not serve.
    let mut bed = Bed::new();
    let from_outside = |sport, flags| {
        tcp(
            UPLINK_PEER_MAC,
            ROUTER_MAC,
            OUTSIDE_HOST,
            VIP,
            sport,
            80,
            flags,
        )
    };
    assert_eq!(
        bed.send(UPLINK, &from_outside(42000, SYN)),
        Verdict::Forward
    );
    let (_, frame) = bed.out();
    let syn = check(&frame);
    let (back, _) = a2_answers_the_t1_address(&mut bed, &syn);
    assert_eq!(back, UPLINK);
    assert_eq!(
        bed.send(UPLINK, &from_outside(42000, ACK)),
        Verdict::Forward
    );
    let mut next = testbed::tables(2, Options::default());
    let key = |port| crate::tables::FrontendKey {
        protocol: PROTO_TCP,
        ip: VIP,
        port,
    };
    let svc = next.vips.remove(&key(80)).expect("the testbed's VIP");
    next.vips.insert(key(8080), svc);
    bed.tables.store(Arc::new(next));
    assert_eq!(
        bed.send(UPLINK, &from_outside(42000, ACK | 0x08)),
        Verdict::Forward
    );
    let (port, frame) = bed.out();
    let data = check(&frame);
    assert_eq!(
        (port, data.dst, tcp_src(&data)),
        (A2, A2_IP, tcp_src(&syn)),
        "the connection on the old port goes on with its member"
    );
    bed.send(UPLINK, &from_outside(42001, SYN));
    let (port, frame) = bed.out();
    let rst = check(&frame);
    assert_eq!(
        (port, rst.src),
        (UPLINK, VIP),
        "a new one to :80 is refused"
    );
    assert!(matches!(rst.l4, L4::Tcp { flags, .. } if flags & 0x04 != 0));
}

#[test]
fn a_first_packet_refused_as_too_big_leaves_no_connection_behind() {
    // a1 raised its MTU to 9000 and its first packet to the outside is 8000 bytes with DF
    // (ping -M do -s 8000): refused with "fragmentation needed", as a Linux router refuses it
    // before its conntrack confirms the flow, so no SNAT entry stands for a packet that never
    // left (`pacific get nat` lists none, and no egress port is taken for it).
    let mut bed = Bed::new();
    let jumbo = big_udp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        (A1_IP, 5354),
        (OUTSIDE_HOST, 53),
        1,
        8000,
    );
    assert_eq!(
        bed.send(A1, &with_df(jumbo, true)),
        Verdict::Drop(DropReason::FragNeeded)
    );
    assert_eq!(bed.out().0, A1, "answered to the sender, nothing forwarded");
    let key = FlowKey {
        protocol: PROTO_UDP,
        src: A1_IP,
        dst: OUTSIDE_HOST,
        src_port: 5354,
        dst_port: 53,
    };
    assert!(
        bed.pipeline.conntrack.get(&key).is_none(),
        "a connection was created for a packet that was refused"
    );
    assert_eq!(bed.pipeline.conntrack.snapshot(16).len(), 0);
    // The same flow at the path MTU then goes, and is tracked once.
    let fits = big_udp(
        pod_mac(A1_IP),
        ROUTER_MAC,
        (A1_IP, 5354),
        (OUTSIDE_HOST, 53),
        2,
        1500 - 28,
    );
    assert_eq!(bed.send(A1, &with_df(fits, true)), Verdict::Forward);
    assert_eq!(bed.out().0, UPLINK);
    assert_eq!(bed.pipeline.conntrack.snapshot(16).len(), 1);
}

#[test]
fn a_flow_the_destination_denies_counts_once_on_the_senders_egress_allow() {
    // b1 -> a1 is dropped by ns-a's default deny. NSX's sender-side state holds the flow its
    // egress allowed, so the SYN's retransmits count on the drop rule each time and on the
    // sender's egress allow once; another flow (a new source port) counts there again.
    let mut bed = Bed::new();
    let deny_slot = bed.rule_counter(Direction::In, 0, "default-deny-ingress");
    let egress_slot = bed.rule_counter(Direction::Out, 1, "allow-egress");
    let syn = |sport| tcp(pod_mac(B1_IP), ROUTER_MAC, B1_IP, A1_IP, sport, 80, SYN);
    for _ in 0..3 {
        assert_eq!(
            bed.send(B1, &syn(40000)),
            Verdict::Drop(DropReason::DfwDeny)
        );
    }
    let counters = &bed.tables.load().rule_counters;
    assert_eq!(
        (counters.get(deny_slot), counters.get(egress_slot)),
        (3, 1),
        "three SYNs of one flow: the drop each time, the egress allow once"
    );
    assert_eq!(
        bed.send(B1, &syn(40001)),
        Verdict::Drop(DropReason::DfwDeny)
    );
    // Past the SYN_SENT timeout the sender's state is gone, and the flow counts anew.
    bed.now += bed.pipeline.conntrack.config().timeouts.tcp_syn_sent + 1000;
    assert_eq!(
        bed.send(B1, &syn(40000)),
        Verdict::Drop(DropReason::DfwDeny)
    );
    let counters = &bed.tables.load().rule_counters;
    assert_eq!((counters.get(deny_slot), counters.get(egress_slot)), (5, 3));
}

#[test]
fn a_routed_tcp_segment_that_opens_nothing_is_dropped_as_conntrack_invalid() {
    // a1 -> outside with no connection: a RST, a FIN-ACK, a SYN-ACK, SYN+FIN and no flags are
    // conntrack INVALID on a Linux router (kube-proxy's FORWARD drops them); a SYN and a bare
    // ACK (picked up midway) open a connection and leave by the uplink.
    let mut bed = Bed::new();
    for (flags, sport) in [
        (0x04, 41000),
        (0x11, 41001),
        (0x12, 41002),
        (0x03, 41003),
        (0, 41004),
    ] {
        let seg = tcp(
            pod_mac(A1_IP),
            ROUTER_MAC,
            A1_IP,
            OUTSIDE_HOST,
            sport,
            80,
            flags,
        );
        assert_eq!(
            bed.send(A1, &seg),
            Verdict::Drop(DropReason::ConntrackInvalid),
            "flags {flags:#04x}"
        );
        assert!(bed.ctx.tx.is_empty(), "flags {flags:#04x} left");
    }
    assert_eq!(bed.pipeline.conntrack.len(), 0, "no connection was made");
    for (flags, sport) in [(SYN, 41005), (ACK, 41006), (ACK | 0x08, 41007)] {
        let seg = tcp(
            pod_mac(A1_IP),
            ROUTER_MAC,
            A1_IP,
            OUTSIDE_HOST,
            sport,
            80,
            flags,
        );
        assert_eq!(bed.send(A1, &seg), Verdict::Forward, "flags {flags:#04x}");
        assert_eq!(bed.out().0, UPLINK);
    }
}

#[test]
fn runts_and_broken_ipv4_headers_are_dropped_as_malformed_and_never_answered() {
    // What `pacific get ports` counts under `malformed`: a frame shorter than an Ethernet
    // header, an IPv4 header cut short, one with a wrong checksum, one whose IHL is below 5.
    let mut bed = Bed::new();
    let good = ping(pod_mac(A1_IP), ROUTER_MAC, A1_IP, OUTSIDE_HOST, 64, 7);
    assert_eq!(
        bed.send(A1, &good),
        Verdict::Forward,
        "the unbroken ping passes"
    );
    bed.ctx.tx.clear();
    let mut broken: Vec<(String, Vec<u8>)> = (0..14)
        .map(|n| (format!("{n}-byte frame"), good[..n].to_vec()))
        .collect();
    broken.push((
        "IPv4 header cut at 12 bytes".into(),
        good[..14 + 12].to_vec(),
    ));
    let mut checksum = good.clone();
    checksum[14 + 10] ^= 0x55;
    broken.push(("bad header checksum".into(), checksum));
    let mut ihl = good.clone();
    ihl[14] = 0x44;
    broken.push(("IHL 4".into(), ihl));
    for (what, frame) in broken {
        assert_eq!(
            bed.send(A1, &frame),
            Verdict::Drop(DropReason::Malformed),
            "{what}"
        );
        assert!(bed.ctx.tx.is_empty(), "{what}: {:?}", bed.ctx.tx);
    }
}

/// `ping`'s echo request turned into another ICMP query of `icmp_type` (timestamp, ...), the
/// ICMP checksum made right for it.
fn icmp_query(
    src_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp_type: u8,
    ident: u16,
) -> Vec<u8> {
    let mut b = ping(src_mac, ROUTER_MAC, src, dst, 64, ident);
    b[34] = icmp_type;
    b[36..38].fill(0);
    let sum = checksum::finish(checksum::sum(&b[34..], 0));
    b[36..38].copy_from_slice(&sum.to_be_bytes());
    b
}

#[test]
fn two_pods_timestamp_queries_with_one_identifier_get_their_own_replies_through_the_snat() {
    // clockdiff or `nmap -PP` in two pods at once, to one outside host, with the same
    // identifier: as with echo, the SNAT gives the second its own identifier (Linux conntrack
    // tracks timestamp, information and address mask queries by it), and each reply goes back.
    let mut bed = Bed::new();
    let mut sent = Vec::new();
    for (port, ip) in [(A1, A1_IP), (A2, A2_IP)] {
        let request = icmp_query(pod_mac(ip), ip, OUTSIDE_HOST, icmp::TIMESTAMP_REQUEST, 777);
        assert_eq!(bed.send(port, &request), Verdict::Forward);
        let (out, frame) = bed.out();
        assert_eq!(out, UPLINK);
        let seen = check(&frame);
        assert_eq!((seen.src, frame[34]), (EGRESS_A, icmp::TIMESTAMP_REQUEST));
        sent.push(u16::from_be_bytes([frame[38], frame[39]]));
    }
    assert_ne!(sent[0], sent[1], "two queries leave with one identifier");
    for ((port, ip), ident) in [(A2, A2_IP), (A1, A1_IP)]
        .into_iter()
        .zip([sent[1], sent[0]])
    {
        let reply = icmp_query(
            UPLINK_PEER_MAC,
            OUTSIDE_HOST,
            EGRESS_A,
            icmp::TIMESTAMP_REPLY,
            ident,
        );
        assert_eq!(bed.send(UPLINK, &reply), Verdict::Forward);
        let (out, frame) = bed.out();
        assert_eq!(out, port, "the reply to {ip} goes to its pod");
        let seen = check(&frame);
        assert_eq!(seen.dst, ip);
        assert_eq!(u16::from_be_bytes([frame[38], frame[39]]), 777);
    }
}
