//! The tamper-evident trail (`[integrity]`): every stored record carries its place in a hash
//! chain, and signed checkpoints vouch for the chain's head, so that whoever reads what a
//! receiver wrote can prove it is complete and unaltered (`kube-audit-relay verify`).
//!
//! Each record gets, first in its STRUCTURED-DATA, `[meta sequenceId="N"]` (RFC 5424) and
//! `[trail@PEN chain="C" h="H"]`, where C names the chain and, with `d_N` the SHA-256 of the
//! record's MSG (after a BOM),
//!
//! ```text
//! h_N = SHA-256(h_{N-1} || N as 8 bytes big-endian || d_N),   h_0 = SHA-256("kube-audit-relay chain v1\n" || C)
//! ```
//!
//! Hashing the MSG's digest rather than the MSG itself lets `verify` check the links in any
//! order, keeping 80 bytes per record instead of the record. The values are assigned when the
//! record is stored ([`crate::queue::Stamp`], in storage order), so a resend carries the same
//! bytes. A new chain (the first start of a disk queue, every start of a memory queue) begins
//! with a signed `trail-start` record; a `checkpoint` record (its own MSGID, itself part of the
//! chain) signs the chain id, the range of sequence numbers it covers and the head, every
//! `checkpoint_interval` or `checkpoint_records` and at shutdown (`"final":true`).
//! The disk queue's last record carries the chain state, so a restart or a `kill -9`
//! continues the same chain.

pub mod keys;
pub mod verify;

use std::path::PathBuf;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::{Config, IntegrityConfig};
use crate::queue::{Prework, PreworkFn, Stamp};
use crate::stamp::{Arena, META_MAX, push_meta, sequence_id};
use crate::syslog::Layout;
use crate::syslog::convert::fields;
use crate::syslog::render::sanitize;
use crate::syslog::timestamp;
use keys::SigningKey;

/// MSGID of a checkpoint record.
pub const MSGID_CHECKPOINT: &str = "checkpoint";
/// MSGID of the record that starts a chain.
pub const MSGID_START: &str = "trail-start";
/// The SD-ID prefix of the chain element (`trail@PEN`).
pub const TRAIL_SD: &str = "trail@";
/// What the relay appends to its queue to ask for a checkpoint now (an empty record: no
/// rendered event is empty).
pub const TICK: &[u8] = b"";
/// What the relay appends to its queue at shutdown for the final checkpoint.
pub const FINAL: &[u8] = b"\0final";

/// Asks for a checkpoint every `interval` (the stamper writes one when records came since the
/// last), until `stop`.
pub async fn tick(
    queue: crate::queue::Queue,
    interval: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(e) = queue.append(vec![Bytes::from_static(TICK)]).await {
            tracing::warn!(error = %e, "cannot store an integrity checkpoint now; trying at the next interval");
        }
    }
}

/// The chain's starting value.
pub fn genesis(chain: &str) -> [u8; 32] {
    sha256(&[b"kube-audit-relay chain v1\n", chain.as_bytes()])
}

/// `h_N` from `h_{N-1}`, N and the digest of record N's MSG.
pub fn link(previous: &[u8; 32], sequence_id: u64, msg_digest: &[u8; 32]) -> [u8; 32] {
    // One contiguous input: one call into ring instead of three buffered updates.
    let mut input = [0u8; 72];
    input[..32].copy_from_slice(previous);
    input[32..40].copy_from_slice(&sequence_id.to_be_bytes());
    input[40..].copy_from_slice(msg_digest);
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &input).as_ref());
    out
}

/// SHA-256 of the concatenated parts.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// SHA-256 of a record's MSG (without a BOM), which the chain links, and where its SD is,
/// where the elements go: independent of the record's place, so worked out before the
/// record reaches the queue's writer. `layout` says where the parts of a record the relay
/// rendered are; without it the record is parsed. A record that is not RFC 5424 (never one
/// of the relay's own) is chained whole, its elements in front.
pub fn prework_of(record: &[u8], layout: Option<&Layout>) -> Prework {
    let (span, digest) = chain_parts(record, layout);
    Prework {
        digest: Some(digest),
        span,
    }
}

