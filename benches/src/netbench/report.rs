//! The results: every measurement with its details, the comparison table, and the notes that say
//! what each number counts. Printed as text and written as JSON from the same struct.

use serde::Serialize;

use super::iperf::IperfResult;
use super::tcp::{ConnReport, RrReport};
use super::udp::UdpOutcome;

/// What one scenario measured on one rig.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    Tcp(IperfResult),
    Udp(UdpOutcome),
    ConnRate(ConnReport),
    Latency(RrReport),
}

/// One number of an outcome, as a table row shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub value: f64,
}

impl Outcome {
    /// The figures the table compares, in display units.
    pub fn metrics(&self) -> Vec<Metric> {
        let m = |name, unit, value| Metric { name, unit, value };
        match self {
            Outcome::Tcp(r) => vec![m("", "Gbit/s", r.received_bps / 1e9)],
            Outcome::Udp(u) => vec![
                m("sent", "kpps", u.rate(u.sent) / 1e3),
                m("forwarded", "kpps", u.rate(u.forwarded) / 1e3),
                m("received", "kpps", u.rate(u.received) / 1e3),
                m("loss", "%", u.loss * 100.0),
            ],
            Outcome::ConnRate(c) => vec![m("", "conn/s", c.per_second)],
            Outcome::Latency(r) => vec![m("p50", "us", r.p50_us), m("p99", "us", r.p99_us)],
        }
    }
}

/// One scenario on one rig: its outcome or why it failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub scenario: String,
    pub rig: String,
    pub outcome: Option<Outcome>,
    pub error: Option<String>,
}

/// One line of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub scenario: String,
    pub unit: String,
    pub kernel: Option<f64>,
    pub pacific: Option<f64>,
    /// Pacific / kernel.
    pub ratio: Option<f64>,
}

/// The machine the figures come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Host {
    pub cpus: usize,
    pub kernel: String,
}

/// Everything a run produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub quick: bool,
    pub unix_time: u64,
    pub host: Host,
    pub rows: Vec<Row>,
    pub runs: Vec<Run>,
    pub notes: Vec<String>,
}

/// Pairs the kernel's and Pacific's runs of each scenario, metric by metric, in run order.
pub fn rows(runs: &[Run]) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for run in runs {
        let Some(outcome) = &run.outcome else {
            continue;
        };
        for metric in outcome.metrics() {
            let scenario = if metric.name.is_empty() {
                run.scenario.clone()
            } else {
                format!("{}: {}", run.scenario, metric.name)
            };
            let idx = match rows.iter().position(|r| r.scenario == scenario) {
                Some(i) => i,
                None => {
                    rows.push(Row {
                        scenario,
                        unit: metric.unit.to_string(),
                        kernel: None,
                        pacific: None,
                        ratio: None,
                    });
                    rows.len() - 1
                }
            };
            let row = &mut rows[idx];
            if run.rig == "kernel" {
                row.kernel = Some(metric.value);
            } else {
                row.pacific = Some(metric.value);
            }
            row.ratio = match (row.kernel, row.pacific) {
                (Some(k), Some(p)) if k != 0.0 => Some(p / k),
                _ => None,
            };
        }
    }
    rows
}

/// A figure with about three significant digits.
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The comparison as a text table, failed runs listed under it.
pub fn table(report: &Report) -> String {
    let header = ["scenario", "unit", "kernel", "Pacific", "Pacific/kernel"];
    let cell = |v: Option<f64>| v.map_or_else(|| "-".to_string(), fmt_value);
    let body: Vec<[String; 5]> = report
        .rows
        .iter()
        .map(|r| {
            [
                r.scenario.clone(),
                r.unit.clone(),
                cell(r.kernel),
                cell(r.pacific),
                r.ratio
                    .map_or_else(|| "-".to_string(), |x| format!("{x:.2}")),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &body {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 5]| {
        // Text columns left-aligned, figures right-aligned.
        out.push_str(&format!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {:>w4$}\n",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4]
        ));
    };
    line(header);
    for row in &body {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
    for run in report.runs.iter().filter(|r| r.error.is_some()) {
        out.push_str(&format!(
            "failed: {} on {}: {}\n",
            run.scenario,
            run.rig,
            run.error.as_deref().unwrap_or_default()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netbench::udp::{SendReport, SinkReport};

    fn run(scenario: &str, rig: &str, outcome: Outcome) -> Run {
        Run {
            scenario: scenario.into(),
            rig: rig.into(),
            outcome: Some(outcome),
            error: None,
        }
    }

    #[test]
    fn rows_pair_rigs_and_compute_ratios() {
        let tcp = |bps| {
            Outcome::Tcp(IperfResult {
                streams: 1,
                sent_bps: bps,
                received_bps: bps,
                retransmits: None,
                seconds: 2.0,
            })
        };
        let udp = Outcome::Udp(UdpOutcome::new(
            64,
            &SendReport {
                sent: 2000,
                send_errors: 0,
                seconds: 2.0,
            },
            1500,
            500,
            &SinkReport {
                received: 1000,
                bytes: 64_000,
                seconds: 2.0,
            },
        ));
        let runs = vec![
            run("TCP pod->pod, 1 stream", "kernel", tcp(20e9)),
            run("TCP pod->pod, 1 stream", "Pacific", tcp(10e9)),
            run("UDP 64 B pod->pod", "Pacific", udp),
            Run {
                scenario: "UDP 64 B pod->pod".into(),
                rig: "kernel".into(),
                outcome: None,
                error: Some("boom".into()),
            },
        ];
        let rows = rows(&runs);
        assert_eq!(
            rows[0],
            Row {
                scenario: "TCP pod->pod, 1 stream".into(),
                unit: "Gbit/s".into(),
                kernel: Some(20.0),
                pacific: Some(10.0),
                ratio: Some(0.5)
            }
        );
        let names: Vec<&str> = rows.iter().map(|r| r.scenario.as_str()).collect();
        assert_eq!(
            names[1..],
            [
                "UDP 64 B pod->pod: sent",
                "UDP 64 B pod->pod: forwarded",
                "UDP 64 B pod->pod: received",
                "UDP 64 B pod->pod: loss"
            ]
        );
        assert_eq!(
            (rows[3].pacific, rows[3].kernel, rows[3].ratio),
            (Some(0.5), None, None)
        );
        assert_eq!(rows[4].pacific, Some(50.0));
        let report = Report {
            quick: true,
            unix_time: 0,
            host: Host {
                cpus: 2,
                kernel: "6.1".into(),
            },
            rows,
            runs,
            notes: vec![],
        };
        let t = table(&report);
        let first: Vec<&str> = t.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            first[first.len() - 4..],
            ["Gbit/s", "20.0", "10.0", "0.50"],
            "{t}"
        );
        assert!(t.contains("failed: UDP 64 B pod->pod on kernel: boom"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["runs"][0]["outcome"]["kind"], "tcp");
        assert_eq!(json["rows"][0]["ratio"], 0.5);
    }

    #[test]
    fn values_keep_three_digits() {
        assert_eq!(fmt_value(19.53), "19.5");
        assert_eq!(fmt_value(1234.6), "1235");
        assert_eq!(fmt_value(0.1234), "0.12");
    }
}
