//! Data integrity through every translated path: bytes sent through SNAT, a VIP (DNAT and
//! automap SNAT), a ClusterIP, a hairpin and across namespaces arrive as they left, with the
//! senders' offloads on (partial checksums, 64 KB GSO segments, a pod with MTU 9000 whose big
//! datagrams the T1 cuts into fragments) and off (`ethtool -K eth0 tso off gso off tx off`).
//! A rewrite that got a checksum wrong shows as a stalled or retransmitting transfer or as
//! missing datagrams; one that got a byte wrong, as a different sha256.

use std::path::PathBuf;

use pacific_netns_tests::*;

const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: sink
  namespace: ns-dev
spec:
  type: LoadBalancer
  selector:
    app: wordpress
  ports:
  - name: tcp
    protocol: TCP
    port: 5001
    targetPort: 5001
  - name: udp
    protocol: UDP
    port: 5002
    targetPort: 5002
";

/// Echoes datagrams (`serve PORT SECONDS`) or sends datagrams of many sizes and counts the
/// echoes that come back equal, and those that come back different (`send HOST PORT`). Don't
/// fragment is cleared, so a pod with MTU 9000 sends 9000-byte packets the T1 must cut.
const UDP_ECHO: &str = r#"
import hashlib, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
if sys.argv[1] == "serve":
    s.bind(("0.0.0.0", int(sys.argv[2])))
    s.settimeout(0.5)
    end = time.time() + float(sys.argv[3])
    while time.time() < end:
        try:
            d, a = s.recvfrom(70000)
        except socket.timeout:
            continue
        s.sendto(d, a)
else:
    s.settimeout(1.0)
    ok = bad = 0
    for seq, n in enumerate([1, 100, 1472, 1473, 2961, 8000, 8972, 9000, 30000, 65507] * 2):
        want = b"".join(hashlib.sha256(b"%d-%d" % (seq, i)).digest() for i in range(n // 32 + 1))[:n]
        s.sendto(want, (sys.argv[2], int(sys.argv[3])))
        try:
            got = s.recvfrom(70000)[0]
        except socket.timeout:
            continue
        if got == want:
            ok += 1
        else:
            bad += 1
    print("ok=%d bad=%d" % (ok, bad))
"#;

struct Files {
    data: PathBuf,
    echo: PathBuf,
    sha256: String,
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.data);
        let _ = std::fs::remove_file(&self.echo);
    }
}

/// 8 MB of pseudo-random bytes (a splitmix64 stream) and the UDP script, in files every
/// namespace sees.
fn files() -> Files {
    let dir = std::env::temp_dir();
    let id = std::process::id();
    let data = dir.join(format!("qa26dat-{id}.bin"));
    let echo = dir.join(format!("qa26dat-{id}.py"));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..1 << 20)
        .flat_map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)).to_le_bytes()
        })
        .collect();
    std::fs::write(&data, bytes).expect("write the data file");
    std::fs::write(&echo, UDP_ECHO).expect("write the UDP script");
    let o = run_bounded(
        {
            let mut c = std::process::Command::new("sha256sum");
            c.arg(&data);
            c
        },
        None,
        EXEC_TIMEOUT,
    );
    let sha256 = stdout(&o)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    assert_eq!(sha256.len(), 64, "sha256sum: {}", describe(&o));
    Files { data, echo, sha256 }
}

/// The TCP segments from `src` in the pcap file `path` (Ethernet link type) whose checksum is
/// neither complete nor a partial checksum (the folded pseudo-header sum, which the kernel or
/// a NIC completes later: virtio `NEEDS_CSUM`) for their own addresses, and how many were seen.
fn tcp_checksums_wrong(path: &std::path::Path, src: [u8; 4]) -> (usize, Vec<String>) {
    let b = std::fs::read(path).expect("read the capture");
    let sum = |data: &[u8], mut acc: u32| {
        for w in data.chunks(2) {
            acc += u32::from(w[0]) << 8 | u32::from(*w.get(1).unwrap_or(&0));
        }
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc
    };
    let (mut seen, mut wrong) = (0, Vec::new());
    let mut at = 24;
    while at + 16 <= b.len() {
        let le = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
        let (caplen, len) = (le(at + 8), le(at + 12));
        let frame = &b[(at + 16).min(b.len())..(at + 16 + caplen).min(b.len())];
        at += 16 + caplen;
        if caplen != len || frame.len() < 34 || frame[12..14] != [8, 0] || frame[23] != 6 {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 15) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
        if ip[12..16] != src || total < ihl + 20 {
            continue;
        }
        let seg = &ip[ihl..total];
        let l4_len = u32::try_from(seg.len()).unwrap_or(0);
        let pseudo = sum(&ip[12..20], 6 + l4_len);
        let field = u32::from(u16::from_be_bytes([seg[16], seg[17]]));
        seen += 1;
        if sum(seg, pseudo) != 0xffff && field != pseudo {
            wrong.push(format!(
                "{} bytes, checksum {field:#06x}, pseudo-header sum {pseudo:#06x}",
                seg.len()
            ));
        }
    }
    (seen, wrong)
}

