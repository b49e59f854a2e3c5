//! YAML and JSON manifests to requests.
//!
//! A manifest file is what a kubectl user already has: `v1 Namespace`, `v1 Pod`, `apps/v1
//! Deployment`, `v1 Service`, `v1 Endpoints`, `discovery.k8s.io/v1 EndpointSlice`,
//! `run.tanzu.vmware.com TanzuKubernetesCluster`, plus Pacific's own `pacific.dev/v1` kinds
//! (`OutsideHost`, `Pools`, `Uplink`). They must apply as written, so fields we have no use for
//! (resources, imagePullSecrets, status, ...) are ignored, never rejected; fields we do use are
//! checked as the API server would check them, and every error names the document (1-based), the
//! object and the field path (`spec.ports[0].targetPort`), so the operator can go straight to it.
//!
//! Why walk `serde_yaml_ng::Value` by hand instead of deriving `Deserialize` for each kind: serde
//! errors say "invalid type: string, expected u16" without the path, and Kubernetes objects need
//! context-dependent defaults (targetPort = port, namespace from `-n`) and cross-field checks
//! (selector vs template labels) that derives cannot express. JSON is YAML, so the same walker
//! reads both.
//!
//! The output is a list of *requests* (before allocation): `store` validates them against the
//! current state and allocates.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use pacific_dataplane::tables::Ipv4Net;
use serde::Deserialize;
use serde_yaml_ng::Value;

use super::objects::{
    selects, Container, ContainerPort, EndpointAddress, EndpointPort, EndpointSubset,
    LabelSelector, LbAlgorithm, NodePool, PolicyPeer, PolicyPort, PolicyRule, Pools, Protocol,
    SelectorOperator, SelectorRequirement, ServicePort, ServiceType, TargetPort, Uplink,
};

/// Annotation: pin a namespace's egress SNAT address (NCP's own name for it).
pub const ANN_STATIC_SNAT_IP: &str = "ncp/static_snat_ip";
/// Annotation: pin a namespace's (or TKG cluster's) segment subnet.
pub const ANN_SEGMENT_CIDR: &str = "pacific.dev/segment-cidr";
/// Annotation: the prefix length of an allocated segment (default 28, as in the seed).
pub const ANN_SEGMENT_PREFIX_LEN: &str = "pacific.dev/segment-prefix-length";
/// Annotation: this namespace is the supervisor control plane's.
pub const ANN_SUPERVISOR: &str = "pacific.dev/supervisor";
/// Annotation: pin a pod's IP.
pub const ANN_POD_IP: &str = "pacific.dev/ip";
/// Annotation: the load-balancing algorithm of a service.
pub const ANN_LB_ALGORITHM: &str = "pacific.dev/lb-algorithm";
/// TanzuKubernetesCluster annotations: pin the control-plane node IPs (comma-separated, in node
/// order) and the ClusterIP, VIP and nodePort of the `<cluster>-control-plane-service`.
pub const ANN_CONTROL_PLANE_IPS: &str = "pacific.dev/control-plane-ips";
pub const ANN_CONTROL_PLANE_CLUSTER_IP: &str = "pacific.dev/control-plane-cluster-ip";
pub const ANN_CONTROL_PLANE_VIP: &str = "pacific.dev/control-plane-vip";
pub const ANN_CONTROL_PLANE_NODE_PORT: &str = "pacific.dev/control-plane-node-port";
/// The EndpointSlice label that names its service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Default segment size: the seed's namespaces each got a /28.
pub const DEFAULT_SEGMENT_PREFIX_LEN: u8 = 28;
/// Default ClientIP affinity timeout (Kubernetes' own: 3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
/// The longest ClientIP affinity timeout Kubernetes accepts (a day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86400;
/// Upper bound on replicas and TKG node counts: beyond this a typo, not a lab.
pub const MAX_REPLICAS: u64 = 10_000;

/// The object kinds Pacific knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Deployment,
    Service,
    Endpoints,
    EndpointSlice,
    TanzuKubernetesCluster,
    OutsideHost,
    Pools,
    Uplink,
    NetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Deployment,
        Kind::Service,
        Kind::Endpoints,
        Kind::EndpointSlice,
        Kind::TanzuKubernetesCluster,
        Kind::OutsideHost,
        Kind::Pools,
        Kind::Uplink,
        Kind::NetworkPolicy,
    ];

    /// The `kind:` as written in manifests.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Deployment => "Deployment",
            Kind::Service => "Service",
            Kind::Endpoints => "Endpoints",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::TanzuKubernetesCluster => "TanzuKubernetesCluster",
            Kind::OutsideHost => "OutsideHost",
            Kind::Pools => "Pools",
            Kind::Uplink => "Uplink",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }

    /// The resource name kubectl prints (`deployment.apps/wordpress created`).
    pub fn resource(&self) -> &'static str {
        match self {
            Kind::Namespace => "namespace",
            Kind::Pod => "pod",
            Kind::Deployment => "deployment.apps",
            Kind::Service => "service",
            Kind::Endpoints => "endpoints",
            Kind::EndpointSlice => "endpointslice.discovery.k8s.io",
            Kind::TanzuKubernetesCluster => "tanzukubernetescluster.run.tanzu.vmware.com",
            Kind::OutsideHost => "outsidehost.pacific.dev",
            Kind::Pools => "pools.pacific.dev",
            Kind::Uplink => "uplink.pacific.dev",
            Kind::NetworkPolicy => "networkpolicy.networking.k8s.io",
        }
    }

    /// The resource's plural, as kubectl's errors name it (`services "web" not found`,
    /// `deployments.apps "web" not found`).
    pub fn plural(&self) -> String {
        let resource = self.resource();
        let (word, group) = resource.split_once('.').unwrap_or((resource, ""));
        let plural = match word {
            "endpoints" | "pools" => word.to_string(),
            "networkpolicy" => "networkpolicies".to_string(),
            _ => format!("{word}s"),
        };
        if group.is_empty() {
            plural
        } else {
            format!("{plural}.{group}")
        }
    }

    /// The apiVersions that serve this kind.
    pub fn api_versions(&self) -> &'static [&'static str] {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service | Kind::Endpoints => &["v1"],
            Kind::Deployment => &["apps/v1"],
            Kind::EndpointSlice => &["discovery.k8s.io/v1"],
            Kind::TanzuKubernetesCluster => &[
                "run.tanzu.vmware.com/v1alpha1",
                "run.tanzu.vmware.com/v1alpha2",
                "run.tanzu.vmware.com/v1alpha3",
            ],
            Kind::OutsideHost | Kind::Pools | Kind::Uplink => &["pacific.dev/v1"],
            Kind::NetworkPolicy => &["networking.k8s.io/v1"],
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(&self) -> bool {
        !matches!(
            self,
            Kind::Namespace | Kind::OutsideHost | Kind::Pools | Kind::Uplink
        )
    }

    /// From a `kind:` value, exactly as written.
    pub fn from_kind(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// From what an operator types on a command line: the kind, its plural, kubectl's short
    /// names (`svc`, `po`, `deploy`, `ns`, `ep`, `tkc`), any case.
    pub fn parse(word: &str) -> Option<Kind> {
        let w = word.to_ascii_lowercase();
        let w = w.split('.').next().unwrap_or("");
        Some(match w {
            "namespace" | "namespaces" | "ns" => Kind::Namespace,
            "pod" | "pods" | "po" => Kind::Pod,
            "deployment" | "deployments" | "deploy" => Kind::Deployment,
            "service" | "services" | "svc" => Kind::Service,
            "endpoints" | "ep" => Kind::Endpoints,
            "endpointslice" | "endpointslices" => Kind::EndpointSlice,
            "tanzukubernetescluster" | "tanzukubernetesclusters" | "tkc" => {
                Kind::TanzuKubernetesCluster
            }
            "outsidehost" | "outsidehosts" => Kind::OutsideHost,
            "pools" | "pool" => Kind::Pools,
            "uplink" | "uplinks" => Kind::Uplink,
            "networkpolicy" | "networkpolicies" | "netpol" => Kind::NetworkPolicy,
            _ => return None,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every request carries besides its spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    /// 1-based position in the request's text (0 when built by hand).
    pub document: usize,
    /// Its place in that document: empty, or `items[2]` for an item of a `List`.
    pub item: String,
    pub kind: Kind,
    pub name: String,
    /// The supervisor namespace, for namespaced kinds.
    pub namespace: Option<String>,
    /// The TKG cluster the object is applied inside (Pod, Deployment, Service only).
    pub cluster: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Names one object, for delete and for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub cluster: Option<String>,
    pub name: String,
    pub document: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceRequest {
    pub meta: Meta,
    pub supervisor: bool,
    pub egress_ip: Option<Ipv4Addr>,
    pub segment_cidr: Option<Ipv4Net>,
    pub segment_prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodRequest {
    pub meta: Meta,
    pub containers: Vec<Container>,
    /// `pacific.dev/ip`.
    pub ip: Option<Ipv4Addr>,
    /// `spec.nodeName`.
    pub node: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentRequest {
    pub meta: Meta,
    pub replicas: u32,
    pub selector: BTreeMap<String, String>,
    pub template_labels: BTreeMap<String, String>,
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterIpRequest {
    /// Allocate one (no `spec.clusterIP`, or `""`).
    Auto,
    /// `clusterIP: None`.
    Headless,
    Pinned(Ipv4Addr),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRequest {
    pub meta: Meta,
    pub service_type: ServiceType,
    pub cluster_ip: ClusterIpRequest,
    /// `node_port` is the one given, if any.
    pub ports: Vec<ServicePort>,
    pub selector: Option<BTreeMap<String, String>>,
    pub session_affinity: Option<u32>,
    pub external_traffic_local: bool,
    pub load_balancer_ip: Option<Ipv4Addr>,
    pub load_balancer_source_ranges: Vec<Ipv4Net>,
    pub algorithm: LbAlgorithm,
    /// `spec.allocateLoadBalancerNodePorts: false`: a LoadBalancer gets the nodePorts it
    /// names and no others, as the API server allocates them.
    pub allocate_node_ports: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EndpointsRequest {
    pub meta: Meta,
    /// The service these endpoints back.
    pub service: String,
    pub subsets: Vec<EndpointSubset>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TkgClusterRequest {
    pub meta: Meta,
    pub control_plane_count: u32,
    pub worker_pools: Vec<NodePool>,
    pub segment_cidr: Option<Ipv4Net>,
    pub segment_prefix_len: u8,
    pub control_plane_ips: Vec<Ipv4Addr>,
    pub control_plane_cluster_ip: Option<Ipv4Addr>,
    pub control_plane_vip: Option<Ipv4Addr>,
    pub control_plane_node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutsideHostRequest {
    pub meta: Meta,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub http_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolsRequest {
    pub meta: Meta,
    /// Fields not written take the seed's defaults.
    pub pools: Pools,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkPolicyRequest {
    pub meta: Meta,
    pub pod_selector: LabelSelector,
    pub ingress: Option<Vec<PolicyRule>>,
    pub egress: Option<Vec<PolicyRule>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UplinkRequest {
    pub meta: Meta,
    pub uplink: Uplink,
}

/// One requested object, before allocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    Namespace(NamespaceRequest),
    Pod(PodRequest),
    Deployment(DeploymentRequest),
    Service(ServiceRequest),
    /// From `v1 Endpoints` and `discovery.k8s.io/v1 EndpointSlice` (see `meta.kind`).
    Endpoints(EndpointsRequest),
    TanzuKubernetesCluster(TkgClusterRequest),
    OutsideHost(OutsideHostRequest),
    Pools(PoolsRequest),
    Uplink(UplinkRequest),
    NetworkPolicy(NetworkPolicyRequest),
}

impl Manifest {
    pub fn meta(&self) -> &Meta {
        match self {
            Manifest::Namespace(r) => &r.meta,
            Manifest::Pod(r) => &r.meta,
            Manifest::Deployment(r) => &r.meta,
            Manifest::Service(r) => &r.meta,
            Manifest::Endpoints(r) => &r.meta,
            Manifest::TanzuKubernetesCluster(r) => &r.meta,
            Manifest::OutsideHost(r) => &r.meta,
            Manifest::Pools(r) => &r.meta,
            Manifest::Uplink(r) => &r.meta,
            Manifest::NetworkPolicy(r) => &r.meta,
        }
    }

    pub fn kind(&self) -> Kind {
        self.meta().kind
    }

    pub fn name(&self) -> &str {
        &self.meta().name
    }

    pub fn object_ref(&self) -> ObjectRef {
        let m = self.meta();
        ObjectRef {
            kind: m.kind,
            namespace: m.namespace.clone(),
            cluster: m.cluster.clone(),
            name: m.name.clone(),
            document: Some(m.document),
        }
    }
}

/// Why a manifest was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// 1-based.
    pub document: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
    /// e.g. "spec.ports[0].targetPort"; empty for a YAML syntax error.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    /// `document 2 (Service wordpress): spec.ports[0].port: must be 1-65535, got 70000`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, " ({k} {n})")?,
            (Some(k), None) => write!(f, " ({k})")?,
            (None, Some(n)) => write!(f, " ({n})")?,
            (None, None) => {}
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ManifestError {}

/// Parses one request: any number of YAML (or JSON) documents separated by `---`; a `v1 List`
/// contributes its items. `default_namespace` is `-n`; `cluster` is the TKG cluster the objects
/// are applied inside (`--cluster`), in which case only Pods, Deployments and Services are
/// accepted and `default_namespace` is the supervisor namespace that holds the cluster.
pub fn parse_manifests(
    text: &str,
    default_namespace: Option<&str>,
    cluster: Option<&str>,
) -> Result<Vec<Manifest>, ManifestError> {
    parse_manifests_and_skipped(text, default_namespace, cluster).map(|(out, _)| out)
}

/// [`parse_manifests`], and the `kind/name` of each object skipped as [`NOT_MODELLED`].
pub fn parse_manifests_and_skipped(
    text: &str,
    default_namespace: Option<&str>,
    cluster: Option<&str>,
) -> Result<(Vec<Manifest>, Vec<String>), ManifestError> {
    let ctx = Ctx {
        default_namespace,
        cluster,
        refs: None,
        skipped: Default::default(),
    };
    let out = parse_with(text, &ctx)?;
    reject_duplicates(&out)?;
    Ok((out, ctx.skipped.into_inner()))
}

/// The objects a delete request names: each document needs only apiVersion, kind and metadata
/// (name, namespace), so a manifest cut down to those deletes as well as the full one.
pub fn parse_object_refs(
    text: &str,
    default_namespace: Option<&str>,
    cluster: Option<&str>,
) -> Result<Vec<ObjectRef>, ManifestError> {
    parse_object_refs_and_skipped(text, default_namespace, cluster).map(|(refs, _)| refs)
}

/// [`parse_object_refs`], and the `kind/name` of each object skipped as [`NOT_MODELLED`].
pub fn parse_object_refs_and_skipped(
    text: &str,
    default_namespace: Option<&str>,
    cluster: Option<&str>,
) -> Result<(Vec<ObjectRef>, Vec<String>), ManifestError> {
    let ctx = Ctx {
        default_namespace,
        cluster,
        refs: Some(std::cell::RefCell::new(Vec::new())),
        skipped: Default::default(),
    };
    parse_with(text, &ctx)?;
    let refs = ctx.refs.map(|r| r.into_inner()).unwrap_or_default();
    Ok((refs, ctx.skipped.into_inner()))
}

fn parse_with(text: &str, ctx: &Ctx<'_>) -> Result<Vec<Manifest>, ManifestError> {
    // A byte-order mark (what some editors write first) is not part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    // Lazily: after a syntax error the YAML reader goes on yielding errors; the first one ends
    // the loop.
    let documents: Box<dyn Iterator<Item = Result<Value, serde_yaml_ng::Error>>> =
        match json_stream(text) {
            Some(objects) => Box::new(objects.into_iter().map(Ok)),
            None => Box::new(serde_yaml_ng::Deserializer::from_str(text).map(Value::deserialize)),
        };
    for (index, doc) in documents.enumerate() {
        let document = index + 1;
        let syntax = |e: serde_yaml_ng::Error| ManifestError {
            document,
            kind: None,
            name: None,
            field: String::new(),
            message: format!("YAML syntax error: {e}"),
        };
        let mut value = doc.map_err(syntax)?;
        // YAML merge keys (`<<: *defaults`), which kubectl honours.
        value.apply_merge().map_err(syntax)?;
        // `---` alone (or a file of comments) is an empty document: skipped, as kubectl does.
        if value.is_null() {
            continue;
        }
        parse_document(
            document,
            Field {
                value: &value,
                path: String::new(),
            },
            ctx,
            &mut out,
        )?;
    }
    Ok(out)
}

/// A file of several JSON objects one after the other (`{...}{...}`, as `kubectl apply` takes
/// them), which is not YAML: its objects, when it is that. `None` for anything else (one JSON
/// object is YAML already, and errors are YAML's to report).
fn json_stream(text: &str) -> Option<Vec<Value>> {
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let objects: Vec<serde_json::Value> = serde_json::Deserializer::from_str(text)
        .into_iter()
        .collect::<Result<_, _>>()
        .ok()?;
    if objects.len() < 2 {
        return None;
    }
    objects
        .into_iter()
        .map(|o| serde_yaml_ng::to_value(o).ok())
        .collect()
}

/// Two requests for the same object in one request are an error (which one would win?).
pub(crate) fn reject_duplicates(manifests: &[Manifest]) -> Result<(), ManifestError> {
    // Kind, namespace, cluster, name.
    type Key = (Kind, Option<String>, Option<String>, String);
    let mut seen: BTreeMap<Key, &Meta> = BTreeMap::new();
    for m in manifests {
        let meta = m.meta();
        // There is one Pools and one Uplink, whatever they are called.
        let name = if matches!(meta.kind, Kind::Pools | Kind::Uplink) {
            String::new()
        } else {
            meta.name.clone()
        };
        let key = (
            meta.kind,
            meta.namespace.clone(),
            meta.cluster.clone(),
            name,
        );
        if let Some(first) = seen.insert(key, meta) {
            let what = match &meta.namespace {
                Some(ns) => format!("{}/{}", ns, meta.name),
                None => meta.name.clone(),
            };
            // Two items of one List are told apart by their `items[i]`, not "document 1 ...
            // also in document 1".
            let at = |m: &Meta, what: &str| match m.item.as_str() {
                "" => what.to_string(),
                item => format!("{item}.{what}"),
            };
            let first = match first.item.as_str() {
                "" => format!("document {}", first.document),
                item => format!("document {}, {item}", first.document),
            };
            return Err(ManifestError {
                document: meta.document,
                kind: Some(meta.kind.to_string()),
                name: Some(meta.name.clone()),
                field: at(meta, "metadata.name"),
                message: format!("duplicate {} {what} (also in {first})", meta.kind),
            });
        }
    }
    Ok(())
}

struct Ctx<'a> {
    default_namespace: Option<&'a str>,
    cluster: Option<&'a str>,
    /// Delete mode: only kind, namespace and name are read (as `kubectl delete -f` does), and
    /// the object is named here instead of parsed whole.
    refs: Option<std::cell::RefCell<Vec<ObjectRef>>>,
    /// Objects of kinds Pacific does not model and that have no part in the network
    /// ([`NOT_MODELLED`]), as `kind/name` lines to report.
    skipped: std::cell::RefCell<Vec<String>>,
}

/// Kinds that often come in the same file as an application's Deployment and Service but have
/// no part in the network (configuration, storage, identity, scaling policy): skipped with a
/// note instead of failing the whole file. Kinds that would run pods (StatefulSet, DaemonSet,
/// Job) or shape traffic (Ingress) stay errors: skipping them would hide that
/// Pacific does not do what they ask.
/// Kinds that would run pods or shape traffic, refused (not skipped) with what to use instead.
const REFUSED: &[(&str, &str)] = &[
    ("StatefulSet", RUNS_PODS),
    ("DaemonSet", RUNS_PODS),
    ("ReplicaSet", RUNS_PODS),
    ("ReplicationController", RUNS_PODS),
    ("Job", RUNS_PODS),
    ("CronJob", RUNS_PODS),
    (
        "Ingress",
        "Pacific routes to a Service (ClusterIP, or a LoadBalancer's VIP); use a Service of \
         type LoadBalancer",
    ),
];
const RUNS_PODS: &str = "Pacific runs pods from Pod, Deployment and TanzuKubernetesCluster only; \
                         use a Deployment";

pub const NOT_MODELLED: &[(&str, &[&str])] = &[
    ("ConfigMap", &["v1"]),
    ("Secret", &["v1"]),
    ("ServiceAccount", &["v1"]),
    ("PersistentVolumeClaim", &["v1"]),
    ("PersistentVolume", &["v1"]),
    ("LimitRange", &["v1"]),
    ("ResourceQuota", &["v1"]),
    (
        "HorizontalPodAutoscaler",
        &["autoscaling/v1", "autoscaling/v2"],
    ),
    ("PodDisruptionBudget", &["policy/v1"]),
    ("Role", &["rbac.authorization.k8s.io/v1"]),
    ("RoleBinding", &["rbac.authorization.k8s.io/v1"]),
    ("ClusterRole", &["rbac.authorization.k8s.io/v1"]),
    ("ClusterRoleBinding", &["rbac.authorization.k8s.io/v1"]),
];

/// A field error before the document, kind and name are attached.
#[derive(Debug)]
struct FieldError {
    field: String,
    message: String,
}

type Res<T> = Result<T, FieldError>;

/// A position in a document: a value and the path that leads to it.
#[derive(Clone)]
struct Field<'a> {
    value: &'a Value,
    path: String,
}

fn type_name(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("tagged value {}", t.tag),
    }
}

impl<'a> Field<'a> {
    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn err(&self, message: impl Into<String>) -> FieldError {
        FieldError {
            field: self.path.clone(),
            message: message.into(),
        }
    }

    /// A key of a mapping; absent and `null` are the same (as in Kubernetes).
    fn get(&self, key: &str) -> Option<Field<'a>> {
        match self.value.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => Some(Field {
                value,
                path: self.child_path(key),
            }),
        }
    }

    /// Refuses a key that this mapping's type does not have, as kubectl's strict field
    /// validation does: a typo such as `sessionAfinity` would otherwise change what the object
    /// does, silently. The message suggests the known key it is closest to. (Only for types
    /// whose every field is listed here.)
    fn known_keys(&self, known: &[&str]) -> Res<()> {
        let Some(map) = self.value.as_mapping() else {
            return Ok(()); // not a mapping: the caller's own checks say so
        };
        for key in map.keys() {
            let Some(key) = key.as_str() else {
                return Err(self.err(format!("keys must be strings, got {}", type_name(key))));
            };
            if !known.contains(&key) {
                let hint = closest(key, known)
                    .map_or(String::new(), |k| format!(" (did you mean {k:?}?)"));
                return Err(FieldError {
                    field: self.child_path(key),
                    message: format!("unknown field{hint}"),
                });
            }
        }
        Ok(())
    }

    fn req(&self, key: &str) -> Res<Field<'a>> {
        self.get(key).ok_or_else(|| FieldError {
            field: self.child_path(key),
            message: "required value".into(),
        })
    }

    fn mapping(&self) -> Res<&'a serde_yaml_ng::Mapping> {
        self.value
            .as_mapping()
            .ok_or_else(|| self.err(format!("must be a mapping, got {}", type_name(self.value))))
    }

    fn str(&self) -> Res<&'a str> {
        self.value
            .as_str()
            .ok_or_else(|| self.err(format!("must be a string, got {}", type_name(self.value))))
    }

    fn u64(&self) -> Res<u64> {
        match self.value {
            Value::Number(n) => n
                .as_u64()
                .ok_or_else(|| self.err(format!("must be a non-negative integer, got {n}"))),
            other => Err(self.err(format!("must be an integer, got {}", type_name(other)))),
        }
    }

    fn bool(&self) -> Res<bool> {
        self.value.as_bool().ok_or_else(|| {
            self.err(format!(
                "must be true or false, got {}",
                type_name(self.value)
            ))
        })
    }

    fn seq(&self) -> Res<Vec<Field<'a>>> {
        let items = self
            .value
            .as_sequence()
            .ok_or_else(|| self.err(format!("must be a list, got {}", type_name(self.value))))?;
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, value)| Field {
                value,
                path: format!("{}[{i}]", self.path),
            })
            .collect())
    }

    /// A map of strings (labels, annotations, selectors). Values must be strings, as the API
    /// server demands: an unquoted `true` or `80` is an error with a hint, not a silent cast.
    fn string_map(&self) -> Res<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for (k, v) in self.mapping()? {
            let key = k
                .as_str()
                .ok_or_else(|| self.err(format!("keys must be strings, got {}", type_name(k))))?;
            let here = Field {
                value: v,
                path: format!("{}[{key}]", self.path),
            };
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                Value::Bool(_) | Value::Number(_) => {
                    return Err(
                        here.err(format!("must be a string, got {} (quote it)", type_name(v)))
                    )
                }
                other => {
                    return Err(here.err(format!("must be a string, got {}", type_name(other))))
                }
            };
            out.insert(key.to_string(), value);
        }
        Ok(out)
    }

    fn port(&self) -> Res<u16> {
        match self.value {
            Value::Number(n) => match n.as_u64().and_then(|n| u16::try_from(n).ok()) {
                Some(p) if p > 0 => Ok(p),
                _ => Err(self.err(format!("must be 1-65535, got {n}"))),
            },
            other => Err(self.err(format!(
                "must be a port number 1-65535, got {}",
                type_name(other)
            ))),
        }
    }

    fn ipv4(&self) -> Res<Ipv4Addr> {
        let s = self.str()?;
        s.parse()
            .map_err(|_| self.err(format!("{s:?} is not an IPv4 address")))
    }

    fn ipv4_net(&self) -> Res<Ipv4Net> {
        let s = self.str()?;
        parse_cidr(s).map_err(|m| self.err(m))
    }

    /// A NetworkPolicy ipBlock's CIDR, host bits and all (`198.51.100.7/24`), as the API
    /// server takes it: the prefix it lies in, as Go's `net.ParseCIDR` gives it to the
    /// implementations.
    fn ipv4_block(&self) -> Res<Ipv4Net> {
        let s = self.str()?;
        match s
            .split_once('/')
            .map(|(a, l)| (a.parse::<Ipv4Addr>(), l.parse::<u8>()))
        {
            Some((Ok(addr), Ok(len))) => Ipv4Net::new(addr, len)
                .ok_or_else(|| self.err(format!("{s:?}: prefix length over 32"))),
            _ => self.ipv4_net(),
        }
    }

    fn protocol(&self) -> Res<Protocol> {
        match self.str()? {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Err(self.err("SCTP is not supported (TCP or UDP)")),
            other => Err(self.err(format!("unsupported value {other:?}: TCP or UDP"))),
        }
    }
}

