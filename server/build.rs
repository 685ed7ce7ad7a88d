//! Rebuild when a migration is added: `sqlx::migrate!` embeds `migrations/` at compile time,
//! and cargo does not know to look there by itself.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
