//! A value that a receiver would refuse (nested too deep) is refused by the sender instead,
//! before anything is sent: the put fails with a codec error and the queue goes on working.

use serde::{Deserialize, Serialize};

use mproc::{ErrorKind, Queue, StartMethod};

use crate::common::{PATIENCE, start};

/// A linked list: one level of nesting per node, past the wire format's 128 at 200 nodes.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum List {
    Cons(u8, Box<List>),
    Nil,
}

fn list(n: usize) -> List {
    (0..n).fold(List::Nil, |tail, i| List::Cons(i as u8, Box::new(tail)))
}

/// Puts a list too deep to decode, then a fine one; returns the first put's error message.
fn put_too_deep_then_fine(q: Queue<List>) -> String {
    let e = q.put(list(200)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Codec(_)), "{e}");
    q.put(list(3)).unwrap();
    e.to_string()
}

fn a_put_too_deep_to_decode_fails_and_sends_nothing(m: StartMethod) {
    let q = Queue::new().unwrap();
    let mut p = start(m, put_too_deep_then_fine, (q.clone(),));
    // The child's refused put sent nothing: the first item here is its fine one.
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), list(3));
    let e = p.join_timeout(PATIENCE).unwrap();
    assert!(e.contains("deeper than 128 levels"), "{e}");
    assert!(e.contains("encode"), "{e}");
    assert!(q.is_empty());
    // The same here, and the queue still carries the deepest list it can.
    assert!(q.put(list(128)).is_err());
    q.put(list(127)).unwrap();
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), list(127));
    assert!(q.try_get().unwrap().is_none());
}

per_start_method!(a_put_too_deep_to_decode_fails_and_sends_nothing);
