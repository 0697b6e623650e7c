//! CRC-64/NVME of a concatenation from the parts' CRCs and lengths, so a
//! committed block list's checksum is known before its bytes are copied (the
//! object's attributes go out with the upload's first request on S3).

/// CRC-64/NVME's polynomial, bit-reflected (as the CRC is computed).
const POLY: u64 = 0x9A6C_9329_AC4B_C9B5;

/// `a * b mod POLY` in the reflected representation (bit 63 is x^0).
fn mul_mod(a: u64, mut b: u64) -> u64 {
    let mut product = 0u64;
    for bit in (0..64).rev() {
        if a >> bit & 1 == 1 {
            product ^= b;
        }
        b = if b & 1 == 1 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    product
}

/// x^(8n) mod POLY: the effect of appending `n` zero bytes.
fn shift_bytes(mut n: u64) -> u64 {
    let mut result = 1u64 << 63;
    let mut square = 1u64 << (63 - 8);
    while n > 0 {
        if n & 1 == 1 {
            result = mul_mod(square, result);
        }
        square = mul_mod(square, square);
        n >>= 1;
    }
    result
}

/// CRC of `A || B` from `crc(A)`, `crc(B)` and `len(B)`. (Init and final XOR
/// are both all-ones, so the empty CRC is 0 and cancels as in zlib's combine.)
pub(crate) fn combine(crc_a: u64, crc_b: u64, len_b: u64) -> u64 {
    mul_mod(shift_bytes(len_b), crc_a) ^ crc_b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::pattern;
    use crate::store::crc64;

    #[test]
    fn combining_parts_equals_the_whole() {
        let data = pattern(300_000, 4);
        for cut in [0, 1, 7, 4096, 150_001, 299_999, 300_000] {
            let (a, b) = data.split_at(cut);
            assert_eq!(combine(crc64(a), crc64(b), b.len() as u64), crc64(&data), "cut at {cut}");
        }
        let parts: Vec<&[u8]> = data.chunks(77_777).collect();
        let folded = parts.iter().fold(0, |acc, p| combine(acc, crc64(p), p.len() as u64));
        assert_eq!(folded, crc64(&data));
        assert_eq!(crc64(b""), 0);
    }
}
