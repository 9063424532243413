//! Syslog output: RFC 5424 rendering, per-destination encoding (format and framing),
//! timestamps and a strict checker.
//!
//! Rendering happens once per event before the queue; encoding happens per destination in
//! the sender ([`Encoder`]), because one destination may want octet counting and another LF,
//! or RFC 3164.

pub mod check;
pub mod convert;
pub mod encode;
pub mod frame;
pub mod render;
pub mod timestamp;

pub use encode::Encoder;

pub use check::{Rfc5424, parse_strict};
pub use frame::{FrameError, frame, next_frame};
pub use render::{Layout, Rendered, Renderer, TooLarge, Written};
