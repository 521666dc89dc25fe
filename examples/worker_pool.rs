//! The seed's `WorkerPool`: tasks run on OS worker threads, and each task's callback runs back
//! on the pool's dispatching thread — yet in the context of the code that submitted the task.
//!
//! Each submitted task gets a `WorkerPoolTaskInfo`, an [`AsyncResource`] created inside the
//! submitter's context. When the worker's result comes back, `done` calls the callback with
//! `run_in_async_scope` (so it sees the submitter's [`AsyncLocalStorage`] store and has the task
//! as its execution resource) and then `emit_destroy`, as the seed does: "`TaskInfo`s are used
//! only once". Without it, the callbacks would all look as if they belonged to the dispatch loop.
//!
//! Ten tasks computing `42 + 100` are submitted to a pool of four workers, task `i` inside
//! `STORE.run(i, …)`; each result is printed with the store its callback sees
//! (`task 3: 142 (store 3)`), then a hook's count of `WorkerPoolTaskInfo` inits and destroys.
//! The exit code is 1 if any callback sees another store or the counts are off.
//!
//! The pool is created inside a `STORE.run`, as a pool made lazily by the first request that
//! needs it would be. Its workers start from [`Snapshot::empty`] (with
//! [`BuilderExt::spawn_bound`]), so they neither see nor keep alive that store; a worker that
//! sees one reports an error instead of a result.
//!
//! Run with `cargo run --example worker_pool`.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;

use async_hooks::thread::BuilderExt;
use async_hooks::{
    AsyncId, AsyncLocalStorage, AsyncResource, Hooks, Snapshot, create_hook, execution_async_id,
    execution_async_resource, trigger_async_id,
};

/// The context of whoever submitted a task.
static STORE: AsyncLocalStorage<u32> = AsyncLocalStorage::new();

type Callback = Box<dyn FnOnce(Result<u64, String>) + Send>;

/// What a worker thread computes: the seed's `task_processor.js` adds two numbers.
struct Task {
    a: u64,
    b: u64,
}

/// One submitted task: an async resource created where the task was submitted.
struct WorkerPoolTaskInfo {
    resource: AsyncResource,
    callback: Callback,
}

impl WorkerPoolTaskInfo {
    fn new(callback: Callback) -> WorkerPoolTaskInfo {
        WorkerPoolTaskInfo {
            resource: AsyncResource::new("WorkerPoolTaskInfo"),
            callback,
        }
    }

    fn done(self, result: Result<u64, String>) {
        let WorkerPoolTaskInfo { resource, callback } = self;
        resource.run_in_async_scope(|| callback(result));
        // `TaskInfo`s are used only once.
        resource
            .emit_destroy()
            .expect("each WorkerPoolTaskInfo is destroyed once");
    }
}

struct Worker {
    jobs: mpsc::Sender<Task>,
    handle: thread::JoinHandle<()>,
    task_info: Option<WorkerPoolTaskInfo>,
}

/// The pool: the thread that owns it is its event loop ([`WorkerPool::run_until_idle`]).
struct WorkerPool {
    workers: Vec<Worker>,
    free_workers: Vec<usize>,
    tasks: VecDeque<(Task, WorkerPoolTaskInfo)>,
    results: mpsc::Receiver<(usize, Result<u64, String>)>,
}

impl WorkerPool {
    fn new(num_threads: usize) -> WorkerPool {
        let (results_tx, results) = mpsc::channel();
        let workers = (0..num_threads)
            .map(|index| {
                let (jobs, rx) = mpsc::channel::<Task>();
                let results_tx = results_tx.clone();
                // A worker outlives the code that creates the pool: it inherits no store.
                let handle = Snapshot::empty()
                    .run(|| {
                        thread::Builder::new()
                            .name(format!("worker-{index}"))
                            .spawn_bound(move || {
                                for Task { a, b } in rx {
                                    let result = match STORE.get_store() {
                                        Some(store) => Err(format!("worker sees store {store}")),
                                        None => a
                                            .checked_add(b)
                                            .ok_or_else(|| format!("{a} + {b} overflows")),
                                    };
                                    if results_tx.send((index, result)).is_err() {
                                        break;
                                    }
                                }
                            })
                    })
                    .expect("spawn a worker thread");
                Worker {
                    jobs,
                    handle,
                    task_info: None,
                }
            })
            .collect();
        WorkerPool {
            workers,
            free_workers: (0..num_threads).rev().collect(),
            tasks: VecDeque::new(),
            results,
        }
    }

