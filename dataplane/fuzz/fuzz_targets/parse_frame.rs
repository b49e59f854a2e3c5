//! `parse_frame` on arbitrary bytes, and on what it accepts, every rewrite and builder that
//! takes a parsed frame, on a copy.
//!
//! What must hold (a panic anywhere is a finding too):
//! - an accepted IPv4 frame has the offsets its `Ipv4Info` promises;
//! - after TTL decrement, SNAT, DNAT and ICMP-error inner translation the frame still parses,
//!   shows the new addresses, its IP header checksum is right, and a transport checksum that was
//!   right is still right (incremental updates, RFC 1624);
//! - the frames built in answer (echo reply, TCP reset, ICMP error) parse and their checksums are
//!   right.
//!
//! `parse_frame` verifies the IPv4 header checksum first, which almost every mutation breaks; so
//! each input is tried twice, the second time with that checksum made right, to let the fuzzer
//! reach the transport layer.

#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use pacific_dataplane::packet::rewrite::verify_checksums;
use pacific_dataplane::packet::{
    build_icmp_error, build_tcp_rst, checksum, decrement_ttl, make_echo_reply_in_place,
    parse_frame, rewrite_dst, rewrite_icmp_error_inner, rewrite_src, Ipv4Info, MacAddr, VnetHeader,
    ECHO_REQUEST, L3, L4, TIME_EXCEEDED, VNET_HDR_LEN,
};

const NEW_SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 1);
const NEW_DST: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 17);
const ROUTER_MAC: MacAddr = MacAddr([0x02, 0x50, 0x41, 0x43, 0x00, 0x01]);
const PEER_MAC: MacAddr = MacAddr([0x02, 0x50, 0x41, 0x43, 0x00, 0x02]);

fuzz_target!(|data: &[u8]| {
    vnet_round_trip(data);
    exercise(data);
    if let Some(fixed) = with_ip_checksum_fixed(data) {
        exercise(&fixed);
    }
});

/// A virtio-net header written back is the bytes it was read from.
fn vnet_round_trip(data: &[u8]) {
    if let Some(h) = VnetHeader::parse(data) {
        let mut out = [0u8; VNET_HDR_LEN];
        h.write(&mut out);
        assert_eq!(out[..], data[..VNET_HDR_LEN]);
    }
}

/// `data` with the IPv4 header checksum recomputed, when it looks like Ethernet + IPv4 with its
/// whole header present.
fn with_ip_checksum_fixed(data: &[u8]) -> Option<Vec<u8>> {
    if data.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let header_len = usize::from(data.get(14)? & 0x0f) * 4;
    if header_len < 20 {
        return None;
    }
    let header = data.get(14..14 + header_len)?;
    let mut fixed = data.to_vec();
    fixed[24..26].copy_from_slice(&checksum::ipv4_header_checksum(header).to_be_bytes());
    Some(fixed)
}

fn exercise(data: &[u8]) {
    let Ok(parsed) = parse_frame(data) else {
        return;
    };
    let L3::Ipv4(ip) = parsed.l3 else { return };
    assert!(ip.header_len >= 20 && ip.header_len <= ip.total_len);
    assert!(ip.offset + ip.total_len <= data.len());
    let before = verify_checksums(data).expect("an accepted frame is checked");
    assert!(before.0, "parse_frame accepted a bad IP header checksum");

    for partial in [false, true] {
        rewrite_all(data, &ip, before.1, partial);
    }
    answer(data, &ip);
}

fn rewrite_all(data: &[u8], ip: &Ipv4Info, transport_ok: bool, partial: bool) {
    let mut f = data.to_vec();
    if ip.ttl > 1 {
        decrement_ttl(&mut f, ip, 1);
    }
    rewrite_src(&mut f, ip, NEW_SRC, 4242, partial);
    rewrite_dst(&mut f, ip, NEW_DST, 8080, partial);
    if let L4::IcmpError { inner, .. } = ip.l4 {
        rewrite_icmp_error_inner(&mut f, ip, &inner, Some((NEW_DST, 1)), Some((NEW_SRC, 2)));
    }
    let Ok(parsed) = parse_frame(&f) else {
        panic!("a rewritten frame no longer parses (partial: {partial})")
    };
    let L3::Ipv4(after) = parsed.l3 else {
        panic!("a rewritten frame is no longer IPv4")
    };
    assert_eq!((after.src, after.dst), (NEW_SRC, NEW_DST));
    assert_eq!(after.ttl, if ip.ttl > 1 { ip.ttl - 1 } else { ip.ttl });
    let checks = verify_checksums(&f).expect("it parsed");
    assert!(checks.0, "IP header checksum broken by a rewrite");
    // A partial (CHECKSUM_PARTIAL) checksum is completed later, over the new bytes.
    if !partial && transport_ok {
        assert!(checks.1, "transport checksum broken by a rewrite");
    }
}

/// The frames the router builds in answer to this one.
fn answer(data: &[u8], ip: &Ipv4Info) {
    let mut out = [0u8; 1024];

    if let L4::IcmpEcho {
        icmp_type: ECHO_REQUEST,
        ..
    } = ip.l4
    {
        let mut f = data.to_vec();
        let n = make_echo_reply_in_place(&mut f, ip, ROUTER_MAC).expect("an echo request");
        assert_eq!(n, ip.offset + ip.total_len);
        assert!(parse_frame(&f[..n]).is_ok(), "echo reply does not parse");
    }

    if let Some(n) = build_tcp_rst(&mut out, ROUTER_MAC, PEER_MAC, data, ip) {
        assert!(parse_frame(&out[..n]).is_ok(), "reset does not parse");
        assert_eq!(verify_checksums(&out[..n]), Some((true, true)));
    }

    let original = &data[ip.offset..ip.offset + ip.total_len];
    let from = Ipv4Addr::new(100, 64, 0, 1);
    let n = build_icmp_error(
        &mut out,
        ROUTER_MAC,
        PEER_MAC,
        from,
        TIME_EXCEEDED,
        0,
        0,
        original,
    )
    .expect("a 576-byte error fits in 1024");
    let Ok(parsed) = parse_frame(&out[..n]) else {
        panic!("ICMP error does not parse")
    };
    let L3::Ipv4(error) = parsed.l3 else {
        panic!("ICMP error is not IPv4")
    };
    assert!(matches!(error.l4, L4::IcmpError { .. }), "{:?}", error.l4);
    assert_eq!(verify_checksums(&out[..n]), Some((true, true)));
}
