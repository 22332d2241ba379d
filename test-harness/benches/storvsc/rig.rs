//! The benchmark's machinery: a mock VM with one device, the host on its own thread (timed
//! runs) or stepped between guest turns (instruction counts), and the two guest loops — the
//! raw ring to [`DataEchoDevice`] and storvsc to the storage VSP.

use std::cell::RefCell;
use std::hint::black_box;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use storvsc::controller::{ControllerOptions, RING_PAGES, StorvscController};
use storvsc::queue::Done;
use storvsc::request::LunAddress;
use test_harness::guest::boot_vp;
use test_harness::hv::{HostPreset, MockConfig, MockHal, MockHypervisor, MockVp};
use test_harness::storage::{Lun, SCSI_CLASS, StorageVsp, VspConfig};
use test_harness::vmbus::{
    DATA_ECHO_READ, DATA_ECHO_WRITE, DataEchoDevice, DeviceOffer, HostRelease, MockVmbusHost,
    ThreadedHost, YIELD_AFTER,
};
use vmbus_guest::protocol::Guid;
use vmbus_guest::{
    BoundedWait, Channel, ChannelConfig, ConnectionConfig, Dma, Hal, Received, Released,
    SynicTransport, Vmbus,
};

type Guest = Vmbus<SynicTransport<MockVp>, MockHal>;

const INSTANCE: Guid = Guid::from_str_const("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");
const ECHO_CLASS: Guid = Guid::from_str_const("5f2c4a1e-8d3b-4c6a-9e7f-0a1b2c3d4e5f");
/// Bytes per I/O.
pub const IO: usize = 4096;
const BLOCK: usize = 512;
/// Disk size in blocks (32 MiB): random 4 KiB-aligned offsets within it.
pub const DISK_BLOCKS: u64 = 64 * 1024;
/// No completion for this long = a lost wakeup.
const STALL: Duration = Duration::from_millis(10);
/// Packets one guest poll may take.
const POLL_BUDGET: usize = 64;
/// The controller's queue depth (the largest depth measured).
const DEPTH: usize = 32;

/// How the two sides find work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The host reads every ring on every step and the guest polls every channel.
    Poll,
    /// The host reads a ring when the guest signals it; the guest drains the channels
    /// `Vmbus::handle_interrupt` names (spinning on the flags; no real interrupt).
    Intr,
}

/// What one run measured.
#[derive(Default, Clone, Copy, Debug)]
pub struct Run {
    pub ops: u64,
    pub secs: f64,
    /// Guest→host signals (SignalEvent / monitor bits) counted by the host.
    pub to_host: u64,
    /// Host→guest signals (event flags) counted by the host.
    pub to_guest: u64,
    /// Times nothing ended for [`STALL`] and the host was made to read every ring.
    pub stalls: u64,
    /// Times the host thread slept (idle past its spin window).
    pub sleeps: u64,
}

impl Run {
    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

/// How long a run lasts.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    Time(Duration),
    Ios(u64),
}

/// xorshift64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The guest's work between two host steps, a separate symbol for callgrind.
#[inline(never)]
pub fn insns_guest_turn<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// One host step, a separate symbol for callgrind.
#[inline(never)]
pub fn insns_host_step<R>(f: impl FnOnce() -> R) -> R {
    f()
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

    /// What a blocked guest does between two looks: sleep briefly (the thread steps), or
    /// step the host.
    fn idle(&mut self) {
        match self {
            Self::Threaded(_) => std::thread::sleep(Duration::from_micros(10)),
            Self::Stepped(h) => {
                h.step();
            }
        }
    }

    /// After a guest turn: a host step, or nothing (the thread steps).
    fn after_turn(&mut self) {
        if let Self::Stepped(h) = self {
            insns_host_step(|| h.step());
        }
    }

    /// Recovers a lost wakeup (none is expected): the host reads every ring once.
    fn kick(&mut self, mode: Mode) {
        self.with(|h| {
            h.set_poll_rings(true);
            h.step();
            h.set_poll_rings(mode == Mode::Poll);
        });
    }

    fn sleeps(&self) -> u64 {
        match self {
            Self::Threaded(t) => t.sleeps(),
            Self::Stepped(_) => 0,
        }
    }
}

/// A mock VM whose host offers one device.
struct Vm {
    hv: MockHypervisor,
    guest: Guest,
    relid: u32,
}

