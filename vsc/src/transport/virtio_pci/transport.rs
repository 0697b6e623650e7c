//! [`VirtioPciTransport`]: split queues on pinned memory, driven through a
//! virtio-pci function's BAR.
//!
//! Requests go through the shared [`RequestTable`] and use the chain layout
//! of the vhost-user transport (header+request readable, data, then
//! response+status writable). One completion thread reaps the used rings on
//! INTx (ack the ISR, clear INTx-disable, re-check every ring) or by
//! polling, and watches the device's health:
//! - removal (uio fd error or hang-up, config space gone, status 0xff): the
//!   BAR is not touched again (a removed function's mappings are revoked),
//!   every pending request fails once with `Rescinded`;
//! - a broken device (a corrupt used ring, NEEDS_RESET, DRIVER_OK lost): the
//!   device is reset, which stops its DMA, then pending requests fail the
//!   same way. The transport stays down; open a new one.
//!
//! A used entry for a head that is not in flight is logged and dropped: QEMU
//! restarts a queue at the used index after a backend restart, and a backend
//! may complete a re-popped request again.
//!
//! The same restart can lose requests the old backend had taken (QEMU
//! re-offers from the used index, and vmblob completes out of order), and
//! nothing on the bus says so. So a request with a timeout has an answer-by
//! time: its timeout (which the VSP enforces itself) plus [`ANSWER_GRACE`].
//! A request still unanswered then takes the device down as broken: it is
//! reset, so it no longer owns any buffer, and every pending request fails
//! once. Nothing waits forever on a lost request.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::GuestAddress;
use vmblob_protocol::config::DeviceConfig;

use super::addr::PhysMap;
use super::common::{REMOVED_STATUS, features, status};
use super::device::PciDevice;
use super::mmio::Window;
use super::sysfs::{self, CMD_BUS_MASTER, CMD_INTX_DISABLE};
use super::{CompletionMode, PciError, VirtioPciOptions, config};
use crate::error::ClientError;
use crate::transport::dma::{DmaBuf, DmaPool, PAGE_SIZE};
use crate::transport::pinned::{PinnedDma, PinnedDmaOptions};
use crate::transport::table::RequestTable;
use crate::transport::virtio::submit::{self, QueueState, finish};
use crate::transport::virtio::{QueueError, SplitQueue};
use crate::transport::vmbus::uio::UioError;
use crate::transport::{Completion, OpBuffers, Ticket, Transport};

/// Descriptors kept for the header+request, response and status of a data
/// request when `max_data_len` is cut to what a split data buffer needs.
const CONTROL_DESCRIPTORS: usize = 8;

/// How long past its own timeout a request may stay unanswered before the
/// device is taken to have lost it. The VSP answers a timed-out request
/// itself, so only a lost one gets here.
pub const ANSWER_GRACE: Duration = Duration::from_secs(5);

struct Queue {
    index: u16,
    state: Mutex<QueueState>,
    /// Signalled when descriptors are freed or the device goes away.
    space: Condvar,
    /// This queue's 16-bit notify register.
    notify: Window,
}

/// Why the transport went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Down {
    /// Gone from the bus: nothing may touch the BAR any more.
    Removed,
    /// Misbehaved: reset it so it stops using our memory.
    Broken,
    /// A pool frame moved: reset it, and trust nothing it posted (the used
    /// ring or a buffer may have been written somewhere else).
    Unpinned,
}

struct Inner {
    dev: PciDevice,
    dma: PinnedDma,
    phys: Arc<PhysMap>,
    /// The rings' pool buffers, held for the transport's life.
    _rings: Vec<DmaBuf>,
    queues: Vec<Queue>,
    table: RequestTable<OpBuffers, Completion>,
    config: OnceLock<DeviceConfig>,
    /// Longest chain a request may use (ring size, then `max_segments`).
    max_chain: AtomicUsize,
    next_queue: AtomicUsize,
    /// Answer-by time of each pending request that has a timeout.
    answer_by: Mutex<std::collections::HashMap<u64, Instant>>,
    down: Mutex<Option<Down>>,
    stopping: AtomicBool,
    mode: CompletionMode,
    opts: VirtioPciOptions,
}

