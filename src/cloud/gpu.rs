//! The GPU cloud: WGSL compute shaders through wgpu 30.
//!
//! - The device, pipelines and bind-group layouts are built once, in [`GpuBackend::new`], and
//!   reused by every call.
//! - Adapter selection honours `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`.
//! - Limits are read from the adapter, never assumed. Work larger than
//!   `max_storage_buffer_binding_size` or `max_compute_workgroups_per_dimension` is split into
//!   chunks of output channels, output-row bands and images.
//! - Every wgpu call that can fail runs inside error scopes, so failures come back as
//!   [`Error::Gpu`] instead of the default handler's panic.

use std::sync::{Arc, mpsc};

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use super::{CloudBackend, check_conv_args};
use crate::field::{M31, PrimeField};
use crate::geometry::Conv2d;
use crate::verify::{Claim, StrictProducts};
use crate::{Error, Result};

const FIELD_U64: &str = include_str!("../../shaders/field_u64.wgsl");
const FIELD_U32: &str = include_str!("../../shaders/field_u32.wgsl");
const PLAIN_F32: &str = include_str!("../../shaders/plain_f32.wgsl");
const PARAMS: &str = include_str!("../../shaders/params.wgsl");
const CONV_BODY: &str = include_str!("../../shaders/conv.wgsl");
const TILED_BODY: &str = include_str!("../../shaders/conv_tiled.wgsl");
const STRICT_BODY: &str = include_str!("../../shaders/verify_strict.wgsl");

/// Invocations per workgroup along x in the simple kernels.
const WORKGROUP_X: usize = 64;
/// Output channels × output pixels per workgroup of the tiled kernel (`conv_tiled.wgsl`).
const TILE: usize = 32;

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

/// The result of [`GpuBackend::time_conv`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelTiming {
    /// Median seconds per run.
    pub seconds: f64,
    /// True when measured with timestamp queries on the GPU clock, false for wall clock.
    pub gpu_clock: bool,
}

/// Options for [`GpuBackend::new`]. The defaults pick everything automatically.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Force a shader variant; `None` uses `U64` when the adapter has `SHADER_INT64`.
    pub variant: Option<ShaderVariant>,
    /// Use at most this many bytes per storage binding (below the device limit), to exercise
    /// the splitting logic.
    pub max_binding_size: Option<u64>,
    /// Use at most this many workgroups per dispatch dimension (below the device limit).
    pub max_workgroups_per_dimension: Option<u32>,
    /// The convolution kernel of [`CloudBackend::conv`] (default: tiled). Grouped and depthwise
    /// layers always use the simple kernel.
    pub kernel: ConvKernel,
}

/// What was selected, for reports.
#[derive(Clone, Debug)]
pub struct GpuInfo {
    /// Adapter name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// Graphics API, e.g. `Vulkan`.
    pub backend: String,
    /// Discrete, integrated, virtual, CPU or other.
    pub device_type: wgpu::DeviceType,
    /// Driver name and version.
    pub driver: String,
    /// Whether the adapter offers `SHADER_INT64`.
    pub shader_int64: bool,
    /// Whether the adapter offers `TIMESTAMP_QUERY` (kernel timing on the GPU clock).
    pub timestamps: bool,
    /// The storage-binding size used for splitting, in bytes.
    pub max_binding_size: u64,
    /// The workgroups-per-dimension limit used for splitting.
    pub max_workgroups_per_dimension: u32,
}

impl GpuInfo {
    /// True for a software rasteriser such as Mesa's llvmpipe.
    pub fn is_cpu(&self) -> bool {
        self.device_type == wgpu::DeviceType::Cpu
    }
}

impl std::fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {:?}, driver {})", self.name, self.backend, self.device_type, self.driver)
    }
}

/// The geometry uniform of every shader (`shaders/params.wgsl`, 20 × u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    dh: u32,
    dw: u32,
    pt: u32,
    pl: u32,
    ho: u32,
    wo: u32,
    cpg: u32,
    cpo: u32,
    o_base: u32,
    batch: u32,
    kstride4: u32,
    pad: u32,
}