/// Every field of these types, as the Kubernetes API (v1.31) and Pacific's own kinds define
/// them.
const OBJECT_META: &[&str] = &[
    "annotations",
    "clusterName",
    "creationTimestamp",
    "deletionGracePeriodSeconds",
    "deletionTimestamp",
    "finalizers",
    "generateName",
    "generation",
    "labels",
    "managedFields",
    "name",
    "namespace",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
    "uid",
];
const SERVICE_SPEC: &[&str] = &[
    "allocateLoadBalancerNodePorts",
    "clusterIP",
    "clusterIPs",
    "externalIPs",
    "externalName",
    "externalTrafficPolicy",
    "healthCheckNodePort",
    "internalTrafficPolicy",
    "ipFamilies",
    "ipFamilyPolicy",
    "loadBalancerClass",
    "loadBalancerIP",
    "loadBalancerSourceRanges",
    "ports",
    "publishNotReadyAddresses",
    "selector",
    "sessionAffinity",
    "sessionAffinityConfig",
    "topologyKeys",
    "trafficDistribution",
    "type",
];
const SERVICE_PORT: &[&str] = &[
    "appProtocol",
    "name",
    "nodePort",
    "port",
    "protocol",
    "targetPort",
];
const DEPLOYMENT_SPEC: &[&str] = &[
    "minReadySeconds",
    "paused",
    "progressDeadlineSeconds",
    "replicas",
    "revisionHistoryLimit",
    "selector",
    "strategy",
    "template",
];
/// A PodTemplateSpec: its metadata is an ObjectMeta, checked as strictly as an object's.
const POD_TEMPLATE: &[&str] = &["metadata", "spec"];
/// The top level of an object of most kinds (Endpoints and EndpointSlice have their own).
const OBJECT_TOP: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];
const ENDPOINTS_TOP: &[&str] = &["apiVersion", "kind", "metadata", "subsets"];
const ENDPOINT_SLICE_TOP: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "addressType",
    "endpoints",
    "ports",
];
/// Kubernetes v1 PodSpec: every field, so that a typo (`contaners`, `nodeSelecter`) is refused
/// rather than ignored; Pacific reads `containers` and `nodeName` of them.
const POD_SPEC: &[&str] = &[
    "activeDeadlineSeconds",
    "affinity",
    "automountServiceAccountToken",
    "containers",
    "dnsConfig",
    "dnsPolicy",
    "enableServiceLinks",
    "ephemeralContainers",
    "hostAliases",
    "hostIPC",
    "hostNetwork",
    "hostPID",
    "hostUsers",
    "hostname",
    "imagePullSecrets",
    "initContainers",
    "nodeName",
    "nodeSelector",
    "os",
    "overhead",
    "preemptionPolicy",
    "priority",
    "priorityClassName",
    "readinessGates",
    "resourceClaims",
    "resources",
    "restartPolicy",
    "runtimeClassName",
    "schedulerName",
    "schedulingGates",
    "securityContext",
    "serviceAccount",
    "serviceAccountName",
    "setHostnameAsFQDN",
    "shareProcessNamespace",
    "subdomain",
    "terminationGracePeriodSeconds",
    "tolerations",
    "topologySpreadConstraints",
    "volumes",
];
/// Kubernetes v1 Container: every field (Pacific reads name, image, ports and env).
const CONTAINER: &[&str] = &[
    "args",
    "command",
    "env",
    "envFrom",
    "image",
    "imagePullPolicy",
    "lifecycle",
    "livenessProbe",
    "name",
    "ports",
    "readinessProbe",
    "resizePolicy",
    "resources",
    "restartPolicy",
    "securityContext",
    "startupProbe",
    "stdin",
    "stdinOnce",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "tty",
    "volumeDevices",
    "volumeMounts",
    "workingDir",
];
const CONTAINER_PORT: &[&str] = &["containerPort", "hostIP", "hostPort", "name", "protocol"];
const ENV_VAR: &[&str] = &["name", "value", "valueFrom"];
const LABEL_SELECTOR: &[&str] = &["matchExpressions", "matchLabels"];
const SELECTOR_REQUIREMENT: &[&str] = &["key", "operator", "values"];
const NETWORK_POLICY_SPEC: &[&str] = &["egress", "ingress", "podSelector", "policyTypes"];
const POLICY_PEER: &[&str] = &["ipBlock", "namespaceSelector", "podSelector"];
const IP_BLOCK: &[&str] = &["cidr", "except"];
const POLICY_PORT: &[&str] = &["endPort", "port", "protocol"];
const POOLS_SPEC: &[&str] = &[
    "pods",
    "services",
    "ingress",
    "egress",
    "servicesStart",
    "ingressStart",
    "egressStart",
];
const UPLINK_SPEC: &[&str] = &["t0Address", "peerAddress", "prefixLength"];
const OUTSIDE_HOST_SPEC: &[&str] = &["address", "httpPorts", "udpPorts"];

/// The known key `key` is most likely a typo of: the same but for case, or at most two edits
/// away (Levenshtein).
pub(crate) fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, &cb) in b.iter().enumerate() {
                let cost = usize::from(ca != cb);
                let next = (row[j + 1] + 1).min(row[j] + 1).min(prev + cost);
                prev = row[j + 1];
                row[j + 1] = next;
            }
        }
        row[b.len()]
    };
    known
        .iter()
        .map(|&k| {
            let d = if k.eq_ignore_ascii_case(key) {
                0
            } else {
                distance(&key.to_ascii_lowercase(), &k.to_ascii_lowercase())
            };
            (d, k)
        })
        .filter(|&(d, _)| d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn parse_cidr(s: &str) -> Result<Ipv4Net, String> {
    if !s.contains('/') {
        return Err(format!("{s:?} is not a CIDR (a.b.c.d/len)"));
    }
    s.parse::<Ipv4Net>()
}

/// An optional protocol field, TCP when absent.
fn protocol_of(parent: &Field<'_>) -> Res<Protocol> {
    parent
        .get("protocol")
        .map_or(Ok(Protocol::Tcp), |f| f.protocol())
}

/// RFC 1123 label: 1-63 of `[a-z0-9-]`, starting and ending alphanumeric (Kubernetes names).
pub fn check_dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!("{name:?} is longer than 63 characters"));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if !name.chars().all(ok_char) {
        return Err(format!(
            "{name:?} must consist of lower case alphanumeric characters or '-' (RFC 1123 label)"
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Err(format!(
            "{name:?} must start and end with an alphanumeric character (RFC 1123 label)"
        ));
    }
    Ok(())
}

/// RFC 1123 subdomain as Kubernetes checks it: at most 253 characters, parts of `[a-z0-9-]`
/// with alphanumeric ends joined by '.' (no length per part: a pod may be 253 `a`s). The names
/// of pods, deployments and most other kinds.
fn check_dns_subdomain(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    let part_ok = |part: &str| {
        let alnum =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        alnum(part.chars().next())
            && alnum(part.chars().last())
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if name.is_empty() || !name.split('.').all(part_ok) {
        return Err(format!(
            "{name:?} must consist of lower case alphanumeric characters, '-' or '.', and must \
             start and end with an alphanumeric character (RFC 1123 subdomain)"
        ));
    }
    Ok(())
}

/// RFC 1035 label (service names): an RFC 1123 label that starts with a letter.
fn check_rfc1035_label(name: &str) -> Result<(), String> {
    check_dns_label(name)?;
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "{name:?} must start with a letter (RFC 1035 label)"
        ));
    }
    Ok(())
}

