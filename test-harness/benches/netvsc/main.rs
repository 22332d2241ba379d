//! netvsc frame-rate benchmark: transmit and receive of 64-byte frames (packed several per
//! send section / transfer-page packet, and one each) and 1514-byte frames (sent three per
//! section, as the driver packs a burst, received one per packet) through the mock network
//! VSP, next to a raw-ring baseline measured in the same run: the same channel and ring sizes,
//! a GPADL send buffer of 6144-byte sections and a GPADL receive buffer of 1806-byte slots,
//! carrying the same frames with the same copies (the guest copies each frame into a section
//! once and the host copies it out once, one completion per section; the host copies each
//! received frame into a slot once and the guest copies it out once, one completion per
//! transfer-page packet) to the baseline device in `baseline.rs`, with no NVSP or RNDIS.
//!
//! `cargo bench -p test-harness --bench netvsc` (env: `NETVSC_BENCH_ROUNDS`, default 5;
//! `NETVSC_BENCH_MS`, default 120 ms per run; `NETVSC_BENCH_INSNS=0` skips the instruction
//! counts). `test-harness/benches/netvsc.sh` installs valgrind (Debian) and runs it.
//!
//! Timed runs: the mock host steps on its own thread and reads a ring only when the guest
//! signals it (as Hyper-V does); the guest polls its NIC in a loop (a poll-mode driver).
//! Variants are interleaved round by round (order rotated each round) and the ratio column is
//! the median of the per-round ratios netvsc / baseline of the same traffic, because the
//! machine's vCPUs change speed within minutes; absolute rates are medians, for context only.
//! Signals per frame are counted by the mock host over all runs of a variant, both ways.
//!
//! Instructions per frame: the same guest loop runs single-threaded and deterministic (a
//! guest turn, then a host step) under `valgrind --tool=callgrind --toggle-collect` for two
//! frame counts; the difference divided by the extra frames is the guest's instructions per
//! frame (driver, bus, ring and the mock hypervisor's hypercalls), without setup or the host.
//! `perf stat` counters are not available in this VM, hence callgrind.

mod baseline;

use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use netvsc::{Nic, NicConfig};
use test_harness::guest::boot_vp;
use test_harness::hv::{HostPreset, MockConfig, MockHal, MockHypervisor, MockVp};
use test_harness::network::{NETWORK_CLASS, NetVspConfig, NetworkVsp};
use test_harness::vmbus::{DeviceOffer, HostRelease, MockVmbusHost, ThreadedHost};
use vmbus_guest::protocol::Guid;
use vmbus_guest::ring::PacketKind;
use vmbus_guest::{
    BoundedWait, Channel, ConnectionConfig, HostBuffer, Received, Released, SynicTransport, Vmbus,
    Wait,
};

use baseline::{OP_GENERATE, OP_SECTION, OP_SETUP, RawNetDevice, SECTION};

type Guest = Vmbus<SynicTransport<MockVp>, MockHal>;

