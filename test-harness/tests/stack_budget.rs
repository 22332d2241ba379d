//! Sized for a kernel: the whole guest stack — the bus, the four integration services and a
//! disk — brought up and doing I/O on a thread with a small stack ([`STACK_RELEASE`]). The bus
//! is in a `static`, as a kernel keeps it (its interrupt handler needs it); every other guest
//! object is on that stack (the mock host, which is not part of the guest, lives on the heap).

use std::cell::RefCell;
use std::sync::OnceLock;

use ic_services::channel::{IcChannel, ic_channel_config};
use ic_services::heartbeat::Heartbeat;
use ic_services::kvp::Kvp;
use ic_services::shutdown::Shutdown;
use ic_services::timesync::TimeSync;
use storvsc::block::{BlockDevice, ScsiDisk};
use storvsc::controller::StorvscController;
use storvsc::request::LunAddress;
use test_harness::guest::boot_vp;
use test_harness::guest_ics::{
    HARNESS_GUEST_INFO, HeartbeatChannel, KvpChannel, ReferenceNowFn, ShutdownChannel,
    ShutdownPolicyFn, TimeSyncChannel,
};
use test_harness::hv::{HostPreset, MockConfig, MockHal, MockHypervisor, MockVp};
use test_harness::ic::{IcHost, IcHostConfig};
use test_harness::storage::{Lun, SCSI_CLASS, StorageVsp, VspConfig};
use test_harness::vmbus::{DeviceOffer, HostRelease, MockVmbusHost};
use vmbus_guest::protocol::Guid;
use vmbus_guest::{BoundedWait, ConnectionConfig, Released, SynicTransport, Vmbus};

type T = SynicTransport<MockVp>;
type Bus = Vmbus<T, MockHal>;
type Controller<'b, W> = StorvscController<'b, T, MockHal, W>;

/// The stack the whole guest stack runs on, optimized: the 64 KiB. Measured (bisect
/// with `STACK_KB=N`): it needs 55 KiB — 27 KiB of guest objects in this frame (four services
/// and the controller; the bus is in a static), and the deepest call chain, opening the KVP
/// service or the controller, about 25 KiB.
const STACK_RELEASE: usize = 64 * 1024;
/// Unoptimized builds keep every by-value move in its own stack slot: about three times as
/// much (it needs 195 KiB).
const STACK_DEBUG: usize = 256 * 1024;

fn stack() -> usize {
    if let Some(kb) = std::env::var("STACK_KB")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
    {
        return kb * 1024;
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "stack budget: unoptimized build, so the guest runs on {} KiB; the {} KiB budget \
             is checked by `cargo test --release -p test-harness --test stack_budget` (CI)",
            STACK_DEBUG / 1024,
            STACK_RELEASE / 1024
        );
        STACK_DEBUG
    } else {
        STACK_RELEASE
    }
}
const LIMIT: usize = 16 * 1024;

#[test]
fn user_held_types_fit_16_kib() {
    let sizes = [
        ("Vmbus", size_of::<Bus>()),
        (
            "Channel<'_, T, H> (default)",
            size_of::<vmbus_guest::Channel<'static, T, MockHal>>(),
        ),
        (
            "HeartbeatChannel",
            size_of::<HeartbeatChannel<'static, T, MockHal>>(),
        ),
        (
            "ShutdownChannel",
            size_of::<ShutdownChannel<'static, T, MockHal>>(),
        ),
        (
            "TimeSyncChannel",
            size_of::<TimeSyncChannel<'static, T, MockHal>>(),
        ),
        ("KvpChannel", size_of::<KvpChannel<'static, T, MockHal>>()),
        (
            "StorvscController",
            size_of::<Controller<'static, BoundedWait<fn()>>>(),
        ),
        (
            "ScsiDisk<&mut StorvscController>",
            size_of::<ScsiDisk<&mut Controller<'static, BoundedWait<fn()>>>>(),
        ),
    ];
    for (name, size) in sizes {
        println!("{name:<34} {size:>6} bytes");
        assert!(size <= LIMIT, "{name} is {size} bytes, over 16 KiB");
    }
}

/// The guest's devices, each in a slot filled and emptied by functions of their own, as
/// kernel init code would be split: each open's temporaries live in that function's frame,
/// gone once it returns, and only the devices themselves stay on the caller's stack.
struct Services<'b> {
    heartbeat: Option<HeartbeatChannel<'b, T, MockHal>>,
    shutdown: Option<ShutdownChannel<'b, T, MockHal>>,
    timesync: Option<TimeSyncChannel<'b, T, MockHal>>,
    kvp: Option<KvpChannel<'b, T, MockHal>>,
}

