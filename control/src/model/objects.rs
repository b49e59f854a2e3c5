//! The desired state: what the operator asked for, after allocation.
//!
//! These are plain values. Nothing here allocates or validates: `manifest` turns text into
//! requests, `ipam` hands out addresses, `store` combines the two into a new `State` and swaps it
//! in whole. Keeping the objects dumb lets `compile` (state -> dataplane tables) and the server
//! read them without caring how they were made, and lets a failed apply be dropped as a clone.
//!
//! Every allocation (segment, pod IP, ClusterIP, VIP, egress IP, nodePort) is stored on the object
//! that holds it, never in a side table: the free sets are recomputed from `State` when needed, so
//! there is no second book to fall out of step with the first.
//!
//! Serialization is for the control socket (`get -o json`): addresses print as strings, maps keyed
//! by `(namespace, name)` print as lists of their values (JSON objects need string keys).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use pacific_dataplane::tables::{Ipv4Net, MacAddr};
use serde::{Serialize, Serializer};

/// Serializes any `Display` value as a string (the dataplane's address types carry no serde).
pub(crate) fn display<T: fmt::Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn displays<T: fmt::Display, S: Serializer>(items: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(items.iter().map(ToString::to_string))
}

fn values<K, V: Serialize, S: Serializer>(map: &BTreeMap<K, V>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(map.values())
}

/// The key namespace of an object that lives inside TKG cluster `cluster` of supervisor namespace
/// `namespace`: `"ns-dev/tkg-cluster-01"`. A `/` never appears in a namespace name, so these keys
/// cannot collide with supervisor namespaces.
pub fn cluster_key(namespace: &str, cluster: &str) -> String {
    format!("{namespace}/{cluster}")
}

/// Splits a key namespace back into (supervisor namespace, TKG cluster).
pub fn split_key(key_namespace: &str) -> (&str, Option<&str>) {
    match key_namespace.split_once('/') {
        Some((ns, cluster)) => (ns, Some(cluster)),
        None => (key_namespace, None),
    }
}

/// The four address pools of the supervisor (SEED-LAB.md, "Address plan").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pools {
    /// Pod and node-VM addresses, carved into one segment per namespace and per TKG cluster.
    #[serde(serialize_with = "display")]
    pub pods: Ipv4Net,
    /// ClusterIPs.
    #[serde(serialize_with = "display")]
    pub services: Ipv4Net,
    /// LoadBalancer VIPs, advertised as /32.
    #[serde(serialize_with = "display")]
    pub ingress: Ipv4Net,
    /// Per-namespace egress SNAT addresses, advertised as /32.
    #[serde(serialize_with = "display")]
    pub egress: Ipv4Net,
    /// Where automatic allocation starts in each address pool (it wraps around to the bottom of
    /// the pool when the top is full). `None`: at offset 1. Pinned addresses may lie anywhere in
    /// the pool. The seed lab uses this to continue where the seed's NSX had got to.
    pub services_start: Option<Ipv4Addr>,
    pub ingress_start: Option<Ipv4Addr>,
    pub egress_start: Option<Ipv4Addr>,
}

impl Pools {
    /// The pools with the names used in messages ("pod pool 172.211.0.0/16 ...").
    pub fn named(&self) -> [(&'static str, Ipv4Net); 4] {
        [
            ("pod", self.pods),
            ("service", self.services),
            ("ingress", self.ingress),
            ("egress", self.egress),
        ]
    }

    /// The name of the pool holding `ip`, if any.
    pub fn pool_of(&self, ip: Ipv4Addr) -> Option<(&'static str, Ipv4Net)> {
        self.named().into_iter().find(|(_, net)| net.contains(ip))
    }
}

impl Default for Pools {
    /// The seed's own pools.
    fn default() -> Pools {
        Pools {
            pods: prefix([172, 211, 0, 0], 16),
            services: prefix([172, 96, 0, 0], 16),
            ingress: prefix([172, 80, 0, 0], 16),
            egress: prefix([172, 60, 0, 0], 16),
            services_start: None,
            ingress_start: None,
            egress_start: None,
        }
    }
}

/// A prefix from constant parts; `len` is at most 32 at every call site, so `new` cannot fail.
fn prefix(addr: [u8; 4], len: u8) -> Ipv4Net {
    let addr = Ipv4Addr::from(addr);
    Ipv4Net::new(addr, len).unwrap_or(Ipv4Net::host(addr))
}

/// The T0 gateway's uplink to the upstream router (RFC 5737 TEST-NET-3 in the lab).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Uplink {
    pub t0_addr: Ipv4Addr,
    /// The upstream router, which peers with T0 and routes VIPs and egress IPs to it.
    pub peer_addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Uplink {
    /// The transit subnet both ends sit on.
    pub fn subnet(&self) -> Ipv4Net {
        Ipv4Net::new(self.t0_addr, self.prefix_len).unwrap_or(Ipv4Net::host(self.t0_addr))
    }
}

impl Default for Uplink {
    fn default() -> Uplink {
        Uplink {
            t0_addr: Ipv4Addr::new(203, 0, 113, 2),
            peer_addr: Ipv4Addr::new(203, 0, 113, 1),
            prefix_len: 24,
        }
    }
}

/// A vSphere Namespace: one T1 gateway, one segment for its pods, one egress SNAT address.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub created: u64,
    /// The supervisor control plane's own namespace (annotation `pacific.dev/supervisor: "true"`):
    /// its pods are the control-plane VMs, which every namespace's DFW allows in.
    pub supervisor: bool,
    pub segment: Segment,
    pub egress_ip: Ipv4Addr,
    pub segment_prefix_len: u8,
}

