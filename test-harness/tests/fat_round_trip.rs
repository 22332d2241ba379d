//! Real peers: a FAT16 image made by `mkfs.fat` and populated by `mcopy` is served through the
//! mock storage VSP, mounted in the guest by embedded-sdmmc over `storvsc::sdmmc::SdmmcDisk`
//! (→ `ScsiDisk` → `StorvscController` → VMBus rings), read back, written to, and then judged
//! on the host by `fsck.fat -n` and `mcopy`/`mdir`.
//!
//! Without the tools the test says loudly that it skipped; CI (`.ci/run`) installs them and sets
//! `HV_REQUIRE_REAL_PEERS=1`, which turns the skip into a failure.

use std::ops::ControlFlow;

use storvsc::block::{BlockDevice, ScsiDisk};
use storvsc::controller::StorvscController;
use storvsc::request::LunAddress;
use storvsc::sdmmc::SdmmcDisk;
use storvsc::sdmmc::embedded_sdmmc::{Mode, TimeSource, Timestamp, VolumeIdx, VolumeManager};
use test_harness::disk_image::{Entry, FatImage, FatKind, tools_available};
use test_harness::guest::boot_vp;
use test_harness::hv::{HostPreset, MockConfig, MockHal, MockHypervisor, MockVp};
use test_harness::storage::{Lun, SCSI_CLASS, StorageVsp, VspConfig};
use test_harness::vmbus::{DeviceOffer, HostRelease, MockVmbusHost};
use vmbus_guest::protocol::Guid;
use vmbus_guest::{BoundedWait, ConnectionConfig, Released, SynicTransport, Vmbus};

type Guest = Vmbus<SynicTransport<MockVp>, MockHal>;

const INSTANCE: Guid = Guid::from_str_const("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");

/// A fixed clock for the timestamps the guest writes.
struct FixedClock;

