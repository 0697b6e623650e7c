//! `object_store` over the real client stack and daemon: object_store's own
//! conformance suite (`object_store::integration`), cases it does not cover
//! (multi-block objects, reads racing an overwrite, attributes, errors), and
//! the `object_store` example program.

use std::future::Future;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::integration as conformance;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions,
    PutPayload,
};
use vmblob_integration::data::pattern;
use vmblob_integration::{Guest, GuestOptions, Sandbox, Vsp, VspOptions, bounded, workspace_binary};
use vmblob_vsc::ListBlobsOptions;
use vmblob_vsc::objstore::{VmblobStore, VmblobStoreBuilder};

/// A daemon, a guest and a store on container `objects`.
struct Rig {
    store: VmblobStore,
    guest: Guest,
    _vsp: Vsp,
    _sb: Sandbox,
}

fn rig(opts: GuestOptions) -> Rig {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default());
    let guest = Guest::connect(vsp.socket(), opts);
    let store = VmblobStoreBuilder::new()
        .with_client(guest.client.clone())
        .with_container_name("objects")
        .build()
        .expect("store");
    guest.container("objects").create().unwrap();
    Rig { store, guest, _vsp: vsp, _sb: sb }
}

/// Run `f` on a multi-threaded runtime, failing the test if it takes over two minutes.
fn run<F: Future<Output = ()> + Send + 'static>(what: &str, f: F) {
    bounded(Duration::from_secs(120), what, move || {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime").block_on(f)
    })
}

#[test]
fn conformance_put_get_delete_list() {
    let r = rig(GuestOptions::default());
    let store = r.store.clone();
    run("put_get_delete_list", async move {
        conformance::put_get_delete_list(&store).await;
        conformance::get_opts(&store).await;
        conformance::put_opts(&store, true).await;
        conformance::put_get_attributes(&store).await;
        let err = conformance::get_nonexistent_object(&store, None).await.unwrap_err();
        assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
    });
}

#[test]
fn conformance_listings() {
    let r = rig(GuestOptions::default());
    let store = r.store.clone();
    run("listings", async move {
        conformance::list_uses_directories_correctly(&store).await;
        conformance::list_with_delimiter(&store).await;
        conformance::list_with_offset_exclusivity(&store).await;
        conformance::list_paginated(&store, &store).await;
    });
}

#[test]
fn conformance_copy_and_rename() {
    let r = rig(GuestOptions::default());
    let store = r.store.clone();
    run("copy and rename", async move {
        conformance::rename_and_copy(&store).await;
        conformance::copy_if_not_exists(&store).await;
        conformance::copy_rename_nonexistent_object(&store).await;
    });
}

/// On a device without the `COPY` capability (an older VSP), copies go
/// through the guest and keep the same guarantees.
#[test]
fn copy_and_rename_through_the_guest_where_the_device_cannot_copy() {
    let r = rig(GuestOptions::default());
    let mut config = *r.guest.client.device_config();
    config.capabilities &= !vmblob_protocol::config::caps::COPY;
    let options = r.guest.client.options().clone();
    let client = vmblob_vsc::BlobClient::new(r.guest.transport.clone(), config, options);
    let store = VmblobStoreBuilder::new().with_client(client).with_container_name("objects").build().expect("store");
    run("copy and rename through the guest", async move {
        conformance::rename_and_copy(&store).await;
        conformance::copy_if_not_exists(&store).await;
        conformance::copy_rename_nonexistent_object(&store).await;
    });
}

#[test]
fn conformance_multipart() {
    // Blocks of 1 MiB: every 5 MiB part becomes several blocks.
    let r = rig(GuestOptions::default().block_size(1 << 20));
    let store = r.store.clone();
    run("multipart", async move {
        conformance::stream_get(&store).await;
        conformance::multipart(&store, &store).await;
        conformance::multipart_put_part_out_of_order(&store, &store).await;
        conformance::multipart_out_of_order(&store).await;
        // A commit discards the blocks other uploads staged for the name, as
        // on Azure: the second writer's complete fails, the first one's data stays.
        conformance::multipart_race_condition(&store, false).await;
    });
}

