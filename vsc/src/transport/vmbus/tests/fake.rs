//! A scripted host for the transport's unit tests: a channel pair over rings
//! in guest RAM (uio map 0 layout), and a host end that reads requests and
//! writes completions, honest or not.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmblob_protocol::config::{DeviceConfig, caps};
use vmblob_protocol::framing::BufferLayout;
use vmblob_protocol::framing::vmbus::{
    GpaDirectFrame, MAX_PACKET_PAGES, PageBuffer, encode_blob_completion, parse_packet,
};
use vmblob_protocol::ops::{ContainerProperties, OpRequest, OpResponse, encode_error_at, encode_success_at};
use vmblob_protocol::transport::MAX_BUFFER_LEN;
use vmblob_protocol::{BlobError, OpCode, Segment, VspRequest, VspResponse};
use vmblob_vhost_frontend::GuestRam;
use vmblob_vmbus::{
    ChannelEnded, ChannelPair, ChannelRings, ChannelSignal, ChannelState, ChannelStatus, ControlWord, Doorbell,
    IncomingRing, MappedRingMem, OutgoingRing, RawChannel, ReadError, RingMem,
};

use crate::transport::dma::DmaPool;
use crate::transport::vmbus::channel::{ChannelError, ChannelSource, identity_page_buffer};

type Ring = Arc<MappedRingMem<GuestMemoryMmap>>;

/// Rings live in the first MiB of guest RAM, buffers above it.
const RINGS_AREA: u64 = 1 << 20;

pub fn config(max_inflight: u32) -> DeviceConfig {
    DeviceConfig {
        min_op_version: 1,
        max_op_version: 1,
        max_buffer_len: MAX_BUFFER_LEN,
        max_data_len: MAX_BUFFER_LEN - 8192,
        max_request_len: 4 << 20,
        max_segments: 1024,
        max_inflight,
        num_queues: 1,
        capabilities: caps::ALL,
        max_blob_size: 1 << 40,
        block_size_hint: 8 << 20,
    }
}

/// Guest RAM, a DMA pool in it, and the channel on offer.
pub struct FakeSource {
    ram: GuestRam,
    pool: DmaPool,
    offer: Mutex<Option<RawChannel>>,
    offered: Condvar,
    ring_size: usize,
    /// Like `uio_hv_generic` since 6.11: the rings are freed once the guest
    /// has been told of the rescind (see [`FreedOnRescind`]).
    frees_rings_on_rescind: bool,
    /// Guest accesses to freed rings, over every channel offered.
    touched_after_rescind: Arc<AtomicUsize>,
    /// The pool's pages moved (what a uio source's pagemap check reports).
    moved: AtomicBool,
}

impl FakeSource {
    /// `ring_size`: bytes per direction, control page included.
    pub fn new(ring_size: usize) -> Arc<Self> {
        Self::build(ring_size, false)
    }

    /// A source whose rings are freed on rescind, as `hv_uio_rescind` does.
    pub fn freeing_rings_on_rescind(ring_size: usize) -> Arc<Self> {
        Self::build(ring_size, true)
    }

    fn build(ring_size: usize, frees_rings_on_rescind: bool) -> Arc<Self> {
        let ram = GuestRam::new(64 << 20).unwrap();
        let pool = DmaPool::new(ram.memory().clone(), GuestAddress(RINGS_AREA), (64 << 20) - RINGS_AREA).unwrap();
        assert!(2 * ring_size as u64 <= RINGS_AREA);
        Arc::new(Self {
            ram,
            pool,
            offer: Mutex::new(None),
            offered: Condvar::new(),
            ring_size,
            frees_rings_on_rescind,
            touched_after_rescind: Arc::default(),
            moved: AtomicBool::new(false),
        })
    }

    /// From now on the pool is not where the host's page numbers point.
    pub fn move_pool(&self) {
        self.moved.store(true, Ordering::SeqCst);
    }

