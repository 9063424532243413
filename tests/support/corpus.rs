//! The corpus: real audit events (`tests/data/`, attributions in its README) as list items,
//! with the expectations a test checks them against, computed apart from the relay's code.

use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::data_file;

/// One event of the corpus, without top-level `kind`/`apiVersion` (as list items are sent).
#[derive(Debug, Clone)]
pub struct CorpusEvent {
    /// The item JSON as put in a batch.
    pub item: String,
    pub audit_id: String,
    pub stage: String,
    pub value: serde_json::Value,
}

impl CorpusEvent {
    /// The MSG the relay must write for this item.
    pub fn expected_msg(&self) -> String {
        format!(
            "{{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",{}",
            &self.item[1..]
        )
    }

    /// Severity per DESIGN §3, computed independently of the relay's code.
    pub fn expected_severity(&self) -> u8 {
        let code = self
            .value
            .pointer("/responseStatus/code")
            .and_then(serde_json::Value::as_i64);
        let verb = self
            .value
            .get("verb")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if self.stage == "Panic" {
            2
        } else if code.is_some_and(|c| c >= 500) {
            3
        } else if matches!(code, Some(401 | 403)) {
            4
        } else if code.is_some_and(|c| (400..500).contains(&c))
            || ["create", "update", "patch", "delete", "deletecollection"].contains(&verb)
        {
            5
        } else {
            6
        }
    }

    pub fn expected_timestamp(&self) -> Option<String> {
        ["stageTimestamp", "requestReceivedTimestamp", "timestamp"]
            .iter()
            .find_map(|k| {
                self.value
                    .get(*k)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            })
    }
}

struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Self::Value, M::Error> {
                let mut v = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    v.push((k, m.next_value()?));
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Removes top-level `kind` and `apiVersion`, keeping every other byte and the key order.
pub fn as_list_item(event: &str) -> String {
    let members: Members<'_> = serde_json::from_str(event).unwrap();
    let parts: Vec<String> = members
        .0
        .iter()
        .filter(|(k, _)| k != "kind" && k != "apiVersion")
        .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v.get()))
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn corpus_event(item: String) -> CorpusEvent {
    let value: serde_json::Value = serde_json::from_str(&item).unwrap();
    CorpusEvent {
        audit_id: value["auditID"].as_str().unwrap().to_owned(),
        stage: value["stage"].as_str().unwrap().to_owned(),
        item,
        value,
    }
}

/// All events of a `.jsonl` corpus file, as list items.
pub fn corpus(file: &str) -> Vec<CorpusEvent> {
    std::fs::read_to_string(data_file(file))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| corpus_event(as_list_item(l)))
        .collect()
}

/// Every corpus event, each (auditID, stage) once (the Falco set repeats a few on purpose).
pub fn all_corpus_events() -> Vec<CorpusEvent> {
    static ALL: std::sync::LazyLock<Vec<CorpusEvent>> = std::sync::LazyLock::new(|| {
        let mut seen = std::collections::HashSet::new();
        corpus("openshift-cluster-logging-operator.jsonl")
            .into_iter()
            .chain(corpus("falcosecurity-falco.jsonl"))
            .filter(|e| seen.insert((e.audit_id.clone(), e.stage.clone())))
            .collect()
    });
    ALL.clone()
}

/// The items of a captured webhook body.
pub fn captured_items(file: &str) -> (Vec<u8>, Vec<CorpusEvent>) {
    let body = std::fs::read(data_file(file)).unwrap();
    #[derive(Deserialize)]
    struct List<'a> {
        #[serde(borrow)]
        items: Vec<&'a RawValue>,
    }
    let list: List<'_> = serde_json::from_slice(&body).unwrap();
    let items = list
        .items
        .iter()
        .map(|i| corpus_event(i.get().to_owned()))
        .collect();
    (body, items)
}

/// A webhook body as kube-apiserver serialises it (compact, trailing newline).
pub fn eventlist(events: &[CorpusEvent]) -> Vec<u8> {
    let items: Vec<&str> = events.iter().map(|e| e.item.as_str()).collect();
    format!(
        "{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"metadata\":{{}},\"items\":[{}]}}\n",
        items.join(",")
    )
    .into_bytes()
}

/// The first `n` corpus events whose item is shorter than `max_len` bytes.
pub fn small_events(max_len: usize, n: usize) -> Vec<CorpusEvent> {
    all_corpus_events()
        .into_iter()
        .filter(|e| e.item.len() < max_len)
        .take(n)
        .collect()
}
