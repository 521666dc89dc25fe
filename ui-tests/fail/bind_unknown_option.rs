use async_hooks::bind;

fn main() {
    let _ = bind!(name = "Listener", move || 1);
}
