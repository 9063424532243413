//! `kube-audit-relay verify`: reads what receivers wrote (one RFC 5424 record per line, as
//! rsyslog's `%rawmsg%` or syslog-ng's raw message, with or without an octet-count prefix)
//! and proves the trail complete and unaltered, or says exactly where it is not.
//!
//! Per chain it checks every link (`h_N` from `h_{N-1}`), every checkpoint and start
//! signature, that each checkpoint's head is the chain value of the record it names, that
//! the sequence numbers are dense, that each file holds them in order (a resend of an
//! earlier record is a duplicate, not a reordering) and that the trail ends with the relay's
//! final checkpoint. Findings name the kind, the sequence numbers, the file and the line.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use serde::Serialize;

use super::keys::PublicKey;
use super::{Checkpoint, MSGID_CHECKPOINT, MSGID_START, Start, TRAIL_SD, genesis, link, sha256};
use crate::syslog::parse_strict;

/// Input that cannot be read (exit code 2, apart from integrity failures).
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct VerifyError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// What `verify` found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Sequence numbers absent from the files: deleted, or never delivered.
    Missing,
    /// A record whose bytes do not give its chain value.
    Modified,
    /// A record that belongs to no signed chain in these files.
    Inserted,
    /// A record that a file holds after a later one.
    Reordered,
    /// Two different records with the same sequence number.
    Conflict,
    /// A checkpoint or start record whose signature does not verify.
    BadSignature,
    /// A checkpoint or start record signed with a key not given with `--key`.
    UnknownKey,
    /// A checkpoint whose head is not the chain value of the record it names.
    CheckpointMismatch,
    /// Records no checkpoint vouches for (after the last one of their stretch of the chain).
    Unsigned,
    /// The chain does not end with the relay's final checkpoint: what followed could have
    /// been cut (or the relay is still writing).
    OpenEnd,
    /// Nothing of a trail in the files.
    NoTrail,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// Where a record was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// The file, as given.
    pub file: String,
    /// 1-based line.
    pub line: u64,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What.
    pub kind: Kind,
    /// In which chain.
    pub chain: String,
    /// The first sequence number concerned.
    pub from: u64,
    /// The last sequence number concerned.
    pub to: u64,
    /// Where (the records concerned, when they are in the files).
    pub at: Vec<Location>,
    /// In words.
    pub detail: String,
}

/// One chain's summary.
#[derive(Debug, Clone, Serialize)]
pub struct ChainSummary {
    /// Its id.
    pub chain: String,
    /// Lowest and highest sequence number seen.
    pub first: u64,
    /// Highest sequence number seen.
    pub last: u64,
    /// Distinct records.
    pub records: u64,
    /// Valid checkpoints.
    pub checkpoints: u64,
    /// Key ids that signed valid checkpoints.
    pub keys: Vec<String>,
    /// Whether a valid start record begins it in these files.
    pub started: bool,
    /// Whether it ends with a valid final checkpoint.
    pub finished: bool,
}

/// Everything `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Lines read.
    pub lines: u64,
    /// Lines that are not trail records (counted and skipped).
    pub other_lines: u64,
    /// Trail records read, copies included.
    pub records: u64,
    /// Distinct records whose link verified and that a valid signature vouches for.
    pub verified: u64,
    /// Extra copies of a record, byte for byte the same (resends): fine.
    pub duplicates: u64,
    /// The chains.
    pub chains: Vec<ChainSummary>,
    /// What is wrong; empty for a complete, unmodified trail.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether the files hold a complete, unmodified trail.
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// `verify`'s settings.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Public keys checkpoints may be signed with (several across a rotation).
    pub keys: Vec<PublicKey>,
    /// Accept a trail that does not end with a final checkpoint (a relay still running).
    pub allow_open_end: bool,
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Event,
    /// Index into the checkpoints read (u32: entries stay small, ten million of them).
    Checkpoint(u32),
    /// Index into the start records read.
    Start(u32),
}

/// One trail record, as little as the checks need.
#[derive(Debug, Clone)]
struct Entry {
    chain: u32,
    n: u64,
    h: [u8; 32],
    d: [u8; 32],
    fingerprint: u64,
    file: u32,
    line: u64,
    role: Role,
}

