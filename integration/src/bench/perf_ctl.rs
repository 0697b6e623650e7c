//! `--perf-ctl FIFO`: profile the timed repetitions only. `perf record -D -1
//! --control fifo:FIFO[,ACK]` starts with its events disabled; the bench
//! writes `enable` to the fifo before a workload's repetitions and `disable`
//! after them, so the set-up (pattern fills, stores written through the page
//! cache) and the warm-ups stay out of the samples.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// perf's control fifo, opened once for the whole run.
pub struct PerfControl {
    fifo: File,
    ack: Option<(PathBuf, io::BufReader<File>)>,
}

impl PerfControl {
    /// Open `ctl` for writing (perf must already have it open for reading,
    /// or this blocks until it does) and `ack`, if given, for reading.
    pub fn open(ctl: &Path, ack: Option<&Path>) -> io::Result<PerfControl> {
        let fifo = File::options().write(true).open(ctl)?;
        let ack = match ack {
            Some(p) => Some((p.to_path_buf(), io::BufReader::new(File::open(p)?))),
            None => None,
        };
        Ok(PerfControl { fifo, ack })
    }

    pub fn enable(&mut self) -> io::Result<()> {
        self.command("enable")
    }

    pub fn disable(&mut self) -> io::Result<()> {
        self.command("disable")
    }

    /// Send one command and, with an ack fifo, wait until perf has acted on it
    /// (so the first repetition's samples are not lost to the race).
    fn command(&mut self, cmd: &str) -> io::Result<()> {
        self.fifo.write_all(format!("{cmd}\n").as_bytes())?;
        self.fifo.flush()?;
        if let Some((path, reader)) = &mut self.ack {
            let mut line = String::new();
            if io::BufRead::read_line(reader, &mut line)? == 0 {
                return Err(io::Error::other(format!("perf closed its ack fifo {}", path.display())));
            }
        }
        Ok(())
    }
}
