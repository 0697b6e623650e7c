//! Offer, open, close, rescind and re-offer: the control plane a VMM with VMBus runs
//! (`../shared/notes/vmbus.md` §4), reduced to what a rig needs.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmblob_protocol::transport::VMBUS_CLASS_GUID;

use super::guest::{GuestBus, GuestChannel};
use super::offer::{EmulatorConfig, OpenParams};
use crate::GuestRam;
use vmblob_vmbus::{
    CONTROL_PAGE_SIZE, ChannelDevice, ChannelPair, ChannelRings, ChannelState, ChannelStatus, ControlWord, DeviceError,
    Doorbell, DoorbellSignal, FEATURE_PENDING_SEND_SIZE, HostChannel, LayoutError, Offer, RawChannel, RingError,
    RingMem,
};

/// Why a lifecycle step was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmulatorError {
    #[error("the channel is already on offer")]
    AlreadyOffered,
    #[error("the channel is not on offer")]
    NotOffered,
    #[error("the channel is not open")]
    NotOpen,
}

/// Why the guest could not open the channel.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no channel on offer")]
    NotOffered,
    #[error("offer generation {requested} is gone (current: {current})")]
    StaleOffer { requested: u64, current: u64 },
    #[error("the channel is already open")]
    AlreadyOpen,
    #[error("bad ring placement: {0}")]
    Layout(#[from] LayoutError),
    #[error("attaching the rings: {0}")]
    Ring(#[from] RingError),
    #[error("creating the interrupt eventfds: {0}")]
    Io(#[from] io::Error),
    #[error("the device refused the open: {0}")]
    DeviceRefused(DeviceError),
}

#[derive(Debug)]
enum Phase {
    Idle,
    Offered(Offer),
    Open { offer: Offer, open_id: u64, watch: ChannelState, to_guest: Doorbell },
}

impl Phase {
    fn offer(&self) -> Option<&Offer> {
        match self {
            Phase::Idle => None,
            Phase::Offered(offer) | Phase::Open { offer, .. } => Some(offer),
        }
    }
}

struct State {
    phase: Phase,
    /// Offers made so far.
    generation: u64,
    next_open_id: u64,
}

/// Shared by the emulator handles, the guest bus and open guest channels.
pub(crate) struct Shared {
    ram: GuestRam,
    device: Arc<dyn ChannelDevice>,
    config: EmulatorConfig,
    /// Held across a whole transition, device hook included: one at a time.
    lifecycle: Mutex<()>,
    /// Held only briefly, so the guest can look at offers while a hook runs.
    state: Mutex<State>,
    changed: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A hook that panicked leaves the state as it was before the transition.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn ram(&self) -> &GuestRam {
        &self.ram
    }

    fn set_phase(&self, phase: Phase) {
        lock(&self.state).phase = phase;
        self.changed.notify_all();
    }

    pub(crate) fn current_offer(&self) -> Option<Offer> {
        lock(&self.state).phase.offer().cloned()
    }

    pub(crate) fn wait_offer(&self, seen: Option<u64>, timeout: Duration) -> Option<Offer> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        loop {
            if let Some(offer) = state.phase.offer().filter(|o| seen.is_none_or(|g| o.generation > g)) {
                return Some(offer.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            state = self.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    fn offer(&self) -> Result<Offer, EmulatorError> {
        let _t = lock(&self.lifecycle);
        let mut state = lock(&self.state);
        if !matches!(state.phase, Phase::Idle) {
            return Err(EmulatorError::AlreadyOffered);
        }
        state.generation += 1;
        let offer = Offer {
            class_id: VMBUS_CLASS_GUID.to_string(),
            instance_id: self.config.instance_id.clone(),
            relid: self.config.first_relid.wrapping_add((state.generation - 1) as u32),
            generation: state.generation,
        };
        state.phase = Phase::Offered(offer.clone());
        drop(state);
        self.changed.notify_all();
        Ok(offer)
    }

    fn rescind(&self) -> Result<(), EmulatorError> {
        let _t = lock(&self.lifecycle);
        let open = match &lock(&self.state).phase {
            Phase::Idle => return Err(EmulatorError::NotOffered),
            Phase::Offered(_) => None,
            Phase::Open { offer, watch, to_guest, .. } => Some((offer.clone(), watch.clone(), to_guest.clone())),
        };
        if let Some((offer, watch, to_guest)) = open {
            // The guest keeps seeing an open channel (and the completions the hook writes) until
            // the device has completed everything; only then the rescind.
            self.device.on_rescind(&offer);
            let _ = watch.end(ChannelStatus::Rescinded);
            to_guest.ring();
        }
        self.set_phase(Phase::Idle);
        Ok(())
    }

    fn close(&self, open_id: Option<u64>) -> Result<(), EmulatorError> {
        let _t = lock(&self.lifecycle);
        let (offer, watch, to_guest) = match &lock(&self.state).phase {
            Phase::Open { offer, open_id: id, watch, to_guest } if open_id.is_none_or(|want| want == *id) => {
                (offer.clone(), watch.clone(), to_guest.clone())
            }
            _ if open_id.is_some() => return Ok(()), // that open already ended
            _ => return Err(EmulatorError::NotOpen),
        };
        self.device.on_close(&offer);
        let _ = watch.end(ChannelStatus::Closed);
        to_guest.ring();
        self.set_phase(Phase::Offered(offer));
        Ok(())
    }

    pub(crate) fn close_open(&self, open_id: u64) -> Result<(), EmulatorError> {
        self.close(Some(open_id))
    }

    pub(crate) fn open(self: Arc<Self>, offer: &Offer, params: OpenParams) -> Result<GuestChannel, OpenError> {
        let _t = lock(&self.lifecycle);
        let open_id = {
            let mut state = lock(&self.state);
            match &state.phase {
                Phase::Idle => return Err(OpenError::NotOffered),
                Phase::Open { .. } => return Err(OpenError::AlreadyOpen),
                Phase::Offered(current) if current.generation != offer.generation => {
                    return Err(OpenError::StaleOffer { requested: offer.generation, current: current.generation });
                }
                Phase::Offered(_) => {}
            }
            state.next_open_id += 1;
            state.next_open_id
        };
        params.check(self.ram.size(), self.config.max_ring_size)?;
        let mem = self.ram.memory();
        let rings = ChannelRings::new(mem.clone(), params.ring_gpa, params.send_ring_size, params.recv_ring_size)?;
        for ring in [&rings.guest_to_host, &rings.host_to_guest] {
            reset_control_page(&self.ram, ring.base());
            ring.store(ControlWord::FeatureBits, FEATURE_PENDING_SEND_SIZE, Ordering::Release);
        }
        let pair = ChannelPair::in_memory(&rings)?;
        let (to_guest, from_guest) = (pair.to_guest.clone(), pair.to_host.clone());
        // The host end is the bus's own: it learns of a close or rescind from the device
        // hooks, so its signal never reports the channel ended.
        let host_signal =
            DoorbellSignal { to_peer: to_guest.clone(), from_peer: from_guest.clone(), state: ChannelState::default() };
        let host = HostChannel {
            offer: offer.clone(),
            memory: mem.clone(),
            channel: RawChannel { signal: Arc::new(host_signal), ..pair.host },
        };
        self.device.on_open(host).map_err(OpenError::DeviceRefused)?;
        let watch = pair.state.clone();
        self.set_phase(Phase::Open { offer: offer.clone(), open_id, watch: watch.clone(), to_guest: to_guest.clone() });
        Ok(GuestChannel {
            offer: offer.clone(),
            params,
            rings,
            interrupt: to_guest,
            host: from_guest,
            watch,
            open_id,
            shared: self.clone(),
        })
    }
}

/// Zeroes a ring's control page: both indices 0, unmasked, nothing pending.
fn reset_control_page(ram: &GuestRam, base: u64) {
    let zeros = [0u8; CONTROL_PAGE_SIZE];
    // Inside guest RAM: `OpenParams::check` and `ChannelRings::new` checked the whole allocation.
    if let Err(e) = ram.memory().write_slice(&zeros, GuestAddress(base)) {
        log::error!("vmbus emulator: resetting the ring control page at {base:#x}: {e}");
    }
}

impl Drop for Shared {
    /// The last handle is gone: close an open channel so the device stops serving.
    fn drop(&mut self) {
        if let Phase::Open { offer, watch, .. } = &lock(&self.state).phase {
            self.device.on_close(offer);
            let _ = watch.end(ChannelStatus::Closed);
        }
    }
}

/// A VMM's VMBus for one channel: owns guest RAM, offers the channel, lets the guest open it on
/// rings in guest RAM, carries interrupts both ways, and closes or rescinds it (then re-offers)
/// from any thread. Clones share the emulator.
#[derive(Clone)]
pub struct VmbusEmulator {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for VmbusEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmbusEmulator").field("offer", &self.shared.current_offer()).finish_non_exhaustive()
    }
}

impl VmbusEmulator {
    /// An emulator with nothing on offer yet; call [`offer`](Self::offer).
    pub fn new(ram: GuestRam, device: Arc<dyn ChannelDevice>, config: EmulatorConfig) -> Self {
        let state = State { phase: Phase::Idle, generation: 0, next_open_id: 0 };
        let shared = Shared {
            ram,
            device,
            config,
            lifecycle: Mutex::new(()),
            state: Mutex::new(state),
            changed: Condvar::new(),
        };
        VmbusEmulator { shared: Arc::new(shared) }
    }

    /// Offers the channel (first offer, or a re-offer after a rescind: a new generation and relid).
    pub fn offer(&self) -> Result<Offer, EmulatorError> {
        self.shared.offer()
    }

    /// Withdraws the offer. If the channel is open, the device first completes every pending
    /// request (its `on_rescind`), then the guest sees the rescind.
    pub fn rescind(&self) -> Result<(), EmulatorError> {
        self.shared.rescind()
    }

    /// Closes the open channel as the guest's `CLOSECHANNEL` would; the offer stays.
    pub fn close(&self) -> Result<(), EmulatorError> {
        self.shared.close(None)
    }

    /// The channel on offer (open or not), if any.
    pub fn current_offer(&self) -> Option<Offer> {
        self.shared.current_offer()
    }

    /// Whether the guest has the channel open.
    pub fn is_open(&self) -> bool {
        matches!(lock(&self.shared.state).phase, Phase::Open { .. })
    }

    /// The guest's side of the bus.
    pub fn guest(&self) -> GuestBus {
        GuestBus { shared: self.shared.clone() }
    }

    pub fn ram(&self) -> &GuestRam {
        self.shared.ram()
    }
}