impl Params {
    /// The whole layer for `batch` images.
    fn whole(g: &Conv2d, batch: usize) -> Self {
        Self {
            cin: u(g.cin()),
            h: u(g.h()),
            w: u(g.w()),
            cout: u(g.cout()),
            kh: u(g.kh()),
            kw: u(g.kw()),
            sh: u(g.stride().0),
            sw: u(g.stride().1),
            dh: u(g.dilation().0),
            dw: u(g.dilation().1),
            pt: u(g.padding().top),
            pl: u(g.padding().left),
            ho: u(g.ho()),
            wo: u(g.wo()),
            cpg: u(g.cin_per_group()),
            cpo: u(g.cout_per_group()),
            o_base: 0,
            batch: u(batch),
            kstride4: u(g.m().div_ceil(4)),
            pad: 0,
        }
    }
}

/// All geometry values fit in `u32`: [`Conv2d`] bounds every tensor below 2^31 elements.
fn u(v: usize) -> u32 {
    v as u32
}

/// The GPU cloud backend. Build it once and reuse it.
pub struct GpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: GpuInfo,
    variant: ShaderVariant,
    kernel: ConvKernel,
    /// Convolution pipelines: `[field, f32][simple, tiled]`.
    conv: [[wgpu::ComputePipeline; 2]; 2],
    strict: [wgpu::ComputePipeline; 3],
    strict_layout: wgpu::BindGroupLayout,
}

impl std::fmt::Debug for GpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBackend").field("info", &self.info).field("variant", &self.variant).finish()
    }
}

/// Ranks device types: a real GPU first, a software adapter last.
fn preference(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// Every adapter wgpu can see with the backends allowed by `WGPU_BACKEND`, one line each.
pub fn list_adapters() -> Vec<String> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    pollster::block_on(instance.enumerate_adapters(backends))
        .iter()
        .map(|a| {
            let i = a.get_info();
            let int64 =
                if a.features().contains(wgpu::Features::SHADER_INT64) { "SHADER_INT64" } else { "no SHADER_INT64" };
            format!(
                "{} ({:?}, {:?}, driver {} {}; {int64}; max storage binding {} bytes)",
                i.name,
                i.backend,
                i.device_type,
                i.driver,
                i.driver_info,
                a.limits().max_storage_buffer_binding_size
            )
        })
        .collect()
}

/// Runs `f` inside validation, out-of-memory and internal error scopes and returns the first
/// error any of them caught.
fn scoped<T>(device: &wgpu::Device, stage: &'static str, f: impl FnOnce() -> T) -> Result<T> {
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
    let value = f();
    let errors =
        [pollster::block_on(internal.pop()), pollster::block_on(oom.pop()), pollster::block_on(validation.pop())];
    match errors.into_iter().flatten().next() {
        Some(e) => Err(Error::Gpu { stage, message: e.to_string() }),
        None => Ok(value),
    }
}

