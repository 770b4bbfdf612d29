//! Length-prefixed frames: a little-endian `u32` length, then that many bytes of JSON.
//!
//! Every frame read goes through one decoder, [`FrameDecoder`]: it takes bytes as they
//! come, refuses a length over the connection's limit as soon as the prefix is there
//! (before any of the body is held), and cuts complete frames out. [`read_frame`] drives
//! it from a blocking reader, never reading past the end of the frame (raw bytes may
//! follow a frame on the same connection); a caller with a non-blocking socket feeds it
//! with [`FrameDecoder::push`] (or [`FrameDecoder::read_from`]) and takes frames out
//! with [`FrameDecoder::next_frame`].
//!
//! Limits are per direction: guest → host frames are small ([`MAX_FRAME_LEN`]); host →
//! guest frames are bounded by [`MAX_HOST_FRAME_LEN`].

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest guest → host frame (and the default of [`read_frame`]/[`write_frame`]).
/// Larger length prefixes are garbage.
pub const MAX_FRAME_LEN: u32 = 1 << 20;
/// Largest host → guest frame ([`HostMessage`](crate::HostMessage)): a `Run` with a large
/// environment, seccomp filter and mount list. The guest reads these; the host never
/// accepts a frame this large.
pub const MAX_HOST_FRAME_LEN: u32 = 16 << 20;

/// Size of the length prefix.
const PREFIX_LEN: usize = 4;
/// Most bytes [`FrameDecoder::read_from`] reads in one call.
const READ_CHUNK: usize = 64 << 10;

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("I/O error on the connection: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {len} bytes is over the {limit}-byte limit of this connection")]
    TooLarge { len: u32, limit: u32 },
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Writes one frame: a little-endian `u32` length, then the JSON body.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    write_frame_limited(w, msg, MAX_FRAME_LEN)
}

/// [`write_frame`] with the size limit of the connection (e.g. [`MAX_HOST_FRAME_LEN`]).
pub fn write_frame_limited<W: Write, T: Serialize>(
    w: &mut W,
    msg: &T,
    limit: u32,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(msg)?;
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        len: u32::MAX,
        limit,
    })?;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    let mut buf = Vec::with_capacity(PREFIX_LEN + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    Ok(())
}

/// Reads one frame. A clean EOF before the first byte is [`FrameError::Closed`].
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, FrameError> {
    read_frame_limited(r, MAX_FRAME_LEN)
}

