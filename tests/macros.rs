//! `#[async_resource]` and `bind!`: exact hook event sequences, ids, storage and the shapes of
//! fns the attribute rewrites.

use std::fmt::{Debug, Display};
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use async_hooks::{
    AsyncId, AsyncLocalStorage, AsyncResource, async_resource, bind, execution_async_id,
    execution_async_resource, trigger_async_id,
};
use futures::executor::block_on;

mod support;
use support::futures::{PendingN, poll_once};
use support::{Log, record, serial};

// ---------------------------------------------------------------------------------------------
// Helpers

static REQUEST: AsyncLocalStorage<u32> = AsyncLocalStorage::new();

fn request() -> Option<u32> {
    REQUEST.get_store().map(|r| *r)
}

// ---------------------------------------------------------------------------------------------
// #[async_resource]: lifecycle

#[async_resource]
async fn doubled_after_two_pendings(v: u32) -> u32 {
    PendingN(2).await;
    v * 2
}

#[test]
fn init_at_the_call_then_before_after_per_poll_resolve_once_destroy_once() {
    let _serial = serial();
    let log = Log::default();
    let _hook = record(&log);
    let caller = execution_async_id();

    let mut fut = Box::pin(doubled_after_two_pendings(21));
    let id = log.only_init();
    assert_ne!(id, caller);
    // `init` fired at the call, before any poll, triggered by the caller.
    assert_eq!(
        log.take(),
        [format!(
            "init doubled_after_two_pendings({id}) trigger={caller}"
        )]
    );

    assert_eq!(poll_once(fut.as_mut()), Poll::Pending);
    assert_eq!(log.take(), [format!("before {id}"), format!("after {id}")]);
    assert_eq!(poll_once(fut.as_mut()), Poll::Pending);
    assert_eq!(log.take(), [format!("before {id}"), format!("after {id}")]);
    assert_eq!(poll_once(fut.as_mut()), Poll::Ready(42));
    assert_eq!(
        log.take(),
        [
            format!("before {id}"),
            format!("resolve {id}"),
            format!("after {id}")
        ]
    );
    drop(fut);
    assert_eq!(log.take(), [format!("destroy {id}")]);
    assert_eq!(log.take_inits(), []);
}

#[test]
fn destroy_once_when_dropped_pending_or_never_polled() {
    let _serial = serial();
    let log = Log::default();
    let _hook = record(&log);
    let caller = execution_async_id();

    // Dropped while pending.
    let mut fut = Box::pin(doubled_after_two_pendings(1));
    let id = log.only_init();
    assert_eq!(poll_once(fut.as_mut()), Poll::Pending);
    drop(fut);
    assert_eq!(
        log.take(),
        [
            format!("init doubled_after_two_pendings({id}) trigger={caller}"),
            format!("before {id}"),
            format!("after {id}"),
            format!("destroy {id}"),
        ]
    );

    // Never polled.
    let fut = doubled_after_two_pendings(2);
    let id = log.only_init();
    drop(fut);
    assert_eq!(
        log.take(),
        [
            format!("init doubled_after_two_pendings({id}) trigger={caller}"),
            format!("destroy {id}"),
        ]
    );
}

#[async_resource(type = "Inner")]
async fn inner() -> (AsyncId, AsyncId, &'static str) {
    PendingN(2).await;
    (
        execution_async_id(),
        trigger_async_id(),
        execution_async_resource().type_name(),
    )
}

