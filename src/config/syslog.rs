//! `[syslog]`: how events become RFC 5424 records.

use serde::{Deserialize, Serialize};

use super::units::{self, ByteSize, Facility, PrintAscii};

/// The HOSTNAME field: 1 to 255 printable ASCII characters (RFC 5424).
pub type Hostname = PrintAscii<255>;

/// The APP-NAME field: 1 to 48 printable ASCII characters (RFC 5424).
pub type AppName = PrintAscii<48>;

/// `[syslog]`: rendering of RFC 5424 records. Rendered once per event, before the queue, so
/// these settings apply to every destination.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyslogConfig {
    /// Syslog facility 0-23. Default 13 (log audit).
    pub facility: Facility,
    /// APP-NAME. Default `kube-apiserver`.
    pub app_name: AppName,
    /// IANA private enterprise number; when set, records carry `[k8saudit@PEN ...]` SD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enterprise_id: Option<u32>,
    /// Put a UTF-8 BOM before MSG (RFC 5424 §6.4). Default false: it breaks Logstash grok.
    pub bom: bool,
    /// Add RFC 5424's `[meta sequenceId="N"]` to every record, N assigned when it is stored
    /// (so a resend carries the same N). Default false.
    pub sequence_id: bool,
    /// Largest record, at least 480 bytes (the RFC 5424 minimum); larger events lose their
    /// request/response objects, then are dropped. Default 64 KiB.
    #[serde(deserialize_with = "units::size_at_least::<_, 480>")]
    pub max_message_bytes: ByteSize,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        Self {
            facility: Facility::LOG_AUDIT,
            app_name: AppName::literal("kube-apiserver"),
            enterprise_id: None,
            bom: false,
            sequence_id: false,
            max_message_bytes: ByteSize(64 << 10),
        }
    }
}
