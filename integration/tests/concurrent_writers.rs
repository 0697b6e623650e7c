//! Concurrent uploads of one blob name (issue 12, "No blob that nobody
//! wrote"): the blob is always exactly one upload's bytes, the last to
//! commit; a loser fails with `ClientError::Superseded` or is overwritten.
//!
//! The VSP runs in this process on the embedded (fs) store. The stress test
//! runs at the size: about 25 s in the debug profile on two cores,
//! so it is not ignored.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmblob_integration::data::{CrcWriter, PatternReader, pattern};
use vmblob_integration::{Guest, GuestOptions, Sandbox, wait_until};
use vmblob_protocol::BlobError;
use vmblob_vsc::{BlobClient, BlobHandle, BlockId, BlockListType, ClientError, PutOptions};
use vmblob_vsp::Shutdown;
use vmblob_vsp::engine::{Engine, Limits};
use vmblob_vsp::store::fs::FsStore;
use vmblob_vsp::vhost::{QueueOptions, SocketOptions, serve};

/// The daemon's serve loop on a thread of this process, over an fs store.
struct InProcessVsp {
    socket: PathBuf,
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
}

impl InProcessVsp {
    fn start(dir: &Path) -> Self {
        let socket = dir.join("vsp.sock");
        let store = Arc::new(FsStore::open(&dir.join("store")).expect("open fs store"));
        let engine = Arc::new(Engine::new(store, Limits::default(), 2));
        let shutdown = Shutdown::new().expect("shutdown eventfd");
        let queues = QueueOptions { queues: 2, queue_size: 256, workers: 4, poll: Duration::ZERO };
        let (s, sd) = (SocketOptions { path: socket.clone(), group: None }, shutdown.clone());
        let thread = std::thread::spawn(move || serve(&s, engine, &queues, &sd, None).expect("serve"));
        wait_until(Duration::from_secs(10), "daemon socket", || socket.exists());
        Self { socket, shutdown, thread: Some(thread) }
    }

    /// The one guest (the daemon serves one VMM connection at a time).
    fn guest(&self, block_size: u32, parallel: usize) -> Guest {
        Guest::connect(&self.socket, Self::options(block_size, parallel))
    }

    fn options(block_size: u32, parallel: usize) -> GuestOptions {
        let mut opts = GuestOptions::default().queues(2).block_size(block_size);
        opts.client.parallel = parallel;
        opts
    }
}

/// Another client of the guest's device: its own transaction ids and
/// uploads, as a second process in the guest would have.
fn second_client(g: &Guest, block_size: u32, parallel: usize) -> BlobClient {
    let opts = InProcessVsp::options(block_size, parallel).client;
    BlobClient::new(g.transport.clone(), g.transport.device_config(), opts)
}

impl Drop for InProcessVsp {
    fn drop(&mut self) {
        self.shutdown.request();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const BLOCK: u32 = 64 << 10;

fn crc_of(seed: u64, len: u64) -> u64 {
    let mut r = PatternReader::new(seed, len);
    std::io::copy(&mut r, &mut std::io::sink()).expect("pattern");
    r.crc64()
}

/// The blob's bytes as a CRC and a length.
fn read_back(blob: &BlobHandle) -> Result<(u64, u64), ClientError> {
    let mut w = CrcWriter::new();
    blob.get_to_writer(&mut w, &|_| {})?;
    Ok((w.crc64(), w.len()))
}

/// A pattern reader that stops after `pause_at` bytes until `resume` says go.
struct PausingReader {
    inner: PatternReader,
    pause_at: u64,
    paused: Option<mpsc::Sender<()>>,
    resume: mpsc::Receiver<()>,
}

impl Read for PausingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let at = self.inner.produced();
        if at >= self.pause_at
            && let Some(paused) = self.paused.take()
        {
            let _ = paused.send(());
            self.resume.recv().map_err(|_| std::io::Error::other("resume dropped"))?;
        }
        let room = if at < self.pause_at { (self.pause_at - at) as usize } else { buf.len() };
        let n = buf.len().min(room);
        self.inner.read(&mut buf[..n])
    }
}

/// One writer commits while another, on the same client, is still staging:
/// the loser's commit fails and the blob is exactly the winner's bytes.
#[test]
fn a_put_stream_that_loses_while_staging_commits_nothing() {
    let sb = Sandbox::new();
    let vsp = InProcessVsp::start(&sb.dir);
    let g = vsp.guest(BLOCK, 2);
    g.container("race").create().unwrap();
    let len = 8 * u64::from(BLOCK);
    let (a, b) = (g.container("race").blob("one"), g.container("race").blob("one"));

    let (paused_tx, paused) = mpsc::channel();
    let (resume, resume_rx) = mpsc::channel();
    let loser = std::thread::spawn(move || {
        let mut r = PausingReader {
            inner: PatternReader::new(1, len),
            pause_at: 2 * u64::from(BLOCK),
            paused: Some(paused_tx),
            resume: resume_rx,
        };
        a.put_stream(&mut r, len, PutOptions::default(), &|_| {})
    });
    paused.recv_timeout(Duration::from_secs(30)).expect("loser staged its first blocks");
    wait_until(Duration::from_secs(30), "loser's two blocks staged", || {
        b.block_list(BlockListType::Uncommitted).is_ok_and(|l| l.len() == 2)
    });
    let won = b.put_stream(&mut PatternReader::new(2, len), len, PutOptions::default(), &|_| {}).unwrap();
    resume.send(()).unwrap();
    match loser.join().unwrap() {
        Err(ClientError::Superseded { .. }) => {}
        other => panic!("the loser must fail as superseded, got {other:?}"),
    }
    assert_eq!(read_back(&b).unwrap(), (crc_of(2, len), len), "the blob is the winner's bytes");
    assert_eq!(b.properties().unwrap().etag, won.etag, "nothing was committed after the winner");
}

