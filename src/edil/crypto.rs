//! EDIL's cryptography (pure, no network): model updates encrypted under
//! the model owner's public key, summed by an aggregator that holds no
//! secret, decrypted by the owner only (docs/edil.md).
//!
//! - Scheme: LWE compact public-key encryption of tfhe's `core_crypto`
//!   (dimension 2048, modulus 2^64, TUniform(17) noise: the parameters of
//!   tfhe 1.8's `PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128`, 128-bit
//!   security). Ciphertexts add without bootstrapping.
//! - Encoding: a value `x` becomes the 32-bit integer `q = round(x ·
//!   2^16)`, clipped so that the sum of `max_participants` of them fits 32
//!   bits (|x| ≤ 2^15 / max_participants), placed in the top 32 bits of
//!   the 64-bit torus (Δ = 2^32). The noise stays far below Δ/2 for 1,000
//!   participants when each has its own public key (docs/edil.md).
//! - Each participant gets its own seeded compact public key (16.5 KB):
//!   with one key shared by all, the noise grows linearly and about 1,000
//!   participants decrypt wrong values.
//! - The aggregator checks every received list against the fixed
//!   parameters (`is_conformant`) and the expected length before adding:
//!   a list of the wrong shape would panic the addition.
//! - Wire format, version 1: `R1E` + version byte + kind byte + u32 count
//!   (little endian) + bincode of the tfhe object. Updates travel signed
//!   by their participant ([`SignedUpdate`]).

use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tfhe::conformance::{ListSizeConstraint, ParameterSetConformant};
use tfhe::core_crypto::algorithms::polynomial_algorithms::polynomial_karatsuba_wrapping_mul;
use tfhe::core_crypto::prelude::*;

/// LWE dimension (= polynomial size of the compact lists).
pub const DIM: usize = 2048;
/// Δ = 2^32: the message is the top 32 bits.
const SHIFT: u32 = 32;
/// Fixed point: 16 fractional bits.
pub const SCALE_BITS: u32 = 16;
const SCALE: f64 = (1u64 << SCALE_BITS) as f64;
/// TUniform bound of the public-key encryption noise (tfhe's vetted set).
const NOISE_BOUND_LOG2: u32 = 17;
/// Most participants a round may have (the noise analysis holds to it).
pub const MAX_PARTICIPANTS: u32 = 1_000;
/// Most values in one update (a 16 MB ciphertext list at most... per
/// 2,048 values 32 KB plus the mask: bounded to keep memory in check).
pub const MAX_VALUES: usize = 1 << 20;
/// Wire format version.
pub const VERSION: u8 = 1;
const MAGIC: &[u8; 3] = b"R1E";

fn noise() -> DynamicDistribution<u64> {
    DynamicDistribution::new_t_uniform(NOISE_BOUND_LOG2)
}

fn modulus() -> CiphertextModulus<u64> {
    CiphertextModulus::<u64>::new_native()
}

/// Why EDIL input is refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EdilError {
    #[error("not an EDIL {0} (bad header)")]
    Header(&'static str),
    #[error("EDIL wire version {0} is not supported (this node reads {VERSION})")]
    Version(u8),
    #[error("malformed {0}: {1}")]
    Malformed(&'static str, String),
    #[error("the update holds {got} values, the round expects {want}")]
    Length { got: usize, want: usize },
    #[error("the update does not have the round's parameters")]
    NotConformant,
    #[error("{0} values is more than {MAX_VALUES}")]
    TooLarge(usize),
    #[error("{0} participants is outside 1..={MAX_PARTICIPANTS}")]
    Participants(u32),
    #[error("the aggregate already holds {0} updates, the most the encoding allows")]
    Full(u32),
    #[error("the update's signature does not verify")]
    BadSignature,
    #[error("sealed update: {0}")]
    Seal(String),
}

#[derive(Clone, Copy)]
#[repr(u8)]
enum Kind {
    SecretKey = 1,
    PublicKey = 2,
    Update = 3,
    Aggregate = 4,
}

fn wrap(kind: Kind, count: u32, body: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&count.to_le_bytes());
    bincode::serialize_into(&mut out, body).expect("tfhe objects serialize");
    out
}

