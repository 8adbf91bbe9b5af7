//! ZFS resume tokens, in the real format:
//! `1-<fletcher4 word0 of compressed, hex>-<packed length, hex>-<hex of zlib(packed nvlist)>`
//! where the nvlist is packed with NV_ENCODE_NATIVE (little-endian on x86), exactly as
//! the kernel does in `get_receive_resume_stats_impl` (fnvlist_pack + gzip_compress level 6).
//!
//! This is the fake's own small encoder; switch `encode` to `qzb_protocol::encode_resume_token`
//! once that lands (the decoder here stays for the fake's `zfs send -t`).

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U64(u64),
    Str(String),
    Bool,
}

pub type NvList = Vec<(String, Value)>;

const DATA_TYPE_BOOLEAN: i32 = 1;
const DATA_TYPE_UINT64: i32 = 8;
const DATA_TYPE_STRING: i32 = 9;

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

pub fn pack_native(nvl: &NvList) -> Vec<u8> {
    let mut out = vec![0u8, 1, 0, 0]; // nvs_header: NV_ENCODE_NATIVE, little endian
    out.extend_from_slice(&0i32.to_le_bytes()); // nvl_version
    out.extend_from_slice(&1u32.to_le_bytes()); // nvl_nvflag = NV_UNIQUE_NAME (verified on real tokens)
    for (name, value) in nvl {
        let name_sz = name.len() + 1;
        let (ty, elems, val): (i32, i32, Vec<u8>) = match value {
            Value::U64(v) => (DATA_TYPE_UINT64, 1, v.to_le_bytes().to_vec()),
            Value::Str(s) => {
                let mut b = s.as_bytes().to_vec();
                b.push(0);
                (DATA_TYPE_STRING, 1, b)
            }
            Value::Bool => (DATA_TYPE_BOOLEAN, 0, Vec::new()),
        };
        let size = align8(16 + name_sz) + align8(val.len());
        let start = out.len();
        out.extend_from_slice(&(size as i32).to_le_bytes());
        out.extend_from_slice(&(name_sz as i16).to_le_bytes());
        out.extend_from_slice(&0i16.to_le_bytes());
        out.extend_from_slice(&elems.to_le_bytes());
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(start + align8(16 + name_sz), 0);
        out.extend_from_slice(&val);
        out.resize(start + size, 0);
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

fn rd_i32(b: &[u8], at: usize) -> Result<i32, String> {
    b.get(at..at + 4)
        .map(|s| i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| "nvlist truncated".to_string())
}

pub fn unpack_native(b: &[u8]) -> Result<NvList, String> {
    if b.len() < 12 || b[0] != 0 || b[1] != 1 {
        return Err("not a little-endian native nvlist".into());
    }
    let mut at = 12;
    let mut out = Vec::new();
    loop {
        let size = rd_i32(b, at)?;
        if size == 0 {
            return Ok(out);
        }
        let size = usize::try_from(size).map_err(|_| "bad nvpair size")?;
        let pair = b.get(at..at + size).ok_or("nvpair truncated")?;
        if pair.len() < 16 {
            return Err("nvpair too small".into());
        }
        let name_sz = i16::from_le_bytes([pair[4], pair[5]]) as usize;
        let ty = rd_i32(pair, 12)?;
        let name_bytes = pair.get(16..16 + name_sz).ok_or("name truncated")?;
        let name = String::from_utf8_lossy(&name_bytes[..name_sz.saturating_sub(1)]).into_owned();
        let voff = align8(16 + name_sz);
        let value = match ty {
            DATA_TYPE_UINT64 => {
                let v = pair.get(voff..voff + 8).ok_or("value truncated")?;
                let mut x = [0u8; 8];
                x.copy_from_slice(v);
                Value::U64(u64::from_le_bytes(x))
            }
            DATA_TYPE_STRING => {
                let v = pair.get(voff..).ok_or("value truncated")?;
                let end = v
                    .iter()
                    .position(|&c| c == 0)
                    .ok_or("string not terminated")?;
                Value::Str(String::from_utf8_lossy(&v[..end]).into_owned())
            }
            DATA_TYPE_BOOLEAN => Value::Bool,
            t => return Err(format!("unsupported nvpair type {t}")),
        };
        out.push((name, value));
        at += size;
    }
}

/// fletcher_4_native_varsize: word 0 (the only one tokens carry).
pub fn fletcher4_word0(buf: &[u8]) -> u64 {
    let (mut a, mut b, mut c, mut d) = (0u64, 0u64, 0u64, 0u64);
    for w in buf.chunks_exact(4) {
        a = a.wrapping_add(u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as u64);
        b = b.wrapping_add(a);
        c = c.wrapping_add(b);
        d = d.wrapping_add(c);
    }
    let _ = (b, c, d);
    a
}

pub fn encode(nvl: &NvList) -> String {
    let packed = pack_native(nvl);
    let compressed = miniz_oxide::deflate::compress_to_vec_zlib(&packed, 6);
    let mut hex = String::with_capacity(compressed.len() * 2);
    for byte in &compressed {
        hex.push_str(&format!("{byte:02x}"));
    }
    format!(
        "1-{:x}-{:x}-{}",
        fletcher4_word0(&compressed),
        packed.len(),
        hex
    )
}

/// Decode like `zfs_send_resume_token_to_nvlist`; errors are libzfs' aux messages.
pub fn decode(token: &str) -> Result<NvList, String> {
    let mut it = token.splitn(4, '-');
    let (v, ck, len, hex) = match (it.next(), it.next(), it.next(), it.next()) {
        (Some(v), Some(c), Some(l), Some(h)) => (v, c, l, h),
        _ => return Err("resume token is corrupt (invalid format)".into()),
    };
    let version: u32 = v
        .parse()
        .map_err(|_| "resume token is corrupt (invalid format)")?;
    let ck = u64::from_str_radix(ck, 16).map_err(|_| "resume token is corrupt (invalid format)")?;
    let len =
        usize::from_str_radix(len, 16).map_err(|_| "resume token is corrupt (invalid format)")?;
    if version != 1 {
        return Err(format!(
            "resume token is corrupt (invalid version {version})"
        ));
    }
    if hex.len() % 2 != 0 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err("resume token is corrupt (payload is not hex-encoded)".into());
    }
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect();
    if fletcher4_word0(&bytes) != ck {
        return Err("resume token is corrupt (incorrect checksum)".into());
    }
    let packed = miniz_oxide::inflate::decompress_to_vec_zlib(&bytes)
        .map_err(|_| "resume token is corrupt (decompression failed)")?;
    if packed.len() != len {
        return Err("resume token is corrupt (decompression failed)".into());
    }
    unpack_native(&packed).map_err(|_| "resume token is corrupt (nvlist_unpack failed)".into())
}

pub fn get_u64(nvl: &NvList, key: &str) -> Option<u64> {
    nvl.iter().find_map(|(k, v)| match v {
        Value::U64(x) if k == key => Some(*x),
        _ => None,
    })
}

pub fn get_str<'a>(nvl: &'a NvList, key: &str) -> Option<&'a str> {
    nvl.iter().find_map(|(k, v)| match v {
        Value::Str(s) if k == key => Some(s.as_str()),
        _ => None,
    })
}

