//! Queued storvsc I/O against the mock storage VSP: many requests in flight, spread over the
//! primary channel and the sub-channels obtained with CREATE_SUB_CHANNELS, GPA-direct on
//! host-visible buffers and bounced otherwise, back-pressure, and every request in flight
//! ending with an error on rescind or close.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::rc::Rc;

use storvsc::StorError;
use storvsc::controller::{ControllerOptions, StorvscController};
use storvsc::queue::{IoResult, Tag};
use storvsc::request::LunAddress;
use test_harness::guest::boot_vp;
use test_harness::hv::{HostPreset, MockConfig, MockHal, MockHypervisor, MockVp};
use test_harness::storage::{Lun, SCSI_CLASS, StorageVsp, VspConfig};
use test_harness::vmbus::{DeviceOffer, HostRelease, MockVmbusHost};
use vmbus_guest::protocol::Guid;
use vmbus_guest::{BoundedWait, Connection, ConnectionConfig, Hal, SynicTransport};

type Guest = Connection<SynicTransport<MockVp>, MockHal>;

const INSTANCE: Guid = Guid::from_str_const("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");
const BS: usize = 512;

struct Rig {
    hv: MockHypervisor,
    host: Rc<RefCell<MockVmbusHost>>,
    guest: Guest,
    vsp: StorageVsp,
    relid: u32,
}

fn rig(config: VspConfig, blocks: u64) -> Rig {
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_memory_bytes(64 << 20));
    let vp = boot_vp(&hv, 0).unwrap();
    let mut host = MockVmbusHost::new(hv.clone(), HostRelease::Ws2022);
    let offer = DeviceOffer::new(SCSI_CLASS, INSTANCE);
    let vsp = StorageVsp::new(config).with_offer(offer.clone());
    vsp.add_lun(0, Lun::memory(BS as u32, blocks));
    let relid = host.add_device(offer, Box::new(vsp.clone()));
    let transport = SynicTransport::for_current_vp(vp.hypercalls, vp.synic);
    let mut guest = Connection::new(transport, hv.hal(), ConnectionConfig::default());
    guest
        .connect(&mut BoundedWait::new(200, || {
            host.step();
        }))
        .unwrap();
    Rig {
        hv,
        host: Rc::new(RefCell::new(host)),
        guest,
        vsp,
        relid,
    }
}

fn stepper(host: &Rc<RefCell<MockVmbusHost>>, budget: u32) -> BoundedWait<impl FnMut()> {
    let host = host.clone();
    BoundedWait::new(budget, move || {
        host.borrow_mut().step();
    })
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Host-visible pages from the HAL (GPA-direct on them), freed on drop.
struct HalBuf {
    hal: MockHal,
    ptr: NonNull<u8>,
    pages: usize,
}

impl HalBuf {
    fn new(hal: &MockHal, pages: usize) -> Self {
        Self {
            hal: hal.clone(),
            ptr: hal.alloc_pages(pages).unwrap(),
            pages,
        }
    }
    fn slice_mut(&mut self) -> &mut [u8] {
        // SAFETY: `pages` pages allocated above, owned by this value.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.pages * 4096) }
    }
}

impl Drop for HalBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by this HAL with these pages; no request names them any more.
        unsafe { self.hal.free_pages(self.ptr, self.pages) };
    }
}

/// Polls (stepping the host) until `n` completions were reported.
fn collect<T, H, W>(
    c: &mut StorvscController<'_, T, H, W>,
    host: &Rc<RefCell<MockVmbusHost>>,
    n: usize,
) -> HashMap<Tag, IoResult>
where
    T: vmbus_guest::Transport,
    H: Hal,
    W: vmbus_guest::Wait,
{
    let mut done = HashMap::new();
    for _ in 0..10_000 {
        c.poll(|tag, r| {
            assert!(done.insert(tag, r).is_none(), "tag reported twice");
        });
        if done.len() >= n {
            break;
        }
        host.borrow_mut().step();
    }
    assert_eq!(done.len(), n, "every request was reported");
    done
}

