//! Async id allocation and the root context.

use std::collections::HashSet;

use async_hooks::{
    AsyncId, AsyncResource, execution_async_id, execution_async_resource, trigger_async_id,
};

#[test]
fn ids_are_unique_across_threads_and_increase_on_each() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 100_000;
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            std::thread::spawn(|| {
                let ids: Vec<AsyncId> = (0..PER_THREAD)
                    .map(|_| AsyncResource::new("Id").async_id())
                    .collect();
                assert!(
                    ids.windows(2).all(|w| w[0] < w[1]),
                    "ids must increase on a thread"
                );
                ids
            })
        })
        .collect();
    let mut all = HashSet::new();
    for handle in handles {
        for id in handle.join().unwrap() {
            assert!(id.as_u64() >= 2, "allocated ids start at 2");
            assert!(all.insert(id), "id {id} allocated twice");
        }
    }
    assert_eq!(all.len(), THREADS * PER_THREAD);
}

#[test]
fn the_root_context_is_the_same_on_every_thread() {
    assert_eq!(execution_async_id(), AsyncId::ROOT);
    assert_eq!(trigger_async_id(), AsyncId::NONE);
    let root = execution_async_resource();
    assert_eq!(root.async_id(), AsyncId::ROOT);
    assert_eq!(root.trigger_async_id(), AsyncId::NONE);
    assert_eq!(root.type_name(), "ROOT");
    let other = std::thread::spawn(execution_async_resource).join().unwrap();
    assert_eq!(root, other, "the root resource is one handle process-wide");
}

#[test]
fn async_id_constants_and_formatting() {
    assert_eq!(AsyncId::NONE.as_u64(), 0);
    assert_eq!(AsyncId::ROOT.as_u64(), 1);
    assert_eq!(AsyncId::from_u64(42).to_string(), "42");
    assert_eq!(format!("{:?}", AsyncId::from_u64(42)), "AsyncId(42)");
    assert!(AsyncId::NONE < AsyncId::ROOT);
}

#[test]
fn providers_list_every_type_with_a_stable_id() {
    let _a = AsyncResource::new("ProviderA");
    let _b = AsyncResource::new("ProviderB");
    let first = async_hooks::async_wrap_providers();
    let _a2 = AsyncResource::new("ProviderA");
    let second = async_hooks::async_wrap_providers();
    assert!(first["ProviderA"] > 0 && first["ProviderB"] > 0);
    assert_ne!(first["ProviderA"], first["ProviderB"]);
    assert_eq!(first["ProviderA"], second["ProviderA"]);
}

#[test]
fn public_handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<async_hooks::AsyncResource>();
    send_sync::<async_hooks::Resource>();
    send_sync::<async_hooks::AsyncHook>();
    send_sync::<async_hooks::AsyncLocalStorage<String>>();
    send_sync::<async_hooks::Snapshot>();
    send_sync::<async_hooks::Error>();
    fn send<T: Send>(_: &T) {}
    send(&async_hooks::BindContext::bind_context(async { 1 }));
}
