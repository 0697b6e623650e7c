//! Where the lease table lives between runs: the whole table, rewritten
//! crash-safely on every change. A lease that vanished on a restart would
//! be a lock silently released, so a table that cannot be saved fails the
//! lease action that changed it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

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

/// Somewhere to keep the table's bytes.
pub trait LeaseStorage: Send + Sync {
    /// The bytes last saved, None if nothing was.
    fn load(&self) -> io::Result<Option<Vec<u8>>>;
    /// Replace them; durable when this returns.
    fn save(&self, bytes: &[u8]) -> io::Result<()>;
    /// Where, for messages.
    fn describe(&self) -> String;
}

/// `<dir>/leases.json`, replaced by write, fsync, rename, fsync of the dir.
pub struct FileStorage {
    dir: PathBuf,
    mode: u32,
}

const FILE: &str = "leases.json";
const TEMP: &str = "leases.json.tmp";

impl FileStorage {
    /// Creates `dir` (permission bits `mode`) if need be.
    pub fn open(dir: &Path, mode: u32) -> io::Result<Self> {
        fs::DirBuilder::new().recursive(true).mode(mode).create(dir)?;
        // A save that did not reach its rename is discarded.
        let _ = fs::remove_file(dir.join(TEMP));
        Ok(Self { dir: dir.to_owned(), mode: mode & 0o666 })
    }
}

impl LeaseStorage for FileStorage {
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.dir.join(FILE)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn save(&self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(TEMP);
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(self.mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(FILE))?;
        File::open(&self.dir)?.sync_all()
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
