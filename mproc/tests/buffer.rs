//! `Buffer`: read-only shared data passed by handle, under every start method.

use std::sync::OnceLock;

use mproc::{Buffer, ErrorKind, Pool, Process, Queue, StartMethod, pipe};

use crate::common::PATIENCE;

fn table(len: usize) -> Buffer<u64> {
    Buffer::new_with(len, |t: &mut [u64]| {
        for (i, x) in t.iter_mut().enumerate() {
            *x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    })
    .unwrap()
}

fn expected_sum(from: usize, to: usize) -> u64 {
    (from..to).fold(0u64, |s, i| {
        s.wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    })
}

fn sum_range(t: Buffer<u64>, from: usize, to: usize) -> u64 {
    t[from..to].iter().fold(0u64, |s, &x| s.wrapping_add(x))
}

/// A child and every pool task read the one table they were handed (4 MiB), including
/// after the parent dropped its own handles before the child ran.
fn a_buffer_reaches_children_and_pool_tasks(m: StartMethod) {
    let len = 1 << 19;
    let t = table(len);
    let mut p = Process::new(sum_range, (t.clone(), 0, len)).start_method(m);
    p.start().unwrap();
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), expected_sum(0, len));

    let mut late = Process::new(sum_range, (table(len), 100, 200)).start_method(m);
    late.start().unwrap();
    assert_eq!(late.join_timeout(PATIENCE).unwrap(), expected_sum(100, 200));

    let pool = Pool::builder()
        .processes(2)
        .start_method(m)
        .build()
        .unwrap();
    let step = len / 8;
    let parts = (0..8).map(|k| (t.clone(), k * step, (k + 1) * step));
    let sums = pool.starmap(sum_range, parts).unwrap();
    assert_eq!(
        sums.iter().fold(0u64, |s, &x| s.wrapping_add(x)),
        expected_sum(0, len)
    );
    // An empty one, and one of another type.
    assert_eq!(pool.apply(sum_range, (table(0), 0, 0)).unwrap(), 0);
    let bytes = Buffer::from_slice(b"shared").unwrap();
    assert_eq!(pool.apply(text_of, (bytes,)).unwrap(), "shared");
}

fn text_of(b: Buffer<u8>) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

/// Sums every buffer it receives on `rx` and answers on `tx`, until the pipe closes.
fn summer(rx: mproc::Connection<Buffer<u64>>, tx: mproc::Connection<u64>) {
    while let Ok(t) = rx.recv() {
        let len = t.len();
        tx.send(sum_range(t, 0, len)).unwrap();
    }
}

/// Buffers sent on a pipe to a running child, one after another, each dropped by the sender
/// as soon as it is sent.
fn a_buffer_crosses_a_pipe(m: StartMethod) {
    let (to_child, from_parent) = pipe::<Buffer<u64>>().unwrap();
    let (to_parent, from_child) = pipe::<u64>().unwrap();
    let mut p = Process::new(summer, (from_parent, to_parent)).start_method(m);
    p.start().unwrap();
    for len in [0, 1, 4096, 100_000] {
        to_child.send(table(len)).unwrap();
        assert_eq!(
            from_child.recv_timeout(PATIENCE).unwrap(),
            expected_sum(0, len)
        );
    }
    drop(to_child);
    p.join_timeout(PATIENCE).unwrap();
}

fn give_back(t: Buffer<u64>) -> Buffer<u64> {
    t
}

/// Makes a table in the worker and returns it.
fn make_table(len: usize) -> (Buffer<u64>, u32) {
    (table(len), std::process::id())
}

/// Every third number comes back with a table of that length.
fn maybe_table(n: usize) -> (usize, Option<Buffer<u64>>) {
    (n, n.is_multiple_of(3).then(|| table(n)))
}

/// A map whose chunks come back some with handles and some without (the two are decoded
/// differently) gives every value and every table, in order, and each time its result is
/// read: chunks of 1 and 2 mix the two kinds; of 5, every chunk holds a table.
fn a_map_mixing_chunks_with_and_without_handles(m: StartMethod) {
    let pool = Pool::builder()
        .processes(2)
        .start_method(m)
        .build()
        .unwrap();
    for size in [1, 2, 5] {
        let r = pool.chunksize(size).map_async(maybe_table, 0..200).unwrap();
        for _ in 0..2 {
            let got = r.get_timeout(PATIENCE).unwrap();
            assert_eq!(got.len(), 200);
            for (n, (v, t)) in got.into_iter().enumerate() {
                assert_eq!(v, n);
                match t {
                    Some(t) => {
                        assert!(n.is_multiple_of(3));
                        assert_eq!(sum_range(t, 0, n), expected_sum(0, n));
                    }
                    None => assert!(!n.is_multiple_of(3)),
                }
            }
        }
    }
}

/// A large result that also holds a buffer (the bytes travel in a memory file, the buffer's
/// descriptor beside the file's).
fn bytes_and_table(n: usize) -> (Vec<u8>, Buffer<u64>) {
    (vec![5; n], table(n / 8))
}

