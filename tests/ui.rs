//! Compile-pass and compile-fail cases for `#[async_resource]` and `bind!`, with the exact
//! compiler output expected for each misuse (`TRYBUILD=overwrite` regenerates the `.stderr`).

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("ui-tests/pass/*.rs");
    cases.compile_fail("ui-tests/fail/*.rs");
}
