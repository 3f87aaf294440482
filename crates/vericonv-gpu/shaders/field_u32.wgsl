// F_p arithmetic, p = 2^31 - 1, with 32-bit integers only (any adapter).
// The 62-bit product is formed from 16-bit limbs and reduced with 2^31 ≡ 1 (mod p).
// Accumulator: a canonical element, reduced after every product.

alias Elem = u32;
alias Acc = u32;

const P: u32 = 2147483647u;

fn acc_zero() -> Acc {
    return 0u;
}

// a + b mod p for a < p and b <= p.
fn add_mod(a: u32, b: u32) -> u32 {
    let s = a + b;
    return select(s, s - P, s >= P);
}

// a·b mod p for a, b < p.
fn mul_mod(a: u32, b: u32) -> u32 {
    let a_lo = a & 0xffffu;
    let a_hi = a >> 16u;
    let b_lo = b & 0xffffu;
    let b_hi = b >> 16u;
    let ll = a_lo * b_lo;               // < 2^32
    let mid = a_lo * b_hi + a_hi * b_lo; // < 2^32
    let hh = a_hi * b_hi;               // < 2^30
    // a·b = hh·2^32 + mid·2^16 + ll, and 2^32 ≡ 2, mid·2^16 ≡ (mid >> 15) + (mid & 0x7fff)·2^16.
    var r = 2u * hh;                    // < p
    r = add_mod(r, mid >> 15u);
    r = add_mod(r, (mid & 0x7fffu) << 16u);
    r = add_mod(r, ll >> 31u);
    r = add_mod(r, ll & P);
    return r;
}

fn acc_mac(acc: Acc, a: u32, b: u32) -> Acc {
    return add_mod(acc, mul_mod(a, b));
}

fn acc_finish(acc: Acc) -> u32 {
    return acc;
}
