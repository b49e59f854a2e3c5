//! The world outside T0, built from Linux namespaces: an upstream router and the hosts behind it.
//!
//! ```text
//!  T0 (Pacific) ══ uplink TAP ══ [router ns: ip_forward, br0 = hosts_gateway/len] ── veth ── [hop]
//!                  203.0.113.x                                                    ── veth ── [internet]
//! ```
//! The router is a plain Linux namespace with forwarding on; the uplink TAP is opened by the daemon
//! and moved into it, so this module only configures what is already there. The outside hosts hang
//! off a bridge in the router namespace, one veth each, so they reach each other without Pacific
//! and reach the pools through the router, the way the seed's jump host does.
//!
//! The seed's T0 advertises every ingress VIP and egress SNAT address to the upstream router as a
//! /32 over eBGP (observation 7). Running a BGP speaker on both sides would add a routing daemon to
//! the lab for no behaviour the tests can see, so [`sync_bgp_routes`] installs the routes that
//! session would produce, tagged `proto bgp`, and withdraws the ones no longer advertised:
//! `ip -n ROUTER route show` then reads like the seed's router.
//!
//! Addresses outside the pools come from RFC 5737 documentation ranges (203.0.113.0/24 for the
//! uplink transit, 198.51.100.0/24 for outside hosts); 192.0.2.0/24 is never used (SEED-LAB.md).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use pacific_dataplane::tables::Ipv4Net;

use super::netns::{self, ip_netns, LAB_TXQUEUELEN};
use super::LabError;

/// The bridge in the router namespace that the outside hosts hang off.
pub const HOSTS_BRIDGE: &str = "br0";

/// A host outside T0 (the seed's jump host `hop`, or "the internet").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutsideHost {
    pub name: String,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    /// Ports the lab serves with the test server in this host.
    pub http_ports: Vec<u16>,
}

/// The upstream router that peers with T0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRouter {
    /// Its namespace, e.g. `{prefix}-ext-router`.
    pub netns: String,
    /// The T0 uplink inside it (a TAP the daemon created and moved there).
    pub uplink_ifname: String,
    /// The router's address on the uplink transit.
    pub uplink_addr: Ipv4Addr,
    pub uplink_prefix_len: u8,
    /// T0's address on the uplink: the next hop for the pools and the advertised /32s.
    pub t0_addr: Ipv4Addr,
    /// The router's address on the hosts' bridge, their default gateway (e.g. 198.51.100.1).
    pub hosts_gateway: Ipv4Addr,
    pub hosts_prefix_len: u8,
}

fn check_prefix_len(what: &str, len: u8) -> Result<(), LabError> {
    if len > 32 {
        return Err(LabError::new(
            what.to_string(),
            format!("prefix length {len} is over 32"),
        ));
    }
    Ok(())
}

/// Creates the router namespace: IPv6 off, forwarding on, `lo` up, bridge `br0` holding
/// `hosts_gateway/len`, up. Safe to repeat.
pub fn create_upstream_router(r: &UpstreamRouter) -> Result<(), LabError> {
    check_prefix_len(
        &format!("create upstream router {}", r.netns),
        r.hosts_prefix_len,
    )?;
    let ns = r.netns.as_str();
    netns::add_netns(ns)?;
    netns::sysctl_in_netns(
        ns,
        &[
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv4.ip_forward=1",
        ],
    )?;
    ip_netns(ns, &["link", "set", "dev", "lo", "up"])?;
    if !netns::link_exists(ns, HOSTS_BRIDGE) {
        ip_netns(ns, &["link", "add", HOSTS_BRIDGE, "type", "bridge"])?;
    }
    let cidr = format!("{}/{}", r.hosts_gateway, r.hosts_prefix_len);
    ip_netns(ns, &["addr", "replace", &cidr, "dev", HOSTS_BRIDGE])?;
    ip_netns(ns, &["link", "set", "dev", HOSTS_BRIDGE, "up"])?;
    Ok(())
}

