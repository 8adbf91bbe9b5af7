//! `read_frame` over a byte cursor until the input ends or a frame is refused; every accepted
//! frame is decoded as its kind says (block frames by `parse_block_frame`), and re-written with
//! `write_frame` (and `write_block_frame`) to the same bytes.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use qzb_protocol::{
    decode_reply, decode_request, parse_block_frame, read_frame, write_block_frame, write_frame,
    EndFrame, FrameKind, Hello, StreamVerifier,
};
use std::io::Cursor;

qzb_fuzz::install_alloc_cap!();

fuzz_target!(
    init: qzb_fuzz::alloc_cap::init(),
    |data: &[u8]| {
        let mut cursor = Cursor::new(data);
        let mut payload = Vec::new();
        let mut verifier = StreamVerifier::new();
        loop {
            let start = cursor.position() as usize;
            match read_frame(&mut cursor, &mut payload) {
                Ok(None) => break,
                Err(e) => {
                    let _ = e.to_string();
                    break;
                }
                Ok(Some(kind)) => {
                    let (min, max) = kind.payload_bounds();
                    assert!(payload.len() >= min && payload.len() <= max);
                    let end = cursor.position() as usize;
                    let mut again = Vec::new();
                    write_frame(&mut again, kind, &payload).expect("accepted frame re-writes");
                    assert_eq!(again, &data[start..end], "frame does not round-trip");
                    match kind {
                        FrameKind::Hello => {
                            let _ = Hello::from_payload(&payload);
                        }
                        FrameKind::Request => {
                            let _ = decode_request(&payload);
                        }
                        FrameKind::Reply => {
                            let _ = decode_reply(&payload);
                        }
                        FrameKind::Data => {
                            let _ = verifier.verify_data(&payload);
                        }
                        FrameKind::End => {
                            let _ = EndFrame::from_payload(&payload);
                            let _ = verifier.verify_end(&payload);
                        }
                        FrameKind::Block => {
                            // Accepted by read_frame, so within the block bounds: it parses,
                            // and writes back to the same bytes.
                            let (offset, block) =
                                parse_block_frame(&payload).expect("bounded block frame parses");
                            let mut again = Vec::new();
                            write_block_frame(&mut again, offset, block).expect("block re-writes");
                            assert_eq!(again, &data[start..end], "block frame does not round-trip");
                        }
                    }
                }
            }
        }
    }
);
