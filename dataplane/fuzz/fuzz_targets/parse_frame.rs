//! `parse_frame` on arbitrary bytes, and on what it accepts, every rewrite and builder that
//! takes a parsed frame, on a copy.
//!
//! What must hold (a panic anywhere is a finding too):
//! - an accepted IPv4 frame has the offsets its `Ipv4Info` promises;
//! - after TTL decrement, SNAT, DNAT and ICMP-error inner translation the frame still parses,
//!   shows the new addresses, its IP header checksum is right, and a transport checksum that was
//!   right is still right (incremental updates, RFC 1624);
//! - the frames built in answer (echo reply, TCP reset, ICMP error) parse and their checksums are
//!   right;
//! - IP options, on the bytes as they come (any IHL, cut short or not) and as the options of a
//!   header of IHL 6..15 (`data[1..]`, after 20 fixed bytes): `ip_options_problem` points inside
//!   the options, and its parameter problem carries that pointer; `record_route` and `timestamp`
//!   change nothing, or only the value bytes of one record-route / timestamp option (past its
//!   type and length) with the header checksum right, the header length and payload as they were.
//!
//! `parse_frame` verifies the IPv4 header checksum first, which almost every mutation breaks; so
//! each input is tried twice, the second time with that checksum made right, to let the fuzzer
//! reach the transport layer.

#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use pacific_dataplane::packet::parse::ip_options_problem;
use pacific_dataplane::packet::rewrite::{record_route, timestamp, verify_checksums};
use pacific_dataplane::packet::{
    build_icmp_error, build_tcp_rst, checksum, decrement_ttl, make_echo_reply_in_place,
    parse_frame, rewrite_dst, rewrite_icmp_error_inner, rewrite_src, Ipv4Info, MacAddr, VnetHeader,
    ECHO_REQUEST, L3, L4, PARAM_PROBLEM, TIME_EXCEEDED, VNET_HDR_LEN,
};

const NEW_SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 1);
const NEW_DST: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 17);
const ROUTER_MAC: MacAddr = MacAddr([0x02, 0x50, 0x41, 0x43, 0x00, 0x01]);
const PEER_MAC: MacAddr = MacAddr([0x02, 0x50, 0x41, 0x43, 0x00, 0x02]);
/// The gateways a packet crosses, as many as the pipeline finds (at most 8).
const CROSSED: [Ipv4Addr; 8] = [
    Ipv4Addr::new(100, 64, 0, 1),
    Ipv4Addr::new(100, 64, 0, 0),
    Ipv4Addr::new(203, 0, 113, 2),
    Ipv4Addr::new(172, 211, 0, 1),
    Ipv4Addr::new(100, 64, 0, 3),
    Ipv4Addr::new(100, 64, 0, 2),
    Ipv4Addr::new(172, 96, 0, 1),
    Ipv4Addr::new(172, 80, 0, 1),
];
const OPTION_RECORD_ROUTE: u8 = 7;
const OPTION_TIMESTAMP: u8 = 68;

