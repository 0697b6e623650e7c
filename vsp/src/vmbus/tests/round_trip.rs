//! Every operation through the emulated channel, overlapping requests, and full rings both ways.

use std::collections::HashSet;
use std::sync::Arc;

use vmblob_glue::vmbus::emulator::Wakeup;
use vmblob_protocol::ops::{
    BlockListType, ByteRange, Conditions, GetBlob, ListBlobs, ListContainers, Metadata, PutBlob, PutBlock, PutBlockList,
};
use vmblob_protocol::{BlobError, BlockId, OpRequest, OpResponse};

use super::guest::{Next, TestGuest, WAIT, blob_ref, name};
use crate::engine::Limits;
use crate::store::memory::MemoryStore;
use crate::vmbus::{ServiceOptions, ServiceState};

fn put(c: &str, b: &str) -> OpRequest {
    OpRequest::PutBlob(PutBlob {
        target: blob_ref(c, b),
        content_type: "application/octet-stream".into(),
        headers: Default::default(),
        metadata: Metadata::new(vec![("owner".into(), "vmbus".into())]).unwrap(),
        conditions: Conditions::none(),
        content_md5: None,
        content_crc64: None,
    })
}

fn get(c: &str, b: &str, range: Option<ByteRange>) -> OpRequest {
    OpRequest::GetBlob(GetBlob { target: blob_ref(c, b), range, conditions: Conditions::none() })
}

fn ok(g: &mut TestGuest, op: &OpRequest, data: &[u8]) -> OpResponse {
    g.call(op, data, 0).0.unwrap()
}

#[test]
fn every_operation_round_trips() {
    let mut g = TestGuest::new();
    assert!(matches!(ok(&mut g, &OpRequest::GetDeviceConfig, &[]), OpResponse::DeviceConfig(_)));
    ok(&mut g, &OpRequest::CreateContainer { container: name("photos"), metadata: Metadata::default() }, &[]);
    assert!(matches!(
        ok(&mut g, &OpRequest::GetContainerProperties { container: name("photos") }, &[]),
        OpResponse::ContainerProperties(_)
    ));

    // 100 000 bytes at an odd offset: 26 pages, straddling both ends.
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let written = match ok(&mut g, &put("photos", "2024/cat.jpg"), &data) {
        OpResponse::BlobWritten(w) => w,
        r => panic!("{r:?}"),
    };
    assert_eq!(written.content_crc64, crate::store::crc64(&data));
    let (r, back) = g.call(&get("photos", "2024/cat.jpg", None), &[], 200_000);
    assert!(matches!(r, Ok(OpResponse::BlobData { length: 100_000, .. })));
    assert_eq!(back, data);
    let (_, part) = g.call(&get("photos", "2024/cat.jpg", Some(ByteRange { offset: 4000, length: 300 })), &[], 4096);
    assert_eq!(part, &data[4000..4300]);
    let props =
        OpRequest::GetBlobProperties { target: blob_ref("photos", "2024/cat.jpg"), conditions: Conditions::none() };
    match ok(&mut g, &props, &[]) {
        OpResponse::BlobProperties(p) => {
            assert_eq!(p.content_length, 100_000);
            assert_eq!(p.metadata.get("owner"), Some("vmbus"));
        }
        r => panic!("{r:?}"),
    }

    // Blocks, then a block list.
    let blocks: Vec<BlockId> = (0..3).map(|i| BlockId::new(&[i as u8; 8]).unwrap()).collect();
    for (i, id) in blocks.iter().enumerate() {
        let stage = OpRequest::PutBlock(PutBlock {
            lease_id: None,
            target: blob_ref("photos", "big"),
            block_id: id.clone(),
            content_crc64: None,
        });
        assert!(matches!(ok(&mut g, &stage, &vec![i as u8 + 1; 5000]), OpResponse::BlockStaged { .. }));
    }
    let commit = OpRequest::PutBlockList(PutBlockList {
        target: blob_ref("photos", "big"),
        blocks: blocks.iter().cloned().map(Into::into).collect(),
        content_type: String::new(),
        headers: Default::default(),
        metadata: Metadata::default(),
        conditions: Conditions::none(),
    });
    assert!(matches!(ok(&mut g, &commit, &[]), OpResponse::BlobWritten(_)));
    let list = OpRequest::GetBlockList { target: blob_ref("photos", "big"), list_type: BlockListType::Committed };
    assert!(matches!(ok(&mut g, &list, &[]), OpResponse::BlockList { blocks } if blocks.len() == 3));
    let (_, big) = g.call(&get("photos", "big", None), &[], 20_000);
    assert_eq!(big.len(), 15_000);
    assert!(big[..5000].iter().all(|&b| b == 1) && big[10_000..].iter().all(|&b| b == 3));

    let listing = OpRequest::ListBlobs(ListBlobs {
        container: name("photos"),
        prefix: String::new(),
        delimiter: "/".into(),
        marker: String::new(),
        max_results: 0,
        include_metadata: false,
        include_uncommitted: false,
    });
    match ok(&mut g, &listing, &[]) {
        OpResponse::BlobList { items, .. } => {
            let names: Vec<_> = items.iter().map(|i| i.key().to_owned()).collect();
            assert_eq!(names, ["2024/", "big"]);
        }
        r => panic!("{r:?}"),
    }
    let containers = OpRequest::ListContainers(ListContainers {
        prefix: String::new(),
        marker: String::new(),
        max_results: 0,
        include_metadata: false,
    });
    assert!(
        matches!(ok(&mut g, &containers, &[]), OpResponse::ContainerList { containers, .. } if containers.len() == 1)
    );

    let del = OpRequest::DeleteBlob { target: blob_ref("photos", "2024/cat.jpg"), conditions: Conditions::none() };
    assert_eq!(ok(&mut g, &del, &[]), OpResponse::Deleted);
    assert_eq!(g.call(&get("photos", "2024/cat.jpg", None), &[], 10).0, Err(BlobError::BlobNotFound));
    assert_eq!(ok(&mut g, &OpRequest::DeleteContainer { container: name("photos") }, &[]), OpResponse::Deleted);
    assert_eq!(
        g.call(&OpRequest::GetContainerProperties { container: name("photos") }, &[], 0).0,
        Err(BlobError::ContainerNotFound)
    );
    let report = g.service.report();
    assert_eq!((report.opens, report.refused, report.dropped, report.failure), (1, 0, 0, None));
    assert!(report.completed >= 17);
    assert_eq!(g.service.state(), ServiceState::Serving);
}

