use super::*;

use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Whether the cell points at a stack frame (or its spill block), not owning it.
fn is_stack_in(cell: &CurrentFrame) -> bool {
    let raw = cell.raw.get();
    // SAFETY: the pointer is in the cell, so its owner is alive.
    unsafe { points_at_stack(raw) }
}

impl FrameView<'_> {
    /// The same frame (the same entries in memory).
    fn is(self, other: FrameView<'_>) -> bool {
        self.data == other.data
    }
}

/// A storage's read state with no default.
struct NoDefault(PositionHint);

impl<T> StoreSource<T> for NoDefault {
    fn hint(&self) -> &PositionHint {
        &self.0
    }

    fn default_store(&self) -> Option<&Arc<T>> {
        None
    }
}

/// A store that counts its drops, to prove frames are neither leaked nor freed early.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counted(drops: &Arc<AtomicUsize>) -> Option<Option<Value>> {
    Some(Some(Value::new(Arc::new(Counted(drops.clone())))))
}

fn read(frame: FrameView<'_>, key: u64) -> Option<u64> {
    frame
        .lookup(key)
        .and_then(|e| e.value.as_ref())
        .map(|v| *v.downcast_ref::<u64>().unwrap())
}

#[test]
fn lent_frame_survives_the_cell_being_replaced() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    cell.set(
        SharedFrame::EMPTY
            .with(1, counted(&drops))
            .with(2, value(20)),
    );
    {
        let lent = cell.lend();
        // What `enter_with` does inside `with_store`: take, build, set.
        let taken = cell.take();
        cell.set(taken.with(2, value(21)));
        // And a `run` that replaces and restores, dropping the frames in between.
        let outer = cell.replace(SharedFrame::EMPTY.with(3, value(30)));
        drop(cell.replace(outer));
        assert_eq!(read(lent.frame(), 2), Some(20));
        assert_eq!(read(cell.get().view(), 2), Some(21));
        assert_eq!(drops.load(Ordering::SeqCst), 0);
    }
    // The changed cell keeps its frame; the lent one was released with its guard, but the
    // store it held is still shared by the new frame.
    assert_eq!(read(cell.get().view(), 2), Some(21));
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(cell.take());
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn untouched_lend_gives_the_reference_back() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    cell.set(SharedFrame::EMPTY.with(1, counted(&drops)));
    let before = cell.get();
    for _ in 0..3 {
        let lent = cell.lend();
        assert!(lent.frame().is(before.view()));
        // Nested lends of the same frame are views.
        let inner = cell.lend();
        assert!(inner.frame().is(before.view()));
    }
    // Two references: the cell's and `before`.
    // SAFETY: `before` keeps the frame alive.
    assert_eq!(unsafe { (*before.as_ptr()).refs.load(Ordering::SeqCst) }, 2);
    drop(before);
    cell.set(SharedFrame::EMPTY);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn lend_restored_after_take_and_put_back_is_released_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    cell.set(SharedFrame::EMPTY.with(1, counted(&drops)));
    {
        let outer = cell.lend();
        // Taken out and put back (a `Snapshot::run`): the cell now owns a reference of its
        // own.
        let swapped = cell.replace(SharedFrame::EMPTY);
        cell.set(swapped);
        {
            // A nested lend of that reference, given back untouched.
            let inner = cell.lend();
            assert!(inner.frame().is(outer.frame()));
        }
        assert!(outer.frame().lookup(1).is_some());
    }
    assert!(cell.get().lookup(1).is_some());
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    cell.set(SharedFrame::EMPTY);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn lent_frame_is_released_when_the_cell_is_emptied() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    cell.set(SharedFrame::EMPTY.with(1, counted(&drops)));
    {
        let lent = cell.lend();
        cell.set(SharedFrame::EMPTY);
        // Still readable: the guard holds the only reference now.
        assert!(lent.frame().lookup(1).is_some());
        assert_eq!(drops.load(Ordering::SeqCst), 0);
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert!(cell.get().0.is_none());
}

#[test]
fn lend_of_the_empty_frame_and_panics_inside_a_lend() {
    let cell = CurrentFrame::new();
    assert!(cell.lend().frame().entries().is_empty());
    let drops = Arc::new(AtomicUsize::new(0));
    cell.set(SharedFrame::EMPTY.with(1, counted(&drops)));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _lent = cell.lend();
        panic!("inside with_store");
    }));
    assert!(result.is_err());
    // The guard gave the reference back during unwinding: the cell still owns it.
    assert!(cell.get().lookup(1).is_some());
    drop(cell.take());
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

fn keys_and_values(frame: &SharedFrame) -> Vec<(u64, Option<u64>)> {
    frame
        .entries()
        .iter()
        .map(|e| {
            (
                e.key,
                e.value.as_ref().map(|v| *v.downcast_ref::<u64>().unwrap()),
            )
        })
        .collect()
}

fn value(v: u64) -> Option<Option<Value>> {
    Some(Some(Value::new(Arc::new(v))))
}

#[test]
fn frames_stay_sorted_through_inserts_replacements_and_removals() {
    let mut frame = SharedFrame::EMPTY;
    // Insert out of order, growing past the inline capacity.
    for key in [5u64, 1, 3, 2, 4, 6] {
        frame = frame.with(key, value(key * 10));
    }
    assert_eq!(
        keys_and_values(&frame),
        [
            (1, Some(10)),
            (2, Some(20)),
            (3, Some(30)),
            (4, Some(40)),
            (5, Some(50)),
            (6, Some(60))
        ]
    );

    // Replace, mark exited, and remove back into the inline layout.
    frame = frame
        .with(3, value(33))
        .with(4, Some(None))
        .with(6, None)
        .with(1, None);
    assert_eq!(
        keys_and_values(&frame),
        [(2, Some(20)), (3, Some(33)), (4, None), (5, Some(50))]
    );
    assert!(frame.lookup(1).is_none());
    assert!(frame.lookup(4).is_some_and(|e| e.value.is_none()));

    // Removing an absent key shares the frame; removing everything gives the empty frame.
    assert!(frame.with(99, None).ptr_eq(&frame));
    let emptied = [2, 3, 4, 5]
        .into_iter()
        .fold(frame, |f, key| f.with(key, None));
    assert!(emptied.0.is_none());
}

