use async_hooks::async_resource;

#[async_resource]
async fn total(items: &[u32]) -> u32 {
    let sum: u64 = items.iter().map(|&i| u64::from(i)).sum();
    sum
}

fn main() {
    let _ = total(&[1]);
}