/// The bus, where a kernel keeps it: in a `static`, shared by every driver and by the
/// interrupt handler (`spin::Once` in a kernel; a `OnceLock` here).
static BUS: OnceLock<Bus> = OnceLock::new();

/// Builds the bus into [`BUS`]; the value passes through this frame only, gone once it
/// returns.
#[inline(never)]
fn install_bus(
    hv: &MockHypervisor,
    hypercalls: winhv::Hypercalls<MockVp>,
    synic: winhv::Synic,
) -> &'static Bus {
    BUS.get_or_init(|| {
        Vmbus::new(
            SynicTransport::for_current_vp(hypercalls, synic),
            hv.hal(),
            ConnectionConfig::default(),
        )
    })
}

/// Opens the four services, each built in its slot ([`IcChannel::open_in`]): no service is
/// ever moved, so none is ever copied onto the stack.
#[inline(never)]
fn open_services<'b>(bus: &'b Bus, w: &mut impl vmbus_guest::Wait, d: &mut Services<'b>) {
    let config = ic_channel_config();
    w.restart();
    IcChannel::open_in(&mut d.heartbeat, bus, None, &config, Heartbeat::new(), w)
        .expect("heartbeat");
    w.restart();
    let policy: ShutdownPolicyFn = Box::new(|_| true);
    IcChannel::open_in(
        &mut d.shutdown,
        bus,
        None,
        &config,
        Shutdown::new(policy),
        w,
    )
    .expect("shutdown");
    w.restart();
    let now: ReferenceNowFn = Box::new(|| 0);
    IcChannel::open_in(&mut d.timesync, bus, None, &config, TimeSync::new(now), w)
        .expect("time sync");
    open_kvp(bus, w, d);
}

#[inline(never)]
fn open_kvp<'b>(bus: &'b Bus, w: &mut impl vmbus_guest::Wait, d: &mut Services<'b>) {
    w.restart();
    let config = ic_channel_config();
    IcChannel::open_in(
        &mut d.kvp,
        bus,
        None,
        &config,
        Kvp::new(HARNESS_GUEST_INFO),
        w,
    )
    .expect("kvp");
}

#[inline(never)]
fn open_controller<'b, W: vmbus_guest::Wait>(
    bus: &'b Bus,
    relid: u32,
    w: W,
    slot: &mut Option<Controller<'b, W>>,
) {
    StorvscController::open_in(slot, bus, relid, w, Default::default()).expect("storvsc");
}

/// Answers what the host sent to the four services; returns how many requests.
#[inline(never)]
fn poll_services(d: &mut Services<'_>) -> usize {
    let mut answered = 0;
    if let Some(c) = d.heartbeat.as_mut() {
        answered += c.poll(|_| {}).expect("heartbeat poll").answered;
    }
    if let Some(c) = d.shutdown.as_mut() {
        answered += c.poll(|_| {}).expect("shutdown poll").answered;
    }
    if let Some(c) = d.timesync.as_mut() {
        answered += c.poll(|_| {}).expect("time sync poll").answered;
    }
    if let Some(c) = d.kvp.as_mut() {
        answered += c.poll(|_| {}).expect("kvp poll").answered;
    }
    answered
}

