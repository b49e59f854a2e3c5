//! TCP bulk throughput with iperf3: the client run with `-J`, its JSON report parsed.
//!
//! iperf3 is what the baseline figures in KERNEL-REFERENCE.md were taken with, so the bulk
//! numbers stay comparable with them. Only the end-of-test sums are read: `sum_received` (what
//! the server got, the throughput figure) and `sum_sent` (with the sender's retransmissions).
//! iperf3 3.12 exits 0 even when it could not connect and reports the failure in an `error` key:
//! that key is checked first.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::cmd;
use super::{Error, Result};

/// The port every iperf3 server of the bench listens on.
pub const PORT: u16 = 5201;

/// The end-of-test figures of one iperf3 run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IperfResult {
    /// Parallel streams (`-P`).
    pub streams: u32,
    /// Bits per second the sender wrote.
    pub sent_bps: f64,
    /// Bits per second the server received: the figure the table shows.
    pub received_bps: f64,
    /// TCP retransmissions the sender counted (absent on systems that do not report them).
    pub retransmits: Option<u64>,
    /// The measured duration, from the receiver's side.
    pub seconds: f64,
}

/// Parses the report of `iperf3 -c ... -J`.
pub fn parse(json: &str) -> Result<IperfResult> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| Error::new(format!("iperf3 printed no JSON report: {e}")))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(Error::new(format!("iperf3: {err}")));
    }
    let end = v
        .get("end")
        .ok_or_else(|| Error::new("iperf3 report has no `end` section"))?;
    let field = |sum: &str, key: &str| {
        end.get(sum)
            .and_then(|s| s.get(key))
            .and_then(Value::as_f64)
    };
    let need = |sum: &str, key: &str| {
        field(sum, key).ok_or_else(|| Error::new(format!("iperf3 report has no end.{sum}.{key}")))
    };
    let streams = v
        .pointer("/start/test_start/num_streams")
        .and_then(Value::as_u64)
        .unwrap_or(1) as u32;
    Ok(IperfResult {
        streams,
        sent_bps: need("sum_sent", "bits_per_second")?,
        received_bps: need("sum_received", "bits_per_second")?,
        retransmits: end
            .get("sum_sent")
            .and_then(|s| s.get("retransmits"))
            .and_then(Value::as_u64),
        seconds: need("sum_received", "seconds")?,
    })
}

/// Runs `iperf3 -c DST -p 5201 -t SECONDS -P STREAMS -J` inside `ns`, bounded in time.
pub fn run_client(ns: &str, dst: Ipv4Addr, seconds: u32, streams: u32) -> Result<IperfResult> {
    let args = cmd::in_ns(
        ns,
        &[
            "iperf3",
            "-c",
            &dst.to_string(),
            "-p",
            &PORT.to_string(),
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
            "--connect-timeout",
            "3000",
        ],
    );
    // The test time plus connection set-up and the exchange of results.
    let limit = Duration::from_secs(u64::from(seconds) + 15);
    let out = cmd::run_for(&args, None, limit)?;
    parse(&out.stdout).map_err(|e| {
        Error::new(format!(
            "{e} (from `{}`; stderr: {})",
            cmd::display(&args),
            out.stderr.trim()
        ))
    })
}

/// The argument vector of an iperf3 server inside `ns`; it serves tests one after another until
/// killed.
pub fn server_args(ns: &str) -> Vec<String> {
    cmd::in_ns(ns, &["iperf3", "-s", "-p", &PORT.to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `start.test_start` and `end` sums of `iperf3 -c 127.0.0.1 -t 1 -P 2 -J` (iperf 3.12),
    /// per-stream sections and intervals left out.
    const REPORT: &str = r#"{"start": {"test_start": {"protocol": "TCP", "num_streams": 2, "blksize": 131072, "omit": 0, "duration": 1, "bytes": 0, "blocks": 0, "reverse": 0, "tos": 0, "target_bitrate": 0}}, "end": {"sum_sent": {"start": 0, "end": 1.000075, "seconds": 1.000075, "bytes": 3197894656, "bits_per_second": 25581238655.100864, "retransmits": 23, "sender": true}, "sum_received": {"start": 0, "end": 1.000113, "seconds": 1.000113, "bytes": 3197894656, "bits_per_second": 25580266677.8654, "sender": true}, "cpu_utilization_percent": {"host_total": 96.6297879281894, "host_user": 0.4548587729654942, "host_system": 96.1749291552239, "remote_total": 39.616046074471065, "remote_user": 1.046874375074991, "remote_system": 38.56917169939607}}}"#;

    /// What iperf 3.12 prints (with exit status 0) when nothing listens.
    const REFUSED: &str = "{\n\t\"start\":\t{\n\t\t\"connected\":\t[],\n\t\t\"version\":\t\"iperf 3.12\"\n\t},\n\t\"intervals\":\t[],\n\t\"end\":\t{\n\t},\n\t\"error\":\t\"unable to connect to server: Connection refused\"\n}";

    #[test]
    fn reads_the_end_sums() {
        let r = parse(REPORT).unwrap();
        assert_eq!(r.streams, 2);
        assert_eq!(r.received_bps, 25580266677.8654);
        assert_eq!(r.sent_bps, 25581238655.100864);
        assert_eq!(r.retransmits, Some(23));
        assert!((r.seconds - 1.000113).abs() < 1e-9);
    }

    #[test]
    fn reported_errors_and_garbage_are_errors() {
        assert_eq!(
            parse(REFUSED).unwrap_err().to_string(),
            "iperf3: unable to connect to server: Connection refused"
        );
        assert!(parse("iperf3: error - unable to connect").is_err());
        assert!(parse(r#"{"end": {"sum_sent": {"bits_per_second": 1.0}}}"#)
            .unwrap_err()
            .to_string()
            .contains("sum_received"));
    }
}
