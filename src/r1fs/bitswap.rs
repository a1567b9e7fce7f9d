//! Block exchange: Bitswap 1.2 messages (the protobuf of
//! `go-bitswap/message/pb/message.proto`, length-prefixed with a varint as
//! on IPFS's wire) carried by a libp2p request-response protocol,
//! [`PROTOCOL`]. A request is a message with a wantlist; its answer is a
//! message with the blocks (`payload`) and the presences (`Have` /
//! `DontHave`). Pairing each answer with its request (rather than IPFS's
//! one-way streams and a ledger per peer) gives every want a deadline and
//! every peer a bound on what it may cost: at most [`MAX_WANTS`] entries per
//! request and [`MAX_ANSWER_BYTES`] of blocks per answer. The protocol is
//! named `/ratio1/…` because of that pairing: a stock IPFS node speaks the
//! same messages, but one-way.
//!
//! A block is never trusted for its claimed name: the receiver computes its
//! CID from the prefix and the bytes, and keeps it only if it asked for
//! exactly that CID.

use super::cid::{Cid, SHA2_256};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use prost::Message as _;
use sha2::{Digest, Sha256};
use std::io;

/// Request-response protocol of R1FS block exchange.
pub const PROTOCOL: &str = "/ratio1/bitswap/1.2.0";
/// Wantlist entries in one request.
pub const MAX_WANTS: usize = 64;
/// Bytes of block data in one answer: what a provider sends at most, and
/// so, times the requests in flight, what a fetch may have in transit.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// Largest block R1FS accepts (IPFS's limit for blocks exchanged).
pub const MAX_BLOCK_BYTES: usize = 2 * 1024 * 1024;
/// Largest encoded request and answer (the answer may exceed
/// [`MAX_ANSWER_BYTES`] by one block plus framing).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
pub const MAX_RESPONSE_BYTES: usize = MAX_ANSWER_BYTES + MAX_BLOCK_BYTES + 64 * 1024;

