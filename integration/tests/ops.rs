//! Every blob operation through the real daemon and the real client stack.

use std::io::Cursor;

use vmblob_integration::data::{crc64, pattern};
use vmblob_integration::{Guest, GuestOptions, Sandbox, StoreKind, Vsp, VspOptions, expect_status, ops};
use vmblob_protocol::BlobError;
use vmblob_protocol::config::caps;
use vmblob_protocol::ops::{BlobListItem, BlockListType, Conditions, ETag, Metadata, OpResponse};
use vmblob_vsc::{ClientError, Data, GetOptions, ListBlobsOptions, ListContainersOptions, PutOptions};

fn start(store: StoreKind, queues: usize) -> (Sandbox, Vsp) {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default().queues(queues).store(store));
    (sb, vsp)
}

fn names(items: &[BlobListItem]) -> Vec<String> {
    items
        .iter()
        .map(|i| match i {
            BlobListItem::Blob { name, .. } => name.clone(),
            BlobListItem::Prefix(p) => format!("P:{p}"),
            BlobListItem::Uncommitted(n) => format!("U:{n}"),
        })
        .collect()
}

fn device_config_and_containers(store: StoreKind) {
    let (_sb, vsp) = start(store, 3);
    let g = Guest::connect(vsp.socket(), GuestOptions::default());
    let cfg = g.device_config();
    assert_eq!(cfg.num_queues, 3, "config space reports --queues");
    assert_eq!(cfg.capabilities, caps::ALL);
    assert_eq!(cfg.max_inflight, 256);
    assert_eq!(cfg.max_segments, 1024);

    let alpha = g.container("alpha").create().unwrap();
    assert!(!alpha.etag.is_empty());
    g.container("beta").create().unwrap();
    g.container("gamma-1").create().unwrap();
    expect_status(g.container("alpha").create(), BlobError::AlreadyExists);
    assert_eq!(g.container("alpha").properties().unwrap(), alpha);

    let all: Vec<String> =
        g.list_containers(ListContainersOptions::default()).items().map(|c| c.unwrap().name).collect();
    assert_eq!(all, ["alpha", "beta", "gamma-1"]);
    let some: Vec<String> =
        g.list_containers(ListContainersOptions::prefix("g")).items().map(|c| c.unwrap().name).collect();
    assert_eq!(some, ["gamma-1"]);

    g.container("beta").blob("x").put(b"in beta").unwrap();
    g.container("beta").delete().unwrap();
    expect_status(g.container("beta").properties(), BlobError::ContainerNotFound);
    expect_status(g.container("beta").delete(), BlobError::ContainerNotFound);
    expect_status(g.container("beta").blob("x").get(), BlobError::ContainerNotFound);
    let all: Vec<String> =
        g.list_containers(ListContainersOptions::default()).items().map(|c| c.unwrap().name).collect();
    assert_eq!(all, ["alpha", "gamma-1"]);
    // Recreated, it is empty: the delete took its blobs along.
    g.container("beta").create().unwrap();
    expect_status(g.container("beta").blob("x").properties(), BlobError::BlobNotFound);
    assert!(
        g.container("beta")
            .list_blobs(ListBlobsOptions::default())
            .items()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .is_empty()
    );
}