/// A vmblob virtio-pci function on `uio_pci_generic`.
pub struct VirtioPciTransport {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pci(e: impl Into<PciError>) -> ClientError {
    ClientError::Pci(e.into())
}

fn open_uio(opts: &VirtioPciOptions, uio: &str) -> Result<File, ClientError> {
    let path = opts.dev_root.join(uio);
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|source| pci(PciError::OpenUio { path: path.clone(), source }))
}

impl VirtioPciTransport {
    /// Find (or take `opts.device`), bind to `uio_pci_generic`, pin the DMA
    /// memory, initialise the device and fetch its config.
    pub fn open(opts: VirtioPciOptions) -> Result<Self, ClientError> {
        let bdf = match &opts.device {
            Some(bdf) => bdf.clone(),
            None => super::find_devices(&opts.sysfs_root)
                .map_err(pci)?
                .into_iter()
                .next()
                .map(|f| f.bdf)
                .ok_or(pci(PciError::NoDevice))?,
        };
        let root = opts.sysfs_root.clone();
        Self::open_function(&bdf, opts).map_err(|e| {
            // A device unplugged mid-setup makes some step fail with nonsense (features 0, ...).
            if sysfs::is_gone(&root, &bdf) { pci(PciError::Removed { bdf: bdf.clone() }) } else { e }
        })
    }

    fn open_function(bdf: &str, opts: VirtioPciOptions) -> Result<Self, ClientError> {
        let uio = sysfs::bind_uio(&opts.sysfs_root, bdf, opts.bind_timeout).map_err(pci)?;
        let irq = open_uio(&opts, &uio)?;
        let dev = PciDevice::open(&opts.sysfs_root, bdf, Some(irq)).map_err(pci)?;
        let dma = PinnedDma::with_options(
            opts.dma_size,
            PinnedDmaOptions { allow_small_pages: opts.allow_small_pages, pagemap: &opts.pagemap },
        )
        .map_err(pci)?;
        Self::start(dev, dma, opts)
    }

    /// Initialise an opened device on `dma` and fetch its config.
    pub fn start(dev: PciDevice, dma: PinnedDma, opts: VirtioPciOptions) -> Result<Self, ClientError> {
        let inner = match Inner::init(dev, dma, opts) {
            Ok(inner) => Arc::new(inner),
            Err(failed) => {
                let (dev, e) = *failed;
                if let Err(r) = dev.common.reset(Duration::from_millis(100)) {
                    log::warn!("{}: reset after failed init: {r}", dev.bdf);
                }
                return Err(e);
            }
        };
        let worker = inner.clone();
        let thread = std::thread::Builder::new()
            .name("vmblob-pci".into())
            .spawn(move || worker.run())
            .map_err(ClientError::Io)?;
        let transport = Self { inner, thread: Some(thread) };
        let cfg = config::fetch(&transport, transport.inner.opts.config_timeout)?;
        let cfg = transport.inner.fit(cfg);
        let _ = transport.inner.config.set(cfg);
        Ok(transport)
    }

    /// The device's limits and capabilities as fetched at open, with
    /// `max_data_len` cut to what one chain can carry.
    pub fn device_config(&self) -> DeviceConfig {
        *self.inner.config.get().expect("set by start")
    }

    /// Requests submitted and not completed.
    pub fn pending(&self) -> usize {
        self.inner.table.pending()
    }

    /// The function's BDF.
    pub fn bdf(&self) -> &str {
        &self.inner.dev.bdf
    }
}

