//! Reassembly of the few fragmented datagrams addressed to the router itself (RFC 791 section
//! 3.2), so that `ping -s 3000` to a T1, T0, VIP or egress address is answered as a Linux
//! router answers it (and a big UDP datagram to a port nothing listens on is refused, as it is
//! whole).
//!
//! Traffic through the router is not reassembled ([`crate::fragments`] follows it). What is
//! addressed to the router is: an echo request's reply must carry its whole payload back. This
//! is kept small and bounded, since any outside host can send fragments: at most [`CAPACITY`]
//! datagrams at once, each at most [`MAX_DATAGRAM`] bytes, each given [`TIMEOUT_MS`] to
//! complete. A new datagram when the table is full evicts the oldest (as Linux's evictor drops
//! the oldest queues past its memory threshold, and counted in [`Reassembly::evicted`]):
//! refusing it instead would let eight stray first fragments, from anyone, stop every
//! fragmented ping to the router for [`TIMEOUT_MS`], where a ping's fragments, which come
//! back to back, complete long before eight newer datagrams push them out. A datagram's first fragment starts the
//! reassembly once the walk says the datagram is the router's, and the later ones join it
//! (those that came before it were held by [`crate::fragments`] and join it then).
//! Overlapping fragments are taken as they come (the later bytes win); an overlap that changed
//! the message then fails its ICMP checksum and is not answered. (Linux since 4.19 discards a
//! datagram whose fragments partly overlap, and ignores one wholly inside what it has; the
//! difference shows only for overlaps that repeat the same bytes, which Pacific answers.)

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::fragments::DatagramId;

/// Datagrams reassembled at once, at most.
pub const CAPACITY: usize = 8;

/// How long a datagram has to complete (Linux's `ipfrag_time` is 30 s; a ping waits 1 s).
pub const TIMEOUT_MS: u64 = 5_000;

/// The largest IPv4 datagram: header and payload (RFC 791's 16-bit total length).
pub const MAX_DATAGRAM: usize = 65_535;

/// One datagram being put together.
#[derive(Debug)]
struct Pending {
    id: DatagramId,
    /// The first fragment's IP header (options included).
    header: Vec<u8>,
    /// The payload so far, at its offsets.
    payload: Vec<u8>,
    /// The byte ranges of `payload` received, merged and sorted.
    have: Vec<(usize, usize)>,
    /// The payload's length, once the last fragment came.
    total: Option<usize>,
    /// The gateways the first fragment crossed before the one that answers (the answer takes
    /// a TTL step at each on its way back).
    hops_back: u8,
    expires_at: u64,
}

impl Pending {
    fn add(&mut self, offset: usize, bytes: &[u8], last: bool) -> Result<(), ()> {
        let end = offset + bytes.len();
        if self.header.len() + end > MAX_DATAGRAM
            || self.total.is_some_and(|t| end > t)
            || (last && self.have.last().is_some_and(|&(_, e)| e > end))
        {
            return Err(());
        }
        if last {
            self.total = Some(end);
        }
        if self.payload.len() < end {
            self.payload.resize(end, 0);
        }
        self.payload[offset..end].copy_from_slice(bytes);
        self.have.push((offset, end));
        self.have.sort_unstable();
        // Ranges that touch or overlap become one, in place.
        self.have.dedup_by(|next, kept| {
            let joins = next.0 <= kept.1;
            if joins {
                kept.1 = kept.1.max(next.1);
            }
            joins
        });
        Ok(())
    }

    fn complete(&self) -> bool {
        self.total
            .is_some_and(|t| self.have.as_slice() == [(0, t)] || (t == 0 && self.have.is_empty()))
    }

    /// The whole datagram: the first fragment's header, with the total length and the fragment
    /// field made those of an unfragmented datagram (checksum recomputed), and the payload.
    fn datagram(&self) -> Vec<u8> {
        let mut d = Vec::with_capacity(self.header.len() + self.payload.len());
        d.extend_from_slice(&self.header);
        d.extend_from_slice(&self.payload);
        let total = u16::try_from(d.len()).unwrap_or(u16::MAX);
        d[2..4].copy_from_slice(&total.to_be_bytes());
        d[6..8].fill(0);
        d[10..12].fill(0);
        let sum = crate::packet::checksum::ipv4_header_checksum(&d[..self.header.len()]);
        d[10..12].copy_from_slice(&sum.to_be_bytes());
        d
    }
}

