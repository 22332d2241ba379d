//! The mock hypervisor driven with raw `Cpu` calls: MSR values and hypercall input bytes are
//! written here straight from protocol/vmbus-core.md, independently of the guest library.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;

use test_harness::hv::{HostPreset, MockConfig, MockHypervisor, MockVp, status};
use vmbus_guest::{Hal, HalError};
use winhv::{Cpu, SyntheticRegister as R};

const GUEST_OS_ID: u64 = 0x8100_0000_0000_0000 | (6 << 16);

fn hv(preset: HostPreset) -> MockHypervisor {
    MockHypervisor::new(MockConfig::new(preset))
}

/// Guest OS id + hypercall page; returns the hypercall page GPA.
fn enable_hypercalls(hv: &MockHypervisor, cpu: &MockVp) -> u64 {
    let (_, gpa) = hv.alloc_page();
    cpu.write_register(R::GuestOsId, GUEST_OS_ID);
    cpu.write_register(R::Hypercall, gpa | 1);
    gpa
}

/// Full SynIC enable with SINT2 at vector 0xF3; returns (SIMP GPA, SIEFP GPA).
fn enable_synic(hv: &MockHypervisor, cpu: &MockVp, auto_eoi: bool) -> (u64, u64) {
    let (_, simp) = hv.alloc_page();
    let (_, siefp) = hv.alloc_page();
    cpu.write_register(R::Simp, simp | 1);
    cpu.write_register(R::Siefp, siefp | 1);
    cpu.write_register(R::Sint(2), 0xF3 | (u64::from(auto_eoi) << 17));
    cpu.write_register(R::Scontrol, 1);
    (simp, siefp)
}

fn bytes(hv: &MockHypervisor, gpa: u64, len: usize) -> Vec<u8> {
    let p = hv.gpa_to_ptr(gpa, len).unwrap();
    // SAFETY: the range is inside guest RAM, which outlives `hv`'s borrow.
    unsafe { std::slice::from_raw_parts(p.as_ptr(), len).to_vec() }
}

fn write(hv: &MockHypervisor, gpa: u64, data: &[u8]) {
    let p = hv.gpa_to_ptr(gpa, data.len()).unwrap();
    // SAFETY: the range is inside guest RAM and no hypercall runs concurrently.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.as_ptr(), data.len()) };
}

fn u32_at(hv: &MockHypervisor, gpa: u64) -> u32 {
    u32::from_le_bytes(bytes(hv, gpa, 4).try_into().unwrap())
}

fn u64_at(hv: &MockHypervisor, gpa: u64) -> u64 {
    u64::from_le_bytes(bytes(hv, gpa, 8).try_into().unwrap())
}

