//! The Hyper-V hypercall interface as seen by an enlightened guest: detection, synthetic
//! registers, hypercalls, the synthetic interrupt controller (SynIC), the partition reference
//! clock and synthetic timers.
//!
//! `#![no_std]` and allocation-free. All access to the processor goes through the [`Cpu`]
//! trait, so the same code runs on Hyper-V, on Azure and against the mock hypervisor in the
//! project's test harness.
//!
//! Bring-up order on each boot (the first three once per partition, the rest per virtual
//! processor):
//! 1. [`detect()`] Hyper-V and check privileges with [`HypervInfo::require`];
//! 2. write a [`GuestOsId`];
//! 3. [`enable_hypercall_page`];
//! 4. [`Hypercalls::new`] with two parameter pages, [`Synic::enable`] with the message and
//!    event-flags pages and the SINT routing, [`ReferenceTscPage::enable`].
#![no_std]

pub mod cpu;
pub mod crash;
pub mod detect;
pub mod guest_id;
pub mod hypercall;
pub mod page;
pub mod register;
pub mod status;
pub mod synic;
pub mod time;
pub mod timer;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

pub use cpu::{Cpu, CpuidResult};
pub use detect::{DetectError, Features, HypervInfo, Privileges, Recommendations, detect};
pub use guest_id::{GuestOsId, OpenSourceOsType};
pub use hypercall::{HypercallError, Hypercalls, disable_hypercall_page, enable_hypercall_page};
pub use page::{HV_PAGE_SIZE, HvPage};
pub use register::SyntheticRegister;
pub use status::{HvError, HvStatus};
pub use synic::{HvMessage, SintConfig, Synic, SynicError};
pub use time::{ReferenceClock, ReferenceTscPage};
pub use timer::{SyntheticTimer, TimerDelivery};
