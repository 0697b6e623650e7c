//! One QEMU guest (TCG) with the vmblob queues carried by QEMU's
//! `vhost-user-blk-pci` frontend (notes/qemu-guest.md: the only typed
//! frontend in QEMU 10.0 that forwards config, queue count and size as they
//! are, and reconnects). qboot, not SeaBIOS: SeaBIOS's own virtio-blk
//! driver would send the carrier a disk read. Serial output goes to a file
//! the test reads; drop kills QEMU.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::image::MARK_EXIT;

/// How the guest is shaped.
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub memory_mib: u32,
    pub cpus: u32,
    pub queues: u16,
    pub queue_size: u16,
    /// QEMU reconnects to a restarted VSP this often (`reconnect-ms`).
    pub reconnect_ms: Option<u32>,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self { memory_mib: 768, cpus: 2, queues: 2, queue_size: 256, reconnect_ms: None }
    }
}

/// What [`GuestVm::boot`] needs from the host.
pub struct Boot<'a> {
    pub qemu: &'a Path,
    pub bios: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub socket: &'a Path,
    /// Serial and QEMU logs go here.
    pub dir: &'a Path,
}

pub struct GuestVm {
    child: Child,
    serial: PathBuf,
    qemu_log: PathBuf,
    pub started: Instant,
}

impl GuestVm {
    pub fn boot(b: &Boot<'_>, o: &VmOptions) -> GuestVm {
        let serial = b.dir.join("serial.log");
        let qemu_log = b.dir.join("qemu.log");
        let mem = format!("memory-backend-memfd,id=mem,size={}M,share=on", o.memory_mib);
        let mut chardev = format!("socket,id=vu0,path={}", b.socket.display());
        if let Some(ms) = o.reconnect_ms {
            chardev.push_str(&format!(",reconnect-ms={ms}"));
        }
        let device = format!(
            "vhost-user-blk-pci,chardev=vu0,num-queues={},queue-size={},disable-legacy=on",
            o.queues, o.queue_size
        );
        let mut cmd = match crate::daemon::setpriv() {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(b.qemu);
                c
            }
            None => Command::new(b.qemu),
        };
        cmd.args(["-accel", "tcg", "-machine", "q35,memory-backend=mem", "-cpu", "max"])
            .args(["-smp", &o.cpus.to_string(), "-m", &format!("{}M", o.memory_mib)])
            .args(["-object", &mem])
            .args(["-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-bios")
            .arg(b.bios)
            .arg("-kernel")
            .arg(b.kernel)
            .arg("-initrd")
            .arg(b.initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1 mitigations=off"])
            .args(["-chardev", &chardev, "-device", &device]);
        let log = File::create(&qemu_log).expect("create qemu log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn qemu-system-x86_64");
        GuestVm { child, serial, qemu_log, started: Instant::now() }
    }

    /// Everything on the serial console so far, without carriage returns.
    pub fn serial(&self) -> String {
        std::fs::read(&self.serial).map(|b| String::from_utf8_lossy(&b).replace('\r', "")).unwrap_or_default()
    }

    pub fn qemu_log(&self) -> String {
        std::fs::read_to_string(&self.qemu_log).unwrap_or_default()
    }

    /// Wait until a serial line starts with `marker`; returns that line.
    pub fn wait_line(&mut self, marker: &str, limit: Duration) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.serial().lines().find(|l| l.starts_with(marker)) {
                return Ok(l.to_owned());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("QEMU exited ({st}) before {marker:?}"));
            }
            if Instant::now() >= deadline {
                return Err(format!("no {marker:?} within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the guest's script to end and QEMU to exit; returns the
    /// script's exit code.
    pub fn wait_done(&mut self, limit: Duration) -> Result<i32, String> {
        let line = self.wait_line(MARK_EXIT, limit)?;
        let code = line.split_whitespace().nth(2).and_then(|c| c.parse().ok()).unwrap_or(-1);
        self.wait_exit(Duration::from_secs(30))?;
        Ok(code)
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                return Err(format!("QEMU still running after {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Serial console and QEMU's own log, for a failure message.
    pub fn report(&self) -> String {
        format!("--- guest serial ---\n{}\n--- qemu ---\n{}", self.serial(), self.qemu_log())
    }
}

impl Drop for GuestVm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
