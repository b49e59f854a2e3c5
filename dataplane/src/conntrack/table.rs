//! The storage under [`super::Conntrack`]: a slab of connection entries and an open-addressing
//! index from flow keys to entries, built so that a packet of an established connection costs
//! two cache-line pairs (an index bucket, then its entry) and no lock.
//!
//! **Entries.** A connection is one [`Entry`] of 128 bytes, two adjacent cache lines (Intel's
//! L2 fetches 128-byte-aligned pairs together), holding everything a packet needs: both keys,
//! both directions' actions, the generation they were decided against, the expiry word and the
//! packet counts. Every field is an `AtomicU64`, so a reader may look at an entry while a writer
//! changes it without undefined behaviour; a sequence number in the entry's first word tells the
//! reader whether what it read is whole (a seqlock, with the orderings of Boehm, "Can seqlocks
//! get along with programming language memory models?", 2012). What only slow packets touch
//! (the TCP state machine, the load-balancer binding, the ingress port) is in a [`Cold`] record
//! under a mutex beside the entry; every writer of an entry holds that mutex, so writers never
//! race each other. Entries live in one array for the table's capacity, whose pages the kernel
//! supplies as they are first written (an idle daemon does not hold a table sized for a million
//! connections), on 2 MiB pages where it has them ([`crate::zeroed`]); cold parts live in
//! chunks of [`CHUNK`] allocated when first needed. Slots are reused through a free list; a
//! slot's *incarnation* counts its reuses, so a handle ([`ConnId`]) to a connection that ended
//! finds nothing instead of its successor.
//!
//! **Index.** Buckets of one cache line: seven slot words and an overflow count. A slot word
//! names an entry and a direction and carries 32 bits of the key's hash as a tag, so a lookup
//! reads one line of the index and opens only the entry whose tag matches. A key goes to its home
//! bucket or, when that is full, to the next bucket of its *stripe* (buckets `b`, `b + STRIPES`,
//! ...); the overflow count of a bucket says how many keys passed it, so a lookup stops at the
//! home bucket unless some key went further, and deletes need no tombstones (folly's F14 does the
//! same with its outbound-overflow counts). Writers of a stripe take its lock; readers take none.
//! The index has a fixed size, at most 4/7 full when the slab is, so it never rehashes.
//!
//! Rejected: `HashMap<FlowKey, Arc<Conn>>` in locked shards (what this replaced: a shard lock,
//! a hashbrown control group, a slot and three lines of `Conn` per packet, with three locked
//! instructions in between that kept the misses of successive packets from overlapping; 1.1
//! Mpps at 1M connections); keys inline in the index (64-byte slots at a load factor of 1/2
//! cost 256 bytes per connection before any state); one cache line per direction (two-word
//! actions, an expiry word per direction: measured no faster, the pair of lines comes in
//! together anyway); prefetch instructions instead of the plain loads of `warm_*` (no faster
//! here, and `unsafe`).

use std::net::Ipv4Addr;
use std::sync::atomic::{
    fence, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::OnceLock;

use parking_lot::{Mutex, MutexGuard};

use super::{Dir, FlowKey, LbBinding, SlowState};
use crate::tables::PortId;
use crate::zeroed::{Zeroable, ZeroedArray};

/// Lock stripes of the index (a key's stripe is its home bucket modulo this).
pub(super) const STRIPES: usize = 64;
/// Slot words per bucket (the eighth word of the line is the overflow count).
const SLOTS: usize = 7;
/// Entries per chunk of the slab: 512 KiB of entries.
pub(super) const CHUNK: usize = 4096;
/// The most connections one table holds (slot words could name 2^31 - 1).
pub(super) const MAX_ENTRIES: usize = super::ConntrackConfig::MAX_CONNECTIONS;

/// Words of an [`Entry`].
const META: usize = 0; // incarnation << 32 | sequence (odd while a writer is at work)
const CLOCK: usize = 1;
const GENERATION: usize = 2;
const KEY: [usize; 2] = [3, 8]; // two words per direction
const ACTION: [usize; 2] = [5, 10]; // three words per direction
const PACKETS: [usize; 2] = [13, 14];
/// How far the reply direction's key and action words lie past the original's.
const DIR_STRIDE: usize = KEY[1] - KEY[0];
const _: () = assert!(ACTION[1] - ACTION[0] == DIR_STRIDE);
const CREATED: usize = 15; // when the connection was made (ms of the same clock as `now`)

/// Set in the second word of every packed key, so a live key is never all zeros (the words of
/// a free entry).
const KEY_PRESENT: u64 = 1 << 63;

/// A connection's slot and the incarnation of that slot it was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub(super) slot: u32,
    pub(super) incarnation: u32,
}

