//! The `vmblob` command line: azcopy/az-storage-like verbs over a vhost-user
//! socket. In this mode the CLI plays both the VMM and the guest.

mod args;
mod commands;
mod demo;
mod error;
mod filter;
mod listing;
mod paths;
mod sync;
mod tree;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use vmblob_protocol::transport::VMBUS_CLASS_GUID;

use vmblob_vsc::transport::pinned::{PinnedDma, PinnedDmaOptions};
use vmblob_vsc::transport::vmbus::uio::{UioChannelSource, find_devices};
use vmblob_vsc::{
    BlobClient, ClientError, ClientOptions, CompletionMode, VirtioOptions, VirtioPciOptions, VirtioPciTransport,
    VirtioTransport, VmbusOptions, VmbusTransport,
};

pub use self::error::{CliError, exit};

/// How the CLI reaches the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportKind {
    /// VMBus when a vmblob device is offered (under /sys/bus/vmbus/devices), else the
    /// virtio-pci device when there is one and no --socket was given, else virtio.
    Auto,
    /// The VMBus channel through uio_hv_generic (a Hyper-V / Azure guest).
    Vmbus,
    /// The virtio-pci device through uio_pci_generic (a QEMU or Cloud Hypervisor guest).
    Pci,
    /// vhost-user to a vmblob-vsp socket (the CLI plays VMM and guest).
    Virtio,
}

/// `kind`, with `Auto` decided by what `sysfs_root` shows: a VMBus device of
/// the vmblob class, else (unless a socket was named) a vmblob virtio-pci
/// device, else the vhost-user socket.
pub fn resolve_transport(kind: TransportKind, sysfs_root: &Path, socket_given: bool) -> TransportKind {
    match kind {
        TransportKind::Auto => {
            if find_devices(sysfs_root, VMBUS_CLASS_GUID).is_ok_and(|d| !d.is_empty()) {
                TransportKind::Vmbus
            } else if !socket_given
                && vmblob_vsc::transport::virtio_pci::find_devices(sysfs_root).is_ok_and(|d| !d.is_empty())
            {
                TransportKind::Pci
            } else {
                TransportKind::Virtio
            }
        }
        k => k,
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "vmblob",
    version,
    about = "Blob storage through the vmblob paravirtual device",
    after_help = "Exit codes: 0 ok, 1 failure, 2 usage or invalid name, 3 blob not found, 4 already exists \
or upload superseded (Azure's 409), 5 device unavailable (nothing was done), 6 outcome unknown \
(a write was sent and the device went away before answering: it may or may not have been applied), \
7 not modified (get --if-none-match named the blob's current ETag; nothing was written), \
8 container not found, 9 condition failed (--if-match named another ETag, or the blob is leased \
and --lease-id is missing or another: Azure's 412). A lease action the lease does not allow \
(acquiring a blob someone else holds, renewing with another id) exits 4."
)]
pub struct Cli {
    /// vmbus, pci, virtio or auto (vmbus when a vmblob VMBus device exists, then pci, then virtio).
    #[arg(long, global = true, value_enum, default_value_t = TransportKind::Auto)]
    pub transport: TransportKind,
    /// virtio-pci: the device's PCI address (e.g. 0000:00:03.0); default the first vmblob device.
    #[arg(long, global = true)]
    pub pci_device: Option<String>,
    /// virtio-pci: poll the used rings (sleeping this many microseconds while idle) instead of
    /// taking INTx interrupts; needed under Cloud Hypervisor, which has no INTx.
    #[arg(long, global = true)]
    pub pci_poll_us: Option<u64>,
    /// vhost-user socket of a running vmblob-vsp (virtio transport).
    #[arg(long, global = true, env = "VMBLOB_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Request queues to use.
    #[arg(long, global = true, default_value_t = 1)]
    pub queues: usize,
    /// Requests in flight per large transfer.
    #[arg(long, global = true, default_value_t = 8)]
    pub parallel: usize,
    /// Per-request timeout the VSP enforces, in milliseconds (0: none).
    #[arg(long, global = true, default_value_t = 60_000)]
    pub timeout_ms: u32,
    /// Guest RAM for rings and buffers (virtio), or pinned DMA memory (pci, vmbus), in MiB.
    /// pci and vmbus take it from hugepages: reserve ram-mib / 2 of the 2 MiB kind
    /// (`sysctl vm.nr_hugepages=N`) or pass --allow-4k-pages.
    #[arg(long, global = true, default_value_t = 256)]
    pub ram_mib: u64,
    /// pci, vmbus: when no hugepages are free, pin normal 4 KiB pages instead of refusing.
    /// They stay locked but the kernel may migrate them (compaction); the frames are
    /// re-checked every second and the device is taken down if one moved.
    #[arg(long, global = true)]
    pub allow_4k_pages: bool,
    /// How long to wait for the socket to accept, in milliseconds.
    #[arg(long, global = true, default_value_t = 3000)]
    pub connect_timeout_ms: u64,
    /// Busy-poll for completions this many microseconds before sleeping.
    #[arg(long, global = true, default_value_t = 0)]
    pub poll_us: u64,
    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Log more on stderr: -v warnings, -vv info, -vvv debug (RUST_LOG overrides).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Properties an upload stores with the blob.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PutArgs {
    /// The blob's Content-Type; default guessed from the file's extension (else the
    /// device's default, application/octet-stream), as azcopy does.
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// User metadata, repeatable: --metadata project=x --metadata owner=y.
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    #[command(flatten)]
    pub headers: HeaderArgs,
}

/// The HTTP headers besides Content-Type that a blob keeps and hands back
/// (azcopy's flags of the same names).
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderArgs {
    /// Content-Encoding, e.g. gzip (stored as given; nothing is compressed).
    #[arg(long, value_name = "ENCODING")]
    pub content_encoding: Option<String>,
    /// Content-Language, e.g. de-CH.
    #[arg(long, value_name = "LANGUAGE")]
    pub content_language: Option<String>,
    /// Content-Disposition, e.g. 'attachment; filename="report.csv"'.
    #[arg(long, value_name = "DISPOSITION")]
    pub content_disposition: Option<String>,
    /// Cache-Control, e.g. max-age=3600.
    #[arg(long, value_name = "DIRECTIVES")]
    pub cache_control: Option<String>,
}

/// Conditions besides the ETag: the blob's last-modified time (RFC 3339, e.g.
/// 2026-12-03T10:00:00Z, compared in whole seconds as Azure compares them)
/// and the lease it is under.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct ConditionArgs {
    /// The blob's lease (a GUID from `vmblob lease acquire`): needed by a write or delete
    /// while the blob is leased; on a read it must be the blob's lease. Else exit 9.
    #[arg(long, value_name = "ID")]
    pub lease_id: Option<String>,
    /// Only if the blob changed after this time: else a read exits 7 (not modified), a write 9.
    #[arg(long, value_name = "TIME")]
    pub if_modified_since: Option<String>,
    /// Only if the blob did not change after this time; else exit 9.
    #[arg(long, value_name = "TIME")]
    pub if_unmodified_since: Option<String>,
}