fn unwrap<'a>(bytes: &'a [u8], kind: Kind, what: &'static str) -> Result<(u32, &'a [u8]), EdilError> {
    if bytes.len() < 9 || &bytes[..3] != MAGIC || bytes[4] != kind as u8 {
        return Err(EdilError::Header(what));
    }
    if bytes[3] != VERSION {
        return Err(EdilError::Version(bytes[3]));
    }
    let count = u32::from_le_bytes(bytes[5..9].try_into().expect("4 bytes"));
    Ok((count, &bytes[9..]))
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8], what: &'static str, limit: u64) -> Result<T, EdilError> {
    use bincode::Options;
    // Bounded: a hostile length prefix cannot make it allocate more.
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(limit)
        .deserialize(body)
        .map_err(|e| EdilError::Malformed(what, e.to_string()))
}

/// The model owner's secret key. Never leaves the owner.
pub struct OwnerKey {
    sk: LweSecretKeyOwned<u64>,
}

impl OwnerKey {
    pub fn generate() -> Self {
        let mut seeder = new_seeder();
        let mut gen = SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
        Self { sk: allocate_and_generate_new_binary_lwe_secret_key(LweDimension(DIM), &mut gen) }
    }

    /// A fresh public key for one participant (each its own).
    pub fn public_key(&self) -> ParticipantKey {
        let mut seeder = new_seeder();
        ParticipantKey {
            pk: allocate_and_generate_new_seeded_lwe_compact_public_key(&self.sk, noise(), modulus(), seeder.as_mut()),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        wrap(Kind::SecretKey, DIM as u32, &self.sk)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EdilError> {
        let (_, body) = unwrap(bytes, Kind::SecretKey, "secret key")?;
        let sk: LweSecretKeyOwned<u64> = decode(body, "secret key", 64 * 1024)?;
        if sk.lwe_dimension() != LweDimension(DIM) {
            return Err(EdilError::NotConformant);
        }
        Ok(Self { sk })
    }

    /// The sums the aggregate holds, as quantised integers: one polynomial
    /// product per 2,048 values (never expanding the compact list).
    pub fn decrypt(&self, agg: &Aggregate) -> Vec<i64> {
        let s = self.sk.as_ref();
        // t(X) = Σ s_i X^{-i} (negacyclic): the mask times t gives every
        // ⟨mask_j, s⟩ of the chunk at once.
        let mut t = vec![0u64; DIM];
        t[0] = s[0];
        for i in 1..DIM {
            t[DIM - i] = s[i].wrapping_neg();
        }
        let t = Polynomial::from_container(t.as_slice());
        let (masks, bodies) = agg.list.get_mask_and_body_list();
        let mut c = Polynomial::new(0u64, PolynomialSize(DIM));
        let mut out = Vec::with_capacity(agg.values);
        for (mask, body) in masks.iter().zip(bodies.as_ref().chunks(DIM)) {
            polynomial_karatsuba_wrapping_mul(&mut c, &Polynomial::from_container(mask.as_ref()), &t);
            for (j, b) in body.iter().enumerate() {
                let dot = if j == 0 { c.as_ref()[0] } else { c.as_ref()[DIM - j].wrapping_neg() };
                // Round to the nearest multiple of Δ; the top 32 bits are the
                // two's-complement sum.
                let x = b.wrapping_sub(dot).wrapping_add(1 << (SHIFT - 1)) >> SHIFT;
                out.push(x as u32 as i32 as i64);
            }
        }
        out.truncate(agg.values);
        out
    }
}

/// One participant's public key (seeded: 16.5 KB).
#[derive(Clone)]
pub struct ParticipantKey {
    pk: SeededLweCompactPublicKeyOwned<u64>,
}

impl ParticipantKey {
    pub fn to_bytes(&self) -> Vec<u8> {
        wrap(Kind::PublicKey, DIM as u32, &self.pk)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EdilError> {
        let (_, body) = unwrap(bytes, Kind::PublicKey, "public key")?;
        let pk: SeededLweCompactPublicKeyOwned<u64> = decode(body, "public key", 64 * 1024)?;
        if pk.lwe_dimension() != LweDimension(DIM) || pk.ciphertext_modulus() != modulus() {
            return Err(EdilError::NotConformant);
        }
        Ok(Self { pk })
    }

    /// Encrypts quantised values.
    pub fn encrypt(&self, q: &[i32]) -> Result<Update, EdilError> {
        if q.len() > MAX_VALUES {
            return Err(EdilError::TooLarge(q.len()));
        }
        let pk = self.pk.clone().decompress_into_lwe_compact_public_key();
        let pt: Vec<u64> = q.iter().map(|v| (*v as i64 as u64) << SHIFT).collect();
        let mut list = LweCompactCiphertextList::new(0u64, LweSize(DIM + 1), LweCiphertextCount(q.len()), modulus());
        let mut seeder = new_seeder();
        let mut gen = EncryptionRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed(), seeder.as_mut());
        encrypt_lwe_compact_ciphertext_list_with_compact_public_key(
            &pk,
            &mut list,
            &PlaintextList::from_container(pt),
            noise(),
            noise(),
            gen.noise_generator_mut(),
        );
        Ok(Update { list, values: q.len() })
    }
}

/// Fixed-point encoding with headroom for `max_participants` summands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Encoding {
    pub max_participants: u32,
}

impl Encoding {
    pub fn new(max_participants: u32) -> Result<Self, EdilError> {
        if max_participants == 0 || max_participants > MAX_PARTICIPANTS {
            return Err(EdilError::Participants(max_participants));
        }
        Ok(Self { max_participants })
    }

