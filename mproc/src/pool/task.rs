//! Pool tasks as they cross into a worker: a chunk of argument tuples and the trampoline that
//! runs the target on each.
//!
//! A chunk travels as one encoded `Vec<A>`; the worker calls the target once per item, each
//! under its own `catch_unwind`, and answers with one encoded `Vec<Result<R, PanicReport>>`,
//! so a panic fails its own item and nothing else.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, PanicReport};
use crate::memfile::Received;
use crate::start::role::{self, RoleFn};
use crate::sys::image;
use crate::wire::codec;
use crate::wire::target::Target;

/// The chunk trampoline's offset for target `F` called with `A`.
pub(crate) fn chunk_entry<F, A>() -> i64
where
    F: Target<A>,
    A: DeserializeOwned,
    F::Output: Serialize,
{
    let _ = image::conjure::<F>;
    image::offset_of(run_chunk::<F, A>)
}

/// Decodes a `Vec<A>`, calls `F` on each item, encodes the `Vec<Result<F::Output, _>>`.
fn run_chunk<F, A>(payload: &[u8]) -> Result<Vec<u8>, Error>
where
    F: Target<A>,
    A: DeserializeOwned,
    F::Output: Serialize,
{
    let name = std::any::type_name::<F>;
    let items: Vec<A> = codec::decode(payload)
        .map_err(|e| Error::codec(format!("the arguments of `{}`", name()), "decode", e))?;
    let f: F = image::conjure::<F>();
    // Boxed, so a chunk of small values stays small (a report is large and rare); the bytes
    // are the same as unboxed.
    let outputs: Vec<Result<F::Output, Box<PanicReport>>> = items
        .into_iter()
        .map(|args| crate::panics::catch(|| f.call(args)).map_err(Box::new))
        .collect();
    // A handle among the values (a `Buffer`) sends its descriptor with the answer.
    let (bytes, handles) = crate::handle::collecting(|| codec::encode(&outputs));
    let bytes = bytes
        .map_err(|e| Error::codec(format!("the return values of `{}`", name()), "encode", e))?;
    crate::handle::stash_returned(handles);
    Ok(bytes)
}

/// A chunk's encoded arguments and the descriptors of the handles among them.
pub(crate) type Encoded = (Vec<u8>, Vec<std::os::fd::OwnedFd>);

/// Encodes a chunk of argument tuples in the parent.
pub(crate) fn encode_chunk<A: Serialize>(items: &[A], target: &str) -> Result<Encoded, Error> {
    // Into a kept buffer when large (given back when its chunk is dropped).
    let (bytes, fds) = crate::handle::collecting(|| {
        let mut out = crate::memfile::buffer(codec::encoded_len(items)?);
        codec::encode_into(&mut out, items).map(|()| out)
    });
    let bytes =
        bytes.map_err(|e| Error::codec(format!("the arguments of `{target}`"), "encode", e))?;
    Ok((bytes, fds))
}

/// A chunk's encoded results (a large answer left in the memory file it came in, decoded
/// from there), and the descriptors of the handles among its values (a
/// [`Buffer`](crate::Buffer) a task returned), in index order.
#[derive(Debug, Default)]
pub(crate) struct Answered {
    pub(crate) bytes: Received,
    pub(crate) handles: Vec<std::os::fd::OwnedFd>,
}

impl From<Vec<u8>> for Answered {
    fn from(bytes: Vec<u8>) -> Answered {
        Answered {
            bytes: Received::Bytes(bytes),
            handles: Vec::new(),
        }
    }
}

/// Decodes a chunk's answer in the parent: one result per item. Its handles' descriptors are
/// lent, not taken (it may be decoded again).
pub(crate) fn decode_chunk<R: DeserializeOwned>(
    answered: &Answered,
    target: &str,
) -> Result<Vec<Result<R, Box<PanicReport>>>, Error> {
    crate::handle::providing_copies(&answered.handles, || answered.bytes.decode())??
        .map_err(|e| Error::codec(format!("the return values of `{target}`"), "decode", e))
}

/// The initializer's trampoline: an ordinary target entry (its value, `()`, is ignored).
pub(crate) fn init_entry<F, A>() -> i64
where
    F: Target<A, Output = ()>,
    A: DeserializeOwned,
{
    crate::wire::target::target_ref::<F, A>().entry
}

/// The entry a pool worker's start message names: the record of the pool worker's role (see
/// `start::role`), which the start layer of the child enters.
pub(crate) fn worker_entry() -> i64 {
    fn serve_pool(_: &[u8]) -> Result<Vec<u8>, Error> {
        role::claim(RoleFn::Worker(super::worker::serve))
    }
    role::offset_of(serve_pool)
}
