#![deny(warnings)]

use async_hooks::async_resource;

struct Parser<'s> {
    text: &'s str,
}

impl<'s> Parser<'s> {
    #[async_resource]
    async fn word(&self, index: usize) -> &'s str {
        self.text.split(' ').nth(index).unwrap_or_default()
    }

    #[async_resource]
    async fn longest<'o>(&self, other: &'o str) -> usize {
        self.text.len().max(other.len())
    }
}

#[async_resource]
async fn first<'a>(a: &'a str, _b: &str, _c: &mut Vec<u8>) -> &'a str {
    a
}

#[async_resource]
async fn with_placeholder(parser: &Parser<'_>) -> usize {
    parser.text.len()
}

fn main() {
    use futures::executor::block_on;
    let text = String::from("a bc");
    let p = Parser { text: &text };
    assert_eq!(block_on(p.word(1)), "bc");
    assert_eq!(block_on(p.longest("xyzzy")), 5);
    assert_eq!(block_on(first("x", "y", &mut Vec::new())), "x");
    assert_eq!(block_on(with_placeholder(&p)), 4);
}