#[test]
fn lookups_use_binary_search_past_the_linear_threshold() {
    let frame = (0..100u64)
        .rev()
        .fold(SharedFrame::EMPTY, |f, key| f.with(key * 2, value(key)));
    for key in 0..100u64 {
        let entry = frame.lookup(key * 2).expect("present");
        assert_eq!(
            *entry.value.as_ref().unwrap().downcast_ref::<u64>().unwrap(),
            key
        );
        assert!(frame.lookup(key * 2 + 1).is_none());
    }
}

/// What `run` does when the code inside changed the context: put back only `key`'s entry.
fn restore_key(key: u64) -> impl FnOnce(&SharedFrame, FrameView<'_>, u64) -> SharedFrame {
    move |current, previous, _| current.restore(previous.save(key))
}

fn stacked<T: Send + Sync + 'static, R>(
    cell: &CurrentFrame,
    key: u64,
    value: Option<FreshValue<T>>,
    f: impl FnOnce() -> R,
) -> R {
    cell.run_with_entry(Key::from_raw(key), value, f, restore_key(key))
}

fn fresh(v: u64) -> Option<FreshValue<u64>> {
    Some(FreshValue::new(v))
}

fn fresh_counted(drops: &Arc<AtomicUsize>) -> Option<FreshValue<Counted>> {
    Some(FreshValue::new(Counted(drops.clone())))
}

fn current(cell: &CurrentFrame, key: u64) -> Option<u64> {
    cell.with_current(|frame| read(frame, key))
}

fn present(cell: &CurrentFrame, key: u64) -> bool {
    cell.with_current(|frame| frame.lookup(key).is_some())
}

#[test]
fn stack_frame_reads_and_restores_the_previous_pointer_as_it_was() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    cell.set(SharedFrame::EMPTY.with(3, value(30)).with(1, value(10)));
    let before = cell.raw.get();
    stacked(&cell, 2, fresh(20), || {
        assert!(is_stack_in(&cell));
        assert_eq!(
            [1, 2, 3].map(|key| current(&cell, key)),
            [Some(10), Some(20), Some(30)]
        );
        // Nested: one over a stack frame, replacing an entry, then adding a counted one.
        stacked(&cell, 1, fresh(11), || {
            assert_eq!(current(&cell, 1), Some(11));
            stacked(&cell, 4, fresh_counted(&drops), || {
                assert_eq!(cell.get().view().entries().len(), 4);
                assert_eq!(current(&cell, 2), Some(20));
            });
            assert_eq!(drops.load(Ordering::SeqCst), 1);
            assert!(cell.get().lookup(4).is_none());
        });
        assert_eq!(current(&cell, 1), Some(10));
    });
    assert_eq!(cell.raw.get(), before);
    assert_eq!(current(&cell, 2), None);
    cell.set(SharedFrame::EMPTY);
}

#[test]
fn stack_frame_is_promoted_once_and_what_captured_it_keeps_its_stores() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    let (first, second) = stacked(&cell, 1, fresh_counted(&drops), || {
        let first = cell.get();
        assert_eq!(cell.raw.get(), first.as_ptr());
        let second = cell.get();
        assert!(first.ptr_eq(&second));
        assert!(first.lookup(1).is_some());
        (first, second)
    });
    assert!(cell.get().lookup(1).is_none());
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(first);
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(second);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn poll_inside_a_stack_frame_leaves_it_in_place_and_keeps_changes_for_the_resource() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    let mut resource = CapturedFrame::new(SharedFrame::EMPTY.with(9, value(90)));
    stacked(&cell, 1, fresh_counted(&drops), || {
        // Enter and leave a resource, as a poll does: the stack frame stays in place.
        cell.enter_keeping(&mut resource, (), || {
            assert_eq!(current(&cell, 9), Some(90));
        });
        assert!(is_stack_in(&cell));
        // A poll that enters a storage inside keeps the change for the resource.
        cell.enter_keeping(&mut resource, (), || {
            let taken = cell.take();
            cell.set(taken.with(8, value(80)));
        });
        assert!(is_stack_in(&cell));
        assert!(cell.get().lookup(1).is_some());
    });
    assert!(cell.raw.get().is_null());
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(resource.with_view(|frame| read(frame, 9)), Some(90));
    assert_eq!(resource.with_view(|frame| read(frame, 8)), Some(80));
}

