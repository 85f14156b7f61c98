//! The bytes of a segment file: its magic, and how event and release records are framed,
//! encoded and read back (the layout is under "On disk" in the [`crate::spool`] docs).

use std::io::Read;

use bytes::Bytes;

use super::SpoolRecord;

/// The magic at the start of every segment file this build writes.
pub(super) const MAGIC: &[u8; 8] = b"FBSPOOL2";
/// The magic of segments written by older builds: no occurrence ids, no release records.
const MAGIC_V1: &[u8; 8] = b"FBSPOOL1";
/// Bytes of a segment's magic.
pub(super) const MAGIC_LEN: u64 = 8;
/// Bytes of a record's header: length, CRC, id.
pub(super) const HEADER: usize = 16;
/// No record body is ever this large; a length beyond it is corruption.
const MAX_RECORD_BODY: usize = 256 * 1024 * 1024;
/// Set in the id field of a release record, never in an event record's id.
const RELEASE_FLAG: u64 = 1 << 63;
/// The most ids one release record holds.
const MAX_RELEASE_IDS: usize = 4096;

/// Which build wrote a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// `FBSPOOL1`: event records without occurrence ids, no release records.
    V1,
    /// `FBSPOOL2`: event records with occurrence ids, release records.
    V2,
}

/// The format a segment's magic names; `None` for any other magic.
pub(super) fn format_of(magic: &[u8; 8]) -> Option<Format> {
    if magic == MAGIC {
        Some(Format::V2)
    } else if magic == MAGIC_V1 {
        Some(Format::V1)
    } else {
        None
    }
}

/// Why a record could not be read.
pub(super) enum RecordError {
    /// The file ends inside the record (a torn write).
    Truncated,
    /// The record's bytes do not check out; says how.
    Corrupt(&'static str),
    /// Reading failed.
    Io(std::io::Error),
}

/// A record read from a segment.
pub(super) enum Rec {
    Event(SpoolRecord),
    Release {
        /// The id the next event record of the segment takes (the id field without its flag).
        at: u64,
        /// The released ids.
        ids: Vec<u64>,
    },
}

/// Reads one record and the bytes it takes; `Ok(None)` at a clean end of file.
pub(super) fn read_record(
    r: &mut impl Read,
    format: Format,
) -> Result<Option<(Rec, u64)>, RecordError> {
    let Some((id, body)) = read_frame(r)? else {
        return Ok(None);
    };
    let size = (HEADER + body.len()) as u64;
    let rec = if format == Format::V2 && id & RELEASE_FLAG != 0 {
        decode_release(id, &body)?
    } else {
        Rec::Event(decode_event(id, body, format)?)
    };
    Ok(Some((rec, size)))
}

/// Reads one record's header and body and checks its length and CRC; returns the id field and
/// the body, `Ok(None)` at a clean end of file.
fn read_frame(r: &mut impl Read) -> Result<Option<(u64, Vec<u8>)>, RecordError> {
    let mut header = [0u8; HEADER];
    match read_full(r, &mut header).map_err(RecordError::Io)? {
        0 => return Ok(None),
        n if n < HEADER => return Err(RecordError::Truncated),
        _ => {}
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let id_bytes = [
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ];
    if !(2..=MAX_RECORD_BODY).contains(&len) {
        return Err(RecordError::Corrupt("impossible record length"));
    }
    let mut body = vec![0u8; len];
    if read_full(r, &mut body).map_err(RecordError::Io)? < len {
        return Err(RecordError::Truncated);
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&id_bytes);
    h.update(&body);
    if h.finalize() != crc {
        return Err(RecordError::Corrupt("CRC mismatch"));
    }
    Ok(Some((u64::from_le_bytes(id_bytes), body)))
}

/// The body of a release record: the released ids, `u64 LE` each.
fn decode_release(id: u64, body: &[u8]) -> Result<Rec, RecordError> {
    if !body.len().is_multiple_of(8) {
        return Err(RecordError::Corrupt(
            "release record length is not a multiple of 8",
        ));
    }
    let ids = body
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    Ok(Rec::Release {
        at: id & !RELEASE_FLAG,
        ids,
    })
}

/// The body of an event record: client id, occurrence id (`FBSPOOL2` only), payload.
fn decode_event(id: u64, body: Vec<u8>, format: Format) -> Result<SpoolRecord, RecordError> {
    let len = body.len();
    let clen = usize::from(u16::from_le_bytes([body[0], body[1]]));
    let mut at = 2 + clen;
    if at > len {
        return Err(RecordError::Corrupt("client id overruns the record"));
    }
    let client_id = std::str::from_utf8(&body[2..at])
        .map_err(|_| RecordError::Corrupt("client id is not UTF-8"))?
        .to_owned();
    let occurrence_id = match format {
        Format::V1 => None,
        Format::V2 => {
            let Some(&olen) = body.get(at) else {
                return Err(RecordError::Corrupt("occurrence id overruns the record"));
            };
            let start = at + 1;
            at = start + usize::from(olen);
            if at > len {
                return Err(RecordError::Corrupt("occurrence id overruns the record"));
            }
            Some(
                std::str::from_utf8(&body[start..at])
                    .map_err(|_| RecordError::Corrupt("occurrence id is not UTF-8"))?
                    .to_owned(),
            )
        }
    };
    let payload = Bytes::from(body).slice(at..);
    Ok(SpoolRecord {
        id,
        client_id,
        occurrence_id,
        payload,
    })
}

/// Reads until `buf` is full or end of file; returns how much was read.
pub(super) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Encodes an `FBSPOOL2` event record.
pub(super) fn encode_record(
    buf: &mut Vec<u8>,
    id: u64,
    client_id: &str,
    occurrence_id: &str,
    payload: &[u8],
) {
    let len = 2 + client_id.len() + 1 + occurrence_id.len() + payload.len();
    let id_bytes = id.to_le_bytes();
    let clen = (client_id.len() as u16).to_le_bytes();
    let olen = [occurrence_id.len() as u8];
    let mut h = crc32fast::Hasher::new();
    h.update(&id_bytes);
    h.update(&clen);
    h.update(client_id.as_bytes());
    h.update(&olen);
    h.update(occurrence_id.as_bytes());
    h.update(payload);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.extend_from_slice(&id_bytes);
    buf.extend_from_slice(&clen);
    buf.extend_from_slice(client_id.as_bytes());
    buf.extend_from_slice(&olen);
    buf.extend_from_slice(occurrence_id.as_bytes());
    buf.extend_from_slice(payload);
}

/// Encodes release records for `ids` (at most [`MAX_RELEASE_IDS`] each) at position `at` (the id
/// the segment's next event record takes).
pub(super) fn encode_releases(buf: &mut Vec<u8>, at: u64, ids: &[u64]) {
    let id_bytes = (RELEASE_FLAG | at).to_le_bytes();
    for chunk in ids.chunks(MAX_RELEASE_IDS) {
        let start = buf.len();
        buf.extend_from_slice(&((8 * chunk.len()) as u32).to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&id_bytes);
        for id in chunk {
            buf.extend_from_slice(&id.to_le_bytes());
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&id_bytes);
        h.update(&buf[start + HEADER..]);
        buf[start + 4..start + 8].copy_from_slice(&h.finalize().to_le_bytes());
    }
}