#[test]
fn objects_above_one_block_are_committed_whole_and_read_in_chunks() {
    let r = rig(GuestOptions::default().block_size(256 << 10));
    let (store, client) = (r.store.clone(), r.guest.client.clone());
    run("multi-block objects", async move {
        let path = Path::from("big/object.bin");
        let data = Bytes::from(pattern(3, 0, (5 << 20) + 12_345));
        // Several payload chunks whose edges do not line up with the blocks.
        let payload: PutPayload = data.chunks(100_003).map(Bytes::copy_from_slice).collect();
        let put = store.put_opts(&path, payload, PutMode::Create.into()).await.unwrap();
        let props = client.container("objects").blob("big/object.bin").properties().unwrap();
        assert_eq!(put.e_tag.as_deref(), Some(props.etag.as_str()));
        assert_eq!(props.committed_blocks, 21, "written as 256 KiB blocks");

        let got = store.get(&path).await.unwrap();
        assert_eq!((got.meta.size, got.range.clone()), (data.len() as u64, 0..data.len() as u64));
        let chunks: Vec<Bytes> = got.into_stream().try_collect().await.unwrap();
        assert!(chunks.len() > 1, "the body streams in several reads");
        assert_eq!(chunks.concat(), data);

        for range in [GetRange::Bounded(1_000_000..3_000_001), GetRange::Offset(4 << 20), GetRange::Suffix(700_000)] {
            let r = store.get_opts(&path, GetOptions::new().with_range(Some(range.clone()))).await.unwrap();
            let want = range.as_range(data.len() as u64).unwrap();
            assert_eq!(r.range, want);
            let bytes = r.bytes().await.unwrap();
            assert_eq!(bytes, data.slice(want.start as usize..want.end as usize), "{range:?}");
        }

        // Copies of multi-block objects are block copies too.
        store.copy_if_not_exists(&path, &Path::from("big/copy.bin")).await.unwrap();
        assert_eq!(store.get(&Path::from("big/copy.bin")).await.unwrap().bytes().await.unwrap(), data);
        assert!(client.container("objects").blob("big/copy.bin").properties().unwrap().committed_blocks > 1);
    });
}

#[test]
fn an_overwrite_during_a_read_fails_the_stream_instead_of_mixing_versions() {
    let r = rig(GuestOptions::default().block_size(256 << 10));
    let store = r.store.clone();
    run("read racing an overwrite", async move {
        let path = Path::from("moving");
        store.put(&path, Bytes::from(pattern(1, 0, 4 << 20)).into()).await.unwrap();
        let got = store.get(&path).await.unwrap();
        let mut body = got.into_stream();
        let first = body.next().await.unwrap().unwrap();
        assert_eq!(first, pattern(1, 0, first.len()), "the first read came with the answer");
        store.put(&path, Bytes::from(pattern(2, 0, 4 << 20)).into()).await.unwrap();
        let rest: Result<Vec<Bytes>, _> = body.try_collect().await;
        let err = rest.expect_err("reading on after an overwrite must fail");
        assert!(err.to_string().contains("changed"), "{err}");
    });
}

