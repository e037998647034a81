//! The table alone, in a plain buffer: order, counters, changes stopped after each store,
//! clears, refused takes, and scribbled memory.

use super::*;

/// Takes a value out as its bytes (a `Dict` decodes it instead).
fn copy(value: &[u8]) -> Result<Vec<u8>, Error> {
    Ok(value.to_vec())
}

fn area(slots: usize, cap: usize) -> Vec<u8> {
    let mut m = vec![0u8; bytes_for(slots, cap).unwrap()];
    init(&mut m, slots, cap, records_for(slots));
    m
}

/// What the next locker after a kill sees: its length and entries.
fn view(m: &mut [u8]) -> (usize, Vec<Entry>) {
    let t = Table::open(m, true).unwrap();
    (t.len().unwrap(), t.entries().unwrap())
}

/// A xorshift step: the tests' dice.
fn roll(r: &mut u64) -> u64 {
    *r ^= *r << 13;
    *r ^= *r >> 7;
    *r ^= *r << 17;
    *r
}

/// Python's dict, as the table must behave: entries in insertion order, an update keeps its
/// key's place, a removed key that comes back goes last.
#[derive(Clone, Debug, Default, PartialEq)]
struct Model(Vec<Entry>);

impl Model {
    fn insert(&mut self, k: &[u8], v: &[u8]) -> Option<Vec<u8>> {
        match self.0.iter_mut().find(|(key, _)| key == k) {
            Some((_, old)) => Some(std::mem::replace(old, v.to_vec())),
            None => {
                self.0.push((k.to_vec(), v.to_vec()));
                None
            }
        }
    }

    fn remove(&mut self, k: &[u8]) -> Option<Vec<u8>> {
        let at = self.0.iter().position(|(key, _)| key == k)?;
        Some(self.0.remove(at).1)
    }