/// A mock VM with the raw ring's device (`raw`) or a storage VSP with one in-memory LUN.
fn vm(mode: Mode, raw: bool) -> (Vm, MockVmbusHost) {
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_memory_bytes(48 << 20));
    let vp = boot_vp(&hv, 0).expect("boot VP");
    let mut host = MockVmbusHost::new(hv.clone(), HostRelease::Ws2022);
    host.set_poll_rings(mode == Mode::Poll);
    let relid = if raw {
        host.add_device(
            DeviceOffer::new(ECHO_CLASS, INSTANCE),
            Box::new(DataEchoDevice::new(DISK_BLOCKS as usize * BLOCK)),
        )
    } else {
        let offer = DeviceOffer::new(SCSI_CLASS, INSTANCE);
        let vsp = StorageVsp::new(VspConfig::default()).with_offer(offer.clone());
        vsp.add_lun(0, Lun::memory(BLOCK as u32, DISK_BLOCKS));
        // Every page of the disk written once, as the echo device's: untouched pages of a
        // zeroed allocation are all the one shared zero page (reads always hit the cache,
        // first writes fault), which would measure the allocator, not the copy.
        assert!(vsp.write_lun(0, 0, &vec![0x5A; DISK_BLOCKS as usize * BLOCK]));
        host.add_device(offer, Box::new(vsp))
    };
    let transport = SynicTransport::for_current_vp(vp.hypercalls, vp.synic);
    let guest = Vmbus::new(transport, hv.hal(), ConnectionConfig::default());
    guest
        .connect(&mut BoundedWait::new(1000, || {
            host.step();
        }))
        .expect("connect");
    (Vm { hv, guest, relid }, host)
}

/// Host-visible I/O buffers from the HAL (caller memory sent GPA-direct without bouncing):
/// one page per request, freed on drop.
struct Pages {
    hal: MockHal,
    ptr: NonNull<u8>,
    n: usize,
}

