//! The ingest step between HTTP and the queue, pure and synchronous: an `EventList` body is
//! split into its items, filter and redaction rules applied, each remaining event rendered as
//! an RFC 5424 record, and repeats (the same `auditID` and `stage` rendered to the same MSG,
//! within the batch or stored recently) dropped. No HTTP, no I/O, no clock: the webhook, the
//! benchmark and the fuzz targets all call [`Pipeline::run`].
//!
//! A batch is refused whole (400) when any item is invalid, so a refusal never leaves half a
//! batch stored. Dedupe keys are recorded only by [`Pipeline::stored`], once the records are
//! durable: a batch refused with 503 must not make its own resend look like a duplicate.

use bytes::{Bytes, BytesMut};

use crate::audit::{AuditError, EventList, Item};
use crate::config::Config;
use crate::dedupe::{Dedupe, Key, KeySet};
use crate::filter::Policy;
use crate::integrity::msg_digest;
use crate::syslog::{Layout, Renderer, TooLarge, Written};

/// An event rendered and not repeated within its batch, waiting for the window's answer.
struct Candidate {
    record: Bytes,
    written: Written,
    key: Option<Key>,
    redacted: bool,
}

/// What happened to the items of one accepted batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchSummary {
    /// Items in the batch.
    pub items: usize,
    /// Items rendered into records.
    pub stored: usize,
    /// Items dropped as repeats of stored ones.
    pub duplicates: usize,
    /// Items shortened by the truncation rule.
    pub truncated: usize,
    /// Items dropped because even truncated they exceed `syslog.max_message_bytes`.
    pub too_large: usize,
    /// Items dropped by a filter rule.
    pub filtered: usize,
    /// Items with at least one redacted value.
    pub redacted: usize,
}

/// One batch, ready for the queue.
#[derive(Debug, Default)]
pub struct Batch {
    /// The rendered records, in item order.
    pub records: Vec<Bytes>,
    /// Where each record's SD and MSG are, for the queue's stampers.
    pub layouts: Vec<Layout>,
    /// What happened to the items.
    pub summary: BatchSummary,
    /// The events dropped as too large (their auditIDs belong in the log).
    pub too_large: Vec<TooLarge>,
    /// The dedupe keys of the records, for [`Pipeline::stored`].
    pub keys: BatchKeys,
}

/// The dedupe keys of a batch's records.
#[derive(Debug, Default)]
pub struct BatchKeys(Vec<Key>);

/// Split, dedupe, filter/redact and render, with the settings of one relay.
#[derive(Debug)]
pub struct Pipeline {
    renderer: Renderer,
    dedupe: Dedupe,
    policy: Policy,
    /// Whether records are chained (`[integrity]`): the pipeline then hashes each MSG.
    chained: bool,
}

impl Pipeline {
    /// The pipeline of `config`; `hostname` is the HOSTNAME of every record.
    pub fn new(config: &Config, hostname: &str) -> Self {
        Self {
            renderer: Renderer::new(&config.syslog, hostname),
            dedupe: Dedupe::new(config.dedupe.max_entries),
            policy: Policy::new(&config.filters, &config.redact),
            chained: config.integrity.is_some(),
        }
    }