/// Which files or blobs a tree verb takes (glob patterns; a pattern without '/'
/// matches the last name component at any depth, one with '/' the relative path).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only these (repeatable), e.g. --include '*.jpg' --include 'docs/**'.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Not these (repeatable; wins over --include).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Make a container.
    Mb { container: String },
    /// Remove a container and every blob in it.
    Rb { container: String },
    /// List containers, or blobs under container[/prefix].
    Ls {
        path: Option<String>,
        /// List every blob instead of rolling up at '/'.
        #[arg(short, long)]
        recursive: bool,
        /// Long format: size, last-modified, ETag, content type, name.
        #[arg(short, long)]
        long: bool,
        /// One JSON object per line (JSON Lines) with every property, for scripts.
        #[arg(long, conflicts_with = "long")]
        json: bool,
        /// Also names with staged blocks and no committed blob (an upload not yet
        /// committed, or abandoned), as UNCOMMITTED lines.
        #[arg(long)]
        include_uncommitted: bool,
    },
    /// Upload a file ('-' reads stdin to its end).
    Put {
        file: PathBuf,
        dest: String,
        #[command(flatten)]
        props: PutArgs,
        /// Only if no blob of that name exists (If-None-Match: *); else exit 4.
        #[arg(long, conflicts_with = "if_match")]
        no_overwrite: bool,
        /// Only if the blob's ETag is this one; else exit 9.
        #[arg(long, value_name = "ETAG")]
        if_match: Option<String>,
        #[command(flatten)]
        times: ConditionArgs,
    },
    /// Download a blob to a file, or to stdout with '-' or no file.
    Get {
        src: String,
        file: Option<PathBuf>,
        /// Only the bytes from this offset on.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// At most this many bytes (clipped to the blob's end); default to the end.
        #[arg(long)]
        length: Option<u64>,
        /// Bytes START to END, both included, as in an HTTP Range ("START-" to the end).
        #[arg(long, value_name = "START-END", conflicts_with_all = ["offset", "length"])]
        range: Option<String>,
        /// Only if the blob's ETag is this one (else exit 4); the download is of that version.
        #[arg(long, value_name = "ETAG")]
        if_match: Option<String>,
        /// Only if the blob's ETag is not this one: a local copy of that version is current,
        /// so nothing is written and the exit code is 7.
        #[arg(long, value_name = "ETAG")]
        if_none_match: Option<String>,
        #[command(flatten)]
        times: ConditionArgs,
    },
    /// Show a blob's properties.
    Stat {
        path: String,
        /// As one JSON object, for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        times: ConditionArgs,
    },
    /// Change a blob's HTTP headers or metadata without uploading it again
    /// (Azure's Set Blob Properties / Set Blob Metadata); its ETag changes.
    /// Headers not named keep their values.
    Set {
        path: String,
        /// The new Content-Type ("" clears it).
        #[arg(long, value_name = "TYPE")]
        content_type: Option<String>,
        /// New values of these headers ("" clears one).
        #[command(flatten)]
        headers: HeaderArgs,
        /// The new metadata, all of it (repeatable KEY=VALUE): what is not named goes.
        /// With --content-type too these are two writes, the second pinned to the first's ETag.
        #[arg(long = "metadata", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        /// Remove all metadata.
        #[arg(long, conflicts_with = "metadata")]
        clear_metadata: bool,
        /// Only if the blob's ETag is this one; else exit 9.
        #[arg(long, value_name = "ETAG")]
        if_match: Option<String>,
        #[command(flatten)]
        times: ConditionArgs,
    },
    /// Delete a blob, or with -r every blob under container/prefix.
    Rm {
        path: String,
        /// A single blob: only if its ETag is this one; else exit 9.
        #[arg(long, value_name = "ETAG", conflicts_with = "recursive")]
        if_match: Option<String>,
        #[command(flatten)]
        times: ConditionArgs,
        /// Every blob under the prefix as a directory (`logs` means `logs/...`; none: the whole container).
        #[arg(short, long)]
        recursive: bool,
        /// Needed with -r: without it the CLI only says how many blobs would go.
        #[arg(long, requires = "recursive")]
        yes: bool,
    },
    /// Copy a directory to container/prefix, or container/prefix to a directory.
    /// (An argument written vmblob://container/... is on the device; with both on
    /// the device the copy runs inside it, Azure's Copy Blob, and no byte crosses
    /// the guest.)
    Cp {
        src: String,
        dest: String,
        /// Required for directories, as with cp.
        #[arg(short, long)]
        recursive: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// A single blob's lease: the target's, when it is on the device and leased
        /// (else exit 9); a download's source is checked against it.
        #[arg(long, value_name = "ID")]
        lease_id: Option<String>,
    },
    /// Make DEST hold SRC's files (a local directory and container/prefix, either way),
    /// copying only those missing there or differing by size or CRC-64.
    Sync {
        src: String,
        dest: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// Also delete what DEST has and SRC does not (among the names the filters
        /// pass), as azcopy's --delete-destination; only with --yes, else it says how many.
        #[arg(long)]
        delete_destination: bool,
        /// Confirm --delete-destination.
        #[arg(long)]
        yes: bool,
    },
    /// Take, renew, change, release or break a blob's lease (Azure's Lease Blob): while
    /// it is held, writes and deletes of the blob need its --lease-id. Leases are the
    /// VSP's: kept across its restarts, not seen by other clients of an az:// or s3:// store.
    Lease {
        #[command(subcommand)]
        action: LeaseCmd,
    },
    /// Start a vmblob-vsp with a temporary store, round-trip a blob through
    /// it and say what happened.
    Demo {
        /// Bytes in the demo blob.
        #[arg(long, default_value_t = 48 << 20)]
        size: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum LeaseCmd {
    /// Take the lease and print its id.
    Acquire {
        path: String,
        /// Seconds, 15 to 60; without it the lease lasts until released or broken.
        #[arg(long, value_name = "SECS")]
        duration: Option<u32>,
        /// The id to take it under (a GUID); default one the device makes up.
        #[arg(long, value_name = "ID")]
        proposed_id: Option<String>,
    },
    /// Restart a fixed lease's clock (also once it expired, if no one wrote the blob since).
    Renew {
        path: String,
        #[arg(long, value_name = "ID")]
        lease_id: String,
    },
    /// Give the lease a new id and print it.
    Change {
        path: String,
        #[arg(long, value_name = "ID")]
        lease_id: String,
        #[arg(long, value_name = "ID")]
        proposed_id: String,
    },
    /// Give the lease up: the blob is free at once.
    Release {
        path: String,
        #[arg(long, value_name = "ID")]
        lease_id: String,
    },
    /// End the lease without its id (anyone may), after --break-period seconds (0 to 60;
    /// default: a fixed lease runs out its time, an infinite one breaks at once). Prints
    /// the seconds until it is broken.
    Break {
        path: String,
        #[arg(long, value_name = "SECS")]
        break_period: Option<u32>,
    },
}

pub fn connect(cli: &Cli, socket: &std::path::Path) -> Result<BlobClient, ClientError> {
    let mut opts = VirtioOptions::new(socket);
    opts.queues = cli.queues;
    opts.ram_size = cli.ram_mib << 20;
    // A VSP that restarts (crash or upgrade) is waited for, within the request timeout: with
    // the inflight region the requests simply complete after it; without, they are asked again.
    opts.reconnect = true;
    if cli.timeout_ms != 0 {
        opts.hold_for = std::time::Duration::from_millis(cli.timeout_ms.into());
    }
    opts.frontend.connect_timeout = std::time::Duration::from_millis(cli.connect_timeout_ms);
    // A stopped or busy daemon must not hold the CLI past its own timeout (0: none).
    opts.frontend.reply_timeout =
        (cli.timeout_ms != 0).then(|| std::time::Duration::from_millis(cli.timeout_ms.into()));
    opts.poll = std::time::Duration::from_micros(cli.poll_us);
    let transport = VirtioTransport::connect(opts)?;
    let config = transport.device_config();
    let options = ClientOptions { timeout_ms: cli.timeout_ms, parallel: cli.parallel, ..ClientOptions::default() };
    Ok(BlobClient::new(Arc::new(transport), config, options))
}

/// The virtio-pci device of a real guest: bind it to uio_pci_generic, pin the
/// DMA memory, initialise the device.
pub fn connect_pci(cli: &Cli) -> Result<BlobClient, CliError> {
    let dma_size = usize::try_from(cli.ram_mib << 20).map_err(|_| CliError::Usage("--ram-mib too large".into()))?;
    let mode = match cli.pci_poll_us {
        Some(us) => CompletionMode::Poll { idle_sleep: std::time::Duration::from_micros(us) },
        None => CompletionMode::Interrupts,
    };
    let opts = VirtioPciOptions {
        device: cli.pci_device.clone(),
        queues: cli.queues,
        dma_size,
        allow_small_pages: cli.allow_4k_pages,
        mode,
        config_timeout: std::time::Duration::from_millis(cli.connect_timeout_ms),
        ..Default::default()
    };
    let transport = VirtioPciTransport::open(opts).map_err(CliError::Client)?;
    let config = transport.device_config();
    let options = ClientOptions { timeout_ms: cli.timeout_ms, parallel: cli.parallel, ..ClientOptions::default() };
    Ok(BlobClient::new(Arc::new(transport), config, options))
}

/// The VMBus device of a real guest: bind it to uio_hv_generic, pin the
/// DMA memory, open the channel.
pub fn connect_vmbus(cli: &Cli) -> Result<BlobClient, CliError> {
    let len = usize::try_from(cli.ram_mib << 20).map_err(|_| CliError::Usage("--ram-mib too large".into()))?;
    let dma_opts = PinnedDmaOptions { allow_small_pages: cli.allow_4k_pages, ..Default::default() };
    let dma = PinnedDma::with_options(len, dma_opts).map_err(|e| ClientError::Channel(e.into()))?;
    let source = UioChannelSource::new("/sys", VMBUS_CLASS_GUID, dma);
    let opts = VmbusOptions {
        open_timeout: std::time::Duration::from_millis(cli.connect_timeout_ms),
        reopen: false,
        ..Default::default()
    };
    let transport = VmbusTransport::open(Arc::new(source), opts).map_err(CliError::Client)?;
    let config = transport.device_config();
    let options = ClientOptions { timeout_ms: cli.timeout_ms, parallel: cli.parallel, ..ClientOptions::default() };
    Ok(BlobClient::new(Arc::new(transport), config, options))
}

/// Why `path` cannot be a vmblob-vsp socket, if something else is there (no point retrying it).
fn not_a_socket(path: &Path) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).ok()?;
    let what = if meta.is_dir() {
        "a directory"
    } else if meta.file_type().is_socket() {
        return None;
    } else {
        "not a socket"
    };
    Some(format!("--socket {}: {what}", path.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Errors are one line on stderr; -v shows the warnings (and more) that lead to them.
    let level = ["error", "warn", "info", "debug", "trace"][usize::from(cli.verbose.min(4))];
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let name = format!("{:?}", cli.cmd).split([' ', '{']).next().unwrap_or("").to_lowercase();
    let result = match &cli.cmd {
        Cmd::Demo { size } => demo::run(&cli, *size),
        _ => match (resolve_transport(cli.transport, Path::new("/sys"), cli.socket.is_some()), &cli.socket) {
            (TransportKind::Vmbus, _) => connect_vmbus(&cli).and_then(|c| commands::run(&cli, &c)),
            (TransportKind::Pci, _) => connect_pci(&cli).and_then(|c| commands::run(&cli, &c)),
            (_, None) => {
                eprintln!("vmblob: {name}: no socket (use --socket PATH or VMBLOB_SOCKET)");
                return ExitCode::from(exit::USAGE);
            }
            (_, Some(socket)) => not_a_socket(socket)
                .map_or(Ok(()), |why| Err(CliError::Usage(why)))
                .and_then(|()| connect(&cli, socket).map_err(CliError::from))
                .and_then(|c| commands::run(&cli, &c)),
        },
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("vmblob: {name}: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(root: &Path, instance: &str, class: &str) {
        let dir = root.join("bus/vmbus/devices").join(instance);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("class_id"), format!("{{{class}}}\n")).unwrap();
        std::fs::write(dir.join("id"), "14\n").unwrap();
    }

    #[test]
    fn auto_picks_vmbus_only_when_a_vmblob_device_is_offered() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // No VMBus at all (not a Hyper-V guest).
        assert_eq!(resolve_transport(TransportKind::Auto, r, false), TransportKind::Virtio);
        // VMBus with other devices only.
        device(r, "f8615163-df3e-46c5-913f-f2d2f965ed0e", "f8615163-df3e-46c5-913f-f2d2f965ed0e");
        assert_eq!(resolve_transport(TransportKind::Auto, r, false), TransportKind::Virtio);
        // The vmblob class (sysfs writes braces; case does not matter).
        device(r, "0d1a2b3c-0000-4000-8000-000000000001", &VMBUS_CLASS_GUID.to_uppercase());
        assert_eq!(resolve_transport(TransportKind::Auto, r, false), TransportKind::Vmbus);
        // An explicit choice is never second-guessed.
        assert_eq!(resolve_transport(TransportKind::Virtio, r, false), TransportKind::Virtio);
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(resolve_transport(TransportKind::Vmbus, empty.path(), false), TransportKind::Vmbus);
    }

    #[test]
    fn transport_flag_parses() {
        let cli = Cli::try_parse_from(["vmblob", "--transport", "vmbus", "ls"]).unwrap();
        assert_eq!(cli.transport, TransportKind::Vmbus);
        let cli = Cli::try_parse_from(["vmblob", "ls"]).unwrap();
        assert_eq!(cli.transport, TransportKind::Auto);
        let cli = Cli::try_parse_from(["vmblob", "--transport", "pci", "--pci-poll-us", "50", "ls"]).unwrap();
        assert_eq!((cli.transport, cli.pci_poll_us), (TransportKind::Pci, Some(50)));
        assert!(!cli.allow_4k_pages, "hugepages unless normal pages are asked for");
        let cli = Cli::try_parse_from(["vmblob", "--transport", "pci", "ls", "--allow-4k-pages"]).unwrap();
        assert!(cli.allow_4k_pages);
        assert!(Cli::try_parse_from(["vmblob", "--transport", "usb", "ls"]).is_err());
    }
}
