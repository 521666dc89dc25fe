use async_hooks::async_resource;

#[async_resource]
extern "C" fn callback(code: i32) -> i32 {
    code
}

fn main() {
    let _ = callback(1);
}
