//! The pipeline cases, set up once for both the criterion bench (`benches/pipeline.rs`, which
//! times them) and `examples/pipeline-count.rs` (which runs them under callgrind, to count
//! instructions per packet: the one figure that does not move with a VM's neighbours).

#![allow(dead_code)] // each of the two users takes what it needs

use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use pacific_dataplane::conntrack::ConntrackConfig;
use pacific_dataplane::packet::{build, checksum};
use pacific_dataplane::pipeline::{self, PacketBuf, Pipeline, Verdict, WorkerContext};
use pacific_dataplane::testbed::{self, *};

/// Packets per measured round of the first-packet cases.
pub const ROUND: usize = 1024;

pub fn pipeline(opts: Options, max_connections: usize) -> Pipeline {
    let tables = Arc::new(ArcSwap::from_pointee(testbed::tables(1, opts)));
    Pipeline::with_config(
        tables,
        ConntrackConfig {
            max_connections,
            ..Default::default()
        },
    )
}

/// The configurations the cases are repeated with, so a reader sees how cost grows with them.
pub const CONFIGS: [(&str, Options); 5] = [
    ("default", options(0, 0)),
    ("10 services", options(10, 0)),
    ("10k services", options(10_000, 0)),
    ("10 DFW rules", options(0, 10)),
    ("10k DFW rules", options(0, 10_000)),
];

const fn options(extra_services: usize, extra_rules: usize) -> Options {
    Options {
        extra_services,
        extra_rules,
    }
}

/// The `i`th flow of a large set: A1 to a benchmarking-range address (RFC 2544's 198.18.0.0/15;
/// nothing is sent anywhere, it only names flows) and a source port.
pub fn flow(i: usize) -> (Ipv4Addr, u16) {
    let dst = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (i / 60_000) as u32);
    (dst, 1024 + (i % 60_000) as u16)
}

/// A UDP frame from A1 to the outside (flow 0), 64 bytes of IP.
pub fn udp_template() -> Vec<u8> {
    let mut b = vec![0u8; 256];
    let n = build::build_udp(
        &mut b,
        pod_mac(A1_IP),
        ROUTER_MAC,
        A1_IP,
        Ipv4Addr::new(198, 18, 0, 0),
        64,
        1024,
        53,
        &[0u8; 18],
    )
    .expect("template fits");
    b.truncate(n);
    b
}

/// Writes the frame of flow `i` into `pkt` from the template of flow 0, as a TAP read leaves
/// a frame: in the worker's own buffer, in its cache (a table of a million frames to copy from
/// would add a cache miss per packet that no worker has). The destination and the source port
/// name the flow; the header checksum is updated for the new destination (RFC 1624; the
/// pipeline verifies it), the UDP checksum is left stale (the pipeline never verifies it).
pub fn load(pkt: &mut PacketBuf, template: &[u8], i: usize) {
    let (dst, sport) = flow(i);
    pkt.set_frame(template);
    let f = pkt.frame_mut();
    let old = u32::from_be_bytes([f[30], f[31], f[32], f[33]]);
    let new = u32::from(dst);
    let csum = u16::from_be_bytes([f[24], f[25]]);
    let sum = u32::from(!csum)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!(old as u16))
        + (new >> 16)
        + (new & 0xffff);
    let csum = !checksum::fold(sum);
    f[24..26].copy_from_slice(&csum.to_be_bytes());
    f[30..34].copy_from_slice(&dst.octets());
    f[34..36].copy_from_slice(&sport.to_be_bytes());
}

/// splitmix64: a cheap, repeatable sequence of flow indices.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Established UDP flows with egress SNAT from A1, `flows` of them live in the table, packets
/// spread over them at random.
pub struct Established {
    pub pipeline: Pipeline,
    ctx: WorkerContext,
    template: Vec<u8>,
    batch: Vec<PacketBuf>,
    rng: Rng,
    flows: usize,
}

impl Established {
    pub fn new(flows: usize, opts: Options) -> Established {
        let pipeline = self::pipeline(opts, flows * 2);
        let mut ctx = WorkerContext::default();
        let mut pkt = PacketBuf::new();
        let template = udp_template();
        for i in 0..flows {
            load(&mut pkt, &template, i);
            let v = pipeline.process(&mut ctx, 1, A1, &mut pkt);
            assert_eq!(v, Verdict::Forward, "warm-up flow {i}");
        }
        Established {
            pipeline,
            ctx,
            template,
            batch: (0..pipeline::BATCH).map(|_| PacketBuf::new()).collect(),
            rng: Rng(42),
            flows,
        }
    }

    /// Frames in the worker's buffers for the next batch (the TAP's part: not measured).
    pub fn load_batch(&mut self) {
        for pkt in self.batch.iter_mut() {
            load(
                pkt,
                &self.template,
                (self.rng.next() % self.flows as u64) as usize,
            );
        }
    }

