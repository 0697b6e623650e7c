//! A raw, possibly hostile guest: memfd RAM, the vhost-user frontend and one
//! hand-driven split queue (no `BlobClient`, no `SplitQueue`, which refuses
//! to post malformed chains by design). Descriptors are written byte by byte,
//! so any chain a broken or malicious driver could post can be sent.
//!
//! One chain is in flight at a time and always occupies descriptors
//! `0..n`. The device must signal the call eventfd for every completion
//! (EVENT_IDX is not offered and interrupts are never suppressed).

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmblob_protocol::framing::virtio::canonical_offsets;
use vmblob_protocol::ops::{OpCode, OpRequest, ResponseMessage};
use vmblob_protocol::transport::{OperationType, REQUEST_SIZE, RESPONSE_SIZE, VspRequest, VspResponse};
use vmblob_protocol::{BlobError, DataDirection};
use vmblob_vhost_frontend::{FrontendOptions, GuestRam, QueueConfig, VhostUserDevice};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use zerocopy::{FromBytes, IntoBytes};

const DESC_NEXT: u16 = 1;
/// `post_table`: this descriptor ends the chain.
pub const NO_NEXT: u16 = u16::MAX;
const DESC_WRITE: u16 = 2;

/// Where the raw guest keeps things in its RAM.
pub const RING_BASE: u64 = 0;
/// Header and op request (device-readable).
pub const READ_AREA: u64 = 0x10_0000;
/// Data sent to the host (device-readable).
pub const DATA_OUT_AREA: u64 = 0x20_0000;
/// Response buffer and status (device-writable).
pub const WRITE_AREA: u64 = 0x30_0000;
/// Data returned by the host (device-writable).
pub const DATA_IN_AREA: u64 = 0x40_0000;
/// RAM size: room for every area above plus scratch space.
pub const RAM_SIZE: u64 = 8 << 20;
/// How long to wait for one completion.
pub const COMPLETION_TIMEOUT: Duration = Duration::from_secs(10);

/// One descriptor as the driver writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

impl Desc {
    pub fn r(addr: u64, len: u32) -> Self {
        Self { addr, len, writable: false }
    }
    pub fn w(addr: u64, len: u32) -> Self {
        Self { addr, len, writable: true }
    }
}

/// A completion as the driver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    pub id: u32,
    pub len: u32,
}

/// A request in the seed's shape: header, op bytes, data out, and the sizes
/// of the response buffer and of the data-in buffer.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub header: VspRequest,
    pub op: Vec<u8>,
    pub data_out: Vec<u8>,
    pub resp_len: u32,
    pub data_in: u32,
}

impl RawRequest {
    /// A well-formed request for `op` with canonical offsets (as the VSC lays them out).
    pub fn new(op: &OpRequest, data_out: &[u8], data_in: u32) -> Self {
        Self::from_bytes(op.op().data_direction(), op.encode(), data_out, data_in)
    }

    /// A request whose op bytes are `op` verbatim; `dir` decides where the data goes.
    pub fn from_bytes(dir: DataDirection, op: Vec<u8>, data_out: &[u8], data_in: u32) -> Self {
        let resp_len = 4096u32;
        let data_len = match dir {
            DataDirection::ToHost => data_out.len() as u32,
            DataDirection::ToGuest => data_in,
            DataDirection::None => 0,
        };
        let valid = if dir == DataDirection::ToHost { data_len } else { 0 };
        let mut header = VspRequest {
            timeout_ms: 10_000.into(),
            data_buffer_length: data_len.into(),
            data_buffer_valid: valid.into(),
            operation_type: (OperationType::UserRequest as u32).into(),
            request_buffer_length: (op.len() as u32).into(),
            response_buffer_length: resp_len.into(),
            transaction_id: next_txn(),
            ..Default::default()
        };
        canonical_offsets(&mut header, dir);
        Self { header, op, data_out: data_out.to_vec(), resp_len, data_in }
    }

