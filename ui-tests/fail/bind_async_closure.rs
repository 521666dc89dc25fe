use async_hooks::bind;

fn main() {
    let _ = bind!(async move |x: u32| x + 1);
}
