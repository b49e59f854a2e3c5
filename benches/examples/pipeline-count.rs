//! Runs one case of the pipeline bench for a given number of packets, untimed: run it under
//! callgrind at two packet counts and the difference of the instruction counts, divided by the
//! difference of the packets, is the case's cost per packet with its set-up cancelled out.
//! `benches/count-instructions.sh` does exactly that for every case. (Wall-clock on a shared VM
//! moves with its neighbours; instructions do not, so two builds compare exactly.)
//!
//! `cargo run --release -p pacific-benches --example pipeline-count -- CASE PACKETS`, or
//! `--list` for the cases.

use std::process::ExitCode;

use pacific_dataplane::pipeline;
use pacific_dataplane::testbed::Options;

#[path = "../benches/common/mod.rs"]
mod common;
use common::{Answered, Established, NewConnections, CONFIGS, ROUND};

/// What a case is: how many flows are live, and how its packets go through.
#[derive(Clone, Copy)]
enum Kind {
    Established { flows: usize, batched: bool },
    FirstClusterIp,
    FirstEgress,
    ArpReply,
    IcmpEcho,
}

fn slug(label: &str) -> String {
    label.to_lowercase().replace(' ', "-")
}

/// Every case, by name.
fn cases() -> Vec<(String, Kind, Options)> {
    let est = |flows, batched| Kind::Established { flows, batched };
    let default = Options::default();
    let mut v = vec![
        ("established-1k".to_string(), est(1_000, true), default),
        ("established-1m".to_string(), est(1_000_000, true), default),
        (
            "established-1m-unbatched".to_string(),
            est(1_000_000, false),
            default,
        ),
    ];
    for (label, opts) in &CONFIGS[1..] {
        v.push((
            format!("established-1k-{}", slug(label)),
            est(1_000, true),
            *opts,
        ));
    }
    for (label, opts) in &CONFIGS {
        v.push((
            format!("first-clusterip-{}", slug(label)),
            Kind::FirstClusterIp,
            *opts,
        ));
        v.push((
            format!("first-egress-{}", slug(label)),
            Kind::FirstEgress,
            *opts,
        ));
    }
    v.push(("arp-reply".to_string(), Kind::ArpReply, default));
    v.push(("icmp-echo-t1-t0".to_string(), Kind::IcmpEcho, default));
    v
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cases = cases();
    if args.first().map(String::as_str) == Some("--list") {
        for (name, _, _) in &cases {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    let (Some(name), Some(Ok(packets))) = (args.first(), args.get(1).map(|n| n.parse::<usize>()))
    else {
        eprintln!("usage: pipeline-count CASE PACKETS | --list");
        return ExitCode::from(2);
    };
    let Some(&(_, kind, opts)) = cases.iter().find(|(n, _, _)| n == name) else {
        eprintln!("pipeline-count: no case {name:?} (--list shows them)");
        return ExitCode::from(2);
    };
    let ran = match kind {
        Kind::Established { flows, batched } => {
            let mut case = Established::new(flows, opts);
            let batches = packets.div_ceil(pipeline::BATCH);
            for _ in 0..batches {
                case.load_batch();
                case.run_batch(batched);
            }
            batches * pipeline::BATCH
        }
        Kind::FirstClusterIp | Kind::FirstEgress => {
            let frames = match kind {
                Kind::FirstClusterIp => common::clusterip_syns(),
                _ => common::egress_firsts(),
            };
            let rounds = packets.div_ceil(ROUND);
            if rounds * ROUND > frames.len() {
                eprintln!(
                    "pipeline-count: {name} has {} distinct connections; ask for fewer packets",
                    frames.len()
                );
                return ExitCode::from(2);
            }
            let mut case = NewConnections::new(opts, frames);
            for _ in 0..rounds {
                case.run_round();
            }
            rounds * ROUND
        }
        Kind::ArpReply | Kind::IcmpEcho => {
            let frame = match kind {
                Kind::ArpReply => common::arp_request(),
                _ => common::echo_to_t0(),
            };
            let mut case = Answered::new(frame);
            for _ in 0..packets {
                std::hint::black_box(case.run_one());
            }
            packets
        }
    };
    println!("{name}: {ran} packets");
    ExitCode::SUCCESS
}