impl GpuBackend {
    /// Selects an adapter, creates the device with the adapter's own limits, and compiles every
    /// pipeline.
    ///
    /// The adapter is the one named by `WGPU_ADAPTER_NAME` (a case-insensitive substring), or
    /// else the best by type: discrete, integrated, virtual, other, then CPU. `WGPU_BACKEND`
    /// (e.g. `vulkan`) restricts the graphics APIs probed.
    ///
    /// # Errors
    /// [`Error::NoAdapter`] when nothing matches, [`Error::UnsupportedFeature`] when `U64` is
    /// forced on an adapter without `SHADER_INT64`, [`Error::Gpu`] when device creation or shader
    /// compilation fails (the message carries the WGSL diagnostics).
    pub fn new(opts: &GpuOptions) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let names: Vec<String> =
            adapters.iter().map(|a| format!("{} ({:?})", a.get_info().name, a.get_info().backend)).collect();
        let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(wanted) => {
                let wanted = wanted.to_lowercase();
                adapters.into_iter().find(|a| a.get_info().name.to_lowercase().contains(&wanted)).ok_or_else(|| Error::NoAdapter(format!("WGPU_ADAPTER_NAME={wanted:?} matches none of [{}]", names.join(", "))))?
            }
            Err(_) => adapters.into_iter().min_by_key(|a| preference(a.get_info().device_type)).ok_or_else(|| {
                Error::NoAdapter(format!("wgpu found no adapter for backends {backends:?}; install a GPU driver or Mesa's lavapipe (Debian: mesa-vulkan-drivers)"))
            })?,
        };
        let ainfo = adapter.get_info();
        let has_int64 = adapter.features().contains(wgpu::Features::SHADER_INT64);
        let variant = match opts.variant {
            Some(ShaderVariant::U64) if !has_int64 => {
                return Err(Error::UnsupportedFeature("SHADER_INT64 (needed by the u64 shader variant)"));
            }
            Some(v) => v,
            None if has_int64 => ShaderVariant::U64,
            None => ShaderVariant::U32,
        };
        let required_features = adapter.features() & (wgpu::Features::SHADER_INT64 | wgpu::Features::TIMESTAMP_QUERY);
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("vericonv"),
            required_features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Gpu { stage: "device creation", message: e.to_string() })?;
        // Errors outside our scopes are logged, never turned into a panic.
        device.on_uncaptured_error(Arc::new(|e| log::error!("uncaptured wgpu error: {e}")));

        let device_binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        let info = GpuInfo {
            name: ainfo.name.clone(),
            backend: format!("{:?}", ainfo.backend),
            device_type: ainfo.device_type,
            driver: format!("{} {}", ainfo.driver, ainfo.driver_info).trim().to_string(),
            shader_int64: has_int64,
            timestamps: required_features.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_binding_size: opts.max_binding_size.map_or(device_binding, |m| m.min(device_binding)).max(4),
            max_workgroups_per_dimension: opts
                .max_workgroups_per_dimension
                .map_or(limits.max_compute_workgroups_per_dimension, |m| {
                    m.min(limits.max_compute_workgroups_per_dimension)
                })
                .max(1),
        };

        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let uniform = wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let (conv_layout, strict_layout) = scoped(&device, "bind group layout creation", || {
            let conv = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("conv"),
                entries: &[uniform, storage(1, true), storage(2, true), storage(3, false)],
            });
            let strict = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("strict"),
                entries: &[
                    uniform,
                    storage(1, true),
                    storage(2, true),
                    storage(3, true),
                    storage(4, true),
                    storage(5, false),
                    storage(6, false),
                    storage(7, false),
                ],
            });
            (conv, strict)
        })?;
        let pipeline = |program: ShaderProgram, layout: &wgpu::BindGroupLayout| -> Result<Vec<wgpu::ComputePipeline>> {
            let source = program.source();
            scoped(&device, "shader compilation", || {
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some("vericonv"),
                    source: wgpu::ShaderSource::Wgsl(source.as_str().into()),
                });
                let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: None,
                    bind_group_layouts: &[Some(layout)],
                    immediate_size: 0,
                });
                program
                    .entry_points()
                    .iter()
                    .map(|entry| {
                        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                            label: Some(entry),
                            layout: Some(&pl),
                            module: &module,
                            entry_point: Some(entry),
                            compilation_options: Default::default(),
                            cache: None,
                        })
                    })
                    .collect()
            })
            .map_err(|e| match e {
                Error::Gpu { stage, message } => {
                    Error::Gpu { stage, message: format!("{message}\n--- WGSL of {program:?} ---\n{source}") }
                }
                other => other,
            })
        };
        let conv_pipeline = |a, k| Ok::<_, Error>(pipeline(ShaderProgram::Conv(a, k), &conv_layout)?.remove(0));
        let field = Arithmetic::Field(variant);
        let conv = [
            [conv_pipeline(field, ConvKernel::Simple)?, conv_pipeline(field, ConvKernel::Tiled)?],
            [conv_pipeline(Arithmetic::F32, ConvKernel::Simple)?, conv_pipeline(Arithmetic::F32, ConvKernel::Tiled)?],
        ];
        let mut s = pipeline(ShaderProgram::Strict(variant), &strict_layout)?.into_iter();
        let (Some(ydot), Some(im2col_r), Some(kt)) = (s.next(), s.next(), s.next()) else {
            return Err(Error::Gpu { stage: "shader compilation", message: "missing strict-mode entry point".into() });
        };
        Ok(Self {
            device,
            queue,
            info,
            variant,
            kernel: opts.kernel,
            conv,
            strict: [ydot, im2col_r, kt],
            strict_layout,
        })
    }

    /// The adapter in use.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// The F_p shader variant in use.
    pub fn variant(&self) -> ShaderVariant {
        self.variant
    }

    /// The plaintext f32 convolution on the GPU with the given kernel: the cloud-side baseline.
    ///
    /// # Errors
    /// As [`CloudBackend::conv`].
    pub fn conv_f32(
        &self,
        kernel: ConvKernel,
        geom: &Conv2d,
        batch: usize,
        weights: &[f32],
        input: &[f32],
    ) -> Result<Vec<f32>> {
        Conv2d::check_len("kernel", geom.kernel_len(), weights.len())?;
        Conv2d::check_len("input", batch * geom.image_len(), input.len())?;
        self.run_conv(Arithmetic::F32, kernel, geom, batch, weights, input)
    }

    /// The F_p convolution with an explicit kernel choice (the tests compare the tiled kernel
    /// with the simple one, its oracle).
    ///
    /// # Errors
    /// As [`CloudBackend::conv`].
    pub fn conv_field(
        &self,
        kernel: ConvKernel,
        geom: &Conv2d,
        batch: usize,
        weights: &[u32],
        input: &[u32],
    ) -> Result<Vec<u32>> {
        check_conv_args(geom, batch, weights, input)?;
        self.run_conv(Arithmetic::Field(self.variant), kernel, geom, batch, weights, input)
    }

    /// The pipeline for `arith` and `kernel`; grouped layers always get the simple kernel.
    fn conv_pipeline(&self, arith: Arithmetic, kernel: ConvKernel, g: &Conv2d) -> (&wgpu::ComputePipeline, ConvKernel) {
        let kernel = if g.groups() > 1 { ConvKernel::Simple } else { kernel };
        let a = usize::from(arith == Arithmetic::F32);
        (&self.conv[a][usize::from(kernel == ConvKernel::Tiled)], kernel)
    }

    /// Uploads the uniform and the input, creates an output buffer of `out_elems` elements and
    /// binds them with `kbuf` for a convolution pipeline.
    fn conv_bindings<T: Pod>(
        &self,
        pipeline: &wgpu::ComputePipeline,
        params: &Params,
        kbuf: &wgpu::Buffer,
        input: &[T],
        out_elems: usize,
    ) -> Result<(wgpu::BindGroup, wgpu::Buffer)> {
        scoped(&self.device, "buffer upload", || {
            let ubuf = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::bytes_of(params),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let xbuf = self.storage_buffer("input", input, false);
            let ybuf = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("output"),
                size: (out_elems * 4) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("conv"),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry { binding: 0, resource: ubuf.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 1, resource: kbuf.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 2, resource: xbuf.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 3, resource: ybuf.as_entire_binding() },
                ],
            });
            (bind, ybuf)
        })
    }

    /// The kernel buffer a pipeline reads: rows of `K` as they are for the simple kernel,
    /// zero-padded to a multiple of 4 for the vec4 loads of the tiled one.
    fn kernel_buffer<T: Pod + Default>(&self, kernel: ConvKernel, m: usize, rows: &[T]) -> wgpu::Buffer {
        match kernel {
            ConvKernel::Simple => self.storage_buffer("kernel", rows, false),
            ConvKernel::Tiled => {
                let m4 = m.div_ceil(4) * 4;
                let mut padded = vec![T::default(); rows.len() / m * m4];
                for (dst, src) in padded.chunks_exact_mut(m4).zip(rows.chunks_exact(m)) {
                    dst[..m].copy_from_slice(src);
                }
                self.storage_buffer("kernel", &padded, false)
            }
        }
    }

    fn storage_buffer<T: Pod>(&self, label: &str, data: &[T], writable: bool) -> wgpu::Buffer {
        let usage = if writable {
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC
        } else {
            wgpu::BufferUsages::STORAGE
        };
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(data),
            usage,
        })
    }

    /// Records `record` into one submission, copies `outputs` to staging buffers and reads them
    /// back, all inside error scopes.
    fn submit_and_read<T: Pod>(
        &self,
        stage: &'static str,
        outputs: &[&wgpu::Buffer],
        record: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<Vec<Vec<T>>> {
        let staging = scoped(&self.device, stage, || {
            let mut encoder =
                self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(stage) });
            record(&mut encoder);
            let staging: Vec<wgpu::Buffer> = outputs
                .iter()
                .map(|out| {
                    let st = self.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("staging"),
                        size: out.size(),
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    encoder.copy_buffer_to_buffer(out, 0, &st, 0, out.size());
                    st
                })
                .collect();
            self.queue.submit([encoder.finish()]);
            staging
        })?;
        let mut results = Vec::with_capacity(staging.len());
        for st in &staging {
            let slice = st.slice(..);
            let (tx, rx) = mpsc::channel();
            slice.map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::Gpu { stage, message: e.to_string() })?;
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Error::Gpu { stage, message: format!("buffer mapping failed: {e}") }),
                Err(_) => return Err(Error::Gpu { stage, message: "buffer mapping was cancelled".into() }),
            }
            let data: Vec<T> = {
                let view = slice.get_mapped_range().map_err(|e| Error::Gpu { stage, message: e.to_string() })?;
                bytemuck::pod_collect_to_vec(&view)
            };
            st.unmap();
            results.push(data);
        }
        Ok(results)
    }

    /// Dispatch geometry for a 1-D range of `invocations`, folded into 2-D when it exceeds the
    /// per-dimension limit.
    fn grid_1d(&self, invocations: usize) -> Result<(u32, u32)> {
        let groups = invocations.div_ceil(WORKGROUP_X);
        let max = self.info.max_workgroups_per_dimension as usize;
        let (x, y) = if groups <= max { (groups, 1) } else { (max, groups.div_ceil(max)) };
        if y > max {
            return Err(Error::DeviceLimit(format!(
                "{invocations} invocations exceed the dispatch limit of {max}×{max} workgroups"
            )));
        }
        Ok((u(x), u(y)))
    }

    /// Runs a convolution over `T` elements, split into chunks that fit the limits.
    fn run_conv<T: Pod + Default>(
        &self,
        arith: Arithmetic,
        kernel_choice: ConvKernel,
        g: &Conv2d,
        batch: usize,
        kernel: &[T],
        input: &[T],
    ) -> Result<Vec<T>> {
        let (pipeline, kernel_choice) = self.conv_pipeline(arith, kernel_choice, g);
        let plan = ConvPlan::new(
            g,
            batch,
            self.info.max_binding_size / 4,
            self.info.max_workgroups_per_dimension as usize,
            kernel_choice,
        )?;
        let (n, wo, hw) = (g.n(), g.wo(), g.h() * g.w());
        let mut out = vec![T::default(); batch * g.output_image_len()];
        for o0 in (0..g.cout()).step_by(plan.channels) {
            let oc = plan.channels.min(g.cout() - o0);
            let kbuf = scoped(&self.device, "buffer upload", || {
                self.kernel_buffer(kernel_choice, g.m(), &kernel[o0 * g.m()..(o0 + oc) * g.m()])
            })?;
            for y0 in (0..g.ho()).step_by(plan.rows) {
                let rows = plan.rows.min(g.ho() - y0);
                let band = Band::new(g, y0, rows);
                if band.in_hi <= band.in_lo {
                    continue; // the band reads only zero padding: its output stays zero
                }
                let band_h = band.in_hi - band.in_lo;
                for b0 in (0..batch).step_by(plan.images) {
                    let nb = plan.images.min(batch - b0);
                    let full_band = band.in_lo == 0 && band.in_hi == g.h();
                    let xband: std::borrow::Cow<[T]> = if full_band {
                        input[b0 * g.image_len()..(b0 + nb) * g.image_len()].into()
                    } else {
                        let mut v = Vec::with_capacity(nb * g.cin() * band_h * g.w());
                        for plane in input[b0 * g.image_len()..(b0 + nb) * g.image_len()].chunks_exact(hw) {
                            v.extend_from_slice(&plane[band.in_lo * g.w()..band.in_hi * g.w()]);
                        }
                        v.into()
                    };
                    let params = Params {
                        h: u(band_h),
                        cout: u(oc),
                        pt: u(band.pad_top),
                        ho: u(rows),
                        o_base: u(o0),
                        ..Params::whole(g, nb)
                    };
                    let (bind, ybuf) = self.conv_bindings(pipeline, &params, &kbuf, &xband, nb * oc * rows * wo)?;
                    let mut res = self.submit_and_read::<T>("convolution", &[&ybuf], |enc| {
                        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some("conv"),
                            timestamp_writes: None,
                        });
                        pass.set_pipeline(pipeline);
                        pass.set_bind_group(0, &bind, &[]);
                        let (x, y) = ConvPlan::workgroups(kernel_choice, rows * wo, oc);
                        pass.dispatch_workgroups(u(x), u(y), u(nb));
                    })?;
                    let chunk = res.remove(0);
                    for (idx, src) in chunk.chunks_exact(rows * wo).enumerate() {
                        let (b, ol) = (b0 + idx / oc, o0 + idx % oc);
                        out[(b * g.cout() + ol) * n + y0 * wo..][..rows * wo].copy_from_slice(src);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Times one convolution kernel on this adapter: one warm-up run, then the median of `reps`
    /// runs, on the GPU clock (timestamp queries) when the adapter offers it, else wall clock
    /// around submit-and-wait. The output is not read back; check it with
    /// [`GpuBackend::conv_field`] or [`GpuBackend::conv_f32`] first.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`], [`Error::Unsupported`] for a field variant other than the
    /// backend's, [`Error::DeviceLimit`] when the layer needs several dispatches, [`Error::Gpu`].
    #[allow(clippy::too_many_arguments)]
    pub fn time_conv<T: Pod + Default>(
        &self,
        arith: Arithmetic,
        kernel: ConvKernel,
        g: &Conv2d,
        batch: usize,
        weights: &[T],
        input: &[T],
        reps: usize,
    ) -> Result<KernelTiming> {
        Conv2d::check_len("kernel", g.kernel_len(), weights.len())?;
        Conv2d::check_len("input", batch * g.image_len(), input.len())?;
        if let Arithmetic::Field(v) = arith
            && v != self.variant
        {
            return Err(Error::Unsupported(format!("this backend runs {:?} shaders, not {v:?}", self.variant)));
        }
        let (pipeline, kernel) = self.conv_pipeline(arith, kernel, g);
        let max_groups = self.info.max_workgroups_per_dimension as usize;
        let plan = ConvPlan::new(g, batch, self.info.max_binding_size / 4, max_groups, kernel)?;
        if plan != (ConvPlan { channels: g.cout(), rows: g.ho(), images: batch }) {
            return Err(Error::DeviceLimit(format!(
                "this layer at batch {batch} needs several dispatches on this adapter; time a smaller batch"
            )));
        }
        let kbuf = scoped(&self.device, "buffer upload", || self.kernel_buffer(kernel, g.m(), weights))?;
        let (bind, _) =
            self.conv_bindings(pipeline, &Params::whole(g, batch), &kbuf, input, batch * g.output_image_len())?;
        let (x, y) = ConvPlan::workgroups(kernel, g.n(), g.cout());
        let timestamps = self.info.timestamps.then(|| {
            let qs = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("timing"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            (qs, resolve)
        });
        let record = |enc: &mut wgpu::CommandEncoder, timed: bool| {
            let writes = timestamps.as_ref().filter(|_| timed).map(|(qs, _)| wgpu::ComputePassTimestampWrites {
                query_set: qs,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("timed conv"),
                    timestamp_writes: writes,
                });
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(u(x), u(y), u(batch));
            }
            if let Some((qs, resolve)) = timestamps.as_ref().filter(|_| timed) {
                enc.resolve_query_set(qs, 0..2, resolve, 0);
            }
        };
        let wait = || {
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::Gpu { stage: "kernel timing", message: e.to_string() })
        };
        self.submit_and_read::<u32>("kernel timing warm-up", &[], |enc| record(enc, false))?;
        wait()?;
        let mut samples = Vec::with_capacity(reps.max(1));
        for _ in 0..reps.max(1) {
            let start = std::time::Instant::now();
            match &timestamps {
                Some((_, resolve)) => {
                    let ticks = self.submit_and_read::<u64>("kernel timing", &[resolve], |enc| record(enc, true))?;
                    let [t0, t1] = ticks.first().and_then(|t| t.get(..2)).map_or([0, 0], |t| [t[0], t[1]]);
                    samples.push(t1.saturating_sub(t0) as f64 * f64::from(self.queue.get_timestamp_period()) * 1e-9);
                }
                None => {
                    self.submit_and_read::<u32>("kernel timing", &[], |enc| record(enc, true))?;
                    wait()?;
                    samples.push(start.elapsed().as_secs_f64());
                }
            }
        }
        samples.sort_by(f64::total_cmp);
        Ok(KernelTiming { seconds: samples[samples.len() / 2], gpu_clock: timestamps.is_some() })
    }

    /// The batched Strict-mode products on this GPU (`Y'_b·r`, `im2col(X'_b)·r`, `K'·T_b`),
    /// bit-identical to [`crate::verify::strict_products`]. Verifying on a GPU proves something
    /// only when the GPU is the client's own, never the cloud's.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] for a bad `r`, [`Error::DeviceLimit`] when one image does not fit a binding,
    /// [`Error::Gpu`].
    pub fn strict_products(&self, claim: &Claim<'_>, r: &[u32]) -> Result<StrictProducts> {
        let (g, batch) = (claim.geometry(), claim.batch());
        let (kp, xp) = (claim.kernel(), claim.input());
        // A claim in two parts (mode two-server) is checked against their sum.
        let summed: Vec<u32>;
        let yp = match claim.output_b() {
            Some(b) => {
                summed = claim.output().iter().zip(b).map(|(&x, &y)| M31::add(x, y)).collect();
                &summed
            }
            None => claim.output(),
        };
        Conv2d::check_len("verification vector r", g.n(), r.len())?;
        let taps = g.kh() * g.kw();
        let max_elems = (self.info.max_binding_size / 4) as usize;
        let per_image = g.image_len().max(g.output_image_len()).max(g.cin() * taps);
        if per_image > max_elems || g.kernel_len() > max_elems {
            return Err(Error::DeviceLimit(format!(
                "one image of this layer needs {} bytes in one binding; the device allows {}",
                per_image.max(g.kernel_len()) * 4,
                self.info.max_binding_size
            )));
        }
        let images = (max_elems / per_image).clamp(1, batch);
        let kbuf = self.storage_buffer("kernel", kp, false);
        let rbuf = self.storage_buffer("r", r, false);
        let mut products = StrictProducts {
            l: Vec::with_capacity(batch * g.cout()),
            t: Vec::with_capacity(batch * g.cin() * taps),
            v: Vec::with_capacity(batch * g.cout()),
        };
        for b0 in (0..batch).step_by(images) {
            let nb = images.min(batch - b0);
            let params = Params::whole(g, nb);
            let out_buf = |label: &str, len: usize| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: (len * 4) as u64,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                })
            };
            let (bind, lbuf, tbuf, vbuf) = scoped(&self.device, "buffer upload", || {
                let ubuf = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("params"),
                    contents: bytemuck::bytes_of(&params),
                    usage: wgpu::BufferUsages::UNIFORM,
                });
                let xbuf = self.storage_buffer("input", &xp[b0 * g.image_len()..(b0 + nb) * g.image_len()], false);
                let ybuf = self.storage_buffer(
                    "answer",
                    &yp[b0 * g.output_image_len()..(b0 + nb) * g.output_image_len()],
                    false,
                );
                let (lbuf, tbuf, vbuf) =
                    (out_buf("L", nb * g.cout()), out_buf("T", nb * g.cin() * taps), out_buf("V", nb * g.cout()));
                let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("strict"),
                    layout: &self.strict_layout,
                    entries: &[
                        wgpu::BindGroupEntry { binding: 0, resource: ubuf.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 1, resource: kbuf.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 2, resource: xbuf.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 3, resource: ybuf.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 4, resource: rbuf.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 5, resource: lbuf.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 6, resource: tbuf.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 7, resource: vbuf.as_entire_binding() },
                    ],
                });
                (bind, lbuf, tbuf, vbuf)
            })?;
            let grids =
                [self.grid_1d(nb * g.cout())?, self.grid_1d(nb * g.cin() * taps)?, self.grid_1d(nb * g.cout())?];
            let mut res = self.submit_and_read::<u32>("strict verification", &[&lbuf, &tbuf, &vbuf], |enc| {
                for (pipeline, (x, y)) in self.strict.iter().zip(grids) {
                    // One pass per stage: `kt` must see everything `im2col_r` wrote.
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("strict"),
                        timestamp_writes: None,
                    });
                    pass.set_pipeline(pipeline);
                    pass.set_bind_group(0, &bind, &[]);
                    pass.dispatch_workgroups(x, y, 1);
                }
            })?;
            let v = res.pop().unwrap_or_default();
            let t = res.pop().unwrap_or_default();
            let l = res.pop().unwrap_or_default();
            products.l.extend(l);
            products.t.extend(t);
            products.v.extend(v);
        }
        Ok(products)
    }
}

