//! The winhv library driven against the mock hypervisor: every feature and its failure modes.

use std::panic::{AssertUnwindSafe, catch_unwind};

use test_harness::guest::{BootError, VMBUS_VECTOR, boot_vp, guest_page, harness_guest_os_id};
use test_harness::hv::{HostPreset, MockConfig, MockHypervisor, feature, privilege, status};
use winhv::bringup::{Partition, Vp};
use winhv::crash::{CrashError, report_crash, report_crash_message};
use winhv::hypercall::{FlushFlags, GvaRange, HypercallSetupError, retry_transient};
use winhv::synic::VMBUS_MESSAGE_SINT;
use winhv::time::{TimeError, apic_frequency, read_reference_counter, tsc_frequency};
use winhv::timer::{TimerError, TimerExpiredPayload};
use winhv::{
    Cpu, DetectError, Features, HvError, HvStatus, HypercallError, Privileges, Recommendations,
    SintConfig, Synic, SynicError, SyntheticRegister, SyntheticTimer, TimerDelivery,
};

/// Enables the hypercall page at a page of mock guest RAM that the test reserves for it.
fn enable_hypercall_page(
    cpu: &test_harness::hv::MockVp,
    gpa: u64,
) -> Result<(), HypercallSetupError> {
    // SAFETY: every caller passes a page it allocated for this and never otherwise uses; the
    // mock's RAM is only accessed through raw pointers.
    unsafe { winhv::enable_hypercall_page(cpu, gpa) }
}

fn mock(preset: HostPreset) -> MockHypervisor {
    MockHypervisor::new(MockConfig::new(preset))
}

// ---------------------------------------------------------------------------------------------
// Detection

#[test]
fn detects_each_hyperv_preset() {
    let ws2016 = winhv::detect(&mock(HostPreset::Ws2016).vp(0)).unwrap();
    assert_eq!(ws2016.vendor_str(), Some("Microsoft Hv"));
    assert_eq!((ws2016.version.major, ws2016.version.minor), (10, 0));
    assert_eq!(ws2016.version.build, 14393);
    assert!(ws2016.require(Privileges::REQUIRED_FOR_VMBUS).is_ok());
    assert!(
        ws2016
            .features
            .contains(Features::GUEST_CRASH_REGS | Features::FREQUENCY_REGS)
    );
    assert!(!ws2016.features.contains(Features::DIRECT_SYNTHETIC_TIMERS));
    assert!(ws2016.auto_eoi_allowed());

    let ws2022 = winhv::detect(&mock(HostPreset::Ws2022).vp(0)).unwrap();
    assert_eq!(ws2022.version.build, 20348);
    assert!(ws2022.features.contains(Features::DIRECT_SYNTHETIC_TIMERS));
    assert!(
        ws2022
            .recommendations
            .contains(Recommendations::DEPRECATE_AUTO_EOI)
    );
    assert!(!ws2022.auto_eoi_allowed());
    assert!(ws2022.max_leaf >= 0x4000_0005);
}

#[test]
fn rejects_machines_that_are_not_hyperv() {
    assert_eq!(
        winhv::detect(&mock(HostPreset::BareMetal).vp(0)),
        Err(DetectError::NoHypervisor)
    );
    match winhv::detect(&mock(HostPreset::NotHyperV).vp(0)) {
        Err(DetectError::NotHyperV { vendor, interface }) => {
            assert_eq!(&vendor[..9], b"KVMKVMKVM");
            assert_eq!(interface, 0);
        }
        other => panic!("expected NotHyperV, got {other:?}"),
    }
}

#[test]
fn missing_privileges_are_named() {
    let m = MockHypervisor::new(
        MockConfig::new(HostPreset::Ws2016).without_privileges(privilege::HYPERCALL_MSRS),
    );
    assert_eq!(
        winhv::detect(&m.vp(0)),
        Err(DetectError::MissingPrivileges(
            Privileges::ACCESS_HYPERCALL_MSRS
        ))
    );
    let m = MockHypervisor::new(
        MockConfig::new(HostPreset::Ws2022)
            .without_privileges(privilege::POST_MESSAGES | privilege::SYNIC_REGS),
    );
    let info = winhv::detect(&m.vp(0)).unwrap();
    assert_eq!(
        info.require(Privileges::REQUIRED_FOR_VMBUS),
        Err(DetectError::MissingPrivileges(
            Privileges::POST_MESSAGES | Privileges::ACCESS_SYNIC_REGS
        ))
    );
    assert!(
        DetectError::MissingPrivileges(Privileges::POST_MESSAGES)
            .to_string()
            .contains("privileges")
    );
}

// ---------------------------------------------------------------------------------------------
// Guest OS id and the hypercall page

#[test]
fn hypercall_page_needs_the_guest_os_id_first() {
    let m = mock(HostPreset::Ws2016);
    let cpu = m.vp(0);
    let page = guest_page(&m);
    assert_eq!(
        enable_hypercall_page(&cpu, page.gpa()),
        Err(HypercallSetupError::GuestOsIdNotSet)
    );
    assert_eq!(
        enable_hypercall_page(&cpu, page.gpa() + 8),
        Err(HypercallSetupError::Misaligned(page.gpa() + 8))
    );
    harness_guest_os_id().write(&cpu);
    assert_eq!(
        cpu.read_register(SyntheticRegister::GuestOsId),
        harness_guest_os_id().raw()
    );
    enable_hypercall_page(&cpu, page.gpa()).unwrap();
    let mut stub = [0u8; 4];
    page.read_at(0, &mut stub);
    assert_eq!(stub, [0x0F, 0x01, 0xC1, 0xC3], "vmcall; ret overlay");
    winhv::disable_hypercall_page(&cpu);
    page.read_at(0, &mut stub);
    assert_eq!(stub, [0; 4], "RAM under the overlay is back");
    assert_eq!(
        cpu.read_register(SyntheticRegister::Hypercall) >> 12,
        page.gpn()
    );
}

