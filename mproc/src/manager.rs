//! Python's `Manager().dict()` and `.list()`: typed containers that any process holding a
//! handle reads and changes, in shared memory rather than behind a server process.
//!
//! A [`Dict`] or [`List`] is one block of shared memory (a memory file, gone with its last
//! holder) with a robust lock: each call takes the lock, works on the bytes, and lets go, so a
//! call costs a lock and a copy (well under 2 µs; Python's manager answers through a server
//! process, ~17 µs a `get` here). Keys and values cross as serde encodes them. A process
//! killed mid-call blocks nobody (the lock is robust) and loses nothing acknowledged: every
//! change is journaled and committed with one store, and the next caller finishes or ignores
//! a change its killer interrupted (see `manager/table.rs`). Handles travel like every other:
//! as `Process` arguments, pool tasks and results, and through a `Connection` (a queue's
//! ring carries bytes, not descriptors).
//!
//! Capacity is fixed when a container is made: entries (a hash table's slots) and bytes (its
//! arena; the memory file is sparse, so only what is used is resident). A container at its
//! capacity refuses more with `ErrorKind::Full`; `with_capacity` sets both. No call costs
//! the capacity: `items`, `keys`, `values`, `clear` and the compactions cost what the
//! container holds (`items` of 3 entries takes the same fraction of a microsecond at 65 536
//! entries as at a million). An update writes
//! the new bytes beside the old until a compaction drops them, so one entry may take at most
//! half of `bytes` if it is ever to be replaced.

mod table;

use std::any::type_name;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;
use crate::sync::{MUTEX_AT, deserialize_block, new_mutex_block, serialize_block};
use crate::sys::shared::{Block, Taken};
use crate::wire::codec;

pub(crate) const KIND_DICT: u32 = 9;
pub(crate) const KIND_LIST: u32 = 10;
/// Where the table starts: after the block's header, its mutex and the words after it.
const DATA_AT: usize = 192;

/// Default capacity: entries, and bytes of keys and values.
const DEFAULT_ENTRIES: usize = 1 << 16;
const DEFAULT_BYTES: usize = 32 << 20;

/// Python's `multiprocessing.Manager()`: makes shared [`Dict`]s and [`List`]s. It holds no
/// process of its own (the containers live in shared memory), so it is free to make and
/// keep; each container lives as long as some process holds a handle to it.
///
/// ```
/// use mproc::{Manager, Process};
///
/// fn record(d: mproc::Dict<String, u32>, who: String) {
///     d.insert(who, 1).unwrap();
/// }
/// let m = Manager::new()?;
/// let d = m.dict::<String, u32>()?;
/// let mut p = Process::new(record, (d.clone(), "child".to_string()));
/// p.start()?;
/// p.join()?;
/// assert_eq!(d.get(&"child".to_string())?, Some(1));
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Manager {
    _private: (),
}

