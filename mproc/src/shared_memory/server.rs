//! The keeper process: its loop over requests, inotify events and polls, and how it adopts
//! orphaned records (see [`super::keeper`]).

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::keeper::{Identity, MAX_REQUEST, Request};
use super::lease::{Segment, create_segment};
use super::records::{
    MAX_RECORD, Record, encode_record, parse_record, parse_record_entry, record_dirs, record_entry,
    remove_stale_staging,
};
use crate::error::Error;
use crate::start::role::{self, RoleFn};
use crate::sys::fd::{self, InternalFd};
use crate::sys::watch::{Event, Watcher};
use crate::sys::{dir, proc, shm, socket};

/// How often a keeper without inotify asks whether its segments are still held.
pub(super) const POLL_EVERY: Duration = Duration::from_millis(100);

/// After a release it was told of, how soon a keeper refused the lease asks again: then at
/// twice the wait each time, up to [`RECHECK_MOST`] apart, until [`RECHECK_FOR`] after the
/// release.
///
/// inotify reports the release of an opening before the kernel has counted it released
/// (`__fput` sends the event, then drops the file's read and write counts, which a lease
/// looks at). A keeper woken at once, on another CPU or preempting the releasing thread
/// between the two, is refused the lease by the very opening that has just gone; and as
/// that was the last, no later event would ever come, and the name would stay in
/// `/dev/shm` for good. The releasing thread finishes in microseconds unless it is kept from
/// its CPU: the first look again is a millisecond later, the last, for a machine loaded
/// beyond reason, half a minute.
pub(super) const RECHECK_FIRST: Duration = Duration::from_millis(1);
/// The longest wait between two looks again (see [`RECHECK_FIRST`]).
pub(super) const RECHECK_MOST: Duration = Duration::from_secs(1);
/// How long after a release a keeper refused the lease still looks again (see
/// [`RECHECK_FIRST`]).
pub(super) const RECHECK_FOR: Duration = Duration::from_secs(30);

/// When a segment refused its lease after a release is asked again (see [`RECHECK_FIRST`]).
#[derive(Clone, Copy, Debug)]
struct Recheck {
    at: Instant,
    wait: Duration,
    until: Instant,
}

impl Recheck {
    /// The first look again after a release reported at `now`.
    fn after_release(now: Instant) -> Recheck {
        Recheck {
            at: now + RECHECK_FIRST,
            wait: RECHECK_FIRST,
            until: now + RECHECK_FOR,
        }
    }

    /// The look after this one, made at `now`, if any is left.
    fn next(self, now: Instant) -> Option<Recheck> {
        let wait = (self.wait * 2).min(RECHECK_MOST);
        let at = now + wait;
        (at <= self.until).then_some(Recheck { at, wait, ..self })
    }
}

/// A keeper's state.
pub(super) struct Server {
    /// The creator's request socket; `None` once the creator has gone.
    request: Option<OwnedFd>,
    pub(super) watcher: Option<Watcher>,
    pub(super) segments: HashMap<u64, Segment>,
    by_watch: HashMap<i32, u64>,
    /// Segments refused their lease just after a release was reported, to ask again.
    rechecks: HashMap<u64, Recheck>,
    next_id: u64,
    /// Where new records go (and where orphans were looked for last).
    dirs: Vec<Rc<OwnedFd>>,
    /// Orphans are to be looked for before the next wait.
    adopt: bool,
    last_poll: Instant,
}

impl Server {
    pub(super) fn new(request: OwnedFd) -> Server {
        Server {
            request: Some(request),
            watcher: Watcher::new().ok(),
            segments: HashMap::new(),
            by_watch: HashMap::new(),
            rechecks: HashMap::new(),
            next_id: 0,
            dirs: Vec::new(),
            adopt: true,
            last_poll: Instant::now(),
        }
    }

