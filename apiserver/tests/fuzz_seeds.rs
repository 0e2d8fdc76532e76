//! Replays the checked-in seeds of every cargo-fuzz target in `apiserver/fuzz/` through the
//! target's function ([`apiserver::fuzz`]) on stable Rust, so CI catches a target that no
//! longer compiles or fails on its own seeds, and a target added without seeds (or seeds
//! without a target).

use std::path::{Path, PathBuf};

/// A target's function.
type Target = fn(&[u8]);

/// Every target, by name, with its function.
const TARGETS: &[(&str, Target)] = &[
    ("object", apiserver::fuzz::object),
    ("patch", apiserver::fuzz::patch),
    ("selector", apiserver::fuzz::selector),
    ("query", apiserver::fuzz::query),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn names(dir: &Path, strip: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(strip).map(str::to_string))
        .collect();
    v.sort();
    v
}

#[test]
fn every_target_has_seeds_and_a_function() {
    let mut want: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    want.sort();
    assert_eq!(names(&fuzz_dir().join("fuzz_targets"), ".rs"), want);
    assert_eq!(names(&fuzz_dir().join("seeds"), ""), want);
}

#[test]
fn every_seed_passes_its_target() {
    for (name, run) in TARGETS {
        let dir = fuzz_dir().join("seeds").join(name);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let out = std::panic::catch_unwind(|| run(&data));
            assert!(
                out.is_ok(),
                "{name}: seed {} fails its target",
                path.display()
            );
            n += 1;
        }
        assert!(n >= 5, "{name}: only {n} seeds in {}", dir.display());
    }
}