/// The sha256 of what `receiver` reads on TCP port `port` while `sender` sends the data file
/// to `dst:port` (which a translation may map to `port` on `receiver`).
fn upload(lab: &Lab, f: &Files, sender: &str, receiver: &str, dst: &str, port: u16) -> String {
    let data = f.data.display().to_string();
    std::thread::scope(|s| {
        let rx = s.spawn(|| {
            lab.sh(
                receiver,
                &format!("timeout 40 socat -u TCP-LISTEN:{port},reuseaddr STDOUT | sha256sum"),
            )
        });
        let tx = lab.exec(
            sender,
            &[
                "timeout",
                "40",
                "socat",
                "-u",
                &format!("FILE:{data}"),
                &format!("TCP:{dst}:{port},retry=50,interval=0.2"),
            ],
        );
        let rx = rx.join().expect("receiver thread");
        assert!(tx.status.success(), "{sender} -> {dst}: {}", describe(&tx));
        stdout(&rx)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    })
}

/// The sha256 of what `client` reads from `dst:port` while `server` serves the data file.
fn download(lab: &Lab, f: &Files, server: &str, client: &str, dst: &str, port: u16) -> String {
    let data = f.data.display().to_string();
    std::thread::scope(|s| {
        let srv = s.spawn(|| {
            lab.exec(
                server,
                &[
                    "timeout",
                    "40",
                    "socat",
                    "-u",
                    &format!("FILE:{data}"),
                    &format!("TCP-LISTEN:{port},reuseaddr"),
                ],
            )
        });
        let rx = lab.sh(
            client,
            &format!(
                "timeout 40 socat -u TCP:{dst}:{port},retry=50,interval=0.2 STDOUT | sha256sum"
            ),
        );
        let _ = srv.join();
        stdout(&rx)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    })
}

/// The UDP script's `ok=N bad=M` for datagrams from `client` to `dst:port`, echoed by `server`.
fn udp_echo(lab: &Lab, f: &Files, server: &str, client: &str, dst: &str, port: u16) -> String {
    let echo = f.echo.display().to_string();
    std::thread::scope(|s| {
        let srv = s.spawn(|| {
            lab.exec(
                server,
                &[
                    "timeout",
                    "20",
                    "python3",
                    &echo,
                    "serve",
                    &port.to_string(),
                    "12",
                ],
            )
        });
        std::thread::sleep(std::time::Duration::from_secs(2));
        let o = lab.exec(
            client,
            &[
                "timeout",
                "40",
                "python3",
                &echo,
                "send",
                dst,
                &port.to_string(),
            ],
        );
        let _ = srv.join();
        stdout(&o).trim().to_string()
    })
}

