//! The test guest: opens the emulated channel, lays requests out in guest RAM the way the seed
//! driver does (data, request, response pages), and reads completions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmblob_glue::GuestRam;
use vmblob_glue::vmbus::emulator::{
    EmulatorConfig, GuestChannel, GuestError, GuestRingMem, OpenParams, VmbusEmulator, Wakeup, page_buffer,
};
use vmblob_protocol::framing::vmbus::{Packet, PageBuffer, encode_blob_request, parse_blob_completion, parse_packet};
use vmblob_protocol::ops::{
    BlobListItem, BlobRef, BlockListType, ContainerEntry, ContainerProperties, ResponseMessage,
};
use vmblob_protocol::transport::OperationType;
use vmblob_protocol::{
    BlobError, BlobName, ContainerName, DataDirection, OpCode, OpRequest, OpResponse, VspRequest, VspResponse,
};
use vmblob_vmbus::{IncomingRing, OutgoingRing, ReadError};

use crate::engine::{Engine, Limits};
use crate::store::memory::MemoryStore;
use crate::store::{BlobStore, DataSink, DataSource, Page, StoreError, TxnId};
use crate::vmbus::{ServiceOptions, VmbusService};

pub const RAM: u64 = 64 << 20;
pub const RING_GPA: u64 = 0;
pub const RING_SIZE: usize = 64 << 10;
const HEAP: u64 = 1 << 20;
pub const RESP_CAP: u32 = 16 << 10;
pub const WAIT: Duration = Duration::from_secs(20);

/// A request's data, request and response pages.
pub type Pages = (Option<PageBuffer>, PageBuffer, PageBuffer);

/// A request the guest sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub txn: u64,
    pub op: OpCode,
    pub resp_gpa: u64,
    pub data_gpa: u64,
}

/// What the guest got when it looked for a completion.
#[derive(Debug)]
pub enum Next {
    Completion(u64, VspResponse),
    Timeout,
    Ended(GuestError),
}

pub struct TestGuest {
    pub emu: VmbusEmulator,
    pub service: Arc<VmbusService>,
    pub ch: GuestChannel,
    pub tx: OutgoingRing<GuestRingMem>,
    pub rx: IncomingRing<GuestRingMem>,
    next_gpa: u64,
    next_txn: u64,
    /// Completions read while looking for another.
    early: HashMap<u64, VspResponse>,
}

pub fn name(c: &str) -> ContainerName {
    ContainerName::new(c).unwrap()
}

pub fn blob_ref(c: &str, b: &str) -> BlobRef {
    BlobRef { container: name(c), blob: BlobName::new(b).unwrap() }
}

impl TestGuest {
    pub fn new() -> Self {
        Self::with(Arc::new(MemoryStore::new()), Limits::default(), ServiceOptions::default())
    }

    pub fn with(store: Arc<dyn BlobStore>, limits: Limits, options: ServiceOptions) -> Self {
        let engine = Arc::new(Engine::new(store, limits, 1));
        let service = Arc::new(VmbusService::new(engine, options));
        let emu = VmbusEmulator::new(GuestRam::new(RAM).unwrap(), service.clone(), EmulatorConfig::default());
        emu.offer().unwrap();
        let mut guest = TestGuest::attach(emu.clone(), service, None);
        guest.next_gpa = HEAP;
        guest
    }

    /// Opens the current offer (waiting for one newer than `seen`) with fresh rings.
    pub fn attach(emu: VmbusEmulator, service: Arc<VmbusService>, seen: Option<u64>) -> Self {
        let bus = emu.guest();
        let offer = bus.wait_offer(seen, WAIT).expect("an offer");
        let ch = bus.open(&offer, OpenParams::symmetric(RING_GPA, RING_SIZE)).unwrap();
        let tx = OutgoingRing::new(ch.outgoing_ring()).unwrap();
        let rx = IncomingRing::new(ch.incoming_ring()).unwrap();
        TestGuest { emu, service, ch, tx, rx, next_gpa: HEAP, next_txn: 0, early: HashMap::new() }
    }

