//! Servicing one channel in a host step: its outbound ring read (when signalled or polled),
//! each packet handed to the device model, and everything sent meanwhile published as one
//! batch.

use super::ErrorLog;
use super::host::Entry;

/// Services one channel's rings and model (`poll`: read the ring unsignalled; `mask`: keep
/// the guest's signals masked meanwhile). Everything the host sends on the channel meanwhile
/// (completions of the packets it read, backlog, the model's own packets) is published as
/// one batch with at most one interrupt. Returns the work done.
pub(super) fn service(
    relid: u32,
    e: &mut Entry,
    poll: bool,
    mask: bool,
    errors: &ErrorLog,
) -> usize {
    if !e.ch.is_open() {
        return 0;
    }
    let mut work = 0;
    e.ch.begin_batch();
    if (e.signalled || poll) && !e.reading_stalled {
        e.signalled = false;
        work += e.ch.flush_backlog();
        let drained = match e.ch.rings.as_mut() {
            Some(r) => {
                r.reader.set_mask(mask);
                r.reader.drain()
            }
            None => {
                e.ch.end_batch();
                return work;
            }
        };
        match drained {
            Ok(d) => {
                if d.signal_guest {
                    e.ch.signal_guest();
                }
                if d.more {
                    e.signalled = true;
                    work += 1;
                }
                for p in &d.packets {
                    work += 1;
                    e.ch.begin_request(p);
                    e.model.on_packet(&mut e.ch, p);
                }
                if let Some(r) = e.ch.rings.as_mut() {
                    r.reader.recycle(d.packets);
                }
            }
            Err(err) => {
                if let Some(r) = e.ch.rings.as_mut() {
                    r.corrupt = true;
                }
                errors.push(format!("channel {relid}: outbound ring: {err}"));
            }
        }
    }
    if e.ch.is_open() {
        let before = e.ch.packets_sent;
        e.model.poll(&mut e.ch);
        work += (e.ch.packets_sent - before) as usize;
    }
    e.ch.end_batch();
    work
}