const INSTANCE: Guid = Guid::from_str_const("0b1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f");
const RAW_CLASS: Guid = Guid::from_str_const("7e1f0c2a-5b3d-4e6f-8a9b-0c1d2e3f4a5b");
/// No progress for this long = a lost wakeup.
const STALL: Duration = Duration::from_millis(10);
/// Packets one guest poll may take.
const BUDGET: usize = 64;
/// Requests in flight (netvsc's default request table).
const REQUESTS: usize = 64;
/// Frames per section / transfer-page packet when packed (Hyper-V's max_pkts_per_msg).
const PACK: usize = 8;
/// Bytes of an RNDIS PACKET header (devices §2.10).
const RNDIS_PACKET_HEADER: usize = 44;
/// Receive slot of the mock VSP for MTU 1500 (devices §2.7).
const SLOT: usize = 1806;
/// Receive and send buffers (netvsc's defaults).
const RECV_BYTES: usize = 16 << 20;
const SEND_BYTES: usize = 1 << 20;
/// The instruction-count helper mode: `variant,frames`.
const INSNS_ENV: &str = "NETVSC_BENCH_INSNS_RUN";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Tx,
    Rx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Traffic {
    dir: Dir,
    len: usize,
    packed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Variant {
    traffic: Traffic,
    raw: bool,
}

impl Traffic {
    fn name(self) -> String {
        format!(
            "{} {:>4} B {}",
            match self.dir {
                Dir::Tx => "TX",
                Dir::Rx => "RX",
            },
            self.len,
            if self.packed { "packed" } else { "1/pkt " }
        )
    }
    /// Frames per send section / transfer-page packet: on transmit as many RNDIS messages
    /// (44-byte header, 8-byte aligned) as fit a section, at most [`PACK`] — what the driver
    /// packs, so the baseline completes as many frames per section.
    fn per_packet(self) -> usize {
        match (self.packed, self.dir) {
            (false, _) => 1,
            (true, Dir::Tx) => {
                PACK.min(SECTION / (RNDIS_PACKET_HEADER + self.len).next_multiple_of(8))
            }
            (true, Dir::Rx) => PACK,
        }
    }
}

const TRAFFIC: [Traffic; 6] = [
    Traffic {
        dir: Dir::Tx,
        len: 64,
        packed: true,
    },
    Traffic {
        dir: Dir::Tx,
        len: 64,
        packed: false,
    },
    Traffic {
        dir: Dir::Tx,
        len: 1514,
        packed: true,
    },
    Traffic {
        dir: Dir::Rx,
        len: 64,
        packed: true,
    },
    Traffic {
        dir: Dir::Rx,
        len: 64,
        packed: false,
    },
    Traffic {
        dir: Dir::Rx,
        len: 1514,
        packed: false,
    },
];

impl Variant {
    fn key(self) -> usize {
        let t = TRAFFIC.iter().position(|t| *t == self.traffic).unwrap_or(0);
        t * 2 + usize::from(self.raw)
    }
    fn from_key(k: usize) -> Option<Self> {
        Some(Self {
            traffic: *TRAFFIC.get(k / 2)?,
            raw: k % 2 == 1,
        })
    }
}

/// An Ethernet + IPv4 + UDP frame of `len` bytes from the guest's test network.
fn frame(len: usize, dst: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x42]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    f[14..34].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2,
    ]);
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    // A right IPv4 header checksum (the UDP checksum stays 0, "none"), so the host's
    // receive verdict is "good" like a real stream's.
    let mut sum: u32 = f[14..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f[34..36].copy_from_slice(&4000u16.to_be_bytes());
    f[36..38].copy_from_slice(&4001u16.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

struct Vm {
    _hv: MockHypervisor,
    guest: Guest,
    relid: u32,
    vsp: Option<NetworkVsp>,
    frames_in: Arc<AtomicU64>,
}

fn vm(raw: bool) -> (Vm, MockVmbusHost) {
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_memory_bytes(64 << 20));
    let vp = boot_vp(&hv, 0).expect("boot VP");
    let mut host = MockVmbusHost::new(hv.clone(), HostRelease::Ws2022);
    host.set_poll_rings(false);
    let frames_in = Arc::new(AtomicU64::new(0));
    let (relid, vsp) = if raw {
        let dev = RawNetDevice::new(frames_in.clone());
        let relid = host.add_device(DeviceOffer::new(RAW_CLASS, INSTANCE), Box::new(dev));
        (relid, None)
    } else {
        let vsp = NetworkVsp::new(NetVspConfig::default());
        vsp.keep_frames(false);
        // Verifying every frame's checksums is host work the raw baseline does not do.
        vsp.verify_checksums(false);
        let relid = host.add_device(
            DeviceOffer::new(NETWORK_CLASS, INSTANCE),
            Box::new(vsp.clone()),
        );
        (relid, Some(vsp))
    };
    let transport = SynicTransport::for_current_vp(vp.hypercalls, vp.synic);
    let guest = Vmbus::new(transport, hv.hal(), ConnectionConfig::default());
    guest
        .connect(&mut BoundedWait::new(1000, || {
            host.step();
        }))
        .expect("connect");
    let vm = Vm {
        _hv: hv,
        guest,
        relid,
        vsp,
        frames_in,
    };
    (vm, host)
}

/// Who runs the host: its own thread (timed runs) or the guest loop between turns.
enum Host {
    Threaded(ThreadedHost),
    Stepped(Box<MockVmbusHost>),
}

impl Host {
    fn with<R>(&mut self, f: impl FnOnce(&mut MockVmbusHost) -> R) -> R {
        match self {
            Self::Threaded(t) => t.with_host(f),
            Self::Stepped(h) => f(h),
        }
    }
    /// A waiter for blocking guest calls.
    fn wait(&mut self) -> BoundedWait<impl FnMut() + '_> {
        BoundedWait::new(200_000, move || match self {
            Self::Threaded(_) => std::thread::sleep(Duration::from_micros(10)),
            Self::Stepped(h) => {
                h.step();
            }
        })
    }
    /// Moves a stepped host to its own thread when `threaded`.
    fn start(self, threaded: bool) -> Self {
        match self {
            Self::Stepped(h) if threaded => Self::Threaded((*h).spawn()),
            other => other,
        }
    }
    /// Stops the host thread, if any.
    fn finish(self) {
        if let Self::Threaded(t) = self {
            drop(t.stop());
        }
    }
    /// After a guest turn: a host step, or nothing (the thread steps).
    fn after_turn(&mut self) {
        if let Self::Stepped(h) = self {
            h.step();
        }
    }
    /// Recovers a lost wakeup: the host reads every ring once.
    fn kick(&mut self) {
        self.with(|h| {
            h.set_poll_rings(true);
            h.step();
            h.set_poll_rings(false);
        });
    }
}

