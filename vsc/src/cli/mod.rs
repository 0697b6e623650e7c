//! The `vmblob` command line: azcopy/az-storage-like verbs over a vhost-user
//! socket. In this mode the CLI plays both the VMM and the guest.

mod commands;
mod demo;
mod paths;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use vmblob_protocol::BlobError;

use crate::{BlobClient, ClientError, ClientOptions, VirtioOptions, VirtioTransport};

#[derive(Parser, Debug)]
#[command(name = "vmblob", version, about = "Blob storage through the vmblob paravirtual device")]
pub struct Cli {
    /// vhost-user socket of a running vmblob-vsp.
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
    /// Guest RAM for rings and buffers, in MiB.
    #[arg(long, global = true, default_value_t = 256)]
    pub ram_mib: u64,
    /// How long to wait for the socket to accept, in milliseconds.
    #[arg(long, global = true, default_value_t = 3000)]
    pub connect_timeout_ms: u64,
    /// Busy-poll for completions this many microseconds before sleeping.
    #[arg(long, global = true, default_value_t = 0)]
    pub poll_us: u64,
    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
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
    },
    /// Upload a file.
    Put { file: PathBuf, dest: String },
    /// Download a blob to a file, or to stdout with '-' or no file.
    Get { src: String, file: Option<PathBuf> },
    /// Show a blob's properties.
    Stat { path: String },
    /// Delete a blob.
    Rm { path: String },
    /// Copy a directory to container/prefix, or container/prefix to a directory.
    Cp {
        src: String,
        dest: String,
        /// Required for directories, as with cp.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Start a vmblob-vsp with a temporary store, round-trip a blob through
    /// it and say what happened.
    Demo {
        /// Bytes in the demo blob.
        #[arg(long, default_value_t = 48 << 20)]
        size: u64,
    },
}

/// Exit codes a script can rely on.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const CONFLICT: u8 = 4;
    pub const UNAVAILABLE: u8 = 5;
}

fn exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Blob { error, .. } => match error {
            BlobError::BlobNotFound | BlobError::ContainerNotFound => exit::NOT_FOUND,
            BlobError::AlreadyExists | BlobError::PreconditionFailed => exit::CONFLICT,
            BlobError::Rescinded | BlobError::Busy | BlobError::Timeout => exit::UNAVAILABLE,
            BlobError::InvalidName | BlobError::InvalidRequest => exit::USAGE,
            _ => exit::FAILED,
        },
        ClientError::Rescinded | ClientError::Transport(_) => exit::UNAVAILABLE,
        ClientError::Invalid(_) => exit::USAGE,
        _ => exit::FAILED,
    }
}

pub fn connect(cli: &Cli, socket: &std::path::Path) -> Result<BlobClient, ClientError> {
    let mut opts = VirtioOptions::new(socket);
    opts.queues = cli.queues;
    opts.ram_size = cli.ram_mib << 20;
    opts.reconnect = false;
    opts.frontend.connect_timeout = std::time::Duration::from_millis(cli.connect_timeout_ms);
    opts.poll = std::time::Duration::from_micros(cli.poll_us);
    let transport = VirtioTransport::connect(opts)?;
    let config = transport.device_config();
    let options = ClientOptions { timeout_ms: cli.timeout_ms, parallel: cli.parallel, ..ClientOptions::default() };
    Ok(BlobClient::new(Arc::new(transport), config, options))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let name = format!("{:?}", cli.cmd).split([' ', '{']).next().unwrap_or("").to_lowercase();
    let result = match &cli.cmd {
        Cmd::Demo { size } => demo::run(&cli, *size),
        _ => match &cli.socket {
            None => {
                eprintln!("vmblob: {name}: no socket (use --socket PATH or VMBLOB_SOCKET)");
                return ExitCode::from(exit::USAGE);
            }
            Some(socket) => connect(&cli, socket).and_then(|c| commands::run(&cli, &c)),
        },
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("vmblob: {name}: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}
