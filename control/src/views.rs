//! Read-only methods of the control socket (`*.list`): the state and the dataplane as rows.
//!
//! Rows are JSON objects with the fields the CLI prints (and more, for scripts); the CLI shapes
//! them into `kubectl`-style tables. Nothing here changes anything.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use parking_lot::Mutex;
use serde_json::{json, Value};

use pacific_dataplane::conntrack::Dir;
use pacific_dataplane::pipeline::Pipeline;
use pacific_dataplane::ports::Dataplane;
use pacific_dataplane::tables::{
    Direction, Gateway, NextHop, PortId, PortKind, Route, RouteOrigin, RuleAction, Tables,
};

use crate::compile::PortOwner;
use crate::model::objects::{split_key, ServiceType, State};
use crate::rpc::{self, code, RpcError};

pub struct ViewContext<'a> {
    pub state: &'a State,
    pub tables: &'a Tables,
    pub pipeline: &'a Pipeline,
    pub dataplane: &'a Mutex<Dataplane>,
    pub ports: &'a BTreeMap<PortOwner, PortId>,
    pub netns_of: &'a dyn Fn(&str, &str) -> Option<String>,
    pub now: u64,
    pub upstream_netns: &'a str,
    /// When each route of the published tables first appeared (`route_times`).
    pub route_since: &'a RouteSince,
    /// Why a pod has no port: what building it failed with.
    pub pod_errors: &'a BTreeMap<(String, String), String>,
}

/// When each route (by `route_key`) entered the tables, for its uptime in `pacific get routes`.
pub type RouteSince = BTreeMap<String, u64>;

/// A route as `pacific get routes` tells it apart: its gateway, prefix, next hop (by name, as
/// ids are reused) and origin. A route that moves (a VIP handed to another namespace) is new.
fn route_key(t: &Tables, g: &Gateway, r: &Route) -> String {
    let next = match r.next_hop {
        NextHop::Segment(s) => t.segment(s).map(|s| s.name.clone()),
        NextHop::Gateway(id) => t.gateway(id).map(|n| n.name.clone()),
        NextHop::Uplink(p) => Some(match t.port(p).map(|p| &p.kind) {
            Some(&PortKind::Uplink { peer_ip, .. }) => format!("uplink {peer_ip}"),
            _ => "uplink".to_string(),
        }),
        NextHop::Local => Some("local".to_string()),
    };
    format!(
        "{} {} {} {:?}",
        g.name,
        r.prefix,
        next.unwrap_or_default(),
        r.origin
    )
}

/// The times of `t`'s routes: those already in `old` keep theirs, new ones start `now`.
pub fn route_times(t: &Tables, old: &RouteSince, now: u64) -> RouteSince {
    t.gateways
        .iter()
        .flat_map(|g| g.routes.routes().into_iter().map(move |r| (g, r)))
        .map(|(g, r)| {
            let key = route_key(t, g, &r);
            let since = old.get(&key).copied().unwrap_or(now);
            (key, since)
        })
        .collect()
}

pub fn dispatch(ctx: &ViewContext, method: &str, params: &Value) -> Result<Value, RpcError> {
    match method {
        "namespaces.list" => namespaces(ctx, params),
        "pods.list" => pods(ctx, params),
        "segments.list" => segments(ctx, params),
        "routes.list" => routes(ctx, params),
        "ports.list" => ports(ctx, params),
        "services.list" => services(ctx, params),
        "dfw.list" => dfw(ctx, params),
        "nat.list" => nat(ctx, params),
        "outside.list" => outside(ctx, params),
        "deployments.list" => deployments(ctx, params),
        "tkc.list" => tkc(ctx, params),
        "networkpolicies.list" => network_policies(ctx, params),
        _ => Err(RpcError::new(
            code::METHOD_NOT_FOUND,
            format!("no method {method:?} (see README, Control protocol)"),
        )),
    }
}

struct Filter {
    namespace: Option<String>,
    name: Option<String>,
}

