//! Writes `crds/yaml/*.yaml` from the Rust types.

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("yaml");
    std::fs::create_dir_all(&dir)?;
    for (name, yaml) in crds::crdgen::render_all() {
        let path = dir.join(&name);
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    let roles = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(crds::rbac::ACTOR_ROLES_PATH);
    if let Some(parent) = roles.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&roles, crds::rbac::render_actor_roles())?;
    println!("wrote {}", roles.display());
    Ok(())
}