/// One connection, two cache lines.
#[repr(C, align(128))]
pub(super) struct Entry {
    w: [AtomicU64; 16],
}

impl Entry {
    /// Counts a packet. A plain load and store: one direction of a flow arrives on one queue,
    /// hence one worker; two workers racing on one direction (or on a slot being reused) may
    /// lose a count, which only statistics see.
    #[inline(always)]
    fn count(&self, dir: Dir) {
        let n = &self.w[PACKETS[dir as usize]];
        n.store(n.load(Relaxed).wrapping_add(1), Relaxed);
    }
}

impl Hot<'_> {
    /// Swaps the expiry word of the connection if it is still the one read (a packet of an
    /// established connection: no lock, one compare-and-swap). A failure means another packet
    /// or a state change came first, or the connection ended.
    #[inline(always)]
    pub fn swap_clock(&self, next: u64) -> bool {
        self.entry.w[CLOCK]
            .compare_exchange_weak(self.clock, next, Relaxed, Relaxed)
            .is_ok()
    }

    /// Counts the packet (see [`Entry::count`]).
    #[inline(always)]
    pub fn count(&self) {
        self.entry.count(self.dir)
    }

    /// When the connection was made, read outside the sequence lock: for a choice of timeout
    /// only, which the swap of the expiry word then confirms or refuses.
    #[inline(always)]
    pub fn created(&self) -> u64 {
        self.entry.w[CREATED].load(Relaxed)
    }
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            w: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// What slow packets and the control plane need of a connection, under its mutex. The mutex is
/// also what writers of the [`Entry`] hold.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Cold {
    pub incarnation: u32,
    pub live: bool,
    pub in_port: PortId,
    pub lb: Option<LbBinding>,
    pub slow: SlowState,
}

// SAFETY: an entry is atomics only; all zeros is a free entry (`Entry::default`).
unsafe impl Zeroable for Entry {}

/// The cold parts of [`CHUNK`] entries: an array of exactly that, so that indexing it by
/// `slot % CHUNK` needs no bounds check.
struct Chunk {
    cold: Box<[Mutex<Cold>; CHUNK]>,
}

impl Chunk {
    fn new() -> Chunk {
        fn array<T>(f: impl FnMut(usize) -> T) -> Box<[T; CHUNK]> {
            let items: Box<[T]> = (0..CHUNK).map(f).collect();
            match items.try_into() {
                Ok(array) => array,
                Err(_) => unreachable!("CHUNK items were collected"),
            }
        }
        Chunk {
            cold: array(|_| Mutex::new(Cold::default())),
        }
    }
}

/// One line of the index.
#[repr(C, align(64))]
struct Bucket {
    /// Keys whose home is this bucket or an earlier one of the stripe, stored past it.
    overflow: AtomicU64,
    /// 0: empty. Else `tag << 32 | dir << 31 | (entry + 1)`.
    slots: [AtomicU64; SLOTS],
}

// SAFETY: a bucket is atomics only; all zeros is an empty bucket.
unsafe impl Zeroable for Bucket {}

#[repr(align(64))]
struct StripeLock(Mutex<()>);

struct Alloc {
    free: Vec<u32>,
    /// Slots below this have been handed out at least once.
    high_water: u32,
}

/// A key as the index sees it: its two packed words and its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowHash {
    words: [u64; 2],
    hash: u64,
}

/// Where the warming stage of a batch saw a key's entry: the entry the slot word of the index
/// names, and the word, so that the lookup opens the entry without finding it again. The entry
/// is checked like any other when it is used (the connection may have ended since, or the slot
/// been reused: its key is compared under the sequence lock).
#[derive(Clone, Copy, Default)]
pub struct Hint<'t> {
    entry: Option<&'t Entry>,
    word: u64,
}

/// A key's home bucket, as the first stage of a batch found it: the second reads it again
/// without working out where it is.
#[derive(Clone, Copy)]
pub struct Home<'t>(&'t Bucket);

impl Hint<'static> {
    pub const NONE: Hint<'static> = Hint {
        entry: None,
        word: 0,
    };
}

impl std::fmt::Debug for Hint<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Hint").field(&self.word).finish()
    }
}

impl FlowHash {
    /// The key hashed.
    #[inline(always)]
    pub fn key(&self) -> FlowKey {
        FlowKey::unpack(self.words)
    }

    /// The key's protocol.
    #[inline(always)]
    pub fn protocol(&self) -> u8 {
        (self.words[1] >> 32) as u8
    }
}

