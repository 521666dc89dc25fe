use async_hooks::bind;

fn main() {
    let _ = bind!(type = "Listener",);
}
