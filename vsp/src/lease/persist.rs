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
    /// The file storage's last logged change this table holds: replay skips
    /// those up to it (a log a failed or interrupted truncation left behind).
    #[serde(default)]
    pub through: u64,
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

/// A line of the log: a change and its place in the sequence.
#[derive(Debug, Serialize, Deserialize)]
struct Logged {
    seq: u64,
    #[serde(flatten)]
    change: Change,
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
/// and `<dir>/leases.log`, one JSON change per line with its sequence
/// number, each fsync'd.
pub struct FileStorage {
    dir: PathBuf,
    mode: u32,
    log: Mutex<Log>,
}

struct Log {
    file: File,
    /// Its length: where a failed append is cut back to.
    len: u64,
    /// Changes in it since the last whole save.
    changes: usize,
    /// The next change's sequence number (one is never reused, even for a
    /// change whose append failed).
    next_seq: u64,
}

const FILE: &str = "leases.json";
const TEMP: &str = "leases.json.tmp";
const LOG: &str = "leases.log";
/// Changes the log may hold before a whole save, at the least.
const COMPACT_AFTER: usize = 1024;

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl FileStorage {
    /// Creates `dir` (permission bits `mode`) and the log if need be.
    pub fn open(dir: &Path, mode: u32) -> io::Result<Self> {
        fs::DirBuilder::new().recursive(true).mode(mode).create(dir)?;
        // A save that did not reach its rename is discarded.
        let _ = fs::remove_file(dir.join(TEMP));
        let mode = mode & 0o666;
        let file = OpenOptions::new().append(true).create(true).mode(mode).open(dir.join(LOG))?;
        // The log's name must outlive a power loss as its lines do.
        File::open(dir)?.sync_all()?;
        let len = file.metadata()?.len();
        Ok(Self { dir: dir.to_owned(), mode, log: Mutex::new(Log { file, len, changes: 0, next_seq: 1 }) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The log's changes, cutting off a torn last line (a crash mid-append:
    /// that change was never reported as made). Any other line that does not
    /// read is corruption, refused.
    fn read_log(&self, log: &mut Log) -> io::Result<Vec<Logged>> {
        let path = self.dir.join(LOG);
        let bytes = fs::read(&path)?;
        let mut lines = Vec::new();
        let mut good = 0;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            if !line.ends_with(b"\n") {
                break;
            }
            let l: Logged = serde_json::from_slice(line).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            lines.push(l);
            good += line.len();
        }
        if good < bytes.len() {
            log::warn!("lease log {}: torn last change cut off", path.display());
            log.file.set_len(good as u64)?;
            log.file.sync_all()?;
        }
        log.len = good as u64;
        Ok(lines)
    }
}

impl LeaseStorage for FileStorage {
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        let mut log = self.lock();
        let base = match fs::read(self.dir.join(FILE)) {
            Ok(b) => Some(decode(&b)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let lines = self.read_log(&mut log)?;
        let through = base.as_ref().map_or(0, |b| b.through);
        log.next_seq = lines.iter().map(|l| l.seq).max().unwrap_or(0).max(through) + 1;
        log.changes = lines.len();
        if base.is_none() && lines.is_empty() {
            return Ok(None);
        }
        // Replayed in order over the table last saved whole, skipping what it holds.
        let mut table: HashMap<(String, String), SavedLease> = HashMap::new();
        for l in base.unwrap_or_default().leases {
            table.insert((l.container.clone(), l.blob.clone()), l);
        }
        for Logged { change, .. } in lines.into_iter().filter(|l| l.seq > through) {
            for k in change.gone {
                table.remove(&k);
            }
            if let Some(l) = change.set {
                table.insert((l.container.clone(), l.blob.clone()), l);
            }
        }
        encode(&Saved { leases: table.into_values().collect(), through }).map(Some)
    }

    fn save(&self, bytes: &[u8]) -> io::Result<()> {
        let mut log = self.lock();
        // The table holds every change numbered so far (they are all made
        // under the caller's lock, before it asked for this snapshot).
        let mut saved = decode(bytes)?;
        saved.through = log.next_seq - 1;
        let tmp = self.dir.join(TEMP);
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(self.mode).open(&tmp)?;
        f.write_all(&encode(&saved)?)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(FILE))?;
        File::open(&self.dir)?.sync_all()?;
        // Saved. The log's lines are all at or below `through` now: emptying
        // it only saves space, so a failure here is no failure of the save.
        match log.file.set_len(0).and_then(|()| log.file.sync_all()) {
            Ok(()) => (log.len, log.changes) = (0, 0),
            Err(e) => log::warn!("lease log {}: not emptied after a whole save: {e}", self.dir.display()),
        }
        Ok(())
    }

    fn record(&self, change: &Change, live: usize) -> Option<io::Result<Recorded>> {
        let mut log = self.lock();
        let seq = log.next_seq;
        log.next_seq += 1;
        let at = log.len;
        let r = (|| {
            let mut line = serde_json::to_vec(&LoggedRef { seq, change }).map_err(io::Error::other)?;
            line.push(b'\n');
            log.file.write_all(&line)?;
            log.file.sync_data()?;
            log.len += line.len() as u64;
            log.changes += 1;
            Ok(if log.changes > COMPACT_AFTER.max(2 * live) { Recorded::Compact } else { Recorded::Done })
        })();
        if r.is_err() {
            // Not reported as made, so it must not come back on a restart:
            // cut the log back (the caller also saves the table whole, whose
            // `through` covers this number, in case this fails too).
            let _ = log.file.set_len(at).and_then(|()| log.file.sync_all());
            log.len = at;
        }
        Some(r)
    }

    fn describe(&self) -> String {
        self.dir.join(FILE).display().to_string()
    }
}

/// [`Logged`] over a borrowed change, for writing.
#[derive(Serialize)]
struct LoggedRef<'a> {
    seq: u64,
    #[serde(flatten)]
    change: &'a Change,
}

pub fn encode(saved: &Saved) -> io::Result<Vec<u8>> {
    serde_json::to_vec(saved).map_err(io::Error::other)
}

pub fn decode(bytes: &[u8]) -> io::Result<Saved> {
    serde_json::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
