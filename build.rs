//! Rebuilds when a migration is added: `sqlx::migrate!` embeds the migrations at compile
//! time but does not tell cargo to watch the directory.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