/// The hot part of an entry as one direction's packet reads it, whole (checked by the seqlock).
#[derive(Clone, Copy)]
pub(super) struct Hot<'t> {
    entry: &'t Entry,
    pub id: ConnId,
    pub dir: Dir,
    pub clock: u64,
    pub generation: u64,
    pub action: [u64; 3],
}

/// Every field of an entry, read under its mutex.
#[derive(Debug, Clone, Copy)]
pub(super) struct Whole {
    pub keys: [FlowKey; 2],
    pub actions: [[u64; 3]; 2],
    pub generation: u64,
    pub clock: u64,
    pub packets: [u64; 2],
    pub created: u64,
}

pub(super) struct Table {
    /// The index, on huge pages where the kernel has them (see [`crate::zeroed`]).
    buckets: ZeroedArray<Bucket>,
    /// The slab of entries, one per connection the table can hold, likewise; the kernel
    /// supplies its pages as they are first written.
    entries: ZeroedArray<Entry>,
    bucket_mask: usize,
    stripes: Box<[StripeLock]>,
    chunks: Box<[OnceLock<Chunk>]>,
    capacity: usize,
    alloc: Mutex<Alloc>,
    seeds: [u64; 2],
    live: AtomicUsize,
}

/// The entry a slot word names.
#[inline(always)]
fn slot_entry(w: u64) -> u32 {
    ((w & 0x7fff_ffff) as u32).wrapping_sub(1)
}

#[inline(always)]
fn slot_dir(w: u64) -> Dir {
    if w & (1 << 31) == 0 {
        Dir::Original
    } else {
        Dir::Reply
    }
}

/// The high and low halves of a 64x64-bit product, folded (the mixing step of ahash's fallback
/// hasher and of wyhash).
#[inline(always)]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

impl FlowKey {
    /// The key as two words: the addresses in the first, the ports in the low half of the second
    /// and the protocol above them, each in the order of a packet's bytes as they load from
    /// memory (source then destination, network byte order), so that the fast path packs the
    /// key of a frame with two loads and no byte swap.
    #[inline(always)]
    pub(super) fn pack(&self) -> [u64; 2] {
        let [s0, s1, s2, s3] = self.src.octets();
        let [d0, d1, d2, d3] = self.dst.octets();
        let [sp0, sp1] = self.src_port.to_be_bytes();
        let [dp0, dp1] = self.dst_port.to_be_bytes();
        pack_wire(
            self.protocol,
            [s0, s1, s2, s3, d0, d1, d2, d3],
            [sp0, sp1, dp0, dp1],
        )
    }

    pub(super) fn unpack(w: [u64; 2]) -> FlowKey {
        let [s0, s1, s2, s3, d0, d1, d2, d3] = w[0].to_ne_bytes();
        let [sp0, sp1, dp0, dp1] = (w[1] as u32).to_ne_bytes();
        FlowKey {
            protocol: (w[1] >> 32) as u8,
            src: Ipv4Addr::new(s0, s1, s2, s3),
            dst: Ipv4Addr::new(d0, d1, d2, d3),
            src_port: u16::from_be_bytes([sp0, sp1]),
            dst_port: u16::from_be_bytes([dp0, dp1]),
        }
    }
}

/// [`FlowKey::pack`] for a key as a packet carries it: the eight bytes of its source and
/// destination addresses, the four of its source and destination ports.
#[inline(always)]
pub(super) fn pack_wire(protocol: u8, addresses: [u8; 8], ports: [u8; 4]) -> [u64; 2] {
    [
        u64::from_ne_bytes(addresses),
        KEY_PRESENT | u64::from(protocol) << 32 | u64::from(u32::from_ne_bytes(ports)),
    ]
}