    /// Closes the channel and opens it again on rings of these sizes (control page included).
    pub fn reopen(&mut self, send_ring_size: usize, recv_ring_size: usize) {
        self.ch.close().unwrap();
        let offer = self.emu.guest().current_offer().unwrap();
        let params = OpenParams { ring_gpa: RING_GPA, send_ring_size, recv_ring_size };
        self.ch = self.emu.guest().open(&offer, params).unwrap();
        self.tx = OutgoingRing::new(self.ch.outgoing_ring()).unwrap();
        self.rx = IncomingRing::new(self.ch.incoming_ring()).unwrap();
    }

    pub fn ram(&self) -> &vm_memory::GuestMemoryMmap {
        self.ch.ram().memory()
    }

    pub fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next_gpa;
        self.next_gpa = (at + len.max(1)).next_multiple_of(4096) + 4096; // a guard page apart
        assert!(self.next_gpa < RAM, "test guest RAM exhausted");
        at
    }

    pub fn next_txn(&mut self) -> u64 {
        self.next_txn += 1;
        self.next_txn
    }

    /// Sends a whole packet and signals the host if the ring says so.
    pub fn send_packet(&mut self, packet: &[u8]) {
        self.tx.write(packet).expect("room in the guest→host ring");
        // A rescind racing this send is what the rescind tests provoke: the packet is in the
        // ring either way, and the host's rescind hook accounts for it.
        if self.tx.commit_write()
            && let Err(e) = self.ch.signal_host()
        {
            assert!(matches!(e, vmblob_glue::vmbus::emulator::GuestError::Rescinded), "signal_host: {e}");
        }
    }

    /// Lays out `op` (request at an odd offset, so buffers straddle pages) and sends it.
    pub fn submit(&mut self, op: &OpRequest, data_out: &[u8], data_in: u32) -> Sent {
        let txn = self.next_txn();
        self.submit_as(txn, op, data_out, data_in)
    }

    pub fn submit_as(&mut self, txn: u64, op: &OpRequest, data_out: &[u8], data_in: u32) -> Sent {
        let (mut hdr, sent, (data, req, resp)) = self.prepare(txn, op, data_out, data_in);
        let packet = encode_blob_request(txn, &mut hdr, data.as_ref(), &req, &resp);
        self.send_packet(&packet);
        sent
    }

    /// Writes `op`'s buffers into guest RAM; returns the header and the (data, request,
    /// response) pages for `encode_blob_request`.
    pub fn prepare(&mut self, txn: u64, op: &OpRequest, data_out: &[u8], data_in: u32) -> (VspRequest, Sent, Pages) {
        let body = op.encode();
        let dir = op.op().data_direction();
        let data_len = match dir {
            DataDirection::ToHost => data_out.len() as u32,
            DataDirection::ToGuest => data_in,
            DataDirection::None => 0,
        };
        let req_gpa = self.alloc(body.len() as u64 + 0x7f0) + 0x7f0;
        self.ram().write_slice(&body, GuestAddress(req_gpa)).unwrap();
        let resp_gpa = self.alloc(u64::from(RESP_CAP));
        let data_gpa = self.alloc(u64::from(data_len) + 0x100) + 0x100;
        if dir == DataDirection::ToHost {
            self.ram().write_slice(data_out, GuestAddress(data_gpa)).unwrap();
        }
        let mut tid = [0u8; 16];
        tid[..8].copy_from_slice(&txn.to_le_bytes());
        let hdr = VspRequest {
            operation_type: (OperationType::UserRequest as u32).into(),
            request_buffer_length: (body.len() as u32).into(),
            response_buffer_length: RESP_CAP.into(),
            data_buffer_length: data_len.into(),
            data_buffer_valid: (if dir == DataDirection::ToHost { data_len } else { 0 }).into(),
            transaction_id: tid,
            ..Default::default()
        };
        let data = (data_len > 0).then(|| page_buffer(data_gpa, data_len));
        let pages = (data, page_buffer(req_gpa, body.len() as u32), page_buffer(resp_gpa, RESP_CAP));
        (hdr, Sent { txn, op: op.op(), resp_gpa, data_gpa }, pages)
    }

    /// The next completion in the ring, sleeping on interrupts for at most `timeout` each.
    pub fn next(&mut self, timeout: Duration) -> Next {
        loop {
            match self.rx.read() {
                Ok(bytes) => {
                    if self.rx.commit_read() {
                        let _ = self.ch.signal_host();
                    }
                    return match parse_packet(&bytes, 0).unwrap() {
                        Packet::Completion { transaction_id, payload } => {
                            Next::Completion(transaction_id, parse_blob_completion(&payload).unwrap())
                        }
                        other => panic!("the host sent {other:?}"),
                    };
                }
                Err(ReadError::Empty) => {}
                Err(ReadError::Corrupt(e)) => panic!("the host corrupted the ring: {e}"),
            }
            match self.rx.unmask_and_check() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => panic!("the host corrupted the ring: {e}"),
            }
            match self.ch.wait_interrupt(Some(timeout)) {
                Ok(Wakeup::Interrupt { .. }) => {}
                Ok(Wakeup::Timeout) => return Next::Timeout,
                Err(e) => return Next::Ended(e),
            }
        }
    }

    /// The completion of `txn` (others read meanwhile are kept).
    pub fn wait_for(&mut self, txn: u64) -> VspResponse {
        loop {
            if let Some(r) = self.early.remove(&txn) {
                return r;
            }
            match self.next(WAIT) {
                Next::Completion(id, r) => {
                    assert!(self.early.insert(id, r).is_none(), "two completions for {id}");
                }
                other => panic!("waiting for {txn}: {other:?}"),
            }
        }
    }

    /// Every completion already in the ring, without waiting.
    pub fn drain(&mut self) -> Vec<(u64, VspResponse)> {
        let mut out: Vec<_> = self.early.drain().collect();
        while let Ok(bytes) = self.rx.read() {
            // The host may wait for this space (a rescinded channel takes no signal).
            if self.rx.commit_read() {
                let _ = self.ch.signal_host();
            }
            match parse_packet(&bytes, 0).unwrap() {
                Packet::Completion { transaction_id, payload } => {
                    out.push((transaction_id, parse_blob_completion(&payload).unwrap()))
                }
                other => panic!("the host sent {other:?}"),
            }
        }
        out
    }

    /// Decodes the op response of a completed request.
    pub fn decode(&self, sent: &Sent, resp: &VspResponse) -> Result<OpResponse, BlobError> {
        let n = resp.response_len.get() as usize;
        if n == 0 {
            return Err(BlobError::from_code(resp.error.get()).expect("a status-only answer is an error"));
        }
        let mut buf = vec![0u8; n];
        self.ram().read_slice(&mut buf, GuestAddress(sent.resp_gpa)).unwrap();
        match ResponseMessage::decode(&buf, sent.op).unwrap().result {
            Ok(r) => {
                assert_eq!(resp.error.get(), 0);
                Ok(r)
            }
            Err(e) => {
                assert_eq!(e.error.code(), resp.error.get(), "body status matches the completion's");
                Err(e.error)
            }
        }
    }

    /// Sends `op`, waits for its completion, decodes it; GetBlob's data comes back too.
    pub fn call(&mut self, op: &OpRequest, data_out: &[u8], data_in: u32) -> (Result<OpResponse, BlobError>, Vec<u8>) {
        let sent = self.submit(op, data_out, data_in);
        let resp = self.wait_for(sent.txn);
        let result = self.decode(&sent, &resp);
        let data = match &result {
            Ok(OpResponse::BlobData { length, .. }) => {
                let mut d = vec![0u8; *length as usize];
                self.ram().read_slice(&mut d, GuestAddress(sent.data_gpa)).unwrap();
                d
            }
            _ => Vec::new(),
        };
        (result, data)
    }
}

