//! IPv4 options as a network engineer sees them cross the gateways, compared with what Linux
//! routers in the same places do, in the seed lab.

use pacific_netns_tests::*;

/// The addresses `ping -R` lists under `RR:`, in order.
fn record_route(out: &str) -> Vec<String> {
    let Some(at) = out.find("RR:") else {
        return Vec::new();
    };
    out[at + 3..]
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn ping_record_route_lists_t1_and_t0_as_linux_routers_would() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("qa16ipo");
    // The seed's testbox (172.211.0.20) to hop through T1 (transit 100.64.0.1, segment gateway
    // 172.211.0.17), T0 (uplink 203.0.113.2, transit 100.64.0.0) and the Linux upstream router
    // (198.51.100.1 out, 203.0.113.1 back): each router writes the address it sends from, the
    // host writes its own twice (on receipt and in the reply), so all 9 slots are used.
    let want = [
        "172.211.0.20",
        "100.64.0.1",
        "203.0.113.2",
        "198.51.100.1",
        "198.51.100.10",
        "198.51.100.10",
        "203.0.113.1",
        "100.64.0.0",
        "172.211.0.17",
    ];
    for size in ["56", "3000"] {
        let mut seen = Vec::new();
        let arrived = wait_until(std::time::Duration::from_secs(10), || {
            let o = lab.exec(
                "ns-dev/testbox",
                &[
                    "ping",
                    "-n",
                    "-R",
                    "-c",
                    "1",
                    "-W",
                    "1",
                    "-s",
                    size,
                    "198.51.100.10",
                ],
            );
            seen = record_route(&stdout(&o));
            o.status.success()
        });
        assert!(arrived, "ping -R -s {size} never answered");
        assert_eq!(seen, want, "ping -R -s {size} 198.51.100.10");
    }
}

/// Sends from `run`'s namespace one echo request to `dst` whose header carries `options` (hex,
/// a multiple of 4 bytes), through a raw socket that writes the header as given, and prints the
/// first ICMP parameter problem about it that comes back within 3 s as "SRC POINTER", or
/// nothing.
fn param_problem_script(dst: &str, options: &str) -> String {
    format!(
        "import socket, struct, time\n\
         opts = bytes.fromhex('{options}')\n\
         def csum(b):\n\
         \x20   s = sum(struct.unpack('!%dH' % (len(b) // 2), b))\n\
         \x20   while s >> 16: s = (s & 0xffff) + (s >> 16)\n\
         \x20   return ~s & 0xffff\n\
         echo = struct.pack('!BBHHH', 8, 0, 0, 0x5151, 1) + b'pacific-options'\n\
         echo = echo[:2] + struct.pack('!H', csum(echo + b'\\0')) + echo[4:]\n\
         ihl = 5 + len(opts) // 4\n\
         total = ihl * 4 + len(echo)\n\
         hdr = struct.pack('!BBHHHBBH4s4s', 0x40 | ihl, 0, total, 0x4242, 0, 64, 1, 0,\n\
         \x20   bytes(4), socket.inet_aton('{dst}')) + opts\n\
         rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n\
         tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n\
         tx.sendto(hdr + echo, ('{dst}', 0))\n\
         end = time.time() + 3\n\
         while time.time() < end:\n\
         \x20   rx.settimeout(max(0.01, end - time.time()))\n\
         \x20   try:\n\
         \x20       pkt, (src, _) = rx.recvfrom(2000)\n\
         \x20   except OSError:\n\
         \x20       break\n\
         \x20   icmp = pkt[(pkt[0] & 15) * 4:]\n\
         \x20   if icmp[0] == 12 and icmp[1] == 0 and icmp[12:14] == b'\\x42\\x42':\n\
         \x20       print(src, icmp[4])\n\
         \x20       break\n"
    )
}

/// Malformed options a Linux router answers with a parameter problem pointing at the bad
/// octet, and drops: a record route whose pointer is below 4, an option of length 0, a
/// timestamp too short for its pointer and flags.
const BAD_OPTIONS: [(&str, &str, &str); 3] = [
    ("record route, pointer 3", "0707030000000000", "22"),
    ("option length 0", "07000000", "20"),
    ("timestamp of length 3", "44030500", "21"),
];