#[test]
fn bytes_arrive_intact_through_nat_hairpin_jumbo_and_offload_off_pods() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("qa26dat");
    lab.apply_ok(SERVICE, None, None);
    let vip = lab.service_vip("sink").expect("sink has a VIP");
    let cip = lab.cluster_ip("ns-dev", "sink");
    let f = files();
    // testbox (172.211.0.20) and wordpress (.18, the backend) raise their MTU; wordpress-mysql
    // (.19) sends with no offloads, every checksum complete.
    for pod in ["ns-dev/testbox", "ns-dev/wordpress"] {
        let o = lab.exec(pod, &["ip", "link", "set", "eth0", "mtu", "9000"]);
        assert!(o.status.success(), "{pod}: {}", describe(&o));
    }
    let o = lab.exec(
        "ns-dev/wordpress-mysql",
        &[
            "ethtool", "-K", "eth0", "tso", "off", "gso", "off", "tx", "off",
        ],
    );
    assert!(o.status.success(), "ethtool: {}", describe(&o));
    let supervisor = "supervisor/42326254b49605f5fca490fd3ad3229e";

    let tb = "ns-dev/testbox";
    let wp = "ns-dev/wordpress";
    let my = "ns-dev/wordpress-mysql";
    // The first upload is also captured where it leaves Pacific, on the upstream router's
    // side of the uplink: each segment, translated to the egress IP, must carry a checksum
    // that holds for its new address (complete, or partial to be completed by the kernel).
    let pcap = f.data.with_extension("pcap");
    let upstream = lab.upstream_netns();
    let snat_up = std::thread::scope(|s| {
        let cap = s.spawn(|| {
            let mut c = std::process::Command::new("ip");
            c.args([
                "netns", "exec", &upstream, "timeout", "30", "tcpdump", "-i", "uplink",
            ]);
            c.args(["-s", "0", "-c", "100", "-U", "-w"]).arg(&pcap);
            c.arg("tcp and src host 172.60.96.2 and port 5003");
            run_bounded(c, None, EXEC_TIMEOUT)
        });
        assert!(
            wait_until(std::time::Duration::from_secs(10), || pcap.exists()),
            "tcpdump did not start"
        );
        let got = upload(&lab, &f, tb, "ext/internet", "198.51.100.100", 5003);
        let _ = cap.join();
        got
    });
    let (seen, wrong) = tcp_checksums_wrong(&pcap, [172, 60, 96, 2]);
    let _ = std::fs::remove_file(&pcap);
    assert!(
        seen >= 50,
        "only {seen} segments captured from the egress IP"
    );
    assert!(
        wrong.is_empty(),
        "segments with a wrong checksum after SNAT: {wrong:?}"
    );

    let cases: [(&str, String); 9] = [
        ("jumbo pod -> outside (SNAT)", snat_up),
        (
            "outside -> jumbo pod (SNAT reply)",
            download(&lab, &f, "ext/internet", tb, "198.51.100.100", 5003),
        ),
        (
            "no-offload pod -> outside (SNAT)",
            upload(&lab, &f, my, "ext/internet", "198.51.100.100", 5003),
        ),
        (
            "outside -> VIP",
            upload(&lab, &f, "ext/hop", wp, &vip, 5001),
        ),
        (
            "VIP -> outside (reply)",
            download(&lab, &f, wp, "ext/hop", &vip, 5001),
        ),
        (
            "no-offload pod -> ClusterIP",
            upload(&lab, &f, my, wp, &cip, 5001),
        ),
        (
            "ClusterIP -> no-offload pod (reply)",
            download(&lab, &f, wp, my, &cip, 5001),
        ),
        (
            "pod -> own VIP (hairpin)",
            upload(&lab, &f, wp, wp, &vip, 5001),
        ),
        (
            "supervisor -> jumbo pod across namespaces",
            upload(&lab, &f, supervisor, tb, "172.211.0.20", 5001),
        ),
    ];
    for (path, got) in &cases {
        assert_eq!(got, &f.sha256, "{path}: the bytes that arrived differ");
    }

    // Datagrams up to 65507 bytes, cut into fragments by the sender or (from the jumbo pod,
    // unfragmented up to 9000) by the T1, through SNAT and the VIP: every echo that comes back
    // is byte for byte what was sent, and most come back.
    for (path, server, client, dst, port) in [
        (
            "jumbo pod -> outside (SNAT)",
            "ext/internet",
            tb,
            "198.51.100.100",
            5004,
        ),
        ("outside -> VIP", wp, "ext/hop", vip.as_str(), 5002),
        ("no-offload pod -> ClusterIP", wp, my, cip.as_str(), 5002),
    ] {
        let out = udp_echo(&lab, &f, server, client, dst, port);
        let count = |k: &str| -> u32 {
            out.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        assert_eq!(
            count("bad="),
            0,
            "{path}: datagrams came back changed: {out}"
        );
        assert!(
            count("ok=") >= 18,
            "{path}: too few datagrams came back whole: {out}"
        );
    }
}