impl CloudBackend for GpuBackend {
    fn name(&self) -> String {
        format!("gpu: {} [{:?} shaders]", self.info, self.variant)
    }

    fn conv(&self, geom: &Conv2d, batch: usize, kernel: &[u32], input: &[u32]) -> Result<Vec<u32>> {
        self.conv_field(self.kernel, geom, batch, kernel, input)
    }
}

/// How a convolution is split to fit a binding of `max_elems` elements and `max_groups`
/// workgroups per dispatch dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ConvPlan {
    channels: usize,
    rows: usize,
    images: usize,
}

impl ConvPlan {
    /// Workgroups along x (output pixels) and y (output channels) for `pixels` outputs per
    /// channel and `channels` channels.
    fn workgroups(kernel: ConvKernel, pixels: usize, channels: usize) -> (usize, usize) {
        match kernel {
            ConvKernel::Simple => (pixels.div_ceil(WORKGROUP_X), channels),
            ConvKernel::Tiled => (pixels.div_ceil(TILE), channels.div_ceil(TILE)),
        }
    }

    fn new(g: &Conv2d, batch: usize, max_elems: u64, max_groups: usize, kernel: ConvKernel) -> Result<Self> {
        let max_elems = usize::try_from(max_elems).unwrap_or(usize::MAX);
        if g.m().div_ceil(4) * 4 > max_elems {
            return Err(Error::DeviceLimit(format!(
                "one kernel row ({} weights) exceeds the storage binding limit of {} bytes",
                g.m(),
                max_elems * 4
            )));
        }
        let band_rows = |rows: usize| g.h().min((rows - 1) * g.stride().0 + (g.kh() - 1) * g.dilation().0 + 1);
        let fits = |rows: usize| {
            rows * g.wo() <= max_elems
                && g.cin() * band_rows(rows) * g.w() <= max_elems
                && Self::workgroups(kernel, rows * g.wo(), 1).0 <= max_groups
        };
        let mut rows = g.ho();
        while !fits(rows) {
            if rows == 1 {
                return Err(Error::DeviceLimit(format!(
                    "one output row ({} outputs, {} input rows of {}×{}) exceeds the storage binding limit of {} bytes or {} workgroups",
                    g.wo(),
                    band_rows(1),
                    g.cin(),
                    g.w(),
                    max_elems * 4,
                    max_groups
                )));
            }
            rows = rows.div_ceil(2);
        }
        // The tiled kernel pads kernel rows to a multiple of 4.
        let m = g.m().div_ceil(4) * 4;
        let channels = g.cout().min(max_elems / m).min(max_elems / (rows * g.wo())).min(max_groups).max(1);
        let per_image = (channels * rows * g.wo()).max(g.cin() * band_rows(rows) * g.w());
        let images = batch.min(max_elems / per_image).min(max_groups).max(1);
        Ok(Self { channels, rows, images })
    }
}