/// `message.proto` of Bitswap 1.2.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    #[prost(message, optional, tag = "1")]
    pub wantlist: Option<Wantlist>,
    /// Bitswap 1.0 blocks (never sent; ignored on receipt).
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub blocks: Vec<Vec<u8>>,
    #[prost(message, repeated, tag = "3")]
    pub payload: Vec<Block>,
    #[prost(message, repeated, tag = "4")]
    pub block_presences: Vec<BlockPresence>,
    #[prost(int32, tag = "5")]
    pub pending_bytes: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Wantlist {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
    #[prost(bool, tag = "2")]
    pub full: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    /// The CID's bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub block: Vec<u8>,
    #[prost(int32, tag = "2")]
    pub priority: i32,
    #[prost(bool, tag = "3")]
    pub cancel: bool,
    #[prost(enumeration = "WantType", tag = "4")]
    pub want_type: i32,
    #[prost(bool, tag = "5")]
    pub send_dont_have: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum WantType {
    Block = 0,
    Have = 1,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Block {
    /// CID prefix: version, codec, multihash code and length, as varints.
    #[prost(bytes = "vec", tag = "1")]
    pub prefix: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockPresence {
    #[prost(bytes = "vec", tag = "1")]
    pub cid: Vec<u8>,
    #[prost(enumeration = "PresenceType", tag = "2")]
    pub r#type: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum PresenceType {
    Have = 0,
    DontHave = 1,
}

/// A request for blocks: want-block entries, asking for a `DontHave` for
/// each the peer lacks.
pub fn want_blocks(cids: &[Cid]) -> Message {
    let entries = cids
        .iter()
        .map(|c| Entry {
            block: c.to_bytes(),
            priority: 1,
            cancel: false,
            want_type: WantType::Block as i32,
            send_dont_have: true,
        })
        .collect();
    Message { wantlist: Some(Wantlist { entries, full: false }), ..Default::default() }
}

/// The CID prefix of `cid` (Bitswap 1.1 `Block.prefix`).
pub fn prefix(cid: &Cid) -> Vec<u8> {
    let mut out = vec![];
    let mut buf = unsigned_varint::encode::u64_buffer();
    for n in [u64::from(cid.version()), cid.codec(), cid.hash().code(), cid.hash().size() as u64] {
        out.extend_from_slice(unsigned_varint::encode::u64(n, &mut buf));
    }
    out
}

/// The CID of `data` under `prefix`: only sha2-256 with a 32-byte digest
/// (what R1FS verifies); the digest is computed here, never taken from
/// the sender.
pub fn cid_of(prefix: &[u8], data: &[u8]) -> Result<Cid, &'static str> {
    let mut rest = prefix;
    let mut next = || -> Result<u64, &'static str> {
        let (n, r) = unsigned_varint::decode::u64(rest).map_err(|_| "bad prefix")?;
        rest = r;
        Ok(n)
    };
    let (version, codec, code, len) = (next()?, next()?, next()?, next()?);
    if code != SHA2_256 || len != 32 {
        return Err("unsupported hash");
    }
    let mh = ::cid::multihash::Multihash::<64>::wrap(SHA2_256, &Sha256::digest(data)).map_err(|_| "bad prefix")?;
    match version {
        0 if codec == super::cid::DAG_PB => Ok(Cid::new_v0(mh).map_err(|_| "bad prefix")?),
        1 => Ok(Cid::new_v1(codec, mh)),
        _ => Err("bad prefix"),
    }
}

/// What a node answers to a wantlist, given how to read its blocks (`None`:
/// not here, or unreadable). Want-block entries get the block while the
/// answer has room ([`MAX_ANSWER_BYTES`]) and a `DontHave` (if asked) when
/// the block is not here; want-have entries get `Have` or `DontHave`;
/// cancels and malformed entries are skipped. Returns the answer and the
/// number of entries that were malformed.
pub fn answer(
    request: &Message,
    mut has: impl FnMut(&Cid) -> bool,
    mut read: impl FnMut(&Cid) -> Option<Vec<u8>>,
) -> (Message, usize) {
    let mut out = Message::default();
    let mut bytes = 0;
    let mut bad = 0;
    let entries = request.wantlist.as_ref().map(|w| w.entries.as_slice()).unwrap_or_default();
    for e in entries.iter().take(MAX_WANTS).filter(|e| !e.cancel) {
        let Ok(cid) = Cid::try_from(e.block.as_slice()) else {
            bad += 1;
            continue;
        };
        let presence = |t: PresenceType| BlockPresence { cid: e.block.clone(), r#type: t as i32 };
        if e.want_type == WantType::Have as i32 {
            // Presence only: a want-have costs no read of the block.
            let have = has(&cid);
            if have || e.send_dont_have {
                out.block_presences.push(presence(if have { PresenceType::Have } else { PresenceType::DontHave }));
            }
            continue;
        }
        if bytes >= MAX_ANSWER_BYTES {
            // No room left: the asker asks again for what is still missing.
            continue;
        }
        match read(&cid) {
            Some(data) => {
                bytes += data.len();
                out.payload.push(Block { prefix: prefix(&cid), data });
            }
            None if e.send_dont_have => out.block_presences.push(presence(PresenceType::DontHave)),
            None => {}
        }
    }
    (out, bad)
}

/// What an answer brought for the CIDs asked: each block whose computed CID
/// is among them, and the CIDs the peer said it lacks. Everything else (a
/// block not asked for, one whose bytes name another CID, a bad prefix) is
/// counted as rejected and dropped.
#[derive(Debug, Default)]
pub struct Received {
    pub blocks: Vec<(Cid, Vec<u8>)>,
    pub dont_have: Vec<Cid>,
    pub rejected: usize,
}

pub fn receive(asked: &[Cid], answer: Message) -> Received {
    let mut r = Received::default();
    let mut pending: std::collections::HashSet<&Cid> = asked.iter().collect();
    r.rejected += answer.blocks.len();
    for b in answer.payload {
        match cid_of(&b.prefix, &b.data) {
            Ok(cid) if b.data.len() <= MAX_BLOCK_BYTES && pending.remove(&cid) => r.blocks.push((cid, b.data)),
            _ => r.rejected += 1,
        }
    }
    for p in answer.block_presences {
        match Cid::try_from(p.cid.as_slice()) {
            Ok(cid) if p.r#type == PresenceType::DontHave as i32 && pending.contains(&cid) => r.dont_have.push(cid),
            Ok(_) => {}
            Err(_) => r.rejected += 1,
        }
    }
    r
}

/// Items a message may carry: wantlist entries, and blocks plus presences.
/// Checked on the wire before decoding (a 2-byte empty item decodes into a
/// struct of tens of bytes: a message of 6 MiB could cost hundreds of MB).
const MAX_ITEMS: usize = 2 * MAX_WANTS;

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let (n, rest) = unsigned_varint::decode::u64(buf).ok()?;
    *buf = rest;
    Some(n)
}

/// Counts the repeated fields of an encoded [`Message`] without decoding
/// it: at most [`MAX_WANTS`] wantlist entries and [`MAX_ITEMS`] blocks and
/// presences, or the message is refused.
fn check_shape(mut buf: &[u8]) -> Result<(), &'static str> {
    let (mut entries, mut items) = (0usize, 0usize);
    while !buf.is_empty() {
        let key = varint(&mut buf).ok_or("bad key")?;
        let (field, wire) = (key >> 3, key & 7);
        let body = match wire {
            0 => {
                varint(&mut buf).ok_or("bad varint")?;
                continue;
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                buf = buf.get(n..).ok_or("truncated")?;
                continue;
            }
            2 => {
                let len = varint(&mut buf).ok_or("bad length")? as usize;
                let body = buf.get(..len).ok_or("truncated")?;
                buf = &buf[len..];
                body
            }
            _ => return Err("bad wire type"),
        };
        match field {
            1 => {
                // The wantlist: count its entries (field 1).
                let mut w = body;
                while !w.is_empty() {
                    let key = varint(&mut w).ok_or("bad key")?;
                    match key & 7 {
                        0 => {
                            varint(&mut w).ok_or("bad varint")?;
                        }
                        2 => {
                            let len = varint(&mut w).ok_or("bad length")? as usize;
                            w = w.get(len..).ok_or("truncated")?;
                            entries += usize::from(key >> 3 == 1);
                        }
                        _ => return Err("bad wire type"),
                    }
                }
            }
            2..=4 => items += 1,
            _ => {}
        }
        if entries > MAX_WANTS || items > MAX_ITEMS {
            return Err("too many items");
        }
    }
    Ok(())
}

