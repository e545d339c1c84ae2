//! An allow-everything plugin whose module is about 2 MB, to time hot reload of a
//! large module. The bulk is a blob made by `build.rs`; each publication reads one
//! byte of it through `black_box`, so the optimiser cannot drop it.

use std::hint::black_box;

use hookwire_plugin::prelude::*;

static BLOB: &[u8; 2_000_000] = include_bytes!(concat!(env!("OUT_DIR"), "/blob.bin"));

pub struct Big {
    calls: usize,
}

impl Plugin for Big {
    const NAME: &str = "big";
    const VERSION: &str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::PUBLISH;

    fn init(_config: Value) -> Result<Self, String> {
        Ok(Self { calls: 0 })
    }

    fn on_publish(&mut self, _publication: &mut Publication) -> Decision {
        self.calls += 1;
        black_box(BLOB[black_box(self.calls) % BLOB.len()]);
        Decision::Allow
    }
}

export!(Big);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_everything_without_edits() {
        let mut plugin = Big::init(json!({})).unwrap();
        let mut publication = Publication::new("chat:lobby", json!({"text": "hi"}));
        assert_eq!(plugin.on_publish(&mut publication), Decision::Allow);
        assert!(publication.edits().is_empty() && !publication.payload_read());
    }
}
