//! Rebuild when a migration is added (`sqlx::migrate!` embeds `migrations/` at compile time)
//! or when the web build rewrites `frontend/dist` (`rust-embed` embeds it in release builds):
//! cargo does not know to look at either by itself.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
    println!("cargo:rerun-if-changed=../frontend/dist");
}
