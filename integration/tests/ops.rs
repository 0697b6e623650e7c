//! Every blob operation through the real daemon and the real client stack.

use std::io::Cursor;

use vmblob_integration::data::{crc64, pattern};
use vmblob_integration::{Guest, GuestOptions, Sandbox, StoreKind, Vsp, VspOptions, expect_status, ops};
use vmblob_protocol::BlobError;
use vmblob_protocol::config::caps;
use vmblob_protocol::ops::{BlobListItem, BlockListType, Conditions, ETag, OpResponse};
use vmblob_vsc::{ClientError, Data};

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

    let alpha = g.create_container("alpha").unwrap();
    assert!(!alpha.etag.is_empty());
    g.create_container("beta").unwrap();
    g.create_container("gamma-1").unwrap();
    expect_status(g.create_container("alpha"), BlobError::AlreadyExists);
    assert_eq!(g.container_properties("alpha").unwrap(), alpha);

    let all: Vec<String> = g.list_containers("").unwrap().into_iter().map(|c| c.name).collect();
    assert_eq!(all, ["alpha", "beta", "gamma-1"]);
    let some: Vec<String> = g.list_containers("g").unwrap().into_iter().map(|c| c.name).collect();
    assert_eq!(some, ["gamma-1"]);

    g.put("beta", "x", b"in beta").unwrap();
    g.delete_container("beta").unwrap();
    expect_status(g.container_properties("beta"), BlobError::ContainerNotFound);
    expect_status(g.delete_container("beta"), BlobError::ContainerNotFound);
    expect_status(g.get("beta", "x"), BlobError::ContainerNotFound);
    let all: Vec<String> = g.list_containers("").unwrap().into_iter().map(|c| c.name).collect();
    assert_eq!(all, ["alpha", "gamma-1"]);
    // Recreated, it is empty: the delete took its blobs along.
    g.create_container("beta").unwrap();
    expect_status(g.stat("beta", "x"), BlobError::BlobNotFound);
    assert!(g.list("beta", "", "").unwrap().is_empty());
}

fn blobs_round_trip_with_ranges_overwrites_and_deletes(store: StoreKind) {
    let (_sb, vsp) = start(store, 2);
    let g = Guest::connect(vsp.socket(), GuestOptions::default().queues(2));
    g.create_container("data").unwrap();
    expect_status(g.put("nope", "a", b"x"), BlobError::ContainerNotFound);

    let data = pattern(1, 0, 300_001);
    let w = g.put_with("data", "dir/a.bin", &data, Conditions::none(), "application/x-test").unwrap();
    assert_eq!(w.content_crc64, crc64(&data));
    assert_eq!(g.get("data", "dir/a.bin").unwrap(), data);
    let p = g.stat("data", "dir/a.bin").unwrap();
    assert_eq!(
        (p.content_length, p.content_crc64, p.etag.as_str(), p.content_type.as_str(), p.committed_blocks),
        (data.len() as u64, crc64(&data), w.etag.as_str(), "application/x-test", 0)
    );

    assert_eq!(g.get_range("data", "dir/a.bin", 1000, 5000).unwrap(), &data[1000..6000]);
    assert_eq!(g.get_range("data", "dir/a.bin", 0, 1).unwrap(), &data[..1]);
    // Clipped at the end of the blob.
    assert_eq!(g.get_range("data", "dir/a.bin", 300_000, 100).unwrap(), &data[300_000..]);
    expect_status(g.get_range("data", "dir/a.bin", 400_000, 10), BlobError::InvalidRange);

    // Empty blob.
    g.put("data", "empty", b"").unwrap();
    assert!(g.get("data", "empty").unwrap().is_empty());
    assert_eq!(g.stat("data", "empty").unwrap().content_length, 0);

    // Overwrite: new content, new ETag.
    let data2 = pattern(2, 0, 4096);
    let w2 = g.put("data", "dir/a.bin", &data2).unwrap();
    assert_ne!(w2.etag, w.etag);
    assert_eq!(g.get("data", "dir/a.bin").unwrap(), data2);

    // A wrong CRC is refused and nothing is stored.
    let r = g.call(&ops::put_blob_crc("data", "bad-crc", Some(crc64(b"other"))), Data::Out(b"payload"));
    expect_status(r, BlobError::ChecksumMismatch);
    expect_status(g.stat("data", "bad-crc"), BlobError::BlobNotFound);

    g.delete("data", "dir/a.bin").unwrap();
    expect_status(g.get("data", "dir/a.bin"), BlobError::BlobNotFound);
    expect_status(g.stat("data", "dir/a.bin"), BlobError::BlobNotFound);
    expect_status(g.delete("data", "dir/a.bin"), BlobError::BlobNotFound);
    expect_status(g.get_range("data", "missing", 0, 10), BlobError::BlobNotFound);
}