/// A line's trail record, if it is one.
/// (sequence number, chain, chain value, MSG digest, MSGID, MSG, fingerprint)
type Parsed<'a> = (u64, String, [u8; 32], [u8; 32], &'a str, &'a [u8], u64);

fn parse_line(line: &[u8]) -> Option<Parsed<'_>> {
    // An octet-count prefix (`LEN SP`) goes first, when the receiver kept it.
    let digits = line.iter().take_while(|b| b.is_ascii_digit()).count();
    let line =
        if digits > 0 && line.get(digits) == Some(&b' ') && line.get(digits + 1) == Some(&b'<') {
            &line[digits + 1..]
        } else {
            line
        };
    let m = parse_strict(line).ok()?;
    let sd = m.structured_data;
    let n = sd
        .strip_prefix("[meta sequenceId=\"")
        .and_then(|r| r.get(..r.find('"')?))
        .and_then(|n| n.parse().ok())?;
    let at = sd.find(&format!("[{TRAIL_SD}"))?;
    let element = &sd[at..];
    let element = &element[..element.find(']')? + 1];
    let param = |name: &str| -> Option<&str> {
        let key = format!(" {name}=\"");
        let start = element.find(&key)? + key.len();
        let len = element[start..].find('"')?;
        Some(&element[start..start + len])
    };
    let chain = param("chain")?.to_owned();
    let h = super::unhex32(param("h")?)?;
    let d = sha256(&[m.msg]);
    let header = &line[..line.len() - m.msg.len()];
    Some((n, chain, h, d, m.msgid, m.msg, fingerprint(header, &d)))
}

/// Identifies a record's bytes for telling copies apart: the header's hash with the MSG's
/// digest (already computed), so the MSG is not hashed twice.
fn fingerprint(header: &[u8], msg_digest: &[u8; 32]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let mut first = [0u8; 8];
    first.copy_from_slice(&msg_digest[..8]);
    BuildHasherDefault::<DefaultHasher>::default().hash_one(header) ^ u64::from_le_bytes(first)
}

