//! IPv4 fragments (RFC 791) through the router: followed, not reassembled (a ping to the
//! router itself is put together by [`crate::reassembly`]).
//!
//! Only a datagram's first fragment carries the transport header, so only it can be looked up
//! in the connection table, judged by the DFW and translated. What it got, its [`FlowAction`],
//! is remembered here under the datagram's identity as it arrived (RFC 791 section 3.2: source,
//! destination, protocol and identification; and the port it came in on), and the later
//! fragments follow it: the same port out, the same addresses, the same TTL step, the IP header
//! checksum updated (the transport checksum, in the first fragment, already covers their bytes:
//! NAT's incremental update there accounts for the whole datagram). This is what VPP calls
//! shallow virtual reassembly: nothing is buffered or reassembled, and the fragments leave as
//! they came (cut again only when bigger than the gateways' MTU: a pod that raised its own).
//!
//! A later fragment whose first was dropped is dropped and counted as `fragment`. One that
//! comes before its first (a sender that sends the last fragment first, or a path that
//! reorders) is held, as VPP's shallow reassembly and Linux's defragmentation before conntrack
//! hold it: when the first comes, the held ones follow it (or join the router's reassembly of
//! a ping to it). Held fragments are bounded ([`EARLY_CAPACITY`] frames, [`EARLY_BYTES`] in all,
//! the oldest pushed out by newer ones and counted) and wait at most [`EARLY_TIMEOUT_MS`]. The
//! last fragment (more-fragments clear) ends the entry; entries of datagrams whose last
//! fragment never came expire after [`TIMEOUT_MS`], and the table holds at most [`CAPACITY`].

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use ahash::AHashMap;
use parking_lot::Mutex;

use crate::conntrack::FlowAction;
use crate::tables::PortId;

/// How long a datagram's later fragments may trail its first (Linux's `ipfrag_time` is 30 s
/// for a reassembly; following needs no memory of the bytes, only of the action).
pub const TIMEOUT_MS: u64 = 30_000;

/// Datagrams followed at once, at most (about 64 bytes each).
pub const CAPACITY: usize = 16_384;

/// Later fragments held, waiting for their first, at most (a 64 KiB datagram in 1480-byte
/// fragments is 45).
pub const EARLY_CAPACITY: usize = 64;

/// The bytes of the held fragments, at most.
pub const EARLY_BYTES: usize = 256 * 1024;

/// How long a later fragment waits for its first (as long as the router's reassembly gives a
/// datagram: [`crate::reassembly::TIMEOUT_MS`]).
pub const EARLY_TIMEOUT_MS: u64 = 5_000;

/// A datagram as its fragments arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DatagramId {
    pub in_port: PortId,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ident: u16,
}

#[derive(Debug, Clone, Copy)]
struct Followed {
    /// What the first fragment got; `None` when it was dropped.
    action: Option<FlowAction>,
    expires_at: u64,
}

/// What a later fragment is to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Go where its first fragment went.
    Follow(FlowAction),
    /// Be dropped: its first fragment was.
    Dropped,
    /// Nothing is known of its first fragment: it was not seen, or not forwarded (a ping to
    /// the router).
    Unknown,
}

/// A later fragment that came before its first.
#[derive(Debug)]
struct Early {
    id: DatagramId,
    frame: Box<[u8]>,
    expires_at: u64,
}

/// The datagrams whose first fragment went through, shared by the workers (a datagram's
/// fragments may reach different queues) behind one lock: fragments are rare, and this is
/// never touched by an unfragmented packet.
#[derive(Debug, Default)]
pub struct Fragments {
    datagrams: Mutex<AHashMap<DatagramId, Followed>>,
    /// Later fragments waiting for their first, oldest first.
    early: Mutex<Vec<Early>>,
    /// How many are in `early` (read without the lock by every first fragment).
    early_len: AtomicUsize,
    /// Held fragments pushed out by newer ones, or whose first never came in time.
    early_dropped: AtomicU64,
}

impl Fragments {
    /// Remembers what a first fragment got. False when the table is full of live datagrams (the
    /// later fragments will be dropped).
    pub fn remember(&self, id: DatagramId, action: FlowAction, now: u64) -> bool {
        self.insert(id, Some(action), now)
    }

    /// Remembers that a first fragment was dropped, so its later ones are dropped (and counted)
    /// as they come instead of held for it. False when the table is full.
    pub fn remember_dropped(&self, id: DatagramId, now: u64) -> bool {
        self.insert(id, None, now)
    }

