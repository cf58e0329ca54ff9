#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callbox::fuzzing::webhook(data));
