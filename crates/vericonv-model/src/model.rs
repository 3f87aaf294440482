//! The methods of [`Model`]: its accessors, the file formats it opens and saves, and its float
//! forward pass.

use std::collections::HashMap;
use std::path::Path;

use crate::Result;
use crate::exec::Workspace;
use crate::graph::{InputSpec, Model, Node, Op, output_len};

impl Model {
    /// Model name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Input shape and normalisation.
    pub fn input(&self) -> &InputSpec {
        &self.input
    }

    /// The same model under another name.
    pub fn renamed(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// The same model with its layers named by kind and position, `conv1`, `relu1`, `fc1`…
    /// (exporters name them after tensors, e.g. `/features/features.0/Conv_output_0`).
    pub fn with_plain_layer_names(mut self) -> Self {
        let mut counts: HashMap<&'static str, usize> = HashMap::new();
        for node in &mut self.nodes {
            let kind = match node.op {
                Op::Conv { .. } => "conv",
                Op::Linear { .. } => "fc",
                _ => node.op.kind(),
            };
            let n = counts.entry(kind).or_default();
            *n += 1;
            node.name = format!("{kind}{n}");
        }
        self
    }

    /// The same model with the input normalisation `(x - mean[c]) / std[c]` (one value, or
    /// one per channel): what a PyTorch export does not record.
    ///
    /// # Errors
    /// As [`InputSpec::check`].
    pub fn with_normalization(mut self, mean: Vec<f32>, std: Vec<f32>) -> Result<Self> {
        let input = InputSpec { mean, std, ..self.input.clone() };
        input.check()?;
        self.input = input;
        Ok(self)
    }

    /// The nodes in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Number of output classes (the last node's width).
    pub fn num_classes(&self) -> usize {
        output_len(&self.nodes)
    }

    /// Elements of one input image.
    pub fn image_len(&self) -> usize {
        self.input.image_len()
    }

    /// Opens any model file this crate reads: ONNX (`.onnx`, through the native importer) or
    /// the native format (anything else, see [`Model::load`]). Also returns whether the file
    /// records the input normalisation (a native file always does; an ONNX file when it has the
    /// `vericonv.mean` / `vericonv.std` metadata).
    ///
    /// # Errors
    /// As [`Model::load`] and [`crate::onnx::import::import_model`].
    pub fn open(path: impl AsRef<Path>) -> Result<(Self, bool)> {
        crate::format::open(path.as_ref())
    }

    /// Loads the native format: `path` is the JSON file; the weights are the `.safetensors`
    /// file with the same stem.
    ///
    /// # Errors
    /// [`crate::ModelError::Io`], [`crate::ModelError::Parse`] for a corrupt or inconsistent file (naming the layer),
    /// [`crate::ModelError::Unsupported`], [`crate::ModelError::NonFinite`] for NaN or infinite weights.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        crate::format::load(path.as_ref())
    }

    /// Parses the native format from memory.
    ///
    /// # Errors
    /// As [`Model::load`].
    pub fn from_bytes(json: &[u8], weights: &[u8]) -> Result<Self> {
        crate::format::from_bytes(json, weights)
    }

    /// Writes the native format: `path` (the JSON) and the `.safetensors` beside it, f32.
    /// BatchNorm stays folded into its convolution; `training` records the provenance.
    ///
    /// # Errors
    /// [`crate::ModelError::Io`]; [`crate::ModelError::Internal`] if serialisation fails.
    pub fn save(&self, path: impl AsRef<Path>, training: Option<serde_json::Value>) -> Result<()> {
        crate::format::save(self, path.as_ref(), training)
    }

    /// The float model's logits (`batch × classes`) for `[0, 1]` images.
    ///
    /// # Errors
    /// [`vericonv::Error::LengthMismatch`] when `images` is not a positive multiple of the image size,
    /// [`crate::ModelError::NonFinite`] for NaN or infinite pixels.
    pub fn forward_float(&self, images: &[f32]) -> Result<Vec<f32>> {
        self.forward_float_with(images, &mut Workspace::new())
    }

    /// [`Model::forward_float`] with the caller's buffers, reused across passes.
    ///
    /// # Errors
    /// As [`Model::forward_float`].
    pub fn forward_float_with(&self, images: &[f32], ws: &mut Workspace) -> Result<Vec<f32>> {
        crate::exec::forward_float_with(self, images, ws)
    }
}
