//! The typed operations the three queue types share: put, get and their waits.

use std::cell::Cell;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::KIND_JOINABLE;
use crate::sys::fd::InternalFd;
use super::holders::Shared;
use super::ring::{Push, Ring, Wait};
use crate::error::{Error, ErrorKind};
use crate::wire::codec;

/// How long a get spins, watching the ring, before it sleeps.
const SPIN: Duration = Duration::from_micros(20);
/// How long a waiter sleeps before it first checks whether anyone else still holds the
/// queue; the interval doubles up to [`MAX_CHECK`].
const FIRST_CHECK: Duration = Duration::from_millis(5);
const MAX_CHECK: Duration = Duration::from_millis(100);

/// When a waiter next checks whether anyone else holds the queue.
pub(super) struct Patience {
    next: Instant,
    every: Duration,
}

impl Patience {
    pub(super) fn new() -> Patience {
        Patience {
            next: Instant::now() + FIRST_CHECK,
            every: FIRST_CHECK,
        }
    }

    /// The deadline for the next sleep: the caller's, or the next check if sooner.
    pub(super) fn until(&self, deadline: Option<Instant>) -> Instant {
        deadline.map_or(self.next, |d| d.min(self.next))
    }

    /// After a sleep: `true` when it is time to check (and the next check is scheduled).
    pub(super) fn due(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next {
            return false;
        }
        self.every = (self.every * 2).min(MAX_CHECK);
        self.next = now + self.every;
        true
    }
}

/// The typed operations, shared by the three queue types.
pub(super) struct Core<T> {
    pub(super) shared: Arc<Shared>,
    _values: PhantomData<fn(T) -> T>,
    /// Not `Sync` (still `Send`): a thread uses a queue through a handle of its own, so the
    /// handle count that [`Shared::alone`] reads is exact.
    _one_thread: PhantomData<Cell<()>>,
}

impl<T> Clone for Core<T> {
    fn clone(&self) -> Self {
        Core {
            shared: self.shared.clone(),
            _values: PhantomData,
            _one_thread: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Core<T> {
    pub(super) fn new(kind: u32, maxsize: u64) -> Result<Self, Error> {
        Ok(Core {
            shared: Shared::create(kind, maxsize)?,
            _values: PhantomData,
            _one_thread: PhantomData,
        })
    }

    pub(super) fn ring(&self) -> &Ring {
        &self.shared.ring
    }

    /// Puts `value`, waiting for room until `deadline` (then `Timeout`); with `at_once`, not
    /// at all (then `Full`: the locks, only ever held briefly, are still waited for, since a
    /// busy lock is not a full queue).
    pub(super) fn put(
        &self,
        value: &T,
        deadline: Option<Instant>,
        at_once: bool,
    ) -> Result<(), Error> {
        let lock_deadline = if at_once { None } else { deadline };
        let gave_up = || {
            Error::from(if at_once {
                ErrorKind::Full
            } else {
                ErrorKind::Timeout
            })
        };
        self.shared.attach()?;
        let len = codec::encoded_len(value)
            .map_err(|e| Error::codec(std::any::type_name::<T>(), "encode", e))?;
        let joinable = self.shared.kind == KIND_JOINABLE;
        let mut patience = Patience::new();
        // Taken before a check that may lead to sleep; not on the first try, which usually
        // succeeds (a ticket reads the consumers' cache line).
        let mut ticket = None;
        // Set when nobody else can get any more: one last try, then `Closed`.
        let mut last = false;
        loop {
            if self.ring().is_closed() {
                return Err(ErrorKind::Closed.into());
            }
            let pushed = {
                let Some(mut producer) = self
                    .ring()
                    .producer(lock_deadline)
                    .map_err(|e| Error::os("locking a queue", e))?
                else {
                    return Err(gave_up());
                };
                producer.push(len, joinable, lock_deadline, |buf| {
                    codec::encode_to_slice(buf, value)
                        .map_err(|e| Error::codec(std::any::type_name::<T>(), "encode", e))
                })?
            };
            match pushed {
                Push::Done => return Ok(()),
                Push::Busy => return Err(gave_up()),
                Push::Full | Push::NoRoom => {}
            }
            if last {
                return Err(ErrorKind::Closed.into());
            }
            if at_once || deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(gave_up());
            }
            let Some(taken) = ticket else {
                ticket = Some(self.ring().ticket(Wait::Get));
                continue; // check again, now that a get will move the ticket on
            };
            let slept = self
                .ring()
                .sleep(Wait::Get, taken, Some(patience.until(deadline)))
                .map_err(|e| Error::os("waiting for room in a queue", e))?;
            last = !slept && patience.due() && self.shared.alone()?;
            ticket = Some(self.ring().ticket(Wait::Get));
        }
    }

    /// Gets a value, waiting until `deadline` (`Some(now)`: not at all); `None` when the
    /// deadline passed.
    pub(super) fn get(&self, deadline: Option<Instant>) -> Result<Option<T>, Error> {
        self.shared.attach()?;
        let mut patience = Patience::new();
        let mut spun = false;
        // As in `put`: no ticket on the first try (it reads the producers' cache line).
        let mut ticket = None;
        // Set when nobody else can put any more: one last try, then `Closed`.
        let mut last = false;
        loop {
            if let Some(value) = self.pop(deadline)? {
                return Ok(Some(value?));
            }
            if last || self.ring().is_closed() {
                return Err(ErrorKind::Closed.into());
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            if !spun {
                spun = true;
                let until = deadline.map_or(now + SPIN, |d| d.min(now + SPIN));
                while !self.ring().has_frames() && Instant::now() < until {
                    std::hint::spin_loop();
                }
                continue;
            }
            let Some(taken) = ticket else {
                ticket = Some(self.ring().ticket(Wait::Put));
                continue; // check again, now that a put will move the ticket on
            };
            let slept = self
                .ring()
                .sleep(Wait::Put, taken, Some(patience.until(deadline)))
                .map_err(|e| Error::os("waiting for a queue", e))?;
            last = !slept && patience.due() && !self.ring().has_frames() && self.shared.alone()?;
            ticket = Some(self.ring().ticket(Wait::Put));
        }
    }

    /// Takes the next frame, if any, and decodes it (`Some(Err)`: it did not decode; it is
    /// consumed all the same).
    pub(super) fn pop(&self, deadline: Option<Instant>) -> Result<Option<Result<T, Error>>, Error> {
        let Some(mut consumer) = self
            .ring()
            .consumer(deadline)
            .map_err(|e| Error::os("locking a queue", e))?
        else {
            return Ok(None);
        };
        consumer
            .pop(|bytes| {
                crate::wire::shared::decode_shared::<T>(bytes)
                    .map_err(|e| Error::codec(std::any::type_name::<T>(), "decode", e))
            })
            .map_err(|e| Error::os("reading a queue", e))
    }

    pub(super) fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ring = &self.shared.ring;
        let at = crate::handle::export_with(ring.as_fd(), || ring.lend().map(InternalFd::new))
            .map_err(serde::ser::Error::custom)?;
        at.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
        kind: u32,
    ) -> Result<Self, D::Error> {
        let at = u32::deserialize(d)?;
        let fd = crate::handle::import(at)
            .map_err(serde::de::Error::custom)?
            .into_owned();
        let ring = Ring::open(fd, kind).map_err(serde::de::Error::custom)?;
        let shared = Shared::new(ring, kind).map_err(serde::de::Error::custom)?;
        // Attached first, then no longer in flight: never a moment when neither counts.
        shared.ring.arrived();
        Ok(Core {
            shared,
            _values: PhantomData,
            _one_thread: PhantomData,
        })
    }
}
