//! Kernel timing on the GPU clock (timestamp queries), or wall clock where the adapter has none.

use crate::GpuError;
use bytemuck::Pod;

use vericonv::Conv2d;
use vericonv::Result;

use crate::conv::{conv_bindings, conv_pipeline, kernel_buffer, submit_and_read};
use crate::device::{Device, scoped};
use crate::plan::{ConvPlan, Params, u};
use crate::shaders::{Arithmetic, ConvKernel};

/// The result of [`crate::GpuBackend::time_conv`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelTiming {
    /// Median seconds per run.
    pub seconds: f64,
    /// True when measured with timestamp queries on the GPU clock, false for wall clock.
    pub gpu_clock: bool,
}

/// Times one convolution kernel on this adapter: one warm-up run, then the median of `reps`
/// runs, on the GPU clock (timestamp queries) when the adapter offers it, else wall clock
/// around submit-and-wait. The output is not read back; check it with
/// [`crate::GpuBackend::conv_field`] or [`crate::GpuBackend::conv_f32`] first.
///
/// # Errors
/// [`vericonv::Error::LengthMismatch`], [`GpuError::OtherVariant`] for a field variant other than the
/// backend's, [`GpuError::DeviceLimit`] when the layer needs several dispatches, [`GpuError::Wgpu`].
#[allow(clippy::too_many_arguments)]
/// See [`crate::GpuBackend::time_conv`].
pub(crate) fn time_conv<T: Pod + Default>(
    gpu: &Device,
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
        && v != gpu.variant
    {
        return Err(GpuError::OtherVariant { running: gpu.variant, asked: v }.into());
    }
    let (pipeline, kernel) = conv_pipeline(gpu, arith, kernel, g);
    let max_groups = gpu.info.max_workgroups_per_dimension as usize;
    let plan = ConvPlan::new(g, batch, gpu.info.max_binding_size / 4, max_groups, kernel)?;
    if plan != (ConvPlan { channels: g.cout(), rows: g.ho(), images: batch }) {
        return Err(GpuError::DeviceLimit(format!(
            "this layer at batch {batch} needs several dispatches on this adapter; time a smaller batch"
        ))
        .into());
    }
    let kbuf = scoped(&gpu.device, "buffer upload", || kernel_buffer(gpu, kernel, g.m(), weights))?;
    let (bind, _) = conv_bindings(gpu, pipeline, &Params::whole(g, batch), &kbuf, input, batch * g.output_image_len())?;
    let (x, y) = ConvPlan::workgroups(kernel, g.n(), g.cout());
    let timestamps = gpu.info.timestamps.then(|| {
        let qs = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("timing"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
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
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Wgpu { stage: "kernel timing", message: e.to_string() })
    };
    submit_and_read::<u32>(gpu, "kernel timing warm-up", &[], |enc| record(enc, false))?;
    wait()?;
    let mut samples = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let start = std::time::Instant::now();
        match &timestamps {
            Some((_, resolve)) => {
                let ticks = submit_and_read::<u64>(gpu, "kernel timing", &[resolve], |enc| record(enc, true))?;
                let [t0, t1] = ticks.first().and_then(|t| t.get(..2)).map_or([0, 0], |t| [t[0], t[1]]);
                samples.push(t1.saturating_sub(t0) as f64 * f64::from(gpu.queue.get_timestamp_period()) * 1e-9);
            }
            None => {
                submit_and_read::<u32>(gpu, "kernel timing", &[], |enc| record(enc, true))?;
                wait()?;
                samples.push(start.elapsed().as_secs_f64());
            }
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(KernelTiming { seconds: samples[samples.len() / 2], gpu_clock: timestamps.is_some() })
}
