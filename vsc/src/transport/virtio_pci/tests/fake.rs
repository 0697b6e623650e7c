//! A fake PCI function for the transport's tests: a sysfs tree in a tempdir
//! (`config`, `resource`, `resource4`), pinned memory with a fake pagemap
//! whose frames jump every few pages, and a device model that traps the
//! BAR's registers (as a VMM does) and serves the split rings from a thread
//! through virtio-queue, seeing memory only at the guest-physical addresses
//! the driver wrote.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vmblob_protocol::config::{CONFIG_MAGIC, DeviceConfig, caps as devcaps};
use vmblob_protocol::framing::virtio::{ChainDescriptor, VirtioFrame};
use vmblob_protocol::ops::{
    BlobProperties, ContainerProperties, OpRequest, OpResponse, encode_error_at, encode_success_at,
};
use vmblob_protocol::transport::{MAX_BUFFER_LEN, REQUEST_SIZE};
use vmblob_protocol::{BlobError, Segment, VspRequest, VspResponse};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use zerocopy::IntoBytes;

use crate::transport::pagemap::Pagemap;
use crate::transport::pinned::PinnedDma;
use crate::transport::region::{MappedRegion, RegionError};
use crate::transport::virtio_pci::caps::tests::{BAR, BAR_LEN, COMMON, Config, DEVICE, ISR, NOTIFY};
use crate::transport::virtio_pci::common::features;
use crate::transport::virtio_pci::mmio::Mmio;
use crate::transport::virtio_pci::sysfs::{CMD_INTX_DISABLE, COMMAND};

pub const BDF: &str = "0000:00:03.0";
const PAGE: u64 = 4096;
const PRESENT: u64 = 1 << 63;

pub fn device_config() -> DeviceConfig {
    DeviceConfig {
        min_op_version: 1,
        max_op_version: 1,
        max_buffer_len: MAX_BUFFER_LEN,
        max_data_len: MAX_BUFFER_LEN - 8192,
        max_request_len: 4 << 20,
        max_segments: 1024,
        max_inflight: 64,
        num_queues: 2,
        capabilities: devcaps::ALL,
        max_blob_size: 1 << 40,
        block_size_hint: 1 << 20,
    }
}

/// A sysfs tree with one virtio function (QEMU's blk-carrier layout).
pub struct FakeTree {
    pub dir: tempfile::TempDir,
}

impl FakeTree {
    pub fn new(config: &Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let t = Self { dir };
        let dev = t.dev_dir();
        fs::create_dir_all(&dev).unwrap();
        fs::create_dir_all(t.root().join("bus/pci/drivers/uio_pci_generic")).unwrap();
        fs::write(t.root().join("bus/pci/drivers_probe"), "").unwrap();
        fs::write(dev.join("vendor"), "0x1af4\n").unwrap();
        fs::write(dev.join("device"), "0x1042\n").unwrap();
        fs::write(dev.join("driver_override"), "(null)\n").unwrap();
        fs::write(dev.join("config"), &config.0).unwrap();
        let mut resource = String::new();
        for i in 0..13 {
            match i {
                4 => resource.push_str("0x0000000100000000 0x0000000100003fff 0x000000000014220c\n"),
                _ => resource.push_str("0x0000000000000000 0x0000000000000000 0x0000000000000000\n"),
            }
        }
        fs::write(dev.join("resource"), resource).unwrap();
        let bar = File::create(dev.join(format!("resource{BAR}"))).unwrap();
        bar.set_len(BAR_LEN).unwrap();
        bar.write_all_at(&CONFIG_MAGIC.to_le_bytes(), DEVICE).unwrap();
        bar.write_all_at(&device_config().to_bytes()[4..], DEVICE + 4).unwrap();
        t
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn dev_dir(&self) -> PathBuf {
        self.root().join("bus/pci/devices").join(BDF)
    }

    /// As if the kernel had bound the function: `uio/uio0` exists.
    pub fn bound(self) -> Self {
        fs::create_dir_all(self.dev_dir().join("uio/uio0")).unwrap();
        self
    }

    pub fn command(&self) -> u16 {
        let mut b = [0u8; 2];
        File::open(self.dev_dir().join("config")).unwrap().read_exact_at(&mut b, COMMAND).unwrap();
        u16::from_le_bytes(b)
    }
}

/// Pinned memory over a file, with a fake pagemap: page i sits at frame
/// `0x8_0000 + i`, plus a jump of 0x100 frames after every 4 pages, so
/// buffers are split into runs and only runs are contiguous.
pub struct FakeDma {
    pub backing: tempfile::NamedTempFile,
    pagemap: tempfile::NamedTempFile,
    /// Where the region's entries start in `pagemap`.
    entries_at: u64,
    pub pfns: Vec<u64>,
}

pub fn pfn_of(i: usize) -> u64 {
    0x8_0000 + i as u64 + (i as u64 / 4) * 0x100
}

impl FakeDma {
    pub fn new(pages: usize) -> (Self, PinnedDma) {
        let backing = tempfile::NamedTempFile::new().unwrap();
        backing.as_file().set_len(pages as u64 * PAGE).unwrap();
        let region = MappedRegion::map_file(backing.as_file(), 0, pages * PAGE as usize).unwrap();
        let pagemap = tempfile::NamedTempFile::new().unwrap();
        let pfns: Vec<u64> = (0..pages).map(pfn_of).collect();
        let entries: Vec<u8> = pfns.iter().flat_map(|p| (PRESENT | p).to_le_bytes()).collect();
        let entries_at = region.virt_addr() / PAGE * 8;
        pagemap.as_file().write_all_at(&entries, entries_at).unwrap();
        let dma = PinnedDma::from_region(region, false, Pagemap::open(pagemap.path()).unwrap(), PAGE).unwrap();
        (Self { backing, pagemap, entries_at, pfns }, dma)
    }