    /// The largest |quantised value|: the sum of `max_participants` of them
    /// stays within a signed 32-bit integer.
    pub fn clip(&self) -> i64 {
        (i32::MAX as i64) / self.max_participants as i64
    }

    /// The largest |value| represented without clipping.
    pub fn range(&self) -> f64 {
        self.clip() as f64 / SCALE
    }

    /// `round(x · 2^16)`, clipped to ±[`Encoding::clip`] (overflow would
    /// wrap silently); NaN counts as 0.
    pub fn quantise(&self, x: &[f32]) -> Vec<i32> {
        let c = self.clip() as f64;
        x.iter()
            .map(|v| {
                let v = *v as f64;
                if v.is_nan() {
                    0
                } else {
                    (v * SCALE).round().clamp(-c, c) as i32
                }
            })
            .collect()
    }

    /// FedAvg: the decrypted sums over the total weight (the participant
    /// count, or the sum of sample counts when each update was weighted).
    pub fn average(&self, sums: &[i64], total_weight: u64) -> Vec<f32> {
        let w = total_weight.max(1) as f64;
        sums.iter().map(|s| (*s as f64 / SCALE / w) as f32).collect()
    }
}

/// One participant's encrypted update.
pub struct Update {
    list: LweCompactCiphertextListOwned<u64>,
    values: usize,
}

impl Update {
    pub fn values(&self) -> usize {
        self.values
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        wrap(Kind::Update, self.values as u32, &self.list)
    }

    /// The number of values an update on the wire says it holds (its
    /// header only: [`Update::from_bytes`] checks the rest).
    pub fn values_in(bytes: &[u8]) -> Result<usize, EdilError> {
        Ok(unwrap(bytes, Kind::Update, "update")?.0 as usize)
    }

    /// Parses an update of exactly `expected` values with the round's
    /// parameters (anything else is refused before it is added).
    pub fn from_bytes(bytes: &[u8], expected: usize) -> Result<Self, EdilError> {
        if expected > MAX_VALUES {
            return Err(EdilError::TooLarge(expected));
        }
        let (count, body) = unwrap(bytes, Kind::Update, "update")?;
        if count as usize != expected {
            return Err(EdilError::Length { got: count as usize, want: expected });
        }
        Ok(Self { list: update_list(body, expected, "update")?, values: expected })
    }
}

/// The homomorphic sum of updates (the aggregator's state: no key).
pub struct Aggregate {
    list: LweCompactCiphertextListOwned<u64>,
    values: usize,
    count: u32,
    encoding: Encoding,
    /// The wire layout of an update of this shape ([`layout`]).
    layout: (Vec<u8>, usize, Vec<u8>),
}

/// The bincode layout of a list of a given shape with the fixed
/// parameters: its bytes before the 64-bit words (the words' count) and
/// after them (dimension, count, modulus). An update of that shape is
/// exactly `prefix ‖ words ‖ suffix`.
fn layout(list: &LweCompactCiphertextListOwned<u64>) -> (Vec<u8>, usize, Vec<u8>) {
    let words = list.as_ref().len();
    let bytes = bincode::serialize(list).expect("tfhe objects serialize");
    let (prefix, rest) = bytes.split_at(8);
    (prefix.to_vec(), words, rest[words * 8..].to_vec())
}

impl Aggregate {
    pub fn new(values: usize, encoding: Encoding) -> Result<Self, EdilError> {
        if values > MAX_VALUES {
            return Err(EdilError::TooLarge(values));
        }
        let list = LweCompactCiphertextList::new(0u64, LweSize(DIM + 1), LweCiphertextCount(values), modulus());
        let layout = layout(&list);
        Ok(Self { list, values, count: 0, encoding, layout })
    }

