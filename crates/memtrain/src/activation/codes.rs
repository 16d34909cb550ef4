//! Bit packing of small per-element codes: `bits` ∈ {1, 2, 4, 8} codes per byte, LSB first.
//!
//! Element `i` with `b` bits lives in byte `i * b / 8` at bit offset `(i * b) % 8`. Codes of
//! 1, 2, 4 and 8 bits never straddle a byte.

/// Bytes needed for `n` codes of `bits` bits.
pub fn packed_len(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(8)
}

/// Packs `codes` (each below `2^bits`) into bytes.
///
/// # Panics
///
/// When `bits` is not 1, 2, 4 or 8 (a programming error: the callers fix it).
pub fn pack(codes: &[u8], bits: u32) -> Vec<u8> {
    assert!(
        matches!(bits, 1 | 2 | 4 | 8),
        "bits must be 1, 2, 4 or 8, got {bits}"
    );
    let per = (8 / bits) as usize;
    let mask = ((1u16 << bits) - 1) as u8;
    codes
        .chunks(per)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u8, |acc, (j, &v)| acc | ((v & mask) << (j as u32 * bits)))
        })
        .collect()
}

/// Code `i` of a packed buffer.
#[inline]
pub fn get(packed: &[u8], i: usize, bits: u32) -> u8 {
    let bit = i * bits as usize;
    (packed[bit / 8] >> (bit % 8)) & (((1u16 << bits) - 1) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn should_round_trip_any_codes(raw in proptest::collection::vec(any::<u8>(), 0..300), which in 0usize..4) {
            let bits = [1u32, 2, 4, 8][which];
            let codes: Vec<u8> = raw.iter().map(|v| v & (((1u16 << bits) - 1) as u8)).collect();
            let packed = pack(&codes, bits);
            prop_assert_eq!(packed.len(), packed_len(codes.len(), bits));
            for (i, &c) in codes.iter().enumerate() {
                prop_assert_eq!(get(&packed, i, bits), c);
            }
        }
    }

    #[test]
    fn should_pack_one_bit_codes_eight_to_a_byte() {
        // Golden: bits 1,0,1,1,0,0,0,1 (LSB first) = 0b1000_1101; a ninth code starts byte 2.
        assert_eq!(pack(&[1, 0, 1, 1, 0, 0, 0, 1, 1], 1), vec![0b1000_1101, 1]);
    }
}