#[test]
fn queued_io_spreads_over_sub_channels_and_moves_the_right_data() {
    let mut rig = rig(VspConfig::default(), 4096);
    let waiter = stepper(&rig.host, 1_000);
    let hal = rig.hv.hal();
    let mut c = StorvscController::open(&mut rig.guest, rig.relid, waiter).unwrap();
    assert_eq!(c.channel_count(), 5, "primary + the 4 sub-channels allowed");
    assert_eq!(rig.vsp.sub_channels_created(), 4);
    let lun = LunAddress::lun(0);

    // 32 writes in flight: even ones from host-visible pages (GPA-direct), odd ones from
    // ordinary memory (bounced), 8 blocks each at scattered LBAs.
    let n = 32;
    let lba = |i: usize| ((i * 37) % 64 * 8) as u64;
    let mut hal_bufs: Vec<HalBuf> = (0..n / 2).map(|_| HalBuf::new(&hal, 1)).collect();
    let mut vec_bufs: Vec<Vec<u8>> = (0..n / 2).map(|_| vec![0u8; 4096]).collect();
    let mut tags = Vec::new();
    for i in 0..n {
        let data = pattern(4096, i as u8);
        let buf: &mut [u8] = if i % 2 == 0 {
            hal_bufs[i / 2].slice_mut()
        } else {
            &mut vec_bufs[i / 2]
        };
        buf.copy_from_slice(&data);
        // SAFETY: the buffers are not touched until every tag is reported below.
        tags.push(unsafe { c.submit_write(lun, lba(i), 8, buf) }.unwrap());
    }
    assert_eq!(c.in_flight(), n);
    let done = collect(&mut c, &rig.host, n);
    for t in &tags {
        done[t].as_ref().unwrap().check(4096).unwrap();
    }
    for i in 0..n {
        let on_disk = rig.vsp.read_lun(0, lba(i) * BS as u64, 4096).unwrap();
        assert_eq!(on_disk, pattern(4096, i as u8), "write {i}");
    }
    let per_channel = c.submissions_per_channel().to_vec();
    assert!(
        per_channel.iter().all(|&k| k >= 4),
        "every channel carried I/O: {per_channel:?}"
    );

    // Read them back, all in flight at once, into cleared buffers.
    for b in &mut hal_bufs {
        b.slice_mut().fill(0);
    }
    for b in &mut vec_bufs {
        b.fill(0);
    }
    let mut tags = Vec::new();
    for i in 0..n {
        let buf: &mut [u8] = if i % 2 == 0 {
            hal_bufs[i / 2].slice_mut()
        } else {
            &mut vec_bufs[i / 2]
        };
        // SAFETY: as above.
        tags.push(unsafe { c.submit_read(lun, lba(i), 8, buf) }.unwrap());
    }
    let done = collect(&mut c, &rig.host, n);
    for t in &tags {
        done[t].as_ref().unwrap().check(4096).unwrap();
    }
    for i in 0..n {
        let got = if i % 2 == 0 {
            hal_bufs[i / 2].slice_mut().to_vec()
        } else {
            vec_bufs[i / 2].clone()
        };
        assert_eq!(got, pattern(4096, i as u8), "read {i}");
    }
    assert_eq!(c.in_flight(), 0);
    c.close().unwrap();
    assert!(
        rig.vsp.protocol_errors().is_empty(),
        "{:?}",
        rig.vsp.protocol_errors()
    );
    assert!(
        rig.host.borrow().protocol_errors().is_empty(),
        "{:?}",
        rig.host.borrow().protocol_errors()
    );
}

#[test]
fn single_channel_when_the_host_allows_no_sub_channels() {
    let config = VspConfig {
        max_sub_channels: 0,
        ..VspConfig::default()
    };
    let mut rig = rig(config, 256);
    let waiter = stepper(&rig.host, 1_000);
    let mut c = StorvscController::open(&mut rig.guest, rig.relid, waiter).unwrap();
    assert_eq!(c.channel_count(), 1);
    assert_eq!(rig.vsp.sub_channels_created(), 0);
    let mut bufs: Vec<Vec<u8>> = (0..8).map(|i| pattern(BS, i)).collect();
    for (i, b) in bufs.iter_mut().enumerate() {
        // SAFETY: not touched until reported.
        unsafe { c.submit_write(LunAddress::lun(0), i as u64, 1, b) }.unwrap();
    }
    let done = collect(&mut c, &rig.host, 8);
    assert!(
        done.values()
            .all(|r| r.as_ref().unwrap().check(BS as u32).is_ok())
    );
    assert_eq!(
        rig.vsp.read_lun(0, 3 * BS as u64, BS).unwrap(),
        pattern(BS, 3)
    );
    c.close().unwrap();
}

