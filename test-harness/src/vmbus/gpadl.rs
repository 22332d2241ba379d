//! GPADL bookkeeping on the host: assembling GPADL_HEADER + GPADL_BODY messages, validating the
//! range list against guest RAM (vmbus-core §6) and addressing bytes of a live GPADL.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use super::mem::GuestRam;
use crate::hv::{HostMapping, MockHypervisor, ViolationHook};

/// One GPA range of a GPADL: byte count, byte offset into the first page, PFNs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpadlRange {
    /// Bytes described.
    pub byte_count: u32,
    /// Offset into the first page (< 4096).
    pub byte_offset: u32,
    /// Page frame numbers, ceil((offset + count) / 4096) of them.
    pub pfns: Vec<u64>,
}

/// A complete, validated GPADL.
#[derive(Clone, Debug)]
pub(crate) struct Gpadl {
    /// Channel the GPADL was created for.
    pub relid: u32,
    /// Its ranges.
    pub ranges: Vec<GpadlRange>,
    /// Used as the ring buffer of an open (or opening) channel.
    pub in_use_by: Option<u32>,
    /// GPADL_TEARDOWN arrived while in use: answer TORNDOWN when the channel closes.
    pub teardown_pending: bool,
    /// The host's mapping of the pages (dropped, i.e. unmapped, with the GPADL, or earlier
    /// when the channel is rescinded).
    pub mapping: Option<Arc<HostMapping>>,
}

impl Gpadl {
    /// The PFN list when every range is whole pages (offset 0, count a multiple of 4096).
    pub fn whole_pages(&self) -> Option<Vec<u64>> {
        let mut pages = Vec::new();
        for r in &self.ranges {
            if r.byte_offset != 0 || !r.byte_count.is_multiple_of(4096) {
                return None;
            }
            pages.extend_from_slice(&r.pfns);
        }
        Some(pages)
    }

    /// Total bytes described.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|r| u64::from(r.byte_count)).sum()
    }

    /// Calls `f(gpa, range)` for each guest-physical piece of `[offset, offset + len)` of the
    /// GPADL's byte stream, in order (`range`: where the piece lies within those `len` bytes),
    /// stopping at the first error; `None` if the bytes are not all inside the GPADL.
    pub fn for_each_piece<E>(
        &self,
        mut offset: u64,
        len: usize,
        mut f: impl FnMut(u64, Range<usize>) -> Result<(), E>,
    ) -> Option<Result<(), E>> {
        if offset.checked_add(len as u64)? > self.len() {
            return None;
        }
        let mut done = 0;
        for r in &self.ranges {
            let count = u64::from(r.byte_count);
            if offset >= count {
                offset -= count;
                continue;
            }
            while done < len && offset < count {
                let abs = u64::from(r.byte_offset) + offset;
                let page = (abs / 4096) as usize;
                let in_page = abs % 4096;
                let n = (4096 - in_page)
                    .min((len - done) as u64)
                    .min(count - offset) as usize;
                if let Err(e) = f(r.pfns[page] * 4096 + in_page, done..done + n) {
                    return Some(Err(e));
                }
                offset += n as u64;
                done += n;
            }
            if done == len {
                break;
            }
            offset = 0;
        }
        Some(Ok(()))
    }
}

/// A GPADL whose header arrived but whose bodies are still missing.
#[derive(Debug)]
struct Pending {
    relid: u32,
    range_count: u16,
    /// range_buflen / 8: qwords expected in total.
    expected: usize,
    qwords: Vec<u64>,
}

/// Outcome of feeding a GPADL message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GpadlProgress {
    /// More GPADL_BODY messages are needed.
    Incomplete,
    /// Complete and valid: answer GPADL_CREATED(relid, handle, 0).
    Created { relid: u32, handle: u32 },
    /// Complete (or broken) and invalid: answer GPADL_CREATED with a failure status.
    Failed {
        relid: u32,
        handle: u32,
        reason: String,
    },
}