pub fn has(nvl: &NvList, key: &str) -> bool {
    nvl.iter().any(|(k, _)| k == key)
}

/// `nvlist_print` as `zfs send -nv -t` shows it.
pub fn print(nvl: &NvList) -> String {
    let mut s = String::from("nvlist version: 0\n");
    for (k, v) in nvl {
        match v {
            Value::U64(x) => s.push_str(&format!("\t{k} = 0x{x:x}\n")),
            Value::Str(x) => s.push_str(&format!("\t{k} = {x}\n")),
            Value::Bool => s.push_str(&format!("\t{k} = 1\n")),
        }
    }
    s
}

/// The token nvlist for a partial receive, in the kernel's key order.
pub fn for_partial(p: &crate::state::Partial) -> NvList {
    let mut nvl: NvList = Vec::new();
    if p.fromguid != 0 {
        nvl.push(("fromguid".into(), Value::U64(p.fromguid)));
    }
    nvl.push(("object".into(), Value::U64(1)));
    // volume streams: a byte offset into the volume; the fake's own format: content bytes
    nvl.push((
        "offset".into(),
        Value::U64(p.resume_offset.unwrap_or(p.bytes)),
    ));
    nvl.push(("bytes".into(), Value::U64(p.bytes)));
    nvl.push(("toguid".into(), Value::U64(p.toguid)));
    nvl.push(("toname".into(), Value::Str(p.toname.clone())));
    for (flag, key) in [
        ('L', "largeblockok"),
        ('e', "embedok"),
        ('c', "compressok"),
        ('w', "rawok"),
    ] {
        if p.flags.contains(flag) {
            nvl.push((key.into(), Value::Bool));
        }
    }
    nvl
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real tokens printed by OpenZFS `zfs receive -s` (quoted in public syncoid/zrepl reports).
    const REAL_INCREMENTAL: &str = "1-1379a801cc-118-789c636064000310a501c49c50360710a715e5e7a69766a63040c1ddf48fab1ff809c72a00d9ec48eaf293b252934b207c10c0904f4b2b4e2d618003903c1b927c5265496a3103aa3cb2fe927c882be6bfd04ccafb9ba3958024cf0996cf4bcc4d6560284ecd4bd1071a55a29f63106fa89f63186fa09f63146fe4505c99979c9f99129f5f94999f176f646064aa6b60a46b646c656866656c616564a0ebee1ba26b606665600073030078d32d6a";
    const REAL_FULL: &str = "1-c6491acbe-c8-789c636064000310a500c4ec50360710e72765a526973030b0419460caa7a515a79630c001489e0d493ea9b224b5182451885d7f497e7a69660a0343f79b1b9a8a2b3db65b20c97382e5f312735319188a4bf28b12d353f5931293b34b0b8af5ab8a520b72f4d3f2f31d8a53f35220660300c1091dbe";

    fn packed_of(tok: &str) -> Vec<u8> {
        let hex = tok.splitn(4, '-').nth(3).unwrap();
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        miniz_oxide::inflate::decompress_to_vec_zlib(&bytes).unwrap()
    }

    #[test]
    fn real_tokens_decode_and_our_packing_is_byte_identical() {
        for tok in [REAL_INCREMENTAL, REAL_FULL] {
            let nvl = decode(tok).expect("real token decodes (checksum, zlib, native nvlist)");
            assert!(get_str(&nvl, "toname").is_some_and(|n| n.contains('@')));
            assert!(get_u64(&nvl, "toguid").is_some());
            assert_eq!(
                pack_native(&nvl),
                packed_of(tok),
                "re-packed nvlist equals the kernel's bytes"
            );
        }
        let inc = decode(REAL_INCREMENTAL).unwrap();
        assert_eq!(inc[0].0, "fromguid");
        assert_eq!(
            inc.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["fromguid", "object", "offset", "bytes", "toguid", "toname"]
        );
        assert_eq!(
            get_str(&inc, "toname"),
            Some("send/test/l0_1/l1_0/l2_2@syncoid_orion_2025-02-23:16:38:20-GMT-06:00")
        );
    }

    #[test]
    fn encode_roundtrip_and_errors() {
        let p = crate::state::Partial {
            toname: "mainpool/dom0@b2".into(),
            toguid: 0x20486fb66e9eadab,
            fromguid: 7,
            bytes: 4840,
            total: 76800,
            snapname: "b2".into(),
            flags: "Lc".into(),
            ..Default::default()
        };
        let tok = encode(&for_partial(&p));
        assert!(tok.starts_with("1-"));
        let parts: Vec<&str> = tok.splitn(4, '-').collect();
        assert!(parts[3].starts_with("789c"), "zlib stream");
        let nvl = decode(&tok).unwrap();
        assert_eq!(nvl, for_partial(&p));
        assert_eq!(get_u64(&nvl, "bytes"), Some(4840));
        assert!(has(&nvl, "largeblockok") && has(&nvl, "compressok") && !has(&nvl, "embedok"));
        assert_eq!(
            decode("garbage").unwrap_err(),
            "resume token is corrupt (invalid format)"
        );
        assert_eq!(
            decode("2-1-1-00").unwrap_err(),
            "resume token is corrupt (invalid version 2)"
        );
        let mut bad = tok.clone();
        bad.push_str("00");
        assert_eq!(
            decode(&bad).unwrap_err(),
            "resume token is corrupt (incorrect checksum)"
        );
        assert_eq!(
            print(&nvl),
            "nvlist version: 0\n\tfromguid = 0x7\n\tobject = 0x1\n\toffset = 0x12e8\n\tbytes = 0x12e8\n\ttoguid = 0x20486fb66e9eadab\n\ttoname = mainpool/dom0@b2\n\tlargeblockok = 1\n\tcompressok = 1\n"
        );
    }
}
