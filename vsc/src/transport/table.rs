//! The guest's table of submitted requests, shared by every transport.
//!
//! It encodes what the seed driver's review taught:
//! - a submission publishes itself as pending *before* it checks whether the
//!   device is going away, so nothing is sent after a rescind began;
//! - a rescind fails every waiting caller at once and never waits for the
//!   callers themselves;
//! - a request's buffers stay owned by the table until the device completed
//!   it (or is known to be gone), whatever happens to the caller;
//! - the table lives as long as the client: nothing is re-initialised under
//!   a holder when the device comes back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::error::ClientError;

/// Lets a waiting caller reap completions itself before it sleeps, so a
/// completion reaches it without a hop through the transport's reaper.
pub trait WaitAssist: Send + Sync {
    /// Reap completions until `done()` holds or a short budget is spent.
    fn assist(&self, done: &dyn Fn() -> bool);
}

/// A caller's handle on one submitted request.
pub struct Waiter<T> {
    done: Mutex<Done<T>>,
    cv: Condvar,
    /// Set with `done`: lets an assisting caller check without the lock.
    ready: AtomicBool,
    assist: Option<Weak<dyn WaitAssist>>,
}

/// A waiter's result and how many callers sleep on it.
struct Done<T> {
    result: Option<Result<T, ClientError>>,
    /// Callers blocked in `cv.wait`: the completer skips the notify (a
    /// futex syscall every time with std's condvar) when there are none,
    /// which is the common case for a pipelining or assisting caller.
    sleepers: u32,
}

impl<T> Waiter<T> {
    fn new(assist: Option<Weak<dyn WaitAssist>>) -> Arc<Self> {
        let done = Mutex::new(Done { result: None, sleepers: 0 });
        Arc::new(Self { done, cv: Condvar::new(), ready: AtomicBool::new(false), assist })
    }

    fn lock(&self) -> MutexGuard<'_, Done<T>> {
        self.done.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, r: Result<T, ClientError>) {
        let mut g = self.lock();
        // `ready` stays set once the result is taken: a second completion
        // (a rescind racing the device) must not deliver again.
        if g.result.is_none() && !self.ready.load(Ordering::Relaxed) {
            g.result = Some(r);
            self.ready.store(true, Ordering::Release);
            if g.sleepers > 0 {
                self.cv.notify_all();
            }
        }
    }

    /// Drive completions on this thread for a moment if the transport can.
    fn assist(&self) {
        if let Some(a) = self.assist.as_ref().and_then(Weak::upgrade) {
            a.assist(&|| self.ready.load(Ordering::Acquire));
        }
    }

    /// Block until the request completes or fails.
    pub fn wait(&self) -> Result<T, ClientError> {
        self.assist();
        let mut g = self.lock();
        loop {
            if let Some(r) = g.result.take() {
                return r;
            }
            g.sleepers += 1;
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
            g.sleepers -= 1;
        }
    }

    /// The result if there is one already (for polling callers).
    pub fn try_take(&self) -> Option<Result<T, ClientError>> {
        self.lock().result.take()
    }

    /// Wait at most `timeout`; `None` if still pending.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<T, ClientError>> {
        let deadline = Instant::now() + timeout;
        self.assist();
        let mut g = self.lock();
        loop {
            if let Some(r) = g.result.take() {
                return Some(r);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g.sleepers += 1;
            g = self.cv.wait_timeout(g, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
            g.sleepers -= 1;
        }
    }
}

struct Slot<B, T> {
    buffers: B,
    waiter: Arc<Waiter<T>>,
}

struct Inner<B, T> {
    next_id: u64,
    pending: HashMap<u64, Slot<B, T>>,
    /// Buffers of requests failed at rescind whose completion may still come.
    quarantine: HashMap<u64, B>,
    removing: bool,
}

/// Completions [`RequestTable::complete_all`] takes out per lock.
const BATCH: usize = 16;

/// A registered request: its id and what its caller waits on.
pub type Registered<T> = (u64, Arc<Waiter<T>>);

/// Requests keyed by a never-reused id (starting at 1: VMBus forbids 0).
/// `B` is what the device may still touch (the DMA buffers); `T` what a
/// completion hands the caller.
pub struct RequestTable<B, T> {
    inner: Mutex<Inner<B, T>>,
    assist: OnceLock<Weak<dyn WaitAssist>>,
    /// The first id not yet handed out when the last rescind began (0: none
    /// yet). Ids below it were drained; a submitter checks its own id
    /// against it without taking the lock while it posts.
    rescind_mark: AtomicU64,
    /// `inner.pending.len()`, kept under the lock, read without it (every
    /// wait asks whether a request is alone in flight).
    pending_count: AtomicUsize,
}

