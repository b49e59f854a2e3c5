//! TAP devices: multi-queue, with the virtio-net header, created straight inside a namespace.
//!
//! A port of Pacific is a Linux TAP device. This module creates one and hands back one file
//! descriptor per queue; [`crate::ports`] reads and writes them. It is the only module of the
//! crate with `unsafe`: four ioctls (`TUNSETIFF`, `TUNSETVNETHDRSZ`, `TUNSETOFFLOAD`,
//! `TUNSETSTEERINGEBPF`), `bpf` and `setns`, each behind a safe function, each with its
//! `// SAFETY:` note. The constants come from `libc` (which mirrors `linux/if_tun.h` and
//! `linux/sched.h`), except the few of `linux/bpf.h` that libc lacks, named where they are.
//!
//! Why these flags (see DESIGN.md, "TAP facts"):
//! - `IFF_TAP | IFF_NO_PI`: Ethernet frames with no packet-information prefix.
//! - `IFF_MULTI_QUEUE`: one queue per worker, so workers never share a read fd. Which queue a
//!   frame of the namespace goes to is chosen by a steering program of ours
//!   ([`steer_queues`]): by its pair of IPv4 addresses, plus the ports for TCP, the
//!   same both ways ([`STEERING_PROGRAM`]). The kernel's own choice follows the queue a flow was
//!   last written on, so a flow whose two directions two workers forwarded moved between queues
//!   mid-stream and its segments overtook each other (spurious TCP retransmissions); and it
//!   spreads the probes of one `traceroute` over the workers, which then reach the destination
//!   out of order: past its ICMP rate limit (6 at once) the host leaves the last hop's answers
//!   out, and traceroute shows stars or a wrong hop count.
//! - `IFF_VNET_HDR` with a 10-byte header (`struct virtio_net_hdr`) and `TUNSETOFFLOAD`
//!   (`TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`, plus `TUN_F_USO4 | TUN_F_USO6` where the kernel
//!   knows them): the kernel hands over 64 KiB TCP segments with a partial checksum instead of
//!   1500-byte frames; measured about 7x the throughput of plain frames. Offloads without the
//!   header are refused: the kernel would then send super-frames we could not describe.
//! - `IFF_TUN_EXCL` on the first queue: `TUNSETIFF` with the name of an existing TAP attaches to
//!   it; a port must never silently join somebody else's device.
//!
//! The device is not persistent: it disappears when its last queue fd closes, so a crash of the
//! daemon leaves nothing behind. Link configuration (MAC, addresses, MTU, up) is not done here:
//! the control plane does it in the target namespace (`ip -n NS ...`), never through ioctls on a
//! socket of the daemon's namespace.
//!
//! [`TapDevice::create_in_netns`] creates the device directly inside a namespace from a
//! short-lived thread that entered it with `setns`, because `TUNSETIFF` looks names up in the
//! namespace the fd was opened in. The alternative, create in the daemon's namespace and move with
//! `ip link set DEV netns NS`, briefly puts a device in the root namespace, may clash with a name
//! there, and leaves a window in which the device sits in neither place; it was rejected. The
//! daemon's own threads never change namespace, and the fds keep working from any namespace.

use std::ffi::c_int;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::thread;

use crate::pipeline::VNET_HDR_LEN;

/// The clone device of the TUN/TAP driver.
const TUN_CLONE_DEVICE: &str = "/dev/net/tun";

/// How a TAP device is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapOptions {
    /// Number of queues (file descriptors), at least 1: usually one per worker.
    pub queues: usize,
    /// Frames carry a 10-byte `struct virtio_net_hdr` in front (IFF_VNET_HDR).
    pub vnet_hdr: bool,
    /// Let the kernel hand over checksum-partial and TSO (and, where known, USO) frames.
    /// Requires `vnet_hdr`.
    pub offloads: bool,
}

