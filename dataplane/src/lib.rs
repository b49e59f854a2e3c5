//! Pacific's dataplane: everything between a frame arriving on a port and the frames that leave.
//!
//! The crate knows ports, segments, gateways (T1, T0), routes, DFW rules, load-balancer backends
//! and NAT pools. It does not know what a namespace or a pod is: `pacific-control` compiles its
//! model into [`tables::Tables`] and publishes them as one immutable snapshot.
//!
//! Layout, north to south:
//! - [`tables`]: the snapshot the control plane publishes (ports, segments, routes, rules).
//! - [`pipeline`]: `process(now, port, frame) -> Verdict`, no I/O, no clock, no threads.
//! - [`conntrack`]: the connection table shared by the workers; the fast path.
//! - [`affinity`]: the backends clients of `sessionAffinity: ClientIP` services were given.
//! - [`packet`]: zero-copy packet views, checksums (RFC 1071/1624) and frame builders.
//! - [`tap`]: TAP devices; [`zeroed`]: the connection table's memory, on huge pages (the only
//!   `unsafe` in the crate).
//! - [`ports`]: worker threads that move frames between TAP queues and the pipeline.
//! - [`log`]: the daemon's log lines, stamped with the time.

pub mod affinity;
pub mod conntrack;
pub mod counters;
pub mod fragments;
pub mod idents;
pub mod log;
pub mod packet;
pub mod pipeline;
pub mod ports;
pub mod reassembly;
pub mod tables;
pub mod tap;
pub mod testbed;
pub mod zeroed;
