//! Reading what the guest sends without trusting it.
//!
//! - [`FrameReader`]: frames cut from the control connection's bytes as they arrive, by
//!   the protocol's one decoder ([`FrameDecoder`]). It never blocks, so a guest that
//!   stops in the middle of a frame cannot stall the monitor (and with it `runvm kill`,
//!   exec and the other processes' relays); the session gives a started frame
//!   [`FRAME_STALL`] to be complete.
//! - [`PendingStream`]: a new stream connection whose header has not fully arrived, read
//!   the same way, never past the header (the raw stream follows it).
//! - [`text`]: guest-written text made fit to show a user: bounded, and without terminal
//!   control characters; [`GuestText`] does the same for an error that may quote the
//!   guest (a frame that does not decode).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};
use runvm_protocol::{FrameDecoder, FrameError, MAX_FRAME_LEN};
use serde::de::DeserializeOwned;

/// How long a frame the guest has started may take to be complete.
pub const FRAME_STALL: Duration = Duration::from_secs(10);
/// Largest stream header accepted (a real one is about 25 bytes).
const MAX_HEADER_LEN: u32 = 256;
/// Longest guest text shown, in bytes.
const MAX_TEXT: usize = 2048;

/// Reads up to `buf.len()` bytes that are already there. `Ok(None)`: nothing yet.
/// `Ok(Some(0))`: end of stream.
fn recv_now(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match recv(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => return Ok(Some(n)),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Accumulates the control connection's bytes and cuts them into frames (protocol's
/// [`FrameDecoder`], limited to [`MAX_FRAME_LEN`]), timing the incomplete one.
#[derive(Default)]
pub struct FrameReader {
    decoder: FrameDecoder,
    /// When the first byte of the incomplete frame at the front of `decoder` arrived.
    partial_since: Option<Instant>,
    received: usize,
}

impl FrameReader {
    /// Reads what is there on `fd` without blocking. Returns false at end of stream.
    pub fn fill(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        // Never hold more than one largest frame plus a chunk: complete frames are taken
        // out by the caller after every fill.
        while self.decoder.buffered() <= MAX_FRAME_LEN as usize + 4 {
            match recv_now(fd, &mut chunk)? {
                None => break,
                Some(0) => return Ok(false),
                Some(n) => self.push(&chunk[..n]),
            }
        }
        Ok(true)
    }

    fn push(&mut self, bytes: &[u8]) {
        self.decoder.push(bytes);
        self.received += bytes.len();
        self.note_partial();
    }

    fn note_partial(&mut self) {
        if self.decoder.is_empty() {
            self.partial_since = None;
        } else if self.partial_since.is_none() {
            self.partial_since = Some(Instant::now());
        }
    }

    /// The next complete frame, if one is there. A length over the limit is an error at
    /// once, before its body arrives.
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let msg = self.decoder.next_frame()?;
        if msg.is_some() {
            // What is left is the start of the next frame, timed from now.
            self.partial_since = None;
            self.note_partial();
        }
        Ok(msg)
    }

    /// Bytes of an incomplete frame waiting for the rest.
    pub fn partial(&self) -> usize {
        self.decoder.buffered()
    }

    /// Bytes received in all.
    pub fn received(&self) -> usize {
        self.received
    }

    /// When the incomplete frame must be complete, if one is waiting.
    pub fn deadline(&self) -> Option<Instant> {
        self.partial_since.map(|t| t + FRAME_STALL)
    }
}

/// A stream connection whose header has not fully arrived.
pub struct PendingStream {
    pub stream: UnixStream,
    /// The header's bytes so far, limited to [`MAX_HEADER_LEN`].
    decoder: FrameDecoder,
    pub deadline: Instant,
}

/// How reading a stream header went.
pub enum Header<T> {
    /// Still incomplete.
    Waiting,
    /// The connection ended before its header (the guest gave up on a slow connect).
    Closed,
    Complete(T),
}

impl PendingStream {
    pub fn new(stream: UnixStream, wait: Duration) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::new(MAX_HEADER_LEN),
            deadline: Instant::now() + wait,
        }
    }

    /// Reads what is there of the header, never a byte past it.
    pub fn read_header<T: DeserializeOwned>(&mut self) -> Result<Header<T>, FrameError> {
        loop {
            if let Some(header) = self.decoder.next_frame()? {
                return Ok(Header::Complete(header));
            }
            let mut chunk = [0u8; 4 + MAX_HEADER_LEN as usize];
            let want = self.decoder.missing()?.min(chunk.len());
            match recv_now(self.stream.as_fd(), &mut chunk[..want])? {
                None => return Ok(Header::Waiting),
                Some(0) => return Ok(Header::Closed),
                Some(n) => self.decoder.push(&chunk[..n]),
            }
        }
    }
}

