//! A global allocator that aborts on any single allocation above a cap, so that "a few hostile
//! bytes make us allocate gigabytes" is a crash libFuzzer records instead of something only an
//! RSS limit might notice (a `Vec::with_capacity` that is never touched does not raise RSS).
//!
//! Cap: `QZB_FUZZ_MAX_ALLOC_MB` (default 64 MiB; the protocol's largest legitimate buffer is a
//! 16 MiB reply frame). Install it in a target with [`install_alloc_cap!`].
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

const DEFAULT_CAP: usize = 64 << 20;
/// 0 = not read from the environment yet.
static CAP: AtomicUsize = AtomicUsize::new(0);

/// Reads the cap once. Called from the fuzz targets' init, outside the allocator, because
/// reading the environment allocates.
pub fn init() {
    let cap = std::env::var("QZB_FUZZ_MAX_ALLOC_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map(|mb| mb << 20)
        .unwrap_or(DEFAULT_CAP);
    CAP.store(cap.max(1), Ordering::Relaxed);
}

pub struct CappedAlloc;

impl CappedAlloc {
    #[inline]
    fn check(size: usize) {
        let cap = CAP.load(Ordering::Relaxed);
        let cap = if cap == 0 { DEFAULT_CAP } else { cap };
        if size > cap {
            // No formatting: allocating here would recurse. Stderr is unbuffered.
            let mut e = std::io::stderr();
            let _ = e.write_all(b"\n==qzb-fuzz== single allocation over QZB_FUZZ_MAX_ALLOC_MB (");
            let _ = e.write_all(itoa(size).as_slice());
            let _ = e.write_all(b" bytes): unbounded allocation from input\n");
            std::process::abort();
        }
    }
}

/// Decimal digits of `n` without allocating on the heap.
fn itoa(mut n: usize) -> ArrayStr {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    ArrayStr { buf, start: i }
}

struct ArrayStr {
    buf: [u8; 20],
    start: usize,
}

impl ArrayStr {
    fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

// SAFETY: every method forwards unchanged to `System`, which upholds the `GlobalAlloc`
// contract; the only addition is a size check that aborts the process.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: same layout, forwarded to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this layout (we never allocate elsewhere).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check(new_size);
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Installs [`CappedAlloc`] as the target's global allocator.
#[macro_export]
macro_rules! install_alloc_cap {
    () => {
        #[global_allocator]
        static QZB_FUZZ_ALLOC: $crate::alloc_cap::CappedAlloc = $crate::alloc_cap::CappedAlloc;
    };
}
