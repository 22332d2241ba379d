//! Demo part four: every device live at once on the one shared bus — the disk streams data
//! while the host's heartbeats and KVP requests are answered in the same loop, serviced the
//! way a kernel does it (the VMBus interrupt entry point, then each driver's channels) — and
//! then the host rescinds the disk with requests in flight.

use std::cell::RefCell;
use std::io;

use storvsc::controller::StorvscController;
use storvsc::queue::{Done, Memory, Tag};
use storvsc::request::LunAddress;
use vmbus_guest::{BoundedWait, Hal, Released, Transport, Vmbus};

use super::disk::DemoDisk;
use super::narrator::Narrator;
use crate::guest_ics::GuestIcs;
use crate::ic::IcHost;
use crate::vmbus::MockVmbusHost;

/// The blank LUN the section streams to (4 KiB sectors).
const LUN: u8 = 1;
const BLOCK: usize = 4096;
/// Blocks per request (64 KiB).
const BLOCKS_PER_IO: usize = 16;
/// Requests kept in flight while streaming.
const DEPTH: usize = 8;
/// Streaming rounds (one host step and one service pass each).
const ROUNDS: usize = 60;
/// Requests submitted right before the host rescinds the disk, of this many blocks each.
const IN_FLIGHT_AT_RESCIND: usize = 8;
const BLOCKS_AT_RESCIND: usize = 4;

/// What the loop saw.
#[derive(Default)]
struct Tally {
    bytes_done: u64,
    requests_done: u64,
    heartbeats: u64,
    kvp_reads: u64,
    interrupts_with_work: u64,
}

/// One request buffer per queue position, owned here until the controller gives it back.
struct Buffers {
    bufs: Vec<Vec<u8>>,
    /// The tag each buffer is lent under.
    lent: Vec<Option<Tag>>,
}

impl Buffers {
    fn new() -> Self {
        Self {
            bufs: (0..DEPTH.max(IN_FLIGHT_AT_RESCIND))
                .map(|i| vec![i as u8; BLOCKS_PER_IO * BLOCK])
                .collect(),
            lent: vec![None; DEPTH.max(IN_FLIGHT_AT_RESCIND)],
        }
    }

    fn free(&self) -> Option<usize> {
        self.lent.iter().position(Option::is_none)
    }

    fn give_back(&mut self, tag: Tag) {
        if let Some(l) = self.lent.iter_mut().find(|l| **l == Some(tag)) {
            *l = None;
        }
    }

    fn lent(&self) -> usize {
        self.lent.iter().filter(|l| l.is_some()).count()
    }
}

