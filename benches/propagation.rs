//! The propagation kit against the raw call it wraps and against binding by hand with `bind!`:
//! tokio's `spawn`, `spawn_blocking`, `spawn_local` and `JoinSet::spawn`, `std::thread::spawn`,
//! and rayon's `spawn`, `join`, `scope` and a parallel iterator. Every row runs inside
//! `REQUEST.run(7, …)`, so the bound rows capture one store; no hook is enabled.
//!
//! `cargo bench --bench propagation`

use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_hooks::rayon::ParallelIteratorExt;
use async_hooks::tokio::JoinSetExt;
use async_hooks::{AsyncLocalStorage, bind};
use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use rayon::prelude::*;
use tokio::task::{JoinSet, LocalSet};

static REQUEST: AsyncLocalStorage<u64> = AsyncLocalStorage::new();

fn read() -> u64 {
    REQUEST.get_store().map_or(0, |r| *r)
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(30);
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Times `iters` rounds of `round` in one `block_on`, each round inside `REQUEST.run`.
fn on_runtime<F>(rt: &tokio::runtime::Runtime, iters: u64, round: F) -> Duration
where
    F: Fn() -> tokio::task::JoinHandle<u64>,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(REQUEST.run(7, &round).await.unwrap());
        }
        start.elapsed()
    })
}

fn tokio_spawns(c: &mut Criterion) {
    let rt = current_thread();
    let mut group = c.benchmark_group("tokio::spawn + await (current-thread)");
    configure(&mut group);
    group.bench_function("raw tokio::spawn", |b| {
        b.iter_custom(|n| on_runtime(&rt, n, || tokio::spawn(async { read() })))
    });
    group.bench_function("tokio::spawn(bind!(..))", |b| {
        b.iter_custom(|n| on_runtime(&rt, n, || tokio::spawn(bind!(async { read() }))))
    });
    group.bench_function("async_hooks::tokio::spawn", |b| {
        b.iter_custom(|n| on_runtime(&rt, n, || async_hooks::tokio::spawn(async { read() })))
    });
    group.finish();

    let mut group = c.benchmark_group("spawn_blocking + await");
    configure(&mut group);
    group.bench_function("raw spawn_blocking", |b| {
        b.iter_custom(|n| on_runtime(&rt, n, || tokio::task::spawn_blocking(read)))
    });
    group.bench_function("spawn_blocking(bind!(..))", |b| {
        b.iter_custom(|n| on_runtime(&rt, n, || tokio::task::spawn_blocking(bind!(|| read()))))
    });
    group.bench_function("async_hooks::tokio::spawn_blocking", |b| {
        b.iter_custom(|n| on_runtime(&rt, n, || async_hooks::tokio::spawn_blocking(read)))
    });
    group.finish();

    let local = LocalSet::new();
    let mut group = c.benchmark_group("spawn_local + await (LocalSet)");
    configure(&mut group);
    let in_local = |n: u64, round: &dyn Fn() -> tokio::task::JoinHandle<u64>| {
        local.block_on(&rt, async {
            let start = Instant::now();
            for _ in 0..n {
                black_box(REQUEST.run(7, round).await.unwrap());
            }
            start.elapsed()
        })
    };
    group.bench_function("raw spawn_local", |b| {
        b.iter_custom(|n| in_local(n, &|| tokio::task::spawn_local(async { read() })))
    });
    group.bench_function("spawn_local(bind!(..))", |b| {
        b.iter_custom(|n| in_local(n, &|| tokio::task::spawn_local(bind!(async { read() }))))
    });
    group.bench_function("async_hooks::tokio::spawn_local", |b| {
        b.iter_custom(|n| in_local(n, &|| async_hooks::tokio::spawn_local(async { read() })))
    });
    group.finish();

    let mut group = c.benchmark_group("JoinSet: 100 spawns + join_all");
    configure(&mut group);
    let join_set = |n: u64, spawn: &dyn Fn(&mut JoinSet<u64>)| {
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..n {
                let mut set = JoinSet::new();
                REQUEST.run(7, || {
                    for _ in 0..100 {
                        spawn(&mut set);
                    }
                });
                black_box(set.join_all().await);
            }
            start.elapsed()
        })
    };
    group.bench_function("raw JoinSet::spawn", |b| {
        b.iter_custom(|n| {
            join_set(n, &|set| {
                set.spawn(async { read() });
            })
        })
    });
    group.bench_function("JoinSet::spawn(bind!(..))", |b| {
        b.iter_custom(|n| {
            join_set(n, &|set| {
                set.spawn(bind!(async { read() }));
            })
        })
    });
    group.bench_function("JoinSetExt::spawn_bound", |b| {
        b.iter_custom(|n| {
            join_set(n, &|set| {
                set.spawn_bound(async { read() });
            })
        })
    });
    group.finish();
}

