//! storvsc IOPS benchmark: 4 KiB random reads and writes at queue depth 1 and 32 against the
//! mock storage VSP's in-memory disk, next to a raw-ring baseline measured in the same run:
//! the same VMBus channel type and ring size carrying packets of the same shape (a 64-byte
//! in-band payload — the size of a WIN8+ EXECUTE_SRB — plus one 4 KiB GPA-direct range) to the
//! mock's echo device, which completes each at once with no SCSI handling.
//!
//! `cargo bench -p test-harness --bench storvsc` (env: `STORVSC_BENCH_ROUNDS`, default 7;
//! `STORVSC_BENCH_MS`, default 150 ms per run). Host and guest run on their own threads
//! (`MockVmbusHost::spawn`). Two modes:
//!
//! - `poll`: the host reads every ring on every step (`set_poll_rings(true)`) and the guest
//!   polls every channel in a loop; this is the throughput table.
//! - `intr`: the host reads a ring only when the guest signals it, and the guest drains only
//!   the channels named in the work `Vmbus::handle_interrupt` returns (`poll_interrupt`; the
//!   guest spins on the flags, the mock delivers no real interrupt). Signals per I/O come from
//!   this mode.
//!
//! Variants of one configuration are interleaved round by round (order rotated each round)
//! and the ratio column is the median of the per-round ratios, because the machine's vCPUs
//! change speed within minutes; absolute rates are medians, for context only.

use std::hint::black_box;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use storvsc::controller::{ControllerOptions, StorvscController};
use storvsc::queue::{Done, Tag};
use storvsc::request::LunAddress;
use test_harness::guest::boot_vp;
use test_harness::hv::{HostPreset, MockConfig, MockHal, MockHypervisor, MockVp};
use test_harness::storage::{Lun, SCSI_CLASS, StorageVsp, VspConfig};
use test_harness::vmbus::{DeviceOffer, EchoDevice, HostRelease, MockVmbusHost, ThreadedHost};
use vmbus_guest::protocol::Guid;
use vmbus_guest::{
    BoundedWait, Channel, ChannelConfig, ConnectionConfig, Hal, HostBuffer, Received, Released,
    SynicTransport, Vmbus,
};

type Guest = Vmbus<SynicTransport<MockVp>, MockHal>;

const INSTANCE: Guid = Guid::from_str_const("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");
const ECHO_CLASS: Guid = Guid::from_str_const("5f2c4a1e-8d3b-4c6a-9e7f-0a1b2c3d4e5f");
const IO: usize = 4096;
const BLOCK: usize = 512;
/// Disk size in blocks (32 MiB): random 4 KiB-aligned offsets within it.
const DISK_BLOCKS: u64 = 64 * 1024;
/// No completion for this long in interrupt-driven mode = a lost wakeup.
const STALL: Duration = Duration::from_millis(10);
/// Packets one guest poll may take.
const POLL_BUDGET: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Poll,
    Intr,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    /// Raw ring to the echo device.
    Raw,
    /// storvsc with `channels` channels (1 = primary only) and a spill depth (0 = every
    /// request to the least-loaded channel).
    Stor {
        write: bool,
        channels: u16,
        spill: usize,
    },
}

