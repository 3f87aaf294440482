//! A deliberately dishonest cloud, for tests and for `--tamper-rate` demonstrations: it wraps an
//! honest backend and corrupts a chosen fraction of its answers.

use std::sync::Mutex;

use rand::RngExt;

use super::{CloudBackend, ConvCall, share_len};
use crate::Result;
use crate::field::{M31, PrimeField};
use crate::keys::{KeyRng, seeded_rng};

/// How the cloud cheats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tamper {
    /// Add 1 to one random entry.
    AddOne,
    /// Add 2^30 to one random entry.
    AddHalf,
    /// Add a random non-zero value to one random entry.
    Noise,
    /// Zero one output channel of one image.
    ZeroChannel,
    /// Swap two output channels of one image.
    SwapChannels,
    /// Return the honest result for a different (random) input.
    OtherInput,
    /// Return the honest result for a different (random) kernel.
    OtherKernel,
    /// Return all zeros.
    AllZeros,
}

impl Tamper {
    /// Every strategy.
    pub const ALL: [Tamper; 8] = [
        Tamper::AddOne,
        Tamper::AddHalf,
        Tamper::Noise,
        Tamper::ZeroChannel,
        Tamper::SwapChannels,
        Tamper::OtherInput,
        Tamper::OtherKernel,
        Tamper::AllZeros,
    ];
}

/// Wraps an honest backend and corrupts each call with probability `rate`, with strategies
/// drawn in turn from `strategies`.
pub struct TamperingBackend<B> {
    inner: B,
    strategies: Vec<Tamper>,
    rate: f64,
    state: Mutex<(KeyRng, usize, u64)>,
}

impl<B: CloudBackend> TamperingBackend<B> {
    /// A cheating cloud over `inner`; `seed` makes its choices reproducible.
    pub fn new(inner: B, strategies: &[Tamper], rate: f64, seed: u64) -> Self {
        Self { inner, strategies: strategies.to_vec(), rate, state: Mutex::new((seeded_rng(seed), 0, 0)) }
    }

    /// How many answers were corrupted so far (answers the strategy left unchanged do not
    /// count).
    pub fn corrupted(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.2)
    }
}

impl<B: CloudBackend> CloudBackend for TamperingBackend<B> {
    fn name(&self) -> String {
        if self.rate > 0.0 {
            format!("{} (corrupting {}% of answers)", self.inner.name(), self.rate * 100.0)
        } else {
            self.inner.name()
        }
    }

    // Every form is forwarded as it came: a remote cloud A keeps receiving its 32-byte seed,
    // a GPU keeps the session's kernel on the device.
    fn call(&self, call: ConvCall<'_>, out: &mut Vec<u32>) -> Result<()> {
        let mut guard = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (rng, next, count) = &mut *guard;
        if self.strategies.is_empty() || !rng.random_bool(self.rate.clamp(0.0, 1.0)) {
            drop(guard);
            return self.inner.call(call, out);
        }
        let strategy = self.strategies[*next % self.strategies.len()];
        *next += 1;
        self.inner.call(call, out)?;
        let corrupt = self.corrupt(strategy, call, rng, out)?;
        // Only a real change counts as a corruption: zeroing a plane that is already zero, or
        // another input that happens to give the same answer, is an honest answer.
        if corrupt != *out {
            *count += 1;
        }
        *out = corrupt;
        Ok(())
    }
}

impl<B: CloudBackend> TamperingBackend<B> {
    /// The answer `strategy` makes of the honest answer `honest` to `call`.
    fn corrupt(&self, strategy: Tamper, call: ConvCall<'_>, rng: &mut KeyRng, honest: &[u32]) -> Result<Vec<u32>> {
        let (geom, batch, kernel) = (call.geometry(), call.batch, call.kernel_data());
        let random_tensor = |rng: &mut KeyRng, len: usize| -> Vec<u32> { (0..len).map(|_| M31::random(rng)).collect() };
        let mut y = match strategy {
            Tamper::OtherInput => {
                let len = share_len(geom, batch)?;
                self.inner.conv(geom, batch, kernel, &random_tensor(rng, len))?
            }
            Tamper::OtherKernel => {
                let input = call.input_tensor()?;
                self.inner.conv(geom, batch, &random_tensor(rng, kernel.len()), &input)?
            }
            Tamper::AllZeros => vec![0; honest.len()],
            _ => honest.to_vec(),
        };
        let n = geom.n();
        let planes = y.len() / n;
        match strategy {
            Tamper::AddOne | Tamper::AddHalf | Tamper::Noise => {
                let delta = match strategy {
                    Tamper::AddOne => 1,
                    Tamper::AddHalf => 1 << 30,
                    _ => M31::random_nonzero(rng),
                };
                let i = rng.random_range(0..y.len());
                y[i] = M31::add(y[i], delta);
            }
            Tamper::ZeroChannel => {
                let p = rng.random_range(0..planes);
                y[p * n..(p + 1) * n].fill(0);
            }
            Tamper::SwapChannels if geom.cout() > 1 => {
                let b = rng.random_range(0..batch);
                let o1 = rng.random_range(0..geom.cout());
                let o2 = (o1 + rng.random_range(1..geom.cout())) % geom.cout();
                for k in 0..n {
                    y.swap((b * geom.cout() + o1) * n + k, (b * geom.cout() + o2) * n + k);
                }
            }
            Tamper::SwapChannels => {
                // One output channel: swapping is impossible, so negate the plane instead.
                y.iter_mut().take(n).for_each(|v| *v = M31::neg(*v));
            }
            Tamper::OtherInput | Tamper::OtherKernel | Tamper::AllZeros => {}
        }
        Ok(y)
    }
}