/// Guest-written text as it may be shown: at most [`MAX_TEXT`] bytes, control
/// characters (escape sequences, carriage returns, bells) written out as `\u{…}`.
pub fn text(s: &str) -> String {
    let mut out = String::new();
    let mut cut = s.len();
    for (i, c) in s.char_indices() {
        if out.len() >= MAX_TEXT {
            cut = i;
            break;
        }
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    if cut < s.len() {
        out.push_str(&format!("… ({} more bytes)", s.len() - cut));
    }
    out
}

/// An error about something the guest sent, which may quote it (serde names the unknown
/// variant or the string it could not take, in full): shown only through [`text`], and
/// with no cause behind it, so no error chain prints the guest's words unbounded.
pub struct GuestText<E> {
    /// For callers that tell errors apart by kind (the tests do); never shown.
    #[cfg_attr(not(test), allow(dead_code))]
    error: E,
    shown: String,
}

impl<E: std::fmt::Display> GuestText<E> {
    pub fn new(error: E) -> Self {
        let shown = text(&error.to_string());
        Self { error, shown }
    }

    /// The error itself (its text unbounded: not for display).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn error(&self) -> &E {
        &self.error
    }
}

impl<E> std::fmt::Display for GuestText<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl<E> std::fmt::Debug for GuestText<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GuestText({:?})", self.shown)
    }
}

impl<E> std::error::Error for GuestText<E> {}

#[cfg(test)]
mod tests {
    use super::*;
    use runvm_protocol::{write_frame, GuestMessage, StreamHeader};
    use std::io::Write;

