//! The binary's allocator: mimalloc for small blocks, the system's for large ones.
//!
//! The record stages (filter, dedup, verify) make and drop millions of small strings and maps a
//! second, where mimalloc is ~10% faster end to end than glibc's malloc (filter, 25k traces of
//! 17 KB: 5.3 -> 4.8 s). Training allocates tensors of kilobytes to gigabytes, where mimalloc
//! for everything gave a slower step and a higher peak (SmolLM2 LoRA: 167 vs 187 tok/s, 1.66 vs
//! 1.54 GB) and mimalloc below 256 KiB still +95 MB; below 32 KiB it costs training 17 MB and
//! no speed. The size of a block decides, so a block is always freed by the allocator that made
//! it ([`GlobalAlloc::dealloc`] is given the layout it was allocated with).

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks of at least this many bytes go to the system allocator.
pub const LARGE: usize = 32 << 10;

/// Small blocks to mimalloc, large ones to [`System`].
pub struct Hybrid;

#[inline]
fn small(l: &Layout) -> bool {
    l.size() < LARGE
}

// SAFETY: each call goes to one of two sound allocators, picked by the layout's size, which is
// the same when a block is freed or reallocated as when it was allocated.
unsafe impl GlobalAlloc for Hybrid {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if small(&l) { unsafe { mimalloc::MiMalloc.alloc(l) } } else { unsafe { System.alloc(l) } }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if small(&l) { unsafe { mimalloc::MiMalloc.alloc_zeroed(l) } } else { unsafe { System.alloc_zeroed(l) } }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if small(&l) { unsafe { mimalloc::MiMalloc.dealloc(p, l) } } else { unsafe { System.dealloc(p, l) } }
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        match (small(&l), new < LARGE) {
            (true, true) => unsafe { mimalloc::MiMalloc.realloc(p, l, new) },
            (false, false) => unsafe { System.realloc(p, l, new) },
            // Crossing the line: a new block from the other allocator, the bytes copied.
            _ => {
                // SAFETY: the caller guarantees `new` rounded up to `l.align()` fits an isize.
                let nl = unsafe { Layout::from_size_align_unchecked(new, l.align()) };
                let q = unsafe { self.alloc(nl) };
                if !q.is_null() {
                    unsafe {
                        std::ptr::copy_nonoverlapping(p, q, l.size().min(new));
                        self.dealloc(p, l);
                    }
                }
                q
            }
        }
    }
}

/// While held, the kernel gives this process (and the children it starts) no transparent huge
/// pages; dropping it restores what was set before. For the record stages, whose memory is
/// many small blocks touched once: each fresh 2 MiB huge page is zeroed on its first touch,
/// which on a virtual machine cost filter ~10% of its CPU time (25k traces: 4.95 -> 4.7 s and
/// 20 MB less peak without them). Training, in the same process under `distill run`, keeps them.
pub struct NoHugePages {
    #[cfg(target_os = "linux")]
    before: libc::c_int,
}

impl NoHugePages {
    pub fn new() -> NoHugePages {
        #[cfg(target_os = "linux")]
        // SAFETY: prctl with the THP_DISABLE options takes and returns plain integers.
        unsafe {
            let before = libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0);
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
            NoHugePages { before }
        }
        #[cfg(not(target_os = "linux"))]
        NoHugePages {}
    }
}

impl Default for NoHugePages {
    fn default() -> Self {
        NoHugePages::new()
    }
}

impl Drop for NoHugePages {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if self.before == 0 {
            // SAFETY: as in `new`.
            unsafe {
                libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_come_back_after_the_guard() {
        let get = || unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        let before = get();
        {
            let _g = NoHugePages::new();
            assert_eq!(get(), 1);
        }
        assert_eq!(get(), before);
    }

    #[test]
    fn blocks_move_across_the_line_intact() {
        let h = Hybrid;
        unsafe {
            let l = Layout::from_size_align(1000, 16).unwrap();
            let p = h.alloc(l);
            for i in 0..1000 {
                *p.add(i) = i as u8;
            }
            // small -> large -> large -> small, the first 1000 bytes kept throughout
            let p = h.realloc(p, l, LARGE + 10);
            let l2 = Layout::from_size_align(LARGE + 10, 16).unwrap();
            let p = h.realloc(p, l2, 2 * LARGE);
            let l3 = Layout::from_size_align(2 * LARGE, 16).unwrap();
            let p = h.realloc(p, l3, 1000);
            assert_eq!(p as usize % 16, 0);
            for i in 0..1000 {
                assert_eq!(*p.add(i), i as u8);
            }
            h.dealloc(p, l);
            let z = h.alloc_zeroed(l3);
            assert!((0..2 * LARGE).all(|i| *z.add(i) == 0));
            h.dealloc(z, l3);
        }
    }
}
