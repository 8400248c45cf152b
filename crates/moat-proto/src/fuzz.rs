//! Fuzz target (bolero): the host side of the agent and shim links decodes
//! whatever a (compromised) guest or client sends, in any chunking.

use crate::{AgentEvent, Decoder, ShimReply, ShimRequest};

#[test]
fn frames_from_a_hostile_peer_never_panic() {
    bolero::check!().with_type::<(Vec<u8>, Vec<u16>)>().for_each(|(bytes, cuts): &(Vec<u8>, Vec<u16>)| {
        let mut d = Decoder::default();
        let mut rest = &bytes[..];
        let mut cuts = cuts.iter();
        while !rest.is_empty() {
            let n = cuts.next().map(|c| (*c as usize % 64) + 1).unwrap_or(rest.len()).min(rest.len());
            d.push(&rest[..n]);
            rest = &rest[n..];
            loop {
                match d.next_frame() {
                    Ok(Some(f)) => {
                        let _ = f.msg::<AgentEvent>();
                        let _ = f.msg::<ShimReply>();
                        let _ = f.msg::<ShimRequest>();
                    }
                    Ok(None) => break,
                    // a bad stream ends the connection: nothing more is read
                    Err(_) => return,
                }
            }
        }
    });
}

#[test]
fn well_framed_garbage_never_panics() {
    // valid headers (any kind byte, any session) around arbitrary bodies:
    // the message decoders see every shape of JSON a guest could send
    bolero::check!().with_type::<Vec<(u8, u32, Vec<u8>)>>().for_each(|frames: &Vec<(u8, u32, Vec<u8>)>| {
        let mut bytes = Vec::new();
        for (kind, session, data) in frames {
            bytes.push(kind % 8);
            bytes.extend_from_slice(&session.to_be_bytes());
            bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
            bytes.extend_from_slice(data);
        }
        let mut d = Decoder::default();
        d.push(&bytes);
        while let Ok(Some(f)) = d.next_frame() {
            let _ = f.msg::<AgentEvent>();
            let _ = f.msg::<ShimReply>();
            let _ = f.msg::<ShimRequest>();
        }
    });
}
