//! Criterion benches of the pipeline on byte buffers: no I/O, one core.
//!
//! Every case reports packets (`Throughput::Elements`), so criterion prints packets per second;
//! cases are repeated at several table sizes so a reader sees how cost grows with work.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use pacific_dataplane::conntrack::ConntrackConfig;
use pacific_dataplane::packet::build;
use pacific_dataplane::pipeline::{self, PacketBuf, Pipeline, Verdict, WorkerContext};
use pacific_dataplane::testbed::{self, *};

const BATCH: usize = 1024;

fn pipeline(opts: Options, max_connections: usize) -> Pipeline {
    let tables = Arc::new(ArcSwap::from_pointee(testbed::tables(1, opts)));
    Pipeline::with_config(
        tables,
        ConntrackConfig {
            max_connections,
            ..Default::default()
        },
    )
}

/// The `i`th flow of a large set: A1 to a benchmarking-range address (RFC 2544's 198.18.0.0/15;
/// nothing is sent anywhere, it only names flows) and a source port.
fn flow(i: usize) -> (Ipv4Addr, u16) {
    let dst = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (i / 60_000) as u32);
    (dst, 1024 + (i % 60_000) as u16)
}

fn udp_template() -> Vec<u8> {
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

/// The frames of `n` flows, built once (the header checksum must be right: the pipeline checks
/// it, RFC 1812 section 5.2.2), so the measured loop only copies a frame in, as a NIC would.
fn frames(n: usize) -> Vec<[u8; 64]> {
    let template = udp_template();
    (0..n)
        .map(|i| {
            let (dst, sport) = flow(i);
            let mut f = [0u8; 64];
            let len = template.len().min(64);
            f[..len].copy_from_slice(&template[..len]);
            f[30..34].copy_from_slice(&dst.octets());
            f[34..36].copy_from_slice(&sport.to_be_bytes());
            f[24..26].fill(0);
            let csum = pacific_dataplane::packet::checksum::ipv4_header_checksum(&f[14..34]);
            f[24..26].copy_from_slice(&csum.to_be_bytes());
            f
        })
        .collect()
}

/// Writes the frame of flow `i` into `pkt` from the template of flow 0, as a TAP read leaves
/// a frame: in the worker's own buffer, in its cache (a table of a million frames to copy from
/// would add a cache miss per packet that no worker has). The destination and the source port
/// name the flow; the header checksum is updated for the new destination (RFC 1624; the
/// pipeline verifies it), the UDP checksum is left stale (the pipeline never verifies it).
fn load(pkt: &mut PacketBuf, template: &[u8], i: usize) {
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
    let csum = !pacific_dataplane::packet::checksum::fold(sum);
    f[24..26].copy_from_slice(&csum.to_be_bytes());
    f[30..34].copy_from_slice(&dst.octets());
    f[34..36].copy_from_slice(&sport.to_be_bytes());
}

/// Times `iters` batches of first packets taken in turn from `frames` (each opens a new
/// connection); the table is emptied, untimed, before the frames come round again.
fn time_new_connections(opts: Options, frames: &[Vec<u8>], iters: u64) -> Duration {
    let p = pipeline(opts, frames.len() * 2);
    let mut ctx = WorkerContext::default();
    let mut pkt = PacketBuf::new();
    let mut elapsed = Duration::ZERO;
    let mut next = 0;
    for _ in 0..iters {
        if next + BATCH > frames.len() {
            p.conntrack.remove_where(|_| true);
            next = 0;
        }
        let start = Instant::now();
        for f in &frames[next..next + BATCH] {
            pkt.set_frame(f);
            std::hint::black_box(p.process(&mut ctx, 1, A1, &mut pkt));
        }
        elapsed += start.elapsed();
        next += BATCH;
    }
    elapsed
}

/// splitmix64: a cheap, repeatable sequence of flow indices.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn established(c: &mut Criterion) {
    let mut group = c.benchmark_group("established");
    group.throughput(Throughput::Elements(BATCH as u64));
    for &(flows, opts, label) in &[
        (1_000usize, Options::default(), "1k flows"),
        (1_000_000, Options::default(), "1M flows"),
        (
            1_000,
            Options {
                extra_services: 10,
                extra_rules: 0,
            },
            "1k flows, 10 services",
        ),
        (
            1_000,
            Options {
                extra_services: 10_000,
                extra_rules: 0,
            },
            "1k flows, 10k services",
        ),
        (
            1_000,
            Options {
                extra_services: 0,
                extra_rules: 10,
            },
            "1k flows, 10 DFW rules",
        ),
        (
            1_000,
            Options {
                extra_services: 0,
                extra_rules: 10_000,
            },
            "1k flows, 10k DFW rules",
        ),
    ] {
        let p = pipeline(opts, flows * 2);
        let mut ctx = WorkerContext::default();
        let mut pkt = PacketBuf::new();
        let template = udp_template();
        for i in 0..flows {
            load(&mut pkt, &template, i);
            let v = p.process(&mut ctx, 1, A1, &mut pkt);
            assert_eq!(v, Verdict::Forward, "warm-up flow {i}");
        }
        // As a worker does it: a batch of frames read (untimed: the TAP's part), then processed
        // together; and, at 1M connections, the same frames one at a time (`Pipeline::process`)
        // for comparison, where nothing overlaps the cache misses.
        let mut rng = Rng(42);
        let mut batch: Vec<PacketBuf> = (0..pipeline::BATCH).map(|_| PacketBuf::new()).collect();
        let cases: &[(&str, bool)] = if flows >= 1_000_000 {
            &[("udp-snat", true), ("udp-snat-unbatched", false)]
        } else {
            &[("udp-snat", true)]
        };
        for &(name, batched) in cases {
            group.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter_custom(|iters| {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iters * (BATCH / pipeline::BATCH) as u64 {
                        for pkt in batch.iter_mut() {
                            load(pkt, &template, (rng.next() % flows as u64) as usize);
                        }
                        let start = Instant::now();
                        if batched {
                            p.process_batch(&mut ctx, 2, A1, &mut batch, |_, v, _, _| {
                                std::hint::black_box(v);
                            });
                        } else {
                            for pkt in batch.iter_mut() {
                                std::hint::black_box(p.process(&mut ctx, 2, A1, pkt));
                            }
                        }
                        elapsed += start.elapsed();
                    }
                    elapsed
                })
            });
        }
    }
    group.finish();
}