impl Default for TapOptions {
    fn default() -> Self {
        TapOptions {
            queues: 1,
            vnet_hdr: true,
            offloads: true,
        }
    }
}

/// An open TAP device: its name (in the namespace it was created in) and one fd per queue.
/// Dropping it closes the queues, and with the last one the device disappears.
#[derive(Debug)]
pub struct TapDevice {
    pub name: String,
    /// Non-blocking, close-on-exec queue fds.
    pub queues: Vec<OwnedFd>,
    /// Whether reads and writes carry the virtio-net header.
    pub vnet_hdr: bool,
}

impl TapDevice {
    /// Creates (`IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE [| IFF_VNET_HDR]`) a TAP named `name` in
    /// the caller's network namespace and opens `opts.queues` queues. Fails if a device of that
    /// name already exists. A `%d` in the name lets the kernel pick a number; `name` of the
    /// result is the name the kernel chose.
    pub fn create(name: &str, opts: &TapOptions) -> io::Result<TapDevice> {
        validate(name, opts)?;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE;
        if opts.vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        let mut device = TapDevice {
            name: name.to_owned(),
            queues: Vec::with_capacity(opts.queues),
            vnet_hdr: opts.vnet_hdr,
        };
        for queue in 0..opts.queues {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                // std adds O_CLOEXEC itself.
                .custom_flags(libc::O_NONBLOCK)
                .open(TUN_CLONE_DEVICE)
                .map_err(|e| step_error(&format!("open {TUN_CLONE_DEVICE} for"), name, e))?;
            // The first queue creates the device and must not attach to an existing one.
            let excl = if queue == 0 { libc::IFF_TUN_EXCL } else { 0 };
            let created = tun_set_iff(file.as_raw_fd(), &device.name, flags | excl)
                .map_err(|e| step_error("TUNSETIFF", &device.name, e))?;
            if queue == 0 {
                device.name = created;
                configure_device(file.as_raw_fd(), &device.name, opts)?;
                if opts.queues > 1 {
                    // Where the kernel lacks BPF (or a sandbox forbids it), the kernel's own
                    // choice stays: every frame still arrives, in the order that choice gives
                    // (see above).
                    let _ = steer_queues(file.as_raw_fd());
                }
            }
            device.queues.push(OwnedFd::from(file));
        }
        Ok(device)
    }

    /// The same as [`TapDevice::create`], but the device is created directly inside the network
    /// namespace at `netns_path` (e.g. `/run/netns/NAME`), from a short-lived thread: the
    /// caller's threads never change namespace, and nothing is created in the root namespace.
    /// The fds keep working from any namespace.
    pub fn create_in_netns(
        netns_path: &Path,
        name: &str,
        opts: &TapOptions,
    ) -> io::Result<TapDevice> {
        // Validate here too, so a bad name does not cost a thread and reads the same either way.
        validate(name, opts)?;
        in_netns(netns_path, || TapDevice::create(name, opts))?
    }
}

/// Runs `f` on a short-lived thread that has entered the network namespace at `netns_path`, and
/// returns its result. Sockets and TAP fds created by `f` stay bound to that namespace and can
/// be used from any thread afterwards.
pub fn in_netns<T: Send>(netns_path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let shown = netns_path.display();
    thread::scope(|scope| {
        let entered = thread::Builder::new()
            .name("pacific-netns".into())
            .spawn_scoped(scope, || -> io::Result<T> {
                let ns = File::open(netns_path)
                    .map_err(|e| step_error("open netns", &shown.to_string(), e))?;
                // SAFETY: `ns` is an open fd for the lifetime of the call; setns only changes
                // the network namespace of this thread, which ends when `f` returns.
                cvt(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })
                    .map_err(|e| step_error("setns", &shown.to_string(), e))?;
                Ok(f())
            })
            .map_err(|e| step_error("spawn a thread for netns", &shown.to_string(), e))?;
        entered.join().map_err(|_| {
            io::Error::other(format!("the thread working in netns {shown} panicked"))
        })?
    })
}

