//! Pool tasks as they cross into a worker: a chunk of argument tuples and the trampoline that
//! runs the target on each.
//!
//! A chunk travels as one encoded `Vec<A>`; the worker calls the target once per item, each
//! under its own `catch_unwind`, and answers with one encoded `Vec<Result<R, PanicReport>>`,
//! so a panic fails its own item and nothing else.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, PanicReport};
use crate::memfile::{self, Payload, Received};
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

/// Decodes a `Vec<A>`, calls `F` on each item, encodes the `Vec<Result<F::Output, _>>`. In a
/// pool worker (`memfile::with_payload`), arguments that came in a memory file are read where
/// they are (the file is freed once they are decoded), and a large answer is encoded straight
/// into one of the worker's memory files.
fn run_chunk<F, A>(payload: &[u8]) -> Result<Vec<u8>, Error>
where
    F: Target<A>,
    A: DeserializeOwned,
    F::Output: Serialize,
{
    let name = std::any::type_name::<F>;
    let decoded = match memfile::lent_payload() {
        // Dropped once decoded: the parent may write the file again.
        Some(file) => Received::InFile(file).decode()?,
        None => decode_items(payload),
    };
    let items: Items<A> = decoded
        .map_err(|e| Error::codec(format!("the arguments of `{}`", name()), "decode", e))?;
    let f: F = image::conjure::<F>();
    // Boxed, so a chunk of small values stays small (a report is large and rare); the bytes
    // are the same as unboxed.
    let call = |args| crate::panics::catch(|| f.call(args)).map_err(Box::new);
    let encode = |outputs: &[Result<F::Output, Box<PanicReport>>]| {
        // A handle among the values (a `Buffer`) sends its descriptor with the answer.
        crate::handle::collecting(|| memfile::encode_answer(&outputs))
    };
    // A chunk of one item (every `apply`) makes no `Vec` of it: the same bytes either way.
    let (bytes, handles) = match items {
        Items::One(args) => match call(args) {
            // Its value alone, as `[Ok(value)]` (the same bytes), without the `Err` arm's
            // code around it: the sizing pass of a small value then folds to a constant.
            Ok(value) => {
                crate::handle::collecting(|| memfile::encode_answer(&OneOk(&value)))
            }
            Err(report) => encode(std::slice::from_ref(&Err(report))),
        },
        Items::Many(items) => encode(&items.into_iter().map(call).collect::<Vec<_>>()),
    };
    let bytes = bytes
        .map_err(|e| Error::codec(format!("the return values of `{}`", name()), "encode", e))?;
    crate::handle::stash_returned(handles);
    Ok(bytes)
}

/// A chunk's encoded arguments and the descriptors of the handles among them.
pub(crate) type Encoded = (Payload, Vec<crate::sys::fd::InternalFd>);

/// Encodes a chunk of argument tuples in the parent (into a memory file when large and
/// `in_file`: see [`Payload::encode`]).
pub(crate) fn encode_chunk<A: Serialize>(
    items: &[A],
    target: &str,
    in_file: bool,
) -> Result<Encoded, Error> {
    let (bytes, fds) = crate::handle::collecting(|| Payload::encode(items, in_file));
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
    /// Kept while the answer is (it may be decoded again), listed as internal: a child forked
    /// meanwhile does not inherit them.
    pub(crate) handles: Vec<crate::sys::fd::InternalFd>,
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
    crate::handle::providing_copies(&answered.handles, || decode_chunk_bare(answered, target))?
}

/// [`decode_chunk`] within the handle scope its caller set up (for an answer that brought no
/// handles: one of none).
pub(crate) fn decode_chunk_bare<R: DeserializeOwned>(
    answered: &Answered,
    target: &str,
) -> Result<Vec<Result<R, Box<PanicReport>>>, Error> {
    answered
        .bytes
        .decode()?
        .map_err(|e| Error::codec(format!("the return values of `{target}`"), "decode", e))
}

/// The only item of a chunk's answer, decoded without a `Vec` (in the handle scope its
/// caller set up); `None` if the answer is not exactly one item or does not decode (the
/// general way, [`decode_chunk_bare`], then says what is wrong).
pub(crate) fn decode_one_bare<R: DeserializeOwned>(
    answered: &Answered,
) -> Option<Result<R, Box<PanicReport>>> {
    // Nearly always one value that did not panic: its bytes follow the sequence's count and
    // `Ok`'s index, and are decoded alone (serde's way through `Result<R, Box<PanicReport>>`
    // cost every `apply` about 20 ns more).
    if let Some(value) = answered.bytes.in_memory().and_then(one_ok) {
        return codec::decode::<R>(value).ok().map(Ok);
    }
    let decoded = answered.bytes.decode::<One<Result<R, Box<PanicReport>>>>();
    decoded.ok()?.ok().map(|One(item)| item)
}

