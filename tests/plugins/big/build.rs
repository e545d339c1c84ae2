//! Writes the plugin's 2 MB blob to `$OUT_DIR/blob.bin`: pseudo-random bytes, so
//! no tool can shrink them, from a fixed seed, so every build is the same.

use std::path::PathBuf;

const BLOB_LEN: usize = 2_000_000;

fn main() {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let blob: Vec<u8> = (0..BLOB_LEN)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("blob.bin"), blob).expect("OUT_DIR is writable");
    println!("cargo::rerun-if-changed=build.rs");
}
