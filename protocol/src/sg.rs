//! Guest-physical scatter-gather lists: where a buffer lies in guest memory.

use crate::framing::FramingError;

/// One contiguous guest-physical span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
}

/// Total bytes of a list.
pub fn total_len(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Bytes `[offset, offset + len)` of the concatenation of `segs`.
pub fn sub_range(segs: &[Segment], offset: u64, len: u64) -> Result<Vec<Segment>, FramingError> {
    let end = offset.checked_add(len).ok_or(FramingError::OutOfRange)?;
    if end > total_len(segs) {
        return Err(FramingError::OutOfRange);
    }
    let mut out = Vec::new();
    let mut pos = 0u64;
    for s in segs {
        let (s_start, s_end) = (pos, pos + u64::from(s.len));
        pos = s_end;
        let (a, b) = (offset.max(s_start), end.min(s_end));
        if a < b {
            // a - s_start < s.len, so both fit in u32 and addr + that cannot
            // overflow (segments are checked on construction).
            out.push(Segment { addr: s.addr + (a - s_start), len: (b - a) as u32 });
        }
        if s_end >= end {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_across_segments() {
        let segs = [Segment { addr: 0x1000, len: 10 }, Segment { addr: 0x9000, len: 10 }];
        assert_eq!(
            sub_range(&segs, 5, 10).unwrap(),
            vec![Segment { addr: 0x1005, len: 5 }, Segment { addr: 0x9000, len: 5 }]
        );
        assert_eq!(sub_range(&segs, 20, 0).unwrap(), vec![]);
        assert!(sub_range(&segs, 15, 6).is_err());
        assert!(sub_range(&segs, u64::MAX, 2).is_err());
    }
}
