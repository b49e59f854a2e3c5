//! The model: Pacific's desired state and how requests change it.
//!
//! - `objects`: the state itself (namespaces, pods, services, TKG clusters, endpoints...), plain
//!   values the compiler and the server read;
//! - `manifest`: Kubernetes and Pacific manifests (YAML or JSON) to requests, with errors that
//!   name the document and the field;
//! - `ipam`: deterministic allocation of segments, addresses, nodePorts, MACs and names;
//! - `store`: all-or-nothing apply and delete over the state.
//!
//! There is no I/O here and no clock: time comes in as Unix seconds, so every behaviour is a
//! unit test away.

pub mod ipam;
pub mod manifest;
pub mod objects;
pub mod store;

pub use manifest::{parse_manifests, Kind, Manifest, ManifestError, ObjectRef};
pub use objects::*;
pub use store::{ApplyError, ApplyOutcome, ErrorCode, Store};

/// The default lab (`pacific lab up` with no file): the seed's address plan, SEED-LAB.md.
pub const SEED_LAB_YAML: &str = include_str!("../seed-lab.yaml");

/// The default lab's manifests.
pub fn seed_lab() -> Result<Vec<Manifest>, ManifestError> {
    parse_manifests(SEED_LAB_YAML, None, None)
}

/// The seed's hello-kubernetes manifest, as the write-up gives it (indentation restored).
#[cfg(test)]
pub(crate) const HELLO_KUBERNETES: &str = include_str!("../../../docs/hello-kubernetes.yaml");
