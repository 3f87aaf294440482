//! The WGSL programs: arithmetic preludes (`u64`, `u32`, `f32`) joined to the kernel bodies of
//! `shaders/`, and the choices between them.

pub(crate) const FIELD_U64: &str = include_str!("../shaders/field_u64.wgsl");
pub(crate) const FIELD_U32: &str = include_str!("../shaders/field_u32.wgsl");
pub(crate) const PLAIN_F32: &str = include_str!("../shaders/plain_f32.wgsl");
pub(crate) const PARAMS: &str = include_str!("../shaders/params.wgsl");
pub(crate) const CONV_BODY: &str = include_str!("../shaders/conv.wgsl");
pub(crate) const TILED_BODY: &str = include_str!("../shaders/conv_tiled.wgsl");
pub(crate) const STRICT_BODY: &str = include_str!("../shaders/verify_strict.wgsl");

/// Invocations per workgroup along x in the simple kernels.
pub(crate) const WORKGROUP_X: usize = 64;
/// Output channels × output pixels per workgroup of the tiled kernel (`conv_tiled.wgsl`).
pub(crate) const TILE: usize = 32;

/// How the F_p shaders multiply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShaderVariant {
    /// Native `u64` products and accumulation; needs `Features::SHADER_INT64`.
    U64,
    /// 32-bit only, with 16-bit limbs; runs on any adapter.
    U32,
}

/// Which convolution kernel runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConvKernel {
    /// One invocation per output element (`conv.wgsl`): the test oracle, and the kernel for
    /// grouped and depthwise convolutions.
    Simple,
    /// The tiled implicit-im2col GEMM (`conv_tiled.wgsl`): 32×32 output tiles staged through
    /// workgroup memory, 4×4 register blocks, vec4 kernel loads. Used for ungrouped layers.
    #[default]
    Tiled,
}

/// The element arithmetic of a convolution kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arithmetic {
    /// Exact F_p, with the given shader variant.
    Field(ShaderVariant),
    /// Plaintext f32: the cloud-side baseline.
    F32,
}

/// A complete WGSL program: an arithmetic prelude followed by a kernel body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShaderProgram {
    /// An implicit-im2col GEMM convolution.
    Conv(Arithmetic, ConvKernel),
    /// The batched Strict-mode verification matrix-vector products.
    Strict(ShaderVariant),
}

impl ShaderProgram {
    /// Every program the backend may compile.
    pub const ALL: [ShaderProgram; 8] = [
        ShaderProgram::Conv(Arithmetic::Field(ShaderVariant::U64), ConvKernel::Simple),
        ShaderProgram::Conv(Arithmetic::Field(ShaderVariant::U32), ConvKernel::Simple),
        ShaderProgram::Conv(Arithmetic::F32, ConvKernel::Simple),
        ShaderProgram::Conv(Arithmetic::Field(ShaderVariant::U64), ConvKernel::Tiled),
        ShaderProgram::Conv(Arithmetic::Field(ShaderVariant::U32), ConvKernel::Tiled),
        ShaderProgram::Conv(Arithmetic::F32, ConvKernel::Tiled),
        ShaderProgram::Strict(ShaderVariant::U64),
        ShaderProgram::Strict(ShaderVariant::U32),
    ];

    /// The WGSL source, exactly as it is handed to wgpu.
    pub fn source(self) -> String {
        let prelude = |a| match a {
            Arithmetic::Field(ShaderVariant::U64) => FIELD_U64,
            Arithmetic::Field(ShaderVariant::U32) => FIELD_U32,
            Arithmetic::F32 => PLAIN_F32,
        };
        let (arith, body) = match self {
            ShaderProgram::Conv(a, ConvKernel::Simple) => (a, CONV_BODY),
            ShaderProgram::Conv(a, ConvKernel::Tiled) => (a, TILED_BODY),
            ShaderProgram::Strict(v) => (Arithmetic::Field(v), STRICT_BODY),
        };
        format!("{}\n{PARAMS}\n{body}", prelude(arith))
    }

    /// The compute entry points of the program.
    pub fn entry_points(self) -> &'static [&'static str] {
        match self {
            ShaderProgram::Conv(_, ConvKernel::Simple) => &["conv_main"],
            ShaderProgram::Conv(_, ConvKernel::Tiled) => &["conv_tiled"],
            ShaderProgram::Strict(_) => &["ydot", "im2col_r", "kt"],
        }
    }

    /// Whether the program needs `Features::SHADER_INT64`.
    pub fn needs_int64(self) -> bool {
        matches!(
            self,
            ShaderProgram::Conv(Arithmetic::Field(ShaderVariant::U64), _) | ShaderProgram::Strict(ShaderVariant::U64)
        )
    }
}