    pub(super) fn run(mut self) -> ! {
        loop {
            if self.adopt {
                self.adopt = false;
                self.adopt_orphans();
            }
            if self.request.is_none() && self.segments.is_empty() {
                proc::exit_now(0);
            }
            let polling = self.segments.values().any(|s| s.watch.is_none());
            let deadline = [
                polling.then(|| self.last_poll + POLL_EVERY),
                self.next_recheck(),
            ]
            .into_iter()
            .flatten()
            .min();
            let fds: Vec<BorrowedFd<'_>> = [
                self.request.as_ref().map(|r| r.as_fd()),
                self.watcher.as_ref().map(|w| w.as_fd()),
            ]
            .into_iter()
            .flatten()
            .collect();
            let Ok(ready) = fd::poll_read(&fds, deadline) else {
                // Out of memory for poll itself: try again shortly.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let mut ready = ready.into_iter();
            if self.request.is_some() {
                let r = ready.next().unwrap_or_default();
                if r.readable || r.hangup {
                    self.serve_requests(r.hangup);
                }
            }
            if ready.next().is_some_and(|r| r.readable) {
                self.on_events();
            }
            self.recheck_due(Instant::now());
            if polling && Instant::now() >= self.last_poll + POLL_EVERY {
                self.last_poll = Instant::now();
                let unwatched: Vec<u64> = self
                    .segments
                    .iter()
                    .filter(|(_, s)| s.watch.is_none())
                    .map(|(&id, _)| id)
                    .collect();
                unwatched.into_iter().for_each(|id| {
                    self.check(id);
                });
            }
        }
    }

    /// Serves what the creator sent; drops the request socket once the creator has gone.
    fn serve_requests(&mut self, hung_up: bool) {
        loop {
            let Some(request) = &self.request else {
                return;
            };
            let mut buf = [0u8; MAX_REQUEST + 1];
            let mut fds = Vec::new();
            let n = match socket::recv(request.as_fd(), &mut buf, &mut fds) {
                Ok(0) if hung_up => 0,
                // An empty message, or an end of file that the next poll will report.
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if n == 0 {
                self.request = None;
                return;
            }
            let answer = match Request::parse(&buf[..n]) {
                Ok(Request::Adopt) => {
                    self.adopt = true;
                    continue;
                }
                Ok(Request::Create { len, name }) => self.create(name, len),
                Err(errno) => Err(io::Error::from_raw_os_error(errno)),
            };
            let Ok([reply]) = <[InternalFd; 1]>::try_from(fds) else {
                continue; // nowhere to answer
            };
            // If the creator is gone, the file closes with the message, and its release is
            // reported like any other: the name goes.
            let _ = match answer {
                Ok(file) => socket::send(reply.as_fd(), &[&0i32.to_le_bytes()], &[file.as_fd()]),
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(libc::EINVAL);
                    socket::send(reply.as_fd(), &[&errno.to_le_bytes()], &[])
                }
            };
        }
    }

    /// Creates and keeps segment `name`; returns the requester's opening of it.
    fn create(&mut self, name: &str, len: u64) -> io::Result<OwnedFd> {
        if self.dirs.is_empty() {
            self.dirs = record_dirs(true).into_iter().map(Rc::new).collect();
        }
        let (segment, shared) = create_segment(name, len, &self.dirs)?;
        self.keep(segment);
        Ok(shared)
    }

