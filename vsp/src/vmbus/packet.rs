//! What the service does with one packet the guest sent: serve it, answer it with a status, or
//! drop it (nothing to answer to).

use vmblob_protocol::BlobError;
use vmblob_protocol::framing::vmbus::{
    FLAG_COMPLETION_REQUESTED, GpaDirectFrame, Packet, PacketDescriptor, PacketError, parse_packet,
};
use zerocopy::FromBytes;

/// The verdict on one packet.
#[derive(Debug)]
pub(super) enum Classified {
    /// A blob request to admit and serve.
    Request(GpaDirectFrame),
    /// Well-formed enough to answer: completion requested, id ≠ 0.
    Refuse { transaction_id: u64, status: BlobError },
    /// No completion can be sent (none requested, id 0, a completion from the guest).
    Drop(&'static str),
}

/// Classifies one packet as the ring copied it out (its descriptor already checked by the ring).
pub(super) fn classify(bytes: &[u8], max_pages: usize) -> Classified {
    let Ok((d, _)) = PacketDescriptor::read_from_prefix(bytes) else {
        return Classified::Drop("shorter than a descriptor");
    };
    let transaction_id = d.transaction_id.get();
    let answerable = d.flags.get() & FLAG_COMPLETION_REQUESTED != 0 && transaction_id != 0;
    let refuse = |status| {
        if answerable {
            Classified::Refuse { transaction_id, status }
        } else {
            Classified::Drop("malformed, and no completion requested or id 0")
        }
    };
    match parse_packet(bytes, max_pages) {
        Ok(packet @ Packet::GpaDirect { .. }) => match GpaDirectFrame::from_packet(packet) {
            Ok(frame) => Classified::Request(frame),
            // More than one range, or no room for the 56-byte header.
            Err(_) => refuse(BlobError::InvalidRequest),
        },
        Ok(Packet::InBand { .. }) => refuse(BlobError::Unsupported),
        Ok(Packet::Completion { .. }) => Classified::Drop("a completion from the guest: the host sends no requests"),
        Err(PacketError::TooManyPages { .. }) => refuse(BlobError::TooLarge),
        Err(PacketError::BadType(_)) => refuse(BlobError::Unsupported),
        Err(_) => refuse(BlobError::InvalidRequest),
    }
}

#[cfg(test)]
mod tests {
    use vmblob_protocol::framing::vmbus::{GpaRange, encode_completion, encode_gpa_direct, encode_inband};

    use super::*;

    fn range(pfns: Vec<u64>) -> GpaRange {
        GpaRange { byte_count: pfns.len() as u32 * 4096, byte_offset: 0, pfns }
    }

    fn status(c: Classified) -> Option<(u64, BlobError)> {
        match c {
            Classified::Refuse { transaction_id, status } => Some((transaction_id, status)),
            _ => None,
        }
    }

    #[test]
    fn a_blob_request_is_served() {
        let p = encode_gpa_direct(3, &[range(vec![1])], &[0; 56]);
        assert!(matches!(classify(&p, 8), Classified::Request(f) if f.transaction_id == 3));
    }

    #[test]
    fn answerable_garbage_gets_a_status() {
        let two = encode_gpa_direct(4, &[range(vec![1]), range(vec![2])], &[0; 56]);
        assert_eq!(status(classify(&two, 8)), Some((4, BlobError::InvalidRequest)));
        let short = encode_gpa_direct(5, &[range(vec![1])], &[0; 8]);
        assert_eq!(status(classify(&short, 8)), Some((5, BlobError::InvalidRequest)));
        let many = encode_gpa_direct(6, &[range((1..=9).collect())], &[0; 56]);
        assert_eq!(status(classify(&many, 8)), Some((6, BlobError::TooLarge)));
        assert_eq!(status(classify(&encode_inband(7, true, b"hi"), 8)), Some((7, BlobError::Unsupported)));
        let mut no_ranges = encode_gpa_direct(8, &[range(vec![1])], &[0; 56]);
        no_ranges[20..24].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(status(classify(&no_ranges, 8)), Some((8, BlobError::InvalidRequest)));
        let mut xfer = encode_inband(9, true, b"hi");
        xfer[0] = 7;
        assert_eq!(status(classify(&xfer, 8)), Some((9, BlobError::Unsupported)));
    }

    #[test]
    fn unanswerable_packets_are_dropped() {
        assert!(matches!(classify(&encode_inband(7, false, b"hi"), 8), Classified::Drop(_)));
        let id0 = encode_gpa_direct(0, &[range(vec![1])], &[0; 56]);
        assert!(matches!(classify(&id0, 8), Classified::Drop(_)));
        assert!(matches!(classify(&encode_completion(3, &[0; 12]), 8), Classified::Drop(_)));
        assert!(matches!(classify(&[0; 4], 8), Classified::Drop(_)));
    }
}