#[test]
fn clearing_the_guest_os_id_disables_hypercalls() {
    let m = mock(HostPreset::Ws2016);
    let vp = boot_vp(&m, 0).unwrap();
    assert_eq!(vp.cpu.read_register(SyntheticRegister::Hypercall) & 1, 1);
    winhv::guest_id::clear_guest_os_id(&vp.cpu);
    assert_eq!(vp.cpu.read_register(SyntheticRegister::Hypercall) & 1, 0);
}

// ---------------------------------------------------------------------------------------------
// Bring-up through winhv::bringup, as a kernel does it

/// Brings the partition up on VP 0 with fresh mock pages.
fn bring_up_partition(m: &MockHypervisor) -> Result<Partition, BootError> {
    let mut pages = || Some(guest_page(m));
    // SAFETY: a MockVp models the hypercall page instead of jumping into it, so any fresh page
    // is the page it "calls into".
    unsafe { Partition::bring_up(&m.vp(0), harness_guest_os_id(), guest_page(m), &mut pages) }
}

#[test]
fn two_vps_come_up_through_winhv_bringup() {
    use SyntheticRegister::{GuestOsId, Hypercall, ReferenceTsc, Scontrol, Siefp, Simp, Sint};
    for (preset, auto_eoi) in [(HostPreset::Ws2016, true), (HostPreset::Ws2022, false)] {
        let m = MockHypervisor::new(MockConfig::new(preset).with_vp_count(2));
        let mut pages = || Some(guest_page(&m));
        let (cpu0, cpu1) = (m.vp(0), m.vp(1));
        let partition = bring_up_partition(&m).unwrap();
        let vp0 = Vp::bring_up(cpu0.clone(), &partition.info, &mut pages, VMBUS_VECTOR).unwrap();
        let vp1 = Vp::bring_up(cpu1.clone(), &partition.info, &mut pages, VMBUS_VECTOR).unwrap();

        // Partition-wide registers: written once, by the bootstrap VP, seen by both.
        let writes = |register| {
            [
                m.register_writes(0, register),
                m.register_writes(1, register),
            ]
        };
        assert_eq!(
            writes(GuestOsId),
            [1, 0],
            "{preset:?}: guest OS id written once"
        );
        assert_eq!(writes(Hypercall), [1, 0]);
        assert_eq!(writes(ReferenceTsc), [1, 0]);
        for cpu in [&cpu0, &cpu1] {
            assert_eq!(cpu.read_register(GuestOsId), harness_guest_os_id().raw());
            assert_eq!(
                cpu.read_register(Hypercall),
                partition.hypercall_page_gpa() | 1,
                "hypercall page enabled"
            );
            assert_eq!(cpu.read_register(ReferenceTsc) & 1, 1, "TSC page enabled");
        }

        // Per-VP registers: each VP programs its own SynIC once.
        let mut synic_pages = Vec::new();
        for (index, cpu) in [(0, &cpu0), (1, &cpu1)] {
            let sint = Sint(VMBUS_MESSAGE_SINT);
            for register in [Simp, Siefp, sint, Scontrol] {
                assert_eq!(
                    m.register_writes(index, register),
                    1,
                    "VP {index} {register:?}"
                );
            }
            let (simp, siefp) = (cpu.read_register(Simp), cpu.read_register(Siefp));
            assert_eq!(
                (simp & 1, siefp & 1),
                (1, 1),
                "VP {index}: SIMP and SIEFP enabled"
            );
            assert_eq!(
                cpu.read_register(Scontrol) & 1,
                1,
                "VP {index}: SynIC enabled"
            );
            let sint = cpu.read_register(sint);
            assert_eq!(sint & 0xFF, u64::from(VMBUS_VECTOR));
            assert_eq!(sint & (1 << 16), 0, "unmasked");
            assert_eq!(sint & (1 << 17) != 0, auto_eoi, "{preset:?} AutoEOI");
            synic_pages.extend([simp >> 12, siefp >> 12]);
        }
        synic_pages.sort_unstable();
        synic_pages.dedup();
        assert_eq!(synic_pages.len(), 4, "every VP has its own SIMP and SIEFP");

        // What came up works: a message for VP 1 lands in VP 1's SynIC, either VP can call
        // the hypervisor, and the one clock reads the TSC page from both.
        m.deliver_message(1, VMBUS_MESSAGE_SINT, 1, b"to VP 1")
            .unwrap();
        assert_eq!(m.take_interrupts(1), [VMBUS_VECTOR]);
        assert!(
            vp0.synic
                .take_message(&cpu0, VMBUS_MESSAGE_SINT)
                .unwrap()
                .is_none()
        );
        let message = vp1.synic.take_message(&cpu1, VMBUS_MESSAGE_SINT).unwrap();
        assert_eq!(message.expect("delivered").payload(), b"to VP 1");
        m.connect_event_port(5);
        vp0.hypercalls.signal_event(5, 1).unwrap();
        vp1.hypercalls.signal_event(5, 2).unwrap();
        assert_eq!(m.take_signaled_events(), [(5, 1), (5, 2)]);
        m.advance_time(10_000);
        let counter_reads = m.time_ref_count_reads();
        for cpu in [&cpu0, &cpu1] {
            assert!(partition.clock.now(cpu).abs_diff(m.reference_time()) <= 1);
        }
        assert_eq!(
            m.time_ref_count_reads(),
            counter_reads,
            "read via the TSC page"
        );
        assert_eq!(m.protocol_errors(), Vec::<String>::new());
    }
}

