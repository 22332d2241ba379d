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