    /// Turns an `EventList` body into records. `received_at` (RFC 3339) is the TIMESTAMP of
    /// events that carry no valid timestamp of their own.
    ///
    /// # Errors
    /// [`AuditError`] when the body is not an EventList or any item is unusable; nothing of
    /// the batch is then kept.
    pub fn run(&self, body: &[u8], received_at: &str) -> Result<Batch, AuditError> {
        let items = EventList::items(body)?;
        let mut batch = Batch {
            records: Vec::with_capacity(items.len()),
            layouts: Vec::with_capacity(items.len()),
            keys: BatchKeys(Vec::with_capacity(items.len())),
            summary: BatchSummary {
                items: items.len(),
                ..BatchSummary::default()
            },
            too_large: Vec::new(),
        };
        // Keys are of what is stored, so they are known only once an event is rendered; the
        // window is then asked once for the whole batch, and repeats are dropped after.
        let mut rendered = Vec::with_capacity(items.len());
        let mut in_batch = KeySet::with_capacity_and_hasher(
            if self.dedupe.enabled() {
                items.len()
            } else {
                0
            },
            Default::default(),
        );
        // Every record of the batch is a slice of one buffer: one allocation per batch, not
        // one per record (and per clone). `scratch` is where each is rendered first.
        let mut records = BytesMut::with_capacity(body.len() + items.len() * 160);
        let mut scratch = Vec::with_capacity(4096);
        for parsed in &items {
            let Item {
                json: item,
                compact,
                view,
            } = parsed;
            if !self.policy.keep(item, view) {
                batch.summary.filtered += 1;
                continue;
            }
            let redacted = self.policy.redact(item);
            // Redaction rewrites the text, so what the scan knew no longer holds.
            let compact = *compact && redacted.is_none();
            let text = redacted.as_deref().unwrap_or(item);
            let mut written =
                match self
                    .renderer
                    .render_into(&mut scratch, text, view, compact, received_at)
                {
                    Ok(written) => written,
                    Err(too_large) => {
                        batch.summary.too_large += 1;
                        batch.too_large.push(too_large);
                        continue;
                    }
                };
            let msg = scratch.get(written.layout.msg_start..).unwrap_or_default();
            // One hash of the event for both: the chain links the MSG's SHA-256, and the
            // dedupe key is made from that digest instead of from the MSG again.
            if self.chained {
                written.layout.msg_digest = Some(msg_digest(msg));
            }
            let key = self.dedupe.enabled().then(|| {
                let bytes = written.layout.msg_digest.as_ref().map_or(msg, |d| &d[..]);
                self.dedupe.key(&view.audit_id, &view.stage, bytes)
            });
            if key.is_some_and(|k| !in_batch.insert(k)) {
                batch.summary.duplicates += 1;
                continue;
            }
            records.extend_from_slice(&scratch);
            rendered.push(Candidate {
                record: records.split().freeze(),
                written,
                key,
                redacted: redacted.is_some(),
            });
        }
        let keys: Vec<Key> = rendered.iter().filter_map(|r| r.key).collect();
        let mut seen = self.dedupe.seen(&keys).into_iter();
        for r in rendered {
            if r.key.is_some() && seen.next() == Some(true) {
                batch.summary.duplicates += 1;
                continue;
            }
            batch.summary.truncated += usize::from(r.written.truncated);
            batch.summary.redacted += usize::from(r.redacted);
            batch.records.push(r.record);
            batch.layouts.push(r.written.layout);
            batch.keys.0.extend(r.key);
        }
        batch.summary.stored = batch.records.len();
        Ok(batch)
    }

    /// Remembers the batch's events as stored, so that their resends are dropped. Call it
    /// once the records are durable.
    pub fn stored(&self, keys: &BatchKeys) {
        self.dedupe.insert_all(&keys.0);
    }
}