/// Configures the uplink once the daemon has put it in the router namespace: address, queue
/// length, up, and a route to each pool via T0. Safe to repeat.
pub fn configure_uplink(r: &UpstreamRouter, pools: &[Ipv4Net]) -> Result<(), LabError> {
    check_prefix_len(
        &format!("configure uplink {}", r.uplink_ifname),
        r.uplink_prefix_len,
    )?;
    let (ns, dev) = (r.netns.as_str(), r.uplink_ifname.as_str());
    let cidr = format!("{}/{}", r.uplink_addr, r.uplink_prefix_len);
    ip_netns(ns, &["addr", "replace", &cidr, "dev", dev])?;
    netns::no_queue_discipline(ns, dev)?;
    ip_netns(
        ns,
        &[
            "link",
            "set",
            "dev",
            dev,
            "txqueuelen",
            LAB_TXQUEUELEN,
            "up",
        ],
    )?;
    let t0 = r.t0_addr.to_string();
    for pool in pools {
        ip_netns(
            ns,
            &[
                "route",
                "replace",
                &pool.to_string(),
                "via",
                &t0,
                "dev",
                dev,
            ],
        )?;
    }
    Ok(())
}

/// The router-side name of a host's veth: `h-NAME` when that fits the kernel's 15 characters,
/// else `h-` + 8 characters + `-` + a 4-hex-digit hash of the whole name, so hosts whose names
/// share a long prefix still get different links. Characters a link name cannot hold become `_`.
pub fn host_veth_name(host: &str) -> String {
    let clean: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.len() <= 13 {
        return format!("h-{clean}");
    }
    // FNV-1a, folded to 16 bits: stable across runs and Rust versions, unlike `DefaultHasher`.
    let mut h: u32 = 0x811c_9dc5;
    for b in host.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("h-{}-{:04x}", &clean[..8], (h >> 16) ^ (h & 0xffff))
}

/// Adds an outside host in namespace `host_ns`: a veth created inside the router namespace, its
/// router end enslaved to `br0`, its host end `eth0` with the host's address and a default route
/// via the router. Safe to repeat.
pub fn add_outside_host(
    r: &UpstreamRouter,
    host_ns: &str,
    h: &OutsideHost,
) -> Result<(), LabError> {
    check_prefix_len(&format!("add outside host {}", h.name), h.prefix_len)?;
    let veth = host_veth_name(&h.name);
    netns::add_netns(host_ns)?;
    // Before the veth arrives, so `eth0` never gets an IPv6 link-local address.
    netns::disable_ipv6(host_ns)?;
    ip_netns(host_ns, &["link", "set", "dev", "lo", "up"])?;
    let router_end = netns::link_exists(&r.netns, &veth);
    let host_end = netns::link_exists(host_ns, "eth0");
    if router_end && !host_end {
        // Half a pair cannot be: the host end went with a deleted namespace. Start over (the
        // kernel may be removing it already).
        if let Err(e) = ip_netns(&r.netns, &["link", "del", "dev", &veth]) {
            if netns::link_exists(&r.netns, &veth) {
                return Err(e);
            }
        }
    }
    if !(router_end && host_end) {
        ip_netns(
            &r.netns,
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", host_ns,
            ],
        )?;
    }
    ip_netns(
        &r.netns,
        &["link", "set", "dev", &veth, "master", HOSTS_BRIDGE, "up"],
    )?;
    let cidr = format!("{}/{}", h.addr, h.prefix_len);
    ip_netns(host_ns, &["addr", "replace", &cidr, "dev", "eth0"])?;
    ip_netns(host_ns, &["link", "set", "dev", "eth0", "up"])?;
    ip_netns(
        host_ns,
        &[
            "route",
            "replace",
            "default",
            "via",
            &r.hosts_gateway.to_string(),
            "dev",
            "eth0",
        ],
    )?;
    Ok(())
}

/// Makes the router's `proto bgp` routes exactly `routes`, each via T0 on the uplink: installs or
/// refreshes the wanted ones and withdraws the rest, as the seed's eBGP session would.
pub fn sync_bgp_routes(r: &UpstreamRouter, routes: &[Ipv4Net]) -> Result<(), LabError> {
    let (ns, dev) = (r.netns.as_str(), r.uplink_ifname.as_str());
    let t0 = r.t0_addr.to_string();
    let wanted: BTreeSet<Ipv4Net> = routes.iter().copied().collect();
    let present = bgp_routes(r)?;
    for net in &wanted {
        ip_netns(
            ns,
            &[
                "route",
                "replace",
                &net.to_string(),
                "via",
                &t0,
                "dev",
                dev,
                "proto",
                "bgp",
            ],
        )?;
    }
    for net in present.difference(&wanted) {
        ip_netns(ns, &["route", "del", &net.to_string(), "proto", "bgp"])?;
    }
    Ok(())
}