/// An NSX segment: a subnet behind a T1 whose first usable address is the gateway.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    /// `seg-<namespace>` for a namespace, `seg-<namespace>/<cluster>` for a TKG cluster.
    pub name: String,
    #[serde(serialize_with = "display")]
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// A vSphere Pod (or a VM that the lab runs like one: control-plane VMs, TKG node VMs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    #[serde(serialize_with = "display")]
    pub mac: MacAddr,
    /// The segment's name.
    pub segment: String,
    /// The transport node it runs on (`kubectl get po -owide`'s NODE).
    pub node: String,
    pub containers: Vec<Container>,
    /// The deployment that made it.
    pub owner: Option<String>,
    pub created: u64,
    /// Some for TKG cluster node VMs, which are pods on the cluster's segment.
    pub tkg_node: Option<TkgNodeRole>,
    /// The TKG cluster a node VM belongs to.
    pub tkg_cluster: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Container {
    pub name: String,
    /// Recorded as written; the lab runs Pacific's test server in its place.
    pub image: String,
    pub ports: Vec<ContainerPort>,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TkgNodeRole {
    ControlPlane,
    Worker,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deployment {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub replicas: u32,
    pub selector: BTreeMap<String, String>,
    pub template_labels: BTreeMap<String, String>,
    pub containers: Vec<Container>,
    pub created: u64,
    /// Some(tkg cluster) when applied inside a TKG cluster.
    pub cluster: Option<String>,
}

impl Deployment {
    /// What the pod template holds (its labels and containers), for the replicas' names.
    pub fn pod_template(&self) -> String {
        format!("{:?}/{:?}", self.template_labels, self.containers)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TkgCluster {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub segment: Segment,
    pub control_plane_count: u32,
    /// The worker node pools, in manifest order (v1alpha1's `workers` is one pool, `workers`).
    pub worker_pools: Vec<NodePool>,
    pub created: u64,
}

impl TkgCluster {
    pub fn worker_count(&self) -> u32 {
        self.worker_pools.iter().map(|p| p.replicas).sum()
    }
}

/// A TKG cluster's pool of worker nodes: its nodes are named `<cluster>-<pool>-<hash>-<hash>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodePool {
    pub name: String,
    pub replicas: u32,
}

/// A workload that runs inside a TKG cluster (its pods live on the node VMs, not on NSX
/// segments): the lab runs them as processes in the node namespaces.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterWorkload {
    pub namespace: String,
    pub cluster: String,
    /// Replica pod name.
    pub name: String,
    /// Node pod name.
    pub node: String,
    pub containers: Vec<Container>,
    pub labels: BTreeMap<String, String>,
    pub created: u64,
    /// The deployment that made it.
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ServiceType {
    ClusterIP,
    LoadBalancer,
    NodePort,
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::NodePort => "NodePort",
        })
    }
}

/// How the load balancer picks a backend (annotation `pacific.dev/lb-algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbAlgorithm {
    #[default]
    RoundRobin,
    LeastConnections,
    SourceIpHash,
}

impl LbAlgorithm {
    pub fn as_str(&self) -> &'static str {
        match self {
            LbAlgorithm::RoundRobin => "round-robin",
            LbAlgorithm::LeastConnections => "least-connections",
            LbAlgorithm::SourceIpHash => "source-ip-hash",
        }
    }
}

