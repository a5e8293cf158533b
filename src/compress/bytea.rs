//! bytea's hex text packed back into bytes before zstd (format 6, docs/FORMAT.md *Packed text*).
//!
//! COPY writes a `bytea` value as `\\x` and two lowercase hex digits a byte. zstd compresses
//! that text to about the bytes' own size at best (4 bits a digit) and spends its time on
//! twice their length: on the scale-1 CRM workload, whose attachments are a quarter of the
//! COPY text, packing the runs back into bytes made a full backup's frames 1.6% smaller and
//! their compression 10-20% faster (`bench/frame_sizes.rs`, BENCHMARKS.md).
//!
//! The packed form is the text with two changes, and nothing else:
//! - `FF 00` stands for a literal `FF` byte (which UTF-8 text never holds);
//! - `FF` and a varint n ≥ 1 stand for `\\x` followed by the 2n lowercase hex digits of the n
//!   bytes after the varint.
//!
//! Which runs to pack is the writer's choice (here: runs of at least [`MIN_RUN`] bytes right
//! after `\\x`); reading needs only the two rules above, and gives back the text exactly, so
//! the chunk ids (keyed hashes of the text) prove the unpacked bytes as before.

/// The marker byte.
const MARKER: u8 = 0xFF;
/// The text a packed run stands for, before its digits.
const PREFIX: &[u8] = b"\\\\x";
/// Shorter runs stay text: a marker and varint cost 2-4 bytes.
const MIN_RUN: usize = 16;

/// The value of a lowercase hex digit, 16 for any other byte.
const DIGITS: [u8; 256] = {
    let mut table = [16u8; 256];
    let mut n = 0;
    while n < 10 {
        table[(b'0' + n) as usize] = n;
        n += 1;
    }
    let mut n = 0;
    while n < 6 {
        table[(b'a' + n) as usize] = 10 + n;
        n += 1;
    }
    table
};

/// Appends the packed form of `text` to `out`.
pub fn pack(text: &[u8], out: &mut Vec<u8>) {
    out.reserve(text.len());
    let prefixes = memchr::memmem::Finder::new(PREFIX);
    let mut at = 0;
    while at < text.len() {
        let Some(found) = prefixes.find(&text[at..]) else {
            literal(&text[at..], out);
            return;
        };
        let digits_start = at + found + PREFIX.len();
        literal(&text[at..digits_start], out);
        at = digits_start;
        let bytes = hex_run(&text[digits_start..]);
        if bytes < MIN_RUN {
            continue;
        }
        // The prefix is part of what the run stands for: take it back off the literal text.
        out.truncate(out.len() - PREFIX.len());
        out.push(MARKER);
        crate::varint::put(out, bytes as u64);
        let digits = &text[digits_start..digits_start + 2 * bytes];
        out.extend(digits.chunks_exact(2).map(|pair| DIGITS[pair[0] as usize] << 4 | DIGITS[pair[1] as usize]));
        at = digits_start + 2 * bytes;
    }
}

/// How many whole bytes of lowercase hex digits `text` starts with.
fn hex_run(text: &[u8]) -> usize {
    let pairs = text.chunks_exact(2).take_while(|pair| (DIGITS[pair[0] as usize] | DIGITS[pair[1] as usize]) < 16);
    pairs.count()
}

/// Text with no run in it: every `FF` doubled as `FF 00`.
fn literal(text: &[u8], out: &mut Vec<u8>) {
    let mut from = 0;
    for marker in memchr::memchr_iter(MARKER, text) {
        out.extend_from_slice(&text[from..=marker]);
        out.push(0);
        from = marker + 1;
    }
    out.extend_from_slice(&text[from..]);
}

/// Where the first packed run or `FF` is: all of `packed` before it is text as it is.
pub fn first_marker(packed: &[u8]) -> Option<usize> {
    memchr::memchr(MARKER, packed)
}

/// Appends the text `packed` stands for to `out`, refusing to make more than `limit` bytes.
/// On an error `out` keeps what it held.
pub fn unpack_onto(packed: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), &'static str> {
    let before = out.len();
    let result = unpack(packed, before.saturating_add(limit), out);
    if result.is_err() {
        out.truncate(before);
    }
    result
}