fn filter(params: &Value) -> Result<Filter, RpcError> {
    rpc::only_params(params, &["namespace", "name"])?;
    Ok(Filter {
        namespace: rpc::opt_param(params, "namespace")?,
        name: rpc::opt_param(params, "name")?,
    })
}

impl Filter {
    fn keeps(&self, namespace: &str, name: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| {
            n == namespace || split_key(namespace).0 == n && namespace.contains('/')
        }) && self.name.as_deref().is_none_or(|n| n == name)
    }

    fn check_namespace(&self, state: &State) -> Result<(), RpcError> {
        match &self.namespace {
            Some(ns) if !state.namespaces.contains_key(ns) => Err(RpcError::not_found(
                "namespace",
                format!("namespace {ns:?} not found"),
            )),
            _ => Ok(()),
        }
    }
}

fn items(rows: Vec<Value>) -> Value {
    json!({ "items": rows })
}

fn namespaces(ctx: &ViewContext, params: &Value) -> Result<Value, RpcError> {
    let f = filter(params)?;
    let rows = ctx
        .state
        .namespaces
        .values()
        .filter(|ns| {
            f.name.as_deref().is_none_or(|n| n == ns.name)
                && f.namespace.as_deref().is_none_or(|n| n == ns.name)
        })
        .map(|ns| {
            let t1 = ctx
                .tables
                .gateways
                .iter()
                .find(|g| g.name == format!("t1-{}", ns.name));
            json!({
                "name": ns.name,
                "status": "Active",
                "created": ns.created,
                "segment": ns.segment.name,
                "subnet": ns.segment.subnet.to_string(),
                "gateway": ns.segment.gateway,
                "egress_ip": ns.egress_ip,
                "t1": t1.map(|g| g.name.clone()),
                "t1_transit_ip": t1.map(|g| g.transit_ip),
                "supervisor": ns.supervisor,
                "labels": ns.labels,
                "annotations": ns.annotations,
            })
        })
        .collect();
    Ok(items(rows))
}

