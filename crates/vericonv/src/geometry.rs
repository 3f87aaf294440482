//! Convolution geometry (docs/scheme.md §3): shapes, stride, asymmetric zero padding, dilation and
//! groups, validated once when a [`Conv2d`] is built.

use crate::{Error, Result};

/// Zero padding on each side of the input, possibly asymmetric.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Padding {
    /// Rows added above the input (`pt`).
    pub top: usize,
    /// Columns added left of the input (`pl`).
    pub left: usize,
    /// Rows added below the input (`pb`).
    pub bottom: usize,
    /// Columns added right of the input (`pr`).
    pub right: usize,
}

impl Padding {
    /// The same padding `p` on all four sides.
    pub const fn uniform(p: usize) -> Self {
        Self { top: p, left: p, bottom: p, right: p }
    }

    /// Padding with explicit `(top, left, bottom, right)`, the ONNX `pads` order for 2-D.
    pub const fn new(top: usize, left: usize, bottom: usize, right: usize) -> Self {
        Self { top, left, bottom, right }
    }
}

/// A validated 2-D convolution geometry, batch excluded: the batch size comes with each call.
///
/// Tensors are NCHW, row-major. The kernel is `Cout × (Cin/G) × kh × kw`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2d {
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: (usize, usize),
    pad: Padding,
    dilation: (usize, usize),
    groups: usize,
    ho: usize,
    wo: usize,
}

/// Builder for [`Conv2d`]; defaults are stride 1, no padding, dilation 1 and one group.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dBuilder {
    geom: Conv2d,
}

/// Every index the GPU touches must fit in a `u32`; this bounds each tensor's length.
const MAX_ELEMENTS: usize = (u32::MAX >> 1) as usize;

impl Conv2d {
    /// Starts a geometry with `cin` input channels, `cout` output channels, an `(h, w)` input
    /// and a `(kh, kw)` kernel.
    pub fn builder(cin: usize, cout: usize, input: (usize, usize), kernel: (usize, usize)) -> Conv2dBuilder {
        Conv2dBuilder {
            geom: Conv2d {
                cin,
                cout,
                h: input.0,
                w: input.1,
                kh: kernel.0,
                kw: kernel.1,
                stride: (1, 1),
                pad: Padding::default(),
                dilation: (1, 1),
                groups: 1,
                ho: 0,
                wo: 0,
            },
        }
    }

    /// Input channels `Cin`.
    pub fn cin(&self) -> usize {
        self.cin
    }
    /// Output channels `Cout`.
    pub fn cout(&self) -> usize {
        self.cout
    }
    /// Input height `H`.
    pub fn h(&self) -> usize {
        self.h
    }
    /// Input width `W`.
    pub fn w(&self) -> usize {
        self.w
    }
    /// Kernel height `kh`.
    pub fn kh(&self) -> usize {
        self.kh
    }
    /// Kernel width `kw`.
    pub fn kw(&self) -> usize {
        self.kw
    }
    /// Stride `(sh, sw)`.
    pub fn stride(&self) -> (usize, usize) {
        self.stride
    }
    /// Zero padding.
    pub fn padding(&self) -> Padding {
        self.pad
    }
    /// Dilation `(dh, dw)`.
    pub fn dilation(&self) -> (usize, usize) {
        self.dilation
    }
    /// Groups `G`.
    pub fn groups(&self) -> usize {
        self.groups
    }
    /// Output height `Ho`.
    pub fn ho(&self) -> usize {
        self.ho
    }
    /// Output width `Wo`.
    pub fn wo(&self) -> usize {
        self.wo
    }
    /// Input channels per group, `Cin/G`.
    pub fn cin_per_group(&self) -> usize {
        self.cin / self.groups
    }
    /// Output channels per group, `Cout/G`.
    pub fn cout_per_group(&self) -> usize {
        self.cout / self.groups
    }
    /// Terms per output, `M = (Cin/G)·kh·kw`: the GEMM inner dimension.
    pub fn m(&self) -> usize {
        self.cin_per_group() * self.kh * self.kw
    }
    /// Output pixels per channel, `N = Ho·Wo`.
    pub fn n(&self) -> usize {
        self.ho * self.wo
    }
    /// Padded input height `H + pt + pb`.
    pub fn padded_h(&self) -> usize {
        self.h + self.pad.top + self.pad.bottom
    }
    /// Padded input width `W + pl + pr`.
    pub fn padded_w(&self) -> usize {
        self.w + self.pad.left + self.pad.right
    }
    /// Group of output channel `o`, `grp(o) = floor(o / (Cout/G))`.
    pub fn group_of_output(&self, o: usize) -> usize {
        o / self.cout_per_group()
    }
    /// Elements of one input image, `Cin·H·W`.
    pub fn image_len(&self) -> usize {
        self.cin * self.h * self.w
    }
    /// Elements of one output image, `Cout·Ho·Wo`.
    pub fn output_image_len(&self) -> usize {
        self.cout * self.n()
    }
    /// Elements of the kernel, `Cout·M`.
    pub fn kernel_len(&self) -> usize {
        self.cout * self.m()
    }

