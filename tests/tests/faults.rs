//! The fault suite of issue 12 (see `e2e::faults`): the whole system through a seeded
//! random sequence of user operations and faults, then its invariants. The seed is printed;
//! `SUBSTRATE_FAULT_SEED=<n>` replays it, `SUBSTRATE_FAULT_STEPS=<n>` sets the length.
//! Range 10.222.0.0/16, worker indexes from 1700.

use e2e::Options;
use e2e::faults::{Params, run};

#[test]
fn the_system_keeps_its_invariants_under_random_operations_and_faults() {
    run(
        Params::from_env(),
        Options::new("e2e-faults", "10.222.0.0/16", 1700),
    );
}
