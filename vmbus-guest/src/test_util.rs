//! Test doubles: a scripted transport and a std-allocator HAL.
extern crate std;
use crate::hal::{Hal, HalError, PhysAddr};
use crate::transport::{RawMessage, Transport};
use core::ptr::NonNull;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::vec::Vec;
use winhv::{HvError, HvStatus, HypercallError};

#[derive(Default)]
pub(crate) struct Script {
    pub(crate) posted: Vec<(u32, Vec<u8>)>,
    pub(crate) inbox: VecDeque<Vec<u8>>,
    /// Statuses the next posts fail with, in order.
    pub(crate) fail_posts: VecDeque<u16>,
    /// Reject every post to this connection id with INVALID_CONNECTION_ID.
    pub(crate) reject_connection: Option<u32>,
    pub(crate) signals: Vec<u32>,
}

#[derive(Clone, Default)]
pub(crate) struct Scripted(pub(crate) Rc<RefCell<Script>>);

impl Transport for Scripted {
    fn post_message(&self, connection_id: u32, payload: &[u8]) -> Result<(), HypercallError> {
        let mut s = self.0.borrow_mut();
        if s.reject_connection == Some(connection_id) {
            return Err(HypercallError::Hv(HvError(HvStatus::INVALID_CONNECTION_ID)));
        }
        if let Some(st) = s.fail_posts.pop_front() {
            return Err(HypercallError::Hv(HvError(HvStatus(st))));
        }
        s.posted.push((connection_id, payload.to_vec()));
        Ok(())
    }
    fn signal_event(&self, connection_id: u32) -> Result<(), HvError> {
        self.0.borrow_mut().signals.push(connection_id);
        Ok(())
    }
    fn take_message(&self) -> Result<Option<RawMessage>, winhv::SynicError> {
        Ok(self
            .0
            .borrow_mut()
            .inbox
            .pop_front()
            .map(|m| RawMessage::new(&m)))
    }
    fn take_event_flags(&self, _limit: u32, _on_flag: &mut dyn FnMut(u32)) {}
    fn vp_index(&self) -> u32 {
        0
    }
}

/// Pages from the std allocator; "GPA" = virtual address.
#[derive(Clone, Copy)]
pub(crate) struct StdHal;

std::thread_local! {
    /// Pages [`StdHal`] freed on this thread (each test runs on its own thread).
    pub(crate) static PAGES_FREED: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}

// SAFETY: zeroed, page-aligned allocations, identity translation (test only).
unsafe impl Hal for StdHal {
    fn alloc_pages(&self, pages: usize) -> Result<NonNull<u8>, HalError> {
        let layout = std::alloc::Layout::from_size_align(pages * 4096, 4096)
            .map_err(|_| HalError::InvalidRequest)?;
        // SAFETY: non-zero size.
        NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).ok_or(HalError::OutOfMemory)
    }
    unsafe fn free_pages(&self, vaddr: NonNull<u8>, pages: usize) {
        let layout = std::alloc::Layout::from_size_align(pages * 4096, 4096).unwrap();
        PAGES_FREED.with(|f| f.set(f.get() + pages));
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(vaddr.as_ptr(), layout) }
    }
    fn virt_to_phys(&self, vaddr: NonNull<u8>) -> Result<PhysAddr, HalError> {
        Ok(vaddr.as_ptr() as u64)
    }
    unsafe fn map_mmio(&self, _gpa: PhysAddr, _size: usize) -> Result<NonNull<u8>, HalError> {
        Err(HalError::NotTranslatable)
    }
}
