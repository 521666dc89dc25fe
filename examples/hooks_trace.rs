//! The seed's trace printer: every `init`, `before`, `after` and `destroy`, indented by nesting,
//! over nested `#[async_resource]` fns and timers on a tokio current-thread runtime.
//!
//! A `TCPSERVERWRAP` fn accepts a request (`HTTPINCOMINGMESSAGE`), which runs a `DBQuery` that
//! waits on a timer, spawns a bound task (`bind!`, a `bound-anonymous-fn` resource polled by the
//! runtime itself, at the top level) and finally waits in a `Timeout`. Each resource is created
//! at the call — `init` in the caller's context — and each poll of the nested futures shows up
//! as a nested `before`/`after` pair: when a timer fires, the runtime polls the outermost future
//! again and the poll descends through every level to the one that was waiting. `destroy`
//! comes as each future is dropped, right after it completes.
//!
//! Node's version writes with `fs.writeSync` because `console.log` is itself asynchronous and
//! would recurse into the hooks; here printing is synchronous, so `println!` is fine.
//!
//! Run with `cargo run --example hooks_trace`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_hooks::{Hooks, async_resource, bind, create_hook, execution_async_id};

static INDENT: AtomicUsize = AtomicUsize::new(0);

fn pad() -> String {
    " ".repeat(INDENT.load(Ordering::Relaxed))
}

#[async_resource(type = "TCPSERVERWRAP")]
async fn server() {
    // One incoming request; the server waits for it to finish.
    request("/users/1").await;
}

#[async_resource(type = "HTTPINCOMINGMESSAGE")]
async fn request(url: &'static str) {
    println!("{}>>> request {url} in {}", pad(), execution_async_id());
    let rows = query("SELECT * FROM users WHERE id = 1").await;
    let audit = tokio::spawn(bind!(async move {
        println!("{}>>> audit log in {}", pad(), execution_async_id());
    }));
    audit.await.expect("the audit task panicked");
    set_timeout(Duration::from_millis(2), move || {
        println!(
            "{}>>> timer fired in {}: {rows} row(s)",
            pad(),
            execution_async_id()
        );
    })
    .await;
}

#[async_resource(type = "DBQuery")]
async fn query(sql: &'static str) -> usize {
    tokio::time::sleep(Duration::from_millis(1)).await;
    println!("{}>>> query done in {}: {sql}", pad(), execution_async_id());
    1
}

/// Node's `setTimeout`: the callback runs in a `Timeout` resource created by the caller.
#[async_resource(type = "Timeout")]
async fn set_timeout(delay: Duration, callback: impl FnOnce()) {
    tokio::time::sleep(delay).await;
    callback();
}

fn main() {
    let hook = create_hook(
        Hooks::new()
            .init(|id, ty, trigger, _| {
                let execution = execution_async_id();
                println!(
                    "{}{ty}({id}): trigger: {trigger} execution: {execution}",
                    pad()
                );
            })
            .before(|id| {
                println!("{}before:  {id}", pad());
                INDENT.fetch_add(2, Ordering::Relaxed);
            })
            .after(|id| {
                INDENT.fetch_sub(2, Ordering::Relaxed);
                println!("{}after:  {id}", pad());
            })
            .destroy(|id| println!("{}destroy:  {id}", pad())),
    )
    .enable();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    runtime.block_on(server());
    hook.disable();
}
