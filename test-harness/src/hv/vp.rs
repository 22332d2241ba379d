//! `winhv::Cpu` for one virtual processor of the mock.

use winhv::{Cpu, CpuidResult, SyntheticRegister};

use super::hypercall::{POST_MESSAGE, Params, SIGNAL_EVENT};
use super::memory::GuestMemory;
use super::presets;
use super::state::{Fault, State};
use super::{MockHypervisor, lock};

/// The CPU running on one virtual processor of a [`MockHypervisor`].
#[derive(Clone)]
pub struct MockVp {
    pub(crate) hv: MockHypervisor,
    pub(crate) index: usize,
}

impl MockVp {
    /// This VP's index (what VP_INDEX reads).
    pub fn index(&self) -> u32 {
        self.index as u32
    }

    /// Writes a synthetic register (WRMSR) without the trait's `unsafe`: the mock's guest RAM
    /// is one raw block only ever accessed through raw pointers, so an overlay the write enables
    /// cannot invalidate a Rust reference. Tests that play the guest by hand use this.
    pub fn write_register(&self, register: SyntheticRegister, value: u64) {
        self.run(|s, mem, vp| s.write_register(mem, vp, register, value))
    }

    /// After a PostMessage or SignalEvent (whatever its status): moves the activity counter
    /// a polling host checks before taking the lock.
    fn note_activity(&self, control: u64) {
        if matches!(control as u16, POST_MESSAGE | SIGNAL_EVENT) {
            self.hv
                .shared
                .activity
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }

    /// Runs `f` under the lock; a fault is recorded, the lock released, then it panics.
    fn run<T>(&self, f: impl FnOnce(&mut State, &GuestMemory, usize) -> Result<T, Fault>) -> T {
        let shared = &self.hv.shared;
        let result = {
            let mut state = lock(&shared.state);
            let r = f(&mut state, &shared.memory, self.index);
            if let Err(fault) = &r {
                state.error(fault.to_string());
            }
            r
        };
        result.unwrap_or_else(|fault| panic!("{fault}"))
    }
}

impl Cpu for MockVp {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        self.run(|s, _, _| Ok(presets::cpuid(s.preset, &s.id, leaf, subleaf)))
    }

    fn read_register(&self, register: SyntheticRegister) -> u64 {
        self.run(|s, _, vp| s.read_register(vp, register))
    }

    unsafe fn write_register(&self, register: SyntheticRegister, value: u64) {
        MockVp::write_register(self, register, value)
    }

    unsafe fn hypercall(&self, control: u64, input_gpa: u64, output_gpa: u64) -> u64 {
        let _ = output_gpa;
        let params = Params::Slow { input: input_gpa };
        let r = self.run(|s, mem, _| s.hypercall(mem, control, params));
        self.note_activity(control);
        r
    }

    fn fast_hypercall(&self, control: u64, input0: u64, input1: u64) -> u64 {
        let params = Params::Fast { input0, input1 };
        let r = self.run(|s, mem, _| s.hypercall(mem, control, params));
        self.note_activity(control);
        r
    }

    fn read_tsc(&self) -> u64 {
        self.run(|s, mem, _| {
            if std::mem::take(&mut s.clock.update_during_next_read) {
                s.clock.rebase_tsc(mem);
            }
            Ok(s.clock.tsc())
        })
    }
}
