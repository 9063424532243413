//! An OCSF API Activity event (class 6003, category 6 Application Activity), schema version
//! [`OCSF_VERSION`], as one JSON object. The original event is kept whole in `raw_data`.
//! Only attributes the class defines are written (the published schema allows no others).

use serde_json::{Map, Value, json};

use super::Event;

/// The OCSF schema version the events follow (`metadata.version`).
pub const OCSF_VERSION: &str = "1.1.0";

/// `raw_data`'s `maxLength` in OCSF 1.1.0.
pub const RAW_DATA_MAX: usize = 65_535;

/// OCSF `activity_id` and its name, from the verb.
fn activity(verb: Option<&str>) -> (u8, &'static str) {
    match verb {
        Some("create") => (1, "Create"),
        Some("get" | "list" | "watch") => (2, "Read"),
        Some("update" | "patch") => (3, "Update"),
        Some("delete" | "deletecollection") => (4, "Delete"),
        Some(_) => (99, "Other"),
        None => (0, "Unknown"),
    }
}

/// OCSF `severity_id` and its name, from the syslog severity.
fn severity(syslog: u8) -> (u8, &'static str) {
    match syslog {
        0..=2 => (5, "Critical"),
        3 => (4, "High"),
        4 => (3, "Medium"),
        5 => (2, "Low"),
        _ => (1, "Informational"),
    }
}

fn put(map: &mut Map<String, Value>, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), Value::String(v.to_owned()));
    }
}

