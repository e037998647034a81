//! Redis replies (RESP2, and the RESP3 types a server may send in their place) parsed out of
//! a byte buffer, into the `redis` crate's [`Value`]s, exactly as its own parser makes them.
//!
//! The crate's parser (built on `combine`) costs several microseconds per reply; at every
//! task's `STEP`, `XREADGROUP` and `XREAD` that was a tenth of an agent's reader. This one
//! looks at each byte once. It is fed what the socket held: a reply not complete yet is
//! `Ok(None)`, parsed again from its start once more bytes came. Whatever a peer sends, it
//! returns an error or a value, never panics, and never allocates more than the bytes it was
//! given (nesting is bounded, and counts are not trusted for capacity).

use redis::Value;

/// How deep arrays may nest (the replies mproc reads nest three levels).
const MAX_DEPTH: usize = 64;

/// The first complete reply at the start of `b` and how many bytes it took; `Ok(None)` if
/// `b` holds only part of one; `Err` if `b` is not a reply.
pub(crate) fn parse(b: &[u8]) -> Result<Option<(Value, usize)>, String> {
    match measure(b)? {
        Ok(_) => value(b, 0),
        Err(_) => Ok(None),
    }
}

/// How long the first reply at the start of `b` is, looked at without building it:
/// `Ok(len)` if `b` holds it whole; `Err(need)` if not, where `need` (more than `b.len()`)
/// is how many bytes `b` must hold before it can be whole. A reader feeding a large reply in
/// pieces looks again only once `need` bytes are there, and builds the values once: parsed
/// from the start at each piece, a reply of many large strings costs time quadratic in its
/// size.
pub(crate) fn measure(b: &[u8]) -> Result<Result<usize, usize>, String> {
    span(b, 0)
}

/// The reply at the start of `b`, which [`measure`] found whole; `Err` if it is no reply.
pub(crate) fn build(b: &[u8]) -> Result<Option<(Value, usize)>, String> {
    value(b, 0)
}

fn span(b: &[u8], depth: usize) -> Result<Result<usize, usize>, String> {
    if depth > MAX_DEPTH {
        return Err(format!("a reply nested more than {MAX_DEPTH} deep"));
    }
    let Some(end) = line_end(b) else {
        return Ok(Err(b.len() + 1));
    };
    let (kind, line, after) = (b[0], &b[1..end], end + 2);
    let int = || number(line);
    match kind {
        b'+' | b'-' | b':' | b'_' | b'#' => Ok(Ok(after)),
        b'$' => match usize::try_from(int()?) {
            Err(_) => Ok(Ok(after)),
            Ok(n) => {
                let whole = after.saturating_add(n).saturating_add(2);
                Ok(if b.len() >= whole { Ok(whole) } else { Err(whole) })
            }
        },
        b'*' | b'~' | b'%' => {
            let Ok(n) = usize::try_from(int()?) else {
                return Ok(Ok(after));
            };
            let count = match kind {
                b'%' => n.checked_mul(2).ok_or("a map too large")?,
                _ => n,
            };
            let mut at = after;
            for _ in 0..count {
                match span(&b[at..], depth + 1)? {
                    Ok(used) => at += used,
                    Err(need) => return Ok(Err(at + need)),
                }
            }
            Ok(Ok(at))
        }
        // Left for `value` to refuse.
        _ => Ok(Ok(after)),
    }
}