/// Closes everything; `Freed` only if every channel's memory came back.
#[inline(never)]
fn close_all<W: vmbus_guest::Wait>(
    controller: &mut Option<Controller<'_, W>>,
    d: &mut Services<'_>,
    w: &mut impl vmbus_guest::Wait,
) -> Released {
    let released = controller.take().map_or(Released::Leaked, |c| c.close());
    // Each service is closed where it lies: no copy of a channel and its buffer on the stack.
    w.restart();
    let heartbeat = IcChannel::close_in(&mut d.heartbeat, w);
    w.restart();
    let shutdown = IcChannel::close_in(&mut d.shutdown, w);
    w.restart();
    let timesync = IcChannel::close_in(&mut d.timesync, w);
    w.restart();
    let kvp = IcChannel::close_in(&mut d.kvp, w);
    for (name, r) in [
        ("heartbeat", heartbeat),
        ("shutdown", shutdown),
        ("time sync", timesync),
        ("kvp", kvp),
    ] {
        assert_eq!(r, Some(Released::Freed), "{name}");
    }
    released
}

#[test]
fn bus_ics_and_a_disk_run_on_a_small_stack() {
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_memory_bytes(32 << 20));
    let mut host = MockVmbusHost::new(hv.clone(), HostRelease::Ws2022);
    let ics = IcHost::add_to(&mut host, IcHostConfig::default());
    let vsp = StorageVsp::new(VspConfig::default());
    vsp.add_lun(0, Lun::memory(512, 4096));
    let disk_relid = host.add_device(
        DeviceOffer::new(
            SCSI_CLASS,
            Guid::from_str_const("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f"),
        ),
        Box::new(vsp.clone()),
    );
    // The host is test infrastructure: on the heap, shared by the guest's waiters.
    let host = Box::new(RefCell::new(host));
    let guest = std::thread::Builder::new()
        .stack_size(stack())
        .spawn(move || {
            let host = host;
            let step = || {
                host.borrow_mut().step();
            };
            let vp = boot_vp(&hv, 0).expect("boot");
            let bus = install_bus(&hv, vp.hypercalls, vp.synic);
            bus.connect(&mut BoundedWait::new(200, step))
                .expect("connect");
            let mut w = BoundedWait::new(500, step);
            let mut d = Services {
                heartbeat: None,
                shutdown: None,
                timesync: None,
                kvp: None,
            };
            let mut controller = None;
            open_services(bus, &mut w, &mut d);
            open_controller(
                bus,
                disk_relid,
                BoundedWait::new(500, step),
                &mut controller,
            );
            let ctl = controller.as_mut().expect("opened");
            let max = ctl.max_transfer_bytes();
            let mut answered = 0;
            let mut disk = ScsiDisk::open(ctl, LunAddress::lun(0), max).expect("disk");
            let mut block = [0u8; 512];
            for round in 0..8u8 {
                block.fill(round);
                disk.write_blocks(u64::from(round), &block).expect("write");
                let mut back = [0u8; 512];
                disk.read_blocks(u64::from(round), &mut back).expect("read");
                assert_eq!(back, block);
                // The services are answered in the same loop as the disk I/O.
                ics.heartbeat.beat_now();
                for _ in 0..4 {
                    host.borrow_mut().step();
                    bus.poll();
                    answered += poll_services(&mut d);
                }
            }
            disk.flush().expect("flush");
            let released = close_all(&mut controller, &mut d, &mut w);
            (answered, released, ics.heartbeat.beats())
        })
        .expect("spawn");
    let (answered, released, beats) = guest.join().expect("the guest ran within its stack");
    assert!(answered >= 8, "services answered {answered} requests");
    assert!(beats >= 8, "{beats} heartbeats");
    assert_eq!(released, Released::Freed);
}
