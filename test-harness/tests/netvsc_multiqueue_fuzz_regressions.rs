//! Regression tests for netvsc multi-queue bugs the netvsc fuzz target
//! (`fuzz/fuzz_targets/netvsc.rs`, with its host answering SUBCHANNEL and sending send
//! tables) found, each replayed against the mock network VSP.

mod common;

use common::net::*;
use netvsc::nic::{MultiQueueConfig, SubQueue};
use netvsc::{Nic, NicConfig};
use test_harness::hv::{MockHal, MockVp};
use test_harness::network::NetVspConfig;
use test_harness::vmbus::MockVmbusHost;
use vmbus_guest::{Released, SynicTransport};

type Sub<'b> = SubQueue<'b, SynicTransport<MockVp>, MockHal>;

fn settle<'b>(nic: &mut GuestNic<'b>, subs: &mut [Option<Sub<'b>>], host: &mut MockVmbusHost) {
    for _ in 0..6 {
        host.step();
        while nic.poll_queues(subs, 64, |_, _| {}).unwrap() {}
    }
}

/// A SEND_INDIRECTION_TABLE (type 134, 16 entries at offset 12).
fn table_message(entries: &[u32; 16]) -> Vec<u8> {
    [134, 16, 12]
        .iter()
        .chain(entries)
        .flat_map(|w: &u32| w.to_le_bytes())
        .collect()
}

/// A valid send table followed, before the guest polled, by one naming a queue the NIC does
/// not have: the guest kept only the last table it parsed in a poll and applied it at the
/// end, so refusing the second dropped the first, and which table was in use depended on
/// how many packets one poll read. Fuzz input: four queues, the host sends a table, then a
/// hostile one, the primary drains — the default table still in use.
#[test]
fn a_refused_send_table_does_not_drop_the_valid_one_before_it() {
    let mut rig = rig(NetVspConfig {
        max_subchannels: 3,
        ..NetVspConfig::default()
    });
    let vsp = rig.vsp.clone();
    let config = NicConfig {
        multi_queue: MultiQueueConfig {
            max_queues: 4,
            ..MultiQueueConfig::default()
        },
        ..small()
    };
    let mut subs: [Option<Sub<'_>>; 3] = Default::default();
    let (mut nic, setup) = Nic::open_multi(
        &rig.guest,
        rig.relid,
        &config,
        &mut subs,
        &mut waiter(&mut rig.host),
    )
    .unwrap();
    assert_eq!(setup.queues, 4);
    settle(&mut nic, &mut subs, &mut rig.host);
    let before = nic.shared().send_table().host_updates();
    let valid: [u32; 16] = std::array::from_fn(|i| (i as u32 + 3) % 4);
    let mut beyond = valid;
    beyond[5] = 9;
    vsp.send_indirection_table(valid);
    vsp.inject_nvsp(&table_message(&beyond));
    settle(&mut nic, &mut subs, &mut rig.host);
    assert_eq!(
        nic.shared().send_table().entries(),
        valid.map(|q| q as u8),
        "the valid table is in use"
    );
    assert_eq!(
        nic.shared().send_table().host_updates(),
        (before.0 + 1, before.1 + 1)
    );
    assert_eq!(
        nic.close_all(&mut subs, &mut waiter(&mut rig.host)),
        Released::Freed
    );
    assert_clean(&rig.host, &vsp);
}

/// Frames that arrived while `open_queues` waited for the SUBCHANNEL completion were dropped
/// (the handshake wait hands them to no one) but counted in `rx_frames` as delivered.
/// Fuzz input: frames delivered, the queues closed and opened again, drain — `rx_frames`
/// above the frames handed out.
#[test]
fn frames_arriving_during_the_subchannel_request_are_not_counted_as_delivered() {
    let mut rig = rig(NetVspConfig {
        max_subchannels: 3,
        ..NetVspConfig::default()
    });
    let vsp = rig.vsp.clone();
    let config = NicConfig {
        multi_queue: MultiQueueConfig {
            max_queues: 4,
            ..MultiQueueConfig::default()
        },
        ..small()
    };
    let mut nic = Nic::open(&rig.guest, rig.relid, &config, &mut waiter(&mut rig.host)).unwrap();
    // An RNDIS PACKET with a 64-byte broadcast frame.
    let mut frame = vec![0xFFu8; 6];
    frame.extend_from_slice(&[0x00, 0x15, 0x5D, 9, 9, 9, 0x88, 0xB5]);
    frame.resize(64, 0x5A);
    let mut packet: Vec<u8> = [1u32, 44 + 64, 36, 64, 0, 0, 0, 0, 0, 0, 0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    packet.extend_from_slice(&frame);
    // The host delivers a frame each time the guest waits during the set-up.
    let mut subs: [Option<Sub<'_>>; 3] = Default::default();
    let host = &mut rig.host;
    let mut wait = vmbus_guest::BoundedWait::new(500, || {
        vsp.inject_rndis(&packet);
        host.step();
    });
    let setup = nic.open_queues(&mut subs, &mut wait).unwrap();
    assert_eq!(setup.queues, 4, "{setup:?}");
    let mut handed = 0u64;
    for _ in 0..20 {
        rig.host.step();
        while nic.poll_queues(&mut subs, 64, |_, _| handed += 1).unwrap() {}
    }
    let stats: Vec<_> = (0..4)
        .map(|q| nic.queue(&mut subs, q).unwrap().stats())
        .collect();
    let rx_frames: u64 = stats.iter().map(|s| s.rx_frames).sum();
    let not_ready: u64 = stats.iter().map(|s| s.rx_not_ready).sum();
    assert!(not_ready > 0, "frames arrived during the set-up: {stats:?}");
    assert_eq!(rx_frames, handed, "rx_frames counts only frames handed out");
    assert_eq!(
        nic.close_all(&mut subs, &mut waiter(&mut rig.host)),
        Released::Freed
    );
    assert_clean(&rig.host, &vsp);
}
