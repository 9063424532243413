//! The bytes of a segment file, encoded and decoded here and nowhere else (the layout is
//! documented in [`super`]): the 16-byte segment header and each record's length + CRC32C
//! header. The reader and start-up recovery both decode records with [`decode`].

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

const MAGIC: &[u8; 4] = b"KARQ";
const FORMAT_VERSION: u32 = 1;
/// Bytes of the segment header.
pub(super) const SEGMENT_HEADER: u64 = 16;
/// Bytes of a record header (length, CRC32C).
pub(super) const RECORD_HEADER: u64 = 8;
/// Readers accept at most this many bytes per record; a larger length field is corruption.
pub(super) const MAX_RECORD: u64 = 1 << 30;

/// The path of segment `id` in `dir`.
pub(super) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// The segment id of a file name, if it is a segment's.
pub(super) fn segment_id(file_name: &str) -> Option<u64> {
    file_name.strip_suffix(".seg").and_then(|s| s.parse().ok())
}

/// The header of a segment whose first record has sequence number `first_seq`.
pub(super) fn segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER as usize] {
    let mut h = [0u8; SEGMENT_HEADER as usize];
    h[..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[8..].copy_from_slice(&first_seq.to_le_bytes());
    h
}

/// The first sequence number from a segment header.
///
/// # Errors
/// `InvalidData` when the magic or the version is wrong.
pub(super) fn parse_segment_header(h: &[u8; SEGMENT_HEADER as usize]) -> io::Result<u64> {
    if &h[..4] != MAGIC || h[4..8] != FORMAT_VERSION.to_le_bytes() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a queue segment (bad magic or version)",
        ));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&h[8..16]);
    Ok(u64::from_le_bytes(seq))
}

/// The header of a record holding `payload`.
///
/// # Errors
/// When the payload is above 4 GiB.
pub(super) fn record_header(payload: &[u8]) -> io::Result<[u8; RECORD_HEADER as usize]> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("record above 4 GiB"))?;
    let mut h = [0u8; RECORD_HEADER as usize];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    Ok(h)
}

/// What the bytes at the start of a buffer hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decoded {
    /// A whole record whose CRC matches; its payload is `buf[RECORD_HEADER..size]`.
    Good {
        /// Header plus payload.
        size: u64,
    },
    /// A whole record whose CRC does not match: skipped.
    BadCrc {
        /// Header plus payload.
        size: u64,
    },
    /// The buffer ends inside the record: `need` bytes from its start are required.
    Short {
        /// Header plus payload, when the header was complete.
        need: u64,
    },
    /// A length no record can have: the rest of the segment is damaged.
    Damaged,
}

/// Decodes the record at the start of `buf`.
pub(super) fn decode(buf: &[u8]) -> Decoded {
    let Some(header) = buf.get(..RECORD_HEADER as usize) else {
        return Decoded::Short {
            need: RECORD_HEADER,
        };
    };
    let len = u64::from(u32::from_le_bytes([
        header[0], header[1], header[2], header[3],
    ]));
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_RECORD {
        return Decoded::Damaged;
    }
    let size = RECORD_HEADER + len;
    let Some(payload) = usize::try_from(size)
        .ok()
        .and_then(|end| buf.get(RECORD_HEADER as usize..end))
    else {
        return Decoded::Short { need: size };
    };
    if crc32c::crc32c(payload) == crc {
        Decoded::Good { size }
    } else {
        Decoded::BadCrc { size }
    }
}

/// Reads `len` bytes of `file` at `offset`. The file's position moves: each reader has a
/// `File` of its own.
///
/// The buffer is not zeroed first: `read_to_end` reads into its spare capacity, where a
/// zeroed `vec!` cost as much as the read (4% of the relay's instructions in callgrind with
/// the disk queue).
///
/// # Errors
/// The read's error (a short file reads as `UnexpectedEof`).
pub(super) fn read_at(file: &std::fs::File, offset: u64, len: u64) -> io::Result<Bytes> {
    use std::io::{Read, Seek, SeekFrom};
    let mut buf = Vec::with_capacity(usize::try_from(len).map_err(io::Error::other)?);
    let mut file = file;
    file.seek(SeekFrom::Start(offset))?;
    file.take(len).read_to_end(&mut buf)?;
    if (buf.len() as u64) < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_named() {
        let mut buf = record_header(b"hello").unwrap().to_vec();
        buf.extend_from_slice(b"hello");
        assert_eq!(decode(&buf), Decoded::Good { size: 13 });
        assert_eq!(&buf[RECORD_HEADER as usize..13], b"hello");
        assert_eq!(decode(&buf[..10]), Decoded::Short { need: 13 });
        assert_eq!(decode(&buf[..3]), Decoded::Short { need: 8 });
        buf[10] ^= 1;
        assert_eq!(decode(&buf), Decoded::BadCrc { size: 13 });
        let huge = (u32::MAX).to_le_bytes();
        assert_eq!(decode(&[huge, [0; 4]].concat()), Decoded::Damaged);
        assert_eq!(parse_segment_header(&segment_header(42)).unwrap(), 42);
        assert!(parse_segment_header(&[0; 16]).is_err());
        assert_eq!(segment_id("00000000000000000007.seg"), Some(7));
        assert_eq!(segment_id("cursor-a"), None);
    }
}