    /// The kernel migrated page `i` to `frame` (what the pagemap now says).
    pub fn move_page(&self, i: usize, frame: u64) {
        self.pagemap.as_file().write_all_at(&(PRESENT | frame).to_le_bytes(), self.entries_at + i as u64 * 8).unwrap();
    }

    /// The device's view: each run of consecutive frames mapped at its
    /// physical address, nothing else.
    pub fn device_memory(&self) -> GuestMemoryMmap {
        let mut ranges = Vec::new();
        let mut i = 0;
        while i < self.pfns.len() {
            let mut j = i + 1;
            while j < self.pfns.len() && self.pfns[j] == self.pfns[j - 1] + 1 {
                j += 1;
            }
            let file = FileOffset::new(self.backing.as_file().try_clone().unwrap(), i as u64 * PAGE);
            ranges.push((GuestAddress(self.pfns[i] * PAGE), (j - i) * PAGE as usize, Some(file)));
            i = j;
        }
        GuestMemoryMmap::from_ranges_with_files(ranges).unwrap()
    }
}

/// How the device answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Honest,
    /// After the first `n` honest completions, a used entry with an id
    /// outside the queue.
    GarbageAfter(u32),
    /// Every completion is posted twice (a re-popped request completed again).
    CompleteTwice,
    /// Answer the config request, then take requests and never answer.
    Silent,
}

#[derive(Debug, Default, Clone, Copy)]
struct QueueRegs {
    size: u16,
    desc: u64,
    driver: u64,
    device: u64,
    enable: u16,
}

#[derive(Debug)]
struct Regs {
    offered: u64,
    device_select: u32,
    driver_select: u32,
    driver_features: u64,
    status: u8,
    select: u16,
    queues: Vec<QueueRegs>,
    isr: u8,
}

/// Register state and what the test can observe.
#[derive(Debug)]
pub struct Model {
    regs: Mutex<Regs>,
    max_queue_size: u16,
    pub refuse_features: AtomicBool,
    /// Every register read answers all ones (surprise removal).
    pub removed: AtomicBool,
    pub resets: AtomicU32,
    pub isr_reads: AtomicU32,
    pub kicks: AtomicU32,
    kick: EventFd,
}

impl Model {
    pub fn new(num_queues: usize, max_queue_size: u16, offered: u64) -> Arc<Self> {
        Arc::new(Self {
            regs: Mutex::new(Regs {
                offered,
                device_select: 0,
                driver_select: 0,
                driver_features: 0,
                status: 0,
                select: 0,
                queues: vec![QueueRegs::default(); num_queues],
                isr: 0,
            }),
            max_queue_size,
            refuse_features: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            resets: AtomicU32::new(0),
            isr_reads: AtomicU32::new(0),
            kicks: AtomicU32::new(0),
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
        })
    }

    pub fn status(&self) -> u8 {
        self.regs.lock().unwrap().status
    }

    fn running(&self) -> Option<(Vec<QueueRegs>, bool)> {
        let r = self.regs.lock().unwrap();
        (r.status & 4 != 0).then(|| (r.queues.clone(), r.driver_features & features::RING_EVENT_IDX != 0))
    }