/// Ids alone do not protect a commit: two uploads that share ids (an old
/// client, or a caller's own fixed ids) must still not commit a mix.
#[test]
fn uploads_sharing_block_ids_cannot_commit_a_mix() {
    let sb = Sandbox::new();
    let vsp = InProcessVsp::start(&sb.dir);
    let g1 = vsp.guest(BLOCK, 2);
    let g2 = second_client(&g1, BLOCK, 2);
    g1.container("race").create().unwrap();
    let (a, b) = (g1.container("race").blob("one"), g2.container("race").blob("one"));
    let id = |i: u8| BlockId::new(&[b'x', b'0' + i]).unwrap();
    let n = BLOCK as usize;
    let (a0, a1, b0, b1) = (pattern(1, 0, n), pattern(1, n as u64, n), pattern(2, 0, n), pattern(2, n as u64, n));

    let mut up_a = a.block_uploader();
    up_a.stage(id(0), &[&a0]).unwrap();
    up_a.stage(id(1), &[&a1]).unwrap();
    let mut up_b = b.block_uploader();
    up_b.stage(id(0), &[&b0]).unwrap();
    let staged_b = up_b.finish().unwrap();
    // A's list names x0, which B re-staged: refused, nothing committed.
    match up_a.commit(PutOptions::default()) {
        Err(ClientError::Superseded { .. }) => {}
        other => panic!("a commit of another upload's block must fail, got {other:?}"),
    }
    assert_eq!(a.properties().unwrap_err().blob_error(), Some(BlobError::BlobNotFound));
    // B finishes its upload and wins with exactly its bytes.
    let mut up_b = b.block_uploader();
    up_b.stage(id(1), &[&b1]).unwrap();
    let mut blocks = staged_b.blocks;
    blocks.extend(up_b.finish().unwrap().blocks);
    b.commit_blocks(blocks, PutOptions::default()).unwrap();
    let whole = [&b0[..], &b1].concat();
    assert_eq!(read_back(&a).unwrap(), (vmblob_vsc::crc64(&whole), whole.len() as u64));
}

/// The stress shape of issue 12: `writers` uploads of one name per round,
/// readers running throughout; every read is exactly one writer's version.
struct Stress {
    writers: u64,
    rounds: u64,
    len: u64,
    block: u32,
}

impl Stress {
    fn run(&self) {
        let started = Instant::now();
        let sb = Sandbox::new();
        let vsp = InProcessVsp::start(&sb.dir);
        // Two clients, writers alternating between them, one reader on each.
        let g = vsp.guest(self.block, 2);
        let guests = [g.client.clone(), second_client(&g, self.block, 2)];
        guests[0].container("stress").create().unwrap();
        let seed = |w: u64| 100 + w;
        let versions: Arc<Vec<u64>> = Arc::new((0..self.writers).map(|w| crc_of(seed(w), self.len)).collect());
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = guests
            .iter()
            .map(|g| {
                let (blob, versions, done, len) =
                    (g.container("stress").blob("one"), versions.clone(), done.clone(), self.len);
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while !done.load(Ordering::SeqCst) {
                        match read_back(&blob) {
                            Ok((crc, got)) => {
                                assert!(got == len && versions.contains(&crc), "a read saw a blob nobody wrote");
                                reads += 1;
                            }
                            // Not written yet, or overwritten while this read was pinned to its ETag.
                            Err(e)
                                if matches!(
                                    e.blob_error(),
                                    Some(BlobError::BlobNotFound | BlobError::PreconditionFailed)
                                ) => {}
                            Err(e) => panic!("reader: {e}"),
                        }
                    }
                    reads
                })
            })
            .collect();
        let mut lost = 0;
        for round in 0..self.rounds {
            let start = Arc::new(Barrier::new(self.writers as usize));
            let writers: Vec<_> = (0..self.writers)
                .map(|w| {
                    let blob = guests[(w % 2) as usize].container("stress").blob("one");
                    let (start, len) = (start.clone(), self.len);
                    std::thread::spawn(move || {
                        start.wait();
                        blob.put_stream(&mut PatternReader::new(seed(w), len), len, PutOptions::default(), &|_| {})
                    })
                })
                .collect();
            let mut won = Vec::new();
            for (w, t) in writers.into_iter().enumerate() {
                match t.join().unwrap() {
                    Ok(_) => won.push(versions[w]),
                    Err(ClientError::Superseded { .. }) => lost += 1,
                    Err(e) => panic!("round {round} writer {w}: {e}"),
                }
            }
            let (crc, got) = read_back(&guests[0].container("stress").blob("one")).unwrap();
            assert_eq!(got, self.len);
            assert!(won.contains(&crc), "round {round}: the blob is not the bytes of a writer that was told Ok");
        }
        done.store(true, Ordering::SeqCst);
        let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        eprintln!(
            "{} writers x {} rounds x {} MiB: {lost} uploads superseded, {reads} concurrent reads, all exact, in {:?}",
            self.writers,
            self.rounds,
            self.len >> 20,
            started.elapsed()
        );
    }
}

/// 10 blocks per upload, so every upload is a multi-block commit.
#[test]
fn eight_writers_twenty_rounds_of_40_mib_never_mix() {
    Stress { writers: 8, rounds: 20, len: 40 << 20, block: 4 << 20 }.run();
}
