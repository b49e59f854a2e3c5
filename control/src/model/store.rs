//! Apply and delete, all or nothing.
//!
//! `Store` owns the desired `State`. An apply works on a clone: every request in it is validated
//! and allocated against that clone, in dependency order (Pools/Uplink, outside hosts,
//! namespaces, TKG clusters, pods and deployments, services, endpoints), so one file can hold a
//! whole lab; then the derived endpoints are recomputed and the clone replaces the state. Any
//! error drops the clone: nothing was half-applied, nothing was allocated, the generation did not
//! move. This is the same rule the API server applies per object, extended to the request, and
//! it is what lets the server publish one table snapshot per request.
//!
//! Allocation is "keep what is still valid, pin what is asked, take the lowest free for the
//! rest". Addresses pinned anywhere in a request are claimed before anything is allocated, so an
//! automatic allocation early in a file never steals an address that a later document pins.
//!
//! Objects that Kubernetes controllers would derive are derived here, deterministically:
//! deployment replicas (kubectl-like names), TKG node VMs and the control-plane service NCP
//! creates for each cluster, the scheduling of cluster workloads on worker nodes, and the
//! endpoints of every service port.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use pacific_dataplane::tables::Ipv4Net;
use serde::Serialize;

use super::ipam::{self, IpamError};
use super::manifest::{
    reject_duplicates, ClusterIpRequest, DeploymentRequest, EndpointsRequest, Kind, Manifest,
    ManifestError, Meta, NamespaceRequest, NetworkPolicyRequest, ObjectRef, OutsideHostRequest,
    PodRequest, ServiceRequest, TkgClusterRequest, ANN_CONTROL_PLANE_CLUSTER_IP,
    ANN_CONTROL_PLANE_IPS, ANN_CONTROL_PLANE_NODE_PORT, ANN_CONTROL_PLANE_VIP, ANN_POD_IP,
    ANN_SEGMENT_CIDR, ANN_SEGMENT_PREFIX_LEN, ANN_STATIC_SNAT_IP, ANN_SUPERVISOR,
    DEFAULT_SEGMENT_PREFIX_LEN,
};
use super::objects::{
    cluster_key, selects, split_key, ClusterWorkload, Container, ContainerPort, Deployment,
    Endpoint, EndpointsKind, EndpointsObject, LbAlgorithm, Namespace, NetworkPolicy, OutsideHost,
    Pod, Pools, Protocol, Segment, Service, ServiceEndpoints, ServicePort, ServiceType, State,
    TargetPort, TkgCluster, TkgNodeRole, Uplink,
};

/// What kind of failure, for the JSON-RPC error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorCode {
    /// The request is wrong in itself.
    Invalid,
    /// The request collides with another object (named in the message).
    Conflict,
    /// A referenced object does not exist.
    NotFound,
    /// A pool, segment or port range is full.
    Exhausted,
}

impl ErrorCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::Invalid => "Invalid",
            ErrorCode::Conflict => "Conflict",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::Exhausted => "Exhausted",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request was rejected (nothing of it was applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyError {
    pub code: ErrorCode,
    /// The document at fault (1-based), when the request came from text.
    pub document: Option<usize>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ApplyError {
    /// `document 3 (Pod testbox): metadata.annotations[pacific.dev/ip]: 172.211.0.18 is in use by pod ns-dev/...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(d) = self.document.filter(|d| *d > 0) {
            write!(f, "document {d}")?;
            sep = " ";
        }
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, "{sep}({k} {n})")?,
            (Some(k), None) => write!(f, "{sep}({k})")?,
            (None, Some(n)) => write!(f, "{sep}({n})")?,
            (None, None) => {}
        }
        let lead = self.document.filter(|d| *d > 0).is_some()
            || self.kind.is_some()
            || self.name.is_some();
        if lead {
            f.write_str(": ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApplyError {}

impl From<ManifestError> for ApplyError {
    fn from(e: ManifestError) -> ApplyError {
        ApplyError {
            code: ErrorCode::Invalid,
            document: Some(e.document),
            kind: e.kind,
            name: e.name,
            field: e.field,
            message: e.message,
        }
    }
}

/// What happened to one requested object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyOutcome {
    /// The manifest kind ("Service").
    pub kind: String,
    pub namespace: Option<String>,
    /// The TKG cluster the object lives in.
    pub cluster: Option<String>,
    pub name: String,
    /// "created" | "configured" | "unchanged" | "deleted"
    pub action: &'static str,
}

impl fmt::Display for ApplyOutcome {
    /// kubectl's line: `service/wordpress created`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let resource = Kind::from_kind(&self.kind)
            .map_or_else(|| self.kind.to_ascii_lowercase(), |k| k.resource().into());
        write!(f, "{resource}/{} {}", self.name, self.action)
    }
}

/// The desired state and the name of the transport node that runs pods by default.
#[derive(Debug, Clone)]
pub struct Store {
    state: State,
    hostname: String,
}

