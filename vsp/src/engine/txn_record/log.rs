//! The transaction record's file: `record.log` in the record's directory, an
//! 8-byte magic and then one frame per recorded outcome:
//!
//! ```text
//! u32 LE  payload length (at most MAX_PAYLOAD)
//! u64 LE  CRC-64/NVME of the payload
//! payload: txn (16) | request digest u64 LE | recorded at, ms since the epoch u64 LE
//!          | status u32 LE | op-response bytes (the rest)
//! ```
//!
//! Loading stops at the first frame that is short, too long or fails its CRC
//! (a torn append after a crash, or corruption) and cuts the file there, so
//! nothing after it is ever misread and new appends follow good frames only.
//! Compaction writes the live frames to `record.log.new`, syncs it and
//! renames it over the log.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{Outcome, Recorded};
use crate::store::TxnId;

pub const MAGIC: [u8; 8] = *b"VMBTXN\0\x01";
const LOG: &str = "record.log";
const COMPACTING: &str = "record.log.new";
const FRAME_HEADER: usize = 4 + 8;
const FIXED_PAYLOAD: usize = 16 + 8 + 8 + 4;
/// Largest op response recorded: a BlobWritten or an error message is far
/// smaller; anything bigger is corruption (or not worth recording).
pub const MAX_RESPONSE: usize = 4096;
const MAX_PAYLOAD: usize = FIXED_PAYLOAD + MAX_RESPONSE;

/// The open log, appended to under the record's lock.
pub struct LogFile {
    dir: PathBuf,
    file: File,
    mode: u32,
    /// Frames in the file, live or not (compaction bound).
    pub frames: usize,
}

pub fn encode(txn: &TxnId, r: &Recorded) -> Vec<u8> {
    let mut payload = Vec::with_capacity(FIXED_PAYLOAD + r.outcome.response.len());
    payload.extend_from_slice(txn);
    payload.extend_from_slice(&r.outcome.request_digest.to_le_bytes());
    payload.extend_from_slice(&r.at_ms.to_le_bytes());
    payload.extend_from_slice(&r.outcome.status.to_le_bytes());
    payload.extend_from_slice(&r.outcome.response);
    let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crate::store::crc64(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    frame
}

fn decode_payload(p: &[u8]) -> Option<(TxnId, Recorded)> {
    let txn: TxnId = p.get(..16)?.try_into().ok()?;
    let u64_at = |at: usize| p.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    let request_digest = u64_at(16)?;
    let at_ms = u64_at(24)?;
    let status = u32::from_le_bytes(p.get(32..36)?.try_into().ok()?);
    let response = p.get(FIXED_PAYLOAD..)?.to_vec();
    Some((txn, Recorded { at_ms, outcome: Outcome { request_digest, status, response } }))
}

/// Outcomes read back, oldest first.
pub type Frames = Vec<(TxnId, Recorded)>;

/// Read good frames from `r` in order; returns them and the byte length they
/// (with the magic) cover. `None` when the magic is wrong.
fn read_frames(r: &mut impl Read) -> io::Result<Option<(Frames, u64)>> {
    let mut magic = [0u8; 8];
    if read_exact_or_eof(r, &mut magic)? != 8 || magic != MAGIC {
        return Ok(None);
    }
    let mut good = 8u64;
    let mut out = Vec::new();
    loop {
        let mut hdr = [0u8; FRAME_HEADER];
        if read_exact_or_eof(r, &mut hdr)? != FRAME_HEADER {
            break;
        }
        let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        let crc = u64::from_le_bytes(hdr[4..].try_into().expect("8 bytes"));
        if !(FIXED_PAYLOAD..=MAX_PAYLOAD).contains(&len) {
            break;
        }
        let mut payload = vec![0u8; len];
        if read_exact_or_eof(r, &mut payload)? != len || crate::store::crc64(&payload) != crc {
            break;
        }
        let Some(frame) = decode_payload(&payload) else { break };
        out.push(frame);
        good += (FRAME_HEADER + len) as u64;
    }
    Ok(Some((out, good)))
}

/// Like `read_exact`, but a short read at the end is a count, not an error.
fn read_exact_or_eof(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl LogFile {
    /// Open (creating) the log in `dir`, returning it and the frames it held.
    /// `mode`: the directory's permission bits (the file's drop the x bits).
    pub fn open(dir: &Path, mode: u32) -> io::Result<(LogFile, Frames)> {
        fs::DirBuilder::new().recursive(true).mode(mode).create(dir)?;
        // A compaction that did not reach its rename is discarded.
        let _ = fs::remove_file(dir.join(COMPACTING));
        let path = dir.join(LOG);
        let file_mode = mode & 0o666;
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(file_mode).open(&path)?;
        let frames = match read_frames(&mut BufReader::new(&mut file))? {
            Some((frames, good)) => {
                if good < file.metadata()?.len() {
                    log::warn!(
                        "transaction record {}: torn or corrupt tail after {good} bytes cut off",
                        path.display()
                    );
                    file.set_len(good)?;
                }
                frames
            }
            None => {
                if file.metadata()?.len() > 0 {
                    log::warn!("transaction record {}: not a record file; starting empty", path.display());
                }
                file.set_len(0)?;
                file.write_all_at(&MAGIC, 0)?;
                file.sync_data()?;
                Vec::new()
            }
        };
        // Appends go to the end (after the cut, if any).
        let file = OpenOptions::new().append(true).open(&path)?;
        let n = frames.len();
        Ok((LogFile { dir: dir.to_owned(), file, mode: file_mode, frames: n }, frames))
    }

    /// Append one frame. It reaches the kernel before this returns, so it
    /// survives a crash of the daemon (not necessarily a host power loss:
    /// the store's current-txn check covers those, see PROTOCOL.md §11.2).
    pub fn append(&mut self, frame: &[u8]) -> io::Result<()> {
        self.file.write_all(frame)?;
        self.frames += 1;
        Ok(())
    }

    /// Replace the log with `live` frames (already encoded), crash-safely.
    pub fn compact<'a>(&mut self, live: impl Iterator<Item = &'a [u8]>) -> io::Result<()> {
        let tmp = self.dir.join(COMPACTING);
        let mut out = OpenOptions::new().write(true).create(true).truncate(true).mode(self.mode).open(&tmp)?;
        let mut buf = io::BufWriter::new(&mut out);
        buf.write_all(&MAGIC)?;
        let mut n = 0;
        for f in live {
            buf.write_all(f)?;
            n += 1;
        }
        buf.flush()?;
        drop(buf);
        out.sync_all()?;
        let path = self.dir.join(LOG);
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.file = OpenOptions::new().append(true).open(&path)?;
        self.frames = n;
        Ok(())
    }
}

#[cfg(test)]
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join(LOG)
}
