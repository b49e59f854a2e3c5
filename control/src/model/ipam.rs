//! Deterministic allocation: segments, addresses, nodePorts, MACs and generated names.
//!
//! Every function here is pure: it is handed the pool and what is already taken, and answers
//! with the lowest free thing. There is no allocator object with its own free lists: `store`
//! recomputes the taken sets from the `State` it is building, so a rejected apply (which simply
//! drops its copy of the state) leaves nothing allocated behind, and two stores fed the same
//! requests hand out the same addresses. That determinism is what lets the seed lab reproduce the
//! seed's addresses (wordpress at 172.211.0.18) from document order alone.
//!
//! Rules, as NSX/NCP apply them in the seed:
//! - segments are carved from the pod pool first-fit: the lowest free aligned subnet of the
//!   requested size (default /28);
//! - the first usable address of a segment is the T1 gateway; pods take the lowest free address
//!   above it, never the network or broadcast address;
//! - ClusterIPs, VIPs and egress IPs take the lowest free address of their pool from offset 1 (or
//!   from the pool's configured start, wrapping around), never the pool's network or broadcast
//!   address;
//! - nodePorts take the lowest free port of 30000-32767 (Kubernetes' default range).
//!
//! Scans are linear in the pool size; a /16 is 65k probes at worst, which is nothing next to a
//! human typing `pacific apply`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use pacific_dataplane::tables::{Ipv4Net, MacAddr};

use super::objects::{NodePool, Pools};

/// Kubernetes' default nodePort range.
pub const NODE_PORT_RANGE: RangeInclusive<u16> = 30000..=32767;

/// The ClusterIP range inside a TKG guest cluster (the seed's guest services were 100.64.x.y).
/// These addresses live inside the guest and never reach NSX.
pub fn guest_service_cidr() -> Ipv4Net {
    let addr = Ipv4Addr::new(100, 64, 0, 0);
    Ipv4Net::new(addr, 13).unwrap_or(Ipv4Net::host(addr))
}

/// Where guest ClusterIPs are handed out from: past 100.64.0.0/16, where the T0-T1 transit
/// links are numbered, so that a guest service's address is never also a gateway's in what
/// `get svc` and `get routes` show (the first one, 100.64.0.1, was the ns-dev T1's), and past
/// the addresses a guest cluster keeps for itself (`kubernetes` at .1, kube-dns at .10).
pub fn guest_service_start() -> Ipv4Addr {
    Ipv4Addr::new(100, 65, 0, 1)
}

/// Why an allocation failed; `store` turns it into an `ApplyError` with the same code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamError {
    /// The request itself is wrong (outside the pool, not aligned, the gateway address...).
    Invalid(String),
    /// The address or subnet is held by another object (named in the message).
    Conflict(String),
    /// Nothing is left.
    Exhausted(String),
}

impl IpamError {
    pub fn message(&self) -> &str {
        match self {
            IpamError::Invalid(m) | IpamError::Conflict(m) | IpamError::Exhausted(m) => m,
        }
    }
}

impl fmt::Display for IpamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// A pod's MAC, derived from its IP (`02:ac:` + the four address bytes): locally administered
/// (the 0x02 bit, IEEE 802 "U/L"), unique as long as the IP is, and readable in a capture.
pub fn mac_for(ip: Ipv4Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr([0x02, 0xac, o[0], o[1], o[2], o[3]])
}

/// The pools must not overlap each other, and each start address must lie in its pool.
pub fn check_pools(pools: &Pools) -> Result<(), IpamError> {
    let named = pools.named();
    for (i, (a_name, a)) in named.iter().enumerate() {
        for (b_name, b) in &named[i + 1..] {
            if a.overlaps(b) {
                return Err(IpamError::Invalid(format!(
                    "{a_name} pool {a} overlaps {b_name} pool {b}"
                )));
            }
        }
    }
    // The T0-T1 transit links are numbered from 100.64.0.0/16: a pool there would hand out
    // addresses T0 and the T1s answer for as their own.
    let transit = Ipv4Net::new(crate::compile::TRANSIT_BASE, 16)
        .unwrap_or(Ipv4Net::host(crate::compile::TRANSIT_BASE));
    for (name, pool) in &named {
        if pool.overlaps(&transit) {
            return Err(IpamError::Invalid(format!(
                "{name} pool {pool} overlaps the T0-T1 transit range {transit}"
            )));
        }
    }
    for (name, pool, start) in [
        ("servicesStart", pools.services, pools.services_start),
        ("ingressStart", pools.ingress, pools.ingress_start),
        ("egressStart", pools.egress, pools.egress_start),
    ] {
        if let Some(start) = start {
            if !pool.contains(start) {
                return Err(IpamError::Invalid(format!(
                    "{name} {start} is outside its pool {pool}"
                )));
            }
        }
    }
    Ok(())
}

