//! Container and blob handles: a [`BlobClient`] clone plus a name, checked
//! against the naming rules when an operation runs (so building a handle
//! never fails, and nothing is sent for a name the device would refuse).

use std::fmt;

use vmblob_protocol::config::caps;
use vmblob_protocol::names::{BlobName, BlockId, ContainerName};
use vmblob_protocol::ops::{
    BlobListItem, BlobProperties, BlobRef, BlobUpdate, BlobWritten, BlockInfo, BlockListType, ByteRange, Conditions,
    ContainerProperties, ContentHeaders, CopyBlob, GetBlob, LeaseId, ListBlobs, ListedBlock, Metadata, OpRequest,
    OpResponse, PutBlob, PutBlock, PutBlockList, SetBlobProperties,
};

use super::{
    BlobBytes, BlobClient, BlobContent, BlockUploader, CopyOptions, CreateContainerOptions, Data, GetOptions,
    ListBlobsOptions, OpResult, Page, Pages, PendingOp, PutOptions,
};
use crate::error::{ClientError, ProtocolError};
use crate::transport::dma::DmaBytes;

/// A name as given, and whether the rules accept it.
#[derive(Clone, PartialEq, Eq)]
enum Checked<T> {
    Valid(T),
    Invalid { kind: &'static str, name: String },
}

impl<T> Checked<T> {
    fn get(&self) -> Result<&T, ClientError> {
        match self {
            Checked::Valid(v) => Ok(v),
            Checked::Invalid { kind, name } => Err(ClientError::InvalidName { kind, name: name.clone() }),
        }
    }
}

/// One container of a device.
#[derive(Clone)]
pub struct ContainerClient {
    client: BlobClient,
    name: String,
    checked: Checked<ContainerName>,
}

impl ContainerClient {
    pub(super) fn new(client: BlobClient, name: &str) -> Self {
        let checked = match ContainerName::new(name) {
            Ok(n) => Checked::Valid(n),
            Err(_) => Checked::Invalid { kind: "container", name: name.to_owned() },
        };
        Self { client, name: name.to_owned(), checked }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client(&self) -> &BlobClient {
        &self.client
    }

    /// A handle on blob `name` in this container.
    pub fn blob(&self, name: &str) -> BlobHandle {
        let checked = match (&self.checked, BlobName::new(name)) {
            (Checked::Valid(c), Ok(b)) => Checked::Valid(BlobRef { container: c.clone(), blob: b }),
            (Checked::Invalid { kind, name }, _) => Checked::Invalid { kind, name: name.clone() },
            (_, Err(_)) => Checked::Invalid { kind: "blob", name: name.to_owned() },
        };
        BlobHandle { client: self.client.clone(), name: name.to_owned(), target: checked }
    }

    fn checked(&self) -> Result<ContainerName, ClientError> {
        self.checked.get().cloned()
    }

    pub fn create(&self) -> Result<ContainerProperties, ClientError> {
        self.create_opts(CreateContainerOptions::default())
    }

    pub fn create_opts(&self, options: CreateContainerOptions) -> Result<ContainerProperties, ClientError> {
        let op = OpRequest::CreateContainer { container: self.checked()?, metadata: options.metadata };
        match self.client.call(&op, Data::None)?.response {
            OpResponse::ContainerCreated(p) => Ok(p),
            r => Err(ClientError::unexpected(r)),
        }
    }

    /// Delete the container and every blob in it.
    pub fn delete(&self) -> Result<(), ClientError> {
        self.client.call(&OpRequest::DeleteContainer { container: self.checked()? }, Data::None).map(|_| ())
    }

    pub fn properties(&self) -> Result<ContainerProperties, ClientError> {
        match self.client.call(&OpRequest::GetContainerProperties { container: self.checked()? }, Data::None)?.response
        {
            OpResponse::ContainerProperties(p) => Ok(p),
            r => Err(ClientError::unexpected(r)),
        }
    }

    /// The blobs (and, with a delimiter, rolled-up prefixes) the options
    /// select, page by page; [`Pages::items`] flattens them.
    pub fn list_blobs(&self, options: ListBlobsOptions) -> Pages<BlobListItem> {
        let (client, container) = (self.client.clone(), self.checked.clone());
        let ListBlobsOptions { prefix, delimiter, marker, max_results, include_metadata, include_uncommitted } =
            options;
        Pages::new(marker, move |marker| {
            let op = OpRequest::ListBlobs(ListBlobs {
                container: container.get()?.clone(),
                prefix: prefix.clone(),
                delimiter: delimiter.clone(),
                marker: marker.to_owned(),
                max_results,
                include_metadata,
                include_uncommitted,
            });
            match client.call(&op, Data::None)?.response {
                OpResponse::BlobList { items, next_marker } => Ok(Page::new(items, next_marker)),
                r => Err(ClientError::unexpected(r)),
            }
        })
    }
}

impl fmt::Debug for ContainerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ContainerClient").field(&self.name).finish()
    }
}