impl Pages {
    fn new(hal: MockHal, n: usize) -> Self {
        let ptr = hal.alloc_pages(n).expect("pages");
        Self { hal, ptr, n }
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

/// What a guest turn is asked to do.
#[derive(Clone, Copy)]
struct Turn {
    /// Submit requests for every free buffer (false while draining at the end).
    submit: bool,
    /// Drain every channel without waiting for a flag (after a kick).
    force: bool,
}

/// A waiter for blocking guest calls (setup and teardown) on `host`.
fn wait(host: &RefCell<Host>) -> BoundedWait<impl FnMut() + '_> {
    BoundedWait::new(200_000, move || host.borrow_mut().idle())
}

/// Runs `turn` (returns the I/Os that ended and the requests still in flight) until `stop`,
/// then until nothing is in flight; counts signals of `relids` both ways up to the stop.
fn drive(
    host: &RefCell<Host>,
    relids: &[u32],
    mode: Mode,
    stop: Stop,
    turn: &mut dyn FnMut(Turn) -> (u64, usize),
) -> Run {
    let signals = |host: &mut Host| {
        host.with(|h| {
            relids.iter().fold((0, 0), |(a, b), &r| {
                (a + h.signal_count(r), b + h.guest_signal_count(r))
            })
        })
    };
    let host = &mut *host.borrow_mut();
    let (s0, g0) = signals(host);
    let sleeps0 = host.sleeps();
    let start = Instant::now();
    let mut last = Instant::now();
    let mut run = Run::default();
    let mut force = false;
    let mut iter = 0u64;
    let mut submit = true;
    loop {
        let (n, in_flight) = insns_guest_turn(|| turn(Turn { submit, force }));
        force = false;
        host.after_turn();
        if submit {
            run.ops += n;
        }
        if n > 0 {
            last = Instant::now();
        } else if matches!(host, Host::Threaded(_)) {
            let waited = last.elapsed();
            if waited > STALL {
                host.kick(mode);
                run.stalls += 1;
                force = true;
                last = Instant::now();
            } else if waited > YIELD_AFTER {
                // As the host does: a host thread sharing this core runs now.
                std::thread::yield_now();
            }
        }
        iter += 1;
        if submit {
            let done = match stop {
                Stop::Time(d) => iter.is_multiple_of(16) && start.elapsed() >= d,
                Stop::Ios(k) => run.ops >= k,
            };
            if done {
                submit = false;
                run.secs = start.elapsed().as_secs_f64();
                let (s1, g1) = signals(host);
                run.to_host = s1 - s0;
                run.to_guest = g1 - g0;
                run.sleeps = host.sleeps() - sleeps0;
            }
        } else if in_flight == 0 {
            break;
        }
    }
    run
}

/// The host of a fresh VM, on its own thread when `threaded`.
fn start(host: MockVmbusHost, threaded: bool) -> RefCell<Host> {
    RefCell::new(if threaded {
        Host::Threaded(host.spawn())
    } else {
        Host::Stepped(Box::new(host))
    })
}

/// Stops the host thread (if any) and checks the host saw no protocol violation.
fn finish(host: RefCell<Host>) {
    let host = match host.into_inner() {
        Host::Threaded(t) => t.stop(),
        Host::Stepped(h) => *h,
    };
    let errors = host.protocol_errors();
    assert!(errors.is_empty(), "{errors:?}");
}

/// The raw ring: GPA-direct packets of the same shape as storvsc's (a 64-byte in-band
/// payload, one 4 KiB range of caller memory) to [`DataEchoDevice`], which copies 4 KiB
/// between the page and a random place of its 32 MiB disk (into the page for a read, out of
/// it for a write) and completes each at once.
pub fn run_raw(mode: Mode, write: bool, depth: usize, stop: Stop, threaded: bool) -> Run {
    let (vm, host) = vm(mode, true);
    let host = start(host, threaded);
    let pages = Pages::new(vm.hv.hal(), depth);
    let config = ChannelConfig {
        outbound_pages: RING_PAGES,
        inbound_pages: RING_PAGES,
        ..ChannelConfig::default()
    };
    let mut ch: Channel<'_, _, _, u16, DEPTH> =
        Channel::open(&vm.guest, vm.relid, &config, &mut wait(&host)).expect("open");
    let mut payload = [0x5Au8; 64];
    payload[0] = if write {
        DATA_ECHO_WRITE
    } else {
        DATA_ECHO_READ
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let slots = DISK_BLOCKS / (IO / BLOCK) as u64;
    let mut rx = [0u8; 256];
    let mut free: Vec<u16> = (0..depth as u16).rev().collect();
    let guest = &vm.guest;
    let relid = vm.relid;
    let run = drive(&host, &[relid], mode, stop, &mut |t| {
        if t.submit && !free.is_empty() {
            // One send batch per burst: one publish, at most one signal.
            ch.begin_send_batch().expect("begin batch");
            while let Some(i) = free.pop() {
                let p = NonNull::new(pages.page(i.into())).expect("page");
                // SAFETY: page `i` is named by one request at a time and not touched until
                // its completion; `pages` outlives the channel.
                let dma = unsafe { Dma::from_raw(p, IO) }.expect("dma");
                let at = (rng.next() % slots) * IO as u64;
                payload[8..16].copy_from_slice(&at.to_le_bytes());
                if ch.request_dma(&[dma], &[&payload], i).is_err() {
                    free.push(i);
                    break;
                }
            }
            ch.end_send_batch().expect("end batch");
        }
        let drain = mode == Mode::Poll
            || t.force
            || guest.handle_interrupt().channels.take(relid)
            || ch.has_more();
        let mut n = 0;
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
                        free.push(context);
                        n += 1;
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
        (n, ch.requests_in_flight())
    });
    assert_eq!(ch.close(&mut wait(&host)), Released::Freed, "close");
    drop(pages);
    finish(host);
    run
}

/// storvsc: 4 KiB random reads or writes on caller pages through the controller.
pub fn run_storvsc(
    mode: Mode,
    write: bool,
    channels: u16,
    depth: usize,
    stop: Stop,
    threaded: bool,
) -> Run {
    let (vm, host) = vm(mode, false);
    let host = start(host, threaded);
    let pages = Pages::new(vm.hv.hal(), depth);
    // Room for the 5 channels and the queue depth of the largest configuration.
    let mut c = StorvscController::<_, _, _, 8, DEPTH>::open_with(
        &vm.guest,
        vm.relid,
        wait(&host),
        ControllerOptions {
            sub_channels: channels - 1,
            ..ControllerOptions::default()
        },
    )
    .expect("open controller");
    assert_eq!(c.channel_count(), usize::from(channels));
    let relids = c.channel_relids().to_vec();
    let lun = LunAddress::lun(0);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let slots = DISK_BLOCKS / (IO / BLOCK) as u64;
    let mut free: Vec<usize> = (0..depth).rev().collect();
    // The page of each queue slot in flight (a tag's slot index is below DEPTH).
    let mut page_of = [usize::MAX; DEPTH];
    let guest = &vm.guest;
    let run = drive(&host, &relids, mode, stop, &mut |t| {
        if t.submit && !free.is_empty() {
            // One burst from VP 0 (the guest thread's VP): it stays on VP 0's channel, which
            // publishes once and signals at most once.
            let mut burst = c.burst_on_vp(0);
            while let Some(i) = free.pop() {
                let lba = (rng.next() % slots) * (IO / BLOCK) as u64;
                let p = pages.page(i);
                // SAFETY: page `i` is handed to one request at a time and not touched until
                // its completion is reported; `pages` outlives the controller.
                let r = unsafe {
                    if write {
                        burst.submit_write(lun, lba, 8, std::slice::from_raw_parts(p, IO))
                    } else {
                        burst.submit_read(lun, lba, 8, std::slice::from_raw_parts_mut(p, IO))
                    }
                };
                match r {
                    Ok(tag) => page_of[slot_of(tag.raw())] = i,
                    Err(_) => {
                        free.push(i);
                        break;
                    }
                }
            }
            burst.finish().expect("end of burst");
        }
        let mut n = 0;
        let mut done = |d: Done| {
            d.result
                .and_then(|srb| srb.check(IO as u32))
                .expect("I/O failed");
            free.push(page_of[slot_of(d.tag.raw())]);
            n += 1;
        };
        let _more = match mode {
            Mode::Intr if !t.force => {
                let mut work = guest.handle_interrupt();
                c.poll_interrupt(&mut work, POLL_BUDGET, &mut done)
            }
            _ => c.poll(POLL_BUDGET, &mut done),
        };
        (n, c.in_flight())
    });
    assert_eq!(c.close(), Released::Freed, "close");
    drop(pages);
    finish(host);
    run
}

/// The queue-slot index of a storvsc tag (`Tag::raw`: slot + 1 in the low 32 bits).
fn slot_of(raw: u64) -> usize {
    (raw as u32 - 1) as usize
}