impl TimeSource for FixedClock {
    fn get_timestamp(&self) -> Timestamp {
        Timestamp::from_calendar(2025, 6, 1, 12, 0, 0).expect("valid date")
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// Writes `data` in uneven chunks, so writes straddle block and cluster boundaries.
fn write_chunked<F>(write: F, data: &[u8])
where
    F: Fn(&[u8]),
{
    for chunk in data.chunks(1000) {
        write(chunk);
    }
}

#[test]
fn a_mkfs_fat_image_round_trips_through_the_guest_fat_driver() {
    if !test_harness::real_peers::available(
        "the FAT round trip",
        tools_available().map_err(|e| e.to_string()),
        "install them with `apt-get install -y dosfstools mtools`",
    ) {
        return;
    }

    // Host: the image, made and populated by the real tools.
    let readme = b"Hello from the host.\r\nThis file was put here by mcopy.\r\n".to_vec();
    let blob = pattern(150_000, 3); // ~74 clusters of 2 KiB: a long FAT chain.
    let nested = b"nested file in SUBDIR\n".to_vec();
    let path = std::env::temp_dir().join(format!("hv-fat-round-trip-{}.img", std::process::id()));
    let image = FatImage::create_with_tools(
        &path,
        32 << 20,
        FatKind::Fat16,
        "HVTEST",
        &[
            Entry::file("README.TXT", readme.clone()),
            Entry::file("BLOB.BIN", blob.clone()),
            Entry::dir("SUBDIR"),
            Entry::file("SUBDIR/NESTED.TXT", nested.clone()),
        ],
    )
    .unwrap();
    image.fsck().expect("the fresh image is clean");

    // What the guest will write.
    let note = b"written by the guest through storvsc\n".to_vec();
    let data = pattern(70_000, 77); // multi-cluster, not a multiple of the block size
    let inner = b"a file in a directory the guest made\n".to_vec();

    // The VM: mock hypervisor, VMBus host with the storage VSP serving the image as LUN 0.
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_memory_bytes(64 << 20));
    let vp = boot_vp(&hv, 0).unwrap();
    let mut host = MockVmbusHost::new(hv.clone(), HostRelease::Ws2022);
    let offer = DeviceOffer::new(SCSI_CLASS, INSTANCE);
    let vsp = StorageVsp::new(VspConfig::default()).with_offer(offer.clone());
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    vsp.add_lun(0, Lun::file(file, 512).unwrap());
    let relid = host.add_device(offer, Box::new(vsp.clone()));
    let transport = SynicTransport::for_current_vp(vp.hypercalls, vp.synic);
    let guest: Guest = Vmbus::new(transport, hv.hal(), ConnectionConfig::default());
    guest
        .connect(&mut BoundedWait::new(200, || {
            host.step();
        }))
        .unwrap();

    {
        let waiter = BoundedWait::new(1_000, || {
            host.step();
        });
        let mut controller: StorvscController<'_, _, _, _> =
            StorvscController::open(&guest, relid, waiter).unwrap();
        let max = controller.max_transfer_bytes();
        let disk = ScsiDisk::open(&mut controller, LunAddress::lun(0), max).unwrap();
        assert_eq!(
            (disk.block_size(), disk.num_blocks()),
            (512, (32 << 20) / 512)
        );

        // Guest: mount with embedded-sdmmc through the adapter.
        let vm: VolumeManager<_, _> = VolumeManager::new(SdmmcDisk::new(disk).unwrap(), FixedClock);
        {
            let volume = vm.open_volume(VolumeIdx(0)).expect("MBR volume 0 opens");
            let root = volume.open_root_dir().unwrap();

            // List the root directory.
            let mut names = Vec::new();
            root.iterate_dir(|e| {
                if !e.attributes.is_volume() {
                    names.push((e.name.to_string(), e.size, e.attributes.is_directory()));
                }
                ControlFlow::Continue(())
            })
            .unwrap();
            names.sort();
            assert_eq!(
                names,
                [
                    ("BLOB.BIN".to_owned(), blob.len() as u32, false),
                    ("README.TXT".to_owned(), readme.len() as u32, false),
                    ("SUBDIR".to_owned(), 0, true),
                ]
            );

            // Read the host's files back.
            let read_all = |dir: &storvsc::sdmmc::embedded_sdmmc::Directory<'_, _, _, 4, 4, 1>,
                            name: &str|
             -> Vec<u8> {
                let f = dir.open_file_in_dir(name, Mode::ReadOnly).unwrap();
                let mut out = Vec::new();
                let mut buf = [0u8; 1536]; // not a divisor of the cluster size
                while !f.is_eof() {
                    let n = f.read(&mut buf).unwrap();
                    out.extend_from_slice(&buf[..n]);
                }
                f.close().unwrap();
                out
            };
            assert_eq!(read_all(&root, "README.TXT"), readme);
            assert_eq!(read_all(&root, "BLOB.BIN"), blob);
            let sub = root.open_dir("SUBDIR").unwrap();
            assert_eq!(read_all(&sub, "NESTED.TXT"), nested);
            sub.close().unwrap();

            // Write new files: a small one, a multi-cluster one, and one in a new directory.
            let f = root
                .open_file_in_dir("NOTE.TXT", Mode::ReadWriteCreate)
                .unwrap();
            f.write(&note).unwrap();
            f.close().unwrap();
            let f = root
                .open_file_in_dir("DATA.BIN", Mode::ReadWriteCreate)
                .unwrap();
            write_chunked(|c| f.write(c).unwrap(), &data);
            f.close().unwrap();
            root.make_dir_in_dir("NEWDIR").unwrap();
            let newdir = root.open_dir("NEWDIR").unwrap();
            let f = newdir
                .open_file_in_dir("INNER.TXT", Mode::ReadWriteCreate)
                .unwrap();
            f.write(&inner).unwrap();
            f.close().unwrap();
            newdir.close().unwrap();

            // The guest reads its own writes back through a fresh open.
            assert_eq!(read_all(&root, "DATA.BIN"), data);

            root.close().unwrap();
            volume.close().unwrap();
        }
        assert!(!vm.has_open_handles());
        let (sdmmc, _clock) = vm.free();
        sdmmc.flush().expect("SYNCHRONIZE CACHE");
        let disk = sdmmc.into_inner();
        assert_eq!(disk.block_size(), 512);
        assert!(
            vsp.protocol_errors().is_empty(),
            "{:?}",
            vsp.protocol_errors()
        );
        assert_eq!(
            controller.close(),
            Released::Freed,
            "the channels close cleanly"
        );
    }
    drop(guest);
    drop(host);
    drop(vsp);

    // Host: the real tools judge what the guest did.
    // fsck.fat -n exits 0 only when it finds nothing to repair (lost clusters, bad chains,
    // FAT copies that differ, bad directory entries, sizes that disagree with chains).
    let report = image
        .fsck()
        .expect("fsck.fat -n finds the image clean after guest writes");
    eprintln!("{report}");
    let mut listing = image.list("").unwrap();
    listing.sort();
    assert_eq!(
        listing,
        [
            "BLOB.BIN",
            "DATA.BIN",
            "NEWDIR/",
            "NEWDIR/INNER.TXT",
            "NOTE.TXT",
            "README.TXT",
            "SUBDIR/",
            "SUBDIR/NESTED.TXT",
        ]
    );
    assert_eq!(image.read_file("NOTE.TXT").unwrap(), note);
    assert_eq!(image.read_file("DATA.BIN").unwrap(), data);
    assert_eq!(image.read_file("NEWDIR/INNER.TXT").unwrap(), inner);
    // The guest's writes did not disturb the host's files.
    assert_eq!(image.read_file("BLOB.BIN").unwrap(), blob);
    assert_eq!(image.read_file("README.TXT").unwrap(), readme);
    std::fs::remove_file(&path).unwrap();
}