fn panic_message(f: impl FnOnce()) -> String {
    let err = catch_unwind(AssertUnwindSafe(f)).expect_err("expected a fault");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn assert_gp(hv: &MockHypervisor, f: impl FnOnce()) {
    let before = hv.protocol_errors().len();
    let msg = panic_message(f);
    assert!(msg.starts_with("#GP:"), "not a #GP: {msg}");
    assert_eq!(hv.protocol_errors().len(), before + 1);
    // The lock was released before panicking: the mock still works.
    let _ = hv.reference_time();
}

fn status_of(result: u64) -> u16 {
    result as u16
}

/// Slow hypercall with `input` written at the start of a fresh page.
fn slow_call(hv: &MockHypervisor, cpu: &MockVp, control: u64, input: &[u8]) -> u64 {
    let (_, gpa) = hv.alloc_page();
    write(hv, gpa, input);
    // SAFETY: `gpa` is a page this test owns, holding the input block.
    unsafe { cpu.hypercall(control, gpa, 0) }
}

fn post_input(connection: u32, reserved: u32, ty: u32, payload: &[u8], size: u32) -> Vec<u8> {
    let mut b = vec![0u8; 256];
    b[0..4].copy_from_slice(&connection.to_le_bytes());
    b[4..8].copy_from_slice(&reserved.to_le_bytes());
    b[8..12].copy_from_slice(&ty.to_le_bytes());
    b[12..16].copy_from_slice(&size.to_le_bytes());
    b[16..16 + payload.len()].copy_from_slice(payload);
    b
}

// ---------------------------------------------------------------- CPUID

#[test]
fn cpuid_presets() {
    let ws16 = hv(HostPreset::Ws2016).vp(0);
    assert_ne!(ws16.cpuid(1, 0).ecx & (1 << 31), 0);
    let l0 = ws16.cpuid(0x4000_0000, 0);
    assert!(l0.eax >= 0x4000_0005);
    let vendor: Vec<u8> = [l0.ebx, l0.ecx, l0.edx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    assert_eq!(&vendor, b"Microsoft Hv");
    assert_eq!(ws16.cpuid(0x4000_0001, 0).eax, 0x3123_7648);
    let ver = ws16.cpuid(0x4000_0002, 0);
    assert_eq!((ver.eax, ver.ebx), (14393, 0x000A_0000));
    let f = ws16.cpuid(0x4000_0003, 0);
    for bit in [1, 2, 3, 5, 6, 9, 11] {
        assert_ne!(f.eax & (1 << bit), 0, "privilege {bit}");
    }
    assert_eq!(f.ebx & 0b11_0000, 0b11_0000, "PostMessages/SignalEvents");
    assert_ne!(f.edx & (1 << 8), 0);
    assert_ne!(f.edx & (1 << 10), 0);
    assert_eq!(f.edx & (1 << 19), 0, "no direct timers on WS2016");
    let r = ws16.cpuid(0x4000_0004, 0).eax;
    assert_ne!(r & (1 << 5), 0);
    assert_eq!(r & (1 << 9), 0);
    assert_eq!(ws16.cpuid(0x4000_00FF, 0), Default::default());

    let ws22 = hv(HostPreset::Ws2022).vp(0);
    assert_eq!(ws22.cpuid(0x4000_0002, 0).eax, 20348);
    assert!(ws22.cpuid(0x4000_0000, 0).eax >= 0x4000_000C);
    assert_ne!(ws22.cpuid(0x4000_0003, 0).edx & (1 << 19), 0);
    let r = ws22.cpuid(0x4000_0004, 0).eax;
    assert_eq!(r & (0b11 << 9), 0b11 << 9);

    let kvm = hv(HostPreset::NotHyperV).vp(0);
    assert_ne!(kvm.cpuid(1, 0).ecx & (1 << 31), 0);
    let l0 = kvm.cpuid(0x4000_0000, 0);
    let vendor: Vec<u8> = [l0.ebx, l0.ecx, l0.edx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    assert_eq!(&vendor, b"KVMKVMKVM\0\0\0");
    assert_eq!(kvm.cpuid(0x4000_0001, 0).eax, 0);

    let bare = hv(HostPreset::BareMetal).vp(0);
    assert_eq!(bare.cpuid(1, 0).ecx & (1 << 31), 0);
    assert_eq!(bare.cpuid(0x4000_0000, 0), Default::default());
}

#[test]
fn config_overrides_show_in_cpuid() {
    let m = MockHypervisor::new(
        MockConfig::new(HostPreset::Ws2022)
            .without_privileges(1 << 36)
            .with_recommendations(0x20)
            .with_vp_count(2),
    );
    let cpu = m.vp(1);
    assert_eq!(cpu.cpuid(0x4000_0003, 0).ebx & (1 << 4), 0);
    assert_eq!(cpu.cpuid(0x4000_0004, 0).eax, 0x20);
    assert_eq!(cpu.read_register(R::VpIndex), 1);
}

// ---------------------------------------------------------------- #GP cases

#[test]
fn read_only_registers_fault() {
    let m = hv(HostPreset::Ws2022);
    let cpu = m.vp(0);
    for reg in [
        R::VpIndex,
        R::TimeRefCount,
        R::Sversion,
        R::TscFrequency,
        R::ApicFrequency,
    ] {
        assert_gp(&m, || cpu.write_register(reg, 0));
    }
    assert_eq!(cpu.read_register(R::Sversion), 1);
    assert_eq!(cpu.read_register(R::TscFrequency), 2_500_000_000);
    assert_eq!(cpu.read_register(R::Eom), 0);
}

#[test]
fn reserved_bits_and_bad_values_fault() {
    let m = hv(HostPreset::Ws2016);
    let cpu = m.vp(0);
    // SINT unmasked with vector < 16.
    assert_gp(&m, || cpu.write_register(R::Sint(2), 0x0F));
    // Masked with a small vector is fine.
    cpu.write_register(R::Sint(2), 0x1_000F);
    // Timer reserved bits 15:13 and 63:20.
    assert_gp(&m, || cpu.write_register(R::StimerConfig(0), 1 << 13));
    assert_gp(&m, || cpu.write_register(R::StimerConfig(0), 1 << 20));
    // Direct mode without EDX bit 19 (WS2016).
    assert_gp(&m, || {
        cpu.write_register(R::StimerConfig(0), (1 << 12) | (0x40 << 4))
    });
    // SIMP / SIEFP / TSC page / hypercall page outside RAM.
    let outside = m.memory_base_gpa() + m.memory_bytes() as u64;
    assert_gp(&m, || cpu.write_register(R::Simp, outside | 1));
    assert_gp(&m, || cpu.write_register(R::Siefp, 1));
    assert_gp(&m, || cpu.write_register(R::ReferenceTsc, outside | 1));
    // Disabled with a bogus GPN is accepted (nothing is mapped).
    cpu.write_register(R::Simp, outside);
    // Unknown MSR (index out of range).
    assert_gp(&m, || cpu.write_register(R::Sint(16), 0x1_0000));
    assert_gp(&m, || {
        cpu.read_register(R::StimerCount(4));
    });
    // CRASH_CTL reserved bits.
    assert_gp(&m, || cpu.write_register(R::CrashControl, 1));
}

#[test]
fn missing_privileges_and_features_fault() {
    let m = MockHypervisor::new(
        MockConfig::new(HostPreset::Ws2022)
            .without_privileges((1 << 2) | (1 << 3) | (1 << 9) | (1 << 11) | (1 << 1)),
    );
    let cpu = m.vp(0);
    assert_gp(&m, || cpu.write_register(R::Scontrol, 1));
    assert_gp(&m, || cpu.write_register(R::StimerCount(0), 1));
    assert_gp(&m, || cpu.write_register(R::ReferenceTsc, 0));
    assert_gp(&m, || {
        cpu.read_register(R::TscFrequency);
    });
    assert_gp(&m, || {
        cpu.read_register(R::TimeRefCount);
    });
    let m = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_features(0));
    let cpu = m.vp(0);
    assert_gp(&m, || {
        cpu.read_register(R::ApicFrequency);
    });
    assert_gp(&m, || {
        cpu.read_register(R::CrashControl);
    });
}

#[test]
fn non_hyper_v_machines_have_no_synthetic_msrs() {
    for preset in [HostPreset::NotHyperV, HostPreset::BareMetal] {
        let m = hv(preset);
        let cpu = m.vp(0);
        assert_gp(&m, || cpu.write_register(R::GuestOsId, GUEST_OS_ID));
        assert_gp(&m, || {
            cpu.read_register(R::VpIndex);
        });
    }
}

#[test]
fn fault_from_another_thread_does_not_poison() {
    let m = hv(HostPreset::Ws2022);
    let cpu = m.vp(0);
    let r = std::thread::spawn(move || cpu.write_register(R::VpIndex, 1)).join();
    assert!(r.is_err());
    assert_eq!(m.vp(0).read_register(R::VpIndex), 0);
}

// ---------------------------------------------------------------- hypercall page

#[test]
fn hypercall_page_overlay_and_restore() {
    let m = hv(HostPreset::Ws2022);
    let cpu = m.vp(0);
    let (_, gpa) = m.alloc_page();
    write(&m, gpa, &[0xAA; 16]);
    // Without a guest OS id the enable bit stays clear and nothing is overlaid.
    cpu.write_register(R::Hypercall, gpa | 1);
    assert_eq!(cpu.read_register(R::Hypercall) & 1, 0);
    assert_eq!(bytes(&m, gpa, 4), [0xAA; 4]);
    cpu.write_register(R::GuestOsId, GUEST_OS_ID);
    cpu.write_register(R::Hypercall, gpa | 1);
    assert_eq!(cpu.read_register(R::Hypercall), gpa | 1);
    assert_eq!(bytes(&m, gpa, 4), [0x0F, 0x01, 0xC1, 0xC3]);
    // Disable restores the RAM.
    cpu.write_register(R::Hypercall, gpa);
    assert_eq!(bytes(&m, gpa, 16), [0xAA; 16]);
    // Clearing GUEST_OS_ID disables the page.
    cpu.write_register(R::Hypercall, gpa | 1);
    cpu.write_register(R::GuestOsId, 0);
    assert_eq!(cpu.read_register(R::Hypercall) & 1, 0);
    assert_eq!(bytes(&m, gpa, 4), [0xAA; 4]);
    let msg = panic_message(|| {
        cpu.fast_hypercall(0x1_005D, 0, 0);
    });
    assert!(msg.starts_with("#UD: hypercall page not enabled"), "{msg}");
}

// ---------------------------------------------------------------- hypercall status paths

#[test]
fn control_word_checks() {
    let m = hv(HostPreset::Ws2022);
    let cpu = m.vp(0);
    enable_hypercalls(&m, &cpu);
    m.connect_event_port(7);
    assert_eq!(
        status_of(cpu.fast_hypercall(0x1_005D, 7, 0)),
        status::SUCCESS
    );
    for reserved in [1u64 << 27, 1 << 30, 1 << 44, 1 << 47, 1 << 60, 1 << 63] {
        assert_eq!(
            status_of(cpu.fast_hypercall(0x1_005D | reserved, 7, 0)),
            status::INVALID_HYPERCALL_INPUT
        );
    }
    assert_eq!(
        status_of(cpu.fast_hypercall(0x1_0077, 0, 0)),
        status::INVALID_HYPERCALL_CODE
    );
    // Fast bit clear on the register form, set on the memory form.
    assert_eq!(
        status_of(cpu.fast_hypercall(0x005D, 7, 0)),
        status::INVALID_HYPERCALL_INPUT
    );
    assert_eq!(
        status_of(slow_call(&m, &cpu, 0x1_005D, &7u64.to_le_bytes())),
        status::INVALID_HYPERCALL_INPUT
    );
    // Rep count on a simple call.
    assert_eq!(
        status_of(cpu.fast_hypercall(0x1_005D | (1 << 32), 7, 0)),
        status::INVALID_HYPERCALL_INPUT
    );
    // Variable header on a call without one.
    assert_eq!(
        status_of(cpu.fast_hypercall(0x1_005D | (1 << 17), 7, 0)),
        status::INVALID_HYPERCALL_INPUT
    );
    let log = m.hypercall_log();
    assert_eq!(log[0], (0x5D, 0));
    assert_eq!(log.len(), 12);
    assert!(m.protocol_errors().len() >= 11);
}

#[test]
fn gpa_checks() {
    let m = hv(HostPreset::Ws2022);
    let cpu = m.vp(0);
    let hc = enable_hypercalls(&m, &cpu);
    m.connect_event_port(7);
    let (_, page) = m.alloc_page();
    write(&m, page, &7u64.to_le_bytes());
    write(&m, page + 4088, &7u64.to_le_bytes());
    // SAFETY: the GPAs are pages this test owns or deliberately bad ones
    // that the mock rejects without touching memory.
    unsafe {
        assert_eq!(status_of(cpu.hypercall(0x5D, page, 0)), status::SUCCESS);
        assert_eq!(
            status_of(cpu.hypercall(0x5D, page + 4088, 0)),
            status::SUCCESS
        );
        assert_eq!(
            status_of(cpu.hypercall(0x5D, page + 4, 0)),
            status::INVALID_ALIGNMENT
        );
        // PostMessage's 256 bytes cross the page.
        m.connect_message_port(1, 4);
        assert_eq!(
            status_of(cpu.hypercall(0x5C, page + 3840 + 8, 0)),
            status::INVALID_ALIGNMENT
        );
        let outside = m.memory_base_gpa() + m.memory_bytes() as u64;
        assert_eq!(
            status_of(cpu.hypercall(0x5D, outside, 0)),
            status::INVALID_ALIGNMENT
        );
        assert_eq!(
            status_of(cpu.hypercall(0x5D, 0, 0)),
            status::INVALID_ALIGNMENT
        );
        // Overlay pages are not normal RAM.
        assert_eq!(
            status_of(cpu.hypercall(0x5D, hc, 0)),
            status::INVALID_ALIGNMENT
        );
        let (simp, _) = enable_synic(&m, &cpu, false);
        assert_eq!(
            status_of(cpu.hypercall(0x5D, simp, 0)),
            status::INVALID_ALIGNMENT
        );
    }
}

#[test]
fn post_message_paths() {
    let m = hv(HostPreset::Ws2016);
    let cpu = m.vp(0);
    enable_hypercalls(&m, &cpu);
    m.connect_message_port(0x2_0001, 2);
    let ok = post_input(0x2_0001, 0, 1, b"hello", 5);
    assert_eq!(status_of(slow_call(&m, &cpu, 0x5C, &ok)), status::SUCCESS);
    for bad in [
        post_input(0x0100_0001, 0, 1, b"", 0),
        post_input(0x2_0001, 1, 1, b"", 0),
        post_input(0x2_0001, 0, 0, b"", 0),
        post_input(0x2_0001, 0, 0x8000_0001, b"", 0),
        post_input(0x2_0001, 0, 1, b"", 241),
    ] {
        assert_eq!(
            status_of(slow_call(&m, &cpu, 0x5C, &bad)),
            status::INVALID_PARAMETER
        );
    }
    let unknown = post_input(0x3, 0, 1, b"", 0);
    assert_eq!(
        status_of(slow_call(&m, &cpu, 0x5C, &unknown)),
        status::INVALID_CONNECTION_ID
    );
    assert_eq!(status_of(slow_call(&m, &cpu, 0x5C, &ok)), status::SUCCESS);
    assert_eq!(
        status_of(slow_call(&m, &cpu, 0x5C, &ok)),
        status::INSUFFICIENT_BUFFERS
    );
    let posted = m.take_posted_messages();
    assert_eq!(posted.len(), 2);
    assert_eq!(posted[0].connection_id, 0x2_0001);
    assert_eq!(posted[0].message_type, 1);
    assert_eq!(posted[0].payload, b"hello");
    // Capacity is free again; injected transient failures come first.
    m.fail_next_post_messages(1, status::INSUFFICIENT_BUFFERS);
    assert_eq!(
        status_of(slow_call(&m, &cpu, 0x5C, &ok)),
        status::INSUFFICIENT_BUFFERS
    );
    assert_eq!(status_of(slow_call(&m, &cpu, 0x5C, &ok)), status::SUCCESS);
    // PostMessage cannot be a register call (256 bytes).
    assert_eq!(
        status_of(cpu.fast_hypercall(0x1_005C, 0x2_0001, 1)),
        status::INVALID_HYPERCALL_INPUT
    );
}

#[test]
fn privileges_deny_hypercalls() {
    let m = MockHypervisor::new(
        MockConfig::new(HostPreset::Ws2022).without_privileges((1 << 36) | (1 << 37)),
    );
    let cpu = m.vp(0);
    enable_hypercalls(&m, &cpu);
    m.connect_message_port(1, 1);
    m.connect_event_port(1);
    let input = post_input(1, 0, 1, b"", 0);
    assert_eq!(
        status_of(slow_call(&m, &cpu, 0x5C, &input)),
        status::ACCESS_DENIED
    );
    assert_eq!(
        status_of(cpu.fast_hypercall(0x1_005D, 1, 0)),
        status::ACCESS_DENIED
    );
}

#[test]
fn signal_event_paths() {
    let m = hv(HostPreset::Ws2022);
    let cpu = m.vp(0);
    enable_hypercalls(&m, &cpu);
    m.connect_event_port(0x10);
    assert_eq!(
        status_of(cpu.fast_hypercall(0x1_005D, 0x10 | (3 << 32), 0)),
        status::SUCCESS
    );
    let mut slow = 0x10u32.to_le_bytes().to_vec();
    slow.extend_from_slice(&5u16.to_le_bytes());
    slow.extend_from_slice(&[0, 0]);
    assert_eq!(status_of(slow_call(&m, &cpu, 0x5D, &slow)), status::SUCCESS);
    assert_eq!(
        status_of(cpu.fast_hypercall(0x1_005D, 0x11, 0)),
        status::INVALID_CONNECTION_ID
    );
    assert_eq!(
        status_of(cpu.fast_hypercall(0x1_005D, 0x10 | (1 << 48), 0)),
        status::INVALID_PARAMETER
    );
    assert_eq!(m.take_signaled_events(), vec![(0x10, 3), (0x10, 5)]);
}

#[test]
fn tlb_flush_and_ipi() {
    let m = hv(HostPreset::Ws2022);
    let cpu = m.vp(0);
    enable_hypercalls(&m, &cpu);
    let mut header = Vec::new();
    for q in [0x1234_5000u64, 0b101, 0b1] {
        header.extend_from_slice(&q.to_le_bytes());
    }
    assert_eq!(
        status_of(slow_call(&m, &cpu, 0x0002, &header)),
        status::SUCCESS
    );
    let mut bad = header.clone();
    bad[8] = 0x10;
    assert_eq!(
        status_of(slow_call(&m, &cpu, 0x0002, &bad)),
        status::INVALID_PARAMETER
    );
    // Rep call: 3 GVAs, rep count 3, start 1.
    let mut list = header.clone();
    for gva in [0x1000u64, 0x2000, 0x3000] {
        list.extend_from_slice(&gva.to_le_bytes());
    }
    let r = slow_call(&m, &cpu, 0x0003 | (3 << 32) | (1 << 48), &list);
    assert_eq!(status_of(r), status::SUCCESS);
    assert_eq!((r >> 32) & 0xFFF, 3);
    assert_eq!(
        status_of(slow_call(&m, &cpu, 0x0003, &list)),
        status::INVALID_HYPERCALL_INPUT
    );
    assert_eq!(
        status_of(slow_call(&m, &cpu, 0x0003 | (2 << 32) | (2 << 48), &list)),
        status::INVALID_HYPERCALL_INPUT
    );
    let flushes = m.tlb_flushes();
    assert_eq!(flushes.len(), 2);
    assert_eq!(flushes[0].address_space, 0x1234_5000);
    assert_eq!(flushes[0].flags, 0b101);
    assert_eq!(flushes[0].processor_mask, 1);
    assert_eq!(flushes[1].gva_list, vec![0x2000, 0x3000]);

    assert_eq!(
        status_of(cpu.fast_hypercall(0x1_000B, 0x30, 1)),
        status::SUCCESS
    );
    assert_eq!(
        status_of(cpu.fast_hypercall(0x1_000B, 0x0F, 1)),
        status::INVALID_PARAMETER
    );
    assert_eq!(
        status_of(cpu.fast_hypercall(0x1_000B, 0x30 | (1 << 32), 1)),
        status::INVALID_PARAMETER
    );
    assert_eq!(
        status_of(cpu.fast_hypercall(0x1_000B, 0x30 | (1 << 40), 1)),
        status::INVALID_PARAMETER
    );
    let mut ipi = 0x31u32.to_le_bytes().to_vec();
    ipi.extend_from_slice(&[0; 4]);
    ipi.extend_from_slice(&1u64.to_le_bytes());
    assert_eq!(
        status_of(slow_call(&m, &cpu, 0x000B, &ipi)),
        status::SUCCESS
    );
    assert_eq!(m.ipis(), vec![(0x30, 1), (0x31, 1)]);
    assert_eq!(m.take_interrupts(0), vec![0x30, 0x31]);
}

// ---------------------------------------------------------------- SynIC

fn slot(simp: u64, sint: u64) -> u64 {
    simp + sint * 256
}

#[test]
fn message_delivery_pending_and_eom() {
    let m = hv(HostPreset::Ws2016);
    let cpu = m.vp(0);
    enable_hypercalls(&m, &cpu);
    let (simp, _) = enable_synic(&m, &cpu, true);
    for i in 1..=3u8 {
        m.deliver_message(0, 2, 1, &[i; 8]).unwrap();
    }
    let s = slot(simp, 2);
    assert_eq!(u32_at(&m, s), 1);
    assert_eq!(bytes(&m, s + 4, 1), [8]);
    assert_eq!(bytes(&m, s + 5, 1)[0] & 1, 1, "pending");
    assert_eq!(bytes(&m, s + 16, 8), [1; 8]);
    assert_eq!(m.take_interrupts(0), vec![0xF3]);
    // Free the slot, see pending, EOM: the next message appears.
    write(&m, s, &0u32.to_le_bytes());
    cpu.write_register(R::Eom, 0);
    assert_eq!(u32_at(&m, s), 1);
    assert_eq!(bytes(&m, s + 16, 8), [2; 8]);
    assert_eq!(bytes(&m, s + 5, 1)[0] & 1, 1);
    assert_eq!(m.take_interrupts(0), vec![0xF3]);
    // Without freeing the slot, EOM delivers nothing.
    cpu.write_register(R::Eom, 0);
    assert_eq!(bytes(&m, s + 16, 8), [2; 8]);
    write(&m, s, &0u32.to_le_bytes());
    cpu.write_register(R::Eom, 0);
    assert_eq!(bytes(&m, s + 16, 8), [3; 8]);
    assert_eq!(bytes(&m, s + 5, 1)[0] & 1, 0, "last message: no pending");
    write(&m, s, &0u32.to_le_bytes());
    // EOM with nothing queued is legal and only counted.
    cpu.write_register(R::Eom, 0);
    assert_eq!(u32_at(&m, s), 0);
    assert_eq!(m.eom_count(0), 4);
    assert!(m.protocol_errors().is_empty(), "{:?}", m.protocol_errors());
}

#[test]
fn apic_eoi_rescans_without_auto_eoi() {
    let m = hv(HostPreset::Ws2022);
    let cpu = m.vp(0);
    let (simp, _) = enable_synic(&m, &cpu, false);
    m.deliver_message(0, 2, 1, b"a").unwrap();
    m.deliver_message(0, 2, 1, b"b").unwrap();
    let s = slot(simp, 2);
    write(&m, s, &0u32.to_le_bytes());
    m.apic_eoi(0);
    assert_eq!(bytes(&m, s + 16, 1), b"b");
    assert_eq!(m.eom_count(0), 0);
}

#[test]
fn messages_queue_while_masked_or_disabled() {
    let m = hv(HostPreset::Ws2022);
    let cpu = m.vp(0);
    let (_, simp) = m.alloc_page();
    // Nothing enabled yet: queued.
    m.deliver_message(0, 2, 1, b"x").unwrap();
    cpu.write_register(R::Simp, simp | 1);
    cpu.write_register(R::Scontrol, 1);
    assert_eq!(u32_at(&m, slot(simp, 2)), 0);
    assert_eq!(m.queued_messages(0, 2), 1);
    assert!(m.take_interrupts(0).is_empty());
    // Unmask: delivered and interrupt raised.
    cpu.write_register(R::Sint(2), 0x41);
    assert_eq!(u32_at(&m, slot(simp, 2)), 1);
    assert_eq!(bytes(&m, slot(simp, 2) + 16, 1), b"x");
    assert_eq!(m.take_interrupts(0), vec![0x41]);
    // Polling mode: delivered without interrupts.
    cpu.write_register(R::Sint(3), (1 << 16) | (1 << 18));
    m.deliver_message(0, 3, 5, b"p").unwrap();
    assert_eq!(u32_at(&m, slot(simp, 3)), 5);
    assert!(m.take_interrupts(0).is_empty());
}

#[test]
fn event_flags() {
    let m = hv(HostPreset::Ws2022);
    let cpu = m.vp(0);
    assert_eq!(
        m.set_event_flag(0, 2, 1),
        Err(test_harness::hv::MockError::EventPageDisabled)
    );
    let (_, siefp) = enable_synic(&m, &cpu, false);
    m.set_event_flag(0, 2, 1).unwrap();
    m.set_event_flag(0, 2, 10).unwrap();
    m.set_event_flag(0, 2, 2047).unwrap();
    let s = siefp + 2 * 256;
    assert_eq!(bytes(&m, s, 2), [0b10, 0b100]);
    assert_eq!(bytes(&m, s + 255, 1), [0x80]);
    assert_eq!(m.take_interrupts(0), vec![0xF3; 3]);
    assert!(m.set_event_flag(0, 2, 2048).is_err());
    assert!(m.set_event_flag(1, 2, 0).is_err());
}

// ---------------------------------------------------------------- clock

/// The guest's read protocol, done by hand; returns (time, retries).
fn read_tsc_page(m: &MockHypervisor, cpu: &MockVp, page: u64) -> Option<(u64, u32)> {
    let mut retries = 0;
    loop {
        let seq = u32_at(m, page);
        if seq == 0 {
            return None;
        }
        let scale = u64_at(m, page + 8);
        let offset = u64_at(m, page + 16) as i64;
        let tsc = cpu.read_tsc();
        if u32_at(m, page) != seq {
            retries += 1;
            continue;
        }
        let t = ((u128::from(tsc) * u128::from(scale)) >> 64) as u64;
        return Some((t.wrapping_add(offset as u64), retries));
    }
}

#[test]
fn reference_tsc_page_math() {
    for freq in [2_500_000_000u64, 3_000_000_000, 2_194_843_000, 10_000_000] {
        let mut cfg = MockConfig::new(HostPreset::Ws2022);
        cfg.tsc_frequency_hz = freq;
        let m = MockHypervisor::new(cfg);
        let cpu = m.vp(0);
        let (_, page) = m.alloc_page();
        cpu.write_register(R::ReferenceTsc, page | 1);
        assert_ne!(u32_at(&m, page), 0);
        for step in [0u64, 1, 9_999, 10_000_000, 36_000_000_000, 123_456_789] {
            m.advance_time(step);
            let now = cpu.read_register(R::TimeRefCount);
            assert_eq!(now, m.reference_time());
            let (t, _) = read_tsc_page(&m, &cpu, page).unwrap();
            assert!(t.abs_diff(now) <= 1, "freq {freq}: {t} vs {now}");
        }
    }
}

#[test]
fn tsc_page_invalid_and_update_during_read() {
    let m = hv(HostPreset::Ws2022);
    let cpu = m.vp(0);
    let (_, page) = m.alloc_page();
    cpu.write_register(R::ReferenceTsc, page | 1);
    m.set_tsc_page_valid(false);
    assert_eq!(u32_at(&m, page), 0);
    assert!(read_tsc_page(&m, &cpu, page).is_none());
    m.set_tsc_page_valid(true);
    let seq = u32_at(&m, page);
    assert_ne!(seq, 0);
    m.advance_time(1000);
    m.update_tsc_page_during_next_tsc_read();
    let (t, retries) = read_tsc_page(&m, &cpu, page).unwrap();
    assert_eq!(retries, 1);
    assert!(t.abs_diff(1000) <= 1);
    assert_ne!(u32_at(&m, page), seq);
}

#[test]
fn tsc_follows_reference_time() {
    let m = hv(HostPreset::Ws2022);
    let cpu = m.vp(0);
    let t0 = cpu.read_tsc();
    m.advance_time(10_000_000);
    assert_eq!(cpu.read_tsc() - t0, 2_500_000_000);
}

// ---------------------------------------------------------------- timers

#[test]
fn one_shot_message_timer() {
    let m = hv(HostPreset::Ws2016);
    let cpu = m.vp(0);
    let (simp, _) = enable_synic(&m, &cpu, true);
    m.advance_time(100);
    // Message mode, SINT 2, auto-enable.
    cpu.write_register(R::StimerConfig(0), (2 << 16) | (1 << 3));
    cpu.write_register(R::StimerCount(0), 600);
    assert_eq!(cpu.read_register(R::StimerConfig(0)) & 1, 1);
    m.advance_time(499);
    assert_eq!(u32_at(&m, slot(simp, 2)), 0);
    m.advance_time(10);
    let s = slot(simp, 2);
    assert_eq!(u32_at(&m, s), 0x8000_0010);
    assert_eq!(bytes(&m, s + 4, 1), [24]);
    assert_eq!(u32_at(&m, s + 16), 0);
    assert_eq!(u64_at(&m, s + 24), 600);
    assert_eq!(u64_at(&m, s + 32), 600);
    assert_eq!(
        cpu.read_register(R::StimerConfig(0)) & 1,
        0,
        "one-shot disables"
    );
    assert_eq!(m.take_interrupts(0), vec![0xF3]);
    // In the past: fires at once.
    write(&m, s, &0u32.to_le_bytes());
    cpu.write_register(R::StimerConfig(1), (2 << 16) | 1);
    cpu.write_register(R::StimerCount(1), 5);
    assert_eq!(u32_at(&m, s), 0x8000_0010);
    assert_eq!(u32_at(&m, s + 16), 1);
}

#[test]
fn periodic_and_direct_timers() {
    let m = hv(HostPreset::Ws2022);
    let cpu = m.vp(0);
    // Direct mode, vector 0x50, periodic 1000.
    cpu.write_register(R::StimerCount(3), 1000);
    cpu.write_register(R::StimerConfig(3), 1 | (1 << 1) | (0x50 << 4) | (1 << 12));
    m.advance_time(3500);
    assert_eq!(m.take_interrupts(0), vec![0x50; 3]);
    // COUNT 0 stops it.
    cpu.write_register(R::StimerCount(3), 0);
    assert_eq!(cpu.read_register(R::StimerConfig(3)) & 1, 0);
    m.advance_time(5000);
    assert!(m.take_interrupts(0).is_empty());
}

// ---------------------------------------------------------------- crash

#[test]
fn crash_report_with_message() {
    let m = hv(HostPreset::Ws2022);
    let cpu = m.vp(0);
    assert_eq!(cpu.read_register(R::CrashControl), (1 << 63) | (1 << 62));
    let (_, buf) = m.alloc_page();
    write(&m, buf, b"kernel panic: oops");
    cpu.write_register(R::CrashParameter(0), 0xDEAD);
    cpu.write_register(R::CrashParameter(3), buf);
    cpu.write_register(R::CrashParameter(4), 18);
    cpu.write_register(R::CrashControl, (1 << 63) | (1 << 62));
    let report = m.crash_report().unwrap();
    assert_eq!(report.parameters[0], 0xDEAD);
    assert_eq!(report.control, (1 << 63) | (1 << 62));
    assert_eq!(report.message.as_deref(), Some(&b"kernel panic: oops"[..]));
    // Out-of-range message: report kept, message dropped, error recorded.
    cpu.write_register(R::CrashParameter(3), 0);
    cpu.write_register(R::CrashControl, (1 << 63) | (1 << 62));
    assert_eq!(m.crash_report().unwrap().message, None);
    assert_eq!(m.protocol_errors().len(), 1);
}

// ---------------------------------------------------------------- HAL

#[test]
fn hal_allocation_translation_refusal() {
    let m = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_memory_bytes(8 * 4096));
    let hal = m.hal();
    let a = hal.alloc_pages(3).unwrap();
    assert_eq!(a.as_ptr() as usize % 4096, 0);
    let gpa = hal.virt_to_phys(a).unwrap();
    assert_eq!(gpa, m.memory_base_gpa());
    // SAFETY: byte 4097 of a 3-page allocation.
    let inner = unsafe { a.add(4097) };
    assert_eq!(hal.virt_to_phys(inner), Ok(gpa + 4097));
    assert_eq!(m.gpa_to_ptr(gpa + 4097, 1), Some(inner));
    // Dirty the pages, free, reallocate: zeroed again.
    // SAFETY: the allocation is 3 pages long and owned by this test.
    unsafe { a.as_ptr().write_bytes(0xFF, 3 * 4096) };
    // SAFETY: exactly the allocation above, no longer used.
    unsafe { hal.free_pages(a, 3) };
    let b = hal.alloc_pages(5).unwrap();
    // SAFETY: inside the 5-page allocation.
    assert_eq!(unsafe { *b.add(100).as_ptr() }, 0);
    assert_eq!(hal.alloc_pages(4), Err(HalError::OutOfMemory));
    assert_eq!(hal.alloc_pages(0), Err(HalError::InvalidRequest));
    let local = 5u8;
    assert_eq!(
        hal.virt_to_phys(NonNull::from(&local)),
        Err(HalError::NotTranslatable)
    );
    // SAFETY: the VRAM window is device memory of this mock.
    let vram = unsafe { hal.map_mmio(0xF800_0000, 8 << 20) }.unwrap();
    assert_eq!(vram.as_ptr() as usize % 4096, 0);
    // SAFETY: as above; these ranges are refused.
    unsafe {
        assert_eq!(
            hal.map_mmio(0xF800_0000, (8 << 20) + 1),
            Err(HalError::NotTranslatable)
        );
        assert_eq!(
            hal.map_mmio(m.memory_base_gpa(), 4096),
            Err(HalError::NotTranslatable)
        );
        assert_eq!(hal.map_mmio(0xF800_0001, 1), Err(HalError::InvalidRequest));
    }
    assert!(m.gpa_to_ptr(m.memory_base_gpa() - 1, 1).is_none());
    assert!(
        m.gpa_to_ptr(m.memory_base_gpa() + 8 * 4096 - 1, 2)
            .is_none()
    );
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<MockHypervisor>();
    check::<test_harness::hv::MockHal>();
    fn send<T: Send + Clone>() {}
    send::<MockVp>();
}

// ---------------------------------------------------------------- overlays, misuse

#[test]
fn synic_pages_are_overlays() {
    let m = hv(HostPreset::Ws2022);
    let cpu = m.vp(0);
    let (_, page) = m.alloc_page();
    write(&m, page, &[0xEE; 4096]);
    cpu.write_register(R::Simp, page | 1);
    // The overlay starts empty, whatever RAM held.
    assert_eq!(bytes(&m, page, 4096), vec![0; 4096]);
    cpu.write_register(R::Scontrol, 1);
    cpu.write_register(R::Sint(2), 0xF3);
    m.deliver_message(0, 2, 7, b"kept").unwrap();
    // Disabling brings the RAM back; re-enabling shows the overlay again, message included.
    cpu.write_register(R::Simp, page);
    assert_eq!(bytes(&m, page, 4096), vec![0xEE; 4096]);
    cpu.write_register(R::Simp, page | 1);
    assert_eq!(u32_at(&m, page + 512), 7);
    assert_eq!(bytes(&m, page + 512 + 16, 4), b"kept");

    let (_, tsc) = m.alloc_page();
    write(&m, tsc, &[0x11; 32]);
    cpu.write_register(R::ReferenceTsc, tsc | 1);
    assert_ne!(u32_at(&m, tsc), 0x1111_1111);
    cpu.write_register(R::ReferenceTsc, 0);
    assert_eq!(bytes(&m, tsc, 32), [0x11; 32]);
}

#[test]
fn hypercall_msr_lock() {
    let m = hv(HostPreset::Ws2016);
    let cpu = m.vp(0);
    cpu.write_register(R::GuestOsId, GUEST_OS_ID);
    let (_, gpa) = m.alloc_page();
    // WS2016 preset has no MSR lock feature (EDX bit 18).
    assert_gp(&m, || cpu.write_register(R::Hypercall, gpa | 0b11));
    let m = hv(HostPreset::Ws2022);
    let cpu = m.vp(0);
    cpu.write_register(R::GuestOsId, GUEST_OS_ID);
    let (_, gpa) = m.alloc_page();
    cpu.write_register(R::Hypercall, gpa | 0b11);
    cpu.write_register(R::Hypercall, 0);
    assert_eq!(cpu.read_register(R::Hypercall), gpa | 0b11);
    assert_eq!(m.protocol_errors().len(), 1);
}

#[test]
fn hal_free_of_unknown_allocation_panics() {
    let m = hv(HostPreset::Ws2022);
    let hal = m.hal();
    let a = hal.alloc_pages(2).unwrap();
    let msg = panic_message(|| {
        // SAFETY: deliberately wrong size; the mock detects it before touching anything.
        unsafe { hal.free_pages(a, 1) }
    });
    assert!(msg.contains("not a live allocation"), "{msg}");
    // SAFETY: exactly the allocation above.
    unsafe { hal.free_pages(a, 2) };
    assert_eq!(m.protocol_errors().len(), 1);
}

#[test]
fn per_vp_synic_and_threads() {
    let m = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_vp_count(2));
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let m = m.clone();
            std::thread::spawn(move || {
                let cpu = m.vp(i);
                assert_eq!(cpu.read_register(R::VpIndex), u64::from(i));
                let (simp, _) = enable_synic(&m, &cpu, false);
                simp
            })
        })
        .collect();
    let simps: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    m.deliver_message(1, 2, 9, b"vp1").unwrap();
    assert_eq!(u32_at(&m, slot(simps[1], 2)), 9);
    assert_eq!(u32_at(&m, slot(simps[0], 2)), 0);
    assert_eq!(m.take_interrupts(1), vec![0xF3]);
    assert!(m.take_interrupts(0).is_empty());
    assert!(m.deliver_message(2, 2, 1, b"").is_err());
    assert!(m.deliver_message(0, 16, 1, b"").is_err());
    assert!(m.deliver_message(0, 2, 0, b"").is_err());
    assert!(m.deliver_message(0, 2, 1, &[0; 241]).is_err());
}