impl Inner {
    /// Reset, negotiate, set up every queue, DRIVER_OK. On error the device
    /// is handed back for the caller's reset.
    fn init(dev: PciDevice, dma: PinnedDma, opts: VirtioPciOptions) -> Result<Self, Box<(PciDevice, ClientError)>> {
        let phys = Arc::new(PhysMap::new(&dma));
        let setup = Self::setup_queues(&dev, &dma, &phys, &opts);
        let (queues, rings, event_idx) = match setup {
            Ok(s) => s,
            Err(e) => return Err(Box::new((dev, e))),
        };
        let intx = opts.mode == CompletionMode::Interrupts;
        let command = if intx { (CMD_BUS_MASTER, CMD_INTX_DISABLE) } else { (CMD_BUS_MASTER | CMD_INTX_DISABLE, 0) };
        if let Err(e) = dev.config.update_command(command.0, command.1) {
            return Err(Box::new((dev, pci(e))));
        }
        if let Err(e) = dev.common.add_status(status::DRIVER_OK) {
            return Err(Box::new((dev, pci(e))));
        }
        let max_chain = queues.iter().map(|q| usize::from(lock(&q.state).ring.size())).min().unwrap_or(1);
        log::info!(
            "{}: {} queue(s) of {max_chain}, event_idx={event_idx}, {:?}, DMA {} KiB{}",
            dev.bdf,
            queues.len(),
            opts.mode,
            dma.len() >> 10,
            if dma.hugepages() { " on hugepages" } else { "" }
        );
        let inner = Self {
            dev,
            dma,
            phys,
            _rings: rings,
            queues,
            table: RequestTable::new(),
            config: OnceLock::new(),
            max_chain: AtomicUsize::new(max_chain),
            next_queue: AtomicUsize::new(0),
            answer_by: Mutex::new(std::collections::HashMap::new()),
            down: Mutex::new(None),
            stopping: AtomicBool::new(false),
            mode: opts.mode,
            opts,
        };
        Ok(inner)
    }

    #[allow(clippy::type_complexity)]
    fn setup_queues(
        dev: &PciDevice,
        dma: &PinnedDma,
        phys: &Arc<PhysMap>,
        opts: &VirtioPciOptions,
    ) -> Result<(Vec<Queue>, Vec<DmaBuf>, bool), ClientError> {
        let common = &dev.common;
        let negotiated = common.negotiate(features::RING_EVENT_IDX, opts.reset_timeout).map_err(pci)?;
        let event_idx = negotiated & features::RING_EVENT_IDX != 0;
        let available = usize::from(common.num_queues().map_err(pci)?);
        let count = opts.queues.clamp(1, available.max(1));
        if available == 0 {
            return Err(pci(PciError::NoQueues { bdf: dev.bdf.clone() }));
        }
        let (mut queues, mut rings) = (Vec::with_capacity(count), Vec::with_capacity(count));
        for index in 0..count as u16 {
            let max = common.select_queue(index).map_err(pci)?;
            let size = prev_power_of_two(opts.queue_size.min(max));
            if size == 0 {
                return Err(pci(PciError::QueueUnavailable { bdf: dev.bdf.clone(), index }));
            }
            let bytes = SplitQueue::ring_bytes(size).div_ceil(PAGE_SIZE) * PAGE_SIZE;
            let buf = dma.pool().alloc(bytes as usize).ok_or(pci(PciError::RingsDoNotFit))?;
            let mut ring =
                SplitQueue::with_device_addr(dma.pool().memory().clone(), buf.gpa(), size, event_idx, phys.clone())?;
            if opts.mode != CompletionMode::Interrupts {
                ring.disable_interrupts();
            }
            let (desc, driver, device) = ring.device_rings();
            let notify_off = common.setup_queue(index, size, desc, driver, device).map_err(pci)?;
            // queue_notify_off is the device's: the register must lie inside the notify structure.
            let at = u64::from(notify_off) * u64::from(dev.caps.notify_off_multiplier);
            let notify = usize::try_from(at).ok().and_then(|at| dev.notify.subwindow(at, 2)).ok_or_else(|| {
                pci(PciError::NotifyOutside { bdf: dev.bdf.clone(), index, at, len: dev.notify.len() })
            })?;
            queues.push(Queue { index, state: Mutex::new(QueueState::new(ring)), space: Condvar::new(), notify });
            rings.push(buf);
        }
        Ok((queues, rings, event_idx))
    }