/// Checks what the kernel would reject, with a message that names the device.
fn validate(name: &str, opts: &TapOptions) -> io::Result<()> {
    let invalid = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TAP name {name:?}: {why}"),
        ))
    };
    // The kernel's dev_valid_name(): 1..IFNAMSIZ-1 bytes, not "." or "..", no '/', ':' or
    // whitespace. A NUL would silently cut the name short.
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return invalid(&format!("must be 1 to {} bytes long", libc::IFNAMSIZ - 1));
    }
    if name == "." || name == ".." {
        return invalid("reserved name");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        return invalid("must not contain '/', ':', NUL or whitespace");
    }
    if opts.queues == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TAP {name}: needs at least one queue"),
        ));
    }
    if opts.offloads && !opts.vnet_hdr {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TAP {name}: offloads need the virtio-net header (vnet_hdr)"),
        ));
    }
    Ok(())
}

/// `TUNSETIFF` on a freshly opened `/dev/net/tun` fd: creates or attaches to the device `name`.
/// Returns the device's name as the kernel has it (which differs when `name` holds `%d`).
fn tun_set_iff(fd: RawFd, name: &str, flags: c_int) -> io::Result<String> {
    // SAFETY: `struct ifreq` is plain data (byte arrays, integers, a pointer in a union), for
    // which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // `validate` made sure the name fits with its NUL terminator, which zeroed() provides.
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // The flags field is a C short; IFF_TUN_EXCL (0x8000) is its sign bit, as in C.
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: `fd` is an open /dev/net/tun fd; TUNSETIFF reads and writes one `struct ifreq`,
    // which `ifr` is, and which outlives the call.
    cvt(unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut ifr as *mut libc::ifreq) })?;
    let len = ifr
        .ifr_name
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(ifr.ifr_name.len());
    let bytes: Vec<u8> = ifr.ifr_name[..len].iter().map(|&c| c as u8).collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Per-device settings, done once through the first queue: the virtio-net header size and the
/// offloads.
fn configure_device(fd: RawFd, name: &str, opts: &TapOptions) -> io::Result<()> {
    if opts.vnet_hdr {
        let size = VNET_HDR_LEN as c_int;
        // SAFETY: `fd` is an attached TAP queue; TUNSETVNETHDRSZ reads one `int` through the
        // pointer, which points at `size`, alive for the call.
        cvt(unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &size as *const c_int) })
            .map_err(|e| step_error("TUNSETVNETHDRSZ", name, e))?;
    }
    if opts.offloads {
        let base = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        // UDP segmentation offload exists since Linux 6.2; older kernels answer EINVAL.
        match set_offload(fd, base | libc::TUN_F_USO4 | libc::TUN_F_USO6) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                set_offload(fd, base).map_err(|e| step_error("TUNSETOFFLOAD", name, e))?
            }
            Err(e) => return Err(step_error("TUNSETOFFLOAD", name, e)),
        }
    }
    Ok(())
}

fn set_offload(fd: RawFd, features: libc::c_uint) -> io::Result<()> {
    // SAFETY: `fd` is an attached TAP queue; TUNSETOFFLOAD takes its argument by value (an
    // unsigned long of TUN_F_* bits) and dereferences nothing.
    cvt(unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, libc::c_ulong::from(features)) }).map(|_| ())
}

/// `bpf(2)` commands and program types of `linux/bpf.h` (libc has none of them).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// One eBPF instruction (`struct bpf_insn`): opcode, destination and source registers (4 bits
/// each, destination low), offset, immediate.
#[repr(C)]
#[derive(Clone, Copy)]
struct BpfInsn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: (src << 4) | dst,
        off: 0,
        imm,
    }
}

/// A conditional jump: `off` instructions forward when the test holds.
const fn jump(code: u8, dst: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: dst,
        off,
        imm,
    }
}

