//! Parsing and validation of virtio-blk requests (virtio 1.x, 5.2.6).
//!
//! Owns the translation of one descriptor chain, as the guest wrote it, into a [`Request`]
//! whose every address and length has been checked: the header (type, sector) in the first,
//! device-readable descriptor; the data descriptors in between, in the direction the request
//! type needs; the status byte at the end of the last, device-writable descriptor. Nothing
//! here touches the disk, and nothing trusts the guest: chains that loop or exceed the queue
//! size, short or misdirected descriptors, addresses outside guest memory, unaligned lengths
//! and sector ranges past the end of the disk (including overflows) are all errors.
//!
//! When a chain is malformed, [`ParseError::status`] says whether the status byte can still
//! be written (then the device reports `VIRTIO_BLK_S_IOERR`) or not (then the device returns
//! the chain with a used length of 0).

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::{SECTOR_SHIFT, SECTOR_SIZE};
use crate::devices::virtio::GuestMemory;

/// Size of the request header: `le32 type; le32 reserved; le64 sector`.
pub const HEADER_LEN: u32 = 16;

/// What the driver asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// `VIRTIO_BLK_T_IN`: read sectors into the data descriptors.
    In,
    /// `VIRTIO_BLK_T_OUT`: write the data descriptors to sectors.
    Out,
    /// `VIRTIO_BLK_T_FLUSH`: make previous writes durable.
    Flush,
    /// `VIRTIO_BLK_T_GET_ID`: the device's serial, up to 20 bytes.
    GetId,
    /// Anything else: answered with `VIRTIO_BLK_S_UNSUPP`.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            other => Self::Unsupported(other),
        }
    }
}

impl RequestType {
    /// Whether the data descriptors must be device-writable (`Some(true)`), device-readable
    /// (`Some(false)`), or are not used at all (`None`).
    fn data_writable(self) -> Option<bool> {
        match self {
            Self::In | Self::GetId => Some(true),
            Self::Out => Some(false),
            Self::Flush | Self::Unsupported(_) => None,
        }
    }
}

/// One guest buffer of a request's data, inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub request_type: RequestType,
    /// First sector (only meaningful for `In` and `Out`).
    pub sector: u64,
    /// The non-empty data buffers, in order; empty for `Flush` and unsupported types.
    pub data: Vec<Segment>,
    /// Total length of `data` in bytes.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a descriptor chain is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("descriptor chain is empty")]
    EmptyChain,
    #[error("descriptor chain loops or is longer than the queue ({0} descriptors)")]
    ChainTooLong(u16),
    #[error("descriptor chain is broken: a `next` index or a descriptor address is invalid")]
    ChainBroken,
    #[error("status descriptor is not device-writable")]
    StatusNotWritable,
    #[error("status descriptor has zero length")]
    StatusEmpty,
    #[error("status byte is outside guest memory")]
    StatusOutOfMemory,
    #[error("request has no header descriptor")]
    MissingHeader,
    #[error("header descriptor is device-writable")]
    HeaderWritable,
    #[error("header descriptor is {0} bytes long, need {HEADER_LEN}")]
    HeaderTooShort(u32),
    #[error("header is outside guest memory")]
    HeaderOutOfMemory,
    #[error("data descriptor {0} has the wrong direction for this request type")]
    DataDirection(usize),
    #[error("data descriptor {0} is outside guest memory")]
    DataOutOfMemory(usize),
    #[error("data length {0} is not a multiple of the sector size")]
    UnalignedLength(u64),
    #[error("sectors {sector}..+{count} are not within the disk's {capacity} sectors")]
    OutOfRange {
        sector: u64,
        count: u64,
        capacity: u64,
    },
}

/// A malformed request, and where its status byte is, if it has a usable one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ParseError {
    pub error: RequestError,
    pub status: Option<GuestAddress>,
}

impl Request {
    /// Parses the descriptors of one chain (a `virtio_queue::DescriptorChain`, or any list of
    /// descriptors). `max_descriptors` is the queue size: no valid chain is longer.
    /// `capacity` is the disk size in sectors.
    pub fn parse(
        mem: &GuestMemory,
        chain: impl IntoIterator<Item = Descriptor>,
        max_descriptors: u16,
        capacity: u64,
    ) -> Result<Self, ParseError> {
        let no_status = |error| ParseError {
            error,
            status: None,
        };
        let descriptors = collect_chain(chain, max_descriptors).map_err(no_status)?;
        let (last, body) = descriptors
            .split_last()
            .ok_or(no_status(RequestError::EmptyChain))?;
        let status = status_byte(mem, last).map_err(no_status)?;
        parse_body(mem, body, capacity, status).map_err(|error| ParseError {
            error,
            status: Some(status),
        })
    }
}