impl Table {
    /// A table for `capacity` connections (at most [`MAX_ENTRIES`]).
    pub fn new(capacity: usize) -> Table {
        let capacity = capacity.clamp(1, MAX_ENTRIES);
        // Two keys per connection in slots of seven: at capacity the index is at most 4/7 full;
        // and at least eight buckets a stripe, so that a small table's keys, unevenly spread
        // over the stripes, still find room.
        let buckets = (2 * capacity)
            .div_ceil(4)
            .next_power_of_two()
            .max(STRIPES * 8);
        // Seeded per table: flooding one stripe takes knowing the seeds.
        let random = ahash::RandomState::new();
        Table {
            buckets: ZeroedArray::new(buckets),
            entries: ZeroedArray::new(capacity),
            bucket_mask: buckets - 1,
            stripes: (0..STRIPES).map(|_| StripeLock(Mutex::new(()))).collect(),
            chunks: (0..capacity.div_ceil(CHUNK))
                .map(|_| OnceLock::new())
                .collect(),
            capacity,
            alloc: Mutex::new(Alloc {
                free: Vec::new(),
                high_water: 0,
            }),
            seeds: [random.hash_one(1u64), random.hash_one(2u64) | 1],
            live: AtomicUsize::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of index per connection the table can hold.
    #[cfg(test)]
    pub fn index_bytes_per_connection(&self) -> usize {
        (self.buckets.len() * std::mem::size_of::<Bucket>()).div_ceil(self.capacity)
    }

    pub fn live(&self) -> usize {
        self.live.load(Relaxed)
    }

    #[inline(always)]
    pub fn hash(&self, key: &FlowKey) -> FlowHash {
        self.hash_words(key.pack())
    }

    /// [`Table::hash`] of a key already packed. Both words go into one product (wyhash's
    /// mixing step) and the product is folded again, so that keys differing only in a few bits
    /// of either word (a pod's connections to one server, differing in their source port)
    /// spread over the buckets as random keys do. Multiplying by a seed the word that varies
    /// only once, as this did before, left its high bits unmixed: for one seed in a few hundred,
    /// a third of such keys met in one stripe, whose buckets filled and refused new
    /// connections with the table far from full.
    #[inline(always)]
    pub fn hash_words(&self, words: [u64; 2]) -> FlowHash {
        let h = folded_multiply(words[0] ^ self.seeds[0], words[1] ^ self.seeds[1]);
        let hash = folded_multiply(h, 0x9e37_79b9_7f4a_7c15);
        FlowHash { words, hash }
    }

    #[inline(always)]
    pub(super) fn home(&self, h: &FlowHash) -> usize {
        h.hash as usize & self.bucket_mask
    }

    /// The high half of the hash, never zero, so an empty slot (0) never matches a tag.
    #[inline(always)]
    fn tag(h: &FlowHash) -> u64 {
        h.hash >> 32 | 1
    }

    /// The buckets a key may live in: its home, then every `STRIPES`-th bucket after it,
    /// once round the stripe.
    #[inline(always)]
    fn probe(&self, home: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::successors(Some(home), |b| Some((b + STRIPES) & self.bucket_mask))
            .take(self.buckets.len() / STRIPES)
    }

    /// The chunk holding the cold part of `slot`, if allocated, and the slot's place in it.
    #[inline(always)]
    fn chunk(&self, slot: u32) -> Option<(&Chunk, usize)> {
        let slot = slot as usize;
        let chunk = self.chunks.get(slot / CHUNK)?.get()?;
        Some((chunk, slot % CHUNK))
    }

    #[inline(always)]
    fn entry(&self, slot: u32) -> Option<&Entry> {
        self.entries.get(slot as usize)
    }

    pub fn cold(&self, slot: u32) -> Option<MutexGuard<'_, Cold>> {
        self.chunk(slot).map(|(c, i)| c.cold[i].lock())
    }

    /// Touches the key's home bucket, so that a lookup a little later finds it in the cache
    /// (the first stage of a batch; see `Pipeline::process_batch`).
    #[inline(always)]
    pub fn warm_bucket(&self, h: &FlowHash) -> Home<'_> {
        let bucket = &self.buckets[self.home(h)];
        std::hint::black_box(bucket.slots[0].load(Relaxed));
        Home(bucket)
    }

    /// Touches the entry the home bucket's tags point at (the second stage of a batch), and
    /// returns the slot word that names it: a hint for [`Table::find`].
    #[inline(always)]
    pub fn warm_entry<'t>(&'t self, home: Home<'t>, h: &FlowHash) -> Hint<'t> {
        let tag = Self::tag(h);
        let Some(w) = home
            .0
            .slots
            .iter()
            .map(|slot| slot.load(Relaxed))
            .find(|w| w >> 32 == tag)
        else {
            return Hint::NONE;
        };
        let entry = self.entry(slot_entry(w));
        if let Some(e) = entry {
            std::hint::black_box(e.w[META].load(Relaxed));
            std::hint::black_box(e.w[ACTION[1]].load(Relaxed));
        }
        Hint { entry, word: w }
    }

