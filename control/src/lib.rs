//! Pacific's control plane: the desired state (model), its compilation into dataplane tables,
//! the daemon with its control socket, the CLI, the netns lab and the test server.

pub mod cli;
pub mod client;
pub mod compile;
pub mod daemon;
pub mod describe;
pub mod lab;
pub mod model;
pub mod netexec;
pub mod rpc;
pub mod views;