#[test]
fn many_concurrent_operations_on_two_queues_each_complete_once_and_correctly() {
    let r = rig(GuestOptions::default().queues(2).block_size(128 << 10));
    let store = r.store.clone();
    run("concurrent operations", async move {
        const TASKS: u64 = 48;
        let tasks = (0..TASKS).map(|i| {
            let store = store.clone();
            async move {
                let path = Path::from(format!("c/{i:03}"));
                // Every third object spans several blocks.
                let len = if i % 3 == 0 { (300 << 10) + i as usize } else { 1000 + i as usize };
                let data = Bytes::from(pattern(i, 0, len));
                store.put_opts(&path, data.clone().into(), PutMode::Create.into()).await?;
                let got = store.get(&path).await?.bytes().await?;
                assert_eq!(got, data, "{path}");
                let half = store.get_range(&path, (len / 2) as u64..len as u64).await?;
                assert_eq!(half, data.slice(len / 2..), "{path}");
                Ok::<_, object_store::Error>(path)
            }
        });
        let written: Vec<Path> = futures::future::try_join_all(tasks).await.unwrap();
        let mut listed: Vec<Path> =
            store.list(Some(&Path::from("c"))).map_ok(|m| m.location).try_collect().await.unwrap();
        listed.sort();
        assert_eq!(listed, written, "each object exactly once");
        let deleted: Vec<_> =
            store.delete_stream(futures::stream::iter(written.clone()).map(Ok).boxed()).try_collect().await.unwrap();
        assert_eq!(deleted, written, "delete_stream answers in input order");
        assert!(store.list(None).try_collect::<Vec<_>>().await.unwrap().is_empty());
    });
}

#[test]
fn content_type_http_headers_and_metadata_round_trip() {
    let r = rig(GuestOptions::default());
    let store = r.store.clone();
    run("attributes", async move {
        let attributes = Attributes::from_iter([
            (Attribute::ContentType, "application/vnd.apache.parquet"),
            (Attribute::ContentEncoding, "zstd"),
            (Attribute::ContentLanguage, "en"),
            (Attribute::ContentDisposition, "inline"),
            (Attribute::CacheControl, "max-age=600"),
            (Attribute::Metadata("writer".into()), "guest 1"),
        ]);
        let path = Path::from("with/attributes");
        let opts = PutOptions { attributes: attributes.clone(), ..Default::default() };
        store.put_opts(&path, "x".into(), opts).await.unwrap();
        assert_eq!(store.get(&path).await.unwrap().attributes, attributes);
        let head = store.get_opts(&path, GetOptions::new().with_head(true)).await.unwrap();
        assert_eq!(head.attributes, attributes);

        let opts = PutMultipartOptions { attributes: attributes.clone(), ..Default::default() };
        let mut upload = store.put_multipart_opts(&Path::from("mp"), opts).await.unwrap();
        upload.put_part("part".into()).await.unwrap();
        upload.complete().await.unwrap();
        assert_eq!(store.get(&Path::from("mp")).await.unwrap().attributes, attributes);

        // A server-side copy takes them along.
        store.copy(&path, &Path::from("copied")).await.unwrap();
        assert_eq!(store.get(&Path::from("copied")).await.unwrap().attributes, attributes);

        let refused = Attributes::from_iter([(Attribute::StorageClass, "Cool")]);
        let err = store.put_opts(&Path::from("nope"), "x".into(), refused.into()).await.unwrap_err();
        assert!(matches!(err, object_store::Error::NotImplemented { .. }), "{err}");
        let err = store.head(&Path::from("nope")).await.unwrap_err();
        assert!(matches!(err, object_store::Error::NotFound { .. }), "nothing was written: {err}");
    });
}

#[test]
fn an_incomplete_or_aborted_upload_leaves_nothing() {
    let r = rig(GuestOptions::default());
    let store = r.store.clone();
    run("incomplete upload", async move {
        let path = Path::from("partial");
        let mut upload = store.put_multipart(&path).await.unwrap();
        upload.put_part("one".into()).await.unwrap();
        drop(upload.put_part("two, never sent".into()));
        let err = upload.complete().await.unwrap_err();
        assert!(err.to_string().contains("part 1 was not uploaded"), "{err}");
        assert!(matches!(store.head(&path).await.unwrap_err(), object_store::Error::NotFound { .. }));

        let mut upload = store.put_multipart(&path).await.unwrap();
        upload.put_part("staged".into()).await.unwrap();
        upload.abort().await.unwrap();
        assert!(matches!(store.head(&path).await.unwrap_err(), object_store::Error::NotFound { .. }));
        assert!(store.list(None).try_collect::<Vec<_>>().await.unwrap().is_empty());
    });
}

