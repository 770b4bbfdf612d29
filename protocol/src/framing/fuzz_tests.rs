//! Property-based fuzzing of the frame decoder: arbitrary byte streams, split across
//! reads in arbitrary ways, give the same frames and the same errors whatever the split,
//! never a panic; valid frames round-trip; a length prefix (up to `u32::MAX`) never makes
//! the decoder hold more than the bytes that actually arrived.

use proptest::prelude::*;

use super::*;
use crate::fuzz_tests::{any_guest_message, config, json};
use crate::GuestMessage;

/// What decoding gave, in order.
#[derive(Debug, PartialEq)]
enum Outcome {
    Frame(GuestMessage),
    Malformed,
    TooLarge(u32),
}

/// Pushes `stream` into a decoder in pieces cut at `cuts`, taking frames out after each
/// piece, until the stream ends or a length over the limit (which stops a connection).
/// Checks after every step that the decoder holds no more than what arrived.
fn decode(stream: &[u8], cuts: &[usize], limit: u32) -> Result<Vec<Outcome>, TestCaseError> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (stream.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(stream.len());
    let mut d = FrameDecoder::new(limit);
    let mut out = Vec::new();
    let mut start = 0;
    for end in cuts {
        d.push(&stream[start..end]);
        start = end;
        loop {
            prop_assert!(d.buffered() <= end);
            prop_assert!(
                d.buf.capacity() <= 2 * end + 16,
                "holds {} for {} bytes",
                d.buf.capacity(),
                end
            );
            match d.next_frame::<GuestMessage>() {
                Ok(Some(m)) => out.push(Outcome::Frame(m)),
                Ok(None) => break,
                Err(FrameError::Malformed(_)) => out.push(Outcome::Malformed),
                Err(FrameError::TooLarge { len, limit: l }) => {
                    prop_assert_eq!(l, limit);
                    prop_assert!(len > limit);
                    out.push(Outcome::TooLarge(len));
                    return Ok(out);
                }
                Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e}"))),
            }
        }
    }
    // What is left is the start of one frame the stream did not complete.
    let missing = d.missing().unwrap();
    prop_assert!(d.is_empty() == (d.buffered() == 0));
    prop_assert!(missing > 0 || d.is_empty());
    Ok(out)
}

