//! GPADLs (vmbus-core §6): describing guest pages to the host as one GPA range, split across a
//! GPADL_HEADER (26 PFNs) and GPADL_BODY messages (28 PFNs each), and the connection-wide table
//! of GPADL handles and their state.

#![forbid(unsafe_code)]

use crate::error::{ProtocolViolation, VmbusError};
use crate::hal::{HV_PAGE_SIZE, HalError};
use crate::protocol::{
    GPADL_BODY_FIXED_SIZE, GPADL_HEADER_FIXED_SIZE, GpaRange, GpadlBody, GpadlHeader,
    MAX_MESSAGE_SIZE, PFNS_PER_GPADL_BODY, PFNS_PER_GPADL_HEADER, gpadl_range_buflen,
};
use heapless::Vec;
use zerocopy::IntoBytes;

/// Most GPADLs (ring buffers and device buffers) alive on one connection.
pub const MAX_GPADLS: usize = 128;

/// First handle handed out (Linux's choice, easy to spot in traces).
pub const FIRST_GPADL_HANDLE: u32 = 0xE1E10;

/// Largest buffer one GPADL describes: range_buflen (u16) = 8 + 8·pages.
pub const MAX_GPADL_PAGES: usize = (u16::MAX as usize - 8) / 8;

/// Builds the GPADL_HEADER and GPADL_BODY messages describing `pages` 4 KiB pages as one range
/// (offset 0, byte count = pages·4096), calling `emit` with each message in order.
///
/// `pfn_of(i)` gives the PFN of page `i`; it is called for every page before the first
/// message is emitted, so a translation failure posts nothing (no half-described GPADL).
pub fn build_gpadl_messages(
    relid: u32,
    handle: u32,
    pages: usize,
    mut pfn_of: impl FnMut(usize) -> Result<u64, HalError>,
    mut emit: impl FnMut(&[u8]) -> Result<(), VmbusError>,
) -> Result<(), VmbusError> {
    if pages == 0 || pages > MAX_GPADL_PAGES {
        return Err(VmbusError::GpadlTooLarge);
    }
    let buflen = gpadl_range_buflen(pages).ok_or(VmbusError::GpadlTooLarge)?;
    let byte_count = u32::try_from(pages * HV_PAGE_SIZE).map_err(|_| VmbusError::GpadlTooLarge)?;
    for i in 0..pages {
        pfn_of(i)?;
    }
    let mut msg = [0u8; MAX_MESSAGE_SIZE];
    let header = GpadlHeader::new(relid, handle, buflen, 1);
    let range = GpaRange {
        byte_count,
        byte_offset: 0,
    };
    msg[..20].copy_from_slice(header.as_bytes());
    msg[20..GPADL_HEADER_FIXED_SIZE].copy_from_slice(range.as_bytes());
    let first = pages.min(PFNS_PER_GPADL_HEADER);
    let mut len = GPADL_HEADER_FIXED_SIZE;
    for i in 0..first {
        msg[len..len + 8].copy_from_slice(&pfn_of(i)?.to_le_bytes());
        len += 8;
    }
    emit(&msg[..len])?;
    let mut next = first;
    let body = GpadlBody::new(handle);
    while next < pages {
        let n = (pages - next).min(PFNS_PER_GPADL_BODY);
        msg[..GPADL_BODY_FIXED_SIZE].copy_from_slice(body.as_bytes());
        let mut len = GPADL_BODY_FIXED_SIZE;
        for i in next..next + n {
            msg[len..len + 8].copy_from_slice(&pfn_of(i)?.to_le_bytes());
            len += 8;
        }
        emit(&msg[..len])?;
        next += n;
    }
    Ok(())
}

/// Where one GPADL is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpadlState {
    /// GPADL_HEADER (+ bodies) sent; waiting for GPADL_CREATED.
    Creating,
    /// GPADL_CREATED with status 0: the host maps the pages.
    Created,
    /// GPADL_CREATED with a failure status.
    Failed(u32),
    /// GPADL_TEARDOWN sent; waiting for GPADL_TORNDOWN (the memory stays the host's).
    TearingDown,
    /// GPADL_TORNDOWN arrived: the memory may be freed.
    TornDown,
    /// The channel was rescinded before an answer: the result is unknown, so the memory must
    /// be leaked, never reused.
    Revoked,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    handle: u32,
    relid: u32,
    state: GpadlState,
}