/// [`prework_of`]'s SD span and digest.
fn chain_parts(record: &[u8], layout: Option<&Layout>) -> (std::ops::Range<usize>, [u8; 32]) {
    match Layout::of(record, layout) {
        Some(l) => {
            let digest = l
                .msg_digest
                .unwrap_or_else(|| msg_digest(record.get(l.msg_start..).unwrap_or_default()));
            (l.sd, digest)
        }
        None => (0..0, sha256(&[record])),
    }
}

/// SHA-256 of a MSG as the chain links it: without a BOM.
pub fn msg_digest(msg: &[u8]) -> [u8; 32] {
    sha256(&[msg.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(msg)])
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|&b| hex_digits(b))
        .map(char::from)
        .collect()
}

/// The two lower-case hex digits of `b`.
fn hex_digits(b: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]]
}

/// The hex of a chain value, on the stack: on the store path one copy into the record, where
/// `fmt` cost a tenth of a record's stamping and 64 pushes most of the rest.
fn hex32(h: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (pair, &b) in out.chunks_exact_mut(2).zip(h) {
        pair.copy_from_slice(&hex_digits(b));
    }
    out
}

/// 32 bytes from 64 hex digits.
pub fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The MSG of a checkpoint record (and the fields its signature covers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// `AuditTrailCheckpoint`.
    pub kind: String,
    /// The chain.
    pub chain: String,
    /// The first sequence number no earlier checkpoint of this run covered.
    pub from: u64,
    /// The last sequence number covered: `head` is its chain value.
    pub last: u64,
    /// `h_last`, hex.
    pub head: String,
    /// Whether the relay wrote it at shutdown (nothing follows in this chain until a restart).
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The signing key's id.
    pub key: String,
    /// Ed25519 signature of [`Checkpoint::signed_text`], base64.
    pub sig: String,
}

impl Checkpoint {
    /// The text the signature covers.
    pub fn signed_text(&self) -> String {
        format!(
            "kube-audit-relay checkpoint v1\nchain={}\nfrom={}\nlast={}\nhead={}\nfinal={}\nkey={}\n",
            self.chain,
            self.from,
            self.last,
            self.head,
            u8::from(self.is_final),
            self.key
        )
    }
}

/// The MSG of the record that starts a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Start {
    /// `AuditTrailStart`.
    pub kind: String,
    /// The new chain.
    pub chain: String,
    /// Its first sequence number (this record's).
    pub first: u64,
    /// The signing key's id.
    pub key: String,
    /// Ed25519 signature of [`Start::signed_text`], base64.
    pub sig: String,
}

impl Start {
    /// The text the signature covers.
    pub fn signed_text(&self) -> String {
        format!(
            "kube-audit-relay start v1\nchain={}\nfirst={}\nkey={}\n",
            self.chain, self.first, self.key
        )
    }
}

/// The signing key, re-read when its file changes.
#[derive(Debug)]
struct KeyFile {
    path: PathBuf,
    fingerprint: u64,
    key: SigningKey,
}

impl KeyFile {
    fn fingerprint(path: &std::path::Path) -> u64 {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        BuildHasherDefault::<DefaultHasher>::default()
            .hash_one(std::fs::read(path).unwrap_or_default())
    }

    /// The key to sign with now: a changed file is loaded (a broken one is logged and the
    /// previous key kept).
    fn current(&mut self) -> &SigningKey {
        let fingerprint = Self::fingerprint(&self.path);
        if fingerprint != self.fingerprint {
            self.fingerprint = fingerprint;
            match SigningKey::load(&self.path) {
                Ok(key) => {
                    tracing::info!(
                        key_id = key.id(),
                        previous = self.key.id(),
                        "integrity signing key rotated"
                    );
                    self.key = key;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "new integrity.signing_key does not load; signing with the previous key")
                }
            }
        }
        &self.key
    }
}