    /// Input row read by output row `y` at kernel row `i`: `y·sh + i·dh - pt`, or `None` when
    /// it falls in the zero padding.
    #[inline(always)]
    pub fn in_row(&self, y: usize, i: usize) -> Option<usize> {
        (y * self.stride.0 + i * self.dilation.0).checked_sub(self.pad.top).filter(|&r| r < self.h)
    }

    /// Input column read by output column `x` at kernel column `j`: `x·sw + j·dw - pl`, or
    /// `None` when it falls in the zero padding.
    #[inline(always)]
    pub fn in_col(&self, x: usize, j: usize) -> Option<usize> {
        (x * self.stride.1 + j * self.dilation.1).checked_sub(self.pad.left).filter(|&c| c < self.w)
    }

    /// Checks that a buffer has the length `expected`.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`].
    pub fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
        if expected == got { Ok(()) } else { Err(Error::LengthMismatch { what, expected, got }) }
    }

    /// The batch size implied by an input buffer of `len` elements.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] when `len` is not a positive multiple of `Cin·H·W`.
    pub fn batch_of_input(&self, len: usize) -> Result<usize> {
        let per = self.image_len();
        if len == 0 || !len.is_multiple_of(per) {
            return Err(Error::LengthMismatch {
                what: "input (not a positive multiple of Cin·H·W)",
                expected: per,
                got: len,
            });
        }
        Ok(len / per)
    }
}

impl Conv2dBuilder {
    /// Sets the stride `(sh, sw)`.
    pub fn stride(mut self, sh: usize, sw: usize) -> Self {
        self.geom.stride = (sh, sw);
        self
    }
    /// Sets the zero padding.
    pub fn padding(mut self, pad: Padding) -> Self {
        self.geom.pad = pad;
        self
    }
    /// Sets the dilation `(dh, dw)`.
    pub fn dilation(mut self, dh: usize, dw: usize) -> Self {
        self.geom.dilation = (dh, dw);
        self
    }
    /// Sets the number of groups (`G = Cin` for depthwise).
    pub fn groups(mut self, groups: usize) -> Self {
        self.geom.groups = groups;
        self
    }

    /// Validates the geometry and computes the output size.
    ///
    /// # Errors
    /// [`Error::ZeroDimension`], [`Error::GroupsMismatch`], [`Error::KernelLargerThanInput`]
    /// or [`Error::TooLarge`].
    pub fn build(self) -> Result<Conv2d> {
        let mut g = self.geom;
        for (field, v) in [
            ("in_channels", g.cin),
            ("out_channels", g.cout),
            ("height", g.h),
            ("width", g.w),
            ("kernel_h", g.kh),
            ("kernel_w", g.kw),
            ("stride_h", g.stride.0),
            ("stride_w", g.stride.1),
            ("dilation_h", g.dilation.0),
            ("dilation_w", g.dilation.1),
            ("groups", g.groups),
        ] {
            if v == 0 {
                return Err(Error::ZeroDimension { field });
            }
            if v > MAX_ELEMENTS {
                return Err(Error::TooLarge { what: field, value: v });
            }
        }
        for (what, v) in [("padding", g.pad.top.max(g.pad.bottom).max(g.pad.left).max(g.pad.right))] {
            if v > MAX_ELEMENTS {
                return Err(Error::TooLarge { what, value: v });
            }
        }
        if !g.cin.is_multiple_of(g.groups) || !g.cout.is_multiple_of(g.groups) {
            return Err(Error::GroupsMismatch { groups: g.groups, cin: g.cin, cout: g.cout });
        }
        g.ho = out_extent("height", g.h, g.pad.top + g.pad.bottom, g.kh, g.stride.0, g.dilation.0)?;
        g.wo = out_extent("width", g.w, g.pad.left + g.pad.right, g.kw, g.stride.1, g.dilation.1)?;
        for (what, len) in [
            ("Cin·H·W", g.cin.checked_mul(g.h).and_then(|v| v.checked_mul(g.w))),
            ("Cout·Ho·Wo", g.cout.checked_mul(g.ho).and_then(|v| v.checked_mul(g.wo))),
            (
                "Cout·(Cin/G)·kh·kw",
                g.cout
                    .checked_mul(g.cin / g.groups)
                    .and_then(|v| v.checked_mul(g.kh))
                    .and_then(|v| v.checked_mul(g.kw)),
            ),
            ("padded H·W", g.padded_h().checked_mul(g.padded_w())),
        ] {
            match len {
                Some(v) if v <= MAX_ELEMENTS => {}
                _ => return Err(Error::TooLarge { what, value: len.unwrap_or(usize::MAX) }),
            }
        }
        Ok(g)
    }
}