    /// Ring accesses the guest made after it learned of a rescind (each one
    /// a use-after-free on a real kernel).
    pub fn touched_after_rescind(&self) -> usize {
        self.touched_after_rescind.load(Ordering::SeqCst)
    }

    /// Offer a fresh channel (zeroed rings, as the kernel's open leaves
    /// them); the next `open` takes it. Returns the host's end.
    pub fn offer(&self) -> HostEnd {
        let mem = self.ram.memory().clone();
        mem.write_slice(&vec![0u8; 2 * self.ring_size], GuestAddress(0)).unwrap();
        let rings = ChannelRings::new(mem.clone(), 0, self.ring_size, self.ring_size).unwrap();
        let pair = ChannelPair::in_memory(&rings).unwrap();
        let (g2h, h2g) = (Arc::new(rings.guest_to_host), Arc::new(rings.host_to_guest));
        let host = HostEnd {
            mem,
            incoming: IncomingRing::new(g2h.clone()).unwrap(),
            outgoing: OutgoingRing::new(h2g.clone()).unwrap(),
            guest: Arc::downgrade(&pair.guest.signal),
            to_guest: pair.to_guest.clone(),
            to_host: pair.to_host.clone(),
            state: pair.state.clone(),
            g2h,
            h2g,
        };
        let guest = if self.frees_rings_on_rescind {
            let told = Arc::new(AtomicBool::new(false));
            let freed = |ring: Arc<dyn RingMem>| -> Arc<dyn RingMem> {
                Arc::new(FreedOnRescind { ring, told: told.clone(), touched: self.touched_after_rescind.clone() })
            };
            RawChannel {
                incoming: freed(pair.guest.incoming),
                outgoing: freed(pair.guest.outgoing),
                signal: Arc::new(TellsRescind { signal: pair.guest.signal, told }),
            }
        } else {
            pair.guest
        };
        *self.offer.lock().unwrap() = Some(guest);
        self.offered.notify_all();
        host
    }
}