/// [`read_frame`] with the size limit of the connection. Reads no byte past the frame;
/// an EOF inside it is an [`io::ErrorKind::UnexpectedEof`] error.
pub fn read_frame_limited<R: Read, T: DeserializeOwned>(
    r: &mut R,
    limit: u32,
) -> Result<T, FrameError> {
    let mut decoder = FrameDecoder::new(limit);
    loop {
        if let Some(msg) = decoder.next_frame()? {
            return Ok(msg);
        }
        let missing = decoder.missing()?;
        match decoder.read_from(r, missing) {
            Ok(0) if decoder.is_empty() => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Cuts frames out of bytes that arrive in pieces of any size.
#[derive(Debug)]
pub struct FrameDecoder {
    /// Bytes received and not yet taken out as frames: the incomplete frame at the front.
    buf: Vec<u8>,
    limit: u32,
}

impl Default for FrameDecoder {
    /// A decoder for guest → host frames ([`MAX_FRAME_LEN`]).
    fn default() -> Self {
        Self::new(MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder that refuses frames over `limit` bytes.
    pub fn new(limit: u32) -> Self {
        Self {
            buf: Vec::new(),
            limit,
        }
    }

    /// Adds bytes that arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// One `read` of at most `max` bytes (and at most 64 KiB) from `r`, added as if
    /// pushed. Returns what `read` returned: 0 is the reader's EOF.
    pub fn read_from<R: Read>(&mut self, r: &mut R, max: usize) -> io::Result<usize> {
        let start = self.buf.len();
        self.buf.resize(start + max.min(READ_CHUNK), 0);
        let got = r.read(&mut self.buf[start..]);
        self.buf.truncate(start + *got.as_ref().unwrap_or(&0));
        got
    }

    /// The end of the frame at the front (prefix included), once its prefix is there.
    /// A length over the limit is an error at once, before its body arrives.
    fn frame_end(&self) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = self.buf.first_chunk::<PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*prefix);
        if len > self.limit {
            return Err(FrameError::TooLarge {
                len,
                limit: self.limit,
            });
        }
        Ok(Some(PREFIX_LEN + len as usize))
    }

    /// How many more bytes the frame at the front needs (its prefix's first, then its
    /// body's); 0 when it is complete. Reading no more than this never reads past it.
    pub fn missing(&self) -> Result<usize, FrameError> {
        Ok(match self.frame_end()? {
            None => PREFIX_LEN - self.buf.len(),
            Some(end) => end.saturating_sub(self.buf.len()),
        })
    }

    /// The next complete frame, if one is there. A frame that does not decode is an
    /// error (and is consumed).
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let Some(end) = self.frame_end()? else {
            return Ok(None);
        };
        let Some(body) = self.buf.get(PREFIX_LEN..end) else {
            return Ok(None);
        };
        // Decoded as `T` itself: as `Option<T>`, a `null` body would read as no frame.
        let msg = serde_json::from_slice::<T>(body);
        self.buf.drain(..end);
        Ok(Some(msg?))
    }

    /// Bytes held: the part of the next frame that has arrived (and any after it).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether no byte of a next frame has arrived.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExitStatus, GuestMessage, HostMessage, MountSpec, NetworkSpec, RootfsSpec};
    use crate::{LinuxSpec, ProcessSpec};

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        let msg = GuestMessage::Exited {
            process: 0,
            status: ExitStatus::Signaled(9),
            oom_kills: 1,
        };
        write_frame(&mut buf, &msg).unwrap();
        let back: GuestMessage = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn the_blocking_reader_never_reads_past_its_frame() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &GuestMessage::Hello { version: 2 }).unwrap();
        wire.extend_from_slice(b"raw bytes after the frame");
        let mut r = wire.as_slice();
        let back: GuestMessage = read_frame(&mut r).unwrap();
        assert_eq!(back, GuestMessage::Hello { version: 2 });
        assert_eq!(r, b"raw bytes after the frame");
    }

    /// A reader that hands out one byte per `read`, with an `Interrupted` between.
    struct Trickle<'a> {
        data: &'a [u8],
        interrupt: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = self.data.len().min(buf.len()).min(1);
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn the_blocking_reader_takes_a_frame_a_byte_at_a_time() {
        let mut wire = Vec::new();
        let msg = GuestMessage::Started { process: 3, pid: 9 };
        write_frame(&mut wire, &msg).unwrap();
        let mut r = Trickle {
            data: &wire,
            interrupt: false,
        };
        assert_eq!(read_frame::<_, GuestMessage>(&mut r).unwrap(), msg);
        assert!(matches!(
            read_frame::<_, GuestMessage>(&mut r),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn the_decoder_cuts_frames_from_any_split() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &GuestMessage::Hello { version: 1 }).unwrap();
        write_frame(&mut wire, &GuestMessage::Started { process: 0, pid: 5 }).unwrap();
        for split in 0..wire.len() {
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            d.push(&wire[..split]);
            while let Some(m) = d.next_frame::<GuestMessage>().unwrap() {
                got.push(m);
            }
            assert_eq!(d.is_empty(), d.buffered() == 0);
            d.push(&wire[split..]);
            while let Some(m) = d.next_frame::<GuestMessage>().unwrap() {
                got.push(m);
            }
            assert_eq!(got.len(), 2, "split at {split}");
            assert!(d.is_empty());
            assert_eq!(d.missing().unwrap(), 4);
        }
    }

    #[test]
    fn the_decoder_says_how_much_of_a_frame_is_missing() {
        let mut d = FrameDecoder::new(256);
        assert_eq!(d.missing().unwrap(), 4);
        d.push(&[10, 0]);
        assert_eq!(d.missing().unwrap(), 2);
        d.push(&[0, 0, b'{']);
        assert_eq!(d.missing().unwrap(), 9);
        d.push(&1000u32.to_le_bytes());
        assert_eq!(d.missing().unwrap(), 5);
        let mut d = FrameDecoder::new(256);
        d.push(&257u32.to_le_bytes());
        assert!(matches!(
            d.missing(),
            Err(FrameError::TooLarge {
                len: 257,
                limit: 256
            })
        ));
    }

    #[test]
    fn a_length_over_the_limit_is_refused_before_its_body() {
        let mut d = FrameDecoder::default();
        d.push(&(MAX_FRAME_LEN + 1).to_le_bytes());
        assert!(matches!(
            d.next_frame::<GuestMessage>(),
            Err(FrameError::TooLarge { .. })
        ));
        let mut d = FrameDecoder::default();
        d.push(&3u32.to_le_bytes());
        d.push(b"{{{");
        assert!(matches!(
            d.next_frame::<GuestMessage>(),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn limits_are_per_connection() {
        let run = HostMessage::Run {
            rootfs: RootfsSpec::default(),
            hostname: None,
            // A large environment: more than a guest may send, less than the host may.
            process: ProcessSpec {
                env: vec![format!("BIG={}", "x".repeat(2 << 20))],
                ..Default::default()
            },
            linux: LinuxSpec::default(),
            mounts: vec![MountSpec {
                destination: "/data".into(),
                fstype: "bind".into(),
                share: Some("m0".into()),
                ..Default::default()
            }],
            network: NetworkSpec::default(),
        };
        let mut buf = Vec::new();
        assert!(matches!(
            write_frame(&mut buf, &run),
            Err(FrameError::TooLarge { .. })
        ));
        write_frame_limited(&mut buf, &run, MAX_HOST_FRAME_LEN).unwrap();
        assert!(matches!(
            read_frame::<_, HostMessage>(&mut buf.as_slice()),
            Err(FrameError::TooLarge { .. })
        ));
        let back: HostMessage =
            read_frame_limited(&mut buf.as_slice(), MAX_HOST_FRAME_LEN).unwrap();
        assert_eq!(back, run);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let huge = (MAX_FRAME_LEN + 1).to_le_bytes();
        assert!(matches!(
            read_frame::<_, GuestMessage>(&mut &huge[..]),
            Err(FrameError::TooLarge { .. })
        ));
        let mut junk = 5u32.to_le_bytes().to_vec();
        junk.extend_from_slice(b"{{{{{");
        assert!(matches!(
            read_frame::<_, GuestMessage>(&mut junk.as_slice()),
            Err(FrameError::Malformed(_))
        ));
        let short = [1u8, 0];
        assert!(matches!(
            read_frame::<_, GuestMessage>(&mut &short[..]),
            Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof
        ));
        let mut cut = 10u32.to_le_bytes().to_vec();
        cut.extend_from_slice(b"{\"He");
        assert!(matches!(
            read_frame::<_, GuestMessage>(&mut cut.as_slice()),
            Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof
        ));
        assert!(matches!(
            read_frame::<_, GuestMessage>(&mut &[][..]),
            Err(FrameError::Closed)
        ));
        let unknown = br#"{"Reboot":{}}"#;
        let mut f = (unknown.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(unknown);
        assert!(read_frame::<_, GuestMessage>(&mut f.as_slice()).is_err());
    }
}
