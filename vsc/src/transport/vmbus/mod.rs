//! The VMBus transport: blob requests as GPA-direct packets on a channel's
//! rings (`docs/PROTOCOL.md` §9), completions matched by requestor id.
//!
//! One channel thread per transport reaps completions on interrupts, and
//! handles a rescind on its own: it hands out the completions the host
//! already posted (only where the rings outlive the rescind: not on uio,
//! whose kernel frees them, so there no ring is touched after the first
//! EIO/POLLERR), fails every other pending request at once (never waiting
//! for the callers), closes the channel and waits for the re-offer. The
//! transport object, its request table and its DMA pool outlive every
//! channel, so clients keep their handles across a rescind.
//!
//! A host that breaks the protocol (unknown or zero ids, a second completion,
//! packets that are not completions, short completions, lengths beyond the
//! buffer, corrupt ring indices) fails the channel the same way: callers get
//! an error, never a hang, and the channel is opened again.

pub mod channel;
mod link;
mod reaper;
#[cfg(test)]
mod tests;
pub mod uio;

pub use channel::{ChannelError, ChannelSource, identity_page_buffer, pinned_page_buffer};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use vmblob_protocol::DataDirection;
use vmblob_protocol::config::DeviceConfig;
use vmblob_protocol::framing::vmbus::{MAX_PACKET_PAGES, PageBuffer, encode_blob_request};
use vmblob_vmbus::{OutgoingRing, RawChannel, WriteError};

use crate::error::ClientError;
use crate::transport::dma::DmaPool;
use crate::transport::table::RequestTable;
use crate::transport::{Completion, OpBuffers, REQUEST_PREFIX, Ticket, Transport};

use link::{Link, Live};

/// Timing of a [`VmbusTransport`].
#[derive(Debug, Clone)]
pub struct VmbusOptions {
    /// How long `open` waits for the first offer.
    pub open_timeout: Duration,
    /// How long `open` waits for the device config.
    pub config_timeout: Duration,
    /// Longest sleep of the channel thread and of a sender on a full ring
    /// before it looks again (a backstop: both are woken by signals).
    pub wait_slice: Duration,
    /// Pause after a failed attempt to open a re-offered channel.
    pub retry_interval: Duration,
    /// Open the channel again after a rescind or a failure.
    pub reopen: bool,
}

impl Default for VmbusOptions {
    fn default() -> Self {
        Self {
            open_timeout: Duration::from_secs(10),
            config_timeout: Duration::from_secs(10),
            wait_slice: Duration::from_millis(50),
            retry_interval: Duration::from_millis(100),
            reopen: true,
        }
    }
}

struct Inner {
    source: Arc<dyn ChannelSource>,
    table: RequestTable<OpBuffers, Completion>,
    link: Mutex<Link>,
    /// Ring space, an in-flight slot, or a change of channel.
    space: Condvar,
    config: OnceLock<DeviceConfig>,
    stopping: AtomicBool,
    /// Completions accepted from the host (each id once).
    completions: AtomicU64,
    /// [`ChannelSource::rings_outlive_rescind`] of `source`.
    rings_outlive_rescind: bool,
    opts: VmbusOptions,
}

/// A blob device on a VMBus channel.
pub struct VmbusTransport {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Response buffer of the GetDeviceConfig request: the op header and 64 bytes fit.
const CONFIG_RESPONSE: usize = 4096;

impl VmbusTransport {
    /// Open the device's channel (waiting for the offer), start the channel
    /// thread and fetch the device config with GetDeviceConfig.
    pub fn open(source: Arc<dyn ChannelSource>, opts: VmbusOptions) -> Result<Self, ClientError> {
        let channel = source
            .open(opts.open_timeout)?
            .ok_or(ClientError::Timeout { waiting_for: "a VMBus channel offer", after: opts.open_timeout })?;
        let inner = Arc::new(Inner {
            rings_outlive_rescind: source.rings_outlive_rescind(),
            source,
            table: RequestTable::new(),
            link: Mutex::new(Link::default()),
            space: Condvar::new(),
            config: OnceLock::new(),
            stopping: AtomicBool::new(false),
            completions: AtomicU64::new(0),
            opts,
        });
        let ring_data = channel.outgoing.len();
        let generation = inner.install(channel.clone())?;
        let worker = inner.clone();
        let thread = std::thread::Builder::new()
            .name("vmblob-vmbus".into())
            .spawn(move || worker.run(generation, channel))
            .map_err(ClientError::Io)?;
        let transport = Self { inner, thread: Mutex::new(Some(thread)) };
        let config = fit_to_ring(transport.fetch_config()?, ring_data);
        let _ = transport.inner.config.set(config);
        lock(&transport.inner.link).max_inflight = (config.max_inflight as usize).max(1);
        Ok(transport)
    }

    /// The device's limits and capabilities, as fetched at open, with
    /// `max_data_len` cut so that the largest data request takes at most a
    /// quarter of the guest→host ring (`fit_to_ring`).
    pub fn device_config(&self) -> DeviceConfig {
        *self.inner.config.get().expect("set by open")
    }

