//! A VMBus host for rigs ([`emulator`]), built on the generic ring, channel and device trait of
//! `vmblob-vmbus`.

pub mod emulator;
