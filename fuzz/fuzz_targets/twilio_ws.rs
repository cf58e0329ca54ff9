#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callbox::fuzzing::twilio_frame(data));
