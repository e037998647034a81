//! Worker state (mpire's `worker_state`): a value each pool worker builds once, with a function
//! and arguments ([`PoolBuilder::worker_state`](crate::PoolBuilder::worker_state)), and keeps
//! across its tasks; targets `fn(&mut S, ...) -> R` receive it through [`with_state`]. A model
//! loaded once per worker, a connection, a cache: what Python programs keep in globals set by
//! an `initializer`.
//!
//! The state lives in the worker process, in one slot. It is built by the pool's initializer
//! (a replaced worker builds its own), and a task takes it out of the slot while it runs, so
//! a task that panics leaves it in place for the next one.

use std::any::{Any, type_name};
use std::marker::PhantomData;
use std::sync::Mutex;

use crate::sys::image;
use crate::wire::target::{Target, sealed::Sealed};

/// The worker's state and its type's name, once built.
static STATE: Mutex<Option<(Box<dyn Any + Send>, &'static str)>> = Mutex::new(None);

fn slot() -> std::sync::MutexGuard<'static, Option<(Box<dyn Any + Send>, &'static str)>> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `body` on this worker's state, which must be an `S`. Panics (failing the task, with
/// this message) when the pool has no worker state, or one of another type.
fn with<S: Any + Send, R>(body: impl FnOnce(&mut S) -> R) -> R {
    /// The state while a task has it out of the slot: put back when dropped, even by a
    /// panic, so the next task finds it.
    struct Out(Option<(Box<dyn Any + Send>, &'static str)>);
    impl Drop for Out {
        fn drop(&mut self) {
            *slot() = self.0.take();
        }
    }
    let mut out = Out(slot().take());
    let Some((state, name)) = out.0.as_mut() else {
        panic!(
            "this task wants a worker state (a `{}`), but its pool has none: build the pool \
             with `worker_state` (or the state is in use by this very task)",
            type_name::<S>()
        );
    };
    let Some(s) = state.downcast_mut::<S>() else {
        panic!(
            "this task wants a worker state of type `{}`, but its pool's is a `{name}`",
            type_name::<S>()
        );
    };
    body(s)
}

/// A target `fn(&mut S, args...) -> R` that receives its worker's state: pass it to any
/// method of a pool built with [`worker_state`](crate::PoolBuilder::worker_state) —
/// `apply`, `apply_async`, `map`, `imap`, `starmap` and their kin — with the other arguments
/// as usual. Made by [`with_state`].
///
/// ```
/// use mproc::with_state;
///
/// struct Model {
///     weight: f64,
/// }
/// fn load(weight: f64) -> Model {
///     Model { weight } // once per worker: read a file, open a connection...
/// }
/// fn predict(model: &mut Model, x: f64) -> f64 {
///     model.weight * x
/// }
/// let pool = mproc::Pool::builder().processes(2).worker_state(load, (2.0,)).build()?;
/// assert_eq!(pool.map(with_state(predict), [1.0, 2.0])?, [2.0, 4.0]);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct WithState<F, S> {
    _f: PhantomData<fn() -> (F, S)>,
}

impl<F, S> Clone for WithState<F, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F, S> Copy for WithState<F, S> {}

impl<F, S> std::fmt::Debug for WithState<F, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "with_state({})", type_name::<F>())
    }
}

/// Makes `f`, a function whose first parameter is `&mut S`, a target that receives its
/// worker's state (see [`WithState`]). `f` must be a `fn` item or a closure that captures
/// nothing, as every target.
///
/// ```
/// use mproc::with_state;
///
/// fn open(path: String) -> Vec<String> {
///     vec![path] // a per-worker log, say
/// }
/// fn note(log: &mut Vec<String>, line: String) -> usize {
///     log.push(line);
///     log.len()
/// }
/// let pool = mproc::Pool::builder().processes(1).worker_state(open, ("log".to_string(),)).build()?;
/// let first = pool.apply_async(with_state(note), ("a".to_string(),))?;
/// assert_eq!(first.get()?, 2);
/// assert_eq!(pool.apply(with_state(note), ("b".to_string(),))?, 3, "kept across tasks");
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// A closure that captures a variable is refused when the program is built, as for every
/// target:
///
/// ```compile_fail
/// fn zero() -> u32 {
///     0
/// }
/// let pool = mproc::Pool::builder().worker_state(zero, ()).build().unwrap();
/// let base = 10u32;
/// let _ = pool.apply(mproc::with_state(move |s: &mut u32, x: u32| *s + x + base), (1,));
/// ```
pub fn with_state<F, S>(f: F) -> WithState<F, S> {
    let _ = f;
    WithState { _f: PhantomData }
}

macro_rules! impl_with_state {
    ($($arg:ident),*) => {
        impl<Func, S, Ret, $($arg,)*> Sealed<($($arg,)*)> for WithState<Func, S>
        where
            Func: Fn(&mut S, $($arg),*) -> Ret + Copy + Send + Sync + 'static,
            S: Any + Send,
        {}

        impl<Func, S, Ret, $($arg,)*> Target<($($arg,)*)> for WithState<Func, S>
        where
            Func: Fn(&mut S, $($arg),*) -> Ret + Copy + Send + Sync + 'static,
            S: Any + Send,
        {
            type Output = Ret;

            #[allow(non_snake_case)]
            fn call(self, ($($arg,)*): ($($arg,)*)) -> Ret {
                let f: Func = image::conjure::<Func>();
                with(|s: &mut S| f(s, $($arg),*))
            }
        }
    };
}

impl_with_state!();
impl_with_state!(A1);
impl_with_state!(A1, A2);
impl_with_state!(A1, A2, A3);
impl_with_state!(A1, A2, A3, A4);
impl_with_state!(A1, A2, A3, A4, A5);

/// The initializer that builds the state: calls `F` and keeps what it returns in the slot.
pub(crate) struct BuildState<F> {
    _f: PhantomData<fn() -> F>,
}

impl<F> Clone for BuildState<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F> Copy for BuildState<F> {}

impl<F, A> Sealed<A> for BuildState<F>
where
    F: Target<A>,
    F::Output: Any + Send,
{
}

impl<F, A> Target<A> for BuildState<F>
where
    F: Target<A>,
    F::Output: Any + Send,
{
    type Output = ();

    fn call(self, args: A) {
        let f: F = image::conjure::<F>();
        let state = f.call(args);
        *slot() = Some((Box::new(state), type_name::<F::Output>()));
    }
}