#[test]
fn failed_bring_up_writes_no_register() {
    let m = MockHypervisor::new(
        MockConfig::new(HostPreset::Ws2022).without_privileges(privilege::SIGNAL_EVENTS),
    );
    let err = bring_up_partition(&m).err();
    assert_eq!(
        err,
        Some(BootError::Detect(DetectError::MissingPrivileges(
            Privileges::SIGNAL_EVENTS
        )))
    );
    assert_eq!(m.register_writes(0, SyntheticRegister::GuestOsId), 0);
    assert!(err.is_some_and(|e| e.to_string().starts_with("Hyper-V detection: ")));
    assert!(matches!(
        boot_vp(&m, 0),
        Err(BootError::Detect(DetectError::MissingPrivileges(_)))
    ));
}

#[test]
fn a_vp_cannot_come_up_before_its_partition() {
    let m = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_vp_count(2));
    let cpu = m.vp(1);
    let info = winhv::detect(&cpu).unwrap();
    let mut pages = || Some(guest_page(&m));
    assert!(matches!(
        Vp::bring_up(cpu.clone(), &info, &mut pages, VMBUS_VECTOR),
        Err(BootError::HypercallPageDisabled)
    ));
    assert_eq!(m.register_writes(1, SyntheticRegister::Simp), 0);
}

#[test]
fn without_the_tsc_privilege_the_partition_clock_reads_the_counter() {
    let m = MockHypervisor::new(
        MockConfig::new(HostPreset::Ws2016).without_privileges(privilege::PARTITION_REFERENCE_TSC),
    );
    let partition = bring_up_partition(&m).unwrap();
    assert_eq!(m.register_writes(0, SyntheticRegister::ReferenceTsc), 0);
    m.advance_time(777);
    let counter_reads = m.time_ref_count_reads();
    assert_eq!(partition.clock.now(&m.vp(0)), m.reference_time());
    assert_eq!(m.time_ref_count_reads(), counter_reads + 1);
}

// ---------------------------------------------------------------------------------------------
// Hypercalls

#[test]
fn post_message_reaches_the_port() {
    let m = mock(HostPreset::Ws2022);
    let mut vp = boot_vp(&m, 0).unwrap();
    m.connect_message_port(4, 8);
    let payload: Vec<u8> = (0..240u8).collect();
    vp.hypercalls.post_message(4, 1, &payload).unwrap();
    vp.hypercalls.post_message(4, 7, &[]).unwrap();
    let posted = m.take_posted_messages();
    assert_eq!(posted.len(), 2);
    assert_eq!((posted[0].connection_id, posted[0].message_type), (4, 1));
    assert_eq!(posted[0].payload, payload);
    assert_eq!((posted[1].message_type, posted[1].payload.len()), (7, 0));
    assert!(m.protocol_errors().is_empty(), "{:?}", m.protocol_errors());
}

#[test]
fn post_message_arguments_are_checked_before_the_call() {
    let m = mock(HostPreset::Ws2022);
    let mut vp = boot_vp(&m, 0).unwrap();
    m.connect_message_port(4, 8);
    let before = m.hypercall_log().len();
    for (conn, ty, len) in [(4, 1, 241), (4, 0, 8), (4, 0x8000_0001, 8), (1 << 24, 1, 8)] {
        let r = vp.hypercalls.post_message(conn, ty, &vec![0; len]);
        assert!(
            matches!(r, Err(HypercallError::InvalidArgument(_))),
            "{conn} {ty} {len}: {r:?}"
        );
    }
    assert_eq!(
        m.hypercall_log().len(),
        before,
        "nothing reached the hypervisor"
    );
}

#[test]
fn post_message_failures_carry_the_hypervisor_status() {
    let m = mock(HostPreset::Ws2022);
    let mut vp = boot_vp(&m, 0).unwrap();
    assert_eq!(
        vp.hypercalls.post_message(9, 1, b"x"),
        Err(HypercallError::Hv(HvError(HvStatus::INVALID_CONNECTION_ID)))
    );
    m.connect_message_port(4, 1);
    vp.hypercalls.post_message(4, 1, b"first").unwrap();
    let full = vp.hypercalls.post_message(4, 1, b"second").unwrap_err();
    assert_eq!(
        full,
        HypercallError::Hv(HvError(HvStatus::INSUFFICIENT_BUFFERS))
    );
    assert!(full.is_transient());

    let m = MockHypervisor::new(
        MockConfig::new(HostPreset::Ws2022).without_privileges(privilege::POST_MESSAGES),
    );
    let cpu = m.vp(0);
    harness_guest_os_id().write(&cpu);
    enable_hypercall_page(&cpu, guest_page(&m).gpa()).unwrap();
    let mut calls = winhv::Hypercalls::new(cpu, guest_page(&m), guest_page(&m)).unwrap();
    m.connect_message_port(4, 8);
    assert_eq!(
        calls.post_message(4, 1, b"x"),
        Err(HypercallError::Hv(HvError(HvStatus::ACCESS_DENIED)))
    );
}

