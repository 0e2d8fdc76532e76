//! Writes `crds/yaml/*.yaml` from the Rust types, their kustomize copy in `config/crd/` (with
//! its `kustomization.yaml`), and `config/rbac/substrate-actor-roles.yaml`.

use std::path::Path;

fn write(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn main() -> std::io::Result<()> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = crate_dir.join("..");
    let kustomize = workspace.join(crds::crdgen::KUSTOMIZE_DIR);
    for (name, yaml) in crds::crdgen::render_all() {
        write(&crate_dir.join("yaml").join(&name), &yaml)?;
        write(&kustomize.join(&name), &yaml)?;
    }
    write(
        &kustomize.join("kustomization.yaml"),
        &crds::crdgen::render_kustomization(),
    )?;
    write(
        &workspace.join(crds::rbac::ACTOR_ROLES_PATH),
        &crds::rbac::render_actor_roles(),
    )?;
    Ok(())
}
