//! `config`: see `hookwire::fuzzing::config` for the input format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hookwire::fuzzing::config(data));