    /// Adds an update (parsed by [`Update::from_bytes`], so of the right
    /// shape); refuses more updates than the encoding has headroom for.
    pub fn add(&mut self, u: &Update) -> Result<(), EdilError> {
        if u.values != self.values {
            return Err(EdilError::Length { got: u.values, want: self.values });
        }
        if self.count >= self.encoding.max_participants {
            return Err(EdilError::Full(self.count));
        }
        lwe_compact_ciphertext_list_add_assign(&mut self.list, &u.list);
        self.count += 1;
        Ok(())
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// As [`Update::from_bytes`] then [`Aggregate::add`], straight from
    /// the wire: the bytes must be exactly the layout of a list of this
    /// shape with the fixed parameters (what `is_conformant` checks), and
    /// each 64-bit word is added in place, with no decoding or copy.
    pub fn add_wire(&mut self, bytes: &[u8]) -> Result<(), EdilError> {
        let (count, body) = unwrap(bytes, Kind::Update, "update")?;
        if count as usize != self.values {
            return Err(EdilError::Length { got: count as usize, want: self.values });
        }
        if self.count >= self.encoding.max_participants {
            return Err(EdilError::Full(self.count));
        }
        let (prefix, words, suffix) = &self.layout;
        let words = *words;
        let data = body
            .strip_prefix(prefix.as_slice())
            .and_then(|b| b.strip_suffix(suffix.as_slice()))
            .filter(|d| d.len() == words * 8)
            .ok_or(EdilError::NotConformant)?;
        for (acc, w) in self.list.as_mut().iter_mut().zip(data.chunks_exact(8)) {
            *acc = acc.wrapping_add(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        self.count += 1;
        Ok(())
    }

    pub fn values(&self) -> usize {
        self.values
    }

    /// As [`Update::values_in`], for an aggregate.
    pub fn values_in(bytes: &[u8]) -> Result<usize, EdilError> {
        Ok(unwrap(bytes, Kind::Aggregate, "aggregate")?.0 as usize)
    }

    /// The aggregate on the wire: the header's count is the number of
    /// values; the number of updates summed follows it (u32, little
    /// endian), then the list.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = wrap(Kind::Aggregate, self.values as u32, &());
        out.extend_from_slice(&self.count.to_le_bytes());
        bincode::serialize_into(&mut out, &self.list).expect("tfhe objects serialize");
        out
    }

    /// Parses an aggregate of exactly `expected` values, with the round's
    /// parameters and no more updates than `encoding` has headroom for.
    pub fn from_bytes(bytes: &[u8], expected: usize, encoding: Encoding) -> Result<Self, EdilError> {
        if expected > MAX_VALUES {
            return Err(EdilError::TooLarge(expected));
        }
        let (values, body) = unwrap(bytes, Kind::Aggregate, "aggregate")?;
        if values as usize != expected {
            return Err(EdilError::Length { got: values as usize, want: expected });
        }
        let count = body.get(..4).ok_or(EdilError::Header("aggregate"))?;
        let count = u32::from_le_bytes(count.try_into().expect("4 bytes"));
        if count > encoding.max_participants {
            return Err(EdilError::Full(count));
        }
        let list = update_list(&body[4..], expected, "aggregate")?;
        let layout = layout(&list);
        Ok(Self { list, values: expected, count, encoding, layout })
    }
}

/// Most bytes an update or aggregate of `values` values takes on the
/// wire: the mask and body of each 2,048-value chunk, 8 bytes each, plus
/// slack for the headers.
pub fn wire_bound(values: usize) -> u64 {
    values.div_ceil(DIM).max(1) as u64 * (DIM as u64) * 16 + 4096
}

/// A ciphertext list of exactly `expected` values with the fixed
/// parameters, read within a bound of its size.
fn update_list(
    body: &[u8],
    expected: usize,
    what: &'static str,
) -> Result<LweCompactCiphertextListOwned<u64>, EdilError> {
    let list: LweCompactCiphertextListOwned<u64> = decode(body, what, wire_bound(expected))?;
    let conf = LweCiphertextListConformanceParams {
        lwe_dim: LweDimension(DIM),
        lwe_ciphertext_count_constraint: ListSizeConstraint::exact_size(expected),
        ct_modulus: modulus(),
    };
    if !list.is_conformant(&conf) {
        return Err(EdilError::NotConformant);
    }
    Ok(list)
}

/// An update signed by its participant: what travels.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignedUpdate {
    /// The participant's PeerId (its public key is inline).
    pub participant: String,
    /// The model and round it is for (signed with it: no replay into
    /// another round).
    pub model: String,
    pub round: u64,
    #[serde(with = "serde_bytes_b64")]
    pub update: Vec<u8>,
    #[serde(with = "serde_bytes_b64")]
    pub signature: Vec<u8>,
}

mod serde_bytes_b64 {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s).map_err(serde::de::Error::custom)
    }
}

