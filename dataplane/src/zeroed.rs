//! Large arrays that start as zeros, taken from the kernel one page at a time as they are first
//! written, and backed by 2 MiB pages where the kernel has them (transparent huge pages).
//!
//! The connection table's slab and index are the whole of this: at 1M connections they are
//! 160 MiB that packets of established flows touch at random. On 4 KiB pages each packet's two
//! lookups (an index bucket, then its entry) miss the TLB as well as the cache, and the page walk
//! misses again: the TLB covers a few MiB. On 2 MiB pages the whole table is under a hundred TLB
//! entries. Linux gives an anonymous mapping huge pages when asked (`madvise(MADV_HUGEPAGE)`,
//! which this machine's default, `transparent_hugepage=madvise`, waits for) and when the range
//! is aligned to 2 MiB, which an allocator's `malloc` is not; so these arrays map their own
//! memory. Where the kernel has no huge pages the advice is refused and the array is one of
//! 4 KiB pages, as before.
//!
//! Zeros the kernel hands out lazily also mean a table sized for a million connections costs an
//! idle daemon nothing until connections arrive.

use std::ops::Deref;
use std::ptr::NonNull;

/// Types for which every byte being zero is a valid value (as for the atomics the connection
/// table is made of).
///
/// # Safety
/// An implementer must have no padding-sensitive invariants and no field for which all zeros
/// is invalid (references, `NonZero*`, enums without a zero discriminant).
pub(crate) unsafe trait Zeroable {}

/// Alignment the mapping is placed at, so its huge pages start at its first element.
const HUGE_PAGE: usize = 2 << 20;

/// `len` values of `T`, all zeros at first.
pub(crate) struct ZeroedArray<T: Zeroable> {
    /// First element (`HUGE_PAGE`-aligned inside the mapping).
    first: NonNull<T>,
    len: usize,
    /// The whole mapping, as given to `munmap`.
    map: NonNull<libc::c_void>,
    map_len: usize,
}

// SAFETY: the array owns its memory as a `Box<[T]>` would; sharing or sending it is sharing or
// sending `T`s.
unsafe impl<T: Zeroable + Send> Send for ZeroedArray<T> {}
// SAFETY: as above: `&ZeroedArray<T>` only hands out `&T`.
unsafe impl<T: Zeroable + Sync> Sync for ZeroedArray<T> {}

impl<T: Zeroable> ZeroedArray<T> {
    /// An array of `len` zeroed `T`s. Running out of address space ends the process, as a
    /// failed `Box` allocation does.
    pub fn new(len: usize) -> ZeroedArray<T> {
        assert!(std::mem::align_of::<T>() <= HUGE_PAGE);
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .and_then(|b| b.checked_add(HUGE_PAGE))
            .expect("array size overflows the address space");
        let layout = std::alloc::Layout::from_size_align(bytes.max(1), HUGE_PAGE)
            .expect("array size overflows the address space");
        // SAFETY: an anonymous private mapping at an address of the kernel's choice touches no
        // memory of ours; the result is checked before use.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(layout);
        }
        let Some(map) = NonNull::new(map) else {
            std::alloc::handle_alloc_error(layout);
        };
        // The first 2 MiB boundary inside the mapping: the mapping is `HUGE_PAGE` longer than
        // the array, so the array fits after it.
        let offset = map.as_ptr().align_offset(HUGE_PAGE);
        let array_bytes = bytes - HUGE_PAGE;
        // SAFETY: `offset < HUGE_PAGE` and `offset + array_bytes <= bytes`: inside the mapping.
        let first = unsafe { map.cast::<u8>().add(offset) };
        // SAFETY: advice about a range of our own mapping changes no byte of it. A kernel
        // without transparent huge pages refuses it, and the array stays on small pages.
        unsafe { libc::madvise(first.as_ptr().cast(), array_bytes, libc::MADV_HUGEPAGE) };
        ZeroedArray {
            first: first.cast::<T>(),
            len,
            map,
            map_len: bytes,
        }
    }
}

impl<T: Zeroable> Deref for ZeroedArray<T> {
    type Target = [T];

    #[inline(always)]
    fn deref(&self) -> &[T] {
        // SAFETY: `first` is aligned for `T` (a 2 MiB boundary, page-aligned in any case), the
        // mapping holds `len` `T`s from it, the kernel filled it with zeros, which are valid `T`s
        // (`Zeroable`), and it lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.first.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> Drop for ZeroedArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours, unmapped once; the slices handed out borrowed `self`.
        unsafe { libc::munmap(self.map.as_ptr(), self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    struct Words([AtomicU64; 8]);
    // SAFETY: atomics of all zeros are zeros.
    unsafe impl Zeroable for Words {}

    #[test]
    fn an_array_starts_as_zeros_and_keeps_what_is_written() {
        let a = ZeroedArray::<Words>::new(100_000);
        assert_eq!(a.len(), 100_000);
        assert!(a.iter().all(|w| w.0.iter().all(|x| x.load(Relaxed) == 0)));
        a[99_999].0[7].store(7, Relaxed);
        a[0].0[0].store(1, Relaxed);
        assert_eq!(a[99_999].0[7].load(Relaxed), 7);
        assert_eq!(a[0].0[0].load(Relaxed), 1);
        assert_eq!(a.as_ptr() as usize % HUGE_PAGE, 0);
    }

    #[test]
    fn an_empty_array_is_empty() {
        let a = ZeroedArray::<Words>::new(0);
        assert!(a.is_empty());
    }
}