fn first_packet(c: &mut Criterion) {
    let mut group = c.benchmark_group("first-packet");
    group.throughput(Throughput::Elements(BATCH as u64));
    // One client, one ClusterIP: the source port names each connection.
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
    let syns: Vec<Vec<u8>> = (0..60_000u16)
        .map(|i| {
            let mut f = syn.clone();
            f[34..36].copy_from_slice(&(1024 + i).to_be_bytes());
            f
        })
        .collect();
    let len = udp_template().len();
    let egress: Vec<Vec<u8>> = frames(200_000).iter().map(|f| f[..len].to_vec()).collect();
    for &(opts, label) in &[
        (Options::default(), "default"),
        (
            Options {
                extra_services: 10,
                extra_rules: 0,
            },
            "10 services",
        ),
        (
            Options {
                extra_services: 10_000,
                extra_rules: 0,
            },
            "10k services",
        ),
        (
            Options {
                extra_services: 0,
                extra_rules: 10,
            },
            "10 DFW rules",
        ),
        (
            Options {
                extra_services: 0,
                extra_rules: 10_000,
            },
            "10k DFW rules",
        ),
    ] {
        // New connections to a ClusterIP: DLB choice, routing, DFW, conntrack insert.
        group.bench_function(BenchmarkId::new("clusterip-dlb", label), |b| {
            b.iter_custom(|iters| time_new_connections(opts, &syns, iters))
        });
        // New connections to the outside: routing, DFW, SNAT port allocation, insert.
        group.bench_function(BenchmarkId::new("egress-snat", label), |b| {
            b.iter_custom(|iters| time_new_connections(opts, &egress, iters))
        });
    }
    group.finish();
}

fn host(c: &mut Criterion) {
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(1));
    let p = pipeline(Options::default(), 1 << 16);
    let mut ctx = WorkerContext::default();
    let mut pkt = PacketBuf::new();
    let mut arp = vec![0u8; 64];
    let n = build::build_arp_request(&mut arp, pod_mac(A1_IP), A1_IP, GW_A).expect("fits");
    arp.truncate(n);
    group.bench_function("arp-reply", |b| {
        b.iter(|| {
            pkt.set_frame(&arp);
            std::hint::black_box(p.process(&mut ctx, 1, A1, &mut pkt))
        })
    });
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
    group.bench_function("icmp-echo-t1-t0", |b| {
        b.iter(|| {
            pkt.set_frame(&echo);
            std::hint::black_box(p.process(&mut ctx, 1, A1, &mut pkt))
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    targets = established, first_packet, host
}
criterion_main!(benches);