#[async_resource(type = "Outer")]
async fn outer() -> [(AsyncId, AsyncId, &'static str); 2] {
    let me = (
        execution_async_id(),
        trigger_async_id(),
        execution_async_resource().type_name(),
    );
    [me, inner().await]
}

#[test]
fn nested_calls_form_the_trigger_chain() {
    let _serial = serial();
    let log = Log::default();
    let _hook = record(&log);

    let request = AsyncResource::new("Request");
    let r = request.async_id();
    let fut = request.run_in_async_scope(outer);
    let [_, o] = log.take_inits()[..] else {
        panic!("expected two inits")
    };
    let [me, child] = block_on(fut);
    let i = log.take_inits()[0];
    assert_eq!(me, (o, r, "Outer"));
    assert_eq!(child, (i, o, "Inner"));
    assert_eq!(
        log.take(),
        [
            format!("init Request({r}) trigger=1"),
            format!("before {r}"),
            format!("init Outer({o}) trigger={r}"),
            format!("after {r}"),
            // block_on: the first poll of Outer creates and polls Inner (pending twice).
            format!("before {o}"),
            format!("init Inner({i}) trigger={o}"),
            format!("before {i}"),
            format!("after {i}"),
            format!("after {o}"),
            format!("before {o}"),
            format!("before {i}"),
            format!("after {i}"),
            format!("after {o}"),
            format!("before {o}"),
            format!("before {i}"),
            format!("resolve {i}"),
            format!("after {i}"),
            format!("destroy {i}"),
            format!("resolve {o}"),
            format!("after {o}"),
            format!("destroy {o}"),
        ]
    );
}

#[async_resource]
async fn request_seen_inside() -> (Option<u32>, Option<u32>) {
    let first = request();
    PendingN(2).await;
    (first, request())
}

#[test]
fn storage_captured_at_the_call_is_seen_when_polled_elsewhere() {
    let _serial = serial();
    let fut = REQUEST.run(7, request_seen_inside);
    assert_eq!(request(), None);
    let seen = std::thread::spawn(move || block_on(fut)).join().unwrap();
    assert_eq!(seen, (Some(7), Some(7)));

    // A future made outside any `run` sees no store even if polled inside one.
    let fut = request_seen_inside();
    assert_eq!(REQUEST.run(9, || block_on(fut)), (None, None));
}

// ---------------------------------------------------------------------------------------------
// #[async_resource]: the shapes it rewrites

struct Account {
    balance: u32,
}

impl Account {
    #[async_resource(type = "Account::balance")]
    async fn balance(&self) -> (u32, &'static str) {
        PendingN(2).await;
        (self.balance, execution_async_resource().type_name())
    }

    /// `&mut self` with a borrowed argument whose lifetime is elided.
    #[async_resource]
    async fn deposit(&mut self, amount: &u32) -> u32 {
        PendingN(2).await;
        self.balance += *amount;
        self.balance
    }

    #[async_resource]
    async fn close(self) -> u32 {
        self.balance
    }

    #[async_resource]
    async fn shared(self: Arc<Self>, extra: u32) -> u32 {
        self.balance + extra
    }

    /// Returns a borrow of `self`, elided.
    #[async_resource]
    async fn label(&self, prefix: &str) -> &Self {
        let _ = prefix;
        self
    }
}

trait Db {
    async fn query(&self, sql: &str) -> Result<String, String>;
    fn ping(&self) -> impl Future<Output = &'static str> + Send;
}

struct Sqlite;

impl Db for Sqlite {
    #[async_resource(type = "DBQuery")]
    async fn query(&self, sql: &str) -> Result<String, String> {
        if sql.is_empty() {
            return Err("empty query".to_string());
        }
        Ok(format!("{} {sql}", execution_async_resource().type_name()))
    }

    #[async_resource]
    async fn ping(&self) -> &'static str {
        execution_async_resource().type_name()
    }
}

async fn query_any<D: Db>(db: &D, sql: &str) -> Result<String, String> {
    db.query(sql).await
}

#[test]
fn methods_with_every_receiver_and_trait_impls() {
    let _serial = serial();
    let mut account = Account { balance: 1 };
    assert_eq!(block_on(account.deposit(&4)), 5);
    assert_eq!(block_on(account.balance()), (5, "Account::balance"));
    assert_eq!(block_on(account.label("x")).balance, 5);
    assert_eq!(block_on(Arc::new(Account { balance: 2 }).shared(1)), 3);
    assert_eq!(block_on(account.close()), 5);

    assert_eq!(
        block_on(query_any(&Sqlite, "SELECT 1")),
        Ok("DBQuery SELECT 1".to_string())
    );
    assert_eq!(block_on(Sqlite.query("")), Err("empty query".to_string()));
    assert_eq!(block_on(Sqlite.ping()), "ping");
}

