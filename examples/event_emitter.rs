//! Listeners bound to the context that registered them, as in the seed's "Integrating
//! `AsyncResource` with `EventEmitter`".
//!
//! A tiny `EventEmitter` (a list of boxed listeners per event name) gets three `close`
//! listeners while a request is being handled — inside an `HTTPINCOMINGMESSAGE` resource, with
//! the storage holding `request 1`:
//!
//! - a plain closure: it runs in whatever context emits the event;
//! - a closure wrapped in `bind!` (Node's `AsyncResource.bind`): it runs in a
//!   `bound-anonymous-fn` resource triggered by the registering context, with its store;
//! - a closure that owns an `AsyncResource` and calls it with `run_in_async_scope` (what
//!   `AsyncResource.bind` does under the hood).
//!
//! The emitter then fires `close` twice from elsewhere: from a `TCPWRAP` resource holding
//! `socket 9`, and from a fresh OS thread outside every resource. Each listener prints the
//! execution id, its type, the trigger id and the store it sees; the program checks that the
//! plain listener sees the emitter's context and the bound ones the registering context, and
//! exits 1 otherwise.
//!
//! Run with `cargo run --example event_emitter`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_hooks::{
    AsyncId, AsyncLocalStorage, AsyncResource, bind, execution_async_id, execution_async_resource,
    trigger_async_id,
};

static STORE: AsyncLocalStorage<&'static str> = AsyncLocalStorage::new();

type Listener = Box<dyn Fn(&str) + Send + Sync>;

/// A minimal `EventEmitter`: `on` appends a listener, `emit` calls them in order, synchronously,
/// in the emitter's caller's context.
#[derive(Default)]
struct EventEmitter {
    listeners: Mutex<HashMap<&'static str, Vec<Listener>>>,
}

impl EventEmitter {
    fn on(&self, event: &'static str, listener: impl Fn(&str) + Send + Sync + 'static) {
        self.listeners
            .lock()
            .unwrap()
            .entry(event)
            .or_default()
            .push(Box::new(listener));
    }

    fn emit(&self, event: &'static str, arg: &str) -> usize {
        let listeners = self.listeners.lock().unwrap();
        let list = listeners.get(event).map_or(&[][..], Vec::as_slice);
        for listener in list {
            listener(arg);
        }
        list.len()
    }
}

/// What a listener saw when it ran.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    execution: AsyncId,
    type_name: &'static str,
    trigger: AsyncId,
    store: Option<&'static str>,
}

impl Seen {
    fn now() -> Seen {
        Seen {
            execution: execution_async_id(),
            type_name: execution_async_resource().type_name(),
            trigger: trigger_async_id(),
            store: STORE.get_store().map(|s| *s),
        }
    }
}

/// Prints what a listener saw and records it for the checks in `main`.
fn report(log: &Mutex<Vec<(&'static str, String, Seen)>>, listener: &'static str, from: &str) {
    let seen = Seen::now();
    println!(
        "  {listener:<9} listener: execution {} ({}), trigger {}, store {}",
        seen.execution,
        seen.type_name,
        seen.trigger,
        seen.store.unwrap_or("-"),
    );
    log.lock().unwrap().push((listener, from.to_string(), seen));
}

fn main() -> ExitCode {
    let emitter = Arc::new(EventEmitter::default());
    let log = Arc::new(Mutex::new(Vec::new()));

    // The request handler registers its listeners.
    let registering = STORE.run("request 1", || {
        let request = AsyncResource::new("HTTPINCOMINGMESSAGE");
        request.run_in_async_scope(|| {
            let registering = Seen::now();
            println!(
                "registering in {}({}), store {}",
                registering.type_name,
                registering.execution,
                registering.store.unwrap_or("-")
            );

            let l = log.clone();
            emitter.on("close", move |from: &str| report(&l, "plain", from));

            let l = log.clone();
            emitter.on("close", bind!(move |from: &str| report(&l, "bind!", from)));

            let l = log.clone();
            let resource = AsyncResource::new("CloseListener");
            emitter.on("close", move |from: &str| {
                resource.run_in_async_scope(|| report(&l, "resource", from))
            });
            registering
        })
    });

    // The socket closes: the emitter fires from the socket's context.
    let socket_context = STORE.run("socket 9", || {
        let socket = AsyncResource::new("TCPWRAP");
        socket.run_in_async_scope(|| {
            let socket_context = Seen::now();
            println!(
                "emitting from {}({}), store {}",
                socket_context.type_name,
                socket_context.execution,
                socket_context.store.unwrap_or("-")
            );
            emitter.emit("close", "socket");
            socket_context
        })
    });

    // And again from another OS thread, outside every resource.
    let thread_context = std::thread::scope(|s| {
        s.spawn(|| {
            let thread_context = Seen::now();
            println!(
                "emitting from a new thread: {}({}), store {}",
                thread_context.type_name,
                thread_context.execution,
                thread_context.store.unwrap_or("-")
            );
            emitter.emit("close", "thread");
            thread_context
        })
        .join()
        .expect("the emitting thread panicked")
    });

    let mismatches = AtomicUsize::new(0);
    let check = |ok: bool, what: String| {
        if !ok {
            eprintln!("mismatch: {what}");
            mismatches.fetch_add(1, Ordering::Relaxed);
        }
    };
    let log = log.lock().unwrap();
    check(
        log.len() == 6,
        format!("{} listener calls, expected 6", log.len()),
    );
    for (listener, from, seen) in log.iter() {
        let emitting = if from == "socket" {
            &socket_context
        } else {
            &thread_context
        };
        match *listener {
            "plain" => check(
                seen == emitting,
                format!("plain listener fired from {from} saw {seen:?}, expected {emitting:?}"),
            ),
            _ => {
                // A bound listener runs as its own resource, created (and so triggered) by
                // the registering context, with the registering context's store.
                let expected_type = if *listener == "bind!" {
                    "bound-anonymous-fn"
                } else {
                    "CloseListener"
                };
                check(
                    seen.type_name == expected_type
                        && seen.trigger == registering.execution
                        && seen.store == registering.store
                        && seen.execution != emitting.execution,
                    format!(
                        "{listener} listener fired from {from} saw {seen:?}, expected a \
                         {expected_type} triggered by {} with store {:?}",
                        registering.execution, registering.store
                    ),
                );
            }
        }
    }
    let mismatches = mismatches.into_inner();
    println!("listener calls: {}, mismatches: {mismatches}", log.len());
    if mismatches == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