/// Verifies the trail in `files` (read in the order given).
///
/// # Errors
/// [`VerifyError`] when a file cannot be read.
pub fn verify(files: &[PathBuf], options: &Options) -> Result<Report, VerifyError> {
    let mut names: Vec<String> = Vec::new();
    let mut chains: Vec<String> = Vec::new();
    let mut chain_index: HashMap<String, u32> = HashMap::new();
    let mut entries: Vec<Entry> = Vec::new();
    let mut checkpoints: Vec<Option<Checkpoint>> = Vec::new();
    let mut starts: Vec<Option<Start>> = Vec::new();
    let (mut lines, mut other) = (0u64, 0u64);
    for (file_no, path) in files.iter().enumerate() {
        names.push(path.display().to_string());
        let err = |source| VerifyError {
            path: path.clone(),
            source,
        };
        let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path).map_err(err)?);
        let mut buf = Vec::with_capacity(64 << 10);
        let mut line_no = 0u64;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).map_err(err)? == 0 {
                break;
            }
            line_no += 1;
            lines += 1;
            while matches!(buf.last(), Some(b'\n' | b'\r')) {
                buf.pop();
            }
            let Some((n, chain, h, d, msgid, msg, fingerprint)) = parse_line(&buf) else {
                other += 1;
                continue;
            };
            let next = u32::try_from(chains.len()).unwrap_or(u32::MAX);
            let chain_no = *chain_index.entry(chain.clone()).or_insert_with(|| {
                chains.push(chain.clone());
                next
            });
            let role = match msgid {
                MSGID_CHECKPOINT => {
                    checkpoints.push(serde_json::from_slice(msg).ok());
                    Role::Checkpoint(u32::try_from(checkpoints.len() - 1).unwrap_or(u32::MAX))
                }
                MSGID_START => {
                    starts.push(serde_json::from_slice(msg).ok());
                    Role::Start(u32::try_from(starts.len() - 1).unwrap_or(u32::MAX))
                }
                _ => Role::Event,
            };
            entries.push(Entry {
                chain: chain_no,
                n,
                h,
                d,
                fingerprint,
                file: u32::try_from(file_no).unwrap_or(u32::MAX),
                line: line_no,
                role,
            });
        }
    }
    let records = entries.len() as u64;
    let mut report = Report {
        lines,
        other_lines: other,
        records,
        verified: 0,
        duplicates: 0,
        chains: Vec::new(),
        findings: Vec::new(),
    };
    if entries.is_empty() {
        report.findings.push(Finding {
            kind: Kind::NoTrail,
            chain: String::new(),
            from: 0,
            to: 0,
            at: Vec::new(),
            detail: "no record of an integrity trail in these files".into(),
        });
        return Ok(report);
    }
    let location = |e: &Entry| Location {
        file: names.get(e.file as usize).cloned().unwrap_or_default(),
        line: e.line,
    };
    // Group copies: by chain, number, then reading order.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_unstable_by_key(|&i| (entries[i].chain, entries[i].n, i));
    // Reordering, per file and chain, in file order: a record (not a copy of one read before)
    // that comes after a higher one.
    {
        let mut original = vec![false; entries.len()];
        for (k, &i) in order.iter().enumerate() {
            original[i] = k == 0 || {
                let p = &entries[order[k - 1]];
                p.chain != entries[i].chain || p.n != entries[i].n
            };
        }
        let mut highest: HashMap<(u32, u32), u64> = HashMap::new();
        for (e, original) in entries.iter().zip(&original) {
            let top = highest.entry((e.file, e.chain)).or_insert(0);
            if *original && e.n < *top {
                report.findings.push(Finding {
                    kind: Kind::Reordered,
                    chain: chains[e.chain as usize].clone(),
                    from: e.n,
                    to: e.n,
                    at: vec![location(e)],
                    detail: format!("{} comes after {} in the file", e.n, top),
                });
            }
            *top = (*top).max(e.n);
        }
    }
    let mut chain_start = 0;
    while chain_start < order.len() {
        let chain_no = entries[order[chain_start]].chain;
        let chain_end = order[chain_start..]
            .iter()
            .position(|&i| entries[i].chain != chain_no)
            .map_or(order.len(), |p| chain_start + p);
        check_chain(
            &chains[chain_no as usize],
            &order[chain_start..chain_end],
            &entries,
            &checkpoints,
            &starts,
            options,
            &location,
            &mut report,
        );
        chain_start = chain_end;
    }
    report.findings.sort_by(|a, b| {
        (a.chain.clone(), a.from, a.kind as u8).cmp(&(b.chain.clone(), b.from, b.kind as u8))
    });
    Ok(report)
}

