#![deny(warnings)]

use async_hooks::async_resource;

#[async_resource]
async fn parse(text: &str) -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
    if text.is_empty() {
        return Ok(0);
    }
    let n: u32 = text.trim().parse()?;
    if n > 100 {
        return Err("too big".into());
    }
    Ok(n)
}

#[async_resource]
async fn first_even(items: Vec<u32>) -> Option<u32> {
    for i in items {
        if i % 2 == 0 {
            return Some(i);
        }
    }
    None
}

fn main() {
    use futures::executor::block_on;
    assert_eq!(block_on(parse("")).unwrap(), 0);
    assert_eq!(block_on(parse(" 42 ")).unwrap(), 42);
    assert!(block_on(parse("x")).is_err());
    assert_eq!(block_on(parse("101")).unwrap_err().to_string(), "too big");
    assert_eq!(block_on(first_even(vec![1, 4, 6])), Some(4));
}