    fn insert(&self, id: DatagramId, action: Option<FlowAction>, now: u64) -> bool {
        let mut datagrams = self.datagrams.lock();
        if datagrams.len() >= CAPACITY && !datagrams.contains_key(&id) {
            datagrams.retain(|_, f| f.expires_at > now);
            if datagrams.len() >= CAPACITY {
                return false;
            }
        }
        let expires_at = now.saturating_add(TIMEOUT_MS);
        datagrams.insert(id, Followed { action, expires_at });
        true
    }

    /// What a later fragment does; `last` (more-fragments clear) ends the datagram.
    pub fn follow(&self, id: &DatagramId, last: bool, now: u64) -> Fate {
        let mut datagrams = self.datagrams.lock();
        let Some(followed) = datagrams.get(id).copied() else {
            return Fate::Unknown;
        };
        if followed.expires_at <= now {
            datagrams.remove(id);
            return Fate::Unknown;
        }
        if last {
            datagrams.remove(id);
        }
        match followed.action {
            Some(action) => Fate::Follow(action),
            None => Fate::Dropped,
        }
    }

    /// Holds a later fragment (its frame) that came before its first. The oldest held go when
    /// there is no room (counted in [`Fragments::early_dropped`]); a frame larger than all the
    /// room is refused (false).
    pub fn hold(&self, id: DatagramId, frame: &[u8], now: u64) -> bool {
        if frame.len() > EARLY_BYTES {
            return false;
        }
        let mut early = self.early.lock();
        self.drop_expired(&mut early, now);
        let mut bytes: usize = early.iter().map(|e| e.frame.len()).sum();
        while !early.is_empty()
            && (early.len() >= EARLY_CAPACITY || bytes + frame.len() > EARLY_BYTES)
        {
            let oldest = early.remove(0);
            bytes -= oldest.frame.len();
            self.early_dropped.fetch_add(1, Ordering::Relaxed);
        }
        early.push(Early {
            id,
            frame: frame.into(),
            expires_at: now.saturating_add(EARLY_TIMEOUT_MS),
        });
        self.early_len.store(early.len(), Ordering::Relaxed);
        true
    }

    /// The later fragments of `id` held for it (their frames, in the order they came), given
    /// up by the table. Free when nothing is held.
    pub fn take_early(&self, id: &DatagramId, now: u64) -> Vec<Box<[u8]>> {
        if self.early_len.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let mut early = self.early.lock();
        self.drop_expired(&mut early, now);
        let mut taken = Vec::new();
        early.retain_mut(|e| {
            if e.id != *id {
                return true;
            }
            taken.push(std::mem::take(&mut e.frame));
            false
        });
        self.early_len.store(early.len(), Ordering::Relaxed);
        taken
    }

    fn drop_expired(&self, early: &mut Vec<Early>, now: u64) {
        let before = early.len();
        early.retain(|e| e.expires_at > now);
        let gone = before - early.len();
        if gone > 0 {
            self.early_dropped.fetch_add(gone as u64, Ordering::Relaxed);
        }
    }

    /// Held fragments dropped since start: pushed out by newer ones, their first never came
    /// in time, or it was dropped.
    pub fn early_dropped(&self) -> u64 {
        self.early_dropped.load(Ordering::Relaxed)
    }

