//! What the hypervisor hands winhv: CPUID leaves (`detect`), register values, SynIC message
//! slots and event flags, the reference TSC page, and hypercall result words — all from the
//! input, through a fake `Cpu` whose "hypervisor" also refills message slots on EOM and
//! rewrites the TSC page in the middle of a read.
//!
//! Invariants beyond "no panic":
//! - `detect` accepts exactly what passes the documented acceptance test and keeps the leaves'
//!   bits as read;
//! - `take_message`: `None` exactly for a free slot, `InvalidSint` exactly for SINT ≥ 16,
//!   `OversizedMessage` exactly for a size > 240; a message taken is the slot as it was
//!   (type, origin, payload of the stated size), the slot is freed, and EOM is written exactly
//!   when the pending flag was set; a single consumer never sees `SlotUnstable`;
//! - `take_event_flags` reports exactly the set flags below the limit, ascending, and clears
//!   exactly those; `test_and_clear_event_flag` returns and clears one bit;
//! - the TSC page read returns `scale_tsc` of a consistent (sequence-stable) snapshot or
//!   `None`, within its retry bound;
//! - hypercall results: success exactly for status 0, a rep call never loops past its bound.
#![no_main]

use hyperv_guest_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use winhv::detect::HV_INTERFACE_SIGNATURE;
use winhv::hypercall::{FlushFlags, GvaRange};
use winhv::synic::{EVENT_FLAGS_PER_SINT, SINT_COUNT, SLOT_SIZE};
use winhv::time::{TSC_PAGE_READ_ATTEMPTS, scale_tsc};
use winhv::{
    Cpu, CpuidResult, DetectError, Features, HvPage, Hypercalls, HypervInfo, Privileges,
    Recommendations, ReferenceTscPage, SintConfig, Synic, SynicError, SyntheticRegister, detect,
};

fuzz_target!(|data: &[u8]| run(data));

const PAGE: Layout = match Layout::from_size_align(4096, 4096) {
    Ok(l) => l,
    Err(_) => panic!(),
};

/// Heap pages standing in for guest RAM (GPA = address), freed at the end of the run.
struct Pages(Vec<*mut u8>);

impl Pages {
    fn page(&mut self) -> (*mut u8, HvPage) {
        // SAFETY: non-zero size.
        let p = unsafe { alloc_zeroed(PAGE) };
        assert!(!p.is_null());
        self.0.push(p);
        // SAFETY: a fresh page owned by this pool until the end of the run; nothing else uses
        // it except through the HvPage (and the fake hypervisor, atomically).
        (p, unsafe {
            HvPage::new(NonNull::new(p).unwrap(), p as u64)
        })
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        for &p in &self.0 {
            // SAFETY: allocated above with PAGE; every user is gone.
            unsafe { dealloc(p, PAGE) };
        }
    }
}

fn word64(p: *mut u8, byte: usize) -> &'static AtomicU64 {
    // SAFETY: callers pass 8-aligned offsets inside a live page; the page is accessed only
    // atomically while the code under test may read it.
    unsafe { AtomicU64::from_ptr(p.add(byte).cast()) }
}

#[derive(Default)]
struct Hv {
    cpuid: Vec<(u32, CpuidResult)>,
    registers: Vec<u64>,
    reg_pos: usize,
    results: VecDeque<u64>,
    tscs: VecDeque<u64>,
    eoms: u32,
    tsc_reads: u32,
    /// Messages the hypervisor delivers on EOM: (slot page, sint, 32 words).
    refill: VecDeque<(usize, [u64; 32])>,
    refilled: u32,
    simp: usize,
    tsc_page: usize,
    /// Sequence values the hypervisor stores into the TSC page at each TSC read.
    tsc_seq: VecDeque<u32>,
}

#[derive(Clone)]
struct FakeCpu(Rc<RefCell<Hv>>);

