//! Session affinity (`sessionAffinity: ClientIP`): the backend a client was given, remembered
//! per load-balanced frontend, so that its next connections go there too.
//!
//! This is what kube-proxy does with the `recent` match (a list of client addresses per
//! endpoint, checked with `--rcheck --seconds timeoutSeconds` and refreshed with `--set` on each
//! new connection) and what IPVS persistence and NSX's source-IP persistence profile do: the
//! choice is remembered, not recomputed. A hash of the client address over the current backends
//! (what this replaces) keeps a client only while the set of backends stays the same: scaling a
//! deployment up or down moved about 1/N of the clients to other pods.
//!
//! A client keeps its remembered backend as long as that backend is one of the service's and
//! the client has not been idle (no new connection) for the service's timeout; otherwise the
//! service's first choice for it, the hash of its address (so that two workers racing on one
//! client's first connections agree), is taken and remembered. Each new connection refreshes
//! the entry; packets of established connections do not touch it (they never look here, the
//! fast path stays as it was), as with kube-proxy, whose rules see only a connection's first
//! packet.
//!
//! Entries are keyed by the frontend (protocol, ClusterIP or VIP, port) and the client address,
//! which outlive a publication of new tables: a scaled service keeps its frontend. The table is
//! bounded ([`DEFAULT_MAX`]) and sharded by client address, one mutex a shard, taken only by the
//! first packet of a connection to a service with affinity. When a shard is full, a new client is
//! not remembered: it gets the hash's choice, which holds while the backends do not change, and
//! is counted in [`Affinity::full`]. (Evicting the least recently used, as `xt_recent` does,
//! needs an LRU list beside the map; the sweep below frees idle entries, so a full table means
//! 64k clients active within their timeout, and the hash is a fair answer for the rest.) Expiry
//! sweeps one shard per [`Affinity::expire_part`]; a lookup judges idleness itself, so a client
//! past its timeout starts afresh even before the sweep reaches it.
//!
//! Both judge by the timeout in force, which the sweep asks of the tables for each frontend, as
//! kube-proxy's `--rcheck --seconds` reads the rule of the moment: a timeout raised by a
//! re-apply keeps the clients it now covers. A frontend that no longer has affinity (switched
//! off, or its service deleted) has its clients forgotten, as `xt_recent` drops a list with the
//! last rule naming it: switched back on, or recreated, the service starts afresh.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use ahash::AHashMap;
use parking_lot::Mutex;

use crate::tables::{Backend, FrontendKey, LbService};

/// Clients remembered at once, over all services (about 40 bytes each).
pub const DEFAULT_MAX: usize = 65_536;

/// Shards of the table: a power of two, picked by the client address.
const SHARDS: usize = 16;

/// A client of a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Client {
    frontend: FrontendKey,
    addr: Ipv4Addr,
}

#[derive(Debug, Clone, Copy)]
struct Remembered {
    backend: Backend,
    /// When the client last opened a connection (ms).
    last_used: u64,
}

/// The remembered backends of every client of every service with affinity.
#[derive(Debug)]
pub struct Affinity {
    shards: Box<[Mutex<AHashMap<Client, Remembered>>]>,
    per_shard: usize,
    /// The next shard `expire_part` sweeps.
    sweep: AtomicUsize,
    /// New clients not remembered because their shard was full.
    pub full: AtomicU64,
}

impl Default for Affinity {
    fn default() -> Self {
        Affinity::new(DEFAULT_MAX)
    }
}

impl Affinity {
    /// A table of at most `max` clients (at least one per shard).
    pub fn new(max: usize) -> Affinity {
        Affinity {
            shards: (0..SHARDS).map(|_| Mutex::new(AHashMap::new())).collect(),
            per_shard: max.div_ceil(SHARDS).max(1),
            sweep: AtomicUsize::new(0),
            full: AtomicU64::new(0),
        }
    }

    /// At most this many clients are remembered.
    pub fn max(&self) -> usize {
        self.per_shard * SHARDS
    }

    fn shard(&self, addr: Ipv4Addr) -> &Mutex<AHashMap<Client, Remembered>> {
        // Fibonacci hashing: the top bits of the product mix every byte of the address.
        let i = (u32::from(addr).wrapping_mul(0x9e37_79b9) >> 28) as usize % SHARDS;
        &self.shards[i]
    }

