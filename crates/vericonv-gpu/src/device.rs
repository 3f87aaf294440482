//! Adapter selection, device creation with the adapter's own limits, and the pipelines built
//! once per backend.

use crate::GpuError;
use std::sync::Arc;

use vericonv::{Error, Result};

use crate::kernel_cache::KernelCache;
use crate::shaders::{Arithmetic, ConvKernel, ShaderProgram, ShaderVariant};

/// Options for [`crate::GpuBackend::new`]. The defaults pick everything automatically.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Force a shader variant; `None` uses `U64` when the adapter has `SHADER_INT64`.
    pub variant: Option<ShaderVariant>,
    /// Use at most this many bytes per storage binding (below the device limit), to exercise
    /// the splitting logic.
    pub max_binding_size: Option<u64>,
    /// Use at most this many workgroups per dispatch dimension (below the device limit).
    pub max_workgroups_per_dimension: Option<u32>,
    /// The convolution kernel of [`vericonv::CloudBackend::conv`] (default: tiled). Grouped and depthwise
    /// layers always use the simple kernel.
    pub kernel: ConvKernel,
    /// Bytes of session kernels kept on the device (default 256 MiB); least recently used first out.
    pub kernel_cache_bytes: Option<u64>,
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

/// The device, its queue and the pipelines built once, which every GPU operation uses.
pub(crate) struct Device {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: GpuInfo,
    pub(crate) variant: ShaderVariant,
    pub(crate) kernel: ConvKernel,
    /// Convolution pipelines: `[field, f32][simple, tiled]`.
    pub(crate) conv: [[wgpu::ComputePipeline; 2]; 2],
    pub(crate) strict: [wgpu::ComputePipeline; 3],
    pub(crate) strict_layout: wgpu::BindGroupLayout,
    /// Session kernels on the device.
    pub(crate) kernels: std::sync::Mutex<KernelCache>,
    /// Kernel uploads so far (for tests and reports).
    pub(crate) kernel_uploads: std::sync::atomic::AtomicU64,
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
pub(crate) fn scoped<T>(device: &wgpu::Device, stage: &'static str, f: impl FnOnce() -> T) -> Result<T> {
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
    let value = f();
    let errors =
        [pollster::block_on(internal.pop()), pollster::block_on(oom.pop()), pollster::block_on(validation.pop())];
    match errors.into_iter().flatten().next() {
        Some(e) => Err(GpuError::Wgpu { stage, message: e.to_string() }.into()),
        None => Ok(value),
    }
}

impl Device {
    /// Selects an adapter, creates the device with the adapter's own limits, and compiles every
    /// pipeline.
    ///
    /// The adapter is the one named by `WGPU_ADAPTER_NAME` (a case-insensitive substring), or
    /// else the best by type: discrete, integrated, virtual, other, then CPU. `WGPU_BACKEND`
    /// (e.g. `vulkan`) restricts the graphics APIs probed.
    ///
    /// # Errors
    /// [`GpuError::NoAdapter`] when nothing matches, [`GpuError::UnsupportedFeature`] when `U64` is
    /// forced on an adapter without `SHADER_INT64`, [`GpuError::Wgpu`] when device creation or shader
    /// compilation fails (the message carries the WGSL diagnostics).
    pub(crate) fn open(opts: &GpuOptions) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let names: Vec<String> =
            adapters.iter().map(|a| format!("{} ({:?})", a.get_info().name, a.get_info().backend)).collect();
        let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(wanted) => {
                let wanted = wanted.to_lowercase();
                adapters.into_iter().find(|a| a.get_info().name.to_lowercase().contains(&wanted)).ok_or_else(|| GpuError::NoAdapter(format!("WGPU_ADAPTER_NAME={wanted:?} matches none of [{}]", names.join(", "))))?
            }
            Err(_) => adapters.into_iter().min_by_key(|a| preference(a.get_info().device_type)).ok_or_else(|| {
                GpuError::NoAdapter(format!("wgpu found no adapter for backends {backends:?}; install a GPU driver or Mesa's lavapipe (Debian: mesa-vulkan-drivers)"))
            })?,
        };
        let ainfo = adapter.get_info();
        let has_int64 = adapter.features().contains(wgpu::Features::SHADER_INT64);
        let variant = match opts.variant {
            Some(ShaderVariant::U64) if !has_int64 => {
                return Err(GpuError::UnsupportedFeature("SHADER_INT64 (needed by the u64 shader variant)").into());
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
        .map_err(|e| GpuError::Wgpu { stage: "device creation", message: e.to_string() })?;
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
            .map_err(|e| match e.backend_error::<GpuError>() {
                Some(GpuError::Wgpu { stage, message }) => {
                    let message = format!("{message}\n--- WGSL of {program:?} ---\n{source}");
                    GpuError::Wgpu { stage, message }.into()
                }
                _ => e,
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
            return Err(GpuError::Wgpu {
                stage: "shader compilation",
                message: "missing strict-mode entry point".into(),
            }
            .into());
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
            kernels: std::sync::Mutex::new(KernelCache::new(opts.kernel_cache_bytes.unwrap_or(256 << 20))),
            kernel_uploads: std::sync::atomic::AtomicU64::new(0),
        })
    }
}
