//! What the CPU's integer GEMM kernels can do.

/// Whether ONNX Runtime's default u8×s8 integer GEMM on this CPU can saturate.
///
/// On x86 without VNNI, MLAS multiplies uint8 activations by int8 weights with `vpmaddubsw`,
/// which adds each pair of products into a saturating int16: 255 × 127 × 2 overflows it, and
/// the products of a pair of large activations with large same-signed weights come out wrong.
/// VNNI's `vpdpbusd` (AVX512-VNNI, AVX-VNNI) sums into int32 and cannot saturate; other
/// architectures' kernels widen first.
pub fn int8_gemm_saturates() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        !(std::arch::is_x86_feature_detected!("avx512vnni")
            || std::arch::is_x86_feature_detected!("avxvnni"))
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_cpu_flags_linux_reports() {
        // /proc/cpuinfo lists the flags the kernel saw; the answer must match them.
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            return; // not Linux: nothing independent to compare with
        };
        let Some(flags) = info.lines().find(|l| l.starts_with("flags")) else {
            return; // not x86 (ARM's lines say "Features")
        };
        let has = |f: &str| flags.split_whitespace().any(|w| w == f);
        let vnni = has("avx512_vnni") || has("avx_vnni");
        assert_eq!(int8_gemm_saturates(), !vnni);
    }
}