    /// Cut `max_data_len` so the worst-case split of a data buffer (one
    /// descriptor per page, plus one for a misaligned start) fits a chain.
    fn fit(&self, mut cfg: DeviceConfig) -> DeviceConfig {
        let segments = (cfg.max_segments as usize).max(1);
        let chain = self.max_chain.load(Ordering::Relaxed).min(segments);
        self.max_chain.store(chain, Ordering::Relaxed);
        if !self.dma.hugepages() {
            let pages = chain.saturating_sub(CONTROL_DESCRIPTORS + 1).max(1);
            cfg.max_data_len = cfg.max_data_len.min((pages as u64 * PAGE_SIZE) as u32);
        }
        cfg
    }

    fn is_down(&self) -> bool {
        lock(&self.down).is_some()
    }

    /// Take the transport down once: reset a broken device (it stops DMA),
    /// leave a removed one alone, and fail every pending request.
    fn go_down(&self, why: Down, reason: &str) {
        {
            let mut down = lock(&self.down);
            if down.is_some() {
                return;
            }
            *down = Some(why);
        }
        if why != Down::Removed {
            self.quiesce();
        }
        let n = self.table.rescind().len();
        for q in &self.queues {
            q.space.notify_all();
        }
        log::warn!("{}: device {:?} ({reason}): {n} pending requests failed", self.dev.bdf, why);
    }

    /// Reset the device and stop its bus mastering.
    fn quiesce(&self) {
        if let Err(e) = self.dev.common.reset(self.opts.reset_timeout) {
            log::error!("{}: reset failed: {e}; buffers stay quarantined", self.dev.bdf);
        }
        if let Err(e) = self.dev.config.update_command(CMD_INTX_DISABLE, CMD_BUS_MASTER) {
            log::warn!("{}: cannot clear bus mastering: {e}", self.dev.bdf);
        }
    }

    /// Pop every used entry of `q` and complete those requests; with
    /// `rearm`, re-enable ring interrupts and re-check. Returns how many
    /// completed.
    fn reap(&self, q: &Queue, rearm: bool) -> usize {
        let mut done = Vec::new();
        let wake_submitters;
        let mut fault = None;
        {
            let mut st = lock(&q.state);
            loop {
                match st.ring.pop_used() {
                    Ok(Some((head, len))) => match st.heads.remove(&head) {
                        Some(id) => done.push((id, len)),
                        None => log::warn!("queue {}: used head {head} has no request; dropped", q.index),
                    },
                    Ok(None) => {
                        if !rearm || !st.ring.enable_interrupts() {
                            break;
                        }
                    }
                    Err(QueueError::UsedIdNotOutstanding { id }) => {
                        log::warn!("queue {}: used entry for head {id}, which is not in flight; dropped", q.index);
                    }
                    Err(e) => {
                        fault = Some(e);
                        break;
                    }
                }
            }
            wake_submitters = !done.is_empty() && st.space_waiters > 0;
        }
        if wake_submitters {
            q.space.notify_all();
        }
        let n = done.len();
        if n > 0 {
            let mut answer_by = lock(&self.answer_by);
            for (id, _) in &done {
                answer_by.remove(id);
            }
        }
        self.table.complete_all(done, finish);
        if let Some(e) = fault {
            self.go_down(Down::Broken, &format!("queue {}: {e}", q.index));
        }
        n
    }

    fn reap_all(&self, rearm: bool) -> usize {
        self.queues.iter().map(|q| self.reap(q, rearm)).sum()
    }