/// The steering program: the queue of a frame is a hash of its IPv4 source and destination
/// (bytes 26-29 and 30-33 of an Ethernet frame) and, for TCP, of its two ports (34-37, with a
/// 20-byte header), modulo the queues (the kernel takes the result as a u16). XOR makes it the
/// same both ways, so a flow's two directions meet on one worker where no NAT changes it, and a
/// flow never moves. TCP flows between two hosts spread over the workers (`iperf3 -P 4`); the
/// rest between two hosts stays on one, in order: a traceroute's UDP or ICMP probes, each a flow
/// of its own, and every fragment of a datagram (a fragment has no ports, so none are read from
/// one). `* K >> 16` (Knuth's multiplicative hash) spreads what differs only in high bits. A
/// frame too short for a load ends the program with 0 (the legacy packet loads' rule): queue 0.
/// Other frames than IPv4 hash whatever lies there, the same again for the same hosts.
const STEERING_PROGRAM: [BpfInsn; 19] = [
    insn(0xbf, 6, 1, 0),           // r6 = r1 (the skb, which the packet loads read)
    insn(0xb7, 8, 0, 0),           // r8 = 0: the ports' share
    insn(0x28, 0, 0, 20),          // r0 = ntohs(*(u16 *)(frame + 20)): flags, fragment offset
    insn(0x54, 0, 0, 0x3fff),      // w0 &= 0x3fff (MF and the offset)
    jump(0x55, 0, 6, 0),           // a fragment: to the addresses
    insn(0x30, 0, 0, 23),          // r0 = frame[23]: protocol
    jump(0x55, 0, 4, 6),           // not TCP: to the addresses
    insn(0x28, 0, 0, 34),          // r0 = source port
    insn(0xbf, 8, 0, 0),           // r8 = r0
    insn(0x28, 0, 0, 36),          // r0 = destination port
    insn(0xac, 8, 0, 0),           // w8 ^= w0
    insn(0x20, 0, 0, 26),          // the addresses: r0 = ntohl(*(u32 *)(frame + 26)), source
    insn(0xbf, 7, 0, 0),           // r7 = r0
    insn(0x20, 0, 0, 30),          // r0 = destination
    insn(0xac, 0, 7, 0),           // w0 ^= w7
    insn(0xac, 0, 8, 0),           // w0 ^= w8
    insn(0x24, 0, 0, -1640531535), // w0 *= 0x9e3779b1
    insn(0x74, 0, 0, 16),          // w0 >>= 16
    insn(0x95, 0, 0, 0),           // exit
];

/// The head of `union bpf_attr` that `BPF_PROG_LOAD` reads; the kernel takes a shorter
/// attribute than its own, the rest zero.
#[repr(C)]
struct BpfProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// Loads [`STEERING_PROGRAM`] and makes it choose the queue of every frame the namespace sends
/// into the TAP whose queue `fd` is (`TUNSETSTEERINGEBPF`, Linux 4.16). The device keeps its own
/// reference to the program; ours is closed on return.
fn steer_queues(fd: RawFd) -> io::Result<()> {
    let license = b"GPL\0";
    let mut prog_name = [0u8; 16];
    prog_name[..13].copy_from_slice(b"pacific_steer");
    let attr = BpfProgLoad {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: STEERING_PROGRAM.len() as u32,
        insns: STEERING_PROGRAM.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
    };
    // SAFETY: BPF_PROG_LOAD reads `size_of::<BpfProgLoad>()` bytes at `&attr`, a `#[repr(C)]`
    // prefix of `union bpf_attr`, and through it the instruction array and the license, all
    // alive for the call; it returns a new fd or -1.
    let prog = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const BpfProgLoad,
            std::mem::size_of::<BpfProgLoad>(),
        )
    };
    if prog < 0 {
        return Err(io::Error::last_os_error());
    }
    let prog_fd = c_int::try_from(prog).map_err(|_| io::Error::other("bpf fd out of range"))?;
    // SAFETY: `prog_fd` is the fd the kernel just returned, owned by nothing else.
    let prog = unsafe { OwnedFd::from_raw_fd(prog_fd) };
    let raw = prog.as_raw_fd();
    // SAFETY: `fd` is an attached TAP queue; TUNSETSTEERINGEBPF reads one `int` (the program's
    // fd) through the pointer, which points at `raw`, alive for the call.
    cvt(unsafe { libc::ioctl(fd, libc::TUNSETSTEERINGEBPF, &raw as *const c_int) })?;
    Ok(())
}