#[test]
fn entering_the_empty_frame_leaves_it_untagged_and_every_reader_sees_it_empty() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    let mut resource = CapturedFrame::new(SharedFrame::EMPTY);
    assert!(
        resource.lent().is_null(),
        "the empty frame is null, never tagged"
    );
    // Not entered, the empty frame is null: a read of it takes the lending path, which
    // lends nothing and leaves the cell as it was.
    cell.with_current(|frame| assert!(frame.entries().is_empty()));
    assert!(cell.raw.get().is_null());
    // Entered: the cell holds null, and reads, captures and lends see no entries.
    cell.enter_keeping(&mut resource, (), || {
        assert!(cell.raw.get().is_null());
        assert_eq!(current(&cell, 1), None);
        assert!(
            cell.get().as_ptr().is_null(),
            "a capture of the empty frame"
        );
        cell.with_current(|frame| assert!(frame.entries().is_empty()));
        {
            let lent = cell.lend();
            assert!(lent.frame().entries().is_empty());
        }
        assert!(
            cell.raw.get().is_null(),
            "a lend of it owns nothing to give back"
        );
        // A `run` inside stacks on it and puts it back as it was.
        stacked(&cell, 1, fresh_counted(&drops), || {
            assert!(cell.get().lookup(1).is_some())
        });
        assert!(cell.raw.get().is_null());
    });
    assert!(cell.raw.get().is_null());
    assert!(resource.lent().is_null());
    assert_eq!(drops.load(Ordering::SeqCst), 1);

    // An `enter_with` inside becomes the resource's frame.
    cell.enter_keeping(&mut resource, (), || {
        let taken = cell.take();
        assert!(taken.as_ptr().is_null());
        cell.set(taken.with(2, counted(&drops)));
    });
    assert!(cell.raw.get().is_null());
    assert!(resource.with_view(|frame| frame.lookup(2).is_some()));
    assert_eq!(
        resource.lent().addr() & UNOWNED,
        UNOWNED,
        "a heap frame is tagged"
    );
    // Replaced by the untagged empty frame inside (what `disable` can leave): a change too,
    // and the resource's frame goes with it.
    cell.enter_keeping(&mut resource, (), || {
        drop(cell.take());
    });
    assert!(resource.lent().is_null());
    assert_eq!(drops.load(Ordering::SeqCst), 2);
    // A scope of it (an `AsyncResource`'s) ends what the code inside entered.
    cell.enter_scope(&resource, (), || {
        cell.set(SharedFrame::EMPTY.with(3, counted(&drops)));
    });
    assert!(cell.raw.get().is_null());
    assert_eq!(drops.load(Ordering::SeqCst), 3);
}

#[test]
fn changes_inside_a_stack_frame_keep_other_entries_and_release_the_rest() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    cell.set(SharedFrame::EMPTY.with(1, counted(&drops)));
    stacked(&cell, 2, fresh_counted(&drops), || {
        // An `enter_with` of another storage inside.
        let taken = cell.take();
        cell.set(taken.with(3, value(30)));
    });
    // Ours restored (removed), the other change kept, the previous frame released.
    assert_eq!(
        cell.get()
            .view()
            .entries()
            .iter()
            .map(|e| e.key)
            .collect::<Vec<_>>(),
        [1, 3]
    );
    assert_eq!(drops.load(Ordering::SeqCst), 1, "the scope's own store");
    cell.set(SharedFrame::EMPTY);
    assert_eq!(drops.load(Ordering::SeqCst), 2);
}

#[test]
fn stack_frame_over_a_lent_frame_and_a_changed_one_inside() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    cell.set(SharedFrame::EMPTY.with(1, counted(&drops)));
    {
        let lent = cell.lend();
        stacked(&cell, 2, fresh(20), || {
            assert!(present(&cell, 1));
            stacked(&cell, 3, fresh(30), || {
                let taken = cell.take();
                cell.set(taken.with(4, value(40)));
            });
            // The inner scope restored its entry over the changed frame.
            assert!(cell.get().lookup(3).is_none());
            assert!(cell.get().lookup(4).is_some());
        });
        assert!(lent.frame().lookup(1).is_some());
        assert!(cell.get().lookup(4).is_some());
        assert!(cell.get().lookup(2).is_none());
    }
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    cell.set(SharedFrame::EMPTY);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn panic_inside_a_stack_frame_restores_and_releases() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        stacked(&cell, 1, fresh_counted(&drops), || {
            let _captured = cell.get();
            panic!("inside run");
        })
    }));
    assert!(result.is_err());
    assert!(cell.raw.get().is_null());
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn a_stack_frame_places_its_entry_before_between_after_or_over_the_base_entries() {
    let keys = keys_in;
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    for base in [vec![2u64], vec![2, 6], vec![2, 4, 6], vec![2, 4, 6, 8]] {
        cell.set(
            base.iter()
                .fold(SharedFrame::EMPTY, |f, &key| f.with(key, value(key * 10))),
        );
        for key in 1..=9u64 {
            let replaces = base.contains(&key);
            let mut expected: Vec<u64> = base.iter().copied().chain([key]).collect();
            expected.sort_unstable();
            expected.dedup();
            let dropped = drops.load(Ordering::SeqCst);
            stacked(&cell, key, fresh_counted(&drops), || {
                // On the stack, or spilled past its capacity: a stack frame's pointer.
                assert!(is_stack_in(&cell), "key {key}");
                assert_eq!(keys(&cell), expected, "key {key} over {base:?}");
                for &other in base.iter().filter(|&&k| k != key) {
                    assert_eq!(current(&cell, other), Some(other * 10));
                }
                assert!(present(&cell, key));
            });
            assert_eq!(keys(&cell), base, "restored after key {key}");
            assert_eq!(current(&cell, 2), Some(20));
            assert_eq!(
                drops.load(Ordering::SeqCst),
                dropped + 1,
                "key {key} ({replaces})"
            );
        }
    }
    cell.set(SharedFrame::EMPTY);
}

#[test]
fn frames_past_the_stack_capacity_spill_to_the_heap() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    cell.set((1..=STACK_ENTRIES as u64).fold(SharedFrame::EMPTY, |f, key| f.with(key, value(key))));
    // Replacing an entry still fits; a new one does not.
    stacked(&cell, 1, fresh(100), || {
        assert!(is_stack_in(&cell));
        assert_eq!(current(&cell, 1), Some(100));
    });
    let before = cell.raw.get();
    stacked(&cell, 99, fresh_counted(&drops), || {
        // Spilled: still a stack frame's pointer, to its block of entries.
        assert!(is_stack_in(&cell));
        assert!(present(&cell, 99));
        let captured = cell.get();
        assert_eq!(captured.view().entries().len(), STACK_ENTRIES + 1);
        // A change inside, kept when the scope ends.
        let taken = cell.take();
        cell.set(taken.with(0, value(0)));
    });
    assert_ne!(cell.raw.get(), before);
    assert!(!present(&cell, 99) && present(&cell, 0) && present(&cell, 4));
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    stacked(&cell, 98, fresh_counted(&drops), || ());
    assert!(!present(&cell, 98));
    assert_eq!(drops.load(Ordering::SeqCst), 2);
    cell.set(SharedFrame::EMPTY);
}