#[test]
fn malformed_ip_options_get_a_parameter_problem_as_from_a_linux_router() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("qa20bad");
    let run_in_ns = |ns: &str, script: &str| {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", ns, "python3", "-c", script]);
        stdout(&run_bounded(cmd, None, std::time::Duration::from_secs(10)))
    };
    for (what, options, pointer) in BAD_OPTIONS {
        // The Linux upstream router, the first router a packet from the outside host meets.
        let script = param_problem_script("203.0.113.2", options);
        let linux = stdout(&lab.exec("ext/hop", &["python3", "-c", &script]));
        assert_eq!(
            linux.trim(),
            format!("198.51.100.1 {pointer}"),
            "Linux: {what}"
        );
        // T1 to a pod (its segment's gateway), T0 to the upstream router (its uplink): the same
        // answer, from the gateway the sender faces, whether the packet was for an outside host
        // or for the gateway itself.
        let script = param_problem_script("198.51.100.10", options);
        let t1 = stdout(&lab.exec("ns-dev/testbox", &["python3", "-c", &script]));
        assert_eq!(t1.trim(), format!("172.211.0.17 {pointer}"), "T1: {what}");
        let script = param_problem_script("172.211.0.17", options);
        let t1 = stdout(&lab.exec("ns-dev/testbox", &["python3", "-c", &script]));
        assert_eq!(
            t1.trim(),
            format!("172.211.0.17 {pointer}"),
            "T1 itself: {what}"
        );
        let script = param_problem_script("172.211.0.20", options);
        let t0 = run_in_ns(&lab.upstream_netns(), &script);
        assert_eq!(t0.trim(), format!("203.0.113.2 {pointer}"), "T0: {what}");
    }
    // Dropped, not forwarded: counted on the port each came in by.
    assert_eq!(lab.port_drops("172.211.0.20", "bad-ip-options"), 6);
    assert_eq!(lab.port_drops("203.0.113.2", "bad-ip-options"), 3);
}

/// `ping -R` to an address a gateway answers itself, past others: each gateway crossed on the
/// way in and back writes its address, as Linux routers in a row do, around the answering
/// gateway's own (twice, on receipt and in the reply), and the sender's at both ends.
#[test]
fn ping_record_route_to_a_gateway_lists_the_gateways_crossed_to_it() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("qa20rra");
    let vip = lab.service_vip("wordpress").expect("wordpress has a VIP");
    let cases = [
        // T0's uplink address from a pod: T1 in (transit 100.64.0.1), T1 back (segment gateway).
        (
            "ns-dev/testbox",
            "203.0.113.2".to_string(),
            vec![
                "172.211.0.20",
                "100.64.0.1",
                "203.0.113.2",
                "203.0.113.2",
                "172.211.0.17",
                "172.211.0.20",
            ],
        ),
        // A VIP from the outside host: the Linux upstream router and T0 (transit 100.64.0.0) in,
        // T0 (uplink) and the upstream router back.
        (
            "ext/hop",
            vip.clone(),
            vec![
                "198.51.100.10",
                "203.0.113.1",
                "100.64.0.0",
                &vip,
                &vip,
                "203.0.113.2",
                "198.51.100.1",
                "198.51.100.10",
            ],
        ),
    ];
    for (from, dst, want) in cases {
        let mut seen = Vec::new();
        let answered = wait_until(std::time::Duration::from_secs(10), || {
            let o = lab.exec(from, &["ping", "-n", "-R", "-c", "1", "-W", "1", &dst]);
            seen = record_route(&stdout(&o));
            o.status.success()
        });
        assert!(answered, "ping -R {dst} from {from} never answered");
        assert_eq!(seen, want, "ping -R {dst} from {from}");
    }
}

/// The lines `ping -T` lists under `TS:`, each split into its words, and its count of
/// unrecorded hops.
fn timestamps(out: &str) -> (Vec<Vec<String>>, Option<String>) {
    let Some(at) = out.find("TS:") else {
        return (Vec::new(), None);
    };
    let entries = out[at + 3..]
        .lines()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("Unrecorded"))
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    let unrecorded = out
        .lines()
        .find_map(|l| l.strip_prefix("Unrecorded hops: "))
        .map(String::from);
    (entries, unrecorded)
}

/// `ping -T` to an outside host: T1 and T0 stamp it, as the Linux upstream router after
/// them does, both ways; with addresses, each the one it received the packet on.
#[test]
fn ping_timestamps_are_stamped_by_t1_and_t0_as_by_linux_routers() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("qa20ts");
    let ping = |mode: &str| {
        let mut seen = (Vec::new(), None);
        let answered = wait_until(std::time::Duration::from_secs(10), || {
            let o = lab.exec(
                "ns-dev/testbox",
                &[
                    "ping",
                    "-n",
                    "-T",
                    mode,
                    "-c",
                    "1",
                    "-W",
                    "1",
                    "198.51.100.10",
                ],
            );
            seen = timestamps(&stdout(&o));
            o.status.success()
        });
        assert!(answered, "ping -T {mode} never answered");
        seen
    };
    // Four entries of address and time: the testbox's own, T1's (its segment's gateway), T0's
    // (its end of the transit link), the upstream router's; the 5 hops after find it full.
    let (entries, unrecorded) = ping("tsandaddr");
    let addrs: Vec<&str> = entries.iter().map(|e| e[0].as_str()).collect();
    assert_eq!(
        addrs,
        ["172.211.0.20", "172.211.0.17", "100.64.0.0", "203.0.113.1"],
        "{entries:?}"
    );
    assert_eq!(unrecorded.as_deref(), Some("5"), "{entries:?}");
    // Nine times: the testbox, T1, T0, the upstream router, the host twice, and back; the
    // testbox's receipt alone is left unrecorded.
    let (entries, unrecorded) = ping("tsonly");
    assert_eq!(entries.len(), 9, "{entries:?}");
    assert_eq!(unrecorded.as_deref(), Some("1"), "{entries:?}");
}