    /// Keeps `segment`, watched if possible (it has its name by now: a watch ends when the
    /// file loses its last name). Returns its number.
    pub(super) fn keep(&mut self, mut segment: Segment) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(w) = &self.watcher {
            segment.watch = w.watch_closes(segment.file.as_fd()).ok();
        }
        if let Some(wd) = segment.watch {
            self.by_watch.insert(wd, id);
        }
        self.segments.insert(id, segment);
        id
    }

    /// Asks whether segment `id` is still held, and forgets it once the keeper is done with it.
    /// Whether it is still kept.
    pub(super) fn check(&mut self, id: u64) -> bool {
        if !self.segments.get(&id).is_some_and(Segment::release) {
            return self.segments.contains_key(&id);
        }
        self.rechecks.remove(&id);
        if let Some(segment) = self.segments.remove(&id)
            && let Some(wd) = segment.watch {
                self.by_watch.remove(&wd);
                if let Some(w) = &self.watcher {
                    w.unwatch(wd);
                }
            }
        false
    }

    /// Handles what inotify has to say.
    pub(super) fn on_events(&mut self) {
        let Some(watcher) = &self.watcher else {
            return;
        };
        let events = watcher.events().unwrap_or_else(|_| vec![Event::Lost]);
        self.handle_events(events, Instant::now());
    }

    /// Asks again about each segment an opening of which was released (`events`, read at
    /// `now`); one still held is asked again a while later (see [`RECHECK_FIRST`]).
    pub(super) fn handle_events(&mut self, events: Vec<Event>, now: Instant) {
        let mut due = BTreeSet::new();
        for event in events {
            match event {
                Event::Closed(wd) => due.extend(self.by_watch.get(&wd).copied()),
                Event::Ended(wd) => {
                    if let Some(id) = self.by_watch.remove(&wd) {
                        if let Some(s) = self.segments.get_mut(&id) {
                            s.watch = None;
                        }
                        due.insert(id);
                    }
                }
                Event::Lost => due.extend(self.segments.keys().copied()),
            }
        }
        for id in due {
            if self.check(id) {
                self.rechecks.insert(id, Recheck::after_release(now));
            }
        }
    }

    /// When the next segment is to be asked again, if any is.
    pub(super) fn next_recheck(&self) -> Option<Instant> {
        self.rechecks.values().map(|r| r.at).min()
    }

    /// Asks again about the segments due by `now` (see [`RECHECK_FIRST`]).
    pub(super) fn recheck_due(&mut self, now: Instant) {
        let due: Vec<(u64, Recheck)> = self
            .rechecks
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(&id, &r)| (id, r))
            .collect();
        for (id, recheck) in due {
            self.rechecks.remove(&id);
            if self.check(id)
                && let Some(next) = recheck.next(now)
            {
                self.rechecks.insert(id, next);
            }
        }
    }

    /// Adopts every orphaned record of this user's keepers (see [`super::keeper`]'s "Records").
    fn adopt_orphans(&mut self) {
        self.dirs = record_dirs(true).into_iter().map(Rc::new).collect();
        self.adopt_from(self.dirs.clone());
    }

    /// Adopts the orphaned records in `dirs`.
    pub(super) fn adopt_from(&mut self, dirs: Vec<Rc<OwnedFd>>) {
        for d in dirs {
            let Ok(entries) = dir::list(d.as_fd()) else {
                continue;
            };
            for entry in entries {
                if entry.starts_with("t-") {
                    remove_stale_staging(d.as_fd(), &entry);
                } else if let Some(identity) = parse_record_entry(&entry)
                    && let Some(id) = self.adopt_one(&d, &entry, identity) {
                        self.check(id);
                    }
            }
        }
    }

    /// Adopts the record `entry` of `dir` if its keeper is gone and its name still names the
    /// recorded file of this user; removes it if it is an orphan of a name that does not.
    fn adopt_one(&mut self, d: &Rc<OwnedFd>, entry: &str, identity: Identity) -> Option<u64> {
        let file = dir::open_file(d.as_fd(), entry).ok()?;
        // Its keeper lives, or another keeper is adopting it.
        if !dir::try_lock(file.as_fd()).ok()? {
            return None;
        }
        // Removed (or replaced) since it was opened: not the record there now.
        if dir::identity_at(d.as_fd(), entry).ok()? != dir::identity(file.as_fd()).ok()? {
            return None;
        }
        let bytes = dir::read_start(file.as_fd(), MAX_RECORD + 1).ok()?;
        // Removed while its lock is held, so no other keeper takes it meanwhile.
        let not_ours = || {
            let _ = dir::remove(d.as_fd(), entry);
            None
        };
        let Some((recorded, handle, name)) =
            parse_record(&bytes).filter(|(id, _, _)| *id == identity)
        else {
            return not_ours();
        };
        let segment_file = match shm::shm_open_read_only(name) {
            Ok((f, owner))
                if owner == proc::geteuid()
                    && shm::file_identity(f.as_fd()).ok() == Some(recorded) =>
            {
                f
            }
            Ok(_) => return not_ours(),
            Err(e) if gone(&e) => return not_ours(),
            // Out of descriptors or memory: left (unlocked again) for a later look.
            Err(_) => return None,
        };
        // The same numbers, but maybe a later file (of another program, after /dev/shm was made
        // anew): its handle tells.
        match shm::file_handle(segment_file.as_fd()) {
            Ok(h) if h == handle => {}
            Ok(_) => return not_ours(),
            Err(_) => return None,
        }
        let record = Record {
            dir: d.clone(),
            entry: entry.to_owned(),
            _lock: file,
        };
        Some(self.keep(Segment {
            name: name.to_owned(),
            file: segment_file,
            identity,
            watch: None,
            _record: Some(record),
        }))
    }
}

