// The MoE op family: schemas, and the functional forms that allocate their outputs and call the
// out-variants (which each device registers: cpu/, cuda/).
#include "moe/moe_checks.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <string>

namespace glm52::moe {
namespace {

at::Tensor fp8_grouped_gemm_contiguous(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b,
                                       const at::Tensor& b_scale, const at::Tensor& m_indices,
                                       const std::optional<at::Tensor>& workspace) {
  check_contiguous_gemm(a, a_scale, b, b_scale, m_indices);
  auto out = at::empty({a.size(0), b.size(1)}, a.options().dtype(at::kBFloat16));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::fp8_grouped_gemm_contiguous_out", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, const std::optional<at::Tensor>&, at::Tensor&)>();
  op.call(a, a_scale, b, b_scale, m_indices, workspace, out);
  return out;
}

at::Tensor fp8_grouped_gemm_masked(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b,
                                   const at::Tensor& b_scale, const at::Tensor& masked_m, int64_t expected_m,
                                   const std::optional<at::Tensor>& workspace) {
  check_masked_gemm(a, a_scale, b, b_scale, masked_m, expected_m);
  auto out = at::empty({a.size(0), a.size(1), b.size(1)}, a.options().dtype(at::kBFloat16));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::fp8_grouped_gemm_masked_out", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, int64_t, const std::optional<at::Tensor>&, at::Tensor&)>();
  op.call(a, a_scale, b, b_scale, masked_m, expected_m, workspace, out);
  return out;
}

at::Tensor fp8_gemm(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b, const at::Tensor& b_scale,
                    const std::optional<at::Tensor>& workspace) {
  check_dense_gemm(a, a_scale, b, b_scale);
  auto out = at::empty({a.size(0), b.size(0)}, a.options().dtype(at::kBFloat16));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::fp8_gemm_out", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const std::optional<at::Tensor>&, at::Tensor&)>();
  op.call(a, a_scale, b, b_scale, workspace, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> moe_route(const at::Tensor& logits, const at::Tensor& bias, int64_t top_k,
                                             int64_t n_group, int64_t topk_group, double routed_scaling_factor,
                                             bool renormalize) {
  check_route(logits, bias, top_k, n_group, topk_group, routed_scaling_factor, renormalize);
  auto weights = at::empty({logits.size(0), top_k}, logits.options());
  auto ids = at::empty({logits.size(0), top_k}, logits.options().dtype(at::kInt));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::moe_route_out", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, double, bool,
                                   at::Tensor&, at::Tensor&)>();
  op.call(logits, bias, top_k, n_group, topk_group, routed_scaling_factor, renormalize, weights, ids);
  return std::make_tuple(weights, ids);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> moe_permute(const at::Tensor& x,
                                                                       const std::optional<at::Tensor>& x_scale,
                                                                       const at::Tensor& ids, int64_t num_experts,
                                                                       int64_t alignment,
                                                                       const std::optional<at::Tensor>& workspace) {
  check_permute(x, x_scale, ids, num_experts, alignment);
  const int64_t rows = permute_rows(ids, num_experts, alignment);
  auto out = at::empty({rows, x.size(1)}, x.options());
  auto out_scale = at::empty({rows, x_scale ? x_scale->size(1) : 0}, x.options().dtype(at::kFloat));
  auto m_indices = at::empty({rows}, x.options().dtype(at::kInt));
  auto row_map = at::empty(ids.sizes(), x.options().dtype(at::kInt));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::moe_permute_out", "")
                       .typed<void(const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, int64_t,
                                   int64_t, const std::optional<at::Tensor>&, at::Tensor&, at::Tensor&, at::Tensor&,
                                   at::Tensor&)>();
  op.call(x, x_scale, ids, num_experts, alignment, workspace, out, out_scale, m_indices, row_map);
  return std::make_tuple(out, out_scale, m_indices, row_map);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> moe_permute_masked(const at::Tensor& x,
                                                                              const std::optional<at::Tensor>& x_scale,
                                                                              const at::Tensor& ids, int64_t num_experts,
                                                                              const std::optional<at::Tensor>& workspace) {
  check_permute(x, x_scale, ids, num_experts, 1);
  const int64_t tokens = x.size(0);
  auto out = at::empty({num_experts, tokens, x.size(1)}, x.options());
  auto out_scale = at::empty({num_experts, tokens, x_scale ? x_scale->size(1) : 0}, x.options().dtype(at::kFloat));
  auto masked_m = at::empty({num_experts}, x.options().dtype(at::kInt));
  auto row_map = at::empty(ids.sizes(), x.options().dtype(at::kInt));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::moe_permute_masked_out", "")
                       .typed<void(const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, int64_t,
                                   const std::optional<at::Tensor>&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&)>();
  op.call(x, x_scale, ids, num_experts, workspace, out, out_scale, masked_m, row_map);
  return std::make_tuple(out, out_scale, masked_m, row_map);
}

at::Tensor moe_unpermute(const at::Tensor& y, const at::Tensor& weights, const at::Tensor& row_map) {
  check_unpermute(y, weights, row_map);
  auto out = at::empty({weights.size(0), y.size(1)}, y.options());
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::moe_unpermute_out", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&)>();
  op.call(y, weights, row_map, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> silu_and_mul_quant_fp8(const at::Tensor& x, int64_t group_size, bool scale_ue8m0) {
  check_silu_quant(x, group_size);
  const int64_t n = x.size(1) / 2;
  auto out = at::empty({x.size(0), n}, x.options().dtype(at::kFloat8_e4m3fn));
  auto out_scale = at::empty({x.size(0), ceil_div(n, group_size)}, x.options().dtype(at::kFloat));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::silu_and_mul_quant_fp8_out", "")
                       .typed<void(const at::Tensor&, int64_t, bool, at::Tensor&, at::Tensor&)>();
  op.call(x, group_size, scale_ue8m0, out, out_scale);
  return std::make_tuple(out, out_scale);
}

// The tile select_grouped_gemm_tile picks: layout "contiguous", "masked" (m = expected_m) or
// "dense" (m = the rows).
std::string grouped_gemm_config(c10::string_view layout, int64_t m) {
  constexpr const char* op = "grouped_gemm_config";
  GLM52_CHECK_ARG(m >= 0, op, "m", "must be >= 0, got ", m);
  GroupedLayout kind = GroupedLayout::kMasked;
  if (layout == "contiguous") kind = GroupedLayout::kContiguous;
  else if (layout == "dense") kind = GroupedLayout::kDense;
  else GLM52_CHECK_ARG(layout == "masked", op, "layout", "must be 'contiguous', 'masked' or 'dense', got '", layout, "'");
  return grouped_gemm_tile_name(select_grouped_gemm_tile(kind, m));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(glm52, m) {
  // workspace: optional preallocated device scratch (fp8_grouped_gemm_workspace_bytes,
  // moe_permute_workspace_bytes), written by the CUDA kernels; the CPU twins check it and need none.
  m.def("fp8_grouped_gemm_contiguous(Tensor a, Tensor a_scale, Tensor b, Tensor b_scale, Tensor m_indices, "
        "Tensor(b!)? workspace=None) -> Tensor");
  m.def("fp8_grouped_gemm_contiguous_out(Tensor a, Tensor a_scale, Tensor b, Tensor b_scale, Tensor m_indices, "
        "Tensor(b!)? workspace=None, *, Tensor(a!) out) -> ()");
  m.def("fp8_grouped_gemm_masked(Tensor a, Tensor a_scale, Tensor b, Tensor b_scale, Tensor masked_m, int expected_m, "
        "Tensor(b!)? workspace=None) -> Tensor");
  m.def("fp8_grouped_gemm_masked_out(Tensor a, Tensor a_scale, Tensor b, Tensor b_scale, Tensor masked_m, "
        "int expected_m, Tensor(b!)? workspace=None, *, Tensor(a!) out) -> ()");
  m.def("fp8_gemm(Tensor a, Tensor a_scale, Tensor b, Tensor b_scale, Tensor(b!)? workspace=None) -> Tensor");
  m.def("fp8_gemm_out(Tensor a, Tensor a_scale, Tensor b, Tensor b_scale, Tensor(b!)? workspace=None, *, "
        "Tensor(a!) out) -> ()");
  m.def("moe_route(Tensor logits, Tensor bias, int top_k, int n_group, int topk_group, float routed_scaling_factor, "
        "bool renormalize) -> (Tensor, Tensor)");
  m.def("moe_route_out(Tensor logits, Tensor bias, int top_k, int n_group, int topk_group, "
        "float routed_scaling_factor, bool renormalize, *, Tensor(a!) weights, Tensor(b!) ids) -> ()");
  m.def("moe_permute(Tensor x, Tensor? x_scale, Tensor ids, int num_experts, int alignment, "
        "Tensor(e!)? workspace=None) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("moe_permute_out(Tensor x, Tensor? x_scale, Tensor ids, int num_experts, int alignment, "
        "Tensor(e!)? workspace=None, *, Tensor(a!) out, Tensor(b!) out_scale, Tensor(c!) m_indices, "
        "Tensor(d!) row_map) -> ()");
  m.def("moe_permute_masked(Tensor x, Tensor? x_scale, Tensor ids, int num_experts, Tensor(e!)? workspace=None) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("moe_permute_masked_out(Tensor x, Tensor? x_scale, Tensor ids, int num_experts, "
        "Tensor(e!)? workspace=None, *, Tensor(a!) out, Tensor(b!) out_scale, Tensor(c!) masked_m, "
        "Tensor(d!) row_map) -> ()");
  m.def("moe_unpermute(Tensor y, Tensor weights, Tensor row_map) -> Tensor");
  m.def("moe_unpermute_out(Tensor y, Tensor weights, Tensor row_map, *, Tensor(a!) out) -> ()");
  m.def("silu_and_mul_quant_fp8(Tensor x, int group_size=128, bool scale_ue8m0=False) -> (Tensor, Tensor)");
  m.def("silu_and_mul_quant_fp8_out(Tensor x, int group_size, bool scale_ue8m0, *, Tensor(a!) out, "
        "Tensor(b!) out_scale) -> ()");
  // Queries without tensors: the workspace bounds, and the GEMM configuration a launch takes.
  m.def("fp8_grouped_gemm_workspace_bytes(int groups) -> int", [](int64_t groups) {
    GLM52_CHECK_ARG(groups >= 0, "fp8_grouped_gemm_workspace_bytes", "groups", "must be >= 0, got ", groups);
    return grouped_gemm_workspace_bytes(groups);
  });
  m.def("moe_permute_workspace_bytes(int routed, int num_experts) -> int", [](int64_t routed, int64_t num_experts) {
    GLM52_CHECK_ARG(routed >= 0, "moe_permute_workspace_bytes", "routed", "must be >= 0 (T * top_k), got ", routed);
    GLM52_CHECK_ARG(num_experts >= 1, "moe_permute_workspace_bytes", "num_experts", "must be >= 1, got ", num_experts);
    return permute_workspace_bytes(routed, num_experts);
  });
  m.def("grouped_gemm_config(str layout, int m) -> str", &grouped_gemm_config);
}

TORCH_LIBRARY_IMPL(glm52, CompositeExplicitAutograd, m) {
  m.impl("fp8_grouped_gemm_contiguous", &fp8_grouped_gemm_contiguous);
  m.impl("fp8_grouped_gemm_masked", &fp8_grouped_gemm_masked);
  m.impl("fp8_gemm", &fp8_gemm);
  m.impl("moe_route", &moe_route);
  m.impl("moe_permute", &moe_permute);
  m.impl("moe_permute_masked", &moe_permute_masked);
  m.impl("moe_unpermute", &moe_unpermute);
  m.impl("silu_and_mul_quant_fp8", &silu_and_mul_quant_fp8);
}

}  // namespace glm52::moe
