//! Building blob operations by hand (for pipelining with `submit`, and for
//! fields `BlobClient`'s helpers do not expose), and reading their results.

use vmblob_protocol::names::{BlobName, BlockId, ContainerName};
use vmblob_protocol::ops::{
    BlobRef, BlobWritten, BlockListType, ByteRange, Conditions, GetBlob, ListBlobs, Metadata, OpRequest, OpResponse,
    PutBlob, PutBlock, PutBlockList,
};
use vmblob_vsc::{BlobClient, ClientError, Data, OpResult, PendingOp};

pub fn blob_ref(c: &str, b: &str) -> BlobRef {
    BlobRef {
        container: ContainerName::new(c).expect("valid container name"),
        blob: BlobName::new(b).expect("valid blob name"),
    }
}

/// PutBlob with the content's CRC-64/NVME, as `BlobClient::put` sends it.
pub fn put_blob(c: &str, b: &str, data: &[u8]) -> OpRequest {
    put_blob_crc(c, b, Some(crate::data::crc64(data)))
}

pub fn put_blob_crc(c: &str, b: &str, crc: Option<u64>) -> OpRequest {
    OpRequest::PutBlob(PutBlob {
        target: blob_ref(c, b),
        content_type: String::new(),
        headers: Default::default(),
        metadata: Metadata::default(),
        conditions: Conditions::none(),
        content_md5: None,
        content_crc64: crc,
    })
}

pub fn get_blob(c: &str, b: &str, range: Option<(u64, u64)>) -> OpRequest {
    OpRequest::GetBlob(GetBlob {
        target: blob_ref(c, b),
        range: range.map(|(offset, length)| ByteRange { offset, length }),
        conditions: Conditions::none(),
    })
}

pub fn list_blobs(c: &str, prefix: &str, delimiter: &str, marker: &str, max_results: u32) -> OpRequest {
    OpRequest::ListBlobs(ListBlobs {
        container: ContainerName::new(c).expect("valid container name"),
        prefix: prefix.into(),
        delimiter: delimiter.into(),
        marker: marker.into(),
        max_results,
        include_metadata: false,
        include_uncommitted: false,
    })
}

pub fn put_block(c: &str, b: &str, id: &[u8], crc: Option<u64>) -> OpRequest {
    OpRequest::PutBlock(PutBlock {
        lease_id: None,
        target: blob_ref(c, b),
        block_id: BlockId::new(id).expect("valid block id"),
        content_crc64: crc,
    })
}

pub fn put_block_list(c: &str, b: &str, ids: &[&[u8]]) -> OpRequest {
    OpRequest::PutBlockList(PutBlockList {
        target: blob_ref(c, b),
        blocks: ids.iter().map(|i| BlockId::new(i).expect("valid block id").into()).collect(),
        content_type: String::new(),
        headers: Default::default(),
        metadata: Metadata::default(),
        conditions: Conditions::none(),
    })
}

pub fn get_block_list(c: &str, b: &str, list_type: BlockListType) -> OpRequest {
    OpRequest::GetBlockList { target: blob_ref(c, b), list_type }
}

/// Submit a PutBlob of `data`.
pub fn submit_put(client: &BlobClient, c: &str, b: &str, data: &[u8]) -> Result<PendingOp, ClientError> {
    client.submit(&put_blob(c, b, data), Data::Out(data))
}

/// Submit a GetBlob of the whole blob into a `cap`-byte buffer.
pub fn submit_get(client: &BlobClient, c: &str, b: &str, cap: usize) -> Result<PendingOp, ClientError> {
    client.submit(&get_blob(c, b, None), Data::In(cap))
}

/// The write result of a PutBlob / PutBlockList.
pub fn written(r: OpResult) -> BlobWritten {
    match r.response {
        OpResponse::BlobWritten(w) => w,
        other => panic!("expected BlobWritten, got {other:?}"),
    }
}

/// The bytes a GetBlob returned.
pub fn data_of(r: OpResult) -> Vec<u8> {
    match r.response {
        OpResponse::BlobData { length, .. } => {
            let mut v = vec![0u8; length as usize];
            if length > 0 {
                r.data.expect("GetBlob result has a data buffer").read_at(0, &mut v).expect("read data buffer");
            }
            v
        }
        other => panic!("expected BlobData, got {other:?}"),
    }
}