/// How long a run lasts.
#[derive(Clone, Copy)]
enum Stop {
    Time(Duration),
    Frames(u64),
}

#[derive(Default, Clone, Copy)]
struct Run {
    frames: u64,
    secs: f64,
    to_host: u64,
    to_guest: u64,
    stalls: u64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.frames as f64 / self.secs
    }
}

/// The guest's work between two host steps, a separate symbol for callgrind.
#[inline(never)]
fn insns_guest_turn(f: &mut dyn FnMut() -> u64) -> u64 {
    f()
}

/// Runs `turn` (returns frames done) until `stop`, counting signals of `relid` both ways.
fn drive(host: &mut Host, relid: u32, stop: Stop, turn: &mut dyn FnMut() -> u64) -> Run {
    let signals =
        |host: &mut Host| host.with(|h| (h.signal_count(relid), h.guest_signal_count(relid)));
    let (s0, g0) = signals(host);
    let start = Instant::now();
    let mut last = Instant::now();
    let mut run = Run::default();
    let mut iter = 0u64;
    loop {
        let n = insns_guest_turn(turn);
        host.after_turn();
        run.frames += n;
        if n > 0 {
            last = Instant::now();
        } else if matches!(host, Host::Threaded(_)) && last.elapsed() > STALL {
            host.kick();
            run.stalls += 1;
            last = Instant::now();
        }
        iter += 1;
        let done = match stop {
            Stop::Time(d) => iter.is_multiple_of(8) && start.elapsed() >= d,
            Stop::Frames(f) => run.frames >= f,
        };
        if done {
            break;
        }
    }
    run.secs = start.elapsed().as_secs_f64();
    let (s1, g1) = signals(host);
    run.to_host = s1 - s0;
    run.to_guest = g1 - g0;
    run
}

