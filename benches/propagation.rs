//! The propagation kit against the raw call it wraps and against binding by hand with `bind!`:
//! tokio's `spawn`, `spawn_blocking`, `spawn_local` and `JoinSet::spawn`, `std::thread::spawn`,
//! and rayon's `spawn`, `join`, `scope` and a parallel iterator. Every row runs inside
//! `REQUEST.run(7, …)`, so the bound rows capture one store; no hook is enabled.
//!
//! `cargo bench --bench propagation` (criterion, one row after the other), or
//! `PROPAGATION_ROUNDS=21 cargo bench --bench propagation` for alternating rounds: each round
//! times a batch of every variant of a case in turn and takes the ratios within the round, then
//! the median ratio over the rounds is printed. On a loaded machine the ratios of alternating
//! rounds are the ones to trust.

use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_hooks::rayon::ParallelIteratorExt;
use async_hooks::tokio::JoinSetExt;
use async_hooks::{AsyncLocalStorage, bind};
use criterion::Criterion;
use rayon::prelude::*;
use tokio::runtime::Runtime;
use tokio::task::{JoinHandle, JoinSet, LocalSet};

static REQUEST: AsyncLocalStorage<u64> = AsyncLocalStorage::new();

fn read() -> u64 {
    REQUEST.get_store().map_or(0, |r| *r)
}

/// Times `n` operations.
type Batch<'a> = Box<dyn Fn(u64) -> Duration + 'a>;

/// One operation three ways: raw, bound by hand with `bind!`, and with the kit.
struct Case<'a> {
    name: &'static str,
    /// Operations per batch in the alternating rounds (a few milliseconds' worth).
    batch: u64,
    variants: [(&'static str, Batch<'a>); 3],
}

/// Times `n` rounds of `round` in one `block_on`, each round inside `REQUEST.run`.
fn on_runtime<'a>(rt: &'a Runtime, round: impl Fn() -> JoinHandle<u64> + 'a) -> Batch<'a> {
    Box::new(move |n| {
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..n {
                black_box(REQUEST.run(7, &round).await.unwrap());
            }
            start.elapsed()
        })
    })
}

fn in_local<'a>(
    rt: &'a Runtime,
    local: &'a LocalSet,
    round: impl Fn() -> JoinHandle<u64> + 'a,
) -> Batch<'a> {
    Box::new(move |n| {
        local.block_on(rt, async {
            let start = Instant::now();
            for _ in 0..n {
                black_box(REQUEST.run(7, &round).await.unwrap());
            }
            start.elapsed()
        })
    })
}

/// `n` times: 100 spawns into a `JoinSet`, then `join_all`.
fn join_set<'a>(rt: &'a Runtime, spawn: impl Fn(&mut JoinSet<u64>) + 'a) -> Batch<'a> {
    Box::new(move |n| {
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
    })
}

/// `n` calls of `f` inside `REQUEST.run`, on this thread.
fn plain<'a, R>(f: impl Fn() -> R + 'a) -> Batch<'a> {
    Box::new(move |n| {
        REQUEST.run(7, || {
            let start = Instant::now();
            for _ in 0..n {
                black_box(f());
            }
            start.elapsed()
        })
    })
}

/// `n` calls of `f` inside `REQUEST.run`, on a pool thread (as nested joins run).
fn in_pool<'a>(f: impl Fn() -> (u64, u64) + Sync + 'a) -> Batch<'a> {
    Box::new(move |n| {
        rayon::scope(|_| {
            REQUEST.run(7, || {
                let start = Instant::now();
                for _ in 0..n {
                    black_box(f());
                }
                start.elapsed()
            })
        })
    })
}

fn scope_of_4(s: &rayon::Scope<'_>) {
    for _ in 0..4 {
        s.spawn(|_| {
            black_box(read());
        });
    }
}