/// The request-response codec: one varint-length-prefixed protobuf
/// message each way, refused above its size limit before it is read.
#[derive(Clone, Default)]
pub struct Codec;

async fn read_message<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Message> {
    let mut len: u64 = 0;
    for i in 0..5 {
        let mut b = [0u8; 1];
        io.read_exact(&mut b).await?;
        len |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            break;
        }
        if i == 4 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "length prefix too long"));
        }
    }
    if len as usize > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("message of {len} bytes exceeds {max}")));
    }
    let mut buf = vec![0u8; len as usize];
    io.read_exact(&mut buf).await?;
    check_shape(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Message::decode(buf.as_slice()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_message<T: AsyncWrite + Unpin + Send>(io: &mut T, m: &Message) -> io::Result<()> {
    io.write_all(&m.encode_length_delimited_to_vec()).await?;
    io.close().await
}

#[async_trait::async_trait]
impl libp2p::request_response::Codec for Codec {
    type Protocol = libp2p::StreamProtocol;
    type Request = Message;
    type Response = Message;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
    ) -> io::Result<Message> {
        read_message(io, MAX_REQUEST_BYTES).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
    ) -> io::Result<Message> {
        read_message(io, MAX_RESPONSE_BYTES).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        m: Message,
    ) -> io::Result<()> {
        write_message(io, &m).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        m: Message,
    ) -> io::Result<()> {
        write_message(io, &m).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::r1fs::cid::{DAG_PB, RAW};

    fn raw_cid(data: &[u8]) -> Cid {
        Cid::new_v1(RAW, ::cid::multihash::Multihash::<64>::wrap(SHA2_256, &Sha256::digest(data)).unwrap())
    }

    #[test]
    fn prefixes_round_trip_and_the_cid_is_computed_not_trusted() {
        let data = b"hello r1fs";
        let cid = raw_cid(data);
        assert_eq!(prefix(&cid), vec![0x01, 0x55, 0x12, 0x20], "as go-cid's Prefix().Bytes()");
        assert_eq!(cid_of(&prefix(&cid), data).unwrap(), cid);
        assert_ne!(cid_of(&prefix(&cid), b"other bytes").unwrap(), cid);
        let v0 = Cid::new_v0(*Cid::new_v1(DAG_PB, *cid.hash()).hash()).unwrap();
        assert_eq!(prefix(&v0), vec![0x00, 0x70, 0x12, 0x20]);
        assert_eq!(cid_of(&[0x01, 0x55, 0x13, 0x40], data).unwrap_err(), "unsupported hash");
        assert_eq!(cid_of(&[0x01, 0x55], data).unwrap_err(), "bad prefix");
        assert_eq!(cid_of(&[0x00, 0x55, 0x12, 0x20], data).unwrap_err(), "bad prefix");
    }

    #[test]
    fn answers_serve_what_is_here_within_the_budget_and_say_what_is_not() {
        let blocks: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 256 * 1024]).collect();
        let cids: Vec<Cid> = blocks.iter().map(|b| raw_cid(b)).collect();
        let missing = raw_cid(b"nowhere");
        let mut ask = cids.clone();
        ask.insert(0, missing);
        let mut req = want_blocks(&ask);
        req.wantlist.as_mut().unwrap().entries.push(Entry { block: vec![1, 2, 3], ..Default::default() });
        let (ans, bad) =
            answer(&req, |c| cids.contains(c), |c| cids.iter().position(|x| x == c).map(|i| blocks[i].clone()));
        assert_eq!(bad, 1, "the malformed entry");
        assert_eq!(ans.payload.len(), MAX_ANSWER_BYTES / (256 * 1024), "stops at the byte budget");
        let got = receive(&ask, ans);
        assert_eq!(got.dont_have, vec![missing]);
        assert_eq!(got.rejected, 0);
        assert!(got.blocks.iter().all(|(c, d)| raw_cid(d) == *c));
    }

    #[test]
    fn a_lying_answer_keeps_nothing_it_was_not_asked_for() {
        let asked = raw_cid(b"wanted");
        let lie = Message {
            payload: vec![
                // Claims the asked CID's prefix, carries other bytes.
                Block { prefix: prefix(&asked), data: b"forged".to_vec() },
                Block { prefix: vec![0xff; 12], data: b"junk".to_vec() },
            ],
            blocks: vec![b"wanted".to_vec()],
            block_presences: vec![BlockPresence { cid: vec![9, 9], r#type: 1 }],
            ..Default::default()
        };
        let got = receive(&[asked], lie);
        assert!(got.blocks.is_empty());
        assert_eq!(got.rejected, 4);
        let honest =
            Message { payload: vec![Block { prefix: prefix(&asked), data: b"wanted".to_vec() }], ..Default::default() };
        assert_eq!(receive(&[asked], honest).blocks.len(), 1);
    }

    #[tokio::test]
    async fn the_codec_refuses_oversized_frames_before_reading_them() {
        {
            let m = want_blocks(&[raw_cid(b"x")]);
            let mut wire = futures::io::Cursor::new(vec![]);
            write_message(&mut wire, &m).await.unwrap();
            let bytes = wire.into_inner();
            assert_eq!(read_message(&mut bytes.as_slice(), MAX_REQUEST_BYTES).await.unwrap(), m);
            // A length prefix announcing 1 GiB: refused from the prefix alone.
            let mut huge = vec![];
            huge.extend_from_slice(unsigned_varint::encode::u64(1 << 30, &mut unsigned_varint::encode::u64_buffer()));
            let err = read_message(&mut huge.as_slice(), MAX_REQUEST_BYTES).await.unwrap_err();
            assert!(err.to_string().contains("exceeds"), "{err}");
            let endless = [0xffu8; 8];
            assert!(read_message(&mut endless.as_slice(), MAX_REQUEST_BYTES).await.is_err());
            // Many tiny items in a small frame: refused before decoding.
            let swarm =
                Message { block_presences: vec![BlockPresence::default(); MAX_ITEMS + 1], ..Default::default() };
            let mut wire = futures::io::Cursor::new(vec![]);
            write_message(&mut wire, &swarm).await.unwrap();
            let err = read_message(&mut wire.into_inner().as_slice(), MAX_RESPONSE_BYTES).await.unwrap_err();
            assert!(err.to_string().contains("too many items"), "{err}");
            let wants: Vec<Cid> = (0..MAX_WANTS as u32 + 1).map(|i| raw_cid(&i.to_le_bytes())).collect();
            let mut wire = futures::io::Cursor::new(vec![]);
            write_message(&mut wire, &want_blocks(&wants)).await.unwrap();
            assert!(read_message(&mut wire.into_inner().as_slice(), MAX_REQUEST_BYTES).await.is_err());
            let ok = want_blocks(&wants[..MAX_WANTS]);
            let mut wire = futures::io::Cursor::new(vec![]);
            write_message(&mut wire, &ok).await.unwrap();
            assert_eq!(read_message(&mut wire.into_inner().as_slice(), MAX_REQUEST_BYTES).await.unwrap(), ok);
        }
    }
}