#[test]
fn transient_post_failures_are_retried_by_the_helper() {
    let m = mock(HostPreset::Ws2022);
    let mut vp = boot_vp(&m, 0).unwrap();
    m.connect_message_port(4, 8);
    m.fail_next_post_messages(2, status::INSUFFICIENT_BUFFERS);
    let mut backoffs = Vec::new();
    retry_transient(
        5,
        || vp.hypercalls.post_message(4, 1, b"hello"),
        |n| backoffs.push(n),
    )
    .unwrap();
    assert_eq!(backoffs, [1, 2]);
    assert_eq!(m.take_posted_messages().len(), 1);

    m.fail_next_post_messages(10, status::INSUFFICIENT_BUFFERS);
    let r = retry_transient(3, || vp.hypercalls.post_message(4, 1, b"x"), |_| {});
    assert_eq!(
        r,
        Err(HypercallError::Hv(HvError(HvStatus::INSUFFICIENT_BUFFERS)))
    );
}

#[test]
fn parameter_pages_must_be_aligned_and_distinct() {
    let m = mock(HostPreset::Ws2016);
    let vp = boot_vp(&m, 0).unwrap();
    let page = guest_page(&m);
    // SAFETY: an address inside a page this test owns; never used to issue a call.
    let misaligned = unsafe {
        winhv::HvPage::new(
            std::ptr::NonNull::new(page.as_ptr().add(8)).unwrap(),
            page.gpa() + 8,
        )
    };
    let r = winhv::Hypercalls::new(vp.cpu.clone(), misaligned, guest_page(&m));
    assert!(matches!(r, Err(HypercallError::InvalidArgument(_))));
    // SAFETY: as above: a second handle to the same page is only used to test the refusal.
    let alias =
        unsafe { winhv::HvPage::new(std::ptr::NonNull::new(page.as_ptr()).unwrap(), page.gpa()) };
    let r = winhv::Hypercalls::new(vp.cpu.clone(), page, alias);
    assert!(matches!(r, Err(HypercallError::InvalidArgument(_))));
}

#[test]
fn signal_event_uses_the_fast_form() {
    let m = mock(HostPreset::Ws2022);
    let vp = boot_vp(&m, 0).unwrap();
    m.connect_event_port(0x2A);
    vp.hypercalls.signal_event(0x2A, 0).unwrap();
    vp.hypercalls.signal_event(0x2A, 3).unwrap();
    assert_eq!(m.take_signaled_events(), [(0x2A, 0), (0x2A, 3)]);
    assert_eq!(
        vp.hypercalls.signal_event(0x2B, 0),
        Err(HvError(HvStatus::INVALID_CONNECTION_ID))
    );
}

#[test]
fn tlb_flushes_are_encoded_and_split() {
    let m = mock(HostPreset::Ws2022);
    let mut vp = boot_vp(&m, 0).unwrap();
    vp.hypercalls
        .flush_virtual_address_space(0x1234_5000, FlushFlags::NON_GLOBAL_MAPPINGS_ONLY, 0b101)
        .unwrap();
    let ranges: Vec<GvaRange> = (0..1000u64)
        .map(|i| GvaRange::new(0xFFFF_8000_0000_0000 + i * 0x10_0000, (i % 7) as u16).unwrap())
        .collect();
    vp.hypercalls
        .flush_virtual_address_list(
            0,
            FlushFlags::ALL_VIRTUAL_ADDRESS_SPACES | FlushFlags::ALL_PROCESSORS,
            0,
            &ranges,
        )
        .unwrap();
    let flushes = m.tlb_flushes();
    assert_eq!(
        flushes.len(),
        3,
        "one space flush and the list split in two calls"
    );
    assert_eq!(flushes[0].address_space, 0x1234_5000);
    assert_eq!(
        flushes[0].flags,
        FlushFlags::NON_GLOBAL_MAPPINGS_ONLY.bits()
    );
    assert_eq!(flushes[0].processor_mask, 0b101);
    assert_eq!(
        flushes[1].gva_list.len(),
        winhv::hypercall::MAX_FLUSH_LIST_ENTRIES_PER_CALL
    );
    let all: Vec<u64> = flushes[1..]
        .iter()
        .flat_map(|f| f.gva_list.iter().copied())
        .collect();
    let expected: Vec<u64> = ranges.iter().map(|r| r.encode()).collect();
    assert_eq!(all, expected);
    assert!(m.protocol_errors().is_empty(), "{:?}", m.protocol_errors());
}

#[test]
fn rep_calls_stopped_early_are_continued_from_the_reps_completed() {
    let m = mock(HostPreset::Ws2022);
    let mut vp = boot_vp(&m, 0).unwrap();
    m.limit_reps_per_call(Some(7));
    let ranges: Vec<GvaRange> = (0..600u64)
        .map(|i| GvaRange::new(i << 12, 0).unwrap())
        .collect();
    vp.hypercalls
        .flush_virtual_address_list(0, FlushFlags::ALL_PROCESSORS, 0, &ranges)
        .unwrap();
    let flushes = m.tlb_flushes();
    assert!(flushes.len() > 80, "many partial calls: {}", flushes.len());
    assert!(flushes.iter().all(|f| f.gva_list.len() <= 7));
    let all: Vec<u64> = flushes
        .iter()
        .flat_map(|f| f.gva_list.iter().copied())
        .collect();
    let expected: Vec<u64> = ranges.iter().map(|r| r.encode()).collect();
    assert_eq!(all, expected, "every entry flushed exactly once, in order");
}

