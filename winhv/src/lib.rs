//! The Hyper-V hypercall interface as seen by an enlightened guest: detection, synthetic
//! registers, hypercalls, the synthetic interrupt controller (SynIC), the partition reference
//! clock and synthetic timers.
//!
//! `#![no_std]` and allocation-free. All access to the processor goes through the [`Cpu`]
//! trait, so the same code runs on Hyper-V, on Azure and against the mock hypervisor in the
//! project's test harness.
//!
//! Bring-up on each boot is [`bringup`]: [`bringup::Partition::bring_up`] once per partition
//! ([`detect()`] and [`HypervInfo::require`], a [`GuestOsId`], [`enable_hypercall_page`],
//! [`ReferenceTscPage::enable`]), then [`bringup::Vp::bring_up`] on each virtual processor
//! ([`Hypercalls::new`] with two parameter pages, [`Synic::enable`] with the message and
//! event-flags pages and the VMBus SINT routing). The steps stay public for kernels that need
//! a different sequence.
#![no_std]

pub mod bringup;
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
