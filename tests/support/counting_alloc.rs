//! A global allocator that counts, per thread, the allocations made, the bytes allocated and the
//! bytes still held.
//! Included by the test binaries that measure allocations; each declares it as its
//! `#[global_allocator]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts the allocations and the net bytes of the current thread.
pub struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static NET_BYTES: Cell<i64> = const { Cell::new(0) };
    static ALLOCATED_BYTES: Cell<u64> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    let _ = NET_BYTES.try_with(|n| n.set(n.get() + size as i64));
    let _ = ALLOCATED_BYTES.try_with(|n| n.set(n.get() + size as u64));
}

fn note_dealloc(size: usize) {
    let _ = NET_BYTES.try_with(|n| n.set(n.get() - size as i64));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: forwarded unchanged to the system allocator, with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_dealloc(layout.size());
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes through
        // this allocator, which forwards to `System`).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_dealloc(layout.size());
        note_alloc(new_size);
        // SAFETY: forwarded unchanged to the system allocator; same contract as `realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations made by this thread so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Bytes allocated and not yet freed by this thread so far.
pub fn net_bytes() -> i64 {
    NET_BYTES.with(Cell::get)
}

/// Bytes allocated by this thread so far (freed or not).
pub fn allocated_bytes() -> u64 {
    ALLOCATED_BYTES.with(Cell::get)
}
