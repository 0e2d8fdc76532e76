//! Query options (list, write, delete), the request path, and a DeleteOptions body after a NUL.
//! See `apiserver::fuzz::query` for the input layout and what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| apiserver::fuzz::query(data));