    /// The canonical chain: R = header|op (one descriptor), data out; W =
    /// response, data in, 12-byte status.
    pub fn chain(&self) -> Vec<Desc> {
        let mut d = vec![Desc::r(READ_AREA, (REQUEST_SIZE + self.op.len()) as u32)];
        if !self.data_out.is_empty() {
            d.push(Desc::r(DATA_OUT_AREA, self.data_out.len() as u32));
        }
        d.push(Desc::w(WRITE_AREA, self.resp_len));
        if self.data_in > 0 {
            d.push(Desc::w(DATA_IN_AREA, self.data_in));
        }
        d.push(Desc::w(WRITE_AREA + u64::from(self.resp_len), RESPONSE_SIZE as u32));
        d
    }
}

fn next_txn() -> [u8; 16] {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(1);
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(b"rawguest");
    t[8..].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    t
}

/// What came back for one chain.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub used: Used,
    /// The last 12 writable bytes of the chain (if all inside RAM), parsed.
    pub status: Option<VspResponse>,
    /// The response buffer's first `response_len` bytes, for a canonical request.
    pub response: Vec<u8>,
}

impl Exchange {
    /// The status code, panicking if no valid 12-byte response was written.
    pub fn code(&self) -> u32 {
        self.status.unwrap_or_else(|| panic!("no valid status written: {self:?}")).error.get()
    }
    pub fn error(&self) -> Option<BlobError> {
        BlobError::from_code(self.code())
    }
    /// Decode the response buffer as an answer to `op`.
    pub fn message(&self, op: OpCode) -> ResponseMessage {
        ResponseMessage::decode(&self.response, op).unwrap_or_else(|e| panic!("undecodable response ({e}): {self:?}"))
    }
}

/// The raw guest.
pub struct RawGuest {
    ram: GuestRam,
    device: VhostUserDevice,
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    next_avail: u16,
    last_used: u16,
    kick: Arc<EventFd>,
    call: Arc<EventFd>,
    epoll: Epoll,
}

impl RawGuest {
    /// Connect to `socket` and arm queue 0 with `queue_size` entries.
    pub fn connect(socket: &Path, queue_size: u16) -> RawGuest {
        Self::connect_with(socket, queue_size, false)
    }

    /// Like [`RawGuest::connect`], offering EVENT_IDX if `event_idx` (the
    /// guest then always asks for an interrupt at the next used entry).
    pub fn connect_with(socket: &Path, queue_size: u16, event_idx: bool) -> RawGuest {
        let ram = GuestRam::new(RAM_SIZE).expect("guest RAM");
        let opts = FrontendOptions { event_idx, connect_timeout: Duration::from_secs(10), ..Default::default() };
        let mut device = VhostUserDevice::connect(socket, &ram, 1, opts).expect("vhost-user handshake");
        assert_eq!(device.negotiated().event_idx(), event_idx, "EVENT_IDX negotiated as offered");
        let n = u64::from(queue_size);
        let desc = GuestAddress(RING_BASE);
        let avail = GuestAddress(RING_BASE + 16 * n);
        let used = GuestAddress((avail.0 + 4 + 2 * n + 2).next_multiple_of(4));
        let cfg = QueueConfig { index: 0, size: queue_size, desc, avail, used, base: 0 };
        device.activate(&[cfg]).expect("activate queue 0");
        let kick = device.kick_fd(0).expect("kick fd");
        let call = device.call_fd(0).expect("call fd");
        let epoll = Epoll::new().expect("epoll");
        epoll.ctl(ControlOperation::Add, call.as_raw_fd(), EpollEvent::new(EventSet::IN, 0)).expect("watch call fd");
        RawGuest { ram, device, size: queue_size, desc, avail, used, next_avail: 0, last_used: 0, kick, call, epoll }
    }

    pub fn mem(&self) -> &GuestMemoryMmap {
        self.ram.memory()
    }

    pub fn ram_size(&self) -> u64 {
        self.ram.size()
    }

    pub fn device(&mut self) -> &mut VhostUserDevice {
        &mut self.device
    }

