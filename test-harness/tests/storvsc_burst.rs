//! storvsc bursts against the mock storage VSP: the requests of a burst reach the host only
//! when it ends, each channel it used is published once and signals the host at most once,
//! a burst for a VP stays on that VP's channel and moves past a dead one, and the data moves
//! as with single submissions.

mod common;

use common::storage::{BS, collect, pattern, rig, stepper};
use storvsc::controller::{ControllerOptions, StorvscController};
use storvsc::request::LunAddress;
use test_harness::storage::VspConfig;
use vmbus_guest::Released;

#[test]
fn a_burst_is_published_at_its_end_with_one_signal() {
    let rig = rig(VspConfig::default(), 1024);
    let waiter = stepper(&rig.host, 1_000);
    let mut c = StorvscController::<_, _, _, 8, 64>::open_with(
        &rig.guest,
        rig.relid,
        waiter,
        ControllerOptions {
            sub_channels: 0,
            ..ControllerOptions::default()
        },
    )
    .unwrap();
    assert_eq!(c.channel_count(), 1);
    let relid = c.channel_relids()[0];
    let lun = LunAddress::lun(0);
    let mut bufs: Vec<Vec<u8>> = (0..24).map(|i| pattern(BS, i as u8)).collect();
    for round in 1..=3u64 {
        let signals = rig.host.borrow().signal_count(relid);
        let mut burst = c.burst();
        let mut tags = Vec::new();
        for (i, b) in bufs.iter_mut().enumerate() {
            // SAFETY: not touched until reported.
            tags.push(unsafe { burst.submit_write(lun, (i * 2) as u64, 1, b) }.unwrap());
        }
        // Nothing is published yet: even a host that reads every ring sees no request.
        {
            let mut h = rig.host.borrow_mut();
            h.set_poll_rings(true);
            h.step();
            h.set_poll_rings(false);
            assert!(h.requests_in_flight(relid).is_empty(), "round {round}");
            assert_eq!(h.signal_count(relid), signals);
        }
        burst.finish().unwrap();
        rig.host.borrow_mut().step();
        assert_eq!(
            rig.host.borrow().signal_count(relid),
            signals + 1,
            "one signal for the 24 requests of the burst"
        );
        let done = collect(&mut c, &rig.host, tags.len());
        for t in &tags {
            done[t].as_ref().unwrap().check(BS as u32).unwrap();
        }
    }
    for i in 0..bufs.len() {
        let on_disk = rig.vsp.read_lun(0, (i * 2 * BS) as u64, BS).unwrap();
        assert_eq!(on_disk, pattern(BS, i as u8), "write {i}");
    }
    // A burst dropped without `finish` is published all the same.
    let mut read = vec![0u8; BS];
    let tag = {
        let mut burst = c.burst();
        // SAFETY: not touched until reported.
        unsafe { burst.submit_read(lun, 4, 1, &mut read) }.unwrap()
    };
    let done = collect(&mut c, &rig.host, 1);
    done[&tag].as_ref().unwrap().check(BS as u32).unwrap();
    assert_eq!(read, pattern(BS, 2));
    assert_eq!(c.close(), Released::Freed);
    rig.assert_clean();
}

#[test]
fn a_burst_for_a_vp_uses_its_channel_and_moves_past_a_dead_one() {
    let rig = rig(VspConfig::default(), 1024);
    let waiter = stepper(&rig.host, 1_000);
    let mut c = StorvscController::<_, _, _, 8, 64>::open(&rig.guest, rig.relid, waiter).unwrap();
    assert_eq!(c.channel_count(), 5);
    let relids = c.channel_relids().to_vec();
    let lun = LunAddress::lun(0);
    let mut bufs: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; BS]).collect();
    let mut submit = |c: &mut StorvscController<'_, _, _, _, 8, 64>, vp: u32| {
        let mut burst = c.burst_on_vp(vp);
        let tags: Vec<_> = bufs
            .iter_mut()
            .enumerate()
            // SAFETY: not touched until reported.
            .map(|(i, b)| unsafe { burst.submit_read(lun, i as u64, 1, b) }.unwrap())
            .collect();
        burst.finish().unwrap();
        let done = collect(c, &rig.host, tags.len());
        assert!(done.values().all(|r| r.is_ok()));
    };
    submit(&mut c, 3);
    assert_eq!(c.submissions_per_channel(), [0, 0, 0, 8, 0]);
    // VP 7 of a 5-channel controller: channel 7 % 5 = 2.
    submit(&mut c, 7);
    assert_eq!(c.submissions_per_channel(), [0, 0, 8, 8, 0]);
    // The host drops sub-channel 2; once the controller has seen it, VP 2's bursts go to the
    // next live channel.
    rig.host.borrow_mut().rescind(relids[2]);
    for _ in 0..4 {
        rig.host.borrow_mut().step();
        let _ = c.poll(16, |_| {});
    }
    submit(&mut c, 2);
    assert_eq!(c.submissions_per_channel(), [0, 0, 8, 16, 0]);
    assert_eq!(c.close(), Released::Freed);
    rig.assert_clean();
}
