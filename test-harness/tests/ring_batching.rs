//! Batching on both ends of a channel, against the mock host (deterministic, stepped): a guest
//! send batch publishes once and signals at most once (vmbus-core §7.8 steps 4–6 for the
//! batch), the host publishes the completions of one step as a batch with at most one
//! interrupt, a polling host masks the guest's signals while it watches the rings (§7.9
//! step 1) and unmasks before it stops, and the data echo device moves data both ways.

mod common;

use std::ptr::NonNull;

use common::{GuestChannel, NET, assert_clean, instance, open_echo_channel, rig, step};
use test_harness::hv::MockHal;
use test_harness::vmbus::{
    DATA_ECHO_READ, DATA_ECHO_WRITE, DataEchoDevice, DeviceOffer, EchoDevice, HostRelease,
    MockVmbusHost,
};
use vmbus_guest::{ChannelConfig, Dma, Hal, Received, Released};

const RX: usize = 512;

/// Receives every completion waiting; returns their contexts.
fn completions(ch: &mut GuestChannel<'_>) -> Vec<u64> {
    let mut rx = vec![0u8; RX];
    let mut got = Vec::new();
    loop {
        while let Some(r) = ch.recv(&mut rx).expect("recv") {
            if let Received::Completion { context, .. } = r {
                got.push(context);
            }
        }
        if !ch.end_batch().expect("end batch") {
            return got;
        }
    }
}

#[test]
fn a_send_batch_publishes_once_and_the_host_answers_with_one_interrupt() {
    let (_hv, mut host, guest) = rig(HostRelease::Ws2022);
    let relid = host.add_device(DeviceOffer::new(NET, instance(1)), Box::new(EchoDevice));
    guest.connect(&mut step(&mut host)).unwrap();
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    for round in 1..=3u64 {
        ch.begin_send_batch().expect("begin");
        assert!(ch.in_send_batch());
        for i in 0..20u64 {
            ch.request(&[b"batched request"], round * 100 + i)
                .expect("request");
        }
        // Nothing is published before the batch ends: the host, even polling, sees nothing.
        host.set_poll_rings(true);
        host.step();
        host.set_poll_rings(false);
        assert_eq!(ch.requests_in_flight(), 20);
        assert!(completions(&mut ch).is_empty(), "nothing published yet");
        ch.end_send_batch().expect("end");
        assert!(!ch.in_send_batch());
        host.step();
        assert_eq!(host.signal_count(relid), round, "one signal per batch");
        assert_eq!(
            host.guest_signal_count(relid),
            round,
            "one interrupt for the 20 completions of one host step"
        );
        let mut got = completions(&mut ch);
        got.sort_unstable();
        assert_eq!(got, (0..20).map(|i| round * 100 + i).collect::<Vec<_>>());
    }
    assert_eq!(ch.stats().send_batches, 3);
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert_clean(&host);
}