/// Whether opening a recorded name failed because it no longer names a file of ours.
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData
        || matches!(
            e.raw_os_error(),
            Some(libc::ENOENT | libc::ELOOP | libc::EACCES | libc::ENXIO)
        )
}

/// The keeper's role entry (see `start::role`): names [`serve`] to the spawned process.
pub(super) fn keeper_role(_: &[u8]) -> Result<Vec<u8>, Error> {
    role::claim(RoleFn::Spawned(serve))
}

/// The keeper's life: never returns.
fn serve(request: OwnedFd, alive: OwnedFd) -> ! {
    drop(alive);
    // Leave the creator: it reaps this first process, and the keeper is nobody's child.
    match proc::fork() {
        Ok(proc::Forked::Child) => {}
        Ok(proc::Forked::Parent(_)) => proc::exit_now(0),
        Err(_) => proc::exit_now(1),
    }
    proc::detach();
    proc::ignore_stop_signals();
    proc::ignore_lease_breaks();
    Server::new(request).run()
}

/// Checks every parser of what a keeper reads from others (requests, records and their file
/// names, inotify events) against `data`: none may panic, and whatever one accepts must
/// encode back to exactly `data`.
pub(crate) fn fuzz(data: &[u8]) {
    if let Ok(request) = Request::parse(data) {
        assert_eq!(request.encode(), data, "{request:?}");
        assert!(data.len() <= MAX_REQUEST);
    }
    if let Some(recorded) = parse_record(data) {
        assert_eq!(encode_record(recorded), data);
        assert!(data.len() <= MAX_RECORD);
    }
    if let Some(identity) = std::str::from_utf8(data).ok().and_then(parse_record_entry) {
        assert_eq!(record_entry(identity).as_bytes(), data);
    }
    let _ = crate::sys::watch::parse_events(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz target's checks, on its seeds and mutations of them (the 5-minute fuzz run is
    /// in fuzz/README.md).
    #[test]
    fn fuzz_seeds_and_their_mutations_never_panic() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds");
        let mut next = crate::sys::shm::testing::xorshift(0x2545_f491_4f6c_dd1d);
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).expect("fuzz/seeds exists") {
            let path = entry.unwrap().path();
            if !path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("keeper-")
            {
                continue;
            }
            let seed = std::fs::read(path).unwrap();
            seeds += 1;
            fuzz(&seed);
            for _ in 0..2000 {
                fuzz(&crate::sys::shm::testing::mutate(&seed, &mut next));
            }
        }
        assert_eq!(seeds, 5, "the keeper's fuzz seeds are missing");
    }
}
