use async_hooks::bind;

fn listener() -> impl Fn() -> usize {
    let name = String::from("not moved");
    bind!(|| name.len())
}

fn main() {
    let _ = listener();
}
