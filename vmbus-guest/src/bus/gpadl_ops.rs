//! GPADL create and teardown on the connection (vmbus-core §6), for memory the bus owns
//! ([`SharedPages`]): every outcome says whether the pages may go back to the allocator.

#![forbid(unsafe_code)]

use super::{Ctl, Released, Vmbus};
use crate::error::VmbusError;
use crate::gpadl::{GpadlState, build_gpadl_messages};
use crate::hal::Hal;
use crate::protocol::{GpadlTeardown, MessageHeader, MessageType};
use crate::shared::SharedPages;
use crate::transport::Transport;
use crate::wait::Wait;
use zerocopy::IntoBytes;

/// How a GPADL creation ended, and what that means for its pages.
#[derive(Debug)]
pub(crate) enum Created {
    /// GPADL_CREATED with status 0: the host maps the pages under this handle.
    Yes(u32),
    /// The host never saw the GPADL or refused it: the pages are the guest's again.
    No(VmbusError),
    /// The outcome is unknown (timeout, rescind, a post that failed half-way): the pages must
    /// be leaked.
    Unknown(VmbusError),
}

impl<T: Transport, H: Hal> Ctl<'_, T, H> {
    /// Describes `pages` to the host as a GPADL for channel `relid`: posts GPADL_HEADER and
    /// the GPADL_BODY messages. Returns the handle; GPADL_CREATED arrives later. If posting
    /// fails after the header went out, the GPADL is marked revoked and the error is
    /// [`VmbusError::Post`]: its memory must be leaked, since the host may map it.
    pub(crate) fn start_gpadl(
        &mut self,
        relid: u32,
        pages: &SharedPages,
    ) -> Result<u32, (VmbusError, bool)> {
        let n = self.require_connected().map_err(|e| (e, false))?;
        match self.offers.get(relid) {
            None => return Err((VmbusError::UnknownChannel(relid), false)),
            Some(e) if e.rescinded => return Err((VmbusError::Rescinded(relid), false)),
            Some(_) => {}
        }
        let handle = self.gpadls.allocate(relid).map_err(|e| (e, false))?;
        let bus = self.bus;
        let backoff = bus.config().backoff;
        let mut posted = 0usize;
        let r = build_gpadl_messages(
            relid,
            handle,
            pages.pages(),
            |i| Ok(pages.page_gpa(bus.hal(), i)? >> 12),
            |msg| {
                winhv::hypercall::retry_transient(
                    super::POST_ATTEMPTS,
                    || bus.transport().post_message(n.message_connection_id, msg),
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
                Err((e, posted != 0))
            }
        }
    }

    /// Posts GPADL_TEARDOWN for a created GPADL. GPADL_TORNDOWN arrives later.
    pub(crate) fn start_gpadl_teardown(&mut self, handle: u32) -> Result<(), VmbusError> {
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
}

impl<T: Transport, H: Hal> Vmbus<T, H> {
    /// Creates a GPADL over `pages` for channel `relid` and waits (bounded) for
    /// GPADL_CREATED. A failed creation is forgotten; one whose outcome is unknown stays in
    /// the table as revoked (its handle is never reused while the pages may be mapped).
    pub(crate) fn create_gpadl(
        &self,
        relid: u32,
        pages: &SharedPages,
        waiter: &mut impl Wait,
    ) -> Created {
        let handle = match self.lock().start_gpadl(relid, pages) {
            Ok(h) => h,
            Err((e, false)) => return Created::No(e),
            Err((e, true)) => return Created::Unknown(e),
        };
        self.wait_gpadl_created(handle, waiter)
    }

    /// Waits (bounded) for GPADL_CREATED of `handle`.
    pub(crate) fn wait_gpadl_created(&self, handle: u32, waiter: &mut impl Wait) -> Created {
        let r = self.wait_until(waiter, |c| match c.gpadls.state(handle) {
            None => Some(Err(VmbusError::UnknownGpadl(handle))),
            Some(GpadlState::Creating) => None,
            Some(GpadlState::Created) => Some(Ok(Created::Yes(handle))),
            Some(GpadlState::Failed(status)) => {
                c.gpadls.remove(handle);
                Some(Ok(Created::No(VmbusError::GpadlFailed { handle, status })))
            }
            Some(GpadlState::Revoked) => Some(Err(VmbusError::Rescinded(
                c.gpadls.relid(handle).unwrap_or(0),
            ))),
            Some(_) => Some(Err(VmbusError::WrongState)),
        });
        match r {
            Ok(c) => c,
            // UnknownGpadl: the connection was unloaded meanwhile, the host dropped it.
            Err(e @ VmbusError::UnknownGpadl(_)) => Created::No(e),
            Err(e) => Created::Unknown(e),
        }
    }

    /// Tears down GPADL `handle` of connection epoch `epoch` and waits (bounded) for
    /// GPADL_TORNDOWN. [`Released::Freed`] means the host confirmed it no longer maps the
    /// pages; anything else leaves them to the host. The handle is forgotten either way.
    pub(crate) fn teardown_gpadl(
        &self,
        handle: u32,
        epoch: u32,
        waiter: &mut impl Wait,
    ) -> Released {
        if epoch != self.epoch() {
            return self.ended_epoch_release(epoch);
        }
        // The guard is a temporary of this statement only: as the scrutinee of an `if let`
        // it would live through the block below, which locks again (a self-deadlock).
        let started = self.lock().start_gpadl_teardown(handle);
        if let Err(e) = started {
            log::warn!("GPADL {handle:#x} teardown not sent: {e}");
            self.lock().gpadls.remove(handle);
            return Released::Leaked;
        }
        let r = self.wait_until(waiter, |c| match c.gpadls.state(handle) {
            Some(GpadlState::TearingDown) => None,
            Some(GpadlState::TornDown) => Some(Ok(())),
            None => Some(Err(VmbusError::Disconnected)),
            Some(_) => Some(Err(VmbusError::WrongState)),
        });
        let mut c = self.lock();
        c.gpadls.remove(handle);
        match r {
            Ok(()) => Released::Freed,
            // The connection was unloaded (not abandoned) meanwhile: the host dropped it.
            Err(VmbusError::Disconnected) if epoch != self.epoch() => {
                drop(c);
                self.ended_epoch_release(epoch)
            }
            Err(e) => {
                log::warn!("GPADL {handle:#x} not torn down ({e})");
                Released::Leaked
            }
        }
    }

    /// Whether memory an ended epoch shared may be freed: only if that epoch ended with the
    /// host's UNLOAD_RESPONSE (it released everything), not if it was abandoned.
    pub(crate) fn ended_epoch_release(&self, epoch: u32) -> Released {
        if self.lock().cleanly_ended == Some(epoch) {
            Released::Freed
        } else {
            Released::Leaked
        }
    }
}
