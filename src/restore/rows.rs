//! Rows of a COPY text stream read without a database (`dump`, `diff`): lines put back
//! together across chunk ends, fields split and decoded.

/// Puts COPY text back into rows (one per line, without its line break) across the pieces it
/// comes in: a chunk may end inside a row.
#[derive(Debug, Default)]
pub(super) struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Feeds one piece, calling `row` for each row it completes.
    pub(super) fn feed<E>(&mut self, piece: &[u8], mut row: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let mut rest = piece;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            if self.partial.is_empty() {
                row(&rest[..end])?;
            } else {
                self.partial.extend_from_slice(&rest[..end]);
                let line = std::mem::take(&mut self.partial);
                row(&line)?;
            }
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// [`Lines::feed`] for a `row` that cannot fail.
    pub(super) fn each(&mut self, piece: &[u8], mut row: impl FnMut(&[u8])) {
        let fed = self.feed(piece, |line| {
            row(line);
            Ok::<_, std::convert::Infallible>(())
        });
        fed.unwrap_or_else(|never| match never {});
    }

    /// [`Lines::finish`] for a `row` that cannot fail.
    pub(super) fn end(&mut self, row: impl FnOnce(&[u8])) {
        let ended = self.finish(|line| {
            row(line);
            Ok::<_, std::convert::Infallible>(())
        });
        ended.unwrap_or_else(|never| match never {});
    }

    /// Whether a row was begun and not ended.
    pub(super) fn is_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Ends the stream: a last row without a line break is a row.
    pub(super) fn finish<E>(&mut self, row: impl FnOnce(&[u8]) -> Result<(), E>) -> Result<(), E> {
        if self.partial.is_empty() {
            return Ok(());
        }
        let line = std::mem::take(&mut self.partial);
        row(&line)
    }
}

/// A row's fields, as COPY text (still escaped).
pub(super) fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b'\t')
}

/// A COPY text field: `\N` is NULL; backslash escapes (`\t`, `\n`, `\\`, octal, `\x` hex)
/// decoded. Bytes that are not UTF-8 (the server writes UTF-8) are replaced.
pub(super) fn copy_value(field: &[u8]) -> Option<String> {
    if field == b"\\N" {
        return None;
    }
    let mut bytes = Vec::with_capacity(field.len());
    let mut at = 0;
    while at < field.len() {
        let b = field[at];
        if b != b'\\' || at + 1 == field.len() {
            bytes.push(b);
            at += 1;
            continue;
        }
        let next = field[at + 1];
        at += 2;
        match next {
            b'b' => bytes.push(8),
            b'f' => bytes.push(12),
            b'n' => bytes.push(b'\n'),
            b'r' => bytes.push(b'\r'),
            b't' => bytes.push(b'\t'),
            b'v' => bytes.push(11),
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    match field.get(at) {
                        Some(digit @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(digit - b'0');
                            at += 1;
                        }
                        _ => break,
                    }
                }
                bytes.push((value & 0xff) as u8);
            }
            b'x' if field.get(at).is_some_and(u8::is_ascii_hexdigit) => {
                let mut value = 0u32;
                for _ in 0..2 {
                    match field.get(at).and_then(|d| char::from(*d).to_digit(16)) {
                        Some(digit) => {
                            value = value * 16 + digit;
                            at += 1;
                        }
                        None => break,
                    }
                }
                bytes.push((value & 0xff) as u8);
            }
            other => bytes.push(other),
        }
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_whole_wherever_the_pieces_end() {
        let text = b"1\ta\n22\tbb\\n\n333\tccc";
        for size in 1..text.len() {
            let mut lines = Lines::default();
            let mut rows = Vec::new();
            for piece in text.chunks(size) {
                lines
                    .feed(piece, |row| {
                        rows.push(row.to_vec());
                        Ok::<_, ()>(())
                    })
                    .unwrap();
            }
            assert!(lines.is_partial());
            lines
                .finish(|row| {
                    rows.push(row.to_vec());
                    Ok::<_, ()>(())
                })
                .unwrap();
            assert_eq!(rows, [b"1\ta".to_vec(), b"22\tbb\\n".to_vec(), b"333\tccc".to_vec()], "pieces of {size}");
        }
    }

    #[test]
    fn fields_decode_escapes_and_null() {
        let row: Vec<Option<String>> = fields(b"\\N\ta\\tb\t\\303\\251\t\\x41\t").map(copy_value).collect();
        assert_eq!(row, [None, Some("a\tb".into()), Some("é".into()), Some("A".into()), Some(String::new())]);
    }
}
