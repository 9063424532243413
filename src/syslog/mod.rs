//! Syslog output: RFC 5424 rendering, stream framing, timestamps and a strict checker.
//!
//! Rendering happens once per event before the queue; framing happens per destination in
//! the sender, because one destination may want octet counting and another LF.

pub mod check;
pub mod convert;
pub mod frame;
pub mod render;
pub mod timestamp;

pub use check::{Rfc5424, parse_strict};
pub use frame::{FrameError, frame, next_frame};
pub use render::{Rendered, Renderer, TooLarge};