fn blobs_round_trip_with_ranges_overwrites_and_deletes(store: StoreKind) {
    let (_sb, vsp) = start(store, 2);
    let g = Guest::connect(vsp.socket(), GuestOptions::default().queues(2));
    g.container("data").create().unwrap();
    expect_status(g.container("nope").blob("a").put(b"x"), BlobError::ContainerNotFound);

    let data = pattern(1, 0, 300_001);
    let w = g
        .container("data")
        .blob("dir/a.bin")
        .put_opts(&data, PutOptions { content_type: "application/x-test".into(), ..Default::default() })
        .unwrap();
    assert_eq!(w.content_crc64, crc64(&data));
    assert_eq!(g.container("data").blob("dir/a.bin").get().unwrap(), data);
    let p = g.container("data").blob("dir/a.bin").properties().unwrap();
    assert_eq!(
        (p.content_length, p.content_crc64, p.etag.as_str(), p.content_type.as_str(), p.committed_blocks),
        (data.len() as u64, crc64(&data), w.etag.as_str(), "application/x-test", 0)
    );

    assert_eq!(
        g.container("data").blob("dir/a.bin").get_opts(GetOptions::range(1000..6000)).map(|r| r.data).unwrap(),
        &data[1000..6000]
    );
    assert_eq!(
        g.container("data").blob("dir/a.bin").get_opts(GetOptions::range(0..1)).map(|r| r.data).unwrap(),
        &data[..1]
    );
    // Clipped at the end of the blob.
    assert_eq!(
        g.container("data").blob("dir/a.bin").get_opts(GetOptions::range(300_000..300_100)).map(|r| r.data).unwrap(),
        &data[300_000..]
    );
    expect_status(
        g.container("data").blob("dir/a.bin").get_opts(GetOptions::range(400_000..400_010)).map(|r| r.data),
        BlobError::InvalidRange,
    );

    // Empty blob.
    g.container("data").blob("empty").put(b"").unwrap();
    assert!(g.container("data").blob("empty").get().unwrap().is_empty());
    assert_eq!(g.container("data").blob("empty").properties().unwrap().content_length, 0);

    // Overwrite: new content, new ETag.
    let data2 = pattern(2, 0, 4096);
    let w2 = g.container("data").blob("dir/a.bin").put(&data2).unwrap();
    assert_ne!(w2.etag, w.etag);
    assert_eq!(g.container("data").blob("dir/a.bin").get().unwrap(), data2);

    // A wrong CRC is refused and nothing is stored.
    let r = g.call(&ops::put_blob_crc("data", "bad-crc", Some(crc64(b"other"))), Data::Out(b"payload"));
    expect_status(r, BlobError::ChecksumMismatch);
    expect_status(g.container("data").blob("bad-crc").properties(), BlobError::BlobNotFound);

    g.container("data").blob("dir/a.bin").delete().unwrap();
    expect_status(g.container("data").blob("dir/a.bin").get(), BlobError::BlobNotFound);
    expect_status(g.container("data").blob("dir/a.bin").properties(), BlobError::BlobNotFound);
    expect_status(g.container("data").blob("dir/a.bin").delete(), BlobError::BlobNotFound);
    expect_status(
        g.container("data").blob("missing").get_opts(GetOptions::range(0..10)).map(|r| r.data),
        BlobError::BlobNotFound,
    );
}

fn conditional_writes(store: StoreKind) {
    let (_sb, vsp) = start(store, 1);
    let g = Guest::connect(vsp.socket(), GuestOptions::default());
    g.container("cond").create().unwrap();
    let none_match = || Conditions::if_none_match(ETag::any());
    let if_match = |e: &str| Conditions::if_match(ETag::new(e).unwrap());

    // Create-only: the first wins, the second is refused (Azure's 409) and changes nothing.
    let w1 = g
        .container("cond")
        .blob("b")
        .put_opts(b"one", PutOptions { conditions: none_match(), ..Default::default() })
        .unwrap();
    expect_status(
        g.container("cond").blob("b").put_opts(b"two", PutOptions { conditions: none_match(), ..Default::default() }),
        BlobError::AlreadyExists,
    );
    assert_eq!(g.container("cond").blob("b").get().unwrap(), b"one");
    // If-Match: only the current ETag (or *) may replace it.
    expect_status(
        g.container("cond")
            .blob("b")
            .put_opts(b"two", PutOptions { conditions: if_match("\"0xdeadbeef\""), ..Default::default() }),
        BlobError::PreconditionFailed,
    );
    expect_status(
        g.container("cond")
            .blob("absent")
            .put_opts(b"x", PutOptions { conditions: if_match("*"), ..Default::default() }),
        BlobError::PreconditionFailed,
    );
    let w2 = g
        .container("cond")
        .blob("b")
        .put_opts(b"two", PutOptions { conditions: if_match(&w1.etag), ..Default::default() })
        .unwrap();
    expect_status(
        g.container("cond")
            .blob("b")
            .put_opts(b"three", PutOptions { conditions: if_match(&w1.etag), ..Default::default() }),
        BlobError::PreconditionFailed,
    );
    g.container("cond")
        .blob("b")
        .put_opts(b"three", PutOptions { conditions: if_match(&w2.etag), ..Default::default() })
        .unwrap();
    assert_eq!(g.container("cond").blob("b").get().unwrap(), b"three");
    expect_status(g.container("cond").blob("absent").properties(), BlobError::BlobNotFound);
}

