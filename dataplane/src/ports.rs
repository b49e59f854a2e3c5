//! Worker threads that move frames between TAP queues and the pipeline.
//!
//! One worker per core, each with its own `mio::Poll` (epoll) and run to completion: read a
//! batch from a queue, hand every frame to the [`FrameProcessor`], write what it asks to send,
//! count. No async runtime: a worker has nothing to wait for but its fds, and an executor would
//! only add a queue between the read and the write. The control thread talks to workers through
//! a crossbeam channel plus a `mio::Waker`, and never touches a frame.
//!
//! Queues and fds. A port is a multi-queue TAP (see [`crate::tap`]); queue `i` is read by worker
//! `i % workers`. Every worker must also be able to *transmit* on every port, since the pipeline
//! may send any frame anywhere, so worker `w` writes to queue `w % queues`: its own queue when
//! the port has at least as many queues as there are workers, otherwise a queue that another
//! worker reads. The fds are shared as `Arc<File>` (a TAP write is one atomic syscall, safe from
//! several threads), never `dup`ed: the device vanishes when the last `Arc` goes, which is what
//! [`Dataplane::remove_port`] waits for.
//!
//! Reading. mio registers fds edge-triggered, so a readiness event must be followed by reads
//! until `WouldBlock`. A worker reads at most [`RX_BUDGET`] frames from one queue before moving
//! on (boringtun's cap per readiness event); a queue that still had data goes to the back of a
//! ready list and is visited again after the others, and polling does not block while that list
//! is non-empty. Frames land in one preallocated [`PacketBuf`], with the virtio-net header in
//! front: a port without the header gets a zero one, so the pipeline sees one layout.
//!
//! Writing never blocks: a full queue (`EAGAIN`, `ENOBUFS`) counts `tx-queue-full` on the
//! egress port, a port whose link the pod has set down (`EIO`: the TAP's interface is not up)
//! `link-down`, any other error `tx-error`. The transmit list of every verdict is sent, a `Drop`
//! included (the pipeline may drop a frame and answer it with an ICMP error).
//!
//! Time: `now_ms` counts milliseconds from one `Instant` taken in [`Dataplane::start`], shared by
//! all workers, read once per batch. Worker 0 calls [`FrameProcessor::expire`] about ten times
//! a second (the pipeline sweeps a tenth of its connections each time, so a big table never
//! holds the worker up for a whole sweep). Logs go to stderr and are rate-limited; counters, not
//! logs, say what happens per frame.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ahash::AHashMap;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;

use crate::counters::PortCounters;
use crate::pipeline::{
    DropReason, PacketBuf, Pipeline, Verdict, WorkerContext, BATCH, VNET_HDR_LEN,
};
use crate::tables::PortId;
use crate::tap::TapDevice;

/// A batch stops growing at this many bytes: 64 KB segments (TSO) are written out while their
/// bytes are still in the cache, where 32 of them (2 MB) would push each other out of it before
/// their turn. Measured with netbench (2 cores, `--workers 2`, full runs, alternated): TCP 4
/// streams pod->pod / via ClusterIP / to the outside 29.0/30.0/26.3 and 28.8/28.3/24.6 Gbit/s
/// with this limit, 19.0/22.1/22.2 without; 64 KiB and 512 KiB measured no better.
const BATCH_BYTES: usize = 128 * 1024;
/// Frames read from one queue before the worker moves on to the next ready queue.
pub const RX_BUDGET: usize = 64;
/// How long a worker keeps polling its queues after a frame before it sleeps in `epoll_wait`,
/// yielding the core between polls. A sleeping worker costs each frame a wake-up, which in a VM
/// is an inter-processor interrupt and a halt exit, several microseconds: twice per round trip
/// through Pacific (request and answer) where the kernel's own forwarding wakes nobody. Linux's
/// `net.core.busy_poll` does the same for sockets and suggests 50 µs. Measured with netbench
/// (2 cores, `--quick`, runs alternated): TCP round trip p50 31.6/31.7 us without, 20.6/23.9 us
/// with 50 µs; connections per second 15.7k/15.1k without, 18.9k/18.7k with (the yield is what
/// keeps it from starving the pods: without it connections/s fell to 13.4k).
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);
/// How often worker 0 expires idle state.
const EXPIRE_INTERVAL: Duration = Duration::from_millis(100);
/// At most one log line per kind and worker in this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
const EVENTS_CAPACITY: usize = 256;
const WAKER: Token = Token(usize::MAX);
/// `virtio_net_hdr.gso_type` (linux/virtio_net.h): byte 1; 0 is VIRTIO_NET_HDR_GSO_NONE.
const VNET_GSO_TYPE_OFFSET: usize = 1;

/// What the workers drive: the pipeline, or a stand-in in tests.
pub trait FrameProcessor: Send + Sync + 'static {
    /// Processes one frame received on `in_port`; fills `ctx.tx` with the frames to send.
    fn process(
        &self,
        ctx: &mut WorkerContext,
        now_ms: u64,
        in_port: PortId,
        pkt: &mut PacketBuf,
    ) -> Verdict;
    /// Processes a batch of frames received on `in_port`, in order, calling `emit` after each
    /// with its index, its verdict, the context (whose `tx` list says what to send) and the
    /// packet. By default one frame at a time.
    fn process_batch(
        &self,
        ctx: &mut WorkerContext,
        now_ms: u64,
        in_port: PortId,
        pkts: &mut [PacketBuf],
        emit: &mut dyn FnMut(usize, Verdict, &WorkerContext, &PacketBuf),
    ) {
        for (i, pkt) in pkts.iter_mut().enumerate() {
            ctx.tx.clear();
            let verdict = self.process(ctx, now_ms, in_port, pkt);
            emit(i, verdict, ctx, pkt);
        }
    }
    /// Expires idle state; called by worker 0 about ten times a second (the pipeline sweeps a
    /// tenth of its connections each time).
    fn expire(&self, now_ms: u64);
}

impl FrameProcessor for Pipeline {
    fn process(
        &self,
        ctx: &mut WorkerContext,
        now_ms: u64,
        in_port: PortId,
        pkt: &mut PacketBuf,
    ) -> Verdict {
        Pipeline::process(self, ctx, now_ms, in_port, pkt)
    }

    fn process_batch(
        &self,
        ctx: &mut WorkerContext,
        now_ms: u64,
        in_port: PortId,
        pkts: &mut [PacketBuf],
        emit: &mut dyn FnMut(usize, Verdict, &WorkerContext, &PacketBuf),
    ) {
        Pipeline::process_batch(self, ctx, now_ms, in_port, pkts, emit)
    }

