//! The kernel reference rig: the Linux kernel does the router's job (KERNEL-REFERENCE.md).
//!
//! ```text
//!  client ns (198.18.1.2/24) ── veth ── router ns (ip_forward=1) ── veth ── server ns (198.19.1.2/24)
//!                                                                           + 198.51.100.50/32 "outside"
//! ```
//! The router namespace holds kube-proxy's iptables layout (iptables-nft here): a ClusterIP
//! `198.18.100.1` for the iperf3 and echo ports, DNAT to the server with the masquerade mark,
//! `MASQUERADE --random-fully` on the marked packets, and a FORWARD policy of DROP with
//! `KUBE-FORWARD`. Rules standing for Pacific's default DFW follow (new connections from the
//! server side to the client dropped, the client's own outbound allowed, established allowed),
//! and an egress rule standing for Pacific's egress SNAT: the client's traffic to the "outside"
//! address 198.51.100.50, which the server namespace also holds, leaves masqueraded to the
//! router's address, as a namespace's traffic leaves Pacific with its egress IP.
//!
//! The rules go in with one `iptables-restore` call: one transaction, and the rule set reads as
//! a whole in [`rules`]. veths keep the kernel's defaults (txqueuelen 1000, qdisc noqueue, offloads
//! on); the queue length is set explicitly so the notes state a fact, not an assumption.

use std::net::Ipv4Addr;

use super::netns::{self, Namespaces};
use super::{cmd, iperf, link, tcp, Endpoints, Result, Rig};

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const CLIENT_GW: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const CLIENT_SUBNET: &str = "198.18.1.0/24";
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 2);
pub const SERVER_GW: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
pub const SERVER_SUBNET: &str = "198.19.1.0/24";
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
/// The host "outside", held by the server namespace (RFC 5737 documentation range).
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 50);
pub const OUTSIDE_NET: &str = "198.51.100.0/24";
/// The transmit queue length of every veth end.
pub const TXQUEUELEN: u32 = 1000;
/// The router's link towards the server: its tx counter is what the router forwarded.
pub const ROUTER_TO_SERVER: &str = "to-server";
const ROUTER_TO_CLIENT: &str = "to-client";

