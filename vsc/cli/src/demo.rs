//! `vmblob demo`: the first thing a new user runs. Starts `vmblob-vsp` on a
//! temporary socket and store, round-trips a blob through the paravirtual
//! path, and says what happened at each step.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Cli, CliError};
use vmblob_vsc::{ListBlobsOptions, PutOptions};

/// Kills the daemon if the demo fails half way.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM lets the daemon complete in-flight work and exit cleanly.
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `vmblob-vsp` beside this executable, else on PATH.
fn vsp_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("vmblob-vsp")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("vmblob-vsp"))
}

fn wait_for(path: &Path, child: &mut Child) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(CliError::Daemon(format!("vmblob-vsp exited: {status}")));
        }
        if Instant::now() > deadline {
            return Err(CliError::Daemon("vmblob-vsp did not start".into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A deterministic pseudo-random payload (xorshift), so the demo needs no
/// input file.
fn payload(len: u64) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn run(cli: &Cli, size: u64) -> Result<(), CliError> {
    let dir = tempfile::Builder::new().prefix("vmblob-demo-").tempdir()?;
    let socket = dir.path().join("vsp.sock");
    let store = dir.path().join("store");
    let bin = vsp_binary();
    println!("1. starting {} with the embedded store in {}", bin.display(), store.display());
    let child = Command::new(&bin)
        .arg("--socket-path")
        .arg(&socket)
        .arg("--store")
        .arg(&store)
        .arg("--log-level")
        .arg("warn")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| CliError::Daemon(format!("cannot start {}: {e}", bin.display())))?;
    let mut daemon = Daemon(child);
    wait_for(&socket, &mut daemon.0)?;
    let t0 = Instant::now();
    let client = super::connect(cli, &socket)?;
    let cfg = client.device_config();
    println!(
        "2. connected over vhost-user {} (device: {} queue(s), max data {} MiB per request, block size {} MiB)",
        socket.display(),
        cfg.num_queues,
        cfg.max_data_len >> 20,
        client.block_size() >> 20
    );
    let container = client.container("demo");
    container.create()?;
    println!("3. created container 'demo'");
    let data = payload(size);
    let expected = vmblob_vsc::crc64(&data);
    let t = Instant::now();
    let pb = super::commands::bar(cli, size, "put");
    let blob = container.blob("hello/blob.bin");
    let w = blob.put_stream(&mut Cursor::new(&data), size, PutOptions::default(), &|n| pb.set_position(n))?;
    pb.finish_and_clear();
    let put_s = t.elapsed().as_secs_f64();
    println!(
        "4. put demo/hello/blob.bin: {} bytes in {:.3}s ({:.0} MiB/s), etag {}, crc64 {:016x}",
        size,
        put_s,
        size as f64 / (1 << 20) as f64 / put_s.max(1e-9),
        w.etag,
        w.content_crc64
    );
    let t = Instant::now();
    let mut back = Vec::with_capacity(size as usize);
    let pb = super::commands::bar(cli, size, "get");
    let props = blob.get_to_writer(&mut back, &|n| pb.set_position(n))?;
    pb.finish_and_clear();
    let get_s = t.elapsed().as_secs_f64();
    let same = back == data && vmblob_vsc::crc64(&back) == expected;
    println!(
        "5. got it back: {} bytes in {:.3}s ({:.0} MiB/s), {} committed blocks, identical: {}",
        back.len(),
        get_s,
        size as f64 / (1 << 20) as f64 / get_s.max(1e-9),
        props.committed_blocks,
        if same { "yes" } else { "NO" }
    );
    let listed = container.list_blobs(ListBlobsOptions::default()).items().count();
    println!("6. listing demo/: {listed} blob(s)");
    blob.delete()?;
    container.delete()?;
    println!("7. deleted the blob and the container; total {:.2}s", t0.elapsed().as_secs_f64());
    drop(client);
    drop(daemon);
    println!("8. vmblob-vsp stopped");
    if !same {
        return Err(CliError::Failed("round trip changed the data"));
    }
    Ok(())
}
