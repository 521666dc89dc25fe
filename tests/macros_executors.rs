//! `#[async_resource]` and `bind!` on real executors: tokio (multi-thread and current-thread),
//! smol and `futures::executor`, with futures and closures that move between threads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_hooks::{
    AsyncId, AsyncLocalStorage, Hooks, async_resource, bind, create_hook, execution_async_id,
    trigger_async_id,
};

mod support;
use support::futures::YieldOnce;
use support::serial;

static REQUEST: AsyncLocalStorage<String> = AsyncLocalStorage::new();

fn request() -> Option<String> {
    REQUEST.get_store().map(|r| (*r).clone())
}

/// Yields to the executor `n` times, so the task may resume on another worker thread.
async fn yield_times(n: usize) {
    for _ in 0..n {
        YieldOnce(false).await;
    }
}

/// Yields through tokio's own scheduler `n` times.
async fn hop(n: usize) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

#[async_resource(type = "Handler")]
async fn handler(step: u32) -> (Option<String>, u32, AsyncId, AsyncId) {
    let me = execution_async_id();
    hop(3).await;
    let seen = request();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(execution_async_id(), me);
    (seen, step, me, trigger_async_id())
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn tokio_multi_thread_keeps_each_request_store() {
    let _serial = serial();
    multi_thread().block_on(tokio_multi_thread_keeps_each_request_store_async());
}

async fn tokio_multi_thread_keeps_each_request_store_async() {
    let mut tasks = Vec::new();
    for n in 0..8u32 {
        let name = format!("req-{n}");
        tasks.push(REQUEST.run(name, || {
            let annotated = tokio::spawn(handler(n));
            let block = tokio::spawn(bind!(async move {
                hop(5).await;
                request()
            }));
            let blocking = tokio::task::spawn_blocking(bind!(move || request()));
            let thread = std::thread::spawn(bind!(move || request()));
            (annotated, block, blocking, thread)
        }));
    }
    assert_eq!(request(), None);
    for (n, (annotated, block, blocking, thread)) in tasks.into_iter().enumerate() {
        let expected = Some(format!("req-{n}"));
        let (seen, step, me, trigger) = annotated.await.unwrap();
        assert_eq!((seen, step as usize), (expected.clone(), n));
        assert_ne!(me, trigger);
        // Created by the test's task, which runs outside any resource.
        assert_eq!(trigger, AsyncId::ROOT);
        assert_eq!(block.await.unwrap(), expected);
        assert_eq!(blocking.await.unwrap(), expected);
        assert_eq!(thread.join().unwrap(), expected);
    }
}

#[test]
fn tokio_spawn_counts_exactly_one_resource_per_call() {
    let _serial = serial();
    multi_thread().block_on(tokio_spawn_counts_exactly_one_resource_per_call_async());
}

async fn tokio_spawn_counts_exactly_one_resource_per_call_async() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let (init, destroy) = (events.clone(), events.clone());
    let hook = create_hook(
        Hooks::new()
            .init(move |id, ty, _, _| {
                if ty == "Handler" {
                    init.lock().unwrap().push(format!("init {id}"))
                }
            })
            .destroy(move |id| destroy.lock().unwrap().push(format!("destroy {id}"))),
    )
    .enable();
    let (_, _, id, _) = REQUEST
        .run("one".to_string(), || tokio::spawn(handler(1)))
        .await
        .unwrap();
    hook.disable();
    let events = events.lock().unwrap().clone();
    assert_eq!(events, [format!("init {id}"), format!("destroy {id}")]);
}

#[test]
fn tokio_current_thread_interleaves_requests() {
    let _serial = serial();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(tokio_current_thread_interleaves_requests_async());
}

async fn tokio_current_thread_interleaves_requests_async() {
    let a = REQUEST.run("a".to_string(), || tokio::spawn(handler(1)));
    let b = REQUEST.run("b".to_string(), || tokio::spawn(handler(2)));
    assert_eq!(b.await.unwrap().0.as_deref(), Some("b"));
    assert_eq!(a.await.unwrap().0.as_deref(), Some("a"));
}

#[async_resource]
async fn portable(n: u32) -> (Option<String>, u32) {
    yield_times(3).await;
    (request(), n)
}

#[test]
fn smol_spawn_and_unblock_keep_the_store() {
    let _serial = serial();
    smol::block_on(async {
        let (annotated, block, blocking) = REQUEST.run("smol".to_string(), || {
            (
                smol::spawn(portable(1)),
                smol::spawn(bind!(async move {
                    yield_times(2).await;
                    request()
                })),
                smol::unblock(bind!(move || request())),
            )
        });
        assert_eq!(request(), None);
        assert_eq!(annotated.await, (Some("smol".to_string()), 1));
        assert_eq!(block.await, Some("smol".to_string()));
        assert_eq!(blocking.await, Some("smol".to_string()));
    });
}

#[test]
fn futures_executor_block_on_and_local_pool() {
    use futures::task::LocalSpawnExt;

    let _serial = serial();
    let (fut, block) = REQUEST.run("futures".to_string(), || {
        (
            portable(2),
            bind!(async {
                yield_times(1).await;
                request()
            }),
        )
    });
    assert_eq!(
        futures::executor::block_on(fut),
        (Some("futures".to_string()), 2)
    );

    let mut pool = futures::executor::LocalPool::new();
    let results = Arc::new(Mutex::new(Vec::new()));
    for name in ["x", "y"] {
        let results = results.clone();
        let task = REQUEST.run(name.to_string(), || {
            bind!(async move {
                yield_times(2).await;
                results.lock().unwrap().push(request());
            })
        });
        pool.spawner().spawn_local(task).unwrap();
    }
    pool.spawner()
        .spawn_local(async move { assert_eq!(block.await, Some("futures".to_string())) })
        .unwrap();
    pool.run();
    assert_eq!(
        *results.lock().unwrap(),
        [Some("x".to_string()), Some("y".to_string())]
    );
}

#[test]
fn rayon_spawn_and_par_iter_run_bound_closures_in_the_request() {
    use rayon::prelude::*;

    let _serial = serial();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    // `par_iter().map(…)` needs a `Fn + Send + Sync` closure: a bound closure is one when the
    // closure it binds is.
    let (tagged, id) = REQUEST.run("rayon".to_string(), || {
        let tag = bind!(|x: u32| (x * 2, request(), execution_async_id()));
        let results: Vec<_> = pool.install(|| (1..=8).into_par_iter().map(&tag).collect());
        let id = tag(0).2;
        (results, id)
    });
    assert_ne!(id, AsyncId::ROOT);
    for (i, (doubled, seen, execution)) in tagged.into_iter().enumerate() {
        assert_eq!(doubled, (i as u32 + 1) * 2);
        assert_eq!(seen.as_deref(), Some("rayon"));
        assert_eq!(execution, id);
    }

    let (sender, receiver) = std::sync::mpsc::channel();
    REQUEST.run("spawned".to_string(), || {
        let sender = sender.clone();
        pool.spawn(bind!(move || sender.send(request()).unwrap()));
    });
    assert_eq!(receiver.recv().unwrap().as_deref(), Some("spawned"));
    assert_eq!(request(), None);
}