/// Where the chain stands.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    chain: String,
    head: [u8; 32],
    /// Records since the last checkpoint.
    since: u64,
    /// `from` of the next checkpoint.
    from: u64,
    /// Sequence number of the last record chained.
    last: Option<u64>,
    /// A new chain waits for its start record.
    needs_start: bool,
    /// The next record is the first stored since this process started.
    first: bool,
}

/// The hash chain and its checkpoints, as a queue [`Stamp`].
#[derive(Debug)]
pub struct ChainStamp {
    key: KeyFile,
    checkpoint_records: u64,
    facility: u8,
    /// ` HOSTNAME APP-NAME - `.
    host_app: String,
    /// `trail@PEN`.
    trail_name: String,
    started: std::time::Instant,
    state: State,
    /// Where stamped records are written.
    arena: Arena,
}

/// The most the chain element adds to a record besides the `meta` one and the names:
/// `[trail@ chain="" h="64 hex"]`.
const TRAIL_MAX: usize = 100;

/// Why the trail cannot start.
#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    /// The signing key is unusable.
    #[error("integrity.signing_key: {0}")]
    Key(#[from] keys::KeyError),
    /// No randomness for a chain id.
    #[error("no randomness for a chain id")]
    Random,
}

fn new_chain_id() -> Result<String, IntegrityError> {
    use ring::rand::SecureRandom;
    let mut id = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| IntegrityError::Random)?;
    Ok(hex(&id))
}

impl ChainStamp {
    /// The trail of `config` (which has `[integrity]` and `syslog.enterprise_id`, as the
    /// configuration checks); `hostname` is the records' HOSTNAME.
    ///
    /// # Errors
    /// [`IntegrityError`] when the key does not load.
    pub fn new(
        integrity: &IntegrityConfig,
        config: &Config,
        hostname: &str,
    ) -> Result<Self, IntegrityError> {
        let key = SigningKey::load(&integrity.signing_key)?;
        let chain = new_chain_id()?;
        Ok(Self {
            key: KeyFile {
                fingerprint: KeyFile::fingerprint(&integrity.signing_key),
                path: integrity.signing_key.clone(),
                key,
            },
            checkpoint_records: integrity.checkpoint_records,
            facility: config.syslog.facility.get(),
            host_app: format!(
                " {} {} - ",
                sanitize(hostname, 255),
                sanitize(config.syslog.app_name.as_str(), 48)
            ),
            trail_name: format!("{TRAIL_SD}{}", config.syslog.enterprise_id.unwrap_or(32473)),
            started: std::time::Instant::now(),
            arena: Arena::default(),
            state: State {
                head: genesis(&chain),
                chain,
                since: 0,
                from: 1,
                last: None,
                needs_start: true,
                first: true,
            },
        })
    }

    /// Chains one record at queue place `seq`: its MSG digest extends the head, and the
    /// elements go first in its SD.
    fn chain(&mut self, seq: u64, record: &[u8], prework: Option<&Prework>) -> Bytes {
        let n = sequence_id(seq);
        let (sd, digest) = match prework {
            Some(Prework {
                digest: Some(digest),
                span,
            }) if record.get(span.clone()).is_some() => (span.clone(), *digest),
            _ => chain_parts(record, None),
        };
        let h = link(&self.state.head, n, &digest);
        self.state.head = h;
        self.state.last = Some(n);
        let uptime =
            std::mem::take(&mut self.state.first).then(|| self.started.elapsed().as_millis() / 10);
        let extra = META_MAX + TRAIL_MAX + self.trail_name.len() + self.state.chain.len();
        let (trail, chain) = (&self.trail_name, &self.state.chain);
        self.arena.insert(record, sd, extra, |out| {
            push_meta(out, n, uptime);
            out.extend_from_slice(b"[");
            out.extend_from_slice(trail.as_bytes());
            out.extend_from_slice(b" chain=\"");
            out.extend_from_slice(chain.as_bytes());
            out.extend_from_slice(b"\" h=\"");
            out.extend_from_slice(&hex32(&h));
            out.extend_from_slice(b"\"]");
        })
    }