impl Manager {
    /// A manager (cheap: no server process is started).
    ///
    /// ```
    /// let _m = mproc::Manager::new()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new() -> Result<Manager, Error> {
        Ok(Manager { _private: () })
    }

    /// A new, empty shared dict with the default capacity (65 536 entries, 32 MiB of keys
    /// and values).
    ///
    /// ```
    /// let d = mproc::Manager::new()?.dict::<u32, String>()?;
    /// d.insert(1, "one".into())?;
    /// assert_eq!(d.len()?, 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn dict<K, V>(&self) -> Result<Dict<K, V>, Error> {
        self.dict_with_capacity(DEFAULT_ENTRIES, DEFAULT_BYTES)
    }

    /// A new, empty shared dict for up to `entries` entries and `bytes` bytes of encoded keys
    /// and values.
    ///
    /// ```
    /// let d = mproc::Manager::new()?.dict_with_capacity::<u8, u8>(2, 1024)?;
    /// d.insert(1, 1)?;
    /// d.insert(2, 2)?;
    /// let e = d.insert(3, 3).unwrap_err();
    /// assert_eq!(*e.kind(), mproc::ErrorKind::Full);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn dict_with_capacity<K, V>(&self, entries: usize, bytes: usize) -> Result<Dict<K, V>, Error> {
        Ok(Dict {
            shared: Shared::create(KIND_DICT, entries, bytes)?,
            _types: PhantomData,
        })
    }

    /// A new, empty shared list with the default capacity (65 536 items, 32 MiB).
    ///
    /// ```
    /// let l = mproc::Manager::new()?.list::<f64>()?;
    /// l.push(1.5)?;
    /// assert_eq!(l.to_vec()?, [1.5]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn list<T>(&self) -> Result<List<T>, Error> {
        self.list_with_capacity(DEFAULT_ENTRIES, DEFAULT_BYTES)
    }

    /// A new, empty shared list for up to `items` items and `bytes` bytes of encoded items.
    ///
    /// ```
    /// let l = mproc::Manager::new()?.list_with_capacity::<u8>(1, 64)?;
    /// l.push(1)?;
    /// assert!(l.push(2).is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn list_with_capacity<T>(&self, items: usize, bytes: usize) -> Result<List<T>, Error> {
        Ok(List {
            shared: Shared::create(KIND_LIST, items, bytes)?,
            _types: PhantomData,
        })
    }
}

/// A container's block.
#[derive(Clone)]
struct Shared {
    block: Arc<Block>,
}

impl Shared {
    fn create(kind: u32, entries: usize, bytes: usize) -> Result<Shared, Error> {
        if entries == 0 {
            return Err(Error::invalid("a managed container needs room for one entry"));
        }
        // At most three quarters of the slots are used.
        let slots = entries
            .checked_mul(4)
            .map(|n| n.div_ceil(3).next_power_of_two())
            .filter(|&n| n <= 1 << 32);
        let size = slots
            .filter(|_| bytes < u32::MAX as usize)
            .and_then(|s| table::bytes_for(s, bytes))
            .and_then(|b| b.checked_add(DATA_AT));
        let (Some(slots), Some(size)) = (slots, size) else {
            return Err(Error::invalid(format!(
                "a managed container of {entries} entries and {bytes} bytes is too large"
            )));
        };
        let block = new_mutex_block(kind, size - DATA_AT + 64, false)?;
        let shared = Shared { block };
        shared.with(|m| {
            table::init(m, slots, bytes, entries);
            Ok(())
        })?;
        Ok(shared)
    }

    /// Runs `f` on the table's bytes under the lock.
    fn with<R>(&self, f: impl FnOnce(&mut [u8]) -> Result<R, Error>) -> Result<R, Error> {
        let (mut held, _) = self.lock()?;
        let len = self.block.len() - DATA_AT;
        f(self.block.guarded_bytes(&mut held, DATA_AT, len))
    }

    fn lock(&self) -> Result<(crate::sys::shared::Held<'_>, bool), Error> {
        match self.block.mutex_at(MUTEX_AT).lock(None) {
            Ok(Some((held, taken))) => Ok((held, taken == Taken::OwnerDied)),
            Ok(None) => unreachable!("no deadline"),
            Err(e) if e.raw_os_error() == Some(libc::EDEADLK) => Err(Error::invalid(
                "this thread is already inside a call on this managed container (an \
                 update_with closure that uses it?)",
            )),
            Err(e) => Err(Error::os("taking a managed container's lock", e)),
        }
    }