    fn expire(&self, now_ms: u64) {
        Pipeline::expire_part(self, now_ms)
    }
}

/// The worker threads and the ports they serve.
pub struct Dataplane {
    workers: Vec<WorkerHandle>,
    worker_count: usize,
    /// Serializes add/remove, so the workers see them in one order.
    control: Mutex<()>,
    counters: Mutex<AHashMap<PortId, Arc<PortCounters>>>,
}

struct WorkerHandle {
    commands: Sender<Command>,
    waker: Waker,
    thread: Option<JoinHandle<()>>,
}

enum Command {
    AddPort(PortSetup, Sender<io::Result<()>>),
    RemovePort(PortId, Sender<()>),
    Stop,
}

/// One port as one worker sees it.
struct PortSetup {
    id: PortId,
    counters: Arc<PortCounters>,
    vnet_hdr: bool,
    /// The queue this worker transmits on.
    tx: Arc<File>,
    /// The queues this worker reads.
    rx: Vec<Arc<File>>,
}

impl Dataplane {
    /// Spawns `workers` threads named `pacific-worker-N`, with no ports yet, busy-polling for
    /// [`DEFAULT_BUSY_POLL`].
    pub fn start(processor: Arc<dyn FrameProcessor>, workers: usize) -> io::Result<Dataplane> {
        Self::start_with(processor, workers, DEFAULT_BUSY_POLL)
    }