    /// Runs `task` on a free worker, or queues it until one is free.
    ///
    /// The task's resource is created here, in the caller's context, even when the task has to
    /// wait. (The seed creates it only when the task is dispatched, which for a queued task
    /// happens in the worker's message handler: its callback would then run in that handler's
    /// context, not the submitter's.)
    fn run_task(
        &mut self,
        task: Task,
        callback: impl FnOnce(Result<u64, String>) + Send + 'static,
    ) {
        let info = WorkerPoolTaskInfo::new(Box::new(callback));
        self.dispatch(task, info);
    }

    fn dispatch(&mut self, task: Task, info: WorkerPoolTaskInfo) {
        let Some(index) = self.free_workers.pop() else {
            // No free threads: wait until a worker thread becomes free.
            self.tasks.push_back((task, info));
            return;
        };
        let worker = &mut self.workers[index];
        worker.task_info = Some(info);
        worker.jobs.send(task).expect("the worker thread is alive");
    }

    /// The event loop: delivers each result to its task's callback until no task is left.
    fn run_until_idle(&mut self) {
        while self.workers.iter().any(|w| w.task_info.is_some()) {
            let (index, result) = self.results.recv().expect("a worker result");
            let info = self.workers[index]
                .task_info
                .take()
                .expect("a result from a worker with a task");
            info.done(result);
            self.free_workers.push(index);
            // The seed's kWorkerFreedEvent: dispatch the next pending task, if any.
            if let Some((task, info)) = self.tasks.pop_front() {
                self.dispatch(task, info);
            }
        }
    }

    fn close(self) {
        for worker in self.workers {
            drop(worker.jobs);
            worker.handle.join().expect("worker thread panicked");
        }
    }
}

fn main() -> ExitCode {
    static INITS: AtomicUsize = AtomicUsize::new(0);
    static DESTROYS: AtomicUsize = AtomicUsize::new(0);
    let task_ids = std::sync::Arc::new(std::sync::Mutex::new(Vec::<AsyncId>::new()));
    let ids = task_ids.clone();
    let hook = create_hook(
        Hooks::new()
            .init(move |id, ty, _, _| {
                if ty == "WorkerPoolTaskInfo" {
                    INITS.fetch_add(1, Ordering::Relaxed);
                    ids.lock().unwrap().push(id);
                }
            })
            .destroy(move |id| {
                if task_ids.lock().unwrap().contains(&id) {
                    DESTROYS.fetch_add(1, Ordering::Relaxed);
                }
            }),
    )
    .enable();

    let mismatches = std::sync::Arc::new(AtomicUsize::new(0));
    let mut pool = STORE.run(u32::MAX, || WorkerPool::new(4));
    for i in 0..10 {
        let mismatches = mismatches.clone();
        STORE.run(i, || {
            let submitter = execution_async_id();
            pool.run_task(Task { a: 42, b: 100 }, move |result| {
                let store = STORE.get_store().map(|s| *s);
                let resource = execution_async_resource();
                match (&result, store) {
                    (Ok(value), Some(store)) => println!("task {i}: {value} (store {store})"),
                    (Ok(value), None) => println!("task {i}: {value} (no store)"),
                    (Err(err), _) => println!("task {i}: error {err}"),
                }
                let ok = result == Ok(142)
                    && store == Some(i)
                    && resource.type_name() == "WorkerPoolTaskInfo"
                    && trigger_async_id() == submitter;
                if !ok {
                    eprintln!(
                        "mismatch: task {i} ran in {}({}) triggered by {} (expected by {submitter}) with store {store:?}",
                        resource.type_name(),
                        resource.async_id(),
                        trigger_async_id(),
                    );
                    mismatches.fetch_add(1, Ordering::Relaxed);
                }
            });
        });
    }
    pool.run_until_idle();
    pool.close();
    hook.disable();

    let (inits, destroys) = (
        INITS.load(Ordering::Relaxed),
        DESTROYS.load(Ordering::Relaxed),
    );
    println!("WorkerPoolTaskInfo: {inits} init, {destroys} destroy");
    let mut mismatches = mismatches.load(Ordering::Relaxed);
    if inits != 10 || destroys != 10 {
        eprintln!("mismatch: expected 10 init and 10 destroy");
        mismatches += 1;
    }
    println!("tasks: 10, mismatches: {mismatches}");
    if mismatches == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