/// A chunk's argument tuples: one (every `apply`) decoded alone after its count (`1`, as a
/// `u64`), without the sequence's visitor and its `Vec` around it; any other chunk, or one
/// that does not decode so, the general way (which says what is wrong).
fn decode_items<A: DeserializeOwned>(payload: &[u8]) -> Result<Items<A>, codec::Error> {
    if let Some((count, one)) = payload.split_first_chunk::<8>()
        && u64::from_le_bytes(*count) == 1
        && let Ok(args) = codec::decode::<A>(one)
    {
        return Ok(Items::One(args));
    }
    codec::decode(payload)
}

/// A chunk's answer of one item that did not panic, `[Ok(value)]`: the bytes of a
/// `[Result<T, Box<PanicReport>>]` holding `Ok(value)`, without the `Err` arm's code in the
/// way (sized through `Result`, a `u64` took 25 ns; issue 15, item 4).
struct OneOk<'a, T>(&'a T);

impl<T: Serialize> Serialize for OneOk<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        /// `Ok(value)`, as `Result`'s own `Serialize` writes it.
        struct Ok<'a, T>(&'a T);
        impl<T: Serialize> Serialize for Ok<'_, T> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_newtype_variant("Result", 0, "Ok", self.0)
            }
        }
        let mut seq = s.serialize_seq(Some(1))?;
        seq.serialize_element(&Ok(self.0))?;
        seq.end()
    }
}

/// The bytes of the value in an encoded answer of one item, `[Ok(value)]` (the sequence's count
/// as a `u64`, then `Ok`'s index as a `u32`); `None` for any other answer.
fn one_ok(bytes: &[u8]) -> Option<&[u8]> {
    let (count, rest) = bytes.split_first_chunk::<8>()?;
    let (ok, value) = rest.split_first_chunk::<4>()?;
    (u64::from_le_bytes(*count) == 1 && u32::from_le_bytes(*ok) == 0).then_some(value)
}

/// A chunk's argument tuples, decoded from an encoded `Vec<A>`: a chunk of one item without a
/// `Vec`.
enum Items<A> {
    One(A),
    Many(Vec<A>),
}

impl<'de, A: serde::Deserialize<'de>> serde::Deserialize<'de> for Items<A> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<A>(std::marker::PhantomData<A>);
        impl<'de, A: serde::Deserialize<'de>> serde::de::Visitor<'de> for Visit<A> {
            type Value = Items<A>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence of argument tuples")
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut seq: S,
            ) -> Result<Items<A>, S::Error> {
                let Some(first) = seq.next_element()? else {
                    return Ok(Items::Many(Vec::new()));
                };
                let Some(second) = seq.next_element()? else {
                    return Ok(Items::One(first));
                };
                // As serde's own `Vec`: no more than 1 MiB reserved on a peer's word.
                let most = (1 << 20) / std::mem::size_of::<A>().max(1);
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(most) + 2);
                items.extend([first, second]);
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Items::Many(items))
            }
        }
        d.deserialize_seq(Visit(std::marker::PhantomData))
    }
}

