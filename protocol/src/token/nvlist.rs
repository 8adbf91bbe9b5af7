//! The nvlist of a resume token, packed and unpacked: the decoder reads the native encoding
//! (either byte order) and XDR, accepting only the value types ZFS puts in a token and refusing
//! duplicate fields, too many fields and oversized arrays; the encoders write native
//! little-endian (as ZFS does) and XDR.

use super::{TokenError, MAX_TOKEN_ARRAY_LEN, MAX_TOKEN_FIELDS};
use crate::text::quoted;

const NV_VERSION: i32 = 0;
const NV_UNIQUE_NAME: u32 = 1;
const NV_ENCODE_NATIVE: u8 = 0;
const NV_ENCODE_XDR: u8 = 1;
const DATA_TYPE_BOOLEAN: i32 = 1;
const DATA_TYPE_UINT64: i32 = 8;
const DATA_TYPE_STRING: i32 = 9;
const DATA_TYPE_UINT64_ARRAY: i32 = 16;
const NVPAIR_HEADER_LEN: usize = 16;

/// A value in a token nvlist (only the types ZFS puts there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NvValue {
    Boolean,
    Uint64(u64),
    String(String),
    Uint64Array(Vec<u64>),
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    little: bool,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| TokenError::BadNvlist("ends early".into()))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u32(&mut self) -> Result<u32, TokenError> {
        let b: [u8; 4] = self.take(4)?.try_into().expect("4 bytes");
        Ok(if self.little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    fn i32(&mut self) -> Result<i32, TokenError> {
        Ok(self.u32()? as i32)
    }

    fn i16(&mut self) -> Result<i16, TokenError> {
        let b: [u8; 2] = self.take(2)?.try_into().expect("2 bytes");
        Ok(if self.little {
            i16::from_le_bytes(b)
        } else {
            i16::from_be_bytes(b)
        })
    }

    fn u64(&mut self) -> Result<u64, TokenError> {
        let b: [u8; 8] = self.take(8)?.try_into().expect("8 bytes");
        Ok(if self.little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
}

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn bad(why: impl Into<String>) -> TokenError {
    TokenError::BadNvlist(why.into())
}

fn c_string(bytes: &[u8], what: &str) -> Result<String, TokenError> {
    let (last, body) = bytes
        .split_last()
        .ok_or_else(|| bad(format!("empty {what}")))?;
    if *last != 0 || body.contains(&0) {
        return Err(bad(format!("{what} is not a NUL-terminated string")));
    }
    String::from_utf8(body.to_vec()).map_err(|_| bad(format!("{what} is not UTF-8")))
}

pub(super) fn parse_nvlist(packed: &[u8]) -> Result<Vec<(String, NvValue)>, TokenError> {
    if packed.len() < 4 {
        return Err(bad("too short for a header"));
    }
    let (encoding, endian) = (packed[0], packed[1]);
    if packed[2] != 0 || packed[3] != 0 {
        return Err(bad("reserved header bytes are not zero"));
    }
    match encoding {
        NV_ENCODE_NATIVE => {
            let little = match endian {
                1 => true,
                0 => false,
                _ => return Err(bad("unknown endianness")),
            };
            parse_native(Cursor {
                bytes: packed,
                pos: 4,
                little,
            })
        }
        NV_ENCODE_XDR => parse_xdr(Cursor {
            bytes: packed,
            pos: 4,
            little: false,
        }),
        _ => Err(bad(format!("unknown encoding {encoding}"))),
    }
}

fn check_list_header(c: &mut Cursor<'_>) -> Result<(), TokenError> {
    let version = c.i32()?;
    let _flags = c.u32()?;
    if version != NV_VERSION {
        return Err(bad(format!("nvlist version {version}")));
    }
    Ok(())
}

fn push_pair(
    pairs: &mut Vec<(String, NvValue)>,
    name: String,
    value: NvValue,
) -> Result<(), TokenError> {
    if pairs.len() >= MAX_TOKEN_FIELDS {
        return Err(bad("too many fields"));
    }
    if pairs.iter().any(|(n, _)| *n == name) {
        return Err(bad(format!("duplicate field {}", quoted(&name))));
    }
    pairs.push((name, value));
    Ok(())
}

fn parse_native(mut c: Cursor<'_>) -> Result<Vec<(String, NvValue)>, TokenError> {
    check_list_header(&mut c)?;
    let mut pairs = Vec::new();
    loop {
        let start = c.pos;
        let size = c.i32()?;
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).map_err(|_| bad("negative pair size"))?;
        if size < NVPAIR_HEADER_LEN || size % 8 != 0 || size > c.bytes.len() - start {
            return Err(bad(format!("pair size {size} is invalid")));
        }
        let pair = &c.bytes[start..start + size];
        let mut p = Cursor {
            bytes: pair,
            pos: 4,
            little: c.little,
        };
        let name_sz = usize::try_from(p.i16()?).map_err(|_| bad("negative name size"))?;
        let _reserve = p.i16()?;
        let nelem = p.i32()?;
        let kind = p.i32()?;
        if name_sz < 2 {
            return Err(bad("empty field name"));
        }
        let name = c_string(p.take(name_sz)?, "field name")?;
        let value_off = align8(NVPAIR_HEADER_LEN + name_sz);
        if value_off > size {
            return Err(bad(format!(
                "field {} value lies outside its pair",
                quoted(&name)
            )));
        }
        let value = &pair[value_off..];
        let value = match (kind, nelem) {
            (DATA_TYPE_BOOLEAN, 0) if value.is_empty() => NvValue::Boolean,
            (DATA_TYPE_UINT64, 1) if value.len() == 8 => {
                let mut v = Cursor {
                    bytes: value,
                    pos: 0,
                    little: c.little,
                };
                NvValue::Uint64(v.u64()?)
            }
            (DATA_TYPE_STRING, 1) => {
                let end = value
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or_else(|| bad(format!("string {} is not terminated", quoted(&name))))?;
                if align8(end + 1) != value.len() || value[end..].iter().any(|&b| b != 0) {
                    return Err(bad(format!("string {} has a wrong size", quoted(&name))));
                }
                NvValue::String(c_string(&value[..=end], "string value")?)
            }
            (DATA_TYPE_UINT64_ARRAY, n) if n >= 0 => {
                let n = n as usize;
                if n > MAX_TOKEN_ARRAY_LEN || value.len() != n * 8 {
                    return Err(bad(format!("array {} has a wrong size", quoted(&name))));
                }
                let mut v = Cursor {
                    bytes: value,
                    pos: 0,
                    little: c.little,
                };
                NvValue::Uint64Array((0..n).map(|_| v.u64()).collect::<Result<_, _>>()?)
            }
            _ => return Err(TokenError::UnknownField(name)),
        };
        push_pair(&mut pairs, name, value)?;
        c.pos = start + size;
    }
    if c.remaining() != 0 {
        return Err(bad("bytes after the end of the list"));
    }
    Ok(pairs)
}

fn xdr_string(c: &mut Cursor<'_>, what: &str) -> Result<String, TokenError> {
    let len = c.u32()? as usize;
    if len > c.remaining() {
        return Err(bad(format!("{what} runs past the end")));
    }
    let body = c.take(len)?;
    let pad = c.take(align4(len) - len)?;
    if body.contains(&0) || pad.iter().any(|&b| b != 0) {
        return Err(bad(format!("{what} contains NUL or bad padding")));
    }
    String::from_utf8(body.to_vec()).map_err(|_| bad(format!("{what} is not UTF-8")))
}

fn parse_xdr(mut c: Cursor<'_>) -> Result<Vec<(String, NvValue)>, TokenError> {
    check_list_header(&mut c)?;
    let mut pairs = Vec::new();
    loop {
        let start = c.pos;
        let encoded_len = c.i32()?;
        let decoded_len = c.i32()?;
        if decoded_len == 0 {
            if encoded_len != 0 {
                return Err(bad("malformed end of list"));
            }
            break;
        }
        let name = xdr_string(&mut c, "field name")?;
        if name.is_empty() {
            return Err(bad("empty field name"));
        }
        let kind = c.i32()?;
        let nelem = c.i32()?;
        let value = match (kind, nelem) {
            (DATA_TYPE_BOOLEAN, 0) => NvValue::Boolean,
            (DATA_TYPE_UINT64, 1) => NvValue::Uint64(c.u64()?),
            (DATA_TYPE_STRING, 1) => NvValue::String(xdr_string(&mut c, "string value")?),
            (DATA_TYPE_UINT64_ARRAY, n) if n >= 0 => {
                let count = c.u32()?;
                if count as i64 != n as i64 || count as usize > MAX_TOKEN_ARRAY_LEN {
                    return Err(bad(format!("array {} has a wrong size", quoted(&name))));
                }
                NvValue::Uint64Array((0..count).map(|_| c.u64()).collect::<Result<_, _>>()?)
            }
            _ => return Err(TokenError::UnknownField(name)),
        };
        if i64::from(encoded_len) != (c.pos - start) as i64 {
            return Err(bad(format!(
                "field {} has a wrong encoded size",
                quoted(&name)
            )));
        }
        push_pair(&mut pairs, name, value)?;
    }
    if c.remaining() != 0 {
        return Err(bad("bytes after the end of the list"));
    }
    Ok(pairs)
}

pub(super) fn pack_native(pairs: &[(&str, NvValue)]) -> Vec<u8> {
    let mut out = vec![NV_ENCODE_NATIVE, 1, 0, 0];
    out.extend_from_slice(&NV_VERSION.to_le_bytes());
    out.extend_from_slice(&NV_UNIQUE_NAME.to_le_bytes());
    for (name, value) in pairs {
        let name_sz = name.len() + 1;
        let (kind, nelem, mut data): (i32, i32, Vec<u8>) = match value {
            NvValue::Boolean => (DATA_TYPE_BOOLEAN, 0, Vec::new()),
            NvValue::Uint64(v) => (DATA_TYPE_UINT64, 1, v.to_le_bytes().to_vec()),
            NvValue::String(s) => {
                let mut d = s.as_bytes().to_vec();
                d.push(0);
                (DATA_TYPE_STRING, 1, d)
            }
            NvValue::Uint64Array(v) => (
                DATA_TYPE_UINT64_ARRAY,
                v.len() as i32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        };
        let value_off = align8(NVPAIR_HEADER_LEN + name_sz);
        let size = value_off + align8(data.len());
        let start = out.len();
        out.extend_from_slice(&(size as i32).to_le_bytes());
        out.extend_from_slice(&(name_sz as i16).to_le_bytes());
        out.extend_from_slice(&0i16.to_le_bytes());
        out.extend_from_slice(&nelem.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.resize(start + value_off, 0);
        data.resize(align8(data.len()), 0);
        out.extend_from_slice(&data);
    }
    out.extend_from_slice(&0i32.to_le_bytes());
    out
}

fn xdr_put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    out.resize(out.len() + align4(s.len()) - s.len(), 0);
}

pub(super) fn pack_xdr(pairs: &[(&str, NvValue)]) -> Vec<u8> {
    let mut out = vec![NV_ENCODE_XDR, 1, 0, 0];
    out.extend_from_slice(&NV_VERSION.to_be_bytes());
    out.extend_from_slice(&NV_UNIQUE_NAME.to_be_bytes());
    for (name, value) in pairs {
        let mut body = Vec::new();
        xdr_put_string(&mut body, name);
        // decode_len is the native in-memory pair size (NVP_SIZE_CALC), which libnvpair checks.
        let native_value_len = match value {
            NvValue::Boolean => {
                body.extend_from_slice(&DATA_TYPE_BOOLEAN.to_be_bytes());
                body.extend_from_slice(&0i32.to_be_bytes());
                0
            }
            NvValue::Uint64(v) => {
                body.extend_from_slice(&DATA_TYPE_UINT64.to_be_bytes());
                body.extend_from_slice(&1i32.to_be_bytes());
                body.extend_from_slice(&v.to_be_bytes());
                8
            }
            NvValue::String(s) => {
                body.extend_from_slice(&DATA_TYPE_STRING.to_be_bytes());
                body.extend_from_slice(&1i32.to_be_bytes());
                xdr_put_string(&mut body, s);
                s.len() + 1
            }
            NvValue::Uint64Array(v) => {
                body.extend_from_slice(&DATA_TYPE_UINT64_ARRAY.to_be_bytes());
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(&(v.len() as u32).to_be_bytes());
                for x in v {
                    body.extend_from_slice(&x.to_be_bytes());
                }
                v.len() * 8
            }
        };
        let encoded_len = 8 + body.len();
        let decoded_len = align8(NVPAIR_HEADER_LEN + name.len() + 1) + align8(native_value_len);
        out.extend_from_slice(&(encoded_len as i32).to_be_bytes());
        out.extend_from_slice(&(decoded_len as i32).to_be_bytes());
        out.extend_from_slice(&body);
    }
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out
}