#[test]
fn synthetic_cluster_ipi() {
    let m = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_vp_count(4));
    let vp = boot_vp(&m, 0).unwrap();
    vp.hypercalls
        .send_synthetic_cluster_ipi(0x40, 0b1110)
        .unwrap();
    assert_eq!(m.ipis(), [(0x40, 0b1110)]);
    assert!(matches!(
        vp.hypercalls.send_synthetic_cluster_ipi(0x0F, 1),
        Err(HypercallError::InvalidArgument(_))
    ));
    assert_eq!(m.ipis().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// SynIC

#[test]
fn synic_registers_follow_the_recommendations() {
    for (preset, auto_eoi) in [(HostPreset::Ws2016, true), (HostPreset::Ws2022, false)] {
        let m = mock(preset);
        let vp = boot_vp(&m, 0).unwrap();
        let sint = vp
            .cpu
            .read_register(SyntheticRegister::Sint(VMBUS_MESSAGE_SINT));
        assert_eq!(sint & 0xFF, u64::from(VMBUS_VECTOR));
        assert_eq!(sint & (1 << 16), 0, "unmasked");
        assert_eq!(sint & (1 << 17) != 0, auto_eoi, "{preset:?}");
        assert_eq!(vp.cpu.read_register(SyntheticRegister::Scontrol) & 1, 1);
        assert_eq!(vp.cpu.read_register(SyntheticRegister::Simp) & 1, 1);
        assert_eq!(vp.cpu.read_register(SyntheticRegister::Siefp) & 1, 1);

        vp.synic.disable(&vp.cpu);
        let sint = vp
            .cpu
            .read_register(SyntheticRegister::Sint(VMBUS_MESSAGE_SINT));
        assert_ne!(sint & (1 << 16), 0, "masked again");
        assert_eq!(vp.cpu.read_register(SyntheticRegister::Scontrol) & 1, 0);
        assert_eq!(vp.cpu.read_register(SyntheticRegister::Simp) & 1, 0);
        assert!(m.protocol_errors().is_empty(), "{:?}", m.protocol_errors());
    }
}

#[test]
fn synic_config_is_validated_before_any_register_write() {
    let m = mock(HostPreset::Ws2016);
    let cpu = m.vp(0);
    let info = winhv::detect(&cpu).unwrap();
    let bad_vector = SintConfig {
        sint: 2,
        vector: 15,
        auto_eoi: false,
    };
    let r = Synic::enable(&cpu, &info, guest_page(&m), guest_page(&m), &[bad_vector]);
    assert_eq!(r.err(), Some(SynicError::InvalidVector(15)));
    let bad_sint = SintConfig {
        sint: 16,
        vector: 0x40,
        auto_eoi: false,
    };
    let r = Synic::enable(&cpu, &info, guest_page(&m), guest_page(&m), &[bad_sint]);
    assert_eq!(r.err(), Some(SynicError::InvalidSint(16)));
    assert_eq!(
        cpu.read_register(SyntheticRegister::Simp) & 1,
        0,
        "nothing was enabled"
    );

    let m = MockHypervisor::new(
        MockConfig::new(HostPreset::Ws2016).without_privileges(privilege::SYNIC_REGS),
    );
    let info = winhv::detect(&m.vp(0)).unwrap();
    let r = Synic::enable(&m.vp(0), &info, guest_page(&m), guest_page(&m), &[]);
    assert_eq!(r.err(), Some(SynicError::NoSynicPrivilege));
}

#[test]
fn messages_are_taken_in_order_with_eom_only_when_pending() {
    let m = mock(HostPreset::Ws2022);
    let vp = boot_vp(&m, 0).unwrap();
    for i in 0..3u8 {
        m.deliver_message(0, VMBUS_MESSAGE_SINT, 1, &[i; 24])
            .unwrap();
    }
    assert_eq!(m.take_interrupts(0), [VMBUS_VECTOR]);
    for i in 0..3u8 {
        let message = vp
            .synic
            .take_message(&vp.cpu, VMBUS_MESSAGE_SINT)
            .unwrap()
            .unwrap();
        assert_eq!(message.message_type(), 1);
        assert_eq!(message.payload(), &[i; 24]);
        // EOM was written exactly while more messages were queued behind this one.
        assert_eq!(m.eom_count(0), [1, 2, 2][usize::from(i)]);
    }
    assert!(
        vp.synic
            .take_message(&vp.cpu, VMBUS_MESSAGE_SINT)
            .unwrap()
            .is_none()
    );
    assert_eq!(
        m.eom_count(0),
        2,
        "no EOM for the last message or an empty slot"
    );
    assert!(m.protocol_errors().is_empty(), "{:?}", m.protocol_errors());
}

#[test]
fn an_oversized_slot_is_freed_and_reported() {
    let m = mock(HostPreset::Ws2022);
    let vp = boot_vp(&m, 0).unwrap();
    let simp_gpa = vp.cpu.read_register(SyntheticRegister::Simp) & !0xFFF;
    let slot = m
        .gpa_to_ptr(simp_gpa + 256 * u64::from(VMBUS_MESSAGE_SINT), 256)
        .unwrap();
    // A hostile hypervisor-side writer: type 1 with a 250-byte payload.
    // SAFETY: the slot is 256 bytes of mock guest memory no one else touches in this test.
    unsafe {
        slot.as_ptr().cast::<u32>().write_volatile(1);
        slot.as_ptr().add(4).write_volatile(250);
    }
    assert_eq!(
        vp.synic
            .take_message(&vp.cpu, VMBUS_MESSAGE_SINT)
            .unwrap_err(),
        SynicError::OversizedMessage {
            sint: VMBUS_MESSAGE_SINT,
            payload_size: 250
        }
    );
    // SAFETY: as above.
    let freed_type = unsafe { slot.as_ptr().cast::<u32>().read_volatile() };
    assert_eq!(freed_type, 0, "slot freed");
    assert_eq!(
        vp.synic.take_message(&vp.cpu, 16).unwrap_err(),
        SynicError::InvalidSint(16)
    );
}

#[test]
fn event_flags_are_taken_once() {
    let m = mock(HostPreset::Ws2022);
    let vp = boot_vp(&m, 0).unwrap();
    for flag in [1, 5, 63, 64, 700, 2047] {
        m.set_event_flag(0, VMBUS_MESSAGE_SINT, flag).unwrap();
    }
    let mut seen = Vec::new();
    vp.synic
        .take_event_flags(VMBUS_MESSAGE_SINT, 701, |f| seen.push(f))
        .unwrap();
    assert_eq!(
        seen,
        [1, 5, 63, 64, 700],
        "flags at or above the limit stay set"
    );
    seen.clear();
    vp.synic
        .take_event_flags(VMBUS_MESSAGE_SINT, 2048, |f| seen.push(f))
        .unwrap();
    assert_eq!(seen, [2047]);
    seen.clear();
    vp.synic
        .take_event_flags(VMBUS_MESSAGE_SINT, 2048, |f| seen.push(f))
        .unwrap();
    assert!(seen.is_empty());
    m.set_event_flag(0, VMBUS_MESSAGE_SINT, 9).unwrap();
    assert!(
        vp.synic
            .test_and_clear_event_flag(VMBUS_MESSAGE_SINT, 9)
            .unwrap()
    );
    assert!(
        !vp.synic
            .test_and_clear_event_flag(VMBUS_MESSAGE_SINT, 9)
            .unwrap()
    );
    assert_eq!(
        vp.synic.test_and_clear_event_flag(VMBUS_MESSAGE_SINT, 5000),
        Err(SynicError::InvalidEventFlag(5000))
    );
}

// ---------------------------------------------------------------------------------------------
// Time

#[test]
fn reference_time_from_the_tsc_page_and_the_counter_agree() {
    let m = mock(HostPreset::Ws2022);
    let vp = boot_vp(&m, 0).unwrap();
    for step in [0u64, 1, 12_345, 10_000_000, 3_600 * 10_000_000] {
        m.advance_time(step);
        let expected = m.reference_time();
        assert_eq!(read_reference_counter(&vp.cpu), expected);
        let counter_reads = m.time_ref_count_reads();
        let now = vp.clock.now(&vp.cpu);
        assert_eq!(
            m.time_ref_count_reads(),
            counter_reads,
            "the TSC page spares the MSR"
        );
        assert!(now.abs_diff(expected) <= 1, "{now} vs {expected}");
    }
}

#[test]
fn booting_another_vp_leaves_the_tsc_page_where_it_was() {
    // REFERENCE_TSC is one register per partition: an AP that enables its own page moves the
    // overlay away from the page VP 0's clock reads, which silently falls back to the counter.
    let m = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_vp_count(2));
    let vp0 = boot_vp(&m, 0).unwrap();
    let _vp1 = boot_vp(&m, 1).unwrap();
    let tsc_writes: u64 = (0..2)
        .map(|vp| m.register_writes(vp, SyntheticRegister::ReferenceTsc))
        .sum();
    assert_eq!(tsc_writes, 1, "the TSC page is enabled once per partition");
    m.advance_time(123_456);
    let counter_reads = m.time_ref_count_reads();
    let now = vp0.clock.now(&vp0.cpu);
    assert!(now.abs_diff(m.reference_time()) <= 1);
    assert_eq!(
        m.time_ref_count_reads(),
        counter_reads,
        "VP 0 still reads the TSC page"
    );
}