fn listing_with_prefix_delimiter_and_pages(store: StoreKind) {
    let (_sb, vsp) = start(store, 2);
    let g = Guest::connect(vsp.socket(), GuestOptions::default().queues(2));
    g.container("list").create().unwrap();
    // 320 blobs, put 32 at a time.
    let mut want: Vec<String> = (0..300).map(|i| format!("many/item-{i:03}")).collect();
    want.extend((0..10).map(|i| format!("dir{}/sub/f{i}", i % 2)));
    want.extend((0..10).map(|i| format!("top-{i}")));
    for chunk in want.chunks(32) {
        let pending: Vec<_> =
            chunk.iter().map(|n| ops::submit_put(&g, "list", n, n.as_bytes()).expect("submit put")).collect();
        for p in pending {
            ops::written(p.wait().expect("put"));
        }
    }
    want.sort();

    let flat =
        g.container("list").list_blobs(ListBlobsOptions::default()).items().collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(names(&flat), want);
    for item in &flat {
        let BlobListItem::Blob { name, properties } = item else { panic!("prefix in a flat listing") };
        assert_eq!(properties.content_length, name.len() as u64);
    }
    let many = names(
        &g.container("list")
            .list_blobs(ListBlobsOptions::prefix("many/"))
            .items()
            .collect::<Result<Vec<_>, _>>()
            .unwrap(),
    );
    assert_eq!(many, &want[want.iter().position(|n| n.starts_with("many/")).unwrap()..][..300]);
    assert_eq!(
        names(
            &g.container("list")
                .list_blobs(ListBlobsOptions::default().with_delimiter("/"))
                .items()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        ),
        [
            "P:dir0/", "P:dir1/", "P:many/", "top-0", "top-1", "top-2", "top-3", "top-4", "top-5", "top-6", "top-7",
            "top-8", "top-9"
        ]
    );
    assert_eq!(
        names(
            &g.container("list")
                .list_blobs(ListBlobsOptions::prefix("dir1/").with_delimiter("/"))
                .items()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        ),
        ["P:dir1/sub/"]
    );
    assert!(
        g.container("list")
            .list_blobs(ListBlobsOptions::prefix("zzz"))
            .items()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .is_empty()
    );

    // Pages of 100 with exclusive markers; the last page carries no marker.
    let mut marker = String::new();
    let mut pages = Vec::new();
    loop {
        let r = g.call(&ops::list_blobs("list", "many/", "", &marker, 100), Data::None).unwrap();
        let OpResponse::BlobList { items, next_marker } = r.response else { panic!("not a listing") };
        pages.push((names(&items), next_marker.clone()));
        if next_marker.is_empty() {
            break;
        }
        marker = next_marker;
    }
    assert_eq!(pages.len(), 3);
    assert_eq!(pages[0].1, "many/item-099");
    assert_eq!(pages[1].1, "many/item-199");
    assert!(pages.iter().all(|(p, _)| p.len() == 100));
    let joined: Vec<String> = pages.into_iter().flat_map(|(p, _)| p).collect();
    assert_eq!(joined, many);

    // Odd page size with a delimiter gives the same listing as one page.
    let mut marker = String::new();
    let mut joined = Vec::new();
    for _ in 0..100 {
        let r = g.call(&ops::list_blobs("list", "", "/", &marker, 3), Data::None).unwrap();
        let OpResponse::BlobList { items, next_marker } = r.response else { panic!("not a listing") };
        assert!(items.len() <= 3);
        joined.extend(names(&items));
        if next_marker.is_empty() {
            break;
        }
        marker = next_marker;
    }
    assert_eq!(
        joined,
        names(
            &g.container("list")
                .list_blobs(ListBlobsOptions::default().with_delimiter("/"))
                .items()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        )
    );
    expect_status(
        g.container("missing").list_blobs(ListBlobsOptions::default()).items().collect::<Result<Vec<_>, _>>(),
        BlobError::ContainerNotFound,
    );
}