    /// [`Dataplane::start`] with a busy-poll interval of its own (zero: sleep at once).
    pub fn start_with(
        processor: Arc<dyn FrameProcessor>,
        workers: usize,
        busy_poll: Duration,
    ) -> io::Result<Dataplane> {
        if workers == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the dataplane needs a worker",
            ));
        }
        let epoch = Instant::now();
        // Built step by step: if a later worker fails to start, dropping `dataplane` stops the
        // ones already running.
        let mut dataplane = Dataplane {
            workers: Vec::with_capacity(workers),
            worker_count: workers,
            control: Mutex::new(()),
            counters: Mutex::new(AHashMap::new()),
        };
        for index in 0..workers {
            let poll = Poll::new()
                .map_err(|e| worker_error(index, "cannot create its epoll instance", e))?;
            let waker = Waker::new(poll.registry(), WAKER)
                .map_err(|e| worker_error(index, "cannot create its waker", e))?;
            let (commands, inbox) = unbounded();
            let mut worker = Worker::new(index, processor.clone(), poll, inbox, epoch);
            worker.busy_poll = busy_poll;
            let thread = thread::Builder::new()
                .name(format!("pacific-worker-{index}"))
                .spawn(move || worker.run())
                .map_err(|e| worker_error(index, "cannot be spawned", e))?;
            dataplane.workers.push(WorkerHandle {
                commands,
                waker,
                thread: Some(thread),
            });
        }
        Ok(dataplane)
    }

    pub fn workers(&self) -> usize {
        self.worker_count
    }

    /// Hands a TAP to the workers (queue `i` is read by worker `i % workers`; worker `w`
    /// transmits on queue `w % queues`) and returns the port's counters once every worker
    /// polls it.
    pub fn add_port(&self, id: PortId, tap: TapDevice) -> io::Result<Arc<PortCounters>> {
        let _serial = self.control.lock();
        if self.counters.lock().contains_key(&id) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("port {id} ({}) already exists", tap.name),
            ));
        }
        if tap.queues.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("port {id} ({}) has no queue", tap.name),
            ));
        }
        if self.workers.is_empty() {
            return Err(io::Error::other(format!(
                "port {id}: the dataplane is shut down"
            )));
        }
        let queues: Vec<Arc<File>> = tap
            .queues
            .into_iter()
            .map(|fd| Arc::new(File::from(fd)))
            .collect();
        let counters = Arc::new(PortCounters::default());
        let workers = self.workers.len();
        let mut failure = None;
        let mut acks = Vec::with_capacity(workers);
        for (w, handle) in self.workers.iter().enumerate() {
            let setup = PortSetup {
                id,
                counters: counters.clone(),
                vnet_hdr: tap.vnet_hdr,
                tx: queues[w % queues.len()].clone(),
                rx: queues.iter().skip(w).step_by(workers).cloned().collect(),
            };
            let (done, ack) = bounded(1);
            match handle.send(w, Command::AddPort(setup, done)) {
                Ok(()) => acks.push(ack),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // From here on the workers hold the only references to the fds.
        drop(queues);
        for (w, ack) in acks.into_iter().enumerate() {
            match ack.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(_) => failure = failure.or(Some(worker_error(w, "has stopped", None))),
            }
        }
        if let Some(e) = failure {
            self.detach(id);
            return Err(io::Error::new(
                e.kind(),
                format!("port {id} ({}): {e}", tap.name),
            ));
        }
        self.counters.lock().insert(id, counters.clone());
        Ok(counters)
    }

    /// Removes the port from every worker and returns once each has closed its fds (with the
    /// last one the TAP device disappears). Unknown ports are ignored.
    pub fn remove_port(&self, id: PortId) {
        let _serial = self.control.lock();
        if self.counters.lock().remove(&id).is_some() {
            self.detach(id);
        }
    }

    /// Tells every worker to let go of `id` and waits until they have.
    fn detach(&self, id: PortId) {
        let mut acks = Vec::with_capacity(self.workers.len());
        for (w, handle) in self.workers.iter().enumerate() {
            let (done, ack) = bounded(1);
            if handle.send(w, Command::RemovePort(id, done)).is_ok() {
                acks.push(ack);
            }
        }
        // A worker that has stopped has dropped its fds, and its end of `done`, already.
        for ack in acks {
            let _ = ack.recv();
        }
    }

    pub fn counters(&self, id: PortId) -> Option<Arc<PortCounters>> {
        self.counters.lock().get(&id).cloned()
    }

    /// Every port's counters, by port id.
    pub fn all_counters(&self) -> Vec<(PortId, Arc<PortCounters>)> {
        let mut all: Vec<_> = self
            .counters
            .lock()
            .iter()
            .map(|(id, c)| (*id, c.clone()))
            .collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        all
    }

    /// Stops the workers and closes every TAP. Also done on drop; a second call does nothing.
    pub fn shutdown(&mut self) {
        let _serial = self.control.lock();
        for (w, handle) in self.workers.iter().enumerate() {
            let _ = handle.send(w, Command::Stop);
        }
        for (w, mut handle) in self.workers.drain(..).enumerate() {
            if let Some(thread) = handle.thread.take() {
                if thread.join().is_err() {
                    log_line(format_args!("pacific-worker-{w}: the worker had panicked"));
                }
            }
        }
        self.counters.lock().clear();
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl WorkerHandle {
    fn send(&self, index: usize, command: Command) -> io::Result<()> {
        self.commands
            .send(command)
            .map_err(|_| worker_error(index, "has stopped", None))?;
        self.waker
            .wake()
            .map_err(|e| worker_error(index, "cannot be woken", e))
    }
}

fn worker_error(index: usize, what: &str, cause: impl Into<Option<io::Error>>) -> io::Error {
    match cause.into() {
        Some(e) => io::Error::new(e.kind(), format!("pacific-worker-{index} {what}: {e}")),
        None => io::Error::other(format!("pacific-worker-{index} {what}")),
    }
}

/// A port as one worker holds it.
struct WorkerPort {
    counters: Arc<PortCounters>,
    vnet_hdr: bool,
    tx: Arc<File>,
    rx_tokens: Vec<Token>,
}

/// A queue this worker reads.
struct RxQueue {
    port: PortId,
    file: Arc<File>,
    /// In `Worker::ready`: it may hold frames not read yet.
    queued: bool,
}

/// How reading a queue ended.
enum Drain {
    /// Read to `WouldBlock`: wait for the next edge.
    Empty,
    /// The budget ran out with frames possibly left: visit again.
    Budget,
    /// The queue is gone from this worker (removed meanwhile).
    Gone,
    /// EOF or a hard error: stop reading this queue.
    Dead(io::Error),
}

struct Worker {
    index: usize,
    processor: Arc<dyn FrameProcessor>,
    poll: Poll,
    inbox: Receiver<Command>,
    epoch: Instant,
    ports: AHashMap<PortId, WorkerPort>,
    queues: AHashMap<Token, RxQueue>,
    /// Queues with possibly unread frames, visited round-robin.
    ready: VecDeque<Token>,
    /// Tokens are never reused, so a stale one in `ready` or in an event finds nothing.
    next_token: usize,
    ctx: WorkerContext,
    /// One batch of frames read from a queue, processed together.
    pkts: Vec<PacketBuf>,
    tx_errors: RateLimitedLog,
    poll_errors: RateLimitedLog,
    busy_poll: Duration,
}

impl Worker {
    fn new(
        index: usize,
        processor: Arc<dyn FrameProcessor>,
        poll: Poll,
        inbox: Receiver<Command>,
        epoch: Instant,
    ) -> Worker {
        Worker {
            index,
            processor,
            poll,
            inbox,
            epoch,
            ports: AHashMap::new(),
            queues: AHashMap::new(),
            ready: VecDeque::new(),
            next_token: 0,
            ctx: WorkerContext::default(),
            pkts: (0..BATCH).map(|_| PacketBuf::new()).collect(),
            tx_errors: RateLimitedLog::default(),
            poll_errors: RateLimitedLog::default(),
            busy_poll: DEFAULT_BUSY_POLL,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut next_expire = (self.index == 0).then(|| self.epoch + EXPIRE_INTERVAL);
        // Until then the worker polls without sleeping (see `DEFAULT_BUSY_POLL`).
        let mut busy_until = Instant::now();
        loop {
            let timeout = if !self.ready.is_empty() {
                Some(Duration::ZERO)
            } else if Instant::now() < busy_until {
                // Whatever else is runnable on this core (the pods' own processes) goes first.
                thread::yield_now();
                Some(Duration::ZERO)
            } else {
                let held = self.ctx.held.front().map(|h| {
                    let at = self.epoch + Duration::from_millis(h.due);
                    at.saturating_duration_since(Instant::now())
                });
                let expire = next_expire.map(|at| at.saturating_duration_since(Instant::now()));
                match (held, expire) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    let index = self.index;
                    self.poll_errors
                        .log(|| format!("pacific-worker-{index}: epoll_wait: {e}"));
                    // Do not spin on a persistent error.
                    thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for event in events.iter() {
                // The waker only interrupts the poll: the inbox is read below every turn.
                if event.token() != WAKER {
                    self.mark_ready(event.token());
                    busy_until = Instant::now() + self.busy_poll;
                }
            }
            if !self.handle_commands() {
                return;
            }
            self.service_ready();
            self.send_held();
            if let Some(at) = next_expire {
                let now = Instant::now();
                if now >= at {
                    self.processor.expire(self.millis(now));
                    next_expire = Some(now + EXPIRE_INTERVAL);
                }
            }
        }
    }

    /// Sends the held "host unreachable" errors whose time came (see [`crate::pipeline::HeldError`]).
    fn send_held(&mut self) {
        let now_ms = self.millis(Instant::now());
        while self.ctx.held.front().is_some_and(|h| h.due <= now_ms) {
            let Some(held) = self.ctx.held.pop_front() else {
                break;
            };
            // The port may have gone meanwhile (its pod deleted): nothing to answer then.
            let Some(out) = self.ports.get(&held.port) else {
                continue;
            };
            let (errors, index) = (&mut self.tx_errors, self.index);
            if let Some(bytes) = transmit(out, &held.frame, errors, index, held.port) {
                out.counters.add_tx(1, bytes as u64);
            }
        }
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Applies the pending commands; false on `Stop` (or when the dataplane is gone).
    fn handle_commands(&mut self) -> bool {
        loop {
            match self.inbox.try_recv() {
                Ok(Command::AddPort(setup, done)) => {
                    let _ = done.send(self.add_port(setup));
                }
                Ok(Command::RemovePort(id, done)) => {
                    self.remove_port(id);
                    // Acknowledge only after the fds are dropped.
                    let _ = done.send(());
                }
                Ok(Command::Stop) => return false,
                Err(crossbeam_channel::TryRecvError::Empty) => return true,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn add_port(&mut self, setup: PortSetup) -> io::Result<()> {
        if self.ports.contains_key(&setup.id) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "port already exists",
            ));
        }
        let mut rx_tokens = Vec::with_capacity(setup.rx.len());
        for file in setup.rx {
            let token = Token(self.next_token);
            self.next_token += 1;
            let registered = self.poll.registry().register(
                &mut SourceFd(&file.as_raw_fd()),
                token,
                Interest::READABLE,
            );
            if let Err(e) = registered {
                for token in rx_tokens {
                    self.forget_queue(token);
                }
                return Err(worker_error(self.index, "cannot register a queue", e));
            }
            // Frames may have arrived before the registration: read once without waiting.
            self.queues.insert(
                token,
                RxQueue {
                    port: setup.id,
                    file,
                    queued: true,
                },
            );
            self.ready.push_back(token);
            rx_tokens.push(token);
        }
        // Room for every queue in the ready list, so pushing never allocates while forwarding.
        self.ready.reserve(self.queues.len());
        let port = WorkerPort {
            counters: setup.counters,
            vnet_hdr: setup.vnet_hdr,
            tx: setup.tx,
            rx_tokens,
        };
        self.ports.insert(setup.id, port);
        Ok(())
    }

    fn remove_port(&mut self, id: PortId) {
        if let Some(port) = self.ports.remove(&id) {
            for token in port.rx_tokens {
                self.forget_queue(token);
            }
        }
    }

    /// Stops polling a queue and drops this worker's reference to it.
    fn forget_queue(&mut self, token: Token) {
        if let Some(queue) = self.queues.remove(&token) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&queue.file.as_raw_fd()));
            if let Some(port) = self.ports.get_mut(&queue.port) {
                port.rx_tokens.retain(|t| *t != token);
            }
        }
    }

    fn mark_ready(&mut self, token: Token) {
        if let Some(queue) = self.queues.get_mut(&token) {
            if !queue.queued {
                queue.queued = true;
                self.ready.push_back(token);
            }
        }
    }

    /// One round over the ready queues, at most `RX_BUDGET` frames each.
    fn service_ready(&mut self) {
        for _ in 0..self.ready.len() {
            let Some(token) = self.ready.pop_front() else {
                break;
            };
            match self.drain(token) {
                Drain::Budget => self.ready.push_back(token),
                Drain::Empty => {
                    if let Some(queue) = self.queues.get_mut(&token) {
                        queue.queued = false;
                    }
                }
                Drain::Gone => {}
                Drain::Dead(e) => {
                    if let Some(queue) = self.queues.get(&token) {
                        // Once per queue: the queue is not polled again.
                        log_line(format_args!(
                            "pacific-worker-{}: port {}: a queue failed ({e}); no longer reading it",
                            self.index, queue.port
                        ));
                    }
                    self.forget_queue(token);
                }
            }
        }
    }

    /// Reads, processes and transmits up to `RX_BUDGET` frames of one queue, in batches of
    /// up to [`BATCH`] (read, then [`FrameProcessor::process_batch`], then each frame's
    /// transmit list in order). Packet and byte counts are added once a batch.
    fn drain(&mut self, token: Token) -> Drain {
        let Some(queue) = self.queues.get(&token) else {
            return Drain::Gone;
        };
        let in_port = queue.port;
        let Some(port) = self.ports.get(&in_port) else {
            return Drain::Gone;
        };
        let now_ms = self.millis(Instant::now());
        let mut budget = RX_BUDGET;
        while budget > 0 {
            let mut n = 0;
            let mut bytes = 0;
            let mut ended = None;
            while n < BATCH && budget > 0 && bytes < BATCH_BYTES {
                budget -= 1;
                match read_frame(&queue.file, port.vnet_hdr, &mut self.pkts[n]) {
                    Ok(true) => {
                        bytes += self.pkts[n].len;
                        n += 1;
                    }
                    // Shorter than a virtio-net header: the kernel never sends that.
                    Ok(false) => port.counters.count_drop(DropReason::Malformed),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ended = Some(Drain::Empty);
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        ended = Some(Drain::Dead(e));
                        break;
                    }
                }
            }
            let batch = &mut self.pkts[..n];
            let rx_bytes = batch.iter().map(|p| p.len - VNET_HDR_LEN).sum();
            port.counters.add_rx(n as u64, rx_bytes);
            let mut tally = TxTally::default();
            let (ports, tx_errors, index) = (&self.ports, &mut self.tx_errors, self.index);
            let mut emit = |_: usize, verdict: Verdict, ctx: &WorkerContext, pkt: &PacketBuf| {
                if let Verdict::Drop(reason) = verdict {
                    port.counters.count_drop(reason);
                }
                for tx in &ctx.tx {
                    let Some(out) = ports.get(&tx.port) else {
                        // Added or removed meanwhile: the pipeline's tables and the ports disagree.
                        port.counters.count_drop(DropReason::UnknownPort);
                        continue;
                    };
                    let source = ctx.buffer(tx, pkt);
                    if let Some(bytes) = transmit(out, source, tx_errors, index, tx.port) {
                        tally.add(tx.port, out, bytes);
                    }
                }
            };
            self.processor
                .process_batch(&mut self.ctx, now_ms, in_port, batch, &mut emit);
            tally.flush();
            if let Some(ended) = ended {
                return ended;
            }
        }
        Drain::Budget
    }
}

