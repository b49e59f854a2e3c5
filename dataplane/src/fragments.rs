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
//! they came (every port has the same MTU, so no fragment needs fragmenting again).
//!
//! A later fragment with nothing to follow (its first was dropped, or has not arrived: the
//! paths here keep a datagram's fragments in order) is dropped and counted as `fragment`. The
//! last fragment (more-fragments clear) ends the entry; entries of datagrams whose last
//! fragment never came expire after [`TIMEOUT_MS`], and the table holds at most [`CAPACITY`].

use std::net::Ipv4Addr;

use ahash::AHashMap;
use parking_lot::Mutex;

use crate::conntrack::FlowAction;
use crate::tables::PortId;

/// How long a datagram's later fragments may trail its first (Linux's `ipfrag_time` is 30 s
/// for a reassembly; following needs no memory of the bytes, only of the action).
pub const TIMEOUT_MS: u64 = 30_000;

/// Datagrams followed at once, at most (about 64 bytes each).
pub const CAPACITY: usize = 16_384;

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
    action: FlowAction,
    expires_at: u64,
}

/// The datagrams whose first fragment went through, shared by the workers (a datagram's
/// fragments may reach different queues) behind one lock: fragments are rare, and this is
/// never touched by an unfragmented packet.
#[derive(Debug, Default)]
pub struct Fragments {
    datagrams: Mutex<AHashMap<DatagramId, Followed>>,
}

impl Fragments {
    /// Remembers what a first fragment got. False when the table is full of live datagrams (the
    /// later fragments will be dropped).
    pub fn remember(&self, id: DatagramId, action: FlowAction, now: u64) -> bool {
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

    /// The action a later fragment follows, if its first went through; `last` (more-fragments
    /// clear) ends the datagram.
    pub fn follow(&self, id: &DatagramId, last: bool, now: u64) -> Option<FlowAction> {
        let mut datagrams = self.datagrams.lock();
        let followed = *datagrams.get(id)?;
        if followed.expires_at <= now {
            datagrams.remove(id);
            return None;
        }
        if last {
            datagrams.remove(id);
        }
        Some(followed.action)
    }

    /// Forgets the datagrams whose time ran out.
    pub fn expire(&self, now: u64) {
        let mut datagrams = self.datagrams.lock();
        if !datagrams.is_empty() {
            datagrams.retain(|_, f| f.expires_at > now);
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
        assert_eq!(f.follow(&id(7), false, 0), None, "nothing to follow yet");
        assert!(f.remember(id(7), action(3), 0));
        assert_eq!(f.follow(&id(7), false, 1), Some(action(3)));
        assert_eq!(f.follow(&id(8), false, 1), None, "another datagram");
        let other_port = DatagramId {
            in_port: 2,
            ..id(7)
        };
        assert_eq!(f.follow(&other_port, false, 1), None, "same id, other port");
        assert_eq!(f.follow(&id(7), true, 2), Some(action(3)), "the last");
        assert_eq!(f.follow(&id(7), false, 3), None, "ended by the last");
        assert!(f.is_empty());
    }

    #[test]
    fn a_datagram_whose_last_fragment_never_comes_expires() {
        let f = Fragments::default();
        assert!(f.remember(id(1), action(3), 1000));
        assert!(f.remember(id(2), action(3), 20_000));
        f.expire(1000 + TIMEOUT_MS);
        assert_eq!(f.len(), 1);
        assert_eq!(f.follow(&id(1), false, 1000 + TIMEOUT_MS), None);
        assert_eq!(
            f.follow(&id(2), false, 20_000 + TIMEOUT_MS),
            None,
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
        assert_eq!(f.follow(&new, false, 1), None);
        assert!(
            f.remember(new, action(3), TIMEOUT_MS),
            "the old ones expired"
        );
        assert_eq!(f.len(), 1);
    }
}
