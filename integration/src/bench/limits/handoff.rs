//! What handing a request to another thread costs here, with no protocol
//! work at all: the floor of any transport whose device runs on its own
//! threads and sleeps when idle (vhost-user without polling, VMBus).
//!
//! - [`idle_wake_times`]: a writer kicks a thread blocked on an eventfd and
//!   spins until it answers through memory. That is a QD1 request's round
//!   trip when the guest polls and the device sleeps: one wake-up of an idle
//!   thread, usually on the other (halted) vCPU, and nothing else.
//! - [`handoff_reads`]: `clients` threads read 1 MiB blocks of page-cached
//!   files with `pread`, once on their own threads and once handed to
//!   `servers` threads (a kick when the server sleeps, a condvar wake back),
//!   i.e. the 1 MiB GET QD8 workload with one wake-up each way per request.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

/// Round trips of `rounds` kicks of a thread blocked in `read(2)` on an
/// eventfd, the kicker spinning on an atomic for the answer.
pub fn idle_wake_times(rounds: usize) -> std::io::Result<Vec<Duration>> {
    let kick = Arc::new(EventFd::new(0)?);
    let answered = Arc::new(AtomicU64::new(0));
    let (k, a) = (kick.clone(), answered.clone());
    let sleeper = std::thread::spawn(move || -> std::io::Result<()> {
        for round in 1..=rounds as u64 {
            k.read()?;
            a.store(round, Ordering::Release);
        }
        Ok(())
    });
    let mut out = Vec::with_capacity(rounds);
    for round in 1..=rounds as u64 {
        let t = Instant::now();
        kick.write(1)?;
        let give_up = t + Duration::from_secs(5);
        while answered.load(Ordering::Acquire) != round {
            if sleeper.is_finished() || Instant::now() > give_up {
                return Err(std::io::Error::other("the woken thread did not answer"));
            }
            std::hint::spin_loop();
        }
        out.push(t.elapsed());
    }
    sleeper.join().map_err(|_| std::io::Error::other("sleeper thread panicked"))??;
    Ok(out)
}

/// Throughput of the same `pread`s on the callers' own threads and handed
/// to other threads, in GB/s (medians over `REPS` interleaved rounds).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Handoff {
    /// Threads the reads were handed to.
    pub servers: usize,
    pub own_threads_gbps: f64,
    pub handed_off_gbps: f64,
}

/// Rounds of each shape; the medians damp this machine's run-to-run spread.
const REPS: usize = 3;

/// Run both shapes, `REPS` times each for `budget`, over files of `block`
/// bytes written into `dir` (and removed again).
pub fn handoff_reads(
    dir: &Path,
    block: usize,
    clients: usize,
    servers: usize,
    budget: Duration,
) -> std::io::Result<Handoff> {
    let files = write_files(dir, block, clients * 2);
    let result = files.and_then(|files| {
        let read = |file: usize, mut buf: Vec<u8>| files[file].read_exact_at(&mut buf, 0).map(|()| buf);
        let (mut own, mut handed) = (Vec::new(), Vec::new());
        for _ in 0..REPS {
            own.push(run_clients(files.len(), block, clients, budget, |_, f, buf| read(f, buf))?);
            handed.push(on_sleeping_threads(servers, |pool| {
                run_clients(files.len(), block, clients, budget, |c, f, buf| pool.run(c, move || read(f, buf)))
            })??);
        }
        Ok(Handoff { servers: servers.max(1), own_threads_gbps: median(own), handed_off_gbps: median(handed) })
    });
    let _ = std::fs::remove_dir_all(dir);
    result
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn write_files(dir: &Path, block: usize, n: usize) -> std::io::Result<Vec<File>> {
    std::fs::create_dir_all(dir)?;
    let data = vec![FILL; block];
    (0..n)
        .map(|i| {
            let p = dir.join(format!("block-{i}"));
            std::fs::write(&p, &data)?;
            File::open(&p)
        })
        .collect()
}

/// What every byte of the files is.
const FILL: u8 = 0xa5;

/// `clients` threads each read blocks round-robin over `files` files with
/// `read(client, file index, buffer)` until the budget is spent, checking
/// every block. Returns GB/s.
fn run_clients(
    files: usize,
    block: usize,
    clients: usize,
    budget: Duration,
    read: impl Fn(usize, usize, Vec<u8>) -> std::io::Result<Vec<u8>> + Sync,
) -> std::io::Result<f64> {
    let start = Instant::now();
    let deadline = start + budget;
    let per_client: std::io::Result<Vec<u64>> = std::thread::scope(|s| {
        let read = &read;
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                s.spawn(move || -> std::io::Result<u64> {
                    let mut buf = vec![0u8; block];
                    let mut done = 0u64;
                    while done < 2 || Instant::now() < deadline {
                        buf[block - 1] = 0;
                        buf = read(c, (c + done as usize * clients) % files, buf)?;
                        if buf[block - 1] != FILL {
                            return Err(std::io::Error::other("a block came back without its bytes"));
                        }
                        done += 1;
                    }
                    Ok(done)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err(std::io::Error::other("panicked")))).collect()
    });
    let bytes = per_client?.iter().sum::<u64>() * block as u64;
    Ok(bytes as f64 / start.elapsed().as_secs_f64() / 1e9)
}

/// Run `body` with `servers` threads that sleep on an eventfd until a caller
/// hands them work ([`Pool::run`]); they are stopped and joined afterwards.
pub fn on_sleeping_threads<'env, R>(servers: usize, body: impl FnOnce(&Pool<'env>) -> R) -> std::io::Result<R> {
    let servers = (0..servers.max(1))
        .map(|_| Ok(Server { queue: Mutex::default(), kick: EventFd::new(0)? }))
        .collect::<std::io::Result<_>>()?;
    let pool = Pool { servers };
    Ok(std::thread::scope(|s| {
        for server in &pool.servers {
            s.spawn(|| server.serve());
        }
        // Stops the servers on the way out, also when `body` unwinds (the
        // scope joins them before it passes a panic on).
        let _stop = StopOnDrop(&pool);
        body(&pool)
    }))
}