/// The router's `proto bgp` routes (main table).
pub fn bgp_routes(r: &UpstreamRouter) -> Result<BTreeSet<Ipv4Net>, LabError> {
    let out = ip_netns(&r.netns, &["-4", "route", "show", "proto", "bgp"])?;
    parse_route_destinations(&out)
}

/// The destination of each line of `ip route show` (`172.80.88.5 via ...` is a /32).
pub fn parse_route_destinations(text: &str) -> Result<BTreeSet<Ipv4Net>, LabError> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let Some(dst) = line.split_whitespace().next() else {
            continue;
        };
        let net = if dst == "default" {
            Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0)
        } else {
            dst.parse().ok()
        };
        match net {
            Some(net) => out.insert(net),
            None => {
                return Err(LabError::new(
                    "ip route show",
                    format!("unexpected route line {line:?}"),
                ))
            }
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::netns::exec_in_netns;
    use crate::lab::test_support::{netns_available, ns_name, NsGuard};

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn veth_names_fit_and_differ() {
        assert_eq!(host_veth_name("hop"), "h-hop");
        assert_eq!(host_veth_name("internet"), "h-internet");
        assert_eq!(host_veth_name("thirteen-char"), "h-thirteen-char");
        let a = host_veth_name("outside-host-number-1");
        let b = host_veth_name("outside-host-number-2");
        assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        assert!(a.starts_with("h-outside-") && a != b, "{a} {b}");
        assert_eq!(host_veth_name("a b/c"), "h-a_b_c");
    }

    #[test]
    fn parses_route_destinations() {
        let text = "172.80.88.5 via 203.0.113.2 dev uplink proto bgp \n172.60.0.0/16 via 203.0.113.2 dev uplink\ndefault via 198.51.100.1 dev eth0\n";
        let got = parse_route_destinations(text).unwrap();
        let want: BTreeSet<Ipv4Net> = [
            net("172.80.88.5/32"),
            net("172.60.0.0/16"),
            net("0.0.0.0/0"),
        ]
        .into();
        assert_eq!(got, want);
        assert!(parse_route_destinations("broadcast 1.2.3.4 dev x").is_err());
    }

    /// An upstream router, a stand-in T0 namespace joined to it by a veth that plays the uplink TAP,
    /// and two outside hosts. Returns the router description and the namespace names.
    struct Rig {
        router: UpstreamRouter,
        t0: String,
        hop: String,
        internet: String,
        _guard: NsGuard,
    }

    fn rig(tag: &str) -> Rig {
        let base = ns_name(tag);
        let mut guard = NsGuard::default();
        // Guard order matters only for speed; delete_netns ends processes in any order.
        let hop = guard.add(&format!("{base}-hop"));
        let internet = guard.add(&format!("{base}-internet"));
        let t0 = guard.add(&format!("{base}-t0"));
        let router = UpstreamRouter {
            netns: guard.add(&format!("{base}-router")),
            uplink_ifname: "uplink".into(),
            uplink_addr: Ipv4Addr::new(203, 0, 113, 1),
            uplink_prefix_len: 24,
            t0_addr: Ipv4Addr::new(203, 0, 113, 2),
            hosts_gateway: Ipv4Addr::new(198, 51, 100, 1),
            hosts_prefix_len: 24,
        };
        create_upstream_router(&router).unwrap();
        create_upstream_router(&router).unwrap();
        for (ns, name, last) in [(&hop, "hop", 10), (&internet, "internet", 100)] {
            let h = OutsideHost {
                name: name.into(),
                addr: Ipv4Addr::new(198, 51, 100, last),
                prefix_len: 24,
                http_ports: vec![80],
            };
            add_outside_host(&router, ns, &h).unwrap();
            add_outside_host(&router, ns, &h).unwrap();
        }
        netns::add_netns(&t0).unwrap();
        netns::disable_ipv6(&t0).unwrap();
        ip_netns(
            &router.netns,
            &[
                "link", "add", "uplink", "type", "veth", "peer", "name", "t0up", "netns", &t0,
            ],
        )
        .unwrap();
        Rig {
            router,
            t0,
            hop,
            internet,
            _guard: guard,
        }
    }

    fn ping(ns: &str, dst: &str) -> bool {
        let out = exec_in_netns(ns, &["ping", "-c", "1", "-W", "2", dst]).unwrap();
        out.status.success()
    }

    #[test]
    fn outside_hosts_reach_each_other_and_the_gateway() {
        if !netns_available("outside_hosts_reach_each_other_and_the_gateway") {
            return;
        }
        let rig = rig("out");
        let r = &rig.router;
        let br = ip_netns(&r.netns, &["-o", "link", "show", "master", HOSTS_BRIDGE]).unwrap();
        assert!(br.contains("h-hop@") && br.contains("h-internet@"), "{br}");
        let addrs = ip_netns(&rig.hop, &["-4", "-o", "addr", "show", "dev", "eth0"]).unwrap();
        assert_eq!(addrs.matches("inet ").count(), 1, "{addrs}");
        assert!(addrs.contains("198.51.100.10/24"), "{addrs}");
        assert_eq!(
            ip_netns(&rig.hop, &["-6", "addr", "show"]).unwrap().trim(),
            ""
        );
        assert!(
            ping(&rig.hop, "198.51.100.100"),
            "hop -> internet through br0"
        );
        assert!(
            ping(&rig.internet, "198.51.100.10"),
            "internet -> hop through br0"
        );
        assert!(ping(&rig.hop, "198.51.100.1"), "hop -> its gateway");
    }

    #[test]
    fn uplink_routes_pools_to_t0() {
        if !netns_available("uplink_routes_pools_to_t0") {
            return;
        }
        let rig = rig("upl");
        let r = &rig.router;
        let pools = [net("172.211.0.0/16"), net("172.80.0.0/16")];
        configure_uplink(r, &pools).unwrap();
        configure_uplink(r, &pools).unwrap();
        let routes = ip_netns(&r.netns, &["route", "show"]).unwrap();
        assert!(
            routes.contains("172.211.0.0/16 via 203.0.113.2 dev uplink"),
            "{routes}"
        );
        assert!(
            routes.contains("172.80.0.0/16 via 203.0.113.2 dev uplink"),
            "{routes}"
        );
        let link = ip_netns(&r.netns, &["link", "show", "dev", "uplink"]).unwrap();
        assert!(
            link.contains("qlen 10000") && link.contains(",UP"),
            "{link}"
        );

        // A stand-in T0 holding a pod address: the outside host reaches it through the router.
        let t0 = &rig.t0;
        ip_netns(t0, &["addr", "add", "203.0.113.2/24", "dev", "t0up"]).unwrap();
        ip_netns(t0, &["link", "set", "dev", "t0up", "up"]).unwrap();
        ip_netns(t0, &["link", "set", "dev", "lo", "up"]).unwrap();
        ip_netns(t0, &["addr", "add", "172.211.0.18/32", "dev", "lo"]).unwrap();
        ip_netns(
            t0,
            &["route", "add", "198.51.100.0/24", "via", "203.0.113.1"],
        )
        .unwrap();
        assert!(
            ping(&rig.hop, "172.211.0.18"),
            "hop -> pool address via the uplink"
        );
    }

    #[test]
    fn bgp_routes_follow_the_advertisements() {
        if !netns_available("bgp_routes_follow_the_advertisements") {
            return;
        }
        let rig = rig("bgp");
        let r = &rig.router;
        configure_uplink(r, &[net("172.211.0.0/16")]).unwrap();
        let vips = [
            net("172.80.88.5/32"),
            net("172.80.88.3/32"),
            net("172.60.96.2/32"),
        ];
        sync_bgp_routes(r, &vips).unwrap();
        sync_bgp_routes(r, &vips).unwrap();
        let shown = ip_netns(&r.netns, &["route", "show", "proto", "bgp"]).unwrap();
        assert_eq!(shown.lines().count(), 3, "{shown}");
        for vip in ["172.80.88.5", "172.80.88.3", "172.60.96.2"] {
            assert!(
                shown.contains(&format!("{vip} via 203.0.113.2 dev uplink")),
                "{shown}"
            );
        }
        assert_eq!(bgp_routes(r).unwrap(), vips.iter().copied().collect());

        // Withdraw one, add one; the static pool route is not BGP's to touch.
        let next = [
            net("172.80.88.5/32"),
            net("172.80.88.7/32"),
            net("172.60.96.2/32"),
        ];
        sync_bgp_routes(r, &next).unwrap();
        assert_eq!(bgp_routes(r).unwrap(), next.iter().copied().collect());
        sync_bgp_routes(r, &[]).unwrap();
        assert_eq!(
            ip_netns(&r.netns, &["route", "show", "proto", "bgp"])
                .unwrap()
                .trim(),
            ""
        );
        let all = ip_netns(&r.netns, &["route", "show"]).unwrap();
        assert!(
            all.contains("172.211.0.0/16 via 203.0.113.2 dev uplink"),
            "{all}"
        );
    }
}
