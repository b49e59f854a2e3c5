//! The identification field (RFC 791; RFC 6864) of the IPv4 packets the router sends itself:
//! echo replies and ICMP errors. Linux gives each a non-zero ID from a counter picked by a
//! keyed hash of the destination (`ip_idents`, DF clear), shared by everything it sends there:
//! so `tcpdump -v` shows the answers to one host counting up, as behind a Linux router,
//! where a constant 0 would stand out (and would be no ID at all, should one be cut).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU16, Ordering::Relaxed};

/// Counters: a power of two.
const BUCKETS: usize = 256;

/// The router's ID counters, shared by its workers.
pub struct Idents {
    counters: Box<[AtomicU16]>,
    key: RandomState,
}

impl Default for Idents {
    fn default() -> Self {
        let key = RandomState::new();
        // Each counter starts somewhere of its own, as Linux's do.
        let counters = (0..BUCKETS)
            .map(|i| AtomicU16::new(key.hash_one(i) as u16))
            .collect();
        Idents { counters, key }
    }
}

impl Idents {
    /// The next ID for a packet to `dst`: never 0.
    pub fn next(&self, dst: Ipv4Addr) -> u16 {
        let bucket = self.key.hash_one(u32::from(dst)) as usize & (BUCKETS - 1);
        let counter = &self.counters[bucket];
        loop {
            let id = counter.fetch_add(1, Relaxed).wrapping_add(1);
            if id != 0 {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_to_one_host_count_up_and_are_never_0() {
        let idents = Idents::default();
        let host = Ipv4Addr::new(172, 211, 0, 20);
        let first = idents.next(host);
        let mut last = first;
        for _ in 0..70_000 {
            let id = idents.next(host);
            assert_ne!(id, 0);
            assert!(id == last.wrapping_add(1) || (last, id) == (u16::MAX, 1));
            last = id;
        }
    }
}
