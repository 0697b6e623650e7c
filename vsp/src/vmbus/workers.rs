//! A small pool serving admitted requests, so requests overlap. Each finished request goes back
//! to the dispatcher, which alone writes the host→guest ring.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use vm_memory::GuestMemoryMmap;
use vmblob_glue::vmbus::emulator::Doorbell;
use vmblob_protocol::VspResponse;
use vmblob_protocol::framing::vmbus::GpaDirectFrame;

use crate::engine::{CancelToken, Engine};
use crate::runner;

/// An admitted request.
pub(super) struct Job {
    pub frame: GpaDirectFrame,
    pub cancel: CancelToken,
}

/// A served request's response, for the dispatcher to post.
pub(super) struct Done {
    pub transaction_id: u64,
    pub response: VspResponse,
}

/// Starts `count` workers. They stop when the job sender is dropped and the queue is empty.
pub(super) fn spawn(
    count: usize,
    engine: &Arc<Engine>,
    mem: &GuestMemoryMmap,
    jobs: Receiver<Job>,
    done: Sender<Done>,
    wake: &Doorbell,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let jobs = Arc::new(Mutex::new(jobs));
    (0..count.max(1))
        .map(|i| {
            let (engine, mem, jobs, done, wake) =
                (engine.clone(), mem.clone(), jobs.clone(), done.clone(), wake.clone());
            std::thread::Builder::new()
                .name(format!("vmbus-worker-{i}"))
                .spawn(move || work(&engine, &mem, &jobs, &done, &wake))
        })
        .collect()
}

fn work(engine: &Engine, mem: &GuestMemoryMmap, jobs: &Mutex<Receiver<Job>>, done: &Sender<Done>, wake: &Doorbell) {
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else { return };
        let id = job.frame.transaction_id;
        let response = runner::serve(engine, mem, &job.frame, &job.cancel, format_args!("transaction {id}"));
        if done.send(Done { transaction_id: job.frame.transaction_id, response }).is_err() {
            return; // the dispatcher is gone (drain timed out); nobody can post it
        }
        wake.ring();
    }
}