/// Blocks `container_properties` until opened (and panics for the container `panic`); everything
/// else goes to a `MemoryStore`.
pub struct GateStore {
    inner: MemoryStore,
    open: Mutex<bool>,
    opened: Condvar,
    entered: AtomicUsize,
}

impl GateStore {
    pub fn new() -> Self {
        GateStore { inner: MemoryStore::new(), open: Mutex::new(false), opened: Condvar::new(), entered: 0.into() }
    }

    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    /// Calls that reached the gate.
    pub fn entered(&self) -> usize {
        self.entered.load(Ordering::SeqCst)
    }
}

impl BlobStore for GateStore {
    fn create_container(
        &self,
        name: &ContainerName,
        metadata: &vmblob_protocol::ops::Metadata,
        txn: &TxnId,
    ) -> Result<ContainerProperties, StoreError> {
        self.inner.create_container(name, metadata, txn)
    }
    fn delete_container(&self, name: &ContainerName) -> Result<(), StoreError> {
        self.inner.delete_container(name)
    }
    fn container_properties(&self, name: &ContainerName) -> Result<ContainerProperties, StoreError> {
        assert_ne!(name.as_str(), "panic", "a buggy store");
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        drop(open);
        self.inner.container_properties(name)
    }
    fn list_containers(&self, req: &vmblob_protocol::ops::ListContainers) -> Result<Page<ContainerEntry>, StoreError> {
        self.inner.list_containers(req)
    }
    fn put_blob(
        &self,
        req: &vmblob_protocol::ops::PutBlob,
        data: &mut dyn DataSource,
        txn: &TxnId,
    ) -> Result<vmblob_protocol::ops::BlobWritten, StoreError> {
        self.inner.put_blob(req, data, txn)
    }
    fn get_blob(
        &self,
        req: &vmblob_protocol::ops::GetBlob,
        sink: &mut dyn DataSink,
    ) -> Result<(vmblob_protocol::ops::BlobProperties, u64, u64), StoreError> {
        self.inner.get_blob(req, sink)
    }
    fn blob_properties(
        &self,
        target: &BlobRef,
        conditions: &vmblob_protocol::ops::Conditions,
    ) -> Result<vmblob_protocol::ops::BlobProperties, StoreError> {
        self.inner.blob_properties(target, conditions)
    }
    fn delete_blob(&self, target: &BlobRef, conditions: &vmblob_protocol::ops::Conditions) -> Result<(), StoreError> {
        self.inner.delete_blob(target, conditions)
    }
    fn uncommitted_names(&self, container: &ContainerName, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.uncommitted_names(container, prefix)
    }
    fn name_order(&self) -> fn(&str, &str) -> std::cmp::Ordering {
        self.inner.name_order()
    }
    fn list_blobs(&self, req: &vmblob_protocol::ops::ListBlobs) -> Result<Page<BlobListItem>, StoreError> {
        self.inner.list_blobs(req)
    }
    fn put_block(
        &self,
        target: &BlobRef,
        id: &vmblob_protocol::BlockId,
        data: &mut dyn DataSource,
        expected_crc64: Option<u64>,
    ) -> Result<u64, StoreError> {
        self.inner.put_block(target, id, data, expected_crc64)
    }
    fn put_block_list(
        &self,
        req: &vmblob_protocol::ops::PutBlockList,
        txn: &TxnId,
    ) -> Result<vmblob_protocol::ops::BlobWritten, StoreError> {
        self.inner.put_block_list(req, txn)
    }
    fn get_block_list(
        &self,
        target: &BlobRef,
        list_type: BlockListType,
    ) -> Result<Vec<vmblob_protocol::ops::BlockInfo>, StoreError> {
        self.inner.get_block_list(target, list_type)
    }
    fn set_blob_properties(
        &self,
        req: &vmblob_protocol::ops::SetBlobProperties,
        txn: &TxnId,
    ) -> Result<vmblob_protocol::ops::BlobWritten, StoreError> {
        self.inner.set_blob_properties(req, txn)
    }
    fn copy_blob(
        &self,
        req: &vmblob_protocol::ops::CopyBlob,
        txn: &TxnId,
    ) -> Result<vmblob_protocol::ops::BlobWritten, StoreError> {
        self.inner.copy_blob(req, txn)
    }
}