/// A frame of `keys`, each key's value the key itself.
fn frame_of(keys: impl IntoIterator<Item = u64>) -> SharedFrame {
    keys.into_iter()
        .fold(SharedFrame::EMPTY, |frame, key| frame.with(key, value(key)))
}

/// Reads the cell's frame at every position hint up to two past its end, for each of
/// `keys`: an entry's own position finds it, every other position misses.
fn check_hinted_reads(cell: &CurrentFrame, keys: &[u64]) {
    let raw = cell.raw.get();
    // SAFETY: the frame is in the cell; the reads run no code that touches the cell.
    let frame = unsafe { CurrentFrame::view(raw) };
    let hint = PositionHint::new();
    for position in 0..keys.len() + 2 {
        hint.set(position);
        for (at, &key) in keys.iter().enumerate() {
            let found = frame
                .lookup_at_hint(Key::<u64>::from_raw(key), &hint)
                .map(|_| key);
            let expected = (at == position).then_some(key);
            assert_eq!(found, expected, "key {key} at hint {position} of {keys:?}");
        }
    }
}

#[test]
fn position_hints_read_exactly_the_entries_of_heap_stack_and_spilled_frames() {
    let cell = CurrentFrame::new();
    check_hinted_reads(&cell, &[]);
    cell.set(frame_of([2, 4]));
    check_hinted_reads(&cell, &[2, 4]);
    // A stack frame's end is marked one less (`UNCOUNTED_END`); the position just past its
    // entries still misses, even where an earlier, longer stack frame left a matching key
    // in the slot.
    stacked(&cell, 6, fresh(6), || check_hinted_reads(&cell, &[2, 4, 6]));
    stacked(&cell, 1, fresh(1), || {
        assert!(is_stack_in(&cell));
        check_hinted_reads(&cell, &[1, 2, 4]);
    });
    cell.set(SharedFrame::EMPTY);
    stacked(&cell, 1, fresh(1), || check_hinted_reads(&cell, &[1]));
    // An entered frame kept inline is marked less again (`UNCACHED_END`), and reads the same;
    // so does a stack frame over it.
    let mut single = stacked(&cell, 7, fresh(7), || cell.capture());
    assert!(matches!(single.0, Captured::Single { .. }));
    cell.enter_scope(&single, (), || check_hinted_reads(&cell, &[7]));
    cell.enter_keeping(&mut single, (), || {
        stacked(&cell, 8, fresh(8), || check_hinted_reads(&cell, &[7, 8]));
        check_hinted_reads(&cell, &[7]);
    });
    drop(single);
    cell.set(frame_of(1..=STACK_ENTRIES as u64));
    let keys: Vec<u64> = (1..=STACK_ENTRIES as u64 + 1).collect();
    stacked(&cell, STACK_ENTRIES as u64 + 1, fresh(0), || {
        assert!(is_stack_in(&cell), "a spill block is a stack frame's");
        check_hinted_reads(&cell, &keys);
    });
    // A capture promotes the stack frame; the heap copy reads the same.
    stacked(&cell, 9, fresh(9), || {
        drop(cell.capture());
        assert!(!is_stack_in(&cell));
        let mut with_nine = keys[..STACK_ENTRIES].to_vec();
        with_nine.push(9);
        check_hinted_reads(&cell, &with_nine);
    });
    cell.set(SharedFrame::EMPTY);
}

fn keys_in(cell: &CurrentFrame) -> Vec<u64> {
    cell.with_current(|frame| frame.entries().iter().map(|e| e.key).collect())
}

#[test]
fn spilled_frames_read_nest_and_put_every_entry_in_its_place() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    // Over a heap frame of 10 entries (even keys): at the front, in between, over one, last.
    cell.set(frame_of((1..=10).map(|k| k * 2)));
    let before = cell.raw.get();
    for (key, expect_len) in [(1, 11), (7, 11), (8, 10), (21, 11)] {
        stacked(&cell, key, fresh(1000 + key), || {
            assert!(is_stack_in(&cell));
            let keys = keys_in(&cell);
            assert_eq!(keys.len(), expect_len);
            assert!(keys.is_sorted(), "{keys:?}");
            assert_eq!(current(&cell, key), Some(1000 + key));
            for other in (1..=10).map(|k| k * 2).filter(|&k| k != key) {
                assert_eq!(current(&cell, other), Some(other));
            }
        });
        assert_eq!(cell.raw.get(), before);
    }
    // Nested: a spill over a spill over a stack frame, each put back as it was.
    cell.set(frame_of(1..=3));
    stacked(&cell, 4, fresh(4), || {
        let stack = cell.raw.get();
        stacked(&cell, 5, fresh_counted(&drops), || {
            let spill = cell.raw.get();
            assert_eq!(keys_in(&cell), [1, 2, 3, 4, 5]);
            stacked(&cell, 3, fresh(33), || {
                assert_eq!(keys_in(&cell), [1, 2, 3, 4, 5]);
                assert_eq!(current(&cell, 3), Some(33));
                assert!(present(&cell, 5));
            });
            assert_eq!(cell.raw.get(), spill);
            assert_eq!(current(&cell, 3), Some(3));
        });
        assert_eq!(cell.raw.get(), stack);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
    cell.set(SharedFrame::EMPTY);
}

#[test]
fn a_spilled_frame_is_promoted_once_and_what_captured_it_keeps_its_stores() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    cell.set(frame_of(1..=STACK_ENTRIES as u64));
    let before = cell.raw.get();
    let (first, second, resource) = stacked(&cell, 9, fresh_counted(&drops), || {
        let spill = cell.raw.get();
        // A resource's capture promotes it and leaves the copy in the cell.
        let resource = cell.capture();
        assert_eq!(cell.raw.get().addr() & UNOWNED, 0);
        let first = cell.get();
        let second = cell.get();
        assert!(first.ptr_eq(&second));
        assert_ne!(first.as_ptr(), untagged(spill));
        assert_eq!(first.view().entries().len(), STACK_ENTRIES + 1);
        assert!(first.lookup(9).is_some() && first.lookup(1).is_some());
        (first, second, resource)
    });
    assert_eq!(cell.raw.get(), before);
    assert!(!present(&cell, 9));
    drop(first);
    drop(resource);
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(second);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    // Captured inside a nested stack frame: the spill block's own copy, made once.
    let outer = stacked(&cell, 9, fresh_counted(&drops), || {
        let inner = stacked(&cell, 2, fresh(22), || cell.get());
        let outer = cell.get();
        assert_eq!(read(inner.view(), 2), Some(22));
        assert_eq!(read(outer.view(), 2), Some(2));
        assert!(outer.lookup(9).is_some() && inner.lookup(9).is_some());
        outer
    });
    assert_eq!(outer.view().entries().len(), STACK_ENTRIES + 1);
    drop(outer);
    assert_eq!(drops.load(Ordering::SeqCst), 2);
    cell.set(SharedFrame::EMPTY);
}