fn conditional_writes(store: StoreKind) {
    let (_sb, vsp) = start(store, 1);
    let g = Guest::connect(vsp.socket(), GuestOptions::default());
    g.create_container("cond").unwrap();
    let none_match = || Conditions { if_match: None, if_none_match: Some(ETag::any()) };
    let if_match = |e: &str| Conditions { if_match: Some(ETag::new(e).unwrap()), if_none_match: None };

    // Create-only: the first wins, the second is refused and changes nothing.
    let w1 = g.put_with("cond", "b", b"one", none_match(), "").unwrap();
    expect_status(g.put_with("cond", "b", b"two", none_match(), ""), BlobError::PreconditionFailed);
    assert_eq!(g.get("cond", "b").unwrap(), b"one");
    // If-Match: only the current ETag (or *) may replace it.
    expect_status(g.put_with("cond", "b", b"two", if_match("\"0xdeadbeef\""), ""), BlobError::PreconditionFailed);
    expect_status(g.put_with("cond", "absent", b"x", if_match("*"), ""), BlobError::PreconditionFailed);
    let w2 = g.put_with("cond", "b", b"two", if_match(&w1.etag), "").unwrap();
    expect_status(g.put_with("cond", "b", b"three", if_match(&w1.etag), ""), BlobError::PreconditionFailed);
    g.put_with("cond", "b", b"three", if_match(&w2.etag), "").unwrap();
    assert_eq!(g.get("cond", "b").unwrap(), b"three");
    expect_status(g.stat("cond", "absent"), BlobError::BlobNotFound);
}

fn listing_with_prefix_delimiter_and_pages(store: StoreKind) {
    let (_sb, vsp) = start(store, 2);
    let g = Guest::connect(vsp.socket(), GuestOptions::default().queues(2));
    g.create_container("list").unwrap();
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

    let flat = g.list("list", "", "").unwrap();
    assert_eq!(names(&flat), want);
    for item in &flat {
        let BlobListItem::Blob { name, properties } = item else { panic!("prefix in a flat listing") };
        assert_eq!(properties.content_length, name.len() as u64);
    }
    let many = names(&g.list("list", "many/", "").unwrap());
    assert_eq!(many, &want[want.iter().position(|n| n.starts_with("many/")).unwrap()..][..300]);
    assert_eq!(
        names(&g.list("list", "", "/").unwrap()),
        [
            "P:dir0/", "P:dir1/", "P:many/", "top-0", "top-1", "top-2", "top-3", "top-4", "top-5", "top-6", "top-7",
            "top-8", "top-9"
        ]
    );
    assert_eq!(names(&g.list("list", "dir1/", "/").unwrap()), ["P:dir1/sub/"]);
    assert!(g.list("list", "zzz", "").unwrap().is_empty());

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
    assert_eq!(joined, names(&g.list("list", "", "/").unwrap()));
    expect_status(g.list("missing", "", ""), BlobError::ContainerNotFound);
}

