//! The Pacific rig: the same client and server, routed by a Pacific daemon on TAP ports.
//!
//! Driven only through the `pacific` binary, as a user would: `lab up` with a manifest of our own
//! (a namespace `bench` with a client pod, a server pod and a ClusterIP service in front of the
//! server; an outside host `server` behind the T0 uplink), `get ... -o json` for addresses, `lab
//! down` to remove it. The daemon gets its own socket (under `/tmp/PREFIX/`) and prefix, so it
//! never meets a lab someone else is running.
//!
//! Paths, compared with the kernel rig (the notes of the report repeat this):
//! - pod to pod is switched inside one segment (both pods are in namespace `bench`), where the
//!   kernel rig routes between two subnets;
//! - the ClusterIP is the DLB's DNAT at the client's port, without the source NAT kube-proxy adds;
//! - the outside host sits behind the T0 uplink and the lab's upstream-router namespace, a kernel
//!   hop the kernel rig does not have, and the traffic leaves with the namespace's egress IP.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::netns;
use super::{cmd, iperf, link, tcp, Endpoints, Error, Result, Rig};

/// The namespace of the bench's pods (also the Kubernetes namespace in the manifest).
pub const NAMESPACE: &str = "bench";

/// The lab the rig applies. Pools in the RFC 2544 benchmarking range (198.18.0.0/15), the outside
/// host in RFC 5737's 198.51.100.0/24 like the seed lab's.
pub fn manifest() -> String {
    format!(
        r#"apiVersion: pacific.dev/v1
kind: Pools
metadata: {{name: default}}
spec: {{pods: 198.18.0.0/18, services: 198.18.100.0/24, ingress: 198.19.200.0/24, egress: 198.19.100.0/24}}
---
apiVersion: pacific.dev/v1
kind: OutsideHost
metadata: {{name: server}}
spec: {{address: 198.51.100.50/24}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}, labels: {{app: client}}}}
spec: {{containers: [{{name: c, image: none}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {ns}, labels: {{app: server}}}}
spec: {{containers: [{{name: s, image: none}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: server, namespace: {ns}}}
spec:
  selector: {{app: server}}
  ports:
  - {{name: iperf, protocol: TCP, port: {iperf}, targetPort: {iperf}}}
  - {{name: echo, protocol: TCP, port: {echo}, targetPort: {echo}}}
"#,
        ns = NAMESPACE,
        iperf = iperf::PORT,
        echo = tcp::ECHO_PORT,
    )
}

/// A running Pacific lab; dropping it runs `lab down` and removes whatever is left.
#[derive(Debug)]
pub struct PacificRig {
    bin: PathBuf,
    dir: PathBuf,
    socket: PathBuf,
    prefix: String,
    daemon_pid: Option<u32>,
    endpoints: Endpoints,
    /// The daemon's worker threads, as it reports them.
    pub workers: usize,
    /// The daemon's busy polling after a frame, in microseconds, as it reports it.
    pub busy_poll_us: u64,
}

impl PacificRig {
    /// Starts a daemon under `prefix` (with `workers` workers, or its default) and applies
    /// [`manifest`].
    pub fn start(
        bin: PathBuf,
        prefix: &str,
        workers: Option<usize>,
        busy_poll_us: Option<u64>,
    ) -> Result<PacificRig> {
        let dir = std::env::temp_dir().join(prefix);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
        let socket = dir.join("pacific.sock");
        let file = dir.join("netbench-lab.yaml");
        std::fs::write(&file, manifest())
            .map_err(|e| Error::new(format!("cannot write {}: {e}", file.display())))?;
        let unset = Endpoints {
            client_ns: String::new(),
            server_ns: String::new(),
            outside_ns: String::new(),
            server_ip: Ipv4Addr::UNSPECIFIED,
            cluster_ip: Ipv4Addr::UNSPECIFIED,
            outside_ip: Ipv4Addr::UNSPECIFIED,
        };
        // The guard exists before anything is built, so a failure below still tears down.
        let mut rig = PacificRig {
            bin,
            dir,
            socket,
            prefix: prefix.to_string(),
            daemon_pid: None,
            endpoints: unset,
            workers: 0,
            busy_poll_us: 0,
        };
        // Not cut short by Ctrl-C: a daemon still starting when its `lab up` dies would escape
        // `lab down`.
        let file = file.to_string_lossy();
        let workers = workers.map(|n| n.to_string());
        let busy_poll = busy_poll_us.map(|us| us.to_string());
        let mut args = vec!["lab", "up", &file, "--prefix", prefix];
        if let Some(n) = &workers {
            args.extend(["--workers", n]);
        }
        if let Some(us) = &busy_poll {
            args.extend(["--busy-poll-us", us]);
        }
        let out = cmd::run_to_end(&rig.pacific(&args), Duration::from_secs(120));
        // Learn the daemon's PID even if the apply failed: it is what the last resort kills.
        let status = rig.call_json(&["rpc", "daemon.status"]).ok();
        let number = |field: &str| status.as_ref()?.get(field)?.as_u64();
        rig.daemon_pid = number("pid").map(|p| p as u32);
        rig.workers = number("workers").unwrap_or(0) as usize;
        rig.busy_poll_us = number("busy_poll_us").unwrap_or(0);
        let out = out?;
        if !out.status.success() {
            return Err(Error::new(format!(
                "`pacific lab up` failed: {}",
                out.stderr.trim()
            )));
        }
        let pods = rig.call_json(&["get", "pods", "-n", NAMESPACE, "-o", "json"])?;
        let (client_ns, _) = pod(&pods, "client")?;
        let (server_ns, server_ip) = pod(&pods, "server")?;
        let svc = rig.call_json(&["get", "svc", "-n", NAMESPACE, "-o", "json"])?;
        let cluster_ip = items(&svc)
            .find(|s| s["name"] == "server")
            .and_then(|s| s["cluster_ip"].as_str())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::new("`pacific get svc` shows no ClusterIP for bench/server"))?;
        let outside = rig.call_json(&["get", "outside", "-o", "json"])?;
        let outside_ip = items(&outside)
            .find(|h| h["name"] == "server")
            .and_then(|h| h["address"].as_str())
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| Error::new("`pacific get outside` shows no address for host server"))?;
        let resolved = rig.call_json(&["rpc", "exec.resolve", r#"{"target":"ext/server"}"#])?;
        let outside_ns = resolved["netns"]
            .as_str()
            .ok_or_else(|| Error::new("`exec.resolve ext/server` named no namespace"))?
            .to_string();
        super::tune_endpoint_sysctls(&client_ns, &server_ns)?;
        netns::sysctl(&outside_ns, "net.ipv4.tcp_max_tw_buckets", "0")?;
        rig.endpoints = Endpoints {
            client_ns,
            server_ns,
            outside_ns,
            server_ip,
            cluster_ip,
            outside_ip,
        };
        Ok(rig)
    }

    /// `pacific --socket S ARGS...`.
    fn pacific(&self, args: &[&str]) -> Vec<String> {
        let mut v = vec![
            self.bin.to_string_lossy().into_owned(),
            "--socket".into(),
            self.socket.to_string_lossy().into_owned(),
        ];
        v.extend(args.iter().map(|a| a.to_string()));
        v
    }

    fn call_json(&self, args: &[&str]) -> Result<Value> {
        let out = cmd::run(&self.pacific(args))?;
        serde_json::from_str(&out)
            .map_err(|e| Error::new(format!("`pacific {}` printed no JSON: {e}", args.join(" "))))
    }

    /// The dataplane's tx count of the server pod's port, from `pacific get ports -o json`.
    fn server_port_tx(&self) -> Result<u64> {
        let ports = self.call_json(&["get", "ports", "-o", "json"])?;
        port_tx(&ports, self.endpoints.server_ip)
    }
}

/// The namespace and address of pod `name` in the output of `pacific get pods -o json`.
fn pod(pods: &Value, name: &str) -> Result<(String, Ipv4Addr)> {
    let p = items(pods).find(|p| p["name"] == name).ok_or_else(|| {
        Error::new(format!(
            "`pacific get pods` lists no pod {NAMESPACE}/{name}"
        ))
    })?;
    let ns = p["netns"]
        .as_str()
        .ok_or_else(|| Error::new(format!("pod {name} has no namespace yet")))?;
    let ip = p["ip"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::new(format!("pod {name} has no address yet")))?;
    Ok((ns.to_string(), ip))
}

/// The `tx_packets` of the pod port with address `ip` in `pacific get ports -o json`.
fn port_tx(ports: &Value, ip: Ipv4Addr) -> Result<u64> {
    let ip = ip.to_string();
    items(ports)
        .find(|p| p["kind"] == "pod" && p["ip"].as_str() == Some(ip.as_str()))
        .and_then(|p| p["tx_packets"].as_u64())
        .ok_or_else(|| {
            Error::new(format!(
                "`pacific get ports` shows no pod port with address {ip}"
            ))
        })
}

fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

impl Rig for PacificRig {
    fn label(&self) -> &'static str {
        "Pacific"
    }

    fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The daemon's own count of the server port, else the TAP's rx count seen from the server
    /// namespace (the same packets, from the kernel's side).
    fn forwarded_packets(&self) -> Result<u64> {
        self.server_port_tx()
            .or_else(|_| Ok(link::read(&self.endpoints.server_ns, "eth0")?.rx_packets))
    }

    fn forwarded_counter(&self) -> String {
        "tx packets of the server pod's port (`pacific get ports`)".to_string()
    }
}

impl Drop for PacificRig {
    fn drop(&mut self) {
        let _ = cmd::run_to_end(
            &self.pacific(&["lab", "down", "--prefix", &self.prefix]),
            Duration::from_secs(60),
        );
        // Last resort if `lab down` could not stop our daemon: kill it by the PID it reported,
        // after checking that PID still runs a daemon on our socket.
        if let Some(pid) = self.daemon_pid {
            let ours = |pid: u32| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&*self.socket.to_string_lossy()))
                    .unwrap_or(false)
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            for sig in [libc::SIGTERM, libc::SIGKILL] {
                if ours(pid) {
                    // SAFETY: kill(2) on a PID we just checked runs our own daemon.
                    unsafe { libc::kill(pid as libc::pid_t, sig) };
                    while ours(pid) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
        for ns in netns::list_with_prefix(&format!("{}-", self.prefix)) {
            let _ = cmd::run(&["ip", "netns", "del", &ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pods_and_ports_from_json() {
        let pods: Value = serde_json::from_str(
            r#"{"items":[{"namespace":"bench","name":"client","ip":"198.18.0.2","netns":"pacnb7p-bench-client"},
                         {"namespace":"bench","name":"server","ip":"198.18.0.3","netns":"pacnb7p-bench-server"}]}"#,
        )
        .unwrap();
        assert_eq!(
            pod(&pods, "server").unwrap(),
            (
                "pacnb7p-bench-server".to_string(),
                Ipv4Addr::new(198, 18, 0, 3)
            )
        );
        assert!(pod(&pods, "db").is_err());
        let ports: Value = serde_json::from_str(
            r#"{"items":[{"id":0,"name":"uplink","kind":"uplink","ip":"203.0.113.2","tx_packets":5},
                         {"id":1,"name":"bench/server","kind":"pod","ip":"198.18.0.3","rx_packets":10,"tx_packets":123456}]}"#,
        )
        .unwrap();
        assert_eq!(
            port_tx(&ports, Ipv4Addr::new(198, 18, 0, 3)).unwrap(),
            123_456
        );
        assert!(port_tx(&ports, Ipv4Addr::new(198, 18, 0, 9)).is_err());
    }

    #[test]
    fn manifest_names_the_ports_the_loads_use() {
        let m = manifest();
        assert!(m.contains("port: 5201, targetPort: 5201"));
        assert!(m.contains("port: 7000, targetPort: 7000"));
        assert_eq!(m.matches("\n---\n").count(), 5);
    }
}
