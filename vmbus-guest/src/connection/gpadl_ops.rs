//! GPADL create/teardown on the connection (vmbus-core §6), and [`GpadlBuffer`]: pages from
//! the [`Hal`] described to the host by one GPADL.

use super::Connection;
use crate::error::VmbusError;
use crate::gpadl::{GpadlState, build_gpadl_messages};
use crate::hal::{HV_PAGE_SIZE, Hal};
use crate::protocol::{GpadlTeardown, MessageHeader, MessageType};
use crate::transport::Transport;
use crate::wait::Wait;
use core::ptr::NonNull;
use zerocopy::IntoBytes;

impl<T: Transport, H: Hal> Connection<T, H> {
    /// Describes `pages` pages at `vaddr` (virtually contiguous; each page translated with
    /// [`Hal::virt_to_phys`]) to the host as a GPADL for channel `relid`: posts GPADL_HEADER
    /// and the GPADL_BODY messages. Returns the handle; GPADL_CREATED arrives later
    /// ([`Connection::gpadl_state`]).
    ///
    /// If posting fails after the header went out, the GPADL is marked revoked: its memory
    /// must be leaked, since the host may map it.
    ///
    /// # Safety
    ///
    /// The host may read and write the `pages` pages at `vaddr` from now until GPADL_TORNDOWN
    /// arrives for the returned handle. The caller guarantees they are host-visible memory it
    /// owns (normally from [`Hal::alloc_pages`]) that stays allocated, unmoved and unreferenced
    /// by Rust (no `&`/`&mut` over bytes the host may write) until then — leaked if TORNDOWN
    /// never comes.
    pub unsafe fn start_gpadl(
        &mut self,
        relid: u32,
        vaddr: NonNull<u8>,
        pages: usize,
    ) -> Result<u32, VmbusError> {
        let n = self.require_connected()?;
        match self.offers.get(relid) {
            None => return Err(VmbusError::UnknownChannel(relid)),
            Some(e) if e.rescinded => return Err(VmbusError::Rescinded(relid)),
            Some(_) => {}
        }
        if pages == 0 || pages.checked_mul(HV_PAGE_SIZE).is_none() {
            return Err(VmbusError::GpadlTooLarge);
        }
        let handle = self.gpadls.allocate(relid)?;
        let hal = &self.hal;
        let transport = &mut self.transport;
        let backoff = self.config.backoff;
        let mut posted = 0usize;
        let r = build_gpadl_messages(
            relid,
            handle,
            pages,
            |i| {
                // In bounds: i < pages and pages * 4096 did not overflow (checked above); the
                // caller guarantees the range is one allocation.
                let page = vaddr.as_ptr().wrapping_add(i * HV_PAGE_SIZE);
                let page = NonNull::new(page).ok_or(crate::hal::HalError::InvalidRequest)?;
                Ok(hal.virt_to_phys(page)? >> 12)
            },
            |msg| {
                winhv::hypercall::retry_transient(
                    super::POST_ATTEMPTS,
                    || transport.post_message(n.message_connection_id, msg),
                    backoff,
                )
                .map_err(VmbusError::Post)?;
                posted += 1;
                Ok(())
            },
        );
        match r {
            Ok(()) => Ok(handle),
            Err(e) => {
                if posted == 0 {
                    self.gpadls.remove(handle);
                } else {
                    self.gpadls.set_state(handle, GpadlState::Revoked);
                }
                Err(e)
            }
        }
    }

    /// Waits for GPADL_CREATED of `handle` and checks its status. A failed GPADL is
    /// forgotten (its memory may be reused); one revoked by a rescind is not.
    pub fn wait_gpadl_created(
        &mut self,
        handle: u32,
        waiter: &mut impl Wait,
    ) -> Result<(), VmbusError> {
        self.wait_until(waiter, |c| match c.gpadls.state(handle) {
            None => Some(Err(VmbusError::UnknownGpadl(handle))),
            Some(GpadlState::Creating) => None,
            Some(GpadlState::Created) => Some(Ok(())),
            Some(GpadlState::Failed(status)) => {
                c.gpadls.remove(handle);
                Some(Err(VmbusError::GpadlFailed { handle, status }))
            }
            Some(GpadlState::Revoked) => Some(Err(VmbusError::Rescinded(
                c.gpadls.relid(handle).unwrap_or(0),
            ))),
            Some(_) => Some(Err(VmbusError::WrongState)),
        })
    }

    /// Posts GPADL_TEARDOWN for a created GPADL. GPADL_TORNDOWN arrives later.
    pub fn start_gpadl_teardown(&mut self, handle: u32) -> Result<(), VmbusError> {
        let relid = self
            .gpadls
            .relid(handle)
            .ok_or(VmbusError::UnknownGpadl(handle))?;
        if self.gpadls.state(handle) != Some(GpadlState::Created) {
            return Err(VmbusError::WrongState);
        }
        let msg = GpadlTeardown {
            header: MessageHeader::new(MessageType::GPADL_TEARDOWN),
            relid,
            gpadl_handle: handle,
        };
        self.post(msg.as_bytes())?;
        self.gpadls.set_state(handle, GpadlState::TearingDown);
        Ok(())
    }