    /// Runs `f` on the table under the lock; after a holder died, its change is finished
    /// or dropped first.
    fn table<R>(&self, f: impl FnOnce(&mut table::Table<'_>) -> Result<R, Error>) -> Result<R, Error> {
        let (mut held, owner_died) = self.lock()?;
        let len = self.block.len() - DATA_AT;
        let bytes = self.block.guarded_bytes(&mut held, DATA_AT, len);
        let mut t = table::Table::open(bytes, owner_died)?;
        f(&mut t)
    }
}

fn encode<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, Error> {
    codec::encode(value).map_err(|e| Error::codec(format!("a managed container's {what}"), "encode", e))
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Error> {
    decode_saying(bytes, what, "")
}

/// Decodes a value about to be taken out (removed or replaced), under the lock: one that
/// does not decode as `T` (written through a handle of other types) is refused and stays.
fn decode_taken<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Error> {
    decode_saying(bytes, what, " (left where it was)")
}

/// Decodes a container's `what` as `T`; an error names `T`, then says `after`.
fn decode_saying<T: DeserializeOwned>(bytes: &[u8], what: &str, after: &str) -> Result<T, Error> {
    codec::decode(bytes).map_err(|e| {
        let value = format!("a managed container's {what} as `{}`{after}", type_name::<T>());
        Error::codec(value, "decode", e)
    })
}

/// What a dict holds, for its `PhantomData` (a function type: `Dict` is `Send` and `Sync`
/// whatever `K` and `V` are, as it holds only bytes).
type Types<K, V> = fn(K, V) -> (K, V);

/// A shared dict, Python's `Manager().dict()`: `K` to `V`, readable and changeable by every
/// process holding a handle (clone it, pass it). Every method is one atomic step under the
/// dict's lock; [`update_with`](Dict::update_with) reads and writes in one.
///
/// Keys are compared by their encoded bytes (equal keys encode alike for every ordinary
/// type; a `HashMap` as a key would not).
///
/// ```
/// use mproc::{Manager, Pool};
///
/// fn count(d: mproc::Dict<String, u64>, word: String) {
///     d.update_with(word, |n| n.unwrap_or(0) + 1).unwrap();
/// }
/// let d = Manager::new()?.dict::<String, u64>()?;
/// let pool = Pool::new(2)?;
/// let words = ["a", "b", "a", "a"].map(|w| (d.clone(), w.to_string()));
/// pool.starmap(count, words)?;
/// assert_eq!(d.get(&"a".to_string())?, Some(3));
/// assert_eq!(d.get(&"b".to_string())?, Some(1));
/// assert_eq!(d.len()?, 2);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Dict<K, V> {
    shared: Shared,
    _types: PhantomData<Types<K, V>>,
}

impl<K, V> Clone for Dict<K, V> {
    fn clone(&self) -> Self {
        Dict {
            shared: self.shared.clone(),
            _types: PhantomData,
        }
    }
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> Dict<K, V> {
    /// Stores `value` under `key`; returns the value it replaced.
    ///
    /// # Errors
    ///
    /// A `Codec` error if the value under `key` does not decode as `V` (it was written
    /// through a handle of other types: a handle carries no types, so one sent through a
    /// [`Connection`](crate::Connection) may be received as a `Dict` of others). Then nothing
    /// changes: that value stays, for a handle of its own types to read or remove, and
    /// `value` is not stored. `Full` if there is no room for `value`; `InvalidArgument` if
    /// it could never fit.
    ///
    /// ```
    /// let d = mproc::Manager::new()?.dict::<u8, String>()?;
    /// assert_eq!(d.insert(1, "a".into())?, None);
    /// assert_eq!(d.insert(1, "b".into())?, Some("a".into()));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn insert(&self, key: K, value: V) -> Result<Option<V>, Error> {
        let (k, v) = (encode(&key, "key")?, encode(&value, "value")?);
        self.shared.table(|t| t.insert(&k, &v, |old| decode_taken(old, "value")))
    }

    /// The value under `key`, if any.
    ///
    /// ```
    /// let d = mproc::Manager::new()?.dict::<u8, u8>()?;
    /// d.insert(1, 10)?;
    /// assert_eq!((d.get(&1)?, d.get(&2)?), (Some(10), None));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn get(&self, key: &K) -> Result<Option<V>, Error> {
        let k = encode(key, "key")?;
        let found = self.shared.table(|t| t.get(&k))?;
        found.map(|b| decode(&b, "value")).transpose()
    }