/// Live and in-progress GPADLs of one connection.
#[derive(Default)]
pub(crate) struct GpadlTable {
    pending: BTreeMap<u32, Pending>,
    pub live: BTreeMap<u32, Gpadl>,
    /// Where complete GPADLs are registered as host-mapped (none in bare unit tests).
    mapper: Option<(MockHypervisor, ViolationHook)>,
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

impl GpadlTable {
    /// An empty table whose complete GPADLs are registered with `hv` as host-mapped until
    /// they are removed (vmbus-core §6.3: the guest keeps the memory until GPADL_TORNDOWN);
    /// a guest free of their pages meanwhile goes to `hook`.
    pub fn new(hv: MockHypervisor, hook: ViolationHook) -> Self {
        Self {
            mapper: Some((hv, hook)),
            ..Self::default()
        }
    }

    /// The host stops mapping the GPADLs of `relid` without forgetting them: after it
    /// rescinded the channel it no longer touches them (vmbus-core §6.4 step 4, Linux treats
    /// them as revoked), though it still answers their GPADL_TEARDOWN.
    pub fn revoke_channel(&mut self, relid: u32) {
        for g in self.live.values_mut().filter(|g| g.relid == relid) {
            g.mapping = None;
        }
    }

    /// Forgets everything (UNLOAD).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.live.clear();
    }

    /// Whether `handle` is live or being assembled.
    pub fn in_use(&self, handle: u32) -> bool {
        self.pending.contains_key(&handle) || self.live.contains_key(&handle)
    }

    /// Whether `handle` is being assembled.
    pub fn is_pending(&self, handle: u32) -> bool {
        self.pending.contains_key(&handle)
    }

    /// GPADL_HEADER: `msg` is the whole message. Caller checked the relid; errors in the
    /// message itself are returned as `Err` (protocol error, no GPADL state kept) when the
    /// handle cannot be trusted, or as `Failed` once the handle is known.
    pub fn header(&mut self, msg: &[u8], ram: &GuestRam) -> Result<GpadlProgress, String> {
        if msg.len() < 28 || msg.len() > 240 {
            return Err(format!(
                "GPADL_HEADER of {} bytes (must be 28..=240)",
                msg.len()
            ));
        }
        let relid = u32::from_le_bytes([msg[8], msg[9], msg[10], msg[11]]);
        let handle = u32::from_le_bytes([msg[12], msg[13], msg[14], msg[15]]);
        let buflen = u16::from_le_bytes([msg[16], msg[17]]);
        let range_count = u16::from_le_bytes([msg[18], msg[19]]);
        if handle == 0 {
            return Err("GPADL_HEADER with handle 0".into());
        }
        if self.in_use(handle) {
            return Err(format!(
                "GPADL_HEADER reuses handle {handle:#x}, which is live or in progress"
            ));
        }
        let fail = |reason: String| {
            Ok(GpadlProgress::Failed {
                relid,
                handle,
                reason,
            })
        };
        if range_count == 0 {
            return fail("GPADL_HEADER with range count 0".into());
        }
        if !buflen.is_multiple_of(8) || buflen < 16 {
            return fail(format!(
                "GPADL_HEADER range_buflen {buflen} (must be a multiple of 8, at least 16)"
            ));
        }
        if usize::from(buflen) < usize::from(range_count) * 16 {
            return fail(format!(
                "range_buflen {buflen} too small for {range_count} ranges"
            ));
        }
        let expected = usize::from(buflen) / 8;
        let in_msg = (msg.len() - 20) / 8;
        let take = in_msg.min(expected);
        // Extra qwords in the message are tolerated only as zero padding (UEFI posts 240 bytes).
        if msg[20 + take * 8..].iter().any(|&b| b != 0) {
            return fail(format!(
                "GPADL_HEADER carries {} bytes beyond range_buflen {buflen}",
                msg.len() - 20 - take * 8
            ));
        }
        let qwords = msg[20..20 + take * 8].chunks(8).map(le_u64).collect();
        self.pending.insert(
            handle,
            Pending {
                relid,
                range_count,
                expected,
                qwords,
            },
        );
        Ok(self.maybe_complete(handle, ram))
    }