fn value(b: &[u8], depth: usize) -> Result<Option<(Value, usize)>, String> {
    if depth > MAX_DEPTH {
        return Err(format!("a reply nested more than {MAX_DEPTH} deep"));
    }
    let Some(end) = line_end(b) else {
        return Ok(None);
    };
    let (kind, line, after) = (b[0], &b[1..end], end + 2);
    let text = || std::str::from_utf8(line).map_err(|_| "a reply line that is not UTF-8".to_owned());
    let int = || number(line);
    let v = match kind {
        b'+' => match text()? {
            "OK" => Value::Okay,
            s => Value::SimpleString(s.to_owned()),
        },
        // Errors are rare: the crate makes them, so that their kinds and codes are its own.
        b'-' => redis::parse_redis_value(&b[..after]).map_err(|e| e.to_string())?,
        b':' => Value::Int(int()?),
        b'$' => {
            let Ok(n) = usize::try_from(int()?) else {
                return Ok(Some((Value::Nil, after)));
            };
            let Some(rest) = b.get(after..) else {
                return Ok(None);
            };
            if rest.len() < n.saturating_add(2) {
                return Ok(None);
            }
            if &rest[n..n + 2] != b"\r\n" {
                return Err("a bulk string longer than its length".into());
            }
            return Ok(Some((Value::BulkString(rest[..n].to_vec()), after + n + 2)));
        }
        b'*' | b'~' | b'%' => {
            let Ok(n) = usize::try_from(int()?) else {
                return match kind {
                    b'*' => Ok(Some((Value::Nil, after))),
                    _ => Err("a negative length".into()),
                };
            };
            let count = match kind {
                b'%' => n.checked_mul(2).ok_or("a map too large")?,
                _ => n,
            };
            // Each element takes at least three bytes: a count larger than the bytes allow
            // is not trusted with memory.
            let mut items = Vec::with_capacity(count.min(b.len() / 3));
            let mut at = after;
            for _ in 0..count {
                match value(&b[at..], depth + 1)? {
                    Some((v, used)) => {
                        items.push(v);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            let v = match kind {
                b'*' => Value::Array(items),
                b'~' => Value::Set(items),
                _ => {
                    let mut it = items.into_iter();
                    let mut pairs = Vec::with_capacity(n);
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    Value::Map(pairs)
                }
            };
            return Ok(Some((v, at)));
        }
        b'_' if line.is_empty() => Value::Nil,
        b'#' => match line {
            b"t" => Value::Boolean(true),
            b"f" => Value::Boolean(false),
            _ => return Err("a boolean that is neither t nor f".into()),
        },
        other => {
            return Err(format!(
                "a reply of a kind mproc does not read ({:?})",
                char::from(other)
            ));
        }
    };
    Ok(Some((v, after)))
}

/// A reply line's number (a length, a count, or an integer reply).
fn number(line: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok())
        .ok_or_else(|| "a reply length or integer that is not a number".to_owned())
}

/// Where the first line of `b` ends (its `\r\n`), if it has ended. A line is never empty:
/// it starts with the reply's kind.
fn line_end(b: &[u8]) -> Option<usize> {
    let mut from = 1;
    loop {
        let cr = b.get(from..)?.iter().position(|&c| c == b'\r')? + from;
        match b.get(cr + 1) {
            Some(b'\n') => return Some(cr),
            Some(_) => from = cr + 1,
            None => return None,
        }
    }
}

/// The fuzz target's body (`fuzz/fuzz_targets/resp.rs`): `data` parsed as a reply must give
/// an error, a part, or a value, never a panic; a value parses the same from its own bytes,
/// each part of those bytes is only a part, and where the crate's parser reads all of
/// `data` as one value, it is the same value.
pub(crate) fn fuzz(data: &[u8]) {
    match measure(data) {
        Ok(Err(need)) => assert!(need > data.len(), "a part of a reply that needs no more bytes"),
        // Measured whole: built whole (or refused), never found a part.
        Ok(Ok(_)) => assert!(!matches!(build(data), Ok(None)), "measured whole, built a part"),
        Err(_) => {}
    }
    let Ok(Some((v, used))) = parse(data) else {
        return;
    };
    assert_eq!(measure(data), Ok(Ok(used)));
    assert!(used <= data.len());
    assert_eq!(parse(&data[..used]), Ok(Some((v.clone(), used))));
    for cut in 0..used {
        assert!(
            !matches!(parse(&data[..cut]), Ok(Some(_))),
            "a part of a reply read as a whole one"
        );
    }
    if used == data.len()
        && let Ok(theirs) = redis::parse_redis_value(data)
    {
        assert_eq!(v, theirs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replies of every kind mproc meets, and some it only might.
    fn samples() -> Vec<Vec<u8>> {
        let xread = b"*1\r\n*2\r\n$7\r\nresults\r\n*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nr\r\n$5\r\nab\r\nc\r\n*2\r\n$3\r\n1-1\r\n*4\r\n$4\r\nlost\r\n$2\r\n17\r\n$8\r\nattempts\r\n:2\r\n";
        vec![
            b"+OK\r\n".to_vec(),
            b"+PONG\r\n".to_vec(),
            b"-ERR unknown command 'FOO'\r\n".to_vec(),
            b"-NOSCRIPT No matching script. Please use EVAL.\r\n".to_vec(),
            b"-OOM command not allowed when used memory > 'maxmemory'.\r\n".to_vec(),
            b":0\r\n".to_vec(),
            b":-42\r\n".to_vec(),
            b"$-1\r\n".to_vec(),
            b"$0\r\n\r\n".to_vec(),
            b"$4\r\n\r\n\r\n\r\n".to_vec(),
            b"*-1\r\n".to_vec(),
            b"*0\r\n".to_vec(),
            b"*2\r\n:1\r\n*2\r\n:1\r\n:0\r\n".to_vec(),
            b"*2\r\n:3\r\n:-1\r\n".to_vec(),
            b"*3\r\n+OK\r\n-LOADING server is loading\r\n+OK\r\n".to_vec(),
            xread.to_vec(),
            b"%1\r\n$7\r\nresults\r\n*0\r\n".to_vec(),
            b"~2\r\n:1\r\n$1\r\na\r\n".to_vec(),
            b"_\r\n".to_vec(),
            b"#t\r\n".to_vec(),
            b"#f\r\n".to_vec(),
        ]
    }

    /// As the crate parses it, every sample whole; every part of one is not a reply yet.
    #[test]
    fn replies_parse_as_the_crate_parses_them() {
        for s in samples() {
            let want = redis::parse_redis_value(&s).unwrap();
            assert_eq!(parse(&s), Ok(Some((want.clone(), s.len()))), "{:?}", s.escape_ascii());
            for cut in 0..s.len() {
                assert_eq!(parse(&s[..cut]), Ok(None), "{:?} cut at {cut}", s.escape_ascii());
            }
            // What follows a reply is left for the next.
            let mut two = s.clone();
            two.extend_from_slice(b":7\r\n");
            assert_eq!(parse(&two), Ok(Some((want, s.len()))));
            fuzz(&s);
            fuzz(&two);
        }
    }

    /// A part of a reply says how many bytes it needs at least, and exactly that many when
    /// what is missing is a string's bytes.
    #[test]
    fn a_part_says_how_much_more_it_needs() {
        let big = format!("*2\r\n$5\r\nhello\r\n${}\r\n{}\r\n", 1 << 20, "x".repeat(1 << 20));
        let b = big.as_bytes();
        let whole = b.len();
        assert_eq!(measure(b), Ok(Ok(whole)));
        for cut in [30, 1000, whole - 3, whole - 1] {
            assert_eq!(measure(&b[..cut]), Ok(Err(whole)), "cut at {cut}");
        }
        for cut in 0..24 {
            let Ok(Err(need)) = measure(&b[..cut]) else {
                panic!("cut at {cut}: {:?}", measure(&b[..cut]))
            };
            assert!(need > cut && need <= whole, "cut at {cut}: {need}");
        }
    }

    /// Whatever bytes come, an error or a value, never a panic; a count larger than the
    /// bytes is not taken at its word.
    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"?what\r\n"[..],
            b"$3\r\nabcd\r\n",
            b":12x\r\n",
            b"$x\r\n",
            b"#x\r\n",
            b"%-1\r\n",
            b"_x\r\n",
            b"+\xff\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", bad.escape_ascii());
        }
        assert_eq!(parse(b"*9223372036854775807\r\n:1\r\n"), Ok(None));
        assert_eq!(parse(b"$9223372036854775807\r\nab"), Ok(None));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
        assert!(parse(deep.as_bytes()).is_err());
        // Every byte string of a few bytes over an alphabet of RESP's own.
        let alphabet = b"*$:+-%~_#1\r\n";
        let mut buf = Vec::new();
        for n in 0..5u32 {
            for i in 0..alphabet.len().pow(n) {
                buf.clear();
                let mut k = i;
                for _ in 0..n {
                    buf.push(alphabet[k % alphabet.len()]);
                    k /= alphabet.len();
                }
                let _ = parse(&buf);
            }
        }
    }
}
