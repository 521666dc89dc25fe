// `async_hooks::tokio::spawn` has `tokio::spawn`'s bounds: the future must be `Send`. A future
// that keeps an `Rc` across an `.await` belongs on `async_hooks::tokio::spawn_local`.
use std::rc::Rc;

#[tokio::main]
async fn main() {
    let _ = async_hooks::tokio::spawn(async {
        let shared = Rc::new(5);
        tokio::task::yield_now().await;
        *shared
    })
    .await;
}