#[test]
fn writing_the_hypercall_page_is_caught() {
    let m = hv(HostPreset::Ws2022);
    let cpu = m.vp(0);
    let page = enable_hypercalls(&m, &cpu);
    write(&m, page, &[0x90]);
    assert_gp(&m, || {
        cpu.fast_hypercall(0x1_0008, 0, 0);
    });
}

#[test]
fn hal_poisons_freed_pages() {
    let m = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_memory_bytes(8 * 4096));
    let hal = m.hal();
    let a = hal.alloc_pages(2).unwrap();
    let gpa = hal.virt_to_phys(a).unwrap();
    // SAFETY: the allocation is 2 pages long and owned by this test.
    unsafe { a.as_ptr().write_bytes(0x11, 2 * 4096) };
    // SAFETY: exactly the allocation above, no longer used.
    unsafe { hal.free_pages(a, 2) };
    let p = m.gpa_to_ptr(gpa, 2 * 4096).unwrap();
    // SAFETY: guest RAM of `m`, nothing else touches it now.
    let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr(), 2 * 4096) };
    assert!(bytes.iter().all(|&b| b == test_harness::hv::POISON_BYTE));
    assert_eq!(test_harness::hv::POISON_BYTE, 0xDB);
    // A new allocation of the same pages is zeroed, not poisoned.
    let b = hal.alloc_pages(2).unwrap();
    assert_eq!(b, a);
    // SAFETY: inside the 2-page allocation.
    assert_eq!(unsafe { *b.add(4096 + 7).as_ptr() }, 0);
    // The by-GPA free does the same, and refuses what is not an allocation.
    assert!(m.hal().free_gpa(gpa + 4096, 1).is_err());
    m.hal().free_gpa(gpa, 2).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { *b.add(5).as_ptr() }, 0xDB);
    assert_eq!(m.freed_while_mapped(), []);
}