/// A sequence of exactly one value, decoded as the value (the answer of a chunk of one
/// item, an encoded `Vec` of one result).
struct One<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for One<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match Items::deserialize(d)? {
            Items::One(item) => Ok(One(item)),
            Items::Many(items) => Err(D::Error::invalid_length(
                items.len(),
                &"a sequence of one value",
            )),
        }
    }
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

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::os::fd::AsFd;

    use super::*;
    use crate::memfile::{AnswerPlace, Mapped, Spares};

    /// The quick ways of a one-item chunk (`OneOk`, `one_ok`, `decode_items`) make and read
    /// the very bytes the general ways do, for values of every shape; anything else goes the
    /// general way.
    #[test]
    fn a_one_item_chunk_quickly_encoded_and_decoded_is_the_general_ways_bytes() {
        fn check<T>(value: T)
        where
            T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + Clone,
        {
            let general = codec::encode(&vec![Ok::<T, Box<PanicReport>>(value.clone())]).unwrap();
            assert_eq!(codec::encode(&OneOk(&value)).unwrap(), general);
            let answered = Answered::from(general.clone());
            let quick = one_ok(&general).map(|b| codec::decode::<T>(b).unwrap());
            assert_eq!(quick, Some(value.clone()));
            assert!(matches!(decode_one_bare::<T>(&answered), Some(Ok(v)) if v == value));
            let args = codec::encode(&vec![value.clone()]).unwrap();
            assert!(matches!(decode_items::<T>(&args), Ok(Items::One(v)) if v == value));
            let two = codec::encode(&vec![value.clone(), value.clone()]).unwrap();
            assert!(matches!(decode_items::<T>(&two), Ok(Items::Many(v)) if v.len() == 2));
        }
        check(7u64);
        check(String::from("seven"));
        check(vec![1.5f64, -2.0, f64::MAX]);
        check((3u8, String::from("x"), Some(vec![1u16, 2])));
        check(Vec::<u8>::new());
        // Not one `Ok` (in slices, as the pool encodes them: an array is a tuple, with no
        // count): a panic's report, two items, none.
        let panicked = PanicReport {
            message: "boom".into(),
            location: None,
            process: "a worker".into(),
            backtrace: None,
        };
        let report = codec::encode(&vec![Err::<u64, _>(Box::new(panicked))]).unwrap();
        assert_eq!(one_ok(&report), None);
        let two = codec::encode(&vec![Ok::<u64, Box<PanicReport>>(1), Ok(2)]).unwrap();
        assert_eq!(one_ok(&two), None);
        let none = codec::encode(&Vec::<Result<u64, Box<PanicReport>>>::new()).unwrap();
        assert_eq!(one_ok(&none), None);
        // Arguments that do not decode as the tuple go the general way, which says so.
        assert!(decode_items::<(u64,)>(&[1, 0, 0, 0, 0, 0, 0, 0, 9]).is_err());
    }

    thread_local! {
        /// The parent's memory files, as a worker's task sees them from inside.
        static THEIRS: RefCell<Spares> = RefCell::new(Spares::default());
        /// Whether they were all free when the target ran.
        static FREE_WHEN_RUN: Cell<Option<bool>> = const { Cell::new(None) };
        /// Serializations of a `Flaky` so far.
        static PASSES: Cell<u32> = const { Cell::new(0) };
    }

    fn double(v: Vec<f64>) -> Vec<f64> {
        FREE_WHEN_RUN.set(Some(THEIRS.with_borrow(Spares::all_free)));
        v.iter().map(|x| x * 2.0).collect()
    }

    /// A large value whose `Serialize` panics on its second pass (the one that writes).
    struct Flaky;

    impl Serialize for Flaky {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            PASSES.set(PASSES.get() + 1);
            assert!(PASSES.get() % 2 == 1, "the writing pass");
            serde_bytes::Bytes::new(&[7; 400_000]).serialize(s)
        }
    }

    fn flaky() -> Flaky {
        Flaky
    }

    /// `run_chunk` for the target `F` (a `fn` item, named by a value of its type).
    fn run_with<F, A>(_: F, payload: &[u8]) -> Result<Vec<u8>, Error>
    where
        F: Target<A>,
        A: DeserializeOwned,
        F::Output: Serialize,
    {
        run_chunk::<F, A>(payload)
    }

    /// `payload` in one of the parent's files (`THEIRS`), as a worker receives it.
    fn sent(payload: &[u8], mapped: &mut Mapped) -> memfile::InFile {
        let file = THEIRS.with_borrow_mut(|theirs| {
            theirs
                .write(payload.len(), |b| {
                    b.copy_from_slice(payload);
                    Ok(())
                })
                .unwrap()
        });
        mapped.keep(file.as_fd(), payload.len() as u64).unwrap()
    }

    fn id(f: &impl AsFd) -> (u64, u64) {
        crate::sys::shm::file_identity(f.as_fd()).unwrap()
    }

    /// A chunk of one item decodes without a `Vec`, others as before; the answer of one item,
    /// encoded from a slice, is the bytes of a `Vec` of it.
    #[test]
    fn chunks_of_one_item_and_of_many_decode_alike() {
        for n in [0u64, 1, 2, 3, 1000] {
            let args: Vec<(u64, String)> = (0..n).map(|i| (i, i.to_string())).collect();
            let bytes = codec::encode(&args).unwrap();
            match codec::decode::<Items<(u64, String)>>(&bytes).unwrap() {
                Items::One(item) => assert_eq!((n, vec![item]), (1, args)),
                Items::Many(items) => assert!(n != 1 && items == args),
            }
        }
        let one: Result<u64, Box<PanicReport>> = Ok(7);
        assert_eq!(
            codec::encode(std::slice::from_ref(&one)).unwrap(),
            codec::encode(&vec![one]).unwrap()
        );
        // Garbage is an error either way, never a panic.
        assert!(codec::decode::<Items<(u64, String)>>(&[0xff; 9]).is_err());
    }

    #[test]
    fn a_chunk_in_a_file_frees_it_before_running_and_a_large_answer_goes_into_a_file() {
        let _alone = memfile::TASK_FILE_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let numbers: Vec<f64> = (0..100_000).map(f64::from).collect();
        // As the dispatcher sends it when the caller could not encode it into a file.
        let payload = encode_chunk(&[(numbers.clone(),)], "double", true).unwrap().0.into_vec().unwrap();
        let mut mapped = Mapped::default();
        memfile::lend_files(Spares::default());
        let mut answers = Vec::new();
        for _ in 0..2 {
            let task = sent(&payload, &mut mapped);
            FREE_WHEN_RUN.set(None);
            let (bytes, place) =
                memfile::with_payload(Some(task), || run_with(double, &[]));
            assert_eq!(FREE_WHEN_RUN.get(), Some(true), "decoded, then freed, then run");
            assert!(bytes.unwrap().is_empty(), "the answer went into a file");
            let AnswerPlace::File(answer, len) = place else {
                panic!("{place:?}")
            };
            let answered = Received::InFile(mapped.keep(answer.as_fd(), len as u64).unwrap());
            let got: Vec<Result<Vec<f64>, Box<PanicReport>>> =
                answered.decode().unwrap().unwrap();
            assert!(matches!(&got[..], [Ok(v)] if *v == double(numbers.clone())));
            // Dropped, read: the worker's next large answer goes in the same file.
            drop(answered);
            answers.push(id(&answer));
        }
        assert_eq!(answers[0], answers[1], "the worker's file was reused");
        // A small answer, from a chunk whose arguments came inline: bytes, no file.
        let small = encode_chunk(&[(vec![1.5],)], "double", true).unwrap().0.into_vec().unwrap();
        let (bytes, place) = memfile::with_payload(None, || run_with(double, &small));
        assert!(matches!(place, AnswerPlace::Bytes));
        let got: Vec<Result<Vec<f64>, Box<PanicReport>>> =
            Received::Bytes(bytes.unwrap()).decode().unwrap().unwrap();
        assert!(matches!(&got[..], [Ok(v)] if *v == vec![3.0]));
        // An answer whose encoding panics: the worker keeps its files.
        let unit = encode_chunk(&[()], "flaky", true).unwrap().0.into_vec().unwrap();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            memfile::with_payload(None, || run_with(flaky, &unit))
        }));
        assert!(unwound.is_err());
        let task = sent(&payload, &mut mapped);
        let (_, place) = memfile::with_payload(Some(task), || run_with(double, &[]));
        let AnswerPlace::File(answer, _) = place else {
            panic!("{place:?}")
        };
        assert_eq!(id(&answer), answers[0], "the files survived the panic");
    }

    /// A payload its task left unread (an entry that is not a chunk's trampoline, or a task
    /// that unwound first) is let go when the task ends: its file is free again for its
    /// sender, and the next task is not lent it (it would decode the wrong arguments).
    #[test]
    fn a_payload_left_unread_is_let_go_with_its_task() {
        let _alone = memfile::TASK_FILE_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let numbers: Vec<f64> = (0..100_000).map(f64::from).collect();
        let payload = encode_chunk(&[(numbers,)], "double", true).unwrap().0.into_vec().unwrap();
        let mut mapped = Mapped::default();
        let lent_next = || memfile::with_payload(None, || memfile::lent_payload().is_some()).0;
        let task = sent(&payload, &mut mapped);
        let ((), _) = memfile::with_payload(Some(task), || ());
        assert!(THEIRS.with_borrow(Spares::all_free), "let go once its task ended");
        assert!(!lent_next(), "the next task is lent nothing");
        let task = sent(&payload, &mut mapped);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            memfile::with_payload(Some(task), || panic!("before reading its arguments"))
        }));
        assert!(unwound.is_err());
        assert!(THEIRS.with_borrow(Spares::all_free), "let go once its task unwound");
        assert!(!lent_next(), "the next task is lent nothing");
    }
}
