// `embed_migrations!` reads ../migrations at compile time; cargo does not notice a new
// migration folder unless told to watch the directory.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