/// A port name (IANA service name, RFC 6335 section 5.1): at most 15 of `[a-z0-9-]`, at least
/// one letter, no leading, trailing or doubled hyphen.
fn check_port_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "{name:?} must be 1-15 characters (IANA service name)"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!(
            "{name:?} must consist of lower case alphanumeric characters or '-'"
        ));
    }
    if !name.chars().any(|c| c.is_ascii_lowercase()) {
        return Err(format!("{name:?} must contain at least one letter"));
    }
    if name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Err(format!(
            "{name:?} must not start or end with '-' or contain '--'"
        ));
    }
    Ok(())
}

/// A label or annotation key: `[prefix/]name`, the name at most 63 of `[A-Za-z0-9-_.]` with
/// alphanumeric ends, the prefix a DNS subdomain.
fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 || !p.split('.').all(|l| check_dns_label(l).is_ok()) {
            return Err(format!("key {key:?}: the prefix must be a DNS subdomain"));
        }
    }
    check_label_value(name).map_err(|_| {
        format!("key {key:?}: the name must be 1-63 alphanumeric characters, '-', '_' or '.', with alphanumeric ends")
    })?;
    if name.is_empty() {
        return Err(format!("key {key:?}: the name must not be empty"));
    }
    Ok(())
}

/// A label value: empty, or at most 63 of `[A-Za-z0-9-_.]` with alphanumeric ends.
fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    let ok = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("{value:?} must be at most 63 alphanumeric characters, '-', '_' or '.', with alphanumeric ends"))
    }
}

fn labels_of(field: &Field<'_>) -> Res<BTreeMap<String, String>> {
    let labels = field.string_map()?;
    for (k, v) in &labels {
        let here = format!("{}[{k}]", field.path);
        check_label_key(k).map_err(|message| FieldError {
            field: here.clone(),
            message,
        })?;
        check_label_value(v).map_err(|message| FieldError {
            field: here,
            message,
        })?;
    }
    Ok(labels)
}

fn parse_document(
    document: usize,
    root: Field<'_>,
    ctx: &Ctx<'_>,
    out: &mut Vec<Manifest>,
) -> Result<(), ManifestError> {
    let mut kind_name: Option<String> = None;
    let mut object_name: Option<String> = None;
    let result = parse_object(document, &root, ctx, out, &mut kind_name, &mut object_name);
    result.map_err(|e| ManifestError {
        document,
        kind: kind_name,
        name: object_name,
        field: e.field,
        message: e.message,
    })
}

fn parse_object(
    document: usize,
    root: &Field<'_>,
    ctx: &Ctx<'_>,
    out: &mut Vec<Manifest>,
    kind_name: &mut Option<String>,
    object_name: &mut Option<String>,
) -> Res<()> {
    if !root.value.is_mapping() {
        return Err(root.err(format!(
            "a manifest must be a mapping with apiVersion, kind and metadata, got {}",
            type_name(root.value)
        )));
    }
    let kind_str = root.req("kind")?.str()?;
    *kind_name = Some(kind_str.to_string());
    let api_version = root.req("apiVersion")?.str()?;
    // kubectl applies any list's items: `v1 List` (what `kubectl get -o yaml` writes) and the
    // API's typed lists (`ServiceList`, `apps/v1 DeploymentList`, as `kubectl get --raw` gives).
    let typed_list =
        kind_str.len() > 4 && kind_str.ends_with("List") && root.get("items").is_some();
    if (kind_str == "List" && api_version == "v1") || typed_list {
        for item in root.req("items")?.seq()? {
            let mut k = None;
            let mut n = None;
            // Errors inside an item name the item's kind and name, with the `items[i].` path.
            if let Err(e) = parse_object(document, &item, ctx, out, &mut k, &mut n) {
                *kind_name = k;
                *object_name = n;
                return Err(e);
            }
        }
        return Ok(());
    }
    if let Some((_, versions)) = NOT_MODELLED.iter().find(|(k, _)| *k == kind_str) {
        if !versions.contains(&api_version) {
            return Err(root.req("apiVersion")?.err(format!(
                "{kind_str} is served by {}, not {api_version:?}",
                versions.join(" or ")
            )));
        }
        let name_field = root.req("metadata")?.req("name")?;
        let name = name_field.str()?;
        *object_name = Some(name.to_string());
        // What the API server would refuse is refused here too: a DNS subdomain (RFC 1123).
        let subdomain = (1..=253).contains(&name.len())
            && name.split('.').all(|label| check_dns_label(label).is_ok());
        if !subdomain {
            return Err(name_field.err(format!(
                "{name:?} must be lower case alphanumeric characters, '-' or '.', starting and \
                 ending alphanumeric (RFC 1123 subdomain)"
            )));
        }
        ctx.skipped.borrow_mut().push(format!(
            "{}/{name} skipped: Pacific does not model {kind_str} (it has no part in the network)",
            kind_str.to_ascii_lowercase()
        ));
        return Ok(());
    }
    let kind = Kind::from_kind(kind_str).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        let message = if let Some(instead) = REFUSED
            .iter()
            .find(|(k, _)| *k == kind_str)
            .map(|(_, instead)| instead)
        {
            format!("{kind_str} is not modelled: {instead}")
        } else {
            let hint = closest(kind_str, &known)
                .map_or(String::new(), |k| format!("did you mean {k:?}? "));
            format!(
                "unknown kind {kind_str:?} ({hint}Pacific knows {})",
                known.join(", ")
            )
        };
        root.req("kind").map_or_else(|e| e, |f| f.err(message))
    })?;
    if !kind.api_versions().contains(&api_version) {
        return Err(root.req("apiVersion")?.err(format!(
            "{kind} is served by {}, not {api_version:?}",
            kind.api_versions().join(" or ")
        )));
    }
    root.known_keys(match kind {
        Kind::Endpoints => ENDPOINTS_TOP,
        Kind::EndpointSlice => ENDPOINT_SLICE_TOP,
        _ => OBJECT_TOP,
    })?;
    let metadata = root.req("metadata")?;
    metadata.mapping()?;
    metadata.known_keys(OBJECT_META)?;
    let name_field = metadata.req("name")?;
    let name = name_field.str()?.to_string();
    *object_name = Some(name.clone());
    // As the API server validates each kind's names: a Service's is an RFC 1035 label, a
    // Namespace's an RFC 1123 label, a Pod's, Deployment's, NetworkPolicy's, Endpoints' and
    // EndpointSlice's an RFC 1123 subdomain (`web.v2` is a valid pod name); Pacific's own kinds
    // and TKG clusters, whose names go into node VM names, keep to a label.
    let check_name = match kind {
        Kind::Service => check_rfc1035_label,
        Kind::Pod
        | Kind::Deployment
        | Kind::NetworkPolicy
        | Kind::Endpoints
        | Kind::EndpointSlice => check_dns_subdomain,
        _ => check_dns_label,
    };
    check_name(&name).map_err(|m| name_field.err(m))?;
    let labels = metadata
        .get("labels")
        .map_or(Ok(BTreeMap::new()), |f| labels_of(&f))?;
    let annotations = match metadata.get("annotations") {
        Some(f) => {
            let map = f.string_map()?;
            for k in map.keys() {
                check_label_key(k).map_err(|message| FieldError {
                    field: format!("{}[{k}]", f.path),
                    message,
                })?;
            }
            map
        }
        None => BTreeMap::new(),
    };
    let (namespace, cluster) = resolve_namespace(kind, &metadata, ctx)?;
    let meta = Meta {
        document,
        item: root.path.clone(),
        kind,
        name,
        namespace,
        cluster,
        labels,
        annotations,
    };
    if let Some(refs) = &ctx.refs {
        refs.borrow_mut().push(ObjectRef {
            kind: meta.kind,
            namespace: meta.namespace,
            cluster: meta.cluster,
            name: meta.name,
            document: Some(document),
        });
        return Ok(());
    }
    let ann = Annotations {
        meta: &meta,
        metadata: &metadata,
    };
    let manifest = match kind {
        Kind::Namespace => Manifest::Namespace(parse_namespace(meta.clone(), &ann)?),
        Kind::Pod => Manifest::Pod(parse_pod(meta.clone(), root, &ann)?),
        Kind::Deployment => Manifest::Deployment(parse_deployment(meta.clone(), root)?),
        Kind::Service => Manifest::Service(parse_service(meta.clone(), root, &ann)?),
        Kind::Endpoints => Manifest::Endpoints(parse_endpoints(meta.clone(), root)?),
        Kind::EndpointSlice => {
            Manifest::Endpoints(parse_endpoint_slice(meta.clone(), root, &metadata)?)
        }
        Kind::TanzuKubernetesCluster => {
            Manifest::TanzuKubernetesCluster(parse_tkc(meta.clone(), root, &ann)?)
        }
        Kind::OutsideHost => Manifest::OutsideHost(parse_outside_host(meta.clone(), root)?),
        Kind::Pools => Manifest::Pools(parse_pools(meta.clone(), root)?),
        Kind::Uplink => Manifest::Uplink(parse_uplink(meta.clone(), root)?),
        Kind::NetworkPolicy => Manifest::NetworkPolicy(parse_network_policy(meta.clone(), root)?),
    };
    out.push(manifest);
    Ok(())
}

/// The namespace (and TKG cluster) an object belongs to, from `metadata.namespace`, `-n` and
/// `--cluster`, with kubectl's rules: the two namespaces must agree; neither means "default".
fn resolve_namespace(
    kind: Kind,
    metadata: &Field<'_>,
    ctx: &Ctx<'_>,
) -> Res<(Option<String>, Option<String>)> {
    let written = match metadata.get("namespace") {
        Some(f) => {
            let ns = f.str()?;
            check_dns_label(ns).map_err(|m| f.err(m))?;
            Some((ns, f))
        }
        None => None,
    };
    if let Some(cluster) = ctx.cluster {
        if !matches!(kind, Kind::Pod | Kind::Deployment | Kind::Service) {
            return Err(FieldError {
                field: "kind".into(),
                message: format!(
                    "a {kind} cannot be applied inside TKG cluster {cluster:?} (only Pods, Deployments and Services)"
                ),
            });
        }
        // metadata.namespace would name a namespace of the guest cluster, which Pacific does not
        // model: the object is keyed by the supervisor namespace and the cluster.
        let ns = ctx.default_namespace.ok_or_else(|| FieldError {
            field: "metadata.namespace".into(),
            message: format!("objects inside TKG cluster {cluster:?} need the supervisor namespace that holds it (-n)"),
        })?;
        return Ok((Some(ns.to_string()), Some(cluster.to_string())));
    }
    if !kind.namespaced() {
        return Ok((None, None));
    }
    let ns = match (written, ctx.default_namespace) {
        (Some((w, f)), Some(d)) if w != d => {
            return Err(f.err(format!(
                "the namespace from the provided object {w:?} does not match the namespace {d:?} given with -n"
            )))
        }
        (Some((w, _)), _) => w,
        (None, Some(d)) => d,
        (None, None) => "default",
    };
    Ok((Some(ns.to_string()), None))
}

/// Typed access to `metadata.annotations[...]` with the right field path in errors.
struct Annotations<'a, 'b> {
    meta: &'a Meta,
    metadata: &'a Field<'b>,
}

impl Annotations<'_, '_> {
    fn field(&self, key: &str) -> String {
        format!("{}[{key}]", self.metadata.child_path("annotations"))
    }

    fn err(&self, key: &str, message: impl Into<String>) -> FieldError {
        FieldError {
            field: self.field(key),
            message: message.into(),
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.meta.annotations.get(key).map(String::as_str)
    }

    fn ip(&self, key: &str) -> Res<Option<Ipv4Addr>> {
        self.get(key)
            .map(|s| {
                s.trim()
                    .parse()
                    .map_err(|_| self.err(key, format!("{s:?} is not an IPv4 address")))
            })
            .transpose()
    }

    fn cidr(&self, key: &str) -> Res<Option<Ipv4Net>> {
        self.get(key)
            .map(|s| parse_cidr(s.trim()).map_err(|m| self.err(key, m)))
            .transpose()
    }

    fn prefix_len(&self, key: &str) -> Res<Option<u8>> {
        self.get(key)
            .map(|s| match s.trim().parse::<u8>() {
                Ok(n) if (1..=30).contains(&n) => Ok(n),
                _ => Err(self.err(key, format!("must be a prefix length 1-30, got {s:?}"))),
            })
            .transpose()
    }

    fn flag(&self, key: &str) -> Res<bool> {
        match self.get(key) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => {
                Err(self.err(key, format!("must be \"true\" or \"false\", got {other:?}")))
            }
        }
    }

    /// A segment CIDR and prefix length that agree with each other.
    fn segment(&self) -> Res<(Option<Ipv4Net>, u8)> {
        let cidr = self.cidr(ANN_SEGMENT_CIDR)?;
        let len = self.prefix_len(ANN_SEGMENT_PREFIX_LEN)?;
        match (cidr, len) {
            (Some(c), Some(l)) if c.prefix_len() != l => Err(self.err(
                ANN_SEGMENT_PREFIX_LEN,
                format!("{l} contradicts {ANN_SEGMENT_CIDR} {c}"),
            )),
            (Some(c), _) => {
                if c.prefix_len() > 30 {
                    return Err(self.err(
                        ANN_SEGMENT_CIDR,
                        format!("{c} is too small for a gateway and a pod (/30 at most)"),
                    ));
                }
                Ok((Some(c), c.prefix_len()))
            }
            (None, l) => Ok((None, l.unwrap_or(DEFAULT_SEGMENT_PREFIX_LEN))),
        }
    }
}

fn parse_namespace(meta: Meta, ann: &Annotations<'_, '_>) -> Res<NamespaceRequest> {
    // `pacific exec ext/HOST` names an outside host: pods of a namespace `ext` could not be
    // reached, and their network namespaces would be named like the outside hosts'.
    if meta.name == "ext" {
        return Err(FieldError {
            field: "metadata.name".into(),
            message: "\"ext\" is reserved: `pacific exec ext/HOST` names the outside hosts".into(),
        });
    }
    let supervisor = ann.flag(ANN_SUPERVISOR)?;
    let egress_ip = ann.ip(ANN_STATIC_SNAT_IP)?;
    let (segment_cidr, segment_prefix_len) = ann.segment()?;
    Ok(NamespaceRequest {
        meta,
        supervisor,
        egress_ip,
        segment_cidr,
        segment_prefix_len,
    })
}

