//! The compile cache: native code on disk, so trusted only when the broker can tell it
//! wrote it.
//!
//! A cached artifact is machine code that wasmtime maps and runs outside the Wasm
//! sandbox, so a file planted in the cache would run with the broker's rights. Hence:
//!
//! - the directory is the broker's own: not a symlink, owned by the broker's user, not
//!   writable by group or others (created 0700); otherwise the cache is refused (logged)
//!   and plugins are compiled without it;
//! - every entry is `tag ‖ artifact`, the tag an HMAC-SHA256 over the entry's name (the
//!   module's sha256 and the engine's compatibility hash) and the artifact, with a key
//!   kept outside the cache directory (`<cache_dir>.key`, 0600, made at first use). An
//!   entry whose tag does not verify is never deserialized: it is counted
//!   (`hookwire_plugin_cache_rejected_total{reason}`), logged, recompiled and replaced;
//! - entries are opened with `O_NOFOLLOW` and written through a fresh, randomly named
//!   `O_EXCL` temporary file that is then renamed over the entry.
//!
//! When the key file cannot be used (its directory is refused, it is not a 0600 regular
//! file of the broker's user), a key is drawn for this process only: entries then verify
//! only within the process that wrote them, so every restart recompiles (slower starts,
//! never unsafe).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of the tag in front of every entry.
const TAG_LEN: usize = 32;
/// Domain separation for the tag.
const TAG_CONTEXT: &[u8] = b"hookwire plugin compile cache v1\0";

/// Why a cache entry was not used (the `reason` label: a closed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// No tag (an artifact in the old, untagged format, or a truncated file).
    Untagged,
    /// The tag does not match the entry's name and contents.
    BadTag,
    /// Not a regular file (a symlink, a directory, …) or unreadable.
    NotAFile,
    /// The tag verified but wasmtime refused the artifact.
    Incompatible,
}

impl Rejected {
    pub fn label(self) -> &'static str {
        match self {
            Self::Untagged => "untagged",
            Self::BadTag => "bad_tag",
            Self::NotAFile => "not_a_file",
            Self::Incompatible => "incompatible",
        }
    }
}

/// A usable cache directory and the key its entries are tagged with.
pub struct CompileCache {
    dir: PathBuf,
    key: [u8; 32],
}

impl CompileCache {
    /// Opens (creating it 0700 if missing) the cache at `dir`; `None`, logged, when the
    /// directory is not safe to hold native code.
    pub fn open(dir: &Path) -> Option<Self> {
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "Cannot create the plugin cache directory; compiling without a cache");
            return None;
        }
        if let Err(why) = check_private_dir(dir) {
            tracing::warn!(dir = %dir.display(), why, "Refusing the plugin cache directory; compiling without a cache");
            return None;
        }
        Some(Self {
            dir: dir.to_path_buf(),
            key: load_or_make_key(&key_path(dir)),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The artifact stored under `name`, when its tag verifies. `Ok(None)`: no entry.
    pub fn load(&self, name: &str) -> Result<Option<Vec<u8>>, Rejected> {
        check_private_dir(&self.dir).map_err(|_| Rejected::NotAFile)?;
        let path = self.dir.join(name);
        let mut file = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(_) => return Err(Rejected::NotAFile),
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(Rejected::NotAFile);
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|_| Rejected::NotAFile)?;
        if bytes.len() < TAG_LEN || bytes.starts_with(b"\x7fELF") {
            return Err(Rejected::Untagged);
        }
        let artifact = bytes.split_off(TAG_LEN);
        self.mac(name, &artifact)
            .verify_slice(&bytes)
            .map_err(|_| Rejected::BadTag)?;
        Ok(Some(artifact))
    }

    /// Stores `artifact` under `name` (tagged), replacing what was there.
    pub fn store(&self, name: &str, artifact: &[u8]) -> std::io::Result<()> {
        check_private_dir(&self.dir).map_err(std::io::Error::other)?;
        let tag = self.mac(name, artifact).finalize().into_bytes();
        // Random name, created with O_EXCL and 0600; renamed over the entry (a rename
        // replaces a symlink there rather than following it).
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.dir)?;
        tmp.write_all(&tag)?;
        tmp.write_all(artifact)?;
        tmp.as_file().sync_data()?;
        tmp.persist(self.dir.join(name)).map_err(|e| e.error)?;
        Ok(())
    }

    fn mac(&self, name: &str, artifact: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(TAG_CONTEXT);
        mac.update(name.as_bytes());
        mac.update(b"\0");
        mac.update(artifact);
        mac
    }
}