fn blocks_stream_and_block_lists(store: StoreKind) {
    let (_sb, vsp) = start(store, 2);
    // 64 KiB blocks: the smallest the client allows.
    let g = Guest::connect(vsp.socket(), GuestOptions::default().queues(2).block_size(64 << 10));
    g.container("blk").create().unwrap();
    let len = 5 * 65536 - 1234;
    let data = pattern(3, 0, len);
    let w = g
        .container("blk")
        .blob("big")
        .put_stream(&mut Cursor::new(&data), len as u64, PutOptions::default(), &|_| {})
        .unwrap();
    assert_eq!(w.content_crc64, crc64(&data));
    let blocks = g.container("blk").blob("big").block_list(BlockListType::Committed).unwrap();
    let ids: Vec<Vec<u8>> = blocks.iter().map(|b| b.id.clone()).collect();
    // Per-upload ids (protocol §6.4): one random 32-hex-digit prefix, then the block's index.
    let prefix = String::from_utf8(ids[0][..32].to_vec()).expect("ascii ids");
    assert!(prefix.bytes().all(|b| b.is_ascii_hexdigit()), "{prefix}");
    assert_eq!(ids, (0..5).map(|i| format!("{prefix}-{i:015}").into_bytes()).collect::<Vec<_>>());
    let sizes: Vec<u64> = blocks.iter().map(|b| b.size).collect();
    assert_eq!(sizes, [65536, 65536, 65536, 65536, 65536 - 1234]);
    assert!(blocks.iter().all(|b| b.committed));
    assert!(g.container("blk").blob("big").block_list(BlockListType::Uncommitted).unwrap().is_empty());
    assert_eq!(g.container("blk").blob("big").properties().unwrap().committed_blocks, 5);
    assert_eq!(g.container("blk").blob("big").get().unwrap(), data);
    assert_eq!(
        g.container("blk").blob("big").get_opts(GetOptions::range(65530..65550)).map(|r| r.data).unwrap(),
        &data[65530..65550]
    );

    // Hand-made blocks: a bad CRC is refused, an unstaged id cannot be committed,
    // uncommitted blocks are listed until the commit.
    let crc = |d: &[u8]| Some(crc64(d));
    let r = g.call(&ops::put_block("blk", "hand", b"b1", crc(b"not this")), Data::Out(b"block one"));
    expect_status(r, BlobError::ChecksumMismatch);
    let r = g.call(&ops::put_block("blk", "hand", b"b1", crc(b"block one")), Data::Out(b"block one")).unwrap();
    assert!(
        matches!(r.response, OpResponse::BlockStaged { content_crc64 } if Some(content_crc64) == crc(b"block one"))
    );
    g.call(&ops::put_block("blk", "hand", b"b2", None), Data::Out(b"|two")).unwrap();
    let staged = g.container("blk").blob("hand").block_list(BlockListType::Uncommitted).unwrap();
    assert_eq!(
        staged.iter().map(|b| (b.id.clone(), b.size, b.committed)).collect::<Vec<_>>(),
        [(b"b1".to_vec(), 9, false), (b"b2".to_vec(), 4, false)]
    );
    expect_status(
        g.call(&ops::put_block_list("blk", "hand", &[b"b1", b"b3"]), Data::None),
        BlobError::InvalidBlockList,
    );
    expect_status(g.container("blk").blob("hand").properties(), BlobError::BlobNotFound);
    let w = ops::written(g.call(&ops::put_block_list("blk", "hand", &[b"b2", b"b1", b"b2"]), Data::None).unwrap());
    assert_eq!(w.content_crc64, crc64(b"|twoblock one|two"));
    assert_eq!(g.container("blk").blob("hand").get().unwrap(), b"|twoblock one|two");
    let all = g.container("blk").blob("hand").block_list(BlockListType::All).unwrap();
    assert_eq!(all.iter().filter(|b| b.committed).count(), 3);
    assert!(all.iter().all(|b| b.committed), "staged blocks are dropped by the commit: {all:?}");
    expect_status(g.container("blk").blob("none").block_list(BlockListType::All), BlobError::BlobNotFound);
}

