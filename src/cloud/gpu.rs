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
use crate::geometry::Conv2d;
use crate::verify::{Claim, StrictProducts};
use crate::{Error, Result};

const FIELD_U64: &str = include_str!("../../shaders/field_u64.wgsl");
const FIELD_U32: &str = include_str!("../../shaders/field_u32.wgsl");
const PLAIN_F32: &str = include_str!("../../shaders/plain_f32.wgsl");
const PARAMS: &str = include_str!("../../shaders/params.wgsl");
const CONV_BODY: &str = include_str!("../../shaders/conv.wgsl");
const STRICT_BODY: &str = include_str!("../../shaders/verify_strict.wgsl");

/// Invocations per workgroup along x in every shader.
const WORKGROUP_X: usize = 64;

/// How the F_p shaders multiply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShaderVariant {
    /// Native `u64` products and accumulation; needs `Features::SHADER_INT64`.
    U64,
    /// 32-bit only, with 16-bit limbs; runs on any adapter.
    U32,
}

/// A complete WGSL program: an arithmetic prelude followed by a kernel body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShaderProgram {
    /// The masked implicit-im2col GEMM convolution over F_p.
    ConvField(ShaderVariant),
    /// The plaintext f32 convolution, the cloud-side baseline.
    ConvF32,
    /// The batched Strict-mode verification matrix-vector products.
    Strict(ShaderVariant),
}

impl ShaderProgram {
    /// Every program the backend may compile.
    pub const ALL: [ShaderProgram; 5] = [
        ShaderProgram::ConvField(ShaderVariant::U64),
        ShaderProgram::ConvField(ShaderVariant::U32),
        ShaderProgram::ConvF32,
        ShaderProgram::Strict(ShaderVariant::U64),
        ShaderProgram::Strict(ShaderVariant::U32),
    ];

    /// The WGSL source, exactly as it is handed to wgpu.
    pub fn source(self) -> String {
        let prelude = |v| match v {
            ShaderVariant::U64 => FIELD_U64,
            ShaderVariant::U32 => FIELD_U32,
        };
        match self {
            ShaderProgram::ConvField(v) => format!("{}\n{PARAMS}\n{CONV_BODY}", prelude(v)),
            ShaderProgram::ConvF32 => format!("{PLAIN_F32}\n{PARAMS}\n{CONV_BODY}"),
            ShaderProgram::Strict(v) => format!("{}\n{PARAMS}\n{STRICT_BODY}", prelude(v)),
        }
    }

    /// Whether the program needs `Features::SHADER_INT64`.
    pub fn needs_int64(self) -> bool {
        matches!(self, ShaderProgram::ConvField(ShaderVariant::U64) | ShaderProgram::Strict(ShaderVariant::U64))
    }
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
    pad: [u32; 2],
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
            pad: [0; 2],
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
    conv_field: wgpu::ComputePipeline,
    conv_f32: wgpu::ComputePipeline,
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
        let required_features = if has_int64 { wgpu::Features::SHADER_INT64 } else { wgpu::Features::empty() };
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
        let pipeline = |program: ShaderProgram,
                        layout: &wgpu::BindGroupLayout,
                        entries: &[&str]|
         -> Result<Vec<wgpu::ComputePipeline>> {
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
                entries
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
        let conv_field = pipeline(ShaderProgram::ConvField(variant), &conv_layout, &["conv_main"])?.remove(0);
        let conv_f32 = pipeline(ShaderProgram::ConvF32, &conv_layout, &["conv_main"])?.remove(0);
        let mut s = pipeline(ShaderProgram::Strict(variant), &strict_layout, &["ydot", "im2col_r", "kt"])?.into_iter();
        let (Some(ydot), Some(im2col_r), Some(kt)) = (s.next(), s.next(), s.next()) else {
            return Err(Error::Gpu { stage: "shader compilation", message: "missing strict-mode entry point".into() });
        };
        Ok(Self { device, queue, info, variant, conv_field, conv_f32, strict: [ydot, im2col_r, kt], strict_layout })
    }

    /// The adapter in use.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// The F_p shader variant in use.
    pub fn variant(&self) -> ShaderVariant {
        self.variant
    }

