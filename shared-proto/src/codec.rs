//! Length-prefixed frames and the primitive field codecs.
//!
//! A frame is a 4-byte big-endian body length followed by the body; the body's first
//! byte is a message tag. Decoding is pure: it reads a byte slice and answers
//! [`DecodeError::Incomplete`] ("give me more bytes"), [`DecodeError::Invalid`] ("this
//! peer is broken, close it") or a message with the number of bytes it used.
//! It never panics on any input.

use bytes::{BufMut, BytesMut};
use thiserror::Error;

use crate::limits::{MAX_FRAME_LEN, MAX_STRING_LEN};

/// Bytes taken by the length prefix of every frame.
pub const LEN_PREFIX: usize = 4;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// More bytes are needed; nothing was consumed.
    #[error("incomplete frame")]
    Incomplete,
    /// The bytes can never form a valid frame.
    #[error("invalid frame: {0}")]
    Invalid(#[from] Invalid),
}

/// How a frame is malformed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Invalid {
    /// The length prefix exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge(usize),
    /// The tag byte names no message of the expected kind.
    #[error("unknown message tag {0:#04x}")]
    UnknownTag(u8),
    /// A field ran past the end of the frame body.
    #[error("truncated field {0}")]
    Truncated(&'static str),
    /// Bytes were left in the frame body after the last field.
    #[error("{0} trailing bytes after message")]
    Trailing(usize),
    /// A field that must be UTF-8 was not.
    #[error("field {0} is not valid utf-8")]
    Utf8(&'static str),
    /// A field holds a value outside its range or a count over a limit.
    #[error("bad value for {0}")]
    BadValue(&'static str),
}

/// Why a message could not be encoded (a field over a protocol limit).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// A field or the whole frame is over its limit.
    #[error("{0} is over the protocol limit")]
    TooLarge(&'static str),
    /// Fields that cannot go together.
    #[error("{0}")]
    Inconsistent(&'static str),
}

/// A message that travels as one frame.
pub trait Frame: Sized {
    /// Appends the message as one frame (length prefix included) to `dst`.
    fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let start = dst.len();
        dst.put_u32(0);
        if let Err(e) = self.encode_body(dst) {
            dst.truncate(start);
            return Err(e);
        }
        let len = dst.len() - start - LEN_PREFIX;
        if len > MAX_FRAME_LEN {
            dst.truncate(start);
            return Err(EncodeError::TooLarge("frame"));
        }
        // The length fits: MAX_FRAME_LEN is far below u32::MAX.
        dst[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }

    /// Decodes one frame from the front of `src`, answering the message and the
    /// number of bytes it used.
    fn decode(src: &[u8]) -> Result<(Self, usize), DecodeError> {
        let body = frame_body(src)?;
        let mut r = Reader::new(body);
        let msg = Self::decode_body(&mut r)?;
        r.finish()?;
        Ok((msg, LEN_PREFIX + body.len()))
    }

    /// Writes the frame body: tag byte and fields.
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError>;

    /// About how many bytes [`Frame::encode`] writes, for sizing a buffer once.
    fn encoded_len_hint(&self) -> usize {
        256
    }

    /// Reads the frame body written by [`Frame::encode_body`].
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, Invalid>;
}

/// Splits off the body of the first frame in `src`, checking the length limit before
/// waiting for the bytes, so a hostile length cannot make a reader buffer 4 GiB.
pub fn frame_body(src: &[u8]) -> Result<&[u8], DecodeError> {
    let Some(prefix) = src.get(..LEN_PREFIX) else {
        return Err(DecodeError::Incomplete);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(Invalid::TooLarge(len).into());
    }
    src.get(LEN_PREFIX..LEN_PREFIX + len)
        .ok_or(DecodeError::Incomplete)
}

/// A cursor over one frame body. Every read checks bounds and reports the field.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<(), Invalid> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(Invalid::Trailing(n)),
        }
    }

    /// Reads `n` raw bytes.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], Invalid> {
        if self.buf.len() < n {
            return Err(Invalid::Truncated(field));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// Reads one byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, Invalid> {
        Ok(self.bytes(1, field)?[0])
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, Invalid> {
        let b = self.bytes(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, Invalid> {
        let b = self.bytes(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, Invalid> {
        let b = self.bytes(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// Reads a byte string with a u32 length, at most `max` long.
    pub fn blob(&mut self, max: usize, field: &'static str) -> Result<&'a [u8], Invalid> {
        let len = self.u32(field)? as usize;
        if len > max {
            return Err(Invalid::BadValue(field));
        }
        self.bytes(len, field)
    }

    /// Reads a UTF-8 string with a u32 length, at most `max` long.
    pub fn str(&mut self, max: usize, field: &'static str) -> Result<&'a str, Invalid> {
        std::str::from_utf8(self.blob(max, field)?).map_err(|_| Invalid::Utf8(field))
    }

    /// Reads a string of at most [`MAX_STRING_LEN`] bytes as an owned `String`.
    pub fn string(&mut self, field: &'static str) -> Result<String, Invalid> {
        self.str(MAX_STRING_LEN, field).map(str::to_owned)
    }

    /// Reads an optional string: a presence byte (0 or 1), then the string.
    pub fn opt_string(&mut self, field: &'static str) -> Result<Option<String>, Invalid> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => self.string(field).map(Some),
            _ => Err(Invalid::BadValue(field)),
        }
    }
}

/// Writes a byte string with a u32 length, refusing one over `max`.
pub fn put_blob(
    dst: &mut BytesMut,
    b: &[u8],
    max: usize,
    field: &'static str,
) -> Result<(), EncodeError> {
    if b.len() > max {
        return Err(EncodeError::TooLarge(field));
    }
    // The length fits: every `max` used in this crate is far below u32::MAX.
    dst.put_u32(b.len() as u32);
    dst.put_slice(b);
    Ok(())
}

/// Writes a string of at most [`MAX_STRING_LEN`] bytes.
pub fn put_string(dst: &mut BytesMut, s: &str, field: &'static str) -> Result<(), EncodeError> {
    put_blob(dst, s.as_bytes(), MAX_STRING_LEN, field)
}

/// Writes an optional string: a presence byte, then the string.
pub fn put_opt_string(
    dst: &mut BytesMut,
    s: Option<&str>,
    field: &'static str,
) -> Result<(), EncodeError> {
    match s {
        None => {
            dst.put_u8(0);
            Ok(())
        }
        Some(s) => {
            dst.put_u8(1);
            put_string(dst, s, field)
        }
    }
}

/// Test helpers shared by the message modules' tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::fmt::Debug;

    /// Encodes `msg`, checks the bytes against `golden` (hex), decodes them back and
    /// checks that every strict prefix is `Incomplete`.
    pub fn check<T: Frame + PartialEq + Debug>(msg: &T, golden: &str) {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf).expect("encodes");
        assert_eq!(hex::encode(&buf), golden, "golden bytes for {msg:?}");
        round_trip(msg);
    }

    /// Encodes and decodes `msg`, checking equality, exact consumption and prefixes.
    pub fn round_trip<T: Frame + PartialEq + Debug>(msg: &T) {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf).expect("encodes");
        // Followed by another frame's bytes: decode must take exactly its own.
        let len = buf.len();
        buf.extend_from_slice(&[0, 0, 0, 9, 1]);
        let (back, used) = T::decode(&buf).expect("decodes");
        assert_eq!(&back, msg);
        assert_eq!(used, len);
        for cut in 0..len {
            assert_eq!(
                T::decode(&buf[..cut]).err(),
                Some(DecodeError::Incomplete),
                "prefix of {cut} bytes of {msg:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_length_is_rejected_before_buffering() {
        let src = [0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            frame_body(&src),
            Err(DecodeError::Invalid(Invalid::TooLarge(0xffff_ffff)))
        );
        let src = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(
            frame_body(&src),
            Err(DecodeError::Invalid(Invalid::TooLarge(_)))
        ));
    }

    #[test]
    fn reader_reports_truncation_and_trailing_bytes() {
        let mut r = Reader::new(&[0, 0, 0, 5, b'a']);
        assert_eq!(r.blob(10, "x"), Err(Invalid::Truncated("x")));
        let mut r = Reader::new(&[0, 0, 0, 11]);
        assert_eq!(r.blob(10, "x"), Err(Invalid::BadValue("x")));
        let mut r = Reader::new(&[1, 2]);
        r.u8("a").unwrap();
        assert_eq!(r.finish(), Err(Invalid::Trailing(1)));
        let mut r = Reader::new(&[0, 0, 0, 2, 0xc3, 0x28]);
        assert_eq!(r.str(10, "s"), Err(Invalid::Utf8("s")));
        let mut r = Reader::new(&[2]);
        assert_eq!(r.opt_string("o"), Err(Invalid::BadValue("o")));
    }
}
