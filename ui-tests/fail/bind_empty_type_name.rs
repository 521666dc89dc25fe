use async_hooks::bind;

fn main() {
    let _ = bind!(type = "", async move { 1 });
}