    /// Finds the connection holding the key and reads what its packet needs, without a lock.
    /// `hint`: what [`Table::warm_entry`] returned for the key, tried first.
    #[inline(always)]
    pub fn find<'t>(&'t self, h: &FlowHash, hint: Hint<'t>) -> Option<Hot<'t>> {
        if let Some(e) = hint.entry {
            if let Some(hot) = Self::read_entry(e, slot_entry(hint.word), slot_dir(hint.word), h) {
                return Some(hot);
            }
        }
        // Worked out after the hint: on its hit the tag is not needed.
        let tag = Self::tag(h);
        for b in self.probe(self.home(h)) {
            let bucket = &self.buckets[b];
            for slot in &bucket.slots {
                let w = slot.load(Acquire);
                if w >> 32 != tag {
                    continue;
                }
                if let Some(hot) = self.read_hot(slot_entry(w), slot_dir(w), h) {
                    return Some(hot);
                }
            }
            if bucket.overflow.load(Acquire) == 0 {
                return None;
            }
        }
        None
    }

    /// One direction's view of an entry, if the entry holds the key in that direction.
    #[inline(always)]
    pub fn read_hot(&self, slot: u32, dir: Dir, h: &FlowHash) -> Option<Hot<'_>> {
        Self::read_entry(self.entry(slot)?, slot, dir, h)
    }

    /// [`Table::read_hot`] on the entry of `slot`.
    #[inline(always)]
    fn read_entry<'t>(e: &'t Entry, slot: u32, dir: Dir, h: &FlowHash) -> Option<Hot<'t>> {
        let key = h.words;
        // The direction's key and action words from one offset (`KEY[d]` and `ACTION[d]` each
        // worked out from `d` cost an address computation apiece).
        let at = DIR_STRIDE * dir as usize;
        loop {
            let before = e.w[META].load(Acquire);
            let k = [
                e.w[KEY[0] + at].load(Relaxed),
                e.w[KEY[0] + at + 1].load(Relaxed),
            ];
            let clock = e.w[CLOCK].load(Relaxed);
            let generation = e.w[GENERATION].load(Relaxed);
            let action = [
                e.w[ACTION[0] + at].load(Relaxed),
                e.w[ACTION[0] + at + 1].load(Relaxed),
                e.w[ACTION[0] + at + 2].load(Relaxed),
            ];
            fence(Acquire);
            if before & 1 == 0 && e.w[META].load(Relaxed) == before {
                return (k == key).then_some(Hot {
                    entry: e,
                    id: ConnId {
                        slot,
                        incarnation: (before >> 32) as u32,
                    },
                    dir,
                    clock,
                    generation,
                    action,
                });
            }
            std::hint::spin_loop();
        }
    }

    /// Counts a packet in a slot (the caller holds the connection's mutex).
    pub fn count(&self, slot: u32, dir: Dir) {
        if let Some(e) = self.entry(slot) {
            e.count(dir);
        }
    }

    /// Stores the expiry word (the caller holds the connection's mutex).
    pub fn store_clock(&self, slot: u32, word: u64) {
        if let Some(e) = self.entry(slot) {
            e.w[CLOCK].store(word, Relaxed);
        }
    }

    /// Whether a connection lives in `slot` (its key words are set), read without a lock.
    pub fn is_live(&self, slot: u32) -> bool {
        self.entry(slot)
            .is_some_and(|e| e.w[KEY[0] + 1].load(Relaxed) & KEY_PRESENT != 0)
    }

    pub fn clock(&self, slot: u32) -> u64 {
        self.entry(slot).map_or(0, |e| e.w[CLOCK].load(Relaxed))
    }

    /// Every field of an entry. The caller holds the connection's mutex, so no writer is at work.
    #[inline]
    pub fn whole(&self, slot: u32) -> Option<Whole> {
        let e = self.entry(slot)?;
        let key =
            |d: usize| FlowKey::unpack([e.w[KEY[d]].load(Relaxed), e.w[KEY[d] + 1].load(Relaxed)]);
        let action = |d: usize| std::array::from_fn(|i| e.w[ACTION[d] + i].load(Relaxed));
        Some(Whole {
            keys: [key(0), key(1)],
            actions: [action(0), action(1)],
            generation: e.w[GENERATION].load(Relaxed),
            clock: e.w[CLOCK].load(Relaxed),
            packets: [e.w[PACKETS[0]].load(Relaxed), e.w[PACKETS[1]].load(Relaxed)],
            created: e.w[CREATED].load(Relaxed),
        })
    }

    /// Rewrites an entry's actions (the caller holds the connection's mutex).
    pub fn write_actions(&self, slot: u32, actions: [[u64; 3]; 2], generation: u64) {
        let Some(e) = self.entry(slot) else { return };
        self.write(e, |e| {
            for (d, words) in actions.iter().enumerate() {
                for (i, &w) in words.iter().enumerate() {
                    e.w[ACTION[d] + i].store(w, Relaxed);
                }
            }
            e.w[GENERATION].store(generation, Relaxed);
        });
    }

    /// The seqlock's write side: the sequence is odd while `f` runs.
    // `#[inline]` here and on `whole` and `fill`: `Conntrack::insert` inlined them only while
    // rustc's split of the crate into codegen units put them together, and a new module (the
    // affinity table) moved them apart, costing every first packet 50-130 instructions.
    #[inline]
    fn write(&self, e: &Entry, f: impl FnOnce(&Entry)) {
        const HIGH: u64 = !0xffff_ffff;
        let seq = e.w[META].load(Relaxed) as u32;
        let odd = |meta: u64| meta & HIGH | u64::from(seq.wrapping_add(1));
        e.w[META].store(odd(e.w[META].load(Relaxed)), Relaxed);
        fence(Release);
        f(e);
        // `f` may have moved the incarnation (the high half); the sequence goes on below it.
        let incarnation = e.w[META].load(Relaxed) & HIGH;
        e.w[META].store(incarnation | u64::from(seq.wrapping_add(2)), Release);
    }

    /// Takes a free slot, or `None` when the table holds `capacity` connections.
    pub fn allocate(&self) -> Option<u32> {
        let mut alloc = self.alloc.lock();
        if let Some(slot) = alloc.free.pop() {
            return Some(slot);
        }
        let slot = alloc.high_water as usize;
        if slot >= self.capacity {
            return None;
        }
        self.chunks[slot / CHUNK].get_or_init(Chunk::new);
        alloc.high_water += 1;
        Some(slot as u32)
    }

    pub fn release(&self, slot: u32) {
        self.alloc.lock().free.push(slot);
    }

    /// Slots that may hold a connection: `0..high_water`.
    pub fn high_water(&self) -> u32 {
        self.alloc.lock().high_water
    }

    /// Fills a freshly allocated slot (the caller holds its mutex, `cold`, and has set the cold
    /// part). The slot is not in the index yet, but a reader that found its previous incarnation
    /// may still be looking: the seqlock tells it.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn fill(
        &self,
        slot: u32,
        cold: &mut Cold,
        keys: [FlowKey; 2],
        actions: [[u64; 3]; 2],
        generation: u64,
        clock: u64,
        created: u64,
        original_packets: u64,
    ) -> ConnId {
        let Some(e) = self.entry(slot) else {
            return ConnId {
                slot,
                incarnation: cold.incarnation,
            };
        };
        self.write(e, |e| {
            for d in 0..2 {
                let k = keys[d].pack();
                e.w[KEY[d]].store(k[0], Relaxed);
                e.w[KEY[d] + 1].store(k[1], Relaxed);
                for (i, &w) in actions[d].iter().enumerate() {
                    e.w[ACTION[d] + i].store(w, Relaxed);
                }
            }
            e.w[PACKETS[0]].store(original_packets, Relaxed);
            e.w[PACKETS[1]].store(0, Relaxed);
            e.w[GENERATION].store(generation, Relaxed);
            e.w[CLOCK].store(clock, Relaxed);
            e.w[CREATED].store(created, Relaxed);
        });
        self.live.fetch_add(1, Relaxed);
        cold.live = true;
        ConnId {
            slot,
            incarnation: cold.incarnation,
        }
    }

    /// Empties a slot whose keys are out of the index (the caller holds its mutex): the keys go,
    /// the incarnation moves on, so handles and readers of this connection find nothing.
    pub fn clear(&self, slot: u32, cold: &mut Cold) {
        if let Some(e) = self.entry(slot) {
            self.write(e, |e| {
                for at in KEY {
                    e.w[at].store(0, Relaxed);
                    e.w[at + 1].store(0, Relaxed);
                }
                e.w[CLOCK].store(0, Relaxed);
                let meta = e.w[META].load(Relaxed);
                e.w[META].store(meta.wrapping_add(1 << 32), Relaxed);
            });
        }
        if cold.live {
            self.live.fetch_sub(1, Relaxed);
        }
        cold.live = false;
        cold.incarnation = cold.incarnation.wrapping_add(1);
    }

    fn stripe(&self, h: &FlowHash) -> MutexGuard<'_, ()> {
        self.stripes[self.home(h) % STRIPES].0.lock()
    }

    /// Under the key's stripe lock: the slot of the index that holds it, if any.
    fn locate(&self, h: &FlowHash) -> Option<(usize, usize, u64)> {
        let tag = Self::tag(h);
        for b in self.probe(self.home(h)) {
            let bucket = &self.buckets[b];
            for (i, slot) in bucket.slots.iter().enumerate() {
                let w = slot.load(Relaxed);
                if w >> 32 != tag {
                    continue;
                }
                let dir = slot_dir(w) as usize;
                let held = self.entry(slot_entry(w)).is_some_and(|e| {
                    [e.w[KEY[dir]].load(Relaxed), e.w[KEY[dir] + 1].load(Relaxed)] == h.words
                });
                if held {
                    return Some((b, i, w));
                }
            }
            if bucket.overflow.load(Relaxed) == 0 {
                return None;
            }
        }
        None
    }

    /// Puts a key in the index, pointing at `slot` in direction `dir`, unless some connection
    /// holds it already: `Err(Some(holder))`, or `Err(None)` when the key's stripe is full.
    pub fn link(&self, h: &FlowHash, slot: u32, dir: Dir) -> Result<(), Option<u32>> {
        let _stripe = self.stripe(h);
        if let Some((_, _, w)) = self.locate(h) {
            return Err(Some(slot_entry(w)));
        }
        let word = Self::tag(h) << 32 | (dir as u64) << 31 | (u64::from(slot) + 1);
        let home = self.home(h);
        for b in self.probe(home) {
            if let Some(free) = self.buckets[b].slots.iter().find(|s| s.load(Relaxed) == 0) {
                // The buckets passed say so first: a reader that sees the key also sees them.
                for p in self.probe(home).take_while(|&p| p != b) {
                    self.buckets[p].overflow.fetch_add(1, Relaxed);
                }
                free.store(word, Release);
                return Ok(());
            }
        }
        Err(None)
    }

    /// Takes a key out of the index if it points at `slot`.
    pub fn unlink(&self, h: &FlowHash, slot: u32) {
        let _stripe = self.stripe(h);
        let Some((b, i, w)) = self.locate(h) else {
            return;
        };
        if slot_entry(w) != slot {
            return;
        }
        self.buckets[b].slots[i].store(0, Release);
        for p in self.probe(self.home(h)).take_while(|&p| p != b) {
            self.buckets[p].overflow.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{PROTO_TCP, PROTO_UDP};
    use std::net::Ipv4Addr;

    fn key(n: u32) -> FlowKey {
        FlowKey {
            protocol: PROTO_UDP,
            src: Ipv4Addr::from(0xacd3_0012),
            dst: Ipv4Addr::from(0xc612_0000 + n / 60_000),
            src_port: 1024 + (n % 60_000) as u16,
            dst_port: 53,
        }
    }

    #[test]
    fn keys_pack_and_unpack_and_a_packed_key_is_never_zero() {
        let k = FlowKey {
            protocol: PROTO_TCP,
            src: Ipv4Addr::new(172, 211, 0, 18),
            dst: Ipv4Addr::new(198, 51, 100, 100),
            src_port: 40000,
            dst_port: 80,
        };
        assert_eq!(FlowKey::unpack(k.pack()), k);
        // The words hold the bytes as a packet carries them (what the fast path loads).
        let [w0, w1] = k.pack();
        assert_eq!(w0.to_ne_bytes(), [172, 211, 0, 18, 198, 51, 100, 100]);
        assert_eq!((w1 as u32).to_ne_bytes(), [0x9c, 0x40, 0, 80]);
        assert_eq!((w1 >> 32) as u8, PROTO_TCP);
        let wire = pack_wire(
            PROTO_TCP,
            [172, 211, 0, 18, 198, 51, 100, 100],
            [0x9c, 0x40, 0, 80],
        );
        assert_eq!(wire, k.pack());
        let zero = FlowKey {
            protocol: 0,
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            src_port: 0,
            dst_port: 0,
        };
        assert_ne!(zero.pack(), [0, 0]);
    }

    /// Link keys until one stripe overflows its home buckets, unlink some, and every key still
    /// there is found while every key gone is not: the overflow counts carry lookups past full
    /// buckets and come back down.
    #[test]
    fn overflowing_keys_are_found_and_unlinking_them_leaves_no_trace() {
        let t = Table::new(1024); // 512 buckets, 8 a stripe
        let keys: Vec<FlowKey> = (0..100_000).map(key).collect();
        let mut linked = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let h = t.hash(k);
            if t.home(&h) != 0 {
                continue;
            }
            let slot = t.allocate().expect("room");
            let mut cold = t.cold(slot).unwrap();
            t.fill(
                slot,
                &mut cold,
                [*k, k.reversed()],
                [[i as u64; 3]; 2],
                1,
                0,
                0,
                0,
            );
            drop(cold);
            t.link(&h, slot, Dir::Original)
                .expect("the stripe has room");
            linked.push((h, slot));
            if linked.len() == 20 {
                break;
            }
        }
        assert_eq!(linked.len(), 20, "20 keys with one home bucket of 7 slots");
        for (h, slot) in &linked {
            assert_eq!(t.find(h, Hint::NONE).map(|hot| hot.id.slot), Some(*slot));
        }
        for (h, slot) in linked.iter().step_by(2) {
            t.unlink(h, *slot);
        }
        for (n, (h, slot)) in linked.iter().enumerate() {
            let found = t.find(h, Hint::NONE).map(|hot| hot.id.slot);
            assert_eq!(found, (n % 2 == 1).then_some(*slot), "key {n}");
        }
        for (h, slot) in linked.iter().skip(1).step_by(2) {
            t.unlink(h, *slot);
        }
        assert!(t.buckets.iter().all(|b| b.overflow.load(Relaxed) == 0));
        assert!(t
            .buckets
            .iter()
            .all(|b| b.slots.iter().all(|s| s.load(Relaxed) == 0)));
    }

    #[test]
    fn a_key_is_linked_once_and_a_cleared_slot_is_found_no_more() {
        let t = Table::new(16);
        let k = key(7);
        let h = t.hash(&k);
        let slot = t.allocate().unwrap();
        let mut cold = t.cold(slot).unwrap();
        let id = t.fill(
            slot,
            &mut cold,
            [k, k.reversed()],
            [[1; 3], [2; 3]],
            5,
            9,
            0,
            0,
        );
        assert_eq!(t.link(&h, slot, Dir::Original), Ok(()));
        assert_eq!(t.link(&h, slot + 1, Dir::Reply), Err(Some(slot)));
        let hot = t.find(&h, Hint::NONE).unwrap();
        assert_eq!(
            (hot.id, hot.dir, hot.clock, hot.generation),
            (id, Dir::Original, 9, 5)
        );
        assert_eq!(hot.action, [1; 3]);
        // Cleared while still linked (a reader that found the slot before it was unlinked):
        // the key no longer matches, and the incarnation moved on.
        t.clear(slot, &mut cold);
        assert!(t.find(&h, Hint::NONE).is_none());
        assert_ne!(cold.incarnation, id.incarnation);
        assert_eq!(t.live(), 0);
    }

    #[test]
    fn the_slab_grows_by_chunks_and_stops_at_capacity() {
        let t = Table::new(CHUNK + 1);
        assert!(t.chunks.iter().all(|c| c.get().is_none()));
        let slots: Vec<u32> = std::iter::from_fn(|| t.allocate()).collect();
        assert_eq!(slots.len(), CHUNK + 1);
        assert!(t.chunks.iter().all(|c| c.get().is_some()));
        t.release(slots[10]);
        assert_eq!(t.allocate(), Some(slots[10]));
        assert_eq!(t.allocate(), None);
    }

    /// Keys that differ only in their source ports (one pod's connections to one server), or
    /// only in their source addresses (many pods' to one server port), both directions of each,
    /// spread over the lock stripes as random keys would: 400 keys in 64 stripes put at most
    /// about 20 in one, for every seed. (With the old hash, one table in a few hundred put over
    /// 56, a full stripe, in one.)
    #[test]
    fn keys_differing_in_a_few_bits_spread_over_every_stripe() {
        let server = Ipv4Addr::new(198, 51, 100, 100);
        let by_port = |port: u16| FlowKey {
            protocol: PROTO_UDP,
            src: Ipv4Addr::new(172, 211, 0, 18),
            dst: server,
            src_port: port,
            dst_port: 53,
        };
        let by_address = |n: u32| FlowKey {
            protocol: PROTO_TCP,
            src: Ipv4Addr::from(0xacd3_0000 + n),
            dst: server,
            src_port: 40000,
            dst_port: 443,
        };
        let keys: [Vec<FlowKey>; 2] = [
            (1000..1100).chain(2000..2100).map(by_port).collect(),
            (0..200).map(by_address).collect(),
        ];
        for keys in &keys {
            for _ in 0..1000 {
                let t = Table::new(256);
                let mut per_stripe = [0usize; STRIPES];
                for k in keys {
                    for k in [*k, k.reversed()] {
                        per_stripe[t.home(&t.hash(&k)) % STRIPES] += 1;
                    }
                }
                let most = per_stripe.iter().max().copied().unwrap_or(0);
                assert!(
                    most <= 30,
                    "{most} of 400 keys in one stripe: {:?}",
                    keys[0]
                );
            }
        }
    }
}
