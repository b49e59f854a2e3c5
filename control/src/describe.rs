//! `pacific describe`: one object in detail, laid out as `kubectl describe` lays it out, from
//! the rows the daemon's `*.list` methods answer (the same ones `pacific get` prints).

use serde_json::Value;

/// One line of a description: `Key:` and its values (the second and later ones on lines of
/// their own, under the first), or a heading that has none (`Containers:`, `  web:`).
enum Line {
    Field(usize, String, Vec<String>),
    Heading(usize, String),
}

fn field(indent: usize, key: &str, value: impl Into<String>) -> Line {
    Line::Field(indent, key.to_string(), vec![value.into()])
}

/// Lines as kubectl's tabwriter sets them: the values of a run of fields (up to a heading)
/// two spaces after the longest key of the run.
fn render(lines: &[Line]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        match &lines[i] {
            Line::Heading(indent, text) => {
                // An empty heading only ends a run of fields.
                if !text.is_empty() {
                    out.push_str(&format!("{:indent$}{text}\n", ""));
                }
                i += 1;
            }
            Line::Field(..) => {
                let end = lines[i..]
                    .iter()
                    .position(|l| matches!(l, Line::Heading(..)))
                    .map_or(lines.len(), |p| i + p);
                let width = lines[i..end]
                    .iter()
                    .map(|l| match l {
                        Line::Field(indent, key, _) => indent + key.len() + 1,
                        Line::Heading(..) => 0,
                    })
                    .max()
                    .unwrap_or(0)
                    + 2;
                for line in &lines[i..end] {
                    if let Line::Field(indent, key, values) = line {
                        let head = format!("{:indent$}{key}:", "");
                        let mut values = values.iter();
                        let first = values.next().map_or("", String::as_str);
                        out.push_str(format!("{head:<width$}{first}").trim_end());
                        out.push('\n');
                        for more in values {
                            out.push_str(&format!("{:width$}{more}\n", ""));
                        }
                    }
                }
                i = end;
            }
        }
    }
    out
}

/// A JSON value as text: strings bare, null as `<none>`.
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::Null => "<none>".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Labels, annotations or a selector: one `k=v` a line (kubectl's Labels), `<none>` if none.
fn pairs_lines(v: &Value) -> Vec<String> {
    let lines: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, x)| format!("{k}={}", text(x)))
        .collect();
    if lines.is_empty() {
        vec!["<none>".to_string()]
    } else {
        lines
    }
}

/// A selector on one line, `app=web,tier=front` (kubectl's Selector), `<none>` if none.
fn pairs_joined(v: &Value) -> String {
    pairs_lines(v).join(",")
}

/// Endpoints as kubectl's describe shows them: up to three `ip:port`, then how many more.
pub(crate) fn endpoints_text(all: &[String]) -> String {
    match all.len() {
        0 => "<none>".to_string(),
        1..=3 => all.join(","),
        n => format!("{} + {} more...", all[..3].join(","), n - 3),
    }
}

