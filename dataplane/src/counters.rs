//! Per-port counters: packets and bytes each way, and drops by reason.
//!
//! The workers own the counting; the pipeline only says what happened (a [`Verdict`]). Counters
//! are relaxed atomics: they are statistics, read by the control thread, never used to decide
//! anything on the packet path.
//!
//! [`Verdict`]: crate::pipeline::Verdict

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::pipeline::DropReason;

/// Counters of one port. Shared between the workers (which add) and the control thread (which
/// reads a [`PortCountersSnapshot`]).
#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
}

/// A plain copy of [`PortCounters`], for reporting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortCountersSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// `(reason name, count)` for every reason with a non-zero count.
    pub drops: Vec<(&'static str, u64)>,
}

impl PortCounters {
    /// Adds a batch of received frames (the workers count once a batch, not once a frame).
    pub fn add_rx(&self, packets: u64, bytes: usize) {
        self.rx_packets.fetch_add(packets, Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Adds a batch of transmitted frames.
    pub fn add_tx(&self, packets: u64, bytes: u64) {
        self.tx_packets.fetch_add(packets, Relaxed);
        self.tx_bytes.fetch_add(bytes, Relaxed);
    }

    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Relaxed)
    }

    pub fn snapshot(&self) -> PortCountersSnapshot {
        PortCountersSnapshot {
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name(), self.drops(*r)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}