struct StopOnDrop<'p, 'env>(&'p Pool<'env>);

impl Drop for StopOnDrop<'_, '_> {
    fn drop(&mut self) {
        for server in &self.0.servers {
            lock(&server.queue).stop = true;
            let _ = server.kick.write(1);
        }
    }
}

type Job<'env> = Box<dyn FnOnce() + Send + 'env>;

/// One server's queue. `asleep` (under the lock) says whether a push must
/// kick, as a virtio driver kicks only a device that asked (EVENT_IDX).
#[derive(Default)]
struct Queue<'env> {
    jobs: VecDeque<Job<'env>>,
    asleep: bool,
    stop: bool,
}

struct Server<'env> {
    queue: Mutex<Queue<'env>>,
    kick: EventFd,
}

/// Threads of [`on_sleeping_threads`]; caller `c` hands to server `c % servers`.
pub struct Pool<'env> {
    servers: Vec<Server<'env>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where a server leaves a job's answer for the caller sleeping on `cv`.
struct Answer<T> {
    value: Mutex<Option<std::thread::Result<T>>>,
    /// Set after `value`: what a polling caller watches.
    ready: AtomicBool,
    cv: Condvar,
}

impl<'env> Pool<'env> {
    /// Run `job` on a server thread and sleep until it is done: one kick (if
    /// the server sleeps) and one wake-up back.
    pub fn run<T: Send + 'env>(&self, caller: usize, job: impl FnOnce() -> T + Send + 'env) -> T {
        self.run_polling(caller, Duration::ZERO, job)
    }

    /// [`Pool::run`], but the caller first watches for the answer for up to
    /// `poll` before it sleeps, as a polling guest does at queue depth 1.
    pub fn run_polling<T: Send + 'env>(
        &self,
        caller: usize,
        poll: Duration,
        job: impl FnOnce() -> T + Send + 'env,
    ) -> T {
        let answer = Arc::new(Answer { value: Mutex::new(None), ready: AtomicBool::new(false), cv: Condvar::new() });
        let slot = answer.clone();
        let server = &self.servers[caller % self.servers.len()];
        let wake = {
            let mut q = lock(&server.queue);
            q.jobs.push_back(Box::new(move || {
                // A panicking job still answers (and the caller panics), so no caller sleeps forever.
                let v = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                *lock(&slot.value) = Some(v);
                slot.ready.store(true, Ordering::Release);
                slot.cv.notify_one();
            }));
            std::mem::take(&mut q.asleep)
        };
        if wake {
            // A blocking eventfd's write fails only on counter overflow, which
            // one kick per sleep cannot reach.
            let _ = server.kick.write(1);
        }
        if !poll.is_zero() {
            let until = Instant::now() + poll;
            while !answer.ready.load(Ordering::Acquire) && Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        let mut value = lock(&answer.value);
        loop {
            if let Some(v) = value.take() {
                return v.unwrap_or_else(|p| std::panic::resume_unwind(p));
            }
            value = answer.cv.wait(value).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Server<'_> {
    /// Run what is queued and sleep on the kick only once the queue is empty
    /// (saying so under the lock, so no push is missed).
    fn serve(&self) {
        loop {
            let job = {
                let mut q = lock(&self.queue);
                match q.jobs.pop_front() {
                    Some(job) => Some(job),
                    None if q.stop => return,
                    None => {
                        q.asleep = true;
                        None
                    }
                }
            };
            match job {
                Some(job) => job(),
                None if self.kick.read().is_err() => return,
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kick_is_answered() {
        let times = idle_wake_times(200).unwrap();
        assert_eq!(times.len(), 200);
    }

    #[test]
    fn a_handed_off_job_runs_on_a_server_and_answers_its_caller() {
        let caller = std::thread::current().id();
        let ran_on = on_sleeping_threads(2, |pool| {
            (0..50).map(|i| pool.run(i, move || (std::thread::current().id(), i * 2))).collect::<Vec<_>>()
        })
        .unwrap();
        assert!(ran_on.iter().all(|(t, _)| *t != caller));
        assert_eq!(ran_on.iter().map(|(_, v)| *v).collect::<Vec<_>>(), (0..50).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn a_panicking_job_reaches_its_caller_instead_of_hanging_it() {
        let r = std::panic::catch_unwind(|| on_sleeping_threads(1, |pool| pool.run(0, || panic!("job failed"))));
        assert!(r.is_err());
    }

    #[test]
    fn handed_off_reads_return_every_block() {
        let dir = tempfile::tempdir().unwrap();
        let h = handoff_reads(&dir.path().join("h"), 64 << 10, 4, 2, Duration::from_millis(20)).unwrap();
        assert!(h.own_threads_gbps > 0.0 && h.handed_off_gbps > 0.0, "{h:?}");
        assert!(!dir.path().join("h").exists(), "the files are removed");
    }
}