    fn bytes(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

#[test]
fn inserts_gets_removes_and_compacts() {
    let mut m = area(16, 256);
    let mut t = Table::open(&mut m, false).unwrap();
    for round in 0..50u32 {
        let k = (round % 5).to_le_bytes();
        let v = vec![round as u8; 20];
        t.insert(&k, &v, copy).unwrap();
        assert_eq!(t.get(&k).unwrap(), Some(v));
    }
    assert_eq!(t.len().unwrap(), 5);
    assert_eq!(t.remove(&3u32.to_le_bytes(), copy).unwrap().map(|v| v[0]), Some(48));
    assert_eq!(t.get(&3u32.to_le_bytes()).unwrap(), None);
    let keys: Vec<_> = t.entries().unwrap().into_iter().map(|(k, _)| k[0]).collect();
    assert_eq!(keys, [0, 1, 2, 4], "insertion order, kept across updates and compaction");
    // Full: 12 of 16 slots at most.
    t.clear().unwrap();
    for k in 0..12u32 {
        t.insert(&k.to_le_bytes(), b"x", copy).unwrap();
    }
    let e = t.insert(&99u32.to_le_bytes(), b"x", copy).unwrap_err();
    assert_eq!(*e.kind(), ErrorKind::Full);
}

/// Updates, removes, keys removed and inserted again, clears, and the compactions all of
/// these bring (through the arena, the records and the holes): the entries are always
/// Python's dict's, in its order, and what is refused as full is only what could not fit.
#[test]
fn order_is_pythons_through_updates_removes_and_compactions() {
    let (slots, cap) = (16, 192);
    let max_len = records_for(slots);
    let mut m = area(slots, cap);
    let mut model = Model::default();
    let (mut r, mut compactions) = (0x2545_f491_4f6c_dd1du64, 0);
    for step in 0..30_000u32 {
        let key = [(roll(&mut r) % 16) as u8];
        let mut t = Table::open(&mut m, false).unwrap();
        let side = t.w(ACTIVE).unwrap();
        match r >> 58 {
            0 => {
                t.clear().unwrap();
                model.0.clear();
            }
            1..=24 => assert_eq!(t.remove(&key, copy).unwrap(), model.remove(&key), "step {step}"),
            _ => {
                let v = vec![step as u8; (r >> 32) as usize % 30];
                match t.insert(&key, &v, copy) {
                    Ok(old) => assert_eq!(old, model.insert(&key, &v), "step {step}"),
                    Err(e) => {
                        assert_eq!(*e.kind(), ErrorKind::Full, "step {step}");
                        // Full only when it could not fit even after a compaction (which
                        // keeps the value it replaces until the commit).
                        let adds = !model.0.iter().any(|(k, _)| k[..] == key);
                        assert!(
                            (adds && model.0.len() == max_len) || model.bytes() + 1 + v.len() > cap,
                            "step {step}: refused but it fits"
                        );
                    }
                }
            }
        }
        compactions += usize::from(t.w(ACTIVE).unwrap() != side);
        assert_eq!(t.len().unwrap(), model.0.len(), "step {step}");
        assert_eq!(t.entries().unwrap(), model.0, "step {step}");
        assert!(t.used().unwrap() - t.len().unwrap() <= t.len().unwrap().max(3) + 1);
    }
    assert!(compactions > 1000, "{compactions} compactions");
}

/// The counters stay true through churn that compacts again and again (found when a
/// stale tombstone count, read before a compaction, was written back after it).
#[test]
fn counters_stay_true_through_compactions() {
    let mut m = area(16, 512);
    let mut t = Table::open(&mut m, false).unwrap();
    for i in 0..2000u32 {
        t.insert(&i.to_le_bytes(), &[1; 20], copy).unwrap();
        if i >= 5 {
            t.remove(&(i - 5).to_le_bytes(), copy).unwrap();
        }
        let live = t.entries().unwrap().len();
        assert_eq!(t.len().unwrap(), live);
        assert!(t.used().unwrap() <= 12, "at {i}");
    }
    Table::open(&mut m, true).unwrap();
}

/// One change to a table, as a plain function.
type Step = fn(&mut Table<'_>) -> Result<(), Error>;

/// A writer stopped after each of its stores in turn (an update, an insert that compacts,
/// a remove, a remove that compacts, a clear): the next opener, told its owner died, finds
/// the change either wholly made or not made at all.
#[test]
fn a_change_stopped_anywhere_is_all_or_nothing() {
    let mut start = area(8, 64);
    {
        let mut t = Table::open(&mut start, false).unwrap();
        // In a later epoch than the first: a change finished by the next opener is
        // written in the epoch it was made in.
        t.insert(b"z", b"0", copy).unwrap();
        t.clear().unwrap();
        t.insert(b"a", b"1", copy).unwrap();
        t.insert(b"b", b"2", copy).unwrap();
        t.remove(b"b", copy).unwrap();
        t.insert(b"c", &[7; 20], copy).unwrap();
        t.insert(b"e", b"5", copy).unwrap();
        // Two holes beside three entries: the next remove compacts first (a quarter of 6
        // records are spare).
        t.insert(b"f", b"6", copy).unwrap();
        t.remove(b"f", copy).unwrap();
        assert_eq!((t.used().unwrap(), t.len().unwrap()), (5, 3));
    }
    let changes: [(&str, Step); 6] = [
        ("update", |t| t.insert(b"a", b"3", copy).map(drop)),
        // 64-byte arenas, 29 used plus dead bytes: this one compacts first.
        ("insert", |t| t.insert(b"d", &[9; 30], copy).map(drop)),
        ("insert into a free slot", |t| t.insert(b"d", b"4", copy).map(drop)),
        ("remove", |t| t.remove(b"a", copy).map(drop)),
        ("clear", |t| t.clear()),
        ("update and remove", |t| {
            t.insert(b"c", b"8", copy)?;
            t.remove(b"e", copy).map(drop)
        }),
    ];
    let before = view(&mut start.clone());
    for (name, change) in changes {
        let mut done = start.clone();
        change(&mut Table::open(&mut done, false).unwrap()).unwrap();
        let after = view(&mut done);
        assert_ne!(before, after, "{name} changes something");
        for n in 0.. {
            let mut m = start.clone();
            stop::AFTER.set(Some(n));
            let finished = change(&mut Table::open(&mut m, false).unwrap()).is_ok();
            stop::AFTER.set(None);
            let seen = view(&mut m);
            if name == "update and remove" {
                // Two changes: each all or nothing, the first before the second.
                let mut middle = start.clone();
                Table::open(&mut middle, false).unwrap().insert(b"c", b"8", copy).unwrap();
                let middle = view(&mut middle);
                assert!(seen == before || seen == middle || seen == after, "{name} after {n}: {seen:?}");
            } else {
                assert!(seen == before || seen == after, "{name} stopped after {n} stores: {seen:?}");
            }
            if finished {
                assert_eq!(seen, after);
                break;
            }
        }
    }
}

/// Random inserts, updates, removes and clears, each stopped after a random number of its
/// stores (as a SIGKILL would stop it, inside compactions too): the next locker, told its
/// owner died, always finds Python's dict as it was before the change or after it, in
/// order, and the table goes on from there.
/// A change to a table.
type Change<'a> = dyn Fn(&mut Table<'_>) -> Result<(), Error> + 'a;

#[test]
fn changes_stopped_at_random_leave_the_model_before_or_after() {
    let mut m = area(16, 160);
    let mut model = Model::default();
    let mut r = 0x9e37_79b9_7f4a_7c15u64;
    let (mut stopped, mut finished) = (0, 0);
    for step in 0..20_000u32 {
        let key = [(roll(&mut r) % 14) as u8];
        let v = vec![step as u8; (r >> 40) as usize % 24];
        let mut after = model.clone();
        let change: Box<Change<'_>> = match r >> 59 {
            0 => {
                after.0.clear();
                Box::new(|t| t.clear())
            }
            1..=13 => {
                after.remove(&key);
                Box::new(|t| t.remove(&key, copy).map(drop))
            }
            _ => {
                after.insert(&key, &v);
                Box::new(|t| t.insert(&key, &v, copy).map(drop))
            }
        };
        stop::AFTER.set(Some((roll(&mut r) % 48) as usize));
        let done = Table::open(&mut m, false).and_then(|mut t| change(&mut t));
        stop::AFTER.set(None);
        let (len, seen) = view(&mut m);
        assert_eq!(len, seen.len(), "step {step}");
        match done {
            Err(e) if *e.kind() == ErrorKind::Full => assert_eq!(seen, model.0, "step {step}"),
            Ok(()) => {
                assert_eq!(seen, after.0, "step {step}: finished");
                finished += 1;
            }
            Err(_) => {
                assert!(seen == model.0 || seen == after.0, "step {step}: {seen:?}");
                stopped += 1;
            }
        }
        model = Model(seen);
    }
    assert!(stopped > 5000 && finished > 5000, "{stopped} stopped, {finished} finished");
}

/// A clear writes the header only, whatever the capacity (it zeroed the whole table,
/// making a large container's table resident at every clear); the slots it leaves behind
/// read as empty, through inserts, removes and compactions that follow, as a model
/// `HashMap` says.
#[test]
fn a_clear_touches_the_header_only_and_leaves_nothing_behind() {
    let mut m = area(64, 4096);
    let mut model = std::collections::HashMap::<u8, Vec<u8>>::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for step in 0..20_000u32 {
        let key = (roll(&mut rng) % 60) as u8;
        let mut t = Table::open(&mut m, false).unwrap();
        match rng >> 60 {
            0 => {
                let tables = HEADER..t.arena_at(0);
                let before = t.m[tables.clone()].to_vec();
                t.clear().unwrap();
                assert!(t.m[tables] == before[..], "step {step}: a clear wrote slots");
                model.clear();
            }
            1..=5 => assert_eq!(t.remove(&[key], copy).unwrap(), model.remove(&key)),
            _ => {
                let v = vec![step as u8; (rng >> 40) as usize % 40];
                match t.insert(&[key], &v, copy) {
                    Ok(old) => assert_eq!(old, model.insert(key, v)),
                    Err(e) => assert_eq!(*e.kind(), ErrorKind::Full, "step {step}"),
                }
            }
        }
        assert_eq!(t.len().unwrap(), model.len(), "step {step}");
        let mut seen = t.entries().unwrap();
        seen.sort();
        let mut want: Vec<_> = model.iter().map(|(k, v)| (vec![*k], v.clone())).collect();
        want.sort();
        assert_eq!(seen, want, "step {step}");
    }
}

/// `entries` and a compaction of a table of 1 M slots holding 3 entries touch what it holds:
/// its index's pages stay unwritten, even by compactions (they zeroed the other index: 16
/// MiB here), and `entries` reads none of it (found by filling the whole index with words
/// that read as live: it scanned every slot).
#[test]
fn entries_and_compactions_cost_what_is_held_not_the_capacity() {
    let slots = 1 << 20;
    let mut m = area(slots, 4096);
    let mut t = Table::open(&mut m, false).unwrap();
    for k in 0..3u8 {
        t.insert(&[k], &[k; 100], copy).unwrap();
    }
    let live = (t.epoch << STATE_BITS | LIVE).to_le_bytes();
    let index = t.slot_at(0, 0)..t.slot_at(1, 0);
    let mut untouched = 0;
    for (i, s) in t.m[index].chunks_exact_mut(SLOT_BYTES).enumerate() {
        if s[..8] == [0; 8] {
            s[..8].copy_from_slice(&live);
            s[8..].copy_from_slice(&(i as u64).to_le_bytes());
            untouched += 1;
        }
    }
    assert_eq!(untouched, slots - 3);
    assert_eq!(t.entries().unwrap().len(), 3);
    // Updates of 1000 bytes in a 4096-byte arena: a compaction every few.
    let other = t.slot_at(1, 0)..t.record_at(0, 0);
    for round in 0..40u8 {
        t.insert(&[1], &[round; 1000], copy).unwrap();
    }
    assert_eq!(t.w(ACTIVE).unwrap(), 1, "compacted, and at an odd count");
    let written = t.m[other].chunks_exact(4096).filter(|p| p.iter().any(|&b| b != 0)).count();
    assert!(written <= 3, "{written} pages of the index written");
    let keys: Vec<_> = t.entries().unwrap().into_iter().map(|(k, v)| (k[0], v[0])).collect();
    assert_eq!(keys, [(0, 0), (1, 39), (2, 2)]);
}

/// A value refused by the caller's decoder (a `Dict` of other types) is not removed nor
/// replaced: not a byte of the table changes, even where the insert would compact first.
#[test]
fn a_refused_take_changes_nothing() {
    let refuse = |_: &[u8]| Err::<(), _>(Error::invalid("not a u64"));
    let mut m = area(8, 64);
    let mut t = Table::open(&mut m, false).unwrap();
    t.insert(b"a", &[1; 20], copy).unwrap();
    t.insert(b"a", &[2; 20], copy).unwrap();
    t.insert(b"b", b"2", copy).unwrap();
    let before = m.clone();
    let mut t = Table::open(&mut m, false).unwrap();
    // 64-byte arenas with 45 used: the insert would compact to find room.
    assert!(t.insert(b"a", &[3; 20], refuse).is_err());
    assert!(t.remove(b"a", refuse).is_err());
    assert!(t.remove(b"b", refuse).is_err());
    assert!(m == before, "a refused take wrote to the table");
    let mut t = Table::open(&mut m, false).unwrap();
    assert_eq!(t.remove(b"a", copy).unwrap(), Some(vec![2; 20]));
}

/// Every call on `m` after `scribble`: none panics.
fn call_everything(m: &mut [u8]) {
    if let Ok(mut t) = Table::open(m, true) {
        let _ = t.get(b"k");
        let _ = t.get(b"j");
        let _ = t.entries();
        let _ = t.insert(b"k", b"w", copy);
        let _ = t.insert(b"new", b"x", copy);
        let _ = t.remove(b"k", copy);
        let _ = t.remove(b"j", copy);
        let _ = t.entries();
        let _ = t.clear();
    }
}

/// A table with entries, an update, a hole and a journal left by a change stopped midway.
fn lived_in() -> Vec<u8> {
    let mut m = area(16, 256);
    let mut t = Table::open(&mut m, false).unwrap();
    for k in [&b"k"[..], b"j", b"i", b"h"] {
        t.insert(k, b"v", copy).unwrap();
    }
    t.insert(b"k", b"w", copy).unwrap();
    t.remove(b"i", copy).unwrap();
    stop::AFTER.set(Some(20));
    let _ = t.insert(b"g", b"x", copy);
    stop::AFTER.set(None);
    assert_ne!(t.w(J_LEN).unwrap(), 0, "a journal left to apply");
    m
}

#[test]
fn scribbled_memory_is_an_error_not_a_panic() {
    let m = lived_in();
    for i in 0..m.len() {
        for bits in [0xa5, 0x01, 0x80] {
            let mut bad = m.clone();
            bad[i] ^= bits;
            call_everything(&mut bad);
        }
    }
}

/// The index and the order array scribbled with the worst words: slots naming records past
/// `used`, holes, records of another key, records out of the arena, and journals that
/// would write outside what they may. Every read that meets one is an `Err`.
#[test]
fn a_scribbled_index_or_order_is_an_error_not_a_panic() {
    let mut m = lived_in();
    let (epoch, k) = (Table::open(&mut m, true).unwrap().epoch, hash(b"k"));
    let (slot_at, record_at, used) = {
        let t = Table::open(&mut m, false).unwrap();
        // "k" came first: record 0.
        let slot = (0..16).find(|&i| t.slot(0, i, epoch).unwrap().1 == k & HASH_HIGH).unwrap();
        (t.slot_at(0, slot), t.record_at(0, 0), t.used().unwrap())
    };
    let live = epoch << STATE_BITS | LIVE;
    let bad_slots = [
        (live, k & HASH_HIGH | used as u64),
        (live, k & HASH_HIGH | 2), // "i": removed, a hole
        (live, k & HASH_HIGH | 0xffff_ffff),
        (epoch << STATE_BITS | 3, k),
    ];
    for (state, tag) in bad_slots {
        let mut bad = m.clone();
        put(&mut bad, slot_at, state);
        put(&mut bad, slot_at + 8, tag);
        let t = Table::open(&mut bad, false).unwrap();
        assert!(t.get(b"k").is_err(), "{state:x} {tag:x}");
        call_everything(&mut bad);
    }
    let bad_records = [(8, u64::MAX - 3), (8, 255), (16, u64::MAX), (16, 300 << 32), (8, HOLE)];
    for (field, v) in bad_records {
        let mut bad = m.clone();
        put(&mut bad, record_at + field, v);
        let t = Table::open(&mut bad, false).unwrap();
        // A key length scribbled is another key's: "k" is not found.
        let got = t.get(b"k");
        assert!(got.is_err() || got.unwrap().is_none(), "record word {field} = {v:x}");
        assert!(t.entries().is_err(), "record word {field} = {v:x}");
        call_everything(&mut bad);
    }
    for (at, v) in [(USED, 13), (LEN, 6), (ACTIVE, 2), (EPOCH, 1 << 62), (J_LEN, 9)] {
        let mut bad = m.clone();
        put(&mut bad, at, v);
        assert!(Table::open(&mut bad, true).is_err(), "header word {at} = {v}");
    }
    // Counts that open but lie: no entries, or fewer holes than there are.
    for (at, v) in [(LEN, 0), (USED, 4), (LEN, 1)] {
        let mut bad = m.clone();
        put(&mut bad, at, v);
        call_everything(&mut bad);
    }
    let arena = Table::open(&mut m.clone(), false).unwrap().arena_at(0) as u64;
    for target in [SLOTS as u64, CAP as u64, MAX_LEN as u64, LAYOUT as u64, J_LEN as u64, 3, arena, u64::MAX] {
        let mut bad = m.clone();
        put(&mut bad, J_LEN, 1);
        put(&mut bad, J_PAIRS, target);
        assert!(Table::open(&mut bad, true).is_err(), "a journal writing at {target}");
    }
}

/// A block of the first layout (a slot table of five words, `top` where the mark now is)
/// is refused as corrupt, never read as this one.
#[test]
fn a_block_of_the_first_layout_is_refused() {
    let mut m = area(16, 256);
    for (at, v) in [(0, 16), (8, 256), (16, 0), (24, 40), (32, 2), (152, 12)] {
        put(&mut m, at, v);
    }
    let e = Table::open(&mut m, true).err().unwrap();
    assert!(e.to_string().contains("another version"), "{e}");
}
