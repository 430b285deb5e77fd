//! An S3 event notification message (ferry::fuzzing::s3_event).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry::fuzzing::s3_event(data));