    /// The backend index for a new connection of `client` to `service`, whose timeout is
    /// `timeout_s` seconds: the remembered backend if it still stands and the client was not idle
    /// that long, else `first_choice()`, which is then remembered (and, full table aside, kept).
    /// `None`: the service has no backend.
    pub fn choose(
        &self,
        service: &LbService,
        timeout_s: u32,
        client: Ipv4Addr,
        now: u64,
        first_choice: impl FnOnce() -> Option<usize>,
    ) -> Option<usize> {
        let key = Client {
            frontend: FrontendKey {
                protocol: service.protocol,
                ip: service.frontend.ip,
                port: service.frontend.port,
            },
            addr: client,
        };
        let timeout_ms = u64::from(timeout_s) * 1000;
        let mut clients = self.shard(client).lock();
        if let Some(r) = clients.get_mut(&key) {
            let live = now.saturating_sub(r.last_used) < timeout_ms;
            if let Some(index) = live.then(|| service.backend_index(r.backend)).flatten() {
                r.last_used = r.last_used.max(now);
                return Some(index);
            }
            // Idle too long, or its backend is gone: a new choice, remembered in its place.
            let index = first_choice()?;
            *r = Remembered {
                backend: *service.backends.get(index)?,
                last_used: now,
            };
            return Some(index);
        }
        let index = first_choice()?;
        let backend = *service.backends.get(index)?;
        if clients.len() >= self.per_shard {
            self.full.fetch_add(1, Relaxed);
        } else {
            clients.insert(
                key,
                Remembered {
                    backend,
                    last_used: now,
                },
            );
        }
        Some(index)
    }

    /// Forgets every client idle past its frontend's timeout at `now`, and every client of a
    /// frontend `timeout_s` says has no affinity (any more).
    pub fn expire(&self, now: u64, timeout_s: impl Fn(&FrontendKey) -> Option<u32>) {
        for shard in self.shards.iter() {
            Self::forget_idle(shard, now, &timeout_s);
        }
    }

    /// [`Self::expire`] for one shard (the next in turn): what a worker calls ten times a
    /// second, so that each shard is swept at least every 1.6 s and no call holds a lock for
    /// the whole table.
    pub fn expire_part(&self, now: u64, timeout_s: impl Fn(&FrontendKey) -> Option<u32>) {
        let i = self.sweep.fetch_add(1, Relaxed) % SHARDS;
        Self::forget_idle(&self.shards[i], now, &timeout_s);
    }

    fn forget_idle(
        shard: &Mutex<AHashMap<Client, Remembered>>,
        now: u64,
        timeout_s: &impl Fn(&FrontendKey) -> Option<u32>,
    ) {
        let mut clients = shard.lock();
        if !clients.is_empty() {
            clients.retain(|c, r| {
                timeout_s(&c.frontend)
                    .is_some_and(|t| now.saturating_sub(r.last_used) < u64::from(t) * 1000)
            });
        }
    }

    /// Clients remembered now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{maglev, LbAlgorithm, PROTO_TCP};

    const TIMEOUT_S: u32 = 10_800;

    fn backend(last: u8) -> Backend {
        Backend {
            ip: Ipv4Addr::new(172, 211, 0, last),
            port: 8080,
        }
    }

    fn service(backends: &[u8]) -> LbService {
        let mut s = LbService::new(
            "ns-lb/web-sticky:80".into(),
            PROTO_TCP,
            Backend {
                ip: Ipv4Addr::new(172, 96, 0, 10),
                port: 80,
            },
            backends.iter().map(|&b| backend(b)).collect(),
            LbAlgorithm::ConnectionHash,
        );
        s.client_affinity = Some(TIMEOUT_S);
        s
    }