/// Turns a libc return value into an `io::Result`, reading `errno` on -1 (as mio's `syscall!`).
fn cvt(ret: c_int) -> io::Result<c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// "STEP NAME: error", keeping the error's kind.
fn step_error(step: &str, name: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{step} {name}: {e}"))
}

/// Helpers for tests that need root: namespaces with guards, `ip` commands, the skip rule.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::PathBuf;
    use std::process::{Command, Output};

    /// True when this test can create namespaces and TAPs (root, /dev/net/tun present). When it
    /// cannot, prints why and returns false, unless PACIFIC_REQUIRE_NETNS=1, which makes it fail.
    pub(crate) fn netns_tests_enabled(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let tun = std::path::Path::new(super::TUN_CLONE_DEVICE).exists();
        if root && tun {
            return true;
        }
        let why = if root {
            "/dev/net/tun is missing"
        } else {
            "not running as root"
        };
        if std::env::var("PACIFIC_REQUIRE_NETNS").as_deref() == Ok("1") {
            panic!("{test}: {why}, and PACIFIC_REQUIRE_NETNS=1");
        }
        eprintln!("skipping {test}: {why}");
        false
    }

    /// Runs `ip ARGS`, returning its output whatever the status.
    pub(crate) fn ip(args: &[&str]) -> Output {
        Command::new("ip").args(args).output().expect("run ip")
    }

    /// Runs `ip ARGS` and panics with its stderr if it fails.
    pub(crate) fn ip_ok(args: &[&str]) {
        let out = ip(args);
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A network namespace `pacu-TAG-PID`, deleted on drop (also when the test fails).
    pub(crate) struct Netns {
        pub(crate) name: String,
    }

    impl Netns {
        pub(crate) fn new(tag: &str) -> Netns {
            let name = format!("pacu-{tag}-{}", std::process::id());
            // A leftover from a crashed run of the same pid would make `add` fail.
            let _ = ip(&["netns", "del", &name]);
            ip_ok(&["netns", "add", &name]);
            Netns { name }
        }

        pub(crate) fn path(&self) -> PathBuf {
            PathBuf::from("/run/netns").join(&self.name)
        }

        /// Whether a link of that name exists in this namespace.
        pub(crate) fn has_link(&self, link: &str) -> bool {
            ip(&["-n", &self.name, "link", "show", link])
                .status
                .success()
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let out = ip(&["netns", "del", &self.name]);
            if !out.status.success() {
                eprintln!(
                    "could not delete netns {}: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{ip, netns_tests_enabled, Netns};
    use std::time::Duration;

    fn ip_in(ns: &str, args: &[&str]) -> std::process::Output {
        ip(&[&["-n", ns][..], args].concat())
    }
    use super::*;

    #[test]
    fn invalid_names_and_options_are_refused_before_any_syscall() {
        let opts = TapOptions::default();
        for bad in [
            "",
            "a-name-of-16-chr",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\0b",
        ] {
            let err = TapDevice::create(bad, &opts).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            assert!(err.to_string().contains("TAP name"), "{err}");
        }
        let err = TapDevice::create("pacu0", &TapOptions { queues: 0, ..opts }).unwrap_err();
        assert_eq!(err.to_string(), "TAP pacu0: needs at least one queue");
        let no_hdr = TapOptions {
            vnet_hdr: false,
            offloads: true,
            queues: 1,
        };
        let err = TapDevice::create("pacu0", &no_hdr).unwrap_err();
        assert!(
            err.to_string()
                .contains("offloads need the virtio-net header"),
            "{err}"
        );
        // 15 bytes is the longest valid name.
        assert!(validate("pacu-15-bytes-x", &opts).is_ok());
    }

    #[test]
    fn a_missing_namespace_is_named_in_the_error() {
        let err = TapDevice::create_in_netns(
            Path::new("/run/netns/pacu-does-not-exist"),
            "eth0",
            &TapOptions::default(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string()
                .starts_with("open netns /run/netns/pacu-does-not-exist:"),
            "{err}"
        );
    }

    #[test]
    fn create_in_netns_creates_the_device_there_and_nowhere_else() {
        if !netns_tests_enabled("create_in_netns_creates_the_device_there_and_nowhere_else") {
            return;
        }
        let ns = Netns::new("tapns");
        let name = format!("pacu{}t", std::process::id() % 10_000_000);
        let opts = TapOptions {
            queues: 3,
            vnet_hdr: true,
            offloads: true,
        };
        let tap = TapDevice::create_in_netns(&ns.path(), &name, &opts).unwrap();
        assert_eq!(tap.name, name);
        assert_eq!(tap.queues.len(), 3);
        assert!(tap.vnet_hdr);

        let shown = ip(&["-n", &ns.name, "-d", "link", "show", &name]);
        assert!(
            shown.status.success(),
            "{}",
            String::from_utf8_lossy(&shown.stderr)
        );
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(text.contains("tun type tap"), "{text}");
        assert!(text.contains("multi_queue"), "{text}");
        assert!(text.contains("vnet_hdr"), "{text}");
        assert!(
            !ip(&["link", "show", &name]).status.success(),
            "{name} leaked into root netns"
        );

        // The same name again in the same namespace is refused, not attached to.
        let err = TapDevice::create_in_netns(&ns.path(), &name, &opts).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("TUNSETIFF {name}: Device or resource busy (os error 16)")
        );

        drop(tap);
        assert!(
            !ns.has_link(&name),
            "a non-persistent TAP must vanish with its last fd"
        );
    }

    /// What a namespace sent to a host on one queue, in order: IPv4 frames as (destination,
    /// protocol, IP ID, flags and fragment offset, destination port or 0 in a later fragment).
    type Sent = Vec<([u8; 4], u8, u16, u16, u16)>;

    fn ipv4_read(queue: &OwnedFd) -> Sent {
        let mut file = File::from(queue.try_clone().unwrap());
        let mut seen = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = io::Read::read(&mut file, &mut buf) {
            let f = &buf[VNET_HDR_LEN..n];
            if f.len() >= 38 && f[12..14] == [8, 0] {
                let be16 = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
                let frag = be16(20);
                let port = if frag & 0x1fff == 0 { be16(36) } else { 0 };
                seen.push(([f[30], f[31], f[32], f[33]], f[23], be16(18), frag, port));
            }
        }
        seen
    }

    #[test]
    fn a_flow_keeps_one_queue_and_between_two_hosts_only_tcp_spreads() {
        if !netns_tests_enabled("a_flow_keeps_one_queue_and_between_two_hosts_only_tcp_spreads") {
            return;
        }
        let ns = Netns::new("tapsteer");
        let name = "pacu-steer";
        let opts = TapOptions {
            queues: 2,
            vnet_hdr: true,
            offloads: true,
        };
        let tap = TapDevice::create_in_netns(&ns.path(), name, &opts).unwrap();
        let n = &ns.name;
        let neighbour = |ip: &str, mac: &str| {
            let out = ip_in(n, &["neigh", "add", ip, "lladdr", mac, "dev", name]);
            assert!(out.status.success(), "{out:?}");
        };
        for args in [
            &["link", "set", name, "up"][..],
            &["addr", "add", "198.18.0.1/24", "dev", name],
        ] {
            let out = ip_in(n, args);
            assert!(out.status.success(), "{args:?}: {out:?}");
        }
        neighbour("198.18.0.2", "02:00:00:00:00:02");
        neighbour("198.18.0.3", "02:00:00:00:00:03");
        let (near, far) = ([198, 18, 0, 2], [198, 18, 0, 3]);
        in_netns(&ns.path(), || {
            // 64 UDP flows to each of two hosts, as a traceroute's probes are: the kernel's own
            // per-flow hash would put about half of each on either queue.
            let socket = std::net::UdpSocket::bind("198.18.0.1:0").unwrap();
            for host in ["198.18.0.2", "198.18.0.3"] {
                for port in 33434..33498u16 {
                    socket.send_to(b"probe", (host, port)).unwrap();
                }
            }
            // A datagram in three fragments.
            socket.send_to(&[7u8; 4000], ("198.18.0.2", 4000)).unwrap();
            // 32 TCP connections to one host (their SYNs; nobody answers).
            for port in 5201..5233u16 {
                let to = std::net::SocketAddr::from((near, port));
                let _ = std::net::TcpStream::connect_timeout(&to, Duration::from_millis(1));
            }
        })
        .unwrap();
        let read: Vec<Sent> = tap.queues.iter().map(ipv4_read).collect();
        let probes: Vec<u16> = (33434..33498).collect();
        for host in [near, far] {
            let per_queue: Vec<Vec<u16>> = read
                .iter()
                .map(|q| {
                    let probe = |s: &&([u8; 4], u8, u16, u16, u16)| s.0 == host && s.1 == 17;
                    let probes = q.iter().filter(probe).filter(|s| s.3 & 0x3fff == 0);
                    probes.map(|s| s.4).collect()
                })
                .collect();
            assert!(per_queue.contains(&probes), "{host:?}: {per_queue:?}");
        }
        // Every fragment on the queue of the probes to the same host.
        let probes_queue = read
            .iter()
            .position(|q| {
                q.iter()
                    .any(|s| s.0 == near && s.1 == 17 && s.3 & 0x3fff == 0)
            })
            .unwrap();
        let fragments: Vec<usize> = (0..read.len())
            .flat_map(|i| {
                let frags = read[i]
                    .iter()
                    .filter(|s| s.0 == near && s.1 == 17 && s.3 & 0x3fff != 0);
                frags.map(move |_| i)
            })
            .collect();
        assert_eq!(fragments, vec![probes_queue; 3], "{read:?}");
        // TCP: each connection's SYNs on one queue, and the connections on both.
        let syns = |q: &Sent| -> Vec<u16> {
            q.iter()
                .filter(|s| s.0 == near && s.1 == 6)
                .map(|s| s.4)
                .collect()
        };
        let (a, b) = (syns(&read[0]), syns(&read[1]));
        assert!(!a.is_empty() && !b.is_empty(), "{a:?} {b:?}");
        assert!(a.iter().all(|p| !b.contains(p)), "{a:?} {b:?}");
    }

    #[test]
    fn a_percent_d_name_reports_the_name_the_kernel_chose() {
        if !netns_tests_enabled("a_percent_d_name_reports_the_name_the_kernel_chose") {
            return;
        }
        let ns = Netns::new("tapfmt");
        let opts = TapOptions {
            queues: 2,
            vnet_hdr: false,
            offloads: false,
        };
        let tap = TapDevice::create_in_netns(&ns.path(), "pacu%d", &opts).unwrap();
        assert_eq!(tap.name, "pacu0");
        assert!(!tap.vnet_hdr);
        assert!(ns.has_link("pacu0"));
    }
}
