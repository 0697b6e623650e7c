//! One queue's part of the inflight region: the spec's bookkeeping at admit
//! and completion, and the repair and replay after a restart. Every value read
//! back is checked: the VMM can write this memory, so a bad `desc_num`, flag,
//! counter or index is an [`InflightError`], never a panic or an
//! out-of-bounds access.

use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::mmap::MmapRegion;
use vm_memory::{ByteValued, Bytes, VolatileMemory};

use super::InflightError;
use super::layout::{self, COUNTER, DESC_NUM, FEATURES, Geometry, INFLIGHT, LAST_BATCH_HEAD, NEXT, USED_IDX, VERSION};

/// What a restarted backend finds in a queue's region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Heads the previous backend took and never completed, oldest first.
    pub heads: Vec<u16>,
    /// Where to pop next: the used index plus the heads in flight. `None`
    /// for a region no backend used before (the frontend's base stands).
    pub next_avail: Option<u16>,
    /// Entries of a torn last batch that were in the used ring but still
    /// marked in flight, now cleared.
    pub repaired: u16,
}

/// A queue's region; all calls for one queue come under its vring lock, the
/// mutex only keeps the counter honest if they did not.
pub struct QueueRegion {
    map: Arc<MmapRegion<()>>,
    base: usize,
    desc_num: u16,
    /// The counter the next admitted head gets.
    next_counter: Mutex<u64>,
}

impl QueueRegion {
    /// Queue `q` of a region laid out as `geometry`.
    pub fn new(map: Arc<MmapRegion<()>>, geometry: Geometry, q: u16) -> Result<QueueRegion, InflightError> {
        let base = geometry.queue_base(q).ok_or(InflightError::NoSuchQueue(q))?;
        let need = geometry.size();
        if map.len() < need {
            return Err(InflightError::TooSmall { have: map.len(), need });
        }
        Ok(QueueRegion { map, base, desc_num: geometry.queue_size, next_counter: Mutex::new(0) })
    }

    fn counter(&self) -> MutexGuard<'_, u64> {
        self.next_counter.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read<T: ByteValued>(&self, off: usize) -> Result<T, InflightError> {
        let at = self.base + off;
        self.map.as_volatile_slice().read_obj(at).map_err(|_| InflightError::Access(at))
    }

    fn write<T: ByteValued>(&self, off: usize, v: T) -> Result<(), InflightError> {
        let at = self.base + off;
        self.map.as_volatile_slice().write_obj(v, at).map_err(|_| InflightError::Access(at))
    }

    fn read_u16(&self, off: usize) -> Result<u16, InflightError> {
        self.read::<u16>(off).map(u16::from_le)
    }

    fn write_u16(&self, off: usize, v: u16) -> Result<(), InflightError> {
        self.write(off, v.to_le())
    }

    fn check_head(&self, head: u16) -> Result<(), InflightError> {
        if head < self.desc_num { Ok(()) } else { Err(InflightError::Head { head, desc_num: self.desc_num }) }
    }

    /// At admit: `head` is in flight, ordered after every head marked before.
    /// The counter is written before the flag, so a crash in between leaves
    /// the head simply not in flight (it is popped again from the avail ring).
    pub fn mark(&self, head: u16) -> Result<(), InflightError> {
        self.check_head(head)?;
        let mut next = self.counter();
        let counter = *next;
        *next = counter.checked_add(1).ok_or(InflightError::CounterExhausted)?;
        self.write(layout::desc(head) + COUNTER, counter.to_le())?;
        self.write(layout::desc(head) + INFLIGHT, 1u8)
    }

    /// Before the batch's used entries are written: link the batch so that a
    /// restart can find it. The list from `last_batch_head` runs in posting
    /// order, so if only the first k entries reached the used ring (each
    /// `add_used` moves the used index by one), the first k are the ones
    /// repaired.
    pub fn begin_batch(&self, heads: &[u16]) -> Result<(), InflightError> {
        heads.iter().try_for_each(|&h| self.check_head(h))?;
        let Some(&first) = heads.first() else { return Ok(()) };
        for pair in heads.windows(2) {
            self.write_u16(layout::desc(pair[0]) + NEXT, pair[1])?;
        }
        self.write_u16(LAST_BATCH_HEAD, first)
    }

