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
    /// Put the device behind a PCIe root port with a QMP socket, so [`GuestVm::unplug`] can
    /// remove it as a hot-unplug would.
    pub hotplug: bool,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self { memory_mib: 768, cpus: 2, queues: 2, queue_size: 256, reconnect_ms: None, hotplug: false }
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
    qmp: Option<PathBuf>,
    pub started: Instant,
}

/// The carrier's QEMU id (for `device_del`).
const DEVICE_ID: &str = "vmblob0";

impl GuestVm {
    pub fn boot(b: &Boot<'_>, o: &VmOptions) -> GuestVm {
        let serial = b.dir.join("serial.log");
        let qemu_log = b.dir.join("qemu.log");
        let mem = format!("memory-backend-memfd,id=mem,size={}M,share=on", o.memory_mib);
        let mut chardev = format!("socket,id=vu0,path={}", b.socket.display());
        if let Some(ms) = o.reconnect_ms {
            chardev.push_str(&format!(",reconnect-ms={ms}"));
        }
        let mut device = format!(
            "vhost-user-blk-pci,id={DEVICE_ID},chardev=vu0,num-queues={},queue-size={},disable-legacy=on",
            o.queues, o.queue_size
        );
        let qmp = o.hotplug.then(|| b.dir.join("qmp.sock"));
        if o.hotplug {
            device.push_str(",bus=rp0");
        }
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
            .args(["-chardev", &chardev]);
        if let Some(qmp) = &qmp {
            cmd.args(["-device", "pcie-root-port,id=rp0,slot=1,chassis=1"])
                .arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        }
        cmd.args(["-device", &device]);
        let log = File::create(&qemu_log).expect("create qemu log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn qemu-system-x86_64");
        GuestVm { child, serial, qemu_log, qmp, started: Instant::now() }
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

    /// Hot-unplug the device (QMP `device_del`): QEMU presses the slot's attention button, the
    /// guest's pciehp powers the slot off after its 5 s grace and removes the function under
    /// whoever has it open. Returns QEMU's answer.
    pub fn unplug(&self) -> Result<String, String> {
        use std::io::{BufRead, BufReader, Write};
        let path = self.qmp.as_ref().ok_or("the VM was booted without hotplug")?;
        let stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| format!("QMP connect: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let mut writer = stream;
        let mut line = String::new();
        let mut read = |line: &mut String| {
            line.clear();
            reader.read_line(line).map_err(|e| format!("QMP read: {e}"))
        };
        read(&mut line)?; // greeting
        writer.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").map_err(|e| e.to_string())?;
        read(&mut line)?;
        let del = format!("{{\"execute\":\"device_del\",\"arguments\":{{\"id\":\"{DEVICE_ID}\"}}}}\n");
        writer.write_all(del.as_bytes()).map_err(|e| e.to_string())?;
        // Events may come first; the answer is the line with "return" or "error".
        for _ in 0..16 {
            read(&mut line)?;
            if line.contains("\"return\"") || line.contains("\"error\"") {
                return Ok(line.trim().to_owned());
            }
        }
        Err("no answer to device_del".into())
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
