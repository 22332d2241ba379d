//! Regression tests for netvsc bugs the netvsc fuzz target (`fuzz/fuzz_targets/netvsc.rs`)
//! found, each replaying the minimized input's scenario against the mock network VSP.

mod common;

use common::net::*;
use test_harness::network::NetVspConfig;
use vmbus_guest::Released;

/// A KEEPALIVE's wait pumped the receive path into a callback that dropped every frame, while
/// `rx_frames` counted them as delivered: frames vanished with no counted reason. Fuzz input:
/// open, the host delivers a frame, KEEPALIVE, drain — `rx_frames` 1, frames handed out 0.
#[test]
fn frames_arriving_during_keepalive_are_not_counted_as_delivered() {
    let mut rig = rig(NetVspConfig::default());
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    let mut f = vec![0xFFu8; 6];
    f.extend_from_slice(&[0x00, 0x15, 0x5D, 9, 9, 9, 0x88, 0xB5]);
    f.resize(64, 0x5A);
    vsp.generate(Some((&f, 2)));
    // The host keeps delivering while the guest waits for the KEEPALIVE reply.
    nic.keepalive(&mut waiter(host)).unwrap();
    vsp.generate(None);
    let mut handed = 0u64;
    for _ in 0..20 {
        host.step();
        while nic.poll(64, |_| handed += 1).unwrap() {}
    }
    let s = nic.stats();
    assert!(s.rx_not_ready > 0, "frames arrived during the wait: {s:?}");
    assert_eq!(
        s.rx_frames, handed,
        "rx_frames counts only frames handed to the caller"
    );
    assert_eq!(s.rx_frames + s.rx_not_ready, vsp.frames_to_guest());
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}

/// A frame that goes alone in its section was padded to the host's packing alignment: with a
/// 64-byte alignment a full-size frame (1600 bytes padded) no longer fit a 1560-byte section,
/// which the guest accepts, and with no page-buffer slots (allocated only when a frame never
/// fits a section) it was refused as `FrameSize`. Fuzz input: section size 1560 (then the
/// smallest accepted; now 1576, room for a full frame and its checksum PPI), alignment
/// factor 6, a send of a full-size frame.
#[test]
fn full_size_frames_fit_the_smallest_section_whatever_the_packing_alignment() {
    let mut rig = rig(NetVspConfig {
        section_size: 1576,
        packet_alignment_factor: 6,
        ..NetVspConfig::default()
    });
    let vsp = rig.vsp.clone();
    let (mut nic, host) = open(&mut rig, &small());
    vsp.keep_frames(true);
    let mac = nic.mac();
    let mut sent = Vec::new();
    for len in [1514usize, 1000, 64, 60] {
        let mut f = vec![0xFFu8; 6];
        f.extend_from_slice(&mac);
        f.extend_from_slice(&0x88B5u16.to_be_bytes());
        f.resize(len, len as u8);
        nic.send_frame(&f).unwrap();
        sent.push(f);
    }
    for _ in 0..4 {
        host.step();
        while nic.poll(64, |_| {}).unwrap() {}
    }
    assert_eq!(vsp.frames_from_guest(), sent);
    assert_eq!(nic.stats().tx_completed, 4);
    assert_eq!(nic.close(&mut waiter(host)), Released::Freed);
    assert_clean(host, &vsp);
}
