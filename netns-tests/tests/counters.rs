//! Counters against the traffic sent: `pacific get ports` agrees frame for frame and byte for
//! byte with `ip -s link` on the pod's `eth0` and the upstream router's `uplink` (GSO frames
//! counted whole, as the kernel counts them), and a denied ping raises the DFW rule's hits and
//! the sender's `dfw-deny` by one per packet, the sender's egress allow by one per flow.

use std::time::Duration;

use pacific_netns_tests::*;
use serde_json::Value;

const TESTBOX: &str = "ns-dev/testbox";
const TESTBOX_IP: &str = "172.211.0.20";
const WORDPRESS: &str = "ns-dev/wordpress";
const WORDPRESS_IP: &str = "172.211.0.18";
const UPLINK_IP: &str = "203.0.113.2";

/// RX frames, RX bytes, TX frames, TX bytes.
type Counts = [u64; 4];

fn delta(after: Counts, before: Counts) -> Counts {
    [0, 1, 2, 3].map(|i| after[i] - before[i])
}

/// Pacific's counters of the port with this IP.
fn port(lab: &Lab, ip: &str) -> Counts {
    let ports = lab.items("ports", None);
    let p = ports
        .iter()
        .find(|p| p["ip"].as_str() == Some(ip))
        .unwrap_or_else(|| panic!("no port with IP {ip}: {}", Value::Array(ports.clone())));
    ["rx_packets", "rx_bytes", "tx_packets", "tx_bytes"].map(|k| {
        p[k].as_u64()
            .unwrap_or_else(|| panic!("port {ip} has no {k}: {p}"))
    })
}

/// The kernel's counters of an interface (`ip -s -j link`), from its own side.
fn link(out: &std::process::Output, what: &str) -> Counts {
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ip -s -j link of {what}: {e}:\n{}", describe(out)));
    let s = &v[0]["stats64"];
    let n = |dir: &str, k: &str| {
        s[dir][k]
            .as_u64()
            .unwrap_or_else(|| panic!("no {dir}.{k} for {what}: {v}"))
    };
    [
        n("rx", "packets"),
        n("rx", "bytes"),
        n("tx", "packets"),
        n("tx", "bytes"),
    ]
}

fn pod_eth0(lab: &Lab, pod: &str) -> Counts {
    let out = lab.exec(pod, &["ip", "-s", "-j", "link", "show", "eth0"]);
    link(&out, pod)
}

fn upstream_uplink(lab: &Lab) -> Counts {
    let out = lab.ip_in(
        &lab.upstream_netns(),
        &["-s", "-j", "link", "show", "uplink"],
    );
    link(&out, "the upstream router's uplink")
}

/// True when the port's RX is its peer's TX and the other way (see [`assert_mirrors`]).
fn mirrors(port: Counts, peer: Counts) -> bool {
    [port[0], port[1], port[2], port[3]] == [peer[2], peer[3], peer[0], peer[1]]
}

/// What the port received is what the interface at its other end sent, and the other way.
fn assert_mirrors(port: Counts, peer: Counts, what: &str) {
    assert_eq!(
        [port[0], port[1]],
        [peer[2], peer[3]],
        "{what}: get ports' RX (frames, bytes) should be the peer's TX"
    );
    assert_eq!(
        [port[2], port[3]],
        [peer[0], peer[1]],
        "{what}: get ports' TX (frames, bytes) should be the peer's RX"
    );
}