#[test]
fn panic_inside_a_spilled_frame_restores_and_releases() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    cell.set(frame_of(1..=6));
    let before = cell.raw.get();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        stacked(&cell, 7, fresh_counted(&drops), || {
            let _kept = cell.get();
            panic!("inside a spilled frame");
        })
    }));
    assert!(caught.is_err());
    assert_eq!(cell.raw.get(), before);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    // And with a change inside: the other storage's entry is kept.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        stacked(&cell, 7, fresh_counted(&drops), || {
            let taken = cell.take();
            cell.set(taken.with(8, value(8)));
            panic!("inside a spilled frame, changed");
        })
    }));
    assert!(caught.is_err());
    assert_eq!(keys_in(&cell), [1, 2, 3, 4, 5, 6, 8]);
    assert_eq!(drops.load(Ordering::SeqCst), 2);
    cell.set(SharedFrame::EMPTY);
}

#[test]
fn a_borrowed_entry_costs_its_owner_no_reference_and_captures_take_their_own() {
    let drops = Arc::new(AtomicUsize::new(0));
    let store = Arc::new(Counted(drops.clone()));
    let kept = KeptValue::<Counted> {
        value: ManuallyDrop::new(Value::new(store.clone())),
        slot: 0,
        _store: PhantomData,
    };
    let borrowed = |cell: &CurrentFrame, key: u64, f: &mut dyn FnMut()| {
        cell.run_with_borrowed_entry(Key::from_raw(key), &kept, f, restore_key(key))
    };
    let cell = CurrentFrame::new();
    // On the stack, spilled, and both with a capture inside and a panic.
    for base in [frame_of([]), frame_of(1..=6)] {
        cell.set(base);
        let before = cell.raw.get();
        borrowed(&cell, 9, &mut || {
            assert!(present(&cell, 9));
            assert_eq!(Arc::strong_count(&store), 2, "the entry holds no reference");
        });
        assert_eq!(cell.raw.get(), before);
        let mut captured = None;
        borrowed(&cell, 9, &mut || captured = Some(cell.get()));
        let captured = captured.unwrap();
        assert_eq!(Arc::strong_count(&store), 3, "the capture holds one");
        assert!(captured.lookup(9).is_some());
        drop(captured);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            borrowed(&cell, 9, &mut || {
                let taken = cell.take();
                cell.set(taken.with(8, value(8)));
                panic!("inside a borrowed scope");
            })
        }));
        assert!(caught.is_err());
        assert!(!present(&cell, 9) && present(&cell, 8));
        assert_eq!(Arc::strong_count(&store), 2);
    }
    cell.set(SharedFrame::EMPTY);
    drop(kept);
    assert_eq!(Arc::strong_count(&store), 1);
    drop(store);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn resource_frames_clone_by_reference_and_are_entered_in_place() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    // Two entries, so that the capture is a heap frame (one is kept inline: see
    // `a_capture_of_a_one_entry_run_keeps_the_entry_inline_and_builds_no_frame`).
    cell.set(frame_of([2]));
    let base = cell.raw.get();
    let captured = stacked(&cell, 1, fresh_counted(&drops), || cell.capture());
    let copy = captured.clone();
    assert_eq!(copy.lent(), captured.lent(), "the same frame");
    assert!(CapturedFrame::default().lent().is_null());
    assert_eq!(format!("{copy:?}"), "[1, 2]");
    drop(captured);
    // Entered in place and left unchanged: no reference taken or released.
    cell.enter_scope(&copy, (), || {
        assert!(present(&cell, 1));
    });
    assert_eq!(cell.raw.get(), base);
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(copy);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    cell.set(SharedFrame::EMPTY);
}

/// The store of a frame kept inline, if it is one.
fn single(frame: &CapturedFrame) -> Option<(u64, NonNull<()>)> {
    match &frame.0 {
        Captured::Single { key, value } => Some((*key, value.data)),
        Captured::Shared(_) => None,
    }
}

