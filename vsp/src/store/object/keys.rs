//! Where things live in the bucket (or Azure container) under the root prefix:
//!
//! | key | what |
//! | --- | --- |
//! | `<root>/<container>/<blob name>` | a blob, as a native object (data + properties as attributes) |
//! | `<root>/.vmblob/containers/<container>` | a guest container's marker (its properties) |
//! | `<root>/.vmblob/staged/<container>/<sha256(blob)>/<hex(block id)>` | an uncommitted block |
//! | `<root>/.vmblob/blocks/<container>/<sha256(blob)>/<hex(txn)>` | the committed block list a PutBlockList wrote |
//! | `<root>/.vmblob/tmp/<random>` | a large whole-blob PUT in transit |
//!
//! Guest container names never start with `.`, so `.vmblob` cannot collide
//! with a container. Blob names are valid object keys as they are (the
//! protocol already forbids empty, `.` and `..` segments and control
//! characters), so blobs keep their names and listings keep byte order.

use object_store::path::Path;
use sha2::{Digest as _, Sha256};
use vmblob_protocol::names::ContainerName;
use vmblob_protocol::ops::BlobRef;

use crate::store::semantics::hex;
use crate::store::{StoreError, TxnId};

/// Longest object key Azure Blob Storage and S3 accept.
pub const MAX_KEY_LEN: usize = 1024;

const HIDDEN: &str = ".vmblob";

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// Empty, or the root prefix without a trailing `/`.
    root: String,
}

impl Keys {
    /// `root` is a `/`-separated prefix (may be empty).
    pub fn new(root: &str) -> Result<Self, StoreError> {
        let root = root.trim_matches('/').to_owned();
        if !root.is_empty() {
            Path::parse(&root).map_err(|e| StoreError::InvalidName(format!("root prefix {root:?}: {e}")))?;
        }
        Ok(Self { root })
    }

    fn path(&self, rest: &str) -> Result<Path, StoreError> {
        let full = if self.root.is_empty() { rest.to_owned() } else { format!("{}/{rest}", self.root) };
        if full.len() > MAX_KEY_LEN {
            return Err(StoreError::InvalidName(format!(
                "object key of {} bytes exceeds the service's {MAX_KEY_LEN}-byte limit",
                full.len()
            )));
        }
        Path::parse(&full).map_err(|e| StoreError::InvalidName(e.to_string()))
    }

    /// The folder holding a container's blobs.
    pub fn container_dir(&self, c: &ContainerName) -> Result<Path, StoreError> {
        self.path(c.as_str())
    }

    pub fn blob(&self, r: &BlobRef) -> Result<Path, StoreError> {
        self.path(&format!("{}/{}", r.container.as_str(), r.blob.as_str()))
    }

    /// The blob name of a key listed under `container_dir`.
    pub fn blob_name<'a>(&self, dir: &Path, key: &'a Path) -> Option<&'a str> {
        key.as_ref().strip_prefix(dir.as_ref())?.strip_prefix('/')
    }

    pub fn markers_dir(&self) -> Result<Path, StoreError> {
        self.path(&format!("{HIDDEN}/containers"))
    }

    pub fn marker(&self, c: &ContainerName) -> Result<Path, StoreError> {
        self.path(&format!("{HIDDEN}/containers/{}", c.as_str()))
    }

    /// Every hidden folder that belongs to one container (deleted with it).
    pub fn hidden_dirs(&self, c: &ContainerName) -> Result<[Path; 2], StoreError> {
        Ok([
            self.path(&format!("{HIDDEN}/staged/{}", c.as_str()))?,
            self.path(&format!("{HIDDEN}/blocks/{}", c.as_str()))?,
        ])
    }

    /// Where the staged blocks of every blob of a container sit.
    pub fn staged_container_dir(&self, c: &ContainerName) -> Result<Path, StoreError> {
        self.path(&format!("{HIDDEN}/staged/{}", c.as_str()))
    }

    pub fn staged_dir(&self, r: &BlobRef) -> Result<Path, StoreError> {
        self.path(&format!("{HIDDEN}/staged/{}/{}", r.container.as_str(), name_hash(r)))
    }

    pub fn staged(&self, r: &BlobRef, id: &[u8]) -> Result<Path, StoreError> {
        self.path(&format!("{HIDDEN}/staged/{}/{}/{}", r.container.as_str(), name_hash(r), hex(id)))
    }

    pub fn block_lists_dir(&self, r: &BlobRef) -> Result<Path, StoreError> {
        self.path(&format!("{HIDDEN}/blocks/{}/{}", r.container.as_str(), name_hash(r)))
    }

    pub fn block_list(&self, r: &BlobRef, txn: &TxnId) -> Result<Path, StoreError> {
        self.path(&format!("{HIDDEN}/blocks/{}/{}/{}", r.container.as_str(), name_hash(r), hex(txn)))
    }

    /// The root itself: where guest containers' blob folders and `.vmblob` sit.
    pub fn root_dir(&self) -> Option<Path> {
        (!self.root.is_empty()).then(|| Path::from(self.root.as_str()))
    }

    pub fn staged_root(&self) -> Result<Path, StoreError> {
        self.path(&format!("{HIDDEN}/staged"))
    }

    pub fn block_lists_root(&self) -> Result<Path, StoreError> {
        self.path(&format!("{HIDDEN}/blocks"))
    }

    /// Where the VSP keeps its blob leases.
    pub fn lease_table(&self) -> Result<Path, StoreError> {
        self.path(&format!("{HIDDEN}/leases.json"))
    }

    pub fn temp_dir(&self) -> Result<Path, StoreError> {
        self.path(&format!("{HIDDEN}/tmp"))
    }

    pub fn temp(&self) -> Result<Path, StoreError> {
        let mut r = [0u8; 16];
        getrandom::fill(&mut r).map_err(|e| StoreError::Remote(format!("no randomness for a temp name: {e}")))?;
        self.path(&format!("{HIDDEN}/tmp/{}", hex(&r)))
    }
}

/// Blob names can be 1 KiB long: hidden keys name a blob by its hash.
fn name_hash(r: &BlobRef) -> String {
    hex(&Sha256::digest(r.blob.as_str().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{bref, cname};

    #[test]
    fn keys_are_native_and_hidden_ones_apart() {
        let k = Keys::new("/pre/fix/").unwrap();
        let r = bref("box", "ünï/a..b/x y%2F");
        assert_eq!(k.blob(&r).unwrap().as_ref(), "pre/fix/box/ünï/a..b/x y%2F");
        let dir = k.container_dir(&cname("box")).unwrap();
        assert_eq!(k.blob_name(&dir, &k.blob(&r).unwrap()), Some("ünï/a..b/x y%2F"));
        assert_eq!(k.marker(&cname("box")).unwrap().as_ref(), "pre/fix/.vmblob/containers/box");
        let staged = k.staged(&r, b"\x01\xff").unwrap();
        assert!(staged.as_ref().starts_with(k.staged_dir(&r).unwrap().as_ref()));
        assert!(staged.as_ref().ends_with("/01ff"));
        let long = "n".repeat(1024);
        assert!(matches!(k.blob(&bref("box", &long)), Err(StoreError::InvalidName(_))));
        assert!(Keys::new("").unwrap().blob(&bref("box", &"n".repeat(1020))).is_ok());
    }
}
