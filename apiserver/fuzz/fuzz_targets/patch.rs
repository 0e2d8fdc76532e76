//! PATCH bodies: a type byte (JSON patch, merge patch, strategic merge, apply), then the patch, applied to a sample actor.
//! See `apiserver::fuzz::patch` for the input layout and what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| apiserver::fuzz::patch(data));
