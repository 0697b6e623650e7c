//! CRC-64/NVME of a concatenation from the CRCs of its parts, without the
//! bytes (zlib's `crc32_combine`, for the 64-bit reflected polynomial): a
//! block list commits without reading its blocks back.
//!
//! crc(A ‖ B) = crc(A) · x^(8·|B|) mod P  ⊕  crc(B). The pre- and post-
//! inversion of CRC-64/NVME cancel out because both are all ones.

/// The CRC-64/NVME polynomial, bit-reflected.
const POLY: u64 = 0x9a6c_9329_ac4b_c9b5;
/// x^0 in the reflected representation.
const ONE: u64 = 1 << 63;

/// a · b mod P.
const fn multmodp(a: u64, mut b: u64) -> u64 {
    let mut m = ONE;
    let mut p = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
}

/// `X2N[k]` = x^(2^k) mod P, for every k a 64-bit byte count can need.
const X2N: [u64; 67] = {
    let mut t = [0u64; 67];
    let mut p = ONE >> 1; // x^1
    let mut k = 0;
    while k < t.len() {
        t[k] = p;
        p = multmodp(p, p);
        k += 1;
    }
    t
};

/// x^(8·bytes) mod P.
fn shift_for(bytes: u64) -> u64 {
    let mut p = ONE;
    let mut n = bytes;
    let mut k = 3; // 8 bits per byte
    while n != 0 {
        if n & 1 != 0 {
            p = multmodp(X2N[k], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The CRC of `A ‖ B` given crc(A), crc(B) and |B|.
pub fn combine(crc_a: u64, crc_b: u64, len_b: u64) -> u64 {
    multmodp(shift_for(len_b), crc_a) ^ crc_b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::pattern;
    use crate::store::crc64;

    #[test]
    fn combining_parts_gives_the_crc_of_the_whole() {
        let data = pattern(70_000, 7);
        for split in [0, 1, 7, 8, 4096, 65_535, 69_999, 70_000] {
            let (a, b) = data.split_at(split);
            assert_eq!(combine(crc64(a), crc64(b), b.len() as u64), crc64(&data), "split at {split}");
        }
        // Many parts, folded left as a commit does.
        let mut crc = 0;
        for chunk in data.chunks(9_999) {
            crc = combine(crc, crc64(chunk), chunk.len() as u64);
        }
        assert_eq!(crc, crc64(&data));
    }
}