/// The kube-proxy-style rule set for the router namespace, as `iptables-restore` input.
pub fn rules() -> String {
    let mut nat = vec![
        "*nat".to_string(),
        ":PREROUTING ACCEPT [0:0]".into(),
        ":INPUT ACCEPT [0:0]".into(),
        ":OUTPUT ACCEPT [0:0]".into(),
        ":POSTROUTING ACCEPT [0:0]".into(),
        ":KUBE-SERVICES - [0:0]".into(),
        ":KUBE-POSTROUTING - [0:0]".into(),
        ":KUBE-MARK-MASQ - [0:0]".into(),
        ":PACNB-EGRESS-SNAT - [0:0]".into(),
    ];
    let services = [("IPERF", iperf::PORT), ("ECHO", tcp::ECHO_PORT)];
    for (name, _) in services {
        nat.push(format!(":KUBE-SVC-{name} - [0:0]"));
        nat.push(format!(":KUBE-SEP-{name} - [0:0]"));
    }
    nat.extend([
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".to_string(),
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING".into(),
        "-A POSTROUTING -j PACNB-EGRESS-SNAT".into(),
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000".into(),
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN".into(),
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0".into(),
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".into(),
    ]);
    for (name, port) in services {
        nat.push(format!(
            "-A KUBE-SERVICES -d {CLUSTER_IP}/32 -p tcp -m tcp --dport {port} -j KUBE-SVC-{name}"
        ));
        nat.push(format!("-A KUBE-SVC-{name} -j KUBE-SEP-{name}"));
        nat.push(format!("-A KUBE-SEP-{name} -j KUBE-MARK-MASQ"));
        nat.push(format!(
            "-A KUBE-SEP-{name} -p tcp -m tcp -j DNAT --to-destination {SERVER_IP}:{port}"
        ));
    }
    nat.push(format!(
        "-A PACNB-EGRESS-SNAT -s {CLIENT_SUBNET} -d {OUTSIDE_NET} -j MASQUERADE --random-fully"
    ));
    nat.push("COMMIT".into());

    let filter = [
        "*filter".to_string(),
        ":INPUT ACCEPT [0:0]".into(),
        ":FORWARD DROP [0:0]".into(),
        ":OUTPUT ACCEPT [0:0]".into(),
        ":KUBE-FORWARD - [0:0]".into(),
        ":PACNB-DFW - [0:0]".into(),
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD".into(),
        "-A FORWARD -j PACNB-DFW".into(),
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP".into(),
        "-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT".into(),
        "-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".into(),
        "-A KUBE-FORWARD -m conntrack --ctstate DNAT -j ACCEPT".into(),
        format!("-A KUBE-FORWARD -s {CLIENT_SUBNET} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        format!("-A KUBE-FORWARD -d {CLIENT_SUBNET} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        // The DFW defaults: replies pass, nothing new from the far side, the namespace's own
        // outbound traffic allowed.
        "-A PACNB-DFW -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".into(),
        format!("-A PACNB-DFW -s {SERVER_SUBNET} -d {CLIENT_SUBNET} -m conntrack --ctstate NEW -j DROP"),
        format!("-A PACNB-DFW -s {OUTSIDE_NET} -d {CLIENT_SUBNET} -m conntrack --ctstate NEW -j DROP"),
        format!("-A PACNB-DFW -s {CLIENT_SUBNET} -j ACCEPT"),
        "COMMIT".into(),
    ];
    let mut text = nat.join("\n");
    text.push('\n');
    text.push_str(&filter.join("\n"));
    text.push('\n');
    text
}

/// The kernel rig, built; dropping it removes its namespaces.
#[derive(Debug)]
pub struct KernelRig {
    endpoints: Endpoints,
    router: String,
    // Dropped last: the namespaces themselves.
    _namespaces: Namespaces,
}

impl KernelRig {
    /// Builds the rig with namespaces `PREFIX-client`, `PREFIX-router`, `PREFIX-server`.
    pub fn build(prefix: &str) -> Result<KernelRig> {
        let (c, r, s) = (
            format!("{prefix}-client"),
            format!("{prefix}-router"),
            format!("{prefix}-server"),
        );
        let mut namespaces = Namespaces::new();
        for ns in [&c, &r, &s] {
            namespaces.add(ns)?;
        }
        let q = TXQUEUELEN.to_string();
        let ip = |args: &[&str]| -> Result<()> { cmd::run(args).map(drop) };
        // veths are created inside the router namespace with their peers placed straight into
        // the end namespaces: nothing ever appears in the root namespace.
        for (router_dev, peer_ns) in [(ROUTER_TO_CLIENT, &c), (ROUTER_TO_SERVER, &s)] {
            ip(&[
                "ip", "-n", &r, "link", "add", router_dev, "type", "veth", "peer", "name", "eth0",
                "netns", peer_ns,
            ])?;
            ip(&[
                "ip",
                "-n",
                &r,
                "link",
                "set",
                router_dev,
                "txqueuelen",
                &q,
                "up",
            ])?;
            ip(&[
                "ip",
                "-n",
                peer_ns,
                "link",
                "set",
                "eth0",
                "txqueuelen",
                &q,
                "up",
            ])?;
        }
        ip(&[
            "ip",
            "-n",
            &c,
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&[
            "ip",
            "-n",
            &r,
            "addr",
            "add",
            &format!("{CLIENT_GW}/24"),
            "dev",
            ROUTER_TO_CLIENT,
        ])?;
        ip(&[
            "ip",
            "-n",
            &r,
            "addr",
            "add",
            &format!("{SERVER_GW}/24"),
            "dev",
            ROUTER_TO_SERVER,
        ])?;
        ip(&[
            "ip",
            "-n",
            &s,
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&[
            "ip",
            "-n",
            &s,
            "addr",
            "add",
            &format!("{OUTSIDE_IP}/32"),
            "dev",
            "eth0",
        ])?;
        ip(&[
            "ip",
            "-n",
            &c,
            "route",
            "add",
            "default",
            "via",
            &CLIENT_GW.to_string(),
        ])?;
        ip(&[
            "ip",
            "-n",
            &s,
            "route",
            "add",
            "default",
            "via",
            &SERVER_GW.to_string(),
        ])?;
        ip(&[
            "ip",
            "-n",
            &r,
            "route",
            "add",
            OUTSIDE_NET,
            "via",
            &SERVER_IP.to_string(),
        ])?;
        netns::sysctl(&r, "net.ipv4.ip_forward", "1")?;
        super::tune_endpoint_sysctls(&c, &s)?;
        cmd::run_with_input(&cmd::in_ns(&r, &["iptables-restore"]), &rules())?;
        let endpoints = Endpoints {
            client_ns: c,
            server_ns: s.clone(),
            outside_ns: s,
            server_ip: SERVER_IP,
            cluster_ip: CLUSTER_IP,
            outside_ip: OUTSIDE_IP,
        };
        Ok(KernelRig {
            endpoints,
            router: r,
            _namespaces: namespaces,
        })
    }
}

impl Rig for KernelRig {
    fn label(&self) -> &'static str {
        "kernel"
    }

    fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    fn forwarded_packets(&self) -> Result<u64> {
        Ok(link::read(&self.router, ROUTER_TO_SERVER)?.tx_packets)
    }

    fn forwarded_counter(&self) -> String {
        format!("tx packets of {ROUTER_TO_SERVER} in the router namespace")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_follow_kube_proxy() {
        let r = rules();
        // Every chain a rule jumps to is declared in its table.
        for table in r.split("COMMIT").filter(|t| !t.trim().is_empty()) {
            for jump in table
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .filter(|w| w[0] == "-j")
                .map(|w| w[1])
            {
                let builtin =
                    ["ACCEPT", "DROP", "RETURN", "MARK", "DNAT", "MASQUERADE"].contains(&jump);
                assert!(
                    builtin || table.contains(&format!(":{jump} ")),
                    "{jump} is not declared"
                );
            }
        }
        assert!(r.contains(":FORWARD DROP"));
        assert!(r.contains(
            "-A KUBE-SERVICES -d 198.18.100.1/32 -p tcp -m tcp --dport 5201 -j KUBE-SVC-IPERF"
        ));
        assert!(
            r.contains("-A KUBE-SEP-ECHO -p tcp -m tcp -j DNAT --to-destination 198.19.1.2:7000")
        );
        // The mark is tested before it is cleared, and cleared before masquerading.
        let ret = r.find("! --mark 0x4000/0x4000 -j RETURN").unwrap();
        let clear = r.find("--set-xmark 0x4000/0x0").unwrap();
        let masq = r.find("-j MASQUERADE --random-fully").unwrap();
        assert!(ret < clear && clear < masq);
    }

    /// `iptables-restore --test` accepts the rule set, in a namespace of our own (root only).
    #[test]
    fn iptables_accepts_the_rules() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || cmd::run(&["iptables-restore", "--version"]).is_err()
        {
            eprintln!("skipped: needs root and iptables");
            return;
        }
        let ns = format!("pacu-nb{}-ipt", std::process::id());
        let mut guard = Namespaces::new();
        guard.add(&ns).unwrap();
        cmd::run_with_input(&cmd::in_ns(&ns, &["iptables-restore", "--test"]), &rules()).unwrap();
    }
}