    /// Removes `key`; returns its value.
    ///
    /// # Errors
    ///
    /// A `Codec` error if the value does not decode as `V` (it was written through a handle
    /// of other types); then it is not removed.
    ///
    /// ```
    /// let d = mproc::Manager::new()?.dict::<u8, u8>()?;
    /// d.insert(1, 10)?;
    /// assert_eq!(d.remove(&1)?, Some(10));
    /// assert_eq!(d.remove(&1)?, None);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn remove(&self, key: &K) -> Result<Option<V>, Error> {
        let k = encode(key, "key")?;
        self.shared.table(|t| t.remove(&k, |old| decode_taken(old, "value")))
    }

    /// Whether `key` is there.
    ///
    /// ```
    /// let d = mproc::Manager::new()?.dict::<u8, u8>()?;
    /// d.insert(1, 10)?;
    /// assert!(d.contains_key(&1)? && !d.contains_key(&2)?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn contains_key(&self, key: &K) -> Result<bool, Error> {
        let k = encode(key, "key")?;
        Ok(self.shared.table(|t| t.get(&k))?.is_some())
    }

    /// How many entries.
    ///
    /// ```
    /// let d = mproc::Manager::new()?.dict::<u8, u8>()?;
    /// assert_eq!(d.len()?, 0);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn len(&self) -> Result<usize, Error> {
        self.shared.table(|t| t.len())
    }

    /// Whether it has no entries.
    ///
    /// ```
    /// assert!(mproc::Manager::new()?.dict::<u8, u8>()?.is_empty()?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// Every entry, in insertion order (as Python's dict), taken in one step.
    ///
    /// ```
    /// let d = mproc::Manager::new()?.dict::<u8, char>()?;
    /// d.update([(2, 'b'), (1, 'a')])?;
    /// assert_eq!(d.items()?, [(2, 'b'), (1, 'a')]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn items(&self) -> Result<Vec<(K, V)>, Error> {
        let entries = self.shared.table(|t| t.entries())?;
        entries
            .iter()
            .map(|(k, v)| Ok((decode(k, "key")?, decode(v, "value")?)))
            .collect()
    }

    /// Every key, in insertion order.
    ///
    /// ```
    /// let d = mproc::Manager::new()?.dict::<u8, char>()?;
    /// d.update([(2, 'b'), (1, 'a')])?;
    /// assert_eq!(d.keys()?, [2, 1]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn keys(&self) -> Result<Vec<K>, Error> {
        let entries = self.shared.table(|t| t.entries())?;
        entries.iter().map(|(k, _)| decode(k, "key")).collect()
    }

    /// Every value, in insertion order.
    ///
    /// ```
    /// let d = mproc::Manager::new()?.dict::<u8, char>()?;
    /// d.update([(2, 'b'), (1, 'a')])?;
    /// assert_eq!(d.values()?, ['b', 'a']);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn values(&self) -> Result<Vec<V>, Error> {
        let entries = self.shared.table(|t| t.entries())?;
        entries.iter().map(|(_, v)| decode(v, "value")).collect()
    }

    /// Inserts every pair (each one atomic; a process killed midway leaves the pairs before).
    ///
    /// ```
    /// let d = mproc::Manager::new()?.dict::<u8, u8>()?;
    /// d.update((0..5).map(|i| (i, i * i)))?;
    /// assert_eq!(d.get(&4)?, Some(16));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn update(&self, pairs: impl IntoIterator<Item = (K, V)>) -> Result<(), Error> {
        for (k, v) in pairs {
            self.insert(k, v)?;
        }
        Ok(())
    }

    /// Removes every entry.
    ///
    /// ```
    /// let d = mproc::Manager::new()?.dict::<u8, u8>()?;
    /// d.insert(1, 1)?;
    /// d.clear()?;
    /// assert!(d.is_empty()?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn clear(&self) -> Result<(), Error> {
        self.shared.table(|t| t.clear())
    }

    /// Replaces the value under `key` by what `f` makes of it (`None` if there is none), in
    /// one atomic step: no other process's change comes between the read and the write.
    /// Returns the new value. `f` runs under the dict's lock: it must not use this dict
    /// (that is an `InvalidArgument` error), and should not use another container either
    /// (two processes each inside one and calling the other's would wait for each other
    /// forever, as two locks taken in opposite orders do); if it panics, nothing changes.
    ///
    /// ```
    /// let d = mproc::Manager::new()?.dict::<String, u32>()?;
    /// d.update_with("hits".into(), |n| n.unwrap_or(0) + 1)?;
    /// assert_eq!(d.update_with("hits".into(), |n| n.unwrap_or(0) + 1)?, 2);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn update_with(&self, key: K, f: impl FnOnce(Option<V>) -> V) -> Result<V, Error> {
        let k = encode(&key, "key")?;
        self.shared.table(|t| {
            let old = t.get(&k)?.map(|b| decode(&b, "value")).transpose()?;
            let new = f(old);
            // `old` decoded: nothing unread is replaced.
            t.insert(&k, &encode(&new, "value")?, drop_unread)?;
            Ok(new)
        })
    }
}