/// What became of a fragment.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// Kept; the datagram is not complete yet.
    Held,
    /// The datagram is complete: here it is, as one unfragmented IPv4 datagram, with the
    /// `hops_back` its first fragment started with.
    Complete { datagram: Vec<u8>, hops_back: u8 },
    /// Not kept: a datagram past 65,535 bytes or contradicting its own length (and so
    /// forgotten).
    Refused,
    /// No datagram to join (its first fragment has not come, or was not for the router).
    NoDatagram,
}

/// The datagrams being reassembled, shared by the workers behind one lock (only fragments
/// addressed to the router ever take it).
#[derive(Debug, Default)]
pub struct Reassembly {
    pending: Mutex<Vec<Pending>>,
    /// Datagrams pushed out, unfinished, by newer ones when the table was full.
    evicted: AtomicU64,
}

impl Reassembly {
    /// A first fragment (offset 0, more fragments set): `header` is its IP header, `payload`
    /// what follows it.
    pub fn start(
        &self,
        id: DatagramId,
        header: &[u8],
        payload: &[u8],
        hops_back: u8,
        now: u64,
    ) -> Added {
        let mut pending = self.pending.lock();
        pending.retain(|p| p.expires_at > now && p.id != id);
        if header.len() < 20 {
            return Added::Refused;
        }
        if pending.len() >= CAPACITY {
            // The oldest started first, so expires first.
            if let Some(oldest) = (0..pending.len()).min_by_key(|&i| pending[i].expires_at) {
                pending.swap_remove(oldest);
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut p = Pending {
            id,
            header: header.to_vec(),
            payload: Vec::new(),
            have: Vec::new(),
            total: None,
            hops_back,
            expires_at: now.saturating_add(TIMEOUT_MS),
        };
        if p.add(0, payload, false).is_err() {
            return Added::Refused;
        }
        pending.push(p);
        Added::Held
    }

    /// A later fragment: its payload at byte `offset`; `last` when more-fragments is clear.
    pub fn add(
        &self,
        id: &DatagramId,
        offset: usize,
        payload: &[u8],
        last: bool,
        now: u64,
    ) -> Added {
        let mut pending = self.pending.lock();
        let Some(at) = pending
            .iter()
            .position(|p| p.id == *id && p.expires_at > now)
        else {
            return Added::NoDatagram;
        };
        if pending[at].add(offset, payload, last).is_err() {
            pending.swap_remove(at);
            return Added::Refused;
        }
        if !pending[at].complete() {
            return Added::Held;
        }
        let done = pending.swap_remove(at);
        Added::Complete {
            datagram: done.datagram(),
            hops_back: done.hops_back,
        }
    }

    /// Forgets the datagrams whose time ran out.
    pub fn expire(&self, now: u64) {
        let mut pending = self.pending.lock();
        if !pending.is_empty() {
            pending.retain(|p| p.expires_at > now);
        }
    }

    /// Datagrams evicted unfinished by newer ones since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Datagrams being reassembled now.
    pub fn len(&self) -> usize {
        self.pending.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::packet::checksum;

    fn id(ident: u16) -> DatagramId {
        DatagramId {
            in_port: 1,
            src: Ipv4Addr::new(172, 211, 0, 18),
            dst: Ipv4Addr::new(172, 211, 0, 17),
            protocol: 1,
            ident,
        }
    }

    /// An IPv4 header as the first fragment of datagram `ident` has it.
    fn header(ident: u16) -> Vec<u8> {
        let mut h = vec![
            0x45, 0, 0, 0, 0, 0, 0x20, 0, 64, 1, 0, 0, 172, 211, 0, 18, 172, 211, 0, 17,
        ];
        h[4..6].copy_from_slice(&ident.to_be_bytes());
        h
    }

    #[test]
    fn fragments_in_order_make_the_datagram_whole() {
        let r = Reassembly::default();
        let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            r.start(id(7), &header(7), &payload[..1480], 2, 0),
            Added::Held
        );
        assert_eq!(
            r.add(&id(7), 1480, &payload[1480..2960], false, 1),
            Added::Held
        );
        let Added::Complete {
            datagram: d,
            hops_back: 2,
        } = r.add(&id(7), 2960, &payload[2960..], true, 2)
        else {
            panic!("not complete")
        };
        assert_eq!(&d[20..], &payload[..]);
        assert_eq!(u16::from_be_bytes([d[2], d[3]]) as usize, 3020);
        assert_eq!(d[6..8], [0, 0], "no fragment flags left");
        assert_eq!(checksum::fold(checksum::sum(&d[..20], 0)), 0xffff);
        assert!(r.is_empty());
    }

    #[test]
    fn a_gap_holds_and_a_stranger_is_refused() {
        let r = Reassembly::default();
        assert_eq!(
            r.add(&id(1), 8, &[0; 8], true, 0),
            Added::NoDatagram,
            "no first"
        );
        assert_eq!(r.start(id(1), &header(1), &[1; 16], 0, 0), Added::Held);
        // The last comes, but 16..24 is missing.
        assert_eq!(r.add(&id(1), 24, &[3; 8], true, 1), Added::Held);
        assert_eq!(r.add(&id(2), 16, &[2; 8], false, 1), Added::NoDatagram);
        let Added::Complete { datagram: d, .. } = r.add(&id(1), 16, &[2; 8], false, 2) else {
            panic!("not complete")
        };
        assert_eq!(
            &d[20..],
            &[[1u8; 16].as_slice(), &[2; 8], &[3; 8]].concat()[..]
        );
    }

    #[test]
    fn a_full_table_evicts_the_oldest_so_stray_fragments_cannot_block_pings() {
        let r = Reassembly::default();
        // Eight first fragments whose rest never comes (a stray sender, ids 0..8).
        for ident in 0..CAPACITY as u16 {
            let now = u64::from(ident);
            assert_eq!(
                r.start(id(ident), &header(ident), &[0; 8], 0, now),
                Added::Held
            );
        }
        // A ping comes while they are all still live: it is kept, the oldest goes.
        assert_eq!(r.start(id(99), &header(99), &[1; 8], 0, 10), Added::Held);
        assert_eq!((r.len(), r.evicted()), (CAPACITY, 1));
        let Added::Complete { datagram, .. } = r.add(&id(99), 8, &[2; 8], true, 10) else {
            panic!("the ping was not put together")
        };
        assert_eq!(&datagram[20..], &[[1u8; 8], [2; 8]].concat()[..]);
        assert_eq!(
            r.add(&id(0), 8, &[0; 8], true, 11),
            Added::NoDatagram,
            "evicted"
        );
        assert!(
            matches!(r.add(&id(1), 8, &[0; 8], true, 11), Added::Complete { .. }),
            "the next oldest stayed"
        );
    }

    #[test]
    fn the_table_is_bounded_in_datagrams_size_and_time() {
        let r = Reassembly::default();
        for ident in 0..CAPACITY as u16 {
            assert_eq!(
                r.start(id(ident), &header(ident), &[0; 8], 0, 0),
                Added::Held
            );
        }
        // Past 65,535 bytes: refused, and the datagram forgotten.
        assert_eq!(r.add(&id(0), 65_520, &[0; 8], false, 1), Added::Refused);
        assert_eq!(r.len(), CAPACITY - 1);
        // A last fragment that ends before bytes already received contradicts itself.
        assert_eq!(r.add(&id(1), 0, &[0; 4], true, 1), Added::Refused);
        r.expire(TIMEOUT_MS);
        assert!(r.is_empty(), "all timed out");
        assert_eq!(
            r.start(id(99), &header(99), &[0; 8], 0, TIMEOUT_MS),
            Added::Held
        );
        assert_eq!(
            r.add(&id(99), 8, &[0; 8], true, 2 * TIMEOUT_MS),
            Added::NoDatagram,
            "late"
        );
    }
}
