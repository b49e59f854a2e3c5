//! Interface counters from `ip -s -j link`: what a router forwarded, read the way an operator would.
//!
//! The kernel keeps 64-bit per-device counters (`stats64`); iproute2 prints them as JSON with `-j`,
//! which is stable across versions, unlike the text layout. The UDP scenario reads them before and
//! after a load and reports the difference.

use serde_json::Value;

use super::cmd;
use super::{Error, Result};

/// The counters of one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkCounters {
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

/// Finds `ifname` in the output of `ip -s -j link show` and reads its `stats64` counters.
pub fn parse(json: &str, ifname: &str) -> Result<LinkCounters> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| Error::new(format!("`ip -s -j link` printed no JSON: {e}")))?;
    let link = v
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l.get("ifname").and_then(Value::as_str) == Some(ifname))
        .ok_or_else(|| Error::new(format!("`ip -s -j link` lists no interface {ifname}")))?;
    let stats = link
        .get("stats64")
        .or_else(|| link.get("stats"))
        .ok_or_else(|| Error::new(format!("{ifname}: no statistics in `ip -s -j link`")))?;
    let num = |dir: &str, key: &str| -> Result<u64> {
        stats
            .get(dir)
            .and_then(|d| d.get(key))
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                Error::new(format!(
                    "{ifname}: no {dir}.{key} counter in `ip -s -j link`"
                ))
            })
    };
    Ok(LinkCounters {
        rx_packets: num("rx", "packets")?,
        rx_dropped: num("rx", "dropped")?,
        tx_packets: num("tx", "packets")?,
        tx_dropped: num("tx", "dropped")?,
    })
}

/// Reads the counters of `dev` inside namespace `ns`.
pub fn read(ns: &str, dev: &str) -> Result<LinkCounters> {
    let out = cmd::run(&["ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev])?;
    parse(&out, dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ip -s -j link show dev to-server` in a kernel rig's router namespace (iproute2 6.1).
    const IP_LINK: &str = r#"[{"ifindex":3,"link_index":2,"ifname":"to-server","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"qdisc":"noqueue","operstate":"UP","linkmode":"DEFAULT","group":"default","txqlen":1000,"link_type":"ether","address":"b2:4f:8e:1c:0a:31","broadcast":"ff:ff:ff:ff:ff:ff","link_netnsid":1,"stats64":{"rx":{"bytes":5370,"packets":61,"errors":0,"dropped":0,"over_errors":0,"multicast":0},"tx":{"bytes":93417604,"packets":1389245,"errors":0,"dropped":7,"carrier_errors":0,"collisions":0}}},{"ifindex":1,"ifname":"lo","flags":["LOOPBACK"],"mtu":65536,"qdisc":"noop","operstate":"DOWN","linkmode":"DEFAULT","group":"default","txqlen":1000,"link_type":"loopback","address":"00:00:00:00:00:00","broadcast":"00:00:00:00:00:00","stats64":{"rx":{"bytes":0,"packets":0,"errors":0,"dropped":0,"over_errors":0,"multicast":0},"tx":{"bytes":0,"packets":0,"errors":0,"dropped":0,"carrier_errors":0,"collisions":0}}}]"#;

    #[test]
    fn reads_the_named_interface() {
        let c = parse(IP_LINK, "to-server").unwrap();
        assert_eq!(
            c,
            LinkCounters {
                rx_packets: 61,
                rx_dropped: 0,
                tx_packets: 1_389_245,
                tx_dropped: 7
            }
        );
        assert_eq!(parse(IP_LINK, "lo").unwrap(), LinkCounters::default());
    }

    #[test]
    fn missing_interface_or_counters_is_an_error() {
        assert!(parse(IP_LINK, "eth0")
            .unwrap_err()
            .to_string()
            .contains("no interface eth0"));
        assert!(parse(r#"[{"ifname":"eth0"}]"#, "eth0").is_err());
        assert!(parse("Device does not exist", "eth0").is_err());
    }
}