    /// Waits for GPADL_TORNDOWN. `Ok` means the memory may be freed; an error (rescind,
    /// unload, timeout) means it must be leaked. The handle is forgotten either way.
    pub fn wait_gpadl_torndown(
        &mut self,
        handle: u32,
        waiter: &mut impl Wait,
    ) -> Result<(), VmbusError> {
        let r = self.wait_until(waiter, |c| match c.gpadls.state(handle) {
            None => Some(Err(VmbusError::Disconnected)),
            Some(GpadlState::TearingDown) => None,
            Some(GpadlState::TornDown) => Some(Ok(())),
            Some(GpadlState::Revoked) => Some(Err(VmbusError::Rescinded(
                c.gpadls.relid(handle).unwrap_or(0),
            ))),
            Some(_) => Some(Err(VmbusError::WrongState)),
        });
        self.gpadls.remove(handle);
        r
    }
}

/// Host-visible pages from the [`Hal`] described to the host by one GPADL of a channel (a
/// ring, or a device buffer such as a netvsc receive buffer).
#[derive(Debug)]
pub struct GpadlBuffer {
    vaddr: NonNull<u8>,
    pages: usize,
    handle: u32,
    relid: u32,
}

// SAFETY: the pointer names the buffer's own pages; the value only hands it out, never
// dereferences it concurrently.
unsafe impl Send for GpadlBuffer {}

impl GpadlBuffer {
    /// Allocates `pages` zeroed pages and creates a GPADL for channel `relid` over them,
    /// waiting for GPADL_CREATED. On failure the pages are freed unless the host may still
    /// map them (then they are leaked).
    pub fn create<T: Transport, H: Hal>(
        conn: &mut Connection<T, H>,
        relid: u32,
        pages: usize,
        waiter: &mut impl Wait,
    ) -> Result<Self, VmbusError> {
        let vaddr = conn.hal.alloc_pages(pages)?;
        // SAFETY: the pages were just allocated from the HAL for this GPADL; the returned
        // GpadlBuffer owns them and frees them only after GPADL_TORNDOWN (or leaks them).
        let handle = match unsafe { conn.start_gpadl(relid, vaddr, pages) } {
            Ok(h) => h,
            Err(e) => {
                if !matches!(e, VmbusError::Post(_)) {
                    // SAFETY: nothing was posted, the host never saw the pages.
                    unsafe { conn.hal.free_pages(vaddr, pages) };
                }
                return Err(e);
            }
        };
        match conn.wait_gpadl_created(handle, waiter) {
            Ok(()) => Ok(Self {
                vaddr,
                pages,
                handle,
                relid,
            }),
            Err(e @ VmbusError::GpadlFailed { .. }) => {
                // SAFETY: the host refused the GPADL, so it does not map the pages.
                unsafe { conn.hal.free_pages(vaddr, pages) };
                Err(e)
            }
            Err(e) => {
                // Unknown outcome: leak (vmbus-core §6.4).
                log::warn!("GPADL {handle:#x} outcome unknown ({e}); leaking {pages} pages");
                Err(e)
            }
        }
    }

    /// The GPADL handle (as the device protocol refers to the buffer).
    pub fn handle(&self) -> u32 {
        self.handle
    }

    /// The channel the GPADL belongs to.
    pub fn relid(&self) -> u32 {
        self.relid
    }

    /// Virtual address of the first page.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.vaddr
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Tears the GPADL down and frees the pages after GPADL_TORNDOWN; leaks them if the host
    /// never confirms (rescind, unload, timeout).
    pub fn teardown<T: Transport, H: Hal>(
        self,
        conn: &mut Connection<T, H>,
        waiter: &mut impl Wait,
    ) -> Result<(), VmbusError> {
        let r = conn
            .start_gpadl_teardown(self.handle)
            .and_then(|()| conn.wait_gpadl_torndown(self.handle, waiter));
        match r {
            Ok(()) => {
                // SAFETY: GPADL_TORNDOWN arrived: the host no longer maps the pages.
                unsafe { conn.hal.free_pages(self.vaddr, self.pages) };
                Ok(())
            }
            Err(e) => {
                log::warn!(
                    "GPADL {:#x} not torn down ({e}); leaking pages",
                    self.handle
                );
                Err(e)
            }
        }
    }
}

impl<T: Transport, H: Hal> Connection<T, H> {
    /// Forgets a GPADL handle without telling the host (failed, revoked or leaked ones).
    pub(crate) fn forget_gpadl(&mut self, handle: u32) {
        self.gpadls.remove(handle);
    }
}