fn pods(ctx: &ViewContext, params: &Value) -> Result<Value, RpcError> {
    let f = filter(params)?;
    f.check_namespace(ctx.state)?;
    let rows = ctx
        .state
        .pods
        .values()
        .filter(|p| f.keeps(&p.namespace, &p.name))
        .map(|p| {
            let port = ctx
                .ports
                .get(&PortOwner::Pod(p.namespace.clone(), p.name.clone()));
            let netns = (ctx.netns_of)(&p.namespace, &p.name);
            let error = ctx
                .pod_errors
                .get(&(p.namespace.clone(), p.name.clone()))
                .filter(|_| port.is_none());
            json!({
                "namespace": p.namespace,
                "name": p.name,
                "ready": if port.is_some() { "1/1" } else { "0/1" },
                "status": pod_status(port.is_some(), error.is_some()),
                "message": error,
                "restarts": 0,
                "created": p.created,
                "ip": p.ip,
                "node": p.node,
                "port": port.map(|id| format!("port-{id}")),
                "mac": p.mac.to_string(),
                "segment": p.segment,
                "labels": p.labels,
                "netns": netns,
                "owner": p.owner,
                "tkg_node": p.tkg_node,
                "images": p.containers.iter().map(|c| c.image.clone()).collect::<Vec<_>>(),
                "annotations": p.annotations,
                // What `describe pod` lists of each container (its env stays out of listings).
                "containers": p.containers.iter().map(|c| json!({
                    "name": c.name,
                    "image": c.image,
                    "ports": c.ports,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(items(rows))
}

/// A pod's STATUS: Running with its port, Pending until it has one, and after building it
/// failed (a TAP that could not be made) kubectl's word for a container that could not be
/// created, so that no one takes it for one on its way up; `message` says why.
fn pod_status(port: bool, failed: bool) -> &'static str {
    match (port, failed) {
        (true, _) => "Running",
        (false, true) => "CreateContainerError",
        (false, false) => "Pending",
    }
}

fn segments(ctx: &ViewContext, params: &Value) -> Result<Value, RpcError> {
    let f = filter(params)?;
    f.check_namespace(ctx.state)?;
    let rows = ctx
        .state
        .segments()
        .into_iter()
        .filter(|s| {
            f.namespace.as_deref().is_none_or(|n| n == s.namespace)
                && f.name.as_deref().is_none_or(|n| n == s.segment.name)
        })
        .map(|s| {
            let ports = ctx
                .tables
                .segments
                .iter()
                .find(|t| t.name == s.segment.name)
                .map_or(0, |t| t.ports.len());
            json!({
                "name": s.segment.name,
                "namespace": s.namespace,
                "cluster": s.cluster,
                "subnet": s.segment.subnet.to_string(),
                "gateway": s.segment.gateway,
                "t1": format!("t1-{}", s.namespace),
                "ports": ports,
            })
        })
        .collect();
    Ok(items(rows))
}

fn origin_code(origin: RouteOrigin) -> &'static str {
    match origin {
        RouteOrigin::Connected => "C",
        RouteOrigin::Static => "S",
        RouteOrigin::LbVip => "t1l",
        RouteOrigin::Nat => "t1n",
        RouteOrigin::T1Connected => "t1c",
    }
}

fn routes(ctx: &ViewContext, params: &Value) -> Result<Value, RpcError> {
    rpc::only_params(params, &["namespace"])?;
    let ns: Option<String> = rpc::opt_param(params, "namespace")?;
    let gateway = match &ns {
        None => ctx.tables.gateways.first(),
        Some(ns) => {
            if !ctx.state.namespaces.contains_key(ns) {
                return Err(RpcError::not_found(
                    "namespace",
                    format!("namespace {ns:?} not found"),
                ));
            }
            ctx.tables
                .gateways
                .iter()
                .find(|g| g.name == format!("t1-{ns}"))
        }
    };
    let Some(g) = gateway else {
        return Ok(json!({"gateway": null, "items": []}));
    };
    let rows = g
        .routes
        .routes()
        .into_iter()
        .map(|r| {
            let (via, interface, connected) = match r.next_hop {
                NextHop::Segment(s) => (None, ctx.tables.segment(s).map(|s| s.name.clone()), true),
                NextHop::Gateway(id) => {
                    let next = ctx.tables.gateway(id);
                    let via = next.map(|n| {
                        if g.id == 0 {
                            n.transit_ip
                        } else {
                            g.transit_peer
                        }
                    });
                    // A transit link is directly connected; routes learned over it are not.
                    (
                        via,
                        next.map(|n| n.name.clone()),
                        r.origin == RouteOrigin::Connected,
                    )
                }
                NextHop::Uplink(p) => {
                    let peer = ctx.tables.port(p).and_then(|p| match p.kind {
                        PortKind::Uplink { peer_ip, .. } => Some(peer_ip),
                        PortKind::Pod { .. } => None,
                    });
                    let connected = r.origin == RouteOrigin::Connected;
                    (
                        if connected { None } else { peer },
                        Some("uplink".to_string()),
                        connected,
                    )
                }
                NextHop::Local => (None, Some("local".to_string()), false),
            };
            let (distance, metric) = match r.origin {
                RouteOrigin::Connected => (0, 0),
                RouteOrigin::Static => (1, 0),
                _ => (3, 0),
            };
            json!({
                "code": origin_code(r.origin),
                "created": ctx.route_since.get(&route_key(ctx.tables, g, &r)),
                "prefix": r.prefix.to_string(),
                "via": via,
                "interface": interface,
                "connected": connected,
                "local": r.next_hop == NextHop::Local,
                "distance": distance,
                "metric": metric,
            })
        })
        .collect::<Vec<_>>();
    Ok(
        json!({"gateway": g.name, "upstream_netns": ctx.upstream_netns, "created": ctx.state.namespaces.values().map(|n| n.created).min(), "items": rows}),
    )
}

fn ports(ctx: &ViewContext, params: &Value) -> Result<Value, RpcError> {
    rpc::only_params(params, &["namespace"])?;
    let ns: Option<String> = rpc::opt_param(params, "namespace")?;
    Filter {
        namespace: ns.clone(),
        name: None,
    }
    .check_namespace(ctx.state)?;
    let counters = ctx.dataplane.lock().all_counters();
    let rows = counters
        .into_iter()
        .filter(|(id, _)| {
            // With a namespace, its pods' ports (named `NS/POD`) only.
            ns.as_deref().is_none_or(|ns| {
                ctx.tables.port(*id).is_some_and(|p| {
                    matches!(p.kind, PortKind::Pod { .. })
                        && p.name.split_once('/').is_some_and(|(n, _)| n == ns)
                })
            })
        })
        .map(|(id, c)| {
            let snap = c.snapshot();
            let port = ctx.tables.port(id);
            let (kind, ip) = match port.map(|p| &p.kind) {
                Some(PortKind::Pod { ip, .. }) => ("pod", Some(*ip)),
                Some(PortKind::Uplink { addr, .. }) => ("uplink", Some(*addr)),
                None => ("detached", None),
            };
            let drops: BTreeMap<&str, u64> = snap.drops.iter().copied().collect();
            json!({
                "id": id,
                "name": port.map_or_else(|| format!("port-{id}"), |p| p.name.clone()),
                "kind": kind,
                "ip": ip,
                "peer_mac": port.map(|p| p.peer_mac.to_string()),
                "rx_packets": snap.rx_packets,
                "rx_bytes": snap.rx_bytes,
                "tx_packets": snap.tx_packets,
                "tx_bytes": snap.tx_bytes,
                "drops": drops,
            })
        })
        .collect();
    Ok(items(rows))
}

fn services(ctx: &ViewContext, params: &Value) -> Result<Value, RpcError> {
    let f = filter(params)?;
    f.check_namespace(ctx.state)?;
    let rows = ctx
        .state
        .services
        .iter()
        .filter(|((key_ns, name), _)| f.keeps(key_ns, name))
        .map(|((key_ns, _), s)| {
            let ports: Vec<String> = s
                .ports
                .iter()
                .map(|p| match p.node_port {
                    Some(np) if s.service_type != ServiceType::ClusterIP => format!("{}:{}/{}", p.port, np, p.protocol),
                    _ => format!("{}/{}", p.port, p.protocol),
                })
                .collect();
            // As the tables have them: a pod without a port (it could not be built) is none.
            let portless = |ip: Ipv4Addr| {
                ctx.state.pods.values().any(|p| {
                    let owner = PortOwner::Pod(p.namespace.clone(), p.name.clone());
                    p.ip == ip && !ctx.ports.contains_key(&owner)
                })
            };
            let endpoints: Vec<String> = ctx
                .state
                .endpoints
                .iter()
                .filter(|e| e.namespace == *key_ns && e.service == s.name)
                .flat_map(|e| {
                    e.endpoints
                        .iter()
                        .filter(|x| x.ready && !portless(x.ip))
                        .map(|x| format!("{}:{}", x.ip, x.port))
                })
                .collect();
            json!({
                "namespace": key_ns,
                "name": s.name,
                "type": s.service_type.to_string(),
                "cluster_ip": s.cluster_ip.map_or("None".to_string(), |ip| ip.to_string()),
                "external_ip": s.load_balancer_ip,
                "ports": ports.join(","),
                "created": s.created,
                "labels": s.labels,
                "annotations": s.annotations,
                "selector": s.selector,
                // Each port as the manifest has it (`describe svc`'s Port, TargetPort, NodePort).
                "port_specs": s.ports,
                "endpoints": endpoints,
                // The SLB's algorithm is the service's; the DLB always hashes (Maglev). Under
                // ClientIP affinity both hash a client's address for its first connection and
                // then keep it on that backend (remembered for timeoutSeconds of idleness).
                "algorithm": s.algorithm.to_string(),
                "cluster_ip_algorithm": if s.session_affinity.is_some() { "maglev-client-ip" } else { "maglev" },
                "session_affinity": if s.session_affinity.is_some() { "ClientIP" } else { "None" },
                "session_affinity_timeout_seconds": s.session_affinity,
                "external_traffic_policy": if s.external_traffic_local { "Local" } else { "Cluster" },
                "load_balancer_source_ranges": s.load_balancer_source_ranges.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "status": { "loadBalancer": { "ingress": s.load_balancer_ip.map(|ip| vec![json!({"ip": ip})]).unwrap_or_default() } },
            })
        })
        .collect();
    Ok(items(rows))
}

fn nets(list: &[pacific_dataplane::tables::Ipv4Net]) -> String {
    if list.is_empty() {
        "any".to_string()
    } else {
        list.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn dfw(ctx: &ViewContext, params: &Value) -> Result<Value, RpcError> {
    rpc::only_params(params, &["namespace"])?;
    let ns: Option<String> = rpc::opt_param(params, "namespace")?;
    if let Some(ns) = &ns {
        if !ctx.state.namespaces.contains_key(ns) {
            return Err(RpcError::not_found(
                "namespace",
                format!("namespace {ns:?} not found"),
            ));
        }
    }
    let mut rows = Vec::new();
    let mut priority = 0;
    for rules in ctx
        .tables
        .dfw
        .rules_in
        .iter()
        .chain(ctx.tables.dfw.rules_out.iter())
    {
        for r in rules {
            priority += 1;
            if ns.as_deref().is_some_and(|n| n != r.section) {
                continue;
            }
            rows.push(json!({
                "priority": priority,
                "section": r.section,
                "name": r.name,
                "direction": match r.direction { Direction::In => "IN", Direction::Out => "OUT" },
                "sources": nets(&r.sources),
                "destinations": if r.original_destinations.is_empty() { nets(&r.destinations) } else { format!("via VIP {}", nets(&r.original_destinations)) },
                "applied_to": format!("seg-{}", r.section),
                "services": match (r.protocol, r.dst_ports) {
                    (None, _) => "any".to_string(),
                    (Some(p), None) => protocol_name(p),
                    (Some(p), Some((lo, hi))) if lo == hi => format!("{}/{lo}", protocol_name(p)),
                    (Some(p), Some((lo, hi))) => format!("{}/{lo}-{hi}", protocol_name(p)),
                },
                "action": match r.action { RuleAction::Allow => "ALLOW", RuleAction::Drop => "DROP", RuleAction::Reject => "REJECT" },
                "hits": ctx.tables.rule_counters.get(r.counter),
            }));
        }
    }
    Ok(items(rows))
}

fn protocol_name(p: u8) -> String {
    match p {
        1 => "icmp".to_string(),
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        n => n.to_string(),
    }
}

fn nat(ctx: &ViewContext, params: &Value) -> Result<Value, RpcError> {
    rpc::only_params(params, &["namespace", "all"])?;
    let ns: Option<String> = rpc::opt_param(params, "namespace")?;
    let all: bool = rpc::opt_param(params, "all")?.unwrap_or(false);
    Filter {
        namespace: ns.clone(),
        name: None,
    }
    .check_namespace(ctx.state)?;
    let segment_of = |ip: Ipv4Addr| -> Option<String> {
        ctx.state
            .segments()
            .into_iter()
            .find(|s| s.segment.subnet.contains(ip))
            .map(|s| s.namespace.to_string())
    };
    let mut rows = Vec::new();
    for conn in ctx.pipeline.conntrack.snapshot(100_000) {
        let st = &conn;
        let [orig, _] = st.actions;
        if !all && orig.snat.is_none() && orig.dnat.is_none() {
            continue;
        }
        let owner =
            segment_of(conn.original.src).or_else(|| orig.dnat.and_then(|(ip, _)| segment_of(ip)));
        if ns.is_some() && owner != ns {
            continue;
        }
        let kind = match (orig.snat.is_some(), orig.dnat.is_some()) {
            (true, true) => "DNAT+SNAT",
            (true, false) => "SNAT",
            (false, true) => "DNAT",
            (false, false) => "-",
        };
        let o = &conn.original;
        let r = &conn.reply;
        // Sorted by namespace, protocol and the original tuple, addresses as numbers.
        let order = (
            owner.clone(),
            o.protocol,
            o.src,
            o.src_port,
            o.dst,
            o.dst_port,
        );
        rows.push((order, json!({
            "namespace": owner,
            "protocol": protocol_name(o.protocol),
            "original": endpoints(o.protocol, o.src, o.src_port, o.dst, o.dst_port),
            // The reply key, read backwards, is the connection as it leaves translated.
            "translated": endpoints(o.protocol, r.dst, if o.protocol == 1 { r.src_port } else { r.dst_port }, r.src, r.src_port),
            "type": kind,
            "state": if o.protocol == 6 { st.tcp.name().to_string() } else if st.replied { "REPLIED".to_string() } else { "UNREPLIED".to_string() },
            "packets": st.packets[Dir::Original as usize] + st.packets[Dir::Reply as usize],
        })));
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(items(rows.into_iter().map(|(_, row)| row).collect()))
}

/// `a:p -> b:q`, or for ICMP echo `a -> b id N`.
fn endpoints(protocol: u8, src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16) -> String {
    if protocol == 1 {
        format!("{src} -> {dst} id {src_port}")
    } else {
        format!("{src}:{src_port} -> {dst}:{dst_port}")
    }
}

fn outside(ctx: &ViewContext, params: &Value) -> Result<Value, RpcError> {
    rpc::only_params(params, &[])?;
    let rows = ctx
        .state
        .outside_hosts
        .values()
        .map(|h| json!({"name": h.name, "address": format!("{}/{}", h.addr, h.prefix_len), "http_ports": h.http_ports, "udp_ports": h.udp_ports, "created": h.created}))
        .collect();
    Ok(items(rows))
}

fn deployments(ctx: &ViewContext, params: &Value) -> Result<Value, RpcError> {
    let f = filter(params)?;
    f.check_namespace(ctx.state)?;
    let rows = ctx
        .state
        .deployments
        .iter()
        .filter(|((key_ns, name), _)| f.keeps(key_ns, name))
        .map(|((key_ns, _), d)| {
            let ready = ctx.state.pods.values().filter(|p| p.namespace == *key_ns && p.owner.as_deref() == Some(d.name.as_str())).count()
                + ctx.state.cluster_workloads.values().filter(|w| format!("{}/{}", w.namespace, w.cluster) == *key_ns && w.owner.as_deref() == Some(d.name.as_str())).count();
            json!({"namespace": key_ns, "name": d.name, "ready": format!("{ready}/{}", d.replicas), "up_to_date": d.replicas, "available": ready, "created": d.created, "labels": d.labels})
        })
        .collect();
    Ok(items(rows))
}

fn tkc(ctx: &ViewContext, params: &Value) -> Result<Value, RpcError> {
    let f = filter(params)?;
    f.check_namespace(ctx.state)?;
    let rows = ctx
        .state
        .tkg_clusters
        .values()
        .filter(|c| f.keeps(&c.namespace, &c.name))
        .map(|c| json!({"namespace": c.namespace, "name": c.name, "control_plane": c.control_plane_count, "workers": c.worker_count(), "node_pools": c.worker_pools, "segment": c.segment.name, "subnet": c.segment.subnet.to_string(), "created": c.created, "labels": c.labels}))
        .collect();
    Ok(items(rows))
}

fn network_policies(ctx: &ViewContext, params: &Value) -> Result<Value, RpcError> {
    let f = filter(params)?;
    f.check_namespace(ctx.state)?;
    let rows = ctx
        .state
        .network_policies
        .values()
        .filter(|p| f.keeps(&p.namespace, &p.name))
        .map(|p| {
            let mut types = Vec::new();
            if p.ingress.is_some() {
                types.push("Ingress");
            }
            if p.egress.is_some() {
                types.push("Egress");
            }
            json!({"namespace": p.namespace, "name": p.name, "pod_selector": p.pod_selector.describe(), "policy_types": types, "ingress": p.ingress, "egress": p.egress, "created": p.created, "labels": p.labels})
        })
        .collect();
    Ok(items(rows))
}