#[test]
fn invalid_tsc_page_falls_back_to_the_counter() {
    let m = mock(HostPreset::Ws2016);
    let vp = boot_vp(&m, 0).unwrap();
    m.advance_time(5_000);
    m.set_tsc_page_valid(false);
    let counter_reads = m.time_ref_count_reads();
    assert_eq!(vp.clock.now(&vp.cpu), m.reference_time());
    assert_eq!(
        m.time_ref_count_reads(),
        counter_reads + 1,
        "fell back to TIME_REF_COUNT"
    );
    m.set_tsc_page_valid(true);
    m.advance_time(7);
    assert!(vp.clock.now(&vp.cpu).abs_diff(m.reference_time()) <= 1);
}

#[test]
fn a_tsc_page_update_during_a_read_is_retried() {
    let m = mock(HostPreset::Ws2022);
    let vp = boot_vp(&m, 0).unwrap();
    m.advance_time(42_000);
    m.update_tsc_page_during_next_tsc_read();
    let counter_reads = m.time_ref_count_reads();
    let now = vp.clock.now(&vp.cpu);
    assert!(
        now.abs_diff(m.reference_time()) <= 1,
        "{now} vs {}",
        m.reference_time()
    );
    assert_eq!(
        m.time_ref_count_reads(),
        counter_reads,
        "retried through the page"
    );
}