#[test]
fn a_capture_of_a_one_entry_run_keeps_the_entry_inline_and_builds_no_frame() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    let (captured, copy) = stacked(&cell, 1, fresh_counted(&drops), || {
        let stack = cell.raw.get();
        let shares = Recycled::shares();
        let captured = cell.capture();
        // Not promoted: the cell still points at the stack frame, which has no heap copy.
        assert_eq!(cell.raw.get(), stack);
        // SAFETY: the cell points at this scope's live stack frame.
        assert!(unsafe { (*untagged(stack).cast::<StackFrame>()).promoted.get() }.is_null());
        assert_eq!(
            Recycled::shares(),
            shares + 1,
            "the capture's reference counts"
        );
        let (key, data) = single(&captured).expect("kept inline");
        assert_eq!(key, 1);
        assert_eq!(
            Some(data),
            cell.with_current(|frame| frame.entries()[0].value.as_ref().map(|v| v.data))
        );
        let copy = captured.clone();
        assert_eq!(single(&copy), Some((key, data)), "a clone shares the store");
        (captured, copy)
    });
    assert!(cell.raw.get().is_null());
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "the captures hold the store"
    );
    assert_eq!(format!("{captured:?}"), "[1]");
    assert_eq!(captured.with_view(|frame| frame.entries().len()), 1);
    drop(captured);
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(copy);
    assert_eq!(drops.load(Ordering::SeqCst), 1);

    // An entry with no store (an `exit`) is promoted, as is a heap frame of one entry captured
    // by reference.
    let exited = stacked::<u64, _>(&cell, 1, None, || cell.capture());
    assert!(single(&exited).is_none());
    assert!(exited.with_view(|frame| frame.lookup(1).is_some_and(|e| e.value.is_none())));
    cell.set(frame_of([3]));
    let heap = cell.capture();
    assert_eq!(
        untagged(heap.lent()),
        cell.raw.get(),
        "the cell's frame, by reference"
    );
    cell.set(SharedFrame::EMPTY);
    assert_eq!(heap.with_view(|frame| read(frame, 3)), Some(3));
}

#[test]
fn an_inline_frame_is_entered_alone_and_captures_inside_stay_inline() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    let mut resource = stacked(&cell, 1, fresh_counted(&drops), || cell.capture());
    let (_, data) = single(&resource).expect("kept inline");
    // Entered over another frame, which it replaces rather than layers on.
    cell.set(frame_of([5]));
    let before = cell.raw.get();
    let inner = cell.enter_keeping(&mut resource, (), || {
        assert!(is_stack_in(&cell));
        assert!(present(&cell, 1) && !present(&cell, 5));
        assert_eq!(keys_in(&cell), [1]);
        // A capture inside is kept inline too, sharing the store.
        let inner = cell.capture();
        assert_eq!(single(&inner), Some((1, data)));
        // A promotion of it (what `take` makes) is a copy for its caller alone: the stack frame
        // caches none, so leaving it releases nothing.
        let raw = cell.raw.get();
        // SAFETY: the cell's pointer, whose owner (this call) is alive.
        let copies = unsafe { (CurrentFrame::cloned(raw), CurrentFrame::cloned(raw)) };
        assert!(!copies.0.ptr_eq(&copies.1));
        assert!(copies.0.lookup(1).is_some() && copies.1.lookup(1).is_some());
        // SAFETY: as above.
        assert_eq!(unsafe { (*untagged(raw)).end } & UNCACHED_END, 0);
        drop(copies);
        // A `run` of another storage inside stacks on it; a capture there is a heap frame.
        let both = stacked(&cell, 2, fresh(20), || {
            assert_eq!(keys_in(&cell), [1, 2]);
            cell.capture()
        });
        assert!(single(&both).is_none());
        assert_eq!(
            both.with_view(|frame| (read(frame, 2), frame.entries().len())),
            (Some(20), 2)
        );
        assert_eq!(keys_in(&cell), [1]);
        inner
    });
    assert_eq!(cell.raw.get(), before);
    assert_eq!(single(&resource), Some((1, data)), "left unchanged");
    // The capture made inside enters the same way, also from a scope (a snapshot's run).
    cell.enter_scope(&inner, (), || {
        assert!(present(&cell, 1) && !present(&cell, 5))
    });
    assert_eq!(cell.raw.get(), before);
    drop(resource);
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(inner);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    cell.set(SharedFrame::EMPTY);
}

#[test]
fn changes_inside_an_inline_frame_last_for_a_poll_and_end_with_a_scope() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    let mut resource = stacked(&cell, 1, fresh_counted(&drops), || cell.capture());
    let scoped = resource.clone();
    // An `enter_with` inside a poll (take, which promotes the entered frame, then set)
    // becomes the future's frame for its next poll.
    cell.enter_keeping(&mut resource, (), || {
        let taken = cell.take();
        cell.set(taken.with(8, value(80)));
    });
    assert!(cell.raw.get().is_null());
    assert!(single(&resource).is_none(), "a heap frame now");
    cell.enter_keeping(&mut resource, (), || {
        assert_eq!([1, 8].map(|key| present(&cell, key)), [true, true]);
        assert_eq!(current(&cell, 8), Some(80));
    });
    // In a scope (`run_in_async_scope`, a snapshot's run) the change ends with it.
    for _ in 0..2 {
        cell.enter_scope(&scoped, (), || {
            assert!(!present(&cell, 8));
            let taken = cell.take();
            cell.set(taken.with(8, value(81)));
            assert!(present(&cell, 8) && present(&cell, 1));
        });
        assert!(cell.raw.get().is_null());
        assert!(single(&scoped).is_some(), "still inline");
    }
    // `disable` inside (the entry removed under a retired key) empties the future's frame.
    let mut disabled = scoped.clone();
    cell.enter_keeping(&mut disabled, (), || {
        let taken = cell.take();
        cell.set(taken.without(1));
        assert!(!present(&cell, 1));
    });
    assert!(disabled.lent().is_null());
    // Every heap copy of the entered frames went with its taker: the store goes with the
    // last capture.
    drop((resource, disabled));
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(scoped);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn a_panic_inside_an_inline_frame_restores_the_cell() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = CurrentFrame::new();
    let mut resource = stacked(&cell, 1, fresh_counted(&drops), || cell.capture());
    cell.set(frame_of([5]));
    let before = cell.raw.get();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cell.enter_keeping(&mut resource, (), || {
            let _inner = cell.capture();
            panic!("inside a poll");
        })
    }));
    assert!(caught.is_err());
    assert_eq!(cell.raw.get(), before);
    assert!(single(&resource).is_some());
    // Changed, then a panic: a poll keeps the change, a scope drops it.
    let scoped = resource.clone();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cell.enter_keeping(&mut resource, (), || {
            let taken = cell.take();
            cell.set(taken.with(8, value(80)));
            panic!("inside a poll, changed");
        })
    }));
    assert!(caught.is_err());
    assert_eq!(cell.raw.get(), before);
    assert_eq!(resource.with_view(|frame| read(frame, 8)), Some(80));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cell.enter_scope(&scoped, (), || {
            let taken = cell.take();
            cell.set(taken.with(8, counted(&drops)));
            panic!("inside a scope, changed");
        })
    }));
    assert!(caught.is_err());
    assert_eq!(cell.raw.get(), before);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "the scope's change is dropped"
    );
    assert!(single(&scoped).is_some());
    drop((resource, scoped));
    assert_eq!(drops.load(Ordering::SeqCst), 2);
    cell.set(SharedFrame::EMPTY);
}