/// A task's result may hold buffers: one it was given, or one it made (which outlives the
/// worker that made it). Chunks of them through `map`, too.
fn a_buffer_comes_back_from_a_task(m: StartMethod) {
    let pool = Pool::builder()
        .processes(2)
        .start_method(m)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    let t = table(1000);
    let back = pool.apply(give_back, (t.clone(),)).unwrap();
    assert_eq!(&back[..], &t[..]);
    let (made, worker) = pool.apply(make_table, (100_000,)).unwrap();
    // Its worker has left (one task per child): the table stays.
    crate::common::wait_until("the worker that made it has left", || {
        crate::common::has_ended(worker)
    });
    assert_eq!(sum_range(made, 0, 100_000), expected_sum(0, 100_000));
    let tables = pool
        .chunksize(3)
        .map(make_table, [1, 10, 100, 1000, 0, 5, 7])
        .unwrap();
    for ((t, _), n) in tables.iter().zip([1, 10, 100, 1000, 0, 5, 7]) {
        assert_eq!(t.len(), n);
        assert_eq!(sum_range(t.clone(), 0, n), expected_sum(0, n));
    }
    for n in [1 << 20, 300_000, 100] {
        let (bytes, t) = pool.apply(bytes_and_table, (n,)).unwrap();
        assert_eq!(bytes, vec![5; n]);
        assert_eq!(sum_range(t, 0, n / 8), expected_sum(0, n / 8));
    }
    // Got twice from one result: each get has its own handle.
    let r = pool.apply_async(make_table, (10,)).unwrap();
    let (a, _) = r.get_timeout(PATIENCE).unwrap();
    let (b, _) = r.get_timeout(PATIENCE).unwrap();
    drop(a);
    assert_eq!(sum_range(b, 0, 10), expected_sum(0, 10));
}

fn small_buffer(n: u64) -> Buffer<u64> {
    Buffer::from_slice(&[n, n + 1]).unwrap()
}

fn first(b: Buffer<u64>) -> u64 {
    b[0]
}

/// Many handles in one chunk: up to the 253 descriptors one message can carry, each way, they
/// travel; past that, the chunk fails with a sentence (it neither hangs nor takes the pool
/// down).
fn many_buffers_in_one_chunk(m: StartMethod) {
    let pool = Pool::builder()
        .processes(2)
        .start_method(m)
        .build()
        .unwrap();
    let back = pool.chunksize(200).map(small_buffer, 0..400).unwrap();
    for (i, b) in back.iter().enumerate() {
        assert_eq!(&b[..], [i as u64, i as u64 + 1]);
    }
    assert_eq!(
        pool.chunksize(200).map(first, back.clone()).unwrap(),
        (0..400).collect::<Vec<u64>>()
    );
    let e = pool
        .chunksize(300)
        .map_async(small_buffer, 0..300)
        .unwrap()
        .get_timeout(PATIENCE)
        .unwrap_err();
    assert!(e.to_string().contains("at most 253"), "{e}");
    let e = pool
        .chunksize(300)
        .map_async(first, back[..300].to_vec())
        .unwrap()
        .get_timeout(PATIENCE)
        .unwrap_err();
    assert!(e.to_string().contains("at most 253"), "{e}");
    assert_eq!(pool.apply(first, (back[7].clone(),)).unwrap(), 7);
}

/// A process's target may return buffers too; joined twice, each join gets its own.
fn a_process_returns_a_buffer(m: StartMethod) {
    let mut p = Process::new(make_table, (50_000,)).start_method(m);
    p.start().unwrap();
    let (t, _) = p.join_timeout(PATIENCE).unwrap();
    let (again, _) = p.join_timeout(PATIENCE).unwrap();
    drop(t);
    assert_eq!(sum_range(again, 0, 50_000), expected_sum(0, 50_000));
}

/// Where a buffer cannot go, a clear error: a queue item. (One received as another element
/// type: `buffer::tests` in the crate.)
fn where_a_buffer_cannot_go(m: StartMethod) {
    let q = Queue::<Buffer<u64>>::new().unwrap();
    let e = q.put(table(3)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Codec(_)), "{e}");
    assert!(e.to_string().contains("Connection"), "{e}");
    let pool = Pool::builder()
        .processes(1)
        .start_method(m)
        .build()
        .unwrap();
    assert_eq!(
        pool.apply(sum_range, (table(3), 0, 3)).unwrap(),
        expected_sum(0, 3)
    );
}

static INHERITED: OnceLock<Buffer<u64>> = OnceLock::new();

/// Reads the buffer it inherited through fork, then tries to pass it on.
fn read_inherited(c: mproc::Connection<Buffer<u64>>) -> (u64, String) {
    let t = INHERITED.get().unwrap();
    let sum = sum_range(t.clone(), 0, t.len());
    let e = c.send(t.clone()).unwrap_err();
    (sum, e.to_string())
}

/// A fork child can read a buffer it inherited without being passed it, but not pass it on.
#[test]
fn an_inherited_buffer_is_read_but_not_passed_on() {
    let t = INHERITED.get_or_init(|| table(1000));
    let (a, _b) = pipe::<Buffer<u64>>().unwrap();
    let mut p = Process::new(read_inherited, (a,)).start_method(StartMethod::Fork);
    p.start().unwrap();
    let (sum, e) = p.join_timeout(PATIENCE).unwrap();
    assert_eq!(sum, expected_sum(0, t.len()));
    assert!(e.contains("inherited through fork"), "{e}");
}

per_start_method!(
    a_buffer_reaches_children_and_pool_tasks,
    a_buffer_comes_back_from_a_task,
    a_map_mixing_chunks_with_and_without_handles,
    a_process_returns_a_buffer,
    many_buffers_in_one_chunk,
    a_buffer_crosses_a_pipe,
    where_a_buffer_cannot_go,
);