#[test]
fn frequency_registers_need_privilege_and_feature() {
    let m = mock(HostPreset::Ws2016);
    let cpu = m.vp(0);
    let info = winhv::detect(&cpu).unwrap();
    assert_eq!(
        tsc_frequency(&cpu, &info),
        Ok(MockConfig::new(HostPreset::Ws2016).tsc_frequency_hz)
    );
    assert!(apic_frequency(&cpu, &info).unwrap() > 0);
    let m = MockHypervisor::new(
        MockConfig::new(HostPreset::Ws2016).without_privileges(privilege::FREQUENCY_REGS),
    );
    let info = winhv::detect(&m.vp(0)).unwrap();
    assert_eq!(
        tsc_frequency(&m.vp(0), &info),
        Err(TimeError::NoFrequencyRegisters)
    );
    let m = MockHypervisor::new(
        MockConfig::new(HostPreset::Ws2016).without_privileges(privilege::PARTITION_REFERENCE_TSC),
    );
    let info = winhv::detect(&m.vp(0)).unwrap();
    assert!(matches!(
        winhv::ReferenceTscPage::enable(&m.vp(0), &info, guest_page(&m)),
        Err(TimeError::MissingPrivilege(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Synthetic timers

fn timer_message(vp: &test_harness::guest::BootedVp) -> Option<TimerExpiredPayload> {
    vp.synic
        .take_message(&vp.cpu, VMBUS_MESSAGE_SINT)
        .unwrap()
        .map(|msg| TimerExpiredPayload::parse(&msg).expect("a timer message"))
}

#[test]
fn one_shot_timer_fires_once_at_its_deadline() {
    let m = mock(HostPreset::Ws2016);
    let vp = boot_vp(&m, 0).unwrap();
    let timer = SyntheticTimer::new(
        &vp.info,
        0,
        TimerDelivery::Message {
            sint: VMBUS_MESSAGE_SINT,
        },
    )
    .unwrap();
    let deadline = m.reference_time() + 1_000;
    timer.arm_one_shot(&vp.cpu, deadline);
    m.advance_time(999);
    assert!(timer_message(&vp).is_none());
    m.advance_time(1);
    let fired = timer_message(&vp).unwrap();
    assert_eq!((fired.timer_index, fired.expiration_time), (0, deadline));
    m.advance_time(10_000);
    assert!(
        timer_message(&vp).is_none(),
        "one-shot timers disable themselves"
    );
    assert!(m.protocol_errors().is_empty(), "{:?}", m.protocol_errors());
}

#[test]
fn auto_enabled_one_shot_rearms_with_one_count_write() {
    let m = mock(HostPreset::Ws2022);
    let vp = boot_vp(&m, 0).unwrap();
    let timer = SyntheticTimer::new(
        &vp.info,
        2,
        TimerDelivery::Message {
            sint: VMBUS_MESSAGE_SINT,
        },
    )
    .unwrap();
    timer.configure_one_shot(&vp.cpu);
    m.advance_time(1_000);
    assert!(timer_message(&vp).is_none(), "configured but not armed");
    for round in 1..=3u64 {
        let deadline = m.reference_time() + 50 * round;
        timer.set_deadline(&vp.cpu, deadline);
        m.advance_time(50 * round);
        let fired = timer_message(&vp).expect("armed by the COUNT write");
        assert_eq!((fired.timer_index, fired.expiration_time), (2, deadline));
        m.advance_time(1_000);
        assert!(timer_message(&vp).is_none(), "one expiry per deadline");
    }
    assert!(m.protocol_errors().is_empty(), "{:?}", m.protocol_errors());
}

#[test]
fn periodic_timer_fires_every_period_and_stops() {
    let m = mock(HostPreset::Ws2022);
    let vp = boot_vp(&m, 0).unwrap();
    let timer = SyntheticTimer::new(
        &vp.info,
        3,
        TimerDelivery::Message {
            sint: VMBUS_MESSAGE_SINT,
        },
    )
    .unwrap();
    timer.arm_periodic(&vp.cpu, 100).unwrap();
    m.advance_time(350);
    let mut fired = Vec::new();
    while let Some(t) = timer_message(&vp) {
        fired.push(t.timer_index);
    }
    assert_eq!(
        fired,
        [3, 3, 3],
        "three periods elapsed, delivered through the EOM queue"
    );
    timer.stop(&vp.cpu);
    m.advance_time(1_000);
    assert!(timer_message(&vp).is_none());
    assert_eq!(timer.arm_periodic(&vp.cpu, 0), Err(TimerError::ZeroPeriod));
}

#[test]
fn direct_mode_timers_interrupt_where_offered() {
    let m = mock(HostPreset::Ws2016);
    let info = winhv::detect(&m.vp(0)).unwrap();
    assert_eq!(
        SyntheticTimer::new(&info, 0, TimerDelivery::Direct { vector: 0x50 }).unwrap_err(),
        TimerError::DirectModeUnavailable
    );
    assert_eq!(
        SyntheticTimer::new(&info, 0, TimerDelivery::Message { sint: 0 }).unwrap_err(),
        TimerError::InvalidSint(0)
    );
    assert_eq!(
        SyntheticTimer::new(&info, 4, TimerDelivery::Message { sint: 2 }).unwrap_err(),
        TimerError::InvalidTimer(4)
    );

    let m = mock(HostPreset::Ws2022);
    let vp = boot_vp(&m, 0).unwrap();
    assert_eq!(
        SyntheticTimer::new(&vp.info, 1, TimerDelivery::Direct { vector: 8 }).unwrap_err(),
        TimerError::InvalidVector(8)
    );
    let timer = SyntheticTimer::new(&vp.info, 1, TimerDelivery::Direct { vector: 0x50 }).unwrap();
    m.take_interrupts(0);
    timer.arm_one_shot(&vp.cpu, m.reference_time() + 10);
    m.advance_time(10);
    assert_eq!(m.take_interrupts(0), [0x50]);
    assert!(timer_message(&vp).is_none(), "direct mode posts no message");
}

// ---------------------------------------------------------------------------------------------
// Crash reporting

#[test]
fn crash_parameters_and_message_reach_the_host() {
    let m = mock(HostPreset::Ws2022);
    let vp = boot_vp(&m, 0).unwrap();
    report_crash(&vp.cpu, &vp.info, [0xDEAD, 1, 2, 3, 4]).unwrap();
    let report = m.crash_report().unwrap();
    assert_eq!(report.parameters, [0xDEAD, 1, 2, 3, 4]);
    assert_eq!(report.control, winhv::crash::CRASH_CTL_NOTIFY);
    assert_eq!(report.message, None);

    let m = mock(HostPreset::Ws2022);
    let vp = boot_vp(&m, 0).unwrap();
    let mut buffer = guest_page(&m);
    let text = b"kernel panic: out of cheese";
    report_crash_message(&vp.cpu, &vp.info, [7, 8, 9], &mut buffer, text).unwrap();
    let report = m.crash_report().unwrap();
    assert_eq!(report.message.as_deref(), Some(&text[..]));
    assert_eq!(report.parameters[..3], [7, 8, 9]);
    assert_eq!(report.parameters[3], buffer.gpa());
    assert_eq!(
        report_crash_message(&vp.cpu, &vp.info, [0; 3], &mut buffer, &[0; 4097]),
        Err(CrashError::MessageTooLong(4097))
    );
}

#[test]
fn crash_registers_absent_is_an_error_not_a_fault() {
    let preset_features = {
        let m = mock(HostPreset::Ws2016);
        winhv::detect(&m.vp(0)).unwrap().features.bits()
    };
    let m = MockHypervisor::new(
        MockConfig::new(HostPreset::Ws2016).with_features(preset_features & !feature::CRASH_MSRS),
    );
    let info = winhv::detect(&m.vp(0)).unwrap();
    assert_eq!(
        report_crash(&m.vp(0), &info, [0; 5]),
        Err(CrashError::Unavailable)
    );
    assert!(m.crash_report().is_none());
}

// ---------------------------------------------------------------------------------------------
// The oracle refuses what Hyper-V refuses, loudly

#[test]
fn the_mock_faults_on_what_winhv_never_writes() {
    let m = mock(HostPreset::Ws2016);
    let vp = boot_vp(&m, 0).unwrap();
    let fault = catch_unwind(AssertUnwindSafe(|| {
        vp.cpu.write_register(SyntheticRegister::Sint(3), 0x0F);
    }));
    assert!(fault.is_err(), "an unmasked SINT with vector 15 is a #GP");
    assert!(m.protocol_errors().iter().any(|e| e.contains("#GP")));
    // And winhv keeps working afterwards (no poisoned state).
    m.deliver_message(0, VMBUS_MESSAGE_SINT, 1, b"still alive")
        .unwrap();
    let msg = vp
        .synic
        .take_message(&vp.cpu, VMBUS_MESSAGE_SINT)
        .unwrap()
        .unwrap();
    assert_eq!(msg.payload(), b"still alive");
}

#[test]
fn no_message_is_lost_while_the_host_delivers_during_a_drain() {
    // The EOM race (§4.5): the hypervisor may set the pending flag between the guest's copy of
    // the slot and its freeing of it. A guest that frees the slot with a plain store (wiping
    // the flag) or reads the flag before freeing strands the queued message. The host sends
    // bursts of two and waits for both, so a stranded second message stalls the test, which
    // then fails at its deadline instead of being rescued by a later delivery.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};
    const BURSTS: u32 = 1000;
    let m = mock(HostPreset::Ws2022);
    let vp = boot_vp(&m, 0).unwrap();
    let received = Arc::new(AtomicU32::new(0));
    let deadline = Instant::now() + Duration::from_secs(20);
    let sender = {
        let (host, received) = (m.clone(), received.clone());
        std::thread::spawn(move || {
            for burst in 0..BURSTS {
                for i in [2 * burst, 2 * burst + 1] {
                    host.deliver_message(0, VMBUS_MESSAGE_SINT, 1, &i.to_le_bytes())
                        .unwrap();
                }
                while received.load(Ordering::Acquire) < 2 * burst + 2 {
                    if Instant::now() > deadline {
                        return;
                    }
                    std::thread::yield_now();
                }
            }
        })
    };
    let mut next = 0u32;
    while next < 2 * BURSTS {
        assert!(
            Instant::now() < deadline,
            "stuck after {next} messages: a pending message was never redelivered"
        );
        match vp.synic.take_message(&vp.cpu, VMBUS_MESSAGE_SINT) {
            Ok(Some(message)) => {
                assert_eq!(message.payload(), next.to_le_bytes(), "in order, none lost");
                next += 1;
                received.store(next, Ordering::Release);
            }
            Ok(None) => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
    sender.join().unwrap();
    assert!(m.protocol_errors().is_empty(), "{:?}", m.protocol_errors());
}