/// Frames and bytes sent per port during one batch, added to the port's counters at its end:
/// one atomic addition per port and batch instead of two per frame. A few ports at a time, in
/// place (no allocation); a batch that sends to more flushes early.
#[derive(Default)]
struct TxTally<'a> {
    ports: [Option<(PortId, &'a PortCounters, u64, u64)>; 8],
}

impl<'a> TxTally<'a> {
    fn add(&mut self, id: PortId, out: &'a WorkerPort, bytes: usize) {
        let bytes = bytes as u64;
        for entry in self.ports.iter_mut() {
            match entry {
                Some((p, _, packets, total)) if *p == id => {
                    *packets += 1;
                    *total += bytes;
                    return;
                }
                Some(_) => {}
                None => {
                    *entry = Some((id, &out.counters, 1, bytes));
                    return;
                }
            }
        }
        self.flush();
        self.ports[0] = Some((id, &out.counters, 1, bytes));
    }

    fn flush(&mut self) {
        for (_, counters, packets, bytes) in self.ports.iter_mut().filter_map(Option::take) {
            counters.add_tx(packets, bytes);
        }
    }
}

/// Reads one frame into `pkt`, behind a virtio-net header (a zero one for ports without it).
/// `Ok(false)`: a read too short to hold the header. EOF is an `UnexpectedEof` error.
fn read_frame(mut file: &File, vnet_hdr: bool, pkt: &mut PacketBuf) -> io::Result<bool> {
    let eof = || io::Error::new(io::ErrorKind::UnexpectedEof, "end of file");
    if vnet_hdr {
        let n = file.read(&mut pkt.buf)?;
        if n == 0 {
            return Err(eof());
        }
        if n < VNET_HDR_LEN {
            return Ok(false);
        }
        pkt.len = n;
    } else {
        let n = file.read(&mut pkt.buf[VNET_HDR_LEN..])?;
        if n == 0 {
            return Err(eof());
        }
        pkt.buf[..VNET_HDR_LEN].fill(0);
        pkt.len = VNET_HDR_LEN + n;
    }
    Ok(true)
}

/// Writes one frame to a port, never blocking, and counts a failure on that port. `Some`:
/// the frame went, with this many bytes (for the caller to count).
fn transmit(
    out: &WorkerPort,
    source: &PacketBuf,
    log: &mut RateLimitedLog,
    worker: usize,
    id: PortId,
) -> Option<usize> {
    let frame_len = source.len.saturating_sub(VNET_HDR_LEN);
    if frame_len == 0 {
        out.counters.count_drop(DropReason::TxError);
        log.log(|| format!("pacific-worker-{worker}: port {id}: the pipeline sent an empty frame"));
        return None;
    }
    let bytes = if out.vnet_hdr {
        source.wire()
    } else {
        // A segmentation-offload super-frame cannot be described without the header; it would
        // reach the peer as one oversized frame. (A partial checksum, VIRTIO_NET_HDR_F_NEEDS_CSUM,
        // is not completed either: keep all ports of a dataplane in the same vnet_hdr mode.)
        if source.buf[VNET_GSO_TYPE_OFFSET] != 0 {
            out.counters.count_drop(DropReason::TxError);
            log.log(|| {
                format!(
                    "pacific-worker-{worker}: port {id}: a GSO frame cannot go to a port \
                     without the virtio-net header"
                )
            });
            return None;
        }
        source.frame()
    };
    let mut file: &File = &out.tx;
    let mut result = file.write(bytes);
    if matches!(&result, Err(e) if e.kind() == io::ErrorKind::Interrupted) {
        result = file.write(bytes);
    }
    match result {
        Ok(_) => return Some(frame_len),
        Err(e)
            if e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS) =>
        {
            out.counters.count_drop(DropReason::TxQueueFull)
        }
        // A switch port with no link: dropped as a switch drops it, counted, not logged.
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {
            out.counters.count_drop(DropReason::LinkDown)
        }
        Err(e) => {
            out.counters.count_drop(DropReason::TxError);
            log.log(|| format!("pacific-worker-{worker}: port {id}: write: {e}"));
        }
    }
    None
}