/// The T1 gateway of a segment: its first usable address.
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    subnet.nth(1).unwrap_or(subnet.network())
}

fn check_segment_len(pool: Ipv4Net, pool_name: &str, prefix_len: u8) -> Result<(), IpamError> {
    if prefix_len < pool.prefix_len() || prefix_len > 30 {
        return Err(IpamError::Invalid(format!(
            "a /{prefix_len} segment does not fit the {pool_name} pool {pool} (/{}-/30)",
            pool.prefix_len()
        )));
    }
    Ok(())
}

/// The lowest free aligned subnet of `prefix_len` in `pool` (first fit).
pub fn first_free_subnet(
    pool: Ipv4Net,
    pool_name: &str,
    prefix_len: u8,
    taken: &[Ipv4Net],
) -> Result<Ipv4Net, IpamError> {
    check_segment_len(pool, pool_name, prefix_len)?;
    let step = 1u64 << (32 - u32::from(prefix_len));
    let mut offset = 0u64;
    while offset < pool.size() {
        if let Some(candidate) = pool.nth(offset).and_then(|a| Ipv4Net::new(a, prefix_len)) {
            match taken
                .iter()
                .filter(|t| t.overlaps(&candidate))
                .map(|t| u64::from(u32::from(t.broadcast())))
                .max()
            {
                None => return Ok(candidate),
                // Skip past the blocking subnet at once rather than probing each slot inside it.
                Some(end) => {
                    let past = (end + 1).saturating_sub(u64::from(u32::from(pool.network())));
                    offset = (past.div_ceil(step) * step).max(offset + step);
                    continue;
                }
            }
        }
        offset += step;
    }
    Err(IpamError::Exhausted(format!(
        "{pool_name} pool {pool} has no free /{prefix_len} left"
    )))
}

/// A pinned segment must lie inside the pool and overlap no taken subnet. (Alignment is already
/// guaranteed: `Ipv4Net` refuses host bits.)
pub fn check_pinned_subnet(
    pool: Ipv4Net,
    pool_name: &str,
    subnet: Ipv4Net,
    taken: &[(Ipv4Net, String)],
) -> Result<(), IpamError> {
    check_segment_len(pool, pool_name, subnet.prefix_len())?;
    if !pool.contains(subnet.network()) {
        return Err(IpamError::Invalid(format!(
            "{subnet} is outside the {pool_name} pool {pool}"
        )));
    }
    if let Some((net, owner)) = taken.iter().find(|(net, _)| net.overlaps(&subnet)) {
        return Err(IpamError::Conflict(format!(
            "{subnet} overlaps {net}, the segment of {owner}"
        )));
    }
    Ok(())
}

/// A pinned pod address must be a host address of its segment, other than the gateway.
pub fn check_host(segment_name: &str, subnet: Ipv4Net, ip: Ipv4Addr) -> Result<(), IpamError> {
    if !subnet.contains(ip) {
        return Err(IpamError::Invalid(format!(
            "{ip} is outside segment {segment_name} {subnet}"
        )));
    }
    if ip == subnet.network() || ip == subnet.broadcast() {
        return Err(IpamError::Invalid(format!(
            "{ip} is the network or broadcast address of {subnet}"
        )));
    }
    if ip == gateway(subnet) {
        return Err(IpamError::Invalid(format!(
            "{ip} is the gateway of segment {segment_name}"
        )));
    }
    Ok(())
}

/// The lowest free host address of a segment above its gateway.
pub fn first_free_host(subnet: Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    (2..subnet.size().saturating_sub(1))
        .filter_map(|o| subnet.nth(o))
        .find(|ip| !used.contains(ip))
}

