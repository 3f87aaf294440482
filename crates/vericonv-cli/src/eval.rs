//! Evaluation of a model on a data set: float, quantized-plaintext and private accuracy side by
//! side, their agreement, where the client's time goes, and how verification fared.

use std::time::{Duration, Instant};

use serde::Serialize;

use anyhow::Result;
use vericonv::Error;
use vericonv::KeyRng;
use vericonv::{Clouds, CpuBackend};
use vericonv_model::Dataset;
use vericonv_model::ModelError;
use vericonv_model::argmax;
use vericonv_model::{ForwardTimes, PlainExecutor, QuantModel};
use vericonv_model::{PrivateConfig, PrivateExecutor, Workspace};

/// Per-layer outcome of the private run.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    /// Layer name.
    pub name: String,
    /// Ran on the cloud (else computed by the client).
    pub outsourced: bool,
    /// Batches sent.
    pub calls: u64,
    /// Batches verified.
    pub verified: u64,
    /// Batches rejected.
    pub rejected: u64,
    /// Client time on keys, encryption and decryption, in seconds.
    pub masking_s: f64,
    /// Client time on verification, in seconds.
    pub verify_s: f64,
    /// Cloud time, in seconds.
    pub cloud_s: f64,
    /// Client time computing the layer itself (layers not outsourced), in seconds.
    pub client_compute_s: f64,
    /// Mode `pad`: client time precomputing pads offline, in seconds.
    pub offline_s: f64,
}

/// The result of [`evaluate`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct EvalReport {
    /// Model name.
    pub model: String,
    /// Data set name.
    pub dataset: String,
    /// The privacy mode, with its rank in mode `lowrank`.
    pub privacy: String,
    /// Cloud backend (both clouds in mode `two-server`).
    pub backend: String,
    /// Images evaluated.
    pub images: usize,
    /// Float model accuracy.
    pub float_accuracy: f64,
    /// Quantized plaintext model accuracy.
    pub quantized_accuracy: f64,
    /// Private accuracy over all images (a rejected image counts as wrong).
    pub private_accuracy: f64,
    /// Images that got a verified private prediction.
    pub private_answered: usize,
    /// Images whose private batch was rejected by verification (reported as errors).
    pub private_rejected: usize,
    /// Answered images whose private prediction equals the quantized plaintext one.
    pub prediction_agreement: usize,
    /// Answered images whose private logits are bit-identical to the quantized plaintext ones.
    pub logits_bit_identical: usize,
    /// Corrupted cloud answers (set by the caller when it used a tampering cloud).
    pub corrupted_calls: u64,
    /// Client time: keys, encryption, decryption (seconds).
    pub client_masking_s: f64,
    /// Client time: verification (seconds).
    pub client_verify_s: f64,
    /// Client time: ReLU, pooling and other non-linear layers (seconds).
    pub client_nonlinear_s: f64,
    /// Client time: quantizing and rescaling activations (seconds).
    pub client_quantize_s: f64,
    /// Client time: layers it computes itself (seconds).
    pub client_linear_s: f64,
    /// Cloud time (seconds).
    pub cloud_s: f64,
    /// Mode `pad`: client time precomputing pads offline, not part of the client times above
    /// (seconds).
    pub client_offline_s: f64,
    /// The float plaintext model on this CPU (seconds).
    pub float_plaintext_s: f64,
    /// The quantized plaintext model on this CPU (seconds).
    pub quantized_plaintext_s: f64,
    /// Per-layer details.
    pub layers: Vec<LayerReport>,
    /// Messages of rejected batches.
    pub errors: Vec<String>,
}

impl LayerReport {
    fn of(s: &vericonv_model::LayerStats) -> Self {
        let secs = |d: Duration| d.as_secs_f64();
        Self {
            name: s.name.clone(),
            outsourced: s.outsourced,
            calls: s.calls,
            verified: s.verified,
            rejected: s.rejected,
            masking_s: secs(s.timings.keygen + s.timings.encrypt + s.timings.decrypt),
            verify_s: secs(s.timings.verify),
            cloud_s: secs(s.timings.cloud),
            client_compute_s: secs(s.client_compute),
            offline_s: secs(s.offline),
        }
    }
}

/// An evaluation's counts, batch by batch.
#[derive(Default)]
struct Tally {
    float_ok: usize,
    quant_ok: usize,
    private_ok: usize,
    answered: usize,
    rejected: usize,
    agree: usize,
    bits_equal: usize,
    errors: Vec<String>,
}