fn parse_containers(pod_spec: &Field<'_>) -> Res<Vec<Container>> {
    pod_spec.known_keys(POD_SPEC)?;
    let list = pod_spec.req("containers")?;
    let items = list.seq()?;
    if items.is_empty() {
        return Err(list.err("must have at least one container"));
    }
    let mut containers: Vec<Container> = Vec::new();
    for c in items {
        c.known_keys(CONTAINER)?;
        let name_field = c.req("name")?;
        let name = name_field.str()?.to_string();
        check_dns_label(&name).map_err(|m| name_field.err(m))?;
        if containers.iter().any(|other| other.name == name) {
            return Err(name_field.err(format!("duplicate container name {name:?}")));
        }
        let image = c.get("image").map_or(Ok(""), |f| f.str())?.to_string();
        let mut ports: Vec<ContainerPort> = Vec::new();
        if let Some(list) = c.get("ports") {
            for p in list.seq()? {
                p.known_keys(CONTAINER_PORT)?;
                let container_port = p.req("containerPort")?.port()?;
                let protocol = protocol_of(&p)?;
                let name = match p.get("name") {
                    Some(f) => {
                        let n = f.str()?;
                        check_port_name(n).map_err(|m| f.err(m))?;
                        Some(n.to_string())
                    }
                    None => None,
                };
                ports.push(ContainerPort {
                    name,
                    container_port,
                    protocol,
                });
            }
        }
        let mut env = BTreeMap::new();
        if let Some(list) = c.get("env") {
            for e in list.seq()? {
                e.known_keys(ENV_VAR)?;
                let name_field = e.req("name")?;
                let var = name_field.str()?;
                if var.is_empty() || var.contains('=') {
                    return Err(
                        name_field.err(format!("{var:?} is not a valid environment variable name"))
                    );
                }
                // `valueFrom` (secrets, field refs) resolves inside a real cluster; there is
                // nothing to resolve it against here, so such a variable is left out.
                if e.get("value").is_none() && e.get("valueFrom").is_some() {
                    continue;
                }
                let value = match e.get("value") {
                    Some(f) => match f.value {
                        Value::String(s) => s.clone(),
                        other => {
                            return Err(f.err(format!(
                                "must be a string, got {} (quote it)",
                                type_name(other)
                            )))
                        }
                    },
                    None => String::new(),
                };
                env.insert(var.to_string(), value);
            }
        }
        containers.push(Container {
            name,
            image,
            ports,
            env,
        });
    }
    Ok(containers)
}

fn parse_pod(meta: Meta, root: &Field<'_>, ann: &Annotations<'_, '_>) -> Res<PodRequest> {
    let spec = root.req("spec")?;
    let containers = parse_containers(&spec)?;
    let node = match spec.get("nodeName") {
        Some(f) => {
            let n = f.str()?;
            if n.is_empty() {
                return Err(f.err("must not be empty"));
            }
            Some(n.to_string())
        }
        None => None,
    };
    let ip = ann.ip(ANN_POD_IP)?;
    Ok(PodRequest {
        meta,
        containers,
        ip,
        node,
    })
}

fn count(field: &Field<'_>, min: u64) -> Res<u32> {
    let n = field.u64()?;
    if n < min || n > MAX_REPLICAS {
        return Err(field.err(format!("must be {min}-{MAX_REPLICAS}, got {n}")));
    }
    u32::try_from(n).map_err(|_| field.err(format!("must be {min}-{MAX_REPLICAS}, got {n}")))
}

fn parse_deployment(meta: Meta, root: &Field<'_>) -> Res<DeploymentRequest> {
    let spec = root.req("spec")?;
    spec.known_keys(DEPLOYMENT_SPEC)?;
    let replicas = spec.get("replicas").map_or(Ok(1), |f| count(&f, 0))?;
    let selector_field = spec.req("selector")?;
    selector_field.known_keys(LABEL_SELECTOR)?;
    if let Some(exprs) = selector_field.get("matchExpressions") {
        if !exprs.seq()?.is_empty() {
            return Err(exprs.err("matchExpressions is not supported; use matchLabels"));
        }
    }
    let match_labels = selector_field.req("matchLabels")?;
    let selector = labels_of(&match_labels)?;
    if selector.is_empty() {
        return Err(match_labels.err("empty selector is invalid for a deployment"));
    }
    let template = spec.req("template")?;
    template.known_keys(POD_TEMPLATE)?;
    let template_meta = template.req("metadata")?;
    template_meta.known_keys(OBJECT_META)?;
    let labels_field = template_meta.req("labels")?;
    let template_labels = labels_of(&labels_field)?;
    if !selects(&selector, &template_labels) {
        return Err(labels_field.err("`selector` does not match template `labels`"));
    }
    let containers = parse_containers(&template.req("spec")?)?;
    Ok(DeploymentRequest {
        meta,
        replicas,
        selector,
        template_labels,
        containers,
    })
}

/// A label selector (`matchLabels` and `matchExpressions`); `{}` selects everything.
fn label_selector(field: &Field<'_>) -> Res<LabelSelector> {
    field.mapping()?;
    field.known_keys(LABEL_SELECTOR)?;
    let match_labels = field
        .get("matchLabels")
        .map_or(Ok(BTreeMap::new()), |f| labels_of(&f))?;
    let mut match_expressions = Vec::new();
    if let Some(list) = field.get("matchExpressions") {
        for e in list.seq()? {
            e.known_keys(SELECTOR_REQUIREMENT)?;
            let key_field = e.req("key")?;
            let key = key_field.str()?;
            check_label_key(key).map_err(|m| key_field.err(m))?;
            let op_field = e.req("operator")?;
            let operator = match op_field.str()? {
                "In" => SelectorOperator::In,
                "NotIn" => SelectorOperator::NotIn,
                "Exists" => SelectorOperator::Exists,
                "DoesNotExist" => SelectorOperator::DoesNotExist,
                other => {
                    return Err(op_field.err(format!(
                        "unsupported value {other:?}: In, NotIn, Exists or DoesNotExist"
                    )))
                }
            };
            let mut values = Vec::new();
            if let Some(list) = e.get("values") {
                for v in list.seq()? {
                    let value = v.str()?;
                    check_label_value(value).map_err(|m| v.err(m))?;
                    values.push(value.to_string());
                }
            }
            let wants_values = matches!(operator, SelectorOperator::In | SelectorOperator::NotIn);
            if wants_values && values.is_empty() {
                return Err(e.err("values: must be specified when `operator` is 'In' or 'NotIn'"));
            }
            if !wants_values && !values.is_empty() {
                return Err(e.err(
                    "values: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                ));
            }
            match_expressions.push(SelectorRequirement {
                key: key.to_string(),
                operator,
                values,
            });
        }
    }
    Ok(LabelSelector {
        match_labels,
        match_expressions,
    })
}

/// `from[i]` / `to[i]`: pod and namespace selectors, or an ipBlock, never both.
fn policy_peer(p: &Field<'_>) -> Res<PolicyPeer> {
    p.mapping()?;
    p.known_keys(POLICY_PEER)?;
    let pod_selector = p
        .get("podSelector")
        .map(|f| label_selector(&f))
        .transpose()?;
    let namespace_selector = p
        .get("namespaceSelector")
        .map(|f| label_selector(&f))
        .transpose()?;
    match p.get("ipBlock") {
        Some(block) if pod_selector.is_none() && namespace_selector.is_none() => {
            block.known_keys(IP_BLOCK)?;
            let cidr_field = block.req("cidr")?;
            if let Some(v6) = ipv6_prefix(cidr_field.str()?) {
                return ipv6_block(&block, v6.map_err(|m| cidr_field.err(m))?);
            }
            let cidr = cidr_field.ipv4_block()?;
            let mut except = Vec::new();
            if let Some(list) = block.get("except") {
                for e in list.seq()? {
                    let net = e.ipv4_block()?;
                    if !(cidr.contains(net.network()) && net.prefix_len() > cidr.prefix_len()) {
                        return Err(e.err(format!("must be a strict subset of `cidr` {cidr}")));
                    }
                    except.push(net);
                }
            }
            Ok(PolicyPeer::IpBlock { cidr, except })
        }
        Some(block) => Err(block
            .err("may not be specified when `podSelector` or `namespaceSelector` is specified")),
        None if pod_selector.is_none() && namespace_selector.is_none() => {
            Err(p.err("must specify a peer: podSelector, namespaceSelector (or both) or ipBlock"))
        }
        None => Ok(PolicyPeer::Pods {
            pod_selector,
            namespace_selector,
        }),
    }
}

/// An IPv6 prefix (`2001:db8::/32`), None when `s` is no IPv6 text at all.
fn ipv6_prefix(s: &str) -> Option<Result<(u128, u8), String>> {
    if !s.contains(':') {
        return None;
    }
    let parsed = s.split_once('/').and_then(|(addr, len)| {
        let addr: std::net::Ipv6Addr = addr.parse().ok()?;
        let len: u8 = len.parse().ok().filter(|l| *l <= 128)?;
        Some((u128::from(addr), len))
    });
    Some(parsed.ok_or_else(|| format!("{s:?} is not a CIDR (as 2001:db8::/32)")))
}

/// An IPv6 `ipBlock` of a dual-stack policy: Kubernetes takes it, and as Pacific carries only
/// IPv4 it names no address (it is checked, so a typo is still an error).
fn ipv6_block(block: &Field<'_>, (cidr, len): (u128, u8)) -> Res<PolicyPeer> {
    let mask = |len: u8| u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    if let Some(list) = block.get("except") {
        for e in list.seq()? {
            let text = e.str()?;
            let (net, net_len) = match ipv6_prefix(text) {
                Some(v6) => v6.map_err(|m| e.err(m))?,
                None => return Err(e.err("must be a strict subset of `cidr`, an IPv6 prefix")),
            };
            if net_len <= len || net & mask(len) != cidr & mask(len) {
                return Err(e.err("must be a strict subset of `cidr`"));
            }
        }
    }
    let cidr = block.req("cidr")?.str()?.to_string();
    Ok(PolicyPeer::Ipv6Block { cidr })
}

fn policy_port(p: &Field<'_>) -> Res<PolicyPort> {
    p.mapping()?;
    p.known_keys(POLICY_PORT)?;
    let protocol = protocol_of(p)?;
    let port = match p.get("port") {
        None => None,
        Some(f) => match f.value {
            Value::String(name) => {
                check_port_name(name).map_err(|m| f.err(m))?;
                Some(TargetPort::Name(name.clone()))
            }
            _ => Some(TargetPort::Number(f.port()?)),
        },
    };
    let end_port = match (p.get("endPort"), &port) {
        (None, _) => None,
        (Some(f), Some(TargetPort::Number(start))) => {
            let end = f.port()?;
            if end < *start {
                return Err(f.err(format!("must be greater than or equal to `port` {start}")));
            }
            Some(end)
        }
        (Some(f), _) => return Err(f.err("may only be specified with a numeric `port`")),
    };
    Ok(PolicyPort {
        protocol,
        port,
        end_port,
    })
}

/// `spec.ingress` or `spec.egress`: each rule's peers (`from` / `to`) and ports.
fn policy_rules(list: &Field<'_>, peers_key: &str) -> Res<Vec<PolicyRule>> {
    let known: &[&str] = &[peers_key, "ports"];
    let mut rules = Vec::new();
    for r in list.seq()? {
        r.mapping()?;
        r.known_keys(known)?;
        let peers = match r.get(peers_key) {
            Some(f) => f.seq()?.iter().map(policy_peer).collect::<Res<Vec<_>>>()?,
            None => Vec::new(),
        };
        let ports = match r.get("ports") {
            Some(f) => f.seq()?.iter().map(policy_port).collect::<Res<Vec<_>>>()?,
            None => Vec::new(),
        };
        rules.push(PolicyRule { peers, ports });
    }
    Ok(rules)
}

fn parse_network_policy(meta: Meta, root: &Field<'_>) -> Res<NetworkPolicyRequest> {
    let spec = root.req("spec")?;
    spec.mapping()?;
    spec.known_keys(NETWORK_POLICY_SPEC)?;
    // Absent, the API server decodes it as `{}`: every pod of the namespace.
    let pod_selector = spec
        .get("podSelector")
        .map_or(Ok(LabelSelector::default()), |f| label_selector(&f))?;
    let ingress = spec
        .get("ingress")
        .map(|f| policy_rules(&f, "from"))
        .transpose()?;
    let egress = spec
        .get("egress")
        .map(|f| policy_rules(&f, "to"))
        .transpose()?;
    // Kubernetes' default, for a missing or empty list: Ingress always, Egress when the
    // policy has egress rules (`len(spec.egress) != 0`: an empty `egress: []` is no rule).
    let types = spec.get("policyTypes").map(|f| f.seq()).transpose()?;
    let (is_ingress, is_egress) = match types {
        Some(list) if !list.is_empty() => {
            let (mut i, mut e) = (false, false);
            for t in list {
                match t.str()? {
                    "Ingress" => i = true,
                    "Egress" => e = true,
                    other => {
                        return Err(t.err(format!("unsupported value {other:?}: Ingress or Egress")))
                    }
                }
            }
            (i, e)
        }
        _ => (true, egress.as_ref().is_some_and(|rules| !rules.is_empty())),
    };
    Ok(NetworkPolicyRequest {
        meta,
        pod_selector,
        ingress: is_ingress.then(|| ingress.unwrap_or_default()),
        egress: is_egress.then(|| egress.unwrap_or_default()),
    })
}

fn parse_service(meta: Meta, root: &Field<'_>, ann: &Annotations<'_, '_>) -> Res<ServiceRequest> {
    let spec = root.req("spec")?;
    spec.known_keys(SERVICE_SPEC)?;
    let service_type = match spec.get("type") {
        None => ServiceType::ClusterIP,
        Some(f) => match f.str()? {
            "ClusterIP" => ServiceType::ClusterIP,
            "LoadBalancer" => ServiceType::LoadBalancer,
            "NodePort" => ServiceType::NodePort,
            "ExternalName" => {
                return Err(f.err("ExternalName services are not supported (DNS only)"))
            }
            other => {
                return Err(f.err(format!(
                    "unsupported value {other:?}: ClusterIP, LoadBalancer or NodePort"
                )))
            }
        },
    };
    // `clusterIPs` (what `kubectl get -o yaml` writes beside `clusterIP`): its first address is
    // the ClusterIP when `clusterIP` is left out, and must be the same when both are given, as
    // the API server checks. The pool is IPv4 only: a second (dual-stack) address is refused.
    let cluster_ips = match spec.get("clusterIPs") {
        Some(f) => f.seq()?,
        None => Vec::new(),
    };
    if let Some(second) = cluster_ips.get(1) {
        return Err(second.err(
            "the service pool is IPv4 only: at most one address (ipFamilyPolicy SingleStack)",
        ));
    }
    if let (Some(ip), Some(first)) = (spec.get("clusterIP"), cluster_ips.first()) {
        if ip.str()? != first.str()? {
            return Err(first.err(format!(
                "{:?} must match spec.clusterIP {:?} when both are given",
                first.str()?,
                ip.str()?
            )));
        }
    }
    let cluster_ip = match spec
        .get("clusterIP")
        .or_else(|| cluster_ips.first().cloned())
    {
        None => ClusterIpRequest::Auto,
        Some(f) => match f.str()? {
            "" => ClusterIpRequest::Auto,
            "None" => {
                if service_type != ServiceType::ClusterIP {
                    return Err(f.err(format!("may not be None for a {service_type} service")));
                }
                ClusterIpRequest::Headless
            }
            _ => ClusterIpRequest::Pinned(f.ipv4()?),
        },
    };
    let mut ports: Vec<ServicePort> = Vec::new();
    let port_items = match spec.get("ports") {
        Some(f) => f.seq()?,
        None => Vec::new(),
    };
    if port_items.is_empty() && cluster_ip != ClusterIpRequest::Headless {
        return Err(FieldError {
            field: spec.child_path("ports"),
            message: "required value".into(),
        });
    }
    let many = port_items.len() > 1;
    for p in &port_items {
        p.known_keys(SERVICE_PORT)?;
        let name = match p.get("name") {
            Some(f) if !f.str()?.is_empty() => {
                let n = f.str()?;
                check_port_name(n).map_err(|m| f.err(m))?;
                if ports.iter().any(|q| q.name.as_deref() == Some(n)) {
                    return Err(f.err(format!("duplicate port name {n:?}")));
                }
                Some(n.to_string())
            }
            _ if many => {
                return Err(FieldError {
                    field: p.child_path("name"),
                    message: "required when a service has more than one port".into(),
                })
            }
            _ => None,
        };
        let port_field = p.req("port")?;
        let port = port_field.port()?;
        let protocol = protocol_of(p)?;
        if ports
            .iter()
            .any(|q| q.port == port && q.protocol == protocol)
        {
            return Err(port_field.err(format!("duplicate port {port}/{protocol}")));
        }
        let target_port = match p.get("targetPort") {
            None => TargetPort::Number(port),
            Some(f) => match f.value {
                Value::Number(_) => TargetPort::Number(f.port()?),
                Value::String(s) => {
                    check_port_name(s).map_err(|m| f.err(m))?;
                    TargetPort::Name(s.clone())
                }
                other => {
                    return Err(f.err(format!(
                        "must be a port number or name, got {}",
                        type_name(other)
                    )))
                }
            },
        };
        let node_port = match p.get("nodePort") {
            None => None,
            Some(f) => {
                if service_type == ServiceType::ClusterIP {
                    return Err(f.err("may not be used when `type` is ClusterIP"));
                }
                let n = f.u64()?;
                if !(30000..=32767).contains(&n) {
                    return Err(f.err(format!("must be 30000-32767, got {n}")));
                }
                u16::try_from(n).ok()
            }
        };
        ports.push(ServicePort {
            name,
            protocol,
            port,
            target_port,
            node_port,
        });
    }
    let selector = match spec.get("selector") {
        Some(f) => Some(labels_of(&f)?).filter(|m| !m.is_empty()),
        None => None,
    };
    let session_affinity = session_affinity(&spec)?;
    let external_traffic_local = match spec.get("externalTrafficPolicy") {
        None => false,
        Some(f) => match f.str()? {
            "Cluster" => false,
            "Local" => true,
            other => return Err(f.err(format!("unsupported value {other:?}: Cluster or Local"))),
        },
    };
    let load_balancer_ip = match spec.get("loadBalancerIP") {
        None => None,
        Some(f) if f.str().is_ok_and(str::is_empty) => None,
        Some(f) => {
            if service_type != ServiceType::LoadBalancer {
                return Err(f.err("may only be used when `type` is LoadBalancer"));
            }
            Some(f.ipv4()?)
        }
    };
    let load_balancer_source_ranges = source_ranges(&spec, ann, service_type)?;
    let allocate_node_ports = match spec.get("allocateLoadBalancerNodePorts") {
        None => true,
        Some(f) => {
            let allocate = f.bool()?;
            if !allocate && service_type != ServiceType::LoadBalancer {
                return Err(f.err("may only be used when `type` is LoadBalancer"));
            }
            allocate
        }
    };
    let algorithm = match ann.get(ANN_LB_ALGORITHM) {
        None | Some("round-robin") => LbAlgorithm::RoundRobin,
        Some("least-connections") => LbAlgorithm::LeastConnections,
        Some("source-ip-hash") => LbAlgorithm::SourceIpHash,
        Some(other) => {
            return Err(ann.err(
                ANN_LB_ALGORITHM,
                format!(
                    "unsupported value {other:?}: round-robin, least-connections or source-ip-hash"
                ),
            ))
        }
    };
    Ok(ServiceRequest {
        meta,
        service_type,
        cluster_ip,
        ports,
        selector,
        session_affinity,
        external_traffic_local,
        load_balancer_ip,
        load_balancer_source_ranges,
        algorithm,
        allocate_node_ports,
    })
}

/// The annotation Kubernetes reads when `spec.loadBalancerSourceRanges` is empty: CIDRs
/// separated by commas.
pub const ANN_LB_SOURCE_RANGES: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// `loadBalancerSourceRanges`, validated as the API server does: CIDRs (space-padding and host
/// bits tolerated, as its legacy parser tolerates them: `198.51.100.7/24` is 198.51.100.0/24),
/// on a LoadBalancer service only. Without them, the annotation's, as kube-proxy reads it.
fn source_ranges(
    spec: &Field<'_>,
    ann: &Annotations<'_, '_>,
    service_type: ServiceType,
) -> Res<Vec<Ipv4Net>> {
    let cidr = |s: &str| {
        let s = s.trim();
        s.split_once('/')
            .and_then(|(a, l)| Ipv4Net::new(a.parse().ok()?, l.parse().ok()?))
            .ok_or_else(|| format!("{s:?} is not a CIDR (a.b.c.d/len)"))
    };
    let lb_only = "may only be used when `type` is LoadBalancer";
    if let Some(f) = spec.get("loadBalancerSourceRanges") {
        let items = f.seq()?;
        if !items.is_empty() {
            if service_type != ServiceType::LoadBalancer {
                return Err(f.err(lb_only));
            }
            return items
                .iter()
                .map(|item| cidr(item.str()?).map_err(|m| item.err(m)))
                .collect();
        }
    }
    let Some(text) = ann.get(ANN_LB_SOURCE_RANGES) else {
        return Ok(Vec::new());
    };
    if service_type != ServiceType::LoadBalancer {
        return Err(ann.err(ANN_LB_SOURCE_RANGES, lb_only));
    }
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| cidr(s).map_err(|m| ann.err(ANN_LB_SOURCE_RANGES, m)))
        .collect()
}

/// `sessionAffinity` and its `sessionAffinityConfig`: the ClientIP timeout in seconds, or `None`
/// without affinity. Validated as the API server does (`ValidateService`): a timeout of 1 to
/// 86400 s (default 10800), and no config on a service without affinity, where it would be
/// accepted and silently do nothing.
fn session_affinity(spec: &Field<'_>) -> Res<Option<u32>> {
    let config = spec.get("sessionAffinityConfig");
    let client_ip = match &config {
        Some(c) => {
            c.known_keys(&["clientIP"])?;
            c.get("clientIP")
        }
        None => None,
    };
    let timeout = match &client_ip {
        Some(c) => {
            c.known_keys(&["timeoutSeconds"])?;
            c.get("timeoutSeconds")
        }
        None => None,
    };
    // Empty or null is defaulted to None, as the API server does.
    let affinity = match spec.get("sessionAffinity") {
        None => "None",
        Some(f) if f.value.is_null() => "None",
        Some(f) => match f.str()? {
            "" => "None",
            a @ ("None" | "ClientIP") => a,
            other => return Err(f.err(format!("unsupported value {other:?}: None or ClientIP"))),
        },
    };
    if affinity == "None" {
        return match config {
            Some(c) => Err(c.err("must not be set when sessionAffinity is None")),
            None => Ok(None),
        };
    }
    let Some(t) = timeout else {
        return Ok(Some(DEFAULT_AFFINITY_TIMEOUT));
    };
    let n = t.u64()?;
    match u32::try_from(n) {
        Ok(n) if (1..=MAX_AFFINITY_TIMEOUT).contains(&n) => Ok(Some(n)),
        _ => Err(t.err(format!("must be 1-{MAX_AFFINITY_TIMEOUT} seconds, got {n}"))),
    }
}

fn endpoint_port(p: &Field<'_>) -> Res<EndpointPort> {
    let name = match p.get("name") {
        Some(f) => Some(f.str()?.to_string()).filter(|s| !s.is_empty()),
        None => None,
    };
    Ok(EndpointPort {
        name,
        port: p.req("port")?.port()?,
        protocol: protocol_of(p)?,
    })
}

fn target_name(addr: &Field<'_>) -> Res<Option<String>> {
    match addr.get("targetRef").and_then(|t| t.get("name")) {
        Some(f) => Ok(Some(f.str()?.to_string())),
        None => Ok(None),
    }
}

fn parse_endpoints(meta: Meta, root: &Field<'_>) -> Res<EndpointsRequest> {
    let mut subsets = Vec::new();
    if let Some(list) = root.get("subsets") {
        for s in list.seq()? {
            let mut addresses = Vec::new();
            for (key, ready) in [("addresses", true), ("notReadyAddresses", false)] {
                if let Some(list) = s.get(key) {
                    for a in list.seq()? {
                        let ip = a.req("ip")?.ipv4()?;
                        let target = match target_name(&a)? {
                            Some(t) => Some(t),
                            None => a
                                .get("hostname")
                                .map(|h| h.str().map(str::to_string))
                                .transpose()?,
                        };
                        addresses.push(EndpointAddress { ip, ready, target });
                    }
                }
            }
            let ports = match s.get("ports") {
                Some(list) => list
                    .seq()?
                    .iter()
                    .map(endpoint_port)
                    .collect::<Res<Vec<_>>>()?,
                None => Vec::new(),
            };
            subsets.push(EndpointSubset { addresses, ports });
        }
    }
    let service = meta.name.clone();
    Ok(EndpointsRequest {
        meta,
        service,
        subsets,
    })
}

fn parse_endpoint_slice(
    meta: Meta,
    root: &Field<'_>,
    metadata: &Field<'_>,
) -> Res<EndpointsRequest> {
    let family = root.req("addressType")?;
    match family.str()? {
        "IPv4" => {}
        other => return Err(family.err(format!("only IPv4 is supported, got {other:?}"))),
    }
    let service = meta
        .labels
        .get(LABEL_SERVICE_NAME)
        .cloned()
        .ok_or_else(|| FieldError {
            field: format!("{}[{LABEL_SERVICE_NAME}]", metadata.child_path("labels")),
            message: "required: the name of the service this slice backs".into(),
        })?;
    let mut addresses = Vec::new();
    if let Some(list) = root.get("endpoints") {
        for e in list.seq()? {
            // `ready: null` means "unknown", which consumers treat as ready.
            let ready = match e.get("conditions").and_then(|c| c.get("ready")) {
                Some(f) => f.bool()?,
                None => true,
            };
            let target = target_name(&e)?;
            let list = e.req("addresses")?;
            let ips = list.seq()?;
            if ips.is_empty() {
                return Err(list.err("must have at least one address"));
            }
            for a in ips {
                addresses.push(EndpointAddress {
                    ip: a.ipv4()?,
                    ready,
                    target: target.clone(),
                });
            }
        }
    }
    let ports = match root.get("ports") {
        Some(list) => list
            .seq()?
            .iter()
            .map(endpoint_port)
            .collect::<Res<Vec<_>>>()?,
        None => Vec::new(),
    };
    Ok(EndpointsRequest {
        meta,
        service,
        subsets: vec![EndpointSubset { addresses, ports }],
    })
}

fn parse_tkc(meta: Meta, root: &Field<'_>, ann: &Annotations<'_, '_>) -> Res<TkgClusterRequest> {
    let spec = root.req("spec")?;
    let topology = spec.req("topology")?;
    let control_plane = topology.req("controlPlane")?;
    // v1alpha1 says `count`, v1alpha2 and later `replicas`.
    let control_plane_count = match control_plane
        .get("count")
        .or_else(|| control_plane.get("replicas"))
    {
        Some(f) => count(&f, 1)?,
        None => 1,
    };
    // v1alpha1's `workers` is one pool, named so; v1alpha2's `nodePools` name theirs, and the
    // nodes are named after their pool (`<cluster>-<pool>-<hash>-<hash>`).
    let mut worker_pools = Vec::new();
    if let Some(workers) = topology.get("workers") {
        let replicas = match workers.get("count").or_else(|| workers.get("replicas")) {
            Some(f) => count(&f, 0)?,
            None => 1,
        };
        worker_pools.push(NodePool {
            name: "workers".to_string(),
            replicas,
        });
    }
    if let Some(pools) = topology.get("nodePools") {
        for pool in pools.seq()? {
            let name_field = pool.req("name")?;
            let name = name_field.str()?;
            check_dns_label(name).map_err(|e| name_field.err(e))?;
            if worker_pools.iter().any(|p: &NodePool| p.name == name) {
                return Err(name_field.err(format!("{name:?}: Duplicate value")));
            }
            let replicas = match pool.get("replicas") {
                Some(f) => count(&f, 0)?,
                None => 1,
            };
            worker_pools.push(NodePool {
                name: name.to_string(),
                replicas,
            });
        }
    }
    let worker_count: u64 = worker_pools.iter().map(|p| u64::from(p.replicas)).sum();
    if worker_count > MAX_REPLICAS {
        return Err(topology.err(format!(
            "at most {MAX_REPLICAS} workers, got {worker_count}"
        )));
    }
    let (segment_cidr, segment_prefix_len) = ann.segment()?;
    let mut control_plane_ips = Vec::new();
    if let Some(list) = ann.get(ANN_CONTROL_PLANE_IPS) {
        for part in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let ip = part.parse().map_err(|_| {
                ann.err(
                    ANN_CONTROL_PLANE_IPS,
                    format!("{part:?} is not an IPv4 address"),
                )
            })?;
            control_plane_ips.push(ip);
        }
        if control_plane_ips.len() > control_plane_count as usize {
            return Err(ann.err(
                ANN_CONTROL_PLANE_IPS,
                format!(
                    "{} addresses for {control_plane_count} control-plane nodes",
                    control_plane_ips.len()
                ),
            ));
        }
    }
    let control_plane_node_port = match ann.get(ANN_CONTROL_PLANE_NODE_PORT) {
        None => None,
        Some(s) => match s.trim().parse::<u16>() {
            Ok(p) if (30000..=32767).contains(&p) => Some(p),
            _ => {
                return Err(ann.err(
                    ANN_CONTROL_PLANE_NODE_PORT,
                    format!("must be 30000-32767, got {s:?}"),
                ))
            }
        },
    };
    Ok(TkgClusterRequest {
        control_plane_cluster_ip: ann.ip(ANN_CONTROL_PLANE_CLUSTER_IP)?,
        control_plane_vip: ann.ip(ANN_CONTROL_PLANE_VIP)?,
        meta,
        control_plane_count,
        worker_pools,
        segment_cidr,
        segment_prefix_len,
        control_plane_ips,
        control_plane_node_port,
    })
}

