//! CRC-64/NVME, the polynomial of Azure's `x-ms-content-crc64`: the VSP
//! computes it for every write and the VSC checks transfers end to end with
//! it, so both halves take it from here.

/// CRC-64/NVME of `data`.
pub fn crc64(data: &[u8]) -> u64 {
    let mut d = Crc64::new();
    d.write(data);
    d.sum64()
}

/// A running CRC-64/NVME over bytes written in order.
#[derive(Clone)]
pub struct Crc64(crc64fast_nvme::Digest);

impl Crc64 {
    pub fn new() -> Self {
        Self(crc64fast_nvme::Digest::new())
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    /// The CRC of everything written so far.
    pub fn sum64(&self) -> u64 {
        self.0.sum64()
    }
}

impl Default for Crc64 {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Crc64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Crc64({:016x})", self.sum64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value_and_streaming_agree() {
        // The CRC-64/NVME check value (the CRC of "123456789").
        assert_eq!(crc64(b"123456789"), 0xae8b_1486_0a79_9888);
        assert_eq!(crc64(b""), 0);
        let mut d = Crc64::new();
        d.write(b"1234");
        d.write(b"56789");
        assert_eq!(d.sum64(), crc64(b"123456789"));
    }
}