/// `kubectl describe svc`, from a row of `services.list`.
pub fn service(svc: &Value) -> String {
    let kind = text(&svc["type"]);
    let ip = text(&svc["cluster_ip"]);
    let mut lines = vec![
        field(0, "Name", text(&svc["name"])),
        field(0, "Namespace", text(&svc["namespace"])),
        Line::Field(0, "Labels".into(), pairs_lines(&svc["labels"])),
        Line::Field(0, "Annotations".into(), pairs_lines(&svc["annotations"])),
        field(0, "Selector", pairs_joined(&svc["selector"])),
        field(0, "Type", kind.clone()),
        field(0, "IP Family Policy", "SingleStack"),
        field(0, "IP Families", "IPv4"),
        field(0, "IP", ip.clone()),
        field(0, "IPs", ip),
    ];
    let ingress: Vec<String> = svc["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| text(&i["ip"]))
        .collect();
    if !ingress.is_empty() {
        lines.push(field(0, "LoadBalancer Ingress", ingress.join(", ")));
    }
    let endpoints: Vec<String> = svc["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    let ports: Vec<&Value> = svc["port_specs"].as_array().into_iter().flatten().collect();
    // Port names in a column of their own, as kubectl's tabwriter sets them.
    let name_of = |p: &Value| p["name"].as_str().unwrap_or("<unset>").to_string();
    let names = ports.iter().map(|p| name_of(p).len()).max().unwrap_or(0);
    for p in &ports {
        let protocol = text(&p["protocol"]);
        let name = format!("{:<names$}", name_of(p));
        lines.push(field(
            0,
            "Port",
            format!("{name}  {}/{protocol}", text(&p["port"])),
        ));
        lines.push(field(
            0,
            "TargetPort",
            format!("{}/{protocol}", text(&p["target_port"])),
        ));
        if kind != "ClusterIP" {
            if let Some(node_port) = p["node_port"].as_u64() {
                lines.push(field(
                    0,
                    "NodePort",
                    format!("{name}  {node_port}/{protocol}"),
                ));
            }
        }
        // A service of several ports: each port's own endpoints (those of its target port,
        // when that is a number; a named one can be a different number on each pod).
        let own: Vec<String> = match p["target_port"].as_u64() {
            Some(target) if ports.len() > 1 => endpoints
                .iter()
                .filter(|e| e.rsplit_once(':').map(|(_, port)| port) == Some(&target.to_string()))
                .cloned()
                .collect(),
            _ => endpoints.clone(),
        };
        lines.push(field(0, "Endpoints", endpoints_text(&own)));
    }
    lines.push(field(0, "Session Affinity", text(&svc["session_affinity"])));
    if matches!(kind.as_str(), "LoadBalancer" | "NodePort") {
        lines.push(field(
            0,
            "External Traffic Policy",
            text(&svc["external_traffic_policy"]),
        ));
    }
    lines.push(field(0, "Events", "<none>"));
    render(&lines)
}

/// `kubectl describe pod`, from a row of `pods.list`.
pub fn pod(pod: &Value) -> String {
    let status = text(&pod["status"]);
    let ip = text(&pod["ip"]);
    let mut lines = vec![
        field(0, "Name", text(&pod["name"])),
        field(0, "Namespace", text(&pod["namespace"])),
        field(0, "Node", text(&pod["node"])),
        Line::Field(0, "Labels".into(), pairs_lines(&pod["labels"])),
        Line::Field(0, "Annotations".into(), pairs_lines(&pod["annotations"])),
        field(0, "Status", status.clone()),
    ];
    if let Some(message) = pod["message"].as_str() {
        lines.push(field(0, "Message", message));
    }
    lines.extend([
        field(0, "IP", ip.clone()),
        Line::Heading(0, "IPs:".into()),
        field(2, "IP", ip),
        Line::Heading(0, "Containers:".into()),
    ]);
    let running = status == "Running";
    for c in pod["containers"].as_array().into_iter().flatten() {
        lines.push(Line::Heading(2, format!("{}:", text(&c["name"]))));
        lines.push(field(4, "Image", text(&c["image"])));
        let ports: Vec<String> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("{}/{}", text(&p["container_port"]), text(&p["protocol"])))
            .collect();
        match ports.len() {
            0 => lines.push(field(4, "Port", "<none>")),
            1 => lines.push(field(4, "Port", ports[0].clone())),
            _ => lines.push(field(4, "Ports", ports.join(", "))),
        }
        if running {
            lines.push(field(4, "State", "Running"));
        } else {
            lines.push(field(4, "State", "Waiting"));
            lines.push(field(6, "Reason", status.clone()));
        }
        lines.push(field(4, "Ready", if running { "True" } else { "False" }));
        lines.push(field(4, "Restart Count", text(&pod["restarts"])));
    }
    lines.push(Line::Heading(0, String::new()));
    lines.push(field(0, "Events", "<none>"));
    render(&lines)
}

/// `kubectl describe ns`, from a row of `namespaces.list`.
pub fn namespace(ns: &Value) -> String {
    let lines = [
        field(0, "Name", text(&ns["name"])),
        Line::Field(0, "Labels".into(), pairs_lines(&ns["labels"])),
        Line::Field(0, "Annotations".into(), pairs_lines(&ns["annotations"])),
        field(0, "Status", text(&ns["status"])),
    ];
    format!(
        "{}\nNo resource quota.\n\nNo LimitRange resource.\n",
        render(&lines)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A LoadBalancer row as `services.list` answers it for the seed's wordpress.
    fn wordpress() -> Value {
        json!({
            "namespace": "ns-dev", "name": "wordpress", "type": "LoadBalancer",
            "cluster_ip": "10.96.0.11", "external_ip": "172.80.0.2",
            "ports": "80:30080/TCP", "labels": {"app": "wordpress"}, "annotations": {},
            "selector": {"app": "wordpress", "tier": "frontend"},
            "port_specs": [{"name": null, "protocol": "TCP", "port": 80, "target_port": 8080, "node_port": 30080}],
            "endpoints": ["172.211.0.18:8080", "172.211.0.19:8080"],
            "session_affinity": "None", "external_traffic_policy": "Cluster",
            "status": {"loadBalancer": {"ingress": [{"ip": "172.80.0.2"}]}},
        })
    }

    #[test]
    fn a_load_balancer_reads_as_kubectl_describes_it() {
        assert_eq!(
            service(&wordpress()),
            "\
Name:                     wordpress
Namespace:                ns-dev
Labels:                   app=wordpress
Annotations:              <none>
Selector:                 app=wordpress,tier=frontend
Type:                     LoadBalancer
IP Family Policy:         SingleStack
IP Families:              IPv4
IP:                       10.96.0.11
IPs:                      10.96.0.11
LoadBalancer Ingress:     172.80.0.2
Port:                     <unset>  80/TCP
TargetPort:               8080/TCP
NodePort:                 <unset>  30080/TCP
Endpoints:                172.211.0.18:8080,172.211.0.19:8080
Session Affinity:         None
External Traffic Policy:  Cluster
Events:                   <none>
"
        );
    }

    #[test]
    fn a_cluster_ip_service_has_no_node_port_nor_traffic_policy() {
        let svc = json!({
            "namespace": "ns-dev", "name": "db", "type": "ClusterIP", "cluster_ip": "10.96.0.12",
            "labels": {"app": "db", "tier": "back"}, "annotations": {"team": "data"},
            "selector": null,
            "port_specs": [
                {"name": "sql", "protocol": "TCP", "port": 3306, "target_port": 3306, "node_port": 31000},
                {"name": "metrics", "protocol": "TCP", "port": 9104, "target_port": "metrics", "node_port": null},
            ],
            "endpoints": [], "session_affinity": "ClientIP", "external_traffic_policy": "Cluster",
            "status": {"loadBalancer": {"ingress": []}},
        });
        assert_eq!(
            service(&svc),
            "\
Name:              db
Namespace:         ns-dev
Labels:            app=db
                   tier=back
Annotations:       team=data
Selector:          <none>
Type:              ClusterIP
IP Family Policy:  SingleStack
IP Families:       IPv4
IP:                10.96.0.12
IPs:               10.96.0.12
Port:              sql      3306/TCP
TargetPort:        3306/TCP
Endpoints:         <none>
Port:              metrics  9104/TCP
TargetPort:        metrics/TCP
Endpoints:         <none>
Session Affinity:  ClientIP
Events:            <none>
"
        );
    }

    #[test]
    fn many_endpoints_are_cut_after_three_as_kubectl_cuts_them() {
        let mut svc = wordpress();
        svc["endpoints"] = json!([
            "172.211.0.18:8080",
            "172.211.0.19:8080",
            "172.211.0.20:8080",
            "172.211.0.21:8080",
            "172.211.0.22:8080"
        ]);
        assert!(service(&svc).contains(
            "\nEndpoints:                172.211.0.18:8080,172.211.0.19:8080,172.211.0.20:8080 + 2 more...\n"
        ));
    }

    #[test]
    fn a_pod_reads_as_kubectl_describes_it() {
        let row = json!({
            "namespace": "ns-dev", "name": "wordpress-0", "status": "Running", "restarts": 0,
            "ip": "172.211.0.18", "node": "esxi-01", "labels": {"app": "wordpress"},
            "annotations": {}, "message": null,
            "containers": [{"name": "wordpress", "image": "wordpress:6", "ports": [{"name": null, "container_port": 8080, "protocol": "TCP"}]}],
        });
        assert_eq!(
            pod(&row),
            "\
Name:         wordpress-0
Namespace:    ns-dev
Node:         esxi-01
Labels:       app=wordpress
Annotations:  <none>
Status:       Running
IP:           172.211.0.18
IPs:
  IP:  172.211.0.18
Containers:
  wordpress:
    Image:          wordpress:6
    Port:           8080/TCP
    State:          Running
    Ready:          True
    Restart Count:  0
Events:  <none>
"
        );
    }

    #[test]
    fn a_pod_without_its_port_is_waiting_with_the_reason() {
        let row = json!({
            "namespace": "ns-dev", "name": "web", "status": "CreateContainerError", "restarts": 0,
            "ip": "172.211.0.20", "node": "esxi-02", "labels": {}, "annotations": {},
            "message": "cannot create TAP",
            "containers": [{"name": "web", "image": "nginx", "ports": []}],
        });
        let text = pod(&row);
        assert!(
            text.contains("\nMessage:      cannot create TAP\n"),
            "{text}"
        );
        assert!(text.contains("\n    Port:           <none>\n"), "{text}");
        assert!(
            text.contains(
                "\n    State:          Waiting\n      Reason:       CreateContainerError\n"
            ),
            "{text}"
        );
        assert!(text.contains("\n    Ready:          False\n"), "{text}");
    }

    #[test]
    fn a_namespace_reads_as_kubectl_describes_it() {
        let row = json!({"name": "ns-dev", "status": "Active", "labels": {}, "annotations": {"ncp/static_snat_ip": "172.60.96.50"}});
        assert_eq!(
            namespace(&row),
            "\
Name:         ns-dev
Labels:       <none>
Annotations:  ncp/static_snat_ip=172.60.96.50
Status:       Active

No resource quota.

No LimitRange resource.
"
        );
    }
}
