//! Where the lease table lives between runs. A lease that vanished on a
//! restart would be a lock silently released, so a change that cannot be
//! saved fails the lease action that made it. The file storage appends each
//! change to a log (O(1) per change) and now and then rewrites the whole
//! table crash-safely and empties the log; the object storage rewrites the
//! whole table each time (an object cannot be appended to).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::state::Lease;

/// The persisted form: every lease with its blob.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    pub leases: Vec<SavedLease>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedLease {
    pub container: String,
    pub blob: String,
    #[serde(flatten)]
    pub lease: Lease,
}

/// One change of the table: a lease set (acquired, renewed, ...) and
/// leases gone (released, evicted, or their blob deleted).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Change {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<SavedLease>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<(String, String)>,
}

/// What a recorded change asks of the table next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Done,
    /// The log has grown past the table: save it whole, which empties it.
    Compact,
}

/// Somewhere to keep the table.
pub trait LeaseStorage: Send + Sync {
    /// The table last saved (with the changes recorded since), None if nothing was.
    fn load(&self) -> io::Result<Option<Vec<u8>>>;
    /// Replace it whole; durable when this returns.
    fn save(&self, bytes: &[u8]) -> io::Result<()>;
    /// Record one change (durable when this returns), the table holding
    /// `live` leases after it; None if this storage only saves whole tables.
    fn record(&self, _change: &Change, _live: usize) -> Option<io::Result<Recorded>> {
        None
    }
    /// Where, for messages.
    fn describe(&self) -> String;
}

/// `<dir>/leases.json`, replaced by write, fsync, rename, fsync of the dir,
/// and `<dir>/leases.log`, one JSON [`Change`] per line, each fsync'd.
pub struct FileStorage {
    dir: PathBuf,
    mode: u32,
    /// The log, and how many changes it holds.
    log: Mutex<(Option<File>, usize)>,
}

const FILE: &str = "leases.json";
const TEMP: &str = "leases.json.tmp";
const LOG: &str = "leases.log";
/// Changes the log may hold before a whole save, at the least.
const COMPACT_AFTER: usize = 1024;

impl FileStorage {
    /// Creates `dir` (permission bits `mode`) if need be.
    pub fn open(dir: &Path, mode: u32) -> io::Result<Self> {
        fs::DirBuilder::new().recursive(true).mode(mode).create(dir)?;
        // A save that did not reach its rename is discarded.
        let _ = fs::remove_file(dir.join(TEMP));
        Ok(Self { dir: dir.to_owned(), mode: mode & 0o666, log: Mutex::new((None, 0)) })
    }

    /// The log's changes, cutting off a torn last line (a crash mid-append:
    /// that change was never reported as made).
    fn read_log(&self) -> io::Result<Vec<Change>> {
        let path = self.dir.join(LOG);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut changes = Vec::new();
        let mut good = 0;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let complete = line.ends_with(b"\n");
            match serde_json::from_slice::<Change>(line) {
                Ok(c) if complete => changes.push(c),
                // Only the last line can be torn; anything else is a corrupt log.
                _ if good + line.len() == bytes.len() => break,
                r => {
                    let why = r.err().map_or_else(|| "no newline".to_owned(), |e| e.to_string());
                    return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", path.display())));
                }
            }
            good += line.len();
        }
        if good < bytes.len() {
            log::warn!("lease log {}: torn last change cut off", path.display());
            OpenOptions::new().write(true).open(&path)?.set_len(good as u64)?;
        }
        Ok(changes)
    }

    fn log_file(&self) -> io::Result<File> {
        OpenOptions::new().append(true).create(true).mode(self.mode).open(self.dir.join(LOG))
    }
}

impl LeaseStorage for FileStorage {
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        let base = match fs::read(self.dir.join(FILE)) {
            Ok(b) => Some(decode(&b)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let changes = self.read_log()?;
        *self.log.lock().unwrap_or_else(PoisonError::into_inner) = (None, changes.len());
        if base.is_none() && changes.is_empty() {
            return Ok(None);
        }
        // Replayed in order over the table last saved whole. Replaying
        // changes the table already holds (a crash between a whole save and
        // emptying the log) ends where that table is.
        let mut table: HashMap<(String, String), SavedLease> = HashMap::new();
        for l in base.unwrap_or_default().leases {
            table.insert((l.container.clone(), l.blob.clone()), l);
        }
        for c in changes {
            for k in c.gone {
                table.remove(&k);
            }
            if let Some(l) = c.set {
                table.insert((l.container.clone(), l.blob.clone()), l);
            }
        }
        encode(&Saved { leases: table.into_values().collect() }).map(Some)
    }

    fn save(&self, bytes: &[u8]) -> io::Result<()> {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let tmp = self.dir.join(TEMP);
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(self.mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(FILE))?;
        File::open(&self.dir)?.sync_all()?;
        // The whole table holds every change: the log can go.
        let file = self.log_file()?;
        file.set_len(0)?;
        file.sync_all()?;
        *log = (Some(file), 0);
        Ok(())
    }

    fn record(&self, change: &Change, live: usize) -> Option<io::Result<Recorded>> {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let r = (|| {
            let mut line = serde_json::to_vec(change).map_err(io::Error::other)?;
            line.push(b'\n');
            if log.0.is_none() {
                log.0 = Some(self.log_file()?);
            }
            let file = log.0.as_mut().ok_or_else(|| io::Error::other("no lease log"))?;
            file.write_all(&line)?;
            file.sync_data()?;
            log.1 += 1;
            Ok(if log.1 > COMPACT_AFTER.max(2 * live) { Recorded::Compact } else { Recorded::Done })
        })();
        if r.is_err() {
            // A half-written line would be followed by the next: reopen, and
            // let the next whole save (the table asks for one) settle it.
            log.0 = None;
        }
        Some(r)
    }

    fn describe(&self) -> String {
        self.dir.join(FILE).display().to_string()
    }
}

pub fn encode(saved: &Saved) -> io::Result<Vec<u8>> {
    serde_json::to_vec(saved).map_err(io::Error::other)
}

pub fn decode(bytes: &[u8]) -> io::Result<Saved> {
    serde_json::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
