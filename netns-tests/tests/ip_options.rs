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
