//! A message of any topic (ferry::fuzzing::message).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry::fuzzing::message(data));
