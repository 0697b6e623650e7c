//! Command-line arguments of `vmblob-vsp`, validated into a [`VspConfig`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::engine::Limits;
use crate::store::object::backend::{AzureSpec, S3Spec, split_location};

/// vmblob host service: serves blob requests from a guest over vhost-user.
#[derive(Parser, Debug, Clone)]
#[command(name = "vmblob-vsp", version, about)]
pub struct Args {
    /// vhost-user socket the VMM connects to.
    #[arg(short, long)]
    pub socket_path: PathBuf,
    /// Where blobs live: a directory (or file://DIR) for the embedded store,
    /// az://CONTAINER[/PREFIX] for Azure Blob Storage, s3://BUCKET[/PREFIX] for S3.
    #[arg(long)]
    pub store: String,
    /// Azure blob endpoint (default https://ACCOUNT.blob.core.windows.net), e.g.
    /// http://127.0.0.1:10000/devstoreaccount1 for Azurite.
    #[arg(long)]
    pub azure_endpoint: Option<String>,
    /// Talk to Azurite: its well-known account and key unless
    /// AZURE_STORAGE_ACCOUNT_NAME/KEY say otherwise, plain HTTP allowed.
    #[arg(long)]
    pub azure_emulator: bool,
    /// S3 endpoint for S3-compatible services (default: AWS, or AWS_ENDPOINT).
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// Number of request queues (one worker thread each).
    #[arg(long, default_value_t = 2)]
    pub queues: usize,
    /// Largest queue size the VMM may set (power of two).
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// Most requests in flight per queue.
    #[arg(long, default_value_t = 256)]
    pub max_inflight: usize,
    /// Most descriptors in one request chain.
    #[arg(long, default_value_t = 1024)]
    pub max_descriptors: usize,
    /// Longest op request buffer, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_request_len: u32,
    /// How long a rescind waits for in-flight requests, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub drain_timeout_ms: u64,
    /// Write outcomes the transaction record keeps to answer replays (0: none;
    /// replays then rely on the store's current-txn check).
    #[arg(long, alias = "dedup-capacity", default_value_t = 100_000)]
    pub txn_record_capacity: usize,
    /// Write outcomes older than this many seconds are forgotten.
    #[arg(long, default_value_t = 24 * 3600)]
    pub txn_record_max_age_secs: u64,
    /// Directory the transaction record persists in. Default: `<store>/txn` for
    /// the embedded store; none (memory only, lost on restart) for az:// and s3://.
    #[arg(long)]
    pub txn_record_dir: Option<PathBuf>,
    /// Directory the blob lease table persists in. Default: `<store>/leases`
    /// for the embedded store; the store itself (`.vmblob/leases.json`) for
    /// az:// and s3://.
    #[arg(long)]
    pub lease_dir: Option<PathBuf>,
    /// Largest blob, in bytes.
    #[arg(long, default_value_t = 1 << 40)]
    pub max_blob_size: u64,
    /// Embedded store: uncommitted blocks of a blob expire this many seconds
    /// after its last PutBlock (Azure: 7 days).
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub staged_block_ttl_secs: u64,
    /// Executor threads serving requests, shared by all queues: how many
    /// store calls overlap (a network store blocks one per request).
    #[arg(long, default_value_t = 16)]
    pub workers: usize,
    /// Poll the avail ring this many microseconds after a request at queue
    /// depth 1 before waiting for kicks again (0: kicks only). Off by
    /// default: it pays only when the guest polls too (measured on a shared
    /// 2-core host: QD1 p50 7 us with both polling, but worse than no
    /// polling when only the device spins).
    #[arg(long, default_value_t = 0)]
    pub poll_us: u64,
    /// Let this group (name or gid) connect to the vhost-user socket (mode 0660); by
    /// default only this daemon's user may (0600). The VMM often runs as another user.
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Let the store root's group read and write the embedded store (directories 0770,
    /// files 0660); without it a group-writable store root is refused.
    #[arg(long)]
    pub store_group_access: bool,
    /// Serve this many VMM connections, then exit (default: forever).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    pub log_level: log::LevelFilter,
}

/// Where the blobs are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Dir(PathBuf),
    /// Guest containers are prefixes in one Azure container.
    Azure(AzureSpec),
    /// Guest containers are prefixes in one S3 bucket.
    S3(S3Spec),
}

