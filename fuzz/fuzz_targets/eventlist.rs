//! The webhook's pipeline on arbitrary bytes: EventList split, dedupe, filter, redaction,
//! truncation and rendering. Must never panic; every record must pass the checks of
//! `common::check`.
#![no_main]

mod common;

use std::sync::LazyLock;

use kube_audit_relay::config::Config;
use libfuzzer_sys::fuzz_target;

static CONFIG: LazyLock<Config> = LazyLock::new(|| {
    Config::parse(
        "[syslog]\nmax_message_bytes = \"4KiB\"\n[[filter]]\naction = \"drop\"\nverb = [\"watch\"]\n[[redact]]\npointer = \"/requestObject/data\"\n[[redact]]\npointer = \"/annotations/a~1b\"\nresource = [\"secrets\"]\n",
        std::path::Path::new("fuzz.toml"),
    )
    .expect("fuzz config")
});

fuzz_target!(|data: &[u8]| {
    common::check(&CONFIG, data);
});