impl fmt::Display for LbAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// Some when the service lives inside a TKG cluster (its key namespace is then "ns/cluster").
    pub cluster: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub service_type: ServiceType,
    /// None = headless. For a service inside a TKG cluster this is the guest cluster's own
    /// ClusterIP (from `GUEST_SERVICE_CIDR`), which NSX never sees: the compiler must not
    /// program it.
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    pub selector: Option<BTreeMap<String, String>>,
    /// ClientIP affinity timeout in seconds (default 10800).
    pub session_affinity: Option<u32>,
    pub external_traffic_local: bool,
    /// The VIP, allocated from the ingress pool (LoadBalancer only).
    pub load_balancer_ip: Option<Ipv4Addr>,
    /// `loadBalancerSourceRanges`: the clients the VIP admits (empty: any).
    #[serde(serialize_with = "displays")]
    pub load_balancer_source_ranges: Vec<Ipv4Net>,
    pub algorithm: LbAlgorithm,
    pub created: u64,
    /// Some(cluster) for the `<cluster>-control-plane-service` that a TanzuKubernetesCluster
    /// makes (as NCP does); its endpoints are the cluster's control-plane nodes.
    pub tkg_control_plane: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: TargetPort,
    /// Allocated 30000-32767 for LoadBalancer/NodePort, or the one given.
    pub node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Name(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    /// Pod name (node pod name for a TKG service; the address for manual endpoints without
    /// a targetRef).
    pub target: String,
}

/// Resolved backends of one service port (what the dataplane load-balances over).
///
/// - a service in a supervisor namespace: its selected pods' IPs on the resolved targetPort (a
///   named targetPort is resolved per pod through that pod's container ports; pods without the
///   name are skipped);
/// - a service inside a TKG cluster: the cluster's node IPs on the port's nodePort, only nodes
///   that run at least one selected replica (none for a ClusterIP service: it has no nodePort);
/// - a TKG cluster's control-plane service: the control-plane nodes on 6443;
/// - a service without selector: the addresses of its `Endpoints` / `EndpointSlice` objects.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceEndpoints {
    /// The service's key namespace ("ns" or "ns/cluster").
    pub namespace: String,
    pub service: String,
    pub port_name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
    pub endpoints: Vec<Endpoint>,
}

/// Which manifest kind an `EndpointsObject` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum EndpointsKind {
    Endpoints,
    EndpointSlice,
}

/// A `v1 Endpoints` or `discovery.k8s.io/v1 EndpointSlice`, kept as written: the backends of a
/// service without selector.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointsObject {
    pub kind: EndpointsKind,
    pub namespace: String,
    pub name: String,
    /// The service it backs (the Endpoints' own name; a slice's `kubernetes.io/service-name`).
    pub service: String,
    pub labels: BTreeMap<String, String>,
    pub subsets: Vec<EndpointSubset>,
    pub created: u64,
}

/// Addresses that all serve the same ports (an Endpoints subset; a whole EndpointSlice).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointSubset {
    pub addresses: Vec<EndpointAddress>,
    pub ports: Vec<EndpointPort>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointAddress {
    pub ip: Ipv4Addr,
    pub ready: bool,
    pub target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A host outside the supervisor, behind the upstream router (a jump host, "the internet").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutsideHost {
    pub name: String,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub http_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
    pub created: u64,
}

/// A segment and who it belongs to, as `State::segments` lists them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmentRef<'a> {
    pub namespace: &'a str,
    /// Some for a TKG cluster's segment.
    pub cluster: Option<&'a str>,
    pub segment: &'a Segment,
}

/// The whole desired state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct State {
    pub pools: Pools,
    pub uplink: Uplink,
    pub namespaces: BTreeMap<String, Namespace>,
    /// Key (namespace, name).
    #[serde(serialize_with = "values")]
    pub pods: BTreeMap<(String, String), Pod>,
    /// Key (namespace or "ns/cluster", name).
    #[serde(serialize_with = "values")]
    pub deployments: BTreeMap<(String, String), Deployment>,
    /// Key (namespace or "ns/cluster", name).
    #[serde(serialize_with = "values")]
    pub services: BTreeMap<(String, String), Service>,
    /// Key (namespace, name).
    #[serde(serialize_with = "values")]
    pub tkg_clusters: BTreeMap<(String, String), TkgCluster>,
    /// Key ("ns/cluster", name).
    #[serde(serialize_with = "values")]
    pub cluster_workloads: BTreeMap<(String, String), ClusterWorkload>,
    /// Manual endpoints, key (namespace, kind, name).
    #[serde(serialize_with = "values")]
    pub endpoint_objects: BTreeMap<(String, EndpointsKind, String), EndpointsObject>,
    /// Derived, recomputed on every change.
    pub endpoints: Vec<ServiceEndpoints>,
    pub outside_hosts: BTreeMap<String, OutsideHost>,
    /// Key (namespace, name).
    #[serde(serialize_with = "values")]
    pub network_policies: BTreeMap<(String, String), NetworkPolicy>,
    /// +1 per successful change.
    pub generation: u64,
}

