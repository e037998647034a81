//! What must not compile, pinned (as rayon-core's `compile_fail` module does): each item's
//! doc test fails to compile for the reason its comment gives, and `cargo test --doc` checks
//! that it still does. Only built for doc tests.

/// A lock's guard stays on the thread that took the lock: a robust mutex is owned by a
/// thread, and releasing it from another would break the owner-died rule.
///
/// ```compile_fail,E0277
/// let lock = mproc::Lock::new().unwrap();
/// let guard = lock.acquire().unwrap();
/// std::thread::scope(|s| {
///     s.spawn(move || drop(guard));
/// });
/// ```
pub(crate) struct LockGuardIsNotSend;

/// The same for an `RLock`'s guard (one level of a re-entrant hold).
///
/// ```compile_fail,E0277
/// let lock = mproc::RLock::new().unwrap();
/// let guard = lock.acquire().unwrap();
/// std::thread::scope(|s| {
///     s.spawn(move || drop(guard));
/// });
/// ```
pub(crate) struct RLockGuardIsNotSend;

/// The same for a `Value`'s guard (and an `Array`'s: one is the other's).
///
/// ```compile_fail,E0277
/// let v = mproc::Value::new(0u64).unwrap();
/// let guard = v.lock().unwrap();
/// std::thread::scope(|s| {
///     s.spawn(move || drop(guard));
/// });
/// ```
pub(crate) struct ValueGuardIsNotSend;

/// A target that captures state is refused at compile time (its state could not cross into
/// the child), by a pool as by `Process`.
///
/// ```compile_fail,E0080
/// let pool = mproc::Pool::new(1).unwrap();
/// let offset = 3u64;
/// let _ = pool.apply(move |x: u64| x + offset, (1,));
/// ```
pub(crate) struct CapturingTargetIsRefused;

/// An argument that serde cannot carry is refused at compile time, not at run time.
///
/// ```compile_fail,E0277
/// fn read(_: std::rc::Rc<u8>) {}
/// let _ = mproc::Process::new(read, (std::rc::Rc::new(1u8),));
/// ```
pub(crate) struct UnserializableArgumentIsRefused;

/// A guard cannot be an argument either: it is not a handle, and holds a lock of this process.
///
/// ```compile_fail,E0277
/// fn hold(_: mproc::LockGuard<'static>) {}
/// let lock: &'static mproc::Lock = Box::leak(Box::new(mproc::Lock::new().unwrap()));
/// let _ = mproc::Process::new(hold, (lock.acquire().unwrap(),));
/// ```
pub(crate) struct GuardArgumentIsRefused;

/// `Value` and `Array` hold plain old data only: a `String` owns heap memory that no other
/// process could read.
///
/// ```compile_fail,E0277
/// let _ = mproc::Value::new(String::from("not plain data"));
/// ```
pub(crate) struct NonPodValueIsRefused;

/// A queue handle is not shared by reference across threads (each thread holds a clone, so
/// the queue can count who may still put).
///
/// ```compile_fail,E0277
/// let q = mproc::Queue::<u8>::new().unwrap();
/// std::thread::scope(|s| {
///     s.spawn(|| q.put(1u8).unwrap());
/// });
/// ```
pub(crate) struct QueueIsNotSync;