impl std::str::FromStr for StoreSpec {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        if let Some(dir) = s.strip_prefix("file://") {
            return Ok(StoreSpec::Dir(dir.into()));
        }
        if let Some(rest) = s.strip_prefix("az://") {
            let (container, prefix) = split_location(rest);
            if container.is_empty() {
                return Err(ConfigError::MissingBucket(s.to_owned()));
            }
            let spec =
                AzureSpec { container, prefix, endpoint: None, account: None, access_key: None, emulator: false };
            return Ok(StoreSpec::Azure(spec));
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = split_location(rest);
            if bucket.is_empty() {
                return Err(ConfigError::MissingBucket(s.to_owned()));
            }
            return Ok(StoreSpec::S3(S3Spec { bucket, prefix, endpoint: None }));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(ConfigError::UnknownStore(scheme.to_owned()));
        }
        if s.is_empty() {
            return Err(ConfigError::UnknownStore(String::new()));
        }
        Ok(StoreSpec::Dir(s.into()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--queues must be 1..=64, got {0}")]
    Queues(usize),
    #[error("--queue-size must be a power of two in 2..=32768, got {0}")]
    QueueSize(u16),
    #[error("--{0} must not be zero")]
    Zero(&'static str),
    #[error("unsupported store scheme {0:?} (use a directory, file://DIR, az://CONTAINER or s3://BUCKET)")]
    UnknownStore(String),
    #[error("{0:?} names no Azure container or S3 bucket")]
    MissingBucket(String),
    #[error("--{0} applies to {1} stores only")]
    WrongStoreFlag(&'static str, &'static str),
    #[error("--socket-group: no group {0:?}")]
    UnknownGroup(String),
}

/// A validated daemon configuration.
#[derive(Debug, Clone)]
pub struct VspConfig {
    pub socket_path: PathBuf,
    pub store: StoreSpec,
    pub queues: usize,
    pub queue_size: u16,
    pub workers: usize,
    pub poll: Duration,
    pub limits: Limits,
    pub max_connections: Option<usize>,
    /// Group allowed on the socket (`None`: owner only).
    pub socket_group: Option<u32>,
    pub store_group_access: bool,
    /// Where the transaction record persists (`None`: in memory).
    pub txn_record_dir: Option<PathBuf>,
    /// Where the lease table persists (`None`: in the object store).
    pub lease_dir: Option<PathBuf>,
}

impl TryFrom<Args> for VspConfig {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        if !(1..=64).contains(&a.queues) {
            return Err(ConfigError::Queues(a.queues));
        }
        if a.queue_size < 2 || !a.queue_size.is_power_of_two() {
            return Err(ConfigError::QueueSize(a.queue_size));
        }
        for (name, v) in [
            ("max-inflight", a.max_inflight as u64),
            ("max-descriptors", a.max_descriptors as u64),
            ("max-request-len", u64::from(a.max_request_len)),
            ("max-blob-size", a.max_blob_size),
            ("staged-block-ttl-secs", a.staged_block_ttl_secs),
            ("workers", a.workers as u64),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        let mut store: StoreSpec = a.store.parse()?;
        match &mut store {
            StoreSpec::Azure(az) => {
                az.endpoint = a.azure_endpoint;
                az.emulator = a.azure_emulator;
            }
            _ if a.azure_endpoint.is_some() => return Err(ConfigError::WrongStoreFlag("azure-endpoint", "az://")),
            _ if a.azure_emulator => return Err(ConfigError::WrongStoreFlag("azure-emulator", "az://")),
            _ => {}
        }
        match &mut store {
            StoreSpec::S3(s3) => s3.endpoint = a.s3_endpoint,
            _ if a.s3_endpoint.is_some() => return Err(ConfigError::WrongStoreFlag("s3-endpoint", "s3://")),
            _ => {}
        }
        Ok(Self {
            socket_path: a.socket_path,
            queues: a.queues,
            queue_size: a.queue_size,
            workers: a.workers,
            poll: Duration::from_micros(a.poll_us),
            limits: Limits {
                max_request_len: a.max_request_len,
                max_descriptors: a.max_descriptors,
                max_inflight: a.max_inflight,
                drain_timeout: Duration::from_millis(a.drain_timeout_ms),
                txn_record: crate::engine::TxnRecordLimits {
                    capacity: a.txn_record_capacity,
                    max_age: Duration::from_secs(a.txn_record_max_age_secs),
                },
                max_blob_size: a.max_blob_size,
                staged_block_ttl: Duration::from_secs(a.staged_block_ttl_secs),
                ..Limits::default()
            },
            max_connections: a.max_connections,
            socket_group: a.socket_group.as_deref().map(resolve_group).transpose()?,
            store_group_access: a.store_group_access,
            txn_record_dir: a.txn_record_dir.or_else(|| match &store {
                StoreSpec::Dir(root) => Some(root.join("txn")),
                _ => None,
            }),
            lease_dir: a.lease_dir.or_else(|| match &store {
                StoreSpec::Dir(root) => Some(root.join("leases")),
                _ => None,
            }),
            store,
        })
    }
}

/// A group name (looked up in `/etc/group`) or a numeric gid.
fn resolve_group(group: &str) -> Result<u32, ConfigError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            f.next()?;
            Some((name, f.next()?.parse::<u32>().ok()?))
        })
        .find_map(|(name, gid)| (name == group).then_some(gid))
        .ok_or_else(|| ConfigError::UnknownGroup(group.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<VspConfig, ConfigError> {
        let mut argv = vec!["vmblob-vsp", "--socket-path", "/tmp/s.sock", "--store", "/tmp/store"];
        argv.extend_from_slice(extra);
        VspConfig::try_from(Args::try_parse_from(argv).unwrap())
    }

    #[test]
    fn defaults_and_validation() {
        let c = parse(&[]).unwrap();
        assert_eq!((c.queues, c.queue_size), (2, 256));
        assert_eq!((c.workers, c.poll), (16, Duration::ZERO));
        assert_eq!(c.store, StoreSpec::Dir("/tmp/store".into()));
        assert_eq!(c.txn_record_dir, Some("/tmp/store/txn".into()), "the embedded store keeps its record inside");
        assert_eq!(c.limits.txn_record.capacity, 100_000);
        assert_eq!(parse(&["--dedup-capacity", "7"]).unwrap().limits.txn_record.capacity, 7, "the old name");
        assert_eq!(parse(&["--queues", "0"]).unwrap_err(), ConfigError::Queues(0));
        assert_eq!(parse(&["--queue-size", "100"]).unwrap_err(), ConfigError::QueueSize(100));
        assert_eq!(parse(&["--max-inflight", "0"]).unwrap_err(), ConfigError::Zero("max-inflight"));
        assert_eq!(parse(&["--workers", "0"]).unwrap_err(), ConfigError::Zero("workers"));
        assert_eq!(c.limits.staged_block_ttl, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(parse(&["--staged-block-ttl-secs", "60"]).unwrap().limits.staged_block_ttl, Duration::from_secs(60));
        assert_eq!(parse(&["--staged-block-ttl-secs", "0"]).unwrap_err(), ConfigError::Zero("staged-block-ttl-secs"));
        let c = parse(&["--workers", "3", "--poll-us", "0"]).unwrap();
        assert_eq!((c.workers, c.poll), (3, Duration::ZERO));
        assert_eq!("file:///x".parse::<StoreSpec>(), Ok(StoreSpec::Dir("/x".into())));
        assert_eq!("gs://b".parse::<StoreSpec>(), Err(ConfigError::UnknownStore("gs".into())));
    }

    #[test]
    fn object_store_specs_and_their_flags() {
        let mut argv = vec!["vmblob-vsp", "--socket-path", "/s", "--store", "az://box/some/prefix/"];
        argv.extend(["--azure-emulator", "--azure-endpoint", "http://127.0.0.1:1/devstoreaccount1"]);
        let c = VspConfig::try_from(Args::try_parse_from(argv).unwrap()).unwrap();
        let StoreSpec::Azure(az) = c.store else { panic!("{:?}", c.store) };
        assert_eq!((az.container.as_str(), az.prefix.as_str(), az.emulator), ("box", "some/prefix", true));
        assert_eq!(az.endpoint.as_deref(), Some("http://127.0.0.1:1/devstoreaccount1"));
        assert_eq!(c.txn_record_dir, None, "an object store's record is local state only when asked for");
        assert_eq!(
            "s3://bucket".parse::<StoreSpec>(),
            Ok(StoreSpec::S3(S3Spec { bucket: "bucket".into(), prefix: String::new(), endpoint: None }))
        );
        assert!(matches!("az://".parse::<StoreSpec>(), Err(ConfigError::MissingBucket(_))));
        assert_eq!(parse(&["--azure-emulator"]).unwrap_err(), ConfigError::WrongStoreFlag("azure-emulator", "az://"));
        assert_eq!(parse(&["--s3-endpoint", "x"]).unwrap_err(), ConfigError::WrongStoreFlag("s3-endpoint", "s3://"));
    }
}