impl State {
    /// Every segment: each namespace's, then each TKG cluster's.
    pub fn segments(&self) -> Vec<SegmentRef<'_>> {
        let namespaces = self.namespaces.values().map(|ns| SegmentRef {
            namespace: &ns.name,
            cluster: None,
            segment: &ns.segment,
        });
        let clusters = self.tkg_clusters.values().map(|c| SegmentRef {
            namespace: &c.namespace,
            cluster: Some(&c.name),
            segment: &c.segment,
        });
        namespaces.chain(clusters).collect()
    }

    /// The supervisor control plane's namespace, if one was applied.
    pub fn supervisor(&self) -> Option<&Namespace> {
        self.namespaces.values().find(|ns| ns.supervisor)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&(namespace.to_string(), name.to_string()))
    }

    /// Pods of a namespace (node VMs included), in name order.
    pub fn pods_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.values().filter(move |p| p.namespace == namespace)
    }

    /// A service by key namespace ("ns" or "ns/cluster") and name.
    pub fn service(&self, key_namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .get(&(key_namespace.to_string(), name.to_string()))
    }

    /// The resolved endpoints of every port of one service.
    pub fn endpoints_of<'a>(
        &'a self,
        key_namespace: &'a str,
        service: &'a str,
    ) -> impl Iterator<Item = &'a ServiceEndpoints> + 'a {
        self.endpoints
            .iter()
            .filter(move |e| e.namespace == key_namespace && e.service == service)
    }

    /// The node VMs of a TKG cluster, in name order.
    pub fn tkg_nodes<'a>(
        &'a self,
        namespace: &'a str,
        cluster: &'a str,
    ) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods
            .values()
            .filter(move |p| p.namespace == namespace && p.tkg_cluster.as_deref() == Some(cluster))
    }

    /// The workloads running inside one TKG cluster.
    pub fn workloads_in<'a>(
        &'a self,
        namespace: &'a str,
        cluster: &'a str,
    ) -> impl Iterator<Item = &'a ClusterWorkload> + 'a {
        self.cluster_workloads
            .values()
            .filter(move |w| w.namespace == namespace && w.cluster == cluster)
    }
}

/// True when `labels` carries every key/value of `selector` (Kubernetes equality selection).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The label every namespace carries, as Kubernetes gives it (`namespaceSelector` can name a
/// namespace by it).
pub const LABEL_NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";

/// A Kubernetes label selector: `matchLabels` and `matchExpressions`, all of which must hold.
/// The empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<SelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        selects(&self.match_labels, labels)
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    SelectorOperator::In => value.is_some_and(|v| r.values.contains(v)),
                    SelectorOperator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    SelectorOperator::Exists => value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }

    /// As kubectl's POD-SELECTOR column shows it: `app=db`, `<none>` when it selects all.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                SelectorOperator::In => format!("{} in ({})", r.key, r.values.join(",")),
                SelectorOperator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                SelectorOperator::Exists => r.key.clone(),
                SelectorOperator::DoesNotExist => format!("!{}", r.key),
            });
        }
        if parts.is_empty() {
            "<none>".into()
        } else {
            parts.join(",")
        }
    }
}

/// One peer of a NetworkPolicy rule (`from[i]` / `to[i]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum PolicyPeer {
    /// `podSelector` and/or `namespaceSelector`: pods matching the pod selector (all pods when
    /// absent) in the namespaces matching the namespace selector (the policy's own when absent).
    Pods {
        pod_selector: Option<LabelSelector>,
        namespace_selector: Option<LabelSelector>,
    },
    IpBlock {
        #[serde(serialize_with = "display")]
        cidr: Ipv4Net,
        #[serde(serialize_with = "displays")]
        except: Vec<Ipv4Net>,
    },
    /// An IPv6 `ipBlock` (of a dual-stack policy): no address Pacific carries.
    Ipv6Block { cidr: String },
}

/// One `ports[i]` of a NetworkPolicy rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyPort {
    pub protocol: Protocol,
    /// None: every port of the protocol.
    pub port: Option<TargetPort>,
    /// With a numeric `port`: the last port of the range.
    pub end_port: Option<u16>,
}

/// One `ingress[i]` / `egress[i]`: an empty peer list means every peer, an empty port list every
/// port.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyRule {
    pub peers: Vec<PolicyPeer>,
    pub ports: Vec<PolicyPort>,
}

/// `networking.k8s.io/v1 NetworkPolicy`, realized as DFW rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub pod_selector: LabelSelector,
    /// Some when the policy is of type Ingress: the selected pods are isolated for ingress and
    /// these rules are what it allows (none: nothing).
    pub ingress: Option<Vec<PolicyRule>>,
    /// Likewise for Egress.
    pub egress: Option<Vec<PolicyRule>>,
    pub created: u64,
}
