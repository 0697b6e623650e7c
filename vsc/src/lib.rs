#![forbid(unsafe_code)]

pub mod dma;
pub mod virtio;