#[test]
fn freeing_a_host_mapped_page_is_recorded_and_not_fatal() {
    let m = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_memory_bytes(8 * 4096));
    let hal = m.hal();
    let a = hal.alloc_pages(3).unwrap();
    let gpa = hal.virt_to_phys(a).unwrap();
    let pfn = gpa / 4096;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook: test_harness::hv::ViolationHook = {
        let seen = seen.clone();
        std::sync::Arc::new(move |v| seen.lock().unwrap().push(v.clone()))
    };
    let with_hook = m.map_for_host("ring of test channel", [pfn + 1, pfn + 2], Some(hook));
    let without_hook = m.map_for_host("test buffer", [pfn + 2], None);
    assert!(m.is_host_mapped(gpa + 4096) && !m.is_host_mapped(gpa));
    assert_eq!(m.host_mappings().len(), 2);
    // SAFETY: exactly the allocation above; the test keeps no reference into it.
    unsafe { hal.free_pages(a, 3) };
    let v = m.freed_while_mapped();
    assert_eq!(v.len(), 2);
    assert_eq!((v[0].gpa, v[0].pages), (gpa, 3));
    assert_eq!(v[0].pfns, [pfn + 1, pfn + 2]);
    assert_eq!(v[0].owner, "ring of test channel");
    assert_eq!(v[1].pfns, [pfn + 2]);
    // With a hook the owner hears of it; without one it is a hypervisor protocol error.
    assert_eq!(*seen.lock().unwrap(), [v[0].clone()]);
    assert_eq!(m.protocol_errors().len(), 1);
    assert!(m.protocol_errors()[0].contains("test buffer"));
    // Dropping the mappings unmaps: the next free of those pages is fine.
    drop((with_hook, without_hook));
    assert_eq!(m.host_mappings(), Vec::<(String, Vec<u64>)>::new());
    let b = hal.alloc_pages(3).unwrap();
    // SAFETY: exactly the allocation above.
    unsafe { hal.free_pages(b, 3) };
    assert_eq!(m.freed_while_mapped().len(), 2);
}
