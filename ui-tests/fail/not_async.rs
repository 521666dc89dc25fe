use async_hooks::async_resource;

#[async_resource]
fn load(id: u32) -> u32 {
    id
}

fn main() {
    let _ = load(1);
}
