//! Bounds-checked little-endian cursor used by every blob-operation codec.
//! Reading never panics and never allocates more than the input holds.

use crate::ops::{DecodeError, OP_VERSION};

/// Reads fields from a borrowed byte slice.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The op version the bytes are in (fields added in later versions are
    /// read only from buffers of those versions).
    pub version: u16,
}

impl<'a> Reader<'a> {
    /// A reader of bytes in the newest op version; the op header decoders
    /// set `version` from the header they read.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0, version: OP_VERSION }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn md5(&mut self) -> Result<[u8; 16], DecodeError> {
        self.array()
    }

    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::BadTag(v)),
        }
    }

    /// `u16` length then that many UTF-8 bytes, at most `max` of them.
    pub fn str16(&mut self, max: usize) -> Result<&'a str, DecodeError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(DecodeError::FieldTooLong { len, max });
        }
        std::str::from_utf8(self.bytes(len)?).map_err(|_| DecodeError::BadUtf8)
    }

    /// `u8` length then that many raw bytes, at most `max`.
    pub fn bytes8(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u8()?);
        if len > max {
            return Err(DecodeError::FieldTooLong { len, max });
        }
        self.bytes(len)
    }

    /// A presence tag (0 or 1) followed by the value when present.
    pub fn option<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, DecodeError>) -> Result<Option<T>, DecodeError> {
        if self.bool()? { f(self).map(Some) } else { Ok(None) }
    }

    /// A `u32` element count, refused before allocation if the input could not
    /// hold that many elements of at least `min_elem` bytes each.
    pub fn count(&mut self, max: usize, min_elem: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(DecodeError::TooMany { count: n, max });
        }
        if n.saturating_mul(min_elem.max(1)) > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.remaining() == 0 { Ok(()) } else { Err(DecodeError::TrailingBytes(self.remaining())) }
    }
}

/// Appends fields to a byte vector, in one op version's encoding.
pub struct Writer {
    pub buf: Vec<u8>,
    pub version: u16,
}

impl Default for Writer {
    fn default() -> Self {
        Self::at(OP_VERSION)
    }
}

impl Writer {
    pub fn at(version: u16) -> Self {
        Self { buf: Vec::new(), version }
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    /// Strings longer than `u16::MAX` are cut; encoders only see validated values.
    pub fn str16(&mut self, s: &str) {
        let b = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
        self.u16(b.len() as u16);
        self.raw(b);
    }
    pub fn bytes8(&mut self, b: &[u8]) {
        let b = &b[..b.len().min(255)];
        self.u8(b.len() as u8);
        self.raw(b);
    }
    pub fn option<T>(&mut self, v: Option<T>, f: impl FnOnce(&mut Self, T)) {
        self.bool(v.is_some());
        if let Some(v) = v {
            f(self, v);
        }
    }
}