impl Variant {
    fn name(self) -> String {
        match self {
            Self::Raw => "raw ring (echo)".into(),
            Self::Stor {
                write,
                channels,
                spill,
            } => format!(
                "storvsc {} {}ch{}",
                if write { "write" } else { "read " },
                channels,
                if spill > 0 {
                    format!(" spill{spill}")
                } else {
                    String::new()
                }
            ),
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Run {
    ops: u64,
    secs: f64,
    /// Guest→host signals (SignalEvent / monitor bits) counted by the host.
    to_host: u64,
    /// Host→guest signals (event flags) counted by the host.
    to_guest: u64,
    /// Times nothing completed for [`STALL`] and the host was made to read every ring and
    /// the guest drained without a flag (a lost wakeup, see [`kick`]).
    stalls: u64,
}

impl Run {
    fn iops(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

struct Vm {
    _hv: MockHypervisor,
    host: ThreadedHost,
    guest: Guest,
    relid: u32,
    hal: MockHal,
}

fn vm(mode: Mode, raw: bool) -> Vm {
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_memory_bytes(48 << 20));
    let vp = boot_vp(&hv, 0).expect("boot VP");
    let mut host = MockVmbusHost::new(hv.clone(), HostRelease::Ws2022);
    host.set_poll_rings(mode == Mode::Poll);
    let relid = if raw {
        host.add_device(DeviceOffer::new(ECHO_CLASS, INSTANCE), Box::new(EchoDevice))
    } else {
        let offer = DeviceOffer::new(SCSI_CLASS, INSTANCE);
        let vsp = StorageVsp::new(VspConfig::default()).with_offer(offer.clone());
        vsp.add_lun(0, Lun::memory(BLOCK as u32, DISK_BLOCKS));
        host.add_device(offer, Box::new(vsp))
    };
    let host = host.spawn();
    let transport = SynicTransport::for_current_vp(vp.hypercalls, vp.synic);
    let guest = Vmbus::new(transport, hv.hal(), ConnectionConfig::default());
    guest.connect(&mut setup_wait()).expect("connect");
    Vm {
        hal: hv.hal(),
        _hv: hv,
        host,
        guest,
        relid,
    }
}

/// Waits for the threaded host during setup (up to ~2 s per step).
fn setup_wait() -> BoundedWait<impl FnMut()> {
    BoundedWait::new(100_000, || std::thread::sleep(Duration::from_micros(20)))
}

/// Host-visible I/O buffers from the HAL (caller memory the controller sends GPA-direct
/// without bouncing): one page per request, freed on drop.
struct Pages {
    hal: MockHal,
    ptr: NonNull<u8>,
    n: usize,
}

impl Pages {
    fn new(hal: &MockHal, n: usize) -> Self {
        Self {
            hal: hal.clone(),
            ptr: hal.alloc_pages(n).expect("pages"),
            n,
        }
    }
    fn page(&self, i: usize) -> *mut u8 {
        assert!(i < self.n);
        self.ptr.as_ptr().wrapping_add(i * IO)
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: allocated by this HAL with `n` pages; the channels naming them are closed.
        unsafe { self.hal.free_pages(self.ptr, self.n) };
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Recovers from a lost wakeup (a watchdog: none is expected since the mock host re-checks
/// its rings after publishing a read index): makes the host read every ring once, then
/// restores `mode`'s ring polling; the caller also drains its inbound ring(s) without waiting
/// for a flag. Counted as a stall.
fn kick(host: &ThreadedHost, mode: Mode) {
    host.with_host(|h| {
        h.set_poll_rings(true);
        h.step();
        h.set_poll_rings(mode == Mode::Poll);
    });
}

fn signals(host: &ThreadedHost, relids: &[u32]) -> (u64, u64) {
    host.with_host(|h| {
        relids.iter().fold((0, 0), |(a, b), &r| {
            (a + h.signal_count(r), b + h.guest_signal_count(r))
        })
    })
}

fn run_storvsc(
    mode: Mode,
    write: bool,
    channels: u16,
    spill: usize,
    depth: usize,
    dur: Duration,
) -> Run {
    let vm = vm(mode, false);
    let pages = Pages::new(&vm.hal, depth);
    // Room for the 5 channels and the queue depth of the largest configuration.
    let mut c = StorvscController::<_, _, _, 8, 32>::open_with(
        &vm.guest,
        vm.relid,
        setup_wait(),
        ControllerOptions {
            sub_channels: channels - 1,
            spill_depth: spill,
            ..ControllerOptions::default()
        },
    )
    .expect("open controller");
    assert_eq!(c.channel_count(), usize::from(channels));
    let relids = c.channel_relids().to_vec();
    let lun = LunAddress::lun(0);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let slots = DISK_BLOCKS / (IO / BLOCK) as u64;
    let mut tags: Vec<Option<Tag>> = vec![None; depth];
    let mut free: Vec<usize> = (0..depth).rev().collect();
    let mut done: Vec<Tag> = Vec::with_capacity(depth);
    let mut last = Instant::now();
    let mut stalls = 0u64;
    let mut ops = 0u64;
    let (s0, g0) = signals(&vm.host, &relids);
    let start = Instant::now();
    let mut end = None;
    let mut iter = 0u64;
    loop {
        if end.is_none() {
            while let Some(i) = free.pop() {
                let lba = (rng.next() % slots) * (IO / BLOCK) as u64;
                let p = pages.page(i);
                // SAFETY: page `i` is handed to one request at a time and not touched until
                // its completion is reported; `pages` outlives the controller.
                let r = unsafe {
                    if write {
                        c.submit_write(lun, lba, 8, std::slice::from_raw_parts(p, IO))
                    } else {
                        c.submit_read(lun, lba, 8, std::slice::from_raw_parts_mut(p, IO))
                    }
                };
                match r {
                    Ok(t) => tags[i] = Some(t),
                    Err(_) => {
                        free.push(i);
                        break;
                    }
                }
            }
        }
        let polled = |d: Done| {
            d.result
                .and_then(|srb| srb.check(IO as u32))
                .expect("I/O failed");
            done.push(d.tag);
        };
        let _more = match mode {
            Mode::Poll => c.poll(POLL_BUDGET, polled),
            Mode::Intr => {
                let mut work = vm.guest.handle_interrupt();
                c.poll_interrupt(&mut work, POLL_BUDGET, polled)
            }
        };
        if !done.is_empty() {
            last = Instant::now();
        } else if last.elapsed() > STALL {
            // A lost wakeup in either direction: make the host read, and drain unflagged.
            kick(&vm.host, mode);
            stalls += 1;
            last = Instant::now();
            let _more = c.poll(POLL_BUDGET, |d| {
                d.result
                    .and_then(|srb| srb.check(IO as u32))
                    .expect("I/O failed");
                done.push(d.tag);
            });
        }
        for t in done.drain(..) {
            if let Some(i) = tags.iter().position(|x| *x == Some(t)) {
                tags[i] = None;
                free.push(i);
                ops += 1;
            }
        }
        iter += 1;
        if end.is_none() && iter.is_multiple_of(16) && start.elapsed() >= dur {
            end = Some((
                ops,
                start.elapsed().as_secs_f64(),
                signals(&vm.host, &relids),
            ));
        }
        if end.is_some() && c.in_flight() == 0 {
            break;
        }
    }
    let (ops, secs, (s1, g1)) = end.unwrap_or_default();
    assert_eq!(c.close(), Released::Freed, "close");
    drop(pages);
    Run {
        ops,
        secs,
        to_host: s1 - s0,
        to_guest: g1 - g0,
        stalls,
    }
}

fn run_raw(mode: Mode, depth: usize, dur: Duration) -> Run {
    let vm = vm(mode, true);
    let pages = HostBuffer::new(&vm.guest, depth).expect("pages");
    let config = ChannelConfig {
        outbound_pages: storvsc::controller::RING_PAGES,
        inbound_pages: storvsc::controller::RING_PAGES,
        ..ChannelConfig::default()
    };
    let mut ch: Channel<'_, _, _, u64, 64> =
        Channel::open(&vm.guest, vm.relid, &config, &mut setup_wait()).expect("open");
    let relids = [vm.relid];
    // A 64-byte in-band payload: the size of a WIN8+ EXECUTE_SRB vstor packet.
    let payload = [0x5Au8; 64];
    let mut rx = [0u8; 256];
    let mut free: Vec<usize> = (0..depth).rev().collect();
    let mut done: Vec<u64> = Vec::with_capacity(depth);
    let mut in_flight = 0usize;
    let mut last = Instant::now();
    let mut stalls = 0u64;
    let mut ops = 0u64;
    let (s0, g0) = signals(&vm.host, &relids);
    let start = Instant::now();
    let mut end = None;
    let mut iter = 0u64;
    loop {
        if end.is_none() {
            while let Some(i) = free.pop() {
                // Page `i` of a bus host buffer, named by one request at a time.
                let dma = pages.dma(i * IO, IO).expect("page");
                match ch.request_dma(&[dma], &[&payload], i as u64) {
                    Ok(_) => in_flight += 1,
                    Err(_) => {
                        free.push(i);
                        break;
                    }
                }
            }
        }
        let mut drain = true;
        if mode == Mode::Intr {
            drain = vm.guest.handle_interrupt().channels.take(vm.relid) || ch.has_more();
        }
        if !drain && last.elapsed() > STALL {
            // A lost wakeup in either direction: make the host read, and drain unflagged.
            kick(&vm.host, mode);
            stalls += 1;
            last = Instant::now();
            drain = true;
        }
        if drain {
            let mut budget = POLL_BUDGET;
            loop {
                if budget == 0 {
                    ch.yield_batch().expect("yield");
                    break;
                }
                match ch.recv(&mut rx).expect("recv") {
                    Some(Received::Completion {
                        context, packet, ..
                    }) => {
                        black_box(packet.payload().len());
                        done.push(context);
                        budget -= 1;
                    }
                    Some(_) => budget -= 1,
                    None => {
                        if !ch.end_batch().expect("end batch") {
                            break;
                        }
                    }
                }
            }
        }
        if !done.is_empty() {
            last = Instant::now();
        }
        for i in done.drain(..) {
            free.push(i as usize);
            in_flight -= 1;
            ops += 1;
        }
        iter += 1;
        if end.is_none() && iter.is_multiple_of(16) && start.elapsed() >= dur {
            end = Some((
                ops,
                start.elapsed().as_secs_f64(),
                signals(&vm.host, &relids),
            ));
        }
        if end.is_some() && in_flight == 0 {
            break;
        }
    }
    let (ops, secs, (s1, g1)) = end.unwrap_or_default();
    assert_eq!(ch.close(&mut setup_wait()), Released::Freed, "close");
    assert_eq!(pages.release(&mut setup_wait()), Released::Freed, "pages");
    Run {
        ops,
        secs,
        to_host: s1 - s0,
        to_guest: g1 - g0,
        stalls,
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

fn main() {
    let rounds = env("STORVSC_BENCH_ROUNDS", 7).max(1) as usize;
    let dur = Duration::from_millis(env("STORVSC_BENCH_MS", 150));
    let stor = |write, channels, spill| Variant::Stor {
        write,
        channels,
        spill,
    };
    let variants = [
        Variant::Raw,
        stor(false, 1, 0),
        stor(true, 1, 0),
        stor(false, 5, 0),
        stor(true, 5, 0),
        stor(false, 5, 16),
        stor(true, 5, 16),
    ];
    println!(
        "storvsc benchmark: 4 KiB random I/O on a {} MiB in-memory LUN, {rounds} interleaved rounds of {} ms per variant",
        (DISK_BLOCKS * BLOCK as u64) >> 20,
        dur.as_millis()
    );
    println!("host: MockVmbusHost::spawn() (own thread); guest: this thread");
    println!("x raw = median of per-round ratios to the raw ring at the same mode and depth\n");
    println!(
        "{:<5} {:>3} {:<28} {:>10} {:>8} {:>10} {:>10} {:>7}",
        "mode", "QD", "variant", "IOPS", "x raw", "g->h/IO", "h->g/IO", "stalls"
    );
    let total = Instant::now();
    for mode in [Mode::Poll, Mode::Intr] {
        for depth in [1usize, 32] {
            let mut runs: Vec<Vec<Run>> = vec![Vec::new(); variants.len()];
            for round in 0..rounds {
                for k in 0..variants.len() {
                    let i = (k + round) % variants.len();
                    if std::env::var("STORVSC_BENCH_DEBUG").is_ok() {
                        eprintln!("{mode:?} QD{depth} {:?}", variants[i]);
                    }
                    let run = match variants[i] {
                        Variant::Raw => run_raw(mode, depth, dur),
                        Variant::Stor {
                            write,
                            channels,
                            spill,
                        } => run_storvsc(mode, write, channels, spill, depth, dur),
                    };
                    runs[i].push(run);
                }
            }
            for (i, v) in variants.iter().enumerate() {
                let mut iops: Vec<f64> = runs[i].iter().map(Run::iops).collect();
                let mut ratio: Vec<f64> = runs[i]
                    .iter()
                    .zip(&runs[0])
                    .map(|(a, b)| a.iops() / b.iops())
                    .collect();
                let ops: u64 = runs[i].iter().map(|r| r.ops).sum::<u64>().max(1);
                let to_host: u64 = runs[i].iter().map(|r| r.to_host).sum();
                let to_guest: u64 = runs[i].iter().map(|r| r.to_guest).sum();
                let stalls: u64 = runs[i].iter().map(|r| r.stalls).sum();
                println!(
                    "{:<5} {:>3} {:<28} {:>10.0} {:>8.3} {:>10.3} {:>10.3} {:>7}",
                    format!("{mode:?}").to_lowercase(),
                    depth,
                    v.name(),
                    median(&mut iops),
                    median(&mut ratio),
                    to_host as f64 / ops as f64,
                    to_guest as f64 / ops as f64,
                    stalls,
                );
            }
            println!();
        }
    }
    println!("g->h/IO = guest->host signals per I/O, h->g/IO = host->guest signals per I/O,");
    println!("both counted by the mock host over all runs of the variant (all its channels);");
    println!("spill16 = a request stays on the previous request's channel below 16 in flight;");
    println!(
        "stalls = lost wakeups recovered by making the mock host read its rings (see `kick`)."
    );
    println!("total runtime {:.1} s", total.elapsed().as_secs_f64());
}