/// Collects the chain, refusing chains that loop or that are longer than the queue.
///
/// `virtio_queue::DescriptorChain` stops silently after `queue size` descriptors (so a loop
/// ends) and at an invalid `next` index or unreadable descriptor; in all those cases the last
/// descriptor it yields still has `VIRTQ_DESC_F_NEXT` set, which is how we notice.
fn collect_chain(
    chain: impl IntoIterator<Item = Descriptor>,
    max_descriptors: u16,
) -> Result<Vec<Descriptor>, RequestError> {
    let max = usize::from(max_descriptors);
    let descriptors: Vec<Descriptor> = chain.into_iter().take(max.saturating_add(1)).collect();
    if descriptors.len() > max {
        return Err(RequestError::ChainTooLong(max_descriptors));
    }
    match descriptors.last() {
        Some(d) if d.has_next() && descriptors.len() == max => {
            Err(RequestError::ChainTooLong(max_descriptors))
        }
        Some(d) if d.has_next() => Err(RequestError::ChainBroken),
        _ => Ok(descriptors),
    }
}

/// The status byte is the last byte of the last descriptor, which must be device-writable.
fn status_byte(mem: &GuestMemory, last: &Descriptor) -> Result<GuestAddress, RequestError> {
    if !last.is_write_only() {
        return Err(RequestError::StatusNotWritable);
    }
    let len = last.len();
    if len == 0 {
        return Err(RequestError::StatusEmpty);
    }
    let addr = last
        .addr()
        .checked_add(u64::from(len) - 1)
        .ok_or(RequestError::StatusOutOfMemory)?;
    if !mem.check_range(addr, 1) {
        return Err(RequestError::StatusOutOfMemory);
    }
    Ok(addr)
}