/// `floor((n + pads - d·(k-1) - 1) / s) + 1`, or an error when the kernel does not fit.
fn out_extent(axis: &'static str, n: usize, pads: usize, k: usize, s: usize, d: usize) -> Result<usize> {
    let padded = n + pads;
    let extent = (k - 1)
        .checked_mul(d)
        .and_then(|v| v.checked_add(1))
        .ok_or(Error::TooLarge { what: "dilated kernel", value: k })?;
    if extent > padded {
        return Err(Error::KernelLargerThanInput { axis, extent, padded });
    }
    Ok((padded - extent) / s + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_size_follows_the_scheme_formula() {
        let g = Conv2d::builder(3, 8, (7, 9), (3, 2))
            .stride(2, 3)
            .padding(Padding::new(1, 0, 2, 1))
            .dilation(2, 1)
            .build()
            .expect("valid");
        assert_eq!(g.ho(), (7 + 1 + 2 - 2 * 2 - 1) / 2 + 1);
        assert_eq!(g.wo(), (9 + 1 - 1 - 1) / 3 + 1);
        assert_eq!(g.m(), 3 * 3 * 2);
    }

    #[test]
    fn every_bad_geometry_has_its_typed_error() {
        assert!(matches!(
            Conv2d::builder(0, 1, (4, 4), (1, 1)).build(),
            Err(Error::ZeroDimension { field: "in_channels" })
        ));
        assert!(matches!(
            Conv2d::builder(1, 1, (4, 4), (1, 1)).stride(1, 0).build(),
            Err(Error::ZeroDimension { field: "stride_w" })
        ));
        assert!(matches!(
            Conv2d::builder(1, 1, (4, 4), (1, 1)).dilation(0, 1).build(),
            Err(Error::ZeroDimension { field: "dilation_h" })
        ));
        assert!(matches!(
            Conv2d::builder(4, 6, (4, 4), (1, 1)).groups(4).build(),
            Err(Error::GroupsMismatch { groups: 4, cin: 4, cout: 6 })
        ));
        assert!(matches!(
            Conv2d::builder(1, 1, (4, 4), (5, 1)).build(),
            Err(Error::KernelLargerThanInput { axis: "height", extent: 5, padded: 4 })
        ));
        assert!(matches!(
            Conv2d::builder(1, 1, (4, 4), (3, 3)).dilation(1, 2).build(),
            Err(Error::KernelLargerThanInput { axis: "width", extent: 5, padded: 4 })
        ));
        assert!(matches!(Conv2d::builder(1 << 20, 1 << 20, (4, 4), (1, 1)).build(), Err(Error::TooLarge { .. })));
        assert!(matches!(Conv2d::builder(1, 1, (4, 4), (usize::MAX, 1)).build(), Err(Error::TooLarge { .. })));
        let g = Conv2d::builder(2, 2, (3, 3), (1, 1)).build().expect("valid");
        assert!(g.batch_of_input(0).is_err());
        assert!(g.batch_of_input(19).is_err());
        assert!(matches!(g.batch_of_input(36), Ok(2)));
    }
}
