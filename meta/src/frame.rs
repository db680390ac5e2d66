//! Byte framing shared by every file the meta server writes: a 16-byte file header
//! (8-byte magic, u32 version, u32 crc32c of the first 12 bytes) and records framed as
//! `u32 len | u32 crc32c(payload) | payload`, all little-endian. Also the atomic
//! "write temp, fsync, rename, fsync dir" helper. Layouts are drawn in
//! docs/design/0001-meta-raft-storage.md.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Size of the file header.
pub const HEADER_LEN: usize = 16;
/// Size of a record's frame (len + crc) in front of its payload.
pub const RECORD_OVERHEAD: usize = 8;
/// Largest record accepted when reading: anything larger is a torn or corrupt length.
pub const MAX_RECORD: usize = 256 << 20;

/// The 16-byte header of a file with this magic and version.
pub fn header(magic: &[u8; 8], version: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = cirrus_types::checksum::crc32c(&h[..12]);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a file header; names what is wrong so the operator can tell a foreign file
/// from a newer format.
pub fn check_header(buf: &[u8], magic: &[u8; 8], version: u32, what: &str) -> io::Result<()> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {m}"));
    if buf.len() < HEADER_LEN {
        return Err(bad(format!(
            "file is {} bytes, shorter than its header",
            buf.len()
        )));
    }
    if &buf[..8] != magic {
        return Err(bad("wrong magic: not a cirrus file of this kind".into()));
    }
    let crc = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]);
    if crc != cirrus_types::checksum::crc32c(&buf[..12]) {
        return Err(bad("header checksum mismatch".into()));
    }
    let v = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if v != version {
        return Err(bad(format!(
            "format version {v}, this build reads {version}"
        )));
    }
    Ok(())
}

/// Appends one framed record to `out`.
pub fn push_record(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&cirrus_types::checksum::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The record starting at `pos`: `Some((payload, next_pos))`, or `None` when the bytes
/// from `pos` on are not a whole record with a matching checksum (a torn tail).
pub fn read_record(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(pos..)?;
    if rest.len() < RECORD_OVERHEAD {
        return None;
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len > MAX_RECORD || rest.len() < RECORD_OVERHEAD + len {
        return None;
    }
    let payload = &rest[RECORD_OVERHEAD..RECORD_OVERHEAD + len];
    if cirrus_types::checksum::crc32c(payload) != crc {
        return None;
    }
    Some((payload, pos + RECORD_OVERHEAD + len))
}

/// fsyncs a directory so that a rename or create inside it is durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` atomically and durably: a crash leaves either the old
/// file or the new one, never a mix.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(tmp, path)?;
    fsync_dir(dir)
}

/// A whole single-record file: header then one framed record.
pub fn single_record_file(magic: &[u8; 8], version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + RECORD_OVERHEAD + payload.len());
    out.extend_from_slice(&header(magic, version));
    push_record(&mut out, payload);
    out
}

/// The payload of a single-record file, checked end to end.
pub fn read_single_record_file<'a>(
    buf: &'a [u8],
    magic: &[u8; 8],
    version: u32,
    what: &str,
) -> io::Result<&'a [u8]> {
    check_header(buf, magic, version, what)?;
    match read_record(buf, HEADER_LEN) {
        Some((p, end)) if end == buf.len() => Ok(p),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what}: record is torn or fails its checksum"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_any_flipped_bit_is_caught() {
        let mut buf = header(b"TESTMAGC", 1).to_vec();
        push_record(&mut buf, b"hello");
        push_record(&mut buf, b"");
        check_header(&buf, b"TESTMAGC", 1, "t").unwrap();
        let (p, next) = read_record(&buf, HEADER_LEN).unwrap();
        assert_eq!(p, b"hello");
        let (p, end) = read_record(&buf, next).unwrap();
        assert_eq!(p, b"");
        assert_eq!(end, buf.len());
        assert!(read_record(&buf, end).is_none());
        // Every single-bit flip inside the first record is detected.
        for i in HEADER_LEN..next {
            let mut b = buf.clone();
            b[i] ^= 0x10;
            assert!(
                read_record(&b, HEADER_LEN).map(|(p, _)| p) != Some(b"hello".as_slice()),
                "flip at {i} not caught"
            );
        }
        // Every truncation of the first record is a torn tail.
        for cut in HEADER_LEN..next {
            assert!(read_record(&buf[..cut], HEADER_LEN).is_none());
        }
        assert!(check_header(&buf, b"OTHERMAG", 1, "t").is_err());
        assert!(check_header(&buf, b"TESTMAGC", 2, "t").is_err());
    }
}
