//! What crosses the wire, and its checks: geometries, field-element tensors and kernel
//! handles. Every decoder here takes bytes the other side controls and returns a typed error,
//! never a panic, for anything malformed.

use vericonv::P;
use vericonv::{Conv2d, Padding};

use crate::{RemoteError, proto};

/// The result of a decoder.
type Result<T> = std::result::Result<T, RemoteError>;

/// A registered kernel: the BLAKE3 hash of its geometry and `K'`. Every replica computes the
/// same handle for the same kernel, so replicas are interchangeable, and a client can check
/// the handle a server returns.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelHandle([u8; 32]);

impl KernelHandle {
    /// The handle of `kernel` (`K'`) for `geom`.
    pub fn of(geom: &Conv2d, kernel: &[u32]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"vericonv kernel handle v1");
        // prost encodes a message deterministically: fields in tag order, defaults omitted.
        h.update(&prost::Message::encode_to_vec(&geometry_to_proto(geom)));
        for chunk in kernel.chunks(4096) {
            h.update(&encode_elements(chunk));
        }
        Self(*h.finalize().as_bytes())
    }

    /// A handle received from the network.
    ///
    /// # Errors
    /// [`RemoteError::Wire`] unless `bytes` is 32 bytes long.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| RemoteError::wire("kernel handle", format!("{} bytes, 32 expected", bytes.len())))?;
        Ok(Self(arr))
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for KernelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // K' is masked, and its hash reveals nothing more; eight hex digits identify it in logs.
        write!(f, "KernelHandle({:02x}{:02x}{:02x}{:02x}…)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

/// The wire form of a geometry.
pub fn geometry_to_proto(g: &Conv2d) -> proto::Geometry {
    let (p, u) = (g.padding(), |v: usize| v as u64);
    proto::Geometry {
        in_channels: u(g.cin()),
        out_channels: u(g.cout()),
        height: u(g.h()),
        width: u(g.w()),
        kernel_h: u(g.kh()),
        kernel_w: u(g.kw()),
        stride_h: u(g.stride().0),
        stride_w: u(g.stride().1),
        pad_top: u(p.top),
        pad_left: u(p.left),
        pad_bottom: u(p.bottom),
        pad_right: u(p.right),
        dilation_h: u(g.dilation().0),
        dilation_w: u(g.dilation().1),
        groups: u(g.groups()),
    }
}

/// A geometry received from the network, validated as [`Conv2d::builder`] validates any.
///
/// # Errors
/// [`RemoteError::Wire`] for a value that does not fit this machine's `usize`, or that
/// [`Conv2d`]'s builder refuses (the message is the builder's).
pub fn geometry_from_proto(p: &proto::Geometry) -> Result<Conv2d> {
    let u = |value: u64, what: &'static str| {
        usize::try_from(value)
            .map_err(|_| RemoteError::wire("geometry", format!("{what} = {value} does not fit this machine")))
    };
    Conv2d::builder(
        u(p.in_channels, "in_channels")?,
        u(p.out_channels, "out_channels")?,
        (u(p.height, "height")?, u(p.width, "width")?),
        (u(p.kernel_h, "kernel_h")?, u(p.kernel_w, "kernel_w")?),
    )
    .stride(u(p.stride_h, "stride_h")?, u(p.stride_w, "stride_w")?)
    .padding(Padding::new(
        u(p.pad_top, "pad_top")?,
        u(p.pad_left, "pad_left")?,
        u(p.pad_bottom, "pad_bottom")?,
        u(p.pad_right, "pad_right")?,
    ))
    .dilation(u(p.dilation_h, "dilation_h")?, u(p.dilation_w, "dilation_w")?)
    .groups(u(p.groups, "groups")?)
    .build()
    .map_err(|e| RemoteError::wire("geometry", e))
}

/// Field elements as little-endian bytes.
pub fn encode_elements(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `expected` field elements from little-endian bytes.
///
/// # Errors
/// [`RemoteError::Wire`] when `bytes` is not a whole number of 4-byte elements, does not hold
/// exactly `expected` elements (the length is checked before anything is allocated), or holds a
/// value `>= p`, or when the memory cannot be had.
pub fn decode_elements(bytes: &[u8], expected: usize, what: &'static str) -> Result<Vec<u32>> {
    if !bytes.len().is_multiple_of(4) {
        return Err(RemoteError::wire(
            what,
            format!(
                "{} bytes are not a whole number of 4-byte field elements ({expected} elements expected)",
                bytes.len()
            ),
        ));
    }
    if expected.checked_mul(4) != Some(bytes.len()) {
        return Err(RemoteError::wire(what, format!("{} elements, expected {expected}", bytes.len() / 4)));
    }
    let mut v: Vec<u32> = Vec::new();
    v.try_reserve_exact(expected)
        .map_err(|_| RemoteError::wire(what, format!("{expected} elements do not fit in memory now")))?;
    v.extend(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
    if let Some(index) = v.iter().position(|&x| x >= P) {
        return Err(RemoteError::wire(what, format!("entry {index} = {} is not a field element (p = {P})", v[index])));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometries_round_trip_and_handles_depend_on_every_field() {
        let g = Conv2d::builder(4, 6, (9, 7), (3, 2))
            .stride(2, 1)
            .padding(Padding::new(1, 0, 2, 1))
            .dilation(1, 2)
            .groups(2)
            .build()
            .expect("geometry");
        assert_eq!(geometry_from_proto(&geometry_to_proto(&g)).expect("decodes"), g);
        let k = vec![5u32; g.kernel_len()];
        let h = KernelHandle::of(&g, &k);
        assert_eq!(KernelHandle::from_bytes(h.as_bytes()).expect("32 bytes"), h);
        let other = Conv2d::builder(4, 6, (9, 7), (3, 2)).stride(2, 1).groups(2).build().expect("geometry");
        assert_ne!(KernelHandle::of(&other, &vec![5u32; other.kernel_len()]), h, "padding is part of the handle");
        let mut k2 = k.clone();
        k2[7] = 6;
        assert_ne!(KernelHandle::of(&g, &k2), h, "every weight is part of the handle");
        assert!(KernelHandle::from_bytes(&[0; 31]).is_err());
    }

    #[test]
    fn tensors_are_checked_for_length_and_canonical_elements() {
        let v = vec![0, 1, P - 1];
        assert_eq!(decode_elements(&encode_elements(&v), 3, "t").expect("decodes"), v);
        let refused = |bytes: &[u8], expected: usize, says: &str| {
            let err = decode_elements(bytes, expected, "t").expect_err(says);
            assert!(matches!(&err, RemoteError::Wire { .. }), "{err}");
            assert!(err.to_string().contains(says), "the message says what is wrong: {err}");
        };
        refused(&encode_elements(&v), 4, "3 elements, expected 4");
        refused(&[0; 5], 1, "5 bytes");
        refused(&encode_elements(&[P]), 1, "not a field element");
        refused(&[], usize::MAX, "0 elements");
    }
}