impl ChannelSource for FakeSource {
    fn pool(&self) -> &DmaPool {
        &self.pool
    }
    fn page_buffer(&self, addr: GuestAddress, len: usize) -> Result<PageBuffer, ChannelError> {
        identity_page_buffer(addr, len)
    }
    fn open(&self, timeout: Duration) -> Result<Option<RawChannel>, ChannelError> {
        let deadline = Instant::now() + timeout;
        let mut offer = self.offer.lock().unwrap();
        loop {
            if let Some(ch) = offer.take() {
                return Ok(Some(ch));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            offer = self.offered.wait_timeout(offer, left).unwrap().0;
        }
    }
    fn rings_outlive_rescind(&self) -> bool {
        !self.frees_rings_on_rescind
    }
    fn check_pinned(&self) -> Result<(), ChannelError> {
        match self.moved.load(Ordering::SeqCst) {
            true => Err(ChannelError::Other("page 5 moved".into())),
            false => Ok(()),
        }
    }
}

/// A guest ring as the kernel leaves it after `hv_uio_rescind` (6.11+):
/// the pages are freed while still mapped. From the moment the guest was
/// told of the rescind (`told`), every access counts in `touched` and sees
/// garbage; writes go nowhere.
struct FreedOnRescind {
    ring: Arc<dyn RingMem>,
    told: Arc<AtomicBool>,
    touched: Arc<AtomicUsize>,
}

impl FreedOnRescind {
    fn freed(&self) -> bool {
        let freed = self.told.load(Ordering::SeqCst);
        if freed {
            self.touched.fetch_add(1, Ordering::SeqCst);
        }
        freed
    }
}

/// Whatever the allocator put there since.
const POISON: u8 = 0xa5;

impl RingMem for FreedOnRescind {
    fn len(&self) -> usize {
        self.ring.len()
    }
    fn load(&self, word: ControlWord, order: Ordering) -> u32 {
        if self.freed() { u32::from_ne_bytes([POISON; 4]) } else { self.ring.load(word, order) }
    }
    fn store(&self, word: ControlWord, value: u32, order: Ordering) {
        if !self.freed() {
            self.ring.store(word, value, order)
        }
    }
    fn read_at(&self, off: usize, buf: &mut [u8]) {
        if self.freed() { buf.fill(POISON) } else { self.ring.read_at(off, buf) }
    }
    fn write_at(&self, off: usize, buf: &[u8]) {
        if !self.freed() {
            self.ring.write_at(off, buf)
        }
    }
}

/// The guest's signal, noting when the guest first learns of the rescind
/// (EIO / POLLERR on `/dev/uioN`): from then on its rings are freed.
struct TellsRescind {
    signal: Arc<dyn ChannelSignal>,
    told: Arc<AtomicBool>,
}

impl TellsRescind {
    fn note<T>(&self, r: Result<T, ChannelEnded>) -> Result<T, ChannelEnded> {
        if matches!(r, Err(ChannelEnded::Rescinded)) {
            self.told.store(true, Ordering::SeqCst);
        }
        r
    }
}

impl ChannelSignal for TellsRescind {
    fn signal_peer(&self) -> Result<(), ChannelEnded> {
        self.note(self.signal.signal_peer())
    }
    fn wait(&self, timeout: Option<Duration>) -> Result<bool, ChannelEnded> {
        self.note(self.signal.wait(timeout))
    }
    fn unmask(&self) -> Result<(), ChannelEnded> {
        self.note(self.signal.unmask())
    }
    fn wake_self(&self) {
        self.signal.wake_self()
    }
    fn is_rescinded(&self) -> bool {
        let rescinded = self.signal.is_rescinded();
        if rescinded {
            self.told.store(true, Ordering::SeqCst);
        }
        rescinded
    }
}

/// One request as the host sees it.
#[derive(Debug)]
pub struct Request {
    pub id: u64,
    pub header: VspRequest,
    /// The op version the request came in (its answer goes in it too).
    pub version: u16,
    pub op: OpRequest,
    pub layout: BufferLayout,
    pub pfn_count: usize,
}

/// The host's end of a fake channel.
pub struct HostEnd {
    mem: GuestMemoryMmap,
    incoming: IncomingRing<Ring>,
    outgoing: OutgoingRing<Ring>,
    to_guest: Doorbell,
    to_host: Doorbell,
    state: ChannelState,
    /// The guest's signal; gone once the guest dropped every copy (closed).
    guest: Weak<dyn ChannelSignal>,
    g2h: Ring,
    h2g: Ring,
}

fn read_segments(mem: &GuestMemoryMmap, segs: &[Segment]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in segs {
        let mut b = vec![0u8; s.len as usize];
        mem.read_slice(&mut b, GuestAddress(s.addr)).unwrap();
        out.extend(b);
    }
    out
}

fn write_segments(mem: &GuestMemoryMmap, segs: &[Segment], mut bytes: &[u8]) {
    for s in segs {
        let n = bytes.len().min(s.len as usize);
        mem.write_slice(&bytes[..n], GuestAddress(s.addr)).unwrap();
        bytes = &bytes[n..];
    }
    assert!(bytes.is_empty(), "response larger than the buffer");
}

impl HostEnd {
    /// The guest→host ring's write index: moves only when the guest sends.
    pub fn guest_write_index(&self) -> u32 {
        self.g2h.load(vmblob_vmbus::ControlWord::WriteIndex, Ordering::SeqCst)
    }

    pub fn guest_closed(&self) -> bool {
        self.guest.strong_count() == 0
    }