#[async_resource]
async fn sum_parts<'a, I>(parts: I, sep: &str) -> Result<i64, std::num::ParseIntError>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut total = 0;
    for part in parts {
        if part == sep {
            return Ok(-1);
        }
        total += part.trim().parse::<i64>()?;
    }
    Ok(total)
}

#[async_resource]
async fn describe(x: impl Display, y: &impl Debug, z: &(impl Display + ?Sized)) -> String {
    format!("{x} {y:?} {z}")
}

#[async_resource]
async fn patterns((a, b): (u32, u32), _: u32, mut c: u32, [d, ..]: [u32; 2]) -> u32 {
    c += 1;
    a + b + c + d
}

#[async_resource]
async fn generic_max<T: PartialOrd + Copy, const N: usize>(items: [T; N]) -> Option<T> {
    let mut best: Option<T> = None;
    for item in items {
        if best.is_none_or(|b| item > b) {
            best = Some(item);
        }
    }
    best
}

#[test]
fn generics_lifetimes_impl_trait_patterns_return_and_question_mark() {
    let _serial = serial();
    let text = String::from("1 2 3");
    let sep = String::from("|");
    assert_eq!(block_on(sum_parts(text.split(' '), &sep)), Ok(6));
    assert_eq!(block_on(sum_parts(["1", "|", "x"], "|")), Ok(-1));
    assert_eq!(
        block_on(sum_parts(["1", "x"], "|"))
            .unwrap_err()
            .to_string(),
        "invalid digit found in string"
    );
    assert_eq!(block_on(describe(1, &"two", "three")), "1 \"two\" three");
    assert_eq!(block_on(patterns((1, 2), 100, 3, [10, 20])), 17);
    assert_eq!(block_on(generic_max([3, 9, 4])), Some(9));
    assert_eq!(block_on(generic_max::<u8, 0>([])), None);
}

/// The future is `Send` when the body is, so it can be spawned on any executor.
#[test]
fn the_future_is_send_when_the_body_is() {
    fn assert_send<T: Send>(t: T) -> T {
        t
    }
    let _serial = serial();
    let account = Account { balance: 3 };
    assert_eq!(block_on(assert_send(account.balance())).0, 3);
    assert_eq!(
        block_on(assert_send(describe(1, &2, "3"))),
        "1 2 3".to_string()
    );
}

mod reexport {
    pub use async_hooks as hooks;
}

#[async_resource(crate = crate::reexport::hooks, type = "Renamed")]
async fn through_reexport() -> &'static str {
    execution_async_resource().type_name()
}

#[async_resource(type = "r#raw")]
async fn r#async() -> &'static str {
    execution_async_resource().type_name()
}

#[async_resource]
async fn r#match() -> &'static str {
    execution_async_resource().type_name()
}