/// Where the key of the cache at `dir` lives: beside it, not inside it.
pub fn key_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".key");
    dir.with_file_name(name)
}

/// The default cache directory: `$XDG_CACHE_HOME/hookwire/plugins`, else
/// `$HOME/.cache/hookwire/plugins`; `None` when neither is set.
pub fn default_dir() -> Option<PathBuf> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    std::env::var_os("XDG_CACHE_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".cache"))
        })
        .map(|base| base.join("hookwire").join("plugins"))
}

/// Refuses a directory someone else could write into: a symlink, not a directory, not
/// owned by this process's user, or writable by group or others.
pub fn check_private_dir(dir: &Path) -> Result<(), &'static str> {
    let meta = std::fs::symlink_metadata(dir).map_err(|_| "it cannot be read")?;
    if meta.file_type().is_symlink() {
        return Err("it is a symlink");
    }
    if !meta.is_dir() {
        return Err("it is not a directory");
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err("it is not owned by the broker's user");
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err("it is writable by group or others (chmod go-w)");
    }
    Ok(())
}

fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// The persistent key at `path` (made 0600 at first use), or a key for this process only
/// when that file cannot be trusted or made.
fn load_or_make_key(path: &Path) -> [u8; 32] {
    match persistent_key(path) {
        Ok(key) => key,
        Err(why) => {
            tracing::warn!(key = %path.display(), why = %why, "Cannot use the plugin cache key file; using a key for this process only (cached plugins are recompiled after a restart)");
            let mut key = [0u8; 32];
            rand::Rng::fill(&mut rand::rng(), &mut key[..]);
            key
        }
    }
}