    fn client(i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 51, 100, 0)) + i)
    }

    /// What the pipeline gives `choose` as the first choice: the hash of the client address.
    fn hashed(s: &LbService, c: Ipv4Addr) -> Option<usize> {
        maglev::lookup(
            &s.maglev,
            u64::from(u32::from(c)).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        )
    }

    /// The backend `c` gets from `s` at `now`.
    fn chosen(a: &Affinity, s: &LbService, c: Ipv4Addr, now: u64) -> Backend {
        let i = a
            .choose(s, TIMEOUT_S, c, now, || hashed(s, c))
            .expect("a backend");
        s.backends[i]
    }

    #[test]
    fn a_client_keeps_its_backend_when_backends_are_added() {
        let a = Affinity::default();
        let mut backends = vec![20];
        let first: Vec<Backend> = (0..50)
            .map(|i| chosen(&a, &service(&backends), client(i), 1000))
            .collect();
        assert!(first.iter().all(|&b| b == backend(20)));
        // Scaled up to 8 pods, one at a time: the hash alone would move 7 clients in 8.
        for n in 21..28 {
            backends.push(n);
            let s = service(&backends);
            for (i, &b) in first.iter().enumerate() {
                assert_eq!(chosen(&a, &s, client(i as u32), 2000 + u64::from(n)), b);
            }
        }
        // A new client spreads over all of them.
        let s = service(&backends);
        let newcomers: std::collections::HashSet<Backend> = (100..200)
            .map(|i| chosen(&a, &s, client(i), 3000))
            .collect();
        assert!(newcomers.len() > 4, "{newcomers:?}");
    }

    #[test]
    fn a_client_whose_backend_goes_gets_another_and_keeps_it() {
        let a = Affinity::default();
        let s = service(&[20, 21, 22]);
        let c = client(7);
        let old = chosen(&a, &s, c, 1000);
        let rest: Vec<u8> = [20, 21, 22]
            .into_iter()
            .filter(|&n| backend(n) != old)
            .collect();
        let s = service(&rest);
        let new = chosen(&a, &s, c, 2000);
        assert_ne!(new, old);
        assert!(s.backends.contains(&new));
        // It stays there: when the other survivor scales back up, and when the old pod returns.
        let mut grown = rest.clone();
        grown.extend([23, 24, 25]);
        assert_eq!(chosen(&a, &service(&grown), c, 3000), new);
        assert_eq!(chosen(&a, &service(&[20, 21, 22, 23]), c, 4000), new);
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn affinity_lapses_after_the_timeout_and_is_refreshed_by_each_connection() {
        let a = Affinity::default();
        let c = client(3);
        let before = service(&[20]);
        assert_eq!(chosen(&a, &before, c, 0), backend(20));
        let timeout_ms = u64::from(TIMEOUT_S) * 1000;
        // Grown; the client keeps coming back within the timeout, each time refreshing it.
        let s = service(&[20, 21, 22, 23, 24, 25, 26, 27]);
        let mut now = 0;
        for _ in 0..3 {
            now += timeout_ms - 1;
            assert_eq!(chosen(&a, &s, c, now), backend(20));
        }
        // Idle for the whole timeout: the sweep forgets it, and the lookup would too.
        a.expire(now + timeout_ms - 1, |_| Some(TIMEOUT_S));
        assert_eq!(a.len(), 1);
        a.expire(now + timeout_ms, |_| Some(TIMEOUT_S));
        assert!(a.is_empty());
        let later = now + timeout_ms;
        let expected = s.backends[hashed(&s, c).unwrap()];
        assert_eq!(chosen(&a, &s, c, later), expected);

        // Past the timeout but not yet swept: the lookup judges for itself.
        let a = Affinity::default();
        let c = (0..100)
            .map(client)
            .find(|&c| s.backends[hashed(&s, c).unwrap()] != backend(20))
            .unwrap();
        assert_eq!(chosen(&a, &before, c, 0), backend(20));
        assert_eq!(chosen(&a, &s, c, timeout_ms - 1), backend(20));
        assert_ne!(chosen(&a, &s, c, 2 * timeout_ms), backend(20));
    }

    #[test]
    fn a_shorter_timeout_applies_to_clients_already_remembered() {
        let a = Affinity::default();
        let c = client(9);
        let s = service(&[20]);
        assert_eq!(chosen(&a, &s, c, 0), backend(20));
        let grown = service(&[20, 21, 22, 23, 24, 25, 26, 27]);
        let i = a.choose(&grown, 10, c, 10_000, || Some(1)).unwrap();
        assert_eq!(
            grown.backends[i],
            backend(21),
            "idle 10 s of a 10 s timeout"
        );
    }

    #[test]
    fn a_raised_timeout_keeps_clients_the_old_one_would_have_forgotten() {
        let a = Affinity::default();
        let c = client(9);
        let one = service(&[20]);
        assert_eq!(a.choose(&one, 5, c, 0, || Some(0)), Some(0));
        // Re-applied with 300 s; 8 s idle: past the old timeout, well within the new one.
        a.expire(8_000, |_| Some(300));
        assert_eq!(
            a.len(),
            1,
            "forgotten by the timeout it was remembered under"
        );
        let grown = service(&[21, 22, 20]);
        assert_eq!(a.choose(&grown, 300, c, 8_000, || Some(0)), Some(2));
        // The new timeout, not the old one, ends it.
        a.expire(8_000 + 299_999, |_| Some(300));
        assert_eq!(a.len(), 1);
        a.expire(8_000 + 300_000, |_| Some(300));
        assert!(a.is_empty());
    }

    #[test]
    fn clients_of_a_frontend_without_affinity_are_forgotten() {
        // Affinity switched off (or the service deleted) within the timeout, then on again:
        // the client starts afresh, as a new kube-proxy recent list would.
        let a = Affinity::default();
        let c = client(4);
        assert_eq!(chosen(&a, &service(&[20]), c, 0), backend(20));
        let other = FrontendKey {
            protocol: PROTO_TCP,
            ip: Ipv4Addr::new(172, 96, 0, 99),
            port: 80,
        };
        a.expire(1000, |f| (*f == other).then_some(TIMEOUT_S));
        assert!(a.is_empty());
        let grown = service(&[20, 21, 22, 23, 24, 25, 26, 27]);
        assert_eq!(
            chosen(&a, &grown, c, 2000),
            grown.backends[hashed(&grown, c).unwrap()]
        );
    }

    #[test]
    fn two_clients_can_get_different_backends() {
        let a = Affinity::default();
        let s = service(&[20, 21, 22]);
        let got: std::collections::HashSet<Backend> =
            (0..30).map(|i| chosen(&a, &s, client(i), 1000)).collect();
        assert!(got.len() > 1, "{got:?}");
        // And each keeps its own.
        for i in 0..30 {
            assert_eq!(
                chosen(&a, &s, client(i), 2000),
                s.backends[hashed(&s, client(i)).unwrap()]
            );
        }
    }

    #[test]
    fn the_bound_holds_and_a_client_past_it_still_gets_a_backend() {
        let a = Affinity::new(64);
        assert_eq!(a.max(), 64);
        let s = service(&[20, 21, 22]);
        for i in 0..1000 {
            chosen(&a, &s, client(i), 1000);
        }
        assert!(a.len() <= 64, "{}", a.len());
        assert_eq!(a.full.load(Relaxed) as usize, 1000 - a.len());
        // Remembered clients are refreshed in place: no growth.
        for i in 0..1000 {
            chosen(&a, &s, client(i), 2000);
        }
        assert!(a.len() <= 64);
        // Frontends are separate: the same client of another service is another entry.
        let empty = Affinity::default();
        let other = LbService {
            frontend: Backend {
                ip: Ipv4Addr::new(172, 80, 88, 5),
                port: 80,
            },
            ..service(&[20, 21, 22])
        };
        chosen(&empty, &s, client(1), 1000);
        chosen(&empty, &other, client(1), 1000);
        assert_eq!(empty.len(), 2);
        // The sweep frees them all once idle.
        a.expire(2000 + u64::from(TIMEOUT_S) * 1000, |_| Some(TIMEOUT_S));
        assert!(a.is_empty());
    }

    #[test]
    fn a_service_without_backends_gets_none() {
        let a = Affinity::default();
        let s = service(&[]);
        assert_eq!(
            a.choose(&s, TIMEOUT_S, client(1), 0, || hashed(&s, client(1))),
            None
        );
        assert!(a.is_empty());
    }

    #[test]
    fn expire_part_sweeps_every_shard_in_turn() {
        let a = Affinity::default();
        let s = service(&[20]);
        for i in 0..200 {
            chosen(&a, &s, client(i), 0);
        }
        let late = u64::from(TIMEOUT_S) * 1000;
        for _ in 0..SHARDS {
            a.expire_part(late, |_| Some(TIMEOUT_S));
        }
        assert!(a.is_empty());
    }
}
