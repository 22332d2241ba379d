//! Disks: the synthetic SCSI controller (storvsc), its LUNs (REPORT LUNS, INQUIRY, READ
//! CAPACITY) and each disk's partition table (MBR, or GPT behind a protective MBR), read
//! through GPA-direct I/O into a buffer on this stack (identity mapped, so host-visible).

use storvsc::block::{BlockDevice, ScsiDisk, report_luns};
use storvsc::controller::StorvscController;
use storvsc::request::LunAddress;
use vmbus_guest::Released;
use vmbus_guest::protocol::DeviceClass;

use crate::hyperv::{self, Bus, SECOND, Transport, Waiter};
use crate::memory::KernelHal;
use crate::println;
use crate::status::{Status, line};

type Controller = StorvscController<'static, Transport, KernelHal, Waiter>;

/// Largest logical block this reads (Hyper-V disks have 512- or 4096-byte blocks).
const MAX_BLOCK: usize = 4096;

/// Opens the first SCSI controller, describes every LUN and its partition table, and closes
/// the controller again.
pub fn survey(bus: &'static Bus, status: &mut Status) {
    let Some(offer) = bus.find(DeviceClass::Scsi, None) else {
        println!("disk: the host offered no SCSI controller");
        return;
    };
    let mut slot: Option<Controller> = None;
    let waiter = hyperv::waiter(10 * SECOND);
    let controller =
        match StorvscController::open_in(&mut slot, bus, offer.relid, waiter, Default::default()) {
            Ok(c) => c,
            Err(e) => {
                println!("disk: storvsc: {e}");
                return;
            }
        };
    let negotiated = *controller.negotiated();
    println!(
        "disk: storvsc on relid {}: VSTOR {}, {} channel(s), {} KiB per request",
        offer.relid,
        negotiated.version,
        controller.channel_count(),
        negotiated.max_transfer_bytes / 1024
    );
    let mut luns = heapless::Vec::<u8, 16>::new();
    if let Err(e) = report_luns(controller, LunAddress::lun(0), |l| {
        let _ = luns.push(l);
    }) {
        println!("disk: REPORT LUNS: {e}");
    }
    let max = controller.max_transfer_bytes();
    for &lun in &luns {
        match ScsiDisk::open(&mut *controller, LunAddress::lun(lun), max) {
            Ok(mut disk) => describe(lun, &mut disk, status),
            Err(e) => println!("disk: LUN {lun}: {e}"),
        }
    }
    if let Some(controller) = slot.take()
        && controller.close() == Released::Leaked
    {
        println!("disk: the host did not confirm the close; its ring memory stays leaked");
    }
}

fn describe<T: storvsc::block::ScsiTransport>(
    lun: u8,
    disk: &mut ScsiDisk<T>,
    status: &mut Status,
) {
    let inquiry = *disk.inquiry();
    let vendor = trimmed(&inquiry.vendor);
    let product = trimmed(&inquiry.product);
    let bytes = disk
        .num_blocks()
        .saturating_mul(u64::from(disk.block_size()));
    let mut block = [0u8; MAX_BLOCK];
    let table = partition_table(disk, &mut block);
    println!(
        "disk: LUN {lun}: {vendor} {product}, {} MiB in {}-byte blocks; {table}",
        bytes >> 20,
        disk.block_size()
    );
    let _ = status.disks.push(line(format_args!(
        "LUN {lun}: {product}, {} MiB, {table}",
        bytes >> 20
    )));
}

/// ASCII text of a fixed-width INQUIRY field.
fn trimmed(field: &[u8]) -> &str {
    core::str::from_utf8(field).unwrap_or("?").trim()
}

/// What the partition table says, in a few words.
#[derive(Debug)]
enum Table {
    Unreadable,
    None,
    Mbr(usize),
    Gpt(usize),
}

impl core::fmt::Display for Table {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Unreadable => f.write_str("partition table unreadable"),
            Self::None => f.write_str("no partition table"),
            Self::Mbr(n) => write!(f, "MBR, {n} partition(s)"),
            Self::Gpt(n) => write!(f, "GPT, {n} partition(s)"),
        }
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from(le_u32(b, at)) | (u64::from(le_u32(b, at + 4)) << 32)
}

/// Reads LBA 0 (and for GPT, LBA 1 and the first blocks of entries) and counts partitions.
fn partition_table<T: storvsc::block::ScsiTransport>(
    disk: &mut ScsiDisk<T>,
    block: &mut [u8; MAX_BLOCK],
) -> Table {
    let bs = disk.block_size() as usize;
    if !(512..=MAX_BLOCK).contains(&bs) {
        return Table::Unreadable;
    }
    let block = &mut block[..bs];
    if disk.read_blocks(0, block).is_err() {
        return Table::Unreadable;
    }
    if block[510..512] != [0x55, 0xAA] {
        return Table::None;
    }
    let entries = || (0..4).map(|i| 446 + 16 * i);
    let protective = entries().any(|e| block[e + 4] == 0xEE);
    if !protective {
        return Table::Mbr(entries().filter(|&e| block[e + 4] != 0).count());
    }
    if disk.read_blocks(1, block).is_err() || &block[..8] != b"EFI PART" {
        return Table::Unreadable;
    }
    let entries_lba = le_u64(block, 72);
    let count = le_u32(block, 80) as usize;
    let entry_size = le_u32(block, 84) as usize;
    if entry_size < 128 || entry_size > bs || !entry_size.is_power_of_two() {
        return Table::Unreadable;
    }
    // The first four blocks of entries: all of a usual 128-entry table on 4 KiB disks, and
    // the first 16 entries on 512-byte disks.
    let mut used = 0;
    let per_block = bs / entry_size;
    for b in 0..4u64 {
        if b as usize * per_block >= count || disk.read_blocks(entries_lba + b, block).is_err() {
            break;
        }
        used += block
            .chunks_exact(entry_size)
            .filter(|e| e[..16].iter().any(|&x| x != 0))
            .count();
    }
    Table::Gpt(used)
}