    /// GPADL_BODY: `msg` is the whole message.
    pub fn body(&mut self, msg: &[u8], ram: &GuestRam) -> Result<GpadlProgress, String> {
        if msg.len() < 24 || msg.len() > 240 {
            return Err(format!(
                "GPADL_BODY of {} bytes (must be 24..=240)",
                msg.len()
            ));
        }
        let handle = u32::from_le_bytes([msg[12], msg[13], msg[14], msg[15]]);
        let Some(p) = self.pending.get_mut(&handle) else {
            return Err(format!(
                "GPADL_BODY for handle {handle:#x}, which is not in progress"
            ));
        };
        let remaining = p.expected - p.qwords.len();
        let in_msg = (msg.len() - 16) / 8;
        let take = in_msg.min(remaining);
        if msg[16 + take * 8..].iter().any(|&b| b != 0) {
            let relid = p.relid;
            self.pending.remove(&handle);
            return Ok(GpadlProgress::Failed {
                relid,
                handle,
                reason: format!(
                    "GPADL_BODY carries {} more PFNs than range_buflen announced",
                    in_msg - take
                ),
            });
        }
        p.qwords
            .extend(msg[16..16 + take * 8].chunks(8).map(le_u64));
        Ok(self.maybe_complete(handle, ram))
    }

    fn maybe_complete(&mut self, handle: u32, ram: &GuestRam) -> GpadlProgress {
        let Some(p) = self.pending.get(&handle) else {
            return GpadlProgress::Incomplete;
        };
        if p.qwords.len() < p.expected {
            return GpadlProgress::Incomplete;
        }
        let Some(p) = self.pending.remove(&handle) else {
            return GpadlProgress::Incomplete;
        };
        match parse_ranges(&p.qwords, p.range_count, ram) {
            Ok(ranges) => {
                let mapping = self.mapper.as_ref().map(|(hv, hook)| {
                    Arc::new(hv.map_for_host(
                        format!("GPADL {handle:#x} of relid {} (not torn down)", p.relid),
                        ranges.iter().flat_map(|r| r.pfns.iter().copied()),
                        Some(hook.clone()),
                    ))
                });
                self.live.insert(
                    handle,
                    Gpadl {
                        relid: p.relid,
                        ranges,
                        in_use_by: None,
                        teardown_pending: false,
                        mapping,
                    },
                );
                GpadlProgress::Created {
                    relid: p.relid,
                    handle,
                }
            }
            Err(reason) => GpadlProgress::Failed {
                relid: p.relid,
                handle,
                reason,
            },
        }
    }

    /// Drops every GPADL (live or pending) created for `relid`.
    pub fn drop_channel(&mut self, relid: u32) {
        self.pending.retain(|_, p| p.relid != relid);
        self.live.retain(|_, g| g.relid != relid);
    }
}

/// Decodes `range_count` ranges from the qword stream and checks them against guest RAM.
fn parse_ranges(q: &[u64], range_count: u16, ram: &GuestRam) -> Result<Vec<GpadlRange>, String> {
    let mut ranges = Vec::new();
    let mut i = 0;
    for n in 0..range_count {
        let Some(&desc) = q.get(i) else {
            return Err(format!("range {n} missing (range_buflen too small)"));
        };
        i += 1;
        let byte_count = desc as u32;
        let byte_offset = (desc >> 32) as u32;
        if byte_count == 0 {
            return Err(format!("range {n} has byte count 0"));
        }
        if byte_offset >= 4096 {
            return Err(format!("range {n} byte offset {byte_offset} >= 4096"));
        }
        let pages = (u64::from(byte_offset) + u64::from(byte_count)).div_ceil(4096) as usize;
        let Some(pfns) = q.get(i..i + pages) else {
            return Err(format!(
                "range {n} needs {pages} PFNs but range_buflen ends first"
            ));
        };
        i += pages;
        if let Some(bad) = pfns.iter().find(|&&pfn| !ram.contains_pfn(pfn)) {
            return Err(format!("range {n}: PFN {bad:#x} is outside guest RAM"));
        }
        ranges.push(GpadlRange {
            byte_count,
            byte_offset,
            pfns: pfns.to_vec(),
        });
    }
    if i != q.len() {
        return Err(format!(
            "range_buflen announces {} qwords but the {range_count} ranges use {i}",
            q.len()
        ));
    }
    Ok(ranges)
}
