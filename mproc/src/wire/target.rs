//! Functions as references that are valid in any process running the same build.
//!
//! A target is a zero-sized callable (a `fn` item or a closure that captures nothing). For each
//! target type `F` and argument tuple `A`, the generic [`trampoline`] is monomorphised into a
//! plain function with one fixed signature ([`Entry`](crate::sys::image::Entry)): it decodes
//! `A`, makes an `F` out of nothing (it has no bytes), calls it, and encodes the result. The
//! parent sends the offset of the trampoline's record from a fixed symbol; the child adds it
//! back to its own copy of that symbol and follows it only if a record is there. See
//! `sys::image` for why that is sound.

use std::any::type_name;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec;
use crate::Error;
use crate::sys::image;

/// A function mproc can run in another process, called with the argument tuple `Args`.
///
/// It is implemented for every `fn` item and every closure that captures nothing, with 0 to 6
/// parameters; you never implement it yourself. Arguments and return value cross between
/// processes through serde, so they must be `Serialize + DeserializeOwned + Send + 'static`.
///
/// ```
/// fn add(a: u32, b: u32) -> u32 {
///     a + b
/// }
/// fn takes_target<F: mproc::Target<(u32, u32), Output = u32>>(_f: F) {}
/// takes_target(add);
/// takes_target(|a: u32, b: u32| a * b);
/// ```
///
/// A closure that captures a variable is refused when the program is built, because its
/// state could not cross into the child. Only when it is *built* (`cargo build`, `run`,
/// `test`): `cargo check` and rust-analyzer accept it, since Rust has no trait bound for
/// "captures nothing" and the check is a constant evaluated when code is generated. The error
/// reads "an mproc target must be a plain `fn` item or a closure that captures nothing" and
/// names the closure's file and line; pass what it would capture as an argument instead:
///
/// ```compile_fail
/// let base = 10u32;
/// let mut p = mproc::Process::new(move |x: u32| x + base, (1,));
/// ```
pub trait Target<Args>: sealed::Sealed<Args> + Copy + Send + Sync + 'static {
    /// What the function returns.
    type Output;

    /// Calls the function with its arguments unpacked from the tuple.
    fn call(self, args: Args) -> Self::Output;
}

/// Only mproc implements [`Target`]: the child makes a target's value out of no bytes, which
/// is sound for `fn` items, closures that capture nothing and mproc's own zero-sized adapters
/// (`WithState`), and for no type a user could define (one that is uninhabited, say).
pub(crate) mod sealed {
    /// Implemented for the types [`Target`](super::Target) may be.
    pub trait Sealed<Args> {}
}

macro_rules! impl_target {
    ($($arg:ident),*) => {
        impl<Func, Ret, $($arg,)*> sealed::Sealed<($($arg,)*)> for Func
        where
            Func: Fn($($arg),*) -> Ret + Copy + Send + Sync + 'static,
        {}

        impl<Func, Ret, $($arg,)*> Target<($($arg,)*)> for Func
        where
            Func: Fn($($arg),*) -> Ret + Copy + Send + Sync + 'static,
        {
            type Output = Ret;

            #[allow(non_snake_case)]
            fn call(self, ($($arg,)*): ($($arg,)*)) -> Ret {
                self($($arg),*)
            }
        }
    };
}

impl_target!();
impl_target!(A1);
impl_target!(A1, A2);
impl_target!(A1, A2, A3);
impl_target!(A1, A2, A3, A4);
impl_target!(A1, A2, A3, A4, A5);
impl_target!(A1, A2, A3, A4, A5, A6);

/// A target as it crosses into a child: the offset that names its trampoline, and its name
/// for messages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TargetRef {
    pub(crate) entry: i64,
    pub(crate) name: &'static str,
}

/// The reference to `F` called with `A`.
pub(crate) fn target_ref<F, A>() -> TargetRef
where
    F: Target<A>,
    A: DeserializeOwned,
    F::Output: Serialize,
{
    // Force the zero-size check at compile time in the parent too, where the error belongs.
    let _ = image::conjure::<F>;
    TargetRef {
        entry: image::offset_of(trampoline::<F, A>),
        name: type_name::<F>(),
    }
}

/// Decodes `A`, calls `F`, encodes its result. One instance per (target, arguments) pair.
fn trampoline<F, A>(args: &[u8]) -> Result<Vec<u8>, Error>
where
    F: Target<A>,
    A: DeserializeOwned,
    F::Output: Serialize,
{
    let what = || format!("the arguments of `{}`", type_name::<F>());
    let args: A = codec::decode(args).map_err(|e| Error::codec(what(), "decode", e))?;
    let f: F = image::conjure::<F>();
    let out = f.call(args);
    // A handle in the value (a `Buffer`) sends its descriptor with it.
    let (bytes, handles) = crate::handle::collecting(|| codec::encode(&out));
    let bytes = bytes.map_err(|e| {
        Error::codec(
            format!("the return value of `{}`", type_name::<F>()),
            "encode",
            e,
        )
    })?;
    crate::handle::stash_returned(handles);
    Ok(bytes)
}

/// Encodes an argument tuple for `F` in the parent.
/// Encoded arguments and the descriptors of the handles among them.
pub(crate) type EncodedArgs = (Vec<u8>, Vec<crate::sys::fd::InternalFd>);

/// Encodes a target's arguments, with the descriptors of the handles among them.
pub(crate) fn encode_args<F, A: Serialize>(args: &A) -> Result<EncodedArgs, Error> {
    let (bytes, fds) = crate::handle::collecting(|| codec::encode(args));
    let bytes = bytes.map_err(|e| {
        Error::codec(
            format!("the arguments of `{}`", type_name::<F>()),
            "encode",
            e,
        )
    })?;
    Ok((bytes, fds))
}

/// Decodes a target's returned value in the parent, with copies of the descriptors of the
/// handles among it (`handles` is lent: it may be decoded again).
pub(crate) fn decode_output<R: DeserializeOwned>(
    bytes: &[u8],
    handles: &[crate::sys::fd::InternalFd],
    target: &str,
) -> Result<R, Error> {
    crate::handle::providing_copies(handles, || codec::decode(bytes))?
        .map_err(|e| Error::codec(format!("the return value of `{target}`"), "decode", e))
}