    /// The batch through the pipeline, as a worker runs it (`batched`), or one frame at a time.
    /// (Never inlined: `count-instructions.sh` counts inside it.)
    #[inline(never)]
    pub fn run_batch(&mut self, batched: bool) {
        let (p, ctx) = (&self.pipeline, &mut self.ctx);
        if batched {
            p.process_batch(ctx, 2, A1, &mut self.batch, |_, v, _, _| {
                std::hint::black_box(v);
            });
        } else {
            for pkt in self.batch.iter_mut() {
                std::hint::black_box(p.process(ctx, 2, A1, pkt));
            }
        }
    }
}

/// TCP SYNs from A1 to the ClusterIP, the source port naming each connection.
pub fn clusterip_syns() -> Vec<Vec<u8>> {
    let mut syn = vec![0u8; 256];
    let n = build::build_tcp(
        &mut syn,
        pod_mac(A1_IP),
        ROUTER_MAC,
        A1_IP,
        CLUSTER_IP,
        64,
        1024,
        80,
        1,
        0,
        0x02,
        b"",
    )
    .expect("fits");
    syn.truncate(n);
    (0..60_000u16)
        .map(|i| {
            let mut f = syn.clone();
            f[34..36].copy_from_slice(&(1024 + i).to_be_bytes());
            f
        })
        .collect()
}

/// First UDP packets from A1 to 200,000 outside flows (each gets an SNAT port).
pub fn egress_firsts() -> Vec<Vec<u8>> {
    let template = udp_template();
    (0..200_000)
        .map(|i| {
            let (dst, sport) = flow(i);
            let mut f = template.clone();
            f[30..34].copy_from_slice(&dst.octets());
            f[34..36].copy_from_slice(&sport.to_be_bytes());
            f[24..26].fill(0);
            let csum = checksum::ipv4_header_checksum(&f[14..34]);
            f[24..26].copy_from_slice(&csum.to_be_bytes());
            f
        })
        .collect()
}

/// First packets of new connections, taken in turn from `frames`; the table is emptied when
/// they come round again ([`NewConnections::make_room`], not part of what is measured).
pub struct NewConnections {
    pub pipeline: Pipeline,
    ctx: WorkerContext,
    pkt: PacketBuf,
    frames: Vec<Vec<u8>>,
    next: usize,
}

impl NewConnections {
    pub fn new(opts: Options, frames: Vec<Vec<u8>>) -> NewConnections {
        NewConnections {
            pipeline: pipeline(opts, frames.len() * 2),
            ctx: WorkerContext::default(),
            pkt: PacketBuf::new(),
            frames,
            next: 0,
        }
    }

    /// Empties the table if the next round would reuse a frame.
    pub fn make_room(&mut self) {
        if self.next + ROUND > self.frames.len() {
            self.pipeline.conntrack.remove_where(|_| true);
            self.next = 0;
        }
    }

    /// One round of [`ROUND`] new connections (call [`NewConnections::make_room`] first).
    #[inline(never)]
    pub fn run_round(&mut self) {
        let end = (self.next + ROUND).min(self.frames.len());
        for f in &self.frames[self.next..end] {
            self.pkt.set_frame(f);
            let v = self.pipeline.process(&mut self.ctx, 1, A1, &mut self.pkt);
            std::hint::black_box(v);
        }
        self.next = end;
    }
}

/// An ARP request from A1 for its gateway.
pub fn arp_request() -> Vec<u8> {
    let mut arp = vec![0u8; 64];
    let n = build::build_arp_request(&mut arp, pod_mac(A1_IP), A1_IP, GW_A).expect("fits");
    arp.truncate(n);
    arp
}

/// A ping from A1 to the T0's uplink address (through the T1 and the T0, answered by the T0).
pub fn echo_to_t0() -> Vec<u8> {
    let mut echo = vec![0u8; 128];
    let n = build::build_icmp_echo(
        &mut echo,
        pod_mac(A1_IP),
        ROUTER_MAC,
        A1_IP,
        T0_UPLINK_IP,
        64,
        true,
        1,
        1,
        &[0u8; 56],
    )
    .expect("fits");
    echo.truncate(n);
    echo
}

/// One frame through the pipeline over and over (the router's own answers: no state kept).
pub struct Answered {
    pub pipeline: Pipeline,
    ctx: WorkerContext,
    pkt: PacketBuf,
    frame: Vec<u8>,
}

impl Answered {
    pub fn new(frame: Vec<u8>) -> Answered {
        Answered {
            pipeline: pipeline(Options::default(), 1 << 16),
            ctx: WorkerContext::default(),
            pkt: PacketBuf::new(),
            frame,
        }
    }

    #[inline(never)]
    pub fn run_one(&mut self) -> Verdict {
        self.pkt.set_frame(&self.frame);
        self.pipeline.process(&mut self.ctx, 1, A1, &mut self.pkt)
    }
}