/// Checks one chain; `order` holds its entries sorted by number, then reading order.
#[allow(clippy::too_many_arguments)]
fn check_chain(
    chain: &str,
    order: &[usize],
    entries: &[Entry],
    checkpoints: &[Option<Checkpoint>],
    starts: &[Option<Start>],
    options: &Options,
    location: &dyn Fn(&Entry) -> Location,
    report: &mut Report,
) {
    let finding = |kind, from, to, at: Vec<Location>, detail: String| Finding {
        kind,
        chain: chain.to_owned(),
        from,
        to,
        at,
        detail,
    };
    // This chain's findings; replaced by one `inserted` if nothing signed anchors it.
    let mut found: Vec<Finding> = Vec::new();
    // One entry per number: the first copy; the others are duplicates or conflicts.
    let mut unique: Vec<&Entry> = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let first = &entries[order[i]];
        let mut j = i + 1;
        let mut conflicting = Vec::new();
        while j < order.len() && entries[order[j]].n == first.n {
            let copy = &entries[order[j]];
            if copy.fingerprint == first.fingerprint {
                report.duplicates += 1;
            } else {
                conflicting.push(location(copy));
            }
            j += 1;
        }
        if !conflicting.is_empty() {
            let mut at = vec![location(first)];
            at.extend(conflicting);
            found.push(finding(
                Kind::Conflict,
                first.n,
                first.n,
                at,
                format!("{} copies of {} differ", j - i, first.n),
            ));
        }
        unique.push(first);
        i = j;
    }
    let key = |id: &str| options.keys.iter().find(|k| k.id() == id);
    let signature_ok = |text: &str, sig: &str, key_id: &str| -> Result<(), Kind> {
        use base64::Engine;
        let Some(k) = key(key_id) else {
            return Err(Kind::UnknownKey);
        };
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .map_err(|_| Kind::BadSignature)?;
        if k.verifies(text.as_bytes(), &sig) {
            Ok(())
        } else {
            Err(Kind::BadSignature)
        }
    };
    // The start record, when present and valid, anchors the chain at the genesis value.
    let mut start_n = None;
    for e in &unique {
        if let Role::Start(s) = e.role {
            match starts.get(s as usize).and_then(Option::as_ref) {
                Some(start) if start.chain == chain && start.first == e.n => {
                    match signature_ok(&start.signed_text(), &start.sig, &start.key) {
                        Ok(()) => start_n = Some(e.n),
                        Err(kind) => found.push(finding(
                            kind,
                            e.n,
                            e.n,
                            vec![location(e)],
                            format!("start record signed by key {}", start.key),
                        )),
                    }
                }
                _ => found.push(finding(
                    Kind::BadSignature,
                    e.n,
                    e.n,
                    vec![location(e)],
                    "unreadable start record".into(),
                )),
            }
        }
    }
    // Links, gaps and stretches of unbroken chain.
    let mut stretches: Vec<(usize, usize)> = Vec::new();
    let mut stretch_start = 0;
    let mut link_ok = vec![true; unique.len()];
    for (i, e) in unique.iter().enumerate() {
        if start_n.is_some_and(|s| e.n < s) {
            found.push(finding(
                Kind::Inserted,
                e.n,
                e.n,
                vec![location(e)],
                "a record numbered before its chain's start".into(),
            ));
            link_ok[i] = false;
            continue;
        }
        let previous = if Some(e.n) == start_n {
            Some(genesis(chain))
        } else if i > 0 && unique[i - 1].n + 1 == e.n {
            Some(unique[i - 1].h)
        } else {
            None
        };
        match previous {
            Some(prev) => {
                if link(&prev, e.n, &e.d) != e.h {
                    link_ok[i] = false;
                    found.push(finding(
                        Kind::Modified,
                        e.n,
                        e.n,
                        vec![location(e)],
                        format!("the bytes of {} do not give its chain value", e.n),
                    ));
                }
            }
            None => {
                if i > stretch_start {
                    stretches.push((stretch_start, i));
                }
                stretch_start = i;
                let low = if i > 0 {
                    unique[i - 1].n + 1
                } else {
                    start_n.unwrap_or(e.n)
                };
                if low < e.n {
                    found.push(finding(
                        Kind::Missing,
                        low,
                        e.n - 1,
                        Vec::new(),
                        format!("no record numbered {low}..{} in these files", e.n - 1),
                    ));
                }
            }
        }
    }
    stretches.push((stretch_start, unique.len()));
    // Checkpoints: signature, then the head they name.
    let mut vouched_to: Vec<u64> = Vec::new();
    let mut valid_checkpoints: std::collections::HashSet<u64> = std::collections::HashSet::new();
    let mut keys_used: Vec<String> = Vec::new();
    let mut finished = false;
    let last_n = unique.last().map_or(0, |e| e.n);
    for e in &unique {
        let Role::Checkpoint(c) = e.role else {
            continue;
        };
        let Some(cp) = checkpoints
            .get(c as usize)
            .and_then(Option::as_ref)
            .filter(|cp| cp.chain == chain)
        else {
            found.push(finding(
                Kind::BadSignature,
                e.n,
                e.n,
                vec![location(e)],
                "unreadable checkpoint".into(),
            ));
            continue;
        };
        if let Err(kind) = signature_ok(&cp.signed_text(), &cp.sig, &cp.key) {
            found.push(finding(
                kind,
                e.n,
                e.n,
                vec![location(e)],
                format!(
                    "checkpoint {} (covering {}..{}) signed by key {}",
                    e.n, cp.from, cp.last, cp.key
                ),
            ));
            continue;
        }
        // `unique` is in number order, one entry per number.
        let head_ok = unique
            .binary_search_by_key(&cp.last, |u| u.n)
            .is_ok_and(|i| super::hex(&unique[i].h) == cp.head);
        if !head_ok {
            found.push(finding(
                Kind::CheckpointMismatch,
                cp.last,
                cp.last,
                vec![location(e)],
                format!(
                    "checkpoint {} names a head that record {} does not have",
                    e.n, cp.last
                ),
            ));
            continue;
        }
        vouched_to.push(cp.last);
        valid_checkpoints.insert(e.n);
        if !keys_used.contains(&cp.key) {
            keys_used.push(cp.key.clone());
        }
        if cp.is_final && e.n == last_n {
            finished = true;
        }
    }
    // What a valid checkpoint vouches for: its stretch of chain up to the record it names.
    let mut verified = 0u64;
    for (s, end) in &stretches {
        let (lo, hi) = (unique[*s].n, unique[end - 1].n);
        let covered = vouched_to
            .iter()
            .filter(|&&v| v >= lo && v <= hi)
            .max()
            .copied();
        let from_unsigned = covered.map_or(lo, |c| c + 1);
        // A checkpoint record's place is vouched for by the next checkpoint; one that ends its
        // stretch (the final one, or the last before a cut) vouches for itself by its
        // signature.
        let ends_with_checkpoint = valid_checkpoints.contains(&hi) && covered == Some(hi - 1);
        let unsigned_to = if ends_with_checkpoint { hi - 1 } else { hi };
        if from_unsigned <= unsigned_to {
            let at: Vec<Location> = unique[*s..*end]
                .iter()
                .filter(|e| e.n >= from_unsigned)
                .take(1)
                .map(|e| location(e))
                .collect();
            found.push(finding(
                Kind::Unsigned,
                from_unsigned,
                unsigned_to,
                at,
                format!("no checkpoint vouches for {from_unsigned}..{unsigned_to}"),
            ));
        }
        let vouched_hi = if ends_with_checkpoint {
            hi
        } else {
            covered.unwrap_or(0)
        };
        verified += unique[*s..*end]
            .iter()
            .zip(&link_ok[*s..*end])
            .filter(|(e, ok)| **ok && e.n <= vouched_hi)
            .count() as u64;
    }
    let signed_records = unique
        .iter()
        .any(|e| matches!(e.role, Role::Checkpoint(_) | Role::Start(_)));
    if !signed_records {
        // Nothing signed goes with these records: they belong to no trail in these files,
        // and that is the one thing to say of them.
        let at: Vec<Location> = unique.iter().take(5).map(|e| location(e)).collect();
        found.clear();
        found.push(finding(
            Kind::Inserted,
            unique.first().map_or(0, |e| e.n),
            last_n,
            at,
            "records of a chain that no start record or checkpoint in these files vouches for"
                .into(),
        ));
    } else if !finished && !options.allow_open_end {
        found.push(finding(
            Kind::OpenEnd,
            last_n,
            last_n,
            unique.last().map(|e| vec![location(e)]).unwrap_or_default(),
            format!(
                "the chain ends at {last_n} without the relay's final checkpoint: what followed may have been cut (pass --allow-open-end for a relay still writing)"
            ),
        ));
    }
    report.findings.extend(found);
    report.verified += verified;
    report.chains.push(ChainSummary {
        chain: chain.to_owned(),
        first: unique.first().map_or(0, |e| e.n),
        last: last_n,
        records: unique.len() as u64,
        checkpoints: vouched_to.len() as u64,
        keys: keys_used,
        started: start_n.is_some(),
        finished,
    });
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.chains {
            writeln!(
                f,
                "chain {}: records {}..{} ({} distinct), {} valid checkpoints (keys {}), {}{}",
                c.chain,
                c.first,
                c.last,
                c.records,
                c.checkpoints,
                if c.keys.is_empty() {
                    "-".to_owned()
                } else {
                    c.keys.join(", ")
                },
                if c.started {
                    "starts with its signed start record"
                } else {
                    "no start record in these files"
                },
                if c.finished {
                    ", ends with the final checkpoint"
                } else {
                    ""
                },
            )?;
        }
        for x in &self.findings {
            let at =
                x.at.iter()
                    .map(|l| format!("{}:{}", l.file, l.line))
                    .collect::<Vec<_>>()
                    .join(", ");
            let range = if x.from == x.to {
                x.from.to_string()
            } else {
                format!("{}..{}", x.from, x.to)
            };
            writeln!(
                f,
                "{}: {} {}{}: {}",
                x.kind,
                if x.chain.is_empty() { "-" } else { &x.chain },
                range,
                if at.is_empty() {
                    String::new()
                } else {
                    format!(" at {at}")
                },
                x.detail
            )?;
        }
        writeln!(
            f,
            "{}: {} lines, {} trail records ({} duplicates), {} verified, {} other lines skipped, {} findings",
            if self.ok() { "OK" } else { "FAILED" },
            self.lines,
            self.records,
            self.duplicates,
            self.verified,
            self.other_lines,
            self.findings.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::integrity::{ChainStamp, FINAL, keys};
    use crate::queue::Stamp;

    /// A trail of `n` events chained by the relay's own stamper, with a checkpoint every 10,
    /// one record per line; and the public key.
    fn trail(dir: &Path, n: u64) -> (Vec<String>, PublicKey) {
        let (key, public, _) = keys::generate(&dir.join("keys")).unwrap();
        let config = Config::parse(
            &format!(
                "[syslog]\nenterprise_id = 32473\n[integrity]\nsigning_key = {:?}\ncheckpoint_records = 10\n",
                key.display().to_string()
            ),
            Path::new("t.toml"),
        )
        .unwrap();
        let mut stamp =
            ChainStamp::new(config.integrity.as_ref().unwrap(), &config, "host").unwrap();
        let (mut out, mut seq) = (Vec::new(), 0u64);
        for i in 0..n {
            let record = format!(
                "<109>1 2026-01-01T00:00:00Z host kube-apiserver - ResponseComplete - {{\"auditID\":\"id-{i}\"}}"
            );
            let before = out.len();
            stamp.stamp(seq, record.as_bytes(), None, &mut out);
            seq += (out.len() - before) as u64;
        }
        stamp.stamp(seq, FINAL, None, &mut out);
        let lines = out
            .iter()
            .map(|r| String::from_utf8(r.to_vec()).unwrap())
            .collect();
        (lines, PublicKey::load(&public).unwrap())
    }

    fn run(dir: &Path, lines: &[String], key: &PublicKey) -> Report {
        let path = dir.join("trail.log");
        let mut f = std::fs::File::create(&path).unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        let options = Options {
            keys: vec![key.clone()],
            allow_open_end: false,
        };
        verify(&[path], &options).unwrap()
    }

    fn kinds(report: &Report) -> Vec<(String, u64, u64)> {
        report
            .findings
            .iter()
            .map(|f| {
                let kind = serde_json::to_value(f.kind).unwrap();
                (kind.as_str().unwrap().to_owned(), f.from, f.to)
            })
            .collect()
    }

    #[test]
    fn a_checkpoint_is_checked_against_the_head_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let (lines, key) = trail(dir.path(), 35);
        let clean = run(dir.path(), &lines, &key);
        assert!(clean.ok(), "{:?}", clean.findings);
        assert_eq!(clean.verified, clean.records);
        // The chain value of the record a checkpoint names as its head, changed: that record
        // and the next no longer link, and the (validly signed) checkpoint names a head that
        // record does not have.
        let cp: Checkpoint = lines
            .iter()
            .find(|l| l.contains(" checkpoint "))
            .and_then(|l| l.find("{\"kind\"").map(|at| &l[at..]))
            .map(|m| serde_json::from_str(m).unwrap())
            .unwrap();
        let at = lines
            .iter()
            .position(|l| l.contains(&format!("sequenceId=\"{}\"", cp.last)))
            .unwrap();
        let mut tampered = lines.clone();
        let other = super::super::hex(&[0x5a; 32]);
        tampered[at] = tampered[at].replace(&cp.head, &other);
        assert_ne!(tampered[at], lines[at]);
        let report = run(dir.path(), &tampered, &key);
        let found = kinds(&report);
        assert!(
            found.contains(&("checkpoint_mismatch".to_owned(), cp.last, cp.last)),
            "{found:?}"
        );
        assert!(
            found.contains(&("modified".to_owned(), cp.last, cp.last)),
            "{found:?}"
        );
        assert!(!report.ok());
    }
}
