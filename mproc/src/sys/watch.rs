//! Watching files for their last close (inotify): the kernel reports when an open file
//! description of a watched file is released — by the last `close` of its descriptors, the
//! last `munmap` of its mappings, or the end of a message that carried it — in any process.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use rustix::io::Errno;

/// An inotify instance, non-blocking.
pub(crate) struct Watcher(OwnedFd);

/// One thing the kernel reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// An open file description of the file watched as `wd` was released.
    Closed(i32),
    /// The watch `wd` is gone: the file lost its last name, or the watch was removed.
    Ended(i32),
    /// Events were lost (the queue overflowed): look at every watched file again.
    Lost,
}

impl Watcher {
    /// See inotify_init1(2).
    pub(crate) fn new() -> io::Result<Watcher> {
        let flags = CreateFlags::CLOEXEC | CreateFlags::NONBLOCK;
        Ok(Watcher(inotify::init(flags)?))
    }

    /// Watches the file open as `file` for releases of its open file descriptions; returns the
    /// watch's number. Releases of descriptions already open count too.
    ///
    /// See inotify_add_watch(2).
    pub(crate) fn watch_closes(&self, file: BorrowedFd<'_>) -> io::Result<i32> {
        // The descriptor's own entry reaches the file even when it has no name.
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        Ok(inotify::add_watch(&self.0, path, WatchFlags::CLOSE)?)
    }

    /// Stops watching `wd` (nothing if it has ended already).
    ///
    /// See inotify_rm_watch(2).
    pub(crate) fn unwatch(&self, wd: i32) {
        let _ = inotify::remove_watch(&self.0, wd);
    }

    /// Every event waiting now (none when nothing waits).
    ///
    /// See inotify(7).
    pub(crate) fn events(&self) -> io::Result<Vec<Event>> {
        let mut out = Vec::new();
        // Room for many events at once; each is 16 bytes (no names for a watched file).
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // Read whole, not through rustix's `inotify::Reader`: `parse_events` is also what
            // the keeper's fuzz target feeds.
            match rustix::io::read(&self.0, &mut buf) {
                Ok(n) => out.extend(parse_events(&buf[..n])),
                Err(Errno::AGAIN) => return Ok(out),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl AsFd for Watcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// The events in `buf`, as read(2) from an inotify descriptor returned it: a run of
/// `struct inotify_event` (`wd`, `mask`, `cookie`, `len`, then `len` bytes of name). Kinds
/// not asked for are left out; a truncated tail is ignored.
pub(crate) fn parse_events(buf: &[u8]) -> Vec<Event> {
    const HEADER: usize = 16;
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(header) = buf.get(at..at + HEADER) {
        let word = |i: usize| u32::from_ne_bytes(header[i..i + 4].try_into().expect("4 bytes"));
        let (wd, mask, len) = (word(0) as i32, word(4), word(12) as usize);
        if mask & libc::IN_Q_OVERFLOW != 0 {
            out.push(Event::Lost);
        } else if mask & libc::IN_IGNORED != 0 {
            out.push(Event::Ended(wd));
        } else if mask & libc::IN_CLOSE != 0 {
            out.push(Event::Closed(wd));
        }
        match at.checked_add(HEADER).and_then(|a| a.checked_add(len)) {
            Some(next) => at = next,
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(wd: i32, mask: u32, name_len: u32) -> Vec<u8> {
        let mut e = Vec::new();
        for w in [wd as u32, mask, 0, name_len] {
            e.extend(w.to_ne_bytes());
        }
        e.extend(std::iter::repeat_n(0u8, name_len as usize));
        e
    }

    #[test]
    fn events_are_parsed_and_junk_is_skipped() {
        let mut buf = event(3, libc::IN_CLOSE_WRITE, 0);
        buf.extend(event(4, libc::IN_CLOSE_NOWRITE, 16));
        buf.extend(event(3, libc::IN_IGNORED, 0));
        buf.extend(event(-1, libc::IN_Q_OVERFLOW, 0));
        buf.extend(event(5, libc::IN_OPEN, 0));
        buf.extend(&[1, 2, 3]); // a truncated tail
        assert_eq!(
            parse_events(&buf),
            [
                Event::Closed(3),
                Event::Closed(4),
                Event::Ended(3),
                Event::Lost
            ]
        );
        // A name longer than what is left: the event counts, the rest is skipped.
        let mut huge = event(1, libc::IN_CLOSE_WRITE, 0);
        huge[12..16].copy_from_slice(&u32::MAX.to_ne_bytes());
        huge.extend(event(2, libc::IN_CLOSE_WRITE, 0));
        assert_eq!(parse_events(&huge), [Event::Closed(1)]);
    }

    #[test]
    fn the_last_close_anywhere_is_reported() {
        let w = Watcher::new().unwrap();
        let (_map, file) = super::super::shm::Mapping::create("mproc-test", 4096).unwrap();
        let wd = w.watch_closes(file.as_fd()).unwrap();
        let other = super::super::fd::dup_above(file.as_fd(), 0).unwrap();
        drop(other);
        assert!(
            w.events().unwrap().is_empty(),
            "another descriptor still holds it"
        );
        let reopened =
            std::fs::File::open(format!("/proc/self/fd/{}", file.as_fd().as_raw_fd())).unwrap();
        drop(reopened);
        assert_eq!(w.events().unwrap(), [Event::Closed(wd)]);
        w.unwatch(wd);
        assert_eq!(w.events().unwrap(), [Event::Ended(wd)]);
    }
}
