//! storvsc on a real VMBus channel (guest connection, rings, GPA-direct) against the mock
//! storage VSP: handshake, LUN discovery, reads and writes, faults, and rescind mid-I/O.

use storvsc::StorError;
use storvsc::block::{BlockDevice, ScsiDisk, report_luns};
use storvsc::controller::StorvscController;
use storvsc::protocol::VstorVersion;
use storvsc::request::LunAddress;
use test_harness::guest::boot_vp;
use test_harness::hv::{HostPreset, MockConfig, MockHal, MockHypervisor, MockVp};
use test_harness::storage::{Lun, SCSI_CLASS, StorageVsp, VspConfig};
use test_harness::vmbus::{DeviceOffer, HostRelease, MockVmbusHost};
use vmbus_guest::protocol::Guid;
use vmbus_guest::{BoundedWait, ConnectionConfig, Released, SynicTransport, Vmbus};

type Guest = Vmbus<SynicTransport<MockVp>, MockHal>;

const INSTANCE: Guid = Guid::from_str_const("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");

struct Rig {
    _hv: MockHypervisor,
    host: MockVmbusHost,
    guest: Guest,
    vsp: StorageVsp,
    relid: u32,
}

fn rig(release: HostRelease, config: VspConfig, luns: &[(u8, u32, u64)]) -> Rig {
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_memory_bytes(64 << 20));
    let vp = boot_vp(&hv, 0).unwrap();
    let mut host = MockVmbusHost::new(hv.clone(), release);
    let offer = DeviceOffer::new(SCSI_CLASS, INSTANCE);
    let vsp = StorageVsp::new(config).with_offer(offer.clone());
    for &(n, block_size, blocks) in luns {
        vsp.add_lun(n, Lun::memory(block_size, blocks));
    }
    let relid = host.add_device(offer, Box::new(vsp.clone()));
    let transport = SynicTransport::for_current_vp(vp.hypercalls, vp.synic);
    let guest = Vmbus::new(transport, hv.hal(), ConnectionConfig::default());
    guest
        .connect(&mut BoundedWait::new(200, || {
            host.step();
        }))
        .unwrap();
    Rig {
        _hv: hv,
        host,
        guest,
        vsp,
        relid,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn disks_are_found_read_and_written_through_the_channel() {
    for (config, expected) in [
        (VspConfig::default(), VstorVersion::WIN10),
        (VspConfig::openvmm(), VstorVersion::WIN8_1),
    ] {
        let mut rig = rig(
            HostRelease::Ws2022,
            config,
            &[(0, 512, 2048), (1, 4096, 256)],
        );
        let host = &mut rig.host;
        let waiter = BoundedWait::new(1_000, || {
            host.step();
        });
        let mut controller: StorvscController<'_, _, _, _> =
            StorvscController::open(&rig.guest, rig.relid, waiter).unwrap();
        assert_eq!(controller.negotiated().version, expected);
        let max = controller.max_transfer_bytes();
        let mut luns = Vec::new();
        report_luns(&mut controller, LunAddress::lun(0), |l| luns.push(l)).unwrap();
        assert_eq!(luns, [0, 1]);
        for (lun, block_size, blocks) in [(0u8, 512u32, 2048u64), (1, 4096, 256)] {
            let mut disk = ScsiDisk::open(&mut controller, LunAddress::lun(lun), max).unwrap();
            assert_eq!((disk.block_size(), disk.num_blocks()), (block_size, blocks));
            // A write spanning several pages, at an unaligned buffer offset, then read back.
            let data = pattern(block_size as usize * 37, lun);
            disk.write_blocks(5, &data).unwrap();
            let mut back = vec![0u8; data.len()];
            disk.read_blocks(5, &mut back).unwrap();
            assert_eq!(back, data);
            disk.flush().unwrap();
            // Reading past the end is refused without reaching the host.
            let mut one = vec![0u8; block_size as usize];
            assert!(disk.read_blocks(blocks, &mut one).is_err());
        }
        assert_eq!(controller.close(), Released::Freed);
        // The VSP holds what the guest wrote.
        let on_disk = rig.vsp.read_lun(0, 5 * 512, 512 * 37).unwrap();
        assert_eq!(on_disk, pattern(512 * 37, 0));
        assert!(
            rig.vsp.protocol_errors().is_empty(),
            "{:?}",
            rig.vsp.protocol_errors()
        );
        assert_eq!(rig.host.freed_while_mapped(), []);
        assert!(
            rig.host.protocol_errors().is_empty(),
            "{:?}",
            rig.host.protocol_errors()
        );
    }
}

#[test]
fn unit_attention_and_transient_errors_are_retried() {
    let mut rig = rig(HostRelease::Ws2022, VspConfig::default(), &[(0, 512, 1024)]);
    let vsp = rig.vsp.clone();
    let host = &mut rig.host;
    let waiter = BoundedWait::new(1_000, || {
        host.step();
    });
    let mut controller: StorvscController<'_, _, _, _> =
        StorvscController::open(&rig.guest, rig.relid, waiter).unwrap();
    let max = controller.max_transfer_bytes();
    let mut disk = ScsiDisk::open(&mut controller, LunAddress::lun(0), max).unwrap();
    let data = pattern(4096, 9);
    disk.write_blocks(0, &data).unwrap();
    vsp.unit_attention(0, 0x29, 0);
    let mut back = vec![0u8; 4096];
    disk.read_blocks(0, &mut back).unwrap();
    assert_eq!(
        back, data,
        "the read after a power-on unit attention was retried"
    );
    vsp.bus_reset();
    disk.read_blocks(0, &mut back).unwrap();
    assert_eq!(back, data, "retried after a bus reset");
}

#[test]
fn rescind_with_io_in_flight_fails_the_request() {
    let mut rig = rig(HostRelease::Ws2022, VspConfig::default(), &[(0, 512, 64)]);
    let vsp = rig.vsp.clone();
    let relid = rig.relid;
    let host = &mut rig.host;
    let mut steps = 0;
    let waiter = BoundedWait::new(1_000, || {
        steps += 1;
        // Once the read below is in flight (completions withheld), the host rescinds.
        if vsp.withheld() > 0 {
            host.rescind(relid);
        }
        host.step();
    });
    let mut controller: StorvscController<'_, _, _, _> =
        StorvscController::open(&rig.guest, relid, waiter).unwrap();
    let max = controller.max_transfer_bytes();
    let mut disk = ScsiDisk::open(&mut controller, LunAddress::lun(0), max).unwrap();
    vsp.withhold_completions(true);
    let mut buf = vec![0u8; 512];
    assert_eq!(disk.read_blocks(0, &mut buf), Err(StorError::ChannelClosed));
    assert_eq!(disk.read_blocks(0, &mut buf), Err(StorError::ChannelClosed));
    // The host confirmed the close of the rescinded channel: the bounce buffer the failed
    // read named is freed, not leaked.
    assert_eq!(controller.close(), Released::Freed);
    assert_eq!(rig.host.freed_while_mapped(), []);
}

#[test]
fn a_silent_host_times_out() {
    let mut rig = rig(HostRelease::Ws2022, VspConfig::default(), &[(0, 512, 64)]);
    let vsp = rig.vsp.clone();
    let host = &mut rig.host;
    let waiter = BoundedWait::new(50, || {
        host.step();
    });
    let mut controller: StorvscController<'_, _, _, _> =
        StorvscController::open(&rig.guest, rig.relid, waiter).unwrap();
    let max = controller.max_transfer_bytes();
    let mut disk = ScsiDisk::open(&mut controller, LunAddress::lun(0), max).unwrap();
    vsp.withhold_completions(true);
    let mut buf = vec![0u8; 512];
    assert_eq!(disk.read_blocks(0, &mut buf), Err(StorError::Timeout));
    // The timed-out read still names the bounce buffer; the close (which the host confirms)
    // ends it, so nothing leaks and nothing is freed under the host.
    assert_eq!(controller.close(), Released::Freed);
    assert_eq!(rig.host.freed_while_mapped(), []);
    assert!(rig.host.protocol_errors().is_empty());
}

#[test]
fn each_request_gets_the_whole_wait_budget() {
    // 400 requests with a budget of 20 host steps each: a budget shared by the whole session
    // would run out after a handful of requests.
    let mut rig = rig(HostRelease::Ws2022, VspConfig::default(), &[(0, 512, 64)]);
    let host = &mut rig.host;
    let waiter = BoundedWait::new(20, || {
        host.step();
    });
    let mut controller: StorvscController<'_, _, _, _> =
        StorvscController::open(&rig.guest, rig.relid, waiter).unwrap();
    let max = controller.max_transfer_bytes();
    let mut disk = ScsiDisk::open(&mut controller, LunAddress::lun(0), max).unwrap();
    let mut buf = vec![0u8; 512];
    for i in 0..400u64 {
        disk.read_blocks(i % 64, &mut buf).unwrap();
    }
}