    /// Requests submitted and not completed.
    pub fn pending(&self) -> usize {
        self.inner.table.pending()
    }

    /// Completions the host delivered and the transport accepted, across
    /// channels (the config request's included); each request counts once.
    pub fn completions(&self) -> u64 {
        self.inner.completions.load(Ordering::Relaxed)
    }

    /// Channels opened so far (1 after `open`, +1 per re-offer picked up).
    pub fn generation(&self) -> u64 {
        lock(&self.inner.link).generation
    }

    /// Stop: nothing is sent from now on, every pending request fails with
    /// `Rescinded`, and the channel is closed. Idempotent.
    pub fn close(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        {
            let mut link = lock(&self.inner.link);
            link.closed = true;
            link.live = None;
        }
        self.inner.space.notify_all();
        self.inner.table.rescind();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }

    fn fetch_config(&self) -> Result<DeviceConfig, ClientError> {
        let pool = self.inner.source.pool();
        crate::transport::fetch_device_config(self, pool, CONFIG_RESPONSE, 0, self.inner.opts.config_timeout)
    }
}

/// Pages kept for the request and response buffers of a data request (the
/// client's are at most a few pages each) when the data buffer is as large
/// as the config allows.
const CONTROL_PAGES: usize = 8;

/// Ring bytes of a GPA-direct blob request besides its page numbers: packet
/// header, range header and the 56-byte in-band header (88), and the ring's
/// 8-byte trailer. Each page number takes 8 more.
pub(super) const REQUEST_OVERHEAD: usize = 88 + 8;

/// The largest request takes at most this share of the guest→host ring, so
/// that this many of the largest fit in it at once.
const RING_SHARE: usize = 4;

/// The config as this transport can honour it on a guest→host ring of
/// `ring_data` bytes. Linux gives a class it does not know (vmblob's) a
/// `0x11000`-byte ring per direction: 64 KiB of data, far less than the
/// 8,192 pages (64 KiB of page numbers alone) a packet may carry, so the
/// largest data buffer follows from the ring, not from the packet limit.
/// `BlobClient` splits larger transfers at `max_data_len`.
fn fit_to_ring(mut config: DeviceConfig, ring_data: usize) -> DeviceConfig {
    let pages = ((ring_data / RING_SHARE).saturating_sub(REQUEST_OVERHEAD) / 8).min(MAX_PACKET_PAGES);
    let data_pages = pages.saturating_sub(CONTROL_PAGES).max(1);
    let max_data = u32::try_from(data_pages * crate::transport::dma::PAGE_SIZE as usize).unwrap_or(u32::MAX);
    config.max_data_len = config.max_data_len.min(max_data);
    config
}

/// The pages of a request: data, request (after the in-band header's spare
/// room), response.
struct Pages {
    data: Option<PageBuffer>,
    request: PageBuffer,
    response: PageBuffer,
}

impl Inner {
    /// Whether `channel`'s rings may be touched now. Checked under the link
    /// lock before every ring read or write, by the channel thread and the
    /// senders alike: once a uio channel reports the rescind its ring pages
    /// are freed, and any access would be a use-after-free.
    fn rings_usable(&self, channel: &RawChannel) -> bool {
        self.rings_outlive_rescind || !channel.signal.is_rescinded()
    }

    /// Check the buffers against their lengths and translate them to pages.
    fn pages(&self, b: &mut OpBuffers) -> Result<Pages, ClientError> {
        let req_len = b.header.request_buffer_length.get() as usize;
        let resp_len = b.header.response_buffer_length.get() as usize;
        let data_len = b.header.data_buffer_length.get() as usize;
        if req_len == 0 || resp_len == 0 || b.request.len() < REQUEST_PREFIX + req_len || b.response.len() < resp_len {
            return Err(ClientError::InvalidBuffers("buffers empty or smaller than their lengths"));
        }
        let data = match (&b.data, b.dir) {
            (Some(d), DataDirection::ToHost | DataDirection::ToGuest) if data_len > 0 => {
                if d.len() < data_len {
                    return Err(ClientError::InvalidBuffers("data buffer smaller than its length"));
                }
                Some(self.source.page_buffer(d.gpa(), data_len)?)
            }
            _ => {
                b.header.data_buffer_length = 0.into();
                b.header.data_buffer_valid = 0.into();
                None
            }
        };
        let request_at = vm_memory::GuestAddress(b.request.gpa().0 + REQUEST_PREFIX as u64);
        let request = self.source.page_buffer(request_at, req_len)?;
        let response = self.source.page_buffer(b.response.gpa(), resp_len)?;
        let pages = data.as_ref().map_or(0, |d| d.pfns.len()) + request.pfns.len() + response.pfns.len();
        if pages > MAX_PACKET_PAGES {
            let (len, max) = (pages as u64, MAX_PACKET_PAGES as u64);
            return Err(ClientError::TooLarge { what: "a packet's page count", len, max });
        }
        Ok(Pages { data, request, response })
    }

