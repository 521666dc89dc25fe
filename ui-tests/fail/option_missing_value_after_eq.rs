use async_hooks::bind;

fn main() {
    let _ = bind!(crate = , move || 1);
}