fn run_netvsc(t: Traffic, threaded: bool, stop: Stop) -> Run {
    let (vm, host) = vm(false);
    let vsp = vm.vsp.clone().expect("vsp");
    let (guest, relid) = (&vm.guest, &vm.relid);
    let mut host = Host::Stepped(Box::new(host));
    let config = NicConfig {
        recv_buffer_bytes: RECV_BYTES,
        send_buffer_bytes: SEND_BYTES,
        ..NicConfig::default()
    };
    let mut nic: Nic<'_, _, _, REQUESTS> =
        Nic::open(guest, *relid, &config, &mut host.wait()).expect("open NIC");
    let mut host = host.start(threaded);
    let f = frame(t.len, nic.mac());
    let run = match t.dir {
        Dir::Tx => {
            let mut completed = 0;
            let burst = [&f[..]; 64];
            drive(&mut host, *relid, stop, &mut || {
                if t.packed || t.len >= netvsc::nic::PACK_THRESHOLD {
                    while nic.can_send() && nic.send_batch(&burst).expect("send") > 0 {}
                } else {
                    // One frame per section: each sent on its own.
                    while nic.can_send() {
                        nic.send_frame(&f).expect("send");
                    }
                }
                nic.poll(BUDGET, |_| {}).expect("poll");
                let now = nic.stats().tx_completed;
                let n = now - completed;
                completed = now;
                n
            })
        }
        Dir::Rx => {
            vsp.generate(Some((&f, t.per_packet())));
            drive(&mut host, *relid, stop, &mut || {
                let mut n = 0;
                nic.poll(BUDGET, |frame| {
                    black_box(frame);
                    n += 1;
                })
                .expect("poll");
                n
            })
        }
    };
    vsp.generate(None);
    assert_eq!(nic.stats().tx_failed, 0);
    assert_eq!(nic.close(&mut host.wait()), Released::Freed, "close");
    host.finish();
    assert!(vsp.rejections().is_empty(), "{:?}", vsp.rejections());
    run
}