#[test]
fn overlapping_requests_each_complete_once() {
    let mut g = TestGuest::new();
    ok(&mut g, &OpRequest::CreateContainer { container: name("box"), metadata: Metadata::default() }, &[]);
    let sent: Vec<_> = (0..40).map(|i| g.submit(&put("box", &format!("b{i}")), &vec![i as u8; 3000 + i], 0)).collect();
    let mut seen = HashSet::new();
    while seen.len() < sent.len() {
        match g.next(WAIT) {
            Next::Completion(id, r) => {
                assert!(seen.insert(id), "second completion for {id}");
                assert_eq!(r.error.get(), 0);
            }
            other => panic!("{other:?}"),
        }
    }
    for i in 0..40 {
        let (_, d) = g.call(&get("box", &format!("b{i}"), None), &[], 8192);
        assert_eq!(d, vec![i as u8; 3000 + i]);
    }
}

/// Small rings, many requests, the guest reading completions only when its own ring is full:
/// both sides wait with `pending_send_sz` and are woken by the other's read.
#[test]
fn full_rings_in_both_directions_lose_nothing() {
    let limits = Limits { max_inflight: 1024, ..Limits::default() };
    let mut g = TestGuest::with(Arc::new(MemoryStore::new()), limits, ServiceOptions::default());
    // Minimal rings: one data page each way.
    g.reopen(0x2000, 0x2000);

    const N: usize = 600;
    let op = OpRequest::GetDeviceConfig;
    let mut completed = HashSet::new();
    let mut sent = 0;
    while completed.len() < N {
        if sent < N {
            let txn = g.next_txn();
            let (mut hdr, _, (data, req, resp)) = g.prepare(txn, &op, &[], 0);
            let packet =
                vmblob_protocol::framing::vmbus::encode_blob_request(txn, &mut hdr, data.as_ref(), &req, &resp);
            if g.tx.poll_ready(packet.len()).unwrap() {
                g.send_packet(&packet);
                sent += 1;
                continue;
            }
        }
        // Our ring is full (or all sent): take what completed, then sleep if nothing was there.
        let got = g.drain();
        if got.is_empty() && !g.rx.unmask_and_check().unwrap() {
            assert!(matches!(g.ch.wait_interrupt(Some(WAIT)), Ok(Wakeup::Interrupt { .. })), "stalled");
        }
        for (id, r) in got {
            assert_eq!(r.error.get(), 0);
            assert!(completed.insert(id), "second completion for {id}");
        }
    }
    assert_eq!(completed.len(), N);
}