fn port_list(parent: &Field<'_>, key: &str) -> Res<Vec<u16>> {
    match parent.get(key) {
        None => Ok(Vec::new()),
        Some(list) => list.seq()?.iter().map(Field::port).collect(),
    }
}

fn parse_outside_host(meta: Meta, root: &Field<'_>) -> Res<OutsideHostRequest> {
    let spec = root.req("spec")?;
    spec.known_keys(OUTSIDE_HOST_SPEC)?;
    let field = spec.req("address")?;
    let text = field.str()?;
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| field.err(format!("{text:?} must be address/prefix-length")))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| field.err(format!("{addr:?} is not an IPv4 address")))?;
    let prefix_len: u8 = match len.parse() {
        Ok(n) if (1..=32).contains(&n) => n,
        _ => return Err(field.err(format!("{len:?} is not a prefix length 1-32"))),
    };
    if let Some(net) = Ipv4Net::new(addr, prefix_len).filter(|n| n.prefix_len() <= 30) {
        if addr == net.network() || addr == net.broadcast() {
            return Err(field.err(format!(
                "{addr} is the network or broadcast address of {net}"
            )));
        }
    }
    Ok(OutsideHostRequest {
        meta,
        addr,
        prefix_len,
        http_ports: port_list(&spec, "httpPorts")?,
        udp_ports: port_list(&spec, "udpPorts")?,
    })
}

fn parse_pools(meta: Meta, root: &Field<'_>) -> Res<PoolsRequest> {
    let spec = root.req("spec")?;
    spec.known_keys(POOLS_SPEC)?;
    let mut pools = Pools::default();
    for (key, slot) in [
        ("pods", &mut pools.pods),
        ("services", &mut pools.services),
        ("ingress", &mut pools.ingress),
        ("egress", &mut pools.egress),
    ] {
        if let Some(f) = spec.get(key) {
            let net = f.ipv4_net()?;
            if net.prefix_len() > 30 {
                return Err(f.err(format!("{net} is too small for a pool (/30 at most)")));
            }
            *slot = net;
        }
    }
    for (key, slot) in [
        ("servicesStart", &mut pools.services_start),
        ("ingressStart", &mut pools.ingress_start),
        ("egressStart", &mut pools.egress_start),
    ] {
        if let Some(f) = spec.get(key) {
            *slot = Some(f.ipv4()?);
        }
    }
    Ok(PoolsRequest { meta, pools })
}

