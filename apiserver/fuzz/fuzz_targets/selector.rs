//! Label and field selectors: a byte picking the resource, then the selector text.
//! See `apiserver::fuzz::selector` for the input layout and what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| apiserver::fuzz::selector(data));
