// Byte layouts of the paged attention caches and the element codecs the CPU twins and the CUDA
// kernels share. Framework-free (host and device): e4m3 and bf16 are decoded from their bits, so
// both sides read a cache byte for byte the same way.
//
// Paging: a cache holds num_blocks blocks of kBlockTokens tokens; a *slot* is
// block * kBlockTokens + offset; slot -1 (or any slot outside [0, num_blocks * kBlockTokens)) is
// "none": never written, never read.
//
// MLA latent cache, uint8 [num_blocks, 64, token_bytes], one row per token:
//   BF16 format (1152 B): [c_kv 512 x bf16 | k_pe 64 x bf16]                 (bytes 0..1023 | 1024..1151)
//   FP8 format  (656 B):  [c_kv 512 x e4m3 | 4 x fp32 scale | k_pe 64 x bf16] (0..511 | 512..527 | 528..655)
//     scale g covers c_kv dims [128g, 128g + 128): c_kv[i] = e4m3(code[i]) * scale[i / 128],
//     scale = max(amax, 1e-10) / 448 (quant_fp8.h's group_scale); the rope dims stay BF16.
// Indexer key cache, uint8 [num_blocks, 64 * 132] (132 B per token, block-split so the codes of a
// block are one dense [64, 128] tile for vector loads):
//   bytes [0, 8192): codes, token-major [64, 128] e4m3;  bytes [8192, 8448): 64 fp32 scales.
#pragma once

#include "common/host_device.h"
#include "quant/quant_fp8.h"

namespace glm52::attention {

constexpr int kBlockTokens = 64;
constexpr int kLatentDim = 576;   // [c_kv 512 | k_pe 64]: the MLA key width
constexpr int kValueDim = 512;    // values are the first 512 latent dims (c_kv)
constexpr int kRopeDim = 64;
constexpr int kFp8GroupDim = 128; // c_kv dims per FP8 scale
constexpr int kFp8Groups = kValueDim / kFp8GroupDim;

constexpr int kMlaBf16TokenBytes = kLatentDim * 2;                                       // 1152
constexpr int kMlaFp8ScaleOffset = kValueDim;                                             // 512
constexpr int kMlaFp8RopeOffset = kMlaFp8ScaleOffset + kFp8Groups * 4;                    // 528
constexpr int kMlaFp8TokenBytes = kMlaFp8RopeOffset + kRopeDim * 2;                       // 656

constexpr int kIndexDim = 128;
constexpr int kIndexTokenBytes = kIndexDim + 4;                                           // 132
constexpr int kIndexBlockBytes = kBlockTokens * kIndexTokenBytes;                         // 8448
constexpr int kIndexScaleOffset = kBlockTokens * kIndexDim;                               // 8192

// A slot resolved against a cache of num_blocks blocks; valid == false for -1 and out-of-range.
struct SlotRef {
  bool valid;
  int64_t block;
  int64_t offset;
};

GLM52_HD SlotRef resolve_slot(int64_t slot, int64_t num_blocks) {
  if (slot < 0 || slot >= num_blocks * kBlockTokens) return {false, 0, 0};
  return {true, slot / kBlockTokens, slot % kBlockTokens};
}

// Slot of sequence position `pos` through a block table row of `table_len` entries; -1 when the
// position is beyond the table or its block id is outside the cache.
GLM52_HD int64_t position_to_slot(const int32_t* block_table_row, int64_t table_len, int64_t pos,
                                  int64_t num_blocks) {
  if (pos < 0 || pos / kBlockTokens >= table_len) return -1;
  const int64_t block = block_table_row[pos / kBlockTokens];
  if (block < 0 || block >= num_blocks) return -1;
  return block * kBlockTokens + pos % kBlockTokens;
}

// Byte offsets of one token's indexer codes and scale inside the indexer cache.
GLM52_HD int64_t index_code_offset(const SlotRef& s) {
  return s.block * kIndexBlockBytes + s.offset * kIndexDim;
}
GLM52_HD int64_t index_scale_offset(const SlotRef& s) {
  return s.block * kIndexBlockBytes + kIndexScaleOffset + s.offset * 4;
}

GLM52_HD float bf16_bits_to_float(uint16_t bits) { return bits_to_float(static_cast<uint32_t>(bits) << 16); }

// Exact decode of a float8_e4m3fn code (bias 7, no infinities, 0x7f/0xff are NaN).
GLM52_HD float e4m3_bits_to_float(uint8_t code) {
  const uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24;
  const uint32_t exp = (code >> 3) & 0xfu, man = code & 0x7u;
  if (exp == 0xfu && man == 0x7u) return bits_to_float(sign | 0x7fc00000u);
  if (exp == 0) {  // subnormal: man * 2^-9
    const float mag = static_cast<float>(man) * (1.0f / 512.0f);
    return sign ? -mag : mag;
  }
  return bits_to_float(sign | ((exp + 120u) << 23) | (man << 20));
}

GLM52_HD float load_f32(const uint8_t* p) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = *reinterpret_cast<const uint32_t*>(p);  // 4-byte aligned by the layouts above
#else
  std::memcpy(&u, p, 4);
#endif
  return bits_to_float(u);
}

GLM52_HD uint16_t load_u16(const uint8_t* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const uint16_t*>(p);  // bf16 fields sit at even offsets
#else
  return static_cast<uint16_t>(p[0] | (static_cast<uint16_t>(p[1]) << 8));  // little-endian
#endif
}

// Latent element i (0 <= i < 576) of one MLA cache token row, as fp32.
GLM52_HD float mla_token_elem(const uint8_t* token, int i, bool fp8) {
  if (!fp8) return bf16_bits_to_float(load_u16(token + 2 * i));
  if (i >= kValueDim) return bf16_bits_to_float(load_u16(token + kMlaFp8RopeOffset + 2 * (i - kValueDim)));
  return e4m3_bits_to_float(token[i]) * load_f32(token + kMlaFp8ScaleOffset + 4 * (i / kFp8GroupDim));
}

GLM52_HD int mla_token_bytes(bool fp8) { return fp8 ? kMlaFp8TokenBytes : kMlaBf16TokenBytes; }

}  // namespace glm52::attention
