//! The Hyper-V hypercall interface as seen by an enlightened guest: detection, synthetic
//! registers, hypercalls, the synthetic interrupt controller (SynIC), the partition reference
//! clock and synthetic timers.
//!
//! `#![no_std]` and allocation-free. All access to the processor goes through the [`Cpu`]
//! trait, so the same code runs on Hyper-V, on Azure and against the mock hypervisor in the
//! project's test harness.
#![no_std]

pub mod cpu;
pub mod register;

pub use cpu::{Cpu, CpuidResult};
pub use register::SyntheticRegister;
