//! Who may touch the store root: guest data stays private to the daemon's user (directories
//! 0700, files 0600 whatever the umask; 0770/0660 with a deliberate shared group), a root
//! that other users can write is refused (as PostgreSQL refuses its data directory), and one
//! daemon at a time holds the root's lock file.

use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The lock file in the store root; it holds the owner's pid.
pub const LOCK_FILE: &str = "vmblob.lock";

/// Modes for what the store creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modes {
    pub dir: u32,
    pub file: u32,
    /// Members of the root's group may read and write (a deliberate shared group).
    pub group: bool,
}

impl Modes {
    pub fn new(group: bool) -> Self {
        if group { Modes { dir: 0o770, file: 0o660, group } } else { Modes { dir: 0o700, file: 0o600, group } }
    }

    /// Creates one directory with the store's mode.
    pub fn create_dir(&self, path: &Path) -> io::Result<()> {
        DirBuilder::new().mode(self.dir).create(path)?;
        self.fix(path, self.dir)
    }

    /// Creates a directory and its missing parents with the store's mode.
    pub fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        if path.is_dir() {
            return Ok(());
        }
        DirBuilder::new().recursive(true).mode(self.dir).create(path)?;
        self.fix(path, self.dir)
    }

    /// Opens a new file for reading and writing with the store's mode; fails if it exists.
    pub fn create_file(&self, path: &Path) -> io::Result<File> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).mode(self.file).open(path)?;
        if self.group {
            file.set_permissions(fs::Permissions::from_mode(self.file))?;
        }
        Ok(file)
    }

    /// A umask may have taken group bits the shared-group mode asks for.
    fn fix(&self, path: &Path, mode: u32) -> io::Result<()> {
        if self.group { fs::set_permissions(path, fs::Permissions::from_mode(mode)) } else { Ok(()) }
    }
}

/// Creates `root` if missing, refuses one that other users can write (or its group, unless
/// `modes.group`), takes the root's lock and returns it: held until the store is dropped.
pub fn claim_root(root: &Path, modes: Modes) -> io::Result<File> {
    modes.create_dir_all(root)?;
    let lock = open_lock(root, modes)?;
    check_root(root, modes, lock.metadata()?.uid())?;
    take_lock(root, lock)
}

fn open_lock(root: &Path, modes: Modes) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(modes.file).open(root.join(LOCK_FILE))
}

/// `our_uid`: the owner of a file this process just created (no FFI needed to learn it).
fn check_root(root: &Path, modes: Modes, our_uid: u32) -> io::Result<()> {
    let meta = fs::metadata(root)?;
    let mode = meta.mode() & 0o7777;
    let refuse = |why: String| Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    if meta.uid() != our_uid {
        return refuse(format!(
            "store root {} belongs to uid {}, not to this daemon's user (uid {our_uid})",
            root.display(),
            meta.uid()
        ));
    }
    if mode & 0o002 != 0 {
        return refuse(format!("store root {} is writable by all users (mode {mode:o}): chmod o-w it", root.display()));
    }
    if mode & 0o020 != 0 && !modes.group {
        return refuse(format!(
            "store root {} is writable by its group (mode {mode:o}): chmod g-w it, or pass --store-group-access \
             for a deliberately shared group",
            root.display()
        ));
    }
    Ok(())
}

fn take_lock(root: &Path, mut lock: File) -> io::Result<File> {
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = lock.read_to_string(&mut pid);
            let holder = match pid.trim() {
                "" => "another process".to_owned(),
                p => format!("another vmblob-vsp (pid {p})"),
            };
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("store root {} is in use by {holder}: one daemon per store", root.display()),
            ));
        }
        Err(TryLockError::Error(e)) => return Err(e),
    }
    lock.set_len(0)?;
    lock.rewind()?;
    writeln!(lock, "{}", std::process::id())?;
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let _held = claim_root(&root, Modes::new(false)).unwrap();
        let e = claim_root(&root, Modes::new(false)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(e.to_string().contains(&format!("pid {}", std::process::id())), "{e}");
        drop(_held);
        claim_root(&root, Modes::new(false)).expect("free again once the holder is gone");
    }

    #[test]
    fn new_roots_dirs_and_files_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let modes = Modes::new(false);
        let _held = claim_root(&root, modes).unwrap();
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
        modes.create_dir(&root.join("d")).unwrap();
        assert_eq!(fs::metadata(root.join("d")).unwrap().mode() & 0o777, 0o700);
        modes.create_file(&root.join("f")).unwrap();
        assert_eq!(fs::metadata(root.join("f")).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(root.join(LOCK_FILE)).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn roots_others_can_write_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        let e = claim_root(&root, Modes::new(false)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("writable by all users"), "{e}");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o770)).unwrap();
        let e = claim_root(&root, Modes::new(false)).unwrap_err();
        assert!(e.to_string().contains("--store-group-access"), "{e}");
        let _held = claim_root(&root, Modes::new(true)).expect("a deliberate shared group");
        let shared = Modes::new(true);
        shared.create_file(&root.join("f")).unwrap();
        assert_eq!(fs::metadata(root.join("f")).unwrap().mode() & 0o777, 0o660);
    }
}
