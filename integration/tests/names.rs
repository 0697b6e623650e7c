//! Names that try to escape the store: refused by the client before anything
//! is sent, refused by the VSP when a guest smuggles them in raw bytes; long
//! and odd legal names round-trip and land inside the store only.

use vmblob_integration::data::pattern;
use vmblob_integration::ops::{self, blob_ref};
use vmblob_integration::raw::{RawGuest, RawRequest, patch};
use vmblob_integration::{Guest, GuestOptions, Sandbox, Vsp, VspOptions, assert_nothing_outside_store};
use vmblob_protocol::names::ContainerName;
use vmblob_protocol::ops::{BlobListItem, BlockListType, Conditions, Metadata, OpCode, OpRequest};
use vmblob_protocol::{BlobError, DataDirection};
use vmblob_vsc::{ClientError, GetOptions, ListBlobsOptions, ListContainersOptions, PutOptions};

fn invalid<T>(r: Result<T, ClientError>, what: &str) {
    match r {
        Err(ClientError::InvalidName { .. }) => {}
        Err(e) => panic!("{what}: expected ClientError::InvalidName, got {e:?}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

#[test]
fn escaping_names_are_refused_by_client_and_vsp() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default().queues(1));
    let g = Guest::connect(vsp.socket(), GuestOptions::default());
    g.container("names").create().unwrap();
    let deep = vec!["d"; 255].join("/");
    let long = "x".repeat(1025);
    let bad_blobs =
        ["a/../b", "/abs", "a\\b", "..", ".", "../x", "a/..", "./a", "a//b", "a/", "", "a\0b", "a\nb", &deep, &long];
    for name in bad_blobs {
        invalid(g.container("names").blob(name).put(b"x"), name);
        invalid(g.container("names").blob(name).put_opts(b"x", PutOptions::default()), name);
        invalid(g.container("names").blob(name).get(), name);
        invalid(g.container("names").blob(name).get_opts(GetOptions::range(0..1)).map(|r| r.data), name);
        invalid(g.container("names").blob(name).properties(), name);
        invalid(g.container("names").blob(name).delete(), name);
        invalid(g.container("names").blob(name).block_list(BlockListType::All), name);
        invalid(g.container("names").blob(name).put_stream(&mut &b"x"[..], 1, PutOptions::default(), &|_| {}), name);
        invalid(g.container("names").blob(name).get_to_writer(&mut Vec::new(), &|_| {}), name);
    }
    for name in ["..", "../etc", "a/b", "AB", "ab", "a_b", "-ab", &"c".repeat(64)] {
        invalid(g.container(name).create(), name);
        invalid(g.container(name).delete(), name);
        invalid(g.container(name).blob("blob").put(b"x"), name);
        invalid(g.container(name).list_blobs(ListBlobsOptions::default()).items().collect::<Result<Vec<_>, _>>(), name);
    }
    assert!(
        g.container("names")
            .list_blobs(ListBlobsOptions::default())
            .items()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .is_empty(),
        "nothing was stored"
    );
    drop(g);

    // The same names smuggled into valid op bytes by a raw guest.
    let mut raw = RawGuest::connect(vsp.socket(), 64);
    let data = pattern(5, 0, 64);
    let cases: [(&str, &str); 8] = [
        ("a/xx/b", "a/../b"),
        ("xabs", "/abs"),
        ("axb", "a\\b"),
        ("zz", ".."),
        ("a/q/b", "a/./b"),
        ("abc", "ab/"),
        ("mmm", "m\0m"),
        ("p/qq", "p//q"),
    ];
    for (safe, evil) in cases {
        let target = || blob_ref("names", safe);
        let ops_to_try: Vec<(OpRequest, &[u8], u32)> = vec![
            (ops::put_blob("names", safe, &data), &data, 0),
            (ops::get_blob("names", safe, None), &[], 4096),
            (OpRequest::GetBlobProperties { target: target(), conditions: Conditions::none() }, &[], 0),
            (OpRequest::DeleteBlob { target: target(), conditions: Conditions::none() }, &[], 0),
            (ops::put_block("names", safe, b"blk", None), &data, 0),
            (ops::put_block_list("names", safe, &[b"blk"]), &[], 0),
            (ops::get_block_list("names", safe, BlockListType::All), &[], 0),
        ];
        for (op, out, data_in) in ops_to_try {
            let code = op.op();
            let bytes = patch(op.encode(), safe.as_bytes(), evil.as_bytes());
            let x = raw.send(&RawRequest::from_bytes(code.data_direction(), bytes, out, data_in));
            assert_eq!(x.error(), Some(BlobError::InvalidName), "{code:?} on {evil:?}");
            let reply = x.message(code).result.expect_err("an error reply");
            assert_eq!(reply.error, BlobError::InvalidName, "{code:?} on {evil:?}: {}", reply.message);
        }
    }
    for (safe, evil) in [("abcdef", "../etc"), ("abc", "ABC"), ("abcd", "a/bc"), ("abc", "a.b")] {
        let op =
            OpRequest::CreateContainer { container: ContainerName::new(safe).unwrap(), metadata: Metadata::default() };
        let bytes = patch(op.encode(), safe.as_bytes(), evil.as_bytes());
        let x = raw.send(&RawRequest::from_bytes(DataDirection::None, bytes, &[], 0));
        assert_eq!(x.error(), Some(BlobError::InvalidName), "container {evil:?}");
        assert!(x.message(OpCode::CreateContainer).result.is_err());
    }
    drop(raw);
    let g = Guest::connect(vsp.socket(), GuestOptions::default());
    assert!(
        g.container("names")
            .list_blobs(ListBlobsOptions::default())
            .items()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .is_empty(),
        "nothing was stored"
    );
    let containers: Vec<String> =
        g.list_containers(ListContainersOptions::default()).items().map(|c| c.unwrap().name).collect();
    assert_eq!(containers, ["names"]);
    drop(g);
    assert_nothing_outside_store(&sb, &vsp);
}

#[test]
fn long_and_odd_legal_names_round_trip_inside_the_store() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default().queues(1));
    let g = Guest::connect(vsp.socket(), GuestOptions::default());
    g.container("legal").create().unwrap();
    let segmented = format!("{}{}", "abcd/".repeat(199), "y".repeat(29));
    let mut names = vec![
        "n".repeat(1024),
        segmented,
        vec!["d"; 254].join("/"),
        "名".repeat(341),
        "ünïcode/名前/😀 emoji & spaces/файл.txt".to_owned(),
        "..a/.b/c../...".to_owned(),
        "a.b".to_owned(),
        "etc/passwd".to_owned(),
        "x%2F..%2Fy".to_owned(),
        "~/.ssh/id_rsa".to_owned(),
    ];
    assert_eq!(names[0].len(), 1024);
    assert_eq!(names[1].len(), 1024);
    assert_eq!(names[1].split('/').count(), 200);
    assert_eq!(names[2].split('/').count(), 254);
    assert_eq!(names[3].len(), 1023);
    for (i, n) in names.iter().enumerate() {
        let data = pattern(100 + i as u64, 0, 1000 + i);
        g.container("legal").blob(n).put(&data).unwrap_or_else(|e| panic!("put {n:?}: {e}"));
        assert_eq!(g.container("legal").blob(n).get().unwrap(), data, "{n:?}");
        assert_eq!(g.container("legal").blob(n).properties().unwrap().content_length, data.len() as u64);
    }
    names.sort();
    let listed: Vec<String> = g
        .container("legal")
        .list_blobs(ListBlobsOptions::default())
        .items()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
        .into_iter()
        .map(|i| match i {
            BlobListItem::Blob { name, .. } => name,
            other => panic!("{other:?} in a flat listing of committed blobs"),
        })
        .collect();
    assert_eq!(listed, names, "names come back exactly, in byte order");
    g.container("legal").blob(&names[0]).delete().unwrap();
    assert_eq!(
        g.container("legal")
            .list_blobs(ListBlobsOptions::default())
            .items()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .len(),
        names.len() - 1
    );
    drop(g);
    assert_nothing_outside_store(&sb, &vsp);
}