impl Store {
    /// An empty state with the seed's pools and uplink.
    pub fn new(hostname: &str) -> Store {
        Store {
            state: State::default(),
            hostname: hostname.to_string(),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Validates the whole request against the current state and applies it only if everything
    /// is valid; on any error nothing changes. Outcomes come back in document order.
    pub fn apply(
        &mut self,
        manifests: Vec<Manifest>,
        now: u64,
    ) -> Result<Vec<ApplyOutcome>, ApplyError> {
        reject_duplicates(&manifests)?;
        let mut tx = Txn {
            st: self.state.clone(),
            hostname: &self.hostname,
            now,
            claims: Claims::of(&manifests),
        };
        let mut order: Vec<usize> = (0..manifests.len()).collect();
        order.sort_by_key(|&i| phase(manifests[i].kind()));
        let mut outcomes = Vec::with_capacity(manifests.len());
        for i in order {
            let m = &manifests[i];
            let action = tx.apply_one(m)?;
            outcomes.push((i, outcome(m.meta(), action)));
        }
        let blame = manifests
            .iter()
            .find(|m| m.kind() == Kind::Pools)
            .or_else(|| manifests.iter().find(|m| m.kind() == Kind::Uplink));
        check_placement(&tx.st).map_err(|(code, message)| match blame {
            Some(m) => err(code, m.meta(), "spec", message),
            None => ApplyError {
                code,
                document: None,
                kind: None,
                name: None,
                field: String::new(),
                message,
            },
        })?;
        outcomes.sort_by_key(|(i, _)| *i);
        let outcomes: Vec<ApplyOutcome> = outcomes.into_iter().map(|(_, o)| o).collect();
        self.commit(tx.st);
        Ok(outcomes)
    }

    /// Deletes the objects the manifests name (their specs are ignored). Deleting a Namespace
    /// deletes everything in it; a Deployment, its pods; a TanzuKubernetesCluster, its node VMs,
    /// control-plane service and everything applied inside it. Deleting Pools or Uplink restores
    /// the defaults. An object that does not exist is a NotFound error, and nothing is deleted.
    pub fn delete(
        &mut self,
        manifests: Vec<Manifest>,
        now: u64,
    ) -> Result<Vec<ApplyOutcome>, ApplyError> {
        reject_duplicates(&manifests)?;
        self.delete_refs(manifests.iter().map(Manifest::object_ref).collect(), now)
    }

    /// Deletes objects by name (`pacific delete svc wordpress -n ns-dev`).
    pub fn delete_refs(
        &mut self,
        refs: Vec<ObjectRef>,
        now: u64,
    ) -> Result<Vec<ApplyOutcome>, ApplyError> {
        self.delete_refs_with(refs, now, false)
    }

    /// `delete_refs`; with `ignore_not_found` (kubectl's `--ignore-not-found`) an object that
    /// is not there is passed over instead of failing the request, so a teardown deletes what
    /// is left of what it applied. Any other error still deletes nothing.
    pub fn delete_refs_with(
        &mut self,
        refs: Vec<ObjectRef>,
        _now: u64,
        ignore_not_found: bool,
    ) -> Result<Vec<ApplyOutcome>, ApplyError> {
        let mut st = self.state.clone();
        let mut order: Vec<usize> = (0..refs.len()).collect();
        // Children before parents, so that a file applied whole can be deleted whole.
        order.sort_by_key(|&i| std::cmp::Reverse(phase(refs[i].kind)));
        let mut outcomes = Vec::with_capacity(refs.len());
        // An object named twice (`delete svc web web`, a file given twice) is deleted once,
        // rather than found missing the second time and the whole request refused.
        let mut seen = std::collections::BTreeSet::new();
        for i in order {
            let r = &refs[i];
            let ns = r.namespace.as_deref().unwrap_or("default");
            if !seen.insert((r.kind, ns, r.cluster.as_deref(), r.name.as_str())) {
                continue;
            }
            match delete_one(&mut st, r) {
                Ok(()) => {}
                Err(e) if ignore_not_found && e.code == ErrorCode::NotFound => continue,
                Err(e) => return Err(e),
            }
            outcomes.push((
                i,
                ApplyOutcome {
                    kind: r.kind.to_string(),
                    namespace: r.namespace.clone(),
                    cluster: r.cluster.clone(),
                    name: r.name.clone(),
                    action: "deleted",
                },
            ));
        }
        // Only a deleted Pools or Uplink (back to the defaults) can misplace what stays: the
        // error names it, as an apply's names the Pools or Uplink document.
        let blame = refs
            .iter()
            .find(|r| r.kind == Kind::Pools)
            .or_else(|| refs.iter().find(|r| r.kind == Kind::Uplink));
        check_placement(&st).map_err(|(code, message)| ApplyError {
            code,
            document: blame.and_then(|r| r.document),
            kind: blame.map(|r| r.kind.to_string()),
            name: blame.map(|r| r.name.clone()),
            field: String::new(),
            message: match blame {
                Some(r) if r.kind == Kind::Pools => {
                    format!("deleting it restores the default pools, and then {message}")
                }
                Some(_) => format!("deleting it restores the default uplink, and then {message}"),
                None => message,
            },
        })?;
        outcomes.sort_by_key(|(i, _)| *i);
        self.commit(st);
        Ok(outcomes.into_iter().map(|(_, o)| o).collect())
    }

    /// Swaps in a validated state with its endpoints resolved; the generation moves only when
    /// something did (re-applying a file changes nothing, not even the generation).
    fn commit(&mut self, mut next: State) {
        next.endpoints = next.resolve_endpoints();
        if next != self.state {
            next.generation = self.state.generation + 1;
            self.state = next;
        }
    }
}

/// Dependency order inside a request.
fn phase(kind: Kind) -> u8 {
    match kind {
        Kind::Pools | Kind::Uplink => 0,
        Kind::OutsideHost => 1,
        Kind::Namespace => 2,
        Kind::TanzuKubernetesCluster => 3,
        Kind::Pod | Kind::Deployment => 4,
        Kind::Service | Kind::NetworkPolicy => 5,
        Kind::Endpoints | Kind::EndpointSlice => 6,
    }
}

fn outcome(meta: &Meta, action: &'static str) -> ApplyOutcome {
    ApplyOutcome {
        kind: meta.kind.to_string(),
        namespace: meta.namespace.clone(),
        cluster: meta.cluster.clone(),
        name: meta.name.clone(),
        action,
    }
}

fn action_for<T: PartialEq>(old: Option<&T>, new: &T) -> &'static str {
    match old {
        None => "created",
        Some(o) if o == new => "unchanged",
        Some(_) => "configured",
    }
}

fn err(
    code: ErrorCode,
    meta: &Meta,
    field: impl Into<String>,
    message: impl Into<String>,
) -> ApplyError {
    // An item of a List is named by its place, as a parse error names it (`items[2].spec...`).
    let field = match (meta.item.as_str(), field.into()) {
        ("", field) => field,
        (item, field) if field.is_empty() => item.to_string(),
        (item, field) => format!("{item}.{field}"),
    };
    ApplyError {
        code,
        document: Some(meta.document),
        kind: Some(meta.kind.to_string()),
        name: Some(meta.name.clone()),
        field,
        message: message.into(),
    }
}

/// A selector as kubectl shows it: `{"matchLabels":{"app":"api"}}`.
fn match_labels(selector: &BTreeMap<String, String>) -> String {
    serde_json::json!({ "matchLabels": selector }).to_string()
}

fn ipam_err(e: IpamError, meta: &Meta, field: impl Into<String>) -> ApplyError {
    let code = match e {
        IpamError::Invalid(_) => ErrorCode::Invalid,
        IpamError::Conflict(_) => ErrorCode::Conflict,
        IpamError::Exhausted(_) => ErrorCode::Exhausted,
    };
    err(code, meta, field, e.message())
}

fn ann_field(key: &str) -> String {
    format!("metadata.annotations[{key}]")
}

/// The annotation a segment's allocation answers to: the pinned CIDR, else the prefix length
/// asked for, else (neither given) the CIDR that would pin one.
fn segment_field(m: &Meta, pin: Option<Ipv4Net>) -> String {
    if pin.is_none() && m.annotations.contains_key(ANN_SEGMENT_PREFIX_LEN) {
        ann_field(ANN_SEGMENT_PREFIX_LEN)
    } else {
        ann_field(ANN_SEGMENT_CIDR)
    }
}

/// Addresses, subnets and nodePorts pinned anywhere in the request: automatic allocation avoids
/// them, whatever the document order.
#[derive(Debug, Default)]
struct Claims {
    segments: Vec<Ipv4Net>,
    ips: BTreeSet<Ipv4Addr>,
    /// (nodePort scope, port): "" for the supervisor, "ns/cluster" for a TKG cluster.
    node_ports: BTreeSet<(String, u16)>,
}

impl Claims {
    fn of(manifests: &[Manifest]) -> Claims {
        let mut c = Claims::default();
        for m in manifests {
            match m {
                Manifest::Namespace(r) => {
                    c.segments.extend(r.segment_cidr);
                    c.ips.extend(r.egress_ip);
                }
                Manifest::TanzuKubernetesCluster(r) => {
                    c.segments.extend(r.segment_cidr);
                    c.ips.extend(r.control_plane_ips.iter().copied());
                    c.ips.extend(r.control_plane_cluster_ip);
                    c.ips.extend(r.control_plane_vip);
                    c.node_ports
                        .extend(r.control_plane_node_port.map(|p| (String::new(), p)));
                }
                Manifest::Pod(r) if r.meta.cluster.is_none() => c.ips.extend(r.ip),
                Manifest::Service(r) => {
                    if let (ClusterIpRequest::Pinned(ip), None) = (r.cluster_ip, &r.meta.cluster) {
                        c.ips.insert(ip);
                    }
                    c.ips.extend(r.load_balancer_ip);
                    let scope = node_port_scope(&key_namespace(&r.meta));
                    c.node_ports.extend(
                        r.ports
                            .iter()
                            .filter_map(|p| p.node_port)
                            .map(|p| (scope.clone(), p)),
                    );
                }
                _ => {}
            }
        }
        c
    }
}

/// "ns" or "ns/cluster".
fn key_namespace(meta: &Meta) -> String {
    let ns = meta.namespace.as_deref().unwrap_or("default");
    match &meta.cluster {
        Some(c) => cluster_key(ns, c),
        None => ns.to_string(),
    }
}

/// Each Kubernetes cluster has its own nodePort space: the supervisor's ("") and each TKG's.
fn node_port_scope(key_ns: &str) -> String {
    match split_key(key_ns) {
        (_, Some(_)) => key_ns.to_string(),
        (_, None) => String::new(),
    }
}

/// The segments already taken, with their owners, except the one of `except`.
fn segments_taken(st: &State, except: (&str, Option<&str>)) -> Vec<(Ipv4Net, String)> {
    st.segments()
        .into_iter()
        .filter(|s| (s.namespace, s.cluster) != except)
        .map(|s| {
            let owner = match s.cluster {
                Some(c) => format!("TanzuKubernetesCluster {}/{c}", s.namespace),
                None => format!("namespace {}", s.namespace),
            };
            (s.segment.subnet, owner)
        })
        .collect()
}

/// Addresses held on one segment, with their holders, except the pods in `except`.
fn segment_hosts(
    st: &State,
    segment: &str,
    except: &BTreeSet<(String, String)>,
) -> BTreeMap<Ipv4Addr, String> {
    st.pods
        .iter()
        .filter(|(k, p)| p.segment == segment && !except.contains(*k))
        .map(|(_, p)| (p.ip, format!("pod {}/{}", p.namespace, p.name)))
        .collect()
}

/// Keeps, pins or allocates one address of an address pool.
#[allow(clippy::too_many_arguments)]
fn pick_pool_addr(
    pin: Option<Ipv4Addr>,
    keep: Option<Ipv4Addr>,
    pool: Ipv4Net,
    label: &str,
    start: Option<Ipv4Addr>,
    used: &BTreeMap<Ipv4Addr, String>,
    claims: &BTreeSet<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    let usable = |ip: Ipv4Addr| pool.contains(ip) && ip != pool.network() && ip != pool.broadcast();
    if let Some(ip) = pin {
        if !pool.contains(ip) {
            return Err(IpamError::Invalid(format!(
                "{ip} is outside the {label} {pool}"
            )));
        }
        if !usable(ip) {
            return Err(IpamError::Invalid(format!(
                "{ip} is the network or broadcast address of the {label} {pool}"
            )));
        }
        if let Some(owner) = used.get(&ip) {
            return Err(IpamError::Conflict(format!("{ip} is in use by {owner}")));
        }
        return Ok(ip);
    }
    if let Some(ip) = keep.filter(|ip| usable(*ip) && !used.contains_key(ip)) {
        return Ok(ip);
    }
    let taken: BTreeSet<Ipv4Addr> = used.keys().chain(claims.iter()).copied().collect();
    ipam::first_free_in_pool(pool, start, &taken)
        .ok_or_else(|| IpamError::Exhausted(format!("{label} {pool} has no free address left")))
}

/// Keeps, pins or allocates a segment subnet.
fn pick_segment(
    pin: Option<Ipv4Net>,
    prefix_len: u8,
    keep: Option<Ipv4Net>,
    pool: Ipv4Net,
    taken: &[(Ipv4Net, String)],
    claims: &[Ipv4Net],
) -> Result<Ipv4Net, IpamError> {
    if let Some(subnet) = pin {
        ipam::check_pinned_subnet(pool, "pod", subnet, taken)?;
        return Ok(subnet);
    }
    if let Some(k) = keep {
        let inside = pool.contains(k.network()) && k.prefix_len() >= pool.prefix_len();
        if k.prefix_len() == prefix_len && inside && !taken.iter().any(|(t, _)| t.overlaps(&k)) {
            return Ok(k);
        }
    }
    let all: Vec<Ipv4Net> = taken
        .iter()
        .map(|(n, _)| *n)
        .chain(claims.iter().copied())
        .collect();
    ipam::first_free_subnet(pool, "pod", prefix_len, &all)
}

/// One member of a group placed on a segment: a pinned address, or the address it holds now.
#[derive(Debug, Clone, Copy)]
struct HostWish {
    pin: Option<Ipv4Addr>,
    keep: Option<Ipv4Addr>,
}

/// Places a group of members on one segment: pins first, then members keeping a still-valid
/// address, then the rest lowest-first in order. `used` must not hold the members themselves.
/// On failure, the index of the member that could not be placed.
fn place_hosts(
    segment: &Segment,
    wishes: &[HostWish],
    used: &mut BTreeMap<Ipv4Addr, String>,
    owners: &[String],
    claims: &BTreeSet<Ipv4Addr>,
) -> Result<Vec<Ipv4Addr>, (usize, IpamError)> {
    let owner = |i: usize| owners.get(i).cloned().unwrap_or_default();
    let mut out: Vec<Option<Ipv4Addr>> = vec![None; wishes.len()];
    for (i, w) in wishes.iter().enumerate() {
        if let Some(ip) = w.pin {
            ipam::check_host(&segment.name, segment.subnet, ip).map_err(|e| (i, e))?;
            if let Some(owner) = used.get(&ip) {
                return Err((i, IpamError::Conflict(format!("{ip} is in use by {owner}"))));
            }
            used.insert(ip, owner(i));
            out[i] = Some(ip);
        }
    }
    for (i, w) in wishes.iter().enumerate() {
        if let (None, Some(ip)) = (out[i], w.keep) {
            if ipam::check_host(&segment.name, segment.subnet, ip).is_ok()
                && !used.contains_key(&ip)
            {
                used.insert(ip, owner(i));
                out[i] = Some(ip);
            }
        }
    }
    let mut taken: BTreeSet<Ipv4Addr> = used.keys().chain(claims.iter()).copied().collect();
    let mut placed = Vec::with_capacity(wishes.len());
    for (i, slot) in out.into_iter().enumerate() {
        let ip = match slot {
            Some(ip) => ip,
            None => {
                let ip = ipam::first_free_host(segment.subnet, &taken).ok_or_else(|| {
                    (
                        i,
                        IpamError::Exhausted(format!(
                            "segment {} {} has no free address left (a namespace gets a larger \
                             one with the annotation {ANN_SEGMENT_PREFIX_LEN}, e.g. 24, \
                             or {ANN_SEGMENT_CIDR}; it is a /{DEFAULT_SEGMENT_PREFIX_LEN} without \
                             them)",
                            segment.name, segment.subnet
                        )),
                    )
                })?;
                taken.insert(ip);
                used.insert(ip, owner(i));
                ip
            }
        };
        placed.push(ip);
    }
    Ok(placed)
}

/// The API server's words for a pod update that changes more than it may.
const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than \
    `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, \
    `spec.tolerations` (only additions to existing tolerations), \
    `spec.terminationGracePeriodSeconds`";

/// The first field of a pod's spec that a re-apply `r` changes and the API server would not
/// let change: every container field but its image, the containers themselves, `nodeName`.
/// Labels and annotations may change.
fn forbidden_pod_update(old: &Pod, r: &PodRequest, hostname: &str) -> Option<String> {
    if old.containers.len() != r.containers.len() {
        return Some("spec.containers".into());
    }
    for (i, (o, n)) in old.containers.iter().zip(&r.containers).enumerate() {
        if o.name != n.name {
            return Some(format!("spec.containers[{i}].name"));
        }
        if o.ports != n.ports {
            return Some(format!("spec.containers[{i}].ports"));
        }
        if o.env != n.env {
            return Some(format!("spec.containers[{i}].env"));
        }
    }
    (old.node != r.node.as_deref().unwrap_or(hostname)).then(|| "spec.nodeName".into())
}

/// An apply in progress: the state being built and what the request pins.
struct Txn<'a> {
    st: State,
    hostname: &'a str,
    now: u64,
    claims: Claims,
}

impl Txn<'_> {
    fn apply_one(&mut self, m: &Manifest) -> Result<&'static str, ApplyError> {
        match m {
            Manifest::Pools(r) => {
                ipam::check_pools(&r.pools).map_err(|e| ipam_err(e, &r.meta, "spec"))?;
                let action = if self.st.pools == r.pools {
                    "unchanged"
                } else {
                    "configured"
                };
                self.st.pools = r.pools.clone();
                Ok(action)
            }
            Manifest::Uplink(r) => {
                let action = if self.st.uplink == r.uplink {
                    "unchanged"
                } else {
                    "configured"
                };
                self.st.uplink = r.uplink.clone();
                Ok(action)
            }
            Manifest::OutsideHost(r) => self.apply_outside_host(r),
            Manifest::Namespace(r) => self.apply_namespace(r),
            Manifest::TanzuKubernetesCluster(r) => self.apply_tkc(r),
            Manifest::Pod(r) if r.meta.cluster.is_some() => self.apply_cluster_pod(r),
            Manifest::Pod(r) => self.apply_pod(r),
            Manifest::Deployment(r) => self.apply_deployment(r),
            Manifest::Service(r) => self.apply_service(r),
            Manifest::Endpoints(r) => self.apply_endpoints(r),
            Manifest::NetworkPolicy(r) => self.apply_network_policy(r),
        }
    }

    fn apply_network_policy(
        &mut self,
        r: &NetworkPolicyRequest,
    ) -> Result<&'static str, ApplyError> {
        let m = &r.meta;
        let ns = self.require_namespace(m)?;
        let key = (ns.name.clone(), m.name.clone());
        let old = self.st.network_policies.get(&key);
        let policy = NetworkPolicy {
            namespace: ns.name.clone(),
            name: m.name.clone(),
            labels: m.labels.clone(),
            annotations: m.annotations.clone(),
            pod_selector: r.pod_selector.clone(),
            ingress: r.ingress.clone(),
            egress: r.egress.clone(),
            created: old.map_or(self.now, |o| o.created),
        };
        let action = action_for(old, &policy);
        self.st.network_policies.insert(key, policy);
        Ok(action)
    }

    fn require_namespace(&self, m: &Meta) -> Result<Namespace, ApplyError> {
        let ns = m.namespace.as_deref().unwrap_or("default");
        self.st.namespaces.get(ns).cloned().ok_or_else(|| {
            err(
                ErrorCode::NotFound,
                m,
                "metadata.namespace",
                format!("namespace {ns:?} not found (apply it first, in this request or before)"),
            )
        })
    }

    fn require_cluster(&self, m: &Meta, ns: &str, cluster: &str) -> Result<TkgCluster, ApplyError> {
        self.st
            .tkg_clusters
            .get(&(ns.to_string(), cluster.to_string()))
            .cloned()
            .ok_or_else(|| {
                err(
                    ErrorCode::NotFound,
                    m,
                    "cluster",
                    format!("TanzuKubernetesCluster {ns}/{cluster} not found"),
                )
            })
    }

    fn apply_outside_host(&mut self, r: &OutsideHostRequest) -> Result<&'static str, ApplyError> {
        let m = &r.meta;
        if let Some((pool, net)) = self.st.pools.pool_of(r.addr) {
            return Err(err(
                ErrorCode::Invalid,
                m,
                "spec.address",
                format!(
                    "{} is inside the {pool} pool {net}; outside hosts live outside the pools",
                    r.addr
                ),
            ));
        }
        let uplink = &self.st.uplink;
        if r.addr == uplink.t0_addr || r.addr == uplink.peer_addr {
            return Err(err(
                ErrorCode::Conflict,
                m,
                "spec.address",
                format!("{} is an address of the T0 uplink", r.addr),
            ));
        }
        if let Some(other) = self
            .st
            .outside_hosts
            .values()
            .find(|h| h.addr == r.addr && h.name != m.name)
        {
            return Err(err(
                ErrorCode::Conflict,
                m,
                "spec.address",
                format!("{} is in use by outside host {}", r.addr, other.name),
            ));
        }
        let old = self.st.outside_hosts.get(&m.name);
        let host = OutsideHost {
            name: m.name.clone(),
            addr: r.addr,
            prefix_len: r.prefix_len,
            http_ports: r.http_ports.clone(),
            udp_ports: r.udp_ports.clone(),
            created: old.map_or(self.now, |o| o.created),
        };
        let action = action_for(old, &host);
        self.st.outside_hosts.insert(m.name.clone(), host.clone());
        check_outside_host(&self.st, &host)
            .map_err(|(code, message)| err(code, m, "spec.address", message))?;
        Ok(action)
    }

    fn apply_namespace(&mut self, r: &NamespaceRequest) -> Result<&'static str, ApplyError> {
        let m = &r.meta;
        let name = m.name.as_str();
        let old = self.st.namespaces.get(name).cloned();
        if r.supervisor {
            if let Some(other) = self
                .st
                .namespaces
                .values()
                .find(|n| n.supervisor && n.name != name)
            {
                return Err(err(
                    ErrorCode::Conflict,
                    m,
                    ann_field(ANN_SUPERVISOR),
                    format!(
                        "namespace {} is already the supervisor namespace",
                        other.name
                    ),
                ));
            }
            if let Some(((_, cluster), _)) =
                self.st.tkg_clusters.iter().find(|((n, _), _)| n == name)
            {
                return Err(err(
                    ErrorCode::Conflict,
                    m,
                    ann_field(ANN_SUPERVISOR),
                    format!(
                        "namespace {name} holds TanzuKubernetesCluster {cluster}: the supervisor namespace cannot hold TKG clusters; delete it first"
                    ),
                ));
            }
        }
        let pools = self.st.pools.clone();
        let taken = segments_taken(&self.st, (name, None));
        let keep = old.as_ref().map(|o| o.segment.subnet);
        let subnet = pick_segment(
            r.segment_cidr,
            r.segment_prefix_len,
            keep,
            pools.pods,
            &taken,
            &self.claims.segments,
        )
        .map_err(|e| ipam_err(e, m, segment_field(m, r.segment_cidr)))?;
        let segment = Segment {
            name: format!("seg-{name}"),
            subnet,
            gateway: ipam::gateway(subnet),
        };
        if let Some(o) = old.as_ref().filter(|o| o.segment.subnet != subnet) {
            if let Some(pod) = self.st.pods.values().find(|p| p.segment == o.segment.name) {
                return Err(err(
                    ErrorCode::Conflict,
                    m,
                    ann_field(ANN_SEGMENT_CIDR),
                    format!(
                        "cannot move namespace {name} from {} to {subnet} while it has pods (pod {}); delete them first",
                        o.segment.subnet, pod.name
                    ),
                ));
            }
        }
        let used: BTreeMap<Ipv4Addr, String> = self
            .st
            .namespaces
            .values()
            .filter(|n| n.name != name)
            .map(|n| (n.egress_ip, format!("namespace {}", n.name)))
            .collect();
        let egress = pick_pool_addr(
            r.egress_ip,
            old.as_ref().map(|o| o.egress_ip),
            pools.egress,
            "egress pool",
            pools.egress_start,
            &used,
            &self.claims.ips,
        )
        .map_err(|e| ipam_err(e, m, ann_field(ANN_STATIC_SNAT_IP)))?;
        let ns = Namespace {
            name: name.to_string(),
            labels: m.labels.clone(),
            annotations: m.annotations.clone(),
            created: old.as_ref().map_or(self.now, |o| o.created),
            supervisor: r.supervisor,
            segment,
            egress_ip: egress,
            segment_prefix_len: subnet.prefix_len(),
        };
        let action = action_for(old.as_ref(), &ns);
        self.st.namespaces.insert(name.to_string(), ns);
        Ok(action)
    }

    fn apply_tkc(&mut self, r: &TkgClusterRequest) -> Result<&'static str, ApplyError> {
        let m = &r.meta;
        let ns = self.require_namespace(m)?;
        if ns.supervisor {
            // The TKG service builds clusters in vSphere Namespaces only; the supervisor control
            // plane's namespace is not one (its T1 carries the management VMs).
            return Err(err(
                ErrorCode::Invalid,
                m,
                "metadata.namespace",
                format!(
                    "namespace {} is the supervisor control plane's, not a vSphere Namespace: a TanzuKubernetesCluster goes in a vSphere Namespace",
                    ns.name
                ),
            ));
        }
        let name = m.name.as_str();
        let key = (ns.name.clone(), name.to_string());
        let old = self.st.tkg_clusters.get(&key).cloned();
        let taken = segments_taken(&self.st, (&ns.name, Some(name)));
        let keep = old.as_ref().map(|o| o.segment.subnet);
        let subnet = pick_segment(
            r.segment_cidr,
            r.segment_prefix_len,
            keep,
            self.st.pools.pods,
            &taken,
            &self.claims.segments,
        )
        .map_err(|e| ipam_err(e, m, segment_field(m, r.segment_cidr)))?;
        let segment = Segment {
            name: format!("seg-{}/{name}", ns.name),
            subnet,
            gateway: ipam::gateway(subnet),
        };

        // Node VMs: pods of the namespace on the cluster's own segment.
        let (cps, workers) = ipam::tkg_node_names(
            &ns.name,
            name,
            r.control_plane_count as usize,
            &r.worker_pools,
        );
        let old_nodes: BTreeMap<String, Pod> = self
            .st
            .tkg_nodes(&ns.name, name)
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        for node in old_nodes.keys() {
            self.st.pods.remove(&(ns.name.clone(), node.clone()));
        }
        let roles = cps
            .iter()
            .map(|n| (n, TkgNodeRole::ControlPlane))
            .chain(workers.iter().map(|n| (n, TkgNodeRole::Worker)));
        let mut nodes: Vec<(String, TkgNodeRole)> = Vec::new();
        for (node, role) in roles {
            if let Some(other) = self.st.pods.get(&(ns.name.clone(), node.clone())) {
                return Err(err(
                    ErrorCode::Conflict,
                    m,
                    "metadata.name",
                    format!(
                        "node VM name {node} is taken by pod {}/{}",
                        other.namespace, other.name
                    ),
                ));
            }
            nodes.push((node.clone(), role));
        }
        let wishes: Vec<HostWish> = nodes
            .iter()
            .enumerate()
            .map(|(i, (node, _))| HostWish {
                pin: r.control_plane_ips.get(i).copied(),
                keep: old_nodes
                    .get(node)
                    .filter(|p| p.segment == segment.name)
                    .map(|p| p.ip),
            })
            .collect();
        let owners: Vec<String> = nodes
            .iter()
            .map(|(n, _)| format!("pod {}/{n}", ns.name))
            .collect();
        let mut used = segment_hosts(&self.st, &segment.name, &BTreeSet::new());
        let ips = place_hosts(&segment, &wishes, &mut used, &owners, &self.claims.ips).map_err(
            |(i, e)| {
                let field = if wishes[i].pin.is_some() {
                    ann_field(ANN_CONTROL_PLANE_IPS)
                } else {
                    "spec.topology".into()
                };
                ipam_err(e, m, field)
            },
        )?;
        for ((node, role), ip) in nodes.into_iter().zip(ips) {
            let (containers, role_label) = match role {
                // The API server the control-plane service balances over.
                TkgNodeRole::ControlPlane => (
                    vec![Container {
                        name: "kube-apiserver".into(),
                        image: String::new(),
                        ports: vec![ContainerPort {
                            name: Some("apiserver".into()),
                            container_port: 6443,
                            protocol: Protocol::Tcp,
                        }],
                        env: BTreeMap::new(),
                    }],
                    "control-plane",
                ),
                TkgNodeRole::Worker => (Vec::new(), "worker"),
            };
            let created = old_nodes.get(&node).map_or(self.now, |p| p.created);
            let pod = Pod {
                namespace: ns.name.clone(),
                name: node.clone(),
                labels: BTreeMap::from([
                    ("run.tanzu.vmware.com/cluster".to_string(), name.to_string()),
                    (
                        "run.tanzu.vmware.com/role".to_string(),
                        role_label.to_string(),
                    ),
                ]),
                annotations: BTreeMap::new(),
                ip,
                mac: ipam::mac_for(ip),
                segment: segment.name.clone(),
                node: self.hostname.to_string(),
                containers,
                owner: None,
                created,
                tkg_node: Some(role),
                tkg_cluster: Some(name.to_string()),
            };
            self.st.pods.insert((ns.name.clone(), node), pod);
        }

        let cluster = TkgCluster {
            namespace: ns.name.clone(),
            name: name.to_string(),
            labels: m.labels.clone(),
            annotations: m.annotations.clone(),
            segment,
            control_plane_count: r.control_plane_count,
            worker_pools: r.worker_pools.clone(),
            created: old.as_ref().map_or(self.now, |o| o.created),
        };
        let action = action_for(old.as_ref(), &cluster);
        self.st.tkg_clusters.insert(key, cluster);

        // The control-plane service NCP creates for every cluster: a LoadBalancer on 6443 whose
        // members are the control-plane nodes.
        let service = ServiceRequest {
            meta: Meta {
                document: m.document,
                item: m.item.clone(),
                kind: Kind::Service,
                name: format!("{name}-control-plane-service"),
                namespace: Some(ns.name.clone()),
                cluster: None,
                labels: BTreeMap::from([(
                    "run.tanzu.vmware.com/cluster".to_string(),
                    name.to_string(),
                )]),
                annotations: BTreeMap::new(),
            },
            service_type: ServiceType::LoadBalancer,
            cluster_ip: r
                .control_plane_cluster_ip
                .map_or(ClusterIpRequest::Auto, ClusterIpRequest::Pinned),
            ports: vec![ServicePort {
                name: None,
                protocol: Protocol::Tcp,
                port: 6443,
                target_port: TargetPort::Number(6443),
                node_port: r.control_plane_node_port,
            }],
            selector: None,
            session_affinity: None,
            external_traffic_local: false,
            load_balancer_ip: r.control_plane_vip,
            load_balancer_source_ranges: Vec::new(),
            algorithm: LbAlgorithm::RoundRobin,
            allocate_node_ports: true,
        };
        let fields = ServiceFields {
            cluster_ip: ann_field(ANN_CONTROL_PLANE_CLUSTER_IP),
            vip: ann_field(ANN_CONTROL_PLANE_VIP),
            node_port: Some(ann_field(ANN_CONTROL_PLANE_NODE_PORT)),
        };
        self.place_service(&service, Some(name), m, &fields)?;

        // Workers may have come or gone: place the cluster's workloads again.
        self.reschedule(m, &ns.name, name)?;
        Ok(action)
    }

    fn apply_pod(&mut self, r: &PodRequest) -> Result<&'static str, ApplyError> {
        let m = &r.meta;
        let ns = self.require_namespace(m)?;
        let key = (ns.name.clone(), m.name.clone());
        let old = self.st.pods.get(&key).cloned();
        if let Some(o) = &old {
            if let Some(owner) = &o.owner {
                return Err(err(
                    ErrorCode::Conflict,
                    m,
                    "metadata.name",
                    format!("pod {} is managed by deployment {owner}", m.name),
                ));
            }
            if let Some(c) = &o.tkg_cluster {
                return Err(err(
                    ErrorCode::Conflict,
                    m,
                    "metadata.name",
                    format!("pod {} is a node VM of TanzuKubernetesCluster {c}", m.name),
                ));
            }
            if let Some(field) = forbidden_pod_update(o, r, self.hostname) {
                return Err(err(
                    ErrorCode::Invalid,
                    m,
                    field,
                    format!("Forbidden: {POD_UPDATE_FORBIDDEN} (delete the pod to change it)"),
                ));
            }
        }
        let mut used = segment_hosts(&self.st, &ns.segment.name, &BTreeSet::from([key.clone()]));
        let wish = HostWish {
            pin: r.ip,
            keep: old
                .as_ref()
                .filter(|o| o.segment == ns.segment.name)
                .map(|o| o.ip),
        };
        let owner = format!("pod {}/{}", ns.name, m.name);
        let ip = place_hosts(&ns.segment, &[wish], &mut used, &[owner], &self.claims.ips).map_err(
            |(_, e)| {
                ipam_err(
                    e,
                    m,
                    if r.ip.is_some() {
                        ann_field(ANN_POD_IP)
                    } else {
                        "status.podIP".into()
                    },
                )
            },
        )?[0];
        let pod = Pod {
            namespace: ns.name.clone(),
            name: m.name.clone(),
            labels: m.labels.clone(),
            annotations: m.annotations.clone(),
            ip,
            mac: ipam::mac_for(ip),
            segment: ns.segment.name.clone(),
            node: r.node.clone().unwrap_or_else(|| self.hostname.to_string()),
            containers: r.containers.clone(),
            owner: None,
            created: old.as_ref().map_or(self.now, |o| o.created),
            tkg_node: None,
            tkg_cluster: None,
        };
        let action = action_for(old.as_ref(), &pod);
        self.st.pods.insert(key, pod);
        Ok(action)
    }

    fn apply_deployment(&mut self, r: &DeploymentRequest) -> Result<&'static str, ApplyError> {
        let m = &r.meta;
        let ns = self.require_namespace(m)?;
        let key_ns = key_namespace(m);
        let key = (key_ns.clone(), m.name.clone());
        let old = self.st.deployments.get(&key).cloned();
        // `spec.selector` is immutable in apps/v1: a change would orphan the pods it selected.
        if let Some(o) = old.as_ref().filter(|o| o.selector != r.selector) {
            return Err(err(
                ErrorCode::Invalid,
                m,
                "spec.selector",
                format!(
                    "field is immutable: deployment {key_ns}/{} has {}, the request asks for {} \
                     (delete the deployment to change it)",
                    m.name,
                    match_labels(&o.selector),
                    match_labels(&r.selector),
                ),
            ));
        }
        let deployment = Deployment {
            namespace: ns.name.clone(),
            name: m.name.clone(),
            labels: m.labels.clone(),
            annotations: m.annotations.clone(),
            replicas: r.replicas,
            selector: r.selector.clone(),
            template_labels: r.template_labels.clone(),
            containers: r.containers.clone(),
            created: old.as_ref().map_or(self.now, |o| o.created),
            cluster: m.cluster.clone(),
        };
        if let Some(cluster) = &m.cluster {
            self.require_cluster(m, &ns.name, cluster)?;
            self.schedule_cluster_deployment(m, &deployment)?;
        } else {
            self.place_replicas(m, &ns, &deployment)?;
        }
        let action = action_for(old.as_ref(), &deployment);
        self.st.deployments.insert(key, deployment);
        Ok(action)
    }

    /// Creates, updates and removes a supervisor deployment's pods.
    fn place_replicas(
        &mut self,
        m: &Meta,
        ns: &Namespace,
        d: &Deployment,
    ) -> Result<(), ApplyError> {
        let names = ipam::replica_names(&ns.name, &d.name, &d.pod_template(), d.replicas as usize);
        let wanted: BTreeSet<&String> = names.iter().collect();
        let stale: Vec<(String, String)> = self
            .st
            .pods_in(&ns.name)
            .filter(|p| p.owner.as_deref() == Some(d.name.as_str()) && !wanted.contains(&p.name))
            .map(|p| (p.namespace.clone(), p.name.clone()))
            .collect();
        let mut mine = BTreeSet::new();
        let mut wishes = Vec::with_capacity(names.len());
        for pod_name in &names {
            let k = (ns.name.clone(), pod_name.clone());
            let keep = match self.st.pods.get(&k) {
                Some(p) if p.owner.as_deref() == Some(d.name.as_str()) => {
                    Some(p.ip).filter(|_| p.segment == ns.segment.name)
                }
                Some(p) => {
                    return Err(err(
                        ErrorCode::Conflict,
                        m,
                        "metadata.name",
                        format!(
                            "replica name {pod_name} is taken by pod {}/{}",
                            p.namespace, p.name
                        ),
                    ))
                }
                None => None,
            };
            wishes.push(HostWish { pin: None, keep });
            mine.insert(k);
        }
        let owners: Vec<String> = names
            .iter()
            .map(|n| format!("pod {}/{n}", ns.name))
            .collect();
        // New replicas take addresses the old ones do not have, when the segment has them, so
        // that the old ones serve until the new ones do (a rollout), as a rolling update's
        // surge has both at once; else the old ones' addresses.
        let mut used = segment_hosts(&self.st, &ns.segment.name, &mine);
        let mut placed = place_hosts(&ns.segment, &wishes, &mut used, &owners, &self.claims.ips);
        for k in &stale {
            self.st.pods.remove(k);
        }
        if placed.is_err() && !stale.is_empty() {
            let mut used = segment_hosts(&self.st, &ns.segment.name, &mine);
            placed = place_hosts(&ns.segment, &wishes, &mut used, &owners, &self.claims.ips);
        }
        let ips = placed.map_err(|(_, e)| ipam_err(e, m, "spec.replicas"))?;
        for (pod_name, ip) in names.into_iter().zip(ips) {
            let k = (ns.name.clone(), pod_name.clone());
            let created = self.st.pods.get(&k).map_or(self.now, |p| p.created);
            let pod = Pod {
                namespace: ns.name.clone(),
                name: pod_name,
                labels: d.template_labels.clone(),
                annotations: BTreeMap::new(),
                ip,
                mac: ipam::mac_for(ip),
                segment: ns.segment.name.clone(),
                node: self.hostname.to_string(),
                containers: d.containers.clone(),
                owner: Some(d.name.clone()),
                created,
                tkg_node: None,
                tkg_cluster: None,
            };
            self.st.pods.insert(k, pod);
        }
        Ok(())
    }

    /// The worker node names of a cluster, in index order.
    fn workers_of(&self, ns: &str, cluster: &str) -> Vec<String> {
        match self
            .st
            .tkg_clusters
            .get(&(ns.to_string(), cluster.to_string()))
        {
            Some(c) => ipam::tkg_node_names(ns, cluster, 0, &c.worker_pools).1,
            None => Vec::new(),
        }
    }

    /// Creates, updates and removes the workloads of a deployment inside a TKG cluster,
    /// replicas round-robin over the workers.
    fn schedule_cluster_deployment(&mut self, m: &Meta, d: &Deployment) -> Result<(), ApplyError> {
        let Some(cluster) = d.cluster.as_deref() else {
            return Ok(());
        };
        let key_ns = cluster_key(&d.namespace, cluster);
        let workers = self.workers_of(&d.namespace, cluster);
        if d.replicas > 0 && workers.is_empty() {
            return Err(err(
                ErrorCode::Conflict,
                m,
                "spec.replicas",
                format!(
                    "TKG cluster {key_ns} has no worker node to run {} replicas on",
                    d.replicas
                ),
            ));
        }
        // Named after the template as the supervisor's replicas are: a changed template rolls
        // them (new names; the daemon starts them before the old ones drain), a changed count
        // keeps the running ones.
        let names = ipam::replica_names(&key_ns, &d.name, &d.pod_template(), d.replicas as usize);
        let wanted: BTreeSet<&String> = names.iter().collect();
        self.st.cluster_workloads.retain(|(k, n), w| {
            !(k == &key_ns && w.owner.as_deref() == Some(d.name.as_str()) && !wanted.contains(n))
        });
        for (i, name) in names.iter().enumerate() {
            let k = (key_ns.clone(), name.clone());
            let created = match self.st.cluster_workloads.get(&k) {
                Some(w) if w.owner.as_deref() == Some(d.name.as_str()) => w.created,
                Some(_) => {
                    return Err(err(
                        ErrorCode::Conflict,
                        m,
                        "metadata.name",
                        format!("replica name {name} is taken by pod {name} in cluster {key_ns}"),
                    ))
                }
                None => self.now,
            };
            let workload = ClusterWorkload {
                namespace: d.namespace.clone(),
                cluster: cluster.to_string(),
                name: name.clone(),
                node: workers[i % workers.len()].clone(),
                containers: d.containers.clone(),
                labels: d.template_labels.clone(),
                created,
                owner: Some(d.name.clone()),
            };
            self.st.cluster_workloads.insert(k, workload);
        }
        Ok(())
    }

    /// The worker running the fewest workloads (lowest index on ties).
    fn least_loaded_worker(&self, ns: &str, cluster: &str, exclude: &str) -> Option<String> {
        let workers = self.workers_of(ns, cluster);
        let load = |w: &String| {
            self.st
                .workloads_in(ns, cluster)
                .filter(|x| &x.node == w && x.name != exclude)
                .count()
        };
        workers
            .iter()
            .enumerate()
            .min_by_key(|(i, w)| (load(w), *i))
            .map(|(_, w)| w.clone())
    }

    fn apply_cluster_pod(&mut self, r: &PodRequest) -> Result<&'static str, ApplyError> {
        let m = &r.meta;
        let ns = self.require_namespace(m)?;
        let cluster = m.cluster.clone().unwrap_or_default();
        self.require_cluster(m, &ns.name, &cluster)?;
        let key_ns = cluster_key(&ns.name, &cluster);
        let key = (key_ns.clone(), m.name.clone());
        let old = self.st.cluster_workloads.get(&key).cloned();
        if let Some(owner) = old.as_ref().and_then(|o| o.owner.as_ref()) {
            return Err(err(
                ErrorCode::Conflict,
                m,
                "metadata.name",
                format!("pod {} is managed by deployment {owner}", m.name),
            ));
        }
        let nodes: BTreeSet<String> = self
            .st
            .tkg_nodes(&ns.name, &cluster)
            .map(|p| p.name.clone())
            .collect();
        let node = match &r.node {
            Some(n) if nodes.contains(n) => n.clone(),
            Some(n) => {
                return Err(err(
                    ErrorCode::Invalid,
                    m,
                    "spec.nodeName",
                    format!("cluster {key_ns} has no node {n}"),
                ))
            }
            None => match old
                .as_ref()
                .map(|o| o.node.clone())
                .filter(|n| nodes.contains(n))
            {
                Some(n) => n,
                None => self
                    .least_loaded_worker(&ns.name, &cluster, &m.name)
                    .ok_or_else(|| {
                        err(
                            ErrorCode::Conflict,
                            m,
                            "spec.nodeName",
                            format!("TKG cluster {key_ns} has no worker node"),
                        )
                    })?,
            },
        };
        let workload = ClusterWorkload {
            namespace: ns.name.clone(),
            cluster,
            name: m.name.clone(),
            node,
            containers: r.containers.clone(),
            labels: m.labels.clone(),
            created: old.as_ref().map_or(self.now, |o| o.created),
            owner: None,
        };
        let action = action_for(old.as_ref(), &workload);
        self.st.cluster_workloads.insert(key, workload);
        Ok(action)
    }

    /// After a cluster's workers changed: deployments spread again, pods on vanished nodes move.
    fn reschedule(&mut self, m: &Meta, ns: &str, cluster: &str) -> Result<(), ApplyError> {
        let key_ns = cluster_key(ns, cluster);
        let deployments: Vec<Deployment> = self
            .st
            .deployments
            .iter()
            .filter(|((k, _), _)| k == &key_ns)
            .map(|(_, d)| d.clone())
            .collect();
        for d in &deployments {
            self.schedule_cluster_deployment(m, d)
                .map_err(|e| ApplyError {
                    field: "spec.topology".into(),
                    ..e
                })?;
        }
        let nodes: BTreeSet<String> = self
            .st
            .tkg_nodes(ns, cluster)
            .map(|p| p.name.clone())
            .collect();
        let homeless: Vec<(String, String)> = self
            .st
            .cluster_workloads
            .iter()
            .filter(|((k, _), w)| k == &key_ns && w.owner.is_none() && !nodes.contains(&w.node))
            .map(|(k, _)| k.clone())
            .collect();
        for k in homeless {
            let node = self.least_loaded_worker(ns, cluster, &k.1).ok_or_else(|| {
                err(
                    ErrorCode::Conflict,
                    m,
                    "spec.topology",
                    format!("pod {} in cluster {key_ns} would have no node", k.1),
                )
            })?;
            if let Some(w) = self.st.cluster_workloads.get_mut(&k) {
                w.node = node;
            }
        }
        Ok(())
    }

    fn apply_service(&mut self, r: &ServiceRequest) -> Result<&'static str, ApplyError> {
        let m = &r.meta;
        let ns = self.require_namespace(m)?;
        if let Some(cluster) = &m.cluster {
            self.require_cluster(m, &ns.name, cluster)?;
        }
        let fields = ServiceFields {
            cluster_ip: "spec.clusterIP".into(),
            vip: "spec.loadBalancerIP".into(),
            node_port: None,
        };
        self.place_service(r, None, m, &fields)
    }

    /// Allocates a service's ClusterIP, VIP and nodePorts and stores it. `managed_by` is the TKG
    /// cluster whose control-plane service this is; errors are reported against `blame` with the
    /// field names in `fields`.
    fn place_service(
        &mut self,
        r: &ServiceRequest,
        managed_by: Option<&str>,
        blame: &Meta,
        fields: &ServiceFields,
    ) -> Result<&'static str, ApplyError> {
        let m = &r.meta;
        let ns = m.namespace.clone().unwrap_or_default();
        let key_ns = key_namespace(m);
        let key = (key_ns.clone(), m.name.clone());
        let old = self.st.services.get(&key).cloned();
        if let Some(o) = &old {
            match (&o.tkg_control_plane, managed_by) {
                (Some(c), None) => {
                    return Err(err(
                        ErrorCode::Conflict,
                        blame,
                        "metadata.name",
                        format!(
                            "service {key_ns}/{} is managed by TanzuKubernetesCluster {ns}/{c}",
                            m.name
                        ),
                    ))
                }
                (None, Some(_)) => {
                    return Err(err(
                        ErrorCode::Conflict,
                        blame,
                        "metadata.name",
                        format!(
                            "service {key_ns}/{} already exists and is not this cluster's",
                            m.name
                        ),
                    ))
                }
                _ => {}
            }
        }
        let pools = self.st.pools.clone();
        let in_cluster = m.cluster.is_some();

        let (range, start, label) = if in_cluster {
            (
                ipam::guest_service_cidr(),
                Some(ipam::guest_service_start()),
                "TKG guest service range",
            )
        } else {
            (pools.services, pools.services_start, "service pool")
        };
        // ClusterIPs are unique per Kubernetes cluster: the supervisor's, or one guest's.
        let same_scope = |k: &String| {
            if in_cluster {
                *k == key_ns
            } else {
                split_key(k).1.is_none()
            }
        };
        let used_ips: BTreeMap<Ipv4Addr, String> = self
            .st
            .services
            .iter()
            .filter(|(k, _)| same_scope(&k.0) && **k != key)
            .filter_map(|((k, n), s)| s.cluster_ip.map(|ip| (ip, format!("service {k}/{n}"))))
            .collect();
        // Guest ClusterIPs are private to each cluster: only the supervisor's collide with claims.
        let no_claims = BTreeSet::new();
        let claims = if in_cluster {
            &no_claims
        } else {
            &self.claims.ips
        };
        // `spec.clusterIP` is immutable once set, as the API server holds it: a request may
        // repeat it or leave it out (the service keeps its address, or stays headless), not
        // change it.
        if let Some(o) = old.as_ref() {
            let asked = match r.cluster_ip {
                ClusterIpRequest::Headless => Some(None),
                ClusterIpRequest::Pinned(ip) => Some(Some(ip)),
                ClusterIpRequest::Auto => None,
            };
            if asked.is_some_and(|a| a != o.cluster_ip) {
                let shown = |ip: Option<Ipv4Addr>| ip.map_or("None".to_string(), |i| i.to_string());
                return Err(err(
                    ErrorCode::Invalid,
                    blame,
                    fields.cluster_ip.clone(),
                    format!(
                        "field is immutable: service {key_ns}/{} has {}, the request asks for {} \
                         (delete the service to change it)",
                        m.name,
                        shown(o.cluster_ip),
                        shown(asked.flatten()),
                    ),
                ));
            }
            if r.cluster_ip == ClusterIpRequest::Auto
                && o.cluster_ip.is_none()
                && r.service_type != ServiceType::ClusterIP
            {
                return Err(err(
                    ErrorCode::Invalid,
                    blame,
                    fields.cluster_ip.clone(),
                    format!(
                        "field is immutable: service {key_ns}/{} is headless (None), which a \
                         {} service may not be (delete the service to change it)",
                        m.name, r.service_type
                    ),
                ));
            }
        }
        // Left out, a headless service stays headless (the API server keeps the old value).
        let requested = match (r.cluster_ip, &old) {
            (ClusterIpRequest::Auto, Some(o)) if o.cluster_ip.is_none() => {
                ClusterIpRequest::Headless
            }
            (asked, _) => asked,
        };
        let cluster_ip = match requested {
            ClusterIpRequest::Headless => None,
            ClusterIpRequest::Pinned(ip) => Some(ip),
            ClusterIpRequest::Auto => old.as_ref().and_then(|o| o.cluster_ip),
        };
        let cluster_ip = match (requested, cluster_ip) {
            (ClusterIpRequest::Headless, _) => None,
            (ClusterIpRequest::Pinned(ip), _) => Some(
                pick_pool_addr(Some(ip), None, range, label, start, &used_ips, claims)
                    .map_err(|e| ipam_err(e, blame, fields.cluster_ip.clone()))?,
            ),
            (ClusterIpRequest::Auto, keep) => Some(
                pick_pool_addr(None, keep, range, label, start, &used_ips, claims)
                    .map_err(|e| ipam_err(e, blame, fields.cluster_ip.clone()))?,
            ),
        };

        let vip = if r.service_type == ServiceType::LoadBalancer {
            let used: BTreeMap<Ipv4Addr, String> = self
                .st
                .services
                .iter()
                .filter(|(k, _)| **k != key)
                .filter_map(|((k, n), s)| {
                    s.load_balancer_ip
                        .map(|ip| (ip, format!("service {k}/{n}")))
                })
                .collect();
            let keep = old.as_ref().and_then(|o| o.load_balancer_ip);
            Some(
                pick_pool_addr(
                    r.load_balancer_ip,
                    keep,
                    pools.ingress,
                    "ingress pool",
                    pools.ingress_start,
                    &used,
                    &self.claims.ips,
                )
                .map_err(|e| ipam_err(e, blame, fields.vip.clone()))?,
            )
        } else {
            None
        };

        let mut ports = r.ports.clone();
        if r.service_type == ServiceType::ClusterIP {
            for p in &mut ports {
                p.node_port = None;
            }
        } else {
            let scope = node_port_scope(&key_ns);
            let used: BTreeMap<u16, String> = self
                .st
                .services
                .iter()
                .filter(|(k, _)| **k != key && node_port_scope(&k.0) == scope)
                .flat_map(|((k, n), s)| {
                    s.ports
                        .iter()
                        .filter_map(move |p| p.node_port.map(|np| (np, format!("service {k}/{n}"))))
                })
                .collect();
            let field = |i: usize| {
                fields
                    .node_port
                    .clone()
                    .unwrap_or_else(|| format!("spec.ports[{i}].nodePort"))
            };
            let mut mine: BTreeSet<(u16, Protocol)> = BTreeSet::new();
            for (i, p) in ports.iter().enumerate() {
                if let Some(np) = p.node_port {
                    if let Some(owner) = used.get(&np) {
                        return Err(err(
                            ErrorCode::Conflict,
                            blame,
                            field(i),
                            format!("nodePort {np} is in use by {owner}"),
                        ));
                    }
                    if !mine.insert((np, p.protocol)) {
                        return Err(err(
                            ErrorCode::Invalid,
                            blame,
                            field(i),
                            format!("duplicate nodePort {np}/{}", p.protocol),
                        ));
                    }
                }
            }
            let mut taken: BTreeSet<u16> = used.keys().copied().collect();
            taken.extend(
                self.claims
                    .node_ports
                    .iter()
                    .filter(|(s, _)| *s == scope)
                    .map(|(_, p)| *p),
            );
            taken.extend(mine.iter().map(|(p, _)| *p));
            for (i, p) in ports.iter_mut().enumerate() {
                if p.node_port.is_some() || !r.allocate_node_ports {
                    continue;
                }
                let keep = old
                    .as_ref()
                    .and_then(|o| {
                        o.ports
                            .iter()
                            .find(|q| q.port == p.port && q.protocol == p.protocol)
                    })
                    .and_then(|q| q.node_port)
                    .filter(|np| !used.contains_key(np) && !mine.iter().any(|(x, _)| x == np));
                let np = match keep {
                    Some(np) => np,
                    None => ipam::first_free_node_port(&taken).ok_or_else(|| {
                        err(
                            ErrorCode::Exhausted,
                            blame,
                            field(i),
                            "no free nodePort left in 30000-32767",
                        )
                    })?,
                };
                taken.insert(np);
                mine.insert((np, p.protocol));
                p.node_port = Some(np);
            }
        }

        let service = Service {
            namespace: ns,
            name: m.name.clone(),
            cluster: m.cluster.clone(),
            labels: m.labels.clone(),
            annotations: m.annotations.clone(),
            service_type: r.service_type,
            cluster_ip,
            ports,
            selector: r.selector.clone(),
            session_affinity: r.session_affinity,
            external_traffic_local: r.external_traffic_local,
            load_balancer_ip: vip,
            load_balancer_source_ranges: r.load_balancer_source_ranges.clone(),
            algorithm: r.algorithm,
            created: old.as_ref().map_or(self.now, |o| o.created),
            tkg_control_plane: managed_by.map(str::to_string),
        };
        let action = action_for(old.as_ref(), &service);
        self.st.services.insert(key, service);
        Ok(action)
    }

    fn apply_endpoints(&mut self, r: &EndpointsRequest) -> Result<&'static str, ApplyError> {
        let m = &r.meta;
        let ns = self.require_namespace(m)?;
        let kind = if m.kind == Kind::EndpointSlice {
            EndpointsKind::EndpointSlice
        } else {
            EndpointsKind::Endpoints
        };
        let key = (ns.name.clone(), kind, m.name.clone());
        let old = self.st.endpoint_objects.get(&key);
        let object = EndpointsObject {
            kind,
            namespace: ns.name.clone(),
            name: m.name.clone(),
            service: r.service.clone(),
            labels: m.labels.clone(),
            subsets: r.subsets.clone(),
            created: old.map_or(self.now, |o| o.created),
        };
        let action = action_for(old, &object);
        self.st.endpoint_objects.insert(key, object);
        Ok(action)
    }
}

/// Field names used in a service's allocation errors (the control-plane service reports
/// against the TanzuKubernetesCluster's annotations instead).
struct ServiceFields {
    cluster_ip: String,
    vip: String,
    node_port: Option<String>,
}

/// An outside host's subnet against the uplink, the pools and the other hosts (the host itself
/// must be in `st`).
fn check_outside_host(st: &State, h: &OutsideHost) -> Result<(), (ErrorCode, String)> {
    let (pools, uplink) = (&st.pools, &st.uplink);
    // The upstream router takes the first address of the host's subnet, on its host
    // bridge, as the host's gateway: the subnet needs room for it, must not be the uplink
    // transit or a pool (the host would look for those on its own link), and no host may
    // hold another's gateway address.
    let at = format!("outside host {} ({}/{})", h.name, h.addr, h.prefix_len);
    let Some(subnet) = Ipv4Net::new(h.addr, h.prefix_len).filter(|n| n.prefix_len() <= 30) else {
        return Err((
            ErrorCode::Invalid,
            format!("{at}: a /30 or larger subnet is needed, to hold the router's gateway"),
        ));
    };
    if subnet.overlaps(&uplink.subnet()) {
        return Err((
            ErrorCode::Conflict,
            format!("{at} overlaps the T0 uplink transit {}", uplink.subnet()),
        ));
    }
    for (pool, net) in [
        ("pod", pools.pods),
        ("service", pools.services),
        ("ingress", pools.ingress),
        ("egress", pools.egress),
    ] {
        if subnet.overlaps(&net) {
            return Err((
                ErrorCode::Conflict,
                format!("{at} overlaps the {pool} pool {net}"),
            ));
        }
    }
    let gateway = subnet.nth(1).unwrap_or(h.addr);
    if let Some(other) = st.outside_hosts.values().find(|o| o.addr == gateway) {
        let whose = if other.name == h.name {
            "its own".to_string()
        } else {
            format!("outside host {}'s", other.name)
        };
        return Err((
            ErrorCode::Conflict,
            format!(
                "{at}: {gateway}, {whose} address, is the upstream router's gateway on {subnet}"
            ),
        ));
    }
    Ok(())
}

/// Everything allocated must sit inside its pool, and nothing outside may sit inside one:
/// checked after every request, since a Pools or Uplink change can strand existing objects.
fn check_placement(st: &State) -> Result<(), (ErrorCode, String)> {
    let pools: &Pools = &st.pools;
    ipam::check_pools(pools).map_err(|e| (ErrorCode::Invalid, e.message().to_string()))?;
    let uplink: &Uplink = &st.uplink;
    for (what, ip) in [
        ("T0 uplink address", uplink.t0_addr),
        ("upstream router address", uplink.peer_addr),
    ] {
        if let Some((pool, net)) = pools.pool_of(ip) {
            return Err((
                ErrorCode::Invalid,
                format!("{what} {ip} is inside the {pool} pool {net}"),
            ));
        }
    }
    let transit = Ipv4Net::new(crate::compile::TRANSIT_BASE, 16)
        .unwrap_or(Ipv4Net::host(crate::compile::TRANSIT_BASE));
    if uplink.subnet().overlaps(&transit) {
        return Err((
            ErrorCode::Invalid,
            format!(
                "T0 uplink transit {} overlaps the T0-T1 transit range {transit}",
                uplink.subnet()
            ),
        ));
    }
    for h in st.outside_hosts.values() {
        if let Some((pool, net)) = pools.pool_of(h.addr) {
            return Err((
                ErrorCode::Conflict,
                format!(
                    "outside host {} ({}) is inside the {pool} pool {net}",
                    h.name, h.addr
                ),
            ));
        }
        if h.addr == uplink.t0_addr || h.addr == uplink.peer_addr {
            return Err((
                ErrorCode::Conflict,
                format!(
                    "outside host {} ({}) has an address of the T0 uplink",
                    h.name, h.addr
                ),
            ));
        }
        check_outside_host(st, h)?;
    }
    let outside = |net: Ipv4Net| {
        !pools.pods.contains(net.network()) || net.prefix_len() < pools.pods.prefix_len()
    };
    for s in st.segments() {
        if outside(s.segment.subnet) {
            return Err((
                ErrorCode::Conflict,
                format!(
                    "segment {} {} is outside the pod pool {}",
                    s.segment.name, s.segment.subnet, pools.pods
                ),
            ));
        }
    }
    for ns in st.namespaces.values() {
        if !pools.egress.contains(ns.egress_ip) {
            return Err((
                ErrorCode::Conflict,
                format!(
                    "egress IP {} of namespace {} is outside the egress pool {}",
                    ns.egress_ip, ns.name, pools.egress
                ),
            ));
        }
    }
    for s in st.services.values() {
        if let (Some(ip), None) = (s.cluster_ip, &s.cluster) {
            if !pools.services.contains(ip) {
                return Err((
                    ErrorCode::Conflict,
                    format!(
                        "ClusterIP {ip} of service {}/{} is outside the service pool {}",
                        s.namespace, s.name, pools.services
                    ),
                ));
            }
        }
        if let Some(ip) = s.load_balancer_ip.filter(|ip| !pools.ingress.contains(*ip)) {
            return Err((
                ErrorCode::Conflict,
                format!(
                    "VIP {ip} of service {}/{} is outside the ingress pool {}",
                    s.namespace, s.name, pools.ingress
                ),
            ));
        }
    }
    Ok(())
}

fn not_found(r: &ObjectRef, what: String) -> ApplyError {
    ApplyError {
        code: ErrorCode::NotFound,
        document: r.document,
        kind: Some(r.kind.to_string()),
        name: Some(r.name.clone()),
        field: "metadata.name".into(),
        message: format!("{what} not found"),
    }
}

fn conflict(r: &ObjectRef, message: String) -> ApplyError {
    ApplyError {
        code: ErrorCode::Conflict,
        document: r.document,
        kind: Some(r.kind.to_string()),
        name: Some(r.name.clone()),
        field: "metadata.name".into(),
        message,
    }
}

/// Removes one object (and what it owns) from `st`.
fn delete_one(st: &mut State, r: &ObjectRef) -> Result<(), ApplyError> {
    let ns = r.namespace.clone().unwrap_or_else(|| "default".into());
    let key_ns = match &r.cluster {
        Some(c) => cluster_key(&ns, c),
        None => ns.clone(),
    };
    let key = (key_ns.clone(), r.name.clone());
    let what = format!("{} {key_ns}/{}", r.kind.resource(), r.name);
    match r.kind {
        Kind::Pools => st.pools = Pools::default(),
        Kind::Uplink => st.uplink = Uplink::default(),
        Kind::OutsideHost => {
            st.outside_hosts
                .remove(&r.name)
                .ok_or_else(|| not_found(r, format!("outsidehost {}", r.name)))?;
        }
        Kind::Namespace => {
            st.namespaces
                .remove(&r.name)
                .ok_or_else(|| not_found(r, format!("namespace {}", r.name)))?;
            remove_namespace_contents(st, &r.name);
        }
        Kind::TanzuKubernetesCluster => {
            st.tkg_clusters
                .remove(&key)
                .ok_or_else(|| not_found(r, what))?;
            remove_cluster_contents(st, &ns, &r.name);
        }
        Kind::Pod if r.cluster.is_some() => {
            match st.cluster_workloads.get(&key) {
                None => return Err(not_found(r, what)),
                Some(w) if w.owner.is_some() => {
                    return Err(conflict(
                        r,
                        format!(
                            "pod {} is managed by deployment {}",
                            r.name,
                            w.owner.clone().unwrap_or_default()
                        ),
                    ))
                }
                Some(_) => st.cluster_workloads.remove(&key),
            };
        }
        Kind::Pod => {
            match st.pods.get(&key) {
                None => return Err(not_found(r, what)),
                Some(p) if p.owner.is_some() => {
                    return Err(conflict(
                        r,
                        format!(
                            "pod {} is managed by deployment {}; scale or delete the deployment",
                            r.name,
                            p.owner.clone().unwrap_or_default()
                        ),
                    ))
                }
                Some(p) if p.tkg_cluster.is_some() => {
                    return Err(conflict(
                        r,
                        format!(
                            "pod {} is a node VM of TanzuKubernetesCluster {}",
                            r.name,
                            p.tkg_cluster.clone().unwrap_or_default()
                        ),
                    ))
                }
                Some(_) => st.pods.remove(&key),
            };
        }
        Kind::Deployment => {
            st.deployments
                .remove(&key)
                .ok_or_else(|| not_found(r, what))?;
            let owner = Some(r.name.clone());
            st.pods
                .retain(|(k, _), p| !(k == &ns && r.cluster.is_none() && p.owner == owner));
            st.cluster_workloads
                .retain(|(k, _), w| !(k == &key_ns && w.owner == owner));
        }
        Kind::Service => {
            match st.services.get(&key) {
                None => return Err(not_found(r, what)),
                Some(s) if s.tkg_control_plane.is_some() => {
                    return Err(conflict(
                        r,
                        format!(
                        "service {} is managed by TanzuKubernetesCluster {}; delete the cluster",
                        r.name,
                        s.tkg_control_plane.clone().unwrap_or_default()
                    ),
                    ))
                }
                Some(_) => st.services.remove(&key),
            };
        }
        Kind::NetworkPolicy => {
            st.network_policies
                .remove(&key)
                .ok_or_else(|| not_found(r, what))?;
        }
        Kind::Endpoints | Kind::EndpointSlice => {
            let kind = if r.kind == Kind::EndpointSlice {
                EndpointsKind::EndpointSlice
            } else {
                EndpointsKind::Endpoints
            };
            st.endpoint_objects
                .remove(&(key_ns, kind, r.name.clone()))
                .ok_or_else(|| not_found(r, what))?;
        }
    }
    Ok(())
}

fn in_namespace(key_ns: &str, ns: &str) -> bool {
    split_key(key_ns).0 == ns
}

fn remove_namespace_contents(st: &mut State, ns: &str) {
    st.pods.retain(|(k, _), _| k != ns);
    st.deployments.retain(|(k, _), _| !in_namespace(k, ns));
    st.services.retain(|(k, _), _| !in_namespace(k, ns));
    st.tkg_clusters.retain(|(k, _), _| k != ns);
    st.cluster_workloads
        .retain(|(k, _), _| !in_namespace(k, ns));
    st.endpoint_objects
        .retain(|(k, _, _), _| !in_namespace(k, ns));
    st.network_policies.retain(|(k, _), _| k != ns);
}

fn remove_cluster_contents(st: &mut State, ns: &str, cluster: &str) {
    let key_ns = cluster_key(ns, cluster);
    st.pods
        .retain(|(k, _), p| !(k == ns && p.tkg_cluster.as_deref() == Some(cluster)));
    st.services.retain(|(k, _), s| {
        !(k == ns && s.tkg_control_plane.as_deref() == Some(cluster)) && k != &key_ns
    });
    st.deployments.retain(|(k, _), _| k != &key_ns);
    st.cluster_workloads.retain(|(k, _), _| k != &key_ns);
}

impl State {
    /// The backends of every service port, from the state as it is (see `ServiceEndpoints`).
    pub fn resolve_endpoints(&self) -> Vec<ServiceEndpoints> {
        let mut out = Vec::new();
        for ((key_ns, name), svc) in &self.services {
            let (ns, cluster) = split_key(key_ns);
            for port in &svc.ports {
                let mut endpoints = Vec::new();
                if let Some(c) = &svc.tkg_control_plane {
                    let target = match &port.target_port {
                        TargetPort::Number(n) => *n,
                        TargetPort::Name(_) => port.port,
                    };
                    for node in self
                        .tkg_nodes(ns, c)
                        .filter(|p| p.tkg_node == Some(TkgNodeRole::ControlPlane))
                    {
                        endpoints.push(Endpoint {
                            ip: node.ip,
                            port: target,
                            ready: true,
                            target: node.name.clone(),
                        });
                    }
                } else if let Some(c) = cluster {
                    // The SLB reaches a guest cluster's service through its nodePort on the
                    // nodes: on every worker node, as the guest's cloud provider selects them
                    // all for the service (the nodes without a replica relay, as kube-proxy's
                    // `Cluster` policy does), or, with `externalTrafficPolicy: Local`, on those
                    // that run a selected replica (the others would refuse). With
                    // `sessionAffinity: ClientIP` also only those: the SLB keeps a client on
                    // its node, and a relaying node would spread it over the others' replicas.
                    // While no replica runs, no node can answer: there is no member.
                    if let (Some(selector), Some(node_port)) = (&svc.selector, port.node_port) {
                        let busy: BTreeSet<&str> = self
                            .workloads_in(ns, c)
                            .filter(|w| selects(selector, &w.labels))
                            .map(|w| w.node.as_str())
                            .collect();
                        let member = |p: &&Pod| {
                            busy.contains(p.name.as_str())
                                || (!busy.is_empty()
                                    && !svc.external_traffic_local
                                    && svc.session_affinity.is_none()
                                    && p.tkg_node == Some(TkgNodeRole::Worker))
                        };
                        for node in self.tkg_nodes(ns, c).filter(member) {
                            endpoints.push(Endpoint {
                                ip: node.ip,
                                port: node_port,
                                ready: true,
                                target: node.name.clone(),
                            });
                        }
                    }
                } else if let Some(selector) = &svc.selector {
                    for pod in self.pods_in(ns).filter(|p| selects(selector, &p.labels)) {
                        let target = match &port.target_port {
                            TargetPort::Number(n) => Some(*n),
                            TargetPort::Name(wanted) => pod
                                .containers
                                .iter()
                                .flat_map(|c| &c.ports)
                                .find(|cp| {
                                    cp.name.as_deref() == Some(wanted.as_str())
                                        && cp.protocol == port.protocol
                                })
                                .map(|cp| cp.container_port),
                        };
                        if let Some(target) = target {
                            endpoints.push(Endpoint {
                                ip: pod.ip,
                                port: target,
                                ready: true,
                                target: pod.name.clone(),
                            });
                        }
                    }
                } else {
                    for object in self
                        .endpoint_objects
                        .values()
                        .filter(|o| o.namespace == *key_ns && o.service == *name)
                    {
                        for subset in &object.subsets {
                            let single = svc.ports.len() == 1 && subset.ports.len() == 1;
                            let matched = subset.ports.iter().find(|ep| {
                                ep.protocol == port.protocol
                                    && (ep.name == port.name || (single && port.name.is_none()))
                            });
                            let Some(ep_port) = matched else { continue };
                            for a in &subset.addresses {
                                endpoints.push(Endpoint {
                                    ip: a.ip,
                                    port: ep_port.port,
                                    ready: a.ready,
                                    target: a.target.clone().unwrap_or_else(|| a.ip.to_string()),
                                });
                            }
                        }
                    }
                }
                endpoints.sort_by(|a, b| (a.ip, a.port, &a.target).cmp(&(b.ip, b.port, &b.target)));
                endpoints.dedup();
                out.push(ServiceEndpoints {
                    namespace: key_ns.clone(),
                    service: name.clone(),
                    port_name: port.name.clone(),
                    protocol: port.protocol,
                    port: port.port,
                    endpoints,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::manifest::parse_object_refs;
    use super::super::{parse_manifests, seed_lab, HELLO_KUBERNETES};
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn apply(
        store: &mut Store,
        text: &str,
        ns: Option<&str>,
    ) -> Result<Vec<ApplyOutcome>, ApplyError> {
        store.apply(parse_manifests(text, ns, None)?, NOW)
    }

    fn seeded() -> Store {
        let mut store = Store::new("esx-05a");
        store.apply(seed_lab().unwrap(), NOW).unwrap();
        store
    }

    #[test]
    fn the_supervisor_namespace_holds_no_tkg_cluster() {
        let tkc = "apiVersion: run.tanzu.vmware.com/v1alpha1\nkind: TanzuKubernetesCluster\nmetadata: {name: tkc-qa}\nspec: {topology: {controlPlane: {count: 1}, workers: {count: 1}}}\n";
        let mut store = seeded();
        let e = apply(&mut store, tkc, Some("supervisor")).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (ErrorCode::Invalid, "metadata.namespace")
        );
        assert!(e.message.contains("not a vSphere Namespace"), "{e}");
        assert!(store
            .state()
            .tkg_clusters
            .keys()
            .all(|(_, c)| c != "tkc-qa"));

        // A lab without a supervisor namespace: one holding a TKG cluster cannot become it.
        let mut store = Store::new("esx-05a");
        let ns = |sup: &str| {
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n  annotations: {{pacific.dev/supervisor: \"{sup}\"}}\n")
        };
        apply(
            &mut store,
            &format!("{}---\n{tkc}", ns("false")),
            Some("team"),
        )
        .unwrap();
        let e = apply(&mut store, &ns("true"), None).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (
                ErrorCode::Conflict,
                "metadata.annotations[pacific.dev/supervisor]"
            )
        );
        assert!(e.message.contains("tkc-qa"), "{e}");
        assert!(!store.state().namespaces["team"].supervisor);
    }

    /// The pods of a deployment, in replica order.
    fn replicas<'a>(st: &'a State, ns: &'a str, deployment: &str) -> Vec<&'a Pod> {
        let template = st
            .deployments
            .get(&(ns.to_string(), deployment.to_string()))
            .map_or_else(String::new, |d| d.pod_template());
        let names = ipam::replica_names(ns, deployment, &template, 100);
        let mut pods: Vec<&Pod> = st
            .pods_in(ns)
            .filter(|p| p.owner.as_deref() == Some(deployment))
            .collect();
        pods.sort_by_key(|p| names.iter().position(|n| *n == p.name));
        pods
    }

    fn endpoint_ips(st: &State, key_ns: &str, service: &str) -> Vec<(Ipv4Addr, u16)> {
        st.endpoints_of(key_ns, service)
            .flat_map(|e| e.endpoints.iter().map(|x| (x.ip, x.port)))
            .collect()
    }

    #[test]
    fn seed_lab_gives_the_seed_addresses() {
        let store = seeded();
        let st = store.state();
        assert_eq!(st.generation, 1);
        let dev = &st.namespaces["ns-dev"];
        assert_eq!(dev.segment.subnet.to_string(), "172.211.0.16/28");
        assert_eq!(dev.segment.gateway, ip("172.211.0.17"));
        assert_eq!(dev.segment.name, "seg-ns-dev");
        assert_eq!(dev.egress_ip, ip("172.60.96.2"));
        let wordpress = replicas(st, "ns-dev", "wordpress");
        assert_eq!(wordpress.len(), 1);
        assert_eq!(wordpress[0].ip, ip("172.211.0.18"));
        assert_eq!(wordpress[0].mac.to_string(), "02:ac:ac:d3:00:12");
        assert_eq!(wordpress[0].node, "esx-05a");
        assert!(wordpress[0].name.starts_with("wordpress-"));
        assert_eq!(
            replicas(st, "ns-dev", "wordpress-mysql")[0].ip,
            ip("172.211.0.19")
        );
        assert_eq!(st.pod("ns-dev", "testbox").unwrap().ip, ip("172.211.0.20"));

        let prod = &st.namespaces["ns-prod"];
        assert_eq!(prod.segment.gateway, ip("172.211.0.129"));
        assert_eq!(
            replicas(st, "ns-prod", "nginx-local")[0].ip,
            ip("172.211.0.130")
        );
        assert_eq!(
            st.pod("ns-prod", "testbox").unwrap().ip,
            ip("172.211.0.132")
        );

        let sup = st.supervisor().unwrap();
        assert_eq!(
            (sup.name.as_str(), sup.segment.gateway),
            ("supervisor", ip("172.211.0.1"))
        );
        let vms: Vec<(&str, Ipv4Addr)> = st
            .pods_in("supervisor")
            .map(|p| (p.name.as_str(), p.ip))
            .collect();
        assert_eq!(
            vms,
            [
                ("42326254b49605f5fca490fd3ad3229e", ip("172.211.0.3")),
                ("4232d828e38d98c395daeed9950c8dbc", ip("172.211.0.4")),
                ("4232e0c5ff1dcdaa3f535e4099456c2b", ip("172.211.0.2")),
            ]
        );
        // Egress SNAT addresses continue in the seed's 172.60.96.x around the pinned one.
        assert_eq!(sup.egress_ip, ip("172.60.96.1"));
        assert_eq!(prod.egress_ip, ip("172.60.96.3"));

        let wp = st.service("ns-dev", "wordpress").unwrap();
        assert_eq!(
            (wp.cluster_ip, wp.load_balancer_ip),
            (Some(ip("172.96.1.90")), Some(ip("172.80.88.5")))
        );
        assert_eq!(wp.ports[0].node_port, Some(32665));
        assert_eq!(
            endpoint_ips(st, "ns-dev", "wordpress"),
            [(ip("172.211.0.18"), 80)]
        );
        let mysql = st.service("ns-dev", "wordpress-mysql").unwrap();
        assert_eq!(mysql.cluster_ip, None);
        assert_eq!(
            endpoint_ips(st, "ns-dev", "wordpress-mysql"),
            [(ip("172.211.0.19"), 3306)]
        );

        let tkc = &st.tkg_clusters[&("ns-dev".to_string(), "tkg-cluster-01".to_string())];
        assert_eq!(tkc.segment.subnet.to_string(), "172.211.0.64/28");
        let nodes: Vec<(Option<TkgNodeRole>, Ipv4Addr)> = st
            .tkg_nodes("ns-dev", "tkg-cluster-01")
            .map(|p| (p.tkg_node, p.ip))
            .collect();
        assert_eq!(nodes.len(), 3);
        assert!(nodes.contains(&(Some(TkgNodeRole::ControlPlane), ip("172.211.0.71"))));
        assert!(nodes.contains(&(Some(TkgNodeRole::Worker), ip("172.211.0.66"))));
        assert!(nodes.contains(&(Some(TkgNodeRole::Worker), ip("172.211.0.67"))));
        let cp = st
            .service("ns-dev", "tkg-cluster-01-control-plane-service")
            .unwrap();
        assert_eq!(
            (cp.cluster_ip, cp.load_balancer_ip),
            (Some(ip("172.96.0.165")), Some(ip("172.80.88.3")))
        );
        assert_eq!(
            (cp.ports[0].port, cp.ports[0].node_port),
            (6443, Some(30862))
        );
        assert_eq!(
            endpoint_ips(st, "ns-dev", "tkg-cluster-01-control-plane-service"),
            [(ip("172.211.0.71"), 6443)]
        );

        assert_eq!(st.outside_hosts["hop"].addr, ip("198.51.100.10"));
        assert_eq!(st.outside_hosts["internet"].http_ports, [80]);
        assert_eq!(st.uplink, Uplink::default());
        // JSON for the control socket.
        let json = serde_json::to_value(st).unwrap();
        assert_eq!(
            json["namespaces"]["ns-dev"]["segment"]["subnet"],
            "172.211.0.16/28"
        );
        assert!(json["pods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["ip"] == "172.211.0.20" && p["mac"] == "02:ac:ac:d3:00:14"));
    }

    #[test]
    fn seed_lab_is_idempotent() {
        let mut store = seeded();
        let before = store.state().clone();
        let outcomes = store.apply(seed_lab().unwrap(), NOW + 60).unwrap();
        assert!(
            outcomes.iter().all(|o| o.action == "unchanged"),
            "{outcomes:?}"
        );
        assert_eq!(store.state(), &before);
    }

    #[test]
    fn outcomes_read_like_kubectl_in_document_order() {
        let mut store = Store::new("h");
        let outcomes = store.apply(seed_lab().unwrap(), NOW).unwrap();
        let lines: Vec<String> = outcomes.iter().map(ToString::to_string).collect();
        assert_eq!(lines[0], "pools.pacific.dev/default configured");
        assert_eq!(lines[4], "namespace/supervisor created");
        assert!(lines.contains(&"deployment.apps/wordpress created".to_string()));
        assert!(lines.contains(&"service/wordpress created".to_string()));
        assert!(lines.contains(
            &"tanzukubernetescluster.run.tanzu.vmware.com/tkg-cluster-01 created".to_string()
        ));
        assert_eq!(lines.len(), seed_lab().unwrap().len());
    }

    #[test]
    fn hello_kubernetes_inside_the_tkg_cluster() {
        let mut store = seeded();
        let ms = parse_manifests(HELLO_KUBERNETES, Some("ns-dev"), Some("tkg-cluster-01")).unwrap();
        let outcomes = store.apply(ms, NOW).unwrap();
        assert_eq!(
            outcomes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "service/hello-kubernetes created",
                "deployment.apps/hello-kubernetes created"
            ]
        );
        let st = store.state();
        let workloads: Vec<&ClusterWorkload> =
            st.workloads_in("ns-dev", "tkg-cluster-01").collect();
        assert_eq!(workloads.len(), 3);
        let workers: Vec<&Pod> = st
            .tkg_nodes("ns-dev", "tkg-cluster-01")
            .filter(|p| p.tkg_node == Some(TkgNodeRole::Worker))
            .collect();
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for w in &workloads {
            *per_node.entry(w.node.as_str()).or_default() += 1;
            assert_eq!(
                w.containers[0].env["MESSAGE"],
                "I just deployed a PodVM on the Tanzu Kubernetes Cluster!!"
            );
        }
        assert_eq!(per_node.len(), 2);
        assert!(workers
            .iter()
            .all(|w| per_node.contains_key(w.name.as_str())));
        assert_eq!(
            per_node.values().copied().collect::<BTreeSet<usize>>(),
            BTreeSet::from([1, 2])
        );
        // No pods on NSX segments for it.
        assert!(st
            .pods_in("ns-dev")
            .all(|p| p.owner.as_deref() != Some("hello-kubernetes")));

        let svc = st
            .service("ns-dev/tkg-cluster-01", "hello-kubernetes")
            .unwrap();
        assert_eq!(svc.cluster.as_deref(), Some("tkg-cluster-01"));
        // The seed's VIP: allocation continues at 172.80.88.7.
        assert_eq!(svc.load_balancer_ip, Some(ip("172.80.88.7")));
        // Its ClusterIP is the guest's own, outside the supervisor pools, and past the T0-T1
        // transit links (100.64.0.1 was also the ns-dev T1's address).
        assert!(ipam::guest_service_cidr().contains(svc.cluster_ip.unwrap()));
        assert_eq!(svc.cluster_ip, Some(ip("100.65.0.1")));
        let node_port = svc.ports[0].node_port.unwrap();
        assert!(ipam::NODE_PORT_RANGE.contains(&node_port));
        let mut expected: Vec<(Ipv4Addr, u16)> =
            workers.iter().map(|w| (w.ip, node_port)).collect();
        expected.sort();
        assert_eq!(
            endpoint_ips(st, "ns-dev/tkg-cluster-01", "hello-kubernetes"),
            expected
        );
        assert_eq!(
            expected,
            [
                (ip("172.211.0.66"), node_port),
                (ip("172.211.0.67"), node_port)
            ]
        );
    }

    #[test]
    fn tkg_services_reach_every_worker_node_while_a_replica_runs() {
        let mut store = seeded();
        let members =
            |st: &State| endpoint_ips(st, "ns-dev/tkg-cluster-01", "hello-kubernetes").len();
        let one = HELLO_KUBERNETES.replace("replicas: 3", "replicas: 1");
        store
            .apply(
                parse_manifests(&one, Some("ns-dev"), Some("tkg-cluster-01")).unwrap(),
                NOW,
            )
            .unwrap();
        // One replica, two workers: both are members (the other relays, kube-proxy's Cluster).
        assert_eq!(members(store.state()), 2);
        // Scaling the cluster's workers spreads nothing new (1 replica); the new worker joins.
        let tkc = crate_tkc(3);
        apply(&mut store, &tkc, None).unwrap();
        let st = store.state();
        assert_eq!(st.tkg_nodes("ns-dev", "tkg-cluster-01").count(), 4);
        assert_eq!(members(st), 3);
        // No replica: no node could answer, so there is no member.
        let none = HELLO_KUBERNETES.replace("replicas: 3", "replicas: 0");
        store
            .apply(
                parse_manifests(&none, Some("ns-dev"), Some("tkg-cluster-01")).unwrap(),
                NOW,
            )
            .unwrap();
        assert_eq!(members(store.state()), 0);
        // Workers to zero while a replica runs there: refused.
        store
            .apply(
                parse_manifests(&one, Some("ns-dev"), Some("tkg-cluster-01")).unwrap(),
                NOW,
            )
            .unwrap();
        let e = apply(&mut store, &crate_tkc(0), None).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
    }

    fn crate_tkc(workers: u32) -> String {
        let seed = seed_lab().unwrap();
        let tkc = seed
            .iter()
            .find(|m| m.kind() == Kind::TanzuKubernetesCluster)
            .unwrap();
        let Manifest::TanzuKubernetesCluster(r) = tkc else {
            unreachable!()
        };
        let ann: String = r
            .meta
            .annotations
            .iter()
            .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
            .collect();
        format!(
            "apiVersion: run.tanzu.vmware.com/v1alpha1\nkind: TanzuKubernetesCluster\nmetadata:\n  name: tkg-cluster-01\n  namespace: ns-dev\n  annotations:\n{ann}spec:\n  topology:\n    controlPlane: {{count: 1}}\n    workers: {{count: {workers}}}\n"
        )
    }

    #[test]
    fn endpoints_follow_a_deployment_scaled_down() {
        let mut store = seeded();
        let web = |n: u32| {
            format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: ns-prod}}\nspec:\n  replicas: {n}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: c, ports: [{{containerPort: 8080}}]}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: ns-prod}}\nspec: {{ports: [{{port: 80, targetPort: 8080}}], selector: {{app: web}}}}\n")
        };
        apply(&mut store, &web(3), None).unwrap();
        let st = store.state();
        let pods = replicas(st, "ns-prod", "web");
        // .130 is nginx-local, .132 the pinned testbox: the replicas fill around them.
        assert_eq!(
            pods.iter().map(|p| p.ip).collect::<Vec<_>>(),
            [
                ip("172.211.0.131"),
                ip("172.211.0.133"),
                ip("172.211.0.134")
            ]
        );
        assert_eq!(endpoint_ips(st, "ns-prod", "web").len(), 3);
        let generation = st.generation;

        let outcomes = apply(&mut store, &web(2), None).unwrap();
        assert_eq!(outcomes[0].to_string(), "deployment.apps/web configured");
        assert_eq!(outcomes[1].to_string(), "service/web unchanged");
        let st = store.state();
        assert_eq!(st.generation, generation + 1);
        // The highest replica went; the others kept their addresses.
        assert_eq!(
            endpoint_ips(st, "ns-prod", "web"),
            [(ip("172.211.0.131"), 8080), (ip("172.211.0.133"), 8080)]
        );
        assert_eq!(replicas(st, "ns-prod", "web").len(), 2);
        // Deleting a replica by hand is refused: the deployment owns it.
        let name = replicas(st, "ns-prod", "web")[0].name.clone();
        let r = ObjectRef {
            kind: Kind::Pod,
            namespace: Some("ns-prod".into()),
            cluster: None,
            name,
            document: None,
        };
        assert_eq!(
            store.delete_refs(vec![r], NOW).unwrap_err().code,
            ErrorCode::Conflict
        );
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let mut store = seeded();
        let text = r#"apiVersion: v1
kind: Pod
metadata: {name: a, namespace: ns-prod, labels: {app: mixed}}
spec: {containers: [{name: c, ports: [{name: web, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: ns-prod, labels: {app: mixed}}
spec: {containers: [{name: c, ports: [{name: web, containerPort: 9090}, {name: dns, containerPort: 53, protocol: UDP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: ns-prod, labels: {app: mixed}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Service
metadata: {name: mixed, namespace: ns-prod}
spec:
  selector: {app: mixed}
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: dns, port: 53, targetPort: dns, protocol: UDP}
"#;
        apply(&mut store, text, None).unwrap();
        let st = store.state();
        let ip_of = |n: &str| st.pod("ns-prod", n).unwrap().ip;
        let eps: Vec<&ServiceEndpoints> = st.endpoints_of("ns-prod", "mixed").collect();
        assert_eq!(eps.len(), 2);
        let http: Vec<(Ipv4Addr, u16, &str)> = eps[0]
            .endpoints
            .iter()
            .map(|e| (e.ip, e.port, e.target.as_str()))
            .collect();
        assert_eq!(http, [(ip_of("a"), 8080, "a"), (ip_of("b"), 9090, "b")]);
        let dns: Vec<(Ipv4Addr, u16)> = eps[1].endpoints.iter().map(|e| (e.ip, e.port)).collect();
        assert_eq!(
            (eps[1].protocol, dns),
            (Protocol::Udp, vec![(ip_of("b"), 53)])
        );
    }

    #[test]
    fn a_request_with_a_bad_last_document_changes_nothing() {
        let mut store = seeded();
        let before = store.state().clone();
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns-qa}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: ok, namespace: ns-qa}\nspec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: clash\n  namespace: ns-dev\n  annotations: {pacific.dev/ip: 172.211.0.18}\nspec: {containers: [{name: c}]}\n";
        let e = apply(&mut store, text, None).unwrap_err();
        assert_eq!(
            (e.code, e.document, e.field.as_str()),
            (
                ErrorCode::Conflict,
                Some(3),
                "metadata.annotations[pacific.dev/ip]"
            )
        );
        assert!(
            e.message
                .starts_with("172.211.0.18 is in use by pod ns-dev/wordpress-"),
            "{e}"
        );
        assert!(
            e.to_string().starts_with(
                "document 3 (Pod clash): metadata.annotations[pacific.dev/ip]: 172.211.0.18"
            ),
            "{e}"
        );
        assert_eq!(store.state(), &before);
        // A parse error in the last document stops the request before the store sees it.
        let bad = text.replace("172.211.0.18", "172.211.0.300");
        assert_eq!(
            apply(&mut store, &bad, None).unwrap_err().code,
            ErrorCode::Invalid
        );
        assert_eq!(store.state().generation, before.generation);
    }

    #[test]
    fn reapplying_keeps_allocations_and_reports_unchanged_or_configured() {
        let mut store = seeded();
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: tool, namespace: ns-dev, labels: {v: \"1\"}}\nspec: {containers: [{name: c}]}\n";
        assert_eq!(apply(&mut store, pod, None).unwrap()[0].action, "created");
        let first = store.state().pod("ns-dev", "tool").unwrap().clone();
        assert_eq!(first.ip, ip("172.211.0.21"));
        let generation = store.state().generation;
        assert_eq!(
            store
                .apply(parse_manifests(pod, None, None).unwrap(), NOW + 5)
                .unwrap()[0]
                .action,
            "unchanged"
        );
        assert_eq!(store.state().generation, generation);
        let changed = pod.replace("v: \"1\"", "v: \"2\"");
        assert_eq!(
            store
                .apply(parse_manifests(&changed, None, None).unwrap(), NOW + 9)
                .unwrap()[0]
                .action,
            "configured"
        );
        let second = store.state().pod("ns-dev", "tool").unwrap();
        assert_eq!(
            (second.ip, second.created, second.labels["v"].as_str()),
            (first.ip, first.created, "2")
        );
        assert_eq!(store.state().generation, generation + 1);
        // Services keep their ClusterIP, VIP and nodePorts across a change.
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: lb, namespace: ns-prod}\nspec: {type: LoadBalancer, ports: [{port: 80}], selector: {app: nginx-local}}\n";
        apply(&mut store, svc, None).unwrap();
        let a = store.state().service("ns-prod", "lb").unwrap().clone();
        assert_eq!(
            (a.cluster_ip, a.load_balancer_ip, a.ports[0].node_port),
            (Some(ip("172.96.0.1")), Some(ip("172.80.88.7")), Some(30000))
        );
        apply(
            &mut store,
            &svc.replace(
                "ports: [{port: 80}]",
                "ports: [{port: 80}], externalTrafficPolicy: Local",
            ),
            None,
        )
        .unwrap();
        let b = store.state().service("ns-prod", "lb").unwrap();
        assert_eq!(
            (b.cluster_ip, b.load_balancer_ip, b.ports[0].node_port),
            (a.cluster_ip, a.load_balancer_ip, a.ports[0].node_port)
        );
        assert!(b.external_traffic_local);
        assert_eq!(
            endpoint_ips(store.state(), "ns-prod", "lb"),
            [(ip("172.211.0.130"), 80)]
        );
    }

    #[test]
    fn address_conflicts_and_pool_checks() {
        let mut store = seeded();
        let svc = |spec: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns-prod}}\nspec: {spec}\n")
        };
        let e = apply(
            &mut store,
            &svc("{type: LoadBalancer, loadBalancerIP: 10.1.1.1, ports: [{port: 80}]}"),
            None,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (ErrorCode::Invalid, "spec.loadBalancerIP")
        );
        assert!(
            e.message.contains("outside the ingress pool 172.80.0.0/16"),
            "{e}"
        );
        let e = apply(
            &mut store,
            &svc("{type: LoadBalancer, loadBalancerIP: 172.80.88.5, ports: [{port: 80}]}"),
            None,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ErrorCode::Conflict,
                "172.80.88.5 is in use by service ns-dev/wordpress"
            )
        );
        // Inside a List, the item at fault is named by its place, as a parse error names it.
        let list = "apiVersion: v1\nkind: List\nitems:\n\
            - {apiVersion: v1, kind: Namespace, metadata: {name: listed}}\n\
            - {apiVersion: v1, kind: Service, metadata: {name: a, namespace: listed}, \
               spec: {type: LoadBalancer, loadBalancerIP: 172.80.88.5, ports: [{port: 80}]}}\n";
        let e = apply(&mut store, list, None).unwrap_err();
        assert_eq!(
            (e.code, e.document, e.field.as_str()),
            (ErrorCode::Conflict, Some(1), "items[1].spec.loadBalancerIP"),
            "{e}"
        );
        let e = apply(
            &mut store,
            &svc("{clusterIP: 172.80.1.1, ports: [{port: 80}]}"),
            None,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (ErrorCode::Invalid, "spec.clusterIP")
        );
        assert!(
            e.message.contains("outside the service pool 172.96.0.0/16"),
            "{e}"
        );
        let e = apply(
            &mut store,
            &svc("{clusterIP: 172.96.0.165, ports: [{port: 80}]}"),
            None,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ErrorCode::Conflict,
                "172.96.0.165 is in use by service ns-dev/tkg-cluster-01-control-plane-service"
            )
        );
        let e = apply(
            &mut store,
            &svc("{type: NodePort, ports: [{port: 80, nodePort: 32665}]}"),
            None,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (ErrorCode::Conflict, "spec.ports[0].nodePort")
        );

        let ns = |name: &str, ann: &str| {
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  annotations: {{{ann}}}\n")
        };
        let e = apply(
            &mut store,
            &ns("ns-qa", "ncp/static_snat_ip: 172.60.96.2"),
            None,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ErrorCode::Conflict,
                "172.60.96.2 is in use by namespace ns-dev"
            )
        );
        let two = format!(
            "{}---\n{}",
            ns("ns-a", "ncp/static_snat_ip: 172.60.9.9"),
            ns("ns-b", "ncp/static_snat_ip: 172.60.9.9")
        );
        let e = apply(&mut store, &two, None).unwrap_err();
        assert_eq!((e.code, e.document), (ErrorCode::Conflict, Some(2)));
        let e = apply(
            &mut store,
            &ns("ns-a", "ncp/static_snat_ip: 172.61.0.1"),
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        let e = apply(
            &mut store,
            &ns("ns-a", "pacific.dev/segment-cidr: 172.211.0.0/27"),
            None,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (
                ErrorCode::Conflict,
                "metadata.annotations[pacific.dev/segment-cidr]"
            )
        );
        assert!(e.message.contains("the segment of namespace"), "{e}");
        let e = apply(
            &mut store,
            &ns("ns-a", "pacific.dev/segment-cidr: 10.0.0.0/28"),
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        // An egress pool's own network address is in the pool but no host's.
        let e = apply(
            &mut store,
            &ns("ns-a", "ncp/static_snat_ip: 172.60.0.0"),
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "172.60.0.0 is the network or broadcast address of the egress pool 172.60.0.0/16",
            "{e}"
        );
        // A prefix length the pool has no room for names the annotation that asked for it.
        let e = apply(
            &mut store,
            &ns("ns-a", "pacific.dev/segment-prefix-length: \"16\""),
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.field, "metadata.annotations[pacific.dev/segment-prefix-length]",
            "{e}"
        );
        let e = apply(
            &mut store,
            &ns("ns-a", "pacific.dev/supervisor: \"true\""),
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);

        let pod = |ann: &str| {
            format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: ns-prod\n  annotations: {{{ann}}}\nspec: {{containers: [{{name: c}}]}}\n")
        };
        for bad in ["172.211.0.129", "172.211.0.143", "172.211.0.18"] {
            let e = apply(&mut store, &pod(&format!("pacific.dev/ip: {bad}")), None).unwrap_err();
            assert_eq!(
                (e.code, e.field.as_str()),
                (ErrorCode::Invalid, "metadata.annotations[pacific.dev/ip]"),
                "{bad}: {e}"
            );
        }
        assert_eq!(store.state().generation, 1);
    }

    #[test]
    fn missing_namespace_or_cluster_is_not_found() {
        let mut store = seeded();
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ns-none}\nspec: {containers: [{name: c}]}\n";
        let e = apply(&mut store, pod, None).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str(), e.document),
            (ErrorCode::NotFound, "metadata.namespace", Some(1))
        );
        // In the same request, the namespace may come later in the file.
        let both =
            format!("{pod}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-none}}\n");
        let outcomes = apply(&mut store, &both, None).unwrap();
        assert_eq!(
            (outcomes[0].action, outcomes[1].to_string().as_str()),
            ("created", "namespace/ns-none created")
        );
        // The new namespace took the first free /28 (the seed's pins are at .0, .16, .64, .128).
        assert_eq!(
            store.state().namespaces["ns-none"]
                .segment
                .subnet
                .to_string(),
            "172.211.0.32/28"
        );
        let ms =
            parse_manifests(HELLO_KUBERNETES, Some("ns-prod"), Some("tkg-cluster-01")).unwrap();
        let e = store.apply(ms, NOW).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), (ErrorCode::NotFound, "cluster"));
    }

    #[test]
    fn pins_later_in_a_file_are_not_taken_by_earlier_allocations() {
        let mut store = Store::new("h");
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n  annotations: {pacific.dev/segment-cidr: 172.211.0.0/28}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: x, namespace: b}\nspec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: y\n  namespace: b\n  annotations: {pacific.dev/ip: 172.211.0.2}\nspec: {containers: [{name: c}]}\n";
        apply(&mut store, text, None).unwrap();
        let st = store.state();
        assert_eq!(
            st.namespaces["a"].segment.subnet.to_string(),
            "172.211.0.16/28"
        );
        assert_eq!(st.pod("b", "x").unwrap().ip, ip("172.211.0.3"));
        assert_eq!(st.pod("b", "y").unwrap().ip, ip("172.211.0.2"));
    }

    #[test]
    fn exhaustion_names_the_segment_or_pool() {
        let mut store = seeded();
        let dep = |n: u32| {
            format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: big, namespace: ns-prod}}\nspec:\n  replicas: {n}\n  selector: {{matchLabels: {{app: big}}}}\n  template:\n    metadata: {{labels: {{app: big}}}}\n    spec: {{containers: [{{name: c}}]}}\n")
        };
        // A /28 has 13 pod addresses; nginx-local and testbox hold 2.
        apply(&mut store, &dep(11), None).unwrap();
        let e = apply(&mut store, &dep(12), None).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (ErrorCode::Exhausted, "spec.replicas")
        );
        assert_eq!(
            e.message,
            "segment seg-ns-prod 172.211.0.128/28 has no free address left (a namespace \
             gets a larger one with the annotation pacific.dev/segment-prefix-length, e.g. 24, \
             or pacific.dev/segment-cidr; it is a /28 without them)"
        );
        assert_eq!(replicas(store.state(), "ns-prod", "big").len(), 11);

        let mut store = Store::new("h");
        let pools = "apiVersion: pacific.dev/v1\nkind: Pools\nmetadata: {name: p}\nspec: {pods: 10.1.0.0/27}\n";
        let ns =
            |n: &str| format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}}}\n");
        let e = apply(
            &mut store,
            &format!("{pools}{}{}{}", ns("a"), ns("b"), ns("c")),
            None,
        )
        .unwrap_err();
        assert_eq!((e.code, e.document), (ErrorCode::Exhausted, Some(4)));
        assert_eq!(e.message, "pod pool 10.1.0.0/27 has no free /28 left");
    }

    #[test]
    fn pools_must_not_overlap_or_strand_objects() {
        let mut store = seeded();
        let pools = |spec: &str| {
            format!(
                "apiVersion: pacific.dev/v1\nkind: Pools\nmetadata: {{name: p}}\nspec: {spec}\n"
            )
        };
        let e = apply(&mut store, &pools("{services: 172.211.128.0/17}"), None).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ErrorCode::Invalid,
                "pod pool 172.211.0.0/16 overlaps service pool 172.211.128.0/17"
            )
        );
        let e = apply(&mut store, &pools("{pods: 10.0.0.0/16}"), None).unwrap_err();
        assert_eq!((e.code, e.document), (ErrorCode::Conflict, Some(1)));
        assert!(
            e.message.contains("is outside the pod pool 10.0.0.0/16"),
            "{e}"
        );
        let e = apply(&mut store, &pools("{pods: 100.64.0.0/16}"), None).unwrap_err();
        assert!(
            e.message
                .contains("overlaps the T0-T1 transit range 100.64.0.0/16"),
            "{e}"
        );
        let e = apply(
            &mut store,
            "apiVersion: pacific.dev/v1\nkind: Uplink\nmetadata: {name: u}\nspec: {t0Address: 100.64.200.2, peerAddress: 100.64.200.1, prefixLength: 24}\n",
            None,
        )
        .unwrap_err();
        assert!(e.message.contains("T0-T1 transit range"), "{e}");
        let e = apply(&mut store, &pools("{egress: 198.51.100.0/24}"), None).unwrap_err();
        assert!(e.message.contains("outside host"), "{e}");
        assert_eq!(store.state().generation, 1);
    }

    #[test]
    fn outside_hosts_need_a_subnet_the_router_can_serve() {
        let mut store = seeded();
        let host = |addr: &str| {
            format!(
                "apiVersion: pacific.dev/v1\nkind: OutsideHost\nmetadata: {{name: h}}\nspec: {{address: {addr}}}\n"
            )
        };
        for (addr, says) in [
            ("198.51.100.129/25", "is the upstream router's gateway"),
            (
                "203.0.113.200/24",
                "overlaps the T0 uplink transit 203.0.113.0/24",
            ),
            ("198.51.100.77/32", "a /30 or larger subnet is needed"),
            ("172.1.2.3/8", "overlaps the pod pool 172.211.0.0/16"),
        ] {
            let e = apply(&mut store, &host(addr), None).unwrap_err();
            assert_eq!(e.field, "spec.address", "{addr}: {e}");
            assert!(e.message.contains(says), "{addr}: {e}");
        }
        // A host whose gateway would be another host's address.
        let two = "apiVersion: pacific.dev/v1\nkind: OutsideHost\nmetadata: {name: a}\nspec: {address: 198.51.100.129/24}\n---\napiVersion: pacific.dev/v1\nkind: OutsideHost\nmetadata: {name: b}\nspec: {address: 198.51.100.130/25}\n";
        let e = apply(&mut store, two, None).unwrap_err();
        assert!(e.message.contains("outside host a's address"), "{e}");
        // An Uplink onto the hosts' subnet strands them.
        let uplink = "apiVersion: pacific.dev/v1\nkind: Uplink\nmetadata: {name: u}\nspec: {t0Address: 198.51.100.2, peerAddress: 198.51.100.1, prefixLength: 24}\n";
        let e = apply(&mut store, uplink, None).unwrap_err();
        assert!(e.message.contains("overlaps the T0 uplink transit"), "{e}");
        assert_eq!(store.state().generation, 1);
        apply(&mut store, &host("198.51.100.202/29"), None).unwrap();
    }

    #[test]
    fn selectorless_services_use_endpoints_and_slices() {
        let mut store = seeded();
        let text = r#"apiVersion: v1
kind: Service
metadata: {name: ext, namespace: ns-dev}
spec: {ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: ext, namespace: ns-dev}
subsets:
- addresses: [{ip: 198.51.100.10}]
  notReadyAddresses: [{ip: 198.51.100.11}]
  ports: [{port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-1, namespace: ns-dev, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [198.51.100.100], targetRef: {name: internet}}]
"#;
        apply(&mut store, text, None).unwrap();
        let st = store.state();
        let eps: Vec<(Ipv4Addr, u16, bool, &str)> = st
            .endpoints_of("ns-dev", "ext")
            .flat_map(|e| {
                e.endpoints
                    .iter()
                    .map(|x| (x.ip, x.port, x.ready, x.target.as_str()))
            })
            .collect();
        assert_eq!(
            eps,
            [
                (ip("198.51.100.10"), 8080, true, "198.51.100.10"),
                (ip("198.51.100.11"), 8080, false, "198.51.100.11"),
                (ip("198.51.100.100"), 8080, true, "internet"),
            ]
        );
    }

    /// `delete --ignore-not-found`: what is there goes, what is not is passed over; without it
    /// the missing one fails the request and nothing goes. Other errors still stop it.
    /// `delete svc web web` (or a file given twice) found the second `web` missing and deleted
    /// nothing: an object named twice is deleted once.
    #[test]
    fn an_object_named_twice_is_deleted_once() {
        let mut store = Store::new("vm");
        let yaml = "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: team}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n";
        store
            .apply(parse_manifests(yaml, None, None).unwrap(), 0)
            .unwrap();
        let web = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n";
        let refs = crate::model::manifest::parse_object_refs(
            &format!("{web}---\n{web}"),
            Some("team"),
            None,
        )
        .unwrap();
        let outcomes = store.delete_refs(refs, 0).unwrap();
        let lines: Vec<String> = outcomes.iter().map(ToString::to_string).collect();
        assert_eq!(lines, ["service/web deleted"]);
        assert!(store.state().services.is_empty());
    }

    #[test]
    fn ignore_not_found_deletes_what_is_left() {
        let mut store = seeded();
        let r = |kind: Kind, ns: Option<&str>, name: &str| ObjectRef {
            kind,
            namespace: ns.map(str::to_string),
            cluster: None,
            name: name.into(),
            document: None,
        };
        let refs = || {
            vec![
                r(Kind::Pod, Some("ns-dev"), "ghost"),
                r(Kind::Deployment, Some("ns-dev"), "wordpress"),
            ]
        };
        let e = store.delete_refs(refs(), NOW).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(!replicas(store.state(), "ns-dev", "wordpress").is_empty());
        let out = store.delete_refs_with(refs(), NOW, true).unwrap();
        let out: Vec<String> = out.iter().map(ToString::to_string).collect();
        assert_eq!(out, ["deployment.apps/wordpress deleted"]);
        assert!(replicas(store.state(), "ns-dev", "wordpress").is_empty());
        // Nothing left: nothing deleted, no error.
        assert!(store
            .delete_refs_with(refs(), NOW, true)
            .unwrap()
            .is_empty());
        // A conflict is not a missing object.
        let cp = r(
            Kind::Service,
            Some("ns-dev"),
            "tkg-cluster-01-control-plane-service",
        );
        assert_eq!(
            store
                .delete_refs_with(vec![cp], NOW, true)
                .unwrap_err()
                .code,
            ErrorCode::Conflict
        );
    }

    #[test]
    fn a_cluster_ip_once_set_cannot_change_and_a_headless_service_stays_headless() {
        let mut store = seeded();
        let svc = |spec: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: wordpress-mysql, namespace: ns-dev}}\nspec: {spec}\n")
        };
        let web = |cluster_ip: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: wordpress, namespace: ns-dev}}\nspec: {{type: LoadBalancer, clusterIP: {cluster_ip}, selector: {{app: wordpress}}, ports: [{{port: 80}}]}}\n")
        };
        let generation = store.state().generation;
        let e = apply(&mut store, &web("172.96.1.91"), None).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (ErrorCode::Invalid, "spec.clusterIP"),
            "{e}"
        );
        assert!(e.message.contains("immutable"), "{e}");
        // Headless to an address, and an address to headless, are changes too.
        let e = apply(
            &mut store,
            &svc(
                "{clusterIP: 172.96.1.91, selector: {app: wordpress-mysql}, ports: [{port: 3306}]}",
            ),
            None,
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.clusterIP", "{e}");
        assert_eq!(
            store.state().generation,
            generation,
            "a refused change changed the state"
        );
        // Repeating the address, or leaving it out, keeps it; left out, headless stays headless.
        apply(&mut store, &web("172.96.1.90"), None).unwrap();
        let out = apply(
            &mut store,
            &svc("{selector: {app: wordpress-mysql}, ports: [{port: 3306}]}"),
            None,
        )
        .unwrap();
        assert_eq!(out[0].action, "configured"); // its labels went
        let key = ("ns-dev".to_string(), "wordpress-mysql".to_string());
        assert_eq!(store.state().services[&key].cluster_ip, None);
        let e = apply(
            &mut store,
            &svc("{type: LoadBalancer, selector: {app: wordpress-mysql}, ports: [{port: 3306}]}"),
            None,
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.clusterIP", "{e}");
    }

    /// apps/v1 holds a Deployment's `spec.selector` immutable: a re-apply that changes it is
    /// refused, naming the field, and nothing else of the request is applied (it re-labelled
    /// the pods under the new selector).
    #[test]
    fn a_pod_spec_cannot_change_but_its_image_and_labels_can() {
        let mut store = seeded();
        let pod = |labels: &str, image: &str, ports: &str, extra: &str| {
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: tool, namespace: ns-dev, labels: {{{labels}}}}}\nspec:\n  containers:\n  - {{name: c, image: {image}, ports: [{ports}]}}\n{extra}")
        };
        apply(
            &mut store,
            &pod("app: a", "nginx", "{containerPort: 8080}", ""),
            None,
        )
        .unwrap();
        let before = store.state().clone();
        let refused = [
            (
                pod("app: a", "nginx", "{containerPort: 9090}", ""),
                "spec.containers[0].ports",
            ),
            (
                pod(
                    "app: a",
                    "nginx",
                    "{containerPort: 8080}",
                    "  - {name: side, image: busybox}\n",
                ),
                "spec.containers",
            ),
            (
                pod(
                    "app: a",
                    "nginx",
                    "{containerPort: 8080}",
                    "  nodeName: elsewhere\n",
                ),
                "spec.nodeName",
            ),
        ];
        for (text, field) in refused {
            // With a namespace before it: the whole request is refused, not only the pod.
            let request =
                format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-new}}\n---\n{text}");
            let e = apply(&mut store, &request, None).unwrap_err();
            assert_eq!(
                (e.code, e.field.as_str(), e.document),
                (ErrorCode::Invalid, field, Some(2)),
                "{e}"
            );
            assert!(
                e.message.starts_with("Forbidden: pod updates may not change fields other than `spec.containers[*].image`"),
                "{e}"
            );
            assert_eq!(
                store.state(),
                &before,
                "a refused request changed the state: {e}"
            );
        }
        // The image, labels and annotations may change; the pod keeps its address and age.
        let out = apply(
            &mut store,
            &pod("app: b", "nginx:1.27", "{containerPort: 8080}", ""),
            None,
        )
        .unwrap();
        assert_eq!(out[0].action, "configured");
        let (old, new) = (
            before.pod("ns-dev", "tool").unwrap(),
            store.state().pod("ns-dev", "tool").unwrap(),
        );
        assert_eq!(
            (new.ip, new.created, new.labels["app"].as_str()),
            (old.ip, old.created, "b")
        );
    }

    #[test]
    fn a_template_change_rolls_the_replicas_and_a_replica_count_keeps_them() {
        let mut store = seeded();
        let deploy = |replicas: u32, port: u16| {
            format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: api, namespace: ns-dev}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: api}}}}\n  template:\n    metadata: {{labels: {{app: api}}}}\n    spec: {{containers: [{{name: c, image: nginx, ports: [{{containerPort: {port}}}]}}]}}\n")
        };
        let pods = |store: &Store| -> Vec<(String, Ipv4Addr, u64)> {
            replicas(store.state(), "ns-dev", "api")
                .iter()
                .map(|p| (p.name.clone(), p.ip, p.created))
                .collect()
        };
        apply(&mut store, &deploy(2, 8080), None).unwrap();
        let first = pods(&store);
        // More replicas: the two running ones stay as they are.
        store
            .apply(
                parse_manifests(&deploy(3, 8080), None, None).unwrap(),
                NOW + 5,
            )
            .unwrap();
        let scaled = pods(&store);
        assert_eq!(scaled.len(), 3);
        assert!(
            first.iter().all(|p| scaled.contains(p)),
            "{first:?} -> {scaled:?}"
        );
        // A changed port: new replicas, new names and addresses, none of the old left.
        let out = store
            .apply(
                parse_manifests(&deploy(3, 9090), None, None).unwrap(),
                NOW + 9,
            )
            .unwrap();
        assert_eq!(out[0].action, "configured");
        let rolled = pods(&store);
        assert_eq!(rolled.len(), 3);
        for (name, ip, created) in &rolled {
            assert!(
                scaled.iter().all(|(n, i, _)| n != name && i != ip),
                "{scaled:?} -> {rolled:?}"
            );
            assert_eq!(*created, NOW + 9);
        }
        let hash = |n: &str| n.rsplit_once('-').map(|(h, _)| h.to_string());
        assert_ne!(hash(&rolled[0].0), hash(&scaled[0].0));
        assert!(rolled.iter().all(|p| hash(&p.0) == hash(&rolled[0].0)));
    }

    #[test]
    fn a_guest_template_change_rolls_the_replicas_and_a_replica_count_keeps_them() {
        let mut store = seeded();
        let workloads = |store: &Store| -> Vec<(String, u64, Option<String>)> {
            store
                .state()
                .workloads_in("ns-dev", "tkg-cluster-01")
                .map(|w| {
                    (
                        w.name.clone(),
                        w.created,
                        w.containers[0].env.get("MESSAGE").cloned(),
                    )
                })
                .collect()
        };
        let apply_guest = |store: &mut Store, text: &str, now: u64| {
            let ms = parse_manifests(text, Some("ns-dev"), Some("tkg-cluster-01")).unwrap();
            store.apply(ms, now).unwrap()
        };
        apply_guest(&mut store, HELLO_KUBERNETES, NOW);
        let first = workloads(&store);
        assert_eq!(first.len(), 3);
        // More replicas: the three running ones stay as they are.
        let four = HELLO_KUBERNETES.replace("replicas: 3", "replicas: 4");
        apply_guest(&mut store, &four, NOW + 5);
        let scaled = workloads(&store);
        assert_eq!(scaled.len(), 4);
        assert!(
            first.iter().all(|w| scaled.contains(w)),
            "{first:?} -> {scaled:?}"
        );
        // A changed MESSAGE: new replicas with new names, none of the old left.
        let changed = four.replace("I just deployed", "I rolled");
        let out = apply_guest(&mut store, &changed, NOW + 9);
        assert_eq!(
            out[1].to_string(),
            "deployment.apps/hello-kubernetes configured"
        );
        let rolled = workloads(&store);
        assert_eq!(rolled.len(), 4);
        for (name, created, message) in &rolled {
            assert!(
                scaled.iter().all(|(n, _, _)| n != name),
                "{scaled:?} -> {rolled:?}"
            );
            assert_eq!(*created, NOW + 9);
            assert!(message
                .as_deref()
                .is_some_and(|m| m.starts_with("I rolled")));
        }
        let hash = |n: &str| n.rsplit_once('-').map(|(h, _)| h.to_string());
        assert_ne!(hash(&rolled[0].0), hash(&scaled[0].0));
        assert!(rolled.iter().all(|w| hash(&w.0) == hash(&rolled[0].0)));
    }

    #[test]
    fn a_deployment_selector_cannot_change() {
        let mut store = seeded();
        let deploy = |app: &str, replicas: u32| {
            format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: api, namespace: ns-dev}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {app}}}}}\n  template:\n    metadata: {{labels: {{app: {app}}}}}\n    spec: {{containers: [{{name: c, image: nginx}}]}}\n")
        };
        apply(&mut store, &deploy("api", 1), None).unwrap();
        let generation = store.state().generation;
        let pods = store.state().pods.clone();
        let request = format!(
            "{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: tool, namespace: ns-dev}}\nspec: {{containers: [{{name: c, image: busybox}}]}}\n",
            deploy("api-v2", 2)
        );
        let e = apply(&mut store, &request, None).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str(), e.document),
            (ErrorCode::Invalid, "spec.selector", Some(1)),
            "{e}"
        );
        assert!(e.message.starts_with("field is immutable"), "{e}");
        assert!(
            e.message.contains(r#"{"matchLabels":{"app":"api-v2"}}"#),
            "{e}"
        );
        assert_eq!(store.state().generation, generation, "{e}");
        assert_eq!(store.state().pods, pods, "a refused request changed pods");
        // The same selector with other changes is a change like any other.
        let out = apply(&mut store, &deploy("api", 2), None).unwrap();
        assert_eq!(out[0].action, "configured");
    }

    #[test]
    fn deleting_pools_that_placed_a_segment_names_the_pools_document() {
        let mut store = Store::new("esx-05a");
        let lab = "apiVersion: pacific.dev/v1\nkind: Pools\nmetadata: {name: default}\nspec: {pods: 10.244.0.0/20, services: 10.100.0.0/24, ingress: 10.200.0.0/26, egress: 10.201.0.0/28}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: apps2}\n";
        apply(&mut store, lab, None).unwrap();
        let generation = store.state().generation;
        let pools = "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps2}\n---\napiVersion: pacific.dev/v1\nkind: Pools\nmetadata: {name: default}\n";
        let e = store
            .delete_refs(parse_object_refs(pools, None, None).unwrap(), NOW)
            .unwrap_err();
        assert_eq!(
            (e.document, e.kind.as_deref(), e.name.as_deref()),
            (Some(2), Some("Pools"), Some("default")),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "document 2 (Pools default): deleting it restores the default pools, and then \
             segment seg-apps 10.244.0.0/28 is outside the pod pool 172.211.0.0/16"
        );
        assert_eq!(store.state().generation, generation);
    }

    #[test]
    fn deletes_cascade_and_unknown_objects_are_not_found() {
        let mut store = seeded();
        let generation = store.state().generation;
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: ghost, namespace: ns-dev}\nspec: {containers: [{name: c}]}\n";
        let e = store
            .delete(parse_manifests(pod, None, None).unwrap(), NOW)
            .unwrap_err();
        assert_eq!((e.code, e.document), (ErrorCode::NotFound, Some(1)));
        assert_eq!(store.state().generation, generation);

        // A deployment takes its pods along, and endpoints follow.
        let dep = ObjectRef {
            kind: Kind::Deployment,
            namespace: Some("ns-dev".into()),
            cluster: None,
            name: "wordpress".into(),
            document: None,
        };
        let out = store.delete_refs(vec![dep], NOW).unwrap();
        assert_eq!(out[0].to_string(), "deployment.apps/wordpress deleted");
        assert!(replicas(store.state(), "ns-dev", "wordpress").is_empty());
        assert!(endpoint_ips(store.state(), "ns-dev", "wordpress").is_empty());

        // The TKG control-plane service belongs to its cluster.
        let cp = ObjectRef {
            kind: Kind::Service,
            namespace: Some("ns-dev".into()),
            cluster: None,
            name: "tkg-cluster-01-control-plane-service".into(),
            document: None,
        };
        assert_eq!(
            store.delete_refs(vec![cp], NOW).unwrap_err().code,
            ErrorCode::Conflict
        );

        // A namespace takes everything in it: pods, services, the TKG cluster and its nodes.
        let ns = ObjectRef {
            kind: Kind::Namespace,
            namespace: None,
            cluster: None,
            name: "ns-dev".into(),
            document: None,
        };
        store.delete_refs(vec![ns], NOW).unwrap();
        let st = store.state();
        assert!(st.pods_in("ns-dev").next().is_none());
        assert!(st.services.keys().all(|(k, _)| !k.starts_with("ns-dev")));
        assert!(st.tkg_clusters.is_empty());
        assert!(st
            .endpoints
            .iter()
            .all(|e| !e.namespace.starts_with("ns-dev")));
        assert!(st.namespaces.contains_key("ns-prod"));
        // Its addresses are free again.
        let again = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-new\n  annotations: {pacific.dev/segment-cidr: 172.211.0.16/28, ncp/static_snat_ip: 172.60.96.2}\n";
        apply(&mut store, again, None).unwrap();
    }

    #[test]
    fn the_whole_seed_lab_deletes_as_it_applied() {
        let mut store = seeded();
        let out = store.delete(seed_lab().unwrap(), NOW).unwrap();
        assert!(out.iter().all(|o| o.action == "deleted"));
        let st = store.state();
        assert!(
            st.namespaces.is_empty()
                && st.pods.is_empty()
                && st.services.is_empty()
                && st.outside_hosts.is_empty()
        );
        assert_eq!(st.pools, Pools::default());
        assert_eq!(st.generation, 2);
    }

    #[test]
    fn cluster_pods_and_deployments_live_in_the_cluster() {
        let mut store = seeded();
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: debug, labels: {app: hello-kubernetes}}\nspec: {containers: [{name: c, ports: [{containerPort: 8080}]}]}\n";
        store
            .apply(
                parse_manifests(pod, Some("ns-dev"), Some("tkg-cluster-01")).unwrap(),
                NOW,
            )
            .unwrap();
        let st = store.state();
        let w = &st.cluster_workloads[&("ns-dev/tkg-cluster-01".to_string(), "debug".to_string())];
        assert!(w.node.starts_with("tkg-cluster-01-workers-"));
        assert!(st.pod("ns-dev", "debug").is_none());
        // Deleting the cluster takes its workloads and services along.
        let tkc = ObjectRef {
            kind: Kind::TanzuKubernetesCluster,
            namespace: Some("ns-dev".into()),
            cluster: None,
            name: "tkg-cluster-01".into(),
            document: None,
        };
        store.delete_refs(vec![tkc], NOW).unwrap();
        let st = store.state();
        assert!(st.cluster_workloads.is_empty());
        assert!(st
            .service("ns-dev", "tkg-cluster-01-control-plane-service")
            .is_none());
        assert!(st.pods.values().all(|p| p.tkg_cluster.is_none()));
    }

    const NETPOL: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db-only}\nspec: {podSelector: {matchLabels: {app: db}}}\n";

    #[test]
    fn network_policies_apply_all_or_nothing_and_delete() {
        let mut store = seeded();
        let actions = |o: Vec<ApplyOutcome>| o.into_iter().map(|o| o.action).collect::<Vec<_>>();
        assert_eq!(
            actions(apply(&mut store, NETPOL, Some("ns-dev")).unwrap()),
            ["created"]
        );
        assert_eq!(
            actions(apply(&mut store, NETPOL, Some("ns-dev")).unwrap()),
            ["unchanged"]
        );
        let policy = &store.state().network_policies[&("ns-dev".into(), "db-only".into())];
        assert_eq!(policy.ingress, Some(vec![]));
        // A policy in a namespace that is not there fails the whole request.
        let generation = store.state().generation;
        let e = apply(
            &mut store,
            &format!("{NETPOL}---\n{}", NETPOL.replace("db-only", "b")),
            Some("nosuch"),
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (ErrorCode::NotFound, "metadata.namespace")
        );
        assert_eq!(store.state().generation, generation);
        let refs = parse_object_refs(NETPOL, Some("ns-dev"), None).unwrap();
        store.delete_refs(refs.clone(), NOW).unwrap();
        assert!(store.state().network_policies.is_empty());
        let e = store.delete_refs(refs, NOW).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(
            e.message
                .contains("networkpolicy.networking.k8s.io ns-dev/db-only"),
            "{e}"
        );
        // Deleting the namespace deletes its policies.
        apply(&mut store, NETPOL, Some("ns-dev")).unwrap();
        let ns = parse_object_refs(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns-dev}\n",
            None,
            None,
        )
        .unwrap();
        store.delete_refs(ns, NOW).unwrap();
        assert!(store.state().network_policies.is_empty());
    }
}
