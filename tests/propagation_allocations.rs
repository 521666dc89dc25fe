//! The propagation kit allocates what binding by hand with `bind!` allocates, and nothing more:
//! heap allocations on the spawning thread, counted by a global allocator, with one store
//! captured and no hook enabled.

use std::sync::mpsc;

use async_hooks::tokio::JoinSetExt;
use async_hooks::{AsyncLocalStorage, bind};

mod support;
use support::counting_alloc;

#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

static REQUEST: AsyncLocalStorage<u64> = AsyncLocalStorage::new();

fn read() -> u64 {
    REQUEST.get_store().map_or(0, |r| *r)
}

/// Allocations made on this thread by `start` (the spawning call, inside `REQUEST.run(7, …)`):
/// the fewest over 20 calls after two warm-up calls, each followed by `finish` (joining the
/// work, not counted). First use registers types and thread-locals; a later call may still
/// allocate now and then for the pools themselves (a channel's next block), which the minimum
/// leaves out.
fn allocations<H>(start: impl Fn() -> H, finish: impl Fn(H)) -> u64 {
    let once = || {
        REQUEST.run(7, || {
            let before = counting_alloc::allocations();
            let handle = start();
            let made = counting_alloc::allocations() - before;
            finish(handle);
            made
        })
    };
    once();
    once();
    (0..20).map(|_| once()).min().unwrap()
}

/// The kit's call allocates what the same call bound by hand does.
fn assert_same<H>(what: &str, kit: impl Fn() -> H, by_hand: impl Fn() -> H, finish: impl Fn(H)) {
    let (kit, by_hand) = (allocations(kit, &finish), allocations(by_hand, &finish));
    assert_eq!(
        kit, by_hand,
        "{what}: the kit allocates {kit}, bind! by hand {by_hand}"
    );
}

#[test]
fn tokio_helpers_allocate_what_bind_by_hand_does() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let join = |task: tokio::task::JoinHandle<u64>| assert_eq!(rt.block_on(task).unwrap(), 7);
    assert_same(
        "spawn",
        || async_hooks::tokio::spawn(async { read() }),
        || tokio::spawn(bind!(async { read() })),
        join,
    );
    assert_same(
        "spawn_blocking",
        || async_hooks::tokio::spawn_blocking(read),
        || tokio::task::spawn_blocking(bind!(|| read())),
        join,
    );
    let mut set = std::cell::RefCell::new(tokio::task::JoinSet::new());
    let join_set = |_| {
        assert_eq!(
            rt.block_on(set.borrow_mut().join_next()).unwrap().unwrap(),
            7
        )
    };
    assert_same(
        "JoinSetExt::spawn_bound",
        || {
            set.borrow_mut().spawn_bound(async { read() });
        },
        || {
            set.borrow_mut().spawn(bind!(async { read() }));
        },
        join_set,
    );
    assert_same(
        "JoinSetExt::spawn_blocking_bound",
        || {
            set.borrow_mut().spawn_blocking_bound(read);
        },
        || {
            set.borrow_mut().spawn_blocking(bind!(|| read()));
        },
        join_set,
    );
    assert!(set.get_mut().is_empty());
    let local = tokio::task::LocalSet::new();
    let _local = local.enter();
    assert_same(
        "spawn_local",
        || async_hooks::tokio::spawn_local(async { read() }),
        || tokio::task::spawn_local(bind!(async { read() })),
        |task| assert_eq!(local.block_on(&rt, task).unwrap(), 7),
    );
}

#[test]
fn thread_and_rayon_helpers_allocate_what_bind_by_hand_does() {
    assert_same(
        "thread::spawn",
        || async_hooks::thread::spawn(read),
        || std::thread::spawn(bind!(|| read())),
        |thread| assert_eq!(thread.join().unwrap(), 7),
    );
    let (tx, rx) = mpsc::channel();
    assert_same(
        "rayon::spawn",
        || {
            let tx = tx.clone();
            async_hooks::rayon::spawn(move || tx.send(read()).unwrap());
        },
        || {
            let tx = tx.clone();
            rayon::spawn(bind!(move || tx.send(read()).unwrap()));
        },
        |()| assert_eq!(rx.recv().unwrap(), 7),
    );
    assert_same(
        "rayon::join",
        || assert_eq!(async_hooks::rayon::join(read, read), (7, 7)),
        || assert_eq!(rayon::join(bind!(|| read()), bind!(|| read())), (7, 7)),
        |()| (),
    );
}