fn every_error_is_a_typed_status(store: StoreKind) {
    let (_sb, vsp) = start(store, 1);
    let g = Guest::connect(vsp.socket(), GuestOptions::default());
    g.container("errs").create().unwrap();
    let e = g.container("errs").blob("missing").get().unwrap_err();
    assert!(matches!(&e, ClientError::Status { error: BlobError::BlobNotFound, .. }), "{e:?}");
    assert!(e.is_not_found());
    let e = g.container("never").delete().unwrap_err();
    assert!(matches!(&e, ClientError::Status { error: BlobError::ContainerNotFound, .. }), "{e:?}");
    // A data buffer too small for the blob: the VSP returns what fits.
    g.container("errs").blob("ten").put(b"0123456789").unwrap();
    let r = g.call(&ops::get_blob("errs", "ten", None), Data::In(4)).unwrap();
    assert_eq!(ops::data_of(r), b"0123");
    // The daemon is still serving after every refusal above.
    assert_eq!(g.container("errs").blob("ten").get().unwrap(), b"0123456789");
}

// Regression: --max-blob-size once reached the device config but not the store.
fn max_blob_size_is_advertised_and_enforced(store: StoreKind) {
    let sb = Sandbox::new();
    let opts = VspOptions { extra: vec!["--max-blob-size".into(), "100000".into()], store, ..VspOptions::default() };
    let vsp = Vsp::start(&sb.dir, opts);
    let g = Guest::connect(vsp.socket(), GuestOptions::default().block_size(64 << 10));
    assert_eq!(g.device_config().max_blob_size, 100_000);
    g.container("cap").create().unwrap();
    g.container("cap").blob("fits").put(&pattern(1, 0, 100_000)).unwrap();
    expect_status(g.container("cap").blob("over").put(&pattern(1, 0, 100_001)), BlobError::TooLarge);
    let big = pattern(2, 0, 200_000);
    expect_status(
        g.container("cap").blob("blocks").put_stream(&mut Cursor::new(&big), 200_000, PutOptions::default(), &|_| {}),
        BlobError::TooLarge,
    );
    expect_status(g.container("cap").blob("over").properties(), BlobError::BlobNotFound);
    expect_status(g.container("cap").blob("blocks").properties(), BlobError::BlobNotFound);
}

