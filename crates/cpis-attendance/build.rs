//! Rebuilds the crate when a migration file is added (refinery embeds `migrations/` at build time).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
