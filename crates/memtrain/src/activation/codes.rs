//! Bit packing of small per-element codes: `bits` ∈ 1..=8, a dense bit stream, LSB first.
//!
//! Code `i` occupies bits `i·b .. (i+1)·b` of the stream; byte `k` holds stream bits
//! `8k .. 8k+8`. Codes of 1, 2, 4 and 8 bits never straddle a byte; 3-bit codes pack eight to
//! three bytes (no byte is wasted per element); 5-7 bits likewise. One spare byte at the end
//! lets a reader load two bytes at any code without a bounds branch.

/// Bytes needed for `n` codes of `bits` bits (including the one spare byte).
pub fn packed_len(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(8) + 1
}

/// Packs `codes` (each below `2^bits`) into a bit stream.
///
/// # Panics
///
/// When `bits` is outside 1..=8 (callers validate it at config time).
pub fn pack(codes: &[u8], bits: u32) -> Vec<u8> {
    let mut out = vec![0u8; packed_len(codes.len(), bits)];
    pack_into(codes, bits, &mut out);
    out
}

/// Packs `codes` into `out`, which must hold `packed_len(codes.len(), bits)` zeroed bytes or
/// be a chunk whose first code starts on a byte boundary.
///
/// # Panics
///
/// When `bits` is outside 1..=8 or `out` is too short.
pub fn pack_into(codes: &[u8], bits: u32, out: &mut [u8]) {
    assert!((1..=8).contains(&bits), "bits must be in 1..=8, got {bits}");
    let mask = ((1u16 << bits) - 1) as u8;
    for (i, &c) in codes.iter().enumerate() {
        let bit = i * bits as usize;
        let word = u16::from(c & mask) << (bit % 8);
        out[bit / 8] |= word as u8;
        if word > 0xff {
            out[bit / 8 + 1] |= (word >> 8) as u8;
        }
    }
}

/// Code `i` of a packed stream.
#[inline]
pub fn get(packed: &[u8], i: usize, bits: u32) -> u8 {
    let bit = i * bits as usize;
    let at = bit / 8;
    let word = u16::from(packed[at]) | (u16::from(*packed.get(at + 1).unwrap_or(&0)) << 8);
    ((word >> (bit % 8)) & ((1u16 << bits) - 1)) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn should_round_trip_any_codes(raw in proptest::collection::vec(any::<u8>(), 0..300), bits in 1u32..=8) {
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
        assert_eq!(
            pack(&[1, 0, 1, 1, 0, 0, 0, 1, 1], 1),
            vec![0b1000_1101, 1, 0]
        );
    }

    #[test]
    fn should_pack_three_bit_codes_eight_to_three_bytes() {
        // Codes 0..8 in 3 bits: stream 000 100 010 110 001 101 011 111 (each LSB first) is
        // 0x88 0xC6 0xFA; plus the spare byte.
        let packed = pack(&[0, 1, 2, 3, 4, 5, 6, 7], 3);
        assert_eq!(packed, vec![0x88, 0xC6, 0xFA, 0]);
        assert_eq!(packed_len(1000, 3), 376);
    }
}
