//! One-time pads of mode `pad` (docs/scheme.md §12).
//!
//! Offline, for each future image, the client draws a uniform `R` (`Cin × H × W`) and computes
//! `U = Conv(K, R)` over F_p with the plain kernel, on its own backend (never the cloud). A pad
//! `(R, U)` is bound to one layer and one session key, and is used exactly once: a [`Pad`] cannot
//! be cloned, a [`PadPool`] hands pads out by value, and a pad that was taken is gone, even if the
//! call that took it fails.
//!
//! The offline convolution costs as much as the plaintext layer: this mode buys latency, not
//! total work.

use std::collections::VecDeque;

use zeroize::Zeroize;

use crate::cloud::CloudBackend;
use crate::geometry::Conv2d;
use crate::keys::{KeyRng, SessionKey};
use crate::share::ShareSeed;
use crate::{Error, Result};

/// One image's pad: the mask `R` and its convolution `U = Conv(K, R)`, both in plain channel
/// order. Secret: zeroized on drop, never printed, never cloned.
pub struct Pad {
    r: Vec<u32>,
    u: Vec<u32>,
}

impl Pad {
    /// `R` (`Cin × H × W`).
    pub fn mask(&self) -> &[u32] {
        &self.r
    }

    /// `U = Conv(K, R)` (`Cout × Ho × Wo`).
    pub fn mask_conv(&self) -> &[u32] {
        &self.u
    }
}

impl Drop for Pad {
    fn drop(&mut self) {
        self.r.zeroize();
        self.u.zeroize();
    }
}

impl std::fmt::Debug for Pad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pad(<secret>)")
    }
}

/// The memory of pads already used, kept to be overwritten by the next pads of the same layer
/// ([`crate::client::PrivateConv::refill_pads`]) rather than zeroized and freed while the
/// client is online. A spent pad is never handed out again: only its buffers are reused, once
/// overwritten whole. At most `keep` are kept; what is dropped is zeroized.
#[derive(Default)]
pub(crate) struct SpentPads {
    pads: Vec<Pad>,
    keep: usize,
}

impl SpentPads {
    /// Keeps at most `keep` spent pads from now on.
    pub(crate) fn set_keep(&mut self, keep: usize) {
        self.keep = keep;
        self.pads.truncate(keep);
    }

    /// Keeps the used `pads` for their memory (up to the bound; the rest are zeroized).
    pub(crate) fn put(&mut self, pads: Vec<Pad>) {
        let room = self.keep.saturating_sub(self.pads.len());
        self.pads.extend(pads.into_iter().take(room));
    }

    /// A pad holding copies of `r` and `u`, in a spent pad's buffers when one is large enough.
    fn refill(&mut self, r: &[u32], u: &[u32]) -> Pad {
        match self.pads.pop() {
            Some(mut pad) if pad.r.capacity() >= r.len() && pad.u.capacity() >= u.len() => {
                // Within capacity: no reallocation leaves an old copy behind.
                pad.r.clear();
                pad.r.extend_from_slice(r);
                pad.u.clear();
                pad.u.extend_from_slice(u);
                pad
            }
            _ => Pad { r: r.to_vec(), u: u.to_vec() },
        }
    }
}

/// A queue of pads bound to one layer and one session key.
pub struct PadPool {
    layer: String,
    session: u64,
    pads: VecDeque<Pad>,
}

impl std::fmt::Debug for PadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PadPool").field("layer", &self.layer).field("pads", &self.pads.len()).finish_non_exhaustive()
    }
}

impl PadPool {
    /// Precomputes `count` pads for the layer `layer` under `key`, whose plain kernel is `kernel`
    /// (field elements, `Cout × Cin/G × kh × kw`): `R` from a fresh seed of the client's CSPRNG
    /// expanded by the share generator, `U = Conv(K, R)` on `backend`, which must be the
    /// client's own (a CPU or GPU backend in its process, never the cloud).
    ///
    /// # Errors
    /// [`Error::LengthMismatch`], [`Error::TooLarge`] for a pool that does not fit in memory,
    /// and the backend's errors.
    pub fn generate(
        layer: &str,
        key: &SessionKey,
        kernel: &[u32],
        count: usize,
        backend: &dyn CloudBackend,
        rng: &mut KeyRng,
    ) -> Result<Self> {
        Self::generate_into(layer, key, kernel, count, backend, rng, &mut SpentPads::default())
    }

    /// [`PadPool::generate`] into the memory of spent pads where there are some (each is
    /// overwritten whole by a fresh pad: no page is allocated, faulted in or freed for it).
    pub(crate) fn generate_into(
        layer: &str,
        key: &SessionKey,
        kernel: &[u32],
        count: usize,
        backend: &dyn CloudBackend,
        rng: &mut KeyRng,
        spent: &mut SpentPads,
    ) -> Result<Self> {
        let g = key.geometry();
        let total = count.checked_mul(g.image_len()).ok_or(Error::TooLarge { what: "pad pool", value: count })?;
        let mut r = ShareSeed::generate(rng).expand(total);
        let mut u = if count == 0 { Vec::new() } else { backend.conv(g, count, kernel, &r)? };
        let checked = Conv2d::check_len("offline mask convolution", count * g.output_image_len(), u.len());
        let pads = r
            .chunks_exact(g.image_len())
            .zip(u.chunks_exact(g.output_image_len()))
            .map(|(r, u)| spent.refill(r, u))
            .collect();
        // The batch's tensors are secret too.
        r.zeroize();
        u.zeroize();
        checked?;
        Ok(Self { layer: layer.to_string(), session: key.id(), pads })
    }

    /// The layer the pads were made for.
    pub fn layer(&self) -> &str {
        &self.layer
    }

    /// Pads left.
    pub fn len(&self) -> usize {
        self.pads.len()
    }

    /// True when no pad is left.
    pub fn is_empty(&self) -> bool {
        self.pads.is_empty()
    }

    /// Checks that the pool was made for `layer` under `key`.
    ///
    /// # Errors
    /// [`Error::PadMismatch`] naming what differs.
    pub fn check_binding(&self, layer: &str, key: &SessionKey) -> Result<()> {
        if self.layer != layer {
            return Err(Error::PadMismatch {
                layer: layer.to_string(),
                reason: format!("the pads were made for layer `{}`", self.layer),
            });
        }
        if self.session != key.id() {
            return Err(Error::PadMismatch {
                layer: layer.to_string(),
                reason: "the pads were made under another session key (the key was rotated, or they belong to another client)".into(),
            });
        }
        Ok(())
    }

    /// Moves the pads of `other` (same layer and key) to the back of this pool.
    ///
    /// # Errors
    /// [`Error::PadMismatch`] when `other` is bound to another layer or key; its pads are
    /// dropped.
    pub fn append(&mut self, mut other: PadPool) -> Result<()> {
        if other.layer != self.layer || other.session != self.session {
            return Err(Error::PadMismatch {
                layer: self.layer.clone(),
                reason: format!("cannot merge pads made for layer `{}` under another key", other.layer),
            });
        }
        self.pads.append(&mut other.pads);
        Ok(())
    }

    /// Takes `n` pads out of the pool, by value.
    ///
    /// # Errors
    /// [`Error::PadPoolExhausted`] when fewer than `n` are left (then none is taken).
    pub fn take(&mut self, n: usize) -> Result<Vec<Pad>> {
        if self.pads.len() < n {
            return Err(Error::PadPoolExhausted { layer: self.layer.clone(), needed: n, available: self.pads.len() });
        }
        Ok(self.pads.drain(..n).collect())
    }
}