fn parse_uplink(meta: Meta, root: &Field<'_>) -> Res<UplinkRequest> {
    let spec = root.req("spec")?;
    spec.known_keys(UPLINK_SPEC)?;
    let mut uplink = Uplink::default();
    if let Some(f) = spec.get("t0Address") {
        uplink.t0_addr = f.ipv4()?;
    }
    if let Some(f) = spec.get("peerAddress") {
        uplink.peer_addr = f.ipv4()?;
    }
    if let Some(f) = spec.get("prefixLength") {
        let n = f.u64()?;
        // A /31 is a point-to-point link (RFC 3021), as T0 uplinks often are: its two
        // addresses are both hosts.
        if !(1..=31).contains(&n) {
            return Err(f.err(format!("must be 1-31, got {n}")));
        }
        uplink.prefix_len = n as u8;
    }
    let subnet = uplink.subnet();
    let here = |key: &str| FieldError {
        field: spec.child_path(key),
        message: String::new(),
    };
    if uplink.t0_addr == uplink.peer_addr {
        return Err(FieldError {
            message: format!("{} is also the T0 address", uplink.peer_addr),
            ..here("peerAddress")
        });
    }
    if !subnet.contains(uplink.peer_addr) {
        return Err(FieldError {
            message: format!("{} is not on the T0's subnet {subnet}", uplink.peer_addr),
            ..here("peerAddress")
        });
    }
    for (key, ip) in [
        ("t0Address", uplink.t0_addr),
        ("peerAddress", uplink.peer_addr),
    ] {
        if subnet.prefix_len() <= 30 && (ip == subnet.network() || ip == subnet.broadcast()) {
            return Err(FieldError {
                message: format!("{ip} is the network or broadcast address of {subnet}"),
                ..here(key)
            });
        }
    }
    Ok(UplinkRequest { meta, uplink })
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::HELLO_KUBERNETES;

    fn parse(text: &str) -> Vec<Manifest> {
        parse_manifests(text, None, None).unwrap()
    }

    fn parse_err(text: &str) -> ManifestError {
        parse_manifests(text, None, None).unwrap_err()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn hello_kubernetes_applies_as_written() {
        let ms = parse_manifests(HELLO_KUBERNETES, Some("ns-dev"), None).unwrap();
        assert_eq!(ms.len(), 2);
        let Manifest::Service(svc) = &ms[0] else {
            panic!("{:?}", ms[0])
        };
        assert_eq!(svc.meta.document, 1);
        assert_eq!(svc.meta.namespace.as_deref(), Some("ns-dev"));
        assert_eq!(svc.service_type, ServiceType::LoadBalancer);
        assert_eq!(svc.cluster_ip, ClusterIpRequest::Auto);
        assert_eq!(
            svc.ports,
            vec![ServicePort {
                name: None,
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(8080),
                node_port: None
            }]
        );
        assert_eq!(
            svc.selector,
            Some(BTreeMap::from([("app".into(), "hello-kubernetes".into())]))
        );
        let Manifest::Deployment(d) = &ms[1] else {
            panic!("{:?}", ms[1])
        };
        assert_eq!(d.meta.document, 2);
        assert_eq!(d.replicas, 3);
        assert_eq!(d.template_labels, d.selector);
        let c = &d.containers[0];
        assert_eq!(c.image, "172.80.88.4/ns-dev/hello-kubernetes:1.5");
        assert_eq!(
            c.ports,
            vec![ContainerPort {
                name: None,
                container_port: 8080,
                protocol: Protocol::Tcp
            }]
        );
        assert_eq!(
            c.env["MESSAGE"],
            "I just deployed a PodVM on the Tanzu Kubernetes Cluster!!"
        );
        // Inside a TKG cluster, -n is the supervisor namespace that holds it.
        let ms = parse_manifests(HELLO_KUBERNETES, Some("ns-dev"), Some("tkg-cluster-01")).unwrap();
        assert!(ms
            .iter()
            .all(|m| m.meta().cluster.as_deref() == Some("tkg-cluster-01")
                && m.meta().namespace.as_deref() == Some("ns-dev")));
    }

    /// kubectl's strict field validation: a field the type does not have is refused with its
    /// path and the field it is likely a typo of; what `kubectl get -o yaml` prints (status,
    /// server-set metadata, every ServiceSpec field) applies as it is.
    #[test]
    fn unknown_fields_are_refused_with_the_likely_one() {
        let svc = |spec_extra: &str, port_extra: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: ns-dev}}\nspec:\n  selector: {{app: web}}\n  ports:\n  - {{port: 80{port_extra}}}\n{spec_extra}"
            )
        };
        for (text, field, says) in [
            (svc("  sessionAfinity: ClientIP\n", ""), "spec.sessionAfinity", "sessionAffinity"),
            (svc("", ", targetport: 8080"), "spec.ports[0].targetport", "targetPort"),
            (svc("  colour: blue\n", ""), "spec.colour", ""),
            (
                "apiVersion: pacific.dev/v1\nkind: Uplink\nmetadata: {name: u}\nspec: {t0Adress: 203.0.113.2}\n".to_string(),
                "spec.t0Adress",
                "t0Address",
            ),
            (
                "apiVersion: pacific.dev/v1\nkind: OutsideHost\nmetadata: {name: h}\nspec: {address: 198.51.100.9/24, httpPort: [80]}\n".to_string(),
                "spec.httpPort",
                "httpPorts",
            ),
            (
                "apiVersion: pacific.dev/v1\nkind: Pools\nmetadata: {name: p}\nspec: {Pods: 10.1.0.0/16}\n".to_string(),
                "spec.Pods",
                "pods",
            ),
            (
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, label: {a: b}}\n".to_string(),
                "metadata.label",
                "labels",
            ),
            (
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: n}\nspec:\n  replica: 2\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    spec: {containers: [{name: c, image: x}]}\n".to_string(),
                "spec.replica",
                "replicas",
            ),
            (
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: n}\nspec:\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}, anotations: {a: b}}\n    spec: {containers: [{name: c, image: x}]}\n".to_string(),
                "spec.template.metadata.anotations",
                "annotations",
            ),
            (
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: n}\nspec:\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {lables: {app: d}}\n    spec: {containers: [{name: c, image: x}]}\n".to_string(),
                "spec.template.metadata.lables",
                "labels",
            ),
            (
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: n}\nspec:\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    sepc: {containers: [{name: c, image: x}]}\n".to_string(),
                "spec.template.sepc",
                "spec",
            ),
        ] {
            let e = parse_err(&text);
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.starts_with("unknown field"), "{e}");
            if !says.is_empty() {
                assert!(e.message.contains(&format!("did you mean {says:?}")), "{e}");
            }
        }
        // As `kubectl get svc web -o yaml` prints it.
        let printed = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: ns-dev\n  uid: 5b1c\n  resourceVersion: \"812\"\n  creationTimestamp: \"2026-12-01T09:00:00Z\"\n  labels: {app: web}\nspec:\n  type: LoadBalancer\n  selector: {app: web}\n  ports:\n  - {name: http, protocol: TCP, port: 80, targetPort: 8080, appProtocol: http}\n  sessionAffinity: None\n  externalTrafficPolicy: Cluster\n  internalTrafficPolicy: Cluster\n  ipFamilies: [IPv4]\n  ipFamilyPolicy: SingleStack\n  allocateLoadBalancerNodePorts: true\nstatus: {loadBalancer: {}}\n";
        assert_eq!(parse(printed).len(), 1);
    }

    /// A pod's and a container's typos were ignored: `prots` left the test server listening on
    /// nothing, `contaners` beside `containers` went unseen, and `spex` said only that `spec`
    /// was missing. They are refused by name, as kubectl's strict validation does.
    #[test]
    fn pod_and_container_typos_are_named() {
        let pod = |spec: &str| {
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: n}}\n{spec}")
        };
        for (text, field, says) in [
            (
                pod("spec:\n  containers: [{name: c, image: x, prots: [{containerPort: 80}]}]\n"),
                "spec.containers[0].prots",
                "ports",
            ),
            (
                pod("spec:\n  containers: [{name: c, image: x}]\n  contaners: []\n"),
                "spec.contaners",
                "containers",
            ),
            (
                pod("spec:\n  containers: [{name: c, image: x, ports: [{containerPort: 80, protcol: UDP}]}]\n"),
                "spec.containers[0].ports[0].protcol",
                "protocol",
            ),
            (
                pod("spec:\n  containers: [{name: c, image: x, env: [{name: A, vaule: b}]}]\n"),
                "spec.containers[0].env[0].vaule",
                "value",
            ),
            (pod("spex: {}\n"), "spex", "spec"),
            (
                "apiVersion: v1\nkind: Namespace\nmetdata: {name: n}\n".to_string(),
                "metdata",
                "metadata",
            ),
            (
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: n}\nspec:\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    spec: {containers: [{name: c, image: x}], nodeSelecter: {a: b}}\n".to_string(),
                "spec.template.spec.nodeSelecter",
                "nodeSelector",
            ),
        ] {
            let e = parse_err(&text);
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(&format!("did you mean {says:?}")), "{e}");
        }
        // What a real pod carries parses: every PodSpec and Container field, and status.
        let full = pod("spec:\n  restartPolicy: Always\n  nodeSelector: {a: b}\n  tolerations: []\n  volumes: []\n  securityContext: {}\n  containers:\n  - name: c\n    image: x\n    imagePullPolicy: IfNotPresent\n    command: [sh]\n    args: [-c, true]\n    resources: {limits: {cpu: 1}}\n    readinessProbe: {tcpSocket: {port: 80}}\n    volumeMounts: []\n    ports: [{containerPort: 80, name: http, protocol: TCP, hostPort: 0}]\n    env: [{name: A, value: b}, {name: B, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]\nstatus: {phase: Running}\n");
        assert_eq!(parse(&full).len(), 1);
    }

    #[test]
    fn a_namespace_may_not_be_called_ext() {
        let e = parse_err("apiVersion: v1\nkind: Namespace\nmetadata: {name: ext}\n");
        assert_eq!(e.field, "metadata.name", "{e}");
        assert!(e.message.contains("reserved"), "{e}");
        assert_eq!(
            parse("apiVersion: v1\nkind: Namespace\nmetadata: {name: ext2}\n").len(),
            1
        );
    }

    /// A file saved with a UTF-8 byte-order mark (as some editors on Windows do) parses: the mark
    /// is not part of the first key (it was: "apiVersion: required value").
    #[test]
    fn a_byte_order_mark_is_skipped() {
        let ms = parse("\u{feff}apiVersion: v1\nkind: Namespace\nmetadata: {name: bom}\n");
        assert_eq!(ms.len(), 1);
        assert_eq!(ms[0].meta().name, "bom");
    }

    /// JSON objects one after the other, as kubectl takes them.
    #[test]
    fn a_stream_of_json_objects_is_a_file_of_documents() {
        let ms = parse(
            r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}
{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "b"}}"#,
        );
        assert_eq!(ms.len(), 2);
        let e = parse_err(
            r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}
{"apiVersion": "v1", "kind": "Namespace", "metadata": {"nme": "b"}}"#,
        );
        assert_eq!((e.document, e.field.as_str()), (2, "metadata.nme"), "{e}");
    }

    #[test]
    fn namespace_annotations() {
        let ms = parse(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-dev\n  labels: {team: web}\n  annotations:\n    ncp/static_snat_ip: 172.60.96.2\n    pacific.dev/segment-cidr: 172.211.0.16/28\n    pacific.dev/supervisor: \"false\"\n",
        );
        let Manifest::Namespace(ns) = &ms[0] else {
            panic!()
        };
        assert_eq!(ns.meta.namespace, None);
        assert_eq!(ns.meta.labels["team"], "web");
        assert_eq!(ns.egress_ip, Some(ip("172.60.96.2")));
        assert_eq!(ns.segment_cidr, Some("172.211.0.16/28".parse().unwrap()));
        assert_eq!(ns.segment_prefix_len, 28);
        assert!(!ns.supervisor);
        let ms = parse("kind: Namespace\napiVersion: v1\nmetadata:\n  name: big\n  annotations:\n    pacific.dev/segment-prefix-length: \"26\"\n");
        let Manifest::Namespace(ns) = &ms[0] else {
            panic!()
        };
        assert_eq!((ns.segment_cidr, ns.segment_prefix_len), (None, 26));
    }

    #[test]
    fn pod_with_node_pinned_ip_and_named_ports() {
        let ms = parse(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: testbox
  namespace: ns-prod
  annotations: {pacific.dev/ip: 172.211.0.132}
spec:
  nodeName: esx-01a.tanzu
  containers:
  - name: box
    image: busybox
    command: ["sleep", "3600"]
    resources: {limits: {cpu: 100m}}
    ports:
    - {name: dns, containerPort: 53, protocol: UDP}
    - {name: web, containerPort: 8080}
status:
  phase: Running
"#,
        );
        let Manifest::Pod(p) = &ms[0] else { panic!() };
        assert_eq!(p.meta.namespace.as_deref(), Some("ns-prod"));
        assert_eq!(p.ip, Some(ip("172.211.0.132")));
        assert_eq!(p.node.as_deref(), Some("esx-01a.tanzu"));
        assert_eq!(
            p.containers[0].ports[0],
            ContainerPort {
                name: Some("dns".into()),
                container_port: 53,
                protocol: Protocol::Udp
            }
        );
        assert_eq!(p.containers[0].ports[1].protocol, Protocol::Tcp);
        // No namespace anywhere: kubectl's "default".
        let ms = parse("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: a, image: x}]}\n");
        assert_eq!(ms[0].meta().namespace.as_deref(), Some("default"));
    }

    #[test]
    fn service_variants() {
        let ms = parse_manifests(
            r#"apiVersion: v1
kind: Service
metadata:
  name: db
  annotations: {pacific.dev/lb-algorithm: least-connections}
spec:
  clusterIP: None
  ports: [{port: 3306}]
  selector: {app: db}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  clusterIP: 172.96.1.90
  sessionAffinity: ClientIP
  externalTrafficPolicy: Local
  ports:
  - {name: http, port: 80, targetPort: web, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  loadBalancerIP: 172.80.88.5
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{port: 443}]
"#,
            Some("ns-dev"),
            None,
        )
        .unwrap();
        let Manifest::Service(db) = &ms[0] else {
            panic!()
        };
        assert_eq!(db.cluster_ip, ClusterIpRequest::Headless);
        assert_eq!(db.algorithm, LbAlgorithm::LeastConnections);
        let Manifest::Service(web) = &ms[1] else {
            panic!()
        };
        assert_eq!(web.cluster_ip, ClusterIpRequest::Pinned(ip("172.96.1.90")));
        assert_eq!(web.session_affinity, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert!(web.external_traffic_local);
        assert_eq!(web.ports[0].target_port, TargetPort::Name("web".into()));
        assert_eq!(web.ports[0].node_port, Some(30080));
        assert_eq!(
            (web.ports[1].protocol, web.ports[1].target_port.clone()),
            (Protocol::Udp, TargetPort::Number(53))
        );
        let Manifest::Service(lb) = &ms[2] else {
            panic!()
        };
        assert_eq!(lb.load_balancer_ip, Some(ip("172.80.88.5")));
        assert_eq!(lb.session_affinity, Some(60));
        assert_eq!(lb.selector, None);
    }

    #[test]
    fn load_balancer_source_ranges_are_parsed_as_the_api_server_does() {
        let svc = |spec: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec: {spec}\n")
        };
        let ms = parse_manifests(
            &svc("{type: LoadBalancer, loadBalancerSourceRanges: [\" 198.51.100.7/24\", 203.0.113.9/32], ports: [{port: 80}]}"),
            None,
            None,
        )
        .unwrap();
        let Manifest::Service(s) = &ms[0] else {
            panic!()
        };
        let shown: Vec<String> = s
            .load_balancer_source_ranges
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["198.51.100.0/24", "203.0.113.9/32"]);
        // An empty list is no restriction, on any type.
        let ms = parse_manifests(
            &svc("{loadBalancerSourceRanges: [], ports: [{port: 80}]}"),
            None,
            None,
        )
        .unwrap();
        let Manifest::Service(s) = &ms[0] else {
            panic!()
        };
        assert!(s.load_balancer_source_ranges.is_empty());
        assert_err(
            &svc("{type: NodePort, loadBalancerSourceRanges: [10.0.0.0/8], ports: [{port: 80}]}"),
            1,
            "spec.loadBalancerSourceRanges",
            "only be used when `type` is LoadBalancer",
        );
        // The annotation stands in when the field is empty.
        let annotated = |ty: &str, ranges: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  annotations: {{service.beta.kubernetes.io/load-balancer-source-ranges: \"{ranges}\"}}\nspec: {{type: {ty}, ports: [{{port: 80}}]}}\n")
        };
        let ms = parse_manifests(
            &annotated("LoadBalancer", "10.0.0.0/8, 198.51.100.9/32"),
            None,
            None,
        )
        .unwrap();
        let Manifest::Service(s) = &ms[0] else {
            panic!()
        };
        assert_eq!(s.load_balancer_source_ranges.len(), 2);
        let field = "metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]";
        assert_err(
            &annotated("ClusterIP", "10.0.0.0/8"),
            1,
            field,
            "only be used when",
        );
        assert_err(
            &annotated("LoadBalancer", "10.0.0.0/8,10.1.1.1"),
            1,
            field,
            "is not a CIDR",
        );
        for bad in ["198.51.100.1", "198.51.100.0/33", "any"] {
            assert_err(
                &svc(&format!("{{type: LoadBalancer, loadBalancerSourceRanges: [{bad}], ports: [{{port: 80}}]}}")),
                1,
                "spec.loadBalancerSourceRanges[0]",
                "is not a CIDR",
            );
        }
    }

    #[test]
    fn session_affinity_timeouts_are_validated_as_kubernetes_does() {
        let svc = |extra: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: ns-dev}}\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n{extra}"
            )
        };
        let timeout = |affinity: &str, config: &str| {
            svc(&format!(
                "  sessionAffinity: {affinity}\n  sessionAffinityConfig: {config}\n"
            ))
        };
        for (seconds, expected) in [("1", 1), ("86400", 86400), ("60", 60)] {
            let ms = parse_manifests(
                &timeout(
                    "ClientIP",
                    &format!("{{clientIP: {{timeoutSeconds: {seconds}}}}}"),
                ),
                None,
                None,
            )
            .unwrap();
            let Manifest::Service(s) = &ms[0] else {
                panic!()
            };
            assert_eq!(s.session_affinity, Some(expected));
        }
        // An empty config takes the default, as the API server's defaulting does.
        let ms = parse_manifests(&timeout("ClientIP", "{clientIP: {}}"), None, None).unwrap();
        let Manifest::Service(s) = &ms[0] else {
            panic!()
        };
        assert_eq!(s.session_affinity, Some(DEFAULT_AFFINITY_TIMEOUT));
        // Empty and null are None, as the API server defaults them.
        for none in ["\"\"", "null"] {
            let ms =
                parse_manifests(&svc(&format!("  sessionAffinity: {none}\n")), None, None).unwrap();
            let Manifest::Service(s) = &ms[0] else {
                panic!()
            };
            assert_eq!(s.session_affinity, None, "{none}");
        }
        const FIELD: &str = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
        for (config, field, says) in [
            ("{clientIP: {timeoutSeconds: 0}}", FIELD, "must be 1-86400"),
            (
                "{clientIP: {timeoutSeconds: 86401}}",
                FIELD,
                "must be 1-86400",
            ),
            (
                "{clientIP: {timeoutSeconds: 4294967297}}",
                FIELD,
                "must be 1-86400",
            ),
            ("{clientIP: {timeoutSeconds: -5}}", FIELD, "non-negative"),
            ("{clientIP: {timeoutSeconds: soon}}", FIELD, "integer"),
            (
                "{clientIP: {timeoutSecond: 60}}",
                "spec.sessionAffinityConfig.clientIP.timeoutSecond",
                "did you mean \"timeoutSeconds\"",
            ),
            (
                "{clientIp: {timeoutSeconds: 60}}",
                "spec.sessionAffinityConfig.clientIp",
                "did you mean \"clientIP\"",
            ),
        ] {
            let e = parse_err(&timeout("ClientIP", config));
            assert_eq!(e.field, field, "{config}: {e}");
            assert!(e.message.contains(says), "{config}: {e}");
        }
        // A timeout without affinity would do nothing: refused, as by the API server.
        for text in [
            timeout("None", "{clientIP: {timeoutSeconds: 60}}"),
            svc("  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n"),
        ] {
            let e = parse_err(&text);
            assert_eq!(e.field, "spec.sessionAffinityConfig", "{e}");
            assert!(e.message.contains("sessionAffinity is None"), "{e}");
        }
    }

    #[test]
    fn endpoints_and_endpoint_slices() {
        let ms = parse(
            r#"apiVersion: v1
kind: Endpoints
metadata: {name: ext, namespace: ns-dev}
subsets:
- addresses: [{ip: 198.51.100.10, targetRef: {kind: Pod, name: hop}}]
  notReadyAddresses: [{ip: 198.51.100.11}]
  ports: [{port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ext-abc12
  namespace: ns-dev
  labels: {kubernetes.io/service-name: ext}
addressType: IPv4
ports: [{name: "", port: 8080, protocol: TCP}]
endpoints:
- addresses: ["198.51.100.12"]
  conditions: {ready: false}
- addresses: ["198.51.100.13"]
"#,
        );
        let Manifest::Endpoints(ep) = &ms[0] else {
            panic!()
        };
        assert_eq!(
            (ep.meta.kind, ep.service.as_str()),
            (Kind::Endpoints, "ext")
        );
        let s = &ep.subsets[0];
        assert_eq!(
            s.addresses[0],
            EndpointAddress {
                ip: ip("198.51.100.10"),
                ready: true,
                target: Some("hop".into())
            }
        );
        assert_eq!(
            s.addresses[1],
            EndpointAddress {
                ip: ip("198.51.100.11"),
                ready: false,
                target: None
            }
        );
        assert_eq!(
            s.ports,
            vec![EndpointPort {
                name: None,
                port: 8080,
                protocol: Protocol::Tcp
            }]
        );
        let Manifest::Endpoints(slice) = &ms[1] else {
            panic!()
        };
        assert_eq!(
            (slice.meta.kind, slice.service.as_str()),
            (Kind::EndpointSlice, "ext")
        );
        let ready: Vec<bool> = slice.subsets[0].addresses.iter().map(|a| a.ready).collect();
        assert_eq!(ready, vec![false, true]);
    }

    #[test]
    fn tanzu_kubernetes_cluster_versions() {
        let v1 = parse(
            r#"apiVersion: run.tanzu.vmware.com/v1alpha1
kind: TanzuKubernetesCluster
metadata:
  name: tkg-cluster-01
  namespace: ns-dev
  annotations:
    pacific.dev/control-plane-ips: "172.211.0.71"
    pacific.dev/control-plane-vip: 172.80.88.3
spec:
  distribution: {version: v1.18}
  topology:
    controlPlane: {count: 3, class: best-effort-small, storageClass: x}
    workers: {count: 2, class: best-effort-small, storageClass: x}
"#,
        );
        let Manifest::TanzuKubernetesCluster(c) = &v1[0] else {
            panic!()
        };
        assert_eq!(c.control_plane_count, 3);
        assert_eq!(c.worker_pools, vec![pool("workers", 2)]);
        assert_eq!(c.control_plane_ips, vec![ip("172.211.0.71")]);
        assert_eq!(c.control_plane_vip, Some(ip("172.80.88.3")));
        let v2 = parse(
            r#"apiVersion: run.tanzu.vmware.com/v1alpha2
kind: TanzuKubernetesCluster
metadata: {name: c2, namespace: ns-dev}
spec:
  topology:
    controlPlane: {replicas: 1, vmClass: best-effort-small, tkr: {reference: {name: v1.21}}}
    nodePools:
    - {name: a, replicas: 2, vmClass: best-effort-small}
    - {name: b, replicas: 1, vmClass: best-effort-small}
"#,
        );
        let Manifest::TanzuKubernetesCluster(c) = &v2[0] else {
            panic!()
        };
        assert_eq!(c.control_plane_count, 1);
        assert_eq!(c.worker_pools, vec![pool("a", 2), pool("b", 1)]);
        // A pool needs a name, a DNS label, its own.
        let tkc = |pools: &str| {
            format!(
                "apiVersion: run.tanzu.vmware.com/v1alpha2\nkind: TanzuKubernetesCluster\n\
                 metadata: {{name: c2, namespace: ns-dev}}\n\
                 spec: {{topology: {{controlPlane: {{replicas: 1}}, nodePools: [{pools}]}}}}\n"
            )
        };
        assert_err(
            &tkc("{replicas: 1}"),
            1,
            "spec.topology.nodePools[0].name",
            "required",
        );
        assert_err(
            &tkc("{name: Big, replicas: 1}"),
            1,
            "spec.topology.nodePools[0].name",
            "RFC 1123",
        );
        assert_err(
            &tkc("{name: a}, {name: a, replicas: 2}"),
            1,
            "spec.topology.nodePools[1].name",
            "Duplicate value",
        );
    }

    fn pool(name: &str, replicas: u32) -> NodePool {
        NodePool {
            name: name.to_string(),
            replicas,
        }
    }

    #[test]
    fn pacific_kinds_and_json() {
        let ms = parse(
            r#"{"apiVersion": "pacific.dev/v1", "kind": "OutsideHost", "metadata": {"name": "hop"},
               "spec": {"address": "198.51.100.10/24", "httpPorts": [80, 8080], "udpPorts": [53]}}
---
apiVersion: pacific.dev/v1
kind: Pools
metadata: {name: default}
spec: {pods: 10.10.0.0/16, ingressStart: 172.80.88.7}
---
apiVersion: pacific.dev/v1
kind: Uplink
metadata: {name: default}
spec: {t0Address: 203.0.113.6, peerAddress: 203.0.113.5, prefixLength: 30}
"#,
        );
        let Manifest::OutsideHost(h) = &ms[0] else {
            panic!()
        };
        assert_eq!(
            (
                h.addr,
                h.prefix_len,
                h.http_ports.clone(),
                h.udp_ports.clone()
            ),
            (ip("198.51.100.10"), 24, vec![80, 8080], vec![53])
        );
        let Manifest::Pools(p) = &ms[1] else { panic!() };
        assert_eq!(p.pools.pods.to_string(), "10.10.0.0/16");
        assert_eq!(p.pools.services, Pools::default().services);
        assert_eq!(p.pools.ingress_start, Some(ip("172.80.88.7")));
        let Manifest::Uplink(u) = &ms[2] else {
            panic!()
        };
        assert_eq!(
            u.uplink,
            Uplink {
                t0_addr: ip("203.0.113.6"),
                peer_addr: ip("203.0.113.5"),
                prefix_len: 30
            }
        );
    }

    #[test]
    fn lists_and_empty_documents() {
        let ms = parse(
            "---\n---\n# only a comment\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n---\n",
        );
        let names: Vec<&str> = ms.iter().map(|m| m.name()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(parse("").is_empty());
        let e = parse_err("apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: A}}\n");
        assert_eq!(
            (e.field.as_str(), e.kind.as_deref()),
            ("items[0].metadata.name", Some("Namespace"))
        );
    }

    fn assert_err(text: &str, document: usize, field: &str, message_part: &str) {
        let e = parse_manifests(text, None, None).unwrap_err();
        assert_eq!((e.document, e.field.as_str()), (document, field), "{e}");
        assert!(e.message.contains(message_part), "{e}");
    }

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\n";

    /// An application's file with its ConfigMap and Secret applies: those two are skipped and
    /// named, the rest is applied; kinds that would run pods or shape traffic stay errors.
    #[test]
    fn kinds_with_no_part_in_the_network_are_skipped_and_named() {
        let text = format!(
            "{NS}apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: app-config, namespace: ok}}\ndata: {{a: b}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: db-pass}}\nstringData: {{p: x}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: ok}}\nspec: {{selector: {{app: web}}, ports: [{{port: 80}}]}}\n"
        );
        let (manifests, skipped) = parse_manifests_and_skipped(&text, None, None).unwrap();
        let kinds: Vec<Kind> = manifests.iter().map(|m| m.kind()).collect();
        assert_eq!(kinds, [Kind::Namespace, Kind::Service]);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(
            skipped[0].starts_with("configmap/app-config skipped"),
            "{skipped:?}"
        );
        assert!(
            skipped[1].starts_with("secret/db-pass skipped"),
            "{skipped:?}"
        );
        let (refs, skipped) = parse_object_refs_and_skipped(&text, None, None).unwrap();
        assert_eq!((refs.len(), skipped.len()), (2, 2));
        // Still checked: the name, and the apiVersion that serves the kind.
        assert_err(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
            1,
            "metadata.name",
            "required",
        );
        assert_err(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: Bad_Name!}\n",
            1,
            "metadata.name",
            "RFC 1123 subdomain",
        );
        assert!(parse_manifests_and_skipped(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kube-root-ca.crt}\n",
            None,
            None
        )
        .is_ok());
        assert_err(
            "apiVersion: apps/v1\nkind: Secret\nmetadata: {name: a}\n",
            1,
            "apiVersion",
            "Secret is served by v1",
        );
        for (api, kind) in [("apps/v1", "StatefulSet"), ("apps/v1", "DaemonSet")] {
            assert_err(
                &format!("apiVersion: {api}\nkind: {kind}\nmetadata: {{name: a}}\n"),
                1,
                "kind",
                &format!("{kind} is not modelled: Pacific runs pods from Pod, Deployment"),
            );
        }
        // A typo in a kind names the kind it likely mistypes, as a field's typo does.
        for (typed, meant) in [("Deploymnet", "Deployment"), ("service", "Service")] {
            assert_err(
                &format!("apiVersion: v1\nkind: {typed}\nmetadata: {{name: a}}\n"),
                1,
                "kind",
                &format!("unknown kind {typed:?} (did you mean {meant:?}? Pacific knows"),
            );
        }
    }

    #[test]
    fn error_messages_name_document_object_and_field() {
        let e = parse_err(&format!(
            "{NS}apiVersion: v1\nkind: Service\nmetadata: {{name: wordpress}}\nspec:\n  ports: [{{port: 70000}}]\n"
        ));
        assert_eq!(
            e.to_string(),
            "document 2 (Service wordpress): spec.ports[0].port: must be 1-65535, got 70000"
        );
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let e = parse_err(&format!(
            "{NS}apiVersion: v1\nkind: Pod\nmetadata: {{name: [a\n"
        ));
        assert_eq!((e.document, e.field.as_str()), (2, ""));
        assert!(
            e.message.starts_with("YAML syntax error") && e.message.contains("line 7"),
            "{e}"
        );
    }

    #[test]
    fn structural_errors() {
        assert_err(
            &format!("{NS}kind: Pod\nmetadata: {{name: a}}\n"),
            2,
            "apiVersion",
            "required",
        );
        assert_err(
            &format!("{NS}apiVersion: v1\nmetadata: {{name: a}}\n"),
            2,
            "kind",
            "required",
        );
        assert_err(
            &format!("{NS}apiVersion: v1\nkind: Pod\nmetadata: {{labels: {{}}}}\n"),
            2,
            "metadata.name",
            "required",
        );
        assert_err(
            &format!("{NS}apiVersion: v1\nkind: Pod\n"),
            2,
            "metadata",
            "required",
        );
        assert_err(
            &format!(
                "{NS}apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: a}}\n"
            ),
            2,
            "kind",
            "Ingress is not modelled: Pacific routes to a Service",
        );
        assert_err(
            &format!(
                "{NS}apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {{name: a}}\n"
            ),
            2,
            "apiVersion",
            "served by apps/v1",
        );
        assert_err("- a\n- b\n", 1, "", "must be a mapping");
    }

    #[test]
    fn type_errors() {
        let dep = |replicas: &str| {
            format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: d}}}}\n  template:\n    metadata: {{labels: {{app: d}}}}\n    spec: {{containers: [{{name: c, image: x}}]}}\n")
        };
        assert!(parse_manifests(&dep("2"), None, None).is_ok());
        assert_err(
            &dep("\"2\""),
            1,
            "spec.replicas",
            "must be an integer, got string \"2\"",
        );
        assert_err(&dep("-1"), 1, "spec.replicas", "non-negative");
        assert_err(&dep("[1]"), 1, "spec.replicas", "got a list");
        assert_err(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  annotations: {pacific.dev/supervisor: true}\n",
            1,
            "metadata.annotations[pacific.dev/supervisor]",
            "quote it",
        );
        assert_err(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, env: [{name: PORT, value: 80}]}]}\n",
            1,
            "spec.containers[0].env[0].value",
            "quote it",
        );
        assert_err(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: {name: c}}\n",
            1,
            "spec.containers",
            "must be a list",
        );
    }

    #[test]
    fn typed_lists_apply_their_items() {
        let ms = parse(
            "apiVersion: v1\nkind: ServiceList\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n  spec: {ports: [{port: 80}]}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\n  spec: {ports: [{port: 81}]}\n",
        );
        assert_eq!(ms.len(), 2);
        assert_err(
            "apiVersion: apps/v1\nkind: DeploymentList\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: B}\n  spec: {ports: [{port: 80}]}\n",
            1,
            "items[0].metadata.name",
            "RFC 1123 label",
        );
        // A kind that only ends in "List", with no items, is still an unknown kind.
        assert_err(
            "apiVersion: v1\nkind: ServiceList\nmetadata: {name: a}\n",
            1,
            "kind",
            "unknown kind",
        );
    }

    #[test]
    fn cluster_ips_pins_the_cluster_ip_or_must_match_it() {
        let svc = |spec: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec: {{{spec}, ports: [{{port: 80}}]}}\n")
        };
        let request = |text: &str| match &parse(text)[0] {
            Manifest::Service(s) => s.cluster_ip,
            _ => panic!("not a service"),
        };
        assert_eq!(
            request(&svc("clusterIPs: [172.96.7.9]")),
            ClusterIpRequest::Pinned(ip("172.96.7.9"))
        );
        assert_eq!(
            request(&svc("clusterIP: 172.96.7.9, clusterIPs: [172.96.7.9]")),
            ClusterIpRequest::Pinned(ip("172.96.7.9"))
        );
        assert_eq!(
            request(&svc("clusterIPs: [None]")),
            ClusterIpRequest::Headless
        );
        assert_err(
            &svc("clusterIP: 172.96.7.7, clusterIPs: [172.96.7.8]"),
            1,
            "spec.clusterIPs[0]",
            "must match spec.clusterIP",
        );
        assert_err(
            &svc("clusterIPs: [172.96.7.7, \"fd00::7\"]"),
            1,
            "spec.clusterIPs[1]",
            "IPv4 only",
        );
    }

    #[test]
    fn pod_and_deployment_names_are_subdomains_as_in_kubernetes() {
        // The API server takes `web.v2` for a pod or deployment (RFC 1123 subdomain, up to 253).
        let pod = |name: &str| {
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec: {{containers: [{{name: c}}]}}\n")
        };
        let deployment = |name: &str| {
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec: {{selector: {{matchLabels: {{app: a}}}}, template: {{metadata: {{labels: {{app: a}}}}, spec: {{containers: [{{name: c}}]}}}}}}\n"
            )
        };
        assert_eq!(parse(&pod("web.v2")).len(), 1);
        assert_eq!(parse(&pod(&"a".repeat(253))).len(), 1);
        assert_eq!(parse(&deployment("web.v2")).len(), 1);
        assert_err(
            &pod(&"a".repeat(254)),
            1,
            "metadata.name",
            "longer than 253",
        );
        assert_err(&pod("web..v2"), 1, "metadata.name", "RFC 1123 subdomain");
        assert_err(&pod("web.-v2"), 1, "metadata.name", "RFC 1123 subdomain");
        assert_err(&pod("Web"), 1, "metadata.name", "RFC 1123 subdomain");
        assert_err(&deployment("wéb"), 1, "metadata.name", "RFC 1123 subdomain");
        // A Service's name stays an RFC 1035 label, a Namespace's an RFC 1123 label.
        assert_err(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web.v2}\nspec: {ports: [{port: 80}]}\n",
            1,
            "metadata.name",
            "RFC 1123 label",
        );
        assert_err(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: team.a}\n",
            1,
            "metadata.name",
            "RFC 1123 label",
        );
    }

    #[test]
    fn name_errors() {
        assert_err(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: NS-Dev}\n",
            1,
            "metadata.name",
            "RFC 1123",
        );
        assert_err(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: -dev}\n",
            1,
            "metadata.name",
            "start and end",
        );
        let long = "a".repeat(64);
        assert_err(
            &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {long}}}\n"),
            1,
            "metadata.name",
            "longer than 63",
        );
        assert_err(
            "apiVersion: v1\nkind: Service\nmetadata: {name: 1web}\nspec: {ports: [{port: 80}]}\n",
            1,
            "metadata.name",
            "RFC 1035",
        );
        assert_err("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: Bad_ns}\nspec: {containers: [{name: c}]}\n", 1, "metadata.namespace", "RFC 1123");
        assert_err("apiVersion: v1\nkind: Pod\nmetadata: {name: a, labels: {app: \"a b\"}}\nspec: {containers: [{name: c}]}\n", 1, "metadata.labels[app]", "alphanumeric");
        assert_err("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, ports: [{name: HTTP, containerPort: 80}]}]}\n", 1, "spec.containers[0].ports[0].name", "lower case");
    }

    #[test]
    fn port_protocol_and_service_errors() {
        let svc = |spec: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec: {spec}\n")
        };
        assert_err(
            &svc("{ports: [{port: 0}]}"),
            1,
            "spec.ports[0].port",
            "must be 1-65535, got 0",
        );
        assert_err(
            &svc("{ports: [{port: \"80\"}]}"),
            1,
            "spec.ports[0].port",
            "port number",
        );
        assert_err(
            &svc("{ports: [{port: 80, protocol: SCTP}]}"),
            1,
            "spec.ports[0].protocol",
            "SCTP is not supported",
        );
        assert_err(
            &svc("{ports: [{port: 80, protocol: tcp}]}"),
            1,
            "spec.ports[0].protocol",
            "TCP or UDP",
        );
        assert_err(
            &svc("{ports: [{port: 80, targetPort: \"8080\"}]}"),
            1,
            "spec.ports[0].targetPort",
            "at least one letter",
        );
        assert_err(
            &svc("{ports: [{port: 80, targetPort: 65536}]}"),
            1,
            "spec.ports[0].targetPort",
            "1-65535",
        );
        assert_err(
            &svc("{ports: [{port: 80, nodePort: 30080}]}"),
            1,
            "spec.ports[0].nodePort",
            "ClusterIP",
        );
        assert_err(
            &svc("{type: NodePort, ports: [{port: 80, nodePort: 80}]}"),
            1,
            "spec.ports[0].nodePort",
            "30000-32767",
        );
        assert_err(
            &svc("{ports: [{port: 80}, {port: 81}]}"),
            1,
            "spec.ports[0].name",
            "more than one port",
        );
        assert_err(
            &svc("{ports: [{name: a, port: 80}, {name: b, port: 80}]}"),
            1,
            "spec.ports[1].port",
            "duplicate port 80/TCP",
        );
        assert_err(&svc("{}"), 1, "spec.ports", "required");
        assert_err(
            &svc("{type: LoadBalancer, clusterIP: None, ports: [{port: 80}]}"),
            1,
            "spec.clusterIP",
            "may not be None",
        );
        assert_err(
            &svc("{clusterIP: 172.96.1.300, ports: [{port: 80}]}"),
            1,
            "spec.clusterIP",
            "not an IPv4 address",
        );
        assert_err(
            &svc("{loadBalancerIP: 172.80.88.5, ports: [{port: 80}]}"),
            1,
            "spec.loadBalancerIP",
            "LoadBalancer",
        );
        assert_err(
            &svc("{type: ExternalName, ports: [{port: 80}]}"),
            1,
            "spec.type",
            "not supported",
        );
        let e = parse_err("apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  annotations: {pacific.dev/lb-algorithm: random}\nspec: {ports: [{port: 80}]}\n");
        assert_eq!(e.field, "metadata.annotations[pacific.dev/lb-algorithm]");
    }

    #[test]
    fn address_errors() {
        assert_err(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  annotations: {pacific.dev/segment-cidr: 172.211.0.17/28}\n",
            1,
            "metadata.annotations[pacific.dev/segment-cidr]",
            "host bits",
        );
        assert_err(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  annotations: {ncp/static_snat_ip: 172.60.96}\n",
            1,
            "metadata.annotations[ncp/static_snat_ip]",
            "not an IPv4 address",
        );
        assert_err(
            "apiVersion: pacific.dev/v1\nkind: Pools\nmetadata: {name: p}\nspec: {pods: 172.211.0.0}\n",
            1,
            "spec.pods",
            "not a CIDR",
        );
        assert_err(
            "apiVersion: pacific.dev/v1\nkind: OutsideHost\nmetadata: {name: h}\nspec: {address: 198.51.100.0/24}\n",
            1,
            "spec.address",
            "network or broadcast",
        );
        assert_err(
            "apiVersion: pacific.dev/v1\nkind: Uplink\nmetadata: {name: u}\nspec: {t0Address: 203.0.113.2, peerAddress: 198.51.100.1}\n",
            1,
            "spec.peerAddress",
            "not on the T0's subnet",
        );
        assert_err(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  annotations: {pacific.dev/ip: nope}\nspec: {containers: [{name: c}]}\n",
            1,
            "metadata.annotations[pacific.dev/ip]",
            "not an IPv4 address",
        );
    }

    #[test]
    fn deployment_errors() {
        let dep = |selector: &str, labels: &str| {
            format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec:\n  selector: {selector}\n  template:\n    metadata: {{labels: {labels}}}\n    spec: {{containers: [{{name: c}}]}}\n")
        };
        assert_err(
            &dep("{matchLabels: {app: d}}", "{app: e}"),
            1,
            "spec.template.metadata.labels",
            "does not match",
        );
        assert_err(
            &dep("{matchLabels: {}}", "{app: e}"),
            1,
            "spec.selector.matchLabels",
            "empty selector",
        );
        assert_err(
            &dep(
                "{matchExpressions: [{key: app, operator: In, values: [d]}]}",
                "{app: d}",
            ),
            1,
            "spec.selector.matchExpressions",
            "not supported",
        );
        assert_err(
            &dep("{matchLabels: {app: d}}", "{app: d}").replace("[{name: c}]", "[]"),
            1,
            "spec.template.spec.containers",
            "at least one",
        );
        assert_err(
            &dep("{matchLabels: {app: d}}", "{app: d}")
                .replace("[{name: c}]", "[{name: c}, {name: c}]"),
            1,
            "spec.template.spec.containers[1].name",
            "duplicate",
        );
    }

    #[test]
    fn namespace_mismatch_duplicates_and_cluster_scope() {
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: ns-prod}\nspec: {containers: [{name: c}]}\n";
        let e = parse_manifests(pod, Some("ns-dev"), None).unwrap_err();
        assert_eq!((e.document, e.field.as_str()), (1, "metadata.namespace"));
        assert!(
            e.message
                .contains("\"ns-prod\" does not match the namespace \"ns-dev\""),
            "{e}"
        );
        assert!(parse_manifests(pod, Some("ns-prod"), None).is_ok());

        let e = parse_err(&format!("{NS}{NS}"));
        assert_eq!((e.document, e.field.as_str()), (2, "metadata.name"));
        assert!(
            e.message
                .contains("duplicate Namespace ok (also in document 1)"),
            "{e}"
        );
        // Within one List, the items are named by their place.
        let list = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: ok}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: ok}}\n";
        let e = parse_err(&format!("{NS}{list}"));
        assert_eq!(
            (e.document, e.field.as_str()),
            (2, "items[0].metadata.name")
        );
        assert!(
            e.message
                .contains("duplicate Namespace ok (also in document 1)"),
            "{e}"
        );
        let e = parse_err(list);
        assert_eq!(
            (e.document, e.field.as_str()),
            (1, "items[1].metadata.name")
        );
        assert!(
            e.message
                .contains("duplicate Namespace ok (also in document 1, items[0])"),
            "{e}"
        );
        // Same name, different kinds or namespaces: fine.
        let other = pod.replace("ns-prod", "ns-dev");
        assert_eq!(parse(&format!("{pod}---\n{other}")).len(), 2);

        let e = parse_manifests(NS, Some("ns-dev"), Some("tkg-cluster-01")).unwrap_err();
        assert_eq!(e.field, "kind");
        let e = parse_manifests(pod, None, Some("tkg-cluster-01")).unwrap_err();
        assert_eq!(e.field, "metadata.namespace");
    }

    #[test]
    fn yaml_merge_keys_apply() {
        let ms = parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - &base {name: a, image: x, ports: [{containerPort: 80}]}\n  - <<: *base\n    name: b\n",
        );
        let Manifest::Pod(p) = &ms[0] else { panic!() };
        assert_eq!(p.containers[1].name, "b");
        assert_eq!(p.containers[1].ports[0].container_port, 80);
    }

    #[test]
    fn kinds_parse_like_kubectl() {
        assert_eq!(Kind::parse("svc"), Some(Kind::Service));
        assert_eq!(Kind::parse("Deployments.apps"), Some(Kind::Deployment));
        assert_eq!(Kind::parse("tkc"), Some(Kind::TanzuKubernetesCluster));
        assert_eq!(Kind::parse("ingress"), None);
        assert_eq!(Kind::Deployment.resource(), "deployment.apps");
    }

    const NETPOL: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: shop}\n";

    fn policy(spec: &str) -> NetworkPolicyRequest {
        match parse(&format!("{NETPOL}spec:\n{spec}")).pop() {
            Some(Manifest::NetworkPolicy(p)) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_network_policy_reads_selectors_peers_and_ports() {
        let p = policy(
            "  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
      namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [a, b]}]}
    - ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}
    ports:
    - {port: mysql}
    - {protocol: UDP, port: 5000, endPort: 5010}
  - {}