    /// The plaintext f32 convolution on the GPU: the cloud-side baseline.
    ///
    /// # Errors
    /// As [`CloudBackend::conv`].
    pub fn conv_f32(&self, geom: &Conv2d, batch: usize, kernel: &[f32], input: &[f32]) -> Result<Vec<f32>> {
        Conv2d::check_len("kernel", geom.kernel_len(), kernel.len())?;
        Conv2d::check_len("input", batch * geom.image_len(), input.len())?;
        self.run_conv(&self.conv_f32, geom, batch, kernel, input)
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

    /// Runs a convolution pipeline over `T` elements, split into chunks that fit the limits.
    fn run_conv<T: Pod + Default>(
        &self,
        pipeline: &wgpu::ComputePipeline,
        g: &Conv2d,
        batch: usize,
        kernel: &[T],
        input: &[T],
    ) -> Result<Vec<T>> {
        let plan =
            ConvPlan::new(g, batch, self.info.max_binding_size / 4, self.info.max_workgroups_per_dimension as usize)?;
        let (n, wo, hw) = (g.n(), g.wo(), g.h() * g.w());
        let mut out = vec![T::default(); batch * g.output_image_len()];
        for o0 in (0..g.cout()).step_by(plan.channels) {
            let oc = plan.channels.min(g.cout() - o0);
            let kbuf = self.storage_buffer("kernel", &kernel[o0 * g.m()..(o0 + oc) * g.m()], false);
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
                    let chunk_out = nb * oc * rows * wo;
                    let (ubuf, xbuf, ybuf) = scoped(&self.device, "buffer upload", || {
                        let ubuf = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                            label: Some("params"),
                            contents: bytemuck::bytes_of(&params),
                            usage: wgpu::BufferUsages::UNIFORM,
                        });
                        let xbuf = self.storage_buffer("input", &xband, false);
                        let ybuf = self.device.create_buffer(&wgpu::BufferDescriptor {
                            label: Some("output"),
                            size: (chunk_out * 4) as u64,
                            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                            mapped_at_creation: false,
                        });
                        (ubuf, xbuf, ybuf)
                    })?;
                    let bind = scoped(&self.device, "bind group creation", || {
                        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: Some("conv"),
                            layout: &pipeline.get_bind_group_layout(0),
                            entries: &[
                                wgpu::BindGroupEntry { binding: 0, resource: ubuf.as_entire_binding() },
                                wgpu::BindGroupEntry { binding: 1, resource: kbuf.as_entire_binding() },
                                wgpu::BindGroupEntry { binding: 2, resource: xbuf.as_entire_binding() },
                                wgpu::BindGroupEntry { binding: 3, resource: ybuf.as_entire_binding() },
                            ],
                        })
                    })?;
                    let mut res = self.submit_and_read::<T>("convolution", &[&ybuf], |enc| {
                        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some("conv"),
                            timestamp_writes: None,
                        });
                        pass.set_pipeline(pipeline);
                        pass.set_bind_group(0, &bind, &[]);
                        pass.dispatch_workgroups(u((rows * wo).div_ceil(WORKGROUP_X)), u(oc), u(nb));
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

    /// The batched Strict-mode products on this GPU (`Y'_b·r`, `im2col(X'_b)·r`, `K'·T_b`),
    /// bit-identical to [`crate::verify::strict_products`]. Verifying on a GPU proves something
    /// only when the GPU is the client's own, never the cloud's.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] for a bad `r`, [`Error::DeviceLimit`] when one image does not fit a binding,
    /// [`Error::Gpu`].
    pub fn strict_products(&self, claim: &Claim<'_>, r: &[u32]) -> Result<StrictProducts> {
        let (g, batch) = (claim.geometry(), claim.batch());
        let (kp, xp, yp) = (claim.kernel(), claim.input(), claim.output());
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
        check_conv_args(geom, batch, kernel, input)?;
        self.run_conv(&self.conv_field, geom, batch, kernel, input)
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
    fn new(g: &Conv2d, batch: usize, max_elems: u64, max_groups: usize) -> Result<Self> {
        let max_elems = usize::try_from(max_elems).unwrap_or(usize::MAX);
        if g.m() > max_elems {
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
                && (rows * g.wo()).div_ceil(WORKGROUP_X) <= max_groups
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
        let channels = g.cout().min(max_elems / g.m()).min(max_elems / (rows * g.wo())).min(max_groups).max(1);
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
        assert_eq!(ConvPlan::new(&g, 5, 1 << 30, 65535).expect("fits"), ConvPlan { channels: 8, rows: 16, images: 5 });
        let p = ConvPlan::new(&g, 5, 300, 65535).expect("fits after splitting");
        assert!(p.channels * p.rows * g.wo() <= 300 && p.rows < 16);
        assert!(ConvPlan::new(&g, 1, 20, 65535).is_err(), "a kernel row of 36 weights cannot fit 20 elements");
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