impl Tally {
    /// The report of the counted run: its identity and what the tally counted (accuracies over
    /// the data set, answers, agreement, the errors kept); the times are the caller's to fill.
    fn report(self, model: &str, data: &Dataset, opts: &EvalOptions, backend: String) -> EvalReport {
        let n = data.len().max(1) as f64;
        EvalReport {
            model: model.to_string(),
            dataset: data.name().to_string(),
            privacy: opts.private.privacy.label(),
            backend,
            images: data.len(),
            float_accuracy: self.float_ok as f64 / n,
            quantized_accuracy: self.quant_ok as f64 / n,
            private_accuracy: self.private_ok as f64 / n,
            private_answered: self.answered,
            private_rejected: self.rejected,
            prediction_agreement: self.agree,
            logits_bit_identical: self.bits_equal,
            errors: self.errors,
            ..EvalReport::default()
        }
    }

    /// Counts the float and quantized predictions of a batch.
    fn plain(&mut self, labels: &[usize], float_logits: &[f32], quant_logits: &[f32], classes: usize) {
        let correct = |logits: &[f32]| argmax(logits, classes).iter().zip(labels).filter(|(p, l)| p == l).count();
        self.float_ok += correct(float_logits);
        self.quant_ok += correct(quant_logits);
    }

    /// Counts the private run of the batch of images `start..` against the quantized logits:
    /// a verification failure counts its images as rejected and keeps the message.
    ///
    /// # Errors
    /// Any other error of the private run.
    fn private(
        &mut self,
        start: usize,
        labels: &[usize],
        private: vericonv_model::Result<Vec<f32>>,
        quant_logits: &[f32],
        classes: usize,
    ) -> Result<()> {
        match private {
            Ok(logits) => {
                let (pred, quant_pred) = (argmax(&logits, classes), argmax(quant_logits, classes));
                self.answered += labels.len();
                self.private_ok += pred.iter().zip(labels).filter(|(p, l)| p == l).count();
                self.agree += pred.iter().zip(&quant_pred).filter(|(p, q)| p == q).count();
                self.bits_equal += logits
                    .chunks_exact(classes)
                    .zip(quant_logits.chunks_exact(classes))
                    .filter(|(a, b)| a.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits()))
                    .count();
                Ok(())
            }
            Err(ModelError::Scheme(e @ (Error::VerificationFailed { .. } | Error::MalformedAnswer { .. }))) => {
                self.rejected += labels.len();
                self.errors.push(format!("images {start}..{}: {e}", start + labels.len()));
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Settings of [`evaluate`].
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Images per batch (each private layer call carries one batch).
    pub batch: usize,
    /// The private protocol's settings.
    pub private: PrivateConfig,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { batch: 16, private: PrivateConfig::default() }
    }
}

/// Evaluates `qm` on `data` in batches: the float model, the quantized model on the client,
/// and the private protocol on `clouds`. `progress(done)` is called after each batch. In mode
/// `pad`, each batch's pads are precomputed on the client's CPU just before it runs, and that
/// time is reported apart as offline time.
///
/// # Errors
/// [`vericonv::Error::LengthMismatch`] when the data does not fit the model, and any non-verification
/// error of the private run. Verification failures do not stop the run: the batch's images are
/// counted as rejected and the message is kept.
pub fn evaluate(
    qm: &QuantModel,
    data: &Dataset,
    clouds: Clouds<'_>,
    opts: &EvalOptions,
    rng: KeyRng,
    mut progress: impl FnMut(usize),
) -> Result<EvalReport> {
    let model = qm.model();
    if (data.channels(), data.height(), data.width())
        != (model.input().channels, model.input().height, model.input().width)
    {
        return Err((Error::LengthMismatch {
            what: "data set images (model expects another C×H×W)",
            expected: model.image_len(),
            got: data.image_len(),
        })
        .into());
    }
    let classes = model.num_classes();
    let mut exec = PrivateExecutor::new(qm, clouds, &opts.private, rng)?;
    let own_cpu = CpuBackend::new();
    let mut tally = Tally::default();
    let (mut float_time, mut quant_time) = (Duration::ZERO, Duration::ZERO);
    let mut private_times = ForwardTimes::default();
    let batch = opts.batch.max(1);
    // Buffers reused across batches: one set per model pass.
    let (mut ws_float, mut ws_quant, mut ws_private) = (Workspace::new(), Workspace::new(), Workspace::new());
    for start in (0..data.len()).step_by(batch) {
        let (images, labels) = data.slice(start..start + batch);
        let t = Instant::now();
        let float_logits = model.forward_float_with(images, &mut ws_float)?;
        float_time += t.elapsed();
        let t = Instant::now();
        let (quant_logits, _) = qm.forward_with(images, &mut PlainExecutor, &mut ws_quant)?;
        quant_time += t.elapsed();
        tally.plain(labels, &float_logits, &quant_logits, classes);
        exec.prepare_pads(labels.len(), &own_cpu)?;
        let private = qm.forward_with(images, &mut exec, &mut ws_private).map(|(logits, times)| {
            private_times += times;
            logits
        });
        tally.private(start, labels, private, &quant_logits, classes)?;
        progress(start + labels.len());
    }
    let secs = |d: Duration| d.as_secs_f64();
    let layers: Vec<LayerReport> = exec.stats().map(LayerReport::of).collect();
    Ok(EvalReport {
        client_masking_s: layers.iter().map(|l| l.masking_s).sum(),
        client_verify_s: layers.iter().map(|l| l.verify_s).sum(),
        client_nonlinear_s: secs(private_times.nonlinear),
        client_quantize_s: secs(private_times.quantize),
        client_linear_s: layers.iter().map(|l| l.client_compute_s).sum(),
        cloud_s: layers.iter().map(|l| l.cloud_s).sum(),
        client_offline_s: layers.iter().map(|l| l.offline_s).sum(),
        float_plaintext_s: secs(float_time),
        quantized_plaintext_s: secs(quant_time),
        layers,
        ..tally.report(model.name(), data, opts, clouds.name())
    })
}

/// [`evaluate`] for a model on tract ([`vericonv_model::TractModel`]), whose graph the native
/// importer refuses: the float plan, the quantized plan ([`vericonv_model::Reference`])
/// and the private one on `clouds`, batch by batch. `normalize` turns each image (pixels in
/// [0, 1]) into the model's input. The client's time is reported as masking, verification and
/// cloud per layer; tract's float nodes are not timed apart (`client_nonlinear_s` holds the rest
/// of the private pass).
///
/// # Errors
/// As [`evaluate`].
#[cfg(feature = "tract")]
pub fn evaluate_tract(
    model: &vericonv_model::TractModel,
    data: &Dataset,
    clouds: vericonv_model::OwnedClouds,
    opts: &EvalOptions,
    rng: KeyRng,
    normalize: impl Fn(&[f32]) -> Vec<f32>,
    mut progress: impl FnMut(usize),
) -> Result<EvalReport> {
    use std::sync::Arc;
    use vericonv_model::{ConvExecutor, PrivateConvs, Reference};
    let image_len: usize = model.image_shape().iter().product();
    if data.image_len() != image_len {
        return Err((Error::LengthMismatch {
            what: "data set images (model expects another shape)",
            expected: image_len,
            got: data.image_len(),
        })
        .into());
    }
    let backend = match &clouds {
        (a, Some(b)) => format!("A: {}; B: {}", a.name(), b.name()),
        (a, None) => a.name(),
    };
    let exec = Arc::new(PrivateConvs::new(clouds, opts.private.clone(), rng)?);
    let float_plan = model.plan(None)?;
    let quant_plan = model.plan(Some(Arc::new(Reference)))?;
    let private_plan = model.plan(Some(exec.clone() as Arc<dyn ConvExecutor>))?;
    let mut tally = Tally::default();
    let (mut float_time, mut quant_time, mut private_time) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for start in (0..data.len()).step_by(opts.batch.max(1)) {
        let (images, labels) = data.slice(start..start + opts.batch.max(1));
        let x = normalize(images);
        let t = Instant::now();
        let (float_logits, shape) = float_plan.run(&x)?;
        float_time += t.elapsed();
        let classes = shape.iter().skip(1).product::<usize>().max(1);
        let t = Instant::now();
        let (quant_logits, _) = quant_plan.run(&x)?;
        quant_time += t.elapsed();
        tally.plain(labels, &float_logits, &quant_logits, classes);
        let t = Instant::now();
        let private = private_plan.run(&x).map(|(logits, _)| logits);
        private_time += t.elapsed();
        tally.private(start, labels, private, &quant_logits, classes)?;
        progress(start + labels.len());
    }
    let secs = |d: Duration| d.as_secs_f64();
    let layers: Vec<LayerReport> = exec.stats().iter().map(LayerReport::of).collect();
    let sum = |f: fn(&LayerReport) -> f64| layers.iter().map(f).sum::<f64>();
    let (masking, verify, cloud, offline) =
        (sum(|l| l.masking_s), sum(|l| l.verify_s), sum(|l| l.cloud_s), sum(|l| l.offline_s));
    Ok(EvalReport {
        client_masking_s: masking,
        client_verify_s: verify,
        client_nonlinear_s: (secs(private_time) - masking - verify - cloud - offline).max(0.0),
        client_quantize_s: 0.0,
        client_linear_s: 0.0,
        cloud_s: cloud,
        client_offline_s: offline,
        float_plaintext_s: secs(float_time),
        quantized_plaintext_s: secs(quant_time),
        layers,
        ..tally.report(model.name(), data, opts, backend)
    })
}