/// The lowest free address of an address pool (ClusterIPs, VIPs, egress IPs), from `start`
/// (default: offset 1) to the top, then from offset 1 up to `start`. The network and broadcast
/// addresses of the pool are never handed out.
pub fn first_free_in_pool(
    pool: Ipv4Net,
    start: Option<Ipv4Addr>,
    used: &BTreeSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let end = pool.size().saturating_sub(1);
    let first = start
        .filter(|s| pool.contains(*s))
        .map(|s| u64::from(u32::from(s) - u32::from(pool.network())))
        .filter(|o| (1..end).contains(o))
        .unwrap_or(1);
    (first..end)
        .chain(1..first)
        .filter_map(|o| pool.nth(o))
        .find(|ip| !used.contains(ip))
}

/// The lowest free nodePort.
pub fn first_free_node_port(used: &BTreeSet<u16>) -> Option<u16> {
    NODE_PORT_RANGE.into_iter().find(|p| !used.contains(p))
}

/// kubectl's alphabet for generated names: no vowels (no words), no look-alikes (0/o, 1/l).
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// FNV-1a, 64 bits: stable across builds and platforms (unlike `DefaultHasher`).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn encode(mut value: u64, len: usize) -> String {
    let base = SAFE_ALPHABET.len() as u64;
    (0..len)
        .map(|_| {
            let c = SAFE_ALPHABET[(value % base) as usize];
            value /= base;
            char::from(c)
        })
        .collect()
}

/// A 10-character hash of `seed` in kubectl's alphabet (a deployment's "pod-template-hash").
pub fn name_hash(seed: &str) -> String {
    encode(fnv1a(seed.as_bytes()), 10)
}

/// `count` names `<base><5 chars>`, the suffix derived from `seed` and the index. A suffix that
/// collides with a lower index is re-drawn, so name `i` depends only on indexes `0..=i`: scaling
/// down removes the highest names and never renames the others. The base is cut so that names
/// stay within 63 characters (an RFC 1123 label), as Kubernetes cuts generateName.
fn indexed_names(base: &str, seed: &str, count: usize) -> Vec<String> {
    let cut = base.char_indices().nth(58).map_or(base.len(), |(i, _)| i);
    let base = &base[..cut];
    let mut names: Vec<String> = Vec::with_capacity(count);
    let mut seen = BTreeSet::new();
    for i in 0..count {
        let mut salt = 0u32;
        loop {
            let suffix = encode(fnv1a(format!("{seed}#{i}#{salt}").as_bytes()), 5);
            if seen.insert(suffix.clone()) {
                names.push(format!("{base}{suffix}"));
                break;
            }
            salt += 1;
        }
    }
    names
}

/// Replica names of a deployment, like kubectl's: `wordpress-<10-char hash>-<5 chars>`.
/// `namespace` is the key namespace ("ns" or "ns/cluster"); `template` stands for the pod
/// template, whose hash is in the name as `pod-template-hash` is: a changed template gives new
/// names, so its pods are replaced (rolled), while a changed replica count keeps them.
pub fn replica_names(
    namespace: &str,
    deployment: &str,
    template: &str,
    count: usize,
) -> Vec<String> {
    let seed = if template.is_empty() {
        format!("{namespace}/{deployment}")
    } else {
        format!("{namespace}/{deployment}/{template}")
    };
    indexed_names(&format!("{deployment}-{}-", name_hash(&seed)), &seed, count)
}

