//! LEB128 varints (7 bits a byte, low bits first, at most 10 bytes for 64 bits): the index
//! codec's numbers and the lengths of packed bytea runs (docs/FORMAT.md).

/// Appends `value`.
pub fn put(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(u8::try_from(value & 0x7f).expect("7 bits") | 0x80);
        value >>= 7;
    }
    out.push(u8::try_from(value).expect("under 0x80"));
}

/// The varint `bytes` start with and how many bytes it takes; `None` when it is cut short or
/// does not fit 64 bits.
pub fn get(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (index, &byte) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        if index == 9 && bits > 1 {
            return None;
        }
        value |= bits << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, index + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_width_round_trips_and_overlong_or_cut_numbers_are_refused() {
        for value in [0, 1, 127, 128, 300, 1 << 35, u64::MAX - 1, u64::MAX] {
            let mut out = vec![];
            super::put(&mut out, value);
            assert_eq!(super::get(&out), Some((value, out.len())));
            assert_eq!(super::get(&out[..out.len() - 1]), None);
        }
        assert_eq!(super::get(&[0xff; 9].iter().copied().chain([0x02]).collect::<Vec<_>>()), None);
    }
}
