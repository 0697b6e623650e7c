//! A VMBus rig in one process: the glue's emulator plays Hyper-V, the VSP's
//! `VmbusService` (real engine, in-memory store) serves the channel, and the
//! guest is the real `VmbusTransport` + `BlobClient` over the emulator's
//! guest end. Rescind, close and re-offer come from the test at any moment.

use std::sync::Arc;
use std::time::Duration;

use crate::emulated::EmulatedSource;
use vmblob_glue::GuestRam;
use vmblob_glue::vmbus::emulator::{EmulatorConfig, VmbusEmulator};
use vmblob_vsc::{BlobClient, ClientOptions, VmbusOptions, VmbusTransport};
use vmblob_vsp::engine::{Engine, Limits};
use vmblob_vsp::store::memory::MemoryStore;
use vmblob_vsp::vmbus::{ServiceOptions, VmbusService};

/// Sizes of a rig.
#[derive(Debug, Clone)]
pub struct VmbusRigOptions {
    pub ram: u64,
    /// Bytes per ring direction, control page included.
    pub ring_size: usize,
    pub limits: Limits,
    pub service: ServiceOptions,
    pub transport: VmbusOptions,
}

impl Default for VmbusRigOptions {
    fn default() -> Self {
        Self {
            ram: 256 << 20,
            ring_size: 128 << 10,
            limits: Limits::default(),
            service: ServiceOptions::default(),
            transport: VmbusOptions {
                wait_slice: Duration::from_millis(20),
                retry_interval: Duration::from_millis(2),
                ..VmbusOptions::default()
            },
        }
    }
}

pub struct VmbusRig {
    pub emulator: VmbusEmulator,
    pub service: Arc<VmbusService>,
    pub transport: Arc<VmbusTransport>,
    pub client: BlobClient,
}

impl VmbusRig {
    /// Offer the channel and open the guest on it.
    pub fn start(opts: VmbusRigOptions) -> VmbusRig {
        let ram = GuestRam::new(opts.ram).expect("guest RAM");
        let engine = Engine::new(Arc::new(MemoryStore::new()), opts.limits, 1);
        let service = Arc::new(VmbusService::new(Arc::new(engine), opts.service));
        let emulator = VmbusEmulator::new(ram, service.clone(), EmulatorConfig::default());
        emulator.offer().expect("offer");
        let source = EmulatedSource::new(emulator.guest(), opts.ring_size).expect("guest memory plan");
        let transport = Arc::new(VmbusTransport::open(Arc::new(source), opts.transport).expect("open the channel"));
        let options = ClientOptions { timeout_ms: 0, ..ClientOptions::default() };
        let client = BlobClient::new(transport.clone(), transport.device_config(), options);
        VmbusRig { emulator, service, transport, client }
    }

    /// Rescind the channel (the service completes what it took first) and
    /// offer it again at once.
    pub fn rescind_and_reoffer(&self) {
        self.emulator.rescind().expect("rescind");
        self.emulator.offer().expect("re-offer");
    }

    /// Wait until the guest serves on a channel again.
    pub fn wait_connected(&self, limit: Duration) {
        crate::wait_until(limit, "the guest picks up the offered channel", || {
            vmblob_vsc::Transport::is_connected(&*self.transport)
        });
    }
}