    /// Counts held fragments given up (their first fragment was dropped).
    pub fn count_early_dropped(&self, n: usize) {
        self.early_dropped.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Later fragments held now.
    pub fn early_len(&self) -> usize {
        self.early_len.load(Ordering::Relaxed)
    }

    /// Forgets the datagrams, and the held fragments, whose time ran out.
    pub fn expire(&self, now: u64) {
        {
            let mut datagrams = self.datagrams.lock();
            if !datagrams.is_empty() {
                datagrams.retain(|_, f| f.expires_at > now);
            }
        }
        if self.early_len.load(Ordering::Relaxed) > 0 {
            let mut early = self.early.lock();
            self.drop_expired(&mut early, now);
            self.early_len.store(early.len(), Ordering::Relaxed);
        }
    }

    /// Datagrams followed now.
    pub fn len(&self) -> usize {
        self.datagrams.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ident: u16) -> DatagramId {
        DatagramId {
            in_port: 1,
            src: Ipv4Addr::new(172, 211, 0, 18),
            dst: Ipv4Addr::new(198, 51, 100, 100),
            protocol: 17,
            ident,
        }
    }

    fn action(out_port: PortId) -> FlowAction {
        FlowAction {
            out_port,
            routed: true,
            ttl_dec: 2,
            snat: Some((Ipv4Addr::new(172, 60, 96, 2), 40000)),
            dnat: None,
        }
    }

    #[test]
    fn later_fragments_follow_the_first_until_the_last() {
        let f = Fragments::default();
        assert_eq!(
            f.follow(&id(7), false, 0),
            Fate::Unknown,
            "nothing to follow yet"
        );
        assert!(f.remember(id(7), action(3), 0));
        assert_eq!(f.follow(&id(7), false, 1), Fate::Follow(action(3)));
        assert_eq!(
            f.follow(&id(8), false, 1),
            Fate::Unknown,
            "another datagram"
        );
        let other_port = DatagramId {
            in_port: 2,
            ..id(7)
        };
        assert_eq!(
            f.follow(&other_port, false, 1),
            Fate::Unknown,
            "same id, other port"
        );
        assert_eq!(
            f.follow(&id(7), true, 2),
            Fate::Follow(action(3)),
            "the last"
        );
        assert_eq!(
            f.follow(&id(7), false, 3),
            Fate::Unknown,
            "ended by the last"
        );
        assert!(f.is_empty());
    }

    #[test]
    fn a_datagram_whose_last_fragment_never_comes_expires() {
        let f = Fragments::default();
        assert!(f.remember(id(1), action(3), 1000));
        assert!(f.remember(id(2), action(3), 20_000));
        f.expire(1000 + TIMEOUT_MS);
        assert_eq!(f.len(), 1);
        assert_eq!(f.follow(&id(1), false, 1000 + TIMEOUT_MS), Fate::Unknown);
        assert_eq!(
            f.follow(&id(2), false, 20_000 + TIMEOUT_MS),
            Fate::Unknown,
            "expired on lookup"
        );
    }

    #[test]
    fn a_full_table_refuses_new_datagrams_until_old_ones_expire() {
        let f = Fragments::default();
        for i in 0..CAPACITY {
            let id = DatagramId {
                ident: i as u16,
                in_port: (i >> 16) as PortId,
                ..id(0)
            };
            assert!(f.remember(id, action(3), 0));
        }
        let new = DatagramId {
            in_port: 99,
            ..id(0)
        };
        assert!(!f.remember(new, action(3), 1), "full of live datagrams");
        assert_eq!(f.follow(&new, false, 1), Fate::Unknown);
        assert!(
            f.remember(new, action(3), TIMEOUT_MS),
            "the old ones expired"
        );
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn a_dropped_first_drops_its_later_fragments() {
        let f = Fragments::default();
        assert!(f.remember_dropped(id(5), 0));
        assert_eq!(f.follow(&id(5), false, 1), Fate::Dropped);
        assert_eq!(f.follow(&id(5), true, 2), Fate::Dropped, "the last");
        assert_eq!(
            f.follow(&id(5), false, 3),
            Fate::Unknown,
            "ended by the last"
        );
    }

    #[test]
    fn early_fragments_wait_for_their_first_bounded_in_count_and_time() {
        let f = Fragments::default();
        assert!(f.take_early(&id(1), 0).is_empty(), "nothing held");
        assert!(f.hold(id(1), &[1; 100], 0));
        assert!(f.hold(id(2), &[2; 100], 0));
        assert!(f.hold(id(1), &[3; 100], 1));
        let taken = f.take_early(&id(1), 2);
        assert_eq!(taken.len(), 2, "both of id 1, in the order they came");
        assert_eq!((taken[0][0], taken[1][0]), (1, 3));
        assert_eq!(f.early_len(), 1, "id 2 still waits");
        // Its first never comes: it goes in time, counted.
        f.expire(EARLY_TIMEOUT_MS);
        assert_eq!((f.early_len(), f.early_dropped()), (0, 1));
        // Full: the oldest make room.
        for i in 0..EARLY_CAPACITY + 3 {
            assert!(f.hold(id(i as u16), &[0; 100], 10));
        }
        assert_eq!(f.early_len(), EARLY_CAPACITY);
        assert_eq!(f.early_dropped(), 4);
        assert!(f.take_early(&id(0), 10).is_empty(), "pushed out");
        assert_eq!(f.take_early(&id(EARLY_CAPACITY as u16 + 2), 10).len(), 1);
        // The bytes are bounded too.
        let big = vec![0; EARLY_BYTES / 2 + 1];
        assert!(f.hold(id(900), &big, 10));
        assert!(f.hold(id(901), &big, 10));
        assert!(f.take_early(&id(900), 10).is_empty(), "pushed out by bytes");
        assert!(!f.hold(id(902), &vec![0; EARLY_BYTES + 1], 10));
    }
}
