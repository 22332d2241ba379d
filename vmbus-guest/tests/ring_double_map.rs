//! The double-mapped fast path on real memory: the data pages are mapped twice back to back
//! (memfd + two fixed mmaps), as a guest kernel maps a ring GPADL, and packets cross the end
//! of the data area without split copies.
#![cfg(target_os = "linux")]

mod common;

use common::Rng;
use std::ptr::NonNull;
use vmbus_guest::ring::*;

struct DoubleMap {
    base: *mut libc::c_void,
    size: usize,
}

impl DoubleMap {
    fn new(size: usize) -> Self {
        // SAFETY: plain Linux syscalls on memory this test owns; every result is checked.
        unsafe {
            let fd = libc::memfd_create(c"vmbus-ring-test".as_ptr(), 0);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, size as libc::off_t), 0);
            let base = libc::mmap(
                std::ptr::null_mut(),
                2 * size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(base, libc::MAP_FAILED);
            for half in 0..2 {
                let at = base.cast::<u8>().add(half * size).cast();
                let p = libc::mmap(
                    at,
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    fd,
                    0,
                );
                assert_eq!(p, at);
            }
            libc::close(fd);
            Self { base, size }
        }
    }
}

impl Drop for DoubleMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the reservation made in `new`; nothing uses it afterwards.
        unsafe { libc::munmap(self.base, 2 * self.size) };
    }
}

#[test]
fn mapping_really_aliases() {
    let map = DoubleMap::new(8192);
    let p = map.base.cast::<u8>();
    // SAFETY: both offsets are inside the 2 * 8192-byte mapping.
    unsafe {
        p.add(100).write_volatile(0xAB);
        assert_eq!(p.add(8192 + 100).read_volatile(), 0xAB);
    }
}

#[test]
fn packets_cross_the_end_through_the_second_mapping() {
    let size = 16 * 1024u32;
    let map = DoubleMap::new(size as usize);
    let control = Box::new(ControlPage::new());
    let control_ptr = NonNull::from(&*control);
    let data = NonNull::new(map.base.cast::<u8>()).unwrap();
    // SAFETY: `control` and `map` outlive `mem`; the data is mapped twice back to back; one
    // writer and one reader on this thread.
    let mem = unsafe { RawRingMemory::new(control_ptr, data, size, true) }.unwrap();
    assert_eq!(mem.contiguous_size(), 2 * size as usize);
    let mut w = RingWriter::new(mem).unwrap();
    let mut r = RingReader::new(mem).unwrap();
    let mut rng = Rng::new(0xD0B1E);
    let mut buf = vec![0u8; size as usize];
    let mut crossed = 0;
    for i in 0..5000u64 {
        let payload: Vec<u8> = (0..rng.below(3000)).map(|_| rng.next() as u8).collect();
        let before = r.control_snapshot().write_index;
        let _ = w
            .send(&OutgoingPacket::in_band(i, false, &[&payload]))
            .unwrap();
        let after = r.control_snapshot().write_index;
        if after < before {
            crossed += 1;
        }
        let p = r.read(&mut buf).unwrap();
        assert_eq!(p.transaction_id(), i);
        assert_eq!(&p.payload()[..payload.len()], &payload[..]);
        let _ = r.publish();
    }
    assert!(crossed > 100, "only {crossed} packets wrapped");
}