fn signed_bytes(model: &str, round: u64, update: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"ratio1/edil/update/1");
    h.update((model.len() as u64).to_be_bytes());
    h.update(model.as_bytes());
    h.update(round.to_be_bytes());
    h.update(Sha256::digest(update));
    h.finalize().to_vec()
}

impl SignedUpdate {
    pub fn sign(key: &Keypair, model: &str, round: u64, update: &Update) -> Self {
        let bytes = update.to_bytes();
        let signature = key.sign(&signed_bytes(model, round, &bytes)).expect("ed25519 signs");
        Self {
            participant: key.public().to_peer_id().to_string(),
            model: model.into(),
            round,
            update: bytes,
            signature,
        }
    }

    /// Checks the signature against the participant's own key; returns the
    /// participant.
    pub fn verify(&self) -> Result<PeerId, EdilError> {
        let peer: PeerId = self.participant.parse().map_err(|_| EdilError::BadSignature)?;
        let key: PublicKey = crate::cstore::record::public_key_of(&peer).ok_or(EdilError::BadSignature)?;
        if !key.verify(&signed_bytes(&self.model, self.round, &self.update), &self.signature) {
            return Err(EdilError::BadSignature);
        }
        Ok(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn random_update(rng: &mut impl Rng, n: usize, range: f32) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-range..=range)).collect()
    }

    #[test]
    fn the_sum_of_encrypted_updates_decrypts_to_the_exact_quantised_sum() {
        let mut rng = rand::thread_rng();
        let owner = OwnerKey::generate();
        for (participants, values) in [(1u32, 5usize), (7, DIM + 3), (30, 2 * DIM)] {
            let enc = Encoding::new(participants).unwrap();
            let range = enc.range() as f32;
            let mut agg = Aggregate::new(values, enc).unwrap();
            let mut exact = vec![0i64; values];
            for _ in 0..participants {
                let x = random_update(&mut rng, values, range * 1.2);
                let q = enc.quantise(&x);
                for (e, v) in exact.iter_mut().zip(&q) {
                    *e += *v as i64;
                }
                let pk = ParticipantKey::from_bytes(&owner.public_key().to_bytes()).unwrap();
                let wire = pk.encrypt(&q).unwrap().to_bytes();
                agg.add(&Update::from_bytes(&wire, values).unwrap()).unwrap();
            }
            let owner = OwnerKey::from_bytes(&owner.to_bytes()).unwrap();
            assert_eq!(owner.decrypt(&agg), exact, "{participants} participants, {values} values");
        }
    }

    #[test]
    fn adding_from_the_wire_is_adding_the_parsed_update() {
        let mut rng = rand::thread_rng();
        let owner = OwnerKey::generate();
        let enc = Encoding::new(3).unwrap();
        let v = DIM + 5;
        let wires: Vec<Vec<u8>> = (0..3)
            .map(|_| owner.public_key().encrypt(&enc.quantise(&random_update(&mut rng, v, 100.0))).unwrap().to_bytes())
            .collect();
        let (mut slow, mut fast) = (Aggregate::new(v, enc).unwrap(), Aggregate::new(v, enc).unwrap());
        for w in &wires {
            slow.add(&Update::from_bytes(w, v).unwrap()).unwrap();
            fast.add_wire(w).unwrap();
        }
        assert_eq!(slow.to_bytes(), fast.to_bytes(), "the same sum, bit for bit");
        assert_eq!(owner.decrypt(&slow), owner.decrypt(&fast));
        // Anything but exactly that layout is refused, as parsing refuses it.
        let mut bent = wires[0].clone();
        let n = bent.len();
        bent[n - 1] ^= 1;
        let mut agg = Aggregate::new(v, enc).unwrap();
        assert_eq!(agg.add_wire(&bent), Err(EdilError::NotConformant), "a changed parameter");
        assert_eq!(agg.add_wire(&wires[0][..n - 8]), Err(EdilError::NotConformant), "cut short");
        assert!(matches!(agg.add_wire(&Aggregate::new(1, enc).unwrap().to_bytes()), Err(EdilError::Header(_))));
        let mut other = wires[0].clone();
        other[5..9].copy_from_slice(&(v as u32 + 1).to_le_bytes());
        assert!(matches!(agg.add_wire(&other), Err(EdilError::Length { .. })));
        for w in &wires {
            agg.add_wire(w).unwrap();
        }
        assert_eq!(agg.add_wire(&wires[0]), Err(EdilError::Full(3)));
    }

    #[test]
    fn quantisation_clips_and_fedavg_divides() {
        let enc = Encoding::new(100).unwrap();
        let q = enc.quantise(&[1.5, -1.5, 1e9, -1e9, f32::NAN]);
        assert_eq!(q[..2], [98_304, -98_304]);
        assert_eq!(q[2] as i64, enc.clip());
        assert_eq!(q[3] as i64, -enc.clip());
        assert_eq!(q[4], 0);
        assert_eq!(enc.average(&[98_304 * 4], 4), [1.5]);
        assert!(Encoding::new(0).is_err() && Encoding::new(MAX_PARTICIPANTS + 1).is_err());
    }

    #[test]
    fn malformed_oversized_and_tampered_updates_are_refused() {
        let owner = OwnerKey::generate();
        let enc = Encoding::new(2).unwrap();
        let pk = owner.public_key();
        let u = pk.encrypt(&enc.quantise(&[0.5; 10])).unwrap();
        let wire = u.to_bytes();
        assert!(matches!(Update::from_bytes(&wire, 11), Err(EdilError::Length { got: 10, want: 11 })));
        assert!(matches!(Update::from_bytes(&wire[..wire.len() / 2], 10), Err(EdilError::Malformed(..))));
        assert!(matches!(Update::from_bytes(b"nonsense", 10), Err(EdilError::Header(_))));
        let mut v2 = wire.clone();
        v2[3] = 2;
        assert_eq!(Update::from_bytes(&v2, 10).err(), Some(EdilError::Version(2)));
        // A wrong count in the header of a valid list: refused, no panic.
        let mut lie = wire.clone();
        lie[5..9].copy_from_slice(&11u32.to_le_bytes());
        assert!(Update::from_bytes(&lie, 11).is_err());
        assert!(matches!(pk.encrypt(&vec![0; MAX_VALUES + 1]), Err(EdilError::TooLarge(_))));
        // Headroom: no third update into an aggregate for two.
        let mut agg = Aggregate::new(10, enc).unwrap();
        agg.add(&u).unwrap();
        agg.add(&u).unwrap();
        assert_eq!(agg.add(&u), Err(EdilError::Full(2)));
        // Signed by its participant; any change to the bytes, the model or
        // the round breaks the signature.
        let key = Keypair::generate_ed25519();
        let s = SignedUpdate::sign(&key, "m", 3, &u);
        assert_eq!(s.verify().unwrap(), key.public().to_peer_id());
        for tamper in [
            |s: &mut SignedUpdate| s.update[20] ^= 1,
            |s: &mut SignedUpdate| s.round = 4,
            |s: &mut SignedUpdate| s.model = "n".into(),
            |s: &mut SignedUpdate| s.participant = Keypair::generate_ed25519().public().to_peer_id().to_string(),
        ] {
            let mut t = s.clone();
            tamper(&mut t);
            assert_eq!(t.verify(), Err(EdilError::BadSignature));
        }
    }
}