impl<B, T> Default for RequestTable<B, T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B, T> RequestTable<B, T> {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                next_id: 1,
                pending: HashMap::new(),
                quarantine: HashMap::new(),
                removing: false,
            }),
            assist: OnceLock::new(),
            rescind_mark: AtomicU64::new(0),
            pending_count: AtomicUsize::new(0),
        }
    }

    /// Have callers of requests registered from now on use `assist` while
    /// they wait (set once; a weak reference, as the assist owns the table).
    pub fn set_assist(&self, assist: Weak<dyn WaitAssist>) {
        let _ = self.assist.set(assist);
    }

    fn lock(&self) -> MutexGuard<'_, Inner<B, T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publish a request as pending unless a rescind has begun. The check
    /// and the insert happen under the lock that `rescind` takes to set
    /// `removing` and drain: a request is either drained by the rescind or
    /// refused here, never sent after it (the seed's v5 race).
    pub fn register(&self, buffers: B) -> Result<Registered<T>, (ClientError, B)> {
        let mut g = self.lock();
        if g.removing {
            return Err((ClientError::Rescinded, buffers));
        }
        let id = g.next_id;
        g.next_id += 1;
        let waiter = Waiter::new(self.assist.get().cloned());
        g.pending.insert(id, Slot { buffers, waiter: waiter.clone() });
        self.pending_count.store(g.pending.len(), Ordering::Release);
        Ok((id, waiter))
    }

    /// Withdraw a request that was never handed to the device.
    pub fn withdraw(&self, id: u64) -> Option<B> {
        let mut g = self.lock();
        let slot = g.pending.remove(&id);
        self.pending_count.store(g.pending.len(), Ordering::Release);
        slot.map(|s| s.buffers)
    }

    /// Whether a rescind began after `id` was registered, which drained it.
    /// Lock-free, for a submitter posting its own not yet posted request
    /// (such a request leaves the table only through a rescind or its own
    /// withdraw). A submitter that then takes the queue lock a ring reset
    /// held sees every rescind before that reset.
    pub fn rescinded_since(&self, id: u64) -> bool {
        id < self.rescind_mark.load(Ordering::Acquire)
    }

    /// The device completed `id`: `finish` turns its buffers into the
    /// caller's result. `false` for an unknown id (a late completion of a
    /// quarantined request releases its buffers and reports nothing).
    pub fn complete(&self, id: u64, finish: impl FnOnce(B) -> Result<T, ClientError>) -> bool {
        let Some(slot) = self.remove_completed(&mut self.lock(), id) else { return false };
        slot.waiter.set(finish(slot.buffers));
        true
    }

    /// [`complete`](Self::complete) for a batch of `(id, what the device
    /// said)`, taking the lock once per [`BATCH`] (a reaper pops several
    /// completions per wake-up at depth, while submitters want the same
    /// lock); callers are woken outside it, and nothing is allocated.
    /// Returns how many were pending.
    pub fn complete_all<L>(&self, done: Vec<(u64, L)>, finish: impl Fn(B, L) -> Result<T, ClientError>) -> usize {
        let mut done = done.into_iter().peekable();
        let mut n = 0;
        // A busy-polling caller reaps nothing most of the time: no lock for that.
        while done.peek().is_some() {
            let mut taken: [Option<(Slot<B, T>, L)>; BATCH] = [const { None }; BATCH];
            {
                let mut g = self.lock();
                // `taken` first: zip stops without pulling an id it has no room for.
                for (room, (id, l)) in taken.iter_mut().zip(done.by_ref()) {
                    *room = self.remove_completed(&mut g, id).map(|s| (s, l));
                }
            }
            for (slot, l) in taken.into_iter().flatten() {
                slot.waiter.set(finish(slot.buffers, l));
                n += 1;
            }
        }
        n
    }

    /// Takes `id` out as completed; a quarantined id's buffers are released.
    fn remove_completed(&self, g: &mut Inner<B, T>, id: u64) -> Option<Slot<B, T>> {
        let slot = g.pending.remove(&id);
        if slot.is_none() {
            g.quarantine.remove(&id);
        }
        self.pending_count.store(g.pending.len(), Ordering::Release);
        slot
    }

    /// Rescind: from now on submissions fail, and every pending caller gets
    /// `Rescinded` at once. Buffers are quarantined, not freed: the device may
    /// still complete them. Returns the ids that were pending.
    pub fn rescind(&self) -> Vec<u64> {
        // Drain and quarantine under one lock: a `reopen` in between would
        // clear the quarantine before these buffers reached it.
        let waiters: Vec<(u64, Arc<Waiter<T>>)> = {
            let mut g = self.lock();
            g.removing = true;
            self.rescind_mark.store(g.next_id, Ordering::Release);
            self.pending_count.store(0, Ordering::Release);
            let slots: Vec<(u64, Slot<B, T>)> = g.pending.drain().collect();
            let mut waiters = Vec::with_capacity(slots.len());
            for (id, slot) in slots {
                waiters.push((id, slot.waiter));
                g.quarantine.insert(id, slot.buffers);
            }
            waiters
        };
        // Wake the callers outside the lock.
        waiters
            .into_iter()
            .map(|(id, waiter)| {
                waiter.set(Err(ClientError::Rescinded));
                id
            })
            .collect()
    }

    /// The device is back and the old one is known to be gone: release the
    /// quarantine and accept submissions again.
    pub fn reopen(&self) -> usize {
        let mut g = self.lock();
        let n = g.quarantine.len();
        g.quarantine.clear();
        g.removing = false;
        n
    }

    /// Whether `id` is still waiting for the device (not completed, not
    /// rescinded).
    pub fn is_pending(&self, id: u64) -> bool {
        self.lock().pending.contains_key(&id)
    }

    pub fn is_removing(&self) -> bool {
        self.lock().removing
    }

    pub fn pending(&self) -> usize {
        self.pending_count.load(Ordering::Acquire)
    }

    pub fn quarantined(&self) -> usize {
        self.lock().quarantine.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn ids_are_never_zero_or_reused() {
        let t: RequestTable<(), u32> = RequestTable::new();
        let a = t.register(()).ok().unwrap().0;
        let b = t.register(()).ok().unwrap().0;
        assert!(a >= 1 && b > a);
        assert!(t.complete(a, |_| Ok(1)));
        assert!(!t.complete(a, |_| Ok(2)), "second completion is ignored");
        let c = t.register(()).ok().unwrap().0;
        assert!(c > b);
    }

    #[test]
    fn rescind_fails_waiters_at_once_and_blocks_new_submissions() {
        let t: Arc<RequestTable<Vec<u8>, u32>> = Arc::new(RequestTable::new());
        let waiters: Vec<_> = (0..8).map(|_| t.register(vec![0; 16]).ok().unwrap()).collect();
        let handles: Vec<_> = waiters
            .iter()
            .map(|(_, w)| {
                let w = w.clone();
                std::thread::spawn(move || w.wait())
            })
            .collect();
        assert_eq!(t.rescind().len(), 8);
        for h in handles {
            assert!(matches!(h.join().unwrap(), Err(ClientError::Rescinded)));
        }
        assert_eq!(t.quarantined(), 8, "buffers kept until the device is gone");
        let (err, buf) = t.register(vec![1]).err().unwrap();
        assert!(matches!(err, ClientError::Rescinded));
        assert_eq!(buf, vec![1], "buffers handed back to the caller");
        // A late completion releases its quarantined buffers only.
        assert!(!t.complete(waiters[0].0, |_| Ok(5)));
        assert_eq!(t.quarantined(), 7);
        assert_eq!(t.reopen(), 7);
        assert!(t.register(vec![]).is_ok());
    }

    #[test]
    fn a_batch_completes_each_pending_id_once_and_releases_quarantined_ones() {
        let t: RequestTable<u32, u32> = RequestTable::new();
        let regs: Vec<_> = (0..4).map(|i| t.register(i).ok().unwrap()).collect();
        assert_eq!(t.pending(), 4);
        let ids: Vec<u64> = regs.iter().map(|r| r.0).collect();
        // An unknown id and a repeated one are reported by nobody.
        let batch = vec![(ids[0], 10), (ids[2], 30), (ids[0], 11), (999, 0)];
        assert_eq!(t.complete_all(batch, |b, l| Ok(b * 100 + l)), 2);
        assert_eq!(regs[0].1.try_take().unwrap().unwrap(), 10);
        assert_eq!(regs[2].1.try_take().unwrap().unwrap(), 230);
        assert!(regs[1].1.try_take().is_none() && regs[3].1.try_take().is_none());
        assert_eq!(t.pending(), 2);
        t.rescind();
        assert_eq!((t.pending(), t.quarantined()), (0, 2));
        assert_eq!(t.complete_all(vec![(ids[1], 0)], |b, _| Ok(b)), 0, "a rescinded request is not delivered again");
        assert_eq!(t.quarantined(), 1, "its late completion released its buffers");
    }

    #[test]
    fn a_batch_longer_than_one_lock_round_completes_every_request() {
        let t: RequestTable<u64, u64> = RequestTable::new();
        let n = 3 * BATCH as u64 + 5;
        let regs: Vec<_> = (0..n).map(|i| t.register(i).ok().unwrap()).collect();
        let batch: Vec<(u64, u64)> = regs.iter().map(|(id, _)| (*id, 1000)).collect();
        assert_eq!(t.complete_all(batch, |b, l| Ok(b + l)), n as usize);
        for (i, (_, w)) in regs.iter().enumerate() {
            assert_eq!(w.try_take().unwrap().unwrap(), i as u64 + 1000);
        }
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn rescinded_since_covers_exactly_the_requests_a_rescind_drained() {
        let t: RequestTable<(), u32> = RequestTable::new();
        let (before, _w) = t.register(()).ok().unwrap();
        assert!(!t.rescinded_since(before));
        t.rescind();
        assert!(t.rescinded_since(before));
        t.reopen();
        let (after, _w2) = t.register(()).ok().unwrap();
        assert!(!t.rescinded_since(after), "registered after the rescind");
        assert!(t.rescinded_since(before));
        assert_eq!(t.pending(), 1);
    }

    /// Completes the one request it is given, on the assisting caller's
    /// thread, or gives up at once.
    struct CompleteOnAssist {
        table: Arc<RequestTable<(), u32>>,
        id: Mutex<Option<u64>>,
        calls: AtomicUsize,
    }

    impl WaitAssist for CompleteOnAssist {
        fn assist(&self, done: &dyn Fn() -> bool) {
            assert!(!done());
            if let Some(id) = self.id.lock().unwrap().take() {
                self.table.complete(id, |_| Ok(9));
                assert!(done(), "the waiter sees its completion while assisting");
            }
            self.calls.fetch_add(1, Ordering::Release);
        }
    }

    #[test]
    fn a_waiting_caller_reaps_for_itself_then_falls_back_to_sleeping() {
        let t: Arc<RequestTable<(), u32>> = Arc::new(RequestTable::new());
        let assist = Arc::new(CompleteOnAssist { table: t.clone(), id: Mutex::new(None), calls: AtomicUsize::new(0) });
        t.set_assist(Arc::downgrade(&(assist.clone() as Arc<dyn WaitAssist>)));
        let (id, w) = t.register(()).ok().unwrap();
        *assist.id.lock().unwrap() = Some(id);
        assert_eq!(w.wait().unwrap(), 9, "completed by the caller's own assist");
        // The assist gives up: the caller sleeps until someone else completes.
        let (id, w) = t.register(()).ok().unwrap();
        let (t2, a2) = (t.clone(), assist.clone());
        let completer = std::thread::spawn(move || {
            // Only once the caller's assist has given up.
            while a2.calls.load(Ordering::Acquire) < 2 {
                std::thread::yield_now();
            }
            assert!(t2.complete(id, |_| Ok(4)));
        });
        assert_eq!(w.wait().unwrap(), 4);
        completer.join().unwrap();
    }

    #[test]
    fn racing_completion_and_rescind_deliver_exactly_once() {
        for _ in 0..200 {
            let t: Arc<RequestTable<(), u32>> = Arc::new(RequestTable::new());
            let regs: Vec<_> = (0..16).map(|_| t.register(()).ok().unwrap()).collect();
            let delivered = Arc::new(AtomicUsize::new(0));
            let t2 = t.clone();
            let ids: Vec<u64> = regs.iter().map(|r| r.0).collect();
            let completer = std::thread::spawn(move || {
                for id in ids {
                    t2.complete(id, |_| Ok(7));
                }
            });
            t.rescind();
            completer.join().unwrap();
            for (_, w) in &regs {
                assert!(w.try_take().is_some(), "every waiter got one result");
                assert!(w.try_take().is_none());
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            assert_eq!(delivered.load(Ordering::Relaxed), 16);
        }
    }
}
