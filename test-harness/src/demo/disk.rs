//! Demo part four: a disk. The host serves a FAT image (made by `mkfs.fat` and `mcopy` when
//! they are installed, by the `fatfs` crate otherwise) and a blank 4 KiB-sector disk through
//! the storage VSP; the guest finds the LUNs over storvsc, mounts the FAT volume with
//! embedded-sdmmc, lists and reads it, writes a file and reads it back; the host then checks
//! the image with `fsck.fat` and reads the guest's file with `mtools`.

use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use storvsc::block::{BlockDevice, ScsiDisk, report_luns};
use storvsc::controller::StorvscController;
use storvsc::protocol::VstorVersion;
use storvsc::request::LunAddress;
use storvsc::sdmmc::SdmmcDisk;
use storvsc::sdmmc::embedded_sdmmc::{Mode, TimeSource, Timestamp, VolumeIdx, VolumeManager};
use vmbus_guest::protocol::Guid;
use vmbus_guest::{Hal, Released, Transport, Vmbus};

use super::narrator::Narrator;
use crate::disk_image::{BuiltWith, Entry, FatImage, FatKind};
use crate::storage::{Lun, SCSI_CLASS, StorageVsp, VspConfig};
use crate::vmbus::{DeviceOffer, MockVmbusHost};

/// The SCSI controller's instance GUID in the demo.
const INSTANCE: Guid = Guid::from_str_const("5a1e6a3c-2f1d-4e7b-9c0d-3b8a61d2e001");
/// What the host put on the FAT volume.
const README: &[u8] = b"Hello from the Hyper-V host!\r\n\
This FAT16 volume was formatted on the host and reached the guest over VMBus and storvsc.\r\n";
/// The file the guest writes.
const GUEST_FILE: &str = "GUEST.TXT";
/// Its contents.
const GUEST_TEXT: &[u8] = b"Written by a no_std Rust guest through storvsc GPA-direct I/O.\r\n";

/// The host side of the demo disk: the image and the VSP serving it.
pub struct DemoDisk {
    image: FatImage,
    built_with: BuiltWith,
    vsp: StorageVsp,
    relid: u32,
}

impl DemoDisk {
    /// The SCSI controller's relid.
    pub fn relid(&self) -> u32 {
        self.relid
    }
}

impl Drop for DemoDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.image.path());
    }
}

/// A path no other demo run uses, in this process (tests run demos in parallel) or another.
fn image_path() -> PathBuf {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("hyperv-demo-disk-{}-{run}.img", std::process::id()))
}

/// Makes the image and offers the SCSI controller (LUN 0: the FAT image, LUN 1: a blank
/// 4 KiB-sector disk).
pub fn offer(host: &mut MockVmbusHost) -> Result<DemoDisk, String> {
    let path = image_path();
    let (image, built_with) = FatImage::create(
        &path,
        16 << 20,
        FatKind::Fat16,
        "HYPERVDEMO",
        &[
            Entry::file("README.TXT", README.to_vec()),
            Entry::dir("BOOT"),
            Entry::file("BOOT/KERNEL.ELF", vec![0x7F; 40_000]),
        ],
    )
    .map_err(|e| e.to_string())?;
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| e.to_string())?;
    let offer = DeviceOffer::new(SCSI_CLASS, INSTANCE);
    let vsp = StorageVsp::new(VspConfig::default()).with_offer(offer.clone());
    vsp.add_lun(0, Lun::file(file, 512).map_err(|e| e.to_string())?);
    vsp.add_lun(1, Lun::memory(4096, 16_384));
    let relid = host.add_device(offer, Box::new(vsp.clone()));
    Ok(DemoDisk {
        image,
        built_with,
        vsp,
        relid,
    })
}

struct DemoClock;

