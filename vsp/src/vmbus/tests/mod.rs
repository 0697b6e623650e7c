//! VMBus service tests: a hand-rolled guest built on the protocol's encoders drives the VSP
//! through the glue's emulator.

mod guest;
mod hostile;
mod rescind;
mod room;
mod round_trip;
