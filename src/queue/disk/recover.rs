//! Start-up: lock the directory, scan the segments (one record decoder, shared with the
//! reader), cut a torn tail off the newest segment, and load each destination's cursor.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use tokio::sync::Notify;

use super::format::{self, Decoded, SEGMENT_HEADER};
use super::tail::Tail;
use super::writer::ActiveSegment;
use super::{Segment, Shared, State, cursor};
use crate::queue::{Position, QueueError};

/// What a scan of one segment found.
struct Scan {
    first_seq: u64,
    /// Offset and sequence number after the last good record.
    good_end: (u64, u64),
    /// Offset and sequence number after the last record of any kind.
    end: (u64, u64),
    /// Records with a bad CRC before `end`, and before `good_end`.
    bad: (u64, u64),
    /// Offset, size and sequence number of the last good record.
    last_good: Option<(u64, u64, u64)>,
}

/// Reads a segment's records with [`format::decode`], a chunk at a time.
fn scan(file: &File, file_len: u64, start_seq: u64) -> io::Result<Scan> {
    let header = format::read_at(file, 0, SEGMENT_HEADER)?;
    let mut h = [0u8; SEGMENT_HEADER as usize];
    h.copy_from_slice(&header);
    let first_seq = format::parse_segment_header(&h)?;
    let mut offset = SEGMENT_HEADER;
    let mut seq = first_seq.max(start_seq);
    let mut s = Scan {
        first_seq,
        good_end: (offset, seq),
        end: (offset, seq),
        bad: (0, 0),
        last_good: None,
    };
    let mut chunk = bytes::Bytes::new();
    let mut at = 0usize;
    loop {
        let decoded = format::decode(&chunk[at..]);
        let size = match decoded {
            Decoded::Good { size } | Decoded::BadCrc { size } => size,
            Decoded::Short { need } => {
                let available = file_len - offset;
                if need > available {
                    break;
                }
                chunk = format::read_at(file, offset, available.min(need.max(4 << 20)))?;
                at = 0;
                continue;
            }
            Decoded::Damaged => break,
        };
        offset += size;
        seq += 1;
        at += size as usize;
        if matches!(decoded, Decoded::Good { .. }) {
            s.last_good = Some((offset - size, size, seq - 1));
            s.good_end = (offset, seq);
            s.bad.1 = s.bad.0;
        } else {
            s.bad.0 += 1;
        }
        s.end = (offset, seq);
    }
    Ok(s)
}

/// The last record the queue holds, with its sequence number.
pub(super) type LastRecord = Option<(u64, Vec<u8>)>;

/// Scans the directory, truncates a torn tail, loads cursors; returns the shared state, the
/// directory lock, the active segment open for appending and the last record.
pub(super) fn recover(
    dir: &Path,
    names: &[String],
) -> Result<(Shared, File, ActiveSegment, LastRecord), QueueError> {
    create_private_dir(dir)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    lock.try_lock().map_err(|e| {
        io::Error::other(format!(
            "queue directory {} is in use by another process ({e})",
            dir.display()
        ))
    })?;
    let mut ids: Vec<u64> = Vec::new();
    for entry in fs::read_dir(dir)? {
        if let Some(id) = format::segment_id(&entry?.file_name().to_string_lossy()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    let mut segments = BTreeMap::new();
    let mut end = Position::default();
    let last = ids.last().copied();
    let mut last_record: Option<(u64, u64, u64, u64)> = None;
    for id in ids {
        let path = format::segment_path(dir, id);
        let file = File::open(&path)?;
        let file_len = file.metadata()?.len();
        let found = match scan(&file, file_len, end.seq) {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(segment = %path.display(), error = %e, "unreadable queue segment header; moving it aside");
                fs::rename(&path, path.with_extension("corrupt"))?;
                continue;
            }
        };
        // In the newest segment, bad records after the last good one are the torn end of a
        // write that was never acknowledged.
        let ((offset, seq), bad) = if Some(id) == last {
            (found.good_end, found.bad.1)
        } else {
            (found.end, found.bad.0)
        };
        if offset < file_len {
            if Some(id) == last {
                tracing::warn!(segment = %path.display(), kept = offset, dropped = file_len - offset,
                    "queue segment has a torn tail (interrupted unacknowledged write); truncating");
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(offset)?;
                f.sync_all()?;
            } else {
                tracing::error!(segment = %path.display(), lost_bytes = file_len - offset,
                    "queue segment is corrupt in the middle; records after the damage in this segment are skipped");
            }
        }
        if bad > 0 {
            tracing::error!(segment = %path.display(), records = bad, "queue records failed their CRC and will be skipped");
        }
        if let Some((at, size, seq)) = found.last_good.filter(|(at, _, _)| *at < offset) {
            last_record = Some((id, at, size, seq));
        }
        segments.insert(
            id,
            Segment {
                first_seq: found.first_seq,
                len: offset.min(file_len),
            },
        );
        end = Position {
            seq,
            segment: id,
            offset,
        };
    }
    let active = match segments.iter().next_back() {
        Some((&id, seg)) => ActiveSegment::open_at(dir, id, seg.first_seq, seg.len)?,
        None => {
            let a = ActiveSegment::create(dir, 1, 0)?;
            segments.insert(
                1,
                Segment {
                    first_seq: 0,
                    len: SEGMENT_HEADER,
                },
            );
            end = Position {
                seq: 0,
                segment: 1,
                offset: SEGMENT_HEADER,
            };
            a
        }
    };
    let oldest = segments
        .iter()
        .next()
        .map(|(&id, s)| Position {
            seq: s.first_seq,
            segment: id,
            offset: SEGMENT_HEADER,
        })
        .unwrap_or(end);
    let committed: Vec<Position> = names
        .iter()
        .map(|name| cursor::load(dir, name, oldest, end, &segments))
        .collect();
    let bytes = segments.values().map(|s| s.len).sum();
    if end.seq > oldest.seq {
        tracing::info!(dir = %dir.display(), records = end.seq - oldest.seq, bytes, "queue recovered");
    }
    let shared = Shared {
        dir: dir.to_owned(),
        names: names.to_vec(),
        state: Mutex::new(State {
            segments,
            durable: end,
            persisted: committed.clone(),
            committed,
            bytes,
            closed: false,
            tail: Tail::new(0),
        }),
        appended: Notify::new(),
        skipped_records: AtomicU64::new(0),
        dropped_oldest: AtomicU64::new(0),
    };
    let last_record = match last_record {
        Some((id, at, size, seq)) => {
            let file = File::open(format::segment_path(dir, id))?;
            let record = format::read_at(&file, at, size)?;
            Some((seq, record[format::RECORD_HEADER as usize..].to_vec()))
        }
        None => None,
    };
    Ok((shared, lock, active, last_record))
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create queue directory {}: {e}", dir.display()),
            )
        })
}
