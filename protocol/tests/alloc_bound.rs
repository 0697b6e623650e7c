//! A short input that claims a huge element count is refused before anything
//! is allocated for those elements. A counting allocator measures what each
//! decode call allocates, per thread, so tests running in parallel do not mix.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;

use vmblob_protocol::framing::vmbus::{GpaRange, PacketError, encode_gpa_direct, parse_packet};
use vmblob_protocol::ops::{DecodeError, MAX_BLOCKS, MAX_LIST_RESULTS, OpCode, OpRequest, ResponseMessage};
use vmblob_protocol::transport::MAX_PAGES;

struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn record(bytes: usize) {
    let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(bytes)));
}

// SAFETY: every call is forwarded unchanged to `System`; the only addition is
// bumping a thread-local counter, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Run `f`, returning its result, the bytes it allocated and how long it took.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, Duration) {
    let before = ALLOCATED.with(Cell::get);
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    (out, ALLOCATED.with(Cell::get) - before, took)
}

/// What a decoder may allocate for an input of `len` bytes: a small multiple
/// of the input (each element it could hold), never anything tied to a claim.
fn budget(len: usize) -> usize {
    64 * len + 1024
}

const QUICK: Duration = Duration::from_secs(1);

fn request_header(op: OpCode, body: &[u8]) -> Vec<u8> {
    let mut b = b"VBRQ".to_vec();
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&(op as u16).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&(body.len() as u32).to_le_bytes());
    b.extend_from_slice(body);
    b
}

fn response_header(op: OpCode, body: &[u8]) -> Vec<u8> {
    let mut b = b"VBRS".to_vec();
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&(op as u16).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&(body.len() as u32).to_le_bytes());
    b.extend_from_slice(body);
    b
}

fn str16(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u16).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

/// A count more than `room` bytes could hold at `min_elem` bytes per element.
fn overclaim(room: usize, min_elem: usize) -> impl Strategy<Value = u32> {
    let least = (room / min_elem + 1) as u32;
    prop_oneof![Just(u32::MAX), Just(least), least..=u32::MAX, least..=least.saturating_add(100_000)]
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn put_block_list_overclaim((tail, claimed) in vec(any::<u8>(), 0..64).prop_flat_map(|t| {
        let n = t.len();
        (Just(t), overclaim(n, 2))
    })) {
        let mut body = [str16("box"), str16("blob")].concat();
        body.extend_from_slice(&claimed.to_le_bytes());
        body.extend_from_slice(&tail);
        let input = request_header(OpCode::PutBlockList, &body);
        let (got, bytes, took) = measure(|| OpRequest::decode(&input));
        let want = if claimed as usize > MAX_BLOCKS {
            DecodeError::TooMany { count: claimed as usize, max: MAX_BLOCKS }
        } else {
            DecodeError::Truncated
        };
        prop_assert_eq!(got, Err(want));
        prop_assert!(bytes <= budget(input.len()), "allocated {} bytes", bytes);
        prop_assert!(took < QUICK);
    }

    #[test]
    fn metadata_overclaim((tail, claimed) in vec(any::<u8>(), 0..64).prop_flat_map(|t| {
        let room = t.len();
        (Just(t), ((room / 4 + 1) as u16)..=u16::MAX)
    })) {
        let mut body = str16("box");
        body.extend_from_slice(&claimed.to_le_bytes());
        body.extend_from_slice(&tail);
        let input = request_header(OpCode::CreateContainer, &body);
        let (got, bytes, took) = measure(|| OpRequest::decode(&input));
        prop_assert_eq!(got, Err(DecodeError::Truncated));
        prop_assert!(bytes <= budget(input.len()), "allocated {} bytes", bytes);
        prop_assert!(took < QUICK);
    }

    #[test]
    fn list_responses_overclaim(
        which in 0usize..3,
        tail in vec(any::<u8>(), 0..64),
        pick in any::<prop::sample::Index>(),
    ) {
        let (op, min_elem, max) = [
            (OpCode::ListContainers, 12, MAX_LIST_RESULTS as usize),
            (OpCode::ListBlobs, 3, MAX_LIST_RESULTS as usize),
            (OpCode::GetBlockList, 11, 3 * MAX_BLOCKS),
        ][which];
        // Claims: anything from one past what the tail holds up to u32::MAX.
        let least = tail.len() / min_elem + 1;
        let claimed = [u32::MAX as usize, least, least + pick.index(1 << 20), max, max + 1][pick.index(5)] as u32;
        let mut body = claimed.to_le_bytes().to_vec();
        body.extend_from_slice(&tail);
        let input = response_header(op, &body);
        let (got, bytes, took) = measure(|| ResponseMessage::decode(&input, op));
        let want = if claimed as usize > max {
            DecodeError::TooMany { count: claimed as usize, max }
        } else {
            DecodeError::Truncated
        };
        prop_assert_eq!(got, Err(want));
        prop_assert!(bytes <= budget(input.len()), "allocated {} bytes", bytes);
        prop_assert!(took < QUICK);
    }

    #[test]
    fn gpa_range_count_overclaim((pfns, claimed) in (1usize..8).prop_flat_map(|p| {
        // Each range takes at least 16 bytes; the ranges area holds 8 + 8 * p.
        (Just(p), overclaim(8 + 8 * p, 16))
    })) {
        let range = GpaRange { byte_count: pfns as u32 * 4096, byte_offset: 0, pfns: (1..=pfns as u64).collect() };
        let mut input = encode_gpa_direct(1, &[range], &[0; 56]);
        input[20..24].copy_from_slice(&claimed.to_le_bytes());
        let (got, bytes, took) = measure(|| parse_packet(&input, MAX_PAGES as usize));
        prop_assert_eq!(got, Err(PacketError::BadRangeCount(claimed)));
        prop_assert!(bytes <= budget(input.len()), "allocated {} bytes", bytes);
        prop_assert!(took < QUICK);
    }

    #[test]
    fn gpa_byte_count_overclaim(byte_count in (9u32 * 4096)..=u32::MAX, max_pages in prop_oneof![Just(8usize), Just(MAX_PAGES as usize)]) {
        // A range claiming up to 4 GiB (a million PFNs) in a packet holding 8.
        let range = GpaRange { byte_count: 8 * 4096, byte_offset: 0, pfns: (1..=8).collect() };
        let mut input = encode_gpa_direct(1, &[range], &[0; 56]);
        input[24..28].copy_from_slice(&byte_count.to_le_bytes());
        let (got, bytes, took) = measure(|| parse_packet(&input, max_pages));
        let pages = byte_count.div_ceil(4096) as usize;
        let want = if pages > max_pages {
            PacketError::TooManyPages { count: pages, max: max_pages }
        } else {
            PacketError::RangesOverflow
        };
        prop_assert_eq!(got, Err(want));
        prop_assert!(bytes <= budget(input.len()), "allocated {} bytes", bytes);
        prop_assert!(took < QUICK);
    }
}

/// The counter sees allocations at all (otherwise every bound above is vacuous).
#[test]
fn the_counter_counts() {
    let (v, bytes, _) = measure(|| vec![0u8; 100_000]);
    assert_eq!(v.len(), 100_000);
    assert!(bytes >= 100_000);
}