impl Cpu for FakeCpu {
    fn cpuid(&self, leaf: u32, _subleaf: u32) -> CpuidResult {
        let hv = self.0.borrow();
        hv.cpuid
            .iter()
            .find(|(l, _)| *l == leaf)
            .map_or(CpuidResult::default(), |(_, r)| *r)
    }
    fn read_register(&self, _register: SyntheticRegister) -> u64 {
        let mut hv = self.0.borrow_mut();
        let v = hv.registers.get(hv.reg_pos).copied().unwrap_or(0);
        hv.reg_pos += 1;
        v
    }
    unsafe fn write_register(&self, register: SyntheticRegister, _value: u64) {
        let mut hv = self.0.borrow_mut();
        if register == SyntheticRegister::Eom {
            hv.eoms += 1;
            if let Some((sint, words)) = hv.refill.pop_front() {
                hv.refilled += 1;
                let base = hv.simp as *mut u8;
                for (i, w) in words.iter().enumerate() {
                    word64(base, sint * SLOT_SIZE + i * 8).store(*w, SeqCst);
                }
            }
        }
    }
    unsafe fn hypercall(&self, _control: u64, _input_gpa: u64, _output_gpa: u64) -> u64 {
        self.0.borrow_mut().results.pop_front().unwrap_or(0)
    }
    fn fast_hypercall(&self, _control: u64, _input0: u64, _input1: u64) -> u64 {
        self.0.borrow_mut().results.pop_front().unwrap_or(0)
    }
    fn read_tsc(&self) -> u64 {
        let mut hv = self.0.borrow_mut();
        hv.tsc_reads += 1;
        if let Some(s) = hv.tsc_seq.pop_front() {
            // SAFETY: the TSC page is live for the run; offset 0 is its sequence word.
            unsafe { AtomicU32::from_ptr(hv.tsc_page as *mut u32) }.store(s, SeqCst);
        }
        hv.tscs.pop_front().unwrap_or(0)
    }
}

fn check_detect(cpu: &FakeCpu) {
    let leaf = |l: u32| cpu.cpuid(l, 0);
    match detect(cpu) {
        Ok(info) => {
            assert!(leaf(1).ecx & (1 << 31) != 0);
            assert_eq!(leaf(0x4000_0001).eax, HV_INTERFACE_SIGNATURE);
            assert!((0x4000_0005..=0x4000_FFFF).contains(&info.max_leaf));
            assert!(
                info.privileges
                    .contains(Privileges::REQUIRED_FOR_HYPERCALLS)
            );
            let f = leaf(0x4000_0003);
            assert_eq!(info.privileges.bits(), f.eax as u64 | (f.ebx as u64) << 32);
            assert_eq!(info.features.bits(), f.edx);
            assert_eq!(info.recommendations.bits(), leaf(0x4000_0004).eax);
            let _ = info.vendor_str();
            let _ = info.require(Privileges::REQUIRED_FOR_VMBUS);
        }
        Err(DetectError::NoHypervisor) => assert!(leaf(1).ecx & (1 << 31) == 0),
        Err(DetectError::NotHyperV { interface, .. }) => {
            assert_ne!(interface, HV_INTERFACE_SIGNATURE)
        }
        Err(DetectError::MaxLeafOutOfRange(l)) => {
            assert!(!(0x4000_0005..=0x4000_FFFF).contains(&l))
        }
        Err(DetectError::MissingPrivileges(p)) => assert!(!p.is_empty()),
    }
}

fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let mut hv = Hv::default();
    for leaf in [
        1,
        0x4000_0000,
        0x4000_0001,
        0x4000_0002,
        0x4000_0003,
        0x4000_0004,
        0x4000_0005,
    ] {
        let mut r = CpuidResult {
            eax: inp.u32(),
            ebx: inp.u32(),
            ecx: inp.u32(),
            edx: inp.u32(),
        };
        // Steer towards acceptance often, so the later checks run.
        let steer = inp.u8();
        if steer & 1 != 0 {
            match leaf {
                1 => r.ecx |= 1 << 31,
                0x4000_0000 => r.eax = 0x4000_0000 | (r.eax & 0x1F),
                0x4000_0001 => r.eax = HV_INTERFACE_SIGNATURE,
                0x4000_0003 => r.eax |= 0x7F,
                _ => {}
            }
        }
        hv.cpuid.push((leaf, r));
    }
    hv.registers = (0..8).map(|_| inp.u64()).collect();
    let cpu = FakeCpu(Rc::new(RefCell::new(hv)));
    check_detect(&cpu);

    let info = HypervInfo {
        vendor: *b"Microsoft Hv",
        max_leaf: 0x4000_000A,
        version: detect(&cpu)
            .map(|i| i.version)
            .unwrap_or(winhv::detect::HvVersion {
                build: 0,
                major: 10,
                minor: 0,
                service_pack: 0,
                service_branch: 0,
                service_number: 0,
            }),
        privileges: Privileges::all(),
        features: Features::all(),
        recommendations: Recommendations::empty(),
        spin_wait_retries: 0,
        max_virtual_processors: 0,
        max_logical_processors: 0,
    };
    let mut pages = Pages(Vec::new());
    let (simp_p, simp) = pages.page();
    let (siefp_p, siefp) = pages.page();
    let (tsc_p, tsc) = pages.page();
    let (_, hin) = pages.page();
    let (_, hout) = pages.page();
    {
        let mut hv = cpu.0.borrow_mut();
        hv.simp = simp_p as usize;
        hv.tsc_page = tsc_p as usize;
    }
    let sints = [SintConfig {
        sint: 2,
        vector: 0x90,
        auto_eoi: inp.bool(),
    }];
    let synic = Synic::enable(&cpu, &info, simp, siefp, &sints).expect("valid SynIC setup refused");
    let tsc_page = ReferenceTscPage::enable(&cpu, &info, tsc).expect("valid TSC page refused");
    let mut hcalls =
        Hypercalls::new(cpu.clone(), hin, hout).expect("valid hypercall pages refused");

    for _ in 0..128 {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % 10 {
            0 | 1 => {
                // The hypervisor fills a slot (any bytes, type and size biased to valid).
                let sint = inp.below(16);
                let mut words = [0u64; 32];
                for w in words.iter_mut() {
                    *w = inp.u64();
                }
                match inp.u8() % 4 {
                    0 => words[0] &= !0xFFFF_FFFF,
                    1 => words[0] = (words[0] & !(0xFF << 32)) | ((inp.u8() as u64 % 241) << 32),
                    _ => {}
                }
                for (i, w) in words.iter().enumerate() {
                    word64(simp_p, sint * SLOT_SIZE + i * 8).store(*w, SeqCst);
                }
            }
            2 => {
                // A message to deliver on the next EOM.
                let sint = if inp.bool() { 2 } else { inp.below(16) };
                let mut words = [0u64; 32];
                for w in words.iter_mut() {
                    *w = inp.u64();
                }
                cpu.0.borrow_mut().refill.push_back((sint, words));
            }
            3 | 4 => {
                let sint = if inp.u8().is_multiple_of(8) {
                    inp.u8()
                } else {
                    inp.u8() % SINT_COUNT
                };
                let before: Vec<u64> = if sint < SINT_COUNT {
                    (0..32)
                        .map(|i| word64(simp_p, sint as usize * SLOT_SIZE + i * 8).load(SeqCst))
                        .collect()
                } else {
                    Vec::new()
                };
                let (eoms, refilled) = {
                    let hv = cpu.0.borrow();
                    (hv.eoms, hv.refilled)
                };
                let r = synic.take_message(&cpu, sint);
                let (eoms_after, refilled_after) = {
                    let hv = cpu.0.borrow();
                    (hv.eoms, hv.refilled)
                };
                if sint >= SINT_COUNT {
                    assert_eq!(r.err(), Some(SynicError::InvalidSint(sint)));
                    continue;
                }
                let ty = before[0] as u32;
                let size = (before[0] >> 32) as u8;
                let flags = (before[0] >> 40) as u8;
                let now0 = word64(simp_p, sint as usize * SLOT_SIZE).load(SeqCst);
                match r {
                    Ok(None) => {
                        assert_eq!(ty, 0);
                        assert_eq!(eoms_after, eoms);
                    }
                    Ok(Some(m)) => {
                        assert_ne!(ty, 0);
                        assert!(size as usize <= 240);
                        assert_eq!(m.message_type(), ty);
                        assert_eq!(m.origin(), before[1]);
                        let bytes: Vec<u8> = before.iter().flat_map(|w| w.to_le_bytes()).collect();
                        assert_eq!(m.payload(), &bytes[16..16 + size as usize]);
                    }
                    Err(SynicError::OversizedMessage {
                        sint: s,
                        payload_size,
                    }) => {
                        assert_eq!((s, payload_size), (sint, size));
                        assert!(ty != 0 && size as usize > 240);
                    }
                    Err(e) => panic!("single consumer got {e:?}"),
                }
                if ty != 0 {
                    assert_eq!(eoms_after - eoms, (flags & 1) as u32, "EOM iff pending");
                    if refilled_after == refilled {
                        assert_eq!(now0 as u32, 0, "slot not freed");
                        assert_eq!(now0 >> 32, before[0] >> 32, "size/flags changed");
                    }
                }
            }
            5 => {
                // The hypervisor sets event flags.
                let sint = inp.below(16);
                for _ in 0..inp.u8() % 8 {
                    let w = inp.below(32);
                    word64(siefp_p, sint * SLOT_SIZE + w * 8).fetch_or(inp.u64(), SeqCst);
                }
            }
            6 => {
                let sint = if inp.u8().is_multiple_of(8) {
                    inp.u8()
                } else {
                    inp.u8() % SINT_COUNT
                };
                let limit = match inp.u8() % 4 {
                    0 => inp.u32(),
                    _ => inp.u16() as u32 % 2100,
                };
                let before: Vec<u64> = (0..SINT_COUNT as usize * 32)
                    .map(|i| word64(siefp_p, i * 8).load(SeqCst))
                    .collect();
                let mut got = Vec::new();
                let r = synic.take_event_flags(sint, limit, |f| got.push(f));
                if sint >= SINT_COUNT {
                    assert_eq!(r, Err(SynicError::InvalidSint(sint)));
                    assert!(got.is_empty());
                    continue;
                }
                assert_eq!(r, Ok(()));
                let lim = limit.min(EVENT_FLAGS_PER_SINT);
                let base = sint as usize * 32;
                let expect: Vec<u32> = (0..lim)
                    .filter(|f| before[base + *f as usize / 64] & (1 << (f % 64)) != 0)
                    .collect();
                assert_eq!(got, expect, "flags reported");
                for (i, w) in before.iter().enumerate() {
                    let mut want = *w;
                    if i / 32 == sint as usize {
                        for f in &expect {
                            if *f as usize / 64 == i % 32 {
                                want &= !(1 << (f % 64));
                            }
                        }
                    }
                    assert_eq!(word64(siefp_p, i * 8).load(SeqCst), want, "word {i}");
                }
            }
            7 => {
                let sint = if inp.u8().is_multiple_of(8) {
                    inp.u8()
                } else {
                    inp.u8() % SINT_COUNT
                };
                let flag = inp.u16() as u32 % 2100;
                let prev = (sint < SINT_COUNT && flag < EVENT_FLAGS_PER_SINT).then(|| {
                    word64(siefp_p, sint as usize * SLOT_SIZE + flag as usize / 64 * 8).load(SeqCst)
                });
                match (synic.test_and_clear_event_flag(sint, flag), prev) {
                    (Ok(was), Some(w)) => {
                        assert_eq!(was, w & (1 << (flag % 64)) != 0);
                        let now =
                            word64(siefp_p, sint as usize * SLOT_SIZE + flag as usize / 64 * 8)
                                .load(SeqCst);
                        assert_eq!(now, w & !(1 << (flag % 64)));
                    }
                    (Err(SynicError::InvalidSint(s)), None) => assert!(s >= SINT_COUNT),
                    (Err(SynicError::InvalidEventFlag(f)), None) => {
                        assert!(f >= EVENT_FLAGS_PER_SINT)
                    }
                    (r, p) => panic!("test_and_clear({sint}, {flag}) = {r:?} with {p:?}"),
                }
            }
            8 => {
                // The TSC page: contents, TSC values, sequence changes during the read.
                let seq = if inp.bool() {
                    inp.u32()
                } else {
                    inp.u8() as u32 % 3
                };
                let scale = inp.u64();
                let offset = inp.u64();
                // SAFETY: offsets 0, 8, 16 of the live TSC page, accessed atomically.
                unsafe { AtomicU32::from_ptr(tsc_p.cast::<u32>()) }.store(seq, SeqCst);
                word64(tsc_p, 8).store(scale, SeqCst);
                word64(tsc_p, 16).store(offset, SeqCst);
                let changes = inp.u8() as usize % 20;
                let mut tscs = VecDeque::new();
                {
                    let mut hv = cpu.0.borrow_mut();
                    hv.tsc_seq = (0..changes).map(|_| inp.u32()).collect();
                    for _ in 0..20 {
                        tscs.push_back(inp.u64());
                    }
                    hv.tscs = tscs.clone();
                    hv.tsc_reads = 0;
                }
                let r = tsc_page.read(&cpu);
                let hv = cpu.0.borrow();
                assert!(hv.tsc_reads <= TSC_PAGE_READ_ATTEMPTS);
                match r {
                    None => {}
                    Some(t) => {
                        assert_ne!(seq, 0);
                        // The accepted TSC is the last one read; its sequence was stable.
                        let k = hv.tsc_reads as usize - 1;
                        assert_eq!(t, scale_tsc(tscs[k], scale, offset as i64));
                    }
                }
            }
            _ => {
                // Hypercall results the hypervisor returns.
                let n = inp.u8() as usize % 8;
                {
                    let mut hv = cpu.0.borrow_mut();
                    hv.results = (0..n)
                        .map(|_| match inp.u8() % 4 {
                            0 => inp.u64(),
                            1 => (inp.u16() as u64 % 0x30) | ((inp.u16() as u64 % 8) << 32),
                            _ => inp.u8() as u64 % 0x20,
                        })
                        .collect();
                }
                let first = cpu.0.borrow().results.front().copied().unwrap_or(0);
                match inp.u8() % 3 {
                    0 => {
                        let r = hcalls.post_message(inp.u32() % 0x100_0000, 1, &inp.bytes(240));
                        assert_eq!(r.is_ok(), first as u16 == 0);
                    }
                    1 => {
                        let r = winhv::hypercall::signal_event(&cpu, inp.u32(), 0);
                        assert_eq!(r.is_ok(), first as u16 == 0);
                    }
                    _ => {
                        let count = inp.u8() as usize % 6 + 1;
                        let ranges: Vec<GvaRange> = (0..count)
                            .filter_map(|_| GvaRange::new(inp.u64(), inp.u16() % 4096))
                            .collect();
                        let before = cpu.0.borrow().results.len();
                        let _ =
                            hcalls.flush_virtual_address_list(0, FlushFlags::empty(), 0, &ranges);
                        let used = before - cpu.0.borrow().results.len();
                        assert!(used <= ranges.len(), "rep call looped: {used} calls");
                    }
                }
            }
        }
    }
    // Give the pages back the documented way (the pool frees them at the end).
    let _ = tsc_page.disable(&cpu);
    let _ = synic.disable(&cpu);
    let _ = hcalls.into_parts();
}