/// The event as one OCSF JSON object (without a line break).
pub fn render(e: &Event<'_>) -> Vec<u8> {
    let o = e.object();
    let (activity_id, activity_name) = activity(e.view.verb.as_deref());
    let (severity_id, severity_name) = severity(e.syslog_severity());

    let mut user = Map::new();
    put(
        &mut user,
        "name",
        Some(e.view.username()).filter(|u| !u.is_empty()),
    );
    if let Some(u) = &e.extra.user {
        put(&mut user, "uid", u.uid.as_deref());
        if !u.groups.is_empty() {
            let groups: Vec<Value> = u.groups.iter().map(|g| json!({ "name": g })).collect();
            user.insert("groups".into(), Value::Array(groups));
        }
    }
    let mut src = Map::new();
    match e.source_ip() {
        Some(ip) if ip.parse::<std::net::IpAddr>().is_ok() => put(&mut src, "ip", Some(ip)),
        // Not an address (redacted, malformed): kept as the endpoint's name.
        other => put(&mut src, "name", other),
    }
    if e.extra.source_ips.len() > 1 {
        let rest: Vec<Value> = e.extra.source_ips[1..].iter().map(|ip| json!(ip)).collect();
        src.insert("intermediate_ips".into(), Value::Array(rest));
    }

    let mut api = Map::new();
    api.insert("operation".into(), json!(e.verb()));
    api.insert("request".into(), json!({ "uid": e.view.audit_id }));
    put(&mut api, "version", o.api_version.as_deref());
    api.insert(
        "service".into(),
        json!({ "name": o.api_group.as_deref().filter(|g| !g.is_empty()).unwrap_or("core") }),
    );
    if let Some(code) = e.view.code() {
        let mut response = Map::new();
        response.insert("code".into(), json!(code));
        if let Some(s) = &e.extra.response_status {
            put(
                &mut response,
                "message",
                s.message.as_deref().or(s.reason.as_deref()),
            );
        }
        api.insert("response".into(), Value::Object(response));
    }

    let mut event = Map::new();
    event.insert("activity_id".into(), json!(activity_id));
    event.insert("activity_name".into(), json!(activity_name));
    event.insert("category_uid".into(), json!(6));
    event.insert("category_name".into(), json!("Application Activity"));
    event.insert("class_uid".into(), json!(6003));
    event.insert("class_name".into(), json!("API Activity"));
    event.insert("type_uid".into(), json!(600_300 + u32::from(activity_id)));
    event.insert(
        "type_name".into(),
        json!(format!("API Activity: {activity_name}")),
    );
    event.insert("severity_id".into(), json!(severity_id));
    event.insert("severity".into(), json!(severity_name));
    event.insert("time".into(), json!(e.time_millis().unwrap_or(0)));
    let mut metadata = Map::new();
    metadata.insert("version".into(), json!(OCSF_VERSION));
    metadata.insert(
        "product".into(),
        json!({
            "name": "kube-apiserver",
            "vendor_name": "Kubernetes",
            "feature": { "name": "audit" },
        }),
    );
    metadata.insert("uid".into(), json!(e.view.audit_id));
    put(&mut metadata, "original_time", e.time());
    put(&mut metadata, "log_name", Some(&e.view.stage));
    event.insert("metadata".into(), Value::Object(metadata));
    event.insert("actor".into(), json!({ "user": user }));
    event.insert("src_endpoint".into(), Value::Object(src));
    event.insert("api".into(), Value::Object(api));
    if o.resource.is_some() || o.name.is_some() {
        let mut r = Map::new();
        // A resource needs a name or uid: a collection (list, watch, create) is named by
        // its resource.
        put(&mut r, "name", o.name.as_deref().or(o.resource.as_deref()));
        let kind = match (&o.resource, &o.subresource) {
            (Some(res), Some(sub)) => Some(format!("{res}/{sub}")),
            (Some(res), None) => Some(res.to_string()),
            _ => None,
        };
        put(&mut r, "type", kind.as_deref());
        put(&mut r, "uid", o.uid.as_deref());
        put(&mut r, "namespace", o.namespace.as_deref());
        put(&mut r, "version", o.api_version.as_deref());
        event.insert("resources".into(), json!([r]));
    }
    let mut http = Map::new();
    // OCSF 1.1.0's http_method enum has no PATCH; a patch stays visible in api.operation.
    put(
        &mut http,
        "http_method",
        e.http_method().filter(|m| *m != "PATCH"),
    );
    put(&mut http, "user_agent", e.extra.user_agent.as_deref());
    if let Some(uri) = &e.extra.request_uri {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let mut url = Map::new();
        url.insert("path".into(), json!(path));
        if !query.is_empty() {
            url.insert("query_string".into(), json!(query));
        }
        url.insert("url_string".into(), json!(uri));
        http.insert("url".into(), Value::Object(url));
    }
    if !http.is_empty() {
        event.insert("http_request".into(), Value::Object(http));
    }
    match e.succeeded() {
        Some(true) => {
            event.insert("status_id".into(), json!(1));
            event.insert("status".into(), json!("Success"));
        }
        Some(false) => {
            event.insert("status_id".into(), json!(2));
            event.insert("status".into(), json!("Failure"));
        }
        None => {
            event.insert("status_id".into(), json!(0));
            event.insert("status".into(), json!("Unknown"));
        }
    }
    if let Some(code) = e.view.code() {
        event.insert("status_code".into(), json!(code.to_string()));
    }
    if let Some(s) = &e.extra.response_status {
        put(
            &mut event,
            "status_detail",
            s.reason.as_deref().or(s.message.as_deref()),
        );
    }
    // OCSF 1.1.0 caps raw_data at 65 535 characters: a larger event keeps its metadata
    // (the apiserver's own truncation rule: request and response objects dropped,
    // annotated `audit.k8s.io/truncated`).
    if e.json.chars().count() <= RAW_DATA_MAX {
        event.insert("raw_data".into(), json!(e.json));
    } else if let Some(short) =
        crate::audit::truncate_event(e.json).filter(|s| s.chars().count() <= RAW_DATA_MAX)
    {
        event.insert("raw_data".into(), json!(short));
    }
    serde_json::to_vec(&Value::Object(event)).unwrap_or_default()
}
