//! The shared secret and the MAC on every frame.
//!
//! Every task, pool and result frame carries an HMAC-SHA256 over a kind byte and the frame's
//! bytes, with a key read from a file on each host and never stored in Redis. It is checked,
//! in constant time, before a byte of the frame is decoded: anyone who can write to the
//! stream but lacks the key cannot make an agent run anything (an entry offset names a
//! function of the build, SCALEOUT.md "Security"). The kind byte keeps a frame of one kind
//! from being replayed as another.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, ErrorKind};

/// The length of a MAC, appended to every frame.
pub(crate) const MAC_LEN: usize = 32;

/// A shorter key is refused: 16 bytes is the least HMAC-SHA256 should get.
const MIN_KEY: usize = 16;

/// What a frame is (the first byte under its MAC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Task = b'T' as isize,
    Pool = b'P' as isize,
    Result = b'R' as isize,
    /// An agent's statistics for one pool (`Pool::stats`).
    Stats = b'S' as isize,
}

/// The secret the submitter and the agents share.
#[derive(Clone)]
pub(crate) struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.id())
    }
}

impl Key {
    /// Reads the key from `path`: its bytes as they are (a file of random bytes, or text), at
    /// least 16, in a file only its owner can read.
    pub(crate) fn from_file(path: &Path) -> Result<Key, Error> {
        let what = || format!("reading the remote pool's key file {}", path.display());
        let meta = fs::metadata(path).map_err(|e| Error::os(what(), e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::invalid(format!(
                "the key file {} can be read by others (mode {:o}); `chmod 600` it",
                path.display(),
                meta.permissions().mode() & 0o777
            )));
        }
        let bytes = fs::read(path).map_err(|e| Error::os(what(), e))?;
        Key::new(bytes)
    }

    /// A key from its bytes.
    pub(crate) fn new(bytes: Vec<u8>) -> Result<Key, Error> {
        if bytes.len() < MIN_KEY {
            return Err(Error::invalid(format!(
                "a remote pool's key must have at least {MIN_KEY} bytes (it has {}); make one \
                 with `head -c 32 /dev/urandom > mproc.key && chmod 600 mproc.key`",
                bytes.len()
            )));
        }
        Ok(Key(bytes))
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// A public name for the key (16 hex digits of a MAC of a fixed string): hosts with
    /// different keys use different streams, so an agent with the wrong key never takes (and
    /// destroys) another's tasks.
    pub(crate) fn id(&self) -> String {
        let mut m = self.mac();
        m.update(b"mproc key id v1");
        let tag = m.finalize().into_bytes();
        tag[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `bytes` with its MAC appended.
    pub(crate) fn seal(&self, kind: Kind, mut bytes: Vec<u8>) -> Vec<u8> {
        let mut m = self.mac();
        m.update(&[kind as u8]);
        m.update(&bytes);
        bytes.extend_from_slice(&m.finalize().into_bytes());
        bytes
    }

    /// The bytes under a valid MAC, checked in constant time; `Err(Broker)` if the MAC is
    /// wrong or missing (nothing of the frame was looked at).
    pub(crate) fn open<'a>(&self, kind: Kind, sealed: &'a [u8]) -> Result<&'a [u8], Error> {
        let Some(split) = sealed.len().checked_sub(MAC_LEN) else {
            return Err(bad_mac(kind));
        };
        let (bytes, tag) = sealed.split_at(split);
        let mut m = self.mac();
        m.update(&[kind as u8]);
        m.update(bytes);
        m.verify_slice(tag).map_err(|_| bad_mac(kind))?;
        Ok(bytes)
    }
}

fn bad_mac(kind: Kind) -> Error {
    let what = match kind {
        Kind::Task => "task",
        Kind::Pool => "pool",
        Kind::Result => "result",
        Kind::Stats => "statistics",
    };
    ErrorKind::Broker(format!(
        "a {what} frame failed its MAC check (tampered with, or sealed with another key): \
         refused without decoding it"
    ))
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key::new(vec![b; 32]).unwrap()
    }

    #[test]
    fn a_sealed_frame_opens_with_its_key_and_kind_only() {
        let sealed = key(1).seal(Kind::Task, b"payload".to_vec());
        assert_eq!(key(1).open(Kind::Task, &sealed).unwrap(), b"payload");
        assert!(key(2).open(Kind::Task, &sealed).is_err());
        assert!(key(1).open(Kind::Result, &sealed).is_err());
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(key(1).open(Kind::Task, &t).is_err(), "byte {i} flipped");
        }
        assert!(key(1).open(Kind::Task, &sealed[..MAC_LEN - 1]).is_err());
        assert!(key(1).open(Kind::Task, &[]).is_err());
    }

    #[test]
    fn short_keys_are_refused_and_ids_differ() {
        assert!(Key::new(vec![0; 15]).is_err());
        assert_ne!(key(1).id(), key(2).id());
        assert_eq!(key(1).id().len(), 16);
    }
}