    fn common_read(&self, off: u64) -> u32 {
        let r = self.regs.lock().unwrap();
        let q = r.queues.get(usize::from(r.select)).copied().unwrap_or_default();
        match off {
            0x00 => r.device_select,
            0x04 => (r.offered >> (32 * r.device_select.min(1))) as u32 * u32::from(r.device_select < 2),
            0x08 => r.driver_select,
            0x12 => r.queues.len() as u32,
            0x14 => u32::from(r.status),
            0x16 => u32::from(r.select),
            0x18 if usize::from(r.select) < r.queues.len() => {
                u32::from(if q.size == 0 { self.max_queue_size } else { q.size })
            }
            0x1a => 0xffff,
            0x1c => u32::from(q.enable),
            0x1e => u32::from(r.select),
            _ => 0,
        }
    }

    fn common_write(&self, off: u64, v: u32) {
        let mut r = self.regs.lock().unwrap();
        let sel = usize::from(r.select);
        let lo = |x: &mut u64| *x = (*x & !0xffff_ffff) | u64::from(v);
        let hi = |x: &mut u64| *x = (*x & 0xffff_ffff) | u64::from(v) << 32;
        match off {
            0x00 => r.device_select = v,
            0x08 => r.driver_select = v,
            0x0c => match r.driver_select {
                0 => lo(&mut r.driver_features),
                1 => hi(&mut r.driver_features),
                _ => {}
            },
            0x14 => {
                let v = v as u8;
                if v == 0 {
                    let n = r.queues.len();
                    r.queues = vec![QueueRegs::default(); n];
                    r.driver_features = 0;
                    r.status = 0;
                    self.resets.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                let mut v = v;
                let bad = r.driver_features & !r.offered != 0 || self.refuse_features.load(Ordering::SeqCst);
                if v & 8 != 0 && r.status & 8 == 0 && bad {
                    v &= !8;
                }
                r.status = v;
            }
            0x16 => r.select = v as u16,
            _ if sel >= r.queues.len() => {}
            0x18 => r.queues[sel].size = v as u16,
            0x1c => r.queues[sel].enable = v as u16,
            0x20 => lo(&mut r.queues[sel].desc),
            0x24 => hi(&mut r.queues[sel].desc),
            0x28 => lo(&mut r.queues[sel].driver),
            0x2c => hi(&mut r.queues[sel].driver),
            0x30 => lo(&mut r.queues[sel].device),
            0x34 => hi(&mut r.queues[sel].device),
            _ => {}
        }
    }

    fn read(&self, off: u64, width: u32) -> u32 {
        let mask = if width == 32 { u32::MAX } else { (1 << width) - 1 };
        if self.removed.load(Ordering::SeqCst) {
            return mask;
        }
        if (COMMON..COMMON + 0x1000).contains(&off) {
            return self.common_read(off - COMMON) & mask;
        }
        if off == ISR {
            self.isr_reads.fetch_add(1, Ordering::SeqCst);
            let mut r = self.regs.lock().unwrap();
            return u32::from(std::mem::take(&mut r.isr));
        }
        u32::MAX // the caller reads the file
    }

    fn write(&self, off: u64, v: u32) {
        if (COMMON..COMMON + 0x1000).contains(&off) {
            self.common_write(off - COMMON, v);
        } else if (NOTIFY..NOTIFY + 0x1000).contains(&off) {
            self.kicks.fetch_add(1, Ordering::SeqCst);
            let _ = self.kick.write(1);
        }
    }
}

/// The BAR as the driver sees it: device registers trapped into the model,
/// the device config read from the mapped `resource4` file.
#[derive(Debug)]
pub struct Trap {
    pub bar: MappedRegion,
    pub model: Arc<Model>,
}

impl Trap {
    fn read(&self, off: usize, width: u32) -> Option<u32> {
        let o = off as u64;
        let device_cfg = (DEVICE..DEVICE + 0x1000).contains(&o);
        (!device_cfg || self.model.removed.load(Ordering::SeqCst)).then(|| self.model.read(o, width))
    }
}

impl Mmio for Trap {
    fn read8(&self, off: usize) -> Result<u8, RegionError> {
        self.read(off, 8).map_or_else(|| self.bar.read8(off), |v| Ok(v as u8))
    }
    fn read16(&self, off: usize) -> Result<u16, RegionError> {
        self.read(off, 16).map_or_else(|| self.bar.read16(off), |v| Ok(v as u16))
    }
    fn read32(&self, off: usize) -> Result<u32, RegionError> {
        self.read(off, 32).map_or_else(|| self.bar.read32(off), Ok)
    }
    fn write8(&self, off: usize, v: u8) -> Result<(), RegionError> {
        self.bar.write8(off, v)?;
        self.model.write(off as u64, u32::from(v));
        Ok(())
    }
    fn write16(&self, off: usize, v: u16) -> Result<(), RegionError> {
        self.bar.write16(off, v)?;
        self.model.write(off as u64, u32::from(v));
        Ok(())
    }
    fn write32(&self, off: usize, v: u32) -> Result<(), RegionError> {
        self.bar.write32(off, v)?;
        self.model.write(off as u64, v);
        Ok(())
    }
}

/// The device thread: serves the rings while DRIVER_OK is set.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the device side needs to raise INTx the way uio_pci_generic does.
pub struct Intx {
    /// The kernel's end of the fake `/dev/uioN`.
    pub uio: UnixStream,
    pub config: PathBuf,
    count: u32,
}

impl Intx {
    pub fn new(uio: UnixStream, tree: &FakeTree) -> Self {
        Self { uio, config: tree.dev_dir().join("config"), count: 0 }
    }