fn parse_body(
    mem: &GuestMemory,
    body: &[Descriptor],
    capacity: u64,
    status: GuestAddress,
) -> Result<Request, RequestError> {
    let (header, data) = body.split_first().ok_or(RequestError::MissingHeader)?;
    if header.is_write_only() {
        return Err(RequestError::HeaderWritable);
    }
    if header.len() < HEADER_LEN {
        return Err(RequestError::HeaderTooShort(header.len()));
    }
    // The header was checked to be HEADER_LEN bytes: `le32 type`, `le32 reserved`, `le64 sector`.
    let read_header = || -> Result<(u32, u64), vm_memory::GuestMemoryError> {
        let request_type = mem.read_obj::<u32>(header.addr())?;
        let sector_addr = header.addr().checked_add(8).ok_or(
            vm_memory::GuestMemoryError::InvalidGuestAddress(header.addr()),
        )?;
        Ok((
            u32::from_le(request_type),
            u64::from_le(mem.read_obj(sector_addr)?),
        ))
    };
    let (request_type, sector) = read_header().map_err(|_| RequestError::HeaderOutOfMemory)?;
    let request_type = RequestType::from(request_type);

    let mut segments = Vec::new();
    let mut data_len = 0u64;
    if let Some(writable) = request_type.data_writable() {
        for (i, d) in data.iter().enumerate() {
            if d.is_write_only() != writable {
                return Err(RequestError::DataDirection(i));
            }
            let len = d.len();
            // A u32 always fits in usize on the 64-bit hosts we support.
            if !mem.check_range(d.addr(), len as usize) {
                return Err(RequestError::DataOutOfMemory(i));
            }
            data_len += u64::from(len);
            if len > 0 {
                segments.push(Segment {
                    addr: d.addr(),
                    len,
                });
            }
        }
    }

    if matches!(request_type, RequestType::In | RequestType::Out) {
        if !data_len.is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::UnalignedLength(data_len));
        }
        let count = data_len >> SECTOR_SHIFT;
        let out_of_range = RequestError::OutOfRange {
            sector,
            count,
            capacity,
        };
        match sector.checked_add(count) {
            Some(end) if end <= capacity => {}
            _ => return Err(out_of_range),
        }
    }

    Ok(Request {
        request_type,
        sector,
        data: segments,
        data_len,
        status,
    })
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

    const MEM_SIZE: u64 = 0x10_0000;
    const CAPACITY: u64 = 16;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
    }

    fn header(mem: &GuestMemory, addr: u64, request_type: u32, sector: u64) {
        mem.write_obj(request_type.to_le(), GuestAddress(addr))
            .unwrap();
        mem.write_obj(0u32, GuestAddress(addr + 4)).unwrap();
        mem.write_obj(sector.to_le(), GuestAddress(addr + 8))
            .unwrap();
    }

    /// Descriptors linked in order (`next` = index + 1), as a driver would.
    fn chain(descs: &[(u64, u32, bool)]) -> Vec<Descriptor> {
        descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
                if i + 1 < descs.len() {
                    flags |= VRING_DESC_F_NEXT;
                }
                Descriptor::new(addr, len, flags as u16, i as u16 + 1)
            })
            .collect()
    }

    fn parse(mem: &GuestMemory, descs: &[(u64, u32, bool)]) -> Result<Request, ParseError> {
        Request::parse(mem, chain(descs), 16, CAPACITY)
    }

    fn err(error: RequestError, status: Option<u64>) -> Result<Request, ParseError> {
        Err(ParseError {
            error,
            status: status.map(GuestAddress),
        })
    }

    #[test]
    fn parses_read() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_IN, 3);
        let r = parse(
            &m,
            &[
                (0x1000, 16, false),
                (0x2000, 512, true),
                (0x3000, 0, true),
                (0x4000, 1024, true),
                (0x5000, 1, true),
            ],
        )
        .unwrap();
        assert_eq!(r.request_type, RequestType::In);
        assert_eq!(r.sector, 3);
        assert_eq!(r.data_len, 1536);
        assert_eq!(
            r.data,
            vec![
                Segment {
                    addr: GuestAddress(0x2000),
                    len: 512
                },
                Segment {
                    addr: GuestAddress(0x4000),
                    len: 1024
                }
            ]
        );
        assert_eq!(r.status, GuestAddress(0x5000));
    }

    #[test]
    fn status_is_last_byte_of_last_descriptor() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_FLUSH, 0);
        let r = parse(&m, &[(0x1000, 16, false), (0x5000, 4, true)]).unwrap();
        assert_eq!(r.request_type, RequestType::Flush);
        assert_eq!(r.status, GuestAddress(0x5003));
    }

    #[test]
    fn parses_write_get_id_and_unknown() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_OUT, CAPACITY - 1);
        let r = parse(
            &m,
            &[(0x1000, 16, false), (0x2000, 512, false), (0x5000, 1, true)],
        );
        assert_eq!(r.unwrap().request_type, RequestType::Out);
        header(&m, 0x1000, VIRTIO_BLK_T_GET_ID, 0);
        let r = parse(
            &m,
            &[(0x1000, 16, false), (0x2000, 20, true), (0x5000, 1, true)],
        );
        assert_eq!(r.unwrap().data_len, 20);
        // Unknown types are parsed (answered with UNSUPP); their data is not looked at.
        header(&m, 0x1000, 0x1234, u64::MAX);
        let r = parse(
            &m,
            &[(0x1000, 16, false), (u64::MAX, 7, true), (0x5000, 1, true)],
        );
        let r = r.unwrap();
        assert_eq!(r.request_type, RequestType::Unsupported(0x1234));
        assert!(r.data.is_empty());
    }

    #[test]
    fn rejects_bad_status_descriptor_without_status() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_FLUSH, 0);
        let ro = parse(&m, &[(0x1000, 16, false), (0x5000, 1, false)]);
        assert_eq!(ro, err(RequestError::StatusNotWritable, None));
        let empty = parse(&m, &[(0x1000, 16, false), (0x5000, 0, true)]);
        assert_eq!(empty, err(RequestError::StatusEmpty, None));
        let outside = parse(&m, &[(0x1000, 16, false), (MEM_SIZE, 1, true)]);
        assert_eq!(outside, err(RequestError::StatusOutOfMemory, None));
        let wraps = parse(&m, &[(0x1000, 16, false), (u64::MAX, 2, true)]);
        assert_eq!(wraps, err(RequestError::StatusOutOfMemory, None));
        let none = Request::parse(&m, Vec::new(), 16, CAPACITY);
        assert_eq!(none, err(RequestError::EmptyChain, None));
    }

    #[test]
    fn rejects_bad_header_with_status() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_FLUSH, 0);
        let s = Some(0x5000);
        let only_status = parse(&m, &[(0x5000, 1, true)]);
        assert_eq!(only_status, err(RequestError::MissingHeader, s));
        let short = parse(&m, &[(0x1000, 15, false), (0x5000, 1, true)]);
        assert_eq!(short, err(RequestError::HeaderTooShort(15), s));
        let writable = parse(&m, &[(0x1000, 16, true), (0x5000, 1, true)]);
        assert_eq!(writable, err(RequestError::HeaderWritable, s));
        let outside = parse(&m, &[(MEM_SIZE - 8, 16, false), (0x5000, 1, true)]);
        assert_eq!(outside, err(RequestError::HeaderOutOfMemory, s));
    }

    #[test]
    fn rejects_bad_data_with_status() {
        let m = mem();
        let s = Some(0x5000);
        header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        let wrong_dir = parse(
            &m,
            &[(0x1000, 16, false), (0x2000, 512, false), (0x5000, 1, true)],
        );
        assert_eq!(wrong_dir, err(RequestError::DataDirection(0), s));
        let outside = parse(
            &m,
            &[
                (0x1000, 16, false),
                (MEM_SIZE - 256, 512, true),
                (0x5000, 1, true),
            ],
        );
        assert_eq!(outside, err(RequestError::DataOutOfMemory(0), s));
        let unaligned = parse(
            &m,
            &[(0x1000, 16, false), (0x2000, 100, true), (0x5000, 1, true)],
        );
        assert_eq!(unaligned, err(RequestError::UnalignedLength(100), s));

        header(&m, 0x1000, VIRTIO_BLK_T_OUT, 0);
        let wrong_dir = parse(
            &m,
            &[
                (0x1000, 16, false),
                (0x2000, 512, false),
                (0x3000, 512, true),
                (0x5000, 1, true),
            ],
        );
        assert_eq!(wrong_dir, err(RequestError::DataDirection(1), s));

        header(&m, 0x1000, VIRTIO_BLK_T_GET_ID, 0);
        let wrong_dir = parse(
            &m,
            &[(0x1000, 16, false), (0x2000, 20, false), (0x5000, 1, true)],
        );
        assert_eq!(wrong_dir, err(RequestError::DataDirection(0), s));
    }

    #[test]
    fn rejects_sectors_out_of_range() {
        let m = mem();
        let s = Some(0x5000);
        for (sector, len) in [(CAPACITY, 512), (CAPACITY - 1, 1024), (u64::MAX, 512)] {
            header(&m, 0x1000, VIRTIO_BLK_T_IN, sector);
            let r = parse(
                &m,
                &[(0x1000, 16, false), (0x2000, len, true), (0x5000, 1, true)],
            );
            let count = u64::from(len) / 512;
            assert_eq!(
                r,
                err(
                    RequestError::OutOfRange {
                        sector,
                        count,
                        capacity: CAPACITY
                    },
                    s
                )
            );
        }
        // The last sector, and an empty request at the very end, are fine.
        header(&m, 0x1000, VIRTIO_BLK_T_IN, CAPACITY - 1);
        assert!(parse(
            &m,
            &[(0x1000, 16, false), (0x2000, 512, true), (0x5000, 1, true)]
        )
        .is_ok());
        header(&m, 0x1000, VIRTIO_BLK_T_IN, CAPACITY);
        assert!(parse(&m, &[(0x1000, 16, false), (0x5000, 1, true)]).is_ok());
    }

    #[test]
    fn rejects_chains_that_are_too_long_or_broken() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_FLUSH, 0);
        let mut descs = vec![(0x1000, 16, false)];
        descs.extend(std::iter::repeat_n((0x2000, 0, false), 15));
        descs.push((0x5000, 1, true));
        // 17 descriptors in a 16-entry queue.
        assert_eq!(parse(&m, &descs), err(RequestError::ChainTooLong(16), None));
        // What a looping chain looks like once virtio-queue stops it: 16 descriptors, the last
        // one still pointing further.
        let mut looping = chain(&descs[..16]);
        looping[15] = Descriptor::new(0x2000, 0, VRING_DESC_F_NEXT as u16, 0);
        assert_eq!(
            Request::parse(&m, looping, 16, CAPACITY),
            err(RequestError::ChainTooLong(16), None)
        );
        // A chain that ends on a descriptor with NEXT set (invalid next index).
        let mut broken = chain(&descs[..3]);
        broken[2] = Descriptor::new(
            0x5000,
            1,
            (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
            99,
        );
        assert_eq!(
            Request::parse(&m, broken, 16, CAPACITY),
            err(RequestError::ChainBroken, None)
        );
        // Exactly the queue size is fine.
        descs.remove(1);
        assert!(parse(&m, &descs).is_ok());
    }
}