fn persistent_key(path: &Path) -> Result<[u8; 32], String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let meta = std::fs::symlink_metadata(parent).map_err(|e| e.to_string())?;
        // A directory others may write into is acceptable only with the sticky bit (they
        // then cannot replace the broker's file), as in /tmp.
        if meta.permissions().mode() & 0o1022 == 0o022 {
            return Err(format!("{} is writable by others", parent.display()));
        }
    }
    let mut key = [0u8; 32];
    match open_nofollow(path) {
        Ok(mut file) => {
            let meta = file.metadata().map_err(|e| e.to_string())?;
            if !meta.is_file()
                || meta.uid() != rustix::process::geteuid().as_raw()
                || meta.permissions().mode() & 0o077 != 0
                || meta.len() != key.len() as u64
            {
                return Err("not a 32-byte 0600 file of the broker's user".into());
            }
            file.read_exact(&mut key).map_err(|e| e.to_string())?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            rand::Rng::fill(&mut rand::rng(), &mut key[..]);
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(path)
                .map_err(|e| e.to_string())?;
            file.write_all(&key).map_err(|e| e.to_string())?;
            file.sync_all().map_err(|e| e.to_string())?;
            Ok(key)
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_in(root: &Path) -> (PathBuf, CompileCache) {
        let dir = root.join("cache");
        let cache = CompileCache::open(&dir).expect("a fresh directory is accepted");
        (dir, cache)
    }

    #[test]
    fn entries_round_trip_and_the_key_lives_beside_the_cache() {
        let root = tempfile::tempdir().unwrap();
        let (dir, cache) = cache_in(root.path());
        assert_eq!(cache.load("a.cwasm"), Ok(None));
        cache.store("a.cwasm", b"native code").unwrap();
        assert_eq!(cache.load("a.cwasm"), Ok(Some(b"native code".to_vec())));
        let key = key_path(&dir);
        assert_eq!(key, root.path().join("cache.key"));
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // Another process reads the same key: the entry still verifies.
        let again = CompileCache::open(&dir).unwrap();
        assert_eq!(again.load("a.cwasm"), Ok(Some(b"native code".to_vec())));
        // Nothing but the entry is left in the directory (no temporary files).
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.cwasm"]);
    }

    #[test]
    fn a_planted_moved_or_untagged_entry_is_rejected() {
        let root = tempfile::tempdir().unwrap();
        let (dir, cache) = cache_in(root.path());
        cache.store("x.cwasm", b"plugin x").unwrap();
        // A valid entry copied under another name: the tag covers the name.
        std::fs::copy(dir.join("x.cwasm"), dir.join("y.cwasm")).unwrap();
        assert_eq!(cache.load("y.cwasm"), Err(Rejected::BadTag));
        // Changed contents.
        let mut bytes = std::fs::read(dir.join("x.cwasm")).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(dir.join("x.cwasm"), &bytes).unwrap();
        assert_eq!(cache.load("x.cwasm"), Err(Rejected::BadTag));
        // A raw artifact, as the old cache wrote them.
        std::fs::write(dir.join("z.cwasm"), b"\x7fELF and the rest of an artifact").unwrap();
        assert_eq!(cache.load("z.cwasm"), Err(Rejected::Untagged));
        // Another key (another broker's cache) does not verify either.
        let other = CompileCache {
            dir: dir.clone(),
            key: [7; 32],
        };
        other.store("w.cwasm", b"plugin w").unwrap();
        assert_eq!(cache.load("w.cwasm"), Err(Rejected::BadTag));
        // Storing replaces the rejected entry with one that verifies.
        cache.store("y.cwasm", b"plugin y").unwrap();
        assert_eq!(cache.load("y.cwasm"), Ok(Some(b"plugin y".to_vec())));
    }

    #[test]
    fn a_symlinked_entry_is_not_followed_and_is_replaced_not_written_through() {
        let root = tempfile::tempdir().unwrap();
        let (dir, cache) = cache_in(root.path());
        let target = root.path().join("elsewhere");
        std::fs::write(&target, b"not the broker's").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("s.cwasm")).unwrap();
        assert_eq!(cache.load("s.cwasm"), Err(Rejected::NotAFile));
        cache.store("s.cwasm", b"plugin s").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"not the broker's");
        let meta = std::fs::symlink_metadata(dir.join("s.cwasm")).unwrap();
        assert!(meta.is_file());
        assert_eq!(cache.load("s.cwasm"), Ok(Some(b"plugin s".to_vec())));
    }

    #[test]
    fn an_unsafe_cache_directory_is_refused() {
        let root = tempfile::tempdir().unwrap();
        // Group- or other-writable.
        for mode in [0o770, 0o702, 0o777] {
            let dir = root.path().join(format!("open-{mode:o}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(CompileCache::open(&dir).is_none(), "{mode:o}");
        }
        // A symlink to a directory the broker owns.
        let real = root.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(CompileCache::open(&link).is_none());
        assert_eq!(check_private_dir(&link), Err("it is a symlink"));
        // Not a directory.
        let file = root.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(CompileCache::open(&file).is_none());
        // Owned by someone else (only root can arrange that).
        let theirs = root.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        if std::os::unix::fs::chown(&theirs, Some(65_534), Some(65_534)).is_ok() {
            assert_eq!(
                check_private_dir(&theirs),
                Err("it is not owned by the broker's user")
            );
            assert!(CompileCache::open(&theirs).is_none());
        }
        // The cache becoming unsafe after it was opened: entries are no longer read.
        let (dir, cache) = cache_in(root.path());
        cache.store("a.cwasm", b"x").unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(cache.load("a.cwasm"), Err(Rejected::NotAFile));
        assert!(cache.store("a.cwasm", b"y").is_err());
    }

    #[test]
    fn a_key_file_others_could_read_or_that_is_a_symlink_is_not_used() {
        let root = tempfile::tempdir().unwrap();
        let key = root.path().join("k.key");
        std::fs::write(&key, [1u8; 32]).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(persistent_key(&key).is_err());
        let link = root.path().join("l.key");
        std::os::unix::fs::symlink(&key, &link).unwrap();
        assert!(persistent_key(&link).is_err());
        let fresh = root.path().join("f.key");
        let made = persistent_key(&fresh).unwrap();
        assert_eq!(persistent_key(&fresh).unwrap(), made);
    }
}