fn unpack(packed: &[u8], end: usize, out: &mut Vec<u8>) -> Result<(), &'static str> {
    const TOO_LARGE: &str = "unpacks to more than its frame holds";
    let mut at = 0;
    while let Some(found) = memchr::memchr(MARKER, &packed[at..]) {
        let text = &packed[at..at + found];
        if out.len() + text.len() > end {
            return Err(TOO_LARGE);
        }
        out.extend_from_slice(text);
        at += found + 1;
        let (bytes, width) = crate::varint::get(&packed[at..]).ok_or("a packed run has a damaged length")?;
        at += width;
        if bytes == 0 {
            if out.len() >= end {
                return Err(TOO_LARGE);
            }
            out.push(MARKER);
            continue;
        }
        let run = usize::try_from(bytes)
            .ok()
            .and_then(|bytes| packed.get(at..at.checked_add(bytes)?))
            .ok_or("a packed run reaches past the frame's end")?;
        if out.len() + PREFIX.len() + 2 * run.len() > end {
            return Err(TOO_LARGE);
        }
        out.extend_from_slice(PREFIX);
        let start = out.len();
        out.resize(start + 2 * run.len(), 0);
        hex::encode_to_slice(run, &mut out[start..]).expect("two digits a byte fit");
        at += run.len();
    }
    let text = &packed[at..];
    if out.len() + text.len() > end {
        return Err(TOO_LARGE);
    }
    out.extend_from_slice(text);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &[u8]) -> Vec<u8> {
        let mut packed = Vec::new();
        pack(text, &mut packed);
        let mut back = Vec::new();
        unpack_onto(&packed, text.len(), &mut back).unwrap();
        assert_eq!(back, text, "packed: {packed:?}");
        packed
    }

    #[test]
    fn hex_runs_become_bytes_and_come_back_exactly() {
        let run = "00ff7a".repeat(40);
        let text = format!("1\t\\\\x{run}\tnote\n2\t\\\\x{run}0\t\\\\x\n");
        let packed = round_trip(text.as_bytes());
        assert!(packed.len() < text.len() - 100, "{} -> {}", text.len(), packed.len());
        // Two markers; inside the runs 80 bytes FF, which need no escape.
        assert_eq!(memchr::memchr_iter(MARKER, &packed).count(), 2 + 80);
    }

    #[test]
    fn what_is_not_a_long_lowercase_run_stays_text() {
        for text in [
            &b"\\\\x0a1b"[..],                                     // too short
            b"\\\\x00112233445566778899AABBCCDDEEFF0011",          // upper case
            b"\\x00112233445566778899aabbccddeeff00112233",        // one backslash: not COPY's bytea
            b"plain text \\n with \\\\ escapes and \\\\\\\\x too", // no digits
            b"",
        ] {
            let packed = round_trip(text);
            assert_eq!(packed, text, "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn ff_bytes_and_odd_or_trailing_runs_survive() {
        let mut text = vec![0xFF, b'a', 0xFF, 0xFF];
        text.extend_from_slice(b"\\\\x");
        text.extend_from_slice("ab".repeat(20).as_bytes());
        text.push(b'c'); // an odd digit stays text
        text.extend_from_slice(b"\\\\x");
        text.extend_from_slice("0123456789abcdef".repeat(300).as_bytes()); // ends the input, varint of 2 bytes
        round_trip(&text);
        let every_byte: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        round_trip(&every_byte);
    }

    #[test]
    fn damaged_packed_text_is_refused_and_leaves_out_as_it_was() {
        let mut packed = Vec::new();
        pack(format!("x\\\\x{}", "ab".repeat(100)).as_bytes(), &mut packed);
        let mut out = b"kept".to_vec();
        assert!(unpack_onto(&packed[..packed.len() - 1], 1000, &mut out).is_err(), "run cut short");
        assert!(unpack_onto(&[b'a', MARKER], 1000, &mut out).is_err(), "marker without a length");
        assert!(
            unpack_onto(&[MARKER, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], 1000, &mut out).is_err()
        );
        assert!(unpack_onto(&packed, 100, &mut out).is_err(), "more than the limit");
        assert_eq!(out, b"kept");
        unpack_onto(&packed, 204, &mut out).unwrap();
        assert_eq!(out.len(), 4 + 204);
    }
}
