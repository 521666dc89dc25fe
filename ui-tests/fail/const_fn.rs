use async_hooks::async_resource;

#[async_resource]
const fn answer() -> u32 {
    42
}

fn main() {
    let _ = answer();
}