#[test]
fn opting_out_of_sub_channels_keeps_one_channel() {
    let mut rig = rig(VspConfig::default(), 256);
    let waiter = stepper(&rig.host, 1_000);
    let c = StorvscController::open_with(
        &mut rig.guest,
        rig.relid,
        waiter,
        ControllerOptions {
            sub_channels: 0,
            ..ControllerOptions::default()
        },
    )
    .unwrap();
    assert_eq!(c.channel_count(), 1);
    assert_eq!(rig.vsp.sub_channels_created(), 0);
    c.close().unwrap();
}

#[test]
fn a_full_table_pushes_back_until_polled() {
    // One channel, so the mock's release of withheld completions (always on the primary)
    // answers every request on the channel it was sent on.
    let mut rig = rig(VspConfig::default(), 1024);
    let waiter = stepper(&rig.host, 1_000);
    let mut c = StorvscController::open_with(
        &mut rig.guest,
        rig.relid,
        waiter,
        ControllerOptions {
            sub_channels: 0,
            ..ControllerOptions::default()
        },
    )
    .unwrap();
    rig.vsp.withhold_completions(true);
    let mut bufs: Vec<Vec<u8>> = (0..200).map(|_| vec![0u8; BS]).collect();
    let mut submitted = 0;
    let mut refused = None;
    for (i, b) in bufs.iter_mut().enumerate() {
        // SAFETY: not touched until reported (or after close).
        match unsafe { c.submit_read(LunAddress::lun(0), i as u64, 1, b) } {
            Ok(_) => submitted += 1,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
        rig.host.borrow_mut().step();
    }
    assert_eq!(refused, Some(StorError::TableFull));
    // The channel's own requestor is the tighter bound here.
    assert_eq!(submitted, vmbus_guest::requestor::MAX_REQUESTS);
    assert_eq!(rig.vsp.withheld(), submitted);
    // Once the host answers, the queue drains and takes new requests again.
    rig.vsp.release_withheld();
    let done = collect(&mut c, &rig.host, submitted);
    assert!(
        done.values()
            .all(|r| r.as_ref().unwrap().check(BS as u32).is_ok())
    );
    let mut one = vec![0u8; BS];
    // SAFETY: not touched until reported.
    unsafe { c.submit_read(LunAddress::lun(0), 0, 1, &mut one) }.unwrap();
    collect(&mut c, &rig.host, 1);
    c.close().unwrap();
}

#[test]
fn rescind_fails_every_request_in_flight_on_every_channel() {
    let mut rig = rig(VspConfig::default(), 1024);
    let waiter = stepper(&rig.host, 1_000);
    let hal = rig.hv.hal();
    let mut c = StorvscController::open(&mut rig.guest, rig.relid, waiter).unwrap();
    assert!(c.channel_count() > 1);
    rig.vsp.withhold_completions(true);
    let mut hal_bufs: Vec<HalBuf> = (0..6).map(|_| HalBuf::new(&hal, 1)).collect();
    let mut vec_bufs: Vec<Vec<u8>> = (0..6).map(|_| vec![0u8; 4096]).collect();
    let mut tags = Vec::new();
    for (i, b) in hal_bufs.iter_mut().enumerate() {
        // SAFETY: not touched until reported.
        tags.push(
            unsafe { c.submit_read(LunAddress::lun(0), i as u64 * 8, 8, b.slice_mut()) }.unwrap(),
        );
    }
    for (i, b) in vec_bufs.iter_mut().enumerate() {
        // SAFETY: not touched until reported.
        tags.push(unsafe { c.submit_write(LunAddress::lun(0), i as u64 * 8, 8, b) }.unwrap());
    }
    for _ in 0..20 {
        rig.host.borrow_mut().step();
        assert_eq!(c.poll(|t, r| panic!("{t:?} ended early: {r:?}")), 0);
    }
    assert_eq!(
        rig.vsp.withheld(),
        tags.len(),
        "the host holds every request"
    );
    assert!(
        c.submissions_per_channel()
            .iter()
            .filter(|&&k| k > 0)
            .count()
            > 1
    );
    rig.host.borrow_mut().rescind(rig.relid);
    let done = collect(&mut c, &rig.host, tags.len());
    for t in &tags {
        assert_eq!(done[t], Err(StorError::ChannelClosed), "{t:?}");
    }
    assert!(!c.is_alive());
    assert_eq!(c.in_flight(), 0);
    // New submissions are refused at once.
    let mut one = vec![0u8; BS];
    // SAFETY: refused, so never in flight.
    let r = unsafe { c.submit_read(LunAddress::lun(0), 0, 1, &mut one) };
    assert_eq!(r, Err(StorError::ChannelClosed));
    c.close().unwrap();
}

#[test]
fn close_reports_every_request_still_in_flight() {
    let mut rig = rig(VspConfig::default(), 1024);
    let waiter = stepper(&rig.host, 1_000);
    let mut c = StorvscController::open(&mut rig.guest, rig.relid, waiter).unwrap();
    rig.vsp.withhold_completions(true);
    let mut bufs: Vec<Vec<u8>> = (0..10).map(|_| vec![0u8; BS]).collect();
    let mut tags = Vec::new();
    for (i, b) in bufs.iter_mut().enumerate() {
        // SAFETY: not touched until reported by close_with.
        tags.push(unsafe { c.submit_read(LunAddress::lun(0), i as u64, 1, b) }.unwrap());
    }
    let mut failed = Vec::new();
    c.close_with(|t, r| {
        assert_eq!(r, Err(StorError::ChannelClosed));
        failed.push(t);
    })
    .unwrap();
    failed.sort_by_key(|t| t.raw());
    tags.sort_by_key(|t| t.raw());
    assert_eq!(failed, tags);
}

#[test]
fn blocking_io_still_works_next_to_queued_io() {
    use storvsc::block::{BlockDevice, ScsiDisk};
    let mut rig = rig(VspConfig::default(), 1024);
    let waiter = stepper(&rig.host, 1_000);
    let mut c = StorvscController::open(&mut rig.guest, rig.relid, waiter).unwrap();
    let qbuf = pattern(4096, 77);
    // SAFETY: not touched until reported.
    let tag = unsafe { c.submit_write(LunAddress::lun(0), 100, 8, &qbuf) }.unwrap();
    let max = c.max_transfer_bytes();
    {
        let mut disk = ScsiDisk::open(&mut c, LunAddress::lun(0), max).unwrap();
        let data = pattern(BS * 40, 5);
        disk.write_blocks(0, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        disk.read_blocks(0, &mut back).unwrap();
        assert_eq!(back, data);
    }
    // The queued write ended while the blocking calls waited; poll still reports it.
    let done = collect(&mut c, &rig.host, 1);
    done[&tag].as_ref().unwrap().check(4096).unwrap();
    assert_eq!(rig.vsp.read_lun(0, 100 * BS as u64, 4096).unwrap(), qbuf);
    c.close().unwrap();
}

#[test]
fn unaligned_host_visible_buffers_and_commands_without_data() {
    use storvsc::protocol::DataDirection;
    use storvsc::queue::IoBuffer;
    use storvsc::request::ScsiRequest;
    use storvsc::scsi::Cdb;
    let mut rig = rig(VspConfig::default(), 1024);
    let waiter = stepper(&rig.host, 1_000);
    let hal = rig.hv.hal();
    let mut c = StorvscController::open(&mut rig.guest, rig.relid, waiter).unwrap();
    // 3 KiB at offset 1536 of host-visible pages: one GPA-direct range over two pages.
    let mut pages = HalBuf::new(&hal, 2);
    let data = pattern(6 * BS, 42);
    pages.slice_mut()[1536..1536 + data.len()].copy_from_slice(&data);
    let buf = &mut pages.slice_mut()[1536..1536 + data.len()];
    // SAFETY: not touched until reported.
    let w = unsafe { c.submit_write(LunAddress::lun(0), 10, 6, buf) }.unwrap();
    let tur = ScsiRequest::new(
        LunAddress::lun(0),
        Cdb::test_unit_ready(),
        DataDirection::NONE,
        0,
    );
    // SAFETY: no data.
    let t = unsafe { c.submit(&tur, IoBuffer::None) }.unwrap();
    let done = collect(&mut c, &rig.host, 2);
    done[&w].as_ref().unwrap().check(data.len() as u32).unwrap();
    done[&t].as_ref().unwrap().check(0).unwrap();
    assert_eq!(
        rig.vsp.read_lun(0, 10 * BS as u64, data.len()).unwrap(),
        data
    );
    // Read it back into a zeroed unaligned window.
    pages.slice_mut().fill(0);
    let buf = &mut pages.slice_mut()[1536..1536 + data.len()];
    // SAFETY: not touched until reported.
    let r = unsafe { c.submit_read(LunAddress::lun(0), 10, 6, buf) }.unwrap();
    let done = collect(&mut c, &rig.host, 1);
    done[&r].as_ref().unwrap().check(data.len() as u32).unwrap();
    assert_eq!(&pages.slice_mut()[1536..1536 + data.len()], &data[..]);
    assert!(pages.slice_mut()[..1536].iter().all(|&b| b == 0));
    // A length that does not match the request, and a bounced buffer too large, are refused.
    let mut big = vec![0u8; storvsc::queue::SLOT_BOUNCE_BYTES + BS];
    let blocks = (big.len() / BS) as u32;
    // SAFETY: refused, never in flight.
    let e = unsafe { c.submit_read(LunAddress::lun(0), 0, blocks, &mut big) };
    assert!(matches!(e, Err(StorError::InvalidArgument(_))), "{e:?}");
    let mut odd = vec![0u8; 1000];
    // SAFETY: refused, never in flight.
    let e = unsafe { c.submit_read(LunAddress::lun(0), 0, 3, &mut odd) };
    assert!(matches!(e, Err(StorError::InvalidArgument(_))), "{e:?}");
    assert_eq!(c.in_flight(), 0);
    c.close().unwrap();
    drop(pages);
}

#[test]
fn a_rescinded_sub_channel_fails_only_its_requests() {
    let mut rig = rig(VspConfig::default(), 1024);
    let waiter = stepper(&rig.host, 1_000);
    let mut c = StorvscController::open(&mut rig.guest, rig.relid, waiter).unwrap();
    let relids = c.channel_relids().to_vec();
    assert_eq!(relids.len(), 5);
    let mut bufs: Vec<Vec<u8>> = (0..10).map(|_| vec![0u8; BS]).collect();
    let mut tags = Vec::new();
    for (i, b) in bufs.iter_mut().enumerate() {
        // SAFETY: not touched until reported.
        tags.push(unsafe { c.submit_read(LunAddress::lun(0), i as u64, 1, b) }.unwrap());
    }
    let on_victim_before = c.submissions_per_channel()[2];
    assert!(on_victim_before > 0);
    // The host drops sub-channel 2 before reading its ring.
    rig.host.borrow_mut().rescind(relids[2]);
    let done = collect(&mut c, &rig.host, tags.len());
    let failed = done
        .values()
        .filter(|r| **r == Err(StorError::ChannelClosed))
        .count();
    assert_eq!(failed as u64, on_victim_before);
    assert!(done.values().filter(|r| r.is_ok()).count() == tags.len() - failed);
    assert!(c.is_alive());
    // New I/O avoids the dead channel and succeeds.
    for (i, b) in bufs.iter_mut().enumerate() {
        // SAFETY: not touched until reported.
        unsafe { c.submit_read(LunAddress::lun(0), i as u64, 1, b) }.unwrap();
    }
    let done = collect(&mut c, &rig.host, bufs.len());
    assert!(done.values().all(|r| r.is_ok()));
    assert_eq!(c.submissions_per_channel()[2], on_victim_before);
    c.close().unwrap();
}

#[test]
fn spill_depth_keeps_a_burst_on_one_channel_until_it_is_deep_enough() {
    let mut rig = rig(VspConfig::default(), 1024);
    let waiter = stepper(&rig.host, 1_000);
    let mut c = StorvscController::open_with(
        &mut rig.guest,
        rig.relid,
        waiter,
        ControllerOptions {
            spill_depth: 8,
            ..ControllerOptions::default()
        },
    )
    .unwrap();
    assert_eq!(c.channel_count(), 5);
    let mut bufs: Vec<Vec<u8>> = (0..32).map(|_| vec![0u8; BS]).collect();
    for (i, b) in bufs.iter_mut().enumerate() {
        // SAFETY: not touched until reported.
        unsafe { c.submit_read(LunAddress::lun(0), i as u64, 1, b) }.unwrap();
    }
    assert_eq!(c.submissions_per_channel(), [8, 8, 8, 8, 0]);
    let done = collect(&mut c, &rig.host, 32);
    assert!(done.values().all(|r| r.is_ok()));
    c.close().unwrap();
}