/// A `run` whose store a capture kept inline does not recycle it; one with no capture does.
#[test]
fn a_run_never_recycles_a_store_kept_inline() {
    on_new_thread(|| {
        let cell = CurrentFrame::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let store = || Some(FreshValue::recycled(Counted(drops.clone()), 2));
        stacked(&cell, 2, store(), || assert!(present(&cell, 2)));
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        let recycled = cached(2).expect("recycled");
        let mut captured = stacked(&cell, 2, store(), || cell.capture());
        assert_eq!(drops.load(Ordering::SeqCst), 1, "held by the capture");
        assert_eq!(cached(2), None, "its allocation is not reused");
        assert_eq!(single(&captured).map(|(_, data)| data), Some(recycled));
        // A `run` of the same storage inside it has a fresh store, and recycles it.
        cell.enter_keeping(&mut captured, (), || {
            stacked(&cell, 2, store(), || assert!(present(&cell, 2)));
            assert!(present(&cell, 2));
        });
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        assert!(cached(2).is_some());
        drop(captured);
        assert_eq!(drops.load(Ordering::SeqCst), 3);
    });
}

#[test]
fn frames_built_from_others_share_their_stores_and_count_one_share() {
    let drops = Arc::new(AtomicUsize::new(0));
    let base = SharedFrame::EMPTY
        .with(1, counted(&drops))
        .with(3, counted(&drops));
    let before = Recycled::shares();
    // An entry between the two, and the first replaced.
    let keys = |frame: &SharedFrame| frame.entries().iter().map(|e| e.key).collect::<Vec<_>>();
    let between = base.with(2, counted(&drops));
    assert_eq!(keys(&between), [1, 2, 3]);
    assert_eq!(Recycled::shares(), before + 1, "one share for both copies");
    let replaced = base.with(1, value(10));
    assert_eq!(keys(&replaced), [1, 3]);
    assert_eq!(read(replaced.view(), 1), Some(10));
    // Removing the last one leaves the empty frame, which counts nothing.
    let only = SharedFrame::EMPTY.with(4, value(4));
    let shares = Recycled::shares();
    assert!(
        only.view()
            .with(4, None)
            .expect("removed")
            .as_ptr()
            .is_null()
    );
    assert_eq!(Recycled::shares(), shares);
    drop(base);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "the new frames share the stores"
    );
    drop(replaced);
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(between);
    assert_eq!(drops.load(Ordering::SeqCst), 3);
    // Shared frames free their entries with the last reference.
    let frame = SharedFrame::EMPTY
        .with(1, counted(&drops))
        .with(2, counted(&drops));
    let clones = [frame.clone(), frame.clone()];
    drop(frame);
    drop(clones);
    assert_eq!(drops.load(Ordering::SeqCst), 5);
}

/// The allocation at `slot` of this thread's recycling cache, left in place (`None` for a
/// free or closed slot).
fn cached(slot: usize) -> Option<NonNull<()>> {
    RECYCLED.with(|recycled| {
        let empty = recycled.slots[slot].get()?;
        (!empty.is_closed()).then_some(empty.data)
    })
}

/// Runs `f` on a thread of its own: a fresh recycling cache, freed when `f` returns (Miri's
/// leak check then proves the cache frees what it kept).
fn on_new_thread(f: impl FnOnce() + Send) {
    std::thread::scope(|scope| scope.spawn(f).join().unwrap());
}

#[test]
fn a_recycled_allocation_is_reused_for_the_same_layout_and_its_values_dropped() {
    on_new_thread(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let first = FreshValue::recycled(Counted(drops.clone()), 3).into_value();
        let data = first.data;
        first.recycle(3);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "dropped when released");
        assert_eq!(cached(3), Some(data));
        // The same type, then another of the same layout, in the same allocation.
        let second = FreshValue::recycled(Counted(drops.clone()), 3).into_value();
        assert_eq!((second.data, cached(3)), (data, None));
        second.recycle(3);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        // (`usize`: pointer-sized and -aligned like `Counted`, on every target.)
        let number = FreshValue::recycled(7usize, 3).into_value();
        assert_eq!(
            (number.data, number.downcast_ref::<usize>()),
            (data, Some(&7))
        );
        // Shared when released: not recycled, and the other reference still reads it.
        // SAFETY: the store is a `usize`.
        let kept = unsafe { number.to_arc::<usize>() };
        number.recycle(3);
        assert_eq!((*kept, cached(3)), (7, None));
        drop(kept);
        // A layout that differs leaves the cached allocation where it is.
        FreshValue::recycled(1u64, 3).into_value().recycle(3);
        let cached_u64 = cached(3).expect("recycled");
        let small = FreshValue::recycled(9u32, 3).into_value();
        assert_ne!(small.data, cached_u64);
        assert_eq!(small.downcast_ref::<u32>(), Some(&9));
        // The slot is taken: this one is freed instead (the thread's exit frees the other).
        small.recycle(3);
        assert_eq!(cached(3), Some(cached_u64));
    });
}

