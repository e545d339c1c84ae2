//! Revoked users: tokens of a user issued at or before a moment are refused until a
//! deadline (`POST /api/revoke`). With a data directory the list is kept in
//! `<data_dir>/revocations.json`, written atomically (a temporary file renamed over it),
//! so revocations survive a restart.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{Claims, Error};

/// One revoked user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub user: String,
    /// Tokens issued at or before this moment (Unix seconds) are refused…
    pub revoked_at: u64,
    /// …until this moment (Unix seconds).
    pub until: u64,
}

/// The file's shape.
#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    revocations: Vec<Revocation>,
}

/// Why the revocation list could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RevocationsError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
}

#[derive(Default)]
pub struct Revocations {
    /// user → (revoked at, until), Unix seconds.
    by_user: Mutex<BTreeMap<String, (u64, u64)>>,
    /// Where the list is kept (`None`: in memory only).
    file: Option<PathBuf>,
}

impl Revocations {
    /// The list kept in `data_dir` (read now if it exists), or in memory when `None`.
    pub fn open(data_dir: Option<&Path>) -> Result<Self, RevocationsError> {
        let Some(dir) = data_dir else {
            return Ok(Self::default());
        };
        let file = dir.join("revocations.json");
        let by_user = match std::fs::read(&file) {
            Ok(bytes) => {
                let parsed: File =
                    serde_json::from_slice(&bytes).map_err(|e| RevocationsError::Read {
                        path: file.clone(),
                        message: format!("not a revocation list: {e}"),
                    })?;
                parsed
                    .revocations
                    .into_iter()
                    .map(|r| (r.user, (r.revoked_at, r.until)))
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(RevocationsError::Read {
                    path: file,
                    message: e.to_string(),
                });
            }
        };
        Ok(Self {
            by_user: Mutex::new(by_user),
            file: Some(file),
        })
    }

    /// Whether revocations survive a restart.
    pub fn persistent(&self) -> bool {
        self.file.is_some()
    }

    /// Refuses `user`'s tokens issued at or before `now_s` until `until_s`, and saves the
    /// list. The revocation holds in memory even when saving fails.
    pub fn revoke(&self, user: &str, now_s: u64, until_s: u64) -> Result<(), RevocationsError> {
        let mut by_user = self.by_user.lock();
        by_user.insert(user.to_string(), (now_s, until_s));
        self.save(&by_user)
    }

    /// Lifts a user's revocation; returns whether there was one.
    pub fn lift(&self, user: &str) -> Result<bool, RevocationsError> {
        let mut by_user = self.by_user.lock();
        if by_user.remove(user).is_none() {
            return Ok(false);
        }
        self.save(&by_user).map(|()| true)
    }

    /// Every revocation in force, by user.
    pub fn list(&self) -> Vec<Revocation> {
        self.by_user
            .lock()
            .iter()
            .map(|(user, &(revoked_at, until))| Revocation {
                user: user.clone(),
                revoked_at,
                until,
            })
            .collect()
    }

    /// `Err` when the token was issued at or before a revocation still in force. A token
    /// without `iat` counts as issued before.
    pub fn check(&self, claims: &Claims, now_s: u64) -> Result<(), Error> {
        let by_user = self.by_user.lock();
        match by_user.get(&*claims.sub) {
            Some(&(revoked_at, until))
                if now_s < until && claims.iat.is_none_or(|iat| iat.get() <= revoked_at) =>
            {
                Err(Error::Revoked { revoked_at, until })
            }
            _ => Ok(()),
        }
    }

    /// Forgets revocations that ended (and saves the list when any did).
    pub fn sweep(&self, now_s: u64) -> Result<(), RevocationsError> {
        let mut by_user = self.by_user.lock();
        let before = by_user.len();
        by_user.retain(|_, (_, until)| *until > now_s);
        if by_user.len() == before {
            return Ok(());
        }
        self.save(&by_user)
    }

    /// Writes the list: a temporary file in the same directory, synced, renamed over the
    /// old one. Called with the lock held so two saves never interleave (the file is
    /// small: one line per revoked user).
    fn save(&self, by_user: &BTreeMap<String, (u64, u64)>) -> Result<(), RevocationsError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let err = |e: std::io::Error| RevocationsError::Write {
            path: path.clone(),
            message: e.to_string(),
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let file = File {
            version: 1,
            revocations: by_user
                .iter()
                .map(|(user, &(revoked_at, until))| Revocation {
                    user: user.clone(),
                    revoked_at,
                    until,
                })
                .collect(),
        };
        let text = serde_json::to_vec_pretty(&file).expect("the list serializes");
        let tmp = dir.join(format!(
            ".revocations.{}.{:x}.tmp",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(err)?;
        let written = out
            .write_all(&text)
            .and_then(|()| out.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, iat: Option<u64>) -> Claims {
        Claims {
            sub: sub.into(),
            exp: 2_000,
            iat: iat.and_then(std::num::NonZeroU64::new),
            channels: Box::default(),
            publish: None,
            info: None,
        }
    }

    #[test]
    fn survives_a_reopen_and_can_be_lifted() {
        let dir = tempfile::tempdir().unwrap();
        let r = Revocations::open(Some(dir.path())).unwrap();
        r.revoke("alice", 100, 1_000).unwrap();
        r.revoke("bob", 100, 150).unwrap();
        assert!(r.check(&claims("alice", Some(99)), 120).is_err());
        assert!(r.check(&claims("alice", None), 120).is_err());
        assert!(r.check(&claims("alice", Some(101)), 120).is_ok());

        let again = Revocations::open(Some(dir.path())).unwrap();
        assert_eq!(again.list().len(), 2);
        assert!(again.check(&claims("alice", Some(99)), 120).is_err());
        again.sweep(200).unwrap();
        assert_eq!(Revocations::open(Some(dir.path())).unwrap().list().len(), 1);
        assert!(again.lift("alice").unwrap());
        assert!(!again.lift("alice").unwrap());
        assert!(
            Revocations::open(Some(dir.path()))
                .unwrap()
                .list()
                .is_empty()
        );
    }

    #[test]
    fn a_corrupt_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("revocations.json"), "{not json").unwrap();
        let e = Revocations::open(Some(dir.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("revocations.json") && e.contains("not a revocation list"),
            "{e}"
        );
    }
}
