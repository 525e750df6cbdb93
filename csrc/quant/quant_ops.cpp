// The quantization op family: schemas, and the functional forms that allocate their outputs and
// call the out-variants (which each device registers: cpu/, cuda/).
#include "quant/quant_checks.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace glm52::quant {
namespace {

std::tuple<at::Tensor, at::Tensor> quant_fp8_per_token_group(const at::Tensor& x, int64_t group_size,
                                                             bool scale_ue8m0) {
  check_quant_input(x, group_size);
  auto out = at::empty(x.sizes(), x.options().dtype(at::kFloat8_e4m3fn));
  auto out_scale = at::empty({x.size(0), ceil_div(x.size(1), group_size)}, x.options().dtype(at::kFloat));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::quant_fp8_per_token_group_out", "")
                       .typed<void(const at::Tensor&, int64_t, bool, at::Tensor&, at::Tensor&)>();
  op.call(x, group_size, scale_ue8m0, out, out_scale);
  return std::make_tuple(out, out_scale);
}

at::Tensor dequant_fp8_block(const at::Tensor& w, const at::Tensor& scale_inv,
                             std::optional<at::ScalarType> out_dtype, at::IntArrayRef block) {
  check_dequant_inputs(w, scale_inv, block);
  auto out = at::empty(w.sizes(), w.options().dtype(out_dtype.value_or(at::kBFloat16)));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::dequant_fp8_block_out", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::Tensor&)>();
  op.call(w, scale_inv, block, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(glm52, m) {
  m.def("quant_fp8_per_token_group(Tensor x, int group_size=128, bool scale_ue8m0=False) -> (Tensor, Tensor)");
  m.def("quant_fp8_per_token_group_out(Tensor x, int group_size, bool scale_ue8m0, *, Tensor(a!) out, Tensor(b!) out_scale) -> ()");
  m.def("dequant_fp8_block(Tensor w, Tensor scale_inv, ScalarType? out_dtype=None, int[2] block=[128, 128]) -> Tensor");
  m.def("dequant_fp8_block_out(Tensor w, Tensor scale_inv, int[2] block, *, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(glm52, CompositeExplicitAutograd, m) {
  m.impl("quant_fp8_per_token_group", &quant_fp8_per_token_group);
  m.impl("dequant_fp8_block", &dequant_fp8_block);
}

}  // namespace glm52::quant