#[test]
fn port_counters_match_the_pods_and_the_upstreams_interfaces() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("ccount");
    assert!(
        ping_until(&lab, TESTBOX, WORDPRESS_IP, Duration::from_secs(10)),
        "testbox never reached wordpress"
    );
    assert!(
        ping_until(&lab, TESTBOX, "198.51.100.100", Duration::from_secs(10)),
        "testbox never reached ext/internet"
    );

    // 20 pings within the segment: counted once on each port, as each pod's eth0 counts them.
    let (tb0, wp0) = (port(&lab, TESTBOX_IP), port(&lab, WORDPRESS_IP));
    let (tbl0, wpl0) = (pod_eth0(&lab, TESTBOX), pod_eth0(&lab, WORDPRESS));
    let r = ping(&lab, TESTBOX, WORDPRESS_IP, 20, &["-i", "0.01"]);
    assert_eq!(r.received, 20, "testbox -> wordpress: {r:?}");
    // Read until both ends agree (a frame may be counted just after its peer saw it), not
    // after a guessed pause; the assertions below tell what differed when they never do.
    let read = || {
        (
            delta(port(&lab, TESTBOX_IP), tb0),
            delta(port(&lab, WORDPRESS_IP), wp0),
            delta(pod_eth0(&lab, TESTBOX), tbl0),
            delta(pod_eth0(&lab, WORDPRESS), wpl0),
        )
    };
    let mut last = read();
    wait_until(Duration::from_secs(10), || {
        last = read();
        let (tb, wp, tbl, wpl) = last;
        mirrors(tb, tbl) && mirrors(wp, wpl) && tb[0] >= 20 && wp[2] >= 20
    });
    let (tb, wp, tbl, wpl) = last;
    assert_mirrors(tb, tbl, "testbox after 20 pings");
    assert_mirrors(wp, wpl, "wordpress after 20 pings");
    assert!(tb[0] >= 20 && tb[1] >= 20 * 98, "testbox's port RX: {tb:?}");
    assert!(
        wp[2] >= 20 && wp[3] >= 20 * 98,
        "wordpress's port TX: {wp:?}"
    );

    // 2 MB of TCP to the outside, through SNAT, in GSO frames: counted as the kernel counts
    // them at both ends (a GSO frame is one frame), on the pod's port and on the uplink.
    let listen = "setsid timeout 20 socat -u TCP-LISTEN:5301,reuseaddr /dev/null >/dev/null 2>&1 &";
    lab.sh("ext/internet", listen);
    let listening = wait_until(Duration::from_secs(20), || {
        stdout(&lab.sh("ext/internet", "ss -Hltn 'sport = :5301'")).contains("5301")
    });
    assert!(
        listening,
        "socat never listened on ext/internet's port 5301"
    );
    let (tb0, up0) = (port(&lab, TESTBOX_IP), port(&lab, UPLINK_IP));
    let (tbl0, upl0) = (pod_eth0(&lab, TESTBOX), upstream_uplink(&lab));
    let send = lab.sh(
        TESTBOX,
        "head -c 2000000 /dev/zero | timeout 10 socat -u - TCP:198.51.100.100:5301",
    );
    assert!(
        send.status.success(),
        "2 MB to ext/internet: {}",
        describe(&send)
    );
    let read = || {
        (
            delta(port(&lab, TESTBOX_IP), tb0),
            delta(port(&lab, UPLINK_IP), up0),
            delta(pod_eth0(&lab, TESTBOX), tbl0),
            delta(upstream_uplink(&lab), upl0),
        )
    };
    let mut last = read();
    wait_until(Duration::from_secs(10), || {
        last = read();
        let (tb, up, tbl, upl) = last;
        mirrors(tb, tbl) && mirrors(up, upl) && tb[1] >= 2_000_000
    });
    let (tb, up, tbl, upl) = last;
    assert_mirrors(tb, tbl, "testbox after 2 MB");
    assert_mirrors(up, upl, "the uplink after 2 MB");
    assert!(tb[1] >= 2_000_000, "testbox's port RX bytes: {tb:?}");
    // Each frame testbox sent left by the uplink once, as long (SNAT keeps lengths); an ARP
    // request of testbox's (42 bytes), answered by its gateway, is all that may stay behind.
    let arps = tb[0] - up[2];
    assert!(
        arps <= 2 && tb[1] - up[3] == 42 * arps,
        "testbox's RX {tb:?} against the uplink's TX {up:?}"
    );
}

#[test]
fn a_denied_ping_counts_once_per_packet_on_the_rule_and_the_senders_port() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("cdeny");
    // ns-prod's testbox may not reach ns-dev's pods (ns-dev's default deny).
    let from = "ns-prod/testbox";
    let from_ip = "172.211.0.132";
    let r = ping(&lab, from, WORDPRESS_IP, 1, &[]);
    assert_eq!(r.received, 0, "ns-prod reached ns-dev: {r:?}");
    let hits0 = lab.dfw_hits("ns-dev", "default-deny-ingress");
    let egress0 = lab.dfw_hits("ns-prod", "allow-egress");
    let drops0 = lab.port_drops(from_ip, "dfw-deny");
    let rx0 = port(&lab, from_ip);
    let r = ping(&lab, from, WORDPRESS_IP, 7, &["-i", "0.01"]);
    assert_eq!(r.received, 0, "ns-prod reached ns-dev: {r:?}");
    // The last ping may still be on its way through the dataplane when ping gives up on it:
    // wait for its count, not a guessed pause.
    wait_until(Duration::from_secs(10), || {
        lab.port_drops(from_ip, "dfw-deny") - drops0 >= 7
    });
    assert_eq!(
        lab.dfw_hits("ns-dev", "default-deny-ingress") - hits0,
        7,
        "each denied ping is judged, and counted, again"
    );
    assert_eq!(
        lab.dfw_hits("ns-prod", "allow-egress") - egress0,
        1,
        "one ping is one flow, held by the sender's side (NSX's state table at each vNIC): \
         its egress allow counts it once"
    );
    assert_eq!(lab.port_drops(from_ip, "dfw-deny") - drops0, 7);
    let rx = delta(port(&lab, from_ip), rx0);
    assert_eq!(
        rx[0], 7,
        "the 7 pings are in the sender's port's RX: {rx:?}"
    );
    assert_eq!(rx[1], 7 * 98, "and their bytes: {rx:?}");
}

