//! `VhostUserBackend` for the blob device: one kick thread per queue feeding
//! the shared runner pool, the device config space, and
//! completion-on-rescind in `stop_vring`, `reset_device` and on disconnect.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier};

use super::inflight::InflightSlot;
use super::queue::{DeviceState, QueueWorker};
use super::ring::Ring;
use crate::engine::Engine;
use crate::runner::Runner;

/// How the daemon runs its queues.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    pub queues: usize,
    /// Largest queue size the VMM may set.
    pub queue_size: u16,
    /// Runner threads serving requests (shared by all queues).
    pub workers: usize,
    /// How long the device polls a busy avail ring before waiting for kicks
    /// again (zero: kicks only).
    pub poll: Duration,
}

/// What [`BlobBackend::shut_down`] did with the requests in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutDown {
    /// Answered `Rescinded` (queues without an inflight region).
    pub rescinded: usize,
    /// Completed normally before the exit (queues with a region).
    pub finished: usize,
    /// Still running at the drain timeout: the region keeps them for the next VSP.
    pub left_in_region: usize,
}

/// The blob device's vhost-user backend; a fresh one per VMM connection.
pub struct BlobBackend {
    engine: Arc<Engine>,
    queue_size: u16,
    device: Arc<DeviceState>,
    mem: RwLock<Option<GuestMemoryAtomic<GuestMemoryMmap>>>,
    queues: Vec<Arc<QueueWorker>>,
}

impl BlobBackend {
    /// `inflight` is where the wire tap puts the region the frontend sets
    /// (SET_INFLIGHT_FD); the queues record admits and completions in it.
    pub fn new(engine: Arc<Engine>, options: &QueueOptions, inflight: Arc<InflightSlot>) -> io::Result<Self> {
        let device = Arc::new(DeviceState::new(options.poll));
        let runner = Runner::new("vmblob-exec", options.workers)?;
        let queues = (0..options.queues)
            .map(|i| Arc::new(QueueWorker::new(i, engine.clone(), device.clone(), runner.clone(), inflight.clone())))
            .collect();
        Ok(Self { engine, queue_size: options.queue_size, device, mem: RwLock::new(None), queues })
    }

    /// Wait (bounded) until every queue's in-flight table is empty.
    fn drain(&self) {
        let timeout = self.engine.limits().drain_timeout;
        for (i, q) in self.queues.iter().enumerate() {
            if !q.inflight().wait_empty(timeout) {
                log::error!("queue {i}: {} requests did not drain within {timeout:?}", q.inflight().len());
            }
        }
    }

    /// Stop taking requests and complete the accepted ones, while the
    /// connection is still up: the guest sees every completion before it
    /// sees the hang-up, so it never frees a buffer the VSP still writes.
    pub fn close(&self) -> usize {
        self.device.closing.store(true, Ordering::SeqCst);
        let n = self.close_queues();
        // Drained, or given up on: a request that outlives the drain must not
        // post into rings a reconnecting VMM may be reusing.
        self.device.detached.store(true, Ordering::SeqCst);
        n
    }

    /// The daemon is stopping (SIGTERM) while the VMM stays. A queue whose
    /// frontend keeps an inflight region survives us: the next VSP resubmits
    /// what is in it and pops what we never took, so rescinding would only
    /// turn an upgrade into errors in the guest. Such a queue stops popping,
    /// lets what it took finish (bounded by the drain timeout) and leaves the
    /// rest in the region. A queue without a region is closed as on a
    /// hang-up: every accepted request is answered, rescinded if need be.
    pub fn shut_down(&self) -> ShutDown {
        self.device.closing.store(true, Ordering::SeqCst);
        let mut done = ShutDown::default();
        let kept: Vec<bool> = self.queues.iter().map(|q| q.session().region().is_some()).collect();
        for (q, &kept) in self.queues.iter().zip(&kept) {
            q.inflight().seal();
            if !kept {
                done.rescinded += q.inflight().rescind_all();
            }
        }
        let timeout = self.engine.limits().drain_timeout;
        for (i, (q, &kept)) in self.queues.iter().zip(&kept).enumerate() {
            let running = q.inflight().len();
            let drained = q.inflight().wait_empty(timeout);
            let left = if drained { 0 } else { q.inflight().len() };
            if kept {
                done.finished += running.saturating_sub(left);
                done.left_in_region += left;
            } else if left > 0 {
                log::error!("queue {i}: {left} rescinded requests did not drain within {timeout:?}");
            }
        }
        // What is still running must not post into rings the next VSP owns.
        self.device.detached.store(true, Ordering::SeqCst);
        for q in &self.queues {
            q.session().next_epoch();
        }
        done
    }

