use async_hooks::bind;

async fn work() -> u32 {
    1
}

fn main() {
    let fut = work();
    let _ = bind!(fut);
}
