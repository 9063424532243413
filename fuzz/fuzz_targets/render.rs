//! Arbitrary events through the pipeline under arbitrary syslog settings: the first 4 bytes
//! choose facility, SD, BOM and size limit, the rest is one event. Every record must pass the
//! checks of `common::check`.
#![no_main]

mod common;

use kube_audit_relay::config::{ByteSize, Config, Facility, Hostname};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (config_bytes, json) = data.split_at(data.len().min(4));
    let b = |i: usize| config_bytes.get(i).copied().unwrap_or(0);
    let mut config = Config::builtin_default();
    config.syslog.facility = Facility::new(b(0) % 24).expect("0-23");
    config.syslog.enterprise_id = (b(1) % 2 == 1).then_some(32473);
    config.syslog.bom = b(2) % 2 == 1;
    config.syslog.max_message_bytes = ByteSize(480 + u64::from(b(3)) * 64);
    config.cluster_name = Hostname::new(String::from_utf8_lossy(config_bytes)).ok();
    let body = [b"{\"items\":[".as_slice(), json, b"]}"].concat();
    common::check(&config, &body);
});
