//! Pacific's benchmarks beyond the criterion bench of the pipeline (`benches/pipeline.rs`).
//!
//! [`netbench`] is the end-to-end harness: the same namespace topology routed once by Pacific and
//! once by the kernel with kube-proxy-style iptables rules, the same loads through both, one
//! table. The binary `netbench` is a thin front end to it.

pub mod netbench;