impl TimeSource for DemoClock {
    fn get_timestamp(&self) -> Timestamp {
        Timestamp::from_calendar(2024, 1, 1, 0, 0, 4).unwrap_or(Timestamp {
            year_since_1970: 54,
            zero_indexed_month: 0,
            zero_indexed_day: 0,
            hours: 0,
            minutes: 0,
            seconds: 4,
        })
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// The guest's side: LUNs, capacities, the FAT volume; returns the step result and records
/// the VSTOR version the guest negotiated in `vstor`.
fn guest_side<T: Transport, H: Hal>(
    n: &mut Narrator<'_>,
    host: &mut MockVmbusHost,
    bus: &Vmbus<T, H>,
    relid: u32,
    vstor: &mut Option<VstorVersion>,
) -> Result<Result<String, String>, io::Error> {
    let waiter = vmbus_guest::BoundedWait::new(1_000, || {
        host.step();
    });
    let mut controller: StorvscController<'_, _, _, _> =
        match StorvscController::open(bus, relid, waiter) {
            Ok(c) => c,
            Err(e) => return Ok(Err(format!("storvsc: {e}"))),
        };
    let negotiated = *controller.negotiated();
    *vstor = Some(negotiated.version);
    n.say(&format!(
        "VSTOR {} negotiated; host allows {} KiB per request",
        negotiated.version,
        negotiated.max_transfer_bytes / 1024
    ))?;
    let mut luns = Vec::new();
    if let Err(e) = report_luns(&mut controller, LunAddress::lun(0), |l| luns.push(l)) {
        return Ok(Err(format!("REPORT LUNS: {e}")));
    }
    let max = controller.max_transfer_bytes();
    for &lun in &luns {
        match ScsiDisk::open(&mut controller, LunAddress::lun(lun), max) {
            Ok(disk) => {
                let inquiry = disk.inquiry();
                n.say(&format!(
                    "LUN {lun}: {} {} - {} blocks of {} bytes ({})",
                    String::from_utf8_lossy(&inquiry.vendor).trim(),
                    String::from_utf8_lossy(&inquiry.product).trim(),
                    disk.num_blocks(),
                    disk.block_size(),
                    human(disk.num_blocks() * u64::from(disk.block_size()))
                ))?;
            }
            Err(e) => return Ok(Err(format!("LUN {lun}: {e}"))),
        }
    }
    let disk = match ScsiDisk::open(&mut controller, LunAddress::lun(0), max) {
        Ok(d) => d,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let sdmmc = match SdmmcDisk::new(disk) {
        Ok(d) => d,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let vm: VolumeManager<_, _> = VolumeManager::new(sdmmc, DemoClock);
    let result = (|| -> Result<String, String> {
        let volume = vm.open_volume(VolumeIdx(0)).map_err(|e| format!("{e:?}"))?;
        let root = volume.open_root_dir().map_err(|e| format!("{e:?}"))?;
        let mut listing = Vec::new();
        root.iterate_dir(|e| {
            if !e.attributes.is_volume() {
                listing.push((e.name.to_string(), e.size, e.attributes.is_directory()));
            }
            ControlFlow::Continue(())
        })
        .map_err(|e| format!("{e:?}"))?;
        n.say("guest mounts LUN 0 (FAT16, embedded-sdmmc) and lists /:")
            .map_err(|e| e.to_string())?;
        for (name, size, dir) in &listing {
            let kind = if *dir {
                "<DIR>".to_string()
            } else {
                size.to_string()
            };
            n.say(&format!("    {name:<12} {kind:>8}"))
                .map_err(|e| e.to_string())?;
        }
        let read = |name: &str| -> Result<Vec<u8>, String> {
            let f = root
                .open_file_in_dir(name, Mode::ReadOnly)
                .map_err(|e| format!("{e:?}"))?;
            let mut out = Vec::new();
            let mut buf = [0u8; 512];
            while !f.is_eof() {
                let k = f.read(&mut buf).map_err(|e| format!("{e:?}"))?;
                out.extend_from_slice(&buf[..k]);
            }
            f.close().map_err(|e| format!("{e:?}"))?;
            Ok(out)
        };
        let readme = read("README.TXT")?;
        let first_line = String::from_utf8_lossy(&readme);
        n.say(&format!(
            "guest reads README.TXT: \"{}\"",
            first_line.lines().next().unwrap_or_default()
        ))
        .map_err(|e| e.to_string())?;
        let f = root
            .open_file_in_dir(GUEST_FILE, Mode::ReadWriteCreateOrTruncate)
            .map_err(|e| format!("{e:?}"))?;
        f.write(GUEST_TEXT).map_err(|e| format!("{e:?}"))?;
        f.close().map_err(|e| format!("{e:?}"))?;
        let back = read(GUEST_FILE)?;
        if back != GUEST_TEXT {
            return Err("the guest read back something else than it wrote".into());
        }
        n.say(&format!(
            "guest writes {GUEST_FILE} ({} bytes) and reads it back intact",
            GUEST_TEXT.len()
        ))
        .map_err(|e| e.to_string())?;
        root.close().map_err(|e| format!("{e:?}"))?;
        volume.close().map_err(|e| format!("{e:?}"))?;
        Ok(format!(
            "{} LUNs; FAT listing of {} entries; {GUEST_FILE} written and read back",
            luns.len(),
            listing.len()
        ))
    })();
    let (sdmmc, _) = vm.free();
    if let Err(e) = sdmmc.into_inner().flush() {
        return Ok(Err(format!("flush: {e}")));
    }
    if controller.close() == Released::Leaked {
        return Ok(Err(
            "close: the host did not confirm it let go of the channels (memory leaked)".into(),
        ));
    }
    Ok(result)
}

/// Runs the disk part of the demo: the guest opens the controller on `bus` (shared with the
/// other drivers), waiting by stepping `host`. Returns the VSTOR version the guest negotiated
/// (for the status screen), if it got that far.
pub fn run<T: Transport, H: Hal>(
    n: &mut Narrator<'_>,
    host: &mut MockVmbusHost,
    bus: &Vmbus<T, H>,
    disk: &DemoDisk,
) -> io::Result<Option<VstorVersion>> {
    n.section("Disk: storvsc, LUNs, a FAT volume")?;
    n.say(&format!(
        "host image {} made with {}",
        disk.image.path().display(),
        match disk.built_with {
            BuiltWith::RealTools => "mkfs.fat and mcopy",
            BuiltWith::PureRust => "the fatfs crate (dosfstools not installed)",
        }
    ))?;
    let mut vstor = None;
    let guest = guest_side(n, host, bus, disk.relid, &mut vstor)?;
    let ok = n.record("disk", guest)?;
    if ok {
        let checked = host_check(n, disk.image.path(), disk);
        n.record("host checks the image", checked)?;
    }
    Ok(vstor)
}

fn host_check(n: &mut Narrator<'_>, path: &Path, disk: &DemoDisk) -> Result<String, String> {
    if !disk.vsp.protocol_errors().is_empty() {
        return Err(format!("storage VSP: {:?}", disk.vsp.protocol_errors()));
    }
    if disk.built_with == BuiltWith::PureRust {
        return Ok("fsck.fat not installed; skipped (apt-get install dosfstools mtools)".into());
    }
    let image = FatImage::open(path);
    image.fsck().map_err(|e| e.to_string())?;
    let text = image.read_file(GUEST_FILE).map_err(|e| e.to_string())?;
    if text != GUEST_TEXT {
        return Err(format!("mtools read back {} other bytes", text.len()));
    }
    let _ = n.say(&format!(
        "host: fsck.fat -n says the volume is clean; mcopy reads {GUEST_FILE} back intact"
    ));
    Ok("fsck.fat clean; mtools reads the guest's file".into())
}
