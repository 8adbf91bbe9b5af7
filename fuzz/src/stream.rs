//! Structured harness for `StreamVerifier`, and the data/end frame "fix-up" the agent target
//! uses so that mutated streams still carry valid sequence numbers, offsets and blake3 sums
//! (a fuzzer cannot forge blake3; without the fix-up every data frame is refused at the first
//! check and nothing after it is reached).

use qzb_protocol::{
    EndFrame, FrameKind, StreamVerifier, DATA_PREFIX_LEN, MAX_DATA_CHUNK, MAX_DATA_PAYLOAD,
};

/// What a correct sender has sent so far.
#[derive(Default)]
pub struct Model {
    pub seq: u64,
    pub offset: u64,
    pub whole: blake3::Hasher,
}

impl Model {
    /// A data frame payload carrying `data` that a correct sender would send next.
    pub fn data_payload(&self, data: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(DATA_PREFIX_LEN + data.len());
        p.extend_from_slice(&self.seq.to_le_bytes());
        p.extend_from_slice(&self.offset.to_le_bytes());
        p.extend_from_slice(blake3::hash(data).as_bytes());
        p.extend_from_slice(data);
        p
    }

    /// The stream hash chains the frame hashes (protocol/README.md): blake3 over the 32-byte
    /// blake3 of each data frame's data, in order.
    pub fn accept(&mut self, data: &[u8]) {
        self.seq += 1;
        self.offset += data.len() as u64;
        self.whole.update(blake3::hash(data).as_bytes());
    }

    pub fn end_frame(&self) -> EndFrame {
        EndFrame {
            total_len: self.offset,
            frame_count: self.seq,
            blake3: *self.whole.finalize().as_bytes(),
        }
    }
}

/// Input: a sequence of `tag:u8 len:u16le bytes[len]` chunks (the last one may be short).
/// tag bit 0: 0 = data frame, 1 = end frame. tag bit 1: "fix up": build the payload a correct
/// sender would send (data: prefix + `bytes`; end: the model's totals), else feed `bytes` raw.
///
/// Checks, besides "no panic": an accepted data frame returns exactly its data part and matches
/// the model; a fixed-up data frame of 1..=MAX_DATA_CHUNK bytes is always accepted; a fixed-up
/// end frame is always accepted; an accepted end frame equals the model's; the verifier's
/// counters follow the model.
pub fn run_verifier(mut input: &[u8]) {
    let mut verifier = StreamVerifier::new();
    let mut model = Model::default();
    while let Some((&tag, rest)) = input.split_first() {
        let len = crate::le_u16(rest, 0).unwrap_or(0) as usize;
        let rest = rest.get(2..).unwrap_or(&[]);
        let len = len.min(rest.len());
        let (bytes, tail) = rest.split_at(len);
        input = tail;
        let fix = tag & 2 != 0;
        if tag & 1 == 0 {
            let payload = if fix {
                model.data_payload(bytes)
            } else {
                bytes.to_vec()
            };
            match verifier.verify_data(&payload) {
                Ok(data) => {
                    assert!(payload.len() > DATA_PREFIX_LEN && payload.len() <= MAX_DATA_PAYLOAD);
                    assert_eq!(data, &payload[DATA_PREFIX_LEN..], "returned data");
                    assert_eq!(
                        payload[..DATA_PREFIX_LEN],
                        model.data_payload(data)[..DATA_PREFIX_LEN],
                        "accepted a frame a correct sender would not send"
                    );
                    model.accept(data);
                }
                Err(e) => {
                    assert!(
                        !(fix && !bytes.is_empty() && bytes.len() <= MAX_DATA_CHUNK),
                        "refused a correct data frame: {e}"
                    );
                    let _ = e.to_string();
                }
            }
        } else {
            let payload = if fix {
                model.end_frame().to_payload().to_vec()
            } else {
                bytes.to_vec()
            };
            match verifier.verify_end(&payload) {
                Ok(end) => assert_eq!(end, model.end_frame(), "accepted a wrong end frame"),
                Err(e) => {
                    assert!(!fix, "refused a correct end frame: {e}");
                    let _ = e.to_string();
                }
            }
        }
        assert_eq!(verifier.frames(), model.seq);
        assert_eq!(verifier.bytes(), model.offset);
    }
}

/// Rewrites a wire stream so its data and end frames are what a correct sender would send.
///
/// The input is read as frames `kind:u32le len:u32le payload` (a length past the end is clamped
/// to what is left). Data frames (kind 4): the payload is taken as the *data* and gets the
/// right prefix. End frames (kind 5): the payload is replaced by the right totals. A request
/// frame (kind 2) starts a new stream. Everything else is copied unchanged.
pub fn fix_up_frames(mut input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + 64);
    let mut model = Model::default();
    while !input.is_empty() {
        let (Some(kind), Some(len)) = (crate::le_u32(input, 0), crate::le_u32(input, 4)) else {
            out.extend_from_slice(input);
            break;
        };
        let body = &input[8..];
        let len = (len as usize).min(body.len());
        let (payload, tail) = body.split_at(len);
        input = tail;
        match FrameKind::from_wire(kind) {
            Some(FrameKind::Data) => {
                let data = &payload[..payload.len().min(MAX_DATA_CHUNK)];
                out.extend_from_slice(&crate::frame(kind, &model.data_payload(data)));
                model.accept(data);
            }
            Some(FrameKind::End) => {
                out.extend_from_slice(&crate::frame(kind, &model.end_frame().to_payload()));
            }
            Some(FrameKind::Request) => {
                model = Model::default();
                out.extend_from_slice(&crate::frame(kind, payload));
            }
            _ => out.extend_from_slice(&crate::frame(kind, payload)),
        }
    }
    out
}