#[test]
fn paths_and_containers_the_device_refuses_are_errors() {
    let r = rig(GuestOptions::default());
    let store = r.store.clone();
    let client = r.guest.client.clone();
    run("refused names", async move {
        let backslash = Path::parse("a\\b").unwrap();
        let err = store.put(&backslash, "x".into()).await.unwrap_err();
        assert!(matches!(err, object_store::Error::NotSupported { .. }), "{err}");
        let err = store.get(&Path::from("x".repeat(1025).as_str())).await.unwrap_err();
        assert!(matches!(err, object_store::Error::NotSupported { .. }), "{err}");

        let missing = VmblobStoreBuilder::new().with_client(client.clone()).with_container_name("absent").build();
        let missing = missing.unwrap();
        let err = missing.put(&Path::from("a"), "x".into()).await.unwrap_err();
        assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
        missing.create_container_if_missing().await.unwrap();
        missing.create_container_if_missing().await.unwrap();
        missing.put(&Path::from("a"), "x".into()).await.unwrap();

        let bad = VmblobStoreBuilder::new().with_client(client).with_container_name("Not_Valid").build();
        assert!(matches!(bad, Err(object_store::Error::Generic { .. })));
    });
}

#[test]
fn works_without_a_tokio_runtime() {
    let r = rig(GuestOptions::default());
    let store = r.store.clone();
    bounded(Duration::from_secs(60), "futures executor", move || {
        futures::executor::block_on(async {
            store.put(&Path::from("plain"), "no tokio here".into()).await.unwrap();
            let got = store.get(&Path::from("plain")).await.unwrap().bytes().await.unwrap();
            assert_eq!(got, "no tokio here");
        })
    });
}

/// The example program, built like the daemon (same profile and target directory).
fn example_binary() -> &'static FsPath {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("examples/object_store"))
}

#[test]
fn the_example_program_runs_against_a_daemon() {
    let bin = example_binary();
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default());
    let out = Command::new(bin)
        .arg("--socket")
        .arg(vsp.socket())
        .env_remove("VMBLOB_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "example failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for line in ["put example/hello.txt", "multipart example/big.bin 12582912 bytes", "list example/big.bin 12582912"] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(stdout.contains("copy+rename example/moved/hello.txt: \"hello from the guest\""), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("ok"), "{stdout}");
    // What it wrote went through the device: the container exists and is empty.
    let g = Guest::connect(vsp.socket(), GuestOptions::default());
    assert!(
        g.container("objstore-example")
            .list_blobs(ListBlobsOptions::default())
            .items()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_leased_blob_refuses_object_store_writes_and_copies_at_once() {
    use vmblob_protocol::ops::LeaseDuration;
    let r = rig(GuestOptions::default());
    let store = r.store.clone();
    let guest_blob = r.guest.container("objects").blob("leased");
    guest_blob.put(b"held").unwrap();
    let id = guest_blob.acquire_lease(LeaseDuration::Infinite, None).unwrap();
    run("leased", async move {
        store.put(&Path::from("source"), "new".into()).await.unwrap();
        // object_store has no leases: a write the lease refuses is a failed precondition,
        // as a 412 from Azure is, and a copy onto it says so instead of retrying.
        let err = store.put(&Path::from("leased"), "x".into()).await.unwrap_err();
        assert!(matches!(err, object_store::Error::Precondition { .. }), "{err}");
        let err = store.copy(&Path::from("source"), &Path::from("leased")).await.unwrap_err();
        assert!(matches!(err, object_store::Error::Precondition { .. }), "{err}");
        assert_eq!(store.get(&Path::from("leased")).await.unwrap().bytes().await.unwrap(), "held");
    });
    guest_blob.release_lease(id).unwrap();
}