    /// ISR bit 0, the handler masks INTx in the command register, then the
    /// uio event count goes up.
    fn raise(&mut self, model: &Model) {
        model.regs.lock().unwrap().isr |= 1;
        let f = fs::OpenOptions::new().read(true).write(true).open(&self.config).unwrap();
        let mut b = [0u8; 2];
        f.read_exact_at(&mut b, COMMAND).unwrap();
        f.write_all_at(&(u16::from_le_bytes(b) | CMD_INTX_DISABLE).to_le_bytes(), COMMAND).unwrap();
        self.count += 1;
        let _ = self.uio.write_all(&self.count.to_ne_bytes());
    }
}

impl Server {
    pub fn start(model: Arc<Model>, mem: GuestMemoryMmap, behaviour: Behaviour, mut intx: Option<Intx>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut store = Store::default();
            let mut queues: Option<Vec<Queue>> = None;
            let mut served = 0u32;
            while !s.load(Ordering::SeqCst) {
                let _ = model.kick.read();
                let Some((regs, event_idx)) = model.running() else {
                    queues = None;
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                let qs = queues.get_or_insert_with(|| regs.iter().map(|r| device_queue(r, event_idx)).collect());
                let mut posted = false;
                for q in qs.iter_mut() {
                    while let Some(chain) = q.pop_descriptor_chain(&mem) {
                        let head = chain.head_index();
                        let descs: Vec<ChainDescriptor> = chain
                            .map(|d| ChainDescriptor { addr: d.addr().0, len: d.len(), writable: d.is_write_only() })
                            .collect();
                        let n = served;
                        served += 1;
                        if behaviour == Behaviour::Silent && n >= 1 {
                            continue;
                        }
                        if let Behaviour::GarbageAfter(k) = behaviour
                            && n >= k
                        {
                            push_raw_used(q, &mem, &[(0xffff, 0)]);
                            posted = true;
                            continue;
                        }
                        let len = store.serve(&mem, &descs);
                        if behaviour == Behaviour::CompleteTwice {
                            // Both entries appear at once, as after a backend restart.
                            push_raw_used(q, &mem, &[(u32::from(head), len), (u32::from(head), len)]);
                        } else {
                            q.add_used(&mem, head, len).unwrap();
                        }
                        posted = true;
                    }
                }
                if posted && let Some(intx) = intx.as_mut() {
                    intx.raise(&model);
                }
                if !posted {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn device_queue(r: &QueueRegs, event_idx: bool) -> Queue {
    let mut q = Queue::new(r.size.max(1)).unwrap();
    q.set_size(r.size);
    q.try_set_desc_table_address(GuestAddress(r.desc)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(r.driver)).unwrap();
    q.try_set_used_ring_address(GuestAddress(r.device)).unwrap();
    q.set_event_idx(event_idx);
    q.set_ready(r.enable == 1);
    q
}

/// Used entries virtio-queue would refuse to write, published with one
/// used.idx store.
fn push_raw_used(q: &mut Queue, mem: &GuestMemoryMmap, entries: &[(u32, u32)]) {
    let used = q.used_ring();
    let mut idx = q.next_used();
    for &(id, len) in entries {
        let slot = u64::from(idx % q.size());
        mem.write_obj(id.to_le(), GuestAddress(used + 4 + 8 * slot)).unwrap();
        mem.write_obj(len.to_le(), GuestAddress(used + 8 + 8 * slot)).unwrap();
        idx = idx.wrapping_add(1);
    }
    mem.store(idx.to_le(), GuestAddress(used + 2), Ordering::Release).unwrap();
    q.set_next_used(idx);
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
}

/// A tiny blob store answering like a VSP.
#[derive(Default)]
struct Store {
    blobs: HashMap<(String, String), Vec<u8>>,
}

fn props(data: &[u8]) -> BlobProperties {
    BlobProperties {
        lease: Default::default(),
        etag: format!("\"{}\"", data.len()),
        last_modified_ms: 0,
        created_ms: 0,
        content_length: data.len() as u64,
        content_type: String::new(),
        headers: Default::default(),
        content_md5: None,
        content_crc64: crate::crc64(data),
        committed_blocks: 0,
        metadata: Default::default(),
    }
}

impl Store {
    /// Answer one chain; returns the used length (response + status).
    fn serve(&mut self, mem: &GuestMemoryMmap, descs: &[ChainDescriptor]) -> u32 {
        let frame = VirtioFrame::new(descs.iter().copied(), 1024).expect("driver builds valid chains");
        let header = VspRequest::parse(&read_segments(mem, &frame.header())).unwrap();
        let request = read_segments(mem, &frame.request(&header).unwrap());
        let (version, op) = OpRequest::decode_versioned(&request).unwrap();
        let layout = frame.layout(&header, op.op().data_direction()).unwrap();
        let cap = header.response_buffer_length.get() as usize;
        let (status, body) = match &op {
            OpRequest::GetDeviceConfig => {
                (0, encode_success_at(version, op.op(), &OpResponse::DeviceConfig(device_config())))
            }
            OpRequest::CreateContainer { container, .. } => {
                let p = ContainerProperties {
                    etag: container.as_str().into(),
                    last_modified_ms: 0,
                    metadata: Default::default(),
                };
                (0, encode_success_at(version, op.op(), &OpResponse::ContainerCreated(p)))
            }
            OpRequest::PutBlob(p) => {
                let mut data = read_segments(mem, layout.data.readable().unwrap_or(&[]));
                data.truncate(layout.data_valid as usize);
                let written = vmblob_protocol::ops::BlobWritten {
                    etag: format!("\"{}\"", data.len()),
                    last_modified_ms: 0,
                    content_crc64: crate::crc64(&data),
                };
                self.blobs.insert((p.target.container.as_str().into(), p.target.blob.as_str().into()), data);
                (0, encode_success_at(version, op.op(), &OpResponse::BlobWritten(written)))
            }
            OpRequest::GetBlobProperties { target, .. } => {
                match self.blobs.get(&(target.container.as_str().into(), target.blob.as_str().into())) {
                    Some(d) => (0, encode_success_at(version, op.op(), &OpResponse::BlobProperties(props(d)))),
                    None => not_found(version, &op, cap),
                }
            }
            OpRequest::GetBlob(g) => {
                match self.blobs.get(&(g.target.container.as_str().into(), g.target.blob.as_str().into())) {
                    Some(d) => {
                        let room: u64 = layout.data.writable().unwrap_or(&[]).iter().map(|s| u64::from(s.len)).sum();
                        let offset = g.range.map_or(0, |r| r.offset).min(d.len() as u64);
                        let want = g.range.map_or(u64::MAX, |r| r.length).min(room);
                        let end = (offset + want).min(d.len() as u64);
                        let chunk = &d[offset as usize..end as usize];
                        write_segments(mem, layout.data.writable().unwrap_or(&[]), chunk);
                        let r = OpResponse::BlobData { properties: props(d), offset, length: chunk.len() as u64 };
                        (0, encode_success_at(version, op.op(), &r))
                    }
                    None => not_found(version, &op, cap),
                }
            }
            _ => not_found(version, &op, cap),
        };
        write_segments(mem, &layout.response, &body);
        let resp = VspResponse::new(status, body.len() as u32);
        write_segments(mem, &frame.status(), resp.as_bytes());
        assert!(REQUEST_SIZE <= descs.iter().filter(|d| !d.writable).map(|d| d.len as usize).sum());
        body.len() as u32 + 12
    }
}

fn not_found(version: u16, op: &OpRequest, cap: usize) -> (u32, Vec<u8>) {
    (BlobError::BlobNotFound.code(), encode_error_at(version, op.op(), BlobError::BlobNotFound, "", cap))
}
