//! `task!` expands to exports with exactly the ABI's signatures. (What they do is tested in
//! `src/`; that a built module passes the ABI check is `cargo xtask modules`' job.)

use serde::Deserialize;

#[derive(Deserialize)]
struct Halve {
    n: u32,
}

fn halve(input: Halve) -> Result<u32, String> {
    if input.n.is_multiple_of(2) {
        Ok(input.n / 2)
    } else {
        Err(format!("{} is odd", input.n))
    }
}

grid_sdk::task!(fallible halve);

#[test]
fn the_exports_have_the_abi_signatures() {
    let alloc: extern "C" fn(i32) -> i32 = grid_alloc;
    let run: extern "C" fn(i32, i32) -> i64 = grid_run;
    // Only their types are checked here: natively an address does not fit the ABI's i32.
    let _ = (alloc, run);
    assert_eq!(
        grid_sdk::answer_fallible(br#"{"n":7}"#, halve),
        br#"{"error":"7 is odd"}"#
    );
}