/// A line of the log ([`crate::log::line`]: nothing when stderr is gone, where `eprintln!`
/// would panic, and a worker that logged a failed write after its daemon's stderr pipe closed
/// died with the dataplane's queues).
fn log_line(line: fmt::Arguments<'_>) {
    crate::log::line(line);
}

/// One log line per `LOG_INTERVAL`, with the number of lines it held back.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn log<M: fmt::Display>(&mut self, message: impl FnOnce() -> M) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            log_line(format_args!(
                "{} (and {} more like it)",
                message(),
                self.suppressed
            ));
        } else {
            log_line(format_args!("{}", message()));
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::{UnixDatagram, UnixStream};
    use std::process::Command;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

    use super::*;
    use crate::pipeline::{Tx, TxSource};
    use crate::tap::test_support::{ip_ok, netns_tests_enabled, Netns};
    use crate::tap::{in_netns, TapOptions};

    type Decide = dyn Fn(&mut WorkerContext, PortId, &mut PacketBuf) -> Verdict + Send + Sync;

    /// A processor run by a closure, which counts `expire` calls and the largest frame seen.
    struct TestProcessor {
        decide: Box<Decide>,
        expired: AtomicU64,
        max_frame: AtomicUsize,
    }

    impl TestProcessor {
        fn new(
            decide: impl Fn(&mut WorkerContext, PortId, &mut PacketBuf) -> Verdict
                + Send
                + Sync
                + 'static,
        ) -> Arc<TestProcessor> {
            Arc::new(TestProcessor {
                decide: Box::new(decide),
                expired: AtomicU64::new(0),
                max_frame: AtomicUsize::new(0),
            })
        }

        /// Frames from port 0 go to port 1 and back, unchanged.
        fn bridge() -> Arc<TestProcessor> {
            TestProcessor::new(|ctx, in_port, _| {
                let port = match in_port {
                    0 => 1,
                    1 => 0,
                    _ => return Verdict::Drop(DropReason::UnknownPort),
                };
                ctx.tx.push(Tx {
                    port,
                    source: TxSource::Packet,
                });
                Verdict::Forward
            })
        }
    }

    impl FrameProcessor for TestProcessor {
        fn process(
            &self,
            ctx: &mut WorkerContext,
            _now_ms: u64,
            in_port: PortId,
            pkt: &mut PacketBuf,
        ) -> Verdict {
            self.max_frame.fetch_max(pkt.frame().len(), Relaxed);
            (self.decide)(ctx, in_port, pkt)
        }

        fn expire(&self, _now_ms: u64) {
            self.expired.fetch_add(1, Relaxed);
        }
    }

    /// A stand-in TAP: each queue is one end of a datagram socket pair (message boundaries, a
    /// bounded receive queue, non-blocking), the test holds the other ends.
    fn socket_port(vnet_hdr: bool, queues: usize) -> (TapDevice, Vec<UnixDatagram>) {
        let mut fds = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..queues {
            let (ours, theirs) = UnixDatagram::pair().unwrap();
            ours.set_nonblocking(true).unwrap();
            theirs
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            fds.push(OwnedFd::from(ours));
            peers.push(theirs);
        }
        (
            TapDevice {
                name: "sock".into(),
                queues: fds,
                vnet_hdr,
            },
            peers,
        )
    }

    /// An Ethernet frame of `len` bytes whose bytes are all different from their neighbours.
    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    fn with_header(header: [u8; VNET_HDR_LEN], frame: &[u8]) -> Vec<u8> {
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(frame);
        bytes
    }

    fn recv(peer: &UnixDatagram) -> Vec<u8> {
        let mut buf = vec![0u8; 70_000];
        let n = peer.recv(&mut buf).expect("a frame within 2 s");
        buf.truncate(n);
        buf
    }

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn frames_cross_the_bridge_byte_for_byte_on_every_queue() {
        let dp = Dataplane::start(TestProcessor::bridge(), 2).unwrap();
        assert_eq!(dp.workers(), 2);
        // Three queues on two workers: worker 0 reads queues 0 and 2, worker 1 queue 1.
        let (tap0, peers0) = socket_port(true, 3);
        let (tap1, peers1) = socket_port(true, 1);
        let c0 = dp.add_port(0, tap0).unwrap();
        let c1 = dp.add_port(1, tap1).unwrap();

        // A partial-checksum header (flags NEEDS_CSUM, csum_start 34, csum_offset 16) passes
        // through untouched.
        let header = [1, 0, 0, 0, 0, 0, 34, 0, 16, 0];
        for (i, peer) in peers0.iter().enumerate() {
            let sent = with_header(header, &frame(60 + i, i as u8));
            peer.send(&sent).unwrap();
            assert_eq!(recv(&peers1[0]), sent, "from queue {i}");
        }
        // Back the other way: worker 0 and worker 1 both transmit on port 0, on queues 0 and 1.
        let sent = with_header([0; VNET_HDR_LEN], &frame(1514, 9));
        for _ in 0..4 {
            peers1[0].send(&sent).unwrap();
        }
        // Until all four came (on either queue), not for a guessed time per queue: a loaded
        // machine may forward one later than that.
        let mut received = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        for peer in &peers0[..2] {
            peer.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
        }
        let mut buf = vec![0u8; 2000];
        while received < 4 && Instant::now() < deadline {
            for peer in &peers0[..2] {
                while let Ok(n) = peer.recv(&mut buf) {
                    assert_eq!(&buf[..n], &sent[..]);
                    received += 1;
                }
            }
        }
        assert_eq!(received, 4);
        // None more.
        for peer in &peers0[..2] {
            assert!(peer.recv(&mut buf).is_err(), "a fifth frame");
        }

        // A frame's count may land just after its peer read it.
        wait_for("port 0's four frames sent", || {
            c0.snapshot().tx_packets == 4
        });
        let (s0, s1) = (c0.snapshot(), c1.snapshot());
        assert_eq!((s0.rx_packets, s0.rx_bytes), (3, 60 + 61 + 62));
        assert_eq!((s0.tx_packets, s0.tx_bytes), (4, 4 * 1514));
        assert_eq!((s1.rx_packets, s1.tx_packets), (4, 3));
        assert!(s0.drops.is_empty() && s1.drops.is_empty());
        let ids: Vec<PortId> = dp.all_counters().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, [0, 1]);
    }

    #[test]
    fn ports_without_the_header_get_a_zero_one_and_lose_it_on_the_way_out() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_by_pipeline = seen.clone();
        let processor = TestProcessor::new(move |ctx, in_port, pkt| {
            seen_by_pipeline.lock().push(pkt.wire().to_vec());
            ctx.tx.push(Tx {
                port: 1 - in_port,
                source: TxSource::Packet,
            });
            Verdict::Forward
        });
        let dp = Dataplane::start(processor, 1).unwrap();
        let (with_hdr, peers0) = socket_port(true, 1);
        let (plain, peers1) = socket_port(false, 1);
        dp.add_port(0, with_hdr).unwrap();
        dp.add_port(1, plain).unwrap();

        let raw = frame(64, 3);
        peers1[0].send(&raw).unwrap();
        assert_eq!(recv(&peers0[0]), with_header([0; VNET_HDR_LEN], &raw));
        assert_eq!(seen.lock()[0], with_header([0; VNET_HDR_LEN], &raw));

        let framed = with_header([0; VNET_HDR_LEN], &frame(70, 4));
        peers0[0].send(&framed).unwrap();
        assert_eq!(recv(&peers1[0]), &framed[VNET_HDR_LEN..]);

        // A TSO super-frame (gso_type TCPV4) cannot leave through a port without the header.
        let gso = with_header([1, 1, 54, 0, 0xa8, 5, 34, 0, 16, 0], &frame(3000, 5));
        peers0[0].send(&gso).unwrap();
        let c1 = dp.counters(1).unwrap();
        wait_for("the GSO drop", || c1.drops(DropReason::TxError) == 1);
        assert_eq!(c1.tx_packets.load(Relaxed), 1);
    }

    #[test]
    fn verdicts_are_counted_and_every_tx_list_is_sent() {
        // First frame byte picks the behaviour.
        let processor = TestProcessor::new(|ctx, _, pkt| match pkt.frame()[0] {
            // Drop, answering with a frame the router built (as an ICMP error would be).
            1 => {
                ctx.scratch.set_frame(b"built-by-the-router");
                ctx.tx.push(Tx {
                    port: 0,
                    source: TxSource::Scratch,
                });
                Verdict::Drop(DropReason::TtlExceeded)
            }
            2 => Verdict::Drop(DropReason::DfwDeny),
            3 => {
                ctx.tx.push(Tx {
                    port: 42,
                    source: TxSource::Packet,
                });
                Verdict::Forward
            }
            _ => Verdict::Consumed,
        });
        let dp = Dataplane::start(processor, 1).unwrap();
        let (tap, peers) = socket_port(false, 1);
        let counters = dp.add_port(0, tap).unwrap();
        for first in [1u8, 2, 3, 4] {
            let mut bytes = frame(60, 0);
            bytes[0] = first;
            peers[0].send(&bytes).unwrap();
        }
        assert_eq!(recv(&peers[0]), b"built-by-the-router");
        wait_for("four frames", || counters.rx_packets.load(Relaxed) == 4);
        wait_for("the unknown-port drop", || {
            counters.drops(DropReason::UnknownPort) == 1
        });
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.tx_packets, 1);
        assert_eq!(snapshot.tx_bytes, b"built-by-the-router".len() as u64);
        assert_eq!(
            snapshot.drops,
            [("unknown-port", 1), ("ttl-exceeded", 1), ("dfw-deny", 1)].to_vec()
        );
    }

    /// A batch that sends to more ports than the tally holds at once still counts every frame
    /// and byte on its own port.
    #[test]
    fn the_transmit_tally_counts_every_port_of_a_batch() {
        let ports: Vec<WorkerPort> = (0..20)
            .map(|_| {
                let (tap, _peers) = socket_port(false, 1);
                WorkerPort {
                    counters: Arc::new(PortCounters::default()),
                    vnet_hdr: false,
                    tx: Arc::new(File::from(tap.queues.into_iter().next().unwrap())),
                    rx_tokens: Vec::new(),
                }
            })
            .collect();
        let mut tally = TxTally::default();
        for round in 1..=3u64 {
            for (id, port) in ports.iter().enumerate() {
                tally.add(id as PortId, port, 100 * id + round as usize);
            }
        }
        tally.flush();
        for (id, port) in ports.iter().enumerate() {
            let s = port.counters.snapshot();
            assert_eq!(s.tx_packets, 3, "port {id}");
            assert_eq!(s.tx_bytes, 3 * 100 * id as u64 + 6, "port {id}");
        }
    }

    #[test]
    fn a_full_transmit_queue_drops_and_counts_instead_of_blocking() {
        let dp = Dataplane::start(TestProcessor::bridge(), 1).unwrap();
        let (tap0, peers0) = socket_port(false, 1);
        let (tap1, _unread) = socket_port(false, 1);
        dp.add_port(0, tap0).unwrap();
        let c1 = dp.add_port(1, tap1).unwrap();
        // Nobody reads port 1: the socket's send buffer (about 200 KiB) fills.
        for i in 0..1000 {
            peers0[0].send(&frame(1400, i as u8)).unwrap();
        }
        wait_for("1000 outcomes", || {
            c1.tx_packets.load(Relaxed) + c1.drops(DropReason::TxQueueFull) == 1000
        });
        assert!(c1.drops(DropReason::TxQueueFull) > 0);
        assert!(c1.tx_packets.load(Relaxed) > 0);
    }

    #[test]
    fn a_queue_at_end_of_file_is_let_go_and_the_port_keeps_working() {
        let dp = Dataplane::start(TestProcessor::bridge(), 1).unwrap();
        let (tap0, peers0) = socket_port(false, 1);
        // Port 1: queue 0 a datagram pair as usual (the worker transmits on it), queue 1 a
        // stream pair, whose reads return 0 (EOF) once the test shuts down its writing side.
        let (mut tap1, peers1) = socket_port(false, 1);
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        tap1.queues.push(OwnedFd::from(ours));
        dp.add_port(0, tap0).unwrap();
        let c1 = dp.add_port(1, tap1).unwrap();

        theirs.shutdown(std::net::Shutdown::Write).unwrap();
        // The worker drops the queue, closing the only fd of its end: we read EOF, not a timeout.
        let mut byte = [0u8; 1];
        assert_eq!(theirs.read(&mut byte).unwrap(), 0);

        // The port's other queue still receives, and frames still leave through the port.
        peers1[0].send(&frame(60, 1)).unwrap();
        assert_eq!(recv(&peers0[0]), frame(60, 1));
        peers0[0].send(&frame(60, 2)).unwrap();
        assert_eq!(recv(&peers1[0]), frame(60, 2));
        assert_eq!(c1.rx_packets.load(Relaxed), 1);
    }

    #[test]
    fn remove_port_closes_every_fd_of_the_port() {
        let dp = Dataplane::start(TestProcessor::bridge(), 2).unwrap();
        // One queue for two workers: worker 1 transmits on worker 0's queue; both must let go.
        let (tap, peers) = socket_port(false, 1);
        dp.add_port(7, tap).unwrap();
        assert!(dp.counters(7).is_some());
        peers[0].send(&frame(60, 0)).unwrap();
        dp.remove_port(7);
        assert!(dp.counters(7).is_none());
        let err = peers[0].send(&frame(60, 0)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED), "{err}");
        dp.remove_port(7); // unknown now: a no-op
    }

    #[test]
    fn the_dataplane_can_be_shared_with_the_control_thread() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Dataplane>();
    }

    #[test]
    fn bad_requests_are_errors() {
        assert_eq!(
            Dataplane::start(TestProcessor::bridge(), 0)
                .err()
                .map(|e| e.kind()),
            Some(io::ErrorKind::InvalidInput)
        );
        let mut dp = Dataplane::start(TestProcessor::bridge(), 1).unwrap();
        dp.add_port(1, socket_port(false, 1).0).unwrap();
        let err = dp.add_port(1, socket_port(false, 1).0).unwrap_err();
        assert_eq!(err.to_string(), "port 1 (sock) already exists");
        let no_queue = TapDevice {
            name: "empty".into(),
            queues: Vec::new(),
            vnet_hdr: true,
        };
        assert_eq!(
            dp.add_port(2, no_queue).unwrap_err().to_string(),
            "port 2 (empty) has no queue"
        );
        dp.shutdown();
        assert!(dp.all_counters().is_empty());
        let err = dp.add_port(3, socket_port(false, 1).0).unwrap_err();
        assert_eq!(err.to_string(), "port 3: the dataplane is shut down");
        dp.shutdown();
    }

    #[test]
    fn worker_zero_expires_about_ten_times_a_second() {
        let processor = TestProcessor::bridge();
        let started = Instant::now();
        let dp = Dataplane::start(processor.clone(), 2).unwrap();
        // Until ten calls came (a loaded machine may wake the worker late, so not after a
        // guessed second), then: at most one per interval since the start, from one worker
        // only (two would make twice as many).
        wait_for("ten expire calls", || processor.expired.load(Relaxed) >= 10);
        thread::sleep(Duration::from_millis(300));
        drop(dp);
        let elapsed = started.elapsed();
        let calls = processor.expired.load(Relaxed);
        let most = u64::try_from(elapsed.as_millis() / EXPIRE_INTERVAL.as_millis()).unwrap();
        assert!((10..=most).contains(&calls), "{calls} calls in {elapsed:?}");
    }

    /// Two namespaces, each with a TAP `eth0` created inside it and bridged by the dataplane.
    struct Lab {
        // Field order is drop order: the dataplane (and the TAPs) go before the namespaces.
        _dp: Dataplane,
        ports: [Arc<PortCounters>; 2],
        ns: [Netns; 2],
    }

    impl Lab {
        fn new(tag: &str, processor: Arc<TestProcessor>, opts: TapOptions, mtu: u32) -> Lab {
            let ns = [
                Netns::new(&format!("{tag}1")),
                Netns::new(&format!("{tag}2")),
            ];
            let dp = Dataplane::start(processor, 2).unwrap();
            let mut ports = Vec::new();
            for (i, ns) in ns.iter().enumerate() {
                let tap = TapDevice::create_in_netns(&ns.path(), "eth0", &opts).unwrap();
                ports.push(dp.add_port(i as PortId, tap).unwrap());
            }
            // Links come up once both ports exist, so no frame meets an unknown port.
            for (i, ns) in ns.iter().enumerate() {
                let mac = format!("02:00:00:00:00:0{}", i + 1);
                let mtu = mtu.to_string();
                let n = &ns.name;
                ip_ok(&[
                    "-n", n, "link", "set", "eth0", "address", &mac, "mtu", &mtu, "up",
                ]);
                ip_ok(&[
                    "-n",
                    n,
                    "addr",
                    "add",
                    &format!("198.18.0.{}/24", i + 1),
                    "dev",
                    "eth0",
                ]);
            }
            let ports = [ports.remove(0), ports.remove(0)];
            Lab { _dp: dp, ports, ns }
        }

        /// `ping ARGS 198.18.0.2` from the first namespace to the second.
        fn ping(&self, args: &[&str]) -> std::process::Output {
            Command::new("ip")
                .args(["netns", "exec", &self.ns[0].name, "ping"])
                .args(args)
                .arg("198.18.0.2")
                .output()
                .unwrap()
        }
    }

    #[test]
    fn ping_crosses_a_bridge_of_two_taps_in_two_namespaces() {
        if !netns_tests_enabled("ping_crosses_a_bridge_of_two_taps_in_two_namespaces") {
            return;
        }
        let opts = TapOptions {
            queues: 2,
            vnet_hdr: false,
            offloads: false,
        };
        let lab = Lab::new("ping", TestProcessor::bridge(), opts, 1500);
        // Up to 10 s for the three replies: a loaded CI machine may lose the race of a 1 s
        // per-packet timeout, not the frames.
        let out = lab.ping(&["-c", "3", "-w", "10"]);
        assert!(
            out.status.success(),
            "ping: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Counted once a batch, after its frames are written: the last reply may be read by
        // ping an instant before the worker counts it.
        let counted = |c: &Arc<PortCounters>| {
            let s = c.snapshot();
            s.rx_packets >= 3 && s.tx_packets >= 3
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lab.ports.iter().all(counted) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        for counters in &lab.ports {
            let s = counters.snapshot();
            assert!(s.rx_packets >= 3 && s.tx_packets >= 3, "{s:?}");
            // What the first namespace sent (IPv6 neighbour discovery, say) before the second
            // one's link came up met a port with no link.
            assert!(s.drops.iter().all(|(r, _)| *r == "link-down"), "{s:?}");
        }
    }

    #[test]
    fn a_frame_to_a_port_whose_link_is_down_is_counted_link_down_not_tx_error() {
        if !netns_tests_enabled("a_frame_to_a_port_whose_link_is_down") {
            return;
        }
        let opts = TapOptions {
            queues: 1,
            vnet_hdr: true,
            offloads: true,
        };
        let lab = Lab::new("lnkdn", TestProcessor::bridge(), opts, 1500);
        ip_ok(&["-n", &lab.ns[1].name, "link", "set", "eth0", "down"]);
        let before = lab.ports[1].drops(DropReason::LinkDown);
        // Unanswered: each try is an ARP broadcast the bridge sends to the downed port.
        let out = lab.ping(&["-c", "3", "-i", "0.2", "-W", "1"]);
        assert!(
            !out.status.success(),
            "a ping through a downed link was answered"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while lab.ports[1].drops(DropReason::LinkDown) == before && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let s = lab.ports[1].snapshot();
        assert!(lab.ports[1].drops(DropReason::LinkDown) > before, "{s:?}");
        assert_eq!(lab.ports[1].drops(DropReason::TxError), 0, "{s:?}");
        // Back up, the same ping is answered.
        ip_ok(&["-n", &lab.ns[1].name, "link", "set", "eth0", "up"]);
        let out = lab.ping(&["-c", "1", "-w", "10"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    #[test]
    fn tcp_with_the_virtio_header_and_offloads_passes_segments_unsplit() {
        if !netns_tests_enabled("tcp_with_the_virtio_header_and_offloads_passes_segments_unsplit") {
            return;
        }
        let processor = TestProcessor::bridge();
        let opts = TapOptions {
            queues: 2,
            vnet_hdr: true,
            offloads: true,
        };
        let lab = Lab::new("tcp", processor.clone(), opts, 1500);
        let server_addr = SocketAddr::from((Ipv4Addr::new(198, 18, 0, 2), 5201));
        // Sockets stay in the namespace they were created in, whichever thread uses them.
        let listener = in_netns(&lab.ns[1].path(), || TcpListener::bind(server_addr))
            .unwrap()
            .unwrap();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut received = Vec::new();
            conn.read_to_end(&mut received).unwrap();
            received
        });
        let mut client = in_netns(&lab.ns[0].path(), || {
            TcpStream::connect_timeout(&server_addr, Duration::from_secs(5))
        })
        .unwrap()
        .unwrap();
        let sent: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        client.write_all(&sent).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let received = server.join().unwrap();
        assert!(
            received == sent,
            "{} bytes of {} arrived intact",
            received.len(),
            sent.len()
        );
        // With TSO the kernel hands over segments far larger than the 1500-byte MTU.
        let largest = processor.max_frame.load(Relaxed);
        assert!(
            largest > 1514,
            "largest frame {largest}: TSO did not reach the dataplane"
        );
        // The counters are added once a batch, after its frames are written: the receiver may
        // have read the last byte an instant before the worker counts it.
        let counted = || {
            lab.ports[0].snapshot().rx_bytes as usize >= sent.len()
                && lab.ports[1].snapshot().tx_bytes as usize >= sent.len()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !counted() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let s = lab.ports[0].snapshot();
        assert!(s.rx_bytes as usize >= sent.len(), "{s:?}");
        assert!(s.drops.is_empty(), "{s:?}");
        let t = lab.ports[1].snapshot();
        assert!(t.tx_bytes as usize >= sent.len(), "{t:?}");
    }

    #[test]
    fn removing_a_port_makes_its_device_disappear() {
        if !netns_tests_enabled("removing_a_port_makes_its_device_disappear") {
            return;
        }
        let ns = Netns::new("rmport");
        let dp = Dataplane::start(TestProcessor::bridge(), 2).unwrap();
        let opts = TapOptions {
            queues: 1,
            ..TapOptions::default()
        };
        let tap = TapDevice::create_in_netns(&ns.path(), "eth0", &opts).unwrap();
        dp.add_port(0, tap).unwrap();
        assert!(ns.has_link("eth0"));
        dp.remove_port(0);
        assert!(!ns.has_link("eth0"), "eth0 outlived remove_port");
    }
}
