//! A writer thread and a reader thread move 100,000 random-size packets through a small ring,
//! each sleeping on a counting signal: no lost wakeups (every sleep is bounded, a timeout fails
//! the test), no signals beyond the rules, every packet intact and in order.

use std::thread;
use std::time::Duration;

use crate::packet::{Packet, encode_inband, parse_packet};

use super::*;

const PACKETS: u64 = 100_000;
/// Far longer than any legitimate wait; reaching it means a wakeup was lost.
const SLEEP_LIMIT: Duration = Duration::from_secs(20);

/// Packet `i`'s payload: its number, then 0..600 bytes derived from it.
fn payload(i: u64) -> Vec<u8> {
    let mut rng = Rng::new(i);
    let mut v = i.to_le_bytes().to_vec();
    let n = rng.below(600);
    v.extend(rng.bytes(n));
    v
}

#[test]
fn writer_and_reader_threads() {
    let mem = flat(16384);
    let (mut out, mut inc) = rings_at(mem, 0);
    let reader_wake = Arc::new(CountingSignal::new());
    let writer_wake = Arc::new(CountingSignal::new());

    let writer = {
        let (reader_wake, writer_wake) = (reader_wake.clone(), writer_wake.clone());
        thread::spawn(move || {
            let mut rng = Rng::new(99);
            let (mut signals, mut requests, mut batch) = (0u64, 0u64, 0);
            for i in 0..PACKETS {
                let packet = encode_inband(i, false, &payload(i));
                loop {
                    match out.write(&packet) {
                        Ok(()) => break,
                        Err(WriteError::Full { .. }) => {
                            // Publish what the reader cannot see yet, or it never frees space.
                            if out.commit_write() {
                                reader_wake.signal();
                                signals += 1;
                            }
                            batch = 0;
                            let seen = writer_wake.count();
                            requests += 1;
                            if !out.poll_ready(packet.len()).unwrap() {
                                writer_wake.wait_past(seen, SLEEP_LIMIT).expect("lost wakeup: writer slept forever");
                            }
                        }
                        Err(e) => panic!("writer: {e}"),
                    }
                }
                batch += 1;
                if batch > rng.below(8) {
                    if out.commit_write() {
                        reader_wake.signal();
                        signals += 1;
                    }
                    batch = 0;
                }
            }
            if out.commit_write() {
                reader_wake.signal();
                signals += 1;
            }
            (signals, requests)
        })
    };

    let reader = {
        let (reader_wake, writer_wake) = (reader_wake.clone(), writer_wake.clone());
        thread::spawn(move || {
            let mut rng = Rng::new(5);
            let (mut next, mut signals, mut unmasks) = (0u64, 0u64, 0u64);
            let mut commit = |inc: &mut IncomingRing<_>| {
                if inc.commit_read() {
                    writer_wake.signal();
                    signals += 1;
                }
            };
            loop {
                // Draining: the writer only signals empty -> non-empty anyway; masked, it won't.
                inc.set_interrupt_mask(true);
                loop {
                    match inc.read() {
                        Ok(bytes) => {
                            match parse_packet(&bytes, 0) {
                                Ok(Packet::InBand { transaction_id, completion_requested: false, payload: got }) => {
                                    assert_eq!(transaction_id, next);
                                    let want = payload(next);
                                    assert_eq!(got[..want.len()], want[..], "packet {next}");
                                    assert!(got[want.len()..].iter().all(|&b| b == 0), "padding of {next}");
                                }
                                other => panic!("packet {next}: {other:?}"),
                            }
                            next += 1;
                            if rng.below(4) == 0 {
                                commit(&mut inc);
                            }
                        }
                        Err(ReadError::Empty) => break,
                        Err(e) => panic!("reader: {e}"),
                    }
                }
                commit(&mut inc);
                if next == PACKETS {
                    break;
                }
                // Sleep protocol: remember the count, unmask, re-check, then sleep.
                let seen = reader_wake.count();
                unmasks += 1;
                if inc.unmask_and_check().unwrap() {
                    continue;
                }
                reader_wake.wait_past(seen, SLEEP_LIMIT).expect("lost wakeup: reader slept forever");
            }
            (signals, unmasks)
        })
    };

    let (writer_signals, requests) = writer.join().expect("writer");
    let (reader_signals, unmasks) = reader.join().expect("reader");
    eprintln!(
        "writer: {writer_signals} signals, {requests} full waits; reader: {reader_signals} signals, {unmasks} unmasks"
    );
    assert_eq!(reader_wake.count(), writer_signals);
    assert_eq!(writer_wake.count(), reader_signals);
    // Every writer signal needs an empty ring and a cleared mask, which only an unmask
    // (or the initial state) gives; between two unmasks the ring goes non-empty at most once.
    assert!(writer_signals <= unmasks + 1, "{writer_signals} signals for {unmasks} unmasks");
    // Every reader signal answers one pending_send_sz request.
    assert!(reader_signals <= requests, "{reader_signals} signals for {requests} requests");
    assert!(writer_signals > 0 && requests > 0, "the test exercised neither sleep");
}