",
        );
        assert_eq!(p.meta.namespace.as_deref(), Some("shop"));
        assert_eq!(
            p.pod_selector.match_labels.get("app").map(String::as_str),
            Some("db")
        );
        assert!(p.egress.is_none(), "no egress: not an Egress policy");
        let rules = p.ingress.unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[1],
            PolicyRule {
                peers: vec![],
                ports: vec![]
            }
        );
        let PolicyPeer::Pods {
            pod_selector: Some(_),
            namespace_selector: Some(ns),
        } = &rules[0].peers[0]
        else {
            panic!("{:?}", rules[0].peers[0])
        };
        assert_eq!(ns.match_expressions[0].operator, SelectorOperator::In);
        assert_eq!(
            rules[0].peers[1],
            PolicyPeer::IpBlock {
                cidr: "198.51.100.0/24".parse().unwrap(),
                except: vec!["198.51.100.128/25".parse().unwrap()],
            }
        );
        assert_eq!(
            rules[0].ports,
            vec![
                PolicyPort {
                    protocol: Protocol::Tcp,
                    port: Some(TargetPort::Name("mysql".into())),
                    end_port: None
                },
                PolicyPort {
                    protocol: Protocol::Udp,
                    port: Some(TargetPort::Number(5000)),
                    end_port: Some(5010)
                },
            ]
        );
    }

    #[test]
    fn policy_types_default_as_kubernetes_has_them() {
        // Ingress always; Egress when egress rules are given; a missing list allows nothing.
        let p = policy("  podSelector: {}\n");
        assert_eq!((p.ingress, p.egress), (Some(vec![]), None));
        let p = policy("  podSelector: {}\n  egress: [{}]\n");
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress.map(|e| e.len()), Some(1));
        let p = policy("  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{}]\n");
        assert_eq!((p.ingress, p.egress), (None, Some(vec![])));
    }

    #[test]
    fn an_empty_policy_types_list_defaults_as_a_missing_one() {
        // The API server defaults `policyTypes: []` as it defaults a missing list: the
        // policy still isolates its pods for Ingress (and for Egress with egress rules).
        let p = policy("  podSelector: {}\n  policyTypes: []\n");
        assert_eq!((p.ingress, p.egress), (Some(vec![]), None));
        let p = policy("  podSelector: {}\n  policyTypes: []\n  egress: [{}]\n");
        assert_eq!(
            (p.ingress.map(|i| i.len()), p.egress.map(|e| e.len())),
            (Some(0), Some(1))
        );
    }

    /// An ipBlock with host bits set is the prefix it lies in, as the API server takes it
    /// (where a segment's CIDR with host bits is an error: Pacific allocates from it).
    #[test]
    fn an_ip_block_with_host_bits_is_the_prefix_it_lies_in() {
        let p = policy(
            "  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 198.51.100.7/24, except: [198.51.100.200/25]}
",
        );
        assert_eq!(
            p.ingress.unwrap()[0].peers[0],
            PolicyPeer::IpBlock {
                cidr: "198.51.100.0/24".parse().unwrap(),
                except: vec!["198.51.100.128/25".parse().unwrap()],
            }
        );
    }

    #[test]
    fn network_policy_errors_name_the_field() {
        for (spec, field, message) in [
            ("  podSelector: {}\n  policyTypes: [Both]\n", "spec.policyTypes[0]", "Ingress or Egress"),
            ("  ingress: [{from: [{}]}]\n", "spec.ingress[0].from[0]", "must specify a peer"),
            (
                "  ingress: [{from: [{ipBlock: {cidr: 198.51.100.0/24}, podSelector: {}}]}]\n",
                "spec.ingress[0].from[0].ipBlock",
                "may not be specified",
            ),
            (
                "  egress: [{to: [{ipBlock: {cidr: 198.51.100.0/24, except: [203.0.113.0/24]}}]}]\n",
                "spec.egress[0].to[0].ipBlock.except[0]",
                "strict subset",
            ),
            (
                "  egress: [{to: [{ipBlock: {cidr: \"2001:db8::/32\", except: [\"fd00::/8\"]}}]}]\n",
                "spec.egress[0].to[0].ipBlock.except[0]",
                "strict subset",
            ),
            ("  egress: [{to: [{ipBlock: {cidr: \"2001:db8::/129\"}}]}]\n", "spec.egress[0].to[0].ipBlock.cidr", "not a CIDR"),
            ("  ingress: [{ports: [{port: 80, endPort: 70}]}]\n", "spec.ingress[0].ports[0].endPort", "greater than"),
            ("  ingress: [{ports: [{port: http, endPort: 90}]}]\n", "spec.ingress[0].ports[0].endPort", "numeric"),
            ("  ingress: [{ports: [{protocol: SCTP}]}]\n", "spec.ingress[0].ports[0].protocol", "SCTP"),
            ("  ingress: [{form: []}]\n", "spec.ingress[0].form", "did you mean \"from\""),
            (
                "  podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}\n",
                "spec.podSelector.matchExpressions[0]",
                "may not be specified",
            ),
        ] {
            let e = parse_err(&format!("{NETPOL}spec:\n{spec}"));
            assert_eq!(
                (e.document, e.kind.as_deref(), e.name.as_deref(), e.field.as_str()),
                (1, Some("NetworkPolicy"), Some("np"), field),
                "{e}"
            );
            assert!(e.message.contains(message), "{e}");
        }
    }
}