/// One blob of a container.
#[derive(Clone)]
pub struct BlobHandle {
    client: BlobClient,
    name: String,
    target: Checked<BlobRef>,
}

/// A submitted operation whose answer decodes to `T` ([`BlobHandle::submit_get`], …).
pub struct Pending<T> {
    op: PendingOp,
    finish: fn(OpResult) -> Result<T, ClientError>,
}

impl<T> Pending<T> {
    fn new(op: PendingOp, finish: fn(OpResult) -> Result<T, ClientError>) -> Self {
        Self { op, finish }
    }

    pub fn wait(self) -> Result<T, ClientError> {
        (self.finish)(self.op.wait()?)
    }

    /// [`Pending::wait`] for a request submitted with `parts` as its data,
    /// so it can be re-sent if its answer is lost ([`PendingOp::wait_with_data`]).
    pub fn wait_with_data(self, parts: &[&[u8]]) -> Result<T, ClientError> {
        (self.finish)(self.op.wait_with_data(parts)?)
    }

    /// The raw operation, for callers that read the data buffer in place.
    pub fn into_raw(self) -> PendingOp {
        self.op
    }
}

fn written(r: OpResult) -> Result<BlobWritten, ClientError> {
    match r.response {
        OpResponse::BlobWritten(w) => Ok(w),
        r => Err(ClientError::unexpected(r)),
    }
}

fn staged(r: OpResult) -> Result<u64, ClientError> {
    match r.response {
        OpResponse::BlockStaged { content_crc64 } => Ok(content_crc64),
        r => Err(ClientError::unexpected(r)),
    }
}

fn content(r: OpResult) -> Result<BlobContent, ClientError> {
    let got = in_place(r)?;
    Ok(BlobContent { properties: got.properties, data: got.data.to_vec() })
}

/// A GetBlob answer with its bytes left in the DMA buffer.
pub(super) fn in_place(r: OpResult) -> Result<BlobBytes, ClientError> {
    match r.response {
        OpResponse::BlobData { properties, length, .. } => {
            // The device says how much it wrote: check it against the buffer it was given.
            let cap = r.data.as_ref().map_or(0, |b| b.len() as u64);
            if length > cap {
                return Err(ProtocolError::DataOverrun { length, cap }.into());
            }
            let data = match r.data {
                Some(buf) => DmaBytes::new(buf, length as usize)?,
                None => DmaBytes::empty(),
            };
            Ok(BlobBytes { properties, data })
        }
        r => Err(ClientError::unexpected(r)),
    }
}