    pub fn write(&self, gpa: u64, bytes: &[u8]) {
        self.mem().write_slice(bytes, GuestAddress(gpa)).expect("write guest RAM");
    }

    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem().read_slice(&mut v, GuestAddress(gpa)).expect("read guest RAM");
        v
    }

    fn in_ram(&self, d: &Desc) -> bool {
        d.addr.checked_add(u64::from(d.len)).is_some_and(|end| end <= self.ram.size())
    }

    /// Post `descs` as one chain (descriptors `0..n`) and kick.
    pub fn post(&mut self, descs: &[Desc]) {
        assert!(!descs.is_empty() && descs.len() <= usize::from(self.size), "chain must fit the queue");
        let table: Vec<(Desc, u16)> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| (*d, if i + 1 == descs.len() { NO_NEXT } else { (i + 1) as u16 }))
            .collect();
        self.post_table(&table);
    }

    /// Write descriptor `i` of the table as `table[i]` with its `next` link
    /// (`NO_NEXT`: end of chain; anything else sets the NEXT flag, even if it
    /// points out of the table or back into it), publish head 0 and kick.
    pub fn post_table(&mut self, table: &[(Desc, u16)]) {
        for (i, (d, next)) in table.iter().enumerate() {
            let mut flags = if d.writable { DESC_WRITE } else { 0 };
            if *next != NO_NEXT {
                flags |= DESC_NEXT;
            }
            let link = if *next == NO_NEXT { 0 } else { *next };
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&d.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&link.to_le_bytes());
            self.mem().write_slice(&raw, GuestAddress(self.desc.0 + 16 * i as u64)).expect("write descriptor");
        }
        self.publish(0);
    }

    /// Post several chains at once, chain `j` in descriptors
    /// `j * stride..`, and kick once.
    pub fn post_many(&mut self, chains: &[Vec<Desc>], stride: u16) {
        for (j, descs) in chains.iter().enumerate() {
            let base = j as u16 * stride;
            assert!(descs.len() <= usize::from(stride) && base + stride <= self.size, "chains must fit the queue");
            for (i, d) in descs.iter().enumerate() {
                let last = i + 1 == descs.len();
                let flags = if d.writable { DESC_WRITE } else { 0 } | if last { 0 } else { DESC_NEXT };
                let next = if last { 0 } else { base + i as u16 + 1 };
                let mut raw = [0u8; 16];
                raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
                raw[8..12].copy_from_slice(&d.len.to_le_bytes());
                raw[12..14].copy_from_slice(&flags.to_le_bytes());
                raw[14..16].copy_from_slice(&next.to_le_bytes());
                let at = GuestAddress(self.desc.0 + 16 * u64::from(base + i as u16));
                self.mem().write_slice(&raw, at).expect("write descriptor");
            }
            self.publish(base);
        }
    }

    /// Put `head` in the avail ring, bump avail.idx and kick.
    fn publish(&mut self, head: u16) {
        // used_event (only read with EVENT_IDX): interrupt at the next used entry.
        let used_event = GuestAddress(self.avail.0 + 4 + 2 * u64::from(self.size));
        self.mem().store(self.last_used.to_le(), used_event, Ordering::Relaxed).expect("used_event");
        let slot = u64::from(self.next_avail % self.size);
        self.mem().write_obj(head.to_le(), GuestAddress(self.avail.0 + 4 + 2 * slot)).expect("avail entry");
        self.next_avail = self.next_avail.wrapping_add(1);
        fence(Ordering::Release);
        self.mem()
            .store(self.next_avail.to_le(), GuestAddress(self.avail.0 + 2), Ordering::Release)
            .expect("avail idx");
        fence(Ordering::SeqCst);
        self.kick.write(1).expect("kick");
    }

    /// Wait (bounded) on the call eventfd for the next used entry.
    pub fn wait_used(&mut self, timeout: Duration) -> Option<Used> {
        let deadline = Instant::now() + timeout;
        let mut events = [EpollEvent::default(); 1];
        loop {
            let raw: u16 = self.mem().load(GuestAddress(self.used.0 + 2), Ordering::Acquire).expect("used idx");
            let used_idx = u16::from_le(raw);
            if used_idx != self.last_used {
                assert_eq!(used_idx, self.last_used.wrapping_add(1), "device posted more completions than chains");
                let slot = u64::from(self.last_used % self.size);
                let e = self.read(self.used.0 + 4 + 8 * slot, 8);
                self.last_used = used_idx;
                return Some(Used {
                    id: u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
                    len: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.epoll.wait(left.as_millis().clamp(1, i32::MAX as u128) as i32, &mut events) {
                Ok(n) if n > 0 => {
                    let _ = self.call.read();
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("epoll on the call eventfd: {e}"),
            }
        }
    }

    /// Post a chain and wait for its completion; poisons the writable
    /// buffers first so stale bytes cannot pass for a status.
    pub fn exchange(&mut self, descs: &[Desc]) -> Exchange {
        for d in descs.iter().filter(|d| d.writable && self.in_ram(d)) {
            self.write(d.addr, &vec![0xEE; d.len as usize]);
        }
        self.post(descs);
        let used = self
            .wait_used(COMPLETION_TIMEOUT)
            .unwrap_or_else(|| panic!("no completion within {COMPLETION_TIMEOUT:?} for chain {descs:?}"));
        assert_eq!(used.id, 0, "the only chain in flight has head 0");
        let status = self.tail(descs, RESPONSE_SIZE).and_then(|b| VspResponse::read_from_bytes(&b).ok());
        Exchange { used, status, response: Vec::new() }
    }

    /// Like [`RawGuest::exchange`] for a hand-linked descriptor table.
    pub fn exchange_table(&mut self, table: &[(Desc, u16)]) -> Used {
        for (d, _) in table.iter().filter(|(d, _)| d.writable && self.in_ram(d)) {
            self.write(d.addr, &vec![0xEE; d.len as usize]);
        }
        self.post_table(table);
        let used = self.wait_used(COMPLETION_TIMEOUT).unwrap_or_else(|| panic!("no completion for table {table:?}"));
        assert_eq!(used.id, 0, "the only chain in flight has head 0");
        used
    }

    /// Place a canonical request's bytes, send its chain, and read back the
    /// status and response buffer.
    pub fn send(&mut self, req: &RawRequest) -> Exchange {
        self.place(req);
        let mut x = self.exchange(&req.chain());
        if let Some(s) = x.status {
            let n = (s.response_len.get() as usize).min(req.resp_len as usize);
            x.response = self.read(WRITE_AREA, n);
        }
        x
    }

    /// Write a request's header, op bytes and outgoing data into their areas.
    pub fn place(&self, req: &RawRequest) {
        self.write(READ_AREA, req.header.as_bytes());
        self.write(READ_AREA + REQUEST_SIZE as u64, &req.op);
        if !req.data_out.is_empty() {
            self.write(DATA_OUT_AREA, &req.data_out);
        }
    }

    /// The last `n` bytes of the chain's writable descriptors, if they all lie in RAM.
    fn tail(&self, descs: &[Desc], n: usize) -> Option<Vec<u8>> {
        let mut bytes = Vec::new();
        for d in descs.iter().filter(|d| d.writable) {
            if !self.in_ram(d) {
                return None;
            }
            bytes.extend(self.read(d.addr, d.len as usize));
        }
        (bytes.len() >= n).then(|| bytes.split_off(bytes.len() - n))
    }
}

/// Replace the only occurrence of `from` in `bytes` with `to` (same length):
/// how a hostile guest smuggles a bad field into otherwise valid op bytes.
pub fn patch(mut bytes: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len(), "patch keeps the length");
    let at: Vec<usize> = bytes.windows(from.len()).enumerate().filter(|(_, w)| *w == from).map(|(i, _)| i).collect();
    assert_eq!(at.len(), 1, "{:?} must occur exactly once", String::from_utf8_lossy(from));
    bytes[at[0]..at[0] + to.len()].copy_from_slice(to);
    bytes
}
