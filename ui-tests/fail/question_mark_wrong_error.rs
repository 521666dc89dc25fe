use async_hooks::async_resource;

#[derive(Debug)]
struct MyError;

#[async_resource]
async fn parse(text: &str) -> Result<u32, MyError> {
    let n: u32 = text.parse()?;
    Ok(n)
}

fn main() {
    let _ = parse("1");
}