#[test]
fn slots_open_with_the_first_allocation_kept_and_close_at_the_release() {
    let closed = || {
        RECYCLED.with(|r| {
            r.slots
                .iter()
                .filter(|s| s.get().is_some_and(CachedAllocation::is_closed))
                .count()
        })
    };
    on_new_thread(|| {
        // Nothing is kept before the thread-exit release is registered.
        assert_eq!(closed(), RECYCLED_SLOTS);
        assert!(Recycled::take(2, OpsOf::<u64>::OPS.layout).is_none());
        let value = FreshValue::recycled(5u64, 2).into_value();
        let data = value.data;
        value.recycle(2);
        // The first allocation kept registers it and opens every slot.
        assert_eq!((closed(), cached(2)), (0, Some(data)));
        assert_eq!(
            RECYCLED.with(|r| r.slots.iter().filter(|s| s.get().is_none()).count()),
            RECYCLED_SLOTS - 1
        );
        // The release frees what is kept and closes every slot; a closed slot is never
        // taken (Miri: the thread's own release later frees nothing twice).
        drop(ReleaseRecycled);
        assert_eq!((closed(), cached(2)), (RECYCLED_SLOTS, None));
        let fresh = FreshValue::recycled(6u64, 2).into_value();
        assert_eq!(fresh.downcast_ref::<u64>(), Some(&6));
        drop(fresh);
    });
}

#[test]
fn a_store_with_a_weak_reference_is_released_not_recycled() {
    on_new_thread(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let value = FreshValue::recycled(Counted(drops.clone()), 4).into_value();
        // SAFETY: the store is a `Counted`.
        let weak = Arc::downgrade(&unsafe { value.to_arc::<Counted>() });
        value.recycle(4);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert!(weak.upgrade().is_none());
        assert_eq!(cached(4), None);
    });
}

#[test]
fn a_store_released_on_another_thread_meanwhile_is_dropped_once() {
    on_new_thread(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let value = FreshValue::recycled(Counted(drops.clone()), 5).into_value();
        // SAFETY: the store is a `Counted`.
        let other = unsafe { value.to_arc::<Counted>() };
        std::thread::scope(|scope| {
            scope.spawn(move || drop(other));
            value.recycle(5);
        });
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn a_store_whose_destructor_panics_while_recycled_frees_its_allocation() {
    struct Panics;
    impl Drop for Panics {
        fn drop(&mut self) {
            panic!("store destructor");
        }
    }
    on_new_thread(|| {
        let value = FreshValue::recycled(Panics, 6).into_value();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| value.recycle(6)));
        assert!(result.is_err());
        assert_eq!(cached(6), None);
    });
}

#[test]
fn a_heap_frame_whose_store_panics_when_dropped_drops_the_others_and_frees_itself() {
    struct Panics;
    impl Drop for Panics {
        fn drop(&mut self) {
            panic!("store destructor");
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    let frame = SharedFrame::EMPTY
        .with(1, Some(Some(Value::new(Arc::new(Panics)))))
        .with(2, counted(&drops))
        .with(3, counted(&drops));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(frame)));
    assert!(result.is_err());
    // Both other stores dropped; Miri reports the frame's allocation if it leaked.
    assert_eq!(drops.load(Ordering::SeqCst), 2);
}

/// A scope's store that nothing shared is recycled without the locked check (debug builds
/// still make it, and fail if the store was shared); one that was shared on this thread (an
/// `Arc` handed out, a promoted frame kept) is left to its other holders.
#[test]
fn a_scope_recycles_its_store_only_when_this_thread_never_shared_it() {
    on_new_thread(|| {
        let cell = CurrentFrame::new();
        let drops = Arc::new(AtomicUsize::new(0));
        // As `run` makes its stores: in the allocation cached at the storage's slot.
        let store = || Some(FreshValue::recycled(Counted(drops.clone()), 2));
        // Unshared: read by reference only, then recycled.
        stacked(&cell, 2, store(), || {
            assert!(present(&cell, 2));
        });
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        let recycled = cached(2).expect("recycled");

        // Shared through an `Arc`, as `get_store` hands out: the allocation stays with it.
        let kept = stacked(&cell, 2, store(), || {
            cell.clone_store(&NoDefault(PositionHint::new()), Key::<Counted>::from_raw(2))
                .unwrap()
        });
        assert_eq!(drops.load(Ordering::SeqCst), 1, "still held by the `Arc`");
        assert_eq!(cached(2), None, "the kept store's allocation is not reused");
        assert_eq!(NonNull::from(&*kept).cast::<()>(), recycled);
        drop(kept);
        assert_eq!(drops.load(Ordering::SeqCst), 2);

        // Shared through a promoted frame kept past the scope.
        let captured = stacked(&cell, 2, store(), || cell.get());
        assert_eq!(
            drops.load(Ordering::SeqCst),
            2,
            "still held by the captured frame"
        );
        assert!(captured.lookup(2).is_some());
        drop(captured);
        assert_eq!(drops.load(Ordering::SeqCst), 3);

        // A share of another store also counts: the check is made, and the store recycled.
        let other = FreshValue::new(5u64).into_value();
        stacked(&cell, 2, store(), || drop(other.clone()));
        assert_eq!(drops.load(Ordering::SeqCst), 4);
        assert!(cached(2).is_some());
        assert!(cell.take().ptr_eq(&SharedFrame::EMPTY));
    });
}
