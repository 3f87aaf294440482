//! The typed errors of vericonv. Nothing a user or the cloud controls makes the library panic:
//! every failure surfaces as one of these variants.

use std::sync::Arc;

use thiserror::Error;

/// Everything that can go wrong, from a bad shape to a cloud answer that fails verification.
#[derive(Debug, Error, Clone)]
#[non_exhaustive]
pub enum Error {
    /// A geometry field that must be positive is zero.
    #[error("invalid convolution geometry: `{field}` must be at least 1")]
    ZeroDimension {
        /// The offending field.
        field: &'static str,
    },
    /// `groups` must divide both channel counts.
    #[error(
        "invalid convolution geometry: groups = {groups} must divide in_channels = {cin} and out_channels = {cout}"
    )]
    GroupsMismatch {
        /// Number of groups.
        groups: usize,
        /// Input channels.
        cin: usize,
        /// Output channels.
        cout: usize,
    },
    /// The dilated kernel does not fit in the padded input, so the output would be empty.
    #[error(
        "invalid convolution geometry: the dilated kernel ({extent}) is larger than the padded input ({padded}) along the {axis} axis"
    )]
    KernelLargerThanInput {
        /// `"height"` or `"width"`.
        axis: &'static str,
        /// Dilated kernel extent, `d·(k-1)+1`.
        extent: usize,
        /// Padded input extent.
        padded: usize,
    },
    /// A geometry value is so large that index arithmetic would overflow.
    #[error("invalid convolution geometry: {what} is too large ({value})")]
    TooLarge {
        /// What overflowed.
        what: &'static str,
        /// The offending value.
        value: usize,
    },
    /// A buffer does not have the length its shape demands.
    #[error("{what} has {got} elements, expected {expected}")]
    LengthMismatch {
        /// Which tensor.
        what: &'static str,
        /// Length the geometry requires.
        expected: usize,
        /// Length supplied.
        got: usize,
    },
    /// A tensor entry is not a canonical field element (it is >= p).
    #[error("{what}[{index}] = {value} is not a field element (must be < p = {p})")]
    NotAFieldElement {
        /// Which tensor.
        what: &'static str,
        /// Flat index of the entry.
        index: usize,
        /// The entry.
        value: u32,
        /// The modulus.
        p: u32,
    },
    /// An integer input or weight exceeds the bound the layer was built for.
    #[error("layer `{layer}`: {what}[{index}] = {value} exceeds the declared bound |v| <= {bound}")]
    ValueOutOfRange {
        /// Layer name.
        layer: String,
        /// Which tensor.
        what: &'static str,
        /// Flat index of the entry.
        index: usize,
        /// The entry.
        value: i64,
        /// The bound.
        bound: u64,
    },
    /// `M·Bx·Bw + Bb > (p-1)/2`: the layer's integer result would wrap around the field.
    #[error(
        "layer `{layer}` violates the exactness bound: M·Bx·Bw + Bb = {m}·{bx}·{bw} + {bb} = {total} > (p-1)/2 = {limit}"
    )]
    ExactnessBound {
        /// Layer name.
        layer: String,
        /// Terms per output, `(Cin/G)·kh·kw`.
        m: u64,
        /// Input bound.
        bx: u64,
        /// Weight bound.
        bw: u64,
        /// Bias bound.
        bb: u64,
        /// `M·Bx·Bw + Bb` (saturating).
        total: u64,
        /// `(p-1)/2`.
        limit: u64,
    },
    /// The mask rank must be at least 1.
    #[error("mask rank ρ must be at least 1")]
    InvalidRank,
    /// Verification needs at least one round.
    #[error("verification needs at least one round")]
    InvalidRounds,
    /// The cloud's answer failed verification; it was not decrypted.
    #[error("layer `{layer}`: {cheater} failed {mode} verification in round {round}; the answer was discarded")]
    VerificationFailed {
        /// Layer name.
        layer: String,
        /// `"fast"` or `"strict"`.
        mode: &'static str,
        /// The failing round, from 1.
        round: usize,
        /// Which cloud's answer was wrong (in mode `two-server`, from a re-check of each share).
        cheater: Cheater,
    },
    /// Over a run of many calls, clouds returned answers that failed verification on their own
    /// (not injected by the client's own `--tamper-rate`): every one was discarded.
    #[error(
        "a cloud cheated and was caught: {rejected} answer(s) failed verification and were discarded, none decrypted; {images} image(s) got no prediction"
    )]
    CheatingCloud {
        /// Answers rejected beyond those the client corrupted on purpose.
        rejected: u64,
        /// Images reported as errors.
        images: usize,
    },
    /// The privacy mode needs another number of clouds than it was given.
    #[error("privacy mode `{mode}` needs {needed} cloud(s), got {got}")]
    CloudCount {
        /// The mode's name.
        mode: &'static str,
        /// Clouds the mode needs.
        needed: usize,
        /// Clouds supplied.
        got: usize,
    },
    /// Mode `two-server` was given the same cloud twice: one party would see both shares.
    #[error("privacy mode `two-server` needs two different clouds; both shares would go to {0}")]
    SameCloudTwice(String),
    /// A pad (mode `pad`) is bound to another layer or session key.
    #[error("layer `{layer}`: pad rejected: {reason}")]
    PadMismatch {
        /// Layer name.
        layer: String,
        /// What differs.
        reason: String,
    },
    /// Mode `pad` ran out of precomputed pads.
    #[error("layer `{layer}`: the pad pool holds {available} pad(s), the call needs {needed}; precompute more offline")]
    PadPoolExhausted {
        /// Layer name.
        layer: String,
        /// Pads the call needs (one per image).
        needed: usize,
        /// Pads left.
        available: usize,
    },
    /// An operation that exists only in another privacy mode.
    #[error("layer `{layer}`: {what} needs privacy mode `{needed}`, the layer runs in `{actual}`")]
    WrongPrivacyMode {
        /// Layer name.
        layer: String,
        /// The operation.
        what: &'static str,
        /// The mode it needs.
        needed: &'static str,
        /// The layer's mode.
        actual: &'static str,
    },
    /// The cloud's answer is malformed (wrong length, or entries that are not field elements);
    /// it was discarded.
    #[error("layer `{layer}`: the cloud's answer is malformed: {reason}; it was discarded")]
    MalformedAnswer {
        /// Layer name.
        layer: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A cloud backend's own failure (a GPU's, a remote cloud's transport or status), opaque
    /// here: the backend crate's error type is the source, which [`Error::backend_error`]
    /// recovers (`vericonv_gpu::GpuError`, `vericonv_remote::RemoteError`).
    #[error("{source}")]
    Backend {
        /// Whether the work did not fit the backend's limits (a device's memory or dispatch
        /// size, a server's message and tensor limits): it may fit smaller, or elsewhere.
        exhausted: bool,
        /// The backend's error.
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A bug in vericonv or in a library it runs (a self-check that failed, a thread pool that
    /// could not start, a serializer that refused our own data): please report it.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An [`Error::Backend`] from a backend's own error; `exhausted` as that variant says.
    pub fn backend(source: impl std::error::Error + Send + Sync + 'static, exhausted: bool) -> Self {
        Error::Backend { exhausted, source: Arc::new(source) }
    }

    /// The backend's own error of an [`Error::Backend`], as its type `E`.
    pub fn backend_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Error::Backend { source, .. } => source.downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// The result type of vericonv.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which cloud returned a wrong answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cheater {
    /// The one cloud of modes `lowrank` and `pad`.
    TheCloud,
    /// Cloud A of mode `two-server` (cloud B's share checked out).
    CloudA,
    /// Cloud B of mode `two-server` (cloud A's share checked out).
    CloudB,
    /// Both clouds of mode `two-server`.
    BothClouds,
    /// The sum of the two shares failed, but each share passed its own re-check (probability at
    /// most 4/p per round in Fast mode).
    Unidentified,
}

impl std::fmt::Display for Cheater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cheater::TheCloud => "the cloud's answer",
            Cheater::CloudA => "cloud A's answer",
            Cheater::CloudB => "cloud B's answer",
            Cheater::BothClouds => "both clouds' answers",
            Cheater::Unidentified => "the sum of the clouds' answers (each share passed a re-check)",
        })
    }
}
