use async_hooks::bind;

fn main() {
    let name = String::from("once");
    let f = bind!(move || name);
    let _ = f();
    let _ = f();
}