/// The real corpus batch (`tests/data/real-apiserver-v1.20.2-metadata-051.json`) through a
/// pipeline with `[syslog]` set to `syslog` (and what follows it), for the tests of the
/// stampers that take the renderer's layouts.
#[cfg(test)]
pub(crate) fn render_corpus(syslog: &str) -> Batch {
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/real-apiserver-v1.20.2-metadata-051.json"
    ))
    .unwrap();
    let config = Config::parse(
        &format!("[syslog]\n{syslog}"),
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let batch = Pipeline::new(&config, "h")
        .run(&body, "2000-01-01T00:00:00Z")
        .unwrap();
    assert!(batch.records.len() > 10);
    assert_eq!(batch.layouts.len(), batch.records.len());
    batch
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn pipeline(extra: &str) -> Pipeline {
        let config = Config::parse(extra, Path::new("test.toml")).unwrap();
        Pipeline::new(&config, "h")
    }

    const BODY: &[u8] = br#"{"kind":"EventList","items":[{"auditID":"a","stage":"ResponseComplete","verb":"get"},{"auditID":"b","stage":"ResponseComplete","verb":"create","objectRef":{"resource":"secrets"},"requestObject":{"data":{"k":"v"}}},{"auditID":"a","stage":"ResponseComplete","verb":"get"}]}"#;

    #[test]
    fn splits_dedupes_filters_redacts_and_renders() {
        let p = pipeline(
            "[[filter]]\naction = \"drop\"\nverb = [\"get\"]\n[[redact]]\npointer = \"/requestObject/data\"\n",
        );
        let batch = p.run(BODY, "2026-01-01T00:00:00Z").unwrap();
        // The repeat of the dropped `get` is dropped by the filter too: it repeats nothing
        // stored.
        assert_eq!(
            batch.summary,
            BatchSummary {
                items: 3,
                stored: 1,
                duplicates: 0,
                filtered: 2,
                redacted: 1,
                ..BatchSummary::default()
            }
        );
        let record = std::str::from_utf8(&batch.records[0]).unwrap();
        assert!(
            record.starts_with("<109>1 2026-01-01T00:00:00Z h kube-apiserver - ResponseComplete - {\"kind\":\"Event\""),
            "{record}"
        );
        assert!(
            record.ends_with(r#""requestObject":{"data":"[REDACTED]"}}"#),
            "{record}"
        );
    }

    #[test]
    fn keys_count_only_once_stored() {
        let p = pipeline("");
        let first = p.run(BODY, "2026-01-01T00:00:00Z").unwrap();
        assert_eq!((first.summary.stored, first.summary.duplicates), (2, 1));
        // Not yet stored (a 503 would leave it so): the resend is not a duplicate.
        let again = p.run(BODY, "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(again.summary.stored, 2);
        p.stored(&again.keys);
        let resend = p.run(BODY, "2026-01-01T00:00:00Z").unwrap();
        assert_eq!((resend.summary.stored, resend.summary.duplicates), (0, 3));
    }

    #[test]
    fn repeats_are_of_what_is_stored() {
        let p = pipeline("[[redact]]\npointer = \"/requestObject/data\"\n");
        // The same event with other secret data (redacted away), with spaces, and once with
        // another verb: only the last adds a record that differs.
        let body = br#"{"items":[{"auditID":"a","stage":"S","requestObject":{"data":"x"}},{"auditID":"a","stage":"S","requestObject":{"data":"y"}},{"auditID":"a", "stage":"S","requestObject":{"data":"z"}},{"auditID":"a","stage":"S","verb":"get"}]}"#;
        let batch = p.run(body, "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(
            (
                batch.summary.stored,
                batch.summary.duplicates,
                batch.summary.redacted
            ),
            (2, 2, 1)
        );
        assert!(batch.records[0].ends_with(br#""requestObject":{"data":"[REDACTED]"}}"#));
        assert!(batch.records[1].ends_with(br#""verb":"get"}"#));
        p.stored(&batch.keys);
        let resend = p.run(body, "2026-01-01T00:00:00Z").unwrap();
        assert_eq!((resend.summary.stored, resend.summary.duplicates), (0, 4));
    }

    #[test]
    fn with_the_chain_each_msg_is_hashed_once_for_the_chain_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _, _) = crate::integrity::keys::generate(dir.path()).unwrap();
        let chained = pipeline(&format!(
            "[syslog]\nenterprise_id = 32473\nbom = true\n[integrity]\nsigning_key = {:?}\n",
            key.display().to_string()
        ));
        let batch = chained.run(BODY, "2026-01-01T00:00:00Z").unwrap();
        assert_eq!((batch.summary.stored, batch.summary.duplicates), (2, 1));
        for (record, layout) in batch.records.iter().zip(&batch.layouts) {
            let msg = &record[layout.msg_start..];
            assert!(msg.starts_with(b"\xEF\xBB\xBF{"));
            assert_eq!(layout.msg_digest, Some(msg_digest(msg)));
        }
        chained.stored(&batch.keys);
        let resend = chained.run(BODY, "2026-01-01T00:00:00Z").unwrap();
        assert_eq!((resend.summary.stored, resend.summary.duplicates), (0, 3));
        // Without the chain there is no digest to share.
        let batch = pipeline("").run(BODY, "2026-01-01T00:00:00Z").unwrap();
        assert!(batch.layouts.iter().all(|l| l.msg_digest.is_none()));
    }

    #[test]
    fn dedupe_off_keeps_every_event_and_no_keys() {
        let p = pipeline("[dedupe]\nmax_entries = 0\n");
        for _ in 0..2 {
            let batch = p.run(BODY, "2026-01-01T00:00:00Z").unwrap();
            assert_eq!((batch.summary.stored, batch.summary.duplicates), (3, 0));
            assert_eq!(batch.records[0], batch.records[2], "the repeat is relayed");
            assert!(batch.keys.0.is_empty());
            p.stored(&batch.keys);
        }
    }

    #[test]
    fn one_bad_item_refuses_the_batch() {
        let p = pipeline("");
        let err = p
            .run(
                br#"{"items":[{"auditID":"a","stage":"S"},{"stage":"S"}]}"#,
                "x",
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("item 1: missing field `auditID`"),
            "{err}"
        );
    }

    #[test]
    fn too_large_events_are_reported() {
        let p = pipeline("[syslog]\nmax_message_bytes = 480\n");
        let body = format!(
            r#"{{"items":[{{"auditID":"huge","stage":"S","annotations":{{"x":"{}"}}}}]}}"#,
            "y".repeat(600)
        );
        let batch = p.run(body.as_bytes(), "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(batch.summary.too_large, 1);
        assert_eq!(batch.too_large[0].audit_id, "huge");
        assert!(batch.records.is_empty());
    }
}