/// A shared list, Python's `Manager().list()`: items of `T` by index, readable and changeable
/// by every process holding a handle. Every method is one atomic step under the list's lock.
///
/// ```
/// use mproc::{Manager, Process};
///
/// fn fill(l: mproc::List<u32>) {
///     l.extend([1, 2, 3]).unwrap();
/// }
/// let l = Manager::new()?.list::<u32>()?;
/// let mut p = Process::new(fill, (l.clone(),));
/// p.start()?;
/// p.join()?;
/// assert_eq!(l.pop()?, Some(3));
/// assert_eq!(l.to_vec()?, [1, 2]);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct List<T> {
    shared: Shared,
    _types: PhantomData<fn(T) -> T>,
}

impl<T> Clone for List<T> {
    fn clone(&self) -> Self {
        List {
            shared: self.shared.clone(),
            _types: PhantomData,
        }
    }
}

/// For a change that replaces a value without returning it: the old value is not read.
fn drop_unread(_: &[u8]) -> Result<(), Error> {
    Ok(())
}

/// An item's key: its index.
fn at(i: usize) -> [u8; 8] {
    (i as u64).to_le_bytes()
}

impl<T: Serialize + DeserializeOwned> List<T> {
    /// Appends `value`.
    ///
    /// ```
    /// let l = mproc::Manager::new()?.list::<u8>()?;
    /// l.push(7)?;
    /// assert_eq!(l.get(0)?, Some(7));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn push(&self, value: T) -> Result<(), Error> {
        let v = encode(&value, "item")?;
        self.shared.table(|t| {
            let n = t.len()?;
            // Past the end: no item is replaced.
            t.insert(&at(n), &v, drop_unread).map(drop)
        })
    }

    /// Removes and returns the last item.
    ///
    /// # Errors
    ///
    /// A `Codec` error if the item does not decode as `T` (it was written through a handle of
    /// another type); then it is not removed.
    ///
    /// ```
    /// let l = mproc::Manager::new()?.list::<u8>()?;
    /// l.push(7)?;
    /// assert_eq!((l.pop()?, l.pop()?), (Some(7), None));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn pop(&self) -> Result<Option<T>, Error> {
        self.shared.table(|t| match t.len()? {
            0 => Ok(None),
            n => t.remove(&at(n - 1), |old| decode_taken(old, "item")),
        })
    }

    /// The item at `index`, if there is one.
    ///
    /// ```
    /// let l = mproc::Manager::new()?.list::<u8>()?;
    /// l.push(7)?;
    /// assert_eq!((l.get(0)?, l.get(1)?), (Some(7), None));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn get(&self, index: usize) -> Result<Option<T>, Error> {
        let found = self.shared.table(|t| t.get(&at(index)))?;
        found.map(|b| decode(&b, "item")).transpose()
    }

    /// Replaces the item at `index`; an index past the end is an `InvalidArgument` error. The
    /// item replaced is not read (nor returned), so one of another type is replaced too.
    ///
    /// ```
    /// let l = mproc::Manager::new()?.list::<u8>()?;
    /// l.push(7)?;
    /// l.set(0, 8)?;
    /// assert_eq!(l.get(0)?, Some(8));
    /// assert!(l.set(5, 1).is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn set(&self, index: usize, value: T) -> Result<(), Error> {
        let v = encode(&value, "item")?;
        self.shared.table(|t| {
            let n = t.len()?;
            if index >= n {
                return Err(Error::invalid(format!(
                    "index {index} is past the end of a managed list of {n} items"
                )));
            }
            t.insert(&at(index), &v, drop_unread).map(drop)
        })
    }

    /// How many items.
    ///
    /// ```
    /// assert_eq!(mproc::Manager::new()?.list::<u8>()?.len()?, 0);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn len(&self) -> Result<usize, Error> {
        self.shared.table(|t| t.len())
    }

    /// Whether it has no items.
    ///
    /// ```
    /// assert!(mproc::Manager::new()?.list::<u8>()?.is_empty()?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// Appends every item (each push atomic; a process killed midway leaves the ones before).
    ///
    /// ```
    /// let l = mproc::Manager::new()?.list::<u8>()?;
    /// l.extend([1, 2])?;
    /// assert_eq!(l.len()?, 2);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn extend(&self, items: impl IntoIterator<Item = T>) -> Result<(), Error> {
        for item in items {
            self.push(item)?;
        }
        Ok(())
    }

    /// Every item, in order, taken in one step.
    ///
    /// ```
    /// let l = mproc::Manager::new()?.list::<u8>()?;
    /// l.extend([1, 2])?;
    /// assert_eq!(l.to_vec()?, [1, 2]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn to_vec(&self) -> Result<Vec<T>, Error> {
        let bytes = self.shared.table(|t| {
            (0..t.len()?)
                .map(|i| t.get(&at(i))?.ok_or_else(|| Error::protocol("a managed list lost an item")))
                .collect::<Result<Vec<_>, Error>>()
        })?;
        bytes.iter().map(|b| decode(b, "item")).collect()
    }

    /// Removes every item.
    ///
    /// ```
    /// let l = mproc::Manager::new()?.list::<u8>()?;
    /// l.push(1)?;
    /// l.clear()?;
    /// assert!(l.is_empty()?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn clear(&self) -> Result<(), Error> {
        self.shared.table(|t| t.clear())
    }
}

macro_rules! container_handle {
    ($ty:ident < $($p:ident),* >, $kind:expr, $name:literal) => {
        impl<$($p),*> Serialize for $ty<$($p),*> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serialize_block(&self.shared.block, s)
            }
        }

        impl<'de, $($p),*> Deserialize<'de> for $ty<$($p),*> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let block = deserialize_block(d, $kind)?;
                if block.len() < DATA_AT + table::HEADER {
                    return Err(serde::de::Error::custom(concat!("not a managed ", $name)));
                }
                Ok($ty {
                    shared: Shared { block },
                    _types: PhantomData,
                })
            }
        }

        impl<$($p),*> fmt::Debug for $ty<$($p),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!("mproc::", stringify!($ty), " { .. }"))
            }
        }
    };
}

container_handle!(Dict<K, V>, KIND_DICT, "dict");
container_handle!(List<T>, KIND_LIST, "list");