/// Runs the section: `services` are the open integration services, `disk` the demo disk
/// (whose LUN 1 is written and read here).
pub fn run<'b, T: Transport, H: Hal>(
    n: &mut Narrator<'_>,
    host: &mut MockVmbusHost,
    ics: &IcHost,
    bus: &'b Vmbus<T, H>,
    services: &mut GuestIcs<'_, T, H>,
    disk: &DemoDisk,
) -> io::Result<()> {
    n.section("Everything at once: disk I/O while the services answer, then a rescind")?;
    let host = RefCell::new(host);
    let waiter = BoundedWait::new(1_000, || {
        host.borrow_mut().step();
    });
    let mut controller: StorvscController<'b, T, H, _> =
        match StorvscController::open(bus, disk.relid(), waiter) {
            Ok(c) => c,
            Err(e) => {
                n.record("all devices at once", Err(format!("storvsc: {e}")))?;
                return Ok(());
            }
        };
    let mut buffers = Buffers::new();
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    let beats_before = ics.heartbeat.beats();
    let kvp_before = ics.kvp.reply_count();
    let mut lba = 0u64;
    let mut service = |controller: &mut StorvscController<'b, T, H, _>,
                       buffers: &mut Buffers,
                       tally: &mut Tally,
                       failures: &mut Vec<String>| {
        // The kernel's VMBus interrupt: atomics only, then each driver drains its channels.
        let mut work = bus.handle_interrupt();
        if !work.channels.is_empty() {
            tally.interrupts_with_work += 1;
        }
        if work.control {
            bus.poll();
        }
        let mut on_done = |d: Done| {
            match d.result.as_ref().map(|c| c.check(d_len())) {
                Ok(Ok(())) => {
                    tally.requests_done += 1;
                    tally.bytes_done += d_len() as u64;
                }
                Ok(Err(e)) => failures.push(e.to_string()),
                Err(e) => failures.push(e.to_string()),
            }
            if d.memory == Memory::Returned {
                buffers.give_back(d.tag);
            }
        };
        let _ = controller.poll_interrupt(&mut work, 64, &mut on_done);
        if let Err(e) = services.poll(|_, _| {}) {
            failures.push(e.to_string());
        }
    };
    for round in 0..ROUNDS {
        // The host's side of the round: heartbeats and KVP reads keep coming.
        if round % 6 == 0 {
            ics.heartbeat.beat_now();
        }
        if round % 15 == 7 {
            ics.kvp
                .enumerate(ic_services::protocol::KvpPool::AUTO.0, (round / 15) as u32);
        }
        // The guest keeps DEPTH requests in flight: writes, then reads of what it wrote.
        while let Some(i) = buffers.free() {
            if tally.requests_done + buffers.lent() as u64 >= (ROUNDS * 2) as u64 {
                break;
            }
            let write = (lba / BLOCKS_PER_IO as u64).is_multiple_of(2);
            let buf = &mut buffers.bufs[i];
            // SAFETY: `buf` stays allocated, unmoved and untouched until the controller
            // reports its tag with `Memory::Returned` (then `give_back`) or `close_with`
            // reclaims it; `buffers` outlives the controller.
            let submitted = unsafe {
                if write {
                    controller.submit_write(LunAddress::lun(LUN), lba, BLOCKS_PER_IO as u32, buf)
                } else {
                    controller.submit_read(
                        LunAddress::lun(LUN),
                        lba - BLOCKS_PER_IO as u64,
                        BLOCKS_PER_IO as u32,
                        buf,
                    )
                }
            };
            match submitted {
                Ok(tag) => buffers.lent[i] = Some(tag),
                Err(_) => break,
            }
            lba += BLOCKS_PER_IO as u64;
        }
        host.borrow_mut().step();
        service(&mut controller, &mut buffers, &mut tally, &mut failures);
    }
    for _ in 0..20 {
        if buffers.lent() == 0 {
            break;
        }
        host.borrow_mut().step();
        service(&mut controller, &mut buffers, &mut tally, &mut failures);
    }
    tally.heartbeats = ics.heartbeat.beats() - beats_before;
    tally.kvp_reads = (ics.kvp.reply_count() - kvp_before) as u64;
    n.say(&format!(
        "{} requests of {} KiB ({} MiB) moved over storvsc while the guest answered {} \
         heartbeats and {} KVP reads on the same bus; {} interrupts reported channel \
         work",
        tally.requests_done,
        BLOCKS_PER_IO * BLOCK / 1024,
        tally.bytes_done >> 20,
        tally.heartbeats,
        tally.kvp_reads,
        tally.interrupts_with_work
    ))?;
    let live_ok = failures.is_empty()
        && tally.requests_done > 0
        && tally.heartbeats > 0
        && tally.kvp_reads > 0;
    n.record(
        "all devices at once",
        if live_ok {
            Ok(format!(
                "{} MiB of disk I/O; {} heartbeats and {} KVP reads answered meanwhile",
                tally.bytes_done >> 20,
                tally.heartbeats,
                tally.kvp_reads
            ))
        } else {
            Err(format!("failures: {failures:?}"))
        },
    )?;

    // Requests go out, then the host takes the disk away before answering any of them.
    let mut submitted = 0;
    while let Some(i) = buffers.free() {
        let buf = &mut buffers.bufs[i][..BLOCKS_AT_RESCIND * BLOCK];
        // SAFETY: as above.
        match unsafe {
            controller.submit_read(LunAddress::lun(LUN), 0, BLOCKS_AT_RESCIND as u32, buf)
        } {
            Ok(tag) => {
                buffers.lent[i] = Some(tag);
                submitted += 1;
            }
            Err(_) => break,
        }
        if submitted == IN_FLIGHT_AT_RESCIND {
            break;
        }
    }
    let relid = disk.relid();
    host.borrow_mut().rescind(relid);
    n.say(&format!(
        "{submitted} reads in flight; the host rescinds the disk (relid {relid})"
    ))?;
    let mut ended = Vec::new();
    let mut interrupts = 0;
    for _ in 0..8 {
        if ended.len() == submitted {
            break;
        }
        interrupts += 1;
        let mut work = bus.handle_interrupt();
        let _ = controller.poll_interrupt(&mut work, 64, |d| {
            if d.memory == Memory::Returned {
                buffers.give_back(d.tag);
            }
            ended.push(d.result.err().map(|e| e.to_string()));
        });
        host.borrow_mut().step();
    }
    let failed = ended.iter().filter(|e| e.is_some()).count();
    let reason = ended.iter().flatten().next().cloned().unwrap_or_default();
    n.say(&format!(
        "after {interrupts} interrupt(s) and no other call: {failed} of {submitted} requests \
         completed with an error ({reason})"
    ))?;
    let released = controller.close_with(|r| {
        if r.memory == Released::Freed {
            buffers.give_back(r.tag);
        }
    });
    bus.poll();
    host.borrow_mut().step();
    let closed = match released {
        Released::Freed => "controller closed; the host confirmed, every buffer is the guest's",
        Released::Leaked => "controller closed, but memory had to be leaked",
    };
    n.say(closed)?;
    n.record(
        "rescind mid-I/O",
        if failed == submitted && submitted > 0 && released == Released::Freed {
            Ok(format!(
                "{failed}/{submitted} in-flight requests failed promptly on the interrupt path"
            ))
        } else {
            Err(format!(
                "{failed}/{submitted} failed; close {released:?}; {} buffers still lent",
                buffers.lent()
            ))
        },
    )?;
    Ok(())
}

/// Bytes per request.
fn d_len() -> u32 {
    (BLOCKS_PER_IO * BLOCK) as u32
}