    /// A record of the relay's own, chained like an event.
    fn own_record(&mut self, seq: u64, msgid: &str, msg: &str) -> Bytes {
        let mut record = format!("<{}>1 ", u16::from(self.facility) * 8 + 5);
        record.push_str(&timestamp::now());
        record.push_str(&self.host_app);
        record.push_str(msgid);
        record.push_str(" - ");
        record.push_str(msg);
        self.chain(seq, record.as_bytes(), None)
    }

    fn start_record(&mut self, seq: u64) -> Bytes {
        use base64::Engine;
        let mut start = Start {
            kind: "AuditTrailStart".into(),
            chain: self.state.chain.clone(),
            first: sequence_id(seq),
            key: self.key.current().id().to_owned(),
            sig: String::new(),
        };
        start.sig = base64::engine::general_purpose::STANDARD
            .encode(self.key.current().sign(start.signed_text().as_bytes()));
        tracing::info!(chain = %start.chain, first = start.first, key_id = %start.key, "integrity chain started");
        let msg = serde_json::to_string(&start).unwrap_or_default();
        self.state.needs_start = false;
        self.state.from = start.first;
        self.own_record(seq, MSGID_START, &msg)
    }

    fn checkpoint(&mut self, seq: u64, is_final: bool) -> Option<Bytes> {
        use base64::Engine;
        let last = self.state.last?;
        let mut cp = Checkpoint {
            kind: "AuditTrailCheckpoint".into(),
            chain: self.state.chain.clone(),
            from: self.state.from,
            last,
            head: hex(&self.state.head),
            is_final,
            key: self.key.current().id().to_owned(),
            sig: String::new(),
        };
        cp.sig = base64::engine::general_purpose::STANDARD
            .encode(self.key.current().sign(cp.signed_text().as_bytes()));
        tracing::debug!(chain = %cp.chain, from = cp.from, last = cp.last, key_id = %cp.key, is_final, "integrity checkpoint");
        let msg = serde_json::to_string(&cp).unwrap_or_default();
        let record = self.own_record(seq, MSGID_CHECKPOINT, &msg);
        self.state.since = 0;
        self.state.from = sequence_id(seq) + 1;
        Some(record)
    }
}

impl Stamp for ChainStamp {
    fn prework(&self) -> Option<PreworkFn> {
        Some(prework_of)
    }

    fn stamp(&mut self, seq: u64, record: &[u8], prework: Option<&Prework>, out: &mut Vec<Bytes>) {
        let mut seq = seq;
        if record == TICK {
            if self.state.since > 0
                && let Some(cp) = self.checkpoint(seq, false)
            {
                out.push(cp);
            }
            return;
        }
        if record == FINAL {
            if let Some(cp) = self.checkpoint(seq, true) {
                out.push(cp);
            }
            return;
        }
        if self.state.needs_start {
            out.push(self.start_record(seq));
            seq += 1;
        }
        out.push(self.chain(seq, record, prework));
        self.state.since += 1;
        if self.state.since >= self.checkpoint_records
            && let Some(cp) = self.checkpoint(seq + 1, false)
        {
            out.push(cp);
        }
    }

    fn save(&self) -> Vec<u8> {
        serde_json::to_vec(&SavedState::from(&self.state)).unwrap_or_default()
    }

    fn restore(&mut self, state: &[u8]) {
        if let Ok(saved) = serde_json::from_slice::<SavedState>(state) {
            self.state = saved.into();
        }
    }

    fn resume(&mut self, last: Option<(u64, &[u8])>) {
        let Some((seq, record)) = last else {
            return;
        };
        // A last record without a trail element is from before [integrity] was
        // turned on: the chain starts afresh.
        if let Some((chain, head)) = trail_of(record) {
            tracing::info!(%chain, last = sequence_id(seq), "integrity chain continues");
            self.state.chain = chain;
            self.state.head = head;
            self.state.last = Some(sequence_id(seq));
            self.state.from = sequence_id(seq) + 1;
            self.state.needs_start = false;
        }
    }
}