fn run_raw(t: Traffic, threaded: bool, stop: Stop) -> Run {
    let (vm, host) = vm(true);
    let frames_in = vm.frames_in.clone();
    let (guest, relid) = (&vm.guest, &vm.relid);
    let mut host = Host::Stepped(Box::new(host));
    let ring = NicConfig::default().channel;
    let mut ch: Channel<'_, _, _, u64, REQUESTS> =
        Channel::open(guest, *relid, &ring, &mut host.wait()).expect("open");
    let send =
        HostBuffer::with_gpadl(guest, *relid, SEND_BYTES / 4096, &mut host.wait()).expect("send");
    let recv =
        HostBuffer::with_gpadl(guest, *relid, RECV_BYTES / 4096, &mut host.wait()).expect("recv");
    let words = |w: [u32; 4]| {
        let mut b = [0u8; 16];
        for (i, x) in w.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&x.to_le_bytes());
        }
        b
    };
    let setup = words([
        OP_SETUP,
        send.gpadl_handle().expect("gpadl"),
        recv.gpadl_handle().expect("gpadl"),
        SLOT as u32,
    ]);
    let mut rx = [0u8; 1024];
    let mut done = [0u8; 64];
    ch.transact(&[&setup], 0, &mut done, &mut rx, |_| {}, &mut host.wait())
        .expect("setup");
    let mut host = host.start(threaded);
    let f = frame(t.len, [0x00, 0x15, 0x5D, 0, 0, 1]);
    let sections = SEND_BYTES / SECTION;
    let mut free: Vec<usize> = (0..sections).rev().collect();
    let mut private = [0u8; 2048];
    let run = match t.dir {
        Dir::Tx => {
            let per = t.per_packet();
            let stride = f.len().next_multiple_of(8);
            drive(&mut host, *relid, stop, &mut || {
                while !ch.requests_full()
                    && let Some(s) = free.pop()
                {
                    for i in 0..per {
                        send.write_at(s * SECTION + i * stride, &f).expect("write");
                    }
                    let m = words([OP_SECTION, s as u32, (per * stride) as u32, per as u32]);
                    ch.request(&[&m], s as u64).expect("request");
                }
                let mut n = 0;
                for _ in 0..BUDGET {
                    match ch.recv(&mut rx).expect("recv") {
                        Some(Received::Completion { context, .. }) => {
                            free.push(context as usize);
                            n += per as u64;
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
                ch.end_batch().expect("end batch");
                n
            })
        }
        Dir::Rx => {
            let m = words([OP_GENERATE, t.len as u32, t.per_packet() as u32, 0]);
            ch.transact(&[&m], 0, &mut done, &mut rx, |_| {}, &mut host.wait())
                .expect("generate");
            let complete = [108u8, 0, 0, 0, 1, 0, 0, 0];
            // Completions waiting for ring space (the host may have more packets out than
            // the outbound ring holds completions).
            let mut owed = std::collections::VecDeque::new();
            drive(&mut host, *relid, stop, &mut || {
                let flush =
                    |ch: &mut Channel<'_, _, _, u64, REQUESTS>,
                     owed: &mut std::collections::VecDeque<u64>| {
                        while let Some(tid) = owed.front() {
                            match ch.send_completion(*tid, &[&complete]) {
                                Ok(()) => drop(owed.pop_front()),
                                Err(vmbus_guest::ChannelError::Full) => break,
                                Err(e) => panic!("complete: {e}"),
                            }
                        }
                    };
                flush(&mut ch, &mut owed);
                let mut n = 0;
                if owed.len() < BUDGET {
                    for _ in 0..BUDGET {
                        match ch.recv(&mut rx).expect("recv") {
                            Some(Received::Packet(p)) => {
                                if let PacketKind::TransferPages(tp) = p.kind {
                                    for r in tp.ranges() {
                                        let len = (r.byte_count as usize).min(private.len());
                                        recv.read_at(r.byte_offset as usize, &mut private[..len])
                                            .expect("read");
                                        black_box(&private[..len]);
                                        n += 1;
                                    }
                                    owed.push_back(p.transaction_id());
                                }
                            }
                            Some(_) => {}
                            None => break,
                        }
                    }
                }
                flush(&mut ch, &mut owed);
                ch.end_batch().expect("end batch");
                n
            })
        }
    };
    if t.dir == Dir::Tx {
        assert!(frames_in.load(Ordering::Relaxed) >= run.frames);
    }
    // Reap the sends in flight, then stop the receive traffic (its packets are completed).
    let mut w = host.wait();
    while ch.requests_in_flight() > 0 {
        while ch.recv(&mut rx).expect("recv").is_some() {}
        ch.end_batch().expect("end batch");
        w.wait().expect("sends in flight completed");
    }
    drop(w);
    let stop_gen = words([OP_GENERATE, 0, 0, 0]);
    ch.transact(
        &[&stop_gen],
        0,
        &mut done,
        &mut rx,
        |_| {},
        &mut host.wait(),
    )
    .expect("stop");
    let mut w = host.wait();
    assert_eq!(send.release(&mut w), Released::Freed);
    assert_eq!(recv.release(&mut w), Released::Freed);
    assert_eq!(ch.close(&mut w), Released::Freed);
    drop(w);
    host.finish();
    run
}

fn run(v: Variant, threaded: bool, stop: Stop) -> Run {
    if v.raw {
        run_raw(v.traffic, threaded, stop)
    } else {
        run_netvsc(v.traffic, threaded, stop)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Guest instructions inside [`insns_guest_turn`] in one single-threaded run of `frames`.
fn callgrind(v: Variant, frames: u64) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let out = std::env::temp_dir().join(format!(
        "netvsc-bench-{}-{}-{frames}.callgrind",
        std::process::id(),
        v.key()
    ));
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--toggle-collect=*insns_guest_turn*")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .env(INSNS_ENV, format!("{},{frames}", v.key()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    let text = std::fs::read_to_string(&out).ok();
    let _ = std::fs::remove_file(&out);
    if !status.success() {
        return None;
    }
    text?
        .lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|n| n.trim().parse().ok())
}

fn insns_per_frame(v: Variant) -> Option<f64> {
    const SHORT: u64 = 2_000;
    const LONG: u64 = 6_000;
    let a = callgrind(v, SHORT)?;
    let b = callgrind(v, LONG)?;
    Some(b.saturating_sub(a) as f64 / (LONG - SHORT) as f64)
}

fn main() {
    if let Ok(spec) = std::env::var(INSNS_ENV) {
        let mut it = spec.split(',');
        let v = it
            .next()
            .and_then(|k| k.parse().ok())
            .and_then(Variant::from_key);
        let n = it.next().and_then(|n| n.parse().ok());
        let (Some(v), Some(n)) = (v, n) else {
            eprintln!("bad {INSNS_ENV}={spec}");
            std::process::exit(2);
        };
        let r = run(v, false, Stop::Frames(n));
        println!("{} frames", r.frames);
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run briefly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = if quick {
        1
    } else {
        env("NETVSC_BENCH_ROUNDS", 5).max(1) as usize
    };
    let dur = Duration::from_millis(if quick {
        10
    } else {
        env("NETVSC_BENCH_MS", 120)
    });
    let total = Instant::now();
    let variants: Vec<Variant> = TRAFFIC
        .iter()
        .flat_map(|&traffic| [false, true].map(|raw| Variant { traffic, raw }))
        .collect();
    println!(
        "netvsc benchmark: {rounds} interleaved rounds of {} ms per variant; host: MockVmbusHost on its own thread, reading a ring when signalled; guest: NIC polled in a loop, {REQUESTS} requests in flight ({} bytes), {BUDGET} packets per poll",
        dur.as_millis(),
        size_of::<Nic<'static, SynicTransport<MockVp>, MockHal, REQUESTS>>()
    );
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        for k in 0..variants.len() {
            let i = (k + round) % variants.len();
            runs[i].push(run(variants[i], true, Stop::Time(dur)));
        }
    }
    let insns = !quick && env("NETVSC_BENCH_INSNS", 1) != 0;
    println!(
        "\n{:<18} {:>12} {:>12} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "traffic",
        "netvsc fr/s",
        "raw fr/s",
        "x raw",
        "g>h/fr",
        "h>g/fr",
        "raw g>h",
        "raw h>g",
        "insn/fr",
        "raw insn",
        "stalls"
    );
    for (ti, t) in TRAFFIC.iter().enumerate() {
        let (nv, raw) = (&runs[ti * 2], &runs[ti * 2 + 1]);
        let rate = |r: &[Run]| median(&mut r.iter().map(Run::rate).collect::<Vec<_>>());
        let mut ratio: Vec<f64> = nv
            .iter()
            .zip(raw)
            .map(|(a, b)| a.rate() / b.rate())
            .collect();
        let per = |r: &[Run], f: fn(&Run) -> u64| {
            let frames: u64 = r.iter().map(|x| x.frames).sum::<u64>().max(1);
            r.iter().map(f).sum::<u64>() as f64 / frames as f64
        };
        let ins = |raw| {
            if insns {
                insns_per_frame(Variant { traffic: *t, raw })
                    .map_or_else(|| "n/a".to_string(), |x| format!("{x:.0}"))
            } else {
                "-".to_string()
            }
        };
        println!(
            "{:<18} {:>12.0} {:>12.0} {:>7.3} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9} {:>9} {:>6}",
            t.name(),
            rate(nv),
            rate(raw),
            median(&mut ratio),
            per(nv, |r| r.to_host),
            per(nv, |r| r.to_guest),
            per(raw, |r| r.to_host),
            per(raw, |r| r.to_guest),
            ins(false),
            ins(true),
            nv.iter().chain(raw).map(|r| r.stalls).sum::<u64>(),
        );
    }
    println!(
        "\nx raw = median of per-round ratios netvsc / raw; g>h, h>g = guest->host and host->guest signals per frame;"
    );
    println!(
        "insn/fr = guest instructions per frame (callgrind, single-threaded loop, (I(6000) - I(2000)) / 4000);"
    );
    println!(
        "packed = frames per send section as fit (64 B: 8, 1514 B: 3) / 8 per transfer-page packet, 1/pkt = one each;"
    );
    println!("stalls = lost wakeups recovered by making the mock host read its rings.");
    println!("total runtime {:.1} s", total.elapsed().as_secs_f64());
}