/// Every port's RX, TX and drop counters, by name.
fn all_counters(lab: &Lab) -> std::collections::BTreeMap<String, u64> {
    let mut all = std::collections::BTreeMap::new();
    for p in lab.items("ports", None) {
        let name = p["name"].as_str().unwrap_or("?").to_string();
        for k in ["rx_packets", "rx_bytes", "tx_packets", "tx_bytes"] {
            all.insert(format!("{name} {k}"), p[k].as_u64().unwrap_or(0));
        }
        if let Some(drops) = p["drops"].as_object() {
            for (reason, n) in drops {
                all.insert(format!("{name} {reason}"), n.as_u64().unwrap_or(0));
            }
        }
    }
    all
}

/// Sends COUNT copies of a raw frame from the pod's `eth0` to its gateway: KIND is a broken
/// IPv4 header (`cut`, `checksum`, `ihl`) or a TCP segment of no connection to an outside host
/// that cannot open one (`rst`, `synfin`, `finack`, `null`).
const RAW_SCRIPT: &str = r#"
import socket, struct, sys
kind, n, gw = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3].replace(':', ''))
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('eth0', 0))
me = s.getsockname()[4]
src, dst = socket.inet_aton('172.211.0.20'), socket.inet_aton('198.51.100.100')
flags = {'rst': 0x04, 'synfin': 0x03, 'finack': 0x11, 'null': 0}.get(kind)
if flags is None:
    l4, proto = struct.pack('!BBHHH', 8, 0, 0xf7bd, 0x4242, 0), 1
else:
    t = struct.pack('!HHIIBBHHH', 40100 + flags, 80, 1, 1, 0x50, flags, 1024, 0, 0)
    c = csum(src + dst + struct.pack('!BBH', 0, 6, len(t)) + t)
    l4, proto = t[:16] + struct.pack('!H', c) + t[18:], 6
h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0, src, dst)
h = h[:10] + struct.pack('!H', csum(h)) + h[12:]
if kind == 'checksum': h = h[:10] + bytes([h[10] ^ 0x55, h[11]]) + h[12:]
if kind == 'ihl': h = b'\x44' + h[1:]
frame = gw + me + b'\x08\x00' + h + l4
if kind == 'cut': frame = frame[:14 + 12]
for _ in range(n): s.send(frame)
"#;

#[test]
fn each_broken_frame_moves_its_own_drop_counter_on_the_senders_port_and_nothing_else() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("qa25brk");
    let r = ping(&lab, TESTBOX, "172.211.0.17", 1, &[]);
    assert_eq!(r.received, 1, "testbox reaches its gateway: {r:?}");
    let gw_mac = stdout(&lab.sh(
        TESTBOX,
        "ip neigh show 172.211.0.17 | sed -n 's/.*lladdr \\([0-9a-f:]*\\).*/\\1/p'",
    ));
    let gw_mac = gw_mac.trim();
    assert_eq!(
        gw_mac.len(),
        17,
        "testbox knows its gateway's MAC: {gw_mac:?}"
    );
    let cases = [
        ("cut", 3, 26, "malformed"),
        ("checksum", 4, 42, "malformed"),
        ("ihl", 5, 42, "malformed"),
        ("rst", 6, 54, "conntrack-invalid"),
        ("synfin", 2, 54, "conntrack-invalid"),
        ("finack", 3, 54, "conntrack-invalid"),
        ("null", 4, 54, "conntrack-invalid"),
    ];
    let port = "ns-dev/testbox";
    for (kind, n, len, reason) in cases {
        let before = all_counters(&lab);
        let out = lab.exec(
            TESTBOX,
            &["python3", "-c", RAW_SCRIPT, kind, &n.to_string(), gw_mac],
        );
        assert!(out.status.success(), "{kind}: {out:?}");
        let rx = format!("{port} rx_packets");
        wait_until(Duration::from_secs(5), || {
            all_counters(&lab)[&rx] - before[&rx] >= n
        });
        let after = all_counters(&lab);
        let moved: Vec<String> = after
            .iter()
            .filter(|(k, v)| before.get(*k).copied().unwrap_or(0) != **v)
            .map(|(k, v)| format!("{k} +{}", v - before.get(k).copied().unwrap_or(0)))
            .collect();
        let mut expected = vec![
            format!("{port} rx_bytes +{}", n * len),
            format!("{port} rx_packets +{n}"),
            format!("{port} {reason} +{n}"),
        ];
        expected.sort();
        let mut moved_sorted = moved.clone();
        moved_sorted.sort();
        assert_eq!(moved_sorted, expected, "{kind} x{n}");
    }
    // No rule judged the segments that open nothing (the gateway ping is no rule's either).
    assert_eq!(lab.dfw_hits("ns-dev", "allow-egress"), 0);
}
