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
    let cases: [(&str, String); 9] = [
        (
            "jumbo pod -> outside (SNAT)",
            upload(&lab, &f, tb, "ext/internet", "198.51.100.100", 5003),
        ),
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
