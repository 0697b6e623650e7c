//! Deterministic test data that is never held whole: byte `i` of stream
//! `seed` is a pure function of `(seed, i)`, so any range can be regenerated
//! for comparison.

use std::io::{Read, Write};

use vmblob_protocol::checksum::Crc64;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn word(seed: u64, index: u64) -> [u8; 8] {
    splitmix64(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ index).to_le_bytes()
}

/// Fill `buf` with bytes `offset..offset + buf.len()` of stream `seed`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let w = word(seed, pos / 8);
        let skip = (pos % 8) as usize;
        let n = (8 - skip).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&w[skip..skip + n]);
        i += n;
        pos += n as u64;
    }
}

/// Bytes `offset..offset + len` of stream `seed`.
pub fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill(seed, offset, &mut v);
    v
}

/// CRC-64/NVME of a byte slice.
pub use vmblob_protocol::checksum::crc64;

/// `len` bytes of stream `seed` as a reader; keeps the CRC of what it produced.
pub struct PatternReader {
    seed: u64,
    pos: u64,
    len: u64,
    digest: Crc64,
}

impl PatternReader {
    pub fn new(seed: u64, len: u64) -> Self {
        Self { seed, pos: 0, len, digest: Crc64::new() }
    }
    /// Bytes produced so far.
    pub fn produced(&self) -> u64 {
        self.pos
    }
    /// CRC-64/NVME of the bytes produced so far.
    pub fn crc64(&self) -> u64 {
        self.digest.sum64()
    }
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.len - self.pos).min(buf.len() as u64) as usize;
        fill(self.seed, self.pos, &mut buf[..n]);
        self.digest.write(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// A writer that keeps only the length and CRC-64/NVME of what it was given,
/// and optionally checks it against stream `seed` on the fly.
pub struct CrcWriter {
    len: u64,
    digest: Crc64,
    expect_seed: Option<u64>,
    scratch: Vec<u8>,
    /// First offset where the bytes differed from the expected stream.
    pub first_mismatch: Option<u64>,
}

impl CrcWriter {
    pub fn new() -> Self {
        Self { len: 0, digest: Crc64::new(), expect_seed: None, scratch: Vec::new(), first_mismatch: None }
    }
    /// Also compare every byte with stream `seed`.
    pub fn expecting(seed: u64) -> Self {
        Self { expect_seed: Some(seed), ..Self::new() }
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn crc64(&self) -> u64 {
        self.digest.sum64()
    }
}

impl Default for CrcWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for CrcWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(seed) = self.expect_seed
            && self.first_mismatch.is_none()
        {
            self.scratch.resize(buf.len(), 0);
            fill(seed, self.len, &mut self.scratch);
            if let Some(i) = buf.iter().zip(&self.scratch).position(|(a, b)| a != b) {
                self.first_mismatch = Some(self.len + i as u64);
            }
        }
        self.digest.write(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_agree_with_the_stream() {
        let whole = pattern(7, 0, 1000);
        for (off, len) in [(0, 1), (3, 17), (8, 8), (13, 500), (999, 1)] {
            assert_eq!(pattern(7, off as u64, len), &whole[off..off + len]);
        }
        assert_ne!(pattern(7, 0, 64), pattern(8, 0, 64));
        let mut r = PatternReader::new(7, 1000);
        let mut got = Vec::new();
        let mut buf = [0u8; 37];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, whole);
        assert_eq!(r.crc64(), crc64(&whole));
        let mut w = CrcWriter::expecting(7);
        w.write_all(&whole[..500]).unwrap();
        w.write_all(&whole[500..]).unwrap();
        assert_eq!((w.len(), w.crc64(), w.first_mismatch), (1000, crc64(&whole), None));
        let mut w = CrcWriter::expecting(7);
        let mut bad = whole.clone();
        bad[321] ^= 1;
        w.write_all(&bad).unwrap();
        assert_eq!(w.first_mismatch, Some(321));
    }
}