fn threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("std::thread::spawn + join");
    configure(&mut group);
    REQUEST.run(7, || {
        group.bench_function("raw std::thread::spawn", |b| {
            b.iter(|| std::thread::spawn(read).join().unwrap())
        });
        group.bench_function("std::thread::spawn(bind!(..))", |b| {
            b.iter(|| std::thread::spawn(bind!(|| read())).join().unwrap())
        });
        group.bench_function("async_hooks::thread::spawn", |b| {
            b.iter(|| async_hooks::thread::spawn(read).join().unwrap())
        });
    });
    group.finish();
}

fn rayon_helpers(c: &mut Criterion) {
    let mut group = c.benchmark_group("rayon::spawn + recv");
    configure(&mut group);
    let (tx, rx) = mpsc::channel::<u64>();
    REQUEST.run(7, || {
        group.bench_function("raw rayon::spawn", |b| {
            b.iter(|| {
                let tx = tx.clone();
                rayon::spawn(move || tx.send(read()).unwrap());
                rx.recv().unwrap()
            })
        });
        group.bench_function("rayon::spawn(bind!(..))", |b| {
            b.iter(|| {
                let tx = tx.clone();
                rayon::spawn(bind!(move || tx.send(read()).unwrap()));
                rx.recv().unwrap()
            })
        });
        group.bench_function("async_hooks::rayon::spawn", |b| {
            b.iter(|| {
                let tx = tx.clone();
                async_hooks::rayon::spawn(move || tx.send(read()).unwrap());
                rx.recv().unwrap()
            })
        });
    });
    group.finish();

    let mut group = c.benchmark_group("rayon::join (from a pool thread)");
    configure(&mut group);
    // Timed on a pool thread, as nested joins run: the per-join cost, not the injection.
    let in_pool = |n: u64, join: &(dyn Fn() -> (u64, u64) + Sync)| {
        rayon::scope(|_| {
            REQUEST.run(7, || {
                let start = Instant::now();
                for _ in 0..n {
                    black_box(join());
                }
                start.elapsed()
            })
        })
    };
    group.bench_function("raw rayon::join", |b| {
        b.iter_custom(|n| in_pool(n, &|| rayon::join(read, read)))
    });
    group.bench_function("rayon::join(bind!(..), bind!(..))", |b| {
        b.iter_custom(|n| in_pool(n, &|| rayon::join(bind!(|| read()), bind!(|| read()))))
    });
    group.bench_function("async_hooks::rayon::join", |b| {
        b.iter_custom(|n| in_pool(n, &|| async_hooks::rayon::join(read, read)))
    });
    group.finish();

    let mut group = c.benchmark_group("rayon::scope with 4 spawns");
    configure(&mut group);
    REQUEST.run(7, || {
        group.bench_function("raw rayon::scope", |b| {
            b.iter(|| {
                rayon::scope(|s| {
                    for _ in 0..4 {
                        s.spawn(|_| {
                            black_box(read());
                        });
                    }
                })
            })
        });
        group.bench_function("rayon::scope(bind!(..)), spawn(bind!(..))", |b| {
            b.iter(|| {
                rayon::scope(bind!(|s: &rayon::Scope<'_>| {
                    for _ in 0..4 {
                        s.spawn(bind!(|_: &rayon::Scope<'_>| {
                            black_box(read());
                        }));
                    }
                }))
            })
        });
        group.bench_function("async_hooks::rayon::scope", |b| {
            b.iter(|| {
                async_hooks::rayon::scope(|s| {
                    for _ in 0..4 {
                        s.spawn(|_| {
                            black_box(read());
                        });
                    }
                })
            })
        });
    });
    group.finish();

    let mut group = c.benchmark_group("par_iter: 10 000 items map + sum");
    configure(&mut group);
    REQUEST.run(7, || {
        group.bench_function("raw", |b| {
            b.iter(|| {
                (0..10_000u64)
                    .into_par_iter()
                    .map(|x| x + read())
                    .sum::<u64>()
            })
        });
        group.bench_function("map(bind!(..)) (a scope per item)", |b| {
            b.iter(|| {
                (0..10_000u64)
                    .into_par_iter()
                    .map(bind!(|x| x + read()))
                    .sum::<u64>()
            })
        });
        group.bench_function("bind_context() (a scope per chunk)", |b| {
            b.iter(|| {
                (0..10_000u64)
                    .into_par_iter()
                    .bind_context()
                    .map(|x| x + read())
                    .sum::<u64>()
            })
        });
    });
    group.finish();
}

criterion_group!(benches, tokio_spawns, threads, rayon_helpers);
criterion_main!(benches);
