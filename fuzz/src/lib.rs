//! Shared pieces of the qubes-zfs-backup fuzz targets: an allocation cap, the structured
//! harnesses for the stream verifier and the receiver agent, and the builders the corpus
//! generator (`examples/gen_corpus.rs`) uses to write valid seeds.
//!
//! `unsafe` is denied everywhere except in [`alloc_cap`]: a `#[global_allocator]` can only be
//! written with `unsafe impl GlobalAlloc`, and without a sanitizer libFuzzer cannot see a single
//! huge allocation (its `-malloc_limit_mb` needs sanitizer malloc hooks). That module only
//! forwards to `std::alloc::System` after a size check.
#![deny(unsafe_code)]

pub mod agent;
pub mod alloc_cap;
pub mod key_file;
pub mod manifest;
pub mod sealed;
pub mod stream;
pub mod zstream;

/// Reads a little-endian u16 at `at`, if there are two bytes.
pub fn le_u16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

/// Reads a little-endian u32 at `at`, if there are four bytes.
pub fn le_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// One frame on the wire: `kind:u32le length:u32le payload`.
pub fn frame(kind: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}