#[test]
fn options_and_raw_identifiers() {
    let _serial = serial();
    assert_eq!(block_on(through_reexport()), "Renamed");
    assert_eq!(block_on(r#async()), "r#raw");
    // The default type name is the function's name without `r#`.
    assert_eq!(block_on(r#match()), "match");
}

/// Logs its name when dropped.
struct Noisy(&'static str, Log);

impl Drop for Noisy {
    fn drop(&mut self) {
        self.1.push(format!("drop {}", self.0));
    }
}

async fn plain(a: Noisy, _b: Noisy, _: Noisy, (d, _e): (Noisy, Noisy), log: Log) {
    let _local = Noisy("local", log.clone());
    let _ = (&a, &d);
    log.push("body".to_string());
}

#[async_resource]
async fn annotated(a: Noisy, _b: Noisy, _: Noisy, (d, _e): (Noisy, Noisy), log: Log) {
    let _local = Noisy("local", log.clone());
    let _ = (&a, &d);
    log.push("body".to_string());
}

impl Noisy {
    async fn plain_consume(self, other: Noisy) {
        self.1.push("body".to_string());
        let _ = other;
    }

    #[async_resource]
    async fn annotated_consume(self, other: Noisy) {
        self.1.push("body".to_string());
        let _ = other;
    }
}

fn noisy_args(log: &Log) -> (Noisy, Noisy, Noisy, (Noisy, Noisy), Log) {
    (
        Noisy("a", log.clone()),
        Noisy("b", log.clone()),
        Noisy("c", log.clone()),
        (Noisy("d", log.clone()), Noisy("e", log.clone())),
        log.clone(),
    )
}

#[test]
fn arguments_move_into_the_future_and_drop_in_async_fn_order() {
    let _serial = serial();
    let log = Log::default();

    let (a, b, c, de, l) = noisy_args(&log);
    let fut = plain(a, b, c, de, l);
    assert_eq!(log.take(), Vec::<String>::new());
    block_on(fut);
    let plain_order = log.take();
    assert_eq!(
        plain_order,
        [
            "body",
            "drop local",
            "drop e",
            "drop d",
            "drop c",
            "drop b",
            "drop a"
        ]
    );

    let (a, b, c, de, l) = noisy_args(&log);
    let fut = annotated(a, b, c, de, l);
    // Nothing is dropped at the call, not even the unused `_` argument.
    assert_eq!(log.take(), Vec::<String>::new());
    block_on(fut);
    assert_eq!(log.take(), plain_order);

    // Never polled: the arguments drop with the future, in the same order as `async fn`.
    let (a, b, c, de, l) = noisy_args(&log);
    drop(plain(a, b, c, de, l));
    let plain_unpolled = log.take();
    assert_eq!(plain_unpolled.len(), 5);
    let (a, b, c, de, l) = noisy_args(&log);
    drop(annotated(a, b, c, de, l));
    assert_eq!(log.take(), plain_unpolled);

    // `self` by value.
    block_on(Noisy("self", log.clone()).plain_consume(Noisy("other", log.clone())));
    let plain_self = log.take();
    block_on(Noisy("self", log.clone()).annotated_consume(Noisy("other", log.clone())));
    assert_eq!(log.take(), plain_self);
}

// ---------------------------------------------------------------------------------------------
// bind!

#[test]
fn bound_closure_with_no_arguments_runs_in_the_captured_context() {
    let _serial = serial();
    let log = Log::default();
    let _hook = record(&log);
    let caller = execution_async_id();

    let f = REQUEST.run(3, || {
        bind!(|| (request(), execution_async_id(), trigger_async_id()))
    });
    let id = log.only_init();
    assert_eq!(
        log.take(),
        [format!("init bound-anonymous-fn({id}) trigger={caller}")]
    );
    assert_eq!(request(), None);
    assert_eq!(f(), (Some(3), id, caller));
    assert_eq!(f(), (Some(3), id, caller));
    assert_eq!(
        log.take(),
        [
            format!("before {id}"),
            format!("after {id}"),
            format!("before {id}"),
            format!("after {id}")
        ]
    );
    drop(f);
    assert_eq!(log.take(), [format!("destroy {id}")]);
}

#[test]
fn bound_closure_with_one_argument_and_a_type_name() {
    let _serial = serial();
    let log = Log::default();
    let _hook = record(&log);

    let listener = REQUEST.run(4, || {
        bind!(type = "Listener", move |x: u32| {
            (x + request().unwrap(), execution_async_resource().type_name())
        })
    });
    let id = log.only_init();
    assert_eq!(listener(10), (14, "Listener"));
    drop(listener);
    assert_eq!(
        log.take(),
        [
            format!("init Listener({id}) trigger=1"),
            format!("before {id}"),
            format!("after {id}"),
            format!("destroy {id}"),
        ]
    );
}

#[test]
fn bound_closure_with_three_arguments_one_inferred() {
    let _serial = serial();
    let log = Log::default();
    let _hook = record(&log);

    let resource = AsyncResource::new("Request");
    let r = resource.async_id();
    let f = resource.run_in_async_scope(|| {
        REQUEST.run(5, || {
            bind!(|a: u32, b: &str, c| (a, b.to_string(), c, request(), trigger_async_id()))
        })
    });
    let [_, id] = log.take_inits()[..] else {
        panic!("expected two inits")
    };
    let owned = String::from("bee");
    assert_eq!(f(1, &owned, 'c'), (1, "bee".to_string(), 'c', Some(5), r));
    drop(f);
    drop(resource);
    assert_eq!(
        log.take(),
        [
            format!("init Request({r}) trigger=1"),
            format!("before {r}"),
            format!("init bound-anonymous-fn({id}) trigger={r}"),
            format!("after {r}"),
            format!("before {id}"),
            format!("after {id}"),
            format!("destroy {id}"),
            format!("destroy {r}"),
        ]
    );
}

#[test]
fn bound_closures_keep_fn_fnmut_and_fnonce_and_their_captures() {
    fn call_fn_twice(f: impl Fn(u32) -> u32) -> [u32; 2] {
        [f(1), f(2)]
    }
    fn call_fnmut(mut f: impl FnMut(u32)) {
        f(2);
        f(3);
    }
    fn call_once(f: impl FnOnce() -> String) -> String {
        f()
    }
    let _serial = serial();
    let log = Log::default();
    let _hook = record(&log);

    // Fn, borrowing its environment (not `move`).
    let offset = 10;
    assert_eq!(call_fn_twice(bind!(|x| x + offset)), [11, 12]);
    let id = log.only_init();
    assert_eq!(
        log.take(),
        [
            format!("init bound-anonymous-fn({id}) trigger=1"),
            format!("before {id}"),
            format!("after {id}"),
            format!("before {id}"),
            format!("after {id}"),
            format!("destroy {id}"),
        ]
    );

    // FnMut, not `move`: it mutates the caller's variable, which is usable afterwards.
    let mut count = 0;
    call_fnmut(bind!(|by: u32| count += by));
    assert_eq!(count, 5);
    let id = log.only_init();
    assert_eq!(
        log.take().len(),
        6,
        "init, 2 × before/after, destroy of {id}"
    );

    // A `move` closure over a Copy value keeps its own copy, as without bind!.
    let mut copied = 0;
    let mut bump = bind!(move || {
        copied += 1;
        copied
    });
    assert_eq!((bump(), bump()), (1, 2));
    drop(bump);
    assert_eq!(copied, 0);
    log.take_inits();
    log.take();

    // FnOnce: consumes what it captured; `destroy` fires when the call consumed the closure.
    let name = String::from("once");
    let once = REQUEST.run(6, || bind!(move || format!("{name} {:?}", request())));
    let id = log.only_init();
    assert_eq!(call_once(once), "once Some(6)");
    assert_eq!(
        log.take(),
        [
            format!("init bound-anonymous-fn({id}) trigger=1"),
            format!("before {id}"),
            format!("after {id}"),
            format!("destroy {id}"),
        ]
    );
}

#[test]
fn bound_async_blocks_are_resources_created_at_bind() {
    let _serial = serial();
    let log = Log::default();
    let _hook = record(&log);

    let borrowed = String::from("borrowed");
    let fut = REQUEST.run(8, || {
        bind!(async {
            PendingN(2).await;
            (request(), borrowed.len(), execution_async_id())
        })
    });
    let id = log.only_init();
    let moved = REQUEST.run(9, || {
        bind!(type = "Job", async move {
            (request(), execution_async_resource().type_name())
        })
    });
    let job = log.only_init();
    assert_eq!(block_on(moved), (Some(9), "Job"));
    assert_eq!(block_on(fut), (Some(8), 8, id));
    assert_eq!(
        log.take(),
        [
            format!("init bound-anonymous-fn({id}) trigger=1"),
            format!("init Job({job}) trigger=1"),
            format!("before {job}"),
            format!("resolve {job}"),
            format!("after {job}"),
            format!("destroy {job}"),
            format!("before {id}"),
            format!("after {id}"),
            format!("before {id}"),
            format!("after {id}"),
            format!("before {id}"),
            format!("resolve {id}"),
            format!("after {id}"),
            format!("destroy {id}"),
        ]
    );
}