    #[test]
    fn frames_are_cut_from_any_split_and_timed_while_incomplete() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &GuestMessage::Hello { version: 1 }).unwrap();
        write_frame(&mut wire, &GuestMessage::Started { process: 0, pid: 5 }).unwrap();
        for split in 0..wire.len() {
            let mut r = FrameReader::default();
            let mut got = Vec::new();
            r.push(&wire[..split]);
            while let Some(m) = r.next::<GuestMessage>().unwrap() {
                got.push(m);
            }
            assert_eq!(r.deadline().is_some(), r.partial() > 0);
            r.push(&wire[split..]);
            while let Some(m) = r.next::<GuestMessage>().unwrap() {
                got.push(m);
            }
            assert_eq!(got.len(), 2, "split at {split}");
            assert_eq!(r.partial(), 0);
            assert!(r.deadline().is_none());
        }
        // The guest's bound: a length over it is refused on its prefix (the decoder's
        // other refusals are protocol's tests).
        let mut r = FrameReader::default();
        r.push(&(MAX_FRAME_LEN + 1).to_le_bytes());
        assert!(matches!(
            r.next::<GuestMessage>(),
            Err(FrameError::TooLarge {
                limit: MAX_FRAME_LEN,
                ..
            })
        ));
    }

    #[test]
    fn a_stalled_frame_has_a_deadline_from_its_first_byte() {
        let (mut guest, host) = UnixStream::pair().unwrap();
        let mut r = FrameReader::default();
        guest.write_all(&100u32.to_le_bytes()).unwrap();
        assert!(r.fill(host.as_fd()).unwrap());
        let first = r.deadline().expect("a partial frame has a deadline");
        guest.write_all(b"x").unwrap();
        assert!(r.fill(host.as_fd()).unwrap());
        // More bytes of the same frame do not move its deadline (a trickle stays bounded).
        assert_eq!(r.deadline(), Some(first));
        assert!(r.next::<GuestMessage>().unwrap().is_none());
        assert_eq!(r.received(), 5);
        // Nothing there: fill returns at once.
        assert!(r.fill(host.as_fd()).unwrap());
        drop(guest);
        assert!(!r.fill(host.as_fd()).unwrap());
    }

    #[test]
    fn a_stream_header_is_read_in_pieces_and_never_past_its_end() {
        let (mut guest, host) = UnixStream::pair().unwrap();
        let mut p = PendingStream::new(host, Duration::from_secs(5));
        let mut wire = Vec::new();
        write_frame(&mut wire, &StreamHeader { process: 3, fd: 1 }).unwrap();
        guest.write_all(&wire[..2]).unwrap();
        assert!(matches!(
            p.read_header::<StreamHeader>().unwrap(),
            Header::Waiting
        ));
        guest.write_all(&wire[2..]).unwrap();
        guest.write_all(b"raw stream bytes").unwrap();
        match p.read_header::<StreamHeader>().unwrap() {
            Header::Complete(h) => assert_eq!(h, StreamHeader { process: 3, fd: 1 }),
            _ => panic!("header not complete"),
        }
        let mut rest = [0u8; 16];
        std::io::Read::read_exact(&mut p.stream, &mut rest).unwrap();
        assert_eq!(&rest, b"raw stream bytes");

        let (mut guest, host) = UnixStream::pair().unwrap();
        let mut p = PendingStream::new(host, Duration::from_secs(5));
        guest.write_all(&100_000u32.to_le_bytes()).unwrap();
        assert!(p.read_header::<StreamHeader>().is_err());

        let (guest, host) = UnixStream::pair().unwrap();
        let mut p = PendingStream::new(host, Duration::from_secs(5));
        drop(guest);
        assert!(matches!(
            p.read_header::<StreamHeader>().unwrap(),
            Header::Closed
        ));
    }

    #[test]
    fn an_error_quoting_the_guest_is_shown_bounded_and_without_causes() {
        // serde quotes the unknown variant in full: half a megabyte of it, with escapes.
        let name = format!("\x1b[31m{}", "A".repeat(1 << 19));
        let mut wire = Vec::new();
        write_frame(&mut wire, &std::collections::BTreeMap::from([(name, 1)])).unwrap();
        let mut r = FrameReader::default();
        r.push(&wire);
        let e = GuestText::new(r.next::<GuestMessage>().unwrap_err());
        assert!(matches!(e.error(), FrameError::Malformed(_)));
        let shown = e.to_string();
        assert!(
            shown.starts_with("malformed frame: unknown variant"),
            "{shown:.100}"
        );
        assert!(shown.len() < MAX_TEXT + 64, "{} bytes", shown.len());
        assert!(!shown.contains('\x1b'));
        assert!(std::error::Error::source(&e).is_none());
        assert!(format!("{e:?}").len() < MAX_TEXT + 64);
    }

    #[test]
    fn guest_text_is_bounded_and_defanged() {
        assert_eq!(text("exec: \"x\": not found"), "exec: \"x\": not found");
        let t = text("\x1b[2J\x07red\r");
        assert!(!t.chars().any(|c| c.is_control()), "{t:?}");
        assert!(t.contains("red"));
        let huge = "é".repeat(1 << 19);
        let t = text(&huge);
        assert!(t.len() < MAX_TEXT + 64, "{}", t.len());
        assert!(t.ends_with("more bytes)"), "{}", &t[t.len() - 40..]);
    }
}