/// A piece of a stream: a valid frame, a frame of any JSON, a frame of any bytes (its
/// length prefix right), a bare length prefix of any value, or any bytes.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let framed = |body: Vec<u8>| {
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend(body);
        f
    };
    prop_oneof![
        3 => any_guest_message().prop_map(move |m| {
            let mut f = Vec::new();
            write_frame(&mut f, &m).unwrap();
            f
        }),
        1 => json().prop_map(move |v| framed(serde_json::to_vec(&v).unwrap())),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(framed),
        1 => prop_oneof![0u32..64, (MAX_FRAME_LEN - 2)..(MAX_FRAME_LEN + 2), any::<u32>()]
            .prop_map(|len| len.to_le_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Valid frames, split anywhere, come out as written, and nothing is left over.
    #[test]
    fn fuzz_frames_round_trip_any_split(
        msgs in prop::collection::vec(any_guest_message(), 0..6),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut wire = Vec::new();
        for m in &msgs {
            write_frame(&mut wire, m).unwrap();
        }
        let got = decode(&wire, &cuts, MAX_FRAME_LEN)?;
        let want: Vec<Outcome> = msgs.into_iter().map(Outcome::Frame).collect();
        prop_assert_eq!(got, want);
    }

    /// Any stream: the frames and errors do not depend on how it is split across reads,
    /// and the decoder never holds more than what arrived, whatever the length prefixes.
    #[test]
    fn fuzz_decoder_is_independent_of_the_split(
        pieces in prop::collection::vec(piece(), 0..8),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
        limit in prop_oneof![Just(MAX_FRAME_LEN), Just(MAX_HOST_FRAME_LEN), Just(u32::MAX), 0u32..300],
    ) {
        let stream = pieces.concat();
        let whole = decode(&stream, &[], limit)?;
        let split = decode(&stream, &cuts, limit)?;
        prop_assert_eq!(&split, &whole);
        let bytewise: Vec<usize> = (0..stream.len()).collect();
        prop_assert_eq!(decode(&stream, &bytewise, limit)?, whole);
    }

    /// The blocking reader, fed by reads of any sizes, gives the first frame as the
    /// decoder does, never reads past it, and holds at most one read's worth more than
    /// what arrived, whatever the length prefix says.
    #[test]
    fn fuzz_read_frame_from_any_reads(
        pieces in prop::collection::vec(piece(), 0..4),
        sizes in prop::collection::vec(1usize..64, 1..16),
        limit in prop_oneof![Just(MAX_FRAME_LEN), Just(MAX_HOST_FRAME_LEN), Just(u32::MAX)],
    ) {
        let stream = pieces.concat();
        struct Chunks<'a> { data: &'a [u8], sizes: Vec<usize>, i: usize }
        impl Read for Chunks<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.sizes[self.i % self.sizes.len()].min(buf.len()).min(self.data.len());
                self.i += 1;
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                Ok(n)
            }
        }
        let mut r = Chunks { data: &stream, sizes, i: 0 };
        let got = read_frame_limited::<_, GuestMessage>(&mut r, limit);
        let consumed = stream.len() - r.data.len();
        let whole = decode(&stream, &[], limit)?;
        match (got, whole.first()) {
            (Ok(m), Some(Outcome::Frame(w))) => prop_assert_eq!(&m, w),
            (Err(FrameError::Malformed(_)), Some(Outcome::Malformed)) => {}
            (Err(FrameError::TooLarge { len, .. }), Some(Outcome::TooLarge(w))) => {
                prop_assert_eq!(len, *w);
                prop_assert_eq!(consumed, PREFIX_LEN);
            }
            (Err(FrameError::Closed), None) => prop_assert_eq!(consumed, 0),
            (Err(FrameError::Io(e)), None) => {
                prop_assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
                prop_assert_eq!(consumed, stream.len());
            }
            (got, want) => prop_assert!(false, "read_frame gave {:?}, the decoder {:?}", got, want),
        }
        // A frame that came out complete was read exactly to its end.
        if let Some(prefix) = stream.first_chunk::<PREFIX_LEN>() {
            let len = u32::from_le_bytes(*prefix);
            if len <= limit && stream.len() >= PREFIX_LEN + len as usize {
                prop_assert_eq!(consumed, PREFIX_LEN + len as usize);
            }
        }
    }

    /// `read_from` with the largest length a prefix allows holds one read's worth, not
    /// the length.
    #[test]
    fn fuzz_read_from_holds_what_arrived(len in any::<u32>(), body in prop::collection::vec(any::<u8>(), 0..100)) {
        let mut d = FrameDecoder::new(u32::MAX);
        d.push(&len.to_le_bytes());
        let missing = d.missing().unwrap();
        prop_assert_eq!(missing, len as usize);
        let n = d.read_from(&mut body.as_slice(), missing).unwrap();
        prop_assert_eq!(n, body.len().min(len as usize));
        prop_assert_eq!(d.buffered(), PREFIX_LEN + n);
        prop_assert!(d.buf.capacity() <= 2 * (PREFIX_LEN + READ_CHUNK));
    }
}

/// Found by `fuzz_decoder_is_independent_of_the_split`: a frame whose body is `null` was
/// taken out and reported as "no complete frame yet" (`null` decoded as the `Option`
/// around the message), so a complete frame behind it stayed in the buffer until more
/// bytes arrived, and the blocking reader took it for the end of the connection. It is
/// a malformed frame like any other.
#[test]
fn a_null_frame_is_malformed_and_the_next_frame_still_comes_out() {
    let mut wire = 4u32.to_le_bytes().to_vec();
    wire.extend_from_slice(b"null");
    write_frame(&mut wire, &GuestMessage::Hello { version: 3 }).unwrap();
    let mut d = FrameDecoder::default();
    d.push(&wire);
    assert!(matches!(
        d.next_frame::<GuestMessage>(),
        Err(FrameError::Malformed(_))
    ));
    assert_eq!(
        d.next_frame::<GuestMessage>().unwrap(),
        Some(GuestMessage::Hello { version: 3 })
    );
    assert!(d.is_empty());
    assert!(matches!(
        read_frame::<_, GuestMessage>(&mut &wire[..8]),
        Err(FrameError::Malformed(_))
    ));
}
