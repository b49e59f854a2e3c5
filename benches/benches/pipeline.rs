//! Criterion benches of the pipeline on byte buffers: no I/O, one core.
//!
//! Every case reports packets (`Throughput::Elements`), so criterion prints packets per second;
//! cases are repeated at several table sizes so a reader sees how cost grows with work. The
//! cases themselves are in `common/` (shared with `examples/pipeline-count.rs`, which counts
//! their instructions per packet under callgrind).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use pacific_dataplane::pipeline;
use pacific_dataplane::testbed::Options;

mod common;
use common::{Answered, Established, NewConnections, CONFIGS, ROUND};

/// Packets per criterion iteration of the established cases.
const PER_ITER: usize = 1024;

fn established(c: &mut Criterion) {
    let mut group = c.benchmark_group("established");
    group.throughput(Throughput::Elements(PER_ITER as u64));
    let mut cases = vec![
        (1_000usize, Options::default(), "1k flows".to_string()),
        (1_000_000, Options::default(), "1M flows".to_string()),
    ];
    for (label, opts) in &CONFIGS[1..] {
        cases.push((1_000, *opts, format!("1k flows, {label}")));
    }
    for (flows, opts, label) in cases {
        let mut case = Established::new(flows, opts);
        // As a worker does it: a batch of frames read (untimed: the TAP's part), then processed
        // together; and, at 1M connections, the same frames one at a time (`Pipeline::process`)
        // for comparison, where nothing overlaps the cache misses.
        let runs: &[(&str, bool)] = if flows >= 1_000_000 {
            &[("udp-snat", true), ("udp-snat-unbatched", false)]
        } else {
            &[("udp-snat", true)]
        };
        for &(name, batched) in runs {
            group.bench_function(BenchmarkId::new(name, &label), |b| {
                b.iter_custom(|iters| {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iters * (PER_ITER / pipeline::BATCH) as u64 {
                        case.load_batch();
                        let start = Instant::now();
                        case.run_batch(batched);
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
    group.throughput(Throughput::Elements(ROUND as u64));
    let syns = common::clusterip_syns();
    let egress = common::egress_firsts();
    for (label, opts) in CONFIGS {
        // New connections to a ClusterIP: DLB choice, routing, DFW, conntrack insert; and to
        // the outside: routing, DFW, SNAT port allocation, insert.
        for (name, frames) in [("clusterip-dlb", &syns), ("egress-snat", &egress)] {
            let mut case = NewConnections::new(opts, frames.clone());
            group.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter_custom(|iters| {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iters {
                        case.make_room();
                        let start = Instant::now();
                        case.run_round();
                        elapsed += start.elapsed();
                    }
                    elapsed
                })
            });
        }
    }
    group.finish();
}

fn host(c: &mut Criterion) {
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(1));
    for (name, frame) in [
        ("arp-reply", common::arp_request()),
        ("icmp-echo-t1-t0", common::echo_to_t0()),
    ] {
        let mut case = Answered::new(frame);
        group.bench_function(name, |b| b.iter(|| std::hint::black_box(case.run_one())));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    targets = established, first_packet, host
}
criterion_main!(benches);
