//! Create and update bodies: JSON and YAML objects, then the typed decoding and validation of an actor.
//! See `apiserver::fuzz::object` for the input layout and what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| apiserver::fuzz::object(data));
