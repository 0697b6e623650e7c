//! Use a vmblob device through the `object_store` API only: put, multipart
//! upload, list, get (whole and ranged), copy, rename and delete.
//!
//!     cargo run -p vmblob-vsc --example object_store -- --socket /run/vmblob.sock
//!
//! Prints one line per step and `ok` at the end; exits non-zero on the first failure.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use vmblob_vsc::objstore::VmblobStoreBuilder;
use vmblob_vsc::{BlobClient, ClientError, ClientOptions, VirtioOptions, VirtioTransport};

#[derive(Parser)]
struct Args {
    /// vhost-user socket of a running vmblob-vsp.
    #[arg(long, env = "VMBLOB_SOCKET")]
    socket: PathBuf,
    /// Container for the example's objects (created if missing).
    #[arg(long, default_value = "objstore-example")]
    container: String,
    /// Size of the multipart object, in MiB.
    #[arg(long, default_value_t = 12)]
    mib: usize,
}

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn connect(socket: PathBuf) -> std::result::Result<BlobClient, ClientError> {
    let mut opts = VirtioOptions::new(socket);
    opts.frontend.connect_timeout = Duration::from_secs(5);
    let transport = VirtioTransport::connect(opts)?;
    let config = transport.device_config();
    Ok(BlobClient::new(Arc::new(transport), config, ClientOptions::default()))
}

/// Bytes that differ at every offset, so a misplaced block shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i ^ (i >> 8) ^ (i >> 16)) as u8).collect()
}

async fn run(store: &dyn ObjectStore, mib: usize) -> Result {
    let hello = Path::from("example/hello.txt");
    let put = store.put(&hello, PutPayload::from("hello from the guest")).await?;
    println!("put {hello} etag={}", put.e_tag.unwrap_or_default());

    let big = Path::from("example/big.bin");
    let data = pattern(mib << 20);
    let mut upload = store.put_multipart(&big).await?;
    // Parts go up concurrently and may finish in any order; `complete` keeps call order.
    let parts: Vec<_> = data.chunks(5 << 20).map(|c| upload.put_part(PutPayload::from(c.to_vec()))).collect();
    futures::future::try_join_all(parts).await?;
    upload.complete().await?;
    println!("multipart {big} {} bytes", data.len());

    let listed: Vec<_> = store.list(Some(&Path::from("example"))).try_collect().await?;
    for m in &listed {
        println!("list {} {} bytes", m.location, m.size);
    }
    let root = store.list_with_delimiter(None).await?;
    println!("dirs {:?}", root.common_prefixes.iter().map(Path::as_ref).collect::<Vec<_>>());

    let got = store.get(&big).await?.bytes().await?;
    if got != data {
        return Err("multipart object read back differs".into());
    }
    let range = store.get_range(&big, 1_000_000..1_000_016).await?;
    if range[..] != data[1_000_000..1_000_016] {
        return Err("ranged read differs".into());
    }
    println!("get {big} verified, range 1000000..1000016 verified");

    let copy = Path::from("example/copy.txt");
    store.copy_if_not_exists(&hello, &copy).await?;
    let again = store.copy_if_not_exists(&hello, &copy).await;
    if !matches!(again, Err(object_store::Error::AlreadyExists { .. })) {
        return Err(format!("second copy_if_not_exists: {again:?}").into());
    }
    let moved = Path::from("example/moved/hello.txt");
    store.rename(&copy, &moved).await?;
    let text = store.get(&moved).await?.bytes().await?;
    println!("copy+rename {moved}: {:?}", String::from_utf8_lossy(&text));

    for p in [&hello, &big, &moved] {
        store.delete(p).await?;
    }
    let left: Vec<_> = store.list(None).try_collect().await?;
    if !left.is_empty() {
        return Err(format!("objects left after delete: {left:?}").into());
    }
    println!("deleted, container empty");
    Ok(())
}

#[tokio::main]
async fn main() -> Result {
    let args = Args::parse();
    let client = tokio::task::spawn_blocking(move || connect(args.socket)).await??;
    let store = VmblobStoreBuilder::new().with_client(client).with_container_name(args.container).build()?;
    store.create_container_if_missing().await?;
    run(&store, args.mib).await?;
    println!("ok");
    Ok(())
}