/// The input rows `[in_lo, in_hi)` that output rows `[y0, y0 + rows)` read, and the zero rows
/// above them (`pad_top`), so that the band is itself a convolution.
struct Band {
    in_lo: usize,
    in_hi: usize,
    pad_top: usize,
}

impl Band {
    fn new(g: &Conv2d, y0: usize, rows: usize) -> Self {
        let start = (y0 * g.stride().0) as isize - g.padding().top as isize;
        let end =
            ((y0 + rows - 1) * g.stride().0 + (g.kh() - 1) * g.dilation().0) as isize - g.padding().top as isize + 1;
        let h = g.h() as isize;
        let in_lo = start.clamp(0, h);
        let in_hi = end.clamp(0, h);
        Self { in_lo: in_lo as usize, in_hi: in_hi as usize, pad_top: (in_lo - start) as usize }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Padding;

    #[test]
    fn plan_splits_channels_rows_and_images_to_fit_limits() {
        let g = Conv2d::builder(4, 8, (16, 16), (3, 3)).padding(Padding::uniform(1)).build().expect("valid");
        assert_eq!(
            ConvPlan::new(&g, 5, 1 << 30, 65535, ConvKernel::Tiled).expect("fits"),
            ConvPlan { channels: 8, rows: 16, images: 5 }
        );
        let p = ConvPlan::new(&g, 5, 300, 65535, ConvKernel::Simple).expect("fits after splitting");
        assert!(p.channels * p.rows * g.wo() <= 300 && p.rows < 16);
        assert!(
            ConvPlan::new(&g, 1, 20, 65535, ConvKernel::Simple).is_err(),
            "a kernel row of 36 weights cannot fit 20 elements"
        );
    }

    #[test]
    fn band_is_a_convolution_with_its_own_top_padding() {
        let g = Conv2d::builder(1, 1, (10, 4), (3, 1))
            .stride(2, 1)
            .padding(Padding::new(2, 0, 2, 0))
            .dilation(2, 1)
            .build()
            .expect("valid");
        let b = Band::new(&g, 0, 2);
        assert_eq!((b.in_lo, b.in_hi, b.pad_top), (0, 5, 2));
    }
}