/// Node VM names of a TKG cluster: `<cluster>-control-plane-<5>` and `<cluster>-workers-<5>-<5>`.
pub fn tkg_node_names(
    namespace: &str,
    cluster: &str,
    control_planes: usize,
    worker_pools: &[NodePool],
) -> (Vec<String>, Vec<String>) {
    let cp_seed = format!("{namespace}/{cluster}/control-plane");
    let workers = worker_pools
        .iter()
        .flat_map(|pool| {
            let seed = format!("{namespace}/{cluster}/{}", pool.name);
            let hash = &name_hash(&seed)[..5];
            let base = format!("{cluster}-{}-{hash}-", pool.name);
            indexed_names(&base, &seed, pool.replicas as usize)
        })
        .collect();
    (
        indexed_names(
            &format!("{cluster}-control-plane-"),
            &cp_seed,
            control_planes,
        ),
        workers,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn segments_are_first_fit_and_aligned() {
        let pool = net("172.211.0.0/16");
        assert_eq!(
            first_free_subnet(pool, "pod", 28, &[]).unwrap(),
            net("172.211.0.0/28")
        );
        let taken = [net("172.211.0.0/28"), net("172.211.0.32/28")];
        assert_eq!(
            first_free_subnet(pool, "pod", 28, &taken).unwrap(),
            net("172.211.0.16/28")
        );
        // A /27 cannot start at .16: the next aligned /27 that is free is .64.
        assert_eq!(
            first_free_subnet(pool, "pod", 27, &taken).unwrap(),
            net("172.211.0.64/27")
        );
        // A big taken block is skipped whole.
        assert_eq!(
            first_free_subnet(pool, "pod", 28, &[net("172.211.0.0/17")]).unwrap(),
            net("172.211.128.0/28")
        );
        // Size limits.
        assert!(matches!(
            first_free_subnet(pool, "pod", 31, &[]),
            Err(IpamError::Invalid(_))
        ));
        assert!(matches!(
            first_free_subnet(pool, "pod", 15, &[]),
            Err(IpamError::Invalid(_))
        ));
    }

    #[test]
    fn segment_exhaustion_names_the_pool() {
        let pool = net("172.211.0.0/26");
        let taken: Vec<Ipv4Net> = (0..4)
            .map(|i| net(&format!("172.211.0.{}/28", i * 16)))
            .collect();
        let err = first_free_subnet(pool, "pod", 28, &taken).unwrap_err();
        assert_eq!(
            err,
            IpamError::Exhausted("pod pool 172.211.0.0/26 has no free /28 left".into())
        );
        assert_eq!(
            first_free_subnet(pool, "pod", 28, &taken[..3]).unwrap(),
            net("172.211.0.48/28")
        );
    }

    #[test]
    fn pinned_segments_must_be_inside_and_free() {
        let pool = net("172.211.0.0/16");
        let taken = [(net("172.211.0.16/28"), "namespace ns-dev".to_string())];
        assert!(check_pinned_subnet(pool, "pod", net("172.211.0.64/28"), &taken).is_ok());
        let err = check_pinned_subnet(pool, "pod", net("172.211.0.0/27"), &taken).unwrap_err();
        assert_eq!(
            err,
            IpamError::Conflict(
                "172.211.0.0/27 overlaps 172.211.0.16/28, the segment of namespace ns-dev".into()
            )
        );
        assert!(matches!(
            check_pinned_subnet(pool, "pod", net("10.0.0.0/28"), &taken),
            Err(IpamError::Invalid(_))
        ));
    }

    #[test]
    fn hosts_start_above_the_gateway() {
        let seg = net("172.211.0.16/28");
        assert_eq!(gateway(seg), ip("172.211.0.17"));
        let mut used = BTreeSet::new();
        assert_eq!(first_free_host(seg, &used), Some(ip("172.211.0.18")));
        used.insert(ip("172.211.0.18"));
        used.insert(ip("172.211.0.20"));
        assert_eq!(first_free_host(seg, &used), Some(ip("172.211.0.19")));
        // .18-.30 are the 13 pod addresses of a /28; .31 is broadcast.
        let full: BTreeSet<Ipv4Addr> = (18..=30).map(|o| Ipv4Addr::new(172, 211, 0, o)).collect();
        assert_eq!(first_free_host(seg, &full), None);
        assert!(check_host("seg-ns-dev", seg, ip("172.211.0.17")).is_err());
        assert!(check_host("seg-ns-dev", seg, ip("172.211.0.31")).is_err());
        assert!(check_host("seg-ns-dev", seg, ip("172.211.0.32")).is_err());
        assert!(check_host("seg-ns-dev", seg, ip("172.211.0.30")).is_ok());
    }

    #[test]
    fn pool_addresses_from_offset_one_or_the_start_with_wraparound() {
        let pool = net("172.80.0.0/16");
        let mut used = BTreeSet::new();
        assert_eq!(
            first_free_in_pool(pool, None, &used),
            Some(ip("172.80.0.1"))
        );
        used.insert(ip("172.80.0.1"));
        assert_eq!(
            first_free_in_pool(pool, None, &used),
            Some(ip("172.80.0.2"))
        );
        assert_eq!(
            first_free_in_pool(pool, Some(ip("172.80.88.7")), &used),
            Some(ip("172.80.88.7"))
        );
        used.insert(ip("172.80.88.7"));
        assert_eq!(
            first_free_in_pool(pool, Some(ip("172.80.88.7")), &used),
            Some(ip("172.80.88.8"))
        );
        // Wrap: a start at the top of a tiny pool comes back to offset 1.
        let tiny = net("172.80.0.0/29");
        let used: BTreeSet<Ipv4Addr> = [ip("172.80.0.6")].into();
        assert_eq!(
            first_free_in_pool(tiny, Some(ip("172.80.0.6")), &used),
            Some(ip("172.80.0.1"))
        );
        // Network and broadcast are never handed out.
        let all: BTreeSet<Ipv4Addr> = (1..=6).map(|o| Ipv4Addr::new(172, 80, 0, o)).collect();
        assert_eq!(first_free_in_pool(tiny, None, &all), None);
    }

    #[test]
    fn pools_must_not_overlap() {
        let mut pools = Pools::default();
        assert!(check_pools(&pools).is_ok());
        pools.services = net("172.211.128.0/20");
        assert_eq!(
            check_pools(&pools).unwrap_err(),
            IpamError::Invalid(
                "pod pool 172.211.0.0/16 overlaps service pool 172.211.128.0/20".into()
            )
        );
        let pools = Pools {
            ingress_start: Some(ip("172.60.0.1")),
            ..Pools::default()
        };
        assert!(matches!(check_pools(&pools), Err(IpamError::Invalid(_))));
    }

    #[test]
    fn node_ports_and_macs() {
        let mut used = BTreeSet::new();
        assert_eq!(first_free_node_port(&used), Some(30000));
        used.insert(30000);
        assert_eq!(first_free_node_port(&used), Some(30001));
        let all: BTreeSet<u16> = NODE_PORT_RANGE.collect();
        assert_eq!(first_free_node_port(&all), None);
        assert_eq!(mac_for(ip("172.211.0.18")).to_string(), "02:ac:ac:d3:00:12");
    }

    #[test]
    fn generated_names_are_stable_and_kubectl_like() {
        let names = replica_names("ns-dev", "wordpress", "", 3);
        assert_eq!(names, replica_names("ns-dev", "wordpress", "", 3));
        // Scaling keeps the lower names.
        assert_eq!(replica_names("ns-dev", "wordpress", "", 2), names[..2]);
        let hash = name_hash("ns-dev/wordpress");
        for n in &names {
            let rest = n.strip_prefix("wordpress-").unwrap();
            let (h, suffix) = rest.split_at(10);
            assert_eq!(h, hash);
            assert_eq!(suffix.len(), 6);
            assert!(suffix[1..].bytes().all(|b| SAFE_ALPHABET.contains(&b)));
        }
        assert_ne!(
            replica_names("ns-prod", "wordpress", "", 1),
            replica_names("ns-dev", "wordpress", "", 1)
        );
        // Long names are cut to an RFC 1123 label.
        let long = "a".repeat(63);
        assert_eq!(replica_names("ns", &long, "", 1)[0].len(), 63);
        let pool = |name: &str, replicas| NodePool {
            name: name.to_string(),
            replicas,
        };
        let (cp, workers) = tkg_node_names("ns-dev", "tkg-cluster-01", 1, &[pool("workers", 2)]);
        assert!(
            cp[0].starts_with("tkg-cluster-01-control-plane-")
                && cp[0].len() == "tkg-cluster-01-control-plane-".len() + 5
        );
        let parts: Vec<&str> = workers[0].rsplitn(3, '-').collect();
        assert_eq!(
            (parts[0].len(), parts[1].len(), parts[2]),
            (5, 5, "tkg-cluster-01-workers")
        );
        assert_ne!(workers[0], workers[1]);
        // v1alpha2's node pools: each pool's nodes carry its name, in pool order.
        let (_, workers) = tkg_node_names(
            "ns-dev",
            "tkc",
            1,
            &[pool("np-small", 2), pool("np-large", 1)],
        );
        let pools: Vec<&str> = workers
            .iter()
            .map(|w| w.rsplitn(3, '-').nth(2).unwrap_or_default())
            .collect();
        assert_eq!(pools, ["tkc-np-small", "tkc-np-small", "tkc-np-large"]);
    }

    #[test]
    fn many_replicas_get_distinct_names() {
        let names = replica_names("ns", "web", "", 2000);
        let set: BTreeSet<&String> = names.iter().collect();
        assert_eq!(set.len(), 2000);
    }
}