fn cases<'a>(
    rt: &'a Runtime,
    local: &'a LocalSet,
    channel: &'a (mpsc::Sender<u64>, mpsc::Receiver<u64>),
) -> Vec<Case<'a>> {
    let (tx, rx) = channel;
    vec![
        Case {
            name: "tokio::spawn + await (current-thread)",
            batch: 5000,
            variants: [
                ("raw", on_runtime(rt, || tokio::spawn(async { read() }))),
                (
                    "bind!",
                    on_runtime(rt, || tokio::spawn(bind!(async { read() }))),
                ),
                (
                    "kit",
                    on_runtime(rt, || async_hooks::tokio::spawn(async { read() })),
                ),
            ],
        },
        Case {
            name: "spawn_blocking + await",
            batch: 300,
            variants: [
                ("raw", on_runtime(rt, || tokio::task::spawn_blocking(read))),
                (
                    "bind!",
                    on_runtime(rt, || tokio::task::spawn_blocking(bind!(|| read()))),
                ),
                (
                    "kit",
                    on_runtime(rt, || async_hooks::tokio::spawn_blocking(read)),
                ),
            ],
        },
        Case {
            name: "spawn_local + await (LocalSet)",
            batch: 5000,
            variants: [
                (
                    "raw",
                    in_local(rt, local, || tokio::task::spawn_local(async { read() })),
                ),
                (
                    "bind!",
                    in_local(rt, local, || {
                        tokio::task::spawn_local(bind!(async { read() }))
                    }),
                ),
                (
                    "kit",
                    in_local(rt, local, || {
                        async_hooks::tokio::spawn_local(async { read() })
                    }),
                ),
            ],
        },
        Case {
            name: "JoinSet: 100 spawns + join_all",
            batch: 50,
            variants: [
                (
                    "raw",
                    join_set(rt, |set| {
                        set.spawn(async { read() });
                    }),
                ),
                (
                    "bind!",
                    join_set(rt, |set| {
                        set.spawn(bind!(async { read() }));
                    }),
                ),
                (
                    "kit",
                    join_set(rt, |set| {
                        set.spawn_bound(async { read() });
                    }),
                ),
            ],
        },
        Case {
            name: "std::thread::spawn + join",
            batch: 100,
            variants: [
                (
                    "raw",
                    plain(|| black_box(std::thread::spawn(read).join().unwrap())),
                ),
                (
                    "bind!",
                    plain(|| black_box(std::thread::spawn(bind!(|| read())).join().unwrap())),
                ),
                (
                    "kit",
                    plain(|| black_box(async_hooks::thread::spawn(read).join().unwrap())),
                ),
            ],
        },
        Case {
            name: "rayon::spawn + recv",
            batch: 500,
            variants: [
                (
                    "raw",
                    plain(move || {
                        let tx = tx.clone();
                        rayon::spawn(move || tx.send(read()).unwrap());
                        black_box(rx.recv().unwrap());
                    }),
                ),
                (
                    "bind!",
                    plain(move || {
                        let tx = tx.clone();
                        rayon::spawn(bind!(move || tx.send(read()).unwrap()));
                        black_box(rx.recv().unwrap());
                    }),
                ),
                (
                    "kit",
                    plain(move || {
                        let tx = tx.clone();
                        async_hooks::rayon::spawn(move || tx.send(read()).unwrap());
                        black_box(rx.recv().unwrap());
                    }),
                ),
            ],
        },
        Case {
            name: "rayon::join (on a pool thread)",
            batch: 20_000,
            variants: [
                ("raw", in_pool(|| rayon::join(read, read))),
                (
                    "bind!",
                    in_pool(|| rayon::join(bind!(|| read()), bind!(|| read()))),
                ),
                ("kit", in_pool(|| async_hooks::rayon::join(read, read))),
            ],
        },
        Case {
            name: "rayon::scope with 4 spawns",
            batch: 500,
            variants: [
                ("raw", plain(|| rayon::scope(scope_of_4))),
                (
                    "bind!",
                    plain(|| {
                        rayon::scope(bind!(|s: &rayon::Scope<'_>| {
                            for _ in 0..4 {
                                s.spawn(bind!(|_: &rayon::Scope<'_>| {
                                    black_box(read());
                                }));
                            }
                        }))
                    }),
                ),
                (
                    "kit",
                    plain(|| {
                        async_hooks::rayon::scope(|s| {
                            for _ in 0..4 {
                                s.spawn(|_| {
                                    black_box(read());
                                });
                            }
                        })
                    }),
                ),
            ],
        },
        Case {
            name: "par_iter: 10 000 items map + sum",
            batch: 30,
            variants: [
                (
                    "raw",
                    plain(|| {
                        black_box(
                            (0..10_000u64)
                                .into_par_iter()
                                .map(|x| x + read())
                                .sum::<u64>(),
                        );
                    }),
                ),
                (
                    "bind! per item",
                    plain(|| {
                        black_box(
                            (0..10_000u64)
                                .into_par_iter()
                                .map(bind!(|x| x + read()))
                                .sum::<u64>(),
                        );
                    }),
                ),
                (
                    "kit bind_context",
                    plain(|| {
                        black_box(
                            (0..10_000u64)
                                .into_par_iter()
                                .bind_context()
                                .map(|x| x + read())
                                .sum::<u64>(),
                        );
                    }),
                ),
            ],
        },
    ]
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Alternating rounds: per round, one batch of each variant (the order rotates), then the
/// ratios within the round; prints the medians.
fn alternating(cases: &[Case<'_>], rounds: usize) {
    println!("| case | raw | bind!/raw | kit/raw | kit/bind! (min–max) |");
    println!("|---|---|---|---|---|");
    for case in cases {
        let mut per_op = [Vec::new(), Vec::new(), Vec::new()];
        for variant in &case.variants {
            (variant.1)(case.batch / 10 + 1); // warm-up
        }
        for round in 0..rounds {
            for k in 0..3 {
                let v = (round + k) % 3;
                let t = (case.variants[v].1)(case.batch);
                per_op[v].push(t.as_nanos() as f64 / case.batch as f64);
            }
        }
        let ratio = |a: usize, b: usize| -> Vec<f64> {
            (0..rounds).map(|r| per_op[a][r] / per_op[b][r]).collect()
        };
        let kit_hand = ratio(2, 1);
        let (lo, hi) = kit_hand
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        println!(
            "| {} | {:.0} ns | {:.2}× | {:.2}× | {:.2}× ({lo:.2}–{hi:.2}) |",
            case.name,
            median(per_op[0].clone()),
            median(ratio(1, 0)),
            median(ratio(2, 0)),
            median(kit_hand),
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let local = LocalSet::new();
    let channel = mpsc::channel();
    let cases = cases(&rt, &local, &channel);
    if let Some(rounds) = std::env::var("PROPAGATION_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
    {
        return alternating(&cases, rounds);
    }
    let mut c = Criterion::default().configure_from_args();
    for case in &cases {
        let mut group = c.benchmark_group(case.name);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));
        group.sample_size(30);
        for (name, batch) in &case.variants {
            group.bench_function(*name, |b| b.iter_custom(batch));
        }
        group.finish();
    }
    c.final_summary();
}
