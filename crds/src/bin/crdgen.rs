//! Writes `crds/yaml/*.yaml` from the Rust types.

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("yaml");
    std::fs::create_dir_all(&dir)?;
    for (name, yaml) in crds::crdgen::render_all() {
        let path = dir.join(&name);
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
