//! The seed's trace printer: every `init`, `before`, `after` and `destroy`, indented by nesting.
//!
//! Node's version writes with `fs.writeSync` because `console.log` is itself asynchronous and
//! would recurse into the hooks; here printing is synchronous, so `println!` is fine.
//!
//! Run with `cargo run --example hooks_trace`.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_hooks::{AsyncResource, BindContext, Hooks, create_hook, execution_async_id};

static INDENT: AtomicUsize = AtomicUsize::new(0);

fn pad() -> String {
    " ".repeat(INDENT.load(Ordering::Relaxed))
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

    // A server-like resource whose callback creates a request, which starts a query future.
    let server = AsyncResource::new("TCPSERVERWRAP");
    server.run_in_async_scope(|| {
        let request = AsyncResource::new("HTTPINCOMINGMESSAGE");
        request.run_in_async_scope(|| {
            let query = async {
                let timer = AsyncResource::new("Timeout");
                timer.run_in_async_scope(|| {
                    println!("{}>>> timer fired in {}", pad(), execution_async_id())
                });
            }
            .bind_context_as("DBQuery");
            futures::executor::block_on(query);
        });
    });
    drop(server);
    hook.disable();
}
