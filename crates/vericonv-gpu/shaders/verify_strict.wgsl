// The batched verification matrix-vector product of Strict mode (docs/scheme.md §8), for a batch:
//   ydot:     L[b,o']      = Σ_n r[n]·Y'[b,o',n]
//   im2col_r: T_b[c',i,j]  = Σ_{y,x} r[y,x]·X'pad[b,c',y·sh+i·dh,x·sw+j·dw]
//   kt:       V[b,o']      = Σ_m K'[o',m]·T_b[g'(o')·Cin/G·kh·kw + m]
// `kt` reads what `im2col_r` wrote, so it runs in a later dispatch. Long 1-D ranges are
// dispatched as 2-D grids: index = gid.x + gid.y·(num_workgroups.x·64).
// The arithmetic comes from the F_p prelude (u64 or u32) this body is appended to, the
// geometry uniform `params` from params.wgsl (`cout` is the whole layer's, `o_base` is 0).

@group(0) @binding(1) var<storage, read> kernel: array<u32>;
@group(0) @binding(2) var<storage, read> input: array<u32>;
@group(0) @binding(3) var<storage, read> answer: array<u32>;
@group(0) @binding(4) var<storage, read> r: array<u32>;
@group(0) @binding(5) var<storage, read_write> l_out: array<u32>;
@group(0) @binding(6) var<storage, read_write> t_out: array<u32>;
@group(0) @binding(7) var<storage, read_write> v_out: array<u32>;

@compute @workgroup_size(64, 1, 1)
fn ydot(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let bo = gid.x + gid.y * nwg.x * 64u;
    if (bo >= params.batch * params.cout) {
        return;
    }
    let n_total = params.ho * params.wo;
    var acc = acc_zero();
    for (var n = 0u; n < n_total; n++) {
        acc = acc_mac(acc, r[n], answer[bo * n_total + n]);
    }
    l_out[bo] = acc_finish(acc);
}

@compute @workgroup_size(64, 1, 1)
fn im2col_r(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    let taps = params.kh * params.kw;
    if (idx >= params.batch * params.cin * taps) {
        return;
    }
    let bc = idx / taps;
    let i = (idx % taps) / params.kw;
    let j = idx % params.kw;
    var acc = acc_zero();
    for (var y = 0u; y < params.ho; y++) {
        let row = i32(y * params.sh + i * params.dh) - i32(params.pt);
        if (row < 0 || row >= i32(params.h)) {
            continue;
        }
        for (var x = 0u; x < params.wo; x++) {
            let col = i32(x * params.sw + j * params.dw) - i32(params.pl);
            if (col < 0 || col >= i32(params.w)) {
                continue;
            }
            acc = acc_mac(acc, r[y * params.wo + x], input[(bc * params.h + u32(row)) * params.w + u32(col)]);
        }
    }
    t_out[idx] = acc_finish(acc);
}

@compute @workgroup_size(64, 1, 1)
fn kt(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let bo = gid.x + gid.y * nwg.x * 64u;
    if (bo >= params.batch * params.cout) {
        return;
    }
    let b = bo / params.cout;
    let o = bo % params.cout;
    let m_total = params.cpg * params.kh * params.kw;
    let t_base = (b * params.cin + (o / params.cpo) * params.cpg) * params.kh * params.kw;
    var acc = acc_zero();
    for (var m = 0u; m < m_total; m++) {
        acc = acc_mac(acc, kernel[o * m_total + m], t_out[t_base + m]);
    }
    v_out[bo] = acc_finish(acc);
}
