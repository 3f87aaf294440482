// Tiled implicit-im2col GEMM convolution (docs/scheme.md §6), for ungrouped convolutions:
// Y[b,o,n] = Σ_m K[o,m]·col_b[m,n], with col_b gathered from the input, never materialised.
// The arithmetic (Elem, Acc, acc_zero, acc_mac, acc_finish) comes from the prelude this body is
// appended to, exactly as for the simple kernel in conv.wgsl, which stays the test oracle.
//
// A workgroup of 8×8 invocations computes a TILE_O × TILE_N block of outputs (channels ×
// pixels) of one image. Each step stages a TILE_K slice of the kernel (vec4 loads) and of the
// im2col matrix in workgroup memory; each invocation then accumulates a TM × TN register block.
// The kernel rows are zero-padded by the host to a multiple of 4 (`params.kstride4` vec4s).

const TILE_O: u32 = 32u;
const TILE_N: u32 = 32u;
const TILE_K: u32 = 16u;
const TM: u32 = 4u; // TILE_O / 8
const TN: u32 = 4u; // TILE_N / 8

@group(0) @binding(1) var<storage, read> kernel: array<vec4<Elem>>;
@group(0) @binding(2) var<storage, read> input: array<Elem>;
@group(0) @binding(3) var<storage, read_write> output: array<Elem>;

// 2 × 16 × 32 × 4 bytes = 4 KiB of workgroup memory.
var<workgroup> k_tile: array<array<Elem, TILE_O>, TILE_K>;
var<workgroup> x_tile: array<array<Elem, TILE_N>, TILE_K>;

// The im2col entry col_b[m, p]: the input under tap m of output pixel p, or zero in the padding.
fn im2col(b: u32, m: u32, p: u32) -> Elem {
    let taps = params.kh * params.kw;
    let cl = m / taps;
    let i = (m % taps) / params.kw;
    let j = m % params.kw;
    let row = i32((p / params.wo) * params.sh + i * params.dh) - i32(params.pt);
    let col = i32((p % params.wo) * params.sw + j * params.dw) - i32(params.pl);
    if (row < 0 || row >= i32(params.h) || col < 0 || col >= i32(params.w)) {
        return Elem(0);
    }
    return input[((b * params.cin + cl) * params.h + u32(row)) * params.w + u32(col)];
}

@compute @workgroup_size(8, 8, 1)
fn conv_tiled(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let n_total = params.ho * params.wo;
    let m_total = params.cpg * params.kh * params.kw;
    let n0 = wg.x * TILE_N;
    let o0 = wg.y * TILE_O;
    let b = wg.z;
    var acc: array<Acc, 16>; // TM × TN
    for (var e = 0u; e < TM * TN; e++) {
        acc[e] = acc_zero();
    }
    // Staging assignments: kernel row li / 2, vec4s 2·(li % 2) and +1 of the step;
    // im2col row li / 4, pixels 8·(li % 4) .. +8.
    let k_row = li / 2u;
    let k_quad = 2u * (li % 2u);
    let x_row = li / 4u;
    let x_col = 8u * (li % 4u);
    for (var k0 = 0u; k0 < m_total; k0 += TILE_K) {
        for (var q = 0u; q < 2u; q++) {
            let quad = k0 / 4u + k_quad + q;
            var v = vec4<Elem>(Elem(0));
            if (o0 + k_row < params.cout && quad < params.kstride4) {
                v = kernel[(o0 + k_row) * params.kstride4 + quad];
            }
            let kk = 4u * (k_quad + q);
            k_tile[kk][k_row] = v.x;
            k_tile[kk + 1u][k_row] = v.y;
            k_tile[kk + 2u][k_row] = v.z;
            k_tile[kk + 3u][k_row] = v.w;
        }
        let m = k0 + x_row;
        for (var e = 0u; e < 8u; e++) {
            let p = n0 + x_col + e;
            var v = Elem(0);
            if (m < m_total && p < n_total) {
                v = im2col(b, m, p);
            }
            x_tile[x_row][x_col + e] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            var a: array<Elem, 4>;
            var x: array<Elem, 4>;
            for (var t = 0u; t < TM; t++) {
                a[t] = k_tile[kk][lid.y + 8u * t];
            }
            for (var t = 0u; t < TN; t++) {
                x[t] = x_tile[kk][lid.x + 8u * t];
            }
            for (var r = 0u; r < TM; r++) {
                for (var c = 0u; c < TN; c++) {
                    acc[r * TN + c] = acc_mac(acc[r * TN + c], a[r], x[c]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < TM; r++) {
        let o = o0 + lid.y + 8u * r;
        for (var c = 0u; c < TN; c++) {
            let p = n0 + lid.x + 8u * c;
            if (o < params.cout && p < n_total) {
                output[(b * params.cout + o) * n_total + p] = acc_finish(acc[r * TN + c]);
            }
        }
    }
}
