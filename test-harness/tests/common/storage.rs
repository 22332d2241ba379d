//! Shared set-up for the storvsc tests on the mock storage VSP: a guest bus with one SCSI
//! controller, a stepped host behind `Rc<RefCell<_>>` (a controller's waiter steps it),
//! host-visible HAL buffers, and polling until requests end.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::rc::Rc;

use storvsc::controller::StorvscController;
use storvsc::queue::{Done, IoResult, Memory, Tag};
use test_harness::guest::boot_vp;
use test_harness::hv::{HostPreset, MockConfig, MockHal, MockHypervisor, MockVp};
use test_harness::storage::{Lun, SCSI_CLASS, StorageVsp, VspConfig};
use test_harness::vmbus::{DeviceOffer, HostRelease, MockVmbusHost};
use vmbus_guest::protocol::Guid;
use vmbus_guest::{BoundedWait, ConnectionConfig, Hal, SynicTransport, Vmbus};

pub type Guest = Vmbus<SynicTransport<MockVp>, MockHal>;

pub const INSTANCE: Guid = Guid::from_str_const("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");
pub const BS: usize = 512;
/// Packets one poll may take.
pub const BUDGET: usize = 16;

pub struct Rig {
    pub hv: MockHypervisor,
    pub host: Rc<RefCell<MockVmbusHost>>,
    pub guest: Guest,
    pub vsp: StorageVsp,
    pub relid: u32,
}

pub fn rig(config: VspConfig, blocks: u64) -> Rig {
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_memory_bytes(64 << 20));
    let vp = boot_vp(&hv, 0).unwrap();
    let mut host = MockVmbusHost::new(hv.clone(), HostRelease::Ws2022);
    let offer = DeviceOffer::new(SCSI_CLASS, INSTANCE);
    let vsp = StorageVsp::new(config).with_offer(offer.clone());
    vsp.add_lun(0, Lun::memory(BS as u32, blocks));
    let relid = host.add_device(offer, Box::new(vsp.clone()));
    let transport = SynicTransport::for_current_vp(vp.hypercalls, vp.synic);
    let guest = Vmbus::new(transport, hv.hal(), ConnectionConfig::default());
    guest
        .connect(&mut BoundedWait::new(200, || {
            host.step();
        }))
        .unwrap();
    Rig {
        hv,
        host: Rc::new(RefCell::new(host)),
        guest,
        vsp,
        relid,
    }
}

impl Rig {
    /// Neither the host nor the VSP saw a protocol error, and the guest never freed memory
    /// the host still mapped.
    pub fn assert_clean(&self) {
        let host = self.host.borrow();
        assert_eq!(host.freed_while_mapped(), [], "freed while host-mapped");
        assert!(
            host.protocol_errors().is_empty(),
            "{:?}",
            host.protocol_errors()
        );
        assert!(
            self.vsp.protocol_errors().is_empty(),
            "{:?}",
            self.vsp.protocol_errors()
        );
    }
}

pub fn stepper(host: &Rc<RefCell<MockVmbusHost>>, budget: u32) -> BoundedWait<impl FnMut()> {
    let host = host.clone();
    BoundedWait::new(budget, move || {
        host.borrow_mut().step();
    })
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Host-visible pages from the HAL (GPA-direct on them), freed on drop — so a test drops one
/// only when the controller gave it back, and forgets one it reported leaked.
pub struct HalBuf {
    hal: MockHal,
    ptr: NonNull<u8>,
    pages: usize,
}

impl HalBuf {
    pub fn new(hal: &MockHal, pages: usize) -> Self {
        Self {
            hal: hal.clone(),
            ptr: hal.alloc_pages(pages).unwrap(),
            pages,
        }
    }
    pub fn slice_mut(&mut self) -> &mut [u8] {
        // SAFETY: `pages` pages allocated above, owned by this value.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.pages * 4096) }
    }
}

impl Drop for HalBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by this HAL with these pages; no request names them any more.
        unsafe { self.hal.free_pages(self.ptr, self.pages) };
    }
}

/// Polls (stepping the host) until `n` requests were reported; returns how each ended.
pub fn collect_done<T, H, W, const C: usize, const D: usize>(
    c: &mut StorvscController<'_, T, H, W, C, D>,
    host: &Rc<RefCell<MockVmbusHost>>,
    n: usize,
) -> HashMap<Tag, Done>
where
    T: vmbus_guest::Transport,
    H: Hal,
    W: vmbus_guest::Wait,
{
    let mut done = HashMap::new();
    for _ in 0..10_000 {
        let polled = c.poll(BUDGET, |d| {
            assert!(done.insert(d.tag, d).is_none(), "tag reported twice");
        });
        assert!(polled.reported <= BUDGET + n, "{polled:?}");
        if done.len() >= n {
            break;
        }
        host.borrow_mut().step();
    }
    assert_eq!(done.len(), n, "every request was reported");
    done
}

/// [`collect_done`] for requests that must give their buffers back: their results.
pub fn collect<T, H, W, const C: usize, const D: usize>(
    c: &mut StorvscController<'_, T, H, W, C, D>,
    host: &Rc<RefCell<MockVmbusHost>>,
    n: usize,
) -> HashMap<Tag, IoResult>
where
    T: vmbus_guest::Transport,
    H: Hal,
    W: vmbus_guest::Wait,
{
    collect_done(c, host, n)
        .into_iter()
        .map(|(t, d)| {
            assert_eq!(d.memory, Memory::Returned, "{d:?}");
            (t, d.result)
        })
        .collect()
}