    /// Removal or breakage, as far as can be seen without waiting. Config
    /// space is read first: a removed function's BAR must not be touched.
    fn check_health(&self) -> Option<(Down, String)> {
        // First: a frame that moved is memory the device must stop writing at
        // once, and nothing it posted (reaped below) can be trusted.
        if let Err(moved) = self.dma.verify_if_due() {
            return Some((Down::Unpinned, moved.to_string()));
        }
        match self.dev.config.read_u16(0) {
            Ok(0xffff) => return Some((Down::Removed, "config space reads all ones".into())),
            Err(e) => return Some((Down::Removed, e.to_string())),
            Ok(_) => {}
        }
        if let Some(irq) = &self.dev.irq {
            match irq.wait(Some(Duration::ZERO)) {
                // The zero wait took an interrupt: uio_pci_generic masked INTx for it, and only
                // the interrupt path unmasks it, so do that here or INTx stays off for good.
                Ok(Some(_)) => {
                    if let Some(down) = self.take_interrupt() {
                        return Some(down);
                    }
                    self.reap_all(true);
                }
                Ok(None) => {}
                Err(UioError::Rescinded) => return Some((Down::Removed, "uio device closed".into())),
                Err(e) => return Some((Down::Broken, e.to_string())),
            }
        }
        if let Some(lost) = self.overdue() {
            return Some((Down::Broken, lost));
        }
        match self.dev.common.status() {
            Ok(REMOVED_STATUS) => Some((Down::Removed, "device status reads 0xff".into())),
            Ok(s) if s & status::NEEDS_RESET != 0 => Some((Down::Broken, format!("status {s:#x}: needs reset"))),
            Ok(s) if s & status::DRIVER_OK == 0 => Some((Down::Broken, format!("status {s:#x}: DRIVER_OK lost"))),
            Ok(_) => None,
            Err(e) => Some((Down::Broken, e.to_string())),
        }
    }

    /// A pending request past its answer-by time, as the reason to go down.
    fn overdue(&self) -> Option<String> {
        let now = Instant::now();
        let mut answer_by = lock(&self.answer_by);
        // Ids failed by a rescind or withdrawn are no longer waited for.
        answer_by.retain(|id, _| self.table.is_pending(*id));
        let (id, at) = answer_by.iter().filter(|(_, at)| **at <= now).min_by_key(|(_, at)| **at)?;
        Some(format!(
            "request {id} unanswered {:?} past its answer-by time: the device lost it \
             (a VSP restart behind the VMM loses requests it had taken)",
            now - *at
        ))
    }

    fn run(self: Arc<Self>) {
        let mut next_check = Instant::now();
        while !self.stopping.load(Ordering::Acquire) && !self.is_down() {
            match self.mode {
                CompletionMode::Interrupts => self.wait_interrupt(),
                CompletionMode::Poll { idle_sleep } => {
                    if self.reap_all(false) == 0 {
                        if self.table.pending() == 0 {
                            std::thread::sleep(idle_sleep);
                        } else {
                            std::thread::yield_now();
                        }
                    }
                }
            }
            if Instant::now() >= next_check && !self.stopping.load(Ordering::Acquire) {
                next_check = Instant::now() + self.opts.wait_slice;
                if let Some((why, reason)) = self.check_health() {
                    // What the device completed before it went away is real.
                    if why == Down::Broken {
                        self.reap_all(false);
                    }
                    self.go_down(why, &reason);
                }
            }
        }
    }

    /// One INTx wait: ack the ISR (reading it lowers the line), unmask INTx
    /// in the command register (uio_pci_generic masked it), then re-check
    /// every ring: completions that landed before the unmask raise nothing.
    fn wait_interrupt(&self) {
        let Some(irq) = &self.dev.irq else {
            std::thread::sleep(self.opts.wait_slice);
            self.reap_all(true);
            return;
        };
        match irq.wait(Some(self.opts.wait_slice)) {
            Ok(Some(_)) => {
                if let Some((why, reason)) = self.take_interrupt() {
                    self.go_down(why, &reason);
                    return;
                }
            }
            Ok(None) => {}
            Err(UioError::Rescinded) => {
                self.go_down(Down::Removed, "uio device gone");
                return;
            }
            Err(e) => {
                // Not a removal: the device may still do DMA, so it is reset on the way down.
                self.go_down(Down::Broken, &e.to_string());
                return;
            }
        }
        self.reap_all(true);
    }

