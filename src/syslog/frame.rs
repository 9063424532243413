//! Framing of messages on a byte stream, kept apart from rendering: octet counting
//! (`LEN SP MSG`, RFC 5425 / RFC 6587) or one message per line (`MSG LF`).
//!
//! [`next_frame`] is the reverse, used by the test harness and the benchmark sink.

use crate::config::Framing;

/// Appends `message` to `out` in the destination's framing.
pub fn frame(framing: Framing, message: &[u8], out: &mut Vec<u8>) {
    match framing {
        Framing::Octet => {
            write_decimal(out, message.len() as u64);
            out.push(b' ');
            out.extend_from_slice(message);
        }
        Framing::Lf => {
            out.extend_from_slice(message);
            out.push(b'\n');
        }
    }
}

/// Appends `n` in decimal without going through `fmt` (this runs once per event).
pub(crate) fn write_decimal(out: &mut impl bytes::BufMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

/// A stream that does not follow the framing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Octet counting: the length prefix is not a decimal number followed by a space.
    #[error("bad octet-count prefix")]
    BadLength,
    /// The frame is longer than the reader accepts.
    #[error("frame of {0} bytes is above the limit")]
    TooLong(usize),
}

/// Splits the first complete frame off `buf`: `Ok(Some((consumed, message)))`, or `Ok(None)`
/// when more bytes are needed.
///
/// # Errors
/// [`FrameError`] when the bytes cannot be a frame of this framing.
pub fn next_frame(
    framing: Framing,
    buf: &[u8],
    max_len: usize,
) -> Result<Option<(usize, &[u8])>, FrameError> {
    match framing {
        Framing::Octet => {
            let Some(space) = buf.iter().take(11).position(|&b| b == b' ') else {
                return if buf.len() > 10 || !buf.iter().all(u8::is_ascii_digit) {
                    Err(FrameError::BadLength)
                } else {
                    Ok(None)
                };
            };
            let digits = &buf[..space];
            if digits.is_empty() || digits[0] == b'0' || !digits.iter().all(u8::is_ascii_digit) {
                return Err(FrameError::BadLength);
            }
            let len = digits.iter().fold(0usize, |n, d| {
                n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
            });
            if len > max_len {
                return Err(FrameError::TooLong(len));
            }
            let end = space + 1 + len;
            Ok((buf.len() >= end).then(|| (end, &buf[space + 1..end])))
        }
        Framing::Lf => match buf.iter().position(|&b| b == b'\n') {
            Some(pos) if pos > max_len => Err(FrameError::TooLong(pos)),
            Some(pos) => Ok(Some((pos + 1, &buf[..pos]))),
            None if buf.len() > max_len => Err(FrameError::TooLong(buf.len())),
            None => Ok(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for framing in [Framing::Octet, Framing::Lf] {
            let mut out = Vec::new();
            frame(framing, b"<1>1 a", &mut out);
            frame(framing, b"<2>1 bb", &mut out);
            let (n, m) = next_frame(framing, &out, 100).unwrap().unwrap();
            assert_eq!(m, b"<1>1 a");
            let (n2, m2) = next_frame(framing, &out[n..], 100).unwrap().unwrap();
            assert_eq!(m2, b"<2>1 bb");
            assert_eq!(n + n2, out.len());
            assert_eq!(next_frame(framing, &out[..n - 1], 100).unwrap(), None);
        }
        assert_eq!(
            next_frame(Framing::Octet, b"x1 a", 9),
            Err(FrameError::BadLength)
        );
        assert_eq!(
            next_frame(Framing::Octet, b"99 a", 9),
            Err(FrameError::TooLong(99))
        );
    }
}