fuzz_target!(|data: &[u8]| {
    vnet_round_trip(data);
    ip_options(data);
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
    answer(data, &ip, before.1);
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
fn answer(data: &[u8], ip: &Ipv4Info, transport_ok: bool) {
    let mut out = [0u8; 1024];

    if let L4::IcmpEcho {
        icmp_type: ECHO_REQUEST,
        ..
    } = ip.l4
    {
        // A request whose ICMP checksum is wrong is dropped unanswered, as Linux drops it.
        let mut f = data.to_vec();
        match make_echo_reply_in_place(&mut f, ip, ROUTER_MAC) {
            Some(n) => {
                assert_eq!(n, ip.offset + ip.total_len);
                assert!(parse_frame(&f[..n]).is_ok(), "echo reply does not parse");
            }
            None => {
                assert!(
                    !transport_ok || ip.is_fragment,
                    "a good echo request unanswered"
                );
                assert_eq!(f, data, "an unanswered request was changed");
            }
        }
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

/// The IP-options code on `data` as it comes, then as the options of a well-formed header.
fn ip_options(data: &[u8]) {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(select >> 4) % (CROSSED.len() + 1);
    let ms = u32::from_be_bytes([select, 0, 0, select]);
    // As they come: any IHL, the header possibly shorter than it says. No panic is all.
    let _ = ip_options_problem(data);
    let mut raw = data.to_vec();
    record_route(&mut raw, &CROSSED[..n]);
    timestamp(&mut raw, &CROSSED[..n], ms);

    let ihl = 6 + (select & 0x0f) % 10;
    let header_len = usize::from(ihl) * 4;
    let mut packet = vec![0x40 | ihl, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    packet.extend_from_slice(&[172, 211, 0, 20, 198, 51, 100, 10]);
    packet.extend_from_slice(&rest[..rest.len().min(header_len - 20)]);
    packet.resize(header_len, 0);
    packet.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
    packet[2..4].copy_from_slice(&((header_len + 8) as u16).to_be_bytes());
    let sum = checksum::ipv4_header_checksum(&packet[..header_len]);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());

    let problem = ip_options_problem(&packet[..header_len]);
    if let Some(p) = problem {
        assert!(
            (20..header_len).contains(&usize::from(p)),
            "pointer {p} outside the options"
        );
        let mut out = [0u8; 256];
        let len = build_icmp_error(
            &mut out,
            ROUTER_MAC,
            PEER_MAC,
            Ipv4Addr::new(172, 211, 0, 1),
            PARAM_PROBLEM,
            0,
            u16::from(p),
            &packet,
        )
        .expect("a parameter problem fits in 256");
        assert_eq!(out[14 + 20 + 4], p, "parameter problem pointer");
        assert_eq!(verify_checksums(&out[..len]), Some((true, true)));
    }

    let mut after = packet.clone();
    if record_route(&mut after, &CROSSED[..n]) {
        let s = only_the_option_changed(&packet, &after, OPTION_RECORD_ROUTE);
        let (from, to) = (usize::from(packet[s + 2]), usize::from(after[s + 2]));
        assert!(
            to > from && (to - from) % 4 == 0 && (to - from) / 4 <= n,
            "pointer {from} -> {to}"
        );
        let recorded: Vec<u8> = CROSSED.iter().flat_map(|a| a.octets()).collect();
        assert_eq!(
            after[s + from - 1..s + to - 1],
            recorded[..to - from],
            "addresses recorded"
        );
    } else {
        assert_eq!(
            after, packet,
            "record_route changed a packet it says it left"
        );
    }

    let mut after = packet.clone();
    if timestamp(&mut after, &CROSSED[..n], ms) {
        let s = only_the_option_changed(&packet, &after, OPTION_TIMESTAMP);
        assert!(after[s + 2] >= packet[s + 2], "timestamp pointer went back");
        assert_eq!(after[s + 3] & 0x0f, packet[s + 3] & 0x0f, "timestamp flags");
        assert!(
            after[s + 3] >> 4 >= packet[s + 3] >> 4,
            "timestamp overflow went back"
        );
    } else {
        assert_eq!(after, packet, "timestamp changed a packet it says it left");
    }
}

/// Where each option of `header` starts and ends, walked as a router walks them, up to the
/// end-of-options or the first that does not parse.
fn option_spans(header: &[u8]) -> Vec<(usize, usize)> {
    let end = usize::from(header[0] & 0x0f) * 4;
    let mut spans = Vec::new();
    let mut at = 20;
    while at < end && header[at] != 0 {
        let len = if header[at] == 1 {
            1
        } else {
            usize::from(header.get(at + 1).copied().unwrap_or(0))
        };
        if len == 0 || (header[at] != 1 && len < 2) || at + len > end {
            break;
        }
        spans.push((at, at + len));
        at += len;
    }
    spans
}

/// That `after` is `before` but for the checksum and the value bytes of one option of `kind`,
/// the header checksum right: the start of that option.
fn only_the_option_changed(before: &[u8], after: &[u8], kind: u8) -> usize {
    let header_len = usize::from(before[0] & 0x0f) * 4;
    assert_eq!(after.len(), before.len());
    assert_eq!(after[0], before[0], "header length changed");
    assert_eq!(after[header_len..], before[header_len..], "payload changed");
    assert_eq!(
        checksum::ipv4_header_checksum(&after[..header_len]).to_be_bytes(),
        after[10..12],
        "header checksum wrong"
    );
    let changed: Vec<usize> = (0..header_len)
        .filter(|&i| !(10..12).contains(&i) && after[i] != before[i])
        .collect();
    let span = option_spans(before)
        .into_iter()
        .find(|&(s, e)| before[s] == kind && changed.iter().all(|&i| i >= s + 2 && i < e));
    match span {
        Some((s, _)) => s,
        None => panic!("bytes {changed:?} changed outside an option {kind}"),
    }
}