/// The chain id and chain value of a record, from its `trail@` element.
pub fn trail_of(record: &[u8]) -> Option<(String, [u8; 32])> {
    let f = fields(record)?;
    let sd = std::str::from_utf8(record.get(f.sd)?).ok()?;
    let at = sd.find(&format!("[{TRAIL_SD}"))?;
    let element = &sd[at..];
    let element = &element[..element.find(']')? + 1];
    let param = |name: &str| -> Option<&str> {
        let key = format!(" {name}=\"");
        let start = element.find(&key)? + key.len();
        let len = element[start..].find('"')?;
        Some(&element[start..start + len])
    };
    Some((param("chain")?.to_owned(), unhex32(param("h")?)?))
}

/// [`State`] as it is saved across a failed group.
#[derive(Debug, Serialize, Deserialize)]
struct SavedState {
    chain: String,
    head: String,
    since: u64,
    from: u64,
    last: Option<u64>,
    needs_start: bool,
    first: bool,
}

impl From<&State> for SavedState {
    fn from(s: &State) -> Self {
        Self {
            chain: s.chain.clone(),
            head: hex(&s.head),
            since: s.since,
            from: s.from,
            last: s.last,
            needs_start: s.needs_start,
            first: s.first,
        }
    }
}

impl From<SavedState> for State {
    fn from(s: SavedState) -> Self {
        Self {
            head: unhex32(&s.head).unwrap_or_else(|| genesis(&s.chain)),
            chain: s.chain,
            since: s.since,
            from: s.from,
            last: s.last,
            needs_start: s.needs_start,
            first: s.first,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_decimal_and_hex_agree_with_fmt() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12_345,
            crate::stamp::MAX_SEQUENCE_ID,
            u64::MAX,
        ] {
            let mut digits = bytes::BytesMut::new();
            crate::syslog::frame::write_decimal(&mut digits, n);
            assert_eq!(&digits[..], n.to_string().as_bytes());
        }
        let h = sha256(&[b"x"]);
        let text: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&hex32(&h)[..], text.as_bytes());
        assert_eq!(hex(&h), text);
        assert_eq!(unhex32(&text), Some(h));
        let (d, n) = (sha256(&[b"msg"]), 42u64);
        assert_eq!(link(&h, n, &d), sha256(&[&h, &n.to_be_bytes(), &d]));
    }

    #[test]
    fn the_renderers_layout_gives_the_digest_and_span_of_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _, _) = keys::generate(dir.path()).unwrap();
        // With [integrity] the pipeline puts the MSG's digest in the layout.
        let chained = format!(
            "[integrity]\nsigning_key = {:?}\n",
            key.display().to_string()
        );
        for syslog in [
            String::new(),
            "enterprise_id = 32473\n".into(),
            "enterprise_id = 32473\nbom = true\n".into(),
            format!("enterprise_id = 32473\n{chained}"),
            format!("enterprise_id = 32473\nbom = true\n{chained}"),
        ] {
            let batch = crate::pipeline::render_corpus(&syslog);
            for (record, layout) in batch.records.iter().zip(&batch.layouts) {
                assert_eq!(layout.msg_digest.is_some(), syslog.contains("[integrity]"));
                let parsed = prework_of(record, None);
                assert_eq!(prework_of(record, Some(layout)), parsed);
                let f = fields(record).unwrap();
                let msg = &record[f.msg_start..];
                assert_eq!(
                    parsed.digest.unwrap(),
                    sha256(&[msg.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(msg)])
                );
            }
        }
        // A layout that does not fit the record is not trusted.
        let record = b"<13>1 - h a - m - {}";
        let wild = Layout {
            sd: 40..41,
            msg_start: 50,
            msg_digest: Some([7; 32]),
        };
        assert_eq!(prework_of(record, Some(&wild)), prework_of(record, None));
    }
}
