//! `plugin_answer`: see `hookwire::fuzzing::plugin_answer` for the input format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hookwire::fuzzing::plugin_answer(data));