    /// After uio reported an interrupt: ack the ISR (reading it lowers the line) and unmask
    /// INTx in the command register (uio_pci_generic masked it).
    fn take_interrupt(&self) -> Option<(Down, String)> {
        let isr = self.dev.isr.read8(0);
        log::trace!("{}: INTx, ISR {isr:?}", self.dev.bdf);
        self.dev
            .config
            .update_command(0, CMD_INTX_DISABLE)
            .err()
            .map(|e| (Down::Broken, format!("cannot unmask INTx: {e}")))
    }

    /// Append `[addr, addr + len)` as physically contiguous descriptors.
    fn push_runs(
        &self,
        chain: &mut Vec<(GuestAddress, u32, bool)>,
        addr: GuestAddress,
        len: u32,
        writable: bool,
    ) -> Result<(), ClientError> {
        let runs =
            self.phys.runs(addr, len).ok_or(pci(PciError::BufferOutsidePool { addr: addr.0, len: len as usize }))?;
        chain.extend(runs.into_iter().map(|(a, l)| (a, l, writable)));
        Ok(())
    }

    fn chain_for(&self, b: &mut OpBuffers) -> Result<Vec<(GuestAddress, u32, bool)>, ClientError> {
        let mut chain = Vec::new();
        submit::lay_out_chain(b, |gpa, len, writable| self.push_runs(&mut chain, gpa, len, writable))?;
        let max = self.max_chain.load(Ordering::Relaxed);
        if chain.len() > max {
            return Err(pci(PciError::ChainTooLong { needed: chain.len(), max }));
        }
        Ok(chain)
    }

    fn submit(&self, mut b: OpBuffers) -> Result<Ticket, ClientError> {
        let chain = self.chain_for(&mut b)?;
        let deadline = crate::transport::submit_deadline(&b.header);
        let timeout = Duration::from_millis(u64::from(b.header.timeout_ms.get()));
        let (id, waiter) = self.table.register(b).map_err(|(e, _)| e)?;
        if !timeout.is_zero() {
            lock(&self.answer_by).insert(id, Instant::now() + timeout + ANSWER_GRACE);
        }
        let q = &self.queues[self.next_queue.fetch_add(1, Ordering::Relaxed) % self.queues.len()];
        let posted = submit::post_chain(&self.table, id, deadline, &q.state, &q.space, &chain, || {
            if let Err(e) = q.notify.write16(0, q.index) {
                log::warn!("queue {}: notify failed: {e}", q.index);
            }
        });
        if posted.is_err() {
            lock(&self.answer_by).remove(&id);
        }
        posted?;
        Ok(waiter)
    }
}

fn prev_power_of_two(n: u16) -> u16 {
    if n == 0 { 0 } else { 1 << (15 - n.leading_zeros()) }
}

impl Transport for VirtioPciTransport {
    fn pool(&self) -> &DmaPool {
        self.inner.dma.pool()
    }

    fn submit(&self, buffers: OpBuffers) -> Result<Ticket, ClientError> {
        self.inner.submit(buffers)
    }

    fn num_queues(&self) -> usize {
        self.inner.queues.len()
    }

    fn is_connected(&self) -> bool {
        !self.inner.is_down() && !self.inner.table.is_removing()
    }
}

impl Drop for VirtioPciTransport {
    fn drop(&mut self) {
        self.inner.stopping.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Reset before the memory goes: the device must not DMA into freed
        // buffers. A removed device is left alone.
        if *lock(&self.inner.down) != Some(Down::Removed) {
            self.inner.quiesce();
        }
        self.inner.table.rescind();
    }
}