    /// After the batch is in the used ring, which now stands at `used_idx`:
    /// the heads are no longer in flight, then the region catches up with
    /// the ring.
    pub fn end_batch(&self, heads: &[u16], used_idx: u16) -> Result<(), InflightError> {
        for &h in heads {
            self.check_head(h)?;
            self.write(layout::desc(h) + INFLIGHT, 0u8)?;
        }
        self.write_u16(USED_IDX, used_idx)
    }

    /// At queue start after SET_INFLIGHT_FD. `ring_used` is the used ring's
    /// index as the guest memory holds it; `ring_size` the queue size set
    /// for this connection.
    pub fn recover(&self, ring_used: u16, ring_size: u16) -> Result<Recovered, InflightError> {
        if ring_size > self.desc_num {
            return Err(InflightError::RingTooLarge { ring: ring_size, desc_num: self.desc_num });
        }
        match self.read_u16(layout::VERSION_AT)? {
            0 => return self.initialise(ring_used),
            VERSION => {}
            v => return Err(InflightError::Version(v)),
        }
        let desc_num = self.read_u16(DESC_NUM)?;
        if desc_num != self.desc_num {
            return Err(InflightError::DescNum { found: desc_num, expected: self.desc_num });
        }
        let repaired = self.repair_last_batch(ring_used)?;
        let mut inflight = Vec::new();
        for i in 0..self.desc_num {
            match self.read::<u8>(layout::desc(i) + INFLIGHT)? {
                0 => {}
                1 => inflight.push((u64::from_le(self.read(layout::desc(i) + COUNTER)?), i)),
                value => return Err(InflightError::Flag { head: i, value }),
            }
        }
        if inflight.len() > usize::from(ring_size) {
            return Err(InflightError::TooManyInflight { n: inflight.len(), ring: ring_size });
        }
        inflight.sort_unstable();
        if let Some(w) = inflight.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(InflightError::DuplicateCounter { counter: w[0].0, a: w[0].1, b: w[1].1 });
        }
        let next = match inflight.last() {
            Some(&(c, _)) => c.checked_add(1).ok_or(InflightError::CounterExhausted)?,
            None => 0,
        };
        *self.counter() = next;
        // Fits: at most ring_size ≤ 32768 heads.
        let n = inflight.len() as u16;
        Ok(Recovered {
            heads: inflight.into_iter().map(|(_, h)| h).collect(),
            next_avail: Some(ring_used.wrapping_add(n)),
            repaired,
        })
    }

    /// A region no backend has used: lay out the header, nothing in flight.
    fn initialise(&self, ring_used: u16) -> Result<Recovered, InflightError> {
        self.write(FEATURES, 0u64)?;
        self.write_u16(DESC_NUM, self.desc_num)?;
        self.write_u16(LAST_BATCH_HEAD, 0)?;
        self.write_u16(USED_IDX, ring_used)?;
        for i in 0..self.desc_num {
            self.write(layout::desc(i), [0u8; layout::DESC_SIZE])?;
        }
        self.write_u16(layout::VERSION_AT, VERSION)?;
        *self.counter() = 0;
        Ok(Recovered { heads: Vec::new(), next_avail: None, repaired: 0 })
    }

    /// The used ring got ahead of the region: the backend died between
    /// writing a batch's used entries and clearing their flags. The
    /// difference is how many of the batch reached the ring; those are
    /// completed, not in flight.
    fn repair_last_batch(&self, ring_used: u16) -> Result<u16, InflightError> {
        let region_used = self.read_u16(USED_IDX)?;
        let torn = ring_used.wrapping_sub(region_used);
        if torn > self.desc_num {
            return Err(InflightError::UsedIdx { ring: ring_used, region: region_used });
        }
        let mut head = self.read_u16(LAST_BATCH_HEAD)?;
        for _ in 0..torn {
            self.check_head(head)?;
            self.write(layout::desc(head) + INFLIGHT, 0u8)?;
            head = self.read_u16(layout::desc(head) + NEXT)?;
        }
        self.write_u16(USED_IDX, ring_used)?;
        Ok(torn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u16 = 8;

    fn region() -> (Arc<MmapRegion<()>>, Geometry) {
        let g = Geometry::new(2, SIZE).unwrap();
        (Arc::new(MmapRegion::new(g.size()).unwrap()), g)
    }

    fn queue(map: &Arc<MmapRegion<()>>, g: Geometry, q: u16) -> QueueRegion {
        QueueRegion::new(map.clone(), g, q).unwrap()
    }

    /// A queue that a backend has started (initialised) at used index `used`.
    fn started(used: u16) -> (Arc<MmapRegion<()>>, Geometry, QueueRegion) {
        let (map, g) = region();
        let q = queue(&map, g, 0);
        assert_eq!(q.recover(used, SIZE).unwrap(), Recovered { heads: vec![], next_avail: None, repaired: 0 });
        (map, g, q)
    }

    /// The backend "restarts": a fresh view of the same memory.
    fn restart(map: &Arc<MmapRegion<()>>, g: Geometry) -> QueueRegion {
        queue(map, g, 0)
    }

    fn poke<T: ByteValued>(map: &MmapRegion<()>, at: usize, v: T) {
        map.as_volatile_slice().write_obj(v, at).unwrap();
    }

    #[test]
    fn a_fresh_region_is_initialised_with_the_spec_header() {
        let (map, _g, _q) = started(5);
        let s = map.as_volatile_slice();
        assert_eq!(s.read_obj::<u64>(0).unwrap(), 0, "features");
        assert_eq!(s.read_obj::<u16>(8).unwrap(), 1, "version");
        assert_eq!(s.read_obj::<u16>(10).unwrap(), SIZE, "desc_num");
        assert_eq!(s.read_obj::<u16>(14).unwrap(), 5, "used_idx");
    }

    #[test]
    fn heads_in_flight_come_back_in_admission_order_with_the_next_avail_index() {
        let (map, g, q) = started(10);
        for h in [5, 2, 7, 0] {
            q.mark(h).unwrap();
        }
        // 2 and 0 complete, in one batch; the used ring moved by two.
        q.begin_batch(&[2, 0]).unwrap();
        q.end_batch(&[2, 0], 12).unwrap();
        let s = map.as_volatile_slice();
        assert_eq!(s.read_obj::<u8>(layout::desc(5)).unwrap(), 1, "inflight flag of 5");
        assert_eq!(s.read_obj::<u8>(layout::desc(2)).unwrap(), 0);
        let r = restart(&map, g).recover(12, SIZE).unwrap();
        assert_eq!(r, Recovered { heads: vec![5, 7], next_avail: Some(14), repaired: 0 });
    }

    #[test]
    fn the_counter_continues_after_a_restart_so_old_heads_stay_first() {
        let (map, g, q) = started(0);
        q.mark(3).unwrap();
        q.mark(1).unwrap();
        let q2 = restart(&map, g);
        assert_eq!(q2.recover(0, SIZE).unwrap().heads, vec![3, 1]);
        q2.mark(0).unwrap();
        assert_eq!(restart(&map, g).recover(0, SIZE).unwrap().heads, vec![3, 1, 0]);
    }

    #[test]
    fn a_batch_torn_after_part_of_it_reached_the_used_ring_is_repaired() {
        let (map, g, q) = started(0);
        for h in [4, 6, 1] {
            q.mark(h).unwrap();
        }
        // Batch [4, 6, 1]: the crash comes after two used entries were written.
        q.begin_batch(&[4, 6, 1]).unwrap();
        let r = restart(&map, g).recover(2, SIZE).unwrap();
        assert_eq!(r, Recovered { heads: vec![1], next_avail: Some(3), repaired: 2 });
        // And the region caught up: a second restart finds nothing to repair.
        assert_eq!(restart(&map, g).recover(2, SIZE).unwrap().repaired, 0);
    }

    #[test]
    fn a_batch_linked_but_not_in_the_used_ring_stays_in_flight() {
        let (map, g, q) = started(7);
        q.mark(2).unwrap();
        q.begin_batch(&[2]).unwrap();
        let r = restart(&map, g).recover(7, SIZE).unwrap();
        assert_eq!(r, Recovered { heads: vec![2], next_avail: Some(8), repaired: 0 });
    }

    #[test]
    fn a_batch_fully_in_the_used_ring_but_flags_not_cleared_is_repaired_across_the_index_wrap() {
        let (map, g, q) = started(u16::MAX);
        q.mark(0).unwrap();
        q.mark(5).unwrap();
        q.begin_batch(&[0, 5]).unwrap();
        let r = restart(&map, g).recover(1, SIZE).unwrap();
        assert_eq!(r, Recovered { heads: vec![], next_avail: Some(1), repaired: 2 });
    }

    #[test]
    fn queues_do_not_overlap() {
        let (map, g) = region();
        let (q0, q1) = (queue(&map, g, 0), queue(&map, g, 1));
        q0.recover(0, SIZE).unwrap();
        q1.recover(0, SIZE).unwrap();
        q0.mark(SIZE - 1).unwrap();
        assert_eq!(queue(&map, g, 1).recover(0, SIZE).unwrap().heads, Vec::<u16>::new());
        assert_eq!(queue(&map, g, 0).recover(0, SIZE).unwrap().heads, vec![SIZE - 1]);
        assert!(matches!(QueueRegion::new(map, g, 2), Err(InflightError::NoSuchQueue(2))));
    }

    #[test]
    fn heads_outside_the_region_are_errors() {
        let (_map, _g, q) = started(0);
        assert!(matches!(q.mark(SIZE), Err(InflightError::Head { head: SIZE, .. })));
        assert!(q.begin_batch(&[1, SIZE]).is_err());
        assert!(q.end_batch(&[SIZE], 1).is_err());
    }

    #[test]
    fn hostile_contents_are_errors_not_panics() {
        type Spoil = Box<dyn Fn(&MmapRegion<()>)>;
        let cases: Vec<(&str, Spoil, u16)> = vec![
            ("version", Box::new(|m| poke(m, 8, 7u16)), SIZE),
            ("desc_num", Box::new(|m| poke(m, 10, 200u16)), SIZE),
            ("flag", Box::new(|m| poke(m, layout::desc(3), 9u8)), SIZE),
            ("used_idx far from the ring", Box::new(|m| poke(m, 14, 1000u16)), SIZE),
            (
                "last_batch_head outside",
                Box::new(|m| {
                    poke(m, 14, 0u16);
                    poke(m, 12, 900u16)
                }),
                SIZE,
            ),
            (
                "batch list leaving the region",
                Box::new(|m| {
                    poke(m, 14, 0u16);
                    poke(m, 12, 1u16);
                    poke(m, layout::desc(1) + NEXT, 4000u16)
                }),
                SIZE,
            ),
            (
                "duplicate counter",
                Box::new(|m| {
                    for h in [1, 2] {
                        poke(m, layout::desc(h), 1u8);
                        poke(m, layout::desc(h) + COUNTER, 42u64);
                    }
                }),
                SIZE,
            ),
            (
                "counter at the end",
                Box::new(|m| {
                    poke(m, layout::desc(1), 1u8);
                    poke(m, layout::desc(1) + COUNTER, u64::MAX);
                }),
                SIZE,
            ),
            (
                "more in flight than the ring holds",
                Box::new(|m| {
                    for h in 0..4u16 {
                        poke(m, layout::desc(h), 1u8);
                        poke(m, layout::desc(h) + COUNTER, u64::from(h));
                    }
                }),
                2,
            ),
            ("ring larger than the region", Box::new(|_| {}), SIZE + 1),
        ];
        for (what, spoil, ring) in cases {
            let (map, g, _q) = started(2);
            spoil(&map);
            let ring_used = if what.contains("batch") { 3 } else { 2 };
            let r = restart(&map, g).recover(ring_used, ring);
            assert!(r.is_err(), "{what}: {r:?}");
        }
    }

    #[test]
    fn a_mapping_smaller_than_the_geometry_is_refused() {
        let g = Geometry::new(2, SIZE).unwrap();
        let map = Arc::new(MmapRegion::new(g.size() - 1).unwrap());
        assert!(matches!(QueueRegion::new(map, g, 0), Err(InflightError::TooSmall { .. })));
    }
}
