//! An fs location's sidecar metadata file (ferry::fuzzing::sidecar).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry::fuzzing::sidecar(data));