/// The handles' option structs reach the device: metadata and content type
/// are stored, conditions on reads, stats and deletes are checked, listings
/// come page by page, and one uploader stages blocks for any caller.
fn handles_carry_options_conditions_and_pages(store: StoreKind) {
    let (_sb, vsp) = start(store, 1);
    let g = Guest::connect(vsp.socket(), GuestOptions::default().block_size(64 << 10));
    let c = g.container("handles");
    c.create().unwrap();
    let b = c.blob("meta.txt");
    let metadata = Metadata::new(vec![("owner".into(), "guest".into())]).unwrap();
    let w = b
        .put_opts(
            b"hello",
            PutOptions { content_type: "text/plain".into(), metadata: metadata.clone(), ..Default::default() },
        )
        .unwrap();
    let p = b.properties().unwrap();
    assert_eq!((p.content_type.as_str(), &p.metadata), ("text/plain", &metadata));

    let etag = ETag::new(&w.etag).unwrap();
    let if_match = |e: &ETag| Conditions::if_match(e.clone());
    let if_none_match = |e: &ETag| Conditions::if_none_match(e.clone());
    let stale = ETag::new("\"0xdeadbeef\"").unwrap();
    assert_eq!(b.properties_opts(if_match(&etag)).unwrap().etag, w.etag);
    expect_status(b.properties_opts(if_match(&stale)), BlobError::PreconditionFailed);
    let got = b.get_opts(GetOptions { range: None, conditions: if_match(&etag) }).unwrap();
    assert_eq!((got.data.as_slice(), got.properties.etag.as_str()), (&b"hello"[..], w.etag.as_str()));
    // The reader's copy is current: Azure's 304.
    expect_status(b.get_opts(GetOptions { range: None, conditions: if_none_match(&etag) }), BlobError::NotModified);
    expect_status(b.properties_opts(if_none_match(&etag)), BlobError::NotModified);
    let ranged = GetOptions { range: Some(1..3), conditions: if_match(&stale) };
    expect_status(b.get_opts(ranged), BlobError::PreconditionFailed);
    expect_status(b.delete_opts(if_match(&stale)), BlobError::PreconditionFailed);
    b.delete_opts(if_match(&etag)).unwrap();
    expect_status(b.properties(), BlobError::BlobNotFound);

    for i in 0..7 {
        c.blob(&format!("p/{i}")).put(b"x").unwrap();
    }
    let pages: Vec<_> = c
        .list_blobs(ListBlobsOptions { max_results: 3, ..ListBlobsOptions::prefix("p/") })
        .map(Result::unwrap)
        .collect();
    assert_eq!(pages.iter().map(|p| p.items.len()).collect::<Vec<_>>(), [3, 3, 1]);
    assert!(pages[..2].iter().all(|p| p.next_marker.is_some()) && pages[2].next_marker.is_none());
    let flat = c.list_blobs(ListBlobsOptions { max_results: 2, ..ListBlobsOptions::prefix("p/") }).items();
    assert_eq!(
        names(&flat.collect::<Result<Vec<_>, _>>().unwrap()),
        (0..7).map(|i| format!("p/{i}")).collect::<Vec<_>>()
    );

    // The public uploader: blocks of any caller, committed with options, checked end to end.
    let big = c.blob("uploaded");
    let mut up = big.block_uploader();
    let (one, two) = (pattern(1, 0, 40_000), pattern(2, 0, 30_000));
    up.stage(vmblob_protocol::BlockId::new(b"b-1").unwrap(), &[&one[..10], &one[10..]]).unwrap();
    up.stage(vmblob_protocol::BlockId::new(b"b-2").unwrap(), &[&two]).unwrap();
    let w = up.commit(PutOptions { content_type: "application/x-two".into(), ..Default::default() }).unwrap();
    assert_eq!(w.content_crc64, crc64(&[one.clone(), two.clone()].concat()));
    assert_eq!(big.get().unwrap(), [one, two].concat());
    assert_eq!(big.properties().unwrap().committed_blocks, 2);
}

vmblob_integration::all_stores!(
    handles_carry_options_conditions_and_pages,
    device_config_and_containers,
    blobs_round_trip_with_ranges_overwrites_and_deletes,
    conditional_writes,
    listing_with_prefix_delimiter_and_pages,
    blocks_stream_and_block_lists,
    every_error_is_a_typed_status,
    max_blob_size_is_advertised_and_enforced,
);
