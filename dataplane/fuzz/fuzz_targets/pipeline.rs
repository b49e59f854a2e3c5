//! The whole pipeline on arbitrary frames: the testbed's topology (`testbed.rs`: two
//! namespaces, a ClusterIP, a VIP, egress SNAT, the DFW defaults), frames fed one after another
//! so that one can create the connection, NAT binding or fragment state a later one hits.
//!
//! The input is a sequence of records: one byte picks the ingress port (the testbed's five and
//! one it does not know), one byte says whether a virtio-net header follows (10 bytes, taken as
//! a TAP would hand them over), two bytes give the frame's length, then the frame. Every few
//! records the clock jumps and the tables expire.
//!
//! What must hold (a panic anywhere is a finding too): a frame the router lets pass or answers
//! goes only to a known port, and an IPv4 frame sent has a right header checksum; a dropped or
//! consumed frame is never passed on as it came (at most answered from scratch).

#![no_main]

use std::sync::Arc;

use arc_swap::ArcSwap;
use libfuzzer_sys::fuzz_target;
use pacific_dataplane::conntrack::ConntrackConfig;
use pacific_dataplane::packet::{checksum, parse_frame, L3, VNET_HDR_LEN};
use pacific_dataplane::pipeline::{PacketBuf, Pipeline, TxSource, Verdict, WorkerContext};
use pacific_dataplane::testbed::{self, Options, A1, A2, A3, B1, UPLINK};

const PORTS: [u32; 6] = [UPLINK, A1, A2, A3, B1, 77];

fuzz_target!(|data: &[u8]| {
    let tables = Arc::new(ArcSwap::from_pointee(testbed::tables(
        1,
        Options::default(),
    )));
    // A small table: set up in microseconds, and full (evicting) within one input.
    let config = ConntrackConfig {
        max_connections: 16,
        ..ConntrackConfig::default()
    };
    let pipeline = Pipeline::with_config(tables, config);
    let mut ctx = WorkerContext::default();
    let mut pkt = PacketBuf::new();
    let mut now = 1000u64;
    let mut rest = data;
    let mut records = 0u32;
    while let [port, with_header, len_hi, len_lo, tail @ ..] = rest {
        let port = PORTS[usize::from(*port) % PORTS.len()];
        let mut tail = tail;
        let mut header = [0u8; VNET_HDR_LEN];
        if with_header & 1 == 1 && tail.len() >= VNET_HDR_LEN {
            header.copy_from_slice(&tail[..VNET_HDR_LEN]);
            tail = &tail[VNET_HDR_LEN..];
        }
        let len = usize::from(u16::from_be_bytes([*len_hi, *len_lo])).min(tail.len());
        let (frame, next) = tail.split_at(len);
        rest = next;

        pkt.set_frame(frame);
        pkt.buf[..VNET_HDR_LEN].copy_from_slice(&header);
        records += 1;
        now += if records % 8 == 0 { 60_000 } else { 1 };
        let verdict = pipeline.process(&mut ctx, now, port, &mut pkt);
        for tx in &ctx.tx {
            assert!(
                PORTS[..5].contains(&tx.port),
                "sent to unknown port {}",
                tx.port
            );
            if matches!(verdict, Verdict::Drop(_) | Verdict::Consumed) {
                assert_eq!(
                    tx.source,
                    TxSource::Scratch,
                    "{verdict:?} passed the frame on"
                );
            }
            let out = ctx.buffer(tx, &pkt).frame();
            if let Ok(parsed) = parse_frame(out) {
                if let L3::Ipv4(ip) = parsed.l3 {
                    let header = &out[ip.offset..ip.offset + ip.header_len];
                    assert_eq!(checksum::fold(checksum::sum(header, 0)), 0xffff);
                }
            }
        }
        if records % 8 == 0 {
            pipeline.expire(now);
        }
    }
});
