//! Cursor files: `cursor-NAME` holds one line `v1 SEGMENT OFFSET SEQ`, where destination
//! NAME resumes. Written to a temporary file, fsynced, renamed over the old one; the caller
//! fsyncs the directory once for all cursors it wrote.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::Segment;
use super::format::SEGMENT_HEADER;
use crate::queue::Position;

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("cursor-{name}"))
}

/// Writes destination `name`'s cursor (the directory still needs an fsync).
///
/// # Errors
/// The file system's.
pub(super) fn write(dir: &Path, name: &str, p: Position) -> io::Result<()> {
    let tmp = dir.join(format!(".cursor-{name}.tmp"));
    let mut f = File::create(&tmp)?;
    writeln!(f, "v1 {} {} {}", p.segment, p.offset, p.seq)?;
    f.sync_data()?;
    fs::rename(&tmp, path(dir, name))
}

fn parse(text: &str) -> Option<Position> {
    let mut parts = text.split_whitespace();
    if parts.next()? != "v1" {
        return None;
    }
    let segment = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    Some(Position {
        seq,
        segment,
        offset,
    })
}

/// Where destination `name` resumes: its cursor when it points into the recovered queue,
/// the oldest record when it is missing, damaged or points into a deleted segment (whose
/// records were delivered), the end when it points past it.
pub(super) fn load(
    dir: &Path,
    name: &str,
    oldest: Position,
    end: Position,
    segments: &BTreeMap<u64, Segment>,
) -> Position {
    let path = path(dir, name);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return oldest,
        Err(e) => {
            tracing::warn!(cursor = %path.display(), error = %e, "cannot read cursor; resending from the oldest record");
            return oldest;
        }
    };
    match parse(&text) {
        Some(p) if p.segment < oldest.segment => oldest,
        Some(p) if p > end => {
            tracing::warn!(cursor = %path.display(), "cursor is past the end of the queue; starting at the end");
            end
        }
        Some(p)
            if segments
                .get(&p.segment)
                .is_some_and(|s| p.offset <= s.len && p.offset >= SEGMENT_HEADER) =>
        {
            p
        }
        _ => {
            tracing::warn!(cursor = %path.display(), "cursor is invalid; resending from the oldest record");
            oldest
        }
    }
}