fn blocks_stream_and_block_lists(store: StoreKind) {
    let (_sb, vsp) = start(store, 2);
    // 64 KiB blocks: the smallest the client allows.
    let g = Guest::connect(vsp.socket(), GuestOptions::default().queues(2).block_size(64 << 10));
    g.create_container("blk").unwrap();
    let len = 5 * 65536 - 1234;
    let data = pattern(3, 0, len);
    let w = g.put_stream("blk", "big", &mut Cursor::new(&data), len as u64, &|_| {}).unwrap();
    assert_eq!(w.content_crc64, crc64(&data));
    let blocks = g.block_list("blk", "big", BlockListType::Committed).unwrap();
    let ids: Vec<Vec<u8>> = blocks.iter().map(|b| b.id.clone()).collect();
    assert_eq!(ids, (0..5).map(|i| format!("{i:06}").into_bytes()).collect::<Vec<_>>());
    let sizes: Vec<u64> = blocks.iter().map(|b| b.size).collect();
    assert_eq!(sizes, [65536, 65536, 65536, 65536, 65536 - 1234]);
    assert!(blocks.iter().all(|b| b.committed));
    assert!(g.block_list("blk", "big", BlockListType::Uncommitted).unwrap().is_empty());
    assert_eq!(g.stat("blk", "big").unwrap().committed_blocks, 5);
    assert_eq!(g.get("blk", "big").unwrap(), data);
    assert_eq!(g.get_range("blk", "big", 65530, 20).unwrap(), &data[65530..65550]);

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
    let staged = g.block_list("blk", "hand", BlockListType::Uncommitted).unwrap();
    assert_eq!(
        staged.iter().map(|b| (b.id.clone(), b.size, b.committed)).collect::<Vec<_>>(),
        [(b"b1".to_vec(), 9, false), (b"b2".to_vec(), 4, false)]
    );
    expect_status(
        g.call(&ops::put_block_list("blk", "hand", &[b"b1", b"b3"]), Data::None),
        BlobError::InvalidBlockList,
    );
    expect_status(g.stat("blk", "hand"), BlobError::BlobNotFound);
    let w = ops::written(g.call(&ops::put_block_list("blk", "hand", &[b"b2", b"b1", b"b2"]), Data::None).unwrap());
    assert_eq!(w.content_crc64, crc64(b"|twoblock one|two"));
    assert_eq!(g.get("blk", "hand").unwrap(), b"|twoblock one|two");
    let all = g.block_list("blk", "hand", BlockListType::All).unwrap();
    assert_eq!(all.iter().filter(|b| b.committed).count(), 3);
    assert!(all.iter().all(|b| b.committed), "staged blocks are dropped by the commit: {all:?}");
    expect_status(g.block_list("blk", "none", BlockListType::All), BlobError::BlobNotFound);
}

fn every_error_is_a_typed_status(store: StoreKind) {
    let (_sb, vsp) = start(store, 1);
    let g = Guest::connect(vsp.socket(), GuestOptions::default());
    g.create_container("errs").unwrap();
    let e = g.get("errs", "missing").unwrap_err();
    assert!(matches!(&e, ClientError::Blob { error: BlobError::BlobNotFound, .. }), "{e:?}");
    assert!(e.is_not_found());
    let e = g.delete_container("never").unwrap_err();
    assert!(matches!(&e, ClientError::Blob { error: BlobError::ContainerNotFound, .. }), "{e:?}");
    // A data buffer too small for the blob: the VSP returns what fits.
    g.put("errs", "ten", b"0123456789").unwrap();
    let r = g.call(&ops::get_blob("errs", "ten", None), Data::In(4)).unwrap();
    assert_eq!(ops::data_of(r), b"0123");
    // The daemon is still serving after every refusal above.
    assert_eq!(g.get("errs", "ten").unwrap(), b"0123456789");
}

// Regression: --max-blob-size once reached the device config but not the store.
fn max_blob_size_is_advertised_and_enforced(store: StoreKind) {
    let sb = Sandbox::new();
    let opts = VspOptions { extra: vec!["--max-blob-size".into(), "100000".into()], store, ..VspOptions::default() };
    let vsp = Vsp::start(&sb.dir, opts);
    let g = Guest::connect(vsp.socket(), GuestOptions::default().block_size(64 << 10));
    assert_eq!(g.device_config().max_blob_size, 100_000);
    g.create_container("cap").unwrap();
    g.put("cap", "fits", &pattern(1, 0, 100_000)).unwrap();
    expect_status(g.put("cap", "over", &pattern(1, 0, 100_001)), BlobError::TooLarge);
    let big = pattern(2, 0, 200_000);
    expect_status(g.put_stream("cap", "blocks", &mut Cursor::new(&big), 200_000, &|_| {}), BlobError::TooLarge);
    expect_status(g.stat("cap", "over"), BlobError::BlobNotFound);
    expect_status(g.stat("cap", "blocks"), BlobError::BlobNotFound);
}

vmblob_integration::both_stores!(
    device_config_and_containers,
    blobs_round_trip_with_ranges_overwrites_and_deletes,
    conditional_writes,
    listing_with_prefix_delimiter_and_pages,
    blocks_stream_and_block_lists,
    every_error_is_a_typed_status,
    max_blob_size_is_advertised_and_enforced,
);
