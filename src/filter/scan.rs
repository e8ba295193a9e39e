//! Byte scans shared by the checks: the next byte of a small set, 16 bytes a step (SSE2 on
//! x86_64, where every CPU has it; a plain loop elsewhere). The checks look for rare bytes
//! (line and sentence ends, `$`, `\`, backticks) in long texts; stepping over the bytes
//! between them in blocks is what makes their passes cheap.
//!
//! Self-contained (std only): the language check's measurement crate compiles it by path.

/// Whether this CPU has the bit instructions of x86_64 CPUs since ~2013 (POPCNT, LZCNT,
/// BMI1/2), which the baseline x86_64 target leaves out: a `count_ones` there is a dozen
/// shifts and masks, a variable shift three micro-ops on some CPUs. The checks' word and
/// byte-class loops count and shift bits on every word, so each check's entry point has a copy
/// compiled with `#[target_feature(enable = "popcnt,lzcnt,bmi1,bmi2")]` (its body inlined into
/// it) that runs when this says yes; `DISTILL_NO_BIT_OPS=1` in the environment makes it say
/// no (to compare the two builds). Decided once: an atomic load a call.
#[inline]
pub fn has_bit_ops() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::env::var_os("DISTILL_NO_BIT_OPS").is_none_or(|v| v.is_empty() || v == "0")
                && std::is_x86_feature_detected!("popcnt")
                && std::is_x86_feature_detected!("lzcnt")
                && std::is_x86_feature_detected!("bmi1")
                && std::is_x86_feature_detected!("bmi2")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// The position of the first byte of `b` at or after `from` that is one of `set`.
#[inline]
pub fn find_any<const N: usize>(b: &[u8], from: usize, set: [u8; N]) -> Option<usize> {
    let mut i = from;
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    // SAFETY: SSE2 is enabled (cfg above; every x86_64 CPU has it). The loads read 16 bytes
    // at `i` with `i + 16 <= b.len()`, inside `b`, and have no alignment requirement.
    unsafe {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8, _mm_setzero_si128,
        };
        let needles: [__m128i; N] = set.map(|c| _mm_set1_epi8(c as i8));
        while i + 16 <= b.len() {
            let v = _mm_loadu_si128(b.as_ptr().add(i).cast::<__m128i>());
            let mut hit = _mm_setzero_si128();
            for n in &needles {
                hit = _mm_or_si128(hit, _mm_cmpeq_epi8(v, *n));
            }
            let mask = _mm_movemask_epi8(hit) as u32;
            if mask != 0 {
                return Some(i + mask.trailing_zeros() as usize);
            }
            i += 16;
        }
    }
    while i < b.len() {
        if set.contains(&b[i]) {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_a_plain_loop_finds() {
        let text = "Wait. 3.5 is it? Yes! a;b\n让我再检查。好！对？ مرحبا؟ fin.7 end $x$ `c` \\(y\\)".repeat(3);
        let b = text.as_bytes();
        let set = [b'.', b'\n', b'$', 0xE3, b'`'];
        for from in 0..=b.len() {
            let want = (from..b.len()).find(|&i| set.contains(&b[i]));
            assert_eq!(find_any(b, from, set), want, "from {from}");
        }
        assert_eq!(find_any(b"abc", 5, [b'a']), None);
    }
}