impl BlobHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client(&self) -> &BlobClient {
        &self.client
    }

    pub(crate) fn target(&self) -> Result<&BlobRef, ClientError> {
        self.target.get()
    }

    /// Store `data` as the blob in one PutBlob (at most the device's data
    /// limit; [`BlobHandle::put_stream`] takes anything larger).
    pub fn put(&self, data: &[u8]) -> Result<BlobWritten, ClientError> {
        self.put_opts(data, PutOptions::default())
    }

    pub fn put_opts(&self, data: &[u8], options: PutOptions) -> Result<BlobWritten, ClientError> {
        self.put_vectored_opts(&[data], options)
    }

    /// Like [`BlobHandle::put_opts`] with the bytes of `parts` in order.
    pub fn put_vectored_opts(&self, parts: &[&[u8]], options: PutOptions) -> Result<BlobWritten, ClientError> {
        let crc = parts_crc(parts);
        let w = self.submit_put_vectored(parts, crc, options)?.wait_with_data(parts)?;
        if w.content_crc64 != crc {
            return Err(ClientError::checksum_mismatch("stored blob differs from the source"));
        }
        Ok(w)
    }

    /// Submit a PutBlob of `data` without waiting.
    pub fn submit_put(&self, data: &[u8], options: PutOptions) -> Result<Pending<BlobWritten>, ClientError> {
        self.submit_put_vectored(&[data], crate::crc64(data), options)
    }

    fn submit_put_vectored(
        &self,
        parts: &[&[u8]],
        crc: u64,
        options: PutOptions,
    ) -> Result<Pending<BlobWritten>, ClientError> {
        let op = OpRequest::PutBlob(PutBlob {
            target: self.target()?.clone(),
            content_type: options.content_type,
            headers: options.headers,
            metadata: options.metadata,
            conditions: options.conditions,
            content_md5: None,
            content_crc64: Some(crc),
        });
        let op = match parts {
            [one] => self.client.submit(&op, Data::Out(one))?,
            _ => {
                let len = parts.iter().map(|p| p.len()).sum();
                let buf = fill(self.client.alloc_data(len)?, parts)?;
                self.client.submit(&op, Data::OutBuf(buf, len))?
            }
        };
        Ok(Pending::new(op, written))
    }

    /// The whole blob, read in windowed ranges pinned to one version and
    /// checked against its CRC (it must fit in memory; see
    /// [`BlobHandle::get_to_writer`]).
    pub fn get(&self) -> Result<Vec<u8>, ClientError> {
        Ok(self.get_opts(GetOptions::default())?.data)
    }

    /// With a range: one ranged GetBlob (up to the range's length, as the
    /// device clips it to the blob). Without: the whole blob as `get`.
    pub fn get_opts(&self, options: GetOptions) -> Result<BlobContent, ClientError> {
        let GetOptions { range, conditions } = options;
        match range {
            Some(r) => self.submit_get(r, conditions)?.wait(),
            None => {
                let properties = self.properties_opts(conditions)?;
                // A hint only: the length comes from the device.
                let mut data = Vec::with_capacity(properties.content_length.min(64 << 20) as usize);
                self.read_version(&properties, &mut data, None)?;
                Ok(BlobContent { properties, data })
            }
        }
    }

    /// Submit one ranged GetBlob without waiting (`range` must fit the device's data limit).
    pub fn submit_get(
        &self,
        range: std::ops::Range<u64>,
        conditions: Conditions,
    ) -> Result<Pending<BlobContent>, ClientError> {
        let length = range.end.saturating_sub(range.start);
        let op = OpRequest::GetBlob(GetBlob {
            target: self.target()?.clone(),
            range: Some(ByteRange { offset: range.start, length }),
            conditions,
        });
        let cap = usize::try_from(length).unwrap_or(usize::MAX);
        Ok(Pending::new(self.client.submit(&op, Data::In(cap))?, content))
    }

    /// One ranged GetBlob whose bytes stay in the DMA buffer the device
    /// wrote: no copy, the buffer is the caller's until it drops the answer.
    /// For reads the caller consumes at once or hands on as `bytes::Bytes`
    /// ([`DmaBytes::into_bytes`]); [`BlobHandle::get_opts`] copies instead.
    pub fn get_bytes(&self, range: std::ops::Range<u64>, conditions: Conditions) -> Result<BlobBytes, ClientError> {
        self.submit_get_bytes(range, conditions)?.wait()
    }

    /// [`BlobHandle::get_bytes`] without waiting.
    pub fn submit_get_bytes(
        &self,
        range: std::ops::Range<u64>,
        conditions: Conditions,
    ) -> Result<Pending<BlobBytes>, ClientError> {
        Ok(Pending::new(self.submit_get(range, conditions)?.into_raw(), in_place))
    }

    pub fn properties(&self) -> Result<BlobProperties, ClientError> {
        self.properties_opts(Conditions::none())
    }

    pub fn properties_opts(&self, conditions: Conditions) -> Result<BlobProperties, ClientError> {
        let op = OpRequest::GetBlobProperties { target: self.target()?.clone(), conditions };
        match self.client.call(&op, Data::None)?.response {
            OpResponse::BlobProperties(p) => Ok(p),
            r => Err(ClientError::unexpected(r)),
        }
    }

    pub fn delete(&self) -> Result<(), ClientError> {
        self.delete_opts(Conditions::none())
    }

    pub fn delete_opts(&self, conditions: Conditions) -> Result<(), ClientError> {
        let op = OpRequest::DeleteBlob { target: self.target()?.clone(), conditions };
        self.client.call(&op, Data::None).map(|_| ())
    }

    /// Replace all of the blob's metadata (Azure's Set Blob Metadata): its
    /// bytes and blocks stay, its ETag changes. Needs the device's
    /// `SET_PROPERTIES` capability (else `Unsupported`).
    pub fn set_metadata(&self, metadata: Metadata, conditions: Conditions) -> Result<BlobWritten, ClientError> {
        self.set(BlobUpdate::Metadata(metadata), conditions)
    }

    /// Replace the blob's Content-Type ("" clears it, as on Azure: the blob
    /// then has none); its other HTTP headers stay.
    pub fn set_content_type(&self, content_type: &str, conditions: Conditions) -> Result<BlobWritten, ClientError> {
        self.set(BlobUpdate::content_type(content_type), conditions)
    }

    /// Replace all of the blob's HTTP headers (Azure's Set Blob Properties):
    /// one left empty is cleared. Other headers than the type need a device
    /// of op version 2.
    pub fn set_http_headers(
        &self,
        content_type: &str,
        headers: ContentHeaders,
        conditions: Conditions,
    ) -> Result<BlobWritten, ClientError> {
        self.set(BlobUpdate::Properties { content_type: content_type.to_owned(), headers: Some(headers) }, conditions)
    }

    /// Make this blob a copy of `source` inside the device (Azure's
    /// synchronous Copy Blob): the bytes never cross the guest. Needs the
    /// `COPY` capability (else `Unsupported`).
    pub fn copy_from(&self, source: &BlobHandle, options: CopyOptions) -> Result<BlobWritten, ClientError> {
        let CopyOptions { source_conditions, conditions, metadata } = options;
        let op = OpRequest::CopyBlob(CopyBlob {
            source: source.target()?.clone(),
            target: self.target()?.clone(),
            source_conditions,
            conditions,
            metadata,
        });
        written(self.client.call(&op, Data::None)?)
    }

    fn set(&self, update: BlobUpdate, conditions: Conditions) -> Result<BlobWritten, ClientError> {
        let op = OpRequest::SetBlobProperties(SetBlobProperties { target: self.target()?.clone(), update, conditions });
        written(self.client.call(&op, Data::None)?)
    }

    pub fn block_list(&self, list_type: BlockListType) -> Result<Vec<BlockInfo>, ClientError> {
        let op = OpRequest::GetBlockList { target: self.target()?.clone(), list_type };
        match self.client.call(&op, Data::None)?.response {
            OpResponse::BlockList { blocks } => Ok(blocks),
            r => Err(ClientError::unexpected(r)),
        }
    }

    /// Submit a PutBlock of the bytes of `parts` under `id`; the answer is
    /// the CRC-64/NVME the device computed (it also checks it against `crc`).
    /// A leased blob takes it only under its `lease_id`.
    pub fn submit_block(
        &self,
        id: &BlockId,
        parts: &[&[u8]],
        crc: u64,
        lease_id: Option<LeaseId>,
    ) -> Result<Pending<u64>, ClientError> {
        let len = parts.iter().map(|p| p.len()).sum();
        let buf = fill(self.client.alloc_data(len)?, parts)?;
        let op = OpRequest::PutBlock(PutBlock {
            target: self.target()?.clone(),
            block_id: id.clone(),
            content_crc64: Some(crc),
            lease_id,
        });
        Ok(Pending::new(self.client.submit(&op, Data::OutBuf(buf, len))?, staged))
    }

    /// Make `blocks` (staged or committed) the blob's content, if the
    /// conditions hold. Entries with a CRC ([`ListedBlock::proven`]) commit
    /// only if the device holds exactly that block under the id; a device
    /// without the `BLOCK_LIST_CRC64` capability is sent the ids alone.
    pub fn commit_blocks<B: Into<ListedBlock>>(
        &self,
        blocks: impl IntoIterator<Item = B>,
        options: PutOptions,
    ) -> Result<BlobWritten, ClientError> {
        let proofs = self.client.device_config().capabilities & caps::BLOCK_LIST_CRC64 != 0;
        let blocks = blocks
            .into_iter()
            .map(Into::into)
            .map(|b: ListedBlock| if proofs { b } else { ListedBlock::unproven(b.id) })
            .collect();
        let op = OpRequest::PutBlockList(PutBlockList {
            target: self.target()?.clone(),
            blocks,
            content_type: options.content_type,
            headers: options.headers,
            metadata: options.metadata,
            conditions: options.conditions,
        });
        written(self.client.call(&op, Data::None)?)
    }

    /// A windowed uploader of this blob's blocks.
    pub fn block_uploader(&self) -> BlockUploader {
        BlockUploader::new(self.clone())
    }
}

impl fmt::Debug for BlobHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let container = match &self.target {
            Checked::Valid(t) => t.container.as_str().to_owned(),
            Checked::Invalid { .. } => "?".into(),
        };
        f.debug_struct("BlobHandle").field("container", &container).field("blob", &self.name).finish()
    }
}

pub(super) fn parts_crc(parts: &[&[u8]]) -> u64 {
    let mut d = crate::Crc64::new();
    parts.iter().for_each(|p| d.write(p));
    d.sum64()
}

/// `buf` with the bytes of `parts` copied in, in order.
pub(super) fn fill(mut buf: crate::dma::DmaBuf, parts: &[&[u8]]) -> Result<crate::dma::DmaBuf, ClientError> {
    let mut at = 0;
    for p in parts {
        buf.write_at(at, p)?;
        at += p.len();
    }
    Ok(buf)
}