#[test]
fn a_batch_larger_than_the_ring_publishes_what_fits_first() {
    let (_hv, mut host, guest) = rig(HostRelease::Ws2022);
    let relid = host.add_device(DeviceOffer::new(NET, instance(1)), Box::new(EchoDevice));
    guest.connect(&mut step(&mut host)).unwrap();
    // One data page per direction (4 KiB): 1 KiB packets, three fit.
    let config = ChannelConfig {
        outbound_pages: 2,
        inbound_pages: 2,
        ..ChannelConfig::default()
    };
    let mut ch: vmbus_guest::Channel<'_, _, _, u64, 64> =
        vmbus_guest::Channel::open(&guest, relid, &config, &mut step(&mut host)).unwrap();
    let big = [0xA5u8; 1000];
    ch.begin_send_batch().unwrap();
    let mut sent = 0u64;
    let err = loop {
        match ch.request(&[&big], sent) {
            Ok(_) => sent += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err, vmbus_guest::ChannelError::Full);
    assert_eq!(sent, 3);
    // The full ring published the batch's packets and signalled once: the host sees them.
    host.step();
    assert_eq!(host.signal_count(relid), 1);
    ch.end_send_batch().unwrap();
    let mut rx = vec![0u8; 2048];
    let mut got = 0;
    for _ in 0..10 {
        while let Some(r) = ch.recv(&mut rx).unwrap() {
            if matches!(r, Received::Completion { .. }) {
                got += 1;
            }
        }
        ch.end_batch().unwrap();
        host.step();
    }
    assert_eq!(got, 3);
    drop(rx);
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert_clean(&host);
}

#[test]
fn a_polling_host_masks_guest_signals_and_unmasks_before_it_stops() {
    let (_hv, mut host, guest) = rig(HostRelease::Ws2022);
    let relid = host.add_device(DeviceOffer::new(NET, instance(1)), Box::new(EchoDevice));
    guest.connect(&mut step(&mut host)).unwrap();
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    host.set_poll_rings(true);
    host.set_polling(true);
    host.step();
    assert_eq!(ch.offer().relid, relid);
    for i in 0..5u64 {
        ch.request(&[b"watched"], i).unwrap();
        host.step();
        assert_eq!(completions(&mut ch), vec![i]);
    }
    assert_eq!(
        host.signal_count(relid),
        0,
        "the guest saw the mask and did not signal a host that polls"
    );
    // Going idle: masks cleared; the next packet into an empty ring signals again.
    host.set_polling(false);
    ch.request(&[b"after"], 9).unwrap();
    assert_eq!(host.signal_count(relid), 0);
    host.set_poll_rings(false);
    host.step();
    assert_eq!(host.signal_count(relid), 1);
    assert_eq!(completions(&mut ch), vec![9]);
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    assert_clean(&host);
}

/// One HAL page for GPA-direct requests, freed on drop.
struct Page(MockHal, NonNull<u8>);

impl Page {
    /// Copies `data` into the page (no request names it meanwhile).
    fn fill(&self, data: &[u8]) {
        assert!(data.len() <= 4096);
        // SAFETY: the page is 4096 bytes of guest RAM this test owns; the host touches it
        // only inside a step while a request names it, and none does now.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.1.as_ptr(), data.len()) };
    }

    /// The page's bytes (no request names it meanwhile).
    fn bytes(&self) -> Vec<u8> {
        // SAFETY: as in `fill`.
        unsafe { std::slice::from_raw_parts(self.1.as_ptr(), 4096).to_vec() }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: allocated from this HAL; the channel naming it is closed.
        unsafe { self.0.free_pages(self.1, 1) };
    }
}

fn request(ch: &mut GuestChannel<'_>, host: &mut MockVmbusHost, page: &Page, op: u8, at: u64) {
    // SAFETY: the page is named by this one request and not touched until it completes.
    let dma = unsafe { Dma::from_raw(page.1, 4096) }.unwrap();
    let mut payload = [0u8; 16];
    payload[0] = op;
    payload[8..].copy_from_slice(&at.to_le_bytes());
    ch.request_dma(&[dma], &[&payload], u64::from(op)).unwrap();
    host.step();
    assert_eq!(completions(ch), vec![u64::from(op)]);
}

#[test]
fn the_data_echo_device_moves_a_block_each_way() {
    let (hv, mut host, guest) = rig(HostRelease::Ws2022);
    let relid = host.add_device(
        DeviceOffer::new(NET, instance(1)),
        Box::new(DataEchoDevice::new(16 * 4096)),
    );
    guest.connect(&mut step(&mut host)).unwrap();
    let mut ch = open_echo_channel(&guest, &mut host, relid);
    let hal = hv.hal();
    let page = Page(hal.clone(), hal.alloc_pages(1).unwrap());
    // Read: the disk's bytes (0x5A) land in the page.
    request(&mut ch, &mut host, &page, DATA_ECHO_READ, 0);
    assert!(page.bytes().iter().all(|&b| b == 0x5A));
    // Write at block 5: the page's bytes go onto the disk there, and a read brings them back;
    // block 4 is untouched.
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    page.fill(&pattern);
    request(&mut ch, &mut host, &page, DATA_ECHO_WRITE, 5 * 4096);
    page.fill(&[0u8; 4096]);
    request(&mut ch, &mut host, &page, DATA_ECHO_READ, 5 * 4096);
    assert_eq!(page.bytes(), pattern);
    request(&mut ch, &mut host, &page, DATA_ECHO_READ, 4 * 4096);
    assert!(page.bytes().iter().all(|&b| b == 0x5A));
    assert_clean(&host);
    // Past the end of the disk: completed, no data, and a protocol error.
    request(&mut ch, &mut host, &page, DATA_ECHO_READ, 15 * 4096 + 1);
    let errors = host.take_protocol_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("beyond the disk"), "{errors:?}");
    assert_eq!(ch.close(&mut step(&mut host)), Released::Freed);
    drop(page);
    assert_clean(&host);
}