    /// The next raw packet, waiting at most `timeout`.
    pub fn next_packet(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.incoming.read() {
                Ok(p) => {
                    if self.incoming.commit_read() {
                        self.to_guest.ring();
                    }
                    return Some(p);
                }
                Err(ReadError::Empty) => {}
                Err(e) => panic!("guest wrote a corrupt ring: {e}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.to_host.wait(Some(left.min(Duration::from_millis(20)))).unwrap();
        }
    }

    /// The next request, decoded and checked like a VSP would.
    pub fn next_request(&mut self, timeout: Duration) -> Option<Request> {
        let bytes = self.next_packet(timeout)?;
        let frame = GpaDirectFrame::from_packet(parse_packet(&bytes, MAX_PACKET_PAGES).unwrap()).unwrap();
        let pfn_count = match parse_packet(&bytes, MAX_PACKET_PAGES).unwrap() {
            vmblob_protocol::framing::vmbus::Packet::GpaDirect { ranges, .. } => ranges[0].pfns.len(),
            _ => unreachable!(),
        };
        let layout = frame.layout().unwrap();
        let (version, op) = OpRequest::decode_versioned(&read_segments(&self.mem, &layout.request)).unwrap();
        Some(Request { id: frame.transaction_id, header: frame.header, version, op, layout, pfn_count })
    }

    pub fn read_data(&self, req: &Request) -> Vec<u8> {
        let segs = req.layout.data.readable().unwrap_or(&[]);
        let mut d = read_segments(&self.mem, segs);
        d.truncate(req.layout.data_valid as usize);
        d
    }

    /// Post a raw packet; waits while the host→guest ring is full.
    pub fn send_raw(&mut self, packet: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.outgoing.poll_ready(packet.len()).unwrap() {
            assert!(Instant::now() < deadline, "host-to-guest ring stays full");
            std::thread::sleep(Duration::from_millis(1));
        }
        self.outgoing.write(packet).unwrap();
        if self.outgoing.commit_write() {
            self.to_guest.ring();
        }
    }

    /// Put `packet` into the ring as is, with no check, and publish it.
    pub fn send_raw_unchecked(&mut self, packet: &[u8]) {
        let at = self.h2g.load(ControlWord::WriteIndex, Ordering::SeqCst) as usize;
        self.h2g.write_at(at, packet);
        self.set_host_write_index(((at + packet.len() + 8) % self.h2g.len()) as u32);
    }

    /// Store the host→guest write index (any value) and signal.
    pub fn set_host_write_index(&mut self, index: u32) {
        self.h2g.store(vmblob_vmbus::ControlWord::WriteIndex, index, Ordering::SeqCst);
        self.to_guest.ring();
    }

    pub fn complete(&mut self, id: u64, resp: VspResponse) {
        self.send_raw(&encode_blob_completion(id, &resp));
    }

    /// Write `body` into the response buffer and complete with `status`.
    pub fn reply(&mut self, req: &Request, status: u32, body: &[u8]) {
        write_segments(&self.mem, &req.layout.response, body);
        self.complete(req.id, VspResponse::new(status, body.len() as u32));
    }

    /// Answer like a tiny VSP: the device config, containers are created,
    /// everything else is not found.
    pub fn answer(&mut self, req: &Request, config: &DeviceConfig) {
        let op = req.op.op();
        let cap = req.header.response_buffer_length.get() as usize;
        match &req.op {
            OpRequest::GetDeviceConfig => {
                self.reply(req, 0, &encode_success_at(req.version, op, &OpResponse::DeviceConfig(*config)))
            }
            OpRequest::CreateContainer { container, .. } => {
                let props = ContainerProperties {
                    etag: container.as_str().into(),
                    last_modified_ms: 0,
                    metadata: Default::default(),
                };
                self.reply(req, 0, &encode_success_at(req.version, op, &OpResponse::ContainerCreated(props)))
            }
            _ => {
                let body = encode_error_at(req.version, op, BlobError::BlobNotFound, "", cap);
                self.reply(req, BlobError::BlobNotFound.code(), &body)
            }
        }
    }

    /// Answer the config request that `VmbusTransport::open` sends.
    pub fn answer_config(&mut self, config: &DeviceConfig) {
        let req = self.next_request(Duration::from_secs(10)).expect("config request");
        assert_eq!(req.op.op(), OpCode::GetDeviceConfig);
        self.answer(&req, config);
    }

    /// Take the channel away (after whatever completions were posted).
    pub fn rescind(&self) {
        self.state.end(ChannelStatus::Rescinded);
        self.to_guest.ring();
    }
}