    fn submit(&self, mut b: OpBuffers) -> Result<Ticket, ClientError> {
        let pages = self.pages(&mut b)?;
        // The packet is built before the id is known (the table owns the
        // buffers from `register` on); the id is patched in below.
        let mut packet = encode_blob_request(0, &mut b.header, pages.data.as_ref(), &pages.request, &pages.response);
        let deadline = crate::transport::submit_deadline(&b.header);
        let (id, waiter) = self.table.register(b).map_err(|(e, _)| e)?;
        packet[8..16].copy_from_slice(&id.to_le_bytes());
        match self.send(id, &packet, deadline) {
            Ok(()) => Ok(waiter),
            Err(e) => {
                self.table.withdraw(id);
                Err(e)
            }
        }
    }

    /// Write `packet` for the registered request `id`, waiting for ring space
    /// and an in-flight slot. Nothing is written once the request is no
    /// longer pending (rescinded, transport closed).
    fn send(
        &self,
        id: u64,
        packet: &[u8],
        deadline: Option<crate::transport::SubmitDeadline>,
    ) -> Result<(), ClientError> {
        let mut link = lock(&self.link);
        loop {
            if !self.table.is_pending(id) {
                return Err(ClientError::Rescinded);
            }
            if let Some(d) = deadline.filter(|d| d.passed()) {
                return Err(d.error());
            }
            let max_inflight = link.max_inflight;
            let generation = link.generation;
            let Some(live) = link.live.as_mut() else { return Err(ClientError::Rescinded) };
            if !self.rings_usable(&live.channel) {
                drop(link);
                // Fail everyone now rather than when the channel thread notices.
                self.take_down(generation, "rescinded, rings freed");
                return Err(ClientError::Rescinded);
            }
            if live.sent.len() < max_inflight {
                match live.out.poll_ready(packet.len()) {
                    Ok(true) => match live.out.write(packet) {
                        Ok(()) => {
                            // Before the host can see it: its completion checks this set.
                            live.sent.insert(id);
                            if live.out.commit_write()
                                && let Err(e) = live.channel.signal.signal_peer()
                            {
                                log::debug!("signalling the host failed: {e}");
                            }
                            return Ok(());
                        }
                        Err(WriteError::Full { .. }) => {}
                        Err(e) => return self.write_failed(link, generation, e),
                    },
                    Ok(false) => {}
                    Err(e) => return self.write_failed(link, generation, e),
                }
            }
            link = self.space.wait_timeout(link, self.opts.wait_slice).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn write_failed(&self, link: MutexGuard<'_, Link>, generation: u64, e: WriteError) -> Result<(), ClientError> {
        drop(link);
        match e {
            WriteError::TooLarge { len, max } => {
                Err(ClientError::TooLarge { what: "a VMBus packet's bytes", len: len as u64, max: max as u64 })
            }
            WriteError::Corrupt(c) => {
                self.take_down(generation, &format!("guest-to-host ring corrupt: {c}"));
                Err(ClientError::Rescinded)
            }
            e => Err(e.into()),
        }
    }

    /// Make `channel` the live one; returns its generation.
    fn install(&self, channel: RawChannel) -> Result<u64, crate::transport::vmbus::ChannelError> {
        if !self.rings_usable(&channel) {
            return Err(crate::transport::vmbus::ChannelError::Rescinded);
        }
        let out = OutgoingRing::new(channel.outgoing.clone())?;
        let generation = {
            let mut link = lock(&self.link);
            if link.closed {
                return Err(crate::transport::vmbus::ChannelError::Other("transport closed".into()));
            }
            link.generation += 1;
            link.live = Some(Live::new(channel, out));
            link.generation
        };
        // The previous channel is closed (nothing holds it any more), so the
        // host no longer touches the quarantined buffers.
        let released = self.table.reopen();
        if released > 0 {
            log::info!("VMBus channel {generation} open; {released} quarantined buffers released");
        }
        self.space.notify_all();
        Ok(generation)
    }

    /// Take channel `generation` down and refuse every later offer: the
    /// transport is over (its callers see `Rescinded`, as after `close`).
    fn close_for_good(&self, generation: u64, why: &str) {
        lock(&self.link).closed = true;
        self.take_down(generation, why);
    }

    /// Take channel `generation` down (if still live): nothing more is sent
    /// on it, and every pending request fails with `Rescinded` at once.
    fn take_down(&self, generation: u64, why: &str) {
        {
            let mut link = lock(&self.link);
            if link.generation != generation || link.live.is_none() {
                return;
            }
            link.live = None;
        }
        self.space.notify_all();
        let n = self.table.rescind().len();
        log::warn!("VMBus channel {generation} down ({why}): {n} pending requests failed");
    }
}

impl Transport for VmbusTransport {
    fn pool(&self) -> &DmaPool {
        self.inner.source.pool()
    }

    fn submit(&self, buffers: OpBuffers) -> Result<Ticket, ClientError> {
        self.inner.submit(buffers)
    }

    fn num_queues(&self) -> usize {
        1
    }

    fn is_connected(&self) -> bool {
        lock(&self.inner.link).live.is_some() && !self.inner.table.is_removing()
    }
}

impl Drop for VmbusTransport {
    fn drop(&mut self) {
        self.close();
    }
}