/// GPADL handles of one connection: unique among live GPADLs (bodies carry only the handle).
#[derive(Debug)]
pub struct GpadlTable {
    entries: Vec<Entry, MAX_GPADLS>,
    next: u32,
}

impl Default for GpadlTable {
    fn default() -> Self {
        Self::new()
    }
}

impl GpadlTable {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
            next: FIRST_GPADL_HANDLE,
        }
    }

    /// Reserves a fresh non-zero handle for `relid` in state [`GpadlState::Creating`].
    pub fn allocate(&mut self, relid: u32) -> Result<u32, VmbusError> {
        if self.entries.is_full() {
            return Err(VmbusError::TableFull);
        }
        let handle = loop {
            let h = self.next;
            self.next = self.next.wrapping_add(1);
            if h != 0 && !self.entries.iter().any(|e| e.handle == h) {
                break h;
            }
        };
        self.entries
            .push(Entry {
                handle,
                relid,
                state: GpadlState::Creating,
            })
            .map_err(|_| VmbusError::TableFull)?;
        Ok(handle)
    }

    /// State of `handle`.
    pub fn state(&self, handle: u32) -> Option<GpadlState> {
        self.find(handle).map(|e| e.state)
    }

    /// Relid a handle was created for.
    pub fn relid(&self, handle: u32) -> Option<u32> {
        self.find(handle).map(|e| e.relid)
    }

    fn find(&self, handle: u32) -> Option<&Entry> {
        self.entries.iter().find(|e| e.handle == handle)
    }

    pub(crate) fn set_state(&mut self, handle: u32, state: GpadlState) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.handle == handle) {
            e.state = state;
        }
    }

    /// Forgets `handle` (after TORNDOWN, a failed creation, or to leak a revoked one).
    pub fn remove(&mut self, handle: u32) {
        if let Some(i) = self.entries.iter().position(|e| e.handle == handle) {
            self.entries.swap_remove(i);
        }
    }

    /// GPADL_CREATED: only for a handle in `Creating` of the same relid.
    pub(crate) fn on_created(
        &mut self,
        relid: u32,
        handle: u32,
        status: u32,
    ) -> Result<(), ProtocolViolation> {
        match self.entries.iter_mut().find(|e| e.handle == handle) {
            Some(e) if e.state == GpadlState::Creating && e.relid == relid => {
                e.state = if status == 0 {
                    GpadlState::Created
                } else {
                    GpadlState::Failed(status)
                };
                Ok(())
            }
            _ => Err(ProtocolViolation::UnknownGpadl(handle)),
        }
    }

    /// GPADL_TORNDOWN: only for a handle being torn down.
    pub(crate) fn on_torndown(&mut self, handle: u32) -> Result<(), ProtocolViolation> {
        match self.entries.iter_mut().find(|e| e.handle == handle) {
            Some(e) if matches!(e.state, GpadlState::TearingDown | GpadlState::Revoked) => {
                e.state = GpadlState::TornDown;
                Ok(())
            }
            _ => Err(ProtocolViolation::UnknownGpadl(handle)),
        }
    }

    /// The channel was rescinded: creations waiting for GPADL_CREATED end, their memory is
    /// not reusable. Teardowns keep waiting (bounded) for GPADL_TORNDOWN.
    pub(crate) fn revoke_channel(&mut self, relid: u32) {
        for e in self.entries.iter_mut().filter(|e| e.relid == relid) {
            if e.state == GpadlState::Creating {
                e.state = GpadlState::Revoked;
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// Number of GPADLs tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no GPADL is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec as StdVec;

    fn build(pages: usize) -> StdVec<StdVec<u8>> {
        let mut out = StdVec::new();
        build_gpadl_messages(
            7,
            0xE1E10,
            pages,
            |i| Ok(0x1000 + i as u64 * 3),
            |m| {
                out.push(m.to_vec());
                Ok(())
            },
        )
        .unwrap();
        out
    }

    fn pfns(msgs: &[StdVec<u8>]) -> StdVec<u64> {
        let mut v = StdVec::new();
        for (i, m) in msgs.iter().enumerate() {
            let start = if i == 0 { 28 } else { 16 };
            for c in m[start..].chunks_exact(8) {
                v.push(u64::from_le_bytes(c.try_into().unwrap()));
            }
        }
        v
    }

    #[test]
    fn split_sizes_and_contents() {
        for pages in [1usize, 26, 27, 54, 55, 256, 1000] {
            let msgs = build(pages);
            let bodies = crate::protocol::gpadl_body_messages_needed(pages);
            assert_eq!(msgs.len(), 1 + bodies, "{pages}");
            assert!(msgs.iter().all(|m| m.len() <= 240));
            assert_eq!(msgs[0][0], 8);
            assert_eq!(msgs[0].len(), 28 + 8 * pages.min(26));
            let buflen = u16::from_le_bytes([msgs[0][16], msgs[0][17]]) as usize;
            assert_eq!(buflen, 8 + 8 * pages);
            assert_eq!(u16::from_le_bytes([msgs[0][18], msgs[0][19]]), 1);
            let count = u32::from_le_bytes(msgs[0][20..24].try_into().unwrap());
            assert_eq!(count as usize, pages * 4096);
            for b in &msgs[1..] {
                assert_eq!(b[0], 9);
                assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 0xE1E10);
            }
            let expect: StdVec<u64> = (0..pages).map(|i| 0x1000 + i as u64 * 3).collect();
            assert_eq!(pfns(&msgs), expect);
        }
        assert_eq!(build(256).len(), 10);
    }

    #[test]
    fn translation_failure_posts_nothing() {
        let mut posted = 0;
        let r = build_gpadl_messages(
            1,
            2,
            40,
            |i| {
                if i == 30 {
                    Err(HalError::NotTranslatable)
                } else {
                    Ok(i as u64)
                }
            },
            |_| {
                posted += 1;
                Ok(())
            },
        );
        assert_eq!(r, Err(VmbusError::Hal(HalError::NotTranslatable)));
        assert_eq!(posted, 0);
        assert_eq!(
            build_gpadl_messages(1, 2, 0, |_| Ok(0), |_| Ok(())),
            Err(VmbusError::GpadlTooLarge)
        );
        assert_eq!(
            build_gpadl_messages(1, 2, MAX_GPADL_PAGES + 1, |_| Ok(0), |_| Ok(())),
            Err(VmbusError::GpadlTooLarge)
        );
    }

    #[test]
    fn handles_unique_and_states() {
        let mut t = GpadlTable::new();
        let a = t.allocate(1).unwrap();
        let b = t.allocate(1).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            t.on_created(2, a, 0),
            Err(ProtocolViolation::UnknownGpadl(a))
        );
        assert_eq!(
            t.on_created(1, 999, 0),
            Err(ProtocolViolation::UnknownGpadl(999))
        );
        t.on_created(1, a, 0).unwrap();
        assert_eq!(t.state(a), Some(GpadlState::Created));
        assert_eq!(
            t.on_created(1, a, 0),
            Err(ProtocolViolation::UnknownGpadl(a))
        );
        t.on_created(1, b, 0xC000_0001).unwrap();
        assert_eq!(t.state(b), Some(GpadlState::Failed(0xC000_0001)));
        assert!(t.on_torndown(a).is_err());
        t.set_state(a, GpadlState::TearingDown);
        t.on_torndown(a).unwrap();
        let c = t.allocate(3).unwrap();
        t.revoke_channel(3);
        assert_eq!(t.state(c), Some(GpadlState::Revoked));
        t.remove(a);
        t.remove(b);
        t.remove(c);
        assert!(t.is_empty());
        for _ in 0..MAX_GPADLS {
            t.allocate(1).unwrap();
        }
        assert_eq!(t.allocate(1), Err(VmbusError::TableFull));
    }
}
