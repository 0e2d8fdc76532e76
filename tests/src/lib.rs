//! End-to-end tests of Substrate live in `tests/`; this library is empty on purpose (a crate
//! needs a target). Run them with `cargo test -p e2e` after `cargo build --workspace --bins`
//! (hack/test.sh does both).