    /// Close every queue's table (nothing more admitted, even by a worker
    /// already past its `closing` check), rescind and drain.
    fn close_queues(&self) -> usize {
        let n = self.queues.iter().map(|q| q.inflight().close()).sum();
        self.drain();
        // Whatever did not drain completes into nothing.
        for q in &self.queues {
            q.session().next_epoch();
        }
        n
    }

    /// Completions that came after their queue was stopped, dropped.
    pub fn stale_completions(&self) -> u64 {
        self.queues.iter().map(|q| q.session().stale()).sum()
    }

    /// Requests in flight on all queues.
    pub fn inflight(&self) -> usize {
        self.queues.iter().map(|q| q.inflight().len()).sum()
    }

    fn memory(&self) -> Option<GuestMemoryAtomic<GuestMemoryMmap>> {
        self.mem.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl VhostUserBackend for BlobBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.queues.len()
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.queue_size)
    }

    fn features(&self) -> u64 {
        // No device-specific bits: Cloud Hypervisor's generic device drops
        // bits 0-23, so capabilities live in config space instead.
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // INFLIGHT_SHMFD is added by the wire tap, which also answers its
        // messages (vhost-user-backend rejects them). No IN_ORDER feature.
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::RESET_DEVICE
    }

    /// Called from SET_FEATURES, the start of a (re)initialisation: a queue
    /// closed by an earlier RESET_DEVICE accepts requests again.
    fn set_event_idx(&self, enabled: bool) {
        self.device.event_idx.store(enabled, Ordering::Release);
        if !self.device.closing.load(Ordering::SeqCst) {
            for q in &self.queues {
                q.inflight().reopen();
            }
        }
    }

    /// Exactly `size` bytes, zero beyond the 64-byte config: a short reply
    /// leaves the frontend waiting for bytes that never come (vhost 0.18).
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut bytes = self.engine.device_config().read(offset, size);
        bytes.resize(size as usize, 0);
        bytes
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.queues.len()).map(|i| 1u64 << i).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    /// GET_VRING_BASE: the ring is already marked not ready (no new request
    /// can be popped); complete every accepted one before the reply.
    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let q = self.queues.get(queue_index as usize).ok_or_else(|| io::Error::other("no such queue"))?;
        let n = q.inflight().rescind_all();
        let drained = q.inflight().wait_empty(self.engine.limits().drain_timeout);
        // The VMM may re-base the ring once this returns: a request still
        // running must not post into it.
        q.session().next_epoch();
        if !drained {
            log::error!(
                "queue {queue_index} stopped with {} requests still running; their completions will be dropped",
                q.inflight().len()
            );
            return Err(io::Error::other("in-flight requests did not drain"));
        }
        if n > 0 {
            log::info!("queue {queue_index} stopped: {n} in-flight requests completed");
        }
        Ok(())
    }

    /// The rings stay "ready" through a reset in vhost-user-backend, so the
    /// tables are closed: a worker mid-loop cannot accept more until the
    /// frontend sets the device up again.
    fn reset_device(&self) {
        let n = self.close_queues();
        // A guest driver resets the device each time it opens it: only a reset that cut requests
        // short is news.
        if n > 0 {
            log::info!("device reset: {n} in-flight requests completed");
        } else {
            log::debug!("device reset with nothing in flight");
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        // `device_event` indexes this thread's own vrings (`vrings` holds only
        // them); thread i serves exactly queue i (`queues_per_thread`).
        let (Some(worker), Some(vring)) = (self.queues.get(thread_id), vrings.get(usize::from(device_event))) else {
            return Err(io::Error::other(format!("unexpected device event {device_event}")));
        };
        if self.device.closing.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(mem) = self.memory() else { return Ok(()) };
        worker.on_kick(&Ring { vring: vring.clone(), mem })
    }
}
