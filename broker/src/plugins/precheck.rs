//! Checks a plugin file before it is compiled: that it is a WebAssembly component (not
//! a core module, not something else), and that it imports nothing the broker refuses.
//! Compiling takes hundreds of milliseconds and fails with a multi-line dump; this
//! answers in a few microseconds, with one line an operator can act on.

use super::imports::{ImportUse, import_use, refusal_reason};
use super::types::Error;

/// The first eight bytes of a component: `\0asm`, version 0x0d, layer 1.
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
/// ... and of a core module: `\0asm`, version 1.
const MODULE_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

/// The component's own imports (not its inner modules'), by name, or why it is refused.
pub fn precheck(bytes: &[u8]) -> Result<Vec<String>, Error> {
    match bytes.get(..8) {
        Some(header) if header == COMPONENT_HEADER => {}
        Some(header) if header == MODULE_HEADER => {
            return Err(Error::NotComponent(
                "it is a core WebAssembly module, not a component: build it for wasm32-wasip2 (cargo build --target wasm32-wasip2) or wrap it with `wasm-tools component new`".into(),
            ));
        }
        Some(header) if header.starts_with(&COMPONENT_HEADER[..4]) => {
            return Err(Error::NotComponent(format!(
                "a WebAssembly binary of an unknown version or layer ({:02x?}); the broker loads components (version 0x0d, layer 1)",
                &header[4..]
            )));
        }
        _ => {
            return Err(Error::NotComponent(
                "not a WebAssembly file (it does not start with \\0asm)".into(),
            ));
        }
    }
    let imports = top_level_imports(bytes)?;
    if let Some(refused) = imports.iter().find(|i| import_use(i) == ImportUse::Refused) {
        return Err(Error::Import {
            import: refused.clone(),
            why: refusal_reason(refused),
        });
    }
    Ok(imports)
}

/// The names in the outer component's import sections.
pub fn top_level_imports(bytes: &[u8]) -> Result<Vec<String>, Error> {
    let mut imports = Vec::new();
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| Error::NotComponent(one_line(&e.to_string())))?;
        match payload {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    let import =
                        import.map_err(|e| Error::NotComponent(one_line(&e.to_string())))?;
                    imports.push(import.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(imports)
}

/// An error text on one line, at most 300 bytes.
pub fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    crate::protocol::truncate_utf8(&joined, 300).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_core_modules_are_refused_in_one_line() {
        for (bytes, needle) in [
            (&b"hello, this is not wasm"[..], "not a WebAssembly file"),
            (&MODULE_HEADER[..], "core WebAssembly module"),
            (&[0, 0x61, 0x73, 0x6d, 0x0e, 0, 1, 0][..], "unknown version"),
        ] {
            let e = precheck(bytes).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn a_truncated_component_is_refused_in_one_line() {
        let mut bytes = COMPONENT_HEADER.to_vec();
        bytes.extend_from_slice(&[0x0a, 0x40, 0x01]);
        let e = precheck(&bytes).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn one_line_joins_and_cuts() {
        assert_eq!(one_line("a\n\nCaused by:\n  b"), "a Caused by: b");
        assert!(one_line(&"x ".repeat(500)).len() <= 300);
    }
}
